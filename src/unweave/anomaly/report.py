"""`unweave detect`: run tasks, write detect.json and detect.html (score histograms, tables)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from unweave.anomaly.run import best, evaluate_task
from unweave.anomaly.tasks import DATASETS, TRIGGERS, Task, backdoor_task, copying_task, planted_rule_task
from unweave.artifacts import write_json
from unweave.report import Report

TASKS = ["planted-rule", "copying-smollm2"] + [f"backdoor-{d}-{t}" for d in DATASETS for t in TRIGGERS]


def make_task(name: str, poison_rate: float = 0.05, seed: int = 0) -> Task:
    if name == "planted-rule":
        return planted_rule_task(seed=seed)
    if name == "copying-smollm2":
        return copying_task(seed=seed)
    parts = name.split("-")
    if len(parts) == 3 and parts[0] == "backdoor":
        return backdoor_task(parts[1], parts[2], poison_rate=poison_rate, seed=seed)
    raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")


def histogram(scores: np.ndarray, labels: np.ndarray, title: str) -> go.Figure:
    fig = go.Figure()
    for value, name in ((0, "normal"), (1, "anomalous")):
        fig.add_histogram(x=scores[labels == value], name=name, opacity=0.6, histnorm="probability", nbinsx=40)
    fig.update_layout(barmode="overlay", title=title, xaxis_title="score (higher = more anomalous)",
                      yaxis_title="fraction", height=330)
    return fig


@dataclass
class DetectRun:
    report: Path
    results: Path
    summary: list[dict]


def run_detect(task_names: list[str], out: Path, detectors: list[str] | None = None, poison_rate: float = 0.05,
               seed: int = 0) -> DetectRun:
    report = Report("unweave detect: mechanistic anomaly detection")
    summary, record = [], {}
    for name in task_names:
        task = make_task(name, poison_rate, seed)
        result = evaluate_task(task, detectors, seed) if detectors else evaluate_task(task, seed=seed)
        rows = result["rows"]
        top = {kind: best(rows, kind) for kind in ("raw input", "activations", "attributions")}
        top = {kind: r for kind, r in top.items() if r is not None}
        summary.append({"task": name, **{f"best {k}": f"{r['detector']} @ {r['site']}: {r['auroc']:.3f}"
                                         for k, r in top.items()}, **task.info})
        record[name] = {"info": task.info, "rows": rows}
        section = report.section(f"Task {name}")
        section.text(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in task.info.items()))
        for kind, r in top.items():
            section.figure(histogram(result["scores"][(r["detector"], r["features"], r["site"])], result["labels"],
                                     f"best on {kind}: {r['detector']} @ {r['site']} (AUROC {r['auroc']:.3f})"))
        section.table(rows)
    report.section("Summary: best detector per kind of features (AUROC)").table(summary)
    report.sections.insert(0, report.sections.pop())  # the summary first
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "detect.json", {"tasks": record, "summary": summary})
    return DetectRun(report.write(out / "detect.html"), out / "detect.json", summary)
