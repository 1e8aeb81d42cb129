"""Shared by the benchmarks: timing with warm-up and repeats, a plain table, and --quick."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable


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
