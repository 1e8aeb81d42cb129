"""The SAELens side of sae_vs_saelens.py; runs in bench/venv-saelens (sae-lens 6.54.12).

Trains a TopK SAE with SAELens's SAETrainer on the batches in a safetensors file (the same
batches, in the same order, as the unweave side), then writes its reconstructions of the
held-out activations and the training seconds.
"""

import itertools
import json
import sys
import time

import torch
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer
from safetensors.torch import load_file, save_file

job = json.loads(open(sys.argv[1]).read())
torch.set_num_threads(job["threads"])
data = load_file(job["data"])
train, held_out = data["train"], data["held_out"]
bs, steps = job["batch_size"], len(train) // job["batch_size"]

sae = TopKTrainingSAE(
    TopKTrainingSAEConfig(
        d_in=train.shape[1],
        d_sae=job["width"],
        k=job["k"],
        dtype="float32",
        device="cpu",
        normalize_activations="expected_average_only_in",
        use_sparse_activations=job["sparse"],
    )
)
cfg = SAETrainerConfig(
    total_training_samples=steps * bs,
    train_batch_size_samples=bs,
    lr=job["lr"],
    lr_end=0.0,
    lr_scheduler_name="constant",
    lr_warm_up_steps=job["warmup"],
    lr_decay_steps=int(job["decay_frac"] * steps),
    device="cpu",
    n_batches_for_norm_estimate=1,
)
# the norm estimate reads one batch first: give it batch 0, then train on batches 0.. as unweave does
batches = itertools.chain([train[:bs]], (train[i * bs : (i + 1) * bs] for i in range(steps)))
trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches)
start = time.perf_counter()
trained = trainer.fit()
seconds = time.perf_counter() - start
with torch.no_grad():
    recon = trained(held_out)
save_file({"recon": recon.contiguous()}, job["out"])
print(json.dumps({"seconds": seconds, "steps": steps}))
