"""Uniform quantisation, and the search for the coarsest step a tolerance allows.

A description's parameters and per-example values are all quantised with one relative
step delta: a tensor t gets the step delta * rms(t), the values the step delta * rms(their
nonzero entries). For a dictionary with unit-norm decoder rows this spends the error
budget about equally on the two. The coarsest delta whose distortion stays within the
tolerance is found by bisection on log(delta), not by a grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

DELTA_RANGE = (1e-6, 4.0)  # relative steps searched: from near float precision to coarser than the data
BISECTIONS = 18  # log-scale halvings: the step is found to within a factor 10^(6.6 / 2^18) of the boundary


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


def coarsest_delta(distortion: Callable[[float], float], tolerance: float, bisections: int = BISECTIONS) -> Search:
    """Bisection on log(delta) between DELTA_RANGE for the largest delta with
    distortion(delta) <= tolerance. Assumes distortion grows with delta (true up to rounding
    noise); the result always satisfies the tolerance when `met`."""
    lo, hi = DELTA_RANGE
    d_hi = distortion(hi)
    if d_hi <= tolerance:
        return Search(hi, d_hi, True, 1)
    d_lo = distortion(lo)
    if not d_lo <= tolerance:
        return Search(lo, d_lo, False, 2)
    for _ in range(bisections):
        mid = math.sqrt(lo * hi)
        d_mid = distortion(mid)
        if d_mid <= tolerance:
            lo, d_lo = mid, d_mid
        else:
            hi = mid
    return Search(lo, d_lo, True, 2 + bisections)
