"""`unweave graph FOLDER --prompt TEXT`: the graph of one prompt over a dictionary's latents.

FOLDER is a dictionary trained by unweave (a transcoder of an MLP, or an SAE), whose
metadata names the model and the sites. The units are the latents that fire at any
position of the prompt, and the dictionary's error at every position (so the units account
for all of the site's output). The outputs are the logits, minus their mean over the
vocabulary, of the model's top next tokens at the last position. A single prompt has no
distribution to take means over, so an ablated unit is set to zero: a latent switched off,
an error removed (the dictionary in place of the model there). No answer is known here: the
modules and the single-unit ablation check are what the page reports.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unweave.dictionaries import io
from unweave.graph.dictionary_units import DictionaryUnits
from unweave.graph.effects import EffectData, SelectedUnits, centred_logits

PROMPT_OUTPUTS = 8  # the model's top next tokens whose logits are the outputs


def is_dictionary(path: Path) -> bool:
    return (path / io.CFG).exists() and (path / io.WEIGHTS).exists()


class TopLogits:
    """The centred last-position logits of a fixed set of tokens."""

    def __init__(self, tokens: torch.Tensor):
        self.tokens = tokens

    def __call__(self, out: object) -> torch.Tensor:
        logits = out.logits if hasattr(out, "logits") else out
        return centred_logits(logits[:, -1].float())[:, self.tokens]


def prompt_units(folder: Path, prompt: str | None) -> tuple[EffectData, object, torch.Tensor, dict]:
    """The effect data over the prompt's live units, the tokenizer, the top next tokens (the
    outputs) and the dictionary's metadata."""
    from unweave.hf import load_model

    if not prompt:
        raise ValueError(f"{folder} is a dictionary folder: give the text to draw its graph on with --prompt")
    sae = io.load(folder).eval()
    meta = io.metadata(folder)
    transcoder = sae.cfg.kind == "transcoder"
    read, site = meta.get("hook_name"), meta.get("hook_name_out") if transcoder else meta.get("hook_name")
    if not meta.get("model_name") or not read or not site:
        raise ValueError(
            f"{folder}/cfg.json does not say which model and sites the dictionary reads (metadata.model_name, "
            "hook_name and, for a transcoder, hook_name_out): train it with `unweave sae train`, which records them"
        )
    try:
        model, tokenizer = load_model(meta["model_name"])
    except (OSError, ValueError) as err:
        raise ValueError(f"the model of {folder} ({meta['model_name']!r}) cannot be loaded: {err}") from None
    tokens = tokenizer(prompt, return_tensors="pt").input_ids
    context = getattr(model.config, "max_position_embeddings", None)
    if tokens.shape[1] < 2:
        raise ValueError(f"--prompt is {tokens.shape[1]} token long: give at least 2")
    if context is not None and tokens.shape[1] > context:
        raise ValueError(
            f"--prompt is {tokens.shape[1]} tokens, longer than the context of {meta['model_name']} "
            f"({context} tokens): shorten it"
        )
    with torch.no_grad():
        top = model(tokens).logits[0, -1].topk(PROMPT_OUTPUTS).indices
    every = DictionaryUnits(site, sae, read if transcoder else None)
    output = TopLogits(top)
    full = EffectData(model, tokens, every, output, ablate_to="zero")
    live = (full.activations[0] != 0).nonzero().flatten().tolist()  # latents that fire; every error
    units = SelectedUnits.of(every, live, full.states.shape[1])
    return EffectData(model, tokens, units, output, ablate_to="zero"), tokenizer, top, meta
