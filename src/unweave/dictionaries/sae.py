"""Sparse autoencoders: ReLU with a decoder-norm-weighted L1 penalty, TopK, BatchTopK (the k
largest pre-activations per example on average, chosen across the batch; exported with a
threshold so inference is a JumpReLU), and JumpReLU (a learned threshold per latent, trained
through a straight-through estimator of the L0 penalty, Rajamanoharan et al. 2024).

Conventions the field has learned matter: decoder rows (one per latent) kept at unit norm,
encoder initialised as the decoder's transpose, decoder bias initialised at the data mean.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu")


@dataclass(frozen=True)
class SAEConfig:
    d_in: int
    n_latents: int
    architecture: str = "topk"
    k: int = 32  # topk, batchtopk: latents kept per example (on average over the batch for batchtopk)
    l1: float = 1e-3  # relu: weight of the decoder-norm-weighted L1 penalty; jumprelu: of the L0 penalty
    bandwidth: float = 1e-3  # jumprelu: width of the straight-through window around the threshold
    aux_k: int = 256  # topk, batchtopk: dead latents asked to explain the residual (AuxK, Gao et al. 2024)
    aux_coef: float = 1 / 32  # weight of that auxiliary loss; 0 turns it off
    dead_after: int = 100_000  # training tokens without firing after which a latent counts as dead

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"SAEConfig.architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.d_in < 1 or self.n_latents < 1:
            raise ValueError(f"SAEConfig.d_in and n_latents must be positive, got {self.d_in}, {self.n_latents}")
        if self.architecture in ("topk", "batchtopk") and not 1 <= self.k <= self.n_latents:
            raise ValueError(f"SAEConfig.k must be between 1 and n_latents={self.n_latents}, got {self.k}")

    def to_dict(self) -> dict:
        return asdict(self)


class SAE(nn.Module):
    def __init__(self, cfg: SAEConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(cfg.n_latents, cfg.d_in, generator=gen)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(cfg.n_latents))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        if cfg.architecture == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((cfg.n_latents,), -3.0))
        if cfg.architecture == "batchtopk":  # running mean of the smallest kept activation, used at inference
            self.register_buffer("threshold", torch.zeros(()))
        # training tokens since each latent last fired (dead-latent tracking; not part of the saved weights)
        self.register_buffer("since_fired", torch.zeros(cfg.n_latents, dtype=torch.long), persistent=False)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.cfg.d_in:
            raise ValueError(f"activations must have shape (n, {self.cfg.d_in}), got {tuple(x.shape)}")

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._activate(self.pre_activations(x))

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        arch = self.cfg.architecture
        if arch == "relu":
            return torch.relu(pre)
        if arch == "jumprelu":
            return pre * _Step.apply(pre, self.log_threshold.exp(), self.cfg.bandwidth)
        if arch == "batchtopk" and not self.training:
            return pre * (pre > self.threshold)
        if arch == "batchtopk":
            flat = torch.relu(pre).flatten()
            top = flat.topk(min(self.cfg.k * len(pre), flat.numel()))
            kept = torch.zeros_like(flat).scatter(0, top.indices, top.values).view_as(pre)
            positive = top.values[top.values > 0]
            if len(positive):
                with torch.no_grad():
                    self.threshold.mul_(0.99).add_(0.01 * positive.min())
            return kept
        top = pre.topk(self.cfg.k, dim=1)
        return torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latents = self.encode(x)
        return self.decode(latents), latents

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_activations(x)  # computed once: the penalties below need it too
        latents = self._activate(pre)
        recon = self.decode(latents)
        loss = (x - recon).pow(2).sum(1).mean()
        if self.training:
            with torch.no_grad():
                self.since_fired += len(x)
                self.since_fired[(latents != 0).any(0)] = 0
        if self.cfg.architecture in ("topk", "batchtopk") and self.training and self.cfg.aux_coef > 0:
            loss = loss + self.cfg.aux_coef * self._aux_loss(x, pre, recon)
        if self.cfg.architecture == "relu":
            loss = loss + self.cfg.l1 * (latents * self.W_dec.norm(dim=1)).sum(1).mean()
        if self.cfg.architecture == "jumprelu":
            loss = loss + self.cfg.l1 * _Step.apply(pre, self.log_threshold.exp(), self.cfg.bandwidth).sum(1).mean()
        return loss

    def dead_mask(self) -> torch.Tensor:
        return self.since_fired >= self.cfg.dead_after

    def _aux_loss(self, x: torch.Tensor, pre: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """AuxK: the top aux_k dead latents reconstruct what the live ones missed, which gives
        dead latents a gradient towards directions still unexplained."""
        dead = self.dead_mask()
        if not dead.any():
            return x.new_zeros(())
        dead_pre = torch.relu(pre).masked_fill(~dead, 0)
        top = dead_pre.topk(min(self.cfg.aux_k, int(dead.sum())), dim=1)
        residual_hat = torch.zeros_like(dead_pre).scatter(1, top.indices, top.values) @ self.W_dec
        return (x - recon.detach() - residual_hat).pow(2).sum(1).mean()

    @torch.no_grad()
    def init_decoder_bias(self, x: torch.Tensor) -> None:
        self.b_dec.copy_(x.mean(0))

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-12)

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Drop the part of each decoder row's gradient along the row: it would only change its norm."""
        if self.W_dec.grad is not None:
            along = (self.W_dec.grad * self.W_dec).sum(1, keepdim=True)
            self.W_dec.grad -= along * self.W_dec


class _Step(torch.autograd.Function):
    """Heaviside step H(pre - threshold): gradient zero for pre, and for the threshold the
    straight-through estimate -1/bandwidth inside a window of that width around it."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        window = ((pre - threshold).abs() < ctx.bandwidth / 2).to(pre.dtype)
        return None, (-grad * window / ctx.bandwidth).sum(0), None


def train_sae(sae: SAE, batches, steps: int, lr: float = 1e-3, warmup: int = 100) -> list[float]:
    """Adam with linear warm-up; unit-norm decoder rows kept throughout. Returns the losses."""
    return train_many([sae], batches, steps, lr, warmup)[0]


def train_many(saes: list[SAE], batches, steps: int, lr: float = 1e-3, warmup: int = 100) -> list[list[float]]:
    """Train several dictionaries (a sweep of k or widths) on one stream: each batch is read once
    and fed to all of them."""
    widths = {s.cfg.d_in for s in saes}
    if len(widths) != 1:
        raise ValueError(f"dictionaries trained on one stream must share d_in; got {sorted(widths)}")
    trainers = [_Trainer(s, lr, warmup) for s in saes]
    stream = iter(batches)
    for step in range(steps):
        x = next(stream)
        for t in trainers:
            t.step(x, step)
    return [t.losses for t in trainers]


class _Trainer:
    def __init__(self, sae: SAE, lr: float, warmup: int):
        self.sae, self.lr, self.warmup, self.losses = sae, lr, warmup, []
        self.opt = torch.optim.Adam(sae.parameters(), lr=lr)

    def step(self, x: torch.Tensor, step: int) -> None:
        if step == 0:
            self.sae.init_decoder_bias(x)
        for group in self.opt.param_groups:
            group["lr"] = self.lr * min(1.0, (step + 1) / self.warmup)
        loss = self.sae.loss(x)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.sae.remove_parallel_gradient()
        self.opt.step()
        self.sae.normalise_decoder()
        self.losses.append(loss.item())
