"""`unweave demo`: train (or reuse) a modular-addition transformer, recover its Fourier
algorithm, its LLC through training, its description lengths and its modules; writes the
run folder (record.json, results.json, report.html)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from scipy.stats import spearmanr

from unweave import progress
from unweave.configs import setting
from unweave.devices import DeviceConfig, loader_on
from unweave.graph import command as graph
from unweave.graph.carving import carve_target, modules_json
from unweave.graph.targets import modadd_target as graph_target
from unweave.mdl.command import add_sections, description_lengths
from unweave.mdl.targets import modadd_target
from unweave.report import Report
from unweave.runs import Run, RunResult
from unweave.slt import LLCResult, SGLDConfig, llc_over_checkpoints
from unweave.slt import plots as slt_plots
from unweave.slt.saved import SavedRuns
from unweave.zoo import fourier, plots
from unweave.zoo.modadd import ModAddConfig, TrainedModAdd, answer_loss, at_answer, make_data, train, train_loader


@dataclass(frozen=True)
class DemoConfig:
    out: Path = setting(Path("runs/demo"), "Output directory (reused if it holds a finished run).")
    modadd: ModAddConfig = setting(ModAddConfig(), "The model and its training.")
    # the LLC trajectory's SGLD settings, fixed: the rule (unweave.slt.auto) needs full-batch chains of
    # thousands of steps on this 200k-parameter model, minutes per checkpoint on 2 cores; each
    # checkpoint's health is judged and shown instead
    sgld: SGLDConfig = setting(
        SGLDConfig(epsilon=3e-5, nbeta=192.3, localization=100.0, chains=2, draws=100, burn_in=20),
        "SGLD settings of the LLC trajectory.",
        cli=False,
    )
    llc_batch_size: int = setting(256, "SGLD batch size of the LLC trajectory.", cli=False)
    device: DeviceConfig = setting(DeviceConfig(), "Where training and SGLD run, and the dtype of the weights.")


def progress_measures(run: TrainedModAdd, key_freqs: list[int]) -> list[dict]:
    """Restricted and excluded loss at every checkpoint, with the final key frequencies
    (the paper's progress measures: they move long before test loss does)."""
    cfg = run.config
    data = make_data(cfg)
    rows = []
    for step, path in progress.track(run.checkpoints(), "progress measures per checkpoint"):
        model = run.load(path)
        rows.append(
            {
                "step": step,
                "key_norm_fraction": fourier.norm_fraction(model.W_E.detach(), cfg.p, key_freqs),
                "weight_norm": torch.cat([q.detach().flatten() for q in model.parameters()]).norm().item(),
                **fourier.logit_measures(model, data, cfg.p, key_freqs),
            }
        )
    return rows


def why_llc_falls(points: list[tuple[int, LLCResult, str]], measures: list[dict], history: list[dict]) -> str:
    """The LLC from its peak to the last checkpoint, beside what else changed over the same
    checkpoints (the weights' norm, the embedding's share in the key frequencies, the losses),
    all measured in this run; the reading is stated only where those numbers carry it."""
    by_step = {m["step"]: m for m in measures}
    pts = [(s, r.llc_mean) for s, r, _ in points if s in by_step and math.isfinite(r.llc_mean)]
    if len(pts) < 3:
        return "Too few checkpoints with an LLC estimate to say how it changes."
    peak = max(range(len(pts)), key=lambda i: pts[i][1])
    (s0, llc0), (s1, llc1) = pts[peak], pts[-1]
    if peak == len(pts) - 1 or llc1 >= llc0:
        return (
            f"The LLC does not fall after its peak in this run (largest {llc0:.3g} at step {s0}, the last checkpoint)."
        )
    m0, m1 = by_step[s0], by_step[s1]
    loss = {h["step"]: h for h in history}
    tail = pts[peak:]
    rho = (
        spearmanr([v for _, v in tail], [by_step[s]["weight_norm"] for s, _ in tail]).statistic
        if len(tail) > 2
        else math.nan
    )
    text = (
        f"Why the LLC falls: from its peak, {llc0:.3g} at step {s0}, to {llc1:.3g} at step {s1}, the weights' norm "
        f"goes from {m0['weight_norm']:.4g} to {m1['weight_norm']:.4g} and the embedding's share in the key "
        f"frequencies from {m0['key_norm_fraction']:.1%} to {m1['key_norm_fraction']:.1%}"
    )
    if s0 in loss and s1 in loss:
        text += (
            f", while the training loss goes from {loss[s0]['train_loss']:.3g} to {loss[s1]['train_loss']:.3g} and "
            f"the test loss from {loss[s0]['test_loss']:.3g} to {loss[s1]['test_loss']:.3g}"
        )
    text += f". From the peak on, the LLC's Spearman correlation with the weight norm is {rho:.2f}."
    unhealthy = [s for s, _, why in points if why and s in (s0, s1)]
    if unhealthy:
        text += (
            f" Caution: the chains at step{'s' if len(unhealthy) > 1 else ''} {', '.join(map(str, unhealthy))} are "
            "not healthy (the reasons are above), so these are the sampler's readings at the demo's fixed settings, "
            "not settled LLCs; `unweave llc RUN --checkpoint STEP` runs the settings rule on one checkpoint."
        )
    if m1["weight_norm"] < m0["weight_norm"] and m1["key_norm_fraction"] > m0["key_norm_fraction"]:
        text += (
            " Reading: the model fits the training pairs throughout, and weight decay moves it from a memorising "
            "solution to the Fourier circuit on a few frequencies, which fits the same pairs with fewer effective "
            "parameters: around it the loss is flat in more directions, and the LLC counts only the others."
        )
    return text


def summary(a: fourier.FourierAnalysis) -> str:
    return (
        f"The model reaches {a.test_acc:.2%} test accuracy. Its embedding puts "
        f"{a.key_norm_fraction:.1%} of its norm on {len(a.key_freqs)} key frequencies {a.key_freqs} "
        f"(of {len(a.spectrum)}). Keeping only the logits' components along cos/sin(w_k(a+b)) for those "
        f"frequencies gives {a.restricted_test_acc:.2%} test accuracy (restricted loss "
        f"{a.restricted_test_loss:.3g}); removing them raises the training loss from {a.train_loss:.3g} to "
        f"{a.excluded_train_loss:.3g} ({a.excluded_over_train:.3g} times). The model computes a + b mod "
        f"{a.p} with the Fourier algorithm on these frequencies."
    )


def run_demo(cfg: DemoConfig | None = None) -> RunResult:
    cfg = cfg or DemoConfig()
    out_dir = Path(cfg.out)
    run = Run(out_dir, "demo", cfg, results="results.json", report="report.html")
    device, dtype = cfg.device.torch_device, cfg.device.torch_dtype
    trained = train(cfg.modadd, out_dir / "modadd", device=device, dtype=dtype)
    final = trained.load()
    analysis = fourier.analyse(final, make_data(cfg.modadd), cfg.modadd.p)
    measures = progress_measures(trained, analysis.key_freqs)
    history = trained.history
    saved = trained.checkpoints()
    every = max(1, len(saved) // 8)  # thin long runs to 8-15 points to keep the demo quick (15 here: all)
    loader = loader_on(train_loader(cfg.modadd, batch_size=cfg.llc_batch_size), device)
    sgld = cfg.sgld
    finished = SavedRuns.of(run)  # an interrupted demo, run again, replays the SGLD runs it finished
    llc_points = llc_over_checkpoints(
        [(step, at_answer(trained.load(path).to(device, dtype))) for step, path in saved[every - 1 :: every]],
        answer_loss,
        loader,
        sgld,
        estimate=lambda step: finished.scope(f"step-{step}").estimate,
    )
    report = Report("unweave demo: a grokked modular-addition transformer, reverse-engineered")
    report.summary().text(summary(analysis), summary=True)
    report.section("Model and training").table(
        [{"setting": k, "value": v} for k, v in asdict(cfg.modadd).items()]
    ).figure(plots.loss_curves(history))
    report.section("Fourier analysis").figure(plots.spectrum(analysis)).table(
        [
            {"quantity": "test accuracy", "value": analysis.test_acc},
            {"quantity": "restricted test accuracy (key frequencies only)", "value": analysis.restricted_test_acc},
            {"quantity": "restricted test loss", "value": analysis.restricted_test_loss},
            {"quantity": "train loss", "value": analysis.train_loss},
            {"quantity": "excluded train loss (key frequencies removed)", "value": analysis.excluded_train_loss},
            {"quantity": "excluded / train loss", "value": analysis.excluded_over_train},
            {"quantity": "share of embedding norm in key frequencies", "value": analysis.key_norm_fraction},
        ]
    ).figure(plots.progress_measures(measures, history))
    unhealthy = [(step, why) for step, _, why in llc_points if why]
    llc_falls = why_llc_falls(llc_points, measures, history)
    report.section("Learning coefficient through training").text(
        f"Local learning coefficient by SGLD at {len(llc_points)} checkpoints ({sgld.chains} chains x "
        f"{sgld.draws} steps, epsilon {sgld.epsilon:.3g}, localization {sgld.localization:.3g}, n*beta "
        f"{sgld.nbeta:.4g}, batch {cfg.llc_batch_size}), an effective parameter count beside the "
        f"{sum(p.numel() for p in final.parameters())} raw ones. The settings are fixed (the settings rule of "
        "`unweave llc` takes minutes per checkpoint here); burn-in is judged from every checkpoint's own traces, "
        "and a checkpoint whose chains fail the rule's health checks is marked with the reason."
    ).text(
        "Checkpoints whose chains are not healthy: "
        + ("; ".join(f"step {step}: {why}" for step, why in unhealthy) if unhealthy else "none.")
    ).figure(slt_plots.trajectory(llc_points, history)).text(llc_falls).table(
        [
            {
                "step": s,
                "LLC": r.llc_mean,
                "std. err.": r.llc_std_err,
                "R-hat": r.rhat,
                "burn-in (judged)": r.burn_in_judged,
                "MALA acceptance": r.mala_acceptance,
                "healthy": not why,
            }
            for s, r, why in llc_points
        ]
    )
    mdl_target = modadd_target(out_dir / "modadd")
    mdl, mdl_lines = description_lengths(mdl_target)
    add_sections(
        report,
        report.section("Description length").text(
            "How many bits describe the residual stream at '=' (the model's last activations) within 0.05 nats of "
            "mean KL on every pair, in each basis, beside the bits of the weights and of the Fourier algorithm "
            "written as a program (as `unweave mdl` writes them)."
        ),
        mdl_target,
        mdl,
        mdl_lines,
    )
    carving = carve_target(graph_target(out_dir / "modadd"), seed=0)
    graph.add_sections(
        report,
        report.section("Modules").text(
            "The MLP neurons cut into parts whose effects on the logits do not overlap, found without any Fourier "
            "knowledge and checked by ablation (as `unweave graph` does); each neuron's dominant frequency is "
            "computed afterwards, only to score the cut."
        ),
        carving,
        seed=0,
    )
    results = {
        "config": asdict(cfg.modadd),
        "mdl": mdl,
        "modules": modules_json(carving),
        "fourier": analysis.to_dict(),
        "progress_measures": measures,
        "llc": [
            {
                "step": s,
                "llc_mean": r.llc_mean,
                "llc_std_err": r.llc_std_err,
                "rhat": r.rhat,
                "mala_acceptance": r.mala_acceptance,
                "healthy": not why,
                "why_not": why,
            }
            for s, r, why in llc_points
        ],
        "llc_falls": llc_falls,
        "final": history[-1],
    }
    a = analysis
    line = (
        f"key frequencies {a.key_freqs}; restricted test accuracy {a.restricted_test_acc:.2%}; "
        f"excluded / train loss {a.excluded_over_train:.3g}"
    )
    return run.finish(results, report, [line, *mdl_lines[:3], *graph.summary_lines(carving)[:2]])
