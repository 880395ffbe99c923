/* AVX-512 kernel set: a tall MR x 16 GEMM microkernel, one zmm register per
 * tile row. Compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma
 * -mf16c on x86-64 only and reached through sd_kernels_select after a CPUID
 * and XGETBV check (gemm.c).
 *
 * Each k step loads one 16-float B vector and issues MR FMAs whose A operand
 * is a broadcast straight from memory (vfmadd231ps zmm, zmm, m32{1to16}):
 * MR accumulators + the B vector out of 32 zmm registers. On cores with
 * full-width 512-bit FMA units (Zen 5) that is twice the FMA work per
 * instruction of the AVX2 kernel's 6x16 tile. The element-wise kernels
 * (softmax, SiLU, GELU) and the Winograd transforms come from the AVX2 set:
 * they do not depend on mr, and the Winograd code reaches the GEMM through
 * the kernel set it is given. */
#include "engine/kernels.h"

#include <immintrin.h>

#ifndef SD_AVX512_MR
#define SD_AVX512_MR 14
#endif
#define MR SD_AVX512_MR
#define NR 16

#if MR < 9 || MR > SD_MR_MAX
#error "SD_AVX512_MR must be 9..SD_MR_MAX (the A packer fills 16-lane columns)"
#endif

/* Tile row i of the last run, summed with the earlier runs in t (when prev)
 * and stored with sd_tile_store's order: (accumulate ? c : 0) + t + bias + g
 * + r, on the columns in `mask`. The residual row may be c itself: both
 * are loaded before the store. */
static inline void store_row_ep(float *c, const float *t, __m512 v, int prev, int accumulate,
                                __mmask16 mask, const float *bias, const float *g, const float *r)
{
    if (prev)
        v = _mm512_add_ps(_mm512_load_ps(t), v);
    if (accumulate)
        v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, c), v);
    if (bias)
        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, bias));
    if (g)
        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, g));
    if (r)
        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, r));
    _mm512_mask_storeu_ps(c, mask, v);
}

static void micro_avx512(int kc, const float *restrict a, const float *restrict b, float *c,
                         int ldc, int accumulate, int rows, int cols, const sd_tile_ep *te)
{
    /* A full tile without an epilogue is summed in C; otherwise the runs
     * before the last are summed in a local tile and the last run is
     * stored with masks (partial rows and columns) and the epilogue. */
    const int full = rows == MR && cols == NR, direct = full && !te;
    _Alignas(64) float t[MR * NR];
    float *dst = direct ? c : t;
    const size_t ld = direct ? (size_t)ldc : NR;
    const __mmask16 mask = (__mmask16)((1u << cols) - 1u);
    int add = direct && accumulate;
    if (full)
        for (int i = 0; i < MR; i++) {
            _mm_prefetch((const char *)(c + (size_t)i * ldc), _MM_HINT_T0);
            _mm_prefetch((const char *)(c + (size_t)i * ldc + NR - 1), _MM_HINT_T0);
        }

    /* Runs of SD_MICRO_SUB steps, summed from zero and added up (see gemm.c). */
    int k0 = 0;
    do {
        const int len = kc - k0 < SD_MICRO_SUB ? kc - k0 : SD_MICRO_SUB;
        __m512 acc[MR];
#pragma GCC unroll 32
        for (int i = 0; i < MR; i++)
            acc[i] = _mm512_setzero_ps();
#pragma GCC unroll 2
        for (int k = 0; k < len; k++) {
            const __m512 bv = _mm512_loadu_ps(b);
            _mm_prefetch((const char *)(b + 8 * NR), _MM_HINT_T0);
#pragma GCC unroll 32
            for (int i = 0; i < MR; i++)
                acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(a[i]), bv, acc[i]);
            a += MR;
            b += NR;
        }
        k0 += len;
        if (k0 >= kc && !direct) {
            const float *bias = te ? te->bias : NULL;
#pragma GCC unroll 32
            for (int i = 0; i < MR; i++)
                if (i < rows)
                    store_row_ep(c + (size_t)i * ldc, t + i * NR, acc[i], add, accumulate, mask,
                                 bias, te ? te->g[i] : NULL, te ? te->r[i] : NULL);
            return;
        }
#pragma GCC unroll 32
        for (int i = 0; i < MR; i++) {
            float *d = dst + (size_t)i * ld;
            __m512 v = acc[i];
            if (add)
                v = _mm512_add_ps(_mm512_loadu_ps(d), v);
            _mm512_storeu_ps(d, v);
        }
        add = 1;
    } while (k0 < kc);
}

