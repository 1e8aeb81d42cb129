"""A planted network that computes two independent tasks through shared layers: the known
answer for finding modules (`unweave graph two-tasks`).

Task A maps its own inputs x_A to its own outputs y_A by a random one-hidden-layer map, and
task B likewise; both run through one residual stream and one MLP. The inputs are written
into the residual stream along random directions, more of them than it has dimensions
(superposition), so every neuron's pre-activation picks up interference from the other
task's inputs; the neurons of the two tasks are interleaved at random in the one MLP. The
outputs are read from orthonormal directions. Which task each neuron serves is planted
(`neuron_task`), so a method that cuts the network into parts can be checked against it.

    resid = E_A x_A + E_B x_B                 (d_model, 2 n_in directions in superposition)
    h = ReLU(W_in resid + b_in)               (d_mlp neurons, half per task)
    resid_post = resid + W_out h              (neuron i writes O_task v_i)
    y = O^T resid_post                        (2 n_out outputs: task A's, then task B's)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TwoTasksConfig:
    n_in: int = 8  # inputs per task
    n_out: int = 4  # outputs per task
    d_model: int = 12  # < 2 n_in: the inputs are in superposition
    d_mlp: int = 64  # neurons, half per task
    seed: int = 0

    def __post_init__(self):
        if self.d_model < 2 * self.n_out:
            raise ValueError(f"d_model ({self.d_model}) must hold both tasks' outputs: at least {2 * self.n_out}")
        if self.d_mlp < 2 or self.d_mlp % 2:
            raise ValueError(f"d_mlp must be an even number of neurons (half per task), got {self.d_mlp}")


def _unit_columns(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    m = torch.randn(rows, cols, generator=gen)
    return m / m.norm(dim=0, keepdim=True)


class TwoTasks(nn.Module):
    """Sites: `embed` (the residual stream), `mlp.hook_pre`, `mlp.hook_post` (the neurons),
    `mlp.hook_out` (what the MLP adds to the stream), `resid_post`. `neuron_task[i]` is 0 for
    task A's neurons, 1 for task B's."""

    def __init__(self, cfg: TwoTasksConfig = TwoTasksConfig()):
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        n_in, n_out, d, half = cfg.n_in, cfg.n_out, cfg.d_model, cfg.d_mlp // 2
        E = _unit_columns(d, 2 * n_in, gen)  # input directions, more than d of them
        out_dirs = torch.linalg.qr(torch.randn(d, 2 * n_out, generator=gen))[0]  # output directions, orthonormal
        task = torch.cat([torch.zeros(half, dtype=torch.long), torch.ones(half, dtype=torch.long)])
        task = task[torch.randperm(cfg.d_mlp, generator=gen)]
        W_in = torch.zeros(cfg.d_mlp, d)
        W_out = torch.zeros(d, cfg.d_mlp)
        for i, t in enumerate(task.tolist()):
            reads = _unit_columns(n_in, 1, gen)[:, 0]  # a random mixture of the task's own inputs
            W_in[i] = E[:, t * n_in : (t + 1) * n_in] @ reads
            W_out[:, i] = out_dirs[:, t * n_out : (t + 1) * n_out] @ torch.randn(n_out, generator=gen)
        self.register_buffer("neuron_task", task)
        self.E = nn.Parameter(E)
        self.W_in = nn.Parameter(W_in)
        self.b_in = nn.Parameter(0.3 * torch.randn(cfg.d_mlp, generator=gen))
        self.W_out = nn.Parameter(W_out / half**0.5)
        self.O = nn.Parameter(out_dirs)
        self.embed = nn.Identity()
        self.mlp = nn.Module()
        self.mlp.hook_pre, self.mlp.hook_post, self.mlp.hook_out = nn.Identity(), nn.Identity(), nn.Identity()
        self.resid_post = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 2 * self.cfg.n_in:
            raise ValueError(f"TwoTasks expects inputs of shape (batch, {2 * self.cfg.n_in}), got {tuple(x.shape)}")
        resid = self.embed(x @ self.E.T)
        h = self.mlp.hook_post(torch.relu(self.mlp.hook_pre(resid @ self.W_in.T + self.b_in)))
        resid = self.resid_post(resid + self.mlp.hook_out(h @ self.W_out.T))
        return resid @ self.O

    def output_task(self) -> torch.Tensor:
        """Which task each output belongs to (0 = A, 1 = B)."""
        return torch.arange(2 * self.cfg.n_out) // self.cfg.n_out


def sample_inputs(n: int, cfg: TwoTasksConfig, seed: int = 0) -> torch.Tensor:
    """Both tasks' inputs, independent standard normals: (n, 2 n_in)."""
    return torch.randn(n, 2 * cfg.n_in, generator=torch.Generator().manual_seed(seed))
