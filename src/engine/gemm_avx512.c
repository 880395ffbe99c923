/* AVX-512 kernel set: a tall 16 x 16 GEMM microkernel, one zmm register per
 * tile row. Compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma
 * -mf16c on x86-64 only and reached through sd_kernels_select after a CPUID
 * and XGETBV check (gemm.c).
 *
 * Each k step loads one 16-float B vector and issues MR FMAs whose A operand
 * is a broadcast straight from memory (vfmadd231ps zmm, zmm, m32{1to16}):
 * MR accumulators + the B vector out of 32 zmm registers. On cores with
 * full-width 512-bit FMA units (Zen 5) that is twice the FMA work per
 * instruction of the AVX2 kernel's 6x16 tile. The element-wise kernels
 * (softmax, SiLU, GELU) are the AVX2 set's on 16 lanes; the Winograd
 * convolution is its AVX-512 build (winograd_avx512.c: 16-channel
 * transforms; it reaches the GEMM through the kernel set it is given, any
 * mr). */
#include "engine/kernels.h"

#include <immintrin.h>
#include <stdint.h>

/* Tile rows (9..16; -DSD_AVX512_MR=n to measure others). 16 measured best
 * on Zen 5: 12 and 14 ran the GEMMs about as fast, but the UNet's Winograd
 * tile counts and token counts are powers of two, which 16-row panels
 * split with no padding rows (the 3x3 convolutions ran 5-15% faster). */
#ifndef SD_AVX512_MR
#define SD_AVX512_MR 16
#endif
#define MR SD_AVX512_MR
#define NR 16
#define PACK_AHEAD 64 /* floats: 256 bytes, 8 steps of pack_avx512 ahead */

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

/* acc[i] = the sum over k < len of a[k*MR + i] * b[k*NR + 0..15], i < R
 * (a constant once inlined); with prefetch_b, B is fetched 8 steps ahead.
 * The run every 16-column tile of this set is made of. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void
fma_run(const int R, int len, const float *restrict a, const float *restrict b, __m512 *acc,
        const int prefetch_b)
{
#pragma GCC unroll 32
    for (int i = 0; i < R; i++)
        acc[i] = _mm512_setzero_ps();
#pragma GCC unroll 2
    for (int k = 0; k < len; k++) {
        const __m512 bv = _mm512_loadu_ps(b);
        if (prefetch_b)
            _mm_prefetch((const char *)(b + 8 * NR), _MM_HINT_T0);
#pragma GCC unroll 32
        for (int i = 0; i < R; i++)
            acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(a[i]), bv, acc[i]);
        a += MR;
        b += NR;
    }
}

/* The tile's first R rows (R = 8 or MR, a constant once inlined): a
 * partial tile of rows <= 8 (attention's 40-channel heads end in one, as
 * do short GEMMs) runs half the FMAs. The runs of each element are the
 * same whatever R is; a tile of exactly R rows and NR columns without an
 * epilogue adds them into C one by one, as a full MR-row tile does. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void
micro_rows(const int R, int kc, const float *restrict a, const float *restrict b, float *c, int ldc,
           int accumulate, int rows, int cols, const sd_tile_ep *te)
{
    /* A full tile without an epilogue is summed in C; otherwise the runs
     * before the last are summed in a local tile and the last run is
     * stored with masks (partial rows and columns) and the epilogue. */
    const int full = rows == R && cols == NR, direct = full && !te;
    _Alignas(64) float t[MR * NR];
    float *dst = direct ? c : t;
    const size_t ld = direct ? (size_t)ldc : NR;
    const __mmask16 mask = (__mmask16)((1u << cols) - 1u);
    int add = direct && accumulate;
    if (full)
        for (int i = 0; i < R; i++) {
            _mm_prefetch((const char *)(c + (size_t)i * ldc), _MM_HINT_T0);
            _mm_prefetch((const char *)(c + (size_t)i * ldc + NR - 1), _MM_HINT_T0);
        }

    /* Runs of SD_MICRO_SUB steps, summed from zero and added up (see gemm.c). */
    int k0 = 0;
    do {
        const int len = kc - k0 < SD_MICRO_SUB ? kc - k0 : SD_MICRO_SUB;
        __m512 acc[MR];
        fma_run(R, len, a, b, acc, 1);
        a += (size_t)len * MR;
        b += (size_t)len * NR;
        k0 += len;
        if (k0 >= kc && !direct) {
            const float *bias = te ? te->bias : NULL;
#pragma GCC unroll 32
            for (int i = 0; i < R; i++)
                if (i < rows)
                    store_row_ep(c + (size_t)i * ldc, t + i * NR, acc[i], add, accumulate, mask,
                                 bias, te ? te->g[i] : NULL, te ? te->r[i] : NULL);
            return;
        }
#pragma GCC unroll 32
        for (int i = 0; i < R; i++) {
            float *d = dst + (size_t)i * ld;
            __m512 v = acc[i];
            if (add)
                v = _mm512_add_ps(_mm512_loadu_ps(d), v);
            _mm512_storeu_ps(d, v);
        }
        add = 1;
    } while (k0 < kc);
}

