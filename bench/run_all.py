"""Every benchmark, from nothing to bench/RESULTS.md: `make bench` runs this.

For the benches it runs it builds what they need when missing: the peers' virtualenvs
(bench/venv-saelens, bench/venv-devinterp, bench/venv-pyvene, bench/venv-autocircuit; see peers.py) and the
stores and trained models under bench/data/ (with the `unweave` command); then it runs
each bench script from bench/ with the project's Python, echoing its output, and writes
bench/RESULTS.md: date, commit, machine, versions, then one section per bench with its
command line, wall time and the tables it printed. A bench that fails is recorded as
failed with the last lines it wrote; the others still run, and the exit code says so.

    make bench                                   # everything, full size (hours on 2 CPU cores)
    make bench BENCH_ARGS="--only llc_vs_devinterp --quick"
    .venv/bin/python bench/run_all.py --only sites_overhead --only store_throughput --quick

--only NAME (repeatable) runs a subset and replaces just those sections of an existing
RESULTS.md. --quick passes --quick to the scripts (small sizes, to check the pipeline in
minutes; its numbers are not the benchmark's). --device DEVICE is passed to the scripts
whose options take it.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from peers import PEERS, BuildError, ensure, stream

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"  # stores and trained models the benches read (ignored by git)
RESULTS = HERE / "RESULTS.md"


@dataclass(frozen=True)
class Artifact:
    """A store or run folder made by an `unweave` command; finished when it holds record.json."""

    name: str  # folder under bench/data/
    command: tuple[str, ...]  # `unweave` arguments, without --out
    option: str  # the bench's option that takes the folder
    needs: tuple[Artifact, ...] = ()  # built first (a store a dictionary is trained on)

    @property
    def dir(self) -> Path:
        return DATA / self.name


@dataclass(frozen=True)
class Bench:
    name: str
    peer: str | None = None
    artifact: Artifact | None = None  # full size
    quick_artifact: Artifact | None = None  # for --quick, when the full one is not there yet
    what: str = ""


STORE_ARGS = ("cache", "--model", "smollm2-135m", "--site", "model.layers.15")
STORE_64K = Artifact("cache-l15-64k", (*STORE_ARGS, "--tokens", "65536", "--shard-tokens", "16384"), "--store")
SAE_4608 = ("sae", "train", "--store", "bench/data/cache-l15-64k", "--site", "model.layers.15", "--k", "32")
MODADD = Artifact("modadd", ("train", "modadd"), "--modadd-run")  # the defaults: p=59, 3000 steps, as runs/demo
BENCHES = {
    b.name: b
    for b in (
        Bench("sites_overhead", what="Capture overhead vs a plain forward"),
        Bench("store_throughput", what="Activation store: caching tokens/s and read MB/s"),
        Bench(
            "sae_vs_saelens",
            peer="saelens",
            artifact=Artifact("cache-l15-512k", (*STORE_ARGS, "--tokens", "524288"), "--store"),
            quick_artifact=STORE_64K,
            what="TopK SAE training throughput and FVU vs SAELens",
        ),
        Bench(
            "features_browser",
            artifact=Artifact(
                "sae-l15-4608", (*SAE_4608, "--width", "4608", "--tokens", "1000000"), "--sae-run", (STORE_64K,)
            ),
            quick_artifact=Artifact(
                "sae-l15-4608-quick", (*SAE_4608, "--width", "4608", "--tokens", "131072"), "--sae-run", (STORE_64K,)
            ),
            what="Feature browser: build time and memory for 4,608 latents over 100k tokens, latent page open time",
        ),
        Bench(
            "llc_vs_devinterp",
            peer="devinterp",
            artifact=MODADD,
            quick_artifact=Artifact("modadd-quick", ("train", "modadd", "--steps", "600"), "--modadd-run"),
            what="LLC speed and agreement vs devinterp",
        ),
        Bench("llc_ground_truth", what="LLC estimates vs closed forms"),
        Bench("llc_localization", what="The DLN LLC estimate against the localisation gamma at the rule's rungs"),
        Bench("llc_equilibration", what="The DLN LLC estimate against SGLD run length at the rule's settings"),
        Bench("llc_metropolis", what="A large DLN's LLC by Euler SGLD against Metropolis-adjusted chains"),
        Bench("interchange_vs_pyvene", peer="pyvene", what="Interchange interventions per second vs pyvene"),
        Bench("anomaly", what="Mechanistic anomaly detection, every task"),
        Bench(
            "graph_modadd",
            artifact=MODADD,
            quick_artifact=Artifact("modadd-quick", ("train", "modadd", "--steps", "600"), "--modadd-run"),
            what="Graph, modules and circuit of the modular-addition model",
        ),
        Bench(
            "graph_smollm2",
            what="A SmolLM2 prompt graph over transcoders at 4 layers: time, memory, modules, ablation check",
        ),
        Bench("edges_vs_autocircuit", peer="autocircuit", what="Edge attribution patching vs auto-circuit"),
        Bench("fingerprint_modadd", what="Clock and pizza runs told apart on held-out moduli, against two baselines"),
        Bench("mdl_tms", what="The toy of superposition's known answer at sizes no test uses, N = 8M among them"),
        Bench(
            "mdl_smollm2",
            what="Bits per token of SmolLM2's layer-15 residual stream over a 524k-token store: neurons, PCA, 8 SAEs, "
            "two transcoders (without and with a skip), SAEBench's measure beside",
        ),
        Bench("mdl_dln_family", what="Weights' bits and the closed-form LLC across deep linear networks (Spearman)"),
        Bench("devices", what="The same unweave work on the CPU and on the GPU (when there is one), side by side"),
    )
}


@dataclass
class Outcome:
    bench: Bench
    command: str = ""
    seconds: float = 0.0
    rc: int = 0
    stdout: str = ""
    problem: str = ""  # why it failed: the last lines of its output, or what could not be built
    started: str = ""
    notes: list[str] = field(default_factory=list)


def project_python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def unweave_command() -> list[str]:
    script = Path(project_python()).parent / "unweave"
    return [str(script)] if script.exists() else [project_python(), "-m", "unweave.cli"]


def now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def tail(text: str, n: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


def build_artifact(art: Artifact) -> str | None:
    """Make the store or run folder unless it is finished; None, or why it could not be made."""
    if (art.dir / "record.json").exists():
        return None
    for need in art.needs:
        problem = build_artifact(need)
        if problem:
            return problem
    cmd = [*unweave_command(), *art.command, "--out", str(art.dir.relative_to(ROOT))]
    print(f"\n== building {art.dir.relative_to(ROOT)}\n+ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    rc, out, err = stream(cmd, cwd=ROOT)
    if rc or not (art.dir / "record.json").exists():
        return f"`{' '.join(cmd)}` failed (exit {rc}):\n{tail(out + err)}"
    print(f"built {art.dir.relative_to(ROOT)} in {time.perf_counter() - start:.0f} s", flush=True)
    return None


_help_cache: dict[str, str] = {}


def script_help(bench: Bench) -> str:
    if bench.name not in _help_cache:
        done = subprocess.run(
            [project_python(), f"{bench.name}.py", "--help"], cwd=HERE, capture_output=True, text=True
        )
        _help_cache[bench.name] = done.stdout if done.returncode == 0 else ""
    return _help_cache[bench.name]


def takes(bench: Bench, option: str) -> bool:
    return re.search(rf"(^|\s|\[){re.escape(option)}\b", script_help(bench)) is not None


def run_bench(bench: Bench, args) -> Outcome:
    outcome = Outcome(bench, started=now())
    print(f"\n{'=' * 20} {bench.name}: {bench.what}", flush=True)
    extra: list[str] = []
    if bench.peer:
        try:
            ensure(PEERS[bench.peer], args.python)
        except BuildError as err:
            outcome.rc, outcome.problem = -1, f"could not build its peer's virtualenv: {err}"
            return outcome
    art = bench.artifact
    if args.quick and bench.quick_artifact is not None and not (art.dir / "record.json").exists():
        art = bench.quick_artifact
    if art is not None:
        problem = build_artifact(art)
        if problem:
            outcome.rc, outcome.problem = -1, f"could not build what it reads: {problem}"
            return outcome
        extra += [art.option, os.path.relpath(art.dir, HERE)]
    if args.quick:
        if takes(bench, "--quick"):
            extra.append("--quick")
        else:
            outcome.notes.append("has no --quick: ran at full size")
    if args.device:
        if takes(bench, "--device"):
            extra += ["--device", args.device]
        else:
            outcome.notes.append(f"takes no --device: ran on its default, not {args.device}")
    cmd = [project_python(), f"{bench.name}.py", *extra]
    outcome.command = " ".join(["../.venv/bin/python" if c == project_python() else c for c in cmd])
    print(f"+ cd bench && {outcome.command}", flush=True)
    start = time.perf_counter()
    rc, out, err = stream(cmd, cwd=HERE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    outcome.seconds = time.perf_counter() - start
    outcome.rc, outcome.stdout = rc, out
    if rc:
        outcome.problem = tail(out + err)
    return outcome


# ---------------------------------------------------------------- RESULTS.md


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def commit() -> str:
    sha = git("rev-parse", "--short=10", "HEAD")
    if not sha:
        return "not a git checkout"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{sha}{' (with uncommitted changes)' if dirty else ''}"


def machine() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        ram = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = (
        ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        if torch.cuda.is_available()
        else "none"
    )
    return [
        f"- machine: {cpu}, {cores} cores usable ({os.cpu_count()} in all){ram}; GPU: {gpus}; "
        f"torch uses {torch.get_num_threads()} threads",
        f"- system: {platform.platform()}",
    ]


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def header(args) -> str:
    from peers import stamp

    peers = []
    for peer in PEERS.values():
        s = stamp(peer)
        got = s["installed"].get(peer.package, "?") if s else "not built"
        peers.append(
            f"{peer.package} {got} (bench/{peer.venv}, torch {s['installed'].get('torch', '?') if s else '-'})"
        )
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (bench/run_all.py). Each section below says when it ran; a run with",
        '`make bench BENCH_ARGS="--only NAME"` replaces only that section, and the environment below is',
        "the one of the latest run.",
        "",
        f"- latest run: {now()}, commit {commit()}"
        + (" — **--quick: small sizes, not the benchmark's numbers**" if args.quick else ""),
        *machine(),
        f"- Python {platform.python_version()}, torch {version('torch')}, transformers {version('transformers')}, "
        f"unweave {version('unweave')}",
        f"- peers: {'; '.join(peers)}",
    ]
    return "\n".join(lines) + "\n"


def escape_pipes(table: list[str]) -> list[str]:
    """A table from common.table with any | inside a cell (a header like max |a - b|)
    escaped for markdown: the column borders are where the dashes row has its |."""
    rule = next((row for row in table if set(row) <= set("|- ")), None)
    if rule is None:
        return table
    borders = {i for i, c in enumerate(rule) if c == "|"}
    if any(len(row) != len(rule) for row in table):
        return table
    return ["".join("\\|" if c == "|" and i not in borders else c for i, c in enumerate(row)) for row in table]


def render_output(stdout: str) -> str:
    """The script's output as markdown: its tables as they are (blank lines around them),
    every other line a paragraph of its own."""
    blocks: list[str] = []
    table: list[str] = []
    for line in [*stdout.rstrip().splitlines(), ""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            blocks.append("\n".join(escape_pipes(table)))
            table = []
        if line.strip():
            blocks.append(line.rstrip())
    return "\n\n".join(blocks)


def section(o: Outcome, args) -> str:
    b = o.bench
    status = "ok" if o.rc == 0 else ("**FAILED**" if o.rc > 0 else "**NOT RUN**")
    lines = [
        f"<!-- bench:{b.name} -->",
        f"## {b.name}",
        "",
        f"{b.what}.",
        "",
        f"- ran: {o.started}, commit {commit()}" + (" — **--quick** (small sizes)" if args.quick else ""),
    ]
    if o.command:
        lines.append(f"- command: `cd bench && {o.command}`")
        lines.append(f"- wall time: {o.seconds:.1f} s; status: {status}" + (f" (exit {o.rc})" if o.rc > 0 else ""))
    else:
        lines.append(f"- status: {status}")
    lines += [f"- note: {n}" for n in o.notes]
    lines.append("")
    if o.stdout.strip():
        lines += [render_output(o.stdout), ""]
    if o.problem:
        lines += ["What went wrong (last lines):", "", "```text", o.problem, "```", ""]
    return "\n".join(lines)


SECTION = re.compile(r"^<!-- bench:(\w+) -->$", re.M)


def write_results(outcomes: list[Outcome], args) -> None:
    sections: dict[str, str] = {}
    if RESULTS.exists():
        text = RESULTS.read_text()
        marks = list(SECTION.finditer(text))
        for m, nxt in zip(marks, [*marks[1:], None]):
            sections[m.group(1)] = text[m.start() : nxt.start() if nxt else len(text)].rstrip() + "\n"
    for o in outcomes:
        sections[o.bench.name] = section(o, args)
    order = [n for n in BENCHES if n in sections] + [n for n in sections if n not in BENCHES]
    RESULTS.write_text(header(args) + "\n" + "\n".join(sections[n] for n in order))
    print(f"\nwrote {os.path.relpath(RESULTS)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=list(BENCHES), metavar="NAME", help=", ".join(BENCHES))
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the pipeline in minutes")
    parser.add_argument("--device", help="passed to the scripts whose options take --device")
    parser.add_argument("--python", help="interpreter the peers' virtualenvs are made from (default: the project's)")
    args = parser.parse_args()
    names = args.only or list(BENCHES)
    outcomes = []
    start = time.perf_counter()
    for name in names:
        outcomes.append(run_bench(BENCHES[name], args))
        write_results(outcomes, args)  # after each, so an interrupted run keeps what it finished
    failed = [o for o in outcomes if o.rc]
    print(f"\n{len(outcomes) - len(failed)}/{len(outcomes)} benches ran in {time.perf_counter() - start:.0f} s")
    for o in failed:
        print(f"FAILED {o.bench.name}:\n{o.problem}", file=sys.stderr)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
