"""unweave.graph.dataset_modules: the units of dictionaries over many prompts cut into modules.

The known answer is planted: a model whose tokens, residual stream, transcoders and
unembedding split into independent groups (each group's tokens embed in its own block of
the stream, each latent reads and writes one block, each group's next tokens read one), and
prompts of one group each. The modules must be the groups' latents, and ablating one group's
module must change nothing on the others' prompts. The measured change of ablating a module
is checked against the model run with that group's latents removed by hand."""

import pytest
import torch
from torch import nn

from unweave.dictionaries.sae import SAE, SAEConfig
from unweave.graph.dataset_modules import (
    ablated_change,
    dataset_modules,
    dataset_modules_json,
    joined_effects,
    modules_table,
)
from unweave.graph.dictionary_units import DictionaryUnits
from unweave.graph.effects import EffectData, centred_logits
from unweave.graph.prompt import PromptUnits
from unweave.graph.units import SelectedUnits, SeveralUnits

BLOCK, LATENTS, TOKENS = 4, 6, 5  # per group: stream dimensions, latents per transcoder, tokens


class _Exact(nn.Module):
    """An MLP that is its transcoder: the dictionary's error is zero."""

    def __init__(self, sae: SAE):
        super().__init__()
        self.sae = sae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sae(x.flatten(0, -2))[0].view(x.shape)


class _Mix(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        return torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None] @ x


def _block_transcoder(groups: int, gen: torch.Generator) -> SAE:
    """Latents g * LATENTS ... read and write stream block g only."""
    d = groups * BLOCK
    sae = SAE(SAEConfig(d, groups * LATENTS, "relu", kind="transcoder", d_out=d))
    with torch.no_grad():
        sae.W_enc.zero_(), sae.W_dec.zero_(), sae.b_enc.zero_(), sae.b_dec.zero_()
        for g in range(groups):
            rows, cols = slice(g * BLOCK, (g + 1) * BLOCK), slice(g * LATENTS, (g + 1) * LATENTS)
            sae.W_enc[rows, cols] = torch.randn(BLOCK, LATENTS, generator=gen)
            sae.W_dec[cols, rows] = torch.randn(LATENTS, BLOCK, generator=gen) / 2
    return sae


