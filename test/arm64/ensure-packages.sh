#!/usr/bin/env bash
# Makes sure the Debian packages the arm64 emulation needs are installed:
# qemu-user and the arm64 glibc/libstdc++/libgcc from the cross toolchain.
# Installs the missing ones with apt when run as root; otherwise names them and
# exits 1. Quiet and quick when everything is there.
set -euo pipefail

packages=(qemu-user-static libc6-arm64-cross libstdc++6-arm64-cross libgcc-s1-arm64-cross)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "apt-get install ${missing[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "the arm64 emulation needs: apt-get install ${missing[*]}" >&2
  exit 1
fi
