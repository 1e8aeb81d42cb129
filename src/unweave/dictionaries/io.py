"""Dictionaries on disk in the SAELens layout: a folder with cfg.json and
sae_weights.safetensors (W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec), so
files move between unweave and that ecosystem."""

from __future__ import annotations

import json
from pathlib import Path

from unweave.artifacts import read_tensors, write_tensors
from unweave.dictionaries.sae import SAE, SAEConfig

CFG, WEIGHTS = "cfg.json", "sae_weights.safetensors"
# BatchTopK is a JumpReLU at inference (one threshold for every latent), and is saved as one
TO_SAELENS = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}
FROM_SAELENS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}


def save(sae: SAE, folder: Path, metadata: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"architecture": TO_SAELENS[sae.cfg.architecture], "d_in": sae.cfg.d_in, "d_sae": sae.cfg.n_latents,
           "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
           "metadata": {**(metadata or {}), "max_input_norm": sae.max_input_norm}}
    tensors = {k: v for k, v in sae.state_dict().items() if k not in ("log_threshold", "threshold")}
    if sae.cfg.kind == "transcoder":  # SAELens-style fields plus what a transcoder needs to load here
        cfg.update({"d_out": sae.cfg.width_out, "is_transcoder": True, "skip": sae.cfg.skip,
                    "apply_b_dec_to_input": False})
    if sae.cfg.architecture == "topk":
        cfg["k"] = sae.cfg.k
    elif sae.cfg.architecture == "batchtopk":
        tensors["threshold"] = sae.threshold.expand(sae.cfg.n_latents).clone()
    elif sae.cfg.architecture == "jumprelu":
        tensors["threshold"] = sae.log_threshold.detach().exp()
    else:
        cfg["l1_coefficient"] = sae.cfg.l1
    (folder / CFG).write_text(json.dumps(cfg, indent=2))
    write_tensors(folder / WEIGHTS, tensors)
    return folder


def load(folder: Path) -> SAE:
    folder = Path(folder)
    if not (folder / CFG).exists() or not (folder / WEIGHTS).exists():
        raise FileNotFoundError(f"{folder} is not a dictionary folder: it needs {CFG} and {WEIGHTS}")
    cfg = json.loads((folder / CFG).read_text())
    arch = cfg.get("architecture", "standard")
    if arch not in FROM_SAELENS:
        raise ValueError(f"{folder / CFG}: architecture {arch!r} cannot be loaded yet; known: {', '.join(FROM_SAELENS)}")
    transcoder = bool(cfg.get("is_transcoder", False))
    if cfg.get("apply_b_dec_to_input", True) is transcoder or cfg.get("normalize_activations", "none") != "none":
        raise ValueError(f"{folder / CFG}: only apply_b_dec_to_input=true (false for transcoders) and "
                         "normalize_activations='none' are supported")
    extra = {"kind": "transcoder", "d_out": cfg["d_out"], "skip": cfg.get("skip", False)} if transcoder else {}
    sae = SAE(SAEConfig(d_in=cfg["d_in"], n_latents=cfg["d_sae"], architecture=FROM_SAELENS[arch],
                        k=cfg.get("k", 1), l1=cfg.get("l1_coefficient", 0.0), **extra))
    weights = read_tensors(folder / WEIGHTS)
    if arch == "jumprelu":  # SAELens stores the threshold itself
        if "threshold" not in weights:
            raise ValueError(f"{folder / WEIGHTS}: a jumprelu dictionary needs a 'threshold' tensor")
        weights["log_threshold"] = weights.pop("threshold").clamp(min=1e-12).log()
    expected = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items() if k in expected}
    if got != expected:
        raise ValueError(f"{folder / WEIGHTS}: tensors {got} do not match the config's {expected}")
    sae.load_state_dict({k: weights[k] for k in expected})
    sae.max_input_norm = cfg.get("metadata", {}).get("max_input_norm")
    return sae


def metadata(folder: Path) -> dict:
    """The metadata saved with a dictionary (model name, site, store, training tokens)."""
    return json.loads((Path(folder) / CFG).read_text()).get("metadata", {})
