"""Figures for the dictionary reports."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go


def density_histogram(density: list[float], title: str) -> go.Figure:
    logd = np.log10(np.clip(np.asarray(density), 1e-7, None))
    fig = go.Figure(go.Histogram(x=logd, nbinsx=40))
    fig.update_layout(
        title=title, xaxis_title="log10 firing density (dead latents at -7)", yaxis_title="latents", height=330
    )
    return fig


def loss_curves(losses: dict[str, list[float]], title: str = "Training loss") -> go.Figure:
    """One curve per dictionary (normalised-input units), on a log axis."""
    fig = go.Figure()
    for name, values in losses.items():
        fig.add_scatter(x=list(range(1, len(values) + 1)), y=values, name=name)
    fig.update_layout(
        title=title, xaxis_title="step", yaxis_title="loss (normalised inputs)", yaxis_type="log", height=380
    )
    return fig
