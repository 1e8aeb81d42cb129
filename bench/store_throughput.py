"""Activation store throughput on SmolLM2-135M + Shakespeare.

Write: tokens/s of caching the residual stream after a middle layer (model.layers.15 of
30) with the forward stopped early, beside a plain full forward over the same tokens.
Read: MB/s of shuffled batches, first pass (SHA-256 of every shard checked) and later passes.

    .venv/bin/python bench/store_throughput.py [--tokens 16384] [--ctx 256] [--shard-tokens 4096] [--quick]

or with the others, writing bench/RESULTS.md:  make bench BENCH_ARGS="--only store_throughput"
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import quick_option, table

from unweave.hf import load_model
from unweave.store import ActivationStore, write_store
from unweave.text import TextConfig, token_rows

SITE = "model.layers.15"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16_384)
    parser.add_argument("--ctx", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--read-batch", type=int, default=4096)
    parser.add_argument("--shard-tokens", type=int, default=4096)
    quick_option(parser, tokens=4096, read_batch=1024, shard_tokens=1024)
    args = parser.parse_args()
    model, tok = load_model("smollm2-135m")
    rows = token_rows(TextConfig(), tok, args.ctx, max_tokens=args.tokens)
    n_tok = rows.numel()
    out = Path(tempfile.mkdtemp(prefix="unweave-store-bench-"))
    try:
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(rows), args.batch):
                model(rows[i : i + args.batch])
        plain = time.perf_counter() - start

        start = time.perf_counter()
        store = write_store(
            model, [SITE], rows, out, model_name="smollm2-135m", batch_size=args.batch, shard_tokens=args.shard_tokens
        )
        write = time.perf_counter() - start
        size_mb = sum(s.path.stat().st_size for s in store.shards) / 1e6

        reads = []
        fresh = ActivationStore(out)  # checksums are verified once per store object
        for label in ("read, first pass (checksums)", "read, second pass"):
            start = time.perf_counter()
            n = sum(len(b) for b in fresh.batches(SITE, args.read_batch, shuffle=True))
            reads.append((label, time.perf_counter() - start, n))
    finally:
        shutil.rmtree(out, ignore_errors=True)

    table_rows = [
        {"step": "plain full forward (30 layers)", "seconds": plain, "tokens/s": n_tok / plain, "MB/s": float("nan")},
        {"step": f"cache {SITE}, stop early", "seconds": write, "tokens/s": n_tok / write, "MB/s": size_mb / write},
    ] + [{"step": label, "seconds": t, "tokens/s": n / t, "MB/s": size_mb / t} for label, t, n in reads]
    print(
        f"SmolLM2-135M fp32, {n_tok} Shakespeare tokens in rows of {args.ctx}, batch {args.batch}, "
        f"{torch.get_num_threads()} threads; store: {len(store.shards)} shards, {size_mb:.1f} MB float32"
    )
    print(table(table_rows))
    print(f"\ncaching with early stop vs full forward: {plain / write:.2f}x the tokens/s")


if __name__ == "__main__":
    main()
