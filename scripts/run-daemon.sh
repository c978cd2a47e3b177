#!/usr/bin/env bash
# First README command: install, build, run kvtierd in the foreground on its built-in defaults.
# Socket and state live under ./var/ (see docs/operations.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh build
exec build/daemon/kvtierd "$@"
