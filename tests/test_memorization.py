import json
import math

import numpy as np
import pytest
import torch

from unweave.zoo import memorization as mem

# a small sweep, on sizes and a width that the defaults (n=400, m=5) do not use
SMALL = mem.MemorizationConfig(
    n_features=100, d_hidden=3, active=5, sizes=[5, 20, 60, 300], steps=2000, test_examples=2000
)


@pytest.fixture(scope="module")
def fits():
    return mem.sweep(SMALL)


def test_dimensionality_against_its_definition():
    gen = np.random.default_rng(0)
    v = gen.normal(size=(7, 3))
    v[2] = 0
    ref = [
        0.0
        if not np.any(v[i])
        else np.dot(v[i], v[i]) / sum((np.dot(v[i], v[j]) / np.linalg.norm(v[i])) ** 2 for j in range(7))
        for i in range(7)
    ]
    assert mem.dimensionality(torch.tensor(v)).numpy() == pytest.approx(ref, rel=1e-5)


def test_dimensionality_of_known_arrangements():
    # k equal vectors around a regular polygon in the plane share two dimensions: 2/k each
    angles = torch.arange(5) * 2 * math.pi / 5
    pentagon = torch.stack([angles.cos(), angles.sin()], 1)
    assert mem.dimensionality(pentagon).tolist() == pytest.approx([0.4] * 5, rel=1e-5)
    # orthogonal vectors own a dimension each, a pair of antipodal vectors shares one
    assert mem.dimensionality(torch.eye(3)).tolist() == pytest.approx([1, 1, 1])
    assert mem.dimensionality(torch.tensor([[2.0, 0], [-1.0, 0]])).tolist() == pytest.approx([0.8, 0.2])


def test_datapoints_are_unit_sparse_vectors():
    x = mem.sample(2000, SMALL, torch.Generator().manual_seed(0))
    nonzero = x.norm(dim=1) > 0
    assert x[nonzero].norm(dim=1).numpy() == pytest.approx(1.0, rel=1e-5)
    assert (x > 0).sum(1).float().mean().item() == pytest.approx(SMALL.active, rel=0.1)


def test_few_datapoints_are_memorised_many_give_features(fits):
    """The published result at small size: the datapoints hold the hidden space at the
    smallest T (train loss near 0, not generalising), the features at the largest."""
    assert fits[0].train_loss < 0.05 and fits[0].test_loss > 0.5
    assert mem.regime(fits[0]) == "datapoints"
    assert mem.regime(fits[-1]) == "features"
    assert mem.held(fits[0].datapoint_dims, 3) > 1.0  # a few clean datapoint directions


def test_test_loss_peaks_between_the_two_regimes(fits):
    dd = mem.double_descent(fits)
    assert dd is not None and dd.found
    assert fits[0].size < dd.peak < fits[-1].size


def test_double_descent_reads_the_losses_it_is_given():
    def fake(size, losses):
        return mem.Fit(size, torch.zeros(2, 3), torch.zeros(3), torch.zeros(1, 3), 0.0, torch.tensor(losses))

    rising = [fake(1, [1.0, 1.1]), fake(2, [1.5, 1.4]), fake(3, [2.0, 2.2])]
    assert mem.double_descent(rising) is None  # the peak is at an end
    bump = [fake(1, [1.0, 1.1, 0.9]), fake(2, [1.5, 1.6, 1.4]), fake(3, [0.8, 0.9, 0.7])]
    dd = mem.double_descent(bump)
    assert dd.peak == 2 and dd.rise == pytest.approx(0.5) and dd.fall == pytest.approx(0.7)
    assert dd.rise_se == pytest.approx(0.0, abs=1e-6) and dd.found


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="d-hidden"):
        mem.MemorizationConfig(n_features=4, d_hidden=4)
    with pytest.raises(ValueError, match="sizes"):
        mem.MemorizationConfig(sizes=[10, 10, 20])


def test_cli_writes_the_sweep(tmp_path):
    from typer.testing import CliRunner

    from unweave.cli import app

    out = tmp_path / "memo"
    args = "--n-features 40 --d-hidden 2 --active 3 --steps 200 --test-examples 200".split()
    for size in (3, 10, 30):
        args += ["--sizes", str(size)]
    result = CliRunner().invoke(app, ["train", "memorization", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    found = json.loads((out / "train.json").read_text())
    assert [r["T"] for r in found["sweep"]] == [3, 10, 30]
    assert set(found["findings"]) >= {"regimes", "double_descent", "datapoints_then_features"}
    assert "Dimensionality" in (out / "train.html").read_text()


def test_an_interrupted_sweep_resumes_from_the_sizes_it_finished(tmp_path, monkeypatch):
    cfg = mem.MemorizationConfig(n_features=30, d_hidden=2, active=3, sizes=[3, 10, 30], steps=50, test_examples=200)
    first = mem.sweep(cfg, tmp_path)
    trained = []
    real_fit = mem.fit
    monkeypatch.setattr(mem, "fit", lambda size, c, test: trained.append(size) or real_fit(size, c, test))
    again = mem.sweep(mem.MemorizationConfig(**{**vars(cfg), "sizes": [3, 10, 30, 60]}), tmp_path)
    assert trained == [60]  # only the new size; the others are read back
    for a, b in zip(first, again):
        assert torch.equal(a.W, b.W) and torch.equal(a.test_losses, b.test_losses) and a.train_loss == b.train_loss
    mem.sweep(mem.MemorizationConfig(**{**vars(cfg), "steps": 60}), tmp_path)
    assert trained == [60, 3, 10, 30]  # other settings: nothing saved applies