static void micro_avx512(int kc, const float *restrict a, const float *restrict b, float *c,
                         int ldc, int accumulate, int rows, int cols, const sd_tile_ep *te)
{
    if (rows <= 8)
        micro_rows(8, kc, a, b, c, ldc, accumulate, rows, cols, te);
    else
        micro_rows(MR, kc, a, b, c, ldc, accumulate, rows, cols, te);
}

#if MR == 16 /* micro2's halves are 8 rows */
/* acc[2i + h] = the sum over k < len of a[k*MR + i] * b_h[k*NR + 0..15]
 * for i < 8 and the B panels b_0, b_1: 16 accumulators, two B vectors and
 * one A broadcast per pair of FMAs. The run of micro2's half tiles and of
 * the paired attention scores. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void
fma_pair8(int len, const float *restrict a, const float *restrict b0, const float *restrict b1,
          __m512 *acc)
{
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++)
        acc[i] = _mm512_setzero_ps();
#pragma GCC unroll 2
    for (int k = 0; k < len; k++) {
        const __m512 x = _mm512_loadu_ps(b0), y = _mm512_loadu_ps(b1);
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            const __m512 av = _mm512_set1_ps(a[i]);
            acc[2 * i] = _mm512_fmadd_ps(av, x, acc[2 * i]);
            acc[2 * i + 1] = _mm512_fmadd_ps(av, y, acc[2 * i + 1]);
        }
        a += MR;
        b0 += NR;
        b1 += NR;
    }
}

/* One run of len k steps of rows [r0, r0 + 8) of a micro2 tile (nrows <= 8
 * of them real) against two B panels: 16 accumulators, two B vectors and
 * one A broadcast per pair of FMAs. Per panel h the run is summed from
 * zero and then added as micro_rows adds it: into C when the panel's tile
 * is summed there (direct), else into the local tile t[h], and on the last
 * run of a non-direct tile stored with the epilogue. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void
pair_run8(int len, const float *restrict a, const float *restrict b0, const float *restrict b1,
          float *const c[2], int ldc, float (*t)[MR * NR], int r0, int nrows, const int add[2],
          int accumulate, int last, const int direct[2], const __mmask16 mask[2],
          const sd_tile_ep *te)
{
    __m512 acc[16];
    fma_pair8(len, a, b0, b1, acc);
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
        if (last && !direct[h]) {
            const sd_tile_ep *e = te ? te + h : NULL;
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++)
                if (i < nrows)
                    store_row_ep(c[h] + (size_t)(r0 + i) * ldc, t[h] + (r0 + i) * NR,
                                 acc[2 * i + h], add[h], accumulate, mask[h], e ? e->bias : NULL,
                                 e ? e->g[r0 + i] : NULL, e ? e->r[r0 + i] : NULL);
            continue;
        }
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            float *d = direct[h] ? c[h] + (size_t)(r0 + i) * ldc : t[h] + (r0 + i) * NR;
            __m512 v = acc[2 * i + h];
            if (add[h])
                v = _mm512_add_ps(_mm512_loadu_ps(d), v);
            _mm512_storeu_ps(d, v);
        }
    }
}

/* Both 8-row halves of the tile run over each SD_MICRO_SUB run of k before
 * the next, so the run's B slabs (2 x 64 x 16 floats) are read from L1 by
 * the second half. */
