/* Winograd F(2x2, 3x3) convolution, the implementation (see winograd.c
 * for the method and the layouts). Included by winograd.c (portable build),
 * winograd_avx2.c (built with -mavx2 -mfma, where the 8-channel vectors
 * below become single ymm operations) and winograd_avx512.c (16-channel
 * vectors, one zmm operation: a whole output panel per transform): one
 * source, three instruction sets. Every lane is computed by the same
 * operations in every build.
 * Defines WG_HAVE and, where it is 1, the static functions wg_run (F(2x2, 3x3)) and
 * wg4_run (F(4x4, 3x3), the fast mode's). */
#ifndef SD_WINOGRAD_IMPL_H
#define SD_WINOGRAD_IMPL_H

#include "engine/kernels.h"

#include <stddef.h>
#include <string.h>
#if defined(__F16C__) && defined(__AVX2__)
#include <immintrin.h>
#endif

/* Channels per transform vector: 16 where the file is built for AVX-512. */
#if defined(__AVX512F__)
#define WG_VN 16
#else
#define WG_VN 8
#endif

#ifndef WG_V_BYTES
/* Transformed inputs of one tile block and channel chunk (L3). Above ~6
 * MiB the products, which stream V once per output panel pair, lost up
 * to a third of their speed whenever the shared L3 was busy (bench_gemm,
 * 16x16x2560 and 32x32x1920 at 10-16 MiB), so wider inputs are split into
 * channel chunks (see wg_drive). */
#define WG_V_BYTES (6u << 20)
#endif
#ifndef WG_U_BYTES
/* Transformed weights kept from a convolution's first tile block for the
 * others (see wg_drive): enough for SD1.5's 64x64 level (up to 20 MiB)
 * and its 640-channel 32x32 convolutions (26 MiB). */
#define WG_U_BYTES (32u << 20)
#endif
#ifndef WG_TB_MAX
#define WG_TB_MAX 128 /* tiles per block: a 128 KiB accumulator per thread */
#endif
#ifndef WG_KC
#define WG_KC 256 /* K block: 16 x 256 x 16 transformed weights = 256 KiB */
#endif
/* Floats added to the stride between positions in V, Ub and Acc: the 16
 * (F(4x4): 36) positions of one tile or weight row are then not all a
 * multiple of 4 KiB apart, which would put them in one L1 set (12 ways)
 * and 4K-alias them. Layout only: the results do not depend on it. */
#define WG_PAD 16
#define WG4_PAD WG_PAD

/* The transforms work on WG_VN channels at a time as one GNU C vector
 * (AVX2 or AVX-512 where this file is built for it, SSE halves
 * otherwise); compilers without vector extensions get the direct method
 * instead. */
#if defined(__GNUC__)
#define WG_HAVE 1
typedef float wv __attribute__((vector_size(4 * WG_VN)));

/* The same vector at float alignment, allowed to alias floats: one
 * unaligned 32-byte move in the AVX2 build. (memcpy was expanded as two
 * 16-byte moves, and a 32-byte load of two 16-byte stores cannot be
 * forwarded from the store buffer: a stall on every staged vector.) */
typedef float wv_u __attribute__((vector_size(4 * WG_VN), aligned(4), may_alias));

/* Loads and stores through pointers (a vector passed by value would change
 * the ABI where AVX is not enabled). */
static inline void wv_ld(wv *v, const float *p)
{
    *v = *(const wv_u *)p;
}
static inline void wv_st(float *p, const wv *v)
{
    *(wv_u *)p = *v;
}

/* Every lane x. */
#define wv_set(x) ((wv){0} + (x))

/* n <= WG_VN lanes: the rest read as zero / are not written. */
static inline void wv_ld_n(wv *v, const float *p, int n)
{
    if (n == WG_VN) {
        wv_ld(v, p);
        return;
    }
    float t[WG_VN] = {0};
    memcpy(t, p, sizeof(float) * (size_t)n);
    wv_ld(v, t);
}

static inline void wv_st_n(float *p, const wv *v, int n)
{
    if (n == WG_VN) {
        wv_st(p, v);
        return;
    }
    float t[WG_VN];
    wv_st(t, v);
    memcpy(p, t, sizeof(float) * (size_t)n);
}

/* Tile t (batch-major, then row-major over th x tw tiles): its image b and
 * the top-left pixel (y0, x0) of its 2x2 output block. */
static inline void tile_origin_s(int side, int t, int th, int tw, int *b, int *y0, int *x0)
{
    const int per = th * tw, rem = t % per;
    *b = t / per;
    *y0 = side * (rem / tw);
    *x0 = side * (rem % tw);
}

static inline void tile_origin(int t, int th, int tw, int *b, int *y0, int *x0)
{
    tile_origin_s(2, t, th, tw, b, y0, x0);
}

/* The output pixels (rows of the (batch, H, W) output) of tile t's four
 * positions (i, k) at [2i + k], or -1 past the image's edge. */
static inline void tile_pixels(int t, int th, int tw, int H, int W, ptrdiff_t px[4])
{
    int b, y0, x0;
    tile_origin(t, th, tw, &b, &y0, &x0);
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < 2; k++)
            px[2 * i + k] =
                y0 + i < H && x0 + k < W ? ((ptrdiff_t)b * H + y0 + i) * W + x0 + k : -1;
}

/* ---- input transform: V = B^T d B, B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1] ---- */

typedef struct {
    const sd_kernels *kern;
    const float *in; /* the chunk's first channel */
    int H, W, Cin;   /* Cin: the chunk's channels */
    int ldin;        /* floats per input pixel (all channels) */
    int th, tw, mr;
    int t0, nt;     /* the block's first tile and tile count */
    size_t ad_step; /* floats per position in V: panels x Cin x mr */
    float *V;
} in_job;

