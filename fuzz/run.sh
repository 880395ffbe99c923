#!/bin/sh
# Runs libFuzzer harnesses for a fixed time each and reports them the way
# tests/run.sh reports test programs: "ok - fuzz_NAME: ..." or "FAIL - ...",
# then "N passed, N failed". Called by `make fuzz`:
#
#     sh fuzz/run.sh BUILD_DIR SECONDS JOBS HARNESS...
#
# Each harness reads its working corpus (BUILD_DIR/corpus/NAME, kept between
# runs so coverage accumulates), the seeds (BUILD_DIR/seeds/NAME) and the
# saved findings (fuzz/regressions/NAME); new inputs go to the working corpus
# and a failing input to BUILD_DIR/artifacts/NAME/. JOBS harnesses run at a
# time. Any finding fails: a crash, a sanitizer report, a leak, an input
# slower than 30 s, one allocation past 2 GB (a reader that believes a
# size field) or a process past 4 GB (the load harness's corpus of whole
# weight files alone takes most of 1 GB after a minute).
set -u
build=$1
seconds=$2
jobs=$3
shift 3

run_one() {
    h=$1
    mkdir -p "$build/corpus/$h" "$build/artifacts/$h" "$build/logs"
    set -- "$build/corpus/$h" "$build/seeds/$h"
    [ -d "fuzz/regressions/$h" ] && set -- "$@" "fuzz/regressions/$h"
    # libFuzzer cuts every input to -max_len, 1 MB by default once seeds are
    # large: the load harness's golden weight files must go in whole.
    max=4096
    for f in $(find "$@" -type f); do
        n=$(wc -c <"$f")
        [ "$n" -gt "$max" ] && max=$n
    done
    "$build/fuzz_$h" -max_total_time="$seconds" -max_len="$max" -timeout=30 \
        -rss_limit_mb=4096 -malloc_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$build/artifacts/$h/" "$@" >"$build/logs/$h.log" 2>&1
    echo $? >"$build/logs/$h.rc"
}

i=0
for h in "$@"; do
    rm -f "$build/logs/$h.rc"
    run_one "$h" &
    i=$((i + 1))
    if [ $((i % jobs)) -eq 0 ]; then
        wait
    fi
done
wait

passed=0
failed=0
for h in "$@"; do
    log="$build/logs/$h.log"
    rc=$(cat "$build/logs/$h.rc" 2>/dev/null || echo 1)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    secs=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
    if [ "$rc" -eq 0 ]; then
        echo "ok - fuzz_$h: ${runs:-?} runs in $seconds s (${secs:-?}/s, ${cov:-cov: ?})"
        passed=$((passed + 1))
    else
        echo "FAIL - fuzz_$h: exit status $rc; input in $build/artifacts/$h/, log $log"
        grep -E 'ERROR|SUMMARY|runtime error|Test unit written|==[0-9]+==' "$log" | head -n 20
        failed=$((failed + 1))
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
