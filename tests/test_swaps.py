"""Swap moves for one-latent dictionaries: the error they minimise against a direct
computation, a planted wasted latent moved onto the missing ray (and nothing moved when
every ray has its latent), and the toy of superposition at a size where gradient training
alone leaves a feature without a latent."""

import pytest
import torch

from unweave.dictionaries.sae import SAE, SAEConfig
from unweave.dictionaries.swaps import one_latent_errors, swap_wasted_latent
from unweave.mdl.targets import REPRESENTED, train_tms_dictionaries
from unweave.zoo.superposition import mean_max_cosine, train_toy


def test_one_latent_errors_match_the_nonnegative_least_squares_fit():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    d = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True)
    direct = torch.stack([torch.stack([(row - max(0.0, float(row @ u)) * u).pow(2).sum() for u in d]) for row in x])
    torch.testing.assert_close(one_latent_errors(x, d), direct)


def _rays(n_rays: int, d: int, per_ray: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit rays and examples on them (positive multiples, one ray each)."""
    gen = torch.Generator().manual_seed(seed)
    rays = torch.randn(n_rays, d, generator=gen)
    rays = rays / rays.norm(dim=1, keepdim=True)
    scale = torch.rand(n_rays, per_ray, 1, generator=gen) + 0.1
    return rays, (rays[:, None, :] * scale).reshape(-1, d)


def test_a_duplicate_latent_moves_onto_the_ray_that_has_none():
    rays, x = _rays(5, 3, 200)
    sae = SAE(SAEConfig(d_in=3, n_latents=5, architecture="topk", k=1))
    with torch.no_grad():  # rays 0-3 have a latent, ray 0 two; ray 4 none
        sae.W_dec.copy_(torch.cat([rays[:4], rays[:1]]))
        sae.W_enc.copy_(sae.W_dec.T)
    assert swap_wasted_latent(sae, x, torch.Generator().manual_seed(1))
    learned = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    assert (learned @ rays.T).max(0).values.min() > 0.999  # every ray now has its latent
    assert not swap_wasted_latent(sae, x, torch.Generator().manual_seed(2))  # nothing left to gain


def test_swaps_are_for_one_latent_topk_dictionaries():
    sae = SAE(SAEConfig(d_in=3, n_latents=4, architecture="topk", k=2))
    with pytest.raises(ValueError, match="k = 1"):
        swap_wasted_latent(sae, torch.randn(10, 3), torch.Generator())


@pytest.mark.slow  # about 30 s: the toy and two dictionaries trained in full
def test_every_run_recovers_the_toys_features_where_gradient_steps_alone_missed_one():
    # 32 features in 4 dimensions (N = 8M): without swaps, six of six runs at this seed left a
    # feature without a latent (mean max cosine 0.97-0.98)
    model = train_toy(32, 4, p_active=0.05, seed=2)
    norms = model.W.detach().norm(dim=0)
    true = model.W.detach().T[norms >= REPRESENTED * norms.max()]
    saes = train_tms_dictionaries(model, 32, [len(true)], seed=2, restarts=2)
    assert [mean_max_cosine(true, s.W_dec.detach()) >= 0.99 for s in saes] == [True, True]
