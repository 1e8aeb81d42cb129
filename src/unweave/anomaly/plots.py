"""Figures for the detection report."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from unweave.report import overlaid_histograms


def histogram(scores: np.ndarray, labels: np.ndarray, title: str) -> go.Figure:
    """Scores of normal and anomalous test inputs, overlaid."""
    groups = {"normal": scores[labels == 0], "anomalous": scores[labels == 1]}
    return overlaid_histograms(groups, title, "score (higher = more anomalous)", "fraction", nbins=40, height=330)
