import itertools
import json

import numpy as np
import pytest
import torch

from unweave.universality.cases import induction_pair
from unweave.universality.command import UniversalityConfig, run_universality, score
from unweave.universality.match import correlations, linear_cka, match


def test_correlations_against_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 4)), rng.normal(size=(200, 3))
    b[:, 1] = 0.5  # a constant unit correlates with nothing
    varying = np.corrcoef(a.T, b[:, [0, 2]].T)[:4, 4:]
    expected = np.column_stack([varying[:, 0], np.zeros(4), varying[:, 1]])
    np.testing.assert_allclose(correlations(torch.tensor(a), torch.tensor(b)).numpy(), expected, atol=1e-12)
    with pytest.raises(ValueError, match="same inputs"):
        correlations(torch.zeros(5, 2), torch.zeros(6, 2))


def test_linear_cka_is_one_under_rotation_and_scaling_and_matches_hsic():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1, abs=1e-12)
    y = torch.randn(300, 4, generator=gen, dtype=torch.float64)
    # independent: CKA as normalised HSIC with linear kernels, from the Gram matrices
    n = len(x)
    h = torch.eye(n, dtype=torch.float64) - 1 / n
    kx, ky = h @ x @ x.T @ h, h @ y @ y.T @ h
    hsic = (kx * ky).sum() / torch.sqrt((kx * kx).sum() * (ky * ky).sum())
    assert linear_cka(x, y) == pytest.approx(float(hsic), rel=1e-10)


def test_match_finds_planted_partners_and_the_baseline_does_not():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(500, 6, generator=gen)
    order = [3, 0, 5, 1, 4, 2]
    b = a[:, order] + 0.1 * torch.randn(500, 6, generator=gen)  # B's unit j is A's unit order[j]
    m = match(a, b)
    assert m.partner == [order.index(i) for i in range(6)]
    assert all(c > 0.9 for _, _, c in m.one_to_one)
    assert m.baseline < 0.25 and m.recurring() == list(range(6))
    # one-to-one against brute force over every permutation
    corr = m.corr.numpy()
    brute = max(itertools.permutations(range(6)), key=lambda p: sum(corr[i, p[i]] for i in range(6)))
    assert [c for _, c, _ in sorted(m.one_to_one)] == list(brute)


def test_score_against_the_known_answer():
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(400, 4, generator=gen)
    b = torch.cat([a[:, :2] + 0.05 * torch.randn(400, 2, generator=gen), torch.randn(400, 2, generator=gen)], 1)
    from unweave.universality.cases import Layer

    layer = Layer("x", a, b, list("abcd"), list("wxyz"), partners={0: {0}, 1: {1}}, unmatched=[2, 3])
    scored = score(layer, match(a, b))
    assert scored["partner_right"] == 2 and scored["auroc_with_against_without"] == 1.0 and scored["recovered"]
    wrong = Layer("x", a, b, list("abcd"), list("wxyz"), partners={0: {1}, 1: {0}}, unmatched=[2, 3])
    assert not score(wrong, match(a, b))["recovered"]


def test_induction_heads_recur_across_seeds(induction_model, tmp_path):
    from unweave.zoo.induction import InductionConfig, train

    pair = induction_pair((0, 1), 128, models=[induction_model, train(InductionConfig(seed=1))])
    (layer,) = pair.layers
    scored = score(layer, match(layer.a, layer.b, layer.rows_per_input))
    assert scored["recovered"], scored
    assert scored["with_partner"] >= 2  # the previous-token head and at least one induction head


def test_universality_command_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown universality target"):
        run_universality(UniversalityConfig(target=["mnist"], out=tmp_path))
    with pytest.raises(ValueError, match="two different seeds"):
        UniversalityConfig(target=["tms"], seeds=[3, 3])
    with pytest.raises(ValueError, match="--tokens"):
        UniversalityConfig(target=["a", "b"], tokens=10)


@pytest.mark.slow
def test_tms_dictionary_latents_recur_and_hidden_dimensions_do_not(tmp_path):
    result = run_universality(UniversalityConfig(target=["tms"], out=tmp_path))
    latents, hidden = json.loads(result.results.read_text())["layers"]
    assert latents["recovered"] and latents["mean_max_correlation"] > 0.9
    assert hidden["mean_max_correlation"] < latents["mean_max_correlation"]


def test_dictionaries_of_one_site_planted_partners(tiny_llama_dir, tmp_path):
    """Dictionary B is A with its latents shuffled and a quarter of them replaced by fresh
    random ones: the shuffled latents recur (each with its own partner), the fresh ones need
    not; two dictionaries of different sites are an error."""
    from unweave.dictionaries import io
    from unweave.dictionaries.sae import SAE, SAEConfig

    cfg = SAEConfig(d_in=32, n_latents=48, architecture="relu")  # latents independent of each other
    a = SAE(cfg, seed=0)
    b = SAE(cfg, seed=1)
    perm = torch.randperm(48, generator=torch.Generator().manual_seed(0))
    kept = perm[:36]  # B's latents perm[:36] are A's latents 0..35
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec"):
            src, dst = getattr(a, name), getattr(b, name)
            if name == "W_enc":
                dst[:, kept] = src[:, :36]
            else:
                dst[kept] = src[:36]
        b.b_dec.copy_(a.b_dec)
    meta = {"model_name": str(tiny_llama_dir), "hook_name": "model.layers.1", "ctx_len": 32}
    io.save(a, tmp_path / "a", meta)
    io.save(b, tmp_path / "b", meta)
    out = tmp_path / "u"
    cfg_u = UniversalityConfig(target=[str(tmp_path / "a"), str(tmp_path / "b")], out=out, tokens=2048)
    run_universality(cfg_u)
    layer = json.loads((out / "universality.json").read_text())["layers"][0]
    partner = {u["unit"]: (u["partner"], u["correlation"]) for u in layer["units_a"]}
    for i in range(36):
        if f"latent {i}" in partner:  # it fired on the text
            assert partner[f"latent {i}"][0] == f"latent {int(kept[i])}"
            assert partner[f"latent {i}"][1] == pytest.approx(1.0, abs=1e-6)
    assert sum(name in partner for name in (f"latent {i}" for i in range(36))) >= 20
    io.save(b, tmp_path / "c", {**meta, "hook_name": "model.layers.0"})
    with pytest.raises(ValueError, match="different sites"):
        run_universality(UniversalityConfig(target=[str(tmp_path / "a"), str(tmp_path / "c")], out=out))
