"""One rung of the settings rule (`unweave.slt.auto`): at one n_beta, gamma and the step size
from the curvature there, the step halved on short Euler pilots until MALA acceptance is in
range, then runs doubled until the traces are healthy (`judge`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, TensorDataset

from unweave.slt.diagnostics import burn_in_cut
from unweave.slt.hessian import curvature_scale, gradient_noise
from unweave.slt.llc import LLCResult, estimate_llc
from unweave.slt.sgld import LLCError, LossFn, SGLDConfig, batches_per_pass

if TYPE_CHECKING:
    from unweave.slt.auto import AutoRule

# `estimate_llc`, or a stand-in with its signature (`saved.Replay.estimate` replays finished runs)
Estimate = Callable[..., LLCResult]


@dataclass
class Rung:
    nbeta: float
    localization: float
    epsilon: float
    draws: int
    result: LLCResult | None
    healthy: bool
    reason: str  # why it is not healthy ("" when it is)
    curvature: float  # the stiffest curvature the chains meet at this n_beta
    pilot_acceptance: float = math.nan  # MALA acceptance of the last pilot (on one fixed batch with minibatches)

    def row(self) -> dict:
        r = self.result
        return {
            "n*beta": self.nbeta,
            "curvature": self.curvature,
            "localization": self.localization,
            "epsilon": self.epsilon,
            "steps": self.draws,
            "burn-in (judged)": r.burn_in_judged if r else None,
            "LLC": r.llc_mean if r else math.nan,
            "std. err.": r.llc_std_err if r else math.nan,
            "R-hat": r.rhat if r else math.nan,
            "MALA acceptance (pilot)": self.pilot_acceptance,
            "MALA acceptance": r.mala_acceptance if r else math.nan,
            "healthy": self.healthy,
            "why not": self.reason,
        }


def run_rung(
    model: torch.nn.Module,
    loss_fn: LossFn,
    loader: Iterable,
    nbeta: float,
    rule: AutoRule,
    params: str | Sequence[str] | None = None,
    base: SGLDConfig | None = None,
    epsilon_scale: float = 1.0,
    n: int | None = None,
    gradient_variance: float | None = None,
    estimate: Estimate = estimate_llc,
    localization: float | None = None,
) -> Rung:
    """One n_beta: gamma and the step size from the curvature there, the step halved on short
    pilots until MALA acceptance is in range, then runs doubled until the traces are healthy.
    `gradient_variance`: `hessian.gradient_noise` of the loader at w* (it does not depend on
    n_beta: pass it to reuse it across rungs; measured here when None and the loader has minibatches).
    `estimate` makes each SGLD run (`estimate_llc` or a stand-in that replays saved runs).
    `localization`: the gamma to sample with (the first rung's, see `AutoRule.fixed_gamma`);
    None: `ratio` x n_beta x the curvature here."""
    base = base or SGLDConfig()
    if base.scheme != "euler":
        raise LLCError(
            f"the settings rule tunes the step on MALA acceptance, which is defined for --scheme euler only "
            f"(got {base.scheme!r}): the rule picks the full runs' scheme itself (--lm / --no-lm), or use "
            f"--settings fixed with --scheme {base.scheme}"
        )
    if base.chains < 2:
        raise LLCError(f"the rule compares chains (R-hat): run at least 2, got {base.chains}")
    curvature = curvature_scale(model, loss_fn, loader, nbeta, params=params)
    if not curvature > 0 or not math.isfinite(curvature):
        raise LLCError(
            f"the loss has no measurable curvature near the trained weights (stiffest {curvature}): "
            "the LLC cannot be localised; check that the parameters sampled affect the loss"
        )
    minibatch = batches_per_pass(loader) > 1
    pilot_loader = _one_batch(loader) if minibatch else loader
    gamma = rule.ratio * nbeta * curvature if localization is None else localization
    limit = 1 / (nbeta * curvature + gamma)  # the stiffest direction's scale for epsilon
    eps = rule.step * limit
    if minibatch:  # and small enough that the batches' gradient noise does not heat the chains
        if gradient_variance is None:
            gradient_variance = gradient_noise(model, loss_fn, loader, params)
        eps = min(eps, noise_limit(gradient_variance, nbeta, rule.max_gradient_noise))
    floor = eps / 1000  # halving stops here: a rung needing smaller steps is not healthy

    full_runs = "lm" if rule.lm else "euler"  # the pilots are Euler whatever this is: MALA acceptance needs it

    def sample(steps: int, data: Iterable = loader, scheme: str = full_runs) -> LLCResult | None:
        cfg = replace(base, epsilon=eps, nbeta=nbeta, localization=gamma, draws=steps, burn_in=0, scheme=scheme)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the rung records its own health
                return estimate(model, loss_fn, data, cfg, params=params, n=n)
        except LLCError:
            return None

    while True:  # the step: halve until a pilot's moves would pass a Metropolis test often enough
        pilot = sample(min(rule.pilot_steps, rule.first_steps), pilot_loader, scheme="euler")
        if pilot is not None and not pilot.diverged_chains and pilot.mala_acceptance >= rule.min_acceptance:
            break
        why = "diverged" if pilot is None or pilot.diverged_chains else f"MALA acceptance {pilot.mala_acceptance:.2f}"
        eps /= 2
        if eps < floor:
            accepted = pilot.mala_acceptance if pilot is not None else math.nan
            return Rung(
                nbeta, gamma, eps, 0, None, False, f"{why} even at 1/1000 of the first step", curvature, accepted
            )
    accepted = pilot.mala_acceptance
    eps *= epsilon_scale
    steps = rule.first_steps
    while True:
        raw = sample(steps)
        unstable = raw is None or bool(raw.diverged_chains)
        unstable = unstable or (not raw.minibatch and raw.mala_acceptance < rule.min_acceptance)
        if unstable and eps / 2 >= floor:
            eps, steps = eps / 2, rule.first_steps  # the chains spread to stiffer ground than the pilot saw
            continue
        if raw is None:
            return Rung(nbeta, gamma, eps, steps, None, False, "every chain diverged", curvature, accepted)
        result, reason = judge(raw, rule)
        if not reason or steps * 2 > rule.max_steps:
            return Rung(nbeta, gamma, eps, steps, result, not reason, reason, curvature, accepted)
        steps *= 2


def judge(raw: LLCResult, rule: AutoRule) -> tuple[LLCResult, str]:
    """Burn-in judged from the traces (MSER), then the health of what is kept: the result
    averaged after the cut, and why it is not healthy ("" when it is). A run on minibatches is
    not judged on acceptance (it compares different batches' losses; see the module docstring)."""
    steps = len(raw.loss_trace[0])
    excess = (torch.tensor(raw.loss_trace, dtype=torch.float64) - raw.init_loss) * raw.nbeta
    cut = burn_in_cut(excess[[c for c in range(len(excess)) if c not in raw.diverged_chains]])
    result = raw.trimmed(cut)
    problems = [
        ("chains diverged", bool(result.diverged_chains)),
        (
            f"MALA acceptance {result.mala_acceptance:.2f}",
            not result.minibatch and result.mala_acceptance < rule.min_acceptance,
        ),
        (
            "the loss fell below L(w*): w* is not a local minimum (train it further; the LLC is defined at a minimum)",
            result.llc_mean < -2 * _se(result),
        ),
        ("burn-in not over by mid-run", cut >= steps // 2 - steps // 100),
        (f"R-hat {result.rhat:.3f}", not result.rhat <= rule.max_rhat),
        ("trace not flat", not result.flattened),
        (
            f"standard error {result.llc_std_err:.2g} above {rule.max_rel_se:.1%} of the LLC",
            not result.llc_std_err <= rule.max_rel_se * abs(result.llc_mean),
        ),
    ]
    return result, ", ".join(text for text, bad in problems if bad)


def noise_limit(gradient_variance: float, nbeta: float, share: float) -> float:
    """The largest epsilon at which minibatch gradient noise, (eps/2)^2 n_beta^2 s^2 along the
    noisiest direction (variance s^2 = `gradient_variance`, `hessian.gradient_noise`), is at most
    `share` of the eps of injected noise: eps <= 4 share / (n_beta^2 s^2)."""
    s2 = gradient_variance
    return 4 * share / (nbeta**2 * s2) if s2 > 0 else math.inf


def _one_batch(loader: Iterable) -> DataLoader:
    """The loader's first batch as a loader of its own: one fixed batch, the same every step."""
    x, y = next(iter(loader))
    return DataLoader(TensorDataset(x, y), batch_size=len(x))


def _se(r: LLCResult) -> float:
    return r.llc_std_err if math.isfinite(r.llc_std_err) else 0.0
