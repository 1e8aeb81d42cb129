"""Figures for LLC results: loss traces, the calibration grid, the trajectory over training."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from unweave.slt.calibrate import Calibration
from unweave.slt.llc import LLCResult


def traces(result: LLCResult, title: str = "SGLD loss traces") -> go.Figure:
    fig = go.Figure()
    for c, trace in enumerate(result.loss_trace):
        fig.add_scatter(
            y=trace, name=f"chain {c}" + (" (diverged)" if c in result.diverged_chains else ""), mode="lines"
        )
    fig.add_hline(y=result.init_loss, line_dash="dot", annotation_text="L(w*)")
    fig.update_layout(title=title, xaxis_title="draw", yaxis_title="batch loss", height=380)
    return fig


def calibration(cal: Calibration) -> go.Figure:
    eps = sorted({r["epsilon"] for r in cal.grid})
    nbs = sorted({r["nbeta"] for r in cal.grid})
    cell = {(r["epsilon"], r["nbeta"]): r for r in cal.grid}
    z = [[cell[(e, b)]["llc_mean"] for e in eps] for b in nbs]
    text = [
        [
            ("ok " if cell[(e, b)]["healthy"] else "x ") + f"{cell[(e, b)]['llc_mean']:.3g}"
            f"<br>acc {cell[(e, b)]['mala_acceptance']:.2f}"
            for e in eps
        ]
        for b in nbs
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[f"{e:g}" for e in eps],
            y=[f"{b:.4g}" for b in nbs],
            text=text,
            texttemplate="%{text}",
            colorscale="Viridis",
            colorbar_title="LLC",
        )
    )
    chosen = (
        f"chosen: epsilon {cal.chosen['epsilon']:g}, n*beta {cal.chosen['nbeta']:.4g}"
        if cal.chosen
        else "no healthy setting"
    )
    fig.update_layout(
        title=f"Calibration (x: unhealthy). {chosen}", xaxis_title="epsilon", yaxis_title="n*beta", height=420
    )
    return fig


def trajectory(points: list[tuple[int, LLCResult]], history: list[dict] | None = None) -> go.Figure:
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    steps = [s for s, _ in points]
    fig.add_scatter(
        x=steps,
        y=[r.llc_mean for _, r in points],
        name="LLC",
        error_y={"type": "data", "array": [r.llc_std_err for _, r in points]},
        secondary_y=False,
    )
    if history:
        for split in ("train", "test"):
            fig.add_scatter(
                x=[h["step"] for h in history],
                y=[max(h[f"{split}_loss"], 1e-12) for h in history],
                name=f"{split} loss",
                line={"dash": "dot"},
                secondary_y=True,
            )
        fig.update_yaxes(type="log", exponentformat="power", title_text="loss", secondary_y=True)
    fig.update_yaxes(title_text="local learning coefficient", secondary_y=False)
    fig.update_layout(title="LLC over training, beside train/test loss", xaxis_title="step", height=420)
    return fig
