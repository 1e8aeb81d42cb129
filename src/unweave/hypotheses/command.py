"""`unweave scrub`: score hypotheses (a built-in case or a Python file); writes the run
folder (record.json, scrub.json, scrub.html with the per-example KL histogram)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unweave.configs import setting
from unweave.devices import DeviceConfig
from unweave.hypotheses.cases import Case
from unweave.hypotheses.plots import kl_histogram
from unweave.hypotheses.score import KL_CHANGED, interchange, scrub_all
from unweave.hypotheses.targets import CASES, resolve
from unweave.report import Report
from unweave.runs import Run, RunResult
from unweave.text import TextConfig, input_files

# Mean-based scores that look good while this many examples moved: errors may be cancelling.
CANCELLATION_FLAG = 0.2


@dataclass(frozen=True)
class ScrubConfig:
    target: str = setting(
        help=f"A built-in case ({', '.join(CASES)}) or a Python file defining `model`, `inputs` "
        "and `hypotheses` (optional `labels`), or `case`.",
        argument=True,
    )
    out: Path = setting(Path("runs/scrub"), "Where record.json, scrub.json and scrub.html go.")
    examples: int = setting(512, "Reference inputs scrubbed.")
    pairs: int = setting(512, "(base, source) pairs for interchange intervention accuracy.")
    unclaimed: str | None = setting(None, "Override what unclaimed parts become: resample, mean or zero.")
    batch_size: int = setting(128, "Inputs per forward pass.")
    modadd_run: Path = setting(Path("runs/demo/modadd"), "Run directory for the modadd case.")
    seed: int = setting(0, "Seed for resampling (and for training the induction case).")
    repeat: str = setting(
        "random",
        "Language-model cases (smollm2-induction, induction-heads:PATH): repeat 'random' tokens or spans "
        "of the 'text' (--text).",
    )
    text: TextConfig = setting(TextConfig(), "With --repeat text: the text whose spans are repeated.")

    def __post_init__(self) -> None:
        if self.repeat not in ("random", "text"):
            raise ValueError(f"--repeat must be 'random' or 'text', got {self.repeat!r}")
        if self.repeat == "text" and not (
            self.target == "smollm2-induction" or self.target.startswith("induction-heads:")
        ):
            raise ValueError(
                f"--repeat text applies to the language-model cases (smollm2-induction, induction-heads:PATH), "
                f"not to {self.target!r}"
            )

    device: DeviceConfig = setting(DeviceConfig(), "Where the case's model runs, and the dtype of its weights.")


def on_device(case: Case, device: DeviceConfig) -> Case:
    """The case with its model on the chosen device, in the chosen dtype (inputs and labels stay
    on the CPU, where the hypotheses' functions read them; the engine moves each batch)."""
    return dataclasses.replace(case, model=case.model.to(device.torch_device, device.torch_dtype))


def run_scrub(cfg: ScrubConfig) -> RunResult:
    case = on_device(
        resolve(cfg.target, cfg.modadd_run, cfg.seed, cfg.text if cfg.repeat == "text" else None), cfg.device
    )
    model_folder = cfg.target.partition(":")[2] if cfg.target.startswith("induction-heads:") else None
    inputs = [cfg.target, cfg.modadd_run if cfg.target == "modadd" else None, model_folder]
    if cfg.repeat == "text":
        inputs += input_files(cfg.text)
    run = Run(cfg.out, "scrub", cfg, inputs=inputs)
    hyps = list(case.hypotheses.values())
    if cfg.unclaimed is not None:
        hyps = [dataclasses.replace(h, unclaimed=cfg.unclaimed) for h in hyps]
    results = scrub_all(
        case.model, case.inputs, hyps, case.labels, cfg.examples, cfg.batch_size, cfg.seed, case.forward_kwargs
    )
    rows, lines = [], []
    record = {"case": case.name, "info": case.info, "examples": len(results[0].kl), "hypotheses": []}
    for h, r in zip(hyps, results):
        row = {
            "hypothesis": h.name,
            "loss recovered": r.recovered,
            "mean KL": float(r.kl.mean()),
            "median KL": float(np.median(r.kl)),
            "p90 KL": float(np.quantile(r.kl, 0.9)),
            f"changed (KL>{KL_CHANGED})": r.changed,
        }
        entry = r.to_dict()
        if h.predict is not None:
            iia = interchange(
                case.model,
                case.inputs,
                h,
                n_pairs=cfg.pairs,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                forward_kwargs=case.forward_kwargs,
            )
            row["IIA"] = iia.iia
            entry["interchange"] = iia.to_dict()
        rows.append(row)
        record["hypotheses"].append(entry)
        iia_text = f", IIA {row['IIA']:.3f}" if "IIA" in row else ""
        lines.append(f"{h.name}: loss recovered {r.recovered:.3f}, median KL {row['median KL']:.3g}{iia_text}")

    report = Report(f"unweave scrub: {case.name}")
    headline = report.summary(f"Hypotheses on {case.name}")
    headline.text(
        f"Causal scrubbing on {len(results[0].kl)} reference inputs; unclaimed parts: "
        f"{', '.join(sorted({h.unclaimed for h in hyps}))}. Loss recovered is 1 for the model and 0 for "
        "the model on random inputs; KL is per example, so errors that cancel on average still show.",
        summary=True,
    )
    flagged = [r for r in rows if r["loss recovered"] >= 0.9 and r[f"changed (KL>{KL_CHANGED})"] >= CANCELLATION_FLAG]
    for r in flagged:
        headline.text(
            f"'{r['hypothesis']}' recovers {r['loss recovered']:.1%} of the loss on average, yet "
            f"{r[f'changed (KL>{KL_CHANGED})']:.0%} of examples moved by more than {KL_CHANGED} nats: "
            "the average hides errors that cancel."
        )
    headline.table(rows)
    section = report.section("Per-example KL divergence")
    section.figure(kl_histogram(results, "Per-example KL divergence"))
    info = {k: v for k, v in case.info.items() if k != "scores"}
    if info:
        section.text("; ".join(f"{k}: {v}" for k, v in info.items()))
    for text in {w for r in results for w in r.warnings}:
        section.text(f"warning: {text}")
    return run.finish(record, report, lines)
