/* Kernel tests: every optimised kernel against its double-accumulating
 * reference, for each available kernel set and for a 1- and a 3-thread
 * pool, on odd and tiny shapes; plus hand-computed checks of the reference
 * kernels themselves so a shared misunderstanding cannot pass. Every
 * product with packed weights also runs with float16 and bfloat16 panels of
 * the same (rounded) values, which must give the float32 panels' result bit
 * for bit. */
#include "check.h"
#include "engine/kernels.h"
#include "io/tensorfile.h"

#include <string.h>

#define BAR 1e-6 /* relative L2, float32 kernel vs double reference */

static const sd_kernels *g_sets[4];
static int g_nsets;
static sd_pool *g_pools[2];
static const int g_pool_threads[2] = {1, 3};

static float *falloc(size_t n)
{
    float *p = sd_alloc(sizeof(float) * (n ? n : 1));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static void fill(float *x, size_t n, unsigned long long seed, float scale, float offset)
{
    t_fill_random(x, n, seed);
    for (size_t i = 0; i < n; i++)
        x[i] = x[i] * scale + offset;
}

/* rel L2 over an M x N block with row strides. */
static double rel_l2_2d(const float *a, int lda, const float *ref, int ldr, int M, int N)
{
    double num = 0, den = 0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double d = (double)a[(size_t)m * lda + n] - ref[(size_t)m * ldr + n];
            num += d * d;
            den += (double)ref[(size_t)m * ldr + n] * ref[(size_t)m * ldr + n];
        }
    return den == 0 ? (num == 0 ? 0 : INFINITY) : sqrt(num / den);
}

/* dst = src rounded to storage type st (nearest even), as float32 values:
 * the values 16-bit panels of that type hold exactly. */
static void round_to(float *dst, const float *src, size_t n, int st)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = st == SD_WT_F16    ? sd_f16_to_f32(sd_f32_to_f16(src[i]))
                 : st == SD_WT_BF16 ? sd_bf16_to_f32(sd_f32_to_bf16(src[i]))
                                    : src[i];
}

/* sd_pack (geglu_F 0) / sd_pack_geglu of float32 w with panels stored as st. */
static int pack_as(const sd_kernels *kern, const float *w, int N, int Cin, int taps, int geglu_F,
                   int st, sd_packed *P)
{
    sd_wsrc src = {.type = SD_WT_F32, .parts = 1, .rows = N, .part = {w}};
    sdunet_status s = sd_pack_src(kern, &src, N, Cin, taps, geglu_F, st, P);
    return s == SDUNET_OK && P->type == st;
}

static void set_all_f(float *x, size_t n, float v)
{
    for (size_t i = 0; i < n; i++)
        x[i] = v;
}

/* Whether two float arrays hold the same bits. */
static int same_bits(const float *a, const float *b, size_t n)
{
    return memcmp(a, b, sizeof(float) * n) == 0;
}

#define FOR_EACH_EXEC(ex)                                                                          \
    for (int si_ = 0; si_ < g_nsets; si_++)                                                        \
        for (int pi_ = 0; pi_ < 2; pi_++)                                                          \
            for (sd_exec ex = {.pool = g_pools[pi_], .kern = g_sets[si_], .ws = NULL},             \
                         *once_ = &ex;                                                             \
                 once_; once_ = NULL)

#define WHERE(ex) (ex).kern->name, sd_pool_size((ex).pool)

/* ---- hand-computed checks of the references ---- */

static void test_ref_hand(void)
{
    /* 2x2 GEMM with bias. */
    float A[4] = {1, 2, 3, 4}, B[4] = {5, 6, 7, 8}, C[4], bias[2] = {1, -1};
    sd_ref_gemm(2, 2, 2, A, 2, B, C, 2, NULL);
    CHECK(C[0] == 19 && C[1] == 22 && C[2] == 43 && C[3] == 50, "gemm %g %g %g %g", C[0], C[1],
          C[2], C[3]);
    sd_epilogue ep = {.bias = bias};
    sd_ref_gemm(2, 2, 2, A, 2, B, C, 2, &ep);
    CHECK(C[0] == 20 && C[1] == 21 && C[2] == 44 && C[3] == 49, "gemm+bias");
    /* residual aliasing C and group_add with group_rows 1 */
    float g[4] = {100, 200, 300, 400};
    sd_epilogue ep2 = {.group_add = g, .group_rows = 1, .residual = C, .ld_res = 2};
    sd_ref_gemm(2, 2, 2, A, 2, B, C, 2, &ep2);
    CHECK(C[0] == 139 && C[1] == 243 && C[2] == 387 && C[3] == 499, "gemm+group+res %g %g %g %g",
          C[0], C[1], C[2], C[3]);

    /* 1-channel 3x3 conv: input 1..9, weights w[ky][kx] = 1..9. */
    float in[9], w[9], out[9];
    for (int i = 0; i < 9; i++)
        in[i] = w[i] = (float)(i + 1);
    sd_ref_conv3x3(in, 1, 3, 3, 1, 1, w, 1, out, NULL);
    /* centre: sum i*i = 285; corner (0,0): 1*5 + 2*6 + 4*8 + 5*9 = 94;
     * (0,1): 1*4 + 2*5 + 3*6 + 4*7 + 5*8 + 6*9 = 154 */
    CHECK(out[4] == 285 && out[0] == 94 && out[1] == 154, "conv s1 %g %g %g", out[4], out[0],
          out[1]);
    /* (2,2): 5*1 + 6*2 + 8*4 + 9*5 = 94 */
    CHECK(out[8] == 94, "conv s1 corner %g", out[8]);
    sd_ref_conv3x3(in, 1, 3, 3, 1, 2, w, 1, out, NULL);
    /* 2x2 output at input (0,0), (0,2), (2,0), (2,2).
     * (0,2): 2*4 + 3*5 + 5*7 + 6*8 = 106 */
    CHECK(out[0] == 94 && out[1] == 106, "conv s2 %g %g", out[0], out[1]);

    /* Attention: one query, two keys, scores {0, ln 3} -> weights 1/4, 3/4. */
    float q[1] = {(float)log(3.0)}, k[2] = {0, 1}, v[2] = {4, 8}, o[1];
    CHECK(sd_ref_attention(1, 1, 1, 1, 2, q, 1, k, 1, v, 1, o, 1, 1.0f), "reference attention");
    CHECK(fabs(o[0] - 7.0) < 1e-6, "attention %g", o[0]);
    /* causal: query 0 sees key 0 only (v = 1), query 1 both keys: scores
     * 0 and ln 3 over v = 1, 9 -> (1 + 3 * 9) / 4 = 7 */
    {
        const float qc[2] = {0, 1}, kc[2] = {0, (float)log(3.0)}, vc[2] = {1, 9};
        float oc[2] = {0, 0};
        CHECK(sd_ref_attention_causal(1, 1, 1, 2, qc, 1, kc, 1, vc, 1, oc, 1, 1.0f),
              "reference causal attention");
        CHECK(fabs(oc[0] - 1.0) < 1e-6 && fabs(oc[1] - 7.0) < 1e-5, "causal %g %g", oc[0], oc[1]);
    }
    /* GELU: quick 1 / (1 + e^-1.702) = 0.845796; erf form at 1: 0.841345 */
    {
        const float gx[3] = {1, 0, -40};
        float gy[3];
        sd_ref_gelu(gx, gy, 3, 1);
        CHECK(fabs(gy[0] - 0.8457957) < 1e-6 && gy[1] == 0 && fabs(gy[2]) < 1e-20, "quick gelu");
        sd_ref_gelu(gx, gy, 3, 0);
        CHECK(fabs(gy[0] - 0.8413447) < 1e-6 && gy[1] == 0 && fabs(gy[2]) < 1e-20, "gelu");
    }

    /* GroupNorm, one group over {1,2,3,4}: mean 2.5, var 1.25. */
    float x[4] = {1, 2, 3, 4}, gam[2] = {1, 2}, bet[2] = {0, 1}, y[4];
    sd_ref_groupnorm(x, 1, 2, 2, 1, 0.0f, gam, bet, 0, y);
    double r = 1 / sqrt(1.25);
    double want[4] = {-1.5 * r, 2 * -0.5 * r + 1, 0.5 * r, 2 * 1.5 * r + 1};
    for (int i = 0; i < 4; i++)
        CHECK(fabs(y[i] - want[i]) < 1e-6, "groupnorm[%d] %g vs %g", i, y[i], want[i]);
    /* Two groups of one channel each: {1,3} and {2,4}, each mean +-1 apart. */
    sd_ref_groupnorm(x, 1, 2, 2, 2, 0.0f, gam, bet, 0, y);
    CHECK(fabs(y[0] + 1) < 1e-6 && fabs(y[1] - (-2 + 1)) < 1e-6 && fabs(y[2] - 1) < 1e-6 &&
              fabs(y[3] - 3) < 1e-6,
          "groupnorm G=2 %g %g %g %g", y[0], y[1], y[2], y[3]);
    /* LayerNorm of {1,3}: +-1. */
    float lx[2] = {1, 3}, ly[2], one[2] = {1, 1}, zero[2] = {0, 0};
    sd_ref_layernorm(lx, 1, 2, 0.0f, one, zero, ly);
    CHECK(fabs(ly[0] + 1) < 1e-6 && fabs(ly[1] - 1) < 1e-6, "layernorm %g %g", ly[0], ly[1]);
    /* silu(1) = 1/(1+e^-1); geglu(h=2, g=1) = 2 * Phi(1) * 1. */
    float s1 = 1, s2;
    sd_ref_silu(&s1, &s2, 1);
    CHECK(fabs(s2 - 0.7310585786) < 1e-7, "silu %g", s2);
    float gx[2] = {2, 1}, gy;
    sd_ref_geglu(gx, 1, 1, &gy);
    CHECK(fabs(gy - 2 * 0.8413447461) < 1e-6, "geglu %g", gy);
    /* upsample 2 -> 3 picks sources 0, 0, 1 */
    float ux[2] = {10, 20}, uy[3];
    sd_ref_upsample_nearest(ux, 1, 1, 2, 1, 1, 3, uy);
    CHECK(uy[0] == 10 && uy[1] == 10 && uy[2] == 20, "upsample %g %g %g", uy[0], uy[1], uy[2]);
}

/* ---- GEMM ---- */

enum { EP_NONE, EP_BIAS, EP_GROUP, EP_RES, EP_RES_ALIAS, EP_ALL, EP_COUNT };

/* The epilogue of a kind (EP_RES_ALIAS: none yet; the caller points the
 * residual at C). */
static sd_epilogue epilogue_of(int kind, const float *bias, const float *grp, int grows,
                               const float *res, int ldr)
{
    sd_epilogue ep = {0};
    if (kind == EP_BIAS || kind == EP_ALL)
        ep.bias = bias;
    if (kind == EP_GROUP || kind == EP_ALL) {
        ep.group_add = grp;
        ep.group_rows = grows;
    }
    if (kind == EP_RES || kind == EP_ALL) {
        ep.residual = res;
        ep.ld_res = ldr;
    }
    return ep;
}

/* sd_gemm by ex1 with P1 into c1 and by ex2 with P2 into c2, each
 * starting from C0 (M rows of ldc), with the epilogue of kind ep_kind (an
 * aliased residual points at each output in turn): whether the two agree
 * bit for bit. */
static int gemms_agree(const sd_exec *ex1, const sd_packed *P1, const sd_exec *ex2,
                       const sd_packed *P2, int M, const float *A, int lda, const float *C0,
                       float *c1, float *c2, int ldc, int ep_kind, sd_epilogue *ep)
{
    const sd_epilogue *e = ep_kind == EP_NONE ? NULL : ep;
    memcpy(c1, C0, sizeof(float) * M * ldc);
    memcpy(c2, C0, sizeof(float) * M * ldc);
    if (ep_kind == EP_RES_ALIAS)
        ep->residual = c1;
    sd_gemm(ex1, M, A, lda, P1, c1, ldc, e);
    if (ep_kind == EP_RES_ALIAS)
        ep->residual = c2;
    sd_gemm(ex2, M, A, lda, P2, c2, ldc, e);
    return same_bits(c1, c2, (size_t)M * ldc);
}

static void gemm_case(int M, int N, int K, int ep_kind, unsigned long long seed)
{
    const int lda = K + (seed % 3), ldc = N + (int)(seed % 2) * 5, ldr = N + 2;
    float *A = falloc((size_t)M * lda), *Bkn = falloc((size_t)K * N), *w = falloc((size_t)K * N);
    float *bias = falloc(N), *res = falloc((size_t)M * ldr);
    const int grows = 1 + (int)(seed % 7);
    const int ngroups = (M + grows - 1) / grows;
    float *grp = falloc((size_t)ngroups * N);
    float *C = falloc((size_t)M * ldc), *Cref = falloc((size_t)M * ldc),
          *C0 = falloc((size_t)M * ldc);
    fill(A, (size_t)M * lda, seed, 1, 0);
    fill(Bkn, (size_t)K * N, seed + 1, 1, 0);
    fill(bias, N, seed + 2, 1, 0);
    fill(res, (size_t)M * ldr, seed + 3, 1, 0);
    fill(grp, (size_t)ngroups * N, seed + 4, 1, 0);
    for (int k = 0; k < K; k++)
        for (int n = 0; n < N; n++)
            w[(size_t)n * K + k] = Bkn[(size_t)k * N + n];

    sd_epilogue ep = epilogue_of(ep_kind, bias, grp, grows, res, ldr);

    /* C starts as a sentinel (checked untouched past N); the aliasing case
     * starts it as the residual. */
    fill(C0, (size_t)M * ldc, seed + 9, 1, 0);
    memcpy(Cref, C0, sizeof(float) * M * ldc);
    if (ep_kind == EP_RES_ALIAS) {
        ep.residual = Cref;
        ep.ld_res = ldc;
    }
    sd_ref_gemm(M, N, K, A, lda, Bkn, Cref, ldc, ep_kind == EP_NONE ? NULL : &ep);
    FOR_EACH_EXEC(ex)
    {
        sd_packed P;
        CHECK(sd_pack(ex.kern, w, N, K, 1, &P) == SDUNET_OK, "pack");
        memcpy(C, C0, sizeof(float) * M * ldc);
        if (ep_kind == EP_RES_ALIAS)
            ep.residual = C;
        sd_gemm(&ex, M, A, lda, &P, C, ldc, ep_kind == EP_NONE ? NULL : &ep);
        double e = rel_l2_2d(C, ldc, Cref, ldc, M, N);
        CHECK(e < BAR, "%s/%d threads M=%d N=%d K=%d ep=%d: rel L2 %.3g", WHERE(ex), M, N, K,
              ep_kind, e);
        int pad_ok = 1; /* columns past N untouched */
        for (int m = 0; m < M; m++)
            for (int n = N; n < ldc; n++)
                pad_ok &= C[(size_t)m * ldc + n] == Cref[(size_t)m * ldc + n];
        CHECK(pad_ok, "%s/%d M=%d N=%d K=%d wrote past N", WHERE(ex), M, N, K);
        sd_packed_free(&P);
    }
    /* 16-bit panels: bit for bit the result of float32 panels holding the
     * same (rounded) values, epilogue and aliasing included. */
    float *wr = falloc((size_t)K * N), *C16 = falloc((size_t)M * ldc);
    for (int st = SD_WT_F16; st <= SD_WT_BF16; st++) {
        round_to(wr, w, (size_t)K * N, st);
        FOR_EACH_EXEC(ex)
        {
            sd_packed P32, P16;
            CHECK(pack_as(ex.kern, wr, N, K, 1, 0, SD_WT_F32, &P32) &&
                      pack_as(ex.kern, wr, N, K, 1, 0, st, &P16),
                  "pack %s", sd_wtype_name(st));
            CHECK(gemms_agree(&ex, &P32, &ex, &P16, M, A, lda, C0, C, C16, ldc, ep_kind, &ep),
                  "%s/%d %s panels M=%d N=%d K=%d ep=%d differ from f32 panels", WHERE(ex),
                  sd_wtype_name(st), M, N, K, ep_kind);
            sd_packed_free(&P32);
            sd_packed_free(&P16);
        }
    }
    sd_free(wr);
    sd_free(C16);
    sd_free(A);
    sd_free(Bkn);
    sd_free(w);
    sd_free(bias);
    sd_free(res);
    sd_free(grp);
    sd_free(C);
    sd_free(Cref);
    sd_free(C0);
}

