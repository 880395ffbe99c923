#!/bin/sh
# Builds and runs bench/gemm_vs_openblas.c: sdunet's sd_gemm vs OpenBLAS's
# cblas_sgemm at the SD1.5 UNet's GEMM shapes (no Makefile rule: one cc line).
#
#   sh bench/run_gemm_vs_openblas.sh            # 1 thread
#   THREADS="1 2" sh bench/run_gemm_vs_openblas.sh
#
# Needs libopenblas-dev (installed with apt-get when missing and root).
# Environment: THREADS (default 1), BUILD (default /tmp/bench-build: the
# library is built there with make BUILD=...), SD_BENCH_SECONDS, SD_BENCH_FILTER.
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-/tmp/bench-build}
THREADS=${THREADS:-1}
CC=${CC:-cc}
# OpenBLAS picks its kernels from the CPU unless these force a core type
# (some machines set them for old OpenBLAS builds): benchmark the kernels it would choose.
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS OMP_NUM_THREADS || true

if [ ! -f /usr/include/x86_64-linux-gnu/cblas.h ] && [ ! -f /usr/include/cblas.h ] &&
    ! ls /usr/include/*/cblas.h >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y libopenblas-dev >&2 || { apt-get update >&2 && apt-get install -y libopenblas-dev >&2; }
    else
        echo "run_gemm_vs_openblas: install libopenblas-dev" >&2
        exit 1
    fi
fi
make -s BUILD="$BUILD" "$BUILD/libsdunet.a" >&2
OBLAS_CFLAGS=$(pkg-config --cflags openblas 2>/dev/null || true)
OBLAS_LIBS=$(pkg-config --libs openblas 2>/dev/null || echo -lopenblas)
$CC -std=c11 -D_DEFAULT_SOURCE -D_POSIX_C_SOURCE=200809L -O2 -Wall -Wextra -Iinclude -Isrc \
    $OBLAS_CFLAGS bench/gemm_vs_openblas.c "$BUILD/libsdunet.a" $OBLAS_LIBS -lm -lpthread \
    -o "$BUILD/gemm_vs_openblas"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'); load $(cut -d' ' -f1-3 /proc/loadavg)"
for t in $THREADS; do
    "$BUILD/gemm_vs_openblas" "$t"
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
