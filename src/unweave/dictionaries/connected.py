"""Sparse MLPs (TopK transcoders) at consecutive layers trained together, with a penalty on
the connections between them, so that each latent depends on few latents upstream.

The connection from latent i of layer l to latent j of layer l+1 on one example is the
attribution of j's pre-activation to i's output along the direct (residual) path:

    a_ij = z_i * (W_dec[l]_i . W_enc[l+1]_j)   when j is active, else 0

(`z_i` the upstream latent's value). Only active pairs can be non-zero, so on a batch the
attributions are (batch, k, k) blocks: cheap even for wide dictionaries. The penalty is
the mean over the batch of sum |a_ij|. Normalisations between the layers (LayerNorm,
RMSNorm) are not modelled: the direct path is taken as the identity.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from unweave.dictionaries.architectures.topk import TopK
from unweave.dictionaries.sae import SAE
from unweave.dictionaries.train import TrainConfig, norm_scale, optimiser_step

Top = tuple[torch.Tensor, torch.Tensor]  # (batch, k) indices and values of a TopK dictionary's active latents


def _top(sae: SAE, x: torch.Tensor, pre: torch.Tensor | None = None) -> Top:
    if not isinstance(sae.arch, TopK):
        raise ValueError(f"connected sparse MLPs are TopK transcoders; got architecture {sae.cfg.architecture!r}")
    return sae.arch.top(sae, sae.pre_activations(x) if pre is None else pre)


def attributions(up: SAE, down: SAE, up_top: Top, down_top: Top) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(batch, k_up, k_down) attributions with the latent indices they connect."""
    (iu, vu), (idn, vd) = up_top, down_top
    if up.cfg.width_out != down.cfg.d_in:
        raise ValueError(
            f"layer widths do not chain: upstream writes {up.cfg.width_out}, downstream reads {down.cfg.d_in}"
        )
    dec = up.W_dec[iu]  # (b, k_up, d)
    enc = down.W_enc.T[idn]  # (b, k_down, d)
    a = vu[..., None] * torch.einsum("bud,bkd->buk", dec, enc) * (vd > 0)[:, None, :]
    return a, iu, idn


def connection_penalty(up: SAE, down: SAE, up_top: Top, down_top: Top) -> torch.Tensor:
    return attributions(up, down, up_top, down_top)[0].abs().sum((1, 2)).mean()


@dataclass
class ConnectionStats:
    fan_in_90: float  # mean over downstream latents: upstream latents carrying 90% of its attribution
    connections_90: int  # (up, down) pairs carrying 90% of all attribution mass
    mass: torch.Tensor  # (n_up, n_down) summed |attribution| over the batch


@torch.no_grad()
def connection_stats(up: SAE, down: SAE, x_up: torch.Tensor, x_down: torch.Tensor) -> ConnectionStats:
    a, iu, idn = attributions(up, down, _top(up, x_up), _top(down, x_down))
    n_up, n_down = up.cfg.n_latents, down.cfg.n_latents
    flat = (iu[:, :, None] * n_down + idn[:, None, :]).flatten()
    mass = torch.zeros(n_up * n_down, dtype=torch.float64).index_add_(0, flat, a.abs().flatten().double())
    mass = mass.view(n_up, n_down)
    per_down = mass.sum(0)
    used = per_down > 0
    cols = mass[:, used]
    share = cols.sort(dim=0, descending=True).values.cumsum(0) / cols.sum(0)
    fan_in = ((share < 0.9).sum(0) + 1).double().mean().item() if used.any() else 0.0
    total = mass.flatten().sort(descending=True).values.cumsum(0)
    connections = int((total < 0.9 * total[-1]).sum()) + 1 if total[-1] > 0 else 0
    return ConnectionStats(fan_in, connections, mass)


def train_connected(layers: Sequence[SAE], batches: Iterable, cfg: TrainConfig, penalty: float) -> list[float]:
    """Train TopK transcoders at consecutive layers on batches (x_0, y_0, x_1, y_1, ...) of each
    MLP's input and output, minimising the sum of reconstruction errors plus `penalty` times
    the connection penalty between each consecutive pair. Returns the total losses.

    Each layer's input and output are normalised by one shared scale (consecutive layers
    live in the same residual space), folded back into the weights at the end."""
    params = [p for sae in layers for p in sae.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    stream, scale, losses = iter(batches), None, []
    for sae in layers:
        sae.train()
    for step in range(cfg.steps):
        batch = next(stream)
        if len(batch) != 2 * len(layers):
            raise ValueError(
                f"each batch must hold (input, output) for {len(layers)} layers: {2 * len(layers)} "
                f"tensors, got {len(batch)}"
            )
        if scale is None:
            scale = norm_scale(batch[0]) if cfg.normalise else 1.0
            for i, sae in enumerate(layers):
                sae.init_decoder_bias(batch[2 * i + 1] * scale, cfg.b_dec_init)
        xs = [t * scale for t in batch[0::2]]
        ys = [t * scale for t in batch[1::2]]
        pres = [sae.pre_activations(x) for sae, x in zip(layers, xs)]  # the encoders run once per layer
        tops = [_top(sae, x, pre) for sae, x, pre in zip(layers, xs, pres)]
        loss = sum(sae.loss(x, y, pre) for sae, x, y, pre in zip(layers, xs, ys, pres))
        if penalty:
            loss = loss + penalty * sum(
                connection_penalty(layers[i], layers[i + 1], tops[i], tops[i + 1]) for i in range(len(layers) - 1)
            )
        optimiser_step(opt, loss, cfg.lr_at(step), list(layers))
        losses.append(loss.item())
    for sae in layers:
        sae.eval()
        sae.fold_scales(scale, scale)
    return losses
