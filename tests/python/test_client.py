"""The Python client API against a real kvtierd: keys, put/lookup/get, zero-copy exports,
lease lifetime, NF4 decoding, errors."""
import gc
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch

import kvtier


def test_chain_keys_match_the_protocol_test_vectors():
    keys = kvtier.chain_keys("llama3-8b/fp16/v1", list(range(1, 33)), 16)
    assert [k.hex() for k in keys] == ["bca1db0dfba949d95fc8a517dfd45a12",
                                       "361319e7cebffea83b5f4e0e161b99a6"]
    partial = kvtier.chain_keys("", [0xFFFFFFFF, 0, 7], 16, include_partial=True)
    assert [k.hex() for k in partial] == ["5a969ff48c1f8888956455a0b07c5f70"]
    assert kvtier.chain_keys("", [0xFFFFFFFF, 0, 7], 16) == []
    # numpy and torch token ids give the same keys as a list
    toks = list(range(1, 33))
    assert kvtier.chain_keys("llama3-8b/fp16/v1", np.array(toks, dtype=np.int64), 16) == keys
    assert kvtier.chain_keys("llama3-8b/fp16/v1", torch.tensor(toks), 16) == keys
    assert kvtier.Key.from_hex(keys[0].hex()) == keys[0]
    assert len({keys[0], keys[1], kvtier.Key.from_hex(keys[0].hex())}) == 2
    with pytest.raises(ValueError):
        kvtier.chain_keys("x", [-1, 2], 16)
    with pytest.raises(ValueError):
        kvtier.chain_keys("x", [1, 2], 0)


def test_put_get_is_exact_and_zero_copy(client, ns):
    rng = np.random.default_rng(0)
    k = rng.standard_normal((4, 64, 32)).astype(np.float16)
    v = torch.randn(4, 64, 32, dtype=torch.float16)
    ids = np.arange(64, dtype=np.int32)
    keys = kvtier.chain_keys(ns, np.arange(128), 64)
    client.put(ns, keys[0], {"k": k, "v": v, "ids": ids})
    assert client.lookup(ns, keys) == 1

    with client.get(ns, keys) as lease:
        assert len(lease) == 2 and lease.found == 1
        assert not lease[1].found
        b = lease[0]
        assert b.key == keys[0] and b.found
        assert sorted(b) == ["ids", "k", "v"] and "k" in b and len(b) == 3
        t = b["k"]
        assert (t.name, t.dtype, t.shape, t.codec) == ("k", "float16", (4, 64, 32), "raw")
        assert t.verify()
        tk = torch.from_dlpack(t)
        assert tk.data_ptr() == t.data_ptr  # a view of the daemon's mapping, no copy
        assert torch.equal(tk, torch.from_numpy(k))
        assert torch.equal(torch.from_dlpack(b["v"]), v)
        nk = np.from_dlpack(b["k"])
        assert not nk.flags.writeable and np.array_equal(nk, k)
        mv = memoryview(b["ids"])
        assert mv.readonly and mv.format == "i" and mv.shape == (64,)
        arr = np.asarray(b["ids"])
        assert not arr.flags.writeable and np.array_equal(arr, ids)
        assert arr.ctypes.data == b["ids"].data_ptr
        # lease.tensor: the torch view; a dtype or out= copies
        assert lease.tensor(0, "v").data_ptr() == b["v"].data_ptr
        assert lease.tensor(0, "v", dtype=torch.float32).dtype == torch.float32
        out = torch.empty(4, 64, 32, dtype=torch.float16)
        assert torch.equal(lease.tensor(0, "k", out=out), tk)
        with pytest.raises(KeyError):
            lease.tensor(0, "nope")
        with pytest.raises(kvtier.NotFound):
            lease.tensor(1, "k")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.int32,
                                   torch.int64, torch.uint8])
def test_every_dtype_round_trips(client, ns, dtype):
    x = (torch.randn(3, 5, 7) * 50).to(dtype)
    key = kvtier.chain_keys(ns, [1], 1)[0]
    client.put(ns, key, [("x", x)])
    with client.get(ns, [key]) as lease:
        y = torch.from_dlpack(lease[0]["x"])
        assert y.dtype == dtype and torch.equal(y, x)


