#!/usr/bin/env bash
# IM latency A/B: two courier binaries, alternating rounds, the same paced load.
#
#   scripts/im-ab.sh [--rounds N] [--seconds S] [--rate R] [--contacts K] BIN_A BIN_B
#
# For a change to the store or the reactor that should move the tail at 20,000 msg/s: a
# single run's p99 is set by a handful of checkpoint stalls and swings from 8 to 50 ms
# between identical runs on the 2-core test VM, so one run of each proves nothing. Each
# round starts BIN_A, then BIN_B, each on a fresh data folder, pinned to SERVER_CORE, under
# `courier-bench im --rate R` pinned to CLIENT_CORE, and prints per run the send -> `sent`
# percentiles and, from the server's /metrics, the mean commit time and the mean and count
# of the writer's checkpoint steps (the stall D of BENCHMARKS.md's notes). The end shows the
# medians per binary. A figure-printing harness, not a test.
#
# Defaults: 5 rounds of 6 s at 20,000 msg/s, random pairs (--contacts 0).
# Environment: SERVER_CORE (0), CLIENT_CORE (1), USERS (1000).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=5
seconds=6
rate=20000
contacts=0
while [ $# -gt 2 ]; do
    case $1 in
    --rounds) rounds=$2 ;;
    --seconds) seconds=$2 ;;
    --rate) rate=$2 ;;
    --contacts) contacts=$2 ;;
    *) echo "im-ab.sh: unknown flag $1" >&2 && exit 2 ;;
    esac
    shift 2
done
if [ $# -ne 2 ] || [ ! -x "$1" ] || [ ! -x "$2" ]; then
    echo "usage: scripts/im-ab.sh [--rounds N] [--seconds S] [--rate R] [--contacts K] BIN_A BIN_B" >&2
    exit 2
fi
bins=("$1" "$2")
server_core=${SERVER_CORE:-0}
client_core=${CLIENT_CORE:-1}
users=${USERS:-1000}
bench=${CARGO_TARGET_DIR:-target}/release/courier-bench
[ -x "$bench" ] || cargo build --release --bin courier-bench
# 32 random bytes as hex: courier refuses an HS256 secret under 32 bytes.
secret=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')

work=$(mktemp -d "${TMPDIR:-/tmp}/courier-im-ab.XXXXXX")
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# field JSON NAME: the first value of "NAME": in a one-line JSON object (flat fields, or
# "obj.key" one level down), enough for courier-bench's summary line.
field() {
    if [[ $2 == *.* ]]; then
        grep -o "\"${2%%.*}\":{[^{}]*}" <<<"$1" | grep -o "\"${2#*.}\":[^,}]*" | head -n 1 | cut -d: -f2-
    else
        grep -o "\"$2\":[^,}]*" <<<"$1" | head -n 1 | cut -d: -f2-
    fi
}

# metric FILE NAME: a sample without labels from a /metrics scrape.
metric() { awk -v n="$2" '$1 == n { print $2; exit }' "$1"; }

# run BIN: one paced run on a fresh server; prints "p50 p99 p999 commit-mean-ms step-mean-ms
# steps" (percentiles in ms).
run() {
    local data="$work/data" addr="" json
    rm -rf "$data"
    : >"$work/server.out"
    taskset -c "$server_core" "$1" serve --listen 127.0.0.1:0 --data "$data" \
        --jwt-secret "$secret" --rate 1000000 >"$work/server.out" 2>"$work/server.err" &
    server_pid=$!
    for _ in $(seq 300); do
        addr=$(sed -n 's/^listening on //p' "$work/server.out")
        [ -n "$addr" ] && break
        sleep 0.02
    done
    [ -n "$addr" ] || {
        cat "$work/server.err" >&2
        echo "im-ab.sh: $1 printed no 'listening on' line" >&2
        exit 1
    }
    json=$(taskset -c "$client_core" "$bench" im --url "ws://$addr/ws" --jwt-secret "$secret" \
        --users "$users" --seconds "$seconds" --rate "$rate" --contacts "$contacts" --json 2>/dev/null |
        tail -n 1)
    curl -s "http://$addr/metrics" >"$work/metrics"
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
    [ "$(field "$json" check.passed)" = true ] || {
        echo "im-ab.sh: the run against $1 failed its exactly-once check or did not finish" >&2
        exit 1
    }
    awk -v p50="$(field "$json" sent_us.p50)" -v p99="$(field "$json" sent_us.p99)" \
        -v p999="$(field "$json" sent_us.p999)" \
        -v cs="$(metric "$work/metrics" courier_store_commit_seconds_sum)" \
        -v cn="$(metric "$work/metrics" courier_store_commit_seconds_count)" \
        -v fs="$(metric "$work/metrics" courier_store_checkpoint_finish_seconds_sum)" \
        -v fn="$(metric "$work/metrics" courier_store_checkpoint_finish_seconds_count)" 'BEGIN {
        printf "%.2f %.2f %.2f %.3f %.2f %d\n", p50 / 1000, p99 / 1000, p999 / 1000,
            (cn > 0) ? 1000 * cs / cn : 0, (fn > 0) ? 1000 * fs / fn : 0, fn
    }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

printf '%-6s %-2s %9s %9s %9s %12s %10s %6s\n' round "" "p50 ms" "p99 ms" "p99.9 ms" \
    "commit ms" "step ms" steps
declare -a results_a results_b
for round in $(seq "$rounds"); do
    for i in 0 1; do
        r=$(run "${bins[$i]}")
        if [ "$i" = 0 ]; then results_a+=("$r"); else results_b+=("$r"); fi
        read -r p50 p99 p999 commit step steps <<<"$r"
        printf '%-6s %-2s %9s %9s %9s %12s %10s %6s\n' "$round" "$([ "$i" = 0 ] && echo A || echo B)" \
            "$p50" "$p99" "$p999" "$commit" "$step" "$steps"
    done
done
echo
for i in 0 1; do
    if [ "$i" = 0 ]; then rows=("${results_a[@]}"); else rows=("${results_b[@]}"); fi
    printf '%s median: p99 %s ms, p99.9 %s ms, checkpoint step %s ms  (%s)\n' \
        "$([ "$i" = 0 ] && echo A || echo B)" \
        "$(printf '%s\n' "${rows[@]}" | awk '{ print $2 }' | median)" \
        "$(printf '%s\n' "${rows[@]}" | awk '{ print $3 }' | median)" \
        "$(printf '%s\n' "${rows[@]}" | awk '{ print $5 }' | median)" "${bins[$i]}"
done
