#!/usr/bin/env bash
# The C ABI's tests: builds libdevicestream.so.1 (Tests/CABI/build-library.sh into .build/cabi)
# and the devstream CLI (debug, unless DEVSTREAM names one), compiles the C examples and tests
# with cc -Wall -Werror against the header and the .so only, runs them, and ends with
# "N passed, M failed" (exit status 1 on any failure).
#
# Usage: Tests/CABI/run.sh [SESSIONS]     SESSIONS: for the many-sessions test (default 1000)
# Needs what `bash .ci/deps` installs (cc, libxxhash-dev, openssl) and a Swift toolchain to build.
set -uo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
sessions="${1:-1000}"
lib_dir="$root/.build/cabi"
bin="$lib_dir/bin"
src="$root/Tests/CABI"
work="$(mktemp -d /tmp/ds-cabi-XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT

passed=0 failed=0 failures=()
pass() { passed=$((passed + 1)); echo "PASS $1"; }
fail() { failed=$((failed + 1)); failures+=("$1"); echo "FAIL $1${2:+: $2}"; }

step() { echo; echo "== $*"; }

# ---- build -------------------------------------------------------------------------------------
step "library (Tests/CABI/build-library.sh .build/cabi)"
if ! Tests/CABI/build-library.sh "$lib_dir" > "$work/build.log" 2>&1; then
    tail -30 "$work/build.log"
    fail "build-library" "see the log above"
    echo; echo "$passed passed, $failed failed"; exit 1
fi
tail -1 "$work/build.log"

devstream="${DEVSTREAM:-}"
if [ -z "$devstream" ]; then
    step "devstream (swift build --product devstream)"
    # Debug: .ci/run builds it already, and a release build without build-library.sh's flags
    # would recompile every release module (and the next library build would again).
    if ! swift build --product devstream > "$work/devstream.log" 2>&1; then
        tail -30 "$work/devstream.log"
        fail "build-devstream" "see the log above"
        echo; echo "$passed passed, $failed failed"; exit 1
    fi
    devstream="$(swift build --show-bin-path)/devstream"
fi
echo "devstream: $devstream"

step "compile (cc -Wall -Wextra -Werror, against $lib_dir/include and $lib_dir/lib only)"
mkdir -p "$bin"
cflags=(-std=gnu11 -O2 -g -Wall -Wextra -Werror -I "$lib_dir/include" -I "$src/examples")
ldflags=(-L "$lib_dir/lib" -ldevicestream "-Wl,-rpath,$lib_dir/lib" -lxxhash -lpthread)
compiled=1
for prog in source destination tests; do
    file="$src/examples/$prog.c"
    [ "$prog" = tests ] && file="$src/tests.c"
    if cc "${cflags[@]}" "$file" "$src/examples/memdev.c" -o "$bin/$prog" "${ldflags[@]}" 2> "$work/cc-$prog.log"; then
        pass "compile $prog"
    else
        cat "$work/cc-$prog.log"
        fail "compile $prog"
        compiled=0
    fi
done
# The pkg-config file, as a VMM's build would use it.
if command -v pkg-config > /dev/null; then
    if cc "${cflags[@]}" "$src/examples/source.c" "$src/examples/memdev.c" -o "$work/source-pc" \
            $(PKG_CONFIG_PATH="$lib_dir/lib/pkgconfig" pkg-config --cflags --libs devicestream) -lxxhash -lpthread 2> "$work/cc-pc.log"; then
        pass "compile with pkg-config"
    else
        cat "$work/cc-pc.log"; fail "compile with pkg-config"
    fi
fi
if [ "$compiled" = 0 ]; then echo; echo "$passed passed, $failed failed"; exit 1; fi

