"""Figures of the description-length report."""

from __future__ import annotations

import plotly.graph_objects as go


def _label(row: dict) -> str:
    return f"{row['basis']} w={row['width']}"


def mdl_curve(rows: list[dict], weight_bits: float | None, title: str) -> go.Figure:
    """Total bits against width, one trace per basis; the network's quantised weights as a line."""
    fig = go.Figure()
    for basis in dict.fromkeys(r["basis"] for r in rows):
        shortest: dict[int, dict] = {}  # per width the shortest (several dictionaries may share a width)
        for r in rows:
            if r["basis"] == basis and r["total_bits"] is not None:
                if r["width"] not in shortest or r["total_bits"] < shortest[r["width"]]["total_bits"]:
                    shortest[r["width"]] = r
        kept = [shortest[w] for w in sorted(shortest)]
        if kept:
            fig.add_scatter(
                x=[r["width"] for r in kept],
                y=[r["total_bits"] for r in kept],
                name=basis,
                mode="lines+markers" if len(kept) > 1 else "markers",
                marker={"size": 9},
            )
    if weight_bits is not None:
        fig.add_hline(y=weight_bits, line_dash="dash", annotation_text="the network's weights, quantised")
    fig.update_layout(
        title=title,
        xaxis_title="width (units of the basis)",
        yaxis_title="total bits",
        xaxis_type="log",
        yaxis_type="log",
        height=460,
    )
    return fig


def split_bars(rows: list[dict], title: str) -> go.Figure:
    """Parameter, index and value bits of every description within the tolerance, stacked."""
    kept = [r for r in rows if r["total_bits"] is not None]
    fig = go.Figure()
    for part, name in (
        ("param_bits", "parameters"),
        ("index_bits", "which units are active"),
        ("value_bits", "values"),
    ):
        fig.add_bar(x=[_label(r) for r in kept], y=[r[part] for r in kept], name=name)
    fig.update_layout(barmode="stack", title=title, yaxis_title="bits", yaxis_type="log", height=460)
    return fig
