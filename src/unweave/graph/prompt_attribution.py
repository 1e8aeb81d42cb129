"""The attribution graph of a prompt (`unweave graph FOLDER --prompt`): computed over the
prompt's live latents, errors, tokens and top next tokens, pruned, scored, and checked by
ablation; its part of graph.json, its summary lines and its figure."""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.colors import qualitative

from unweave.graph.attribution import (
    EDGE_SHARE,
    FAN_IN_SHARE,
    NODE_SHARE,
    AttributionGraph,
    Pruned,
    attribution_graph,
    prune,
    require_units,
    scores,
)
from unweave.graph.edge_checks import EdgeCheck, Readout, check_edges, checked_sources, sums_error
from unweave.graph.plots import WIDTHS
from unweave.graph.prompt import PromptUnits

UNIT_SYMBOLS = {"latent": "circle", "error": "x", "skip": "triangle-up"}
FIGURE_EDGES = 2000  # drawn on the page; graph.json keeps every edge the pruning keeps
POOR_SUMS = 0.1  # first-order edges whose sums miss more than this share of the change: suggest integrating
CHECKED_SOURCES = 16  # the most influential units, each ablated alone to check its edges
EXPLAINED = (
    "Nodes: the latents that fire at each position, each dictionary's error at each position, the prompt's tokens "
    "(their embeddings) and the top next tokens. An edge is the first-order direct effect of its source on its "
    "target (a latent's pre-activation, or an output's logit minus the mean): gradient x state at the clean run, "
    "with every dictionary's units held, so that no path runs through another latent; attention, norms and MLPs "
    "without a dictionary are part of the edges. With --ig-steps the gradient is averaged over points of the path "
    "on which every unit moves from zero to its clean state (integrated gradients). Influence sums the normalised"
    " |edges| over paths of every length, weighted by the outputs' probabilities. Replacement score: the tokens' "
    "share of the influence of the tokens and errors together; completeness: the share of each node's inputs not "
    "from errors, weighted by its influence. Both as circuit-tracer defines them. Pruned to the nodes carrying "
    f"the --node-share of the influence (default {NODE_SHARE:.0%}) and the edges carrying the --edge-share "
    f"(default {EDGE_SHARE:.0%})."
)


@dataclass
class PromptAttribution:
    graph: AttributionGraph
    pruned: Pruned
    scores: dict[str, float]
    check: EdgeCheck  # the most influential units (mostly errors, on SmolLM2)
    latent_check: EdgeCheck  # the most influential latents
    sums_error: float  # |units' edges summed into each node - its measured change with every unit at zero| / |change|
    positions: list[int]  # each node's position in the prompt (outputs: the last)
    rows: list[int]  # each node's row in the figure: 0 the tokens, then each site, then the outputs
    row_names: list[str]
    steps: int  # integration steps of the edges (0: first order)
    node_share: float
    edge_share: float


def prompt_graph(found: PromptUnits, steps: int = 0) -> AttributionGraph:
    """The attribution graph of `found`'s prompt, its tokens and outputs named by their text
    (the tokens with their positions)."""
    decode = found.tokenizer.decode
    tokens = [f"token {decode(i)!r} @{t}" for t, i in enumerate(found.data.inputs[0].tolist())]
    outputs = [f"logit {decode(int(i))!r}" for i in found.top]
    return attribution_graph(found.data, found.embedding, found.probabilities, tokens, outputs, steps)


def attribute_prompt(
    found: PromptUnits, steps: int = 0, node_share: float = NODE_SHARE, edge_share: float = EDGE_SHARE
) -> PromptAttribution:
    data = found.data
    ids = data.inputs[0].tolist()
    graph = prompt_graph(found, steps)
    pruned = prune(graph, node_share, edge_share)
    n_units = data.n_units
    require_units(pruned, graph, node_share)
    units, latents = checked_sources(graph, pruned, CHECKED_SOURCES)
    readout = Readout(data)  # one clean run and one set of encoder columns for the three checks
    check = check_edges(data, graph, units, readout)
    latent_check = check_edges(data, graph, latents, readout)
    sums = sums_error(graph, readout.whole())
    sites = data.units.site
    records = [data.record(u) for u in range(n_units)]
    positions = [r["position"] for r in records] + list(range(len(ids))) + [len(ids) - 1] * len(found.top)
    rows = [1 + sites.index(r["site"]) for r in records] + [0] * len(ids) + [len(sites) + 1] * len(found.top)
    return PromptAttribution(
        graph,
        pruned,
        scores(graph),
        check,
        latent_check,
        sums,
        positions,
        rows,
        ["tokens", *sites, "top next tokens"],
        steps,
        node_share,
        edge_share,
    )


