"""Code lengths, in bits, of the integer symbols a description sends.

Every length here is that of a real prefix code a decoder could read back, not an entropy
estimate: a two-part enumerative code (first the histogram, then which of the sequences
with that histogram this one is). It is never shorter than the ideal `n * H(empirical)` by
more than the histogram's own cost, and it pays for every distinct symbol it uses, so a
wide dictionary or a fine quantisation step costs what it should.

- `index_bits`: which units are active on each of n examples. One bit says which of two
  codes follows. When no example has two units active, each example sends one categorical
  symbol, none or which unit (`choice_bits`: the histogram, then the multinomial); that is
  never longer than the other code, and it does not pay twice for units that exclude each
  other. Otherwise, per unit, which examples it is active on (`activity_bits`): the count
  (uniform over 0..n), then which subset, log2 C(n, count), Bernoulli per unit at its own
  frequency.
- `sequence_bits`: a sequence of m integers: the range [lo, hi] (Elias gamma), the
  histogram over it (a composition of m into hi - lo + 1 parts, log2 C(m + K - 1, K - 1)),
  then the sequence given the histogram (log2 of the multinomial m! / prod c_j!).

`SymbolCounts` accumulates per-unit histograms over batches, so bits over a store need
memory for the distinct (unit, symbol) pairs, not for the dataset.
"""

from __future__ import annotations

import math

import numpy as np
import torch

LN2 = math.log(2)
FLOAT_BITS = 32  # a step size or other real number sent as a float32
CODE_CHOICE_BITS = 1  # says whether the index code is categorical or per unit


def gamma_bits(n: torch.Tensor | int) -> torch.Tensor:
    """Length of the Elias gamma code of integers n >= 1: 2 floor(log2 n) + 1."""
    n = torch.as_tensor(n, dtype=torch.float64)
    if (n < 1).any():
        raise ValueError("Elias gamma codes integers >= 1")
    return 2 * torch.floor(torch.log2(n)) + 1


def signed_bits(z: torch.Tensor | int) -> torch.Tensor:
    """Elias gamma of the zigzag map 0, -1, 1, -2, ... -> 1, 2, 3, 4, ..."""
    z = torch.as_tensor(z, dtype=torch.float64)
    return gamma_bits(torch.where(z >= 0, 2 * z, -2 * z - 1) + 1)


def log2_binomial(n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    n, k = torch.as_tensor(n, dtype=torch.float64), torch.as_tensor(k, dtype=torch.float64)
    return (torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)) / LN2


def activity_bits(counts: torch.Tensor, n: int) -> torch.Tensor:
    """Bits to say on which of n examples each unit is active, given how many it is active on."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    return math.log2(n + 1) + log2_binomial(torch.full_like(counts, float(n)), counts)


def choice_bits(counts: torch.Tensor, n: int) -> float:
    """Bits of n categorical symbols, each "none" or one of the units, the units chosen
    counts[i] times: the histogram (a composition of n into width + 1 parts), then which
    sequence has it (log2 of the multinomial n! / (none! prod counts_i!))."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    none = n - counts.sum()
    if none < 0:
        raise ValueError(f"the units are chosen {int(counts.sum())} times in all, more than the {n} examples")
    width = torch.tensor(float(len(counts)), dtype=torch.float64)
    histogram = log2_binomial(n + width, width)
    sequence = (math.lgamma(n + 1) - torch.lgamma(none + 1) - torch.lgamma(counts + 1).sum()) / LN2
    return float(histogram + sequence)


def index_bits(counts: torch.Tensor, n: int, exclusive: bool) -> float:
    """Bits saying which units are active on each of n examples, unit i on counts[i] of
    them: the code choice, then categorical symbols if no example has two units active
    (`exclusive`), else Bernoulli per unit."""
    if exclusive:
        return CODE_CHOICE_BITS + choice_bits(counts, n)
    return CODE_CHOICE_BITS + float(activity_bits(counts, n).sum())


