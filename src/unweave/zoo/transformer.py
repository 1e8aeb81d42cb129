"""A small transformer for toy tasks, with a stable, guessable name for every activation.

Names follow TransformerLens: `hook_embed`, `blocks.0.hook_resid_pre`,
`blocks.0.attn.hook_q_input` (and `_k_`, `_v_`), `blocks.0.attn.hook_pattern`,
`blocks.0.attn.hook_z` (per-head outputs),
`blocks.0.hook_attn_out`, `blocks.0.mlp.hook_post`, `blocks.0.hook_resid_post`, `unembed`.
The `hook_*` modules are identities that exist only to be sites. No layer norm by default,
as in the grokking work, so that the weights read off directly.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

ATTENTION = ("learned", "uniform")


@dataclass(frozen=True)
class TransformerConfig:
    vocab: int
    n_ctx: int
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512  # 0 makes the model attention-only
    n_layers: int = 1
    d_vocab_out: int | None = None  # defaults to vocab
    # "uniform": every position attends equally to itself and all earlier positions, with no
    # queries or keys (Zhong et al. 2023's constant attention, under which modular addition
    # learns the pizza algorithm instead of the clock)
    attention: str = "learned"

    def __post_init__(self):
        for field in ("vocab", "n_ctx", "d_model", "n_heads", "n_layers"):
            if getattr(self, field) < 1:
                raise ValueError(f"TransformerConfig.{field} must be at least 1, got {getattr(self, field)}")
        if self.attention not in ATTENTION:
            raise ValueError(f"TransformerConfig.attention must be one of {ATTENTION}, got {self.attention!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"TransformerConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        h, d, dh = cfg.n_heads, cfg.d_model, cfg.d_head
        scale = 1 / math.sqrt(d)
        self.uniform = cfg.attention == "uniform"
        if not self.uniform:  # uniform attention has no parameters to learn where to look
            self.W_Q = nn.Parameter(torch.randn(h, d, dh) * scale)
            self.W_K = nn.Parameter(torch.randn(h, d, dh) * scale)
        self.W_V = nn.Parameter(torch.randn(h, d, dh) * scale)
        self.W_O = nn.Parameter(torch.randn(h, dh, d) * scale)
        self.register_buffer("causal", torch.tril(torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool)), persistent=False)
        # the residual stream as read by the queries, keys and values (TransformerLens's split
        # qkv input), so that a hypothesis can claim each path separately
        self.hook_q_input, self.hook_k_input, self.hook_v_input = nn.Identity(), nn.Identity(), nn.Identity()
        self.hook_pattern = nn.Identity()  # (batch, head, query, key)
        self.hook_z = nn.Identity()  # (batch, pos, head, d_head)

    def forward(self, x: torch.Tensor, last: int | None = None, embedded: Embedded | None = None) -> torch.Tensor:
        """The heads' output at every position, or with `last` at the last `last` positions only.
        `embedded`: x is that embedding of tokens (see `Embedded`)."""
        n = x.shape[1]
        rows = slice(n - min(last or n, n), n)  # the query positions
        hooked = _patched(self.hook_q_input, self.hook_k_input, self.hook_v_input)
        tables = embedded if embedded is not None and not hooked else None  # a patched input takes the plain path
        v = self._project(self.hook_v_input(x), self.W_V, tables)
        pattern = self._uniform_pattern(x, rows) if self.uniform else self._learned_pattern(x, rows, tables)
        z = self.hook_z(torch.einsum("bhqk,bhke->bqhe", self.hook_pattern(pattern), v))
        return torch.einsum("bqhe,hed->bqd", z, self.W_O)

    @staticmethod
    def _project(
        x: torch.Tensor, weight: torch.Tensor, tables: Embedded | None, rows: slice = slice(None)
    ) -> torch.Tensor:
        """x[:, rows] by each head's weight (heads, d_model, d_head): (batch, heads, positions, d_head)."""
        if tables is None:
            return torch.einsum("bpd,hde->bhpe", x[:, rows], weight)
        return tables.project(weight, rows)

    def _learned_pattern(self, x: torch.Tensor, rows: slice, tables: Embedded | None = None) -> torch.Tensor:
        q = self._project(self.hook_q_input(x), self.W_Q, tables, rows)
        k = self._project(self.hook_k_input(x), self.W_K, tables)
        n = x.shape[1]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        return scores.masked_fill(~self.causal[rows, :n], float("-inf")).softmax(-1)

    def _uniform_pattern(self, x: torch.Tensor, rows: slice) -> torch.Tensor:
        n = x.shape[1]
        causal = self.causal[rows, :n].to(x.dtype)
        pattern = causal / causal.sum(-1, keepdim=True)
        return pattern.expand(x.shape[0], self.W_V.shape[0], *causal.shape)