static void micro2_avx512(int kc, const float *restrict a, const float *const b[2],
                          float *const c[2], int ldc, int accumulate, int rows, const int cols[2],
                          const sd_tile_ep *te)
{
    /* micro_avx512 runs R = 8 rows for rows <= 8, else MR; its tile is
     * full (summed in C) at rows == R with 16 columns and no epilogue. */
    const int R = rows <= 8 ? 8 : MR;
    const int direct[2] = {rows == R && cols[0] == NR && !te, rows == R && cols[1] == NR && !te};
    const __mmask16 mask[2] = {(__mmask16)((1u << cols[0]) - 1u),
                               (__mmask16)((1u << cols[1]) - 1u)};
    _Alignas(64) float t[2][MR * NR];
    int add[2] = {direct[0] && accumulate, direct[1] && accumulate};
    for (int h = 0; h < 2; h++)
        if (direct[h])
            for (int i = 0; i < rows; i++)
                _mm_prefetch((const char *)(c[h] + (size_t)i * ldc), _MM_HINT_T0);
    int k0 = 0;
    do {
        const int len = kc - k0 < SD_MICRO_SUB ? kc - k0 : SD_MICRO_SUB, last = k0 + len >= kc;
        for (int r0 = 0; r0 < rows; r0 += 8)
            pair_run8(len, a + (size_t)k0 * MR + r0, b[0] + (size_t)k0 * NR, b[1] + (size_t)k0 * NR,
                      c, ldc, t, r0, rows - r0 < 8 ? rows - r0 : 8, add, accumulate, last, direct,
                      mask, te);
        add[0] = add[1] = 1;
        k0 += len;
    } while (k0 < kc);
}
#endif

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
        /* Fetch each row PACK_AHEAD floats ahead: the 16 row streams (A
         * rows are lda apart, often in L3 or memory for the UNet's 4096-token
         * activations) are not all followed by the hardware prefetcher;
         * measured 3-8% on the GEMMs with K >= 1280. The addresses are
         * formed as integers: they may lie past a row's end, and a prefetch
         * does not fault. */
        if (k % 16 == 0 && k + PACK_AHEAD < len)
            for (int i = 0; i < MR; i++)
                _mm_prefetch((const char *)((uintptr_t)rows[i] + sizeof(float) * (k + PACK_AHEAD)),
                             _MM_HINT_T0);
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

/* ---- element-wise kernels: the AVX2 set's methods on 16 lanes (the same
 * operations per lane, so the same results) ---- */

/* e^x for x in [-87.33, 88], as exp_core_avx2 (gemm_avx2.c): Cody-Waite
 * reduction, degree-6 polynomial, 2^n built in the exponent field. */
