"""SGLD around trained weights w*, many chains at once.

Each step, for each chain (Welling & Teh 2011; Lau et al. 2023, localised form):

    w <- w - (eps / 2) * G * (n_beta * grad L_batch(w) + gamma * (w - w*)) + sqrt(eps * G) * N(0, I)

with G = 1 (plain SGLD) or the RMSProp preconditioner G = 1 / (sqrt(V) + delta),
V <- alpha V + (1 - alpha) drift^2, drift = n_beta grad L + gamma (w - w*) (Li et al. 2016).
Chain c's noise and batch order depend only on (seed, c).

`run_chains` is the loop; its pieces live beside it:
  gradients.ChainGradients  per-chain losses and gradients (vmap, or a loop, or "auto" timing both)
  updates                   the localised posterior (log density, drift) and the update rules
  callbacks                 per-step diagnostics: divergence, the loss trace, MALA acceptance
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler, TensorDataset, default_collate

from unweave.configs import setting
from unweave.slt.callbacks import Callback, Divergence, LossTrace, MALAAcceptance, StepState
from unweave.slt.gradients import Batch, ChainGradients, LossFn
from unweave.slt.updates import LocalPosterior, UpdateRule, update_rule

__all__ = [
    "ChainBatches",
    "LLCError",
    "LossFn",
    "SGLDConfig",
    "Trace",
    "batches_per_pass",
    "parameter_count",
    "run_chains",
    "select_parameters",
]


SCHEMES = ("euler", "lm")


class LLCError(ValueError):
    """A local learning coefficient that cannot be estimated: bad model, data or settings."""


@dataclass(frozen=True)
class SGLDConfig:
    epsilon: float = setting(1e-4, "SGLD step size.")
    nbeta: float | None = setting(None, "Inverse temperature n*beta (default n / ln n).")
    localization: float = setting(100.0, "Pull gamma towards the trained weights.")
    chains: int = setting(8, "Independent chains (run vectorised).")
    draws: int = setting(200, "Draws per chain.")
    burn_in: int = setting(0, "Steps discarded before the draws.")
    rmsprop: bool = setting(False, "RMSProp-preconditioned SGLD.")
    rmsprop_alpha: float = setting(0.99, "RMSProp: decay of the squared-drift average.")
    rmsprop_delta: float = setting(1e-4, "RMSProp: added to the root before dividing.")
    seed: int = setting(0, "Seed: chain c's noise and batches depend only on (seed, c).")
    scheme: str = setting(
        "euler",
        "'euler' (Welling & Teh) or 'lm' (Leimkuhler & Matthews 2013: each step's noise is the mean of two "
        "consecutive draws; the stationary variance along a quadratic direction is exact at any stable step, "
        "where Euler's is inflated by 1 / (1 - eps a / 4)). MALA acceptance is not defined for 'lm'.",
    )
    # True: vmap over chains; False: a loop; "auto": time both, keep the faster
    vectorize: bool | str = setting("auto", "vmap over chains (True), a loop (False) or 'auto'.", cli=False)

    def __post_init__(self):
        if not 0 < self.epsilon < math.inf:
            raise LLCError(
                f"SGLDConfig.epsilon must be a positive step size, got {self.epsilon}: steps of 1e-6 to 1e-3 are "
                "usual, or let the rule choose (--settings auto)"
            )
        if not self.localization >= 0:
            raise LLCError(f"SGLDConfig.localization must be >= 0, got {self.localization}")
        for name in ("chains", "draws"):
            if getattr(self, name) < 1:
                raise LLCError(f"SGLDConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.burn_in < 0:
            raise LLCError(f"SGLDConfig.burn_in must be >= 0, got {self.burn_in}")
        if self.nbeta is not None and not self.nbeta > 0:
            raise LLCError(f"SGLDConfig.nbeta must be positive, got {self.nbeta}")
        if self.scheme not in SCHEMES:
            raise LLCError(f"SGLDConfig.scheme must be one of {', '.join(SCHEMES)}, got {self.scheme!r}")

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
        raise LLCError(
            f"parameter subset {prefixes} matches no parameter; parameters are: "
            f"{', '.join(names[:12])}{' ...' if len(names) > 12 else ''}"
        )
    return chosen


def parameter_count(model: torch.nn.Module, names: Iterable[str]) -> int:
    """How many numbers the parameters `names` of `model` hold."""
    names = set(names)
    return sum(p.numel() for n, p in model.named_parameters() if n in names)


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
        self.rows: torch.Tensor | None = None  # the dataset rows of the last batch, when indexed here

    def _indexed(self, gen: torch.Generator) -> Iterator:
        tensors, bs = self._tensors, self.loader.batch_size
        n = len(tensors[0])
        order = torch.randperm(n, generator=gen) if _shuffles(self.loader) else torch.arange(n)
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            yield (tuple(t[idx] for t in tensors) if len(idx) < n else tensors), idx

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
            if self._tensors is not None:
                batch, self.rows = batch
            x, y = batch
            if self.size is None:
                self.size = len(x)
            if len(x) == self.size:
                return x, y


def _direct_tensors(loader: Iterable) -> tuple[torch.Tensor, ...] | None:
    """The tensors of a plain DataLoader over a TensorDataset (x, y), else None."""
    dataset = getattr(loader, "dataset", None)
    if (
        isinstance(dataset, TensorDataset)
        and len(dataset.tensors) == 2
        and loader.batch_size
        and type(loader.sampler) in (RandomSampler, SequentialSampler)
        and loader.collate_fn is default_collate
    ):
        return dataset.tensors
    return None


def _shuffles(loader: DataLoader) -> bool:
    return isinstance(loader.sampler, RandomSampler)


@dataclass
class Trace:
    losses: torch.Tensor  # (chains, draws) batch loss at each draw; NaN from a divergence on
    acceptance: torch.Tensor  # (chains,) mean MALA acceptance probability
    vectorized: bool
    # True: `losses` are L_b(w) - L_b(w*), each batch's loss less its own loss at w* (minibatches)
    relative: bool = False


def next_batches(batches: list[ChainBatches]) -> tuple[Batch, Batch, bool]:
    """Every chain's next batch: (x, y, shared). When all chains got the same tensors (one
    full batch), x and y are lists of that one tensor, so the data is not copied per chain;
    otherwise they are stacked (chains, batch, ...)."""
    drawn = [next(b) for b in batches]
    xs, ys = [d[0] for d in drawn], [d[1] for d in drawn]
    if all(x is xs[0] for x in xs):
        return xs, ys, True
    return torch.stack(xs), torch.stack(ys), False


def chain_generators(seed: int, ids: Sequence[int], device: torch.device) -> list[torch.Generator]:
    """One generator per chain on the chains' device, seeded by (seed, c) alone: a rank's share of
    the chains draws what those chains draw in the full run. Drawing on the device keeps the
    noise off the host (on a GPU, drawing on the CPU and copying took a third of each step); a
    CPU run and a GPU run of the same seed therefore draw different noise."""
    return [torch.Generator(device=device).manual_seed(seed * 1_000_003 + c) for c in ids]


def _noise(gens: list[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise shaped like `like` (chains, ...), chain c's from its own generator."""
    noise = torch.empty_like(like)
    for row, gen in zip(noise, gens, strict=True):
        row.normal_(generator=gen)
    return noise


