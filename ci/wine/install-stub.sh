#!/usr/bin/env bash
# Builds ci/wine/bcryptprimitives.dll with mingw and installs it into the Wine
# prefix ($WINEPREFIX, default ~/.wine), creating the prefix if needed.
# Idempotent. See bcryptprimitives.c for why this exists.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix="${WINEPREFIX:-$HOME/.wine}"
out="${CARGO_TARGET_DIR:-$here/../../target}/wine-stub"
export WINEDEBUG="${WINEDEBUG:--all}"

mkdir -p "$out"
x86_64-w64-mingw32-gcc -shared -O2 -s -Wall -Werror \
    -o "$out/bcryptprimitives.dll" \
    "$here/bcryptprimitives.c" "$here/bcryptprimitives.def" -ladvapi32

if [[ ! -f "$prefix/system.reg" ]]; then
    # First use: create the prefix (takes a while) and wait until it is ready.
    wineboot -i
    wineserver -w
fi
sys32="$prefix/drive_c/windows/system32"
if ! cmp -s "$out/bcryptprimitives.dll" "$sys32/bcryptprimitives.dll"; then
    cp "$out/bcryptprimitives.dll" "$sys32/bcryptprimitives.dll"
fi
echo "installed $sys32/bcryptprimitives.dll"
