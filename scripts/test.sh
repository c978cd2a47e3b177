#!/usr/bin/env bash
# Second README command: install, build and run every test, then the same suite under
# ASan+UBSan, the concurrency cases under TSan, the thread-safety analysis build, and every
# fuzzer for a minute; clang-format.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The engine venv (PyPI torch, vLLM's CPU build, transformers; reused while its lock is
# unchanged) must exist before CMake configures, which registers tests/engines against it.
scripts/engine-venv.sh
scripts/build.sh build
(cd build && ctest --output-on-failure -j2 --timeout 300)
if [ "${KVTIER_SKIP_SANITIZERS:-0}" != 1 ]; then
  # nvcc output is not instrumented; the CUDA kernel bodies still run on the CPU in nf4_tests.
  KVTIER_BUILD_TYPE=Debug scripts/build.sh build-asan -DKVTIER_SANITIZE=ON -DKVTIER_BENCH=OFF -DKVTIER_CUDA=OFF
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
     ctest --output-on-failure -j2 --timeout 600 -LE nosan)
fi
if [ "${KVTIER_SKIP_TSAN:-0}" != 1 ]; then
  # The concurrency-heavy cases under ThreadSanitizer (sessions, leases, eviction, channel,
  # disk writer, index save/rebuild); any report fails the run.
  scripts/tsan.sh build-tsan
fi
if [ "${KVTIER_SKIP_TSA:-0}" != 1 ]; then
  # clang-14's -Wthread-safety over the product, as errors (common/mutex.h annotations).
  scripts/thread_safety.sh build-tsa
fi
if [ "${KVTIER_SKIP_FUZZ:-0}" != 1 ]; then
  # Every libFuzzer harness for a bounded time on its seed corpus (docs/fuzzing.md).
  KVTIER_FUZZ_SECONDS=${KVTIER_FUZZ_SECONDS:-60} scripts/fuzz.sh
fi
if command -v clang-format >/dev/null; then
  files=$(git ls-files '*.cpp' '*.h' '*.cu' '*.cuh' 2>/dev/null || true)
  [ -z "$files" ] || clang-format --dry-run --Werror $files
  echo "clang-format: clean"
fi
