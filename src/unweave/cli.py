"""The `unweave` command: parses arguments, calls the library, prints where results went."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from unweave import progress

app = typer.Typer(help="unweave: reverse-engineer trained networks into descriptions you can check.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
train_app = typer.Typer(help="Train a model of the zoo (toy models with known answers).", no_args_is_help=True)
app.add_typer(train_app, name="train")
console = Console(stderr=True)


@app.command(epilog="Example: unweave demo --out runs/demo")
def demo(out: Path = typer.Option(Path("runs/demo"), help="Output directory (reused if it holds a finished run)."),
         steps: int = typer.Option(None, help="Training steps (default: the zoo's setting).")) -> None:
    """Train (or reuse) a modular-addition transformer, recover its Fourier algorithm, write report.html."""
    from unweave.demo import run_demo
    from unweave.zoo.modadd import ModAddConfig

    cfg = ModAddConfig() if steps is None else ModAddConfig(steps=steps)
    with progress.enabled():
        result = run_demo(out, cfg)
    console.print(f"[bold green]report[/] {result.report}\n[bold green]results[/] {result.results}")
    console.print(f"key frequencies {result.analysis.key_freqs}; "
                  f"restricted test accuracy {result.analysis.restricted_test_acc:.2%}; "
                  f"excluded / train loss {result.analysis.excluded_over_train:.3g}")


@train_app.command("modadd", epilog="Example: unweave train modadd --p 59 --steps 3000 --out runs/modadd")
def train_modadd(out: Path = typer.Option(Path("runs/modadd"), help="Run directory; an interrupted run there resumes."),
                 p: int = typer.Option(None, help="Modulus (an odd prime)."),
                 frac_train: float = typer.Option(None, help="Fraction of all pairs used for training."),
                 lr: float = typer.Option(None, help="AdamW learning rate."),
                 weight_decay: float = typer.Option(None, help="AdamW weight decay."),
                 steps: int = typer.Option(None, help="Full-batch training steps."),
                 seed: int = typer.Option(None, help="Seed for the split and the initialisation."),
                 checkpoint_every: int = typer.Option(None, help="Save a checkpoint every this many steps.")) -> None:
    """Train the one-layer modular-addition transformer (a + b mod p), saving checkpoints."""
    from unweave.zoo.modadd import ModAddConfig, train

    given = {k: v for k, v in dict(p=p, frac_train=frac_train, lr=lr, weight_decay=weight_decay, steps=steps,
                                    seed=seed, checkpoint_every=checkpoint_every).items() if v is not None}
    cfg = ModAddConfig(**given)
    with progress.enabled():
        run = train(cfg, out)
    final = run.history[-1]
    console.print(f"[bold green]trained[/] {run.dir}: step {final['step']}, train loss {final['train_loss']:.3g}, "
                  f"test accuracy {final['test_acc']:.2%}")


@app.command(epilog="Example: unweave cache --model smollm2-135m --site model.layers.15 --tokens 100000 "
                    "--out runs/cache-l15")
def cache(out: Path = typer.Option(..., help="Store directory; an interrupted write there resumes."),
          site: list[str] = typer.Option(..., help="Site to store (repeat for several), e.g. model.layers.15."),
          model: str = typer.Option("smollm2-135m", help="Known model name or a local Hugging Face directory."),
          text: str = typer.Option("shakespeare", help="Text corpus."),
          tokens: int = typer.Option(100_000, help="How many tokens to run through the model."),
          ctx_len: int = typer.Option(128, help="Context length of each row."),
          batch_size: int = typer.Option(8, help="Rows per forward pass."),
          shard_tokens: int = typer.Option(65_536, help="Tokens per shard file."),
          dtype: str = typer.Option("float32", help="Stored dtype: float32, float16 or bfloat16.")) -> None:
    """Run a model over text and write activations at sites to a sharded safetensors store."""
    from unweave.hf import load_model, load_text
    from unweave.store import write_store

    with progress.enabled():
        loaded = load_model(model)
        rows = load_text(text, loaded.tokenizer, ctx_len, max_tokens=tokens)
        store = write_store(loaded.model, site, rows, out, model_name=model, shard_tokens=shard_tokens,
                            batch_size=batch_size, dtype=dtype)
    widths = ", ".join(f"{s} ({store.width(s)})" for s in store.sites)
    console.print(f"[bold green]stored[/] {store.n_tokens} tokens at {widths} in {len(store.shards)} shards: {out}")


@app.command(epilog="Examples: unweave llc runs/demo/modadd --checkpoint all --out runs/llc;  "
                    "unweave llc rrr:5,3,5:1 --nbeta 10000 --epsilon 1e-4;  unweave llc rrr:5,3,5:1 --calibrate")
def llc(target: str = typer.Argument(..., help="A modadd run directory, or rrr:M,H,N:r, dln:H0,...,HL:r, "
                                               "normal-crossing:p1,p2,..."),
        out: Path = typer.Option(Path("runs/llc"), help="Where llc.json and llc.html go."),
        checkpoint: str = typer.Option("final", help="For a run: 'final', a step, or 'all' (the LLC trajectory)."),
        calibrate: bool = typer.Option(False, "--calibrate", help="Sweep epsilon x n*beta and pick settings."),
        epsilon: float = typer.Option(1e-4, help="SGLD step size."),
        nbeta: float = typer.Option(None, help="Inverse temperature n*beta (default n / ln n)."),
        localization: float = typer.Option(100.0, help="Pull gamma towards the trained weights."),
        chains: int = typer.Option(4, help="Independent chains (run vectorised)."),
        draws: int = typer.Option(200, help="Draws per chain."),
        burn_in: int = typer.Option(0, help="Steps discarded before the draws."),
        batch_size: int = typer.Option(None, help="SGLD batch size (default: full batch)."),
        params: str = typer.Option(None, help="Sample only parameters under this name, e.g. blocks.0.attn."),
        rmsprop: bool = typer.Option(False, "--rmsprop", help="RMSProp-preconditioned SGLD."),
        seed: int = typer.Option(0, help="Seed: chain c's noise and batches depend only on (seed, c).")) -> None:
    """Estimate the local learning coefficient (an effective parameter count) by SGLD, with diagnostics."""
    from unweave.slt import SGLDConfig
    from unweave.slt.run import run_llc

    cfg = SGLDConfig(epsilon=epsilon, nbeta=nbeta, localization=localization, chains=chains, draws=draws,
                     burn_in=burn_in, rmsprop=rmsprop, seed=seed)
    with progress.enabled():
        result = run_llc(target, out, cfg, checkpoint=checkpoint, batch_size=batch_size, params=params,
                         calibrate_grid=calibrate)
    console.print(f"{result.summary}\n[bold green]report[/] {result.report}\n[bold green]results[/] {result.results}")


@app.command(epilog="Examples: unweave detect --task planted-rule --out runs/detect;  "
                    "unweave detect --task backdoor-mnist-corner --task backdoor-digits-pixel --poison-rate 0.1")
def detect(task: list[str] = typer.Option(["planted-rule"], help="Task (repeat for several): planted-rule, or "
                                          "backdoor-{mnist,fashion,digits}-{corner,blend,pixel}."),
           out: Path = typer.Option(Path("runs/detect"), help="Where detect.json and detect.html go."),
           detector: list[str] = typer.Option(None, help="Detectors (repeat; default all): mahalanobis, spectral, "
                                              "que, lof, isolation_forest."),
           poison_rate: float = typer.Option(0.05, help="Fraction of backdoor training images poisoned."),
           seed: int = typer.Option(0, help="Seed for data splits, training and detectors.")) -> None:
    """Flag inputs a model handles by an unusual mechanism; AUROC of each detector vs raw-input baselines."""
    from unweave.anomaly.report import run_detect

    with progress.enabled():
        result = run_detect(task, out, detector or None, poison_rate, seed)
    for row in result.summary:
        console.print(f"{row['task']}: raw input {row['best raw input']}; activations {row['best activations']}")
    console.print(f"[bold green]report[/] {result.report}\n[bold green]results[/] {result.results}")


@app.command(epilog="Examples: unweave scrub modadd --out runs/scrub-modadd;  unweave scrub induction;  "
                    "unweave scrub my_hypothesis.py --unclaimed mean")
def scrub(target: str = typer.Argument(..., help="A built-in case (cancellation, modadd, induction, "
                                       "smollm2-induction) or a Python file defining `model`, `inputs` and "
                                       "`hypotheses` (optional `labels`), or `case`."),
          out: Path = typer.Option(Path("runs/scrub"), help="Where scrub.json and scrub.html go."),
          examples: int = typer.Option(512, help="Reference inputs scrubbed."),
          pairs: int = typer.Option(512, help="(base, source) pairs for interchange intervention accuracy."),
          unclaimed: str = typer.Option(None, help="Override what unclaimed parts become: resample, mean or zero."),
          batch_size: int = typer.Option(128, help="Inputs per forward pass."),
          modadd_run: Path = typer.Option(Path("runs/demo/modadd"), help="Run directory for the modadd case."),
          seed: int = typer.Option(0, help="Seed for resampling (and for training the induction case).")) -> None:
    """Test hypotheses by causal scrubbing and interchange interventions, scored per example by KL."""
    from unweave.hypotheses.report import run_scrub

    with progress.enabled():
        result = run_scrub(target, out, examples, pairs, unclaimed, batch_size, seed, modadd_run)
    for row in result.rows:
        iia = f", IIA {row['IIA']:.3f}" if "IIA" in row else ""
        console.print(f"{row['hypothesis']}: loss recovered {row['loss recovered']:.3f}, median KL "
                      f"{row['median KL']:.3g}{iia}")
    console.print(f"[bold green]report[/] {result.report}\n[bold green]results[/] {result.results}")


sae_app = typer.Typer(help="Sparse dictionaries on stored activations.", no_args_is_help=True)
app.add_typer(sae_app, name="sae")


@sae_app.command("train", epilog="Examples: unweave sae train --store runs/cache-l15 --site model.layers.15 "
                                 "--k 16 --k 32 --width 4608 --out runs/sae;  unweave sae train --live --site "
                                 "model.layers.5.mlp:input --target-site model.layers.5.mlp --tokens 200000")
def sae_train(site: str = typer.Option(..., help="Site the dictionary reads (in the store, or in the model)."),
              store: Path = typer.Option(None, help="Activation store (from `unweave cache`)."),
              live: bool = typer.Option(False, help="Compute activations from the model while training (no store)."),
              model: str = typer.Option("smollm2-135m", help="With --live: known model name or local HF folder."),
              target_site: str = typer.Option(None, help="Train transcoders from --site (an MLP's input) to this "
                                              "site (its output)."),
              out: Path = typer.Option(Path("runs/sae"), help="One SAELens-layout folder per dictionary goes here; "
                                       "an interrupted run there resumes."),
              architecture: str = typer.Option("topk", help="relu, topk, batchtopk or jumprelu."),
              k: list[int] = typer.Option([32], help="Latents per example (repeat for a sweep)."),
              width: list[int] = typer.Option(None, help="Number of latents (repeat for a sweep; default 8 x d)."),
              tokens: int = typer.Option(None, help="Training tokens (default: one pass over the store; "
                                         "200k with --live)."),
              text_tokens: int = typer.Option(262_144, help="With --live: tokens of Shakespeare cycled through."),
              batch_size: int = typer.Option(4096, help="Activations per step."),
              lr: float = typer.Option(1e-3, help="Adam learning rate (with warm-up and a final decay)."),
              l1: float = typer.Option(1e-3, help="Sparsity penalty for relu and jumprelu."),
              max_norm_ratio: float = typer.Option(10.0, help="Leave out (and pass through when spliced) tokens "
                                                   "whose norm exceeds this multiple of the median: massive "
                                                   "activations. 0 keeps every token.")) -> None:
    """Train dictionaries (a sweep of k and widths in one pass) on stored or live activations."""
    ratio = max_norm_ratio or None
    from unweave.dictionaries import SAEConfig
    from unweave.dictionaries.run import train_from_store, train_live
    from unweave.sites import capture

    if (store is None) == (not live):
        raise ValueError("give either --store DIR or --live (activations computed from --model)")
    with progress.enabled():
        if live:
            from unweave.hf import load_model

            lm, tokenizer = load_model(model)
            d = capture(lm, site, tokenizer("To be", return_tensors="pt").input_ids, stop_early=True)[site].shape[-1]
            base = SAEConfig(d_in=d, n_latents=(width or [8 * d])[0], architecture=architecture, k=k[0], l1=l1)
            folders = train_live(model, site, base, out, tokens or 200_000, ks=k, widths=width,
                                 text_tokens=text_tokens, batch_size=batch_size, lr=lr, target_site=target_site,
                                 max_norm_ratio=ratio)
        else:
            from unweave.store import ActivationStore

            d = ActivationStore(store).width(site)
            base = SAEConfig(d_in=d, n_latents=(width or [8 * d])[0], architecture=architecture, k=k[0], l1=l1)
            folders = train_from_store(store, site, base, out, ks=k, widths=width, tokens=tokens,
                                       batch_size=batch_size, lr=lr, target_site=target_site,
                                       max_norm_ratio=ratio)
    console.print("\n".join(f"[bold green]saved[/] {f}" for f in folders))


@sae_app.command("eval", epilog="Example: unweave sae eval runs/sae/topk-k32-w4608 --out runs/sae-eval")
def sae_eval(folders: list[Path] = typer.Argument(..., help="Dictionary folders (cfg.json + sae_weights.safetensors)."),
             out: Path = typer.Option(Path("runs/sae-eval"), help="Where sae_eval.json and sae_eval.html go.")) -> None:
    """FVU, L0, dead/dense latents, density histogram, spliced KL and CE loss recovered, top snippets."""
    from unweave.dictionaries.run import eval_report

    with progress.enabled():
        path = eval_report(folders, out)
    console.print(f"[bold green]report[/] {path}")


def main() -> None:
    """Entry point: user errors (bad names, values, missing packages) print one line, not a traceback."""
    from unweave.hf import MissingPackageError

    try:
        app()
    except (ValueError, FileNotFoundError, MissingPackageError) as err:  # LLCError, SiteError, StoreError too
        console.print(f"[bold red]error:[/] {err}")
        raise SystemExit(2) from None
