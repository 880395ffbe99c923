/* AVX2/FMA kernel set: a 6x16 GEMM microkernel and a vector exp for the
 * attention softmax. Compiled with -mavx2 -mfma on x86-64 only and reached
 * through sd_kernels_select after a CPUID check.
 *
 * 6x16 uses 12 of the 16 ymm registers as accumulators; each k step loads
 * two B vectors, broadcasts six A values and issues 12 FMAs, which keeps
 * both FMA pipes of Zen 3 / Haswell-class cores busy with loads to spare. */
#include "kernels/kernels.h"

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

static void micro_6x16(int kc, const float *restrict a, const float *restrict b,
                       float *restrict c, int ldc, int accumulate, int rows, int cols)
{
    /* A partial tile is accumulated in a local tile and copied at the end. */
    const int full = rows == MR && cols == NR;
    _Alignas(32) float t[MR * NR];
    float *dst = full ? c : t;
    const size_t ld = full ? (size_t)ldc : NR;
    int add = full && accumulate;
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
        __m256 b0 = _mm256_loadu_ps(b + (o) * NR), b1 = _mm256_loadu_ps(b + (o) * NR + 8);         \
        __m256 av = _mm256_broadcast_ss(a + (o) * MR + 0);                                         \
        c00 = _mm256_fmadd_ps(av, b0, c00);                                                        \
        c01 = _mm256_fmadd_ps(av, b1, c01);                                                        \
        av = _mm256_broadcast_ss(a + (o) * MR + 1);                                                \
        c10 = _mm256_fmadd_ps(av, b0, c10);                                                        \
        c11 = _mm256_fmadd_ps(av, b1, c11);                                                        \
        av = _mm256_broadcast_ss(a + (o) * MR + 2);                                                \
        c20 = _mm256_fmadd_ps(av, b0, c20);                                                        \
        c21 = _mm256_fmadd_ps(av, b1, c21);                                                        \
        av = _mm256_broadcast_ss(a + (o) * MR + 3);                                                \
        c30 = _mm256_fmadd_ps(av, b0, c30);                                                        \
        c31 = _mm256_fmadd_ps(av, b1, c31);                                                        \
        av = _mm256_broadcast_ss(a + (o) * MR + 4);                                                \
        c40 = _mm256_fmadd_ps(av, b0, c40);                                                        \
        c41 = _mm256_fmadd_ps(av, b1, c41);                                                        \
        av = _mm256_broadcast_ss(a + (o) * MR + 5);                                                \
        c50 = _mm256_fmadd_ps(av, b0, c50);                                                        \
        c51 = _mm256_fmadd_ps(av, b1, c51);                                                        \
    } while (0)

        int k = 0;
        for (; k + 4 <= len; k += 4) {
            _mm_prefetch((const char *)(b + 8 * NR), _MM_HINT_T0);
            STEP(0);
            STEP(1);
            _mm_prefetch((const char *)(b + 10 * NR), _MM_HINT_T0);
            STEP(2);
            STEP(3);
            a += 4 * MR;
            b += 4 * NR;
        }
        for (; k < len; k++) {
            STEP(0);
            a += MR;
            b += NR;
        }
#undef STEP
        store_row(dst + 0 * ld, c00, c01, add);
        store_row(dst + 1 * ld, c10, c11, add);
        store_row(dst + 2 * ld, c20, c21, add);
        store_row(dst + 3 * ld, c30, c31, add);
        store_row(dst + 4 * ld, c40, c41, add);
        store_row(dst + 5 * ld, c50, c51, add);
        add = 1;
        k0 += len;
    } while (k0 < kc);

    if (full)
        return;
    for (int i = 0; i < rows; i++) {
        float *ci = c + (size_t)i * ldc;
        const float *ti = t + i * NR;
        if (accumulate)
            for (int j = 0; j < cols; j++)
                ci[j] = ci[j] + ti[j];
        else
            for (int j = 0; j < cols; j++)
                ci[j] = ti[j];
    }
}

/* exp(x) for x in [-87.3, 88]: x = n ln2 + r with |r| <= ln2/2 (Cody-Waite
 * split of ln2), e^r by its degree-7 Taylor polynomial (truncation < 1e-8
 * relative), times 2^n built in the exponent field. About 1-2 ulp. Below
 * -87.3 the result would be subnormal and is flushed to zero. */
static inline __m256 exp_avx2(__m256 x)
{
    const __m256 lo_limit = _mm256_set1_ps(-87.33654f);
    __m256 tiny = _mm256_cmp_ps(x, lo_limit, _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, lo_limit), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
                                  23);
    p = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    return _mm256_andnot_ps(tiny, p);
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
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (int r = 0; r < rows; r++, s += NR) {
        __m256 p0 = exp_avx2(_mm256_fmsub_ps(_mm256_loadu_ps(s), vs, m0));
        __m256 p1 = exp_avx2(_mm256_fmsub_ps(_mm256_loadu_ps(s + 8), vs, m1));
        _mm256_storeu_ps(s, p0);
        _mm256_storeu_ps(s + 8, p1);
        s0 = _mm256_add_ps(s0, p0);
        s1 = _mm256_add_ps(s1, p1);
    }
    _mm256_storeu_ps(colsum, s0);
    _mm256_storeu_ps(colsum + 8, s1);
}

const sd_kernels sd_kernels_avx2 = {
    .name = "avx2",
    .mr = MR,
    .nr = NR,
    .micro = micro_6x16,
    .softmax_cols = softmax_cols_avx2,
};
