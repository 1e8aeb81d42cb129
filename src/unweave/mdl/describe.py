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

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from unweave.mdl import coding
from unweave.mdl.bases import Basis
from unweave.mdl.quantise import Search, coarsest_delta, quantised, quantised_tensors, rms, symbols, tensor_bits
from unweave.scoring import ce_per_example, kl_per_example, loss_recovered
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
    _reference: torch.Tensor | None = field(default=None, repr=False)
    _acts: torch.Tensor | None = field(default=None, repr=False)
    _ablated_ce: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise ValueError(f"measure must be one of {MEASURES}, got {self.measure!r}")

    @property
    def n(self) -> int:
        return len(self.rows())

    @torch.no_grad()
    def reference(self) -> torch.Tensor:
        if self._reference is None:
            self._reference = self.outputs(self.model, self.inputs).double()
        return self._reference

    @torch.no_grad()
    def rows(self) -> torch.Tensor:
        """The described activations, (n, d)."""
        if self._acts is None:
            act = capture(self.model, self.site, self.inputs)[self.site]
            self._acts = act[:, self.position] if self.position is not None else act.reshape(-1, act.shape[-1])
        return self._acts

    def _put(self, act: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.position is None:
            return rows.reshape(act.shape).to(act.dtype)
        out = act.clone()
        out[:, self.position] = rows.to(act.dtype)
        return out

    @torch.no_grad()
    def spliced(self, rows: torch.Tensor) -> torch.Tensor:
        """The network's output with the described activations replaced by `rows`."""
        with patch(self.model, {self.site: lambda act: self._put(act, rows)}):
            return self.outputs(self.model, self.inputs).double()

    def distortion(self, output: torch.Tensor) -> float:
        ref = self.reference()
        if self.measure == "kl":
            return kl_per_example(ref, output).mean().item()
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
    delta: float  # the relative quantisation step
    mean_active: float  # nonzero code entries per example
    ce_recovered: float | None = None
    n: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def describe(basis: Basis, data: SiteData, tolerance: float) -> Row:
    """Quantise `basis`'s description of data.rows() at the coarsest relative step within
    `tolerance`, and count its bits."""
    x = data.rows()
    codes = basis.encode(x).double()
    params = {k: v.double() for k, v in basis.params().items()}
    value_scale = rms(codes[codes != 0])

    def rebuild(delta: float) -> tuple[torch.Tensor, torch.Tensor]:
        q_params = quantised_tensors(params, delta)
        q_codes = codes if basis.binary or not basis.codes_sent else quantised(codes, delta * value_scale)
        return basis.decode(q_codes, q_params), q_codes

    def distortion(delta: float) -> float:
        return data.distortion(data.spliced(rebuild(delta)[0]))

    search: Search = coarsest_delta(distortion, tolerance)
    decoded, q_codes = rebuild(search.delta)
    output = data.spliced(decoded)
    mean_active = (q_codes != 0).sum(1).double().mean().item()
    common = dict(
        basis=basis.label(),
        width=basis.width,
        k=basis.k,
        kl=search.distortion,
        delta=search.delta,
        meets_tolerance=search.met,
        mean_active=mean_active,
        ce_recovered=data.ce_recovered(output),
        n=len(x),
    )
    if not search.met:
        return Row(param_bits=None, index_bits=None, value_bits=None, total_bits=None, bits_per_token=None, **common)
    param_bits = basis.spec_bits + tensor_bits(params, search.delta)
    index_bits, value_bits = code_bits(basis, codes, search.delta * value_scale) if basis.codes_sent else (0.0, 0.0)
    total = param_bits + index_bits + value_bits
    return Row(
        param_bits=param_bits,
        index_bits=index_bits,
        value_bits=value_bits,
        total_bits=total,
        bits_per_token=total / len(x),
        **common,
    )


def code_bits(basis: Basis, codes: torch.Tensor, step: float) -> tuple[float, float]:
    """(index bits, value bits) of the codes quantised with `step`: per unit, which examples
    it is active on, then its values (none for a binary basis), plus the step itself."""
    code_symbols = (codes != 0).long() if basis.binary else symbols(codes, step)
    counts = coding.SymbolCounts(code_symbols.shape[1])
    counts.add_codes(code_symbols)
    index_bits = float(coding.activity_bits(counts.active(), len(codes)).sum())
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
        return data.distortion(
            data.outputs(_Functional(model, quantised_tensors(weights, delta)), data.inputs).double()
        )

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
