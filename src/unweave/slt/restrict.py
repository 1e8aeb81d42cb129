"""A model whose only parameters are slices of another model's weights.

The LLC of one attention head samples its rows of the query, key and value projections and
its columns of the output projection, with every other weight held at w*. `Restricted` makes
those slices the parameters of a module of their own, so that the sampler, the Hessian, the
rule and every diagnostic work on it unchanged (they only ever see `named_parameters()`).
The wrapped model is not registered as a submodule: its weights are not sampled, and it is
not modified (other units can be measured on it afterwards)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call


@dataclass(frozen=True)
class Slice:
    """Indices start:stop along dimension `dim` of the parameter `param`."""

    param: str
    dim: int
    start: int
    stop: int

    def label(self) -> str:
        index = ":, " * self.dim + f"{self.start}:{self.stop}"
        return f"{self.param}[{index}]"


class Restricted(nn.Module):
    """`model` with only `slices` free; calling it calls `model` with the slices put in place."""

    def __init__(self, model: nn.Module, slices: list[Slice]):
        super().__init__()
        object.__setattr__(self, "wrapped", model)  # not a submodule: its parameters stay out of ours
        params = dict(model.named_parameters())
        by_param: dict[str, list[tuple[Slice, int]]] = {}
        for i, s in enumerate(slices):
            if s.param not in params:
                raise ValueError(f"no parameter {s.param!r} in {type(model).__name__}")
            size = params[s.param].shape[s.dim]
            if not 0 <= s.start < s.stop <= size:
                raise ValueError(f"slice {s.label()} is outside the parameter's {size} entries along dim {s.dim}")
            by_param.setdefault(s.param, []).append((s, i))
        for name, group in by_param.items():
            group.sort(key=lambda item: item[0].start)
            if len({s.dim for s, _ in group}) > 1:
                raise ValueError(f"slices of {name} must all run along one dimension")
            for (a, _), (b, _) in zip(group, group[1:]):
                if b.start < a.stop:
                    raise ValueError(f"slices {a.label()} and {b.label()} overlap")
        self.slices = list(slices)
        self._by_param = by_param
        self.pieces = nn.ParameterList(
            nn.Parameter(params[s.param].detach().narrow(s.dim, s.start, s.stop - s.start).clone()) for s in slices
        )

    def full_weights(self) -> dict[str, torch.Tensor]:
        """Every sliced parameter of the wrapped model, with this module's pieces in place."""
        out = {}
        for name, group in self._by_param.items():
            base = self.wrapped.get_parameter(name).detach()
            dim = group[0][0].dim
            parts, at = [], 0
            for s, i in group:
                if s.start > at:
                    parts.append(base.narrow(dim, at, s.start - at))
                parts.append(self.pieces[i])
                at = s.stop
            if at < base.shape[dim]:
                parts.append(base.narrow(dim, at, base.shape[dim] - at))
            out[name] = torch.cat(parts, dim)
        return out

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.wrapped, self.full_weights(), args, kwargs, strict=False)
