"""The named detection tasks `unweave detect --task` accepts: `resolve(name)` builds one."""

from __future__ import annotations

from unweave.anomaly.tasks import DATASETS, TRIGGERS, Task, backdoor_task, copying_task, planted_rule_task

TASKS = ["planted-rule", "copying-smollm2"] + [f"backdoor-{d}-{t}" for d in DATASETS for t in TRIGGERS]


def resolve(name: str, poison_rate: float = 0.05, seed: int = 0) -> Task:
    if name == "planted-rule":
        return planted_rule_task(seed=seed)
    if name == "copying-smollm2":
        return copying_task(seed=seed)
    parts = name.split("-")
    if len(parts) == 3 and parts[0] == "backdoor":
        return backdoor_task(parts[1], parts[2], poison_rate=poison_rate, seed=seed)
    raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
