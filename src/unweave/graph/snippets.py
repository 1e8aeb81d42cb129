"""Each dictionary latent's top-activating snippets of a text, for the hover of a prompt's
graph: what the latent responds to beyond the one prompt. One pass of the text per
dictionary (`features.browser.encoded_on_text`, the feature browser's own reader), keeping
only the top few contexts of every latent."""

from __future__ import annotations

import html
from typing import Any

import torch
from torch import nn

from unweave.features.browser import BrowserSettings, encoded_on_text
from unweave.features.collect import LatentStats, Window
from unweave.graph.dictionary_units import LatentLayout
from unweave.text import TextConfig, describe, token_rows

SNIPPET_CTX = 128  # tokens per row of text read
SNIPPET_WINDOW = Window(before=10, after=2)  # tokens shown around the activating one


class Snippets:
    """Top contexts of every latent of some dictionaries, read on `tokens` tokens of a text."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        dictionaries: list[LatentLayout],
        text: TextConfig,
        tokens: int,
        top: int = 3,
    ):
        rows = token_rows(text, tokenizer, SNIPPET_CTX, max_tokens=max(tokens, SNIPPET_CTX))
        settings = BrowserSettings(top=top, samples=1, window=SNIPPET_WINDOW)
        self.tokenizer, self.text, self.n_tokens = tokenizer, describe(text), rows.numel()
        self._stream = rows.flatten()  # LatentStats positions index this: every dictionary reads the same rows
        self.stats: dict[str, LatentStats] = {}
        for units in dictionaries:
            read = (units.encode_rows, units.latents, units.max_input_norm, units.read_site)
            self.stats[units.site], _ = encoded_on_text(*read, model, rows, settings)

    def of(self, site: str, latent: int) -> list[str]:
        """The latent's top snippets, strongest first: the text around the activating token,
        which is in [brackets], then the activation (HTML-escaped, for a hover)."""
        stats, stream = self.stats[site], self._stream
        found = []
        for value, pos in zip(stats.top_value[latent].tolist(), stats.top_pos[latent].tolist()):
            if pos < 0 or value == float("-inf"):
                continue
            row_start = pos // SNIPPET_CTX * SNIPPET_CTX
            first = max(row_start, pos - SNIPPET_WINDOW.before)
            last = min(row_start + SNIPPET_CTX, pos + SNIPPET_WINDOW.after + 1)
            spans = ((first, pos), (pos, pos + 1), (pos + 1, last))
            before, token, after = (self._decode(stream[a:b]) for a, b in spans)
            found.append(f"…{before}[{token}]{after}… ({value:.3g})")
        return found

    def _decode(self, ids: torch.Tensor) -> str:
        text = self.tokenizer.decode(ids.tolist()).replace("\n", "⏎")
        return html.escape(text)