static void test_gemm_shapes(void)
{
    static const int shapes[][3] = {
        {1, 1, 1},     {2, 2, 2},     {1, 16, 7},    {6, 16, 4},     {7, 17, 5},
        {37, 61, 129}, {61, 37, 1},   {129, 1, 61},  {5, 129, 385},  {100, 33, 769},
        {150, 20, 33}, {13, 48, 800}, {64, 400, 40}, {200, 300, 70}, {1, 129, 1000},
    };
    unsigned long long seed = 1;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        gemm_case(shapes[s][0], shapes[s][1], shapes[s][2], EP_NONE, seed++);
}

static void test_gemm_epilogues(void)
{
    static const int shapes[][3] = {{1, 1, 1}, {37, 61, 129}, {150, 45, 400}, {13, 16, 9}};
    unsigned long long seed = 100;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int e = EP_BIAS; e < EP_COUNT; e++)
            gemm_case(shapes[s][0], shapes[s][1], shapes[s][2], e, seed++);
}

static void test_gemm_large(void)
{
    if (t_small_only())
        return;
    gemm_case(300, 320, 2880, EP_ALL, 7);
    gemm_case(97, 1280, 5760, EP_RES_ALIAS, 8);
}

static void test_pack_layout(void)
{
    /* B[k][n] = w[n][ci][tap] with k = tap*Cin + ci; panels of nr, zero padded. */
    const sd_kernels *kern = sd_kernels_select("portable");
    int N = 3, Cin = 2, taps = 9, K = 18;
    float w[3 * 2 * 9];
    for (int i = 0; i < N * Cin * taps; i++)
        w[i] = (float)i;
    sd_packed P;
    CHECK(sd_pack(kern, w, N, Cin, taps, &P) == SDUNET_OK, "pack");
    CHECK(P.K == K && P.N == N && P.nr == kern->nr, "dims %d %d %d", P.K, P.N, P.nr);
    int ok = 1;
    for (int k = 0; k < K; k++)
        for (int j = 0; j < P.nr; j++) {
            int tap = k / Cin, ci = k % Cin;
            float want = j < N ? w[(j * Cin + ci) * taps + tap] : 0.0f;
            ok &= ((const float *)P.data)[k * P.nr + j] == want;
        }
    CHECK(ok, "packed layout");
    sd_packed_free(&P);
    CHECK(sd_kernels_select("nonsense") == NULL, "unknown set");
    CHECK(sd_kernels_select(NULL) != NULL, "default set");
    /* Forced sets are the named ones; the default is the widest available. */
    static const char *const names[] = {"portable", "avx2", "avx512", "amx"};
    const sd_kernels *widest = NULL;
    for (int i = 0; i < 4; i++) {
        const sd_kernels *k = sd_kernels_select(names[i]);
        if (!k)
            continue;
        widest = k;
        CHECK(strcmp(k->name, names[i]) == 0 && k->nr == 16 && k->mr >= 1 && k->mr <= SD_MR_MAX,
              "set %s: name %s mr %d nr %d", names[i], k->name, k->mr, k->nr);
    }
    CHECK(sd_kernels_select(NULL) == widest, "default set %s", sd_kernels_select(NULL)->name);
}

/* ---- conv ---- */

/* One convolution case's buffers: input, weights, output, reference and
 * the epilogue's bias, per-image group term and residual, filled from
 * seed .. seed + 4 (the output is the caller's to fill). */
typedef struct {
    float *in, *w, *out, *ref, *bias, *grp, *res;
    size_t nin, nw, nout;
    sd_epilogue ep;
} conv_bufs;

static conv_bufs conv_bufs_new(int batch, int H, int W, int Cin, int N, int stride,
                               unsigned long long seed)
{
    const int Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
    conv_bufs b = {.nin = (size_t)batch * H * W * Cin,
                   .nw = (size_t)N * Cin * 9,
                   .nout = (size_t)batch * Ho * Wo * N};
    b.in = falloc(b.nin);
    b.w = falloc(b.nw);
    b.out = falloc(b.nout);
    b.ref = falloc(b.nout);
    b.bias = falloc(N);
    b.grp = falloc((size_t)batch * N);
    b.res = falloc(b.nout);
    fill(b.in, b.nin, seed, 1, 0);
    fill(b.w, b.nw, seed + 1, 1, 0);
    fill(b.bias, N, seed + 2, 1, 0);
    fill(b.grp, (size_t)batch * N, seed + 3, 1, 0);
    fill(b.res, b.nout, seed + 4, 1, 0);
    b.ep = (sd_epilogue){b.bias, b.grp, Ho * Wo, b.res, N};
    return b;
}

static void conv_bufs_free(conv_bufs *b)
{
    sd_free(b->in);
    sd_free(b->w);
    sd_free(b->out);
    sd_free(b->ref);
    sd_free(b->bias);
    sd_free(b->grp);
    sd_free(b->res);
}

static void conv_case(int batch, int H, int W, int Cin, int N, int stride, int with_ep,
                      unsigned long long seed)
{
    conv_bufs cb = conv_bufs_new(batch, H, W, Cin, N, stride, seed);
    const size_t M = cb.nout / (size_t)N, nw = cb.nw;
    float *in = cb.in, *w = cb.w, *out = cb.out, *ref = cb.ref;
    sd_epilogue ep = cb.ep;
    sd_ref_conv3x3(in, batch, H, W, Cin, stride, w, N, ref, with_ep ? &ep : NULL);
    static const char *const algo_name[] = {"auto", "direct", "winograd"};
    FOR_EACH_EXEC(ex)
    {
        sd_packed P;
        CHECK(sd_pack(ex.kern, w, N, Cin, 9, &P) == SDUNET_OK, "pack");
        /* Both methods, each with and without a workspace (Winograd's
         * buffers come from it; per-call allocation otherwise). */
        sd_workspace ws = {0};
        for (int v = 0; v < 4; v++) {
            ex.conv = v < 2 ? SD_CONV_DIRECT : SD_CONV_WINOGRAD;
            ex.ws = v & 1 ? &ws : NULL;
            fill(out, (size_t)M * N, seed + 5, 1, 0);
            sd_conv3x3(&ex, in, batch, H, W, Cin, stride, &P, out, with_ep ? &ep : NULL);
            double e = t_rel_l2_f32(out, ref, (size_t)M * N);
            CHECK(e < BAR, "%s/%d threads %s b=%d %dx%d Cin=%d N=%d s=%d ep=%d: rel L2 %.3g",
                  WHERE(ex), algo_name[ex.conv], batch, H, W, Cin, N, stride, with_ep, e);
        }
        sd_workspace_free(&ws);
        sd_packed_free(&P);
    }
    /* 16-bit panels, both methods (Winograd widens in its weight
     * transform, the direct method in the GEMM driver): bit for bit the
     * float32 panels of the same values. */
    float *wr = falloc(nw), *out16 = falloc((size_t)M * N);
    for (int st = SD_WT_F16; st <= SD_WT_BF16; st++) {
        round_to(wr, w, nw, st);
        FOR_EACH_EXEC(ex)
        {
            sd_packed P32, P16;
            CHECK(pack_as(ex.kern, wr, N, Cin, 9, 0, SD_WT_F32, &P32) &&
                      pack_as(ex.kern, wr, N, Cin, 9, 0, st, &P16),
                  "pack %s", sd_wtype_name(st));
            sd_workspace ws = {0};
            for (int v = 0; v < 4; v++) {
                ex.conv = v < 2 ? SD_CONV_DIRECT : SD_CONV_WINOGRAD;
                ex.ws = v & 1 ? &ws : NULL;
                fill(out, (size_t)M * N, seed + 5, 1, 0);
                memcpy(out16, out, sizeof(float) * M * N);
                sd_conv3x3(&ex, in, batch, H, W, Cin, stride, &P32, out, with_ep ? &ep : NULL);
                sd_conv3x3(&ex, in, batch, H, W, Cin, stride, &P16, out16, with_ep ? &ep : NULL);
                CHECK(same_bits(out, out16, (size_t)M * N),
                      "%s/%d threads %s %s panels b=%d %dx%d Cin=%d N=%d s=%d: differ from f32",
                      WHERE(ex), algo_name[ex.conv], sd_wtype_name(st), batch, H, W, Cin, N,
                      stride);
            }
            sd_workspace_free(&ws);
            sd_packed_free(&P32);
            sd_packed_free(&P16);
        }
    }
    sd_free(wr);
    sd_free(out16);
    conv_bufs_free(&cb);
}

static void test_conv(void)
{
    static const int hw[][2] = {{1, 1}, {3, 5}, {7, 9}, {20, 28}};
    static const int ch[][2] = {{1, 5}, {3, 16}, {8, 17}, {33, 4}};
    unsigned long long seed = 200;
    for (int s = 1; s <= 2; s++)
        for (size_t a = 0; a < 4; a++)
            for (size_t c = 0; c < 4; c++)
                conv_case(2, hw[a][0], hw[a][1], ch[c][0], ch[c][1], s, (int)((a + c) & 1), seed++);
    /* K blocks that end mid-tap (K = 576 -> 2 x 288, 1350 -> 4 x 338). */
    conv_case(2, 9, 7, 64, 40, 1, 1, seed++);
    conv_case(1, 6, 5, 150, 19, 2, 1, seed++);
    conv_case(1, 6, 5, 150, 19, 1, 0, seed++);
    /* Winograd at sizes where the automatic choice takes it too: several
     * output-channel panels, odd H and W (partial 2x2 tiles), batch 2. */
    conv_case(2, 17, 11, 48, 40, 1, 1, seed++);
    conv_case(1, 16, 16, 64, 96, 1, 0, seed++);
}

/* Winograd F(4x4, 3x3) (fast mode) against the double reference, every
 * kernel set, 1 and 3 threads, with and without a workspace; through
 * sd_conv3x3 with ex.fast (SD_CONV_WINOGRAD forces it) and directly.
 * Partial 4x4 tiles (H, W not multiples of 4), channel counts off the
 * 16-wide panels, K blocks (Cin > 128). The bound is ~10x the measured
 * error (largest seen: 1.1e-6 at Cin = 64, 16x16); a wrong transform entry gives
 * errors of order 1. 16-bit panels give the float32 panels' result bit
 * for bit, as in the other methods. */
static void conv4_case(int batch, int H, int W, int Cin, int N, int with_ep,
                       unsigned long long seed)
{
    const double bar4 = 1e-5;
    conv_bufs cb = conv_bufs_new(batch, H, W, Cin, N, 1, seed);
    const size_t M = cb.nout / (size_t)N, nw = cb.nw;
    float *in = cb.in, *w = cb.w, *out = cb.out, *ref = cb.ref, *wr = falloc(nw),
          *out16 = falloc(cb.nout);
    sd_epilogue ep = cb.ep;
    for (int st = SD_WT_F32; st <= SD_WT_BF16; st++) {
        round_to(wr, w, nw, st);
        sd_ref_conv3x3(in, batch, H, W, Cin, 1, wr, N, ref, with_ep ? &ep : NULL);
        FOR_EACH_EXEC(ex)
        {
            sd_packed P32, P16;
            CHECK(pack_as(ex.kern, wr, N, Cin, 9, 0, SD_WT_F32, &P32) &&
                      pack_as(ex.kern, wr, N, Cin, 9, 0, st, &P16),
                  "pack %s", sd_wtype_name(st));
            sd_workspace ws = {0};
            ex.fast = 1;
            ex.conv = SD_CONV_WINOGRAD;
            for (int v = 0; v < 2; v++) {
                ex.ws = v ? &ws : NULL;
                fill(out, (size_t)M * N, seed + 5, 1, 0);
                memcpy(out16, out, sizeof(float) * M * N);
                if (v)
                    sd_conv3x3(&ex, in, batch, H, W, Cin, 1, &P16, out16, with_ep ? &ep : NULL);
                else
                    CHECK(sd_conv3x3_winograd4(&ex, in, batch, H, W, Cin, &P16, out16,
                                               with_ep ? &ep : NULL),
                          "winograd4 did not run");
                sd_conv3x3_winograd4(&ex, in, batch, H, W, Cin, &P32, out, with_ep ? &ep : NULL);
                double e = t_rel_l2_f32(out16, ref, (size_t)M * N);
                CHECK(e < bar4, "%s/%d threads F(4x4) %s b=%d %dx%d Cin=%d N=%d ep=%d: rel L2 %.3g",
                      WHERE(ex), sd_wtype_name(st), batch, H, W, Cin, N, with_ep, e);
                CHECK(same_bits(out, out16, (size_t)M * N),
                      "%s/%d threads F(4x4) %s panels b=%d %dx%d Cin=%d N=%d: differ from f32",
                      WHERE(ex), sd_wtype_name(st), batch, H, W, Cin, N);
                if (v == 0 && st == SD_WT_F32 && pi_ == 0)
                    printf("# F(4x4) %s b=%d %dx%d Cin=%d N=%d: rel L2 %.3g\n", ex.kern->name,
                           batch, H, W, Cin, N, e);
            }
            sd_workspace_free(&ws);
            sd_packed_free(&P32);
            sd_packed_free(&P16);
        }
    }
    /* Exact mode never takes it: with fast = 0 the result is the F(2x2) one. */
    FOR_EACH_EXEC(ex)
    {
        sd_packed P;
        CHECK(sd_pack(ex.kern, w, N, Cin, 9, &P) == SDUNET_OK, "pack");
        ex.conv = SD_CONV_WINOGRAD;
        sd_conv3x3(&ex, in, batch, H, W, Cin, 1, &P, out, NULL);
        CHECK(sd_conv3x3_winograd(&ex, in, batch, H, W, Cin, &P, out16, NULL) &&
                  same_bits(out, out16, (size_t)M * N),
              "%s/%d threads: exact mode is not F(2x2)", WHERE(ex));
        sd_packed_free(&P);
    }
    sd_free(wr);
    sd_free(out16);
    conv_bufs_free(&cb);
}

static void test_conv_winograd4(void)
{
    unsigned long long seed = 900;
    conv4_case(2, 1, 1, 3, 5, 1, seed++);
    conv4_case(2, 5, 7, 8, 17, 0, seed++);
    conv4_case(2, 13, 10, 33, 40, 1, seed++);
    conv4_case(2, 9, 11, 150, 19, 1, seed++); /* two K blocks */
    conv4_case(1, 16, 16, 64, 96, 0, seed++);
    conv4_case(2, 23, 34, 40, 33, 1, seed++); /* several tile blocks (108 tiles) */
}

