"""An attribution graph's edges checked by measurement (`attribution.py` draws them).

Every check runs the model with each dictionary's state held (its clean state, or with some
units at their baseline), so that only direct paths carry a change, and reads every
latent's pre-activation (less its constants) and every output (`Readout`, one per prompt:
the clean run and the encoder columns are taken once for all its checks):
- `Readout.ablated`: the change of every node when a group of units is set to its baseline;
  `edge_check` compares a source's edges with it (`check_edges` for single units of one
  prompt; the graph over many prompts pools the same changes by name);
- `Readout.whole` and `sums_error`: whether the units' edges into a node add up to its
  change with every unit at its baseline.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import spearmanr

from unweave.graph.attribution import AttributionGraph, Pruned, check_data, latent_targets
from unweave.graph.effects import EffectData
from unweave.sites import capturing


@dataclass
class EdgeCheck:
    sources: list  # the units removed, one group at a time (or, aggregated, the nodes' names)
    predicted: list[float]  # -A[t, s] for every target t downstream of each source
    measured: list[float]  # the change of t when s is set to its baseline, every other unit held
    pearson: float
    spearman: float  # the ranks': Pearson alone can be carried by a few large edges
    max_relative_error: float  # of the largest changes: |predicted - measured| / max |measured|


class Readout:
    """Runs of `data`'s model with each member edited, read as every latent's pre-activation
    (its encoder column's inner product with the dictionary's input) and every output; the
    columns, and the run with every member held clean, are taken once for all the checks."""

    def __init__(self, data: EffectData):
        check_data(data)
        self.data = data
        self.targets = [latent_targets(data, k) for k in range(len(data.members))]
        self.columns = [m.inner.encoder_columns(t.latents).detach() for m, t in zip(data.members, self.targets)]

    def __call__(self, fns: list) -> torch.Tensor:
        """Per node, with member k edited by fns[k]; 0 for the sources."""
        data = self.data
        model, members = data.model, data.members
        pre = torch.zeros(data.n_units + data.inputs.shape[1], dtype=torch.float64)
        with torch.no_grad(), capturing(model, [m.inner.read_site for m in members]) as acts, data.editing(fns):
            out = data.output(model(data.inputs))[0]
        for m, t, column in zip(members, self.targets, self.columns):
            rows = acts[m.inner.read_site][0, t.positions].to(column.dtype)
            pre[t.nodes] = (rows * column.T).sum(-1).double()
        return torch.cat([pre, out.double()])

    def held(self, sources: list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        """Every member held at its clean state, `sources` (units of all) at their baseline."""
        return self([_held(self.data, k, sources) for k in range(len(self.data.members))])

    @functools.cached_property
    def clean(self) -> torch.Tensor:
        return self.held()

    def ablated(self, groups: list[list[int]]) -> torch.Tensor:
        """(groups, nodes): the change of every latent's pre-activation and every output when
        the units of one group are set to their baseline together, every member's other units
        held at their clean state (so only direct paths carry the change); 0 at the sources."""
        return torch.stack([self.held(group) - self.clean for group in groups])

    def whole(self) -> torch.Tensor:
        """Per node, measured: its value (a latent's pre-activation less constants, an output)
        in the clean run minus its value with every unit at its baseline (every member's
        latents and errors; their other coordinates held clean, the tokens as they are)."""
        data = self.data
        baseline = [data.baseline[data.coordinates_of(k)] for k in range(len(data.members))]
        return self.clean - self([(lambda s, b=b: b.to(s.dtype).expand_as(s).clone()) for b in baseline])


def check_edges(
    data: EffectData, graph: AttributionGraph, sources: list[int], readout: Readout | None = None
) -> EdgeCheck:
    """Set each source unit alone to its baseline (`Readout.ablated`; `readout`: one already
    taken of `data`): the edges are first-order estimates of the changes."""
    if not sources:
        return edge_check(graph, sources, torch.zeros(0, graph.n_nodes))
    return edge_check(graph, sources, (readout or Readout(data)).ablated([[s] for s in sources]))


def edge_check(graph: AttributionGraph, sources: list[int], changes: torch.Tensor, names: bool = False) -> EdgeCheck:
    """Each source's edges into the latents and outputs against the measured changes of those
    nodes when it is removed (`changes[i]` for `sources[i]`); `names`: record the sources by
    name (the graph over many prompts) instead of number."""
    downstream = graph.of_kind("latent", "output")
    predicted, measured = [], []
    for s, change in zip(sources, changes):
        into = downstream & (graph.adjacency[:, s] != 0)
        predicted += (-graph.adjacency[into, s]).tolist()
        measured += change[into].tolist()
    p, m = np.array(predicted), np.array(measured)
    top = max(float(np.abs(m).max()), 1e-300) if len(m) else 1.0
    return EdgeCheck(
        [graph.names[s] for s in sources] if names else list(sources),
        predicted,
        measured,
        float(np.corrcoef(p, m)[0, 1]) if len(p) > 2 else float("nan"),
        float(spearmanr(p, m).statistic) if len(p) > 2 else float("nan"),
        float(np.abs(p - m).max() / top) if len(p) else 0.0,
    )


def checked_sources(graph: AttributionGraph, pruned: Pruned, count: int) -> tuple[list[int], list[int]]:
    """The `count` most influential units with an edge out (latents, errors), and the `count`
    most influential latents: the sources the edge checks remove."""
    writes = graph.of_kind("latent", "error", "skip") & (graph.adjacency != 0).any(0)
    ranked = sorted(writes.nonzero().flatten().tolist(), key=lambda u: -float(pruned.influence[u]))
    return ranked[:count], [u for u in ranked if graph.kinds[u] == "latent"][:count]


def sums_error(graph: AttributionGraph, changes: torch.Tensor) -> float:
    """How far the units' edges into the latents and outputs add up from their measured
    whole changes (`Readout.whole`): |sums - changes| / |changes| over those nodes (0 where
    the model is linear outside its dictionaries, or with integrated edges as the steps
    grow)."""
    targets, units = graph.of_kind("latent", "output"), graph.of_kind("latent", "error", "skip")
    summed = graph.adjacency[targets][:, units].sum(1)
    return float((summed - changes[targets]).norm() / changes[targets].norm().clamp_min(1e-300))


def _held(data: EffectData, k: int, sources: list[int] | tuple[int, ...]):
    """Member k's edit: its clean state, with those of `sources` (units of all) that are k's
    at their baseline."""
    state = data.states_of(k).clone()
    units, _ = data.member_span(k)
    own_sources = [s for s in sources if units.start <= s < units.stop]
    if own_sources:
        coordinates = data.coordinates_of(k)
        own = torch.isin(data.unit_of[coordinates], torch.tensor(own_sources)).nonzero().flatten()
        state[:, own] = data.baseline[coordinates][own]

    def held(current: torch.Tensor) -> torch.Tensor:
        return state.to(current.dtype)

    return held
