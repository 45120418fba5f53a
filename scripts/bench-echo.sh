#!/usr/bin/env bash
# Echo throughput: courier against a tokio-tungstenite peer, same load client, pinned cores.
#
#   scripts/bench-echo.sh
#
# Builds courier (release) and the comparison peer (benches/echo_peer.rs: tokio-tungstenite
# on a current_thread runtime), starts both pinned to SERVER_CORE, then runs the same load
# client, `courier-bench echo`, pinned to CLIENT_CORE against each, for each row below.
# Each row runs ROUNDS times, courier and peer alternating, so a drift of the machine
# (these vary by ±20% from minute to minute) hits both alike. Prints the best and the
# median msg/s of each and the ratio of the medians. A figure-printing harness, not a test.
#
# Environment:
#   SERVER_CORE    core for both servers (default 0)
#   CLIENT_CORE    core for the load client (default 1)
#   BENCH_SECONDS  measured seconds per run (default 10)
#   BENCH_DEPTH    messages in flight per connection (default 1)
#   BENCH_ROUNDS   runs of each server per row (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."

server_core=${SERVER_CORE:-0}
client_core=${CLIENT_CORE:-1}
seconds=${BENCH_SECONDS:-10}
depth=${BENCH_DEPTH:-1}
rounds=${BENCH_ROUNDS:-3}
target_dir=${CARGO_TARGET_DIR:-target}

# Rows: connections, message size in bytes, and the ratio courier/peer the issue asks for.
rows=(
    "100 20 1.3"
    "100 1024 1.3"
    "200 16384 1.0"
)

log() { echo "bench-echo.sh: $*"; }

alive() {
    local stat
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

# ---- build
log "building courier (release) and the echo_peer bench"
cargo build --release --bins
courier="$target_dir/release/courier"
bench_client="$target_dir/release/courier-bench"
# The bench's executable path comes from cargo's JSON messages (its name has a hash).
peer=$(cargo bench --no-run --bench echo_peer --message-format=json |
    grep '"name":"echo_peer"' | grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4) || true
if [ -z "$peer" ] || [ ! -x "$peer" ]; then
    log "could not locate the echo_peer bench executable"
    exit 1
fi

# ---- start both servers pinned to the server core; stop them on the way out
work=$(mktemp -d "${TMPDIR:-/tmp}/courier-bench-echo.XXXXXX")
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        if alive "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# start NAME CMD...: runs CMD pinned to the server core, waits for its `listening on ADDR`
# line and sets $listen_addr.
start() {
    local name=$1 pid
    shift
    # Create the files first: the background job opens them only after the fork.
    : >"$work/$name.out"
    : >"$work/$name.err"
    taskset -c "$server_core" "$@" >"$work/$name.out" 2>"$work/$name.err" &
    pid=$!
    pids+=("$pid")
    listen_addr=""
    for _ in $(seq 200); do # up to 10 s
        listen_addr=$(sed -n 's/^listening on \(.*\)$/\1/p;T;q' "$work/$name.out")
        [ -n "$listen_addr" ] && break
        if ! alive "$pid"; then
            log "$name exited before listening; its stderr:"
            cat "$work/$name.err" >&2
            exit 1
        fi
        sleep 0.05
    done
    if [ -z "$listen_addr" ]; then
        log "$name printed no 'listening on' line within 10 s"
        exit 1
    fi
    log "$name (pid $pid, core $server_core) listening on $listen_addr"
}

start courier "$courier" echo --listen 127.0.0.1:0 --max-message 16777216
courier_addr=$listen_addr
start peer "$peer" --listen 127.0.0.1:0
peer_addr=$listen_addr

# measure ADDR CONNECTIONS SIZE: prints msg/s of one run (from `courier-bench --json`; its
# progress lines go to stderr, the JSON summary is the one line on stdout).
measure() {
    local addr=$1 conns=$2 size=$3 output rate
    output=$(taskset -c "$client_core" "$bench_client" echo --url "ws://$addr/" \
        --connections "$conns" --size "$size" --depth "$depth" --seconds "$seconds" --json)
    rate=$(grep -oE '"msgs_per_sec":[0-9.]+' <<<"$output" | tail -n 1 | cut -d: -f2)
    if [ -z "$rate" ]; then
        log "no msgs_per_sec in courier-bench output:"
        echo "$output" >&2
        exit 1
    fi
    echo "$rate"
}

# best_and_median RATE...: prints "best median" of the rates.
best_and_median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        print v[NR], m
    }'
}

results=()
for row in "${rows[@]}"; do
    read -r conns size want <<<"$row"
    courier_rates=()
    peer_rates=()
    for round in $(seq "$rounds"); do
        log "row ${conns} x ${size} B, round $round/$rounds: courier..."
        courier_rates+=("$(measure "$courier_addr" "$conns" "$size")")
        log "row ${conns} x ${size} B, round $round/$rounds: peer..."
        peer_rates+=("$(measure "$peer_addr" "$conns" "$size")")
    done
    log "row ${conns} x ${size} B: courier ${courier_rates[*]}; peer ${peer_rates[*]}"
    results+=("$conns $size $(best_and_median "${courier_rates[@]}") $(best_and_median "${peer_rates[@]}") $want")
done

echo
echo "echo throughput: ${seconds}s per run, $rounds rounds alternating, depth $depth," \
    "servers on core $server_core, client on core $client_core"
printf '%-16s %12s %12s %12s %12s %8s %8s\n' "connections x B" "courier best" "courier med" \
    "peer best" "peer med" "ratio" "target"
for r in "${results[@]}"; do
    read -r conns size c_best c_med p_best p_med want <<<"$r"
    awk -v c="$conns" -v s="$size" -v cb="$c_best" -v cm="$c_med" -v pb="$p_best" \
        -v pm="$p_med" -v w="$want" 'BEGIN {
        ratio = (pm > 0) ? cm / pm : 0
        printf "%-16s %12.0f %12.0f %12.0f %12.0f %7.2fx %7s %s\n", c " x " s, cb, cm, pb, pm,
            ratio, ">=" w "x", (ratio >= w) ? "met" : "MISSED"
    }'
done
echo "(msg/s; ratio = courier median / peer median)"

for pid in "${pids[@]}"; do
    if ! alive "$pid"; then
        log "a server (pid $pid) died during the run"
        exit 1
    fi
done
