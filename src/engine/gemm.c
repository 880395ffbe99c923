/* GEMM: weight packing, the blocked macro-kernel shared with the 3x3
 * convolution, kernel-set dispatch and the portable microkernel.
 *
 * Blocking follows the BLIS scheme. B (weights) is packed once at load into
 * nr-column panels, k-major, so any K block of a panel is a contiguous
 * kc x nr slab that stays in L1 while it is swept over the mr-row
 * micro-panels of the packed A block (mc x kc, sized for L2). Partial sums
 * are formed in registers from zero over runs of SD_MICRO_SUB (64) k steps
 * and then added into C: float32 rounding error then grows like
 * sqrt(64 + K/64) rather than sqrt(K), which keeps a 2880-term dot product
 * about 2x closer to the double reference than one long register sum.
 *
 * Threads take independent (m-block, n-block) output tiles and run all K
 * blocks of a tile themselves, so no two threads ever write the same C
 * element and the epilogue can be applied to each micro-tile right after its
 * last K block, while it is still in cache. */
#include "engine/kernels.h"
#include "io/tensorfile.h"

#include <math.h>
#include <string.h>

const float sd_zero_row[SD_KC_MAX];

/* ---- portable microkernel ---- */

#define P_MR 4
#define P_NR 16

/* Sums one run of len k steps for columns [h, h+8) into t (4 x 16 tile):
 * t = (first ? 0 : t) + A B. GCC and Clang get generic 4-float vectors (SSE2,
 * NEON, or scalar code where there is no SIMD): eight accumulators plus
 * operands fit 16 registers, and -O2 keeps them there, which it does not do
 * for an array tile. Other compilers get the plain loops. */
#if defined(__GNUC__)
typedef float sd_v4 __attribute__((vector_size(16)));

static inline sd_v4 v4_load(const float *p)
{
    sd_v4 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static void portable_run(int len, const float *a, const float *b, int h, float (*t)[P_NR],
                         int first)
{
    sd_v4 c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0};
    for (int k = 0; k < len; k++, a += P_MR, b += P_NR) {
        sd_v4 b0 = v4_load(b + h), b1 = v4_load(b + h + 4);
        c00 += a[0] * b0;
        c01 += a[0] * b1;
        c10 += a[1] * b0;
        c11 += a[1] * b1;
        c20 += a[2] * b0;
        c21 += a[2] * b1;
        c30 += a[3] * b0;
        c31 += a[3] * b1;
    }
    const sd_v4 acc[P_MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}};
    for (int i = 0; i < P_MR; i++)
        for (int q = 0; q < 2; q++) {
            sd_v4 v = acc[i][q];
            if (!first)
                v = v4_load(&t[i][h + 4 * q]) + v;
            memcpy(&t[i][h + 4 * q], &v, sizeof v);
        }
}
#else
static void portable_run(int len, const float *a, const float *b, int h, float (*t)[P_NR],
                         int first)
{
    float acc[P_MR][8] = {{0}};
    for (int k = 0; k < len; k++, a += P_MR, b += P_NR)
        for (int i = 0; i < P_MR; i++)
            for (int j = 0; j < 8; j++)
                acc[i][j] += a[i] * b[h + j];
    for (int i = 0; i < P_MR; i++)
        for (int j = 0; j < 8; j++)
            t[i][h + j] = first ? acc[i][j] : t[i][h + j] + acc[i][j];
}
#endif

/* The 16 columns go as two halves of 8; like the AVX2 kernel, the sums
 * restart every SD_MICRO_SUB steps and those partial sums are added up. */
void sd_tile_store(const float *t, int ldt, float *c, int ldc, int accumulate, int rows, int cols,
                   const sd_tile_ep *te)
{
    for (int i = 0; i < rows; i++) {
        float *ci = c + (size_t)i * ldc;
        const float *ti = t + (size_t)i * ldt;
        const float *bias = te ? te->bias : NULL, *g = te ? te->g[i] : NULL,
                    *r = te ? te->r[i] : NULL;
        for (int j = 0; j < cols; j++) {
            float v = accumulate ? ci[j] + ti[j] : ti[j];
            if (bias)
                v += bias[j];
            if (g)
                v += g[j];
            if (r)
                v += r[j];
            ci[j] = v;
        }
    }
}

static void micro_portable(int kc, const float *restrict a, const float *restrict b,
                           float *restrict c, int ldc, int accumulate, int rows, int cols,
                           const sd_tile_ep *te)
{
    float tot[P_MR][P_NR];
    for (int h = 0; h < P_NR; h += 8) {
        int k0 = 0;
        do {
            const int len = kc - k0 < SD_MICRO_SUB ? kc - k0 : SD_MICRO_SUB;
            portable_run(len, a + (size_t)k0 * P_MR, b + (size_t)k0 * P_NR, h, tot, k0 == 0);
            k0 += len;
        } while (k0 < kc);
    }
    sd_tile_store(&tot[0][0], P_NR, c, ldc, accumulate, rows, cols, te);
}

static void softmax_cols_portable(float *restrict s, int rows, float scale, float *restrict m,
                                  float *restrict colsum)
{
    float mx[P_NR], sum[P_NR];
    for (int j = 0; j < P_NR; j++) {
        mx[j] = m[j];
        sum[j] = 0.0f;
    }
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < P_NR; j++) {
            float t = s[(size_t)r * P_NR + j] * scale;
            mx[j] = t > mx[j] ? t : mx[j];
        }
    /* The product of two floats is exact in double, so the argument is
     * rounded once, as an fma would. */
    for (int r = 0; r < rows; r++, s += P_NR)
        for (int j = 0; j < P_NR; j++) {
            float p = expf((float)((double)s[j] * scale - mx[j]));
            s[j] = p;
            sum[j] += p;
        }
    for (int j = 0; j < P_NR; j++) {
        m[j] = mx[j];
        colsum[j] = sum[j];
    }
}

static void silu_portable(const float *x, float *y, size_t n, float a)
{
    /* x / (1 + e^-ax): no cancellation anywhere; large |x| saturates to -0 or x. */
    for (size_t i = 0; i < n; i++)
        y[i] = x[i] / (1.0f + expf(-(a * x[i])));
}

