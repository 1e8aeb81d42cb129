"""Training dictionaries: several at once from one stream, resumable, with the input
normalisation folded back into the weights at the end.

Each batch is an activation tensor x (SAEs) or a pair (x, y) (transcoders: MLP input and
output). Inputs and targets are scaled so that their mean norm is sqrt(width) (the scale
is estimated on the first batch), which makes one learning rate fit every layer and model;
after training the scales are folded into the weights, so the saved dictionary reads and
writes raw activations.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch

from unweave import distributed
from unweave.artifacts import read_json, read_tensors, write_json, write_tensors
from unweave.dictionaries.sae import SAE, norm_limit, ordinary_rows


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    lr: float = 1e-3
    warmup: int | None = None  # linear warm-up steps; None: 5% of the steps, at most 100
    decay_frac: float = 0.2  # linear decay to zero over this last fraction of the steps
    normalise: bool = True
    b_dec_init: str = "geometric_median"  # or "mean"
    checkpoint_every: int = 200
    # leave out inputs whose norm exceeds this multiple of the first batch's median norm:
    # the few massive-activation tokens (attention sinks, ~1% in SmolLM2's residual stream,
    # norms 100x the rest) would otherwise dominate the squared error. None keeps all.
    max_norm_ratio: float | None = None

    @property
    def warmup_steps(self) -> int:
        """The default scales with the run: a fixed 100-step warm-up left a 64-step run (the
        CLI's default 262,144 tokens) below 0.64 of its learning rate all the way through."""
        if self.warmup is not None:
            return max(1, self.warmup)
        return max(1, min(100, round(0.05 * self.steps)))

    def schedule(self) -> dict:
        """The learning-rate schedule as it ran, for a folder's metadata: a folder records its own
        warm-up, so runs before and after a change of the default can be told apart."""
        return {
            "steps": self.steps,
            "lr": self.lr,
            "warmup_steps": self.warmup_steps,
            "decay_from_step": round(self.steps * (1 - self.decay_frac)),
        }

    def lr_at(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps)
        decay_start = self.steps * (1 - self.decay_frac)
        decay = 1.0 if step < decay_start else max(0.0, (self.steps - step) / (self.steps - decay_start))
        return self.lr * warm * decay


def _pair(batch: torch.Tensor | tuple | list) -> tuple[torch.Tensor, torch.Tensor]:
    return (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, batch)


def norm_scale(x: torch.Tensor) -> float:
    """Factor that makes the mean row norm sqrt(width)."""
    mean_norm = x.double().norm(dim=1).mean().item()
    if not math.isfinite(mean_norm) or mean_norm == 0:
        raise ValueError(f"cannot normalise activations with mean norm {mean_norm}")
    return math.sqrt(x.shape[1]) / mean_norm


class Checkpoint:
    """Everything needed to continue training exactly, in `folder`: weights, dead-latent
    counters and Adam moments in a safetensors file; step, scales, losses, the massive-norm
    limit and Adam's settings in checkpoint.json. The JSON names the tensor file and is
    written last, so a crash mid-save leaves the previous checkpoint whole (no pickle)."""

    STATE = "checkpoint.json"

    def __init__(self, folder: Path | None):
        self.folder = None if folder is None else Path(folder)

    def load(self, saes: list[SAE], opts: list[torch.optim.Optimizer]) -> dict | None:
        """Restore the dictionaries and optimisers; returns the JSON state, or None if there is no checkpoint."""
        if self.folder is None or not (self.folder / self.STATE).exists():
            return None
        state = read_json(self.folder / self.STATE)
        tensors = read_tensors(self.folder / state["tensors"])
        for i, (sae, opt, groups) in enumerate(zip(saes, opts, state["param_groups"])):
            sae.load_state_dict(_under(tensors, f"{i}.weights."))
            sae.since_fired.copy_(tensors[f"{i}.since_fired"])
            moments: dict[int, dict[str, torch.Tensor]] = {}
            for key, value in _under(tensors, f"{i}.adam.").items():
                param, name = key.split(".", 1)
                moments.setdefault(int(param), {})[name] = value
            opt.load_state_dict({"state": moments, "param_groups": [_untuple(g) for g in groups]})
        return state

    def save(self, saes: list[SAE], opts: list[torch.optim.Optimizer], state: dict) -> None:
        """Save the dictionaries and optimisers with `state` (JSON-able; its "step" names the file)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors, param_groups = {}, []
        for i, (sae, opt) in enumerate(zip(saes, opts)):
            tensors.update({f"{i}.weights.{k}": v for k, v in sae.state_dict().items()})
            tensors[f"{i}.since_fired"] = sae.since_fired
            saved = opt.state_dict()
            tensors.update(
                {
                    f"{i}.adam.{param}.{name}": value
                    for param, moments in saved["state"].items()
                    for name, value in moments.items()
                }
            )
            param_groups.append(saved["param_groups"])
        name = f"checkpoint-{state['step']:08d}.safetensors"
        write_tensors(self.folder / name, tensors)
        write_json(self.folder / self.STATE, {**state, "tensors": name, "param_groups": param_groups})
        for old in self.folder.glob("checkpoint-*.safetensors"):
            if old.name != name:
                old.unlink()

    def remove(self) -> None:
        """Delete the checkpoint, and its folder if that leaves it empty."""
        if self.folder is None or not self.folder.exists():
            return
        (self.folder / self.STATE).unlink(missing_ok=True)  # first: what remains is no checkpoint
        for leftover in [*self.folder.glob("checkpoint-*.safetensors*"), self.folder / (self.STATE + ".tmp")]:
            leftover.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.folder.rmdir()


def _under(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _untuple(group: dict) -> dict:
    """An optimiser's param group back from JSON, which made its tuples (Adam's betas) lists."""
    return {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}


def optimiser_step(
    opt: torch.optim.Optimizer | Sequence[torch.optim.Optimizer], loss: torch.Tensor, lr: float, saes: list[SAE]
) -> None:
    """One Adam step (of one optimiser, or of several after one backward pass) that keeps
    every decoder row at unit norm: the gradient's component along each row is removed
    before the step and the rows are renormalised after it."""
    opts = [opt] if isinstance(opt, torch.optim.Optimizer) else list(opt)
    for o in opts:
        for group in o.param_groups:
            group["lr"] = lr
        o.zero_grad(set_to_none=True)
    loss.backward()
    for sae in saes:
        sae.remove_parallel_gradient()
    for o in opts:
        o.step()
    for sae in saes:
        sae.normalise_decoder()


class _Loss(torch.nn.Module):
    """A dictionary's training loss as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, sae: SAE):
        super().__init__()
        self.sae = sae

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.sae.loss(x, y)


