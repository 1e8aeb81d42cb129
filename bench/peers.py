"""The peers' virtualenvs: each library the benchmarks compare against lives in its own
virtualenv under bench/, with the same torch build as the project's virtualenv, so that
both sides of a comparison run the same kernels.

A virtualenv is built (python -m venv, then torch, then the peer with a constraints file
pinning torch so pip never replaces it) when it is missing or what it holds differs from
the pins below; a stamp file inside it records what was installed, so a rerun skips the
build. `make bench` calls `ensure` for the peers of the benches it runs; by hand:

    .venv/bin/python bench/peers.py [saelens devinterp pyvene]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAMP = "unweave-bench.json"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class Peer:
    name: str
    venv: str  # folder under bench/
    package: str
    version: str
    extras: tuple[str, ...] = ()  # unpinned packages the peer's side script imports besides the peer

    @property
    def dir(self) -> Path:
        return HERE / self.venv

    @property
    def python(self) -> Path:
        return self.dir / "bin" / "python"

    @property
    def requirements(self) -> list[str]:
        return [f"{self.package}=={self.version}", *self.extras]


PEERS = {
    p.name: p
    for p in (
        Peer("saelens", "venv-saelens", "sae-lens", "6.54.12"),
        # its side imports unweave's model classes from src/, which show progress with rich
        Peer("devinterp", "venv-devinterp", "devinterp", "1.3.2", ("safetensors", "rich")),
        Peer("pyvene", "venv-pyvene", "pyvene", "0.1.8", ("safetensors",)),
        # edge attribution patching on TransformerLens models; auto-circuit 1.0.1 imports attrs without
        # declaring it and needs TransformerLens 2.x (whose numpy < 2 needs an older pyarrow)
        Peer(
            "autocircuit",
            "venv-autocircuit",
            "auto-circuit",
            "1.0.1",
            ("safetensors", "rich", "attrs", "transformer-lens==2.18.0", "pyarrow<18"),
        ),
    )
}


class BuildError(RuntimeError):
    pass


def torch_version() -> str:
    """The torch of the project's virtualenv (the one running this), local tag included (2.13.0+cpu)."""
    return metadata.version("torch")


def base_python() -> str:
    """The interpreter the project's virtualenv was made from, so the peers get the same Python."""
    base = getattr(sys, "_base_executable", None)
    return base if base and Path(base).exists() else "python3"


def stream(cmd: list, cwd: Path | None = None, env: dict | None = None) -> tuple[int, str, str]:
    """Run cmd, passing its stdout and stderr on to ours as they come (progress bars
    included); (exit code, stdout, stderr)."""
    proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out: list[bytes] = []
    err: list[bytes] = []

    def pump(src, sink, dest):
        while chunk := os.read(src.fileno(), 65536):
            sink.append(chunk)
            dest.buffer.write(chunk)
            dest.flush()

    threads = [
        threading.Thread(target=pump, args=(proc.stdout, out, sys.stdout), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, err, sys.stderr), daemon=True),
    ]
    for t in threads:
        t.start()
    rc = proc.wait()
    for t in threads:
        t.join()
    return rc, b"".join(out).decode(errors="replace"), b"".join(err).decode(errors="replace")


def _check(cmd: list[str], what: str) -> str:
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    rc, out, err = stream(cmd)
    if rc:
        tail = "\n".join((out + err).strip().splitlines()[-20:])
        raise BuildError(f"{what} failed (exit {rc}):\n{tail}")
    return out


def _name(requirement: str) -> str:
    """The package a requirement names: "pyarrow<18" -> "pyarrow"."""
    return re.split(r"[<>=!~ ]", requirement)[0].lower()


def installed(peer: Peer) -> dict[str, str]:
    """Versions in the peer's virtualenv of torch, the peer and its extras (absent ones left out)."""
    names = ["torch", peer.package, *(_name(e) for e in peer.extras)]
    done = subprocess.run(
        [str(peer.python), "-m", "pip", "show", *names], capture_output=True, text=True, env=_pip_env()
    )
    versions, name = {}, None
    for line in done.stdout.splitlines():
        if line.startswith("Name: "):
            name = line[6:].strip().lower().replace("_", "-")
        elif line.startswith("Version: ") and name:
            versions[name] = line[9:].strip()
    return versions


