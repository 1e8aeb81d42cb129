"""The bits of a description of (network, dataset) at one site, within a tolerance.

`SiteData` holds what every description is judged on: the network, its inputs, the site,
which rows of the site's activation are described, and how far the network's output may
move (mean per-example KL of the output distributions, or for a network whose output is
not a distribution, such as the toy model of superposition, the fraction of the output's
variance the change amounts to). `describe(basis, data, tolerance)` quantises the basis's
parameters and codes at the coarsest step that keeps the output within the tolerance and
counts the bits; `weight_bits` does the same for the network's own weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from unweave.mdl import coding
from unweave.mdl.bases import Basis, nonzero_entries
from unweave.mdl.quantise import (
    DELTA_RANGE,
    Search,
    coarsest_delta,
    quantised,
    quantised_tensors,
    rms,
    tensor_bits,
)
from unweave.replay import Replay
from unweave.scoring import ReferenceKL, ce_per_example, loss_recovered
from unweave.sites import capture, patch

MEASURES = ("kl", "output_fvu")


@dataclass
class SiteData:
    model: nn.Module
    inputs: torch.Tensor
    site: str
    outputs: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # the network's output on inputs
    measure: str = "kl"  # or "output_fvu"
    position: int | None = None  # describe only this position of a (n, positions, d) site
    labels: torch.Tensor | None = None  # for cross-entropy recovered (kl only)
    # which rows of the site are described (a mask from the flattened rows); the rest keep their
    # values in every splice and cost nothing, the same for every basis (massive activations)
    keep: Callable[[torch.Tensor], torch.Tensor] | None = None
    keep_site: str | None = None  # the site `keep` reads (default: the described one)
    _replay: Replay | None = field(default=None, repr=False)
    _kl: ReferenceKL | None = field(default=None, repr=False)
    _acts: dict = field(default_factory=dict, repr=False)
    _mask: torch.Tensor | None = field(default=None, repr=False)
    _ablated_ce: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise ValueError(f"measure must be one of {MEASURES}, got {self.measure!r}")
        if self.keep is not None and self.position is not None:
            raise ValueError("keep= selects rows of a flattened site; it does not combine with position=")

    @property
    def n(self) -> int:
        return len(self.rows())

    def _replayed(self) -> Replay:
        # every splice runs the same inputs: the blocks before the site are replayed (exactly)
        if self._replay is None:
            self._replay = Replay(self.model, self.site, lambda: self.outputs(self.model, self.inputs))
        return self._replay

    def reference(self) -> torch.Tensor:
        """The network's own output on the inputs."""
        return self._replayed().reference

    @torch.no_grad()
    def flat(self, site: str) -> torch.Tensor:
        """The activations at `site`, (examples x positions, d), every row."""
        act = capture(self.model, site, self.inputs)[site]
        return act[:, self.position] if self.position is not None else act.reshape(-1, act.shape[-1])

    @torch.no_grad()
    def mask(self) -> torch.Tensor | None:
        """The described rows among the flattened site's (None: all of them)."""
        if self.keep is not None and self._mask is None:
            self._mask = self.keep(self.flat(self.keep_site or self.site))
        return self._mask

    @torch.no_grad()
    def rows(self) -> torch.Tensor:
        """The described activations, (n, d)."""
        return self.rows_at(self.site)

    @torch.no_grad()
    def rows_at(self, site: str) -> torch.Tensor:
        """The same rows (same examples and positions) at another site, e.g. the input a
        transcoder's encoder reads."""
        if site not in self._acts:
            flat, mask = self.flat(site), self.mask()
            self._acts[site] = flat if mask is None else flat[mask]
        return self._acts[site]

    def _put(self, act: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.position is not None:
            out = act.clone()
            out[:, self.position] = rows.to(act.dtype)
            return out
        mask = self.mask()
        if mask is None:
            return rows.reshape(act.shape).to(act.dtype)
        flat = act.reshape(-1, act.shape[-1]).clone()
        flat[mask] = rows.to(act.dtype)
        return flat.reshape(act.shape)

    @torch.no_grad()
    def spliced(self, rows: torch.Tensor) -> torch.Tensor:
        """The network's output with the described activations replaced by `rows`."""
        with self._replayed(), patch(self.model, {self.site: lambda act: self._put(act, rows)}):
            return self.outputs(self.model, self.inputs)

    def distortion(self, output: torch.Tensor) -> float:
        if self.measure == "kl":
            if self._kl is None:
                self._kl = ReferenceKL(self.reference())
            return self._kl(output).mean().item()
        ref, output = self.reference().double(), output.double()
        return ((output - ref).pow(2).sum() / (ref - ref.mean(0)).pow(2).sum()).item()

    def ce_recovered(self, output: torch.Tensor) -> float | None:
        """Fraction of the cross-entropy lost by mean-ablating the rows that the description
        recovers (kl measure with labels only)."""
        if self.measure != "kl" or self.labels is None:
            return None
        if self._ablated_ce is None:  # the same for every description: computed once
            ablated = self.spliced(self.rows().mean(0, keepdim=True).expand_as(self.rows()))
            self._ablated_ce = ce_per_example(ablated, self.labels).mean().item()
        ce = [ce_per_example(z, self.labels).mean().item() for z in (self.reference(), output)]
        return loss_recovered(*ce, self._ablated_ce)


@dataclass
class Row:
    """One description's bits."""

    basis: str
    width: int
    k: int | None
    param_bits: float | None
    index_bits: float | None
    value_bits: float | None
    total_bits: float | None  # None when no quantisation step meets the tolerance
    bits_per_token: float | None
    kl: float  # the distortion at the chosen step (KL in nats, or output FVU)
    meets_tolerance: bool
    delta: float  # the values' relative quantisation step
    mean_active: float  # nonzero code entries per example
    ce_recovered: float | None = None
    n: int = 0
    param_delta: float | None = None  # the parameters' relative step

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Calibration:
    """A basis's coarsest quantisation within the tolerance, found on `SiteData`."""

    basis: Basis
    search: Search  # the search that chose the steps (its distortion, and whether any step met the tolerance)
    params: dict[str, torch.Tensor]  # unquantised, float64
    param_delta: float  # each parameter tensor's step is param_delta * its rms
    value_step: float  # the codes' step: value_delta * rms of the nonzero codes
    value_delta: float
    codes: torch.Tensor  # unquantised codes of data.rows()
    ce_recovered: float | None  # with the quantised description spliced in (kl measure with labels)


def calibrate(basis: Basis, data: SiteData, tolerance: float, n_counted: int | None = None) -> Calibration:
    """The coarsest quantisation at which `basis`'s description of data.rows() keeps the
    output within `tolerance`, its codes to be counted over `n_counted` examples (default
    the rows').

    First one relative step delta for the parameters and the values. When the basis sends
    both, the split between them is then set by the Lagrange condition for the fewest bits:
    with bits ~ -N log(step) per part (N symbols) and distortion ~ a dp^2 + b dv^2, the
    optimum has a dp^2 / (b dv^2) = N_params / N_values. a and b are read off the
    distortion with one part quantised at delta and the other exact, and the coarsest
    steps on that ratio are searched again, from where the same model puts the joint
    search's distortion on it. The split is kept if it codes in fewer bits.
    """
    x = data.rows() if basis.reads is None else data.rows_at(basis.reads)
    codes = basis.encode(x).double()
    params = {k: v.double() for k, v in basis.params().items()}
    value_scale = rms(codes[codes != 0])
    values_quantised = basis.codes_sent and not basis.binary
    n_counted = n_counted or len(codes)

    def rebuild(param_delta: float, value_delta: float) -> torch.Tensor:
        q_params = quantised_tensors(params, param_delta)
        q_codes = quantised(codes, value_delta * value_scale) if values_quantised else codes
        return basis.decode(q_codes, q_params, x)

    # distortions by (param delta, value delta), and the outputs of the last evaluation and of the
    # last one within tolerance: the search ends on one of them, so the chosen steps' output (for
    # CE recovered) needs no forward pass of its own
    evaluated: dict[tuple[float, float], float] = {}
    seen: dict[str, tuple[tuple[float, float], torch.Tensor]] = {}

    def distortion(param_delta: float, value_delta: float) -> float:
        key = (param_delta, value_delta)
        if key not in evaluated:
            output = data.spliced(rebuild(*key))
            evaluated[key] = data.distortion(output)
            seen["last"] = (key, output)
            if evaluated[key] <= tolerance:
                seen["within"] = (key, output)
        return evaluated[key]

    search = coarsest_delta(lambda d: distortion(d, d), tolerance)
    steps = (search.delta, search.delta)
    n_params = sum(t.numel() for t in params.values())
    n_values = int((codes != 0).sum()) * n_counted / len(codes) if values_quantised else 0
    if search.met and n_params and n_values:
        split_at = _lagrange_split(distortion, search.delta, n_params, n_values)
        ratio = split_at.ratio
        # the unquantised floor is known, unless the line's finest point quantises the parameters more coarsely
        floor = evaluated[(DELTA_RANGE[0],) * 2] if ratio <= 1 else None
        split = coarsest_delta(lambda d: distortion(ratio * d, d), tolerance, start=split_at.start, floor=floor)
        split_steps = (ratio * split.delta, split.delta)
        if split.met:
            bits = [_bits_at(basis, params, codes, value_scale, s, n_counted) for s in (steps, split_steps)]
            if bits[1] < bits[0]:
                search, steps = split, split_steps
    ce = None
    if data.labels is not None:
        chosen = next((out for key, out in seen.values() if key == steps), None)
        ce = data.ce_recovered(chosen if chosen is not None else data.spliced(rebuild(*steps)))
    return Calibration(basis, search, params, steps[0], steps[1] * value_scale, steps[1], codes, ce)


LAGRANGE_RATIO_RANGE = (1e-4, 1e4)  # param step / value step: kept within these (rounding, symbol ranges)


@dataclass(frozen=True)
class LagrangeSplit:
    ratio: float  # param step / value step at the fewest bits
    start: float  # the value step on that line predicted to give the joint search's distortion


def _lagrange_split(
    distortion: Callable[[float, float], float], delta: float, n_params: int, n_values: float
) -> LagrangeSplit:
    """dp / dv at the fewest bits for a given distortion, a dp^2 / (b dv^2) = n_params / n_values,
    with a and b measured at `delta` (each part alone quantised, over the unquantised floor);
    and where that line meets the joint search's distortion under the same model,
    a (r dv)^2 + b dv^2 = (a + b) delta^2, as the split search's first guess."""
    exact = DELTA_RANGE[0]
    floor = distortion(exact, exact)
    tiny = 1e-12 * max(abs(floor), 1e-12)
    a = max(distortion(delta, exact) - floor, tiny)
    b = max(distortion(exact, delta) - floor, tiny)
    low, high = LAGRANGE_RATIO_RANGE
    ratio = min(max(math.sqrt(n_params * b / (n_values * a)), low), high)
    return LagrangeSplit(ratio, delta * math.sqrt((a + b) / (a * ratio**2 + b)))


def _bits_at(
    basis: Basis,
    params: dict[str, torch.Tensor],
    codes: torch.Tensor,
    value_scale: float,
    steps: tuple[float, float],
    n_counted: int,
) -> float:
    """The bits of the description at (param delta, value delta), its codes' bits scaled from
    these rows to `n_counted` examples: what the choice between steps compares."""
    counts = coding.SymbolCounts(basis.width)
    count_code(counts, basis, *nonzero_entries(codes), steps[1] * value_scale)
    index, values = code_bits(basis, counts, len(codes))
    return tensor_bits(params, steps[0]) + (index + values) * n_counted / len(codes)


def count_code(
    counts: coding.SymbolCounts,
    basis: Basis,
    rows: torch.Tensor,
    units: torch.Tensor,
    values: torch.Tensor,
    step: float,
) -> None:
    """Add a code's nonzero entries to `counts` as the symbols sent: 1 each for a binary basis,
    round(value / step) otherwise (entries rounding to zero are inactive)."""
    symbols = torch.ones_like(units) if basis.binary else torch.round(values.double() / step).long()
    counts.add_code(rows, units, symbols)


def describe(basis: Basis, data: SiteData, tolerance: float) -> Row:
    """Quantise `basis`'s description of data.rows() at the coarsest steps within
    `tolerance`, and count its bits."""
    cal = calibrate(basis, data, tolerance)
    counts = coding.SymbolCounts(basis.width)
    count_code(counts, basis, *nonzero_entries(cal.codes), cal.value_step)
    return row(cal, counts, len(cal.codes))


def row(cal: Calibration, counts: coding.SymbolCounts, n: int) -> Row:
    """The Row of a calibrated basis whose sent codes over n examples are in `counts`."""
    basis, search = cal.basis, cal.search
    if basis.codes_sent:
        mean_active = counts.active().sum().item() / n
    else:  # an analytic basis: its codes follow from the input
        mean_active = (cal.codes != 0).sum(1).double().mean().item()
    if not search.met:
        return measured_row(cal, n, basis.width, mean_active, None)
    param_bits = basis.spec_bits + tensor_bits(cal.params, cal.param_delta)
    index_bits, value_bits = code_bits(basis, counts, n) if basis.codes_sent else (0.0, 0.0)
    return measured_row(cal, n, basis.width, mean_active, (param_bits, index_bits, value_bits))


def measured_row(
    cal: Calibration, n: int, width: int, mean_active: float, bits: tuple[float, float, float] | None
) -> Row:
    """A calibrated description's Row over n examples, from its (parameter, index, value) bits;
    None when no step met the tolerance."""
    search = cal.search
    total = sum(bits) if bits is not None else None
    return Row(
        basis=cal.basis.label(),
        width=width,
        k=cal.basis.k,
        param_bits=bits[0] if bits is not None else None,
        index_bits=bits[1] if bits is not None else None,
        value_bits=bits[2] if bits is not None else None,
        total_bits=total,
        bits_per_token=total / n if total is not None else None,
        kl=search.distortion,
        meets_tolerance=search.met,
        delta=cal.value_delta,
        param_delta=cal.param_delta,
        mean_active=mean_active,
        ce_recovered=cal.ce_recovered,
        n=n,
    )


def code_bits(basis: Basis, counts: coding.SymbolCounts, n: int) -> tuple[float, float]:
    """(index bits, value bits) of the codes counted in `counts` over n examples: which units
    are active on each example (`coding.index_bits`), then per unit its values (none for a
    binary basis), plus the step."""
    index_bits = coding.index_bits(counts.active(), n, counts.exclusive)
    value_bits = 0.0 if basis.binary else float(counts.bits().sum()) + coding.FLOAT_BITS
    return index_bits, value_bits


@dataclass
class WeightBits:
    bits: float | None  # entropy-coded quantised weights at the coarsest step within tolerance
    raw_bits: int  # 32 bits per parameter
    n_params: int
    delta: float
    kl: float
    meets_tolerance: bool

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def weight_bits(data: SiteData, tolerance: float) -> WeightBits:
    """Bits of the network's own weights: every floating tensor quantised with step
    delta * rms(tensor) at the coarsest delta whose output stays within `tolerance`."""
    model = data.model
    weights = {k: v.detach() for k, v in model.named_parameters() if v.is_floating_point()}

    def distortion(delta: float) -> float:
        return data.distortion(data.outputs(_Functional(model, quantised_tensors(weights, delta)), data.inputs))

    search = coarsest_delta(distortion, tolerance)
    n_params = sum(v.numel() for v in weights.values())
    bits = tensor_bits(weights, search.delta) if search.met else None
    return WeightBits(bits, 32 * n_params, n_params, search.delta, search.distortion, search.met)


class _Functional(nn.Module):
    """The model run with other parameter values (torch.func.functional_call), so quantised
    weights never overwrite the model's own."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]):
        super().__init__()
        self.inner, self.values = model, params

    def forward(self, *args, **kwargs):
        return functional_call(self.inner, self.values, args, kwargs)
