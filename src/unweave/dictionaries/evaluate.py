"""A trained dictionary on held-out activations: reconstruction and sparsity metrics."""

from __future__ import annotations

import torch

from unweave.devices import model_device
from unweave.dictionaries import metrics
from unweave.dictionaries.sae import SAE
from unweave.sites import capture


@torch.no_grad()
def evaluate(sae: SAE, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
    """Reconstruction and sparsity metrics on inputs x (and targets y, for a transcoder)."""
    from unweave.dictionaries.splice import apply, ordinary

    y = x if y is None else y
    recon, z = sae(x)
    keep = ordinary(sae, x)  # tokens it was trained for; the rest pass through when spliced
    spliced = apply(sae, x, keep=None if sae.cfg.kind == "sae" else y)
    return {
        "fvu_all_tokens_spliced": metrics.fvu(y, spliced),
        "fvu": metrics.fvu(y[keep], recon[keep]),
        "mse": metrics.mse(y[keep], recon[keep]),
        "l0": metrics.l0(z[keep]),
        "dead_fraction": metrics.dead_fraction(z[keep]),
        "dense_fraction": metrics.dense_fraction(z[keep]),
        "density": metrics.firing_density(z[keep]).tolist(),
        "tokens": len(x),
        "passed_through_fraction": float((~keep).float().mean()),
    }


def held_out_activations(
    meta: dict, model: torch.nn.Module, rows: torch.Tensor, max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(x, y or None, flat tokens) on held-out text rows: the dictionary's input site (and
    output site, for a transcoder), computed from the model."""
    names = [meta["hook_name"]] + ([meta["hook_name_out"]] if "hook_name_out" in meta else [])
    captured = capture(model, names, rows.to(model_device(model)), stop_early=True)
    acts = [captured[n].reshape(-1, captured[n].shape[-1])[:max_tokens].float() for n in names]
    return acts[0], (acts[1] if len(acts) > 1 else None), rows.flatten()[:max_tokens]
