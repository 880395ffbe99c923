/* Compute kernels. Activations are channels-last: a (B, H, W, C) tensor is a
 * row-major matrix of B*H*W rows ("tokens") by C columns, so 1x1
 * convolutions and linear layers are plain GEMMs and 3x3 convolutions are
 * implicit GEMMs over 9 shifted views of the same rows. Weights are packed
 * once at load into the layout the selected microkernel streams.
 *
 * Every kernel has a plain reference version (engine/reference.c) used by
 * the tests. Nothing here allocates per call except where noted (GEMM/conv
 * packing scratch, attention tiles; each has an allocation-free fallback);
 * nothing holds global mutable state.
 *
 * Accuracy: fp32 data, fp32 GEMM sums in runs of SD_MICRO_SUB k steps added
 * up (rel. L2 ~2e-7 at K = 2880 vs a double reference), norm statistics in
 * double, softmax/SiLU/GELU within a few ulp; no fast-math anywhere. */
#ifndef SD_KERNELS_H
#define SD_KERNELS_H

#include "common.h"
#include "engine/pool.h"

#include <string.h>

/* Epilogue terms for one microkernel tile at C[m][n] (see sd_epilogue):
 * bias at column n; per tile row i, the group_add and residual rows at
 * column n. Any may be NULL. */
#define SD_MR_MAX 16
typedef struct sd_tile_ep {
    const float *bias;
    const float *g[SD_MR_MAX];
    const float *r[SD_MR_MAX];
} sd_tile_ep;

/* c[i][j] = (accumulate ? c[i][j] : 0) + t[i][j] (+ bias[j] + g[i][j] +
 * r[i][j] when te is given), left to right, for i < rows, j < cols. r[i]
 * may alias c's row: each element is read before it is written. */
void sd_tile_store(const float *t, int ldt, float *c, int ldc, int accumulate, int rows, int cols,
                   const sd_tile_ep *te);

struct sd_exec;
struct sd_packed;
struct sd_epilogue;

/* The GEMM on an AMX tile unit (gemm_amx.c; every float32
 * operand split into SD_AMX_TERMS bfloat16 terms, hi + mid + lo, the
 * product summed from the six terms of order 2^-16 and above in float32:
 * float32's accuracy; the fast mode's set leaves out hi*lo, and B's lo
 * term is never made or read). A block of C is 32 rows x 2 panels of 16
 * columns. */
#define SD_AMX_TERMS 3
typedef struct sd_amx_kernels {
    /* Tile configuration of the calling thread: begin before the first
     * block of a task, end after its last. */
    void (*begin)(void);
    void (*end)(void);
    /* Rows [0, rows) of A (row stride lda), k values [0, kc), as nrt row
     * tiles of 16 rows (rows past `rows` zero) by ceil(kc/32) k tiles,
     * SD_AMX_TERMS terms each: tile (term, t, kt) at dst + ((term*nrt +
     * t)*nkt + kt) * 512. dst: 64-byte aligned. Returns nonzero if a
     * value is one the split cannot hold (infinite, NaN, or rounding to
     * infinity: |x| >= 3.39e38); those products go to the float kernels. */
    int (*pack_a)(const float *a, size_t lda, int rows, int kc, int nrt, uint16_t *dst);
    /* One B panel (kc k steps of 16 floats, k-major) as ceil(kc/32) k
     * tiles of each term: tile (term, kt) at dst + (term*nkt + kt) * 512.
     * dst: 64-byte aligned. Returns nonzero as pack_a does. */
    int (*pack_b)(const float *b, int kc, uint16_t *dst);
    /* C (32 x 32, in two panels of 16 columns) from nkt k tiles: A row
     * tile 0 at a, row tile 1 at a + ats, term c at + c * acs; panels
     * b[0], b[1], term c at + c * bcs. Stored as sd_tile_store stores
     * (accumulate, epilogue te[2*half + panel] for rows 16 half..), for
     * rows < `rows` and columns < cols[h]; cols[h] = 0 skips panel h.
     * With rows <= 16, row tile 1 is neither read nor computed. */
    void (*block)(int nkt, const uint16_t *a, size_t ats, size_t acs, const uint16_t *const b[2],
                  size_t bcs, float *const c[2], int ldc, int accumulate, int rows,
                  const int cols[2], const sd_tile_ep *te);
} sd_amx_kernels;

