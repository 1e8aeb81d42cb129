"""The feature browser's numbers against direct computations on the dense latents, the
output-token effects against the weights, and the ablation check against a model whose
final norm is the identity (where direct and measured effects must be equal)."""

import numpy as np
import pytest
import torch
from test_report import browser, launch  # the skip marker when Chromium is absent, and its launch

from unweave.dictionaries import io
from unweave.dictionaries.sae import SAE, SAEConfig
from unweave.features import effects
from unweave.features.browser import BrowserSettings, _Vocab, build, search_index
from unweave.features.collect import LatentStats, Window, histogram_edges
from unweave.hf import load_model
from unweave.sites import capture


def sparse_latents(B, T, L, seed, density=0.1):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(B, T, L, generator=g) * 5
    return z * (torch.rand(B, T, L, generator=g) < density)


def run_stats(batches, L, **kw):
    stats = LatentStats(L, **kw)
    for tokens, z in batches:
        stats.update(tokens, z)
    return stats


@pytest.fixture(scope="module")
def synthetic():
    T, L = 20, 12
    batches = []
    for b in range(3):
        z = sparse_latents(4, T, L, seed=b)
        z[..., 0] = 0  # a dead latent
        tokens = torch.randint(0, 9, (4, T), generator=torch.Generator().manual_seed(10 + b))
        batches.append((tokens, z))
    tokens = torch.cat([t for t, _ in batches])
    z = torch.cat([z for _, z in batches])
    window = Window(before=3, after=2)
    return batches, tokens, z, run_stats(batches, L, top=5, samples=7, window=window), window


def test_counts_maxima_and_top_activations_equal_the_dense_computation(synthetic):
    _, tokens, z, stats, window = synthetic
    flat = z.reshape(-1, z.shape[-1])
    assert stats.n_tokens == len(flat)
    assert torch.equal(stats.count, (flat > 0).sum(0))
    assert torch.allclose(stats.max, flat.max(0).values)
    assert torch.allclose(stats.total, flat.double().sum(0))
    for latent in range(1, z.shape[-1]):
        direct = flat[:, latent].topk(5)
        assert torch.allclose(stats.top_value[latent], direct.values)
        assert torch.allclose(flat[stats.top_pos[latent], latent], direct.values)  # ties may swap positions
    assert torch.isinf(stats.top_value[0]).all(), "a dead latent has no top activations"


def test_windows_hold_the_latents_activations_around_each_top_token(synthetic):
    _, _, z, stats, window = synthetic
    T = z.shape[1]
    for latent in (1, 5, 11):
        for j in range(5):
            pos = int(stats.top_pos[latent, j])
            row, t = divmod(pos, T)
            for offset, got in zip(range(-window.before, window.after + 1), stats.top_window[latent, j]):
                if 0 <= t + offset < T:
                    assert got == z[row, t + offset, latent]
                else:
                    assert torch.isnan(got), "positions outside the row are NaN"


def test_histogram_equals_numpy_on_the_same_edges(synthetic):
    _, _, z, stats, _ = synthetic
    flat = z.reshape(-1, z.shape[-1]).numpy()
    for latent in (1, 4):
        values = flat[:, latent][flat[:, latent] > 0]
        direct, _ = np.histogram(values, bins=histogram_edges())
        assert stats.histogram(latent).sum() == len(values)
        assert np.array_equal(stats.histogram(latent), direct)


def test_samples_are_distinct_firings_and_uniform():
    T, L = 10, 2
    z = torch.zeros(1, T, L)
    z[0, :, 1] = torch.arange(1, T + 1).float()  # latent 1 fires on all 10 tokens, each once
    tokens = torch.zeros(1, T, dtype=torch.long)
    hits = np.zeros(T)
    for seed in range(600):
        stats = run_stats([(tokens, z)], L, top=2, samples=3, seed=seed)
        picked = stats.sample_pos[1].tolist()
        assert len(set(picked)) == 3 and torch.equal(stats.sample_value[1], z[0, stats.sample_pos[1], 1])
        hits[picked] += 1
        assert torch.isinf(stats.sample_key[0]).all(), "a dead latent has no samples"
    # each of the 10 firings is kept with probability 3/10: 180 of 600 (sd ~11)
    assert np.all(np.abs(hits - 180) < 50), hits


