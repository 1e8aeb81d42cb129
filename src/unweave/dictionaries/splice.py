"""A dictionary spliced into the model: how much of the model's behaviour survives.

- downstream KL: mean over tokens of KL(p_model || p_spliced) of the next-token distribution;
- fraction of cross-entropy loss recovered, relative to zero-ablating the site:
  (CE_zero - CE_spliced) / (CE_zero - CE_model); 1 means no loss, 0 means as bad as deleting the site.

A transcoder is spliced in place of its MLP: the MLP's output is replaced by the
transcoder applied to the MLP's input (read in the same forward pass).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from unweave.devices import model_device
from unweave.dictionaries.sae import SAE, ordinary_rows
from unweave.scoring import float_logits, loss_recovered, next_token_ce, next_token_kl
from unweave.sites import capturing, patch


def ordinary(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """Rows the dictionary was trained for: all, or those within its max_input_norm."""
    return ordinary_rows(x, sae.max_input_norm)


def apply(sae: SAE, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """The dictionary's output for rows of x; rows outside its max_input_norm pass through
    as `keep` (default: x itself, the right thing for an SAE). A model in another dtype
    (bfloat16, say) is read in the dictionary's own dtype; the output is in x's."""
    out = sae(x.to(sae.W_dec.dtype))[0].to(x.dtype)
    mask = ordinary(sae, x)
    if mask.all():
        return out
    return torch.where(mask[:, None], out, x if keep is None else keep)


def reconstruct(sae: SAE) -> Callable[[torch.Tensor], torch.Tensor]:
    """A patch function replacing a (..., d) activation by the dictionary's reconstruction."""

    def fn(act: torch.Tensor) -> torch.Tensor:
        return apply(sae, act.reshape(-1, act.shape[-1])).reshape(act.shape).to(act.dtype)

    return fn


@contextlib.contextmanager
def spliced(model: torch.nn.Module, site: str, sae: SAE, input_site: str | None = None) -> Iterator[None]:
    """Inside the block, `site` holds the dictionary's reconstruction: of the activation
    there (an SAE), or computed from `input_site` (a transcoder replacing an MLP)."""
    if sae.cfg.kind == "sae":
        with patch(model, {site: reconstruct(sae)}):
            yield
        return
    if input_site is None:
        raise ValueError("a transcoder needs input_site, the MLP input it reads (e.g. 'model.layers.5.mlp:input')")
    with capturing(model, [input_site], detach=False) as acts:

        def from_input(out: torch.Tensor) -> torch.Tensor:
            x = acts[input_site]
            flat_out = out.reshape(-1, out.shape[-1])
            return apply(sae, x.reshape(-1, x.shape[-1]), keep=flat_out).reshape(out.shape).to(out.dtype)

        with patch(model, {site: from_input}):
            yield


@torch.no_grad()
def spliced_metrics(
    model: torch.nn.Module, site: str, sae: SAE, tokens: torch.Tensor, input_site: str | None = None
) -> dict[str, float]:
    """CE of the model, with the dictionary spliced in at `site`, and with the site zeroed
    (scored in float32 on the model's device)."""
    tokens = tokens.to(model_device(model))
    clean = float_logits(model(tokens))
    with spliced(model, site, sae, input_site):
        spliced_logits = float_logits(model(tokens))
    with patch(model, {site: torch.zeros_like}):
        zeroed = float_logits(model(tokens))
    ce = {
        name: next_token_ce(z, tokens).mean().item()
        for name, z in (("model", clean), ("spliced", spliced_logits), ("zero", zeroed))
    }
    kl = next_token_kl(clean, spliced_logits).mean().item()
    return {
        "ce_model": ce["model"],
        "ce_spliced": ce["spliced"],
        "ce_zero_ablation": ce["zero"],
        "kl": kl,
        "ce_loss_recovered": loss_recovered(ce["model"], ce["spliced"], ce["zero"]),
    }
