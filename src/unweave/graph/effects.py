"""Each unit's effect on the output, per example: by attribution (gradient x activation, one
backward pass per output for all units at once) and exactly (by ablation).

A unit is one coordinate of the activation at a site, at one sequence position (or the
activation's last axis when it has no position axis). Ablating a unit sets it to its mean
over the data (the baseline); its attributed effect on output o for example x is

    dout_o / dh_i (x) * (h_i(x) - mean h_i),

the first-order estimate of what mean-ablating it changes. Where everything after the site
is linear in the units (modular addition's MLP neurons, whose only reader is the
unembedding) the estimate is exact; `ablated_outputs` measures the true change.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from unweave.sites import capture, patch


@dataclass(frozen=True)
class Units:
    """The units at one site: the last axis of its activation, at `position` when the
    activation has a sequence axis (batch, position, ..., units)."""

    site: str
    position: int | None = None

    def of(self, act: torch.Tensor) -> torch.Tensor:
        """(batch, units) from the site's activation."""
        return act if self.position is None else act[:, self.position]

    def names(self, count: int) -> list[str]:
        where = "" if self.position is None else f" @{self.position}"
        return [f"{self.site}[{i}]{where}" for i in range(count)]


@dataclass
class EffectData:
    """A model, the inputs its units are judged on, and which outputs count."""

    model: nn.Module
    inputs: torch.Tensor
    units: Units
    output: Callable[[torch.Tensor], torch.Tensor]  # the model's output -> (batch, outputs)
    batch_size: int = 512

    def batches(self) -> Iterator[torch.Tensor]:
        yield from self.inputs.split(self.batch_size)

    @functools.cached_property
    def activations(self) -> torch.Tensor:
        """(examples, units) at the site, computed once."""
        site = self.units.site
        with torch.no_grad():
            return torch.cat([self.units.of(capture(self.model, site, x)[site]) for x in self.batches()])

    @functools.cached_property
    def baseline(self) -> torch.Tensor:
        """Each unit's mean over the data: what an ablated unit is set to."""
        return self.activations.mean(0)

    @functools.cached_property
    def clean(self) -> torch.Tensor:
        """(examples, outputs) of the model itself, computed once (every ablation is measured from it)."""
        with torch.no_grad():
            return torch.cat([self.output(self.model(x)) for x in self.batches()])

    @torch.no_grad()
    def outputs(self, ablate: Sequence[int] = ()) -> torch.Tensor:
        """(examples, outputs), with the units in `ablate` set to their means."""
        index = torch.as_tensor(list(ablate), dtype=torch.long)
        if index.numel() == 0:
            return self.clean
        mean = self.baseline[index]

        def ablated(act: torch.Tensor) -> torch.Tensor:
            act = act.clone()
            here = self.units.of(act)  # a view into act
            here[..., index] = mean.to(act.dtype)
            return act

        with patch(self.model, {self.units.site: ablated}):
            return torch.cat([self.output(self.model(x)) for x in self.batches()])

    def attributed_effects(self) -> Iterator[torch.Tensor]:
        """Per batch, (examples, outputs, units): the attributed change of each output when
        each unit is ablated (the negative of gradient x (activation - mean))."""
        site, mean = self.units.site, self.baseline
        for x in self.batches():
            leaf = _Leaf()
            with torch.enable_grad(), patch(self.model, {site: leaf}):
                out = self.output(self.model(x))
                n_out = out.shape[-1]
                grads = torch.eye(n_out, dtype=out.dtype).unsqueeze(1).expand(n_out, *out.shape)
                (jac,) = torch.autograd.grad(out, leaf.act, grads, is_grads_batched=True)
            jac = self.units.of(jac.movedim(0, 1).flatten(0, 1)).unflatten(0, (len(x), n_out))
            act = self.units.of(leaf.act.detach())
            yield -(jac * (act - mean).unsqueeze(1))


class _Leaf:
    """A patch that makes the site's activation a leaf of the graph, to differentiate against."""

    act: torch.Tensor

    def __call__(self, act: torch.Tensor) -> torch.Tensor:
        self.act = act.detach().requires_grad_(True)
        return self.act


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
