#!/usr/bin/env bash
# Builds what the Rust crates need and tests them:
#   1. libdevicestream.so.1 (Tests/CABI/build-library.sh -> .build/cabi), when it is missing or
#      older than a Swift source, the header or Package.swift; skipped when DEVICESTREAM_LIB_DIR
#      names a library built elsewhere;
#   2. devstream (swift build -c release --product devstream), likewise; skipped when
#      DEVSTREAM names one;
#   3. the crates, their tests and examples (cargo, --offline: no crates.io dependencies);
#   4. the examples by role: the destination makes a key and listens on loopback, the source
#      migrates to it;
#   5. cargo test --offline, ending with its summary.
# Exits non-zero on any failure. Usage: Sources/rust/run.sh [cargo test arguments...]
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$PWD"
manifest="$repo/Sources/rust/Cargo.toml"

# Whether $1 is missing or older than a file the Swift build reads.
stale() {
    [[ ! -e "$1" ]] && return 0
    [[ -n "$(find Package.swift Sources -path Sources/rust -prune -o -type f -newer "$1" -print -quit)" ]]
}

if [[ -z "${DEVICESTREAM_LIB_DIR:-}" ]]; then
    if stale .build/cabi/lib/libdevicestream.so.1; then
        echo "== building libdevicestream.so.1 (Tests/CABI/build-library.sh)"
        bash Tests/CABI/build-library.sh .build/cabi >/dev/null
    fi
    export DEVICESTREAM_LIB_DIR="$repo/.build/cabi/lib"
fi
if [[ -z "${DEVSTREAM:-}" ]]; then
    if stale .build/release/devstream; then
        echo "== building devstream (swift build -c release --product devstream)"
        swift build -c release --product devstream >&2
        touch .build/release/devstream  # built (or up to date) now
    fi
    export DEVSTREAM="$repo/.build/release/devstream"
fi

echo "== cargo build --offline (crates, tests, examples)"
cargo build --offline --manifest-path "$manifest" --all-targets

echo "== examples: destination and source over loopback"
target="$(dirname "$manifest")/target/debug/examples"
work="$(mktemp -d)"
dest_pid=""
cleanup() {
    [[ -n "$dest_pid" ]] && kill "$dest_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkfifo "$work/dest.out"
"$target/destination" 127.0.0.1:0 "$work/migration.key" 32 >"$work/dest.out" &
dest_pid=$!
exec 3<"$work/dest.out"
read -r -t 30 first <&3 || { echo "the destination example did not start" >&2; exit 1; }
echo "destination: $first"
addr="${first#listening on }"
"$target/source" "$addr" "$work/migration.key" 32 | sed 's/^/source: /'
while read -r -t 30 line <&3; do echo "destination: $line"; done
wait "$dest_pid"
dest_pid=""
exec 3<&-

echo "== cargo test --offline"
log="$work/test.log"
status=0
cargo test --offline --no-fail-fast --manifest-path "$manifest" "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "== rust: %d passed, %d failed, %d ignored (cargo test --offline)\n", p, f, i }' "$log"
exit "$status"