static inline __m512 exp_core_avx512(__m512 x)
{
    const __m512 magic = _mm512_set1_ps(12583039.0f); /* 1.5 * 2^23 + 127 */
    __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), magic);
    __m512 n = _mm512_sub_ps(t, magic);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.3836845755577087e-3f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.374815806746483e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166822507977486e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666419804096222e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.9999991059303284e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    __m512i e = _mm512_slli_epi32(_mm512_castps_si512(t), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

/* e^x for any x: 0 below -87.33, e^88 above 88 (as exp_avx2). */
static inline __m512 exp_avx512(__m512 x)
{
    const __m512 lo_limit = _mm512_set1_ps(-87.33f);
    __mmask16 keep = _mm512_cmp_ps_mask(x, lo_limit, _CMP_NLT_UQ);
    x = _mm512_min_ps(_mm512_max_ps(x, lo_limit), _mm512_set1_ps(88.0f));
    return _mm512_maskz_mov_ps(keep, exp_core_avx512(x));
}

static void softmax_cols_avx512(float *s, int rows, float scale, float *m, float *colsum)
{
    const __m512 vs = _mm512_set1_ps(scale);
    __m512 mx = _mm512_loadu_ps(m);
    /* max(t, m) keeps m when t is NaN, like the portable t > m ? t : m */
    for (int r = 0; r < rows; r++)
        mx = _mm512_max_ps(_mm512_mul_ps(_mm512_loadu_ps(s + r * NR), vs), mx);
    _mm512_storeu_ps(m, mx);
    /* Arguments are <= 0; below -80 the term is raised to e^-80 (see
     * softmax_cols_avx2). */
    const __m512 lo = _mm512_set1_ps(-80.0f);
    __m512 sum = _mm512_setzero_ps();
    for (int r = 0; r < rows; r++, s += NR) {
        __m512 p = exp_core_avx512(_mm512_max_ps(_mm512_fmsub_ps(_mm512_loadu_ps(s), vs, mx), lo));
        _mm512_storeu_ps(s, p);
        sum = _mm512_add_ps(sum, p);
    }
    _mm512_storeu_ps(colsum, sum);
}

/* 2^x for x <= 0: x = n + r with n = round(x) (r = x - n is exact), 2^r
 * by the exp_core polynomial in r ln 2 (its coefficients times (ln 2)^k)
 * and scaled by 2^n with vscalefps, which rounds results below 2^-126 to
 * subnormals and zero; -inf gives NaN. */
static inline __m512 exp2_avx512(__m512 x)
{
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.534581243e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.339993090e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.618489072e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.550328642e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(2.402264625e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(6.931471825e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* An MR x NR score tile of kc > SD_MICRO_SUB steps into s (aligned): the
 * runs summed as micro_rows sums them. Out of line, so that the short
 * case keeps its registers. */
static void scores_long(int kc, const float *a, const float *b, float *s)
{
    for (int k0 = 0; k0 < kc; k0 += SD_MICRO_SUB) {
        const int len = kc - k0 < SD_MICRO_SUB ? kc - k0 : SD_MICRO_SUB;
        __m512 acc[MR];
        fma_run(MR, len, a + (size_t)k0 * MR, b + (size_t)k0 * NR, acc, 0);
#pragma GCC unroll 32
        for (int i = 0; i < MR; i++)
            _mm512_store_ps(s + i * NR,
                            k0 ? _mm512_add_ps(_mm512_load_ps(s + i * NR), acc[i]) : acc[i]);
    }
}

/* s[r] = 2^(s[r] - mx) for n rows, summed by pairs into sum0 and sum1.
 * The scores are finite and at most mx: no clamp is needed. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void
exp_rows(float *s, int n, __m512 mx, __m512 *sum0, __m512 *sum1)
{
    int r = 0;
    for (; r + 2 <= n; r += 2, s += 2 * NR) {
        __m512 p0 = exp2_avx512(_mm512_sub_ps(_mm512_load_ps(s), mx));
        __m512 p1 = exp2_avx512(_mm512_sub_ps(_mm512_load_ps(s + NR), mx));
        _mm512_store_ps(s, p0);
        _mm512_store_ps(s + NR, p1);
        *sum0 = _mm512_add_ps(*sum0, p0);
        *sum1 = _mm512_add_ps(*sum1, p1);
    }
    if (r < n) {
        __m512 p0 = exp2_avx512(_mm512_sub_ps(_mm512_load_ps(s), mx));
        _mm512_store_ps(s, p0);
        *sum0 = _mm512_add_ps(*sum0, p0);
    }
}

#if MR == 16
/* Scores of the 8 keys of a key panel's half (rows of the A panel at a,
 * MR floats per step) against two query panels b0 and b1, into the tiles
 * s0 and s1 (row stride NR): 16 accumulators, two B vectors and one A
 * broadcast per pair of FMAs, where a one-panel tile issues an A load per
 * FMA. Runs of SD_MICRO_SUB steps are summed as micro_rows sums them, so
 * every score is bit for bit the one-panel tile's. The first `valid` rows
 * are maxed into the chains mx0 and mx1 (two per panel). */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void
scores_pair8(int kc, const float *restrict a, const float *restrict b0, const float *restrict b1,
             float *s0, float *s1, int valid, __m512 *mx0, __m512 *mx1)
{
    for (int k0 = 0; k0 < kc; k0 += SD_MICRO_SUB) {
        const int len = kc - k0 < SD_MICRO_SUB ? kc - k0 : SD_MICRO_SUB, last = k0 + len >= kc;
        __m512 acc[16];
        fma_pair8(len, a + (size_t)k0 * MR, b0 + (size_t)k0 * NR, b1 + (size_t)k0 * NR, acc);
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            __m512 v0 = acc[2 * i], v1 = acc[2 * i + 1];
            if (k0) {
                v0 = _mm512_add_ps(_mm512_load_ps(s0 + i * NR), v0);
                v1 = _mm512_add_ps(_mm512_load_ps(s1 + i * NR), v1);
            }
            _mm512_store_ps(s0 + i * NR, v0);
            _mm512_store_ps(s1 + i * NR, v1);
            if (last && i < valid) { /* max(x, mx) keeps mx when x is NaN */
                mx0[i % 2] = _mm512_max_ps(v0, mx0[i % 2]);
                mx1[i % 2] = _mm512_max_ps(v1, mx1[i % 2]);
            }
        }
    }
}

/* attn_tile_avx512 for an even panel count, two query panels at a time:
 * the scores of panels q and q + 1 (scores_pair8) run interleaved with
 * the exp pass of q - 2 and q - 1. The same numbers, bit for bit. */
static void attn_tile_pairs(int kc, int rows, int np, const float *restrict a,
                            const float *restrict b, float *restrict s, int lds, float *restrict m,
                            float *restrict colsum, float *restrict corr)
{
    __m512 mprev[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    __m512 moldprev[2] = {mprev[0], mprev[1]};
    for (int q = 0; q <= np; q += 2, b += (size_t)2 * kc * NR) {
        const int scores = q<np, exps = q> 0;
        float *sq = s + (size_t)q * lds, *se = sq - 2 * (size_t)lds;
        __m512 mold[2], mx[2][2], sum[2][2];
        for (int h = 0; h < 2; h++) {
            mold[h] = scores ? _mm512_loadu_ps(m + (q + h) * NR) : mprev[h];
            mx[h][0] = mx[h][1] = mold[h];
            sum[h][0] = sum[h][1] = _mm512_setzero_ps();
        }
        const float *ap = a;
        for (int r0 = 0; r0 < rows; r0 += MR, ap += (size_t)kc * MR) {
            if (scores)
                for (int half = 0; half < MR; half += 8)
                    scores_pair8(kc, ap + half, b, b + (size_t)kc * NR,
                                 sq + (size_t)(r0 + half) * NR, sq + lds + (size_t)(r0 + half) * NR,
                                 rows - r0 - half, mx[0], mx[1]);
            if (exps)
                for (int h = 0; h < 2; h++)
                    exp_rows(se + (size_t)h * lds + (size_t)r0 * NR,
                             rows - r0 < MR ? rows - r0 : MR, mprev[h], &sum[h][0], &sum[h][1]);
        }
        for (int h = 0; h < 2; h++) {
            if (exps) {
                _mm512_storeu_ps(colsum + (q - 2 + h) * NR, _mm512_add_ps(sum[h][0], sum[h][1]));
                _mm512_storeu_ps(corr + (q - 2 + h) * NR,
                                 exp2_avx512(_mm512_max_ps(_mm512_sub_ps(moldprev[h], mprev[h]),
                                                           _mm512_set1_ps(-200.0f))));
            }
            if (scores) {
                moldprev[h] = mold[h];
                mprev[h] = _mm512_max_ps(mx[h][0], mx[h][1]);
                _mm512_storeu_ps(m + (q + h) * NR, mprev[h]);
            }
        }
    }
}
#endif

/* Attention tiles of np query panels against one key block (see
 * sd_kernels.attn_tile): for each panel the scores of `rows` keys (MR-key
 * A panels of kc steps at a, zero-padded to whole panels) against its NR
 * queries are stored in its tile, then the online-softmax step in base 2
 * runs on them. A head of up to SD_MICRO_SUB channels (the UNet's 40)
 * takes the column max from the registers as the scores are stored.
 * The exp pass of panel q - 1 runs interleaved with the scores of panel
 * q, a key panel of each at a time, so that its adds, rounding and
 * scaling fill the pipes the score FMAs leave idle. */
static void attn_tile_avx512(int kc, int rows, int np, const float *restrict a,
                             const float *restrict b, float *restrict s, int lds, float *restrict m,
                             float *restrict colsum, float *restrict corr)
{
#if MR == 16
    if (np % 2 == 0) {
        attn_tile_pairs(kc, rows, np, a, b, s, lds, m, colsum, corr);
        return;
    }
#endif
    __m512 mprev = _mm512_setzero_ps(), moldprev = mprev; /* panel q - 1 */
    for (int q = 0; q <= np; q++, b += (size_t)kc * NR) {
        const int scores = q<np, exps = q> 0;
        float *sq = s + (size_t)q * lds, *se = sq - lds;
        const __m512 mold = scores ? _mm512_loadu_ps(m + q * NR) : mprev;
        __m512 mx4[4] = {mold, mold, mold, mold}; /* four chains */
        __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
        const float *ap = a;
        for (int r0 = 0; r0 < rows; r0 += MR, ap += (size_t)kc * MR) {
            if (scores) {
                float *sp = sq + (size_t)r0 * NR;
                __m512 acc[MR];
                if (kc <= SD_MICRO_SUB) {
                    fma_run(MR, kc, ap, b, acc, 0);
#pragma GCC unroll 32
                    for (int i = 0; i < MR; i++)
                        _mm512_store_ps(sp + i * NR, acc[i]);
                } else {
                    scores_long(kc, ap, b, sp);
#pragma GCC unroll 32
                    for (int i = 0; i < MR; i++)
                        acc[i] = _mm512_load_ps(sp + i * NR);
                }
                /* max(x, mx) keeps mx when x is NaN */
#pragma GCC unroll 32
                for (int i = 0; i < MR; i++)
                    if (i < rows - r0)
                        mx4[i % 4] = _mm512_max_ps(acc[i], mx4[i % 4]);
            }
            if (exps)
                exp_rows(se + (size_t)r0 * NR, rows - r0 < MR ? rows - r0 : MR, mprev, &sum0,
                         &sum1);
        }
        if (exps) {
            _mm512_storeu_ps(colsum + (q - 1) * NR, _mm512_add_ps(sum0, sum1));
            /* an old max of -inf gives 2^-200 = 0 */
            _mm512_storeu_ps(corr + (q - 1) * NR,
                             exp2_avx512(_mm512_max_ps(_mm512_sub_ps(moldprev, mprev),
                                                       _mm512_set1_ps(-200.0f))));
        }
        if (scores) {
            moldprev = mold;
            mprev = _mm512_max_ps(_mm512_max_ps(mx4[0], mx4[1]), _mm512_max_ps(mx4[2], mx4[3]));
            _mm512_storeu_ps(m + q * NR, mprev);
        }
    }
}

#if MR == 16
/* One O^T tile of the attention's P V product: its first `rows` of R
 * channel rows (R = 8, 16 or 24, a constant once inlined; rows 16..23 of
 * a 24-row tile are the first 8 of the next 16-row V^T panel, a1) by
 * NR queries: c = (corr ? c * corr : 0) + the sum over k < kc of
 * a[k][i] * b[k], in SD_MICRO_SUB runs as micro_rows sums them, the first
 * run added with one fma. 24 rows make a 40-channel head two tiles (16 +
 * 24) where the kernel's panels make it three (16 + 16 + 8, the last with
 * 8 accumulators, too few to cover the FMA latency). */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void
pv_rows(const int R, int kc, const float *restrict a0, const float *restrict a1,
        const float *restrict b, float *c, int ldc, int rows, const float *corr)
{
    const __m512 cv = corr ? _mm512_loadu_ps(corr) : _mm512_setzero_ps();
    for (int k0 = 0; k0 < kc; k0 += SD_MICRO_SUB) {
        const int len = kc - k0 < SD_MICRO_SUB ? kc - k0 : SD_MICRO_SUB;
        __m512 acc[24];
#pragma GCC unroll 32
        for (int i = 0; i < R; i++)
            acc[i] = _mm512_setzero_ps();
        const float *p0 = a0 + (size_t)k0 * 16, *p1 = a1 + (size_t)k0 * 16,
                    *bp = b + (size_t)k0 * NR;
#pragma GCC unroll 2
        for (int k = 0; k < len; k++) {
            const __m512 bv = _mm512_loadu_ps(bp);
#pragma GCC unroll 16
            for (int i = 0; i < (R < 16 ? R : 16); i++)
                acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(p0[i]), bv, acc[i]);
#pragma GCC unroll 8
            for (int i = 16; i < R; i++) /* the next panel's first rows */
                acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(p1[i - 16]), bv, acc[i]);
            p0 += 16;
            p1 += 16;
            bp += NR;
        }
#pragma GCC unroll 32
        for (int i = 0; i < R; i++)
            if (i < rows) {
                float *ci = c + (size_t)i * ldc;
                __m512 v = acc[i];
                if (k0 > 0)
                    v = _mm512_add_ps(_mm512_loadu_ps(ci), v);
                else if (corr)
                    v = _mm512_fmadd_ps(_mm512_loadu_ps(ci), cv, v);
                _mm512_storeu_ps(ci, v);
            }
    }
}

/* See sd_kernels.attn_pv: 16-row tiles, the last 17..24 rows as one
 * 24-row tile and a last 1..8 as an 8-row one. */
static void attn_pv_avx512(int kc, int rows, const float *v, size_t vs, const float *p, float *o,
                           int ldo, const float *corr)
{
    for (int c0 = 0; c0 < rows; c0 += 16) {
        const int rem = rows - c0;
        const float *a0 = v + (size_t)(c0 / 16) * vs;
        float *oc = o + (size_t)c0 * ldo;
        if (rem > 16 && rem <= 24) {
            pv_rows(24, kc, a0, a0 + vs, p, oc, ldo, rem, corr);
            return;
        }
        if (rem <= 8)
            pv_rows(8, kc, a0, a0, p, oc, ldo, rem, corr);
        else
            pv_rows(16, kc, a0, a0, p, oc, ldo, rem < 16 ? rem : 16, corr);
    }
}
#endif

static inline __m512 silu_vec(__m512 v, __m512 a)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 e = exp_avx512(_mm512_castsi512_ps(_mm512_xor_si512(
        _mm512_castps_si512(_mm512_mul_ps(a, v)), _mm512_set1_epi32((int)0x80000000u))));
    return _mm512_div_ps(v, _mm512_add_ps(one, e));
}

static void silu_avx512(const float *x, float *y, size_t n, float a)
{
    const __m512 va = _mm512_set1_ps(a);
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, silu_vec(_mm512_loadu_ps(x + i), va));
    if (i < n) {
        const __mmask16 k = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, k, silu_vec(_mm512_maskz_loadu_ps(k, x + i), va));
    }
}

