#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs, then checks
# formatting, lint and types, then runs `bun test`. Exits non-zero when any step
# fails. The last line is always `N passed, N failed, N skipped` with bun test's counts.
set -uo pipefail
cd "$(dirname "$0")/.."

pass=0
fail=0
skip=0
status=0
finish() {
  [ "$status" -eq 0 ] || echo "checks failed (see above)"
  echo "${pass} passed, ${fail} failed, ${skip} skipped"
  exit "$status"
}

echo "== bootstrap"
bash scripts/bootstrap.sh || { status=1; finish; }
# better-sqlite3 only serves the Node store contract test; a failed build is shown
# here and that test then fails naming the missing addon.
bash scripts/build-node-sqlite.sh || status=1
# The fleet tests start their own mosquitto and PostgreSQL (Debian packages;
# system services they may start are not used) and drive the dashboard in
# Debian's chromium.
# Without root or apt the tests that need them skip.
fleet_pkgs=""
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || fleet_pkgs="mosquitto"
command -v chromium >/dev/null 2>&1 || fleet_pkgs="$fleet_pkgs chromium"
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || fleet_pkgs="$fleet_pkgs postgresql"
# zsh runs the generated zsh completion (test/integration/completion.test.ts).
command -v zsh >/dev/null 2>&1 || fleet_pkgs="$fleet_pkgs zsh"
if [ -n "$fleet_pkgs" ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing$fleet_pkgs for the fleet tests"
  apt_log=$(mktemp)
  # shellcheck disable=SC2086
  if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $fleet_pkgs; } >"$apt_log" 2>&1; then
    echo "could not install$fleet_pkgs; the fleet tests needing them will skip. apt's last lines:"
    tail -8 "$apt_log" | sed 's/^/  /'
  fi
  rm -f "$apt_log"
  command -v systemctl >/dev/null 2>&1 && systemctl disable --now mosquitto postgresql >/dev/null 2>&1 || true
fi

# The arm64 smoke test runs the arm64 release under qemu-user with Debian's arm64
# libraries; installed with apt when missing, else that test skips.
# With them, the full emulation test (test/arm64: Pi 4 and Pi 5 CPUs quantize and
# classify, logits compared with this machine's; 4-7 minutes) is part of the suite.
arm64_log=$(mktemp)
if bash test/arm64/ensure-packages.sh >"$arm64_log" 2>&1; then
  export QUANTD_ARM64=1
else
  echo "could not install the arm64 emulation packages; the arm64 tests will skip. The last lines:"
  tail -8 "$arm64_log" | sed 's/^/  /'
fi
rm -f "$arm64_log"

echo "== format check"
if ! bun x biome format . >/dev/null 2>&1; then
  bun x biome format . 2>&1 | tail -40
  status=1
fi
echo "== lint"
bun x biome lint . 2>&1 | tail -40
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "== typecheck"
bun x tsc --noEmit -p . || status=1

echo "== bun test"
log=$(mktemp)
# bun ignores bunfig's [test] timeout; integration tests load real models and need more than 5 s.
bun test --timeout 60000 2>&1 | tee "$log"
test_status=${PIPESTATUS[0]}
# bun test ends with a summary such as " 120 pass" / " 0 fail".
pass=$(grep -Eo '^ *[0-9]+ pass$' "$log" | tail -1 | grep -Eo '[0-9]+' || echo 0)
fail=$(grep -Eo '^ *[0-9]+ fail$' "$log" | tail -1 | grep -Eo '[0-9]+' || echo 0)
skip=$(grep -Eo '^ *[0-9]+ skip$' "$log" | tail -1 | grep -Eo '[0-9]+' || echo 0)
rm -f "$log"
[ "$test_status" -eq 0 ] || status=1

# The fault suite against real agents, small (a few minutes): fails on a 5xx, a failed request
# under swaps, or an agent that does not serve its model after a kill or a corrupt database.
echo "== fault suite (bun bench/faults.ts --short)"
bun bench/faults.ts --short || status=1
finish
