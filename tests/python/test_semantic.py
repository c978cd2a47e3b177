"""Fusion state and the semantic index through the Python client: put_fusion/get_fusion,
lookup(with_fusion=True), add_embeddings and search (docs/python.md, docs/index.md)."""
import gc

import numpy as np
import pytest
import torch

import kvtier


def unit(dim, seed):
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def perturb(v, eps, seed):
    return v + eps * unit(v.size, seed)


def chunk(client, ns, i, chunk_tokens=16):
    """Puts one block (the keys of tokens [i]*16) and returns (key, its tensors)."""
    key = kvtier.chain_keys(ns, [i] * chunk_tokens, chunk_tokens)[0]
    k = torch.randn(2, chunk_tokens, 8, dtype=torch.float16)
    client.put(ns, key, {"k": k})
    return key, k


def fusion_tensors(seed):
    g = torch.Generator().manual_seed(seed)
    return {"fusion_output": torch.randn(8, 64, generator=g).to(torch.float16),
            "image_features": np.random.default_rng(seed).standard_normal((1, 32)).astype(np.float32)}


def test_put_fusion_get_fusion_round_trip_is_exact(client, ns):
    key, k = chunk(client, ns, 1)
    f = fusion_tensors(1)
    client.put_fusion(ns, key, f, metadata=b"\x00meta\xff")
    with client.get_fusion(ns, key) as lease:
        assert len(lease) == 1 and lease.found == 1
        b = lease[0]
        assert b.key == key and b.found
        assert b.fusion_metadata == b"\x00meta\xff"
        assert sorted(b.fusion) == ["fusion_output", "image_features"]
        # the KV tensors stay in the block's mapping; fusion tensors are separate
        assert sorted(b) == ["k"] and torch.equal(torch.from_dlpack(b["k"]), k)
        t = b.fusion["fusion_output"]
        assert (t.name, t.dtype, t.shape, t.codec) == ("fusion_output", "float16", (8, 64), "raw")
        assert t.verify()
        tt = torch.from_dlpack(t)
        assert tt.data_ptr() == t.data_ptr  # zero-copy
        assert torch.equal(tt, f["fusion_output"])
        img = np.from_dlpack(b.fusion["image_features"])
        assert not img.flags.writeable and np.array_equal(img, f["image_features"])
        assert np.array_equal(np.asarray(b.fusion["image_features"]), f["image_features"])
        # Lease.fusion mirrors Lease.tensor
        assert lease.fusion(0, "fusion_output").data_ptr() == t.data_ptr
        assert lease.fusion(0, "image_features", dtype=torch.float64).dtype == torch.float64
        out = torch.empty(8, 64, dtype=torch.float16)
        assert torch.equal(lease.fusion(0, "fusion_output", out=out), f["fusion_output"])
        with pytest.raises(KeyError):
            lease.fusion(0, "k")  # a KV tensor, not a fusion tensor
        with pytest.raises(KeyError):
            lease.tensor(0, "fusion_output")
        kept = torch.from_dlpack(b.fusion["fusion_output"])
    # an exported fusion tensor keeps the lease alive like any other
    assert torch.equal(kept, f["fusion_output"])
    with pytest.raises(RuntimeError):
        b.fusion
    del kept
    gc.collect()

    # a plain get shows the fusion state too; a new put_fusion replaces it
    client.put_fusion(ns, key, [("only", torch.arange(4, dtype=torch.int32))])
    with client.get(ns, [key]) as lease:
        b = lease[0]
        assert list(b.fusion) == ["only"] and b.fusion_metadata == b""
        assert torch.equal(torch.from_dlpack(b.fusion["only"]), torch.arange(4, dtype=torch.int32))


def test_put_fusion_needs_the_chunk(client, ns):
    key = kvtier.chain_keys(ns, [7] * 16, 16)[0]
    with pytest.raises(kvtier.NotFound) as e:
        client.put_fusion(ns, key, fusion_tensors(2), b"m")
    assert isinstance(e.value, LookupError) and e.value.code
    with pytest.raises(kvtier.NotFound):
        client.get_fusion(ns, key)
    # cached but without fusion state
    key2, _ = chunk(client, ns, 8)
    with pytest.raises(kvtier.NotFound):
        client.get_fusion(ns, key2)
    with client.get(ns, [key2]) as lease:
        assert lease[0].fusion == {} and lease[0].fusion_metadata == b""


def test_lookup_with_fusion(client, ns):
    tokens = list(range(64))
    keys = kvtier.chain_keys(ns, tokens, 16)
    for key in keys[:3]:
        client.put(ns, key, {"k": torch.zeros(2, 16, 8, dtype=torch.float16)})
    assert client.lookup(ns, keys) == 3
    # no fusion state on the last matched chunk: None
    matched, lease = client.lookup(ns, keys, with_fusion=True)
    assert (matched, lease) == (3, None)
    f = fusion_tensors(3)
    client.put_fusion(ns, keys[2], f, b"third")
    matched, lease = client.lookup(ns, keys, with_fusion=True)
    assert matched == 3 and isinstance(lease, kvtier.Lease)
    with lease:
        assert lease[0].key == keys[2] and lease[0].fusion_metadata == b"third"
        assert torch.equal(torch.from_dlpack(lease[0].fusion["fusion_output"]), f["fusion_output"])
    assert client.lookup(ns, keys, with_fusion=False) == 3
    other = kvtier.chain_keys(ns + "/x", tokens, 16)
    assert client.lookup(ns, other, with_fusion=True) == (0, None)


