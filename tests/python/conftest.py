"""pytest fixtures: a private kvtierd per test session (tests/python/kvtier_daemon.py)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvtier_daemon import Daemon, kvtierd_path  # noqa: E402,F401

import kvtier  # noqa: E402


@pytest.fixture(scope="session")
def daemon():
    d = Daemon()
    yield d
    d.stop()


@pytest.fixture
def client(daemon):
    with kvtier.Client(daemon.socket, name="pytest") as c:
        yield c


@pytest.fixture
def ns(request):
    """A namespace of its own per test (lossless)."""
    return "test/%s" % request.node.name


@pytest.fixture
def nf4_ns(request):
    return "nf4/test/%s" % request.node.name
