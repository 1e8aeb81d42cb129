"""The Hessian view: how many directions at w* are (nearly) flat.

A regular model has a full-rank Hessian at its optimum and lambda = d/2; singular models
have many near-zero eigenvalues. Exact for small parameter counts; for larger ones the
spectral density is estimated by stochastic Lanczos quadrature (Ubaru et al. 2017) from
Hessian-vector products, and the near-zero count is d times its mass near zero.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch.func import functional_call, grad, hessian, jvp

from unweave.slt.sgld import LossFn, select_parameters


@dataclass
class HessianSummary:
    n_params: int
    near_zero: float  # eigenvalues with |e| <= tol * max|e| (an estimate when method is "slq")
    max_abs_eigenvalue: float
    tol: float
    method: str  # "exact" or "slq"


def _full_batch(loader: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def _flat_loss(
    model: torch.nn.Module, loss_fn: LossFn, names: list[str], x: torch.Tensor, y: torch.Tensor
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    w0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def f(flat: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(flat, sizes)
        p = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        return loss_fn(functional_call(model, p, (x,)), y)

    return f, w0


def hessian_summary(
    model: torch.nn.Module,
    loss_fn: LossFn,
    loader: Iterable,
    params: str | Iterable[str] | None = None,
    tol: float = 1e-3,
    exact_limit: int = 3000,
    lanczos_steps: int = 80,
    probes: int = 4,
    seed: int = 0,
) -> HessianSummary:
    names = select_parameters(model, params)
    x, y = _full_batch(loader)
    f, w0 = _flat_loss(model, loss_fn, names, x, y)
    d = w0.numel()
    if d <= exact_limit:
        eig = torch.linalg.eigvalsh(hessian(f)(w0).double().cpu())
        top = eig.abs().max().item()
        return HessianSummary(d, float((eig.abs() <= tol * top).sum()), top, tol, "exact")

    def hvp(v: torch.Tensor) -> torch.Tensor:
        # Lanczos runs in float64 on the CPU; the products run where the model is
        return jvp(grad(f), (w0,), (v.to(w0.device, w0.dtype),))[1].detach().double().cpu()

    gen = torch.Generator().manual_seed(seed)
    nodes, weights = [], []
    for _ in range(probes):
        t = _lanczos(hvp, d, lanczos_steps, gen)
        theta, vecs = torch.linalg.eigh(t)
        nodes.append(theta)
        weights.append(vecs[0].pow(2))  # quadrature weights: the probe's mass on each Ritz vector
    nodes, weights = torch.cat(nodes), torch.cat(weights) / probes
    top = nodes.abs().max().item()
    return HessianSummary(d, d * weights[nodes.abs() <= tol * top].sum().item(), top, tol, "slq")


def top_eigenvalue(f: Callable[[torch.Tensor], torch.Tensor], w: torch.Tensor, iters: int = 30, seed: int = 0) -> float:
    """The largest |eigenvalue| of the Hessian of `f` at `w`, by power iteration on Hessian-vector products."""
    v = torch.randn(w.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(w.device, w.dtype)
    top = 0.0
    for _ in range(iters):
        v = v / v.norm().clamp(min=1e-30)
        hv = jvp(grad(f), (w,), (v,))[1].detach()
        top = hv.norm().item()
        if top == 0.0:
            break
        v = hv
    return top


def curvature_scale(
    model: torch.nn.Module,
    loss_fn: LossFn,
    loader: Iterable,
    nbeta: float,
    params: str | Iterable[str] | None = None,
    seed: int = 0,
) -> float:
    """The stiffest curvature the chains will meet: the top Hessian eigenvalue of the loss (on the
    loader's first batch) at w*, or at the point one nat out (n_beta (L(w) - L(w*)) = 1) along a
    random direction, whichever is larger. The second covers minima whose Hessian vanishes
    (K = w^4), where the chains' own scale sets the curvature they meet."""
    names = select_parameters(model, params)
    x, y = next(iter(loader))
    f, w0 = _flat_loss(model, loss_fn, names, x, y)
    h = top_eigenvalue(f, w0, seed=seed)
    u = torch.randn(w0.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    u = (u / u.norm()).to(w0.device, w0.dtype)
    with torch.no_grad():
        base = f(w0).item()
        rise = lambda r: nbeta * (f(w0 + r * u).item() - base)  # noqa: E731
        lo, hi = 1e-8, 1e3
        if rise(hi) < 1:  # flat in this direction as far as we look: the top eigenvalue at w* decides
            return h
        for _ in range(60):  # bisection in log r
            mid = (lo * hi) ** 0.5
            lo, hi = (mid, hi) if rise(mid) < 1 else (lo, mid)
    return max(h, top_eigenvalue(f, w0 + hi * u, seed=seed))


def _lanczos(hvp: Callable[[torch.Tensor], torch.Tensor], d: int, steps: int, gen: torch.Generator) -> torch.Tensor:
    v = torch.randn(d, generator=gen, dtype=torch.float64)
    v /= v.norm()
    vs, alphas, betas = [v], [], []
    w = hvp(v)
    for k in range(steps):
        alpha = torch.dot(w, vs[-1])
        w = w - alpha * vs[-1] - (betas[-1] * vs[-2] if betas else 0)
        for u in vs:  # full reorthogonalisation: keeps the Ritz values honest at this size
            w -= torch.dot(w, u) * u
        alphas.append(alpha)
        beta = w.norm()
        if k == steps - 1 or beta < 1e-10:
            break
        betas.append(beta)
        vs.append(w / beta)
        w = hvp(vs[-1])
    t = torch.diag(torch.stack(alphas))
    if betas:
        off = torch.stack(betas[: len(alphas) - 1])
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return t


def gradient_noise(
    model: torch.nn.Module,
    loss_fn: LossFn,
    loader: Iterable,
    params: str | Iterable[str] | None = None,
    batches: int = 16,
) -> float:
    """The largest variance of a minibatch gradient along any direction at w*: the top eigenvalue
    of the covariance of the loader's batch-mean gradients, from its first `batches` batches
    (its batch size, its order). SGLD with minibatches adds (eps/2)^2 n_beta^2 times this to the
    eps of injected noise along that direction, heating the chains there."""
    names = select_parameters(model, params)
    grads = []
    for x, y in loader:
        f, w0 = _flat_loss(model, loss_fn, names, x, y)
        grads.append(grad(f)(w0).detach().double().cpu())
        if len(grads) == batches:
            break
    if len(grads) < 2:
        return 0.0
    g = torch.stack(grads)
    centred = (g - g.mean(0)) / (len(grads) - 1) ** 0.5
    return torch.linalg.svdvals(centred)[0].item() ** 2
