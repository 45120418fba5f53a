#!/usr/bin/env bash
# The foundation's figures that are not throughput: start time, binary size, syscalls per
# echoed message, and server memory per idle connection. A figure-printing harness, not a
# test.
#
#   scripts/bench-basics.sh
#
# Environment:
#   IDLE_CONNECTIONS   connections for the memory figure (default 19000; one process
#                      holds at most ~19,900 sockets on a 20,000-file limit)
#   SERVER_CORE, CLIENT_CORE   cores for the server and the load client (default 0 and 1)
set -euo pipefail
cd "$(dirname "$0")/.."

idle=${IDLE_CONNECTIONS:-19000}
server_core=${SERVER_CORE:-0}
client_core=${CLIENT_CORE:-1}
target_dir=${CARGO_TARGET_DIR:-target}
courier="$target_dir/release/courier"
bench="$target_dir/release/courier-bench"

log() { echo "bench-basics.sh: $*" >&2; }

cargo build --release --bins >&2

work=$(mktemp -d "${TMPDIR:-/tmp}/courier-basics.XXXXXX")
server_pid=""
stop_server() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=""
}
trap 'stop_server; rm -rf "$work"' EXIT

# start_echo: starts `courier echo` pinned to the server core; sets $server_pid and $addr.
start_echo() {
    : >"$work/out"
    taskset -c "$server_core" "$courier" echo --listen 127.0.0.1:0 >"$work/out" 2>"$work/err" &
    server_pid=$!
    addr=""
    for _ in $(seq 200); do
        addr=$(sed -n 's/^listening on //p' "$work/out")
        [ -n "$addr" ] && return
        sleep 0.01
    done
    log "courier echo printed no 'listening on' line"
    exit 1
}

# ---- start to `listening on`: process spawn included, best and median of 20
starts=()
for _ in $(seq 20); do
    : >"$work/out"
    t0=$(date +%s%N)
    "$courier" echo --listen 127.0.0.1:0 >"$work/out" 2>/dev/null &
    pid=$!
    until grep -q '^listening on' "$work/out"; do :; done
    t1=$(date +%s%N)
    kill -TERM "$pid"
    wait "$pid" || true
    starts+=($(((t1 - t0) / 1000)))
done
start_us=$(printf '%s\n' "${starts[@]}" | sort -n | awk '{ v[NR] = $1 } END { printf "best %d us, median %d us", v[1], v[int((NR + 1) / 2)] }')

# ---- syscalls per echoed message: perf counts every syscall the server enters while
# `courier-bench echo` runs 100 connections x 20 B for 5 s. Warmup and handshakes are
# inside the count (a few hundred syscalls against millions).
syscalls="perf not available"
if command -v perf >/dev/null 2>&1; then
    start_echo
    perf stat -e raw_syscalls:sys_enter -x, -o "$work/perf" -p "$server_pid" &
    perf_pid=$!
    sleep 0.2
    taskset -c "$client_core" "$bench" echo --url "ws://$addr/" --connections 100 --size 20 \
        --seconds 5 --warmup 1 --json >"$work/echo.json" 2>/dev/null
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    stop_server
    total=$(grep -o '"messages_total":[0-9]*' "$work/echo.json" | cut -d: -f2)
    calls=$(grep raw_syscalls "$work/perf" | cut -d, -f1)
    syscalls=$(awk -v c="$calls" -v m="$total" 'BEGIN { printf "%.3f (%d syscalls / %d echoes)", c / m, c, m }')
fi

# ---- memory per idle connection
start_echo
taskset -c "$client_core" "$bench" connect --url "ws://$addr/" --connections "$idle" \
    --hold 3 --server-pid "$server_pid" >"$work/connect.txt" 2>/dev/null || {
    cat "$work/connect.txt" >&2
    exit 1
}
stop_server
per_conn=$(awk '/per connection/ { print $3 }' "$work/connect.txt")

size=$(stat -c %s "$courier")
echo
echo "courier foundation figures ($(date -u +%Y-%m-%d), $(git rev-parse --short HEAD))"
printf '  %-34s %s\n' "start to 'listening on'" "$start_us"
printf '  %-34s %s\n' "binary size (release)" "$((size / 1024)) KiB"
printf '  %-34s %s\n' "syscalls per echo (100 x 20 B)" "$syscalls"
printf '  %-34s %s\n' "server RSS per idle connection" "$per_conn bytes ($idle connections)"