class StepNoise:
    """Each step's noise for the flat weights (chains, P): white (Euler), or for the
    Leimkuhler-Matthews scheme the mean of this step's draw and the last one, (xi_k + xi_k+1) / 2.
    With a quadratic loss along a direction of stiffness a, w_k+1 = (1 - eps a / 2) w_k +
    sqrt(eps) (xi_k + xi_k+1) / 2 has stationary variance exactly 1 / a; Euler's is
    1 / (a (1 - eps a / 4))."""

    def __init__(self, scheme: str, gens: list[torch.Generator], w: torch.Tensor):
        self.gens = gens
        self.last = _noise(gens, w) if scheme == "lm" else None

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        fresh = _noise(self.gens, like)
        if self.last is None:
            return fresh
        mean, self.last = (self.last + fresh) / 2, fresh
        return mean


def _identity_where_none(G: dict[str, torch.Tensor | None], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: torch.ones_like(like[n]) if g is None else g for n, g in G.items()}


def batches_per_pass(loader: Iterable) -> int:
    """How many batches one pass over `loader` gives (2 when it cannot say: treat as minibatches)."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return 2


class LossAtOptimum:
    """`(x, y, batches) -> (chains,)`: each chain's batch loss at the trained weights (the model's
    own parameters), the control variate of minibatch SGLD.

    A forward pass per chain, unless the loss says it is a mean over rows (`gradients.row_mean`)
    and the batches are rows of the loader's tensors: then every row's loss at w* is computed
    once (one pass over the data) and a batch's is the mean over its rows."""

    def __init__(self, model: torch.nn.Module, loss_fn: LossFn, loader: Iterable):
        self.model, self.loss_fn = model, loss_fn
        self.row_losses: torch.Tensor | None = None
        per_row, tensors = getattr(loss_fn, "per_row", None), _direct_tensors(loader)
        if per_row is not None and tensors is not None:
            x, y = tensors
            size = loader.batch_size
            with torch.no_grad():
                self.row_losses = torch.cat(
                    [per_row(model(x[i : i + size]), y[i : i + size]) for i in range(0, len(x), size)]
                )

    def __call__(self, x: Batch, y: Batch, batches: list[ChainBatches]) -> torch.Tensor:
        if self.row_losses is not None:
            return torch.stack([self.row_losses[b.rows].mean() for b in batches])
        with torch.no_grad():
            return torch.stack([self.loss_fn(self.model(x[c]), y[c]).detach() for c in range(len(x))])


