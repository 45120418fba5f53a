#!/usr/bin/env bash
# The README's "Running the server" steps, run as they are written there (issue 15: they
# must work when followed literally, in order, on a fresh machine without root).
#
#   ./scripts/readme-steps.sh
#
# The commands are read from README.md itself (the ```sh blocks of that section), not
# copied here, so the README cannot drift from what is tested. They run in an empty temp
# folder, each as its own process with no COURIER_* variable of the caller's (as a second
# terminal would run step 4), with two substitutions, both said in the output:
#   - step 1, `cargo build --release`, is not run: a release build (fat LTO) takes minutes.
#     ./target/release/courier in the temp folder is a link to the debug binary, which
#     takes the same command line and behaves the same;
#   - step 3's server gets COURIER_LISTEN=127.0.0.1:0 (loopback, a free port) instead of
#     127.0.0.1:8080, which another server on the machine may hold; its port replaces
#     8080 in the README's addresses.
# Then, as step 5 says: the chat page at the printed URL, and a WebSocket upgrade with the
# token of step 4 (101 and a welcome for alice; a wrong token gets 401). Also that step 2
# run again leaves the secret as it was, and that the server exits 0 on SIGTERM.
#
# Loopback only, every wait bounded; the server is stopped and the folder removed on exit.
#
# Environment:
#   COURIER_BIN   the binary standing in for ./target/release/courier (default:
#                 target/debug/courier, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

started=$SECONDS
step() {
    printf -- '-- readme-steps: %s (%ds)\n' "$1" "$((SECONDS - started))"
}
fail() {
    echo "readme-steps: FAILED: $*" >&2
    exit 1
}

# ---- the steps, from the README

