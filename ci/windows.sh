#!/usr/bin/env bash
# The Windows half of CI, under Wine: clippy for x86_64-pc-windows-gnu and the
# test suite run by Wine (the test executables re-execute themselves as
# workers, so this exercises the real named-pipe backend).
#
# Idempotent. On a fresh Debian machine with only the Rust toolchain it
# installs mingw and Wine (apt-get), the Rust target, and the bcryptprimitives
# stub Wine 8.0 needs (see ci/wine/bcryptprimitives.c).
#
# Usage: ci/windows.sh [cargo package selection, default --workspace]
#   e.g. ci/windows.sh -p procpool-ipc
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=x86_64-pc-windows-gnu
if [[ $# -eq 0 ]]; then set -- --workspace; fi

started=$SECONDS
step() {
    local name=$1 t0=$SECONDS
    shift
    echo "==> $name"
    "$@"
    echo "<== $name: $((SECONDS - t0)) s"
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

install_packages() {
    if command -v wine >/dev/null && command -v x86_64-w64-mingw32-gcc >/dev/null; then
        echo "wine and mingw already installed"
        return
    fi
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq gcc-mingw-w64-x86-64 wine wine64 >/dev/null
}

export WINEDEBUG=-all
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine

step "install mingw + wine" install_packages
step "rustup target $target" rustup target add "$target"
step "wine prefix + bcryptprimitives stub" ci/wine/install-stub.sh
step "clippy ($target)" cargo clippy "$@" --all-targets --target "$target" -- -D warnings
step "test under wine ($target)" cargo test "$@" --target "$target"
# Let Wine's server exit now rather than linger for a few seconds.
wineserver -k 2>/dev/null || true
echo "ci/windows.sh passed in $((SECONDS - started)) s"