static void gelu_mul_row_portable(const float *h, const float *g, float *y, int n)
{
    /* gelu(g) = g/2 * (1 + erf(g/sqrt2)) = g/2 * erfc(-g/sqrt2): erfc keeps
     * full relative precision where 1 + erf would cancel (g << 0). Out
     * there erfc's relative slope ~2z^2 also magnifies the rounding of
     * z = -g/sqrt2, so that tail (a few % of gates) goes through double. */
    for (int f = 0; f < n; f++) {
        float gf = g[f], e;
        if (gf >= -1.5f)
            e = erfcf(-gf * 0.70710678118654752f);
        else
            e = (float)erfc(-(double)gf * 0.70710678118654752);
        y[f] = h[f] * (0.5f * gf * e);
    }
}

static void gelu_mul_portable(const float *h, const float *g, float *y, int n, int rows, size_t ldy)
{
    for (int r = 0; r < rows; r++)
        gelu_mul_row_portable(h + (size_t)r * n, g + (size_t)r * n, y + (size_t)r * ldy, n);
}

static void pack_panel_portable(const float *const *rows, int len, float *dst)
{
    sd_pack_rows(rows, P_MR, len, dst);
}

static void widen_portable(int type, const uint16_t *src, float *dst, size_t n)
{
    if (type == SD_WT_BF16) {
        for (size_t i = 0; i < n; i++) {
            const uint32_t bits = (uint32_t)src[i] << 16;
            memcpy(dst + i, &bits, sizeof bits);
        }
        return;
    }
    for (size_t i = 0; i < n; i++)
        dst[i] = sd_wt_widen1(SD_WT_F16, src[i]);
}

static const sd_kernels kernels_portable = {
    .name = "portable",
    .mr = P_MR,
    .nr = P_NR,
    .micro = micro_portable,
    .pack_panel = pack_panel_portable,
    .softmax_cols = softmax_cols_portable,
    .silu = silu_portable,
    .gelu_mul = gelu_mul_portable,
    .norm_sum = sd_norm_sum_c,
    .norm_affine = sd_norm_affine_c,
    .norm_affine1 = sd_norm_affine1_c,
    .widen = widen_portable,
};

#if SD_HAVE_X86
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* F16C (CPUID leaf 1, ECX bit 29), which every AVX2 CPU has so far; asked
 * through cpuid.h because not every compiler's __builtin_cpu_supports
 * knows "f16c". */
static int have_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1u);
}

static int have_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && have_f16c();
}

/* AVX-512 F/BW/DQ/VL (plus the AVX2 set it shares code with, FMA and F16C,
 * which its file is built with), and an OS that saves the opmask and all
 * 32 zmm registers on a context switch (XCR0 bits 1, 2, 5, 6, 7). */
static int have_avx512(void)
{
    unsigned a, b, c, d;
    if (!have_avx2() || !__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    if (!(c & bit_OSXSAVE) || !(c & bit_FMA) || !(c & bit_F16C))
        return 0;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    (void)xhi;
    if ((xlo & 0xE6u) != 0xE6u)
        return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    const unsigned need = bit_AVX512F | bit_AVX512DQ | bit_AVX512BW | bit_AVX512VL;
    return (b & need) == need;
}

/* AMX-TILE and AMX-BF16 (CPUID leaf 7: EDX bits 24 and 22) with
 * AVX512-BF16 (every CPU with AMX-BF16 so far has it), tile state
 * enabled in XCR0 (bits 17, 18), and, on Linux, the process's permission
 * to use it (arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA, granted once
 * per process; it is how the kernel learns to save the 8 KiB of tile
 * data on a context switch). Elsewhere: no AMX. */
static int have_amx(void)
{
#if defined(__linux__) && defined(SYS_arch_prctl)
    unsigned a, b, c, d;
    if (!have_avx512() || !__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    if (!(d >> 24 & 1u) || !(d >> 22 & 1u))
        return 0;
    /* AVX512-BF16 (leaf 7 subleaf 1, EAX bit 5): the operands' conversion */
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a >> 5 & 1u))
        return 0;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    (void)xhi;
    if ((xlo >> 17 & 3u) != 3u)
        return 0;
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
#else
    return 0;
#endif
}
#endif

const sd_kernels *sd_kernels_select(const char *force)
{
    if (force) {
        if (strcmp(force, "portable") == 0)
            return &kernels_portable;
#if SD_HAVE_X86
        if (strcmp(force, "avx2") == 0)
            return have_avx2() ? &sd_kernels_avx2 : NULL;
        if (strcmp(force, "avx512") == 0)
            return have_avx512() ? &sd_kernels_avx512 : NULL;
        if (strcmp(force, "amx") == 0)
            return have_amx() ? &sd_kernels_amx : NULL;
#endif
        return NULL;
    }
#if SD_HAVE_X86
    /* The AMX set is the AVX-512 set but for the GEMM (sd_gemm and its
     * GEGLU and concatenated forms). */
    if (have_amx())
        return &sd_kernels_amx;
    /* AVX-512 wherever it is usable: measured on Zen 5 (full-width 512-bit
     * FMA units), 1.5-1.6x the AVX2 set on the SD1.5 UNet. */
    if (have_avx512())
        return &sd_kernels_avx512;
    if (have_avx2())
        return &sd_kernels_avx2;
#endif
    return &kernels_portable;
}

/* ---- weight packing ---- */

/* The weight row behind lane j of packed panel p: row p*nr + j, or with a
 * GEGLU interleave (F > 0) hidden panel q = p/2 for even p, gate panel q
 * for odd p. */
static size_t packed_row(size_t p, int j, int nr, int F)
{
    if (!F)
        return p * (size_t)nr + (size_t)j;
    return (p & 1 ? (size_t)F : 0) + (p >> 1) * (size_t)nr + (size_t)j;
}

const char *sd_wtype_name(int type)
{
    return type == SD_WT_F32    ? "f32"
           : type == SD_WT_F16  ? "f16"
           : type == SD_WT_BF16 ? "bf16"
                                : "?";
}

size_t sd_packed_bytes(int N, size_t K, int nr, int store)
{
    size_t panels = N > 0 && nr > 0 ? ((size_t)N + (size_t)nr - 1) / (size_t)nr : 0, n, bytes;
    if (!sd_mul_size(panels, K, &n) || !sd_mul_size(n, (size_t)nr * sd_wtype_size(store), &bytes))
        return SIZE_MAX;
    return bytes;
}

/* Source value i of a weight row, as float32 (exact for every source type). */
static inline float src_value(const void *row, size_t i, int type)
{
    if (type == SD_WT_F32)
        return ((const float *)row)[i];
    const unsigned char *b = (const unsigned char *)row + 2 * i;
    const uint16_t h = (uint16_t)(b[0] | (b[1] << 8));
    return type == SD_WT_F16 ? sd_f16_to_f32(h) : sd_bf16_to_f32(h);
}

