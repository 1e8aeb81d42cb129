"""Where a command runs: `--device auto|cpu|cuda[:N]` and `--dtype` for the model's weights.

`auto` picks the GPU when torch sees one, so the same command line runs on a laptop and on
a GPU machine. Data stays on the CPU until a batch is used (`to_device`), so stores, token
rows and results are device-independent; only the arithmetic moves.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from unweave.configs import setting

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DeviceError(ValueError):
    """A device or dtype that cannot be used here."""


@dataclass(frozen=True)
class DeviceConfig:
    device: str = setting("auto", "auto (a GPU when torch sees one, else the CPU), cpu, cuda or cuda:N.")
    dtype: str = setting("float32", f"Dtype of the model's weights: {', '.join(DTYPES)}.")

    def __post_init__(self):
        resolve_dtype(self.dtype)  # fail at the boundary, before any work
        resolve_device(self.device)

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype)


def resolve_device(name: str) -> torch.device:
    """`auto` is the first GPU if there is one, else the CPU; a GPU that is not there is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {name}: torch sees no CUDA GPU here (torch {torch.__version__}); use --device cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible (cuda:0 ...)")
    elif device.type != "cpu":
        raise DeviceError(f"--device {name}: unweave runs on cpu or cuda; use auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise DeviceError(f"--dtype {name!r} is unknown; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def to_device(value: Any, device: torch.device | str, dtype: torch.dtype | None = None) -> Any:
    """Tensors (alone, or in tuples, lists and dicts) moved to `device`, floating-point ones
    cast to `dtype` if given; anything else as is."""
    if isinstance(value, torch.Tensor):
        return _cast(value, torch.device(device), dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device, dtype) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device, dtype) for k, v in value.items()}
    return value


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (the CPU for a model with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def loader_on(loader: Iterable, device: torch.device | str, dtype: torch.dtype | None = None) -> Iterable:
    """`loader` with its batches on `device` (floating-point data cast to `dtype` if given).

    A DataLoader over a TensorDataset is rebuilt over the moved tensors (the data is copied
    once, and stays a plain TensorDataset loader that the SGLD sampler indexes directly); any
    other loader moves each batch as it is drawn."""
    from torch.utils.data import DataLoader, RandomSampler, TensorDataset

    device = torch.device(device)
    dataset = getattr(loader, "dataset", None)
    if isinstance(loader, DataLoader) and isinstance(dataset, TensorDataset) and loader.batch_size:
        moved = TensorDataset(*(_cast(t, device, dtype) for t in dataset.tensors))
        shuffle = isinstance(loader.sampler, RandomSampler)
        return DataLoader(moved, batch_size=loader.batch_size, shuffle=shuffle, drop_last=loader.drop_last)
    return DeviceLoader(loader, device, dtype)


def _cast(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    return t.to(device, dtype) if dtype is not None and t.is_floating_point() else t.to(device)


class DeviceLoader:
    """A loader whose batches arrive on `device`; keeps `dataset` and `batch_size` so code that
    reads them (dataset sizes, direct indexing of tensor datasets) still can."""

    def __init__(self, loader: Iterable, device: torch.device | str, dtype: torch.dtype | None = None):
        self.loader, self.device, self.dtype = loader, torch.device(device), dtype
        self.dataset = getattr(loader, "dataset", None)
        self.batch_size = getattr(loader, "batch_size", None)

    def __iter__(self) -> Iterator:
        return (to_device(batch, self.device, self.dtype) for batch in self.loader)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]