class SymbolCounts:
    """Histograms of integer symbols, one per unit, merged batch by batch. A (unit, symbol)
    pair is held as one int64 key, unit * 2^40 + symbol + 2^39, so merging is a 1-d unique."""

    SHIFT = 40
    OFFSET = 1 << 39  # symbols must lie in (-2^39, 2^39)

    def __init__(self, n_units: int):
        self.n_units = n_units
        self.exclusive = True  # no example seen so far has two units with nonzero symbols
        self._keys = torch.zeros(0, dtype=torch.long)
        self.counts = torch.zeros(0, dtype=torch.long)

    @property
    def keys(self) -> torch.Tensor:
        """The (unit, symbol) pairs seen, (pairs, 2)."""
        return torch.stack([self._keys >> self.SHIFT, (self._keys & ((1 << self.SHIFT) - 1)) - self.OFFSET], dim=1)

    DENSE_BINS = 1 << 24  # a batch whose (unit, symbol) grid has at most this many cells is counted by bincount

    def add(self, units: torch.Tensor, symbols: torch.Tensor) -> None:
        """Count one occurrence of symbols[i] for units[i] (1-d tensors of equal length)."""
        symbols, units = symbols.long().cpu(), units.long().cpu()
        if not symbols.numel():
            return
        lo, hi = int(symbols.min()), int(symbols.max())
        if max(-lo, hi) >= self.OFFSET:
            raise ValueError("a symbol is out of range (|s| >= 2^39): the quantisation step is far too fine")
        span = hi - lo + 1
        if span * self.n_units <= self.DENSE_BINS:  # O(n), where sorting millions of keys is the slow part
            grid = torch.bincount(units * span + (symbols - lo), minlength=self.n_units * span)
            cells = grid.nonzero().squeeze(1)
            new, new_counts = (cells // span) * (1 << self.SHIFT) + cells % span + lo + self.OFFSET, grid[cells]
        else:
            keys = (units * (1 << self.SHIFT) + symbols + self.OFFSET).numpy()
            new, new_counts = (torch.from_numpy(t) for t in np.unique(keys, return_counts=True))
        # merged with numpy: its sort of int64 keys is ~10x torch's on the CPU
        keys, inverse = np.unique(torch.cat([self._keys, new]).numpy(), return_inverse=True)
        merged = np.bincount(inverse, weights=torch.cat([self.counts, new_counts]).numpy(), minlength=len(keys))
        self._keys, self.counts = torch.from_numpy(keys), torch.from_numpy(merged.round().astype(np.int64))

    def add_code(self, rows: torch.Tensor, units: torch.Tensor, symbols: torch.Tensor) -> None:
        """Count the entries (rows[i], units[i]) -> symbols[i] of a sparse code; symbols of zero
        are inactive and not counted."""
        kept = symbols != 0
        rows = rows[kept]
        self.exclusive &= not bool(rows.numel()) or int(torch.bincount(rows).max()) <= 1
        self.add(units[kept], symbols[kept])

    def active(self) -> torch.Tensor:
        """Per unit, how many symbols were counted."""
        return torch.zeros(self.n_units, dtype=torch.long).index_add_(0, self.keys[:, 0], self.counts)

    def bits(self) -> torch.Tensor:
        """Per unit, `sequence_bits` of its symbols (0 for a unit with none)."""
        unit, symbol = self.keys[:, 0], self.keys[:, 1].double()
        m = self.active().double()
        lo = torch.full((self.n_units,), math.inf, dtype=torch.float64).scatter_reduce(0, unit, symbol, "amin")
        hi = torch.full((self.n_units,), -math.inf, dtype=torch.float64).scatter_reduce(0, unit, symbol, "amax")
        used = m > 0
        lo, hi = torch.where(used, lo, 0), torch.where(used, hi, 0)
        k = hi - lo + 1
        ln_perm = torch.zeros(self.n_units, dtype=torch.float64).index_add_(
            0, unit, torch.lgamma(self.counts.double() + 1)
        )
        sequence = (torch.lgamma(m + 1) - ln_perm) / LN2
        histogram = log2_binomial(m + k - 1, k - 1)
        header = signed_bits(lo) + gamma_bits(k)
        return torch.where(used, header + histogram + sequence, 0.0)


def sequence_bits(symbols: torch.Tensor) -> float:
    """Bits of one sequence of integers (every entry, zeros included): a parameter tensor."""
    counts = SymbolCounts(1)
    flat = symbols.flatten().long()
    counts.add(torch.zeros_like(flat), flat)
    return float(counts.bits().sum())