def test_non_contiguous_and_foreign_inputs(client, ns):
    x = torch.randn(16, 8).t()  # non-contiguous: copied to contiguous first
    n = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    ro = np.ones(10, dtype=np.float16)
    ro.flags.writeable = False  # numpy refuses to export it over DLPack: the buffer is used
    raw = bytearray(range(16))
    key = kvtier.chain_keys(ns, [1], 1)[0]
    client.put(ns, key, {"x": x, "n": n, "ro": ro, "raw": raw})
    with client.get(ns, [key]) as lease:
        b = lease[0]
        assert torch.equal(torch.from_dlpack(b["x"]), x)
        assert np.array_equal(np.from_dlpack(b["n"]), n)
        assert np.array_equal(np.from_dlpack(b["ro"]), ro)
        assert bytes(memoryview(b["raw"])) == bytes(raw)
        assert b["raw"].dtype == "uint8"
    with pytest.raises(TypeError):
        client.put(ns, kvtier.chain_keys(ns, [2], 1)[0], {"c": torch.zeros(4, dtype=torch.complex64)})
    with pytest.raises(TypeError):
        client.put(ns, kvtier.chain_keys(ns, [2], 1)[0], {"o": object()})


def test_errors_carry_the_daemons_message(client, ns, daemon):
    key = kvtier.chain_keys(ns, [1], 1)[0]
    client.put(ns, key, {"x": np.zeros(8, np.float16)})
    with pytest.raises(kvtier.AlreadyExists) as e:
        client.put(ns, key, {"x": np.zeros(8, np.float16)})
    assert e.value.code == "already_exists" and str(e.value).startswith("already_exists:")
    with pytest.raises(kvtier.InvalidArgument) as e:
        client.put("", key, {"x": np.zeros(8, np.float16)})
    assert isinstance(e.value, ValueError) and "namespace" in str(e.value)
    with pytest.raises(kvtier.InvalidArgument):
        client.put(ns, kvtier.Key(1, 2), {"x": np.zeros(8, np.float16), "y": np.zeros(8, np.float16),
                                          "x ": np.zeros(0, np.float16)})
    with pytest.raises(kvtier.Unavailable) as e:
        kvtier.Client(str(daemon.dir / "missing.sock"))
    assert isinstance(e.value, ConnectionError) and "missing.sock" in str(e.value)
    c = kvtier.Client(daemon.socket)
    c.close()
    with pytest.raises(kvtier.Unavailable):
        c.lookup(ns, [key])


def _leases(client):
    return client.stats()["leases"]


def test_a_tensor_keeps_its_lease_and_release_is_deferred(client, ns):
    keys = kvtier.chain_keys(ns, [1, 2], 1)
    for k in keys:
        client.put(ns, k, {"x": torch.arange(256, dtype=torch.float32)})
    base = _leases(client)
    with client.get(ns, keys) as lease:
        t = torch.from_dlpack(lease[0]["x"])
        block = lease[1]
        assert _leases(client) == base + 2
    # left the block: the lease is closed to new views, but the daemon keeps it for t
    assert lease.released
    with pytest.raises(RuntimeError):
        block["x"]
    assert _leases(client) == base + 2
    assert torch.equal(t, torch.arange(256, dtype=torch.float32))
    assert client.remove(ns, keys[:1]) == {"removed": 0, "deferred": 1}
    assert torch.equal(t, torch.arange(256, dtype=torch.float32))  # still pinned
    del t
    gc.collect()
    assert _leases(client) == base

    lease = client.get(ns, keys[1:])
    assert lease.release() is True  # nothing exported: released now
    assert lease.release() is False and _leases(client) == base
    lease = client.get(ns, keys[1:])
    arr = np.asarray(lease[0]["x"])  # buffer-protocol exports hold the lease too
    assert lease.release() is False and _leases(client) == base + 1
    assert arr[255] == 255
    del arr
    gc.collect()
    assert _leases(client) == base


def _leases_reach(observer, want):
    for _ in range(500):
        n = _leases(observer)
        if n == want:
            return n
        time.sleep(0.01)
    return n


