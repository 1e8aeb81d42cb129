"""The local learning coefficient (LLC) and the diagnostics that say whether to believe it.

    LLC = n_beta * (E_w[L_n(w)] - L_n(w*)),

the expectation over SGLD draws localised at the trained weights w* (Lau et al. 2023).
Mean and standard error are over chains. Diagnostics: divergence (NaN or a loss far above
what any coefficient could explain), an unflattened trace, and the MALA acceptance rate.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from unweave import distributed, progress
from unweave.slt.diagnostics import split_rhat
from unweave.slt.sgld import LLCError, LossFn, SGLDConfig, Trace, parameter_count, run_chains, select_parameters


@dataclass
class LLCResult:
    llc_mean: float
    llc_std_err: float
    llc_per_chain: list[float]
    init_loss: float
    nbeta: float
    n: int
    n_params: int  # parameters sampled (the raw count to compare the LLC with)
    mala_acceptance: float
    loss_trace: list[list[float]]  # (chains, draws) every recorded draw, the judged burn-in included
    diverged_chains: list[int]
    flattened: bool
    rhat: float = float("nan")  # split R-hat of n_beta * excess loss over the kept draws
    burn_in_judged: int = 0  # recorded draws dropped from the front of loss_trace before averaging
    acceptance_per_chain: list[float] = field(default_factory=list)
    # sampled on minibatches: loss_trace holds L_b(w) - L_b(w*) + L_n(w*), and the MALA acceptance
    # compares two batches' losses (so the rule does not judge it)
    minibatch: bool = False
    warnings: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(vars(self))

    def trimmed(self, burn_in: int) -> LLCResult:
        """The same chains with the first `burn_in` recorded draws dropped from the averages."""
        return summarize(
            torch.tensor(self.loss_trace, dtype=torch.float64),
            torch.tensor(self.acceptance_per_chain, dtype=torch.float64),
            self.init_loss,
            self.nbeta,
            self.n,
            self.n_params,
            self.config,
            burn_in,
            self.minibatch,
        )


def dataset_size(loader: Iterable) -> int:
    dataset = getattr(loader, "dataset", None)
    if dataset is not None:
        return len(dataset)
    return sum(len(x) for x, _ in loader)


def mean_loss(model: torch.nn.Module, loss_fn: LossFn, loader: Iterable) -> float:
    """L_n at the model's current weights: the size-weighted mean of batch losses."""
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in loader:
            total += loss_fn(model(x), y).double().item() * len(x)
            count += len(x)
    if count == 0:
        raise LLCError("the data loader is empty: it yielded no batch")
    return total / count


def finite_loss(model: torch.nn.Module, loss_fn: LossFn, loader: Iterable) -> float:
    """L_n at the trained weights; an LLCError when it is not finite."""
    loss = mean_loss(model, loss_fn, loader)
    if not math.isfinite(loss):
        raise LLCError(
            f"the loss at the trained weights is {loss}: the LLC is only defined at a point where the loss is finite "
            "(check the model, the data and the loss function; float16 weights can overflow: try --dtype float32)"
        )
    return loss


def _my_chains(chains: int) -> list[int]:
    """This process's chains: all of them, or under torchrun rank r's r, r + N, ..."""
    me = distributed.world()
    if chains < me.size:
        raise LLCError(f"{chains} chains cannot be spread over {me.size} processes: use --chains {me.size} or more")
    return list(range(me.rank, chains, me.size))


def _all_chains(trace: Trace, ids: list[int], chains: int) -> Trace:
    """Every rank's chains, back in chain order (chain c is the same draws wherever it ran)."""
    if len(ids) == chains:
        return trace
    losses = torch.empty(chains, trace.losses.shape[1], dtype=trace.losses.dtype)
    acceptance = torch.empty(chains, dtype=trace.acceptance.dtype)
    for rank_ids, rank_losses, rank_acceptance in distributed.gather_objects((ids, trace.losses, trace.acceptance)):
        losses[rank_ids], acceptance[rank_ids] = rank_losses, rank_acceptance
    return Trace(losses, acceptance, trace.vectorized, trace.relative)


def _flattened(excess: torch.Tensor) -> bool:
    """Does the trace's second half agree with its first (no drift left)?

    Per chain, the change between the halves' mean excess loss relative to the chain's
    mean excess; the trace is still moving if that change is consistent across chains
    (beyond 3 standard errors) and material (beyond 10%), or, with one chain, beyond 20%."""
    if excess.shape[1] < 4:
        return True
    half = excess.shape[1] // 2
    level = excess.mean(1).abs().clamp(min=1e-30)
    rel = (excess[:, half:].mean(1) - excess[:, :half].mean(1)) / level
    if len(rel) == 1:
        return bool(rel.abs().item() <= 0.2)
    mean, se = rel.mean().abs(), rel.std() / math.sqrt(len(rel))
    return bool(mean <= 3 * se or mean <= 0.1)


