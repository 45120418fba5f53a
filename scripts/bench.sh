#!/usr/bin/env bash
# Every figure of BENCHMARKS.md, measured in one run on this machine and written into it.
#
#   scripts/bench.sh            # the full run: 3 rounds where it matters (about 8 minutes)
#   scripts/bench.sh --quick    # one short round of everything (about 2 minutes), a smoke run
#   scripts/bench.sh --no-write # measure and print, leave BENCHMARKS.md alone
#
# Builds release, then runs each scenario with the server pinned to SERVER_CORE and the load
# client pinned to CLIENT_CORE (taskset):
#   1. echo, courier against the tokio-tungstenite peer in the same run (scripts/bench-echo.sh:
#      100 x 20 B, 100 x 1 KiB, 200 x 16 KiB one message in flight per connection, and
#      100 x 20 B, 100 x 1 KiB sixteen in flight; rounds alternating), with each server's
#      user and kernel CPU per echoed message;
#   2. start time, binary size and syscalls per echo (scripts/bench-basics.sh), and frame
#      decode and unmask speed on one core (cargo bench --bench ws);
#   3. connection capacity: IDLE_CONNECTIONS held by one process, idle echo and idle
#      authenticated IM: the server's RSS per connection (courier-bench connect) and the
#      kernel's memory per socket (/proc/slabinfo and /proc/net/sockstat, before and during);
#   4. IM: durable msg/s as fast as possible and latency at 20,000 msg/s offered
#      (courier-bench im, 1,000 users, a fresh server and data folder per run), the paced
#      steady-pair rounds once more with the data folder on tmpfs (the disk's share of the
#      tail) and the bytes written for the disk per message;
#   5. group fan-out: 1,000 members, deliveries/s (courier-bench fanout), and the server's
#      reactor and store-writer CPU per delivery and per group message;
# and writes BENCHMARKS.md: tables with best and median, the machine, the date, the commit,
# the exact commands, and SVG charts in benchmarks/. Hand-written text between the
# `<!-- notes:begin -->` and `<!-- notes:end -->` lines of an existing BENCHMARKS.md is kept.
#
# Environment:
#   SERVER_CORE, CLIENT_CORE   cores for the servers and the load clients (default 0 and 1)
#   BENCH_ROUNDS      rounds per IM and fan-out scenario (default 3; --quick: 1)
#   ECHO_ROUNDS       rounds per echo row (default 5; --quick: 1)
#   BENCH_SECONDS     measured seconds per IM and fan-out run (default 5; --quick: 2)
#   ECHO_SECONDS      measured seconds per echo run (default 5; --quick: 2)
#   IDLE_CONNECTIONS  connections held for the capacity figures (default 19000; --quick: 2000)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
write=1
for arg in "$@"; do
    case $arg in
    --quick) quick=1 ;;
    --no-write) write=0 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "bench.sh: unknown argument $arg (try --help)" >&2
        exit 2
        ;;
    esac
done

server_core=${SERVER_CORE:-0}
client_core=${CLIENT_CORE:-1}
if [ "$quick" = 1 ]; then
    rounds=${BENCH_ROUNDS:-1}
    echo_rounds=${ECHO_ROUNDS:-1}
    seconds=${BENCH_SECONDS:-2}
    echo_seconds=${ECHO_SECONDS:-2}
    idle=${IDLE_CONNECTIONS:-2000}
else
    rounds=${BENCH_ROUNDS:-3}
    echo_rounds=${ECHO_ROUNDS:-5}
    seconds=${BENCH_SECONDS:-5}
    echo_seconds=${ECHO_SECONDS:-5}
    idle=${IDLE_CONNECTIONS:-19000}
fi
target_dir=${CARGO_TARGET_DIR:-target}
courier="$target_dir/release/courier"
bench="$target_dir/release/courier-bench"
charts=benchmarks
[ "$write" = 1 ] || charts=""
# 32 random bytes as hex: courier refuses an HS256 secret under 32 bytes.
secret=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
# Group fan-out load: one sender keeping 64 group messages in flight (the shape that gives
# the server's best figure here; more senders or a shallower pipeline give less).
fan_members=1000
fan_args=(--members "$fan_members" --senders 1 --depth 64)
im_users=1000

log() { echo "bench.sh: $*" >&2; }
die() {
    log "$*"
    exit 1
}

started=$SECONDS
work=$(mktemp -d "${TMPDIR:-/tmp}/courier-bench.XXXXXX")
# A data folder in memory, for the rounds that take the disk out of the figure: tmpfs, whose
# fsync is a no-op. Empty when /dev/shm is not a tmpfs; those rounds are then skipped.
memory_dir=""
if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ]; then
    memory_dir=$(mktemp -d /dev/shm/courier-bench.XXXXXX)
fi
charts=${charts:-$work/charts}
mkdir -p "$work/raw" "$charts"
server_pid=""
data_dir=""
sampler_pid=""
counter_pid=""
cleanup() {
    if [ -n "$counter_pid" ]; then
        kill "$counter_pid" 2>/dev/null || true
    fi
    stop_server
    if [ -n "$sampler_pid" ]; then
        kill "$sampler_pid" 2>/dev/null || true
        wait "$sampler_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
    if [ -n "$memory_dir" ]; then rm -rf "$memory_dir"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------
# Helpers

# jget JSON KEY | JSON OBJ.KEY: a value from courier-bench's one-line JSON (objects one
# level deep, which is all the bench writes that the script reads).
jget() {
    local json=$1 path=$2 obj key
    if [[ $path == *.* ]]; then
        obj=${path%%.*}
        key=${path#*.}
        grep -o "\"$obj\":{[^{}]*}" <<<"$json" | head -n 1 | grep -o "\"$key\":[^,}]*" |
            head -n 1 | cut -d: -f2-
    else
        grep -o "\"$path\":[^,}]*" <<<"$json" | head -n 1 | cut -d: -f2-
    fi
}

# best_median < values, one a line: "best median" (best = largest).
best_median() {
    sort -g | awk '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        print v[NR], m }'
}

# median < values
median() { best_median | cut -d' ' -f2; }

# median_index < values: the 1-based line of the median value (the lower middle one).
median_index() {
    awk '{ print NR, $1 }' | sort -k2 -g | awk '{ i[NR] = $1 } END { print i[int((NR + 1) / 2)] }'
}

# group3 N: N rounded, with thousands separators.
group3() { awk -v n="$1" 'BEGIN { s = sprintf("%.0f", n); o = ""
    while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) }
    print s o }'; }
# ms US: microseconds as milliseconds with two decimals.
ms() { awk -v u="$1" 'BEGIN { printf "%.2f", u / 1000 }'; }

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# start_server NAME ARGS...: courier ARGS pinned to the server core; sets server_pid and
# addr once it prints `listening on`.
start_server() {
    local name=$1
    shift
    : >"$work/$name.out"
    taskset -c "$server_core" "$courier" "$@" >"$work/$name.out" 2>"$work/$name.err" &
    server_pid=$!
    addr=""
    for _ in $(seq 300); do
        addr=$(sed -n 's/^listening on //p' "$work/$name.out")
        [ -n "$addr" ] && return 0
        alive "$server_pid" || break
        sleep 0.02
    done
    cat "$work/$name.err" >&2
    die "courier $* printed no 'listening on' line"
}

stop_server() {
    if alive "$server_pid"; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=""
    # A fan-out run writes millions of inbox rows: no run keeps its data.
    if [ -n "$data_dir" ]; then
        rm -rf "$data_dir"
        data_dir=""
    fi
}

# im_server: a fresh `courier serve` (new data folder) with the run's secret and a request
# limit far above the load (the default 200/s per connection would measure the limiter).
# im_server: a fresh `courier serve`; its data folder goes under $data_parent when set (the
# tmpfs rounds), else under $work (the disk the machine runs on).
im_server() {
    data_dir="${data_parent:-$work}/data.$RANDOM$RANDOM"
    start_server serve serve --listen 127.0.0.1:0 --data "$data_dir" --jwt-secret "$secret" \
        --rate 1000000
}

# client ARGS...: courier-bench pinned to the client core.
client() { taskset -c "$client_core" "$bench" "$@"; }

