"""Models whose learning coefficient is known in closed form (see `unweave.slt.truth`).

- `NormalCrossing`: the loss is K(w) = prod_i w_i^(2 p_i) itself, at w* = 0.
- `deep_linear_task`: a deep linear network (two layers: reduced-rank regression) at a
  true map of rank r, with each layer's unused units zero in and out (the most singular
  realisation of the map, where the local coefficient is the global one), and noiseless
  Gaussian data y = f(x), so the empirical loss is a quadratic form in the product map.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from unweave.slt.gradients import row_mean


class NormalCrossing(nn.Module):
    """forward(x) = K(w) for every row of x; use `normal_crossing_loss`."""

    def __init__(self, powers: list[int]):
        super().__init__()
        self.register_buffer("powers", torch.tensor(powers, dtype=torch.float64), persistent=False)
        self.w = nn.Parameter(torch.zeros(len(powers), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = torch.prod(self.w ** (2 * self.powers))
        return k.expand(x.shape[0])


def normal_crossing_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return output.mean()


def _half_squared_errors(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood with unit variance, up to a constant: 1/2 |y - f(x)|^2 (batch mean)."""
    return 0.5 * (output - target).pow(2).sum(-1)


half_squared_error = row_mean(_half_squared_errors)


def deep_linear(widths: list[int]) -> nn.Sequential:
    return nn.Sequential(*(nn.Linear(a, b, bias=False) for a, b in zip(widths[:-1], widths[1:])))


def deep_linear_task(
    widths: list[int], rank: int, n: int = 10_000, batch_size: int | None = None, seed: int = 0
) -> tuple[nn.Sequential, DataLoader]:
    """The network at a rank-`rank` true map, and a loader of noiseless data from that map."""
    if not 0 <= rank <= min(widths):
        raise ValueError(f"rank must be between 0 and min(widths) = {min(widths)}, got {rank}")
    gen = torch.Generator().manual_seed(seed)
    model = deep_linear(widths)
    with torch.no_grad():
        for layer in model:
            layer.weight.zero_()
            if rank:  # a well-conditioned r x r block in the top-left corner: rows/cols beyond r are unused
                q, _ = torch.linalg.qr(torch.randn(rank, rank, generator=gen))
                layer.weight[:rank, :rank] = q
    x = torch.randn(n, widths[0], generator=gen)
    with torch.no_grad():
        y = model(x)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size or n, shuffle=True)
    return model, loader


def normal_crossing_task(powers: list[int], n: int = 10_000) -> tuple[NormalCrossing, DataLoader]:
    """The model at w* = 0 and a loader whose data the loss ignores (n sets n*beta's default)."""
    x = torch.zeros(n, 1, dtype=torch.float64)
    return NormalCrossing(powers), DataLoader(TensorDataset(x, x), batch_size=n)