/* Winograd with the input split into channel chunks (winograd_impl.h:
 * a block's transformed inputs over WG_V_BYTES, 6 MiB). A 16x16 image is
 * 64 F(2x2) tiles (64-66 rows of whole mr panels in every kernel set) and
 * 16 F(4x4) tiles (16-18 rows), so a channel costs 4-4.2 KiB (F(4x4):
 * 2.3-2.5 KiB) of V and 3101 channels make three chunks of 1040, 1040,
 * 1021 (F(4x4): two of 1552, 1549): partial 8-channel vectors and several
 * K blocks per chunk. The epilogue (bias, group, residual) comes with the
 * last chunk; a residual that is the output itself is the chunks'
 * starting value instead. Against the double reference; the bars are 4-6x
 * the largest error seen (F(2x2) 3.5e-7, F(4x4) 1.7e-6). */
static void test_conv_winograd_chunks(void)
{
    const int H = 16, W = 16, Cin = 3101, N = 20, M = H * W;
    const unsigned long long seed = 950;
    conv_bufs cb = conv_bufs_new(1, H, W, Cin, N, 1, seed);
    float *in = cb.in, *w = cb.w, *out = cb.out, *ref = cb.ref, *res = cb.res;
    const sd_epilogue ep = cb.ep;
    sd_ref_conv3x3(in, 1, H, W, Cin, 1, w, N, ref, &ep);
    FOR_EACH_EXEC(ex)
    {
        sd_packed P;
        CHECK(sd_pack(ex.kern, w, N, Cin, 9, &P) == SDUNET_OK, "pack");
        for (int f4 = 0; f4 <= 1; f4++)
            for (int alias = 0; alias <= 1; alias++) {
                sd_epilogue e = ep;
                if (alias) { /* out = out + conv + bias + group */
                    memcpy(out, res, sizeof(float) * M * N);
                    e.residual = out;
                } else {
                    fill(out, (size_t)M * N, seed + 5, 1, 0);
                }
                int ran = f4 ? sd_conv3x3_winograd4(&ex, in, 1, H, W, Cin, &P, out, &e)
                             : sd_conv3x3_winograd(&ex, in, 1, H, W, Cin, &P, out, &e);
                double err = t_rel_l2_f32(out, ref, (size_t)M * N);
                CHECK(ran && err < (f4 ? 7e-6 : 2e-6),
                      "%s/%d threads %s Cin=%d residual %s: rel L2 %.3g", WHERE(ex),
                      f4 ? "F(4x4)" : "F(2x2)", Cin, alias ? "in out" : "apart", err);
                if (pi_ == 0 && alias == 0)
                    printf("# chunked %s %s: rel L2 %.3g\n", f4 ? "F(4x4)" : "F(2x2)",
                           ex.kern->name, err);
            }
        sd_packed_free(&P);
    }
    conv_bufs_free(&cb);
}

/* Winograd with whole tile blocks per thread (winograd_impl.h: several
 * threads and at least half a block's tiles each), on the 3-thread pool and
 * against the 1-thread pool's panel split: 1225 F(2x2) tiles make 12
 * blocks, four a thread, so the transformed weights are made before them by
 * all threads (U); 2 x 192 tiles of 1600 channels make channel chunks in
 * each thread's block, with a residual that is the output; 576 F(4x4) tiles
 * make 9 blocks with U. Against the double reference, bars as in
 * test_conv_winograd_chunks. */
static void test_conv_winograd_owned(void)
{
    static const int cs[][7] = {/* f4, batch, H, W, Cin, N, alias */
                                {0, 1, 70, 70, 40, 40, 0},
                                {0, 2, 16, 24, 1600, 20, 1},
                                {1, 1, 96, 96, 24, 20, 0}};
    unsigned long long seed = 980;
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++, seed++) {
        const int f4 = cs[c][0], batch = cs[c][1], H = cs[c][2], W = cs[c][3], Cin = cs[c][4],
                  N = cs[c][5], alias = cs[c][6];
        const size_t M = (size_t)batch * H * W;
        conv_bufs cb = conv_bufs_new(batch, H, W, Cin, N, 1, seed);
        float *out = cb.out;
        sd_ref_conv3x3(cb.in, batch, H, W, Cin, 1, cb.w, N, cb.ref, &cb.ep);
        FOR_EACH_EXEC(ex)
        {
            sd_packed P;
            CHECK(sd_pack(ex.kern, cb.w, N, Cin, 9, &P) == SDUNET_OK, "pack");
            sd_epilogue e = cb.ep;
            if (alias) { /* out = out + conv + bias + group */
                memcpy(out, cb.res, sizeof(float) * M * N);
                e.residual = out;
            } else {
                fill(out, M * N, seed + 5, 1, 0);
            }
            int ran = f4 ? sd_conv3x3_winograd4(&ex, cb.in, batch, H, W, Cin, &P, out, &e)
                         : sd_conv3x3_winograd(&ex, cb.in, batch, H, W, Cin, &P, out, &e);
            double err = t_rel_l2_f32(out, cb.ref, M * N);
            CHECK(ran && err < (f4 ? 7e-6 : 2e-6),
                  "%s/%d threads %s b=%d %dx%d Cin=%d: rel L2 %.3g", WHERE(ex),
                  f4 ? "F(4x4)" : "F(2x2)", batch, H, W, Cin, err);
            sd_packed_free(&P);
        }
        conv_bufs_free(&cb);
    }
}

/* ---- norms ---- */

static void test_groupnorm(void)
{
    /* the last two: more groups than one statistics pass holds (GN_CHUNK),
     * and more channels than the per-channel tables (GN_CMAX) */
    static const int cfg[][3] = {{63, 64, 32}, {1, 96, 32},   {5, 96, 32}, {35, 64, 32},
                                 {9, 6, 3},    {7, 200, 100}, {3, 4104, 8}};
    unsigned long long seed = 300;
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++)
        for (int silu = 0; silu <= 1; silu++)
            for (int inplace = 0; inplace <= 1; inplace++) {
                int batch = 2, HW = cfg[c][0], C = cfg[c][1], G = cfg[c][2];
                size_t n = (size_t)batch * HW * C;
                float *x = falloc(n), *y = falloc(n), *ref = falloc(n), *gam = falloc(C),
                      *bet = falloc(C);
                fill(x, n, seed, 2.0f, 3.0f); /* offset mean: the stats must not cancel */
                fill(gam, C, seed + 1, 1, 1);
                fill(bet, C, seed + 2, 1, 0);
                sd_ref_groupnorm(x, batch, HW, C, G, 1e-5f, gam, bet, silu, ref);
                FOR_EACH_EXEC(ex)
                {
                    float *dst = y;
                    if (inplace) {
                        fill(y, n, seed, 2.0f, 3.0f);
                        dst = y;
                        sd_groupnorm(&ex, y, batch, HW, C, G, 1e-5f, gam, bet, silu, dst);
                    } else {
                        sd_groupnorm(&ex, x, batch, HW, C, G, 1e-5f, gam, bet, silu, dst);
                    }
                    double e = t_rel_l2_f32(dst, ref, n);
                    CHECK(e < BAR, "%s/%d HW=%d C=%d G=%d silu=%d inplace=%d: %.3g", WHERE(ex), HW,
                          C, G, silu, inplace, e);
                }
                sd_free(x);
                sd_free(y);
                sd_free(ref);
                sd_free(gam);
                sd_free(bet);
                seed += 3;
            }
}

/* The decoder's concatenation [x1 | x2] read in place: GroupNorm (groups
 * inside one part, on the boundary, and straddling it) against the
 * reference on the formed concatenation, and the shortcut GEMM bit for bit
 * against sd_gemm on it (the K blocks fall inside a part and across). */
static void test_concat_inputs(void)
{
    static const int gcfg[][4] = {
        {19, 40, 24, 8}, {7, 37, 59, 32}, {33, 1, 31, 4}, {5, 64, 32, 32}};
    for (size_t c = 0; c < sizeof gcfg / sizeof gcfg[0]; c++) {
        const int batch = 2, HW = gcfg[c][0], C1 = gcfg[c][1], C2 = gcfg[c][2], G = gcfg[c][3];
        const int C = C1 + C2;
        const size_t n = (size_t)batch * HW * C;
        float *x1 = falloc((size_t)batch * HW * C1), *x2 = falloc((size_t)batch * HW * C2);
        float *cat = falloc(n), *y = falloc(n), *ref = falloc(n), *gam = falloc(C),
              *bet = falloc(C);
        fill(x1, (size_t)batch * HW * C1, 800 + c, 2.0f, 3.0f);
        fill(x2, (size_t)batch * HW * C2, 810 + c, 1.0f, -2.0f);
        fill(gam, C, 820 + c, 1, 1);
        fill(bet, C, 830 + c, 1, 0);
        for (size_t m = 0; m < (size_t)batch * HW; m++) {
            memcpy(cat + m * C, x1 + m * C1, sizeof(float) * C1);
            memcpy(cat + m * C + C1, x2 + m * C2, sizeof(float) * C2);
        }
        for (int silu = 0; silu <= 1; silu++) {
            sd_ref_groupnorm(cat, batch, HW, C, G, 1e-5f, gam, bet, silu, ref);
            FOR_EACH_EXEC(ex)
            {
                sd_groupnorm_cat(&ex, x1, C1, x2, C2, batch, HW, G, 1e-5f, gam, bet, silu, y);
                double e = t_rel_l2_f32(y, ref, n);
                CHECK(e < BAR, "%s/%d groupnorm_cat HW=%d C1=%d C2=%d G=%d silu=%d: %.3g",
                      WHERE(ex), HW, C1, C2, G, silu, e);
            }
        }
        sd_free(x1);
        sd_free(x2);
        sd_free(cat);
        sd_free(y);
        sd_free(ref);
        sd_free(gam);
        sd_free(bet);
    }

    static const int mcfg[][4] = {{50, 300, 340, 40}, {13, 5, 3, 17}, {150, 640, 320, 33}};
    for (size_t c = 0; c < sizeof mcfg / sizeof mcfg[0]; c++) {
        const int M = mcfg[c][0], K1 = mcfg[c][1], K2 = mcfg[c][2], N = mcfg[c][3], K = K1 + K2;
        float *a1 = falloc((size_t)M * K1), *a2 = falloc((size_t)M * K2),
              *a = falloc((size_t)M * K);
        float *w = falloc((size_t)N * K), *bias = falloc(N), *y = falloc((size_t)M * N),
              *y2 = falloc((size_t)M * N);
        fill(a1, (size_t)M * K1, 840 + c, 1, 0);
        fill(a2, (size_t)M * K2, 850 + c, 1, 0);
        fill(w, (size_t)N * K, 860 + c, 0.1f, 0);
        fill(bias, N, 870 + c, 1, 0);
        for (int m = 0; m < M; m++) {
            memcpy(a + (size_t)m * K, a1 + (size_t)m * K1, sizeof(float) * K1);
            memcpy(a + (size_t)m * K + K1, a2 + (size_t)m * K2, sizeof(float) * K2);
        }
        sd_epilogue ep = {.bias = bias};
        FOR_EACH_EXEC(ex)
        {
            sd_packed P;
            CHECK(sd_pack(ex.kern, w, N, K, 1, &P) == SDUNET_OK, "pack");
            sd_gemm_cat(&ex, M, a1, K1, a2, K2, &P, y, N, &ep);
            sd_gemm(&ex, M, a, K, &P, y2, N, &ep);
            CHECK(memcmp(y, y2, sizeof(float) * M * N) == 0,
                  "%s/%d gemm_cat M=%d K1=%d K2=%d N=%d differs from sd_gemm", WHERE(ex), M, K1, K2,
                  N);
            sd_packed_free(&P);
            /* 16-bit panels of the rounded weights: the f32 panels' result */
            for (int st = SD_WT_F16; st <= SD_WT_BF16; st++) {
                float *wr = falloc((size_t)N * K);
                round_to(wr, w, (size_t)N * K, st);
                sd_packed P32, P16;
                CHECK(pack_as(ex.kern, wr, N, K, 1, 0, SD_WT_F32, &P32) &&
                          pack_as(ex.kern, wr, N, K, 1, 0, st, &P16),
                      "pack %s", sd_wtype_name(st));
                sd_gemm_cat(&ex, M, a1, K1, a2, K2, &P16, y, N, &ep);
                sd_gemm_cat(&ex, M, a1, K1, a2, K2, &P32, y2, N, &ep);
                CHECK(same_bits(y, y2, (size_t)M * N),
                      "%s/%d gemm_cat %s panels M=%d K1=%d K2=%d N=%d differ from f32", WHERE(ex),
                      sd_wtype_name(st), M, K1, K2, N);
                sd_packed_free(&P32);
                sd_packed_free(&P16);
                sd_free(wr);
            }
        }
        sd_free(a1);
        sd_free(a2);
        sd_free(a);
        sd_free(w);
        sd_free(bias);
        sd_free(y);
        sd_free(y2);
    }
}

static void test_layernorm(void)
{
    static const int cfg[][2] = {{37, 320}, {1, 40}, {100, 7}, {2, 1}};
    unsigned long long seed = 400;
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        int M = cfg[c][0], C = cfg[c][1];
        size_t n = (size_t)M * C;
        float *x = falloc(n), *y = falloc(n), *ref = falloc(n), *gam = falloc(C), *bet = falloc(C);
        fill(x, n, seed, 3.0f, -2.0f);
        fill(gam, C, seed + 1, 1, 1);
        fill(bet, C, seed + 2, 1, 0);
        sd_ref_layernorm(x, M, C, 1e-5f, gam, bet, ref);
        FOR_EACH_EXEC(ex)
        {
            sd_layernorm(&ex, x, M, C, 1e-5f, gam, bet, y);
            double e = t_rel_l2_f32(y, ref, n);
            CHECK(e < BAR, "%s/%d M=%d C=%d: %.3g", WHERE(ex), M, C, e);
            memcpy(y, x, sizeof(float) * n);
            sd_layernorm(&ex, y, M, C, 1e-5f, gam, bet, y);
            e = t_rel_l2_f32(y, ref, n);
            CHECK(e < BAR, "%s/%d in place M=%d C=%d: %.3g", WHERE(ex), M, C, e);
        }
        sd_free(x);
        sd_free(y);
        sd_free(ref);
        sd_free(gam);
        sd_free(bet);
        seed += 3;
    }
}

/* ---- attention ---- */

