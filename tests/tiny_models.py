"""Tiny random Hugging Face causal LMs of several architectures, built offline from configs.

`build_tiny(model_type, folder)` writes a seeded model (same weights every time) and a
byte-level BPE tokenizer trained on a few hundred made-up words into `folder`, which
`unweave.hf.load_model(str(folder))` then loads like any local model folder.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

VOCAB = 384  # the model's; the tokenizer has fewer, as real models pad their vocab (and
# transformers may add a token of its own: AutoTokenizer loads Qwen2's with <|endoftext|>)
TOKENIZER_VOCAB = 360
ARCHITECTURES = ["llama", "gpt2", "gpt_neox", "qwen2", "gemma", "gemma2"]
# built in memory only, to check the anatomy table's other rows
EXTRA_ARCHITECTURES = ["mistral", "qwen3", "gemma3_text", "phi3"]
SPECIAL = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2


def _corpus(n_words: int = 600, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ren", "tha", "su", "vor", "el", "qui", "dan", "or", "ith", "be", "na"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(n_words)]
    return [" ".join(words[i : i + 12]) for i in range(0, n_words, 12)]


def tokenizer(vocab: int = TOKENIZER_VOCAB):
    """A byte-level BPE tokenizer with <unk>, <s> (BOS) and </s> (EOS), trained offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def tiny_config(model_type: str, vocab: int = VOCAB):
    """2 layers, d_model 32, 4 heads; Gemma-style configs get head_dim 16 (so n_heads *
    d_head = 64 differs from d_model, as in real Gemma models)."""
    from transformers import AutoConfig

    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if model_type == "gpt2":
        return AutoConfig.for_model("gpt2", vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256, **ids)
    common = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        **ids,
    )
    if model_type == "gpt_neox":
        return AutoConfig.for_model("gpt_neox", **common)
    if model_type in ("gemma", "gemma2", "gemma3_text", "qwen3"):
        common |= {"head_dim": 16}
    return AutoConfig.for_model(model_type, num_key_value_heads=2, **common)


def tiny_model(model_type: str, seed: int = 0) -> torch.nn.Module:
    """The seeded random model, in memory, in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(model_type)).eval()


def build_tiny(model_type: str, folder: Path, seed: int = 0) -> Path:
    """Write the tiny model and its tokenizer to `folder`; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer().save_pretrained(folder)
    tiny_model(model_type, seed).save_pretrained(folder)
    return folder


def word_text(path: Path, words: int = 3000) -> Path:
    """A text file of random words from a 14-word vocabulary (seeded): training text for a tiny model."""
    vocabulary = "the cat sat on a mat while a dog ran to the park and back again".split()
    drawn = torch.randint(len(vocabulary), (words,), generator=torch.Generator().manual_seed(0))
    path.write_text(" ".join(vocabulary[int(i)] for i in drawn))
    return path
