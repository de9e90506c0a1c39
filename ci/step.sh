# Sourced by the ci/ scripts: `step NAME CMD...` runs CMD and prints its time.
step() {
    local name=$1 t0=$SECONDS
    shift
    echo "==> $name"
    "$@"
    echo "<== $name: $((SECONDS - t0)) s"
}
