"""`unweave llc`: estimate (or calibrate) the LLC of a target; writes the run folder
(record.json, llc.json, llc.html)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unweave import distributed
from unweave.configs import setting
from unweave.devices import DeviceConfig
from unweave.report import Report
from unweave.runs import Run, RunResult
from unweave.slt import plots
from unweave.slt.calibrate import calibrate, llc_over_checkpoints
from unweave.slt.hessian import hessian_summary
from unweave.slt.sgld import SGLDConfig
from unweave.slt.targets import resolve


@dataclass(frozen=True)
class LLCConfig:
    target: str = setting(
        help="A modadd run directory, or rrr:M,H,N:r, dln:H0,...,HL:r, normal-crossing:p1,p2,...", argument=True
    )
    out: Path = setting(Path("runs/llc"), "Where record.json, llc.json and llc.html go.")
    checkpoint: str = setting("final", "For a run: 'final', a step, or 'all' (the LLC trajectory).")
    calibrate: bool = setting(False, "Sweep epsilon x n*beta and pick settings.")
    batch_size: int | None = setting(None, "SGLD batch size (default: full batch).")
    params: str | None = setting(None, "Sample only parameters under this name, e.g. blocks.0.attn.")
    hessian: bool = setting(True, "Also compute the Hessian view (near-zero eigenvalues at w*).")
    sgld: SGLDConfig = setting(SGLDConfig(), "SGLD settings.")
    device: DeviceConfig = setting(DeviceConfig(), "Where the chains run, and the dtype of weights and data.")


def run_llc(cfg: LLCConfig) -> RunResult:
    device = distributed.start(cfg.device.torch_device)  # under torchrun: chains spread over the ranks
    target = resolve(cfg.target, cfg.checkpoint, cfg.batch_size).to(device, cfg.device.torch_dtype)
    run = Run(cfg.out, "llc", cfg, inputs=[cfg.target])
    report = Report(f"unweave llc: {target.name}")
    record: dict = {"target": cfg.target, "name": target.name, "true_llc": target.true_llc}
    if cfg.calibrate:
        step, model = target.checkpoints[-1]
        cal = calibrate(model, target.loss_fn, target.loader, base=cfg.sgld, params=cfg.params)
        record["calibration"] = {"grid": cal.grid, "chosen": cal.chosen, "rule": cal.rule}
        report.section("Calibration").text(f"Rule: {cal.rule}.").figure(plots.calibration(cal)).table(cal.grid)
        summary = (
            f"chosen epsilon {cal.chosen['epsilon']:g}, n*beta {cal.chosen['nbeta']:.4g}"
            if cal.chosen
            else "no healthy setting in the grid: widen it (smaller epsilon) or raise localization"
        )
        report.summary().text(summary, summary=True)
        return run.finish(record, report, [summary])
    points = llc_over_checkpoints(target.checkpoints, target.loss_fn, target.loader, cfg.sgld, params=cfg.params)
    record["llc"] = [{"step": s, **r.to_dict()} for s, r in points]
    last_step, last = points[-1]
    summary = f"LLC {last.llc_mean:.4g} ± {last.llc_std_err:.2g} at step {last_step} ({last.n_params} parameters)"
    headline = report.summary()
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
                "n*beta": r.nbeta,
                "MALA acceptance": r.mala_acceptance,
                "parameters sampled": r.n_params,
                "flattened": r.flattened,
            }
            for s, r in points
        ]
    )
    for note in last.warnings:
        section.text(f"Warning: {note}")
    if len(points) > 1:
        section.figure(plots.trajectory(points, target.history))
    section.figure(plots.traces(last, f"SGLD loss traces at step {last_step}"))
    if cfg.hessian and distributed.world().main:
        h = hessian_summary(target.checkpoints[-1][1], target.loss_fn, target.loader, params=cfg.params)
        record["hessian"] = vars(h)
        report.section("Hessian view").table(
            [
                {
                    "parameters": h.n_params,
                    "near-zero eigenvalues": h.near_zero,
                    "|eigenvalue| <=": h.tol,
                    "x max |eigenvalue|": h.max_abs_eigenvalue,
                    "method": h.method,
                    "LLC": last.llc_mean,
                    "2 x LLC (effective parameters)": 2 * last.llc_mean,
                }
            ]
        )
    return run.finish(record, report, [summary])
