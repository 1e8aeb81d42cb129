import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import SMALL_MODADD

from unweave.fingerprint.cluster import agreement, clusters, distances
from unweave.fingerprint.command import FingerprintConfig, run_fingerprint
from unweave.fingerprint.diagnostics import (
    all_logits,
    correct_logits,
    distance_irrelevance,
    gradient_symmetricity,
    sum_dependence,
)
from unweave.zoo.modadd import ModAddConfig, make_data, train
from unweave.zoo.transformer import Transformer

TINY = ModAddConfig(p=7, d_model=16, n_heads=2, d_mlp=32, steps=20, eval_every=10, checkpoint_every=10)


def _pairs(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")


def test_distance_irrelevance_is_zero_for_a_function_of_the_distance_and_one_for_the_sum():
    p = 11
    a, b = _pairs(p)
    values = torch.randn(p, dtype=torch.float64)
    assert distance_irrelevance(values[(a - b) % p]) == pytest.approx(0, abs=1e-12)
    # at a fixed distance d, a + b = 2a + d runs over every residue (p odd), so the spread is the whole spread
    assert distance_irrelevance(values[(a + b) % p]) == pytest.approx(1, abs=1e-12)
    # against a direct numpy computation of the definition on random logits
    rng = np.random.default_rng(0)
    L = rng.normal(size=(p, p))
    by_d = [np.std([L[i, (i + d) % p] for i in range(p)]) for d in range(p)]
    assert distance_irrelevance(torch.tensor(L)) == pytest.approx(np.mean(by_d) / L.std(), rel=1e-12)


def test_sum_dependence_is_the_r2_of_a_regression_on_the_sum():
    p = 7
    a, b = _pairs(p)
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(p, p, p)))
    assert sum_dependence(logits[(a + b) % p, 0]) == pytest.approx(1, abs=1e-12)  # (p, p, p): a function of a + b
    assert sum_dependence(logits[(a - b) % p, 0]) == pytest.approx(0, abs=1e-12)
    # independent: least squares of each answer's logits on indicators of a + b, pooled R^2
    onehot = np.eye(p)[((a + b) % p).flatten().numpy()]
    y = logits.reshape(p * p, p).numpy()
    y = y - y.mean(0)
    fit = onehot @ np.linalg.lstsq(onehot, y, rcond=None)[0]
    assert sum_dependence(logits) == pytest.approx((fit**2).sum() / (y**2).sum(), rel=1e-10)


def _symmetricity_by_hand(model: Transformer, p: int) -> float:
    """One forward and backward per triple, on an explicit embedding tensor."""
    cosines = []
    for a in range(p):
        for b in range(p):
            x = (model.W_E[torch.tensor([a, b, p])] + model.W_pos).detach().requires_grad_(True)
            h = x.unsqueeze(0)
            for block in model.blocks:
                h = block(h)
            logits = model.unembed(h)[0, -1]
            for c in range(p):
                (g,) = torch.autograd.grad(logits[c], x, retain_graph=True)
                cosines.append(torch.cosine_similarity(g[0].double(), g[1].double(), dim=0).item())
    return float(np.mean(cosines))


@pytest.mark.parametrize("attention", ["learned", "uniform"])
def test_gradient_symmetricity_against_one_triple_at_a_time(attention):
    cfg = dataclasses.replace(TINY, attention=attention)
    torch.manual_seed(0)
    model = Transformer(cfg.transformer())
    measured = gradient_symmetricity(model, make_data(cfg))
    assert measured == pytest.approx(_symmetricity_by_hand(model, cfg.p), abs=1e-6)
    if attention == "uniform":  # the network reads the operands through E_a + E_b only
        assert measured == pytest.approx(1, abs=1e-6)


def test_uniform_attention_has_no_queries_or_keys_and_attends_equally(tmp_path):
    cfg = dataclasses.replace(TINY, attention="uniform")
    run = train(cfg, tmp_path)
    model = run.load()
    assert not any("W_Q" in n or "W_K" in n for n, _ in model.named_parameters())
    from unweave.sites import capture

    pattern = capture(model, "blocks.0.attn.hook_pattern", make_data(cfg).tokens[:5])["blocks.0.attn.hook_pattern"]
    torch.testing.assert_close(pattern[0, 0], torch.tensor([[1, 0, 0], [1 / 2, 1 / 2, 0], [1 / 3, 1 / 3, 1 / 3]]))
    with pytest.raises(ValueError, match="attention must be one of"):
        ModAddConfig(attention="random")


def test_clusters_find_planted_groups_and_leave_one_group_whole():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [1.0, 0.5]])
    points = np.concatenate([c + 0.02 * rng.normal(size=(4, 2)) for c in centres])
    labels, choice = clusters(distances(points), 0.1)
    assert agreement(labels, ["x"] * 4 + ["y"] * 4) == 1.0 and choice["best_k"] == 2
    assert clusters(distances(points), 2.0)[0] == [0] * 8  # groups closer than the separation stay one
    alike = 0.02 * rng.normal(size=(6, 2))  # one group: spread below the separation
    assert clusters(distances(alike), 0.1)[0] == [0] * 6
    assert clusters(distances(points[[0, 4]]), 0.1)[0] == [0, 1]
    assert clusters(distances(points[[0, 1]]), 0.1)[0] == [0, 0]


