"""Simplicity two ways (`unweave.mdl.simplicity`): across a grid of deep linear networks
(widths and ranks), do the bits of the weights at a tolerance on the output rank the
networks as the closed-form learning coefficient does? Spearman's rho, beside the parameter
count. The grid and the tolerance (the `mdl` command's default for regression outputs) are
fixed before anything is measured.

    make bench BENCH_ARGS="--only mdl_dln_family"
    ../.venv/bin/python mdl_dln_family.py --tolerance 0.001   (from bench/)
"""

from __future__ import annotations

import argparse
import time

from common import quick_option, table

from unweave.mdl.command import DEFAULT_TOLERANCE
from unweave.mdl.simplicity import dln_rows, family, rank_agreement


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE["output_fvu"])
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2])
    quick_option(parser, depths=[1])
    args = parser.parse_args()
    start = time.perf_counter()
    rows = dln_rows(family(depths=tuple(args.depths)), args.tolerance)
    print(table([{**r, "widths": ",".join(map(str, r["widths"]))} for r in rows]))
    agreement = rank_agreement(rows)
    print(
        table(
            [
                {"ranked by": k, "Spearman rho with the LLC": v["rho"], "p": v["p"], "networks": len(rows)}
                for k, v in agreement.items()
            ]
        )
    )
    print(f"tolerance: output FVU {args.tolerance}; {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
