"""unweave.graph with a dictionary's latents as units: the split y = decode(f) + e is exact,
attributions equal a closed form through the unembedding, the units (error included) account
for all of the output, and the transcoder target recovers the frequencies."""

import json

import numpy as np
import pytest
import torch

from unweave.dictionaries.sae import SAE, SAEConfig
from unweave.graph.command import GraphConfig, run_graph
from unweave.graph.dictionary_units import DictionaryUnits
from unweave.graph.effects import EffectData, centred_logits
from unweave.sites import SiteError, capture, patch
from unweave.zoo.modadd import ModAddConfig, make_data
from unweave.zoo.transformer import Transformer

OUT, IN = "blocks.0.hook_mlp_out", "blocks.0.hook_resid_mid"
CFG = ModAddConfig(p=11, d_model=16, n_heads=2, d_mlp=32)


def _case(skip: bool = False) -> tuple[Transformer, torch.Tensor, SAE]:
    torch.manual_seed(0)
    model = Transformer(CFG.transformer()).eval()
    sae = SAE(SAEConfig(16, 24, "topk", k=3, kind="transcoder", d_out=16, skip=skip), seed=1)
    with torch.no_grad():  # a random transcoder: the split must be exact whatever it is
        sae.b_enc.normal_()
        sae.b_dec.normal_()
        if skip:
            sae.W_skip.normal_()
    return model, make_data(CFG).tokens, sae


def _answer(out: torch.Tensor) -> torch.Tensor:
    return centred_logits(out[:, -1])


