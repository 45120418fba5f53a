#!/usr/bin/env bash
# The whole test suite, in one command. What CI runs (.ci/run execs this).
#
#   ./scripts/test.sh
#
# Works on a fresh Debian machine with only the Rust toolchain: whatever else it needs it
# installs on first use: the rustfmt and clippy components, cargo-fuzz, kosoku in a Python
# venv under target/, the npm packages of package-lock.json, and Debian packages
# (shellcheck, nodejs, npm, chromium, nginx, systemd for systemd-analyze, strace, g++,
# python3-venv), which need root or sudo.
#
# On the 2-core machine it was tuned on: ~8.5 minutes cold (fresh clone, empty target/,
# crates already downloaded; 507 s with another build running beside it part of the
# time), ~4 minutes warm (243 s). Each section's own time is printed at the end.
#
# Environment:
#   FUZZ_SECONDS   seconds per fuzz target (default 20)
#   SOAK_SECONDS   length of the soak (default 60)
#   (scripts/autobahn.sh documents its own AUTOBAHN_* variables)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

started=$SECONDS
passed=0
current=""
section_started=$SECONDS
# Each finished section's name and its own duration, for the table printed at the end:
# the cumulative "elapsed" of each line does not say which section a slow run spent on.
section_names=()
section_seconds=()

section() {
    current=$1
    section_started=$SECONDS
    printf '\n==== %s\n' "$1"
}
done_section() {
    local took=$((SECONDS - section_started))
    passed=$((passed + 1))
    section_names+=("$current")
    section_seconds+=("$took")
    printf '==== %s: ok in %ds (%ds elapsed)\n' "$current" "$took" "$((SECONDS - started))"
}
# The table of every section run: those done, then the one that failed, if one did.
times_table() {
    local failed=$1 i
    printf '\n==== time per section\n'
    for i in "${!section_names[@]}"; do
        printf '%6ds  ok      %s\n' "${section_seconds[$i]}" "${section_names[$i]}"
    done
    if [ -n "$failed" ]; then
        printf '%6ds  FAILED  %s\n' "$((SECONDS - section_started))" "$failed"
    fi
    printf '%6ds  total\n' "$((SECONDS - started))"
}
# What runs in the background (the release build beside the soak, half the fuzzers) is
# stopped with the suite, and its log shown.
release_pid=""
release_log=""
fuzz_pid=""
fuzz_logs=""
on_exit() {
    local status=$?
    if [ -n "$release_pid" ]; then
        kill "$release_pid" 2>/dev/null || true
    fi
    [ -z "$release_log" ] || rm -f "$release_log"
    if [ -n "$fuzz_pid" ]; then
        kill "$fuzz_pid" 2>/dev/null || true
        [ -z "$fuzz_logs" ] || cat "$fuzz_logs/first.log" 2>/dev/null || true
    fi
    [ -z "$fuzz_logs" ] || rm -rf "$fuzz_logs"
    if [ "$status" -ne 0 ]; then
        times_table "$current"
        printf '\n==== FAILED in: %s (exit status %d)\n' "$current" "$status"
        echo "suites: $passed passed, 1 failed"
    fi
}
trap on_exit EXIT

section "toolchain"
cargo --version
rustc --version
if ! cargo fmt --version >/dev/null 2>&1; then
    rustup component add rustfmt
fi
if ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add clippy
fi
done_section

section "format (cargo fmt --check)"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml --all -- --check
done_section

section "lint (cargo clippy --all-targets -D warnings)"
cargo clippy --all-targets -- -D warnings
done_section

section "shell scripts (shellcheck -S warning)"
# The benchmark scripts run nowhere else in this suite: a quoting or parsing slip in them
# would only show in the next full benchmark run.
if ! command -v shellcheck >/dev/null 2>&1; then
    sudo_if_needed apt-get update -qq
    sudo_if_needed apt-get install -y -qq shellcheck
