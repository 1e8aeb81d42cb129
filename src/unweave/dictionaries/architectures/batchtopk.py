"""BatchTopK: the k x batch largest pre-activations of the whole batch, so k per example on
average (Bussmann et al. 2024). At inference a latent fires above one threshold, the running
mean of the smallest kept activation: a JumpReLU, which is how it is saved (and loads)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from unweave.dictionaries.architectures import Architecture, register
from unweave.dictionaries.architectures.topk import check_k

if TYPE_CHECKING:
    from unweave.dictionaries.sae import SAE, SAEConfig


@register
class BatchTopK(Architecture):
    name, saelens = "batchtopk", "jumprelu"
    loads_saelens = False
    auxk = True
    state = ("threshold",)

    def validate(self, cfg: SAEConfig) -> None:
        check_k(cfg)

    def add_state(self, sae: SAE) -> None:
        sae.register_buffer("threshold", torch.zeros(()))

    def activate(self, sae: SAE, pre: torch.Tensor) -> torch.Tensor:
        if not sae.training:
            return pre * (pre > sae.threshold)
        flat = torch.relu(pre).flatten()
        top = flat.topk(min(sae.cfg.k * len(pre), flat.numel()))
        kept = torch.zeros_like(flat).scatter(0, top.indices, top.values).view_as(pre)
        positive = top.values[top.values > 0]
        if len(positive):
            with torch.no_grad():
                sae.threshold.mul_(0.99).add_(0.01 * positive.min())
        return kept

    def fold_scale(self, sae: SAE, scale_out: float) -> None:
        sae.threshold.div_(scale_out)

    def saelens_tensors(self, sae: SAE) -> dict[str, torch.Tensor]:
        return {"threshold": sae.threshold.expand(sae.cfg.n_latents).clone()}
