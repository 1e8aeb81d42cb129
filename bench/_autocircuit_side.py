"""The auto-circuit side of edges_vs_autocircuit.py; runs in bench/venv-autocircuit
(auto-circuit 1.0.1 on TransformerLens).

Rebuilds the induction toy as a TransformerLens HookedTransformer (attention only, no layer
norm) from its weights, checks its logits, then times auto-circuit's edge attribution
patching (mask gradients at mask 0 with the logit of the answer at the last position) and
writes the seconds and every edge's score.
"""

import json
import sys
import time

import torch
from auto_circuit.data import PromptDataLoader, PromptDataset
from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
from auto_circuit.utils.graph_utils import patchable_model
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

job = json.loads(open(sys.argv[1]).read())
torch.set_num_threads(job["threads"])
weights, data = load_file(job["weights"]), load_file(job["data"])
c = job["config"]
cfg = HookedTransformerConfig(
    n_layers=c["n_layers"],
    d_model=c["d_model"],
    n_ctx=c["n_ctx"],
    d_head=c["d_model"] // c["n_heads"],
    n_heads=c["n_heads"],
    d_vocab=c["vocab"],
    attn_only=True,
    normalization_type=None,
    positional_embedding_type="standard",
    use_attn_result=True,  # auto-circuit patches each head's output and each head's q/k/v input
    use_split_qkv_input=True,
    device="cpu",
)
model = HookedTransformer(cfg)
state = {"embed.W_E": weights["W_E"], "pos_embed.W_pos": weights["W_pos"], "unembed.W_U": weights["unembed.weight"].T}
state["unembed.b_U"] = torch.zeros(c["vocab"])
for layer in range(c["n_layers"]):
    for name in ("W_Q", "W_K", "W_V", "W_O"):
        state[f"blocks.{layer}.attn.{name}"] = weights[f"blocks.{layer}.attn.{name}"]
    for name, shape in (("b_Q", "h e"), ("b_K", "h e"), ("b_V", "h e"), ("b_O", "d")):
        size = (c["n_heads"], cfg.d_head) if shape == "h e" else (c["d_model"],)
        state[f"blocks.{layer}.attn.{name}"] = torch.zeros(size)
model.load_state_dict(state, strict=False)
model.eval()
clean, corrupt, answers = data["clean"], data["corrupt"], data["answers"]
with torch.no_grad():
    tl_logits = model(clean)[:, -1]

patchable = patchable_model(model, factorized=True, slice_output="last_seq", separate_qkv=True, device="cpu")
dataset = PromptDataset(clean, corrupt, [a.view(1) for a in answers], [a.view(1) for a in answers])
loader = PromptDataLoader(dataset, seq_len=None, diverge_idx=0, batch_size=len(clean), shuffle=False)


def run():
    return mask_gradient_prune_scores(patchable, loader, None, "logit", "avg_val", mask_val=0.0)


run()  # warm-up
times = []
for _ in range(job["repeats"]):
    start = time.perf_counter()
    scores = run()
    times.append(time.perf_counter() - start)
edges = []
for edge in patchable.edges:
    score = scores[edge.dest.module_name][edge.patch_idx]
    edges.append({"source": edge.src.name, "target": edge.dest.name, "score": float(score)})
save_file({"logits": tl_logits.contiguous()}, job["out"])
print(json.dumps({"seconds": times, "edges": edges}))
