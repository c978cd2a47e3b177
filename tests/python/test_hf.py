"""kvtier.hf: HF-style past_key_values saved chunk by chunk and rebuilt for the longest
cached prefix."""
import pytest
import torch

import kvtier
from kvtier import hf


def fake_kv(layers=3, heads=2, seq=200, dim=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(1, heads, seq, dim, generator=g).to(dtype),
                  torch.randn(1, heads, seq, dim, generator=g).to(dtype)) for _ in range(layers))


def test_save_and_rebuild_the_longest_cached_prefix(client, ns):
    tokens = list(range(200))
    kv = fake_kv()
    assert hf.save_prefix(client, ns, tokens, kv, 64) == 3  # 200 tokens: 3 complete chunks
    assert hf.save_prefix(client, ns, tokens, kv, 64) == 0  # already cached: nothing written
    with client.get(ns, kvtier.chain_keys(ns, tokens, 64)[:1]) as lease:
        assert sorted(lease[0]) == ["k.0", "k.1", "k.2", "v.0", "v.1", "v.2"]
        assert lease[0]["k.1"].shape == (2, 64, 16)

    # A prompt sharing 150 tokens: 2 chunks are reusable.
    other = tokens[:150] + [999] * 60
    hit = hf.load_prefix(client, ns, other, 64)
    assert hit.num_tokens == 128
    for (k, v), (rk, rv) in zip(kv, hit.past_key_values):
        assert torch.equal(rk, k[:, :, :128]) and torch.equal(rv, v[:, :, :128])
        assert rk.is_contiguous() and rk.shape == (1, 2, 128, 16)
        rk.add_(1)  # ordinary memory: the lease is gone, writing is fine
    # max_tokens leaves at least one token to prefill
    assert hf.load_prefix(client, ns, tokens[:192], 64, max_tokens=191).num_tokens == 128
    assert hf.load_prefix(client, ns, [5] + tokens[1:], 64) == (0, None)


def test_fp16_storage_and_partial_batches(client, ns):
    tokens = list(range(64))
    kv = tuple((torch.cat([k, k + 1]), torch.cat([v, v + 1])) for k, v in fake_kv(seq=64))
    hf.save_prefix(client, ns, tokens, kv, 64, batch_index=1, dtype=torch.float16)
    hit = hf.load_prefix(client, ns, tokens + [1], 64, dtype=torch.float32)
    assert hit.num_tokens == 64
    k0 = hit.past_key_values[0][0]
    assert k0.dtype == torch.float32
    assert torch.equal(k0, kv[0][0][1:2].half().float())
    with pytest.raises(ValueError):
        hf.save_prefix(client, ns, list(range(128)), kv, 64)  # KV shorter than the tokens


def test_nf4_namespace_round_trip(client, nf4_ns):
    tokens = list(range(128))
    kv = fake_kv(seq=128, seed=3)
    assert hf.save_prefix(client, nf4_ns, tokens, kv, 64) == 2
    with client.get(nf4_ns, kvtier.chain_keys(nf4_ns, tokens, 64)[:1]) as lease:
        assert lease[0]["k.0"].nf4_layout == "row" and lease[0]["v.0"].nf4_layout == "row"
    hit = hf.load_prefix(client, nf4_ns, tokens + [0], 64)
    assert hit.num_tokens == 128
    for (k, v), (rk, rv) in zip(kv, hit.past_key_values):
        for want, got in ((k, rk), (v, rv)):
            assert got.dtype == torch.float32
            rel = float((got - want).norm() / want.norm())
            assert 0.0 < rel < 0.12
