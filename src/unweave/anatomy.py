"""Where each Hugging Face causal-LM architecture keeps its parts, as unweave site names.

One small table keyed by `config.model_type` says where the layers, the attention output
projection, the MLP and the final norm live; sizes come from the config, and the
embedding and unembedding are found through `get_input_embeddings` /
`get_output_embeddings` (their names move between transformers versions, e.g. GPT-NeoX's
`embed_out` became `lm_head`).

    a = anatomy(model)
    a.block(3)      # 'model.layers.3': the residual stream after layer 3
    a.attn_out(3)   # 'model.layers.3.self_attn.o_proj:input': heads are slices of d_head
    a.mlp_in(3)     # 'model.layers.3.mlp:input'

Everything else in unweave works by module name alone (`unweave sites MODEL` lists them);
the table is only needed by tools that must know which module is which.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from unweave.sites import resolve


class AnatomyError(ValueError):
    """A model whose architecture is not in the table, or whose modules do not match it."""


@dataclass(frozen=True)
class Layout:
    layers: str  # the ModuleList of decoder layers
    attn_out: str  # inside a layer: the attention output projection (its input holds the heads)
    mlp: str  # inside a layer: the MLP
    final_norm: str  # the norm before the unembedding


_LLAMA = Layout("model.layers", "self_attn.o_proj", "mlp", "model.norm")

LAYOUTS: dict[str, Layout] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
    "gemma3_text": _LLAMA,
    "phi3": _LLAMA,
    "gpt2": Layout("transformer.h", "attn.c_proj", "mlp", "transformer.ln_f"),
    "gpt_neox": Layout("gpt_neox.layers", "attention.dense", "mlp", "gpt_neox.final_layer_norm"),
}


@dataclass(frozen=True)
class Anatomy:
    model_type: str
    n_layers: int
    n_heads: int
    d_head: int
    d_model: int
    layout: Layout
    embed: str  # the token embedding module (its output: embeddings, before any positions)
    unembed: str  # the output projection to logits

    @property
    def final_norm(self) -> str:
        return self.layout.final_norm

    def _layer(self, i: int) -> int:
        if not -self.n_layers <= i < self.n_layers:
            raise IndexError(f"layer {i} out of range: this {self.model_type} model has {self.n_layers} layers")
        return i % self.n_layers  # negative counts from the end, as in Python

    def block(self, i: int) -> str:
        """The residual stream after layer i (the layer's output)."""
        return f"{self.layout.layers}.{self._layer(i)}"

    def attn_out(self, i: int) -> str:
        """The input of layer i's attention output projection: (batch, pos, n_heads * d_head),
        head h at columns [h * d_head, (h + 1) * d_head)."""
        return f"{self.block(i)}.{self.layout.attn_out}:input"

    def mlp(self, i: int) -> str:
        """Layer i's MLP module (its output: what the MLP adds to the residual stream, before
        any post-MLP norm)."""
        return f"{self.block(i)}.{self.layout.mlp}"

    def mlp_in(self, i: int) -> str:
        return f"{self.mlp(i)}:input"

    def head_columns(self, head: int) -> range:
        """Columns of `attn_out(i)` that belong to one head."""
        if not 0 <= head < self.n_heads:
            raise IndexError(f"head {head} out of range: {self.n_heads} heads per layer")
        return range(head * self.d_head, (head + 1) * self.d_head)

    def templates(self) -> dict[str, str]:
        """Every named site, with `{i}` for the layer: what `unweave sites` records."""
        at = f"{self.layout.layers}.{{i}}"
        return {
            "embed": self.embed,
            "block": at,
            "attn_out": f"{at}.{self.layout.attn_out}:input",
            "mlp": f"{at}.{self.layout.mlp}",
            "mlp_in": f"{at}.{self.layout.mlp}:input",
            "final_norm": self.final_norm,
            "unembed": self.unembed,
        }

    def to_dict(self) -> dict:
        sizes = {k: getattr(self, k) for k in ("model_type", "n_layers", "n_heads", "d_head", "d_model")}
        return {**sizes, "sites": self.templates()}


def _module_name(model: nn.Module, module: nn.Module | None, what: str) -> str:
    for name, m in model.named_modules():
        if m is module and name:
            return name
    raise AnatomyError(f"{type(model).__name__} has no {what} module among its submodules")


def anatomy(model: nn.Module) -> Anatomy:
    """The named parts of a Hugging Face causal LM (an `AutoModelForCausalLM` model)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in LAYOUTS:
        raise AnatomyError(
            f"unweave does not know where a {model_type!r} model ({type(model).__name__}) keeps its layers; "
            f"known model types: {', '.join(LAYOUTS)}. Tools that take sites by module name (capture, patch, "
            "unweave cache, unweave sae) still work: `unweave sites MODEL` lists them. To add this architecture, "
            "add its layout to unweave.anatomy.LAYOUTS."
        )
    n_heads, d_model = config.num_attention_heads, config.hidden_size
    # Gemma (and Qwen3) set head_dim explicitly, and n_heads * head_dim need not be d_model
    d_head = getattr(config, "head_dim", None) or d_model // n_heads
    found = Anatomy(
        model_type,
        config.num_hidden_layers,
        n_heads,
        d_head,
        d_model,
        LAYOUTS[model_type],
        _module_name(model, model.get_input_embeddings(), "input embedding"),
        _module_name(model, model.get_output_embeddings(), "output embedding (unembedding)"),
    )
    _check(model, found)
    return found


def _check(model: nn.Module, a: Anatomy) -> None:
    """Every template resolves on this model (a base model without the LM head, or a
    renamed module in a new transformers version, is an error here, not mid-analysis)."""
    for site in (a.block(0), a.block(-1), a.attn_out(0), a.mlp_in(0), a.final_norm):
        try:
            resolve(model, site)
        except ValueError as err:
            raise AnatomyError(
                f"this {a.model_type!r} model does not have the layout unweave expects ({err}); "
                "load it with AutoModelForCausalLM (unweave.hf.load_model)"
            ) from None
