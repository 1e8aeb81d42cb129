"""One engine for causal scrubbing and interchange interventions.

Both replace activations at the hypothesis's sites with their values on other inputs and
run the model on; they differ only in which inputs are chosen:

- causal scrubbing (Chan et al. 2022), treeified: the output is computed on a random input
  (everything unclaimed is resampled), with each top node's claimed part taken from an
  input that agrees with the reference on the node's function; a node with parents is
  in turn computed on a random input with its parents' claimed parts taken from inputs
  that agree with *its* input, and so on down the tree.
- interchange interventions (Geiger et al.): run a base input with a node's claimed part
  taken from a source input, and compare with what the interpretation predicts.

Every model call is one batched forward with `unweave.sites.patch` hooks.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from unweave.devices import model_device
from unweave.hypotheses.graph import Hypothesis, HypothesisError, Node
from unweave.sites import capture, capturing, patch

if TYPE_CHECKING:
    from typing import Any

# Below this median number of interchangeable inputs per example, a node's resampling
# mostly returns the example itself and the test says little about that node.
MIN_INTERCHANGEABLE = 2


@dataclass
class _Groups:
    """Inputs grouped by a node's value, for sampling an input that agrees with a reference."""

    group: torch.Tensor  # (n,) group id of each input
    order: torch.Tensor  # input indices sorted by group
    starts: torch.Tensor  # (groups,) offset of each group in `order`
    sizes: torch.Tensor  # (groups,)

    @classmethod
    def of(cls, values: torch.Tensor) -> _Groups:
        values = values.reshape(len(values), -1)
        _, group, sizes = torch.unique(values, dim=0, return_inverse=True, return_counts=True)
        order = torch.argsort(group, stable=True)
        starts = torch.cumsum(sizes, 0) - sizes
        return cls(group, order, starts, sizes)

    def sample(self, refs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        g = self.group[refs]
        offset = (torch.rand(len(refs), generator=gen) * self.sizes[g]).long()
        return self.order[self.starts[g] + offset]


class _Identity:
    """A node whose function is the whole input: the only interchangeable input is itself."""

    def sample(self, refs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return refs


class Engine:
    """A hypothesis bound to a model and a pool of inputs (the distribution resampled from).

    `inputs` is a tensor whose rows the model takes as a batch (token ids, features);
    `forward_kwargs` go to every full forward (e.g. `logits_to_keep=1` for a Hugging Face
    model scored at the last position, which skips the unembedding elsewhere).
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        hypothesis: Hypothesis,
        batch_size: int = 256,
        seed: int = 0,
        forward_kwargs: dict | None = None,
    ):
        if len(inputs) < 2:
            raise HypothesisError(f"need at least 2 inputs to resample from, got {len(inputs)}")
        # inputs stay on the CPU, where node functions read them; each forward moves its batch
        self.model, self.inputs, self.h = model.eval(), inputs, hypothesis
        self.device = model_device(model)
        self.batch_size, self.gen = batch_size, torch.Generator().manual_seed(seed)
        self.forward_kwargs = forward_kwargs or {}
        hypothesis.validate(model, inputs[:2].to(self.device))
        with torch.no_grad():
            self.groups = {
                n.name: _Groups.of(_values(n, inputs)) if n.fn is not None else _Identity()
                for n in hypothesis.all_nodes
            }
        self.warnings = self._check_interchangeable()
        self._means = self._site_means() if hypothesis.unclaimed == "mean" else {}

    # -- one forward, with patches ------------------------------------------------------
    def forward(self, idx: torch.Tensor, patches: dict | None = None) -> Any:
        """The model's raw output on inputs[idx] (before `Hypothesis.output`), with patches."""
        with torch.no_grad(), patch(self.model, patches or {}):
            return self.model(self._batch(idx), **self.forward_kwargs)

    def _batch(self, idx: torch.Tensor | slice) -> torch.Tensor:
        return self.inputs[idx].to(self.device)

    def _run(self, idx: torch.Tensor, patches: dict, read: str | None = None):
        if read is None:
            return self.h.output(self.forward(idx, patches))
        with torch.no_grad(), patch(self.model, patches):
            return capture(self.model, read, self._batch(idx), stop_early=True)[read]

    def _complement(self, site: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """What the unclaimed part of a patched site holds: the run's own value, a mean or zero."""
        mode = self.h.unclaimed
        if mode == "resample":
            return lambda act: act
        if mode == "zero":
            return torch.zeros_like
        return lambda act: (
            self._means[site][: act.shape[1]].expand_as(act) if act.dim() > 2 else self._means[site].expand_as(act)
        )

    def _patches(self, nodes: list[Node], sources: list[torch.Tensor]) -> dict:
        """Site patches that put each node's claimed part from its source activation."""
        by_site: dict[str, list[tuple[Node, torch.Tensor]]] = {}
        for node, src in zip(nodes, sources):
            by_site.setdefault(node.site, []).append((node, src))

        def patcher(site: str, pairs: list[tuple[Node, torch.Tensor]]) -> Callable[[torch.Tensor], torch.Tensor]:
            base = self._complement(site)

            def apply(act: torch.Tensor) -> torch.Tensor:
                new = base(act)
                for node, src in pairs:
                    new = node.merge(new, src)
                return new

            return apply

        return {site: patcher(site, pairs) for site, pairs in by_site.items()}

    # -- causal scrubbing ---------------------------------------------------------------
    def _random(self, n: int) -> torch.Tensor:
        return torch.randint(len(self.inputs), (n,), generator=self.gen)

    def _scrubbed_activation(self, node: Node, x: torch.Tensor) -> torch.Tensor:
        """The activation at `node.site` when the node's input is `x`, computed as the
        hypothesis says: from x directly (no parents), else from its parents only."""
        if not node.parents:
            return self._run(x, {}, read=node.site)
        parents = list(node.parents)
        sources = [self._scrubbed_activation(p, self.groups[p.name].sample(x, self.gen)) for p in parents]
        return self._run(self._random(len(x)), self._patches(parents, sources), read=node.site)

    def scrub_batch(self, refs: torch.Tensor) -> torch.Tensor:
        """Scrubbed output for reference inputs `refs` (indices into `inputs`)."""
        top = self.h.top
        sources = [self._scrubbed_activation(t, self.groups[t.name].sample(refs, self.gen)) for t in top]
        return self._run(self._random(len(refs)), self._patches(top, sources))

    # -- interchange interventions ------------------------------------------------------
    def source_activations(self, names: list[str], source: torch.Tensor) -> list[torch.Tensor]:
        """Each named node's activation on inputs[source] (one forward, stopped at the last site)."""
        nodes = [self.h.node(n) for n in names]
        sites = list(dict.fromkeys(n.site for n in nodes))
        with torch.no_grad():
            acts = capture(self.model, sites, self._batch(source), stop_early=True)
        return [acts[n.site] for n in nodes]

    def interchange_batch(
        self, names: list[str], base: torch.Tensor, source: torch.Tensor, sources: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Output on `base` with the named nodes' claimed parts from `source`, and the label
        the interpretation predicts for that counterfactual. `sources` (the nodes'
        activations on `source`) may be given when they were computed already."""
        if self.h.predict is None:
            raise HypothesisError(
                "interchange interventions need Hypothesis(predict=...): the label the "
                "interpretation predicts from its node values"
            )
        nodes = [self.h.node(n) for n in names]
        sources = self.source_activations(names, source) if sources is None else sources
        out = self._run(base, self._patches(nodes, sources))
        values = {n.name: _values(n, self.inputs[base]) for n in self.h.all_nodes}
        values.update({n.name: _values(n, self.inputs[source]) for n in nodes})
        return out, self.h.predict(values)

    # -- checks -------------------------------------------------------------------------
    def _check_interchangeable(self) -> list[str]:
        found = []
        for node in self.h.all_nodes:
            g = self.groups[node.name]
            if isinstance(g, _Identity):
                continue
            per_input = g.sizes[g.group].float()
            if per_input.median() < MIN_INTERCHANGEABLE:
                alone = float((per_input == 1).float().mean())
                msg = (
                    f"node {node.name!r}: {alone:.0%} of inputs share their value with no other input, so "
                    f"resampling keeps them unchanged; add inputs or make the node's function coarser"
                )
                warnings.warn(msg, stacklevel=3)
                found.append(msg)
        return found

    def _site_means(self) -> dict[str, torch.Tensor]:
        sites = sorted({n.site for n in self.h.all_nodes})
        sums: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for start in range(0, len(self.inputs), self.batch_size):
                with capturing(self.model, sites) as acts:
                    self.model(self._batch(slice(start, start + self.batch_size)))
                for s in sites:
                    sums[s] = sums.get(s, 0) + acts[s].double().sum(0)
        return {s: (v / len(self.inputs)).float() for s, v in sums.items()}


def _values(node: Node, inputs: torch.Tensor) -> torch.Tensor:
    if node.fn is None:
        return inputs
    values = torch.as_tensor(node.fn(inputs))
    if values.shape[:1] != inputs.shape[:1]:
        raise HypothesisError(
            f"node {node.name!r}: fn must return one value per input (shape ({len(inputs)}, ...)), "
            f"got shape {tuple(values.shape)}"
        )
    return values
