"""A dictionary spliced into the model: how much of the model's behaviour survives.

- downstream KL: mean over tokens of KL(p_model || p_spliced) of the next-token distribution;
- fraction of cross-entropy loss recovered, relative to zero-ablating the site:
  (CE_zero - CE_spliced) / (CE_zero - CE_model); 1 means no loss, 0 means as bad as deleting the site.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unweave.dictionaries.sae import SAE
from unweave.sites import patch


def _logits(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output


def _next_token_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy of predicting tokens[:, 1:] from logits[:, :-1]."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).double(), tokens[:, 1:].flatten(), reduction="none")


def reconstruct(sae: SAE):
    """A patch function replacing a (..., d) activation by the dictionary's reconstruction."""
    def fn(act: torch.Tensor) -> torch.Tensor:
        return sae(act.reshape(-1, act.shape[-1]))[0].reshape(act.shape).to(act.dtype)
    return fn


@torch.no_grad()
def spliced_metrics(model: torch.nn.Module, site: str, sae: SAE, tokens: torch.Tensor) -> dict[str, float]:
    """CE of the model, with the dictionary spliced in at `site`, and with the site zeroed."""
    clean = _logits(model(tokens))
    with patch(model, {site: reconstruct(sae)}):
        spliced = _logits(model(tokens))
    with patch(model, {site: torch.zeros_like}):
        zeroed = _logits(model(tokens))
    ce = {name: _next_token_ce(z, tokens).mean().item()
          for name, z in (("model", clean), ("spliced", spliced), ("zero", zeroed))}
    logp, logq = clean[:, :-1].double().log_softmax(-1), spliced[:, :-1].double().log_softmax(-1)
    kl = (logp.exp() * (logp - logq)).sum(-1).mean().item()
    denom = ce["zero"] - ce["model"]
    return {"ce_model": ce["model"], "ce_spliced": ce["spliced"], "ce_zero_ablation": ce["zero"], "kl": kl,
            "ce_loss_recovered": (ce["zero"] - ce["spliced"]) / denom if denom != 0 else float("nan")}
