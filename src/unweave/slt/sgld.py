"""SGLD around trained weights w*, many chains at once.

Each step, for each chain (Welling & Teh 2011; Lau et al. 2023, localised form):

    w <- w - (eps / 2) * G * (n_beta * grad L_batch(w) + gamma * (w - w*)) + sqrt(eps * G) * N(0, I)

with G = 1 (plain SGLD) or the RMSProp preconditioner G = 1 / (sqrt(V) + delta),
V <- alpha V + (1 - alpha) drift^2, drift = n_beta grad L + gamma (w - w*) (Li et al. 2016). Chains are vectorised with
`torch.func.functional_call` + `vmap` over stacked parameter copies when the model allows
it, and run in a loop otherwise; chain c's noise and batch order depend only on (seed, c).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch.func import functional_call, grad_and_value, vmap
from torch.utils.data import RandomSampler, SequentialSampler, TensorDataset, default_collate

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class LLCError(ValueError):
    """A local learning coefficient that cannot be estimated: bad model, data or settings."""


@dataclass(frozen=True)
class SGLDConfig:
    epsilon: float = 1e-3  # step size
    nbeta: float | None = None  # inverse temperature n*beta; None: n / ln n
    localization: float = 100.0  # gamma, the pull towards w*
    chains: int = 4
    draws: int = 200
    burn_in: int = 0
    rmsprop: bool = False
    rmsprop_alpha: float = 0.99
    rmsprop_delta: float = 1e-4
    seed: int = 0
    vectorize: bool | str = "auto"  # True: vmap over chains; False: a loop; "auto": time both, keep the faster

    def __post_init__(self):
        if not self.epsilon > 0:
            raise LLCError(f"SGLDConfig.epsilon must be positive, got {self.epsilon}")
        if not self.localization >= 0:
            raise LLCError(f"SGLDConfig.localization must be >= 0, got {self.localization}")
        for name in ("chains", "draws"):
            if getattr(self, name) < 1:
                raise LLCError(f"SGLDConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.burn_in < 0:
            raise LLCError(f"SGLDConfig.burn_in must be >= 0, got {self.burn_in}")
        if self.nbeta is not None and not self.nbeta > 0:
            raise LLCError(f"SGLDConfig.nbeta must be positive, got {self.nbeta}")

    def resolved_nbeta(self, n: int) -> float:
        return self.nbeta if self.nbeta is not None else n / math.log(n)

    def to_dict(self) -> dict:
        return asdict(self)


def select_parameters(model: torch.nn.Module, include: str | Iterable[str] | None) -> list[str]:
    """Names of the parameters to sample: all, or those whose name starts with a given prefix."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if include is None:
        return names
    prefixes = [include] if isinstance(include, str) else list(include)
    chosen = [n for n in names if any(n == p or n.startswith(p.rstrip(".") + ".") for p in prefixes)]
    if not chosen:
        raise LLCError(f"parameter subset {prefixes} matches no parameter; parameters are: "
                       f"{', '.join(names[:12])}{' ...' if len(names) > 12 else ''}")
    return chosen


class ChainBatches:
    """Endless batches for one chain: the loader re-iterated, its shuffling seeded per chain
    and epoch. Batches of another size than the first (a short last batch) are skipped so
    that chains can be stacked.

    A DataLoader over a TensorDataset is batched here by indexing the tensors directly, with
    its batch size and shuffling: the same batches, without collating row by row."""

    def __init__(self, loader: Iterable, seed: int):
        self.loader, self.seed, self.epoch, self.size = loader, seed, 0, None
        self._it: Iterator | None = None
        self._tensors = _direct_tensors(loader)

    def _indexed(self, gen: torch.Generator) -> Iterator:
        tensors, bs = self._tensors, self.loader.batch_size
        n = len(tensors[0])
        order = torch.randperm(n, generator=gen) if _shuffles(self.loader) else torch.arange(n)
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            yield tuple(t[idx] for t in tensors) if len(idx) < n else tensors

    def _restart(self) -> None:
        seed = self.seed * 100_003 + self.epoch
        self.epoch += 1
        if self._tensors is not None:
            self._it = self._indexed(torch.Generator().manual_seed(seed))
            self._first = next(self._it, None)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self._it = iter(self.loader)
                self._first = next(self._it, None)  # samplers draw their order on the first next()
        if self._first is None:
            raise LLCError("the data loader is empty: it yielded no batch")

    def __next__(self):
        while True:
            if self._it is None:
                self._restart()
            if self._first is not None:
                batch, self._first = self._first, None
            else:
                batch = next(self._it, None)
                if batch is None:
                    self._it = None
                    continue
            x, y = batch
            if self.size is None:
                self.size = len(x)
            if len(x) == self.size:
                return x, y


def _direct_tensors(loader) -> tuple[torch.Tensor, ...] | None:
    """The tensors of a plain DataLoader over a TensorDataset (x, y), else None."""
    dataset = getattr(loader, "dataset", None)
    if (isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2 and loader.batch_size
            and type(loader.sampler) in (RandomSampler, SequentialSampler)
            and loader.collate_fn is default_collate):
        return dataset.tensors
    return None


def _shuffles(loader) -> bool:
    return isinstance(loader.sampler, RandomSampler)


@dataclass
class Trace:
    losses: torch.Tensor  # (chains, draws) batch loss at each draw
    acceptance: torch.Tensor  # (chains,) mean MALA acceptance probability
    vectorized: bool


def _noise(gens: list[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.randn(like.shape[1:], generator=g, dtype=like.dtype) for g in gens])


