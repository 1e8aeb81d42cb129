"""An independent count, with numpy and scipy, of the bits `mdl` sends for integer codes."""

import math

import numpy as np
from scipy.special import comb, gammaln

from unweave.mdl import coding


def numpy_code_bits(symbols: np.ndarray) -> tuple[float, float]:
    """(index bits, value bits without the step) of an (n, units) integer code, zero meaning
    inactive. Index: one bit for the choice of code, then, if no row has two nonzero
    entries, `numpy_choice_bits` of the active unit per row, else per unit log2(n + 1) +
    log2 C(n, active). Values: per unit the two-part enumerative code of its nonzero symbols
    (range header, histogram, multinomial)."""
    n = len(symbols)
    active = (symbols != 0).sum(0)
    if (symbols != 0).sum(1).max(initial=0) <= 1:
        index = 1 + numpy_choice_bits([int(c) for c in active], n)
    else:
        index = 1 + sum(math.log2(n + 1) + math.log2(comb(n, int(c), exact=True)) for c in active)
    value = 0.0
    for unit in range(symbols.shape[1]):
        nz = symbols[:, unit][symbols[:, unit] != 0]
        if len(nz):
            _, c = np.unique(nz, return_counts=True)
            k = nz.max() - nz.min() + 1
            value += (
                (gammaln(len(nz) + 1) - gammaln(c + 1).sum()) / math.log(2)
                + math.log2(comb(len(nz) + k - 1, k - 1, exact=True))
                + float(coding.signed_bits(int(nz.min())) + coding.gamma_bits(int(k)))
            )
    return index, value


def numpy_sequence_bits(symbols: np.ndarray) -> float:
    """Two-part enumerative code of one integer sequence, every entry (zeros included): the
    range header, the histogram over the range, the multinomial; a parameter tensor's code."""
    flat = symbols.ravel()
    _, c = np.unique(flat, return_counts=True)
    m, k = len(flat), int(flat.max() - flat.min() + 1)
    return (
        float(coding.signed_bits(int(flat.min())) + coding.gamma_bits(k))
        + math.log2(comb(m + k - 1, k - 1, exact=True))
        + (gammaln(m + 1) - gammaln(c + 1).sum()) / math.log(2)
    )


def numpy_choice_bits(counts: list[int], n: int) -> float:
    """n categorical symbols ("none" or a unit, unit i chosen counts[i] times), with exact
    integers: log2 C(n + width, width) for the histogram, log2 of the multinomial."""
    multinomial = math.factorial(n) // math.factorial(n - sum(counts))
    for c in counts:
        multinomial //= math.factorial(c)
    return math.log2(math.comb(n + len(counts), len(counts))) + math.log2(multinomial)
