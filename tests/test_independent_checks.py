"""Independent checks of numbers that earlier tests only bounded, each built so that the
plausible wrong variant (a KL in the reverse direction, an average over the wrong
positions, a norm over the wrong rows, a loss on the wrong split) misses by a wide margin.

Every expected value is computed here with numpy / scipy from the definitions, never by
calling the code under test a second time.
"""

import numpy as np
import pytest
import torch
from scipy.special import log_softmax as np_log_softmax
from scipy.special import logsumexp
from scipy.stats import entropy
from torch import nn

from unweave.dictionaries import SAE, SAEConfig
from unweave.dictionaries.splice import spliced_metrics
from unweave.hypotheses import Hypothesis, Indices, Node, scrub
from unweave.zoo import fourier
from unweave.zoo.modadd import ModAddData, answer_logits, make_data


def softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(np_log_softmax(np.asarray(x, dtype=np.float64), -1))


def far_apart(a: float, b: float, factor: float = 2.0) -> bool:
    """a and b differ by at least `factor` in ratio (both positive)."""
    return max(a, b) >= factor * min(a, b)


# -- spliced dictionary: KL(p_model || p_spliced) over the positions that predict a token --------
class LogitTable(nn.Module):
    """tokens (n, T) -> logits (n, T, V) read from a fixed table[position, token]; the table's
    row passes through `site`, so a dictionary spliced there edits the logits directly."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table
        self.site = nn.Identity()

    def forward(self, tokens):
        return self.site(self.table[torch.arange(tokens.shape[1]), tokens])


def relu_identity_sae(d: int) -> SAE:
    """An imperfect dictionary with a closed form: it reconstructs x as relu(x)."""
    sae = SAE(SAEConfig(d_in=d, n_latents=d, architecture="relu", l1=0.0))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_spliced_kl_is_forward_kl_over_the_predicting_positions():
    T, V = 3, 5
    gen = np.random.default_rng(0)
    table = np.zeros((T, V, V))
    for t in range(T - 1):  # predicting positions: one logit far below zero, the rest mildly positive
        for v in range(V):
            table[t, v] = gen.uniform(0.0, 1.0, V)
            table[t, v, (v + t) % V] = -12.0
    table[T - 1] = -10.0  # last position: everything but one logit far below zero
    table[T - 1, :, 0] = 0.0
    tokens = torch.as_tensor(gen.integers(0, V, (16, T)))
    model = LogitTable(torch.as_tensor(table, dtype=torch.float32)).eval()

    m = spliced_metrics(model, "site", relu_identity_sae(V), tokens)

    clean = table[np.arange(T), tokens.numpy()]  # (n, T, V)
    p, q = softmax(clean), softmax(np.maximum(clean, 0.0))  # the relu dictionary's output, by hand
    forward = entropy(p, q, axis=-1)  # KL(p || q) per (example, position)
    reverse = entropy(q, p, axis=-1)
    want = forward[:, :-1].mean()
    assert m["kl"] == pytest.approx(want, rel=1e-5)
    # the wrong variants miss by a factor of 2 or more, not by a threshold
    assert far_apart(reverse[:, :-1].mean(), want, 5.0)
    assert far_apart(forward.mean(), want, 2.0)
    assert far_apart(reverse.mean(), want, 5.0)
    # the cross-entropies, independently (log-softmax in float64 of the float32 table)
    nxt = tokens.numpy()[:, 1:]

    def ce(logits):
        logp = np_log_softmax(logits[:, :-1], -1)
        return -np.take_along_axis(logp, nxt[..., None], -1).mean()

    assert m["ce_model"] == pytest.approx(ce(clean), rel=1e-5)
    assert m["ce_spliced"] == pytest.approx(ce(np.maximum(clean, 0.0)), rel=1e-5)
    assert m["ce_zero_ablation"] == pytest.approx(np.log(V), rel=1e-9)  # zero logits: uniform
    recovered = (np.log(V) - ce(np.maximum(clean, 0.0))) / (np.log(V) - ce(clean))
    assert m["ce_loss_recovered"] == pytest.approx(recovered, rel=1e-4)


def test_spliced_kl_in_a_transformer_matches_a_forward_by_hand():
    from unweave.zoo.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    V, d = 20, 16
    model = Transformer(TransformerConfig(vocab=V, n_ctx=8, d_model=d, n_heads=2, d_mlp=32, n_layers=2)).eval()
    tokens = torch.randint(0, V, (6, 8))
    sae = SAE(SAEConfig(d_in=d, n_latents=24, architecture="relu", l1=0.0), seed=3)  # random: imperfect
    with torch.no_grad():
        sae.b_enc.fill_(0.1)
        sae.b_dec.copy_(0.2 * torch.randn(d))
    m = spliced_metrics(model, "blocks.0.hook_resid_post", sae, tokens)
    with torch.no_grad():  # the forward, by hand, with the reconstruction computed in numpy
        x = model.blocks[0](model.W_E[tokens] + model.W_pos[:8]).double().numpy()
        W_enc, b_enc = sae.W_enc.double().numpy(), sae.b_enc.double().numpy()
        W_dec, b_dec = sae.W_dec.double().numpy(), sae.b_dec.double().numpy()
        recon = np.maximum((x - b_dec) @ W_enc + b_enc, 0) @ W_dec + b_dec
        clean = model(tokens).double().numpy()
        spliced = model.unembed(model.blocks[1](torch.as_tensor(recon, dtype=torch.float32))).double().numpy()
    p, q = softmax(clean), softmax(spliced)
    want = entropy(p, q, axis=-1)[:, :-1].mean()
    assert want > 1e-3  # a clearly imperfect dictionary
    assert m["kl"] == pytest.approx(want, rel=1e-3)
    assert not m["kl"] == pytest.approx(entropy(q, p, axis=-1)[:, :-1].mean(), rel=1e-2)
    assert not m["kl"] == pytest.approx(entropy(p, q, axis=-1).mean(), rel=1e-2)


# -- key-frequency share of the embedding: the p residue rows only, never the '=' row -------------
def numpy_norm_fraction(W: np.ndarray, p: int, freqs: list[int]) -> float:
    """Squared norm along the cos/sin pair of frequency k is 2 |F[k]|^2 / p (F the DFT over
    residues, summed over dimensions, p odd); the total is the residue rows' squared norm."""
    F = np.fft.fft(W[:p], axis=0)
    key = sum(2 * (np.abs(F[k]) ** 2).sum() / p for k in freqs)
    return key / (W[:p] ** 2).sum()


