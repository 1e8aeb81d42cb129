"""Figures for the scrubbing report."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from unweave.hypotheses.score import KL_CHANGED, ScrubResult
from unweave.report import overlaid_histograms


def kl_histogram(results: list[ScrubResult], title: str) -> go.Figure:
    """Per-example KL(model || scrubbed) of each hypothesis, on a log axis."""
    floor = 1e-6  # log axis: exact zeros drawn at the floor
    groups = {r.hypothesis: np.log10(np.maximum(r.kl, floor)) for r in results}
    fig = overlaid_histograms(
        groups, title, "log10 KL(model || scrubbed), nats, per example", "fraction of examples", nbins=50, height=380
    )
    fig.add_vline(x=np.log10(KL_CHANGED), line_dash="dash", annotation_text=f"{KL_CHANGED} nats")
    return fig
