/* host_probe: how much of this core's vector units one thread gets right now.
 *
 * On a shared machine the load average says nothing about the other
 * hyperthread of the core, which belongs to another tenant and shares its
 * FMA ports and its tile unit. A kernel running near the units' peak (as
 * sdunet's do) loses up to half its speed when that sibling computes,
 * while an engine held back by memory loses less, so a ratio measured then
 * is not the ratio on an idle core. run_peers.sh calls this before each
 * round so the log shows the conditions each round ran under.
 *
 * Two register-only loops, each for --ms milliseconds (default 100):
 * 512-bit FMAs (256-bit where the CPU has no AVX-512; none elsewhere) and
 * AMX bfloat16 tile products, each where sdunet itself would use the unit
 * (sd_kernels_select: CPUID, the OS state, the tile permission).
 * And one thread's read bandwidth from a 32 MiB buffer, which other
 * tenants' traffic in the shared L3 and memory lowers.
 * Prints one line: probe: fma_gflops=... amx_gflops=... read_gbs=...
 * (- where absent).
 * Compare a round's figures with the best the log shows: a unit whose
 * sibling is busy gives about half (bench/RESULTS.md has the figures of
 * its machine). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h" /* bench_now; sd_kernels_select via engine/kernels.h */

/* GB/s of one thread reading a 32 MiB buffer over and over for about `ms`
 * milliseconds (eight 16-byte sums, so the loads set the pace): past L2,
 * inside the L3 of a quiet server chip, about the size of the transformed
 * inputs a Winograd block streams; -1 without the memory. */