def planted_embedding(p: int, d: int, freqs: list[int], eq_scale: float, seed: int = 0) -> np.ndarray:
    """(p + 1, d): the key frequencies planted in the residue rows, some noise, and a large '=' row."""
    rng = np.random.default_rng(seed)
    x = np.arange(p)
    W = 0.3 * rng.normal(size=(p + 1, d))
    for j, k in enumerate(freqs):
        W[:p, j % d] += np.cos(2 * np.pi * k * x / p) * (j + 1)
        W[:p, (j + 1) % d] += np.sin(2 * np.pi * k * x / p)
    W[p] = eq_scale  # the '=' token's row
    return W


def test_key_frequency_norm_fraction_ignores_the_equals_row():
    p, d, freqs = 17, 5, [2, 5]
    W = planted_embedding(p, d, freqs, eq_scale=30.0)
    want = numpy_norm_fraction(W, p, freqs)
    got = fourier.norm_fraction(torch.as_tensor(W), p, freqs)
    assert got == pytest.approx(want, rel=1e-10)
    assert want > 0.5
    # counting the '=' row in the total would give a tiny fraction: far off
    with_eq = want * (W[:p] ** 2).sum() / (W**2).sum()
    assert far_apart(want, with_eq, 10.0)
    # and the '=' row does not move the answer at all
    W2 = W.copy()
    W2[p] = 0.0
    assert fourier.norm_fraction(torch.as_tensor(W2), p, freqs) == pytest.approx(want, rel=1e-10)
    # float32 input, as a model's parameters are
    assert fourier.norm_fraction(torch.as_tensor(W, dtype=torch.float32), p, freqs) == pytest.approx(want, rel=1e-5)


# -- excluded loss: on the training split --------------------------------------------------------
def numpy_key_fit(logits: np.ndarray, p: int, freqs: list[int]) -> np.ndarray:
    """Least-squares fit of each logit column on cos/sin(w_k (a + b)) over all p^2 pairs (a-major)."""
    a, b = np.divmod(np.arange(p * p), p)
    cols = []
    for k in freqs:
        cols += [np.cos(2 * np.pi * k * (a + b) / p), np.sin(2 * np.pi * k * (a + b) / p)]
    D = np.stack(cols, 1)
    coef, *_ = np.linalg.lstsq(D, logits, rcond=None)
    return D @ coef


def np_ce(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logsumexp(logits, -1) - logits[np.arange(len(labels)), labels]).mean())


def np_acc(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean())


