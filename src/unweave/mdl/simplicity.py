"""Simplicity two ways on the deep-linear-network family: the bits of the weights at a
tolerance on the output (`describe.weight_bits`) against the closed-form learning
coefficient (Aoyagi 2024, `slt.truth.deep_linear`), each network at the planted rank-r
minimum of `zoo.singular.deep_linear_task` (an r x r orthogonal block per layer, every other
weight zero). The programme predicts that the two rank the networks the same way; Spearman's
rho says how far they do, beside the plain parameter count as the baseline.
"""

from __future__ import annotations

import itertools

from scipy.stats import spearmanr

from unweave.mdl.describe import SiteData, weight_bits
from unweave.slt import truth
from unweave.zoo import singular


def family(
    outer: tuple[int, ...] = (4, 6),
    hidden: tuple[int, ...] = (3, 5),
    depths: tuple[int, ...] = (1, 2),
    ranks: tuple[int, ...] = (1, 2, 3),
) -> list[tuple[list[int], int]]:
    """Every (widths, rank) of a grid: input and output width `outer`, `depth` hidden layers
    of width `hidden`, each rank up to the narrowest width."""
    cases = []
    for o, h, depth, r in itertools.product(outer, hidden, depths, ranks):
        widths = [o] + [h] * depth + [o]
        if 1 <= r <= min(widths):
            cases.append((widths, r))
    return cases


def dln_rows(cases: list[tuple[list[int], int]], tolerance: float, n: int = 2000) -> list[dict]:
    rows = []
    for widths, r in cases:
        model, loader = singular.deep_linear_task(widths, r, n=n)
        data = SiteData(model, loader.dataset.tensors[0], "0", lambda m, x: m(x), measure="output_fvu")
        wb = weight_bits(data, tolerance)
        rows.append(
            {
                "widths": widths,
                "rank": r,
                "llc": truth.deep_linear(widths, r),
                "params": wb.n_params,
                "weight_bits": wb.bits,
                "output_fvu": wb.kl,
            }
        )
    return rows


def rank_agreement(rows: list[dict]) -> dict:
    """Spearman's rho of the closed-form LLC with the weights' bits, and with the parameter
    count (the baseline a description length should beat)."""
    llc = [r["llc"] for r in rows]
    out = {}
    for key in ("weight_bits", "params"):
        result = spearmanr(llc, [r[key] for r in rows])
        out[key] = {"rho": float(result.statistic), "p": float(result.pvalue)}
    return out
