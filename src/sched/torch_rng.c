/* PyTorch's CPU generator and torch.randn for float32 tensors (torch 1.13).
 *
 * MT19937 is the reference generator of Matsumoto and Nishimura. The normal
 * draws follow ATen's CPU distribution kernels:
 *
 *  - fewer than 16 elements: each element is normal_distribution<double>,
 *    Box-Muller in double with the sine half cached in the generator, then
 *    rounded to float;
 *  - 16 or more: every uniform of the tensor is drawn first (float32, 24 bits),
 *    then each block of 16 becomes 8 cosine and 8 sine outputs, in float32 with
 *    the Cephes single-precision log and sincos polynomials that torch's AVX2
 *    kernel evaluates. A tensor whose size is not a multiple of 16 gets 16 more
 *    uniforms for its last 16 elements, which are transformed again.
 *
 * torch's AVX2 build lets the compiler fuse a multiply and a following add of
 * those polynomials into one fused multiply-add, and the result depends on it
 * (without the fusion about 1 element in 100 moves by 1-2 ulp): the fused steps
 * are written here as fmaf() and every other operation as its own rounded float
 * operation. Every multiply whose product a compiler could still fuse into a
 * following add is exact or feeds an add of zero, so the numbers are the same
 * whether or not the compiler contracts (checked with gcc and clang, -O0 to -O3,
 * with and without FMA instructions and -ffp-contract=fast). Options that
 * reorder float arithmetic (-ffast-math) do change them and are refused below.
 * float must be IEEE binary32 evaluated in its own precision (FLT_EVAL_METHOD
 * 0), as on x86-64 and aarch64. */
#include "sched/torch_rng.h"

#include <float.h>
#include <math.h>
#include <string.h>

#if defined(__FAST_MATH__)
#error "torch_rng.c must not be compiled with -ffast-math: it changes the drawn numbers"
#endif
#if FLT_EVAL_METHOD != 0
#error "torch_rng.c needs float arithmetic evaluated in float (FLT_EVAL_METHOD 0)"
#endif

/* ---- MT19937 ----------------------------------------------------------------------------- */

#define MT_M 397
#define MT_MATRIX_A 0x9908b0dfu
#define MT_UPPER 0x80000000u
#define MT_LOWER 0x7fffffffu

void sd_torch_rng_seed(sd_torch_rng *g, uint64_t seed)
{
    g->mt[0] = (uint32_t)(seed & 0xffffffffu);
    for (uint32_t j = 1; j < SD_MT_N; j++) {
        uint32_t prev = g->mt[j - 1];
        g->mt[j] = 1812433253u * (prev ^ (prev >> 30)) + j;
    }
    g->index = SD_MT_N;
    g->have_normal = 0;
    g->next_normal = 0.0;
}

static uint32_t mt_mix(uint32_t hi, uint32_t lo, uint32_t far)
{
    uint32_t y = (hi & MT_UPPER) | (lo & MT_LOWER);
    return far ^ (y >> 1) ^ ((y & 1u) ? MT_MATRIX_A : 0u);
}

static void mt_twist(uint32_t *mt)
{
    int i = 0;
    for (; i < SD_MT_N - MT_M; i++)
        mt[i] = mt_mix(mt[i], mt[i + 1], mt[i + MT_M]);
    for (; i < SD_MT_N - 1; i++)
        mt[i] = mt_mix(mt[i], mt[i + 1], mt[i + MT_M - SD_MT_N]);
    mt[SD_MT_N - 1] = mt_mix(mt[SD_MT_N - 1], mt[0], mt[MT_M - 1]);
}

