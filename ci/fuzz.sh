#!/usr/bin/env bash
# Fuzzing (issue 14): each cargo-fuzz target in fuzz/ for a bounded time.
# Installs the nightly toolchain (minimal profile) and cargo-fuzz if they
# are missing, builds the targets once (AddressSanitizer, debug
# assertions and overflow checks on), then fuzzes each one for SECONDS
# (default 30) from the seeds in fuzz/corpus/<target>. Any crash, panic,
# OOM or hang fails the script; libFuzzer prints the input it saved under
# fuzz/artifacts/<target>/ and how to reproduce it.
#
# Limits: an allocation of 64 MiB or more is an OOM (-malloc_limit_mb), so
# a decoder that allocates what a header announces fails at once; RSS is
# capped at 256 MiB (ASan's own memory is about 40 MiB, its quarantine of
# freed memory is cut to 16 MiB, and the hub target's in-memory corpus
# reaches about 100 MiB in a few minutes); one input may take 10 s.
#
# What the fuzzer finds worth keeping goes to fuzz/target/corpus/<target>
# (not in git), so later runs start from there. Final stats, including
# stat::number_of_executed_units, are printed per target.
#
# Usage: ci/fuzz.sh [SECONDS [TARGET...]]   (targets: all by default)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${1:-30}
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then targets=(frame proto handshake hub); fi

started=$SECONDS
# shellcheck source=ci/step.sh
. ci/step.sh

nightly() {
    rustup toolchain list | grep -q '^nightly-' ||
        rustup toolchain install nightly --profile minimal
}
cargo_fuzz() {
    cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
}
fuzz() {
    local target=$1 corpus=fuzz/target/corpus/$1
    mkdir -p "$corpus"
    ASAN_OPTIONS=${ASAN_OPTIONS:-quarantine_size_mb=16} \
        cargo +nightly fuzz run "$target" "$corpus" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=256 -malloc_limit_mb=64 -print_final_stats=1
}

step "nightly toolchain" nightly
step "cargo-fuzz" cargo_fuzz
step "build targets" cargo +nightly fuzz build
for target in "${targets[@]}"; do
    step "fuzz $target (${seconds} s)" fuzz "$target"
done
echo "ci/fuzz.sh passed in $((SECONDS - started)) s"
