"""Description length over an activation store (`unweave mdl DICT... --store S`): bits
streamed over the store equal an independent count over all its rows, PCA from the streamed
covariance equals PCA of the rows, SAEBench's quantity equals numpy/scipy histograms and
entropies, and every mismatch between dictionaries and store is a one-line error."""

import json
import random
import shutil

import numpy as np
import pytest
import torch
from code_counts import numpy_choice_bits, numpy_code_bits, numpy_sequence_bits
from scipy.stats import entropy
from typer.testing import CliRunner

from unweave.cli import app
from unweave.dictionaries import io
from unweave.dictionaries.sae import SAE, SAEConfig
from unweave.mdl import coding, saebench
from unweave.mdl.bases import Dictionary, LinearMap, pca
from unweave.mdl.streamed import open_dictionaries, store_bases
from unweave.store import ActivationStore

runner = CliRunner()
SITES = ["model.layers.0", "model.layers.1.mlp:input", "model.layers.1.mlp"]
WORDS = ["the", "king", "queen", "and", "to", "of", "a", "my", "lord"]


def _invoke(*args: str) -> None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def setup(tiny_llama_dir, tmp_path_factory):
    """A training store and a held-out store (another text) of the tiny Llama, two TopK SAEs
    at model.layers.0 and a transcoder of layer 1's MLP, trained on the first."""
    root = tmp_path_factory.mktemp("mdl-store")
    for name, seed in (("train.txt", 0), ("held.txt", 1)):
        gen = random.Random(seed)
        (root / name).write_text(" ".join(gen.choice(WORDS) for _ in range(12_000)))
    site_args = [a for s in SITES for a in ("--site", s)]
    for store, text, tokens in (("train", "train.txt", 4096), ("held", "held.txt", 2048)):
        _invoke("cache", "--model", str(tiny_llama_dir), *site_args, "--out", str(root / store), "--tokens",
                str(tokens), "--ctx-len", "32", "--shard-tokens", "1024", "--text", str(root / text))  # fmt: skip
    common = ["--store", str(root / "train"), "--width", "64", "--batch-size", "256"]
    _invoke("sae", "train", *common, "--site", SITES[0], "--k", "2", "--k", "4", "--out", str(root / "sae"))
    _invoke("sae", "train", *common, "--site", SITES[1], "--target-site", SITES[2], "--k", "4", "--out",
            str(root / "tc"))  # fmt: skip
    _invoke("sae", "train", *common, "--site", SITES[1], "--target-site", SITES[2], "--k", "4", "--skip", "--out",
            str(root / "tc"))  # fmt: skip
    return root


