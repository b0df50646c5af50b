#!/usr/bin/env bash
# Installs what quantd needs on a fresh Debian machine that has Node 20 and npm:
# Bun (pinned, through npm) and the locked packages. Idempotent and quiet when done.
set -euo pipefail
cd "$(dirname "$0")/.."

BUN_VERSION=1.4.5
if ! command -v bun >/dev/null 2>&1 || [ "$(bun --version 2>/dev/null)" != "$BUN_VERSION" ]; then
  echo "bootstrap: installing bun@$BUN_VERSION with npm" >&2
  npm install -g --silent "bun@$BUN_VERSION" >&2
  hash -r
fi
# onnxruntime-node's install script would download CUDA libraries; the CPU
# libraries ship in the package, so it is never run (bun does not trust it).
export ONNXRUNTIME_NODE_INSTALL=skip
bun install --frozen-lockfile >&2

# better-sqlite3 is the store's driver under Node only (Bun uses bun:sqlite); it is
# built by scripts/build-node-sqlite.sh, which only the test suite needs.
