"""The planted two-circuit transformer (`zoo.two_circuits`) and its heads cut into modules:
the known answer for modules of attention heads. The circuits' heads are planted, so the cut
is checked against them; the separability figure is checked against the change of each
circuit's own logits, computed here from the planted layout."""

import pytest
import torch

from unweave.graph.carving import carve_target
from unweave.graph.effects import EffectData, effect_gram
from unweave.graph.modules import INACTIVE, MERGE, separability
from unweave.graph.targets import resolve
from unweave.zoo.two_circuits import CIRCUITS, TwoCircuits, TwoCircuitsConfig, accuracy, sample_tokens


def test_the_planted_circuits_compute_their_tasks():
    cfg = TwoCircuitsConfig()
    model = TwoCircuits(cfg)
    tokens = sample_tokens(512, cfg, seed=1)
    halves = tokens[:, 1 : 1 + cfg.length], tokens[:, 1 + cfg.length :]
    assert tokens.shape == (512, cfg.n_ctx) and torch.equal(*halves)
    # measured: A (induction) 0.88, B (two back) 0.92; chance is 1 / 8
    scores = accuracy(model, tokens)
    assert all(scores[name] > 0.8 for name in CIRCUITS), scores
    # every head's role is in its circuit, shuffled over the head indices
    assert sorted(model.head_circuit.tolist()) == [0] * 4 + [1] * 4
    assert all(f"circuit {CIRCUITS[c]}" in role for c, role in zip(model.head_circuit.tolist(), model.head_roles))


def test_the_modules_of_the_planted_heads_are_its_circuits():
    target = resolve("two-circuits", 256, seed=0, units="heads")
    carving = carve_target(target, seed=0)
    truth = target.truth
    assert carving.modules.inactive == [] and len(carving.modules.modules) == 2
    assert sorted(len({truth[u] for u in m}) for m in carving.modules.modules) == [1, 1]
    assert carving.known["recovered"] and carving.known["min_purity"] == 1.0
    # separability by ablation against the planted outputs: ablating circuit i's heads moves circuit
    # j's logits (the second half of the outputs, by construction) by this much of its own; the
    # circuits leak into each other through the positions both read (measured 0.17 A->B, 0.05 B->A)
    planted = [[u for u, c in enumerate(truth) if c == k] for k in (0, 1)]
    half = target.data.clean.shape[1] // 2
    blocks = (slice(0, half), slice(half, None))
    changes = [target.data.outputs(ablate=m) - target.data.clean for m in planted]
    leak = [float(changes[i][:, blocks[1 - i]].norm() / changes[i][:, blocks[i]].norm()) for i in (0, 1)]
    s = separability(target.data, planted).matrix
    assert s[0][1] == pytest.approx(leak[0], abs=0.06) and s[1][0] == pytest.approx(leak[1], abs=0.06), (s, leak)
    assert max(s[0][1], s[1][0]) < MERGE


def test_the_layer_0_heads_act_only_through_layer_1():
    # the previous-token heads write directions the unembedding does not read: by direct effects
    # they look idle, which is why heads are judged by their total effects
    target = resolve("two-circuits", 64, seed=0, units="heads")
    data = target.data
    direct = EffectData(data.model, data.inputs, data.units, data.output)
    for effects, idle in ((direct, True), (data, False)):
        own = effect_gram(effects).diagonal()
        layer0 = own[:4] / own.max()
        assert bool((layer0 < INACTIVE).all()) == idle, layer0


def test_bad_planted_configs_say_what_to_change():
    with pytest.raises(ValueError, match="even number"):
        TwoCircuitsConfig(tokens=7)
    with pytest.raises(ValueError, match="d_model must be a multiple of 4, at least 52"):
        TwoCircuitsConfig(d_model=32)
    with pytest.raises(ValueError, match="length must be between 2 and 16"):
        TwoCircuitsConfig(length=20)
    assert torch.equal(TwoCircuits().head_circuit, TwoCircuits().head_circuit)  # seeded


def test_unweave_graph_two_circuits_writes_the_heads_modules(tmp_path):
    import json

    from typer.testing import CliRunner

    from unweave.cli import app

    out = tmp_path / "graph"
    args = ["graph", "two-circuits", "--units", "heads", "--examples", "256", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    modules = json.loads((out / "modules.json").read_text())
    assert modules["known_answer"]["recovered"] and modules["known_answer"]["circuits"]["0"] == CIRCUITS[0]
    units = [u for m in modules["modules"] for u in m["units"]]
    assert sorted((u["site"], u["index"]) for u in units) == [
        (f"blocks.{layer}.attn.hook_z", head) for layer in (0, 1) for head in range(4)
    ]
    assert "L0.H0: circuit" in (out / "graph.html").read_text()  # each head's planted role, on hover


def test_edge_scores_find_the_planted_induction_circuit():
    # the edges of circuit A (induction), read off the planted roles, against every method's scores;
    # measured at 256 sequences, seeds 0-3: exact 1.0, EAP 0.93-0.98, EAP-IG 0.975-1.0
    from unweave.graph import induction

    case = induction.planted_case(128, seed=0)
    assert len(case.known["strict"]) == 12  # 2 x embed -> L0.v, 4 x L0 -> L1.k, 2 x (q, v, logits)
    auroc = induction.aurocs(case, induction.score_edges(case))["strict"]
    assert auroc["exact"] > 0.99 and min(auroc[m] for m in induction.METHODS if m.startswith("EAP-IG")) > 0.95, auroc
    assert auroc["EAP"] > 0.9, auroc