class _Groups(nn.Module):
    """Embedding, exact transcoder, fixed mixing of positions, exact transcoder, unembedding;
    group g's tokens and next tokens live in stream block g."""

    def __init__(self, groups: int, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.groups = groups
        vocab, d = groups * TOKENS, groups * BLOCK
        self.embed = nn.Embedding(vocab, d)
        self.unembed = nn.Linear(d, vocab, bias=False)
        with torch.no_grad():
            self.embed.weight.zero_(), self.unembed.weight.zero_()
            for g in range(groups):
                rows, block = slice(g * TOKENS, (g + 1) * TOKENS), slice(g * BLOCK, (g + 1) * BLOCK)
                self.embed.weight[rows, block] = torch.randn(TOKENS, BLOCK, generator=gen)
                self.unembed.weight[rows, block] = torch.randn(TOKENS, BLOCK, generator=gen)
        self.mlp0 = _Exact(_block_transcoder(groups, gen))
        self.mix = _Mix()
        self.mlp1 = _Exact(_block_transcoder(groups, gen))

    def forward(self, tokens: torch.Tensor, mlps: bool = True) -> torch.Tensor:
        x = self.embed(tokens)
        x = x + (self.mlp0(x) if mlps else 0)
        x = x + self.mix(x)
        x = x + (self.mlp1(x) if mlps else 0)
        return self.unembed(x)


class _Tokenizer:
    def decode(self, i: int) -> str:
        return f"t{i}"


def _prompt(model: _Groups, tokens: list[int], outputs: torch.Tensor) -> PromptUnits:
    members = (
        DictionaryUnits("mlp0", model.mlp0.sae, "mlp0:input"),
        DictionaryUnits("mlp1", model.mlp1.sae, "mlp1:input"),
    )
    x = torch.tensor([tokens])
    output = lambda out: centred_logits(out[:, -1])[:, outputs]  # noqa: E731
    full = EffectData(model, x, SeveralUnits(members), output, ablate_to="zero")
    live = full.activations[0] != 0
    selected = tuple(
        SelectedUnits.of(m, live[full.member_span(k)[0]].nonzero().flatten().tolist(), full.states_of(k))
        for k, m in enumerate(members)
    )
    data = EffectData(model, x, SeveralUnits(selected), output, ablate_to="zero")
    probabilities = model(x)[0, -1].softmax(-1)[outputs].detach()
    return PromptUnits(data, _Tokenizer(), outputs, "groups", {}, probabilities, "embed")


def _case(groups: int, seed: int, per_group: int = 3) -> tuple[_Groups, list[PromptUnits], list[int]]:
    """The model and `per_group` prompts of each group (its next tokens: three of its own)."""
    torch.manual_seed(seed)
    model = _Groups(groups, seed).eval()
    found, group_of = [], []
    for g in range(groups):
        outputs = torch.arange(3) + g * TOKENS
        for _ in range(per_group):
            tokens = (torch.randint(0, TOKENS, (int(torch.randint(4, 8, ())),)) + g * TOKENS).tolist()
            found.append(_prompt(model, tokens, outputs))
            group_of.append(g)
    return model, found, group_of


def _group(name: str) -> int:
    return int(name.split(" ")[-1]) // LATENTS


@pytest.mark.parametrize("groups,seed", [(2, 0), (3, 1)])
def test_planted_groups_are_the_modules_and_do_not_interact(groups, seed):
    _, found, group_of = _case(groups, seed)
    result = dataset_modules(found, seed=0)
    names = result.joined.units
    modules = [[names[u] for u in m] for m in result.modules.modules]
    assert len(modules) == groups
    assert sorted(_group(modules[k][0]) for k in range(groups)) == list(range(groups))
    for module in modules:
        assert " error" not in " ".join(module)  # exact transcoders: the errors do nothing
        assert len({_group(n) for n in module}) == 1  # every latent of one group
    live = {n for n in names if " latent " in n and n not in [names[u] for u in result.modules.inactive]}
    assert live == {n for m in modules for n in m}
    assert result.separability.max_off_diagonal < 1e-6
    assert torch.allclose(torch.tensor(result.separability.matrix).diagonal(), torch.ones(groups))
    for module, changes in zip(modules, result.per_prompt):  # a group's module acts on its own prompts only
        assert [c > 1e-3 for c in changes] == [g == _group(module[0]) for g in group_of]
    rows = modules_table(result, [f"p{i}" for i in range(len(found))])
    assert all(f"'p{group_of.index(_group(m[0]))}'" in r["acts most on (output change)"] for m, r in zip(modules, rows))
    written = dataset_modules_json(result)
    assert {u["site"] for m in written["modules"] for u in m["units"]} == {"mlp0", "mlp1"}
    assert all(u["kind"] == "latent" and isinstance(u["index"], int) for m in written["modules"] for u in m["units"])


def test_a_modules_ablation_is_the_model_without_its_groups_latents():
    model, found, group_of = _case(2, 4)
    joined = joined_effects(found)
    group0 = [u for u, n in enumerate(joined.units) if " latent " in n and _group(n) == 0]
    change = ablated_change(found, joined, group0)
    for k, f in enumerate(found):
        x, outputs = f.data.inputs, f.top
        if group_of[k] == 0:  # every live latent is group 0's: both MLPs write nothing
            expected = centred_logits(model(x, mlps=False)[:, -1]) - centred_logits(model(x)[:, -1])
            own = change[k, joined.output_maps[k]]
            assert torch.allclose(own, expected[0, outputs].double(), atol=1e-5)
        else:
            assert change[k].abs().max() == 0
    # the effects joined by name: a latent at two positions is summed, a prompt's outputs land in their columns
    k = 0
    own = torch.cat(list(found[k].data.attributed_effects())).sum(0).double()
    expected = torch.zeros(len(joined.outputs), len(joined.units), dtype=torch.float64)
    for o, jo in enumerate(joined.output_maps[k].tolist()):
        for u, ju in enumerate(joined.unit_maps[k].tolist()):
            expected[jo, ju] += own[o, u]
    assert torch.allclose(joined.effects[k], expected)
