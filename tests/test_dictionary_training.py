"""Training details: geometric median, sparse decoding, scale folding, exact resume,
transcoders, connected sparse MLPs, end-to-end training, live streams."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.optimize import minimize
from torch import nn

from unweave.dictionaries import SAE, SAEConfig, TrainConfig, geometric_median, train_many
from unweave.dictionaries.connected import connection_stats, train_connected
from unweave.dictionaries.e2e import spliced_kl, train_e2e
from unweave.dictionaries.splice import spliced_metrics
from unweave.dictionaries.streams import live_batches
from unweave.dictionaries.train import Checkpoint
from unweave.zoo.superposition import mean_max_cosine


def test_geometric_median_matches_scipy():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=gen)
    x[:10] += 50  # outliers pull the mean, not the median
    want = minimize(
        lambda m: np.linalg.norm(x.double().numpy() - m, axis=1).sum(),
        x.mean(0).double().numpy(),
        method="Nelder-Mead",
        options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000},
    ).x
    np.testing.assert_allclose(geometric_median(x).numpy(), want, atol=1e-3)
    assert (geometric_median(x) - x.mean(0)).norm() > 1


def test_sparse_topk_decode_equals_dense_with_gradients():
    sae = SAE(SAEConfig(d_in=6, n_latents=20, k=4), seed=2)
    x = torch.randn(32, 6)
    top = sae.pre_activations(x).topk(4, dim=1)
    dense = torch.zeros(32, 20).scatter(1, top.indices, torch.relu(top.values))
    sparse_out = sae.decode_sparse(top.indices, torch.relu(top.values))
    torch.testing.assert_close(sparse_out, sae.decode(dense))
    g_sparse = torch.autograd.grad(sparse_out.pow(2).sum(), sae.W_dec)[0]
    g_dense = torch.autograd.grad(sae.decode(dense).pow(2).sum(), sae.W_dec)[0]
    torch.testing.assert_close(g_sparse, g_dense)


@pytest.mark.parametrize(
    "cfg",
    [
        SAEConfig(d_in=6, n_latents=16, k=3),
        SAEConfig(d_in=6, n_latents=16, architecture="jumprelu"),
        SAEConfig(d_in=6, n_latents=16, architecture="batchtopk", k=3),
        SAEConfig(d_in=6, n_latents=16, k=3, kind="transcoder", d_out=4, skip=True),
    ],
)
def test_folded_scales_give_the_same_dictionary_on_raw_activations(cfg):
    sae = SAE(cfg, seed=1)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if cfg.architecture == "batchtopk":
            sae.threshold.fill_(0.2)
    sae.eval()
    x = torch.randn(64, 6) * 7
    s_in, s_out = 0.3, (0.3 if cfg.kind == "sae" else 2.0)
    want = sae(x * s_in)[0] / s_out  # trained in scaled space, read back in raw units
    sae.fold_scales(s_in, s_out)
    torch.testing.assert_close(sae(x)[0], want, rtol=1e-4, atol=1e-5)


def _data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(64, 6, generator=gen) * 30 + 5


def test_a_short_run_reaches_its_learning_rate():
    """The default warm-up is 5% of the steps, at most 100. The CLI's default run (262,144
    tokens, 64 steps) had a fixed 100-step warm-up and never got past 0.64 of its rate."""
    short = TrainConfig(steps=64, lr=1e-3)
    rates = [short.lr_at(step) for step in range(64)]
    assert rates[:4] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3])  # 3 warm-up steps
    assert rates[51] == pytest.approx(1e-3) and rates[52] == pytest.approx(1e-3 * 12 / 12.8)  # decay from 51.2
    assert TrainConfig(steps=4000).warmup_steps == 100  # long runs keep the 100 steps
    assert TrainConfig(steps=64, warmup=10).warmup_steps == 10  # an explicit warm-up is kept


def test_resume_after_interruption_is_exact(tmp_path):
    # massive rows left out (the norm limit is saved), AuxK on (dead-latent counters are saved)
    cfg = TrainConfig(steps=40, lr=3e-3, warmup=5, checkpoint_every=10, max_norm_ratio=1.5)
    folder = tmp_path / "checkpoint"

    def fresh():
        return [
            SAE(SAEConfig(d_in=6, n_latents=24, k=1, aux_k=4, dead_after=64), seed=0),
            SAE(SAEConfig(d_in=6, n_latents=24, architecture="jumprelu", l1=1e-2, bandwidth=0.5), seed=0),
        ]

    whole = fresh()
    losses = train_many(whole, _data(), cfg)

    class Crash(Exception):
        pass

    def crash_at_25(step):
        if step == 25:
            raise Crash

    broken = fresh()
    with pytest.raises(Crash):
        train_many(broken, _data(), cfg, checkpoint_dir=folder, on_step=crash_at_25)
    # no pickle: safetensors and JSON, the JSON naming the tensors and written last
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-00000020.safetensors", "checkpoint.json"]
    state = json.loads((folder / "checkpoint.json").read_text())
    assert state["step"] == 20 and state["tensors"] == "checkpoint-00000020.safetensors"
    tensors = load_file(folder / state["tensors"])
    assert {"0.weights.W_dec", "0.since_fired", "1.weights.log_threshold", "1.adam.0.exp_avg"} <= set(tensors)
    resumed, steps = fresh(), []
    resumed_losses = train_many(resumed, _data(), cfg, checkpoint_dir=folder, on_step=steps.append)
    assert steps == list(range(20, 40))  # continued from the checkpoint, not from scratch
    for a, b in zip(whole, resumed):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name
        assert torch.equal(a.since_fired, b.since_fired) and a.max_input_norm == b.max_input_norm
    assert resumed_losses == losses
    assert not folder.exists()  # removed once the run finished


def test_an_incomplete_checkpoint_is_ignored(tmp_path):
    cfg = TrainConfig(steps=20, lr=3e-3, warmup=5, checkpoint_every=10)
    saes = [SAE(SAEConfig(d_in=6, n_latents=12, k=2), seed=0)]
    opts = [torch.optim.Adam(saes[0].parameters())]
    Checkpoint(tmp_path).save(saes, opts, {"step": 10, "scales": [1.0, 1.0], "losses": [[]], "max_norm": None})
    (tmp_path / "checkpoint.json").unlink()  # as if the run died between the two writes
    assert Checkpoint(tmp_path).load(saes, opts) is None
    steps = []
    train_many(saes, _data(), cfg, checkpoint_dir=tmp_path, on_step=steps.append)
    assert steps == list(range(20))


def test_normalised_training_saves_a_dictionary_for_raw_activations():
    sae = SAE(SAEConfig(d_in=6, n_latents=24, k=3))
    train_many([sae], _data(), TrainConfig(steps=300, lr=3e-3, warmup=10))
    x = next(_data(1))
    fvu = ((x - sae(x)[0]).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
    assert fvu < 0.3, "the folded dictionary reconstructs raw (unscaled) activations"


def _planted_mlp(n_features=24, d_in=32, d_out=10, seed=0):
    """x = f A, y = f B for sparse non-negative features f: an 'MLP' whose output directions
    are the rows of B, one per feature."""
    gen = torch.Generator().manual_seed(seed)
    A, B = torch.randn(n_features, d_in, generator=gen), torch.randn(n_features, d_out, generator=gen)

    def stream():
        while True:
            f = torch.rand(512, n_features, generator=gen) * (torch.rand(512, n_features, generator=gen) < 0.06)
            yield f @ A, f @ B

    return A, B, stream


def test_transcoder_recovers_planted_output_directions():
    A, B, stream = _planted_mlp()
    tc = SAE(SAEConfig(d_in=32, n_latents=48, k=3, kind="transcoder", d_out=10), seed=0)
    train_many([tc], stream(), TrainConfig(steps=2000, lr=3e-3, warmup=20))
    assert mean_max_cosine(B, tc.W_dec.detach()) > 0.99  # 24 output directions superposed in 10 dims
    x, y = next(stream())
    assert ((y - tc(x)[0]).pow(2).sum() / (y - y.mean(0)).pow(2).sum()).item() < 0.1
    with pytest.raises(ValueError, match=r"target must have shape \(512, 10\)"):
        tc.loss(x, x)


class ResidualMLPs(nn.Module):
    """Two MLPs on a residual stream (random weights), sites mlp0/mlp1 with :input."""

    def __init__(self, d=12, hidden=48, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.mlp0 = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d))
        self.mlp1 = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d))

    def forward(self, x):
        h = x + self.mlp0(x)
        return h + self.mlp1(h)


def test_connection_penalty_makes_connections_sparser():
    from unweave.sites import capture

    model = ResidualMLPs()
    gen = torch.Generator().manual_seed(0)
    sites = ["mlp0:input", "mlp0", "mlp1:input", "mlp1"]

    def stream():
        while True:
            acts = capture(model, sites, torch.randn(512, 12, generator=gen))
            yield tuple(acts[s] for s in sites)

    results = {}
    for penalty in (0.0, 3.0):
        layers = [SAE(SAEConfig(d_in=12, n_latents=48, k=4, kind="transcoder", d_out=12), seed=i) for i in range(2)]
        train_connected(layers, stream(), TrainConfig(steps=600, lr=3e-3, warmup=20), penalty)
        batch = next(stream())
        stats = connection_stats(layers[0], layers[1], batch[0], batch[2])
        fvu = [
            ((y - sae(x)[0]).pow(2).sum() / (y - y.mean(0)).pow(2).sum()).item()
            for sae, x, y in ((layers[0], batch[0], batch[1]), (layers[1], batch[2], batch[3]))
        ]
        results[penalty] = (stats, fvu)
    (dense, fvu_dense), (sparse, fvu_sparse) = results[0.0], results[3.0]
    # measured: fan-in 11.1 -> 7.7 upstream latents, 320 -> 221 connections, FVU 0.19/0.22 -> 0.34/0.34
    assert sparse.fan_in_90 < 0.75 * dense.fan_in_90
    assert sparse.connections_90 < 0.8 * dense.connections_90
    assert max(fvu_dense) < 0.6 and max(fvu_sparse) < 0.8  # sparser wiring costs some reconstruction


def test_connection_stats_against_a_direct_computation():
    up = SAE(SAEConfig(d_in=5, n_latents=7, k=2, kind="transcoder", d_out=4), seed=0)
    down = SAE(SAEConfig(d_in=4, n_latents=6, k=2, kind="transcoder", d_out=3), seed=1)
    x_up, x_down = torch.randn(9, 5), torch.randn(9, 4)
    stats = connection_stats(up, down, x_up, x_down)
    z_up, z_down = up.encode(x_up), down.encode(x_down)
    C = up.W_dec @ down.W_enc  # (7, 6): latent i's output read by latent j
    want = sum((z_up[b][:, None] * C * (z_down[b] > 0)[None, :]).abs() for b in range(9))
    torch.testing.assert_close(stats.mass.float(), want.detach(), rtol=1e-5, atol=1e-6)


class TokenModel(nn.Module):
    """tokens (batch, pos) -> embedding -> two residual MLPs -> logits over 20 tokens."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.embed, self.inner, self.unembed = nn.Embedding(20, 12), ResidualMLPs(), nn.Linear(12, 20)

    def forward(self, tokens):
        return self.unembed(self.inner(self.embed(tokens)))


