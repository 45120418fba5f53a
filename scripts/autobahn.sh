#!/usr/bin/env bash
# Autobahn|Testsuite server cases 1-10 against `courier echo`, strictly.
#
#   scripts/autobahn.sh [OUTDIR]          (default reports/autobahn)
#
# Runs kosoku (PyPI `kosoku==0.1.0`, a Python 3 runner of the Autobahn case files) against a
# release `courier echo`, with every case but compression (12.*, 13.*). Passes only when
# every case has `behavior` and `behaviorClose` of OK or INFORMATIONAL: NON-STRICT, FAILED,
# UNIMPLEMENTED or anything else is a failure. Then stops the server with SIGTERM and
# requires exit status 0.
#
# Environment:
#   AUTOBAHN_VENV     venv holding kosoku (default target/kosoku-venv; created when missing)
#   AUTOBAHN_OUT      report directory when no argument is given
#   AUTOBAHN_TIMEOUT  seconds kosoku may run (default 600; the suite takes well under 1 min)
#   AUTOBAHN_SERVER   a server binary to test instead of building courier; it is started as
#                     `$AUTOBAHN_SERVER echo --listen 127.0.0.1:0 --max-message 16777216`
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

out=${1:-${AUTOBAHN_OUT:-reports/autobahn}}
venv=${AUTOBAHN_VENV:-target/kosoku-venv}
kosoku_timeout=${AUTOBAHN_TIMEOUT:-600}
kosoku_version=0.1.0
# Section 9 sends messages of up to 16 MiB.
max_message=16777216

log() { echo "autobahn.sh: $*"; }

apt_updated=""
apt_install() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if [ -z "$apt_updated" ]; then
        $sudo apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

# ---- the server binary
if [ -n "${AUTOBAHN_SERVER:-}" ]; then
    server=$AUTOBAHN_SERVER
else
    log "building courier (release)"
    cargo build --release --bin courier
    server="${CARGO_TARGET_DIR:-target}/release/courier"
fi

# ---- kosoku in a venv
if ! "$venv/bin/kosoku" --help >/dev/null 2>&1 ||
    ! "$venv/bin/python" -m pip show kosoku 2>/dev/null | grep -qx "Version: $kosoku_version"; then
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
    # A venv whose pip does not run (say, left half-made by a failed ensurepip) is remade.
    if [ ! -f "$venv/pyvenv.cfg" ] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        rm -rf "$venv"
        if ! python3 -m venv "$venv"; then
            # Debian's python3 ships venv's ensurepip separately.
            rm -rf "$venv"
            apt_install python3-venv
            python3 -m venv "$venv"
        fi
    fi
    log "installing kosoku==$kosoku_version into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "kosoku==$kosoku_version"
fi

# ---- start the server, always stop it on the way out
work=$(mktemp -d "${TMPDIR:-/tmp}/courier-autobahn.XXXXXX")
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && alive "$server_pid"; then
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Create the files first: the background job opens them only after the fork.
: >"$work/stdout"
: >"$work/stderr"
"$server" echo --listen 127.0.0.1:0 --max-message "$max_message" >"$work/stdout" 2>"$work/stderr" &
server_pid=$!

addr=""
for _ in $(seq 200); do # up to 10 s
    addr=$(sed -n 's/^listening on \(.*\)$/\1/p;T;q' "$work/stdout")
    [ -n "$addr" ] && break
    if ! alive "$server_pid"; then
        log "server exited before listening; its stderr:"
        cat "$work/stderr" >&2
        exit 1
    fi
    sleep 0.05
done
if [ -z "$addr" ]; then
    log "server printed no 'listening on' line within 10 s"
    exit 1
fi
port=${addr##*:}
log "server pid $server_pid listening on $addr"

# ---- run the cases
rm -rf "$out"
mkdir -p "$out"
log "running kosoku on 127.0.0.1:$port (all cases but 12.* and 13.*), reports in $out"
kosoku_status=0
timeout --kill-after=10 "$kosoku_timeout" \
    "$venv/bin/kosoku" "127.0.0.1:$port" -x '12.*' -x '13.*' -o "$out" || kosoku_status=$?
if [ "$kosoku_status" -ne 0 ]; then
    log "kosoku exited with status $kosoku_status$([ "$kosoku_status" -eq 124 ] && echo ' (timed out)')"
fi

# ---- judge index.json strictly
check_status=0
"$venv/bin/python" - "$out/index.json" <<'PY' || check_status=$?
import json
import sys
from collections import Counter

ACCEPTED = {"OK", "INFORMATIONAL"}

path = sys.argv[1]
try:
    with open(path) as f:
        index = json.load(f)
except (OSError, ValueError) as e:
    print(f"autobahn: cannot read {path}: {e}")
    sys.exit(1)

def case_key(case_id):
    return tuple(int(p) if p.isdigit() else p for p in case_id.split("."))

cases = {}
for agent, agent_cases in index.items():
    for case_id, result in agent_cases.items():
        cases[case_id] = result

by_behavior = Counter(r.get("behavior") for r in cases.values())
by_close = Counter(r.get("behaviorClose") for r in cases.values())
failing = sorted(
    (cid for cid, r in cases.items()
     if r.get("behavior") not in ACCEPTED or r.get("behaviorClose") not in ACCEPTED),
    key=case_key,
)
sections = {cid.split(".")[0] for cid in cases}
# Autobahn has no section 8; 12 and 13 (compression) are excluded on purpose.
missing = [s for s in ("1", "2", "3", "4", "5", "6", "7", "9", "10") if s not in sections]

print(f"autobahn: {len(cases)} cases")
print("  behavior:      " + ", ".join(f"{k} {v}" for k, v in sorted(by_behavior.items(), key=str)))
print("  behaviorClose: " + ", ".join(f"{k} {v}" for k, v in sorted(by_close.items(), key=str)))
for cid in failing:
    r = cases[cid]
    print(f"  FAIL {cid}: behavior={r.get('behavior')} behaviorClose={r.get('behaviorClose')}"
          f" remoteCloseCode={r.get('remoteCloseCode')} report={r.get('reportfile')}")
if missing:
    print("autobahn: no cases ran from section(s) " + ", ".join(missing))
if not cases or failing or missing:
    print(f"autobahn: FAILED ({len(failing)} of {len(cases)} cases not OK/INFORMATIONAL)")
    sys.exit(1)
print(f"autobahn: all {len(cases)} cases OK or INFORMATIONAL")
PY

# ---- stop the server: SIGTERM must end it with status 0, within 10 s
kill -TERM "$server_pid"
for _ in $(seq 100); do
    alive "$server_pid" || break
    sleep 0.1
done
server_status=0
if alive "$server_pid"; then
    log "server still running 10 s after SIGTERM; killing it"
    kill -KILL "$server_pid"
    wait "$server_pid" || true
    server_status=1
else
    wait "$server_pid" || server_status=$?
    if [ "$server_status" -ne 0 ]; then
        log "server exited with status $server_status after SIGTERM (want 0)"
    fi
fi
server_pid=""
if [ -s "$work/stderr" ]; then
    log "server stderr (last 20 lines):"
    tail -n 20 "$work/stderr"
fi

if [ "$kosoku_status" -ne 0 ] || [ "$check_status" -ne 0 ] || [ "$server_status" -ne 0 ]; then
    log "FAILED"
    exit 1
fi
log "passed (report: $out/index.html)"
