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
    trusted. Computed at each step for the move that led there, with the G of the move's start."""

    def __init__(self, chains: int):
        self.total = torch.zeros(chains, dtype=torch.float64)
        self.count = 0
        self._prev: StepState | None = None

    def __call__(self, state: StepState) -> None:
        """Score the move from the previous step's weights to these, then remember these."""
        prev = self._prev
        if prev is not None:
            eps, names = state.epsilon, list(state.w)
            fwd = sum(_sq(state.w[n] - prev.w[n] - eps / 2 * _mul(prev.G[n], prev.drift[n]), prev.G[n]) for n in names)
            bwd = sum(_sq(prev.w[n] - state.w[n] - eps / 2 * _mul(prev.G[n], state.drift[n]), prev.G[n]) for n in names)
            log_alpha = state.log_target - prev.log_target + (fwd - bwd) / (2 * eps)
            self.total += log_alpha.clamp(max=0).exp().cpu()
            self.count += 1
        self._prev = StepState(
            state.step,
            state.loss,
            {n: t.clone() for n, t in state.w.items()},
            state.drift,
            state.G,
            state.log_target,
            state.epsilon,
        )

    @property
    def acceptance(self) -> torch.Tensor:
        """(chains,) mean acceptance probability so far; 0 before the second step."""
        return self.total / max(self.count, 1)


def _mul(G: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
    return t if G is None else G * t


def _sq(t: torch.Tensor, G: torch.Tensor | None) -> torch.Tensor:
    """Squared norm per chain in the proposal's metric (divided by G when preconditioned)."""
    t = t.double()
    return (t.pow(2) if G is None else t.pow(2) / G.double()).flatten(1).sum(1)
