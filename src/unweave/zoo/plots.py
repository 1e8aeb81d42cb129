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
