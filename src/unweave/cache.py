"""`unweave cache`: run a model over text and write activations at sites to a sharded
safetensors store; the store folder is also the run folder (record.json, cache.json with
the widths and norm statistics per site, cache.html)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from unweave.configs import setting
from unweave.report import Report
from unweave.runs import Run, RunResult


@dataclass(frozen=True)
class CacheConfig:
    out: Path = setting(help="Store directory; an interrupted write there resumes.")
    site: list[str] = setting(help="Site to store (repeat for several), e.g. model.layers.15.")
    model: str = setting("smollm2-135m", "Known model name or a local Hugging Face directory.")
    text: str = setting("shakespeare", "Text corpus.")
    tokens: int = setting(100_000, "How many tokens to run through the model.")
    ctx_len: int = setting(128, "Context length of each row.")
    batch_size: int = setting(8, "Rows per forward pass.")
    shard_tokens: int = setting(65_536, "Tokens per shard file.")
    dtype: str = setting("float32", "Stored dtype: float32, float16 or bfloat16.")


def run_cache(cfg: CacheConfig) -> RunResult:
    from unweave.hf import load_model, load_text
    from unweave.store import write_store

    run = Run(cfg.out, "cache", cfg, inputs=[cfg.model])
    loaded = load_model(cfg.model)
    rows = load_text(cfg.text, loaded.tokenizer, cfg.ctx_len, max_tokens=cfg.tokens)
    start = time.perf_counter()
    store = write_store(
        loaded.model,
        cfg.site,
        rows,
        cfg.out,
        model_name=cfg.model,
        shard_tokens=cfg.shard_tokens,
        batch_size=cfg.batch_size,
        dtype=cfg.dtype,
    )
    seconds = time.perf_counter() - start
    sites = []
    for s in store.sites:
        norms = store.load_shard(0, s).double().norm(dim=1)
        sites.append(
            {
                "site": s,
                "width": store.width(s),
                "median norm (first shard)": norms.median().item(),
                "max norm": norms.max().item(),
                "share of tokens > 10x median": (norms > 10 * norms.median()).double().mean().item(),
            }
        )
    results = {"tokens": store.n_tokens, "shards": len(store.shards), "sites": sites, "seconds_this_call": seconds}
    report = Report(f"unweave cache: {cfg.model} on {cfg.text}")
    report.summary().text(
        f"{store.n_tokens} tokens in {len(store.shards)} shards at {len(sites)} sites.", summary=True
    ).table(sites)
    widths = ", ".join(f"{s} ({store.width(s)})" for s in store.sites)
    return run.finish(results, report, [f"stored {store.n_tokens} tokens at {widths} in {len(store.shards)} shards"])
