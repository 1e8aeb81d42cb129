"""A planted attention-only transformer with two independent circuits in shared layers: the
known answer for cutting attention heads into modules (`unweave graph two-circuits --units heads`).

Circuit A is induction on A's tokens (K-composition): its layer-0 heads copy the previous
token, if it is an A token, into a "previous A token" subspace; its layer-1 heads attend from
an A token to the position just after that token's earlier occurrence (whose key is that
subspace) and predict the token found there.
Circuit B predicts the B token two positions back (V-composition): its layer-0 heads copy the
previous token, if it is a B token, into a "previous B token" subspace; its layer-1 heads
attend to the previous position and copy what was written there into the logits.

Each circuit has two heads per layer that need each other's work: the layer-0 heads split the
positions between them by parity, the layer-1 heads split the tokens (A: the queries they
answer; B: the tokens they predict) and read what both layer-0 heads wrote. So a circuit is one
part, not two. Heads with nothing to do attend to position 0, a BOS token whose embedding no
head reads (an attention sink: every position carries one more direction, which every head's
query turns into half a match's score for BOS's key). Both circuits read and write one residual
stream: each circuit's token and "previous token" directions are orthonormal in its own half
of it, while the positions, which both circuits' heads read, are orthonormal in a random basis
of all of it, so what one circuit writes leaks into the other's attention scores (over seeds
0-3, ablating A's heads moves B's logits by 8-26% of what it does to A's; B's move A's by 2-5%).
The heads' roles are shuffled over the head indices of each layer.
`head_circuit[layer * n_heads + head]` is 0 for A's heads and 1 for B's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from unweave.zoo.transformer import Attention, Transformer, TransformerConfig

BOS = 0
HEADS = 4  # per layer: two per circuit
ROLES = (  # (circuit, role) of each head before the shuffle, per layer
    ((0, "previous, even"), (0, "previous, odd"), (1, "previous, even"), (1, "previous, odd")),
    (
        (0, "induction, first half"),
        (0, "induction, second half"),
        (1, "two back, first half"),
        (1, "two back, second half"),
    ),
)
CIRCUITS = ("A (induction)", "B (two back)")


@dataclass(frozen=True)
class TwoCircuitsConfig:
    tokens: int = 8  # per circuit
    length: int = 6  # each sequence is BOS, `length` distinct tokens, then the same tokens again
    d_model: int = 128  # random directions overlap by about 1 / sqrt(d_model / 2): at 64 the circuits misfire
    score: float = 20.0  # attention score of a match; the sink's is half of it
    gain: float = 8.0  # logit a layer-1 head adds for the token it predicts
    seed: int = 0

    def __post_init__(self):
        if self.tokens < 2 or self.tokens % 2:
            raise ValueError(f"tokens must be an even number per circuit (two heads share them), got {self.tokens}")
        if not 2 <= self.length <= 2 * self.tokens:
            raise ValueError(f"length must be between 2 and {2 * self.tokens} (distinct tokens), got {self.length}")
        # d_head >= tokens also leaves each circuit's half of the stream room for its 2 x tokens directions
        if self.d_model % HEADS or self.d_head < max(self.n_ctx, self.tokens):
            raise ValueError(
                f"d_model must be a multiple of {HEADS}, at least {HEADS * max(self.n_ctx, self.tokens)} (a head's "
                f"rank: the positions it maps and the sink, or the tokens it copies), got {self.d_model}"
            )

    @property
    def vocab(self) -> int:
        return 1 + 2 * self.tokens  # BOS, A's tokens, B's tokens

    @property
    def n_ctx(self) -> int:
        return 1 + 2 * self.length

    @property
    def d_head(self) -> int:
        return self.d_model // HEADS

    def circuit_tokens(self, circuit: int) -> list[int]:
        return list(range(1 + circuit * self.tokens, 1 + (circuit + 1) * self.tokens))


class TwoCircuits(Transformer):
    """The planted model: a zoo `Transformer` (2 attention-only layers of 4 heads) with weights set
    by hand. `head_circuit` (layers * heads,) is the planted answer; `head_roles` names each head."""

    def __init__(self, cfg: TwoCircuitsConfig = TwoCircuitsConfig()):
        super().__init__(
            TransformerConfig(cfg.vocab, cfg.n_ctx, cfg.d_model, HEADS, d_mlp=0, n_layers=2, d_vocab_out=cfg.vocab)
        )
        self.planted = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        dirs = Directions.draw(cfg, gen)
        with torch.no_grad():
            self.W_E.copy_(dirs.tok.T)
            self.W_pos.copy_((dirs.pos + dirs.sink[:, None]).T)
            self.unembed.weight.copy_(dirs.tok.T)  # a token's logit reads its own embedding direction
            circuit, roles = [], []
            for layer, block in enumerate(self.blocks):
                attn = block.attn
                for weight in (attn.W_Q, attn.W_K, attn.W_V, attn.W_O):
                    weight.zero_()
                for head, index in enumerate(torch.randperm(HEADS, generator=gen).tolist()):
                    c, role = ROLES[layer][index]
                    _plant(attn, head, cfg, c, role, dirs)
                    circuit.append(c)
                    roles.append(f"L{layer}.H{head}: circuit {CIRCUITS[c]}, {role}")
        self.register_buffer("head_circuit", torch.tensor(circuit))
        self.head_roles = roles


@dataclass
class Directions:
    """The residual stream's directions, as columns (d_model, count)."""

    tok: torch.Tensor  # every token's embedding (and unembedding) direction
    pos: torch.Tensor  # every position's
    sink: torch.Tensor  # (d_model,) at every position: the query that finds BOS
    prev: torch.Tensor  # every token's "previous token" direction (zero for BOS)

    @classmethod
    def draw(cls, cfg: TwoCircuitsConfig, gen: torch.Generator) -> Directions:
        """Each circuit's tokens and "previous token" directions: orthonormal, in a random basis of
        its own half of the stream; BOS, the positions and the sink: orthonormal in a random basis
        of all of it, so they overlap both halves."""
        half = cfg.d_model // 2
        own = [_orthonormal(cfg.d_model, 2 * cfg.tokens, gen, block) for block in (slice(0, half), slice(half, None))]
        shared = _orthonormal(cfg.d_model, 2 + cfg.n_ctx, gen, slice(None))
        n = cfg.tokens
        return cls(
            tok=torch.cat([shared[:, :1], own[0][:, :n], own[1][:, :n]], dim=1),
            pos=shared[:, 2:],
            sink=shared[:, 1],
            prev=torch.cat([torch.zeros(cfg.d_model, 1), own[0][:, n:], own[1][:, n:]], dim=1),
        )


