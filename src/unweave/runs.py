"""The run folder: every command writes one, through this module.

    OUT/record.json   how the run was made: command line, resolved config (defaults
                      included), seeds, versions, device, wall time, checksums of inputs
    OUT/<name>.json   the command's results
    OUT/<name>.html   its report (one self-contained file)

`Run` is the one helper (start it before the work, `finish` it after) and `RunResult` the
one result type every command returns; the CLI prints its summary lines and paths.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from unweave import configs
from unweave.artifacts import read_json, sha256, write_json
from unweave.report import Report

RECORD = "record.json"
# a directory that carries its own checksums (an activation store): hash that file only
_SELF_CHECKSUMMED = ("manifest.json",)
_MAX_HASHED_BYTES = 1 << 30


@dataclass
class RunResult:
    dir: Path
    record: Path
    results: Path
    report: Path
    summary: list[str] = field(default_factory=list)  # headline lines, for the command line
    data: dict = field(default_factory=dict)  # the results as written to `results`


def checksum(path: Path) -> str | dict[str, str]:
    """SHA-256 of a file, or of each file under a directory (an activation store: of its
    manifest, which holds every shard's checksum)."""
    path = Path(path)
    if path.is_file():
        return sha256(path)
    for name in _SELF_CHECKSUMMED:
        if (path / name).is_file():
            return {name: sha256(path / name)}
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.name != RECORD)
    return {
        str(f.relative_to(path)): sha256(f) if f.stat().st_size <= _MAX_HASHED_BYTES else "not hashed (> 1 GiB)"
        for f in files
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("unweave", "torch", "transformers", "numpy"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def device(config: Any = None) -> str:
    """The device the run used: the one its config's `device` field resolves to (`auto`
    included), else the GPU if there is one, else the CPU."""
    import torch

    chosen = _device_field(config)
    if chosen is not None:
        target = chosen.torch_device
    else:
        target = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if target.type == "cuda":
        return f"{target} ({torch.cuda.get_device_name(target)})"
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def _device_field(config: Any) -> Any:
    from unweave.devices import DeviceConfig

    if config is None or not dataclasses.is_dataclass(config):
        return None
    return next((v for f in dataclasses.fields(config) if isinstance(v := getattr(config, f.name), DeviceConfig)), None)


class Run:
    """One command's run folder. `inputs` are what the command reads: each that is a path on
    disk is checksummed at the start (a known model name or a zoo spec is not a path)."""

    def __init__(
        self,
        out: Path,
        command: str,
        config: Any,
        inputs: Iterable[Path | str | None] = (),
        name: str | None = None,
        results: str | None = None,
        report: str | None = None,
    ):
        self.dir = Path(out)
        self.command = command
        self.config = config
        name = name or command.replace(" ", "_").replace("-", "_")
        self.results_path = self.dir / (results or f"{name}.json")
        self.report_path = self.dir / (report or f"{name}.html")
        self.started = time.time()
        self.inputs: dict[str, Any] = {}
        for item in inputs:
            if item is not None and str(item) and Path(item).exists():
                self.read(Path(item))

    def read(self, path: Path) -> None:
        self.inputs[str(path)] = checksum(path)

    def record(self, summary: list[str] | None = None) -> dict:
        return {
            "command": f"unweave {self.command}",
            "argv": list(sys.argv),
            "config": configs.to_dict(self.config),
            "seeds": configs.seeds(self.config),
            "versions": versions(),
            "device": device(self.config),
            "world_size": _world_size(),
            "inputs": self.inputs,
            "started": datetime.fromtimestamp(self.started, timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": round(time.time() - self.started, 3),
            "results": self.results_path.name,
            "report": self.report_path.name,
            "summary": list(summary or []),
        }

    def finish(self, results: dict, report: Report, summary: list[str]) -> RunResult:
        """Write the results, the report (with the run record as its last section) and
        record.json, in that order: a folder with record.json holds a finished run. Under
        torchrun only rank 0 writes; every rank gets the same RunResult back."""
        from unweave.distributed import world

        if not world().main:
            return RunResult(self.dir, self.dir / RECORD, self.results_path, self.report_path, summary, results)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.results_path, results)
        record = self.record(summary)
        report.section("How this run was made").table(
            [
                {"field": k, "value": v}
                for k, v in record.items()
                if k not in ("config", "inputs", "versions", "summary")
            ]
            + [{"field": f"config.{k}", "value": v} for k, v in _flat(record["config"]).items()]
            + [{"field": k, "value": v} for k, v in record["versions"].items()]
        )
        report.write(self.report_path)
        write_json(self.dir / RECORD, record)
        return RunResult(self.dir, self.dir / RECORD, self.results_path, self.report_path, summary, results)


def _world_size() -> int:
    from unweave.distributed import world

    return world().size


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


def read_record(run_dir: Path) -> dict:
    """The record of a finished run folder; a clear error for anything else."""
    path = Path(run_dir) / RECORD
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} holds no {RECORD}: it is not a finished unweave run folder")
    return read_json(path)
