"""Is the large DLNs' overshoot the Euler step's bias? Euler SGLD against Metropolis-adjusted
Langevin (MALA: the same proposal, accepted with the Metropolis-Hastings probability, so the
chains sample the localised tempered posterior exactly at any step size) on DLN 60-50-40-60
r=4 (7,400 parameters, lambda 947.5), full batch, at the rule's first rung (n*beta = n / ln n,
gamma the rule's there), every chain started at w*.

The estimate n*beta (mean L - L(w*)) is printed over the last half and the last eighth of
each run at eight points, with the acceptance so far (Euler accepts every move). Issue 16:
the rule's Euler runs on this DLN climb past lambda with run length and never settle.

    cd bench && ../.venv/bin/python llc_metropolis.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from common import quick_option, table
from torch.func import functional_call, grad_and_value, vmap

from unweave.slt import truth
from unweave.zoo import singular

WIDTHS, RANK, SEED = [60, 50, 40, 60], 4, 31  # llc_ground_truth.py's first large DLN
NBETA, GAMMA, CHAINS = 144.8, 0.4718, 8  # the rule's first rung on it (n = 1000)


class Chains:
    """Full-batch Langevin chains on the localised tempered posterior, Euler or MALA."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, chains: int, seed: int):
        self.star = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.l0 = float(singular.half_squared_error(model(x), y).detach())

        def loss(p: dict) -> torch.Tensor:
            return singular.half_squared_error(functional_call(model, p, (x,)), y)

        self.grad = vmap(grad_and_value(loss))
        self.w = {n: t.unsqueeze(0).repeat(chains, *[1] * t.dim()) for n, t in self.star.items()}
        self.gen = torch.Generator().manual_seed(seed)
        self.state = self.evaluate(self.w)

    def evaluate(self, w: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Per chain: the loss, log p(w) and grad log p(w)."""
        g, loss = self.grad(w)
        # detached: else each state a chain keeps would hold its step's graph, and every step's after it
        g, loss = {n: t.detach() for n, t in g.items()}, loss.detach()
        away = {n: w[n] - self.star[n] for n in w}
        log_p = -NBETA * loss.double() - GAMMA / 2 * sum(a.pow(2).flatten(1).sum(1) for a in away.values()).double()
        return loss, log_p, {n: -(NBETA * g[n] + GAMMA * away[n]) for n in w}

    def step(self, eps: float, adjust: bool) -> torch.Tensor:
        """One move of every chain; which chains moved."""
        loss, log_p, drift = self.state
        noise = {n: torch.randn(t.shape, generator=self.gen) for n, t in self.w.items()}
        proposal = {n: self.w[n] + eps / 2 * drift[n] + math.sqrt(eps) * noise[n] for n in self.w}
        loss2, log_p2, drift2 = self.evaluate(proposal)
        moved = torch.ones(len(loss), dtype=torch.bool)
        if adjust:  # log q(w | w') - log q(w' | w), the proposal N(w + eps/2 drift(w), eps)
            fwd = sum((proposal[n] - self.w[n] - eps / 2 * drift[n]).pow(2).flatten(1).sum(1) for n in self.w)
            bwd = sum((self.w[n] - proposal[n] - eps / 2 * drift2[n]).pow(2).flatten(1).sum(1) for n in self.w)
            log_alpha = log_p2 - log_p + (fwd - bwd).double() / (2 * eps)
            moved = torch.rand(len(loss), generator=self.gen, dtype=torch.float64).log() < log_alpha

        def pick(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
            return torch.where(moved.view(-1, *[1] * (new.dim() - 1)), new, old)

        self.w = {n: pick(proposal[n], self.w[n]) for n in self.w}
        self.state = (pick(loss2, loss), pick(log_p2, log_p), {n: pick(drift2[n], drift[n]) for n in self.w})
        return moved


def run(eps: float, steps: int, adjust: bool, seed: int = 0) -> list[dict]:
    model, loader = singular.deep_linear_task(WIDTHS, RANK, n=1000, seed=SEED)
    x, y = next(iter(loader))
    chains = Chains(model, x, y, CHAINS, seed)
    # one preallocated trace: a list of per-step tensors grew the process by 0.2-0.6 MB a step
    losses = torch.empty(steps, CHAINS, dtype=torch.float64)
    accepted, rows, start = 0.0, [], time.perf_counter()
    for k in range(1, steps + 1):
        accepted += float(chains.step(eps, adjust).double().mean())
        losses[k - 1] = chains.state[0]
        if k % (steps // 8) == 0:
            trace = losses[:k]
            rows.append(
                {
                    "sampler": "MALA" if adjust else "Euler",
                    "epsilon": eps,
                    "steps": k,
                    "LLC, last half": NBETA * float(trace[k // 2 :].mean() - chains.l0),
                    "LLC, last eighth": NBETA * float(trace[-(steps // 8) :].mean() - chains.l0),
                    "acceptance so far": accepted / k,
                    "seconds": time.perf_counter() - start,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    quick_option(parser)
    args = parser.parse_args()
    scale = 8 if args.quick else 1
    torch.manual_seed(0)
    rows = run(3.3e-5, 16000 // scale, adjust=False) + run(3.3e-5, 16000 // scale, adjust=True)
    rows += run(1e-5, 48000 // scale, adjust=True)
    lam = truth.deep_linear(WIDTHS, RANK)
    dln = "-".join(map(str, WIDTHS))
    print(f"DLN {dln} r={RANK}: lambda {lam}, n*beta {NBETA}, gamma {GAMMA}, {CHAINS} chains, n 1000")
    print(table(rows))


if __name__ == "__main__":
    main()
