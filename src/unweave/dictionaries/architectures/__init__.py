"""Dictionary architectures by name. Each is one file here: an `Architecture` subclass with
`@register`, imported at the bottom of this module. The SAE, its training and the SAELens
file layout ask the architecture for everything that differs, so nothing else branches on
its name."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from unweave.dictionaries.sae import SAE, SAEConfig


class Architecture:
    """One architecture. The defaults: no state of its own, dense decoding, no sparsity
    penalty, no AuxK, no SAELens fields beyond the shared ones."""

    name: str  # SAEConfig.architecture
    saelens: str  # "architecture" in SAELens's cfg.json
    loads_saelens: bool = True  # False: saved in another architecture's form, which loading gives back
    auxk: bool = False  # trained with the AuxK loss (dead latents explain the residual)
    state: tuple[str, ...] = ()  # names of its own parameters and buffers on the SAE

    def validate(self, cfg: SAEConfig) -> None:
        """Raise ValueError for settings it cannot work with."""

    def add_state(self, sae: SAE) -> None:
        """Register the parameters and buffers named in `state` on a new SAE."""

    def activate(self, sae: SAE, pre: torch.Tensor) -> torch.Tensor:
        """Latents from pre-activations."""
        raise NotImplementedError

    def reconstruct(
        self, sae: SAE, x: torch.Tensor, pre: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """For the loss: the reconstruction, the indices of the latents that fired, and the
        dense latents (None when they were never formed)."""
        latents = self.activate(sae, pre)
        return sae.decode(latents, x), (latents != 0).any(0).nonzero().flatten(), latents

    def penalty(self, sae: SAE, pre: torch.Tensor, latents: torch.Tensor | None) -> torch.Tensor | None:
        """The weighted sparsity penalty added to the loss, or None."""
        return None

    def fold_scale(self, sae: SAE, scale_out: float) -> None:
        """Adjust its own state to latents divided by scale_out (see SAE.fold_scales)."""

    def saelens_cfg(self, sae: SAE) -> dict:
        """Its fields in cfg.json."""
        return {}

    def saelens_tensors(self, sae: SAE) -> dict[str, torch.Tensor]:
        """Its state as SAELens stores it, written in place of `state`."""
        return {}

    def config_from_saelens(self, cfg: dict) -> dict:
        """SAEConfig fields read back from cfg.json."""
        return {}

    def state_from_saelens(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Its `state` entries from the file's tensors (ValueError if they are missing)."""
        return {}


ARCHITECTURES: dict[str, Architecture] = {}
SAELENS: dict[str, Architecture] = {}  # what loading a SAELens architecture name gives


def register(cls: type[Architecture]) -> type[Architecture]:
    """Class decorator: make the architecture available by its name."""
    arch = cls()
    if arch.name in ARCHITECTURES or (arch.loads_saelens and arch.saelens in SAELENS):
        raise ValueError(f"architecture {arch.name!r} (SAELens {arch.saelens!r}) is already registered")
    ARCHITECTURES[arch.name] = arch
    if arch.loads_saelens:
        SAELENS[arch.saelens] = arch
    return cls


def get(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown dictionary architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]


def from_saelens(name: str) -> Architecture:
    if name not in SAELENS:
        raise ValueError(f"architecture {name!r} cannot be loaded yet; known: {', '.join(sorted(SAELENS))}")
    return SAELENS[name]


# the built-in architectures register themselves on import
from unweave.dictionaries.architectures import batchtopk, jumprelu, relu, topk  # noqa: E402, F401
