"""What a latent does: the output tokens its decoder direction promotes and suppresses, that
direct effect checked against the measured effect of removing the latent from the model,
and its nearest latents by decoder cosine.

Direct effect. The decoder row of latent i is a direction at the dictionary's output site.
It is carried to the residual stream (through the module whose input the site is, when the
site is an `:input` that is not residual-width, e.g. the attention output projection), then
through the final norm as a direction, norm(d) - norm(0), and the unembedding,
U(n) - U(0). For RMSNorm that is gamma * d / rms(d), for LayerNorm gamma * (d - mean) / std:
the module itself is applied, so nothing here branches on the architecture. The scale is
that of a unit-RMS direction; the ranking and the sign are what the pages show.

Measured effect. On the latent's top-activating context, the latent's contribution
(its activation times its decoder row) is subtracted from the activation at the site at
that one position, and the change of the next-token logits there is recorded. The two agree
exactly up to the norm's nonlinearity for a dictionary at the last layer; earlier layers add
the paths through later layers, so the correlation measures how direct the latent's effect is.
"""

from __future__ import annotations

import torch
from torch import nn

from unweave.anatomy import anatomy
from unweave.devices import model_device
from unweave.dictionaries.sae import SAE
from unweave.scoring import float_logits
from unweave.sites import patch, resolve


def output_site(sae: SAE, meta: dict) -> str:
    """Where the dictionary writes: its site (an SAE) or the MLP output (a transcoder)."""
    return meta.get("hook_name_out", meta["hook_name"]) if sae.cfg.kind == "transcoder" else meta["hook_name"]


@torch.no_grad()
def residual_directions(model: nn.Module, site: str, directions: torch.Tensor) -> torch.Tensor:
    """Directions (n, width) at `site` carried to the residual stream (n, d_model).

    A module's output (a block, an MLP, an attention block) and the input of a norm or of a
    whole block are in the residual basis already. The input of a linear projection (the
    attention output projection, an MLP's down projection) is carried through it."""
    d_model = anatomy(model).d_model
    parsed, module = resolve(model, site)
    directions = directions.to(model_device(model), next(model.parameters()).dtype)
    if parsed.kind == "input" and _is_projection(module):
        directions = module(directions) - module(torch.zeros_like(directions[:1]))
    if directions.shape[1] != d_model:
        raise ValueError(
            f"site {site!r} has width {directions.shape[1]}, and its module does not map it to the "
            f"residual stream (width {d_model}): the latents' output tokens cannot be read off"
        )
    return directions


def _is_projection(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"  # GPT-2's projections are Conv1D


@torch.no_grad()
def direct_logit_effects(model: nn.Module, residual: torch.Tensor) -> torch.Tensor:
    """(n, vocab) logit change of each residual direction through the final norm and unembedding."""
    a = anatomy(model)
    norm = resolve(model, a.final_norm)[1]
    unembed = resolve(model, a.unembed)[1]
    zero = torch.zeros_like(residual[:1])
    normed = norm(residual) - norm(zero)
    return (unembed(normed) - unembed(torch.zeros_like(normed[:1]))).float()


@torch.no_grad()
def top_logit_effects(
    model: nn.Module, sae: SAE, meta: dict, k: int = 10, chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, token ids) of the k most promoted and the k most suppressed tokens of every
    latent: four (n_latents, k) tensors, computed in chunks of latents (vocab-wide rows)."""
    site = output_site(sae, meta)
    parts: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, sae.cfg.n_latents, chunk):
        effects = direct_logit_effects(model, residual_directions(model, site, sae.W_dec[start : start + chunk]))
        up, down = effects.topk(k, dim=1), effects.topk(k, dim=1, largest=False)
        parts.append((up.values.cpu(), up.indices.cpu(), down.values.cpu(), down.indices.cpu()))
    return tuple(torch.cat(p) for p in zip(*parts))  # type: ignore[return-value]


@torch.no_grad()
def ablation_effects(
    model: nn.Module,
    sae: SAE,
    meta: dict,
    rows: torch.Tensor,
    latents: torch.Tensor,
    positions: torch.Tensor,
    values: torch.Tensor,
) -> torch.Tensor:
    """(n, vocab) change of the next-token logits at positions[j] of rows[j] when latent
    latents[j] (which has activation values[j] there) is removed from the site at that position:
    logits(model) - logits(latent removed), so a promoted token has a positive change."""
    site = output_site(sae, meta)
    device = model_device(model)
    rows = rows.to(device)
    n = torch.arange(len(rows), device=device)
    pos = positions.to(device)
    contribution = values.to(device)[:, None] * sae.W_dec[latents].to(device)

    def remove(act: torch.Tensor) -> torch.Tensor:
        act = act.clone()
        act[n, pos] -= contribution.to(act.dtype)
        return act

    clean = float_logits(model(rows))[n, pos]
    with patch(model, {site: remove}):
        ablated = float_logits(model(rows))[n, pos]
    return (clean - ablated).cpu()


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of two (n, m) tensors."""
    a = a.double() - a.double().mean(1, keepdim=True)
    b = b.double() - b.double().mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-30)


@torch.no_grad()
def nearest_latents(decoder: torch.Tensor, k: int = 8, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosines, indices) (n, k) of each latent's k nearest other latents by decoder direction."""
    unit = torch.nn.functional.normalize(decoder.float().cpu(), dim=1)
    k = min(k, len(unit) - 1)
    cos, idx = [], []
    for start in range(0, len(unit), chunk):
        sims = unit[start : start + chunk] @ unit.T
        sims[torch.arange(len(sims)), torch.arange(start, start + len(sims))] = -torch.inf  # not itself
        top = sims.topk(k, dim=1)
        cos.append(top.values)
        idx.append(top.indices)
    return torch.cat(cos), torch.cat(idx)
