"""A hypothesis: a small graph of interpretation nodes, each mapped to a model site.

A node says "the part of the activation at `site` (restricted to `subspace`, at
`positions`) is computed from the input by `fn`": inputs on which `fn` agrees are
interchangeable there. `parents` are the nodes it is claimed to be computed from; a node
with no parents reads the input directly. The hypothesis's top nodes (those no other
node lists as a parent) feed the model's output. Whatever no node claims is resampled
from random inputs, or mean- or zero-ablated at the claimed sites (`unclaimed`).

    sum_node = Node("sum", "blocks.0.hook_resid_post", fn=lambda x: (x[:, 0] + x[:, 1]) % p,
                    subspace=Projection(key_directions), positions=[-1])
    hypothesis = Hypothesis([sum_node], output=lambda logits: logits[:, -1])
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from unweave.sites import SiteError, resolve

UNCLAIMED = ("resample", "mean", "zero")


class HypothesisError(ValueError):
    """A hypothesis that cannot be run as written: unknown site or node, wrong width, a cycle."""


class Subspace:
    """The claimed part of an activation; the rest of the activation is unclaimed."""

    def part(self, act: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check(self, act_shape: tuple[int, ...], where: str) -> None:
        raise NotImplementedError

    def merge(self, current: torch.Tensor, claimed_from: torch.Tensor) -> torch.Tensor:
        """`current` with its claimed part replaced by that of `claimed_from`."""
        return current - self.part(current) + self.part(claimed_from)


@dataclass
class Indices(Subspace):
    """Coordinates along one axis: a head's slice of `o_proj:input`, or `[h]` on axis 2 of `hook_z`."""

    indices: Sequence[int]
    axis: int = -1

    def __post_init__(self):
        self._index = torch.as_tensor(list(self.indices), dtype=torch.long)
        if self._index.numel() == 0:
            raise HypothesisError("Indices subspace is empty; give at least one index")

    def check(self, act_shape: tuple[int, ...], where: str) -> None:
        size = act_shape[self.axis]
        if int(self._index.max()) >= size or int(self._index.min()) < -size:
            raise HypothesisError(
                f"{where}: Indices {list(self.indices)[:8]} out of range for axis {self.axis} "
                f"of size {size} (activation shape {act_shape})"
            )

    def _mask(self, act: torch.Tensor) -> torch.Tensor:
        shape = [1] * act.dim()
        shape[self.axis] = act.shape[self.axis]
        mask = torch.zeros(act.shape[self.axis], dtype=act.dtype, device=act.device)
        mask[self._index.to(act.device)] = 1
        return mask.view(shape)

    def part(self, act: torch.Tensor) -> torch.Tensor:
        return act * self._mask(act)


class Projection(Subspace):
    """The span of the rows of `basis` (k, d) in the last dimension, orthonormalised here."""

    def __init__(self, basis: torch.Tensor):
        basis = torch.as_tensor(basis, dtype=torch.float64)
        if basis.dim() != 2 or basis.shape[0] == 0:
            raise HypothesisError(f"Projection basis must have shape (k, d) with k >= 1, got {tuple(basis.shape)}")
        q, r = torch.linalg.qr(basis.T)
        rank = int((r.diagonal().abs() > 1e-9 * r.diagonal().abs().max()).sum())
        self.basis = q[:, :rank].T.float()  # (rank, d), orthonormal rows
        self.width = basis.shape[1]

    def check(self, act_shape: tuple[int, ...], where: str) -> None:
        if act_shape[-1] != self.width:
            raise HypothesisError(
                f"{where}: Projection basis has width {self.width} but the activation's last "
                f"dimension is {act_shape[-1]} (shape {act_shape}); "
                f"give a basis of shape (k, {act_shape[-1]})"
            )

    def part(self, act: torch.Tensor) -> torch.Tensor:
        b = self.basis.to(act.device, act.dtype)
        return (act @ b.T) @ b


