#!/usr/bin/env bash
# A bounded soak of `courier serve` (issue 13): a fresh server on 127.0.0.1 with a fresh
# data folder, and `courier-bench soak` against it for the given time: 200 users whose
# connections churn (close 1000, FIN without a close frame, reset), 1:1 and group messages
# at 100/s, syncs after every reconnect, groups gaining and losing members, and four kinds
# of abusive client beside them (a history hog that never reads, a half-sent message
# dripped a byte at a time, forged tokens at 50/s, requests far past --rate). Fails when
# an acknowledged message is missing or duplicated at the end, when the server's RSS, open
# files or WAL keep growing, when /healthz stops answering, or when the server dies or
# does not shut down cleanly on SIGTERM.
#
#   scripts/soak.sh                      # 60 s: what scripts/test.sh runs
#   scripts/soak.sh --minutes 30         # by hand
#   scripts/soak.sh --seconds 20 --release
#
# Options:
#   --seconds N | --minutes N   how long the load runs (default 60 s); the final inbox
#                               replay and the checks add a few seconds
#   --release                   build and run the release binaries (fat LTO: minutes to
#                               build); the default is the debug build, which is what
#                               `cargo test --all-targets` already built in scripts/test.sh,
#                               so the CI run adds no compile time
#   -h, --help
#
# Environment:
#   SOAK_ARGS    more flags for courier-bench soak, word-split (e.g. "--abusers none",
#                "--rate 200"); see target/debug/courier-bench soak --help
#   SERVE_ARGS   more flags for courier serve, word-split
#   COURIER      the server binary to soak instead of the one built here (an older build,
#                to compare); courier-bench is always this tree's
#
# What it prints: the bench's report (messages acknowledged and lost, connections churned,
# how the server answered each abuser, and the server's RSS, open files and WAL at the
# start and end of the load, with their peaks in the middle and last thirds), then one
# verdict line. The samples (every 2 s) are kept in target/soak/samples.tsv and the
# server's log in target/soak/serve.log.
#
# The limits, and why (each is a courier-bench soak flag, passed below):
#   The first third of the load is left out: it is where memory legitimately grows (the
#   connection slab and buffers reach their working size, SQLite's page caches fill,
#   malloc's arenas settle) and where 200 sign-ins and the hogs' seeding (20 MB of JSON)
#   arrive at once. The middle and the last third are compared by their medians, which
#   are a third of the run apart: at a steady load, whatever still grows between them
#   would grow forever. Medians, not peaks: each hog holds a history page (about 1 MiB) and
#   the server's buffers for it until it is dropped (every 20 s), so RSS moves in steps
#   that are not growth; spikes have a bound of their own.
#   - RSS: +20 % of the middle third's median or +16 MiB, whichever is larger. The
#     writer's page cache (32 MiB) fills as the database grows, about 2.3 MiB a minute at
#     this load: it is full by the middle third's median of a 30-minute run (measured: a
#     debug server's RSS rose 2.4 MiB a minute for 14 minutes, then held at 90-92 MiB),
#     and grows by under 2 MiB between the medians of a 60 s run; the readers' caches
#     (8 MiB each) are bounded the same way. A leak in proportion to the work is
#     caught: the load churns ~900 connections and sends ~6,000 messages a minute, so
#     between the medians of a 60 s run (20 s apart) 55 KiB lost per reconnect or 8 KiB
#     per message fails it, and in a 30-minute run (10 minutes apart, 20 % of ~90 MiB)
#     2 KiB per reconnect or 320 B per message.
#   - RSS spikes: at most 32 MiB above the last third's median after the first third.
#     The two hogs hold at most one ~10 MB reply each (the server starts no more reads for
#     a connection over its soft cap) plus what one costs while it is built. A server
#     that queues replies past its caps (issue 13's finding 1) goes far past it: the
#     server before that fix reached 1.3 GB here within 20 s.
#   - RSS ceiling: 1 GiB. A healthy debug server stays near 60-120 MiB here; past the
#     ceiling the load stops at once and the soak fails, so a server that balloons
#     cannot take the machine down with it.
#   - Open files: the medians may differ by +64. The server holds one descriptor per
#     connection; the load keeps about 200 users, 5 abusers and up to 64 forged upgrades
#     open, and churn makes the count swing by the connections opening or lingering at a
#     sample (about +-20 seen). A descriptor leaked per connection would add ~300
#     between the medians of a 60 s run.
#   - WAL: never above 64 MiB after the first third, and at most +16 MiB from the middle
#     to the last third's peak. The checkpointer keeps the WAL near 16 MiB at most (4,096
#     frames; 4-8 MiB at this load) and the file only grows past 64 MiB when the writer's
#     backstop checkpoint (16,384 pages) is reached, i.e. when checkpoints stop keeping
#     up; journal_size_limit truncates it back to 64 MiB after a reset. A WAL still
#     setting new highs in the last third of a steady load is one whose checkpoints fall
#     behind.
#   - /healthz: every probe must answer 200 within 5 s, and after the first third within
#     500 ms. It is answered on the reactor thread, so its latency is the reactor's
#     stall: 0.1-0.5 ms is usual here in a debug build, with rare outliers near 150 ms
#     under the hogs; the server before finding 1's fix took seconds or did not answer.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
profile=debug
while [ $# -gt 0 ]; do
    case $1 in
    --seconds | --minutes)
        [ $# -ge 2 ] || {
            echo "soak.sh: $1 needs a number" >&2
            exit 2
        }
        [[ $2 =~ ^[0-9]+$ ]] && [ "$2" -gt 0 ] || {
            echo "soak.sh: $1 takes a whole number above 0, not $2" >&2
            exit 2
        }
        if [ "$1" = --minutes ]; then seconds=$(($2 * 60)); else seconds=$2; fi
        shift 2
        ;;
    --release)
        profile=release
        shift
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "soak.sh: unknown argument $1 (try --help)" >&2
        exit 2
        ;;
    esac
