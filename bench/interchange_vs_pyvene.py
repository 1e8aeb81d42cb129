"""Interchange interventions per second on SmolLM2-135M: unweave vs pyvene 0.1.8, same intervention.

pyvene lives in its own virtualenv (bench/venv-pyvene: the project's torch, then pyvene
0.1.8 with torch pinned), which `make bench` builds when missing, then runs this and writes
bench/RESULTS.md:

    make bench BENCH_ARGS="--only interchange_vs_pyvene"

By hand: `.venv/bin/python bench/peers.py pyvene`, then from bench/:
../.venv/bin/python interchange_vs_pyvene.py [--pairs 64] [--batch-size 16] [--repeats 3] [--quick]

The intervention: the output of SmolLM2's strongest induction head (found from attention
patterns) at the last position of a base sequence, taken from a source sequence; both on
repeated random tokens (40 tokens with BOS). Both sides run fp32 on the same 2 threads,
the same pairs and batch size, and the last-position logits are compared (and against the
un-intervened logits, to show the intervention changes them). Two workloads:
- fresh pairs: every pair has its own source, so nothing can be reused;
- IIA over a pool: 4 pairs per input of a pool, as an interchange-accuracy evaluation
  draws them; unweave computes each source's activation once, pyvene per pair.

unweave's source forward stops at the head (layer 18 of 30) and the base forward computes
logits at the last position only; pyvene runs both forwards in full. With SmolLM2's 49k
unembedding that bounds the fresh-pairs speed-up near 1.6x in FLOPs.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from pathlib import Path

import torch
from common import best_of, quick_option, run_side, table
from safetensors.torch import load_file, save_file

from unweave.hf import cache_dir, load_model
from unweave.hypotheses import Hypothesis, Indices, Node
from unweave.hypotheses.cases import smollm2_head_scores, smollm2_repeated_tokens
from unweave.hypotheses.engine import Engine
from unweave.hypotheses.score import interchange_outputs

HERE = Path(__file__).resolve().parent
PEER = HERE / "venv-pyvene" / "bin" / "python"


def peer(tokens, base, source, layer, head, batch_size, repeats, threads, workdir: Path):
    save_file({"tokens": tokens.contiguous(), "base": base, "source": source}, str(workdir / "data.safetensors"))
    job = {
        "model": str(cache_dir() / "models" / "smollm2-135m"),
        "data": str(workdir / "data.safetensors"),
        "layer": layer,
        "head": head,
        "batch_size": batch_size,
        "repeats": repeats,
        "threads": threads,
        "out": str(workdir / "peer.safetensors"),
    }
    seconds = run_side(PEER, HERE / "_pyvene_side.py", job, workdir, "pyvene")["seconds"]
    return min(seconds), load_file(str(workdir / "peer.safetensors"))["logits"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    quick_option(parser, pairs=16, batch_size=8, repeats=1)
    args = parser.parse_args()
    if not PEER.exists():
        raise SystemExit(f"{PEER} is missing; build it with `make bench` or bench/peers.py pyvene")
    threads = torch.get_num_threads()
    model, tokenizer = load_model("smollm2-135m")
    half = 20
    scores = smollm2_head_scores(model, smollm2_repeated_tokens(tokenizer, 32, half, seed=1), half)
    layer, head = divmod(int(scores.flatten().argmax()), scores.shape[1])
    d_head = model.config.hidden_size // scores.shape[1]
    node = Node(
        "head",
        f"model.layers.{layer}.self_attn.o_proj:input",
        fn=lambda x: x[:, half],
        subspace=Indices(range(head * d_head, (head + 1) * d_head)),
        positions=[-1],
    )
    hypothesis = Hypothesis([node], output=lambda out: out.logits[:, -1], predict=lambda v: v["head"])
    n = args.pairs
    gen = torch.Generator().manual_seed(0)
    workloads = {}
    fresh_tokens = smollm2_repeated_tokens(tokenizer, 2 * n, half, seed=2)
    workloads["fresh pairs"] = (fresh_tokens, torch.arange(n), torch.arange(n, 2 * n))
    pool = smollm2_repeated_tokens(tokenizer, n // 4, half, seed=3)
    workloads["IIA over a pool (4 pairs per input)"] = (
        pool,
        torch.randint(len(pool), (n,), generator=gen),
        torch.randint(len(pool), (n,), generator=gen),
    )
    rows = []
    for name, (tokens, base, source) in workloads.items():
        engine = Engine(model, tokens, hypothesis, args.batch_size, forward_kwargs={"logits_to_keep": 1})
        ours = functools.partial(interchange_outputs, engine, ["head"], base, source, args.batch_size)
        _, ours_s = best_of(ours, repeats=args.repeats)
        with tempfile.TemporaryDirectory() as tmp:
            peer_s, peer_logits = peer(
                tokens, base, source, layer, head, args.batch_size, args.repeats, threads, Path(tmp)
            )
        intervened = ours()[0]
        clean = torch.cat(
            [engine.forward(base[i : i + args.batch_size]).logits[:, -1] for i in range(0, n, args.batch_size)]
        )
        rows.append(
            {
                "workload": name,
                "pairs": n,
                "unweave /s": n / ours_s,
                "pyvene /s": n / peer_s,
                "speed-up": peer_s / ours_s,
                "max |unweave - pyvene|": float((intervened - peer_logits).abs().max()),
                "mean |intervened - clean|": float((intervened - clean).abs().mean()),
            }
        )
    print(
        f"SmolLM2-135M fp32, head L{layer}H{head} at the last of {fresh_tokens.shape[1]} tokens, "
        f"batch {args.batch_size}, {threads} threads, min of {args.repeats}"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
