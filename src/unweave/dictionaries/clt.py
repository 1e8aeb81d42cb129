"""Cross-layer transcoders (Ameisen et al. 2025, "Circuit tracing"): one encoder per layer
reads that layer's MLP input, and each latent of layer l writes, through decoders of its
own, to the MLP outputs of layer l and of every later layer:

    y_m ~ sum over l <= m of f_l W_dec[l][:, m - l] + b_dec[m],   f_l = TopK(x_l W_enc[l] + b_enc[l])

All the MLPs are replaced at once. A feature computed at one layer and written by several
MLPs downstream is one latent here, where per-layer transcoders need one at each layer.

Training minimises the sum over layers of each output's fraction of variance unexplained,
so every layer weighs alike whatever its scale. Each layer's input and output are
normalised by a scale of their own (an MLP's output can be a thousandth of its input's
norm, and norms grow with depth), folded into the weights at the end.
Rows with a massive input norm at any layer (attention sinks) are left out, as `sae train`
does, and their limits kept (`max_input_norms`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import torch
from torch import nn

from unweave.artifacts import read_json, read_tensors, write_json, write_tensors
from unweave.dictionaries.sae import norm_limit, ordinary_rows
from unweave.dictionaries.train import Checkpoint, TrainConfig, norm_scale

CFG, WEIGHTS = "clt.json", "clt_weights.safetensors"


@dataclass(frozen=True)
class CLTConfig:
    n_layers: int
    d_in: int  # width of each layer's MLP input
    d_out: int  # width of each layer's MLP output
    n_latents: int  # latents per layer
    k: int  # latents kept per layer and token

    def __post_init__(self) -> None:
        if min(self.n_layers, self.d_in, self.d_out, self.n_latents, self.k) < 1:
            raise ValueError(f"every size of a cross-layer transcoder must be at least 1, got {self}")
        if self.k > self.n_latents:
            raise ValueError(f"k ({self.k}) cannot exceed the latents per layer ({self.n_latents})")


class CrossLayerTranscoder(nn.Module):
    def __init__(self, cfg: CLTConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        L, n, gen = cfg.n_layers, cfg.n_latents, torch.Generator().manual_seed(seed)
        self.W_enc = nn.Parameter(torch.randn(L, cfg.d_in, n, generator=gen) / cfg.d_in**0.5)
        self.b_enc = nn.Parameter(torch.zeros(L, n))
        # layer l's decoders: (latents, later layers l..L-1, d_out); a latent's total decoder norm starts at 1
        self.W_dec = nn.ParameterList(
            nn.Parameter(torch.randn(n, L - layer, cfg.d_out, generator=gen) / (cfg.d_out * (L - layer)) ** 0.5)
            for layer in range(L)
        )
        self.b_dec = nn.Parameter(torch.zeros(L, cfg.d_out))
        # training tokens since each latent last fired (dead-latent tracking, not saved with the weights)
        self.register_buffer("since_fired", torch.zeros(L, n, dtype=torch.long), persistent=False)
        self.max_input_norms: list[float | None] = [None] * L

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """(rows, latents) of `layer` from its MLP input (rows, d_in): the k largest
        pre-activations, through a ReLU; the rest zero."""
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(f"layer {layer}'s input must be (rows, {self.cfg.d_in}), got {tuple(x.shape)}")
        pre = x @ self.W_enc[layer] + self.b_enc[layer]
        values, indices = pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, values.relu())

    def decode(self, layer: int, latents: Sequence[torch.Tensor]) -> torch.Tensor:
        """Layer `layer`'s MLP output from the latents of that layer and every earlier one
        (`latents[l]` for l <= layer; later ones are not read)."""
        out = self.b_dec[layer]
        for source in range(layer + 1):
            out = out + latents[source] @ self.W_dec[source][:, layer - source]
        return out

    def forward(self, xs: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(latents per layer, outputs per layer) from the MLP inputs per layer."""
        latents = [self.encode(layer, x) for layer, x in enumerate(xs)]
        return latents, [self.decode(layer, latents) for layer in range(self.cfg.n_layers)]

    def loss(self, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> torch.Tensor:
        """Sum over layers of the output's fraction of variance unexplained. In training, the
        latents that fired count as alive (as `SAE.loss` counts them)."""
        latents, outs = self(xs)
        if self.training:
            with torch.no_grad():
                fired = torch.stack([(f > 0).any(0) for f in latents])
                self.since_fired.add_(len(xs[0])).masked_fill_(fired, 0)
        return sum(((o - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum().clamp(min=1e-12)) for o, y in zip(outs, ys))

    @torch.no_grad()
    def fold_scales(self, scale_in: Sequence[float], scale_out: Sequence[float]) -> None:
        """Trained on layer l's x_l * scale_in[l] and y_l * scale_out[l]: the same map on
        unscaled activations."""
        into = torch.as_tensor(scale_out, dtype=self.b_dec.dtype, device=self.b_dec.device)
        self.W_enc.mul_(torch.as_tensor(scale_in, dtype=self.W_enc.dtype, device=self.W_enc.device)[:, None, None])
        for layer, w in enumerate(self.W_dec):
            w.div_(into[layer:, None])
        self.b_dec.div_(into[:, None])


def ordinary_everywhere(xs: Sequence[torch.Tensor], limits: Sequence[float | None]) -> torch.Tensor:
    """The rows whose input is within its layer's norm limit at every layer (no massive activation)."""
    return torch.stack([ordinary_rows(x, limit) for x, limit in zip(xs, limits)]).all(0)


def layer_rows(batch: Sequence[torch.Tensor], layers: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A batch (x_0, y_0, x_1, y_1, ...) split into the layers' inputs and outputs."""
    if len(batch) != 2 * layers:
        raise ValueError(
            f"each batch must hold (input, output) for {layers} layers: {2 * layers} tensors, got {len(batch)}"
        )
    return list(batch[0::2]), list(batch[1::2])


@dataclass
class LayerScaling:
    """Per layer, set on the first batch and kept in the checkpoint: the massive-input limit
    (tokens above it at any layer are left out) and the scales of input and output (an MLP's
    output can be far smaller than its input, and grows with depth), folded back at the end."""

    limits: list[float | None] | None = None
    scales: list[list[float]] | None = None  # [the inputs' scales, the outputs' scales]

    def __call__(self, batch: Sequence[torch.Tensor], layers: int, cfg: TrainConfig) -> tuple[list, list, bool]:
        """The batch's inputs and outputs, massive tokens left out and scaled, and whether the
        scales were set on it (the first batch: initialise decoder biases from it)."""
        xs, ys = layer_rows(batch, layers)
        if self.limits is None:
            self.limits = [norm_limit(x, cfg.max_norm_ratio) if cfg.max_norm_ratio else None for x in xs]
        keep = ordinary_everywhere(xs, self.limits)
        xs, ys = [x[keep] for x in xs], [y[keep] for y in ys]
        first = self.scales is None
        if first:
            self.scales = [[norm_scale(t) if cfg.normalise else 1.0 for t in ts] for ts in (xs, ys)]
        return [x * s for x, s in zip(xs, self.scales[0])], [y * s for y, s in zip(ys, self.scales[1])], first


def train_clt(
    clt: CrossLayerTranscoder,
    batches: Iterable,
    cfg: TrainConfig,
    checkpoint_dir: Path | None = None,
) -> list[float]:
    """Train on batches (x_0, y_0, x_1, y_1, ...) of each layer's MLP input and output; Adam
    with `cfg`'s schedule. With `checkpoint_dir`, state is saved every `cfg.checkpoint_every`
    steps and a later call with the same arguments resumes where it stopped, with the same
    result as an uninterrupted run (the stream is deterministic: what was consumed is
    skipped). Returns the losses."""
    L = clt.cfg.n_layers
    opt = torch.optim.Adam(clt.parameters(), lr=cfg.lr)
    ckpt = Checkpoint(checkpoint_dir)
    state = ckpt.load([clt], [opt])
    stream, start, scaling, losses = iter(batches), 0, LayerScaling(), []
    if state is not None:
        start, losses = state["step"], state["losses"][0]
        scaling = LayerScaling(state["max_norm"], state["scales"])
        for _ in islice(stream, start):
            pass
    clt.train()
    for step in range(start, cfg.steps):
        xs, ys, first = scaling(next(stream), L, cfg)
        if first:
            with torch.no_grad():
                clt.b_dec.copy_(torch.stack([y.mean(0) for y in ys]))
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss = clt.loss(xs, ys)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if checkpoint_dir is not None and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            state = {"step": step + 1, "scales": scaling.scales, "losses": [losses], "max_norm": scaling.limits}
            ckpt.save([clt], [opt], state)
    clt.eval()
    clt.max_input_norms = list(scaling.limits) if scaling.limits is not None else [None] * L
    if scaling.scales is not None:
        clt.fold_scales(*scaling.scales)
    ckpt.remove()
    return losses


def save_clt(clt: CrossLayerTranscoder, folder: Path, metadata: dict) -> Path:
    """clt.json (the config, the sites and the model in `metadata`, the input limits) and
    clt_weights.safetensors."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / CFG, {**asdict(clt.cfg), "metadata": {**metadata, "max_input_norms": clt.max_input_norms}})
    write_tensors(folder / WEIGHTS, {k: v.contiguous() for k, v in clt.state_dict().items()})
    return folder


def is_clt(folder: Path) -> bool:
    return (Path(folder) / CFG).exists() and (Path(folder) / WEIGHTS).exists()


def load_clt(folder: Path) -> tuple[CrossLayerTranscoder, dict]:
    """The transcoder and its metadata (model_name, input_sites, output_sites, ...)."""
    folder = Path(folder)
    if not is_clt(folder):
        raise FileNotFoundError(f"{folder} is not a cross-layer transcoder folder: it needs {CFG} and {WEIGHTS}")
    saved = read_json(folder / CFG)
    meta = saved.pop("metadata")
    clt = CrossLayerTranscoder(CLTConfig(**saved))
    clt.load_state_dict(read_tensors(folder / WEIGHTS))
    clt.max_input_norms = meta.get("max_input_norms", [None] * clt.cfg.n_layers)
    return clt.eval(), meta
