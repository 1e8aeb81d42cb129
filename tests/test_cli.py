import json
import re
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from unweave.cli import app, main
from unweave.store import ActivationStore

runner = CliRunner()


def cache_tiny(model_dir: Path, out: Path, sites: list[str], tokens: int, shard_tokens: int) -> None:
    """`unweave cache` of the tiny Llama at 32-token rows."""
    site_args = [a for s in sites for a in ("--site", s)]
    result = runner.invoke(
        app,
        [
            "cache",
            "--model",
            str(model_dir),
            *site_args,
            "--out",
            str(out),
            "--tokens",
            str(tokens),
            "--ctx-len",
            "32",
            "--shard-tokens",
            str(shard_tokens),
        ],
    )
    assert result.exit_code == 0, result.output


def check_record(folder: Path, command: str, results: str, report: str, **config) -> dict:
    """record.json has every field the run-folder convention promises, with the values given."""
    import hashlib

    record = json.loads((folder / "record.json").read_text())
    assert record["command"] == f"unweave {command}"
    assert isinstance(record["argv"], list) and record["argv"]
    for key, value in config.items():
        assert record["config"][key] == value, (key, record["config"][key], value)
    assert all("seed" in k for k in record["seeds"]) and isinstance(record["seeds"], dict)
    assert {"python", "unweave", "torch", "transformers", "numpy"} <= set(record["versions"])
    # the device the run used: --device auto (the default) is the GPU when there is one
    used = record["config"].get("device", {}).get("device", "auto")
    gpu = used.startswith("cuda") or (used == "auto" and torch.cuda.is_available())
    assert record["device"].startswith("cuda" if gpu else "cpu"), record["device"]
    assert record["wall_time_s"] > 0 and record["started"]
    assert record["results"] == results and record["report"] == report
    assert (folder / results).exists() and (folder / report).exists()
    for path, digest in record["inputs"].items():  # checksums match an independent hash
        files = {Path(path): digest} if isinstance(digest, str) else {Path(path) / k: v for k, v in digest.items()}
        for file, want in files.items():
            assert hashlib.sha256(file.read_bytes()).hexdigest() == want, file
    return record


