"""Anomaly-detection metrics against scikit-learn and hand counts, dictionary metrics against
numpy: every definition and every error, on small cases whose answer is known."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from unweave.anomaly import metrics as det
from unweave.dictionaries import metrics as dic
from unweave.zoo import fourier


# -- detection: AUROC, average precision, FPR at a TPR ---------------------------------------------
def sklearn_fpr_at_tpr(s, y, tpr):
    fpr, tprs, _ = roc_curve(y, s, drop_intermediate=False)
    return fpr[np.searchsorted(tprs, tpr - 1e-12)]  # first threshold reaching the TPR


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rounded", [False, True])
def test_detection_metrics_match_scikit_learn(seed, rounded):
    rng = np.random.default_rng(seed)
    n = 60 + 37 * seed
    y = rng.random(n) < 0.3
    y[:2] = [True, False]
    s = rng.normal(size=n) + 0.8 * y
    s = np.round(s, 1) if rounded else s  # ties
    assert det.auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert det.average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    for tpr in (0.5, 0.8, 0.95, 1.0):
        assert det.fpr_at_tpr(s, y, tpr) == pytest.approx(sklearn_fpr_at_tpr(s, y, tpr), abs=1e-12), tpr
    assert det.fpr_at_tpr(s, y) == pytest.approx(sklearn_fpr_at_tpr(s, y, 0.95), abs=1e-12)
    assert det.summary(s, y) == {
        "auroc": det.auroc(s, y),
        "ap": det.average_precision(s, y),
        "fpr@95tpr": det.fpr_at_tpr(s, y, 0.95),
    }


def test_detection_metrics_by_hand():
    # scores 0.9 0.8 0.7 0.6 0.5 0.4, labels 1 0 1 1 0 1 (the lowest-scored example is an anomaly)
    s = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    y = [1, 0, 1, 1, 0, 1]
    # pairs (anomaly above normal): 0.9 beats both, 0.7 and 0.6 beat 0.5 only, 0.4 none: 4 of 8
    assert det.auroc(s, y) == pytest.approx(4 / 8)
    # precision at each anomaly: 1/1, 2/3, 3/4, 4/6
    assert det.average_precision(s, y) == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 6) / 4)
    # all four anomalies: threshold 0.4 flags both normals; three of four (0.75 >= 0.7): threshold 0.6
    assert det.fpr_at_tpr(s, y, 1.0) == 1.0
    assert det.fpr_at_tpr(s, y, 0.7) == 0.5
    assert det.fpr_at_tpr(s, y, 0.75) == 0.5
    assert det.fpr_at_tpr(s, y, 0.25) == 0.0
    assert det.fpr_at_tpr(s, y, 0.26) == 0.5
    # the default is 95%: all four anomalies needed
    assert det.fpr_at_tpr(s, y) == 1.0


def test_detection_ties_count_half_and_as_one_threshold():
    # an anomaly and a normal share the top score
    s, y = [1.0, 1.0, 0.0, 0.0], [1, 0, 1, 0]
    assert det.auroc(s, y) == pytest.approx(0.5)  # pairs (anomaly, normal): (1/2 + 1 + 0 + 1/2) / 4
    assert det.average_precision(s, y) == pytest.approx(0.5)  # both thresholds have precision 1/2
    assert det.average_precision(s, y) == pytest.approx(average_precision_score(y, s))
    # the normal ties the threshold: it is flagged (score >= threshold)
    assert det.fpr_at_tpr(s, y, 0.5) == 0.5
    assert det.fpr_at_tpr([2.0, 1.0, 1.0, 0.0], [1, 1, 0, 0], 1.0) == 0.5
    # perfect and inverted scores
    assert det.auroc([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0 and det.auroc([0, 1, 2, 3], [1, 1, 0, 0]) == 0.0
    assert det.average_precision([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0
    assert det.average_precision([0, 1, 2, 3], [1, 1, 0, 0]) == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_detection_accepts_lists_ints_and_nonbinary_truthy_labels():
    s = np.array([5, 3, 4, 1, 2])  # integer scores
    y = np.array([2, 0, 7, 0, 0])  # any non-zero label is an anomaly
    yb = y != 0
    assert det.auroc(list(s), list(y)) == pytest.approx(roc_auc_score(yb, s))
    assert det.average_precision(s, y) == pytest.approx(average_precision_score(yb, s))
    assert det.fpr_at_tpr(s, y, 1.0) == 0.0  # anomalies 5 and 4 above every normal
    assert det.fpr_at_tpr(-s, y, 1.0) == 1.0
    # boolean scores (a detector that only flags) are numbers too
    flags = np.array([True, False, True, False, False])
    assert det.average_precision(flags, y) == pytest.approx(average_precision_score(yb, flags))
    assert det.auroc(flags, y) == pytest.approx(roc_auc_score(yb, flags))


def error_message(fn, *args):
    with pytest.raises(ValueError) as info:
        fn(*args)
    return str(info.value)


@pytest.mark.parametrize("fn", [det.auroc, det.average_precision, det.fpr_at_tpr, det.summary])
def test_detection_input_errors(fn):
    assert error_message(fn, [0.1, 0.2, 0.3], [0, 1]) == (
        "scores and labels must be 1-D and of one length, got (3,) and (2,)"
    )
    assert error_message(fn, [[0.1, 0.2], [0.3, 0.4]], [[0, 1], [1, 0]]) == (
        "scores and labels must be 1-D and of one length, got (2, 2) and (2, 2)"
    )
    assert error_message(fn, 0.5, 1) == "scores and labels must be 1-D and of one length, got () and ()"
    both = (
        "labels must contain both normal (0) and anomalous (1) examples; a task with no anomalous (or no "
        "normal) examples has no detection score"
    )
    assert error_message(fn, [0.1, 0.2], [0, 0]) == both
    assert error_message(fn, [0.1, 0.2], [1, 1]) == both
    assert error_message(fn, [0.1, np.nan, 0.3], [0, 1, 1]) == "scores contain NaN or inf"
    assert error_message(fn, [0.1, np.inf, 0.3], [0, 1, 1]) == "scores contain NaN or inf"
    assert error_message(fn, [0.1, -np.inf, 0.3], [0, 1, 1]) == "scores contain NaN or inf"


# -- dictionaries: reconstruction and sparsity ------------------------------------------------------
def test_mse_and_fvu_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 7)) * rng.uniform(0.5, 3, size=7) + rng.normal(size=7) * 4  # not centred
    recon = x + 0.4 * rng.normal(size=(50, 7))
    xt, rt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(recon, dtype=torch.float32)
    x32, r32 = xt.double().numpy(), rt.double().numpy()
    assert dic.mse(xt, rt) == pytest.approx(((x32 - r32) ** 2).mean(), rel=1e-6)
    want = ((x32 - r32) ** 2).sum() / ((x32 - x32.mean(0)) ** 2).sum()
    assert dic.fvu(xt, rt) == pytest.approx(want, rel=1e-9)
    # closed forms: the data itself, and its per-dimension mean
    assert dic.fvu(xt, xt) == 0.0 and dic.mse(xt, xt) == 0.0
    assert dic.fvu(xt, xt.mean(0).expand_as(xt)) == pytest.approx(1.0, rel=1e-9)
    assert dic.fvu(xt, torch.zeros_like(xt)) == pytest.approx((x32**2).sum() / ((x32 - x32.mean(0)) ** 2).sum())
    assert isinstance(dic.mse(xt, rt), float) and isinstance(dic.fvu(xt, rt), float)


def test_mse_of_a_known_difference():
    x = torch.zeros(2, 3)
    recon = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    assert dic.mse(x, recon) == pytest.approx((1 + 4 + 9) / 6)
    assert dic.fvu(recon, x) == pytest.approx(14 / ((recon - recon.mean(0)) ** 2).sum().item())


def test_fvu_with_a_total_of_exactly_one():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])  # squared deviations about the mean: 4 x 0.25 = 1
    assert dic.fvu(x, torch.zeros_like(x)) == 2.0


def test_fvu_of_data_without_variance_is_an_error():
    x = torch.full((4, 3), 2.5)
    with pytest.raises(ValueError) as info:
        dic.fvu(x, x + 1)
    assert str(info.value) == "FVU is undefined for data with zero variance"


@pytest.mark.parametrize("fn", [dic.mse, dic.fvu])
def test_reconstruction_shape_errors(fn):
    def message(x, r):
        with pytest.raises(ValueError) as info:
            fn(x, r)
        return str(info.value)

    assert message(torch.zeros(4, 3), torch.zeros(4, 2)) == (
        "x and recon must both have shape (n, d); got (4, 3) and (4, 2)"
    )
    assert message(torch.zeros(2, 4, 3), torch.zeros(2, 4, 3)) == (
        "x and recon must both have shape (n, d); got (2, 4, 3) and (2, 4, 3)"
    )
    assert message(torch.zeros(4), torch.zeros(4)) == "x and recon must both have shape (n, d); got (4,) and (4,)"


def test_sparsity_metrics_match_numpy():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(40, 9)) * (rng.random((40, 9)) < np.linspace(0, 0.9, 9))  # latent j fires ~j/10
    z[:, 3] = -np.abs(z[:, 3])  # negative activations count as firing
    zt = torch.as_tensor(z, dtype=torch.float32)
    nz = z != 0
    assert dic.l0(zt) == pytest.approx(nz.sum(1).mean(), rel=1e-12)
    density = dic.firing_density(zt)
    assert density.shape == (9,) and density.dtype == torch.float64
    np.testing.assert_allclose(density.numpy(), nz.mean(0), rtol=1e-12)
    assert dic.dead_fraction(zt) == pytest.approx((nz.mean(0) == 0).mean(), rel=1e-12)
    for threshold in (0.05, 0.3, 0.6):
        assert dic.dense_fraction(zt, threshold) == pytest.approx((nz.mean(0) > threshold).mean(), rel=1e-12)


def test_dense_fraction_threshold_is_strict_and_defaults_to_a_tenth():
    z = torch.zeros(10, 4)
    z[:1, 0] = 1.0  # fires on exactly 1/10 of examples: not dense at the default
    z[:2, 1] = 2.0  # 2/10: dense
    z[:, 2] = -1.0  # always
    assert dic.firing_density(z).tolist() == [0.1, 0.2, 1.0, 0.0]
    assert dic.dense_fraction(z) == 0.5
    assert dic.dense_fraction(z, 0.2) == 0.25
    assert dic.dense_fraction(z, 0.0) == 0.75
    assert dic.dead_fraction(z) == 0.25
    assert dic.l0(z) == pytest.approx((1 + 2 + 10) / 10)


# -- Fourier analysis of modular addition: the cut-off and the empty claim -----------------------
def test_key_frequencies_cut_off_on_the_squared_norm_share():
    # squares 1, 4, 9 of 14: shares 0.071, 0.286, 0.643; all three hold at least 5%
    assert fourier.key_frequencies(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)) == [1, 2, 3]
    assert fourier.key_frequencies(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), share=0.1) == [2, 3]
    assert fourier.key_frequencies(torch.tensor([3.0, 0.0, 1.0, 0.5], dtype=torch.float64), share=0.5) == [1]
    # 20 equal frequencies hold exactly 5% each: kept at the default share (at least, not more than)
    assert fourier.key_frequencies(torch.ones(20, dtype=torch.float64)) == list(range(1, 21))
    assert fourier.key_frequencies(torch.ones(4, dtype=torch.float64), share=0.25) == [1, 2, 3, 4]


def test_no_key_frequencies_claim_nothing():
    p = 7
    d = fourier.sum_directions(p, [])
    assert d.shape == (0, p * p) and d.dtype == torch.float64
    logits = torch.randn(p * p, p, generator=torch.Generator().manual_seed(0))
    L = logits.double().numpy()
    np.testing.assert_allclose(fourier.key_component(logits, p, []).numpy(), np.zeros((p * p, p)))
    np.testing.assert_allclose(fourier.restricted_logits(logits, p, []).numpy(), np.broadcast_to(L.mean(0), L.shape))
    np.testing.assert_allclose(fourier.excluded_logits(logits, p, []).numpy(), L)


def test_sum_directions_are_unit_cos_and_sin_of_the_sum():
    p, freqs = 7, [3, 1]
    d = fourier.sum_directions(p, freqs).numpy()
    a, b = np.divmod(np.arange(p * p), p)
    want = []
    for k in freqs:
        for wave in (np.cos, np.sin):
            v = wave(2 * np.pi * k * (a + b) / p)
            want.append(v / np.linalg.norm(v))
    np.testing.assert_allclose(d, np.stack(want), atol=1e-12)


def test_fourier_basis_rows_in_order():
    p = 5
    b = fourier.fourier_basis(p).numpy()
    x = np.arange(p)
    want = [np.ones(p) / np.sqrt(p)]
    for k in (1, 2):
        want += [np.cos(2 * np.pi * k * x / p) * np.sqrt(2 / p), np.sin(2 * np.pi * k * x / p) * np.sqrt(2 / p)]
    np.testing.assert_allclose(b, np.stack(want), atol=1e-12)
