"""Hypotheses about a model's algorithm, tested by causal scrubbing and interchange interventions."""

from unweave.hypotheses.graph import Hypothesis, HypothesisError, Indices, Latents, Node, Projection
from unweave.hypotheses.score import InterchangeResult, ScrubResult, interchange, scrub

__all__ = [
    "Hypothesis",
    "HypothesisError",
    "Indices",
    "InterchangeResult",
    "Latents",
    "Node",
    "Projection",
    "ScrubResult",
    "interchange",
    "scrub",
]
