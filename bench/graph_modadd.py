"""Graph, modules and circuit of the modular-addition model (`unweave graph`): time per
step on this machine, and what was found. The target is under 1 minute on 2 cores.

    make bench BENCH_ARGS="--only graph_modadd"

By hand, from bench/: ../.venv/bin/python graph_modadd.py --modadd-run data/modadd
(the run folder of `unweave train modadd`, the demo's defaults: p=59, 3000 steps).
No peer computes this quantity (modules checked by ablation), so there is no side by side:
the edge attribution step is compared with auto-circuit in edges_vs_autocircuit.py.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import quick_option, table

from unweave.graph.carving import Carving, add_circuit, known_answer, unit_check
from unweave.graph.effects import effect_gram
from unweave.graph.modules import carve
from unweave.graph.targets import modadd_target


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--modadd-run", type=Path, required=True)
    quick_option(parser)
    args = parser.parse_args()
    start = time.perf_counter()
    target = modadd_target(args.modadd_run)
    loaded = time.perf_counter()
    gram = effect_gram(target.data)
    effects = time.perf_counter()
    modules, sep = carve(target.data, gram)
    carved = time.perf_counter()
    check = unit_check(target.data, gram, modules)
    checked = time.perf_counter()
    carving = Carving(target, gram, modules, sep, check, known_answer(target, gram, modules))
    add_circuit(carving)
    circuit = time.perf_counter()
    k = carving.known
    rows = [
        {"step": "load the run, activations, planted labels", "seconds": loaded - start},
        {"step": "unit effects by attribution (Gram)", "seconds": effects - loaded},
        {"step": "modules + separability by ablation", "seconds": carved - effects},
        {"step": "single-unit ablation check", "seconds": checked - carved},
        {"step": "circuit (grid + bisection)", "seconds": circuit - checked},
        {"step": "total (graph, modules, checks, circuit)", "seconds": circuit - start},
    ]
    print(
        f"{target.name}: {len(modules.modules)} modules of {modules.graph.number_of_nodes()} active units, largest "
        f"cross effect {sep.max_off_diagonal:.3f}, known answer {'recovered' if k['recovered'] else 'NOT recovered'}; "
        f"circuit {len(carving.circuit.units)} units; {torch.get_num_threads()} threads"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
