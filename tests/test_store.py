import pytest
import torch

from unweave.sites import capture
from unweave.store import ActivationStore, StoreError, write_store
from unweave.zoo.transformer import Transformer, TransformerConfig

SITES = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(TransformerConfig(vocab=50, n_ctx=16, d_model=32, n_heads=4, d_mlp=64, n_layers=2)).eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 50, (37, 16), generator=torch.Generator().manual_seed(1))


def write(model, tokens, path, **kw):
    return write_store(model, SITES, tokens, path, model_name="toy", shard_tokens=80, batch_size=3, **kw)


def test_store_holds_exactly_the_captured_activations(model, tokens, tmp_path):
    store = write(model, tokens, tmp_path)
    assert store.complete and store.n_tokens == 37 * 16 and len(store.shards) == 8  # 5 rows a shard
    assert store.width("blocks.0.hook_resid_post") == 32 and store.width("blocks.1.attn.hook_z") == 32
    direct = capture(model, SITES, tokens)
    for site in SITES:
        stored = torch.cat([store.load_shard(i, site) for i in range(len(store.shards))])
        torch.testing.assert_close(stored, direct[site].reshape(37 * 16, -1))
    assert torch.equal(torch.cat([store.load_shard(i, "tokens") for i in range(8)]), tokens.reshape(-1))


def test_shuffled_batches_cover_every_row_once(model, tokens, tmp_path):
    store = write(model, tokens, tmp_path)
    site = SITES[0]
    every = torch.cat([store.load_shard(i, site) for i in range(len(store.shards))])
    batches = list(store.batches(site, batch_size=64, seed=3))
    assert all(len(b) == 64 for b in batches[:-1])
    got = torch.cat(batches)
    assert not torch.equal(got, every)  # shuffled...
    key = lambda t: sorted(map(tuple, t.tolist()))
    assert key(got) == key(every)  # ...but each row exactly once


def test_batches_hold_only_a_few_shards(model, tokens, tmp_path, monkeypatch):
    store = write(model, tokens, tmp_path)
    loads = []
    original = store.load_shard
    monkeypatch.setattr(store, "load_shard", lambda i, k, *a: loads.append(i) or original(i, k, *a))
    it = store.batches(SITES[0], batch_size=16, shards_in_memory=2)
    next(it)
    assert len(loads) == 2  # lazily: the first batch needs only the first group of shards
    list(it)
    assert sorted(loads) == list(range(len(store.shards)))


def test_interrupted_write_resumes_and_loses_nothing(model, tokens, tmp_path):
    reference = write(model, tokens, tmp_path / "ref")
    calls = {"n": 0}

    def crash_on_fourth_batch(module, args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt

    handle = model.register_forward_pre_hook(crash_on_fourth_batch)
    with pytest.raises(KeyboardInterrupt):
        write(model, tokens, tmp_path / "run")
    handle.remove()
    partial = ActivationStore(tmp_path / "run")
    assert not partial.complete and len(partial.shards) == 1  # 2 batches a shard: shard 0 done
    resumed = write(model, tokens, tmp_path / "run")
    assert resumed.complete
    assert [s.sha256 for s in resumed.shards] == [s.sha256 for s in reference.shards]


def test_corrupt_shard_is_named_and_rewritten_on_resume(model, tokens, tmp_path):
    store = write(model, tokens, tmp_path)
    victim = store.shards[2].path
    victim.write_bytes(victim.read_bytes()[:-100])  # truncated
    fresh = ActivationStore(tmp_path)
    with pytest.raises(StoreError, match=f"{victim.name} is corrupt or truncated"):
        list(fresh.batches(SITES[0], 32, shuffle=False))
    repaired = write(model, tokens, tmp_path)
    for i in range(len(repaired.shards)):
        repaired.load_shard(i, SITES[0])


def test_bad_inputs(model, tokens, tmp_path):
    with pytest.raises(StoreError, match="not an activation store"):
        ActivationStore(tmp_path / "nothing")
    with pytest.raises(StoreError, match=r"\(rows, ctx_len\)"):
        write(model, torch.zeros(0, 16, dtype=torch.long), tmp_path / "empty")
    with pytest.raises(StoreError, match="one vector per token"):
        write_store(model, ["blocks.0.attn.hook_pattern"], tokens, tmp_path / "pattern", model_name="toy")
    write(model, tokens, tmp_path / "a")
    with pytest.raises(StoreError, match="different model"):
        write_store(model, SITES, tokens, tmp_path / "a", model_name="other", shard_tokens=80, batch_size=3)
    store = ActivationStore(tmp_path / "a")
    with pytest.raises(StoreError, match="it holds blocks.0.hook_resid_post"):
        store.width("blocks.9")


def test_non_finite_activations_name_shard_and_row(model, tokens, tmp_path):
    from unweave.artifacts import read_tensors, sha256, write_json, write_tensors

    store = write(model, tokens, tmp_path)
    shard = store.shards[1].path
    tensors = read_tensors(shard)
    tensors[SITES[0]][7, 3] = float("nan")
    write_tensors(shard, tensors)
    manifest = store.manifest
    manifest["shards"][1]["sha256"] = sha256(shard)  # a consistent file whose contents are bad
    write_json(tmp_path / "manifest.json", manifest)
    with pytest.raises(StoreError, match=f"{shard.name} holds NaN or inf at site '{SITES[0]}', row 7"):
        list(ActivationStore(tmp_path).batches(SITES[0], 32, shuffle=False, check_finite=True))
