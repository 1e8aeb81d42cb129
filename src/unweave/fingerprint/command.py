"""`unweave fingerprint RUN...`: a fingerprint of each modular-addition run by the algorithm
its network computes, distances between runs, clusters found without the answer, and the
same for two baselines (raw weights, loss curves); writes record.json, fingerprint.json and
fingerprint.html. The runs' attention setting (learned: clock, uniform: pizza) is the known
answer, read only to score the clusters afterwards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unweave import progress
from unweave.configs import setting
from unweave.fingerprint import plots
from unweave.fingerprint.cluster import (
    MIN_SILHOUETTE,
    agreement,
    clusters,
    cut,
    distances,
    embedding,
    groups,
)
from unweave.fingerprint.measure import (
    BEHAVIOURAL,
    DIAGNOSTICS,
    MIN_SEPARATION,
    RunFingerprint,
    fingerprint,
    loss_curve_vectors,
    open_runs,
    weight_vectors,
)
from unweave.report import Report
from unweave.runs import Run, RunResult

ALGORITHM = {"learned": "clock", "uniform": "pizza"}  # Zhong et al. 2023


@dataclass(frozen=True)
class FingerprintConfig:
    runs: list[Path] = setting(
        help="Modular-addition run folders (from `unweave train modadd`), all of one modulus and network shape.",
        argument=True,
    )
    out: Path = setting(Path("runs/fingerprint"), "Where record.json, fingerprint.json and fingerprint.html go.")
    seed: int = setting(0, "Seed of the 2-D embedding of the distances.")


@dataclass
class Comparison:
    """One kind of fingerprint over all runs: distances, clusters, and their score."""

    name: str
    what: str
    dist: np.ndarray
    labels: list[int]
    choice: dict
    agreement: float  # adjusted Rand index against the known grouping
    agreement_told_k: float  # the same when cut into the known number of groups

    def json(self, names: list[str]) -> dict:
        return {
            "what": self.what,
            "distances": self.dist.round(6).tolist(),
            "clusters": groups(self.labels, names),
            "choice": self.choice,
            "adjusted_rand_index": self.agreement,
            "adjusted_rand_index_told_number_of_groups": self.agreement_told_k,
        }


def compare(name: str, what: str, vectors: np.ndarray, known: list[str], separation: float) -> Comparison:
    dist = distances(vectors)
    labels, choice = clusters(dist, separation)
    told = cut(dist, len(set(known)))
    return Comparison(name, what, dist, labels, choice, agreement(labels, known), agreement(told, known))


def comparisons(prints: list[RunFingerprint], runs: list, known: list[str]) -> list[Comparison]:
    out = [
        compare(
            "mechanism",
            f"the diagnostics {', '.join(DIAGNOSTICS)}",
            _matrix(prints, DIAGNOSTICS),
            known,
            MIN_SEPARATION,
        ),
        compare(
            "behaviour",
            f"the diagnostics that read only inputs and logits ({', '.join(BEHAVIOURAL)})",
            _matrix(prints, BEHAVIOURAL),
            known,
            MIN_SEPARATION,
        ),
        # the baselines get the silhouette rule alone: their units are not the diagnostics'
        compare("weights", "the raw final weights (parameters every run has)", weight_vectors(runs), known, 0.0),
    ]
    curves = loss_curve_vectors(runs)
    if curves is not None:
        out.append(
            compare("loss curves", "log10 train and test loss at the shared evaluation steps", curves, known, 0.0)
        )
    return out


def _matrix(prints: list[RunFingerprint], names: tuple[str, ...]) -> np.ndarray:
    return np.array([fp.vector(names) for fp in prints])


def _rows(prints: list[RunFingerprint], labels: list[int]) -> list[dict]:
    """The report's table: each run's fingerprint with its cluster, key frequencies as text."""
    return [
        {"cluster": label, **fp.json(), "key_frequencies": " ".join(map(str, fp.key_frequencies))}
        for fp, label in zip(prints, labels)
    ]


def run_fingerprint(cfg: FingerprintConfig) -> RunResult:
    run = Run(cfg.out, "fingerprint", cfg, inputs=cfg.runs)
    trained = open_runs(list(cfg.runs))
    names = [str(p) for p in cfg.runs]
    task = progress.Task("fingerprinting runs", total=len(trained), unit="runs")
    prints = []
    for path, one in zip(cfg.runs, trained):
        prints.append(fingerprint(one, path))
        task.advance()
    task.close()
    known = [ALGORITHM[fp.attention] for fp in prints]
    found = comparisons(prints, trained, known)
    main = found[0]
    recovered = main.agreement == 1.0
    results = {
        "runs": names,
        "fingerprints": [fp.json() for fp in prints],
        "clusters": groups(main.labels, names),
        "distances": main.dist.round(6).tolist(),
        "comparisons": {c.name: c.json(names) for c in found},
        "known": {"algorithm": dict(zip(names, known)), "recovered": recovered},
        "rule": {"min_silhouette": MIN_SILHOUETTE, "min_separation": MIN_SEPARATION},
    }
    report = _report(cfg, prints, found, known, recovered)
    lines = [
        f"fingerprinted {len(names)} runs: {len(results['clusters'])} clusters by mechanism "
        f"(adjusted Rand index {main.agreement:.2f} against clock/pizza: "
        f"{'recovered' if recovered else 'NOT recovered'})",
        *(f"  {c.name}: {len(set(c.labels))} clusters, adjusted Rand index {c.agreement:.2f}" for c in found[1:]),
    ]
    return run.finish(results, report, lines)


def _report(
    cfg: FingerprintConfig, prints: list[RunFingerprint], found: list[Comparison], known: list[str], recovered: bool
) -> Report:
    names = [fp.path for fp in prints]
    short = [Path(n).name or n for n in names]
    if len(set(short)) < len(short):  # folders of one name in different places: the plots need distinct labels
        short = names
    main = found[0]
    report = Report(f"unweave fingerprint: {len(names)} modular-addition runs")
    report.summary().headline(
        {
            "runs": len(names),
            "clusters": len(set(main.labels)),
            **{f"ARI, {c.name}": round(c.agreement, 3) for c in found},
        }
    ).text(
        f"Clusters by mechanism: {groups(main.labels, short)}. Against the known algorithms (learned attention: "
        f"clock, uniform: pizza) the clusters are {'exactly right' if recovered else 'not right'}.",
        summary=True,
    )
    rows = _rows(prints, main.labels)
    report.section("Fingerprints").text(
        "Each run's diagnostics (Zhong et al. 2023): gradient symmetricity near 1 and distance irrelevance "
        "low for the pizza, the reverse for the clock; sum dependence, the share of the logits' variance that is "
        "a function of a + b alone, is 1 for an exact clock. Key frequencies differ between seeds; the diagnostics "
        "do not depend on them. Uniform attention makes gradient symmetricity 1 by construction, so the "
        "'behaviour' comparison below leaves it out."
    ).table(rows, sortable=True).figure(
        plots.diagnostics_scatter(rows, "gradient_symmetricity", "distance_irrelevance", main.labels)
    ).figure(plots.diagnostics_scatter(rows, "distance_irrelevance", "sum_dependence", main.labels))
    rule = (
        f"Clusters: average linkage, cut at the number of clusters with the best silhouette; kept when the "
        f"silhouette is at least {MIN_SILHOUETTE} and (for the diagnostics) the clusters join farther apart than "
        f"{MIN_SEPARATION:.2f} (half the distance between the published clock and pizza, Zhong et al. 2023); "
        "otherwise one cluster. The known grouping is read only to score them (adjusted Rand index)."
    )
    for c in found:
        section = report.section(f"Distances: {c.name}").text(f"Fingerprint: {c.what}. {rule if c is main else ''}")
        section.table(
            [
                {
                    "clusters": len(set(c.labels)),
                    "best silhouette": c.choice.get("silhouette", ""),
                    "adjusted Rand index": c.agreement,
                    "adjusted Rand index, told the number of groups": c.agreement_told_k,
                }
            ]
        )
        section.figure(plots.distance_matrix(c.dist, short, f"Distances between runs: {c.name}"))
        section.figure(
            plots.runs_map(
                embedding(c.dist, cfg.seed), short, c.labels, known, f"Runs by {c.name} (MDS of the distances)"
            )
        )
    return report
