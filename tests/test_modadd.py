import pytest
import torch

from unweave.artifacts import read_tensors
from unweave.sites import patch
from unweave.zoo.modadd import ModAddConfig, evaluate, make_data, train


def test_data_is_all_pairs_with_a_disjoint_seeded_split():
    cfg = ModAddConfig(p=7, frac_train=0.3)
    d = make_data(cfg)
    assert d.tokens.shape == (49, 3) and (d.tokens[:, 2] == 7).all()
    assert ((d.tokens[:, 0] + d.tokens[:, 1]) % 7 == d.labels).all()
    assert len(d.train_idx) == int(0.3 * 49)
    assert set(d.train_idx.tolist()).isdisjoint(d.test_idx.tolist())
    assert len(d.train_idx) + len(d.test_idx) == 49
    assert torch.equal(make_data(cfg).train_idx, d.train_idx)
    assert not torch.equal(make_data(ModAddConfig(p=7, frac_train=0.3, seed=1)).train_idx, d.train_idx)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("p", 12, "odd prime"),
        ("frac_train", 1.5, "frac_train"),
        ("steps", 0, "steps"),
        ("lr", -1.0, "lr"),
    ],
)
def test_bad_config_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        ModAddConfig(**{field: value})


TINY = ModAddConfig(p=13, d_model=32, n_heads=2, d_mlp=64, steps=40, eval_every=10, checkpoint_every=10)


def test_interrupted_training_resumes_exactly(tmp_path):
    straight = train(TINY, tmp_path / "straight")
    train(TINY, tmp_path / "resumed", stop_after=20)  # "interrupted" after the step-20 checkpoint
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    resumed = train(TINY, tmp_path / "resumed")
    a, b = read_tensors(straight.dir / "model.safetensors"), read_tensors(resumed.dir / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert straight.history == resumed.history
    assert [s for s, _ in resumed.checkpoints()] == [10, 20, 30, 40]


def test_reuse_and_config_clash(tmp_path):
    run = train(TINY, tmp_path)
    assert train(TINY, tmp_path).complete  # a finished run is reused, not retrained
    with pytest.raises(ValueError, match="different config"):
        train(ModAddConfig(p=17, steps=5), tmp_path)
    data = make_data(TINY)
    assert evaluate(run.load(), data) == pytest.approx(
        run.history[-1] | {"step": 40} and {k: v for k, v in run.history[-1].items() if k != "step"}
    )


def test_the_embedding_gradient_does_not_depend_on_thread_timing():
    """W_E[tokens]'s backward accumulated rows in a thread-dependent order on the CPU, so two
    trainings of one seed with two threads gave different models (and the clock/pizza test
    failed on one machine and not another)."""
    from unweave.zoo.transformer import Transformer

    cfg = ModAddConfig(p=31, d_model=64)
    torch.manual_seed(0)
    model = Transformer(cfg.transformer())
    tokens = torch.randint(0, cfg.p, (4000, 3))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(4):
            model.zero_grad()
            model.embed(tokens).pow(2).sum().backward()
            grads.append(model.W_E.grad.clone())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(g, grads[0]) for g in grads)


@pytest.mark.parametrize("attention,layers", [("learned", 1), ("uniform", 1), ("learned", 2)])
def test_a_model_reading_its_last_positions_gives_their_logits_and_gradients(attention, layers):
    from unweave.slt.sgld import SGLDConfig, run_chains, select_parameters
    from unweave.zoo.modadd import answer_loss, at_answer
    from unweave.zoo.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    cfg = TransformerConfig(vocab=12, n_ctx=3, d_model=16, n_heads=2, d_mlp=32, n_layers=layers, attention=attention)
    model = Transformer(cfg)
    tokens, labels = torch.randint(0, 12, (20, 3)), torch.randint(0, 12, (20,))
    full = model(tokens)
    for last in (1, 2, 3, 5):
        for tables in (False, True):  # the first block's projections per vocabulary and position row, or not
            view = model.reading_last(last, token_tables=tables)
            assert torch.allclose(view(tokens), full[:, -min(last, 3) :], atol=1e-5)
    answer = at_answer(model)
    assert model.read_last is None and answer.read_last == 1  # a view: the model itself is unchanged
    assert not model.token_tables and answer.token_tables
    # a hook on the first block's inputs is honoured: the view then takes the plain path
    site = "blocks.0.attn.hook_v_input" if attention == "uniform" else "blocks.0.attn.hook_k_input"
    with patch(model, {site: lambda x: 2 * x}):
        patched = model(tokens)
        assert torch.allclose(answer(tokens), patched[:, -1:], atol=1e-5)
    assert not torch.allclose(patched, full, atol=1e-3)
    assert dict(answer.named_parameters()).keys() == dict(model.named_parameters()).keys()
    # the loss and its gradients at '=' are the full model's, so the LLC's chains move the same
    grads = []
    for m in (model, answer):
        m.zero_grad()
        answer_loss(m(tokens), labels).backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])
    loader = [(tokens, labels)]
    sgld = SGLDConfig(epsilon=1e-4, nbeta=10.0, chains=2, draws=20, vectorize=True)
    names = select_parameters(model, None)
    traces = [run_chains(m, answer_loss, loader, names, 10.0, sgld).losses for m in (model, answer)]
    assert torch.allclose(traces[0], traces[1], rtol=1e-5)
    with pytest.raises(ValueError, match="at least 1 position"):
        model.reading_last(0)
