"""TopK SAE training throughput and quality: unweave vs SAELens 6.54.12, same activations.

SAELens lives in its own virtualenv (bench/venv-saelens: the project's torch, then sae-lens
6.54.12 with torch pinned). `make bench` builds it and the store when missing, runs this
and writes bench/RESULTS.md:

    make bench BENCH_ARGS="--only sae_vs_saelens"

By hand: `.venv/bin/python bench/peers.py saelens`, the store with
`.venv/bin/unweave cache --model smollm2-135m --site model.layers.15 --tokens 524288 --out bench/data/cache-l15-512k`,
then from bench/:  ../.venv/bin/python sae_vs_saelens.py --store data/cache-l15-512k
(--quick: 32768 training tokens and warm-up 10, from any store with a shard to spare beyond those;
make bench's --quick caches 65536 tokens in 4 shards for it when the full store is not there.)

Both sides train TopK (k=32, width 8 x 576) on the same stored SmolLM2 layer-15 residual
activations, the same batches in the same order, with Adam at the same learning rate,
warm-up and final linear decay, input normalisation to mean norm sqrt(d) estimated on the
first batch, and AuxK; then FVU is measured on the same held-out activations (a shard not
trained on). Massive-activation tokens (norm > 10x the median, ~1%) are removed from both
sides' data, as `unweave sae train` leaves them out by default. SAELens runs twice: dense
decoding (its default) and its sparse-activation
option. Training time only: data sit in memory on both sides.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from common import quick_option, table
from safetensors.torch import load_file, save_file

from unweave.dictionaries import SAE, SAEConfig, TrainConfig, train_many
from unweave.dictionaries.metrics import fvu
from unweave.dictionaries.sae import norm_limit, ordinary_rows
from unweave.store import ActivationStore

HERE = Path(__file__).resolve().parent
PEER = HERE / "venv-saelens" / "bin" / "python"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", type=Path, default=HERE / "data" / "cache-l15-512k")
    parser.add_argument("--site", default="model.layers.15")
    parser.add_argument("--tokens", type=int, default=262_144)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100, help="learning-rate warm-up steps, both sides")
    quick_option(parser, tokens=32_768, warmup=10)
    args = parser.parse_args()
    if not PEER.exists():
        raise SystemExit(f"{PEER} is missing; build it with `make bench` or bench/peers.py saelens")
    store = ActivationStore(args.store)
    train_parts, got, i = [], 0, 0
    while got < args.tokens:
        train_parts.append(store.load_shard(i, args.site, check_finite=True))
        got += len(train_parts[-1])
        i += 1
    if i >= len(store.shards):
        raise SystemExit("the store is too small to hold out its last shard; cache more tokens")
    train = torch.cat(train_parts)
    held_out = store.load_shard(len(store.shards) - 1, args.site, check_finite=True)[:16_384]
    # the same data for both: without the ~1% massive-activation tokens (norm > 10x median)
    limit = norm_limit(train, 10)
    train = train[ordinary_rows(train, limit)][: args.tokens]
    held_out = held_out[ordinary_rows(held_out, limit)].contiguous()
    train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))].contiguous()
    d, width, bs = train.shape[1], 8 * train.shape[1], args.batch_size
    steps = len(train) // bs
    cfg = TrainConfig(steps=steps, lr=args.lr, warmup=args.warmup, decay_frac=0.2)
    threads = torch.get_num_threads()

    sae = SAE(SAEConfig(d_in=d, n_latents=width, k=args.k), seed=0)
    start = time.perf_counter()
    train_many([sae], (train[j * bs : (j + 1) * bs] for j in range(steps)), cfg)
    ours_s = time.perf_counter() - start
    with torch.no_grad():
        recon, z = sae(held_out)
    rows = [
        {
            "library": "unweave",
            "tokens/s": steps * bs / ours_s,
            "seconds": ours_s,
            "held-out FVU": fvu(held_out, recon),
            "dead": float(((z != 0).sum(0) == 0).float().mean()),
        }
    ]
    del recon, z

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_file({"train": train, "held_out": held_out.contiguous()}, str(tmp / "data.safetensors"))
        for sparse in (False, True):
            job = {
                "data": str(tmp / "data.safetensors"),
                "width": width,
                "k": args.k,
                "lr": args.lr,
                "warmup": args.warmup,
                "decay_frac": 0.2,
                "batch_size": bs,
                "threads": threads,
                "sparse": sparse,
                "out": str(tmp / "recon.safetensors"),
            }
            (tmp / "job.json").write_text(json.dumps(job))
            done = subprocess.run(
                [str(PEER), str(HERE / "_saelens_side.py"), str(tmp / "job.json")], capture_output=True, text=True
            )
            name = f"SAELens ({'sparse' if sparse else 'dense'} decode)"
            if done.returncode:  # its sparse option fails on CPU here (aten::view on SparseCPU, torch 2.13)
                reason = [ln for ln in done.stderr.splitlines() if "Error" in ln][-1:] or ["unknown"]
                print(f"{name} failed: {reason[0][:200]}")
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            peer_recon = load_file(str(tmp / "recon.safetensors"))["recon"]
            rows.append(
                {
                    "library": name,
                    "tokens/s": result["steps"] * bs / result["seconds"],
                    "seconds": result["seconds"],
                    "held-out FVU": fvu(held_out, peer_recon),
                    "dead": float("nan"),
                }
            )
    for r in rows[1:]:
        r["unweave speed-up"] = rows[0]["tokens/s"] / r["tokens/s"]
    rows[0]["unweave speed-up"] = 1.0
    print(
        f"TopK k={args.k}, {d} -> {width}, batch {bs}, {steps} steps ({steps * bs} tokens), lr {args.lr}, "
        f"{threads} threads; FVU on {len(held_out)} held-out tokens"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
