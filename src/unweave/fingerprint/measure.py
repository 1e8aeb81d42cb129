"""A fingerprint per modular-addition run from what its network computes (the clock-or-pizza
diagnostics and its key frequencies), and the two baselines a fingerprint has to beat: the
raw weights and the loss curves."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unweave.fingerprint.diagnostics import (
    all_logits,
    correct_logits,
    distance_irrelevance,
    gradient_symmetricity,
    sum_dependence,
)
from unweave.zoo.fourier import embedding_spectrum, key_frequencies
from unweave.zoo.modadd import TrainedModAdd, make_data

# what every run must share to be compared: the task and the network's shape (attention may
# differ: it is what decides the algorithm)
SHARED = ("p", "d_model", "n_heads", "d_mlp")
DIAGNOSTICS = ("gradient_symmetricity", "distance_irrelevance", "sum_dependence")
# Zhong et al. 2023's reported diagnostics of their clock and pizza models
PUBLISHED = {
    "clock": {"gradient_symmetricity": 0.3336, "distance_irrelevance": 0.85},
    "pizza": {"gradient_symmetricity": 0.9937, "distance_irrelevance": 0.17},
}
# runs are called different algorithms only when their fingerprints are at least half as far
# apart as the published clock and pizza (0.47): a rule from the paper, not from our runs
MIN_SEPARATION = 0.5 * math.dist(PUBLISHED["clock"].values(), PUBLISHED["pizza"].values())
# the diagnostics that read only the function from inputs to logits, not the network's graph:
# uniform attention forces gradient symmetricity to 1 by construction, these it does not force
BEHAVIOURAL = ("distance_irrelevance", "sum_dependence")


@dataclass
class RunFingerprint:
    path: str
    attention: str  # from the run's config: the known answer, never used to cluster
    seed: int
    test_acc: float
    key_frequencies: list[int]
    diagnostics: dict[str, float]

    def vector(self, names: tuple[str, ...] = DIAGNOSTICS) -> list[float]:
        return [self.diagnostics[n] for n in names]

    def json(self) -> dict:
        return {
            "run": self.path,
            "attention": self.attention,
            "seed": self.seed,
            "test_acc": self.test_acc,
            "key_frequencies": self.key_frequencies,
            **self.diagnostics,
        }


def open_runs(paths: list[Path]) -> list[TrainedModAdd]:
    """The runs, each finished, all of one modulus and one network shape; a clear error otherwise."""
    if len(paths) < 2:
        raise ValueError(f"fingerprinting compares runs: give at least two run folders, got {len(paths)}")
    if len({Path(p).resolve() for p in paths}) < len(paths):
        raise ValueError("a run folder is given twice; give each run once")
    runs = [TrainedModAdd.open(Path(p)) for p in paths]
    first = runs[0].config
    for path, run in zip(paths[1:], runs[1:]):
        differ = [
            f"{k} {getattr(first, k)} vs {getattr(run.config, k)}"
            for k in SHARED
            if getattr(first, k) != getattr(run.config, k)
        ]
        if differ:
            raise ValueError(
                f"{paths[0]} and {path} are not comparable ({', '.join(differ)}): fingerprint runs of one "
                "modulus and one network shape together"
            )
    return runs


def fingerprint(run: TrainedModAdd, path: Path) -> RunFingerprint:
    cfg = run.config
    model, data = run.load(), make_data(cfg)
    logits = all_logits(model, data)
    return RunFingerprint(
        path=str(path),
        attention=cfg.attention,
        seed=cfg.seed,
        test_acc=run.history[-1]["test_acc"],
        key_frequencies=key_frequencies(embedding_spectrum(model.W_E.detach(), cfg.p)),
        diagnostics={
            "gradient_symmetricity": gradient_symmetricity(model, data),
            "distance_irrelevance": distance_irrelevance(correct_logits(logits)),
            "sum_dependence": sum_dependence(logits),
        },
    )


def weight_vectors(runs: list[TrainedModAdd]) -> np.ndarray:
    """Each run's final weights, flattened, over the parameters every run has (uniform
    attention has no queries or keys; comparing their absence would read the architecture)."""
    states = [run.load().state_dict() for run in runs]
    shared = sorted(set.intersection(*(set(s) for s in states)))
    return np.stack([np.concatenate([s[k].double().flatten().numpy() for k in shared]) for s in states])


def loss_curve_vectors(runs: list[TrainedModAdd]) -> np.ndarray | None:
    """log10 of the train and test losses at the evaluation steps every run shares, over the
    number of steps (so the distance is a root-mean-square); None when no step is shared."""
    histories = [{h["step"]: h for h in run.history} for run in runs]
    steps = sorted(set.intersection(*(set(h) for h in histories)))
    if not steps:
        return None
    rows = [[np.log10(max(h[s][key], 1e-30)) for s in steps for key in ("train_loss", "test_loss")] for h in histories]
    return np.asarray(rows) / np.sqrt(2 * len(steps))
