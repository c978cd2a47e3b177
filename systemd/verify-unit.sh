#!/usr/bin/env bash
# Checks kvtier.service with `systemd-analyze verify`.
# Usage: verify-unit.sh UNIT_FILE [KVTIERD_BINARY]
# The unit is copied to a temporary directory with ExecStart= pointing at KVTIERD_BINARY
# (default /bin/true): verify insists that the binary exists.  Any warning that names the
# unit fails the test; warnings about other units on the host are shown and ignored.
# Exit status: 0 clean, 1 the unit has problems, 77 systemd-analyze cannot run here (skip).
set -uo pipefail

unit_src=${1:?usage: verify-unit.sh UNIT_FILE [KVTIERD_BINARY]}
binary=${2:-/bin/true}
[ -x "$binary" ] || binary=/bin/true

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "SKIP: systemd-analyze is not installed"
  exit 77
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
unit_name=$(basename "$unit_src")
unit="$tmp/$unit_name"
sed -E "s|^ExecStart=[^ ]+|ExecStart=$binary|" "$unit_src" >"$unit"
grep -q "^ExecStart=$binary" "$unit" || { echo "FAIL: no ExecStart= line in $unit_src"; exit 1; }

# Warnings and errors only, no colours or pager; --man=no: the Documentation= page is not
# installed at build time.  --recursive-errors=no: problems of the host's other units (our
# After=/WantedBy= targets) do not change the exit status.
out=$(cd "$tmp" && SYSTEMD_LOG_LEVEL=warning SYSTEMD_LOG_COLOR=0 SYSTEMD_PAGER=cat \
      systemd-analyze verify --man=no --recursive-errors=no "$unit" 2>&1)
rc=$?
echo "systemd-analyze verify: exit status $rc"
[ -z "$out" ] || printf '%s\n' "$out"

ours=$(printf '%s\n' "$out" | grep -F -e "$unit_name" -e "$tmp" || true)
if [ -n "$ours" ]; then
  echo "FAIL: systemd-analyze reported problems with $unit_name:"
  printf '%s\n' "$ours"
  exit 1
fi
if [ "$rc" -ne 0 ]; then
  # A failure that does not name the unit: the analyzer itself could not run (no /proc,
  # seccomp, a broken host systemd).  Nothing was checked.
  echo "SKIP: systemd-analyze could not check $unit_name (exit status $rc)"
  exit 77
fi
echo "OK: $unit_name verified"
