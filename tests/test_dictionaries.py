import numpy as np
import pytest
import torch

from unweave.dictionaries import SAE, SAEConfig, TrainConfig, metrics, train_many, train_sae
from unweave.dictionaries.architectures import ARCHITECTURES, SAELENS, Architecture, register
from unweave.sites import capture
from unweave.zoo.superposition import mean_max_cosine, sample_features, train_toy


def test_fvu_uses_variance_about_the_mean():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 8, generator=gen) + 5.0  # far from centred
    recon = x + 0.3 * torch.randn(500, 8, generator=gen)
    xn, rn = x.double().numpy(), recon.double().numpy()
    expected = ((xn - rn) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum()
    assert metrics.fvu(x, recon) == pytest.approx(expected, rel=1e-12)
    assert metrics.fvu(x, x.mean(0).expand_as(x)) == pytest.approx(1.0)  # predicting the mean explains nothing
    assert metrics.mse(x, recon) == pytest.approx(((xn - rn) ** 2).mean(), rel=1e-12)


def test_sparsity_metrics():
    z = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.0, 0.5, 0.0, 0.0], [0.0, 3.0, 0.0, 1.0]])
    assert metrics.l0(z) == pytest.approx(5 / 3)
    np.testing.assert_allclose(metrics.firing_density(z).numpy(), [0, 1, 0, 2 / 3])
    assert metrics.dead_fraction(z) == 0.5
    assert metrics.dense_fraction(z, threshold=0.9) == 0.25


def test_sae_conventions_and_errors():
    sae = SAE(SAEConfig(d_in=6, n_latents=12, k=3))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(12))
    _, z = sae(torch.randn(4, 6))
    assert ((z != 0).sum(1) <= 3).all()
    with pytest.raises(ValueError, match=r"shape \(n, 6\) \(d_in of this dictionary\), got \(4, 5\)"):
        sae(torch.randn(4, 5))
    with pytest.raises(ValueError, match="architecture 'gated'; known: batchtopk, jumprelu, relu, topk"):
        SAEConfig(d_in=6, n_latents=12, architecture="gated")


def test_topk_sae_recovers_superposed_features():
    """Elhage et al.'s 5-2 toy model: a TopK dictionary on the hidden activations finds the
    five true feature directions (mean max cosine >= 0.99)."""
    model = train_toy(5, 2, p_active=0.05, steps=2000)
    gen = torch.Generator().manual_seed(5)

    def batches():
        while True:
            x = sample_features(2048, 5, 0.05, gen)
            yield capture(model, "hidden", x[(x != 0).any(1)])["hidden"]

    sae = SAE(SAEConfig(d_in=2, n_latents=5, architecture="topk", k=1))
    train_sae(sae, batches(), steps=1500, lr=3e-3)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(5))
    assert mean_max_cosine(model.W.detach().T, sae.W_dec.detach()) >= 0.99
    h = next(batches())
    assert metrics.fvu(h, sae(h)[0]) < 0.1


def test_saelens_layout_round_trip_and_foreign_file(tmp_path):
    import json

    from safetensors.torch import save_file

    from unweave.dictionaries import io

    sae = SAE(SAEConfig(d_in=6, n_latents=12, k=3), seed=1)
    folder = io.save(sae, tmp_path / "ours", metadata={"hook_name": "blocks.0.hook_resid_post"})
    assert json.loads((folder / "cfg.json").read_text())["d_sae"] == 12
    back = io.load(folder)
    x = torch.randn(5, 6)
    torch.testing.assert_close(back(x)[0], sae(x)[0])
    # a file written per the layout by someone else: a 'standard' (ReLU) SAE
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "cfg.json").write_text(
        json.dumps(
            {
                "architecture": "standard",
                "d_in": 4,
                "d_sae": 8,
                "apply_b_dec_to_input": True,
                "normalize_activations": "none",
            }
        )
    )
    w = {"W_enc": torch.randn(4, 8), "W_dec": torch.randn(8, 4), "b_enc": torch.randn(8), "b_dec": torch.randn(4)}
    save_file(w, str(foreign / "sae_weights.safetensors"))
    loaded = io.load(foreign)
    x = torch.randn(3, 4)
    expected = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) @ w["W_dec"] + w["b_dec"]
    torch.testing.assert_close(loaded(x)[0], expected)
    (foreign / "cfg.json").write_text(json.dumps({"architecture": "gated", "d_in": 4, "d_sae": 8}))
    with pytest.raises(ValueError, match="'gated' cannot be loaded yet; known: jumprelu, standard, topk"):
        io.load(foreign)


