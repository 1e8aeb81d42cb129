"""Dictionary metrics, each with a definition that can be checked by hand.

FVU is the residual sum of squares over the total sum of squares about the mean of the
data (per dimension), so it is right for data that is not centred: a dictionary that
outputs the data's mean scores 1, not 1 - |mean|^2 / E|x|^2.
"""

from __future__ import annotations

import torch


def _check(x: torch.Tensor, recon: torch.Tensor) -> None:
    if x.shape != recon.shape or x.dim() != 2:
        raise ValueError(f"x and recon must both have shape (n, d); got {tuple(x.shape)} and {tuple(recon.shape)}")


def mse(x: torch.Tensor, recon: torch.Tensor) -> float:
    _check(x, recon)
    return (x - recon).double().pow(2).mean().item()


def fvu(x: torch.Tensor, recon: torch.Tensor) -> float:
    _check(x, recon)
    x, recon = x.double(), recon.double()
    total = (x - x.mean(0)).pow(2).sum()
    if total == 0:
        raise ValueError("FVU is undefined for data with zero variance")
    return ((x - recon).pow(2).sum() / total).item()


def l0(latents: torch.Tensor) -> float:
    """Mean number of non-zero latents per example."""
    return (latents != 0).double().sum(1).mean().item()


def firing_density(latents: torch.Tensor) -> torch.Tensor:
    """Fraction of examples on which each latent is non-zero."""
    return (latents != 0).double().mean(0)


def dead_fraction(latents: torch.Tensor) -> float:
    return (firing_density(latents) == 0).double().mean().item()


def dense_fraction(latents: torch.Tensor, threshold: float = 0.1) -> float:
    """Fraction of latents firing on more than `threshold` of examples."""
    return (firing_density(latents) > threshold).double().mean().item()