typedef unsigned long long probe_v4 __attribute__((vector_size(16)));
static double read_gbs(double ms)
{
    const size_t n = (32u << 20) / sizeof(probe_v4);
    probe_v4 *buf = malloc(n * sizeof *buf);
    if (!buf)
        return -1;
    memset(buf, 1, n * sizeof *buf);
    probe_v4 s0 = {0}, s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
    long passes = -1; /* the first pass warms the caches, untimed */
    double t0 = 0, t = 0;
    do {
        for (size_t i = 0; i + 8 <= n; i += 8) {
            s0 += buf[i], s1 += buf[i + 1], s2 += buf[i + 2], s3 += buf[i + 3];
            s4 += buf[i + 4], s5 += buf[i + 5], s6 += buf[i + 6], s7 += buf[i + 7];
        }
        if (++passes == 0)
            t0 = bench_now(0);
        t = bench_now(0) - t0;
    } while (passes < 1 || t * 1e3 < ms);
    free(buf);
    const probe_v4 sum = s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;
    volatile unsigned long long sink = sum[0] + sum[1];
    (void)sink;
    return passes * (double)(n * sizeof *buf) / t * 1e-9;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#include <stdint.h>

#define FMA_CHAINS 12 /* independent accumulators: more than ports x latency */

/* A function running `iters` rounds of FMA_CHAINS dependent-chain FMAs
 * on vectors VT of `lanes` floats; it returns a sum of the chains so the
 * work cannot be dropped. The chains start apart: identical ones would be
 * merged by the compiler. */
#define DEFINE_FMA_LOOP(name, isa, VT, lanes, set1, fmadd, add, storeu)                            \
    __attribute__((target(isa))) static float name(long iters)                                     \
    {                                                                                              \
        VT acc[FMA_CHAINS];                                                                        \
        const VT m = set1(0.999999f), c = set1(1e-7f);                                             \
        _Pragma("GCC unroll 12") for (int j = 0; j < FMA_CHAINS; j++) acc[j] =                     \
            set1(1.0f + 0.01f * j);                                                                \
        for (long i = 0; i < iters; i++) {                                                         \
            _Pragma("GCC unroll 12") for (int j = 0; j < FMA_CHAINS; j++) acc[j] =                 \
                fmadd(acc[j], m, c);                                                               \
        }                                                                                          \
        _Pragma("GCC unroll 12") for (int j = 1; j < FMA_CHAINS; j++) acc[0] =                     \
            add(acc[0], acc[j]);                                                                   \
        float out[lanes];                                                                          \
        storeu(out, acc[0]);                                                                       \
        return out[0] + out[lanes - 1];                                                            \
    }
DEFINE_FMA_LOOP(fma512, "avx512f", __m512, 16, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps,
                _mm512_storeu_ps)
DEFINE_FMA_LOOP(fma256, "avx2,fma", __m256, 8, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps,
                _mm256_storeu_ps)

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_cfg;

/* Four independent 16x16 accumulators fed by four operand tiles: each
 * product is 16 x 16 x 32 multiply-adds. */
__attribute__((target("amx-tile,amx-bf16"))) static void amx_loop(long iters)
{
    static _Alignas(64) uint16_t ops[4][512];
    /* Static: GCC drops stores to a local configuration that only
     * ldtilecfg reads. */
    static const _Alignas(64) tile_cfg cfg = {
        .palette = 1,
        .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
        .rows = {16, 16, 16, 16, 16, 16, 16, 16},
    };
    _tile_loadconfig(&cfg);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_loadd(4, ops[0], 64);
    _tile_loadd(5, ops[1], 64);
    _tile_loadd(6, ops[2], 64);
    _tile_loadd(7, ops[3], 64);
    for (long i = 0; i < iters; i++) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_release();
}

/* GFLOP/s of `fn` run for about `ms` milliseconds, `flops` per iteration. */
#define TIMED(call_with_n, flops_per_iter, ms, out)                                                \
    do {                                                                                           \
        long n_ = 1000;                                                                            \
        double t_;                                                                                 \
        for (;;) {                                                                                 \
            double t0_ = bench_now(0);                                                             \
            long n = n_;                                                                           \
            call_with_n;                                                                           \
            t_ = bench_now(0) - t0_;                                                               \
            if (t_ * 1e3 >= (ms) || n_ > (1L << 40))                                               \
                break;                                                                             \
            n_ *= t_ > 1e-4 ? (long)((ms)*1e-3 / t_ * 1.2) + 1 : 16;                               \
        }                                                                                          \
        (out) = (double)n_ * (flops_per_iter) / t_ * 1e-9;                                         \
    } while (0)

int main(int argc, char **argv)
{
    double ms = 100;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--ms") == 0 && i + 1 < argc) {
            ms = atof(argv[++i]);
        } else {
            fprintf(stderr, "usage: host_probe [--ms MILLISECONDS]\n");
            return strcmp(argv[i], "--help") == 0 ? 0 : 2;
        }
    }
    if (ms <= 0 || ms > 10000)
        ms = 100;
    volatile float sink = 0;
    double fma = -1, amx = -1;
    /* The library's own checks (CPUID, the OS's register state, the tile
     * permission): a unit counts where sdunet would use it. */
    if (sd_kernels_select("avx512"))
        TIMED(sink += fma512(n), FMA_CHAINS * 32.0, ms, fma);
    else if (sd_kernels_select("avx2"))
        TIMED(sink += fma256(n), FMA_CHAINS * 16.0, ms, fma);
    if (sd_kernels_select("amx"))
        TIMED(amx_loop(n), 4 * 16.0 * 16 * 32 * 2, ms, amx);
    (void)sink;
    const double gbs = read_gbs(ms);
    printf("probe: fma_gflops=");
    fma < 0 ? printf("-") : printf("%.0f", fma);
    printf(" amx_gflops=");
    amx < 0 ? printf("-") : printf("%.0f", amx);
    printf(" read_gbs=");
    gbs < 0 ? printf("-") : printf("%.1f", gbs);
    printf("\n");
    return 0;
}

#else /* not x86-64: nothing to probe */
int main(int argc, char **argv)
{
    const double ms = argc > 2 && strcmp(argv[1], "--ms") == 0 ? atof(argv[2]) : 100;
    printf("probe: fma_gflops=- amx_gflops=- read_gbs=%.1f\n", read_gbs(ms > 0 ? ms : 100));
    return 0;
}
#endif