def test_a_sweep_trains_from_one_stream_read_once():
    reads = []

    def stream():
        gen = torch.Generator().manual_seed(0)
        while True:
            reads.append(1)
            yield torch.randn(64, 6, generator=gen)

    saes = [SAE(SAEConfig(d_in=6, n_latents=24, k=k)) for k in (1, 2, 4)]
    losses = train_many(saes, stream(), TrainConfig(steps=50, lr=3e-3, warmup=5))
    assert len(reads) == 50 and [len(curve) for curve in losses] == [50, 50, 50]
    assert losses[2][-1] < losses[0][-1]  # more latents per example reconstruct better
    with pytest.raises(ValueError, match="share d_in"):
        train_many(
            [SAE(SAEConfig(d_in=6, n_latents=8, k=1)), SAE(SAEConfig(d_in=5, n_latents=8, k=1))],
            stream(),
            TrainConfig(steps=1),
        )


def test_spliced_metrics_against_a_direct_computation():
    from unweave.dictionaries.splice import spliced_metrics
    from unweave.zoo.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab=20, n_ctx=12, d_model=16, n_heads=2, d_mlp=32, n_layers=2)).eval()
    tokens = torch.randint(0, 20, (6, 12))
    site = "blocks.0.hook_resid_post"
    sae = SAE(SAEConfig(d_in=16, n_latents=64, architecture="relu", l1=0.0))
    with torch.no_grad():  # an exact dictionary: +x and -x halves through a ReLU reproduce x
        sae.W_enc.copy_(torch.cat([torch.eye(16), -torch.eye(16), torch.zeros(16, 32)], 1))
        sae.W_dec.copy_(torch.cat([torch.eye(16), -torch.eye(16), torch.zeros(32, 16)], 0))
        sae.b_dec.zero_()
    m = spliced_metrics(model, site, sae, tokens)
    assert m["kl"] == pytest.approx(0.0, abs=1e-9) and m["ce_loss_recovered"] == pytest.approx(1.0)
    with torch.no_grad():
        sae.W_dec.zero_()  # outputs zero everywhere: exactly zero ablation
    m = spliced_metrics(model, site, sae, tokens)
    assert m["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-9)
    # independent: run block 1 on zeros by hand and compare the zero-ablated CE
    with torch.no_grad():
        x = model.blocks[1](torch.zeros(6, 12, 16))
        logits = model.unembed(x)
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 20).double(), tokens[:, 1:].reshape(-1))
    assert m["ce_zero_ablation"] == pytest.approx(ce.item(), rel=1e-9)


def test_batchtopk_keeps_k_per_example_on_average_and_exports_as_jumprelu(tmp_path):
    from unweave.dictionaries import io

    sae = SAE(SAEConfig(d_in=6, n_latents=24, architecture="batchtopk", k=3))
    x = torch.randn(32, 6)
    _, z = sae(x)
    assert (z != 0).sum().item() <= 3 * 32 and sae.threshold.item() > 0
    train_sae(sae, iter(lambda: torch.randn(64, 6), None), steps=100, lr=3e-3, warmup=5)
    sae.eval()
    loaded = io.load(io.save(sae, tmp_path / "btk"))
    assert loaded.cfg.architecture == "jumprelu"
    torch.testing.assert_close(loaded(x)[0], sae(x)[0])  # same reconstruction at inference


def test_jumprelu_threshold_learns_from_the_l0_penalty():
    sae = SAE(SAEConfig(d_in=6, n_latents=24, architecture="jumprelu", l1=1.0, bandwidth=0.5))
    start = sae.log_threshold.detach().clone()
    gen = torch.Generator().manual_seed(0)
    train_sae(sae, iter(lambda: torch.randn(64, 6, generator=gen), None), steps=200, lr=1e-2, warmup=5)
    assert (sae.log_threshold.detach() > start).float().mean() > 0.5  # a strong L0 price raises thresholds


def test_auxk_revives_dead_latents():
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(32, 8, generator=gen)

    def stream():
        g = torch.Generator().manual_seed(1)
        while True:  # sparse combinations of 32 directions in 8 dimensions
            codes = (torch.rand(256, 32, generator=g) < 0.1) * torch.rand(256, 32, generator=g)
            yield codes @ basis

    def trained(aux_coef):
        sae = SAE(SAEConfig(d_in=8, n_latents=32, k=2, aux_k=8, aux_coef=aux_coef, dead_after=1024), seed=3)
        with torch.no_grad():
            sae.W_enc[:, :16] *= 0.01  # half the latents never make the top k: they die
        train_sae(sae, stream(), steps=300, lr=3e-3, warmup=5)
        return sae.dead_mask().float().mean().item()

    with_aux, without = trained(1 / 32), trained(0.0)
    assert without >= 0.4 and with_aux <= without / 2, (with_aux, without)


