/* AVX2/FMA kernel set: a 6x16 GEMM microkernel, a vector exp for the
 * attention softmax and F16C weight widening. Compiled with -mavx2 -mfma
 * -mf16c on x86-64 only and reached through sd_kernels_select after a
 * CPUID check (AVX2, FMA and F16C).
 *
 * 6x16 uses 12 of the 16 ymm registers as accumulators; each k step loads
 * two B vectors, broadcasts six A values and issues 12 FMAs, which keeps
 * both FMA pipes of Zen 3 / Haswell-class cores busy with loads to spare. */
#include "engine/kernels.h"

#include <immintrin.h>

#define MR 6
#define NR 16

static inline void store_row(float *c, __m256 lo, __m256 hi, int accumulate)
{
    if (accumulate) {
        /* c_old + acc: the same single rounding as the portable kernel. */
        lo = _mm256_add_ps(_mm256_loadu_ps(c), lo);
        hi = _mm256_add_ps(_mm256_loadu_ps(c + 8), hi);
    }
    _mm256_storeu_ps(c, lo);
    _mm256_storeu_ps(c + 8, hi);
}

/* The last store of a full tile with an epilogue: the runs so far are in
 * t (when prev), then c = (accumulate ? c : 0) + (t + acc) + bias + g + r,
 * the order of sd_tile_store. The residual row may be c itself: both are
 * loaded before the store. */
static inline void store_row_ep(float *c, const float *t, __m256 lo, __m256 hi, int prev,
                                int accumulate, const float *bias, const float *g, const float *r)
{
    if (prev) {
        lo = _mm256_add_ps(_mm256_load_ps(t), lo);
        hi = _mm256_add_ps(_mm256_load_ps(t + 8), hi);
    }
    if (accumulate) {
        lo = _mm256_add_ps(_mm256_loadu_ps(c), lo);
        hi = _mm256_add_ps(_mm256_loadu_ps(c + 8), hi);
    }
    if (bias) {
        lo = _mm256_add_ps(lo, _mm256_loadu_ps(bias));
        hi = _mm256_add_ps(hi, _mm256_loadu_ps(bias + 8));
    }
    if (g) {
        lo = _mm256_add_ps(lo, _mm256_loadu_ps(g));
        hi = _mm256_add_ps(hi, _mm256_loadu_ps(g + 8));
    }
    if (r) {
        lo = _mm256_add_ps(lo, _mm256_loadu_ps(r));
        hi = _mm256_add_ps(hi, _mm256_loadu_ps(r + 8));
    }
    _mm256_storeu_ps(c, lo);
    _mm256_storeu_ps(c + 8, hi);
}

