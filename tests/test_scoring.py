"""unweave.scoring against numpy / scipy and closed forms (fast: no model is trained)."""

import math

import numpy as np
import pytest
import torch
from scipy.special import log_softmax as np_log_softmax
from scipy.special import rel_entr
from scipy.stats import entropy

from unweave import scoring


def np_softmax(x):
    return np.exp(np_log_softmax(np.asarray(x, dtype=np.float64), -1))


def logits(*shape, seed=0, scale=2.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- KL -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(7, 11), (4, 5, 9), (2, 3, 4, 6)])
def test_kl_per_token_matches_scipy_in_float64(shape):
    p, q = logits(*shape, seed=1), logits(*shape, seed=2)
    got = scoring.kl_per_token(p, q)
    assert got.dtype == torch.float64 and got.shape == shape[:-1]
    want = entropy(np_softmax(p.numpy()), np_softmax(q.numpy()), axis=-1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
    # the direction matters: KL(q || p) is a different number
    assert not np.allclose(scoring.kl_per_token(q, p).numpy(), want, rtol=1e-3)


def test_kl_per_token_is_exact_where_float32_would_round():
    # float32 logits whose log-softmax differences are far below float32 resolution
    p = torch.tensor([[0.0, 1e-6, 30.0]], dtype=torch.float32)
    q = torch.tensor([[0.0, 0.0, 30.0]], dtype=torch.float32)
    pp, qq = np_softmax(p.double().numpy()), np_softmax(q.double().numpy())
    want = (pp * (np.log(pp) - np.log(qq))).sum()  # ~1e-26
    assert scoring.kl_per_token(p, q).item() == pytest.approx(want, rel=1e-6)


def test_kl_per_token_gradients_have_the_closed_form():
    a = logits(3, 6, seed=3).double().requires_grad_()
    b = logits(3, 6, seed=4).double().requires_grad_()
    scoring.kl_per_token(a, b).sum().backward()
    P, Q = np_softmax(a.detach().numpy()), np_softmax(b.detach().numpy())
    kl = entropy(P, Q, axis=-1)[:, None]
    # d KL / d a_i = p_i (log p_i - log q_i - KL);  d KL / d b_i = q_i - p_i
    np.testing.assert_allclose(a.grad.numpy(), P * (np.log(P) - np.log(Q) - kl), atol=1e-12)
    np.testing.assert_allclose(b.grad.numpy(), Q - P, atol=1e-12)


def test_next_token_kl_uses_positions_that_predict_a_token():
    p, q = logits(4, 6, 5, seed=5), logits(4, 6, 5, seed=6)
    got = scoring.next_token_kl(p, q)
    assert got.shape == (4, 5)
    want = entropy(np_softmax(p.numpy()[:, :-1]), np_softmax(q.numpy()[:, :-1]), axis=-1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_kl_per_example_means_over_positions_and_takes_2d_outputs():
    p, q = logits(5, 3, 7, seed=7), logits(5, 3, 7, seed=8)
    got = scoring.kl_per_example(p, q)
    assert got.dtype == torch.float64 and got.shape == (5,)
    want = entropy(np_softmax(p.numpy()), np_softmax(q.numpy()), axis=-1).mean(-1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
    two = scoring.kl_per_example(p[:, 0], q[:, 0])
    np.testing.assert_allclose(
        two.numpy(), entropy(np_softmax(p[:, 0].numpy()), np_softmax(q[:, 0].numpy()), axis=-1), rtol=1e-10
    )
    assert torch.equal(scoring.kl_per_example(p, p), torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(6,), (2, 3, 4, 5)])
def test_outputs_of_other_ranks_are_a_clear_error(shape):
    x = torch.zeros(shape)
    with pytest.raises(
        ValueError,
        match=r"outputs must be logits of shape \(n, classes\) or \(n, positions, classes\), "
        rf"got {re_tuple(shape)}; make Hypothesis.output select them",
    ):
        scoring.kl_per_example(x, x)
    with pytest.raises(ValueError, match="outputs must be logits"):
        scoring.ce_per_example(x, torch.zeros(shape[0], dtype=torch.long))
    with pytest.raises(ValueError, match="outputs must be logits"):
        scoring.predictions(x)


def re_tuple(shape):
    import re

    return re.escape(str(tuple(shape)))


# -- cross-entropy --------------------------------------------------------------------------------
def test_next_token_ce_matches_numpy():
    z = logits(3, 5, 7, seed=9)
    tokens = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(10))
    got = scoring.next_token_ce(z, tokens)
    assert got.dtype == torch.float64 and got.shape == (3 * 4,)
    logp = np_log_softmax(z.double().numpy()[:, :-1], -1)
    want = -np.take_along_axis(logp, tokens.numpy()[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(got.numpy(), want.reshape(-1), rtol=1e-10)  # row-major: example, then position


def test_next_token_ce_keeps_float64_precision():
    # a near-certain prediction: float32 cross-entropy would round to 0
    z = torch.tensor([[[0.0, 20.0], [0.0, 0.0]]], dtype=torch.float32)
    tokens = torch.tensor([[0, 1]])
    assert scoring.next_token_ce(z, tokens).item() == pytest.approx(math.log1p(math.exp(-20.0)), rel=1e-9)


def test_ce_per_example_matches_numpy():
    z = logits(6, 4, 5, seed=11)
    labels = torch.randint(0, 5, (6, 4), generator=torch.Generator().manual_seed(12))
    got = scoring.ce_per_example(z, labels)
    assert got.dtype == torch.float64 and got.shape == (6,)
    logp = np_log_softmax(z.double().numpy(), -1)
    want = -np.take_along_axis(logp, labels.numpy()[..., None], -1)[..., 0].mean(-1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
    # 2-D outputs with (n,) labels; labels given as floats (e.g. read from a file) are cast
    z2, y2 = z[:, 0], labels[:, 0]
    want2 = -np.take_along_axis(logp[:, 0], y2.numpy()[:, None], -1)[:, 0]
    np.testing.assert_allclose(scoring.ce_per_example(z2, y2).numpy(), want2, rtol=1e-10)
    np.testing.assert_allclose(scoring.ce_per_example(z2, y2.double()).numpy(), want2, rtol=1e-10)
    # one position of a 3-D output, labels (n,) or (n, 1)
    np.testing.assert_allclose(scoring.ce_per_example(z[:, :1], y2).numpy(), want2, rtol=1e-10)


def test_ce_per_example_keeps_float64_precision():
    z = torch.tensor([[0.0, 20.0]], dtype=torch.float32)
    assert scoring.ce_per_example(z, torch.tensor([1])).item() == pytest.approx(math.log1p(math.exp(-20.0)), rel=1e-9)


def test_ce_per_example_rejects_mismatched_positions():
    z = torch.zeros(4, 3, 5)
    with pytest.raises(ValueError, match="labels have 2 positions per example, outputs 3"):
        scoring.ce_per_example(z, torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels have 1 positions per example, outputs 3"):
        scoring.ce_per_example(z, torch.zeros(4, dtype=torch.long))


# -- predictions and loss recovered ---------------------------------------------------------------
def test_predictions_are_the_argmax_per_position():
    z = logits(5, 3, 8, seed=13)
    got = scoring.predictions(z)
    assert torch.equal(got, torch.as_tensor(z.numpy().argmax(-1)))
    two = scoring.predictions(z[:, 0])
    assert two.shape == (5, 1) and torch.equal(two[:, 0], torch.as_tensor(z[:, 0].numpy().argmax(-1)))


@pytest.mark.parametrize(
    "clean,patched,baseline,want",
    [
        (0.1, 0.1, 2.0, 1.0),
        (0.1, 2.0, 2.0, 0.0),
        (0.0, 0.5, 1.0, 0.5),
        (1.0, 0.5, 0.0, 0.5),  # baseline better than the model: the same ratio
        (0.5, 3.5, 2.0, -1.0),  # worse than the baseline: negative
        (0.0, 0.0, 1e-12, 1.0),  # a gap of exactly 1e-12 is kept
        (0.0, 0.0, -1e-12, 1.0),
        (0.0, 0.25e-12, 0.5e-12 + 0.5e-12, 0.75),
    ],
)
def test_loss_recovered_closed_form(clean, patched, baseline, want):
    assert scoring.loss_recovered(clean, patched, baseline) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("clean,baseline", [(1.0, 1.0), (0.3, 0.3 + 5e-13), (0.3, 0.3 - 5e-13), (0.0, 0.999e-12)])
def test_loss_recovered_is_nan_when_the_baseline_costs_nothing(clean, baseline):
    assert math.isnan(scoring.loss_recovered(clean, 0.2, baseline))


@pytest.mark.parametrize("shape", [(7, 5, 11), (2, 1040, 2048)])  # float64 below 2^22 entries, float32 above
def test_kl_to_a_fixed_reference_equals_scipys(shape):
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(shape, generator=gen) * 3
    q = p + 0.3 * torch.randn(shape, generator=gen)
    kl = scoring.ReferenceKL(p)
    assert kl.dtype == (torch.float64 if p.numel() <= 2**22 else torch.float32)
    # scipy.special.rel_entr over float64 softmaxes, independent of unweave's log-softmax
    pp, qq = (np_log_softmax(t.double().numpy(), -1) for t in (p, q))
    expected = rel_entr(np.exp(pp), np.exp(qq)).sum(-1).mean(-1)
    assert np.allclose(kl(q).numpy(), expected, rtol=1e-7, atol=1e-12)
    assert torch.allclose(kl(p), torch.zeros(shape[0], dtype=torch.float64), atol=1e-7)