def _stream(d_in=6, d_out=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d_in, d_out or d_in, generator=gen)
    while True:
        x = torch.randn(64, d_in, generator=gen) * 3 + 1
        x[:2] *= 100  # massive rows, left out of training
        yield x if d_out is None else (x, torch.relu(x @ mix))


@pytest.mark.parametrize("kind", ["sae", "transcoder"])
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_registered_architecture_round_trips_through_the_saelens_layout(name, kind, tmp_path):
    from unweave.dictionaries import io

    extra = {} if kind == "sae" else {"kind": "transcoder", "d_out": 5, "skip": True}
    sae = SAE(SAEConfig(d_in=6, n_latents=24, architecture=name, k=3, l1=1e-2, bandwidth=0.1, **extra), seed=1)
    train_many(
        [sae], _stream(6, extra.get("d_out"), seed=2), TrainConfig(steps=30, lr=3e-3, warmup=5, max_norm_ratio=10)
    )
    loaded = io.load(io.save(sae, tmp_path / name))
    arch = ARCHITECTURES[name]
    assert loaded.cfg.architecture == (name if arch.loads_saelens else SAELENS[arch.saelens].name)
    assert loaded.cfg.kind == kind and loaded.max_input_norm == sae.max_input_norm
    for key in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(loaded.state_dict()[key], sae.state_dict()[key]), key
    x = next(_stream(6, extra.get("d_out"), seed=3))
    x = x if kind == "sae" else x[0]
    (out, z), (out_back, z_back) = sae(x), loaded(x)
    torch.testing.assert_close(out_back, out)
    torch.testing.assert_close(z_back, z)


@pytest.fixture
def registry():
    """The architecture registry as it was before the test."""
    saved = dict(ARCHITECTURES), dict(SAELENS)
    yield
    for table, before in zip((ARCHITECTURES, SAELENS), saved):
        table.clear()
        table.update(before)


def test_a_new_architecture_is_one_class_and_one_register_call(registry, tmp_path):
    from torch import nn

    from unweave.dictionaries import io

    @register
    class ShiftedReLU(Architecture):
        """relu(pre - shift) with a learned shift per latent and an L1 penalty."""

        name = saelens = "shifted_relu"

        def add_state(self, sae):
            sae.shift = nn.Parameter(torch.full((sae.cfg.n_latents,), 0.5))

        def activate(self, sae, pre):
            return torch.relu(pre - sae.shift)

        def penalty(self, sae, pre, latents):
            return sae.cfg.l1 * latents.sum(1).mean()

        def fold_scale(self, sae, scale_out):
            sae.shift.div_(scale_out)

    assert "shifted_relu" in ARCHITECTURES
    sae = SAE(SAEConfig(d_in=6, n_latents=24, architecture="shifted_relu", l1=1e-3), seed=0)
    losses = train_many([sae], _stream(), TrainConfig(steps=300, lr=3e-3, warmup=10, max_norm_ratio=10))[0]
    assert losses[-1] < 0.5 * losses[0] and not torch.equal(sae.shift.detach(), torch.full((24,), 0.5))
    x = next(_stream(seed=5))[2:]
    assert metrics.fvu(x, sae(x)[0]) < 0.3  # the folded shift works on raw activations
    loaded = io.load(io.save(sae, tmp_path / "toy"))
    assert loaded.cfg.architecture == "shifted_relu" and torch.equal(loaded.shift, sae.shift)
    assert torch.equal(loaded(x)[0], sae(x)[0])
    with pytest.raises(ValueError, match="already registered"):
        register(ShiftedReLU)


def test_centred_encoder_gradients_equal_plain_autograd():
    """The SAE encoder's (x - b_dec) @ W_enc with its own backward: the same value and the
    same gradients for x, b_dec and W_enc as autograd through the plain expression."""
    from unweave.dictionaries.sae import _CentredMatmul

    gen = torch.Generator().manual_seed(0)
    x, b, w = (torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True) for s in [(9, 5), (5,), (5, 7)])
    assert torch.autograd.gradcheck(_CentredMatmul.apply, (x, b, w))
    g = torch.randn(9, 7, generator=gen, dtype=torch.float64)
    ours = torch.autograd.grad(_CentredMatmul.apply(x, b, w), (x, b, w), g)
    plain = torch.autograd.grad((x - b) @ w, (x, b, w), g)
    for a, c in zip(ours, plain):
        torch.testing.assert_close(a, c)
    # an input without a gradient gets none computed
    out = _CentredMatmul.apply(x.detach(), b, w)
    assert torch.autograd.grad(out, (b, w), g)[0].shape == (5,)
