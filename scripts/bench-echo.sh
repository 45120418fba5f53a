#!/usr/bin/env bash
# Echo throughput and server CPU per message: courier against a tokio-tungstenite peer, same
# load client, pinned cores.
#
#   scripts/bench-echo.sh
#
# Builds courier (release) and the comparison peer (benches/echo_peer.rs: tokio-tungstenite
# on a current_thread runtime), starts both pinned to SERVER_CORE, then runs the same load
# client, `courier-bench echo`, pinned to CLIENT_CORE against each, for each row below.
# Each row runs ROUNDS times, courier and peer alternating, so a drift of the machine
# (these vary by ±20% from minute to minute) hits both alike. A figure-printing harness,
# not a test. It prints two tables:
#
#   - throughput: best and median msg/s of each server, and the ratio against the row's
#     goal: courier / peer within each round (its two runs are back to back), the median
#     over the rounds. A ratio of the two medians would pair runs from different minutes,
#     and this VM's kernel switches its cost per message between minutes;
#   - server CPU per echoed message: user and kernel µs per message of each server, from
#     /proc/PID/stat (utime and stime, all threads) sampled right before and right after
#     each client run, divided by the client's messages_total (every message echoed in
#     that window, warmup included); the median over the rounds. And the kernel ceiling,
#     (peer user + peer kernel) / courier kernel: the ratio courier would reach if its own
#     user-space time were zero.
#
# Why the CPU table: at depth 1 (one message in flight per connection) both servers make
# the same syscalls per echo and spend most of the server core in the kernel, so the
# ratio cannot pass the ceiling whatever courier's user space does; with more messages in
# flight (the depth 16 rows) the kernel's cost is shared by several messages per syscall
# and user space shows. The depth 16 rows carry no goal (`-`): they are there as evidence.
#
# Environment:
#   SERVER_CORE    core for both servers (default 0)
#   CLIENT_CORE    core for the load client (default 1)
#   BENCH_SECONDS  measured seconds per run (default 10)
#   BENCH_ROUNDS   runs of each server per row (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

server_core=${SERVER_CORE:-0}
client_core=${CLIENT_CORE:-1}
seconds=${BENCH_SECONDS:-10}
rounds=${BENCH_ROUNDS:-3}
target_dir=${CARGO_TARGET_DIR:-target}
clk_tck=$(getconf CLK_TCK)

# Rows: connections, message size in bytes, messages in flight per connection (depth), and
# the ratio courier/peer the issue asks for (`-`: no goal, shown for what it tells).
rows=(
    "100 20 1 1.3"
    "100 1024 1 1.3"
    "200 16384 1 1.0"
    "100 20 16 -"
    "100 1024 16 -"
)

log() { echo "bench-echo.sh: $*"; }

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
# line and sets $listen_addr and $server_pid.
start() {
    local name=$1 pid
    shift
    # Create the files first: the background job opens them only after the fork.
    : >"$work/$name.out"
    : >"$work/$name.err"
    taskset -c "$server_core" "$@" >"$work/$name.out" 2>"$work/$name.err" &
    pid=$!
    pids+=("$pid")
    server_pid=$pid
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
courier_pid=$server_pid
start peer "$peer" --listen 127.0.0.1:0
peer_addr=$listen_addr
peer_pid=$server_pid

# cpu_ticks PID: "utime stime" of PID in clock ticks. The process's own stat line sums
# every thread, live and exited, so a helper thread's time is not missed.
cpu_ticks() {
    local stat
    read -r stat <"/proc/$1/stat"
    # The command name may hold spaces and parentheses: fields count from after its `) `.
    stat=${stat##*) }
    # shellcheck disable=SC2086 # split into fields on purpose
    set -- $stat
    echo "${12} ${13}"
}

# measure ADDR PID CONNECTIONS SIZE DEPTH: one run against the server at ADDR (process PID);
# prints "msg/s user-us/msg kernel-us/msg server-core-busy-%". The rate comes from
# `courier-bench --json` (its progress lines go to stderr, the JSON summary is the one line
# on stdout). The CPU window is the whole client run, connecting and warmup included, and
# messages_total counts every message echoed in it, so the two match.
measure() {
    local addr=$1 pid=$2 conns=$3 size=$4 depth=$5 output rate total u0 s0 u1 s1 t0 t1
    read -r u0 s0 <<<"$(cpu_ticks "$pid")"
    t0=$(date +%s%N)
    output=$(taskset -c "$client_core" "$bench_client" echo --url "ws://$addr/" \
        --connections "$conns" --size "$size" --depth "$depth" --seconds "$seconds" --json) || {
        # To stderr: the caller captures stdout for the figures.
        log "courier-bench echo failed against $addr" >&2
        exit 1
    }
    t1=$(date +%s%N)
    read -r u1 s1 <<<"$(cpu_ticks "$pid")"
    rate=$(grep -oE '"msgs_per_sec":[0-9.]+' <<<"$output" | tail -n 1 | cut -d: -f2)
    total=$(grep -oE '"messages_total":[0-9]+' <<<"$output" | tail -n 1 | cut -d: -f2)
    if [ -z "$rate" ] || [ -z "$total" ] || [ "$total" = 0 ]; then
        log "no msgs_per_sec or messages_total in courier-bench output:" >&2
        echo "$output" >&2
        exit 1
    fi
    awk -v r="$rate" -v n="$total" -v hz="$clk_tck" -v u=$((u1 - u0)) -v k=$((s1 - s0)) \
        -v ns=$((t1 - t0)) 'BEGIN {
        printf "%s %.3f %.3f %.0f\n", r, u / hz * 1e6 / n, k / hz * 1e6 / n,
            100 * (u + k) / hz / (ns / 1e9)
    }'
}

# best_and_median VALUE...: prints "best median" of the values (best = largest).
best_and_median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        print v[NR], m
    }'
}
median() { best_and_median "$@" | cut -d' ' -f2; }

