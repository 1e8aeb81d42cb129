"""The devinterp side of bench/llc_vs_devinterp.py: runs in devinterp's own virtualenv.

Reads a spec (JSON path in argv[1]) naming the model, its weights and data (saved by the
unweave side with torch.save, loaded with weights_only=True) and the SGLD settings; prints
one JSON line with devinterp's estimate and the sampling wall-clock time.
"""

import json
import sys
import time
import warnings
from pathlib import Path

import torch
from common import sync
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # the same model classes, not the sampler

from devinterp.optim.sgld import SGLD  # noqa: E402
from devinterp.slt.sampler import estimate_learning_coeff_with_summary  # noqa: E402

from unweave.zoo import singular  # noqa: E402
from unweave.zoo.modadd import ModAddConfig, answer_loss  # noqa: E402
from unweave.zoo.transformer import Transformer  # noqa: E402


def build(spec):
    if spec["kind"] == "modadd":
        return Transformer(ModAddConfig(**spec["modadd"]).transformer()), answer_loss
    return singular.deep_linear(spec["widths"]), singular.half_squared_error


def main():
    warnings.simplefilter("ignore")
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(spec["threads"])
    model, loss_fn = build(spec)
    model.load_state_dict(torch.load(spec["weights"], weights_only=True))
    device = spec.get("device", "cpu")
    model.to(device)
    x, y = torch.load(spec["data"], weights_only=True)
    loader = DataLoader(TensorDataset(x, y), batch_size=spec["batch_size"], shuffle=spec["batch_size"] < len(x))
    s = spec["sgld"]

    def evaluate(m, data):
        return loss_fn(m(data[0]), data[1]), {}

    def run(draws):
        return estimate_learning_coeff_with_summary(
            model,
            loader,
            evaluate=evaluate,
            sampling_method=SGLD,
            optimizer_kwargs={"lr": s["epsilon"], "localization": s["localization"], "nbeta": s["nbeta"]},
            num_chains=s["chains"],
            num_draws=draws,
            num_burnin_steps=s["burn_in"],
            init_loss=spec["init_loss"],
            seed=s["seed"],
            device=device,
            verbose=False,
            online=False,
        )

    run(5)  # warm-up, as the unweave side does
    sync(device)
    start = time.perf_counter()
    out = run(s["draws"])
    sync(device)
    seconds = time.perf_counter() - start
    per_chain = out["llc/means"].tolist() if "llc/means" in out else None
    print(
        json.dumps(
            {
                "seconds": seconds,
                "llc_mean": float(out["llc/mean"]),
                "llc_std": float(out["llc/std"]),
                "per_chain": per_chain,
                "keys": sorted(out),
            }
        )
    )


if __name__ == "__main__":
    main()
