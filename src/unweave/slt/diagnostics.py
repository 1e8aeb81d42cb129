"""Convergence diagnostics for SGLD traces: where burn-in ends, and whether chains agree.

- `burn_in_cut`: MSER (White 1997, the marginal standard error rule): the cut d that
  minimises the squared standard error of the mean of what is kept,
  sum_{t >= d} (y_t - mean_d)^2 / (T - d)^2, on batch means of the chains' average trace.
  A trace still drifting at the end has its minimum at the latest allowed cut.
- `split_rhat`: the potential scale reduction factor of Gelman et al. (BDA3, section 11.4)
  on chains split in halves, so a common drift inside every chain also raises it.
"""

from __future__ import annotations

import math

import torch


def burn_in_cut(trace: torch.Tensor, max_fraction: float = 0.5, batches: int = 100) -> int:
    """The number of leading draws to drop from `trace` (chains, draws), judged by MSER."""
    y = trace.double().mean(0)
    size = max(1, len(y) // batches)
    means = y[: len(y) // size * size].view(-1, size).mean(1)
    best, best_d = math.inf, 0
    for d in range(int(len(means) * max_fraction) + 1):
        kept = means[d:]
        if len(kept) < 2:
            break
        score = (kept - kept.mean()).pow(2).sum().item() / len(kept) ** 2
        if score < best:
            best, best_d = score, d
    return best_d * size


def split_rhat(trace: torch.Tensor) -> float:
    """Split R-hat of `trace` (chains, draws): near 1 when every half-chain samples the same law."""
    draws = trace.shape[1] // 2
    if draws < 2:
        return math.nan
    halves = torch.cat([trace[:, :draws], trace[:, -draws:]]).double()
    within = halves.var(1).mean()
    between = draws * halves.mean(1).var()
    if within == 0:
        return 1.0 if between == 0 else math.inf
    pooled = (draws - 1) / draws * within + between / draws
    return math.sqrt((pooled / within).item())