def _ticker(on_step: Callable[[], object]) -> Callback:
    """A progress hook as a callback that never stops the chains, whatever it returns."""

    def callback(state: StepState) -> None:
        on_step()

    return callback


def run_chains(
    model: torch.nn.Module,
    loss_fn: LossFn,
    loader: Iterable,
    names: list[str],
    nbeta: float,
    cfg: SGLDConfig,
    on_step: Callable[[], None] | None = None,
    *,
    rule: UpdateRule | None = None,
    callbacks: Sequence[Callback] = (),
    chain_ids: Sequence[int] | None = None,
) -> Trace:
    """Sample `cfg.chains` chains of `cfg.burn_in + cfg.draws` steps; return the draws' losses.

    `rule` replaces the update rule the config chooses; `callbacks` run after the built-in
    diagnostics (divergence, loss trace, MALA acceptance) at every step, and may stop the chains.
    `chain_ids` runs only those chains (a rank's share), each exactly as in the full run."""
    ids = list(range(cfg.chains)) if chain_ids is None else list(chain_ids)
    params = dict(model.named_parameters())
    posterior = LocalPosterior({n: params[n].detach().clone() for n in names}, nbeta, cfg.localization)
    flat = posterior.flat
    w_flat = posterior.start(len(ids))  # (chains, P); `w` below: a view per parameter
    rule = rule if rule is not None else update_rule(cfg)
    rule.start(flat.views(w_flat))
    gens = chain_generators(cfg.seed, ids, w_flat.device)
    noise = StepNoise(cfg.scheme, gens, w_flat)
    batches = [ChainBatches(loader, cfg.seed * 7919 + c) for c in ids]
    grads = ChainGradients(model, loss_fn, cfg.vectorize)
    trace = LossTrace(len(ids), cfg.draws, cfg.burn_in)
    # MALA's proposal is the Euler move: for other schemes its acceptance says nothing, so it is not computed
    mala = MALAAcceptance(len(ids)) if cfg.scheme == "euler" else None
    steps = [Divergence(), trace, *([mala] if mala is not None else []), *callbacks]
    steps += [_ticker(on_step)] if on_step is not None else []
    relative = batches_per_pass(loader) > 1
    at_optimum = LossAtOptimum(model, loss_fn, loader) if relative else None
    for step in range(cfg.burn_in + cfg.draws):
        x, y, shared = next_batches(batches)
        w = flat.views(w_flat)
        loss, g = grads(w, x, y, shared)
        # with minibatches the trace records L_b(w) - L_b(w*): a control variate with the same mean
        # as L_b(w) - L_n(w*) that drops the batch-to-batch spread of the loss (n_beta times it
        # would otherwise swamp the estimate; see LossAtOptimum for what computing L_b(w*) costs)
        recorded = loss - at_optimum(x, y, batches) if relative else None
        log_target, drift_flat = posterior.log_density_and_drift(loss, flat.join(g), w_flat)
        drift = flat.views(drift_flat)
        G = {n: rule.preconditioner(n, drift[n]) for n in names}
        G_flat = None if all(v is None for v in G.values()) else flat.join(_identity_where_none(G, drift))
        state = StepState(step, loss, w, drift, G, log_target, rule.epsilon, recorded, (w_flat, drift_flat, G_flat))
        if any(callback(state) for callback in steps):  # the first True stops every chain
            break
        w_flat = rule.step(w_flat, drift_flat, G_flat, noise(w_flat))
    acceptance = mala.acceptance if mala is not None else torch.full((len(ids),), math.nan, dtype=torch.float64)
    return Trace(trace.losses, acceptance, grads.vectorized, relative)
