"""Figures for the scrubbing report."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from unweave.hypotheses.score import KL_CHANGED, ScrubResult


def kl_histogram(results: list[ScrubResult], title: str) -> go.Figure:
    """Per-example KL(model || scrubbed) of each hypothesis, on a log axis."""
    fig = go.Figure()
    floor = 1e-6  # log axis: exact zeros drawn at the floor
    for r in results:
        fig.add_histogram(x=np.log10(np.maximum(r.kl, floor)), name=r.hypothesis, opacity=0.6,
                          histnorm="probability", nbinsx=50)
    fig.add_vline(x=np.log10(KL_CHANGED), line_dash="dash", annotation_text=f"{KL_CHANGED} nats")
    fig.update_layout(barmode="overlay", title=title, xaxis_title="log10 KL(model || scrubbed), nats, per example",
                      yaxis_title="fraction of examples", height=380)
    return fig
