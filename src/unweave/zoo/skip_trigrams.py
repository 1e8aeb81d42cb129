"""A one-layer attention-only transformer trained on text, read as skip-trigrams (Elhage et
al. 2021, "A Mathematical Framework for Transformer Circuits").

With one attention layer and no MLP, each head's effect on the logits splits into two
tables over the vocabulary: the QK circuit (how much a destination token attends to a
source token) and the OV circuit (which output tokens attending to a source token raises).
Together they are skip-trigrams `source ... destination -> output`. Words are the tokens
(the most frequent `vocab - 1` lowercase words and punctuation marks of the text, the rest
one unknown token), so that the tables read as text.

Each triple read off the weights is checked on held-out text, where the source token
precedes the destination. The QK claim: the head attends from the destination to the source
more than to the average position (attention ratio above 1), positional terms included. The
OV claim: cutting that attention lowers the output's logit more than all but 1% of the
vocabulary's tokens. With
one layer and no layer norm the cut's effect on the logits is linear in the OV circuit, so
the OV check mostly confirms that positional terms do not swamp it; the QK check is the
one that can fail.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from unweave import progress
from unweave.configs import setting
from unweave.sites import capturing, patch
from unweave.text import TextConfig, documents
from unweave.zoo.transformer import Transformer, TransformerConfig

UNKNOWN = "<unk>"
WORD = re.compile(r"[a-z']+|[.,;:!?]")
MIN_COUNT = 50  # tokens rarer than this in the training text are not read as triples
TOP_SHARE = 0.01  # the OV claim holds when the output's drop ranks in this top share of the vocabulary


@dataclass(frozen=True)
class SkipTrigramConfig:
    vocab: int = setting(512, "Tokens: the most frequent words and punctuation marks, plus one unknown token.")
    n_ctx: int = setting(32, "Context length in words.")
    d_model: int = setting(128, "Residual stream width.")
    n_heads: int = setting(4, "Attention heads (one layer, no MLP).")
    steps: int = setting(1000, "Training steps.")
    batch: int = setting(64, "Windows per step.")
    lr: float = setting(3e-3, "AdamW learning rate.")
    seed: int = setting(0, "Seed of the initialisation and the windows.")
    held_out: float = setting(0.1, "Share of the text, at its end, kept for the ablation checks.")

    def __post_init__(self) -> None:
        for name in ("vocab", "n_ctx", "d_model", "n_heads", "steps", "batch"):
            if getattr(self, name) < 2:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 2, got {getattr(self, name)}")
        if not 0 < self.held_out < 0.5:
            raise ValueError(f"--held-out must be in (0, 0.5), got {self.held_out}")

    def transformer(self) -> TransformerConfig:
        return TransformerConfig(
            vocab=self.vocab, n_ctx=self.n_ctx, d_model=self.d_model, n_heads=self.n_heads, d_mlp=0, n_layers=1
        )


@dataclass
class Corpus:
    words: list[str]  # index -> word; 0 is the unknown token
    counts: torch.Tensor  # how often each token occurs in the training stream
    train: torch.Tensor  # token streams
    test: torch.Tensor

    def pairs(self, n_ctx: int) -> torch.Tensor:
        """(source, destination): how often the source occurs within one context before the
        destination in the training stream."""
        v = len(self.words)
        out = torch.zeros(v * v, dtype=torch.long)
        for offset in range(1, n_ctx):
            out += torch.bincount(self.train[:-offset] * v + self.train[offset:], minlength=v * v)
        return out.view(v, v)

    def rows(self, stream: torch.Tensor, n_ctx: int) -> torch.Tensor:
        n = len(stream) // n_ctx
        return stream[: n * n_ctx].view(n, n_ctx)


def corpus(cfg: SkipTrigramConfig, text: TextConfig = TextConfig()) -> Corpus:
    words = [w for doc in documents(text) for w in WORD.findall(doc.lower())]
    if len(words) < 20 * cfg.n_ctx:
        raise ValueError(f"{text.text} has {len(words)} words; the toy needs at least {20 * cfg.n_ctx}")
    split = int(len(words) * (1 - cfg.held_out))
    vocab = [UNKNOWN] + [w for w, _ in Counter(words[:split]).most_common(cfg.vocab - 1)]
    index = {w: i for i, w in enumerate(vocab)}
    stream = torch.tensor([index.get(w, 0) for w in words])
    counts = torch.bincount(stream[:split], minlength=len(vocab))
    return Corpus(vocab, counts, stream[:split], stream[split:])


def train(cfg: SkipTrigramConfig, data: Corpus) -> Transformer:
    torch.manual_seed(cfg.seed)
    model = Transformer(cfg.transformer())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    for _ in progress.track(range(cfg.steps), description="training the attention-only model", total=cfg.steps):
        start = torch.randint(len(data.train) - cfg.n_ctx - 1, (cfg.batch, 1), generator=gen)
        window = data.train[start + torch.arange(cfg.n_ctx + 1)]
        loss = F.cross_entropy(model(window[:, :-1]).flatten(0, 1), window[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def circuits(model: Transformer, head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(QK (destination, source), OV (source, output)) over the vocabulary, token embeddings only."""
    attn = model.blocks[0].attn
    with torch.no_grad():
        E = model.W_E
        qk = (E @ attn.W_Q[head]) @ (E @ attn.W_K[head]).T / attn.W_Q.shape[-1] ** 0.5
        ov = E @ attn.W_V[head] @ attn.W_O[head] @ model.unembed.weight.T
    return qk, ov


