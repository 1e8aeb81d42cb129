"""Diagnostics of SGLD chains, as callbacks the chain loop calls once per step.

A callback sees the chains at the point where this step's gradient was taken (before the
update) and returns True to stop all chains at once: the callbacks after it are skipped
for that step and no update is applied. The loop calls `Divergence` first, so the others
only ever see finite losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from unweave.slt.updates import Weights


@dataclass
class StepState:
    step: int  # 0-based, burn-in included
    loss: torch.Tensor  # (chains,) batch loss at w
    w: Weights  # (chains, ...) the weights the loss and drift were taken at
    drift: Weights  # grad log p(w), per parameter
    G: dict[str, torch.Tensor | None]  # the update rule's preconditioner (None: the identity)
    log_target: torch.Tensor  # (chains,) float64 log p(w) up to a constant
    epsilon: float  # the step size the update rule will use
    recorded: torch.Tensor | None = None  # (chains,) what the loss trace records, when not `loss` (see run_chains)
    # w, drift and G (None: the identity) as the flat (chains, P) buffers the views above are of
    flat: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None


class Callback(Protocol):
    def __call__(self, state: StepState) -> bool | None:
        """Look at one step; True stops the chains."""


class Divergence:
    """Stop every chain at the first non-finite batch loss: one NaN poisons the vectorised step
    and a diverged chain never comes back. `step` is where that happened (None: never)."""

    def __init__(self) -> None:
        self.step: int | None = None

    def __call__(self, state: StepState) -> bool:
        """True (stop) when any chain's loss is NaN or infinite."""
        if torch.isfinite(state.loss).all():
            return False
        self.step = state.step
        return True


class LossTrace:
    """The batch loss of every chain at every draw after burn-in, in float64; draws never
    reached (the chains stopped) stay NaN, which is how the LLC estimate tells them apart."""

    def __init__(self, chains: int, draws: int, burn_in: int):
        self.burn_in = burn_in
        self.losses = torch.full((chains, draws), float("nan"), dtype=torch.float64)

    def __call__(self, state: StepState) -> None:
        """Record this step's losses if it is a draw."""
        if state.step >= self.burn_in:
            loss = state.loss if state.recorded is None else state.recorded
            self.losses[:, state.step - self.burn_in] = loss.double().cpu()


class MALAAcceptance:
    """Mean Metropolis-adjusted Langevin acceptance probability of each chain's moves.

    The step from w to w' is a draw from q(w' | w) = N(w + eps/2 G drift(w), eps G); MALA would
    accept it with probability min(1, p(w') q(w | w') / (p(w) q(w' | w))). SGLD accepts every
    move; a mean far below 1 says the step size is too large for the discretisation to be
    trusted. Computed at each step for the move that led there, with the G of the move's start.

    With d = w' - w, D = drift(w), D' = drift(w') and a = eps / 2, the log ratio of the proposals,
    (|d - a G D|^2_G - |d + a G D'|^2_G) / (2 eps) in the metric G^-1, is written out as
    -d.(D + D') / 2 + a / 4 (D.G D - D'.G D'): three inner products over the weights per step
    instead of two squared norms of differences (the weights are a megabyte-sized buffer on
    modular addition: the passes over it were a tenth of the step)."""

    def __init__(self, chains: int):
        self.total = torch.zeros(chains, dtype=torch.float64)
        self.count = 0
        self._prev: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor] | None = None

    def __call__(self, state: StepState) -> None:
        """Score the move from the previous step's weights to these, then remember these."""
        w, drift, G = state.flat
        prev = self._prev
        if prev is not None:
            w0, drift0, G0, log_target0, drift0_sq = prev
            a = state.epsilon / 2
            moved = _dot(w - w0, drift0 + drift)
            drift_sq = _dot(drift, _mul(G0, drift))  # in the metric of the move's start
            log_alpha = state.log_target - log_target0 - moved / 2 + a / 4 * (drift0_sq - drift_sq)
            self.total += log_alpha.clamp(max=0).exp().cpu()
            self.count += 1
        # |D|^2 in this step's metric, for the next move (which starts here); w kept as it is: a
        # step makes new weights, and callbacks must not edit them in place
        self._prev = (w, drift, G, state.log_target, _dot(drift, _mul(G, drift)))

    @property
    def acceptance(self) -> torch.Tensor:
        """(chains,) mean acceptance probability so far; 0 before the second step."""
        return self.total / max(self.count, 1)


def _mul(G: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
    return t if G is None else G * t


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per chain, the inner product of flat (chains, P) tensors, as float64. Summed in their own
    dtype (torch sums in blocks, not one running total): float64 copies of the weights took a
    seventh of modular addition's step."""
    return torch.linalg.vecdot(a, b, dim=1).double()
