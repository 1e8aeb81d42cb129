"""`unweave tails MODEL`: the distribution of activations at sites of a model, in the site's
own basis (neurons, residual coordinates), in random directions and in dictionary latents,
on log-probability axes; writes record.json, tails.json and tails.html.

MODEL is a known model name or a local Hugging Face folder (read on --text), or a
modular-addition run folder (read on all p^2 inputs, at the answer position)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unweave.configs import setting
from unweave.devices import DeviceConfig
from unweave.dictionaries.sae import ordinary_rows
from unweave.report import Report
from unweave.runs import Run, RunResult
from unweave.sites import capture, capture_rows
from unweave.tails.metrics import FAR, GAUSSIAN_BEYOND_FAR, BasisTails, random_rotation, tails
from unweave.tails.plots import kurtosis_histogram, log_density
from unweave.text import TextConfig, describe, input_files, token_rows

HEAVIEST = 10  # units listed per site and basis
MODADD_SITES = ["blocks.0.hook_resid_post", "blocks.0.mlp.hook_post"]


@dataclass(frozen=True)
class TailsConfig:
    model: str = setting(help="Known model name, local Hugging Face folder, or a modadd run folder.", argument=True)
    out: Path = setting(Path("runs/tails"), "Run folder: record.json, tails.json, tails.html.")
    site: list[str] = setting(
        [], "Sites to read (repeat; default: the residual stream at a quarter, half and three quarters of the depth)."
    )
    dictionary: list[Path] = setting([], "Dictionary folders; each one's latents are read at its own site (repeat).")
    text: TextConfig = setting(TextConfig(), "Text a language model is read on.")
    tokens: int = setting(16_384, "Tokens of text read (language models).")
    ctx_len: int = setting(128, "Tokens per row of text.")
    skip_first: int = setting(
        1,
        "Leave out the first positions of each row (language models): the first token of a row is an attention "
        "sink with massive activations in most LMs, and would set every direction's tails. 0 keeps them.",
    )
    max_norm_ratio: float = setting(
        10.0,
        "Leave out (per site, and count) tokens whose norm exceeds this multiple of the median: massive "
        "activations, which would set every direction's tails (as in `sae train`). 0 keeps every token.",
    )
    seed: int = setting(0, "Seed of the random directions.")
    device: DeviceConfig = setting(DeviceConfig(), "Where the model runs.")

    def __post_init__(self) -> None:
        if self.tokens < self.ctx_len or self.ctx_len < 1:
            raise ValueError(f"--tokens ({self.tokens}) must hold at least one row of --ctx-len ({self.ctx_len})")
        if not 0 <= self.skip_first < self.ctx_len:
            raise ValueError(f"--skip-first must be in [0, --ctx-len {self.ctx_len}), got {self.skip_first}")


def _modadd_activations(cfg: TailsConfig) -> tuple[dict[str, torch.Tensor], str]:
    from unweave.zoo.modadd import TrainedModAdd, make_data

    trained = TrainedModAdd.open(Path(cfg.model))
    model = trained.load()
    sites = cfg.site or MODADD_SITES
    inputs = make_data(trained.config).tokens
    with torch.no_grad():
        acts = capture(model, sites, inputs)
    return {s: a[:, -1].reshape(len(inputs), -1).float() for s, a in acts.items()}, (
        f"all {len(inputs)} inputs a + b mod {trained.config.p}, at the answer position"
    )


def _lm_activations(cfg: TailsConfig, extra_sites: list[str]) -> tuple[dict[str, torch.Tensor], str]:
    from unweave.anatomy import anatomy
    from unweave.hf import load_model

    loaded = load_model(cfg.model, device=cfg.device.torch_device, dtype=cfg.device.torch_dtype)
    sites = list(cfg.site)
    if not sites:
        parts = anatomy(loaded.model)
        sites = [parts.block(i) for i in sorted({parts.n_layers // 4, parts.n_layers // 2, 3 * parts.n_layers // 4})]
    sites += [s for s in extra_sites if s not in sites]
    rows = token_rows(cfg.text, loaded.tokenizer, cfg.ctx_len, max_tokens=cfg.tokens)
    with torch.no_grad():
        acts = capture_rows(loaded.model, sites, rows)
    kept = torch.arange(rows.numel()) % cfg.ctx_len >= cfg.skip_first
    skipped = f", the first {cfg.skip_first} of each row left out" if cfg.skip_first else ""
    return {s: a[kept] for s, a in acts.items()}, (
        f"{int(kept.sum())} tokens of {describe(cfg.text)} in rows of {cfg.ctx_len}{skipped}"
    )


def _dictionaries(cfg: TailsConfig) -> list[tuple[Path, str]]:
    """(folder, site) of each dictionary, checked against the model before anything runs."""
    from unweave.dictionaries import io

    found = []
    for folder in cfg.dictionary:
        meta, _ = io.source(folder)
        if str(meta["model_name"]) != cfg.model:
            raise ValueError(
                f"{folder} reads {meta['model_name']!r}, not {cfg.model!r}: give the dictionary's own model"
            )
        found.append((folder, meta["hook_name"]))
    return found


def _heaviest(t: BasisTails, site: str) -> list[dict]:
    order = np.argsort(-t.kurtosis)[:HEAVIEST]
    return [
        {
            "site": site,
            "basis": t.basis,
            "unit": int(t.index[i]),
            "kurtosis": float(t.kurtosis[i]),
            "max_abs_z": float(t.max_abs_z[i]),
        }
        for i in order
    ]


def run_tails(cfg: TailsConfig) -> RunResult:
    from unweave.dictionaries import io
    from unweave.zoo.modadd import TrainedModAdd

    run = Run(cfg.out, "tails", cfg, inputs=[*cfg.dictionary, *input_files(cfg.text)])
    toy = TrainedModAdd.is_run(Path(cfg.model))
    dicts = [] if toy else _dictionaries(cfg)
    if toy and cfg.dictionary:
        raise ValueError("--dictionary reads a language model's site; a modadd run folder takes no dictionary")
    acts, read_on = _modadd_activations(cfg) if toy else _lm_activations(cfg, [s for _, s in dicts])
    bases: dict[str, list[BasisTails]] = {}
    massive: dict[str, int] = {}
    for site, x in list(acts.items()):
        if cfg.max_norm_ratio > 0:
            ordinary = ordinary_rows(x, cfg.max_norm_ratio * float(x.norm(dim=1).median()))
            massive[site] = int((~ordinary).sum())
            acts[site] = x = x[ordinary]
        rotation = random_rotation(x.shape[1], cfg.seed).float()
        own = "neurons" if ".mlp" in site else "coordinates"
        bases[site] = [tails(x, own), tails(x @ rotation, "random directions")]
    for folder, site in dicts:
        sae = io.load(folder).eval()
        with torch.no_grad():
            z = sae.encode(acts[site])
        bases[site].append(tails(z, f"latents of {folder.name}"))
    rows = [
        {**t.row(site), "massive_tokens_left_out": massive.get(site, 0)} for site, found in bases.items() for t in found
    ]
    heaviest = [h for site, found in bases.items() for t in found for h in _heaviest(t, site)]
    verdicts = []
    for site, found in bases.items():
        left_out = f" ({massive[site]} massive-activation tokens left out)" if massive.get(site) else ""
        parts = [
            f"{t.basis}: up to {t.kurtosis.max():.3g} (median {np.median(t.kurtosis):.3g}), "
            f"{t.beyond_far / GAUSSIAN_BEYOND_FAR:.3g}x the Gaussian share beyond {FAR:.0f} sd"
            for t in found
            if len(t.kurtosis)
        ]
        verdicts.append(f"{site}{left_out}: kurtosis (Gaussian 3) in the " + "; in the ".join(parts))
    report = Report(f"unweave tails: {cfg.model}")
    summary = report.summary()
    summary.text(
        f"Read on {read_on}. Kurtosis E[z^4] is 3 for a Gaussian; a Haar-random rotation of the same "
        "activations is the null for tails that belong to the basis.",
        summary=True,
    )
    for line in verdicts:
        summary.text(line, summary=True)
    summary.table(rows)
    for site, found in bases.items():
        section = report.section(site)
        section.figure(log_density(found, site)).figure(kurtosis_histogram(found, site))
        section.table([h for h in heaviest if h["site"] == site])
    results = {"model": cfg.model, "read_on": read_on, "bases": rows, "heaviest": heaviest}
    return run.finish(results, report, verdicts)
