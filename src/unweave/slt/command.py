"""`unweave llc`: the LLC of a target with settings chosen by the rule (`unweave.slt.auto`) or
given; writes the run folder (record.json, llc.json, llc.html)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from unweave import distributed
from unweave.configs import setting
from unweave.devices import DeviceConfig
from unweave.report import Report
from unweave.runs import Run, RunResult
from unweave.slt import plots
from unweave.slt.auto import AutoLLC, AutoRule, auto_llc, rule_text
from unweave.slt.hessian import hessian_summary
from unweave.slt.saved import SavedRuns
from unweave.slt.sgld import SGLDConfig
from unweave.slt.targets import Target, resolve
from unweave.slt.trajectory import chosen_settings, llc_over_checkpoints
from unweave.text import TextConfig


@dataclass(frozen=True)
class LLCConfig:
    target: str | None = setting(
        None,
        "A modadd run directory, or rrr:M,H,N:r, dln:H0,...,HL:r, normal-crossing:p1,p2,... (or --model instead).",
        argument=True,
    )
    model: str | None = setting(
        None, "A causal LM (smollm2-135m or a local Hugging Face folder): the LLC of its parts on --text."
    )
    per: str = setting(
        "none",
        "With --model: 'layer' (each decoder layer under --params), 'head' (each attention head of those "
        "layers) or 'none' (everything under --params as one block).",
    )
    text: TextConfig = setting(TextConfig(), "With --model: the text the next-token loss is measured on.")
    tokens: int = setting(4096, "With --model: tokens of text (n counts the predicted tokens).")
    ctx_len: int = setting(64, "With --model: tokens per row.")
    out: Path = setting(Path("runs/llc"), "Where record.json, llc.json and llc.html go.")
    checkpoint: str = setting("final", "For a run: 'final', a step, or 'all' (the LLC trajectory).")
    settings: str = setting(
        "auto",
        "'auto': epsilon, localization, n*beta and length chosen by the rule; 'fixed': the --epsilon etc. given.",
    )
    calibrate: bool = setting(False, "The rule, plus every rung again at a third of its step size (the spread shown).")
    batch_size: int | None = setting(None, "SGLD batch size (default: full batch; with --model 8 rows).")
    params: str | None = setting(
        None, "Sample only parameters under these names (comma-separated), e.g. blocks.0.attn or model.layers.3."
    )
    hessian: bool = setting(True, "Also compute the Hessian view (near-zero eigenvalues at w*; not with --model).")
    sgld: SGLDConfig = setting(SGLDConfig(), "SGLD settings.")
    rule: AutoRule = setting(AutoRule(), "The rule that chooses the settings.")
    device: DeviceConfig = setting(DeviceConfig(), "Where the chains run, and the dtype of weights and data.")

    def __post_init__(self):
        if (self.target is None) == (self.model is None):
            raise ValueError(
                "give a TARGET (a run directory or a zoo model like rrr:5,3,5:1) or --model (a causal LM), not "
                + ("both" if self.target else "neither")
            )
        if self.per not in ("none", "layer", "head"):
            raise ValueError(f"--per must be none, layer or head, got {self.per!r}")
        if self.model is None and self.per != "none":
            raise ValueError("--per layer/head measures the parts of a language model: add --model")
        if self.model is not None and self.checkpoint != "final":
            raise ValueError("--checkpoint is for a run directory TARGET; a --model is measured at its weights")
        if self.settings not in ("auto", "fixed"):
            raise ValueError(f"--settings must be 'auto' or 'fixed', got {self.settings!r}")
        if self.settings == "fixed" and not 0 < self.sgld.epsilon < 1:
            raise ValueError(
                f"--epsilon must be between 0 and 1, got {self.sgld.epsilon}: steps of 1e-6 to 1e-3 are usual, "
                "or let the rule choose (--settings auto)"
            )
        if self.settings == "auto" and self.sgld.scheme != "euler":
            raise ValueError(
                f"--scheme {self.sgld.scheme} has no MALA acceptance, which the settings rule tunes the step on: "
                "use --lm (the rule's full runs by Leimkuhler-Matthews after Euler pilots), or add --settings fixed "
                "(with --epsilon, --nbeta, --localization)"
            )
        if self.calibrate and self.settings == "fixed":
            raise ValueError("--calibrate chooses settings by the rule: drop --settings fixed")


def run_llc(cfg: LLCConfig) -> RunResult:
    if cfg.model is not None:
        from unweave.slt.lm_command import run_model_llc

        return run_model_llc(cfg)
    device = distributed.start(cfg.device.torch_device)  # under torchrun: chains spread over the ranks
    target = resolve(cfg.target, cfg.checkpoint, cfg.batch_size).to(device, cfg.device.torch_dtype)
    run = Run(cfg.out, "llc", cfg, inputs=[cfg.target])
    report = Report(f"unweave llc: {target.name}")
    record: dict = {"target": cfg.target, "name": target.name, "true_llc": target.true_llc}
    saved = SavedRuns.of(run)  # an interrupted run, started again, replays the SGLD runs it finished
    headline = report.summary()
    sgld = cfg.sgld
    if cfg.settings == "auto":
        auto = _choose(cfg, target, report, saved)
        record["auto"] = auto.to_dict()
        if not auto.healthy:
            summary = f"No LLC reported: {auto.message}"
            headline.text(summary, summary=True)
            record["healthy"] = False
            record["replayed_runs"] = saved.found
            return run.finish(record, report, [summary])
        sgld = chosen_settings(auto, cfg.sgld)

    def at_step(step: int):
        return saved.scope(f"step-{step}").estimate

    if cfg.settings == "auto":  # the rule already ran the last checkpoint at the chosen settings: reuse it
        earlier = llc_over_checkpoints(
            target.checkpoints[:-1], target.loss_fn, target.loader, sgld, cfg.params, cfg.rule, at_step
        )
        points = [*earlier, (target.checkpoints[-1][0], auto.result, "")]
    else:
        points = llc_over_checkpoints(
            target.checkpoints, target.loss_fn, target.loader, sgld, cfg.params, cfg.rule, at_step
        )
    record["replayed_runs"] = saved.found
    record["llc"] = [{"step": s, **r.to_dict(), "healthy": not why, "why_not": why} for s, r, why in points]
    last_step, last, why = points[-1]
    record["healthy"] = not why
    summary = f"LLC {last.llc_mean:.4g} ± {last.llc_std_err:.2g} at step {last_step} ({last.n_params} parameters)"
    if cfg.settings == "auto" and len(target.checkpoints) == 1:
        lo, hi = auto.spread
        summary += f", spread {lo:.4g} to {hi:.4g} over the healthy settings, band {auto.band[0]:.4g} to "
        summary += f"{auto.band[1]:.4g} (spread, 2 SE and the rule's {cfg.rule.agree:.0%} resolution)"
    if why:
        summary += f"; not healthy: {why}"
    headline.text(summary, summary=True)
    if target.true_llc is not None:
        err = abs(last.llc_mean - target.true_llc) / target.true_llc
        record["relative_error"] = err
        headline.text(
            f"Closed form: lambda = {target.true_llc:.4g}; estimate {last.llc_mean:.4g} "
            f"± {last.llc_std_err:.2g} (relative error {err:.1%}).",
            summary=True,
        )
    section = report.section("Local learning coefficient")
    section.table(
        [
            {
                "step": s,
                "LLC": r.llc_mean,
                "std. err.": r.llc_std_err,
                "R-hat": r.rhat,
                "burn-in (judged)": r.burn_in_judged,
                "n*beta": r.nbeta,
                "MALA acceptance": r.mala_acceptance,
                "parameters sampled": r.n_params,
                "healthy": not why,
                "why not": why,
            }
            for s, r, why in points
        ]
    )
    if len(points) > 1:
        section.figure(plots.trajectory(points, target.history))
    section.figure(plots.traces(last, f"SGLD loss traces at step {last_step}"))
    if cfg.hessian and distributed.world().main:
        record["hessian"] = _hessian(cfg, target, report, last.llc_mean)
    return run.finish(record, report, [summary])


def _choose(cfg: LLCConfig, target: Target, report: Report, saved: SavedRuns) -> AutoLLC:
    """Run the rule at the last checkpoint and report every setting it tried."""
    rule = replace(cfg.rule, step_check=cfg.calibrate)
    model = target.checkpoints[-1][1]
    auto = auto_llc(
        model,
        target.loss_fn,
        target.loader,
        rule,
        cfg.params,
        cfg.sgld.nbeta,
        cfg.sgld,
        estimate=saved.scope("rule").estimate,
    )
    section = report.section("How the settings were chosen")
    section.text(rule_text(rule)).text(f"Conclusion: {auto.message}.")
    section.figure(plots.ladder(auto)).table([r.row() for r in auto.rungs])
    return auto


def _hessian(cfg: LLCConfig, target: Target, report: Report, llc: float) -> dict:
    h = hessian_summary(target.checkpoints[-1][1], target.loss_fn, target.loader, params=cfg.params)
    report.section("Hessian view").table(
        [
            {
                "parameters": h.n_params,
                "near-zero eigenvalues": h.near_zero,
                "|eigenvalue| <=": h.tol,
                "x max |eigenvalue|": h.max_abs_eigenvalue,
                "method": h.method,
                "LLC": llc,
                "2 x LLC (effective parameters)": 2 * llc,
                **(
                    {"flat directions (closed form)": target.true_flat, "agree": h.near_zero == target.true_flat}
                    if target.true_flat is not None
                    else {}
                ),
            }
        ]
    )
    return vars(h) | {"true_flat": target.true_flat}
