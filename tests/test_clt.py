"""Cross-layer transcoders: a planted feature that one layer reads and two layers write is
one latent with both decoders (which no per-layer transcoder can learn); training resumes
exactly; save/load round-trips; as graph units the split is exact, an edit of a layer-0
latent reaches every later layer through its decoders, and the attributions are the
direct effects computed by hand."""

import pytest
import torch
from interrupted import Interrupt, stopping
from tiny_models import word_text

from unweave.dictionaries.clt import CLTConfig, CrossLayerTranscoder, load_clt, save_clt, train_clt
from unweave.dictionaries.train import TrainConfig
from unweave.graph.clt_units import clt_members
from unweave.graph.effects import EffectData, centred_logits
from unweave.graph.units import SeveralUnits
from unweave.sites import capture, patch
from unweave.zoo.superposition import mean_max_cosine
from unweave.zoo.transformer import Transformer, TransformerConfig


def _planted(seed: int, d: int = 16, n: int = 24, m: int = 12, p: float = 0.06):
    """Layer 0 reads features F (n of them, each on with probability p) and writes F D0; layer
    1 reads other features G and writes G E1 plus F D1: F's write at layer 1 is visible only
    from layer 0's input."""
    gen = torch.Generator().manual_seed(seed)

    def unit(*shape):
        t = torch.randn(*shape, generator=gen)
        return t / t.norm(dim=-1, keepdim=True)

    A0, D0, D1, A1, E1 = unit(n, d), unit(n, d), unit(n, d), unit(m, d), unit(m, d)

    def batch(rows: int):
        F = (torch.rand(rows, n, generator=gen) < p) * (0.5 + torch.rand(rows, n, generator=gen))
        G = (torch.rand(rows, m, generator=gen) < p) * (0.5 + torch.rand(rows, m, generator=gen))
        return F @ A0, F @ D0, G @ A1, F @ D1 + G @ E1, F @ D1

    return batch, (D0, D1, E1)


def _stream(batch, rows: int = 512):
    while True:
        yield batch(rows)[:4]


def test_a_feature_written_at_two_layers_is_one_latent_with_both_decoders():
    batch, (D0, D1, E1) = _planted(0)
    clt = CrossLayerTranscoder(CLTConfig(n_layers=2, d_in=16, d_out=16, n_latents=48, k=4))
    losses = train_clt(clt, _stream(batch), TrainConfig(steps=1500, lr=3e-3, warmup=50))
    assert losses[-1] < 0.2 * losses[0]
    x0, y0, x1, y1, from_f = batch(4096)
    with torch.no_grad():
        _, (out0, out1) = clt([x0, x1])

    def fvu(out, y):
        return float((out - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())

    assert fvu(out0, y0) < 0.1 and fvu(out1, y1) < 0.1
    # F D1 is a function of F, which layer 1's input does not carry (F and G are independent):
    # any transcoder reading x1 alone leaves at least F D1's share of y1's variance unexplained
    assert float(from_f.var(0).sum() / y1.var(0).sum()) > 0.5
    dec0, dec1 = clt.W_dec[0][:, 0].detach(), clt.W_dec[0][:, 1].detach()
    # seeds 0-2: D0 0.990-0.993, E1 0.981-0.995; the latent's D1 row 0.990-0.994 (least 0.935-0.974)
    assert mean_max_cosine(D0, dec0) > 0.985 and mean_max_cosine(E1, clt.W_dec[1][:, 0].detach()) > 0.975
    # the latent that writes feature i at layer 0 also writes its D1 row at layer 1
    best = (D0 @ (dec0 / dec0.norm(dim=1, keepdim=True)).T).argmax(1)
    same = torch.nn.functional.cosine_similarity(D1, dec1[best], dim=1)
    assert same.mean() > 0.98 and same.min() > 0.9


def test_training_resumes_exactly_and_the_folder_round_trips(tmp_path):
    batch, _ = _planted(1)
    cfg = TrainConfig(steps=60, lr=3e-3, warmup=5, checkpoint_every=20)

    def data():
        b, _ = _planted(1)
        return _stream(b, 128)

    whole = CrossLayerTranscoder(CLTConfig(2, 16, 16, 32, 3), seed=4)
    expected = train_clt(whole, data(), cfg)

    part = CrossLayerTranscoder(CLTConfig(2, 16, 16, 32, 3), seed=4)
    with pytest.raises(Interrupt):
        train_clt(part, stopping(data(), 45), cfg, tmp_path / "ckpt")
    resumed = CrossLayerTranscoder(CLTConfig(2, 16, 16, 32, 3), seed=4)
    losses = train_clt(resumed, data(), cfg, tmp_path / "ckpt")
    assert losses == expected
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    folder = save_clt(resumed, tmp_path / "clt", {"model_name": "toy", "input_sites": ["a", "b"]})
    loaded, meta = load_clt(folder)
    assert meta["model_name"] == "toy" and loaded.cfg == resumed.cfg
    x = batch(8)[0]
    torch.testing.assert_close(loaded.encode(0, x), resumed.encode(0, x))
    with pytest.raises(FileNotFoundError, match="not a cross-layer transcoder folder"):
        load_clt(tmp_path)


INS = ["blocks.0.hook_resid_mid", "blocks.1.hook_resid_mid"]
OUTS = ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]


