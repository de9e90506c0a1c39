#!/usr/bin/env bash
# The Windows half of CI, under Wine: clippy for x86_64-pc-windows-gnu and the
# test suite run by Wine (the test executables re-execute themselves as
# workers, so this exercises the real named-pipe backend).
#
# Idempotent. On a fresh Debian machine with only the Rust toolchain it
# installs mingw and Wine (apt-get), the Rust target, and the bcryptprimitives
# stub Wine 8.0 needs (see ci/wine/bcryptprimitives.c).
#
# Usage: ci/windows.sh [install|clippy|test] [cargo package selection, default --workspace]
#   ci/windows.sh                   installs, then clippy and the tests
#   ci/windows.sh install           installs only
#   ci/windows.sh clippy            installs (if needed), then clippy only
#   ci/windows.sh test -p procpool-ipc
#
# Tests run with --no-fail-fast, so one run shows every failing binary.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=x86_64-pc-windows-gnu
mode=all
case "${1:-}" in
    install | clippy | test) mode=$1; shift ;;
esac
if [[ $# -eq 0 ]]; then set -- --workspace; fi

started=$SECONDS
# shellcheck source=ci/step.sh
. ci/step.sh

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
if [[ $mode == all || $mode == clippy ]]; then
    step "clippy ($target)" cargo clippy "$@" --all-targets --target "$target" -- -D warnings
fi
if [[ $mode == all || $mode == test ]]; then
    step "test under wine ($target)" cargo test "$@" --target "$target" --no-fail-fast
fi
# Let Wine's server exit now rather than linger for a few seconds.
wineserver -k 2>/dev/null || true
echo "ci/windows.sh $mode passed in $((SECONDS - started)) s"
