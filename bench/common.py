"""Shared by the benchmarks: timing with warm-up and repeats, waiting for a GPU before a
clock read, a plain table, --quick, and running a peer's side script in its virtualenv."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def sync(device) -> None:
    """Wait for the device's queued work (a GPU runs kernels asynchronously), so that a clock
    read after it times the work, not its launch. `device`: a torch.device or its name."""
    import torch  # here, not at the top: some side scripts use this module without timing a device

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> tuple[float, float]:
    """(median, min) wall-clock seconds of fn() over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def interleaved(cases: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each case over `repeats` rounds, the cases taking turns within a round so
    that drift in the machine's speed (other load, heat) falls on all of them alike."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def table(rows: list[dict]) -> str:
    headers = list(rows[0])
    cells = [[f"{r[h]:.4g}" if isinstance(r[h], float) else str(r[h]) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def quick_option(parser: argparse.ArgumentParser, **small) -> None:
    """Add --quick: smaller defaults for the given options (an option given explicitly still
    wins), so that `make bench BENCH_ARGS=--quick` checks the whole pipeline in minutes.
    Call it before parse_args."""
    sizes = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in small.items())
    parser.add_argument("--quick", action="store_true", help=f"small sizes to check the pipeline: {sizes}")
    if "--quick" in sys.argv[1:]:
        parser.set_defaults(**small)


def run_side(python: Path, script: Path, job: dict, workdir: Path, peer: str) -> dict:
    """Run a peer's side script in its own virtualenv on a JSON job file; its last line of
    output is a JSON object, returned. A failing side stops the bench with its stderr's tail."""
    (workdir / "job.json").write_text(json.dumps(job))
    done = subprocess.run([str(python), str(script), str(workdir / "job.json")], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the {peer} side failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