/* Source value i of a weight row stored as `store` (the same type: the bits
 * as they are). */
static inline void put_value(void *dst, size_t d, const void *row, size_t i, int type, int store)
{
    if (store == SD_WT_F32) {
        ((float *)dst)[d] = src_value(row, i, type);
        return;
    }
    uint16_t h;
    if (type == store) {
        const unsigned char *b = (const unsigned char *)row + 2 * i;
        h = (uint16_t)(b[0] | (b[1] << 8));
    } else {
        const float f = src_value(row, i, type);
        h = store == SD_WT_F16 ? sd_f32_to_f16(f) : sd_f32_to_bf16(f);
    }
    ((uint16_t *)dst)[d] = h;
}

/* One panel: each (ci, tap) step writes one contiguous nr-value row of the
 * panel, reading the `valid` weight rows sequentially (up to 16 streams).
 * Inlined per (type, store) pair so the conversions are not decided per
 * value. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void
pack_panel_t(const void *const *wr, int valid, int Cin, int taps, int nr, void *dp, int type,
             int store)
{
    for (int ci = 0; ci < Cin; ci++)
        for (int t = 0; t < taps; t++) {
            const size_t row = ((size_t)t * Cin + ci) * nr, src = (size_t)ci * taps + t;
            for (int j = 0; j < valid; j++)
                put_value(dp, row + j, wr[j], src, type, store);
            for (int j = valid; j < nr; j++) {
                if (store == SD_WT_F32)
                    ((float *)dp)[row + j] = 0.0f;
                else
                    ((uint16_t *)dp)[row + j] = 0;
            }
        }
}

static void pack_panel_any(const void *const *wr, int valid, int Cin, int taps, int nr, void *dp,
                           int type, int store)
{
#define SD_PACK_CASE(T, S)                                                                         \
    case (T)*SD_WT_COUNT + (S): pack_panel_t(wr, valid, Cin, taps, nr, dp, T, S); return;
    switch (type * SD_WT_COUNT + store) {
        SD_PACK_CASE(SD_WT_F32, SD_WT_F32)
        SD_PACK_CASE(SD_WT_F32, SD_WT_F16)
        SD_PACK_CASE(SD_WT_F32, SD_WT_BF16)
        SD_PACK_CASE(SD_WT_F16, SD_WT_F32)
        SD_PACK_CASE(SD_WT_F16, SD_WT_F16)
        SD_PACK_CASE(SD_WT_F16, SD_WT_BF16)
        SD_PACK_CASE(SD_WT_BF16, SD_WT_F32)
        SD_PACK_CASE(SD_WT_BF16, SD_WT_F16)
        SD_PACK_CASE(SD_WT_BF16, SD_WT_BF16)
    default: return;
    }
#undef SD_PACK_CASE
}

static int wtype_ok(int t)
{
    return t == SD_WT_F32 || t == SD_WT_F16 || t == SD_WT_BF16;
}

sdunet_status sd_pack_src(const sd_kernels *kern, const sd_wsrc *w, int N, int Cin, int taps,
                          int geglu_F, int store, sd_packed *out)
{
    memset(out, 0, sizeof *out);
    const int nr = kern->nr;
    size_t K = (size_t)Cin * (size_t)taps;
    if (!w || N <= 0 || Cin <= 0 || taps <= 0 || K > INT32_MAX || nr > 64 || !wtype_ok(w->type) ||
        !wtype_ok(store) || w->parts < 1 || w->parts > SD_WSRC_PARTS || w->rows <= 0 ||
        (int64_t)w->parts * w->rows != N ||
        (geglu_F && (!sd_geglu_packable(geglu_F, nr) || N != 2 * geglu_F)))
        return SDUNET_E_INVALID_ARG;
    for (int p = 0; p < w->parts; p++)
        if (!w->part[p])
            return SDUNET_E_INVALID_ARG;
    const size_t bytes = sd_packed_bytes(N, K, nr, store), esz = sd_wtype_size(store);
    if (bytes == SIZE_MAX)
        return SDUNET_E_NOMEM;
    unsigned char *d = sd_alloc(bytes);
    if (!d)
        return SDUNET_E_NOMEM;
    const size_t panels = ((size_t)N + nr - 1) / nr, row_bytes = K * sd_wtype_size(w->type);
    const void *wr[64];
    for (size_t p = 0; p < panels; p++) {
        int valid = N - (int)(p * nr) < nr ? N - (int)(p * nr) : nr;
        for (int j = 0; j < valid; j++) {
            size_t r = packed_row(p, j, nr, geglu_F);
            wr[j] = (const unsigned char *)w->part[r / (size_t)w->rows] +
                    r % (size_t)w->rows * row_bytes;
        }
        pack_panel_any(wr, valid, Cin, taps, nr, d + p * K * nr * esz, w->type, store);
    }
    out->K = (int)K;
    out->N = N;
    out->nr = nr;
    out->type = store;
    out->data = d;
    out->geglu_F = geglu_F;
    return SDUNET_OK;
}

sdunet_status sd_pack(const sd_kernels *kern, const float *w, int N, int Cin, int taps,
                      sd_packed *out)
{
    sd_wsrc src = {.type = SD_WT_F32, .parts = 1, .rows = N, .part = {w}};
    return sd_pack_src(kern, &src, N, Cin, taps, 0, SD_WT_F32, out);
}

sdunet_status sd_pack_geglu(const sd_kernels *kern, const float *w, int F, int K, sd_packed *out)
{
    memset(out, 0, sizeof *out);
    if (!sd_geglu_packable(F, kern->nr))
        return SDUNET_E_INVALID_ARG;
    sd_wsrc src = {.type = SD_WT_F32, .parts = 1, .rows = 2 * F, .part = {w}};
    return sd_pack_src(kern, &src, 2 * F, K, 1, F, SD_WT_F32, out);
}

void *sd_ws_get(const sd_exec *ex, int slot, size_t bytes)
{
    sd_workspace *ws = ex ? ex->ws : NULL;
    if (!ws || slot < 0 || slot >= SD_WS_SLOTS)
        return sd_alloc(bytes);
    if (ws->limit && bytes > ws->limit)
        return NULL;
    if (ws->cap[slot] < bytes) {
        sd_free(ws->buf[slot]);
        ws->buf[slot] = sd_alloc(bytes);
        ws->cap[slot] = ws->buf[slot] ? bytes : 0;
    }
    return ws->buf[slot];
}

void sd_ws_put(const sd_exec *ex, int slot, void *p)
{
    sd_workspace *ws = ex ? ex->ws : NULL;
    if (!ws || slot < 0 || slot >= SD_WS_SLOTS || p != ws->buf[slot])
        sd_free(p);
}

void sd_workspace_free(sd_workspace *ws)
{
    if (!ws)
        return;
    for (int i = 0; i < SD_WS_SLOTS; i++) {
        sd_free(ws->buf[i]);
        ws->buf[i] = NULL;
        ws->cap[i] = 0;
    }
}

void sd_packed_free(sd_packed *p)
{
    if (!p)
        return;
    sd_free(p->data);
    p->data = NULL;
}

/* ---- A packing ---- */

