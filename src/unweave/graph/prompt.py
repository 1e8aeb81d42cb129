"""`unweave graph FOLDER --prompt TEXT [--dictionary FOLDER ...]`: the graph of one prompt
over the latents of dictionaries at one or several layers.

FOLDER is a dictionary trained by unweave (a transcoder of an MLP, an SAE, a cross-layer
transcoder of several MLPs: one member per layer, its latents writing to every later
layer, or connected sparse MLPs: a transcoder per layer, trained together), whose
metadata names the model and the sites; more of the same model join with --dictionary. The
units are the latents that fire at any position of the prompt, and each dictionary's error
at every position (so the units account for all of each site's output). The outputs are the
logits, minus their mean over the vocabulary, of the model's top next tokens at the last
position. A single prompt has no distribution to take means over, so an ablated unit is set
to zero: a latent switched off, an error removed (the dictionary in place of the model
there). For the modules, two units are joined by the overlap of their direct effects on the
outputs (each dictionary reads its input detached, so a unit's gradient does not run
through later dictionaries' latents); the attribution graph (`attribution.py`) joins them
by the direct effect of one on the other. No answer is known here: the modules, the
attribution graph and their checks by ablation are what the page reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from unweave.dictionaries import io
from unweave.dictionaries.clt import is_clt, load_clt
from unweave.dictionaries.connected import connected_folders, is_connected
from unweave.dictionaries.sae import ordinary_rows
from unweave.graph.clt_units import clt_members
from unweave.graph.dictionary_units import DictionaryUnits, LatentLayout
from unweave.graph.effects import EffectData, centred_logits
from unweave.graph.units import SelectedUnits, SeveralUnits
from unweave.sites import SiteError, capture, list_sites

PROMPT_OUTPUTS = 8  # the model's top next tokens whose logits are the outputs


def is_dictionary(path: Path) -> bool:
    """A dictionary folder of `sae train`, a cross-layer transcoder of `sae train-clt`, or
    connected sparse MLPs of `sae train-connected`."""
    return ((path / io.CFG).exists() and (path / io.WEIGHTS).exists()) or is_clt(path) or is_connected(path)


class TopLogits:
    """The centred last-position logits of a fixed set of tokens."""

    def __init__(self, tokens: torch.Tensor):
        self.tokens = tokens

    def __call__(self, out: object) -> torch.Tensor:
        logits = out.logits if hasattr(out, "logits") else out
        return centred_logits(logits[:, -1].float())[:, self.tokens]


def _dictionary_units(folder: Path) -> list[tuple[LatentLayout, dict]]:
    """The units a folder's dictionary edits: one site, or a cross-layer transcoder's or
    connected sparse MLPs' layers."""
    if is_connected(folder):
        return [pair for layer in connected_folders(folder) for pair in _dictionary_units(layer)]
    if is_clt(folder):
        clt, meta = load_clt(folder)
        if not meta.get("model_name") or not meta.get("input_sites") or not meta.get("output_sites"):
            raise ValueError(
                f"{folder}/clt.json does not say which model and sites the transcoder reads (metadata.model_name, "
                "input_sites, output_sites): train it with `unweave sae train-clt`, which records them"
            )
        return [(member, meta) for member in clt_members(clt, meta["input_sites"], meta["output_sites"])]
    sae = io.load(folder).eval()
    meta = io.metadata(folder)
    transcoder = sae.cfg.kind == "transcoder"
    read, site = meta.get("hook_name"), meta.get("hook_name_out") if transcoder else meta.get("hook_name")
    if not meta.get("model_name") or not read or not site:
        raise ValueError(
            f"{folder}/cfg.json does not say which model and sites the dictionary reads (metadata.model_name, "
            "hook_name and, for a transcoder, hook_name_out): train it with `unweave sae train`, which records them"
        )
    return [(DictionaryUnits(site, sae, read if transcoder else None), meta)]


@dataclass
class LoadedDictionaries:
    """Dictionaries of one model, loaded with it: `on(prompt)` draws their units on a prompt."""

    model: torch.nn.Module
    tokenizer: object
    members: list[LatentLayout]  # in the order their sites run
    name: str  # the model's
    source: Path  # the first folder, for messages

    def on(self, prompt: str | None, skip_first: int = 1) -> PromptUnits:
        """The effect data over the prompt's live units (of every dictionary), the top next
        tokens (the outputs) and the positions left out: the first `skip_first`, and those
        outside a dictionary's range."""
        require_prompt(self.source, prompt)
        model, members, name = self.model, self.members, self.name
        tokens = encode_prompt(model, self.tokenizer, name, prompt)
        probabilities, top = next_tokens(model, tokens)
        output = TopLogits(top)
        full = EffectData(model, tokens, SeveralUnits(tuple(members)), output, ablate_to="zero")
        live = full.activations[0] != 0  # latents that fire; every error
        selected, left_out = [], {}
        for k, member in enumerate(members):
            units, _ = full.member_span(k)
            outside = sorted(set(range(min(skip_first, tokens.shape[1] - 1))) | set(_outside(model, tokens, member)))
            left_out[member.site] = outside
            at = torch.arange(units.stop - units.start) // member.per_position  # each unit's position
            keep = live[units] & ~torch.isin(at, torch.as_tensor(outside, dtype=torch.long))
            selected.append(SelectedUnits.of(member, keep.nonzero().flatten().tolist(), full.states_of(k)))
        data = EffectData(model, tokens, SeveralUnits(tuple(selected)), output, ablate_to="zero")
        return PromptUnits(data, self.tokenizer, top, name, left_out, probabilities, _embedding_site(model))


