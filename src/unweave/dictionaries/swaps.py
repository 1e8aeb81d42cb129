"""Swap moves for one-latent dictionaries (TopK with k = 1): each example is explained by
its best latent alone, as in spherical k-means.

Gradient training cannot move a latent across to examples it never wins, so a run can end
with a latent wasted (dead, a near-duplicate of another, or stuck between two features)
while a feature has no latent at all. `swap_wasted_latent` is k-means' swap move on the
one-latent reconstruction error: the latent whose examples would lose least by falling to
their second-best latent is moved onto a poorly explained example (drawn with probability
proportional to its squared error, as Bricken et al. 2023 resample dead latents), if that
example's direction gains more error than the latent's removal costs. Directions are
measured from the origin: the activations are non-negative combinations of directions.
"""

from __future__ import annotations

import torch

from unweave.dictionaries.sae import SAE


def one_latent_errors(x: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """(n, m): each row's squared error when explained by each of the m unit directions alone
    (its best non-negative multiple)."""
    sq = x.pow(2).sum(1, keepdim=True)
    cos = (x @ directions.T / sq.sqrt().clamp(min=1e-30)).clamp(min=0, max=1)
    return sq * (1 - cos**2)


@torch.no_grad()
def swap_wasted_latent(sae: SAE, x: torch.Tensor, gen: torch.Generator, candidates: int = 16) -> bool:
    """One swap move on `sae` (TopK, k = 1) judged on the rows x; True if a latent moved."""
    if sae.cfg.architecture != "topk" or sae.cfg.k != 1 or sae.cfg.kind != "sae":
        raise ValueError(f"swap moves are for TopK SAEs with k = 1, got {sae.cfg.architecture} with k = {sae.cfg.k}")
    width = sae.cfg.n_latents
    if width < 2:
        return False
    x = x.to(sae.W_dec.dtype)
    directions = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    low = one_latent_errors(x, directions).topk(2, dim=1, largest=False)
    (error, second), best = low.values.unbind(1), low.indices[:, 0]
    if not error.sum() > 0:
        return False
    # what removing each latent costs: its rows fall to their second-best latent
    cost = torch.zeros(width, dtype=x.dtype, device=x.device).index_add_(0, best, second - error)
    wasted = int(cost.argmin())
    drawn = torch.multinomial(error, min(candidates, int((error > 0).sum())), replacement=False, generator=gen)
    new = x[drawn] / x[drawn].norm(dim=1, keepdim=True)
    # error of every row with the new direction added, for each candidate
    with_new = torch.minimum(error[:, None], one_latent_errors(x, new))
    gain = (error[:, None] - with_new).sum(0)
    chosen = int(gain.argmax())
    if not gain[chosen] > cost[wasted]:
        return False
    encoder_norm = sae.W_enc.norm(dim=0).mean()
    sae.W_dec[wasted] = new[chosen]
    sae.W_enc[:, wasted] = new[chosen] * encoder_norm
    sae.b_enc[wasted] = 0
    return True
