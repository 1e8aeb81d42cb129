"""`unweave graph TARGET`: the effect graph of a network's units, its modules (parts whose
effects on the output do not overlap, found without being told what to look for), and the
check by intervention that they are separable, and a circuit within a per-example KL budget;
writes record.json, graph.json (nodes and edges), modules.json (the modules and the
separability matrix), circuit.json and graph.html. `induction` scores the edges between the
induction toy's components instead (graph.json, circuit.json, graph.html)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from unweave import progress
from unweave.artifacts import write_json
from unweave.configs import setting
from unweave.graph import plots, prompt_attribution
from unweave.graph.attribution import EDGE_SHARE, NODE_SHARE
from unweave.graph.carving import (
    Carving,
    add_circuit,
    carve_target,
    circuit_json,
    circuit_line,
    error_share,
    graph_json,
    modules_json,
)
from unweave.graph.circuit import KL_BUDGET, KL_QUANTILE, PROMPT_KL_BUDGET, Circuit
from unweave.graph.modules import MERGE, OUTPUT_SIZE
from unweave.graph.prompt_attribution import attribute_prompt, attribution_json, attribution_lines
from unweave.graph.targets import HEAD_TARGETS, TARGETS, check_units, resolve
from unweave.report import Report, Section
from unweave.runs import Run, RunResult
from unweave.text import TextConfig, input_files


@dataclass(frozen=True)
class GraphConfig:
    target: str = setting(help=f"What to cut into modules: {TARGETS}.", argument=True)
    out: Path = setting(Path("runs/graph"), "Where record.json, graph.json, modules.json and graph.html go.")
    examples: int = setting(
        4096, "Inputs to judge on: random ones for two-tasks, sequences for induction (at most 256; modadd: all pairs)."
    )
    units: str = setting(
        "neurons",
        "A modular-addition run's units: its MLP 'neurons', or the latents of a 'transcoder' of that MLP trained "
        "here (TopK, as wide as the MLP, k by a KL rule), with the transcoder's error as one more unit, or the "
        "coordinates of the neurons on the directions of a 'basis' (--basis), with the rest as one more unit. "
        "induction's and two-circuits': their attention 'heads' (judged by their total effects), cut into modules "
        "instead of their edges scored; a causal LM's (smollm2-135m or a local Hugging Face folder as TARGET) "
        "'heads' on --prompt or --prompts.",
    )
    basis: Path | None = setting(
        None,
        "With --units basis: a .safetensors, .pt or .npy of shape (k, width): k directions of the neurons' space, "
        "whose coordinates are the units (the rest of the activation one more unit).",
    )
    prompt: str | None = setting(
        None,
        "With a dictionary folder as TARGET: the text whose graph over the dictionary's latents is drawn; with "
        "smollm2-induction, another prompt than its own.",
    )
    prompts: Path | None = setting(
        None,
        "With a dictionary folder as TARGET or smollm2-induction: a text file of prompts, one per line; draws the "
        "attribution graph aggregated over them (each latent, error, token and next token one node whatever its "
        "position; edges averaged over the prompts), checked by ablation, and the modules of those units, each "
        "checked by ablating it on every prompt.",
    )
    dictionary: list[Path] = setting(
        [], "With a dictionary folder as TARGET: more dictionaries of the same model (other layers; repeat)."
    )
    skip_first: int = setting(
        1,
        "With --prompt: leave the first positions out of the graph, held at their clean output (the first token is "
        "an attention sink with massive activations in most LMs, which no dictionary reconstructs). 0 keeps them.",
    )
    text: TextConfig = setting(
        TextConfig(), "With --prompt or --prompts: the text each latent's top snippets (on hover) come from."
    )
    snippet_tokens: int = setting(
        8192,
        "With --prompt or --prompts: tokens of --text read for each latent's top snippets, on hover; 0 reads none.",
    )
    ig_steps: int = setting(
        0,
        "With --prompt: integrate the attribution graph's edges over this many points of the path from every latent "
        "and error at zero to the clean run, the embeddings held (integrated gradients; the units' edges into a node "
        "then add up to its change); 0: first order at the clean run, as circuit-tracer.",
    )
    node_share: float = setting(
        NODE_SHARE, "With --prompt: the attribution graph keeps the nodes carrying this share of the influence ..."
    )
    edge_share: float = setting(EDGE_SHARE, "... and the edges carrying this share (circuit-tracer's defaults).")
    seed: int = setting(0, "Seed of the planted network, its inputs, the community detection and the layout.")
    kl_budget: float | None = setting(
        None,
        f"Circuits: the per-example KL (nats) the circuit may cost (default {KL_BUDGET:g}; on one prompt "
        f"{PROMPT_KL_BUDGET:g}, and no circuit when every unit resampled stays within it) ...",
    )
    kl_quantile: float = setting(KL_QUANTILE, "... for this share of the examples.")

    def __post_init__(self) -> None:
        if self.examples < 16:
            raise ValueError(f"--examples must be at least 16, got {self.examples}")
        if self.kl_budget is not None and not self.kl_budget > 0:
            raise ValueError(f"--kl-budget must be positive, got {self.kl_budget}")
        if self.skip_first < 0:
            raise ValueError(f"--skip-first must be 0 or more, got {self.skip_first}")
        if self.ig_steps < 0:
            raise ValueError(f"--ig-steps must be 0 (first order) or more, got {self.ig_steps}")
        if not (0 < self.node_share <= 1 and 0 < self.edge_share <= 1):
            raise ValueError(
                f"--node-share and --edge-share must be in (0, 1], got {self.node_share}, {self.edge_share}"
            )
        if self.snippet_tokens < 0:
            raise ValueError(f"--snippet-tokens must be 0 (no snippets) or more, got {self.snippet_tokens}")
        check_units(self.target, self.units)
        if not 0 < self.kl_quantile <= 1:
            raise ValueError(f"--kl-quantile must be in (0, 1], got {self.kl_quantile}")


def summary_lines(c: Carving) -> list[str]:
    lines = [
        f"{c.target.name}: {len(c.modules.modules)} modules of {c.modules.graph.number_of_nodes()} active units "
        f"({len(c.modules.inactive)} inactive); largest cross effect {c.separability.max_off_diagonal:.3f} of a "
        "module's effect on its own outputs"
    ]
    k = c.known
    if k is not None:
        labels = ", ".join(f"{r['label']} ({r['purity']:.0%} of {r['units']})" for r in k["modules"])
        lines.append(
            f"known answer (the planted {k['truth']} of each unit; those carrying the effect: {k['expected']}): "
            f"the modules' {k['truth']} (share of units) {labels}: "
            + ("recovered" if k["recovered"] else "NOT recovered")
        )
    lines.append(
        f"single-unit ablations, attributed vs measured: Pearson {c.check['pearson']:.3f}, "
        f"Spearman {c.check['spearman']:.3f}, largest relative error {c.check['max_relative_error']:.2g}"
    )
    return lines + _dictionary_lines(c)


def _dictionary_lines(c: Carving) -> list[str]:
    """Where the units are a dictionary's: how much of the effect its error carries."""
    found = error_share(c)
    if found is None:
        return []
    share, errors = found
    fitted = c.target.context.get("transcoder")
    rule = f"transcoder: {fitted['rule']}; " if fitted else ""
    where = sorted({c.module_of.get(u, "inactive") for u in errors}, key=str)
    return [
        f"{rule}its error carries {share:.1%} of the squared direct effect on the outputs (modules {where}); the "
        f"latents carry {1 - share:.1%}"
    ]