def _model_and_clt():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab=13, n_ctx=6, d_model=16, n_heads=2, d_mlp=32, n_layers=2)).eval()
    clt = CrossLayerTranscoder(CLTConfig(2, 16, 16, 20, 3), seed=3)
    with torch.no_grad():
        clt.b_enc.normal_()
        clt.b_dec.normal_()
    tokens = torch.randint(13, (40, 6), generator=torch.Generator().manual_seed(1))
    return model, clt, tokens


def _answer(out: torch.Tensor) -> torch.Tensor:
    return centred_logits(out[:, -1])


def test_cross_layer_units_split_exactly_and_an_edit_reaches_every_later_layer():
    model, clt, tokens = _model_and_clt()
    data = EffectData(model, tokens, SeveralUnits(clt_members(clt, INS, OUTS)), _answer, ablate_to="zero")
    torch.testing.assert_close(data.outputs(ablate=[]), _answer(model(tokens)).detach())
    torch.testing.assert_close(data.outputs(ablate=[data.n_units + 10**6]), data.clean)  # nothing ablated
    # one layer-0 latent at the last position switched off, by hand: its decoders' writes
    # removed from layer 0's output and from layer 1's, both computed in the edited pass
    records = [data.record(u) for u in range(data.n_units)]
    acts = capture(model, INS[:1], tokens)
    f0 = clt.encode(0, acts[INS[0]][:, -1]).detach()
    i = int(f0.sum(0).argmax())
    unit = next(u for u, r in enumerate(records) if r["index"] == i and r["position"] == 5 and "layer 0" in r["kind"])

    def minus(layer: int):
        def edit(act: torch.Tensor) -> torch.Tensor:
            act = act.clone()
            act[:, -1] -= f0[:, i : i + 1] * clt.W_dec[0][i, layer].detach()
            return act

        return edit

    with torch.no_grad(), patch(model, {OUTS[0]: minus(0), OUTS[1]: minus(1)}):
        by_hand = _answer(model(tokens))
    torch.testing.assert_close(data.outputs(ablate=[unit]), by_hand, rtol=1e-4, atol=1e-5)
    assert {r["kind"] for r in records} == {"cross-layer latent (layer 0)", "cross-layer latent (layer 1)", "error"}


def test_cross_layer_attributions_are_the_direct_effects_computed_by_hand():
    """d(output)/d(f0) runs through layer 0's decoder into the residual stream (and on
    through layer 1's attention and MLP output, which is the CLT's rebuild with layer 1's
    latents and error held) and through its decoder to layer 1 directly."""
    model, clt, tokens = _model_and_clt()
    data = EffectData(model, tokens, SeveralUnits(clt_members(clt, INS, OUTS, position=-1)), _answer)
    attributed = torch.cat(list(data.attributed_effects()))  # (examples, outputs, units)
    acts = capture(model, INS + OUTS, tokens)
    f0 = clt.encode(0, acts[INS[0]][:, -1]).detach()
    leaf = f0.clone().requires_grad_(True)
    held = {}

    def layer0(act: torch.Tensor) -> torch.Tensor:
        error = act[:, -1] - clt.decode(0, [f0]).detach()
        act = act.clone()
        act[:, -1] = clt.decode(0, [leaf]) + error
        return act

    def layer1(act: torch.Tensor) -> torch.Tensor:
        x1 = held["x1"][:, -1].detach()
        f1 = clt.encode(1, x1).detach()
        error = (act[:, -1] - clt.decode(1, [f0, f1])).detach()
        act = act.clone()
        act[:, -1] = clt.decode(1, [leaf, f1]) + error
        return act

    def read(act: torch.Tensor) -> torch.Tensor:
        held["x1"] = act
        return act

    with patch(model, {OUTS[0]: layer0, INS[1]: read, OUTS[1]: layer1}):
        out = _answer(model(tokens))
    for o in range(out.shape[1]):
        (grad,) = torch.autograd.grad(out[:, o].sum(), leaf, retain_graph=True)
        expected = -(grad * (f0 - f0.mean(0)))
        torch.testing.assert_close(attributed[:, o, : clt.cfg.n_latents], expected, rtol=1e-4, atol=1e-5)


