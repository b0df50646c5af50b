#!/bin/sh
# Installs quantd from its unpacked release tarball (run from inside it) on a
# Debian/Ubuntu board, or removes it. Idempotent: running it again upgrades the
# program and keeps /etc/quantd/config.json and /var/lib/quantd.
#
#   sudo ./install.sh                  install (or upgrade), enable and (re)start
#   sudo ./install.sh --uninstall      stop, disable, remove program and unit;
#                                      keeps config, state and the quantd user
#   sudo ./install.sh --uninstall --purge   also removes /etc/quantd and /var/lib/quantd
#
# Options:
#   --root DIR          install into DIR instead of / (CI, image builds); no
#                       systemctl calls, no root check
#   --memory-max MB     MemoryMax= of the unit (default: from `quantd device --json`,
#                       else 1024)
#   --device-root DIR   read /proc from DIR when choosing the profile (recorded boards)
#   --no-start          install and enable, but do not (re)start
set -eu

ROOT=""
MODE=install
PURGE=0
MEMORY_MAX=""
DEVICE_ROOT=""
START=1
SRC=$(cd "$(dirname "$0")" && pwd)

die() {
  echo "install.sh: $*" >&2
  exit 1
}

while [ $# -gt 0 ]; do
  case "$1" in
  --root)
    [ $# -ge 2 ] || die "--root needs a directory"
    ROOT=$(cd "$2" 2>/dev/null && pwd) || die "--root $2: no such directory"
    if [ "$ROOT" = / ]; then ROOT=""; fi
    shift 2
    ;;
  --uninstall) MODE=uninstall; shift ;;
  --purge) PURGE=1; shift ;;
  --memory-max)
    [ $# -ge 2 ] || die "--memory-max needs a size in MiB"
    case "$2" in '' | *[!0-9]*) die "--memory-max must be a whole number of MiB, got '$2'" ;; esac
    MEMORY_MAX=$2
    shift 2
    ;;
  --device-root)
    [ $# -ge 2 ] || die "--device-root needs a directory"
    DEVICE_ROOT=$2
    shift 2
    ;;
  --no-start) START=0; shift ;;
  -h | --help)
    sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *) die "unknown option $1 (see --help)" ;;
  esac
done
[ "$PURGE" -eq 0 ] || [ "$MODE" = uninstall ] || die "--purge goes with --uninstall"

PREFIX=/opt/quantd
UNIT=/etc/systemd/system/quantd.service
SYSUSERS=/usr/lib/sysusers.d/quantd.conf
LINK=/usr/local/bin/quantd
CONFIG_DIR=/etc/quantd
STATE_DIR=/var/lib/quantd

