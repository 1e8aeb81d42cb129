"""Activations on disk: sharded safetensors files and a JSON manifest with checksums.

Shard i holds the activations of rows [i*R, (i+1)*R) of the token matrix (R rows per
shard), one tensor per site, flattened to (tokens, width), plus the tokens themselves.
The manifest is rewritten after each shard, so an interrupted write resumes at the first
shard it does not list and loses nothing. Reading verifies each shard's SHA-256 once and
serves random-order batches while holding only a few shards in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from unweave import distributed, progress
from unweave.artifacts import read_json, sha256, write_json, write_tensors
from unweave.devices import model_device
from unweave.sites import capture

FORMAT = "unweave.store/1"
MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class StoreError(ValueError):
    """A store that cannot be read: missing, empty, corrupt, or written with other inputs."""


def _tokens_digest(tokens: torch.Tensor) -> str:
    return hashlib.sha256(tokens.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def _flatten(site: str, act: torch.Tensor, rows: int, ctx_len: int) -> torch.Tensor:
    if tuple(act.shape[:2]) != (rows, ctx_len):
        raise StoreError(
            f"site {site!r} gives activations of shape {tuple(act.shape)}; a store needs "
            f"(batch, pos, ...) = ({rows}, {ctx_len}, ...), one vector per token"
        )
    return act.reshape(rows * ctx_len, -1)


def write_store(
    model: torch.nn.Module,
    sites: Sequence[str],
    tokens: torch.Tensor,
    out_dir: Path,
    model_name: str,
    shard_tokens: int = 65_536,
    batch_size: int = 8,
    dtype: str = "float32",
) -> ActivationStore:
    """Run `model` over `tokens` (rows, ctx_len) on the model's device and store the
    activations at `sites`.

    Resumes an interrupted write into `out_dir` if it was started with the same model
    name, sites, tokens and layout; anything else already there is an error. Under torchrun
    rank r writes shards r, r + N, r + 2N, ... and rank 0 writes the one manifest at the end;
    a rerun with any number of processes resumes from the shards already written.
    """
    if dtype not in DTYPES:
        raise StoreError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if tokens.dim() != 2 or tokens.shape[0] == 0:
        raise StoreError(f"tokens must have shape (rows, ctx_len) with at least one row, got {tuple(tokens.shape)}")
    sites = list(dict.fromkeys(sites))
    if not sites:
        raise StoreError("no sites given: name at least one site to store")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_rows, ctx_len = tokens.shape
    rows_per_shard = max(1, shard_tokens // ctx_len)
    layout = {
        "format": FORMAT,
        "model": model_name,
        "sites": sites,
        "ctx_len": ctx_len,
        "rows": n_rows,
        "rows_per_shard": rows_per_shard,
        "dtype": dtype,
        "tokens_sha256": _tokens_digest(tokens),
    }
    me = distributed.world()
    manifest = _resume_manifest(out, layout)
    n_shards = -(-n_rows // rows_per_shard)
    done = _written_shards(out, manifest)
    mine = [i for i in range(n_shards) if i % me.size == me.rank and i not in done]
    task = progress.Task(f"caching {', '.join(sites)}", total=len(mine) * rows_per_shard * ctx_len, unit="tokens")
    device = model_device(model)
    model_was_training = model.training
    model.eval()
    try:
        for shard in mine:
            rows = tokens[shard * rows_per_shard : (shard + 1) * rows_per_shard]
            parts: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                acts = capture(model, sites, batch.to(device), stop_early=True)
                for s in sites:
                    parts[s].append(_flatten(s, acts[s], len(batch), ctx_len).to("cpu", DTYPES[dtype]))
                task.advance(len(batch) * ctx_len)
            tensors = {s: torch.cat(parts[s]) for s in sites}
            tensors["tokens"] = rows.reshape(-1).to(torch.int64)
            name = _shard_file(shard, "safetensors")
            write_tensors(out / name, tensors)
            done[shard] = {"file": name, "tokens": len(rows) * ctx_len, "sha256": sha256(out / name)}
            widths = {s: tensors[s].shape[1] for s in sites}
            write_json(out / _shard_file(shard, "json"), {**done[shard], "widths": widths})
            if me.size == 1:  # one process: the manifest follows every shard
                _write_manifest(out, manifest, done, n_shards)
    finally:
        task.close()
        model.train(model_was_training)
    distributed.barrier()
    if me.main:  # with one process `done` is already all of them; with several, read every rank's sidecars
        _write_manifest(out, manifest, done if me.size == 1 else _written_shards(out, manifest), n_shards)
    distributed.barrier()
    return ActivationStore(out)


def _shard_file(shard: int, suffix: str) -> str:
    """A shard's tensors (.safetensors) or its own record (.json, written after it: what a rank
    resumes from before there is a manifest)."""
    return f"shard_{shard:05d}.{suffix}"


def _shard_index(name: str) -> int:
    return int(Path(name).stem.removeprefix("shard_"))


def _written_shards(out: Path, manifest: dict) -> dict[int, dict]:
    """Intact shards (file present, checksum as recorded), from the manifest and the sidecars."""
    found = {_shard_index(s["file"]): s for s in manifest["shards"]}
    for path in out.glob("shard_*.json"):
        found.setdefault(_shard_index(path.name), read_json(path))
    return {
        i: {k: e[k] for k in ("file", "tokens", "sha256")}
        for i, e in found.items()
        if (out / e["file"]).exists() and (e.get("widths") is None or sha256(out / e["file"]) == e["sha256"])
    }


def _write_manifest(out: Path, manifest: dict, done: dict[int, dict], n_shards: int) -> None:
    """The manifest lists the longest run of written shards from shard 0 (a store is read in order)."""
    shards = []
    while len(shards) in done:
        shards.append(done[len(shards)])
    if shards and not manifest["widths"]:  # the same for every shard: read once, from shard 0
        with safe_open(str(out / shards[0]["file"]), framework="pt") as f:
            manifest["widths"] = {s: f.get_slice(s).get_shape()[1] for s in manifest["sites"]}
    manifest["shards"] = shards
    manifest["complete"] = len(shards) == n_shards
    write_json(out / MANIFEST, manifest)


def _resume_manifest(out: Path, layout: dict) -> dict:
    """The manifest to continue from: the existing one, minus any damaged trailing shards."""
    path = out / MANIFEST
    if not path.exists():
        return {**layout, "shards": [], "widths": {}, "complete": False}
    manifest = read_json(path)
    differs = [k for k in layout if manifest.get(k) != layout[k]]
    if differs:
        raise StoreError(
            f"{out} already holds a store written with different {', '.join(differs)}; "
            "choose another directory or delete this one"
        )
    for i, shard in enumerate(manifest["shards"]):  # keep the intact prefix, rewrite the rest
        file = out / shard["file"]
        if not file.exists() or sha256(file) != shard["sha256"]:
            manifest["shards"] = manifest["shards"][:i]
            manifest["complete"] = False
            break
    return manifest


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    tokens: int
    sha256: str


class ActivationStore:
    """Read side of a store written by `write_store`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            raise StoreError(
                f"{self.path} is not an activation store (no {MANIFEST}); "
                "write one with `unweave cache` or unweave.store.write_store"
            )
        self.manifest = read_json(manifest_path)
        if self.manifest.get("format") != FORMAT:
            raise StoreError(f"{manifest_path}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        self.shards = [ShardInfo(self.path / s["file"], s["tokens"], s["sha256"]) for s in self.manifest["shards"]]
        if not self.shards:
            raise StoreError(
                f"{self.path} holds no shards yet (an interrupted write?): run the same "
                "cache command again to resume it"
            )
        self._verified: set[Path] = set()

    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def n_tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def width(self, site: str) -> int:
        return self.manifest["widths"][self._check_site(site)]

    def _check_site(self, site: str) -> str:
        if site not in self.manifest["sites"]:
            raise StoreError(f"site {site!r} is not in this store; it holds {', '.join(self.sites)}")
        return site

    def verify(self, shard: ShardInfo) -> None:
        """Raise StoreError naming the file if the shard is missing, truncated or altered."""
        if shard.path in self._verified:
            return
        if not shard.path.exists():
            raise StoreError(
                f"shard {shard.path} is listed in the manifest but missing; run the same "
                "cache command again to rewrite it"
            )
        actual = sha256(shard.path)
        if actual != shard.sha256:
            raise StoreError(
                f"shard {shard.path} is corrupt or truncated: SHA-256 {actual[:12]}..., "
                f"manifest says {shard.sha256[:12]}...; run the same cache command again "
                "to rewrite it"
            )
        self._verified.add(shard.path)

    def load_shard(self, index: int, key: str, check_finite: bool = False) -> torch.Tensor:
        """One tensor (a site's activations, or 'tokens') of one shard, checksum verified.

        With `check_finite`, NaN or inf is an error naming the shard file and the first bad row."""
        shard = self.shards[index]
        self.verify(shard)
        with safe_open(str(shard.path), framework="pt") as f:
            tensor = f.get_tensor(key if key == "tokens" else self._check_site(key))
        if check_finite and not torch.isfinite(tensor).all():
            row = int((~torch.isfinite(tensor)).reshape(len(tensor), -1).any(1).nonzero()[0])
            raise StoreError(
                f"shard {shard.path} holds NaN or inf at site {key!r}, row {row} (token {row} of "
                "the shard): the model produced non-finite activations; check its dtype and inputs"
            )
        return tensor

    def batches(
        self,
        site: str | Sequence[str],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        shards_in_memory: int = 2,
        drop_last: bool = False,
        check_finite: bool = False,
        shards: Sequence[int] | None = None,
    ) -> Iterator:
        """(batch_size, width) batches over one pass of the store; for a list of sites, tuples
        of such batches whose rows are the same tokens (e.g. an MLP's input and output).

        With `shuffle`, shards are visited in random order and rows are shuffled within
        groups of `shards_in_memory` shards; at most that many shards (plus one partial
        batch) are held in memory at once. `shards` limits the pass to those shard indices
        (a rank's share under torchrun).
        """
        sites = [site] if isinstance(site, str) else list(site)
        for s in sites:
            self._check_site(s)
        if batch_size < 1 or shards_in_memory < 1:
            raise ValueError("batch_size and shards_in_memory must be at least 1")
        gen = torch.Generator().manual_seed(seed)
        chosen = list(range(len(self.shards))) if shards is None else list(shards)
        order = [chosen[i] for i in torch.randperm(len(chosen), generator=gen)] if shuffle else chosen
        carry = None
        for g in range(0, len(order), shards_in_memory):
            group = [[self.load_shard(i, s, check_finite) for i in order[g : g + shards_in_memory]] for s in sites]
            rows = [torch.cat(([carry[j]] if carry is not None else []) + group[j]) for j in range(len(sites))]
            if shuffle:
                perm = torch.randperm(len(rows[0]), generator=gen)
                rows = [r[perm] for r in rows]
            n_full = len(rows[0]) // batch_size * batch_size
            for start in range(0, n_full, batch_size):
                batch = [r[start : start + batch_size] for r in rows]
                yield batch[0] if isinstance(site, str) else tuple(batch)
            carry = [r[n_full:] for r in rows] if n_full < len(rows[0]) else None
        if carry is not None and not drop_last:
            yield carry[0] if isinstance(site, str) else tuple(carry)
