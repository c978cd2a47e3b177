"""The vLLM connector's parts that need no engine: configuration, namespaces and keys, and
the worker's load path against a real kvtierd (a block missing or corrupt between lookup and
load).  The whole connector inside real vLLM engines: test_vllm.py."""
import threading

import pytest
import torch

import kvtier
from kvtier_daemon import Daemon
from kvtier.vllm import (ConnectorCounters, KvGeometry, KvtierConnector,
                         KvtierConnectorMetadata, KvtierVllmConfig, LoadSpec, Namespaces, _Link,
                         _Saver)

BS = 32          # vLLM block size
CHUNK = 64       # two blocks per chunk
GEO = KvGeometry(("layers.0.attn", "layers.1.attn"), 2, 64, torch.bfloat16)


def test_config_is_validated():
    assert KvtierVllmConfig.from_extra({}, 32).chunk_tokens == 256
    with pytest.raises(ValueError, match="unknown kv_connector_extra_config keys"):
        KvtierVllmConfig.from_extra({"sockett": "/x"}, 32)
    with pytest.raises(ValueError, match="multiple of vLLM's block size"):
        KvtierVllmConfig.from_extra({"chunk_tokens": 100}, 32)
    with pytest.raises(ValueError, match="positive"):
        KvtierVllmConfig.from_extra({"chunk_tokens": 0}, 32)
    with pytest.raises(ValueError, match="namespace"):
        KvtierVllmConfig.from_extra({"namespace": "/"}, 32)


def test_namespaces_depend_on_model_geometry_and_tenant_only():
    a = Namespaces("vllm", "/models/llama", None, 2, 2, 64, "bfloat16", CHUNK)
    b = Namespaces("vllm", "/models/llama", None, 2, 2, 64, "bfloat16", CHUNK)
    assert a.of() == b.of()                               # no per-process randomness
    assert a.of().startswith("vllm/llama-") and a.of().endswith("/c64/v1/shared")
    assert a.of("salt-1") != a.of() and a.of("salt-1") != a.of("salt-2")
    assert "salt-1" not in a.of("salt-1")                 # the salt never reaches kvtierd
    assert a.of(None, "adapter") != a.of()                # LoRA adapters are tenants too
    for other in (Namespaces("vllm", "/models/llama", None, 2, 2, 64, "float16", CHUNK),
                  Namespaces("vllm", "/models/llama", None, 3, 2, 64, "bfloat16", CHUNK),
                  Namespaces("vllm", "/models/llama-ft", None, 2, 2, 64, "bfloat16", CHUNK),
                  Namespaces("vllm", "/models/llama", "rev2", 2, 2, 64, "bfloat16", CHUNK)):
        assert other.of() != a.of()
    toks = list(range(200))
    assert [k.hex() for k in a.keys(a.of(), toks, 3)] == \
        [k.hex() for k in kvtier.chain_keys(a.of(), toks[:192], CHUNK)]
    # Tensor-parallel ranks: own namespaces, the same keys.
    r0 = Namespaces("vllm", "/m", None, 2, 2, 64, "bfloat16", CHUNK, tp_size=2, tp_rank=0)
    r1 = Namespaces("vllm", "/m", None, 2, 2, 64, "bfloat16", CHUNK, tp_size=2, tp_rank=1)
    assert r0.of() != r1.of() and r0.of().endswith("/tp0of2")
    assert [k.hex() for k in r0.keys(r0.of(), toks, 3)] == \
        [k.hex() for k in r1.keys(r1.of(), toks, 3)]


class _Worker(KvtierConnector):
    """The connector's worker half over hand-made paged KV: vLLM's constructor is bypassed
    (it needs a running engine), everything the load and save paths use is real."""

    def __init__(self, socket, num_blocks=16):
        self.cfg = KvtierVllmConfig(socket=socket, chunk_tokens=CHUNK)
        self.block_size = BS
        self.geo = GEO
        self.counters = ConnectorCounters()
        self.link = _Link(self.cfg, "test-worker")
        self._layers = list(GEO.layers)
        self._load_errors = set()
        # The CPU backend's layout: [blocks, heads, block_size, 2 * head_size], each (block,
        # head) page block_size rows of K then block_size rows of V.
        self.paged = {n: torch.zeros(num_blocks, 2, BS, 128, dtype=torch.bfloat16)
                      for n in GEO.layers}
        self._kv = {}
        self._paged = {}  # the loads' kvtier.PagedKV views, made on first use
        for n, t in self.paged.items():
            pages = t.view(num_blocks, 2, 2, BS, 64)
            self._kv[n] = (pages[:, :, 0].permute(0, 2, 1, 3), pages[:, :, 1].permute(0, 2, 1, 3))
        self._saver = _Saver(self.link, self.counters)


def _fill(w, block_ids, seed):
    g = torch.Generator().manual_seed(seed)
    for t in w.paged.values():
        for b in block_ids:
            t[b] = torch.randn(t[b].shape, generator=g).to(torch.bfloat16)


