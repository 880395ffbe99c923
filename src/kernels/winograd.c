/* 3x3 convolution, stride 1, padding 1, by Winograd F(2x2, 3x3).
 *
 * Each 2x2 block of output pixels ("tile") is computed from the 4x4 input
 * patch around it as Y = A^T [ (G g G^T) . (B^T d B) ] A, so the 36
 * multiplies per tile and channel pair of the direct method become 16: the
 * product of a 4x4 transformed patch with a 4x4 transformed kernel,
 * element-wise, summed over input channels. Summed over channels, that is 16
 * independent GEMMs (one per transformed position "ad"):
 *     M_ad[tile][n] = sum_ci V_ad[tile][ci] * U_ad[ci][n],
 * run on the same packed-panel GEMM as everything else, at 4/9 of the direct
 * method's multiply count (2.25x fewer FLOPs).
 *
 * The transform matrices hold only 0, +-1 and +-1/2, so every transform is
 * a short signed sum; the extra rounding costs about 1.5x the direct
 * method's error per convolution (measured against float64: 5.2e-7 vs
 * 3.3e-7 at the UNet's shapes), well inside the model's 2e-6 bar. F(4x4, 3x3)
 * would save more FLOPs, but its +-2, +-1/4 points cost several times the
 * error and are not used.
 *
 * Memory: the transformed weights are 16/9 the size of the 3x3 weights,
 * which are most of the UNet (2.2 of its 3.4 GB), so they are not kept:
 * each call transforms the packed direct weights into a bounded workspace,
 * a chunk of output channels at a time (reading 9 and writing 16 floats per
 * weight pair, a few ms against tens of ms of GEMM saved). Tiles are taken
 * in blocks so that the transformed inputs and outputs stay bounded too.
 *
 * Layouts (per block of TB tiles and chunk of nb output channels):
 *   V [tile][ad][Cin]   transformed input patches (GEMM A, row stride 16 Cin)
 *   U [ad] packed panels of Cin x nb (GEMM B, the same panel layout as sd_pack)
 *   Mt[tile][ad][nbp]   products (GEMM C, row stride 16 nbp) */
#include "kernels/kernels.h"

#include <string.h>

/* Workspace bounds (bytes) for each of V, U and Mt. */
#ifndef WG_V_BYTES
#define WG_V_BYTES (24u << 20)
#endif
#ifndef WG_U_BYTES
#define WG_U_BYTES (24u << 20)
#endif
#ifndef WG_M_BYTES
#define WG_M_BYTES (24u << 20)
#endif

/* The transforms work on 8 channels at a time as one GNU C vector (AVX2
 * where this file is built for it, two SSE halves otherwise); compilers
 * without vector extensions get the direct method instead. */
#if defined(__GNUC__)
#define WG_HAVE 1
typedef float wv __attribute__((vector_size(32)));

/* Loads and stores through pointers (a vector passed by value would change
 * the ABI where AVX is not enabled). */
static inline void wv_ld(wv *v, const float *p)
{
    memcpy(v, p, sizeof *v);
}
static inline void wv_st(float *p, const wv *v)
{
    memcpy(p, v, sizeof *v);
}

/* n <= 8 lanes: the rest read as zero / are not written. */
static inline void wv_ld_n(wv *v, const float *p, int n)
{
    if (n == 8) {
        wv_ld(v, p);
        return;
    }
    float t[8] = {0};
    memcpy(t, p, sizeof(float) * (size_t)n);
    wv_ld(v, t);
}

static inline void wv_st_n(float *p, const wv *v, int n)
{
    if (n == 8) {
        wv_st(p, v);
        return;
    }
    float t[8];
    wv_st(t, v);
    memcpy(p, t, sizeof(float) * (size_t)n);
}

/* ---- input transform: V = B^T d B, B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1] ---- */

typedef struct {
    const float *in;
    int H, W, Cin, th, tw;
    int t0;   /* first tile of the block */
    float *V; /* [tile - t0][16][Cin] */
} in_job;

static void in_tile(void *ctx, int64_t task, int thread)
{
    (void)thread;
    const in_job *j = ctx;
    const int Cin = j->Cin, t = j->t0 + (int)task, per = j->th * j->tw;
    const int b = t / per, rem = t - b * per, ty = rem / j->tw, tx = rem - ty * j->tw;
    const float *src[16];
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < 4; k++) {
            int y = 2 * ty - 1 + i, x = 2 * tx - 1 + k;
            src[i * 4 + k] = y < 0 || y >= j->H || x < 0 || x >= j->W
                                 ? NULL
                                 : j->in + (((size_t)b * j->H + y) * j->W + x) * Cin;
        }
    float *v = j->V + (size_t)task * 16 * Cin;
    const wv zero = {0};
    for (int c0 = 0; c0 < Cin; c0 += 8) {
        const int n = Cin - c0 < 8 ? Cin - c0 : 8;
        wv d[16], r[16];
        for (int p = 0; p < 16; p++)
            if (src[p])
                wv_ld_n(&d[p], src[p] + c0, n);
            else
                d[p] = zero;
        for (int k = 0; k < 4; k++) { /* rows: B^T d */
            r[0 + k] = d[0 + k] - d[8 + k];
            r[4 + k] = d[4 + k] + d[8 + k];
            r[8 + k] = d[8 + k] - d[4 + k];
            r[12 + k] = d[4 + k] - d[12 + k];
        }
        for (int i = 0; i < 4; i++) { /* columns: (B^T d) B */
            const wv *q = r + 4 * i;
            d[4 * i + 0] = q[0] - q[2];
            d[4 * i + 1] = q[1] + q[2];
            d[4 * i + 2] = q[2] - q[1];
            d[4 * i + 3] = q[1] - q[3];
        }
        for (int p = 0; p < 16; p++)
            wv_st_n(v + (size_t)p * Cin + c0, &d[p], n);
    }
}