/* The input pixels of the (side + 2)^2 patch of each of the task's mr
 * tiles, src[r * (side + 2)^2 + i * (side + 2) + k] for patch row i,
 * column k: NULL where the patch lies past the image (zero padding) or
 * the tile past the block. */
static inline void tile_sources(const in_job *j, int64_t task, int side, const float **src)
{
    const int n = side + 2;
    for (int r = 0; r < j->mr; r++) {
        const int tb = (int)task * j->mr + r;
        int b, y0, x0;
        tile_origin_s(side, j->t0 + tb, j->th, j->tw, &b, &y0, &x0);
        for (int i = 0; i < n; i++)
            for (int k = 0; k < n; k++) {
                int y = y0 - 1 + i, x = x0 - 1 + k;
                src[(r * n + i) * n + k] =
                    tb >= j->nt || y < 0 || y >= j->H || x < 0 || x >= j->W
                        ? NULL
                        : j->in + (((size_t)b * j->H + y) * j->W + x) * j->ldin;
            }
    }
}

/* One tile panel: mr tiles (rows past the block are zero), all channels. */
static void in_panel(void *ctx, int64_t task, int thread)
{
    (void)thread;
    const in_job *j = ctx;
    const int Cin = j->Cin, mr = j->mr;
    const wv zero = {0};
    const float *src[SD_MR_MAX][16];
    tile_sources(j, task, 2, &src[0][0]);
    /* Transformed vectors are staged per position and tile, then each
     * position's mr x 8 block is transposed into the panel's [channel][tile]
     * order by the kernel set's A packer (vector shuffles, not 8 x mr
     * scalar stores). */
    _Alignas(64) float stage[16][SD_MR_MAX][WG_VN];
    const float *rows[16][SD_MR_MAX];
    for (int p = 0; p < 16; p++)
        for (int r = 0; r < mr; r++)
            rows[p][r] = stage[p][r];
    float *vp = j->V + (size_t)task * Cin * mr;
    for (int c0 = 0; c0 < Cin; c0 += WG_VN) {
        const int n = Cin - c0 < WG_VN ? Cin - c0 : WG_VN;
        for (int r = 0; r < mr; r++) {
            wv d[16], q[16];
#pragma GCC unroll 16
            for (int p = 0; p < 16; p++) {
                if (src[r][p])
                    wv_ld_n(&d[p], src[r][p] + c0, n);
                else
                    d[p] = zero;
            }
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) { /* rows: B^T d */
                q[0 + k] = d[0 + k] - d[8 + k];
                q[4 + k] = d[4 + k] + d[8 + k];
                q[8 + k] = d[8 + k] - d[4 + k];
                q[12 + k] = d[4 + k] - d[12 + k];
            }
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) { /* columns: (B^T d) B */
                const wv *e = q + 4 * i;
                d[4 * i + 0] = e[0] - e[2];
                d[4 * i + 1] = e[1] + e[2];
                d[4 * i + 2] = e[2] - e[1];
                d[4 * i + 3] = e[1] - e[3];
            }
#pragma GCC unroll 16
            for (int p = 0; p < 16; p++)
                wv_st(stage[p][r], &d[p]);
        }
        /* Channels c0.. of all mr tiles are one contiguous run of the panel. */
        for (int p = 0; p < 16; p++)
            j->kern->pack_panel(rows[p], n, vp + p * j->ad_step + (size_t)c0 * mr);
    }
}

/* ---- weights: U = G g G^T, G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1] ---- */

/* WG_VN packed weights at element i of wp, of type `type` (sd_wtype), as
 * float32: 16-bit ones are widened exactly, as kern->widen does (F16C
 * where this file is built with it). */
static inline void wg_ld_w(wv *v, const void *wp, size_t i, int type)
{
    if (type == SD_WT_F32) {
        wv_ld(v, (const float *)wp + i);
        return;
    }
    const uint16_t *hp = (const uint16_t *)wp + i;
#if WG_VN == 16
    const __m256i h = _mm256_loadu_si256((const __m256i *)hp);
    if (type == SD_WT_F16)
        *v = (wv)_mm512_cvtph_ps(h);
    else
        *v = (wv)_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
#elif defined(__F16C__) && defined(__AVX2__)
    const __m128i h = _mm_loadu_si128((const __m128i *)hp);
    if (type == SD_WT_F16)
        *v = (wv)_mm256_cvtph_ps(h);
    else
        *v = (wv)_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
#else
    float f[WG_VN];
    for (int q = 0; q < WG_VN; q++)
        f[q] = sd_wt_widen1(type, hp[q]);
    wv_ld(v, f);
#endif
}

/* Channels [k0, k0 + kc) of output panel `wp` (packed direct weights of
 * type `type`, rows k = tap*Cin + ci of 16 values) into ub[ad][k - k0][16].
 * Inlined per type (weights_block), so the type is not tested per load. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void
weights_block_t(const void *wp, int type, int Cin, int k0, int kc, float *ub)
{
    const wv half = wv_set(0.5f);
    const size_t ad_step = (size_t)kc * 16 + WG_PAD, esz = sd_wtype_size(type);
    for (int k = 0; k < kc; k++)
        for (int h = 0; h < 16; h += WG_VN) {
            wv g[9], t[12];
#pragma GCC unroll 9
            for (int tap = 0; tap < 9; tap++) {
                const size_t gi = ((size_t)tap * Cin + k0 + k) * 16 + h;
                /* nine streams: help the prefetcher */
                __builtin_prefetch((const char *)wp + (gi + 8 * 16) * esz);
                wg_ld_w(&g[tap], wp, gi, type);
            }