/* A kernel set chosen at run time from the CPU's features. */
typedef struct sd_kernels {
    const char *name; /* "avx512", "avx2", "portable" */
    int mr, nr;       /* microkernel tile: mr rows of A by nr columns of B */
    /* C[mr x nr] (row stride ldc) = (accumulate ? C : 0) + Apanel * Bpanel,
     * Apanel: kc steps of mr floats (packed column-major by k),
     * Bpanel: kc steps of nr floats. rows/cols < mr/nr store a partial tile.
     * The product is summed in fp32 in runs of SD_MICRO_SUB steps. With te
     * (else NULL) the epilogue terms are added as the tile is stored, as
     * sd_tile_store does. */
    void (*micro)(int kc, const float *a, const float *b, float *c, int ldc, int accumulate,
                  int rows, int cols, const sd_tile_ep *te);
    /* Two adjacent output panels at once, or NULL: micro(kc, a, b[h], c[h],
     * ldc, accumulate, rows, cols[h], te[h]) for h = 0 and 1 with the same
     * A panel, every result bit for bit what micro gives (same sums in the
     * same order). te is NULL or points at two tile epilogues. Each A value
     * is then used for two B vectors: half the A loads per multiply-add. */
    void (*micro2)(int kc, const float *a, const float *const b[2], float *const c[2], int ldc,
                   int accumulate, int rows, const int cols[2], const sd_tile_ep *te);
    /* The AMX GEMM, used in both modes for products whose A is one matrix
     * or gathered (sd_gemm, sd_gemm_geglu, sd_gemm_cat), or NULL. */
    const sd_amx_kernels *amx;
    /* The fast mode's AMX GEMM (five products, see gemm_amx.c), or NULL. */
    const sd_amx_kernels *amx_fast;
    /* Packs mr rows into one A micro-panel: dst[k*mr + i] = rows[i][k], k < len. */
    void (*pack_panel)(const float *const *rows, int len, float *dst);
    /* Online-softmax step on a rows x nr block (row stride nr) whose columns
     * are independent softmax rows (attention: one query per column):
     * m[j] = max(m[j], max over r of s[r][j] * scale) (m may start at -inf),
     * then s[r][j] = exp(s[r][j] * scale - m[j]) with the argument rounded
     * once (fma or double), and colsum[j] = sum over r of the new s[r][j].
     * Terms below e^-80 (1.8e-35; the column's largest term is 1) may be
     * flushed to zero or raised to e^-80. */
    void (*softmax_cols)(float *s, int rows, float scale, float *m, float *colsum);
    /* Scores and online-softmax step of np attention tiles, in base 2, or
     * NULL (then the caller uses micro and softmax_cols). For query panel
     * q < np (the B panels of kc steps, nr queries each, one after another
     * at b, scaled beforehand by log2(e) times the softmax scale; tile
     * t = s + q*lds, 64-byte aligned, and columns j of q*nr + j in m,
     * colsum and corr) and keys r < rows: t[r][j] = the dot product of
     * key r (A panels of kc steps, mr keys each, as micro's; ceil(rows/mr)
     * of them, zero-padded) and query j, summed as micro sums it; then
     * m[j] = max(m[j], max over r < rows of t[r][j]) (m may start at -inf),
     * t[r][j] = 2^(t[r][j] - m[j]) for r < rows, colsum[j] = their sum and
     * corr[j] = 2^(old m[j] - new m[j]). A tile holds ceil(rows/mr)*mr
     * rows of nr; the padding rows are left undefined. Terms below 2^-126
     * may be subnormal or zero. */
    void (*attn_tile)(int kc, int rows, int np, const float *a, const float *b, float *s, int lds,
                      float *m, float *colsum, float *corr);
    /* The O^T update of one query panel, or NULL (then the caller rescales
     * O^T and uses micro): for channels c < rows and queries j < nr,
     * o[c*ldo + j] = (corr ? o[c*ldo + j] * corr[j] (one rounding) : 0) +
     * the sum over k < kc of V^T[c][k] * p[k*nr + j], summed as micro sums
     * it. V^T is given as mr-row A panels of kc steps, vs floats apart
     * (panel c / mr holds channel c in lane c % mr; lanes past rows are
     * zero and may be read). */
    void (*attn_pv)(int kc, int rows, const float *v, size_t vs, const float *p, float *o, int ldo,
                    const float *corr);
    /* y[i] = x[i] / (1 + exp(-(a * x[i]))) for i < n, a * x[i] rounded to
     * float: SiLU at a = 1 (exactly x), CLIP's quick GELU x * sigmoid(1.702
     * x) at a = 1.702f; y may equal x. */
    void (*silu)(const float *x, float *y, size_t n, float a);
    /* y[r*ldy + i] = h[r*n + i] * gelu(g[r*n + i]), exact-erf GELU, for
     * r < rows and i < n (rows of a GEGLU; h and g rows x n contiguous):
     * within ~3e-7 relative for g > -2.5, and in absolute terms beyond.
     * One call for a whole block lets the long-latency GELU steps of
     * successive vectors overlap. */
    void (*gelu_mul)(const float *h, const float *g, float *y, int n, int rows, size_t ldy);
    /* The row passes of GroupNorm and LayerNorm (engine/norm.c), for c < n,
     * in double, each element by the same operations in the same order in
     * every set (no fused multiply-add), so every set gives the same bits:
     * norm_sum: acc[c] += x[c], or with mean acc[c] += (x[c] - mean[c])^2;
     * norm_affine: y[c] = (float)((x[c] - mean[c]) * scale[c] + beta[c]);
     * norm_affine1: y[c] = (float)((x[c] - mean) * (rstd * gamma[c]) + beta[c]). */
    void (*norm_sum)(const float *x, int n, const double *mean, double *acc);
    void (*norm_affine)(const float *x, int n, const double *mean, const double *scale,
                        const float *beta, float *y);
    void (*norm_affine1)(const float *x, int n, double mean, double rstd, const float *gamma,
                         const float *beta, float *y);
    /* dst[i] = the float32 value of the 16-bit weight src[i], i < n, for
     * type SD_WT_F16 (IEEE binary16: exact, subnormals included, Inf kept,
     * a NaN keeps its sign and payload and comes out quiet, as IEEE
     * convertFormat and F16C give it) or SD_WT_BF16 (the top half of a
     * float32: exact, bits kept). Results equal sd_wt_widen1. */
    void (*widen)(int type, const uint16_t *src, float *dst, size_t n);
    /* sd_conv3x3_winograd built for this set, or NULL for the portable build. */
    int (*winograd)(const struct sd_exec *ex, const float *in, int batch, int H, int W, int Cin,
                    const struct sd_packed *Wp, float *out, const struct sd_epilogue *ep);
    /* sd_conv3x3_winograd4 built for this set, or NULL for the portable build. */
    int (*winograd4)(const struct sd_exec *ex, const float *in, int batch, int H, int W, int Cin,
                     const struct sd_packed *Wp, float *out, const struct sd_epilogue *ep);
} sd_kernels;

