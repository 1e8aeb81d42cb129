"""Two dictionaries trained on the same site of the same model (say, with two seeds), read
on the same text: which latents of one recur in the other. Latents that never fire on the
text are left out of the matching (they are counted in a note), and so are tokens either
dictionary leaves out as massive activations."""

from __future__ import annotations

from pathlib import Path

import torch

from unweave.dictionaries import io
from unweave.dictionaries.sae import ordinary_rows
from unweave.sites import capture_rows
from unweave.text import TextConfig, describe, token_rows
from unweave.universality.cases import Layer, Pair

DECODER_SAME = 0.9  # decoder directions this close (cosine) count as the same direction


def is_dictionary(path: str) -> bool:
    return (Path(path) / io.CFG).exists()


def dictionary_pair(
    a: Path, b: Path, text: TextConfig, tokens: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> Pair:
    from unweave.hf import load_model

    (meta_a, ctx_len), (meta_b, _) = io.source(a), io.source(b)
    for key in ("model_name", "hook_name"):
        if str(meta_a[key]) != str(meta_b[key]):
            raise ValueError(
                f"the dictionaries read different {'models' if key == 'model_name' else 'sites'}: "
                f"{a} reads {meta_a[key]!r}, {b} reads {meta_b[key]!r}; compare dictionaries of one site of one model"
            )
    saes = [io.load(a).eval(), io.load(b).eval()]
    loaded = load_model(meta_a["model_name"], device=device, dtype=dtype)
    rows = token_rows(text, loaded.tokenizer, ctx_len, max_tokens=tokens)
    site = meta_a["hook_name"]
    with torch.no_grad():
        x = capture_rows(loaded.model, [site], rows)[site]
        keep = ordinary_rows(x, saes[0].max_input_norm) & ordinary_rows(x, saes[1].max_input_norm)
        z = [sae.encode(x[keep]) for sae in saes]
    live = [(zi != 0).any(0).nonzero().squeeze(1) for zi in z]
    cos = (
        torch.nn.functional.normalize(saes[0].W_dec.detach(), dim=1)
        @ torch.nn.functional.normalize(saes[1].W_dec.detach(), dim=1).T
    )
    decoder_share = float((cos.max(1).values > DECODER_SAME).float().mean())
    notes = [
        f"Read on {int(keep.sum())} tokens of {describe(text)} at {site} of {meta_a['model_name']} "
        f"({int((~keep).sum())} massive-activation tokens left out).",
        f"Latents firing on them: {len(live[0])} of {z[0].shape[1]} in A, {len(live[1])} of {z[1].shape[1]} in B; "
        "the others are left out of the matching.",
        f"Decoder directions: {decoder_share:.1%} of A's latents have one in B within cosine {DECODER_SAME}.",
    ]
    layer = Layer(
        "dictionary latents",
        z[0][:, live[0]],
        z[1][:, live[1]],
        [f"latent {int(i)}" for i in live[0]],
        [f"latent {int(i)}" for i in live[1]],
    )
    return Pair("dictionaries", (str(a), str(b)), [layer], notes)
