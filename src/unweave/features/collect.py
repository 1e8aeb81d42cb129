"""Per-latent statistics from one pass over a dictionary's latents on text, in memory that
does not grow with the text (but for the token ids themselves):

- firing count, sum and maximum;
- a histogram of the nonzero activations on fixed log10 bins (the same for every latent, so
  one pass suffices);
- the top-k activations, each with the latent's activations on the tokens around it;
- a uniform random sample of the latent's firings (the smallest keys of iid uniform draws:
  reservoir sampling, vectorised), from which contexts at lower quantiles are drawn;
- for the token search, the sum of each latent's activation and its firing count on each
  token id (sparse: only pairs that occur).

Everything is updated per batch of rows with tensor ops over all latents at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

LOG10_LOW, LOG10_HIGH, BINS = -6.0, 6.0, 240  # histogram of log10(activation): 0.05 decades per bin


@dataclass(frozen=True)
class Window:
    before: int = 24  # tokens shown before the activating one
    after: int = 6  # and after it (within the same row)

    @property
    def size(self) -> int:
        return self.before + 1 + self.after


def histogram_edges() -> np.ndarray:
    return 10 ** np.linspace(LOG10_LOW, LOG10_HIGH, BINS + 1)


def _bins(values: torch.Tensor) -> torch.Tensor:
    scaled = (values.double().log10() - LOG10_LOW) / (LOG10_HIGH - LOG10_LOW) * BINS
    return scaled.floor().long().clamp(0, BINS - 1)  # values outside the range fall in the end bins


class LatentStats:
    """Accumulates the statistics above; `update` once per batch of rows, in order."""

    def __init__(self, n_latents: int, top: int = 16, samples: int = 64, window: Window = Window(), seed: int = 0):
        L, self.n_latents, self.top, self.samples, self.window = n_latents, n_latents, top, samples, window
        self.n_tokens = 0
        self.ctx_len: int | None = None
        self.count = torch.zeros(L, dtype=torch.long)
        self.total = torch.zeros(L, dtype=torch.float64)
        self.max = torch.zeros(L)
        self.hist = torch.zeros(L * BINS, dtype=torch.long)
        self.top_value = torch.full((L, top), -torch.inf)
        self.top_pos = torch.full((L, top), -1, dtype=torch.long)
        self.top_window = torch.full((L, top, window.size), torch.nan)
        self.sample_key = torch.full((L, samples), torch.inf)
        self.sample_value = torch.zeros(L, samples)
        self.sample_pos = torch.full((L, samples), -1, dtype=torch.long)
        self.sample_window = torch.full((L, samples, window.size), torch.nan)
        self.token_ids: list[torch.Tensor] = []
        self._pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (key, sum, fires) per batch
        self._gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def update(self, tokens: torch.Tensor, z: torch.Tensor) -> None:
        """tokens (B, T) ids; z (B, T, L) latent activations on them (zero where not firing)."""
        B, T, L = z.shape
        if L != self.n_latents or tokens.shape != (B, T):
            raise ValueError(f"expected tokens (B, T) and latents (B, T, {self.n_latents}), got {tuple(z.shape)}")
        if self.ctx_len not in (None, T):
            raise ValueError(f"every batch must have rows of {self.ctx_len} tokens, got {T}")
        self.ctx_len = T
        z = z.float().cpu()
        tokens = tokens.cpu()
        flat = z.reshape(B * T, L)
        fires = flat > 0
        self.count += fires.sum(0)
        self.total += flat.sum(0, dtype=torch.float64)
        self.max = torch.maximum(self.max, flat.max(0).values)
        rows, latents = fires.nonzero(as_tuple=True)
        values = flat[rows, latents]
        self.hist += torch.bincount(latents * BINS + _bins(values), minlength=L * BINS)
        self._add_pairs(tokens.reshape(-1)[rows], latents, values)

        top_vals, top_idx = flat.masked_fill(~fires, -torch.inf).topk(min(self.top, B * T), dim=0)  # (k, L)
        top_windows = self._windows(z, top_idx)
        self.top_value, self.top_pos, self.top_window = _merge(
            (self.top_value, self.top_pos, self.top_window),
            (top_vals.T, top_idx.T + self.n_tokens, top_windows),
            self.top,
            largest=True,
        )

        keys = torch.rand(flat.shape, generator=self._gen).masked_fill_(~fires, torch.inf)
        sample_keys, sample_idx = keys.topk(min(self.samples, B * T), dim=0, largest=False)
        sample_vals = flat.gather(0, sample_idx)
        merged = _merge(
            (self.sample_key, self.sample_value, self.sample_pos, self.sample_window),
            (sample_keys.T, sample_vals.T, sample_idx.T + self.n_tokens, self._windows(z, sample_idx)),
            self.samples,
            largest=False,
        )
        self.sample_key, self.sample_value, self.sample_pos, self.sample_window = merged
        self.token_ids.append(tokens.reshape(-1).to(torch.int32))
        self.n_tokens += B * T

    def _windows(self, z: torch.Tensor, flat_idx: torch.Tensor) -> torch.Tensor:
        """(L, k, window) activations of each latent around its chosen tokens (NaN off the row)."""
        B, T, L = z.shape
        row, pos = (flat_idx // T).T, (flat_idx % T).T  # (L, k)
        offsets = torch.arange(-self.window.before, self.window.after + 1)
        at = pos[..., None] + offsets  # (L, k, W)
        inside = (at >= 0) & (at < T)
        latent = torch.arange(L)[:, None, None]
        got = z[row[..., None].expand_as(at), at.clamp(0, T - 1), latent.expand_as(at)]
        return got.masked_fill(~inside, torch.nan)

    def _add_pairs(self, token: torch.Tensor, latent: torch.Tensor, value: torch.Tensor) -> None:
        key = token.long() * self.n_latents + latent
        self._pairs.append(_coalesce(key, value.double(), torch.ones_like(value, dtype=torch.long)))
        if len(self._pairs) >= 16:  # bound the memory: merge the batches' pairs now and then
            self._pairs = [_coalesce(*(torch.cat(parts) for parts in zip(*self._pairs)))]

    def token_latent_pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(token id, latent, activation sum, firing count) of every pair that occurred."""
        if not self._pairs:
            empty = torch.zeros(0, dtype=torch.long)
            return empty, empty, empty.double(), empty
        key, total, fires = _coalesce(*(torch.cat(parts) for parts in zip(*self._pairs)))
        return key // self.n_latents, key % self.n_latents, total, fires

    def tokens(self) -> torch.Tensor:
        """The flat token stream seen so far (int64)."""
        return torch.cat(self.token_ids).long() if self.token_ids else torch.zeros(0, dtype=torch.long)

    @property
    def density(self) -> torch.Tensor:
        return self.count.double() / max(self.n_tokens, 1)

    def histogram(self, latent: int) -> np.ndarray:
        return self.hist.view(self.n_latents, BINS)[latent].numpy()


def _coalesce(key: torch.Tensor, total: torch.Tensor, fires: torch.Tensor):
    unique, inverse = torch.unique(key, return_inverse=True)
    summed = torch.zeros(len(unique), dtype=total.dtype).index_add_(0, inverse, total)
    counted = torch.zeros(len(unique), dtype=fires.dtype).index_add_(0, inverse, fires)
    return unique, summed, counted


def _merge(old: tuple, new: tuple, k: int, largest: bool) -> tuple:
    """Keep the k best of old and new entries per latent, ranked by the first tensor of each
    tuple (L, n); the other tensors (L, n, ...) follow the same selection."""
    both = [torch.cat([o, n], dim=1) for o, n in zip(old, new)]
    _, idx = both[0].topk(k, dim=1, largest=largest)
    out = []
    for t in both:
        index = idx.view(*idx.shape, *([1] * (t.dim() - 2))).expand(*idx.shape, *t.shape[2:])
        out.append(t.gather(1, index))
    return tuple(out)
