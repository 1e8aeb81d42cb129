"""Detection metrics from scores (higher = more anomalous) and labels (1 = anomalous)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import rankdata

if TYPE_CHECKING:
    from numpy.typing import ArrayLike


def _check(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D and of one length, got {scores.shape} and {labels.shape}")
    if labels.all() or not labels.any():
        raise ValueError(
            "labels must contain both normal (0) and anomalous (1) examples; a task with no "
            "anomalous (or no normal) examples has no detection score"
        )
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    return scores, labels


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """P(score of a random anomaly > score of a random normal), ties counted half (Mann-Whitney U)."""
    s, y = _check(scores, labels)
    ranks = rankdata(s)  # average ranks: ties split evenly
    n_pos, n_neg = y.sum(), (~y).sum()
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores: ArrayLike, labels: ArrayLike) -> float:
    """Mean of the precision at each anomaly's rank, all examples with its score taken at once."""
    s, y = _check(scores, labels)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # thresholds between distinct scores only
    tp, k = np.cumsum(y)[last_of_tie], np.arange(1, len(y) + 1)[last_of_tie]
    recall_gain = np.diff(np.r_[0, tp]) / y.sum()
    return float((recall_gain * tp / k).sum())


def fpr_at_tpr(scores: ArrayLike, labels: ArrayLike, tpr: float = 0.95) -> float:
    """Fraction of normal examples flagged at the highest threshold that flags `tpr` of anomalies."""
    s, y = _check(scores, labels)
    pos = np.sort(s[y])[::-1]
    threshold = pos[int(np.ceil(tpr * len(pos))) - 1]  # flag score >= threshold
    return float((s[~y] >= threshold).mean())


def summary(scores: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    return {
        "auroc": auroc(scores, labels),
        "ap": average_precision(scores, labels),
        "fpr@95tpr": fpr_at_tpr(scores, labels),
    }
