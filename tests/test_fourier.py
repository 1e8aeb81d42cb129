import numpy as np
import pytest
import torch

from unweave.zoo import fourier
from unweave.zoo.modadd import make_data


def test_basis_is_orthonormal():
    b = fourier.fourier_basis(13)
    torch.testing.assert_close(b @ b.T, torch.eye(13, dtype=torch.float64))


def test_spectrum_matches_numpy_fft():
    p, d = 17, 6
    W = torch.randn(p + 1, d)  # the extra row is the '=' token, not a residue
    F = np.fft.rfft(W[:p].double().numpy(), axis=0)  # F[k] = sum_x W[x] exp(-2 pi i k x / p)
    # |F[k]|^2 summed over d equals (p/2) times the squared norm along the unit cos/sin pair
    expected = np.sqrt((np.abs(F[1:]) ** 2).sum(axis=1) * 2 / p)
    np.testing.assert_allclose(fourier.embedding_spectrum(W, p).numpy(), expected, rtol=1e-10)


def test_key_frequencies_and_norm_fraction_recover_planted_embedding():
    p, x = 23, torch.arange(23, dtype=torch.float64)
    planted = [3, 8]
    cols = [torch.cos(2 * torch.pi * k * x / p) for k in planted] + [
        torch.sin(2 * torch.pi * k * x / p) for k in planted
    ]
    planted_part = torch.stack(cols, dim=1)
    other = 0.1 * torch.cos(2 * torch.pi * 5 * x / p)[:, None].expand(p, 4)  # orthogonal to the planted part
    W = planted_part + other
    spectrum = fourier.embedding_spectrum(W, p)
    assert fourier.key_frequencies(spectrum) == planted
    a, b = planted_part.pow(2).sum(), other.pow(2).sum()
    assert fourier.norm_fraction(W, p, planted) == pytest.approx((a / (a + b)).item(), rel=1e-12)


def numpy_restricted(logits: np.ndarray, p: int, freqs: list[int]) -> np.ndarray:
    """Independent reference: keep the 2-D DFT terms (0,0), (k,k), (-k,-k) of each logit grid."""
    grid = logits.reshape(p, p, -1)
    spec = np.fft.fft2(grid, axes=(0, 1))
    keep = np.zeros((p, p), dtype=bool)
    keep[0, 0] = True
    for k in freqs:
        keep[k, k] = keep[p - k, p - k] = True
    return np.fft.ifft2(spec * keep[:, :, None], axes=(0, 1)).real.reshape(p * p, -1)


def test_restricted_and_excluded_logits_match_2d_dft():
    p, freqs = 11, [2, 5]
    logits = torch.randn(p * p, p, dtype=torch.float64)
    restricted = fourier.restricted_logits(logits, p, freqs)
    np.testing.assert_allclose(restricted.numpy(), numpy_restricted(logits.numpy(), p, freqs), atol=1e-10)
    mean = logits.mean(0, keepdim=True)
    torch.testing.assert_close(fourier.excluded_logits(logits, p, freqs) + restricted - mean, logits)


def test_grokked_model_passes_fourier_acceptance(small_modadd):
    """Issue acceptance on a small model: restricted test accuracy >= 99% and excluded
    train loss >= 10x the full train loss."""
    cfg = small_modadd.config
    a = fourier.analyse(small_modadd.load(), make_data(cfg), cfg.p)
    assert a.test_acc >= 0.99
    assert 1 <= len(a.key_freqs) <= 8
    assert a.key_norm_fraction >= 0.8
    assert a.restricted_test_acc >= 0.99
    assert a.excluded_train_loss >= 10 * a.train_loss
    # control: with frequencies the model does not use, "restriction" destroys accuracy
    others = [k for k in range(1, (cfg.p - 1) // 2 + 1) if k not in a.key_freqs][: len(a.key_freqs)]
    control = fourier.logit_measures(small_modadd.load(), make_data(cfg), cfg.p, others)
    assert control["restricted_test_acc"] < 0.5