static void attn_case_mask(int batch, int heads, int dh, int Nq, int Nk, float qscale, int pad,
                           unsigned long long seed, int causal)
{
    int C = heads * dh, ldq = C + pad, ldk = C + 2 * pad, ldv = C + 3 * pad, ldo = C + pad;
    float *q = falloc((size_t)batch * Nq * ldq), *k = falloc((size_t)batch * Nk * ldk),
          *v = falloc((size_t)batch * Nk * ldv), *o = falloc((size_t)batch * Nq * ldo),
          *ref = falloc((size_t)batch * Nq * ldo);
    fill(q, (size_t)batch * Nq * ldq, seed, qscale, 0);
    fill(k, (size_t)batch * Nk * ldk, seed + 1, 1, 0);
    fill(v, (size_t)batch * Nk * ldv, seed + 2, 1, 0.5f);
    float scale = 1.0f / sqrtf((float)dh);
    fill(ref, (size_t)batch * Nq * ldo, seed + 3, 1, 0);
    if (causal)
        CHECK(
            sd_ref_attention_causal(batch, heads, dh, Nq, q, ldq, k, ldk, v, ldv, ref, ldo, scale),
            "reference attention");
    else
        CHECK(sd_ref_attention(batch, heads, dh, Nq, Nk, q, ldq, k, ldk, v, ldv, ref, ldo, scale),
              "reference attention");
    FOR_EACH_EXEC(ex)
    {
        fill(o, (size_t)batch * Nq * ldo, seed + 3, 1, 0); /* same pad contents as ref */
        if (causal)
            sd_attention_causal(&ex, batch, heads, dh, Nq, q, ldq, k, ldk, v, ldv, o, ldo, scale);
        else
            sd_attention(&ex, batch, heads, dh, Nq, Nk, q, ldq, k, ldk, v, ldv, o, ldo, scale);
        double e = rel_l2_2d(o, ldo, ref, ldo, batch * Nq, C);
        CHECK(e < BAR, "%s/%d b=%d h=%d dh=%d Nq=%d Nk=%d qs=%g causal=%d: rel L2 %.3g", WHERE(ex),
              batch, heads, dh, Nq, Nk, qscale, causal, e);
        int pad_ok = 1;
        for (int r = 0; r < batch * Nq; r++)
            for (int c = C; c < ldo; c++)
                pad_ok &= o[(size_t)r * ldo + c] == ref[(size_t)r * ldo + c];
        CHECK(pad_ok, "%s/%d attention wrote past the heads", WHERE(ex));
    }
    sd_free(q);
    sd_free(k);
    sd_free(v);
    sd_free(o);
    sd_free(ref);
}

static void attn_case(int batch, int heads, int dh, int Nq, int Nk, float qscale, int pad,
                      unsigned long long seed)
{
    attn_case_mask(batch, heads, dh, Nq, Nk, qscale, pad, seed, 0);
}

/* Causal self-attention (the text encoders): the CLIP shape, one query
 * block, several query and key blocks (whole key blocks skipped), peaky
 * scores; the reference's mask is checked by hand in test_ref_hand. */
static void test_attention_causal(void)
{
    attn_case_mask(2, 12, 64, 77, 77, 1, 0, 520, 1);
    attn_case_mask(1, 2, 16, 1, 1, 1, 1, 521, 1);
    attn_case_mask(1, 3, 40, 600, 600, 3, 2, 522, 1);
    attn_case_mask(2, 2, 8, 17, 17, 6, 0, 523, 1);
}

static void test_attention(void)
{
    attn_case(2, 2, 8, 37, 77, 1, 0, 500);
    attn_case(1, 8, 40, 100, 5, 1, 3, 501);
    attn_case(2, 3, 40, 1, 1, 1, 0, 502);
    attn_case(1, 1, 1, 3, 2, 1, 1, 503);
    attn_case(1, 2, 64, 65, 300, 1, 0, 504);
    attn_case(2, 1, 80, 50, 257, 1, 2, 505);
    attn_case(1, 1, 160, 13, 77, 1, 0, 506);
    attn_case(2, 4, 8, 130, 31, 1, 0, 507);
    /* Peaky softmax across several key blocks: the running max changes
     * between blocks and the rescaling must be right. */
    attn_case(1, 2, 40, 20, 700, 6, 0, 508);
    attn_case(1, 1, 160, 9, 400, 4, 1, 509);
    /* K/V of one (b,h) too big to pack more than one pair at a time. */
    attn_case(1, 3, 160, 5, 4100, 2, 0, 510);
}

/* attn_tile against double sums: four query panels at once (tiles apart
 * by more than their size), keys 1..256 (partial panels), head sizes
 * below, at and past SD_MICRO_SUB, old maxima of -inf, below and above
 * every score. The scores are negative, so a padding key's zero score
 * taken into the max would show in every probability. The first three
 * panels again on their own (an odd count: AVX-512 takes its one-panel
 * path there, and pairs of panels for four) give the same numbers, bit
 * for bit. */
static void test_attn_tile(void)
{
    enum { NP = 4 };
    static const int kcs[] = {1, 40, 64, 65, 160}, rowss[] = {1, 15, 16, 17, 77, 256};
    static const float m0s[] = {-INFINITY, -30.0f, 5.0f};
    CHECK(g_sets[g_nsets - 1]->attn_tile || strcmp(g_sets[g_nsets - 1]->name, "avx512") != 0,
          "avx512 has attn_tile");
    for (int si = 0; si < g_nsets; si++) {
        const sd_kernels *kern = g_sets[si];
        if (!kern->attn_tile)
            continue;
        const int mr = kern->mr, nr = kern->nr;
        double worst_m = 0, worst_p = 0;
        for (size_t ki = 0; ki < sizeof kcs / sizeof kcs[0]; ki++)
            for (size_t ri = 0; ri < sizeof rowss / sizeof rowss[0]; ri++) {
                const int kc = kcs[ki], rows = rowss[ri], pr = (rows + mr - 1) / mr * mr;
                const int lds = pr * nr + 16, nq = NP * nr;
                float *kr = falloc((size_t)rows * kc), *a = falloc((size_t)pr * kc);
                float *b = falloc((size_t)NP * kc * nr), *s = falloc((size_t)NP * lds);
                float *s3 = falloc((size_t)NP * lds);
                fill(kr, (size_t)rows * kc, 700 + ki, 0.5f, 1.0f);    /* keys in (0.5, 1.5) */
                fill(b, (size_t)NP * kc * nr, 710 + ri, 0.5f, -1.0f); /* queries negative */
                for (int p = 0; p < pr / mr; p++) { /* kc < SD_KC_MAX: one piece */
                    const float *rp[SD_MR_MAX];
                    for (int i = 0; i < mr; i++)
                        rp[i] = p * mr + i < rows ? kr + (size_t)(p * mr + i) * kc : sd_zero_row;
                    sd_pack_rows(rp, mr, kc, a + (size_t)p * kc * mr);
                }
                double *ref = malloc(sizeof(double) * rows * nq);
                CHECK(ref != NULL, "alloc");
                if (!ref)
                    return;
                for (int r = 0; r < rows; r++)
                    for (int c = 0; c < nq; c++) { /* column c: panel c / nr, query c % nr */
                        const float *bq = b + (size_t)(c / nr) * kc * nr + c % nr;
                        double d = 0;
                        for (int k = 0; k < kc; k++)
                            d += (double)kr[(size_t)r * kc + k] * bq[(size_t)k * nr];
                        ref[(size_t)r * nq + c] = d;
                    }
                for (size_t mi = 0; mi < sizeof m0s / sizeof m0s[0]; mi++) {
                    float m[NP * 16], cs[NP * 16], cr[NP * 16], m0[NP * 16];
                    double em = 0, ep = 0; /* worst errors: max (absolute), p/sum/corr (relative) */
                    for (int c = 0; c < nq; c++)
                        m[c] = m0[c] = m0s[(mi + (size_t)c / nr) % 3];
                    kern->attn_tile(kc, rows, NP, a, b, s, lds, m, cs, cr);
                    for (int c = 0; c < nq; c++) {
                        const float *t = s + (size_t)(c / nr) * lds + c % nr;
                        double mref = m0[c], sum = 0;
                        for (int r = 0; r < rows; r++)
                            mref = ref[(size_t)r * nq + c] > mref ? ref[(size_t)r * nq + c] : mref;
                        em = fmax(em, fabs(m[c] - mref) / (1 + fabs(mref)));
                        for (int r = 0; r < rows; r++) {
                            double p = exp2(ref[(size_t)r * nq + c] - mref);
                            sum += p;
                            ep = fmax(ep, fabs(t[(size_t)r * nr] - p) / (p + 0x1p-100) /
                                              (1 + fabs(ref[(size_t)r * nq + c])));
                        }
                        ep = fmax(ep, fabs(cs[c] - sum) / (sum + 0x1p-100) / (1 + fabs(mref)));
                        double cref = exp2((double)m0[c] - mref);
                        ep = fmax(ep, fabs(cr[c] - cref) / (cref + 0x1p-100) / (1 + fabs(mref)));
                    }
                    /* float sums of up to 160 terms: ~1e-6 of the score's size seen */
                    CHECK(em < 1e-5 && ep < 1e-5,
                          "%s attn_tile kc=%d rows=%d m0=%g: max %.3g, probabilities %.3g",
                          kern->name, kc, rows, m0s[mi], em, ep);
                    float m3[NP * 16], cs3[NP * 16], cr3[NP * 16];
                    memcpy(m3, m0, sizeof m3);
                    kern->attn_tile(kc, rows, NP - 1, a, b, s3, lds, m3, cs3, cr3);
                    int same = memcmp(m3, m, sizeof(float) * (NP - 1) * nr) == 0 &&
                               memcmp(cs3, cs, sizeof(float) * (NP - 1) * nr) == 0 &&
                               memcmp(cr3, cr, sizeof(float) * (NP - 1) * nr) == 0;
                    for (int q = 0; q < NP - 1; q++)
                        same &= memcmp(s3 + (size_t)q * lds, s + (size_t)q * lds,
                                       sizeof(float) * rows * nr) == 0;
                    CHECK(same, "%s attn_tile kc=%d rows=%d: %d panels differ from %d", kern->name,
                          kc, rows, NP - 1, NP);
                    worst_m = fmax(worst_m, em);
                    worst_p = fmax(worst_p, ep);
                }
                free(ref);
                sd_free(kr);
                sd_free(a);
                sd_free(b);
                sd_free(s);
                sd_free(s3);
            }
        printf("# %s attn_tile: worst error of the max %.3g, of the probabilities %.3g (per unit "
               "of score)\n",
               kern->name, worst_m, worst_p);
    }
}

/* attn_pv against double sums: channel counts that end in whole 16-row
 * panels, 8 rows or fewer, and 17..24 rows (the 24-row tile); runs below,
 * at and past SD_MICRO_SUB; with and without the rescale. Each error is
 * taken relative to the sum of the magnitudes of its terms; rows past
 * `rows` and columns past nr of o must keep their contents. */
static void test_attn_pv(void)
{
    static const int kcs[] = {1, 64, 65, 256}, rowss[] = {1, 8, 9, 16, 20, 24, 40, 80, 160};
    for (int si = 0; si < g_nsets; si++) {
        const sd_kernels *kern = g_sets[si];
        if (!kern->attn_pv)
            continue;
        const int mr = kern->mr, nr = kern->nr;
        double worst = 0;
        for (size_t ki = 0; ki < sizeof kcs / sizeof kcs[0]; ki++)
            for (size_t ri = 0; ri < sizeof rowss / sizeof rowss[0]; ri++) {
                const int kc = kcs[ki], rows = rowss[ri], panels = (rows + mr - 1) / mr;
                const size_t vs = (size_t)(kc + 3) * mr; /* panels apart by more than kc steps */
                const int ldo = nr + 5, orows = rows + 2;
                float *v = falloc(vs * panels), *p = falloc((size_t)kc * nr);
                float *o = falloc((size_t)orows * ldo), *o0 = falloc((size_t)orows * ldo);
                float corr[16];
                fill(v, vs * panels, 800 + ki, 1, 0);
                for (int c = rows; c < panels * mr; c++) /* lanes past rows are zero */
                    for (int k = 0; k < kc; k++)
                        v[(size_t)(c / mr) * vs + (size_t)k * mr + c % mr] = 0;
                fill(p, (size_t)kc * nr, 810 + ri, 0.5f, 0.5f);
                fill(o0, (size_t)orows * ldo, 820 + ri, 3, 0);
                fill(corr, 16, 830 + ki, 0.5f, 0.5f);
                for (int use_corr = 0; use_corr < 2; use_corr++) {
                    memcpy(o, o0, sizeof(float) * orows * ldo);
                    kern->attn_pv(kc, rows, v, vs, p, o, ldo, use_corr ? corr : NULL);
                    double e = 0;
                    int kept = 1;
                    for (int c = 0; c < orows; c++)
                        for (int j = 0; j < ldo; j++) {
                            const size_t at = (size_t)c * ldo + j;
                            if (c >= rows || j >= nr) {
                                kept &= same_bits(o + at, o0 + at, 1);
                                continue;
                            }
                            double ref = use_corr ? (double)o0[at] * corr[j] : 0, mag = fabs(ref);
                            for (int k = 0; k < kc; k++) {
                                double t =
                                    (double)v[(size_t)(c / mr) * vs + (size_t)k * mr + c % mr] *
                                    p[(size_t)k * nr + j];
                                ref += t;
                                mag += fabs(t);
                            }
                            e = fmax(e, fabs(o[at] - ref) / (mag + 1e-30));
                        }
                    CHECK(kept && e < 1e-6, "%s attn_pv kc=%d rows=%d corr=%d: error %.3g%s",
                          kern->name, kc, rows, use_corr, e, kept ? "" : ", wrote outside");
                    worst = fmax(worst, e);
                }
                sd_free(v);
                sd_free(p);
                sd_free(o);
                sd_free(o0);
            }
        printf("# %s attn_pv: worst error %.3g (of the sum of the terms' magnitudes)\n", kern->name,
               worst);
    }
}

/* ---- element-wise ---- */

static void test_silu_geglu(void)
{
    const size_t n = 40000; /* > one task chunk */
    float *x = falloc(n), *y = falloc(n), *ref = falloc(n);
    fill(x, n, 600, 20, 0);
    sd_ref_silu(x, ref, n);
    FOR_EACH_EXEC(ex)
    {
        sd_silu(&ex, x, y, n);
        double e = t_rel_l2_f32(y, ref, n);
        CHECK(e < BAR, "%s/%d silu %.3g", WHERE(ex), e);
        memcpy(y, x, sizeof(float) * n);
        sd_silu(&ex, y, y, n);
        CHECK(t_rel_l2_f32(y, ref, n) < BAR, "silu in place");
        sd_silu(&ex, x, y, 0);
    }
    static const int cfg[][2] = {{37, 160}, {1, 1}, {9, 5120}, {3, 7}};
    for (size_t c = 0; c < 4; c++) {
        int M = cfg[c][0], F = cfg[c][1];
        float *gx = falloc((size_t)M * 2 * F), *gy = falloc((size_t)M * F),
              *gr = falloc((size_t)M * F);
        fill(gx, (size_t)M * 2 * F, 601 + c, 6, 0);
        sd_ref_geglu(gx, M, F, gr);
        FOR_EACH_EXEC(ex)
        {
            sd_geglu(&ex, gx, M, F, gy);
            double e = t_rel_l2_f32(gy, gr, (size_t)M * F);
            CHECK(e < BAR, "%s/%d geglu M=%d F=%d: %.3g", WHERE(ex), M, F, e);
            /* Per element too: 5e-7 relative (a few ulp) while the gate is
             * moderate; in the negative tail (gelu(-3) = -0.004) the float
             * rounding of the exp argument ~g^2/2 is amplified, allow more. */
            int bad = 0;
            for (int m = 0; m < M; m++)
                for (int f = 0; f < F; f++) {
                    size_t i = (size_t)m * F + f;
                    double g = gx[(size_t)m * 2 * F + F + f];
                    double tol = (g > -2.5 ? 5e-7 : 1e-5) * fabs(gr[i]) + 1e-37;
                    bad += fabs((double)gy[i] - gr[i]) > tol;
                }
            CHECK(bad == 0, "%s/%d geglu M=%d F=%d: %d elements off", WHERE(ex), M, F, bad);
        }
        sd_free(gx);
        sd_free(gy);
        sd_free(gr);
    }
    sd_free(x);
    sd_free(y);
    sd_free(ref);
}

