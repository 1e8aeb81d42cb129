"""`unweave scrub`: score hypotheses (a built-in case or a Python file), write scrub.json and scrub.html."""

from __future__ import annotations

import dataclasses
import runpy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from unweave.artifacts import write_json
from unweave.hypotheses.cases import Case
from unweave.hypotheses.graph import Hypothesis, HypothesisError
from unweave.hypotheses.run import KL_CHANGED, interchange, scrub_all
from unweave.report import Report

CASES = ["cancellation", "modadd", "induction", "smollm2-induction"]
# Mean-based scores that look good while this many examples moved: errors may be cancelling.
CANCELLATION_FLAG = 0.2


def builtin_case(name: str, modadd_run: Path = Path("runs/demo/modadd"), seed: int = 0) -> Case:
    from unweave.hypotheses import cases

    if name == "cancellation":
        return cases.cancellation_case(seed)
    if name == "modadd":
        from unweave.zoo import fourier
        from unweave.zoo.modadd import TrainedModAdd, make_data

        run = TrainedModAdd(modadd_run)
        if not run.complete:
            raise FileNotFoundError(f"no finished modular-addition run in {modadd_run}; train one with "
                                    f"`unweave train modadd --out {modadd_run}` (or run `unweave demo`)")
        model, cfg = run.load(), run.config
        freqs = fourier.analyse(model, make_data(cfg), cfg.p).key_freqs
        return cases.modadd_case(model, cfg.p, freqs)
    if name == "induction":
        from unweave.zoo.induction import InductionConfig, train

        cfg = InductionConfig(seed=seed)
        return cases.induction_case(train(cfg), cfg.vocab, seed=seed)
    if name == "smollm2-induction":
        return cases.smollm2_induction_case(seed=seed)
    raise ValueError(f"unknown case {name!r}; built-in cases: {', '.join(CASES)}, or give a Python file")


def case_from_file(path: Path) -> Case:
    """A hypothesis file defines `case` (a Case), or `model`, `inputs` and `hypotheses`
    (a list or dict of Hypothesis, or a single `hypothesis`), with optional `labels` and
    `forward_kwargs`."""
    if not path.exists():
        raise FileNotFoundError(f"hypothesis file {path} does not exist")
    ns = runpy.run_path(str(path))
    if isinstance(ns.get("case"), Case):
        return ns["case"]
    missing = [k for k in ("model", "inputs") if k not in ns]
    hyps = ns.get("hypotheses", ns.get("hypothesis"))
    if missing or hyps is None:
        raise HypothesisError(f"{path} must define `case`, or `model`, `inputs` and `hypotheses` (or `hypothesis`); "
                              f"missing: {missing + ([] if hyps is not None else ['hypotheses'])}")
    if isinstance(hyps, Hypothesis):
        hyps = [hyps]
    if not isinstance(hyps, dict):
        hyps = {h.name: h for h in hyps}
    return Case(path.stem, ns["model"], ns["inputs"], ns.get("labels"), hyps,
                forward_kwargs=ns.get("forward_kwargs", {}))


def kl_histogram(results, title: str) -> go.Figure:
    fig = go.Figure()
    floor = 1e-6  # log axis: exact zeros drawn at the floor
    for r in results:
        fig.add_histogram(x=np.log10(np.maximum(r.kl, floor)), name=r.hypothesis, opacity=0.6,
                          histnorm="probability", nbinsx=50)
    fig.add_vline(x=np.log10(KL_CHANGED), line_dash="dash", annotation_text=f"{KL_CHANGED} nats")
    fig.update_layout(barmode="overlay", title=title, xaxis_title="log10 KL(model || scrubbed), nats, per example",
                      yaxis_title="fraction of examples", height=380)
    return fig


@dataclass
class ScrubRun:
    report: Path
    results: Path
    rows: list[dict]


def run_scrub(target: str, out: Path, n_examples: int = 512, n_pairs: int = 512, unclaimed: str | None = None,
              batch_size: int = 128, seed: int = 0, modadd_run: Path = Path("runs/demo/modadd")) -> ScrubRun:
    path = Path(target)
    case = case_from_file(path) if target.endswith(".py") or path.is_file() else builtin_case(target, modadd_run, seed)
    hyps = list(case.hypotheses.values())
    if unclaimed is not None:
        hyps = [dataclasses.replace(h, unclaimed=unclaimed) for h in hyps]
    results = scrub_all(case.model, case.inputs, hyps, case.labels, n_examples, batch_size, seed,
                        case.forward_kwargs)
    rows, record = [], {"case": case.name, "info": case.info, "hypotheses": []}
    for h, r in zip(hyps, results):
        row = {"hypothesis": h.name, "loss recovered": r.recovered, "mean KL": float(r.kl.mean()),
               "median KL": float(np.median(r.kl)), "p90 KL": float(np.quantile(r.kl, 0.9)),
               f"changed (KL>{KL_CHANGED})": r.changed}
        entry = r.to_dict()
        if h.predict is not None:
            iia = interchange(case.model, case.inputs, h, n_pairs=n_pairs, batch_size=batch_size, seed=seed,
                              forward_kwargs=case.forward_kwargs)
            row["IIA"] = iia.iia
            entry["interchange"] = iia.to_dict()
        rows.append(row)
        record["hypotheses"].append(entry)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "scrub.json", record)

    report = Report(f"unweave scrub: {case.name}")
    section = report.section(f"Hypotheses on {case.name}")
    section.text(f"Causal scrubbing on {len(results[0].kl)} reference inputs; unclaimed parts: "
                 f"{', '.join(sorted({h.unclaimed for h in hyps}))}. Loss recovered is 1 for the model and 0 for the "
                 "model on random inputs; KL is per example, so errors that cancel on average still show.",
                 summary=True)
    flagged = [r for r in rows if r["loss recovered"] >= 0.9 and r[f"changed (KL>{KL_CHANGED})"] >= CANCELLATION_FLAG]
    for r in flagged:
        section.text(f"'{r['hypothesis']}' recovers {r['loss recovered']:.1%} of the loss on average, yet "
                     f"{r[f'changed (KL>{KL_CHANGED})']:.0%} of examples moved by more than {KL_CHANGED} nats: "
                     "the average hides errors that cancel.")
    section.table(rows)
    section.figure(kl_histogram(results, "Per-example KL divergence"))
    info = {k: v for k, v in case.info.items() if k != "scores"}
    if info:
        section.text("; ".join(f"{k}: {v}" for k, v in info.items()))
    for text in {w for r in results for w in r.warnings}:
        section.text(f"warning: {text}")
    return ScrubRun(report.write(out / "scrub.html"), out / "scrub.json", rows)
