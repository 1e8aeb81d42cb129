"""`unweave graph induction`: the edges of the induction toy (a two-layer attention-only
transformer, `unweave.zoo.induction`) scored by exact patching, EAP and EAP-IG, each
against the known circuit, and the circuit of edges within a per-example KL budget.

Clean inputs are random sequences whose second half repeats the first; corrupted inputs
are fresh sequences of the same form, so every token-carrying path changes. The metric is
the right next token's logit minus the mean logit, on the positions where the repeat makes
the next token predictable. The known circuit comes from attention patterns alone
(`zoo.induction.model_head_scores`, never from edge scores):
- strict: the layer-0 head with the highest previous-token score P, the layer-1 heads with
  induction score >= 0.3 I; edges embed -> P.v (the previous token), P -> I.k
  (K-composition), embed -> I.q (the current token), embed -> I.v (the token to copy), I -> logits;
- broad: the same with every layer-0 head whose previous-token score is >= 0.3 as P.
The query and key inputs of P carry positions, which the corruption leaves unchanged, so
they are in neither.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from unweave.graph.circuit import Circuit, find_circuit
from unweave.graph.edges import (
    Edge,
    EdgeModel,
    corrupted_outputs,
    eap_ig_input_scores,
    eap_ig_per_input_scores,
    eap_ig_scores,
    eap_scores,
    exact_scores,
)
from unweave.zoo.induction import InductionConfig, model_head_scores, repeated_sequences, train
from unweave.zoo.transformer import Transformer

HEAD_SCORE = 0.3  # an induction (or, broadly, previous-token) head attends this much to its target
METHODS = ("exact", "EAP", "EAP-IG (activations)", "EAP-IG (inputs)", "EAP-IG (per input)")


@dataclass
class EdgeCase:
    model: Transformer
    edges: EdgeModel
    tokens: torch.Tensor
    corrupted: torch.Tensor
    half: int
    known: dict[str, set[Edge]]  # "strict", "broad"
    heads: dict  # the attention-pattern scores the known circuit was read from
    offset: int = 0  # positions before the first half (1: a BOS token)

    @functools.cached_property
    def corrupt(self) -> dict[str, torch.Tensor]:
        """Every component's output on the corrupted inputs, computed once."""
        return corrupted_outputs(self.edges, self.corrupted)

    @property
    def positions(self) -> torch.Tensor:
        return torch.arange(self.half, 2 * self.half - 1) + self.offset

    def metric(self, logits: torch.Tensor) -> torch.Tensor:
        at = logits[:, self.positions]
        right = at.gather(-1, self.tokens[:, self.positions + 1, None])[..., 0]
        return (right - at.mean(-1)).mean()

    def rows(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits at the predictable positions, one row per (sequence, position)."""
        return logits[:, self.positions].flatten(0, 1)

    @property
    def labels(self) -> torch.Tensor:
        return self.tokens[:, self.positions + 1].flatten()


def known_circuits(scores: dict[str, torch.Tensor]) -> dict[str, set[Edge]]:
    prev, ind = scores["previous_token"][0], scores["induction"][1]
    inductions = [f"L1.H{h}" for h in (ind >= HEAD_SCORE).nonzero().flatten().tolist()]
    if not inductions:
        raise ValueError(f"the model has no induction head (scores {ind.tolist()}); train it longer")

    strongest = [f"L0.H{int(prev.argmax())}"]
    broad = [f"L0.H{h}" for h in (prev >= HEAD_SCORE).nonzero().flatten().tolist()]
    return {
        "strict": induction_circuit(strongest, inductions),
        "broad": induction_circuit(broad or strongest, inductions),
    }


def induction_circuit(previous: list[str], inductions: list[str]) -> set[Edge]:
    """The edges of induction: embed -> each previous-token head's value, those heads -> each
    induction head's key (K-composition), embed -> the induction heads' queries and values,
    and the induction heads -> logits."""
    edges = {Edge("embed", f"{p}.v") for p in previous}
    for i in inductions:
        edges |= {Edge(p, f"{i}.k") for p in previous}
        edges |= {Edge("embed", f"{i}.q"), Edge("embed", f"{i}.v"), Edge(i, "logits")}
    return edges


def induction_case(examples: int, seed: int, model: Transformer | None = None) -> EdgeCase:
    cfg = InductionConfig(seed=seed)
    model = model if model is not None else train(cfg)
    half = cfg.n_ctx // 2
    gen = torch.Generator().manual_seed(seed + 100)
    tokens, _ = repeated_sequences(examples, cfg.vocab, cfg.n_ctx, gen, half=half)
    corrupted, _ = repeated_sequences(examples, cfg.vocab, cfg.n_ctx, gen, half=half)
    heads = model_head_scores(model, tokens, half)
    return EdgeCase(model, EdgeModel(model), tokens, corrupted, half, known_circuits(heads), heads)


def planted_case(examples: int, seed: int) -> EdgeCase:
    """The planted two-circuit transformer (`zoo.two_circuits`) under the same metric: its
    circuit A is induction, so the known circuit is A's edges, read off the planted roles (not
    from attention patterns): embed -> A's layer-0 heads' values, those heads -> A's layer-1
    heads' keys, embed -> the layer-1 heads' queries and values, those heads -> logits. Circuit
    B (the token two back) runs beside it in the same layers, outside the circuit."""
    from unweave.zoo.two_circuits import TwoCircuits, TwoCircuitsConfig, sample_tokens

    cfg = TwoCircuitsConfig(seed=seed)
    model = TwoCircuits(cfg).eval()
    tokens, corrupted = sample_tokens(examples, cfg, seed + 100), sample_tokens(examples, cfg, seed + 101)
    edges = EdgeModel(model)
    names = [head for layer in edges.heads for head in layer]  # in the order of head_circuit
    a_heads = [name for name, c in zip(names, model.head_circuit.tolist()) if c == 0]
    known = induction_circuit([h for h in a_heads if h in edges.heads[0]], [h for h in a_heads if h in edges.heads[1]])
    roles = {"roles": model.head_roles}
    return EdgeCase(model, edges, tokens, corrupted, cfg.length, {"strict": known}, roles, offset=1)


def score_edges(case: EdgeCase) -> dict[str, torch.Tensor]:
    em, corrupt = case.edges, case.corrupt
    return {
        "exact": exact_scores(em, case.tokens, corrupt, case.metric),
        "EAP": eap_scores(em, case.tokens, corrupt, case.metric),
        "EAP-IG (activations)": eap_ig_scores(em, case.tokens, corrupt, case.metric),
        "EAP-IG (inputs)": eap_ig_input_scores(em, case.tokens, case.corrupted, case.metric),
        "EAP-IG (per input)": eap_ig_per_input_scores(em, case.tokens, corrupt, case.metric),
    }


def aurocs(case: EdgeCase, scores: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """ROC AUC of |score| against each known circuit, per method."""
    return {
        name: {
            method: float(roc_auc_score([e in known for e in case.edges.edges], s.abs().numpy()))
            for method, s in scores.items()
        }
        for name, known in case.known.items()
    }


def node_check(case: EdgeCase, scores: dict[str, torch.Tensor]) -> dict:
    """Each component ablated (every edge out of it fed the corrupted run), measured, against
    the sum of its out-edges' scores by each method (first order: the effect of moving all
    of them at once); Pearson correlation per method over the components."""
    em = case.edges
    corrupt = case.corrupt
    sources = list(dict.fromkeys(e.source for e in em.edges))
    with torch.no_grad():
        clean = case.metric(em.forward(case.tokens)[0])
        measured = []
        for s in sources:
            alpha = torch.tensor([0.0 if e.source == s else 1.0 for e in em.edges])
            measured.append(float(clean - case.metric(em.forward(case.tokens, alpha, corrupt)[0])))
    out = {"components": sources, "measured": measured}
    for method, s in scores.items():
        predicted = [float(sum(s[i] for i, e in enumerate(em.edges) if e.source == src)) for src in sources]
        out[method] = {"predicted": predicted, "pearson": float(np.corrcoef(predicted, measured)[0, 1])}
    return out


def edge_circuit(case: EdgeCase, order: list[int], budget: float, quantile: float) -> Circuit:
    """Edges in `order` kept, every other edge fed the corrupted run."""
    em = case.edges
    corrupt = case.corrupt

    def keeping(kept: list[int]) -> torch.Tensor:
        alpha = torch.zeros(len(em.edges))
        alpha[list(kept)] = 1.0
        with torch.no_grad():
            return case.rows(em.forward(case.tokens, alpha, corrupt)[0])

    with torch.no_grad():
        full = case.rows(case.model(case.tokens))
    return find_circuit(order, keeping, full, case.labels, budget, quantile)