def read_prompts(path: Path) -> list[str]:
    """`--prompts FILE`: its non-empty lines, stripped."""
    if not Path(path).is_file():
        raise ValueError(f"--prompts {path} is not a file: give a text file with one prompt per line")
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def encode_prompt(model: torch.nn.Module, tokenizer: object, name: str, prompt: str) -> torch.Tensor:
    """(1, tokens): the prompt's token ids, at least 2 and within the model's context."""
    tokens = tokenizer(prompt, return_tensors="pt").input_ids
    context = getattr(model.config, "max_position_embeddings", None)
    if tokens.shape[1] < 2:
        raise ValueError(f"the prompt {prompt!r} is {tokens.shape[1]} token long: give at least 2")
    if context is not None and tokens.shape[1] > context:
        raise ValueError(
            f"the prompt {prompt[:40]!r}... is {tokens.shape[1]} tokens, longer than the context of {name} "
            f"({context} tokens): shorten it"
        )
    return tokens


@torch.no_grad()
def next_tokens(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's `PROMPT_OUTPUTS` most probable next tokens after `tokens`: (probabilities, ids)."""
    return model(tokens).logits[0, -1].float().softmax(-1).topk(PROMPT_OUTPUTS)


def load_dictionaries(folders: list[Path]) -> LoadedDictionaries:
    """The dictionaries in `folders` (one model; one dictionary per site) and their model."""
    from unweave.hf import load_model

    per_folder = [_dictionary_units(f) for f in folders]
    models = {str(f): found[0][1]["model_name"] for f, found in zip(folders, per_folder)}
    loaded = [pair for found in per_folder for pair in found]
    if len(set(models.values())) > 1:
        raise ValueError(f"the dictionaries read different models ({models}): give dictionaries of one model")
    sites = [units.site for units, _ in loaded]
    if len(set(sites)) < len(sites):
        raise ValueError(f"two dictionaries write the same site ({sites}): give one per site")
    name = next(iter(models.values()))
    try:
        model, tokenizer = load_model(name)
    except (OSError, ValueError) as err:
        raise ValueError(f"the model of {folders[0]} ({name!r}) cannot be loaded: {err}") from None
    order = {site: i for i, site in enumerate(list_sites(model))}
    unknown = [s for s in sites if s not in order]
    if unknown:
        raise SiteError(f"the dictionaries' sites {unknown} are not sites of {name}")
    members = sorted((units for units, _ in loaded), key=lambda u: order[u.site])  # the order they run in
    return LoadedDictionaries(model, tokenizer, members, name, folders[0])


def require_prompt(folder: Path, prompt: str | None) -> None:
    if not prompt:
        raise ValueError(f"{folder} is a dictionary folder: give the text to draw its graph on with --prompt")


def prompt_units(folders: list[Path], prompt: str | None, skip_first: int = 1) -> PromptUnits:
    """The dictionaries in `folders` drawn on one prompt (`LoadedDictionaries.on`)."""
    require_prompt(folders[0], prompt)  # before the model is loaded
    return load_dictionaries(folders).on(prompt, skip_first)


@dataclass
class PromptUnits:
    data: EffectData
    tokenizer: object
    top: torch.Tensor  # the top next tokens: the outputs
    model_name: str
    left_out: dict[str, list[int]]  # per site, the positions left out of the graph (held at their clean output)
    probabilities: torch.Tensor  # the model's probability of each output token
    embedding: str  # the site of the token embeddings (the graph's token nodes)


def _embedding_site(model: torch.nn.Module) -> str:
    embeddings = model.get_input_embeddings()
    return next(name for name, module in model.named_modules() if module is embeddings)


@torch.no_grad()
def _outside(model: torch.nn.Module, tokens: torch.Tensor, units: LatentLayout) -> list[int]:
    """Positions whose input norm is above the dictionary's max_input_norm (massive
    activations, attention sinks): it was not trained there, so they stay out of the graph,
    held at their clean output."""
    site = units.read_site
    x = capture(model, site, tokens)[site][0]
    return (~ordinary_rows(x, units.max_input_norm)).nonzero().flatten().tolist()