def test_samples_across_batches_are_uniform_too():
    """The reservoir merge across batches: a firing in the first batch is as likely to stay as one in the last."""
    T, L = 5, 1
    batches = [(torch.zeros(1, T, dtype=torch.long), torch.ones(1, T, L)) for _ in range(4)]  # 20 firings
    hits = np.zeros(20)
    for seed in range(500):
        stats = run_stats(batches, L, top=1, samples=4, seed=seed)
        hits[stats.sample_pos[0].tolist()] += 1
    assert np.all(np.abs(hits - 100) < 40), hits  # each kept with probability 4/20


def test_token_search_equals_the_dense_computation(synthetic):
    _, tokens, z, stats, _ = synthetic

    class Tok:
        def batch_decode(self, ids):
            return [f"t{i[0]}" for i in ids]

    index = {s: (n, lat) for s, n, lat in search_index(stats, _Vocab(Tok()), per_token=3)}
    flat, ids = z.reshape(-1, z.shape[-1]), tokens.flatten()
    maxima = flat.max(0).values.clamp(min=1e-30)
    for t in ids.unique().tolist():
        on = flat[ids == t]
        relative = on.mean(0) / maxima
        expected = [int(i) for i in relative.argsort(descending=True) if on[:, i].gt(0).any()][:3]
        n, latents = index[f"t{t}"]
        assert n == len(on)
        assert [row[0] for row in latents] == expected
        for latent, rel, frac, mean in latents:
            assert rel == pytest.approx(relative[latent].item(), rel=1e-3)
            assert frac == pytest.approx(on[:, latent].gt(0).float().mean().item(), rel=1e-3)
            assert mean == pytest.approx(on[:, latent].mean().item(), rel=1e-3)


def test_nearest_latents_by_decoder_cosine():
    dec = torch.randn(50, 7, generator=torch.Generator().manual_seed(0))
    cos, idx = effects.nearest_latents(dec, k=4, chunk=16)
    unit = dec / dec.norm(dim=1, keepdim=True)
    sims = unit @ unit.T
    sims.fill_diagonal_(-2)
    direct = sims.topk(4, dim=1)
    assert torch.equal(idx, direct.indices) and torch.allclose(cos, direct.values, atol=1e-6)


# --- on a model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama(tiny_model_dir):
    return load_model(str(tiny_model_dir("llama")))


def test_direct_effect_is_the_unembedding_of_the_rmsnormed_direction(llama):
    model, _ = llama
    d = torch.randn(5, 32, generator=torch.Generator().manual_seed(1))
    norm = model.model.norm
    by_hand = (
        d / (d.pow(2).mean(1, keepdim=True) + norm.variance_epsilon).sqrt() * norm.weight
    ) @ model.lm_head.weight.T
    got = effects.direct_logit_effects(model, effects.residual_directions(model, "model.layers.1", d))
    assert torch.allclose(got, by_hand, atol=1e-5)


def test_attention_output_directions_go_through_the_output_projection(llama, tiny_model_dir):
    model, _ = llama
    d = torch.randn(3, 32)
    got = effects.residual_directions(model, "model.layers.0.self_attn.o_proj:input", d)
    assert torch.allclose(got, d @ model.model.layers[0].self_attn.o_proj.weight.T, atol=1e-6)
    gpt2, _ = load_model(str(tiny_model_dir("gpt2")))
    proj = gpt2.transformer.h[0].attn.c_proj  # a Conv1D: y = x @ W + b
    got = effects.residual_directions(gpt2, "transformer.h.0.attn.c_proj:input", d)
    assert torch.allclose(got, d @ proj.weight, atol=1e-6)
    with pytest.raises(ValueError, match="residual stream"):
        effects.residual_directions(model, "model.layers.0.mlp.up_proj", torch.randn(2, 64))