static void micro_6x16(int kc, const float *restrict a, const float *restrict b, float *c, int ldc,
                       int accumulate, int rows, int cols, const sd_tile_ep *te)
{
    /* A partial tile, or one with an epilogue (whose residual may be C
     * itself, so C must not hold partial sums), is summed in a local tile;
     * others are summed in C. */
    const int full = rows == MR && cols == NR, direct = full && !te;
    _Alignas(32) float t[MR * NR];
    float *dst = direct ? c : t;
    const size_t ld = direct ? (size_t)ldc : NR;
    int add = direct && accumulate;
    if (full) /* the first flush below then finds C in L1 */
        for (int i = 0; i < MR; i++) {
            _mm_prefetch((const char *)(c + (size_t)i * ldc), _MM_HINT_T0);
            _mm_prefetch((const char *)(c + (size_t)i * ldc + NR - 1), _MM_HINT_T0);
        }

    /* Every SD_MICRO_SUB steps the register sums are added into the tile and
     * restarted: the fp32 error of a long dot product then grows like
     * sqrt(SUB + K/SUB) instead of sqrt(K). The adds run on Zen's FADD pipes,
     * beside the FMAs, so this costs a few percent at most. */
    int k0 = 0;
    do {
        const int len = kc - k0 < SD_MICRO_SUB ? kc - k0 : SD_MICRO_SUB;
        __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
        __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
        __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
        __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
        __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
        __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();

#define STEP(o)                                                                                    \
    do {                                                                                           \
        __m256 b0 = _mm256_loadu_ps(b + (o)*NR), b1 = _mm256_loadu_ps(b + (o)*NR + 8);             \
        __m256 av = _mm256_broadcast_ss(a + (o)*MR + 0);                                           \
        c00 = _mm256_fmadd_ps(av, b0, c00);                                                        \
        c01 = _mm256_fmadd_ps(av, b1, c01);                                                        \
        av = _mm256_broadcast_ss(a + (o)*MR + 1);                                                  \
        c10 = _mm256_fmadd_ps(av, b0, c10);                                                        \
        c11 = _mm256_fmadd_ps(av, b1, c11);                                                        \
        av = _mm256_broadcast_ss(a + (o)*MR + 2);                                                  \
        c20 = _mm256_fmadd_ps(av, b0, c20);                                                        \
        c21 = _mm256_fmadd_ps(av, b1, c21);                                                        \
        av = _mm256_broadcast_ss(a + (o)*MR + 3);                                                  \
        c30 = _mm256_fmadd_ps(av, b0, c30);                                                        \
        c31 = _mm256_fmadd_ps(av, b1, c31);                                                        \
        av = _mm256_broadcast_ss(a + (o)*MR + 4);                                                  \
        c40 = _mm256_fmadd_ps(av, b0, c40);                                                        \
        c41 = _mm256_fmadd_ps(av, b1, c41);                                                        \
        av = _mm256_broadcast_ss(a + (o)*MR + 5);                                                  \
        c50 = _mm256_fmadd_ps(av, b0, c50);                                                        \
        c51 = _mm256_fmadd_ps(av, b1, c51);                                                        \
    } while (0)

        /* Unrolled by the compiler, not by hand: GCC 12 kept two of the
         * twelve sums on the stack in the hand-unrolled loop (all 16 ymm
         * registers are in use), a store-load round trip in their dependency
         * chains; this form has no spill and ran 3.5% faster (geometric
         * mean, 8 GEMM shapes). */
#pragma GCC unroll 4
        for (int k = 0; k < len; k++) {
            if ((k & 1) == 0)
                _mm_prefetch((const char *)(b + 8 * NR), _MM_HINT_T0);
            STEP(0);
            a += MR;
            b += NR;
        }
#undef STEP
        k0 += len;
        /* The six rows, each with its two accumulators. */
#define SD_ROWS(F)                                                                                 \
    F(0, c00, c01) F(1, c10, c11) F(2, c20, c21) F(3, c30, c31) F(4, c40, c41) F(5, c50, c51)
        if (k0 >= kc && full && te) {
            const float *bias = te->bias;
            const size_t l = (size_t)ldc;
#define SD_STORE_EP(i, lo, hi)                                                                     \
    store_row_ep(c + (i)*l, t + (i)*NR, lo, hi, add, accumulate, bias, te->g[i], te->r[i]);
            SD_ROWS(SD_STORE_EP)
#undef SD_STORE_EP
            return;
        }
#define SD_STORE(i, lo, hi) store_row(dst + (i)*ld, lo, hi, add);
        SD_ROWS(SD_STORE)
#undef SD_STORE
#undef SD_ROWS
        add = 1;
    } while (k0 < kc);

    if (!full)
        sd_tile_store(t, NR, c, ldc, accumulate, rows, cols, te);
}

/* 6-row A micro-panel: 8 k at a time, the 6 x 8 block is transposed in
 * registers (rows 0-3 by a 4x4 transpose per 128-bit lane, rows 4-5 as
 * interleaved pairs) and stored as 8 groups of 6 floats. */