def test_add_embeddings_and_search(client, ns):
    dim = 64
    keys, vecs = [], []
    for i in range(8):
        key, _ = chunk(client, ns, 100 + i)
        keys.append(key)
        vecs.append(unit(dim, i))
    prompt = [unit(16, 1000 + i) for i in range(8)]
    # vectors as numpy, torch and plain lists
    client.add_embeddings(ns, {
        key: {"vision": (torch.from_numpy(v) if i % 2 else v), "prompt": p.tolist()}
        for i, (key, v, p) in enumerate(zip(keys, vecs, prompt))})
    f = fusion_tensors(5)
    client.put_fusion(ns, keys[5], f, b"five")

    q = perturb(vecs[5], 0.1, 77)
    hits = client.search(ns, {"vision": q}, k=3)
    assert 1 <= len(hits) <= 3
    best = hits[0]
    assert isinstance(best, kvtier.SearchHit)
    assert best.key == keys[5] and best.score > 0.9
    assert set(best.similarities) == {"vision"}
    assert best.similarities["vision"] == pytest.approx(
        float(np.dot(vecs[5], q) / np.linalg.norm(q)), abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    # a threshold keeps only the near match (random 64-d unit vectors have cosine ~ +-0.125)
    hits = client.search(ns, {"vision": torch.from_numpy(q)}, k=5, threshold=0.8)
    assert [h.key for h in hits] == [keys[5]]
    # list form, two modalities with thresholds and weights
    hits = client.search(ns, [
        {"modality": "vision", "vector": q, "threshold": 0.8, "weight": 2.0},
        {"modality": "prompt", "vector": perturb(prompt[5], 0.1, 78), "threshold": 0.8}], k=5)
    assert len(hits) == 1 and hits[0].key == keys[5]
    assert list(hits[0].similarities) == ["vision", "prompt"]
    s = hits[0].similarities
    assert hits[0].score == pytest.approx((2 * s["vision"] + s["prompt"]) / 3, abs=1e-4)
    # nothing reaches the threshold
    assert client.search(ns, {"vision": unit(dim, 999)}, threshold=0.9) == []

    # with_fusion: the best hit's block, with its fusion tensors
    hits, lease = client.search(ns, {"vision": q}, k=2, with_fusion=True)
    assert hits[0].key == keys[5]
    with lease:
        b = lease[0]
        assert b.key == keys[5] and b.fusion_metadata == b"five"
        assert torch.equal(torch.from_dlpack(b.fusion["fusion_output"]), f["fusion_output"])
        assert np.array_equal(np.asarray(b.fusion["image_features"]), f["image_features"])
    # best hit without fusion state: no lease
    hits, lease = client.search(ns, {"vision": perturb(vecs[2], 0.1, 79)}, k=1, with_fusion=True)
    assert hits[0].key == keys[2] and lease is None


def test_semantic_errors(client, ns):
    key, _ = chunk(client, ns, 200)
    client.add_embeddings(ns, {key: {"vision": unit(32, 1)}})
    with pytest.raises(kvtier.InvalidArgument) as e:  # the modality is 32-d
        client.add_embeddings(ns, {key: {"vision": unit(48, 2)}})
    assert isinstance(e.value, ValueError)
    with pytest.raises(kvtier.InvalidArgument):
        client.search(ns, {"vision": unit(48, 3)})
    with pytest.raises(kvtier.InvalidArgument):  # unknown modality
        client.search(ns, {"audio": unit(32, 3)})
    with pytest.raises(kvtier.InvalidArgument):  # zero vector
        client.add_embeddings(ns, {key: {"vision": np.zeros(32, np.float32)}})
    with pytest.raises(kvtier.InvalidArgument):  # NaN
        client.search(ns, {"vision": np.full(32, np.nan, np.float32)})
    missing = kvtier.chain_keys(ns, [201] * 16, 16)[0]
    with pytest.raises(kvtier.NotFound):  # embeddings need a cached chunk
        client.add_embeddings(ns, {missing: {"vision": unit(32, 4)}})
    with pytest.raises(ValueError):  # not 1-D
        client.add_embeddings(ns, {key: {"vision": np.ones((4, 8), np.float32)}})
    with pytest.raises(TypeError):
        client.add_embeddings(ns, {key: unit(32, 5)})
    with pytest.raises(TypeError):
        client.search(ns, [{"modality": "vision", "vector": unit(32, 1), "thresh": 0.5}])
    # still searchable after the refused calls
    assert client.search(ns, {"vision": unit(32, 1)}, k=1)[0].key == key
