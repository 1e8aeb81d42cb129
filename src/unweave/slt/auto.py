"""SGLD settings chosen by a rule that never sees the answer.

The LLC estimate n_beta (E[L] - L(w*)) is a property of the localised tempered posterior,
exp(-n_beta L(w) - gamma/2 |w - w*|^2); the sampler only has to draw from it faithfully.
So the rule separates the two:

The posterior (n_beta, gamma):
- The pull gamma must be weak against the likelihood in every direction that curves:
  a direction of curvature h contributes (1/2) n_beta h / (n_beta h + gamma) instead of 1/2, so
  gamma = ratio * n_beta * h_ref at the first rung, with h_ref the stiffest curvature the chains
  meet (see `hessian.curvature_scale`), keeps every direction within h_ref/100 of the stiffest to 9%.
  Later rungs keep that gamma: one that grew with n_beta would confine the singular (w^4-like)
  directions more at every rung, and the estimate would fall rung by rung without settling
  (bench/llc_localization.py).
- n_beta must be large enough that the posterior is local (the estimate is then a property of
  w*, not of the landscape around it). It starts at n / ln n (Watanabe's WBIC temperature) and
  is raised by `factor` until two consecutive rungs agree (within `agree` plus two standard
  errors); the estimate is the lower rung's (where the plateau starts), and the spread is over the agreeing rungs.
  A singular minimum approaches its lambda from below like (m - 1) / ln(n_beta), so agreement
  between rungs a factor 10 apart is the plateau a user can see. (Measured on DLNs,
  bench/llc_equilibration.py: run long enough, rungs above n lie 13-30% above lambda, and the
  first rung 3-11%; the plateau criterion is kept until a better one is built.)

The sampler (epsilon, length):
- epsilon = step / (n_beta h_ref + gamma), halved until the mean MALA acceptance of short Euler
  pilots is at least `min_acceptance` (the landscape is then near quadratic over a step). With
  minibatches the pilots run on one fixed batch: a Metropolis test between two different batches'
  losses measures the batches' disagreement, not the step. The full runs are Euler too, judged
  on acceptance, divergence and their traces. With `lm` they use the Leimkuhler-Matthews scheme
  instead: at the same epsilon it is exact on quadratic directions, where Euler's stationary
  variance is inflated by 1 / (1 - eps a / 4) (+14% on K = w^2 at the first step size). It is not
  the default: on the design set it lowers every estimate by a few percent, and where Euler's
  bias had offset chains not yet spread out from w* (DLN 4-3-3-4) no two rungs agree (RESULTS.md).
- With minibatches, epsilon is also capped so that the batches' gradient noise, (eps/2)^2 n_beta^2
  times its largest variance, adds at most `max_gradient_noise` to the eps of injected noise:
  beyond that the chains run hotter than n_beta and the estimate grows with n_beta (Welling & Teh 2011).
- Burn-in is judged from the traces (MSER on the chains' mean trace, `diagnostics.burn_in_cut`);
  the chains are run twice as long until the cut lands before the last half, the kept draws
  pass split R-hat <= `max_rhat` and the flat-trace test, and the standard error over chains
  is at most `max_rel_se` of the estimate (so that rungs can be compared at all).
A rung that cannot be made healthy within `max_steps` is reported as such, with what to try.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial

import torch

from unweave import progress
from unweave.configs import setting
from unweave.slt.hessian import gradient_noise
from unweave.slt.llc import LLCResult, dataset_size, estimate_llc, finite_loss
from unweave.slt.rung import Estimate, Rung, _se, judge, noise_limit, run_rung
from unweave.slt.sgld import LLCError, LossFn, SGLDConfig, batches_per_pass

__all__ = ["AutoLLC", "AutoRule", "Estimate", "Rung", "auto_llc", "judge", "noise_limit", "rule_text", "run_rung"]


@dataclass(frozen=True)
class AutoRule:
    ratio: float = setting(1e-3, "Localisation gamma as a fraction of n_beta x the stiffest curvature.")
    step: float = setting(0.5, "First step size as a fraction of 1 / (n_beta x stiffest curvature + gamma).")
    pilot_steps: int = setting(400, "Length of the short runs that tune the step size on MALA acceptance.")
    min_acceptance: float = setting(0.95, "Halve epsilon until the mean MALA acceptance reaches this.")
    max_gradient_noise: float = setting(
        0.05, "With minibatches: epsilon small enough that gradient noise adds at most this to the injected noise."
    )
    rungs: int = setting(3, "At most this many n_beta rungs, each `factor` above the last.")
    factor: float = setting(10.0, "Ratio between consecutive n_beta rungs.")
    agree: float = setting(0.05, "Two rungs agree within this fraction (plus two standard errors).")
    max_rhat: float = setting(1.05, "Split R-hat above this means the chains disagree: run longer.")
    max_rel_se: float = setting(0.025, "Run longer until the standard error is at most this fraction of the LLC.")
    first_steps: int = setting(2000, "First run length (burn-in included); doubled until healthy.")
    max_steps: int = setting(32000, "Longest run before a rung is declared unhealthy.")
    step_check: bool = setting(
        False, "Also run each rung at a third of its step size (the spread includes it).", cli=False
    )
    fixed_gamma: bool = setting(
        True, "Keep the first rung's gamma on every rung (else gamma grows with n_beta, confining more at each)."
    )
    lm: bool = setting(
        False,
        "Full runs by the Leimkuhler-Matthews scheme (exact on quadratic directions, where Euler's variance is "
        "inflated by 1 / (1 - eps a / 4)); the pilots that tune the step stay Euler, whose MALA acceptance is defined.",
    )

    def __post_init__(self):
        for name in ("ratio", "step", "factor", "agree"):
            if not getattr(self, name) > 0:
                raise LLCError(f"AutoRule.{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.min_acceptance < 1:
            raise LLCError(f"AutoRule.min_acceptance must be between 0 and 1, got {self.min_acceptance}")
        if self.rungs < 1 or self.first_steps < 8 or self.max_steps < self.first_steps:
            raise LLCError(
                f"AutoRule needs rungs >= 1 and 8 <= first_steps <= max_steps, got rungs {self.rungs}, "
                f"first_steps {self.first_steps}, max_steps {self.max_steps}"
            )


RULE_TEXT = (
    "Settings come from a rule that never sees a true answer. The localisation gamma is a thousandth of "
    "the first rung's n*beta times the stiffest curvature the chains meet there, so it is weak against the "
    "likelihood in every direction that curves, and it is kept on later rungs (one growing with n*beta would "
    "confine the singular directions more at each); the step size starts at half the stiffest direction's scale "
    "1 / (n*beta h + gamma) and is halved until MALA acceptance is at least {acc}; burn-in is judged from the "
    "traces (MSER) and the run "
    "doubled until the kept draws pass split R-hat <= {rhat}, a flat trace and a standard error within "
    "{se:.0%} of the estimate. n*beta starts at n / ln n and is raised {factor:g}x at a time until two rungs "
    "agree within {agree:.0%} plus two standard errors: the posterior is then local, and the estimate is the "
    "lower rung's (where the plateau starts). The band around it is the spread over the agreeing rungs, "
    "widened by two standard errors and by the {agree:.0%} the rule cannot resolve."
)


def rule_text(rule: AutoRule) -> str:
    """The rule in words, for reports."""
    text = RULE_TEXT.format(
        acc=rule.min_acceptance, rhat=rule.max_rhat, se=rule.max_rel_se, factor=rule.factor, agree=rule.agree
    )
    if rule.lm:
        text += (
            " The step is tuned on Euler pilots; the full runs use the Leimkuhler-Matthews scheme, for which MALA "
            "acceptance is not defined, so the table leaves it blank (nan) for them."
        )
    return text


@dataclass
class AutoLLC:
    spread: tuple[float, float]  # min and max over the healthy settings the estimate rests on
    chosen: Rung | None  # the reported rung; when not healthy, the last healthy one (or None)
    rungs: list[Rung]
    healthy: bool  # two rungs agreed: the estimate is the chosen rung's
    message: str  # what the rule concluded, or what to try
    rule: AutoRule = field(default_factory=AutoRule)

    @property
    def result(self) -> LLCResult | None:
        return self.chosen.result if self.chosen else None

    @property
    def llc(self) -> float:
        """The estimate; nan when no healthy pair of rungs agreed."""
        return self.result.llc_mean if self.healthy else math.nan

    @property
    def std_err(self) -> float:
        return self.result.llc_std_err if self.healthy else math.nan

    @property
    def band(self) -> tuple[float, float]:
        """Where the LLC lies, as far as the rule can tell: the spread over the agreeing settings,
        widened by two standard errors and by the rule's own resolution, `agree` of the estimate
        (rungs that close count as one plateau, yet the estimate still rises toward lambda like
        1 / ln(n_beta) along it). (nan, nan) when not healthy."""
        if not self.healthy:
            return (math.nan, math.nan)
        margin = 2 * _se(self.result) + self.rule.agree * abs(self.llc)
        return (self.spread[0] - margin, self.spread[1] + margin)

    def to_dict(self) -> dict:
        return {
            "llc": self.llc,
            "std_err": self.std_err,
            "spread": list(self.spread),
            "band": list(self.band),
            "healthy": self.healthy,
            "message": self.message,
            "rule": asdict(self.rule),
            "rungs": [rung.row() for rung in self.rungs],
            "chosen": self.chosen.row() if self.chosen else None,
        }


def _agree(a: LLCResult, b: LLCResult, tolerance: float) -> bool:
    noise = 2 * math.sqrt(_se(a) ** 2 + _se(b) ** 2)
    return abs(a.llc_mean - b.llc_mean) <= tolerance * max(abs(a.llc_mean), abs(b.llc_mean)) + noise


def auto_llc(
    model: torch.nn.Module,
    loss_fn: LossFn,
    loader: Iterable,
    rule: AutoRule | None = None,
    params: str | Sequence[str] | None = None,
    nbeta: float | None = None,
    base: SGLDConfig | None = None,
    n: int | None = None,
    estimate: Estimate = estimate_llc,
) -> AutoLLC:
    """The LLC at the first plateau of the n_beta ladder, with every setting justified in the result.

    `nbeta` is the first rung (default n / ln n); `base` supplies the settings the rule does not
    choose (seed, batch handling, RMSProp, vectorisation); `n` the number of samples the loss
    averages over (default: the loader's dataset size); `estimate` makes each SGLD run (see `run_rung`)."""
    rule = rule or AutoRule()
    n = n or dataset_size(loader)
    finite_loss(model, loss_fn, loader)  # a NaN loss is its own error, not "no curvature"
    # the batches' gradient variance at w* does not depend on n_beta: measured once for every rung
    variance = gradient_noise(model, loss_fn, loader, params) if batches_per_pass(loader) > 1 else None
    first = nbeta if nbeta is not None else n / math.log(n)
    rung_at = partial(
        run_rung, model, loss_fn, loader, rule=rule, params=params, base=base, n=n, gradient_variance=variance
    )
    rungs: list[Rung] = []
    for k in progress.track(range(rule.rungs), "n*beta ladder"):
        nb = first * rule.factor**k
        gamma = rungs[0].localization if rungs and rule.fixed_gamma else None
        rung = rung_at(nb, estimate=estimate, localization=gamma)
        rungs.append(rung)
        if rule.step_check and rung.healthy:
            rungs.append(rung_at(nb, epsilon_scale=1 / 3, estimate=estimate, localization=rung.localization))
        pair = _plateau(rungs, rule)
        if pair is not None:
            return _conclude(pair, rungs, rule)
    healthy = [r for r in rungs if r.healthy]
    if not healthy:
        message = (
            "no healthy setting: "
            + "; ".join(f"n*beta {r.nbeta:.3g}: {r.reason}" for r in rungs)
            + ". Try a larger --max-steps, more --chains, or another first --nbeta"
        )
    else:
        message = (
            "the estimate did not settle: "
            + ", ".join(f"{r.result.llc_mean:.4g} at n*beta {r.nbeta:.3g}" for r in healthy)
            + f" ({'; '.join(f'n*beta {r.nbeta:.3g}: {r.reason}' for r in rungs if not r.healthy)})"
            + ". Try more --rungs or a larger first --nbeta"
        )
    last = healthy[-1] if healthy else None
    return AutoLLC((math.nan, math.nan), last, rungs, False, message, rule)


def _plateau(rungs: list[Rung], rule: AutoRule) -> tuple[Rung, ...] | None:
    """The healthy rungs at the last two n_beta values, if they all agree; else None."""
    levels = sorted({r.nbeta for r in rungs})
    if len(levels) < 2:
        return None
    pair = [r for r in rungs if r.nbeta in levels[-2:]]
    if not all(r.healthy for r in pair):
        return None
    results = [r.result for r in pair]
    if all(_agree(a, b, rule.agree) for a in results for b in results):
        return tuple(pair)
    return None


def _conclude(pair: tuple[Rung, ...], rungs: list[Rung], rule: AutoRule) -> AutoLLC:
    # the plateau starts at the lower rung: the posterior is local there already, and the chains,
    # with larger steps, have equilibrated more surely than at the higher rung
    top = min(pair, key=lambda r: (r.nbeta, -r.epsilon))
    values = [r.result.llc_mean for r in pair]
    message = (
        f"the estimate is stable between n*beta {min(r.nbeta for r in pair):.3g} and {max(r.nbeta for r in pair):.3g} "
        f"({', '.join(f'{v:.4g}' for v in values)}); reported at the lower, n*beta {top.nbeta:.3g}"
    )
    return AutoLLC((min(values), max(values)), top, rungs, True, message, rule)
