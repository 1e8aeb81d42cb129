"""Matching units of two runs on the same inputs.

- Correlation: the Pearson correlation of every unit of run A with every unit of run B over
  the inputs; a unit's partner is the unit of B it correlates with most (max correlation),
  and the mean over A's units is the mean-max correlation (Li et al. 2016, "Convergent
  learning"). A one-to-one matching maximises the summed correlation (Hungarian).
- Linear CKA (Kornblith et al. 2019): similarity of two whole representations, invariant to
  rotations and isotropic scaling of either, so it sees a shared representation in a rotated
  basis where single units do not match.
- Baseline: the same maxima with run B's inputs permuted, so the two runs see different
  inputs; a unit recurs when its max correlation is above the baseline's 99th percentile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

BASELINE_QUANTILE = 0.99
BASELINE_REPEATS = 20


def correlations(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlations (units of a, units of b) over rows; a unit that never varies
    correlates 0 with everything."""
    za, zb = _standardised_pair(a, b)
    return za.T @ zb / len(a)


def _standardised_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(
            f"activations must be (inputs, units) over the same inputs, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return _standardise(a.double()), _standardise(b.double())


def _standardise(x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(0)
    std = centred.pow(2).mean(0).sqrt()
    return centred / torch.where(std > 1e-12 * (1 + x.abs().max()), std, torch.inf)


def linear_cka(a: torch.Tensor, b: torch.Tensor) -> float:
    """||A^T B||_F^2 / (||A^T A||_F ||B^T B||_F) on column-centred activations."""
    a, b = (x.double() - x.double().mean(0) for x in (a, b))
    cross = (a.T @ b).pow(2).sum()
    norm = (a.T @ a).pow(2).sum().sqrt() * (b.T @ b).pow(2).sum().sqrt()
    return float(cross / norm) if norm > 0 else 0.0


@dataclass
class Matching:
    corr: torch.Tensor  # (units of A, units of B)
    partner: list[int]  # each unit of A: its best unit of B
    best: list[float]  # and that correlation
    one_to_one: list[tuple[int, int, float]]  # Hungarian pairs (a, b, correlation)
    baseline: float  # the permuted-input maxima's BASELINE_QUANTILE
    cka: float

    @property
    def mean_max(self) -> float:
        return float(np.mean(self.best))

    def recurring(self) -> list[int]:
        """Units of A whose best partner beats the baseline."""
        return [i for i, c in enumerate(self.best) if c > self.baseline]

    def share_above(self, level: float) -> float:
        return float(np.mean([c > level for c in self.best]))


def match(
    a: torch.Tensor, b: torch.Tensor, rows_per_input: int = 1, seed: int = 0, repeats: int = BASELINE_REPEATS
) -> Matching:
    """`rows_per_input`: rows come in blocks of this many per input (an attention pattern's
    query-key cells); the baseline permutes whole inputs, keeping what is the same for every
    input (positions) in place."""
    za, zb = _standardised_pair(a, b)
    corr = za.T @ zb / len(a)
    best, partner = corr.max(dim=1)
    rows, cols = linear_sum_assignment(-corr.numpy())
    if len(b) % rows_per_input:
        raise ValueError(f"{len(b)} rows do not split into inputs of {rows_per_input} rows each")
    # permuting the inputs leaves each unit's mean and spread as they were: the standardised
    # activations serve the baseline too
    blocks = zb.reshape(-1, rows_per_input, zb.shape[1])
    gen = torch.Generator().manual_seed(seed)
    null = [
        (za.T @ blocks[torch.randperm(len(blocks), generator=gen)].reshape(zb.shape) / len(a)).max(dim=1).values
        for _ in range(repeats)
    ]
    return Matching(
        corr=corr,
        partner=partner.tolist(),
        best=best.tolist(),
        one_to_one=[(int(r), int(c), float(corr[r, c])) for r, c in zip(rows, cols)],
        baseline=float(torch.quantile(torch.cat(null), BASELINE_QUANTILE)),
        cka=linear_cka(a, b),
    )
