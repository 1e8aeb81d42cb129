"""Memorization vs generalization in the toy model of superposition (Henighan et al. 2023,
"Superposition, Memorization, and Double Descent").

The ReLU-output toy `x' = ReLU(W^T W x + b)` (n features, m hidden dimensions) is trained
on a fixed set of T sparse datapoints (each feature active with a small probability, with a
value uniform in [0, 1], each datapoint scaled to unit norm), full batch, with AdamW and
weight decay, for every T of a sweep. Two objects can claim the hidden space: the features
(columns W_i) and the training datapoints (hidden vectors h_t = W x_t). Their
dimensionality (Elhage et al. 2022) says how much of a dimension each one gets,

    D_i = ||v_i||^2 / sum_j (v_i_hat . v_j)^2,

1 for a vector alone on its own dimension, 1/k for k vectors sharing one. The published
result: with few datapoints the model stores the datapoints (they get the dimensionality,
arranged in clean polygons, the features are a mess), with many it stores features, and in
between neither does, where the test loss peaks: double descent in the dataset size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from unweave import progress
from unweave.artifacts import read_tensors, settings_folder, write_tensors
from unweave.configs import setting, to_dict


@dataclass(frozen=True)
class MemorizationConfig:
    n_features: int = setting(400, "Features of the input (n).")
    d_hidden: int = setting(5, "Hidden dimensions (m).")
    active: float = setting(10.0, "Expected active features per datapoint (feature probability active / n).")
    sizes: list[int] = setting(
        [10, 30, 100, 200, 300, 500, 1000, 2000, 4000], "Training-set sizes T (repeat --sizes for each)."
    )
    steps: int = setting(15_000, "Full-batch AdamW steps per training set.")
    lr: float = setting(1e-3, "Peak learning rate (linear warm-up over 5% of the steps, then cosine decay).")
    weight_decay: float = setting(1e-2, "AdamW weight decay.")
    test_examples: int = setting(10_000, "Fresh datapoints the test loss is measured on.")
    seed: int = setting(0, "Seed of the datapoints and the initialisation.")

    def __post_init__(self) -> None:
        if self.n_features < 2 or not 1 <= self.d_hidden < self.n_features:
            raise ValueError(
                f"need 1 <= --d-hidden < --n-features, got {self.d_hidden} and {self.n_features} "
                "(the hidden space must be smaller than the input for superposition)"
            )
        if not 0 < self.active <= self.n_features:
            raise ValueError(f"--active must be in (0, n_features={self.n_features}], got {self.active}")
        if len(self.sizes) < 3 or min(self.sizes) < 1 or len(set(self.sizes)) != len(self.sizes):
            raise ValueError(
                f"--sizes takes at least three different training-set sizes of at least 1, got {self.sizes}"
            )
        if self.steps < 20 or self.test_examples < 100:
            raise ValueError(
                f"--steps must be at least 20 and --test-examples at least 100, got {self.steps}, {self.test_examples}"
            )


def sample(n: int, cfg: MemorizationConfig, gen: torch.Generator) -> torch.Tensor:
    """n datapoints: each feature active with probability active / n_features, value uniform
    in [0, 1]; each datapoint scaled to unit norm (an all-zero one stays zero)."""
    p = cfg.active / cfg.n_features
    x = (torch.rand(n, cfg.n_features, generator=gen) < p) * torch.rand(n, cfg.n_features, generator=gen)
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


def dimensionality(vectors: torch.Tensor) -> torch.Tensor:
    """Each row's dimensionality ||v_i||^2 / sum_j (v_i_hat . v_j)^2 (0 for a zero row)."""
    v = vectors.double()
    norm = v.norm(dim=1)
    unit = v / norm.clamp(min=1e-300)[:, None]
    overlap = (unit @ v.T).pow(2).sum(1)
    return torch.where(norm > 0, norm.pow(2) / overlap.clamp(min=1e-300), torch.zeros_like(norm)).float()


def reconstruct(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x @ W.T @ W + b)