def test_transcoder_spliced_in_place_of_an_mlp():
    model = TokenModel()
    tokens = torch.randint(20, (8, 6), generator=torch.Generator().manual_seed(0))
    mlp = model.inner.mlp1
    tc = SAE(SAEConfig(d_in=12, n_latents=48, k=48, kind="transcoder", d_out=12, architecture="relu"))
    with torch.no_grad():  # an exact copy of the MLP as a transcoder: ReLU latents = hidden units (rescaled)
        norms = mlp[2].weight.norm(dim=0)
        tc.W_enc.copy_(mlp[0].weight.T * norms)
        tc.b_enc.copy_(mlp[0].bias * norms)
        tc.W_dec.copy_((mlp[2].weight / norms).T)
        tc.b_dec.copy_(mlp[2].bias)
    exact = spliced_metrics(model, "inner.mlp1", tc, tokens, input_site="inner.mlp1:input")
    assert exact["kl"] < 1e-10 and abs(exact["ce_loss_recovered"] - 1) < 1e-6
    with torch.no_grad():
        tc.W_dec.mul_(0.5)  # half the MLP's output: somewhere between exact and zero-ablated
    half = spliced_metrics(model, "inner.mlp1", tc, tokens, input_site="inner.mlp1:input")
    assert half["kl"] > 1e-4
    with pytest.raises(ValueError, match="input_site"):
        spliced_metrics(model, "inner.mlp1", tc, tokens)


