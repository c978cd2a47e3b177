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