@dataclass
class Embedded:
    """The first block's input is token plus position embedding, so a linear map of it is the
    map of each vocabulary row and each position row, gathered: a (vocab + positions) x d_model
    product instead of a (batch x positions) x d_model one (modular addition's sampler: 60 + 3
    rows instead of 256 x 3)."""

    tokens: torch.Tensor  # (batch, positions)
    W_E: torch.Tensor
    W_pos: torch.Tensor  # the rows of the positions used

    def project(self, weight: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        h, d, e = weight.shape
        flat = weight.transpose(0, 1).reshape(d, h * e)
        tokens = self.tokens[:, rows]
        out = nn.functional.embedding(tokens, self.W_E @ flat) + self.W_pos[rows] @ flat  # (batch, pos, h x e)
        return out.view(*tokens.shape, h, e).transpose(1, 2)


def _patched(*hooks: nn.Module) -> bool:
    """Whether a site hook (`sites.patch`, `sites.capture`) sits on any of these identities: then
    what flows through them must be computed as it is, not by `Embedded`'s shortcut."""
    return any(h._forward_hooks or h._forward_pre_hooks for h in hooks)


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.W_in = nn.Parameter(torch.randn(cfg.d_model, cfg.d_mlp) / math.sqrt(cfg.d_model))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.randn(cfg.d_mlp, cfg.d_model) / math.sqrt(cfg.d_mlp))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_post = nn.Identity()  # neuron activations after the ReLU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_post(torch.relu(x @ self.W_in + self.b_in)) @ self.W_out + self.b_out


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.hook_resid_pre = nn.Identity()
        self.attn = Attention(cfg)
        self.hook_attn_out = nn.Identity()
        self.hook_resid_mid = nn.Identity()
        self.mlp = MLP(cfg) if cfg.d_mlp else None
        self.hook_mlp_out = nn.Identity()
        self.hook_resid_post = nn.Identity()

    def forward(self, x: torch.Tensor, last: int | None = None, embedded: Embedded | None = None) -> torch.Tensor:
        """The block at every position, or with `last` at the last `last` positions only (the
        attention still reads every position's keys and values)."""
        x_patched = _patched(self.hook_resid_pre)
        x = self.hook_resid_pre(x)
        attn = self.attn(x, last, None if x_patched else embedded)
        x = self.hook_resid_mid(x[:, x.shape[1] - attn.shape[1] :] + self.hook_attn_out(attn))
        if self.mlp is not None:
            x = x + self.hook_mlp_out(self.mlp(x))
        return self.hook_resid_post(x)


class Transformer(nn.Module):
    """tokens (batch, pos) -> logits (batch, pos, d_vocab_out); with `read_last` set (see
    `reading_last`), logits (batch, read_last, d_vocab_out) at the last positions only."""

    read_last: int | None = None
    token_tables: bool = False  # the first block's projections through `Embedded` (see `reading_last`)

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        d_out = cfg.d_vocab_out or cfg.vocab
        self.W_E = nn.Parameter(torch.randn(cfg.vocab, cfg.d_model) / math.sqrt(cfg.d_model))
        self.W_pos = nn.Parameter(torch.randn(cfg.n_ctx, cfg.d_model) / math.sqrt(cfg.d_model))
        self.hook_embed = nn.Identity()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.unembed = nn.Linear(cfg.d_model, d_out, bias=False)
        nn.init.normal_(self.unembed.weight, std=1 / math.sqrt(d_out))

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token plus position embedding. Through F.embedding, not W_E[tokens]: the backward
        of advanced indexing accumulates in a thread-dependent order on the CPU, so training
        with two threads gave a different model each run."""
        return nn.functional.embedding(tokens, self.W_E) + self.W_pos[: tokens.shape[1]]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(
                f"tokens must have shape (batch, pos) with pos <= {self.cfg.n_ctx}, got {tuple(tokens.shape)}"
            )
        x = self.hook_embed(self.embed(tokens))
        use_tables = self.token_tables and not _patched(self.hook_embed)
        tables = Embedded(tokens, self.W_E, self.W_pos[: tokens.shape[1]]) if use_tables else None
        for i, block in enumerate(self.blocks):
            x = block(x, self.read_last if i == len(self.blocks) - 1 else None, tables if i == 0 else None)
        return self.unembed(x)

    def reading_last(self, positions: int, token_tables: bool = False) -> Transformer:
        """The same model (its parameters shared, not copied) computing its last block and logits
        at the last `positions` positions only: for a loss that reads no others (modular
        addition's, at '='), the same loss and gradients for less work (the LLC's sampler runs
        tens of thousands of these). The earlier blocks still run at every position. With
        `token_tables`, the first block's queries, keys and values are also computed per
        vocabulary and position row and gathered (`Embedded`), unless a hook patches its input."""
        if positions < 1:
            raise ValueError(f"reading_last needs at least 1 position, got {positions}")
        view = copy.copy(self)  # a new module object over the same parameter and submodule dicts
        view.read_last = positions
        view.token_tables = token_tables
        return view
