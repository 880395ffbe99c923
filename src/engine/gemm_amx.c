/* AMX tile kernels for the GEMM (Intel Sapphire Rapids and later:
 * AMX-TILE and AMX-BF16, with AVX512-BF16). Compiled with the AVX-512
 * flags plus -mamx-tile -mamx-bf16 -mavx512bf16 on x86-64 only, reached
 * through the "amx" kernel set (gemm_avx512.c) after a CPUID, XGETBV and
 * permission check (gemm.c), in the exact and the fast mode.
 *
 * The tile unit multiplies bfloat16 (8-bit significand) pairs into float32
 * sums. Each float32 operand x is split into three bfloat16 terms,
 * hi = x rounded to nearest even, mid = x - hi rounded likewise and
 * lo = x - hi - mid rounded likewise (the differences are exact in
 * float32, and the three terms hold x's 24 significant bits), and a
 * product a*b is summed from the six term products of order 2^-16 and
 * above, smallest first: lo*hi, mid*hi, mid*mid, hi*mid, hi*lo, hi*hi (the
 * dropped mid*lo, lo*mid and lo*lo are below 2^-24 of the product). Every
 * product of two bfloat16 values is exact in float32 and the tile unit
 * adds them in float32, so the result is as accurate as a float32 GEMM's
 * (test_gemm_amx: worst relative L2 1.8e-7 against double; sd15-64 in
 * the exact mode 1.12e-6, on the AVX-512 kernels 1.14e-6). One Xeon core,
 * sdunet bench: the linear layers 1.83-1.94 s on the AVX-512 kernels,
 * 1.29-1.42 s here.
 *
 * The fast mode (sd_amx_kernels_bf16x5) leaves out hi*lo: B (the weights)
 * in two terms, 16 significant bits, five products in twelve tile loads
 * and a third less splitting of B. test_gemm_amx: worst 3.1e-6 against
 * double; sd15-64 in the fast mode 1.9e-6 -> 4.5e-6 (bar 2e-5), the
 * pipeline images 0 to 4 of 1024 pixels off by one against the exact
 * mode's (bar 0.5%); sdunet bench --fast: linear layers 1.26-1.36 ->
 * 1.06-1.11 s. With two terms each and three products (hi*hi + hi*lo +
 * lo*hi) the error was ~4e-6 per product, and one test image had 6 of its
 * 1024 pixels off: over the bar.
 *
 * What the split cannot hold, the float kernels compute: the packers
 * report an infinity, a NaN or a value that rounds to infinity in hi
 * (|x| >= 3.39e38) in their A block or B panel, and gemm.c runs that
 * product on the float kernels, so special values come out as float32
 * arithmetic gives them (an infinite operand would otherwise meet a zero
 * term: NaN). Results do not depend on scratch memory (the fallback runs
 * this unit too, one row tile at a time) nor on the form of the product
 * (fused GEGLU, concatenated A: the same K blocks, the same tiles).
 * Subnormal bfloat16 terms are read as zero by the tile unit: a relative
 * change below 2^-126 of the largest term, and a float32 subnormal
 * operand counts as zero (the float kernels keep it: ~1e-38 apart).
 *
 * Tiles are 16 rows of 64 bytes: A tiles 16 rows x 32 k values, B tiles
 * 16 pairs of k rows x 16 columns with each pair interleaved (the VNNI
 * layout the tile product expects), C tiles 16 x 16 floats. A block of C
 * is 32 x 32 (two A tiles, two B panels, four C tiles), which keeps the
 * tile unit busy with four independent sums. */
#include "engine/kernels.h"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define TILE_ELEMS 512 /* 16 rows of 32 bfloat16 values: 1 KiB */

/* The palette 1 configuration: eight 16 x 64-byte tiles. Tiles 0-3 hold
 * C, 4-5 the A row tiles, 6-7 the B panels. Per thread, so loaded at the
 * start of each task and released at its end. (A constant: GCC 12 drops
 * the stores of a configuration built on the stack before ldtilecfg.) */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;
static const _Alignas(64) tile_config tile_cfg = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

