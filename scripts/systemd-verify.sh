#!/usr/bin/env bash
# deploy/systemd/courier.service checked without a running systemd (issue 14, item 7):
#   1. `systemd-analyze verify` on a copy whose ExecStart is the built binary (verify
#      wants the binary to exist): any line it prints about the unit fails the check;
#   2. `systemd-analyze security --offline`: the exposure score, which must stay at or
#      under SECURITY_MAX (default 2.0 on systemd's 0-10 scale; the unit scores 1.0 on
#      Debian 12's systemd 252);
#   3. the system calls of a real run (start, the page, a chat session with a reconnect,
#      SIGTERM), traced with strace, must all be allowed by the unit's SystemCallFilter:
#      one outside it would kill courier with SIGSYS or fail it with EPERM in production,
#      which neither of the above can see.
#
#   ./scripts/systemd-verify.sh
#
# Installs Debian's systemd (for systemd-analyze) and strace when missing (as root, or
# through sudo). Only loopback traffic; everything it starts is stopped on exit.
#
# Environment:
#   COURIER_BIN    the server binary (default: target/debug/courier, built if missing)
#   SECURITY_MAX   highest exposure score accepted (default 2.0)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

started=$SECONDS
unit=deploy/systemd/courier.service
security_max=${SECURITY_MAX:-2.0}

step() {
    printf -- '-- systemd-verify: %s (%ds)\n' "$1" "$((SECONDS - started))"
}
fail() {
    echo "systemd-verify: FAILED: $*" >&2
    exit 1
}

if ! command -v systemd-analyze >/dev/null 2>&1; then
    step "installing Debian's systemd (for systemd-analyze)"
    apt_install systemd
fi
systemd-analyze --version | head -n 1
if ! command -v strace >/dev/null 2>&1; then
    step "installing Debian's strace"
    apt_install strace
fi

if [ -z "${COURIER_BIN:-}" ]; then
    COURIER_BIN=target/debug/courier
    [ -x "$COURIER_BIN" ] || cargo build --bin courier
fi
courier_bin=$(cd "$(dirname "$COURIER_BIN")" && pwd)/$(basename "$COURIER_BIN")

work=$(mktemp -d "${TMPDIR:-/tmp}/courier-systemd.XXXXXX")
courier_pid=""
strace_pid=""
cleanup() {
    local status=$?
    for pid in $courier_pid $strace_pid; do
        if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    rm -rf "$work"
    printf 'systemd-verify: %s in %ds\n' "$([ "$status" -eq 0 ] && echo ok || echo FAILED)" "$((SECONDS - started))"
}
trap cleanup EXIT

# ---- 1. verify

step "systemd-analyze verify $unit"
# Only ExecStart changes: the unit as shipped names /usr/local/bin/courier, which need
# not exist here. The copy keeps the name, so what verify says names courier.service.
grep -q '^ExecStart=/usr/local/bin/courier serve ' "$unit" || fail "$unit: no ExecStart=/usr/local/bin/courier serve ..."
sed "s|^ExecStart=/usr/local/bin/courier |ExecStart=$courier_bin |" "$unit" >"$work/courier.service"
verify_status=0
systemd-analyze verify "$work/courier.service" >"$work/verify.out" 2>&1 || verify_status=$?
# verify also loads the units this one pulls in (network.target, ...): what it says about
# the machine's own units is shown, what it says about this one fails the check.
if grep -q 'courier' "$work/verify.out" || [ "$verify_status" -ne 0 ]; then
    cat "$work/verify.out"
    fail "systemd-analyze verify: exit $verify_status, or a complaint about the unit (above)"
fi
if [ -s "$work/verify.out" ]; then
    echo "systemd-analyze verify said, about other units:"
    sed 's/^/  /' "$work/verify.out"
fi
echo "verify: no warnings"

# ---- 2. security

step "systemd-analyze security --offline"
if systemd-analyze security --offline=true "$work/courier.service" >"$work/security.out" 2>&1; then
    score=$(sed -n 's/.*Overall exposure level for courier.service: \([0-9.]*\).*/\1/p' "$work/security.out")
    [ -n "$score" ] || { cat "$work/security.out"; fail "no exposure level in the output above"; }
    grep '^✗' "$work/security.out" | sed 's/  */ /g; s/^/  /' || true
    echo "exposure level: $score (0 = locked down, 10 = exposed; at most $security_max accepted)"
    # systemd's own comparison: --threshold is the score times ten.
    threshold=$(awk -v m="$security_max" 'BEGIN { printf "%d", m * 10 + 0.5 }')
    systemd-analyze security --offline=true --threshold="$threshold" "$work/courier.service" >/dev/null 2>&1 ||
        fail "exposure level $score is above $security_max: a hardening line was lost?"
else
    # --offline came with systemd 250; an older one judges running units only.
    cat "$work/security.out"
    echo "security: skipped (this systemd-analyze cannot judge a unit file offline)"
fi

# ---- 3. the system calls of a real run against the SystemCallFilter

step "courier's system calls against SystemCallFilter"
if ! strace -f -qq -o /dev/null true 2>/dev/null; then
    echo "syscalls: skipped (strace cannot trace here: no ptrace in this container)"
    exit 0
fi

# The filter lines of the unit, in order: an allow list, then subtractions (~).
mapfile -t filters < <(sed -n 's/^SystemCallFilter=//p' "$unit")
[ "${#filters[@]}" -gt 0 ] || fail "$unit has no SystemCallFilter"
[ "${filters[0]:0:1}" != "~" ] || fail "the check expects the first SystemCallFilter to be an allow list"

