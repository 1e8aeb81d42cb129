"""SAEBench's description length of a dictionary's codes, computed the way its MDL
evaluation defines it, to stand beside unweave's count.

SAEBench (evals/mdl, after "Interpretability as Compression", Ayonrinde et al.) gives each
latent i a firing probability p_i (value > 0) and a histogram of its values over
`num_bins` equal bins from 0 to the latent's largest value (every token counted, zeros in
the first bin). Its description length per token is

    sum_i  H_binary(p_i) + p_i * H(histogram_i)          (bits)

entropies of the empirical distributions, no code for the dictionary's own parameters. A
bin count is viable when the codes quantised to bin midpoints still reconstruct:
sqrt(mean squared error) / d_in < 0.01; the smallest viable description length is its
answer. Defaults are SAEBench's (`num_bins_values`, `mse_epsilon_threshold`).

Two deliberate differences, both from streaming over a store: the largest values come from
the first batches (SAEBench also takes them from a few batches), and later values above
them count in the last bin (SAEBench's histogram would drop them).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from unweave.mdl.bases import nonzero_entries

NUM_BINS = (4, 6, 8, 12, 16, 32)
MSE_EPSILON = 0.01


def bin_index(values: torch.Tensor, top: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Histogram bin of each value of a (n, latents) tensor: equal bins over [0, top] per
    latent, the top value in the last bin, values above it clamped there."""
    width = (top / num_bins).clamp(min=1e-30)
    return torch.floor(values / width).long().clamp(0, num_bins - 1)


def midpoints(codes: torch.Tensor, top: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Codes replaced by the midpoint of their bin (SAEBench's quantisation: a value in
    (edge_j, edge_j+1] goes to bin j, and zero to the first bin's midpoint). `top` is each
    code's latent's largest value, broadcast against `codes` (per latent: (latents,))."""
    width = top / num_bins
    index = torch.ceil(codes / width.clamp(min=1e-30)).clamp(1, num_bins) - 1
    return (index + 0.5) * width


def reconstruction_metric(x: torch.Tensor, decoded: torch.Tensor) -> float:
    """SAEBench's viability metric: sqrt(mean squared error) / d_in."""
    return ((decoded.double() - x.double()).pow(2).mean().sqrt() / x.shape[1]).item()


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.double()
    inside = (p > 0) & (p < 1)
    q = torch.where(inside, p, 0.5)
    return torch.where(inside, -q * torch.log2(q) - (1 - q) * torch.log2(1 - q), 0.0)


class Histograms:
    """Per latent: how many tokens it fires on, and its value histogram at each bin count,
    accumulated batch by batch (memory: latents x bins, not tokens)."""

    def __init__(self, top: torch.Tensor, num_bins: tuple[int, ...] = NUM_BINS):
        self.top, self.num_bins = top.double(), num_bins
        self.n = 0
        self.firing = torch.zeros(len(top), dtype=torch.long)
        self.counts = {b: torch.zeros(len(top), b, dtype=torch.long) for b in num_bins}

    def add(self, codes: torch.Tensor) -> None:
        """A batch of codes, (tokens, latents)."""
        _, latents, values = nonzero_entries(codes)
        self.add_entries(latents, values, len(codes))

    def add_entries(self, latents: torch.Tensor, values: torch.Tensor, n: int) -> None:
        """A batch of n tokens given by its nonzero entries (latent, value)."""
        values = values.double()
        self.n += n
        width = len(self.firing)
        self.firing += torch.bincount(latents[values > 0], minlength=width)
        zeros = n - torch.bincount(latents, minlength=width)
        for b, counts in self.counts.items():
            flat = latents * b + bin_index(values[:, None], self.top[latents, None], b)[:, 0]
            counts += torch.bincount(flat, minlength=counts.numel()).reshape(counts.shape)
            counts[:, 0] += zeros  # a zero falls in the first bin

    def bits_per_token(self, num_bins: int) -> float:
        counts = self.counts[num_bins].double()
        p = counts / counts.sum(1, keepdim=True).clamp(min=1)
        value_entropy = -(torch.where(p > 0, p * torch.log2(p.clamp(min=1e-300)), 0.0)).sum(1)
        firing = self.firing.double() / max(self.n, 1)
        return float((binary_entropy(firing) + firing * value_entropy).sum())


def viability(
    x: torch.Tensor,
    entries: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    top: torch.Tensor,
    decode: Callable[[torch.Tensor], torch.Tensor],
    atoms: torch.Tensor,
) -> dict[int, float]:
    """SAEBench's reconstruction metric at each bin count, on rows x whose codes have the
    nonzero entries (rows, latents, values). Its quantisation sends a zero to the first bin's
    midpoint, so the quantised code is that row of midpoints plus, at the entries, each
    value's midpoint less it: decoded as decode(those differences, a sparse code) + the
    row @ atoms (the decoder is linear in the code), with no (rows x latents) code built."""
    rows, latents, values = entries
    out = {}
    for b in NUM_BINS:
        zero = midpoints(torch.zeros_like(top), top, b)  # where a zero goes
        moved = midpoints(values, top[latents], b) - zero[latents]
        index = torch.stack([rows, latents])
        sparse = torch.sparse_coo_tensor(index, moved, (len(x), len(top)), check_invariants=False)
        out[b] = reconstruction_metric(x, decode(sparse) + zero @ atoms)
    return out


def chosen(bits: dict[int, float], metric: dict[int, float]) -> tuple[int, bool]:
    """SAEBench's pick: the smallest description length among viable bin counts (among all
    when none is viable, flagged False)."""
    viable = [b for b in bits if metric[b] < MSE_EPSILON]
    pool = viable or list(bits)
    return min(pool, key=lambda b: bits[b]), bool(viable)
