"""Modules of a dictionary's units over many prompts (`unweave graph FOLDER --prompts FILE`).

A unit is what the aggregated attribution graph calls one node: a latent whatever its
position, a site's error. On each prompt its effect is its attributed direct effect on that
prompt's outputs (the centred logits of the model's top next tokens), summed over its
positions; the outputs are joined across prompts by the token (its id), and each prompt is
one example. Two units are joined by the overlap of these effects summed over the prompts,
as one prompt's units are (`modules.py`), and Louvain communities of that graph are the
modules. Each module is then checked by intervention: its units set to zero at every
position of every prompt, every other unit free, and every prompt's outputs measured. S[i, j]
is the change ablating module i makes within module j's output directions over the change
within its own; modules that move each other's outputs by more than `modules.MERGE` are merged
(`modules.carve_by`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unweave.graph.dataset_attribution import node_names
from unweave.graph.modules import MERGE, Modules, Separability, carve_by
from unweave.graph.prompt import PromptUnits
from unweave.progress import Task


@dataclass
class JoinedEffects:
    """The units of every prompt joined by name: `effects` (prompts, outputs, units) holds each
    unit's attributed effect on each joined output, summed over its positions."""

    units: list[str]  # a unit's name (`dataset_attribution.node_names`), whatever its position
    outputs: list[str]  # a next token's node name, joined across prompts
    effects: torch.Tensor  # (prompts, outputs, units), float64
    unit_maps: list[torch.Tensor]  # per prompt: each of its units' joined index
    output_maps: list[torch.Tensor]  # per prompt: each of its outputs' joined index

    @property
    def gram(self) -> torch.Tensor:
        """(units, units): the overlap of two units' effects, summed over prompts and outputs."""
        flat = self.effects.flatten(0, 1)
        return flat.T @ flat

    def spread(self, k: int, change: torch.Tensor) -> torch.Tensor:
        """Prompt k's change of its own outputs, (outputs,), as a row over the joined outputs."""
        row = torch.zeros(len(self.outputs), dtype=torch.float64)
        return row.index_add_(0, self.output_maps[k], change.double())


def joined_effects(found: list[PromptUnits]) -> JoinedEffects:
    """Each prompt's attributed direct effects (`EffectData.attributed_effects`), joined by name."""
    units: dict[str, int] = {}
    outputs: dict[str, int] = {}
    unit_maps, output_maps = [], []
    for f in found:
        names, kinds = node_names(f)
        n = f.data.n_units
        unit_maps.append(torch.tensor([units.setdefault(name, len(units)) for name in names[:n]], dtype=torch.long))
        ends = [name for name, kind in zip(names, kinds) if kind == "output"]
        output_maps.append(torch.tensor([outputs.setdefault(name, len(outputs)) for name in ends], dtype=torch.long))
    effects = torch.zeros(len(found), len(outputs), len(units), dtype=torch.float64)
    task = Task("unit effects of the prompts", total=len(found), unit="prompts")
    try:
        for k, f in enumerate(found):
            own = torch.cat(list(f.data.attributed_effects())).sum(0).double()  # (its outputs, its units)
            rows, columns = output_maps[k][:, None], unit_maps[k][None, :]
            effects[k].index_put_((rows.expand_as(own), columns.expand_as(own)), own, accumulate=True)
            task.advance()
    finally:
        task.close()
    return JoinedEffects(list(units), list(outputs), effects, unit_maps, output_maps)


def ablated_change(found: list[PromptUnits], joined: JoinedEffects, module: list[int]) -> torch.Tensor:
    """(prompts, joined outputs): each prompt's outputs less the clean ones, with the module's
    units at their baseline (zero for a dictionary's) at every position (a prompt where none
    of them is live changes nothing)."""
    wanted = torch.as_tensor(module, dtype=torch.long)
    rows = []
    for k, f in enumerate(found):
        own = torch.isin(joined.unit_maps[k], wanted).nonzero().flatten().tolist()
        change = (f.data.outputs(ablate=own) - f.data.clean)[0] if own else torch.zeros(len(joined.output_maps[k]))
        rows.append(joined.spread(k, change))
    return torch.stack(rows)


@dataclass
class DatasetModules:
    joined: JoinedEffects
    modules: Modules  # units: indices into joined.units
    separability: Separability
    per_prompt: list[list[float]]  # [module][prompt]: the norm of that prompt's output change when it is ablated

    def module_of(self) -> dict[str, int]:
        """Each unit's module, by its name."""
        return {self.joined.units[u]: k for k, m in enumerate(self.modules.modules) for u in m}


def dataset_modules(found: list[PromptUnits], seed: int = 0, merge: float = MERGE) -> DatasetModules:
    """The units of `found` (one model's dictionaries on each prompt) cut into modules, checked
    and merged by ablating each on every prompt."""
    joined = joined_effects(found)
    measured: dict[tuple[int, ...], torch.Tensor] = {}

    def change(module: list[int]) -> torch.Tensor:
        measured[tuple(module)] = ablated_change(found, joined, module)
        return measured[tuple(module)]

    modules, separability = carve_by(joined.gram, change, seed, merge)
    per_prompt = [measured[tuple(m)].norm(dim=1).tolist() for m in modules.modules]
    return DatasetModules(joined, modules, separability, per_prompt)


def modules_table(d: DatasetModules, prompts: list[str], shown: int = 3) -> list[dict]:
    """A row per module: its size, effect share, and the prompts its ablation moves most."""
    rows = []
    for k, (m, share, changes) in enumerate(zip(d.modules.modules, d.modules.shares, d.per_prompt)):
        top = sorted(range(len(prompts)), key=lambda i: -changes[i])[:shown]
        most = "; ".join(f"{prompts[i][:40]!r} ({changes[i]:.2g})" for i in top)
        rows.append({"module": k, "units": len(m), "effect share": share, "acts most on (output change)": most})
    return rows


def _unit(name: str) -> dict:
    """A unit's record from its joined name: "SITE latent I" or "SITE error"."""
    site, kind, *index = name.split(" ")
    return {"site": site, "kind": kind, "index": int(index[0]) if index else None}


def dataset_modules_json(d: DatasetModules) -> dict:
    names = d.joined.units
    return {
        "units": "a latent whatever its position (index: the latent), or a site's error (index: null)",
        "modules": [
            {"units": [_unit(names[u]) for u in m], "effect_share": s, "output_directions": r, "per_prompt": p}
            for m, s, r, p in zip(d.modules.modules, d.modules.shares, d.separability.directions, d.per_prompt)
        ],
        "per_prompt": "the norm of each prompt's output change (centred logits of its top next tokens) when the "
        "module is ablated at every position",
        "inactive": [_unit(names[u]) for u in d.modules.inactive],
        "separability": d.separability.matrix,
        "max_off_diagonal": d.separability.max_off_diagonal,
        "merge_threshold": MERGE,
    }


def dataset_modules_line(d: DatasetModules) -> str:
    sizes = "/".join(str(len(m)) for m in d.modules.modules)
    return (
        f"{len(d.modules.modules)} modules of {d.modules.graph.number_of_nodes()} active units ({sizes}; "
        f"{len(d.modules.inactive)} inactive), each ablated at every position of every prompt: largest cross "
        f"effect {d.separability.max_off_diagonal:.3f} of a module's effect on its own outputs"
    )
