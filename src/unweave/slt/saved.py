"""Finished SGLD runs of one `unweave llc` job, kept in its run folder so that an interrupted job
loses nothing.

A job (the rule's ladder, a trajectory, every head of a language model) is a sequence of
`estimate_llc` calls whose settings depend on the results before them. Every call's result is
written to OUT/estimates/<scope>/<index>.safetensors as it finishes (the loss traces as a tensor,
the rest as JSON metadata, the call's settings with it). Run again with the same settings and
inputs, the job replays the saved results in order instead of sampling, and samples from the
first call that has none: the same decisions follow, so the answer is the one an uninterrupted
run gives. A saved result whose settings differ from the call now being made means the job took
another path: it and every later one in that scope are dropped. Settings or inputs that differ
from the saved ones clear the folder. Under torchrun rank 0 reads and writes, and hands what it
read to the other ranks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from unweave import configs, distributed
from unweave.artifacts import read_metadata, read_tensors, settings_folder, write_tensors
from unweave.runs import Run
from unweave.slt.llc import LLCResult, estimate_llc
from unweave.slt.sgld import LLCError, LossFn, SGLDConfig

RTOL = 1e-4
_TENSORS = ("loss_trace", "acceptance_per_chain")


class SavedRuns:
    """The estimates folder of one job, valid for the `settings` it was made with."""

    def __init__(self, folder: Path, settings: dict):
        self.folder = Path(folder)
        self.found = 0  # results replayed so far, over every scope
        if distributed.world().main:
            settings_folder(self.folder, settings)

    @classmethod
    def of(cls, run: Run) -> SavedRuns:
        """OUT/estimates of a run, valid for its config (where it is written aside) and its inputs' checksums."""
        config = {k: v for k, v in configs.to_dict(run.config).items() if k != "out"}
        return cls(run.dir / "estimates", {"config": config, "inputs": run.inputs})

    def scope(self, name: str) -> Replay:
        """The calls of one part of the job (a checkpoint, a unit, the rule's ladder)."""
        return Replay(self, self.folder / name)


class Replay:
    """`estimate` is `estimate_llc`, replayed from disk where this scope's call has been made before."""

    def __init__(self, runs: SavedRuns, folder: Path):
        self.runs = runs
        self.folder = folder
        self.calls = 0

    def estimate(
        self,
        model: torch.nn.Module,
        loss_fn: LossFn,
        loader: Iterable,
        config: SGLDConfig | None = None,
        params: str | Sequence[str] | None = None,
        n: int | None = None,
    ) -> LLCResult:
        key = json.dumps({"config": (config or SGLDConfig()).to_dict(), "params": params, "n": n}, sort_keys=True)
        path = self.folder / f"{self.calls:05d}.safetensors"
        self.calls += 1
        saved = distributed.broadcast_object(self._load(path, key) if distributed.world().main else None)
        if saved is not None:
            self.runs.found += 1
            if "error" in saved:
                raise LLCError(saved["error"])
            return LLCResult(**saved)
        try:
            result = estimate_llc(model, loss_fn, loader, config, params=params, n=n)
        except LLCError as e:
            self._save(path, key, {"error": str(e)}, {})
            raise
        fields = result.to_dict()
        tensors = {name: torch.tensor(fields.pop(name), dtype=torch.float64) for name in _TENSORS}
        self._save(path, key, fields, tensors)
        return result

    def _load(self, path: Path, key: str) -> dict | None:
        if not path.exists():
            return None
        meta = read_metadata(path)
        if "key" in meta and _same(json.loads(meta["key"]), json.loads(key)):
            fields = json.loads(meta["fields"])
            tensors = read_tensors(path)
            return fields | {name: tensors[name].tolist() for name in _TENSORS if name in tensors}
        # the job took another path from here (different settings): what follows is stale too
        for stale in self.folder.glob("*.safetensors"):
            if stale.name >= path.name:
                stale.unlink()
        return None

    def _save(self, path: Path, key: str, fields: dict, tensors: dict[str, torch.Tensor]) -> None:
        if not distributed.world().main:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        metadata = {"key": key, "fields": json.dumps(fields)}
        write_tensors(path, tensors or {"none": torch.zeros(0)}, metadata)


def _same(a: object, b: object) -> bool:
    """Equal, numbers to a relative `RTOL`."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool | None):
        return math.isclose(a, b, rel_tol=RTOL) or a == b
    return a == b
