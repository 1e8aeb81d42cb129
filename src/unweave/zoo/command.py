"""`unweave train modadd`: train (or resume) the modular-addition transformer; the training
folder is also the run folder (record.json, train.json with the final metrics, train.html
with the training curves)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from unweave.configs import setting
from unweave.devices import DeviceConfig
from unweave.report import Report
from unweave.runs import Run, RunResult
from unweave.zoo.modadd import ModAddConfig, train
from unweave.zoo.plots import loss_curves


@dataclass(frozen=True)
class TrainModAddConfig:
    out: Path = setting(Path("runs/modadd"), "Run directory; an interrupted run there resumes.")
    modadd: ModAddConfig = setting(ModAddConfig(), "The model and its training.")
    device: DeviceConfig = setting(DeviceConfig(), "Where training runs, and the dtype of the weights.")


def run_train_modadd(cfg: TrainModAddConfig) -> RunResult:
    run = Run(cfg.out, "train modadd", cfg, name="train")
    trained = train(cfg.modadd, cfg.out, device=cfg.device.torch_device, dtype=cfg.device.torch_dtype)
    history = trained.history
    final = history[-1]
    report = Report(f"unweave train modadd: a + b mod {cfg.modadd.p}")
    report.summary().text(
        f"Step {final['step']}: train loss {final['train_loss']:.3g}, test loss "
        f"{final['test_loss']:.3g}, test accuracy {final['test_acc']:.2%}.",
        summary=True,
    )
    report.section("Training").table([{"setting": k, "value": v} for k, v in asdict(cfg.modadd).items()]).figure(
        loss_curves(history)
    )
    line = (
        f"trained {trained.dir}: step {final['step']}, train loss {final['train_loss']:.3g}, "
        f"test accuracy {final['test_acc']:.2%}"
    )
    return run.finish({"final": final, "checkpoints": [s for s, _ in trained.checkpoints()]}, report, [line])