def _losses(saes: list[SAE]) -> list[torch.nn.Module]:
    """Each dictionary's loss module; under torchrun wrapped in DDP, which averages the gradients
    over ranks during backward. Buffers are not broadcast: the dead-latent counters are merged
    by `_sync_counters` instead, so that each counts the whole global batch."""
    if not distributed.active():
        return [_Loss(s) for s in saes]
    from torch.nn.parallel import DistributedDataParallel

    return [DistributedDataParallel(_Loss(s), broadcast_buffers=False) for s in saes]


@torch.no_grad()
def _sync_counters(sae: SAE, before: torch.Tensor, n_global: int) -> None:
    """since_fired as one process would count it on the global batch: zero where a latent fired
    on any rank, else its old value plus the global batch size."""
    fired = (sae.since_fired == 0).to(torch.int32)
    torch.distributed.all_reduce(fired, op=torch.distributed.ReduceOp.MAX)
    sae.since_fired.copy_(torch.where(fired.bool(), 0, before + n_global))


def _global_first_batch(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's first batch, concatenated in rank order: the scales, the massive-norm limit
    and the decoder bias are estimated on it, the same on every rank and as one process would."""
    if not distributed.active():
        return x, y
    parts = distributed.gather_objects((x.cpu(), y.cpu()))
    xs, ys = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return xs.to(x.device), ys.to(y.device)


def train_many(
    saes: list[SAE],
    batches: Iterable,
    cfg: TrainConfig,
    checkpoint_dir: Path | None = None,
    on_step: Callable[[int], object] | None = None,
) -> list[list[float]]:
    """Train several dictionaries (a sweep of k or widths) on one stream: each batch is read
    once and fed to all, on the dictionaries' device. With `checkpoint_dir`, state is saved
    every `cfg.checkpoint_every` steps and a later call with the same arguments resumes where
    it stopped, with the same result as an uninterrupted run. Returns each dictionary's losses
    (under torchrun: this rank's share of each global batch, whose gradients DDP averages).

    Under torchrun each rank's `batches` is its own part of the global batch; the result is
    that of one process fed the ranks' batches concatenated."""
    d_in = {s.cfg.d_in for s in saes}
    d_out = {s.cfg.width_out for s in saes}
    if len(d_in) != 1 or len(d_out) != 1:
        raise ValueError(
            f"dictionaries trained on one stream must share d_in and d_out; got d_in {sorted(d_in)}, "
            f"d_out {sorted(d_out)}"
        )
    device = next(saes[0].parameters()).device
    opts = [torch.optim.Adam(s.parameters(), lr=cfg.lr) for s in saes]
    losses: list[list[float]] = [[] for _ in saes]
    ckpt = Checkpoint(checkpoint_dir if distributed.world().main else None)
    state = Checkpoint(checkpoint_dir).load(saes, opts)  # every rank resumes from rank 0's checkpoint
    stream = iter(batches)
    start, scales, max_norm = 0, None, None
    if state is not None:
        start, scales, losses, max_norm = state["step"], state["scales"], state["losses"], state["max_norm"]
        for _ in islice(stream, start):  # the stream is deterministic: skip what was consumed
            pass
    for sae in saes:
        sae.train()
    loss_modules = _losses(saes)
    for step in range(start, cfg.steps):
        x, y = (t.to(device) for t in _pair(next(stream)))
        if scales is None or (cfg.max_norm_ratio is not None and max_norm is None):
            first_x, first_y = _global_first_batch(x, y)
        if cfg.max_norm_ratio is not None:
            if max_norm is None:
                max_norm = norm_limit(first_x, cfg.max_norm_ratio)
                keep = ordinary_rows(first_x, max_norm)
                first_x, first_y = first_x[keep], first_y[keep]
            keep = ordinary_rows(x, max_norm)
            x, y = x[keep], y[keep]
        if scales is None:
            scales = (norm_scale(first_x), norm_scale(first_y)) if cfg.normalise else (1.0, 1.0)
            for sae in saes:
                sae.init_decoder_bias(first_y * scales[1], cfg.b_dec_init)
        x, y = x * scales[0], y * scales[1]
        n_global = _global_count(len(x), device)
        for sae, loss_module, opt, record in zip(saes, loss_modules, opts, losses):
            before = sae.since_fired.clone()
            loss = loss_module(x, y)
            optimiser_step(opt, loss, cfg.lr_at(step), [sae])
            if distributed.active():
                _sync_counters(sae, before, n_global)
            record.append(loss.item())
        if on_step is not None:
            on_step(step)
        if checkpoint_dir is not None and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            if ckpt.folder is not None:
                ckpt.save(saes, opts, {"step": step + 1, "scales": scales, "losses": losses, "max_norm": max_norm})
            distributed.barrier()  # a rank that resumes must find the checkpoint its step count implies
    for sae in saes:
        sae.eval()
        sae.max_input_norm = max_norm
        if scales is not None:
            sae.fold_scales(*scales)
    distributed.barrier()
    ckpt.remove()
    return losses


def _global_count(n: int, device: torch.device) -> int:
    if not distributed.active():
        return n
    total = torch.tensor([n], dtype=torch.long, device=device)  # nccl reduces GPU tensors only
    torch.distributed.all_reduce(total)
    return int(total.item())


def train_sae(
    sae: SAE, batches: Iterable, steps: int, lr: float = 1e-3, warmup: int | None = None, normalise: bool = True
) -> list[float]:
    """One dictionary; see `train_many`."""
    return train_many([sae], batches, TrainConfig(steps, lr, warmup, normalise=normalise))[0]