static void pack6(const float *const *rows, int len, float *dst)
{
    const float *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3], *r4 = rows[4],
                *r5 = rows[5];
    int k = 0;
    for (; k + 8 <= len; k += 8, dst += 48) {
        __m256 a0 = _mm256_loadu_ps(r0 + k), a1 = _mm256_loadu_ps(r1 + k);
        __m256 a2 = _mm256_loadu_ps(r2 + k), a3 = _mm256_loadu_ps(r3 + k);
        __m256 a4 = _mm256_loadu_ps(r4 + k), a5 = _mm256_loadu_ps(r5 + k);
        __m256 t0 = _mm256_unpacklo_ps(a0, a1); /* k0: r0 r1, k1: r0 r1 | k4, k5 */
        __m256 t1 = _mm256_unpackhi_ps(a0, a1); /* k2, k3 | k6, k7 */
        __m256 t2 = _mm256_unpacklo_ps(a2, a3);
        __m256 t3 = _mm256_unpackhi_ps(a2, a3);
        __m256 p45lo = _mm256_unpacklo_ps(a4, a5);   /* r4 r5 pairs for k0 k1 | k4 k5 */
        __m256 p45hi = _mm256_unpackhi_ps(a4, a5);   /* k2 k3 | k6 k7 */
        __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44); /* r0..r3 at k0 | k4 */
        __m256 u1 = _mm256_shuffle_ps(t0, t2, 0xEE); /* k1 | k5 */
        __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44); /* k2 | k6 */
        __m256 u3 = _mm256_shuffle_ps(t1, t3, 0xEE); /* k3 | k7 */
        /* Stored directly (as arrays of vectors, GCC went through the stack). */
        const __m128 pl = _mm256_castps256_ps128(p45lo), ph = _mm256_castps256_ps128(p45hi);
        const __m128 pl1 = _mm256_extractf128_ps(p45lo, 1), ph1 = _mm256_extractf128_ps(p45hi, 1);
#define SD_PUT6(i, q4, p2)                                                                         \
    do {                                                                                           \
        _mm_storeu_ps(dst + 6 * (i), (q4));                                                        \
        _mm_storel_pi((__m64 *)(void *)(dst + 6 * (i) + 4), (p2));                                 \
    } while (0)
        SD_PUT6(0, _mm256_castps256_ps128(u0), pl);
        SD_PUT6(1, _mm256_castps256_ps128(u1), _mm_movehl_ps(pl, pl));
        SD_PUT6(2, _mm256_castps256_ps128(u2), ph);
        SD_PUT6(3, _mm256_castps256_ps128(u3), _mm_movehl_ps(ph, ph));
        SD_PUT6(4, _mm256_extractf128_ps(u0, 1), pl1);
        SD_PUT6(5, _mm256_extractf128_ps(u1, 1), _mm_movehl_ps(pl1, pl1));
        SD_PUT6(6, _mm256_extractf128_ps(u2, 1), ph1);
        SD_PUT6(7, _mm256_extractf128_ps(u3, 1), _mm_movehl_ps(ph1, ph1));
#undef SD_PUT6
    }
    for (; k < len; k++, dst += 6) {
        dst[0] = r0[k];
        dst[1] = r1[k];
        dst[2] = r2[k];
        dst[3] = r3[k];
        dst[4] = r4[k];
        dst[5] = r5[k];
    }
}

/* e^x for x in [-87.33, 88]: x = n ln2 + r with |r| <= ln2/2 (Cody-Waite
 * split of ln2), e^r by a degree-6 polynomial fitted for least maximum
 * relative error on that interval (1.7e-8, below half an ulp), times 2^n
 * built in the exponent field. Rounding x log2(e) against 1.5 * 2^23 + 127
 * leaves n + 127 in the low mantissa bits of t, so n and the biased
 * exponent come from one fma with no round or convert. About 1-2 ulp. */
static inline __m256 exp_core_avx2(__m256 x)
{
    const __m256 magic = _mm256_set1_ps(12583039.0f); /* 1.5 * 2^23 + 127 */
    __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), magic);
    __m256 n = _mm256_sub_ps(t, magic);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.3836845755577087e-3f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.374815806746483e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166822507977486e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666419804096222e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.9999991059303284e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_castps_si256(t), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* e^x for any x: 0 below -87.33 (just above ln(FLT_MIN) = -87.3365, so no
 * result is subnormal), e^88 above 88. */
static inline __m256 exp_avx2(__m256 x)
{
    const __m256 lo_limit = _mm256_set1_ps(-87.33f);
    __m256 tiny = _mm256_cmp_ps(x, lo_limit, _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, lo_limit), _mm256_set1_ps(88.0f));
    return _mm256_andnot_ps(tiny, exp_core_avx2(x));
}

