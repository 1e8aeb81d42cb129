import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unweave.cli import app, main
from unweave.store import ActivationStore

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["demo"], ["train"], ["train", "modadd"], ["cache"], ["llc"], ["detect"],
                                     ["sae"], ["sae", "train"], ["sae", "eval"], ["scrub"]])
def test_every_command_explains_itself(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    if command and command not in (["train"], ["sae"]):
        assert re.search(r"Examples?: unweave", result.output)


def test_train_modadd(tmp_path):
    result = runner.invoke(app, ["train", "modadd", "--out", str(tmp_path), "--p", "11", "--steps", "20",
                                 "--checkpoint-every", "10"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000010.safetensors",
                                                                           "step_000020.safetensors"]


def run_main(monkeypatch, capsys, args):
    monkeypatch.setattr(sys, "argv", ["unweave", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


def test_user_errors_print_one_line_not_a_traceback(monkeypatch, capsys, tiny_llama_dir, tmp_path):
    code, err = run_main(monkeypatch, capsys, ["train", "modadd", "--out", str(tmp_path), "--p", "12"])
    assert code == 2 and "odd prime" in err and "Traceback" not in err
    code, err = run_main(monkeypatch, capsys, ["cache", "--model", str(tiny_llama_dir), "--site", "model.layer.1",
                                               "--out", str(tmp_path / "c"), "--tokens", "200", "--ctx-len", "16"])
    assert code == 2 and "closest valid sites: model.layers.1" in " ".join(err.split())


def test_cache_writes_a_store(tiny_llama_dir, tmp_path):
    result = runner.invoke(app, ["cache", "--model", str(tiny_llama_dir), "--site", "model.layers.0",
                                 "--site", "model.layers.1.mlp:input", "--out", str(tmp_path), "--tokens", "640",
                                 "--ctx-len", "32", "--shard-tokens", "256"])
    assert result.exit_code == 0, result.output
    store = ActivationStore(tmp_path)
    assert store.complete and store.n_tokens == 640 and len(store.shards) == 3
    assert store.width("model.layers.0") == 32


def test_llc_on_a_zoo_model_and_a_run(tmp_path, small_modadd):
    result = runner.invoke(app, ["llc", "rrr:3,2,3:1", "--nbeta", "1000", "--draws", "30", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "llc.json").read_text())
    assert record["true_llc"] == 3.5 and record["hessian"]["n_params"] == 12
    assert "LLC" in (tmp_path / "llc.html").read_text()
    result = runner.invoke(app, ["llc", str(small_modadd.dir), "--checkpoint", "all", "--chains", "2", "--draws", "10",
                                 "--batch-size", "128", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert [p["step"] for p in json.loads((tmp_path / "run" / "llc.json").read_text())["llc"]] == [500, 1000, 1500]


def test_llc_bad_target_and_subset(monkeypatch, capsys, tmp_path):
    code, err = run_main(monkeypatch, capsys, ["llc", "mlp:3", "--out", str(tmp_path)])
    assert code == 2 and "neither a run directory" in err
    code, err = run_main(monkeypatch, capsys, ["llc", "rrr:3,2,3:1", "--params", "5", "--out", str(tmp_path)])
    assert code == 2 and "matches no parameter" in " ".join(err.split())


def test_detect_writes_report_and_table(tmp_path):
    result = runner.invoke(app, ["detect", "--task", "backdoor-digits-corner", "--detector", "mahalanobis",
                                 "--detector", "que", "--poison-rate", "0.1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "detect.json").read_text())
    rows = record["tasks"]["backdoor-digits-corner"]["rows"]
    assert {r["detector"] for r in rows} == {"mahalanobis", "que", "dictionary latents"}
    assert "Summary: best detector" in (tmp_path / "detect.html").read_text()
    result = runner.invoke(app, ["detect", "--task", "backdoor-cifar-corner", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "unknown" in str(result.exception)


def test_sae_train_and_eval_from_a_store(tiny_llama_dir, tmp_path):
    store = tmp_path / "store"
    result = runner.invoke(app, ["cache", "--model", str(tiny_llama_dir), "--site", "model.layers.0",
                                 "--out", str(store), "--tokens", "4096", "--ctx-len", "32", "--shard-tokens", "1024"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["sae", "train", "--store", str(store), "--site", "model.layers.0", "--k", "2",
                                 "--k", "4", "--width", "64", "--batch-size", "256", "--tokens", "2048",
                                 "--out", str(tmp_path / "sae")])
    assert result.exit_code == 0, result.output
    folders = sorted((tmp_path / "sae").iterdir())
    assert [f.name for f in folders] == ["topk-k2-w64", "topk-k4-w64"]
    result = runner.invoke(app, ["sae", "eval", *map(str, folders), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "eval" / "sae_eval.json").read_text())
    assert record["topk-k2-w64"]["l0"] <= 2 and record["topk-k4-w64"]["fvu"] < record["topk-k2-w64"]["fvu"]
    assert 0 <= record["topk-k4-w64"]["dead_fraction"] <= 1 and "ce_loss_recovered" in record["topk-k4-w64"]
    result = runner.invoke(app, ["sae", "train", "--store", str(tmp_path / "nothing"), "--site", "x"])
    assert result.exit_code != 0 and "not an activation store" in str(result.exception)


def test_sae_train_live_transcoders_and_eval(tiny_llama_dir, tmp_path):
    result = runner.invoke(app, ["sae", "train", "--live", "--model", str(tiny_llama_dir), "--site",
                                 "model.layers.1.mlp:input", "--target-site", "model.layers.1.mlp", "--k", "4",
                                 "--width", "64", "--batch-size", "128", "--tokens", "25600", "--text-tokens", "4096",
                                 "--out", str(tmp_path / "tc")])
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "tc").iterdir()
    assert folder.name == "transcoder-topk-k4-w64" and not (tmp_path / "tc" / ".checkpoint" / "checkpoint.pt").exists()
    result = runner.invoke(app, ["sae", "eval", str(folder), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "eval" / "sae_eval.json").read_text())[folder.name]
    assert record["l0"] <= 4 and record["fvu"] < 1 and "ce_loss_recovered" in record
    result = runner.invoke(app, ["sae", "train", "--site", "model.layers.1"])
    assert result.exit_code != 0 and "--store DIR or --live" in str(result.exception)


def test_scrub_flags_cancellation_and_writes_report(tmp_path):
    result = runner.invoke(app, ["scrub", "cancellation", "--examples", "512", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "scrub.json").read_text())
    by_name = {h["hypothesis"]: h for h in record["hypotheses"]}
    assert by_name["A only (false)"]["changed_fraction"] > 0.3 and by_name["A and B (true)"]["changed_fraction"] == 0
    html = (tmp_path / "scrub.html").read_text().replace("&#x27;", "'")
    assert "'A only (false)' recovers" in html and "the average hides errors that cancel" in html
    assert "'A and B (true)' recovers" not in html


def test_scrub_runs_a_hypothesis_file(tmp_path, small_modadd, monkeypatch):
    from unweave.zoo import fourier
    from unweave.zoo.modadd import make_data

    cfg = small_modadd.config
    freqs = fourier.analyse(small_modadd.load(), make_data(cfg), cfg.p).key_freqs
    monkeypatch.setenv("UNWEAVE_MODADD_RUN", str(small_modadd.dir))
    monkeypatch.setenv("FREQS", ",".join(map(str, freqs)))
    example = Path(__file__).parent.parent / "examples" / "hypotheses" / "modadd_fourier.py"
    result = runner.invoke(app, ["scrub", str(example), "--examples", "256", "--pairs", "256", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads((tmp_path / "scrub.json").read_text())["hypotheses"]
    assert entry["loss_recovered"] > 0.98 and entry["interchange"]["iia"] > 0.95


def test_scrub_bad_inputs(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("model = None\n")
    for args, message in ((["scrub", str(bad)], "must define `case`, or `model`, `inputs` and `hypotheses`"),
                          (["scrub", "inductoin"], "unknown case 'inductoin'"),
                          (["scrub", "modadd", "--modadd-run", str(tmp_path / "none")], "unweave train modadd")):
        code, err = run_main(monkeypatch, capsys, [*args, "--out", str(tmp_path)])
        assert code == 2 and message in " ".join(err.split()) and "Traceback" not in err, err
