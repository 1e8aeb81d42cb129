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
from unweave.dictionaries.sae import SAE, SAEConfig
from unweave.dictionaries.train import TrainConfig, train_many
from unweave.report import Report
from unweave.sites import capture
from unweave.store import ActivationStore, StoreError


def _stream(store: ActivationStore, sites, batch_size: int, seed: int):
    """Endless shuffled batches, epoch after epoch, NaN/inf checked, never the whole store in memory."""
    epoch = 0
    while True:
        yield from store.batches(sites, batch_size, seed=seed + epoch, drop_last=True, check_finite=True)
        epoch += 1


def live_batches(model: torch.nn.Module, sites: str | list[str], rows: torch.Tensor, batch_size: int,
                 forward_rows: int = 8, buffer_batches: int = 16, seed: int = 0):
    """Endless shuffled activation batches computed from the model while training runs (no
    store): rows of tokens are run `forward_rows` at a time (stopping after the last site),
    and batches are drawn from a shuffle buffer of `buffer_batches` batches, so memory stays
    bounded whatever the number of tokens."""
    names = [sites] if isinstance(sites, str) else list(sites)
    gen = torch.Generator().manual_seed(seed)
    buffer: list[torch.Tensor] | None = None
    while True:
        for i in torch.randperm(len(rows), generator=gen).split(forward_rows):
            acts = capture(model, names, rows[i], stop_early=True)
            new = [acts[n].reshape(-1, acts[n].shape[-1]) for n in names]
            for n, a in zip(names, new):
                if not torch.isfinite(a).all():
                    raise StoreError(f"the model produced NaN or inf at site {n!r}; check its dtype and inputs")
            buffer = new if buffer is None else [torch.cat([b, a]) for b, a in zip(buffer, new)]
            if len(buffer[0]) < buffer_batches * batch_size:
                continue
            perm = torch.randperm(len(buffer[0]), generator=gen)
            buffer = [b[perm] for b in buffer]
            while len(buffer[0]) >= buffer_batches * batch_size // 2 + batch_size:  # keep half to mix with new rows
                batch = [b[:batch_size] for b in buffer]
                buffer = [b[batch_size:] for b in buffer]
                yield batch[0] if isinstance(sites, str) else tuple(batch)


def _train(stream, base: SAEConfig, out: Path, ks, widths, steps: int, lr: float, seed: int, meta: dict,
           max_norm_ratio: float | None = None) -> list[Path]:
    cfgs = [replace(base, k=k, n_latents=w) for k in (ks or [base.k]) for w in (widths or [base.n_latents])]
    saes = [SAE(c, seed=seed) for c in cfgs]
    task = progress.Task(f"training {len(saes)} dictionaries", total=steps)
    train_many(saes, stream, TrainConfig(steps, lr=lr, max_norm_ratio=max_norm_ratio), checkpoint_dir=Path(out) / ".checkpoint",
               on_step=lambda _: task.advance())
    task.close()
    kind = "transcoder-" if base.kind == "transcoder" else ""
    return [io.save(s, Path(out) / f"{kind}{s.cfg.architecture}-k{s.cfg.k}-w{s.cfg.n_latents}", meta) for s in saes]