#pragma GCC unroll 3
            for (int kx = 0; kx < 3; kx++) { /* G g (4 x 3); the halving is exact */
                wv s = g[0 + kx] + g[6 + kx];
                t[0 + kx] = g[0 + kx];
                t[3 + kx] = half * (s + g[3 + kx]);
                t[6 + kx] = half * (s - g[3 + kx]);
                t[9 + kx] = g[6 + kx];
            }
            float *o = ub + (size_t)k * 16 + h;
#pragma GCC unroll 4
            for (int a = 0; a < 4; a++) { /* (G g) G^T (4 x 4) */
                const wv *q = t + 3 * a;
                wv s = q[0] + q[2], u1 = half * (s + q[1]), u2 = half * (s - q[1]);
                wv_st(o + (4 * a + 0) * ad_step, &q[0]);
                wv_st(o + (4 * a + 1) * ad_step, &u1);
                wv_st(o + (4 * a + 2) * ad_step, &u2);
                wv_st(o + (4 * a + 3) * ad_step, &q[2]);
            }
        }
}

static void weights_block(const void *wp, int type, int Cin, int k0, int kc, float *ub)
{
    if (type == SD_WT_F16)
        weights_block_t(wp, SD_WT_F16, Cin, k0, kc, ub);
    else if (type == SD_WT_BF16)
        weights_block_t(wp, SD_WT_BF16, Cin, k0, kc, ub);
    else
        weights_block_t(wp, SD_WT_F32, Cin, k0, kc, ub);
}

/* ---- one output panel: products, then Y = A^T M A, A^T = [1 1 1 0; 0 1 -1 -1] ---- */

typedef struct {
    const sd_kernels *kern;
    const sd_packed *Wp;
    const float *V;
    size_t ad_step;                         /* as in_job */
    int Cin, N, H, W, th, tw, t0, nt, tpan; /* Cin: the chunk's channels */
    int wcin, wk0;                          /* the weights' input channels, the chunk's first */
    float *out;                             /* (batch, H, W, N) */
    int add_out;                            /* out holds a partial sum: add to it */
    const sd_epilogue *ep;
    float *scratch; /* per thread: Ub then Acc, pp of each */
    size_t per_thread;
    int pp, panels; /* output panels per task (2 with kern->micro2), in all */
    int kcb, nkb;   /* K blocks of Cin */
    size_t ub_size; /* floats of one panel's Ub: pos x (kcb x 16 + pad) */
    /* NULL, or the chunk's transformed weights, panel p's K block kb at
     * U + (p * u_kbs + kb) * ub_size: made in the first tile block
     * (u_fill), read in the others. */
    float *U;
    int u_fill;
    size_t u_kbs;
    size_t acc_size; /* floats of one panel's Acc: pos x acc_step */
    size_t acc_step; /* floats per position in Acc */
} panel_job;

typedef void (*wg_weights_fn)(const void *wp, int type, int Cin, int k0, int kc, float *ub);

/* The products of output panels p0 .. p0 + np - 1 (np = 1, or 2 with
 * micro2): for each of the pos positions, Acc[h][ad] (tiles x 16) =
 * V[ad] (tiles x Cin) Ub[h][ad] (Cin x 16), by K blocks; Ub[h] is built
 * by wfn from the packed weights one K block at a time. With two panels
 * each transformed input value is loaded once for both. */
static void wg_products(const panel_job *j, int p0, int np, int pos, wg_weights_fn wfn, float *ub,
                        float *acc)
{
    const sd_kernels *kern = j->kern;
    const int mr = kern->mr, Cin = j->Cin, wtype = j->Wp->type;
    const size_t pstride = (size_t)j->Wp->K * 16 * sd_wtype_size(wtype);
    for (int kb = 0; kb < j->nkb; kb++) {
        const int k0 = kb * j->kcb, kc = Cin - k0 < j->kcb ? Cin - k0 : j->kcb;
        const size_t ustep = (size_t)kc * 16 + WG_PAD;
        float *u[2];
        for (int h = 0; h < np; h++) {
            u[h] =
                j->U ? j->U + ((size_t)(p0 + h) * j->u_kbs + kb) * j->ub_size : ub + h * j->ub_size;
            if (!j->U || j->u_fill)
                wfn((const char *)j->Wp->data + (size_t)(p0 + h) * pstride, wtype, j->wcin,
                    j->wk0 + k0, kc, u[h]);
        }
        for (int ad = 0; ad < pos; ad++)
            for (int tp = 0; tp < j->tpan; tp++) {
                const float *a = j->V + ad * j->ad_step + ((size_t)tp * Cin + k0) * mr;
                const size_t co = ad * j->acc_step + (size_t)tp * mr * 16;
                if (np == 2) {
                    const float *const b[2] = {u[0] + ad * ustep, u[1] + ad * ustep};
                    float *const c[2] = {acc + co, acc + j->acc_size + co};
                    static const int cols[2] = {16, 16};
                    kern->micro2(kc, a, b, c, 16, kb > 0, mr, cols, NULL);
                } else {
                    kern->micro(kc, a, u[0] + ad * ustep, acc + co, 16, kb > 0, mr, 16, NULL);
                }
            }
    }
}

/* Output pixel `row`, columns col..col+n of a tile: the GEMM epilogue's
 * order, acc + bias + group + residual (a residual aliasing out is read
 * before it is written), with add_out the value in out + acc first. */
