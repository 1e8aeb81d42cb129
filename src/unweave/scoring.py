"""Scores of a language model's (or classifier's) outputs, in one place: KL divergence
between two runs of a model, cross-entropy, and the fraction of loss recovered.

Used by spliced dictionaries, end-to-end training, hypotheses and every future metric
that compares an intervened model with the original. Everything is in nats, float64.

Outputs are logits of shape (n, classes) or (n, positions, classes); a per-example score
averages over positions. Averages hide cancellation (some examples better, some worse),
so the per-example functions keep one number per example.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def float_logits(output: object) -> torch.Tensor:
    """A model's logits (a Hugging Face output's `.logits`, or the tensor itself) in float32
    whatever the model's dtype: CE and KL need the range."""
    return (output.logits if hasattr(output, "logits") else output).float()


def kl_per_token(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) over the last dimension, in nats, in float64;
    differentiable in both arguments."""
    logp = F.log_softmax(p_logits.double(), -1)
    logq = F.log_softmax(q_logits.double(), -1)
    return (logp.exp() * (logp - logq)).sum(-1)


class ReferenceKL:
    """KL(p || q) per example from one fixed reference p to many q's (a search that splices
    many descriptions in): p's log-probabilities are computed once. In float64 for outputs
    of up to 2^22 entries; above that (a language model's vocabulary over a thousand
    tokens) in float32, summed per token as p (log p - log q) so that no large terms cancel:
    within 1e-8 relative of float64 there, at a seventh of its time."""

    def __init__(self, p_logits: torch.Tensor):
        p_logits = _as_3d(p_logits)
        self.dtype = torch.float64 if p_logits.numel() <= 2**22 else torch.float32
        self.logp = F.log_softmax(p_logits.to(self.dtype), -1)
        self.p = self.logp.exp()

    def __call__(self, q_logits: torch.Tensor) -> torch.Tensor:
        """(n,) float64: KL(p || q) per example, the mean over its positions."""
        logq = F.log_softmax(_as_3d(q_logits).to(self.dtype), -1)
        return (self.p * (self.logp - logq)).sum(-1).double().mean(-1)


def next_token_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy of predicting tokens[:, 1:] from logits[:, :-1], flattened."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).double(), tokens[:, 1:].flatten(), reduction="none")


def next_token_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) at every position that predicts a next token (all but the last), (n, positions - 1)."""
    return kl_per_token(p_logits[:, :-1], q_logits[:, :-1])


def _as_3d(logits: torch.Tensor) -> torch.Tensor:
    if logits.dim() == 2:
        return logits[:, None]
    if logits.dim() == 3:
        return logits
    raise ValueError(
        f"outputs must be logits of shape (n, classes) or (n, positions, classes), "
        f"got {tuple(logits.shape)}; make Hypothesis.output select them"
    )


def kl_per_example(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of the softmax distributions, per example (mean over positions), in nats."""
    return kl_per_token(_as_3d(p_logits), _as_3d(q_logits)).mean(-1)


def ce_per_example(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of `labels` (n,) or (n, positions) under `logits`, per example, in nats."""
    logits = _as_3d(logits).double()
    labels = labels.reshape(len(labels), -1)
    if labels.shape[1] != logits.shape[1]:
        raise ValueError(f"labels have {labels.shape[1]} positions per example, outputs {logits.shape[1]}")
    return -F.log_softmax(logits, -1).gather(-1, labels[..., None].long()).squeeze(-1).mean(-1)


def predictions(logits: torch.Tensor) -> torch.Tensor:
    return _as_3d(logits).argmax(-1)


def loss_recovered(loss_clean: float, loss_patched: float, loss_baseline: float) -> float:
    """(baseline - patched) / (baseline - clean): 1 when the patched model is as good as the
    model, 0 when as bad as the baseline (random inputs for scrubbing, zero ablation for a
    spliced dictionary); NaN when the baseline costs nothing."""
    gap = loss_baseline - loss_clean
    return float("nan") if abs(gap) < 1e-12 else (loss_baseline - loss_patched) / gap