def add_sections(report: Report, summary: Section, c: Carving, seed: int) -> None:
    lines = summary_lines(c)
    summary.headline(
        {
            "modules": len(c.modules.modules),
            "largest cross effect": f"{c.separability.max_off_diagonal:.3f}",
            **({"known answer": "recovered" if c.known["recovered"] else "not recovered"} if c.known else {}),
        }
    )
    for line in lines:
        summary.text(line, summary=True)
    zero = isinstance(c.target.data.ablate_to, str) and c.target.data.ablate_to == "zero"
    scored = f" The planted {c.target.truth_name} of each unit is computed afterwards, to score the cut."
    summary.text(
        f"{c.target.note}. Each unit's effect on the output is its attribution (gradient x (activation - "
        f"{'0' if zero else 'mean'})) per example and output; two units are joined by how much their effects "
        "overlap, and Louvain communities of that graph are the modules. Then each module is ablated (set to "
        f"{'zero' if zero else 'its mean'}) and the change measured: a module's outputs are the principal directions "
        f"of the change its own ablation makes, at least {OUTPUT_SIZE:g} times the size of the strongest; modules "
        f"that move each other's outputs by more than {MERGE:.0%} of what they do to their own are merged."
        + (scored if c.known else "")
    )
    names = c.target.data.names()
    hover = {u: c.target.describe_unit(u) for u in c.modules.graph}
    report.section("Effect graph").figure(plots.network(c.modules.graph, c.module_of, names, hover, seed)).table(
        [
            {
                "module": i,
                "units": len(m),
                "effect share": s,
                "output directions": r,
                **(
                    {
                        f"planted {c.target.truth_name}": k["label"],
                        "purity (units)": k["purity"],
                        "purity (effect)": k["effect_purity"],
                    }
                    if k
                    else {}
                ),
            }
            for i, (m, s, r, k) in enumerate(
                zip(
                    c.modules.modules,
                    c.modules.shares,
                    c.separability.directions,
                    c.known["modules"] if c.known else [None] * len(c.modules.modules),
                )
            )
        ]
    )
    report.section("Separability, by ablation").figure(plots.separability_matrix(c.separability.matrix))
    if c.circuit is not None:
        add_circuit_sections(report, c.circuit, circuit_line(c), "units")
    report.section("Attribution checked by ablation").figure(
        plots.predicted_vs_measured(c.check["predicted_rms"], c.check["measured_rms"])
    ).text(
        f"The {len(c.check['units'])} units with the largest attributed effects, each ablated alone: Pearson "
        f"{c.check['pearson']:.4f}, Spearman {c.check['spearman']:.4f}."
    )


