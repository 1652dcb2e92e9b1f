#!/usr/bin/env bash
# Builds every libFuzzer target (AddressSanitizer on, LeakSanitizer with it) and runs each for
# SECONDS (default 20), one after another, starting from the committed seeds in corpus/<target>/.
#
#   Tests/Fuzz/run.sh [SECONDS] [TARGET ...]      (targets: frame-header payloads preamble lz4
#                                                  vfio-stream extent-table specs; default all)
#
# A target fails on a crash, a trap (a broken invariant), a sanitizer or leak report, a hang
# (-timeout), or running out of memory; its reproducer is kept in .build/fuzz/artifacts/<target>/.
# New inputs go to .build/fuzz/corpus/<target>/, never to the committed seeds. Prints one line per
# target with its executions, and `N passed, M failed` last; exits non-zero if any failed.
#
# Release (-O) keeps every Swift safety check (bounds, overflow, precondition; the fuzzed modules
# use no `assert`) and runs the targets about twice as fast as debug.
# Needs what the main package needs (bash .ci/deps); nothing else.
set -uo pipefail
cd "$(dirname "$0")"

seconds=${1:-20}
shift || true
all=(frame-header payloads preamble lz4 vfio-stream extent-table specs)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
case "$seconds" in ''|*[!0-9]*) echo "usage: $0 [SECONDS] [TARGET ...]" >&2; exit 2 ;; esac

config=release
# swiftc keeps only the last -sanitize= it is given, and SwiftPM passes each --sanitize as its
# own flag in no fixed order: `--sanitize=fuzzer --sanitize=address` builds some modules without
# coverage and others without ASan. So: --sanitize=fuzzer (SwiftPM then links libFuzzer's main
# instead of the target's) and -Xswiftc -sanitize=fuzzer,address, which comes last and wins.
flags=(-c "$config" --sanitize=fuzzer -Xswiftc -sanitize=fuzzer,address)
mkdir -p .build/fuzz
echo "building the fuzz targets ($config, -sanitize=fuzzer,address)" >&2
if ! swift build "${flags[@]}" >.build/fuzz/build.log 2>&1; then
    grep -v "ld.gold: warning: Cannot export local symbol" .build/fuzz/build.log | tail -40 >&2
    echo "the build failed"
    echo "0 passed, ${#targets[@]} failed"
    exit 1
fi
bin=$(swift build "${flags[@]}" --show-bin-path)

# A trap goes straight to libFuzzer's handler (which prints the stack and keeps the input);
# Swift's own backtracer would read memory under ASan and add a report of its own.
export SWIFT_BACKTRACE=${SWIFT_BACKTRACE:-enable=no}

passed=0
failed=0
work=.build/fuzz
for target in "${targets[@]}"; do
    exe="$bin/fuzz-$target"
    if [ ! -x "$exe" ] || [ ! -d "corpus/$target" ]; then
        echo "FAIL $target: no executable $exe or no corpus/$target (the build failed, or no such target)"
        failed=$((failed + 1))
        continue
    fi
    mkdir -p "$work/corpus/$target" "$work/artifacts/$target"
    log="$work/$target.log"
    # -timeout: one input running over 10 s is a hang. -rss_limit_mb: a run growing past 2 GiB
    # is a leak or an unbounded allocation. Leak detection is on by default with ASan.
    "$exe" "$work/corpus/$target" "corpus/$target" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$work/artifacts/$target/" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if ! grep -qE "Loaded [0-9]+ modules +\([1-9][0-9]* inline 8-bit counters\)" "$log"; then
        echo "FAIL $target: the build has no coverage instrumentation (libFuzzer would fuzz blind): log $PWD/$log"
        failed=$((failed + 1))
    elif [ "$rc" -eq 0 ] && ! grep -qE "ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|Fatal error|SUMMARY: " "$log"; then
        echo "ok   $target: ${execs:-?} executions in ${seconds}s"
        passed=$((passed + 1))
    else
        echo "FAIL $target (exit $rc, ${execs:-?} executions): log $PWD/$log"
        grep -E "ERROR:|Fatal error|SUMMARY:|Test unit written to" "$log" | head -5 | sed 's/^/     /'
        failed=$((failed + 1))
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