/* t = 1/(1 + z/2) and P(t) of the erfc fit in double (see gemm_avx2.c). */
static inline __m512d erfc_poly_pd(__m512d z, __m512d *t_out)
{
    const __m512d one = _mm512_set1_pd(1.0);
    __m512d t = _mm512_div_pd(one, _mm512_fmadd_pd(_mm512_set1_pd(0.5), z, one));
    __m512d p = _mm512_set1_pd(0.17087277);
    p = _mm512_fmadd_pd(p, t, _mm512_set1_pd(-0.82215223));
    p = _mm512_fmadd_pd(p, t, _mm512_set1_pd(1.48851587));
    p = _mm512_fmadd_pd(p, t, _mm512_set1_pd(-1.13520398));
    p = _mm512_fmadd_pd(p, t, _mm512_set1_pd(0.27886807));
    p = _mm512_fmadd_pd(p, t, _mm512_set1_pd(-0.18628806));
    p = _mm512_fmadd_pd(p, t, _mm512_set1_pd(0.09678418));
    p = _mm512_fmadd_pd(p, t, _mm512_set1_pd(0.37409196));
    p = _mm512_fmadd_pd(p, t, _mm512_set1_pd(1.00002368));
    p = _mm512_fmadd_pd(p, t, _mm512_set1_pd(-1.26551223));
    *t_out = t;
    return p;
}

