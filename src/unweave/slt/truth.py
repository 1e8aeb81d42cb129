"""Closed-form learning coefficients (lambda) for models whose answer is known.

- Normal crossing K(w) = prod_i w_i^(2 p_i) with a prior positive at 0: lambda = 1 / (2 max p_i).
- Reduced-rank regression (two-layer linear network, M inputs, H hidden, N outputs, true
  rank r): Aoyagi & Watanabe (2005), four cases and two parities.
- Deep linear networks (widths H_0 input, ..., H_L output, true rank r): Aoyagi (2024),
  "Consideration on the learning efficiency of multiple-layered neural networks with linear units".
"""

from __future__ import annotations

from fractions import Fraction
from itertools import combinations


def normal_crossing(powers: list[int]) -> float:
    if not powers or min(powers) < 1:
        raise ValueError(f"powers must be positive integers, got {powers}")
    return 1 / (2 * max(powers))


def rrr_case(M: int, H: int, N: int, r: int) -> str:
    """Which of Aoyagi & Watanabe's four cases (M inputs, H hidden, N outputs, rank r) applies."""
    if M + H < N + r:
        return "2"
    if N + H < M + r:
        return "3"
    if M + N < H + r:
        return "4"
    return "1-even" if (M + H + N + r) % 2 == 0 else "1-odd"


def reduced_rank_regression(M: int, H: int, N: int, r: int) -> float:
    """lambda of y = B A x, A: H x M, B: N x H, at a true map of rank r <= min(H, M, N)."""
    if not 0 <= r <= min(M, H, N):
        raise ValueError(f"true rank r={r} must be between 0 and min(M, H, N) = {min(M, H, N)}")
    case = rrr_case(M, H, N, r)
    if case == "2":
        return (H * M - H * r + N * r) / 2
    if case == "3":
        return (H * N - H * r + M * r) / 2
    if case == "4":
        return M * N / 2
    base = 2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2
    return (base + (0 if case == "1-even" else 1)) / 8


def _aoyagi_subset(m: list[int]) -> tuple[int, ...]:
    """The index set S (|S| = l + 1) of Aoyagi's theorem: every M_j in S is below every
    M_k outside it, sum_S M_j >= l * max_S M_j, and sum_S M_j < l * min_{not S} M_k."""
    for size in range(1, len(m) + 1):
        for subset in combinations(range(len(m)), size):
            inside = [m[i] for i in subset]
            outside = [m[i] for i in range(len(m)) if i not in subset]
            ell = size - 1
            if outside and not max(inside) < min(outside):
                continue
            if not sum(inside) >= ell * max(inside):
                continue
            if outside and not sum(inside) < ell * min(outside):
                continue
            return subset
    raise ValueError(f"no subset satisfies Aoyagi's conditions for M_j = {m}")


def deep_linear(widths: list[int], r: int) -> float:
    """lambda of a deep linear network with layer widths [H_0 (input), ..., H_L (output)]."""
    if len(widths) < 3:
        raise ValueError(f"a deep linear network needs at least one hidden layer: widths {widths}")
    if not 0 <= r <= min(widths):
        raise ValueError(f"true rank r={r} must be between 0 and the narrowest width {min(widths)}")
    m = [h - r for h in widths]
    inside = [m[i] for i in _aoyagi_subset(m)]
    ell = len(inside) - 1  # >= 1: a single index cannot satisfy sum < 0 * min(outside)
    s = sum(inside)
    big_m = -(-s // ell)  # ceil(s / l)
    a = s - (big_m - 1) * ell
    pairs = sum(inside[i] * inside[j] for i in range(len(inside)) for j in range(i + 1, len(inside)))
    lam = (
        Fraction(-r * r + r * (widths[0] + widths[-1]), 2)
        + Fraction(a * (ell - a), 4 * ell)
        - Fraction(ell * (ell - 1), 4) * Fraction(s, ell) ** 2
        + Fraction(pairs, 2)
    )
    return float(lam)


def flat_directions(widths: list[int], r: int) -> int:
    """Zero eigenvalues of the Hessian of a deep linear network's loss at the planted minimum
    (`zoo.singular.deep_linear_task`: an r x r block per layer, every other weight zero), with
    whitened inputs. The Hessian is J^T J for J the derivative of the product map; J's image is
    the maps whose columns lie in the output block or whose rows lie in the input block,
    r (H_0 + H_L - r) dimensions, so the rest of the d weights are flat."""
    d = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return d - r * (widths[0] + widths[-1] - r)


def normal_crossing_flat_directions(powers: list[int]) -> int:
    """Zero eigenvalues of the Hessian of prod_i w_i^(2 p_i) at 0: none for w^2, else all."""
    return 0 if powers == [1] else len(powers)
