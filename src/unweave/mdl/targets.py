"""What `unweave mdl` describes: `tms:N,M` (a toy model of superposition it trains, with a
sweep of dictionary widths) or a modular-addition run folder (`unweave train modadd` or a
demo's `modadd/`, with the Fourier basis and the Fourier program). Each resolves to the
network and data (`SiteData`), the bases to compare, and the known answer where there is one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from unweave import progress
from unweave.dictionaries import io
from unweave.dictionaries.sae import SAE, SAEConfig
from unweave.dictionaries.swaps import swap_wasted_latent
from unweave.dictionaries.train import TrainConfig, train_many
from unweave.mdl.bases import Analytic, Basis, Dictionary, LookupTable, Neurons, pca
from unweave.mdl.describe import SiteData
from unweave.mdl.program import fourier_spec_bits, sum_functions
from unweave.mdl.streamed import CALIBRATION_TOKENS, StoreSource, calibration_data, open_dictionaries, store_bases
from unweave.sites import capture
from unweave.zoo import fourier
from unweave.zoo.modadd import TrainedModAdd, answer_logits, make_data
from unweave.zoo.superposition import ToyModel, sample_features, train_toy

TARGETS = (
    "tms:N,M (e.g. tms:20,5), a modular-addition run folder (unweave train modadd, or runs/demo/modadd), or "
    "dictionary folders (unweave sae train) of one site with --store"
)
TMS_SPARSITY = 0.05  # the toy's default: each feature active with probability 0.05
TMS_SAE_STEPS = 2000
TMS_SWAP_EVERY = 100  # steps between swap moves
TMS_SWAP_UNTIL = 0.6  # no swaps in the last 40% of training: the moved latents settle
REPRESENTED = 0.5  # a feature is represented when its column of W has at least half the largest norm


@dataclass
class Target:
    name: str
    data: SiteData
    bases: list[Basis]
    measure_note: str
    known: dict = field(default_factory=dict)  # the known answer and what it is checked with
    modadd: tuple | None = None  # (model, ModAddData, p, key frequencies) for the Fourier program
    stream: StoreSource | None = None  # bits counted over a store (data then only calibrates)
    store_info: dict = field(default_factory=dict)


def resolve(
    names: list[str],
    examples: int,
    seed: int,
    restarts: int = 3,
    store: Path | None = None,
    calibration_tokens: int = CALIBRATION_TOKENS,
) -> Target:
    dictionaries = [Path(n) for n in names if (Path(n) / io.CFG).exists()]
    if store is not None or dictionaries:
        if store is None:
            raise ValueError(
                "dictionary folders are described over an activation store: add --store DIR (unweave cache of "
                "the dictionaries' model and site)"
            )
        if len(dictionaries) < len(names):
            others = [n for n in names if Path(n) not in dictionaries]
            raise ValueError(f"with --store every TARGET must be a dictionary folder; these are not: {others}")
        return store_target(dictionaries, store, calibration_tokens)
    if len(names) != 1:
        raise ValueError(f"give one TARGET ({TARGETS}), or dictionary folders with --store; got {names}")
    name = names[0]
    if name.startswith("tms:"):
        return tms_target(*_tms_sizes(name), examples=examples, seed=seed, restarts=restarts)
    path = Path(name)
    if path.is_dir() and TrainedModAdd.is_run(path):
        return modadd_target(path)
    if path.is_dir() and TrainedModAdd.is_run(path / "modadd"):
        return modadd_target(path / "modadd")
    raise ValueError(f"unknown mdl target {name!r}; use {TARGETS}")


def _tms_sizes(name: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in name[4:].split(","))
    except ValueError:
        raise ValueError(
            f"tms target must be tms:N,M with integers N features and M dimensions, got {name!r}"
        ) from None
    if not 1 <= m < n:
        raise ValueError(f"tms:N,M needs 1 <= M < N (features superposed in fewer dimensions), got {name!r}")
    return n, m


def tms_widths(n_features: int, d_hidden: int) -> list[int]:
    """The sweep, a rule of N and M alone: every width from M to N (the toy may represent far
    fewer than N features: 12 of 24 in 3 dimensions at seed 0, 2 of 8 in 1), then 2N and 4N."""
    return sorted(set(range(d_hidden, n_features + 1)) | {2 * n_features, 4 * n_features})


def tms_target(n_features: int, d_hidden: int, examples: int = 4096, seed: int = 0, restarts: int = 3) -> Target:
    model = train_toy(n_features, d_hidden, p_active=TMS_SPARSITY, seed=seed)
    x = sample_features(examples, n_features, TMS_SPARSITY, torch.Generator().manual_seed(seed + 7))
    data = SiteData(model, x, "hidden", lambda m, z: m(z), measure="output_fvu")
    widths = tms_widths(n_features, d_hidden)
    saes = train_tms_dictionaries(model, n_features, widths, seed, restarts)
    norms = model.W.detach().norm(dim=0)
    represented = norms >= REPRESENTED * norms.max()
    bases: list[Basis] = [Neurons(d_hidden), LookupTable(data.rows())]
    bases += [Dictionary(sae, name="sae-topk1 (pursuit codes)", codes="pursuit") for sae in saes]
    known = {
        "n_features": n_features,
        "represented_features": int(represented.sum()),
        "true_directions": model.W.detach().T[represented],
        "rule": "the shortest description should be the dictionary whose width is the number of features the toy "
        "represents (columns of W with at least half the largest norm; N when it represents all), and its "
        "decoder should hold their directions (mean max cosine >= 0.99)",
    }
    note = (
        f"toy model of superposition, {n_features} features (each active with probability {TMS_SPARSITY}) in "
        f"{d_hidden} dimensions; described: the hidden activations h = W x of {examples} samples; distortion: the "
        "toy's output change as a fraction of its variance (output FVU)"
    )
    return Target(f"tms:{n_features},{d_hidden}", data, bases, note, known)


def train_tms_dictionaries(
    model: ToyModel, n_features: int, widths: list[int], seed: int, restarts: int = 3
) -> list[SAE]:
    """TopK (k = 1) dictionaries of each width on the toy's nonzero hidden activations: one
    latent per example learns the feature directions; their codes are then found by pursuit.
    Gradient steps alone now and then leave a feature without a latent and another latent
    wasted, so every `TMS_SWAP_EVERY` steps, until `TMS_SWAP_UNTIL` of training, each dictionary
    makes one swap move (`dictionaries.swaps`: a wasted latent moved onto poorly explained
    examples when that lowers the one-latent error). Each width is still trained `restarts`
    times from different seeds, and every run is a candidate description: the shortest one at
    a width is that width's description length (MDL chooses among them as it chooses among
    widths; the true features are never looked at)."""
    d = model.W.shape[0]
    gen = torch.Generator().manual_seed(seed + 11)
    swap_gen = torch.Generator().manual_seed(seed + 13)  # its own stream: training's batches stay the same

    def hidden(n: int, g: torch.Generator) -> torch.Tensor:
        z = sample_features(n, n_features, TMS_SPARSITY, g)
        return capture(model, "hidden", z[(z != 0).any(1)])["hidden"]

    def batches():
        while True:
            yield hidden(2048, gen)

    runs = [(w, r) for w in widths for r in range(restarts)]
    saes = [SAE(SAEConfig(d_in=d, n_latents=w, architecture="topk", k=1), seed=seed + 1000 * r + w) for w, r in runs]
    task = progress.Task(f"training {len(saes)} dictionaries (widths {widths})", TMS_SAE_STEPS, unit="steps")

    def on_step(step: int) -> None:
        task.advance()
        if (step + 1) % TMS_SWAP_EVERY == 0 and step + 1 <= TMS_SWAP_UNTIL * TMS_SAE_STEPS:
            x = hidden(8192, swap_gen)
            for sae in saes:
                swap_wasted_latent(sae, x, swap_gen)

    try:
        train_many(saes, batches(), TrainConfig(steps=TMS_SAE_STEPS, lr=3e-3, warmup=20), on_step=on_step)
    finally:
        task.close()
    return saes


PCA_RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def modadd_target(path: Path) -> Target:
    run = TrainedModAdd.open(path)
    cfg = run.config
    model = run.load()
    data_ = make_data(cfg)
    p = cfg.p
    freqs = fourier.analyse(model, data_, p).key_freqs
    data = SiteData(
        model, data_.tokens, "blocks.0.hook_resid_post", answer_logits, "kl", position=-1, labels=data_.labels
    )
    x = data.rows()
    bases: list[Basis] = [Neurons(x.shape[1]), LookupTable(x)]
    if freqs:  # a model that has not grokked may have no key frequencies: no Fourier description then
        functions = sum_functions(data_.tokens, p, freqs)
        spec = fourier_spec_bits(p, freqs)
        bases += [
            Analytic("fourier (codes from a+b)", functions, x, spec),
            Analytic("fourier (codes sent)", functions, x, spec, send_codes=True),
        ]
    bases += [pca(x, r) for r in PCA_RANKS if r <= x.shape[1]]
    note = (
        f"modular-addition transformer (p = {p}, key frequencies {freqs}); described: the residual stream at '=' "
        f"after the last block (blocks.0.hook_resid_post), {cfg.d_model} dims, all {p * p} pairs; distortion: "
        "mean KL of the answer distribution from the model's"
    )
    program = (model, data_, p, freqs) if freqs else None
    return Target(str(path), data, bases, note, {"key_freqs": freqs}, modadd=program)


def store_target(folders: list[Path], store: Path, calibration_tokens: int = CALIBRATION_TOKENS) -> Target:
    """Dictionaries of one site of a language model, described over an activation store
    beside neurons and PCA (see `mdl.streamed`)."""
    from unweave.hf import load_model

    found = open_dictionaries(folders, store)
    model = load_model(found.model_name).model.eval()
    data = calibration_data(found, model, calibration_tokens)
    source = found.source
    info = {
        "store": str(store),
        "model": found.model_name,
        "site": source.site,
        "store_tokens": source.store.n_tokens,
        "calibration_tokens": int(data.inputs.numel()),
        "held_out": found.held_out,
        "max_input_norm": source.max_norm,
    }
    held = "held out: no dictionary was trained on it" if found.held_out else "NOT held out: a dictionary trained on it"
    note = (
        f"{found.model_name}, activations at {source.site} over the {source.store.n_tokens:,} tokens of the store "
        f"{store} ({held}); "
        f"distortion: mean next-token KL on the store's first {data.inputs.numel():,} tokens run through the model "
        "(each step found there), bits counted over the whole store"
        + (
            f"; rows with norm above {source.max_norm:.4g} (the dictionaries' max_input_norm: massive activations) "
            "are left as they are for every description"
            if source.max_norm is not None
            else ""
        )
    )
    name = f"{len(folders)} dictionaries at {source.site}"
    return Target(name, data, store_bases(found, data.rows()), note, stream=source, store_info=info)