done

log() { echo "soak.sh: $*" >&2; }

target_dir=${CARGO_TARGET_DIR:-target}
if [ "$profile" = release ]; then
    cargo build --release --bins
else
    cargo build --bins
fi
courier=${COURIER:-$target_dir/$profile/courier}
bench="$target_dir/$profile/courier-bench"
keep="$target_dir/soak"
mkdir -p "$keep"

work=$(mktemp -d "${TMPDIR:-/tmp}/courier-soak.XXXXXX")
data="$work/data"
secret="soak-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
server_pid=""

alive() { [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; }

cleanup() {
    if alive; then
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [ -f "$work/serve.err" ]; then cp "$work/serve.err" "$keep/serve.log"; fi
    rm -rf "$work"
}
trap cleanup EXIT

# The secret goes through the environment, not the command line, where ps would show it.
# shellcheck disable=SC2086
COURIER_JWT_SECRET="$secret" "$courier" serve --listen 127.0.0.1:0 --data "$data" \
    ${SERVE_ARGS:-} >"$work/serve.out" 2>"$work/serve.err" &
server_pid=$!
addr=""
for _ in $(seq 500); do
    addr=$(sed -n 's/^listening on //p' "$work/serve.out")
    [ -n "$addr" ] && break
    alive || break
    sleep 0.02
done
if [ -z "$addr" ]; then
    cat "$work/serve.err" >&2
    log "FAILED: courier serve printed no 'listening on' line"
    exit 1
fi
log "$courier serve: pid $server_pid on $addr, data in $data; soak for $seconds s"

# The bench stops itself (the load, a drain of at most 30 s, the replay of at most 180 s);
# the timeout is only a backstop should it hang.
status=0
# shellcheck disable=SC2086
timeout --signal=INT --kill-after=10 $((seconds + 300)) \
    "$bench" soak --url "ws://$addr/ws" --jwt-secret "$secret" --seconds "$seconds" \
    --server-pid "$server_pid" --data "$data" --samples "$keep/samples.tsv" \
    --rss-growth 20 --rss-slack 16MiB --rss-spike 32MiB --fd-slack 64 --wal-max 64MiB \
    --wal-growth 16MiB --healthz-max 500ms --rss-ceiling 1GiB ${SOAK_ARGS:-} || status=$?

failed=0
if [ "$status" -ne 0 ]; then
    failed=1
    [ "$status" -ge 124 ] && log "courier-bench soak did not finish by itself (exit $status)"
fi
if ! alive; then
    log "the server is gone: it died during the soak"
    failed=1
else
    # A clean shutdown is part of health: SIGTERM closes every connection with 1001 and
    # exits 0 within the close timeout (2 s by default).
    kill -TERM "$server_pid"
    for _ in $(seq 150); do
        alive || break
        sleep 0.1
    done
    if alive; then
        log "the server did not exit within 15 s of SIGTERM"
        failed=1
    else
        serve_status=0
        wait "$server_pid" || serve_status=$?
        server_pid=""
        if [ "$serve_status" -ne 0 ]; then
            log "the server exited with status $serve_status on SIGTERM"
            failed=1
        fi
    fi
fi

if [ "$failed" -ne 0 ]; then
    # The forged tokens log a line each; the rest is what tells what happened.
    echo "---- the server's log, last 40 lines but the failed logins:" >&2
    grep -v ' auth failed from ' "$work/serve.err" | tail -n 40 >&2 || true
    log "FAILED (samples in $keep/samples.tsv, the server's log in $keep/serve.log)"
    exit 1
fi
log "passed: $seconds s (samples in $keep/samples.tsv)"