def test_save_then_load_round_trips_through_the_paged_layout(client, daemon):
    ns = "vllm-parts/round-trip"
    keys = kvtier.chain_keys(ns, list(range(3 * CHUNK)), CHUNK)
    src = _Worker(daemon.socket)
    _fill(src, [3, 7, 1, 9, 4, 12], seed=1)
    chunks = [[3, 7], [1, 9], [4, 12]]
    for key, ids in zip(keys, chunks):
        src._saver.submit(ns, key, src._gather(ids))
    src._saver.flush()
    assert src.counters.saved_chunks == 3 and client.lookup(ns, keys) == 3
    # K of layer 0, chunk 1, token 40 (block 9, row 8), head 1 == the stored row's channels.
    with client.get(ns, [keys[1]]) as lease:
        k = torch.from_dlpack(lease[0]["k.0"]).view(CHUNK, 2, 64)
        page = src.paged["layers.0.attn"][9].view(2, 2, BS, 64)  # [head, K/V, row, channel]
        assert torch.equal(k[40, 1], page[1, 0, 8])
        v = torch.from_dlpack(lease[0]["v.1"]).view(CHUNK, 2, 64)
        assert torch.equal(v[5, 0], src.paged["layers.1.attn"][1].view(2, 2, BS, 64)[0, 1, 5])

    dst = _Worker(daemon.socket)
    # Tokens [32, 192): the first block is vLLM's own hit; the rest comes from kvtier.
    spec = LoadSpec("r", ns, keys, 0, [0, 2, 5, 6, 8, 10], 32, 192)
    assert dst._load(spec) is None
    for (s_ids, d_ids) in (([7], [2]), ([1, 9], [5, 6]), ([4, 12], [8, 10])):
        for n in GEO.layers:
            assert torch.equal(dst.paged[n][d_ids], src.paged[n][s_ids])
    assert torch.count_nonzero(dst.paged["layers.0.attn"][0]) == 0  # not touched
    assert dst.counters.loaded_blocks == 5


def test_a_block_gone_or_corrupt_between_lookup_and_load_is_reported(client, daemon):
    ns = "vllm-parts/failures"
    keys = kvtier.chain_keys(ns, list(range(3 * CHUNK)), CHUNK)
    src = _Worker(daemon.socket)
    _fill(src, range(6), seed=2)
    for i, key in enumerate(keys):
        src._saver.submit(ns, key, src._gather([2 * i, 2 * i + 1]))
    src._saver.flush()
    assert client.lookup(ns, keys) == 3
    client.remove(ns, [keys[1]])  # evicted after the scheduler's lookup

    dst = _Worker(daemon.socket)
    spec = LoadSpec("r", ns, keys, 0, [10, 11, 12, 13, 14, 15], 0, 3 * CHUNK)
    assert dst._load(spec) == CHUNK  # chunk 1's first token
    assert torch.equal(dst.paged["layers.1.attn"][10:12], src.paged["layers.1.attn"][0:2])
    # Through start_load_kv's bookkeeping: blocks from the failed chunk on are reported once.
    dst._connector_metadata = KvtierConnectorMetadata(loads=[spec])
    dst.start_load_kv(None)
    assert dst.get_block_ids_with_load_errors() == {12, 13, 14, 15}
    assert dst.get_block_ids_with_load_errors() == set()

    # A shape that is not this engine's: reported, nothing written past the check.
    bad_ns = "vllm-parts/shape"
    bkeys = kvtier.chain_keys(bad_ns, list(range(CHUNK)), CHUNK)
    client.put(bad_ns, bkeys[0], [("k.0", torch.zeros(CHUNK, 64, dtype=torch.bfloat16))])
    assert dst._load(LoadSpec("r", bad_ns, bkeys, 0, [1, 2], 0, CHUNK)) == 0

    # kvtierd unreachable: the whole load is reported.
    gone = _Worker(daemon.socket)
    gone.link = _Link(KvtierVllmConfig(socket=daemon.socket + ".absent"), "nobody")
    assert gone._load(spec) == 0


def _gate_saves(w):
    """Holds the worker's saver at its connection until the returned event is set."""
    gate = threading.Event()
    real_get = w.link.get

    def slow_get():
        gate.wait(10)
        return real_get()

    w.link.get = slow_get
    return gate


def test_saves_do_not_block_on_a_slow_daemon_until_the_queue_is_full(daemon):
    w = _Worker(daemon.socket)
    gate = _gate_saves(w)
    ns = "vllm-parts/queue"
    keys = kvtier.chain_keys(ns, list(range(4 * CHUNK)), CHUNK)
    _fill(w, range(8), seed=3)
    for i, key in enumerate(keys):  # returns at once: the puts wait in the background
        w._saver.submit(ns, key, w._gather([2 * i, 2 * i + 1]))
    assert w.counters.saved_chunks == 0
    gate.set()
    w._saver.flush()
    assert w.counters.saved_chunks == 4
    w._saver.close()


def test_saves_batch_and_retry_what_the_staging_area_could_not_hold():
    """The saver puts what waits in one put_batch; chunks beyond the staging area (1 MiB here,
    16 chunks of 64 KiB) come back LimitExceeded and go in the next batch: all are saved."""
    d = Daemon(staging_bytes=1 << 20)
    try:
        w = _Worker(d.socket)
        gate = _gate_saves(w)
        ns = "vllm-parts/batch"
        keys = kvtier.chain_keys(ns, list(range(24 * CHUNK)), CHUNK)
        _fill(w, range(8), seed=5)
        for i, key in enumerate(keys):
            j = i % 4
            w._saver.submit(ns, key, w._gather([2 * j, 2 * j + 1]))
        gate.set()
        w._saver.flush()
        assert w.counters.saved_chunks == 24 and w.counters.save_errors == 0
        with kvtier.Client(d.socket) as c:
            assert c.lookup(ns, keys) == 24
        w._saver.close()
    finally:
        d.stop()
