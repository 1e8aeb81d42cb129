"""ReLU latents with an L1 penalty weighted by each decoder row's norm (SAELens "standard")."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from unweave.dictionaries.architectures import Architecture, register

if TYPE_CHECKING:
    from unweave.dictionaries.sae import SAE


@register
class ReLU(Architecture):
    name, saelens = "relu", "standard"

    def activate(self, sae: SAE, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def penalty(self, sae: SAE, pre: torch.Tensor, latents: torch.Tensor | None) -> torch.Tensor:
        return sae.cfg.l1 * (latents * sae.W_dec.norm(dim=1)).sum(1).mean()

    def saelens_cfg(self, sae: SAE) -> dict:
        return {"l1_coefficient": sae.cfg.l1}

    def config_from_saelens(self, cfg: dict) -> dict:
        return {"l1": cfg.get("l1_coefficient", 0.0)}
