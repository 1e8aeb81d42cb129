"""Attribution graphs aggregated over a set of prompts (`unweave graph FOLDER --prompts FILE`).

Each prompt has its own graph (`attribution.py`), over its live latents at each position.
The aggregate joins them by what a node is, not where: a latent is one node whatever its
position (site, latent), a dictionary's error is one node per site, a token one node per
token, an output one node per next token (named by text and id: distinct tokens can decode
alike). The aggregated edge s -> t is the sum
of every per-prompt edge from a node named s to one named t, averaged over the prompts:

    A[t, s] = mean over prompts of  sum over positions p, q of  A_prompt[(t, p), (s, q)]

so it is the first-order change of t summed over its positions when s is removed at every
position of every prompt. The outputs are weighed by each token's mean probability over the
prompts (0 on prompts where it is not among the top next tokens). The check is the same
claim measured: each of the most influential units (latents, errors) is set to zero at
every position on every prompt, the other units held, and the changes, summed over positions and averaged,
are compared with its aggregated edges. On a model that is linear outside its dictionaries
they are equal (a test).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import plotly.graph_objects as go
import torch

from unweave.artifacts import write_json
from unweave.graph import plots
from unweave.graph.attribution import (
    EDGE_SHARE,
    FAN_IN_SHARE,
    NODE_SHARE,
    AttributionGraph,
    Pruned,
    prune,
    require_units,
    scores,
)
from unweave.graph.edge_checks import EdgeCheck, Readout, checked_sources, edge_check, sums_error
from unweave.graph.prompt import LoadedDictionaries, PromptUnits, load_dictionaries, read_prompts
from unweave.graph.prompt_attribution import check_json, graph_figure, latent_line, prompt_graph, pruned_json
from unweave.graph.snippets import Snippets
from unweave.graph.targets import dictionary_folders
from unweave.progress import Task
from unweave.report import Report
from unweave.runs import Run, RunResult
from unweave.text import input_files

if TYPE_CHECKING:
    from unweave.graph.command import GraphConfig

CHECKED_SOURCES = 16  # the most influential units, each removed everywhere to check its edges


@dataclass
class DatasetAttribution:
    graph: AttributionGraph  # the aggregate, nodes named by what they are
    pruned: Pruned
    scores: dict[str, float]
    check: EdgeCheck  # the most influential units (sources: their names)
    latent_check: EdgeCheck  # the most influential latents
    sums_error: float  # the units' aggregated edges into each node against its mean change with every unit at zero
    per_prompt: list[dict]  # each prompt's own graph: its size and scores
    prompt_names: list[set[str]]  # the names of each prompt's nodes
    sites: list[str]
    steps: int
    node_share: float
    edge_share: float

    @property
    def rows(self) -> list[int]:
        """Each node's row in the figure: 0 the tokens, then each site, then the outputs."""
        return [_row(self.graph, i, self.sites) for i in range(self.graph.n_nodes)]

    @property
    def row_names(self) -> list[str]:
        return ["tokens", *self.sites, "next tokens"]


def _row(graph: AttributionGraph, i: int, sites: list[str]) -> int:
    kind = graph.kinds[i]
    if kind == "token":
        return 0
    if kind == "output":
        return len(sites) + 1
    return 1 + sites.index(graph.names[i].split(" ")[0])


def node_names(found: PromptUnits) -> tuple[list[str], list[str]]:
    """Each node of a prompt's graph named by what it is, without its position, and its kind
    (in `attribution_graph`'s order: units, tokens, outputs)."""
    data, decode = found.data, found.tokenizer.decode
    names, kinds = [], []
    for u in range(data.n_units):
        r = data.record(u)
        kind = r["kind"] if r["kind"] in ("error", "skip", "head") else "latent"
        names.append(f"{r['site']} {kind}" if kind in ("error", "skip") else f"{r['site']} {kind} {r['index']}")
        kinds.append(kind)
    # named by id as well as text: distinct tokens can decode alike (byte pieces decode to '\ufffd')
    tokens = [f"token {decode(i)!r} #{i}" for i in data.inputs[0].tolist()]
    outputs = [f"logit {decode(int(i))!r} #{int(i)}" for i in found.top]
    return names + tokens + outputs, kinds + ["token"] * len(tokens) + ["output"] * len(outputs)


