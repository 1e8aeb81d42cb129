"""Typed configs: the one source of defaults and help text.

A config is a frozen dataclass whose fields are declared with `setting(default, "help")`.
The library reads its defaults from it, the CLI builds its options from it (same names,
same defaults, the help text below), and every run folder stores it resolved, so a default
lives in exactly one place.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

MISSING = dataclasses.MISSING


def setting(default: Any = MISSING, help: str = "", *, argument: bool = False, cli: bool = True) -> Any:
    """A config field with its help text. A list default is copied per instance;
    `argument=True` makes it a positional argument on the command line; `cli=False` keeps it
    off the command line (still in the resolved config)."""
    meta = {"help": help, "argument": argument, "cli": cli}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda d=default: list(d), metadata=meta)
    if dataclasses.is_dataclass(default):  # a nested config's defaults
        return dataclasses.field(default_factory=lambda d=default: d, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def default_of(field: dataclasses.Field) -> Any:
    if field.default is not MISSING:
        return field.default
    if field.default_factory is not MISSING:
        return field.default_factory()
    return MISSING


def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a config class (its module may use postponed annotations)."""
    return typing.get_type_hints(cls)


def to_dict(config: Any) -> dict:
    """The config as JSON-ready data (paths as strings), nested configs included."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def seeds(config: Any) -> dict[str, int]:
    """Every field named like a seed, nested configs included, as `path.to.seed: value`."""
    found = {}

    def walk(data: dict, prefix: str) -> None:
        for key, value in data.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif "seed" in key and isinstance(value, int):
                found[prefix + key] = value

    walk(to_dict(config), "")
    return found
