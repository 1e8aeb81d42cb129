"""Batch losses and their gradients for every chain at once.

Chains are vectorised with `torch.func.functional_call` + `vmap` over stacked parameter
copies when the model allows it (with one copy of the data when every chain has the same
batch), and run in a loop otherwise. The two agree up to floating-point reordering.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch.func import functional_call, grad_and_value, vmap

from unweave.slt.updates import Weights

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # loss_fn(model(x), y): a batch's mean loss


def row_mean(per_row: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> LossFn:
    """The batch loss that is the mean of `per_row(output, target)`, each row's own loss.

    Saying so lets minibatch SGLD compute every row's loss at w* once, instead of one forward
    pass per chain per step for the control variate L_b(w*) (`sgld.LossAtOptimum`)."""

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return per_row(output, target).mean()

    loss.per_row = per_row  # type: ignore[attr-defined]
    loss.__doc__ = per_row.__doc__
    return loss


Batch = torch.Tensor | Sequence[torch.Tensor]  # (chains, ...) stacked, or the same tensor once per chain


class ChainGradients:
    """`grads(w, x, y, shared) -> (loss, grads)`: per-chain losses (chains,) and gradients.

    vectorize: True runs vmap (falling back to the loop, with a warning, if vmap cannot trace
    the model: data-dependent control flow, .item()); False the loop; "auto" times both on the
    first four calls (two each, the first of each warming up) and keeps the faster.
    `vectorized` says which one the last call used."""

    def __init__(self, model: torch.nn.Module, loss_fn: LossFn, vectorize: bool | str = "auto"):
        def one_loss(p: Weights, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return loss_fn(functional_call(model, p, (x,)), y)

        self._vmapped = vmap(grad_and_value(one_loss))
        self._vmapped_shared = vmap(grad_and_value(one_loss), in_dims=(0, None, None))  # one copy of the data
        self._looped = grad_and_value(one_loss)
        self.auto = vectorize == "auto"
        self.vectorized = vectorize is not False
        self._timings: dict[bool, float] = {}
        self._calls = 0

    def __call__(self, w: Weights, x: Batch, y: Batch, shared: bool) -> tuple[torch.Tensor, Weights]:
        """Losses and gradients at the stacked weights `w`, chain c on batch (x[c], y[c])."""
        call, self._calls = self._calls, self._calls + 1
        if not (self.auto and call < 4):
            return self._compute(w, x, y, shared)
        self.vectorized = call < 2 and self.vectorized
        start = time.perf_counter()
        out = self._compute(w, x, y, shared)
        if out[0].is_cuda:  # kernels run asynchronously: time them, not their launch
            torch.cuda.synchronize(out[0].device)
        self._timings[self.vectorized] = time.perf_counter() - start
        if call == 3:
            self.vectorized = self._timings.get(True, float("inf")) < self._timings[False]
        return out

    def _compute(self, w: Weights, x: Batch, y: Batch, shared: bool) -> tuple[torch.Tensor, Weights]:
        if self.vectorized:
            try:
                g, loss = self._vmapped_shared(w, x[0], y[0]) if shared else self._vmapped(w, x, y)
                return loss.detach(), {n: t.detach() for n, t in g.items()}
            except Exception as err:  # vmap cannot trace every model
                warnings.warn(
                    f"chains could not be vectorised ({type(err).__name__}: {err}); running them in a loop",
                    stacklevel=4,
                )  # the caller of run_chains
                self.vectorized = False
        out = [self._looped({n: t[c] for n, t in w.items()}, x[c], y[c]) for c in range(len(x))]
        loss = torch.stack([o[1].detach() for o in out])
        return loss, {n: torch.stack([o[0][n].detach() for o in out]) for n in w}