def test_with_an_identity_final_norm_the_measured_ablation_equals_the_direct_effect(tiny_model_dir):
    """Removing latent i (activation v) from the last residual stream at one position changes
    that position's logits by exactly v * W_U d_i when nothing nonlinear follows."""
    model, _ = load_model(str(tiny_model_dir("llama")))
    model.model.norm = torch.nn.Identity()
    sae = SAE(SAEConfig(d_in=32, n_latents=16, architecture="topk", k=4), seed=3)
    meta = {"hook_name": "model.layers.1", "model_name": "x"}
    rows = torch.randint(3, 300, (3, 12), generator=torch.Generator().manual_seed(0))
    latents, positions, values = torch.tensor([2, 7, 7]), torch.tensor([0, 5, 11]), torch.tensor([1.5, -0.3, 2.0])
    measured = effects.ablation_effects(model, sae, meta, rows, latents, positions, values)
    direct = effects.direct_logit_effects(model, effects.residual_directions(model, meta["hook_name"], sae.W_dec))
    assert torch.allclose(measured, values[:, None] * direct[latents], atol=1e-4)
    assert torch.allclose(effects.pearson(measured, direct[latents]), values.sign().double(), atol=1e-6)


def train_topk(model, site, rows, n_latents=64, k=4, steps=150, target=None):
    """A small TopK dictionary (or transcoder) trained on the tiny model's activations."""
    from unweave.dictionaries.train import TrainConfig, train_many

    names = [site] + ([target] if target else [])
    acts = capture(model, names, rows)
    x = acts[site].reshape(-1, acts[site].shape[-1])
    y = acts[target].reshape(-1, acts[target].shape[-1]) if target else None
    cfg = SAEConfig(d_in=x.shape[1], n_latents=n_latents, architecture="topk", k=k)
    if target:
        cfg = SAEConfig(
            d_in=x.shape[1], n_latents=n_latents, architecture="topk", k=k, kind="transcoder", d_out=y.shape[1]
        )
    sae = SAE(cfg, seed=0)
    stream = ((x, y) if target else x for _ in range(steps))
    train_many([sae], stream, TrainConfig(steps, lr=3e-3))
    return sae.eval()


@pytest.fixture(scope="module")
def built(llama, tmp_path_factory):
    """A trained SAE at the last layer of the tiny Llama and its browser on Shakespeare."""
    from unweave.text import TextConfig, token_rows

    model, tokenizer = llama
    rows = token_rows(TextConfig(), tokenizer, 32, max_tokens=3200)
    sae = train_topk(model, "model.layers.1", rows)
    with torch.no_grad():
        sae.b_enc[0] = -1e6  # latent 0 never fires: its page must say so
    meta = {"model_name": "tiny", "hook_name": "model.layers.1", "name": "tiny-sae"}
    out = tmp_path_factory.mktemp("browser")
    found = build(sae, meta, model, tokenizer, rows, out, BrowserSettings(top=6, check_latents=8))
    return sae, meta, rows, out, found


def test_built_browser_matches_a_direct_pass(built, llama):
    import json

    sae, meta, rows, out, found = built
    model, tokenizer = llama
    z = sae.encode(capture(model, "model.layers.1", rows)["model.layers.1"].reshape(-1, 32)).detach()
    assert found["tokens"] == rows.numel() and found["live_latents"] == int((z > 0).any(0).sum()) == 63
    latent = int((z > 0).sum(0).argmax())
    text = (out / "data" / "latents" / f"{latent}.js").read_text()
    page = json.loads(text[text.index(",") + 1 : text.rindex(")")])
    assert page["fires"] == int((z[:, latent] > 0).sum())
    top = z[:, latent].topk(6)
    assert [c["v"] for c in page["top"]] == pytest.approx(top.values.tolist(), rel=1e-3)
    first = page["top"][0]
    pos = first["row"] * 32 + first["pos"]
    assert first["t"][first["i"]] == tokenizer.decode([int(rows.flatten()[pos])])
    assert first["a"][first["i"]] == pytest.approx(z[pos, latent].item(), rel=1e-3)
    assert sum(page["hist"]["counts"]) == page["fires"]
    assert len(page["bands"]) == 4 and all(c["v"] > 0 for b in page["bands"] for c in b["contexts"])


