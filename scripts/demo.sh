#!/usr/bin/env bash
# The demo, from a fresh clone on a machine with Node 20 and npm: installs Bun
# (through npm) and the locked packages, then runs `quantd demo` on the model and
# samples the repository ships. Extra arguments go to `quantd demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec bun run --silent quantd demo "$@"
