"""Pins from Python (docs/python.md, "Pins"): pin, unpin, ls(pinned=True), the errors, and a
pinned block surviving pressure that evicts everything else."""
import numpy as np
import pytest

import kvtier
from kvtier_daemon import Daemon

BLOCK = 512 * 1024  # one float32 tensor of 128 Ki values


@pytest.fixture
def small():
    # 16 MiB of host memory, no disk tier; pins/ namespaces may pin 2 MiB.  One per test: a
    # full arena evicts new one-hit blocks first (S3-FIFO).
    d = Daemon(host_bytes=16 << 20, staging_bytes=4 << 20,
               extra_toml='[[namespace]]\nprefix = "pins/"\ncodec = "fp16"\npin_bytes = "2MiB"\n')
    yield d
    d.stop()


def put_blocks(c, ns, n, salt, hit=False):
    """hit: read each block once after its put, so that S3-FIFO promotes them to its main
    queue and they push out older blocks there (a scan of one-hit blocks does not)."""
    keys = kvtier.chain_keys(ns, [salt] * n, 1)
    for i, k in enumerate(keys):
        c.put(ns, k, {"x": np.full(BLOCK // 4, float(salt * 1000 + i), np.float32)})
        if hit:
            c.get(ns, [k]).release()
    return keys


def test_pin_survives_pressure_and_unpin_releases(small):
    with kvtier.Client(small.socket, name="pytest-pins") as c:
        ns = "pins/py"
        hot = put_blocks(c, ns, 2, 1)
        r = c.pin(ns, hot)
        assert r == {"pinned": 2, "refreshed": 0, "pinned_bytes": 2 * BLOCK,
                     "quota_bytes": 2 << 20}
        assert c.pin(ns, hot[:1], ttl_ms=60000)["refreshed"] == 1
        listed = c.ls(ns, pinned=True)
        assert sorted(b["key"] for b in listed) == sorted(k.hex() for k in hot)
        assert all(b["pinned"] for b in listed)
        put_blocks(c, "pressure/py", 96, 2)  # 3x the arena
        with c.get(ns, hot) as lease:
            assert lease.found == 2
            assert float(np.from_dlpack(lease[1]["x"])[0]) == 1001.0
        assert c.unpin(ns, hot) == 2
        assert c.unpin(ns, hot) == 0
        assert c.ls(ns, pinned=True) == []
        put_blocks(c, "pressure/py", 96, 3, hit=True)
        assert c.lookup(ns, hot) == 0


def test_pin_errors(small):
    with kvtier.Client(small.socket) as c:
        ns = "pins/errors"
        keys = put_blocks(c, ns, 5, 4)
        missing = kvtier.chain_keys("pins/other", [9], 1)
        with pytest.raises(kvtier.NotFound):
            c.pin(ns, keys[:1] + missing)
        assert c.ls(ns, pinned=True) == []  # all or nothing
        c.pin(ns, keys[:4])  # 2 MiB: the quota
        with pytest.raises(kvtier.NoSpace, match="pin_bytes"):
            c.pin(ns, keys[4:])
        assert c.remove(ns, keys[:1])["removed"] == 1  # a remove takes a pinned block
        assert len(c.ls(ns, pinned=True)) == 3
        c.unpin(ns, keys)