/* g * Phi(g) by the erfc fit, as gelu_avx2 (gemm_avx2.c). */
static inline __m512 gelu_avx512(__m512 g)
{
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
    __m512 ag = _mm512_abs_ps(g);
    const __m512d rs2 = _mm512_set1_pd(0.70710678118654752);
    __m512d t_lo, t_hi;
    __m512d p_lo =
        erfc_poly_pd(_mm512_mul_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(ag)), rs2), &t_lo);
    __m512d p_hi =
        erfc_poly_pd(_mm512_mul_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(ag, 1)), rs2), &t_hi);
    __m512 p =
        _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(p_lo)), _mm512_cvtpd_ps(p_hi), 1);
    __m512 t =
        _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(t_lo)), _mm512_cvtpd_ps(t_hi), 1);
    __m512 arg = _mm512_fnmadd_ps(_mm512_mul_ps(half, g), g, p);        /* P - g^2/2 */
    __m512 hc = _mm512_mul_ps(_mm512_mul_ps(half, t), exp_avx512(arg)); /* erfc(z) / 2 */
    __mmask16 pos = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_GE_OQ);
    __m512 phi = _mm512_mask_blend_ps(pos, hc, _mm512_sub_ps(one, hc));
    return _mm512_mul_ps(g, phi);
}

