"""The named cases `unweave scrub` accepts, and hypothesis files: `resolve(target)`."""

from __future__ import annotations

import runpy
from pathlib import Path

from unweave.hypotheses.cases import Case
from unweave.hypotheses.graph import Hypothesis, HypothesisError
from unweave.text import TextConfig

CASES = ["cancellation", "modadd", "induction", "smollm2-induction", "induction-heads:PATH"]
HF_INDUCTION = "induction-heads:"  # + a local Hugging Face model folder


def resolve(
    target: str, modadd_run: Path = Path("runs/demo/modadd"), seed: int = 0, text: TextConfig | None = None
) -> Case:
    """A built-in case by name, or the case a hypothesis file defines. `text`: the language-
    model cases repeat spans of it instead of random tokens."""
    path = Path(target)
    if target.endswith(".py") or path.is_file():
        return case_from_file(path)
    return builtin_case(target, modadd_run, seed, text)


def builtin_case(
    name: str, modadd_run: Path = Path("runs/demo/modadd"), seed: int = 0, text: TextConfig | None = None
) -> Case:
    from unweave.hypotheses import cases

    if name == "cancellation":
        return cases.cancellation_case(seed)
    if name == "modadd":
        from unweave.zoo import fourier
        from unweave.zoo.modadd import TrainedModAdd, make_data

        run = TrainedModAdd.open(modadd_run)
        model, cfg = run.load(), run.config
        freqs = fourier.analyse(model, make_data(cfg), cfg.p).key_freqs
        return cases.modadd_case(model, cfg.p, freqs)
    if name == "induction":
        from unweave.zoo.induction import InductionConfig, train

        cfg = InductionConfig(seed=seed)
        return cases.induction_case(train(cfg), cfg.vocab, seed=seed)
    if name == "smollm2-induction":
        return cases.smollm2_induction_case(seed=seed, text=text)
    if name.startswith(HF_INDUCTION):
        from unweave.hf import load_model

        folder = name.removeprefix(HF_INDUCTION)
        model, tokenizer = load_model(folder)
        ids = None if text is None else cases.text_ids(text, tokenizer)
        return cases.lm_induction_case(model, tokenizer, name, seed=seed, text_ids=ids)
    raise ValueError(f"unknown case {name!r}; built-in cases: {', '.join(CASES)}, or give a Python file")


def case_from_file(path: Path) -> Case:
    """A hypothesis file defines `case` (a Case), or `model`, `inputs` and `hypotheses`
    (a list or dict of Hypothesis, or a single `hypothesis`), with optional `labels` and
    `forward_kwargs`."""
    if not path.exists():
        raise FileNotFoundError(f"hypothesis file {path} does not exist")
    ns = runpy.run_path(str(path))
    if isinstance(ns.get("case"), Case):
        return ns["case"]
    missing = [k for k in ("model", "inputs") if k not in ns]
    hyps = ns.get("hypotheses", ns.get("hypothesis"))
    if missing or hyps is None:
        raise HypothesisError(
            f"{path} must define `case`, or `model`, `inputs` and `hypotheses` (or `hypothesis`); "
            f"missing: {missing + ([] if hyps is not None else ['hypotheses'])}"
        )
    if isinstance(hyps, Hypothesis):
        hyps = [hyps]
    if not isinstance(hyps, dict):
        hyps = {h.name: h for h in hyps}
    return Case(
        path.stem, ns["model"], ns["inputs"], ns.get("labels"), hyps, forward_kwargs=ns.get("forward_kwargs", {})
    )