def run_graph(cfg: GraphConfig) -> RunResult:
    if cfg.units == "heads" and cfg.target not in HEAD_TARGETS:
        from unweave.graph.lm_heads import run_lm_heads_graph

        return run_lm_heads_graph(cfg)
    if cfg.target in HEAD_TARGETS and cfg.units != "heads":
        return run_edges_graph(cfg)
    if cfg.prompts is not None:
        from unweave.graph.dataset_attribution import run_dataset_graph

        return run_dataset_graph(cfg)
    snippets = (cfg.prompt is not None or cfg.target == "smollm2-induction") and cfg.snippet_tokens > 0
    texts = input_files(cfg.text) if snippets else []
    basis = [str(cfg.basis)] if cfg.basis is not None else []
    run = Run(cfg.out, "graph", cfg, inputs=[cfg.target, *map(str, cfg.dictionary), *basis, *texts])
    target = resolve(
        cfg.target,
        cfg.examples,
        cfg.seed,
        cfg.units,
        cfg.prompt,
        cfg.dictionary,
        cfg.skip_first,
        cfg.text,
        cfg.snippet_tokens if snippets else 0,
        cfg.basis,
    )
    if target.prompt is None and (cfg.ig_steps or (cfg.node_share, cfg.edge_share) != (NODE_SHARE, EDGE_SHARE)):
        raise ValueError("--ig-steps, --node-share and --edge-share are for a prompt's attribution graph (--prompt)")
    carving = carve_target(target, cfg.seed)
    default = PROMPT_KL_BUDGET if target.prompt is not None else KL_BUDGET
    add_circuit(carving, cfg.kl_budget or default, cfg.kl_quantile, allow_empty=cfg.kl_budget is None)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    write_json(Path(cfg.out) / "modules.json", modules_json(carving))
    lines = summary_lines(carving)
    if carving.circuit is not None:
        write_json(Path(cfg.out) / "circuit.json", circuit_json(carving))
        lines.append(circuit_line(carving))
    report = Report(f"unweave graph: modules of {target.name}")
    add_sections(report, report.summary(), carving, cfg.seed)
    if carving.no_circuit is not None:
        lines.append(f"no circuit: {carving.no_circuit}")
        report.summary().text(lines[-1], summary=True)
    results = graph_json(carving)
    if target.prompt is not None:
        found = attribute_prompt(target.prompt, cfg.ig_steps, cfg.node_share, cfg.edge_share)
        results["attribution"] = attribution_json(found)
        found_lines = attribution_lines(found)
        lines += found_lines
        hover = {u: target.describe_unit(u) for u in range(target.data.n_units) if bool(found.pruned.nodes[u])}
        section = report.section("Attribution graph")
        section.figure(prompt_attribution.figure(found, hover, carving.module_of))
        for line in found_lines:
            section.text(line)
        section.text(prompt_attribution.EXPLAINED)
    return run.finish(results, report, lines)


def add_circuit_sections(report: Report, circuit: Circuit, line: str, what: str) -> None:
    report.section("Circuit").figure(
        plots.circuit_curve([asdict(p) for p in circuit.curve], circuit.budget, circuit.quantile, len(circuit.units))
    ).figure(plots.kl_histogram(circuit.kl, circuit.budget)).text(
        line + ". Faithfulness f = (m(circuit) - m(none)) / (m(all) - m(none)) with m the log-probability of the "
        "right answer; MIB takes m on the batch mean (CPR: area under f over the fraction of "
        f"{what} kept; CMD: area under |1 - f|), the per-example CMD takes each example's own f and the median of "
        "|1 - f_x|. The gap between the two CMDs is what the batch mean hides."
    )


