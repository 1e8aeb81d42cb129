"""What `unweave llc` can be pointed at: a modular-addition run directory (any of its
checkpoints) or a zoo model with a closed-form answer, named like `rrr:5,3,5:1`,
`dln:4,3,3,4:1` or `normal-crossing:1,2`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from unweave.devices import loader_on
from unweave.slt import truth
from unweave.slt.sgld import LossFn
from unweave.zoo import singular
from unweave.zoo.modadd import TrainedModAdd, answer_loss, at_answer, train_loader


@dataclass
class Target:
    name: str
    checkpoints: list[tuple[int, torch.nn.Module]]  # (step, model); one entry for a single model
    loss_fn: LossFn
    loader: DataLoader
    true_llc: float | None = None
    true_flat: int | None = None  # Hessian zero eigenvalues at w*, where known in closed form
    history: list[dict] | None = None  # training curves, for a run folder

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> Target:
        """The same target with its models and data on `device` (weights and data cast to `dtype`)."""
        models = [(step, model.to(device, dtype) if dtype else model.to(device)) for step, model in self.checkpoints]
        return replace(self, checkpoints=models, loader=loader_on(self.loader, device, dtype))


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from None


def resolve(spec: str, checkpoint: str = "final", batch_size: int | None = None, n: int = 1000) -> Target:
    """`checkpoint`: "final", a step number, or "all" (a modadd run's every checkpoint)."""
    path = Path(spec)
    if TrainedModAdd.is_run(path):
        run = TrainedModAdd.open(path, finished=checkpoint == "final")
        saved = run.checkpoints()
        if checkpoint == "all":
            chosen = [(step, run.load(p)) for step, p in saved]
        elif checkpoint == "final":
            chosen = [(run.config.steps, run.load())]
        else:
            steps = {step: p for step, p in saved}
            if not checkpoint.isdigit() or int(checkpoint) not in steps:
                raise ValueError(f"no checkpoint {checkpoint!r} in {path}; saved steps: {sorted(steps)}")
            chosen = [(int(checkpoint), run.load(steps[int(checkpoint)]))]
        chosen = [(step, at_answer(model)) for step, model in chosen]  # the loss reads '=' only
        return Target(
            f"modular addition ({path})", chosen, answer_loss, train_loader(run.config, batch_size), history=run.history
        )
    kind, _, rest = spec.partition(":")
    if kind == "normal-crossing":
        powers = _ints(rest, "normal-crossing powers")
        model, loader = singular.normal_crossing_task(powers, n=n)
        return Target(
            f"normal crossing {powers}",
            [(0, model)],
            singular.normal_crossing_loss,
            loader,
            truth.normal_crossing(powers),
            truth.normal_crossing_flat_directions(powers),
        )
    if kind in ("rrr", "dln"):
        widths_text, _, rank_text = rest.partition(":")
        widths = _ints(widths_text, f"{kind} widths")
        if kind == "rrr" and len(widths) != 3:
            raise ValueError(f"rrr takes three widths M,H,N, got {widths}; use dln for deeper networks")
        rank = _ints(rank_text or "1", f"{kind} rank")[0]
        model, loader = singular.deep_linear_task(widths, rank, n=n, batch_size=batch_size)
        return Target(
            f"{kind} {widths} rank {rank}",
            [(0, model)],
            singular.half_squared_error,
            loader,
            truth.deep_linear(widths, rank),
            truth.flat_directions(widths, rank),
        )
    raise ValueError(
        f"{spec!r} is neither a run directory (with config.json) nor a zoo model; use e.g. "
        "runs/demo/modadd, rrr:5,3,5:1, dln:4,3,3,4:1 or normal-crossing:1,2"
    )
