"""Edges between the components of a zoo transformer (no layer norm), scored three ways.

The residual stream is a sum of component outputs: the embedding (token + position), every
attention head, every MLP. Each later component reads its own copy of that sum, one per
input (a head's query, key and value inputs; an MLP's input; the logits), so an edge is
(upstream component -> downstream input). `EdgeModel.forward` runs the model with every
edge's contribution mixed between the clean run and a corrupted one,

    input_d = sum_u  alpha_ud * out_u  +  (1 - alpha_ud) * out_u(corrupted input),

with out_u recomputed in the current run (so patching an edge reaches what lies after it).
alpha = 1 everywhere is the model; alpha = 0 everywhere is its run on the corrupted input.
Edge scores, for a metric m (higher is better) of the clean run:
- exact: m(all edges clean) - m(this edge corrupted), one forward per edge;
- EAP (attribution patching, Syed et al. 2023): dm/dalpha_e at alpha = 1, one backward;
- EAP-IG: dm/dalpha_e averaged over alpha = t for every edge, t on `IG_STEPS` midpoints of
  (0, 1): integrated gradients along the straight path from the corrupted run to the clean
  one, through every activation (the "activations" variant in MIB); its scores sum to
  m(clean) - m(corrupted) as the steps grow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from unweave.zoo.transformer import Transformer

IG_STEPS = 5


@dataclass(frozen=True)
class Edge:
    source: str  # "embed", "L0.H1", "L0.mlp"
    target: str  # "L1.H0.k", "L1.mlp", "logits"

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}"


class EdgeModel:
    def __init__(self, model: Transformer):
        if not isinstance(model, Transformer):
            raise TypeError(f"edges are built for unweave's zoo Transformer, got {type(model).__name__}")
        self.model = model
        cfg = model.cfg
        self.heads = [[f"L{layer}.H{h}" for h in range(cfg.n_heads)] for layer in range(cfg.n_layers)]
        edges: list[Edge] = []
        upstream = ["embed"]
        for layer in range(cfg.n_layers):
            for head in self.heads[layer]:
                edges += [Edge(u, f"{head}.{c}") for c in "qkv" for u in upstream]
            if cfg.d_mlp:
                edges += [Edge(u, f"L{layer}.mlp") for u in upstream + self.heads[layer]]
            upstream = upstream + self.heads[layer] + ([f"L{layer}.mlp"] if cfg.d_mlp else [])
        edges += [Edge(u, "logits") for u in upstream]
        self.edges = edges
        self.into: dict[str, list[int]] = {}
        for i, e in enumerate(edges):
            self.into.setdefault(e.target, []).append(i)

    def forward(
        self,
        tokens: torch.Tensor,
        alpha: torch.Tensor | None = None,
        corrupt: dict[str, torch.Tensor] | None = None,
        embed: torch.Tensor | None = None,
        reads: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits, and every component's output in this run. Without `alpha` (or `corrupt`)
        it is the model's own forward, computed edge by edge. `embed` replaces the embedding
        (token + position); `reads`, when given, is filled with every downstream input."""
        model, cfg = self.model, self.model.cfg
        if tokens.dim() != 2 or tokens.shape[1] > cfg.n_ctx:
            raise ValueError(f"tokens must have shape (batch, pos) with pos <= {cfg.n_ctx}, got {tuple(tokens.shape)}")
        outs = {"embed": model.embed(tokens) if embed is None else embed}

        def read(target: str) -> torch.Tensor:
            total = 0
            for i in self.into[target]:
                source = self.edges[i].source
                if alpha is None or corrupt is None:
                    total = total + outs[source]
                else:
                    total = total + alpha[i] * outs[source] + (1 - alpha[i]) * corrupt[source]
            if reads is not None:
                reads[target] = total
            return total

        n = tokens.shape[1]
        for layer, block in enumerate(model.blocks):
            attn = block.attn
            for h, head in enumerate(self.heads[layer]):
                q = read(f"{head}.q") @ attn.W_Q[h]
                k = read(f"{head}.k") @ attn.W_K[h]
                v = read(f"{head}.v") @ attn.W_V[h]
                scores = (q @ k.transpose(-1, -2)) / math.sqrt(cfg.d_head)
                pattern = scores.masked_fill(~attn.causal[:n, :n], float("-inf")).softmax(-1)
                outs[head] = (pattern @ v) @ attn.W_O[h]
            if cfg.d_mlp:
                outs[f"L{layer}.mlp"] = block.mlp(read(f"L{layer}.mlp"))
        return model.unembed(read("logits")), outs


