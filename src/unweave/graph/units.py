"""The units a graph is drawn over, read and edited through one interface.

`editing(model, fn)` hands `fn` the units' state, (batch, coordinates), in the forward
pass and rebuilds the site from what `fn` returns (the same object: the site is left as it
is); `unit_of` says which unit each coordinate belongs to; `values` what each unit's
activity is, for describing it; `names` and `record` how a unit is shown and written.
Neurons (`Units`) have one coordinate each; a dictionary's units (`dictionary_units.py`)
include its error, a vector. `SelectedUnits` keeps some of another set's units,
`SeveralUnits` joins the units of several sites.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from unweave.sites import patch


@dataclass(frozen=True)
class Units:
    """The units at one site: the last axis of its activation, at `position` when the
    activation has a sequence axis (batch, position, ..., units).

    Every kind of unit (these, a dictionary's latents) is read and edited through one
    interface: `editing(model, fn)` hands `fn` the units' state, (batch, coordinates), in the
    forward pass and rebuilds the site from what `fn` returns; `unit_of` says which unit
    each coordinate belongs to (one coordinate per unit here)."""

    site: str
    position: int | None = None

    def of(self, act: torch.Tensor) -> torch.Tensor:
        """(batch, units) from the site's activation."""
        return act if self.position is None else act[:, self.position]

    def names(self, count: int) -> list[str]:
        where = "" if self.position is None else f" @{self.position}"
        return [f"{self.site}[{i}]{where}" for i in range(count)]

    def unit_of(self, coordinates: int) -> torch.Tensor:
        return torch.arange(coordinates)

    def record(self, unit: int) -> dict:
        """The unit as modules.json and circuit.json name it."""
        return {"site": self.site, "index": unit}

    def values(self, state: torch.Tensor) -> torch.Tensor:
        """(batch, units): what each unit's activity is, for describing it."""
        return state

    @contextlib.contextmanager
    def editing(self, model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        def at_site(act: torch.Tensor) -> torch.Tensor:
            return put(act, self.position, fn(self.of(act)))

        with patch(model, {self.site: at_site}):
            yield


def put(act: torch.Tensor, position: int | None, state: torch.Tensor) -> torch.Tensor:
    """`act` with its units at `position` (all of it when None) replaced by `state`,
    differentiably in `state`."""
    if position is None:
        return state
    act = act.clone()
    act[:, position] = state
    return act


@dataclass(frozen=True, eq=False)
class SelectedUnits:
    """Some of another set's units, renumbered 0, 1, ...: a prompt's live latents, say, out
    of every latent at every position (only these enter the graph, whose size grows as the
    square of its units). The rest are held at their values in the clean run of the same
    inputs (`rest`) whenever the units are edited: a latent that did not fire does not start
    firing when an upstream unit is ablated, and a position left out keeps its output."""

    inner: Units
    keep: tuple[int, ...]  # the inner units kept, ascending
    rest: torch.Tensor  # (examples, inner coordinates): the clean state, for the units not kept
    coordinates: torch.Tensor  # the inner coordinates of the kept units
    kept_unit_of: torch.Tensor  # the kept unit (renumbered) of each of those coordinates

    @classmethod
    def of(cls, inner: Units, keep: Sequence[int], clean: torch.Tensor) -> SelectedUnits:
        """`inner`'s units `keep`, of a state whose clean value on the inputs is `clean`."""
        keep = sorted(set(keep))
        unit_of = inner.unit_of(clean.shape[1])
        coordinates = torch.isin(unit_of, torch.as_tensor(keep)).nonzero().flatten()
        renumber = torch.full((int(unit_of.max()) + 1,), -1)
        renumber[keep] = torch.arange(len(keep))
        return cls(inner, tuple(keep), clean, coordinates, renumber[unit_of[coordinates]])

    @property
    def total(self) -> int:
        return self.rest.shape[1]

    @property
    def site(self) -> str:
        return self.inner.site

    @property
    def position(self) -> int | None:
        return self.inner.position

    def names(self, count: int) -> list[str]:
        every = self.inner.names(self.keep[-1] + 1)
        return [every[u] for u in self.keep[:count]]

    def unit_of(self, coordinates: int) -> torch.Tensor:
        return self.kept_unit_of

    def record(self, unit: int) -> dict:
        return self.inner.record(self.keep[unit])

    def values(self, state: torch.Tensor) -> torch.Tensor:
        full = state.new_zeros(len(state), self.total)
        full[:, self.coordinates] = state
        return self.inner.values(full)[:, list(self.keep)]

    @contextlib.contextmanager
    def editing(self, model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        def on_kept(full: torch.Tensor) -> torch.Tensor:
            kept = full[:, self.coordinates]
            new = fn(kept)
            if new is kept:
                return full
            if len(full) != len(self.rest):
                raise ValueError(f"these units hold the rest of {len(self.rest)} inputs, run in one batch")
            edited = self.rest.to(full.dtype).clone()
            edited[:, self.coordinates] = new
            return edited

        with self.inner.editing(model, on_kept):
            yield


@dataclass(frozen=True)
class SeveralUnits:
    """The units of several sites together (a dictionary at each of several layers), one
    after another: member 0's units first. Each member is edited at its own site."""

    members: tuple

    @property
    def site(self) -> list[str]:
        return [m.site for m in self.members]

    @property
    def position(self) -> list[int | None]:
        return [m.position for m in self.members]
