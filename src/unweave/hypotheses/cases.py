"""Ground-truth cases: a model, its inputs, and true and false hypotheses about it.

- cancellation: a false hypothesis recovers ~100% of the loss on average while changing
  half the examples' outputs; per-example KL exposes it.
- modular addition: the Fourier hypothesis against "depends only on a" and a wrong
  frequency set.
- induction: a two-layer attention-only transformer; the induction circuit (induction
  heads computed from the previous-token heads and the embeddings) against wrong claims.
- induction heads in a Hugging Face LM (SmolLM2-135M, or any local model folder of an
  architecture `unweave.anatomy` knows) on repeated random tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from unweave.hypotheses.graph import Hypothesis, Indices, Node, Projection

if TYPE_CHECKING:
    from collections.abc import Callable

    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from unweave.text import TextConfig


@dataclass
class Case:
    name: str
    model: nn.Module
    inputs: torch.Tensor
    labels: torch.Tensor
    hypotheses: dict[str, Hypothesis]
    info: dict = field(default_factory=dict)
    forward_kwargs: dict = field(default_factory=dict)  # extra arguments to every full forward


# -- cancellation ------------------------------------------------------------------------
class BitsMLP(nn.Module):
    """bits (n, 5) -> logits (n, 2), with its hidden layer at site `hidden`."""

    def __init__(self, d_in: int = 5, d_hidden: int = 16):
        super().__init__()
        self.layer1, self.hidden, self.out = nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(self.layer1(x)))


def cancellation_case(seed: int = 0, steps: int = 600) -> Case:
    """Label = bit A. The model is confident when bit B is 1 (logit +-3.5) and unsure when
    it is 0 (+-0.5); bits 2-4 are ignored. The false claim "the hidden layer depends only
    on A" resamples B: half the examples become more confident, half less, and the average
    loss is unchanged in expectation, while each changed example moves by ~0.3 nats."""
    bits = torch.cartesian_prod(*[torch.tensor([0.0, 1.0])] * 5)
    a, b = bits[:, 0], bits[:, 1]
    target_logit = (2 * a - 1) * (2 + 1.5 * (2 * b - 1))
    torch.manual_seed(seed)
    model = BitsMLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):  # distil the planted logits (full batch: all 32 inputs)
        logits = model(bits)
        loss = F.mse_loss(logits[:, 1] - logits[:, 0], target_logit)
        opt.zero_grad()
        loss.backward()
        opt.step()
    inputs = bits.repeat(32, 1)  # 1024 rows: enough references for the average to settle
    labels = inputs[:, 0].long()
    hyps = {
        "A only (false)": Hypothesis([Node("A", "hidden", fn=lambda x: x[:, 0])], name="A only (false)"),
        "A and B (true)": Hypothesis([Node("AB", "hidden", fn=lambda x: x[:, :2])], name="A and B (true)"),
    }
    return Case("cancellation", model.eval(), inputs, labels, hyps)


# -- modular addition ---------------------------------------------------------------------
def _output_frequency_directions(W_U: torch.Tensor, p: int, freqs: list[int]) -> torch.Tensor:
    """Residual directions that the unembedding (p, d) maps to cos(w_k c), sin(w_k c)."""
    c = torch.arange(p, dtype=torch.float64)
    rows = []
    for k in freqs:
        for wave in (torch.cos, torch.sin):
            rows.append(wave(2 * torch.pi * k * c / p) @ W_U.double())
    return torch.stack(rows)


def modadd_case(model: nn.Module, p: int, key_freqs: list[int]) -> Case:
    """The Fourier claim: at `=`, the part of the residual stream that the unembedding reads
    as the key frequencies depends on a and b only through (a + b) mod p; the rest is
    unclaimed. False claims: the same part depends only on a; the claim with as many
    non-key frequencies in place of the key ones."""
    from unweave.zoo.modadd import ModAddConfig, make_data

    data = make_data(ModAddConfig(p=p))
    inputs, labels = data.tokens, data.labels
    W_U = model.unembed.weight.detach()
    others = [k for k in range(1, (p - 1) // 2 + 1) if k not in key_freqs][: len(key_freqs)]
    site, last = "blocks.0.hook_resid_post", [-1]

    def node(name: str, freqs: list[int], fn: Callable[[torch.Tensor], torch.Tensor]) -> Node:
        return Node(name, site, fn=fn, subspace=Projection(_output_frequency_directions(W_U, p, freqs)), positions=last)

    def hypothesis(name: str, freqs: list[int], fn: Callable[[torch.Tensor], torch.Tensor]) -> Hypothesis:
        return Hypothesis(
            [node("sum", freqs, fn)], output=lambda out: out[:, -1], name=name, predict=lambda v: v["sum"]
        )

    def total(x: torch.Tensor) -> torch.Tensor:
        return (x[:, 0] + x[:, 1]) % p

    hyps = {
        "fourier (key frequencies of a+b)": hypothesis("fourier (key frequencies of a+b)", key_freqs, total),
        "depends only on a (false)": hypothesis("depends only on a (false)", key_freqs, lambda x: x[:, 0]),
        f"wrong frequencies {others} (false)": hypothesis(f"wrong frequencies {others} (false)", others, total),
    }
    return Case("modadd", model, inputs, labels, hyps, {"p": p, "key_freqs": key_freqs, "other_freqs": others})


# -- induction ------------------------------------------------------------------------------
def _induction_inputs(vocab: int, half: int, n: int, seed: int) -> torch.Tensor:
    """(n, 2*half - 1) repeated sequences ending one token before the end of the repeat, so
    the last position predicts tokens[half - 1] (the answer) from its earlier occurrence."""
    from unweave.zoo.induction import repeated_sequences

    tokens, _ = repeated_sequences(n, vocab, 2 * half, torch.Generator().manual_seed(seed), half=half)
    return tokens[:, :-1]


def _heads(scores: torch.Tensor, threshold: float) -> list[int]:
    return [int(h) for h in (scores >= threshold).nonzero().flatten()]


def induction_case(
    model: nn.Module,
    vocab: int,
    half: int = 12,
    n: int = 4096,
    seed: int = 0,
    prev_threshold: float = 0.25,
    induction_threshold: float = 0.3,
) -> Case:
    """The induction circuit of a two-layer attention-only zoo transformer.

    Heads are detected from attention patterns (scores at least the thresholds: a uniform
    causal pattern scores about 0.15 and 0.1). The claim: the logits at the last position
    depend only on the induction heads' output there, which depends on the input only
    through the answer token; the heads' queries depend only on the current token, their
    keys only on what the previous-token heads write, and their values on the sequence.
    Everything else is resampled from random sequences."""
    from unweave.zoo.induction import model_head_scores

    inputs = _induction_inputs(vocab, half, n, seed)
    scores = model_head_scores(model, inputs[:512], half)
    prev = _heads(scores["previous_token"][0], prev_threshold)
    ind = _heads(scores["induction"][1], induction_threshold)
    if not prev or not ind:
        raise ValueError(
            f"no previous-token heads ({prev}) or induction heads ({ind}) found; scores: "
            f"{ {k: v.tolist() for k, v in scores.items()} }. Train the model longer."
        )
    answer = lambda x: x[:, half - 1]  # noqa: E731 - the token after the current token's earlier occurrence
    current = lambda x: x[:, -1]  # noqa: E731

    def circuit(
        name: str,
        answer_fn: Callable[[torch.Tensor], torch.Tensor] = answer,
        query_fn: Callable[[torch.Tensor], torch.Tensor] = current,
    ) -> Hypothesis:
        # queries at the last position read the current token; keys are written by the
        # previous-token heads (the rest of what keys read comes from a random input);
        # values read the sequence itself
        q = Node("query", "blocks.1.attn.hook_q_input", fn=query_fn, positions=[-1])
        pt = Node("prev_token", "blocks.0.attn.hook_z", fn=None, subspace=Indices(prev, axis=2))
        k = Node("keys", "blocks.1.attn.hook_k_input", fn=None, parents=[pt])
        v = Node("values", "blocks.1.attn.hook_v_input", fn=None)
        top = Node(
            "induction",
            "blocks.1.attn.hook_z",
            fn=answer_fn,
            parents=[q, k, v],
            subspace=Indices(ind, axis=2),
            positions=[-1],
        )
        return Hypothesis([top], output=lambda out: out[:, -1], name=name, predict=lambda v: v["induction"])

    hyps = {
        "induction circuit": circuit("induction circuit"),
        "induction heads output the current token (false)": circuit(
            "induction heads output the current token (false)", answer_fn=current
        ),
        "queries read the previous token (false)": circuit(
            "queries read the previous token (false)", query_fn=lambda x: x[:, -2]
        ),
    }
    labels = answer(inputs)
    info = {"previous_token_heads": prev, "induction_heads": ind, "scores": {k: v.tolist() for k, v in scores.items()}}
    return Case("induction", model, inputs, labels, hyps, info)


# -- induction heads in a Hugging Face LM (SmolLM2-135M, or any local folder) --------------
def repeated_tokens(
    tokenizer: PreTrainedTokenizerBase,
    n: int,
    half: int,
    seed: int = 0,
    choices: int = 16,
    vocab: int | None = None,
) -> torch.Tensor:
    """(n, 2*half) rows: BOS, `half` random tokens, then the same tokens again minus the last,
    so the last position predicts the half's last token (the answer). The answer and the
    current token are drawn from `choices` tokens each, so that many rows agree on them.
    `vocab` (default: the tokenizer's size) bounds the token ids drawn."""
    vocab = len(tokenizer) if vocab is None else vocab
    # ordinary word pieces, away from the special tokens at the start of the vocabulary
    low, high = min(1000, vocab // 20), min(20000, vocab)
    if high - low < 2 * choices:
        raise ValueError(f"a vocabulary of {vocab} tokens is too small for {choices} answer and current tokens")
    gen = torch.Generator().manual_seed(seed)
    first = torch.randint(low, high, (n, half), generator=gen)
    pool = torch.randperm(high - low, generator=gen)[: 2 * choices] + low
    first[:, -1] = pool[torch.randint(choices, (n,), generator=gen)]
    first[:, -2] = pool[choices + torch.randint(choices, (n,), generator=gen)]
    return _repeated(tokenizer, first)


def _repeated(tokenizer: PreTrainedTokenizerBase, first: torch.Tensor) -> torch.Tensor:
    """BOS, each row of `first`, then the row again minus its last token."""
    bos = torch.full((len(first), 1), tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0)
    return torch.cat([bos, first, first[:, :-1]], dim=1)


def repeated_text(
    tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor, n: int, half: int, seed: int = 0, choices: int = 16
) -> torch.Tensor:
    """Rows like `repeated_tokens`, from spans of a text's token ids (1-D) instead of random
    tokens: BOS, a `half`-token span, then the span again minus its last token. Spans are
    drawn where the answer (the span's last token) is one of the text's `choices` most
    frequent tokens and the current token (the one before it) too, so that many rows agree
    on each, as resampling needs."""
    if len(ids) < 4 * half:
        raise ValueError(f"the text has {len(ids)} tokens; repeated spans of {half} need at least {4 * half}")
    frequent = torch.bincount(ids).argsort(descending=True)[:choices]
    ends = torch.arange(half - 1, len(ids))
    ok = torch.isin(ids[ends], frequent) & torch.isin(ids[ends - 1], frequent)
    ends = ends[ok]
    if len(ends) < n:
        raise ValueError(
            f"the text has {len(ends)} spans whose last two tokens are among its {choices} most frequent; "
            f"{n} are needed: give more text (--text) or fewer --examples"
        )
    gen = torch.Generator().manual_seed(seed)
    picked = ends[torch.randperm(len(ends), generator=gen)[:n]]
    return _repeated(tokenizer, torch.stack([ids[e - half + 1 : e + 1] for e in picked.tolist()]))


def induction_head_scores(model: PreTrainedModel, tokens: torch.Tensor, half: int) -> torch.Tensor:
    """Induction scores (layers, heads): attention from each second-half position to the
    position after the current token's earlier occurrence (eager attention, to read patterns)."""
    previous = model.config._attn_implementation
    _set_attention(model, "eager")
    try:
        with torch.no_grad():
            attentions = model(tokens.to(model.device), output_attentions=True).attentions
    finally:
        _set_attention(model, previous)
    q = torch.arange(1 + half, tokens.shape[1])  # second-half positions (after BOS and the first half)
    return torch.stack([a[:, :, q, q - half + 1].float().mean(dim=(0, 2)).cpu() for a in attentions])


def _set_attention(model: PreTrainedModel, implementation: str | None) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(implementation)
    else:  # transformers before set_attn_implementation: the config field is what layers read
        model.config._attn_implementation = implementation


def rank_induction_heads(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    n: int = 512,
    half: int = 20,
    top: int | None = None,
    seed: int = 0,
    text_ids: torch.Tensor | None = None,
) -> tuple[list[tuple[int, int]], torch.Tensor, torch.Tensor]:
    """The `top` heads (layer, head) with the highest induction scores on repeated random
    tokens (or repeated spans of `text_ids`), the scores (layers, heads), and the `n`
    repeated rows (the first 32 are scored). `top` defaults to 8, or half the heads of a
    smaller model."""
    from unweave.anatomy import anatomy

    parts = anatomy(model)
    top = min(8, parts.n_layers * parts.n_heads // 2) if top is None else top
    vocab = min(len(tokenizer), model.config.vocab_size)  # ids both the tokenizer and the embedding know
    if text_ids is None:
        inputs = repeated_tokens(tokenizer, n, half, seed, vocab=vocab)
    else:
        inputs = repeated_text(tokenizer, text_ids[text_ids < vocab], n, half, seed)
    scores = induction_head_scores(model, inputs[:32], half)
    order = scores.flatten().argsort(descending=True)
    return [(int(i) // parts.n_heads, int(i) % parts.n_heads) for i in order[:top]], scores, inputs


def lm_induction_case(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    n: int = 512,
    half: int = 20,
    top: int | None = None,
    seed: int = 0,
    text_ids: torch.Tensor | None = None,
) -> Case:
    """A causal LM's induction heads on repeated random tokens (or repeated spans of a text,
    `text_ids`), and the claim that the
    logits at the last position depend on the input only through the answer token carried
    by the `top` induction heads' outputs there (everything else resampled from other
    repeated sequences). False claims: as many random non-induction heads; the induction
    heads carrying the current token. `top` defaults to 8, or half the heads of a smaller
    model (the other half is where the random heads come from). Heads are read at the input of each layer's attention
    output projection (`unweave.anatomy`), so any architecture in its table works."""
    import inspect

    from unweave.anatomy import anatomy

    parts = anatomy(model)
    n_heads = parts.n_heads
    top = min(8, parts.n_layers * n_heads // 2) if top is None else top
    if not 1 <= top <= parts.n_layers * n_heads // 2:
        raise ValueError(
            f"top={top}: choose 1 to {parts.n_layers * n_heads // 2} heads (half of this model's "
            f"{parts.n_layers * n_heads}), so as many other heads remain for the random-heads control"
        )
    chosen, scores, inputs = rank_induction_heads(model, tokenizer, n, half, top, seed, text_ids)
    order = scores.flatten().argsort(descending=True)
    rest = order[top:][torch.randperm(len(order) - top, generator=torch.Generator().manual_seed(seed))[:top]]
    random_heads = [(int(i) // n_heads, int(i) % n_heads) for i in rest]
    answer = lambda x: x[:, half]  # noqa: E731 - the last token of the first half
    current = lambda x: x[:, -1]  # noqa: E731

    def heads_claim(name: str, heads: list[tuple[int, int]], fn: Callable[[torch.Tensor], torch.Tensor]) -> Hypothesis:
        by_layer: dict[int, list[int]] = {}
        for layer, head in heads:
            by_layer.setdefault(layer, []).extend(parts.head_columns(head))
        nodes = [
            Node(f"L{layer}", parts.attn_out(layer), fn=fn, subspace=Indices(idx), positions=[-1])
            for layer, idx in sorted(by_layer.items())
        ]
        return Hypothesis(nodes, output=lambda out: out.logits[:, -1], name=name, predict=lambda v: v[nodes[0].name])

    hyps = {
        "induction heads carry the answer": heads_claim("induction heads carry the answer", chosen, answer),
        "random heads carry the answer (false)": heads_claim(
            "random heads carry the answer (false)", random_heads, answer
        ),
        "induction heads carry the current token (false)": heads_claim(
            "induction heads carry the current token (false)", chosen, current
        ),
    }
    info = {
        "model_type": parts.model_type,
        "induction_heads": [f"L{layer}H{h} ({float(scores[layer, h]):.2f})" for layer, h in chosen],
        "random_heads": [f"L{layer}H{h}" for layer, h in random_heads],
        "repeated": "random tokens" if text_ids is None else "spans of the text",
        "scores": scores.tolist(),
    }
    # only the last position is scored: skip the vocabulary-wide unembedding everywhere else
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    return Case(name, model, inputs, answer(inputs), hyps, info, keep_last)


def smollm2_induction_case(
    n: int = 512, half: int = 20, top: int = 8, seed: int = 0, text: TextConfig | None = None
) -> Case:
    """SmolLM2-135M's induction heads (see `lm_induction_case`), on repeated random tokens or
    on repeated spans of `text`."""
    from unweave.hf import load_model

    model, tokenizer = load_model("smollm2-135m")
    ids = None if text is None else text_ids(text, tokenizer)
    return lm_induction_case(model, tokenizer, "smollm2-induction", n, half, top, seed, ids)


def text_ids(text: TextConfig, tokenizer: PreTrainedTokenizerBase, max_tokens: int = 262_144) -> torch.Tensor:
    """The text's token ids as one stream (packed rows of 512, at most `max_tokens`)."""
    from unweave.text import token_rows

    return token_rows(text, tokenizer, 512, max_tokens=max_tokens).flatten()


# the names this section had when it served SmolLM2 only
smollm2_repeated_tokens = repeated_tokens
smollm2_head_scores = induction_head_scores
