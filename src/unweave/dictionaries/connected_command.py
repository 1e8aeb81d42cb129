"""`unweave sae train-connected`: sparse MLPs (TopK transcoders) of a model's MLPs at several
layers, trained together live from the model on text with a penalty on the connections
between consecutive layers (`connected.py`). The folder holds each layer as a transcoder
folder and connected.json naming them; `unweave graph FOLDER --prompt TEXT` draws graphs
over every layer at once. An interrupted run resumes from its checkpoint.

The report gives, per layer, the held-out FVU and dead latents, and per pair of consecutive
layers the fan-in on held-out tokens (upstream latents carrying 90% of a latent's direct
input from the layer before): the two sides of the trade the penalty sets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from unweave import progress
from unweave.configs import setting
from unweave.dictionaries.clt import ordinary_everywhere
from unweave.dictionaries.clt_command import LayersTrainConfig, layer_data, training_meta, undertrained
from unweave.dictionaries.connected import connection_stats, save_connected, train_connected
from unweave.dictionaries.metrics import fvu
from unweave.dictionaries.plots import loss_curves
from unweave.dictionaries.sae import DEAD_AFTER, SAE, SAEConfig
from unweave.dictionaries.train import TrainConfig
from unweave.report import Report
from unweave.runs import Run, RunResult
from unweave.text import describe, input_files


@dataclass(frozen=True)
class ConnectedTrainConfig(LayersTrainConfig):
    out: Path = setting(Path("runs/connected"), "The layers' folder (and run folder); an interrupted run resumes.")
    penalty: float = setting(
        10.0,
        "Weight of the connection penalty (mean over tokens of the summed |attribution| between consecutive "
        "layers' active latents, in normalised units) against the summed squared errors; 0 trains the layers "
        "as independent transcoders. On SmolLM2-135M (layers 3-12, k 32) 1 changed nothing and 10 cut the "
        "fan-in 2-6x at a cost in FVU.",
    )

    def __post_init__(self):
        super().__post_init__()
        if self.penalty < 0:
            raise ValueError(f"--penalty must be at least 0, got {self.penalty}")


def run_connected_train(cfg: ConnectedTrainConfig) -> RunResult:
    run = Run(cfg.out, "sae train-connected", cfg, inputs=[cfg.model, *input_files(cfg.text)])
    data = layer_data(cfg)
    d_in, d_out = data.widths
    layers = [
        SAE(SAEConfig(d_in, cfg.width, "topk", k=cfg.k, kind="transcoder", d_out=d_out), seed=cfg.seed + i).to(
            cfg.device.torch_device
        )
        for i in range(len(cfg.layers))
    ]
    steps = max(1, cfg.tokens // cfg.batch_size)
    task = progress.Task(f"training connected sparse MLPs at {len(cfg.layers)} layers", total=steps)
    train_cfg = TrainConfig(steps, lr=cfg.lr, max_norm_ratio=cfg.max_norm_ratio or None)
    losses = train_connected(
        layers,
        data.stream(cfg),
        train_cfg,
        cfg.penalty,
        checkpoint_dir=Path(cfg.out) / ".checkpoint",
        on_step=lambda _: task.advance(),
    )
    task.close()
    layers = [sae.cpu() for sae in layers]
    meta = training_meta(cfg, data, train_cfg)
    save_connected(layers, cfg.out, meta, cfg.penalty)
    per_layer, pairs = held_out_figures(layers, *data.held_out())
    dead = [float(sae.dead_mask().double().mean()) for sae in layers]  # as AuxK counts them
    table = [
        {"layer": layer, "site": out, "held-out FVU": f, "dead latents": d}
        for layer, out, f, d in zip(cfg.layers, data.outs, per_layer, dead)
    ]
    links = [{"from layer": a, "to layer": b, **pair} for a, b, pair in zip(cfg.layers, cfg.layers[1:], pairs)]
    report = Report(f"unweave sae train-connected: {cfg.model}, layers {list(cfg.layers)}, penalty {cfg.penalty:g}")
    summary = report.summary()
    summary.text(
        f"Sparse MLPs of {cfg.model}'s MLPs at layers {list(cfg.layers)}: {cfg.width} latents per layer, k = {cfg.k}, "
        f"trained together with connection penalty {cfg.penalty:g}; {steps} steps of {cfg.batch_size} tokens of "
        f"{describe(cfg.text)}. Held out: {data.held.numel()} tokens after the training text. "
        f"Dead latents: none fired in the last {DEAD_AFTER:,} training tokens.",
        summary=True,
    ).table(table)
    if links:
        summary.text(
            "Between consecutive layers, on the held-out tokens: the fan-in (upstream latents carrying 90% of a "
            "latent's direct input from the layer before, mean over the latents that receive any) and the "
            "connections carrying 90% of all attribution. A larger penalty lowers both and raises the FVU."
        ).table(links)
    report.section("Training").figure(loss_curves({"summed squared errors + penalty (normalised units)": losses}))
    results = {
        "folder": str(cfg.out),
        "penalty": cfg.penalty,
        "per_layer": table,
        "connections": links,
        "final_loss": losses[-1] if losses else None,
        **meta,
    }
    warnings = undertrained(cfg.layers, per_layer, "train on more --tokens or lower --penalty")
    for warning in warnings:
        summary.text(warning, summary=True)
    lines = [f"layer {r['layer']}: held-out FVU {r['held-out FVU']:.3f}" for r in table]
    lines += [f"layers {r['from layer']} -> {r['to layer']}: fan-in {r['fan-in (90%)']:.1f}" for r in links]
    return run.finish({**results, "warnings": warnings}, report, [*lines, *warnings, f"saved {cfg.out}"])


@torch.no_grad()
def held_out_figures(
    layers: list[SAE], xs: list[torch.Tensor], ys: list[torch.Tensor]
) -> tuple[list[float], list[dict]]:
    """Each layer's FVU, and each consecutive pair's connection figures, on held-out inputs
    `xs` and outputs `ys` (tokens with a massive input at any layer left out, as in training)."""
    keep = ordinary_everywhere(xs, [sae.max_input_norm for sae in layers])
    xs, ys = [x[keep] for x in xs], [y[keep] for y in ys]
    per_layer = [fvu(y, sae(x)[0]) for sae, x, y in zip(layers, xs, ys)]
    pairs = []
    for i in range(len(layers) - 1):
        stats = connection_stats(layers[i], layers[i + 1], xs[i], xs[i + 1])
        pairs.append({"fan-in (90%)": stats.fan_in_90, "connections (90%)": stats.connections_90})
    return per_layer, pairs
