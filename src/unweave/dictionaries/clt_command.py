"""`unweave sae train-clt`: a cross-layer transcoder of a model's MLPs at several layers,
trained live from the model on text (no store), written as a folder (clt.json,
clt_weights.safetensors) that `unweave graph FOLDER --prompt TEXT` draws graphs over. The
run folder is the transcoder's folder; an interrupted run resumes from its checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from unweave import progress
from unweave.configs import setting, to_dict
from unweave.devices import DeviceConfig
from unweave.dictionaries.clt import CLTConfig, CrossLayerTranscoder, ordinary_everywhere, save_clt, train_clt
from unweave.dictionaries.metrics import fvu
from unweave.dictionaries.plots import loss_curves
from unweave.dictionaries.sae import DEAD_AFTER
from unweave.dictionaries.streams import live_batches
from unweave.dictionaries.train import TrainConfig
from unweave.report import Report
from unweave.runs import Run, RunResult
from unweave.sites import SiteError, capture
from unweave.text import TextConfig, describe, input_files, token_rows

HELD_OUT_ROWS = 16  # rows of text after the training text, for the held-out FVU per layer
UNDERTRAINED_FVU = 0.9  # a layer whose held-out FVU is above this explains almost none of its MLP


@dataclass(frozen=True)
class LayersTrainConfig:
    """What a dictionary of a model's MLPs at several layers is trained on, live from the model."""

    model: str = setting("smollm2-135m", "Known model name or local Hugging Face folder.")
    layers: list[int] = setting([3, 6, 9, 12], "Layers whose MLPs are replaced (repeat; in order).")
    mlp: str = setting(
        "model.layers.{}.mlp", "A layer's MLP site, {} standing for the layer; the encoder reads '<site>:input'."
    )
    out: Path = setting(Path("runs/clt"), "The dictionaries' folder (and run folder); an interrupted run resumes.")
    width: int = setting(4608, "Latents per layer.")
    k: int = setting(32, "Latents kept per layer and token.")
    tokens: int = setting(262_144, "Training tokens.")
    text: TextConfig = setting(TextConfig(), "Text the activations are computed on.")
    text_tokens: int = setting(262_144, "Tokens of text cycled through.")
    ctx_len: int = setting(128, "Tokens per row of text.")
    batch_size: int = setting(4096, "Tokens per step.")
    lr: float = setting(1e-3, "Adam learning rate (warm-up: 5% of the steps, at most 100; decay: the last 20%).")
    max_norm_ratio: float = setting(
        10.0, "Leave out tokens whose input norm at any layer exceeds this multiple of the median; 0 keeps all."
    )
    seed: int = setting(0, "Seed for initialisation and batch order.")
    device: DeviceConfig = setting(DeviceConfig(), "Where the model and the training run.")

    def __post_init__(self):
        if not self.layers or list(self.layers) != sorted(set(self.layers)):
            raise ValueError(f"--layers must be distinct and in increasing order, got {list(self.layers)}")
        if "{}" not in self.mlp:
            raise ValueError(f"--mlp must hold {{}} where the layer goes, e.g. model.layers.{{}}.mlp; got {self.mlp!r}")
        if min(self.width, self.k, self.tokens, self.batch_size) < 1 or self.k > self.width:
            raise ValueError("--width, --k, --tokens and --batch-size must be positive, and --k at most --width")


@dataclass(frozen=True)
class CLTTrainConfig(LayersTrainConfig):
    out: Path = setting(Path("runs/clt"), "The transcoder's folder (and run folder); an interrupted run resumes.")