def pruned_json(g: AttributionGraph, kept: Pruned, positions: list[int] | None = None) -> dict:
    """The pruned graph's nodes (with their positions, when given) and edges, for graph.json."""
    nodes = kept.nodes.nonzero().flatten().tolist()
    targets, sources = kept.edges.nonzero(as_tuple=True)
    where = (lambda i: {"position": positions[i]}) if positions is not None else (lambda i: {})
    return {
        "nodes_before_pruning": g.n_nodes,
        "nodes": [
            {"id": i, "name": g.names[i], "kind": g.kinds[i], **where(i), "influence": float(kept.influence[i])}
            for i in nodes
        ],
        "links": [
            {"source": s, "target": t, "weight": float(g.adjacency[t, s])}
            for t, s in zip(targets.tolist(), sources.tolist())
        ],
    }


def attribution_json(a: PromptAttribution) -> dict:
    return {
        "edge_weight": "A[target, source]: the first-order direct effect of the source on the target (a latent's "
        "pre-activation, or an output logit minus the mean), gradient x (state - 0) at the clean run, every other "
        "dictionary's units held",
        "integration_steps": a.steps,
        "pruning": {"node_share": a.node_share, "edge_share": a.edge_share},
        **a.scores,
        **pruned_json(a.graph, a.pruned, a.positions),
        "edge_check": check_json(a.check),
        "latent_edge_check": check_json(a.latent_check),
        "sums_error": a.sums_error,
    }


def check_json(c: EdgeCheck) -> dict:
    return {
        "sources": c.sources,
        "edges": len(c.predicted),
        "pearson": c.pearson,
        "spearman": c.spearman,
        "max_relative_error": c.max_relative_error,
    }


def latent_line(c: EdgeCheck) -> str:
    """The check of the latents' edges alone: an error is a large vector, and its edges are
    further from linear than a latent's."""
    return (
        f"of the {len(c.sources)} most influential latents alone: Pearson {c.pearson:.3f} over {len(c.predicted)} edges"
    )


def attribution_lines(a: PromptAttribution) -> list[str]:
    kept, c = a.pruned, a.check
    hint = (
        [f"the first-order edges miss {a.sums_error:.0%} of the change: --ig-steps 8 integrates them"]
        if a.steps == 0 and a.sums_error > POOR_SUMS
        else []
    )
    return [
        f"attribution graph: {a.graph.n_nodes} nodes, pruned to {int(kept.nodes.sum())} nodes and "
        f"{int(kept.edges.sum())} edges; replacement score {a.scores['replacement_score']:.3f}, completeness "
        f"{a.scores['completeness']:.3f} (circuit-tracer's definitions); a latent's input from latents is "
        f"{a.scores['fan_in']:.1f} of them for {FAN_IN_SHARE:.0%}; edges "
        + (f"integrated over {a.steps} points of the path from zero" if a.steps else "to first order"),
        f"edges checked by ablation ({len(c.sources)} most influential units, each alone, the other dictionaries' "
        f"units held): Pearson {c.pearson:.3f} (Spearman {c.spearman:.3f}) over {len(c.predicted)} edges, largest "
        f"error {c.max_relative_error:.2g} of the largest change; {latent_line(a.latent_check)}; the units' edges "
        f"into each latent and output add up to its measured change with every unit at zero within "
        f"{a.sums_error:.1%} (relative, over all of them)",
        *hint,
    ]


def figure(a: PromptAttribution, hover: dict[int, str], module_of: dict[int, int]) -> go.Figure:
    """The pruned graph: a column per position, a row per site (tokens at the bottom, the
    outputs at the top); units coloured by module (`module_of`; `graph_figure`)."""
    return graph_figure(
        a.graph,
        a.pruned,
        a.positions,
        a.rows,
        a.row_names,
        hover,
        module_of,
        "Attribution graph, pruned: direct effects between latents, errors, tokens and the top next tokens",
        "position",
    )