def _plant(attn: Attention, head: int, cfg: TwoCircuitsConfig, circuit: int, role: str, dirs: Directions) -> None:
    """Set one head's weights for its role: (query, key) direction pairs for its scores and
    (read, write) pairs for what it moves, each pair one of the head's d_head coordinates."""
    own = cfg.circuit_tokens(circuit)
    half = own[: len(own) // 2] if role.endswith("first half") else own[len(own) // 2 :]
    positions = range(1, cfg.n_ctx)
    tok, pos, prev = dirs.tok, dirs.pos, dirs.prev
    if role.startswith("previous"):
        parity = 0 if role.endswith("even") else 1
        qk = [(pos[:, p], pos[:, p - 1]) for p in positions if p % 2 == parity]
        ov = [(tok[:, t], prev[:, t]) for t in own]
    elif role.startswith("induction"):
        qk = [(tok[:, t], prev[:, t]) for t in half]
        ov = [(tok[:, t], cfg.gain * tok[:, t]) for t in own]
    else:  # two back: the previous position's "previous B token"
        qk = [(pos[:, p], pos[:, p - 1]) for p in positions]
        ov = [(prev[:, t], cfg.gain * tok[:, t]) for t in half]
    qk.append((dirs.sink, tok[:, BOS] / 2))
    scale = cfg.score * math.sqrt(cfg.d_head)  # the layer divides the scores by sqrt(d_head)
    for j, (query, key) in enumerate(qk):
        attn.W_Q[head, :, j] = query
        attn.W_K[head, :, j] = scale * key
    for j, (read, write) in enumerate(ov):
        attn.W_V[head, :, j] = read
        attn.W_O[head, j, :] = write


def _orthonormal(rows: int, cols: int, gen: torch.Generator, block: slice) -> torch.Tensor:
    """`cols` orthonormal vectors of `rows` dimensions in a random basis of the coordinates `block`."""
    m = torch.zeros(rows, cols)
    m[block] = torch.linalg.qr(torch.randn(len(range(rows)[block]), cols, generator=gen))[0]
    return m


def sample_tokens(count: int, cfg: TwoCircuitsConfig, seed: int) -> torch.Tensor:
    """(count, n_ctx) sequences: BOS, `length` distinct tokens of either circuit, then the same again."""
    gen = torch.Generator().manual_seed(seed)
    first = torch.stack([torch.randperm(2 * cfg.tokens, generator=gen)[: cfg.length] + 1 for _ in range(count)])
    return torch.cat([torch.full((count, 1), BOS), first, first], dim=1)


def accuracy(model: TwoCircuits, tokens: torch.Tensor) -> dict[str, float]:
    """How often each circuit computes what it was planted to: A, at a second-half A token whose
    successor is an A token, ranks that successor first among A's tokens; B, at a position two
    after a B token, ranks that token first among B's."""
    cfg = model.planted
    with torch.no_grad():
        logits = model(tokens)
    a, b = cfg.circuit_tokens(0), cfg.circuit_tokens(1)
    is_a = (tokens >= a[0]) & (tokens <= a[-1])
    is_b = (tokens >= b[0]) & (tokens <= b[-1])
    start = 1 + cfg.length
    current, following = slice(start, cfg.n_ctx - 1), slice(start + 1, cfg.n_ctx)
    where_a = is_a[:, current] & is_a[:, following]
    guess_a = logits[:, current][..., a].argmax(-1) + a[0]
    where_b = is_b[:, :-2]
    guess_b = logits[:, 2:][..., b].argmax(-1) + b[0]
    return {
        CIRCUITS[0]: float((guess_a == tokens[:, following])[where_a].float().mean()),
        CIRCUITS[1]: float((guess_b == tokens[:, :-2])[where_b].float().mean()),
    }