/* Best kernel set for this CPU. `force` may name one ("portable", "avx2", "avx512", "amx")
 * or be NULL; an unknown or unavailable name returns NULL. */
const sd_kernels *sd_kernels_select(const char *force);

/* Execution context passed to every kernel. */
/* Scratch memory kept between kernel calls (grow-only, one buffer per
 * slot), so a forward does not map and fault in fresh pages for every op. */
#define SD_WS_SLOTS 7
typedef struct sd_workspace {
    void *buf[SD_WS_SLOTS];
    size_t cap[SD_WS_SLOTS];
    /* 0, or the largest buffer it hands out: a larger request gets NULL as
     * if memory had run out (the tests use it to run the kernels'
     * allocation-failure paths). */
    size_t limit;
} sd_workspace;
void sd_workspace_free(sd_workspace *ws); /* frees the buffers, not ws itself */

/* How sd_conv3x3 computes stride-1 convolutions. */
typedef enum {
    SD_CONV_AUTO = 0, /* Winograd where sd_winograd_pays, else direct */
    SD_CONV_DIRECT,   /* implicit GEMM only */
    SD_CONV_WINOGRAD, /* Winograd for every stride-1 call (tests) */
} sd_conv_algo;

/* "direct" or "winograd" (the SDUNET_CONV values); anything else, NULL
 * included, is SD_CONV_AUTO. */
