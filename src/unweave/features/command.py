"""`unweave features DICTIONARY`: a browser over every latent of a dictionary (SAE,
transcoder, or one layer of connected sparse MLPs) on the user's text, written into a run
folder (record.json, features.json, features.html and the browser's index.html)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unweave.configs import setting
from unweave.devices import DeviceConfig
from unweave.dictionaries import io
from unweave.dictionaries.plots import density_histogram
from unweave.features.browser import BrowserSettings, build
from unweave.report import Report, Section
from unweave.runs import Run, RunResult
from unweave.text import TextConfig, describe, input_files, token_rows


@dataclass(frozen=True)
class FeaturesConfig:
    dictionary: Path = setting(help="Dictionary folder (cfg.json + sae_weights.safetensors).", argument=True)
    out: Path = setting(Path("runs/features"), "Run folder; the browser is its index.html.")
    text: TextConfig = setting(TextConfig(), "Text the latents are read on.")
    tokens: int = setting(100_000, "Tokens of text read.")
    ctx_len: int | None = setting(None, "Tokens per row of text (default: the dictionary's training context).")
    top: int = setting(16, "Top-activating contexts per latent.")
    check_latents: int = setting(32, "Latents (drawn at random) whose direct logit effect is checked by ablation.")
    seed: int = setting(0, "Seed for the sampled contexts and the checked latents.")
    device: DeviceConfig = setting(DeviceConfig(), "Where the model and the dictionary run.")

    def __post_init__(self):
        if self.tokens < 1 or self.top < 1 or self.check_latents < 0:
            raise ValueError("--tokens and --top must be at least 1, --check-latents at least 0")


def run_features(cfg: FeaturesConfig) -> RunResult:
    from unweave.hf import load_model

    run = Run(cfg.out, "features", cfg, inputs=[cfg.dictionary, *input_files(cfg.text)])
    sae = io.load(cfg.dictionary).eval()
    meta, ctx_len = io.source(cfg.dictionary, cfg.ctx_len)
    try:
        model, tokenizer = load_model(meta["model_name"], device=cfg.device.torch_device, dtype=cfg.device.torch_dtype)
    except (OSError, ValueError) as err:
        raise ValueError(f"the model of {cfg.dictionary} ({meta['model_name']!r}) cannot be loaded: {err}") from None
    sae = sae.to(cfg.device.torch_device)
    rows = token_rows(cfg.text, tokenizer, ctx_len, max_tokens=cfg.tokens)
    settings = BrowserSettings(top=cfg.top, check_latents=cfg.check_latents, seed=cfg.seed)
    found = build(sae, meta, model, tokenizer, rows, cfg.out, settings, describe(cfg.text))
    report = Report(f"unweave features: {meta['name']}")
    browser_section(report.summary(), found, "index.html", summary=True)
    report.section("Firing density").figure(density_histogram(found["density"], "Latent firing density"))
    results = {k: v for k, v in found.items() if k not in ("density", "top_token")}
    return run.finish(results, report, summary_lines(found))


def summary_lines(found: dict) -> list[str]:
    corr = found["median_ablation_correlation"]
    return [
        f"{found['dictionary']}: {found['live_latents']} of {found['n_latents']} latents fire on "
        f"{found['tokens']} tokens; direct vs measured logit effect: median correlation "
        + (f"{corr:.3f} over {found['checked_latents']} latents" if corr is not None else "not checked")
    ]


def browser_section(section: Section, found: dict, href: str, summary: bool = False, sample: int = 12) -> Section:
    """The browser's headline figures, a link to it, and a few latents drawn at random (not
    chosen by what they look like) with links to their pages."""
    corr = found["median_ablation_correlation"]
    if summary:
        section.headline(
            {
                "latents firing": f"{found['live_latents']} of {found['n_latents']}",
                "tokens read": found["tokens"],
                "direct vs measured logit effect (median r)": corr if corr is not None else "not checked",
            }
        )
    section.text(
        f"{found['live_latents']} of {found['n_latents']} latents fire on {found['tokens']} tokens of "
        f"{found['text'] or 'text'} ({found['massive_tokens_left_out']} massive-norm tokens left out). "
        + (
            f"Direct logit effect vs the measured effect of removing the latent at its top activation: "
            f"median correlation {corr:.3f} over {found['checked_latents']} latents drawn at random."
            if corr is not None
            else ""
        ),
        summary=summary,
    )
    section.table(
        [{"open the feature browser": "every latent, search by index or token", "href": href}],
        links={"open the feature browser": "href"},
    )
    live = np.flatnonzero(np.asarray(found["density"]) > 0)
    chosen = np.random.default_rng(0).permutation(live)[:sample]
    section.table(
        [
            {
                "latent": int(i),
                "density": found["density"][i],
                "top token": found["top_token"][i],
                "direct vs measured": found["checks"].get(int(i), {}).get("correlation", ""),
                "href": f"{href}#latent={int(i)}",
            }
            for i in sorted(chosen)
        ],
        links={"latent": "href"},
    )
    return section