Metric = Callable[[torch.Tensor], torch.Tensor]  # logits -> scalar, higher is better


def _ones(n: int, value: float = 1.0) -> torch.Tensor:
    return torch.full((n,), value, dtype=torch.float32, requires_grad=True)


def exact_scores(em: EdgeModel, tokens: torch.Tensor, corrupt: dict[str, torch.Tensor], metric: Metric) -> torch.Tensor:
    """m(clean) - m(edge corrupted), per edge."""
    with torch.no_grad():
        clean = metric(em.forward(tokens)[0])
        out = torch.empty(len(em.edges))
        for i in range(len(em.edges)):
            alpha = torch.ones(len(em.edges))
            alpha[i] = 0
            out[i] = clean - metric(em.forward(tokens, alpha, corrupt)[0])
    return out


def eap_scores(em: EdgeModel, tokens: torch.Tensor, corrupt: dict[str, torch.Tensor], metric: Metric) -> torch.Tensor:
    """First-order estimate of `exact_scores`: dm/dalpha at alpha = 1."""
    alpha = _ones(len(em.edges))
    (grad,) = torch.autograd.grad(metric(em.forward(tokens, alpha, corrupt)[0]), alpha)
    return grad


def eap_ig_scores(
    em: EdgeModel, tokens: torch.Tensor, corrupt: dict[str, torch.Tensor], metric: Metric, steps: int = IG_STEPS
) -> torch.Tensor:
    """Integrated gradients from the corrupted run (alpha = 0) to the clean one (alpha = 1)."""
    total = torch.zeros(len(em.edges))
    for t in (torch.arange(steps) + 0.5) / steps:
        alpha = _ones(len(em.edges), float(t))
        (grad,) = torch.autograd.grad(metric(em.forward(tokens, alpha, corrupt)[0]), alpha)
        total += grad
    return total / steps


def eap_ig_per_input_scores(
    em: EdgeModel, tokens: torch.Tensor, corrupt: dict[str, torch.Tensor], metric: Metric, steps: int = IG_STEPS
) -> torch.Tensor:
    """Integrated gradients per downstream input: its edges move from corrupted to clean
    together, every other edge held clean. One path per input, `steps` points each."""
    out = torch.zeros(len(em.edges))
    for into in em.into.values():
        for t in (torch.arange(steps) + 0.5) / steps:
            alpha = torch.ones(len(em.edges))
            alpha[into] = float(t)
            alpha.requires_grad_(True)
            (grad,) = torch.autograd.grad(metric(em.forward(tokens, alpha, corrupt)[0]), alpha)
            out[into] += grad[into] / steps
    return out


def eap_ig_input_scores(
    em: EdgeModel,
    tokens: torch.Tensor,
    corrupted_tokens: torch.Tensor,
    metric: Metric,
    steps: int = IG_STEPS,
) -> torch.Tensor:
    """EAP-IG as Hanna et al. (2024) define it: the input embedding moves in a straight line
    from the corrupted input's to the clean one's; the gradient of m at each downstream input
    is averaged over the path and multiplied by the edge's clean-minus-corrupted output."""
    with torch.no_grad():
        _, clean = em.forward(tokens)
        _, corrupt = em.forward(corrupted_tokens)
    targets = list(em.into)
    grads = {t: 0.0 for t in targets}
    for t in (torch.arange(steps) + 0.5) / steps:
        reads: dict[str, torch.Tensor] = {}
        embed = corrupt["embed"] + t * (clean["embed"] - corrupt["embed"])
        logits, _ = em.forward(tokens, embed=embed.requires_grad_(True), reads=reads)
        for target, g in zip(targets, torch.autograd.grad(metric(logits), [reads[x] for x in targets])):
            grads[target] = grads[target] + g / steps
    return torch.stack([((clean[e.source] - corrupt[e.source]) * grads[e.target]).sum() for e in em.edges])


def corrupted_outputs(em: EdgeModel, corrupted_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return em.forward(corrupted_tokens)[1]
