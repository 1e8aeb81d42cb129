"""Figures of the fingerprint report: a distance matrix and a 2-D embedding of the runs."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

SYMBOLS = ("circle", "diamond", "square", "x", "triangle-up", "star")


def distance_matrix(dist: np.ndarray, names: list[str], title: str) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=dist, x=names, y=names, colorscale="Viridis", colorbar={"title": "distance"}))
    fig.update_layout(title=title, height=420 + 12 * len(names), yaxis={"autorange": "reversed"})
    return fig


def runs_map(points: np.ndarray, names: list[str], labels: list[int], known: list[str], title: str) -> go.Figure:
    """Runs as points whose distances approximate the fingerprint distances, coloured by
    cluster, shaped by the known grouping (to check, not to find, the clusters)."""
    fig = go.Figure()
    kinds = sorted(set(known))
    for cluster in sorted(set(labels)):
        for kind in kinds:
            idx = [i for i, (c, k) in enumerate(zip(labels, known)) if c == cluster and k == kind]
            if not idx:
                continue
            fig.add_scatter(
                x=points[idx, 0],
                y=points[idx, 1],
                mode="markers+text",
                text=[names[i] for i in idx],
                textposition="top center",
                name=f"cluster {cluster}, {kind}",
                marker={
                    "size": 13,
                    "color": qualitative.Plotly[cluster % len(qualitative.Plotly)],
                    "symbol": SYMBOLS[kinds.index(kind) % len(SYMBOLS)],
                },
            )
    fig.update_layout(title=title, xaxis={"title": "MDS 1"}, yaxis={"title": "MDS 2", "scaleanchor": "x"}, height=520)
    return fig


def diagnostics_scatter(rows: list[dict], x: str, y: str, labels: list[int]) -> go.Figure:
    fig = go.Figure()
    for cluster in sorted(set(labels)):
        sel = [r for r, c in zip(rows, labels) if c == cluster]
        fig.add_scatter(
            x=[r[x] for r in sel],
            y=[r[y] for r in sel],
            mode="markers",
            name=f"cluster {cluster}",
            text=[f"{r['run']} ({r['attention']} attention)" for r in sel],
            marker={"size": 11, "color": qualitative.Plotly[cluster % len(qualitative.Plotly)]},
        )
    fig.update_layout(
        title=f"{y.replace('_', ' ')} against {x.replace('_', ' ')}",
        xaxis={"title": x.replace("_", " ")},
        yaxis={"title": y.replace("_", " ")},
        height=460,
    )
    return fig
