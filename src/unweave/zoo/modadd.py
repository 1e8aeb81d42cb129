"""Modular addition, the standard grokking set-up (Nanda et al. 2023, "Progress measures
for grokking via mechanistic interpretability"): a one-layer transformer reads the tokens
`a b =` and predicts (a + b) mod p at `=`, trained full batch with AdamW and weight decay 1
on a fraction of all p^2 pairs. It first memorises, then generalises through a Fourier
algorithm (see `unweave.zoo.fourier`).

Training is seeded and deterministic; checkpoints (safetensors + JSON) are saved along
the way, and an interrupted run resumes from its last checkpoint with identical results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from unweave import progress
from unweave.artifacts import read_json, read_tensors, write_json, write_tensors
from unweave.configs import setting
from unweave.slt.gradients import row_mean
from unweave.zoo.transformer import ATTENTION, Transformer, TransformerConfig


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


@dataclass(frozen=True)
class ModAddConfig:
    # Nanda et al. use p=113, 30% of pairs, lr 1e-3 (grokking after ~10k steps). On 2 CPU
    # cores that takes over half an hour; p=59 with 40% of pairs and lr 3e-3 groks in ~1.3k.
    p: int = setting(59, "Modulus (an odd prime).")
    frac_train: float = setting(0.4, "Fraction of all pairs used for training.")
    d_model: int = setting(128, "Residual stream width.")
    n_heads: int = setting(4, "Attention heads.")
    d_mlp: int = setting(512, "MLP width.")
    attention: str = setting(
        "learned",
        "Attention: learned (the clock algorithm) or uniform, every position attending equally "
        "to all earlier ones (the pizza algorithm, Zhong et al. 2023).",
    )
    lr: float = setting(3e-3, "AdamW learning rate.")
    weight_decay: float = setting(1.0, "AdamW weight decay.")
    warmup_steps: int = setting(10, "Linear learning-rate warm-up steps.")
    steps: int = setting(3_000, "Full-batch training steps.")
    seed: int = setting(0, "Seed for the split and the initialisation.")
    eval_every: int = setting(50, "Evaluate train and test loss every this many steps.")
    checkpoint_every: int = setting(200, "Save a checkpoint every this many steps.")

    def __post_init__(self):
        if not _is_prime(self.p) or self.p < 3:
            raise ValueError(f"ModAddConfig.p must be an odd prime (the Fourier analysis works over Z_p), got {self.p}")
        if not 0 < self.frac_train < 1:
            raise ValueError(f"ModAddConfig.frac_train must be in (0, 1), got {self.frac_train}")
        for name in ("steps", "eval_every", "checkpoint_every", "d_model", "n_heads", "d_mlp"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModAddConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.attention not in ATTENTION:
            raise ValueError(f"ModAddConfig.attention must be one of {ATTENTION}, got {self.attention!r}")
        if self.lr <= 0:
            raise ValueError(f"ModAddConfig.lr must be positive, got {self.lr}")

    def transformer(self) -> TransformerConfig:
        return TransformerConfig(
            vocab=self.p + 1,
            n_ctx=3,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_mlp=self.d_mlp,
            n_layers=1,
            d_vocab_out=self.p,
            attention=self.attention,
        )

    @classmethod
    def from_dict(cls, data: dict) -> ModAddConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModAddConfig fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class ModAddData:
    tokens: torch.Tensor  # (p*p, 3): a, b, '=' for every pair, a-major
    labels: torch.Tensor  # (p*p,)
    train_idx: torch.Tensor
    test_idx: torch.Tensor


def make_data(cfg: ModAddConfig) -> ModAddData:
    """All p^2 pairs and the seeded train/test split."""
    p = cfg.p
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(cfg.seed))
    n_train = int(cfg.frac_train * p * p)
    return ModAddData(tokens, (a + b) % p, perm[:n_train].sort().values, perm[n_train:].sort().values)


def answer_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Logits at the '=' position, (n, p)."""
    return model(tokens)[:, -1]


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # float64: near the end of training the loss is ~1e-7, below float32's resolution of log-softmax
    return F.cross_entropy(logits.double(), labels)