def graph_figure(
    g: AttributionGraph,
    kept: Pruned,
    positions: list[int],
    rows: list[int],
    row_names: list[str],
    hover: dict[int, str],
    module_of: dict[int, int],
    title: str,
    x_title: str,
) -> go.Figure:
    """A pruned attribution graph: a column per position, a row per site; the
    `FIGURE_EDGES` edges of most influence (graph.json has them all), blue where they push
    up, red where they push down, wider for a larger |weight| (by tercile); units coloured by
    module (`module_of`, or all one colour when it is empty), shaped by kind, sized by
    influence."""
    nodes = kept.nodes.nonzero().flatten().tolist()
    cell: dict[tuple[int, int], list[int]] = {}
    for i in nodes:
        cell.setdefault((positions[i], rows[i]), []).append(i)
    xy = {}
    for (t, row), members in cell.items():
        for j, i in enumerate(sorted(members, key=lambda i: -float(kept.influence[i]))):
            xy[i] = (t + 0.8 * (j + 0.5) / len(members) - 0.4, row)
    targets, sources = kept.edges.nonzero(as_tuple=True)
    strongest = kept.edge_influence[targets, sources].argsort(descending=True)[:FIGURE_EDGES]
    targets, sources = targets[strongest], sources[strongest]
    edges = sorted(
        ((s, t, float(g.adjacency[t, s])) for t, s in zip(targets.tolist(), sources.tolist())), key=lambda e: abs(e[2])
    )
    fig = go.Figure()
    for sign, colour in ((1, "#1f77b4"), (-1, "#d62728")):
        signed = [e for e in edges if e[2] * sign > 0]
        for part, width in enumerate(WIDTHS):  # one trace per width: plotly draws one width per trace
            xs, ys = [], []
            for s, t, _ in signed[part * len(signed) // 3 : (part + 1) * len(signed) // 3]:
                xs += [xy[s][0], xy[t][0], None]
                ys += [xy[s][1], xy[t][1], None]
            line = {"width": width, "color": colour}
            fig.add_scatter(x=xs, y=ys, mode="lines", line=line, opacity=0.5, hoverinfo="skip", showlegend=False)
    biggest = max(float(kept.influence[i]) for i in nodes) or 1.0

    def draw(chosen: list[int], name: str, colour: str, symbol: str) -> None:
        fig.add_scatter(
            x=[xy[i][0] for i in chosen],
            y=[xy[i][1] for i in chosen],
            mode="markers",
            name=name,
            marker={
                "size": [6 + 14 * (float(kept.influence[i]) / biggest) ** 0.5 for i in chosen],
                "color": colour,
                "symbol": symbol,
            },
            text=[
                f"{g.names[i]}<br>{name}, influence {float(kept.influence[i]):.3g}<br>{hover.get(i, '')}"
                for i in chosen
            ],
            hoverinfo="text",
        )

    draw([i for i in nodes if g.kinds[i] == "token"], "token", "#7f7f7f", "circle")
    groups: dict[tuple[int, str], list[int]] = {}
    for i in nodes:
        if g.kinds[i] in UNIT_SYMBOLS:
            groups.setdefault((module_of.get(i, -1), g.kinds[i]), []).append(i)
    for (module, kind), chosen in sorted(groups.items()):
        if not module_of:
            draw(chosen, kind, qualitative.Plotly[0], UNIT_SYMBOLS[kind])
            continue
        colour = qualitative.Plotly[module % len(qualitative.Plotly)] if module >= 0 else "#c7c7c7"
        draw(chosen, f"{f'module {module}' if module >= 0 else 'inactive'}: {kind}", colour, UNIT_SYMBOLS[kind])
    outputs = [i for i in nodes if g.kinds[i] == "output"]
    fig.add_scatter(
        x=[xy[i][0] for i in outputs],
        y=[xy[i][1] for i in outputs],
        mode="markers",
        name="output",
        marker={"size": 12, "color": "#000", "symbol": "square"},
        text=[f"{g.names[i]}: probability {float(g.output_weights[i]):.3f}" for i in outputs],
        hoverinfo="text",
    )
    fig.update_layout(
        title=title,
        xaxis={"title": x_title, "showticklabels": len(set(positions)) > 1},  # one column: the ticks mean nothing
        yaxis={"tickvals": list(range(len(row_names))), "ticktext": row_names},
        height=620,
    )
    return fig
