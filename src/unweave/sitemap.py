"""`unweave sites MODEL`: every site of a model with the shape it has on a short probe
input, and the named parts unweave knows for its architecture (`unweave.anatomy`).
Writes its run folder (record.json, sites.json, sites.html)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unweave.configs import setting
from unweave.devices import DeviceConfig
from unweave.report import Report
from unweave.runs import Run, RunResult

# the same readers unweave.sites uses, so a listed shape is what capture() returns
from unweave.sites import SiteError, _first_tensor_of_input, _first_tensor_of_output


@dataclass(frozen=True)
class SitesConfig:
    model: str = setting(help="Known model name or a local Hugging Face folder.", argument=True)
    out: Path = setting(Path("runs/sites"), "Run folder: record.json, sites.json, sites.html.")
    tokens: int = setting(8, "Length of the probe input (token ids 1..tokens, one row).")
    device: DeviceConfig = setting(DeviceConfig(), "Where the probe forward runs, and the dtype of the weights.")

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise ValueError(f"tokens must be at least 1, got {self.tokens}")


def _shape(read: Any, *value: Any) -> list[int] | None:
    try:
        return list(read(*value).shape)
    except SiteError:  # called, but with no tensor there (e.g. a model output object)
        return None


def site_shapes(model: nn.Module, input_ids: torch.Tensor) -> list[dict]:
    """One row per site (each submodule's output, then its `:input`), in `named_modules`
    order: {"site", "shape" (a list, or None), "module" (class name), "called"}. A module
    the forward never calls (a ModuleList, an unused layer) has called=False; one called
    with no tensor there has called=True and shape None. A module called several times
    keeps its first call's shape."""
    named = [(name, module) for name, module in model.named_modules() if name]
    seen: dict[str, list[int] | None] = {}
    handles = []

    def hook(name: str, module: nn.Module) -> None:
        def on_input(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
            seen.setdefault(f"{name}:input", _shape(_first_tensor_of_input, args, kwargs))

        def on_output(_mod: nn.Module, _args: tuple, output: Any) -> None:
            seen.setdefault(name, _shape(_first_tensor_of_output, output))

        handles.append(module.register_forward_pre_hook(on_input, with_kwargs=True))
        handles.append(module.register_forward_hook(on_output))

    for name, module in named:
        hook(name, module)
    try:
        with torch.no_grad():
            model(input_ids)
    finally:  # hooks never outlive the probe, also when the forward raises
        for handle in handles:
            handle.remove()
    rows = []
    for name, module in named:
        for site in (name, f"{name}:input"):
            rows.append(
                {"site": site, "shape": seen.get(site), "module": type(module).__name__, "called": site in seen}
            )
    return rows


def _shown(row: dict) -> str:
    if not row["called"]:
        return "not called"
    return "no tensor" if row["shape"] is None else " x ".join(map(str, row["shape"]))


def _anatomy_rows(parts: Any, shapes: dict[str, dict]) -> list[dict]:
    """The named sites at the first and last layer, with their probe shapes."""
    rows = [{"part": "embed", "site": parts.embed}]
    for i in sorted({0, parts.n_layers - 1}):
        rows += [
            {"part": f"block({i})", "site": parts.block(i)},
            {"part": f"attn_out({i})", "site": parts.attn_out(i)},
            {"part": f"mlp({i})", "site": parts.mlp(i)},
            {"part": f"mlp_in({i})", "site": parts.mlp_in(i)},
        ]
    rows += [{"part": "final_norm", "site": parts.final_norm}, {"part": "unembed", "site": parts.unembed}]
    return [{**r, "shape": _shown(shapes[r["site"]]) if r["site"] in shapes else "?"} for r in rows]


def run_sites(cfg: SitesConfig) -> RunResult:
    from unweave.anatomy import AnatomyError, anatomy
    from unweave.hf import load_model

    run = Run(cfg.out, "sites", cfg, inputs=[cfg.model])
    model = load_model(cfg.model, device=cfg.device.torch_device, dtype=cfg.device.torch_dtype).model
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    probe = (torch.arange(cfg.tokens, device=device) % (vocab - 1) + 1)[None]  # ids 1..tokens, kept in the vocab
    rows = site_shapes(model, probe)
    model_type = getattr(model.config, "model_type", None)
    try:
        parts, unknown = anatomy(model), None
    except AnatomyError as err:
        parts, unknown = None, str(err)
    by_site = {r["site"]: r for r in rows}
    n_called = sum(r["called"] for r in rows)
    results = {
        "model": cfg.model,
        "model_type": model_type,
        "class": type(model).__name__,
        "probe_tokens": cfg.tokens,
        "anatomy": parts.to_dict() if parts else None,
        "sites": rows,
    }
    report = Report(f"unweave sites: {cfg.model}")
    summary = report.summary()
    summary.text(
        f"{type(model).__name__} ({model_type}): {len(rows)} sites, {n_called} run by a forward pass on "
        f"{cfg.tokens} tokens (batch 1). Shapes are (batch, position, ...) on that probe.",
        summary=True,
    )
    if parts:
        summary.text(
            f"{parts.n_layers} layers, {parts.n_heads} heads of width {parts.d_head}, d_model {parts.d_model}. "
            f"Head h of layer i is columns [h*{parts.d_head}, (h+1)*{parts.d_head}) of attn_out(i)."
        ).table(_anatomy_rows(parts, by_site))
    else:
        summary.text(unknown)
    report.section("Every site").text(
        "Each module's output (its name) and its input (name:input); 'not called': the forward never runs "
        "that module (a ModuleList, an unused part); 'no tensor': it runs, but holds no tensor unweave.sites can "
        "read there (e.g. a model output object)."
    ).table([{"site": r["site"], "module": r["module"], "shape": _shown(r)} for r in rows], sortable=True)
    headline = [f"{len(rows)} sites of {type(model).__name__} ({model_type}), {n_called} called on the probe"]
    if parts:
        headline.append(
            f"{parts.n_layers} layers x {parts.n_heads} heads (d_head {parts.d_head}), d_model {parts.d_model}; "
            f"residual stream after layer i: {parts.templates()['block']}"
        )
    return run.finish(results, report, headline)
