"""Edge attribution patching (EAP) on the induction toy: unweave vs auto-circuit 1.0.1, same
model, same inputs, same quantity.

auto-circuit lives in its own virtualenv (bench/venv-autocircuit: the project's torch, then
auto-circuit 1.0.1 with TransformerLens, torch pinned), which `make bench` builds when
missing, then runs this and writes bench/RESULTS.md:

    make bench BENCH_ARGS="--only edges_vs_autocircuit"

By hand: `.venv/bin/python bench/peers.py autocircuit`, then from bench/:
../.venv/bin/python edges_vs_autocircuit.py [--sequences 256] [--repeats 5] [--quick]

The model is the induction toy (`unweave.zoo.induction`, two attention-only layers of 4
heads, trained here with its default seed); auto-circuit runs it rebuilt as a TransformerLens
HookedTransformer from the same weights (the logits are compared). Inputs: sequences of 24
tokens whose second half repeats the first, so the last token's successor is predictable;
corrupted inputs are fresh sequences of the same form. The quantity: for every edge
(component -> query, key or value input of a later head, or the logits), the gradient of
the mean logit of the right answer at the last position with respect to mixing that edge
between the clean and the corrupted run, at the clean run. Both sides include the
corrupted forward. The scores are matched edge by edge.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import best_of, quick_option, run_side, table
from safetensors.torch import load_file, save_file

from unweave.graph.edges import EdgeModel, corrupted_outputs, eap_scores
from unweave.zoo.induction import InductionConfig, repeated_sequences, train

HERE = Path(__file__).resolve().parent
PEER = HERE / "venv-autocircuit" / "bin" / "python"


def peer_name(name: str) -> str:
    """auto-circuit's node names ("Resid Start", "A0.1", "A1.0.Q", "Resid End") as unweave's."""
    if name == "Resid Start":
        return "embed"
    if name == "Resid End":
        return "logits"
    layer, head, *qkv = name[1:].split(".")
    return f"L{layer}.H{head}" + (f".{qkv[0].lower()}" if qkv else "")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sequences", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    quick_option(parser, sequences=64, repeats=2)
    args = parser.parse_args()
    if not PEER.exists():
        raise SystemExit(f"{PEER} is missing; build it with `make bench` or bench/peers.py autocircuit")
    threads = torch.get_num_threads()
    cfg = InductionConfig()
    model = train(cfg)
    em = EdgeModel(model)
    gen = torch.Generator().manual_seed(7)
    clean_full, _ = repeated_sequences(args.sequences, cfg.vocab, cfg.n_ctx + 1, gen, half=cfg.n_ctx // 2 + 1)
    corrupt_full, _ = repeated_sequences(args.sequences, cfg.vocab, cfg.n_ctx + 1, gen, half=cfg.n_ctx // 2 + 1)
    clean, corrupt, answers = clean_full[:, :-1], corrupt_full[:, :-1], clean_full[:, -1]

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1].gather(-1, answers[:, None]).mean()

    def ours() -> torch.Tensor:
        return eap_scores(em, clean, corrupted_outputs(em, corrupt), metric)

    _, ours_s = best_of(ours, repeats=args.repeats)
    scores = ours()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(work / "weights.safetensors"))
        data = {"clean": clean, "corrupt": corrupt, "answers": answers}
        save_file({k: v.contiguous() for k, v in data.items()}, str(work / "data"))
        job = {
            "weights": str(work / "weights.safetensors"),
            "data": str(work / "data"),
            "config": {k: getattr(cfg, k) for k in ("vocab", "n_ctx", "d_model", "n_heads")} | {"n_layers": 2},
            "threads": threads,
            "repeats": args.repeats,
            "out": str(work / "peer.safetensors"),
        }
        peer = run_side(PEER, HERE / "_autocircuit_side.py", job, work, "auto-circuit")
        peer_logits = load_file(str(work / "peer.safetensors"))["logits"]
    with torch.no_grad():
        logit_gap = float((model(clean)[:, -1] - peer_logits).abs().max())
    theirs = {(peer_name(e["source"]), peer_name(e["target"])): e["score"] for e in peer["edges"]}
    ours_by_edge = {(e.source, e.target): float(s) for e, s in zip(em.edges, scores)}
    shared = sorted(set(theirs) & set(ours_by_edge))
    a = torch.tensor([ours_by_edge[k] for k in shared])
    b = torch.tensor([theirs[k] for k in shared])
    peer_s = min(peer["seconds"])
    row = {
        "edges (unweave / auto-circuit / shared)": f"{len(ours_by_edge)} / {len(theirs)} / {len(shared)}",
        "unweave s": ours_s,
        "auto-circuit s": peer_s,
        "speed-up": peer_s / ours_s,
        "max |score difference|": float((a - b).abs().max()),
        "max |score|": float(a.abs().max()),
        "Pearson": float(torch.corrcoef(torch.stack([a, b]))[0, 1]),
        "max |logit difference|": logit_gap,
    }
    print(
        f"induction toy (2 attention-only layers x 4 heads), {args.sequences} sequences of {cfg.n_ctx} tokens, "
        f"EAP with the answer logit at the last position, {threads} threads, min of {args.repeats}"
    )
    print(table([row]))


if __name__ == "__main__":
    main()