@pytest.mark.parametrize(
    "command",
    [
        ["runs"],
        [],
        ["demo"],
        ["train"],
        ["train", "modadd"],
        ["train", "skip-trigrams"],
        ["train", "memorization"],
        ["cache"],
        ["llc"],
        ["detect"],
        ["sae"],
        ["sae", "train"],
        ["sae", "eval"],
        ["scrub"],
        ["fingerprint"],
        ["universality"],
        ["tails"],
    ],
)
def test_every_command_explains_itself(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    if command and command not in (["train"], ["sae"]):
        assert re.search(r"Examples?: unweave", result.output)


def test_train_modadd(tmp_path):
    import torch.nn.functional as F

    from unweave.zoo.modadd import TrainedModAdd, make_data

    result = runner.invoke(
        app, ["train", "modadd", "--out", str(tmp_path), "--p", "11", "--steps", "20", "--checkpoint-every", "10"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_000010.safetensors",
        "step_000020.safetensors",
    ]
    record = check_record(tmp_path, "train modadd", "train.json", "train.html")
    cfg = record["config"]["modadd"]
    assert (cfg["p"], cfg["steps"], cfg["lr"], cfg["frac_train"]) == (11, 20, 3e-3, 0.4)  # given, and defaults
    assert record["seeds"] == {"modadd.seed": 0}
    final = json.loads((tmp_path / "train.json").read_text())["final"]
    run = TrainedModAdd(tmp_path)
    data = make_data(run.config)  # the final train loss, recomputed from the saved weights
    logits = run.load()(data.tokens[data.train_idx])[:, -1].double()
    assert final["step"] == 20
    recomputed = F.cross_entropy(logits, data.labels[data.train_idx]).item()
    # exact on the CPU it trained on; trained on a GPU, float32 kernels differ in the last bits
    tolerance = 1e-9 if record["device"].startswith("cpu") else 1e-6 * recomputed
    assert abs(final["train_loss"] - recomputed) < tolerance


def test_demo_writes_its_run_folder(tmp_path):
    from unweave.zoo.modadd import TrainedModAdd

    result = runner.invoke(
        app,
        [
            "demo",
            "--out",
            str(tmp_path),
            "--p",
            "13",
            "--d-model",
            "32",
            "--n-heads",
            "2",
            "--d-mlp",
            "64",
            "--steps",
            "60",
            "--eval-every",
            "10",
            "--checkpoint-every",
            "20",
        ],
    )
    assert result.exit_code == 0, result.output
    record = check_record(tmp_path, "demo", "results.json", "report.html")
    assert record["config"]["sgld"]["epsilon"] == 3e-5 and record["config"]["modadd"]["p"] == 13
    results = json.loads((tmp_path / "results.json").read_text())
    assert [p["step"] for p in results["llc"]] == [20, 40, 60]
    assert results["final"] == TrainedModAdd(tmp_path / "modadd").history[-1]
    assert results["mdl"]["best"]["total_bits"] > 0 and results["mdl"]["weights"]["n_params"] > 0


def run_main(monkeypatch, capsys, args):
    monkeypatch.setattr(sys, "argv", ["unweave", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


def test_user_errors_print_one_line_not_a_traceback(monkeypatch, capsys, tiny_llama_dir, tmp_path):
    code, err = run_main(monkeypatch, capsys, ["train", "modadd", "--out", str(tmp_path), "--p", "12"])
    assert code == 2 and "odd prime" in err and "Traceback" not in err
    code, err = run_main(
        monkeypatch,
        capsys,
        [
            "cache",
            "--model",
            str(tiny_llama_dir),
            "--site",
            "model.layer.1",
            "--out",
            str(tmp_path / "c"),
            "--tokens",
            "200",
            "--ctx-len",
            "16",
        ],
    )
    assert code == 2 and "closest valid sites: model.layers.1" in " ".join(err.split())


def test_cache_writes_a_store(tiny_llama_dir, tmp_path):
    cache_tiny(tiny_llama_dir, tmp_path, ["model.layers.0", "model.layers.1.mlp:input"], tokens=640, shard_tokens=256)
    store = ActivationStore(tmp_path)
    assert store.complete and store.n_tokens == 640 and len(store.shards) == 3
    assert store.width("model.layers.0") == 32
    record = check_record(
        tmp_path,
        "cache",
        "cache.json",
        "cache.html",
        site=["model.layers.0", "model.layers.1.mlp:input"],
        tokens=640,
        text={"text": "shakespeare", "text_field": "text", "pack": True},
        store_dtype="float32",
        device={"device": "auto", "dtype": "float32"},
    )
    assert str(tiny_llama_dir) in record["inputs"]  # the model folder it read, checksummed
    sites = {s["site"]: s for s in json.loads((tmp_path / "cache.json").read_text())["sites"]}
    norms = store.load_shard(0, "model.layers.0").double().norm(dim=1)
    assert abs(sites["model.layers.0"]["median norm (first shard)"] - norms.median().item()) < 1e-9


def test_llc_on_a_zoo_model_and_a_run(tmp_path, small_modadd):
    # RRR 3-2-3, rank 1: lambda = 3.5 (Aoyagi & Watanabe); first with settings given, then by the rule
    result = runner.invoke(
        app,
        [
            "llc",
            "rrr:3,2,3:1",
            "--settings",
            "fixed",
            "--nbeta",
            "10000",
            "--epsilon",
            "3e-5",
            "--localization",
            "30",
            "--chains",
            "4",
            "--draws",
            "1000",
            "--burn-in",
            "1000",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "llc.json").read_text())
    assert record["true_llc"] == 3.5 and record["hessian"]["n_params"] == 12
    assert abs(record["llc"][-1]["llc_mean"] - 3.5) / 3.5 < 0.15, record["llc"][-1]["llc_mean"]
    assert "LLC" in (tmp_path / "llc.html").read_text()
    meta = check_record(tmp_path, "llc", "llc.json", "llc.html", target="rrr:3,2,3:1", checkpoint="final")
    assert meta["config"]["sgld"]["nbeta"] == 10000 and meta["config"]["sgld"]["draws"] == 1000
    assert meta["seeds"] == {"sgld.seed": 0}
    # by the rule: RRR 5-4-6, rank 1, lambda = 10.5 (a held-out case of the rule; it settles in
    # 2,000 steps, where 3-2-3 needs 16,000 and took 79 s of the suite)
    result = runner.invoke(app, ["llc", "rrr:5,4,6:1", "--no-hessian", "--out", str(tmp_path / "auto")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "auto" / "llc.json").read_text())
    assert record["true_llc"] == 10.5
    assert record["healthy"] and record["auto"]["healthy"], record["auto"]["message"]
    assert abs(record["llc"][-1]["llc_mean"] - 10.5) / 10.5 <= 0.10, record["auto"]
    lo, hi = record["auto"]["spread"]
    assert lo <= record["llc"][-1]["llc_mean"] <= hi
    lo, hi = record["auto"]["band"]
    assert lo <= 10.5 <= hi and "band" in result.output
    assert "How the settings were chosen" in (tmp_path / "auto" / "llc.html").read_text()
    result = runner.invoke(
        app,
        [
            "llc",
            str(small_modadd.dir),
            "--settings",
            "fixed",
            "--checkpoint",
            "all",
            "--chains",
            "2",
            "--draws",
            "10",
            "--batch-size",
            "128",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert [p["step"] for p in json.loads((tmp_path / "run" / "llc.json").read_text())["llc"]] == [500, 1000, 1500]
    meta = check_record(tmp_path / "run", "llc", "llc.json", "llc.html", batch_size=128)
    assert "model.safetensors" in meta["inputs"][str(small_modadd.dir)]


def test_llc_bad_target_and_subset(monkeypatch, capsys, tmp_path):
    code, err = run_main(monkeypatch, capsys, ["llc", "mlp:3", "--out", str(tmp_path)])
    assert code == 2 and "neither a run directory" in err
    code, err = run_main(monkeypatch, capsys, ["llc", "rrr:3,2,3:1", "--params", "5", "--out", str(tmp_path)])
    assert code == 2 and "matches no parameter" in " ".join(err.split())
    code, err = run_main(monkeypatch, capsys, ["llc", "rrr:3,2,3:1", "--settings", "fixed", "--epsilon", "2"])
    assert code == 2 and "epsilon must be between 0 and 1" in " ".join(err.split()) and "Traceback" not in err
    code, err = run_main(monkeypatch, capsys, ["llc", "rrr:3,2,3:1", "--settings", "guess"])
    assert code == 2 and "--settings must be 'auto' or 'fixed'" in " ".join(err.split())


def test_detect_writes_report_and_table(tmp_path):
    result = runner.invoke(
        app,
        [
            "detect",
            "--task",
            "backdoor-digits-corner",
            "--detector",
            "mahalanobis",
            "--detector",
            "que",
            "--poison-rate",
            "0.1",
            "--no-dictionaries",  # dictionary latents are tested in test_anomaly.py
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "detect.json").read_text())
    rows = record["tasks"]["backdoor-digits-corner"]["rows"]
    assert {r["detector"] for r in rows} == {"mahalanobis", "que"}
    assert {r["features"] for r in rows} == {"raw input", "activations", "attributions"}
    html = (tmp_path / "detect.html").read_text()
    assert "Summary: best detector" in html and html.index("Summary: best detector") < html.index("Task backdoor")
    # a corner trigger on 10% poisoned digits: the model's activations give the triggered inputs away
    best_acts = max(r["auroc"] for r in rows if r["features"] == "activations")
    assert best_acts > 0.95, best_acts
    for r in rows:
        assert 0 <= r["auroc"] <= 1 and 0 <= r["fpr@95tpr"] <= 1
    meta = check_record(
        tmp_path,
        "detect",
        "detect.json",
        "detect.html",
        task=["backdoor-digits-corner"],
        detector=["mahalanobis", "que"],
        poison_rate=0.1,
        seed=0,
        dictionaries=False,
    )
    assert meta["seeds"] == {"seed": 0}
    result = runner.invoke(app, ["detect", "--task", "backdoor-cifar-corner", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "unknown" in str(result.exception)


def test_sae_train_and_eval_from_a_store(tiny_llama_dir, tmp_path):
    store = tmp_path / "store"
    cache_tiny(tiny_llama_dir, store, ["model.layers.0"], tokens=4096, shard_tokens=1024)
    result = runner.invoke(
        app,
        [
            "sae",
            "train",
            "--store",
            str(store),
            "--site",
            "model.layers.0",
            "--k",
            "2",
            "--k",
            "4",
            "--width",
            "64",
            "--batch-size",
            "256",
            "--tokens",
            "2048",
            "--out",
            str(tmp_path / "sae"),
        ],
    )
    assert result.exit_code == 0, result.output
    folders = sorted(f for f in (tmp_path / "sae").iterdir() if f.is_dir())
    assert [f.name for f in folders] == ["topk-k2-w64", "topk-k4-w64"]
    meta = check_record(
        tmp_path / "sae",
        "sae train",
        "sae_train.json",
        "sae_train.html",
        k=[2, 4],
        width=[64],
        architecture="topk",
        max_norm_ratio=10.0,
    )
    assert list(meta["inputs"]) == [str(store)] and "manifest.json" in meta["inputs"][str(store)]
    trained = json.loads((tmp_path / "sae" / "sae_train.json").read_text())
    assert [r["steps"] for r in trained["rows"]] == [8, 8]
    # each folder records the schedule it ran (8 steps: 5% is 0.4, so 1 warm-up step; decay from step 6)
    schedule = {"steps": 8, "lr": 1e-3, "warmup_steps": 1, "decay_from_step": 6}
    assert trained["metadata"]["schedule"] == schedule
    assert json.loads((folders[0] / "cfg.json").read_text())["metadata"]["schedule"] == schedule
    result = runner.invoke(app, ["sae", "eval", *map(str, folders), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "eval" / "sae_eval.json").read_text())
    assert record["topk-k2-w64"]["l0"] <= 2 and record["topk-k4-w64"]["fvu"] < record["topk-k2-w64"]["fvu"]
    assert 0 <= record["topk-k4-w64"]["ce_loss_recovered"] <= 1.05
    check_record(tmp_path / "eval", "sae eval", "sae_eval.json", "sae_eval.html", max_tokens=16_384)
    for folder in folders:  # a browser over every latent, linked from the report
        browser = tmp_path / "eval" / "features" / folder.name
        assert record[folder.name]["features"] == f"features/{folder.name}/index.html"
        assert len(list((browser / "data" / "latents").glob("*.js"))) == 64 and (browser / "index.html").exists()
    assert 'href="features/topk-k4-w64/index.html#latent=' in (tmp_path / "eval" / "sae_eval.html").read_text()
    # dead fraction and L0, recomputed independently on the same held-out tokens
    import numpy as np

    from unweave.dictionaries import io
    from unweave.hf import load_model
    from unweave.sites import capture
    from unweave.text import TextConfig, token_rows

    model, tokenizer = load_model(str(tiny_llama_dir))
    # sae eval's held-out text: rows of the store's 32 tokens after the 4096 the store (and so the dictionary) saw
    rows = token_rows(TextConfig(), tokenizer, 32, max_tokens=4096 + 16_384)[4096 // 32 :]
    x = capture(model, "model.layers.0", rows[: 16_384 // 32], stop_early=True)["model.layers.0"].reshape(-1, 32)
    for folder in folders:
        sae = io.load(folder).eval()
        keep = x.norm(dim=1).numpy() <= sae.max_input_norm
        z = sae.encode(x).detach().numpy()[keep]
        fired = (z != 0).any(axis=0)
        assert abs(record[folder.name]["dead_fraction"] - (1 - fired.mean())) < 1e-12
        assert abs(record[folder.name]["l0"] - (z != 0).sum(1).mean()) < 1e-9
        assert np.isclose(
            record[folder.name]["fvu"],
            ((x.numpy()[keep] - sae(x)[0].detach().numpy()[keep]) ** 2).sum()
            / ((x.numpy()[keep] - x.numpy()[keep].mean(0)) ** 2).sum(),
            rtol=1e-5,
        )
    result = runner.invoke(app, ["sae", "train", "--store", str(tmp_path / "nothing"), "--site", "x"])
    assert result.exit_code != 0 and "not an activation store" in str(result.exception)


def test_sae_train_live_transcoders_and_eval(tiny_llama_dir, tmp_path):
    result = runner.invoke(
        app,
        [
            "sae",
            "train",
            "--live",
            "--model",
            str(tiny_llama_dir),
            "--site",
            "model.layers.1.mlp:input",
            "--target-site",
            "model.layers.1.mlp",
            "--k",
            "4",
            "--width",
            "64",
            "--batch-size",
            "128",
            "--tokens",
            "25600",
            "--text-tokens",
            "4096",
            "--out",
            str(tmp_path / "tc"),
        ],
    )
    assert result.exit_code == 0, result.output
    (folder,) = [f for f in (tmp_path / "tc").iterdir() if f.is_dir()]
    assert folder.name == "transcoder-topk-k4-w64" and not (tmp_path / "tc" / ".checkpoint").exists()
    check_record(
        tmp_path / "tc", "sae train", "sae_train.json", "sae_train.html", live=True, target_site="model.layers.1.mlp"
    )
    result = runner.invoke(app, ["sae", "eval", str(folder), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "eval" / "sae_eval.json").read_text())[folder.name]
    assert record["l0"] <= 4 and record["fvu"] < 1 and "ce_loss_recovered" in record
    # the transcoder's latents write to the MLP's output: their output tokens are read from there
    result = runner.invoke(app, ["features", str(folder), "--tokens", "2048", "--out", str(tmp_path / "features")])
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "features" / "features.json").read_text())
    assert found["kind"] == "transcoder" and found["output_site"] == "model.layers.1.mlp"
    assert found["tokens"] == 2048 and found["checked_latents"] > 0 and found["live_latents"] > 0
    check_record(tmp_path / "features", "features", "features.json", "features.html", tokens=2048)
    result = runner.invoke(app, ["features", str(folder), "--tokens", "16", "--out", str(tmp_path / "f2")])
    assert result.exit_code != 0 and "fewer than one row" in str(result.exception)
    result = runner.invoke(app, ["sae", "train", "--site", "model.layers.1"])
    assert result.exit_code != 0 and "--store DIR or --live" in str(result.exception)


def test_scrub_flags_cancellation_and_writes_report(tmp_path):
    result = runner.invoke(app, ["scrub", "cancellation", "--examples", "512", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "scrub.json").read_text())
    by_name = {h["hypothesis"]: h for h in record["hypotheses"]}
    assert by_name["A only (false)"]["changed_fraction"] > 0.3 and by_name["A and B (true)"]["changed_fraction"] == 0
    # known answers of the planted case: the true claim is exact, the false one recovers ~100% on average
    assert abs(by_name["A and B (true)"]["loss_recovered"] - 1) < 1e-3 and by_name["A and B (true)"]["kl"]["max"] < 1e-3
    assert by_name["A only (false)"]["loss_recovered"] > 0.95 and by_name["A only (false)"]["kl"]["median"] > 0.1
    assert record["examples"] == 512
    html = (tmp_path / "scrub.html").read_text().replace("&#x27;", "'")
    assert "'A only (false)' recovers" in html and "the average hides errors that cancel" in html
    assert "'A and B (true)' recovers" not in html
    meta = check_record(tmp_path, "scrub", "scrub.json", "scrub.html", target="cancellation", examples=512, seed=0)
    assert meta["inputs"] == {}  # the default modadd run is not read by this case


def test_scrub_runs_a_hypothesis_file(tmp_path, small_modadd, monkeypatch):
    from unweave.zoo import fourier
    from unweave.zoo.modadd import make_data

    cfg = small_modadd.config
    freqs = fourier.analyse(small_modadd.load(), make_data(cfg), cfg.p).key_freqs
    monkeypatch.setenv("UNWEAVE_MODADD_RUN", str(small_modadd.dir))
    example = Path(__file__).parent.parent / "examples" / "hypotheses" / "modadd_fourier.py"
    result = runner.invoke(app, ["scrub", str(example), "--examples", "256", "--pairs", "256", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads((tmp_path / "scrub.json").read_text())["hypotheses"]
    assert entry["hypothesis"] == f"fourier {freqs}"  # the example read the frequencies off the run
    assert entry["loss_recovered"] > 0.98 and entry["interchange"]["iia"] > 0.95
    assert str(example) in check_record(tmp_path, "scrub", "scrub.json", "scrub.html")["inputs"]


def test_scrub_bad_inputs(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("model = None\n")
    for args, message in (
        (["scrub", str(bad)], "must define `case`, or `model`, `inputs` and `hypotheses`"),
        (["scrub", "inductoin"], "unknown case 'inductoin'"),
        (["scrub", "modadd", "--modadd-run", str(tmp_path / "none")], "unweave train modadd"),
    ):
        code, err = run_main(monkeypatch, capsys, [*args, "--out", str(tmp_path)])
        assert code == 2 and message in " ".join(err.split()) and "Traceback" not in err, err


def test_runs_indexes_every_run_folder(tmp_path):
    runs = tmp_path / "runs"
    for args in (
        ["llc", "rrr:3,2,3:1", "--settings", "fixed", "--draws", "20", "--no-hessian", "--out", str(runs / "llc")],
        ["scrub", "cancellation", "--examples", "64", "--out", str(runs / "deep" / "scrub")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["runs", str(runs)])
    assert result.exit_code == 0, result.output
    rows = json.loads((runs / "runs.json").read_text())["runs"]
    assert sorted(r["command"] for r in rows) == ["llc", "scrub"]  # not the index itself
    by = {r["command"]: r for r in rows}
    assert by["scrub"]["href"] == "deep/scrub/scrub.html" and (runs / by["scrub"]["href"]).exists()
    record = json.loads((runs / "llc" / "record.json").read_text())
    assert by["llc"]["key figures"] == "; ".join(record["summary"]) and record["summary"][0].startswith("LLC ")
    html = (runs / "runs.html").read_text()
    assert '<table class="sortable">' in html and 'href="deep/scrub/scrub.html"' in html
    check_record(runs, "runs", "runs.json", "runs.html")
    result = runner.invoke(app, ["runs", str(runs), "--out", str(tmp_path / "again")])  # an index is not a run
    assert len(json.loads((tmp_path / "again" / "runs.json").read_text())["runs"]) == 2
    result = runner.invoke(app, ["runs", str(tmp_path / "missing")])
    assert result.exit_code != 0 and "is not a folder" in str(result.exception)


def test_the_demo_says_why_the_llc_falls_from_its_own_numbers():
    from types import SimpleNamespace

    from scipy.stats import spearmanr

    from unweave.demo import why_llc_falls

    llc = [5.0, 30.0, 22.0, 15.0, 16.0]
    norms = [40.0, 45.0, 38.0, 30.0, 29.0]
    points = [(100 * (i + 1), SimpleNamespace(llc_mean=v), "") for i, v in enumerate(llc)]
    measures = [
        {"step": s, "weight_norm": w, "key_norm_fraction": f}
        for (s, _, _), w, f in zip(points, norms, [0.2, 0.3, 0.6, 0.9, 0.95])
    ]
    history = [{"step": s, "train_loss": 1e-3, "test_loss": t} for (s, _, _), t in zip(points, [4, 5, 1, 0.1, 0.01])]
    text = why_llc_falls(points, measures, history)
    rho = spearmanr(llc[1:], norms[1:]).statistic
    assert "from its peak, 30 at step 200, to 16 at step 500" in text
    assert "from 45 to 29" in text and "from 30.0% to 95.0%" in text and f"{rho:.2f}" in text
    assert "Reading:" in text  # the norm fell and the key frequencies' share rose
    measures[-1]["key_norm_fraction"] = 0.1  # the numbers no longer carry the reading
    assert "Reading:" not in why_llc_falls(points, measures, history)
    assert "Caution" not in text
    points[-1] = (500, points[-1][1], "R-hat 1.3")
    assert "Caution: the chains at step 500 are not healthy" in why_llc_falls(points, measures, history)
    rising = [(s, SimpleNamespace(llc_mean=float(s)), "") for s, _, _ in points]
    assert "does not fall" in why_llc_falls(rising, measures, history)