static void softmax_cols_avx2(float *s, int rows, float scale, float *m, float *colsum)
{
    const __m256 vs = _mm256_set1_ps(scale);
    __m256 m0 = _mm256_loadu_ps(m), m1 = _mm256_loadu_ps(m + 8);
    /* max(t, m) keeps m when t is NaN, like the portable t > m ? t : m */
    for (int r = 0; r < rows; r++) {
        m0 = _mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(s + r * NR), vs), m0);
        m1 = _mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(s + r * NR + 8), vs), m1);
    }
    _mm256_storeu_ps(m, m0);
    _mm256_storeu_ps(m + 8, m1);
    /* Every argument is <= 0 (m is the column max), so only the low end
     * needs a bound: below -80 the term is e^-80 = 1.8e-35 instead of
     * smaller, nothing next to the column's largest term, e^0 = 1, and far
     * from subnormal. A NaN argument becomes the bound, as in exp_avx2. */
    const __m256 lo = _mm256_set1_ps(-80.0f);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (int r = 0; r < rows; r++, s += NR) {
        __m256 p0 = exp_core_avx2(_mm256_max_ps(_mm256_fmsub_ps(_mm256_loadu_ps(s), vs, m0), lo));
        __m256 p1 =
            exp_core_avx2(_mm256_max_ps(_mm256_fmsub_ps(_mm256_loadu_ps(s + 8), vs, m1), lo));
        _mm256_storeu_ps(s, p0);
        _mm256_storeu_ps(s + 8, p1);
        s0 = _mm256_add_ps(s0, p0);
        s1 = _mm256_add_ps(s1, p1);
    }
    _mm256_storeu_ps(colsum, s0);
    _mm256_storeu_ps(colsum + 8, s1);
}

static void silu_avx2(const float *x, float *y, size_t n, float a)
{
    /* x / (1 + e^-ax). For ax < -88 e^-ax saturates at e^88 and y ~ -x e^-88
     * (true value: x e^ax, below 1e-36 either way); for ax > 87 e^-ax flushes
     * to 0 and y = x. */
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f), va = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 e = exp_avx2(_mm256_xor_ps(_mm256_mul_ps(va, v), sign));
        _mm256_storeu_ps(y + i, _mm256_div_ps(v, _mm256_add_ps(one, e)));
    }
    if (i < n) {
        _Alignas(32) float t[8] = {0};
        for (size_t q = i; q < n; q++)
            t[q - i] = x[q];
        __m256 v = _mm256_load_ps(t);
        __m256 e = exp_avx2(_mm256_xor_ps(_mm256_mul_ps(va, v), sign));
        _mm256_store_ps(t, _mm256_div_ps(v, _mm256_add_ps(one, e)));
        for (size_t q = i; q < n; q++)
            y[q] = t[q - i];
    }
}

/* t = 1/(1 + z/2) and P(t) of the erfc fit below, in double: the Horner
 * terms reach ~1.5 while P(1) ~ 0, so float evaluation would leave ~3e-7 of
 * absolute error in the exponent. */
static inline __m256d erfc_poly_pd(__m256d z, __m256d *t_out)
{
    const __m256d one = _mm256_set1_pd(1.0);
    __m256d t = _mm256_div_pd(one, _mm256_fmadd_pd(_mm256_set1_pd(0.5), z, one));
    __m256d p = _mm256_set1_pd(0.17087277);
    p = _mm256_fmadd_pd(p, t, _mm256_set1_pd(-0.82215223));
    p = _mm256_fmadd_pd(p, t, _mm256_set1_pd(1.48851587));
    p = _mm256_fmadd_pd(p, t, _mm256_set1_pd(-1.13520398));
    p = _mm256_fmadd_pd(p, t, _mm256_set1_pd(0.27886807));
    p = _mm256_fmadd_pd(p, t, _mm256_set1_pd(-0.18628806));
    p = _mm256_fmadd_pd(p, t, _mm256_set1_pd(0.09678418));
    p = _mm256_fmadd_pd(p, t, _mm256_set1_pd(0.37409196));
    p = _mm256_fmadd_pd(p, t, _mm256_set1_pd(1.00002368));
    p = _mm256_fmadd_pd(p, t, _mm256_set1_pd(-1.26551223));
    *t_out = t;
    return p;
}

