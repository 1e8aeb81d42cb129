"""`unweave detect`: run tasks; writes the run folder (record.json, detect.json with every
detector's AUROC/AP/FPR per site, detect.html with score histograms and tables)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unweave.anomaly.detectors import DETECTORS
from unweave.anomaly.evaluate import best, evaluate_task
from unweave.anomaly.plots import histogram
from unweave.anomaly.targets import TASKS, resolve
from unweave.configs import setting
from unweave.devices import DeviceConfig
from unweave.report import Report
from unweave.runs import Run, RunResult
from unweave.text import TextConfig, input_files


@dataclass(frozen=True)
class DetectConfig:
    task: list[str] = setting(
        ["planted-rule"],
        f"Task (repeat for several): {', '.join(TASKS[:2])}, or "
        "backdoor-{mnist,fashion,digits}-{corner,blend,pixel}.",
    )
    out: Path = setting(Path("runs/detect"), "Where record.json, detect.json and detect.html go.")
    detector: list[str] = setting(list(DETECTORS), f"Detectors (repeat): {', '.join(DETECTORS)}.")
    poison_rate: float = setting(0.05, "Fraction of backdoor training images poisoned.")
    seed: int = setting(0, "Seed for data splits, training and detectors.")
    dictionaries: bool = setting(
        True, "Also train a dictionary per site on the trusted activations and run the detectors on its latents."
    )
    text: TextConfig = setting(TextConfig(), "Text of the language-model task (copying-smollm2).")
    device: DeviceConfig = setting(DeviceConfig(), "Where the task's model trains and runs.")


def run_detect(cfg: DetectConfig) -> RunResult:
    uses_text = "copying-smollm2" in cfg.task
    run = Run(cfg.out, "detect", cfg, inputs=input_files(cfg.text) if uses_text else [])
    report = Report("unweave detect: mechanistic anomaly detection")
    summary, record, lines = [], {}, []
    for name in cfg.task:
        task = resolve(name, cfg.poison_rate, cfg.seed, cfg.device, cfg.text)
        result = evaluate_task(task, cfg.detector, cfg.seed, cfg.dictionaries)
        rows = result["rows"]
        top = {kind: best(rows, kind) for kind in ("raw input", "activations", "attributions", "dictionary latents")}
        top = {kind: r for kind, r in top.items() if r is not None}
        summary.append(
            {
                "task": name,
                **{f"best {k}": f"{r['detector']} @ {r['site']}: {r['auroc']:.3f}" for k, r in top.items()},
                **task.info,
            }
        )
        lines.append(
            f"{name}: "
            + "; ".join(f"{k} {r['detector']} @ {r['site']}: AUROC {r['auroc']:.3f}" for k, r in top.items())
        )
        record[name] = {"info": task.info, "rows": rows}
        section = report.section(f"Task {name}")
        section.text(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in task.info.items()))
        for kind, r in top.items():
            section.figure(
                histogram(
                    result["scores"][(r["detector"], r["features"], r["site"])],
                    result["labels"],
                    f"best on {kind}: {r['detector']} @ {r['site']} (AUROC {r['auroc']:.3f})",
                )
            )
        section.table(rows)
    report.summary("Summary: best detector per kind of features (AUROC)").table(summary)
    return run.finish({"tasks": record, "summary": summary}, report, lines)
