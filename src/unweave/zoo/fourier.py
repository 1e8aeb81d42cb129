"""The Fourier algorithm of a grokked modular-addition model (Nanda et al. 2023).

The model embeds each residue x as cos(w_k x), sin(w_k x) for a few key frequencies
w_k = 2 pi k / p, and its logits for c are a sum of cos(w_k (a + b - c)) terms. Checks:

- the embedding's Fourier spectrum: the norm of W_E along each frequency; the key
  frequencies hold most of it;
- restricted loss: keep only the logits' components along cos(w_k(a+b)) and sin(w_k(a+b))
  for the key frequencies (plus the mean over a, b); if the story is right, accuracy stays;
- excluded loss: remove exactly those components; if the story is right, the training
  loss gets much worse although the model fits the training set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from unweave.zoo.modadd import ModAddData, answer_logits, loss_fn


def fourier_basis(p: int) -> torch.Tensor:
    """Orthonormal rows over Z_p: constant, then cos(w_k x), sin(w_k x) for k = 1..(p-1)/2."""
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * torch.pi * k * x / p), torch.sin(2 * torch.pi * k * x / p)]
    basis = torch.stack(rows)
    return basis / basis.norm(dim=1, keepdim=True)


def embedding_spectrum(W_E: torch.Tensor, p: int) -> torch.Tensor:
    """Norm of the embedding of residues 0..p-1 along each frequency k = 1..(p-1)/2.

    Index i of the result is frequency i + 1; the constant component is left out (it
    carries no information about the residue).
    """
    coeffs = fourier_basis(p) @ W_E[:p].double()  # (p, d): one row per basis function
    cos_sin = coeffs[1:].view(-1, 2, coeffs.shape[1])
    return cos_sin.pow(2).sum(dim=(1, 2)).sqrt()


def key_frequencies(spectrum: torch.Tensor, share: float = 0.05) -> list[int]:
    """Frequencies (1-based) that each hold at least `share` of the embedding's squared norm.

    After grokking the spectrum is sparse: a handful of frequencies hold nearly all of
    the norm and the rest are near zero, so the cut-off is not delicate.
    """
    sq = spectrum.pow(2)
    keep = (sq / sq.sum() >= share).nonzero().flatten()
    return [int(i) + 1 for i in keep]


def sum_directions(p: int, freqs: list[int]) -> torch.Tensor:
    """Unit vectors over the p*p pairs (a-major) along cos(w_k(a+b)) and sin(w_k(a+b))."""
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T.double()
    dirs = []
    for k in freqs:
        angle = 2 * torch.pi * k * (a + b) / p
        dirs += [torch.cos(angle), torch.sin(angle)]
    if not dirs:
        return torch.zeros(0, p * p, dtype=torch.float64)
    d = torch.stack(dirs)
    return d / d.norm(dim=1, keepdim=True)


def key_component(logits: torch.Tensor, p: int, freqs: list[int]) -> torch.Tensor:
    """The part of the (p*p, p) logits along the key directions in (a, b), for every c."""
    d = sum_directions(p, freqs)  # orthonormal: distinct k and cos/sin are orthogonal on Z_p^2
    return d.T @ (d @ logits.double())


def restricted_logits(logits: torch.Tensor, p: int, freqs: list[int]) -> torch.Tensor:
    return logits.double().mean(0, keepdim=True) + key_component(logits, p, freqs)


def excluded_logits(logits: torch.Tensor, p: int, freqs: list[int]) -> torch.Tensor:
    return logits.double() - key_component(logits, p, freqs)


@dataclass
class FourierAnalysis:
    p: int
    spectrum: list[float]  # index i: frequency i + 1
    key_freqs: list[int]
    key_norm_fraction: float  # share of the embedding's squared norm in the key frequencies
    train_loss: float
    test_loss: float
    test_acc: float
    restricted_test_loss: float
    restricted_test_acc: float
    excluded_train_loss: float
    excluded_train_acc: float

    @property
    def excluded_over_train(self) -> float:
        return self.excluded_train_loss / self.train_loss

    def to_dict(self) -> dict:
        return {**asdict(self), "excluded_over_train": self.excluded_over_train}


def norm_fraction(W_E: torch.Tensor, p: int, freqs: list[int]) -> float:
    """Share of the embedding's squared norm along the given frequencies."""
    spectrum = embedding_spectrum(W_E, p)
    total = W_E[:p].double().pow(2).sum()  # Parseval: the basis is orthonormal
    return (spectrum[[k - 1 for k in freqs]].pow(2).sum() / total).item()


def logit_measures(model: torch.nn.Module, data: ModAddData, p: int, freqs: list[int]) -> dict[str, float]:
    """Loss and accuracy of the model's logits, of the restricted and of the excluded ones."""
    with torch.no_grad():
        logits = answer_logits(model, data.tokens).double()  # every pair, a-major, as key_component expects
    restricted = restricted_logits(logits, p, freqs)
    excluded = excluded_logits(logits, p, freqs)
    tr, te, y = data.train_idx, data.test_idx, data.labels

    def acc(z: torch.Tensor, idx: torch.Tensor) -> float:
        return (z[idx].argmax(-1) == y[idx]).double().mean().item()

    return {
        "train_loss": loss_fn(logits[tr], y[tr]).item(),
        "test_loss": loss_fn(logits[te], y[te]).item(),
        "test_acc": acc(logits, te),
        "restricted_test_loss": loss_fn(restricted[te], y[te]).item(),
        "restricted_test_acc": acc(restricted, te),
        "excluded_train_loss": loss_fn(excluded[tr], y[tr]).item(),
        "excluded_train_acc": acc(excluded, tr),
    }


def analyse(model: torch.nn.Module, data: ModAddData, p: int, share: float = 0.05) -> FourierAnalysis:
    """Key frequencies of the embedding, and restricted and excluded loss with them."""
    W_E = model.W_E.detach()
    spectrum = embedding_spectrum(W_E, p)
    freqs = key_frequencies(spectrum, share)
    return FourierAnalysis(
        p=p,
        spectrum=spectrum.tolist(),
        key_freqs=freqs,
        key_norm_fraction=norm_fraction(W_E, p, freqs),
        **logit_measures(model, data, p, freqs),
    )


def neuron_frequencies(acts: torch.Tensor, p: int) -> torch.Tensor:
    """Each unit's dominant frequency (1-based) from its activations over all p*p pairs
    (a-major, (p*p, units)): the frequency k whose terms (in a alone, in b alone, or in both
    at frequency k: cos/sin w_k a, w_k b, and their products) hold most of its variance."""
    basis = fourier_basis(p)
    grid = acts.double().T.reshape(-1, p, p)  # (units, a, b)
    power = (basis @ grid @ basis.T).pow(2)  # 2-D Fourier coefficients, squared
    freq = (torch.arange(p) + 1) // 2  # frequency of each basis row: 0 (constant), 1, 1, 2, 2, ...
    per_k = []
    for k in range(1, (p + 1) // 2):
        only_k = (freq == k) | (freq == 0)
        per_k.append(power[:, only_k[:, None] & only_k[None, :]].sum(1))
    return torch.stack(per_k, 1).argmax(1) + 1
