"""The GPU tier through the Python client, on the daemon's host emulation: fp16 puts land in
the GPU tier, get(gpu=True) leases there, and tensors export through DLPack with the device
the memory belongs to (host memory for the emulation; kDLCUDA on a real GPU, docs/gpu.md)."""
import pytest
import torch

import kvtier
from conftest import Daemon


@pytest.fixture(scope="module")
def gpu_daemon():
    d = Daemon(rules=(("", "nf4"),),
               extra_toml='[gpu]\nbackend = "emulation"\nsize = "16MiB"\ndevices = [0]\n')
    yield d
    d.stop()


def test_gpu_get_exports_exact_fp16(gpu_daemon):
    with kvtier.Client(gpu_daemon.socket, device=0) as c:
        assert c.gpu_backend == "emulation"
        assert c.gpu_devices == [0]
        key = kvtier.chain_keys("py/gpu", list(range(16)), 16)[0]
        k = torch.randn(64, 128, dtype=torch.float16)
        c.put("py/gpu", key, {"k": k})
        with c.get("py/gpu", [key], gpu=True) as lease:
            t = lease[0]["k"]
            assert t.device == 0
            assert t.codec == "raw"  # the hot tier keeps fp16 as put, even in an NF4 namespace
            # The emulation's device memory is host memory: DLPack says CPU, and the bytes
            # are exactly what was put.
            assert t.__dlpack_device__() == (1, 0)
            assert torch.equal(torch.from_dlpack(t), k)
        # A host get of the same block comes back NF4 (copied down on the "device").
        with c.get("py/gpu", [key]) as lease:
            t = lease[0]["k"]
            assert t.device == -1 and t.codec == "nf4"
            out = torch.empty(64, 128, dtype=torch.float16)
            t.decode_into(out)
            assert (out.float() - k.float()).abs().mean().item() < 0.12


def test_gpu_get_without_gpu_tier_raises(client, ns):
    key = kvtier.chain_keys(ns, list(range(16)), 16)[0]
    client.put(ns, key, {"k": torch.zeros(4, 8, dtype=torch.float16)})
    with pytest.raises(kvtier.Unavailable, match="no GPU tier"):
        client.get(ns, [key], gpu=True)


def test_gpu_devices_follow_cuda_visible_devices(monkeypatch):
    """Device indices are the process's own: with CUDA_VISIBLE_DEVICES=1 its device 0 is the
    daemon's device 1, found by the device's UUID (docs/gpu.md, "Device identity")."""
    d = Daemon(rules=(("", "fp16"),),
               extra_toml='[gpu]\nbackend = "emulation"\nsize = "8MiB"\ndevices = [0, 1]\n')
    try:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
        with kvtier.Client(d.socket, device=0) as c:
            assert c.gpu_devices == [0]
            key = kvtier.chain_keys("py/uuid", list(range(16)), 16)[0]
            k = torch.randn(64, 128, dtype=torch.float16)
            c.put("py/uuid", key, {"k": k})
            pools = c.stats()["tiers"]["gpu"]["pools"]
            assert [p["blocks"] for p in pools] == [0, 1]  # on the daemon's device 1
            with c.get("py/uuid", [key], gpu=True) as lease:
                t = lease[0]["k"]
                assert t.device == 0
                assert torch.equal(torch.from_dlpack(t), k)
            with pytest.raises(kvtier.InvalidArgument, match="CUDA_VISIBLE_DEVICES"):
                c.get("py/uuid", [key], gpu=True, device=1)
    finally:
        d.stop()


def test_put_batch_device_and_host_staging(gpu_daemon):
    """put_batch: two round trips for many blocks; staging='device' copies into the
    connection's device staging (host memory standing in for it on the emulation) and the
    blocks land in the GPU tier exactly; one entry per item, an exception for a cached key."""
    with kvtier.Client(gpu_daemon.socket, device=0) as c:
        keys = kvtier.chain_keys("py/batch", list(range(16 * 6)), 16)
        blocks = [{"k": torch.randn(32, 128, dtype=torch.float16),
                   "v": torch.randn(32, 128, dtype=torch.float16)} for _ in keys]
        before = c.stats()["counters"]["gpu_device_puts"]
        out = c.put_batch("py/batch", list(zip(keys[:4], blocks[:4])), staging="device")
        assert out == [None] * 4
        assert c.stats()["counters"]["gpu_device_puts"] == before + 4
        out = c.put_batch("py/batch", list(zip(keys[3:], blocks[3:])), staging="host")
        assert isinstance(out[0], kvtier.AlreadyExists)
        assert out[1:] == [None, None]
        with c.get("py/batch", keys, gpu=True) as lease:
            for i, b in enumerate(blocks):
                assert torch.equal(torch.from_dlpack(lease[i]["k"]), b["k"])
                assert torch.equal(torch.from_dlpack(lease[i]["v"]), b["v"])
        with pytest.raises(ValueError, match="staging"):
            c.put_batch("py/batch", [(keys[0], blocks[0])], staging="disk")


def test_gpu_get_without_waiting_then_lease_wait():
    """get(gpu=True, wait=False): answered once the promotion is queued on the device; after
    lease.wait() the blocks hold the promotion's bytes (the emulation has nothing to wait for,
    a CUDA daemon hands out its pool's events)."""
    d = Daemon(rules=(("", "nf4"),),
               extra_toml='[gpu]\nbackend = "emulation"\nsize = "2MiB"\ndevices = [0]\n')
    try:
        with kvtier.Client(d.socket, device=0) as c:
            keys = kvtier.chain_keys("py/async", list(range(64)), 16)
            ks = [torch.randn(4096, 128, dtype=torch.float16) for _ in keys]  # 1 MiB each
            for key, k in zip(keys, ks):
                c.put("py/async", key, {"k": k})  # the 2 MiB pool evicts the first ones
            with c.get("py/async", [keys[0]]) as host:  # NF4 in the host tier
                assert host[0]["k"].codec == "nf4"
                want = torch.empty(4096, 128, dtype=torch.float16)
                host[0]["k"].decode_into(want)
            before = c.stats()["counters"]["gpu_async_promotions"]
            with c.get("py/async", [keys[0]], gpu=True, wait=False) as lease:
                assert c.stats()["counters"]["gpu_async_promotions"] == before + 1
                lease.wait()
                assert lease.ready
                t = lease[0]["k"]
                assert t.device == 0 and t.codec == "raw"
                assert torch.equal(torch.from_dlpack(t), want)
    finally:
        d.stop()