/* MR-row A micro-panel, 8 k at a time: rows i and i + 8 share a zmm (low and
 * high 256 bits), an 8 x 8 transpose runs in both halves at once, and each
 * resulting vector (rows 0..15 at one k) is stored with an MR-lane mask.
 * The last len % 8 steps use masked loads, which read nothing past len. */
static void pack_avx512(const float *const *rows, int len, float *dst)
{
    const __mmask16 keep = (__mmask16)((1u << MR) - 1u);
    for (int k = 0; k < len; k += 8) {
        const int n = len - k < 8 ? len - k : 8;
        const __mmask8 lm = (__mmask8)((1u << n) - 1u);
        __m512 r[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            __m512 lo = _mm512_castps256_ps512(_mm256_maskz_loadu_ps(lm, rows[i] + k));
            r[i] = i + 8 < MR
                       ? _mm512_insertf32x8(lo, _mm256_maskz_loadu_ps(lm, rows[i + 8] + k), 1)
                       : _mm512_insertf32x8(lo, _mm256_setzero_ps(), 1);
        }
        /* Per 128-bit lane: rows 0-3 (4-7) of k and k + 4. */
        __m512 t0 = _mm512_unpacklo_ps(r[0], r[1]), t1 = _mm512_unpackhi_ps(r[0], r[1]);
        __m512 t2 = _mm512_unpacklo_ps(r[2], r[3]), t3 = _mm512_unpackhi_ps(r[2], r[3]);
        __m512 t4 = _mm512_unpacklo_ps(r[4], r[5]), t5 = _mm512_unpackhi_ps(r[4], r[5]);
        __m512 t6 = _mm512_unpacklo_ps(r[6], r[7]), t7 = _mm512_unpackhi_ps(r[6], r[7]);
        __m512 u[8];
        u[0] = _mm512_shuffle_ps(t0, t2, 0x44); /* rows 0-3: k0 | k4 (x2 halves) */
        u[1] = _mm512_shuffle_ps(t0, t2, 0xEE); /* k1 | k5 */
        u[2] = _mm512_shuffle_ps(t1, t3, 0x44); /* k2 | k6 */
        u[3] = _mm512_shuffle_ps(t1, t3, 0xEE); /* k3 | k7 */
        u[4] = _mm512_shuffle_ps(t4, t6, 0x44); /* rows 4-7 */
        u[5] = _mm512_shuffle_ps(t4, t6, 0xEE);
        u[6] = _mm512_shuffle_ps(t5, t7, 0x44);
        u[7] = _mm512_shuffle_ps(t5, t7, 0xEE);
        /* 128-bit lanes of u[q]: rows 0-3 at k=q, at k=q+4, rows 8-11 at
         * k=q, at k=q+4; u[q+4] the same for rows 4-7 and 12-15. Column
         * k=q is lanes (u[q].0, u[q+4].0, u[q].2, u[q+4].2), k=q+4 lanes
         * (u[q].1, u[q+4].1, u[q].3, u[q+4].3). */
        float *d = dst + (size_t)k * MR;
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++) {
            __m512 lo = _mm512_mask_shuffle_f32x4(u[q], 0xF0F0, u[q + 4], u[q + 4], 0xA0);
            __m512 hi = _mm512_mask_shuffle_f32x4(u[q + 4], 0x0F0F, u[q], u[q], 0xF5);
            if (q < n)
                _mm512_mask_storeu_ps(d + q * MR, keep, lo);
            if (q + 4 < n)
                _mm512_mask_storeu_ps(d + (q + 4) * MR, keep, hi);
        }
    }
}

const sd_kernels sd_kernels_avx512 = {
    .name = "avx512",
    .mr = MR,
    .nr = NR,
    .micro = micro_avx512,
    .pack_panel = pack_avx512,
    .softmax_cols = sd_softmax_cols_avx2,
    .silu = sd_silu_avx2,
    .gelu_mul = sd_gelu_mul_avx2,
    .winograd = sd_conv3x3_winograd_avx2,
};
