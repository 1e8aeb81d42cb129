"""unweave.graph: unit effects against exact ablation, modules against planted answers, the
separability check, the command's files and its errors."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from unweave.graph.carving import carve_target
from unweave.graph.circuit import find_circuit
from unweave.graph.command import GraphConfig, run_graph
from unweave.graph.effects import EffectData, centred_logits, effect_gram
from unweave.graph.modules import carve, separability
from unweave.graph.targets import modadd_target, resolve
from unweave.graph.units import Units
from unweave.zoo.modadd import make_data
from unweave.zoo.two_tasks import TwoTasks, TwoTasksConfig, sample_inputs


def _mlp(nonlinear: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Identity(), nn.Tanh() if nonlinear else nn.Identity(), nn.Linear(7, 3))


def _exact_effects(data: EffectData, units: int) -> torch.Tensor:
    """(examples, outputs, units): each unit mean-ablated alone, the change measured."""
    clean = data.outputs()
    return torch.stack([data.outputs(ablate=[u]) - clean for u in range(units)], -1)


def test_attribution_equals_exact_ablation_on_a_linear_model_and_not_on_a_curved_one():
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(1))
    for nonlinear in (False, True):
        data = EffectData(_mlp(nonlinear), x, Units("1"), lambda y: y, batch_size=128)
        attributed = torch.cat(list(data.attributed_effects()))
        exact = _exact_effects(data, 7)
        error = float((attributed - exact).norm() / exact.norm())
        assert error < 1e-5 if not nonlinear else error > 1e-3  # first order: exact only where linear


def test_effect_gram_is_the_inner_product_of_measured_effects():
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(2))
    data = EffectData(_mlp(False), x, Units("1"), lambda y: y, batch_size=64)
    exact = _exact_effects(data, 7).flatten(0, 1).double()
    np.testing.assert_allclose(effect_gram(data).numpy(), (exact.T @ exact).numpy(), rtol=1e-4, atol=1e-8)


def test_units_at_a_position_are_read_at_that_position(small_modadd):
    from unweave.zoo.modadd import TrainedModAdd

    run = TrainedModAdd.open(small_modadd.dir)
    model = run.load()
    tokens = make_data(run.config).tokens[:64]
    data = EffectData(model, tokens, Units("blocks.0.mlp.hook_post", -1), lambda o: centred_logits(o[:, -1]))
    attributed = torch.cat(list(data.attributed_effects()))[..., :16]
    exact = _exact_effects(data, 16)  # the neurons' only reader is the unembedding: linear, so exact
    assert float((attributed - exact).norm() / exact.norm()) < 1e-4


@pytest.mark.parametrize("seed", [0, 3])
def test_two_tasks_splits_into_its_tasks_and_the_tasks_are_separable(seed):
    target = resolve("two-tasks", examples=2048, seed=seed)
    carving = carve_target(target, seed=seed)
    task = target.truth
    assert len(carving.modules.modules) == 2
    for module in carving.modules.modules:
        share = max(np.mean([task[u] == t for u in module]) for t in (0, 1))
        assert share >= 0.95
    assert carving.separability.max_off_diagonal <= 0.05
    assert carving.known["recovered"]


def test_separability_catches_a_cut_through_an_interacting_part_and_carve_mends_it():
    cfg = TwoTasksConfig(seed=5)
    model = TwoTasks(cfg).eval()
    data = EffectData(model, sample_inputs(2048, cfg, 1), Units("mlp.hook_post"), lambda y: y)
    task_a = (model.neuron_task == 0).nonzero().flatten().tolist()
    task_b = (model.neuron_task == 1).nonzero().flatten().tolist()
    wrong = separability(data, [task_a[::2], task_a[1::2], task_b])  # task A cut in two
    assert wrong.matrix[0][1] > 0.5 and wrong.matrix[1][0] > 0.5
    right = separability(data, [task_a, task_b])
    assert right.max_off_diagonal < 0.01
    modules, _ = carve(data, effect_gram(data))
    assert sorted(map(sorted, modules.modules)) == sorted([task_a, task_b])


def _dominant_frequencies(acts: np.ndarray, p: int) -> np.ndarray:
    """Independent of unweave.zoo.fourier: numpy's 2-D FFT of each neuron over (a, b); the
    power at (ka, kb) (folded to 0..p/2) counted for k when each of ka, kb is 0 or k."""
    grid = acts.T.reshape(-1, p, p)
    power = np.abs(np.fft.fft2(grid - grid.mean(axis=(1, 2), keepdims=True))) ** 2
    k = np.minimum(np.arange(p), p - np.arange(p))
    ka, kb = np.meshgrid(k, k, indexing="ij")
    per_k = [power[:, ((ka == f) | (ka == 0)) & ((kb == f) | (kb == 0))].sum(1) for f in range(1, (p + 1) // 2)]
    return np.stack(per_k, 1).argmax(1) + 1


def test_modular_addition_splits_into_its_key_frequencies_one_to_one(small_modadd):
    target = modadd_target(small_modadd.dir)
    carving = carve_target(target, seed=0)
    p = small_modadd.config.p
    acts = target.data.activations.numpy()
    freq = _dominant_frequencies(acts, p)
    # key frequencies, independently: the embedding's power per frequency by numpy's FFT
    W_E = target.data.model.W_E.detach().numpy()[:p]
    spec = (np.abs(np.fft.fft(W_E, axis=0)) ** 2).sum(1)[1 : (p + 1) // 2]
    keys = sorted(int(k) + 1 for k in np.nonzero(spec / spec.sum() >= 0.05)[0])
    majority = []
    for module in carving.modules.modules:
        values, counts = np.unique(freq[module], return_counts=True)
        majority.append(int(values[counts.argmax()]))
        assert counts.max() / len(module) >= 0.95
    assert sorted(majority) == keys
    assert carving.known["recovered"]


def test_graph_command_writes_graph_modules_and_page(tmp_path):
    result = run_graph(GraphConfig("two-tasks", out=tmp_path, examples=512, seed=1))
    graph = json.loads((tmp_path / "graph.json").read_text())
    modules = json.loads((tmp_path / "modules.json").read_text())
    assert {n["id"] for n in graph["nodes"]} == set(range(64))
    assert all(e["weight"] > 0 and e["source"] != e["target"] for e in graph["edges"])
    units = [u for m in modules["modules"] for u in m["units"]]
    assert sorted(u["index"] for u in units) == list(range(64)) and units[0]["site"] == "mlp.hook_post"
    assert len(modules["separability"]) == len(modules["modules"]) == 2
    assert result.report.exists() and "recovered" in " ".join(result.summary)


def test_bad_targets_and_inputs_say_what_to_use(tmp_path):
    with pytest.raises(ValueError, match="two-tasks"):
        resolve(str(tmp_path), examples=64, seed=0)
    with pytest.raises(ValueError, match=r"\(batch, 16\)"):
        TwoTasks()(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="examples"):
        GraphConfig("two-tasks", examples=2)
    # a budget that resampling everything already meets: the pruned circuit would be empty
    logits = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 5, (20,), generator=torch.Generator().manual_seed(1))
    noise = torch.randn(20, 5, generator=torch.Generator().manual_seed(2))
    slightly = lambda kept: logits + 0.1 * (3 - len(kept)) * noise  # noqa: E731
    with pytest.raises(ValueError, match="would be empty; lower the budget"):
        find_circuit([0, 1, 2], slightly, logits, labels, budget=1.0)
    assert find_circuit([0, 1, 2], slightly, logits, labels, budget=0.0).units == [0, 1, 2]


def test_per_example_kl_matches_scipy():
    from scipy.stats import entropy

    from unweave.graph.circuit import per_example_kl

    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(20, 9, generator=gen), torch.randn(20, 9, generator=gen)
    expected = [entropy(p, q) for p, q in zip(a.softmax(-1).numpy(), b.softmax(-1).numpy())]
    np.testing.assert_allclose(per_example_kl(a, b).numpy(), expected, rtol=1e-6)


def test_circuit_is_the_smallest_prefix_within_the_budget_and_its_areas_are_right(small_modadd, tmp_path):
    from scipy.integrate import trapezoid

    from unweave.graph.carving import add_circuit

    carving = carve_target(modadd_target(small_modadd.dir), seed=0)
    add_circuit(carving, budget=0.1, quantile=0.9)
    k = carving.circuit
    by_size = {p.size: p for p in k.curve}
    n = carving.modules.graph.number_of_nodes()
    assert by_size[0].faithfulness == 0 and abs(by_size[n].faithfulness - 1) < 1e-4  # inactive units stay ablated
    assert np.quantile(k.kl, 0.9) <= 0.1 and by_size[len(k.units) - 1].kl_quantile > 0.1  # smallest: one less fails
    sizes = [p.size / n for p in k.curve]
    assert abs(k.cpr - trapezoid([p.faithfulness for p in k.curve], sizes)) < 1e-9
    assert abs(k.cmd_per_example - trapezoid([p.per_example_gap for p in k.curve], sizes)) < 1e-9
    # the circuit's KL recomputed from scratch: every other unit of the site set to its mean
    data = carving.target.data
    rest = [u for u in range(data.n_units) if u not in set(k.units)]
    p_full = data.outputs().double().log_softmax(-1)
    p_circ = data.outputs(ablate=rest).double().log_softmax(-1)
    np.testing.assert_allclose(k.kl, (p_full.exp() * (p_full - p_circ)).sum(-1).numpy(), rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="raise the budget"):
        add_circuit(carving, budget=1e-30, quantile=1.0)


# -- edges between components ---------------------------------------------------------------
def _zoo_transformer(d_mlp: int):
    from unweave.zoo.transformer import Transformer, TransformerConfig

    torch.manual_seed(3)
    return Transformer(TransformerConfig(vocab=11, n_ctx=8, d_model=16, n_heads=2, d_mlp=d_mlp, n_layers=2)).eval()


def test_edge_forward_is_the_model_and_all_corrupted_is_the_corrupted_run():
    from unweave.graph.edges import EdgeModel, corrupted_outputs

    model = _zoo_transformer(d_mlp=12)
    em = EdgeModel(model)
    gen = torch.Generator().manual_seed(0)
    tokens, other = torch.randint(11, (5, 8), generator=gen), torch.randint(11, (5, 8), generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(em.forward(tokens)[0], model(tokens), rtol=1e-5, atol=1e-5)
        corrupted = em.forward(tokens, torch.zeros(len(em.edges)), corrupted_outputs(em, other))[0]
        torch.testing.assert_close(corrupted, model(other), rtol=1e-5, atol=1e-5)
    # 2 layers x 2 heads x (q, k, v), each from every earlier component; MLPs; logits from all 7
    assert len(em.edges) == 2 * 3 * 1 + 3 + 2 * 3 * 4 + 6 + 7


def test_eap_is_exact_on_edges_into_the_logits_for_a_linear_metric_and_ig_sums_to_the_gap():
    from unweave.graph.edges import EdgeModel, corrupted_outputs, eap_ig_scores, eap_scores, exact_scores

    em = EdgeModel(_zoo_transformer(d_mlp=0))
    gen = torch.Generator().manual_seed(1)
    tokens, other = torch.randint(11, (6, 8), generator=gen), torch.randint(11, (6, 8), generator=gen)
    corrupt = corrupted_outputs(em, other)
    weights = torch.randn(11, generator=gen)

    def metric(logits):  # linear in the logits
        return (logits * weights).sum(-1).mean()

    exact, eap = exact_scores(em, tokens, corrupt, metric), eap_scores(em, tokens, corrupt, metric)
    into_logits = [i for i, e in enumerate(em.edges) if e.target == "logits"]
    torch.testing.assert_close(eap[into_logits], exact[into_logits], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(eap, exact, rtol=1e-2, atol=1e-3)  # through attention it is first order only
    with torch.no_grad():
        gap = float(metric(em.forward(tokens)[0]) - metric(em.forward(other)[0]))
    assert abs(float(eap_ig_scores(em, tokens, corrupt, metric, steps=64).sum()) - gap) < 0.01 * abs(gap)


def test_per_input_ig_sums_to_the_effect_of_corrupting_each_input():
    from unweave.graph.edges import EdgeModel, corrupted_outputs, eap_ig_per_input_scores

    em = EdgeModel(_zoo_transformer(d_mlp=12))
    gen = torch.Generator().manual_seed(2)
    tokens, other = torch.randint(11, (6, 8), generator=gen), torch.randint(11, (6, 8), generator=gen)
    corrupt = corrupted_outputs(em, other)

    def metric(logits):  # nonlinear in the logits
        return logits.log_softmax(-1)[..., 0].mean()

    scores = eap_ig_per_input_scores(em, tokens, corrupt, metric, steps=64)
    with torch.no_grad():
        clean = float(metric(em.forward(tokens)[0]))
        for into in em.into.values():  # every edge into this input corrupted, the rest clean
            alpha = torch.ones(len(em.edges))
            alpha[into] = 0
            effect = clean - float(metric(em.forward(tokens, alpha, corrupt)[0]))
            assert float(scores[into].sum()) == pytest.approx(effect, rel=0.01, abs=1e-4)


def test_induction_edges_recover_the_known_circuit(induction_model):
    from unweave.graph.induction import aurocs, induction_case, node_check, score_edges

    case = induction_case(examples=64, seed=0, model=induction_model)
    scores = score_edges(case)
    auroc = aurocs(case, scores)["strict"]
    assert auroc["exact"] >= 0.95 and auroc["EAP"] >= 0.95
    assert auroc["EAP-IG (activations)"] >= 0.85 and auroc["EAP-IG (inputs)"] >= 0.85  # below 0.95: see README
    assert auroc["EAP-IG (per input)"] >= 0.95
    nodes = node_check(case, scores)  # whole components ablated, against the sums of their edges
    assert nodes["EAP"]["pearson"] > 0.9
    exact_sum = nodes["exact"]["predicted"]
    assert exact_sum[nodes["components"].index("L1.H0")] == pytest.approx(nodes["measured"][5], rel=1e-4)


def test_edges_need_a_zoo_transformer():
    from unweave.graph.edges import EdgeModel

    with pytest.raises(TypeError, match="zoo Transformer"):
        EdgeModel(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="pos <= 8"):  # longer than the model's context
        EdgeModel(_zoo_transformer(d_mlp=0)).forward(torch.zeros(2, 9, dtype=torch.long))


def test_graph_induction_writes_scored_edges_and_a_circuit_of_edges(tmp_path, monkeypatch, induction_model):
    from unweave.graph import induction

    def trained(cfg):  # the session's model is seed 0's: training is tested elsewhere, and takes 20 s
        assert cfg.seed == 0
        return induction_model

    monkeypatch.setattr(induction, "train", trained)
    result = run_graph(GraphConfig("induction", out=tmp_path, examples=48))
    graph = json.loads((tmp_path / "graph.json").read_text())
    circuit = json.loads((tmp_path / "circuit.json").read_text())
    assert len(graph["edges"]) == 81 and {"exact", "EAP", "EAP-IG (activations)"} <= set(graph["edges"][0])
    assert graph["auroc"]["strict"]["exact"] >= 0.95
    assert np.quantile(circuit["kl"], circuit["quantile"]) <= circuit["budget"]
    assert set(circuit["units"]) <= {f"{e['source']} -> {e['target']}" for e in graph["edges"]}
    assert "ROC AUC" in " ".join(result.summary)
