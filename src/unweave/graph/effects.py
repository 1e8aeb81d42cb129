"""Each unit's effect on the output, per example: by attribution (gradient x activation, one
backward pass per output for all units at once) and exactly (by ablation).

A unit (`units.py`) is a neuron, or a dictionary's latent or error, at a site. Ablating a
unit sets its coordinates to their mean over the data, or to zero (the baseline); its
attributed effect on output o for example x is

    sum over its coordinates i of  dout_o / dh_i (x) * (h_i(x) - baseline_i),

the first-order estimate of what ablating it changes. Where everything after the site is
linear in the units (modular addition's MLP neurons, whose only reader is the unembedding)
the estimate is exact; `EffectData.outputs` measures the true change.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from unweave.graph.units import SeveralUnits, Units


@dataclass
class EffectData:
    """A model, the inputs its units are judged on, and which outputs count."""

    model: nn.Module
    inputs: torch.Tensor
    units: Units | SeveralUnits
    output: Callable[[torch.Tensor], torch.Tensor]  # the model's output -> (batch, outputs)
    batch_size: int = 512
    # what an ablated unit is set to: its mean over the inputs, or zero (a single prompt has no
    # distribution to average over: its latents are switched off, its error removed), or given
    # values, one per coordinate of the state (a head's mean over other prompts)
    ablate_to: str | torch.Tensor = "mean"
    # attribute each unit's total effect (the gradient runs through the other members' units,
    # e.g. a layer-0 head acting through a layer-1 head) instead of its direct effect
    total: bool = False

    @property
    def members(self) -> tuple:
        return self.units.members if isinstance(self.units, SeveralUnits) else (self.units,)

    def batches(self) -> Iterator[torch.Tensor]:
        yield from self.inputs.split(self.batch_size)

    @contextlib.contextmanager
    def editing(self, fns: Sequence[Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
        """Each member edited by its own function."""
        with contextlib.ExitStack() as stack:
            for member, fn in zip(self.members, fns):
                stack.enter_context(member.editing(self.model, fn))
            yield

    @functools.cached_property
    def _member_states(self) -> list[torch.Tensor]:
        """Per member, (examples, its coordinates), computed once."""
        seen: list[list[torch.Tensor]] = [[] for _ in self.members]

        def recorder(k: int) -> Callable[[torch.Tensor], torch.Tensor]:
            def record(state: torch.Tensor) -> torch.Tensor:
                seen[k].append(state.detach())
                return state

            return record

        with torch.no_grad(), self.editing([recorder(k) for k in range(len(self.members))]):
            for x in self.batches():
                self.model(x)
        return [torch.cat(s) for s in seen]

    @functools.cached_property
    def _offsets(self) -> list[tuple[int, int]]:
        """Per member, (its first coordinate, its first unit) in the whole."""
        offsets, coordinate, unit = [], 0, 0
        for member, states in zip(self.members, self._member_states):
            offsets.append((coordinate, unit))
            coordinate += states.shape[1]
            unit += int(member.unit_of(states.shape[1]).max()) + 1
        return offsets

    @functools.cached_property
    def states(self) -> torch.Tensor:
        """(examples, coordinates) of the units' state, members one after another."""
        return torch.cat(self._member_states, 1)

    @functools.cached_property
    def unit_of(self) -> torch.Tensor:
        """The unit each coordinate of the state belongs to."""
        return torch.cat(
            [m.unit_of(s.shape[1]) + u for m, s, (_, u) in zip(self.members, self._member_states, self._offsets)]
        )

    @property
    def n_units(self) -> int:
        return int(self.unit_of.max()) + 1

    def states_of(self, k: int) -> torch.Tensor:
        """(examples, coordinates) of member k's state."""
        return self._member_states[k]

    def coordinates_of(self, k: int) -> slice:
        """Member k's coordinates (a slice of the whole state, of `baseline`, of `unit_of`)."""
        start = self._offsets[k][0]
        return slice(start, start + self._member_states[k].shape[1])

    def member_span(self, k: int) -> tuple[slice, int]:
        """Member k's units (a slice of all units) and its number of coordinates."""
        first = self._offsets[k][1]
        end = self._offsets[k + 1][1] if k + 1 < len(self.members) else self.n_units
        return slice(first, end), self._member_states[k].shape[1]

    def _member_of(self, unit: int) -> tuple[int, int]:
        """(member, its own unit number) of a unit."""
        k = max(i for i, (_, first) in enumerate(self._offsets) if first <= unit)
        return k, unit - self._offsets[k][1]

    def names(self) -> list[str]:
        names = []
        for k, member in enumerate(self.members):
            units, _ = self.member_span(k)
            names += member.names(units.stop - units.start)
        return names

    def record(self, unit: int) -> dict:
        """The unit as modules.json and circuit.json name it."""
        k, own = self._member_of(unit)
        return self.members[k].record(own)

    @functools.cached_property
    def activations(self) -> torch.Tensor:
        """(examples, units): each unit's activity, for describing it."""
        return torch.cat([m.values(s) for m, s in zip(self.members, self._member_states)], 1)

    @functools.cached_property
    def baseline(self) -> torch.Tensor:
        """Each coordinate's mean over the data, or zero: what an ablated unit is set to."""
        if isinstance(self.ablate_to, torch.Tensor):
            if self.ablate_to.shape != self.states[0].shape:
                raise ValueError(
                    f"ablate_to has shape {tuple(self.ablate_to.shape)}: expected one value per coordinate of the "
                    f"units' state, {tuple(self.states[0].shape)}"
                )
            return self.ablate_to
        return torch.zeros_like(self.states[0]) if self.ablate_to == "zero" else self.states.mean(0)

    @functools.cached_property
    def clean(self) -> torch.Tensor:
        """(examples, outputs) of the model itself, computed once (every ablation is measured from it)."""
        with torch.no_grad():
            return torch.cat([self.output(self.model(x)) for x in self.batches()])

    @torch.no_grad()
    def outputs(self, ablate: Sequence[int] = ()) -> torch.Tensor:
        """(examples, outputs), with the units in `ablate` set to their baseline."""
        if len(ablate) == 0:
            return self.clean
        index = torch.isin(self.unit_of, torch.as_tensor(list(ablate), dtype=torch.long)).nonzero().flatten()

        def ablater(k: int) -> Callable[[torch.Tensor], torch.Tensor]:
            own = self.coordinates_of(k)
            start = own.start
            mine = index[(index >= start) & (index < own.stop)]
            value = self.baseline[mine]

            def ablated(state: torch.Tensor) -> torch.Tensor:
                if len(mine) == 0:
                    return state
                state = state.clone()
                state[:, mine - start] = value.to(state.dtype)
                return state

            return ablated

        with self.editing([ablater(k) for k in range(len(self.members))]):
            return torch.cat([self.output(self.model(x)) for x in self.batches()])

    def attributed_effects(self) -> Iterator[torch.Tensor]:
        """Per batch, (examples, outputs, units): the attributed change of each output when
        each unit is ablated (the negative of gradient x (activation - baseline), summed over
        a unit's coordinates). With several members the gradient at one member's units runs
        through the rest of the network but, unless `total`, not through the other members'
        units (a dictionary reads its input detached in any case): each unit's direct effect.
        With `total` it runs through them too: each unit's total effect."""
        baseline, unit_of, n_units = self.baseline, self.unit_of, self.n_units
        for x in self.batches():
            leaves = [_Tap() if self.total else _Leaf() for _ in self.members]
            with torch.enable_grad(), self.editing(leaves):
                out = self.output(self.model(x))
                n_out = out.shape[-1]
                grads = torch.eye(n_out, dtype=out.dtype).unsqueeze(1).expand(n_out, *out.shape)
                jacs = torch.autograd.grad(out, [leaf.act for leaf in leaves], grads, is_grads_batched=True)
            jac = torch.cat(jacs, -1)
            act = torch.cat([leaf.value for leaf in leaves], 1)
            per_coordinate = -(jac.movedim(0, 1) * (act - baseline).unsqueeze(1))
            if len(unit_of) == n_units:  # one coordinate per unit
                yield per_coordinate
            else:
                yield per_coordinate.new_zeros(len(x), n_out, n_units).index_add_(2, unit_of, per_coordinate)


