"""Induction heads in a two-layer attention-only transformer (Olsson et al. 2022).

Sequences are random tokens whose second half repeats the first, so the second half can
only be predicted by looking back: a previous-token head in layer 0 writes "the token
before me" into each position, and an induction head in layer 1 attends from the current
token to the position just after its earlier occurrence and copies that token.

Heads are found from their attention patterns on repeated sequences:
- previous-token score: mean attention from position i to i-1;
- induction score: mean attention from position i of the second half to i - L + 1
  (the token after the current token's earlier occurrence), L the half length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unweave import progress
from unweave.sites import capture
from unweave.zoo.transformer import Transformer, TransformerConfig


@dataclass(frozen=True)
class InductionConfig:
    vocab: int = 32
    n_ctx: int = 24  # a random half of length n_ctx/4 .. n_ctx/2 repeats once
    d_model: int = 64
    n_heads: int = 4
    lr: float = 3e-3
    steps: int = 2000
    batch: int = 64
    seed: int = 0

    def transformer(self) -> TransformerConfig:
        return TransformerConfig(
            vocab=self.vocab, n_ctx=self.n_ctx, d_model=self.d_model, n_heads=self.n_heads, d_mlp=0, n_layers=2
        )


def repeated_sequences(
    n: int, vocab: int, n_ctx: int, gen: torch.Generator, half: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, n_ctx) random tokens whose tokens half..2*half-1 repeat tokens 0..half-1, and
    the half length of each row. With `half=None` it varies per row (n_ctx/4 .. n_ctx/2),
    so that attending to a fixed offset (a positional shortcut) does not solve the task."""
    tokens = torch.randint(vocab, (n, n_ctx), generator=gen)
    if half is None:
        halves = torch.randint(n_ctx // 4, n_ctx // 2 + 1, (n,), generator=gen)
    else:
        halves = torch.full((n,), half)
    pos = torch.arange(n_ctx)
    second = (pos >= halves[:, None]) & (pos < 2 * halves[:, None])
    source = (pos - halves[:, None]).clamp(min=0)
    tokens = torch.where(second, tokens.gather(1, source), tokens)
    return tokens, halves


def repeated_loss(model: Transformer, tokens: torch.Tensor, halves: torch.Tensor) -> torch.Tensor:
    """Next-token loss where it is predictable: positions L .. 2L-2 of each row."""
    logits = model(tokens)[:, :-1]
    pos = torch.arange(tokens.shape[1] - 1)
    mask = (pos >= halves[:, None]) & (pos <= 2 * halves[:, None] - 2)
    return F.cross_entropy(logits[mask], tokens[:, 1:][mask])


def train(cfg: InductionConfig = InductionConfig()) -> Transformer:
    """Train from scratch (about 30 s at the default size on 2 cores); seeded and deterministic."""
    torch.manual_seed(cfg.seed)
    model = Transformer(cfg.transformer())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    for _ in progress.track(range(cfg.steps), description="training induction model", total=cfg.steps):
        tokens, halves = repeated_sequences(cfg.batch, cfg.vocab, cfg.n_ctx, gen)
        loss = repeated_loss(model, tokens, halves)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def head_scores(patterns: torch.Tensor, half: int) -> dict[str, torch.Tensor]:
    """Previous-token and induction scores per head from patterns (batch, head, query, key)
    on repeated sequences of half length `half`."""
    n = patterns.shape[-1]
    q = torch.arange(1, n)
    prev = patterns[:, :, q, q - 1].mean(dim=(0, 2))
    q2 = torch.arange(half, n)
    induction = patterns[:, :, q2, q2 - half + 1].mean(dim=(0, 2))
    return {"previous_token": prev, "induction": induction}


def model_head_scores(model: Transformer, tokens: torch.Tensor, half: int) -> dict[str, torch.Tensor]:
    """Scores (layers, heads) for every head of a zoo transformer."""
    sites = [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
    acts = capture(model, sites, tokens)
    per_layer = [head_scores(acts[s], half) for s in sites]
    return {k: torch.stack([p[k] for p in per_layer]) for k in ("previous_token", "induction")}
