"""kvtierd for Python tests: a private daemon with its own socket, state dir and shared-memory
name (like tests/testing/daemon.h).  Shared by tests/python (Debian's torch) and tests/engines
(the engine venv's torch, vLLM and transformers).

The daemon binary comes from $KVTIERD, else the first build tree found; the module from
PYTHONPATH (CTest sets both), else from the same build tree.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_DIRS = ["build", "build-py"]


def _find_build_file(rel):
    for b in BUILD_DIRS:
        p = REPO / b / rel
        if p.exists():
            return p
    return None


try:
    import kvtier  # noqa: F401
except ImportError:
    pkg = _find_build_file("libclient/python/kvtier/__init__.py")
    if pkg is None:
        raise
    sys.path.insert(0, str(pkg.parent.parent))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(pkg.parent.parent)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    import kvtier  # noqa: F401


def kvtierd_path():
    if os.environ.get("KVTIERD"):
        return os.environ["KVTIERD"]
    p = _find_build_file("daemon/kvtierd")
    if p is None:
        pytest.skip("no kvtierd: build the project or set KVTIERD")
    return str(p)


def _can_connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class Daemon:
    """kvtierd with its own socket, state dir and shared-memory name.

    `rules` are [[namespace]] (prefix, codec) pairs; the longest prefix wins.  The default
    serves "nf4/..." as NF4 and everything else losslessly ("fp16" = stored as given)."""

    _count = 0

    def __init__(self, rules=(("", "fp16"), ("nf4/", "nf4")), host_bytes=256 << 20,
                 staging_bytes=64 << 20, extra_toml="", busy_poll_us=0):
        Daemon._count += 1
        tag = "%d-%d" % (os.getpid(), Daemon._count)
        self.dir = Path(tempfile.mkdtemp(prefix="kvtier-pytest-"))
        self.socket = str(self.dir / "kvtier.sock")
        cfg = [
            "[daemon]",
            'socket = "%s"' % self.socket,
            'state_dir = "%s"' % (self.dir / "state"),
            'shm_prefix = "kvtier-pytest-%s"' % tag,
            "io_threads = 2",
            "busy_poll_us = %d" % busy_poll_us,
            'log_level = "warn"',
            "drain_timeout_ms = 2000",
            "[host]",
            "size = %d" % host_bytes,
            "prefault = false",
            "[session]",
            "staging_bytes = %d" % staging_bytes,
        ]
        disk = ["[disk]", "enabled = false"]
        for prefix, codec in rules:
            cfg += ["[[namespace]]", 'prefix = "%s"' % prefix, 'codec = "%s"' % codec]
        base = "\n".join(cfg) + "\n" + extra_toml + "\n"
        self.config = self.dir / "kvtier.toml"
        # Daemons without a disk tier refuse the [disk] section (unknown keys are errors).
        self.config.write_text(base + "\n".join(disk) + "\n")
        bin_ = kvtierd_path()
        if subprocess.run([bin_, "--config", str(self.config), "--check-config"],
                          capture_output=True).returncode != 0:
            self.config.write_text(base)
        self.log = self.dir / "kvtierd.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([bin_, "--config", str(self.config)],
                                         stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while not _can_connect(self.socket):
            if self.proc.poll() is not None:
                raise RuntimeError("kvtierd exited at start: " + self.log.read_text())
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError("kvtierd did not start within 20 s")
            time.sleep(0.005)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
