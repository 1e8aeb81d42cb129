"""Named sites on any `torch.nn.Module`: read activations, and patch them for one forward.

A site is a module path as `model.named_modules()` prints it, with an optional suffix
`:input` or `:output` (the default), e.g. `blocks.0.mlp:input` or `model.layers.10`.
A module's output that is a tuple (as Hugging Face layers return) is read and patched at
its first element; a module's input is its first positional argument, or the first tensor
keyword argument when it is called with keywords only.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from unweave.devices import model_device

KINDS = ("output", "input")
PatchValue = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


class SiteError(ValueError):
    """A site name that does not exist in the model, or a patch of the wrong shape."""


class _StopForward(BaseException):
    """Raised inside a hook to end a forward pass once every needed site is captured.

    A BaseException, like GeneratorExit, so model code that catches Exception lets it pass.
    """


@dataclass(frozen=True)
class Site:
    module: str
    kind: str = "output"

    @classmethod
    def parse(cls, name: str) -> Site:
        module, _, kind = name.partition(":")
        kind = kind or "output"
        if kind not in KINDS:
            raise SiteError(
                f"site {name!r}: unknown suffix ':{kind}'; use ':input' or ':output' (or no suffix, meaning ':output')"
            )
        return cls(module, kind)

    def __str__(self) -> str:
        return self.module if self.kind == "output" else f"{self.module}:{self.kind}"


def list_sites(model: nn.Module) -> list[str]:
    """Every site of `model`: each submodule's output (plain name) and its `:input`."""
    names = [name for name, _ in model.named_modules() if name]
    return [f"{name}{suffix}" for name in names for suffix in ("", ":input")]


def resolve(model: nn.Module, name: str) -> tuple[Site, nn.Module]:
    """The parsed site and its module; an unknown name lists the closest valid ones."""
    site = Site.parse(name)
    modules = dict(model.named_modules())
    if site.module and site.module in modules:
        return site, modules[site.module]
    valid = [n for n in modules if n]
    close = difflib.get_close_matches(site.module, valid, n=5, cutoff=0.4)
    hint = f"closest valid sites: {', '.join(close)}" if close else f"some valid sites: {', '.join(valid[:8])}"
    raise SiteError(
        f"unknown site {name!r} in {type(model).__name__}; {hint}. unweave.list_sites(model) lists them all."
    )


def _first_tensor_of_input(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for value in kwargs.values():
        if isinstance(value, torch.Tensor):
            return value
    raise SiteError("module input has no tensor argument to read")


def _replace_input(args: tuple, kwargs: dict, new: torch.Tensor) -> tuple[tuple, dict]:
    if args and isinstance(args[0], torch.Tensor):
        return (new, *args[1:]), kwargs
    key = next(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
    return args, {**kwargs, key: new}


def _first_tensor_of_output(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise SiteError(f"module output of type {type(output).__name__} has no tensor to read")


def _replace_output(output: Any, new: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return new
    return type(output)([new, *output[1:]])


def _hook(module: nn.Module, site: Site, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """Register a hook calling fn(activation); a tensor it returns replaces the activation."""
    if site.kind == "output":

        def on_output(_mod: nn.Module, _args: tuple, output: Any) -> Any:
            new = fn(_first_tensor_of_output(output))
            return None if new is None else _replace_output(output, new)

        return module.register_forward_hook(on_output)

    def on_input(_mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        new = fn(_first_tensor_of_input(args, kwargs))
        return None if new is None else _replace_input(args, kwargs, new)

    return module.register_forward_pre_hook(on_input, with_kwargs=True)


@contextlib.contextmanager
def _hooks(model: nn.Module, fns: Mapping[str, Callable]) -> Iterator[None]:
    resolved = [(resolve(model, name), fn) for name, fn in fns.items()]  # all errors before any hook
    handles = []
    try:
        for (site, module), fn in resolved:
            handles.append(_hook(module, site, fn))
        yield
    finally:  # hooks never outlive the block, also when the forward raises
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def capturing(
    model: nn.Module, sites: Sequence[str], stop_early: bool = False, detach: bool = True
) -> Iterator[dict[str, torch.Tensor]]:
    """Fill a dict {site: activation} during the forward passes run inside the block.

    With `stop_early`, the forward pass ends as soon as every site has been read (the
    block's forward call then returns nothing useful; use the dict). A site read twice
    keeps its latest value.
    """
    names = list(dict.fromkeys(sites))
    acts: dict[str, torch.Tensor] = {}

    def reader(name: str):
        def read(act: torch.Tensor) -> None:
            acts[name] = act.detach() if detach else act
            if stop_early and len(acts) == len(names):
                raise _StopForward

        return read

    with _hooks(model, {name: reader(name) for name in names}):
        try:
            yield acts
        except _StopForward:
            pass


def capture(
    model: nn.Module, sites: Sequence[str] | str, *args, stop_early: bool = False, grad: bool = False, **kwargs
) -> dict[str, torch.Tensor]:
    """Run `model(*args, **kwargs)` once and return {site: activation} for each site.

    `stop_early=True` skips everything after the last site needed (useful to cache a
    middle layer of a large model). With `grad=False` (default) no graph is kept.
    """
    sites = [sites] if isinstance(sites, str) else list(sites)
    with torch.set_grad_enabled(grad), capturing(model, sites, stop_early, detach=not grad) as acts:
        model(*args, **kwargs)
    missing = [s for s in sites if s not in acts]
    if missing:
        raise SiteError(
            f"sites {missing} exist but were not run by this forward pass "
            "(the module is never called with these inputs)"
        )
    return {s: acts[s] for s in sites}


def _fit(site: str, act: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`value` cast to the activation's dtype/device and broadcast over its leading dims."""
    trailing = tuple(act.shape[act.dim() - value.dim() :]) if value.dim() <= act.dim() else None
    if trailing != tuple(value.shape):
        raise SiteError(
            f"patch at site {site!r}: expected shape {tuple(act.shape)} "
            f"(or a trailing part of it, to broadcast), got {tuple(value.shape)}"
        )
    value = value.to(dtype=act.dtype, device=act.device)
    return value if value.shape == act.shape else value.expand(act.shape).contiguous()


@contextlib.contextmanager
def patch(model: nn.Module, patches: Mapping[str, PatchValue]) -> Iterator[None]:
    """Replace activations during forward passes inside the block.

    Each value is a tensor (the new activation, or a trailing part of its shape to
    broadcast, e.g. a mean over the batch) or a function from the activation to the new one.
    """

    def patcher(name: str, value: PatchValue):
        def apply(act: torch.Tensor) -> torch.Tensor:
            new = value(act) if callable(value) else value
            if not isinstance(new, torch.Tensor):
                raise SiteError(f"patch function at site {name!r} returned {type(new).__name__}, expected a tensor")
            return _fit(name, act, new)

        return apply

    with _hooks(model, {name: patcher(name, value) for name, value in patches.items()}):
        yield


def capture_rows(model: nn.Module, sites: Sequence[str], rows: torch.Tensor, batch: int = 8) -> dict[str, torch.Tensor]:
    """Every token's activation at each site over token rows (n, ctx), read batch by batch
    with an early stop, as (n * ctx, width) float32 tensors on the CPU."""
    device = model_device(model)
    out: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    for start in range(0, len(rows), batch):
        acts = capture(model, sites, rows[start : start + batch].to(device), stop_early=True)
        for s in sites:
            out[s].append(acts[s].float().cpu().reshape(-1, acts[s].shape[-1]))
    return {s: torch.cat(v) for s, v in out.items()}