void sd_pack_rows(const float *const *rows, int mr, int len, float *dst)
{
    /* Fixed-mr cases let the compiler unroll the inner loop into one
     * contiguous store run per k. */
    if (mr == 6) {
        const float *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3], *r4 = rows[4],
                    *r5 = rows[5];
        for (int k = 0; k < len; k++, dst += 6) {
            dst[0] = r0[k];
            dst[1] = r1[k];
            dst[2] = r2[k];
            dst[3] = r3[k];
            dst[4] = r4[k];
            dst[5] = r5[k];
        }
    } else if (mr == 4) {
        const float *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3];
        for (int k = 0; k < len; k++, dst += 4) {
            dst[0] = r0[k];
            dst[1] = r1[k];
            dst[2] = r2[k];
            dst[3] = r3[k];
        }
    } else {
        for (int k = 0; k < len; k++)
            for (int i = 0; i < mr; i++)
                dst[(size_t)k * mr + i] = rows[i][k];
    }
}

/* A = [A1 | A2]: columns [0, K1) from A1 (row stride ld1), the rest from
 * A2 (row stride ld2; NULL when A is just A1). */
typedef struct {
    const float *A1, *A2;
    int K1, ld1, ld2;
} cat_a;

/* The mr row pointers of panel p, at column `col` of `base` (zero rows past
 * `rows`). */
static void panel_rows(const float *base, size_t ld, int m0, int p, int mr, int rows, int col,
                       const float **r)
{
    for (int i = 0; i < mr; i++) {
        int m = p * mr + i;
        r[i] = m < rows ? base + (size_t)(m0 + m) * ld + col : sd_zero_row;
    }
}

/* How many of K steps [k0, k0 + kc) of [A1 | A2] lie in A1 (the rest are
 * in A2). */
static inline int cat_in_a1(const cat_a *s, int k0, int kc)
{
    return k0 >= s->K1 ? 0 : (k0 + kc <= s->K1 ? kc : s->K1 - k0);
}

/* K steps [k0, k0 + kc) of [A1 | A2]: the part in A1, then the part in A2,
 * packed one after the other (a panel is k-major, so the pieces simply
 * follow each other). */
static void pack_cat(const void *src, int m0, int rows, int k0, int kc, const sd_kernels *kern,
                     float *dst)
{
    const cat_a *s = src;
    const int mr = kern->mr, K1 = s->K1;
    const int n1 = cat_in_a1(s, k0, kc), n2 = kc - n1;
    const float *r[16];
    for (int p = 0; p * mr < rows; p++) {
        float *dp = dst + (size_t)p * kc * mr;
        if (n1) {
            panel_rows(s->A1, (size_t)s->ld1, m0, p, mr, rows, k0, r);
            kern->pack_panel(r, n1, dp);
        }
        if (n2) {
            panel_rows(s->A2, (size_t)s->ld2, m0, p, mr, rows, k0 + n1 - K1, r);
            kern->pack_panel(r, n2, dp + (size_t)n1 * mr);
        }
    }
}

/* K steps [k0, k0 + kc) of rows [m0, m0 + rows) of [A1 | A2] as a
 * row-major rows x kc block (the AMX path's copy of A; see
 * sd_gemm_src.gather). */
static void gather_cat(const void *src, int m0, int rows, int k0, int kc, float *dst)
{
    const cat_a *s = src;
    const int K1 = s->K1;
    const int n1 = cat_in_a1(s, k0, kc), n2 = kc - n1;
    for (int i = 0; i < rows; i++, dst += kc) {
        if (n1)
            memcpy(dst, s->A1 + (size_t)(m0 + i) * s->ld1 + k0, sizeof(float) * n1);
        if (n2)
            memcpy(dst + n1, s->A2 + (size_t)(m0 + i) * s->ld2 + (k0 + n1 - K1),
                   sizeof(float) * n2);
    }
}

/* ---- the blocked driver ---- */

#ifndef KC_TARGET
#define KC_TARGET 256 /* B micro-panel kc x 16 floats = 16 KiB: L1 with an A micro-panel */
#endif
#ifndef KC_ONE_BLOCK
#define KC_ONE_BLOCK 320
#endif
#ifndef KC2_TARGET
#define KC2_TARGET 256
#endif
#ifndef KC2_ONE_BLOCK
#define KC2_ONE_BLOCK 256
#endif
/* The AMX product's K blocks: up to 384 (a panel pair's tiles 48 KiB),
 * one block only to 256 (K = 320 as two blocks of 160 keeps the row pair's
 * and the panel pair's tiles in L1 together: 12% faster than one block of
 * 320). One Xeon core, bench_gemm, best of six alternating runs against
 * blocks of at most 256: K = 5760 337 -> 365 GFLOP/s, K = 1280 376 -> 422,
 * K = 768 324 -> 342, GEGLU K = 640-1280 +4-6%. */
#ifndef AMX_KC_TARGET
#define AMX_KC_TARGET 384
#endif
#ifndef AMX_KC_ONE_BLOCK
#define AMX_KC_ONE_BLOCK 256
#endif
#ifndef NC_PANELS_MAX
#define NC_PANELS_MAX 32 /* 512 columns: a 144 x 512 C block is 288 KiB */
#endif
#ifndef MC_TARGET
#define MC_TARGET 144 /* A block mc x kc = 144 KiB: L2 beside the C block */
#endif
#define MR_MAX SD_MR_MAX
#ifndef AMX_MC_TARGET
#define AMX_MC_TARGET 512 /* A block as bfloat16 tiles: 512 x 384 x 3 terms = 1.1 MiB (L2) */
#endif