def test_bits_over_a_store_equal_an_independent_count(setup, tmp_path):
    root = setup
    saes = [str(root / "sae" / f"topk-k{k}-w64") for k in (2, 4)]
    out = tmp_path / "mdl"
    _invoke("mdl", *saes, "--store", str(root / "held"), "--calibration-tokens", "128", "--tolerance", "1e-4",
            "--out", str(out))  # fmt: skip
    data = json.loads((out / "mdl.json").read_text())
    store = data["store"]
    assert store["held_out"] and store["store_tokens"] == 2048 and store["calibration_tokens"] == 128
    assert store["described_tokens"] + store["left_out_tokens"] == 2048
    labels = {r["basis"] for r in data["rows"]}
    assert {"neurons", "pca", "topk-k2-w64 (sae-topk)", "topk-k4-w64 (sae-topk)"} <= labels
    for r in data["rows"]:
        assert r["n"] == store["described_tokens"]
        if r["total_bits"] is not None:
            assert r["kl"] <= 1e-4
            assert r["total_bits"] == pytest.approx(r["param_bits"] + r["index_bits"] + r["value_bits"])
    # the neurons row, recounted with numpy from every stored row at the reported step
    held = ActivationStore(root / "held")
    x = torch.cat([held.load_shard(i, SITES[0]) for i in range(len(held.shards))]).double()
    keep = x.norm(dim=1) <= store["max_input_norm"]
    x = x[keep]
    assert len(x) == store["described_tokens"]
    neurons = next(r for r in data["rows"] if r["basis"] == "neurons")
    calibration = held.load_shard(0, SITES[0])[:128].double()
    calibration = calibration[calibration.norm(dim=1) <= store["max_input_norm"]]
    step = neurons["delta"] * calibration.pow(2).mean().sqrt().item()
    index, value = numpy_code_bits(np.round(x.numpy() / step).astype(np.int64))
    assert neurons["index_bits"] == pytest.approx(index, rel=1e-6)
    assert neurons["value_bits"] == pytest.approx(value + coding.FLOAT_BITS, rel=1e-6)
    # the lookup table: every described row quantised at its step (the calibration table's
    # delta * rms) and coded as one sequence, plus which row each token is (each used once)
    lookup = next(r for r in data["rows"] if r["basis"] == "lookup table")
    n = len(x)
    step = lookup["param_delta"] * calibration.pow(2).mean().sqrt().item()
    table = numpy_sequence_bits(np.round(x.numpy() / step).astype(np.int64))
    assert lookup["width"] == n and lookup["value_bits"] == 0
    assert lookup["param_bits"] == pytest.approx(table + coding.FLOAT_BITS, rel=1e-6)
    assert lookup["index_bits"] == pytest.approx(1 + numpy_choice_bits([1] * n, n), rel=1e-9)
    assert lookup["total_bits"] > neurons["total_bits"]  # the rows themselves, and which one each token is
    # SAEBench's quantity beside ours, for each dictionary
    assert [r["basis"] for r in data["saebench"]] == ["topk-k2-w64 (sae-topk)", "topk-k4-w64 (sae-topk)"]
    assert all(r["saebench_bits_per_token"] > 0 for r in data["saebench"])
    html = (out / "mdl.html").read_text()
    assert "SAEBench" in html and data["weights"]["raw_bits"] == 32 * data["weights"]["n_params"]


def test_a_transcoder_describes_its_mlps_output_from_its_input(setup, tmp_path):
    root = setup
    out = tmp_path / "tc"
    _invoke("mdl", str(root / "tc" / "transcoder-topk-k4-w64"), "--store", str(root / "held"),
            "--calibration-tokens", "128", "--tolerance", "1e-4", "--out", str(out))  # fmt: skip
    data = json.loads((out / "mdl.json").read_text())
    assert data["store"]["site"] == SITES[2]
    tc = next(r for r in data["rows"] if r["basis"].startswith("transcoder"))
    assert tc["total_bits"] is not None and tc["kl"] <= 1e-4
    # the transcoder's baseline, the MLP replaced by a linear map of its input: nothing per token
    linear = next(r for r in data["rows"] if r["basis"] == "linear map of the input")
    assert linear["width"] == 0 and linear["mean_active"] == 0
    if linear["total_bits"] is not None:
        assert linear["index_bits"] == linear["value_bits"] == 0 and linear["param_bits"] > 0


def test_the_linear_map_is_the_least_squares_fit_over_the_store(setup):
    """The map streamed over the store equals numpy's least squares on all its described rows."""
    root = setup
    target = open_dictionaries([root / "tc" / "transcoder-topk-k4-w64"], root / "held")
    target.source.batch_tokens = 300  # batches that do not divide the store
    linear = next(b for b in store_bases(target, torch.zeros(1, 32)) if isinstance(b, LinearMap))
    held = ActivationStore(root / "held")
    x_in, x_out = (torch.cat([held.load_shard(i, s) for i in range(len(held.shards))]).double() for s in SITES[1:])
    keep = x_in.norm(dim=1) <= target.source.max_norm if target.source.max_norm is not None else slice(None)
    design = np.hstack([x_in[keep].numpy(), np.ones((len(x_in[keep]), 1))])
    solution = np.linalg.lstsq(design, x_out[keep].numpy(), rcond=None)[0]
    fitted = linear.decode(torch.zeros(3, 0), linear.params(), x_in[:3])
    assert np.allclose(fitted.numpy(), x_in[:3].numpy() @ solution[:-1] + solution[-1], atol=1e-6)
    with pytest.raises(ValueError, match="decodes from its input"):
        linear.decode(torch.zeros(3, 0), linear.params())