def train_from_store(store_dir: Path, site: str, base: SAEConfig, out: Path, ks: list[int] | None = None,
                     widths: list[int] | None = None, tokens: int | None = None, batch_size: int = 4096,
                     lr: float = 1e-3, seed: int = 0, target_site: str | None = None,
                     max_norm_ratio: float | None = None) -> list[Path]:
    """Train one dictionary per (k, width) in one pass over `tokens` stored activations
    (several epochs when `tokens` exceeds the store). With `target_site`, transcoders from
    `site` (an MLP's input) to `target_site` (its output). An interrupted run resumes from
    its checkpoint in `out` when called again with the same arguments."""
    store = ActivationStore(store_dir)
    if store.n_tokens == 0:
        raise StoreError(f"{store_dir} holds no tokens; fill it with `unweave cache`")
    d = store.width(site)
    if base.d_in != d:
        raise StoreError(f"site {site!r} in {store_dir} has width {d}, but the dictionary expects d_in={base.d_in}")
    if store.n_tokens < batch_size:
        raise StoreError(f"{store_dir} holds {store.n_tokens} tokens, fewer than one batch of {batch_size}")
    if target_site is not None:
        base = replace(base, kind="transcoder", d_out=store.width(target_site))
    steps = max(1, (tokens or store.n_tokens) // batch_size)
    sites = site if target_site is None else [site, target_site]
    meta = {"model_name": store.manifest["model"], "hook_name": site, "store": str(store_dir),
            "text_tokens": store.n_tokens, "training_tokens": steps * batch_size}
    if target_site is not None:
        meta["hook_name_out"] = target_site
    return _train(_stream(store, sites, batch_size, seed), base, out, ks, widths, steps, lr, seed, meta,
                  max_norm_ratio)


def train_live(model_name: str, site: str, base: SAEConfig, out: Path, tokens: int, ks: list[int] | None = None,
               widths: list[int] | None = None, text_tokens: int = 262_144, ctx_len: int = 128,
               batch_size: int = 4096, lr: float = 1e-3, seed: int = 0, target_site: str | None = None,
               max_norm_ratio: float | None = None) -> list[Path]:
    """As `train_from_store`, with activations computed from the model on the first
    `text_tokens` tokens of Shakespeare while training runs (cycling for `tokens`)."""
    from unweave.hf import load_model, load_text

    model, tokenizer = load_model(model_name)
    rows = load_text("shakespeare", tokenizer, ctx_len, max_tokens=text_tokens)
    names = [site] if target_site is None else [site, target_site]
    widths_at = {n: a.shape[-1] for n, a in capture(model, names, rows[:1], stop_early=True).items()}
    if base.d_in != widths_at[site]:
        raise ValueError(f"site {site!r} has width {widths_at[site]}, but the dictionary expects d_in={base.d_in}")
    if target_site is not None:
        base = replace(base, kind="transcoder", d_out=widths_at[target_site])
    steps = max(1, tokens // batch_size)
    meta = {"model_name": model_name, "hook_name": site, "live": True, "text_tokens": len(rows) * ctx_len,
            "ctx_len": ctx_len, "training_tokens": steps * batch_size}
    if target_site is not None:
        meta["hook_name_out"] = target_site
    stream = live_batches(model, site if target_site is None else names, rows, batch_size, seed=seed)
    return _train(stream, base, out, ks, widths, steps, lr, seed, meta, max_norm_ratio)


@torch.no_grad()
def evaluate(sae: SAE, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
    """Reconstruction and sparsity metrics on inputs x (and targets y, for a transcoder)."""
    from unweave.dictionaries.splice import apply, ordinary

    y = x if y is None else y
    recon, z = sae(x)
    keep = ordinary(sae, x)  # tokens it was trained for; the rest pass through when spliced
    spliced = apply(sae, x, keep=None if sae.cfg.kind == "sae" else y)
    out = {"fvu_all_tokens_spliced": metrics.fvu(y, spliced), "fvu": metrics.fvu(y[keep], recon[keep]),
           "mse": metrics.mse(y[keep], recon[keep]), "l0": metrics.l0(z[keep]),
           "dead_fraction": metrics.dead_fraction(z[keep]), "dense_fraction": metrics.dense_fraction(z[keep]),
           "density": metrics.firing_density(z[keep]).tolist(), "tokens": len(x),
           "passed_through_fraction": float((~keep).float().mean())}
    return out


@torch.no_grad()
def top_snippets(sae: SAE, acts: torch.Tensor, tokens: torch.Tensor, tokenizer, latents: int = 5,
                 width: int = 8) -> list[dict]:
    """For a few latents of moderate density: the text around their strongest activations.
    `acts` (n, d) are the activations of the flat token stream `tokens` (n,)."""
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


def _eval_activations(meta: dict, model, rows: torch.Tensor, max_tokens: int):
    """(x, y or None, flat tokens) on held-out text rows: the dictionary's input site (and
    output site, for a transcoder), computed from the model."""
    names = [meta["hook_name"]] + ([meta["hook_name_out"]] if "hook_name_out" in meta else [])
    captured = capture(model, names, rows, stop_early=True)
    acts = [captured[n].reshape(-1, captured[n].shape[-1])[:max_tokens] for n in names]
    return acts[0], (acts[1] if len(acts) > 1 else None), rows.flatten()[:max_tokens]


def density_histogram(density: list[float], title: str) -> go.Figure:
    logd = np.log10(np.clip(np.asarray(density), 1e-7, None))
    fig = go.Figure(go.Histogram(x=logd, nbinsx=40))
    fig.update_layout(title=title, xaxis_title="log10 firing density (dead latents at -7)",
                      yaxis_title="latents", height=330)
    return fig


def eval_report(folders: list[Path], out: Path, spliced_tokens: int = 8192, ctx_len: int = 128,
                max_tokens: int = 16_384) -> Path:
    """Metrics of each dictionary, spliced into its model on held-out text, and snippets."""
    from unweave.dictionaries.splice import spliced_metrics
    from unweave.hf import load_model, load_text

    report = Report("unweave sae eval")
    table, record, loaded = [], {}, {}
    for folder in progress.track(folders, "evaluating dictionaries"):
        sae, meta = io.load(folder).eval(), io.metadata(folder)
        if meta["model_name"] not in loaded:
            loaded[meta["model_name"]] = load_model(meta["model_name"])
        model, tokenizer = loaded[meta["model_name"]]
        used = meta.get("text_tokens", 0)  # held out: the text after the tokens the dictionary saw
        rows = load_text("shakespeare", tokenizer, ctx_len, max_tokens=used + max(spliced_tokens, max_tokens))
        held_out = rows[math.ceil(used / ctx_len):]
        if len(held_out) == 0:
            raise StoreError("no held-out text is left after the training tokens for the spliced metrics")
        x, y, tokens = _eval_activations(meta, model, held_out[: max(1, max_tokens // ctx_len)], max_tokens)
        m = evaluate(sae, x, y)
        site_out = meta.get("hook_name_out", meta["hook_name"])
        input_site = meta["hook_name"] if sae.cfg.kind == "transcoder" else None
        s = spliced_metrics(model, site_out, sae, held_out[: max(1, spliced_tokens // ctx_len)], input_site)
        row = {"dictionary": folder.name, **{k: v for k, v in m.items() if k != "density"}, **s}
        table.append(row)
        record[folder.name] = {**row, "density": m["density"]}
        section = report.section(f"Dictionary {folder.name}")
        section.figure(density_histogram(m["density"], f"Latent firing density, {folder.name}"))
        section.table(top_snippets(sae, x, tokens, tokenizer))
    report.section("Metrics").table(table)
    report.sections.insert(0, report.sections.pop())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "sae_eval.json", record)
    return report.write(out / "sae_eval.html")