results=()
cpu_results=()
for row in "${rows[@]}"; do
    read -r conns size depth goal <<<"$row"
    label="${conns} x ${size} B depth ${depth}"
    c_rates=() c_user=() c_kern=() c_busy=()
    p_rates=() p_user=() p_kern=() p_busy=()
    ceilings=() ratios=()
    for round in $(seq "$rounds"); do
        run=$(measure "$courier_addr" "$courier_pid" "$conns" "$size" "$depth")
        read -r rate user kern busy <<<"$run"
        c_rates+=("$rate") c_user+=("$user") c_kern+=("$kern") c_busy+=("$busy")
        log "row $label, round $round/$rounds: courier $rate msg/s, us/msg user $user kernel $kern, server core ${busy}% busy"
        run=$(measure "$peer_addr" "$peer_pid" "$conns" "$size" "$depth")
        read -r rate user kern busy <<<"$run"
        p_rates+=("$rate") p_user+=("$user") p_kern+=("$kern") p_busy+=("$busy")
        log "row $label, round $round/$rounds: peer $rate msg/s, us/msg user $user kernel $kern, server core ${busy}% busy"
        # The ceiling from the two runs of one round: the machine's kernel cost per message
        # drifts between minutes, and medians taken column by column could pair a fast
        # minute's kernel time with a slow one's.
        ratios+=("$(awk -v c="${c_rates[-1]}" -v p="$rate" 'BEGIN { printf "%.4f", (p > 0) ? c / p : 0 }')")
        ceilings+=("$(awk -v cu="${c_user[-1]}" -v ck="${c_kern[-1]}" -v pu="$user" -v pk="$kern" \
            'BEGIN { if (ck > 0) printf "%.4f", (pu + pk) / ck; else print "-" }')")
    done
    # bench.sh parses this line for its table of every round: keep the format in step.
    log "row $label: courier ${c_rates[*]}; peer ${p_rates[*]}"
    results+=("$conns $size $depth $(best_and_median "${c_rates[@]}") $(best_and_median "${p_rates[@]}") $goal $(median "${ratios[@]}")")
    ceiling=-
    if ! printf '%s\n' "${ceilings[@]}" | grep -qx -- -; then
        ceiling=$(median "${ceilings[@]}")
    fi
    cpu_results+=("$conns $size $depth $(median "${c_user[@]}") $(median "${c_kern[@]}") $(median "${c_busy[@]}") $(median "${p_user[@]}") $(median "${p_kern[@]}") $(median "${p_busy[@]}") $ceiling")
done

# bench.sh reads both tables below, telling them apart by their first lines.
echo
echo "echo throughput: ${seconds}s per run, $rounds rounds alternating," \
    "servers on core $server_core, client on core $client_core"
printf '%-16s %5s %12s %12s %12s %12s %8s %8s\n' "connections x B" "depth" "courier best" \
    "courier med" "peer best" "peer med" "ratio" "goal"
for r in "${results[@]}"; do
    read -r conns size depth c_best c_med p_best p_med goal ratio <<<"$r"
    awk -v c="$conns" -v s="$size" -v d="$depth" -v cb="$c_best" -v cm="$c_med" \
        -v pb="$p_best" -v pm="$p_med" -v w="$goal" -v ratio="$ratio" 'BEGIN {
        printf "%-16s %5s %12.0f %12.0f %12.0f %12.0f %7.2fx %8s %s\n", c " x " s, d, cb, cm,
            pb, pm, ratio, (w == "-") ? "-" : ">=" w "x",
            (w == "-") ? "-" : (ratio >= w) ? "met" : "MISSED"
    }'
done
echo "(msg/s; ratio = courier / peer per round (the two runs of a round are back to back)," \
    "median over the rounds; goal - = none, shown for what it tells)"

echo
echo "server CPU per echoed message: us, median of $rounds rounds, /proc/PID/stat" \
    "(${clk_tck} ticks/s) over each client run / its messages_total"
printf '%-16s %5s %12s %12s %7s %12s %12s %7s %8s\n' "connections x B" "depth" "courier user" \
    "courier kern" "busy %" "peer user" "peer kern" "busy %" "ceiling"
for r in "${cpu_results[@]}"; do
    read -r conns size depth cu ck cb pu pk pb ceiling <<<"$r"
    awk -v c="$conns" -v s="$size" -v d="$depth" -v cu="$cu" -v ck="$ck" -v cb="$cb" \
        -v pu="$pu" -v pk="$pk" -v pb="$pb" -v ceil="$ceiling" 'BEGIN {
        printf "%-16s %5s %12.3f %12.3f %7.0f %12.3f %12.3f %7.0f %8s\n", c " x " s, d, cu, ck, cb,
            pu, pk, pb, (ceil == "-") ? "-" : sprintf("%.2fx", ceil)
    }'
done
echo "(ceiling = (peer user + peer kernel) / courier kernel, per round, median: the ratio" \
    "courier would reach with no user-space time of its own and its kernel cost as it is," \
    "while both servers fill the server core; busy % = the server's CPU over the run's wall time)"

for pid in "${pids[@]}"; do
    if ! alive "$pid"; then
        log "a server (pid $pid) died during the run"
        exit 1
    fi
done
