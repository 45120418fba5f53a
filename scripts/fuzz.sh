#!/usr/bin/env bash
# Run every cargo-fuzz target for a bounded time; fail on any crash, panic, leak or hang.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 20); TARGETs default to every target in fuzz/Cargo.toml.
# Each target starts from its seed corpus, fuzz/corpus/TARGET (small, kept in the repo).
# New inputs found during the run go to a temporary directory, so the repo's corpus stays
# small; promote an interesting input by copying it into fuzz/corpus/TARGET by hand.
# A crash leaves its input in fuzz/artifacts/TARGET/ and a reproduction command in the log.
#
# The machine has only the stable toolchain: RUSTC_BOOTSTRAP=1 lets it accept the -Z
# sanitizer flags cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-20}
shift || true
case $seconds in
'' | *[!0-9]*)
    echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
    exit 2
    ;;
esac

export RUSTC_BOOTSTRAP=1

# cargo-fuzz itself, and the C++ compiler libfuzzer-sys needs to build libFuzzer.
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
if ! command -v c++ >/dev/null 2>&1; then
    echo "fuzz.sh: installing a C++ compiler (libfuzzer-sys builds libFuzzer from source)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq g++
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
if [ "${#targets[@]}" -eq 0 ]; then
    echo "fuzz.sh: no fuzz targets found" >&2
    exit 1
fi

# Build every target once up front, so the time given to each run is fuzzing time.
echo "fuzz.sh: building ${targets[*]}"
cargo fuzz build

scratch=$(mktemp -d "${TMPDIR:-/tmp}/courier-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

failed=()
for target in "${targets[@]}"; do
    seeds="fuzz/corpus/$target"
    mkdir -p "$seeds" "$scratch/$target"
    echo
    echo "---- fuzz $target: ${seconds}s, seeds from $seeds ($(find "$seeds" -type f | wc -l) files)"
    # libFuzzer writes new inputs to the first corpus directory and only reads the others.
    # -timeout: one input running over 10 s is a hang, reported as a failure.
    if cargo fuzz run "$target" "$scratch/$target" "$seeds" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1; then
        echo "---- fuzz $target: ok ($(find "$scratch/$target" -type f | wc -l) new corpus inputs, discarded)"
    else
        echo "---- fuzz $target: FAILED (crash input in fuzz/artifacts/$target/)"
        failed+=("$target")
    fi
done

echo
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz.sh: ${#failed[@]} of ${#targets[@]} targets failed: ${failed[*]}"
    exit 1
fi
echo "fuzz.sh: all ${#targets[@]} targets ran ${seconds}s without a crash"
