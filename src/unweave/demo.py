"""`unweave demo`: train (or reuse) a modular-addition transformer, recover its Fourier
algorithm, and write report.html and results.json."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go

from unweave import progress
from unweave.artifacts import write_json
from unweave.report import Report
from unweave.slt import SGLDConfig, llc_over_checkpoints
from unweave.slt import plots as slt_plots
from unweave.zoo import fourier
from unweave.zoo.modadd import ModAddConfig, TrainedModAdd, answer_loss, make_data, train, train_loader

# SGLD settings for the LLC trajectory: n*beta = n / ln n for the 1392 training pairs; epsilon from
# `unweave llc runs/demo/modadd --calibrate --batch-size 256` (3e-5: MALA acceptance ~0.7, 1e-4: ~0.35)
DEMO_SGLD = SGLDConfig(epsilon=3e-5, nbeta=192.3, localization=100.0, chains=2, draws=100, burn_in=20)


@dataclass
class DemoResult:
    report: Path
    results: Path
    analysis: fourier.FourierAnalysis


def progress_measures(run: TrainedModAdd, key_freqs: list[int]) -> list[dict]:
    """Restricted and excluded loss at every checkpoint, with the final key frequencies
    (the paper's progress measures: they move long before test loss does)."""
    cfg = run.config
    data = make_data(cfg)
    rows = []
    for step, path in progress.track(run.checkpoints(), "progress measures per checkpoint"):
        model = run.load(path)
        rows.append({"step": step, "key_norm_fraction": fourier.norm_fraction(model.W_E.detach(), cfg.p, key_freqs),
                     **fourier.logit_measures(model, data, cfg.p, key_freqs)})
    return rows


def _loss_curves(history: list[dict]) -> go.Figure:
    fig = go.Figure()
    steps = [h["step"] for h in history]
    for split in ("train", "test"):
        fig.add_scatter(x=steps, y=[max(h[f"{split}_loss"], 1e-12) for h in history], name=f"{split} loss")
    fig.update_layout(title="Training curves (full batch, AdamW, weight decay 1)", xaxis_title="step",
                      yaxis_title="cross-entropy loss", yaxis_type="log", height=400)
    return fig


def _spectrum(analysis: fourier.FourierAnalysis) -> go.Figure:
    freqs = list(range(1, len(analysis.spectrum) + 1))
    colors = ["#d62728" if k in analysis.key_freqs else "#7f7f7f" for k in freqs]
    fig = go.Figure(go.Bar(x=freqs, y=analysis.spectrum, marker_color=colors, name="norm"))
    fig.update_layout(title=f"Fourier spectrum of the embedding (key frequencies in red: {analysis.key_freqs})",
                      xaxis_title="frequency k (w = 2 pi k / p)", yaxis_title="norm of W_E along cos/sin k",
                      height=400)
    return fig


def _progress_plot(rows: list[dict], history: list[dict]) -> go.Figure:
    fig = go.Figure()
    steps = [r["step"] for r in rows]
    fig.add_scatter(x=steps, y=[r["restricted_test_loss"] for r in rows], name="restricted loss (test)")
    fig.add_scatter(x=steps, y=[r["excluded_train_loss"] for r in rows], name="excluded loss (train)")
    fig.add_scatter(x=[h["step"] for h in history], y=[max(h["test_loss"], 1e-12) for h in history],
                    name="test loss", line={"dash": "dot"})
    fig.update_layout(title="Progress measures at each checkpoint (final key frequencies)", xaxis_title="step",
                      yaxis_title="loss", yaxis_type="log", height=400)
    return fig


def summary(a: fourier.FourierAnalysis) -> str:
    return (f"The model reaches {a.test_acc:.2%} test accuracy. Its embedding puts "
            f"{a.key_norm_fraction:.1%} of its norm on {len(a.key_freqs)} key frequencies {a.key_freqs} "
            f"(of {len(a.spectrum)}). Keeping only the logits' components along cos/sin(w_k(a+b)) for those "
            f"frequencies gives {a.restricted_test_acc:.2%} test accuracy (restricted loss "
            f"{a.restricted_test_loss:.3g}); removing them raises the training loss from {a.train_loss:.3g} to "
            f"{a.excluded_train_loss:.3g} ({a.excluded_over_train:.3g} times). The model computes a + b mod "
            f"{a.p} with the Fourier algorithm on these frequencies.")


def run_demo(out_dir: Path = Path("runs/demo"), cfg: ModAddConfig | None = None) -> DemoResult:
    cfg = cfg or ModAddConfig()
    out_dir = Path(out_dir)
    run = train(cfg, out_dir / "modadd")
    final = run.load()
    analysis = fourier.analyse(final, make_data(cfg), cfg.p)
    measures = progress_measures(run, analysis.key_freqs)
    history = run.history
    saved = run.checkpoints()
    every = max(1, len(saved) // 8)  # thin long runs to 8-15 points to keep the demo quick (15 here: all)
    with warnings.catch_warnings(record=True) as caught:  # the report shows the sampler's warnings
        warnings.simplefilter("always")
        llc_points = llc_over_checkpoints([(step, run.load(path)) for step, path in saved[every - 1::every]],
                                          answer_loss, train_loader(cfg, batch_size=256), DEMO_SGLD)

    report = Report("unweave demo: a grokked modular-addition transformer, reverse-engineered")
    report.section("Summary").text(summary(analysis), summary=True)
    report.section("Model and training").table([{"setting": k, "value": v} for k, v in vars(cfg).items()]) \
        .figure(_loss_curves(history))
    report.section("Fourier analysis").figure(_spectrum(analysis)).table([
        {"quantity": "test accuracy", "value": analysis.test_acc},
        {"quantity": "restricted test accuracy (key frequencies only)", "value": analysis.restricted_test_acc},
        {"quantity": "restricted test loss", "value": analysis.restricted_test_loss},
        {"quantity": "train loss", "value": analysis.train_loss},
        {"quantity": "excluded train loss (key frequencies removed)", "value": analysis.excluded_train_loss},
        {"quantity": "excluded / train loss", "value": analysis.excluded_over_train},
        {"quantity": "share of embedding norm in key frequencies", "value": analysis.key_norm_fraction},
    ]).figure(_progress_plot(measures, history))
    report.section("Learning coefficient through training").text(
        f"Local learning coefficient by SGLD at {len(llc_points)} checkpoints ({DEMO_SGLD.chains} chains x "
        f"{DEMO_SGLD.draws} draws, epsilon {DEMO_SGLD.epsilon:g}, n*beta {DEMO_SGLD.nbeta:g}, batch 256), "
        f"an effective parameter count beside the {sum(p.numel() for p in final.parameters())} raw ones."
    ).text(f"Sampler warnings: {len(caught)} ({'; '.join(sorted({str(w.message) for w in caught}))})"
           if caught else "Sampler warnings: none."
    ).figure(slt_plots.trajectory(llc_points, history)).table(
        [{"step": s, "LLC": r.llc_mean, "std. err.": r.llc_std_err, "MALA acceptance": r.mala_acceptance}
         for s, r in llc_points])
    report_path = report.write(out_dir / "report.html")
    results_path = out_dir / "results.json"
    write_json(results_path, {"config": vars(cfg), "fourier": analysis.to_dict(), "progress_measures": measures,
                              "llc": [{"step": s, "llc_mean": r.llc_mean, "llc_std_err": r.llc_std_err,
                                       "mala_acceptance": r.mala_acceptance} for s, r in llc_points],
                              "final": history[-1]})
    return DemoResult(report_path, results_path, analysis)
