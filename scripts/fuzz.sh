#!/usr/bin/env bash
# The libFuzzer harnesses (docs/fuzzing.md): builds build-fuzz with clang-14 (ASan, UBSan,
# libFuzzer coverage) and runs every harness for KVTIER_FUZZ_SECONDS (default 60) on a copy of
# its seed corpus under fuzz/corpus/ plus the reproducers of past findings (fuzz/crashes/).
# Exits non-zero when any harness finds a crash, a leak, a timeout or an out-of-memory; the
# reproducer is kept and its path printed.
#
#   scripts/fuzz.sh                   every harness
#   scripts/fuzz.sh session disk      some of them
#   KVTIER_FUZZ_SECONDS=0 scripts/fuzz.sh   build, then run each harness over its seeds only
#   scripts/fuzz.sh --seeds           regenerate fuzz/corpus/ with fuzz_seeds
#
# KVTIER_FUZZ_BUILD (default build-fuzz) names the build directory, KVTIER_FUZZ_JOBS the
# build's parallelism (default: the number of CPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
dir=${KVTIER_FUZZ_BUILD:-build-fuzz}
seconds=${KVTIER_FUZZ_SECONDS:-60}
all=(session channel config disk index nf4)

start=$(date +%s)
CC=clang-14 CXX=clang++-14 cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Debug -DKVTIER_FUZZ=ON \
  -DKVTIER_CUDA=OFF -DKVTIER_BENCH=OFF >/dev/null
cmake --build "$dir" --target kvtier_fuzzers -j"${KVTIER_FUZZ_JOBS:-$(nproc)}"
echo "fuzz: built in $(($(date +%s) - start)) s"

if [ "${1:-}" = --seeds ]; then
  rm -rf fuzz/corpus
  "$dir/fuzz/fuzz_seeds" fuzz/corpus .
  du -sh fuzz/corpus
  exit 0
fi

# Longest input per harness: enough for the seeds and a few mutations on top.
declare -A max_len=([session]=65536 [channel]=8192 [config]=16384 [disk]=32768 [index]=65536
                    [nf4]=32768)
# FAISS's reader leaks on nearly every corrupt index file (fuzz/fuzz_index.cpp): libFuzzer's
# per-input leak check then runs at ~10 exec/s, so that harness runs without it.
declare -A extra=([index]=-detect_leaks=0)
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=("${all[@]}")
for h in "${harnesses[@]}"; do
  [ -n "${max_len[$h]:-}" ] || { echo "fuzz: no harness '$h' (${all[*]})" >&2; exit 2; }
done
work=$(mktemp -d /tmp/kvtier-fuzz-run-XXXXXX)
if [ "$seconds" -gt 0 ]; then limits=(-max_total_time="$seconds"); else limits=(-runs=0); fi

# One harness on a copy of its corpus (the checked-in files stay as they are); its exit status
# goes to $work/<h>.rc.
run_one() {
  local h=$1 corpus="$work/corpus-$1"
  mkdir -p "$corpus" "$work/artifacts-$h"
  cp fuzz/corpus/"$h"/* "$corpus"/
  # Past findings' reproducers run every time too (regressions).
  if [ -d fuzz/crashes/"$h" ]; then cp fuzz/crashes/"$h"/* "$corpus"/; fi
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$dir/fuzz/fuzz_$h" "${limits[@]}" -max_len="${max_len[$h]}" -timeout=25 \
    -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$work/artifacts-$h/" \
    ${extra[$h]:-} "$corpus" >"$work/$h.log" 2>&1 &
  local pid=$! rc=0
  wait $pid || rc=$?
  echo $rc >"$work/$h.rc"
  # What a crashed harness could not remove: shared memory, scratch directories.
  rm -rf /dev/shm/kvtier-fuzz-*-"$pid"-* /dev/shm/kvtier-fuzz-*-"$pid".lock \
    /tmp/kvtier-fuzz-*-"$pid"-* 2>/dev/null || true
}

# Harnesses run side by side, KVTIER_FUZZ_PARALLEL at a time (default: the number of CPUs).
parallel=${KVTIER_FUZZ_PARALLEL:-$(nproc)}
echo "fuzz: ${harnesses[*]}: ${seconds} s each, $parallel at a time"
for h in "${harnesses[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do wait -n || true; done
  run_one "$h" &
done
wait

passed=0
failed=0
for h in "${harnesses[@]}"; do
  rc=$(cat "$work/$h.rc" 2>/dev/null || echo 99)
  grep -E '^stat::number_of_executed_units|^stat::average_exec_per_sec|^stat::peak_rss_mb' \
    "$work/$h.log" | sed "s/^/fuzz: $h /" || true
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "fuzz: $h FAILED (exit $rc); log $work/$h.log, reproducer(s):" >&2
    ls "$work/artifacts-$h"/* >&2 2>/dev/null || true
    grep -E -A30 '^==[0-9]+==ERROR|runtime error|^fuzz_[a-z]+:|deadly signal' "$work/$h.log" \
      | head -60 >&2 || true
  fi
done
echo "fuzz: $passed passed, $failed failed ($(($(date +%s) - start)) s)"
if [ $failed -eq 0 ]; then
  rm -rf "$work"
else
  echo "fuzz: kept $work" >&2
  exit 1
fi
