"""LLC speed and agreement: unweave vs devinterp 1.3.2, same model, data and settings.

devinterp lives in its own virtualenv (bench/venv-devinterp: the project's torch, then
devinterp 1.3.2, safetensors and rich with torch pinned). `make bench` builds it and the
modular-addition run when missing, runs this and writes bench/RESULTS.md:

    make bench BENCH_ARGS="--only llc_vs_devinterp"

By hand: `.venv/bin/python bench/peers.py devinterp`, the run with
`.venv/bin/unweave train modadd --out bench/data/modadd` (p=59, 3000 steps, as `unweave demo`
trains it), then from bench/:  ../.venv/bin/python llc_vs_devinterp.py [--modadd-run data/modadd]
(--quick: 50 draws per chain instead of 200; --chains C: C chains on both sides, default 4;
--device cuda: both sides on the GPU, --peer-python: a Python that imports devinterp 1.3.2.)
Both sides run SGLD (epsilon, n*beta, gamma, chains x draws, batch size) with the same
L(w*) and report mean and standard error over chains; the table gives the time ratio and
whether the two estimates agree within their combined standard errors, and unweave's arithmetic
rate (torch's flop count of a chain's forward and backward, times chain-steps, over the wall
time) beside this machine's peak fp32 matmul rate, measured in the same run.
On modular addition unweave samples `at_answer(model)`, as `unweave llc` and the demo do: the
same parameters, loss and gradients, with the last block and the logits computed at '=' only,
the one position the loss reads, and the first attention's projections computed on the
vocabulary and position rows and gathered (`transformer.Embedded`); devinterp runs the model's
full forward. The flop count is
of the work each side's step does, so unweave's GFLOP/s on that row counts the smaller step.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from common import quick_option, run_side, sync, table

from unweave.devices import loader_on
from unweave.slt import SGLDConfig, estimate_llc
from unweave.slt.llc import mean_loss
from unweave.zoo import singular
from unweave.zoo.modadd import TrainedModAdd, answer_loss, at_answer, train_loader

HERE = Path(__file__).resolve().parent
PEER = HERE / "venv-devinterp" / "bin" / "python"


def cases(modadd_run: Path | None, draws: int = 200, chains: int = 4):
    for widths, rank in (([5, 3, 5], 1), ([10, 6, 8], 2)):
        model, loader = singular.deep_linear_task(widths, rank, n=1000, batch_size=100)
        yield (
            f"reduced-rank regression {widths} r={rank}",
            {"kind": "linear", "widths": widths},
            model,
            singular.half_squared_error,
            loader,
            SGLDConfig(epsilon=1e-4, nbeta=1e3, localization=100.0, chains=chains, draws=draws),
        )
    if modadd_run is not None and (modadd_run / "model.safetensors").exists():
        run = TrainedModAdd(modadd_run)
        yield (
            f"modular addition p={run.config.p} (final)",
            {"kind": "modadd", "modadd": vars(run.config)},
            at_answer(run.load()),
            answer_loss,
            train_loader(run.config, batch_size=256),
            SGLDConfig(epsilon=1e-4, nbeta=100.0, localization=100.0, chains=chains, draws=draws),
        )


def peer(spec_extra, model, loader, cfg: SGLDConfig, init_loss: float, tmp: Path, python: Path, device: str) -> dict:
    x, y = (t.cpu() for t in loader.dataset.tensors)
    torch.save(model.state_dict(), tmp / "w.pt")
    torch.save((x, y), tmp / "d.pt")
    spec = {
        **spec_extra,
        "weights": str(tmp / "w.pt"),
        "data": str(tmp / "d.pt"),
        "batch_size": loader.batch_size,
        "threads": torch.get_num_threads(),
        "device": device,
        "init_loss": init_loss,
        "sgld": {
            k: getattr(cfg, k) for k in ("epsilon", "nbeta", "localization", "chains", "draws", "burn_in", "seed")
        },
    }
    return run_side(python, HERE / "_devinterp_side.py", spec, tmp, "devinterp")


def step_flops(model, loss_fn, loader) -> int:
    """Floating-point operations of one chain's SGLD gradient (forward and backward on one batch),
    as torch's own flop counter sees them (matrix products; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    x, y = next(iter(loader))
    counter = FlopCounterMode(display=False)
    with counter:
        loss_fn(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def peak_matmul(size: int = 2048, repeats: int = 10, device: str = "cpu") -> float:
    """The device's fp32 matrix-product throughput in GFLOP/s (best of `repeats`), at the threads used."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    best = math.inf
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def main() -> None:
    warnings.simplefilter("ignore")  # both sides' sampler warnings; the table compares the numbers
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modadd-run", type=Path, default=HERE / "data" / "modadd")
    parser.add_argument("--draws", type=int, default=200, help="draws per chain, every case")
    parser.add_argument("--chains", type=int, default=4, help="chains per run, both sides")
    parser.add_argument("--device", default="cpu", help="where both sides run: cpu, or cuda on a GPU machine")
    parser.add_argument("--peer-python", type=Path, default=PEER, help="a Python that imports devinterp 1.3.2")
    quick_option(parser, draws=50)
    args = parser.parse_args()
    if not args.peer_python.exists():
        raise SystemExit(
            f"devinterp's virtualenv is missing at {args.peer_python}; build it with `make bench` or "
            "bench/peers.py devinterp"
        )
    if not (args.modadd_run / "model.safetensors").exists():
        print(f"no trained modular-addition run at {args.modadd_run}: that case is left out")
    rows = []
    peak = peak_matmul(device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec, model, loss_fn, loader, cfg in cases(args.modadd_run, args.draws, args.chains):
            model, loader = model.to(args.device), loader_on(loader, args.device)
            init = mean_loss(model, loss_fn, loader)
            estimate_llc(model, loss_fn, loader, replace(cfg, draws=5))  # warm-up, as the peer side does
            sync(args.device)
            start = time.perf_counter()
            ours = estimate_llc(model, loss_fn, loader, cfg)
            sync(args.device)
            ours_s = time.perf_counter() - start
            theirs = peer(spec, model, loader, cfg, init, Path(tmp), args.peer_python, args.device)
            their_se = theirs["llc_std"] / math.sqrt(cfg.chains)
            gap = abs(ours.llc_mean - theirs["llc_mean"])
            rows.append(
                {
                    "case": name,
                    "chains x draws": f"{cfg.chains}x{cfg.draws}",
                    "unweave s": ours_s,
                    "devinterp s": theirs["seconds"],
                    "speed-up": theirs["seconds"] / ours_s,
                    # the sampler's arithmetic rate: gradient flops of every chain-step over the wall time
                    "unweave GFLOP/s": step_flops(model, loss_fn, loader) * cfg.chains * cfg.draws / ours_s / 1e9,
                    "unweave LLC": f"{ours.llc_mean:.4g} ± {ours.llc_std_err:.2g}",
                    "devinterp LLC": f"{theirs['llc_mean']:.4g} ± {their_se:.2g}",
                    "agree (2 SE)": gap <= 2 * math.hypot(ours.llc_std_err, their_se),
                }
            )
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; devinterp 1.3.2 run by {args.peer_python}")
    for row in rows:
        row["% of peak matmul"] = 100 * row["unweave GFLOP/s"] / peak
    print(table(rows))
    print(
        f"peak fp32 matmul on this device: {peak:.0f} GFLOP/s (2048 x 2048 products, best of 10). The issue's "
        "alternative target for a row bound by arithmetic: the sampler at >= 70% of it."
    )
    print(
        "Modular addition: unweave's chains run at_answer(model) (the MLP and logits at '=' only, the position the "
        "loss reads, and the first attention's projections on the vocabulary and position rows; the same loss and "
        "gradients), devinterp the full forward."
    )


if __name__ == "__main__":
    main()
