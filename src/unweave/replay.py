"""Forward passes that start at a site: the blocks before it replayed from a recorded pass.

Searching for a quantisation step splices many descriptions into one site on the same
inputs. The blocks of the layer stack (an `nn.ModuleList`, as Hugging Face's
`model.layers` or unweave's `blocks`) that run before the site's block compute the same
thing every time; `Replay` records what the last of them returns once, and while it is
active swaps them for stand-ins: the last returns the recording, the others pass their
input through (their output only feeds the next stand-in). Embeddings and the final norm
and head still run.

Whether this is exact depends on the model's code (a stack whose blocks are also read
elsewhere would see the stand-ins' outputs), so the replayed output is compared with the
full one on the same inputs, and a replay that differs is never used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from unweave.sites import Site


def stack_position(model: nn.Module, site: str) -> tuple[nn.ModuleList, int] | None:
    """The outermost ModuleList on the site's module path and the index of the block the
    site lies in, e.g. (model.layers, 15) for `model.layers.15.mlp`; None if there is none."""
    path = Site.parse(site).module.split(".")
    modules = dict(model.named_modules())
    for depth in range(1, len(path)):
        parent = modules.get(".".join(path[:depth]))
        if isinstance(parent, nn.ModuleList) and path[depth].isdigit():
            return parent, int(path[depth])
    return None


class _PassThrough(nn.Module):
    def forward(self, hidden: Any, *args, **kwargs) -> Any:
        return hidden


class _Recorded(nn.Module):
    def __init__(self, output: Any):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs) -> Any:
        return self.output


class Replay:
    """`run()` (the model on fixed inputs) with the blocks before `site`'s replayed.

    `with replay:` swaps the blocks for the duration of the block when the replay was found
    exact (`replay.exact`); otherwise it changes nothing. `reference` is the full pass's
    output, computed while recording."""

    def __init__(self, model: nn.Module, site: str, run: Callable[[], torch.Tensor]):
        self.exact, self._stand_ins = False, None
        found = stack_position(model, site)
        recorded: dict[str, Any] = {}
        handle = None
        if found is not None and found[1] > 0:
            self.layers, index = found

            def record(_module: nn.Module, _args: tuple, out: Any) -> None:  # returns None: the output is unchanged
                recorded["out"] = out

            handle = self.layers[index - 1].register_forward_hook(record)
        try:
            with torch.no_grad():
                self.reference = run()
        finally:
            if handle is not None:
                handle.remove()
        if "out" not in recorded:
            return
        self._stand_ins = [_PassThrough() for _ in range(index - 1)] + [_Recorded(recorded["out"])]
        with self._swapped(), torch.no_grad():
            replayed = run()
        self.exact = torch.equal(replayed, self.reference)
        if not self.exact:
            self._stand_ins = None  # the recording is never used: do not keep it

    @contextlib.contextmanager
    def _swapped(self) -> Iterator[None]:
        originals = [self.layers[i] for i in range(len(self._stand_ins))]
        for i, stand_in in enumerate(self._stand_ins):
            self.layers[i] = stand_in
        try:
            yield
        finally:
            for i, original in enumerate(originals):
                self.layers[i] = original

    def __enter__(self) -> Replay:
        self._context = self._swapped() if self.exact else contextlib.nullcontext()
        self._context.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._context.__exit__(*exc)
