#!/usr/bin/env bash
# `bun run test:arm64`: the full arm64 emulation test (test/arm64, with
# QUANTD_ARM64=1), after installing the Debian packages it needs.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash test/arm64/ensure-packages.sh
QUANTD_ARM64=1 exec bun test --timeout 1800000 test/arm64 "$@"
