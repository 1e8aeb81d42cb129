"""Run detectors on a task: raw inputs (no model), activations, attributions and the latents
of a dictionary trained on the trusted activations at each site, and a combined score over
sites; every score gets AUROC, AP and FPR at 95% TPR."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from unweave import progress
from unweave.anomaly import metrics
from unweave.anomaly.detectors import DETECTORS, make
from unweave.anomaly.tasks import Task
from unweave.devices import model_device
from unweave.dictionaries.sae import SAE, SAEConfig
from unweave.dictionaries.train import train_sae
from unweave.sites import capture, capturing

# the dictionary at each site, a rule of its width d alone: TopK with 4d latents and
# k = d/8 (at least 4, at most 32), trained on the trusted activations only
LATENTS_PER_DIM = 4
DICTIONARY_STEPS = 2000
DICTIONARY_BATCH = 256


def _rows(acts: torch.Tensor, position: int | str | None = None) -> np.ndarray:
    if position == "mean":  # sequence models: average over positions
        acts = acts.mean(1)
    elif position is not None:
        acts = acts[:, position]
    return acts.detach().flatten(1).double().cpu().numpy()


def activation_features(
    model: torch.nn.Module,
    sites: Sequence[str],
    x: torch.Tensor,
    position: int | str | None = None,
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """(examples, features) at each site, read in batches on the model's device, stopping the
    forward at the last site."""
    device = model_device(model)
    parts = [
        capture(model, list(sites), x[i : i + batch_size].to(device), stop_early=True)
        for i in range(0, len(x), batch_size)
    ]
    return {s: np.concatenate([_rows(p[s], position) for p in parts]) for s in sites}


def attribution_features(model: torch.nn.Module, sites: Sequence[str], x: torch.Tensor) -> dict[str, np.ndarray]:
    """Gradient x activation at each site of the log-probability of the predicted class."""
    with torch.enable_grad(), capturing(model, list(sites), detach=False) as acts:
        logp = model(x.to(model_device(model))).log_softmax(-1)
        chosen = logp.gather(1, logp.argmax(-1, keepdim=True)).sum()  # examples are independent: one backward
        grads = torch.autograd.grad(chosen, [acts[s] for s in sites])
    return {s: _rows(acts[s] * g) for s, g in zip(sites, grads)}


def dictionary_k(d: int) -> int:
    return int(min(32, max(4, d // 8)))


def train_dictionaries(trusted: dict[str, np.ndarray], seed: int = 0) -> dict[str, SAE]:
    """A TopK dictionary per site on the trusted activations (examples, d), never on test inputs."""
    saes = {}
    for site, acts in progress.track(list(trusted.items()), "training a dictionary per site"):
        x = torch.as_tensor(acts, dtype=torch.float32)
        d = x.shape[1]
        sae = SAE(SAEConfig(d_in=d, n_latents=LATENTS_PER_DIM * d, architecture="topk", k=dictionary_k(d)), seed=seed)
        gen = torch.Generator().manual_seed(seed)
        batches = (x[torch.randint(len(x), (DICTIONARY_BATCH,), generator=gen)] for _ in range(DICTIONARY_STEPS))
        train_sae(sae, batches, DICTIONARY_STEPS, lr=1e-3, warmup=50)
        saes[site] = sae.eval()
    return saes


def dictionary_features(saes: dict[str, SAE], activations: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return {
            s: sae.encode(torch.as_tensor(activations[s], dtype=torch.float32)).double().numpy()
            for s, sae in saes.items()
        }


def evaluate_task(
    task: Task, detectors: Sequence[str] = tuple(DETECTORS), seed: int = 0, dictionaries: bool = True
) -> dict:
    """All detectors on all feature sets of a task (dictionary latents unless `dictionaries` is
    False); returns rows for the table and the scores."""
    unknown = [d for d in detectors if d not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detectors {unknown}; known: {', '.join(DETECTORS)}")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(task.trusted), generator=gen)
    n_fit = int(0.8 * len(perm))
    fit_x, cal_x = task.trusted[perm[:n_fit]], task.trusted[perm[n_fit:]]

    def feature_sets(x: torch.Tensor) -> dict[str, dict[str, np.ndarray]]:
        raw = task.raw_features(x) if task.raw_features is not None else _rows(x)
        sets = {"raw input": {"input": raw}}
        sets["activations"] = activation_features(task.model, task.sites, x, task.position)
        if task.attributions:
            sets["attributions"] = attribution_features(task.model, task.sites, x)
        return sets

    fit_f, cal_f, test_f = feature_sets(fit_x), feature_sets(cal_x), feature_sets(task.test)
    if dictionaries:
        saes = train_dictionaries(fit_f["activations"], seed)
        for sets in (fit_f, cal_f, test_f):
            sets["dictionary latents"] = dictionary_features(saes, sets["activations"])
    rows, scores = [], {}
    for name in progress.track(list(detectors), f"detectors on {task.name}"):
        for kind, per_site in test_f.items():
            z_sum = 0.0
            for site, feats in per_site.items():
                det = make(name).fit(fit_f[kind][site])
                s = det.score(feats)
                cal = det.score(cal_f[kind][site])
                z_sum = z_sum + (s - cal.mean()) / (cal.std() + 1e-12)  # sites on one scale for the combination
                rows.append(
                    {
                        "task": task.name,
                        "detector": name,
                        "features": kind,
                        "site": site,
                        **metrics.summary(s, task.test_anomalous),
                    }
                )
                scores[(name, kind, site)] = s
            if len(per_site) > 1:
                rows.append(
                    {
                        "task": task.name,
                        "detector": name,
                        "features": kind,
                        "site": "combined",
                        **metrics.summary(z_sum, task.test_anomalous),
                    }
                )
                scores[(name, kind, "combined")] = z_sum
    return {"rows": rows, "scores": scores, "labels": task.test_anomalous, "info": task.info}


def best(rows: list[dict], features: str) -> dict | None:
    """The row with the highest AUROC among one kind of features (None if the task has none)."""
    candidates = [r for r in rows if r["features"] == features]
    return max(candidates, key=lambda r: r["auroc"]) if candidates else None