def run_chains(model: torch.nn.Module, loss_fn: LossFn, loader: Iterable, names: list[str],
               nbeta: float, cfg: SGLDConfig, on_step: Callable[[], None] | None = None) -> Trace:
    """Sample `cfg.chains` chains of `cfg.burn_in + cfg.draws` steps; return the draws' losses."""
    params = dict(model.named_parameters())
    w_star = {n: params[n].detach().clone() for n in names}
    C = cfg.chains
    w = {n: w_star[n].unsqueeze(0).repeat(C, *[1] * w_star[n].dim()) for n in names}
    # RMSProp second moments start at 1 (G = 1, plain SGLD) rather than 0: at w* the drift is ~0,
    # and G = 1/delta there would throw the first steps far from w*
    v = {n: torch.ones_like(t) for n, t in w.items()}
    gens = [torch.Generator().manual_seed(cfg.seed * 1_000_003 + c) for c in range(C)]
    batches = [ChainBatches(loader, cfg.seed * 7919 + c) for c in range(C)]

    def one_loss(p, x, y):
        return loss_fn(functional_call(model, p, (x,)), y)

    vmapped = vmap(grad_and_value(one_loss))
    vmapped_shared = vmap(grad_and_value(one_loss), in_dims=(0, None, None))  # full batch: one copy of the data
    looped = grad_and_value(one_loss)
    # "auto": steps 0-1 vectorised, 2-3 looped (the first of each warms up), then the faster one
    vectorized = cfg.vectorize is not False
    timings: dict[bool, float] = {}

    def losses_and_grads(x, y, shared):
        nonlocal vectorized
        if vectorized:
            try:
                g, loss = vmapped_shared(w, x[0], y[0]) if shared else vmapped(w, x, y)
                return loss.detach(), {n: t.detach() for n, t in g.items()}
            except Exception as err:  # vmap cannot trace every model (data-dependent control flow, .item())
                warnings.warn(f"chains could not be vectorised ({type(err).__name__}: {err}); running them in a loop",
                              stacklevel=3)
                vectorized = False
        out = [looped({n: t[c] for n, t in w.items()}, x[c], y[c]) for c in range(C)]
        loss = torch.stack([o[1].detach() for o in out])
        return loss, {n: torch.stack([o[0][n].detach() for o in out]) for n in names}

    def precond(n, g):
        if not cfg.rmsprop:
            return None
        v[n].mul_(cfg.rmsprop_alpha).addcmul_(g, g, value=1 - cfg.rmsprop_alpha)
        return 1 / (v[n].sqrt() + cfg.rmsprop_delta)

    def log_target(loss, w_):  # log density up to a constant, per chain
        dist = sum((w_[n] - w_star[n]).pow(2).flatten(1).sum(1) for n in names)
        return -nbeta * loss - cfg.localization / 2 * dist

    def drift(g, w_):  # gradient of the log target
        return {n: -(nbeta * g[n] + cfg.localization * (w_[n] - w_star[n])) for n in names}

    total = cfg.burn_in + cfg.draws
    losses = torch.empty(C, cfg.draws, dtype=torch.float64)
    acc_sum, n_acc = torch.zeros(C, dtype=torch.float64), 0
    prev = None  # (w, log target, drift, G) of the last step, for the MALA acceptance
    for step in range(total):
        stacked = [next(b) for b in batches]
        shared = all(s[0] is stacked[0][0] for s in stacked)
        x, y = ([s[0] for s in stacked], [s[1] for s in stacked]) if shared else \
            (torch.stack([s[0] for s in stacked]), torch.stack([s[1] for s in stacked]))
        if cfg.vectorize == "auto" and step < 4:
            vectorized = step < 2 and vectorized
            start = time.perf_counter()
            loss, g = losses_and_grads(x, y, shared)
            timings[vectorized] = time.perf_counter() - start
            if step == 3:
                vectorized = timings.get(True, float("inf")) < timings[False]
        else:
            loss, g = losses_and_grads(x, y, shared)
        if not torch.isfinite(loss).all():
            losses[:, max(0, step - cfg.burn_in):] = float("nan")
            break
        here_target, here_drift = log_target(loss.double(), w), drift(g, w)
        if step >= cfg.burn_in:
            losses[:, step - cfg.burn_in] = loss.double()
        G = {n: precond(n, here_drift[n]) for n in names}  # scaled like the drift it divides
        if prev is not None:  # MALA: would the proposal prev -> w have been accepted?
            pw, pt, pd, pG = prev
            fwd = sum(_sq(w[n] - pw[n] - cfg.epsilon / 2 * _mul(pG[n], pd[n]), pG[n]) for n in names)
            bwd = sum(_sq(pw[n] - w[n] - cfg.epsilon / 2 * _mul(pG[n], here_drift[n]), pG[n]) for n in names)
            log_alpha = here_target - pt + (fwd - bwd) / (2 * cfg.epsilon)
            acc_sum += log_alpha.clamp(max=0).exp()
            n_acc += 1
        prev = ({n: t.clone() for n, t in w.items()}, here_target, here_drift, G)
        for n in names:
            step_ = cfg.epsilon / 2 * _mul(G[n], here_drift[n])
            noise = _noise(gens, w[n]) * (cfg.epsilon * (G[n] if G[n] is not None else 1)) ** 0.5
            w[n] = w[n] + step_ + noise
        if on_step is not None:
            on_step()
    acceptance = acc_sum / max(n_acc, 1)
    return Trace(losses, acceptance, vectorized)


def _mul(G, t):
    return t if G is None else G * t


def _sq(t, G):
    """Squared norm per chain in the proposal's metric (divided by G when preconditioned)."""
    t = t.double()
    return (t.pow(2) if G is None else t.pow(2) / G.double()).flatten(1).sum(1)
