"""KL divergence between the output distributions of two runs of a model, in one place
(used to score spliced dictionaries, end-to-end training and hypotheses)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_per_token(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) over the last dimension, in nats, in float64;
    differentiable in both arguments."""
    logp = F.log_softmax(p_logits.double(), -1)
    logq = F.log_softmax(q_logits.double(), -1)
    return (logp.exp() * (logp - logq)).sum(-1)