static void test_gelu(void)
{
    const size_t n = 40000; /* > one task chunk */
    float *x = falloc(n), *y = falloc(n), *ref = falloc(n);
    fill(x, n, 610, 8, 0);
    for (int quick = 0; quick < 2; quick++) {
        sd_ref_gelu(x, ref, n, quick);
        FOR_EACH_EXEC(ex)
        {
            sd_gelu(&ex, x, y, n, quick);
            double e = t_rel_l2_f32(y, ref, n);
            CHECK(e < BAR, "%s/%d gelu quick=%d %.3g", WHERE(ex), quick, e);
            memcpy(y, x, sizeof(float) * n);
            sd_gelu(&ex, y, y, n, quick);
            CHECK(t_rel_l2_f32(y, ref, n) < BAR, "gelu in place");
        }
    }
    sd_free(x);
    sd_free(y);
    sd_free(ref);
}

/* The fused GEGLU projection: the same numbers, bit for bit, as the GEMM
 * into a [hidden | gate] buffer followed by sd_geglu, and within BAR of the
 * references. Shapes: one and several K blocks, M past one row block, N
 * split into blocks with an odd panel count rounded to whole pairs. With a
 * two-panel kernel set (micro2) on the float kernels, 256 < K <= 320 is one
 * K block in the fused product and two in the plain GEMM (gemm_drive):
 * there the two agree to rounding, not bit for bit. (The AMX GEMM's blocks
 * are the same in both.) */
static void test_gemm_geglu(void)
{
    static const int cfg[][3] = {
        {37, 16, 20}, {150, 48, 300}, {7, 32, 700}, {290, 272, 64}, {13, 544, 520}};
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        const int M = cfg[c][0], F = cfg[c][1], K = cfg[c][2], N = 2 * F, ldy = F + 3;
        float *A = falloc((size_t)M * K), *w = falloc((size_t)N * K), *Bkn = falloc((size_t)K * N);
        float *bias = falloc(N), *hg = falloc((size_t)M * N), *ref = falloc((size_t)M * F);
        float *y = falloc((size_t)M * ldy), *y2 = falloc((size_t)M * F);
        fill(A, (size_t)M * K, 700 + c, 1, 0);
        fill(w, (size_t)N * K, 710 + c, 0.2f, 0);
        fill(bias, N, 720 + c, 1, 0);
        for (int k = 0; k < K; k++)
            for (int n = 0; n < N; n++)
                Bkn[(size_t)k * N + n] = w[(size_t)n * K + k];
        sd_epilogue ep = {.bias = bias};
        sd_ref_gemm(M, N, K, A, K, Bkn, hg, N, &ep);
        sd_ref_geglu(hg, M, F, ref);
        FOR_EACH_EXEC(ex)
        {
            sd_packed P, Pg;
            CHECK(sd_pack(ex.kern, w, N, K, 1, &P) == SDUNET_OK, "pack");
            CHECK(sd_pack_geglu(ex.kern, w, F, K, &Pg) == SDUNET_OK && Pg.geglu_F == F,
                  "pack_geglu");
            for (size_t i = 0; i < (size_t)M * ldy; i++)
                y[i] = 12345.0f; /* the columns past F stay untouched */
            sd_gemm_geglu(&ex, M, A, K, &Pg, bias, y, ldy);
            sd_gemm(&ex, M, A, K, &P, hg, N, &ep);
            sd_geglu(&ex, hg, M, F, y2);
            double e = rel_l2_2d(y, ldy, ref, F, M, F);
            CHECK(e < BAR, "%s/%d M=%d F=%d K=%d: rel L2 %.3g", WHERE(ex), M, F, K, e);
            int same = 1, pad_ok = 1;
            for (int m = 0; m < M; m++) {
                same &= memcmp(y + (size_t)m * ldy, y2 + (size_t)m * F, sizeof(float) * F) == 0;
                for (int f = F; f < ldy; f++)
                    pad_ok &= y[(size_t)m * ldy + f] == 12345.0f;
            }
            if (ex.kern->micro2 && !ex.kern->amx && K > 256 && K <= 320) {
                double d = rel_l2_2d(y, ldy, y2, F, M, F);
                CHECK(d < 1e-6, "%s/%d M=%d F=%d K=%d: fused vs GEMM + sd_geglu %.3g", WHERE(ex), M,
                      F, K, d);
                CHECK(!same, "%s/%d K=%d: bit for bit again: drop this exception", WHERE(ex), K);
            } else {
                CHECK(same, "%s/%d M=%d F=%d K=%d: fused differs from GEMM + sd_geglu", WHERE(ex),
                      M, F, K);
            }
            CHECK(pad_ok, "%s/%d M=%d F=%d: wrote past F", WHERE(ex), M, F);
            sd_packed_free(&P);
            sd_packed_free(&Pg);
            /* 16-bit GEGLU panels: the f32 panels' result, bit for bit */
            float *wr = falloc((size_t)N * K);
            for (int st = SD_WT_F16; st <= SD_WT_BF16; st++) {
                round_to(wr, w, (size_t)N * K, st);
                sd_packed P32, P16;
                CHECK(pack_as(ex.kern, wr, N, K, 1, F, SD_WT_F32, &P32) &&
                          pack_as(ex.kern, wr, N, K, 1, F, st, &P16),
                      "pack %s", sd_wtype_name(st));
                sd_gemm_geglu(&ex, M, A, K, &P32, bias, y, ldy);
                sd_gemm_geglu(&ex, M, A, K, &P16, bias, y2, F);
                same = 1;
                for (int m = 0; m < M; m++)
                    same &= same_bits(y + (size_t)m * ldy, y2 + (size_t)m * F, (size_t)F);
                CHECK(same, "%s/%d %s GEGLU panels M=%d F=%d K=%d differ from f32", WHERE(ex),
                      sd_wtype_name(st), M, F, K);
                sd_packed_free(&P32);
                sd_packed_free(&P16);
            }
            sd_free(wr);
        }
        sd_free(A);
        sd_free(w);
        sd_free(Bkn);
        sd_free(bias);
        sd_free(hg);
        sd_free(ref);
        sd_free(y);
        sd_free(y2);
    }
    /* F must be whole panels. */
    float w1[2 * 8] = {0};
    sd_packed Pg;
    CHECK(sd_pack_geglu(g_sets[0], w1, 8 / 2 * 1, 2, &Pg) == SDUNET_E_INVALID_ARG &&
              Pg.data == NULL,
          "pack_geglu F=4 rejected");
}

/* With no scratch memory (a workspace whose limit refuses every buffer)
 * each kernel takes its fallback path: the GEMM, the fused GEGLU and the
 * convolution (Winograd forced, so it first declines, then the direct
 * method) one micro-panel at a time on one thread, bit for bit the normal
 * result; attention one query at a time, within BAR. */
static void test_alloc_fallbacks(void)
{
    const int M = 150, N = 40, K = 600, F = 32, H = 9, W = 13, Cin = 40, Co = 24; /* 2F >= N, Co */
    /* one bias for all three: N for the GEMM, 2F for GEGLU, Co for the conv */
    float *A = falloc((size_t)M * K), *w = falloc((size_t)N * K), *bias = falloc(2 * F);
    float *wg = falloc((size_t)2 * F * K), *in = falloc((size_t)H * W * Cin);
    float *wc = falloc((size_t)Co * Cin * 9);
    float *y = falloc((size_t)M * N), *y0 = falloc((size_t)M * N);
    float *g = falloc((size_t)M * F), *g0 = falloc((size_t)M * F);
    float *c = falloc((size_t)H * W * Co), *c0 = falloc((size_t)H * W * Co);
    fill(A, (size_t)M * K, 900, 1, 0);
    fill(w, (size_t)N * K, 901, 0.1f, 0);
    fill(bias, 2 * F, 902, 1, 0);
    fill(wg, (size_t)2 * F * K, 903, 0.1f, 0);
    fill(in, (size_t)H * W * Cin, 904, 1, 0);
    fill(wc, (size_t)Co * Cin * 9, 905, 0.1f, 0);
    /* attention: 2 heads of 16, 70 queries, 90 keys */
    const int heads = 2, dh = 16, Nq = 70, Nk = 90, ld = heads * dh;
    float *q = falloc((size_t)Nq * ld), *k = falloc((size_t)Nk * ld), *v = falloc((size_t)Nk * ld);
    float *o = falloc((size_t)Nq * ld), *oref = falloc((size_t)Nq * ld);
    fill(q, (size_t)Nq * ld, 906, 1, 0);
    fill(k, (size_t)Nk * ld, 907, 1, 0);
    fill(v, (size_t)Nk * ld, 908, 1, 0);
    CHECK(sd_ref_attention(1, heads, dh, Nq, Nk, q, ld, k, ld, v, ld, oref, ld, 0.25f),
          "reference attention");
    sd_epilogue ep = {.bias = bias};
    /* Each storage type (the weights rounded to it): 16-bit panels widen
     * into the fallback's stack block. */
    for (int st = SD_WT_F32; st < SD_WT_COUNT; st++) {
        round_to(w, w, (size_t)N * K, st);
        round_to(wg, wg, (size_t)2 * F * K, st);
        round_to(wc, wc, (size_t)Co * Cin * 9, st);
        FOR_EACH_EXEC(ex)
        {
            sd_packed P, Pg, Pc;
            CHECK(pack_as(ex.kern, w, N, K, 1, 0, st, &P) &&
                      pack_as(ex.kern, wg, 2 * F, K, 1, F, st, &Pg) &&
                      pack_as(ex.kern, wc, Co, Cin, 9, 0, st, &Pc),
                  "pack %s", sd_wtype_name(st));
            sd_gemm(&ex, M, A, K, &P, y0, N, &ep);
            sd_gemm_geglu(&ex, M, A, K, &Pg, bias, g0, F);
            sd_exec direct = ex;
            direct.conv = SD_CONV_DIRECT;
            sd_conv3x3(&direct, in, 1, H, W, Cin, 1, &Pc, c0, &ep);

            sd_workspace none = {.limit = 1};
            sd_exec lean = ex;
            lean.ws = &none;
            lean.conv = SD_CONV_WINOGRAD;
            sd_gemm(&lean, M, A, K, &P, y, N, &ep);
            sd_gemm_geglu(&lean, M, A, K, &Pg, bias, g, F);
            sd_conv3x3(&lean, in, 1, H, W, Cin, 1, &Pc, c, &ep);
            sd_attention(&lean, 1, heads, dh, Nq, Nk, q, ld, k, ld, v, ld, o, ld, 0.25f);
            float *oc = falloc((size_t)Nq * ld), *ocref = falloc((size_t)Nq * ld);
            CHECK(sd_ref_attention_causal(1, heads, dh, Nq, q, ld, k, ld, v, ld, ocref, ld, 0.25f),
                  "reference causal attention");
            sd_attention_causal(&lean, 1, heads, dh, Nq, q, ld, k, ld, v, ld, oc, ld, 0.25f);
            double ec = t_rel_l2_f32(oc, ocref, (size_t)Nq * ld);
            CHECK(ec < BAR, "%s/%d causal attention fallback: rel L2 %.3g", WHERE(ex), ec);
            sd_free(oc);
            sd_free(ocref);
            CHECK(memcmp(y, y0, sizeof(float) * M * N) == 0, "%s/%d gemm fallback differs (%s)",
                  WHERE(ex), sd_wtype_name(st));
            CHECK(memcmp(g, g0, sizeof(float) * M * F) == 0, "%s/%d geglu fallback differs (%s)",
                  WHERE(ex), sd_wtype_name(st));
            CHECK(memcmp(c, c0, sizeof(float) * H * W * Co) == 0,
                  "%s/%d conv fallback differs (%s)", WHERE(ex), sd_wtype_name(st));
            /* Fast mode: F(4x4) without memory falls back the same way
             * (to the fast mode's direct convolution). */
            lean.fast = 1;
            direct.fast = 1;
            sd_conv3x3(&direct, in, 1, H, W, Cin, 1, &Pc, c0, &ep);
            memset(c, 0, sizeof(float) * H * W * Co);
            CHECK(!sd_conv3x3_winograd4(&lean, in, 1, H, W, Cin, &Pc, c, &ep) && c[0] == 0 &&
                      c[(size_t)H * W * Co - 1] == 0,
                  "%s/%d F(4x4) ran without memory", WHERE(ex));
            sd_conv3x3(&lean, in, 1, H, W, Cin, 1, &Pc, c, &ep);
            CHECK(memcmp(c, c0, sizeof(float) * H * W * Co) == 0,
                  "%s/%d fast conv fallback differs (%s)", WHERE(ex), sd_wtype_name(st));
            double e = t_rel_l2_f32(o, oref, (size_t)Nq * ld);
            CHECK(e < BAR, "%s/%d attention fallback: rel L2 %.3g", WHERE(ex), e);
            for (int i = 0; i < SD_WS_SLOTS; i++)
                CHECK(none.buf[i] == NULL, "limited workspace slot %d holds a buffer", i);
            sd_packed_free(&P);
            sd_packed_free(&Pg);
            sd_packed_free(&Pc);
        }
    }
    float *bufs[] = {A, w, bias, wg, in, wc, y, y0, g, g0, c, c0, q, k, v, o, oref};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        sd_free(bufs[i]);
}

/* A call whose packed weights do not fit it (GEGLU-packed weights in a plain
 * GEMM and the reverse, a 3x3 weight depth that is not 9 * Cin) is a
 * library bug: the kernel records it in ex->fault and writes nothing, and
 * with no fault pointer it still only returns. Correct calls leave the
 * flag alone. */
static void set_all(float *x, size_t n, float v)
{
    for (size_t i = 0; i < n; i++)
        x[i] = v;
}

/* How many of x[0..n) are not v: values a call wrote over a sentinel. */
static size_t count_not(const float *x, size_t n, float v)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += x[i] != v;
    return k;
}

