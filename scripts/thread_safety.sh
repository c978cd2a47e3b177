#!/usr/bin/env bash
# Builds the product (daemon, engine, tiers, index, client library, CLI) with clang-14's
# -Wthread-safety as errors: every GUARDED_BY member touched without its mutex, every REQUIRES
# function called without it, fails the build (common/mutex.h).  Usage:
#   scripts/thread_safety.sh [BUILD_DIR]    (default build-tsa)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build-tsa}
CC=clang-14 CXX=clang++-14 cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Debug -DKVTIER_CUDA=OFF \
  -DKVTIER_BENCH=OFF -DCMAKE_CXX_FLAGS="-O0 -g0 -Wthread-safety -Werror=thread-safety" >/dev/null
cmake --build "$dir" -j"$(nproc)" --target kvtierd kvtierd_test kvtier kvtierctl kvtier_remote_cluster
echo "thread safety analysis: clean"
