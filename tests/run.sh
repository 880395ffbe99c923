#!/bin/sh
# Runs each test program given on the command line, shows its output and
# ends with the totals line "N passed, N failed". A program that crashes or
# exits non-zero without reporting a failure counts as one failed test.
passed=0
failed=0
for bin in "$@"; do
    name=$(basename "$bin")
    echo "== $name"
    out=$("$bin" 2>&1)
    rc=$?
    printf '%s\n' "$out"
    p=$(printf '%s\n' "$out" | grep -c '^ok - ')
    f=$(printf '%s\n' "$out" | grep -c '^FAIL - ')
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL - $name exited with status $rc"
        f=1
    fi
    passed=$((passed + p))
    failed=$((failed + f))
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