static void test_kernel_faults(void)
{
    const int M = 20, F = 16, K = 24, H = 5, W = 6, Cin = 8, Co = 16;
    float *A = falloc((size_t)M * K), *w = falloc((size_t)2 * F * K);
    float *wc = falloc((size_t)Co * Cin * 9), *in = falloc((size_t)H * W * 2 * Cin);
    float *y = falloc((size_t)M * 2 * F), *c = falloc((size_t)H * W * Co);
    fill(A, (size_t)M * K, 950, 1, 0);
    fill(w, (size_t)2 * F * K, 951, 0.1f, 0);
    fill(wc, (size_t)Co * Cin * 9, 952, 0.1f, 0);
    fill(in, (size_t)H * W * 2 * Cin, 953, 1, 0);
    FOR_EACH_EXEC(ex)
    {
        sd_packed P, Pg, Pc;
        CHECK(sd_pack(ex.kern, w, 2 * F, K, 1, &P) == SDUNET_OK &&
                  sd_pack_geglu(ex.kern, w, F, K, &Pg) == SDUNET_OK &&
                  sd_pack(ex.kern, wc, Co, Cin, 9, &Pc) == SDUNET_OK,
              "pack");
        for (int with_flag = 0; with_flag < 2; with_flag++) {
            int fault = 0;
            ex.fault = with_flag ? &fault : NULL;
            set_all(y, (size_t)M * 2 * F, 7.0f);
            sd_gemm(&ex, M, A, K, &Pg, y, 2 * F, NULL); /* GEGLU-packed in a plain GEMM */
            CHECK(!with_flag || fault == 1, "gemm with GEGLU weights: fault %d (%s, %d threads)",
                  fault, WHERE(ex));
            fault = 0;
            sd_gemm_geglu(&ex, M, A, K, &P, NULL, y, F); /* plain weights in the GEGLU product */
            CHECK(!with_flag || fault == 1, "GEGLU with plain weights: fault %d (%s, %d threads)",
                  fault, WHERE(ex));
            size_t written = count_not(y, (size_t)M * 2 * F, 7.0f);
            CHECK(written == 0, "faulting calls wrote %zu values", written);
            fault = 0;
            set_all(c, (size_t)H * W * Co, 7.0f);
            sd_conv3x3(&ex, in, 1, H, W, 2 * Cin, 1, &Pc, c, NULL); /* K = 9 Cin, not 9 * 2 Cin */
            written = count_not(c, (size_t)H * W * Co, 7.0f);
            CHECK((!with_flag || fault == 1) && written == 0,
                  "conv with the wrong depth: fault %d, %zu values written (%s, %d threads)", fault,
                  written, WHERE(ex));
            /* panels of an unknown storage type */
            sd_packed Pb = P, Pgb = Pg, Pcb = Pc;
            Pb.type = Pgb.type = Pcb.type = 7;
            for (int v = 0; v < 2; v++) {
                sd_exec e2 = ex;
                e2.conv = v ? SD_CONV_WINOGRAD : SD_CONV_DIRECT;
                fault = 0;
                set_all(y, (size_t)M * 2 * F, 7.0f);
                set_all(c, (size_t)H * W * Co, 7.0f);
                sd_gemm(&e2, M, A, K, &Pb, y, 2 * F, NULL);
                int f1 = fault;
                fault = 0;
                sd_gemm_geglu(&e2, M, A, K, &Pgb, NULL, y, F);
                int f2 = fault;
                fault = 0;
                sd_conv3x3(&e2, in, 1, H, W, Cin, 1, &Pcb, c, NULL);
                int f3 = fault;
                written =
                    count_not(y, (size_t)M * 2 * F, 7.0f) + count_not(c, (size_t)H * W * Co, 7.0f);
                CHECK((!with_flag || (f1 && f2 && f3)) && written == 0,
                      "unknown panel type: faults %d %d %d, %zu values written (%s, %d threads)",
                      f1, f2, f3, written, WHERE(ex));
            }
            fault = 0;
            sd_gemm(&ex, M, A, K, &P, y, 2 * F, NULL);
            sd_gemm_geglu(&ex, M, A, K, &Pg, NULL, y, F);
            sd_conv3x3(&ex, in, 1, H, W, Cin, 1, &Pc, c, NULL);
            CHECK(fault == 0, "correct calls set the fault flag (%s, %d threads)", WHERE(ex));
        }
        sd_packed_free(&P);
        sd_packed_free(&Pg);
        sd_packed_free(&Pc);
    }
    sd_free(A), sd_free(w), sd_free(wc), sd_free(in), sd_free(y), sd_free(c);
}

/* ---- 16-bit weights ---- */

/* kern->widen and sd_wt_widen1 against the file conversions for all 65536
 * patterns of each 16-bit type: float16 exactly as sd_f16_to_f32 (zeros,
 * subnormals, normals, Inf) except that a NaN comes out quiet with its sign
 * and payload (IEEE convertFormat; F16C does the same); bfloat16 bit for
 * bit. Odd lengths and offsets cover the vector loops' tails. */
static void test_widen(void)
{
    uint16_t *h = sd_alloc(sizeof(uint16_t) * 65536);
    float *f = falloc(65536);
    if (!h)
        exit(2);
    for (int i = 0; i < 65536; i++)
        h[i] = (uint16_t)i;
    for (int si = 0; si < g_nsets; si++)
        for (int st = SD_WT_F16; st <= SD_WT_BF16; st++)
            for (int part = 0; part < 3; part++) {
                /* whole range; then 13 values from an odd offset; then 5 */
                const size_t off = part == 0   ? 0
                                   : part == 1 ? 31741
                                               : 64511,
                             n = part == 0   ? 65536
                                 : part == 1 ? 13
                                             : 5;
                set_all_f(f, 65536, 12345.0f);
                g_sets[si]->widen(st, h + off, f + off, n);
                size_t bad = 0, first = 0;
                for (size_t i = off; i < off + n; i++) {
                    uint32_t want, got, one;
                    float w = st == SD_WT_F16 ? sd_f16_to_f32(h[i]) : sd_bf16_to_f32(h[i]);
                    float o = sd_wt_widen1(st, h[i]);
                    memcpy(&want, &w, 4);
                    memcpy(&got, &f[i], 4);
                    memcpy(&one, &o, 4);
                    if (st == SD_WT_F16 && isnan(w))
                        want |= 0x400000u;
                    if (got != want || one != want) {
                        if (!bad)
                            first = i;
                        bad++;
                    }
                }
                CHECK(bad == 0, "%s widen %s: %zu wrong, first 0x%04zx", g_sets[si]->name,
                      sd_wtype_name(st), bad, first);
                CHECK(count_not(f, off, 12345.0f) == 0 &&
                          count_not(f + off + n, 65536 - off - n, 12345.0f) == 0,
                      "%s widen %s wrote outside [%zu, %zu)", g_sets[si]->name, sd_wtype_name(st),
                      off, off + n);
            }
    /* spot values, independent of sd_f16_to_f32 */
    float v;
    CHECK((v = sd_wt_widen1(SD_WT_F16, 0x0001)) == 0x1p-24f, "smallest subnormal %g", v);
    CHECK((v = sd_wt_widen1(SD_WT_F16, 0x83FF)) == -0x3FFp-24f, "largest subnormal %g", v);
    CHECK((v = sd_wt_widen1(SD_WT_F16, 0x7BFF)) == 65504.0f, "max %g", v);
    CHECK((v = sd_wt_widen1(SD_WT_F16, 0xFC00)) == -INFINITY, "-Inf %g", v);
    CHECK((v = sd_wt_widen1(SD_WT_F16, 0x3C01)) == 1.0f + 0x1p-10f, "1 + ulp %g", v);
    v = sd_wt_widen1(SD_WT_F16, 0x8000);
    CHECK(v == 0 && signbit(v), "-0");
    uint32_t b;
    v = sd_wt_widen1(SD_WT_F16, 0x7C01); /* signalling NaN, payload 1 */
    memcpy(&b, &v, 4);
    CHECK(b == 0x7FC02000u, "sNaN widens to quiet 0x%08x", (unsigned)b);
    CHECK((v = sd_wt_widen1(SD_WT_BF16, 0x3F81)) == 1.0f + 0x1p-7f, "bf16 1 + ulp %g", v);
    sd_free(h);
    sd_free(f);
}

/* sd_pack_src: every (source, storage) pair against the float32 packing
 * of the same values; q|k|v parts from 16-bit sources at odd addresses (a
 * file mapping as it is); float32 -> 16-bit rounding; bad arguments. */
static void test_pack_types(void)
{
    const sd_kernels *kern = g_sets[g_nsets - 1];
    const int rows = 21, parts = 3, N = rows * parts, Cin = 7, taps = 9, K = Cin * taps;
    const size_t n = (size_t)N * K;
    float *w = falloc(n), *wr = falloc(n);
    unsigned char *raw = sd_alloc(2 * n + 1);
    if (!raw)
        exit(2);
    fill(w, n, 1234, 3.0f, 0);
    w[5] = 1e-6f;    /* a float16 subnormal after rounding */
    w[6] = 70000.0f; /* past float16's range: Inf */
    w[7] = -2e-8f;   /* rounds to -0 in float16 (a third of the smallest subnormal) */
    for (int st = SD_WT_F16; st <= SD_WT_BF16; st++) {
        round_to(wr, w, n, st);
        /* the rounded values as little-endian 16-bit words at an odd address */
        for (size_t i = 0; i < n; i++) {
            uint16_t hv = st == SD_WT_F16 ? sd_f32_to_f16(w[i]) : sd_f32_to_bf16(w[i]);
            raw[1 + 2 * i] = (unsigned char)(hv & 0xFF);
            raw[2 + 2 * i] = (unsigned char)(hv >> 8);
        }
        sd_wsrc s16 = {.type = st, .parts = parts, .rows = rows};
        sd_wsrc s32 = {.type = SD_WT_F32, .parts = parts, .rows = rows};
        for (int p = 0; p < parts; p++) {
            s16.part[p] = raw + 1 + 2 * (size_t)p * rows * K;
            s32.part[p] = wr + (size_t)p * rows * K;
        }
        sd_packed Pref, Pa, Pb, Pc, Pd;
        CHECK(sd_pack(kern, wr, N, Cin, taps, &Pref) == SDUNET_OK, "pack f32");
        /* 16-bit source: copied (same type), widened (f32) */
        CHECK(sd_pack_src(kern, &s16, N, Cin, taps, 0, st, &Pa) == SDUNET_OK, "pack 16->16");
        CHECK(sd_pack_src(kern, &s16, N, Cin, taps, 0, SD_WT_F32, &Pb) == SDUNET_OK, "pack 16->32");
        /* float32 source: the rounded values, and the unrounded ones rounded by the packer */
        CHECK(sd_pack_src(kern, &s32, N, Cin, taps, 0, st, &Pc) == SDUNET_OK, "pack 32->16");
        sd_wsrc sw = {.type = SD_WT_F32, .parts = 1, .rows = N, .part = {w}};
        CHECK(sd_pack_src(kern, &sw, N, Cin, taps, 0, st, &Pd) == SDUNET_OK, "pack 32->16 round");
        const size_t cnt = (size_t)(N + 15) / 16 * 16 * K;
        CHECK(Pa.type == st && Pb.type == SD_WT_F32 && Pc.type == st && Pd.type == st, "types");
        CHECK(memcmp(Pb.data, Pref.data, cnt * 4) == 0, "%s source widened at packing",
              sd_wtype_name(st));
        CHECK(memcmp(Pa.data, Pc.data, cnt * 2) == 0 && memcmp(Pa.data, Pd.data, cnt * 2) == 0,
              "%s panels from 16-bit, rounded and unrounded float32 sources differ",
              sd_wtype_name(st));
        size_t bad = 0;
        for (size_t i = 0; i < cnt; i++) {
            const float a = ((const float *)Pref.data)[i];
            const float b16 = sd_wt_widen1(st, ((const uint16_t *)Pa.data)[i]);
            bad += memcmp(&a, &b16, 4) != 0;
        }
        CHECK(bad == 0, "%s panels widen to the f32 panels: %zu differ", sd_wtype_name(st), bad);
        CHECK(sd_packed_bytes(N, (size_t)K, 16, st) == cnt * 2 &&
                  sd_packed_bytes(N, (size_t)K, 16, SD_WT_F32) == cnt * 4,
              "sd_packed_bytes");
        /* the special values: row 0, k 5..7 sit at panel 0, rows k' of lane 0 */
        if (st == SD_WT_F16) {
            const uint16_t *d = Pd.data;
            /* w index i = ci*taps + t maps to panel row t*Cin + ci */
            uint16_t s5 = d[((size_t)(5 % taps) * Cin + 5 / taps) * 16],
                     s6 = d[((size_t)(6 % taps) * Cin + 6 / taps) * 16],
                     s7 = d[((size_t)(7 % taps) * Cin + 7 / taps) * 16];
            CHECK(s5 == sd_f32_to_f16(1e-6f) && s5 != 0 && s5 < 0x0400, "subnormal 0x%04x", s5);
            CHECK(s6 == 0x7C00, "70000 -> Inf: 0x%04x", s6);
            CHECK(s7 == 0x8000, "-2e-8 -> -0: 0x%04x", s7);
        }
        sd_packed_free(&Pref);
        sd_packed_free(&Pa);
        sd_packed_free(&Pb);
        sd_packed_free(&Pc);
        sd_packed_free(&Pd);
    }
    /* bad arguments */
    sd_packed P;
    sd_wsrc ok = {.type = SD_WT_F32, .parts = 1, .rows = N, .part = {w}};
    sd_wsrc bad = ok;
    CHECK(sd_pack_src(kern, &ok, N + 1, Cin, taps, 0, SD_WT_F16, &P) == SDUNET_E_INVALID_ARG &&
              P.data == NULL,
          "N != parts * rows");
    CHECK(sd_pack_src(kern, &ok, N, Cin, taps, 0, 3, &P) == SDUNET_E_INVALID_ARG, "store 3");
    bad.type = -1;
    CHECK(sd_pack_src(kern, &bad, N, Cin, taps, 0, SD_WT_F32, &P) == SDUNET_E_INVALID_ARG,
          "source type -1");
    bad = ok;
    bad.parts = 0;
    CHECK(sd_pack_src(kern, &bad, N, Cin, taps, 0, SD_WT_F32, &P) == SDUNET_E_INVALID_ARG,
          "0 parts");
    bad.parts = SD_WSRC_PARTS + 1;
    CHECK(sd_pack_src(kern, &bad, N, Cin, taps, 0, SD_WT_F32, &P) == SDUNET_E_INVALID_ARG,
          "too many parts");
    bad = ok;
    bad.part[0] = NULL;
    CHECK(sd_pack_src(kern, &bad, N, Cin, taps, 0, SD_WT_F32, &P) == SDUNET_E_INVALID_ARG,
          "NULL part");
    ok.rows = 32;
    CHECK(sd_pack_src(kern, &ok, 32, 2, 1, 8, SD_WT_F16, &P) == SDUNET_E_INVALID_ARG,
          "GEGLU F = 8 (not whole panels)");
    CHECK(sd_pack_src(kern, &ok, 32, 2, 1, 32, SD_WT_F16, &P) == SDUNET_E_INVALID_ARG,
          "GEGLU N != 2F");
    CHECK(sd_pack_src(kern, &ok, 32, 2, 1, 16, SD_WT_F16, &P) == SDUNET_OK && P.geglu_F == 16,
          "GEGLU F = 16");
    sd_packed_free(&P);
    CHECK(strcmp(sd_wtype_name(SD_WT_BF16), "bf16") == 0 && strcmp(sd_wtype_name(9), "?") == 0,
          "names");
    sd_free(w);
    sd_free(wr);
    sd_free(raw);
}

/* float16 weights that are NaN (quiet and signalling), +-Inf, subnormal,
 * -0 and the largest finite value, through the GEMM and both convolution
 * methods: bit for bit the float32 panels of sd_f16_to_f32's values, and
 * the values IEEE arithmetic gives where they can be told by hand. */