/* ---- weight transform: U = G g G^T, G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1] ---- */

typedef struct {
    const sd_packed *Wp; /* direct weights: panels of (9 Cin) x 16, k = tap*Cin + ci */
    int Cin, p0, np;
    float *U; /* [ad][panel - p0][Cin][16] */
} w_job;

static void w_panel(void *ctx, int64_t task, int thread)
{
    (void)thread;
    const w_job *j = ctx;
    const int Cin = j->Cin, nr = 16, p = j->p0 + (int)task;
    const size_t K = (size_t)9 * Cin;
    const float *wp = j->Wp->data + (size_t)p * K * nr;
    const size_t ad_stride = (size_t)j->np * Cin * nr;
    float *u = j->U + (size_t)task * Cin * nr;
    const wv half = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
    for (int ci = 0; ci < Cin; ci++)
        for (int h = 0; h < nr; h += 8) {
            wv g[9], t[12];
            for (int tap = 0; tap < 9; tap++)
                wv_ld(&g[tap], wp + ((size_t)tap * Cin + ci) * nr + h);
            /* G g (4 x 3); the halving is exact. */
            for (int kx = 0; kx < 3; kx++) {
                wv s = g[0 + kx] + g[6 + kx];
                t[0 + kx] = g[0 + kx];
                t[3 + kx] = half * (s + g[3 + kx]);
                t[6 + kx] = half * (s - g[3 + kx]);
                t[9 + kx] = g[6 + kx];
            }
            /* (G g) G^T (4 x 4), stored per position ad */
            float *o = u + (size_t)ci * nr + h;
            for (int a = 0; a < 4; a++) {
                const wv *q = t + 3 * a;
                wv s = q[0] + q[2], u1 = half * (s + q[1]), u2 = half * (s - q[1]);
                wv_st(o + (4 * a + 0) * ad_stride, &q[0]);
                wv_st(o + (4 * a + 1) * ad_stride, &u1);
                wv_st(o + (4 * a + 2) * ad_stride, &u2);
                wv_st(o + (4 * a + 3) * ad_stride, &q[2]);
            }
        }
}

/* ---- output transform: Y = A^T M A, A^T = [1 1 1 0; 0 1 -1 -1], then the epilogue ---- */

typedef struct {
    const float *Mt; /* [tile - t0][16][nbp] */
    int nbp, n0, nb, N, H, W, th, tw, t0;
    float *out; /* (batch, H, W, N) */
    const sd_epilogue *ep;
} out_job;

static void out_tile(void *ctx, int64_t task, int thread)
{
    (void)thread;
    const out_job *j = ctx;
    const int t = j->t0 + (int)task, per = j->th * j->tw, N = j->N;
    const int b = t / per, rem = t - b * per, ty = rem / j->tw, tx = rem - ty * j->tw;
    const float *m = j->Mt + (size_t)task * 16 * j->nbp;
    const sd_epilogue *ep = j->ep;
    size_t row[4]; /* output pixel of tile position (i, k), or SIZE_MAX past the edge */
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < 2; k++) {
            const int oy = 2 * ty + i, ox = 2 * tx + k;
            row[2 * i + k] =
                oy < j->H && ox < j->W ? ((size_t)b * j->H + oy) * j->W + ox : (size_t)-1;
        }
    /* Columns past nb in Mt were never written: their lanes are computed
     * (nbp is a multiple of 16, so the loads stay inside the row) and dropped. */
    for (int c0 = 0; c0 < j->nb; c0 += 8) {
        const int n = j->nb - c0 < 8 ? j->nb - c0 : 8, col = j->n0 + c0;
        wv s[8], y[4];
        for (int k = 0; k < 4; k++) { /* rows: A^T M */
            wv v0, v1, v2, v3;
            wv_ld(&v0, m + (size_t)(0 + k) * j->nbp + c0);
            wv_ld(&v1, m + (size_t)(4 + k) * j->nbp + c0);
            wv_ld(&v2, m + (size_t)(8 + k) * j->nbp + c0);
            wv_ld(&v3, m + (size_t)(12 + k) * j->nbp + c0);
            s[k] = v0 + v1 + v2;
            s[4 + k] = v1 - v2 - v3;
        }
        for (int i = 0; i < 2; i++) { /* columns: (A^T M) A */
            const wv *q = s + 4 * i;
            y[2 * i + 0] = q[0] + q[1] + q[2];
            y[2 * i + 1] = q[1] - q[2] - q[3];
        }
        for (int p = 0; p < 4; p++) {
            if (row[p] == (size_t)-1)
                continue;
            /* Same order as the GEMM epilogue: acc + bias + group + residual. */
            wv v = y[p], e;
            if (ep && ep->bias) {
                wv_ld_n(&e, ep->bias + col, n);
                v += e;
            }
            if (ep && ep->group_add) {
                wv_ld_n(&e, ep->group_add + (row[p] / (size_t)ep->group_rows) * N + col, n);
                v += e;
            }
            if (ep && ep->residual) {
                wv_ld_n(&e, ep->residual + row[p] * ep->ld_res + col, n);
                v += e;
            }
            wv_st_n(j->out + row[p] * N + col, &v, n);
        }
    }
}
#else
#define WG_HAVE 0
#endif

