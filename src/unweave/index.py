"""`unweave runs DIR`: one index page over every run folder under DIR, read from each
run's record.json: a sortable table of command, date, wall time, headline figures and a
link to each report. Writes its own run folder (record.json, runs.json, runs.html)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from unweave.configs import setting
from unweave.report import Report
from unweave.runs import RECORD, Run, RunResult, read_record


@dataclass(frozen=True)
class RunsConfig:
    dir: Path = setting(help="Folder searched (recursively) for run folders, e.g. runs.", argument=True)
    out: Path | None = setting(None, "Where record.json, runs.json and runs.html go (default: DIR).")


def find_runs(root: Path) -> list[tuple[Path, dict]]:
    """(folder, record) of every finished run under root, oldest first; index runs left out."""
    found = []
    for path in sorted(Path(root).rglob(RECORD)):
        record = read_record(path.parent)
        if record.get("command") != "unweave runs":
            found.append((path.parent, record))
    return sorted(found, key=lambda item: item[1].get("started", ""))


def run_runs(cfg: RunsConfig) -> RunResult:
    if not Path(cfg.dir).is_dir():
        raise FileNotFoundError(f"{cfg.dir} is not a folder; give the folder that holds your run folders")
    out = Path(cfg.out or cfg.dir)
    run = Run(out, "runs", cfg)  # what it reads is listed in the index itself
    rows = []
    for folder, record in find_runs(cfg.dir):
        report = folder / record["report"]
        rows.append(
            {
                "command": record["command"].removeprefix("unweave "),
                "started": record.get("started", ""),
                "wall time (s)": record.get("wall_time_s", float("nan")),
                "folder": str(folder),
                "key figures": "; ".join(record.get("summary", [])),
                "href": os.path.relpath(report, out) if report.exists() else "",
            }
        )
    index = Report(f"unweave runs: {cfg.dir}")
    index.summary().text(
        f"{len(rows)} runs under {cfg.dir}. Click a header to sort; the folder links to the run's report.", summary=True
    ).table(rows, links={"folder": "href"}, sortable=True)
    if not rows:
        index.summary().text(f"No run folder (with {RECORD}) under {cfg.dir}.")
    return run.finish({"runs": rows}, index, [f"{len(rows)} runs indexed"])
