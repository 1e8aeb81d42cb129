"""End-to-end dictionaries: trained against the KL divergence between the model's output
and the output with the dictionary spliced in (Braun et al. 2024), not only against
reconstruction error. The model's weights stay fixed; gradients flow through the layers
after the site into the dictionary.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from unweave.dictionaries.sae import SAE
from unweave.dictionaries.splice import spliced
from unweave.dictionaries.train import TrainConfig, optimiser_step
from unweave.scoring import float_logits, kl_per_token
from unweave.sites import capture


def spliced_kl(
    model: torch.nn.Module, site: str, sae: SAE, tokens: torch.Tensor, input_site: str | None = None
) -> torch.Tensor:
    """Mean over tokens of KL(p_model || p_spliced), differentiable in the dictionary."""
    with torch.no_grad():
        clean = float_logits(model(tokens))
    with spliced(model, site, sae, input_site):
        return kl_per_token(clean, float_logits(model(tokens))).mean()


def train_e2e(
    model: torch.nn.Module,
    site: str,
    sae: SAE,
    token_batches: Iterable[torch.Tensor],
    cfg: TrainConfig,
    recon_coef: float = 0.0,
    input_site: str | None = None,
) -> list[float]:
    """Minimise KL(model || spliced) (+ recon_coef x reconstruction loss) over token batches."""
    for p in model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
    stream, losses = iter(token_batches), []
    sae.train()
    for step in range(cfg.steps):
        tokens = next(stream)
        if step == 0:  # decoder bias from the first batch's activations, as for reconstruction training
            target = capture(model, site, tokens)[site]
            sae.init_decoder_bias(target.reshape(-1, target.shape[-1]), cfg.b_dec_init)
        loss = spliced_kl(model, site, sae, tokens, input_site).float()
        if recon_coef:
            sites = [site] if input_site is None else [input_site, site]
            acts = capture(model, sites, tokens)
            x = acts[sites[0]].reshape(-1, acts[sites[0]].shape[-1])
            y = acts[site].reshape(-1, acts[site].shape[-1])
            loss = loss + recon_coef * sae.loss(x, y)
        optimiser_step(opt, loss, cfg.lr_at(step), [sae])
        losses.append(loss.item())
    sae.eval()
    return losses
