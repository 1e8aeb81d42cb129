"""The allocator setting the `unweave` command makes at start: freed blocks are reused
instead of being mapped and faulted in again (counted by the kernel's page-fault tally)."""

import resource
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from unweave.allocator import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "1" else "default")
for _ in range(10):  # the heap settles: an aligned block does not fit the last one freed at first
    x = torch.ones(16 * 2**20)  # 64 MiB: above glibc's largest default mmap threshold (32 MiB)
    del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    x = torch.ones(16 * 2**20)
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(keep: bool) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(int(keep))], capture_output=True, text=True, check=True)
    setting, faults = out.stdout.split()
    return setting, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_rather_than_faulted_in_again():
    setting, kept = _faults(True)
    _, default = _faults(False)
    pages = 20 * 64 * 2**20 // resource.getpagesize()
    assert setting == "True"
    assert default > pages / 2  # glibc's defaults: each new 64 MiB block faults its pages in
    assert kept < pages / 100  # settled in the heap: reused without faults
