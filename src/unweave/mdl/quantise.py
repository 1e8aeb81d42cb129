"""Uniform quantisation, and the search for the coarsest step a tolerance allows.

A description's parameters and per-example values are quantised with relative steps: a
tensor t gets the step delta * rms(t), the values the step delta * rms(their nonzero
entries) (`describe.calibrate` then splits delta between the two). The coarsest delta
whose distortion stays within the tolerance is found by a safeguarded secant search on
log(delta), not by a grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

DELTA_RANGE = (1e-6, 4.0)  # relative steps searched: from near float precision to coarser than the data
PRECISION = 1.015  # the step is found within this factor of the boundary: 0.02 bits per coded value


def rms(t: torch.Tensor) -> float:
    """Root mean square (1.0 for an empty or all-zero tensor, so the step stays positive)."""
    value = t.double().pow(2).mean().sqrt().item() if t.numel() else 0.0
    return value if value > 0 and math.isfinite(value) else 1.0


def symbols(t: torch.Tensor, step: float) -> torch.Tensor:
    """The integers round(t / step)."""
    return torch.round(t.double() / step).long()


def quantised(t: torch.Tensor, step: float) -> torch.Tensor:
    """t rounded to the nearest multiple of step, in t's dtype."""
    return (symbols(t, step).double() * step).to(t.dtype)


def quantised_tensors(tensors: dict[str, torch.Tensor], delta: float) -> dict[str, torch.Tensor]:
    """Each tensor rounded with its own step delta * rms(tensor)."""
    return {name: quantised(t, delta * rms(t)) for name, t in tensors.items()}


def tensor_bits(tensors: dict[str, torch.Tensor], delta: float) -> float:
    """Bits of every tensor quantised with step delta * rms(tensor): its symbols' code and
    its step size."""
    from unweave.mdl.coding import FLOAT_BITS, sequence_bits

    return sum(sequence_bits(symbols(t, delta * rms(t))) + FLOAT_BITS for t in tensors.values())


@dataclass(frozen=True)
class Search:
    delta: float  # the coarsest relative step found within tolerance (the finest tried, if none is)
    distortion: float  # the distortion at that step
    met: bool  # whether any step kept the distortion within the tolerance
    evaluations: int


def coarsest_delta(
    distortion: Callable[[float], float],
    tolerance: float,
    precision: float = PRECISION,
    start: float | None = None,
    floor: float | None = None,
) -> Search:
    """The largest delta in DELTA_RANGE with distortion(delta) <= tolerance, to within a
    factor `precision`. Assumes distortion grows with delta (true up to rounding noise); the
    result always satisfies the tolerance when `met`.

    A bracket [lo, hi] (lo within, hi not) is narrowed by the secant method on
    log(distortion - floor) against log delta, the floor being the distortion at the finest
    step (what the description loses unquantised): quantisation noise adds about delta
    squared to it, so that line is nearly straight, and the first guess takes its slope as
    2. Each guess is kept a fraction of `precision` inside the bracket (one that falls
    outside it is replaced by the bracket's middle), and after a run of evaluations on one
    side of the boundary, at least a step from that side's end that doubles with the run,
    up to the middle: rounding noise near the boundary flattens the secant, which would
    otherwise creep towards it from one side. 4-7 evaluations on smooth distortions where
    bisection to the same precision takes 12.

    `floor`: the distortion at the finest step, when the caller has it (a search along
    another line through the same unquantised description); `start`: a guess of the
    boundary (from an earlier search), evaluated first in place of the coarsest step.
    """
    lo, hi = DELTA_RANGE
    evaluations = 0
    if floor is None:  # first: a description not within the tolerance even unquantised costs one evaluation
        floor, evaluations = distortion(lo), 1
    if not floor <= tolerance:
        return Search(lo, floor, False, evaluations)
    u_lo, d_lo, u_hi = math.log(lo), floor, math.log(hi)
    first = u_hi if start is None else min(max(math.log(start), u_lo), u_hi)
    d = distortion(math.exp(first))
    evaluations += 1
    if d <= tolerance and first == u_hi:
        return Search(hi, d, True, evaluations)
    if d <= tolerance:  # a start within: the bracket's top is DELTA_RANGE's, not yet evaluated
        u_lo, d_lo = first, d
    else:
        u_hi = first
    margin = math.log(precision) * 0.45
    points = [(first, _log_excess(d, floor, tolerance))]  # (log delta, <= 0 within); lo's is log 0
    within_last, streak = d <= tolerance, 1  # the last evaluation's side, and how many in a row were on it
    while u_hi - u_lo > math.log(precision):
        middle = (u_lo + u_hi) / 2
        if len(points) == 1:
            guess = points[0][0] - points[0][1] / 2
        else:
            (u1, g1), (u2, g2) = points[-2:]
            guess = u2 - g2 * (u2 - u1) / (g2 - g1) if g2 != g1 else math.nan
        # rounding noise flattens the secant near the boundary: after a run on one side, step away
        # from that side's end by a distance doubling with the run, up to the middle of the bracket
        step = min(margin * 2**streak, u_hi - middle)
        u = min(max(guess, u_lo + margin), u_hi - margin) if u_lo <= guess <= u_hi else middle
        u = max(u, u_lo + step) if within_last else min(u, u_hi - step)
        d = distortion(math.exp(u))
        evaluations += 1
        points.append((u, _log_excess(d, floor, tolerance)))
        streak = streak + 1 if (d <= tolerance) == within_last else 1
        within_last = d <= tolerance
        if within_last:
            u_lo, d_lo = u, d
        else:
            u_hi = u
    return Search(math.exp(u_lo), d_lo, True, evaluations)


def _log_excess(d: float, floor: float, tolerance: float) -> float:
    """log((distortion - floor) / (tolerance - floor)): <= 0 within the tolerance. Differences
    below 1e-12 of the tolerance count as that (the log of 0)."""
    tiny = tolerance * 1e-12
    return math.log(max(d - floor, tiny) / max(tolerance - floor, tiny))