static void test_special_weights(void)
{
    static const uint16_t special[] = {0x7E00, 0x7C01, 0xFE3F, 0x7C00, 0xFC00, 0x0001,
                                       0x83FF, 0x8000, 0x7BFF, 0x0400, 0x3C00};
    const int ns = (int)(sizeof special / sizeof special[0]);
    const int M = 9, K = 5, N = 2 * ns + 3; /* two panels, a partial one */
    float *A = falloc((size_t)M * K), *C = falloc((size_t)M * N), *C16 = falloc((size_t)M * N);
    float *w = falloc((size_t)N * K);
    uint16_t *h = sd_alloc(sizeof(uint16_t) * (size_t)N * K);
    if (!h)
        exit(2);
    /* A: row m is (m + 1, 0, 0, 0, 0) for m < 4, else small integers */
    for (int m = 0; m < M; m++)
        for (int k = 0; k < K; k++)
            A[(size_t)m * K + k] = m < 4 ? (k == 0 ? (float)(m + 1) : 0.0f) : (float)(m - k);
    /* weight row n: the special value at k = 0 (column n < ns) or k = 2,
     * small exact values elsewhere */
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            uint16_t v = sd_f32_to_f16((float)((n + 2 * k) % 5) - 2.0f);
            if (n < 2 * ns && k == (n < ns ? 0 : 2))
                v = special[n % ns];
            h[(size_t)n * K + k] = v;
            w[(size_t)n * K + k] = sd_f16_to_f32(v);
        }
    FOR_EACH_EXEC(ex)
    {
        sd_wsrc s16 = {.type = SD_WT_F16, .parts = 1, .rows = N, .part = {h}};
        sd_packed P32, P16;
        CHECK(sd_pack(ex.kern, w, N, K, 1, &P32) == SDUNET_OK &&
                  sd_pack_src(ex.kern, &s16, N, K, 1, 0, SD_WT_F16, &P16) == SDUNET_OK,
              "pack");
        sd_gemm(&ex, M, A, K, &P32, C, N, NULL);
        sd_gemm(&ex, M, A, K, &P16, C16, N, NULL);
        CHECK(same_bits(C, C16, (size_t)M * N), "%s/%d special f16 weights: GEMM differs",
              WHERE(ex));
        /* rows m < 4: C[m][n] = (m + 1) * special[n] exactly (a -0 weight
         * gives +0: the other k add +-0 products) */
        int ok = 1;
        for (int m = 0; m < 4; m++)
            for (int n = 0; n < ns; n++) {
                const float want = (float)(m + 1) * sd_f16_to_f32(special[n]), got = C16[m * N + n];
                ok &= isnan(want) ? isnan(got) != 0 : got == want;
            }
        CHECK(ok, "%s/%d special f16 weights: C = a * w", WHERE(ex));
        /* a NaN weight's output keeps the payload and is quiet */
        uint32_t bits;
        memcpy(&bits, &C16[1 * N + 1], 4);
        CHECK(bits == 0x7FC02000u, "%s/%d sNaN weight -> 0x%08x", WHERE(ex), (unsigned)bits);
        sd_packed_free(&P32);
        sd_packed_free(&P16);
    }
    /* 3x3 convolution: special values among random float16 weights */
    const int H = 8, W = 7, Cin = 6, Co = 20;
    const size_t nw = (size_t)Co * Cin * 9, nin = (size_t)H * W * Cin, nout = (size_t)H * W * Co;
    float *in = falloc(nin), *wc = falloc(nw), *o32 = falloc(nout), *o16 = falloc(nout);
    uint16_t *hc = sd_alloc(sizeof(uint16_t) * nw);
    if (!hc)
        exit(2);
    fill(in, nin, 4242, 1, 0);
    fill(wc, nw, 4243, 0.5f, 0);
    for (size_t i = 0; i < nw; i++) {
        hc[i] = sd_f32_to_f16(wc[i]);
        if (i % 97 == 3)
            hc[i] = special[(i / 97) % ns];
        wc[i] = sd_f16_to_f32(hc[i]);
    }
    FOR_EACH_EXEC(ex)
    {
        sd_wsrc s16 = {.type = SD_WT_F16, .parts = 1, .rows = Co, .part = {hc}};
        sd_packed P32, P16;
        CHECK(sd_pack(ex.kern, wc, Co, Cin, 9, &P32) == SDUNET_OK &&
                  sd_pack_src(ex.kern, &s16, Co, Cin, 9, 0, SD_WT_F16, &P16) == SDUNET_OK,
              "pack");
        for (int v = 0; v < 2; v++) {
            ex.conv = v ? SD_CONV_WINOGRAD : SD_CONV_DIRECT;
            sd_conv3x3(&ex, in, 1, H, W, Cin, 1, &P32, o32, NULL);
            sd_conv3x3(&ex, in, 1, H, W, Cin, 1, &P16, o16, NULL);
            size_t nans = 0;
            for (size_t i = 0; i < nout; i++)
                nans += isnan(o16[i]) != 0;
            CHECK(same_bits(o32, o16, nout) && nans > 0 && nans < nout,
                  "%s/%d special f16 weights: %s conv differs (%zu NaN of %zu)", WHERE(ex),
                  v ? "winograd" : "direct", nans, nout);
        }
        sd_packed_free(&P32);
        sd_packed_free(&P16);
    }
    sd_free(A), sd_free(C), sd_free(C16), sd_free(w), sd_free(h);
    sd_free(in), sd_free(wc), sd_free(o32), sd_free(o16), sd_free(hc);
}

/* The AVX-512 set's element-wise kernels run the AVX2 set's operations on
 * 16 lanes instead of 8: their results must be the same bits, tails and
 * special values included. */
/* The norms' row passes of every kernel set against the portable loops,
 * bit for bit, at lengths around the vector widths, and nothing written
 * past n. */
static void test_norm_rows(void)
{
    enum { N = 340 };
    static const int ns[] = {0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 31, 40, 333};
    float x[N], gam[N], bet[N], y[N + 1], yc[N + 1];
    double mean[N], scale[N], acc[N + 1], accc[N + 1];
    fill(x, N, 950, 2.0f, 3.0f);
    fill(gam, N, 951, 1, 1);
    fill(bet, N, 952, 1, 0);
    for (int c = 0; c < N; c++) {
        mean[c] = 3.0 + 0.01 * c;
        scale[c] = 0.7 - 0.001 * c;
    }
    for (int si = 0; si < g_nsets; si++) {
        const sd_kernels *k = g_sets[si];
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
            const int n = ns[ni];
            for (int withm = 0; withm <= 1; withm++) {
                for (int c = 0; c <= n; c++)
                    acc[c] = accc[c] = 0.25 * c;
                k->norm_sum(x, n, withm ? mean : NULL, acc);
                sd_norm_sum_c(x, n, withm ? mean : NULL, accc);
                CHECK(memcmp(acc, accc, sizeof(double) * (n + 1)) == 0, "%s norm_sum n=%d mean=%d",
                      k->name, n, withm);
            }
            y[n] = yc[n] = 7.0f;
            k->norm_affine(x, n, mean, scale, bet, y);
            sd_norm_affine_c(x, n, mean, scale, bet, yc);
            CHECK(memcmp(y, yc, sizeof(float) * (n + 1)) == 0, "%s norm_affine n=%d", k->name, n);
            k->norm_affine1(x, n, 2.9, 0.83, gam, bet, y);
            sd_norm_affine1_c(x, n, 2.9, 0.83, gam, bet, yc);
            CHECK(memcmp(y, yc, sizeof(float) * (n + 1)) == 0, "%s norm_affine1 n=%d", k->name, n);
        }
        /* and against the formula, in double, rounded once */
        k->norm_affine1(x, N, 2.9, 0.83, gam, bet, y);
        int bad = 0;
        for (int c = 0; c < N; c++)
            bad += y[c] != (float)(((double)x[c] - 2.9) * (0.83 * gam[c]) + bet[c]);
        CHECK(bad == 0, "%s norm_affine1: %d off the formula", k->name, bad);
    }
}

/* gelu_mul's block form (rows of n, y rows ldy apart, as the fused GEGLU
 * calls it) against one call per row: the same bits, and y's gaps kept. */
static void test_gelu_mul_rows(void)
{
    enum { ROWS = 7, LDY = 50 };
    float h[ROWS * 20], g[ROWS * 20], y[ROWS * LDY], yr[ROWS * LDY];
    fill(h, ROWS * 20, 620, 2, 0);
    fill(g, ROWS * 20, 621, 6, 0);
    g[3] = -INFINITY;
    g[21] = NAN;
    static const int widths[] = {16, 20, 5};
    for (int s = 0; s < g_nsets; s++)
        for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++) {
            const int n = widths[wi];
            for (int i = 0; i < ROWS * LDY; i++)
                y[i] = yr[i] = (float)i;
            g_sets[s]->gelu_mul(h, g, y, n, ROWS, LDY);
            for (int r = 0; r < ROWS; r++)
                g_sets[s]->gelu_mul(h + r * n, g + r * n, yr + r * LDY, n, 1, 0);
            CHECK(memcmp(y, yr, sizeof y) == 0, "%s gelu_mul rows n=%d", g_sets[s]->name, n);
        }
}

static void test_isa_elementwise_agree(void)
{
    const sd_kernels *a2 = sd_kernels_select("avx2"), *a5 = sd_kernels_select("avx512");
    if (!a2 || !a5) {
        printf("# avx2 or avx512 unavailable: skipped\n");
        return;
    }
    const int n = 1000; /* 62 vectors of 16 and a tail of 8 */
    float *x = falloc(n), *h = falloc(n), *y2 = falloc(n), *y5 = falloc(n);
    fill(x, n, 900, 30, 0);
    fill(h, n, 901, 2, 0);
    static const float special[] = {0.0f,   -0.0f,    88.5f,     -88.5f, -87.2f, 87.5f, -15.0f,
                                    1e-30f, INFINITY, -INFINITY, NAN,    -2.5f,  3.0f,  -1.5f};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++)
        x[i * 7] = special[i];
    for (int len = n; len >= n - 13; len -= 13) {
        memset(y2, 0, sizeof(float) * n);
        memset(y5, 0, sizeof(float) * n);
        a2->silu(x, y2, (size_t)len, 1.0f);
        a5->silu(x, y5, (size_t)len, 1.0f);
        CHECK(memcmp(y2, y5, sizeof(float) * n) == 0, "silu n=%d differs", len);
        a2->silu(x, y2, (size_t)len, 1.702f); /* CLIP's quick GELU */
        a5->silu(x, y5, (size_t)len, 1.702f);
        CHECK(memcmp(y2, y5, sizeof(float) * n) == 0, "quick gelu n=%d differs", len);
        a2->gelu_mul(h, x, y2, len, 1, 0);
        a5->gelu_mul(h, x, y5, len, 1, 0);
        CHECK(memcmp(y2, y5, sizeof(float) * n) == 0, "gelu_mul n=%d differs", len);
    }
    /* softmax_cols on 37 rows of 16 scores (one column all -inf but one). */
    enum { R = 37 };
    float s2[R * 16], s5[R * 16], m2[16], m5[16], c2[16], c5[16];
    for (int i = 0; i < R * 16; i++)
        s2[i] = x[i] * 0.5f;
    s2[3] = NAN;
    for (int r = 1; r < R; r++)
        s2[r * 16 + 5] = -INFINITY;
    memcpy(s5, s2, sizeof s2);
    for (int j = 0; j < 16; j++)
        m2[j] = m5[j] = j % 3 ? -INFINITY : 2.0f;
    a2->softmax_cols(s2, R, 0.125f, m2, c2);
    a5->softmax_cols(s5, R, 0.125f, m5, c5);
    CHECK(memcmp(s2, s5, sizeof s2) == 0 && memcmp(m2, m5, sizeof m2) == 0 &&
              memcmp(c2, c5, sizeof c2) == 0,
          "softmax_cols differs");
    sd_free(x);
    sd_free(h);
    sd_free(y2);
    sd_free(y5);
}

/* micro2 (where a set has it) gives bit for bit the two micro calls it
 * stands for: every row count (the 8-row halves, partial tiles), a partial
 * second panel, accumulate, the epilogue, and K across several runs. */
static void test_micro2(void)
{
    enum { KMAX = 200, LDC = 40 };
    float *a = falloc((size_t)SD_MR_MAX * KMAX), *b = falloc(2 * 16 * KMAX);
    float *c0 = falloc((size_t)SD_MR_MAX * LDC), *c1 = falloc((size_t)SD_MR_MAX * LDC);
    float *bias = falloc(32), *g = falloc(SD_MR_MAX * 32), *r = falloc(SD_MR_MAX * 32);
    fill(a, (size_t)SD_MR_MAX * KMAX, 70, 1, 0);
    fill(b, 2 * 16 * KMAX, 71, 1, 0);
    fill(bias, 32, 72, 1, 0);
    fill(g, SD_MR_MAX * 32, 73, 1, 0);
    fill(r, SD_MR_MAX * 32, 74, 1, 0);
    static const int kcs[] = {1, 40, 64, 65, 200}, rowss[] = {1, 5, 8, 9, 12, 16};
    int tested = 0;
    for (int si = 0; si < g_nsets; si++) {
        const sd_kernels *k = g_sets[si];
        if (!k->micro2)
            continue;
        for (size_t ki = 0; ki < sizeof kcs / sizeof kcs[0]; ki++)
            for (size_t ri = 0; ri < sizeof rowss / sizeof rowss[0]; ri++)
                for (int v = 0; v < 8; v++) {
                    const int kc = kcs[ki], rows = rowss[ri] < k->mr ? rowss[ri] : k->mr;
                    const int accumulate = v & 1, with_ep = v & 2, cols[2] = {16, v & 4 ? 7 : 16};
                    sd_tile_ep te[2];
                    for (int h = 0; h < 2; h++) {
                        te[h].bias = bias + 16 * h;
                        for (int i = 0; i < SD_MR_MAX; i++) {
                            te[h].g[i] = g + i * 32 + 16 * h;
                            te[h].r[i] = r + i * 32 + 16 * h;
                        }
                    }
                    fill(c0, (size_t)SD_MR_MAX * LDC, 75 + v, 1, 0);
                    memcpy(c1, c0, sizeof(float) * SD_MR_MAX * LDC);
                    const float *const bp[2] = {b, b + 16 * KMAX};
                    float *const cp[2] = {c0, c0 + 16};
                    k->micro2(kc, a, bp, cp, LDC, accumulate, rows, cols, with_ep ? te : NULL);
                    for (int h = 0; h < 2; h++)
                        k->micro(kc, a, bp[h], c1 + 16 * h, LDC, accumulate, rows, cols[h],
                                 with_ep ? &te[h] : NULL);
                    CHECK(memcmp(c0, c1, sizeof(float) * SD_MR_MAX * LDC) == 0,
                          "%s micro2 kc=%d rows=%d cols2=%d acc=%d ep=%d differs from micro",
                          k->name, kc, rows, cols[1], accumulate, with_ep != 0);
                    tested++;
                }
    }
    printf("# micro2: %d cases\n", tested);
    sd_free(a);
    sd_free(b);
    sd_free(c0);
    sd_free(c1);
    sd_free(bias);
    sd_free(g);
    sd_free(r);
}

/* Special values in A (weights: test_special_f16_weights runs on every
 * set): an infinity, a NaN and a finite 3.39e38 (its bfloat16 hi term
 * would be infinite) in the second K block of a few rows. Every output is
 * NaN, or infinite with the sign, where the AVX-512 set's is, and the
 * finite ones agree to rounding. */