def test_end_to_end_training_lowers_spliced_kl(small_modadd):
    model = small_modadd.load()
    from unweave.zoo.modadd import make_data

    tokens = make_data(small_modadd.config).tokens
    gen = torch.Generator().manual_seed(0)
    site = "blocks.0.hook_resid_post"
    sae = SAE(SAEConfig(d_in=64, n_latents=256, k=8), seed=0)

    def batches():
        while True:
            yield tokens[torch.randint(len(tokens), (256,), generator=gen)]

    with torch.no_grad():
        before = spliced_kl(model, site, sae, tokens[:512]).item()
    losses = train_e2e(model, site, sae, batches(), TrainConfig(steps=150, lr=3e-3, warmup=10, normalise=False))
    with torch.no_grad():
        after = spliced_kl(model, site, sae, tokens[:512]).item()
    assert after < 0.2 * before and losses[-1] < losses[0]
    assert all(not p.requires_grad for p in model.parameters())


def test_live_batches_are_bounded_shuffled_and_paired():
    model = ResidualMLPs()
    rows = torch.randn(40, 3, 12)  # 40 rows of 3 positions

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m(x)

    stream = live_batches(Seq(), ["m.mlp1:input", "m.mlp1"], rows, batch_size=16, forward_rows=4, buffer_batches=4)
    batches = [next(stream) for _ in range(20)]  # more than one pass over 120 tokens
    for x, y in batches:
        assert x.shape == (16, 12) and y.shape == (16, 12)
        torch.testing.assert_close(model.mlp1(x), y)  # input and output rows stay paired
    seen = torch.cat([x for x, _ in batches])  # 320 tokens drawn from 2.7 passes over 120
    _, counts = torch.unique(seen, dim=0, return_counts=True)
    assert len(counts) == 120 and counts.max() <= 4  # every token seen, none far more often than others


def test_massive_activations_are_left_out_and_passed_through(tmp_path):
    from unweave.dictionaries import io
    from unweave.dictionaries.splice import apply

    gen = torch.Generator().manual_seed(0)

    def stream():
        while True:
            x = torch.randn(256, 6, generator=gen)
            x[:3] *= 1000  # a few attention-sink-like rows, 1000x the typical norm
            yield x

    sae = SAE(SAEConfig(d_in=6, n_latents=24, k=3))
    train_many([sae], stream(), TrainConfig(steps=200, lr=3e-3, warmup=10, max_norm_ratio=10))
    x = next(stream())
    assert 10 < sae.max_input_norm < 100  # 10 x the median norm (~2.3), far below the massive rows
    out = apply(sae, x)
    torch.testing.assert_close(out[:3], x[:3])  # passed through unchanged
    fvu = ((x[3:] - out[3:]).pow(2).sum() / (x[3:] - x[3:].mean(0)).pow(2).sum()).item()
    assert fvu < 0.5, "trained on the ordinary rows, not dragged towards the massive ones"
    assert io.load(io.save(sae, tmp_path / "d")).max_input_norm == pytest.approx(sae.max_input_norm)
