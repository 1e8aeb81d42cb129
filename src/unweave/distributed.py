"""More than one process: `torchrun --nproc-per-node N -m unweave ...`.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `start()` joins the process group (nccl when
the run uses GPUs, gloo on CPUs) and gives each rank its own GPU. Without torchrun every
function here answers as the single process of a world of one, so commands need no second
code path. Rank 0 writes the run folder; the others only compute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place, from torchrun's environment (a world of one without it)."""
    return World(
        int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    )


def start(device: torch.device) -> torch.device:
    """Join the process group if this is a multi-process run; returns the device this rank uses
    (cuda:LOCAL_RANK when the run is on GPUs)."""
    w = world()
    if w.size == 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", w.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if active():
        dist.barrier()


def gather_objects(obj: object) -> list:
    """Every rank's `obj`, in rank order, on every rank ([obj] in a world of one)."""
    if not active():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object) -> object:
    """Rank 0's `obj` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
