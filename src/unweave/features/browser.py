"""The feature browser of one dictionary on one text: a static site in a folder.

    OUT/index.html, browser.js, browser.css    the page (unweave/features/static)
    OUT/data/meta.js                           the dictionary, the text, per-latent density and maximum
    OUT/data/search.js                         per token: the latents that fire on it most
    OUT/data/latents/<i>.js                    one latent: contexts, histogram, output tokens, neighbours

Every data file is a script calling `unweaveData(key, payload)`, so the page loads each
one lazily with a <script> tag: that works from file:// (where fetch() of a local file is
refused) as well as from any web server.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unweave import progress
from unweave.devices import model_device
from unweave.dictionaries.sae import SAE, ordinary_rows
from unweave.features import effects
from unweave.features.collect import BINS, LOG10_HIGH, LOG10_LOW, LatentStats, Window
from unweave.sites import capture

STATIC = ("index.html", "browser.js", "browser.css")


@dataclass(frozen=True)
class BrowserSettings:
    top: int = 16  # top-activating contexts per latent
    samples: int = 64  # uniform sample of each latent's firings, for the quantile bands
    bands: int = 4  # quantile bands of that sample
    per_band: int = 4  # contexts shown per band
    window: Window = Window()
    output_tokens: int = 10  # promoted and suppressed tokens shown
    neighbours: int = 8
    search_latents: int = 16  # latents listed per token in the search index
    check_latents: int = 32  # latents whose direct effect is checked by ablation
    batch_tokens: int = 4096
    seed: int = 0


def latents_on_text(
    sae: SAE, meta: dict, model: nn.Module, rows: torch.Tensor, settings: BrowserSettings
) -> tuple[LatentStats, int]:
    """One pass over the text: the statistics of every latent, and how many tokens were left
    out as massive activations (outside the dictionary's max_input_norm; zero latents there)."""

    def encode(x: torch.Tensor) -> torch.Tensor:
        return sae.encode(x.to(sae.W_dec.device, torch.float32))

    return encoded_on_text(encode, sae.cfg.n_latents, sae.max_input_norm, meta["hook_name"], model, rows, settings)


def encoded_on_text(
    encode: Callable[[torch.Tensor], torch.Tensor],
    n_latents: int,
    max_input_norm: float | None,
    site: str,
    model: nn.Module,
    rows: torch.Tensor,
    settings: BrowserSettings,
) -> tuple[LatentStats, int]:
    """`latents_on_text` for any encoder of `n_latents` latents reading `site` (rows, d)."""
    stats = LatentStats(n_latents, settings.top, settings.samples, settings.window, settings.seed)
    device = model_device(model)
    per_batch = max(1, settings.batch_tokens // rows.shape[1])
    task = progress.Task("reading latents", total=rows.numel(), unit="tokens")
    massive = 0
    for start in range(0, len(rows), per_batch):
        batch = rows[start : start + per_batch]
        x = capture(model, site, batch.to(device), stop_early=True)[site]
        x = x.reshape(-1, x.shape[-1]).float()
        with torch.no_grad():
            z = encode(x)
        keep = ordinary_rows(x, max_input_norm).to(z.device)
        massive += int((~keep).sum())
        z = z.masked_fill(~keep[:, None], 0.0)
        stats.update(batch, z.reshape(*batch.shape, -1))
        task.advance(batch.numel())
    task.close()
    return stats, massive


class _Vocab:
    """Token strings, decoded once per id."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.strings: dict[int, str] = {}

    def __call__(self, ids: list[int]) -> list[str]:
        missing = sorted({i for i in ids if i not in self.strings})
        if missing:
            decoded = self.tokenizer.batch_decode([[i] for i in missing])
            # a byte-level token that is part of a character decodes to U+FFFD: show its raw form
            raw = self.tokenizer.convert_ids_to_tokens(missing) if any("\ufffd" in d for d in decoded) else decoded
            self.strings.update((i, r if "\ufffd" in d else d) for i, d, r in zip(missing, decoded, raw))
        return [self.strings[i] for i in ids]


def _round(values: Any) -> list:
    return [None if not np.isfinite(v) else float(f"{v:.4g}") for v in np.asarray(values, dtype=float).ravel()]


class _Contexts:
    """Contexts of the text read: the tokens of a row around a position, with a latent's
    activation on each (its window, as `LatentStats` kept it)."""

    def __init__(self, vocab: _Vocab, stats: LatentStats):
        self.vocab, self.stream, self.ctx_len, self.window = vocab, stats.tokens(), stats.ctx_len, stats.window

    def __call__(self, pos: int, value: float, acts: torch.Tensor) -> dict:
        w, ctx_len = self.window, self.ctx_len
        row_start = pos // ctx_len * ctx_len
        first = max(row_start, pos - w.before)
        last = min(row_start + ctx_len, pos + w.after + 1)
        offset = first - (pos - w.before)
        return {
            "t": self.vocab(self.stream[first:last].tolist()),
            "a": _round(acts[offset : offset + last - first]),
            "i": pos - first,
            "v": _round([value])[0],
            "row": pos // ctx_len,
            "pos": pos % ctx_len,
        }


def _bands(stats: LatentStats, latent: int, contexts: _Contexts, s: BrowserSettings) -> list[dict]:
    """Contexts from each quantile band of the latent's firings (a uniform sample of them)."""
    keep = torch.isfinite(stats.sample_key[latent]).nonzero().flatten()
    if len(keep) == 0:
        return []
    values = stats.sample_value[latent, keep]
    order = keep[values.argsort()]  # sample entries, weakest first
    n_bands = min(s.bands, len(order))
    bands = []
    for b, chunk in enumerate(np.array_split(order.numpy(), n_bands)):
        chosen = chunk[np.argsort(stats.sample_key[latent, chunk].numpy())][: s.per_band]  # random among the band
        values = stats.sample_value[latent]
        lo, hi = values[chunk].min().item(), values[chunk].max().item()
        bands.append(
            {
                "label": f"{round(100 * b / n_bands)}-{round(100 * (b + 1) / n_bands)}% of firings "
                f"(activation {lo:.3g} to {hi:.3g})",
                "contexts": [
                    contexts(int(stats.sample_pos[latent, j]), float(values[j]), stats.sample_window[latent, j])
                    for j in sorted(chosen, key=lambda j: -float(values[j]))
                ],
            }
        )
    return bands


def search_index(stats: LatentStats, vocab: _Vocab, per_token: int) -> list[list]:
    """Per token that occurs in the text: [token string, occurrences, [[latent, relative mean,
    firing fraction, mean activation], ...]], the latents ranked by their mean activation on
    the token's occurrences relative to their own maximum on the text."""
    stream = stats.tokens()
    if len(stream) == 0:
        return []
    occurrences = torch.bincount(stream)
    token, latent, total, fires = stats.token_latent_pairs()
    n = occurrences[token].double()
    mean = total / n
    relative = mean / stats.max[latent].double().clamp(min=1e-30)
    order = np.lexsort((-relative.numpy(), token.numpy()))
    token, latent, relative, mean, frac = (
        token[order],
        latent[order],
        relative[order],
        mean[order],
        (fires.double() / n)[order],
    )
    starts = np.flatnonzero(np.r_[True, token[1:].numpy() != token[:-1].numpy()]) if len(token) else np.array([])
    rank = np.arange(len(token)) - np.repeat(starts, np.diff(np.r_[starts, len(token)]))
    keep = rank < per_token
    by_token: dict[int, list] = {}
    for t, lat, r, f, m in zip(
        token[keep].tolist(), latent[keep].tolist(), relative[keep].tolist(), frac[keep].tolist(), mean[keep].tolist()
    ):
        by_token.setdefault(t, []).append([lat, float(f"{r:.4g}"), float(f"{f:.4g}"), float(f"{m:.4g}")])
    ids = occurrences.nonzero().flatten().tolist()
    strings = vocab(ids)
    return [[s, int(occurrences[i]), by_token.get(i, [])] for i, s in zip(ids, strings)]


def _write_data(path: Path, key: str, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    path.write_text(f"unweaveData({json.dumps(key)},{text});\n", encoding="utf-8")


def write_static(out: Path) -> None:
    static = resources.files("unweave.features") / "static"
    for name in STATIC:
        with resources.as_file(static / name) as src:
            shutil.copyfile(src, out / name)


@torch.no_grad()
def build(
    sae: SAE,
    meta: dict,
    model: nn.Module,
    tokenizer: Any,
    rows: torch.Tensor,
    out: Path,
    settings: BrowserSettings = BrowserSettings(),
    text: str = "",
) -> dict:
    """Write the browser for `sae` on token `rows` (n, ctx_len) into `out`; return its summary."""
    out = Path(out)
    stats, massive = latents_on_text(sae, meta, model, rows, settings)
    vocab, L = _Vocab(tokenizer), sae.cfg.n_latents
    contexts = _Contexts(vocab, stats)
    up_v, up_i, down_v, down_i = effects.top_logit_effects(model, sae, meta, settings.output_tokens)
    near_cos, near_idx = effects.nearest_latents(sae.W_dec, settings.neighbours)
    checks = _ablation_check(sae, meta, model, rows, stats, settings, vocab)

    if (out / "data" / "latents").exists():
        shutil.rmtree(out / "data" / "latents")  # no page of an earlier, wider dictionary stays behind
    task = progress.Task("writing latent pages", total=L)
    top_token = [""] * L
    for i in range(L):
        found = torch.isfinite(stats.top_value[i]).nonzero().flatten().tolist()
        top = [contexts(int(stats.top_pos[i, j]), float(stats.top_value[i, j]), stats.top_window[i, j]) for j in found]
        if top:
            top_token[i] = top[0]["t"][top[0]["i"]]
        hist = stats.histogram(i)
        nonzero = np.flatnonzero(hist)
        count = int(stats.count[i])
        page = {
            "latent": i,
            "fires": count,
            "density": float(stats.density[i]),
            "max": _round([stats.max[i]])[0],
            "mean": _round([stats.total[i] / count])[0] if count else None,
            "top": top,
            "bands": _bands(stats, i, contexts, settings),
            "hist": {"first": int(nonzero[0]), "counts": hist[nonzero[0] : nonzero[-1] + 1].tolist()}
            if len(nonzero)
            else None,
            "promoted": [[t, v] for t, v in zip(vocab(up_i[i].tolist()), _round(up_v[i]))],
            "suppressed": [[t, v] for t, v in zip(vocab(down_i[i].tolist()), _round(down_v[i]))],
            "neighbours": [[j, v] for j, v in zip(near_idx[i].tolist(), _round(near_cos[i]))],
            "check": checks.get(i),
        }
        _write_data(out / "data" / "latents" / f"{i}.js", f"latent:{i}", page)
        task.advance()
    task.close()

    correlations = [c["correlation"] for c in checks.values()]
    summary = {
        "dictionary": meta.get("name", ""),
        "model": meta["model_name"],
        "site": meta["hook_name"],
        "output_site": effects.output_site(sae, meta),
        "kind": sae.cfg.kind,
        "n_latents": L,
        "tokens": stats.n_tokens,
        "ctx_len": stats.ctx_len,
        "text": text,
        "massive_tokens_left_out": massive,
        "live_latents": int((stats.count > 0).sum()),
        "checked_latents": len(checks),
        "median_ablation_correlation": float(np.median(correlations)) if correlations else None,
    }
    _write_data(
        out / "data" / "meta.js",
        "meta",
        {
            **summary,
            "hist_log10": [LOG10_LOW, LOG10_HIGH, BINS],
            "density": _round(stats.density),
            "max": _round(stats.max),
            "top_token": top_token,
        },
    )
    _write_data(out / "data" / "search.js", "search", search_index(stats, vocab, settings.search_latents))
    write_static(out)
    return {**summary, "checks": checks, "density": stats.density.tolist(), "top_token": top_token}


def _ablation_check(
    sae: SAE,
    meta: dict,
    model: nn.Module,
    rows: torch.Tensor,
    stats: LatentStats,
    s: BrowserSettings,
    vocab: _Vocab,
) -> dict[int, dict]:
    """For `check_latents` live latents drawn at random: the correlation over the vocabulary
    between the direct logit effect and the measured effect of removing the latent at its top
    activation, and the tokens the removal measured as promoted and suppressed."""
    live = (stats.count > 0).nonzero().flatten()
    if len(live) == 0 or s.check_latents == 0:
        return {}
    gen = torch.Generator().manual_seed(s.seed)
    chosen = live[torch.randperm(len(live), generator=gen)[: s.check_latents]].sort().values
    pos, value, ctx_len = stats.top_pos[chosen, 0], stats.top_value[chosen, 0], stats.ctx_len
    measured = torch.cat(
        [
            effects.ablation_effects(model, sae, meta, rows[p // ctx_len], latents, p % ctx_len, v)
            for latents, p, v in zip(chosen.split(16), pos.split(16), value.split(16))  # 16 rows per forward pass
        ]
    )
    site = effects.output_site(sae, meta)
    direct = effects.direct_logit_effects(model, effects.residual_directions(model, site, sae.W_dec[chosen])).cpu()
    corr = effects.pearson(direct, measured)
    out = {}
    for n, latent in enumerate(chosen.tolist()):
        up, down = measured[n].topk(s.output_tokens), measured[n].topk(s.output_tokens, largest=False)
        out[latent] = {
            "correlation": float(f"{corr[n].item():.4g}"),
            "promoted": [[t, v] for t, v in zip(vocab(up.indices.tolist()), _round(up.values))],
            "suppressed": [[t, v] for t, v in zip(vocab(down.indices.tolist()), _round(down.values))],
            "row": int(pos[n] // ctx_len),
            "pos": int(pos[n] % ctx_len),
        }
    return out
