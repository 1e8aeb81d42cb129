"""Anomaly detectors: fitted on features of trusted inputs, scoring new ones (higher = more
anomalous). Features are rows of a (n, d) array: activations at a site, input pixels, or
attributions. Each detector has two methods, `fit(trusted)` and `score(features)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor

if TYPE_CHECKING:
    from numpy.typing import ArrayLike


def _as_2d(x: ArrayLike, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{what} must have shape (examples, features), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or inf")
    return x


class Detector:
    name = "detector"

    def fit(self, trusted: ArrayLike) -> Detector:
        self.width = _as_2d(trusted, "trusted features").shape[1]
        self._fit(np.asarray(trusted, dtype=np.float64))
        return self

    def score(self, features: ArrayLike) -> np.ndarray:
        x = _as_2d(features, "features")
        if x.shape[1] != self.width:
            raise ValueError(
                f"{self.name}: features have width {x.shape[1]}, the detector was fitted on width {self.width}"
            )
        return self._score(x)

    def _fit(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def _score(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _Whitened(Detector):
    """Shared by detectors that work in coordinates whitened by the trusted covariance.

    The covariance is Ledoit-Wolf shrunk, so fewer trusted samples than features still
    give an invertible estimate."""

    def _fit(self, x: np.ndarray) -> None:
        self.mean = x.mean(0)
        cov = LedoitWolf().fit(x).covariance_
        vals, vecs = np.linalg.eigh(cov)
        self.whiten = vecs / np.sqrt(np.maximum(vals, 1e-12 * vals.max()))

    def _white(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) @ self.whiten


class Mahalanobis(_Whitened):
    name = "mahalanobis"

    def _score(self, x: np.ndarray) -> np.ndarray:
        return (self._white(x) ** 2).sum(1)


class SpectralSignature(_Whitened):
    """Tran et al. (2018): anomalies share a direction; score each example by its squared
    projection on the top singular vector of the scored batch (whitened by trusted data)."""

    name = "spectral"

    def _score(self, x: np.ndarray) -> np.ndarray:
        z = self._white(x)
        z = z - z.mean(0)
        top = np.linalg.svd(z, full_matrices=False)[2][0]
        return (z @ top) ** 2


class QuantumEntropy(_Whitened):
    """QUE scoring (Dong, Hopkins & Li 2019): weight directions of excess variance in the
    scored batch by exp(alpha * (Sigma - I) / ||Sigma - I||) and score each example's
    whitened vector under that weighting."""

    name = "que"

    def __init__(self, alpha: float = 4.0):
        self.alpha = alpha

    def _score(self, x: np.ndarray) -> np.ndarray:
        z = self._white(x)
        excess = np.cov(z, rowvar=False) - np.eye(z.shape[1])
        vals, vecs = np.linalg.eigh(excess)
        weights = np.exp(self.alpha * vals / max(np.abs(vals).max(), 1e-12))
        q = (vecs * weights) @ vecs.T / weights.sum()
        return np.einsum("nd,de,ne->n", z, q, z)


class LocalOutlier(Detector):
    name = "lof"

    def __init__(self, n_neighbors: int = 20):
        self.n_neighbors = n_neighbors

    def _fit(self, x: np.ndarray) -> None:
        self.model = LocalOutlierFactor(n_neighbors=min(self.n_neighbors, len(x) - 1), novelty=True).fit(x)

    def _score(self, x: np.ndarray) -> np.ndarray:
        return -self.model.score_samples(x)


class IsolationForestDetector(Detector):
    name = "isolation_forest"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _fit(self, x: np.ndarray) -> None:
        self.model = IsolationForest(n_estimators=200, random_state=self.seed).fit(x)

    def _score(self, x: np.ndarray) -> np.ndarray:
        return -self.model.score_samples(x)


DETECTORS = {
    cls.name: cls for cls in (Mahalanobis, SpectralSignature, QuantumEntropy, LocalOutlier, IsolationForestDetector)
}


def make(name: str) -> Detector:
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; known: {', '.join(DETECTORS)}")
    return DETECTORS[name]()
