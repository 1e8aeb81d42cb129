"""An independent count, with numpy and scipy, of the bits `mdl` sends for integer codes."""

import math

import numpy as np
from scipy.special import comb, gammaln

from unweave.mdl import coding


def numpy_code_bits(symbols: np.ndarray) -> tuple[float, float]:
    """(index bits, value bits without the step) of an (n, units) integer code, zero meaning
    inactive: per unit log2(n + 1) + log2 C(n, active), then the two-part enumerative code of
    its nonzero symbols (range header, histogram, multinomial)."""
    n = len(symbols)
    index = value = 0.0
    for unit in range(symbols.shape[1]):
        nz = symbols[:, unit][symbols[:, unit] != 0]
        index += math.log2(n + 1) + math.log2(comb(n, len(nz), exact=True))
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
