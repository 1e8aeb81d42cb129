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

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch

from unweave.artifacts import read_json, write_json
from unweave.dictionaries import io
from unweave.dictionaries.architectures.topk import TopK
from unweave.dictionaries.clt import LayerScaling
from unweave.dictionaries.sae import SAE
from unweave.dictionaries.train import Checkpoint, TrainConfig, optimiser_step

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


def train_connected(
    layers: Sequence[SAE],
    batches: Iterable,
    cfg: TrainConfig,
    penalty: float,
    checkpoint_dir: Path | None = None,
    on_step: Callable[[int], object] | None = None,
) -> list[float]:
    """Train TopK transcoders at consecutive layers on batches (x_0, y_0, x_1, y_1, ...) of each
    MLP's input and output, minimising the sum of reconstruction errors plus `penalty` times
    the connection penalty between each consecutive pair. Returns the total losses.

    Each layer's input and output are normalised by their own scale (MLP outputs can be far
    smaller than their inputs and grow with depth; one shared scale would let the deepest
    layer's error dominate), folded back into the weights at the end. The penalty is
    therefore taken in normalised units: per pair of layers, the raw attributions times one
    constant, which leaves each latent's fan-in unchanged. With `cfg.max_norm_ratio`, tokens
    with a massive input at any layer are left out, as for a cross-layer transcoder. With
    `checkpoint_dir`, state is saved every `cfg.checkpoint_every` steps and a later call with
    the same arguments resumes with the same result as an uninterrupted run."""
    layers = list(layers)
    # one Adam per layer (Adam is per parameter: the same steps as one over all) so that the
    # checkpoint stores each layer as train_many's do
    opts = [torch.optim.Adam(sae.parameters(), lr=cfg.lr) for sae in layers]
    ckpt = Checkpoint(checkpoint_dir)
    state = ckpt.load(layers, opts)
    stream, start, scaling, losses = iter(batches), 0, LayerScaling(), []
    if state is not None:
        start, losses = state["step"], state["losses"][0]
        scaling = LayerScaling(state["max_norm"], state["scales"])
        for _ in islice(stream, start):  # the stream is deterministic: skip what was consumed
            pass
    for sae in layers:
        sae.train()
    for step in range(start, cfg.steps):
        xs, ys, first = scaling(next(stream), len(layers), cfg)
        if first:
            for sae, y in zip(layers, ys):
                sae.init_decoder_bias(y, cfg.b_dec_init)
        pres = [sae.pre_activations(x) for sae, x in zip(layers, xs)]  # the encoders run once per layer
        tops = [_top(sae, x, pre) for sae, x, pre in zip(layers, xs, pres)]
        loss = sum(sae.loss(x, y, pre) for sae, x, y, pre in zip(layers, xs, ys, pres))
        if penalty:
            loss = loss + penalty * sum(
                connection_penalty(layers[i], layers[i + 1], tops[i], tops[i + 1]) for i in range(len(layers) - 1)
            )
        optimiser_step(opts, loss, cfg.lr_at(step), layers)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step)
        if checkpoint_dir is not None and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            state = {"step": step + 1, "scales": scaling.scales, "losses": [losses], "max_norm": scaling.limits}
            ckpt.save(layers, opts, state)
    for i, sae in enumerate(layers):
        sae.eval()
        sae.max_input_norm = scaling.limits[i] if scaling.limits is not None else None
        if scaling.scales is not None:
            sae.fold_scales(scaling.scales[0][i], scaling.scales[1][i])
    ckpt.remove()
    return losses


MANIFEST = "connected.json"  # in a folder of connected sparse MLPs: the layers and their folders


def save_connected(layers: Sequence[SAE], folder: Path, metadata: dict, penalty: float) -> Path:
    """Each layer as a transcoder folder of its own (`layer-<L>`, which `unweave features` and
    `unweave sae eval` read like any transcoder) and connected.json naming them, which
    `unweave graph FOLDER --prompt` reads as one dictionary over every layer. `metadata`
    holds model_name, layers, input_sites and output_sites (one per layer)."""
    folder = Path(folder)
    names = [f"layer-{layer}" for layer in metadata["layers"]]
    shared = {k: v for k, v in metadata.items() if k not in ("input_sites", "output_sites", "layers")}
    for sae, name, read, write in zip(layers, names, metadata["input_sites"], metadata["output_sites"]):
        io.save(sae, folder / name, {**shared, "hook_name": read, "hook_name_out": write})
    write_json(folder / MANIFEST, {**metadata, "penalty": penalty, "folders": names})
    return folder


def is_connected(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).exists()


def connected_folders(folder: Path) -> list[Path]:
    """The transcoder folders of a folder of connected sparse MLPs, in layer order."""
    folder = Path(folder)
    if not is_connected(folder):
        raise FileNotFoundError(f"{folder} is not a folder of connected sparse MLPs: it needs {MANIFEST}")
    names = read_json(folder / MANIFEST)["folders"]
    missing = [name for name in names if not (folder / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"{folder}/{MANIFEST} names layer folders that are not there: {missing}")
    return [folder / name for name in names]
