"""The `unweave` command. Thin: each command's options are built from its config dataclass
(same names, defaults and help), the library does the work and writes the run folder, and
this module prints the result's summary lines and paths."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from unweave import progress
from unweave.anomaly.command import DetectConfig, run_detect
from unweave.cache import CacheConfig, run_cache
from unweave.configs import MISSING, default_of, field_types
from unweave.demo import DemoConfig, run_demo
from unweave.dictionaries.clt_command import CLTTrainConfig, run_clt_train
from unweave.dictionaries.command import SAEEvalConfig, SAETrainConfig, run_sae_eval, run_sae_train
from unweave.dictionaries.connected_command import ConnectedTrainConfig, run_connected_train
from unweave.distributed import world
from unweave.features.command import FeaturesConfig, run_features
from unweave.fingerprint.command import FingerprintConfig, run_fingerprint
from unweave.graph.command import GraphConfig, run_graph
from unweave.hypotheses.command import ScrubConfig, run_scrub
from unweave.index import RunsConfig, run_runs
from unweave.mdl.command import MDLConfig, run_mdl
from unweave.runs import RunResult
from unweave.sitemap import SitesConfig, run_sites
from unweave.slt.command import LLCConfig, run_llc
from unweave.tails.command import TailsConfig, run_tails
from unweave.universality.command import UniversalityConfig, run_universality
from unweave.zoo.command import (
    TrainMemorizationConfig,
    TrainModAddConfig,
    TrainSkipTrigramsConfig,
    run_train_memorization,
    run_train_modadd,
    run_train_skip_trigrams,
)

app = typer.Typer(
    help="unweave: reverse-engineer trained networks into descriptions you can check.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Train a model of the zoo (toy models with known answers).", no_args_is_help=True)
sae_app = typer.Typer(help="Sparse dictionaries: train them, evaluate them.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(sae_app, name="sae")
console = Console(stderr=True)


def _options(cls: type, defaults: Any = None) -> list[tuple[str, Any, Any, tuple[str, ...]]]:
    """(name, type, typer parameter, path in the config) for every field on the command
    line; a nested config's fields are spliced in under their own names, with the defaults
    of the nested instance the outer config declares."""
    out = []
    types = field_types(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        default = getattr(defaults, f.name) if defaults is not None else default_of(f)
        if dataclasses.is_dataclass(types[f.name]):
            out += [
                (name, kind, param, (f.name, *path)) for name, kind, param, path in _options(types[f.name], default)
            ]
            continue
        if _is_union(types[f.name]):
            raise TypeError(
                f"{cls.__name__}.{f.name}: the command line cannot take a {types[f.name]}; "
                "declare it with setting(..., cli=False)"
            )
        help_text = f.metadata.get("help", "")
        required = default is MISSING
        if f.metadata.get("argument"):
            param = typer.Argument(... if required else default, help=help_text)
        else:
            param = typer.Option(... if required else default, help=help_text)
        out.append((f.name, types[f.name], param, (f.name,)))
    names = [o[0] for o in out]
    if len(names) != len(set(names)):
        raise TypeError(f"{cls.__name__}: two command-line options share a name: {names}")
    return out


def _is_union(kind: Any) -> bool:
    """A union other than `X | None` (typer takes one type per option)."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return typing.get_origin(kind) in (typing.Union, types.UnionType) and len(args) > 1


def _build(cls: type, values: dict[tuple[str, ...], Any], defaults: Any = None) -> Any:
    """The config from the parsed values (keyed by path); a nested config starts from the
    instance the outer config declares, so its fields off the command line keep their values."""
    kwargs: dict[str, Any] = {}
    nested: dict[str, dict] = {}
    for path, value in values.items():
        if len(path) == 1:
            kwargs[path[0]] = value
        else:
            nested.setdefault(path[0], {})[path[1:]] = value
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, inner in nested.items():
        base = getattr(defaults, name) if defaults is not None else default_of(fields[name])
        kwargs[name] = _build(type(base), inner, base)
    return dataclasses.replace(defaults, **kwargs) if defaults is not None else cls(**kwargs)