class _Leaf:
    """An edit that makes the units' state a leaf of the graph, to differentiate against:
    what comes after it sees no path back to earlier units (direct effects)."""

    act: torch.Tensor

    def __call__(self, act: torch.Tensor) -> torch.Tensor:
        self.act = act.detach().requires_grad_(True)
        return self.act

    @property
    def value(self) -> torch.Tensor:
        return self.act.detach()


class _Tap:
    """An edit that adds a zero leaf to the units' state, leaving the graph whole: the
    gradient at the leaf is the output's total derivative in the state, through every later
    unit."""

    act: torch.Tensor  # the zero leaf
    value: torch.Tensor  # the state

    def __call__(self, state: torch.Tensor) -> torch.Tensor:
        self.value = state.detach()
        self.act = torch.zeros_like(self.value, requires_grad=True)
        return state + self.act


def centred_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits minus their mean over the vocabulary: the part a softmax sees."""
    return logits - logits.mean(-1, keepdim=True)


def effect_gram(data: EffectData) -> torch.Tensor:
    """(units, units) inner products of the units' attributed effects, summed over examples
    and outputs (float64): G_ii is a unit's squared effect, G_ij the overlap of two units'."""
    gram = None
    for effects in data.attributed_effects():
        flat = effects.flatten(0, 1).double()
        gram = flat.T @ flat if gram is None else gram + flat.T @ flat
    return gram