@dataclass
class LayerData:
    """The model, its text (training rows and held-out rows) and the MLP sites at each layer."""

    model: torch.nn.Module
    train_rows: torch.Tensor
    held: torch.Tensor
    ins: list[str]  # each layer's MLP input
    outs: list[str]  # each layer's MLP output
    widths: tuple[int, int]  # the MLPs' input and output widths

    @property
    def interleaved(self) -> list[str]:
        return interleaved(self.ins, self.outs)

    def stream(self, cfg: LayersTrainConfig) -> Iterator:
        return live_batches(self.model, self.interleaved, self.train_rows, cfg.batch_size, seed=cfg.seed)

    @torch.no_grad()
    def held_out(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each layer's MLP inputs and outputs on the held-out rows, (tokens, width) on the CPU."""
        acts = capture(self.model, self.ins + self.outs, self.held.to(next(self.model.parameters()).device))
        rows = {s: a.reshape(-1, a.shape[-1]).float().cpu() for s, a in acts.items()}
        return [rows[s] for s in self.ins], [rows[s] for s in self.outs]


def interleaved(ins: list[str], outs: list[str]) -> list[str]:
    """The sites as a batch holds them: (x_0, y_0, x_1, y_1, ...)."""
    return [s for pair in zip(ins, outs) for s in pair]


def layer_data(cfg: LayersTrainConfig) -> LayerData:
    """Load the model and its text, and check the sites exist (a clear error naming --mlp if not)."""
    from unweave.hf import load_model

    device = cfg.device.torch_device
    model, tokenizer = load_model(cfg.model, device=device, dtype=cfg.device.torch_dtype)
    rows = token_rows(cfg.text, tokenizer, cfg.ctx_len, max_tokens=cfg.text_tokens + HELD_OUT_ROWS * cfg.ctx_len)
    ins, outs = sites(cfg)
    try:
        first = capture(model, interleaved(ins, outs), rows[:1].to(device), stop_early=True)
    except SiteError as err:
        raise SiteError(f"{err} (--mlp {cfg.mlp!r} with --layers {list(cfg.layers)})") from None
    widths = (first[ins[0]].shape[-1], first[outs[0]].shape[-1])
    return LayerData(model, rows[:-HELD_OUT_ROWS], rows[-HELD_OUT_ROWS:], ins, outs, widths)


def training_meta(cfg: LayersTrainConfig, data: LayerData, train_cfg: TrainConfig) -> dict:
    """What a folder of dictionaries over several layers records of its training."""
    steps = train_cfg.steps
    return {
        "model_name": cfg.model,
        "layers": list(cfg.layers),
        "input_sites": data.ins,
        "output_sites": data.outs,
        "training_tokens": steps * cfg.batch_size,
        "ctx_len": cfg.ctx_len,
        "text": to_dict(cfg.text),
        "text_tokens": cfg.text_tokens,  # `sae eval` holds out the text after these
        "schedule": train_cfg.schedule(),
    }


def undertrained(layers: list[int], fvus: list[float], remedy: str = "train on more --tokens") -> list[str]:
    """A warning naming the layers whose dictionaries explain almost none of their MLP's output
    on the held-out tokens (none if every layer is below UNDERTRAINED_FVU)."""
    bad = [f"layer {layer} ({f:.2f})" for layer, f in zip(layers, fvus) if f > UNDERTRAINED_FVU]
    if not bad:
        return []
    return [f"warning: held-out FVU above {UNDERTRAINED_FVU}: {', '.join(bad)}; {remedy}"]


def sites(cfg: LayersTrainConfig) -> tuple[list[str], list[str]]:
    """(each layer's MLP input, each layer's MLP output)."""
    outputs = [cfg.mlp.format(layer) for layer in cfg.layers]
    return [f"{site}:input" for site in outputs], outputs


def run_clt_train(cfg: CLTTrainConfig) -> RunResult:
    run = Run(cfg.out, "sae train-clt", cfg, inputs=[cfg.model, *input_files(cfg.text)])
    data = layer_data(cfg)
    clt_cfg = CLTConfig(len(cfg.layers), *data.widths, cfg.width, cfg.k)
    clt = CrossLayerTranscoder(clt_cfg, seed=cfg.seed).to(cfg.device.torch_device)
    steps = max(1, cfg.tokens // cfg.batch_size)
    task = progress.Task(f"training a cross-layer transcoder over {len(cfg.layers)} layers", total=steps)
    train_cfg = TrainConfig(steps, lr=cfg.lr, max_norm_ratio=cfg.max_norm_ratio or None)
    losses = train_clt(clt, _counted(data.stream(cfg), task), train_cfg, checkpoint_dir=Path(cfg.out) / ".checkpoint")
    task.close()
    clt = clt.cpu()
    meta = training_meta(cfg, data, train_cfg)
    save_clt(clt, cfg.out, meta)
    per_layer = held_out_fvu(clt, *data.held_out())
    dead = (clt.since_fired >= DEAD_AFTER).double().mean(1)  # as a dictionary's AuxK counts them
    table = [
        {"layer": layer, "site": out, "held-out FVU": fvu, "dead latents": float(dead[i])}
        for i, (layer, out, fvu) in enumerate(zip(cfg.layers, data.outs, per_layer))
    ]
    report = Report(f"unweave sae train-clt: {cfg.model}, layers {list(cfg.layers)}")
    report.summary().text(
        f"A cross-layer transcoder of {cfg.model}'s MLPs at layers {list(cfg.layers)}: {cfg.width} latents per layer, "
        f"k = {cfg.k}, each writing to its own layer and every later one; {steps} steps of {cfg.batch_size} tokens of "
        f"{describe(cfg.text)}. Held out: {data.held.numel()} tokens after the training text. "
        f"Dead latents: none fired in the last {DEAD_AFTER:,} training tokens.",
        summary=True,
    ).table(table)
    report.section("Training").figure(loss_curves({"sum over layers of the output's FVU": losses}))
    results = {"folder": str(cfg.out), "per_layer": table, "final_loss": losses[-1] if losses else None, **meta}
    warnings = undertrained(cfg.layers, per_layer)
    for warning in warnings:
        report.summary().text(warning, summary=True)
    lines = [f"layer {r['layer']}: held-out FVU {r['held-out FVU']:.3f}" for r in table]
    return run.finish({**results, "warnings": warnings}, report, [*lines, *warnings, f"saved {cfg.out}"])


def _counted(stream: Iterator, task: progress.Task) -> Iterator:
    for batch in stream:
        task.advance()
        yield batch


@torch.no_grad()
def held_out_fvu(clt: CrossLayerTranscoder, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> list[float]:
    """Each layer's fraction of its MLP output's variance the transcoder leaves unexplained,
    on held-out inputs `xs` and outputs `ys` (tokens with a massive input at any layer left
    out, as in training)."""
    keep = ordinary_everywhere(xs, clt.max_input_norms)
    _, rebuilt = clt([x[keep] for x in xs])
    return [fvu(y[keep], r) for r, y in zip(rebuilt, ys)]