typedef struct {
    const sd_kernels *kern;
    const sd_gemm_src *a;
    const sd_packed *B;
    float *C;
    int ldc, M, mc, nc, kc, nkb, mblocks;
    int res_in_c; /* the residual is C itself: accumulate onto it from the first K block */
    int micro2;   /* run two panels at a time with kern->micro2 */
    const sd_epilogue *ep;
    float *scratch; /* per thread: mc x kc floats (A), then kc x nr (B widened; 2 with micro2) */
    size_t scratch_per_thread, bconv_off;
    /* GEGLU mode (geglu_y set): C is per-thread scratch, an mc x nr block
     * per panel (see gemm_task), gated into y = h * gelu(g) per panel pair. */
    float *geglu_y;
    int ldy;
    float *cblock;
    size_t cblock_per_thread;
    /* The AMX product, else NULL: per thread, the A block's tiles at the
     * start of scratch, a panel pair's at amx_b_off (floats), an mc x kc
     * float block at amx_f_off (A gathered for the tiles, or A's float
     * micro-panels for products with special values), two widened 16-bit
     * panels at bconv_off; panels at most np_max at a time. */
    const sd_amx_kernels *amx;
    size_t amx_b_off, amx_f_off;
    int np_max;
} gemm_job;

/* y[m0 + i][f0 .. f0 + nr) = h * gelu(g) for i < rows, from the hidden
 * block h (rows x nr, contiguous) and the gate block at h + ps, gated
 * straight into y in one gelu_mul call. */
static void geglu_pair(const gemm_job *j, const float *h, size_t ps, int rows, int m0, int f0)
{
    j->kern->gelu_mul(h, h + ps, j->geglu_y + (size_t)m0 * j->ldy + f0, j->kern->nr, rows,
                      (size_t)j->ldy);
}

/* The epilogue terms of the tile at rows m.. m + rows, column n. */
static void tile_ep(const gemm_job *j, int m, int rows, int n, sd_tile_ep *te)
{
    const sd_epilogue *ep = j->ep;
    const int nr = j->kern->nr, N = j->B->N, F = j->B->geglu_F;
    /* With a GEGLU interleave the bias is in [hidden | gate] order. */
    te->bias =
        ep->bias ? ep->bias + (F ? packed_row((size_t)(n / nr), 0, nr, F) : (size_t)n) : NULL;
    for (int i = 0; i < rows; i++) {
        te->g[i] =
            ep->group_add ? ep->group_add + (size_t)((m + i) / ep->group_rows) * N + n : NULL;
        te->r[i] = ep->residual ? ep->residual + (size_t)(m + i) * ep->ld_res + n : NULL;
    }
}

/* The rows [m0, m0 + mrows) and columns [n0, n0 + ncols) of task t. */
static void task_tile(const gemm_job *j, int64_t t, int *m0, int *mrows, int *n0, int *ncols)
{
    const int mb = (int)(t % j->mblocks), nb = (int)(t / j->mblocks);
    *m0 = mb * j->mc;
    *mrows = j->M - *m0 < j->mc ? j->M - *m0 : j->mc;
    *n0 = nb * j->nc;
    *ncols = j->B->N - *n0 < j->nc ? j->B->N - *n0 : j->nc;
}

/* Panel n / nr of B, K steps [k0, k0 + kc), as float32: in place, or
 * widened from 16-bit values into w (kc x nr floats). */
static const float *b_slab(const gemm_job *j, int n, int k0, int kc, float *w)
{
    const int nr = j->kern->nr;
    const size_t off = (size_t)(n / nr) * j->B->K * nr + (size_t)k0 * nr;
    if (j->B->type == SD_WT_F32)
        return (const float *)j->B->data + off;
    j->kern->widen(j->B->type, (const uint16_t *)j->B->data + off, w, (size_t)kc * nr);
    return w;
}

/* Where the tile at task row im (C row m) of panel jn / nr + h (column n)
 * goes: C itself, or in GEGLU mode the task's product block (cblock; with
 * pairwise, only the pair in progress). */
static float *c_tile(const gemm_job *j, float *cblock, int pairwise, int jn, int h, int im, int m,
                     int n)
{
    const int nr = j->kern->nr;
    if (!cblock)
        return j->C + (size_t)m * j->ldc + n;
    const int q = pairwise ? (jn / nr + h) % 2 : jn / nr + h;
    return cblock + (size_t)q * j->mc * nr + (size_t)im * nr;
}

/* GEGLU with several K blocks: each panel pair (2q, 2q+1) of the task's
 * product block gated into y columns n0/2 + q*nr.. */
static void geglu_task_block(const gemm_job *j, const float *cblock, int m0, int mrows, int n0,
                             int ncols)
{
    const int nr = j->kern->nr;
    const size_t ps = (size_t)j->mc * nr;
    for (int jn = 0; jn < ncols; jn += 2 * nr)
        geglu_pair(j, cblock + (size_t)(jn / nr) * ps, ps, mrows, m0, (n0 + jn) / 2);
}

/* Panels n[0], n[1] (np of them; B K block at bp[h]) of the task's rows
 * [m0, m0 + mrows) on the float kernels, from A's micro-panels at apack:
 * one K block of kc steps, with the epilogue on the last. */
static void float_panels(const gemm_job *j, const float *apack, int kc, int np, const int n[2],
                         const int cols[2], const float *const bp[2], int m0, int mrows, int jn,
                         int last, int accumulate, float *cblock, int pairwise)
{
    const sd_kernels *kern = j->kern;
    const int mr = kern->mr, nr = kern->nr;
    const int has_ep = j->ep->bias || j->ep->group_add || j->ep->residual;
    sd_tile_ep te[2];
    for (int im = 0; im < mrows; im += mr) {
        const int m = m0 + im, rows = mrows - im < mr ? mrows - im : mr;
        const float *ap = apack + (size_t)(im / mr) * kc * mr;
        const int ldc = cblock ? nr : j->ldc;
        float *c[2];
        for (int h = 0; h < np; h++)
            c[h] = c_tile(j, cblock, pairwise, jn, h, im, m, n[h]);
        /* The epilogue is added as the microkernel stores the tile (a
         * residual aliasing C is read before C is written). */
        const int with_ep = last && has_ep;
        for (int h = 0; with_ep && h < np; h++)
            tile_ep(j, m, rows, n[h], &te[h]);
        if (np == 2 && kern->micro2)
            kern->micro2(kc, ap, bp, c, ldc, accumulate, rows, cols, with_ep ? te : NULL);
        else
            for (int h = 0; h < np; h++)
                kern->micro(kc, ap, bp[h], c[h], ldc, accumulate, rows, cols[h],
                            with_ep ? &te[h] : NULL);
    }
}