sd_conv_algo sd_conv_algo_parse(const char *name);

typedef struct sd_exec {
    sd_pool *pool; /* NULL: run on the calling thread */
    const sd_kernels *kern;
    sd_workspace *ws; /* NULL: scratch is allocated per call */
    sd_conv_algo conv;
    /* NULL, or where a kernel records a broken internal invariant (weights
     * packed for another kernel set or product kind, a 3x3 weight depth
     * that is not 9 * Cin) before returning without computing. Only a bug
     * in the library can set it: the model builds every call from its own
     * packed weights. The model turns it into SDUNET_E_INTERNAL. */
    int *fault;
    /* 0: exact mode. 1: fast mode, where sd_conv3x3 may use Winograd
     * F(4x4, 3x3) (sd_winograd4_pays), whose error is several times the
     * exact mode's (see winograd.c), and the GEMM the set's amx_fast. */
    int fast;
} sd_exec;

static inline void sd_exec_fault(const sd_exec *ex)
{
    if (ex->fault)
        *ex->fault = 1;
}

/* At least `bytes` of 64-byte aligned scratch for slot (0: GEMM/conv
 * A blocks; 1, 2: attention; 3, 4, 5: Winograd; 6: GEGLU product blocks), from the workspace when
 * the exec has one, else freshly allocated. NULL on allocation failure. Give it back with
 * sd_ws_put. Slots let one kernel hold several buffers at once. */
void *sd_ws_get(const sd_exec *ex, int slot, size_t bytes);
void sd_ws_put(const sd_exec *ex, int slot, void *p);

/* How packed weights are stored. The kernels compute in float32 either
 * way: 16-bit panels are widened block by block (a kc x nr slice of one
 * panel at a time, into per-thread scratch) right before the microkernel
 * sweeps it over the rows of the product, so a layer never exists as a
 * float32 copy. Widening is exact, so a product with 16-bit panels equals,
 * bit for bit, the product with float32 panels of the same values. */
typedef enum sd_wtype {
    SD_WT_F32 = 0,
    SD_WT_F16 = 1,  /* IEEE binary16 */
    SD_WT_BF16 = 2, /* bfloat16 */
} sd_wtype;
#define SD_WT_COUNT 3
/* "f32", "f16", "bf16" ("?" for anything else). */
const char *sd_wtype_name(int type);
/* Bytes per stored weight: 4 or 2. */
static inline size_t sd_wtype_size(int type)
{
    return type == SD_WT_F32 ? 4 : 2;
}

