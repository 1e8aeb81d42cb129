"""Pairs of runs on which it is known which units recur, each giving both runs' activations
on the same inputs and the known answer to score the matching against afterwards.

- `tms`: two toy models of superposition (5 features in 2 dimensions), seeds A and B, and a
  dictionary trained on each one's hidden activations. A latent whose decoder lies along
  true feature i recurs as the other run's latent along feature i. The hidden dimensions are
  reported beside them: the runs place their features around the plane in different orders,
  so no claim is made for them.
- `induction`: the induction toy trained with seeds A and B. Units are heads, their
  activations the attention patterns on repeated sequences. The previous-token head of one
  run recurs as the other's previous-token head, and induction heads as induction heads.
- two modular-addition run folders: units are MLP neurons over all p^2 pairs. The runs learn
  different key frequencies: a neuron recurs only when the other run uses its frequency, and
  its partner then has that frequency.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from unweave.graph.induction import HEAD_SCORE
from unweave.mdl.targets import TMS_SPARSITY, train_tms_dictionaries
from unweave.sites import capture
from unweave.zoo import induction as induction_zoo
from unweave.zoo.fourier import neuron_frequencies
from unweave.zoo.modadd import TrainedModAdd, make_data
from unweave.zoo.superposition import sample_features, train_toy

NAMED = ("tms", "induction")
TMS = {"n_features": 5, "d_hidden": 2}
SAME_DIRECTION = 0.99
TMS_RESTARTS = 3
FREE_FROM = 4  # attention patterns are compared from this query position on


@dataclass
class Layer:
    """One kind of unit in both runs: activations (inputs, units) and the units' names."""

    name: str
    a: torch.Tensor
    b: torch.Tensor
    names_a: list[str]
    names_b: list[str]
    # the known answer: for units of A, the set of units of B that count as their partners
    # (a unit absent from the dict is known to have none); None when only CKA is claimed
    partners: dict[int, set[int]] | None = None
    unmatched: list[int] | None = None  # units of A known to have no partner (None: not known)
    rows_per_input: int = 1  # rows of activations per input (the baseline permutes inputs)