@pytest.fixture(scope="module")
def clock_and_pizza_runs(small_modadd, tmp_path_factory):
    """Two clock runs (learned attention) and two pizza runs (uniform), seeds 0 and 1."""
    root = tmp_path_factory.mktemp("fingerprint")
    runs = {("learned", 0): small_modadd.dir}
    for attention, seed in (("learned", 1), ("uniform", 0), ("uniform", 1)):
        cfg = dataclasses.replace(SMALL_MODADD, attention=attention, seed=seed)
        runs[attention, seed] = train(cfg, root / f"{attention}-{seed}").dir
    return runs


def test_clock_and_pizza_show_the_papers_diagnostics(clock_and_pizza_runs):
    """Zhong et al. 2023: the pizza is gradient-symmetric and its logits depend on a - b as
    well as a + b; the clock is neither. At initialisation both are symmetric (attention
    starts near uniform), so the clock's asymmetry is learned."""
    from unweave.zoo.modadd import TrainedModAdd

    measured = {}
    for (attention, seed), path in clock_and_pizza_runs.items():
        run = TrainedModAdd.open(path)
        assert run.history[-1]["test_acc"] > 0.9  # both generalise (the pizza more slowly)
        model, data = run.load(), make_data(run.config)
        logits = all_logits(model, data)
        measured[attention, seed] = (
            gradient_symmetricity(model, data),
            distance_irrelevance(correct_logits(logits)),
            sum_dependence(logits),
        )
        if attention == "learned":
            torch.manual_seed(run.config.seed)
            assert gradient_symmetricity(Transformer(run.config.transformer()), data) > 0.9
    clock = [v for (a, _), v in measured.items() if a == "learned"]
    pizza = [v for (a, _), v in measured.items() if a == "uniform"]
    # Over seeds 0-5 the sum dependence ran 0.87-0.99 for the clock and 0.72-0.87 for the pizza
    # (a pure pizza, |cos(w(a-b)/2)| cos(w(a+b-c)), gives (2/pi)^2 / (1/2) = 0.81).
    assert all(c[0] < 0.8 and c[2] > 0.85 for c in clock), measured
    assert all(z[0] > 0.99 and z[2] < 0.9 for z in pizza), measured
    assert np.mean([z[2] for z in pizza]) < np.mean([c[2] for c in clock]) - 0.05, measured
    assert np.mean([z[1] for z in pizza]) < np.mean([c[1] for c in clock]), measured


def test_fingerprint_separates_clock_from_pizza_and_the_baselines_do_not(clock_and_pizza_runs, tmp_path):
    from test_cli import check_record, runner

    from unweave.cli import app

    paths = list(clock_and_pizza_runs.values())
    result = runner.invoke(app, ["fingerprint", *map(str, paths), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    check_record(tmp_path, "fingerprint", "fingerprint.json", "fingerprint.html", runs=[str(p) for p in paths])
    saved = json.loads((tmp_path / "fingerprint.json").read_text())
    clock, pizza = {str(p) for p in paths[:2]}, {str(p) for p in paths[2:]}
    assert sorted(map(set, saved["clusters"]), key=len) == sorted([clock, pizza], key=len)
    assert saved["known"]["recovered"]
    distances = np.array(saved["distances"])
    assert distances.shape == (4, 4) and np.allclose(distances, distances.T)
    weights = saved["comparisons"]["weights"]
    assert weights["adjusted_rand_index"] < 1 and weights["adjusted_rand_index_told_number_of_groups"] < 1
    page = (tmp_path / "fingerprint.html").read_text()
    assert "Distances: mechanism" in page and "Distances: weights" in page


def test_fingerprint_bad_input_is_a_clear_error(clock_and_pizza_runs, tmp_path):
    one = clock_and_pizza_runs["learned", 0]
    with pytest.raises(ValueError, match="at least two run folders"):
        run_fingerprint(FingerprintConfig(runs=[one], out=tmp_path / "a"))
    with pytest.raises(ValueError, match="given twice"):
        run_fingerprint(FingerprintConfig(runs=[one, one], out=tmp_path / "b"))
    other = train(TINY, tmp_path / "p7")
    with pytest.raises(ValueError, match="p 31 vs 7"):
        run_fingerprint(FingerprintConfig(runs=[one, other.dir], out=tmp_path / "c"))
    unfinished = tmp_path / "unfinished"
    train(dataclasses.replace(SMALL_MODADD, seed=5), unfinished, stop_after=1)
    with pytest.raises(FileNotFoundError, match="unfinished"):
        run_fingerprint(FingerprintConfig(runs=[one, unfinished], out=tmp_path / "d"))
