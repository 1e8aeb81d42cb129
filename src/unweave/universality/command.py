"""`unweave universality TARGET`: which units of one run recur in another, by activation
correlation (max, mean-max, one-to-one) and CKA, against a permuted-input baseline, scored
afterwards against the target's known answer; writes record.json, universality.json and
universality.html."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from sklearn.metrics import roc_auc_score

from unweave.configs import setting
from unweave.devices import DeviceConfig
from unweave.report import Report
from unweave.runs import Run, RunResult
from unweave.text import TextConfig
from unweave.universality.cases import NAMED, Layer, resolve
from unweave.universality.dictionaries import dictionary_pair, is_dictionary
from unweave.universality.match import BASELINE_QUANTILE, Matching, match

RECUR = 0.9  # the level the field reports ("a partner above 0.9")
PARTNER_RIGHT = 0.9  # the known answer holds when this share of units with a partner find one ...
SEPARATES = 0.9  # ... and their best correlations rank above those of units without one (AUROC)


@dataclass(frozen=True)
class UniversalityConfig:
    target: list[str] = setting(
        help=f"{' or '.join(NAMED)} (trains two seeds), two modular-addition run folders, or two dictionary "
        "folders of one site (read on --text).",
        argument=True,
    )
    out: Path = setting(Path("runs/universality"), "Where record.json, universality.json and universality.html go.")
    seeds: list[int] = setting([0, 1], "The two seeds of a named target (give --seeds twice).")
    examples: int = setting(4096, "Inputs both runs are read on (induction: at most 512 sequences).")
    text: TextConfig = setting(TextConfig(), "Text two dictionaries are read on.")
    tokens: int = setting(32_768, "Tokens of text two dictionaries are read on.")
    device: DeviceConfig = setting(DeviceConfig(), "Where the model of two dictionaries runs.")

    def __post_init__(self) -> None:
        if len(self.seeds) != 2 or self.seeds[0] == self.seeds[1]:
            raise ValueError(f"--seeds takes two different seeds, got {self.seeds}")
        if self.examples < 64:
            raise ValueError(f"--examples must be at least 64, got {self.examples}")
        if self.tokens < 64:
            raise ValueError(f"--tokens must be at least 64, got {self.tokens}")


def score(layer: Layer, m: Matching) -> dict:
    """The matching against the known answer: do units with a partner find one of them, and do
    they correlate better with the other run than units known to have none (AUROC)? When no
    unit has a partner, none may have one above RECUR."""
    out = {
        "units": len(m.best),
        "mean_max_correlation": m.mean_max,
        "share_above_0.9": m.share_above(RECUR),
        "baseline": m.baseline,
        "above_baseline": len(m.recurring()),
        "cka": m.cka,
    }
    if layer.partners is None:
        return out
    known = sorted(layer.partners)
    others = layer.unmatched or []
    right = [i for i in known if m.partner[i] in layer.partners[i]]
    # by chance, a unit's best partner is one of its own partners this often
    chance = float(np.mean([len(layer.partners[i]) / len(layer.names_b) for i in known])) if known else None
    separation = (
        float(roc_auc_score([1] * len(known) + [0] * len(others), [m.best[i] for i in known + others]))
        if known and others
        else None
    )
    if known:
        recovered = len(right) >= PARTNER_RIGHT * len(known) and (separation is None or separation >= SEPARATES)
    else:  # nothing should recur
        recovered = all(m.best[i] <= RECUR for i in others)
    out.update(
        with_partner=len(known),
        partner_right=len(right),
        partner_right_share=len(right) / len(known) if known else None,
        partner_right_by_chance=chance,
        without_partner=len(others),
        auroc_with_against_without=separation,
        recovered=recovered,
    )
    return out


def _heatmap(layer: Layer, m: Matching) -> go.Figure:
    corr = m.corr.numpy()
    order_a = np.argsort(-np.asarray(m.best))[:64]  # the 64 best-matched units of A, when there are more
    order_b = list(dict.fromkeys(m.partner[i] for i in order_a))
    order_b += [j for j in range(corr.shape[1]) if j not in order_b][: max(0, 64 - len(order_b))]
    fig = go.Figure(
        go.Heatmap(
            z=corr[np.ix_(order_a, order_b)],
            x=[layer.names_b[j] for j in order_b],
            y=[layer.names_a[i] for i in order_a],
            zmin=-1,
            zmax=1,
            colorscale="RdBu",
            colorbar={"title": "correlation"},
        )
    )
    fig.update_layout(
        title=f"{layer.name}: correlations, best-matched units first", height=520, yaxis={"autorange": "reversed"}
    )
    return fig


def _histogram(layer: Layer, m: Matching) -> go.Figure:
    fig = go.Figure(go.Histogram(x=m.best, nbinsx=40, name="max correlation"))
    fig.add_vline(x=m.baseline, line_dash="dash", annotation_text=f"baseline ({BASELINE_QUANTILE:.0%} of permuted)")
    fig.add_vline(x=RECUR, line_dash="dot", annotation_text=str(RECUR))
    fig.update_layout(
        title=f"{layer.name}: each unit's best correlation in the other run",
        xaxis={"title": "max correlation"},
        height=380,
    )
    return fig


def run_universality(cfg: UniversalityConfig) -> RunResult:
    run = Run(cfg.out, "universality", cfg, inputs=[t for t in cfg.target if t not in NAMED])
    if len(cfg.target) == 2 and all(is_dictionary(t) for t in cfg.target):
        pair = dictionary_pair(
            Path(cfg.target[0]),
            Path(cfg.target[1]),
            cfg.text,
            cfg.tokens,
            cfg.device.torch_device,
            cfg.device.torch_dtype,
        )
    else:
        pair = resolve(list(cfg.target), (cfg.seeds[0], cfg.seeds[1]), cfg.examples)
    report = Report(f"unweave universality: {pair.name}, {pair.runs[0]} against {pair.runs[1]}")
    summary = report.summary()
    layers, lines = [], []
    for layer in pair.layers:
        m = match(layer.a, layer.b, layer.rows_per_input)
        scored = score(layer, m)
        layers.append(
            {
                "layer": layer.name,
                **scored,
                "units_a": [
                    {"unit": layer.names_a[i], "partner": layer.names_b[m.partner[i]], "correlation": m.best[i]}
                    for i in range(len(m.best))
                ],
                "one_to_one": [[layer.names_a[i], layer.names_b[j], c] for i, j, c in m.one_to_one],
            }
        )
        verdict = (
            ""
            if "recovered" not in scored
            else f"; known answer {'recovered' if scored['recovered'] else 'NOT recovered'}"
        )
        lines.append(
            f"{pair.name} {layer.name}: {m.share_above(RECUR):.0%} of {scored['units']} units have a partner above "
            f"{RECUR}, {scored['above_baseline']} above the baseline {m.baseline:.2f}; mean-max correlation "
            f"{m.mean_max:.3f}, CKA {m.cka:.3f}{verdict}"
        )
        section = report.section(layer.name)
        section.table([scored])
        section.table(
            [{"unit": layer.names_a[i], "partner": layer.names_b[j], "correlation": c} for i, j, c in m.one_to_one][
                :64
            ],
            sortable=True,
        )
        section.figure(_heatmap(layer, m)).figure(_histogram(layer, m))
    for line in lines:
        summary.text(line, summary=True)
    for note in pair.notes:
        summary.text(note)
    results = {"target": pair.name, "runs": list(pair.runs), "layers": layers, "notes": pair.notes}
    return run.finish(results, report, lines)
