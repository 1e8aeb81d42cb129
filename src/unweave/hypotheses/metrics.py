"""Per-example scores of an intervened model against the original.

Outputs are logits of shape (n, classes) or (n, positions, classes); a per-example score
averages over positions. Averages hide cancellation (some examples better, some worse),
so every score is kept per example.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unweave.divergence import kl_per_token


def _as_3d(logits: torch.Tensor) -> torch.Tensor:
    if logits.dim() == 2:
        return logits[:, None]
    if logits.dim() == 3:
        return logits
    raise ValueError(f"outputs must be logits of shape (n, classes) or (n, positions, classes), "
                     f"got {tuple(logits.shape)}; make Hypothesis.output select them")


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


def fraction_recovered(loss_model: float, loss_scrubbed: float, loss_random: float) -> float:
    """1 when the scrubbed model is as good as the model, 0 when as bad as random resampling."""
    gap = loss_random - loss_model
    return float("nan") if abs(gap) < 1e-12 else (loss_random - loss_scrubbed) / gap
