"""The LLC of a causal language model's parts: next-token loss on the user's text, and the
units it is measured on (one layer, or one attention head's weights).

The loss L_n is the mean next-token cross-entropy over n predicted tokens (every row of
`ctx_len` tokens predicts `ctx_len - 1`), so n counts tokens and n*beta defaults to n / ln n
in tokens. SGLD draws minibatches of rows, each chain in its own order.

A head's weights are its rows of the query projection, the rows of the key and value
projections of the key-value group it reads (shared with the other heads of that group
under grouped-query attention), and its columns of the output projection, biases included:
everything its QK and OV circuits are made of. Its LLC is measured with every other weight
held at w* (`restrict.Restricted`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from unweave.anatomy import Anatomy, anatomy
from unweave.slt.gradients import row_mean
from unweave.slt.restrict import Restricted, Slice
from unweave.slt.sgld import LLCError, parameter_count, select_parameters
from unweave.text import TextConfig, TextError, token_rows


def _next_token_row_losses(out: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Each row's mean cross-entropy of predicting tokens[:, 1:] from the logits at [:, :-1]."""
    logits = getattr(out, "logits", out)
    rows, length = tokens.shape
    losses = nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none"
    )
    return losses.view(rows, length - 1).mean(1)


# every row predicts the same number of tokens, so the mean over rows is the mean over tokens;
# saying it is a row mean lets minibatch SGLD compute each row's loss at w* once, not once per
# chain per step (a third of each step's time on SmolLM2)
next_token_loss = row_mean(_next_token_row_losses)


@dataclass
class TextData:
    loader: DataLoader  # (rows, rows) batches: the labels are the inputs, shifted inside the loss
    n: int  # predicted tokens
    rows: int
    ctx_len: int


def text_data(text: TextConfig, tokenizer: Any, tokens: int, ctx_len: int, batch_rows: int, seed: int = 0) -> TextData:
    """Rows of `ctx_len` tokens from `text`, batched `batch_rows` at a time in a shuffled order."""
    if ctx_len < 2:
        raise TextError(f"--ctx-len must be at least 2 (a row predicts ctx_len - 1 tokens), got {ctx_len}")
    rows = token_rows(text, tokenizer, ctx_len, max_tokens=tokens)
    if len(rows) < batch_rows:
        raise TextError(
            f"--text {text.text} gave {len(rows)} rows of --ctx-len {ctx_len} ({len(rows) * ctx_len} tokens), "
            f"fewer than one batch of --batch-size {batch_rows} rows; use --batch-size {len(rows)} or less, "
            "a smaller --ctx-len, more --tokens or more text"
        )
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(rows, rows), batch_size=batch_rows, shuffle=len(rows) > batch_rows, generator=gen)
    return TextData(loader, len(rows) * (ctx_len - 1), len(rows), ctx_len)


@dataclass
class Unit:
    """What one LLC is measured on: `model` with the parameters `params` free (None: all of
    `model`'s parameters, e.g. a `Restricted` head)."""

    name: str
    model: nn.Module
    params: list[str] | None
    layer: int | None = None
    head: int | None = None

    @property
    def n_params(self) -> int:
        return parameter_count(self.model, select_parameters(self.model, self.params))


def _prefixes(params: str | None) -> list[str] | None:
    return [p.strip() for p in params.split(",") if p.strip()] if params else None


def _layers_in(parts: Anatomy, prefixes: list[str] | None) -> list[int]:
    """The layers whose parameters fall under any of `prefixes` (all layers when None)."""
    if prefixes is None:
        return list(range(parts.n_layers))
    pattern = re.compile(re.escape(parts.layout.layers) + r"\.(\d+)(\.|$)")
    layers = set()
    for p in prefixes:
        m = pattern.match(p)
        if m:
            layers.add(int(m.group(1)))
        elif parts.layout.layers.startswith(p.rstrip(".")):  # e.g. "model": every layer
            layers.update(range(parts.n_layers))
    if not layers:
        raise LLCError(
            f"--params {','.join(prefixes)} names no decoder layer; per-layer and per-head LLCs take layers like "
            f"{parts.layout.layers}.0 (this model has {parts.n_layers}: {parts.layout.layers}.0 to "
            f"{parts.layout.layers}.{parts.n_layers - 1})"
        )
    return sorted(layers)