static inline void wg_store(float *out, const sd_epilogue *ep, int add_out, size_t row, int N,
                            int col, int n, const wv *acc)
{
    wv v = *acc, e;
    if (add_out) {
        wv_ld_n(&e, out + row * N + col, n);
        v = e + v;
    }
    if (ep && ep->bias) {
        wv_ld_n(&e, ep->bias + col, n);
        v += e;
    }
    if (ep && ep->group_add) {
        wv_ld_n(&e, ep->group_add + (row / (size_t)ep->group_rows) * N + col, n);
        v += e;
    }
    if (ep && ep->residual) {
        wv_ld_n(&e, ep->residual + row * ep->ld_res + col, n);
        v += e;
    }
    wv_st_n(out + row * N + col, &v, n);
}

/* Output columns [n0, n0 + cols) of one out-pass task and their products
 * in acc (panel h's at acc + h * acc_size). */
typedef struct {
    int n0, cols;
    const float *acc;
} wg_task_out;

static wg_task_out wg_task_products(const panel_job *j, int64_t task, int thread, int pos,
                                    wg_weights_fn wfn)
{
    const int p0 = (int)task * j->pp, np = j->panels - p0 < j->pp ? j->panels - p0 : j->pp;
    float *ub = j->scratch + (size_t)thread * j->per_thread, *acc = ub + j->pp * j->ub_size;
    wg_products(j, p0, np, pos, wfn, ub, acc);
    wg_task_out t = {p0 * 16, j->N - p0 * 16 < 16 * np ? j->N - p0 * 16 : 16 * np, acc};
    return t;
}

static void out_panel(void *ctx, int64_t task, int thread)
{
    const panel_job *j = ctx;
    const wg_task_out to = wg_task_products(j, task, thread, 16, weights_block);
    const int N = j->N, n0 = to.n0, cols = to.cols;
    const size_t acc_step = j->acc_step;
    const float *acc = to.acc;

    const sd_epilogue *ep = j->ep;
    ptrdiff_t px[4], ahead[4];
    for (int tb = 0; tb < j->nt; tb++) {
        tile_pixels(j->t0 + tb, j->th, j->tw, j->H, j->W, px);
        if (tb + 2 < j->nt) { /* the output rows two tiles ahead (scattered lines) */
            tile_pixels(j->t0 + tb + 2, j->th, j->tw, j->H, j->W, ahead);
            for (int q = 0; q < 4; q++) {
                if (ahead[q] < 0)
                    continue;
                __builtin_prefetch(j->out + ahead[q] * N + n0, 1);
                if (ep && ep->residual && ep->residual != j->out)
                    __builtin_prefetch(ep->residual + ahead[q] * ep->ld_res + n0);
            }
        }
        for (int c0 = 0; c0 < cols; c0 += WG_VN) {
            const int n = cols - c0 < WG_VN ? cols - c0 : WG_VN, col = n0 + c0, h = c0 % 16;
            const float *m = acc + (size_t)(c0 / 16) * j->acc_size + (size_t)tb * 16;
            wv s[8], y[4];
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) { /* rows: A^T M */
                wv v0, v1, v2, v3;
                wv_ld(&v0, m + (0 + k) * acc_step + h);
                wv_ld(&v1, m + (4 + k) * acc_step + h);
                wv_ld(&v2, m + (8 + k) * acc_step + h);
                wv_ld(&v3, m + (12 + k) * acc_step + h);
                s[k] = v0 + v1 + v2;
                s[4 + k] = v1 - v2 - v3;
            }
#pragma GCC unroll 2
            for (int i = 0; i < 2; i++) { /* columns: (A^T M) A */
                const wv *q = s + 4 * i;
                y[2 * i + 0] = q[0] + q[1] + q[2];
                y[2 * i + 1] = q[1] - q[2] - q[3];
            }
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++)
                if (px[q] >= 0)
                    wg_store(j->out, ep, j->add_out, (size_t)px[q], N, col, n, &y[q]);
        }
    }
}
/* The shape of a Winograd variant: output tile side, transformed
 * positions, tiles per block, K block, and its two passes. */
typedef struct wg_variant {
    int side, pos, tb_max, kc;
    sd_task_fn in_fn, out_fn;
    wg_weights_fn wfn;
} wg_variant;

/* The jobs of one tile block and input channel chunk. */
static void wg_block_chunk(in_job *ij, panel_job *pj, const wg_variant *v, const float *in, int t0,
                           int nt, int ch, int cc, int nch, int res_alias, const sd_epilogue *ep,
                           const sd_epilogue *ep_last, float *U, int nkb_max, size_t ub_size)
{
    const int Cin = pj->wcin, c0 = ch * cc, cn = Cin - c0 < cc ? Cin - c0 : cc;
    ij->in = in + c0;
    ij->Cin = cn;
    ij->t0 = t0;
    ij->nt = nt;
    pj->Cin = cn;
    pj->t0 = t0;
    pj->nt = nt;
    pj->tpan = (nt + ij->mr - 1) / ij->mr;
    pj->wk0 = c0;
    pj->nkb = (cn + v->kc - 1) / v->kc;
    pj->kcb = (cn + pj->nkb - 1) / pj->nkb;
    pj->add_out = ch > 0 || (nch > 1 && res_alias);
    pj->ep = ch < nch - 1 ? NULL : nch > 1 && res_alias ? ep_last : ep;
    pj->U = U ? U + (size_t)ch * nkb_max * ub_size : NULL;
}

/* Several threads, each taking whole tile blocks (see wg_drive). */
typedef struct {
    const wg_variant *v;
    const float *in;
    in_job ij;
    panel_job pj;
    size_t v_floats; /* one thread's V */
    int TB, tiles, nch, cc, res_alias, nkb_max;
    const sd_epilogue *ep, *ep_last;
    float *U;
} owned_job;

