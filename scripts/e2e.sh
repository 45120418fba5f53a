#!/usr/bin/env bash
# The chat page end to end in a real browser (issue 5): Debian's Chromium driven by
# playwright-core (pinned in package-lock.json) against real `courier serve` processes on
# loopback, one per test. The tests are web/e2e/*.test.mjs, run with `node --test`.
#
#   ./scripts/e2e.sh
#
# Works on a fresh Debian machine with only the Rust toolchain: installs Debian's chromium
# and Node.js/npm when they are missing (as root, or through sudo), runs `npm ci` when
# node_modules is missing or older than package-lock.json, and builds the debug binary
# (scripts/test.sh has built it already for `cargo test`, so there it costs nothing; a
# release build would cost minutes of LTO for a few dozen messages).
#
# Screenshots of the main states, and of every page of a failing test, are written to
# target/e2e-screenshots/ (not committed).
#
# Environment:
#   COURIER_BIN      the server binary to test (default: target/debug/courier, built here)
#   CHROMIUM         the browser (default: /usr/bin/chromium)
#   E2E_SCREENSHOTS  where the screenshots go (default: target/e2e-screenshots)
#   E2E_TIMEOUT      seconds the whole run may take before it is killed (default: 600)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

started=$SECONDS
shots=${E2E_SCREENSHOTS:-target/e2e-screenshots}
export E2E_SCREENSHOTS=$shots

step() {
    printf -- '-- e2e: %s (%ds)\n' "$1" "$((SECONDS - started))"
}

# ---- what the tests need ----

browser=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$browser" ]; then
    step "installing Debian's chromium"
    # fonts-liberation is only a Recommends of chromium: without a font the screenshots
    # would be boxes.
    apt_install chromium fonts-liberation
fi
"$browser" --version 2>/dev/null || true

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    step "installing Node.js and npm"
    apt_install nodejs npm
fi
echo "node $(node --version), npm $(npm --version)"
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
    echo "e2e: warning: playwright-core wants Node.js 20 or later" >&2
fi

# npm ci when node_modules is missing or was installed from another lockfile. The stamp
# is the lockfile's hash, written after a successful install.
stamp=node_modules/.courier-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -d node_modules/playwright-core ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    step "npm ci (package-lock.json)"
    npm ci --no-audit --no-fund
    echo "$want" >"$stamp"
fi

if [ -z "${COURIER_BIN:-}" ]; then
    step "cargo build --bin courier"
    cargo build --bin courier
    export COURIER_BIN=target/debug/courier
fi

# ---- the tests ----

mkdir -p "$shots"
rm -f "$shots"/*.png
report_shots() {
    local status=$?
    echo
    if [ "$status" -ne 0 ]; then
        echo "e2e: FAILED (exit status $status); each failure above lists what its pages and server said"
    fi
    echo "e2e: screenshots in $(cd "$shots" && pwd):"
    ls -1 "$shots" 2>/dev/null | sed 's/^/  /' || true
    printf 'e2e: %ds in all\n' "$((SECONDS - started))"
}
trap report_shots EXIT

step "node --test web/e2e/"
# timeout(1) signals its whole process group, so servers and browsers go with node.
timeout --kill-after=10 "${E2E_TIMEOUT:-600}" node --test --test-reporter=spec web/e2e/
