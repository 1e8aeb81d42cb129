"""`unweave demo`: train (or reuse) a modular-addition transformer, recover its Fourier
algorithm and its LLC through training; writes the run folder (record.json, results.json,
report.html)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from unweave import progress
from unweave.configs import setting
from unweave.devices import DeviceConfig, loader_on
from unweave.report import Report
from unweave.runs import Run, RunResult
from unweave.slt import AutoRule, SGLDConfig, auto_llc, chosen_settings, llc_over_checkpoints
from unweave.slt import plots as slt_plots
from unweave.zoo import fourier, plots
from unweave.zoo.modadd import ModAddConfig, TrainedModAdd, answer_loss, make_data, train, train_loader


@dataclass(frozen=True)
class DemoConfig:
    out: Path = setting(Path("runs/demo"), "Output directory (reused if it holds a finished run).")
    modadd: ModAddConfig = setting(ModAddConfig(), "The model and its training.")
    # the LLC trajectory's settings come from the rule (unweave.slt.auto) at the final checkpoint;
    # these are the ones it does not choose
    sgld: SGLDConfig = setting(SGLDConfig(chains=4), "SGLD settings the rule does not choose.", cli=False)
    rule: AutoRule = setting(AutoRule(rungs=2, first_steps=500, max_steps=4000), "The settings rule.", cli=False)
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
                **fourier.logit_measures(model, data, cfg.p, key_freqs),
            }
        )
    return rows


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
    auto = auto_llc(final.to(device, dtype), answer_loss, loader, cfg.rule, base=cfg.sgld)
    if not auto.healthy:
        raise RuntimeError(f"the LLC settings rule found no healthy setting for the demo's model: {auto.message}")
    sgld = chosen_settings(auto, cfg.sgld)
    llc_points = llc_over_checkpoints(
        [(step, trained.load(path).to(device, dtype)) for step, path in saved[every - 1 :: every]],
        answer_loss,
        loader,
        sgld,
        rule=cfg.rule,
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
    report.section("Learning coefficient through training").text(
        f"Local learning coefficient by SGLD at {len(llc_points)} checkpoints ({sgld.chains} chains x "
        f"{sgld.draws} steps, epsilon {sgld.epsilon:.3g}, localization {sgld.localization:.3g}, n*beta "
        f"{sgld.nbeta:.4g}, batch {cfg.llc_batch_size}), an effective parameter count beside the "
        f"{sum(p.numel() for p in final.parameters())} raw ones. The settings come from the rule at the final "
        f"checkpoint ({auto.message}); burn-in is judged from every checkpoint's own traces."
    ).text(
        "Checkpoints whose chains are not healthy: "
        + ("; ".join(f"step {step}: {why}" for step, why in unhealthy) if unhealthy else "none.")
    ).text(
        "Why the LLC falls: while the network memorises, each training pair is fitted by its own directions in "
        "weight space, so many directions curve and the count is high. As the Fourier circuit forms, the same "
        "loss is reached by a few key frequencies and the weight decay removes the rest; the directions that "
        "no longer affect the loss are flat, and the LLC, which counts only directions that curve, falls with "
        "the test loss (Lau et al. 2023 show the same fall at grokking)."
    ).figure(slt_plots.trajectory(llc_points, history)).table(
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
    results = {
        "config": asdict(cfg.modadd),
        "fourier": analysis.to_dict(),
        "progress_measures": measures,
        "llc_settings": auto.to_dict(),
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
        "final": history[-1],
    }
    a = analysis
    line = (
        f"key frequencies {a.key_freqs}; restricted test accuracy {a.restricted_test_acc:.2%}; "
        f"excluded / train loss {a.excluded_over_train:.3g}"
    )
    return run.finish(results, report, [line])