section="## Running the server"
grep -qx "$section" README.md || fail "README.md has no '$section' section"
mapfile -t steps < <(awk -v section="$section" '
    /^##+ / { if (inside) exit; inside = ($0 == section); next }
    inside && /^ *```sh *$/ { block = 1; next }
    inside && block && /^ *```/ { block = 0; next }
    inside && block { sub(/^ +/, ""); if ($0 != "") print }
' README.md)
# The order and shape this script knows how to run; a README changed beyond them fails
# here, loudly, instead of being half-checked.
bin=./target/release/courier
[ "${#steps[@]}" -eq 4 ] || fail "expected 4 commands in '$section', found ${#steps[@]}: ${steps[*]}"
[ "${steps[0]}" = "cargo build --release" ] || fail "step 1 is not 'cargo build --release': ${steps[0]}"
[[ "${steps[1]}" == "$bin secret --out "* ]] || fail "step 2 is not '$bin secret --out FILE': ${steps[1]}"
[[ "${steps[2]}" == "$bin serve "* ]] || fail "step 3 is not '$bin serve ...': ${steps[2]}"
[[ "${steps[3]}" == "$bin token alice "* ]] || fail "step 4 is not '$bin token alice ...': ${steps[3]}"
secret_file=${steps[1]#"$bin secret --out "}
# Step 5's page: the first http:// URL of the list item that starts "5. ".
readme_url=$(awk -v section="$section" '
    /^##+ / { if (inside) exit; inside = ($0 == section); next }
    inside && /^5\. / { if (match($0, /http:\/\/[^ )`]*/)) print substr($0, RSTART, RLENGTH); exit }
' README.md)
[ "$readme_url" = "http://127.0.0.1:8080/" ] || fail "step 5 does not open http://127.0.0.1:8080/: '$readme_url'"
for i in "${!steps[@]}"; do
    printf '   step %d: %s\n' "$((i + 1))" "${steps[$i]}"
done

# ---- an empty folder, a clean environment

if [ -z "${COURIER_BIN:-}" ]; then
    COURIER_BIN=target/debug/courier
    [ -x "$COURIER_BIN" ] || cargo build --bin courier
fi
courier_bin=$(cd "$(dirname "$COURIER_BIN")" && pwd)/$(basename "$COURIER_BIN")

work=$(mktemp -d "${TMPDIR:-/tmp}/courier-readme.XXXXXX")
server_pid=""
cleanup() {
    local status=$?
    if [ -n "$server_pid" ] && alive "$server_pid"; then
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
    printf 'readme-steps: %s in %ds\n' "$([ "$status" -eq 0 ] && echo ok || echo FAILED)" "$((SECONDS - started))"
}
trap cleanup EXIT

mkdir -p "$work/target/release"
ln -s "$courier_bin" "$work/target/release/courier"
cd "$work"
# Each step is a fresh `bash -c` without the caller's COURIER_* variables: a secret in
# this shell's environment must not stand in for the file the README uses.
clean=(env)
while read -r name; do
    clean+=(-u "$name")
done < <(compgen -e | grep '^COURIER_' || true)
run() {
    "${clean[@]}" "$@"
}

# ---- 1

step "1: ${steps[0]}: not run; $bin is a link to $courier_bin"

# ---- 2

step "2: ${steps[1]}"
run timeout 10 bash -c "${steps[1]}"
[ -f "$secret_file" ] || fail "step 2 made no $secret_file"
mode=$(stat -c %a "$secret_file")
[ "$mode" = 600 ] || fail "$secret_file has mode $mode, not 600"
before=$(sha256sum <"$secret_file")
if run timeout 10 bash -c "${steps[1]}" >/dev/null 2>"$work/again.err"; then
    fail "step 2 run again succeeded: it must not replace the secret"
fi
[ "$(sha256sum <"$secret_file")" = "$before" ] || fail "step 2 run again changed $secret_file"
echo "   run again: refused ($(head -c 120 "$work/again.err")...), the secret unchanged"

# ---- 3

step "3: ${steps[2]} (with COURIER_LISTEN=127.0.0.1:0)"
# Not through `run`: a function in the background is a subshell, and $! would be its pid.
# env and bash exec in turn, so $! is the server's own, for the signal.
"${clean[@]}" COURIER_LISTEN=127.0.0.1:0 bash -c "exec ${steps[2]}" >"$work/serve.out" 2>"$work/serve.err" &
server_pid=$!
page_line=""
for _ in $(seq 300); do
    page_line=$(sed -n 's/^chat page: //p' "$work/serve.out")
    [ -n "$page_line" ] && break
    alive "$server_pid" || { cat "$work/serve.err" >&2; fail "step 3: the server exited before listening"; }
    sleep 0.1
done
[ -n "$page_line" ] || { cat "$work/serve.err" >&2; fail "step 3: no 'chat page:' line within 30 s"; }
addr=$(sed -n 's/^listening on //p' "$work/serve.out")
port=${addr##*:}
[ "$addr" = "127.0.0.1:$port" ] || fail "step 3: 'listening on $addr', not on 127.0.0.1 as the README says"
page_url=${readme_url/:8080\//:$port/}
[ "$page_line" = "$page_url" ] || fail "step 3: the server printed 'chat page: $page_line', the README opens $page_url"
[ -f courier-data/courier.db ] || fail "step 3: no database in ./courier-data"
echo "   the server printed: $(tr '\n' ' ' <"$work/serve.out")"

# ---- 4

step "4: ${steps[3]} (another process, as in a second terminal)"
token=$(run timeout 10 bash -c "${steps[3]}")
[ -n "$token" ] || fail "step 4 printed no token"

# ---- 5

# A request over bash's /dev/tcp: no client to install, and every read has a timeout.
# Prints the status line; with `upgrade`, then reads the first frame up to alice's name.
request() {
    local target=$1 upgrade=${2:-}
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    if [ -n "$upgrade" ]; then
        printf 'GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n' "$target" "$addr" >&3
    else
        printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$target" "$addr" >&3
    fi
    local line status=""
    IFS= read -r -t 5 status <&3 || true
    printf '%s\n' "${status%$'\r'}"
    # The rest of the head.
    while IFS= read -r -t 5 line <&3; do
        [ "${line%$'\r'}" = "" ] && break
    done
    if [ -n "$upgrade" ] && [[ "$status" == *" 101 "* ]]; then
        local frame="" c
        while [ "${#frame}" -lt 400 ] && IFS= read -r -t 5 -N 1 c <&3; do
            frame+=$c
            [[ "$frame" == *'"user":"alice"'* ]] && break
        done
        printf '%s\n' "$frame"
    elif [ -z "$upgrade" ]; then
        timeout 5 cat <&3 || true
    fi
    exec 3>&-
}

step "5: the chat page at $page_url"
page=$(request /)
[[ "$(head -n 1 <<<"$page")" == "HTTP/1.1 200 "* ]] || fail "GET / answered: $(head -n 1 <<<"$page")"
grep -q '<html' <<<"$page" || fail "GET / is not the page"
echo "   GET / : $(head -n 1 <<<"$page")"

step "5: a WebSocket upgrade with step 4's token"
answer=$(request "/ws?token=$token" upgrade)
[[ "$(head -n 1 <<<"$answer")" == "HTTP/1.1 101 "* ]] || fail "the upgrade with step 4's token answered: $answer"
if ! grep -q '"type":"welcome"' <<<"$answer" || ! grep -q '"user":"alice"' <<<"$answer"; then
    fail "no welcome for alice after the 101: $answer"
fi
echo "   upgrade: $(head -n 1 <<<"$answer"), welcome for alice"
wrong=$(request "/ws?token=x.y.z" upgrade | head -n 1)
[[ "$wrong" == "HTTP/1.1 401 "* ]] || fail "an upgrade with a wrong token answered: $wrong"
echo "   a wrong token: $wrong"

# ---- stop, as Ctrl-C would

kill -INT "$server_pid"
status=""
for _ in $(seq 300); do
    alive "$server_pid" || break
    sleep 0.1
done
alive "$server_pid" && fail "the server did not stop within 30 s of SIGINT"
wait "$server_pid" || status=$?
server_pid=""
[ -z "$status" ] || { tail -n 5 "$work/serve.err" >&2; fail "the server exited $status after SIGINT"; }
echo "   stopped with SIGINT: exit 0"
