"""`unweave sae train` and `unweave sae eval`: dictionaries from a store or live from the
model, and their metrics, spliced scores and top-activating snippets; each writes a run
folder (record.json, sae_train.json / sae_eval.json, and a report)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from unweave import distributed, progress
from unweave.configs import setting, to_dict
from unweave.devices import DeviceConfig
from unweave.dictionaries import io
from unweave.dictionaries.architectures import ARCHITECTURES
from unweave.dictionaries.evaluate import evaluate, held_out_activations
from unweave.dictionaries.plots import density_histogram, loss_curves
from unweave.dictionaries.sae import SAE, SAEConfig
from unweave.dictionaries.streams import live_batches, store_batches
from unweave.dictionaries.train import TrainConfig, train_many
from unweave.features.browser import build
from unweave.features.command import browser_section
from unweave.report import Report
from unweave.runs import Run, RunResult, read_record
from unweave.sites import capture
from unweave.store import ActivationStore, StoreError
from unweave.text import TextConfig, describe, input_files, token_rows


@dataclass(frozen=True)
class SAETrainConfig:
    site: str = setting(help="Site the dictionary reads (in the store, or in the model).")
    store: Path | None = setting(None, "Activation store (from `unweave cache`).")
    live: bool = setting(False, "Compute activations from the model while training (no store).")
    model: str = setting("smollm2-135m", "With --live: known model name or local HF folder.")
    target_site: str | None = setting(None, "Train transcoders from --site (an MLP's input) to this site (its output).")
    skip: bool = setting(False, "With --target-site: transcoders with a linear skip from input to output.")
    out: Path = setting(
        Path("runs/sae"), "One SAELens-layout folder per dictionary goes here; an interrupted run there resumes."
    )
    architecture: str = setting("topk", f"Architecture: {', '.join(sorted(ARCHITECTURES))}.")
    k: list[int] = setting([32], "Latents per example (repeat for a sweep).")
    width: list[int] | None = setting(None, "Number of latents (repeat for a sweep; default 8 x d).")
    tokens: int | None = setting(None, "Training tokens (default: one pass over the store; 200k with --live).")
    text: TextConfig = setting(TextConfig(), "With --live: the text cycled through.")
    text_tokens: int = setting(262_144, "With --live: tokens of text cycled through.")
    ctx_len: int = setting(128, "With --live: context length of each row of text.")
    batch_size: int = setting(4096, "Activations per step (the global batch, split across ranks under torchrun).")
    lr: float = setting(1e-3, "Adam learning rate (warm-up: 5% of the steps, at most 100; decay: the last 20%).")
    l1: float = setting(1e-3, "Sparsity penalty for relu and jumprelu.")
    max_norm_ratio: float = setting(
        10.0,
        "Leave out (and pass through when spliced) tokens whose norm exceeds this "
        "multiple of the median: massive activations. 0 keeps every token.",
    )
    seed: int = setting(0, "Seed for initialisation and batch order.")
    device: DeviceConfig = setting(DeviceConfig(), "Where training runs (and, with --live, the model).")

    def __post_init__(self):
        if (self.store is None) == (not self.live):
            raise ValueError("give either --store DIR or --live (activations computed from --model)")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"--architecture {self.architecture!r} is unknown; known: {', '.join(ARCHITECTURES)}")
        if self.skip and self.target_site is None:
            raise ValueError("--skip is for transcoders: add --target-site (the MLP's output; --site is its input)")


@dataclass
class _Source:
    stream: Iterator
    d_in: int
    d_out: int | None  # transcoders
    steps: int
    meta: dict


def _local_batch(cfg: SAETrainConfig) -> int:
    """This rank's share of the global batch."""
    size = distributed.world().size
    if cfg.batch_size % size:
        raise ValueError(
            f"--batch-size {cfg.batch_size} does not split over {size} processes: use a multiple of {size}"
        )
    return cfg.batch_size // size


def _rank_shards(store: ActivationStore) -> list[int] | None:
    """Rank r reads shards r, r + N, ...; every rank must get as many (the same number of steps per epoch)."""
    me = distributed.world()
    if me.size == 1:
        return None
    if len(store.shards) % me.size:
        raise StoreError(
            f"{store.path} has {len(store.shards)} shards, which {me.size} processes cannot share evenly: "
            f"use a number of processes that divides {len(store.shards)}, or re-cache with another --shard-tokens"
        )
    return list(range(me.rank, len(store.shards), me.size))