/* gemm_task on the AMX tile unit: per K block, the task's rows of A are
 * split into bfloat16 tiles once, each panel pair of B once, and the pair
 * is swept over the rows 32 at a time (amx->block). A pair whose A block
 * or B panels hold a value the split cannot (infinity, NaN, |x| >= 3.39e38)
 * runs on the float kernels instead, so special values propagate as in
 * float32 arithmetic. */
static void gemm_task_amx(const gemm_job *j, int64_t task, int thread)
{
    const sd_kernels *kern = j->kern;
    const sd_amx_kernels *amx = j->amx;
    const int nr = kern->nr, K = j->B->K, N = j->B->N;
    int m0, mrows, n0, ncols;
    task_tile(j, task, &m0, &mrows, &n0, &ncols);
    const int has_ep = j->ep->bias || j->ep->group_add || j->ep->residual;
    float *base = j->scratch + (size_t)thread * j->scratch_per_thread;
    uint16_t *atiles = (uint16_t *)base, *btiles = (uint16_t *)(base + j->amx_b_off);
    float *fa = base + j->amx_f_off, *bconv = base + j->bconv_off;
    const int nrt = (mrows + 15) / 16; /* a last block of 16 rows or fewer runs one tile */
    float *cblock = j->geglu_y ? j->cblock + (size_t)thread * j->cblock_per_thread : NULL;
    const int pairwise = cblock && j->nkb == 1;
    const size_t ps = (size_t)j->mc * nr;
    sd_tile_ep te[4];

    amx->begin();
    for (int kb = 0; kb < j->nkb; kb++) {
        const int k0 = kb * j->kc, kc = K - k0 < j->kc ? K - k0 : j->kc, nkt = (kc + 31) / 32;
        const int last = kb == j->nkb - 1, accumulate = kb > 0 || j->res_in_c;
        const size_t tile_k = (size_t)nkt * 512; /* one row tile's or panel's k tiles */
        const float *arows = fa;                 /* A in place, or gathered into fa */
        size_t lda = (size_t)kc;
        if (j->a->rows) {
            arows = j->a->rows + (size_t)m0 * j->a->ld + k0;
            lda = (size_t)j->a->ld;
        } else {
            j->a->gather(j->a->src, m0, mrows, k0, kc, fa);
        }
        const int a_special = amx->pack_a(arows, lda, mrows, kc, nrt, atiles);
        int fa_panels = 0; /* fa holds A's float micro-panels */
        for (int jn = 0, np; jn < ncols; jn += np * nr) {
            np = j->np_max == 2 && jn + nr < ncols ? 2 : 1;
            int n[2], cols[2] = {0, 0}, special = a_special;
            const uint16_t *bt[2];
            const float *bp[2];
            for (int h = 0; h < np; h++) {
                n[h] = n0 + jn + h * nr;
                cols[h] = N - n[h] < nr ? N - n[h] : nr;
                bt[h] = btiles + (size_t)h * SD_AMX_TERMS * tile_k;
                bp[h] = b_slab(j, n[h], k0, kc, bconv + (size_t)h * kc * nr);
                if (!a_special)
                    special |= amx->pack_b(bp[h], kc, (uint16_t *)bt[h]);
            }
            if (special) {
                if (!fa_panels)
                    j->a->pack(j->a->src, m0, mrows, k0, kc, kern, fa);
                fa_panels = 1;
                float_panels(j, fa, kc, np, n, cols, bp, m0, mrows, jn, last, accumulate, cblock,
                             pairwise);
            } else {
                if (np == 1) { /* a lone last panel: the second is computed and not stored */
                    n[1] = n[0];
                    bt[1] = bt[0];
                }
                for (int im = 0; im < mrows; im += 32) {
                    const int m = m0 + im, rows = mrows - im < 32 ? mrows - im : 32;
                    const int ldc = cblock ? nr : j->ldc;
                    float *c[2];
                    for (int h = 0; h < 2; h++)
                        c[h] = c_tile(j, cblock, pairwise, jn, h, im, m, n[h]);
                    const int with_ep = last && has_ep;
                    for (int half = 0; with_ep && half < 2 && 16 * half < rows; half++)
                        for (int h = 0; h < np; h++)
                            tile_ep(j, m + 16 * half, rows - 16 * half < 16 ? rows - 16 * half : 16,
                                    n[h], &te[2 * half + h]);
                    amx->block(nkt, atiles + (size_t)(im / 16) * tile_k, tile_k,
                               (size_t)nrt * tile_k, bt, tile_k, c, ldc, accumulate, rows, cols,
                               with_ep ? te : NULL);
                }
            }
            if (pairwise && (jn / nr + np - 1) % 2 == 1)
                geglu_pair(j, cblock, ps, mrows, m0, (n0 + jn + (np - 2) * nr) / 2);
        }
    }
    amx->end();
    if (cblock && !pairwise)
        geglu_task_block(j, cblock, m0, mrows, n0, ncols);
}

static void gemm_task(void *ctx, int64_t task, int thread)
{
    const gemm_job *j = ctx;
    if (j->amx) {
        gemm_task_amx(j, task, thread);
        return;
    }
    const sd_kernels *kern = j->kern;
    const int nr = kern->nr;
    const int K = j->B->K, N = j->B->N;
    int m0, mrows, n0, ncols;
    task_tile(j, task, &m0, &mrows, &n0, &ncols);
    float *apack = j->scratch + (size_t)thread * j->scratch_per_thread;
    /* 16-bit panels: each kc x nr block is widened here once (two with
     * micro2) and swept over all the task's mrows / mr row tiles from L1. */
    float *bconv = apack + j->bconv_off;
    float *cblock = j->geglu_y ? j->cblock + (size_t)thread * j->cblock_per_thread : NULL;
    /* GEGLU: each panel's products are held as one contiguous mc x nr
     * block, and a hidden/gate pair is gated straight into y, one gelu_mul
     * call per pair (no staging copy: 3-5% of a GEGLU; one call per row
     * instead left each row's GELU latency exposed: ~25% slower GELU). With one K block a pair
     * is complete as soon as its gate panel is, so only that pair is held
     * (in L1); with several, the whole task's block. */
    const int pairwise = cblock && j->nkb == 1;
    const size_t ps = (size_t)j->mc * nr;

    for (int kb = 0; kb < j->nkb; kb++) {
        const int k0 = kb * j->kc, kc = K - k0 < j->kc ? K - k0 : j->kc;
        const int last = kb == j->nkb - 1, accumulate = kb > 0 || j->res_in_c;
        j->a->pack(j->a->src, m0, mrows, k0, kc, kern, apack);
        /* Panels one at a time, or two at a time (micro2) while two are left
         * in the block. A GEGLU block has whole hidden/gate pairs, so its
         * pairs of panels are those pairs. */
        for (int jn = 0, np; jn < ncols; jn += np * nr) {
            np = j->micro2 && jn + nr < ncols ? 2 : 1;
            int n[2], cols[2];
            const float *bp[2];
            for (int h = 0; h < np; h++) {
                n[h] = n0 + jn + h * nr;
                cols[h] = N - n[h] < nr ? N - n[h] : nr;
                bp[h] = b_slab(j, n[h], k0, kc, bconv + (size_t)h * kc * nr);
            }
            float_panels(j, apack, kc, np, n, cols, bp, m0, mrows, jn, last, accumulate, cblock,
                         pairwise);
            /* the hidden/gate pair ending at panel jn + np - 1 is done */
            if (pairwise && (jn / nr + np - 1) % 2 == 1)
                geglu_pair(j, cblock, ps, mrows, m0, (n0 + jn + (np - 2) * nr) / 2);
        }
    }
    if (cblock && !pairwise)
        geglu_task_block(j, cblock, m0, mrows, n0, ncols);
}