static void owned_block(void *ctx, int64_t task, int thread)
{
    const owned_job *o = ctx;
    in_job ij = o->ij;
    panel_job pj = o->pj;
    ij.V = (float *)pj.V + (size_t)thread * o->v_floats;
    pj.V = ij.V;
    const int t0 = (int)task * o->TB, nt = o->tiles - t0 < o->TB ? o->tiles - t0 : o->TB;
    for (int ch = 0; ch < o->nch; ch++) {
        wg_block_chunk(&ij, &pj, o->v, o->in, t0, nt, ch, o->cc, o->nch, o->res_alias, o->ep,
                       o->ep_last, o->U, o->nkb_max, pj.ub_size);
        pj.u_fill = 0;
        for (int tp = 0; tp < pj.tpan; tp++)
            o->v->in_fn(&ij, tp, thread);
        for (int p = 0; p < (pj.panels + pj.pp - 1) / pj.pp; p++)
            o->v->out_fn(&pj, p, thread);
    }
}

/* Output panel p's transformed weights, every chunk and K block, into U. */
static void u_fill_panel(void *ctx, int64_t p, int thread)
{
    (void)thread;
    const owned_job *o = ctx;
    const panel_job *pj = &o->pj;
    const int Cin = pj->wcin, wtype = pj->Wp->type;
    const char *wp = (const char *)pj->Wp->data + (size_t)p * pj->Wp->K * 16 * sd_wtype_size(wtype);
    for (int ch = 0; ch < o->nch; ch++) {
        const int c0 = ch * o->cc, cn = Cin - c0 < o->cc ? Cin - c0 : o->cc;
        const int nkb = (cn + o->v->kc - 1) / o->v->kc, kcb = (cn + nkb - 1) / nkb;
        for (int kb = 0; kb < nkb; kb++) {
            const int k0 = kb * kcb, kc = cn - k0 < kcb ? cn - k0 : kcb;
            o->v->wfn(wp, wtype, Cin, c0 + k0, kc,
                      o->U + ((size_t)p * pj->u_kbs + (size_t)ch * o->nkb_max + kb) * pj->ub_size);
        }
    }
}

/* The whole convolution by variant v (see winograd.c); returns 0 if it
 * cannot run. */
