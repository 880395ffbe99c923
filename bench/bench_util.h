/* Timing and input helpers shared by the kernel benchmarks (bench_gemm.c,
 * gemm_vs_openblas.c). Header-only: each benchmark is one C file. */
#ifndef SD_BENCH_UTIL_H
#define SD_BENCH_UTIL_H

#include "engine/kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* Seconds. cpu_clock: this thread's CPU time, so time slices lost to other
 * processes on a shared machine do not count (one-thread runs); else wall
 * time (the pool's threads work while this one waits). */
static inline double bench_now(int cpu_clock)
{
    struct timespec ts;
    clock_gettime(cpu_clock ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* n floats uniform in [-1, 1) from a fixed LCG; exits on allocation failure. */
static inline float *bench_rnd(size_t n, unsigned seed)
{
    float *p = sd_alloc(sizeof(float) * (n ? n : 1));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    unsigned s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        p[i] = (float)((s >> 8) * (1.0 / 8388608.0) - 1.0);
    }
    return p;
}

#endif