static inline void gelu_mul_row_avx512(const float *h, const float *g, float *y, int n)
{
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(
            y + i, _mm512_mul_ps(_mm512_loadu_ps(h + i), gelu_avx512(_mm512_loadu_ps(g + i))));
    if (i < n) {
        const __mmask16 k = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, k,
                              _mm512_mul_ps(_mm512_maskz_loadu_ps(k, h + i),
                                            gelu_avx512(_mm512_maskz_loadu_ps(k, g + i))));
    }
}

static void gelu_mul_avx512(const float *h, const float *g, float *y, int n, int rows, size_t ldy)
{
    /* A GEGLU panel pair's block, one vector per row, in a loop of its
     * own: through the row function (a tail test per row) the block ran
     * 1.53-1.57 ns per value against 1.20-1.23. */
    if (n == 16) {
        for (int r = 0; r < rows; r++)
            _mm512_storeu_ps(y + (size_t)r * ldy,
                             _mm512_mul_ps(_mm512_loadu_ps(h + (size_t)r * 16),
                                           gelu_avx512(_mm512_loadu_ps(g + (size_t)r * 16))));
        return;
    }
    for (int r = 0; r < rows; r++)
        gelu_mul_row_avx512(h + (size_t)r * n, g + (size_t)r * n, y + (size_t)r * ldy, n);
}

