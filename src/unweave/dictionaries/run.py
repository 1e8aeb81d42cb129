"""`unweave sae train` and `unweave sae eval`: dictionaries from an activation store, and
their metrics, spliced scores and top-activating snippets in a report."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch

from unweave import progress
from unweave.artifacts import write_json
from unweave.dictionaries import io, metrics
from unweave.dictionaries.sae import SAE, SAEConfig, train_many
from unweave.report import Report
from unweave.store import ActivationStore, StoreError


def _stream(store: ActivationStore, site: str, batch_size: int, seed: int):
    """Endless shuffled batches, epoch after epoch, NaN/inf checked, never the whole store in memory."""
    epoch = 0
    while True:
        yield from store.batches(site, batch_size, seed=seed + epoch, drop_last=True, check_finite=True)
        epoch += 1


def train_from_store(store_dir: Path, site: str, base: SAEConfig, out: Path, ks: list[int] | None = None,
                     widths: list[int] | None = None, tokens: int | None = None, batch_size: int = 4096,
                     lr: float = 1e-3, seed: int = 0) -> list[Path]:
    """Train one dictionary per (k, width) in one pass over `tokens` stored activations."""
    store = ActivationStore(store_dir)
    d = store.width(site)
    if base.d_in != d:
        raise StoreError(f"site {site!r} in {store_dir} has width {d}, but the dictionary expects d_in={base.d_in}")
    if store.n_tokens < batch_size:
        raise StoreError(f"{store_dir} holds {store.n_tokens} tokens, fewer than one batch of {batch_size}")
    cfgs = [replace(base, k=k, n_latents=w) for k in (ks or [base.k]) for w in (widths or [base.n_latents])]
    saes = [SAE(c, seed=seed) for c in cfgs]
    steps = max(1, (tokens or store.n_tokens) // batch_size)
    task = progress.Task(f"training {len(saes)} dictionaries", total=steps)
    batches = (task.advance() or b for b in _stream(store, site, batch_size, seed))
    train_many(saes, batches, steps, lr=lr)
    task.close()
    meta = {"model_name": store.manifest["model"], "hook_name": site, "store": str(store_dir),
            "training_tokens": steps * batch_size}
    return [io.save(s.eval(), Path(out) / f"{s.cfg.architecture}-k{s.cfg.k}-w{s.cfg.n_latents}", meta) for s in saes]


@torch.no_grad()
def evaluate_on_store(sae: SAE, store: ActivationStore, site: str, max_tokens: int = 16_384) -> dict:
    x = next(store.batches(site, max_tokens, shuffle=True, seed=12345, check_finite=True))
    recon, z = sae(x)
    return {"fvu": metrics.fvu(x, recon), "mse": metrics.mse(x, recon), "l0": metrics.l0(z),
            "dead_fraction": metrics.dead_fraction(z), "dense_fraction": metrics.dense_fraction(z),
            "density": metrics.firing_density(z).tolist(), "tokens": len(x)}


@torch.no_grad()
def top_snippets(sae: SAE, store: ActivationStore, site: str, tokenizer, latents: int = 5, width: int = 8) -> list[dict]:
    """For a few latents of moderate density: the text around their strongest activations (first shard)."""
    acts, tokens = store.load_shard(0, site), store.load_shard(0, "tokens")
    z = sae.encode(acts)
    density = z.count_nonzero(0) / len(z)
    # dense latents (firing on most tokens) say little: prefer those firing on 0.1%-10% of tokens
    sparse = ((density > 1e-3) & (density < 0.1)).nonzero().flatten()
    pool = sparse if len(sparse) else density.nonzero().flatten()
    chosen = pool[density[pool].argsort(descending=True)][:latents]
    rows = []
    for latent in chosen.tolist():
        best = z[:, latent].topk(3).indices.tolist()
        texts = [tokenizer.decode(tokens[max(0, i - width):i]) + " [[" + tokenizer.decode(tokens[i:i + 1]) + "]]"
                 for i in best]
        rows.append({"latent": latent, "density": z[:, latent].count_nonzero().item() / len(z),
                     "top contexts": " | ".join(t.replace("\n", " ") for t in texts)})
    return rows


def density_histogram(density: list[float], title: str) -> go.Figure:
    logd = np.log10(np.clip(np.asarray(density), 1e-7, None))
    fig = go.Figure(go.Histogram(x=logd, nbinsx=40))
    fig.update_layout(title=title, xaxis_title="log10 firing density (dead latents at -7)",
                      yaxis_title="latents", height=330)
    return fig


def eval_report(folders: list[Path], out: Path, spliced_tokens: int = 8192, ctx_len: int = 128) -> Path:
    """Metrics of each dictionary on its store, spliced into its model on held-out text, and snippets."""
    from unweave.dictionaries.splice import spliced_metrics
    from unweave.hf import load_model, load_text

    report = Report("unweave sae eval")
    table, record, loaded = [], {}, {}
    for folder in progress.track(folders, "evaluating dictionaries"):
        sae, meta = io.load(folder).eval(), io.metadata(folder)
        store = ActivationStore(meta["store"])
        site = meta["hook_name"]
        m = evaluate_on_store(sae, store, site)
        if meta["model_name"] not in loaded:
            loaded[meta["model_name"]] = load_model(meta["model_name"])
        model, tokenizer = loaded[meta["model_name"]]
        used = store.n_tokens  # held out: the text after the tokens the store was made from
        rows = load_text("shakespeare", tokenizer, ctx_len, max_tokens=used + spliced_tokens)
        held_out = rows[math.ceil(used / ctx_len):]
        if len(held_out) == 0:
            raise StoreError("no held-out text is left after the store's tokens for the spliced metrics")
        s = spliced_metrics(model, site, sae, held_out[: max(1, spliced_tokens // ctx_len)])
        row = {"dictionary": folder.name, **{k: v for k, v in m.items() if k != "density"}, **s}
        table.append(row)
        record[folder.name] = {**row, "density": m["density"]}
        section = report.section(f"Dictionary {folder.name}")
        section.figure(density_histogram(m["density"], f"Latent firing density, {folder.name}"))
        section.table(top_snippets(sae, store, site, tokenizer))
    report.section("Metrics").table(table)
    report.sections.insert(0, report.sections.pop())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "sae_eval.json", record)
    return report.write(out / "sae_eval.html")
