"""The named detection tasks `unweave detect --task` accepts: `resolve(name)` builds one."""

from __future__ import annotations

from unweave.anomaly.tasks import DATASETS, TRIGGERS, Task, backdoor_task, copying_task, planted_rule_task
from unweave.devices import DeviceConfig
from unweave.text import TextConfig

TASKS = ["planted-rule", "copying-smollm2"] + [f"backdoor-{d}-{t}" for d in DATASETS for t in TRIGGERS]


def resolve(
    name: str,
    poison_rate: float = 0.05,
    seed: int = 0,
    device: DeviceConfig | None = None,
    text: TextConfig | None = None,
) -> Task:
    """The task, its model trained (or loaded) on `device`; `text` feeds the language-model task."""
    device = device or DeviceConfig("cpu")
    if name == "planted-rule":
        return planted_rule_task(seed=seed, device=device.torch_device)
    if name == "copying-smollm2":
        return copying_task(seed=seed, device=device, text=text)
    parts = name.split("-")
    if len(parts) == 3 and parts[0] == "backdoor":
        return backdoor_task(parts[1], parts[2], poison_rate=poison_rate, seed=seed, device=device.torch_device)
    raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