class Joiner:
    """Per-prompt graphs summed into one, node by name, one graph at a time (so that only one
    prompt's graph is held): `maps[k]` takes prompt k's nodes to the joined ones."""

    def __init__(self, names: list[list[str]], kinds: list[list[str]]):
        of: dict[str, int] = {}
        self.kinds: list[str] = []
        for these, their_kinds in zip(names, kinds):
            for name, kind in zip(these, their_kinds):
                if name not in of:
                    of[name] = len(self.kinds)
                    self.kinds.append(kind)
        self.names = list(of)  # in the order first seen, as numbered
        self.maps = [torch.tensor([of[n] for n in these], dtype=torch.long) for these in names]
        self.adjacency = torch.zeros(len(of), len(of), dtype=torch.float64)
        self.weights = torch.zeros(len(of), dtype=torch.float64)

    def add(self, k: int, graph: AttributionGraph) -> None:
        to = self.maps[k]
        self.adjacency.index_put_((to[:, None], to[None, :]), graph.adjacency, accumulate=True)
        self.weights.index_add_(0, to, graph.output_weights)

    def joined(self) -> AttributionGraph:
        """The mean over the prompts of the summed graphs."""
        n = len(self.maps)
        return AttributionGraph(self.adjacency / n, self.kinds, self.names, self.weights / n)


def aggregate(graphs: list[AttributionGraph], names: list[list[str]]) -> tuple[AttributionGraph, list[torch.Tensor]]:
    """The graphs joined by node name (`Joiner`), and each graph's node -> joined node map."""
    joiner = Joiner(names, [g.kinds for g in graphs])
    for k, graph in enumerate(graphs):
        joiner.add(k, graph)
    return joiner.joined(), joiner.maps


def _pooled(values: torch.Tensor, to: torch.Tensor, size: int) -> torch.Tensor:
    """(..., nodes of a prompt) summed into (..., aggregated nodes)."""
    return values.new_zeros(*values.shape[:-1], size).index_add_(-1, to, values)


def draw_prompts(loaded: LoadedDictionaries, prompts: list[str], skip_first: int = 1) -> list[PromptUnits]:
    """`loaded`'s dictionaries drawn on each prompt (`LoadedDictionaries.on`)."""
    if len(prompts) < 2:
        raise ValueError(f"--prompts needs at least 2 prompts (one per line), got {len(prompts)}: use --prompt for one")
    return [loaded.on(prompt, skip_first) for prompt in prompts]


