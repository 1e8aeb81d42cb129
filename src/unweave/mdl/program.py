"""The Fourier algorithm of a modular-addition model written as a program, and its bits.

    logits(a, b, c) = sum_k A_k cos(w_k (a + b - c)) + B_k sin(w_k (a + b - c)),  w_k = 2 pi k / p

The program is named by p and the key frequencies (`fourier_spec_bits`) and carries two
amplitudes per frequency, fitted by minimising the mean KL from the model's output
distribution over all p^2 pairs, then quantised at the coarsest step within the tolerance.
Its bits, beside the bits of the quantised weights, say how much shorter the algorithm is
than the network that runs it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from unweave.mdl import coding
from unweave.mdl.quantise import coarsest_delta, quantised_tensors, tensor_bits
from unweave.scoring import kl_per_example


def fourier_spec_bits(p: int, freqs: list[int]) -> float:
    """Bits naming the modulus (Elias gamma), how many frequencies (gamma) and each of them
    (uniform over 1..(p-1)/2)."""
    return float(coding.gamma_bits(p) + coding.gamma_bits(len(freqs) + 1)) + len(freqs) * math.log2((p - 1) / 2)


def sum_functions(pairs: torch.Tensor, p: int, freqs: list[int]) -> torch.Tensor:
    """cos and sin of w_k (a + b) for each key frequency, (n, 2K): the analytic codes."""
    s = pairs[:, 0].double() + pairs[:, 1].double()
    return torch.stack([f(2 * math.pi * k * s / p) for k in freqs for f in (torch.cos, torch.sin)], dim=1)


def program_logits(amplitudes: torch.Tensor, pairs: torch.Tensor, p: int, freqs: list[int]) -> torch.Tensor:
    """(n, p) logits of the program; amplitudes (K, 2): A_k, B_k."""
    s = pairs[:, 0].double() + pairs[:, 1].double()
    c = torch.arange(p, dtype=torch.float64)
    angle = torch.stack([2 * math.pi * k * (s[:, None] - c[None]) / p for k in freqs])  # (K, n, p)
    return (amplitudes[:, 0, None, None] * angle.cos() + amplitudes[:, 1, None, None] * angle.sin()).sum(0)


def fit_amplitudes(logits: torch.Tensor, pairs: torch.Tensor, p: int, freqs: list[int]) -> torch.Tensor:
    """Amplitudes minimising the mean KL(model || program) (L-BFGS from A_k = 1, B_k = 0)."""
    amplitudes = torch.zeros(len(freqs), 2, dtype=torch.float64)
    amplitudes[:, 0] = 1.0
    amplitudes.requires_grad_(True)
    opt = torch.optim.LBFGS([amplitudes], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = kl_per_example(logits, program_logits(amplitudes, pairs, p, freqs)).mean()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    return amplitudes.detach()


@dataclass
class ProgramBits:
    freqs: list[int]
    amplitudes: list[list[float]]  # quantised, (K, 2)
    bits: float | None
    spec_bits: float
    kl: float
    accuracy: float  # of the quantised program on the labels
    delta: float
    meets_tolerance: bool

    def to_dict(self) -> dict:
        return asdict(self)


def program_bits(
    logits: torch.Tensor, pairs: torch.Tensor, labels: torch.Tensor, p: int, freqs: list[int], tolerance: float
) -> ProgramBits:
    """The Fourier program fitted to the model's `logits` on `pairs`, quantised at the
    coarsest step whose mean KL stays within `tolerance`, and its bits."""
    logits = logits.double()
    amplitudes = fit_amplitudes(logits, pairs, p, freqs)

    def kl(delta: float) -> float:
        q = quantised_tensors({"amplitudes": amplitudes}, delta)["amplitudes"]
        return kl_per_example(logits, program_logits(q, pairs, p, freqs)).mean().item()

    search = coarsest_delta(kl, tolerance)
    q = quantised_tensors({"amplitudes": amplitudes}, search.delta)["amplitudes"]
    spec = fourier_spec_bits(p, freqs)
    bits = spec + tensor_bits({"amplitudes": amplitudes}, search.delta)
    accuracy = (program_logits(q, pairs, p, freqs).argmax(1) == labels).double().mean().item()
    return ProgramBits(
        freqs, q.tolist(), bits if search.met else None, spec, search.distortion, accuracy, search.delta, search.met
    )
