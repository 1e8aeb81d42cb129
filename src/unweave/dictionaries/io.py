"""Dictionaries on disk in the SAELens layout: a folder with cfg.json and
sae_weights.safetensors (W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec), so
files move between unweave and that ecosystem. What differs between architectures (its
cfg fields and tensors) is the architecture's own (see `architectures`)."""

from __future__ import annotations

from pathlib import Path

from unweave.artifacts import read_json, read_tensors, write_json, write_tensors
from unweave.dictionaries.architectures import from_saelens
from unweave.dictionaries.sae import SAE, SAEConfig

CFG, WEIGHTS = "cfg.json", "sae_weights.safetensors"


def save(sae: SAE, folder: Path, metadata: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arch = sae.arch
    cfg = {
        "architecture": arch.saelens,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.n_latents,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {**(metadata or {}), "max_input_norm": sae.max_input_norm},
    }
    if sae.cfg.kind == "transcoder":  # SAELens-style fields plus what a transcoder needs to load here
        cfg.update(
            {"d_out": sae.cfg.width_out, "is_transcoder": True, "skip": sae.cfg.skip, "apply_b_dec_to_input": False}
        )
    cfg.update(arch.saelens_cfg(sae))
    tensors = {k: v for k, v in sae.state_dict().items() if k not in arch.state}
    tensors.update(arch.saelens_tensors(sae))
    write_json(folder / CFG, cfg)
    write_tensors(folder / WEIGHTS, tensors)
    return folder


def _check_folder(folder: Path) -> None:
    if not (folder / CFG).exists() or not (folder / WEIGHTS).exists():
        raise FileNotFoundError(f"{folder} is not a dictionary folder: it needs {CFG} and {WEIGHTS}")


def load(folder: Path) -> SAE:
    folder = Path(folder)
    _check_folder(folder)
    cfg = read_json(folder / CFG)
    try:
        arch = from_saelens(cfg.get("architecture", "standard"))
    except ValueError as e:
        raise ValueError(f"{folder / CFG}: {e}") from None
    transcoder = bool(cfg.get("is_transcoder", False))
    if cfg.get("apply_b_dec_to_input", True) is transcoder or cfg.get("normalize_activations", "none") != "none":
        raise ValueError(
            f"{folder / CFG}: only apply_b_dec_to_input=true (false for transcoders) and "
            "normalize_activations='none' are supported"
        )
    fields = {"k": 1, "l1": 0.0}  # training settings the file need not record
    fields.update(arch.config_from_saelens(cfg))
    if transcoder:
        fields.update({"kind": "transcoder", "d_out": cfg["d_out"], "skip": cfg.get("skip", False)})
    sae = SAE(SAEConfig(d_in=cfg["d_in"], n_latents=cfg["d_sae"], architecture=arch.name, **fields))
    weights = read_tensors(folder / WEIGHTS)
    try:
        weights.update(arch.state_from_saelens(weights))
    except ValueError as e:
        raise ValueError(f"{folder / WEIGHTS}: {e}") from None
    expected = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items() if k in expected}
    if got != expected:
        raise ValueError(f"{folder / WEIGHTS}: tensors {got} do not match the config's {expected}")
    sae.load_state_dict({k: weights[k] for k in expected})
    sae.max_input_norm = cfg.get("metadata", {}).get("max_input_norm")
    return sae


def metadata(folder: Path) -> dict:
    """The metadata saved with a dictionary (model name, site, store, training tokens)."""
    _check_folder(Path(folder))
    return read_json(Path(folder) / CFG).get("metadata", {})


def source(folder: Path, ctx_len: int | None = None) -> tuple[dict, int]:
    """What a dictionary reads: its metadata (with `name`, the folder's name) and the context
    length to read text in (`ctx_len`, else the training one, else 128)."""
    meta = {**metadata(folder), "name": Path(folder).name}
    if "model_name" not in meta or "hook_name" not in meta:
        raise ValueError(
            f"{folder}/cfg.json has no metadata.model_name / metadata.hook_name: unweave cannot tell which "
            "model and site the dictionary reads (dictionaries trained by `unweave sae train` record both)"
        )
    return meta, ctx_len or training_ctx_len(meta) or 128


def training_ctx_len(meta: dict) -> int | None:
    """The context length a dictionary was trained at: recorded (live training) or that of
    its store, if the store is still there."""
    from unweave.store import ActivationStore

    if meta.get("ctx_len"):
        return meta["ctx_len"]
    store = meta.get("store")
    if store and (Path(store) / "manifest.json").exists():
        return ActivationStore(Path(store)).manifest["ctx_len"]
    return None