static void test_amx_specials(const sd_kernels *amx, const sd_kernels *avx512)
{
    const int M = 1100, N = 40, K = 600;
    float *A = falloc((size_t)M * K), *w = falloc((size_t)N * K);
    float *C = falloc((size_t)M * N), *Cf = falloc((size_t)M * N);
    fill(A, (size_t)M * K, 3950, 1, 0);
    fill(w, (size_t)N * K, 3951, 0.1f, 0);
    A[(size_t)3 * K + 500] = INFINITY;
    A[(size_t)600 * K + 450] = NAN;
    A[(size_t)601 * K + 599] = -3.39e38f;
    for (int pi = 0; pi < 2; pi++) {
        sd_exec ex = {.pool = g_pools[pi], .kern = amx}, ef = {.pool = g_pools[pi], .kern = avx512};
        sd_packed P, Pf;
        CHECK(sd_pack(amx, w, N, K, 1, &P) == SDUNET_OK && sd_pack(avx512, w, N, K, 1, &Pf) == 0,
              "pack");
        sd_gemm(&ex, M, A, K, &P, C, N, NULL);
        sd_gemm(&ef, M, A, K, &Pf, Cf, N, NULL);
        size_t bad = 0, special = 0;
        for (size_t i = 0; i < (size_t)M * N; i++) {
            if (isnan(Cf[i]) || isinf(Cf[i])) {
                special++;
                bad += isnan(Cf[i]) ? !isnan(C[i]) : C[i] != Cf[i];
            } else {
                bad += !(fabsf(C[i] - Cf[i]) <= 1e-5f * (1.0f + fabsf(Cf[i])));
            }
        }
        CHECK(special == 2 * (size_t)N && bad == 0, "amx/%d special A values: %zu of %zu differ",
              sd_pool_size(ex.pool), bad, special);
        sd_packed_free(&P);
        sd_packed_free(&Pf);
    }
    sd_free(A);
    sd_free(w);
    sd_free(C);
    sd_free(Cf);
}

/* The AMX GEMM (the "amx" set): within the float32 kernels' bar of the
 * double reference (three bfloat16 terms, six products: 1.8e-7 worst
 * seen; dropping mid*mid gives 2.4e-6), on ragged shapes (rows past a
 * 32-row pair, a lone last panel, partial columns, K past a 32-step tile
 * and several K blocks, m blocks of 512 rows), every epilogue (residual
 * aliasing C included), 16-bit panels (bit for bit the float32 panels of
 * the same values), GEGLU, the allocation fallback (bit for bit), one and
 * three threads; the fast mode's five products (B in two terms) within
 * AMX5_BAR, with the same checks; special values in A or B take the float
 * kernels for their products: infinities and NaN come out as float32
 * arithmetic gives them. (The kernel tests above also run every
 * exact-mode check on this set.) */
#define AMX5_BAR 1e-5 /* one product of B's lo term left out: up to 2^-17 */
static void test_gemm_amx(void)
{
    const sd_kernels *amx = sd_kernels_select("amx"), *avx512 = sd_kernels_select("avx512");
    if (!amx) {
        printf("# no AMX on this CPU: the AMX GEMM is not run here\n");
        return;
    }
    static const int shapes[][3] = {{1, 1, 1},      {37, 61, 129}, {33, 17, 33},
                                    {100, 33, 769}, {5, 129, 385}, {150, 45, 400},
                                    {600, 48, 300}, {64, 400, 40}, {1100, 40, 600}};
    unsigned long long seed = 3000;
    double worst[2] = {0, 0}; /* exact, fast */
    for (int fast = 0; fast < 2; fast++)
        for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++)
            for (int e = EP_NONE; e < EP_COUNT; e++, seed++) {
                const int M = shapes[sh][0], N = shapes[sh][1], K = shapes[sh][2];
                const int lda = K + 3, ldc = N + 5, ldr = N + 2, grows = 3;
                float *A = falloc((size_t)M * lda), *w = falloc((size_t)K * N);
                float *Bkn = falloc((size_t)K * N), *wr = falloc((size_t)K * N);
                float *bias = falloc(N), *res = falloc((size_t)M * ldr);
                float *grp = falloc((size_t)((M + grows - 1) / grows) * N);
                float *C0 = falloc((size_t)M * ldc), *Cref = falloc((size_t)M * ldc);
                float *C = falloc((size_t)M * ldc), *C2 = falloc((size_t)M * ldc);
                fill(A, (size_t)M * lda, seed, 1, 0);
                fill(w, (size_t)K * N, seed + 1, 0.1f, 0);
                fill(bias, N, seed + 2, 1, 0);
                fill(res, (size_t)M * ldr, seed + 3, 1, 0);
                fill(grp, (size_t)((M + grows - 1) / grows) * N, seed + 4, 1, 0);
                fill(C0, (size_t)M * ldc, seed + 5, 1, 0);
                for (int k = 0; k < K; k++)
                    for (int n = 0; n < N; n++)
                        Bkn[(size_t)k * N + n] = w[(size_t)n * K + k];
                sd_epilogue ep = epilogue_of(e, bias, grp, grows, res, ldr);
                memcpy(Cref, C0, sizeof(float) * M * ldc);
                if (e == EP_RES_ALIAS) {
                    ep.residual = Cref;
                    ep.ld_res = ldc;
                }
                sd_ref_gemm(M, N, K, A, lda, Bkn, Cref, ldc, e == EP_NONE ? NULL : &ep);
                for (int pi = 0; pi < 2; pi++) {
                    sd_exec ex = {.pool = g_pools[pi], .kern = amx, .fast = fast};
                    const int threads = sd_pool_size(ex.pool);
                    const double bar = fast ? AMX5_BAR : BAR;
                    sd_packed P;
                    CHECK(sd_pack(amx, w, N, K, 1, &P) == SDUNET_OK, "pack");
                    memcpy(C, C0, sizeof(float) * M * ldc);
                    if (e == EP_RES_ALIAS)
                        ep.residual = C;
                    sd_gemm(&ex, M, A, lda, &P, C, ldc, e == EP_NONE ? NULL : &ep);
                    const double err = rel_l2_2d(C, ldc, Cref, ldc, M, N);
                    CHECK(err < bar, "amx/%d fast=%d M=%d N=%d K=%d ep=%d: rel L2 %.3g", threads,
                          fast, M, N, K, e, err);
                    worst[fast] = err > worst[fast] ? err : worst[fast];
                    int pad_ok = 1;
                    for (int m = 0; m < M; m++)
                        for (int n = N; n < ldc; n++)
                            pad_ok &= C[(size_t)m * ldc + n] == C0[(size_t)m * ldc + n];
                    CHECK(pad_ok, "amx/%d M=%d N=%d K=%d wrote past N", threads, M, N, K);
                    sd_packed_free(&P);
                    /* 16-bit panels */
                    for (int st = SD_WT_F16; st <= SD_WT_BF16 && e == EP_ALL; st++) {
                        round_to(wr, w, (size_t)K * N, st);
                        sd_packed P32, P16;
                        CHECK(pack_as(amx, wr, N, K, 1, 0, SD_WT_F32, &P32) &&
                                  pack_as(amx, wr, N, K, 1, 0, st, &P16),
                              "pack %s", sd_wtype_name(st));
                        CHECK(gemms_agree(&ex, &P32, &ex, &P16, M, A, lda, C0, C, C2, ldc, e, &ep),
                              "amx/%d %s panels M=%d N=%d K=%d", threads, sd_wtype_name(st), M, N,
                              K);
                        sd_packed_free(&P32);
                        sd_packed_free(&P16);
                    }
                }
                sd_free(A);
                sd_free(w);
                sd_free(Bkn);
                sd_free(wr);
                sd_free(bias);
                sd_free(res);
                sd_free(grp);
                sd_free(C0);
                sd_free(Cref);
                sd_free(C);
                sd_free(C2);
            }
    /* GEGLU, and the allocation fallback (no workspace memory: one row
     * tile and one panel at a time on one thread) */
    const int M = 290, F = 48, K = 330, N = 2 * F;
    float *A = falloc((size_t)M * K), *w = falloc((size_t)N * K), *Bkn = falloc((size_t)K * N);
    float *bias = falloc(N), *hg = falloc((size_t)M * N), *ref = falloc((size_t)M * F);
    float *y = falloc((size_t)M * F), *y0 = falloc((size_t)M * F);
    fill(A, (size_t)M * K, 3900, 1, 0);
    fill(w, (size_t)N * K, 3901, 0.1f, 0);
    fill(bias, N, 3902, 1, 0);
    for (int k = 0; k < K; k++)
        for (int n = 0; n < N; n++)
            Bkn[(size_t)k * N + n] = w[(size_t)n * K + k];
    sd_epilogue ep = {.bias = bias};
    sd_ref_gemm(M, N, K, A, K, Bkn, hg, N, &ep);
    sd_ref_geglu(hg, M, F, ref);
    for (int run = 0; run < 4; run++) {
        const int pi = run % 2, fast = run / 2;
        sd_workspace ws = {.limit = 0};
        sd_exec ex = {.pool = g_pools[pi], .kern = amx, .fast = fast, .ws = &ws};
        sd_packed Pg;
        CHECK(sd_pack_geglu(amx, w, F, K, &Pg) == SDUNET_OK, "pack_geglu");
        sd_gemm_geglu(&ex, M, A, K, &Pg, bias, y, F);
        double err = rel_l2_2d(y, F, ref, F, M, F);
        CHECK(err < (fast ? AMX5_BAR : BAR), "amx/%d fast=%d GEGLU: rel L2 %.3g",
              sd_pool_size(ex.pool), fast, err);
        worst[fast] = err > worst[fast] ? err : worst[fast];
        memcpy(y0, y, sizeof(float) * M * F);
        ws.limit = 64;
        sd_gemm_geglu(&ex, M, A, K, &Pg, bias, y, F);
        CHECK(same_bits(y, y0, (size_t)M * F), "amx/%d GEGLU, no scratch: differs",
              sd_pool_size(ex.pool));
        sd_packed_free(&Pg);
        sd_workspace_free(&ws);
    }
    sd_free(A);
    sd_free(w);
    sd_free(Bkn);
    sd_free(bias);
    sd_free(hg);
    sd_free(ref);
    sd_free(y);
    sd_free(y0);
    printf("# amx GEMM: worst rel L2 %.3g (exact mode), %.3g (fast mode)\n", worst[0], worst[1]);
    test_amx_specials(amx, avx512);
}

static void test_upsample(void)
{
    static const int cfg[][4] = {
        {4, 6, 8, 12}, {5, 7, 9, 13}, {7, 4, 13, 7}, {1, 1, 2, 2}, {3, 3, 3, 3}};
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        int batch = 2, H = cfg[c][0], W = cfg[c][1], Ho = cfg[c][2], Wo = cfg[c][3], C = 5;
        size_t nin = (size_t)batch * H * W * C, nout = (size_t)batch * Ho * Wo * C;
        float *x = falloc(nin), *y = falloc(nout), *ref = falloc(nout);
        fill(x, nin, 700 + c, 1, 0);
        sd_ref_upsample_nearest(x, batch, H, W, C, Ho, Wo, ref);
        FOR_EACH_EXEC(ex)
        {
            sd_upsample_nearest(&ex, x, batch, H, W, C, Ho, Wo, y);
            CHECK(memcmp(y, ref, sizeof(float) * nout) == 0, "%s/%d upsample %dx%d -> %dx%d",
                  WHERE(ex), H, W, Ho, Wo);
        }
        sd_free(x);
        sd_free(y);
        sd_free(ref);
    }
    /* PyTorch computes the source index in float: 2 -> 82, dst 41 reads
     * source 0 (41 * (2/82.f) = 0.99999994), not the rational floor 1. */
    float x[2] = {1, 2}, y[82];
    sd_exec ex = {.pool = NULL, .kern = sd_kernels_select("portable"), .ws = NULL};
    sd_upsample_nearest(&ex, x, 1, 1, 2, 1, 1, 82, y);
    CHECK(y[40] == 1 && y[41] == 1 && y[42] == 2, "pytorch float rule %g %g %g", y[40], y[41],
          y[42]);
}

/* Zero-sized calls must be no-ops. */
static void test_empty(void)
{
    float dummy[4] = {1, 2, 3, 4};
    FOR_EACH_EXEC(ex)
    {
        sd_packed P;
        float w[3] = {1, 2, 3};
        CHECK(sd_pack(ex.kern, w, 3, 1, 1, &P) == SDUNET_OK, "pack");
        sd_gemm(&ex, 0, dummy, 1, &P, dummy, 3, NULL);
        sd_groupnorm(&ex, dummy, 0, 4, 32, 32, 1e-5f, dummy, dummy, 1, dummy);
        sd_groupnorm(&ex, dummy, 1, 0, 32, 32, 1e-5f, dummy, dummy, 1, dummy);
        sd_layernorm(&ex, dummy, 0, 4, 1e-5f, dummy, dummy, dummy);
        sd_geglu(&ex, dummy, 0, 2, dummy);
        sd_attention(&ex, 1, 1, 4, 0, 3, dummy, 4, dummy, 4, dummy, 4, dummy, 4, 1.0f);
        sd_attention(&ex, 0, 1, 4, 1, 1, dummy, 4, dummy, 4, dummy, 4, dummy, 4, 1.0f);
        sd_upsample_nearest(&ex, dummy, 0, 1, 1, 1, 2, 2, dummy);
        sd_conv3x3(&ex, dummy, 0, 3, 3, 1, 1, &P, dummy, NULL);
        sd_packed_free(&P);
    }
    CHECK(dummy[0] == 1 && dummy[1] == 2 && dummy[2] == 3 && dummy[3] == 4, "touched");
    sd_packed_free(NULL);
}

int main(void)
{
    g_sets[g_nsets++] = sd_kernels_select("portable");
    const sd_kernels *avx2 = sd_kernels_select("avx2"), *avx512 = sd_kernels_select("avx512");
    if (avx2)
        g_sets[g_nsets++] = avx2;
    if (avx512)
        g_sets[g_nsets++] = avx512;
    const sd_kernels *amx = sd_kernels_select("amx"); /* AVX-512 with the AMX GEMM */
    if (amx)
        g_sets[g_nsets++] = amx;
    printf("# kernel sets: portable%s%s%s\n", avx2 ? ", avx2" : "", avx512 ? ", avx512" : "",
           amx ? ", amx" : "");
    for (int i = 0; i < 2; i++)
        if (sd_pool_create(g_pool_threads[i], &g_pools[i], NULL) != SDUNET_OK) {
            printf("FAIL - pool_create\n");
            return 1;
        }
    RUN(test_ref_hand);
    RUN(test_pack_layout);
    RUN(test_gemm_shapes);
    RUN(test_gemm_epilogues);
    RUN(test_gemm_large);
    RUN(test_conv);
    RUN(test_conv_winograd4);
    RUN(test_conv_winograd_chunks);
    RUN(test_conv_winograd_owned);
    RUN(test_groupnorm);
    RUN(test_concat_inputs);
    RUN(test_layernorm);
    RUN(test_attention);
    RUN(test_attention_causal);
    RUN(test_attn_tile);
    RUN(test_attn_pv);
    RUN(test_gelu);
    RUN(test_gelu_mul_rows);
    RUN(test_silu_geglu);
    RUN(test_gemm_geglu);
    RUN(test_alloc_fallbacks);
    RUN(test_kernel_faults);
    RUN(test_widen);
    RUN(test_pack_types);
    RUN(test_special_weights);
    RUN(test_norm_rows);
    RUN(test_isa_elementwise_agree);
    RUN(test_micro2);
    RUN(test_gemm_amx);
    RUN(test_upsample);
    RUN(test_empty);
    for (int i = 0; i < 2; i++)
        sd_pool_destroy(g_pools[i]);
    return t_summary();
}