def units(model: nn.Module, per: str, params: str | None) -> list[Unit]:
    """per "none": one unit, the parameters under `params` (comma-separated prefixes; all when
    None); "layer": each decoder layer under `params`; "head": each head of those layers."""
    prefixes = _prefixes(params)
    if per == "none":
        select_parameters(model, prefixes)  # an unknown prefix fails here, listing the names
        return [Unit(params or "all parameters", model, prefixes)]
    parts = anatomy(model)
    layers = _layers_in(parts, prefixes)
    if per == "layer":
        return [Unit(f"L{i}", model, [parts.block(i)], layer=i) for i in layers]
    if per == "head":
        return [
            Unit(f"L{i}H{h}", Restricted(model, head_slices(model, parts, i, h)), None, layer=i, head=h)
            for i in layers
            for h in range(parts.n_heads)
        ]
    raise LLCError(f"--per must be none, layer or head, got {per!r}")


# where each architecture keeps a head's weights: (module under the layer, parameter) -> how
# the head's entries are laid out. "q"/"k"/"v": rows of a separate projection (k and v by
# key-value group); "o": columns of the output projection; fused layouts as their library writes them.
_SEPARATE = {"q_proj": "q", "k_proj": "kv", "v_proj": "kv", "o_proj": "o"}
HEAD_LAYOUTS = {
    **dict.fromkeys(["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"], ("self_attn", _SEPARATE)),
    "gpt2": ("attn", {"c_attn": "gpt2_qkv", "c_proj": "gpt2_o"}),
    "gpt_neox": ("attention", {"query_key_value": "neox_qkv", "dense": "o"}),
}


def head_slices(model: nn.Module, parts: Anatomy, layer: int, head: int) -> list[Slice]:
    """The slices of layer `layer`'s weights that belong to head `head` (see the module docstring)."""
    if parts.model_type not in HEAD_LAYOUTS:
        raise LLCError(
            f"per-head LLCs know where the heads' weights are in {', '.join(HEAD_LAYOUTS)} models, "
            f"not {parts.model_type!r}; use --per layer, or add the layout to unweave.slt.language.HEAD_LAYOUTS"
        )
    attn, modules = HEAD_LAYOUTS[parts.model_type]
    config = model.config
    dh, n_heads = parts.d_head, parts.n_heads
    group = head // (n_heads // (getattr(config, "num_key_value_heads", None) or n_heads))
    d = n_heads * dh
    own = (head * dh, (head + 1) * dh)
    spans = {
        "q": [(0, *own)],
        "kv": [(0, group * dh, (group + 1) * dh)],
        "o": [(1, *own)],
        "gpt2_qkv": [(1, k * d + own[0], k * d + own[1]) for k in range(3)],  # Conv1D: (in, out) weights
        "gpt2_o": [(0, *own)],
        "neox_qkv": [(0, head * 3 * dh, (head + 1) * 3 * dh)],  # per head: its q, k, v rows together
    }
    params = dict(model.named_parameters())
    out = []
    for module, kind in modules.items():
        prefix = f"{parts.block(layer)}.{attn}.{module}"
        for leaf in ("weight", "bias"):
            name = f"{prefix}.{leaf}"
            if name not in params:
                continue
            for dim, start, stop in spans[kind]:
                if leaf == "bias" and kind in ("o", "gpt2_o"):
                    continue  # the output projection's bias is not any head's
                out.append(Slice(name, 0 if leaf == "bias" else dim, start, stop))
    if not out:
        raise LLCError(f"found no attention weights under {parts.block(layer)}.{attn} in this {parts.model_type} model")
    return out


def induction_heads(model: nn.Module, tokenizer: Any) -> tuple[list[tuple[int, int]], torch.Tensor | None, str]:
    """The heads `unweave scrub` calls induction heads on this model (same inputs, same ranking),
    their scores (layers, heads), and "" or why none could be scored."""
    from unweave.hypotheses.cases import rank_induction_heads

    try:
        chosen, scores, _ = rank_induction_heads(model, tokenizer)
    except (ValueError, AttributeError) as err:
        return [], None, f"induction heads not scored: {err}"
    return chosen, scores, ""
