"""Descriptions of a language model's activations held in a store (`unweave cache`):
dictionaries trained by `unweave sae train` beside neurons and PCA, at the site they
describe, with memory bounded by a batch rather than by the store.

1. PCA: mean and covariance streamed over the store, directions by eigendecomposition.
2. Calibration: the coarsest quantisation step of every basis (and of the weights) is
   found on the first `calibration_tokens` tokens of the store, run through the model
   with the description spliced in (mean next-token KL). The store's activations there
   must be the model's own on those tokens, which is checked.
3. Counting: the whole store is streamed once; each basis encodes every batch, quantises
   its codes with its calibrated step and adds them to per-unit histograms
   (`coding.SymbolCounts`); bits are then exact code lengths of the store's codes, plus the
   parameters once. SAEBench's quantity is accumulated in the same pass.

Rows above a dictionary's max_input_norm (massive activations such as the first token's)
are left as they are for every basis and counted apart, as `sae eval` splices them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from unweave import progress
from unweave.dictionaries import io
from unweave.dictionaries.sae import SAE, ordinary_rows
from unweave.mdl import coding, saebench
from unweave.mdl.bases import Basis, Dictionary, Linear, LinearFit, LookupTable, Neurons
from unweave.mdl.describe import (
    Calibration,
    Row,
    SiteData,
    calibrate,
    count_code,
    measured_row,
    row,
)
from unweave.mdl.quantise import rms, symbols
from unweave.scoring import float_logits
from unweave.store import ActivationStore, StoreError

CALIBRATION_TOKENS = 1024
BATCH_TOKENS = 8192
SAEBENCH_TOKENS = 65_536  # tokens SAEBench's bins are fitted on (it takes them from a few batches too)
PCA_RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


@dataclass
class StoreSource:
    """Batches of a store's rows: the described site, the sites bases read, described rows only."""

    store: ActivationStore
    site: str
    reads: list[str]  # other sites a basis encodes from (a transcoder's MLP input)
    keep_site: str  # the site max_norm applies to (what the dictionaries read)
    max_norm: float | None
    batch_tokens: int = BATCH_TOKENS
    sites: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.sites = list(dict.fromkeys([self.site, *self.reads, self.keep_site]))

    def batches(self, max_tokens: int | None = None) -> Iterator[tuple[dict[str, torch.Tensor], int]]:
        """({site: described rows}, rows left out) per batch, in store order."""
        seen = 0
        for batch in self.store.batches(self.sites, self.batch_tokens, shuffle=False):
            acts = {s: a.float() for s, a in zip(self.sites, batch)}
            mask = ordinary_rows(acts[self.keep_site], self.max_norm)
            yield {s: a[mask] for s, a in acts.items()}, int((~mask).sum())
            seen += len(mask)
            if max_tokens is not None and seen >= max_tokens:
                return


@dataclass
class StoreTarget:
    source: StoreSource
    dictionaries: list[tuple[str, SAE, dict]]  # (folder name, dictionary, metadata)
    model_name: str
    held_out: bool  # no dictionary was trained on this store


def open_dictionaries(folders: list[Path], store_path: Path) -> StoreTarget:
    """The dictionaries and the store, checked against each other: same model, the sites
    they read and describe held in the store, one described site."""
    store = ActivationStore(store_path)
    if store.n_tokens == 0:
        raise StoreError(f"{store_path} holds no tokens; fill it with `unweave cache`")
    model = store.manifest["model"]
    found, described, reads = [], {}, set()
    for folder in folders:
        sae = io.load(folder)
        meta, _ = io.source(folder)
        if meta["model_name"] != model:
            raise ValueError(
                f"{folder} was trained on {meta['model_name']!r} but the store {store_path} holds {model!r}: "
                "give a store cached from the dictionary's model (unweave cache --model ...)"
            )
        transcoder = sae.cfg.kind == "transcoder"
        site = meta.get("hook_name_out") if transcoder else meta["hook_name"]
        for needed in [site, meta["hook_name"]]:
            if needed not in store.sites:
                raise ValueError(
                    f"{folder} reads or writes {needed!r}, which the store {store_path} does not hold (it holds "
                    f"{', '.join(store.sites)}): cache that site with `unweave cache --site {needed}`"
                )
        width = sae.cfg.width_out if transcoder else sae.cfg.d_in
        if store.width(site) != width:
            raise ValueError(f"{folder} describes {width}-dim activations but {site!r} is {store.width(site)}-dim")
        described[folder] = site
        if transcoder:
            reads.add(meta["hook_name"])
        found.append((meta["name"], sae, meta))
    if len(set(described.values())) > 1:
        listed = ", ".join(f"{f.name}: {s}" for f, s in described.items())
        raise ValueError(f"the dictionaries describe different sites ({listed}); give the dictionaries of one site")
    site = next(iter(described.values()))
    if len(reads) > 1:
        raise ValueError(f"the transcoders read different sites ({', '.join(sorted(reads))}); give one MLP's")
    keep_site = next(iter(reads)) if reads else site
    norms = [s.max_input_norm for _, s, _ in found if s.max_input_norm is not None]
    source = StoreSource(store, site, sorted(reads), keep_site, min(norms) if norms else None)
    held_out = all(Path(m.get("store", "")).resolve() != store.path.resolve() for _, _, m in found)
    return StoreTarget(source, found, model, held_out)


