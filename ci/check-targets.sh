#!/usr/bin/env bash
# Compile checks for the platforms we cannot run here: macOS (aarch64) and
# FreeBSD. `cargo check` needs no linker, so only the Rust targets are
# installed. Warnings are errors: code behind a cfg for these platforms is
# seen nowhere else.
#
# Usage: ci/check-targets.sh [cargo package selection, default --workspace]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
targets=(aarch64-apple-darwin x86_64-unknown-freebsd)
if [[ $# -eq 0 ]]; then set -- --workspace; fi

started=$SECONDS
# shellcheck source=ci/step.sh
. ci/step.sh

step "rustup targets" rustup target add "${targets[@]}"
for target in "${targets[@]}"; do
    step "check ($target)" env RUSTFLAGS="${RUSTFLAGS:-} -D warnings" \
        cargo check "$@" --all-targets --target "$target"
done
echo "ci/check-targets.sh passed in $((SECONDS - started)) s"
