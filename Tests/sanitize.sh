#!/usr/bin/env bash
# Builds the package and its tests under a sanitizer and runs them; fails on any failed test and
# on any sanitizer report, from the test process or from a program a test runs (devstream).
#
#   Tests/sanitize.sh [thread|address] [FILTER]
#
#   thread   ThreadSanitizer, build in .build-tsan (the default)
#   address  AddressSanitizer (with LeakSanitizer), build in .build-asan
#   FILTER   passed to `swift test --filter` (e.g. 'DSTransportTests|EndToEndTests'); none: all
#
# Reports go to files (TSAN_OPTIONS / ASAN_OPTIONS log_path) under the build directory, so a
# report from a child process counts even when the test only looked at its exit status; they are
# printed at the end. Environment: SANITIZE_JOBS (build jobs), SANITIZE_KEEP_GOING=1 (go on after
# the first report, the default; 0 stops the process at its first).
#
# ThreadSanitizer runs with Tests/sanitizers/swift-mutex-tsan.c preloaded: it tells TSan about
# the lock hand-over inside Swift's `Mutex` (see that file); without it every contended
# `Mutex.withLock` is a false race. Nothing is suppressed under TSan. Under ASan, LeakSanitizer
# uses Tests/sanitizers/lsan.supp: two entries, both outside the project, each with its reason.
set -euo pipefail
cd "$(dirname "$0")/.."

kind=${1:-thread}
filter=${2:-}
case "$kind" in
    thread) scratch=.build-tsan ;;
    address) scratch=.build-asan ;;
    *) echo "usage: Tests/sanitize.sh [thread|address] [FILTER]" >&2; exit 2 ;;
esac

[ -f /usr/include/liburing.h ] || bash .ci/deps

jobs=()
[ -n "${SANITIZE_JOBS:-}" ] && jobs=(--jobs "$SANITIZE_JOBS")
start=$(date +%s)
echo "== building under the $kind sanitizer in $scratch"
swift build --build-tests --sanitize="$kind" --scratch-path "$scratch" "${jobs[@]}"
built=$(date +%s)

reports="$PWD/$scratch/sanitizer-reports"
rm -rf "$reports"
mkdir -p "$reports"
halt=$([ "${SANITIZE_KEEP_GOING:-1}" = 1 ] && echo 0 || echo 1)
# allocator_may_return_null=1: an impossible allocation returns NULL, as glibc's does, instead of
# killing the process; the library turns that into ENOMEM, and RingTests checks exactly that.
common="log_path=$reports/@KIND@ halt_on_error=$halt allocator_may_return_null=1"

if [ "$kind" = thread ]; then
    # The Mutex shim, and proof that it is needed, that it works and that it hides no real race.
    shim="$PWD/$scratch/swift-mutex-tsan.so"
    check="$PWD/$scratch/mutex-check"
    lib="$(dirname "$(readlink -f "$(command -v swift)")")/../lib/swift/linux/libswiftSynchronization.so"
    exported=$(nm -D --defined-only "$lib")
    for sym in '$s15Synchronization12_MutexHandleV9_lockSlowyys6UInt32VF' \
               '$s15Synchronization12_MutexHandleV11_unlockSlowyyF' \
               '$s15Synchronization12_MutexHandleV12_tryLockSlowSbyF'; do
        if ! grep -qF "$sym" <<<"$exported"; then
            echo "sanitize.sh: $lib no longer exports $sym: update Tests/sanitizers/swift-mutex-tsan.c for this Swift" >&2
            exit 1
        fi
    done
    if [ ! -x "$check" ] || [ Tests/sanitizers/mutex-check.swift -nt "$check" ] || [ Tests/sanitizers/swift-mutex-tsan.c -nt "$shim" ]; then
        clang -O1 -fPIC -shared Tests/sanitizers/swift-mutex-tsan.c -o "$shim"
        swiftc -sanitize=thread -g Tests/sanitizers/mutex-check.swift -o "$check"
    fi
    count() { grep -c 'WARNING: ThreadSanitizer' || true; }
    without=$(TSAN_OPTIONS=exitcode=0 "$check" 2>&1 | count)
    with=$(TSAN_OPTIONS=exitcode=0 LD_PRELOAD="$shim" "$check" 2>&1 | count)
    # TSan may miss a race in one run (it found this one in every one of 10 runs here): 3 tries.
    real=0
    for _ in 1 2 3; do
        real=$(TSAN_OPTIONS=exitcode=0 LD_PRELOAD="$shim" "$check" race 2>&1 | count)
        [ "$real" != 0 ] && break
    done
    echo "== Mutex shim check: correct code: $without report(s) without the shim, $with with it; a real race with it: $real report(s)"
    if [ "$with" != 0 ] || [ "$real" = 0 ]; then
        echo "sanitize.sh: the Mutex shim does not work as intended here (see Tests/sanitizers/swift-mutex-tsan.c)" >&2
        exit 1
    fi
    export LD_PRELOAD="$shim${LD_PRELOAD:+:$LD_PRELOAD}"
    export TSAN_OPTIONS="${common/@KIND@/tsan} second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
else
    export ASAN_OPTIONS="${common/@KIND@/asan} detect_leaks=1 ${ASAN_OPTIONS:-}"
    # Leaks of code outside the project only, each entry with its reason.
    export LSAN_OPTIONS="suppressions=$PWD/Tests/sanitizers/lsan.supp print_suppressions=0 ${LSAN_OPTIONS:-}"
fi

log="$PWD/$scratch/sanitize-$kind.log"
echo "== testing${filter:+ ($filter)}; output in $log"
set +e
swift test --skip-build --sanitize="$kind" --scratch-path "$scratch" ${filter:+--filter "$filter"} 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
done_at=$(date +%s)

# A report is an error or a race; a file with only notes (ASan's "failed to allocate" for the
# impossible allocations a test makes on purpose) is shown but fails nothing.
pattern='ERROR: (Address|Leak|Thread)Sanitizer|WARNING: ThreadSanitizer|^SUMMARY: '
mapfile -t with_reports < <(grep -lE "$pattern" "$reports"/* 2>/dev/null || true)
mapfile -t notes < <(grep -LE "$pattern" "$reports"/* 2>/dev/null || true)
found=${#with_reports[@]}
echo
echo "== sanitize.sh $kind${filter:+ '$filter'}: build $((built - start)) s, tests $((done_at - built)) s"
for f in "${notes[@]}"; do
    echo "== notes (not reports) from $(basename "$f"):"
    sed 's/^/   /' "$f"
done
if [ "$found" -gt 0 ]; then
    echo "== $found process(es) wrote sanitizer reports:"
    for f in "${with_reports[@]}"; do
        echo "---- $f"
        cat "$f"
    done
    grep -h '^SUMMARY:' "${with_reports[@]}" | sort | uniq -c | sort -rn
fi
# Tests (a parameterized test counts once), not the run's own summary line.
passed=$(grep -E '^✔ Test .* passed' "$log" | grep -vc '^✔ Test run with' || true)
failed=$(grep -E '^✘ Test .* failed' "$log" | grep -vc '^✘ Test run with' || true)
grep -E 'Test run with .* tests' "$log" | tail -1 || true
echo "$passed passed, $failed failed, $found process(es) with sanitizer reports"
[ "$status" -eq 0 ] && [ "$found" -eq 0 ]