def calibration_data(target: StoreTarget, model: torch.nn.Module, tokens: int) -> SiteData:
    """The store's first rows of tokens, run through the model: the KL every description is
    calibrated on. Checks that the store's activations are the model's on those tokens."""
    store, source = target.source.store, target.source
    ctx_len = store.manifest["ctx_len"]
    rows = max(1, math.ceil(tokens / ctx_len))
    flat = store.load_shard(0, "tokens")
    if len(flat) < rows * ctx_len:
        raise StoreError(
            f"the store's first shard holds {len(flat)} tokens, fewer than --calibration-tokens {tokens}: "
            "lower --calibration-tokens"
        )
    inputs = flat[: rows * ctx_len].reshape(rows, ctx_len).long()
    data = SiteData(
        model,
        inputs,
        source.site,
        next_token_logits,
        "kl",
        labels=inputs[:, 1:].reshape(-1),
        keep=lambda x: ordinary_rows(x, source.max_norm),
        keep_site=source.keep_site,
    )
    stored = store.load_shard(0, source.site)[: rows * ctx_len].float()
    mine = data.flat(source.site)
    scale = stored.abs().max().item()
    if not torch.allclose(mine.float(), stored, atol=1e-2 * scale, rtol=0):
        raise StoreError(
            f"the store's activations at {source.site!r} are not {target.model_name!r}'s on the store's own tokens "
            f"(largest difference {(mine.float() - stored).abs().max().item():.3g}): the store was written by "
            "another model or revision; cache it again"
        )
    return data


