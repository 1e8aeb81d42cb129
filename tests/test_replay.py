"""Forward passes from a site on: the blocks before it replayed, checked against full passes."""

import pytest
import torch
from tiny_models import ARCHITECTURES, VOCAB, tiny_model
from torch import nn

from unweave import list_sites
from unweave.replay import Replay, stack_position
from unweave.sites import patch


def _last_block_sites(model: nn.Module) -> list[str]:
    """Sites in the last block of the model's layer stack: the block itself and its MLP's input."""
    sites = list_sites(model)
    blocks = [s for s in sites if s.split(".")[-1].isdigit() and stack_position(model, s) is not None]
    last = blocks[-1]
    return [last, next(s for s in sites if s.startswith(last + ".") and s.endswith("mlp:input"))]


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_a_replayed_splice_equals_the_full_forward_pass(model_type):
    model = tiny_model(model_type)
    tokens = torch.randint(3, VOCAB, (3, 12), generator=torch.Generator().manual_seed(0))
    for site in _last_block_sites(model):
        _check_replay(model, tokens, site)


@torch.no_grad()
def _check_replay(model: nn.Module, tokens: torch.Tensor, site: str) -> None:
    replay = Replay(model, site, lambda: model(tokens).logits)
    assert replay.exact, f"replay at {site} differs from the full pass"
    layers, index = stack_position(model, site)
    assert index == len(layers) - 1
    shift = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with patch(model, {site: lambda act: act + shift}):
        full = model(tokens).logits
    calls = []
    handle = layers[0].register_forward_hook(lambda *a: calls.append(1))
    with replay, patch(model, {site: lambda act: act + shift}):
        replayed = model(tokens).logits
    handle.remove()
    assert not calls, "the first block ran inside the replay"
    assert torch.equal(replayed, full)
    assert not torch.equal(full, replay.reference)  # the patch changed the output
    assert all(not isinstance(m, type(replay._stand_ins[0])) for m in layers)  # blocks restored


class _DenseStack(nn.Module):
    """Every block's output is also read by the head (as in a DenseNet): a replay whose
    stand-ins pass their input through gets the head's input wrong, and must say so."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

    def forward(self, x):
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return sum(outs)


def test_a_replay_that_is_not_exact_is_never_used():
    model, x = _DenseStack(), torch.randn(5, 4)
    replay = Replay(model, "blocks.2", lambda: model(x))
    assert not replay.exact
    with replay:
        assert torch.equal(model(x), replay.reference)
    assert Replay(model, "blocks.0", lambda: model(x)).exact is False  # nothing before it to replay
    assert stack_position(model, "blocks.0") == (model.blocks, 0)
    assert stack_position(nn.Sequential(nn.Linear(2, 2)), "0") is None
