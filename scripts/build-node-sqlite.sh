#!/usr/bin/env bash
# Builds better-sqlite3, the store's driver under Node, for the Node contract tests
# (test/integration/store-node.test.ts). Bun never loads it, so neither the demo nor
# the agent needs it. It ships no binary, bun does not run its install script, and
# that script's prebuild download cannot reach GitHub here anyway: build the addon
# from source against the local Node headers with npm's bundled node-gyp, so nothing
# is fetched. Quiet: one line while it builds, the compiler's last lines if it fails.
# Skipped once built (and rebuilt if it no longer loads, e.g. after a Node upgrade).
set -euo pipefail
cd "$(dirname "$0")/.."

BSQ_DIR=node_modules/better-sqlite3
bsq_loads() { node -e 'require("./'"$BSQ_DIR"'")(":memory:").close()' >/dev/null 2>&1; }
[ -d "$BSQ_DIR" ] || { echo "build-node-sqlite: $BSQ_DIR missing; run scripts/bootstrap.sh first" >&2; exit 1; }
if [ -f "$BSQ_DIR/build/Release/better_sqlite3.node" ] && bsq_loads; then
  exit 0
fi
NODE_PREFIX="$(node -p 'require("path").resolve(process.execPath, "../..")')"
if [ ! -f "$NODE_PREFIX/include/node/node_api.h" ]; then
  echo "build-node-sqlite: Node headers not found under $NODE_PREFIX/include/node; install them (Debian: libnode-dev) to build better-sqlite3" >&2
  exit 1
fi
NODE_GYP="$(npm root -g)/npm/node_modules/node-gyp/bin/node-gyp.js"
echo "build-node-sqlite: building better-sqlite3 from source for the Node store tests (about 2 minutes)" >&2
log=$(mktemp)
if [ -f "$NODE_GYP" ]; then
  gyp=(node "$NODE_GYP")
else
  gyp=(npx --yes node-gyp)
fi
if ! (cd "$BSQ_DIR" && "${gyp[@]}" rebuild --release --nodedir="$NODE_PREFIX" -j 2) >"$log" 2>&1 || ! bsq_loads; then
  echo "build-node-sqlite: the build failed; its last lines:" >&2
  tail -25 "$log" >&2
  rm -f "$log"
  exit 1
fi
rm -f "$log"