def attribute_prompts(
    found: list[PromptUnits],
    prompts: list[str],
    sites: list[str],
    steps: int = 0,
    node_share: float = NODE_SHARE,
    edge_share: float = EDGE_SHARE,
    checked: int = CHECKED_SOURCES,
) -> DatasetAttribution:
    """Each prompt's graph, joined (`aggregate`), pruned, scored and checked by removing each
    of the `checked` most influential units at every position of every prompt."""
    task = Task("attribution graphs of the prompts, then the check", total=2 * len(prompts), unit="prompts")
    try:
        named = [node_names(f) for f in found]
        joiner = Joiner([n for n, _ in named], [k for _, k in named])
        size = len(joiner.names)
        changes = torch.zeros(size, dtype=torch.float64)
        per_prompt, readouts = [], []
        for k, (prompt, f) in enumerate(zip(prompts, found)):
            graph = prompt_graph(f, steps)
            joiner.add(k, graph)
            readouts.append(Readout(f.data))  # its clean run serves the check below too
            whole = readouts[-1].whole()
            changes += _pooled(whole, joiner.maps[k], size) / len(prompts)
            per_prompt.append(
                {
                    "prompt": prompt,
                    "tokens": int(f.data.inputs.shape[1]),
                    "nodes": graph.n_nodes,
                    **scores(graph),
                    "sums_error": sums_error(graph, whole),
                }
            )
            task.advance()
        joined = joiner.joined()
        pruned = prune(joined, node_share, edge_share)
        require_units(pruned, joined, node_share)
        units, latents = checked_sources(joined, pruned, checked)
        sources = list(dict.fromkeys(units + latents))
        measured = torch.zeros(len(sources), size, dtype=torch.float64)
        for f, to, readout in zip(found, joiner.maps, readouts):
            groups = [(to[: f.data.n_units] == s).nonzero().flatten().tolist() for s in sources]
            present = [i for i, g in enumerate(groups) if g]  # a latent silent on this prompt changes nothing
            if present:
                changed = readout.ablated([groups[i] for i in present])
                measured[present] += _pooled(changed, to, size) / len(prompts)
            task.advance()
    finally:
        task.close()
    row = {s: i for i, s in enumerate(sources)}
    check = edge_check(joined, units, measured[[row[s] for s in units]], names=True)
    latent_check = edge_check(joined, latents, measured[[row[s] for s in latents]], names=True)
    return DatasetAttribution(
        joined,
        pruned,
        scores(joined),
        check,
        latent_check,
        sums_error(joined, changes),
        per_prompt,
        [set(n) for n, _ in named],
        sites,
        steps,
        node_share,
        edge_share,
    )


def dataset_json(d: DatasetAttribution) -> dict:
    return {
        "edge_weight": "A[target, source]: the per-prompt direct effects of the source (at any position) on the "
        "target (summed over its positions), averaged over the prompts",
        "prompts": len(d.per_prompt),
        "integration_steps": d.steps,
        "pruning": {"node_share": d.node_share, "edge_share": d.edge_share},
        **d.scores,
        **pruned_json(d.graph, d.pruned),
        "edge_check": check_json(d.check),
        "latent_edge_check": check_json(d.latent_check),
        "sums_error": d.sums_error,
        "per_prompt": d.per_prompt,
    }


def dataset_lines(d: DatasetAttribution) -> list[str]:
    kept, c = d.pruned, d.check
    per = d.per_prompt
    low, high = min(p["replacement_score"] for p in per), max(p["replacement_score"] for p in per)
    return [
        f"attribution graph over {len(per)} prompts, nodes joined by what they are (a latent, a site's error, a "
        f"token, a next token) whatever their position: {d.graph.n_nodes} nodes, pruned to {int(kept.nodes.sum())} "
        f"nodes and {int(kept.edges.sum())} edges; replacement score {d.scores['replacement_score']:.3f}, "
        f"completeness {d.scores['completeness']:.3f} (per prompt: replacement {low:.3f}-{high:.3f}); a latent's "
        f"input from latents is {d.scores['fan_in']:.1f} of them for {FAN_IN_SHARE:.0%}; edges "
        + (f"integrated over {d.steps} points" if d.steps else "to first order"),
        f"aggregated edges checked by ablation ({len(c.sources)} most influential units, each removed at every "
        f"position of every prompt, the other units held): Pearson {c.pearson:.3f} (Spearman {c.spearman:.3f}) "
        f"over {len(c.predicted)} edges, largest error {c.max_relative_error:.2g} of the largest change; "
        f"{latent_line(d.latent_check)}; the units' edges into each node add up to its mean change with every unit "
        f"at zero within {d.sums_error:.1%}",
    ]