def run_edges_graph(cfg: GraphConfig) -> RunResult:
    """The edges between a zoo transformer's components scored against a known circuit: the
    induction toy's (read from its attention patterns), or the planted two-circuit model's
    induction circuit (from its planted roles)."""
    from unweave.graph import induction

    run = Run(cfg.out, "graph", cfg, inputs=[cfg.target])
    examples = min(cfg.examples, 256)  # one forward per edge for exact patching
    planted = cfg.target == "two-circuits"
    case = (induction.planted_case if planted else induction.induction_case)(examples, cfg.seed)
    what = "the planted two-circuit transformer's edges" if planted else "the induction toy's edges"
    task = progress.Task("edge scores (exact, EAP, EAP-IG), circuit", total=2, unit="steps")
    try:
        scores = induction.score_edges(case)
        task.advance()
        order = scores["exact"].abs().argsort(descending=True).tolist()
        circuit = induction.edge_circuit(case, order, cfg.kl_budget or KL_BUDGET, cfg.kl_quantile)
        task.advance()
    finally:
        task.close()
    auroc = induction.aurocs(case, scores)
    nodes = induction.node_check(case, scores)
    edges = case.edges.edges
    names = [str(e) for e in edges]
    kept = [names[i] for i in circuit.units]
    k = circuit
    circuit_text = (
        f"circuit: {len(kept)} of {len(edges)} edges (by exact score) keep {k.quantile:.0%} of predicted tokens within "
        f"{k.budget:g} nats; MIB CPR {k.cpr:.3f}, CMD {k.cmd:.3f} on batch means, CMD {k.cmd_per_example:.3f} per "
        "example"
    )
    lines = [
        f"edge ROC AUC against the known circuit ({' / '.join(auroc)}): "
        + ", ".join(f"{m} " + " / ".join(f"{a[m]:.3f}" for a in auroc.values()) for m in induction.METHODS),
        circuit_text,
        "components ablated whole, measured against the sum of their edges' scores (Pearson): "
        + ", ".join(f"{m} {nodes[m]['pearson']:.3f}" for m in induction.METHODS if m != "exact"),
    ]
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    circuit_dict = {
        **k.to_dict(),
        "units": kept,
        "known_strict_kept": sorted(set(kept) & {str(e) for e in case.known["strict"]}),
    }
    write_json(Path(cfg.out) / "circuit.json", {"target": cfg.target, "edges_total": len(edges), **circuit_dict})
    report = Report(f"unweave graph: {what}")
    summary = report.summary()
    summary.headline({m: f"{auroc['strict'][m]:.3f}" for m in induction.METHODS})
    for line in lines:
        summary.text(line, summary=True)
    explained = induction.planted_case.__doc__ if planted else induction.__doc__.split("\n\n", 1)[1]
    summary.text(" ".join(explained.split()))
    known = [e in case.known["strict"] for e in edges]
    strict_pairs = {(e.source, e.target) for e in case.known["strict"]}
    exact_edges = [(e.source, e.target, float(scores["exact"][i])) for i, e in enumerate(edges)]
    report.section("Edge scores").figure(plots.component_graph(case.edges.heads, exact_edges, strict_pairs)).figure(
        plots.methods_against_exact({m: s.tolist() for m, s in scores.items()}, known, names)
    ).table([{"known circuit": name, **{m: auroc[name][m] for m in induction.METHODS}} for name in auroc]).table(
        sorted(
            (
                {"edge": names[i], "known (strict)": known[i], **{m: float(scores[m][i]) for m in induction.METHODS}}
                for i in range(len(edges))
            ),
            key=lambda r: -abs(r["exact"]),
        )
    )
    report.section("Components ablated whole").table(
        [
            {"component": c, "measured": measured, **{m: nodes[m]["predicted"][i] for m in induction.METHODS}}
            for i, (c, measured) in enumerate(zip(nodes["components"], nodes["measured"]))
        ]
    ).text(
        lines[-1] + ". Exact is the sum of one-edge effects, which differs from the whole component's effect "
        "where its edges interact."
    )
    add_circuit_sections(report, circuit, circuit_text, "edges")
    results = {
        "target": cfg.target,
        "nodes": ["embed", *[h for layer in case.edges.heads for h in layer], "logits"],
        "edges": [
            {"source": e.source, "target": e.target, **{m: float(scores[m][i]) for m in induction.METHODS}}
            for i, e in enumerate(edges)
        ],
        "metric": "logit of the right next token minus the mean logit, on the repeated half",
        "known_circuit": {name: sorted(str(e) for e in known_set) for name, known_set in case.known.items()},
        "head_scores": {name: v.tolist() if torch.is_tensor(v) else v for name, v in case.heads.items()},
        "auroc": auroc,
        "components_ablated": nodes,
    }
    return run.finish(results, report, lines)
