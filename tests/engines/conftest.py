"""Fixtures of the engine tests (docs/vllm.md, docs/python.md): they run in the engine venv
(scripts/engine-venv.sh: PyPI torch, vLLM's CPU build, transformers) against a private
kvtierd, like tests/python.  CTest runs each test_*.py here as its own test (engine_<name>).

$KVTIER_ENGINE_MODELS (default: models/ next to the venv) holds the converted SmolLM2."""
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))
sys.path.insert(0, str(HERE))
from kvtier_daemon import Daemon, kvtierd_path  # noqa: E402,F401

import kvtier  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def models_dir():
    if os.environ.get("KVTIER_ENGINE_MODELS"):
        return Path(os.environ["KVTIER_ENGINE_MODELS"])
    return Path(sys.prefix).parent / "models"


@pytest.fixture(scope="session")
def smollm2():
    """The plain SmolLM2-135M-Instruct directory (scripts/engine_models.py)."""
    p = models_dir() / "smollm2-135m"
    if not (p / "config.json").exists():
        pytest.fail("no %s: run scripts/engine-venv.sh" % p)
    return p


@pytest.fixture(scope="session")
def daemon():
    d = Daemon()
    yield d
    d.stop()


@pytest.fixture
def client(daemon):
    with kvtier.Client(daemon.socket, name="pytest-engines") as c:
        yield c