/* The GEMM without scratch memory: on the calling thread, from blocks on
 * the stack, one micro-panel of rows (float kernels) or one row tile (AMX,
 * one panel at a time) per task. The K blocks, and so every result, are
 * the normal path's: slower, never different. Out of line, so that only
 * this path holds the stack blocks. */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static void
gemm_lean(gemm_job *j, int M, int npanels, int nblocks)
{
    const int nr = j->kern->nr;
    /* AMX: a row tile and a panel of tiles (SD_KC_MAX / 32 k tiles of each
     * term), the row tile's float block and one widened panel; float: one
     * micro-panel and one widened panel. */
    enum { TILES = SD_KC_MAX / 32 * 256 * SD_AMX_TERMS };
    _Alignas(64) float stack[2 * TILES + 2 * 16 * SD_KC_MAX];
    _Alignas(64) float stack_c[MR_MAX * 2 * 16];
    j->mc = j->amx ? 16 : j->kern->mr;
    j->mblocks = (M + j->mc - 1) / j->mc;
    j->scratch = stack;
    if (j->amx) {
        j->amx_b_off = TILES;
        j->amx_f_off = 2 * TILES;
        j->bconv_off = 2 * TILES + 16 * SD_KC_MAX;
        j->np_max = 1;
    } else {
        j->bconv_off = (size_t)MR_MAX * SD_KC_MAX; /* 64-byte aligned */
        j->micro2 = 0;                             /* room for one widened panel */
    }
    if (j->geglu_y) {
        j->nc = 2 * nr;
        nblocks = npanels / 2;
        j->cblock = stack_c;
        j->cblock_per_thread = 0;
    }
    sd_pool_run(NULL, (int64_t)j->mblocks * nblocks, gemm_task, j);
}

