"""The attribution graph of one prompt: direct effects between the latents of dictionaries at
several layers, their errors, the input tokens and the outputs (the graph circuit-tracer
draws over transcoders, here on any model unweave's dictionaries read).

Nodes are the units of an `EffectData` (each member's latents and vector parts, members in
the order they run), then one node per input position (the token's embedding), then the
outputs. The edge s -> t is the first-order direct effect of s on t:

    A[t, s] = sum over s's coordinates i of  dt / ds_i  *  (s_i - baseline_i)

at the clean run (or, with integration steps, averaged over the straight path on which every
unit moves together from its baseline to its clean state, the embeddings held: integrated
gradients), with t a latent's pre-activation (its encoder column's inner product with the
dictionary's input, so the column is the backward pass's seed) or an output. Direct:
every member's state is a leaf, so no path from s to t runs through another member's units
(a later dictionary's latents and error stay as the clean run made them); it does run
through everything in the model that is not a member (attention, MLPs without a dictionary,
norms). Where all of that is linear the edges are exact: the units' edges into t sum to t's
change when every unit is set to its baseline, and all its edges to its change when the
embeddings are zero too (tests; `edge_checks.py` measures both on any model); integrated
edges have the first sum on any model. Errors and tokens are sources only: nothing in the
graph explains them; so is a skip transcoder's linear path, which is neither (the scores
count it as neither).

Scores, as circuit-tracer defines them (rows of |A| normalised to sum to 1, influence
summed over paths of every length, outputs weighted by their probabilities):
- replacement score: the tokens' influence over the tokens' and errors' together;
- completeness: the share of each node's inputs that do not come from errors, averaged with
  weights of each node's influence on the outputs.
Pruning keeps the nodes carrying `NODE_SHARE` of the influence on the outputs and the edges
carrying `EDGE_SHARE`, always with the tokens and outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unweave.graph.effects import EffectData
from unweave.sites import capturing, patch

NODE_SHARE = 0.8  # circuit-tracer's defaults for pruning
EDGE_SHARE = 0.98
TARGET_CHUNK = 128  # latent pre-activations differentiated in one batched backward pass


@dataclass
class AttributionGraph:
    adjacency: torch.Tensor  # (nodes, nodes) float64: [target, source], the direct effect of source on target
    kinds: list[str]  # per node: "latent", "error", "skip", "token" or "output"
    names: list[str]
    output_weights: torch.Tensor  # (nodes,): each output's probability at the output nodes, 0 elsewhere

    @property
    def n_nodes(self) -> int:
        return len(self.kinds)

    def of_kind(self, *kinds: str) -> torch.Tensor:
        return torch.tensor([k in kinds for k in self.kinds])


@dataclass(frozen=True)
class LatentTargets:
    """A member's latent nodes: their node numbers, latents and positions."""

    nodes: torch.Tensor
    latents: torch.Tensor
    positions: torch.Tensor


def latent_targets(data: EffectData, k: int) -> LatentTargets:
    """Member k's latents among the graph's nodes (its errors are sources only)."""
    member = data.members[k]
    units, _ = data.member_span(k)
    nodes, latents, positions = [], [], []
    for own, inner in enumerate(member.keep):
        u, t = member.inner.where(inner)
        if u < member.inner.latents:
            nodes.append(units.start + own)
            latents.append(u)
            positions.append(t)
    return LatentTargets(
        torch.tensor(nodes, dtype=torch.long), torch.tensor(latents, dtype=torch.long), torch.tensor(positions)
    )


def check_data(data: EffectData) -> None:
    """An error unless `data` is one prompt over dictionaries with encoders."""
    if len(data.inputs) != 1:
        raise ValueError(f"an attribution graph is drawn on one prompt: got {len(data.inputs)} inputs")
    missing = [m.site for m in data.members if not hasattr(getattr(m, "inner", None), "encoder_columns")]
    if missing:
        raise ValueError(
            f"an attribution graph needs dictionary latents (with encoders) at every site; {missing} are not: give "
            "dictionary folders as the graph's units"
        )


