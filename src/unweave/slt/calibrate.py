"""Choosing SGLD settings, and the LLC along a sequence of checkpoints."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import torch

from unweave import progress
from unweave.slt.llc import LLCResult, dataset_size, estimate_llc
from unweave.slt.sgld import LLCError, LossFn, SGLDConfig


@dataclass
class Calibration:
    grid: list[dict]  # one row per (epsilon, nbeta): estimate and health
    chosen: dict | None  # {"epsilon", "nbeta"} or None when no setting is healthy
    rule: str


def calibrate(
    model: torch.nn.Module,
    loss_fn: LossFn,
    loader: Iterable,
    epsilons: Sequence[float] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3),
    nbetas: Sequence[float] | None = None,
    base: SGLDConfig | None = None,
    params: str | Sequence[str] | None = None,
    min_acceptance: float = 0.9,
) -> Calibration:
    """Run short chains over epsilon x n*beta and pick settings.

    A setting is healthy when no chain diverged, the trace flattened, and the MALA
    acceptance is at least `min_acceptance` (the SGLD step is then close to an exact
    sampler's). The choice is the largest healthy epsilon (fastest mixing) at the default
    n*beta = n / ln n, or at the nearest n*beta that has one.
    """
    base = base or SGLDConfig(chains=2, draws=100, burn_in=20)
    n = dataset_size(loader)
    default = n / math.log(n)
    nbetas = list(nbetas) if nbetas is not None else [default / 10, default, default * 10]
    grid = []
    for eps, nb in progress.track(list(itertools.product(epsilons, nbetas)), "calibrating epsilon x n*beta"):
        row = {"epsilon": eps, "nbeta": nb}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the grid records health itself
                r = estimate_llc(model, loss_fn, loader, replace(base, epsilon=eps, nbeta=nb), params=params)
            row |= {
                "llc_mean": r.llc_mean,
                "llc_std_err": r.llc_std_err,
                "mala_acceptance": r.mala_acceptance,
                "diverged": bool(r.diverged_chains),
                "flattened": r.flattened,
            }
        except LLCError:
            row |= {
                "llc_mean": float("nan"),
                "llc_std_err": float("nan"),
                "mala_acceptance": 0.0,
                "diverged": True,
                "flattened": False,
            }
        row["healthy"] = not row["diverged"] and row["flattened"] and row["mala_acceptance"] >= min_acceptance
        grid.append(row)
    chosen = None
    for nb in sorted(nbetas, key=lambda b: abs(math.log(b / default))):
        healthy = [r for r in grid if r["nbeta"] == nb and r["healthy"]]
        if healthy:
            best = max(healthy, key=lambda r: r["epsilon"])
            chosen = {"epsilon": best["epsilon"], "nbeta": nb}
            break
    rule = (
        f"largest epsilon with no divergence, a flat trace and MALA acceptance >= {min_acceptance}, "
        f"at n*beta nearest n/ln n = {default:.4g}"
    )
    return Calibration(grid, chosen, rule)


def llc_over_checkpoints(
    checkpoints: Sequence[tuple[int, torch.nn.Module]],
    loss_fn: LossFn,
    loader: Iterable,
    config: SGLDConfig | None = None,
    params: str | Sequence[str] | None = None,
) -> list[tuple[int, LLCResult]]:
    """The LLC at each (step, model) with the same settings, e.g. through grokking."""
    out = []
    for step, model in progress.track(list(checkpoints), "LLC per checkpoint"):
        out.append((step, estimate_llc(model, loss_fn, loader, config, params=params)))
    return out
