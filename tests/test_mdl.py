"""Description length: every code length against an independent count, the quantisation
search, pursuit on planted codes, and the known answers (a modular-addition model's Fourier
description and program; the lookup table growing with the dataset)."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from code_counts import numpy_code_bits
from scipy.special import comb, gammaln
from scipy.stats import entropy
from torch import nn
from typer.testing import CliRunner

from unweave.cli import app
from unweave.mdl import coding
from unweave.mdl.bases import LookupTable, Neurons, pursuit
from unweave.mdl.describe import SiteData, _lagrange_split, describe
from unweave.mdl.quantise import DELTA_RANGE, PRECISION, coarsest_delta
from unweave.zoo.superposition import mean_max_cosine


def test_sequence_code_counts_every_sequence_with_the_histogram():
    """The sequence part is log2 of the number of distinct orderings (counted by brute force);
    the whole code is at least the ideal n*H of scipy and at most it plus the histogram."""
    seq = torch.tensor([3, -1, 3, 0, 3, -1, 2])
    orderings = len(set(itertools.permutations(seq.tolist())))
    values, counts = np.unique(seq.numpy(), return_counts=True)
    k = values.max() - values.min() + 1
    histogram = math.log2(comb(len(seq) + k - 1, k - 1, exact=True))
    header = float(coding.signed_bits(int(values.min())) + coding.gamma_bits(int(k)))
    assert coding.sequence_bits(seq) == pytest.approx(math.log2(orderings) + histogram + header, rel=1e-9)
    ideal = len(seq) * entropy(counts, base=2)
    assert ideal - 1e-9 <= coding.sequence_bits(seq) <= ideal + histogram + header + 1e-9


def test_per_unit_histograms_merge_across_batches_like_numpy():
    gen = torch.Generator().manual_seed(0)
    codes = (torch.randn(300, 6, generator=gen) * 3).round().long() * (torch.rand(300, 6, generator=gen) < 0.4)
    counts = coding.SymbolCounts(6)
    for batch in codes.split(64):
        rows, units = batch.nonzero(as_tuple=True)
        counts.add(units, batch[rows, units])
    for unit in range(6):
        nonzero = codes[:, unit][codes[:, unit] != 0].numpy()
        _, c = np.unique(nonzero, return_counts=True)
        lo, hi = nonzero.min(), nonzero.max()
        k = hi - lo + 1
        want = (
            (gammaln(len(nonzero) + 1) - gammaln(c + 1).sum()) / math.log(2)
            + math.log2(comb(len(nonzero) + k - 1, k - 1, exact=True))
            + float(coding.signed_bits(int(lo)) + coding.gamma_bits(int(k)))
        )
        assert counts.bits()[unit].item() == pytest.approx(want, rel=1e-9)
        assert counts.active()[unit].item() == len(nonzero)
    # which examples: log2(n + 1) for the count, log2 C(n, c) for the subset
    assert coding.activity_bits(torch.tensor([5]), 40).item() == pytest.approx(
        math.log2(41) + math.log2(comb(40, 5, exact=True))
    )


def test_the_categorical_index_code_counts_every_sequence_and_is_never_longer():
    """When no example has two units active, which unit (or none) each example uses is one
    categorical symbol: brute-force count of the orderings, exact integers for the whole code,
    and never longer than the per-unit Bernoulli code; SymbolCounts notices a second unit."""
    choices = [0, 2, 0, 1, 2, 2, 0, 0]  # 0: none, else unit - 1
    counts = [choices.count(u) for u in (1, 2)]
    orderings = len(set(itertools.permutations(choices)))
    histogram = math.log2(comb(len(choices) + 2, 2, exact=True))
    assert coding.choice_bits(torch.tensor(counts), 8) == pytest.approx(math.log2(orderings) + histogram, rel=1e-12)
    gen = torch.Generator().manual_seed(1)
    unit = torch.randint(0, 9, (500,), generator=gen)  # 8 units, 8 meaning none
    symbols = torch.zeros(500, 8, dtype=torch.long)
    active = unit < 8
    symbols[active.nonzero().squeeze(1), unit[active]] = torch.randint(1, 5, (int(active.sum()),), generator=gen)
    tally = coding.SymbolCounts(8)
    for batch, first in zip(symbols.split(128), range(0, 500, 128)):
        rows, units = batch.nonzero(as_tuple=True)
        tally.add_code(rows + first, units, batch[rows, units])
    assert tally.exclusive
    index, _ = numpy_code_bits(symbols.numpy())
    assert coding.index_bits(tally.active(), 500, tally.exclusive) == pytest.approx(index, rel=1e-9)
    assert index < 1 + coding.activity_bits(tally.active(), 500).sum().item()
    tally.add_code(torch.tensor([3, 3]), torch.tensor([0, 1]), torch.tensor([1, -2]))  # two units on one example
    assert not tally.exclusive


def test_the_split_of_steps_meets_the_lagrange_condition():
    """For distortion floor + a dp^2 + b dv^2, the fewest bits -Np log dp - Nv log dv at a fixed
    distortion have dp / dv = sqrt(Np b / (Nv a)): the ratio read off the distortion is that."""
    a, b, floor = 3.0, 0.2, 1e-3
    split = _lagrange_split(lambda dp, dv: floor + a * dp**2 + b * dv**2, 0.1, 40, 9000.0)
    ratio = split.ratio
    assert ratio == pytest.approx(math.sqrt(40 * b / (9000 * a)), rel=1e-6)
    # the first guess on that line has the joint step's distortion, floor + (a + b) 0.1^2, exactly here
    assert a * (ratio * split.start) ** 2 + b * split.start**2 == pytest.approx((a + b) * 0.01, rel=1e-9)
    # on that line the bits at the distortion budget are the fewest of any split (numerically)
    budget = floor + (a + b) * 0.01

    def bits(r: float) -> float:
        dv = math.sqrt((budget - floor) / (a * r**2 + b))
        return -40 * math.log2(r * dv) - 9000 * math.log2(dv)

    assert bits(ratio) <= min(bits(ratio * f) for f in (0.5, 0.8, 1.25, 2.0))


def test_elias_gamma_lengths():
    assert coding.gamma_bits(torch.tensor([1, 2, 3, 4, 8, 255])).tolist() == [1, 3, 3, 5, 7, 15]
    assert coding.signed_bits(torch.tensor([0, -1, 1, -2])).tolist() == [1, 3, 3, 5]  # zigzag 1, 2, 3, 4


@pytest.mark.parametrize(
    "name, distortion, boundary",
    [
        ("linear", lambda d: d / 0.0123, 0.0123),
        ("quadratic", lambda d: (d / 0.37) ** 2, 0.37),
        ("a floor, then quadratic", lambda d: 0.9 + 0.1 * (d / 0.2) ** 2, 0.2),
        ("steep", lambda d: (d / 0.01) ** 8, 0.01),
        ("a step", lambda d: 0.0 if d < 0.05 else 5.0, 0.05),
    ],
)
def test_the_search_finds_the_boundary_of_a_monotone_distortion(name, distortion, boundary):
    search = coarsest_delta(distortion, 1.0)
    assert search.met and boundary / PRECISION < search.delta <= boundary
    assert search.distortion == distortion(search.delta) <= 1.0
    # bisection from DELTA_RANGE to that precision takes 12 evaluations; the secant steps need fewer
    # on smooth distortions, and a jump costs at most two per halving of the bracket
    smooth = name in ("quadratic", "a floor, then quadratic")
    assert search.evaluations <= (7 if smooth else 22 if name == "a step" else 12)


@pytest.mark.parametrize("start", [0.3, 0.42, 1e-9, 100.0])
def test_a_search_from_a_guess_with_a_known_floor_finds_the_same_boundary(start):
    """The split search starts from a predicted step and knows the unquantised floor: it still
    finds the boundary (a guess out of range is clamped into it), in fewer evaluations when
    the guess is near."""
    calls = []

    def distortion(d: float) -> float:
        calls.append(d)
        return 0.2 + 0.8 * (d / 0.37) ** 2

    search = coarsest_delta(distortion, 1.0, start=start, floor=0.2)
    assert search.met and 0.37 / PRECISION < search.delta <= 0.37 and search.distortion <= 1.0
    assert DELTA_RANGE[0] not in calls and search.evaluations == len(calls)
    assert search.evaluations <= (4 if start in (0.3, 0.42) else 8)
    assert not coarsest_delta(distortion, 0.1, start=0.3, floor=0.2).met  # a floor outside: nothing evaluated


def test_the_search_does_not_creep_along_a_flat_stretch_above_the_tolerance():
    """Rounding noise can leave the distortion barely above the tolerance over a stretch of
    steps (a real SmolLM2 PCA calibration did): the secant then creeps down it from above, a
    margin at a time. Runs on one side step away by doubling distances instead."""

    def distortion(d: float) -> float:
        flat = 2.18 < d <= 2.31
        return 1.001 + 0.05 * (d - 2.18) if flat else 0.0035 + 0.2 * d * d

    search = coarsest_delta(distortion, 1.0)
    assert search.met and search.distortion <= 1.0 and 2.18 / PRECISION < search.delta <= 2.18
    assert search.evaluations <= 7  # the secant alone, bisecting every other step, took 11


def test_the_search_reports_a_tolerance_no_step_meets():
    missed = coarsest_delta(lambda d: 2.0, 1.0)
    assert not missed.met and missed.evaluations == 1  # unquantised already outside: one evaluation
    whole = coarsest_delta(lambda d: 0.5, 1.0)
    assert whole.met and whole.delta == DELTA_RANGE[1] and whole.evaluations == 2


def test_pursuit_recovers_planted_sparse_codes():
    """24 atoms in 16 dims, 2 active per example: greedy pursuit finds the planted support and
    values on nearly every example (in heavier superposition greedy choices fail more often)."""
    gen = torch.Generator().manual_seed(1)
    atoms = torch.randn(24, 16, generator=gen, dtype=torch.float64)
    atoms /= atoms.norm(dim=1, keepdim=True)
    codes = torch.zeros(200, 24, dtype=torch.float64)
    for i in range(200):
        codes[i, torch.randperm(24, generator=gen)[:2]] = torch.rand(2, generator=gen, dtype=torch.float64) + 0.5
    found = pursuit(codes @ atoms, atoms)
    assert (found >= 0).all()
    assert ((found - codes).abs().max(1).values < 1e-6).double().mean() > 0.9
    assert ((found @ atoms - codes @ atoms).norm(dim=1) < 1e-6).double().mean() > 0.97


class Doubler(nn.Module):
    def __init__(self):
        super().__init__()
        self.site = nn.Identity()
        self.out = nn.Linear(3, 4)

    def forward(self, x):
        return self.out(self.site(x * 2))


def _data(n: int) -> SiteData:
    torch.manual_seed(0)
    return SiteData(Doubler(), torch.randn(n, 3), "site", lambda m, x: m(x), measure="kl")


def test_neuron_bits_equal_an_independent_count_and_the_tolerance_holds():
    data = _data(256)
    row = describe(Neurons(3), data, 0.01)
    assert row.meets_tolerance and row.kl <= 0.01 and row.param_bits == 0
    step = row.delta * data.rows().double().pow(2).mean().sqrt().item()
    index, value = numpy_code_bits(np.round(data.rows().double().numpy() / step).astype(np.int64))
    assert row.index_bits == pytest.approx(index, rel=1e-9)
    assert row.value_bits == pytest.approx(value + coding.FLOAT_BITS, rel=1e-9)


def test_in_one_dimension_the_neurons_are_the_two_atom_dictionary():
    """Activations +m e or -m e: a dictionary with atoms +e and -e sends which atom per example
    (categorical: no bits paid twice for atoms that exclude each other) and a magnitude, the
    neuron a signed value. Their codes cost the same up to the per-unit headers and step; the
    dictionary pays its parameters on top. So the neurons are that dictionary, parameter-free,
    and their atoms +e, -e recover the two directions."""
    from unweave.dictionaries.sae import SAE, SAEConfig
    from unweave.mdl.bases import Dictionary

    class OneDim(nn.Module):
        def __init__(self):
            super().__init__()
            self.site, self.out = nn.Identity(), nn.Linear(1, 5)

        def forward(self, x):
            return self.out(self.site(x))

    gen = torch.Generator().manual_seed(3)
    sign = torch.where(torch.rand(3000, 1, generator=gen) < 0.5, -1.0, 1.0)
    x = sign * torch.rand(3000, 1, generator=gen) * (torch.rand(3000, 1, generator=gen) < 0.3)
    torch.manual_seed(0)
    data = SiteData(OneDim(), x, "site", lambda m, x: m(x) * 3, measure="kl")
    sae = SAE(SAEConfig(d_in=1, n_latents=2, k=1))
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[1.0], [-1.0]]))
        sae.b_dec.zero_()
    neurons = describe(Neurons(1), data, 0.001)
    pair = describe(Dictionary(sae, codes="pursuit"), data, 0.001)
    codes = {r.basis: r.index_bits + r.value_bits for r in (neurons, pair)}
    # 7 bits apart here (the second unit's header); per-unit Bernoulli indices would pay ~90 more
    assert abs(codes[pair.basis] - codes["neurons"]) < 30
    assert pair.total_bits == pytest.approx(codes[pair.basis] + pair.param_bits) and pair.param_bits > 0
    assert mean_max_cosine(torch.tensor([[2.0], [-0.5]], dtype=torch.float64), Neurons(1).atoms()) == 1.0


def test_the_lookup_table_costs_more_than_neurons_and_grows_with_the_dataset():
    small, large = _data(128), _data(256)
    rows = {n: describe(LookupTable(d.rows()), d, 0.01) for n, d in ((128, small), (256, large))}
    assert rows[256].total_bits > 1.9 * rows[128].total_bits
    assert rows[256].total_bits > describe(Neurons(3), large, 0.01).total_bits


def test_mdl_on_a_modular_addition_run(tmp_path, small_modadd):
    """p = 31 (the demo uses 59): the Fourier description is the shortest, shorter than neurons
    and every PCA rank; the Fourier program is over 100x shorter than the quantised weights."""
    out = tmp_path / "mdl"
    result = CliRunner().invoke(app, ["mdl", str(small_modadd.dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "mdl.json").read_text())
    assert data["tolerance"] == 0.05 and data["measure"] == "kl"
    rows = {r["basis"]: r for r in data["rows"] if r["basis"] != "pca"}
    pcas = [r["total_bits"] for r in data["rows"] if r["basis"] == "pca" and r["total_bits"]]
    fourier = rows["fourier (codes from a+b)"]
    assert data["best"]["basis"] == "fourier (codes from a+b)"
    assert fourier["total_bits"] < min(pcas) and fourier["total_bits"] < rows["neurons"]["total_bits"]
    assert rows["lookup table"]["total_bits"] > rows["neurons"]["total_bits"]
    for r in data["rows"]:
        if r["total_bits"] is not None:
            assert r["kl"] <= 0.05
            assert r["total_bits"] == pytest.approx(r["param_bits"] + r["index_bits"] + r["value_bits"])
    program, weights = data["program"], data["weights"]
    assert program["meets_tolerance"] and program["accuracy"] == 1.0
    assert weights["bits"] > 100 * program["bits"] and weights["raw_bits"] == 32 * weights["n_params"]
    record = json.loads((out / "record.json").read_text())
    assert record["command"] == "unweave mdl" and (out / "mdl.html").stat().st_size > 10_000


def test_mdl_bad_input(tmp_path):
    runner = CliRunner()
    for args, message in (
        (["nowhere"], "unknown mdl target 'nowhere'"),
        (["tms:3"], "tms:N,M with integers"),
        (["tms:2,5"], "1 <= M < N"),
        (["tms:5,2", "--tolerance", "-1"], "--tolerance must be positive"),
    ):
        result = runner.invoke(app, ["mdl", *args, "--out", str(tmp_path / "x")])
        assert result.exit_code != 0
        assert message in str(result.exception), (args, result.exception)


def test_mdl_on_a_toy_model_of_superposition(tmp_path):
    """5 features in 2 dims: the shortest description is the width-5 dictionary, which holds
    the five feature directions; neurons and the lookup table cost more."""
    out = tmp_path / "tms"
    args = ["mdl", "tms:5,2", "--restarts", "2", "--examples", "2048", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "mdl.json").read_text())
    assert data["measure"] == "output_fvu" and data["tolerance"] == 0.01
    known = data["known_answer"]
    assert known["represented_features"] == 5 and known["best_width"] == 5
    assert known["mean_max_cosine"] >= 0.99 and known["recovered"]
    by = {r["basis"]: r for r in data["rows"]}
    assert by["lookup table"]["total_bits"] > by["neurons"]["total_bits"] > data["best"]["total_bits"]
    assert sorted({r["width"] for r in data["rows"] if r["basis"].startswith("sae")}) == [2, 3, 4, 5, 10, 20]


def test_dln_family_weight_bits_and_llc():
    """The family grid keeps only valid ranks; at fixed widths a higher rank costs more bits
    and has a higher LLC (more nonzero weights, more directions fixed); the rank agreement
    is Spearman's rho, here computed by hand from ranks."""
    from unweave.mdl.simplicity import dln_rows, family, rank_agreement

    cases = family(outer=(3,), hidden=(2,), depths=(1,), ranks=(1, 2, 3))
    assert cases == [([3, 2, 3], 1), ([3, 2, 3], 2)]  # rank 3 exceeds the hidden width
    rows = dln_rows([([5, 3, 5], 1), ([5, 3, 5], 2), ([5, 3, 5], 3)], tolerance=0.01, n=500)
    assert [r["llc"] for r in rows] == sorted(r["llc"] for r in rows)
    assert rows[0]["weight_bits"] < rows[1]["weight_bits"] < rows[2]["weight_bits"]
    assert all(r["output_fvu"] <= 0.01 for r in rows)
    fake = [{"llc": a, "weight_bits": b, "params": c} for a, b, c in [(1, 10, 5), (2, 30, 5), (3, 20, 6), (4, 40, 7)]]
    found = rank_agreement(fake)
    d = [0, -1, 1, 0]  # rank differences of weight_bits against llc: rho = 1 - 6 sum d^2 / (n (n^2 - 1))
    assert found["weight_bits"]["rho"] == pytest.approx(1 - 6 * sum(x * x for x in d) / (4 * 15))


def test_counts_by_bincount_and_by_sorting_agree():
    """A batch on a small (unit, symbol) grid is counted by bincount, a wide one by sorting:
    the same histograms and bits either way, batch after batch."""
    gen = torch.Generator().manual_seed(4)
    units = torch.randint(0, 5, (4000,), generator=gen)
    symbols = torch.randint(-30, 30, (4000,), generator=gen)
    symbols[::194] *= 10**6  # a few far symbols, at even places: the wide grid
    dense, sparse = coding.SymbolCounts(5), coding.SymbolCounts(5)
    sparse.DENSE_BINS = 0  # always by sorting
    for part in range(4):
        chunk = slice(part * 1000, (part + 1) * 1000)
        for counts in (dense, sparse):
            counts.add(units[chunk][1::2], symbols[chunk][1::2])  # small symbols only: the grid path (dense)
            counts.add(units[chunk][::2], symbols[chunk][::2])  # with far ones: the sorting path
    assert torch.equal(dense.keys, sparse.keys) and torch.equal(dense.counts, sparse.counts)
    assert torch.equal(dense.bits(), sparse.bits())
