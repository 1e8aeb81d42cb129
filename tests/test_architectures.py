"""unweave on every architecture in unweave.anatomy's table: tiny random models of each,
built offline from configs (tests/tiny_models.py), loaded through unweave.hf like any local
model folder. Each check compares with a computation that does not go through the tool
under test (a direct capture, the clean forward, the config's sizes)."""

import json

import pytest
import torch
from tiny_models import ARCHITECTURES, EXTRA_ARCHITECTURES, tiny_model

from unweave.anatomy import AnatomyError, anatomy
from unweave.hf import load_model
from unweave.sites import capture, patch, resolve

TOKENS = 8
_loaded = {}


@pytest.fixture(params=ARCHITECTURES)
def tiny(request, tiny_model_dir):
    """(folder, model, tokenizer) of one architecture, loaded once per session."""
    model_type = request.param
    if model_type not in _loaded:
        folder = tiny_model_dir(model_type)
        _loaded[model_type] = (folder, *load_model(str(folder)))
    return _loaded[model_type]


def _rows(n: int, ctx: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 300, (n, ctx), generator=torch.Generator().manual_seed(seed))


# -- (a) the anatomy table -------------------------------------------------------------------
def test_anatomy_sites_resolve_with_the_right_shapes(tiny):
    _, model, _ = tiny
    a = anatomy(model)
    cfg = model.config
    assert (a.n_layers, a.n_heads, a.d_model) == (2, 4, 32)
    # Gemma's head_dim is set on its own (16 here), not hidden_size / heads (8)
    assert a.d_head == (16 if cfg.model_type.startswith("gemma") else 8)
    named = [a.embed, a.final_norm, a.unembed] + [f(i) for i in range(a.n_layers) for f in (a.block, a.mlp, a.mlp_in)]
    named += [a.attn_out(i) for i in range(a.n_layers)]
    for site in named:
        resolve(model, site)
    acts = capture(model, named, _rows(2, TOKENS))
    for i in range(a.n_layers):
        assert acts[a.block(i)].shape == (2, TOKENS, a.d_model)
        assert acts[a.mlp_in(i)].shape == (2, TOKENS, a.d_model)
        assert acts[a.mlp(i)].shape == (2, TOKENS, a.d_model)
        # the attention output projection reads every head, side by side
        width = resolve(model, a.attn_out(i).removesuffix(":input"))[1].weight.shape
        assert acts[a.attn_out(i)].shape == (2, TOKENS, a.n_heads * a.d_head)
        assert a.n_heads * a.d_head in width
    assert acts[a.unembed].shape == (2, TOKENS, cfg.vocab_size)
    assert acts[a.embed].shape == (2, TOKENS, a.d_model)
    assert a.block(-1) == a.block(a.n_layers - 1)


def test_last_block_output_feeds_the_final_norm(tiny):
    """block(i) is the residual stream: the last one is exactly what the final norm reads."""
    _, model, _ = tiny
    a = anatomy(model)
    acts = capture(model, [a.block(-1), f"{a.final_norm}:input"], _rows(2, TOKENS))
    torch.testing.assert_close(acts[a.block(-1)], acts[f"{a.final_norm}:input"])


@pytest.mark.parametrize("model_type", EXTRA_ARCHITECTURES)
def test_anatomy_of_other_table_rows(model_type):
    model = tiny_model(model_type)
    a = anatomy(model)
    acts = capture(model, [a.block(1), a.attn_out(1), a.mlp_in(0), a.unembed], _rows(1, TOKENS))
    assert acts[a.block(1)].shape == (1, TOKENS, a.d_model)
    assert acts[a.attn_out(1)].shape == (1, TOKENS, a.n_heads * a.d_head)