static int wg_drive(const sd_exec *ex, const float *in, int batch, int H, int W, int Cin,
                    const sd_packed *Wp, float *out, const sd_epilogue *ep, const wg_variant *v)
{
    const sd_kernels *kern = ex->kern;
    const int mr = kern->mr, N = Wp->N;
    if (Wp->nr != 16 || kern->nr != 16 || mr > SD_MR_MAX || Wp->K != 9 * Cin || batch <= 0 ||
        H <= 0 || W <= 0 ||
        (Wp->type != SD_WT_F32 && Wp->type != SD_WT_F16 && Wp->type != SD_WT_BF16))
        return 0;
    const int th = (H + v->side - 1) / v->side, tw = (W + v->side - 1) / v->side;
    const long tiles_l = (long)batch * th * tw;
    if (tiles_l > INT32_MAX / 2)
        return 0;
    const int tiles = (int)tiles_l, panels = (N + 15) / 16;

    /* Tile blocks of at most tb_max tiles. With several threads and at
     * least half a block's tiles per thread, each thread takes whole blocks
     * (owned): it transforms its block's input into its own V and runs every
     * output panel on it, so no thread reads the V another wrote. Split by
     * output panels instead, each thread read the whole V, half of it from
     * the other core, and wrote lines the other had read: the 64x64
     * convolutions ran at 1.5x one thread's speed on two. Owned blocks come
     * in a multiple of the thread count. */
    const int threads = sd_pool_size(ex->pool);
    const int tb = tiles < v->tb_max ? tiles : v->tb_max;
    int blocks = (tiles + tb - 1) / tb;
    const int owned = threads > 1 && tiles >= threads * (v->tb_max / 2);
    if (owned)
        blocks = (blocks + threads - 1) / threads * threads;
    const int TB = (tiles + blocks - 1) / blocks, tpan_max = (TB + mr - 1) / mr;
    /* Channel chunks: a block's V holds at most WG_V_BYTES (and at least 8
     * channels). The transform is linear, so each chunk's output transform
     * is added to the sum of the chunks before it in out, and the epilogue
     * comes with the last chunk (a different summation order from one
     * chunk, the same accuracy). A residual aliasing out is then the
     * starting value; one that overlaps out otherwise keeps one chunk. */
    const size_t ch_bytes = (size_t)v->pos * tpan_max * mr * sizeof(float);
    int cc = (int)(WG_V_BYTES / ch_bytes);
    cc = cc < 8 ? 8 : cc;
    int res_alias = 0;
    if (cc < Cin && ep && ep->residual) {
        const size_t rows = (size_t)batch * H * W;
        const uintptr_t r0 = (uintptr_t)ep->residual, o0 = (uintptr_t)out,
                        r1 = r0 + sizeof(float) * ((rows - 1) * (size_t)ep->ld_res + N),
                        o1 = o0 + sizeof(float) * rows * N;
        res_alias = ep->residual == out && ep->ld_res == N;
        if (!res_alias && r0 < o1 && o0 < r1)
            cc = Cin;
    }
    const int nch0 = cc < Cin ? (Cin + cc - 1) / cc : 1;
    cc = ((Cin + nch0 - 1) / nch0 + 7) / 8 * 8; /* equal chunks, whole 8-channel vectors */
    if (cc > Cin)
        cc = Cin;
    const int nch = (Cin + cc - 1) / cc;
    sd_epilogue ep_last;
    if (nch > 1 && res_alias) {
        ep_last = *ep;
        ep_last.residual = NULL;
    }
    const size_t ad_step = (size_t)tpan_max * cc * mr + WG_PAD;

    /* Output panels two at a time where the kernel set can (each pair
     * streams V once), with the same K block: twice the Ub and Acc of one
     * panel per thread (halving the K block to keep them at one panel's
     * size measured 5-13% slower on the large-Cin convolutions). */
    const int pp = kern->micro2 && panels > 1 ? 2 : 1;
    const int kcb_max = cc < v->kc ? cc : v->kc; /* no chunk's K block is longer */
    const size_t ub_size = (size_t)v->pos * ((size_t)kcb_max * 16 + WG_PAD);
    const size_t acc_step = (size_t)tpan_max * mr * 16 + WG_PAD;
    const size_t acc_size = (size_t)v->pos * acc_step;
    const size_t per_thread = pp * (ub_size + acc_size);
    const size_t v_floats = (size_t)v->pos * ad_step;
    float *V = sd_ws_get(ex, 4, v_floats * (owned ? threads : 1) * sizeof(float));
    float *scratch = sd_ws_get(ex, 5, per_thread * threads * sizeof(float));
    if (!V || !scratch) {
        sd_ws_put(ex, 4, V);
        sd_ws_put(ex, 5, scratch);
        return 0;
    }
    /* With several tile blocks, each block but the first would transform
     * the same weights again: from three blocks (a thread) and up to
     * WG_U_BYTES, they are kept (per panel, chunk and K block) for the rest
     * (two blocks measured faster transforming twice than writing and
     * reading the copy): made by the first block, or with owned blocks by
     * all threads before them. Without that memory, every block transforms
     * its own. */
    const int nkb_max = (cc + v->kc - 1) / v->kc;
    const size_t u_kbs = (size_t)nch * nkb_max, u_floats = (size_t)panels * u_kbs * ub_size;
    float *U = (owned ? blocks / threads : blocks) > 2 && u_floats * sizeof(float) <= WG_U_BYTES
                   ? sd_ws_get(ex, 3, u_floats * sizeof(float))
                   : NULL;
    /* The jobs' fields that hold for every block and chunk; the loop sets
     * the rest. */
    in_job ij = {.kern = kern,
                 .H = H,
                 .W = W,
                 .ldin = Cin,
                 .th = th,
                 .tw = tw,
                 .mr = mr,
                 .ad_step = ad_step,
                 .V = V};
    panel_job pj = {.kern = kern,
                    .Wp = Wp,
                    .V = V,
                    .ad_step = ad_step,
                    .N = N,
                    .H = H,
                    .W = W,
                    .th = th,
                    .tw = tw,
                    .wcin = Cin,
                    .out = out,
                    .scratch = scratch,
                    .per_thread = per_thread,
                    .pp = pp,
                    .panels = panels,
                    .ub_size = ub_size,
                    .u_kbs = u_kbs,
                    .acc_size = acc_size,
                    .acc_step = acc_step};
    if (owned) {
        owned_job o = {.v = v,
                       .in = in,
                       .ij = ij,
                       .pj = pj,
                       .v_floats = v_floats,
                       .TB = TB,
                       .tiles = tiles,
                       .nch = nch,
                       .cc = cc,
                       .res_alias = res_alias,
                       .nkb_max = nkb_max,
                       .ep = ep,
                       .ep_last = &ep_last,
                       .U = U};
        if (U)
            sd_pool_run(ex->pool, panels, u_fill_panel, &o);
        sd_pool_run(ex->pool, blocks, owned_block, &o);
    }
    for (int blk = 0; !owned && blk < blocks; blk++) {
        const int t0 = blk * TB, nt = tiles - t0 < TB ? tiles - t0 : TB;
        for (int ch = 0; ch < nch; ch++) {
            wg_block_chunk(&ij, &pj, v, in, t0, nt, ch, cc, nch, res_alias, ep, &ep_last, U,
                           nkb_max, ub_size);
            pj.u_fill = blk == 0;
            sd_pool_run(ex->pool, pj.tpan, v->in_fn, &ij);
            sd_pool_run(ex->pool, (panels + pp - 1) / pp, v->out_fn, &pj);
        }
    }
    sd_ws_put(ex, 3, U);
    sd_ws_put(ex, 4, V);
    sd_ws_put(ex, 5, scratch);
    return 1;
}

/* F(2x2, 3x3), the exact mode's. */
static int wg_run(const sd_exec *ex, const float *in, int batch, int H, int W, int Cin,
                  const sd_packed *Wp, float *out, const sd_epilogue *ep)
{
    static const wg_variant f2 = {2, 16, WG_TB_MAX, WG_KC, in_panel, out_panel, weights_block};
    return wg_drive(ex, in, batch, H, W, Cin, Wp, out, ep, &f2);
}

/* ==== Winograd F(4x4, 3x3): the fast mode (see winograd.c) ==== */

#ifndef WG4_TB_MAX
#define WG4_TB_MAX 64 /* tiles (of 16 pixels) per block */
#endif
#ifndef WG4_KC
#define WG4_KC 128 /* K block: 36 x 128 x 16 transformed weights = 288 KiB */
#endif

/* Tile t (batch-major, then row-major over th x tw tiles of 4x4 outputs):
 * its image b and top-left output pixel (y0, x0). */
static inline void tile4_origin(int t, int th, int tw, int *b, int *y0, int *x0)
{
    tile_origin_s(4, t, th, tw, b, y0, x0);
}

