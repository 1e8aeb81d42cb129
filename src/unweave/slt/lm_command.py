"""`unweave llc --model MODEL`: the LLC of a causal language model's parts (one block of
parameters, each decoder layer, or each attention head) on next-token loss over the user's
text; writes llc.json and llc.html, with the induction heads `unweave scrub` finds marked."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from unweave import distributed, progress
from unweave.devices import loader_on
from unweave.report import Report
from unweave.runs import Run, RunResult
from unweave.slt import plots
from unweave.slt.auto import AutoLLC, Estimate, auto_llc, judge, rule_text
from unweave.slt.language import Unit, induction_heads, next_token_loss, text_data, units
from unweave.slt.llc import LLCResult
from unweave.slt.saved import SavedRuns
from unweave.text import describe, input_files

if TYPE_CHECKING:
    from unweave.slt.command import LLCConfig

DEFAULT_BATCH_ROWS = 8


def run_model_llc(cfg: LLCConfig) -> RunResult:
    from unweave.hf import load_model

    device = distributed.start(cfg.device.torch_device)
    run = Run(cfg.out, "llc", cfg, inputs=[cfg.model, *input_files(cfg.text)])
    model, tokenizer = load_model(cfg.model, device=device, dtype=cfg.device.torch_dtype)
    model.config.use_cache = False  # no key-value cache: every call is one whole forward pass
    data = text_data(cfg.text, tokenizer, cfg.tokens, cfg.ctx_len, cfg.batch_size or DEFAULT_BATCH_ROWS, cfg.sgld.seed)
    loader = loader_on(data.loader, device)
    parts = units(model, cfg.per, cfg.params)
    induction, scores, why_no_induction = induction_heads(model, tokenizer) if cfg.per == "head" else ([], None, "")
    saved = SavedRuns.of(run)  # an interrupted run, started again, replays the SGLD runs it finished
    measured = [
        (unit, _measure(cfg, unit, loader, data.n, saved.scope(f"unit-{unit.name}").estimate))
        for unit in progress.track(parts, "LLC per unit")
    ]

    report = Report(f"unweave llc: {cfg.model}, per {cfg.per}")
    nbeta = cfg.sgld.resolved_nbeta(data.n)
    rows = [_row(unit, outcome, induction, scores) for unit, outcome in measured]
    healthy = [r for r in rows if r["healthy"]]
    values = ", ".join(f"{r['unit']} {r['LLC']:.4g}" for r in healthy[:12]) + (" ..." if len(healthy) > 12 else "")
    summary = f"{len(healthy)} of {len(rows)} units healthy on {data.n} predicted tokens of {describe(cfg.text)}"
    summary += f"; LLC {values}" if healthy else ""
    report.summary().text(summary, summary=True)
    if induction:
        report.summary().text(_induction_line(rows), summary=True)
    section = report.section(f"LLC per {cfg.per if cfg.per != 'none' else 'block'}")
    section.text(
        f"Next-token loss of {cfg.model} on {describe(cfg.text)}: {data.rows} rows of {data.ctx_len} tokens, "
        f"n = {data.n} predicted tokens, SGLD batches of {loader.batch_size} rows. Each unit's LLC samples only its "
        "own weights (a head: its query rows, the key and value rows of its key-value group, and its output "
        "columns), every other weight held at w*. "
        + (
            f"Settings: {cfg.settings} (n*beta {nbeta:.4g}, epsilon {cfg.sgld.epsilon:g}, localization "
            f"{cfg.sgld.localization:g}, {cfg.sgld.burn_in} + {cfg.sgld.draws} steps, {cfg.sgld.chains} chains)."
            if cfg.settings == "fixed"
            else "Settings: chosen per unit by the rule (below)."
        )
    )
    section.table(rows)
    section.figure(plots.per_unit(rows, cfg.per))
    if cfg.per == "head":
        section.text(
            why_no_induction
            or "Marked: the induction heads `unweave scrub` finds on this model (the top-scoring heads on repeated "
            "random tokens; score = attention to the token after the current token's earlier occurrence)."
        )
    if cfg.settings == "auto":
        rule_section = report.section("How the settings were chosen")
        rule_section.text(rule_text(cfg.rule))
        rule_section.table([{"unit": unit.name, **rung.row()} for unit, (auto, _) in measured for rung in auto.rungs])
    for unit, (_, result) in measured[:8]:
        if result is not None:
            report.section(f"{unit.name}: SGLD traces").figure(plots.traces(result, f"{unit.name}: SGLD loss traces"))
    record = {
        "model": cfg.model,
        "per": cfg.per,
        "text": describe(cfg.text),
        "n": data.n,
        "rows": data.rows,
        "ctx_len": data.ctx_len,
        "units": rows,
        "healthy": bool(rows) and len(healthy) == len(rows),
        "induction_heads": [f"L{layer}H{head}" for layer, head in induction],
        "induction_note": why_no_induction,
        "results": {unit.name: result.to_dict() if result else None for unit, (_, result) in measured},
        "replayed_runs": saved.found,
    }
    if cfg.settings == "auto":
        record["auto"] = {unit.name: auto.to_dict() for unit, (auto, _) in measured}
    return run.finish(record, report, [summary])


def _measure(
    cfg: LLCConfig, unit: Unit, loader: DataLoader, n: int, estimate: Estimate
) -> tuple[AutoLLC | str, LLCResult | None]:
    """(how it was judged, the result): the rule's AutoLLC, or for fixed settings the reason the
    run is not healthy ("" when it is). `estimate` makes each SGLD run (`estimate_llc` or a replay)."""
    if cfg.settings == "auto":
        auto = auto_llc(
            unit.model, next_token_loss, loader, cfg.rule, unit.params, cfg.sgld.nbeta, cfg.sgld, n=n, estimate=estimate
        )
        return auto, auto.result if auto.healthy else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # judged below
        raw = estimate(unit.model, next_token_loss, loader, cfg.sgld, params=unit.params, n=n)
    result, why = judge(raw, cfg.rule)
    return why, result


def _row(
    unit: Unit,
    outcome: tuple[AutoLLC | str, LLCResult | None],
    induction: list[tuple[int, int]],
    scores: torch.Tensor | None,
) -> dict:
    judged, result = outcome
    if isinstance(judged, AutoLLC):
        why = "" if judged.healthy else judged.message
    else:
        why = judged
    row = {
        "unit": unit.name,
        "layer": unit.layer,
        "head": unit.head,
        "parameters": unit.n_params,
        "LLC": result.llc_mean if result else math.nan,
        "std. err.": result.llc_std_err if result else math.nan,
        "R-hat": result.rhat if result else math.nan,
        "n*beta": result.nbeta if result else math.nan,
        "healthy": result is not None and not why,
        "why not": why,
    }
    if isinstance(judged, AutoLLC):
        row["spread"] = list(judged.spread)
        row["band"] = list(judged.band)
    if unit.head is not None:
        row["induction score"] = float(scores[unit.layer, unit.head]) if scores is not None else math.nan
        row["induction head"] = (unit.layer, unit.head) in induction
    return row


def _induction_line(rows: list[dict]) -> str:
    def mean(rs: list[dict]) -> float:
        values = [r["LLC"] for r in rs if r["healthy"]]
        return sum(values) / len(values) if values else math.nan

    marked = [r for r in rows if r.get("induction head")]
    others = [r for r in rows if not r.get("induction head")]
    return (
        f"Induction heads measured: {', '.join(r['unit'] for r in marked) or 'none in these layers'}; mean LLC "
        f"{mean(marked):.4g} against {mean(others):.4g} for the other heads measured (healthy units only)."
    )
