import json

import numpy as np
import pytest
import torch
from scipy import stats
from typer.testing import CliRunner

from unweave.cli import app
from unweave.tails.metrics import FAR, GAUSSIAN_BEYOND_FAR, kurtosis, random_rotation, tails

runner = CliRunner()


def test_kurtosis_matches_scipy_and_skips_constant_units():
    x = torch.tensor(np.random.default_rng(0).standard_t(4, size=(500, 4)))
    x[:, 2] = 7.0
    k = kurtosis(x).numpy()
    ref = stats.kurtosis(x.numpy()[:, [0, 1, 3]], axis=0, fisher=False, bias=True)
    assert k[[0, 1, 3]] == pytest.approx(ref, rel=1e-9)
    assert np.isnan(k[2])


def test_tail_share_and_histogram_against_numpy():
    rng = np.random.default_rng(1)
    x = rng.laplace(size=(4000, 3))
    t = tails(torch.tensor(x), "coordinates", bins=41, z_max=8.0)
    z = (x - x.mean(0)) / x.std(0)
    assert t.beyond_far == pytest.approx(np.mean(np.abs(z) > FAR))
    counts, edges = np.histogram(z.flatten(), bins=41, range=(-8, 8))
    assert t.hist_density == pytest.approx(counts / z.size / np.diff(edges))
    assert t.max_abs_z == pytest.approx(np.abs(z).max(0))
    assert GAUSSIAN_BEYOND_FAR == pytest.approx(2 * stats.norm.sf(FAR))


def test_random_rotation_is_orthogonal():
    q = random_rotation(16, seed=3)
    assert (q.T @ q).numpy() == pytest.approx(np.eye(16), abs=1e-10)


def test_a_planted_heavy_coordinate_shows_in_the_basis_not_in_random_directions():
    """Gaussian activations with one Laplace coordinate (kurtosis 6): that coordinate is
    the heaviest, and a random rotation spreads it so that no direction comes close."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20000, 64))
    x[:, 11] = rng.laplace(size=20000)
    x[:, 3] = 0.0  # a dead unit before it: units keep their own indices
    x = torch.tensor(x)
    own = tails(x, "coordinates")
    rotated = tails(x @ random_rotation(64, seed=0), "random directions")
    assert rotated.constant == 0
    assert own.constant == 1 and own.index[np.argmax(own.kurtosis)] == 11 and own.kurtosis.max() > 5
    assert rotated.kurtosis.max() < 3.5
    assert np.median(own.kurtosis) == pytest.approx(3, abs=0.15)
    assert np.median(rotated.kurtosis) == pytest.approx(3, abs=0.15)
    assert own.beyond_far > 10 * GAUSSIAN_BEYOND_FAR


def test_cli_on_a_modadd_run(small_modadd, tmp_path):
    result = runner.invoke(app, ["tails", str(small_modadd.dir), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "tails.json").read_text())
    assert {(r["site"], r["basis"]) for r in found["bases"]} == {
        ("blocks.0.hook_resid_post", "coordinates"),
        ("blocks.0.hook_resid_post", "random directions"),
        ("blocks.0.mlp.hook_post", "neurons"),
        ("blocks.0.mlp.hook_post", "random directions"),
    }
    assert "31 inputs" not in found["read_on"] and "961 inputs" in found["read_on"]


def test_cli_on_a_language_model_and_bad_dictionary(tiny_llama_dir, tmp_path):
    args = ["tails", str(tiny_llama_dir), "--tokens", "512", "--ctx-len", "32", "--out", str(tmp_path / "t")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "t" / "tails.json").read_text())
    assert {r["site"] for r in found["bases"]} == {"model.layers.0", "model.layers.1"}
    assert found["read_on"].startswith("496 tokens")  # 16 rows of 32, the first of each left out
    result = runner.invoke(app, [*args, "--dictionary", str(tmp_path / "nothing")])
    assert result.exit_code != 0 and "not a dictionary folder" in str(result.exception) + result.output


def test_massive_tokens_are_counted_and_left_out(tiny_llama_dir, tmp_path):
    """With --max-norm-ratio 1 every token above the median norm is left out: the count
    equals a direct capture's."""
    from unweave.hf import load_model
    from unweave.sites import capture
    from unweave.text import TextConfig, token_rows

    out = tmp_path / "t"
    args = ["tails", str(tiny_llama_dir), "--tokens", "512", "--ctx-len", "32", "--site", "model.layers.1"]
    result = runner.invoke(app, [*args, "--max-norm-ratio", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    row = json.loads((out / "tails.json").read_text())["bases"][0]
    model, tokenizer = load_model(str(tiny_llama_dir))
    rows = token_rows(TextConfig(), tokenizer, 32, max_tokens=512)
    with torch.no_grad():
        x = capture(model, "model.layers.1", rows)["model.layers.1"][:, 1:].reshape(-1, 32)
    norms = x.norm(dim=1)
    assert row["massive_tokens_left_out"] == int((norms > norms.median()).sum()) > 0