# systemctl only on the live system, and only when systemd runs it.
use_systemctl() {
  [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (sudo ./install.sh), or give --root DIR"
fi

uninstall() {
  if use_systemctl; then
    systemctl disable --now quantd.service 2>/dev/null || true
  fi
  rm -f "$ROOT$UNIT" "$ROOT$LINK" "$ROOT$SYSUSERS"
  rm -rf "$ROOT$PREFIX" "$ROOT$PREFIX.new" "$ROOT$PREFIX.old"
  rmdir "$ROOT$UNIT.d" 2>/dev/null || true
  if [ "$PURGE" -eq 1 ]; then
    rm -rf "$ROOT$CONFIG_DIR" "$ROOT$STATE_DIR" "$ROOT/var/lib/private/quantd"
    echo "quantd removed, with its configuration and state (the quantd user is kept)"
  else
    echo "quantd removed; kept $CONFIG_DIR, $STATE_DIR and the quantd user (--purge removes the directories)"
  fi
  if use_systemctl; then systemctl daemon-reload; fi
}

# The profile's memory cap, from the binary being installed when it runs here.
memory_max() {
  if [ -n "$MEMORY_MAX" ]; then
    echo "$MEMORY_MAX"
    return
  fi
  set -- device --json
  if [ -n "$DEVICE_ROOT" ]; then set -- "$@" --root "$DEVICE_ROOT"; fi
  mb=$("$SRC/quantd" "$@" 2>/dev/null | sed -n 's/.*"memoryMaxMb": *\([0-9][0-9]*\).*/\1/p' | head -n 1) || true
  if [ -z "$mb" ]; then
    echo "install.sh: 'quantd device' did not run here; MemoryMax=1024M (set it with --memory-max)" >&2
    mb=1024
  fi
  echo "$mb"
}

# Group id of quantd in the target's /etc/group (empty when the group is not there).
quantd_gid() {
  [ -f "$ROOT/etc/group" ] || return 0
  awk -F: '$1 == "quantd" { print $3 }' "$ROOT/etc/group"
}

create_user() {
  install -D -m 0644 "$SRC/sysusers.conf" "$ROOT$SYSUSERS"
  if command -v systemd-sysusers >/dev/null 2>&1; then
    if [ -n "$ROOT" ]; then
      mkdir -p "$ROOT/etc"
      systemd-sysusers --root="$ROOT" "$ROOT$SYSUSERS"
    else
      systemd-sysusers "$SYSUSERS"
    fi
  elif [ -z "$ROOT" ]; then
    getent group quantd >/dev/null || groupadd --system quantd
    getent passwd quantd >/dev/null ||
      useradd --system --gid quantd --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin quantd
  else
    echo "install.sh: no systemd-sysusers; the quantd user is not created under --root" >&2
  fi
}

install_quantd() {
  for f in quantd lib/onnxruntime_binding.node lib/libonnxruntime.so.1 quantd.service config.default.json sysusers.conf; do
    [ -e "$SRC/$f" ] || die "$SRC/$f is missing: run install.sh from the unpacked release tarball"
  done
  # Fails here, with DEVICE_UNSUPPORTED, on 32-bit ARM or a too-old glibc.
  if [ -z "$ROOT" ]; then
    "$SRC/quantd" device >/dev/null || die "this machine cannot run quantd (see the error above)"
  fi
  mb=$(memory_max)

  # Program: copy beside, then swap, so a running service never sees a half-copied tree.
  mkdir -p "$ROOT/opt"
  rm -rf "$ROOT$PREFIX.new" "$ROOT$PREFIX.old"
  mkdir "$ROOT$PREFIX.new"
  (cd "$SRC" && tar -cf - --exclude=./install.sh .) | (cd "$ROOT$PREFIX.new" && tar -xf - --no-same-owner)
  install -m 0755 "$SRC/install.sh" "$ROOT$PREFIX.new/install.sh"
  chmod -R u=rwX,go=rX "$ROOT$PREFIX.new"
  if [ -d "$ROOT$PREFIX" ]; then mv "$ROOT$PREFIX" "$ROOT$PREFIX.old"; fi
  mv "$ROOT$PREFIX.new" "$ROOT$PREFIX"
  rm -rf "$ROOT$PREFIX.old"
  mkdir -p "$ROOT$(dirname "$LINK")"
  ln -sfn "$PREFIX/quantd" "$ROOT$LINK"

  create_user
  gid=$(quantd_gid)

  # Configuration: defaults only when there is none; an operator's edits survive upgrades.
  install -d -m 0755 "$ROOT$CONFIG_DIR"
  if [ ! -e "$ROOT$CONFIG_DIR/config.json" ]; then
    install -m 0640 "$SRC/config.default.json" "$ROOT$CONFIG_DIR/config.json"
    if [ -n "$gid" ]; then chgrp "$gid" "$ROOT$CONFIG_DIR/config.json"; fi
  fi

  mkdir -p "$ROOT$(dirname "$UNIT")"
  sed "s/^MemoryMax=.*/MemoryMax=${mb}M/" "$SRC/quantd.service" >"$ROOT$UNIT.tmp"
  chmod 0644 "$ROOT$UNIT.tmp"
  mv "$ROOT$UNIT.tmp" "$ROOT$UNIT"

  if use_systemctl; then
    systemctl daemon-reload
    systemctl enable quantd.service
    if [ "$START" -eq 1 ]; then
      systemctl restart quantd.service
      echo "quantd installed and started (MemoryMax=${mb}M); systemctl status quantd"
    else
      echo "quantd installed and enabled (MemoryMax=${mb}M); not started"
    fi
  else
    echo "quantd installed into ${ROOT:-/} (MemoryMax=${mb}M); systemd not managed here"
  fi
}

case "$MODE" in
install) install_quantd ;;
uninstall) uninstall ;;
esac