int sd_winograd_pays(int batch, int H, int W, int Cin, int N)
{
    /* Below ~64 tiles the per-call weight transform costs more than the
     * GEMM work it saves; tiny channel counts do not fill a microkernel. */
    long tiles = (long)batch * ((H + 1) / 2) * ((W + 1) / 2);
    return WG_HAVE && Cin >= 32 && N >= 32 && tiles >= 64;
}

int sd_conv3x3_winograd(const sd_exec *ex, const float *in, int batch, int H, int W, int Cin,
                        const sd_packed *Wp, float *out, const sd_epilogue *ep)
{
    const int nr = 16, N = Wp->N;
    if (!WG_HAVE || Wp->nr != nr || Wp->K != 9 * Cin || batch <= 0 || H <= 0 || W <= 0)
        return 0;
    const int th = (H + 1) / 2, tw = (W + 1) / 2;
    const long tiles_l = (long)batch * th * tw;
    if (tiles_l > INT32_MAX)
        return 0;
    const int tiles = (int)tiles_l, panels = (N + nr - 1) / nr;

    /* Output-channel chunk: as many panels as fit the U bound (at least one). */
    size_t u_per_panel = (size_t)16 * Cin * nr * sizeof(float);
    int ppc = (int)(WG_U_BYTES / u_per_panel);
    ppc = ppc < 1 ? 1 : ppc > panels ? panels : ppc;
    const int chunks = (panels + ppc - 1) / ppc;
    ppc = (panels + chunks - 1) / chunks; /* equal chunks */
    const int nbp = ppc * nr;
    /* Tile block: bounded by V and Mt. */
    size_t v_per_tile = (size_t)16 * Cin * sizeof(float),
           m_per_tile = (size_t)16 * nbp * sizeof(float);
    size_t tb = WG_V_BYTES / v_per_tile;
    if (WG_M_BYTES / m_per_tile < tb)
        tb = WG_M_BYTES / m_per_tile;
    if (tb < 16)
        tb = 16;
    if (tb > (size_t)tiles)
        tb = (size_t)tiles;
    const int blocks = (int)((tiles + tb - 1) / tb);
    const int TB = (tiles + blocks - 1) / blocks;

    float *V = sd_ws_get(ex, 4, (size_t)TB * v_per_tile);
    float *U = sd_ws_get(ex, 5, (size_t)ppc * u_per_panel);
    float *Mt = sd_ws_get(ex, 6, (size_t)TB * m_per_tile);
    if (!V || !U || !Mt) {
        sd_ws_put(ex, 4, V);
        sd_ws_put(ex, 5, U);
        sd_ws_put(ex, 6, Mt);
        return 0;
    }
    sd_pool *pool = ex->pool;
    for (int c = 0; c < chunks; c++) {
        const int p0 = c * ppc, np = panels - p0 < ppc ? panels - p0 : ppc;
        const int n0 = p0 * nr, nb = N - n0 < np * nr ? N - n0 : np * nr;
        w_job wj = {Wp, Cin, p0, np, U};
        sd_pool_run(pool, np, w_panel, &wj);
        for (int blk = 0; blk < blocks; blk++) {
            const int t0 = blk * TB, nt = tiles - t0 < TB ? tiles - t0 : TB;
            if (blocks > 1 || c == 0) { /* one block: V is the same for every chunk */
                in_job ij = {in, H, W, Cin, th, tw, t0, V};
                sd_pool_run(pool, nt, in_tile, &ij);
            }
            for (int ad = 0; ad < 16; ad++) {
                sd_packed Uad = {
                    .K = Cin, .N = nb, .nr = nr, .data = U + (size_t)ad * np * Cin * nr};
                sd_gemm(ex, nt, V + (size_t)ad * Cin, 16 * Cin, &Uad, Mt + (size_t)ad * nbp,
                        16 * nbp, NULL);
            }
            out_job oj = {Mt, nbp, n0, nb, N, H, W, th, tw, t0, out, ep};
            sd_pool_run(pool, nt, out_tile, &oj);
        }
    }
    sd_ws_put(ex, 4, V);
    sd_ws_put(ex, 5, U);
    sd_ws_put(ex, 6, Mt);
    return 1;
}