static void amx_begin(void)
{
    _tile_loadconfig(&tile_cfg);
}

static void amx_end(void)
{
    _tile_release();
}

/* x rounded to the nearest bfloat16 (ties to even), as a float32 whose
 * low 16 bits are zero. */
static inline __m512i round_bf16(__m512i x)
{
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    x = _mm512_add_epi32(x, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
    return _mm512_and_si512(x, _mm512_set1_epi32((int)0xFFFF0000u));
}

/* The leading bfloat16 term of x as a float32 (low half zero), and the
 * remainder x - hi, exact in float32: split again, it gives mid and its
 * own remainder, whose rounding to bfloat16 is lo. */
static inline __m512 split_hi(__m512 x, __m512 *rest)
{
    const __m512 hi = _mm512_castsi512_ps(round_bf16(_mm512_castps_si512(x)));
    *rest = _mm512_sub_ps(x, hi);
    return hi;
}

/* Two float32 vectors as 32 bfloat16 values in order (x0's, then x1's),
 * rounded to nearest even by the AVX512-BF16 conversion (which reads and
 * writes subnormals as zero, as the tile unit reads them anyway). */
static inline __m512i to_bf16(__m512 x0, __m512 x1)
{
    return (__m512i)_mm512_cvtne2ps_pbh(x1, x0);
}

/* Lanes of x whose split would not hold it: infinities, NaN, and values
 * that round to infinity in hi (|x| >= 0x7F7F8000 as bits, 3.39e38). */
static inline __mmask16 special_lanes(__m512 x)
{
    const __m512i mag = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7FFFFFFF));
    return _mm512_cmpge_epu32_mask(mag, _mm512_set1_epi32(0x7F7F8000));
}

static inline __mmask16 head_mask(int n)
{
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

/* Rows [0, rows) of A (row stride lda), k values [0, kc), as bfloat16 tiles:
 * tile (c, t, kt) at dst + ((c*nrt + t)*nkt + kt) * TILE_ELEMS holds the
 * term c (0: hi, 1: mid, 2: lo) of rows 16t.. 16t+15 and k values
 * 32kt.. 32kt+31; rows past `rows` (up to 16 nrt) and k values past kc are
 * zero. */
static int amx_pack_a(const float *a, size_t lda, int rows, int kc, int nrt, uint16_t *dst)
{
    const int nkt = (kc + 31) / 32;
    __mmask16 special = 0;
    const size_t cs = (size_t)nrt * nkt * TILE_ELEMS;
    for (int t = 0; t < nrt; t++)
        for (int i = 0; i < 16; i++) {
            const int m = 16 * t + i;
            uint16_t *d = dst + (size_t)t * nkt * TILE_ELEMS + 32 * i;
            if (m >= rows) {
                for (int kt = 0; kt < nkt; kt++)
                    for (int c = 0; c < SD_AMX_TERMS; c++)
                        memset(d + c * cs + (size_t)kt * TILE_ELEMS, 0, 64);
                continue;
            }
            const float *ar = a + (size_t)m * lda;
            for (int kt = 0; kt < nkt; kt++, d += TILE_ELEMS) {
                const int k = 32 * kt;
                __m512 r0, r1, s0, s1;
                const __m512 x0 = _mm512_maskz_loadu_ps(head_mask(kc - k), ar + k),
                             x1 = _mm512_maskz_loadu_ps(head_mask(kc - k - 16), ar + k + 16);
                special |= special_lanes(x0) | special_lanes(x1);
                const __m512 h0 = split_hi(x0, &r0), h1 = split_hi(x1, &r1);
                const __m512 m0 = split_hi(r0, &s0), m1 = split_hi(r1, &s1);
                _mm512_store_si512(d, to_bf16(h0, h1));
                _mm512_store_si512(d + cs, to_bf16(m0, m1));
                _mm512_store_si512(d + 2 * cs, to_bf16(s0, s1));
            }
        }
    return special != 0;
}

/* One B panel (kc k steps of 16 float32 columns, k-major) as bfloat16
 * tiles: tile (c, kt) at dst + (c*nkt + kt) * TILE_ELEMS (term c), row r holding
 * k steps 32kt + 2r and 32kt + 2r + 1 interleaved column by column (the
 * even step in the low half of each 32-bit lane); steps past kc are zero. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline int
pack_b_terms(const float *b, int kc, uint16_t *dst, const int terms)
{
    __mmask16 special = 0;
    const int nkt = (kc + 31) / 32;
    const size_t cs = (size_t)nkt * TILE_ELEMS;
    const __m512i high = _mm512_set1_epi32((int)0xFFFF0000u);
    /* to_bf16's order (x0's 16 values, then x1's) to pairs: 0, 16, 1, 17, .. */
    const __m512i pairs =
        _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int k = 0; k < nkt * 32; k += 2) {
        const __m512 x0 = k < kc ? _mm512_loadu_ps(b + (size_t)k * 16) : _mm512_setzero_ps();
        const __m512 x1 =
            k + 1 < kc ? _mm512_loadu_ps(b + (size_t)(k + 1) * 16) : _mm512_setzero_ps();
        special |= special_lanes(x0) | special_lanes(x1);
        __m512 r0, r1, s0, s1;
        const __m512i h0 = _mm512_castps_si512(split_hi(x0, &r0)),
                      h1 = _mm512_castps_si512(split_hi(x1, &r1));
        const __m512i m0 = _mm512_castps_si512(split_hi(r0, &s0)),
                      m1 = _mm512_castps_si512(split_hi(r1, &s1));
        uint16_t *d = dst + (size_t)(k / 32) * TILE_ELEMS + (size_t)(k % 32) * 16;
        /* hi, mid: exact halves, interleaved by shifts; lo: rounded, then paired */
        _mm512_store_si512(d,
                           _mm512_or_si512(_mm512_and_si512(h1, high), _mm512_srli_epi32(h0, 16)));
        _mm512_store_si512(d + cs,
                           _mm512_or_si512(_mm512_and_si512(m1, high), _mm512_srli_epi32(m0, 16)));
        if (terms == 3)
            _mm512_store_si512(d + 2 * cs, _mm512_permutexvar_epi16(pairs, to_bf16(s0, s1)));
    }
    return special != 0;
}