/* The output pixels of tile t's 16 positions (i, k) at [4i + k], or -1
 * past the image's edge. */
static inline void tile4_pixels(int t, int th, int tw, int H, int W, ptrdiff_t px[16])
{
    int b, y0, x0;
    tile4_origin(t, th, tw, &b, &y0, &x0);
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < 4; k++)
            px[4 * i + k] =
                y0 + i < H && x0 + k < W ? ((ptrdiff_t)b * H + y0 + i) * W + x0 + k : -1;
}

/* o[j * os] = (B^T d)_j for the six vectors d[0], d[s], .. d[5s]; points
 * 0, 1, -1, 1/2, -2 (and infinity):
 *   B^T = [1 -3/2  -2  3/2 1 0]     [0   -2  -1    2 1 0]
 *         [0   -1 1/2  5/2 1 0]     [0  1/2  -1 -1/2 1 0]
 *         [0    1 -5/2 1/2 1 0]     [0    1 -3/2  -2 3/2 1] */
static inline void wg4_bt(const wv *d, int s, wv *o, int os)
{
    const wv h = wv_set(0.5f);
    const wv d0 = d[0], d1 = d[s], d2 = d[2 * s], d3 = d[3 * s], d4 = d[4 * s], d5 = d[5 * s];
    const wv e31 = d3 - d1, e42 = d4 - d2;
    o[0] = (d0 - d2) + e42 + (e31 + h * e31);
    o[os] = (d4 - d1) + (d3 + d3) + h * (d2 + d3);
    o[2 * os] = (d4 + d1) - (d2 + d2) + h * (d3 - d2);
    o[3 * os] = e42 + (e31 + e31);
    o[4 * os] = e42 - h * e31;
    o[5 * os] = (d1 - d3) + (d5 - d3) + (e42 + h * e42);
}

/* One tile panel of the F(4x4) input transform (as in_panel). */
static void in_panel4(void *ctx, int64_t task, int thread)
{
    (void)thread;
    const in_job *j = ctx;
    const int Cin = j->Cin, mr = j->mr;
    const wv zero = {0};
    const float *src[SD_MR_MAX][36];
    tile_sources(j, task, 4, &src[0][0]);
    _Alignas(64) float stage[36][SD_MR_MAX][WG_VN];
    const float *rows[36][SD_MR_MAX];
    for (int p = 0; p < 36; p++)
        for (int r = 0; r < mr; r++)
            rows[p][r] = stage[p][r];
    float *vp = j->V + (size_t)task * Cin * mr;
    for (int c0 = 0; c0 < Cin; c0 += WG_VN) {
        const int n = Cin - c0 < WG_VN ? Cin - c0 : WG_VN;
        for (int r = 0; r < mr; r++) {
            wv d[36], q[36];
#pragma GCC unroll 36
            for (int p = 0; p < 36; p++) {
                if (src[r][p])
                    wv_ld_n(&d[p], src[r][p] + c0, n);
                else
                    d[p] = zero;
            }
#pragma GCC unroll 6
            for (int k = 0; k < 6; k++) /* columns of the patch: B^T d */
                wg4_bt(d + k, 6, q + k, 6);
#pragma GCC unroll 6
            for (int i = 0; i < 6; i++) /* rows: (B^T d) B */
                wg4_bt(q + 6 * i, 1, d + 6 * i, 1);
#pragma GCC unroll 36
            for (int p = 0; p < 36; p++)
                wv_st(stage[p][r], &d[p]);
        }
        for (int p = 0; p < 36; p++)
            j->kern->pack_panel(rows[p], n, vp + p * j->ad_step + (size_t)c0 * mr);
    }
}

/* o[j * os] = (G' g)_j for the three vectors g[0], g[s], g[2s], where
 *   G = [1 0 0; 1/3 1/3 1/3; -1/3 1/3 -1/3; -16/15 -8/15 -4/15;
 *        1/15 -2/15 4/15; 0 0 1] = diag(wg4_gs) G',
 * G' = [1 0 0; 1 1 1; -1 1 -1; 4 2 1; 1 -2 4; 0 0 1]: small integers.
 * The products are linear in U, so U's scales (wg4_gs2) are applied to the
 * sums M instead, in the output transform: once per tile rather than once
 * per weight and tile block. */
static inline void wg4_g(const wv *g, int s, wv *o, int os)
{
    const wv four = wv_set(4.0f);
    const wv g0 = g[0], g1 = g[s], g2 = g[2 * s], s02 = g0 + g2;
    o[0] = g0;
    o[os] = s02 + g1;
    o[2 * os] = g1 - s02;
    o[3 * os] = four * g0 + (g1 + g1) + g2;
    o[4 * os] = g0 - (g1 + g1) + four * g2;
    o[5 * os] = g2;
}

/* wg4_gs[a] * wg4_gs[b] at [6a + b], wg4_gs = {1, 1/3, 1/3, -4/15, 1/15,
 * 1} (G's row scales), each product rounded once. */
#define WG4_S(a, b) (float)((a) * (b))
#define WG4_ROW(a)                                                                                 \
    WG4_S(a, 1.0), WG4_S(a, 1.0 / 3), WG4_S(a, 1.0 / 3), WG4_S(a, -4.0 / 15), WG4_S(a, 1.0 / 15),  \
        WG4_S(a, 1.0)
static const float wg4_gs2[36] = {WG4_ROW(1.0),       WG4_ROW(1.0 / 3),  WG4_ROW(1.0 / 3),
                                  WG4_ROW(-4.0 / 15), WG4_ROW(1.0 / 15), WG4_ROW(1.0)};
#undef WG4_ROW
#undef WG4_S