def test_a_skip_transcoder_sends_its_skip_and_decodes_from_the_mlps_input(setup, tmp_path):
    """A skip transcoder's description sends W_skip with its decoder (recounted here from the
    saved weights at the reported step), and decodes MLP output = codes @ W_dec + b_dec +
    input @ W_skip, the input being what the network computes before the MLP."""
    root = setup
    folder = root / "tc" / "transcoder-skip-topk-k4-w64"
    out = tmp_path / "skip"
    _invoke("mdl", str(folder), "--store", str(root / "held"), "--calibration-tokens", "128", "--tolerance", "1e-4",
            "--out", str(out))  # fmt: skip
    data = json.loads((out / "mdl.json").read_text())
    skip = next(r for r in data["rows"] if "transcoder-skip" in r["basis"])
    assert skip["total_bits"] is not None and skip["kl"] <= 1e-4
    sae = io.load(folder)
    sent = [sae.W_dec, sae.b_dec, sae.W_skip]
    expected = 0.0
    for t in (t.detach().double().numpy() for t in sent):
        step = skip["param_delta"] * np.sqrt(np.mean(t**2))
        expected += numpy_sequence_bits(np.round(t / step).astype(np.int64)) + coding.FLOAT_BITS
    assert skip["param_bits"] == pytest.approx(expected, rel=1e-6)
    # the decoder, on a skip transcoder whose skip is far from zero
    gen = torch.Generator().manual_seed(0)
    planted = SAE(SAEConfig(d_in=6, n_latents=16, k=3, kind="transcoder", d_out=4, skip=True))
    with torch.no_grad():
        planted.W_skip.copy_(torch.randn(6, 4, generator=gen))
        x = torch.randn(5, 6, generator=gen)
        latents = planted.encode(x)
        basis = Dictionary(planted, reads=SITES[1])
        decoded = basis.decode(latents, basis.params(), x)
        assert torch.allclose(decoded, latents @ planted.W_dec + planted.b_dec + x @ planted.W_skip)
        assert (decoded - (latents @ planted.W_dec + planted.b_dec)).abs().max() > 0.1
    with pytest.raises(ValueError, match="decodes from its input"):
        basis.decode(latents, basis.params())


def test_skip_needs_a_transcoder(setup, tmp_path):
    result = runner.invoke(app, ["sae", "train", "--store", str(setup / "train"), "--site", SITES[0], "--skip"])
    assert result.exit_code != 0 and "--skip is for transcoders: add --target-site" in str(result.exception)


def test_streamed_pca_equals_pca_of_the_rows(setup):
    root = setup
    target = open_dictionaries([root / "sae" / "topk-k2-w64"], root / "held")
    target.source.batch_tokens = 300  # batches that do not divide the store
    streamed = {b.width: b for b in store_bases(target, torch.zeros(1, 32)) if b.name == "pca"}
    held = ActivationStore(root / "held")
    x = torch.cat([held.load_shard(i, SITES[0]) for i in range(len(held.shards))]).double()
    x = x[x.norm(dim=1) <= target.source.max_norm]
    direct = pca(x, 8)
    assert torch.allclose(streamed[8].mean, direct.mean, atol=1e-9)
    cosines = (streamed[8].directions * direct.directions).sum(1).abs()
    assert torch.all(cosines > 1 - 1e-6), cosines


def test_saebench_quantity_equals_numpy_histograms_and_scipy_entropy():
    gen = torch.Generator().manual_seed(0)
    codes = torch.rand(500, 7, generator=gen) * 3 * (torch.rand(500, 7, generator=gen) < 0.2)
    codes[:, 6] = 0  # a dead latent
    top = codes.max(0).values
    hist = saebench.Histograms(top, num_bins=(4, 16))
    for batch in codes.split(64):
        hist.add(batch)
    for bins in (4, 16):
        want = 0.0
        for i in range(7):
            col = codes[:, i].double().numpy()
            p = (col > 0).mean()
            counts, _ = np.histogram(col, bins=np.linspace(0, max(col.max(), 1e-30), bins + 1))
            want += entropy([p, 1 - p], base=2) + p * (entropy(counts, base=2) if counts.sum() else 0.0)
        assert hist.bits_per_token(bins) == pytest.approx(want, rel=1e-9)
    # midpoint quantisation: a value in (edge_j, edge_j+1] goes to the midpoint of bin j, zero to bin 0's
    q = saebench.midpoints(torch.tensor([[0.0, 1.0, 2.9, 3.0]]).double(), torch.tensor([4.0] * 4).double(), 4)
    assert q.tolist() == [[0.5, 0.5, 2.5, 2.5]]
    assert saebench.chosen({4: 3.0, 8: 2.0}, {4: 0.001, 8: 0.5}) == (4, True)