@dataclass
class Pair:
    name: str
    runs: tuple[str, str]
    layers: list[Layer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _same_label(labels: list[list], keep: Callable[[object], bool]) -> dict[int, set[int]]:
    """Known partners: each unit of A whose label is kept, with the units of B of that label."""
    return {i: {j for j, y in enumerate(labels[1]) if y == x} for i, x in enumerate(labels[0]) if keep(x)}


def resolve(targets: list[str], seeds: tuple[int, int], examples: int) -> Pair:
    if len(targets) == 1 and targets[0] in NAMED:
        return tms_pair(seeds, examples) if targets[0] == "tms" else induction_pair(seeds, examples)
    if len(targets) == 2 and all(TrainedModAdd.is_run(Path(t)) for t in targets):
        return modadd_pair(Path(targets[0]), Path(targets[1]))
    raise ValueError(
        f"unknown universality target {' '.join(targets)!r}: give one of {', '.join(NAMED)}, "
        "two modular-addition run folders (unweave train modadd --out DIR), or two dictionary folders "
        "(unweave sae train --out DIR)"
    )


def tms_pair(seeds: tuple[int, int], examples: int) -> Pair:
    n, d = TMS["n_features"], TMS["d_hidden"]
    x = sample_features(examples, n, TMS_SPARSITY, torch.Generator().manual_seed(1234))
    x = x[x.abs().sum(1) > 0]  # inputs with no active feature say nothing about any unit
    hidden, latents, features = [], [], []
    for seed in seeds:
        model = train_toy(n, d, p_active=TMS_SPARSITY, seed=seed)
        saes = train_tms_dictionaries(model, n, [n], seed, restarts=TMS_RESTARTS)
        with torch.no_grad():
            h = capture(model, "hidden", x)["hidden"]
            # the restart that reconstructs best (a rule that never looks at the true features)
            sae = min(saes, key=lambda s: float((s(h)[0] - h).pow(2).mean()))
            latents.append(sae.encode(h))
        hidden.append(h)
        # the true feature each latent's decoder holds (None when no column of W is within cosine 0.99)
        cos = torch.nn.functional.normalize(sae.W_dec.detach(), dim=1) @ torch.nn.functional.normalize(
            model.W.detach(), dim=0
        )
        best, which = cos.max(1)
        features.append([int(f) if c >= SAME_DIRECTION else None for f, c in zip(which, best)])
    partners = _same_label(features, keep=lambda f: f is not None)
    return Pair(
        "tms",
        (f"seed {seeds[0]}", f"seed {seeds[1]}"),
        [
            Layer(
                "dictionary latents",
                latents[0],
                latents[1],
                [f"latent {i} (feature {f})" for i, f in enumerate(features[0])],
                [f"latent {i} (feature {f})" for i, f in enumerate(features[1])],
                partners=partners,
            ),
            Layer("hidden dimensions", hidden[0], hidden[1], [f"h{i}" for i in range(d)], [f"h{i}" for i in range(d)]),
        ],
        notes=[
            f"toy model of superposition, {n} features in {d} dimensions; a width-{n} TopK (k=1) dictionary per run "
            "on its hidden activations; a latent's feature is the column of W its decoder lies along (cosine >= "
            f"{SAME_DIRECTION}), used only to score the matching"
        ],
    )


def induction_pair(seeds: tuple[int, int], examples: int, models: list | None = None) -> Pair:
    """`models`: the two trained toys, when the caller has them already."""
    cfg = induction_zoo.InductionConfig()
    models = models or [induction_zoo.train(induction_zoo.InductionConfig(seed=s)) for s in seeds]
    half = cfg.n_ctx // 2
    tokens, _ = induction_zoo.repeated_sequences(
        min(examples, 512), cfg.vocab, cfg.n_ctx, torch.Generator().manual_seed(4321), half=half
    )
    sites = [f"blocks.{i}.attn.hook_pattern" for i in range(cfg.transformer().n_layers)]
    # one unit per head: its attention pattern over every (sequence, query, key) where the head
    # has a choice, keys up to the query from the FREE_FROM-th query on (the causal mask's
    # zeros and the first rows' forced weights are the same for every head)
    cells = _free_cells(cfg.n_ctx)
    acts, roles, names = [], [], []
    for model in models:
        patterns = capture(model, sites, tokens)
        free = torch.cat([patterns[s][..., cells] for s in sites], dim=1)  # (sequence, head, cell)
        acts.append(free.permute(0, 2, 1).flatten(0, 1))  # sequence-major rows
        roles.append(_head_roles(induction_zoo.model_head_scores(model, tokens, half)))
        names.append([f"L{layer}.H{h}" for layer in range(len(sites)) for h in range(cfg.n_heads)])
    partners = _same_label(roles, keep=lambda role: role != "other")
    return Pair(
        "induction",
        (f"seed {seeds[0]}", f"seed {seeds[1]}"),
        [
            Layer(
                "attention heads",
                acts[0],
                acts[1],
                names[0],
                names[1],
                partners=partners,
                rows_per_input=int(cells.sum()),
            )
        ],
        notes=[f"roles, seed {s}: {dict(zip(n, r))}" for s, n, r in zip(seeds, names, roles)],
    )


def _free_cells(n_ctx: int) -> torch.Tensor:
    """(query, key) cells of a pattern where attention is not fixed by the mask, as a mask."""
    q, k = torch.meshgrid(torch.arange(n_ctx), torch.arange(n_ctx), indexing="ij")
    return (k <= q) & (q >= FREE_FROM)


def _head_roles(scores: dict[str, torch.Tensor]) -> list[str]:
    """Per head (layer-major): previous-token (the layer-0 head that scores highest), induction
    (layer-1 heads scoring at least HEAD_SCORE), or other."""
    prev, ind = scores["previous_token"], scores["induction"]
    layers, heads = prev.shape
    roles = ["other"] * (layers * heads)
    roles[int(prev[0].argmax())] = "previous-token"
    for h in (ind[1] >= HEAD_SCORE).nonzero().flatten().tolist():
        roles[heads + h] = "induction"
    return roles


def modadd_pair(path_a: Path, path_b: Path) -> Pair:
    runs = [TrainedModAdd.open(p) for p in (path_a, path_b)]
    p = runs[0].config.p
    if runs[1].config.p != p:
        raise ValueError(
            f"{path_a} (p={p}) and {path_b} (p={runs[1].config.p}) see different inputs: match runs of one modulus"
        )
    tokens = make_data(runs[0].config).tokens
    acts, freqs = [], []
    for run in runs:
        neurons = capture(run.load(), "blocks.0.mlp.hook_post", tokens)["blocks.0.mlp.hook_post"][:, -1]
        alive = neurons.std(0) > 1e-6 * (1 + neurons.abs().max())  # dead neurons have no frequency
        acts.append(neurons)
        freqs.append([int(f) if live else 0 for f, live in zip(neuron_frequencies(neurons, p), alive)])
    shared = set(freqs[0]) & set(freqs[1]) - {0}
    partners = _same_label(freqs, keep=lambda f: f in shared)
    unmatched = [i for i, f in enumerate(freqs[0]) if f and f not in shared]
    return Pair(
        "modadd",
        (str(path_a), str(path_b)),
        [
            Layer(
                "MLP neurons",
                acts[0],
                acts[1],
                [f"n{i} (k={f})" for i, f in enumerate(freqs[0])],
                [f"n{i} (k={f})" for i, f in enumerate(freqs[1])],
                partners=partners,
                unmatched=unmatched,
            )
        ],
        notes=[
            f"neuron frequencies of {path_a}: {sorted(set(freqs[0]) - {0})}; "
            f"of {path_b}: {sorted(set(freqs[1]) - {0})}; shared: {sorted(shared)}"
        ],
    )
