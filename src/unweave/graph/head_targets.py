"""The targets whose units are a zoo transformer's attention heads (`unweave graph induction
--units heads`, `unweave graph two-circuits --units heads`): each head's output at every
position, ablated to its mean and judged by its total effect (the gradient runs through later
heads), so that a head acting through another (K- or V-composition) is not read as idle."""

from __future__ import annotations

import torch

from unweave.graph.effects import EffectData, centred_logits
from unweave.graph.head_units import transformer_heads
from unweave.graph.targets import Target
from unweave.graph.units import SeveralUnits
from unweave.zoo.two_circuits import CIRCUITS, TwoCircuits, TwoCircuitsConfig, sample_tokens


def head_target(name: str, examples: int, seed: int) -> Target:
    """`induction` or `two-circuits` (`targets.HEAD_TARGETS`) with its heads as units."""
    return induction_heads_target(examples, seed) if name == "induction" else two_circuits_target(examples, seed)


def induction_heads_target(examples: int, seed: int) -> Target:
    """The induction toy's attention heads as units, judged by their total effects on the
    centred logits at the positions the repeat makes predictable. No answer is scored on the
    page; each head's previous-token and induction scores (from its attention pattern) are
    in its hover text, and the test checks that the circuit's heads share a module."""
    from unweave.graph import induction

    case = induction.induction_case(min(examples, 256), seed)
    positions = case.positions

    def output(logits: torch.Tensor) -> torch.Tensor:
        return centred_logits(logits[:, positions]).flatten(1)

    data = EffectData(case.model, case.tokens, SeveralUnits(transformer_heads(case.model)), output, total=True)
    scores = case.heads
    heads = case.model.cfg.n_heads

    def describe(unit: int) -> str:
        layer, head = divmod(unit, heads)
        return (
            f"L{layer}.H{head}: previous-token score {float(scores['previous_token'][layer, head]):.2f}, "
            f"induction score {float(scores['induction'][layer, head]):.2f} (attention to the token after the "
            "current token's earlier copy)"
        )

    note = (
        f"the induction toy (a two-layer attention-only transformer, seed {seed}): its {data.n_units} attention "
        f"heads as units, each head's output at every position, ablated to its mean; total effects (the gradient "
        f"runs through later heads) on the centred logits at the {len(positions)} positions the repeat makes "
        f"predictable; {len(case.tokens)} sequences whose second half repeats the first"
    )
    return Target("induction (heads)", data, note, describe, None, None, {})


def two_circuits_target(examples: int, seed: int) -> Target:
    """The planted two-circuit transformer's heads as units, judged by their total effects on its
    two tasks' outputs at every position after BOS: the logits of each circuit's tokens centred
    among themselves (A's next token among A's, B's token two back among B's; centred over the
    whole vocabulary, a logit one circuit raises would shift the other's by the mean). Each
    head's planted circuit is the known answer."""
    cfg = TwoCircuitsConfig(seed=seed)
    model = TwoCircuits(cfg).eval()
    tokens = sample_tokens(min(examples, 1024), cfg, seed + 1)
    blocks = [cfg.circuit_tokens(c) for c in range(len(CIRCUITS))]

    def output(logits: torch.Tensor) -> torch.Tensor:
        return torch.cat([centred_logits(logits[:, 1:, block]).flatten(1) for block in blocks], dim=1)

    data = EffectData(model, tokens, SeveralUnits(transformer_heads(model)), output, total=True)
    note = (
        f"a planted attention-only transformer (seed {seed}): circuit {CIRCUITS[0]} and circuit {CIRCUITS[1]}, "
        f"each two heads per layer, over one residual stream of {cfg.d_model} dimensions (the positions, read by "
        "both, overlap both circuits' directions); "
        f"{cfg.tokens} tokens per circuit; units: its {data.n_units} heads, each ablated to its mean at every "
        f"position, judged by total effects on each circuit's logits centred among its own tokens; "
        f"{len(tokens)} sequences (BOS, {cfg.length} distinct tokens, the same again)"
    )
    truth = model.head_circuit.tolist()
    context = {"circuits": dict(enumerate(CIRCUITS))}
    return Target("two-circuits (heads)", data, note, lambda u: model.head_roles[u], "circuit", truth, context)
