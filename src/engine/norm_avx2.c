/* The row kernels of GroupNorm and LayerNorm (see sd_kernels.norm_sum) on
 * 4-double AVX vectors, built with -mavx2 -mfma and used by the AVX2 and
 * AVX-512 sets. Every element goes through the same double operations as
 * in the portable loops (engine/norm.c), which also do the tails, one
 * operation per intrinsic so that no compiler fuses a multiply and an
 * add: the results are the portable set's, bit for bit. The portable loops ran these passes on
 * scalar doubles, 3-5 cycles an element; here they are bound by memory. */
#include "engine/kernels.h"

#include <immintrin.h>

void sd_norm_sum_avx2(const float *x, int n, const double *mean, double *acc)
{
    int c = 0;
    if (mean) {
        for (; c + 8 <= n; c += 8) {
            __m256d d0 = _mm256_cvtps_pd(_mm_loadu_ps(x + c));
            __m256d d1 = _mm256_cvtps_pd(_mm_loadu_ps(x + c + 4));
            d0 = _mm256_sub_pd(d0, _mm256_loadu_pd(mean + c));
            d1 = _mm256_sub_pd(d1, _mm256_loadu_pd(mean + c + 4));
            d0 = _mm256_mul_pd(d0, d0);
            d1 = _mm256_mul_pd(d1, d1);
            _mm256_storeu_pd(acc + c, _mm256_add_pd(_mm256_loadu_pd(acc + c), d0));
            _mm256_storeu_pd(acc + c + 4, _mm256_add_pd(_mm256_loadu_pd(acc + c + 4), d1));
        }
        sd_norm_sum_c(x + c, n - c, mean + c, acc + c);
        return;
    }
    for (; c + 8 <= n; c += 8) {
        __m256d d0 = _mm256_cvtps_pd(_mm_loadu_ps(x + c));
        __m256d d1 = _mm256_cvtps_pd(_mm_loadu_ps(x + c + 4));
        _mm256_storeu_pd(acc + c, _mm256_add_pd(_mm256_loadu_pd(acc + c), d0));
        _mm256_storeu_pd(acc + c + 4, _mm256_add_pd(_mm256_loadu_pd(acc + c + 4), d1));
    }
    sd_norm_sum_c(x + c, n - c, NULL, acc + c);
}

/* ((x - m) * s + b) on four lanes, rounded to float. */
static inline __m128 affine4(const float *x, __m256d m, __m256d s, const float *b)
{
    __m256d t = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x)), m);
    t = _mm256_mul_pd(t, s);
    t = _mm256_add_pd(t, _mm256_cvtps_pd(_mm_loadu_ps(b)));
    return _mm256_cvtpd_ps(t);
}

void sd_norm_affine_avx2(const float *x, int n, const double *mean, const double *scale,
                         const float *beta, float *y)
{
    int c = 0;
    for (; c + 8 <= n; c += 8) {
        __m128 y0 = affine4(x + c, _mm256_loadu_pd(mean + c), _mm256_loadu_pd(scale + c), beta + c);
        __m128 y1 = affine4(x + c + 4, _mm256_loadu_pd(mean + c + 4),
                            _mm256_loadu_pd(scale + c + 4), beta + c + 4);
        _mm_storeu_ps(y + c, y0);
        _mm_storeu_ps(y + c + 4, y1);
    }
    sd_norm_affine_c(x + c, n - c, mean + c, scale + c, beta + c, y + c);
}

void sd_norm_affine1_avx2(const float *x, int n, double mean, double rstd, const float *gamma,
                          const float *beta, float *y)
{
    const __m256d m = _mm256_set1_pd(mean), r = _mm256_set1_pd(rstd);
    int c = 0;
    for (; c + 8 <= n; c += 8) {
        __m256d s0 = _mm256_mul_pd(r, _mm256_cvtps_pd(_mm_loadu_ps(gamma + c)));
        __m256d s1 = _mm256_mul_pd(r, _mm256_cvtps_pd(_mm_loadu_ps(gamma + c + 4)));
        __m128 y0 = affine4(x + c, m, s0, beta + c), y1 = affine4(x + c + 4, m, s1, beta + c + 4);
        _mm_storeu_ps(y + c, y0);
        _mm_storeu_ps(y + c + 4, y1);
    }
    sd_norm_affine1_c(x + c, n - c, mean, rstd, gamma + c, beta + c, y + c);
}