static int amx_pack_b(const float *b, int kc, uint16_t *dst)
{
    return pack_b_terms(b, kc, dst, 3);
}

/* The fast mode's B: hi and mid only (a lo term is never read). */
static int amx_pack_b2(const float *b, int kc, uint16_t *dst)
{
    return pack_b_terms(b, kc, dst, 2);
}

/* The C tiles += A tiles 4 (and 5, with `two` row tiles) times B tiles
 * 6, 7; the A row tiles' loads. */
#define DP4()                                                                                      \
    do {                                                                                           \
        _tile_dpbf16ps(0, 4, 6);                                                                   \
        _tile_dpbf16ps(1, 4, 7);                                                                   \
        if (two) {                                                                                 \
            _tile_dpbf16ps(2, 5, 6);                                                               \
            _tile_dpbf16ps(3, 5, 7);                                                               \
        }                                                                                          \
    } while (0)
#define LOAD_A(at)                                                                                 \
    do {                                                                                           \
        _tile_loadd(4, (at), 64);                                                                  \
        if (two)                                                                                   \
            _tile_loadd(5, (at) + ats, 64);                                                        \
    } while (0)

/* A 32 x 32 block of C: rows from the A tiles at a (row tile 0) and
 * a + ats (row tile 1), term c at + c*acs; columns from the B panels b[0]
 * and b[1] (term c at + c*bcs); nkt k tiles. The product is stored, as
 * sd_tile_store would store it, to c[h] (row stride ldc) for panels h
 * with cols[h] > 0, rows < `rows` (at most 32), with te[2*half + h]
 * (rows 16 half..) as the epilogue when te is given. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void
block_products(int nkt, const uint16_t *a, size_t ats, size_t acs, const uint16_t *const b[2],
               size_t bcs, float *const c[2], int ldc, int accumulate, int rows, const int cols[2],
               const sd_tile_ep *te, const int six)
{
    _Alignas(64) float t[32 * 32];
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    /* Sixteen rows or fewer: row tile 0 only (row tile 1 is neither read
     * nor computed; C tiles 2 and 3 stay zero). */
    const int two = rows > 16;
    for (int kt = 0; kt < nkt; kt++) {
        const uint16_t *ak = a + (size_t)kt * TILE_ELEMS, *p = b[0] + (size_t)kt * TILE_ELEMS,
                       *q = b[1] + (size_t)kt * TILE_ELEMS;
        /* the six products, smallest first, in fourteen tile loads: A lo,
         * then mid with B hi; B mid with A mid, then hi; A hi with B lo,
         * then hi */
        LOAD_A(ak + 2 * acs);
        _tile_loadd(6, p, 64);
        _tile_loadd(7, q, 64);
        DP4(); /* lo * hi */
        LOAD_A(ak + acs);
        DP4(); /* mid * hi */
        _tile_loadd(6, p + bcs, 64);
        _tile_loadd(7, q + bcs, 64);
        DP4(); /* mid * mid */
        LOAD_A(ak);
        DP4(); /* hi * mid */
        if (six) {
            _tile_loadd(6, p + 2 * bcs, 64);
            _tile_loadd(7, q + 2 * bcs, 64);
            DP4(); /* hi * lo */
        }
        _tile_loadd(6, p, 64);
        _tile_loadd(7, q, 64);
        DP4(); /* hi * hi */
    }
    _tile_stored(0, t, 128);
    _tile_stored(1, t + 16, 128);
    _tile_stored(2, t + 16 * 32, 128);
    _tile_stored(3, t + 16 * 32 + 16, 128);
    for (int half = 0; half < 2 && 16 * half < rows; half++) {
        const int hr = rows - 16 * half < 16 ? rows - 16 * half : 16;
        for (int h = 0; h < 2; h++) {
            if (cols[h] <= 0)
                continue;
            const __mmask16 mask = head_mask(cols[h]);
            const sd_tile_ep *e = te ? &te[2 * half + h] : NULL;
            float *ch = c[h] + (size_t)16 * half * ldc;
            for (int i = 0; i < hr; i++) {
                float *ci = ch + (size_t)i * ldc;
                __m512 v = _mm512_load_ps(t + (16 * half + i) * 32 + 16 * h);
                if (accumulate)
                    v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, ci), v);
                if (e && e->bias)
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, e->bias));
                if (e && e->g[i])
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, e->g[i]));
                if (e && e->r[i])
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, e->r[i]));
                _mm512_mask_storeu_ps(ci, mask, v);
            }
        }
    }
}

