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

# better-sqlite3 (the store's driver under Node; Bun uses bun:sqlite) ships no
# binary and bun does not run its install script, whose prebuild download cannot
# reach GitHub here anyway. Build the addon from source against the local Node
# headers, with npm's bundled node-gyp, so nothing is fetched. Skipped once built
# (and rebuilt if it no longer loads, e.g. after a Node upgrade changed the ABI).
BSQ_DIR=node_modules/better-sqlite3
bsq_loads() { node -e 'require("./'"$BSQ_DIR"'")(":memory:").close()' >/dev/null 2>&1; }
if [ -d "$BSQ_DIR" ] && { [ ! -f "$BSQ_DIR/build/Release/better_sqlite3.node" ] || ! bsq_loads; }; then
  NODE_PREFIX="$(node -p 'require("path").resolve(process.execPath, "../..")')"
  if [ ! -f "$NODE_PREFIX/include/node/node_api.h" ]; then
    echo "bootstrap: Node headers not found under $NODE_PREFIX/include/node; install them (Debian: libnode-dev) to build better-sqlite3" >&2
    exit 1
  fi
  NODE_GYP="$(npm root -g)/npm/node_modules/node-gyp/bin/node-gyp.js"
  echo "bootstrap: building better-sqlite3 from source (about 2 minutes)" >&2
  if [ -f "$NODE_GYP" ]; then
    (cd "$BSQ_DIR" && node "$NODE_GYP" rebuild --release --nodedir="$NODE_PREFIX" -j 2 >&2)
  else
    (cd "$BSQ_DIR" && npx --yes node-gyp rebuild --release --nodedir="$NODE_PREFIX" -j 2 >&2)
  fi
  node -e 'require("./'"$BSQ_DIR"'")(":memory:").close()'
fi