fi
shellcheck --version | sed -n 2p
shellcheck -S warning scripts/*.sh .ci/run
done_section

section "unit and integration tests (cargo test)"
# --all-targets builds and runs lib, bins, tests/, examples and benches (a harness=false
# bench run by `cargo test` gets no --bench flag and should only smoke-test itself), but
# skips doctests: those run separately.
cargo test --doc
cargo test --all-targets
done_section

section "README's steps, as written (scripts/readme-steps.sh)"
# The README's "Running the server" commands, read from the README itself and run in order
# with the debug binary `cargo test` just built: if they stop working, this says so.
scripts/readme-steps.sh
done_section

section "soak (scripts/soak.sh, 60 s), the release build beside it"
# Churn, sends, syncs, group changes and abusive clients against a fresh server; fails if an
# acknowledged message is lost or the server's RSS, files or WAL keep growing. It runs
# debug binaries (`cargo build --bins`: mostly what `cargo test` built, but without the
# dev-dependencies' features serde and courier build again, ~15 s).
# SOAK_SECONDS overrides the length.
#
# The soak keeps about 0.6 of the 2 cores busy for its minute, and the release build the
# Autobahn section tests (fat LTO, one codegen unit: ~75 s cold, mostly on one core) has
# nothing to do with it: so it is built here, beside the soak, at the lowest priority,
# where it cannot slow the server the soak judges much. Measured: /healthz's slowest
# answer, the soak's one time-bound check (limit 500 ms), was 1.2 ms with the build beside
# it, 0.4 ms without.
release_log=$(mktemp "${TMPDIR:-/tmp}/courier-test-release.XXXXXX")
nice -n 19 cargo build --release --bin courier >"$release_log" 2>&1 &
release_pid=$!
scripts/soak.sh --seconds "${SOAK_SECONDS:-60}"
done_section

section "Autobahn conformance, cases 1-10 strict (scripts/autobahn.sh)"
# Against the release build started beside the soak (autobahn.sh's own `cargo build
# --release` then finds it done).
release_status=0
wait "$release_pid" || release_status=$?
release_pid=""
if [ "$release_status" -ne 0 ]; then
    cat "$release_log"
    echo "cargo build --release --bin courier: exit status $release_status"
    exit 1
fi
sed -n '$p' "$release_log"
rm -f "$release_log"
release_log=""
scripts/autobahn.sh
done_section

section "benches compile (cargo bench --no-run, unoptimized)"
# `cargo test --all-targets` has built and smoke-run the benches already, in the dev
# profile; what this adds is the bench profile's configuration (no debug assertions, no
# overflow checks), where a cfg-gated slip would only show at the next benchmark run. The
# profile's fat LTO, codegen-units=1 and optimization change how fast the code runs, not
# whether it builds, and cost minutes of a cold run on 2 cores (4.5 in issue 15), so they
# are turned off here: ~35 s cold. Only the [[bench]] targets (not the lib and bins as
# benches, whose tests cargo test ran), and in a target dir of their own, because cargo
# bench also builds the binaries and would leave this unoptimized courier in
# target/release/ in place of the release build the Autobahn section made.
CARGO_PROFILE_BENCH_OPT_LEVEL=0 CARGO_PROFILE_BENCH_DEBUG=false \
    CARGO_PROFILE_BENCH_LTO=off CARGO_PROFILE_BENCH_CODEGEN_UNITS=16 \
    cargo bench --no-run --bench '*' --target-dir "${CARGO_TARGET_DIR:-target}/bench-check"
done_section

section "browser client unit tests (node --test web/test/*.test.mjs)"
if ! command -v node >/dev/null 2>&1; then
    sudo_if_needed apt-get update -qq
    sudo_if_needed apt-get install -y -qq nodejs npm
fi
node --version
node --test web/test/*.test.mjs
done_section

section "chat page end to end in Chromium (scripts/e2e.sh)"
scripts/e2e.sh
done_section

section "wss through nginx (scripts/nginx-test.sh)"
# deploy/nginx/courier.conf in front of the debug binary `cargo test` built, the real
# client library over wss: chat, the client's address through --trusted-proxy,
# heartbeats past a short proxy_read_timeout, resume after `nginx -s reload`.
scripts/nginx-test.sh
done_section

section "systemd unit (scripts/systemd-verify.sh)"
# deploy/systemd/courier.service: systemd-analyze verify with no warnings, its exposure
# score, and every system call of a traced run allowed by its SystemCallFilter.
scripts/systemd-verify.sh
done_section

section "fuzz every target for ${FUZZ_SECONDS:-20}s, two at a time (scripts/fuzz.sh)"
# A fuzzer is one process on one core: two of them at once (each target still gets its
# whole time) use the machine's second core, which would otherwise idle for the minutes
# the targets run one after the other.
#
# CFLAGS=-O0: every target links the bundled SQLite (through courier), which no target
# runs; compiled at cargo-fuzz's -O3 it was the longest step of a cold fuzz build (215 s
# cold here, 80 s without). The Rust code keeps cargo-fuzz's flags (optimized, one
# codegen unit, ASan, debug assertions), so the fuzzers run as fast as before.
fuzz_seconds=${FUZZ_SECONDS:-20}
fuzz_cflags="${CFLAGS:+$CFLAGS }-O0"
mapfile -t fuzz_targets < <(awk '/^\[\[bin\]\]/ { bin = 1; next }
    bin && /^name *=/ { gsub(/.*= *"|".*/, ""); print; bin = 0 }' fuzz/Cargo.toml)
half=$(((${#fuzz_targets[@]} + 1) / 2))
fuzz_logs=$(mktemp -d "${TMPDIR:-/tmp}/courier-test-fuzz.XXXXXX")
CFLAGS=$fuzz_cflags scripts/fuzz.sh "$fuzz_seconds" "${fuzz_targets[@]:0:half}" \
    >"$fuzz_logs/first.log" 2>&1 &
fuzz_pid=$!
echo "fuzz: ${fuzz_targets[*]:0:half} building, then running, in the background"
# The second half starts once the first has built every target: fuzz.sh installs
# cargo-fuzz and a C++ compiler when missing, then builds all targets before its first
# run, where it prints `---- fuzz`; two at once would race on apt and cargo install.
built() { grep -q '^---- fuzz ' "$fuzz_logs/first.log"; }
while alive "$fuzz_pid" && ! built; do
    sleep 1
done
second_status=0
if built; then
    echo "fuzz: built; ${fuzz_targets[*]:half} running beside them (their logs follow at the end)"
    CFLAGS=$fuzz_cflags scripts/fuzz.sh "$fuzz_seconds" "${fuzz_targets[@]:half}" \
        >"$fuzz_logs/second.log" 2>&1 || second_status=$?
fi
first_status=0
wait "$fuzz_pid" || first_status=$?
fuzz_pid=""
cat "$fuzz_logs/first.log"
[ ! -f "$fuzz_logs/second.log" ] || cat "$fuzz_logs/second.log"
rm -rf "$fuzz_logs"
fuzz_logs=""
if [ "$first_status" -ne 0 ] || [ "$second_status" -ne 0 ]; then
    echo "fuzz: FAILED (first half: exit status $first_status, second half: $second_status)"
    exit 1
fi
done_section

current="all"
times_table ""
printf '\n==== all suites passed in %ds\n' "$((SECONDS - started))"
echo "suites: $passed passed, 0 failed"