static void amx_block(int nkt, const uint16_t *a, size_t ats, size_t acs,
                      const uint16_t *const b[2], size_t bcs, float *const c[2], int ldc,
                      int accumulate, int rows, const int cols[2], const sd_tile_ep *te)
{
    block_products(nkt, a, ats, acs, b, bcs, c, ldc, accumulate, rows, cols, te, 1);
}

/* The fast mode's five products: hi * lo left out (B in two terms). */
static void amx_block5(int nkt, const uint16_t *a, size_t ats, size_t acs,
                       const uint16_t *const b[2], size_t bcs, float *const c[2], int ldc,
                       int accumulate, int rows, const int cols[2], const sd_tile_ep *te)
{
    block_products(nkt, a, ats, acs, b, bcs, c, ldc, accumulate, rows, cols, te, 0);
}

const sd_amx_kernels sd_amx_kernels_bf16x3 = {
    .begin = amx_begin,
    .end = amx_end,
    .pack_a = amx_pack_a,
    .pack_b = amx_pack_b,
    .block = amx_block,
};

const sd_amx_kernels sd_amx_kernels_bf16x5 = {
    .begin = amx_begin,
    .end = amx_end,
    .pack_a = amx_pack_a,
    .pack_b = amx_pack_b2,
    .block = amx_block5,
};
