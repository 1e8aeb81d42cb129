"""Figures for LLC results: loss traces, the n*beta ladder, the trajectory over training."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from unweave.slt.auto import AutoLLC
from unweave.slt.llc import LLCResult


def traces(result: LLCResult, title: str = "SGLD loss traces") -> go.Figure:
    fig = go.Figure()
    for c, trace in enumerate(result.loss_trace):
        fig.add_scatter(
            y=trace, name=f"chain {c}" + (" (diverged)" if c in result.diverged_chains else ""), mode="lines"
        )
    fig.add_hline(y=result.init_loss, line_dash="dot", annotation_text="L(w*)")
    if result.burn_in_judged:
        fig.add_vline(x=result.burn_in_judged, line_dash="dash", annotation_text="burn-in ends (judged)")
    fig.update_layout(title=title, xaxis_title="draw", yaxis_title="batch loss", height=380)
    return fig


def ladder(auto: AutoLLC) -> go.Figure:
    """The estimate at every setting the rule tried, against n*beta: healthy ones filled, the
    spread over the agreeing settings and the band (`AutoLLC.band`) shaded."""
    fig = go.Figure()
    for healthy in (True, False):
        rungs = [r for r in auto.rungs if r.healthy == healthy and r.result is not None]
        if rungs:
            fig.add_scatter(
                x=[r.nbeta for r in rungs],
                y=[r.result.llc_mean for r in rungs],
                error_y={"type": "data", "array": [r.result.llc_std_err for r in rungs]},
                mode="markers",
                marker={"size": 10, "symbol": "circle" if healthy else "x"},
                name="healthy" if healthy else "not healthy",
                text=[f"epsilon {r.epsilon:.3g}, gamma {r.localization:.3g}, {r.draws} steps" for r in rungs],
            )
    if auto.healthy:
        fig.add_hrect(y0=auto.band[0], y1=auto.band[1], opacity=0.08, line_width=0, annotation_text="band")
        fig.add_hrect(y0=auto.spread[0], y1=auto.spread[1], opacity=0.15, line_width=0, annotation_text="spread")
    fig.update_xaxes(type="log", title_text="n*beta")
    fig.update_layout(title="The n*beta ladder: the estimate at each setting", yaxis_title="LLC", height=380)
    return fig


def trajectory(points: list[tuple[int, LLCResult, str]], history: list[dict] | None = None) -> go.Figure:
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    steps = [s for s, _, _ in points]
    fig.add_scatter(
        x=steps,
        y=[r.llc_mean for _, r, _ in points],
        name="LLC",
        error_y={"type": "data", "array": [r.llc_std_err for _, r, _ in points]},
        marker={"symbol": ["circle" if not why else "x" for _, _, why in points], "size": 9},
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


def per_unit(rows: list[dict], per: str) -> go.Figure:
    """The LLC of each unit (layer or head) with its standard error; induction heads and
    unhealthy units marked."""
    colours = ["#d62728" if r.get("induction head") else "#1f77b4" for r in rows]
    fig = go.Figure()
    fig.add_bar(
        x=[r["unit"] for r in rows],
        y=[r["LLC"] for r in rows],
        error_y={"type": "data", "array": [r["std. err."] for r in rows]},
        marker={"color": colours, "pattern": {"shape": ["" if r["healthy"] else "x" for r in rows]}},
        text=[("induction head" if r.get("induction head") else "") for r in rows],
        name="LLC",
    )
    fig.update_layout(
        title=f"LLC per {per}" + (" (red: induction heads; hatched: not healthy)" if per == "head" else ""),
        xaxis_title=per,
        yaxis_title="local learning coefficient",
        height=420,
    )
    return fig