def test_train_clt_on_a_tiny_llama_and_draw_a_prompts_graph_over_it(tiny_model_dir, tmp_path):
    """`unweave sae train-clt` writes a folder that `unweave graph FOLDER --prompt` reads: the
    units are both layers' firing latents and errors, and with every unit at zero each MLP's
    output is the transcoder's decoder bias for its layer."""
    import json

    from test_cli import runner

    from unweave.cli import app
    from unweave.graph.prompt import prompt_units
    from unweave.hf import load_model

    model_dir = tiny_model_dir("llama")
    text = word_text(tmp_path / "words.txt")
    out = tmp_path / "clt"
    args = "sae train-clt --layers 0 --layers 1 --width 24 --k 3 --tokens 51200 --batch-size 256 --ctx-len 32"
    args = [*args.split(), "--model", str(model_dir), "--text", str(text), "--text-tokens", "2048"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "sae_train_clt.json").read_text())
    assert [r["layer"] for r in saved["per_layer"]] == [0, 1]
    assert all(r["held-out FVU"] < 0.8 for r in saved["per_layer"]) and saved["warnings"] == []
    assert saved["schedule"] == {"steps": 200, "lr": 1e-3, "warmup_steps": 10, "decay_from_step": 160}
    assert (out / "clt.json").exists() and not (out / ".checkpoint").exists()
    prompt = "the cat sat on the mat and the cat sat on the"
    found = prompt_units([out], prompt, skip_first=0)
    data = found.data
    kinds = {data.record(u)["kind"] for u in range(data.n_units)}
    assert kinds == {"cross-layer latent (layer 0)", "cross-layer latent (layer 1)", "error"}
    clt, _ = load_clt(out)
    model, tokenizer = load_model(str(model_dir))
    tokens = tokenizer(prompt, return_tensors="pt").input_ids
    at_bias = {f"model.layers.{i}.mlp": (lambda a, i=i: clt.b_dec[i].detach().expand_as(a)) for i in (0, 1)}
    with torch.no_grad(), patch(model, at_bias):
        logits = model(tokens).logits[:, -1]
    every = data.outputs(ablate=range(data.n_units))
    torch.testing.assert_close(every, centred_logits(logits)[:, found.top], rtol=1e-4, atol=1e-5)
    graph = tmp_path / "graph"
    # a random tiny model barely moves when its MLPs are replaced: a tiny budget, so the circuit is not empty
    args_graph = ["graph", str(out), "--prompt", prompt, "--snippet-tokens", "0", "--kl-budget", "1e-7"]
    result = runner.invoke(app, [*args_graph, "--out", str(graph)])
    assert result.exit_code == 0, result.output
    drawn = json.loads((graph / "graph.json").read_text())
    assert any("cross-layer latent" in n["hover"] for n in drawn["nodes"])
    # the latents' share: the share of the squared attributed effect through latents, not errors
    squared = torch.cat(list(data.attributed_effects())).pow(2).sum((0, 1)).double()
    errors = torch.tensor([data.record(u)["kind"] == "error" for u in range(data.n_units)])
    assert drawn["latent_share"] == pytest.approx(1 - float(squared[errors].sum() / squared.sum()), abs=1e-3)
    bad = runner.invoke(app, [*args[:-2], "--mlp", "model.layers.{}.nothing", "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "model.layers.0.nothing" in str(bad.exception)


def test_smollm2_induction_trains_its_transcoder_once_and_reads_it_from_the_cache(
    tiny_model_dir, tmp_path, monkeypatch
):
    """The built-in target's dictionaries: a cross-layer transcoder trained on first use into
    the cache, then read from it (not trained again); without --prompt the target is the
    induction prompt. (The tiny model stands in for SmolLM2 here.)"""
    from unweave.graph import targets

    monkeypatch.setenv("UNWEAVE_CACHE", str(tmp_path / "cache"))
    model_dir = tiny_model_dir("llama")
    folder = targets.builtin_clt(str(model_dir), layers=(0, 1), width=64, tokens=4096)
    assert folder.parent == tmp_path / "cache" / "graph" and (folder / "clt.json").exists()
    stamp = (folder / "record.json").stat().st_mtime_ns
    assert targets.builtin_clt(str(model_dir), layers=(0, 1), width=64, tokens=4096) == folder
    assert (folder / "record.json").stat().st_mtime_ns == stamp  # read, not trained again
    monkeypatch.setattr(targets, "BUILTIN_RECIPE", targets.BUILTIN_RECIPE + 1)  # training changed
    newer = targets.builtin_clt(str(model_dir), layers=(0, 1), width=64, tokens=4096)
    assert newer != folder and (newer / "clt.json").exists()  # the older recipe's cache is not reused
    monkeypatch.setattr(targets, "builtin_clt", lambda: folder)
    target = targets.resolve("smollm2-induction", 16, 0)
    assert target.context["prompt"] == targets.SMOLLM2_INDUCTION and target.prompt is not None
    assert targets.resolve("smollm2-induction", 16, 0, prompt="the cat sat").context["prompt"] == "the cat sat"
