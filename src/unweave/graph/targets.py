"""What `unweave graph` cuts into modules: `two-tasks` (a planted network with two
independent tasks in shared layers) or a modular-addition run folder (its MLP neurons).
Each resolves to the effect data (model, inputs, units, outputs), a short description of
each unit for the page, and the known answer, which the method never sees: it is only used
afterwards to score the modules it found.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from unweave.graph.effects import EffectData, Units, centred_logits
from unweave.zoo import fourier
from unweave.zoo.modadd import TrainedModAdd, make_data
from unweave.zoo.two_tasks import TwoTasks, TwoTasksConfig, sample_inputs

TARGETS = (
    "two-tasks (a planted network), induction (the induction toy's edges), or a modular-addition run folder "
    "(unweave train modadd, or runs/demo/modadd)"
)
PURE = 0.95  # the known answers: each module at least this share one task's (or one frequency's) units
# The labels a cut should find: those whose units carry at least this share of the squared
# effect of all units (a key frequency of the embedding that no neuron carries, as in one
# mod-47 run, is not a part of the MLP).
CARRIED = 0.05


@dataclass
class Target:
    name: str
    data: EffectData
    note: str
    describe_unit: Callable[[int], str]  # hover text for a unit: what it responds to
    truth_name: str  # what the planted labels are ("task", "frequency")
    truth: list[int]  # the planted label of every unit
    context: dict  # more of the known answer, for the page (modular addition: the embedding's key frequencies)
    labels: torch.Tensor | None = None  # right answers, where the outputs are logits: then a circuit is found


def resolve(name: str, examples: int, seed: int) -> Target:
    if name == "two-tasks":
        return two_tasks_target(examples, seed)
    path = Path(name)
    for folder in (path, path / "modadd"):
        if folder.is_dir() and TrainedModAdd.is_run(folder):
            return modadd_target(folder)
    raise ValueError(f"unknown graph target {name!r}; use {TARGETS}")


def _top_inputs(acts: torch.Tensor, label: Callable[[int], str], k: int = 3) -> Callable[[int], str]:
    top = acts.topk(k, dim=0).indices.T  # (units, k): the examples each unit responds to most

    def describe(unit: int) -> str:
        return "top inputs: " + "; ".join(label(int(x)) for x in top[unit])

    return describe


def two_tasks_target(examples: int, seed: int) -> Target:
    cfg = TwoTasksConfig(seed=seed)
    model = TwoTasks(cfg).eval()
    x = sample_inputs(examples, cfg, seed + 1)
    data = EffectData(model, x, Units("mlp.hook_post"), lambda y: y)

    def label(i: int) -> str:
        a, b = x[i, : cfg.n_in].abs().max(), x[i, cfg.n_in :].abs().max()
        return f"#{i} (largest |x_A| {a:.1f}, |x_B| {b:.1f})"

    note = (
        f"a planted network: two tasks, each a random map from its own {cfg.n_in} inputs to its own {cfg.n_out} "
        f"outputs, through one residual stream of {cfg.d_model} dimensions ({2 * cfg.n_in} input directions in "
        f"superposition) and one MLP of {cfg.d_mlp} neurons (half per task, interleaved); units: the MLP neurons; "
        f"{examples} random inputs"
    )
    return Target(
        "two-tasks",
        data,
        note,
        _top_inputs(data.activations, label),
        "task",
        model.neuron_task.tolist(),
        {},
    )


def modadd_target(path: Path) -> Target:
    run = TrainedModAdd.open(path)
    model, p = run.load(), run.config.p
    tokens = make_data(run.config).tokens
    data = EffectData(model, tokens, Units("blocks.0.mlp.hook_post", -1), lambda out: centred_logits(out[:, -1]))
    acts = data.activations
    # checked afterwards, never given to the method: each neuron's dominant frequency and the
    # key frequencies of the embedding
    truth = fourier.neuron_frequencies(acts, p).tolist()
    keys = fourier.key_frequencies(fourier.embedding_spectrum(model.W_E.detach(), p))

    def label(i: int) -> str:
        a, b = int(tokens[i, 0]), int(tokens[i, 1])
        return f"{a}+{b}={(a + b) % p}"

    note = (
        f"modular addition mod {p} ({path}); units: the {acts.shape[1]} MLP neurons at the '=' position; outputs: "
        f"the logits minus their mean; inputs: all {p * p} pairs"
    )
    context = {"embedding key frequencies": keys}
    labels = make_data(run.config).labels
    return Target(f"modadd p={p}", data, note, _top_inputs(acts, label), "frequency", truth, context, labels)


def purity(modules: list[list[int]], truth: list[int], effect: torch.Tensor) -> list[dict]:
    """Per module: its most common planted label, the share of its units that carry it, and
    the share of its squared effect they carry."""
    rows = []
    for m in modules:
        label, count = Counter(truth[i] for i in m).most_common(1)[0]
        own = effect[m]
        carried = float(own[[truth[i] == label for i in m]].sum() / own.sum())
        rows.append({"label": label, "purity": count / len(m), "effect_purity": carried, "units": len(m)})
    return rows


def carried_labels(units: list[int], truth: list[int], effect: torch.Tensor, share: float = CARRIED) -> list[int]:
    """The planted labels whose units carry at least `share` of the squared effect of `units`."""
    total = float(effect[units].sum())
    by_label = Counter()
    for u in units:
        by_label[truth[u]] += float(effect[u])
    return sorted(label for label, e in by_label.items() if e >= share * total)