def test_release_modes(daemon, ns):
    observer = kvtier.Client(daemon.socket)
    keys = kvtier.chain_keys(ns, [5, 6, 7], 1)
    for k in keys:
        observer.put(ns, k, {"x": torch.arange(64, dtype=torch.float32)})
    base = _leases(observer)
    # deferred (the default): nothing sent until this client's next request or a flush
    c = kvtier.Client(daemon.socket)
    with c.get(ns, keys) as lease:
        assert float(torch.from_dlpack(lease[2]["x"]).sum()) == sum(range(64))
    gc.collect()
    assert _leases(observer) == base + 3
    c.flush_releases()
    assert _leases_reach(observer, base) == base
    with c.get(ns, keys):
        pass
    assert _leases(observer) == base + 3
    assert c.lookup(ns, keys, from_index=False) == 3  # carries the releases
    assert _leases(observer) == base
    # posted: one-way at once; round_trip: released when release() returns
    p = kvtier.Client(daemon.socket, release_mode="posted")
    p.get(ns, keys).release()
    assert _leases_reach(observer, base) == base
    r = kvtier.Client(daemon.socket, release_mode="round_trip")
    r.get(ns, keys).release()
    assert _leases(observer) == base
    with pytest.raises(ValueError):
        kvtier.Client(daemon.socket, release_mode="later")


def test_a_lease_keeps_its_connection(daemon, ns):
    observer = kvtier.Client(daemon.socket)
    c = kvtier.Client(daemon.socket)
    key = kvtier.chain_keys(ns, [1], 1)[0]
    c.put(ns, key, {"x": torch.ones(1024)})
    lease = c.get(ns, [key])
    t = lease.tensor(0, "x")
    c.close()  # the lease (and t) hold the connection, so the block stays pinned
    assert observer.stats()["leases"] >= 1
    assert observer.evict(ns, [key])["skipped_leased"] == 1
    assert float(t.sum()) == 1024
    del lease, t
    gc.collect()
    assert observer.evict(ns, [key])["evicted"] == 1


def test_writing_a_leased_tensor_faults(daemon, ns):
    # DLPack (< 1.0) and torch 1.13 cannot mark a tensor read-only; the mapping is PROT_READ.
    code = textwrap.dedent("""
        import sys, torch, kvtier
        c = kvtier.Client(sys.argv[1])
        key = kvtier.Key(7, 7)
        c.put(sys.argv[2], key, {"x": torch.zeros(16)})
        lease = c.get(sys.argv[2], [key])
        t = torch.from_dlpack(lease[0]["x"])
        print("writing", flush=True)
        t[0] = 1.0
        print("wrote", flush=True)
    """)
    r = subprocess.run([sys.executable, "-c", code, daemon.socket, ns], capture_output=True,
                       text=True, timeout=60)
    assert "writing" in r.stdout and "wrote" not in r.stdout
    assert r.returncode == -11  # SIGSEGV


def test_nf4_blocks_decode_into_caller_tensors(client, nf4_ns):
    g = torch.Generator().manual_seed(1)
    k = torch.randn(2, 128, 64, generator=g, dtype=torch.float32).to(torch.float16)
    v = torch.randn(2, 128, 64, generator=g, dtype=torch.float32).to(torch.float16)
    key = kvtier.chain_keys(nf4_ns, [1], 1)[0]
    client.put(nf4_ns, key, {"k": k, "v": v, "pos": torch.arange(128)},
               nf4_layout={"k": "column"})
    with client.get(nf4_ns, [key]) as lease:
        b = lease[0]
        assert (b["k"].codec, b["k"].nf4_layout) == ("nf4", "column")
        assert (b["v"].codec, b["v"].nf4_layout) == ("nf4", "row")
        assert b["pos"].codec == "raw"
        assert b["k"].nbytes < b["k"].raw_bytes / 3
        with pytest.raises(TypeError, match="decode_into"):
            torch.from_dlpack(b["k"])
        with pytest.raises(BufferError):
            memoryview(b["k"])
        # fp32, bf16, fp16 outputs; numpy out works too
        out32 = b["v"].decode_into(torch.empty(2, 128, 64))
        # bitsandbytes' bound for N(0,1) in blocks of 64 is ~0.073 (docs/nf4.md)
        assert (out32 - v.float()).abs().mean() < 0.076
        bf = lease.tensor(0, "v", dtype=torch.bfloat16)
        assert bf.dtype == torch.bfloat16 and (bf.float() - out32).abs().max() < 0.02
        h = lease.tensor(0, "k")  # default: the stored dtype
        assert h.dtype == torch.float16 and (h.float() - k.float()).abs().mean() < 0.076
        n = b["k"].decode_into(np.empty((2, 128, 64), np.float32))
        assert np.allclose(n, h.float().numpy(), atol=2e-3)
        assert torch.equal(lease.tensor(0, "pos"), torch.arange(128))
        with pytest.raises(ValueError):
            b["v"].decode_into(torch.empty(10))
        with pytest.raises(kvtier.InvalidArgument):
            b["v"].decode_into(torch.empty(2, 128, 64, dtype=torch.int32))
        with pytest.raises(ValueError):  # non-contiguous out
            b["v"].decode_into(torch.empty(64, 128, 2).permute(2, 1, 0))


