"""How the LLC estimate of a deep linear network depends on the localisation gamma, at the
n_beta rungs the settings rule climbs: the rule's own gamma (ratio x n_beta x stiffest
curvature, so it grows with n_beta), the first rung's gamma held fixed, and a tenth of that.

Why it matters (issue 16): along a direction where the loss grows like w^4 (the directions
that make a model singular) the posterior's width is (n_beta c)^(-1/4), so a gamma that grows
like n_beta confines it more and more as n_beta rises, and the estimate falls rung by rung
instead of settling on lambda. Held fixed, the localisation weakens against the likelihood
in every direction as n_beta rises (the limit that defines lambda), at the price of slower
mixing. Every row uses the rule's step (half of 1 / (n_beta h + gamma), no MALA tuning) and
the rule's health checks on the kept draws; nothing here is chosen per case.

    cd bench && ../.venv/bin/python llc_localization.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

from common import table

from unweave.slt import SGLDConfig, estimate_llc, truth
from unweave.slt.auto import AutoRule, judge
from unweave.slt.hessian import curvature_scale
from unweave.slt.sgld import LLCError
from unweave.zoo import singular

CASES = [  # widths, rank, data seed, chains (the ground-truth bench's cases)
    ([4, 3, 3, 4], 1, 0, 8),
    ([5, 3, 4, 2, 3], 1, 24, 8),
    ([60, 50, 40, 60], 4, 31, 4),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16000, help="SGLD steps per run (the rule's longest run: 32000)")
    parser.add_argument("--quick", action="store_true", help="small cases, 2000 steps: checks the pipeline only")
    args = parser.parse_args()
    steps = 2000 if args.quick else args.steps
    rule = AutoRule()
    rows = []
    for widths, rank, seed, chains in CASES[:2] if args.quick else CASES:
        model, loader = singular.deep_linear_task(widths, rank, n=1000, seed=seed)
        n = len(loader.dataset)
        first = n / math.log(n)
        first_gamma = None
        for rung in range(3):
            nbeta = first * rule.factor**rung
            h = curvature_scale(model, singular.half_squared_error, loader, nbeta)
            scaled = rule.ratio * nbeta * h
            first_gamma = first_gamma or scaled
            for label, gamma in (
                ("rule (ratio x n*beta x h)", scaled),
                ("first rung's, fixed", first_gamma),
                ("first rung's / 10", first_gamma / 10),
            ):
                if rung == 0 and label == "first rung's, fixed":
                    continue  # the rule's own at the first rung
                cfg = SGLDConfig(
                    epsilon=rule.step / (nbeta * h + gamma),
                    nbeta=nbeta,
                    localization=gamma,
                    draws=steps,
                    burn_in=0,
                    chains=chains,
                )
                start = time.perf_counter()
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        result, why = judge(estimate_llc(model, singular.half_squared_error, loader, cfg), rule)
                    estimate = f"{result.llc_mean:.4g} ± {result.llc_std_err:.2g}"
                except LLCError:
                    estimate, why = "every chain diverged", ""
                rows.append(
                    {
                        "DLN": f"{'-'.join(map(str, widths))} r={rank}",
                        "lambda": truth.deep_linear(widths, rank),
                        "n*beta": nbeta,
                        "gamma": label,
                        "gamma value": gamma,
                        "estimate": estimate,
                        "unhealthy because": why or "-",
                        "seconds": time.perf_counter() - start,
                    }
                )
                print(rows[-1], flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