def _seeds(x: torch.Tensor, columns: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(n, *x.shape): seed n puts column n at its position, so that the backward pass of x
    with it is the gradient of that latent's pre-activation."""
    seeds = x.new_zeros(len(positions), *x.shape)
    seeds[torch.arange(len(positions)), 0, positions] = columns.T.to(x.dtype)
    return seeds


class _OnPath:
    """A leaf at baseline + alpha (clean - baseline): a point of the integration path. The
    clean state is given (a member's, from the clean run: upstream of it the path has moved
    too) or is the activation the leaf replaces (the token embeddings, held at alpha 1)."""

    def __init__(self, alpha: float, clean: torch.Tensor | None = None, baseline: torch.Tensor | None = None):
        self.alpha, self.clean, self.baseline = alpha, clean, baseline

    def __call__(self, act: torch.Tensor) -> torch.Tensor:
        clean = (act if self.clean is None else self.clean.to(act.dtype)).detach()
        base = torch.zeros_like(clean) if self.baseline is None else self.baseline.to(act.dtype)
        self.act = (base + self.alpha * (clean - base)).requires_grad_(True)
        return self.act


def path_points(steps: int) -> list[float]:
    """Where the gradients are taken: the clean run alone (first order), or `steps` midpoints
    of the path from every unit at its baseline to the clean run (integrated gradients)."""
    if steps < 0:
        raise ValueError(f"the integration steps must be 0 (first order) or more, got {steps}")
    return [1.0] if steps == 0 else [(i + 0.5) / steps for i in range(steps)]


def attribution_graph(
    data: EffectData,
    embedding: str,
    probabilities: torch.Tensor,
    token_names: list[str],
    output_names: list[str],
    steps: int = 0,
) -> AttributionGraph:
    """The direct-effect graph of `data`'s one input, whose token embeddings are the output of
    the site `embedding`; `probabilities` weigh the outputs (the model's probabilities of the
    output tokens). With `steps`, each gradient is averaged over that many points of the
    straight path on which every unit (latent, error) moves together from its baseline to
    its clean state, the tokens' embeddings as they are (integrated gradients): then the
    units' edges into a node add up to its change along the path, however curved the model
    is in between. (A path that also took the embeddings from zero would cross the norm
    layers' singular point: with the residual stream near zero an RMSNorm's output jumps
    from 0 to full scale within its epsilon, and on SmolLM2 the sums then diverged as the
    steps grew: 94% off to first order, 188% at 8 steps, 257% at 32.)"""
    check_data(data)
    n_units, n_tokens, n_out = data.n_units, data.inputs.shape[1], len(probabilities)
    if (len(token_names), len(output_names)) != (n_tokens, n_out):
        raise ValueError(
            f"{len(token_names)} token names and {len(output_names)} output names for {n_tokens} tokens and "
            f"{n_out} outputs: give one name each"
        )
    nodes = n_units + n_tokens + n_out
    adjacency = torch.zeros(nodes, nodes, dtype=torch.float64)
    points = path_points(steps)
    for alpha in points:
        adjacency += _edges_at(data, embedding, alpha, nodes) / len(points)
    kinds = [data.record(u)["kind"] for u in range(n_units)]
    kinds = [k if k in ("error", "skip") else "latent" for k in kinds]
    weights = torch.zeros(nodes, dtype=torch.float64)
    weights[n_units + n_tokens :] = probabilities.double()
    return AttributionGraph(
        adjacency, kinds + ["token"] * n_tokens + ["output"] * n_out, data.names() + token_names + output_names, weights
    )


def _edges_at(data: EffectData, embedding: str, alpha: float, nodes: int) -> torch.Tensor:
    """(nodes, nodes): gradient at the path's point `alpha` x (clean state - baseline)."""
    model, members = data.model, data.members
    n_units, n_sources = data.n_units, data.n_units + data.inputs.shape[1]
    reads = [m.inner.read_site for m in members]
    leaves = [_OnPath(alpha, data.states_of(k), data.baseline[data.coordinates_of(k)]) for k in range(len(members))]
    token = _OnPath(1.0)  # the embeddings stay clean along the path
    # the reads are registered first, so a dictionary reading its own site sees the activation before its edit
    with torch.enable_grad(), capturing(model, reads, detach=False) as acts, patch(model, {embedding: token}):
        with data.editing(leaves):
            out = data.output(model(data.inputs))
    inputs = [token.act, *(leaf.act for leaf in leaves)]
    embedded = token.act.detach()  # the clean embeddings (their baseline is zero)
    shift = data.states - data.baseline
    unit_of = data.unit_of

    def edges(y: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """(n, units + tokens): gradient x (state - baseline) for each seed of y."""
        grads = torch.autograd.grad(y, inputs, seeds, is_grads_batched=True, retain_graph=True, allow_unused=True)
        grads = [torch.zeros(len(seeds), *x.shape) if g is None else g for g, x in zip(grads, inputs)]
        tokens = (grads[0] * embedded).sum(-1)[:, 0]
        per_coordinate = torch.cat(grads[1:], -1)[:, 0] * shift.to(grads[1].dtype)
        units = per_coordinate.new_zeros(len(seeds), n_units).index_add_(1, unit_of, per_coordinate)
        return torch.cat([units, tokens], 1).double()

    adjacency = torch.zeros(nodes, nodes, dtype=torch.float64)
    for k, member in enumerate(members):
        targets = latent_targets(data, k)
        x = acts[member.inner.read_site]
        for chunk in torch.arange(len(targets.nodes)).split(TARGET_CHUNK):
            columns = member.inner.encoder_columns(targets.latents[chunk]).detach()
            seeds = _seeds(x, columns, targets.positions[chunk])
            adjacency[targets.nodes[chunk], :n_sources] = edges(x, seeds)
    eye = torch.eye(out.shape[-1], dtype=out.dtype).unsqueeze(1)
    adjacency[n_sources:, :n_sources] = edges(out, eye)
    return adjacency


def normalised(adjacency: torch.Tensor) -> torch.Tensor:
    """|A| with each row (a target's inputs) summing to 1 (rows without inputs stay 0)."""
    a = adjacency.abs()
    return a / a.sum(1, keepdim=True).clamp_min(1e-10)


def influence(adjacency: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each node's influence on the weighted outputs: weights @ (B + B^2 + ...), B the
    normalised adjacency; the graph has no cycles, so the series ends."""
    b = normalised(adjacency)
    weights = weights.to(b.dtype)
    step, total = weights @ b, torch.zeros_like(weights)
    for _ in range(len(weights) + 1):
        if not step.any():
            return total
        total = total + step
        step = step @ b
    raise ValueError("the attribution graph has a cycle: an edge runs from a later node back to an earlier one")


def scores(graph: AttributionGraph) -> dict[str, float]:
    """circuit-tracer's replacement score and completeness (see the module's text), and the
    latents' fan-in (`fan_in`)."""
    b = normalised(graph.adjacency)
    node = influence(graph.adjacency, graph.output_weights)
    errors, tokens = graph.of_kind("error", "skip"), graph.of_kind("token")
    through_tokens, through_errors = float(node[tokens].sum()), float(node[errors].sum())
    not_from_errors = 1 - b[:, errors].sum(1)
    weight = node + graph.output_weights.to(node.dtype)
    return {
        "replacement_score": through_tokens / max(through_tokens + through_errors, 1e-300),
        "completeness": float((not_from_errors * weight).sum() / weight.sum()),
        "fan_in": fan_in(graph),
    }


FAN_IN_SHARE = 0.9


def fan_in(graph: AttributionGraph, share: float = FAN_IN_SHARE) -> float:
    """How many upstream latents carry `share` of a latent's |edges| from latents, on average
    over the latents that have any: how sparsely the latents are wired (what a connection
    penalty between dictionaries is meant to lower)."""
    latents = graph.of_kind("latent")
    inputs = graph.adjacency[latents][:, latents].abs()
    inputs = inputs[inputs.sum(1) > 0]
    if not len(inputs):
        return 0.0
    ordered = inputs.sort(1, descending=True).values
    carried = ordered.cumsum(1) / ordered.sum(1, keepdim=True)
    return float(((carried < share).sum(1) + 1).double().mean())


def _threshold(values: torch.Tensor, share: float) -> float:
    """The smallest value among the largest ones that together carry `share` of the sum."""
    ordered = values.flatten().sort(descending=True).values
    cumulative = ordered.cumsum(0) / ordered.sum().clamp_min(1e-300)
    return float(ordered[min(int(torch.searchsorted(cumulative, share)), len(ordered) - 1)])


@dataclass
class Pruned:
    nodes: torch.Tensor  # (nodes,) bool
    edges: torch.Tensor  # (nodes, nodes) bool, [target, source]
    influence: torch.Tensor  # (nodes,) each node's influence on the outputs, before pruning
    edge_influence: torch.Tensor  # (nodes, nodes) each edge's, among the nodes kept by influence


def prune(graph: AttributionGraph, node_share: float = NODE_SHARE, edge_share: float = EDGE_SHARE) -> Pruned:
    """Keep the nodes of most influence (`node_share` of it), then the edges of most
    influence among them (`edge_share`); then drop nodes left without a way to the outputs
    (no outgoing edge) or, for latents, without an incoming one, until none is."""
    if not (0 <= node_share <= 1 and 0 <= edge_share <= 1):
        raise ValueError(f"the pruning shares must be in [0, 1], got {node_share} and {edge_share}")
    weights = graph.output_weights
    node = influence(graph.adjacency, weights)
    ends = graph.of_kind("token", "output")
    keep = (node >= _threshold(node, node_share)) | ends
    kept = graph.adjacency * keep[:, None] * keep[None, :]
    b = normalised(kept)
    edge_weight = b * (influence(kept, weights) + weights)[:, None]
    edges = (edge_weight >= _threshold(edge_weight, edge_share)) & (edge_weight > 0)
    latents = graph.of_kind("latent")
    while True:
        edges &= keep[:, None] & keep[None, :]
        new = keep & (ends | (edges.any(0) & (~latents | edges.any(1))))
        if torch.equal(new, keep):
            return Pruned(keep, edges, node, edge_weight)
        keep = new


def require_units(pruned: Pruned, graph: AttributionGraph, node_share: float) -> None:
    """An error when no unit (latent, error) survives pruning: the graph would be the tokens
    straight to the outputs."""
    if not pruned.nodes[graph.of_kind("latent", "error", "skip")].any():
        raise ValueError(
            f"no latent or error survives pruning to {node_share:g} of the influence (the tokens carry it all "
            "straight to the outputs): raise --node-share"
        )
