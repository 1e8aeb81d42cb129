"""More than one process (2 CPU processes, gloo): dictionaries trained with DDP equal one process
fed the same global batches; the CLI under torchrun caches, trains and samples LLC chains
with the results of a single process, and a killed multi-process cache resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from unweave.dictionaries import SAE, SAEConfig, TrainConfig, train_many
from unweave.store import ActivationStore

D, WIDTH, LOCAL, STEPS = 16, 64, 32, 30


def _batches(rank: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(LOCAL, D, generator=gen) * 3 + 1 for _ in range(STEPS)]


def _dictionaries() -> list[SAE]:
    return [SAE(SAEConfig(d_in=D, n_latents=WIDTH, architecture="topk", k=k), seed=0) for k in (4, 8)]


class _Crash(Exception):
    pass


def _crash_at(step: int):
    def on_step(s: int) -> None:
        if s == step:
            raise _Crash

    return on_step


def _ddp_worker(rank: int, port: int, out: str, checkpoint: str | None = None, crash: int | None = None) -> None:
    """Train the dictionaries on this rank's batches; with `crash`, every rank stops at that
    step (a killed job) and nothing is saved but the checkpoint in `checkpoint`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    cfg = TrainConfig(STEPS, lr=3e-3, warmup=5, max_norm_ratio=None, checkpoint_every=10)
    try:
        saes = _dictionaries()
        folder = Path(checkpoint) if checkpoint else None
        try:
            train_many(saes, iter(_batches(rank)), cfg, checkpoint_dir=folder, on_step=crash and _crash_at(crash))
        except _Crash:
            os._exit(0)
        if rank == 0:
            torch.save([s.state_dict() for s in saes], out)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # leave without running interpreter teardown: gloo's threads have aborted it now and then
    # ("terminate called without an active exception", SIGABRT) after the work was done and saved
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_process() -> list[SAE]:
    single = _dictionaries()
    global_batches = [torch.cat(pair) for pair in zip(_batches(0), _batches(1))]
    train_many(single, iter(global_batches), TrainConfig(STEPS, lr=3e-3, warmup=5, max_norm_ratio=None))
    return single