def _answer_row_losses(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Loss on a model's full output (batch, 3, p): cross-entropy at the '=' position (float64, as `loss_fn`)."""
    return F.cross_entropy(output[:, -1].double(), labels, reduction="none")


answer_loss = row_mean(_answer_row_losses)  # the batch mean, with each row's loss known to the sampler


def at_answer(model: Transformer) -> Transformer:
    """`model` (its parameters shared) computing its last block and logits at '=' only, all that
    `answer_loss` reads: the same loss and gradients for the LLC's sampler, with the MLP and the
    unembedding run at one position of three, and the attention's projections on the vocabulary
    and position rows (`transformer.Embedded`) instead of on every example's."""
    return model.reading_last(1, token_tables=True)


def train_loader(cfg: ModAddConfig, batch_size: int | None = None) -> DataLoader:
    """The training pairs as a loader (full batch by default), for the LLC."""
    data = make_data(cfg)
    dataset = TensorDataset(data.tokens[data.train_idx], data.labels[data.train_idx])
    return DataLoader(dataset, batch_size=batch_size or len(dataset), shuffle=batch_size is not None)


def evaluate(model: torch.nn.Module, data: ModAddData) -> dict[str, float]:
    with torch.no_grad():
        logits = answer_logits(model, data.tokens)
    out = {}
    for split, idx in (("train", data.train_idx), ("test", data.test_idx)):
        out[f"{split}_loss"] = loss_fn(logits[idx], data.labels[idx]).item()
        out[f"{split}_acc"] = (logits[idx].argmax(-1) == data.labels[idx]).double().mean().item()
    return out


class TrainedModAdd:
    """A training run on disk: config.json, history.json, checkpoints/, model.safetensors."""

    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir)

    @property
    def config(self) -> ModAddConfig:
        return ModAddConfig.from_dict(read_json(self.dir / "config.json"))

    @property
    def history(self) -> list[dict]:
        return read_json(self.dir / "history.json")

    @property
    def complete(self) -> bool:
        return (self.dir / "model.safetensors").exists()

    @classmethod
    def open(cls, path: Path, finished: bool = True) -> TrainedModAdd:
        """The one way to open a run folder: a clear error when there is no run there (or,
        with `finished`, when it has not reached its last step)."""
        run = cls(path)
        if not (run.dir / "config.json").exists():
            raise FileNotFoundError(
                f"{path} holds no modular-addition run (no config.json); train one with "
                f"`unweave train modadd --out {path}` (or run `unweave demo`)"
            )
        if finished and not run.complete:
            raise FileNotFoundError(
                f"{path} holds an unfinished modular-addition run; finish it with `unweave train modadd --out {path}`"
            )
        return run

    @staticmethod
    def is_run(path: Path) -> bool:
        return (Path(path) / "config.json").exists() and (Path(path) / "history.json").exists()

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every checkpoint saved during training, in order."""
        paths = sorted((self.dir / "checkpoints").glob("step_*.safetensors"))
        return [(int(p.stem.split("_")[1]), p) for p in paths]

    def load(self, path: Path | None = None) -> Transformer:
        """The final model, or the one stored at a checkpoint path."""
        model = Transformer(self.config.transformer())
        model.load_state_dict(read_tensors(path or self.dir / "model.safetensors"))
        return model.eval()


def _optimizer(model: torch.nn.Module, cfg: ModAddConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))


def _save_state(
    run_dir: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer, history: list[dict]
) -> None:
    """Everything needed to resume: weights, AdamW moments, step, history."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, (name, _) in enumerate(model.named_parameters()):
        state = opt.state[opt.param_groups[0]["params"][i]]
        if state:
            tensors[f"adam.exp_avg.{name}"] = state["exp_avg"]
            tensors[f"adam.exp_avg_sq.{name}"] = state["exp_avg_sq"]
    write_tensors(run_dir / "state.safetensors", tensors)
    write_json(run_dir / "history.json", history)
    write_json(run_dir / "state.json", {"step": step})  # last: marks the state above as complete


def _load_state(run_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[int, list[dict]]:
    step = read_json(run_dir / "state.json")["step"]
    device = next(model.parameters()).device  # a run started on one device resumes on another
    tensors = {k: v.to(device) for k, v in read_tensors(run_dir / "state.safetensors").items()}
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    for param, (name, _) in zip(opt.param_groups[0]["params"], model.named_parameters()):
        if f"adam.exp_avg.{name}" in tensors:
            opt.state[param] = {
                "step": torch.tensor(float(step)),
                "exp_avg": tensors[f"adam.exp_avg.{name}"],
                "exp_avg_sq": tensors[f"adam.exp_avg_sq.{name}"],
            }
    history = [h for h in read_json(run_dir / "history.json") if h["step"] <= step]
    return step, history


def train(
    cfg: ModAddConfig,
    out_dir: Path,
    stop_after: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> TrainedModAdd:
    """Train (or resume) a run in `out_dir` on `device`; returns it once `cfg.steps` steps are done.

    A directory holding a run with a different config is an error, not overwritten.
    `stop_after` ends the call early after that many total steps (to test resuming).
    Checkpoints are saved from the CPU, so a run can resume on another device.
    """
    run = TrainedModAdd(out_dir)
    run.dir.mkdir(parents=True, exist_ok=True)
    (run.dir / "checkpoints").mkdir(exist_ok=True)
    if (run.dir / "config.json").exists() and run.config != cfg:
        raise ValueError(
            f"{run.dir} holds a run with a different config ({run.config}); "
            "choose another output directory or delete it"
        )
    write_json(run.dir / "config.json", asdict(cfg))
    if run.complete:
        return run

    torch.manual_seed(cfg.seed)
    data = make_data(cfg)
    data = ModAddData(*(t.to(device) for t in (data.tokens, data.labels, data.train_idx, data.test_idx)))
    model = Transformer(cfg.transformer()).to(device, dtype)  # initialised on the CPU: the same weights anywhere
    opt = _optimizer(model, cfg)
    step, history = (
        _load_state(run.dir, model, opt)
        if (run.dir / "state.json").exists()
        else (0, [{"step": 0, **evaluate(model, data)}])
    )

    x, y = data.tokens[data.train_idx], data.labels[data.train_idx]
    last = cfg.steps if stop_after is None else min(stop_after, cfg.steps)
    task = progress.Task("training modular addition", total=cfg.steps, unit="steps")
    task.advance(step)
    while step < last:
        for group in opt.param_groups:  # linear warm-up, a function of the step alone
            group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
        loss = loss_fn(answer_logits(model, x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        task.advance()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            history.append({"step": step, **evaluate(model, data)})
            task.advance(0, info=f"test acc {history[-1]['test_acc']:.3f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            write_tensors(run.dir / "checkpoints" / f"step_{step:06d}.safetensors", model.state_dict())
            _save_state(run.dir, step, model, opt, history)
    task.close()
    if step == cfg.steps:
        write_tensors(run.dir / "model.safetensors", model.state_dict())
    return run
