"""Figures of the graph report: the effect graph coloured by module, the separability matrix,
and predicted against measured single-unit ablation effects."""

from __future__ import annotations

import networkx as nx
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

WIDTHS = (0.5, 1.5, 3.0)  # edge widths by weight tercile (plotly draws one width per trace)


def network(
    graph: nx.Graph, module_of: dict[int, int], names: list[str], hover: dict[int, str], seed: int
) -> go.Figure:
    """Nodes placed by a seeded spring layout on the edge weights, coloured by module, sized
    by their effect; each node's strongest edges drawn, wider for heavier ones."""
    pos = nx.spring_layout(graph, weight="weight", seed=seed)
    strongest = set()
    for node in graph:
        nbrs = sorted(graph[node].items(), key=lambda kv: -kv[1]["weight"])[:3]
        strongest |= {tuple(sorted((node, other))) for other, _ in nbrs}
    edges = sorted(strongest, key=lambda e: graph.edges[e]["weight"])
    fig = go.Figure()
    for part, width in enumerate(WIDTHS):
        chunk = edges[part * len(edges) // 3 : (part + 1) * len(edges) // 3]
        xs, ys = [], []
        for a, b in chunk:
            xs += [pos[a][0], pos[b][0], None]
            ys += [pos[a][1], pos[b][1], None]
        line = {"width": width, "color": "#bbb"}
        fig.add_scatter(x=xs, y=ys, mode="lines", line=line, hoverinfo="skip", showlegend=False)
    effect = nx.get_node_attributes(graph, "effect")
    biggest = max(effect.values())
    for module in sorted(set(module_of.values())):
        nodes = [n for n in graph if module_of[n] == module]
        fig.add_scatter(
            x=[pos[n][0] for n in nodes],
            y=[pos[n][1] for n in nodes],
            mode="markers",
            name=f"module {module}",
            marker={
                "size": [6 + 14 * (effect[n] / biggest) ** 0.5 for n in nodes],
                "color": qualitative.Plotly[module % len(qualitative.Plotly)],
            },
            text=[f"{names[n]}<br>module {module}<br>{hover[n]}" for n in nodes],
            hoverinfo="text",
        )
    fig.update_layout(
        title="Effect graph: units joined by how much their effects on the output overlap",
        xaxis={"visible": False},
        yaxis={"visible": False},
        height=560,
    )
    return fig


def separability_matrix(matrix: list[list[float]]) -> go.Figure:
    labels = [f"module {i}" for i in range(len(matrix))]
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=labels,
            y=labels,
            colorscale="Blues",
            zmin=0,
            zmax=1,
            text=[[f"{v:.3f}" for v in row] for row in matrix],
            texttemplate="%{text}",
        )
    )
    fig.update_layout(
        title="Separability: ablating the row's module, its effect within the column's outputs (share of its own)",
        xaxis_title="outputs of module",
        yaxis_title="module ablated",
        yaxis_autorange="reversed",
        height=420,
    )
    return fig


def predicted_vs_measured(predicted: list[float], measured: list[float]) -> go.Figure:
    fig = go.Figure(go.Scatter(x=predicted, y=measured, mode="markers"))
    top = max(max(predicted), max(measured))
    fig.add_scatter(x=[0, top], y=[0, top], mode="lines", line={"dash": "dash"}, name="equal", showlegend=False)
    fig.update_layout(
        title="Ablating one unit: attributed (gradient x activation) against measured change of the output",
        xaxis_title="attributed change (RMS over examples and outputs)",
        yaxis_title="measured change",
        showlegend=False,
        height=420,
    )
    return fig


