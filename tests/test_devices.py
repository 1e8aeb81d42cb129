"""--device and --dtype: resolved at the boundary, on every command that runs a model, with
one-line errors; data moved to the model's device by the library."""

import pytest
import torch
from typer.testing import CliRunner

from unweave.cli import COMMANDS, app, main
from unweave.devices import DeviceConfig, DeviceError, loader_on, resolve_device, to_device

runner = CliRunner()
MODEL_COMMANDS = ["demo", "modadd", "cache", "llc", "detect", "scrub", "train", "eval", "sites"]


def test_auto_is_the_gpu_when_there_is_one_else_the_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_a_gpu_is_a_one_line_error(monkeypatch, capsys):
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        DeviceConfig("cuda")
    monkeypatch.setattr("sys.argv", ["unweave", "llc", "rrr:3,2,3:1", "--device", "cuda"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err and "--device cpu" in err and "Traceback" not in err


@pytest.mark.parametrize("bad, message", [("mps", "cpu or cuda"), ("gpu0", "not a device")])
def test_unknown_devices_and_dtypes_are_errors(bad, message):
    with pytest.raises(DeviceError, match=message):
        resolve_device(bad)
    with pytest.raises(DeviceError, match="--dtype 'half'"):
        DeviceConfig("cpu", "half")


def test_every_command_that_runs_a_model_takes_device_and_dtype():
    names = {row[1] for row in COMMANDS}
    assert set(MODEL_COMMANDS) <= names
    for group, name, *_ in COMMANDS:
        if name not in MODEL_COMMANDS:
            continue
        args = [name, "--help"] if group is app else [_group_name(group), name, "--help"]
        out = runner.invoke(app, args, terminal_width=200).output
        assert "--device" in out and "--dtype" in out, (name, out[-500:])


def _group_name(group) -> str:
    return group.info.name or next(g.name for g in app.registered_groups if g.typer_instance is group)


def test_loader_on_moves_and_casts_a_tensor_loader_without_changing_its_batches():
    from torch.utils.data import DataLoader, TensorDataset

    x, y = torch.randn(10, 3), torch.arange(10)
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False)
    moved = loader_on(loader, "cpu", torch.float64)
    batches = list(moved)
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), x.double())
    assert torch.equal(torch.cat([b[1] for b in batches]), y)  # integer labels keep their dtype
    assert to_device({"a": (x, 3)}, "cpu", torch.float64)["a"][0].dtype == torch.float64


def test_llc_runs_in_float64(tmp_path):
    result = runner.invoke(
        app,
        ["llc", "rrr:3,2,3:1", "--settings", "fixed", "--epsilon", "3e-5", "--nbeta", "1000", "--burn-in", "5"]
        + ["--draws", "20", "--chains", "2", "--dtype", "float64", "--device", "cpu"]
        + ["--no-hessian", "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    import json

    record = json.loads((tmp_path / "record.json").read_text())
    assert record["config"]["device"] == {"device": "cpu", "dtype": "float64"}
    assert record["device"].startswith("cpu")