/* sd_gemm_run, or with geglu_y the GEGLU mode of sd_gemm_geglu. */
static void gemm_drive(const sd_exec *ex, int M, const sd_gemm_src *a, const sd_packed *B, float *C,
                       int ldc, const sd_epilogue *ep, float *geglu_y, int ldy)
{
    const sd_kernels *kern = ex->kern;
    if (M <= 0 || B->N <= 0)
        return;
    /* Internal invariant, not input validation: the model packs and runs
     * with one kernel set, and packs GEGLU weights only for the fused
     * product, so only a bug in the library gets here. It is reported
     * through ex->fault (the forward then fails) instead of computing
     * garbage. */
    if (B->nr != kern->nr || kern->mr > MR_MAX || kern->nr > 16 || !B->geglu_F != !geglu_y ||
        (B->type != SD_WT_F32 && B->type != SD_WT_F16 && B->type != SD_WT_BF16)) {
        sd_exec_fault(ex);
        return;
    }
    static const sd_epilogue no_ep;
    const int mr = kern->mr, nr = kern->nr, K = B->K, N = B->N;
    const int threads = sd_pool_size(ex->pool);

    gemm_job j = {.kern = kern, .a = a, .B = B, .C = C, .ldc = ldc, .M = M, .ep = ep ? ep : &no_ep};
    /* Equal K blocks no longer than KC_TARGET: no short tail block. Up to
     * KC_ONE_BLOCK, one block: a 20 KiB B micro-panel still fits L1 beside
     * the A micro-panel, and C is stored once instead of twice (K = 320, the
     * UNet's most common projection depth: +4% measured). Two panels at a
     * time (micro2) keep one block only to KC2_ONE_BLOCK, except in GEGLU
     * mode: one K block lets it gate each hidden/gate pair as soon as it is
     * done, from L1, instead of holding the task's whole C block (the
     * 64x64 level's K = 320 feed-forward: +5-8% on one thread, +3% on two,
     * though the two B panels and the A micro-panel then overflow L1). */
    j.micro2 = kern->micro2 != NULL;
    /* The AMX product where the set has one and A is one matrix read in
     * place or gathered: six products in the exact mode (as accurate as
     * the float kernels), five in the fast mode (see gemm_amx.c). B's
     * tiles are sized for three terms in both. Its m blocks are taller
     * (whole 32-row tile pairs): each panel pair is split into bfloat16
     * tiles once per block and K block, and swept over the block's rows
     * (a pair's tiles are 72 KiB at kc = 384: from L2 more than L1). */
    j.amx = kern->amx && (a->rows || a->gather) ? kern->amx : NULL;
    if (j.amx && ex->fast && kern->amx_fast)
        j.amx = kern->amx_fast;
    j.np_max = 2;
    int kc_one = j.micro2 && !geglu_y ? KC2_ONE_BLOCK : KC_ONE_BLOCK;
    int kc_target = j.micro2 ? KC2_TARGET : KC_TARGET;
    if (j.amx) { /* GEGLU keeps one block to KC_ONE_BLOCK, as above */
        kc_one = geglu_y ? KC_ONE_BLOCK : AMX_KC_ONE_BLOCK;
        kc_target = AMX_KC_TARGET;
    }
    j.nkb = K > kc_one ? (K + kc_target - 1) / kc_target : 1;
    j.kc = K > 0 ? (K + j.nkb - 1) / j.nkb : 0;
    if (j.kc > SD_KC_MAX)
        j.kc = SD_KC_MAX;
    /* A residual that is C itself would be overwritten by the first K block's
     * partial sums; with several blocks, start from it instead (the sum is
     * then residual + acc + bias + group_add: same accuracy, other order). */
    sd_epilogue ep_local;
    if (j.nkb > 1 && j.ep->residual && j.ep->residual == C && j.ep->ld_res == ldc) {
        ep_local = *j.ep;
        ep_local.residual = NULL;
        j.ep = &ep_local;
        j.res_in_c = 1;
    }

    const int mstep = j.amx ? 32 : mr, mc_target = j.amx ? AMX_MC_TARGET : MC_TARGET;
    /* m blocks: about mc_target rows, a multiple of mstep, all the same size;
     * with few blocks, their count is rounded up to a multiple of the thread
     * count so the last wave of tiles is not half empty. */
    int mblocks = (M + mc_target - 1) / mc_target;
    if (threads > 1 && mblocks > 1 && mblocks < 16 * threads)
        mblocks = (mblocks + threads - 1) / threads * threads;
    int mc = ((M + mblocks - 1) / mblocks + mstep - 1) / mstep * mstep;
    /* Rounding mc up to whole panels can lose a block (M = 4096 on two
     * threads: 30 blocks of 137 rows became 29 of 144); while that leaves
     * the count off a multiple of the threads, take more blocks. */
    for (int want = mblocks;
         threads > 1 && mblocks > 1 && want < 16 * threads && ((M + mc - 1) / mc) % threads != 0;) {
        want += threads;
        mc = ((M + want - 1) / want + mstep - 1) / mstep * mstep;
    }
    mblocks = (M + mc - 1) / mc;
    /* n blocks: all of N unless that leaves threads idle; then split N into
     * whole panels until there are ~3 tiles per thread. */
    int npanels = (N + nr - 1) / nr;
    int nblocks = 1;
    if (threads > 1 && mblocks < 3 * threads) {
        nblocks = (3 * threads + mblocks - 1) / mblocks;
        if (nblocks > npanels)
            nblocks = npanels;
    }
    /* With several K blocks, C is read and written once per block: keep a
     * tile's C block (mc x nc) near L2 by splitting wide N (q|k|v and GEGLU
     * projections: N = 1920-10240), at the cost of packing A once per n block. */
    if (j.nkb > 1 && (npanels + nblocks - 1) / nblocks > NC_PANELS_MAX)
        nblocks = (npanels + NC_PANELS_MAX - 1) / NC_PANELS_MAX;
    int ppb = (npanels + nblocks - 1) / nblocks;
    if (geglu_y) /* whole hidden/gate panel pairs (npanels is even) */
        ppb += ppb & 1;
    nblocks = (npanels + ppb - 1) / ppb;
    j.mc = mc;
    j.mblocks = mblocks;
    j.nc = ppb * nr;

    /* Per-thread A block (and in GEGLU mode product block). If that
     * allocation fails, gemm_lean runs it without. */
    j.geglu_y = geglu_y;
    j.ldy = ldy;
    const size_t kc1 = (size_t)(j.kc > 0 ? j.kc : 1);
    const size_t bconv = B->type != SD_WT_F32 ? kc1 * nr * 2 : 0;
    j.bconv_off = ((size_t)mc * kc1 + 15) & ~(size_t)15;
    j.scratch_per_thread = (j.bconv_off + bconv + 15) & ~(size_t)15;
    if (j.amx) { /* bfloat16 tiles of 512 values, SD_AMX_TERMS terms: 256 floats each */
        const size_t tiles_k = (kc1 + 31) / 32 * 256 * SD_AMX_TERMS;
        j.amx_b_off = (size_t)(mc + 31) / 32 * 2 * tiles_k;
        j.amx_f_off = j.amx_b_off + 2 * tiles_k;
        j.bconv_off = j.amx_f_off + (size_t)mc * kc1;
        j.scratch_per_thread = (j.bconv_off + bconv + 15) & ~(size_t)15;
    }
    j.scratch = sd_ws_get(ex, 0, j.scratch_per_thread * threads * sizeof(float));
    j.cblock_per_thread = ((size_t)mc * (j.nkb == 1 ? 2 * nr : j.nc) + 15) & ~(size_t)15;
    j.cblock = geglu_y ? sd_ws_get(ex, 6, j.cblock_per_thread * threads * sizeof(float)) : NULL;
    if (!j.scratch || (geglu_y && !j.cblock)) {
        sd_ws_put(ex, 0, j.scratch);
        sd_ws_put(ex, 6, j.cblock);
        gemm_lean(&j, M, npanels, nblocks);
        return;
    }
    sd_pool_run(ex->pool, (int64_t)j.mblocks * nblocks, gemm_task, &j);
    sd_ws_put(ex, 0, j.scratch);
    sd_ws_put(ex, 6, j.cblock);
}

void sd_gemm_run(const sd_exec *ex, int M, const sd_gemm_src *a, const sd_packed *B, float *C,
                 int ldc, const sd_epilogue *ep)
{
    gemm_drive(ex, M, a, B, C, ldc, ep, NULL, 0);
}

void sd_gemm_cat(const sd_exec *ex, int M, const float *A1, int K1, const float *A2, int K2,
                 const sd_packed *B, float *C, int ldc, const sd_epilogue *ep)
{
    cat_a s = {A1, A2, K1, K1, K2};
    sd_gemm_src src = {pack_cat, &s, A2 ? NULL : A1, K1, A2 ? gather_cat : NULL};
    sd_gemm_run(ex, M, &src, B, C, ldc, ep);
}

void sd_gemm_geglu(const sd_exec *ex, int M, const float *A, int lda, const sd_packed *B,
                   const float *bias, float *y, int ldy)
{
    cat_a s = {A, NULL, B->K, lda, 0};
    sd_gemm_src src = {pack_cat, &s, A, lda, NULL};
    sd_epilogue ep = {.bias = bias};
    gemm_drive(ex, M, &src, B, NULL, 0, &ep, y, ldy);
}

void sd_gemm(const sd_exec *ex, int M, const float *A, int lda, const sd_packed *B, float *C,
             int ldc, const sd_epilogue *ep)
{
    cat_a s = {A, NULL, B->K, lda, 0};
    sd_gemm_src src = {pack_cat, &s, A, lda, NULL};
    sd_gemm_run(ex, M, &src, B, C, ldc, ep);
}