# Every system call a filter word names, groups (@name) expanded recursively.
declare -A seen_group=()
expand() {
    local word
    for word in "$@"; do
        if [ "${word:0:1}" = "@" ]; then
            [ -n "${seen_group[$word]:-}" ] && continue
            seen_group[$word]=1
            # Members are the indented lines; comments start with '#'.
            # shellcheck disable=SC2046 # one member per word
            expand $(systemd-analyze syscall-filter --no-pager "$word" | sed -n 's/^ \{4\}\([^ #][^ ]*\)$/\1/p')
        else
            echo "$word"
        fi
    done
}
allowed=$work/allowed
denied=$work/denied
: >"$denied"
# shellcheck disable=SC2086 # a filter line is a list of words
expand ${filters[0]} | sort -u >"$allowed"
for f in "${filters[@]:1}"; do
    seen_group=()
    [ "${f:0:1}" = "~" ] || fail "a second allow list is not handled here: $f"
    # shellcheck disable=SC2086
    expand ${f:1} >>"$denied"
done
sort -u -o "$denied" "$denied"
echo "filter: $(wc -l <"$allowed") calls allowed, $(wc -l <"$denied") of them taken away again"

# As the unit runs it: not as root (DynamicUser). That matters: SQLite, as root, hands
# each new WAL file to the database's owner with fchown, a call the filter takes away.
run_as=()
if [ "$(id -u)" -eq 0 ]; then
    run_as=(setpriv --reuid=nobody --regid=nogroup --clear-groups --)
    chmod 0711 "$work"
    mkdir -m 0700 "$work/run"
    chown nobody:nogroup "$work/run"
else
    mkdir -m 0700 "$work/run"
fi
# The secret as the unit's LoadCredential hands it over: a file of the service user's,
# read through COURIER_JWT_SECRET_FILE (so the trace covers reading it).
mkdir -m 0700 "$work/run/creds"
secret_file=$work/run/creds/jwt-secret
"$courier_bin" secret --out "$secret_file" >/dev/null
chmod 0400 "$secret_file"
if [ "$(id -u)" -eq 0 ]; then chown -R nobody:nogroup "$work/run/creds"; fi
# The unit's settings, on loopback port 0 and a temp data folder. strace runs as the
# service user too and traces from courier's execve on.
COURIER_JWT_SECRET_FILE=$secret_file COURIER_LISTEN=127.0.0.1:0 COURIER_TRUSTED_PROXY=127.0.0.1 \
    "${run_as[@]}" strace -f -qq -o "$work/run/strace.out" "$courier_bin" serve --data "$work/run/data" \
    >"$work/courier.out" 2>"$work/courier.log" &
strace_pid=$!
addr=""
for _ in $(seq 600); do
    addr=$(sed -n 's/^listening on //p' "$work/courier.out")
    [ -n "$addr" ] && break
    alive "$courier_pid" || { cat "$work/courier.log"; fail "courier exited before listening"; }
    sleep 0.05
done
[ -n "$addr" ] || fail "courier did not listen within 30 s"
# strace does not pass SIGTERM on to what it traces: the signal goes to courier, strace's
# child, found by its parent pid.
courier_pid=""
for stat in /proc/[0-9]*/stat; do
    read -r line 2>/dev/null <"$stat" || continue
    fields=${line##*) }
    read -r _ ppid _ <<<"$fields"
    if [ "$ppid" = "$strace_pid" ]; then
        courier_pid=${stat#/proc/}
        courier_pid=${courier_pid%/stat}
        break
    fi
done
[ -n "$courier_pid" ] || fail "no courier process under strace ($strace_pid)"
TOKEN_ALICE=$("$courier_bin" token alice --ttl 10m --jwt-secret-file "$secret_file")
TOKEN_BOB=$("$courier_bin" token bob --ttl 10m --jwt-secret-file "$secret_file")
BASE="http://$addr" TOKEN_ALICE=$TOKEN_ALICE TOKEN_BOB=$TOKEN_BOB \
    timeout --kill-after=5 90 node tests/ops/session.mjs
kill -TERM "$courier_pid"
for _ in $(seq 600); do
    alive "$strace_pid" || break
    sleep 0.05
done
alive "$strace_pid" && fail "courier did not stop within 30 s of SIGTERM"
status=0
# strace exits with its tracee's status.
wait "$strace_pid" || status=$?
courier_pid=""
[ "$status" -eq 0 ] || { tail -n 20 "$work/courier.log"; fail "courier exited $status after SIGTERM"; }

# strace writes "PID name(args..." (and "PID <... name resumed>" for a call another
# thread interrupted, whose start is also on record).
# (strace pads the pid to five columns.)
sed -n 's/^[0-9][0-9]*  *\([a-z0-9_]*\)(.*/\1/p' "$work/run/strace.out" | sort -u >"$work/used"
# A run this long makes dozens; a handful means the trace was not read right.
[ "$(wc -l <"$work/used")" -ge 20 ] || fail "only $(wc -l <"$work/used") system calls read from the trace"
# execve is strace starting courier: systemd makes that call before the filter applies.
grep -vx execve "$work/used" >"$work/used.run" || true
outside=$(comm -23 "$work/used.run" "$allowed")
taken=$(comm -12 "$work/used.run" "$denied")
echo "courier made $(wc -l <"$work/used.run") distinct system calls: $(tr '\n' ' ' <"$work/used.run")"
[ -z "$outside" ] || fail "outside SystemCallFilter=${filters[0]}: $outside"
[ -z "$taken" ] || fail "taken away by a ~ filter: $taken"
echo "syscalls: every one is allowed by the unit's filter"
