"""unweave.graph.lm_heads: a Hugging Face causal LM's attention heads as graph units, on a
tiny random Llama. Ablating a head is checked against a hook that edits the output
projection's input by hand, its baseline against means computed from captured activations,
and its attributed total effect against a finite difference."""

import json

import pytest
import torch

from unweave.graph.effects import EffectData
from unweave.graph.head_units import lm_heads
from unweave.graph.lm_heads import heads_on
from unweave.graph.prompt import TopLogits
from unweave.graph.units import SeveralUnits
from unweave.hf import load_model
from unweave.sites import capture

PROMPTS = ["kalo mi ren tha su vor kalo mi ren", "el qui dan or ith be na el qui dan", "su vor kalo su vor kalo su"]


@pytest.fixture(scope="module")
def llama(tiny_model_dir):
    folder = tiny_model_dir("llama")
    model, tokenizer = load_model(str(folder))
    return folder, model, tokenizer


def _o_proj(model, layer: int) -> torch.nn.Module:
    return model.model.layers[layer].self_attn.o_proj


def test_ablating_a_head_is_zeroing_its_columns_of_the_output_projections_input(llama):
    _, model, tokenizer = llama
    tokens = tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    heads = lm_heads(model)
    n_heads, d_head = heads[0].heads, heads[0].d_head
    output = TopLogits(torch.tensor([3, 7, 11]))
    data = EffectData(model, tokens, SeveralUnits(heads), output, ablate_to="zero", total=True)
    assert data.n_units == len(heads) * n_heads and data.names()[n_heads + 2] == "L1.H2"
    layer, head = 1, 2

    def zero(module, args):
        x = args[0].clone()
        x[..., head * d_head : (head + 1) * d_head] = 0
        return (x,)

    handle = _o_proj(model, layer).register_forward_pre_hook(zero)
    try:
        with torch.no_grad():
            expected = output(model(tokens))
    finally:
        handle.remove()
    assert torch.allclose(data.outputs(ablate=[layer * n_heads + head]), expected, atol=1e-5)
    assert not torch.allclose(expected, data.clean, atol=1e-3)  # the head does something


def test_a_heads_baseline_is_its_mean_over_the_prompts_after_the_first_position(llama):
    _, model, tokenizer = llama
    found = heads_on(model, tokenizer, "tiny", PROMPTS, skip_first=1)
    sites = [h.site for h in lm_heads(model)]
    rows = []
    for f in found:
        acts = capture(model, sites, f.data.inputs)
        rows.append(torch.cat([acts[s][0] for s in sites], -1))  # (positions, layers x heads x d_head)
    mean = torch.cat([r[1:] for r in rows]).mean(0)
    for f, own in zip(found, rows):
        width = own.shape[1] // len(sites)
        expected = own.clone()
        expected[1:] = mean
        per_layer = [expected[:, k * width : (k + 1) * width].flatten() for k in range(len(sites))]
        assert torch.allclose(f.data.baseline, torch.cat(per_layer), atol=1e-5)


def test_a_heads_attributed_total_effect_is_the_derivative_of_its_ablation(llama):
    _, model, tokenizer = llama
    f = heads_on(model, tokenizer, "tiny", PROMPTS[:2])[0]
    data = f.data
    attributed = torch.cat(list(data.attributed_effects()))[0]  # (outputs, units)
    t = 1e-3
    for unit in (0, 5):  # a layer-0 head acts on the outputs through layer 1 too
        mine = data.unit_of == unit
        moved = data.states[0].clone()
        moved[mine] += t * (data.baseline[mine] - moved[mine])
        nudged = EffectData(model, data.inputs, data.units, data.output, ablate_to=moved, total=True)
        measured = (nudged.outputs(ablate=[unit]) - data.clean)[0] / t
        assert torch.allclose(measured, attributed[:, unit], rtol=0.05, atol=1e-3 * attributed.abs().max())


def test_the_single_head_check_is_over_each_prompts_own_next_tokens(llama):
    """Against a loop over prompts and heads with no joining: each head ablated on each prompt,
    its 8 outputs' measured changes beside their attributed ones."""
    from scipy import stats

    from unweave.graph.dataset_modules import joined_effects
    from unweave.graph.lm_heads import head_check

    _, model, tokenizer = llama
    found = heads_on(model, tokenizer, "tiny", PROMPTS)
    joined = joined_effects(found)
    check = head_check(found, joined, count=5)
    predicted, measured = [], []
    for name in check.heads:
        for f in found:
            unit = [u for u in range(f.data.n_units) if joined.units[joined.unit_maps[0][u]] == name][0]
            measured += (f.data.outputs(ablate=[unit]) - f.data.clean)[0].tolist()
            predicted += torch.cat(list(f.data.attributed_effects()))[0, :, unit].tolist()
    assert len(predicted) == 5 * 3 * 8
    assert check.pearson == pytest.approx(stats.pearsonr(predicted, measured)[0], abs=1e-6)
    assert check.spearman == pytest.approx(stats.spearmanr(predicted, measured)[0], abs=1e-6)


def test_graph_of_a_language_models_heads(llama, tmp_path):
    from test_cli import runner

    from unweave.cli import app
    from unweave.graph.command import GraphConfig, run_graph

    folder, _, _ = llama
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "heads"
    result = runner.invoke(
        app, ["graph", str(folder), "--units", "heads", "--prompts", str(prompts), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    modules = json.loads((out / "modules.json").read_text())
    units = [u for m in modules["modules"] for u in m["units"]] + modules["inactive"]
    assert sorted((u["site"], u["index"]) for u in units) == sorted(
        (f"model.layers.{layer}.self_attn.o_proj:input", h) for layer in range(2) for h in range(4)
    )
    assert all(u["kind"] == "head" for u in units) and len(modules["modules"][0]["per_prompt"]) == 3
    drawn = json.loads((out / "graph.json").read_text())
    assert [h["name"] for h in drawn["heads"]] == [f"L{layer}.H{h}" for layer in range(2) for h in range(4)]
    assert sum(h["induction_score"] is not None for h in drawn["heads"]) == 4  # half the heads of a small model
    assert sum(h["effect_share"] for h in drawn["heads"]) == pytest.approx(1)
    assert -1 <= drawn["check"]["pearson"] <= 1 and len(drawn["check"]["heads"]) == 8
    page = (out / "graph.html").read_text()
    assert "Single heads, attributed vs measured" in page and "Induction heads" in page
    for kwargs, message in (
        ({}, "give --prompt TEXT or --prompts FILE"),
        ({"prompt": "kalo mi", "prompts": prompts}, "give --prompt TEXT or --prompts FILE"),
        ({"prompt": "kalo mi ren", "kl_budget": 0.1}, "leave out --kl-budget"),
        ({"prompt": "kalo"}, "token"),
    ):
        with pytest.raises(ValueError, match=message):
            run_graph(GraphConfig(str(folder), units="heads", out=tmp_path / "bad", **kwargs))
    with pytest.raises(ValueError, match="or a causal language model"):
        GraphConfig("two-tasks", units="heads")
    run_folder = tmp_path / "modadd-run"  # a modular-addition run keeps a config.json too, without model_type
    run_folder.mkdir()
    (run_folder / "config.json").write_text(json.dumps({"p": 5, "d_model": 16}))
    with pytest.raises(ValueError, match="or a causal language model"):
        GraphConfig(str(run_folder), units="heads")