def circuit_curve(curve: list[dict], budget: float, quantile: float, size: int) -> go.Figure:
    """Faithfulness on batch means (MIB) and per-example KL quantiles against circuit size."""
    sizes = [p["size"] for p in curve]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_scatter(x=sizes, y=[p["faithfulness"] for p in curve], name="faithfulness (batch mean, MIB)")
    fig.add_scatter(x=sizes, y=[1 - p["per_example_gap"] for p in curve], name="1 - median |1 - f_x| (per example)")
    for key, name in (("kl_median", "median KL"), ("kl_quantile", f"{quantile:.0%} quantile of KL")):
        fig.add_scatter(x=sizes, y=[p[key] for p in curve], name=name, line={"dash": "dot"}, secondary_y=True)
    fig.add_hline(y=budget, line_dash="dash", annotation_text="KL budget", secondary_y=True)
    fig.add_vline(x=size, line_dash="dash", annotation_text=f"circuit: {size} units")
    fig.update_layout(title="Circuits by size: units kept in order of attributed effect, the rest ablated", height=460)
    fig.update_xaxes(title="units kept")
    fig.update_yaxes(title="faithfulness", secondary_y=False)
    fig.update_yaxes(title="KL (nats)", type="log", secondary_y=True)
    return fig


def kl_histogram(kl: list[float], budget: float) -> go.Figure:
    fig = go.Figure(go.Histogram(x=kl, nbinsx=60))
    fig.add_vline(x=budget, line_dash="dash", annotation_text="budget")
    fig.update_layout(title="The circuit's KL per example", xaxis_title="KL(full || circuit), nats", height=380)
    fig.update_yaxes(title="examples")
    return fig


def methods_against_exact(scores: dict[str, list[float]], known: list[bool], labels: list[str]) -> go.Figure:
    """Each approximate method's edge score against exact patching; the known circuit marked."""
    fig = go.Figure()
    exact = scores["exact"]
    for method, values in scores.items():
        if method == "exact":
            continue
        fig.add_scatter(
            x=exact,
            y=values,
            mode="markers",
            name=method,
            text=[f"{e}{' (known circuit)' if k else ''}" for e, k in zip(labels, known)],
            hoverinfo="text+x+y",
            marker={"symbol": ["star" if k else "circle" for k in known], "size": [11 if k else 6 for k in known]},
        )
    fig.update_layout(
        title="Edge scores: attribution patching against exact patching (stars: the known circuit)",
        xaxis_title="exact: metric drop when the edge is corrupted",
        yaxis_title="estimate",
        height=460,
    )
    return fig


def component_graph(
    layers: list[list[str]], edges: list[tuple[str, str, float]], known: set[tuple[str, str]]
) -> go.Figure:
    """Components in layer columns (embedding, then each layer's heads, then the logits);
    each edge drawn from its source to the component whose input it feeds, wider for a
    larger |score|, orange when it is in the known circuit; hover names the edge."""
    columns = [["embed"], *layers, ["logits"]]
    pos = {n: (x, (len(col) - 1) / 2 - y) for x, col in enumerate(columns) for y, n in enumerate(col)}
    top = max(abs(w) for _, _, w in edges) or 1.0
    fig = go.Figure()
    for source, target, w in sorted(edges, key=lambda e: abs(e[2])):
        node = target if target == "logits" else target.rsplit(".", 1)[0]
        (x0, y0), (x1, y1) = pos[source], pos[node]
        in_known = (source, target) in known
        fig.add_scatter(
            x=[x0, (x0 + x1) / 2, x1],
            y=[y0, (y0 + y1) / 2, y1],
            mode="lines",
            line={"width": 0.5 + 8 * abs(w) / top, "color": "#ff7f0e" if in_known else "#999"},
            opacity=0.9 if in_known else 0.5,
            text=f"{source} -> {target}: {w:.3g}" + (" (known circuit)" if in_known else ""),
            hoverinfo="text",
            showlegend=False,
        )
    fig.add_scatter(
        x=[p[0] for p in pos.values()],
        y=[p[1] for p in pos.values()],
        mode="markers+text",
        text=list(pos),
        textposition="top center",
        marker={"size": 14, "color": "#1f77b4"},
        hoverinfo="text",
        showlegend=False,
    )
    fig.update_layout(
        title="Edges by exact patching (width: |score|; orange: the known circuit)",
        xaxis={"visible": False},
        yaxis={"visible": False},
        height=480,
    )
    return fig