def _opt():
    """A causal LM whose layout is not in the table."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        "opt",
        vocab_size=64,
        hidden_size=16,
        ffn_dim=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        word_embed_proj_dim=16,
    )
    return AutoModelForCausalLM.from_config(cfg).eval()


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(AnatomyError, match=r"'opt'.*known model types: llama.*still work"):
        anatomy(_opt())


def test_run_sites_without_an_anatomy(tmp_path):
    """An architecture unweave has no table row for still gets its full site list."""
    from tiny_models import tokenizer

    from unweave.sitemap import SitesConfig, run_sites

    _opt().save_pretrained(tmp_path / "opt")
    tokenizer().save_pretrained(tmp_path / "opt")
    data = run_sites(SitesConfig(model=str(tmp_path / "opt"), out=tmp_path / "run", tokens=5)).data
    assert data["model_type"] == "opt" and data["anatomy"] is None
    rows = {r["site"]: r["shape"] for r in data["sites"]}
    assert rows["model.decoder.layers.0"] == [1, 5, 16]


# -- (b) unweave sites ------------------------------------------------------------------------
def test_run_sites_lists_every_site_with_its_shape(tiny, tmp_path):
    from unweave.runs import read_record
    from unweave.sitemap import SitesConfig, run_sites

    folder, model, _ = tiny
    result = run_sites(SitesConfig(model=str(folder), out=tmp_path / "sites", tokens=TOKENS))
    assert result.results.name == "sites.json" and result.report.name == "sites.html"
    data = json.loads(result.results.read_text())
    a = anatomy(model)
    assert data["model_type"] == model.config.model_type
    assert data["anatomy"]["sites"]["block"] == a.block(0).replace(".0", ".{i}")
    rows = {r["site"]: r for r in data["sites"]}
    # one row per module output and input, as unweave.sites names them
    assert len(rows) == 2 * sum(1 for name, _ in model.named_modules() if name)
    for i in range(a.n_layers):
        assert rows[a.block(i)]["shape"] == [1, TOKENS, a.d_model]
    assert rows[a.attn_out(0)]["shape"] == [1, TOKENS, a.n_heads * a.d_head]
    # the list of layers is never called itself: listed, with no shape
    layers = a.block(0).rsplit(".", 1)[0]
    assert rows[layers] == {"site": layers, "shape": None, "module": "ModuleList", "called": False}
    html = result.report.read_text()
    assert "not called" in html and html.index("Summary") < html.index("Every site")
    assert read_record(result.dir)["command"] == "unweave sites"


def test_site_shapes_agree_with_capture(tiny):
    from unweave.sitemap import site_shapes

    _, model, _ = tiny
    x = _rows(2, 5)
    rows = [r for r in site_shapes(model, x) if r["shape"] is not None]
    sample = rows[:: max(1, len(rows) // 12)]  # a spread of sites: a dozen forward passes
    acts = capture(model, [r["site"] for r in sample], x)
    for r in sample:
        assert list(acts[r["site"]].shape) == r["shape"], r["site"]


# -- (c) caching ------------------------------------------------------------------------------
def test_store_matches_a_direct_capture(tiny, tmp_path):
    from unweave.store import write_store

    _, model, _ = tiny
    a = anatomy(model)
    sites = [a.block(1), a.mlp_in(0)]
    tokens = _rows(6, 12, seed=1)
    store = write_store(model, sites, tokens, tmp_path / "store", "tiny", shard_tokens=36, batch_size=2)
    direct = capture(model, sites, tokens)
    for s in sites:
        stored = torch.cat([store.load_shard(i, s) for i in range(len(store.shards))])
        torch.testing.assert_close(stored, direct[s].reshape(-1, a.d_model))


# -- (d) dictionaries -------------------------------------------------------------------------
def test_sae_splices_at_a_block(tiny):
    from unweave.dictionaries import SAE, SAEConfig, train_sae
    from unweave.dictionaries.splice import spliced_metrics

    _, model, _ = tiny
    a = anatomy(model)
    site = a.block(0)
    tokens = _rows(16, 16, seed=2)
    acts = capture(model, site, tokens)[site].reshape(-1, a.d_model)
    sae = SAE(SAEConfig(d_in=a.d_model, n_latents=64, k=8))
    gen = torch.Generator().manual_seed(0)
    batches = (acts[torch.randint(len(acts), (64,), generator=gen)] for _ in range(40))
    losses = train_sae(sae, batches, steps=40, warmup=5)
    assert losses[-1] < losses[0]
    metrics = spliced_metrics(model, site, sae, tokens[:4])
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert metrics["kl"] > 0
    with torch.no_grad():
        clean = model(tokens[:4]).logits
        with patch(model, {site: lambda act: act}):
            same = model(tokens[:4]).logits
    torch.testing.assert_close(same, clean, rtol=0, atol=0)


# -- (e) causal scrubbing ---------------------------------------------------------------------
def test_scrubbing_runs_on_every_architecture(tiny):
    """Claim the last position of the residual stream entering the last layer and of all
    heads' output in it: everything the last position's logits read. Computed from the whole
    input (fn=None), nothing is resampled, so the scrubbed output is the clean one; computed
    from nothing (a constant), both come from random inputs and the output moves."""
    from unweave.hypotheses.graph import Hypothesis, Indices, Node
    from unweave.hypotheses.score import scrub

    _, model, _ = tiny
    a = anatomy(model)
    inputs = _rows(48, 10, seed=3)
    heads = Indices(range(a.n_heads * a.d_head))

    def claim(fn):
        resid = Node("resid", a.block(-2), fn=fn, positions=[-1])
        attn = Node("heads", a.attn_out(-1), fn=fn, subspace=heads, positions=[-1])
        return Hypothesis([resid, attn], output=lambda out: out.logits[:, -1], name="all of the last position")

    whole = scrub(model, inputs, claim(None), batch_size=48)
    nothing = scrub(model, inputs, claim(lambda x: torch.zeros(len(x))), batch_size=48)
    assert whole.kl.max() < 1e-8
    assert nothing.kl.mean() > 1e-4
    # the constant claim resamples what the logits read: as far off as a random input
    assert nothing.kl.mean() == pytest.approx(nothing.kl_random.mean(), rel=0.5)


def test_induction_case_builds_and_scores(tiny):
    from unweave.hypotheses.cases import lm_induction_case
    from unweave.hypotheses.score import scrub_all

    _, model, tokenizer = tiny
    attention = model.config._attn_implementation
    case = lm_induction_case(model, tokenizer, "tiny-induction", n=64, half=8, top=2)
    a = anatomy(model)
    assert case.inputs.shape == (64, 16) and int(case.inputs.max()) < len(tokenizer)
    assert torch.equal(case.inputs[:, 1:8], case.inputs[:, 9:16])  # the repeat
    assert len(case.info["scores"]) == a.n_layers and len(case.info["scores"][0]) == a.n_heads
    assert model.config._attn_implementation == attention  # eager only while reading the patterns
    results = scrub_all(
        case.model,
        case.inputs,
        list(case.hypotheses.values()),
        case.labels,
        batch_size=64,
        forward_kwargs=case.forward_kwargs,
    )
    assert len(results) == 3
    for r in results:
        assert torch.isfinite(torch.as_tensor(r.kl)).all() and r.kl.mean() >= 0


def test_induction_heads_target_resolves_a_local_folder(tiny_model_dir):
    from unweave.hypotheses.targets import CASES, resolve

    folder = tiny_model_dir("gpt2")
    case = resolve(f"induction-heads:{folder}")
    assert "induction-heads:PATH" in CASES
    assert case.name == f"induction-heads:{folder}" and len(case.hypotheses) == 3
    assert case.forward_kwargs == {"logits_to_keep": 1}


def test_small_vocab_tokens_stay_in_range():
    from tiny_models import tokenizer

    from unweave.hypotheses.cases import repeated_tokens

    rows = repeated_tokens(tokenizer(), 32, 6, vocab=300)
    body = rows[:, 1:]
    assert int(body.min()) >= 300 // 20 and int(body.max()) < 300


def test_repeated_text_spans_come_from_the_text():
    from tiny_models import tokenizer

    from unweave.hypotheses.cases import repeated_text

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 40, (3000,), generator=gen)
    rows = repeated_text(tokenizer(), ids, 50, 6, choices=8)
    frequent = set(torch.bincount(ids).argsort(descending=True)[:8].tolist())
    text = ids.tolist()
    for row in rows.tolist():
        first = row[1:7]
        assert row[7:] == first[:-1]  # the repeat
        assert first[-1] in frequent and first[-2] in frequent  # answer and current token
        assert any(text[i : i + 6] == first for i in range(len(text) - 5))  # a span of the text
    with pytest.raises(ValueError, match="more text"):
        repeated_text(tokenizer(), ids[:100], 50, 6, choices=8)


def test_scrub_repeats_spans_of_the_users_text(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from unweave.cli import app

    folder = tiny_model_dir("gpt2")
    (tmp_path / "notes.txt").write_text(" ".join(["the king and the queen of the land"] * 400))
    target = f"induction-heads:{folder}"
    out = tmp_path / "scrub"
    args = ["scrub", target, "--repeat", "text", "--text", str(tmp_path / "notes.txt"), "--examples", "64"]
    result = CliRunner().invoke(app, [*args, "--pairs", "64", "--out", str(out)])
    assert result.exit_code == 0, result.output
    import json

    found = json.loads((out / "scrub.json").read_text())
    assert found["info"]["repeated"] == "spans of the text" and len(found["hypotheses"]) == 3
    bad = CliRunner().invoke(app, ["scrub", "modadd", "--repeat", "text", "--out", str(out)])
    assert bad.exit_code != 0 and "language-model cases" in str(bad.exception) + bad.output