def _from_store(cfg: SAETrainConfig) -> _Source:
    store = ActivationStore(cfg.store)
    if store.n_tokens == 0:
        raise StoreError(f"{cfg.store} holds no tokens; fill it with `unweave cache`")
    if store.n_tokens < cfg.batch_size:
        raise StoreError(f"{cfg.store} holds {store.n_tokens} tokens, fewer than one batch of {cfg.batch_size}")
    d_in = store.width(cfg.site)
    d_out = None if cfg.target_site is None else store.width(cfg.target_site)
    steps = max(1, (cfg.tokens or store.n_tokens) // cfg.batch_size)
    sites = cfg.site if cfg.target_site is None else [cfg.site, cfg.target_site]
    meta = {
        "model_name": store.manifest["model"],
        "hook_name": cfg.site,
        "store": str(cfg.store),
        "text_tokens": store.n_tokens,
        "training_tokens": steps * cfg.batch_size,
    }
    meta["text"] = _store_text(Path(cfg.store))
    stream = store_batches(store, sites, _local_batch(cfg), cfg.seed, shards=_rank_shards(store))
    return _Source(stream, d_in, d_out, steps, meta)


def _store_text(store: Path) -> dict:
    """The text a store was cached from, from its run record (the default text if it has none)."""
    try:
        return read_record(store)["config"]["text"]
    except (FileNotFoundError, KeyError, TypeError):
        return to_dict(TextConfig())


def _live(cfg: SAETrainConfig, device: torch.device) -> _Source:
    from unweave.hf import load_model

    model, tokenizer = load_model(cfg.model, device=device, dtype=cfg.device.torch_dtype)
    rows = token_rows(cfg.text, tokenizer, cfg.ctx_len, max_tokens=cfg.text_tokens)
    me = distributed.world()
    rows = rows[me.rank :: me.size]  # each rank computes activations from its own rows
    names = [cfg.site] if cfg.target_site is None else [cfg.site, cfg.target_site]
    widths = {n: a.shape[-1] for n, a in capture(model, names, rows[:1].to(device), stop_early=True).items()}
    steps = max(1, (cfg.tokens or 200_000) // cfg.batch_size)
    meta = {
        "model_name": cfg.model,
        "hook_name": cfg.site,
        "live": True,
        "text_tokens": len(rows) * cfg.ctx_len,
        "ctx_len": cfg.ctx_len,
        "training_tokens": steps * cfg.batch_size,
        "text": to_dict(cfg.text),
    }
    sites = cfg.site if cfg.target_site is None else names
    stream = live_batches(model, sites, rows, _local_batch(cfg), seed=cfg.seed + me.rank)
    return _Source(stream, widths[cfg.site], widths.get(cfg.target_site), steps, meta)


def run_sae_train(cfg: SAETrainConfig) -> RunResult:
    """One dictionary per (k, width), all trained from one pass over the stream (several
    epochs when `tokens` exceeds the store). With `target_site`, transcoders from `site`
    (an MLP's input) to `target_site` (its output). An interrupted run resumes from its
    checkpoint in `out` when called again with the same settings."""
    inputs = [cfg.store] if cfg.store is not None else [cfg.model, *input_files(cfg.text)]
    run = Run(cfg.out, "sae train", cfg, inputs=inputs)
    device = distributed.start(cfg.device.torch_device)
    source = _live(cfg, device) if cfg.live else _from_store(cfg)
    base = SAEConfig(
        d_in=source.d_in,
        n_latents=(cfg.width or [8 * source.d_in])[0],
        architecture=cfg.architecture,
        k=cfg.k[0],
        l1=cfg.l1,
    )
    if cfg.target_site is not None:
        base = replace(base, kind="transcoder", d_out=source.d_out, skip=cfg.skip)
        source.meta["hook_name_out"] = cfg.target_site
    saes = [
        SAE(replace(base, k=k, n_latents=w), seed=cfg.seed).to(device)  # initialised on the CPU: same start anywhere
        for k in cfg.k
        for w in (cfg.width or [base.n_latents])
    ]
    task = progress.Task(f"training {len(saes)} dictionaries", total=source.steps * cfg.batch_size, unit="tokens")
    train_cfg = TrainConfig(source.steps, lr=cfg.lr, max_norm_ratio=cfg.max_norm_ratio or None)
    losses = train_many(
        saes,
        source.stream,
        train_cfg,
        checkpoint_dir=Path(cfg.out) / ".checkpoint",
        on_step=lambda _: task.advance(cfg.batch_size),
    )
    task.close()
    source.meta["schedule"] = train_cfg.schedule()
    saes = [s.cpu() for s in saes]
    kind = ("transcoder-skip-" if base.skip else "transcoder-") if base.kind == "transcoder" else ""
    folders = [Path(cfg.out) / f"{kind}{s.cfg.architecture}-k{s.cfg.k}-w{s.cfg.n_latents}" for s in saes]
    if distributed.world().main:
        for s, f in zip(saes, folders):
            io.save(s, f, source.meta)
    rows = [
        {
            "dictionary": f.name,
            "k": s.cfg.k,
            "width": s.cfg.n_latents,
            "steps": len(curve),
            "final loss": curve[-1] if curve else float("nan"),
        }
        for f, s, curve in zip(folders, saes, losses)
    ]
    report = Report("unweave sae train")
    report.summary().text(
        f"{len(saes)} dictionaries at {cfg.site} ({source.meta['model_name']}), "
        f"{source.steps} steps of {cfg.batch_size} activations.",
        summary=True,
    ).table(rows)
    report.section("Training").figure(loss_curves({f.name: c for f, c in zip(folders, losses)}))
    results = {"dictionaries": [str(f) for f in folders], "rows": rows, "metadata": source.meta}
    return run.finish(results, report, [f"saved {f}" for f in folders])


@dataclass(frozen=True)
class SAEEvalConfig:
    folders: list[Path] = setting(help="Dictionary folders (cfg.json + sae_weights.safetensors).", argument=True)
    out: Path = setting(Path("runs/sae-eval"), "Where record.json, sae_eval.json and sae_eval.html go.")
    spliced_tokens: int = setting(8192, "Held-out tokens for the spliced KL and CE loss recovered.")
    max_tokens: int = setting(16_384, "Held-out tokens for the reconstruction metrics and snippets.")
    ctx_len: int | None = setting(None, "Context length of each row of held-out text (default: the training one).")
    text: TextConfig = setting(
        TextConfig(),
        "Text to score on; when it is the dictionary's training text, the tokens it saw are skipped.",
    )
    features: bool = setting(True, "Write a browser over every latent (OUT/features/NAME/index.html).")
    device: DeviceConfig = setting(DeviceConfig(), "Where the model and the dictionaries run.")


HEADLINE = ("dictionary", "ce_loss_recovered", "kl", "fvu", "l0", "dead_fraction")


def _held_out_rows(cfg: SAEEvalConfig, meta: dict, tokenizer: object, ctx_len: int) -> tuple[torch.Tensor, str]:
    """Rows of the evaluation text, after the training tokens when it is the training text."""
    same = to_dict(cfg.text) == meta.get("text", to_dict(TextConfig()))
    used = meta.get("text_tokens", 0) if same else 0
    needed = used + max(cfg.spliced_tokens, cfg.max_tokens)
    rows = token_rows(cfg.text, tokenizer, ctx_len, max_tokens=needed)
    held_out = rows[math.ceil(used / ctx_len) :]
    if len(held_out) == 0:
        raise StoreError(
            f"no held-out text is left in {describe(cfg.text)} after the {used} training tokens; "
            "give another text with --text"
        )
    where = f"{describe(cfg.text)}, " + (f"after the {used} training tokens" if same else "not the training text")
    return held_out, where


def run_sae_eval(cfg: SAEEvalConfig) -> RunResult:
    """Metrics of each dictionary, spliced into its model on held-out text (the text after
    the tokens the dictionary saw, or another text), and a browser over its latents."""
    from unweave.dictionaries.splice import spliced_metrics
    from unweave.hf import load_model

    run = Run(cfg.out, "sae eval", cfg, inputs=[*cfg.folders, *input_files(cfg.text)])
    report = Report("unweave sae eval")
    device, dtype = cfg.device.torch_device, cfg.device.torch_dtype
    table, record, loaded = [], {}, {}
    for folder in progress.track(cfg.folders, "evaluating dictionaries"):
        sae, (meta, ctx_len) = io.load(folder).eval().to(device), io.source(folder, cfg.ctx_len)
        name = meta["name"]
        if meta["model_name"] not in loaded:
            loaded[meta["model_name"]] = load_model(meta["model_name"], device=device, dtype=dtype)
        model, tokenizer = loaded[meta["model_name"]]
        held_out, where = _held_out_rows(cfg, meta, tokenizer, ctx_len)
        scored = held_out[: max(1, cfg.max_tokens // ctx_len)]
        x, y, _ = held_out_activations(meta, model, scored, cfg.max_tokens)
        m = evaluate(sae, x, y)
        site_out = meta.get("hook_name_out", meta["hook_name"])
        input_site = meta["hook_name"] if sae.cfg.kind == "transcoder" else None
        s = spliced_metrics(model, site_out, sae, held_out[: max(1, cfg.spliced_tokens // ctx_len)], input_site)
        row = {"dictionary": name, "text": where, **{k: v for k, v in m.items() if k != "density"}, **s}
        table.append(row)
        record[name] = {**row, "density": m["density"]}
        section = report.section(f"Dictionary {name}")
        section.figure(density_histogram(m["density"], f"Latent firing density, {name}"))
        if cfg.features:
            found = build(sae, meta, model, tokenizer, scored, cfg.out / "features" / name, text=where)
            record[name]["features"] = f"features/{name}/index.html"
            browser_section(section, found, f"features/{name}/index.html")
    report.summary("Metrics").table([{h: r[h] for h in HEADLINE} for r in table])
    report.section("Every metric").table(table)
    lines = [
        f"{r['dictionary']}: FVU {r['fvu']:.3g}, L0 {r['l0']:.3g}, dead {r['dead_fraction']:.2%}, "
        f"CE loss recovered {r['ce_loss_recovered']:.3f}, KL {r['kl']:.3g}"
        for r in table
    ]
    return run.finish(record, report, lines)