uint32_t sd_torch_rng_u32(sd_torch_rng *g)
{
    if (g->index >= SD_MT_N) {
        mt_twist(g->mt);
        g->index = 0;
    }
    uint32_t y = g->mt[g->index++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* ---- uniforms ---------------------------------------------------------------------------- */

float sd_torch_rng_uniform_f32(sd_torch_rng *g)
{
    /* 24 random bits scaled by 2^-24: exact in float. */
    return (float)(sd_torch_rng_u32(g) & 0xffffffu) * 0x1p-24f;
}

/* 53 random bits of a 64-bit draw (first output high, second low) times 2^-53. */
static double uniform_f64(sd_torch_rng *g)
{
    uint64_t hi = sd_torch_rng_u32(g);
    uint64_t lo = sd_torch_rng_u32(g);
    uint64_t r = (hi << 32) | lo;
    return (double)(r & ((UINT64_C(1) << 53) - 1)) * 0x1p-53;
}

/* ---- the double-precision path (numel < 16) ---------------------------------------------- */

double sd_torch_rng_normal_f64(sd_torch_rng *g)
{
    double ret;
    if (g->have_normal) {
        g->have_normal = 0;
        ret = g->next_normal;
    } else {
        const double pi = 3.14159265358979323846;
        double u1 = uniform_f64(g);
        double u2 = uniform_f64(g);
        double r = sqrt(-2.0 * log(1.0 - u2)); /* 1 - u2 is exact */
        double theta = 2.0 * pi * u1;
        g->next_normal = r * sin(theta);
        g->have_normal = 1;
        ret = r * cos(theta);
    }
    /* torch applies mean + std * x with mean 0, std 1: only -0 changes (to +0). */
    return ret + 0.0;
}

/* ---- the float32 block path (numel >= 16) ------------------------------------------------ */

static float bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* The Cephes constants, declared as double literals rounded to float the way
 * torch's tables are. */
static const float c_sqrthf = (float)0.707106781186547524;
static const float c_log_p[9] = {
    (float)7.0376836292E-2,  (float)-1.1514610310E-1, (float)1.1676998740E-1,
    (float)-1.2420140846E-1, (float)1.4249322787E-1,  (float)-1.6668057665E-1,
    (float)2.0000714765E-1,  (float)-2.4999993993E-1, (float)3.3333331174E-1,
};
static const float c_log_q1 = (float)-2.12194440e-4;
static const float c_log_q2 = (float)0.693359375;

static const float c_minus_dp1 = (float)-0.78515625;
static const float c_minus_dp2 = (float)-2.4187564849853515625e-4;
static const float c_minus_dp3 = (float)-3.77489497744594108e-8;
static const float c_sincof_p0 = (float)-1.9515295891E-4;
static const float c_sincof_p1 = (float)8.3321608736E-3;
static const float c_sincof_p2 = (float)-1.6666654611E-1;
static const float c_coscof_p0 = (float)2.443315711809948E-005;
static const float c_coscof_p1 = (float)-1.388731625493765E-003;
static const float c_coscof_p2 = (float)4.166664568298827E-002;
static const float c_fopi = (float)1.27323954473516; /* 4 / pi */

/* Natural log of x in [2^-24, 1] (the only arguments 1 - u takes): the
 * exponent split, then a degree-9 polynomial in the mantissa offset. */
static float cephes_logf(float x)
{
    uint32_t bits = f32_to_bits(x);
    int32_t expo = (int32_t)(bits >> 23) - 0x7f;
    float m = bits_to_f32((bits & ~0x7f800000u) | 0x3f000000u); /* mantissa in [0.5, 1) */
    float e = (float)expo;
    e = e + 1.0f;

    int below = m < c_sqrthf;
    float keep = below ? m : 0.0f;
    m = m - 1.0f;
    e = e - (below ? 1.0f : 0.0f);
    m = m + keep;

    float z = m * m;
    float y = c_log_p[0];
    for (int k = 1; k < 9; k++)
        y = fmaf(y, m, c_log_p[k]);
    y = y * m;
    float eq1 = e * c_log_q1;
    y = fmaf(y, z, eq1);
    float half_z = z * 0.5f;
    y = y - half_z;
    float sum = m + y;
    return fmaf(e, c_log_q2, sum);
}

/* Sine and cosine of x >= 0 (x < 2 pi here): octant reduction with pi / 4 in
 * three parts, then the two Cephes polynomials. */
static void cephes_sincosf(float x, float *s, float *c)
{
    float scaled = x * c_fopi;
    int32_t j = (int32_t)scaled; /* truncation, x >= 0 */
    j = (j + 1) & ~1;
    float y = (float)j;

    int sin_negative = (j & 4) != 0;
    int cos_negative = ((j - 2) & 4) == 0;
    int use_sin_poly_for_sin = (j & 2) == 0;

    x = fmaf(y, c_minus_dp1, x);
    x = fmaf(y, c_minus_dp2, x);
    x = fmaf(y, c_minus_dp3, x);

    float z = x * x;

    float yc = c_coscof_p0;
    yc = fmaf(yc, z, c_coscof_p1);
    yc = fmaf(yc, z, c_coscof_p2);
    yc = yc * z;
    float half_z = 0.5f * z;
    yc = fmaf(yc, z, -half_z);
    yc = yc + 1.0f;

    float ys = c_sincof_p0;
    ys = fmaf(ys, z, c_sincof_p1);
    ys = fmaf(ys, z, c_sincof_p2);
    ys = ys * z;
    ys = fmaf(ys, x, x);

    /* torch picks each result by masking one polynomial to +0 and adding. */
    float sin_from_s = use_sin_poly_for_sin ? ys : 0.0f;
    float sin_from_c = use_sin_poly_for_sin ? 0.0f : yc;
    float cos_from_s = ys - sin_from_s;
    float cos_from_c = yc - sin_from_c;
    float sv = sin_from_c + sin_from_s;
    float cv = cos_from_c + cos_from_s;
    *s = sin_negative ? -sv : sv;
    *c = cos_negative ? -cv : cv;
}

/* Box-Muller on one block of 16 uniforms, in place: d[k] and d[k + 8] become
 * the cosine and sine outputs of the pair (1 - d[k], d[k + 8]). */
static void normal_block16(float *d)
{
    const float two_pi = (float)(2.0 * 3.14159265358979323846);
    for (int k = 0; k < 8; k++) {
        float a = 1.0f - d[k];
        float b = d[k + 8];
        float lg = cephes_logf(a);
        float radius = sqrtf(-2.0f * lg);
        float theta = two_pi * b;
        float s, c;
        cephes_sincosf(theta, &s, &c);
        float n1 = radius * c;
        float n2 = radius * s;
        /* torch's fmadd with std 1 and mean 0: n + 0 (turns -0 into +0). */
        d[k] = n1 + 0.0f;
        d[k + 8] = n2 + 0.0f;
    }
}

void sd_torch_randn(sd_torch_rng *g, float *out, size_t n)
{
    if (n < 16) {
        for (size_t i = 0; i < n; i++)
            out[i] = (float)sd_torch_rng_normal_f64(g);
        return;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = sd_torch_rng_uniform_f32(g);
    for (size_t i = 0; i + 16 <= n; i += 16)
        normal_block16(out + i);
    if (n % 16 != 0) {
        float *tail = out + n - 16;
        for (size_t i = 0; i < 16; i++)
            tail[i] = sd_torch_rng_uniform_f32(g);
        normal_block16(tail);
    }
}
