#!/usr/bin/env bash
# ThreadSanitizer: configures and builds build-tsan (-DKVTIER_TSAN=ON, no CUDA, no benchmarks)
# with only the targets the TSan set needs, then runs that set: `ctest -L tsan`, the Catch2
# cases cmake/tsan.cmake lists (sessions, leases, eviction, the request channel, the disk
# tier's threads, index save and rebuild, the GPU tier's emulation), with TSAN_OPTIONS and
# OMP_NUM_THREADS=1 set there.  The integration cases start kvtierd built with TSan, so races
# in the daemon count too: every report (a daemon's included) lands in BUILD_DIR/tsan-logs/,
# which is printed, and any report fails the run even if its test passed.
# Measured on 2 vCPUs with one other build running: 5 min from clean (build 4 min 11 s,
# tests 51 s at -j2), 1 min 15 s once built.
#
# Usage: scripts/tsan.sh [BUILD_DIR]    (default build-tsan; KVTIER_TSAN_JOBS, default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build-tsan}
jobs=${KVTIER_TSAN_JOBS:-2}
start=$SECONDS

gen=()
if [ ! -f "$dir/CMakeCache.txt" ] && command -v ninja >/dev/null; then gen=(-G Ninja); fi
cmake -S . -B "$dir" "${gen[@]}" -DCMAKE_BUILD_TYPE=Debug -DKVTIER_TSAN=ON -DKVTIER_CUDA=OFF \
  -DKVTIER_BENCH=OFF >/dev/null
# tsan_integration_test brings kvtierd and libkvtier (cmake/tsan.cmake).
cmake --build "$dir" -j"$jobs" --target tsan_integration_test disk_tier_test index_test engine_test \
  lookup_index_test
built=$SECONDS

logs="$dir/tsan-logs"
rm -rf "$logs"
mkdir -p "$logs"
rc=0
ctest --test-dir "$dir" -L tsan -j"$jobs" --output-on-failure || rc=$?

reports=$(find "$logs" -type f | sort)
if [ -n "$reports" ]; then
  for f in $reports; do
    echo "==== ThreadSanitizer report $f"
    cat "$f"
  done
  echo "tsan: $(echo "$reports" | wc -l) process(es) reported; see above" >&2
  rc=1
fi
verdict=$([ $rc = 0 ] && echo clean || echo FAILED)
echo "tsan: build $((built - start)) s, tests $((SECONDS - built)) s: $verdict"
exit $rc