def np_measures(logits: np.ndarray, data: ModAddData, p: int, freqs: list[int]) -> dict[str, float]:
    fit = numpy_key_fit(logits, p, freqs)
    restricted, excluded = logits.mean(0) + fit, logits - fit
    tr, te, y = data.train_idx.numpy(), data.test_idx.numpy(), data.labels.numpy()
    return {
        "train_loss": np_ce(logits[tr], y[tr]),
        "test_loss": np_ce(logits[te], y[te]),
        "test_acc": np_acc(logits[te], y[te]),
        "restricted_test_loss": np_ce(restricted[te], y[te]),
        "restricted_test_acc": np_acc(restricted[te], y[te]),
        "excluded_train_loss": np_ce(excluded[tr], y[tr]),
        "excluded_train_acc": np_acc(excluded[tr], y[tr]),
        "excluded_test_loss": np_ce(excluded[te], y[te]),
        "excluded_test_acc": np_acc(excluded[te], y[te]),
    }


class MemorisingModAdd(nn.Module):
    """A stand-in for a modular-addition model: its '=' logits are a Fourier part (key
    frequencies) plus a bump on the right answer of *training* pairs only, so excluding the
    key frequencies leaves the training pairs right and the test pairs at chance."""

    def __init__(
        self,
        p: int,
        freqs: list[int],
        train_idx: np.ndarray,
        W_E: np.ndarray,
        seed: int = 0,
        amplitude: float = 1.0,
        class_bias: float = 0.0,
    ):
        super().__init__()
        rng = np.random.default_rng(seed)
        a, b = np.divmod(np.arange(p * p), p)
        c = np.arange(p)
        s = (a + b)[:, None] - c[None]
        table = sum(amplitude * (3.0 + j) * np.cos(2 * np.pi * k * s / p) for j, k in enumerate(freqs))
        table = table + 0.3 * rng.normal(size=(p * p, p)) + class_bias * rng.normal(size=p)
        table[train_idx, (a + b)[train_idx] % p] += 8.0
        self.p, self.table = p, torch.as_tensor(table)
        self.W_E = nn.Parameter(torch.as_tensor(W_E, dtype=torch.float32))

    def forward(self, tokens):
        rows = self.table[tokens[:, 0] * self.p + tokens[:, 1]]
        return torch.stack([torch.zeros_like(rows), torch.zeros_like(rows), rows], 1)


