"""The Fourier claim about a grokked modular-addition model, written by hand.

    unweave scrub examples/hypotheses/modadd_fourier.py --out runs/scrub-fourier

Reads the run in $UNWEAVE_MODADD_RUN (default runs/demo/modadd, made by `unweave demo`).
"""

import os
from pathlib import Path

import torch

from unweave.hypotheses import Hypothesis, Node, Projection
from unweave.zoo import fourier
from unweave.zoo.modadd import TrainedModAdd, make_data

run = TrainedModAdd.open(Path(os.environ.get("UNWEAVE_MODADD_RUN", "runs/demo/modadd")))
model, p = run.load(), run.config.p
data = make_data(run.config)
inputs, labels = data.tokens, data.labels  # all p*p pairs "a b ="

# the key frequencies, read off the run's embedding (Fourier spectrum), not typed in
freqs = fourier.analyse(model, data, p).key_freqs
# the residual directions that the unembedding reads as cos/sin of frequency k over answers c
c = torch.arange(p, dtype=torch.float32)
waves = [f(2 * torch.pi * k * c / p) for k in freqs for f in (torch.cos, torch.sin)]
directions = torch.stack(waves) @ model.unembed.weight.detach()

# claim: at "=", that part of the residual stream depends on a and b only through (a + b) mod p
total = Node(
    "sum",
    "blocks.0.hook_resid_post",
    fn=lambda x: (x[:, 0] + x[:, 1]) % p,
    subspace=Projection(directions),
    positions=[-1],
)
hypothesis = Hypothesis(
    [total], output=lambda logits: logits[:, -1], name=f"fourier {freqs}", predict=lambda values: values["sum"]
)
