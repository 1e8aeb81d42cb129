"""Score a hypothesis: causal scrubbing and interchange interventions, per example."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from unweave import progress
from unweave.hypotheses.engine import Engine
from unweave.hypotheses.graph import Hypothesis
from unweave.scoring import ce_per_example, kl_per_example, loss_recovered, predictions

# An example whose scrubbed output is this far (nats) from the model's counts as "changed".
KL_CHANGED = 0.1


def _summary(x: np.ndarray) -> dict:
    return {
        "mean": float(x.mean()),
        "median": float(np.median(x)),
        "p90": float(np.quantile(x, 0.9)),
        "max": float(x.max()),
    }


@dataclass
class ScrubResult:
    hypothesis: str
    unclaimed: str
    kl: np.ndarray  # per example: KL(model || scrubbed)
    kl_random: np.ndarray  # per example: KL(model || model on a random input)
    loss_model: np.ndarray
    loss_scrubbed: np.ndarray
    loss_random: np.ndarray
    warnings: list[str] = field(default_factory=list)

    @property
    def recovered(self) -> float:
        return loss_recovered(
            float(self.loss_model.mean()), float(self.loss_scrubbed.mean()), float(self.loss_random.mean())
        )

    @property
    def changed(self) -> float:
        """Fraction of examples whose scrubbed output moved more than KL_CHANGED nats."""
        return float((self.kl > KL_CHANGED).mean())

    def to_dict(self) -> dict:
        return {
            "hypothesis": self.hypothesis,
            "unclaimed": self.unclaimed,
            "examples": len(self.kl),
            "loss_recovered": self.recovered,
            "kl": _summary(self.kl),
            "kl_random": _summary(self.kl_random),
            "changed_fraction": self.changed,
            "kl_changed_threshold": KL_CHANGED,
            "loss_model": float(self.loss_model.mean()),
            "loss_scrubbed": float(self.loss_scrubbed.mean()),
            "loss_random": float(self.loss_random.mean()),
            "warnings": self.warnings,
        }


def _batches(n: int, size: int, label: str):
    starts = range(0, n, size)
    return progress.track(starts, description=label, total=len(starts))


def scrub(
    model: nn.Module,
    inputs: torch.Tensor,
    hypothesis: Hypothesis,
    labels: torch.Tensor | None = None,
    n_examples: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    forward_kwargs: dict | None = None,
) -> ScrubResult:
    """Causal scrubbing of `hypothesis` on reference inputs drawn from `inputs`.

    Loss is cross-entropy against `labels`, or against the model's own prediction when
    no labels are given. Fraction recovered compares the scrubbed loss with the model's
    (1) and with the model run on random inputs (0).
    """
    return scrub_all(model, inputs, [hypothesis], labels, n_examples, batch_size, seed, forward_kwargs)[0]


def scrub_all(
    model: nn.Module,
    inputs: torch.Tensor,
    hypotheses: list[Hypothesis],
    labels: torch.Tensor | None = None,
    n_examples: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    forward_kwargs: dict | None = None,
) -> list[ScrubResult]:
    """`scrub` for several hypotheses on the same references, sharing the model's clean and
    random-input forwards (so comparing claims costs one scrubbed forward tree each)."""
    engines = [Engine(model, inputs, h, batch_size, seed, forward_kwargs) for h in hypotheses]
    n = len(inputs) if n_examples is None else min(n_examples, len(inputs))
    refs_all = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))[:n]
    random_all = torch.randint(len(inputs), (n,), generator=torch.Generator().manual_seed(seed + 1))
    parts = [{k: [] for k in ("kl", "kl_random", "lm", "ls", "lr")} for _ in engines]
    label = "scrubbing " + ", ".join(h.name for h in hypotheses)
    for start in _batches(n, batch_size, label[:60]):
        refs, rand = refs_all[start : start + batch_size], random_all[start : start + batch_size]
        raw_clean, raw_random = engines[0].forward(refs), engines[0].forward(rand)
        for engine, part in zip(engines, parts):  # scored on the CPU, beside the labels
            clean, random = engine.h.output(raw_clean).cpu(), engine.h.output(raw_random).cpu()
            scrubbed = engine.scrub_batch(refs).cpu()
            target = predictions(clean) if labels is None else labels[refs]
            part["kl"].append(kl_per_example(clean, scrubbed))
            part["kl_random"].append(kl_per_example(clean, random))
            part["lm"].append(ce_per_example(clean, target))
            part["ls"].append(ce_per_example(scrubbed, target))
            part["lr"].append(ce_per_example(random, target))
    results = []
    for engine, part in zip(engines, parts):
        cat = {k: torch.cat(v).cpu().numpy() for k, v in part.items()}
        results.append(
            ScrubResult(
                engine.h.name,
                engine.h.unclaimed,
                cat["kl"],
                cat["kl_random"],
                cat["lm"],
                cat["ls"],
                cat["lr"],
                engine.warnings,
            )
        )
    return results


@dataclass
class InterchangeResult:
    hypothesis: str
    nodes: list[str]
    correct: np.ndarray  # per pair: intervened prediction == the interpretation's counterfactual
    loss: np.ndarray  # per pair: cross-entropy of the counterfactual label

    @property
    def iia(self) -> float:
        return float(self.correct.mean())

    def to_dict(self) -> dict:
        return {
            "hypothesis": self.hypothesis,
            "nodes": self.nodes,
            "pairs": len(self.correct),
            "iia": self.iia,
            "counterfactual_loss": float(self.loss.mean()),
        }


def interchange(
    model: nn.Module,
    inputs: torch.Tensor,
    hypothesis: Hypothesis,
    nodes: list[str] | None = None,
    n_pairs: int = 1024,
    batch_size: int = 256,
    seed: int = 0,
    forward_kwargs: dict | None = None,
) -> InterchangeResult:
    """Interchange intervention accuracy: on random (base, source) pairs, set `nodes` (default:
    all top nodes) to their value on the source and check the model's prediction against
    the counterfactual that `hypothesis.predict` gives.

    The nodes' activations are computed once per distinct source input (stopping the
    forward at the last node's site), so when pairs reuse inputs each pair costs one
    patched forward of its base.
    """
    engine = Engine(model, inputs, hypothesis, batch_size, seed, forward_kwargs)
    names = [n.name for n in hypothesis.top] if nodes is None else list(nodes)
    gen = torch.Generator().manual_seed(seed + 1)
    base = torch.randint(len(inputs), (n_pairs,), generator=gen)
    source = torch.randint(len(inputs), (n_pairs,), generator=gen)
    outs, predicted = interchange_outputs(engine, names, base, source, batch_size)
    predicted = predicted.reshape(n_pairs, -1)
    correct = (predictions(outs) == predicted).double().mean(-1)
    ce = ce_per_example(outs, predicted)
    return InterchangeResult(hypothesis.name, names, correct.cpu().numpy(), ce.cpu().numpy())


def interchange_outputs(
    engine: Engine, names: list[str], base: torch.Tensor, source: torch.Tensor, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of `base` inputs with the named nodes set from `source` inputs, and the
    predicted counterfactual labels. Node activations are computed once per distinct source."""
    distinct, slot = torch.unique(source, return_inverse=True)
    chunks = [
        engine.source_activations(names, distinct[i : i + batch_size]) for i in range(0, len(distinct), batch_size)
    ]
    cached = [torch.cat(parts) for parts in zip(*chunks)]
    outs, predicted = [], []
    for start in _batches(len(base), batch_size, f"interchange {','.join(names)}"):
        rows = slice(start, start + batch_size)
        out, pred = engine.interchange_batch(names, base[rows], source[rows], [c[slot[rows]] for c in cached])
        outs.append(out.cpu())
        predicted.append(torch.as_tensor(pred).cpu())
    return torch.cat(outs), torch.cat(predicted)
