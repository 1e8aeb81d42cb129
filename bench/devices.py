"""The same unweave work on each device this machine has (the CPU, and the GPU when torch sees
one), side by side in one run: a table of throughput per device and the GPU/CPU ratio.

    cd bench && ../.venv/bin/python devices.py [--quick]

Rows, all through unweave's own code paths (the ones `--device` selects):
- TopK SAE training (d 576 -> 4608, k 32, batch 4096; `train_many`), tokens/s;
- caching activations at the middle block of a random GPT-2-small-sized model built from
  its config (no download; `write_store`), tokens/s;
- SGLD on the closed-form deep linear network dln:20,40,40,20:5 (8 chains, vectorised;
  `estimate_llc`), steps/s, and its LLC, which must agree across devices within its standard
  error (each device draws its own chain noise, so the numbers are not identical).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import sync, table

from unweave.devices import loader_on
from unweave.dictionaries import SAE, SAEConfig, TrainConfig, train_many
from unweave.slt import SGLDConfig, estimate_llc
from unweave.store import write_store
from unweave.zoo import singular


def sae_tokens_per_s(device: torch.device, steps: int) -> float:
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(4096, 576, generator=gen) for _ in range(8)]
    sae = SAE(SAEConfig(d_in=576, n_latents=4608, architecture="topk", k=32), seed=0).to(device)
    stream = (batches[i % len(batches)] for i in range(10**9))
    train_many([sae], stream, TrainConfig(3, max_norm_ratio=None))  # warm-up (kernels, allocator)
    sae = SAE(SAEConfig(d_in=576, n_latents=4608, architecture="topk", k=32), seed=0).to(device)
    sync(device)
    start = time.perf_counter()
    train_many([sae], stream, TrainConfig(steps, max_norm_ratio=None))
    sync(device)
    return steps * 4096 / (time.perf_counter() - start)


def cache_tokens_per_s(device: torch.device, rows: int) -> float:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12)).to(device).eval()
    tokens = torch.randint(0, 50257, (rows, 256), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        write_store(model, ["transformer.h.5"], tokens[:8], Path(tmp) / "warm", "gpt2-random", batch_size=8)
        sync(device)
        start = time.perf_counter()
        write_store(model, ["transformer.h.5"], tokens, Path(tmp) / "store", "gpt2-random", batch_size=8)
        sync(device)
        return rows * 256 / (time.perf_counter() - start)


def sgld(device: torch.device, draws: int) -> tuple[float, str]:
    model, loader = singular.deep_linear_task([20, 40, 40, 20], rank=5, n=1000, batch_size=None)
    model, loader = model.to(device), loader_on(loader, device)
    cfg = SGLDConfig(epsilon=1e-4, nbeta=1e4, chains=8, draws=draws, burn_in=draws // 4, vectorize=True)
    estimate_llc(model, singular.half_squared_error, loader, SGLDConfig(chains=8, draws=5, vectorize=True))
    sync(device)
    start = time.perf_counter()
    result = estimate_llc(model, singular.half_squared_error, loader, cfg)
    sync(device)
    seconds = time.perf_counter() - start
    return (cfg.draws + cfg.burn_in) / seconds, f"{result.llc_mean:.4g} ± {result.llc_std_err:.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the pipeline in seconds")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # short SGLD runs warn about unflattened traces: speed is measured here
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    steps, rows, draws = (4, 8, 40) if args.quick else (40, 64, 400)
    rows_out = []
    for device in devices:
        name = (
            torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        )
        sgld_rate, llc = sgld(device, draws)
        rows_out.append(
            {
                "device": name,
                "SAE train tokens/s": sae_tokens_per_s(device, steps),
                "cache tokens/s (GPT-2 size, block 5)": cache_tokens_per_s(device, rows),
                "SGLD steps/s (8 chains)": sgld_rate,
                "LLC dln:20,40,40,20:5": llc,
            }
        )
    if len(rows_out) > 1:
        cpu, gpu = rows_out
        rows_out.append(
            {"device": "GPU / CPU", **{k: gpu[k] / cpu[k] for k in list(cpu)[1:4]}, "LLC dln:20,40,40,20:5": ""}
        )
    print(f"torch {torch.__version__}; {steps} SAE steps, {rows} cached rows of 256 tokens, {draws} SGLD draws")
    print(table(rows_out))


if __name__ == "__main__":
    main()
