#!/bin/sh
# make builds: the library, the CLI, the tests and the benchmarks built
# with other compilers and optimisation levels than the default (cc -O2),
# each with -Werror, so that a warning only one of them raises fails here
# and not on a user's machine; then the small test cases on the clang -O2
# build (another compiler's code for every kernel set). One "ok - " or
# "FAIL - " line per build, ending with "N passed, N failed".
set -u
root=${BUILDS_DIR:-build-builds}
mkdir -p "$root"
passed=0
failed=0

build() {
    name=$1
    shift
    if make -s -j2 BUILD="$root/$name" "$@" all test-build bench >"$root/$name.log" 2>&1; then
        echo "ok - build $name"
        passed=$((passed + 1))
    else
        tail -n 20 "$root/$name.log"
        echo "FAIL - build $name"
        failed=$((failed + 1))
    fi
}

build cc-O3 OPT=-O3
build cc-Os OPT=-Os
build cc-Og OPT=-Og
if command -v clang >/dev/null 2>&1; then
    build clang-O2 CC=clang
    build clang-O3 CC=clang OPT=-O3
    if [ -x "$root/clang-O2/sdunet" ]; then
        out=$(SDUNET_TEST_SMALL=1 BUILD="$root/clang-O2" SDUNET_BIN="$root/clang-O2/sdunet" \
            sh tests/run.sh "$root"/clang-O2/tests/test_* 2>&1)
        rc=$?
        printf '%s\n' "$out" | grep -E '^FAIL - ' || true
        line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -n 1)
        p=$(echo "${line:-0 passed, 1 failed}" | sed 's/ passed.*//')
        f=$(echo "${line:-0 passed, 1 failed}" | sed 's/.*passed, //; s/ failed.*//')
        [ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && f=1
        echo "clang-O2 small cases: $p passed, $f failed"
        passed=$((passed + p))
        failed=$((failed + f))
    fi
else
    echo "# no clang: its builds skipped"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
