"""Attention heads as units: a head is the d_head coordinates of its output (a zoo
transformer's `blocks.L.attn.hook_z`, (batch, position, head, d_head), or a Hugging Face
model's input to the attention output projection, (batch, position, head x d_head)) at every position,
read and edited through the `units.py` interface. Ablating a head sets its output at each
position to its mean over the inputs there.

A head's effect on the output runs largely through later heads (a previous-token head acts
by shaping an induction head's keys: K-composition), so heads at several layers are judged
by their total effects (`EffectData(..., total=True)`): the gradient at a head's output runs
through every later head. With direct effects that head would look idle while ablating it
breaks the circuit."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from unweave.sites import patch


@dataclass(frozen=True)
class HeadUnits:
    """The heads of one attention layer, every position joined: unit h is head h."""

    site: str  # the per-head output, (batch, position, head, d_head)
    heads: int
    d_head: int
    label: str  # how the layer is named: "L0" gives units L0.H0, L0.H1, ...
    position: int | None = None  # every position (the EffectData members interface)

    def unit_of(self, coordinates: int) -> torch.Tensor:
        return (torch.arange(coordinates) % (self.heads * self.d_head)) // self.d_head

    def names(self, count: int) -> list[str]:
        return [f"{self.label}.H{h}" for h in range(count)]

    def record(self, unit: int) -> dict:
        return {"site": self.site, "index": unit, "kind": "head"}

    def values(self, state: torch.Tensor) -> torch.Tensor:
        """(batch, heads): each head's output norm, averaged over positions."""
        return state.view(len(state), -1, self.heads, self.d_head).norm(dim=-1).mean(1)

    @contextlib.contextmanager
    def editing(self, model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        def at_site(act: torch.Tensor) -> torch.Tensor:
            if act.shape[2:] not in ((self.heads, self.d_head), (self.heads * self.d_head,)):
                raise ValueError(
                    f"{self.site} has shape {tuple(act.shape)}: expected (batch, position, {self.heads}, "
                    f"{self.d_head}) or (batch, position, {self.heads * self.d_head})"
                )
            state = act.flatten(1)
            new = fn(state)
            return act if new is state else new.view(act.shape)

        with patch(model, {self.site: at_site}):
            yield


def transformer_heads(model: nn.Module) -> tuple[HeadUnits, ...]:
    """Every attention layer's heads of a zoo transformer, in the order they run."""
    cfg = model.cfg
    return tuple(
        HeadUnits(f"blocks.{layer}.attn.hook_z", cfg.n_heads, cfg.d_head, f"L{layer}") for layer in range(cfg.n_layers)
    )


def lm_heads(model: nn.Module, layers: list[int] | None = None) -> tuple[HeadUnits, ...]:
    """The attention heads of a Hugging Face causal LM at `layers` (default: every layer),
    each layer's read at the input of its output projection (`anatomy.attn_out`)."""
    from unweave.anatomy import anatomy

    parts = anatomy(model)
    layers = list(range(parts.n_layers)) if layers is None else layers
    bad = [layer for layer in layers if not 0 <= layer < parts.n_layers]
    if bad:
        raise ValueError(f"layers {bad} are not layers of this model: it has layers 0-{parts.n_layers - 1}")
    return tuple(HeadUnits(parts.attn_out(layer), parts.n_heads, parts.d_head, f"L{layer}") for layer in layers)
