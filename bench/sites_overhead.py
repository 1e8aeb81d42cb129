"""Capture overhead on SmolLM2-135M: a forward with sites captured vs a plain forward.

Target (issue 2): capturing is at most 5% slower than the plain forward. Also shows what
stopping early buys when only a middle layer is needed.

    .venv/bin/python bench/sites_overhead.py [--batch 4] [--ctx 256] [--repeats 11] [--quick]

or with the others, writing bench/RESULTS.md:  make bench BENCH_ARGS="--only sites_overhead"
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import interleaved, quick_option, table

from unweave.hf import load_model
from unweave.sites import capture
from unweave.text import TextConfig, token_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--ctx", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=11)
    quick_option(parser, batch=1, ctx=64, repeats=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tok = load_model("smollm2-135m")
    x = token_rows(TextConfig(), tok, args.ctx, max_tokens=args.batch * args.ctx)
    n_tok = x.numel()
    all_layers = [f"model.layers.{i}" for i in range(model.config.num_hidden_layers)]
    cases = {
        "plain forward": lambda: model(x),
        "capture 1 site (layer 15)": lambda: capture(model, ["model.layers.15"], x),
        "capture 3 sites (resid, mlp in, attn out)": lambda: capture(
            model, ["model.layers.15", "model.layers.15.mlp:input", "model.layers.15.self_attn"], x
        ),
        "capture all 30 layers": lambda: capture(model, all_layers, x),
        "capture layer 15, stop early": lambda: capture(model, ["model.layers.15"], x, stop_early=True),
    }
    with torch.no_grad():
        times = interleaved(cases, args.repeats)
    # the min is the least noisy estimate of a run's cost on a shared CPU; the median is shown beside it
    rows, base, base_min = [], statistics.median(times["plain forward"]), min(times["plain forward"])
    for name, ts in times.items():
        median, low = statistics.median(ts), min(ts)
        rows.append(
            {
                "case": name,
                "median s": median,
                "min s": low,
                "tokens/s (min)": n_tok / low,
                "overhead % (median)": 100 * (median / base - 1),
                "overhead % (min)": 100 * (low / base_min - 1),
            }
        )
    print(
        f"SmolLM2-135M fp32, batch {args.batch} x {args.ctx} tokens, {torch.get_num_threads()} threads, "
        f"{args.repeats} interleaved rounds"
    )
    print(table(rows))
    worst = max(r["overhead % (min)"] for r in rows[1:3])
    print(
        f"\ncapture overhead, 1-3 sites, full forward: {worst:.2f}% (target <= 5%): {'PASS' if worst <= 5 else 'FAIL'}"
        f"\ncapture overhead, all 30 layers kept in memory: {rows[3]['overhead % (min)']:.2f}%"
    )


if __name__ == "__main__":
    main()
