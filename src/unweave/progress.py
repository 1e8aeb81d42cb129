"""The one progress helper: library code reports through it, the CLI turns it on.

Off by default so library calls and tests stay silent; `enabled()` turns rich progress
bars on for the duration of a `with` block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import ProgressColumn
from rich.progress import Task as RichTask
from rich.text import Text

T = TypeVar("T")
_progress = None  # a rich.progress.Progress while enabled, else None


@contextlib.contextmanager
def enabled() -> Iterator[None]:
    """Show progress bars for library calls made inside this block."""
    global _progress
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        RateColumn(),
        TextColumn("{task.fields[info]}"),
    )
    _progress = bar
    try:
        with bar:
            yield
    finally:
        _progress = None


class RateColumn(ProgressColumn):
    """Units per second (tokens/s, steps/s) for tasks that name their unit."""

    def render(self, task: RichTask) -> Text:
        unit = task.fields.get("unit")
        if not unit or not task.speed:
            return Text("")
        return Text(f"{task.speed:,.0f} {unit}/s")


class Task:
    """A handle on one progress bar; every method is a no-op when progress is off. With a
    `unit` (say "tokens"), the bar counts in that unit and shows its rate per second."""

    def __init__(self, description: str, total: int | None, unit: str | None = None):
        # the bar is kept with the task: task ids restart at 0 in every block, and a task closed
        # late (a generator the garbage collector finishes) must not remove a later block's bar
        self._bar = _progress
        self._id = None if self._bar is None else self._bar.add_task(description, total=total, info="", unit=unit)

    def advance(self, n: int = 1, info: str | None = None) -> None:
        if self._id is not None:
            fields = {} if info is None else {"info": info}
            self._bar.update(self._id, advance=n, **fields)

    def close(self) -> None:
        if self._id is not None:
            self._bar.remove_task(self._id)
            self._id = None


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over `items`, advancing a progress bar when progress is on."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    task = Task(description, total)
    try:
        for item in items:
            yield item
            task.advance()
    finally:
        task.close()
