"""Artifacts on disk: safetensors for tensors, JSON for everything else, written atomically.

A file is written beside its destination and renamed into place, so an interrupted job
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from typing import Any


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata a safetensors file was written with (`write_tensors(..., metadata)`), without its tensors."""
    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def settings_folder(folder: Path, settings: dict) -> None:
    """Make `folder` hold results made with `settings`: what it holds is kept when its
    settings.json says the same settings, else the folder is emptied and marked with these
    (so a rerun with other settings starts afresh and an interrupted one resumes)."""
    folder = Path(folder)
    marker = folder / "settings.json"
    settings = json.loads(json.dumps(settings, default=str))  # as it reads back from disk
    if marker.exists() and read_json(marker) == settings:
        return
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_json(marker, settings)


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
