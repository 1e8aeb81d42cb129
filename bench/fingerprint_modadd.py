"""Fingerprints of clock and pizza runs (`unweave fingerprint`) on moduli and seeds the tests
do not use: for each modulus, two runs with learned attention (clock) and two with uniform
attention (pizza) are trained, fingerprinted together, and the clusters scored against the
known algorithms (adjusted Rand index, 1 = exact), beside the raw-weight and loss-curve
baselines. The settings are the command's defaults (its rule never sees the answer).

    make bench BENCH_ARGS="--only fingerprint_modadd"

By hand, from bench/: ../.venv/bin/python fingerprint_modadd.py --moduli 23 37 --seeds 2 3
(about 15-30 s of training per run on 2 cores; runs are kept in --runs and reused).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from common import quick_option, table

from unweave.fingerprint.command import FingerprintConfig, run_fingerprint
from unweave.zoo.modadd import ModAddConfig, train

# a small model that groks within 1500 steps on 2 cores (the tests' size; the demo's is p=59)
SMALL = ModAddConfig(frac_train=0.5, lr=1e-2, d_model=64, d_mlp=256, steps=1500, checkpoint_every=500)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--moduli", type=int, nargs="+", default=[23, 29, 37, 41, 43, 47, 53])
    parser.add_argument("--seeds", type=int, nargs=2, default=[2, 3])
    parser.add_argument("--runs", type=Path, default=Path("data/fingerprint-runs"))
    quick_option(parser, moduli=[23])
    args = parser.parse_args()
    rows = []
    for p in args.moduli:
        start = time.perf_counter()
        paths = []
        for seed in args.seeds:
            for attention in ("learned", "uniform"):
                cfg = dataclasses.replace(SMALL, p=p, seed=seed, attention=attention)
                paths.append(train(cfg, args.runs / f"p{p}-{attention}-s{seed}").dir)
        trained = time.perf_counter()
        result = run_fingerprint(FingerprintConfig(runs=paths, out=args.runs / f"fingerprint-p{p}"))
        found = result.data["comparisons"]
        rows.append(
            {
                "p": p,
                "seeds": " ".join(map(str, args.seeds)),
                "mechanism ARI": found["mechanism"]["adjusted_rand_index"],
                "behaviour ARI": found["behaviour"]["adjusted_rand_index"],
                "weights ARI": found["weights"]["adjusted_rand_index"],
                "loss curves ARI": found["loss curves"]["adjusted_rand_index"],
                "train s": round(trained - start, 1),
                "fingerprint s": round(time.perf_counter() - trained, 1),
            }
        )
        print(table(rows[-1:]), flush=True)
    print(table(rows))
    print(f"mechanism recovered on {sum(r['mechanism ARI'] == 1 for r in rows)}/{len(rows)} moduli")


if __name__ == "__main__":
    main()
