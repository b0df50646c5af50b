#!/usr/bin/env bash
# `bun run test:arm64`: the arm64 emulation test (test/arm64). Installs the
# Debian packages it needs when they are missing and this is a root shell with
# apt; otherwise says what to install.
set -euo pipefail
cd "$(dirname "$0")/../.."

packages=(qemu-user-static libc6-arm64-cross libstdc++6-arm64-cross libgcc-s1-arm64-cross)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== apt-get install ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "test:arm64 needs: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

QUANTD_ARM64=1 exec bun test --timeout 1800000 test/arm64 "$@"
