"""The feature browser: time and peak memory to build it for a dictionary over N tokens of
text (`unweave features`, one pass over the activations), and how fast a latent's page
opens in headless Chromium.

Targets: a 4,608-latent dictionary over 100k tokens built in under 3 minutes on 2 cores,
memory that does not grow with the text (the table builds at N/4 and N tokens), and a
latent page open in under 200 ms.

    python features_browser.py --sae-run data/sae-l15-4608 [--tokens 100000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import quick_option, table

HERE = Path(__file__).resolve().parent
OUT = HERE / "data" / "features-bench"

# time from setting the hash to the view drawn (the next animation frame after it is built)
OPEN = """([hash, view]) => new Promise((resolve) => {
  const t0 = performance.now();
  const seen = new MutationObserver(() => {
    if (document.body.dataset.view === view) {
      seen.disconnect();
      requestAnimationFrame(() => resolve(performance.now() - t0));
    }
  });
  seen.observe(document.body, { attributes: true });
  location.hash = hash;
})"""


def dictionary_in(run: Path) -> Path:
    found = sorted(p.parent for p in run.glob("*/cfg.json"))
    if not found:
        sys.exit(f"{run} holds no dictionary folder (with cfg.json): train one with `unweave sae train`")
    return found[0]


def build(dictionary: Path, tokens: int, out: Path, device: str) -> dict:
    """Run `unweave features` in its own process: wall time and that process's peak RSS."""
    shutil.rmtree(out, ignore_errors=True)
    unweave = Path(sys.executable).parent / "unweave"
    cmd = [str(unweave), "features", str(dictionary), "--tokens", str(tokens), "--out", str(out), "--device", device]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"`{' '.join(cmd)}` failed:\n{done.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far, in KiB
    found = json.loads((out / "features.json").read_text())
    size = sum(p.stat().st_size for p in (out / "data").rglob("*") if p.is_file())
    return {
        "tokens": found["tokens"],
        "latents": found["n_latents"],
        "build (s)": seconds,
        "target (s)": 180.0,
        "peak RSS (GiB)": peak / 2**20 if peak > before else float("nan"),
        "data on disk (MB)": size / 1e6,
        "median r, direct vs ablation": found["median_ablation_correlation"],
    }


def page_timings(out: Path, latents: int, pages: int, seed: int = 0) -> dict:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return {"note": "no chromium: page timings not measured (apt-get install chromium)"}
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    chosen = random.Random(seed).sample(range(latents), min(pages, latents))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            start = time.perf_counter()
            page.goto((out / "index.html").resolve().as_uri())
            page.wait_for_function("document.body.dataset.view === 'all'")
            first = (time.perf_counter() - start) * 1000
            opened = [page.evaluate(OPEN, [f"latent={i}", f"latent:{i}"]) for i in chosen]
            search = page.evaluate(OPEN, ["search=%20the", "search"])
        finally:
            browser.close()
    return {
        "index page loaded (ms)": first,
        "latent pages opened": len(opened),
        "median (ms)": statistics.median(opened),
        "90th pct (ms)": sorted(opened)[int(0.9 * (len(opened) - 1))],
        "max (ms)": max(opened),
        "target (ms)": 200.0,
        "first token search (ms)": search,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sae-run", type=Path, required=True, help="run folder of `unweave sae train`")
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--pages", type=int, default=40, help="latent pages opened in Chromium")
    parser.add_argument("--device", default="cpu")
    quick_option(parser, tokens=16_384, pages=10)
    args = parser.parse_args()
    dictionary = dictionary_in(args.sae_run)
    print(f"dictionary {dictionary}; text: shakespeare (the default)")
    rows = [build(dictionary, n, OUT / f"t{n}", args.device) for n in (args.tokens // 4, args.tokens)]
    print(table(rows))
    timings = page_timings(OUT / f"t{args.tokens}", rows[-1]["latents"], args.pages)
    print()
    print(table([timings]))


if __name__ == "__main__":
    main()