# thread_ticks PID COMM: CPU ticks (user + system) of the threads of PID named COMM.
thread_ticks() {
    local t stat rest total=0
    for t in /proc/"$1"/task/*; do
        [ "$(cat "$t/comm" 2>/dev/null)" = "$2" ] || continue
        stat=$(cat "$t/stat" 2>/dev/null) || continue
        rest=${stat##*) }
        # shellcheck disable=SC2086
        set -- $rest
        total=$((total + ${12} + ${13}))
    done
    echo "$total"
}
clk_tck=$(getconf CLK_TCK)

# kernel_mem: "SLAB_BYTES TCP_MEM_PAGES": every slab cache's active objects x object size
# (socket, inode, file, dentry, epoll item, ... all of it), and the TCP buffer pages.
kernel_mem() {
    local slab tcp
    slab=$(awk 'NR > 2 { s += $2 * $4 } END { printf "%.0f", s }' /proc/slabinfo 2>/dev/null || echo 0)
    tcp=$(awk '$1 == "TCP:" { for (i = 2; i < NF; i++) if ($i == "mem") print $(i + 1) }' /proc/net/sockstat)
    echo "${slab:-0} ${tcp:-0}"
}
page_size=$(getconf PAGESIZE)

# ---------------------------------------------------------------------------------------
# SVG charts, drawn here (no plotting dependency): a line chart and a grouped bar chart.

# svg_lines OUT TITLE NOTE XLABEL YLABEL XLOG XUNIT YUNIT < "series<TAB>x<TAB>y" lines
# Units: count, us (microseconds), frac, s.
svg_lines() {
    awk -F'\t' -v out="$1" -v title="$2" -v note="$3" -v xlabel="$4" -v ylabel="$5" \
        -v xlog="$6" -v xunit="$7" -v yunit="$8" '
    function esc(s) { gsub(/&/, "\\&amp;", s); gsub(/</, "\\&lt;", s); gsub(/>/, "\\&gt;", s); return s }
    function trim(x,   s) { s = sprintf("%.1f", x); sub(/\.0$/, "", s); return s }
    function lab(v, u) {
        if (u == "us") { if (v >= 1e6) return trim(v / 1e6) "s"; if (v >= 1e3) return trim(v / 1e3) "ms"; return trim(v) "µs" }
        if (u == "frac") return trim(v * 100) "%"
        if (u == "s") return trim(v) "s"
        if (v >= 1e6) return trim(v / 1e6) "M"; if (v >= 1e3) return trim(v / 1e3) "k"; return trim(v)
    }
    function lg(v) { return log(v) / log(10) }
    function nice(raw,   p, m) { if (raw <= 0) return 1; p = 10 ^ int(lg(raw)); if (p > raw) p /= 10
        if (p >= raw) return p; if (2 * p >= raw) return 2 * p; if (5 * p >= raw) return 5 * p; return 10 * p }
    { if (!($1 in idx)) { idx[$1] = ++ns; name[ns] = $1 }
      k = idx[$1]; n[k]++; X[k, n[k]] = $2 + 0; Y[k, n[k]] = $3 + 0
      if (xlog != 1 || $2 > 0) { if (!seen || $2 + 0 < xmin) xmin = $2 + 0; if (!seen || $2 + 0 > xmax) xmax = $2 + 0; seen = 1 }
      if ($3 + 0 > ymax) ymax = $3 + 0 }
    END {
        W = 640; H = 360; L = 78; R = 20; T = 56; B = 52
        x0 = L; x1 = W - R; y0 = H - B; y1 = T
        if (xlog == 1) { xlo = 10 ^ int(lg(xmin)); if (xlo > xmin) xlo /= 10; xhi = 10 ^ int(lg(xmax)); if (xhi < xmax) xhi *= 10; if (xhi <= xlo) xhi = xlo * 10 }
        else { xlo = 0; xs = nice(xmax / 6); xhi = xs * int((xmax + xs - 1e-9) / xs); if (xhi <= 0) xhi = 1 }
        if (yunit == "frac") { yhi = 1; ys = 0.2 } else { ys = nice(ymax * 1.08 / 5); yhi = ys * int((ymax * 1.08) / ys + 0.999); if (yhi <= 0) { yhi = 1; ys = 0.2 } }
        printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H, W, H > out
        printf "<rect width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n", W, H > out
        printf "<text x=\"%d\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">%s</text>\n", W / 2, esc(title) > out
        printf "<text x=\"%d\" y=\"38\" text-anchor=\"middle\" fill=\"#444\">%s</text>\n", W / 2, esc(note) > out
        if (xlog == 1) { for (t = xlo; t <= xhi * 1.0001; t *= 10) xt[++nxt] = t }
        else { for (t = 0; t <= xhi + 1e-9; t += xs) xt[++nxt] = t }
        for (i = 1; i <= nxt; i++) { x = px(xt[i])
            printf "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/><text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", x, y1, x, y0, x, y0 + 16, lab(xt[i], xunit) > out }
        for (t = 0; t <= yhi + 1e-9; t += ys) { y = py(t)
            printf "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/><text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", x0, y, x1, y, x0 - 6, y + 4, lab(t, yunit) > out }
        printf "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#888\"/>\n", x0, y1, x1 - x0, y0 - y1 > out
        printf "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", (x0 + x1) / 2, H - 12, esc(xlabel) > out
        printf "<text x=\"16\" y=\"%.1f\" text-anchor=\"middle\" transform=\"rotate(-90 16 %.1f)\">%s</text>\n", (y0 + y1) / 2, (y0 + y1) / 2, esc(ylabel) > out
        split("#0072b2 #d55e00 #009e73 #cc79a7 #e69f00 #56b4e9", col, " ")
        for (k = 1; k <= ns; k++) {
            c = col[(k - 1) % 6 + 1]; pts = ""
            for (j = 1; j <= n[k]; j++) if (xlog != 1 || X[k, j] > 0) pts = pts sprintf("%.1f,%.1f ", px(X[k, j]), py(Y[k, j]))
            printf "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.8\" stroke-linejoin=\"round\" points=\"%s\"/>\n", c, pts > out
            for (j = 1; j <= n[k] && n[k] <= 12; j++) if (xlog != 1 || X[k, j] > 0) printf "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", px(X[k, j]), py(Y[k, j]), c > out
            ly = y1 + 14 + 15 * (k - 1)
            printf "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"3\"/><text x=\"%.1f\" y=\"%.1f\">%s</text>\n", x0 + 10, ly - 4, x0 + 28, ly - 4, c, x0 + 34, ly, esc(name[k]) > out
        }
        print "</svg>" > out
    }
    function px(v,   f) { if (xlog == 1) { if (v < xlo) v = xlo; f = (lg(v) - lg(xlo)) / (lg(xhi) - lg(xlo)) } else f = (v - xlo) / (xhi - xlo); if (f < 0) f = 0; if (f > 1) f = 1; return x0 + f * (x1 - x0) }
    function py(v,   f) { f = v / yhi; if (f < 0) f = 0; if (f > 1) f = 1; return y0 - f * (y0 - y1) }
    '
}

# svg_bars OUT TITLE NOTE YLABEL < "category<TAB>series<TAB>value" lines
svg_bars() {
    awk -F'\t' -v out="$1" -v title="$2" -v note="$3" -v ylabel="$4" '
    function esc(s) { gsub(/&/, "\\&amp;", s); gsub(/</, "\\&lt;", s); gsub(/>/, "\\&gt;", s); return s }
    function trim(x,   s) { s = sprintf("%.1f", x); sub(/\.0$/, "", s); return s }
    function lab(v) { if (v >= 1e6) return trim(v / 1e6) "M"; if (v >= 1e3) return trim(v / 1e3) "k"; return trim(v) }
    function lg(v) { return log(v) / log(10) }
    function nice(raw,   p) { if (raw <= 0) return 1; p = 10 ^ int(lg(raw)); if (p > raw) p /= 10
        if (p >= raw) return p; if (2 * p >= raw) return 2 * p; if (5 * p >= raw) return 5 * p; return 10 * p }
    { if (!($1 in ci)) { ci[$1] = ++nc; cat[nc] = $1 }
      if (!($2 in si)) { si[$2] = ++nser; ser[nser] = $2 }
      V[ci[$1], si[$2]] = $3 + 0; if ($3 + 0 > vmax) vmax = $3 + 0 }
    END {
        W = 640; H = 340; L = 78; R = 20; T = 56; B = 44
        x0 = L; x1 = W - R; y0 = H - B; y1 = T
        ys = nice(vmax * 1.1 / 5); yhi = ys * int(vmax * 1.1 / ys + 0.999)
        printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H, W, H > out
        printf "<rect width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n", W, H > out
        printf "<text x=\"%d\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">%s</text>\n", W / 2, esc(title) > out
        printf "<text x=\"%d\" y=\"38\" text-anchor=\"middle\" fill=\"#444\">%s</text>\n", W / 2, esc(note) > out
        for (t = 0; t <= yhi + 1e-9; t += ys) { y = y0 - t / yhi * (y0 - y1)
            printf "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/><text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", x0, y, x1, y, x0 - 6, y + 4, lab(t) > out }
        printf "<text x=\"16\" y=\"%.1f\" text-anchor=\"middle\" transform=\"rotate(-90 16 %.1f)\">%s</text>\n", (y0 + y1) / 2, (y0 + y1) / 2, esc(ylabel) > out
        split("#0072b2 #d55e00 #009e73 #cc79a7", col, " ")
        gw = (x1 - x0) / nc; bw = gw * 0.7 / nser
        for (c = 1; c <= nc; c++) {
            gx = x0 + (c - 1) * gw + gw * 0.15
            for (s = 1; s <= nser; s++) { v = V[c, s]; h = v / yhi * (y0 - y1)
                printf "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>\n", gx + (s - 1) * bw, y0 - h, bw - 2, h, col[s] > out
                printf "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\">%s</text>\n", gx + (s - 0.5) * bw, y0 - h - 4, lab(v) > out }
            printf "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", x0 + (c - 0.5) * gw, y0 + 18, esc(cat[c]) > out
        }
        printf "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#888\"/>\n", x0, y0, x1, y0 > out
        for (s = 1; s <= nser; s++) { ly = y1 + 14 + 15 * (s - 1)
            printf "<rect x=\"%.1f\" y=\"%.1f\" width=\"14\" height=\"10\" fill=\"%s\"/><text x=\"%.1f\" y=\"%.1f\">%s</text>\n", x1 - 150, ly - 9, col[s], x1 - 130, ly, esc(ser[s]) > out }
        print "</svg>" > out
    }'
}

# sample_counter ADDR NAME: the server's counter NAME from /metrics twice a second, as
# "unix-time value" lines, until killed.
sample_counter() {
    local v
    while :; do
        v=$(curl -s -m 1 "http://$1/metrics" | awk -v n="$2" '$1 == n { print $2 }') || true
        [ -n "$v" ] && echo "$(date +%s.%N) $v"
        sleep 0.5
    done
}

# rate_series FILE: "t<TAB>rate" from sample_counter's lines: the counter's growth per
# second between samples, t in seconds since the first sample.
rate_series() {
    awk 'NR == 1 { t0 = $1 } NR > 1 && $1 > pt { printf "%.2f\t%.0f\n", $1 - t0, ($2 - pv) / ($1 - pt) }
        { pt = $1; pv = $2 }' "$1"
}

# ---------------------------------------------------------------------------------------
# Other work on the machine: sampled once a second for the whole run, so the page can say
# when the figures were taken on a busy machine.
sample_noise() {
    while :; do
        local n
        # shellcheck disable=SC2009 # pgrep refuses patterns longer than a process name
        n=$(ps -eo comm= | grep -cxE 'rustc|cc|cc1|cc1plus|ld|clang|node|chrome|chromium' || true)
        echo "${n:-0} $(cut -d' ' -f1 /proc/loadavg) $(date +%s)"
        sleep 1
    done
}

# section NAME: the scenario NAME starts now (for the per-section noise figures).
section() { echo "$1 $(date +%s)" >>"$work/sections"; }

# busy NAME: "B of S s" for the samples taken during section NAME in which other work ran.
busy() {
    awk -v want="$1" 'NR == FNR { name[NR] = $1; at[NR] = $2; n = NR; next }
        { for (i = 1; i < n; i++) if (name[i] == want && $3 >= at[i] && $3 < at[i + 1]) { s++; if ($1 > 0) b++ } }
        END { printf "%d of %d s", b, s }' "$work/sections" "$work/noise"
}

# ---------------------------------------------------------------------------------------
log "building release (courier, courier-bench) and the echo peer"
cargo build --release --bins >&2
# The peer and the codec bench too, now: building them later would overlap with what the
# noise sampler watches.
cargo bench --no-run --bench echo_peer >&2
cargo bench --no-run --bench ws >&2
if [ ! -x "$courier" ] || [ ! -x "$bench" ]; then
    die "release binaries missing under $target_dir"
fi

sample_noise >"$work/noise" &
sampler_pid=$!

date_utc=$(date -u '+%Y-%m-%d %H:%M UTC')
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "(not a git checkout)")
dirty=$( (git status --porcelain --untracked-files=no 2>/dev/null || true) | wc -l)
cpu_model=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
cpus=$(nproc)
hypervisor=$(lscpu | sed -n 's/^Hypervisor vendor: *//p' | head -n 1)
kernel=$(uname -r)
mem_total=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
rustc_v=$(rustc --version)
nofile_hard=$(ulimit -Hn)

# ---------------------------------------------------------------------------------------
# 1. Echo, courier vs the tokio-tungstenite peer.
log "1/5 echo: courier and the tokio-tungstenite peer, $echo_rounds round(s) of ${echo_seconds}s per row"
section echo
SERVER_CORE=$server_core CLIENT_CORE=$client_core BENCH_SECONDS=$echo_seconds BENCH_ROUNDS=$echo_rounds \
    scripts/bench-echo.sh >"$work/raw/echo.txt" 2>"$work/raw/echo.err" || {
    cat "$work/raw/echo.txt" "$work/raw/echo.err" >&2
    die "scripts/bench-echo.sh failed"
}
# Its two tables, told apart by their first lines. Throughput rows, "100 x 20 1 c_best c_med
# p_best p_med 1.14x >=1.3x met" (goal and verdict `-` for a row without a goal), become
# "conns size depth c_best c_med p_best p_med ratio goal"; CPU rows, "100 x 20 1 c_user
# c_kernel p_user p_kernel 1.11x", become "conns size depth c_user c_kernel p_user p_kernel
# ceiling".
echo_rows=$(awk '/^echo throughput/ { t = 1 } /^server CPU per echoed message/ { t = 2 }
    t == 1 && $2 == "x" && $1 ~ /^[0-9]+$/ { sub(/x$/, "", $9); g = $10; sub(/^>=/, "", g); sub(/x$/, "", g)
        print $1, $3, $4, $5, $6, $7, $8, $9, g }' "$work/raw/echo.txt")
echo_cpu_rows=$(awk '/^echo throughput/ { t = 1 } /^server CPU per echoed message/ { t = 2 }
    t == 2 && $2 == "x" && $1 ~ /^[0-9]+$/ { sub(/x$/, "", $11); print $1, $3, $4, $5, $6, $7, $8, $9, $10, $11 }' \
    "$work/raw/echo.txt")
[ -n "$echo_rows" ] || die "no throughput rows in scripts/bench-echo.sh output"
[ -n "$echo_cpu_rows" ] || die "no CPU rows in scripts/bench-echo.sh output"
# Its log line per row names every round: "row 100 x 20 B depth 1: courier a b c; peer d e f"
# (the per-run lines carry ", round r/n" and a single server: the label excludes commas).
echo_round_rows=$(sed -n 's/^bench-echo.sh: row \([^,]*\): courier \(.*\); peer \(.*\)$/\1|\2|\3/p' "$work/raw/echo.txt" |
    awk -F'|' 'function g(n,   s, o) { s = sprintf("%.0f", n); o = ""
            while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) }
            return s o }
        function list(x,   a, k, i, out) { k = split(x, a, " "); out = ""
            for (i = 1; i <= k; i++) out = out (i > 1 ? ", " : "") g(a[i]); return out }
        { printf "| %s | %s | %s |\n", $1, list($2), list($3) }')

# ---------------------------------------------------------------------------------------
# 2. Start time, binary size, syscalls per echo.
log "2/5 start time, binary size, syscalls per echo (scripts/bench-basics.sh), frame codec (cargo bench --bench ws)"
section basics
SERVER_CORE=$server_core CLIENT_CORE=$client_core IDLE_CONNECTIONS=1000 \
    scripts/bench-basics.sh >"$work/raw/basics.txt" 2>"$work/raw/basics.err" || {
    cat "$work/raw/basics.txt" "$work/raw/basics.err" >&2
    die "scripts/bench-basics.sh failed"
}
start_line=$(sed -n "s/^ *start to 'listening on' *//p" "$work/raw/basics.txt")
start_best=$(grep -o 'best [0-9]*' <<<"$start_line" | cut -d' ' -f2)
start_median=$(grep -o 'median [0-9]*' <<<"$start_line" | cut -d' ' -f2)
syscalls_line=$(sed -n 's/^ *syscalls per echo (100 x 20 B) *//p' "$work/raw/basics.txt")
syscalls=$(cut -d' ' -f1 <<<"$syscalls_line")
binary_bytes=$(stat -c %s "$courier")
# The frame codec on one core (benches/ws.rs, pinned like the servers): decode of small
# masked frames, and unmasking a 64 KiB payload a word at a time.
taskset -c "$server_core" cargo bench --bench ws >"$work/raw/ws.txt" 2>"$work/raw/ws.err" || {
    cat "$work/raw/ws.txt" "$work/raw/ws.err" >&2
    die "cargo bench --bench ws failed"
}
decode_mfps=$(awk '$1 == "frame" && $2 == "decode" && $3 == 16 { print $(NF - 2); exit }' "$work/raw/ws.txt")
decode125_mfps=$(awk '$1 == "frame" && $2 == "decode" && $3 == 125 { print $(NF - 2); exit }' "$work/raw/ws.txt")
unmask_gbps=$(awk '$1 == "unmask" && $2 == 65536 { print $4; exit }' "$work/raw/ws.txt")
unmask_naive_gbps=$(awk '$1 == "unmask" && $2 == 65536 { print $7; exit }' "$work/raw/ws.txt")
if [ -z "$decode_mfps" ] || [ -z "$decode125_mfps" ] || [ -z "$unmask_gbps" ] || [ -z "$unmask_naive_gbps" ]; then
    die "no figures in cargo bench --bench ws output"
fi

# ---------------------------------------------------------------------------------------
# 3. Connection capacity: idle echo and idle authenticated IM connections.
# capacity NAME [connect flags...]: with the server already started; sets cap_* variables.
capacity() {
    local name=$1 before held json fds=0
    shift
    before=$(kernel_mem)
    client connect --url "$cap_url" --connections "$idle" --rate 5000 --hold 4 \
        --server-pid "$server_pid" --json "$@" >"$work/raw/connect-$name.json" \
        2>"$work/raw/connect-$name.err" &
    local cpid=$!
    # Once the server holds them all (plus a little to settle), the kernel's share.
    for _ in $(seq 600); do
        fds=$(find /proc/"$server_pid"/fd -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        [ "$fds" -ge "$idle" ] && break
        alive "$cpid" || break
        sleep 0.1
    done
    sleep 1.5
    held=$(kernel_mem)
    wait "$cpid" || {
        cat "$work/raw/connect-$name.json" "$work/raw/connect-$name.err" >&2
        die "courier-bench connect ($name) failed"
    }
    json=$(tail -n 1 "$work/raw/connect-$name.json")
    cap_established=$(jget "$json" established)
    cap_user=$(jget "$json" server.bytes_per_connection)
    cap_hs_p50=$(jget "$json" handshake_us.p50)
    cap_hs_p99=$(jget "$json" handshake_us.p99)
    cap_rate=$(jget "$json" achieved_rate)
    read -r slab0 tcp0 <<<"$before"
    read -r slab1 tcp1 <<<"$held"
    # Both ends of every connection are on this machine: half the growth is the server's.
    cap_kernel=$(awk -v s0="$slab0" -v s1="$slab1" -v t0="$tcp0" -v t1="$tcp1" -v p="$page_size" \
        -v n="$cap_established" 'BEGIN { printf "%.0f", ((s1 - s0) + (t1 - t0) * p) / (2 * n) }')
    cap_slab_total=$((slab1 - slab0))
    cap_tcp_pages=$((tcp1 - tcp0))
}

log "3/5 capacity: $idle idle echo connections"
section capacity
start_server echo echo --listen 127.0.0.1:0
cap_url="ws://$addr/"
capacity echo
echo_cap=("$cap_established" "$cap_user" "$cap_kernel" "$cap_hs_p50" "$cap_hs_p99" "$cap_rate" "$cap_slab_total" "$cap_tcp_pages")
stop_server

log "3/5 capacity: $idle idle authenticated IM connections"
im_server
cap_url="ws://$addr/ws"
capacity im --jwt-secret "$secret" --ping 0
im_cap=("$cap_established" "$cap_user" "$cap_kernel" "$cap_hs_p50" "$cap_hs_p99" "$cap_rate" "$cap_slab_total" "$cap_tcp_pages")
stop_server

# ---------------------------------------------------------------------------------------
# 4. IM: durable msg/s at full speed and latency at 20,000 msg/s offered.
log "4/5 IM: $im_users users, $rounds round(s) of ${seconds}s at full speed and at 20,000 msg/s"
section im
# im_checked NAME WHAT ARGS...: one `courier-bench im` run against a fresh server, with ARGS
# added; leaves its JSON summary in $json, the reactor's and the store writer's CPU ticks
# before and after the run in r0/r1 and w0/w1, the bytes the server dirtied for the disk over
# its life in disk_bytes (/proc/PID/io write_bytes: the WAL and the copies back into the
# database; nothing on tmpfs), and stops everything on a failed run or
# check. With jobs_file set, it also records the server's count of committed write jobs
# (one per message) once a second there, for the throughput-over-time chart.
im_checked() {
    local name=$1 what=$2
    shift 2
    im_server
    if [ -n "${jobs_file:-}" ]; then
        sample_counter "$addr" courier_store_jobs_total >"$jobs_file" &
        counter_pid=$!
    fi
    r0=$(thread_ticks "$server_pid" courier)
    w0=$(thread_ticks "$server_pid" courier-store-w)
    client im --url "ws://$addr/ws" --jwt-secret "$secret" --users "$im_users" \
        --seconds "$seconds" "$@" --json \
        >"$work/raw/$name.json" 2>"$work/raw/$name.err" || {
        tail -n 20 "$work/raw/$name.err" >&2
        die "courier-bench im ($what) failed (its check or the run)"
    }
    if [ -n "$counter_pid" ]; then
        kill "$counter_pid" 2>/dev/null || true
        wait "$counter_pid" 2>/dev/null || true
        counter_pid=""
    fi
    r1=$(thread_ticks "$server_pid" courier)
    w1=$(thread_ticks "$server_pid" courier-store-w)
    disk_bytes=$(awk '$1 == "write_bytes:" { print $2 }' /proc/"$server_pid"/io)
    stop_server
    # The server's shutdown line: the group-commit batch sizes and commit times of the run.
    store_lines+=("$(printf '%-24s %s' "$name" "$(sed -n 's/.*\(store: [0-9]* jobs in .*\)/\1/p' "$work/serve.err" | tail -n 1)")")
    json=$(tail -n 1 "$work/raw/$name.json")
    [ "$(jget "$json" check.passed)" = true ] || die "im exactly-once check failed ($what)"
}

store_lines=()
im_max=()
im_20k=()
for round in $(seq "$rounds"); do
    for load in max 20k; do
        rate=0
        [ "$load" = 20k ] && rate=20000
        jobs_file="$work/raw/im-$load-$round.jobs" \
            im_checked "im-$load-$round" "$load, round $round" --rate "$rate"
        confirmed=$(jget "$json" messages.confirmed)
        # Server CPU per message over the whole run: the reactor, the store writer.
        cpu="$(awk -v t=$((r1 - r0)) -v c="$clk_tck" -v m="$confirmed" 'BEGIN { printf "%.2f", t / c * 1e6 / m }') $(awk -v t=$((w1 - w0)) -v c="$clk_tck" -v m="$confirmed" 'BEGIN { printf "%.2f", t / c * 1e6 / m }')"
        row="$(jget "$json" durable_msgs_per_sec) $(jget "$json" sent_us.p50) $(jget "$json" sent_us.p99) $(jget "$json" sent_us.p999) $(jget "$json" sent_us.max) $(jget "$json" recipient_us.p50) $(jget "$json" recipient_us.p99) $(jget "$json" recipient_us.p999) $(jget "$json" recipient_us.max) $cpu"
        if [ "$load" = max ]; then im_max+=("$row"); else im_20k+=("$row"); fi
        log "  im $load round $round: $(cut -d' ' -f1 <<<"$row") durable msg/s, recipient p99 $(cut -d' ' -f7 <<<"$row") us"
    done
done

# The same at full speed with steady pairs: each user writes to 5 fixed contacts, as people
# chat with a few, instead of nearly every message opening a new conversation. And its
# latency at 20,000 msg/s, the offered load of the random-pair latency rounds, so the two
# tails can be compared.
# Each paced round runs twice: the data folder on the disk, then in memory (tmpfs, where fsync
# costs nothing), so that the difference in tail is the disk's share.
im_steady=()
im_steady_20k=()
im_steady_20k_memory=()
for round in $(seq "$rounds"); do
    im_checked "im-steady-$round" "steady pairs, round $round" --contacts 5
    im_steady+=("$(jget "$json" durable_msgs_per_sec)")
    log "  im steady pairs round $round: $(jget "$json" durable_msgs_per_sec) durable msg/s"
    im_checked "im-steady-20k-$round" "steady pairs at 20,000/s, round $round" --contacts 5 --rate 20000
    kib_per_msg=$(awk -v b="$disk_bytes" -v m="$(jget "$json" messages.confirmed)" 'BEGIN { printf "%.1f", b / 1024 / m }')
    im_steady_20k+=("$(jget "$json" durable_msgs_per_sec) $(jget "$json" sent_us.p50) $(jget "$json" sent_us.p99) $(jget "$json" recipient_us.p99) $kib_per_msg")
    log "  im steady pairs at 20k/s round $round: sent p99 $(jget "$json" sent_us.p99) us, $kib_per_msg KiB written per message"
    if [ -n "$memory_dir" ]; then
        data_parent=$memory_dir im_checked "im-steady-20k-memory-$round" \
            "steady pairs at 20,000/s, data on tmpfs, round $round" --contacts 5 --rate 20000
        im_steady_20k_memory+=("$(jget "$json" durable_msgs_per_sec) $(jget "$json" sent_us.p50) $(jget "$json" sent_us.p99) $(jget "$json" recipient_us.p99)")
        log "  im steady pairs at 20k/s on tmpfs round $round: sent p99 $(jget "$json" sent_us.p99) us"
    fi
done

# column I of a list of rows
col() {
    local i=$1
    shift
    printf '%s\n' "$@" | awk -v i="$i" '{ print $i }'
}

# ---------------------------------------------------------------------------------------
# 5. Group fan-out.
log "5/5 fan-out: $fan_members members, $rounds round(s) of ${seconds}s, then one paced run"
section fanout
fan=()
for round in $(seq "$rounds"); do
    im_server
    r0=$(thread_ticks "$server_pid" courier)
    w0=$(thread_ticks "$server_pid" courier-store-w)
    client fanout --url "ws://$addr/ws" --jwt-secret "$secret" "${fan_args[@]}" \
        --seconds "$seconds" --svg "$work/fanout-$round.svg" --json \
        >"$work/raw/fanout-$round.json" 2>"$work/raw/fanout-$round.err" || {
        tail -n 20 "$work/raw/fanout-$round.err" >&2
        die "courier-bench fanout (round $round) failed (its check or the run)"
    }
    r1=$(thread_ticks "$server_pid" courier)
    w1=$(thread_ticks "$server_pid" courier-store-w)
    stop_server
    json=$(tail -n 1 "$work/raw/fanout-$round.json")
    [ "$(jget "$json" check.passed)" = true ] || die "fan-out exactly-once check failed"
    sends=$(jget "$json" messages.sends)
    delivered=$(jget "$json" messages.delivered_once)
    # Server CPU over the whole run (setup, load, drain, verify): per delivery and per
    # group message.
    reactor_us=$(awk -v t=$((r1 - r0)) -v c="$clk_tck" -v d="$delivered" 'BEGIN { printf "%.2f", t / c * 1e6 / d }')
    writer_ms=$(awk -v t=$((w1 - w0)) -v c="$clk_tck" -v s="$sends" 'BEGIN { printf "%.2f", t / c * 1e3 / s }')
    fan+=("$(jget "$json" deliveries_per_sec) $(jget "$json" sends_per_sec) $(jget "$json" delivery_us.p50) $(jget "$json" delivery_us.p99) $(jget "$json" delivery_us.p999) $(jget "$json" delivery_us.max) $reactor_us $writer_ms $(jget "$json" sent_us.p50) $(jget "$json" sent_us.p99)")
    log "  fan-out round $round: $(jget "$json" deliveries_per_sec) deliveries/s"
done
# Paced: 200 group messages/s (200,000 deliveries/s offered) from 2 senders.
im_server
client fanout --url "ws://$addr/ws" --jwt-secret "$secret" --members "$fan_members" --senders 2 \
    --rate 200 --seconds "$seconds" --svg "$work/fanout-paced.svg" --json \
    >"$work/raw/fanout-paced.json" 2>"$work/raw/fanout-paced.err" || {
    tail -n 20 "$work/raw/fanout-paced.err" >&2
    die "courier-bench fanout (paced) failed"
}
stop_server
paced_json=$(tail -n 1 "$work/raw/fanout-paced.json")
[ "$(jget "$paced_json" check.passed)" = true ] || die "fan-out (paced) check failed"

section end
kill "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""
elapsed=$((SECONDS - started))

# ---------------------------------------------------------------------------------------
# Figures.
# echo_ratio CONNECTIONS SIZE DEPTH: the ratio courier / peer of that row (median of the per-round ratios) (the headline goals are
# the depth 1 rows, wherever they stand among the others).
echo_ratio() {
    local r
    r=$(awk -v c="$1" -v s="$2" -v d="$3" '$1 == c && $2 == s && $3 == d { print $8; exit }' <<<"$echo_rows")
    [ -n "$r" ] || die "no echo row $1 x $2 B depth $3 in scripts/bench-echo.sh output"
    echo "$r"
}
echo20_ratio=$(echo_ratio 100 20 1)
echo1k_ratio=$(echo_ratio 100 1024 1)
echo16k_ratio=$(echo_ratio 200 16384 1)
read -r im_best im_median < <(col 1 "${im_max[@]}" | best_median)
read -r steady_best steady_median < <(col 1 "${im_steady[@]}" | best_median)
im_max_p99=$(col 7 "${im_max[@]}" | median)
im_max_sent_p99=$(col 3 "${im_max[@]}" | median)
im_reactor_us=$(col 10 "${im_max[@]}" | median)
im_writer_us=$(col 11 "${im_max[@]}" | median)
im20_sent_p50=$(col 2 "${im_20k[@]}" | median)
im20_sent_p99=$(col 3 "${im_20k[@]}" | median)
im20_sent_p999=$(col 4 "${im_20k[@]}" | median)
im20_sent_max=$(col 5 "${im_20k[@]}" | median)
im20_rcpt_p50=$(col 6 "${im_20k[@]}" | median)
im20_rcpt_p99=$(col 7 "${im_20k[@]}" | median)
im20_rcpt_p999=$(col 8 "${im_20k[@]}" | median)
im20_rcpt_max=$(col 9 "${im_20k[@]}" | median)
im20_rate=$(col 1 "${im_20k[@]}" | median)
steady20_sent_p50=$(col 2 "${im_steady_20k[@]}" | median)
steady20_sent_p99=$(col 3 "${im_steady_20k[@]}" | median)
steady20_rcpt_p99=$(col 4 "${im_steady_20k[@]}" | median)
steady20_kib=$(col 5 "${im_steady_20k[@]}" | median)
memory20_sent_p99=n/a
memory20_rcpt_p99=n/a
if [ ${#im_steady_20k_memory[@]} -gt 0 ]; then
    memory20_sent_p99=$(ms "$(col 3 "${im_steady_20k_memory[@]}" | median)")
    memory20_rcpt_p99=$(ms "$(col 4 "${im_steady_20k_memory[@]}" | median)")
fi
read -r fan_best fan_median < <(col 1 "${fan[@]}" | best_median)
fan_sends=$(col 2 "${fan[@]}" | median)
fan_reactor_us=$(col 7 "${fan[@]}" | median)
fan_writer_ms=$(col 8 "${fan[@]}" | median)
fan_mid=$(col 1 "${fan[@]}" | median_index)
read -r fan_p50 fan_p99 fan_p999 fan_max < <(awk '{ print $3, $4, $5, $6 }' <<<"${fan[$((fan_mid - 1))]}")
read -r fan_sent_p50 fan_sent_p99 < <(awk '{ print $9, $10 }' <<<"${fan[$((fan_mid - 1))]}")
per_million() { awk -v u="$1" -v k="$2" 'BEGIN { printf "%.1f", (u + k) * 1e6 / 2^30 }'; }
noise_samples=$(wc -l <"$work/noise")
noise_busy=$(awk '$1 > 0' "$work/noise" | wc -l)
load_max=$(awk 'BEGIN { m = 0 } { if ($2 > m) m = $2 } END { print m }' "$work/noise")

# ---------------------------------------------------------------------------------------
# Charts.
cp "$work/fanout-$fan_mid.svg" "$charts/fanout.svg"
cp "$work/fanout-paced.svg" "$charts/fanout-paced.svg"
# The chart keeps to the depth 1 rows (the goals): pipelined rows run 10x faster and would
# flatten them to slivers on a shared axis; their figures are in the tables.
echo_depth1=$(awk '$3 == 1' <<<"$echo_rows")
awk '{ lab = $1 " x " ($2 >= 1024 ? $2 / 1024 " KiB" : $2 " B")
    printf "%s\tcourier\t%s\n%s\ttokio-tungstenite\t%s\n", lab, $5, lab, $7 }' <<<"$echo_depth1" |
    svg_bars "$charts/echo.svg" "echo throughput, one message in flight, median of $echo_rounds round(s)" \
        "courier / peer: $(awk '{ printf "%s%.2fx", (NR > 1 ? ", " : ""), $8 }' <<<"$echo_depth1")" "messages/s"
im_max_mid=$(col 1 "${im_max[@]}" | median_index)
im_20k_mid=$(col 7 "${im_20k[@]}" | median_index)
{
    rate_series "$work/raw/im-max-$im_max_mid.jobs" | sed 's/^/as fast as possible\t/'
    rate_series "$work/raw/im-20k-$im_20k_mid.jobs" | sed 's/^/20,000 msg\/s offered\t/'
} | svg_lines "$charts/im-throughput.svg" "IM messages committed per second ($im_users users)" \
    "the server's courier_store_jobs_total each 0.5 s: sign-in, 1 s warmup, ${seconds} s measured, drain (median round)" \
    "seconds since the server started" "messages/s" 0 s count
read -r -a m20 <<<"${im_20k[$((im_20k_mid - 1))]}"
read -r -a mmax <<<"${im_max[$((im_max_mid - 1))]}"
{
    printf 'send -> recipient, 20k/s\t%s\t0.5\nsend -> recipient, 20k/s\t%s\t0.99\nsend -> recipient, 20k/s\t%s\t0.999\nsend -> recipient, 20k/s\t%s\t1\n' \
        "${m20[5]}" "${m20[6]}" "${m20[7]}" "${m20[8]}"
    printf 'send -> sent, 20k/s\t%s\t0.5\nsend -> sent, 20k/s\t%s\t0.99\nsend -> sent, 20k/s\t%s\t0.999\nsend -> sent, 20k/s\t%s\t1\n' \
        "${m20[1]}" "${m20[2]}" "${m20[3]}" "${m20[4]}"
    printf 'send -> recipient, full speed\t%s\t0.5\nsend -> recipient, full speed\t%s\t0.99\nsend -> recipient, full speed\t%s\t0.999\nsend -> recipient, full speed\t%s\t1\n' \
        "${mmax[5]}" "${mmax[6]}" "${mmax[7]}" "${mmax[8]}"
} | svg_lines "$charts/im-latency.svg" "IM latency distribution (median round)" \
    "the points are p50, p99, p99.9 and max as courier-bench im reports them" \
    "latency (log scale)" "messages at or below" 1 us frac

# ---------------------------------------------------------------------------------------
# Report.
verdict() { if awk -v v="$1" -v g="$2" -v op="$3" 'BEGIN { exit !((op == ">=") ? v >= g : v <= g) }'; then echo "met"; else echo "**not met**"; fi; }
machine_note="$cpu_model, $cpus cores${hypervisor:+ ($hypervisor guest)}, $mem_total, Linux $kernel, $rustc_v"
if [ "$noise_busy" -gt 0 ]; then
    noise_note="Other work ran on this machine during the run: compilers, test browsers or node (rustc, cc, ld, node, chromium) were seen in $noise_busy of $noise_samples one-second samples, load average up to $load_max on $cpus cores. The figures are noisier than usual and some are low; the medians are the ones to read."
else
    noise_note="No other build was seen running during the run ($noise_samples one-second samples; load average at most $load_max on $cpus cores)."
fi
dirty_note=""
[ "$dirty" -gt 0 ] && dirty_note=" plus $dirty uncommitted change(s) to tracked files"
mode_note="the full run: $rounds rounds where rounds matter"
[ "$quick" = 1 ] && mode_note="a --quick run: 1 short round each, not figures to quote"

notes=""
if [ -f BENCHMARKS.md ]; then
    notes=$(sed -n '/^<!-- notes:begin -->$/,/^<!-- notes:end -->$/p' BENCHMARKS.md)
fi
if [ -z "$notes" ]; then
    notes=$'<!-- notes:begin -->\n(Hand-written notes on the figures go here; scripts/bench.sh keeps this section.)\n<!-- notes:end -->'
fi

echo_table=$(awk 'function g(n,   s, o) { s = sprintf("%.0f", n); o = ""
        while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) }
        return s o }
    { lab = $1 " x " ($2 >= 1024 ? $2 / 1024 " KiB" : $2 " B")
      goal = ($9 == "-") ? "-" : sprintf(">= %.1fx", $9)
      verdict = ($9 == "-") ? "-" : ($8 >= $9 + 0) ? "met" : "**not met**"
      printf "| %s | %s | %s | %s | %s | %s | %.2fx | %s | %s |\n", lab, $3, g($4), g($5), g($6), g($7), $8,
          goal, verdict }' <<<"$echo_rows")
echo_cpu_table=$(awk '{ lab = $1 " x " ($2 >= 1024 ? $2 / 1024 " KiB" : $2 " B")
      printf "| %s | %s | %.3f | %.3f | %s %% | %.3f | %.3f | %s %% | %s |\n", lab, $3, $4, $5, $6, $7, $8, $9,
          ($10 == "-") ? "-" : $10 "x" }' <<<"$echo_cpu_rows")
# The exact client command of every row, depth included.
echo_commands=$(awk -v cc="$client_core" -v sec="$echo_seconds" '{
    printf "taskset -c %s courier-bench echo --url ws://ADDR/ --connections %s --size %s --depth %s --seconds %s --json\n", cc, $1, $2, $3, sec }' <<<"$echo_rows")

im_rows=""
for i in $(seq "$rounds"); do
    read -r -a a <<<"${im_max[$((i - 1))]}"
    read -r -a b <<<"${im_20k[$((i - 1))]}"
    im_rows+="| $i | $(group3 "${a[0]}") | $(ms "${a[2]}") | $(ms "${a[6]}") | ${a[9]} | ${a[10]} | $(group3 "${b[0]}") | $(ms "${b[2]}") | $(ms "${b[6]}") |"$'\n'
done
fan_rows=""
for i in $(seq "$rounds"); do
    read -r -a a <<<"${fan[$((i - 1))]}"
    fan_rows+="| $i | $(group3 "${a[0]}") | $(group3 "${a[1]}") | $(ms "${a[2]}") | $(ms "${a[3]}") | $(ms "${a[5]}") | ${a[6]} | ${a[7]} |"$'\n'
done

report=$(
    cat <<EOF
# courier benchmarks

Every figure on this page comes from one run of \`scripts/bench.sh\` ($mode_note), on
$date_utc, at commit \`$commit\`$dirty_note. The run took $((elapsed / 60)) min $((elapsed % 60)) s.
To reproduce: \`scripts/bench.sh\` (\`--quick\` for a short smoke run, \`--no-write\` to leave
this page alone); it rewrites this page except the notes section at the end.

**Machine:** $machine_note. Open-file hard limit $nofile_hard.
Servers are pinned to core $server_core and the load client to core $client_core with \`taskset\`,
so the server gets one core to itself (its store threads share that core with the reactor).
$noise_note

These machines vary by about ±20 % from minute to minute: where a scenario runs in rounds,
best and median are both shown and the median is the figure to quote.

## Headline figures against the goals

| figure | this run (median) | goal (issue) | |
|---|---|---|---|
| echo 100 x 20 B, depth 1, courier / tokio-tungstenite | ${echo20_ratio}x | >= 1.3x (2) | $(verdict "$echo20_ratio" 1.3 ">=") |
| echo 100 x 1 KiB, depth 1, courier / tokio-tungstenite | ${echo1k_ratio}x | >= 1.3x (2) | $(verdict "$echo1k_ratio" 1.3 ">=") |
| echo 200 x 16 KiB, depth 1, courier / tokio-tungstenite | ${echo16k_ratio}x | >= 1.0x (2) | $(verdict "$echo16k_ratio" 1.0 ">=") |
| syscalls per echoed message (100 x 20 B) | $syscalls | <= 2.05 (2) | $(verdict "$syscalls" 2.05 "<=") |
| frame decode, 16 B masked text frames, one core (best of 5 runs) | $decode_mfps M frames/s | >= 10 M/s (2) | $(verdict "$decode_mfps" 10 ">=") |
| unmask, 64 KiB, one core (best of 5 runs) | $unmask_gbps GB/s | >= 8 GB/s (2) | $(verdict "$unmask_gbps" 8 ">=") |
| server RSS per idle echo connection ($(group3 "${echo_cap[0]}") held) | $(group3 "${echo_cap[1]}") B | <= 256 B (2) | $(verdict "${echo_cap[1]}" 256 "<=") |
| server RSS per idle authenticated IM connection ($(group3 "${im_cap[0]}") held) | $(group3 "${im_cap[1]}") B | <= 1 KiB (3) | $(verdict "${im_cap[1]}" 1024 "<=") |
| start to \`listening on\` | $(ms "$start_median") ms | < 50 ms (2) | $(verdict "$(ms "$start_median")" 50 "<=") |
| IM durable msg/s, $im_users users, as fast as possible, random pairs | $(group3 "$im_median") | >= 50,000 (3) | $(verdict "$im_median" 50000 ">=") |
| IM durable msg/s, $im_users users, as fast as possible, 5 contacts each | $(group3 "$steady_median") | >= 50,000 (3) | $(verdict "$steady_median" 50000 ">=") |
| IM send -> \`sent\` p99 at 20,000 msg/s offered | $(ms "$im20_sent_p99") ms | <= 10 ms (3) | $(verdict "$(ms "$im20_sent_p99")" 10 "<=") |
| IM send -> recipient p99 at 20,000 msg/s offered | $(ms "$im20_rcpt_p99") ms | <= 10 ms (3) | $(verdict "$(ms "$im20_rcpt_p99")" 10 "<=") |
| IM send -> \`sent\` p99 at 20,000 msg/s offered, 5 contacts each | $(ms "$steady20_sent_p99") ms | <= 10 ms (3) | $(verdict "$(ms "$steady20_sent_p99")" 10 "<=") |
| IM send -> recipient p99 at 20,000 msg/s offered, 5 contacts each | $(ms "$steady20_rcpt_p99") ms | <= 10 ms (3) | $(verdict "$(ms "$steady20_rcpt_p99")" 10 "<=") |
| the same, data folder on tmpfs (no disk): send -> \`sent\` p99, send -> recipient p99 | $memory20_sent_p99 ms, $memory20_rcpt_p99 ms | (the disk's share) | |
| bytes the server writes for the disk per message, 20,000 msg/s, 5 contacts each | $steady20_kib KiB | | |
| group fan-out deliveries/s, $fan_members members, one reactor core | $(group3 "$fan_median") | >= 1,000,000 (4) | $(verdict "$fan_median" 1000000 ">=") |

## Echo throughput

Courier (\`courier echo\`) and a tokio-tungstenite echo server on a \`current_thread\` runtime
(\`benches/echo_peer.rs\`), both started in this run and pinned to core $server_core, driven by
the same client, \`courier-bench echo\` on core $client_core, keeping \`depth\` messages in flight
per connection, ${echo_seconds} s measured per run after 1 s of warmup, $echo_rounds round(s) alternating
courier and peer. The goals are for one message in flight; the rows without a goal keep more
in flight and show what the servers do with pipelined messages. Other work was running on the machine
during $(busy echo) of this section. Messages per second:

| connections x size | depth | courier best | courier median | peer best | peer median | ratio (median of rounds) | goal | |
|---|---|---|---|---|---|---|---|---|
$echo_table

Server CPU per echoed message, in µs: each server's user and kernel time from
\`/proc/PID/stat\` (all threads, ${clk_tck} ticks/s) read right before and right after every
client run, divided by the messages the client counted in that run (warmup included); the
median over the rounds. Core busy is the server's CPU time over the run's wall time. The
kernel ceiling is (peer user + peer kernel) / courier kernel, taken per round (courier's and
the peer's run of the same round) and then the median: the ratio courier / peer would reach
if courier spent no user-space time at all and its kernel time per message stayed as it is,
with both servers filling the server core. Both kernel times drift with the machine from
minute to minute, which is why the rounds alternate.

| connections x size | depth | courier user | courier kernel | courier core busy | peer user | peer kernel | peer core busy | kernel ceiling |
|---|---|---|---|---|---|---|---|---|
$echo_cpu_table

Every round, in the order run (courier and peer alternate within a round):

| row | courier msg/s | peer msg/s |
|---|---|---|
$echo_round_rows

![echo throughput at depth 1, courier against tokio-tungstenite](benchmarks/echo.svg)

\`\`\`sh
SERVER_CORE=$server_core CLIENT_CORE=$client_core BENCH_SECONDS=$echo_seconds BENCH_ROUNDS=$echo_rounds scripts/bench-echo.sh
# each run inside it, one line per row:
$echo_commands
\`\`\`

## Syscalls, start time, binary size, frame codec

| figure | value |
|---|---|
| syscalls per echoed message, 100 x 20 B (perf \`raw_syscalls:sys_enter\` on the server / messages echoed) | $syscalls_line |
| start to \`listening on\` (process spawn included, 20 starts) | best $(ms "$start_best") ms, median $(ms "$start_median") ms |
| release binary (\`target/release/courier\`, symbols kept, no debug info) | $(group3 "$binary_bytes") bytes ($(awk -v b="$binary_bytes" 'BEGIN { printf "%.1f", b / 1048576 }') MiB) |
| frame decode, one core: 16 B / 125 B masked text frames | $decode_mfps / $decode125_mfps M frames/s |
| unmask 64 KiB, one core: word at a time / byte at a time | $unmask_gbps / $unmask_naive_gbps GB/s |

\`\`\`sh
SERVER_CORE=$server_core CLIENT_CORE=$client_core IDLE_CONNECTIONS=1000 scripts/bench-basics.sh
taskset -c $server_core cargo bench --bench ws
\`\`\`

## Connection capacity

One server process holding $(group3 "$idle") idle connections (this machine caps a process at
$nofile_hard open files; the client, \`courier-bench connect\` in one process, holds the other
ends). User-space bytes are the server's RSS growth divided by the connections held
(\`courier-bench connect --server-pid\`: RSS before connecting and 1 s after the last
handshake). Kernel bytes are the growth of every slab cache in \`/proc/slabinfo\` (sockets,
inodes, files, dentries, epoll items) plus TCP buffer pages from \`/proc/net/sockstat\`,
sampled before and while the connections are held, divided by twice the connections: both
ends live on this machine and cost the kernel about the same. Kernel figures include
whatever else the machine allocated in those seconds. Other work was running during
$(busy capacity) of this section.

| | idle echo (\`courier echo\`) | idle authenticated IM (\`courier serve\`, a token each) |
|---|---|---|
| connections held | $(group3 "${echo_cap[0]}") | $(group3 "${im_cap[0]}") |
| connection rate achieved | $(group3 "${echo_cap[5]}")/s | $(group3 "${im_cap[5]}")/s |
| handshake p50 / p99 | $(ms "${echo_cap[3]}") / $(ms "${echo_cap[4]}") ms | $(ms "${im_cap[3]}") / $(ms "${im_cap[4]}") ms |
| server user-space bytes per connection (RSS) | **$(group3 "${echo_cap[1]}") B** | **$(group3 "${im_cap[1]}") B** |
| kernel bytes per connection, one side (slab growth $(group3 "${echo_cap[6]}") B / $(group3 "${im_cap[6]}") B, TCP pages +${echo_cap[7]} / +${im_cap[7]}) | **$(group3 "${echo_cap[2]}") B** | **$(group3 "${im_cap[2]}") B** |
| 1,000,000 connections on one reactor: user + kernel | $(per_million "${echo_cap[1]}" "${echo_cap[2]}") GiB | $(per_million "${im_cap[1]}" "${im_cap[2]}") GiB |

The arithmetic for a million: 1,000,000 x (user bytes + kernel bytes per connection), with
idle sockets (no data queued: a socket with unread or unsent data holds its buffers on top,
up to the \`tcp_rmem\`/\`tcp_wmem\` limits). Holding a million needs what this machine does not
give a process: \`ulimit -n\` above 1,000,000 and, for one client machine, many source
addresses (each address has about 28,000 ephemeral ports).

\`\`\`sh
courier echo --listen 127.0.0.1:0                    # pinned: taskset -c $server_core
taskset -c $client_core courier-bench connect --url ws://ADDR/ --connections $idle --rate 5000 --hold 4 --server-pid PID --json
SECRET=\$(courier secret)                           # any secret of 32 bytes or more
courier serve --listen 127.0.0.1:0 --data NEW --jwt-secret \$SECRET --rate 1000000
taskset -c $client_core courier-bench connect --url ws://ADDR/ws --connections $idle --rate 5000 --hold 4 --server-pid PID --jwt-secret \$SECRET --ping 0 --json
\`\`\`

## IM: durable messages per second and latency

$im_users users, one connection each, 1:1 messages to random other users, every push acked;
a fresh server and data folder for every run (\`--synchronous normal\`, the default), ${seconds} s
measured after 1 s of warmup. Every run passed courier-bench's exactly-once check (every
message that got a \`sent\` displayed once at its recipient, every inbox gap-free).
Latency in milliseconds. Server CPU per message is the reactor thread's and the store
writer's time over the whole run (sign-in, drain and verify included) divided by the
messages confirmed, read from \`/proc/PID/task\`. Other work was running during $(busy im) of
this section.

| round | full speed: durable msg/s | send -> \`sent\` p99 | send -> recipient p99 | reactor µs per msg | store writer µs per msg | 20k/s offered: durable msg/s | send -> \`sent\` p99 | send -> recipient p99 |
|---|---|---|---|---|---|---|---|---|
${im_rows}| **best / median** | **$(group3 "$im_best") / $(group3 "$im_median")** | median $(ms "$im_max_sent_p99") | median $(ms "$im_max_p99") | median $im_reactor_us | median $im_writer_us | median $(group3 "$im20_rate") | median $(ms "$im20_sent_p99") | median $(ms "$im20_rcpt_p99") |

At 20,000 msg/s offered (medians of the rounds, ms; durable rate $(group3 "$im20_rate")/s):

| | p50 | p99 | p99.9 | max |
|---|---|---|---|---|
| send -> \`sent\` | $(ms "$im20_sent_p50") | $(ms "$im20_sent_p99") | $(ms "$im20_sent_p999") | $(ms "$im20_sent_max") |
| send -> recipient | $(ms "$im20_rcpt_p50") | $(ms "$im20_rcpt_p99") | $(ms "$im20_rcpt_p999") | $(ms "$im20_rcpt_max") |

![IM durable messages per second over time](benchmarks/im-throughput.svg)

![IM latency distribution](benchmarks/im-latency.svg)

\`\`\`sh
courier serve --listen 127.0.0.1:0 --data NEW --jwt-secret \$SECRET --rate 1000000   # pinned: taskset -c $server_core
taskset -c $client_core courier-bench im --url ws://ADDR/ws --jwt-secret \$SECRET --users $im_users --seconds $seconds --json
taskset -c $client_core courier-bench im --url ws://ADDR/ws --jwt-secret \$SECRET --users $im_users --seconds $seconds --rate 20000 --json
taskset -c $client_core courier-bench im --url ws://ADDR/ws --jwt-secret \$SECRET --users $im_users --seconds $seconds --contacts 5 --json
taskset -c $client_core courier-bench im --url ws://ADDR/ws --jwt-secret \$SECRET --users $im_users --seconds $seconds --contacts 5 --rate 20000 --json
\`\`\`

With steady pairs (\`--contacts 5\`: each user writes to the next five users, as people chat
with a few) instead of random ones, at full speed: best $(group3 "$steady_best"), median
$(group3 "$steady_median") durable msg/s over the rounds ($(printf '%s ' "${im_steady[@]}")); at
20,000 msg/s offered, send -> \`sent\` p50 $(ms "$steady20_sent_p50") ms and p99 $(ms "$steady20_sent_p99") ms,
send -> recipient p99 $(ms "$steady20_rcpt_p99") ms (medians; per round, sent p99 in ms:
$(col 3 "${im_steady_20k[@]}" | awk '{ printf "%s%.1f", (NR > 1 ? ", " : ""), $1 / 1000 }')). Random
pairs open a new conversation with nearly every message, and each new one costs two
conversation rows and a fresh place in the history index: pages the store writes that a
running conversation shares.

Group commit, as each server reported it at shutdown (batch sizes in jobs, one job per
message; quantiles are power-of-two bucket bounds):

\`\`\`
$(printf '%s\n' "${store_lines[@]}")
\`\`\`

Every paced steady-pair round also ran a second time with the data folder on tmpfs
(\`/dev/shm\`, where fsync costs nothing), the same binary and load: send -> \`sent\` p99
$memory20_sent_p99 ms there (per round, in ms: $(if [ ${#im_steady_20k_memory[@]} -gt 0 ]; then col 3 "${im_steady_20k_memory[@]}" | awk '{ printf "%s%.1f", (NR > 1 ? ", " : ""), $1 / 1000 }'; else echo none, /dev/shm is no tmpfs here; fi)),
against $(ms "$steady20_sent_p99") ms on the disk. The difference is the disk's share of the tail. On the
disk the server dirtied $steady20_kib KiB per message for writing back (\`write_bytes\` of
\`/proc/PID/io\` over the run, divided by the confirmed messages): the WAL frames of the B-tree
leaves each message touches and their copies back into the database, about
$(awk -v k="$steady20_kib" 'BEGIN { printf "%.0f", k * 20000 / 1024 }') MiB/s at 20,000 msg/s, all of which the checkpoints fsync.

## Group fan-out

One group of $fan_members members, every member connected (one connection each), formed with
\`group_create\`; one sender keeps 64 group messages in flight (awaiting \`sent\`); each message
is displayed at the $((fan_members - 1)) other members, who ack every read. A delivery is one
message displayed at one member. A fresh server per run; ${seconds} s measured after 1 s of warmup;
every run passed the exactly-once check (every confirmed message displayed once at every other
member, every inbox synced gap-free to its head, 8 inboxes replayed from the start and compared
seq by seq). Server CPU is the reactor thread's and the store writer's time over the whole run
(setup and verify included), read from \`/proc/PID/task\`. Other work was running during
$(busy fanout) of this section.

| round | deliveries/s | group messages/s | delivery p50 ms | p99 ms | max ms | reactor µs per delivery | store writer ms per group message |
|---|---|---|---|---|---|---|---|
${fan_rows}| **best / median** | **$(group3 "$fan_best") / $(group3 "$fan_median")** | $(group3 "$fan_sends") | | | | $fan_reactor_us | $fan_writer_ms |

Median round: send -> delivery p50 $(ms "$fan_p50") ms, p99 $(ms "$fan_p99") ms, p99.9 $(ms "$fan_p999") ms, max
$(ms "$fan_max") ms; send -> \`sent\` p50 $(ms "$fan_sent_p50") ms, p99 $(ms "$fan_sent_p99") ms (with 64 in flight the latency is mostly
queueing behind the messages ahead).

![fan-out latency CDF and deliveries per second (median round)](benchmarks/fanout.svg)

Paced instead: 2 senders, 200 group messages/s in total (200,000 deliveries/s offered):
$(group3 "$(jget "$paced_json" deliveries_per_sec)") deliveries/s, send -> delivery p50 $(ms "$(jget "$paced_json" delivery_us.p50)") ms, p99 $(ms "$(jget "$paced_json" delivery_us.p99)") ms,
max $(ms "$(jget "$paced_json" delivery_us.max)") ms; send -> \`sent\` p99 $(ms "$(jget "$paced_json" sent_us.p99)") ms.

![fan-out at 200 group messages/s: latency CDF and deliveries per second](benchmarks/fanout-paced.svg)

\`\`\`sh
courier serve --listen 127.0.0.1:0 --data NEW --jwt-secret \$SECRET --rate 1000000   # pinned: taskset -c $server_core
taskset -c $client_core courier-bench fanout --url ws://ADDR/ws --jwt-secret \$SECRET ${fan_args[*]} --seconds $seconds --svg fanout.svg --json
taskset -c $client_core courier-bench fanout --url ws://ADDR/ws --jwt-secret \$SECRET --members $fan_members --senders 2 --rate 200 --seconds $seconds --svg fanout-paced.svg --json
\`\`\`

## Notes

$notes
EOF
)

echo "$report" >"$work/BENCHMARKS.md"
if [ "$write" = 1 ]; then
    cp "$work/BENCHMARKS.md" BENCHMARKS.md
    log "wrote BENCHMARKS.md and $charts/*.svg ($((elapsed / 60)) min $((elapsed % 60)) s)"
else
    cat "$work/BENCHMARKS.md"
fi