/* h * gelu(g) with gelu(g) = g * Phi(g), Phi(g) = erfc(-g/sqrt2) / 2, and
 * erfc(z), z >= 0, from the Chebyshev fit in Numerical Recipes (erfcc):
 * t = 1/(1 + z/2), erfc(z) = t exp(-z^2 + P(t)), relative error < 1.1e-7
 * for every z >= 0 (checked against libm on a 1e-5 grid). g >= 0 uses
 * Phi = 1 - erfc(z)/2, so neither side cancels. -z^2 = -g^2/2 enters the
 * exponent through an fma, unrounded. Flushes to 0 for g < -13. */
static inline __m256 gelu_avx2(__m256 g)
{
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    __m256 ag = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), g);
    const __m256d rs2 = _mm256_set1_pd(0.70710678118654752);
    __m256d t_lo, t_hi;
    __m256d p_lo =
        erfc_poly_pd(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(ag)), rs2), &t_lo);
    __m256d p_hi =
        erfc_poly_pd(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(ag, 1)), rs2), &t_hi);
    __m256 p = _mm256_set_m128(_mm256_cvtpd_ps(p_hi), _mm256_cvtpd_ps(p_lo));
    __m256 t = _mm256_set_m128(_mm256_cvtpd_ps(t_hi), _mm256_cvtpd_ps(t_lo));
    __m256 arg = _mm256_fnmadd_ps(_mm256_mul_ps(half, g), g, p);      /* P - g^2/2 */
    __m256 hc = _mm256_mul_ps(_mm256_mul_ps(half, t), exp_avx2(arg)); /* erfc(z) / 2 */
    __m256 pos = _mm256_cmp_ps(g, _mm256_setzero_ps(), _CMP_GE_OQ);
    __m256 phi = _mm256_blendv_ps(hc, _mm256_sub_ps(one, hc), pos);
    return _mm256_mul_ps(g, phi);
}

static inline void gelu_mul_row_avx2(const float *h, const float *g, float *y, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i,
                         _mm256_mul_ps(_mm256_loadu_ps(h + i), gelu_avx2(_mm256_loadu_ps(g + i))));
    if (i < n) {
        _Alignas(32) float th[8] = {0}, tg[8] = {0};
        for (int q = i; q < n; q++) {
            th[q - i] = h[q];
            tg[q - i] = g[q];
        }
        _mm256_store_ps(th, _mm256_mul_ps(_mm256_load_ps(th), gelu_avx2(_mm256_load_ps(tg))));
        for (int q = i; q < n; q++)
            y[q] = th[q - i];
    }
}

static void gelu_mul_avx2(const float *h, const float *g, float *y, int n, int rows, size_t ldy)
{
    for (int r = 0; r < rows; r++)
        gelu_mul_row_avx2(h + (size_t)r * n, g + (size_t)r * n, y + (size_t)r * ldy, n);
}

/* 16-bit weights to float32, 8 at a time: F16C's vcvtph2ps for float16
 * (exact; NaNs come out quiet, as in sd_wt_widen1), a 16-bit shift for
 * bfloat16. */
static void widen_avx2(int type, const uint16_t *src, float *dst, size_t n)
{
    size_t i = 0;
    if (type == SD_WT_BF16) {
        for (; i + 8 <= n; i += 8) {
            __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
        }
    } else {
        for (; i + 16 <= n; i += 16) {
            __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
            __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 8));
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(a));
            _mm256_storeu_ps(dst + i + 8, _mm256_cvtph_ps(b));
        }
    }
    for (; i < n; i++)
        dst[i] = sd_wt_widen1(type, src[i]);
}

int sd_conv3x3_winograd_avx2(const sd_exec *ex, const float *in, int batch, int H, int W, int Cin,
                             const sd_packed *Wp, float *out, const sd_epilogue *ep);

const sd_kernels sd_kernels_avx2 = {
    .name = "avx2",
    .mr = MR,
    .nr = NR,
    .micro = micro_6x16,
    .pack_panel = pack6,
    .softmax_cols = softmax_cols_avx2,
    .silu = silu_avx2,
    .gelu_mul = gelu_mul_avx2,
    .norm_sum = sd_norm_sum_avx2,
    .norm_affine = sd_norm_affine_avx2,
    .norm_affine1 = sd_norm_affine1_avx2,
    .widen = widen_avx2,
    .winograd = sd_conv3x3_winograd_avx2,
    .winograd4 = sd_conv3x3_winograd4_avx2,
};
