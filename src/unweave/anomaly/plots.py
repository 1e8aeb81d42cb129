"""Figures for the detection report."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go


def histogram(scores: np.ndarray, labels: np.ndarray, title: str) -> go.Figure:
    """Scores of normal and anomalous test inputs, overlaid."""
    fig = go.Figure()
    for value, name in ((0, "normal"), (1, "anomalous")):
        fig.add_histogram(x=scores[labels == value], name=name, opacity=0.6, histnorm="probability", nbinsx=40)
    fig.update_layout(barmode="overlay", title=title, xaxis_title="score (higher = more anomalous)",
                      yaxis_title="fraction", height=330)
    return fig
