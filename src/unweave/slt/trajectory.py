"""The LLC along a sequence of checkpoints: one set of settings (chosen by the rule at the last
checkpoint, or given), burn-in judged from every checkpoint's own traces."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import torch

from unweave import progress
from unweave.slt.auto import AutoLLC, AutoRule, Estimate, judge
from unweave.slt.llc import LLCResult, estimate_llc
from unweave.slt.sgld import LossFn, SGLDConfig


def chosen_settings(auto: AutoLLC, base: SGLDConfig | None = None) -> SGLDConfig:
    """The SGLD settings of the rung the rule reported, as a config to reuse elsewhere."""
    rung = auto.chosen
    if rung is None:
        raise ValueError(f"the rule found no healthy setting to reuse: {auto.message}")
    return replace(
        base or SGLDConfig(),
        epsilon=rung.epsilon,
        nbeta=rung.nbeta,
        localization=rung.localization,
        draws=rung.draws,
        burn_in=0,
    )


def llc_over_checkpoints(
    checkpoints: Sequence[tuple[int, torch.nn.Module]],
    loss_fn: LossFn,
    loader: Iterable,
    config: SGLDConfig | None = None,
    params: str | Sequence[str] | None = None,
    rule: AutoRule | None = None,
    estimate: Callable[[int], Estimate] | None = None,
) -> list[tuple[int, LLCResult, str]]:
    """(step, result, why not healthy or "") at each (step, model), with the same settings, e.g.
    through grokking. Each result averages the draws after the burn-in its own traces show.
    `estimate(step)` gives the function that samples at that step (default `estimate_llc`;
    `saved.SavedRuns` gives one that replays the runs an interrupted job finished)."""
    rule = rule or AutoRule()
    out = []
    for step, model in progress.track(list(checkpoints), "LLC per checkpoint"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # judged below, per checkpoint
            sample = estimate(step) if estimate is not None else estimate_llc
            raw = sample(model, loss_fn, loader, config, params=params)
        result, reason = judge(raw, rule)
        out.append((step, result, reason))
    return out
