"""Tail statistics of activations, unit by unit, in three kinds of basis of one site.

- the site's own coordinates (neurons in an MLP, the residual stream's basis directions);
- random directions: the same activations in a random orthonormal basis (Haar), the null
  for "the tails belong to the basis": a rotation mixes a heavy coordinate into all
  directions, so heavy tails that are basis-aligned (Elhage et al. 2023, "Privileged Bases
  in the Transformer Residual Stream") show in the coordinates and not here;
- dictionary latents, when a dictionary reads the site.

Per unit: kurtosis E[z^4] (3 for a Gaussian, 1.8 for a uniform, more for heavier tails),
the share of values beyond 5 standard deviations (Gaussian: 5.7e-7) and the largest |z|;
pooled, a histogram of z on a log probability axis against the standard normal density.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

FAR = 5.0  # "far in the tail": beyond this many standard deviations
GAUSSIAN_BEYOND_FAR = math.erfc(FAR / math.sqrt(2))  # two-sided share of a Gaussian beyond FAR


def standardised(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, units) -> z-scores per unit (float64), and which units vary at all."""
    x = x.double()
    centred = x - x.mean(0)
    std = centred.pow(2).mean(0).sqrt()
    varies = std > 1e-12 * (1 + x.abs().amax(0))
    return centred / torch.where(varies, std, torch.ones_like(std)), varies


def kurtosis(x: torch.Tensor) -> torch.Tensor:
    """E[z^4] per unit (the population moment, Pearson's: 3 for a Gaussian; NaN for a
    constant unit)."""
    z, varies = standardised(x)
    k = z.pow(4).mean(0)
    return torch.where(varies, k, torch.full_like(k, float("nan")))


@dataclass
class BasisTails:
    basis: str
    units: int
    constant: int  # units that never vary (dead latents)
    index: np.ndarray  # the varying units' indices, which the per-unit arrays follow
    kurtosis: np.ndarray  # per varying unit
    beyond_far: float  # pooled share of |z| > FAR over the varying units
    max_abs_z: np.ndarray  # per varying unit
    hist_edges: np.ndarray
    hist_density: np.ndarray  # pooled density of z

    def row(self, site: str) -> dict:
        k = self.kurtosis
        return {
            "site": site,
            "basis": self.basis,
            "units": self.units,
            "constant": self.constant,
            "median_kurtosis": float(np.median(k)) if len(k) else None,
            "p99_kurtosis": float(np.quantile(k, 0.99)) if len(k) else None,
            "max_kurtosis": float(k.max()) if len(k) else None,
            "max_abs_z": float(self.max_abs_z.max()) if len(k) else None,
            "beyond_5sd": self.beyond_far,
            "beyond_5sd_over_gaussian": self.beyond_far / GAUSSIAN_BEYOND_FAR,
        }


def tails(x: torch.Tensor, basis: str, bins: int = 121, z_max: float | None = None) -> BasisTails:
    """Tail statistics of (rows, units) activations; the histogram spans +-z_max (default:
    the largest |z| seen, at least 6)."""
    if x.dim() != 2 or x.shape[0] < 8:
        raise ValueError(f"activations must be (rows, units) with at least 8 rows, got {tuple(x.shape)}")
    z, varies = standardised(x)
    z = z[:, varies]
    absz = z.abs()
    kurt = z.pow(4).mean(0).numpy()
    top = float(absz.max()) if z.numel() else 0.0
    span = z_max if z_max is not None else max(6.0, math.ceil(top))
    edges = np.linspace(-span, span, bins + 1)
    counts, _ = np.histogram(z.flatten().numpy(), bins=edges)
    density = counts / max(1, z.numel()) / np.diff(edges)
    return BasisTails(
        basis=basis,
        units=int(x.shape[1]),
        constant=int((~varies).sum()),
        index=varies.nonzero().squeeze(1).numpy(),
        kurtosis=kurt,
        beyond_far=float((absz > FAR).double().mean()) if z.numel() else 0.0,
        max_abs_z=absz.amax(0).numpy() if z.numel() else np.zeros(0),
        hist_edges=edges,
        hist_density=density,
    )


def random_rotation(d: int, seed: int = 0) -> torch.Tensor:
    """A Haar-random orthogonal (d, d) matrix (QR of a Gaussian matrix, signs fixed)."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))
