"""`unweave llc`: estimate (or calibrate) the LLC of a target, write llc.json and llc.html."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unweave.artifacts import write_json
from unweave.report import Report
from unweave.slt import plots
from unweave.slt.calibrate import calibrate, llc_over_checkpoints
from unweave.slt.hessian import hessian_summary
from unweave.slt.sgld import SGLDConfig
from unweave.slt.targets import resolve


@dataclass
class LLCRun:
    report: Path
    results: Path
    summary: str


def run_llc(spec: str, out: Path, config: SGLDConfig, checkpoint: str = "final", batch_size: int | None = None,
            params: str | None = None, calibrate_grid: bool = False, hessian: bool = True) -> LLCRun:
    target = resolve(spec, checkpoint, batch_size)
    out = Path(out)
    report = Report(f"unweave llc: {target.name}")
    record: dict = {"target": spec, "name": target.name, "config": config.to_dict(), "params": params,
                    "true_llc": target.true_llc}
    if calibrate_grid:
        step, model = target.checkpoints[-1]
        cal = calibrate(model, target.loss_fn, target.loader, base=config, params=params)
        record["calibration"] = {"grid": cal.grid, "chosen": cal.chosen, "rule": cal.rule}
        report.section("Calibration").text(f"Rule: {cal.rule}.").figure(plots.calibration(cal)).table(cal.grid)
        summary = (f"chosen epsilon {cal.chosen['epsilon']:g}, n*beta {cal.chosen['nbeta']:.4g}" if cal.chosen
                   else "no healthy setting in the grid: widen it (smaller epsilon) or raise localization")
    else:
        points = llc_over_checkpoints(target.checkpoints, target.loss_fn, target.loader, config, params=params)
        record["llc"] = [{"step": s, **r.to_dict()} for s, r in points]
        last_step, last = points[-1]
        section = report.section("Local learning coefficient")
        rows = [{"step": s, "LLC": r.llc_mean, "std. err.": r.llc_std_err, "n*beta": r.nbeta,
                 "MALA acceptance": r.mala_acceptance, "parameters sampled": r.n_params,
                 "flattened": r.flattened} for s, r in points]
        section.table(rows)
        if target.true_llc is not None:
            err = abs(last.llc_mean - target.true_llc) / target.true_llc
            record["relative_error"] = err
            section.text(f"Closed form: lambda = {target.true_llc:.4g}; estimate {last.llc_mean:.4g} "
                         f"± {last.llc_std_err:.2g} (relative error {err:.1%}).", summary=True)
        for note in last.warnings:
            section.text(f"Warning: {note}")
        if len(points) > 1:
            history = None
            if (Path(spec) / "history.json").exists():
                from unweave.zoo.modadd import TrainedModAdd
                history = TrainedModAdd(Path(spec)).history
            section.figure(plots.trajectory(points, history))
        section.figure(plots.traces(last, f"SGLD loss traces at step {last_step}"))
        if hessian:
            h = hessian_summary(target.checkpoints[-1][1], target.loss_fn, target.loader, params=params)
            record["hessian"] = vars(h)
            report.section("Hessian view").table([{
                "parameters": h.n_params, "near-zero eigenvalues": h.near_zero, "|eigenvalue| <=": h.tol,
                "x max |eigenvalue|": h.max_abs_eigenvalue, "method": h.method, "LLC": last.llc_mean,
                "2 x LLC (effective parameters)": 2 * last.llc_mean}])
        summary = f"LLC {last.llc_mean:.4g} ± {last.llc_std_err:.2g} at step {last_step} ({last.n_params} parameters)"
    out.mkdir(parents=True, exist_ok=True)
    results = out / "llc.json"
    write_json(results, record)
    return LLCRun(report.write(out / "llc.html"), results, summary)
