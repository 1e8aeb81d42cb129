"""What the SGLD chains sample, and the rules that step them.

The target is the tempered posterior localised at the trained weights w*,

    log p(w) = -n_beta L(w) - gamma/2 |w - w*|^2 + const,   drift(w) = grad log p(w),

and an update rule is a preconditioned Langevin step (Welling & Teh 2011; Li et al. 2016)

    w <- w + (eps / 2) G drift + sqrt(eps G) xi,   xi ~ N(0, I),

where the rule only chooses G: None (G = 1, plain SGLD) or a tensor shaped like the weights.
A new rule is one class: subclass `SGLD` and override `preconditioner` (and `start` if it
keeps state). The MALA acceptance diagnostic assumes this proposal, so a rule that changes
`step` itself should not rely on that diagnostic.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from unweave.slt.sgld import SGLDConfig

Weights = dict[str, torch.Tensor]  # parameter name -> (chains, *shape) stacked copies


class Flat:
    """Every sampled parameter of every chain in one (chains, P) buffer, each parameter a view of
    it: a step is then a few operations over one buffer instead of a few per parameter (deep
    linear networks' steps 5-12% faster, 2-core CPU)."""

    def __init__(self, params: dict[str, torch.Tensor]):
        """`params`: one copy of each parameter (no chain axis)."""
        self.names = list(params)
        self.shapes = [tuple(params[n].shape) for n in self.names]
        self.sizes = [math.prod(shape) for shape in self.shapes]

    def views(self, flat: torch.Tensor) -> Weights:
        """{name: (chains, *shape)} views of `flat` (chains, P)."""
        parts = flat.split(self.sizes, dim=1)
        return {n: t.view(len(flat), *shape) for n, t, shape in zip(self.names, parts, self.shapes)}

    def join(self, per_name: Weights) -> torch.Tensor:
        """(chains, P) from {name: (chains, *shape)}."""
        return torch.cat([per_name[n].reshape(len(per_name[n]), -1) for n in self.names], 1)


class LocalPosterior:
    """The localised tempered posterior around w*: its log density (for MALA) and drift (for the
    step), over the flat (chains, P) weights of `Flat`."""

    def __init__(self, w_star: Weights, nbeta: float, localization: float):
        self.w_star, self.nbeta, self.localization = w_star, nbeta, localization
        self.flat = Flat(w_star)
        self.star = self.flat.join({n: t.unsqueeze(0) for n, t in w_star.items()})  # (1, P)

    def start(self, chains: int) -> torch.Tensor:
        """`chains` copies of w*, (chains, P): every chain starts at the trained weights."""
        return self.star.repeat(chains, 1)

    def log_density_and_drift(
        self, loss: torch.Tensor, grads: torch.Tensor, w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(w) per chain (float64, up to a constant, from the chains' batch losses) and
        grad log p(w) (the batch-loss gradients pulled back towards w*), both at flat `w`."""
        away = w - self.star
        log_p = -self.nbeta * loss.double() - self.localization / 2 * torch.linalg.vecdot(away, away, dim=1).double()
        return log_p, away.mul_(-self.localization).sub_(grads, alpha=self.nbeta)


class UpdateRule(Protocol):
    """One SGLD-type step, applied parameter by parameter to all chains at once."""

    epsilon: float

    def start(self, w: Weights) -> None:
        """Reset any per-run state for chains starting at `w`."""

    def preconditioner(self, name: str, drift: torch.Tensor) -> torch.Tensor | None:
        """G for parameter `name` at this step (None: the identity); called once per parameter per step."""

    def step(self, w: torch.Tensor, drift: torch.Tensor, G: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
        """The next weights of one parameter, given standard normal `noise` shaped like `w`."""


class SGLD:
    """Plain SGLD: G = 1, the step every rule here shares."""

    def __init__(self, epsilon: float):
        self.epsilon = epsilon

    def start(self, w: Weights) -> None:
        """Plain SGLD keeps no state."""

    def preconditioner(self, name: str, drift: torch.Tensor) -> torch.Tensor | None:
        """The identity, written None so that no multiplication by 1 happens."""
        return None

    def step(self, w: torch.Tensor, drift: torch.Tensor, G: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
        """w + eps/2 G drift + sqrt(eps G) noise."""
        if G is None:
            return (noise * self.epsilon**0.5).add_(drift, alpha=self.epsilon / 2).add_(w)
        return w + self.epsilon / 2 * G * drift + noise * (self.epsilon * G) ** 0.5


class RMSPropSGLD(SGLD):
    """RMSProp-preconditioned SGLD (Li et al. 2016): G = 1 / (sqrt(V) + delta),
    V <- alpha V + (1 - alpha) drift^2, per weight."""

    def __init__(self, epsilon: float, alpha: float = 0.99, delta: float = 1e-4):
        super().__init__(epsilon)
        self.alpha, self.delta = alpha, delta
        self.v: Weights = {}

    def start(self, w: Weights) -> None:
        """V starts at 1 (G = 1, plain SGLD) rather than 0: at w* the drift is ~0, and G = 1/delta
        there would throw the first steps far from w*."""
        self.v = {n: torch.ones_like(t) for n, t in w.items()}

    def preconditioner(self, name: str, drift: torch.Tensor) -> torch.Tensor:
        """Update V with this step's drift and return G, scaled like the drift it divides."""
        v = self.v[name]
        v.mul_(self.alpha).addcmul_(drift, drift, value=1 - self.alpha)
        return 1 / (v.sqrt() + self.delta)


def update_rule(cfg: SGLDConfig) -> UpdateRule:
    """The rule the configuration asks for."""
    if cfg.rmsprop:
        return RMSPropSGLD(cfg.epsilon, cfg.rmsprop_alpha, cfg.rmsprop_delta)
    return SGLD(cfg.epsilon)