class Latents(Subspace):
    """The decoded contribution of a set of dictionary latents (an SAE from `unweave.dictionaries`)."""

    def __init__(self, dictionary: nn.Module, ids: Sequence[int]):
        self.dictionary, self.ids = dictionary, torch.as_tensor(list(ids), dtype=torch.long)
        width = dictionary.W_dec.shape[0]
        if self.ids.numel() == 0 or int(self.ids.max()) >= width or int(self.ids.min()) < 0:
            raise HypothesisError(f"Latents ids must be in [0, {width}) (the dictionary's width), got {list(ids)[:8]}")

    def check(self, act_shape: tuple[int, ...], where: str) -> None:
        d_in = self.dictionary.W_dec.shape[1]
        if act_shape[-1] != d_in:
            raise HypothesisError(
                f"{where}: the dictionary reads width {d_in} but the activation's last "
                f"dimension is {act_shape[-1]} (shape {act_shape}); "
                "use a dictionary trained at this site"
            )

    def part(self, act: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            latents = self.dictionary.encode(act.reshape(-1, act.shape[-1]))
        return (latents[:, self.ids] @ self.dictionary.W_dec[self.ids]).reshape(act.shape)


@dataclass(eq=False)
class Node:
    name: str
    site: str
    # inputs (n, ...) -> values (n,) or (n, k); None: the node depends on the whole input,
    # so only the input itself is interchangeable with it (never resampled)
    fn: Callable[[torch.Tensor], torch.Tensor] | None
    parents: Sequence[Node] = ()
    subspace: Subspace | None = None  # None: the whole activation
    positions: Sequence[int] | None = None  # along dim 1 (sequence position); None: all

    def claimed(self, act: torch.Tensor) -> torch.Tensor:
        """A 0/1-weighted copy of `act` holding only the claimed part (subspace and positions)."""
        part = act if self.subspace is None else self.subspace.part(act)
        if self.positions is None:
            return part
        keep = torch.zeros(act.shape[1], dtype=act.dtype, device=act.device)
        keep[list(self.positions)] = 1
        return part * keep.view(1, -1, *([1] * (act.dim() - 2)))

    def merge(self, current: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return current - self.claimed(current) + self.claimed(source)


@dataclass
class Hypothesis:
    """Nodes (any order; parents are reached through `Node.parents`) and how to read the output.

    `output` maps the model's return value to logits (n, classes) at the positions scored;
    `predict` (optional) maps {node name: values} to the label the interpretation predicts,
    used for interchange intervention accuracy.
    """

    nodes: Sequence[Node]
    output: Callable = lambda out: out
    unclaimed: str = "resample"
    predict: Callable[[dict], torch.Tensor] | None = None
    name: str = "hypothesis"
    all_nodes: list[Node] = field(init=False)

    def __post_init__(self):
        if self.unclaimed not in UNCLAIMED:
            raise HypothesisError(f"unclaimed={self.unclaimed!r}; choose one of {', '.join(UNCLAIMED)}")
        if not self.nodes:
            raise HypothesisError("a hypothesis needs at least one node")
        self.all_nodes = _topological(self.nodes)
        names = [n.name for n in self.all_nodes]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise HypothesisError(f"node names must be unique; repeated: {sorted(dup)}")

    @property
    def top(self) -> list[Node]:
        """Nodes that feed the output directly: no other node lists them as a parent."""
        used = {id(p) for n in self.all_nodes for p in n.parents}
        return [n for n in self.all_nodes if id(n) not in used]

    def node(self, name: str) -> Node:
        for n in self.all_nodes:
            if n.name == name:
                return n
        close = difflib.get_close_matches(name, [n.name for n in self.all_nodes], n=3, cutoff=0.3)
        raise HypothesisError(
            f"no node named {name!r}; nodes: {[n.name for n in self.all_nodes]}"
            + (f" (closest: {close})" if close else "")
        )

    def validate(self, model: nn.Module, sample: torch.Tensor) -> None:
        """Check every site exists and every subspace fits, with one forward on `sample`."""
        from unweave.sites import capture

        for n in self.all_nodes:
            try:
                resolve(model, n.site)
            except SiteError as err:
                raise HypothesisError(f"node {n.name!r}: {err}") from None
        acts = capture(model, sorted({n.site for n in self.all_nodes}), sample)
        for n in self.all_nodes:
            shape = tuple(acts[n.site].shape)
            if n.subspace is not None:
                n.subspace.check(shape, f"node {n.name!r} at {n.site}")
            if n.positions is not None:
                if len(shape) < 3:
                    raise HypothesisError(
                        f"node {n.name!r}: positions given but {n.site} has shape {shape} "
                        "(no sequence dimension); drop `positions`"
                    )
                bad = [p for p in n.positions if not -shape[1] <= p < shape[1]]
                if bad:
                    raise HypothesisError(f"node {n.name!r}: positions {bad} out of range for length {shape[1]}")


def _topological(nodes: Sequence[Node]) -> list[Node]:
    """Every node reachable through parents, parents first; a cycle is an error naming it."""
    order: list[Node] = []
    state: dict[int, str] = {}

    def visit(node: Node, path: list[str]) -> None:
        if not isinstance(node, Node):
            raise HypothesisError(
                f"expected a Node, got {type(node).__name__} (under {' -> '.join(path) or 'the top'})"
            )
        if state.get(id(node)) == "done":
            return
        if state.get(id(node)) == "active":
            cycle = path[path.index(node.name) :] + [node.name]
            raise HypothesisError(
                f"the hypothesis graph has a cycle: {' -> '.join(cycle)}; a node cannot be computed from itself"
            )
        state[id(node)] = "active"
        for parent in node.parents:
            visit(parent, path + [node.name])
        state[id(node)] = "done"
        order.append(node)

    for n in nodes:
        visit(n, [])
    return order
