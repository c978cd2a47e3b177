#!/usr/bin/env bash
# The GPU checks on a GPU host, from a build packed with /work/shared/tools/gpu_pack.sh (the
# host has no Boost, FAISS, LMDB...: the pack brings the libraries, /opt/kvtier-libs).
#
#   scripts/gpu_check.sh PACK.tar.xz   # unpacks it at / first (binaries at the build's own
#                                      # absolute path, which the tests have compiled in)
#   scripts/gpu_check.sh [BUILD_DIR]   # already unpacked; default: /opt/kvtier-libs/BUILD_DIR
#
# Runs, each under a time limit, with LD_LIBRARY_PATH=/opt/kvtier-libs:
#   gpu_tier_test     tiers/gpu: backends, pool allocator, CUDA probe; the CUDA device cases
#                     (copies, NF4 kernels, a cross-process import in a re-executed child)
#   gpu_cuda_test     tests/gpu: the GPU tier integration suite on CUDA through kvtierd
#                     (KVTIER_TEST_GPU_BACKEND=cuda)
#   isolation_cuda    integration_test's per-domain GPU pool case on CUDA (needs root)
#   nf4_tests         kernels: the CUDA NF4 kernels against the CPU codec
#   integration [gpu] the same suite on the host emulation, for comparison
#   gpu_bench         bench/gpu_bench --quick --backend cuda (its figures are printed)
# and prints one line per step.  A CUDA case that skips ("no usable GPU", "skipping the CUDA
# GPU tier suite") counts as a failure here: on this host they must run.  Full logs are kept
# in $KVTIER_GPU_CHECK_LOGS (default /tmp/kvtier-gpu-check).  Exit status 0 only if all pass.
set -uo pipefail

libs=/opt/kvtier-libs
arg=${1:-}
if [[ "$arg" == *.tar.xz ]]; then
  tar -C / -xJf "$arg" || { echo "gpu_check: cannot unpack $arg" >&2; exit 2; }
  arg=
fi
B=${arg:-$(cat "$libs/BUILD_DIR" 2>/dev/null)}
if [ -z "$B" ] || [ ! -d "$B" ]; then
  echo "gpu_check: no build directory (unpack a gpu_pack.sh archive, or pass BUILD_DIR)" >&2
  exit 2
fi
export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export KVTIERD=$B/daemon/kvtierd  # the tests' daemon, should the compiled-in path differ
logs=${KVTIER_GPU_CHECK_LOGS:-/tmp/kvtier-gpu-check}
rm -rf "$logs" && mkdir -p "$logs"

echo "gpu_check: build $B"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader |
    sed 's/^/gpu_check: device /'
else
  echo "gpu_check: no nvidia-smi on this host"
fi

summary=()
failed=0
# step NAME LIMIT_S COMMAND...: runs it, logs to $logs/NAME.log, records one summary line.
step() {
  local name=$1 limit=$2
  shift 2
  local bin=$1
  if [ ! -x "$bin" ]; then
    summary+=("$(printf '%-16s %-10s %4s   %s' "$name" MISSING - "$bin")")
    failed=1
    return
  fi
  local t0=$SECONDS rc verdict
  (cd "$logs" && timeout "$limit" "$@") >"$logs/$name.log" 2>&1
  rc=$?
  verdict=PASS
  if grep -q -e "no usable GPU, skipped" -e "skipping the CUDA GPU tier suite" \
       -e "no usable CUDA device: skipped" "$logs/$name.log"; then
    verdict="SKIPPED"  # a CUDA case found no usable device (the reason is in the log)
  elif [ $rc -eq 124 ]; then
    verdict="TIMEOUT"
  elif [ $rc -ne 0 ]; then
    verdict="FAIL rc=$rc"
  fi
  local detail
  detail=$(grep -E "All tests passed|test cases:|^assertions:" "$logs/$name.log" | tr -s ' ' |
           paste -sd' ' -)
  if [ "$verdict" = SKIPPED ]; then
    detail=$(grep -h -m1 -o -e "no usable GPU, skipped.*" -e "skipping the CUDA GPU tier suite.*" \
             -e "no usable CUDA device: skipped" "$logs/$name.log")
  fi
  summary+=("$(printf '%-16s %-10s %4ds  %s' "$name" "$verdict" $((SECONDS - t0)) "$detail")")
  if [ "$verdict" != PASS ]; then
    failed=1
    if [ "$verdict" != SKIPPED ]; then
      echo "---- $name: $verdict; last lines of $logs/$name.log"
      tail -n 40 "$logs/$name.log"
    fi
  fi
}

step gpu_tier_test 300 "$B/tiers/gpu_tier_test"
KVTIER_TEST_GPU_BACKEND=cuda step gpu_cuda_test 400 "$B/tests/gpu/gpu_cuda_test"
# tests/integration/isolation_test.cpp's per-domain pool case on CUDA ("-w NoAssertions": it
# returns without a word when not run as root).
# The tenants keep uid 0 and change only their gid (the rules name gids): the GPU host denies
# non-root processes its files, shared libraries included.
KVTIER_TEST_TENANT_KEEP_UID=1 KVTIER_TEST_GPU_BACKEND=cuda step isolation_cuda 300 \
  "$B/tests/integration_test" -w NoAssertions "a domain with gpu_size gets GPU pools of its own*"
step nf4_tests 300 "$B/kernels/nf4_tests"
KVTIER_TEST_GPU_BACKEND=emulation step integration_gpu 300 "$B/tests/integration_test" "[gpu]"
step gpu_bench 300 "$B/bench/gpu_bench" --quick --backend cuda

echo "==== gpu_check summary ($B)"
printf '%s\n' "${summary[@]}"
if [ -f "$logs/gpu_bench.log" ]; then
  echo "==== gpu_bench figures"
  cat "$logs/gpu_bench.log"
fi
[ $failed -eq 0 ] && echo "gpu_check: all passed" || echo "gpu_check: FAILED (logs in $logs)"
exit $failed
