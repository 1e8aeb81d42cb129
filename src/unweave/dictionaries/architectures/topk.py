"""TopK: the k largest pre-activations of each example (Gao et al. 2024). The loss decodes
sparsely, reading only the k chosen decoder rows, which is most of the training cost saved."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from unweave.dictionaries.architectures import Architecture, register

if TYPE_CHECKING:
    from unweave.dictionaries.sae import SAE, SAEConfig


def check_k(cfg: SAEConfig) -> None:
    if not 1 <= cfg.k <= cfg.n_latents:
        raise ValueError(f"SAEConfig.k must be between 1 and n_latents={cfg.n_latents}, got {cfg.k}")


@register
class TopK(Architecture):
    name = saelens = "topk"
    auxk = True

    def validate(self, cfg: SAEConfig) -> None:
        check_k(cfg)

    def top(self, sae: SAE, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, k) indices and values of each example's active latents."""
        top = pre.topk(sae.cfg.k, dim=1)
        return top.indices, torch.relu(top.values)

    def activate(self, sae: SAE, pre: torch.Tensor) -> torch.Tensor:
        indices, values = self.top(sae, pre)
        return torch.zeros_like(pre).scatter(1, indices, values)

    def reconstruct(self, sae: SAE, x: torch.Tensor, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        indices, values = self.top(sae, pre)
        return sae.decode_sparse(indices, values, x), indices[values > 0], None

    def saelens_cfg(self, sae: SAE) -> dict:
        return {"k": sae.cfg.k}

    def config_from_saelens(self, cfg: dict) -> dict:
        return {"k": cfg.get("k", 1)}
