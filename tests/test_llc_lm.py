"""The LLC of a language model's parts (`unweave llc --model`): the loss, the units, a closed
form (a regular block trained to its minimum has lambda = d/2), the command and its errors."""

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from unweave.anatomy import anatomy
from unweave.cli import app, main
from unweave.hf import load_model
from unweave.sites import capture, capturing
from unweave.slt.hessian import hessian_summary
from unweave.slt.language import head_slices, next_token_loss, text_data, units
from unweave.slt.restrict import Restricted
from unweave.text import TextConfig

runner = CliRunner()


def test_next_token_loss_is_transformers_own_loss(tiny_llama_dir):
    model, _ = load_model(str(tiny_llama_dir))
    x = torch.randint(0, 10, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = next_token_loss(model(x), x)
        theirs = model(x, labels=x).loss
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_the_control_variate_is_each_rows_loss_computed_once(tiny_llama_dir):
    """Minibatch SGLD needs L_b(w*) for every chain's batch: the next-token loss says it is a
    mean over rows, so every row's loss at w* is computed in one pass and a batch's is the mean
    of its rows, equal to a forward pass on that batch."""
    from torch.utils.data import DataLoader, TensorDataset

    from unweave.slt.sgld import ChainBatches, LossAtOptimum

    model, _ = load_model(str(tiny_llama_dir))
    rows = torch.randint(0, 10, (12, 9), generator=torch.Generator().manual_seed(2))
    loader = DataLoader(TensorDataset(rows, rows), batch_size=4, shuffle=True)
    at_optimum = LossAtOptimum(model, next_token_loss, loader)
    assert at_optimum.row_losses is not None and at_optimum.row_losses.shape == (12,)
    batches = [ChainBatches(loader, seed) for seed in (0, 1)]
    drawn = [next(b) for b in batches]
    x = torch.stack([d[0] for d in drawn])
    with torch.no_grad():
        direct = torch.stack([model(x[c], labels=x[c]).loss for c in range(2)])
    assert torch.allclose(at_optimum(x, x, batches), direct, atol=1e-6)


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gpt_neox", "qwen2"])
def test_a_heads_slices_change_only_that_heads_output(tiny_model_dir, model_type):
    """Perturb head h's slices: at the input of the layer's output projection (where the
    heads sit side by side, `anatomy.attn_out`) only h's columns move, and those of heads
    sharing its key-value group; with the slices as they are the model is unchanged."""
    model, _ = load_model(str(tiny_model_dir(model_type)))
    parts = anatomy(model)
    layer, head = 1, 2
    x = torch.randint(3, 300, (2, 10), generator=torch.Generator().manual_seed(1))
    site = parts.attn_out(layer)
    restricted = Restricted(model, head_slices(model, parts, layer, head))
    n_kv = getattr(model.config, "num_key_value_heads", None) or parts.n_heads
    group = [h for h in range(parts.n_heads) if h // (parts.n_heads // n_kv) == head // (parts.n_heads // n_kv)]
    own_params = 2 * parts.d_head * parts.d_model + 2 * parts.d_head * parts.d_model  # q rows, o cols; k, v rows
    biases = sum(s.stop - s.start for s in restricted.slices if s.param.endswith("bias"))
    assert sum(p.numel() for p in restricted.parameters()) == own_params + biases
    with torch.no_grad():
        before = capture(model, site, x)[site]
        assert torch.equal(restricted(x).logits, model(x).logits)
        for p in restricted.pieces:
            p.add_(torch.randn_like(p))
        with capturing(model, [site]) as acts:  # hooks on the wrapped model fire inside restricted(x)
            restricted(x)
        assert torch.equal(capture(model, site, x)[site], before)  # the wrapped model itself is untouched
    changed = {
        h: not torch.allclose(acts[site][..., parts.head_columns(h)], before[..., parts.head_columns(h)])
        for h in range(parts.n_heads)
    }
    assert changed[head]
    assert not any(changed[h] for h in range(parts.n_heads) if h not in group)


def _trained_norm(folder, out, tokens):
    """The tiny Llama with only its final norm trained to a minimum of the next-token loss."""
    model, tokenizer = load_model(str(folder))
    data = text_data(TextConfig(), tokenizer, tokens, 64, 8)
    x = torch.cat([b[0] for b in data.loader])
    for p in model.parameters():
        p.requires_grad_(False)
    gains = model.model.norm.weight
    gains.requires_grad_(True)
    opt = torch.optim.LBFGS([gains], max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = next_token_loss(model(x), x)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    for p in model.parameters():
        p.requires_grad_(True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model, data


def test_a_regular_block_at_its_minimum_has_half_its_size(tiny_model_dir, tmp_path):
    """The final norm's 32 gains, trained to a minimum with everything else fixed: the Hessian
    there has full rank (checked), so lambda = d/2 = 16 exactly. Full-batch SGLD through the
    command (n counted in tokens, the loss on the text) recovers it."""
    model, data = _trained_norm(tiny_model_dir("llama"), tmp_path / "lm", tokens=1024)
    h = hessian_summary(model, next_token_loss, data.loader, params="model.norm")
    assert h.n_params == 32 and h.near_zero == 0
    result = runner.invoke(
        app,
        [
            "llc",
            "--model",
            str(tmp_path / "lm"),
            "--params",
            "model.norm",
            "--tokens",
            "1024",
            "--batch-size",
            str(data.rows),
            "--settings",
            "fixed",
            "--epsilon",
            "0.5",
            "--localization",
            "0.0001",
            "--draws",
            "600",
            "--chains",
            "4",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run" / "llc.json").read_text())
    (unit,) = record["units"]
    assert record["n"] == data.n == data.rows * 63
    assert unit["parameters"] == 32
    assert abs(unit["LLC"] - 16) / 16 < 0.1, unit


@pytest.mark.slow
def test_the_rule_recovers_a_regular_block_with_minibatches(tiny_model_dir, tmp_path):
    """The same closed form through the rule with minibatches of 8 rows (the gradient-noise cap
    on epsilon at work; without it the estimate grows with n*beta). About 20 minutes on 2 cores."""
    _trained_norm(tiny_model_dir("llama"), tmp_path / "lm", tokens=2048)
    args = ["llc", "--model", str(tmp_path / "lm"), "--params", "model.norm", "--tokens", "2048"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    (unit,) = json.loads((tmp_path / "run" / "llc.json").read_text())["units"]
    assert unit["healthy"] and abs(unit["LLC"] - 16) / 16 < 0.1, unit


def test_per_head_and_per_layer_units(tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir("llama")))
    layers = units(model, "layer", None)
    assert [u.name for u in layers] == ["L0", "L1"]
    assert layers[1].n_params == sum(p.numel() for n, p in model.named_parameters() if n.startswith("model.layers.1."))
    heads = units(model, "head", "model.layers.1")
    assert [u.name for u in heads] == ["L1H0", "L1H1", "L1H2", "L1H3"]
    assert all(u.n_params == 4 * 8 * 32 for u in heads)  # q, k, v rows and o columns: 8 x 32 each


def test_llc_per_head_on_a_random_model_marks_induction_heads_and_says_it_is_not_a_minimum(tiny_model_dir, tmp_path):
    folder = tiny_model_dir("llama")
    args = ["llc", "--model", str(folder), "--per", "head", "--params", "model.layers.1", "--tokens", "1024"]
    args += ["--settings", "fixed", "--epsilon", "1e-3", "--draws", "60", "--chains", "2", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "llc.json").read_text())
    assert [u["unit"] for u in record["units"]] == ["L1H0", "L1H1", "L1H2", "L1H3"]
    assert len(record["induction_heads"]) == 4  # scrub's rule: half the heads of a model this small
    marked = {u["unit"] for u in record["units"] if u["induction head"]}
    assert marked == set(record["induction_heads"]) & {u["unit"] for u in record["units"]}
    # a random model is not at a minimum: the chains find lower loss, and the run says so
    assert any("not a local minimum" in u["why not"] for u in record["units"])
    html = (tmp_path / "llc.html").read_text()
    assert "LLC per head" in html and "induction" in html


def _error(monkeypatch, capsys, args):
    monkeypatch.setattr(sys, "argv", ["unweave", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 2 and "Traceback" not in err
    return err


def test_bad_input_is_one_line(monkeypatch, capsys, tiny_llama_dir, tmp_path):
    model = ["llc", "--model", str(tiny_llama_dir), "--out", str(tmp_path)]
    assert "matches no parameter" in _error(monkeypatch, capsys, [*model, "--params", "model.nothing"])
    err = _error(monkeypatch, capsys, [*model, "--tokens", "128", "--ctx-len", "64"])
    assert "fewer than one batch of --batch-size 8 rows" in err
    assert "names no decoder layer" in _error(monkeypatch, capsys, [*model, "--per", "layer", "--params", "lm_head"])
    assert "not both" in _error(monkeypatch, capsys, ["llc", "rrr:3,2,3:1", "--model", str(tiny_llama_dir)])
    assert "add --model" in _error(monkeypatch, capsys, ["llc", "rrr:3,2,3:1", "--per", "head"])
    broken, tokenizer = load_model(str(tiny_llama_dir))
    with torch.no_grad():
        broken.model.norm.weight[0] = float("nan")
    broken.save_pretrained(tmp_path / "nan")
    tokenizer.save_pretrained(tmp_path / "nan")
    err = _error(monkeypatch, capsys, ["llc", "--model", str(tmp_path / "nan"), "--out", str(tmp_path / "r")])
    assert "loss at the trained weights is nan" in err
