"""Distances between runs' fingerprints, clusters found without knowing the answer, and a 2-D
embedding of the distances for the page.

Clusters: average-linkage on the distances, cut into the number of clusters with the best
silhouette (Rousseeuw 1987), kept only when that silhouette shows reasonable structure
(at least 0.5, Kaufman & Rousseeuw's bound) and the clusters join further apart than a
minimum separation, in the fingerprint's own units; otherwise every run is one cluster. Two
runs are two clusters exactly when their distance exceeds the separation (a silhouette needs
three).
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist, squareform
from sklearn.manifold import MDS
from sklearn.metrics import adjusted_rand_score, silhouette_score

MIN_SILHOUETTE = 0.5


def distances(vectors: np.ndarray) -> np.ndarray:
    """Euclidean distances between rows, (n, n)."""
    return squareform(pdist(np.asarray(vectors, dtype=float)))


def _tree(dist: np.ndarray) -> np.ndarray:
    return linkage(squareform(dist, checks=False), method="average")


def cut(dist: np.ndarray, k: int) -> list[int]:
    """The average-linkage tree cut into (at most) k clusters, labelled in order of first appearance."""
    return [0] * len(dist) if k == 1 else _first_seen(fcluster(_tree(dist), k, criterion="maxclust"))


def clusters(dist: np.ndarray, min_separation: float) -> tuple[list[int], dict]:
    """A cluster label per run (0-based, in order of first appearance) and how it was chosen."""
    n = len(dist)
    if n == 2:
        split = dist[0, 1] > min_separation
        return ([0, 1] if split else [0, 0]), {"rule": "two runs: apart when farther than the separation"}
    tree = _tree(dist)
    tried = {}
    for k in range(2, n):
        labels = fcluster(tree, k, criterion="maxclust")
        if len(set(labels)) == k:
            tried[k] = (float(silhouette_score(dist, labels, metric="precomputed")), labels)
    choice = {"silhouettes": {k: s for k, (s, _) in tried.items()}}
    if tried:
        k, (score, labels) = max(tried.items(), key=lambda kv: kv[1][0])
        # the height at which the k clusters join: the smallest average distance between two of them
        joined_at = float(tree[n - k, 2])
        choice.update(best_k=k, silhouette=score, separation=joined_at)
        if score >= MIN_SILHOUETTE and joined_at > min_separation:
            return _first_seen(labels), choice
    return [0] * n, choice


def _first_seen(labels: np.ndarray) -> list[int]:
    order: dict[int, int] = {}
    return [order.setdefault(int(x), len(order)) for x in labels]


def groups(labels: list[int], names: list[str]) -> list[list[str]]:
    """The names in each cluster, clusters in order of first appearance."""
    return [[name for name, x in zip(names, labels) if x == k] for k in sorted(set(labels))]


def agreement(labels: list[int], truth: list[str]) -> float:
    """Adjusted Rand index of the clusters against the known grouping (1 = identical)."""
    return float(adjusted_rand_score(truth, labels))


def embedding(dist: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D points whose distances approximate `dist` (metric MDS), (n, 2)."""
    if len(dist) < 3:
        return np.column_stack([np.array([0.0, dist[0, 1]])[: len(dist)], np.zeros(len(dist))])
    mds = MDS(n_components=2, metric="precomputed", init="classical_mds", random_state=seed)
    return mds.fit_transform(dist)
