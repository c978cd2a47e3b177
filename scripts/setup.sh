#!/usr/bin/env bash
# Installs every native dependency kvtier builds against, from Debian 12's packages.
# Idempotent: skips apt entirely when everything is already there.
set -euo pipefail
pkgs=(
  build-essential cmake pkg-config git
  libboost-dev libboost-system-dev
  libflatbuffers-dev flatbuffers-compiler
  libtomlplusplus-dev libcli11-dev libspdlog-dev libfmt-dev nlohmann-json3-dev
  catch2 libsystemd-dev systemd
  liburing-dev libzstd-dev liblmdb-dev libxxhash-dev
  libfaiss-dev libopenblas-dev liblapack-dev
  libhiredis-dev redis-server
  # KV events: ZeroMQ, msgpack-c; the Python subscriber of tests/python/test_events.py
  libzmq3-dev cppzmq-dev libmsgpack-dev python3-zmq python3-msgpack
  clang-format clang-14 libclang-rt-14-dev
  # GET /metrics is checked by promtool and by prometheus_client's parser (tests/integration)
  prometheus python3-prometheus-client
  # the Python module and its tests (Debian's CPU torch, not PyPI's CUDA wheels)
  python3-dev pybind11-dev python3-numpy python3-torch python3-pytest python3-pip python3-venv
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