def _paged_kv(nblocks, bs, heads, hd, dtype):
    """vLLM's CPU paged KV of one layer [blocks, heads, 2 * bs, hd] and its K and V views
    [blocks, bs, heads, hd] (strided), as kvtier.vllm builds them."""
    t = torch.zeros(nblocks, heads, 2 * bs, hd, dtype=dtype)
    pages = t.view(nblocks, heads, 2, bs, hd)
    return t, pages[:, :, 0].permute(0, 2, 1, 3), pages[:, :, 1].permute(0, 2, 1, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_scatter_rows_into_paged_blocks(client, ns, nf4_ns, dtype):
    heads, hd, bs, rows = 3, 16, 8, 32
    g = torch.Generator().manual_seed(2)
    k = torch.randn(rows, heads * hd, generator=g).to(dtype)
    v = torch.randn(rows, heads * hd, generator=g).to(dtype)
    for space in (ns, nf4_ns):
        key = kvtier.chain_keys(space, [1], 1)[0]
        client.put(space, key, {"k": k, "v": v})
        _, kv_k, kv_v = _paged_kv(10, bs, heads, hd, dtype)
        with client.get(space, [key]) as lease:
            b = lease[0]
            # rows 8..31 (three blocks) into blocks 7, 2, 5; the rest stays zero
            b["k"].scatter_rows(kv_k, [7, 2, 5], row0=8, verify=True)
            b["v"].scatter_rows(kv_v, [7, 2, 5], row0=8)
            want_k = lease.tensor(0, "k", dtype=dtype)  # the stored values (decoded for NF4)
            want_v = lease.tensor(0, "v", dtype=dtype)
        if space == ns:
            assert torch.equal(want_k, k) and torch.equal(want_v, v)
        for j, blk in enumerate([7, 2, 5]):
            src = slice(8 + j * bs, 8 + (j + 1) * bs)
            assert torch.equal(kv_k[blk], want_k[src].view(bs, heads, hd))
            assert torch.equal(kv_v[blk], want_v[src].view(bs, heads, hd))
        others = [i for i in range(10) if i not in (7, 2, 5)]
        assert not kv_k[others].any() and not kv_v[others].any()
        # A PagedKV borrows the view once (the connector makes one per layer's K and V) and
        # keeps its memory alive: the same bytes land there.
        t, pk_k, _ = _paged_kv(10, bs, heads, hd, dtype)
        paged = kvtier.PagedKV(pk_k)
        assert paged.shape == (10, bs, heads, hd) and paged.dtype == str(dtype).split(".")[1]
        view = pk_k
        del t, pk_k
        with client.get(space, [key]) as lease:
            lease[0]["k"].scatter_rows(paged, [7, 2, 5], row0=8, verify=True)
        assert torch.equal(view, kv_k)


def test_scatter_rows_refuses_what_does_not_fit(client, ns):
    heads, hd, bs = 2, 8, 4
    key = kvtier.chain_keys(ns, [1], 1)[0]
    client.put(ns, key, {"k": torch.randn(8, heads * hd).half()})
    _, kv_k, _ = _paged_kv(4, bs, heads, hd, torch.float16)
    with client.get(ns, [key]) as lease:
        t = lease[0]["k"]
        with pytest.raises(ValueError, match="exceed"):
            t.scatter_rows(kv_k, [0, 1, 2])  # 12 rows of 8
        with pytest.raises(ValueError, match="exceed"):
            t.scatter_rows(kv_k, [0], row0=6)
        with pytest.raises(ValueError, match="block id"):
            t.scatter_rows(kv_k, [4])
        with pytest.raises(ValueError, match="block id"):
            t.scatter_rows(kv_k, [-1])
        with pytest.raises(TypeError, match="float16"):
            t.scatter_rows(_paged_kv(4, bs, heads, hd, torch.bfloat16)[1], [0])
        with pytest.raises(ValueError, match="rows of 16"):
            t.scatter_rows(_paged_kv(4, bs, 3, hd, torch.float16)[1], [0])
        with pytest.raises(ValueError, match="blocks, block_size"):
            t.scatter_rows(torch.zeros(4, bs, heads * hd, dtype=torch.float16), [0])
        with pytest.raises(ValueError, match="contiguous"):
            t.scatter_rows(torch.zeros(4, bs, hd, heads, dtype=torch.float16).transpose(2, 3),
                           [0])
        with pytest.raises(ValueError, match="contiguous"):
            kvtier.PagedKV(torch.zeros(4, bs, hd, heads, dtype=torch.float16).transpose(2, 3))
        with pytest.raises(TypeError):
            kvtier.PagedKV("not a tensor")
        assert not kv_k.any()  # nothing written by a refused call
        t.scatter_rows(kv_k, [3, 0], row0=0, verify=True)
        assert kv_k[3].any() and kv_k[0].any() and not kv_k[1].any()


def test_stats_remove_and_admin_calls(client, ns):
    keys = kvtier.chain_keys(ns, range(8), 2)
    for k in keys:
        client.put(ns, k, {"x": np.zeros(100, np.float32)})
    s = client.stats()
    assert s["tiers"]["host"]["blocks"] >= 4 and "counters" in s
    assert client.health()["status"] == "serving"
    assert client.lookup(ns, keys) == 4
    assert client.remove(ns, keys[2:3])["removed"] == 1
    assert client.lookup(ns, keys) == 2  # the longest cached prefix stops at the hole
    assert client.lookup(ns, keys, local_only=True) == 2  # no remote tier: the same answer
    assert client.health()["tiers"]["remote"]["backend"] == "none"
    assert sorted(b["key"] for b in client.ls(ns)) == sorted(k.hex() for k in keys[:2] + keys[3:])
    assert client.evict(ns, keys[:1])["evicted"] == 1
    assert client.lookup(ns, keys) == 0


def test_threads_share_a_client(client, ns):
    errors = []

    def worker(i):
        try:
            for j in range(20):
                key = kvtier.chain_keys(ns, [i, j], 1)[1]
                client.put(ns, key, {"x": torch.full((4096,), float(i * 100 + j))})
                with client.get(ns, [key]) as lease:
                    assert float(lease.tensor(0, "x")[0]) == i * 100 + j
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_busy_poll_client_round_trips(ns):
    """A polling client (busy_poll_us) against a polling daemon (daemon.busy_poll_us) gets the
    same answers as a sleeping one, also for a reply slower than its poll window (an 8 MiB
    put).  A daemon of its own: the big lossless block would skew the shared one's stats."""
    from conftest import Daemon
    d = Daemon(busy_poll_us=1000)
    try:
        keys = kvtier.chain_keys(ns, np.arange(256), 64)
        with kvtier.Client(d.socket, name="poller", busy_poll_us=50) as c:
            assert c.uses_request_channel  # both poll: requests take the shared-memory channel
            small = np.arange(64 * 32, dtype=np.float16).reshape(64, 32)
            c.put(ns, keys[0], {"k": small})
            big = np.ones((4096, 1024), dtype=np.float16)
            c.put(ns, keys[1], {"k": big})
            assert c.lookup(ns, keys) == 2
            with c.get(ns, keys[:2]) as lease:
                assert np.array_equal(np.asarray(lease[0]["k"]), small)
                assert np.array_equal(np.asarray(lease[1]["k"]), big)
            assert c.stats()["counters"]["channel_requests"] > 0
        with kvtier.Client(d.socket, busy_poll_us=50, request_channel=False) as c:
            assert not c.uses_request_channel
            assert c.lookup(ns, keys) == 2
    finally:
        d.stop()


def test_lookup_from_the_shared_index(daemon, client, ns):
    keys = kvtier.chain_keys(ns, np.arange(64 * 8), 64)
    for k in keys[:5]:
        client.put(ns, k, {"k": np.full((4, 8), float(k.hex()[:2] == "ff"), dtype=np.float16)})
    assert client.lookup(ns, keys) == 5                  # from the index (the default)
    assert client.uses_lookup_index(ns)
    assert client.lookup(ns, keys, from_index=True) == 5
    assert client.lookup(ns, keys, from_index=False) == 5  # one round trip to the daemon
    client.remove(ns, [keys[2]])
    assert client.lookup(ns, keys) == 2                  # seen before remove() returned
    assert client.lookup(ns, keys[3:], from_index=True) == 2
    assert client.lookup(ns + "/other", keys) == 0
    with kvtier.Client(daemon.socket, lookup_index=False) as plain:
        assert not plain.uses_lookup_index(ns)
        assert plain.lookup(ns, keys) == 2
        with pytest.raises(kvtier.Unavailable):
            plain.lookup(ns, keys, from_index=True)