def test_the_last_layers_direct_effect_agrees_with_the_measured_ablation(built):
    """At the last layer only the final RMSNorm lies between the latent and the logits."""
    *_, found = built
    assert found["checked_latents"] == 8
    assert found["median_ablation_correlation"] > 0.9


# --- the page, in headless Chromium ---------------------------------------------------


def open_page(url, actions):
    """Open url in headless Chromium at 1280x800, run actions(page), return the console errors."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            actions(page)
            return errors
        finally:
            browser.close()


def goto(page, hash_, view):
    page.evaluate(f"location.hash = {hash_!r}")
    page.wait_for_function(f"document.body.dataset.view === {view!r}", timeout=10_000)


def dense_latents(built, llama):
    sae, meta, rows, *_ = built
    model, _ = llama
    return sae.encode(capture(model, "model.layers.1", rows)["model.layers.1"].reshape(-1, 32)).detach()


@browser
@pytest.mark.browser
def test_page_opens_latents_and_finds_the_latents_of_a_token(built, llama):
    sae, meta, rows, out, found = built
    model, tokenizer = llama
    z = dense_latents(built, llama)
    latent = int((z > 0).sum(0).argmax())
    ids = rows.flatten()
    token = int(ids.bincount().argmax())  # the commonest token of the text
    word = tokenizer.decode([token])
    on = z[ids == token]
    relative = on.mean(0) / z.max(0).values.clamp(min=1e-30)
    expected = [int(i) for i in relative.argsort(descending=True) if on[:, i].gt(0).any()][:16]
    seen = {}

    def actions(page):
        goto(page, f"latent={latent}", f"latent:{latent}")
        seen["contexts"] = page.locator(".context").count()
        seen["focus"] = page.locator("section:has(h3:text('Top activations')) .context .focus").first.text_content()
        seen["links"] = page.locator(".neighbours a").count()
        page.fill("#query", word)
        page.click("#search button")
        page.wait_for_function("document.body.dataset.view === 'search'")
        seen["found"] = [
            int(t) for t in page.locator(".match").first.locator("tbody tr td:first-child a").all_text_contents()
        ]
        goto(page, "latent=0", "latent:0")
        seen["dead"] = page.locator("#view").text_content()
        goto(page, f"latent={sae.cfg.n_latents}", "error")
        seen["range"] = page.locator("#view").text_content()
        page.fill("#query", "not-a-token-of-this-text")
        page.click("#search button")
        page.wait_for_function("document.body.dataset.view === 'search'")
        seen["missing"] = page.locator("#view").text_content()
        goto(page, "", "all")
        seen["rows"] = page.locator("tbody tr").count()

    errors = open_page((out / "index.html").resolve().as_uri(), actions)
    assert errors == []
    top_pos = int(z[:, latent].argmax())
    assert seen["contexts"] == 6 + 4 * 4 and seen["links"] == 8
    assert seen["focus"].replace("↵", "\n") == tokenizer.decode([int(ids[top_pos])])
    assert seen["found"] == expected, (repr(word), seen)
    assert f"out of range: this dictionary has {sae.cfg.n_latents} latents" in seen["range"]
    assert "occurs in the" in seen["missing"]
    assert f"never fired on the {rows.numel()} tokens" in seen["dead"]
    assert seen["rows"] == sae.cfg.n_latents  # 64 latents: one page


@browser
@pytest.mark.browser
def test_page_works_from_a_web_server(built):
    import functools
    import http.server
    import threading

    *_, out, found = built
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    seen = {}
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        errors = open_page(url, lambda page: (goto(page, "latent=3", "latent:3"), seen.update(h=page.inner_text("h2"))))
    finally:
        server.shutdown()
    assert errors == [] and seen["h"] == "Latent 3"


def test_connected_sparse_mlps_get_a_browser_per_layer(tiny_model_dir, tmp_path):
    """Each layer of connected sparse MLPs is a TopK transcoder saved on its own; `unweave
    features` reads it like any dictionary, its output tokens from the MLP's output."""
    from unweave.dictionaries.connected import train_connected
    from unweave.dictionaries.train import TrainConfig
    from unweave.features.command import FeaturesConfig, run_features
    from unweave.text import TextConfig, token_rows

    path = str(tiny_model_dir("llama"))
    model, tokenizer = load_model(path)
    rows = token_rows(TextConfig(), tokenizer, 32, max_tokens=2048)
    names = [s for i in (0, 1) for s in (f"model.layers.{i}.mlp:input", f"model.layers.{i}.mlp")]
    acts = capture(model, names, rows)
    batch = [acts[n].reshape(-1, 32) for n in names]
    layers = [
        SAE(SAEConfig(d_in=32, n_latents=48, architecture="topk", k=4, kind="transcoder", d_out=32), seed=i)
        for i in (0, 1)
    ]
    train_connected(layers, (batch for _ in range(60)), TrainConfig(60, lr=3e-3), penalty=1e-3)
    for i, layer in enumerate(layers):
        meta = {"model_name": path, "hook_name": names[2 * i], "hook_name_out": names[2 * i + 1], "ctx_len": 32}
        io.save(layer, tmp_path / f"layer{i}", meta)
        result = run_features(FeaturesConfig(tmp_path / f"layer{i}", out=tmp_path / f"browser{i}", tokens=1024))
        found = result.data
        assert found["output_site"] == names[2 * i + 1] and found["n_latents"] == 48
        assert len(list((tmp_path / f"browser{i}" / "data" / "latents").glob("*.js"))) == 48


