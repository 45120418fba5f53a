#!/usr/bin/env bash
# Echo throughput: courier against a tokio-tungstenite peer, same load client, pinned cores.
#
#   scripts/bench-echo.sh
#
# Builds courier (release) and the comparison peer (benches/echo_peer.rs: tokio-tungstenite
# on a current_thread runtime), starts both pinned to SERVER_CORE, then runs the same load
# client, `courier-bench echo`, pinned to CLIENT_CORE against each, for each row below.
# Prints msg/s for both and the ratio courier/peer. A figure-printing harness, not a test.
#
# Environment:
#   SERVER_CORE    core for both servers (default 0)
#   CLIENT_CORE    core for the load client (default 1)
#   BENCH_SECONDS  measured seconds per run (default 10)
#   BENCH_DEPTH    messages in flight per connection (default 1)
set -euo pipefail
cd "$(dirname "$0")/.."

server_core=${SERVER_CORE:-0}
client_core=${CLIENT_CORE:-1}
seconds=${BENCH_SECONDS:-10}
depth=${BENCH_DEPTH:-1}
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

# ======================================================================================
# LOAD CLIENT. `courier-bench echo` (src/bin/courier-bench.rs, a later issue) drives C
# connections, each keeping D messages of S bytes in flight, for T seconds, and prints a
# line containing `<N> msg/s` (echoed messages per second); the last such line is taken.
# ======================================================================================
if [ ! -x "$bench_client" ]; then
    log "$bench_client does not exist yet (the load client comes in a later issue);"
    log "both servers started and listened, nothing measured"
    exit 0
fi

# measure ADDR CONNECTIONS SIZE: prints msg/s of one run.
measure() {
    local addr=$1 conns=$2 size=$3 output rate
    output=$(taskset -c "$client_core" "$bench_client" echo --url "ws://$addr/" \
        --connections "$conns" --size "$size" --depth "$depth" --seconds "$seconds")
    rate=$(grep -oE '[0-9]+(\.[0-9]+)? msg/s' <<<"$output" | tail -n 1 | cut -d' ' -f1)
    if [ -z "$rate" ]; then
        log "no '<N> msg/s' in courier-bench output:"
        echo "$output" >&2
        exit 1
    fi
    echo "$rate"
}

results=()
for row in "${rows[@]}"; do
    read -r conns size want <<<"$row"
    log "row ${conns} x ${size} B: courier..."
    courier_rate=$(measure "$courier_addr" "$conns" "$size")
    log "row ${conns} x ${size} B: peer..."
    peer_rate=$(measure "$peer_addr" "$conns" "$size")
    results+=("$conns $size $courier_rate $peer_rate $want")
done

echo
echo "echo throughput, ${seconds}s per run, depth $depth, servers on core $server_core, client on core $client_core"
printf '%-16s %14s %14s %8s %8s\n' "connections x B" "courier msg/s" "peer msg/s" "ratio" "target"
for r in "${results[@]}"; do
    read -r conns size courier_rate peer_rate want <<<"$r"
    awk -v c="$conns" -v s="$size" -v a="$courier_rate" -v b="$peer_rate" -v w="$want" 'BEGIN {
        ratio = (b > 0) ? a / b : 0
        printf "%-16s %14.0f %14.0f %7.2fx %7s %s\n", c " x " s, a, b, ratio, ">=" w "x",
            (ratio >= w) ? "met" : "MISSED"
    }'
done

for pid in "${pids[@]}"; do
    if ! alive "$pid"; then
        log "a server (pid $pid) died during the run"
        exit 1
    fi
done