def next_token_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(rows x (ctx_len - 1), vocab): the logits of every position that has a next token."""
    logits = float_logits(model(tokens))[:, :-1]
    return logits.reshape(-1, logits.shape[-1])


def store_bases(target: StoreTarget, calibration_rows: torch.Tensor) -> list[Basis]:
    """Neurons, the lookup table (calibrated on the calibration rows' own table, counted over
    the store's), PCA at ranks up to the width (streamed covariance), with transcoders the
    MLP replaced by a linear map of its input (least squares over the store), and the
    dictionaries (their own encoders' codes)."""
    source = target.source
    d = source.store.width(source.site)
    total, outer, n = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64), 0
    # transcoders read their MLP's input: the MLP replaced by one linear map of it is their baseline
    fits = {site: LinearFit() for site in source.reads}
    for acts, _ in progress.track(source.batches(), "covariance over the store", total=_n_batches(source)):
        x = acts[source.site].double()
        total, outer, n = total + x.sum(0), outer + x.T @ x, n + len(x)
        for site, fit in fits.items():
            fit.add(acts[site], x)
    mean = total / n
    values, vectors = torch.linalg.eigh(outer / n - torch.outer(mean, mean))
    directions = vectors[:, values.argsort(descending=True)].T
    bases: list[Basis] = [Neurons(d), LookupTable(calibration_rows)]
    bases += [Linear("pca", mean, directions[:r]) for r in PCA_RANKS if r < d]
    bases += [fit.solve(site) for site, fit in fits.items()]
    for name, sae, meta in target.dictionaries:
        reads = meta["hook_name"] if sae.cfg.kind == "transcoder" else None
        bases.append(Dictionary(sae, name=f"{name} ({sae.cfg.kind}-{sae.cfg.architecture})", reads=reads))
    return bases


def _n_batches(source: StoreSource) -> int:
    return math.ceil(source.store.n_tokens / source.batch_tokens)


@dataclass
class StoreCounts:
    rows: list[Row]
    n: int  # described tokens
    left_out: int  # massive rows, passed through
    saebench: list[dict]


def describe_store(bases: list[Basis], data: SiteData, source: StoreSource, tolerance: float) -> StoreCounts:
    """Calibrate every basis on `data`, then count its codes' bits over the whole store."""
    # the steps are chosen for codes counted over the whole store, not the calibration rows alone
    n_counted = source.store.n_tokens
    cals = [calibrate(b, data, tolerance, n_counted) for b in progress.track(bases, "calibrating on the model")]
    dictionaries = [c for c in cals if isinstance(c.basis, Dictionary) and c.basis.codes == "encoder"]
    bench = _saebench_bins(dictionaries, source)
    counts = [coding.SymbolCounts(c.basis.width) for c in cals]
    tables = {id(c): StoreLookup(c) for c in cals if isinstance(c.basis, LookupTable) and c.search.met}
    n = left_out = 0
    for acts, left in progress.track(source.batches(), "counting bits over the store", total=_n_batches(source)):
        n, left_out = n + len(acts[source.site]), left_out + left
        for table in tables.values():
            table.add(acts[source.site])
        for cal, count in zip(cals, counts):
            counted = cal.search.met and cal.basis.codes_sent and id(cal) not in tables
            if not counted and id(cal) not in bench:
                continue
            x = acts[cal.basis.reads or source.site]
            rows, units, values = cal.basis.entries(x)
            if counted:
                count_code(count, cal.basis, rows, units, values, cal.value_step)
            if id(cal) in bench:  # SAEBench's quantity does not depend on the tolerance
                bench[id(cal)][0].add_entries(units, values, len(x))
    rows = [tables[id(c)].row(n) if id(c) in tables else row(c, count, n) for c, count in zip(cals, counts)]
    by_cal = {id(c): r for c, r in zip(cals, rows)}
    side = [_saebench_row(c, by_cal[id(c)], *bench[id(c)]) for c in dictionaries]
    return StoreCounts(rows, n, left_out, side)


class StoreLookup:
    """The lookup table of the store (one latent per described token, the degenerate
    dictionary): its parameters are every described row, quantised with the step its
    calibration found for the calibration rows' table (delta * their rms) and coded as one
    sequence; each token's code says which row is its own, each row being used once."""

    def __init__(self, cal: Calibration):
        self.cal, self.table = cal, coding.SymbolCounts(1)
        self.step = cal.param_delta * rms(cal.params["rows"])

    def add(self, rows: torch.Tensor) -> None:
        flat = symbols(rows, self.step).flatten()
        self.table.add(torch.zeros_like(flat), flat)

    def row(self, n: int) -> Row:
        param_bits = float(self.table.bits().sum()) + coding.FLOAT_BITS
        index_bits = coding.index_bits(torch.ones(n), n, exclusive=True)  # n units, each chosen by one token
        return measured_row(self.cal, n, n, 1.0, (param_bits, index_bits, 0.0))


def _saebench_bins(
    dictionaries: list[Calibration], source: StoreSource
) -> dict[int, tuple[saebench.Histograms, dict[int, float]]]:
    """Per dictionary: SAEBench's bins (each latent's largest value over the store's first
    SAEBENCH_TOKENS tokens) and its viability metric at each bin count (first batch)."""
    if not dictionaries:
        return {}
    tops = {id(c): torch.zeros(c.basis.width, dtype=torch.float64) for c in dictionaries}
    x, first = None, {}  # the first batch's activations, and each dictionary's inputs and code entries there
    for acts, _ in source.batches(SAEBENCH_TOKENS):
        x = acts[source.site] if x is None else x
        for c in dictionaries:
            inputs = acts[c.basis.reads or source.site]
            rows, units, values = c.basis.entries(inputs)
            first.setdefault(id(c), (inputs, (rows, units, values.float())))
            tops[id(c)].scatter_reduce_(0, units, values.double(), "amax")
    out = {}
    for c in dictionaries:
        inputs, entries = first[id(c)]
        single = {k: v.float() for k, v in c.params.items()}  # SAEBench decodes in float32 too
        decode = lambda q, b=c.basis, p=single, i=inputs: b.decode(q, p, i)  # noqa: E731
        metric = saebench.viability(x, entries, tops[id(c)].float(), decode, single["W_dec"])
        out[id(c)] = (saebench.Histograms(tops[id(c)]), metric)
    return out


def _saebench_row(cal: Calibration, mine: Row, hist: saebench.Histograms, metric: dict[int, float]) -> dict:
    bits = {b: hist.bits_per_token(b) for b in saebench.NUM_BINS}
    bins, viable = saebench.chosen(bits, metric)
    codes_only = (mine.index_bits + mine.value_bits) / mine.n if mine.total_bits is not None else None
    return {
        "basis": mine.basis,
        "width": mine.width,
        "k": mine.k,
        "saebench_bits_per_token": bits[bins],
        "saebench_num_bins": bins,
        "saebench_viable": viable,
        "saebench_by_bins": {str(b): {"bits_per_token": bits[b], "metric": metric[b]} for b in saebench.NUM_BINS},
        "unweave_code_bits_per_token": codes_only,
        "unweave_param_bits_per_token": mine.param_bits / mine.n if mine.param_bits is not None else None,
        "unweave_bits_per_token": mine.bits_per_token,
    }
