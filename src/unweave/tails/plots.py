"""Figures for `unweave tails`: pooled densities on a log axis, per-unit kurtosis."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from unweave.tails.metrics import BasisTails


def log_density(found: list[BasisTails], site: str) -> go.Figure:
    """Each basis's pooled density of z-scores on a log probability axis, with the standard
    normal density: a Gaussian is a parabola, heavy tails are straighter and wider."""
    fig = go.Figure()
    for t in found:
        centres = (t.hist_edges[:-1] + t.hist_edges[1:]) / 2
        keep = t.hist_density > 0
        fig.add_scatter(x=centres[keep], y=t.hist_density[keep], mode="lines+markers", name=t.basis, marker={"size": 3})
    span = max(float(t.hist_edges[-1]) for t in found)
    z = np.linspace(-span, span, 241)
    normal = np.exp(-(z**2) / 2) / np.sqrt(2 * np.pi)
    keep = normal > 1e-12
    fig.add_scatter(x=z[keep], y=normal[keep], mode="lines", name="standard normal", line={"dash": "dash"})
    fig.update_layout(
        title=f"{site}: activations in standard deviations of their unit, pooled over units",
        xaxis_title="z (standard deviations)",
        yaxis={"title": "probability density", "type": "log"},
        height=420,
    )
    return fig


def kurtosis_histogram(found: list[BasisTails], site: str) -> go.Figure:
    fig = go.Figure()
    for t in found:
        fig.add_histogram(x=np.log10(np.maximum(t.kurtosis, 1e-3)), name=t.basis, opacity=0.6, nbinsx=60)
    fig.add_vline(x=np.log10(3), line_dash="dash", annotation_text="Gaussian")
    fig.update_layout(
        title=f"{site}: each unit's kurtosis (log10 of E[z^4]; Gaussian 3)",
        xaxis_title="log10 kurtosis",
        yaxis={"title": "units", "type": "log"},
        barmode="overlay",
        height=380,
    )
    return fig