/* One weight widened: the scalar form of kern->widen (the portable set's). */
static inline float sd_wt_widen1(int type, uint16_t h)
{
    uint32_t bits;
    if (type == SD_WT_BF16) {
        bits = (uint32_t)h << 16;
    } else {
        const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
        if (e == 0x1F) /* Inf, or NaN made quiet */
            bits = sign | 0x7F800000u | (m << 13) | (m ? 0x400000u : 0);
        else if (e)
            bits = sign | ((e + 112) << 23) | (m << 13);
        else { /* zero or subnormal: m * 2^-24, exact (a normal float32) */
            float f = (float)m * 0x1p-24f;
            return sign ? -f : f;
        }
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Weights packed for the GEMM: logical B[K][N], N = output features. */
typedef struct sd_packed {
    int K, N, nr;
    int type;   /* sd_wtype of the stored values */
    void *data; /* ceil(N/nr) panels, each K x nr values (k-major), zero padded */
    /* 0, or F for a GEGLU projection packed by sd_pack_geglu: its N = 2F
     * columns [hidden | gate] are stored as panel pairs (hidden panel q,
     * gate panel q), so only sd_gemm_geglu may multiply by it. */
    int geglu_F;
} sd_packed;

/* Packs w, laid out [N][Cin][taps] (PyTorch OIHW conv weights with taps =
 * kh*kw, or a Linear weight [N][K] with taps = 1), as B[k][n] with
 * k = tap*Cin + ci. Returns SDUNET_E_NOMEM on failure. The result fits any
 * kernel set with the same nr (every set today has nr = 16). */
sdunet_status sd_pack(const sd_kernels *kern, const float *w, int N, int Cin, int taps,
                      sd_packed *out);
/* Packs a GEGLU projection's Linear weight w[2F][K] ([hidden | gate]
 * rows) for sd_gemm_geglu. SDUNET_E_INVALID_ARG unless F is a multiple of
 * the kernel set's nr (then use sd_pack, sd_gemm and sd_geglu). */
sdunet_status sd_pack_geglu(const sd_kernels *kern, const float *w, int F, int K, sd_packed *out);
/* sd_pack_geglu's condition on F for panels nr wide (the forward's memory
 * plan asks it too when it has no weights to look at). */
static inline int sd_geglu_packable(int F, int nr)
{
    return F > 0 && F % nr == 0 && F <= INT32_MAX / 2;
}
/* Where sd_pack_src reads weights laid out as sd_pack's w: `parts`
 * (1..SD_WSRC_PARTS) blocks of `rows` output rows each stacked along N
 * (q|k|v fused), part p at part[p]; values of `type`: SD_WT_F32 native
 * floats (float aligned), SD_WT_F16 / SD_WT_BF16 little-endian 16-bit
 * values at any alignment (a file mapping as it is). */
#define SD_WSRC_PARTS 4
typedef struct sd_wsrc {
    int type;
    int parts, rows;
    const void *part[SD_WSRC_PARTS];
} sd_wsrc;

/* sd_pack (geglu_F = 0) or sd_pack_geglu (geglu_F = F, N = 2F) from w, with
 * the panels stored as `store`: the same type is copied bit for bit, a
 * wider one widened exactly, a narrower one rounded to nearest even
 * (float32 -> float16 overflows to Inf past 65504 and loses precision below
 * 2^-14). SDUNET_E_INVALID_ARG on bad arguments (N != parts * rows, a
 * geglu_F that sd_geglu_packable refuses), SDUNET_E_NOMEM. */
sdunet_status sd_pack_src(const sd_kernels *kern, const sd_wsrc *w, int N, int Cin, int taps,
                          int geglu_F, int store, sd_packed *out);
/* Bytes of the panels sd_pack_src makes for N x K weights stored as
 * `store` in panels nr wide (SIZE_MAX on overflow). */
size_t sd_packed_bytes(int N, size_t K, int nr, int store);
void sd_packed_free(sd_packed *p);

/* Fused epilogue, applied once per output element after the full K sum:
 * C[m][n] = acc + bias[n] + group_add[(m / group_rows) * N + n] + residual[m * ld_res + n]
 * Each term is optional (NULL). residual may alias C exactly (residual == C
 * and ld_res == ldc) or not overlap it at all; in the aliased case the
 * residual may be added first (residual + acc + ...), same accuracy. */
typedef struct sd_epilogue {
    const float *bias;
    const float *group_add;
    int group_rows;
    const float *residual;
    int ld_res;
} sd_epilogue;

/* C[M][N] (row stride ldc) = A[M][K] (row stride lda) * B + epilogue.
 * A must not overlap C. Allocates per call: threads x ~144 KiB of packing
 * scratch, plus up to 32 KiB for widening 16-bit panels (on failure it
 * falls back to a slower single-thread path). B may be stored in any
 * sd_wtype; the result is the same bit for bit. */
void sd_gemm(const sd_exec *ex, int M, const float *A, int lda, const sd_packed *B, float *C,
             int ldc, const sd_epilogue *ep);
/* sd_gemm with A the channel concatenation [A1 | A2] of two row-major
 * matrices (M x K1 and M x K2, K1 + K2 = B->K), read in place; A2 may be
 * NULL with K2 = 0 (then it is sd_gemm with lda = K1). */
void sd_gemm_cat(const sd_exec *ex, int M, const float *A1, int K1, const float *A2, int K2,
                 const sd_packed *B, float *C, int ldc, const sd_epilogue *ep);

/* 3x3 convolution, padding 1, stride 1 or 2 (any stride >= 1 works), as an
 * implicit GEMM, no im2col buffer; scratch as sd_gemm.
 * in: (batch, H, W, Cin) channels-last; W packed with taps = 9 (K = 9*Cin);
 * out: (batch, Ho, Wo, N), Ho = (H - 1) / stride + 1 (same for Wo).
 * Epilogue rows are output pixels (m = (b*Ho + y)*Wo + x). */
void sd_conv3x3(const sd_exec *ex, const float *in, int batch, int H, int W, int Cin, int stride,
                const sd_packed *Wp, float *out, const sd_epilogue *ep);

/* 3x3 convolution with no padding on the top and left and one zero row
 * and column on the bottom and right: diffusers' Downsample2D with
 * padding=0, F.pad(x, (0, 1, 0, 1)) then a padding-0 convolution, without
 * forming the padded input. Same layouts as sd_conv3x3; out is (batch, Ho,
 * Wo, N) with Ho = (H - 2) / stride + 1 (same for Wo); H and W >= 2. */
void sd_conv3x3_pad0(const sd_exec *ex, const float *in, int batch, int H, int W, int Cin,
                     int stride, const sd_packed *Wp, float *out, const sd_epilogue *ep);

/* Winograd F(2x2, 3x3) form of sd_conv3x3 for stride 1 (winograd.c), same
 * arguments and result. Returns 0 without touching `out` if it cannot run
 * (no workspace memory); the caller then uses the direct method. */
int sd_conv3x3_winograd(const sd_exec *ex, const float *in, int batch, int H, int W, int Cin,
                        const sd_packed *Wp, float *out, const sd_epilogue *ep);
/* Whether SD_CONV_AUTO picks Winograd for this stride-1 shape. */
int sd_winograd_pays(int batch, int H, int W, int Cin, int N);
/* Winograd F(4x4, 3x3) form of sd_conv3x3 for stride 1 (winograd.c): same
 * arguments and result up to rounding (relative L2 ~2e-6 against a double
 * reference at the UNet's shapes, vs ~5e-7 for F(2x2)); 0 without touching
 * `out` if it cannot run. Used only in fast mode (sd_exec.fast). */
int sd_conv3x3_winograd4(const sd_exec *ex, const float *in, int batch, int H, int W, int Cin,
                         const sd_packed *Wp, float *out, const sd_epilogue *ep);
/* Whether fast mode picks F(4x4) for this stride-1 shape. */
int sd_winograd4_pays(int batch, int H, int W, int Cin, int N);

/* GroupNorm over channels-last x (batch, HW, C): G groups of C/G channels,
 * statistics over HW x C/G (accumulated in double), then gamma/beta and
 * optionally SiLU. y may equal x. */
void sd_groupnorm(const sd_exec *ex, const float *x, int batch, int HW, int C, int G, float eps,
                  const float *gamma, const float *beta, int silu, float *y);

/* sd_groupnorm of the channel concatenation [x1 | x2] (C1 + C2 channels, y
 * that wide) without forming it: x1 is (batch, HW, C1), x2 (batch, HW, C2)
 * or NULL. y must not overlap x1 or x2 when x2 is given. */
void sd_groupnorm_cat(const sd_exec *ex, const float *x1, int C1, const float *x2, int C2,
                      int batch, int HW, int G, float eps, const float *gamma, const float *beta,
                      int silu, float *y);

/* LayerNorm over the last axis of x (M rows, C columns). y may equal x. */
void sd_layernorm(const sd_exec *ex, const float *x, int M, int C, float eps, const float *gamma,
                  const float *beta, float *y);

/* y = x * sigmoid(x), n elements. y may equal x. */
void sd_silu(const sd_exec *ex, const float *x, float *y, size_t n);

/* GEGLU: x is M rows of 2F values [hidden | gate]; y[m][f] = hidden * gelu_erf(gate). */
void sd_geglu(const sd_exec *ex, const float *x, int M, int F, float *y);

/* The GEGLU feed-forward's projection and activation in one pass:
 * y[m][f] (row stride ldy) = h * gelu_erf(g), with [h | g] = A[m] * B + bias
 * (bias: 2F values, [hidden | gate], or NULL), B packed by sd_pack_geglu.
 * Equal to sd_gemm then sd_geglu, bit for bit; the 2F-wide product lives
 * only in per-thread blocks (144 x 32 floats when K fits one block, up to
 * 144 x 512 otherwise), never in memory as a whole. A must not overlap y. */
void sd_gemm_geglu(const sd_exec *ex, int M, const float *A, int lda, const sd_packed *B,
                   const float *bias, float *y, int ldy);

/* Multi-head scaled dot-product attention, softmax over keys, tiled with an
 * online softmax (no Nq x Nk score matrix).
 * For each batch b and head h: rows b*Nq.. of q, b*Nk.. of k and v; head h
 * is columns [h*dh, (h+1)*dh). o has the layout of q (row stride ldo) and
 * must not overlap q, k or v. Nk == 0 gives zeros. Allocates per call: K/V
 * of a few (batch, head) pairs packed (<= 8 MiB, or one pair if larger)
 * plus 85-150 KiB of tiles per thread; on failure a slow serial path. */
void sd_attention(const sd_exec *ex, int batch, int heads, int dh, int Nq, int Nk, const float *q,
                  int ldq, const float *k, int ldk, const float *v, int ldv, float *o, int ldo,
                  float scale);

/* sd_attention over N tokens with a causal mask (the text encoders): query
 * i attends to keys 0..i only. */
void sd_attention_causal(const sd_exec *ex, int batch, int heads, int dh, int N, const float *q,
                         int ldq, const float *k, int ldk, const float *v, int ldv, float *o,
                         int ldo, float scale);

/* y = GELU(x), n elements, y may equal x: quick = 0 the exact erf form
 * x * Phi(x) (kern->gelu_mul's accuracy), quick = 1 CLIP's
 * x * sigmoid(1.702 x). */
void sd_gelu(const sd_exec *ex, const float *x, float *y, size_t n, int quick);

/* Nearest-neighbour resize, channels-last, PyTorch's rule: source index =
 * floor(dst * in / out), computed as PyTorch does (dst / 2 for exactly 2x,
 * else floorf(dst * (float)in / out) in float, clamped to in - 1); that
 * equals the exact rational floor for out = 2*in +- 1, but not always. */
void sd_upsample_nearest(const sd_exec *ex, const float *x, int batch, int H, int W, int C, int Ho,
                         int Wo, float *y);

/* ---- internal to src/kernels (shared by gemm.c, conv.c, attention.c) ---- */

/* Largest K block the GEMM driver uses (floats); also the length of the
 * shared zero row. */
#define SD_KC_MAX 512
/* Microkernels restart their register sums every SD_MICRO_SUB k steps and
 * add the partial sums up (accuracy: see the top of gemm.c). */
#ifndef SD_MICRO_SUB
#define SD_MICRO_SUB 64
#endif

/* Where the GEMM driver gets A from: pack(src, m0, rows, k0, kc, kern, dst)
 * fills ceil(rows/mr) micro-panels of kc x mr floats (dst[p*kc*mr + k*mr + i]
 * = A[m0 + p*mr + i][k0 + k]), zero for rows past `rows`. kc <= SD_KC_MAX. */
typedef struct sd_gemm_src {
    void (*pack)(const void *src, int m0, int rows, int k0, int kc, const sd_kernels *kern,
                 float *dst);
    const void *src;
    /* A itself when it is one row-major matrix (row stride ld), which the
     * AMX path reads in place; NULL otherwise. */
    const float *rows;
    int ld;
    /* Else, or NULL: rows [m0, m0 + rows), K steps [k0, k0 + kc) copied
     * to dst as a row-major rows x kc block, which the AMX path reads.
     * With neither, the product runs on the float kernels. */
    void (*gather)(const void *src, int m0, int rows, int k0, int kc, float *dst);
} sd_gemm_src;

/* The blocked, threaded GEMM behind sd_gemm and sd_conv3x3:
 * C[M][N] = A (from `a`, M x B->K) * B + epilogue. */
void sd_gemm_run(const sd_exec *ex, int M, const sd_gemm_src *a, const sd_packed *B, float *C,
                 int ldc, const sd_epilogue *ep);

/* Interleaves mr rows into one micro-panel: dst[k*mr + i] = rows[i][k] for
 * k < len. A row may point at sd_zero_row (len <= SD_KC_MAX). */
void sd_pack_rows(const float *const *rows, int mr, int len, float *dst);
extern const float sd_zero_row[SD_KC_MAX];

/* The portable row passes of the norms (norm.c), and their AVX build
 * (norm_avx2.c, used by the AVX2 and AVX-512 sets): see sd_kernels.norm_sum. */
void sd_norm_sum_c(const float *x, int n, const double *mean, double *acc);
void sd_norm_affine_c(const float *x, int n, const double *mean, const double *scale,
                      const float *beta, float *y);
void sd_norm_affine1_c(const float *x, int n, double mean, double rstd, const float *gamma,
                       const float *beta, float *y);

#if SD_HAVE_X86
void sd_norm_sum_avx2(const float *x, int n, const double *mean, double *acc);
void sd_norm_affine_avx2(const float *x, int n, const double *mean, const double *scale,
                         const float *beta, float *y);
void sd_norm_affine1_avx2(const float *x, int n, double mean, double rstd, const float *gamma,
                          const float *beta, float *y);
/* The x86 kernel sets and their builds of the Winograd convolution
 * (winograd_avx2.c, winograd_avx512.c: the transforms do not depend on
 * the tile height, and every build does the same operations per lane). */
extern const sd_kernels sd_kernels_avx2;   /* gemm_avx2.c */
extern const sd_kernels sd_kernels_avx512; /* gemm_avx512.c */
/* The AVX-512 set with the AMX GEMM (gemm_avx512.c, gemm_amx.c). */
extern const sd_kernels sd_kernels_amx;
extern const sd_amx_kernels sd_amx_kernels_bf16x3, sd_amx_kernels_bf16x5;
int sd_conv3x3_winograd_avx2(const sd_exec *ex, const float *in, int batch, int H, int W, int Cin,
                             const sd_packed *Wp, float *out, const sd_epilogue *ep);
int sd_conv3x3_winograd4_avx2(const sd_exec *ex, const float *in, int batch, int H, int W, int Cin,
                              const sd_packed *Wp, float *out, const sd_epilogue *ep);
int sd_conv3x3_winograd_avx512(const sd_exec *ex, const float *in, int batch, int H, int W, int Cin,
                               const sd_packed *Wp, float *out, const sd_epilogue *ep);
int sd_conv3x3_winograd4_avx512(const sd_exec *ex, const float *in, int batch, int H, int W,
                                int Cin, const sd_packed *Wp, float *out, const sd_epilogue *ep);
#endif

/* ---- reference (naive, obviously correct) versions for the tests ---- */
void sd_ref_gemm(int M, int N, int K, const float *A, int lda, const float *Bkn, float *C, int ldc,
                 const sd_epilogue *ep); /* Bkn: plain K x N row-major */
void sd_ref_conv3x3(const float *in, int batch, int H, int W, int Cin, int stride,
                    const float *w_oihw, int N, float *out, const sd_epilogue *ep);
/* 0 if its scratch cannot be allocated (o is then untouched), else 1. */
int sd_ref_attention(int batch, int heads, int dh, int Nq, int Nk, const float *q, int ldq,
                     const float *k, int ldk, const float *v, int ldv, float *o, int ldo,
                     float scale);
/* sd_ref_attention with query i attending to keys 0..i (Nq == Nk); 0 if its
 * scratch cannot be allocated. */
int sd_ref_attention_causal(int batch, int heads, int dh, int N, const float *q, int ldq,
                            const float *k, int ldk, const float *v, int ldv, float *o, int ldo,
                            float scale);
void sd_ref_gelu(const float *x, float *y, size_t n, int quick);
void sd_ref_groupnorm(const float *x, int batch, int HW, int C, int G, float eps,
                      const float *gamma, const float *beta, int silu, float *y);
void sd_ref_layernorm(const float *x, int M, int C, float eps, const float *gamma,
                      const float *beta, float *y);
void sd_ref_silu(const float *x, float *y, size_t n);
void sd_ref_geglu(const float *x, int M, int F, float *y);
void sd_ref_upsample_nearest(const float *x, int batch, int H, int W, int C, int Ho, int Wo,
                             float *y);

#endif
