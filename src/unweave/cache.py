"""`unweave cache`: run a model over text and write activations at sites to a sharded
safetensors store; the store folder is also the run folder (record.json, cache.json with
the widths and norm statistics per site, cache.html)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from unweave import distributed
from unweave.configs import setting
from unweave.devices import DeviceConfig
from unweave.report import Report
from unweave.runs import Run, RunResult
from unweave.text import TextConfig, describe, input_files, token_rows


@dataclass(frozen=True)
class CacheConfig:
    out: Path = setting(help="Store directory; an interrupted write there resumes.")
    site: list[str] = setting(help="Site to store (repeat for several), e.g. model.layers.15.")
    model: str = setting("smollm2-135m", "Known model name or a local Hugging Face directory.")
    text: TextConfig = setting(TextConfig(), "The text run through the model.")
    tokens: int = setting(100_000, "How many tokens to run through the model.")
    ctx_len: int = setting(128, "Context length of each row.")
    batch_size: int = setting(8, "Rows per forward pass.")
    shard_tokens: int = setting(65_536, "Tokens per shard file.")
    store_dtype: str = setting("float32", "Stored dtype: float32, float16 or bfloat16.")
    device: DeviceConfig = setting(DeviceConfig(), "Where the model runs, and the dtype of its weights.")


def run_cache(cfg: CacheConfig) -> RunResult:
    """Under torchrun each rank runs its share of the shards (rank r: shards r, r+N, ...) and
    rank 0 writes the manifest and the run folder."""
    from unweave.hf import load_model
    from unweave.store import write_store

    run = Run(cfg.out, "cache", cfg, inputs=[cfg.model, *input_files(cfg.text)])
    device = distributed.start(cfg.device.torch_device)
    loaded = load_model(cfg.model, device=device, dtype=cfg.device.torch_dtype)
    rows = token_rows(cfg.text, loaded.tokenizer, cfg.ctx_len, max_tokens=cfg.tokens)
    start = time.perf_counter()
    store = write_store(
        loaded.model,
        cfg.site,
        rows,
        cfg.out,
        model_name=cfg.model,
        shard_tokens=cfg.shard_tokens,
        batch_size=cfg.batch_size,
        dtype=cfg.store_dtype,
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
    results = {
        "tokens": store.n_tokens,
        "shards": len(store.shards),
        "sites": sites,
        "text": describe(cfg.text),
        "seconds_this_call": seconds,
        "tokens_per_second_this_call": store.n_tokens / seconds if seconds > 0 else None,
    }
    report = Report(f"unweave cache: {cfg.model} on {describe(cfg.text)}")
    report.summary().text(
        f"{store.n_tokens} tokens of {describe(cfg.text)} in {len(store.shards)} shards at {len(sites)} sites.",
        summary=True,
    ).table(sites)
    widths = ", ".join(f"{s} ({store.width(s)})" for s in store.sites)
    return run.finish(results, report, [f"stored {store.n_tokens} tokens at {widths} in {len(store.shards)} shards"])
