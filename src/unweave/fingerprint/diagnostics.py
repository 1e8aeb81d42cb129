"""Measurements of which algorithm a modular-addition model runs (Zhong et al. 2023, "The Clock
and the Pizza"), each invariant to the seed's choice of key frequencies.

- Gradient symmetricity (their Def. 4.1): the cosine between the gradients of the logit
  Q_abc with respect to the embeddings of a and of b, averaged over all triples. The pizza
  reads the operands through E_a + E_b, so the two gradients agree (1); the clock multiplies
  rotations, so they need not.
- Distance irrelevance (their Def. 4.2): how much the correct logit varies among pairs at one
  distance a - b, over how much it varies in all, averaged over distances. The clock's correct
  logit does not depend on a - b (near 1); the pizza's is scaled by |cos(w(a - b)/2)| (near 0).
- Sum dependence: the share of the logits' variance over (a, b) that is a function of a + b
  alone. The clock's logits are sums of cos(w(a + b - c)) (1); the pizza's carry the factor
  |cos(w(a - b)/2)|, which a function of a + b cannot express.
"""

from __future__ import annotations

import torch

from unweave.sites import capturing
from unweave.zoo.modadd import ModAddData, answer_logits


def _modulus(data: ModAddData) -> int:
    return int(data.labels.max()) + 1


def all_logits(model: torch.nn.Module, data: ModAddData) -> torch.Tensor:
    """The logits at '=' for every pair, (p, p, p): [a, b, c]."""
    p = _modulus(data)
    with torch.no_grad():
        return answer_logits(model, data.tokens).double().view(p, p, p)


def correct_logits(logits: torch.Tensor) -> torch.Tensor:
    """L[a, b] = the logit of (a + b) mod p, (p, p)."""
    p = logits.shape[0]
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return logits[a, b, (a + b) % p]


def gradient_symmetricity(model: torch.nn.Module, data: ModAddData) -> float:
    """Mean over every triple (a, b, c) of cos(dQ_abc/dE_a, dQ_abc/dE_b)."""
    p = _modulus(data)
    total = 0.0
    with torch.enable_grad():
        for c in range(p):  # one backward per answer c: each pair's logit depends on its own input only
            with capturing(model, ["hook_embed"], detach=False) as acts:
                q = answer_logits(model, data.tokens)[:, c]
            (grad,) = torch.autograd.grad(q.sum(), acts["hook_embed"])
            total += torch.cosine_similarity(grad[:, 0].double(), grad[:, 1].double(), dim=-1).sum().item()
    return total / p**3


def distance_irrelevance(correct: torch.Tensor) -> float:
    """mean over d of std_a L[a, a + d], over std of L (population standard deviations)."""
    p = correct.shape[0]
    a = torch.arange(p)
    per_distance = torch.stack([correct[a, (a + d) % p].std(correction=0) for d in range(p)])
    return float(per_distance.mean() / correct.std(correction=0))


def sum_dependence(logits: torch.Tensor) -> float:
    """Share of the variance of the logits over pairs (for each answer c) explained by a + b."""
    p = logits.shape[0]
    centred = logits - logits.mean(dim=(0, 1), keepdim=True)
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    s = ((a + b) % p).flatten()
    flat = centred.reshape(p * p, p)
    by_sum = torch.zeros(p, p, dtype=flat.dtype).index_add_(0, s, flat) / p  # p pairs per sum
    return float(by_sum[s].pow(2).sum() / flat.pow(2).sum())
