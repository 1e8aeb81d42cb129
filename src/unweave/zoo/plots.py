"""Figures for the toy models' reports (training curves, the Fourier view of modular addition)."""

from __future__ import annotations

import plotly.graph_objects as go

from unweave.zoo import fourier


def loss_curves(history: list[dict], title: str = "Training curves (full batch, AdamW, weight decay 1)") -> go.Figure:
    fig = go.Figure()
    steps = [h["step"] for h in history]
    for split in ("train", "test"):
        fig.add_scatter(x=steps, y=[max(h[f"{split}_loss"], 1e-12) for h in history], name=f"{split} loss")
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="cross-entropy loss", yaxis_type="log", height=400)
    return fig


def spectrum(analysis: fourier.FourierAnalysis) -> go.Figure:
    freqs = list(range(1, len(analysis.spectrum) + 1))
    colors = ["#d62728" if k in analysis.key_freqs else "#7f7f7f" for k in freqs]
    fig = go.Figure(go.Bar(x=freqs, y=analysis.spectrum, marker_color=colors, name="norm"))
    fig.update_layout(
        title=f"Fourier spectrum of the embedding (key frequencies in red: {analysis.key_freqs})",
        xaxis_title="frequency k (w = 2 pi k / p)",
        yaxis_title="norm of W_E along cos/sin k",
        height=400,
    )
    return fig


def progress_measures(rows: list[dict], history: list[dict]) -> go.Figure:
    fig = go.Figure()
    steps = [r["step"] for r in rows]
    fig.add_scatter(x=steps, y=[r["restricted_test_loss"] for r in rows], name="restricted loss (test)")
    fig.add_scatter(x=steps, y=[r["excluded_train_loss"] for r in rows], name="excluded loss (train)")
    fig.add_scatter(
        x=[h["step"] for h in history],
        y=[max(h["test_loss"], 1e-12) for h in history],
        name="test loss",
        line={"dash": "dot"},
    )
    fig.update_layout(
        title="Progress measures at each checkpoint (final key frequencies)",
        xaxis_title="step",
        yaxis_title="loss",
        yaxis_type="log",
        height=400,
    )
    return fig


def memorization_losses(sizes: list[int], train: list[float], test: list[float]) -> go.Figure:
    fig = go.Figure()
    fig.add_scatter(x=sizes, y=test, name="test loss", mode="lines+markers")
    fig.add_scatter(x=sizes, y=train, name="train loss", mode="lines+markers", line={"dash": "dot"})
    fig.add_hline(y=1.0, line_dash="dash", annotation_text="predicting nothing")
    fig.update_layout(
        title="Loss against the training-set size T (double descent: the test loss peaks in between)",
        xaxis={"title": "training-set size T", "type": "log"},
        yaxis_title="squared error per datapoint",
        height=420,
    )
    return fig


def memorization_dimensionality(sizes: list[int], features: list, datapoints: list, shown: int = 40) -> go.Figure:
    """Each feature's and each training datapoint's dimensionality at every T (the `shown`
    largest of each kind per T; the rest sit near 0)."""
    fig = go.Figure()
    for name, dims, color in (("features", features, "#1f77b4"), ("training datapoints", datapoints, "#d62728")):
        xs, ys = [], []
        for size, d in zip(sizes, dims):
            top = sorted(d, reverse=True)[:shown]
            xs += [size] * len(top)
            ys += top
        fig.add_scatter(x=xs, y=ys, mode="markers", name=name, marker={"color": color, "size": 5, "opacity": 0.6})
    fig.update_layout(
        title=f"Dimensionality of features and of training datapoints ({shown} largest of each per T)",
        xaxis={"title": "training-set size T", "type": "log"},
        yaxis_title="dimensionality (share of a dimension)",
        height=420,
    )
    return fig


def hidden_geometry(size: int, features: list[list[float]], datapoints: list[list[float]]) -> go.Figure:
    """Feature columns W_i and training hidden vectors W x_t in the first two principal
    directions of the hidden space, each drawn as a line from the origin."""
    fig = go.Figure()
    for name, points, color in (("features W_i", features, "#1f77b4"), ("datapoints W x_t", datapoints, "#d62728")):
        xs, ys = [], []
        for x, y in points:
            xs += [0, x, None]
            ys += [0, y, None]
        fig.add_scatter(x=xs, y=ys, mode="lines", name=name, line={"color": color, "width": 1.5})
    fig.update_layout(
        title=f"T = {size}: the hidden space (first two principal directions)",
        xaxis={"scaleanchor": "y"},
        height=420,
        width=460,
    )
    return fig