def per_example_loss(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Squared error summed over features, per datapoint (0 for a perfect reconstruction, 1
    for predicting nothing on a unit-norm datapoint)."""
    return (reconstruct(W, b, x) - x).pow(2).sum(1)


@dataclass
class Fit:
    size: int
    W: torch.Tensor  # (m, n)
    b: torch.Tensor
    train: torch.Tensor  # the T datapoints
    train_loss: float
    test_losses: torch.Tensor  # per test datapoint

    @property
    def test_loss(self) -> float:
        return float(self.test_losses.mean())

    @cached_property  # (T, T) overlaps for the datapoints: computed once per fit
    def feature_dims(self) -> torch.Tensor:
        return dimensionality(self.W.T)

    @cached_property
    def datapoint_dims(self) -> torch.Tensor:
        return dimensionality(self.train @ self.W.T)


def fit(size: int, cfg: MemorizationConfig, test: torch.Tensor) -> Fit:
    """Train the toy on `size` datapoints, full batch (the datapoints and the initialisation
    depend on the seed and the size only, so each size can be rerun alone)."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + size)
    train = sample(size, cfg, gen)
    W = torch.nn.Parameter(torch.randn(cfg.d_hidden, cfg.n_features, generator=gen) / math.sqrt(cfg.n_features))
    b = torch.nn.Parameter(torch.zeros(cfg.n_features))
    opt = torch.optim.AdamW([W, b], lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))
    )
    for _ in range(cfg.steps):
        loss = per_example_loss(W, b, train).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        W, b = W.detach(), b.detach()
        return Fit(size, W, b, train, float(per_example_loss(W, b, train).mean()), per_example_loss(W, b, test))


def sweep(cfg: MemorizationConfig, folder: Path | None = None) -> list[Fit]:
    """One fit per training-set size. With `folder`, each finished fit is saved there, and a
    rerun with the same settings (an interrupted sweep) loads those and trains the rest."""
    test = sample(cfg.test_examples, cfg, torch.Generator().manual_seed(cfg.seed * 1_000_003 + 999_983))
    done = _Saved(folder, cfg) if folder is not None else None
    fits = []
    for size in progress.track(sorted(cfg.sizes), "training one toy per dataset size"):
        found = done.load(size) if done else None
        if found is None:
            found = fit(size, cfg, test)
            if done:
                done.save(found)
        fits.append(found)
    return fits


class _Saved:
    """Finished fits of a sweep on disk, valid for the settings they were trained with (a
    size's fit depends on everything but the list of sizes)."""

    def __init__(self, folder: Path, cfg: MemorizationConfig):
        self.folder = folder
        settings_folder(folder, {k: v for k, v in to_dict(cfg).items() if k != "sizes"})

    def load(self, size: int) -> Fit | None:
        path = self.folder / f"T{size}.safetensors"
        if not path.exists():
            return None
        t = read_tensors(path)
        return Fit(size, t["W"], t["b"], t["train"], float(t["train_loss"]), t["test_losses"])

    def save(self, f: Fit) -> None:
        tensors = {
            "W": f.W,
            "b": f.b,
            "train": f.train,
            "train_loss": torch.tensor(f.train_loss),
            "test_losses": f.test_losses,
        }
        write_tensors(self.folder / f"T{f.size}.safetensors", tensors)


@dataclass
class DoubleDescent:
    peak: int  # the training-set size where the test loss peaks
    rise: float  # the peak's test loss over the lowest before it
    fall: float  # ... and over the lowest after it
    rise_se: float  # standard errors of those differences (paired over the same test datapoints)
    fall_se: float

    @property
    def found(self) -> bool:
        """The peak stands above both sides by more than three standard errors."""
        return self.rise > 3 * self.rise_se and self.fall > 3 * self.fall_se


def double_descent(fits: list[Fit]) -> DoubleDescent | None:
    """The highest test loss strictly inside the sweep, against the lowest on either side;
    None when the highest is at either end (no interior peak)."""
    losses = [f.test_loss for f in fits]
    top = max(range(len(fits)), key=losses.__getitem__)
    if top in (0, len(fits) - 1):
        return None
    before = min(range(top), key=losses.__getitem__)
    after = min(range(top + 1, len(fits)), key=losses.__getitem__)

    def gap(i: int) -> tuple[float, float]:
        diff = fits[top].test_losses - fits[i].test_losses
        return float(diff.mean()), float(diff.std() / math.sqrt(len(diff)))

    (rise, rise_se), (fall, fall_se) = gap(before), gap(after)
    return DoubleDescent(fits[top].size, rise, fall, rise_se, fall_se)


def held(dims: torch.Tensor, m: int) -> float:
    """Dimensions held by the m best-stored objects: the sum of the m largest
    dimensionalities (at most m; m clean orthogonal objects hold all m)."""
    return float(dims.topk(min(m, len(dims))).values.sum())


def regime(f: Fit) -> str:
    """Which kind of object holds more of the hidden space: 'datapoints' or 'features'."""
    m = f.W.shape[0]
    return "datapoints" if held(f.datapoint_dims, m) > held(f.feature_dims, m) else "features"
