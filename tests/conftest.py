import pytest
import torch

from unweave.allocator import keep_freed_memory
from unweave.zoo.modadd import ModAddConfig, train

keep_freed_memory()  # as the `unweave` command does at start: the tests run its code under the same allocator

# A small modular-addition model that groks in ~15 s on 2 cores (the demo uses p=59).
SMALL_MODADD = ModAddConfig(p=31, frac_train=0.5, lr=1e-2, d_model=64, d_mlp=256, steps=1500, checkpoint_every=500)


@pytest.fixture(scope="session")
def small_modadd(tmp_path_factory):
    return train(SMALL_MODADD, tmp_path_factory.mktemp("modadd"))


@pytest.fixture(scope="session")
def induction_model():
    """The induction toy at its default size (about 30 s on 2 cores), shared by every test."""
    from unweave.zoo.induction import InductionConfig
    from unweave.zoo.induction import train as train_induction

    return train_induction(InductionConfig())


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A random two-layer Llama saved as a local Hugging Face directory, with a tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    words = ["<unk>", "the", "king", "queen", "and", "to", "of", "a", "my", "lord"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(path)
    cfg = LlamaConfig(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A factory: tiny_model_dir("gpt2") is a folder with a tiny random model of that
    architecture and a tokenizer (tests/tiny_models.py), built once per session."""
    from tiny_models import build_tiny

    built = {}

    def get(model_type: str):
        if model_type not in built:
            built[model_type] = build_tiny(model_type, tmp_path_factory.mktemp(f"tiny-{model_type}"))
        return built[model_type]

    return get
