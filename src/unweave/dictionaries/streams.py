"""Endless shuffled batches of activations for training: from a store on disk, or live
from the model (no store). Memory stays bounded by a few batches either way."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from unweave.devices import model_device
from unweave.sites import capture
from unweave.store import ActivationStore, StoreError


def store_batches(
    store: ActivationStore,
    sites: str | list[str],
    batch_size: int,
    seed: int,
    shards: list[int] | None = None,
) -> Iterator[torch.Tensor | tuple[torch.Tensor, ...]]:
    """Shuffled batches, epoch after epoch, NaN/inf checked, never the whole store in memory;
    from `shards` only when given (a rank's share)."""
    epoch = 0
    while True:
        yield from store.batches(sites, batch_size, seed=seed + epoch, drop_last=True, check_finite=True, shards=shards)
        epoch += 1


def live_batches(
    model: torch.nn.Module,
    sites: str | list[str],
    rows: torch.Tensor,
    batch_size: int,
    forward_rows: int = 8,
    buffer_batches: int = 16,
    seed: int = 0,
) -> Iterator[torch.Tensor | tuple[torch.Tensor, ...]]:
    """Endless shuffled activation batches computed from the model while training runs (no
    store): rows of tokens are run `forward_rows` at a time (stopping after the last site),
    and batches are drawn from a shuffle buffer of `buffer_batches` batches, so memory stays
    bounded whatever the number of tokens."""
    names = [sites] if isinstance(sites, str) else list(sites)
    device = model_device(model)
    gen = torch.Generator().manual_seed(seed)
    buffer: list[torch.Tensor] | None = None
    while True:
        for i in torch.randperm(len(rows), generator=gen).split(forward_rows):
            acts = capture(model, names, rows[i].to(device), stop_early=True)
            new = [acts[n].reshape(-1, acts[n].shape[-1]).float() for n in names]
            for n, a in zip(names, new):
                if not torch.isfinite(a).all():
                    raise StoreError(f"the model produced NaN or inf at site {n!r}; check its dtype and inputs")
            buffer = new if buffer is None else [torch.cat([b, a]) for b, a in zip(buffer, new)]
            if len(buffer[0]) < buffer_batches * batch_size:
                continue
            perm = torch.randperm(len(buffer[0]), generator=gen).to(device)
            buffer = [b[perm] for b in buffer]
            while len(buffer[0]) >= buffer_batches * batch_size // 2 + batch_size:  # keep half to mix with new rows
                batch = [b[:batch_size] for b in buffer]
                buffer = [b[batch_size:] for b in buffer]
                yield batch[0] if isinstance(sites, str) else tuple(batch)