def command(group: typer.Typer, name: str, cls: type, run: Callable[[Any], RunResult], doc: str, epilog: str) -> None:
    """Register `run(config)` as a command whose options are the fields of `cls`."""
    options = _options(cls)

    def invoke(**kwargs: Any) -> None:
        cfg = _build(cls, {path: kwargs[opt] for opt, _, _, path in options})
        main_rank = world().main  # under torchrun only rank 0 shows progress and prints
        with progress.enabled() if main_rank else contextlib.nullcontext():
            result = run(cfg)
        if not main_rank:
            return
        for line in result.summary:
            console.print(line)
        console.print(
            f"[bold green]report[/] {result.report}\n[bold green]results[/] {result.results}\n"
            f"[bold green]record[/] {result.record}"
        )

    params = [
        inspect.Parameter(opt, inspect.Parameter.KEYWORD_ONLY, default=param, annotation=kind)
        for opt, kind, param, _ in options
    ]
    invoke.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    invoke.__annotations__ = {p.name: p.annotation for p in params}
    invoke.__doc__ = doc
    group.command(name, epilog=epilog)(invoke)


# (group, name, config, runner, what it does, example): each becomes `unweave [group] name`
COMMANDS = [
    (
        app,
        "demo",
        DemoConfig,
        run_demo,
        "Train (or reuse) a modular-addition transformer, recover its Fourier algorithm, write report.html.",
        "Example: unweave demo --out runs/demo",
    ),
    (
        train_app,
        "modadd",
        TrainModAddConfig,
        run_train_modadd,
        "Train the one-layer modular-addition transformer (a + b mod p), saving checkpoints.",
        "Example: unweave train modadd --p 59 --steps 3000 --out runs/modadd",
    ),
    (
        train_app,
        "skip-trigrams",
        TrainSkipTrigramsConfig,
        run_train_skip_trigrams,
        "Train a one-layer attention-only model on text; read its heads as skip-trigrams, checked by ablation.",
        "Example: unweave train skip-trigrams --text shakespeare --out runs/skip-trigrams",
    ),
    (
        train_app,
        "memorization",
        TrainMemorizationConfig,
        run_train_memorization,
        "Train the toy of superposition on T datapoints for a sweep of T: from memorizing datapoints to features.",
        "Example: unweave train memorization --d-hidden 2 --sizes 10 --sizes 100 --sizes 1000 --out runs/memo",
    ),
    (
        app,
        "cache",
        CacheConfig,
        run_cache,
        "Run a model over text and write activations at sites to a sharded safetensors store.",
        "Example: unweave cache --model smollm2-135m --site model.layers.15 --tokens 100000 --out runs/cache-l15",
    ),
    (
        app,
        "llc",
        LLCConfig,
        run_llc,
        "Estimate the local learning coefficient (an effective parameter count) by SGLD, with diagnostics.",
        "Examples: unweave llc runs/demo/modadd --checkpoint all --out runs/llc;  "
        "unweave llc rrr:5,3,5:1;  unweave llc rrr:5,3,5:1 --settings fixed --nbeta 10000 --epsilon 1e-5;  "
        "unweave llc --model smollm2-135m --per head --params model.layers.17",
    ),
    (
        app,
        "detect",
        DetectConfig,
        run_detect,
        "Flag inputs a model handles by an unusual mechanism; AUROC of each detector vs raw-input baselines.",
        "Examples: unweave detect --task planted-rule --out runs/detect;  "
        "unweave detect --task backdoor-mnist-corner --task backdoor-digits-pixel --poison-rate 0.1",
    ),
    (
        app,
        "scrub",
        ScrubConfig,
        run_scrub,
        "Test hypotheses by causal scrubbing and interchange interventions, scored per example by KL.",
        "Examples: unweave scrub modadd --out runs/scrub-modadd;  unweave scrub induction;  "
        "unweave scrub my_hypothesis.py --unclaimed mean",
    ),
    (
        sae_app,
        "train",
        SAETrainConfig,
        run_sae_train,
        "Train dictionaries (a sweep of k and widths in one pass) on stored or live activations.",
        "Examples: unweave sae train --store runs/cache-l15 --site model.layers.15 --k 16 --k 32 --width 4608 "
        "--out runs/sae;  unweave sae train --live --site model.layers.5.mlp:input --target-site "
        "model.layers.5.mlp --tokens 200000",
    ),
    (
        sae_app,
        "train-clt",
        CLTTrainConfig,
        run_clt_train,
        "Train a cross-layer transcoder: one encoder per layer's MLP input, decoders to that MLP's output and "
        "every later one's (live from the model on text).",
        "Example: unweave sae train-clt --model smollm2-135m --layers 3 --layers 6 --layers 9 --layers 12 "
        "--tokens 262144 --out runs/clt;  then unweave graph runs/clt --prompt '...'",
    ),
    (
        sae_app,
        "train-connected",
        ConnectedTrainConfig,
        run_connected_train,
        "Train sparse MLPs at several layers together with a penalty on the connections between consecutive "
        "layers' latents (live from the model on text).",
        "Example: unweave sae train-connected --model smollm2-135m --layers 3 --layers 6 --layers 9 --layers 12 "
        "--tokens 1048576 --out runs/connected;  then unweave graph runs/connected --prompt '...'",
    ),
    (
        app,
        "sites",
        SitesConfig,
        run_sites,
        "List a model's sites with their shapes on a short probe, and the named parts of its architecture.",
        "Examples: unweave sites smollm2-135m --out runs/sites;  unweave sites path/to/hf-model --tokens 16",
    ),
    (
        app,
        "runs",
        RunsConfig,
        run_runs,
        "One index page over every run folder under DIR: command, date, key figures, a link to each report.",
        "Example: unweave runs runs",
    ),
    (
        app,
        "mdl",
        MDLConfig,
        run_mdl,
        "Bits of each description of (network, dataset) within a tolerance on its output, and the shortest.",
        "Examples: unweave mdl tms:20,5 --out runs/mdl-tms;  unweave mdl runs/demo/modadd --out runs/mdl-modadd",
    ),
    (
        app,
        "graph",
        GraphConfig,
        run_graph,
        "Cut a network into modules whose effects on the output do not overlap, and check them by ablation.",
        "Examples: unweave graph two-tasks --out runs/graph-2;  unweave graph runs/demo/modadd --out runs/graph-modadd",
    ),
    (
        app,
        "fingerprint",
        FingerprintConfig,
        run_fingerprint,
        "Tell training runs apart by the algorithm they learned: fingerprints, distances, clusters, baselines.",
        "Example: unweave fingerprint runs/clock-s0 runs/clock-s1 runs/pizza-s0 runs/pizza-s1 --out runs/fingerprint",
    ),
    (
        app,
        "universality",
        UniversalityConfig,
        run_universality,
        "Which units of one run recur in another: max and mean-max correlation, one-to-one matches, CKA, a baseline.",
        "Examples: unweave universality tms;  unweave universality induction --seeds 0 --seeds 1;  "
        "unweave universality runs/modadd-s0 runs/modadd-s1",
    ),
    (
        app,
        "tails",
        TailsConfig,
        run_tails,
        "How heavy the tails of activations are: neurons, random directions and dictionary latents, log axes.",
        "Examples: unweave tails smollm2-135m --out runs/tails;  unweave tails runs/demo/modadd;  "
        "unweave tails smollm2-135m --dictionary runs/sae/topk-k32-w2304",
    ),
    (
        sae_app,
        "eval",
        SAEEvalConfig,
        run_sae_eval,
        "FVU, L0, dead/dense latents, density histogram, spliced KL and CE loss recovered, top snippets.",
        "Example: unweave sae eval runs/sae/topk-k32-w4608 --out runs/sae-eval",
    ),
    (
        app,
        "features",
        FeaturesConfig,
        run_features,
        "A browser over every latent of a dictionary on your text: contexts, histogram, output tokens, search.",
        "Example: unweave features runs/sae/topk-k32-w4608 --text my_notes.txt --tokens 100000 --out runs/features",
    ),
]
for row in COMMANDS:
    command(*row)


def main() -> None:
    """Entry point: user errors (bad names, values, missing packages) print one line, not a traceback."""
    from unweave.allocator import keep_freed_memory
    from unweave.hf import MissingPackageError

    keep_freed_memory()
    try:
        app()
    except (ValueError, FileNotFoundError, MissingPackageError) as err:  # LLCError, SiteError, StoreError too
        console.print(f"[bold red]error:[/] {err}")
        raise SystemExit(2) from None