@dataclass
class Triple:
    head: int
    source: int
    destination: int
    output: int
    qk: float  # how much more the destination attends to this source than to the average one
    ov: float  # how much more attending to the source raises the output than the average token


def triples(model: Transformer, data: Corpus, per_head: int = 10) -> list[Triple]:
    """Each head's strongest skip-trigrams among tokens seen at least MIN_COUNT times: its
    `per_head` sources whose OV row raises one output most over the rest, each with that
    output and, among the destinations the source precedes at least MIN_COUNT times in the
    text (elsewhere the QK table was never trained), the one that prefers it most."""
    common = (data.counts >= MIN_COUNT).nonzero().flatten()
    common = common[common != 0]
    seen = data.pairs(model.cfg.n_ctx)[common][:, common] >= MIN_COUNT  # (source, destination)
    out = []
    for head in range(model.cfg.n_heads):
        qk, ov = circuits(model, head)
        qk, ov = qk[common][:, common], ov[common][:, common]
        ov = ov - ov.mean(1, keepdim=True)  # what the source raises relative to its other outputs
        qk = qk - qk.mean(1, keepdim=True)  # what the destination prefers relative to other sources
        qk = qk.masked_fill(~seen.T, float("-inf"))
        best_ov, output = ov.max(1)
        best_ov = best_ov.masked_fill(~seen.any(1), float("-inf"))
        for s in best_ov.argsort(descending=True)[:per_head].tolist():
            d = int(qk[:, s].argmax())
            o = int(output[s])
            out.append(Triple(head, int(common[s]), int(common[d]), int(common[o]), float(qk[d, s]), float(ov[s, o])))
    return out


def ablation_check(model: Transformer, rows: torch.Tensor, triple: Triple, max_cases: int = 256) -> dict:
    """On rows of held-out text where the source precedes the destination: the head's
    attention to the source's positions over its average attention per position (median
    over the cases), and the drop in the output's logit (minus the mean logit) at the
    destination when that attention is cut, against the same drop for every other token."""
    is_src = rows == triple.source
    earlier = torch.tril(torch.ones(rows.shape[1], rows.shape[1], dtype=torch.bool), diagonal=-1)
    # (row, destination position) with the source somewhere before it
    has_src = (is_src[:, None, :] & earlier[None]).any(-1) & (rows == triple.destination)
    cases = has_src.nonzero()[:max_cases]
    if len(cases) == 0:
        return {"cases": 0}
    use, idx = cases[:, 0].unique(return_inverse=True)  # the rows run, and each case's index among them
    q = cases[:, 1]
    keys = is_src[cases[:, 0]] & earlier[q]  # (case, key): the source's positions before the destination
    sub = rows[use]

    def cut(pattern: torch.Tensor) -> torch.Tensor:
        pattern = pattern.clone()
        pattern[idx, triple.head, q] = pattern[idx, triple.head, q].masked_fill(keys, 0)
        return pattern

    site = "blocks.0.attn.hook_pattern"
    with torch.no_grad():
        with capturing(model, [site]) as acts:
            clean = model(sub)
        with patch(model, {site: cut}):
            cut_logits = model(sub)
    # the QK claim: attention per source position over attention per position (1/(q+1) on average)
    to_source = (acts[site][idx, triple.head, q] * keys).sum(-1) / keys.sum(-1)
    ratios = (to_source * (q + 1)).tolist()
    at = (idx, q)
    drop = (clean[at] - clean[at].mean(-1, keepdim=True)) - (cut_logits[at] - cut_logits[at].mean(-1, keepdim=True))
    mean_drop = drop.mean(0)  # per output token
    rank = int((mean_drop > mean_drop[triple.output]).sum())  # 0: the output drops most of all tokens
    ratio = float(np.median(ratios))
    return {
        "cases": len(cases),
        "attention_ratio": ratio,
        "output_drop": float(mean_drop[triple.output]),
        "median_drop": float(mean_drop.median()),
        "output_rank": rank,
        "confirmed": ratio > 1 and rank < TOP_SHARE * len(mean_drop),
    }


def next_token_loss(model: Transformer, rows: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(rows[:, :-1])
    return float(F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten()))


def unigram_loss(data: Corpus) -> float:
    """The held-out loss of predicting every word by its training frequency: the bar to beat."""
    p = (data.counts.double() + 1) / (data.counts.sum() + len(data.words))
    return float(-p.log()[data.test].mean())