def memorising_case(p: int = 13, freqs=(2, 5), seed: int = 0, **kwargs):
    freqs = list(freqs)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(p * p)
    train_idx, test_idx = np.sort(perm[: p * p // 2]), np.sort(perm[p * p // 2 :])
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T
    data = ModAddData(
        torch.stack([a, b, torch.full_like(a, p)], 1),
        (a + b) % p,
        torch.as_tensor(train_idx),
        torch.as_tensor(test_idx),
    )
    model = MemorisingModAdd(
        p, freqs, train_idx, planted_embedding(p, 6, freqs, eq_scale=20.0, seed=seed), seed, **kwargs
    )
    return model, data, freqs


# what fourier.logit_measures returns (and FourierAnalysis.to_dict carries)
LOGIT_MEASURES = (
    "train_loss",
    "test_loss",
    "test_acc",
    "restricted_test_loss",
    "restricted_test_acc",
    "excluded_train_loss",
    "excluded_train_acc",
)


def test_excluded_loss_is_on_the_training_split():
    model, data, freqs = memorising_case()
    p = model.p
    got = fourier.logit_measures(model, data, p, freqs)
    want = np_measures(model.table.numpy(), data, p, freqs)
    assert set(got) == set(LOGIT_MEASURES)
    for key, value in got.items():
        assert value == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    # on the test split the excluded logits are at chance, on the training split right: far apart
    assert want["excluded_train_acc"] > 0.95 and want["excluded_test_acc"] < 0.3
    assert far_apart(want["excluded_test_loss"], want["excluded_train_loss"], 5.0)


def test_logit_measures_on_a_weaker_model_take_each_split():
    """A weak Fourier part and a bias per class: accuracies that differ between the splits
    and all pairs, so a measure taken on the wrong rows is a different number."""
    model, data, freqs = memorising_case(amplitude=0.2, class_bias=1.0)
    p, L, y = model.p, model.table.numpy(), data.labels.numpy()
    got = fourier.logit_measures(model, data, p, freqs)
    want = np_measures(L, data, p, freqs)
    for key, value in got.items():
        assert value == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    restricted = L.mean(0) + numpy_key_fit(L, p, freqs)
    assert abs(want["test_acc"] - np_acc(L, y)) > 0.2
    assert abs(want["restricted_test_acc"] - np_acc(restricted, y)) > 0.01
    assert 0.2 < want["restricted_test_acc"] < 0.8


def test_analyse_on_a_planted_model_matches_numpy():
    model, data, freqs = memorising_case()
    p = model.p
    a = fourier.analyse(model, data, p)
    W = model.W_E.detach().double().numpy()
    assert a.key_freqs == freqs
    assert a.key_norm_fraction == pytest.approx(numpy_norm_fraction(W, p, freqs), rel=1e-6)
    F = np.fft.fft(W[:p], axis=0)
    np.testing.assert_allclose(a.spectrum, np.sqrt(2 * (np.abs(F[1 : (p - 1) // 2 + 1]) ** 2).sum(1) / p), rtol=1e-6)
    want = np_measures(model.table.numpy(), data, p, freqs)
    out = a.to_dict()
    for key in LOGIT_MEASURES:
        assert out[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    assert out["excluded_over_train"] == pytest.approx(want["excluded_train_loss"] / want["train_loss"], rel=1e-9)
    assert out["p"] == p and out["key_freqs"] == freqs
    # another cut-off: the frequencies holding at least 40% of the squared norm, by numpy
    share = np.array(a.spectrum) ** 2 / (np.array(a.spectrum) ** 2).sum()
    strong = [k + 1 for k in np.flatnonzero(share >= 0.4)]
    assert 1 <= len(strong) < len(freqs)
    b = fourier.analyse(model, data, p, share=0.4)
    assert b.key_freqs == strong
    assert b.key_norm_fraction == pytest.approx(numpy_norm_fraction(W, p, strong), rel=1e-6)


def test_excluded_loss_is_on_the_training_split_of_the_trained_model(small_modadd):
    cfg = small_modadd.config
    model, data = small_modadd.load(), make_data(cfg)
    a = fourier.analyse(model, data, cfg.p)
    with torch.no_grad():
        logits = answer_logits(model, data.tokens).double().numpy()
    want = np_measures(logits, data, cfg.p, a.key_freqs)
    assert a.excluded_train_loss == pytest.approx(want["excluded_train_loss"], rel=1e-8)
    assert a.excluded_train_acc == pytest.approx(want["excluded_train_acc"], abs=1e-12)
    assert a.train_loss == pytest.approx(want["train_loss"], rel=1e-6)
    # the same loss on the test split is a different number on this model (~5.4 vs ~7.1 nats)
    assert abs(want["excluded_test_loss"] - want["excluded_train_loss"]) > 0.5
    assert not a.excluded_train_loss == pytest.approx(want["excluded_test_loss"], rel=0.05)


# -- scrubbing: per-example KL(model || scrubbed) ----------------------------------------------
class TwoLogits(nn.Module):
    """x (n, 2) -> logits (0, x1); `site` holds x. Zero-ablating x1 makes the output uniform."""

    def __init__(self):
        super().__init__()
        self.site = nn.Identity()

    def forward(self, x):
        h = self.site(x)
        return torch.stack([torch.zeros_like(h[:, 1]), h[:, 1]], 1)


def test_scrubbing_kl_is_model_to_scrubbed_per_example():
    x1 = torch.tensor([-12.0, -8.0, -4.0, -1.0, 0.0, 2.0, 6.0, 12.0])
    inputs = torch.cartesian_prod(torch.tensor([0.0, 1.0]), x1).repeat(3, 1)  # (48, 2)
    # the claim: the site's coordinate 0 depends on x0; the unclaimed coordinate 1 is zeroed,
    # so every scrubbed output is softmax(0, 0), whatever input is drawn
    h = Hypothesis([Node("x0", "site", fn=lambda x: x[:, 0], subspace=Indices([0]))], unclaimed="zero")
    result = scrub(TwoLogits(), inputs, h, n_examples=len(inputs))
    xs = inputs[:, 1].double().numpy()
    p = softmax(np.stack([np.zeros_like(xs), xs], 1))
    q = np.full_like(p, 0.5)
    forward, reverse = entropy(p, q, axis=1), entropy(q, p, axis=1)
    # the references are a permutation of all inputs: compare the sorted per-example values
    np.testing.assert_allclose(np.sort(result.kl), np.sort(forward), rtol=1e-9, atol=1e-12)
    big = np.abs(xs) >= 8
    assert (reverse[big] > 4 * forward[big]).all()  # the reverse direction would be far off
    assert far_apart(reverse.mean(), result.kl.mean(), 3.0)
    # losses against the model's own predictions: the scrubbed output is uniform, log 2 each
    np.testing.assert_allclose(result.loss_scrubbed, np.log(2), rtol=1e-12)
    want_model = np.sort(-np.log(p.max(1)))
    np.testing.assert_allclose(np.sort(result.loss_model), want_model, rtol=1e-9, atol=1e-12)
