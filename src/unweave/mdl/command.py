"""`unweave mdl TARGET`: how many bits each description of (network, dataset) costs within
a tolerance on the network's output, which is shortest, and the bits of the weights beside
them; writes the run folder (record.json, mdl.json, mdl.html)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unweave import progress
from unweave.configs import setting
from unweave.mdl import plots
from unweave.mdl.describe import Row, describe, weight_bits
from unweave.mdl.program import program_bits
from unweave.mdl.streamed import CALIBRATION_TOKENS, describe_store
from unweave.mdl.targets import TARGETS, Target, resolve
from unweave.report import Report, Section
from unweave.runs import Run, RunResult
from unweave.zoo.modadd import answer_logits
from unweave.zoo.superposition import mean_max_cosine

DEFAULT_TOLERANCE = {"kl": 0.05, "output_fvu": 0.01}
UNITS = {"kl": "nats of mean KL", "output_fvu": "output FVU"}


@dataclass(frozen=True)
class MDLConfig:
    target: list[str] = setting(help=f"What to describe: {TARGETS}.", argument=True)
    out: Path = setting(Path("runs/mdl"), "Where record.json, mdl.json and mdl.html go.")
    tolerance: float | None = setting(
        None,
        "How far the output may move: mean KL in nats (default 0.05), or for the toy model of superposition "
        "the output's change as a fraction of its variance (default 0.01).",
    )
    examples: int = setting(4096, "Samples of the toy model of superposition to describe.")
    seed: int = setting(0, "Seed of the toy model, its samples and its dictionaries.")
    restarts: int = setting(3, "Toy model of superposition: dictionaries trained per width, each a candidate.")
    store: Path | None = setting(
        None, "With dictionary folders: the activation store (unweave cache) whose tokens are described."
    )
    calibration_tokens: int = setting(
        CALIBRATION_TOKENS, "With --store: tokens run through the model to find each quantisation step (KL)."
    )

    def __post_init__(self) -> None:
        if self.tolerance is not None and not self.tolerance > 0:
            raise ValueError(f"--tolerance must be positive, got {self.tolerance}")
        if self.restarts < 1:
            raise ValueError(f"--restarts must be at least 1, got {self.restarts}")
        if self.examples < 16:
            raise ValueError(f"--examples must be at least 16, got {self.examples}")
        if self.calibration_tokens < 2:
            raise ValueError(f"--calibration-tokens must be at least 2, got {self.calibration_tokens}")


def best_row(rows: list[Row]) -> Row:
    kept = [r for r in rows if r.total_bits is not None]
    if not kept:
        raise ValueError("no description keeps the output within the tolerance; raise --tolerance")
    return min(kept, key=lambda r: r.total_bits)


def known_answer(target: Target, rows: list[Row], best: Row) -> dict:
    """The toy's check: the best description writes with as many atoms as the toy represents
    features, and they are the features' directions. A dictionary's atoms are its decoder
    rows; the neurons' are +e_j and -e_j (in one dimension the two features a toy
    represents are +e and -e, and the neuron basis is exactly that dictionary)."""
    known = target.known
    if "true_directions" not in known:
        return {}
    atoms = target.bases[rows.index(best)].atoms()
    cosine = mean_max_cosine(known["true_directions"].double(), atoms.double()) if atoms is not None else None
    return {
        "rule": known["rule"],
        "n_features": known["n_features"],
        "represented_features": known["represented_features"],
        "best_basis": best.basis,
        "best_width": best.width,
        "best_atoms": len(atoms) if atoms is not None else None,
        "mean_max_cosine": cosine,
        "recovered": atoms is not None and len(atoms) == known["represented_features"] and cosine >= 0.99,
    }


def run_mdl(cfg: MDLConfig) -> RunResult:
    run = Run(cfg.out, "mdl", cfg, inputs=[t for t in cfg.target if not t.startswith("tms:")])
    target = resolve(cfg.target, cfg.examples, cfg.seed, cfg.restarts, cfg.store, cfg.calibration_tokens)
    results, lines = description_lengths(target, cfg.tolerance)
    report = Report(f"unweave mdl: description length of {target.name}")
    add_sections(report, report.summary(), target, results, lines)
    return run.finish(results, report, lines)


def description_lengths(target: Target, tolerance: float | None = None) -> tuple[dict, list[str]]:
    """Every description of the target within the tolerance (default by measure), the
    shortest, the weights' bits and (modular addition) the Fourier program: results and
    summary lines."""
    data = target.data
    tolerance = tolerance if tolerance is not None else DEFAULT_TOLERANCE[data.measure]
    side: list[dict] = []
    if target.stream is not None:
        counted = describe_store(target.bases, data, target.stream, tolerance)
        rows, side = counted.rows, counted.saebench
        store = {**target.store_info, "described_tokens": counted.n, "left_out_tokens": counted.left_out}
    else:
        rows = [describe(b, data, tolerance) for b in progress.track(target.bases, "descriptions at tolerance")]
        store = None
    best = best_row(rows)
    weights = weight_bits(data, tolerance)
    program = None
    if target.modadd is not None:
        model, mod, p, freqs = target.modadd
        program = program_bits(answer_logits(model, mod.tokens).detach(), mod.tokens, mod.labels, p, freqs, tolerance)
    known = known_answer(target, rows, best)
    results = {
        "target": target.name,
        "measure": data.measure,
        "tolerance": tolerance,
        "n": data.n,
        "rows": [r.to_dict() for r in rows],
        "best": best.to_dict(),
        "weights": weights.to_dict(),
        "program": program.to_dict() if program else None,
        "known_answer": known,
        "store": store,
        "saebench": side,
    }
    unit = UNITS[data.measure]
    lines = [
        f"shortest description: {best.basis} (width {best.width}) {best.total_bits:,.0f} bits "
        f"({best.bits_per_token:.3g} per example) within {tolerance:g} {unit}",
        "the network's weights at the same tolerance: "
        + (f"{weights.bits:,.0f} bits (raw float32: {weights.raw_bits:,})" if weights.bits else "tolerance not met"),
    ]
    if program:
        lines.append(
            f"the Fourier program ({len(program.freqs)} frequencies, 2 amplitudes each): "
            + (
                f"{program.bits:,.0f} bits, KL {program.kl:.2g}"
                if program.bits
                else f"KL {program.kl:.2g}, above tolerance"
            )
        )
    if side:
        lines.append(saebench_line(side))
    if known:
        lines.append(
            f"known answer: the toy represents {known['represented_features']} of {known['n_features']} features; "
            f"shortest: {best.basis}, width {best.width}, {known['best_atoms']} atoms; "
            f"mean max cosine {known['mean_max_cosine'] or float('nan'):.4f} "
            f"({'recovered' if known['recovered'] else 'NOT recovered'})"
        )
    return results, lines


def saebench_line(side: list[dict]) -> str:
    """How the dictionaries rank by SAEBench's quantity (codes' entropy, no parameters) and
    by their total bits."""
    by_saebench = [r["basis"] for r in sorted(side, key=lambda r: r["saebench_bits_per_token"])]
    counted = [r for r in side if r["unweave_bits_per_token"] is not None]
    by_total = [r["basis"] for r in sorted(counted, key=lambda r: r["unweave_bits_per_token"])]
    same = by_saebench[: len(by_total)] == by_total and len(by_total) == len(by_saebench)
    return (
        f"SAEBench's measure (no parameter bits) ranks the dictionaries {' < '.join(by_saebench)}; with parameter "
        f"bits: {' < '.join(by_total) or 'none within tolerance'}" + (" (the same order)" if same else "")
    )


def add_sections(report: Report, summary: Section, target: Target, results: dict, lines: list[str]) -> None:
    """The headline and explanation into `summary`, the curve, split and tables as sections."""
    best, weights, tolerance = results["best"], results["weights"], results["tolerance"]
    summary.headline(
        {
            "shortest description": f"{best['basis']} w={best['width']}",
            "its bits": f"{best['total_bits']:,.0f}",
            "weights' bits": f"{weights['bits']:,.0f}" if weights["bits"] else "not met",
        }
    )
    for line in lines:
        summary.text(line, summary=True)
    summary.text(
        f"{target.measure_note}. Every description keeps the network's output within {tolerance:g} "
        f"{UNITS[results['measure']]}. Bits are exact code lengths: parameters and values quantised with one "
        "relative step (the coarsest within the tolerance, by bisection), each tensor and each unit's values "
        "entropy-coded with a two-part enumerative code (histogram, then the sequence), which units are active "
        "coded per unit at its own frequency. A dictionary's encoder is not part of the description; an analytic "
        "basis whose codes follow from the input sends none."
    )
    rows = results["rows"]
    report.section("Description length: every description").figure(
        plots.mdl_curve(rows, weights["bits"], "Total bits against width")
    ).figure(plots.split_bars(rows, "Where the bits go")).table(
        [
            {
                "basis": r["basis"],
                "width": r["width"],
                "total bits": r["total_bits"],
                "bits / example": r["bits_per_token"],
                "parameter bits": r["param_bits"],
                "index bits": r["index_bits"],
                "value bits": r["value_bits"],
                "active / example": r["mean_active"],
                "distortion": r["kl"],
                "CE recovered": r["ce_recovered"],
                "within tolerance": r["meets_tolerance"],
                "shortest": r == best,
            }
            for r in rows
        ]
    )
    if results.get("saebench"):
        report.section("Description length: SAEBench's measure beside this one").text(
            "SAEBench's MDL evaluation gives each latent its firing entropy plus its firing rate times the entropy "
            "of its value histogram (equal bins from 0 to its largest value; the coarsest-per-bits bin count whose "
            "midpoint-quantised codes reconstruct within sqrt(MSE)/d_in < 0.01). It counts no parameter bits. "
            "Beside it: this command's exact code length of the codes alone, of the decoder's parameters spread "
            "over the store's tokens, and of both."
        ).table(
            [
                {
                    "dictionary": r["basis"],
                    "SAEBench bits / token": r["saebench_bits_per_token"],
                    "SAEBench bins": r["saebench_num_bins"],
                    "SAEBench viable": r["saebench_viable"],
                    "codes bits / token": r["unweave_code_bits_per_token"],
                    "parameter bits / token": r["unweave_param_bits_per_token"],
                    "total bits / token": r["unweave_bits_per_token"],
                }
                for r in results["saebench"]
            ]
        )
    report.section("Description length: the network itself").table(
        [{"quantity": k, "value": v} for k, v in weights.items()]
        + (
            [{"quantity": f"program {k}", "value": v} for k, v in results["program"].items()]
            if results["program"]
            else []
        )
    )
