#!/bin/sh
# make builds: the library, the CLI, the tests and the benchmarks built
# with other compilers and optimisation levels than the default (cc -O2),
# each with -Werror, so that a warning only one of them raises fails here
# and not on a user's machine; then the small test cases on the clang -O2
# build (another compiler's code for every kernel set). Each build is one
# check, a script in $root/checks that prints "ok - " or "FAIL - ", run
# with the test programs by tests/run.sh, which counts them all and ends
# with "N passed, N failed".
set -u
root=${BUILDS_DIR:-build-builds}
mkdir -p "$root/checks"

configs="cc-O3:OPT=-O3 cc-Os:OPT=-Os cc-Og:OPT=-Og"
if command -v clang >/dev/null 2>&1; then
    configs="$configs clang-O2:CC=clang clang-O3:CC=clang:OPT=-O3"
else
    echo "# no clang: its builds and the clang test run are left out"
fi

checks=""
for c in $configs; do
    name=${c%%:*}
    vars=$(echo "${c#*:}" | tr : ' ')
    f="$root/checks/build-$name"
    printf '%s\n' '#!/bin/sh' \
        "if make -s -j2 BUILD='$root/$name' $vars all test-build bench >'$root/$name.log' 2>&1; then" \
        "    echo 'ok - build $name'" \
        'else' \
        "    tail -n 20 '$root/$name.log'" \
        "    echo 'FAIL - build $name'" \
        'fi' >"$f"
    chmod +x "$f"
    checks="$checks $f"
done

tests=""
case "$configs" in
*clang-O2*)
    for t in tests/test_*.c; do
        tests="$tests $root/clang-O2/tests/$(basename "$t" .c)"
    done
    ;;
esac

# The checks run first, so the clang test programs exist when their turn comes.
SDUNET_TEST_SMALL=1 BUILD="$root/clang-O2" SDUNET_BIN="$root/clang-O2/sdunet" \
    exec sh tests/run.sh $checks $tests
