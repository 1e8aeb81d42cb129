"""JumpReLU: a latent fires above its own learned threshold, trained through a
straight-through estimate of the L0 penalty's gradient (Rajamanoharan et al. 2024). The
threshold is learned as its log (positive); SAELens stores the threshold itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from unweave.dictionaries.architectures import Architecture, register

if TYPE_CHECKING:
    from unweave.dictionaries.sae import SAE


@register
class JumpReLU(Architecture):
    name = saelens = "jumprelu"
    state = ("log_threshold",)

    def add_state(self, sae: SAE) -> None:
        sae.log_threshold = nn.Parameter(torch.full((sae.cfg.n_latents,), -3.0))

    def activate(self, sae: SAE, pre: torch.Tensor) -> torch.Tensor:
        return pre * _Step.apply(pre, sae.log_threshold.exp(), sae.cfg.bandwidth)

    def penalty(self, sae: SAE, pre: torch.Tensor, latents: torch.Tensor | None) -> torch.Tensor:
        return sae.cfg.l1 * _Step.apply(pre, sae.log_threshold.exp(), sae.cfg.bandwidth).sum(1).mean()

    def fold_scale(self, sae: SAE, scale_out: float) -> None:
        sae.log_threshold.sub_(torch.log(torch.tensor(scale_out)))

    def saelens_tensors(self, sae: SAE) -> dict[str, torch.Tensor]:
        return {"threshold": sae.log_threshold.detach().exp()}

    def state_from_saelens(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "threshold" not in tensors:
            raise ValueError("a jumprelu dictionary needs a 'threshold' tensor")
        return {"log_threshold": tensors["threshold"].clamp(min=1e-12).log()}


class _Step(torch.autograd.Function):
    """Heaviside step H(pre - threshold): gradient zero for pre, and for the threshold the
    straight-through estimate -1/bandwidth inside a window of that width around it."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:  # noqa: ANN001
        pre, threshold = ctx.saved_tensors
        window = ((pre - threshold).abs() < ctx.bandwidth / 2).to(pre.dtype)
        return None, (-grad * window / ctx.bandwidth).sum(0), None