@pytest.mark.parametrize("skip", [False, True])
def test_latents_and_error_rebuild_the_site_and_attributions_follow_the_unembedding(skip):
    model, tokens, sae = _case(skip)
    data = EffectData(model, tokens, DictionaryUnits(OUT, sae, IN, -1), _answer, batch_size=50)
    # the split is exact: reading the units changes nothing
    torch.testing.assert_close(data.outputs(ablate=[]), _answer(model(tokens)).detach())
    acts = capture(model, [IN, OUT], tokens)
    x, y = acts[IN][:, -1], acts[OUT][:, -1]
    f = sae.encode(x).detach()
    e = (y - sae.decode(f, x)).detach()
    vectors = ([(x @ sae.W_skip).detach()] if skip else []) + [e]  # the skip path is a unit of its own
    torch.testing.assert_close(data.states, torch.cat([f, *vectors], 1))
    # after the MLP, the answer is linear in y: d(answer)/dy = C W_U with C the centring
    readout = model.unembed.weight.detach()
    readout = readout - readout.mean(0)  # (p, d): centred logits = readout @ resid
    latents = -torch.einsum("od,nd,bn->bon", readout, sae.W_dec.detach(), f - f.mean(0))
    expected = torch.cat([latents, *[-((v - v.mean(0)) @ readout.T).unsqueeze(-1) for v in vectors]], -1)
    attributed = torch.cat(list(data.attributed_effects()))
    torch.testing.assert_close(attributed, expected, rtol=1e-4, atol=1e-5)
    # every unit ablated = the MLP's output at '=' set to its mean: the error keeps the account whole
    every = data.outputs(ablate=range(data.n_units))

    def at_mean(act: torch.Tensor) -> torch.Tensor:
        return torch.cat([act[:, :-1], y.mean(0).expand(len(act), 1, -1)], 1)

    with torch.no_grad(), patch(model, {OUT: at_mean}):
        torch.testing.assert_close(every, _answer(model(tokens)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(attributed.sum(-1), every - data.clean, rtol=1e-4, atol=1e-5)
    # a single latent ablated: measured equals attributed (linear downstream)
    live = int(f.abs().sum(0).argmax())
    torch.testing.assert_close(data.outputs(ablate=[live]) - data.clean, attributed[..., live], rtol=1e-4, atol=1e-5)


def test_an_input_site_after_the_output_site_is_an_error():
    model, tokens, _ = _case()
    sae = SAE(SAEConfig(16, 8, "topk", k=2, kind="transcoder", d_out=16))
    backwards = DictionaryUnits(IN, sae, "blocks.0.hook_resid_post", -1)  # input read after the output
    with pytest.raises(SiteError, match="was not reached before its output site"):
        EffectData(model, tokens, backwards, _answer).outputs(ablate=[0])
    with pytest.raises(ValueError, match="need input_site"):
        DictionaryUnits(OUT, sae)


def test_records_name_latents_and_the_error():
    _, _, sae = _case()
    units = DictionaryUnits(OUT, sae, IN, -1)
    assert units.record(3) == {"site": OUT, "index": 3, "kind": "transcoder latent", "position": -1, "input_site": IN}
    assert units.record(24)["kind"] == "error"
    assert units.names(25)[-1] == f"{OUT} error @-1"
    assert units.unit_of(24 + 16).tolist() == list(range(24)) + [24] * 16


def test_graph_cuts_a_transcoders_latents_chosen_by_its_rule(tmp_path):
    """`--units transcoder` on two-tasks: k is the smallest that meets the output budget (the
    smaller ones tried missed it), every latent and the error are units of the files, and the
    attributions match single-unit ablations (the outputs are linear in the MLP's output)."""
    from test_cli import runner

    from unweave.cli import app
    from unweave.graph.targets import TWO_TASKS_FVU

    out = tmp_path / "graph"
    result = runner.invoke(app, ["graph", "two-tasks", "--units", "transcoder", "--out", str(out)])
    assert result.exit_code == 0, result.output
    modules = json.loads((out / "modules.json").read_text())
    fitted = modules["known_answer"]["transcoder"]
    tried = {int(k): v for k, v in fitted["distortion"].items()}
    assert tried[fitted["k"]] <= TWO_TASKS_FVU and all(v > TWO_TASKS_FVU for k, v in tried.items() if k < fitted["k"])
    assert sorted(tried) == [k for k in (1, 2, 4, 8, 16, 32) if k <= fitted["k"]]
    units = [u for m in modules["modules"] for u in m["units"]] + modules["inactive"]
    width = 64  # TwoTasksConfig.d_mlp: as many latents as neurons
    assert sorted(u["index"] for u in units) == list(range(width + 1))
    assert [u["kind"] for u in units if u["index"] == width] == ["error"]
    check = json.loads((out / "graph.json").read_text())
    assert len(check["nodes"]) + len(check["inactive"]) == width + 1
    assert "transcoder:" in result.output and "its error carries" in result.output
    with pytest.raises(ValueError, match="--units must be one of"):
        GraphConfig("two-tasks", units="sae")
    with pytest.raises(ValueError, match=r"scores the edges between components \(no --units\)"):
        GraphConfig("induction", units="transcoder")


def _prompt_transcoder(tiny_model_dir, folder, layer: int = 0, model: str = "llama"):
    """A random transcoder of a tiny model's MLP, saved as `unweave sae train` would."""
    from unweave.dictionaries import io

    model_dir = tiny_model_dir(model)
    sae = SAE(SAEConfig(32, 48, "topk", k=4, kind="transcoder", d_out=32), seed=2 + layer)
    with torch.no_grad():  # seeded, so that the transcoder is the same whatever ran before
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(2 + layer))
    mlp = f"model.layers.{layer}.mlp" if model != "gpt2" else f"transformer.h.{layer}.mlp"
    meta = {"model_name": str(model_dir), "hook_name": f"{mlp}:input", "hook_name_out": mlp}
    return io.save(sae, folder, meta), sae, model_dir


PROMPT = "the cat sat on the mat and the cat sat on the"


def test_a_prompts_units_are_its_live_latents_and_errors_at_every_position(tiny_model_dir, tmp_path):
    from unweave.graph.prompt import PROMPT_OUTPUTS, prompt_units
    from unweave.hf import load_model

    folder, sae, model_dir = _prompt_transcoder(tiny_model_dir, tmp_path / "tc")
    found = prompt_units([folder], PROMPT, skip_first=0)
    data, tokenizer, top = found.data, found.tokenizer, found.top
    model, _ = load_model(str(model_dir))
    tokens = tokenizer(PROMPT, return_tensors="pt").input_ids
    T = tokens.shape[1]
    x = capture(model, "model.layers.0.mlp:input", tokens)["model.layers.0.mlp:input"][0]
    f = sae.encode(x).detach()  # (T, latents)
    records = [data.record(u) for u in range(data.n_units)]
    latents = {(r["position"], r["index"]) for r in records if r["kind"] == "transcoder latent"}
    assert latents == {(t, i) for t, i in zip(*f.nonzero(as_tuple=True)) for t, i in [(int(t), int(i))]}
    assert sorted(r["position"] for r in records if r["kind"] == "error") == list(range(T))
    assert top.shape == (PROMPT_OUTPUTS,)
    # every unit set to zero: the MLP's output is the transcoder's decoder bias at every position
    every = data.outputs(ablate=range(data.n_units))
    with torch.no_grad(), patch(model, {"model.layers.0.mlp": lambda act: sae.b_dec.expand_as(act)}):
        logits = model(tokens).logits[:, -1]
    torch.testing.assert_close(every, centred_logits(logits)[:, top], rtol=1e-4, atol=1e-5)
    # one latent switched off: measured by hand with the latent removed from its position's output
    unit = next(u for u, r in enumerate(records) if r["kind"] == "transcoder latent")
    t, i = records[unit]["position"], records[unit]["index"]

    def without(act: torch.Tensor) -> torch.Tensor:
        act = act.clone()
        act[0, t] -= f[t, i] * sae.W_dec[i].detach()
        return act

    with torch.no_grad(), patch(model, {"model.layers.0.mlp": without}):
        logits = model(tokens).logits[:, -1]
    torch.testing.assert_close(data.outputs(ablate=[unit]), centred_logits(logits)[:, top], rtol=1e-4, atol=1e-5)


def test_graph_of_a_prompt_writes_modules_and_the_ablation_check(tiny_model_dir, tmp_path):
    from test_cli import runner

    from unweave.cli import app

    folder, _, _ = _prompt_transcoder(tiny_model_dir, tmp_path / "tc")
    out = tmp_path / "graph"
    # a random tiny model barely moves when its MLP is replaced: a small budget, so the circuit is not empty
    args = ["graph", str(folder), "--prompt", PROMPT, "--kl-budget", "0.001", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    circuit = json.loads((out / "circuit.json").read_text())
    assert circuit["units"] and max(circuit["kl"]) <= 0.001
    modules = json.loads((out / "modules.json").read_text())
    assert modules["known_answer"] is None and modules["modules"]
    assert {u["kind"] for m in modules["modules"] for u in m["units"]} <= {"transcoder latent", "error"}
    record = json.loads((out / "record.json").read_text())
    assert any("single-unit ablations" in line for line in record["summary"])
    assert "its error carries" in " ".join(result.output.split())
    # the hover of each latent: its top snippets of the default text
    nodes = json.loads((out / "graph.json").read_text())["nodes"]
    latent = next(n for n in nodes if "latent" in n["name"] or "top on" in n["hover"])
    assert "top on 8,192 tokens of" in latent["hover"] and "[" in latent["hover"].split("<br>")[2]
    # the attribution graph: pruned nodes and edges between them, circuit-tracer's scores, the edge check
    drawn = json.loads((out / "graph.json").read_text())["attribution"]
    ids = {n["id"] for n in drawn["nodes"]}
    assert drawn["links"] and all(e["source"] in ids and e["target"] in ids for e in drawn["links"])
    assert {n["kind"] for n in drawn["nodes"]} >= {"token", "output"}
    assert 0 <= drawn["replacement_score"] <= 1 and 0 <= drawn["completeness"] <= 1
    assert len(drawn["edge_check"]["sources"]) == 16 and np.isfinite(drawn["edge_check"]["pearson"])
    assert len(drawn["latent_edge_check"]["sources"]) == 16 and np.isfinite(drawn["latent_edge_check"]["spearman"])
    assert drawn["sums_error"] >= 0 and drawn["integration_steps"] == 0
    assert any(line.startswith("attribution graph:") for line in record["summary"])
    assert "Attribution graph" in (out / "graph.html").read_text()
    # the default budget on a prompt (0.01 nats) is already met with every unit resampled:
    # no circuit, and a line that says why, instead of an error
    default = tmp_path / "default"
    result = runner.invoke(
        app, ["graph", str(folder), "--prompt", PROMPT, "--snippet-tokens", "0", "--out", str(default)]
    )
    assert result.exit_code == 0, result.output
    assert not (default / "circuit.json").exists()
    summary = json.loads((default / "record.json").read_text())["summary"]
    assert any(line.startswith("no circuit: with all") and "within the budget of 0.01" in line for line in summary)
    with pytest.raises(ValueError, match="are for a prompt's attribution graph"):
        run_graph(GraphConfig("two-tasks", ig_steps=4, out=tmp_path / "ig"))
    with pytest.raises(ValueError, match="must be in \\(0, 1\\]"):
        GraphConfig(str(folder), prompt=PROMPT, edge_share=0)
    # bad input: no prompt, a prompt longer than the model's context (256), a prompt for another target
    for args, message in (
        ([str(folder)], "give the text to draw its graph on with --prompt"),
        ([str(folder), "--prompt", "cat " * 300], "longer than the context"),
        (["two-tasks", "--prompt", "a b"], "--prompt is for a dictionary folder"),
    ):
        with pytest.raises(ValueError, match=message):
            run_graph(GraphConfig(args[0], out=tmp_path / "bad", prompt=args[2] if len(args) > 2 else None))


def test_dictionaries_at_two_layers_are_one_graph_in_the_order_they_run(tiny_model_dir, tmp_path):
    from unweave.graph.prompt import prompt_units
    from unweave.hf import load_model

    first, sae0, model_dir = _prompt_transcoder(tiny_model_dir, tmp_path / "l0", layer=0)
    second, sae1, _ = _prompt_transcoder(tiny_model_dir, tmp_path / "l1", layer=1)
    found = prompt_units([second, first], PROMPT, skip_first=0)  # given out of order
    data, tokenizer, top = found.data, found.tokenizer, found.top
    assert data.units.site == ["model.layers.0.mlp", "model.layers.1.mlp"]
    records = [data.record(u) for u in range(data.n_units)]
    assert [r["site"] for r in records] == sorted(r["site"] for r in records)  # layer 0's units first
    model, _ = load_model(str(model_dir))
    tokens = tokenizer(PROMPT, return_tensors="pt").input_ids
    every = data.outputs(ablate=range(data.n_units))
    at_bias = {
        "model.layers.0.mlp": lambda a: sae0.b_dec.expand_as(a),
        "model.layers.1.mlp": lambda a: sae1.b_dec.expand_as(a),
    }
    with torch.no_grad(), patch(model, at_bias):
        logits = model(tokens).logits[:, -1]
    torch.testing.assert_close(every, centred_logits(logits)[:, top], rtol=1e-4, atol=1e-5)
    # layer 1's units alone at zero: layer 0 as the model computes it
    layer1 = [u for u, r in enumerate(records) if r["site"] == "model.layers.1.mlp"]
    with torch.no_grad(), patch(model, {"model.layers.1.mlp": lambda a: sae1.b_dec.expand_as(a)}):
        logits = model(tokens).logits[:, -1]
    torch.testing.assert_close(data.outputs(ablate=layer1), centred_logits(logits)[:, top], rtol=1e-4, atol=1e-5)
    # the first-order effect of a layer-1 unit: nothing after it is a dictionary, so its
    # attribution is the usual gradient x activation of the model itself
    attributed = torch.cat(list(data.attributed_effects()))
    assert attributed.shape == (1, len(top), data.n_units)
    other, _, _ = _prompt_transcoder(tiny_model_dir, tmp_path / "gpt2", layer=0, model="gpt2")
    with pytest.raises(ValueError, match="read different models"):
        prompt_units([first, other], PROMPT)
    with pytest.raises(ValueError, match="write the same site"):
        prompt_units([first, first], PROMPT)


def test_positions_outside_the_dictionarys_range_stay_out_at_their_clean_output(tiny_model_dir, tmp_path):
    from unweave.dictionaries import io
    from unweave.graph.prompt import prompt_units
    from unweave.hf import load_model

    folder, sae, model_dir = _prompt_transcoder(tiny_model_dir, tmp_path / "tc")
    model, tokenizer = load_model(str(model_dir))
    tokens = tokenizer(PROMPT, return_tensors="pt").input_ids
    acts = capture(model, ["model.layers.0.mlp:input", "model.layers.0.mlp"], tokens)
    norms = acts["model.layers.0.mlp:input"][0].norm(dim=1)
    sae.max_input_norm = float(norms.median())  # about half the positions are out of its range
    io.save(sae, folder, {**io.metadata(folder), "max_input_norm": sae.max_input_norm})
    outside = (norms > sae.max_input_norm).nonzero().flatten().tolist()
    assert outside
    found = prompt_units([folder], PROMPT, skip_first=0)
    assert found.left_out == {"model.layers.0.mlp": outside}
    assert prompt_units([folder], PROMPT).left_out == {"model.layers.0.mlp": sorted({0, *outside})}  # and the first
    data = found.data
    assert not {data.record(u)["position"] for u in range(data.n_units)} & set(outside)
    clean_mlp = acts["model.layers.0.mlp"]

    def at_bias_inside(act: torch.Tensor) -> torch.Tensor:
        out = sae.b_dec.expand_as(act).clone()
        out[0, outside] = clean_mlp[0, outside]
        return out

    with torch.no_grad(), patch(model, {"model.layers.0.mlp": at_bias_inside}):
        logits = model(tokens).logits[:, -1]
    expected = centred_logits(logits)[:, found.top]
    torch.testing.assert_close(data.outputs(ablate=range(data.n_units)), expected, rtol=1e-4, atol=1e-5)


def test_a_latents_hover_shows_its_top_snippets_of_the_text(tiny_model_dir, tmp_path):
    """The hover of a latent in a prompt's graph lists its top-activating contexts on a text:
    the first one's activation is the latent's largest on that text, computed here by hand,
    and its token is the one in brackets."""
    from unweave.graph.snippets import SNIPPET_CTX
    from unweave.graph.targets import prompt_target
    from unweave.hf import load_model
    from unweave.text import TextConfig, token_rows

    folder, sae, model_dir = _prompt_transcoder(tiny_model_dir, tmp_path / "tc")
    text = tmp_path / "words.txt"
    words = "the cat sat on a mat while a dog ran to the park and back again".split()
    gen = torch.Generator().manual_seed(0)
    text.write_text(" ".join(words[int(i)] for i in torch.randint(len(words), (900,), generator=gen)))
    target = prompt_target([folder], PROMPT, skip_first=0, text=TextConfig(str(text)), snippet_tokens=512)
    data = target.data
    unit = next(u for u in range(data.n_units) if data.record(u)["kind"] == "transcoder latent")
    latent = data.record(unit)["index"]
    hover = target.describe_unit(unit).split("<br>")
    assert hover[1].startswith("top on 512 tokens of") and 1 <= len(hover) - 2 <= 3
    model, tokenizer = load_model(str(model_dir))
    rows = token_rows(TextConfig(str(text)), tokenizer, SNIPPET_CTX, max_tokens=512)
    x = capture(model, "model.layers.0.mlp:input", rows)["model.layers.0.mlp:input"]
    acts = sae.encode(x.reshape(-1, x.shape[-1])).detach()[:, latent]
    best = int(acts.argmax())
    assert hover[2].endswith(f"({acts[best].item():.3g})")
    assert f"[{tokenizer.decode([int(rows.flatten()[best])])}]" in hover[2]
    # the graph's nodes carry the same hover in graph.json; without --snippet-tokens there is none
    plain = prompt_target([folder], PROMPT, skip_first=0)
    assert plain.describe_unit(unit) == hover[0]
    with pytest.raises(ValueError, match="--snippet-tokens must be 0"):
        GraphConfig(str(folder), prompt=PROMPT, snippet_tokens=-1)


def test_graph_over_prompts_joins_their_attribution_graphs(tiny_model_dir, tmp_path):
    from test_cli import runner

    from unweave.cli import app

    first, _, _ = _prompt_transcoder(tiny_model_dir, tmp_path / "l0", layer=0)
    second, _, _ = _prompt_transcoder(tiny_model_dir, tmp_path / "l1", layer=1)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPT}\n\nthe dog ran to the park and the dog ran to\none two three one two\n")
    out = tmp_path / "graph"
    args = ["graph", str(first), "--dictionary", str(second), "--prompts", str(prompts), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    drawn = json.loads((out / "graph.json").read_text())["attribution"]
    assert drawn["prompts"] == 3 and [p["prompt"] for p in drawn["per_prompt"]][1].startswith("the dog")
    names = [n["name"] for n in drawn["nodes"]]
    assert len(names) == len(set(names)) and not any("@" in n for n in names)  # one node whatever the position
    assert {n["kind"] for n in drawn["nodes"]} >= {"latent", "token", "output"}
    assert len(drawn["edge_check"]["sources"]) == 16 and np.isfinite(drawn["edge_check"]["pearson"])
    assert all(" latent " in s for s in drawn["latent_edge_check"]["sources"])
    assert 0 <= drawn["replacement_score"] <= 1 and drawn["sums_error"] >= 0
    page = (out / "graph.html").read_text()
    assert "over 3 prompts" in page and "of 3 prompts" in page and "top on 8,192 tokens of" in page  # hovers
    modules = json.loads((out / "modules.json").read_text())
    assert modules["modules"] and len(modules["separability"]) == len(modules["modules"])
    units = [u for m in modules["modules"] for u in m["units"]]
    assert {u["site"] for u in units} <= {"model.layers.0.mlp", "model.layers.1.mlp"}
    assert all((u["kind"] == "error") == (u["index"] is None) for u in units)
    assert "Modules, checked by ablation over the prompts" in page and "largest cross effect" in page
    for kwargs, message in (
        ({"prompt": PROMPT}, "give one of --prompt"),
        ({"prompts": tmp_path / "missing.txt"}, "is not a file"),
        ({"kl_budget": 0.01}, "leave out --kl-budget"),
    ):
        with pytest.raises(ValueError, match=message):
            run_graph(GraphConfig(str(first), out=tmp_path / "bad", **{"prompts": prompts, **kwargs}))
    with pytest.raises(ValueError, match="--prompts is for a dictionary folder"):
        run_graph(GraphConfig("two-tasks", out=tmp_path / "bad", prompts=prompts))
    one = tmp_path / "one.txt"
    one.write_text(PROMPT + "\n")
    with pytest.raises(ValueError, match="at least 2 prompts"):
        run_graph(GraphConfig(str(first), out=tmp_path / "bad", prompts=one))