def _pip_env() -> dict:
    return {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _wanted(peer: Peer, torch: str) -> dict:
    return {"torch": torch, "requirements": peer.requirements}


def _matches(peer: Peer, torch: str) -> bool:
    """What `pip show` finds in the virtualenv is what the pins ask for."""
    if not peer.python.exists():
        return False
    have = installed(peer)
    return (
        have.get("torch") == torch
        and have.get(peer.package) == peer.version
        and all(_name(e) in have for e in peer.extras)
    )


def stamp(peer: Peer) -> dict | None:
    try:
        return json.loads((peer.dir / STAMP).read_text())
    except (OSError, ValueError):
        return None


def _write_stamp(peer: Peer, torch: str, how: str) -> dict:
    freeze = subprocess.run(
        [str(peer.python), "-m", "pip", "freeze"], capture_output=True, text=True, env=_pip_env()
    ).stdout.split()
    record = {
        **_wanted(peer, torch),
        "installed": installed(peer),
        "how": how,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "freeze": freeze,
    }
    (peer.dir / STAMP).write_text(json.dumps(record, indent=1) + "\n")
    return record


def _torch_args(peer: Peer, torch: str) -> list[str]:
    """pip arguments installing exactly the project's torch: plain `torch==X` as the Makefile
    does when pip resolves that to the same build (here: the local CPU wheel), else from the
    PyTorch CPU index when the project's torch is a CPU build (plain PyPI would bring CUDA)."""
    public, _, local = torch.partition("+")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [str(peer.python), "-m", "pip", "install", "-q", "--dry-run", "--report", str(report), f"torch=={public}"],
            capture_output=True,
            env=_pip_env(),
        )
        try:
            found = {
                item["metadata"]["name"].lower(): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]
            }.get("torch")
        except (OSError, ValueError, KeyError):
            found = None
    if found == torch or not local:
        return [f"torch=={public}"]
    print(f"plain pip would install torch {found}, not {torch}: using {CPU_INDEX}", flush=True)
    return ["--index-url", CPU_INDEX, f"torch=={torch}"]


def ensure(peer: Peer, python: str | None = None, force: bool = False) -> dict:
    """The peer's virtualenv, built if missing or not what the pins ask for; returns its stamp."""
    torch = torch_version()
    old = stamp(peer)
    if not force and old is not None and {k: old.get(k) for k in ("torch", "requirements")} == _wanted(peer, torch):
        if peer.python.exists():
            print(f"{peer.venv}: {', '.join(peer.requirements)} with torch {torch}, as its stamp says", flush=True)
            return old
    if not force and _matches(peer, torch):  # made by hand, or its stamp is stale
        print(f"{peer.venv}: already holds {', '.join(peer.requirements)} with torch {torch}", flush=True)
        return _write_stamp(peer, torch, "found in place")
    start = time.perf_counter()
    print(f"building {peer.venv}: torch {torch}, {', '.join(peer.requirements)}", flush=True)
    works = peer.python.exists() and subprocess.run([str(peer.python), "-c", "pass"]).returncode == 0
    if not works:
        _check([python or base_python(), "-m", "venv", "--clear", peer.dir], f"python -m venv {peer.dir}")
    pip = [peer.python, "-m", "pip", "install", "--disable-pip-version-check"]
    _check([*pip, *_torch_args(peer, torch)], f"installing torch {torch} in {peer.venv}")
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(f"torch=={torch}\n")
        _check([*pip, "-c", constraints, *peer.requirements], f"installing {peer.package} in {peer.venv}")
    if not _matches(peer, torch):
        raise BuildError(f"{peer.venv} does not hold what was asked after the build: {installed(peer)}")
    record = _write_stamp(peer, torch, f"built in {time.perf_counter() - start:.0f} s")
    print(f"{peer.venv}: built in {time.perf_counter() - start:.0f} s", flush=True)
    return record


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Build the peers' virtualenvs (bench/venv-*).")
    parser.add_argument("peers", nargs="*", metavar="PEER", help=f"some of {', '.join(PEERS)} (default: all)")
    parser.add_argument("--python", help="interpreter to make them from (default: the project virtualenv's base)")
    parser.add_argument("--force", action="store_true", help="reinstall even when the stamp matches")
    args = parser.parse_args()
    failed = []
    unknown = set(args.peers) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; known: {', '.join(PEERS)}")
    for name in args.peers or PEERS:
        try:
            ensure(PEERS[name], args.python, args.force)
        except BuildError as err:
            print(err, file=sys.stderr)
            failed.append(name)
    if failed:
        raise SystemExit(f"could not build: {', '.join(failed)}")


if __name__ == "__main__":
    main()
