"""`unweave train modadd`: train (or resume) the modular-addition transformer; the training
folder is also the run folder (record.json, train.json with the final metrics, train.html
with the training curves). `unweave train skip-trigrams`: a one-layer attention-only model on
text, its skip-trigrams read off the weights and checked by ablation (model.safetensors,
vocab.json, train.json, train.html). `unweave train memorization`: the toy model of
superposition trained on T datapoints for a sweep of T, from storing datapoints to storing
features (fits/ with each size's weights, train.json, train.html)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from unweave.artifacts import write_json, write_tensors
from unweave.configs import setting
from unweave.devices import DeviceConfig
from unweave.report import Report
from unweave.runs import Run, RunResult
from unweave.text import TextConfig, describe
from unweave.zoo import memorization as mem
from unweave.zoo import skip_trigrams as st
from unweave.zoo.modadd import ModAddConfig, train
from unweave.zoo.plots import hidden_geometry, loss_curves, memorization_dimensionality, memorization_losses


@dataclass(frozen=True)
class TrainModAddConfig:
    out: Path = setting(Path("runs/modadd"), "Run directory; an interrupted run there resumes.")
    modadd: ModAddConfig = setting(ModAddConfig(), "The model and its training.")
    device: DeviceConfig = setting(DeviceConfig(), "Where training runs, and the dtype of the weights.")


def run_train_modadd(cfg: TrainModAddConfig) -> RunResult:
    run = Run(cfg.out, "train modadd", cfg, name="train")
    trained = train(cfg.modadd, cfg.out, device=cfg.device.torch_device, dtype=cfg.device.torch_dtype)
    history = trained.history
    final = history[-1]
    report = Report(f"unweave train modadd: a + b mod {cfg.modadd.p}")
    report.summary().text(
        f"Step {final['step']}: train loss {final['train_loss']:.3g}, test loss "
        f"{final['test_loss']:.3g}, test accuracy {final['test_acc']:.2%}.",
        summary=True,
    )
    report.section("Training").table([{"setting": k, "value": v} for k, v in asdict(cfg.modadd).items()]).figure(
        loss_curves(history)
    )
    line = (
        f"trained {trained.dir}: step {final['step']}, train loss {final['train_loss']:.3g}, "
        f"test accuracy {final['test_acc']:.2%}"
    )
    return run.finish({"final": final, "checkpoints": [s for s, _ in trained.checkpoints()]}, report, [line])


@dataclass(frozen=True)
class TrainSkipTrigramsConfig:
    out: Path = setting(Path("runs/skip-trigrams"), "Run directory.")
    model: st.SkipTrigramConfig = setting(st.SkipTrigramConfig(), "The model and its training.")
    text: TextConfig = setting(TextConfig(), "Text to train on (split into words).")
    per_head: int = setting(10, "Skip-trigrams read off each head.")


def run_train_skip_trigrams(cfg: TrainSkipTrigramsConfig) -> RunResult:
    run = Run(cfg.out, "train skip-trigrams", cfg, name="train")
    data = st.corpus(cfg.model, cfg.text)
    model = st.train(cfg.model, data)
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_tensors(cfg.out / "model.safetensors", model.state_dict())
    write_json(cfg.out / "vocab.json", data.words)
    rows = data.rows(data.test, cfg.model.n_ctx)
    test_loss = st.next_token_loss(model, rows)
    found = []
    for t in st.triples(model, data, cfg.per_head):
        check = st.ablation_check(model, rows, t)
        w = data.words
        found.append(
            {
                "head": t.head,
                "source": w[t.source],
                "destination": w[t.destination],
                "output": w[t.output],
                "qk": t.qk,
                "ov": t.ov,
                **check,
            }
        )
    checked = [f for f in found if f["cases"]]
    top = sum(f["confirmed"] for f in checked)
    unigram = st.unigram_loss(data)
    report = Report("unweave train skip-trigrams: a one-layer attention-only model read as skip-trigrams")
    report.summary().text(
        f"Held-out loss {test_loss:.3f} nats per word (the word frequencies alone: {unigram:.3f}). "
        f"{len(found)} skip-trigrams read off the weights; {len(checked)} occur in the held-out text. For {top} "
        "of them the head attends from the destination to the source more than to the average position, and "
        "cutting that attention lowers the predicted output's logit more than all but 1% of the vocabulary's.",
        summary=True,
    )
    report.section("Skip-trigrams (source ... destination -> output)").text(
        "qk: how much more the destination attends to the source than to the average token; ov: how much more "
        "attending to the source raises the output than the average token. cases: places in the held-out text "
        "where the source precedes the destination; attention_ratio: the head's attention there to the source "
        "over its average attention per position (median; above 1: the QK claim holds); output_drop: the "
        "output's logit drop (against the mean logit) when that attention is cut; output_rank: how many of the "
        "vocabulary's tokens drop more (0: none)."
    ).table(found, sortable=True)
    results = {
        "text": describe(cfg.text),
        "test_loss": test_loss,
        "unigram_loss": unigram,
        "triples": found,
        "checked": len(checked),
        "output_drops_most": top,
    }
    line = (
        f"trained {cfg.out}: held-out loss {test_loss:.3f} (unigram {unigram:.3f}); {top}/{len(checked)} checkable "
        f"skip-trigrams confirmed on held-out text, {len(found) - len(checked)} not in it"
    )
    return run.finish(results, report, [line])


@dataclass(frozen=True)
class TrainMemorizationConfig:
    out: Path = setting(
        Path("runs/memorization"), "Run directory; an interrupted sweep there resumes from the sizes it finished."
    )
    toy: mem.MemorizationConfig = setting(mem.MemorizationConfig(), "The toy, its data and the sweep of T.")


def _plane(f: mem.Fit, shown: int = 200) -> tuple[list, list]:
    """Features and (the first `shown`) training hidden vectors in the top two principal
    directions of W."""
    basis = torch.linalg.svd(f.W, full_matrices=False).U[:, :2]  # (m, 2), or (1, 1) when m = 1
    basis = torch.nn.functional.pad(basis, (0, 2 - basis.shape[1]))
    features = (f.W.T @ basis).tolist()
    points = (f.train[:shown] @ f.W.T @ basis).tolist()
    return features, points


def run_train_memorization(cfg: TrainMemorizationConfig) -> RunResult:
    run = Run(cfg.out, "train memorization", cfg, name="train")
    toy = cfg.toy
    fits = mem.sweep(toy, cfg.out / "fits")
    m = toy.d_hidden
    rows = [
        {
            "T": f.size,
            "train_loss": f.train_loss,
            "test_loss": f.test_loss,
            "feature_dims_held": mem.held(f.feature_dims, m),
            "datapoint_dims_held": mem.held(f.datapoint_dims, m),
            "max_feature_dim": float(f.feature_dims.max()),
            "max_datapoint_dim": float(f.datapoint_dims.max()),
            "regime": mem.regime(f),
        }
        for f in fits
    ]
    dd = mem.double_descent(fits)
    first, last = rows[0]["regime"], rows[-1]["regime"]
    # the smallest T from which every larger T stores features
    crossover = next((r["T"] for i, r in enumerate(rows) if all(q["regime"] == "features" for q in rows[i:])), None)
    transition = first == "datapoints" and last == "features"
    findings = {
        "regimes": [r["regime"] for r in rows],
        "datapoints_then_features": transition,
        "first_features_T": crossover,
        "double_descent": None if dd is None else {**vars(dd), "found": dd.found},
    }
    peak = (
        f"The test loss peaks at T = {dd.peak}: {dd.rise:+.3f} (se {dd.rise_se:.3f}) over the lowest at smaller T and "
        f"{dd.fall:+.3f} (se {dd.fall_se:.3f}) over the lowest at larger T: double descent "
        + ("found." if dd.found else "NOT found (the peak is within three standard errors of a side).")
        if dd
        else "The test loss peaks at an end of the sweep: no double descent within these sizes."
    )
    shift = (
        f"The m = {m} best-stored objects are datapoints at T = {rows[0]['T']} and features at T = {rows[-1]['T']} "
        f"(features from T = {crossover} on)."
        if transition
        else f"The best-stored objects are {first} at T = {rows[0]['T']} and {last} at T = {rows[-1]['T']}: the "
        "published shift from datapoints to features is NOT seen over these sizes."
    )
    report = Report(f"unweave train memorization: {toy.n_features} features in {m} dimensions, T datapoints")
    report.summary().text(f"{shift} {peak}", summary=True)
    report.section("Sweep").text(
        "Dimensionality of an object: ||v||^2 / sum_j (v_hat . v_j)^2, the share of a dimension it has to itself. "
        f"dims_held: the sum over the {m} best-stored objects of each kind (at most {m}). regime: the kind that "
        "holds more. Losses: squared error per unit-norm datapoint (1 = predicting nothing)."
    ).table(rows).figure(
        memorization_losses([r["T"] for r in rows], [r["train_loss"] for r in rows], [r["test_loss"] for r in rows])
    )
    report.section("Dimensionality").figure(
        memorization_dimensionality(
            [f.size for f in fits],
            [f.feature_dims.tolist() for f in fits],
            [f.datapoint_dims.tolist() for f in fits],
        )
    )
    geometry = report.section("Geometry of the hidden space")
    for f in (fits[0], fits[-1]):
        geometry.figure(hidden_geometry(f.size, *_plane(f)))
    results = {"sweep": rows, "findings": findings}
    line = f"trained {len(fits)} toys in {cfg.out}: {shift} {peak}"
    return run.finish(results, report, [line])