def test_ddp_training_equals_one_process_on_the_global_batches(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    for state, sae in zip(ddp, _one_process()):
        for name, value in sae.state_dict().items():
            torch.testing.assert_close(state[name], value, rtol=1e-4, atol=1e-5, msg=name)
        # and training moved the weights: the match is not two untouched initialisations
        assert not torch.allclose(state["W_enc"], SAE(sae.cfg, seed=0).W_enc)


def test_ddp_training_killed_mid_run_resumes_to_the_same_weights(tmp_path):
    """Both ranks stop at step 25 (checkpoint at 20, written by rank 0); two new processes
    resume from it and end where one uninterrupted process does."""
    out, folder = tmp_path / "ddp.pt", tmp_path / "checkpoint"
    mp.spawn(_ddp_worker, args=(_free_port(), str(out), str(folder), 25), nprocs=2, join=True)
    assert json.loads((folder / "checkpoint.json").read_text())["step"] == 20 and not out.exists()
    mp.spawn(_ddp_worker, args=(_free_port(), str(out), str(folder)), nprocs=2, join=True)
    assert not folder.exists()  # removed once the run finished
    for state, sae in zip(torch.load(out, weights_only=True), _one_process()):
        for name, value in sae.state_dict().items():
            torch.testing.assert_close(state[name], value, rtol=1e-4, atol=1e-5, msg=name)


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "unweave"]
    result = subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def unweave(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "unweave", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _cache_args(model: Path, out: Path) -> list[str]:
    return [
        "cache",
        "--model",
        str(model),
        "--site",
        "model.layers.0",
        "--out",
        str(out),
        "--tokens",
        "2048",
        "--ctx-len",
        "32",
        "--shard-tokens",
        "256",
        "--device",
        "cpu",
    ]


@pytest.mark.slow
def test_torchrun_cache_matches_one_process_and_resumes_after_a_rank_dies(tiny_llama_dir, tmp_path):
    unweave(*_cache_args(tiny_llama_dir, tmp_path / "one"), cwd=tmp_path)
    torchrun(*_cache_args(tiny_llama_dir, tmp_path / "two"), cwd=tmp_path)
    one = json.loads((tmp_path / "one" / "manifest.json").read_text())
    two = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert two["complete"] and len(two["shards"]) == 8
    assert [s["sha256"] for s in two["shards"]] == [s["sha256"] for s in one["shards"]]  # bit for bit
    assert json.loads((tmp_path / "two" / "record.json").read_text())["world_size"] == 2

    # rank 1 died after its first shard, before the manifest: shards 3, 5 and 7 and the manifest are gone
    for shard in (3, 5, 7):
        (tmp_path / "two" / f"shard_{shard:05d}.safetensors").unlink()
        (tmp_path / "two" / f"shard_{shard:05d}.json").unlink()
    (tmp_path / "two" / "manifest.json").unlink()
    torchrun(*_cache_args(tiny_llama_dir, tmp_path / "two"), cwd=tmp_path)
    again = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert again["complete"] and [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in one["shards"]]


@pytest.mark.slow
def test_torchrun_sae_train_splits_the_store_and_matches_one_process_quality(tiny_llama_dir, tmp_path):
    unweave(*_cache_args(tiny_llama_dir, tmp_path / "store"), cwd=tmp_path)
    args = ["sae", "train", "--store", str(tmp_path / "store"), "--site", "model.layers.0", "--k", "4"]
    args += ["--width", "64", "--batch-size", "64", "--tokens", "8192", "--device", "cpu"]
    unweave(*args, "--out", str(tmp_path / "one"), cwd=tmp_path)
    torchrun(*args, "--out", str(tmp_path / "two"), cwd=tmp_path)
    one = json.loads((tmp_path / "one" / "sae_train.json").read_text())["rows"][0]
    two = json.loads((tmp_path / "two" / "sae_train.json").read_text())["rows"][0]
    assert one["steps"] == two["steps"] == 8192 // 64
    # other batches (each rank shuffles its own shards), same global batch: the same quality
    store = ActivationStore(tmp_path / "store")
    x = torch.cat([store.load_shard(i, "model.layers.0") for i in range(len(store.shards))])
    from unweave.dictionaries import io
    from unweave.dictionaries.metrics import fvu

    fvus = [fvu(x, io.load(tmp_path / run / "topk-k4-w64")(x)[0]) for run in ("one", "two")]
    assert fvus[0] < 0.5 and abs(fvus[0] - fvus[1]) < 0.1 * fvus[0], fvus

    # a world size that does not divide the store's 8 shards is a one-line error
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3", "-m", "unweave"]
    bad = subprocess.run(
        [*cmd, *args, "--batch-size", "63", "--out", str(tmp_path / "three")], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "processes cannot share evenly" in bad.stdout + bad.stderr


def test_torchrun_llc_chains_equal_one_process(tmp_path):
    # fixed settings: what is checked is that chains split over processes are the chains of one
    # process (the settings rule's own runs are the same chains, many more of them)
    args = ["llc", "rrr:4,3,4:1", "--settings", "fixed", "--epsilon", "3e-5", "--nbeta", "1000"]
    args += ["--chains", "4", "--draws", "40", "--burn-in", "10", "--no-hessian", "--device", "cpu"]
    unweave(*args, "--out", str(tmp_path / "one"), cwd=tmp_path)
    torchrun(*args, "--out", str(tmp_path / "two"), cwd=tmp_path)
    one = json.loads((tmp_path / "one" / "llc.json").read_text())["llc"][-1]
    two = json.loads((tmp_path / "two" / "llc.json").read_text())["llc"][-1]
    torch.testing.assert_close(
        torch.tensor(two["llc_per_chain"]), torch.tensor(one["llc_per_chain"]), rtol=1e-4, atol=0
    )


def test_torchrun_llc_killed_mid_run_resumes_from_the_runs_it_finished(tmp_path):
    args = ["llc", "rrr:3,2,3:1", "--first-steps", "200", "--max-steps", "800", "--pilot-steps", "100"]
    args += ["--chains", "4", "--no-hessian", "--device", "cpu", "--out", str(tmp_path / "two")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "unweave"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen([*cmd, *args], cwd=tmp_path, env=env, start_new_session=True)
    third = tmp_path / "two" / "estimates" / "rule" / "00002.safetensors"
    deadline = time.time() + 300
    while not third.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)  # every rank, mid-run
    job.wait()
    assert third.exists() and not (tmp_path / "two" / "llc.json").exists()
    torchrun(*args, cwd=tmp_path)
    unweave(*args[:-1], str(tmp_path / "one"), cwd=tmp_path)
    two = json.loads((tmp_path / "two" / "llc.json").read_text())
    one = json.loads((tmp_path / "one" / "llc.json").read_text())
    assert two["replayed_runs"] >= 3
    assert [r["steps"] for r in two["auto"]["rungs"]] == [r["steps"] for r in one["auto"]["rungs"]]
    torch.testing.assert_close(
        torch.tensor(two["llc"][-1]["llc_per_chain"]), torch.tensor(one["llc"][-1]["llc_per_chain"]), rtol=1e-3, atol=0
    )