/* Channels [k0, k0 + kc) of output panel `wp` into ub[ad][k - k0][16]
 * (as weights_block_t, 36 positions). */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void
weights_block4_t(const void *wp, int type, int Cin, int k0, int kc, float *ub)
{
    const size_t ad_step = (size_t)kc * 16 + WG4_PAD, esz = sd_wtype_size(type);
    for (int k = 0; k < kc; k++)
        for (int h = 0; h < 16; h += WG_VN) {
            wv g[9], t[18], u[36];
#pragma GCC unroll 9
            for (int tap = 0; tap < 9; tap++) {
                const size_t gi = ((size_t)tap * Cin + k0 + k) * 16 + h;
                __builtin_prefetch((const char *)wp + (gi + 8 * 16) * esz);
                wg_ld_w(&g[tap], wp, gi, type);
            }
#pragma GCC unroll 3
            for (int kx = 0; kx < 3; kx++) /* G g (6 x 3) */
                wg4_g(g + kx, 3, t + kx, 3);
#pragma GCC unroll 6
            for (int a = 0; a < 6; a++) /* (G g) G^T (6 x 6) */
                wg4_g(t + 3 * a, 1, u + 6 * a, 1);
            float *o = ub + (size_t)k * 16 + h;
#pragma GCC unroll 36
            for (int p = 0; p < 36; p++)
                wv_st(o + p * ad_step, &u[p]);
        }
}

static void weights_block4(const void *wp, int type, int Cin, int k0, int kc, float *ub)
{
    if (type == SD_WT_F16)
        weights_block4_t(wp, SD_WT_F16, Cin, k0, kc, ub);
    else if (type == SD_WT_BF16)
        weights_block4_t(wp, SD_WT_BF16, Cin, k0, kc, ub);
    else
        weights_block4_t(wp, SD_WT_F32, Cin, k0, kc, ub);
}

/* o[i * os] = (A^T m)_i for the six vectors m[0], m[s], .. m[5s]:
 *   A^T = [1 1 1 1 1 0; 0 1 -1 1/2 -2 0; 0 1 1 1/4 4 0; 0 1 -1 1/8 -8 1]. */
static inline void wg4_at(const wv *m, int s, wv *o, int os)
{
    const wv h = wv_set(0.5f);
    const wv q = wv_set(0.25f), e = wv_set(0.125f), f = wv_set(4.0f), t = wv_set(2.0f);
    const wv m1 = m[s], m2 = m[2 * s], m3 = m[3 * s], m4 = m[4 * s];
    const wv sp = m1 + m2, dm = m1 - m2;
    o[0] = m[0] + sp + (m3 + m4);
    o[os] = dm + (h * m3 - t * m4);
    o[2 * os] = sp + (q * m3 + f * m4);
    o[3 * os] = dm + (e * m3 - (f + f) * m4) + m[5 * s];
}

/* One output panel of the F(4x4) method (as out_panel). */
static void out_panel4(void *ctx, int64_t task, int thread)
{
    const panel_job *j = ctx;
    const wg_task_out to = wg_task_products(j, task, thread, 36, weights_block4);
    const int N = j->N, n0 = to.n0, cols = to.cols;
    const size_t acc_step = j->acc_step;
    const float *acc = to.acc;

    const sd_epilogue *ep = j->ep;
    ptrdiff_t px[16], ahead[16];
    for (int tb = 0; tb < j->nt; tb++) {
        tile4_pixels(j->t0 + tb, j->th, j->tw, j->H, j->W, px);
        if (tb + 1 < j->nt) { /* the next tile's output rows (scattered lines) */
            tile4_pixels(j->t0 + tb + 1, j->th, j->tw, j->H, j->W, ahead);
            for (int q = 0; q < 16; q++) {
                if (ahead[q] < 0)
                    continue;
                __builtin_prefetch(j->out + ahead[q] * N + n0, 1);
                if (ep && ep->residual && ep->residual != j->out)
                    __builtin_prefetch(ep->residual + ahead[q] * ep->ld_res + n0);
            }
        }
        for (int c0 = 0; c0 < cols; c0 += WG_VN) {
            const int n = cols - c0 < WG_VN ? cols - c0 : WG_VN, col = n0 + c0, h = c0 % 16;
            const float *m = acc + (size_t)(c0 / 16) * j->acc_size + (size_t)tb * 16;
            wv mv[36], s[24], y[16];
#pragma GCC unroll 36
            for (int a = 0; a < 36; a++) {
                wv_ld(&mv[a], m + a * acc_step + h);
                mv[a] *= wg4_gs2[a];
            }
#pragma GCC unroll 6
            for (int k = 0; k < 6; k++) /* columns: A^T M */
                wg4_at(mv + k, 6, s + k, 6);
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) /* rows: (A^T M) A */
                wg4_at(s + 6 * i, 1, y + 4 * i, 1);
#pragma GCC unroll 16
            for (int q = 0; q < 16; q++)
                if (px[q] >= 0)
                    wg_store(j->out, ep, j->add_out, (size_t)px[q], N, col, n, &y[q]);
        }
    }
}

/* F(4x4, 3x3), the fast mode's. */
static int wg4_run(const sd_exec *ex, const float *in, int batch, int H, int W, int Cin,
                   const sd_packed *Wp, float *out, const sd_epilogue *ep)
{
    static const wg_variant f4 = {4, 36, WG4_TB_MAX, WG4_KC, in_panel4, out_panel4, weights_block4};
    return wg_drive(ex, in, batch, H, W, Cin, Wp, out, ep, &f4);
}
#else
#define WG_HAVE 0
#endif

#endif