def test_a_dictionary_whose_model_cannot_be_loaded_is_a_clear_error(tmp_path):
    from unweave.features.command import FeaturesConfig, run_features

    io.save(SAE(SAEConfig(d_in=8, n_latents=16, architecture="topk", k=2)), tmp_path / "d", {"hook_name": "x"})
    with pytest.raises(ValueError, match="no metadata.model_name"):
        run_features(FeaturesConfig(tmp_path / "d", out=tmp_path / "o"))
    io.save(
        SAE(SAEConfig(d_in=8, n_latents=16, architecture="topk", k=2)),
        tmp_path / "d",
        {"hook_name": "x", "model_name": str(tmp_path / "gone")},
    )
    with pytest.raises(ValueError, match="cannot be loaded"):
        run_features(FeaturesConfig(tmp_path / "d", out=tmp_path / "o"))


@browser
@pytest.mark.browser
def test_sae_eval_and_features_reports_are_readable_at_1280(built, tiny_model_dir, tmp_path):
    """The headline figures of both reports on the first screen, nothing running off the side."""
    from test_report_layout import assert_readable_at_1280

    from unweave.dictionaries.command import SAEEvalConfig, run_sae_eval
    from unweave.features.command import FeaturesConfig, run_features

    sae, meta, *_ = built
    path = str(tiny_model_dir("llama"))
    io.save(sae, tmp_path / "sae", {"model_name": path, "hook_name": "model.layers.1", "ctx_len": 32})
    ev = run_sae_eval(SAEEvalConfig([tmp_path / "sae"], out=tmp_path / "eval", spliced_tokens=1024, max_tokens=2048))
    row = ev.data["sae"]
    headline = [f"{row[k]:.4g}" for k in ("ce_loss_recovered", "kl", "fvu")]
    assert assert_readable_at_1280(ev.report, headline) == []
    feats = run_features(FeaturesConfig(tmp_path / "sae", out=tmp_path / "features", tokens=2048))
    assert (
        assert_readable_at_1280(
            feats.report, [f"{feats.data['live_latents']} of 64", f"{feats.data['median_ablation_correlation']:.4g}"]
        )
        == []
    )
