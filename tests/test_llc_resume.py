"""An interrupted `unweave llc` loses nothing: started again with the same settings it replays the
SGLD runs it finished (OUT/estimates) and gives the answer an uninterrupted run gives."""

import json

import pytest
from typer.testing import CliRunner

from unweave.cli import app
from unweave.slt import saved
from unweave.slt.sgld import LLCError, SGLDConfig
from unweave.slt.targets import resolve

runner = CliRunner()
SAMPLE = saved.estimate_llc
QUICK_RULE = ["--first-steps", "200", "--max-steps", "800", "--pilot-steps", "100", "--chains", "4"]


class Interrupt(Exception):
    pass


def count_runs(monkeypatch, stop_after: int | None = None) -> list:
    """Count the SGLD runs actually sampled; with `stop_after`, interrupt the job at the next one
    (as a kill would: the finished runs are on disk, the rest are not)."""
    calls = []

    def counted(*args, **kwargs):
        if stop_after is not None and len(calls) >= stop_after:
            raise Interrupt
        calls.append(1)
        return SAMPLE(*args, **kwargs)

    monkeypatch.setattr(saved, "estimate_llc", counted)
    return calls


def llc_json(folder):
    return json.loads((folder / "llc.json").read_text())


def test_the_rule_resumes_where_it_was_interrupted_and_gives_the_same_answer(monkeypatch, tmp_path):
    args = ["llc", "rrr:3,2,3:1", "--no-hessian", *QUICK_RULE]
    whole = count_runs(monkeypatch)
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "whole")]).exit_code == 0
    total = len(whole)
    assert total >= 4  # pilots and full runs on at least two rungs

    count_runs(monkeypatch, stop_after=3)
    interrupted = runner.invoke(app, [*args, "--out", str(tmp_path / "cut")])
    assert isinstance(interrupted.exception, Interrupt)
    assert not (tmp_path / "cut" / "llc.json").exists()
    resumed = count_runs(monkeypatch)
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "cut")])
    assert result.exit_code == 0, result.output
    assert len(resumed) == total - 3  # the three finished runs were replayed, not sampled
    a, b = llc_json(tmp_path / "whole"), llc_json(tmp_path / "cut")
    assert b["replayed_runs"] == 3 and a["replayed_runs"] == 0
    # the same answer, to float32 rounding (two uninterrupted runs differ at that level too)
    assert saved._same(a["auto"]["rungs"], b["auto"]["rungs"]) and saved._same(a["llc"], b["llc"])
    assert a["auto"]["chosen"]["steps"] == b["auto"]["chosen"]["steps"]
    assert (tmp_path / "cut" / "estimates" / "rule" / f"{total - 1:05d}.safetensors").exists()


def test_a_trajectory_resumes_per_checkpoint(monkeypatch, small_modadd, tmp_path):
    args = ["llc", str(small_modadd.dir), "--settings", "fixed", "--checkpoint", "all", "--chains", "2"]
    args += ["--draws", "10", "--batch-size", "128", "--no-hessian", "--out", str(tmp_path)]
    count_runs(monkeypatch, stop_after=2)
    assert isinstance(runner.invoke(app, args).exception, Interrupt)
    resumed = count_runs(monkeypatch)
    assert runner.invoke(app, args).exit_code == 0
    record = llc_json(tmp_path)
    assert len(resumed) == 1 and record["replayed_runs"] == 2
    assert [p["step"] for p in record["llc"]] == [500, 1000, 1500]
    fresh = count_runs(monkeypatch)
    assert runner.invoke(app, [*args[:-1], str(tmp_path / "fresh")]).exit_code == 0
    assert len(fresh) == 3 and saved._same(llc_json(tmp_path / "fresh")["llc"], record["llc"])


def test_a_language_model_resumes_per_head(monkeypatch, tiny_model_dir, tmp_path):
    args = ["llc", "--model", str(tiny_model_dir("llama")), "--per", "head", "--params", "model.layers.1"]
    args += ["--tokens", "512", "--settings", "fixed", "--epsilon", "1e-3", "--draws", "20", "--chains", "2"]
    args += ["--out", str(tmp_path)]
    count_runs(monkeypatch, stop_after=3)
    assert isinstance(runner.invoke(app, args).exception, Interrupt)
    assert sorted(p.name for p in (tmp_path / "estimates").iterdir()) == [
        "settings.json",
        "unit-L1H0",
        "unit-L1H1",
        "unit-L1H2",
    ]
    resumed = count_runs(monkeypatch)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(resumed) == 1 and llc_json(tmp_path)["replayed_runs"] == 3


def _target():
    return resolve("rrr:3,2,3:1", "final", None)


def test_a_replay_that_takes_another_path_drops_what_follows(tmp_path):
    t = _target()
    model = t.checkpoints[-1][1]
    first = SGLDConfig(epsilon=1e-3, nbeta=100, localization=10, draws=20, chains=2)
    runs = saved.SavedRuns(tmp_path, {"a": 1})
    replay = runs.scope("s")
    a = replay.estimate(model, t.loss_fn, t.loader, first)
    b = replay.estimate(model, t.loss_fn, t.loader, first)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["00000.safetensors", "00001.safetensors"]

    replay = saved.SavedRuns(tmp_path, {"a": 1}).scope("s")
    assert replay.estimate(model, t.loss_fn, t.loader, first) == a  # replayed, every field equal
    other = SGLDConfig(epsilon=5e-4, nbeta=100, localization=10, draws=20, chains=2)
    c = replay.estimate(model, t.loss_fn, t.loader, other)  # the second call now asks for other settings
    assert replay.runs.found == 1 and c.config["epsilon"] == 5e-4 and c != b
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["00000.safetensors", "00001.safetensors"]

    saved.SavedRuns(tmp_path, {"a": 2})  # other settings: the folder is cleared
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]


def test_a_run_that_failed_is_replayed_as_the_same_failure(tmp_path):
    t = _target()
    model = t.checkpoints[-1][1]
    wild = SGLDConfig(epsilon=0.9, nbeta=1e6, localization=0, draws=50, chains=2)
    replay = saved.SavedRuns(tmp_path, {}).scope("s")
    with pytest.raises(LLCError, match="every chain diverged") as first:
        replay.estimate(model, t.loss_fn, t.loader, wild)
    replay = saved.SavedRuns(tmp_path, {}).scope("s")
    with pytest.raises(LLCError) as second:
        replay.estimate(model, t.loss_fn, t.loader, wild)
    assert str(second.value) == str(first.value) and replay.runs.found == 1