def dataset_figure(
    d: DatasetAttribution, snippets: Snippets | None = None, module_of: dict[int, int] | None = None
) -> go.Figure:
    """The pruned aggregated graph: a row per site, its nodes most influential first; a
    node's hover says on how many prompts it appears, and a latent's its top snippets of a
    text (`snippets`)."""
    kept = d.pruned.nodes.nonzero().flatten().tolist()
    hover = {}
    for i in kept:
        name = d.graph.names[i]
        lines = [f"in {sum(1 for p in d.prompt_names if name in p)} of {len(d.per_prompt)} prompts"]
        if snippets is not None and d.graph.kinds[i] == "latent":
            site, _, index = name.split(" ")
            lines += [f"top on {snippets.n_tokens:,} tokens of {snippets.text}:", *snippets.of(site, int(index))]
        hover[i] = "<br>".join(lines)
    return graph_figure(
        d.graph,
        d.pruned,
        [0] * d.graph.n_nodes,
        d.rows,
        d.row_names,
        hover,
        module_of or {},
        f"Attribution graph over {len(d.per_prompt)} prompts, pruned: latents, errors, tokens and next tokens, "
        "each one node whatever its position",
        "each site's nodes, most influential first",
    )


def run_dataset_graph(cfg: GraphConfig) -> RunResult:
    """`unweave graph TARGET --prompts FILE`: the attribution graph aggregated over the file's
    prompts and the modules of its units (`dataset_modules.py`), written as graph.json,
    modules.json and graph.html."""

    from unweave.graph.dataset_modules import __doc__ as modules_doc
    from unweave.graph.dataset_modules import dataset_modules, dataset_modules_json, dataset_modules_line, modules_table

    if cfg.prompt is not None:
        raise ValueError("give one of --prompt (one prompt's graph and modules) and --prompts (a graph over many)")
    if cfg.kl_budget is not None or cfg.units != "neurons":
        raise ValueError(
            "--prompts draws the attribution graph and the modules over a dictionary's latents, with no circuit: "
            "leave out --kl-budget and --units (or give one --prompt for them)"
        )
    path = Path(cfg.prompts)
    prompts = read_prompts(path)
    folders = dictionary_folders(cfg.target, cfg.dictionary)
    if folders is None:
        raise ValueError(
            f"--prompts is for a dictionary folder as TARGET or smollm2-induction, not {cfg.target!r}: its graph is "
            "drawn over a dictionary's latents"
        )
    texts = input_files(cfg.text) if cfg.snippet_tokens else []
    run = Run(cfg.out, "graph", cfg, inputs=[cfg.target, *map(str, cfg.dictionary), str(path), *texts])
    loaded = load_dictionaries(folders)
    snippets = None
    if cfg.snippet_tokens:
        snippets = Snippets(loaded.model, loaded.tokenizer, loaded.members, cfg.text, cfg.snippet_tokens)
    drawn = draw_prompts(loaded, prompts, cfg.skip_first)
    sites = [m.site for m in loaded.members]
    found = attribute_prompts(drawn, prompts, sites, cfg.ig_steps, cfg.node_share, cfg.edge_share)
    modules = dataset_modules(drawn, cfg.seed)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    write_json(Path(cfg.out) / "modules.json", {"target": cfg.target, **dataset_modules_json(modules)})
    lines = [*dataset_lines(found), dataset_modules_line(modules)]
    report = Report(f"unweave graph: {loaded.name} over {len(prompts)} prompts")
    summary = report.summary()
    summary.headline(
        {
            "prompts": len(prompts),
            "replacement score": f"{found.scores['replacement_score']:.3f}",
            "edge check (Pearson)": f"{found.check.pearson:.3f}",
            "modules": len(modules.modules.modules),
            "largest cross effect": f"{modules.separability.max_off_diagonal:.3f}",
        }
    )
    for line in lines:
        summary.text(line, summary=True)
    summary.text(__doc__.split("\n\n", 1)[1].replace("\n", " "))
    module_of = modules.module_of()
    coloured = {i: module_of.get(name, -1) for i, name in enumerate(found.graph.names)}
    figure = dataset_figure(found, snippets, coloured)
    report.section("Attribution graph over the prompts").figure(figure).table(found.per_prompt)
    report.section("Modules, checked by ablation over the prompts").figure(
        plots.separability_matrix(modules.separability.matrix)
    ).table(modules_table(modules, prompts)).text(modules_doc.split("\n\n", 1)[1].replace("\n", " "))
    results = {"target": cfg.target, "model": loaded.name, "attribution": dataset_json(found)}
    return run.finish(results, report, lines)
