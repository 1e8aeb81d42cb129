"""A toy model of superposition (Elhage et al. 2022): n sparse features compressed into
d < n dimensions by W and read back through ReLU(W^T W x + b). After training, the
columns of W are the true feature directions in the hidden space, the known answer a
dictionary trained on the hidden activations h = W x should recover."""

from __future__ import annotations

import torch
from torch import nn


class ToyModel(nn.Module):
    def __init__(self, n_features: int, d_hidden: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(d_hidden, n_features, generator=gen) * 0.1)
        self.b = nn.Parameter(torch.zeros(n_features))
        self.hidden = nn.Identity()  # a site: h = W x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(x @ self.W.T)
        return torch.relu(h @ self.W + self.b)


def sample_features(n: int, n_features: int, p_active: float, gen: torch.Generator) -> torch.Tensor:
    """Each feature is active with probability p_active, with a value uniform in [0, 1]."""
    active = torch.rand(n, n_features, generator=gen) < p_active
    return active * torch.rand(n, n_features, generator=gen)


def train_toy(
    n_features: int = 5, d_hidden: int = 2, p_active: float = 0.05, steps: int = 3000, seed: int = 0
) -> ToyModel:
    model = ToyModel(n_features, d_hidden, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        x = sample_features(1024, n_features, p_active, gen)
        loss = (model(x) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def mean_max_cosine(true_dirs: torch.Tensor, learned: torch.Tensor) -> float:
    """For each true direction (row), the best cosine with any learned direction, averaged."""
    t = true_dirs / true_dirs.norm(dim=1, keepdim=True)
    l_ = learned / learned.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return (t @ l_.T).max(1).values.mean().item()
