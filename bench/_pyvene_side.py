"""The pyvene side of interchange_vs_pyvene.py; runs in bench/venv-pyvene (pyvene 0.1.8).

Reads the model directory, token ids and (base, source) pairs from a JSON job file,
times pyvene's IntervenableModel doing the same head intervention, and writes the seconds
and the last-position logits.
"""

import json
import sys
import time

import pyvene as pv
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

job = json.loads(open(sys.argv[1]).read())
torch.set_num_threads(job["threads"])
torch.set_grad_enabled(False)
model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32).eval()
data = load_file(job["data"])
tokens, base_all, source_all = data["tokens"], data["base"], data["source"]
config = pv.IntervenableConfig(
    [
        {
            "layer": job["layer"],
            "component": "head_attention_value_output",
            "unit": "h.pos",
            "intervention_type": pv.VanillaIntervention,
        }
    ]
)
intervenable = pv.IntervenableModel(config, model)
head, pos, bs = job["head"], tokens.shape[1] - 1, job["batch_size"]


def run(n):
    outs = []
    for start in range(0, n, bs):
        base, source = base_all[start : start + bs], source_all[start : start + bs]
        loc = ([[head]] * len(base), [[pos]] * len(base))
        _, out = intervenable(
            {"input_ids": tokens[base]}, [{"input_ids": tokens[source]}], {"sources->base": ([loc], [loc])}
        )
        outs.append(out.logits[:, -1])
    return torch.cat(outs)


run(bs)  # warm-up
times = []
for _ in range(job["repeats"]):
    start = time.perf_counter()
    logits = run(len(base_all))
    times.append(time.perf_counter() - start)
save_file({"logits": logits.contiguous()}, job["out"])
print(json.dumps({"seconds": times}))