def estimate_llc(
    model: torch.nn.Module,
    loss_fn: LossFn,
    loader: Iterable,
    config: SGLDConfig | None = None,
    params: str | Sequence[str] | None = None,
    n: int | None = None,
) -> LLCResult:
    """Estimate the LLC of `model` at its current weights on the data in `loader`.

    `loss_fn(model(x), y)` is the mean loss of a batch (x, y); `params` limits sampling
    to parameters whose names start with the given prefixes (e.g. "blocks.0.attn").
    """
    cfg = config or SGLDConfig()
    names = select_parameters(model, params)
    n = n or dataset_size(loader)
    if n == 0:
        raise LLCError("the data loader is empty: it yielded no batch")
    if n < 2:
        raise LLCError(f"the data loader holds {n} example; the LLC needs at least 2")
    init_loss = finite_loss(model, loss_fn, loader)
    nbeta = cfg.resolved_nbeta(n)
    n_params = parameter_count(model, names)
    ids = _my_chains(cfg.chains)
    task = progress.Task(f"SGLD, {len(ids)} of {cfg.chains} chains", total=cfg.burn_in + cfg.draws, unit="steps")
    try:
        trace = run_chains(model, loss_fn, loader, names, nbeta, cfg, on_step=task.advance, chain_ids=ids)
    finally:
        task.close()
    trace = _all_chains(trace, ids, cfg.chains)
    losses = trace.losses + init_loss if trace.relative else trace.losses  # L_b(w) - L_b(w*) + L_n(w*)
    result = summarize(losses, trace.acceptance, init_loss, nbeta, n, n_params, cfg.to_dict(), 0, trace.relative)
    for note in result.warnings:
        warnings.warn(note, stacklevel=2)
    return result


def summarize(
    losses: torch.Tensor,
    acceptance: torch.Tensor,
    init_loss: float,
    nbeta: float,
    n: int,
    n_params: int,
    config: dict,
    burn_in: int = 0,
    minibatch: bool = False,
) -> LLCResult:
    """The LLC and its diagnostics from recorded draws `losses` (chains, draws), averaging over
    draws from `burn_in` on; `minibatch`: the draws were taken on minibatches (see LLCResult).
    Raises LLCError when every chain diverged."""
    chains = losses.shape[0]
    # a chain is lost if it went non-finite or its loss rose further than any LLC could explain:
    # at equilibrium n_beta * excess ~ lambda <= d/2, so an excess 1000x beyond d/n_beta is a blow-up
    excess = losses - init_loss
    limit = 1000 * max(n_params, 1) / nbeta
    tail = excess[:, -max(1, excess.shape[1] // 4) :]  # a lost chain stays lost: judge the last quarter
    bad = [c for c in range(chains) if not torch.isfinite(excess[c]).all() or tail[c].mean() > limit]
    eps, gamma = config.get("epsilon"), config.get("localization")
    notes = []
    if bad:
        notes.append(
            f"chains {bad} diverged (loss NaN or last-quarter mean more than {limit:.3g} above L(w*)): lower epsilon "
            f"(now {eps:g}) or raise localization (now {gamma:g})"
        )
    good = [c for c in range(chains) if c not in bad]
    if not good:
        for note in notes:
            warnings.warn(note, stacklevel=3)
        raise LLCError(
            f"every chain diverged; lower epsilon (now {eps:g}) or raise localization "
            f"(now {gamma:g}), or run `unweave llc --calibrate`"
        )
    kept = nbeta * excess[good, burn_in:]
    per_chain = kept.mean(1).tolist()
    flat = _flattened(kept)
    if not flat:
        notes.append(
            "the loss trace has not flattened (its second half differs from its first): raise burn_in "
            f"(now {config.get('burn_in', 0) + burn_in}) or draws (now {kept.shape[1]}), or epsilon (now {eps:g})"
        )
    mean = sum(per_chain) / len(per_chain)
    se = (torch.tensor(per_chain).std().item() / math.sqrt(len(per_chain))) if len(per_chain) > 1 else float("nan")
    return LLCResult(
        llc_mean=mean,
        llc_std_err=se,
        llc_per_chain=per_chain,
        init_loss=init_loss,
        nbeta=nbeta,
        n=n,
        n_params=n_params,
        mala_acceptance=acceptance[good].mean().item(),
        loss_trace=losses.tolist(),
        diverged_chains=bad,
        flattened=flat,
        rhat=split_rhat(kept) if len(good) > 1 else float("nan"),
        burn_in_judged=burn_in,
        acceptance_per_chain=acceptance.tolist(),
        minibatch=minibatch,
        warnings=notes,
        config=config,
    )
