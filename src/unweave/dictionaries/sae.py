"""Sparse dictionaries: an SAE reconstructs its input from a few active latents; a transcoder
(`kind="transcoder"`) is the same module trained to map an MLP's input to its output
(optionally with a linear skip), a sparse replacement of the MLP (Dunefsky et al. 2024).
How latents are chosen and penalised is the architecture's (see `architectures`).

Conventions the field has learned matter: decoder rows (one per latent) kept at unit norm,
encoder initialised as the decoder's transpose, decoder bias initialised at the data's
geometric median.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unweave.dictionaries.architectures import Architecture, get

KINDS = ("sae", "transcoder")


DEAD_AFTER = 100_000  # training tokens without firing after which a latent counts as dead


@dataclass(frozen=True)
class SAEConfig:
    d_in: int
    n_latents: int
    architecture: str = "topk"  # a name in architectures.ARCHITECTURES
    k: int = 32  # topk, batchtopk: latents kept per example (on average over the batch for batchtopk)
    l1: float = 1e-3  # relu: weight of the decoder-norm-weighted L1 penalty; jumprelu: of the L0 penalty
    bandwidth: float = 1e-3  # jumprelu: width of the straight-through window around the threshold
    aux_k: int = 256  # topk, batchtopk: dead latents asked to explain the residual (AuxK, Gao et al. 2024)
    aux_coef: float = 1 / 32  # weight of that auxiliary loss; 0 turns it off
    dead_after: int = DEAD_AFTER
    kind: str = "sae"  # or "transcoder": reads d_in, writes d_out
    d_out: int | None = None  # transcoder output width (default d_in)
    skip: bool = False  # transcoder: add a linear skip x @ W_skip

    @property
    def width_out(self) -> int:
        return self.d_out or self.d_in

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"SAEConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "sae" and (self.skip or (self.d_out not in (None, self.d_in))):
            raise ValueError("d_out and skip are for transcoders; set kind='transcoder'")
        arch = get(self.architecture)
        if self.d_in < 1 or self.n_latents < 1:
            raise ValueError(f"SAEConfig.d_in and n_latents must be positive, got {self.d_in}, {self.n_latents}")
        arch.validate(self)

    def to_dict(self) -> dict:
        return asdict(self)


class SAE(nn.Module):
    def __init__(self, cfg: SAEConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(cfg.n_latents, cfg.width_out, generator=gen)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        if cfg.kind == "sae":
            self.W_enc = nn.Parameter(w_dec.T.clone())
        else:  # input and output spaces differ: no transpose to start from
            self.W_enc = nn.Parameter(torch.randn(cfg.d_in, cfg.n_latents, generator=gen) / cfg.d_in**0.5)
        self.b_enc = nn.Parameter(torch.zeros(cfg.n_latents))
        self.b_dec = nn.Parameter(torch.zeros(cfg.width_out))
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(cfg.d_in, cfg.width_out))
        self.arch.add_state(self)
        # training tokens since each latent last fired (dead-latent tracking; not part of the saved weights)
        self.register_buffer("since_fired", torch.zeros(cfg.n_latents, dtype=torch.long), persistent=False)
        # inputs with a larger norm (massive activations: attention sinks) were left out of
        # training and are passed through unchanged when the dictionary is spliced in
        self.max_input_norm: float | None = None

    @property
    def arch(self) -> Architecture:
        return get(self.cfg.architecture)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.cfg.d_in:
            raise ValueError(
                f"activations must have shape (n, {self.cfg.d_in}) (d_in of this dictionary), got {tuple(x.shape)}"
            )

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        if self.cfg.kind == "transcoder":
            return x @ self.W_enc + self.b_enc
        return _CentredMatmul.apply(x, self.b_dec, self.W_enc) + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.arch.activate(self, self.pre_activations(x))

    def decode(self, latents: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction from latents; a transcoder with a skip also needs its input x."""
        return latents @ self.W_dec + self._bias(x)

    def _bias(self, x: torch.Tensor | None) -> torch.Tensor:
        if not self.cfg.skip:
            return self.b_dec
        if x is None:
            raise ValueError("this transcoder has a skip connection: decode(latents, x) needs its input x")
        return self.b_dec + x @ self.W_skip

    def decode_sparse(self, indices: torch.Tensor, values: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """decode() of latents given as (n, k) indices and values: reads k decoder rows per example."""
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") + self._bias(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latents = self.encode(x)
        return self.decode(latents, x), latents

    def loss(
        self, x: torch.Tensor, target: torch.Tensor | None = None, pre: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Squared reconstruction error of `target` (default x; a transcoder's MLP output) plus
        the architecture's sparsity penalty and, if it uses one, the AuxK loss. `pre`: this
        batch's pre-activations, when the caller has them already."""
        target = x if target is None else target
        if target.shape != (len(x), self.cfg.width_out):
            raise ValueError(f"target must have shape ({len(x)}, {self.cfg.width_out}), got {tuple(target.shape)}")
        if pre is None:  # computed once: the penalties below need it too
            pre = self.pre_activations(x)
        arch = self.arch
        recon, fired, latents = arch.reconstruct(self, x, pre)
        loss = (target - recon).pow(2).sum(1).mean()
        if self.training:
            with torch.no_grad():
                self.since_fired += len(x)
                self.since_fired[fired] = 0
        if arch.auxk and self.training and self.cfg.aux_coef > 0:
            loss = loss + self.cfg.aux_coef * self._aux_loss(target, pre, recon)
        penalty = arch.penalty(self, pre, latents)
        return loss if penalty is None else loss + penalty

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
        residual_hat = F.embedding_bag(top.indices, self.W_dec, per_sample_weights=top.values, mode="sum")
        return (x - recon.detach() - residual_hat).pow(2).sum(1).mean()

    @torch.no_grad()
    def init_decoder_bias(self, target: torch.Tensor, method: str = "geometric_median") -> None:
        """b_dec at the geometric median (robust to the few huge-norm tokens that residual
        streams have) or the mean of the reconstruction targets."""
        if method not in ("geometric_median", "mean"):
            raise ValueError(f"decoder bias init must be 'geometric_median' or 'mean', got {method!r}")
        self.b_dec.copy_(geometric_median(target) if method == "geometric_median" else target.mean(0))

    @torch.no_grad()
    def fold_scales(self, scale_in: float, scale_out: float) -> None:
        """Make a dictionary trained on x * scale_in -> y * scale_out work on raw x and y.

        Latents are divided by scale_out, so TopK choices and decoder norms are unchanged."""
        ratio = scale_in / scale_out
        if self.cfg.kind == "transcoder":
            self.W_enc.mul_(ratio)
        elif scale_in != scale_out:
            raise ValueError("an SAE reads and writes the same space: scale_in must equal scale_out")
        self.b_enc.div_(scale_out)
        self.b_dec.div_(scale_out)
        if self.cfg.skip:
            self.W_skip.mul_(ratio)
        self.arch.fold_scale(self, scale_out)

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-12)

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Drop the part of each decoder row's gradient along the row: it would only change its norm."""
        if self.W_dec.grad is not None:
            along = (self.W_dec.grad * self.W_dec).sum(1, keepdim=True)
            self.W_dec.grad -= along * self.W_dec


class _CentredMatmul(torch.autograd.Function):
    """(x - b) @ W with b's gradient as -(sum of the output's gradient over rows) @ W^T: one
    (1, n) @ (n, d) product instead of autograd's (rows, n) @ (n, d) one, which it would
    compute because x - b needs a gradient whenever b does. Forward and W's gradient are
    the plain ones; x's gradient is computed only when x needs it."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, b: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        centred = x - b
        ctx.save_for_backward(centred, W)
        return centred @ W

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        centred, W = ctx.saved_tensors
        need_x, need_b, need_w = ctx.needs_input_grad
        grad_x = grad @ W.T if need_x else None
        grad_b = -(grad.sum(0) @ W.T) if need_b else None
        grad_w = centred.T @ grad if need_w else None
        return grad_x, grad_b, grad_w


def norm_limit(x: torch.Tensor, ratio: float) -> float:
    """The input norm above which rows count as massive activations: `ratio` times the
    median row norm of x."""
    return ratio * x.norm(dim=1).median().item()


def ordinary_rows(x: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    """Mask of the rows of x a dictionary is trained on and applied to: those with norm at
    most max_norm (every row when None). The others (massive activations, such as attention
    sinks with norms 100x the rest) are left out of training, where they would dominate the
    squared error, and passed through unchanged when the dictionary is spliced in."""
    if max_norm is None:
        return torch.ones(len(x), dtype=torch.bool, device=x.device)
    return x.norm(dim=1) <= max_norm


@torch.no_grad()
def geometric_median(x: torch.Tensor, iters: int = 50, tol: float = 1e-7) -> torch.Tensor:
    """The point minimising the sum of Euclidean distances to the rows of x (Weiszfeld)."""
    x = x.double()
    m = x.mean(0)
    for _ in range(iters):
        w = 1 / (x - m).norm(dim=1).clamp(min=1e-12)
        new = (w[:, None] * x).sum(0) / w.sum()
        done = (new - m).norm() <= tol * new.norm().clamp(min=1.0)
        m = new
        if done:
            break
    return m.float()