/* 16-bit weights to float32, 16 at a time: vcvtph2ps for float16 (exact;
 * NaNs come out quiet, as in sd_wt_widen1), a 16-bit shift for bfloat16. */
static void widen_avx512(int type, const uint16_t *src, float *dst, size_t n)
{
    size_t i = 0;
    if (type == SD_WT_BF16) {
        for (; i + 16 <= n; i += 16) {
            __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + i)));
            _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
        }
    } else {
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(dst + i,
                             _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
    }
    for (; i < n; i++)
        dst[i] = sd_wt_widen1(type, src[i]);
}

/* The AVX-512 set, and the same set with the AMX GEMM. */
#if MR == 16
#define MICRO2_ENTRIES .micro2 = micro2_avx512, .attn_pv = attn_pv_avx512,
#else
#define MICRO2_ENTRIES
#endif
/* clang-format off */
#define AVX512_SET(set_name, amx_kernels, amx_fast_kernels)                    \
    {                                                                          \
        .name = set_name, .amx = amx_kernels, .amx_fast = amx_fast_kernels,    \
        .mr = MR, .nr = NR, .micro = micro_avx512, MICRO2_ENTRIES              \
        .pack_panel = pack_avx512,                                             \
        .softmax_cols = softmax_cols_avx512, .attn_tile = attn_tile_avx512,    \
        .silu = silu_avx512, .gelu_mul = gelu_mul_avx512,                      \
        .winograd = sd_conv3x3_winograd_avx512,                                \
        .winograd4 = sd_conv3x3_winograd4_avx512,                              \
        .norm_sum = sd_norm_sum_avx2, .norm_affine = sd_norm_affine_avx2,      \
        .norm_affine1 = sd_norm_affine1_avx2, .widen = widen_avx512,           \
    }
/* clang-format on */

const sd_kernels sd_kernels_avx512 = AVX512_SET("avx512", NULL, NULL);
const sd_kernels sd_kernels_amx = AVX512_SET("amx", &sd_amx_kernels_bf16x3, &sd_amx_kernels_bf16x5);