@pytest.mark.parametrize(
    "cfg",
    [
        SAEConfig(d_in=12, n_latents=40, k=5),
        SAEConfig(d_in=12, n_latents=40, architecture="relu"),
        SAEConfig(d_in=12, n_latents=40, k=3, kind="transcoder", d_out=7, skip=True),
    ],
    ids=["topk", "relu", "skip-transcoder"],
)
def test_code_entries_and_saebench_viability_equal_the_dense_computation(cfg):
    torch.manual_seed(0)
    sae = SAE(cfg)
    with torch.no_grad():  # biases off zero, so the centred encoder and b_dec count
        for b in (sae.b_enc, sae.b_dec):
            b.normal_(0, 0.3)
    basis = Dictionary(sae, reads="mlp-in" if cfg.kind == "transcoder" else None)
    x = torch.randn(50, 12)
    dense = basis.encode(x)
    rows, units, values = basis.entries(x)
    got = torch.zeros_like(dense).index_put_((rows, units), values)
    assert torch.equal(got, dense) and bool((values != 0).all())
    # SAEBench's metric: every latent quantised to its bin's midpoint (zeros too), decoded densely
    target = torch.randn(50, cfg.width_out)
    top = dense.max(0).values
    params = {k: v.float() for k, v in basis.params().items()}
    decode = lambda q: basis.decode(q, params, x)  # noqa: E731
    metric = saebench.viability(target, (rows, units, values), top, decode, params["W_dec"])
    for b, m in metric.items():
        q = saebench.midpoints(dense, top, b)
        assert (q != 0).any(1).all()  # a zero goes to the first bin's midpoint, not to zero
        assert m == pytest.approx(saebench.reconstruction_metric(target, basis.decode(q, params, x)), rel=1e-5)


def test_mdl_over_a_store_bad_input(setup, tiny_llama_dir, tmp_path):
    root = setup
    sae = root / "sae" / "topk-k2-w64"
    other = tmp_path / "other-model"
    shutil.copytree(sae, other)
    cfg = json.loads((other / "cfg.json").read_text())
    cfg["metadata"]["model_name"] = "smollm2-135m"
    (other / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "empty").mkdir()
    only0 = tmp_path / "only0"
    _invoke("cache", "--model", str(tiny_llama_dir), "--site", SITES[0], "--out", str(only0), "--tokens", "256",
            "--ctx-len", "32", "--text", str(root / "held.txt"))  # fmt: skip
    for args, message in (
        ([str(sae)], "add --store DIR"),
        (["tms:5,2", "--store", str(root / "held")], "every TARGET must be a dictionary folder"),
        ([str(other), "--store", str(root / "held")], "was trained on 'smollm2-135m'"),
        ([str(sae), "--store", str(tmp_path / "empty")], "is not an activation store"),
        ([str(root / "tc" / "transcoder-topk-k4-w64"), "--store", str(only0)], "which the store"),
        ([str(sae), str(root / "tc" / "transcoder-topk-k4-w64"), "--store", str(root / "held")], "different sites"),
        ([str(sae), "--store", str(root / "held"), "--calibration-tokens", "5000"], "lower --calibration-tokens"),
        ([str(sae), "--store", str(root / "held"), "--tolerance", "1e-20"], "raise --tolerance"),
    ):
        result = runner.invoke(app, ["mdl", *args, "--out", str(tmp_path / "x")])
        assert result.exit_code != 0, args
        assert message in str(result.exception), (args, result.exception)