# ---- the library file --------------------------------------------------------------------------
step "library file"
so="$lib_dir/lib/libdevicestream.so.1"
size=$(stat -c %s "$so")
soname=$(readelf -d "$so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
exported=$(readelf --dyn-syms -W "$so" | awk '($5=="GLOBAL" || $5=="WEAK") && $7!="UND" && $8!="DEVICESTREAM_1" {print $8}' | sed 's/@.*//' | sort -u)
declared=$(grep -o '\bds_[a-z0-9_]*(' "$lib_dir/include/devicestream.h" | tr -d '(' | sort -u)
echo "size $size bytes, SONAME $soname, $(echo "$exported" | wc -l) exported symbols, $(echo "$declared" | wc -l) declared functions"
if [ "$size" -le $((16 << 20)) ] && [ "$soname" = libdevicestream.so.1 ] && [ "$exported" = "$declared" ]; then
    pass "library file (stripped size <= 16 MiB, SONAME, exports exactly the header's functions)"
else
    diff <(echo "$declared") <(echo "$exported") | sed 's/^/  /'
    fail "library file" "size $size, SONAME '$soname', or the exports differ from the header (< declared only, > exported only)"
fi
# No Swift toolchain needed: nothing from libswift*, and a run with an empty environment.
if ldd "$so" "$bin/tests" | grep -q 'libswift'; then
    ldd "$bin/tests" | sed 's/^/  /'
    fail "no Swift runtime needed" "ldd names a libswift*.so"
elif env -i PATH=/usr/bin:/bin "$bin/tests" api > "$work/envi.log" 2>&1; then
    pass "no Swift runtime needed (ldd: no libswift*.so; env -i PATH=/usr/bin:/bin tests api)"
else
    cat "$work/envi.log"; fail "no Swift runtime needed" "tests api failed under env -i"
fi

# ---- the examples, as two processes each -------------------------------------------------------
# Starts "$@" in the background with stdout to $out; waits for its "listening on HOST:PORT" line.
start_listener() {
    local out="$1"; shift
    "$@" > "$out" 2> "$out.err" &
    pids+=($!)
    listener_pid=$!
    listener_addr=""
    for _ in $(seq 300); do
        listener_addr=$(sed -n 's/^listening on //p' "$out" | head -1)
        [ -n "$listener_addr" ] && return 0
        kill -0 "$listener_pid" 2> /dev/null || break
        sleep 0.1
    done
    return 1
}

step "example: source.c -> destination.c (a key the destination makes)"
d="$work/ex-c2c"; mkdir -p "$d"
if start_listener "$d/dst.out" timeout 60 "$bin/destination" --key-file "$d/key" --size 32M; then
    mode=$(stat -c %a "$d/key")
    timeout 60 "$bin/source" --connect "$listener_addr" --key-file "$d/key" --size 32M > "$d/src.out" 2>&1
    src_rc=$?
    wait "$listener_pid"; dst_rc=$?
    sed 's/^/  source: /' "$d/src.out"; sed 's/^/  destination: /' "$d/dst.out" "$d/dst.out.err"
    if [ $src_rc = 0 ] && [ $dst_rc = 0 ] && [ "$mode" = 600 ] && grep -qx 'digests equal' "$d/src.out" && grep -qx 'digests equal' "$d/dst.out"; then
        pass "example C -> C"
    else
        fail "example C -> C" "source $src_rc, destination $dst_rc, key mode $mode"
    fi
else
    cat "$d/dst.out" "$d/dst.out.err"; fail "example C -> C" "the destination did not listen"
fi

step "example: source.c -> devstream receive --device sim:size=32M"
d="$work/ex-sim"; mkdir -p "$d"
(umask 077; openssl rand -hex 32 > "$d/key")
if start_listener "$d/dst.out" timeout 60 "$devstream" receive --listen 127.0.0.1:0 --device sim:size=32M --psk-file "$d/key" --json; then
    timeout 60 "$bin/source" --connect "$listener_addr" --key-file "$d/key" --size 32M > "$d/src.out" 2>&1
    src_rc=$?
    wait "$listener_pid"; dst_rc=$?
    sed 's/^/  source: /' "$d/src.out"; sed 's/^/  devstream: /' "$d/dst.out" "$d/dst.out.err"
    if [ $src_rc = 0 ] && [ $dst_rc = 0 ] && grep -qx 'digests equal' "$d/src.out" && grep -q '"status":"completed"' "$d/dst.out"; then
        pass "example C -> devstream receive"
    else
        fail "example C -> devstream receive" "source $src_rc, devstream $dst_rc"
    fi
else
    cat "$d/dst.out" "$d/dst.out.err"; fail "example C -> devstream receive" "devstream receive did not listen"
fi

# ---- the tests ---------------------------------------------------------------------------------
run_test() {
    local name="$1"; shift
    step "tests $name $*"
    local t0=$SECONDS
    timeout 300 "$bin/tests" "$name" "$@" > "$work/t.log" 2>&1
    local rc=$?
    if [ $rc = 0 ]; then
        grep -v '^PASS ' "$work/t.log" | sed 's/^/  /'
        pass "$name ($((SECONDS - t0)) s)"
    else
        sed 's/^/  /' "$work/t.log"
        fail "$name" "exit status $rc"
    fi
}
run_test api
run_test c2c
run_test sim "$devstream"
run_test cancel
run_test cancel-thread
run_test switchover
run_test hold
run_test hold-timeout
run_test wrongkey
run_test warnings
run_test structs
run_test sessions "$sessions" 4

echo
[ "$failed" -gt 0 ] && printf 'failed: %s\n' "${failures[@]}"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
