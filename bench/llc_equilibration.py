"""How long the SGLD chains of a deep linear network take to spread out from w*, at the
settings the rule picks on each n_beta rung (first rung's gamma held fixed, step tuned by MALA
pilots): the estimate from the last half, and from the last quarter, of runs of growing length.

Why it matters (issue 16): every chain starts at w*, where the excess loss is 0, so a run too
short to reach equilibrium gives an estimate below it, and the rule's checks (R-hat, the
flat-trace test, MSER burn-in) can pass a slow climb. The step falls like 1 / n_beta, so the
time to cross a singular direction grows with the rung. Euler (the rule's scheme) at every
length, Leimkuhler-Matthews at the longest. Nothing is chosen per case: the settings are the rule's.

    cd bench && ../.venv/bin/python llc_equilibration.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

from common import table

from unweave.slt import SGLDConfig, estimate_llc, truth
from unweave.slt.auto import AutoRule, run_rung
from unweave.zoo import singular

CASES = [([5, 3, 4, 2, 3], 1, 24), ([4, 3, 3, 4], 1, 0)]  # widths, rank, data seed (llc_ground_truth's)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one case, short runs: checks the pipeline only")
    args = parser.parse_args()
    lengths = (2000, 8000) if args.quick else (8000, 32000, 96000)
    rule = AutoRule()
    rows = []
    for widths, rank, seed in CASES[:1] if args.quick else CASES:
        model, loader = singular.deep_linear_task(widths, rank, n=1000, seed=seed)
        n = len(loader.dataset)
        first = n / math.log(n)
        gamma = None
        for k in range(2):  # the first two rungs: n/ln n and 10x it (above n = 1000)
            nbeta = first * rule.factor**k
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rung = run_rung(model, singular.half_squared_error, loader, nbeta, rule, localization=gamma)
            gamma = rung.localization
            runs = [("euler", steps) for steps in lengths] + [("lm", lengths[-1])]
            for scheme, steps in runs:
                cfg = SGLDConfig(
                    epsilon=rung.epsilon, nbeta=nbeta, localization=gamma, draws=steps, chains=8, scheme=scheme
                )
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = estimate_llc(model, singular.half_squared_error, loader, cfg)
                rows.append(
                    {
                        "DLN": f"{'-'.join(map(str, widths))} r={rank}",
                        "lambda": truth.deep_linear(widths, rank),
                        "n*beta": nbeta,
                        "n": n,
                        "epsilon (rule)": rung.epsilon,
                        "rule's estimate (its steps)": f"{rung.result.llc_mean:.4g} ({rung.draws})"
                        if rung.result
                        else "-",
                        "scheme": scheme,
                        "steps": steps,
                        "last half": result.trimmed(steps // 2).llc_mean,
                        "last quarter": result.trimmed(3 * steps // 4).llc_mean,
                        "seconds": time.perf_counter() - start,
                    }
                )
                print(rows[-1], flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
