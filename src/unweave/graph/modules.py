"""Modules: groups of units whose effects on the output overlap, found by community
detection on the effect graph, and checked by ablation.

Two units interact when what they do to the output overlaps: the edge between i and j is
|G_ij|, the inner product of their attributed effects over examples and outputs
(`effects.effect_gram`). Units whose effects are orthogonal (they write to outputs, or to
output directions, that the other never touches) have no edge. Louvain communities on that
graph (networkx) are the modules; nothing about the task is given to it.

Separability, by intervention: ablating module i (its units set to their means) changes the
output by D_i, measured, not attributed. Module j's outputs are the output directions D_j
occupies (its principal directions at least `OUTPUT_SIZE` times the size of the strongest). S[i, j] is the size of
D_i within module j's directions, over its size within module i's own: what ablating a
module does elsewhere, as a share of what it does to its own outputs. A cut into parts that do not
interact has S near the identity; the largest off-diagonal entry is the number reported.

Community detection optimises modularity, not separability, and now and then cuts one
interacting part in two. So the cut is then checked by intervention: two modules with
S[i, j] or S[j, i] above `MERGE` do interact and are merged, until none do (`carve`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch

from unweave.graph.effects import EffectData

INACTIVE = 1e-4  # a unit whose squared effect is below this share of the largest does nothing measurable
# A module's outputs: the principal output directions of its change at least this fraction of
# the strongest one's size. (A share of the energy, e.g. 95%, would take in a module's small
# leaks into other modules' outputs; on modular addition mod 37 that made separable
# frequencies look entangled.)
OUTPUT_SIZE = 0.5
# Modules that move each other's outputs by at least half as much as their own are one
# module: a part cut in two by community detection scores ~1 (both halves drive the same
# outputs), while separate parts of trained modular-addition models leak 4-30% into each
# other. (The first choice, 0.25, merged two frequencies of a mod-37 run that leak 0.30.)
MERGE = 0.5


@dataclass
class Modules:
    modules: list[list[int]]  # unit indices, largest effect first
    inactive: list[int]
    shares: list[float]  # each module's share of the total squared effect
    graph: nx.Graph = field(repr=False)


def _largest_first(modules: list[list[int]], own: torch.Tensor) -> list[int]:
    """The order of `modules` by their summed squared effect, largest first."""
    return sorted(range(len(modules)), key=lambda k: -float(own[modules[k]].sum()))


def _ranked(modules: list[list[int]], gram: torch.Tensor, inactive: list[int], graph: nx.Graph) -> Modules:
    """`modules` (already largest first) with their shares of the total squared effect."""
    own = gram.diagonal()
    total = float(own.sum())
    return Modules(modules, inactive, [float(own[m].sum()) / total for m in modules], graph)


def effect_graph(gram: torch.Tensor, inactive: float = INACTIVE) -> tuple[nx.Graph, list[int]]:
    """Nodes: the active units (with their squared effect); edges: |G_ij| between them."""
    own = gram.diagonal()
    active = (own > inactive * own.max()).nonzero().flatten().tolist()
    weights = gram.abs()[active][:, active].numpy().copy()
    np.fill_diagonal(weights, 0)  # a unit's overlap with itself is its effect, a node attribute
    graph = nx.relabel_nodes(nx.from_numpy_array(weights), dict(enumerate(active)))  # an edge per nonzero weight
    nx.set_node_attributes(graph, {i: float(own[i]) for i in active}, "effect")
    dead = sorted(set(range(len(own))) - set(active))
    return graph, dead


def find_modules(gram: torch.Tensor, seed: int = 0) -> Modules:
    """Louvain communities (resolution 1, seeded) of the effect graph."""
    graph, inactive = effect_graph(gram)
    if graph.number_of_nodes() == 0:
        raise ValueError("no unit has a measurable effect on the output; check the site and the output function")
    found = [sorted(c) for c in nx.community.louvain_communities(graph, weight="weight", seed=seed)]
    return _ranked([found[k] for k in _largest_first(found, gram.diagonal())], gram, inactive, graph)


def output_directions(effects: torch.Tensor, size: float = OUTPUT_SIZE) -> torch.Tensor:
    """(outputs, r): the principal output directions of `effects` (examples, outputs) whose
    singular values are at least `size` times the largest."""
    _, s, vh = torch.linalg.svd(effects.double(), full_matrices=False)
    rank = int((s >= size * s[0]).sum())
    return vh[:rank].T


@dataclass
class Separability:
    matrix: list[list[float]]  # S[i][j]: ablating module i, within module j's outputs, over within its own
    directions: list[int]  # rank of each module's output directions
    max_off_diagonal: float


def separability(data: EffectData, modules: list[list[int]]) -> Separability:
    """Ablate each module (its units set to their means) and measure, exactly, how much the
    output moves inside every module's output directions."""
    return separability_of([data.outputs(ablate=m) - data.clean for m in modules])


def separability_of(changes: list[torch.Tensor]) -> Separability:
    """S from each module's measured change of the outputs, (examples, outputs)."""
    dirs = [output_directions(change) for change in changes]
    size = torch.tensor([[float((change.double() @ d).norm()) for d in dirs] for change in changes])
    own = size.diagonal().clamp_min(1e-300)
    matrix = size / own.unsqueeze(1)
    off = matrix.clone()
    off.fill_diagonal_(0)
    return Separability(matrix.tolist(), [d.shape[1] for d in dirs], float(off.max()) if len(changes) > 1 else 0.0)


def carve(data: EffectData, gram: torch.Tensor, seed: int = 0, merge: float = MERGE) -> tuple[Modules, Separability]:
    """Modules of the units at `data`'s site, merged by intervention until every pair is separable."""
    return carve_by(gram, lambda m: data.outputs(ablate=m) - data.clean, seed, merge)


def carve_by(
    gram: torch.Tensor, change: Callable[[list[int]], torch.Tensor], seed: int = 0, merge: float = MERGE
) -> tuple[Modules, Separability]:
    """Louvain modules of `gram`, merged until every pair is separable, where `change(units)`
    measures the outputs' change, (examples, outputs), when those units are ablated together."""
    found = find_modules(gram, seed)
    modules = found.modules
    measured: dict[tuple[int, ...], torch.Tensor] = {}  # a module kept through a merge is not measured again

    def of(module: list[int]) -> torch.Tensor:
        key = tuple(module)
        if key not in measured:
            measured[key] = change(module)
        return measured[key]

    while True:
        sep = separability_of([of(m) for m in modules])
        s = torch.tensor(sep.matrix)
        s = torch.maximum(s, s.T).fill_diagonal_(0)
        if len(modules) < 2 or float(s.max()) <= merge:
            break
        i, j = divmod(int(s.argmax()), len(modules))
        modules = [m for k, m in enumerate(modules) if k not in (i, j)] + [sorted(modules[i] + modules[j])]
    order = _largest_first(modules, gram.diagonal())
    sep = Separability(
        [[sep.matrix[a][b] for b in order] for a in order], [sep.directions[k] for k in order], sep.max_off_diagonal
    )
    return _ranked([modules[k] for k in order], gram, found.inactive, found.graph), sep
