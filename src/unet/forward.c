/* The forward pass. Activations are channels-last (B, H, W, C) row-major
 * matrices of B*H*W tokens. Memory comes from a plan made by a dry run of
 * this same code (kernels skipped, allocations only counted), so the real
 * run never allocates:
 *   - skip region: every tensor the down path pushes lives here until the
 *     up path consumes it (the down path writes its hidden states straight
 *     into their skip slots, so pushing is free);
 *   - two hidden buffers for the mid and up paths (ping-pong);
 *   - a scratch stack for temporaries inside one layer, reset after it. */
#include "unet/unet.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define SKIP_MAX (3 * SD_MAX_BLOCKS * (SD_MAX_LAYERS + 2))

typedef struct run {
    const sd_unet *u;
    const sd_exec *ex;
    int dry;
    int B, L;
    int share_rows; /* every row of x and t is the same: start with Bc = 1 */
    /* Rows the ops compute: B, or 1 while every row is known to be the same
     * (see share_end). Buffers are always sized for B rows. */
    int Bc;
    struct {
        float *p;
        size_t row;     /* floats per batch row */
    } shared[SKIP_MAX]; /* skip tensors written while Bc < B */
    int n_shared;
    sd_plan *plan;
    sd_arena skip, scratch; /* regions of the plan (base NULL in the dry run) */
    size_t hidden_need;
    sd_event_fn ev;
    void *ev_user;
    sd_prof *prof;         /* NULL: no timing */
    const float *temb_act; /* SiLU(time embedding), (B, time_embed_dim) */
    const float *context;  /* (B, L, D) */
} run;

typedef struct tensor {
    float *p;
    int H, W, C;
} tensor;

/* ---- memory ---- */

/* Copies row 0 of an (B, rows) tensor of `row` floats a row into rows 1..B-1. */
static void widen(const run *r, float *p, size_t row)
{
    for (int b = 1; b < r->B; b++)
        memcpy(p + (size_t)b * row, p, sizeof(float) * row);
}

/* Ends the shared prefix. Classifier-free guidance runs one latent and one
 * timestep as every row of the batch, with a different context per row:
 * until the first layer that reads the context, every row's activations are
 * the same, so the ops compute row 0 alone (Bc = 1) and here, before the
 * first cross-attention or at the end of the encoder, row 0 of every tensor
 * still to be read is copied to the other rows. The skip tensors written so
 * far are listed by skip_alloc; `extra` (rows of `extra_row` floats) is the
 * caller's live tensor outside the skip region, if any. Row 0 is computed
 * as a batch of one computes it, which agrees with the whole batch's row 0
 * to rounding (bit for bit on SD1.5: sd15-64 as a guidance batch compared
 * with cmp). */
static void share_end(run *r, float *extra, size_t extra_row)
{
    if (r->Bc == r->B)
        return;
    if (!r->dry) {
        for (int i = 0; i < r->n_shared; i++)
            widen(r, r->shared[i].p, r->shared[i].row);
        if (extra)
            widen(r, extra, extra_row);
    }
    r->Bc = r->B;
}

static float *skip_alloc(run *r, size_t n)
{
    float *p = sd_arena_alloc(&r->skip, n);
    if (r->Bc < r->B && r->n_shared == SKIP_MAX)
        share_end(r, NULL, 0); /* cannot happen with SD_MAX_LAYERS; stay correct */
    if (r->Bc < r->B) {
        r->shared[r->n_shared].p = p;
        r->shared[r->n_shared++].row = n / (size_t)r->B;
    }
    return p;
}

static float *scratch_alloc(run *r, size_t n)
{
    return sd_arena_alloc(&r->scratch, n);
}

static float *hidden(run *r, int which, size_t n)
{
    if (n > r->hidden_need)
        r->hidden_need = n;
    return r->dry ? NULL : r->plan->hidden[which];
}

/* ---- events ---- */

static void emit_tensor(run *r, const char *name, const tensor *t)
{
    if (!r->ev)
        return;
    sd_event e = {.kind = SD_EV_TENSOR,
                  .name = name,
                  .data = r->dry ? NULL : t->p,
                  .B = r->B,
                  .H = t->H,
                  .W = t->W,
                  .C = t->C};
    r->ev(r->ev_user, &e);
}

static void emit_block(run *r, const char *name, const tensor *in, const tensor *out)
{
    if (!r->ev)
        return;
    sd_event e = {.kind = SD_EV_BLOCK,
                  .name = name,
                  .B = r->B,
                  .H = out->H,
                  .W = out->W,
                  .C = out->C,
                  .in_B = r->B,
                  .in_H = in->H,
                  .in_W = in->W,
                  .in_C = in->C};
    r->ev(r->ev_user, &e);
}

static void emit_skip(run *r, sd_event_kind kind, int index, const char *name, const tensor *t)
{
    if (!r->ev)
        return;
    sd_event e = {.kind = kind,
                  .name = name,
                  .B = r->B,
                  .H = t->H,
                  .W = t->W,
                  .C = t->C,
                  .skip_index = index};
    r->ev(r->ev_user, &e);
}

/* ---- layers ---- */

static size_t numel(const run *r, int H, int W, int C)
{
    return (size_t)r->B * (size_t)H * (size_t)W * (size_t)C;
}

/* ---- timed ops (engine/layers.h keeps the profile) ---- */

static double tick(const run *r)
{
    return sd_tick(r->prof);
}

static void tock(run *r, sd_op_kind kind, double t0, double flops)
{
    sd_tock(r->prof, kind, t0, flops);
}

/* tock for a GEMM of M rows through layer l (GEGLU: its N outputs are
 * gated into N / 2). */
static void tock_gemm(run *r, sd_op_kind kind, double t0, int M, const sd_lin *l, int geglu)
{
    sd_shape s = {geglu ? SD_SHAPE_GEGLU : SD_SHAPE_GEMM, {M, geglu ? l->w.N / 2 : l->w.N, l->w.K}};
    sd_tock_shape(r->prof, kind, t0, 2.0 * M * l->w.N * l->w.K, s);
}

static void gemm_op(run *r, sd_op_kind kind, int M, const float *A, int lda, const sd_lin *l,
                    float *C, int ldc, const sd_epilogue *ep)
{
    sd_linear_op(r->ex, r->prof, kind, M, A, lda, l, C, ldc, ep);
}

static void conv_op(run *r, const float *in, int H, int W, int Cin, int stride, const sd_lin *l,
                    float *out, const sd_epilogue *ep)
{
    sd_conv3x3_op(r->ex, r->prof, in, r->Bc, H, W, Cin, stride, l, out, ep);
}

static void attn_op(run *r, int heads, int dh, int Nq, int Nk, const float *q, int ldq,
                    const float *k, int ldk, const float *v, int ldv, float *o, int ldo,
                    float scale)
{
    sd_attention_op(r->ex, r->prof, r->Bc, heads, dh, Nq, Nk, q, ldq, k, ldk, v, ldv, o, ldo,
                    scale);
}

/* ResnetBlock2D: out = shortcut(x) + conv2(SiLU(GN(conv1(SiLU(GN(x))) + temb_proj))).
 * With x2 (the decoder's skip tensor), x is the channel concatenation
 * [x | x2], never formed: only the first norm and the shortcut read it, and
 * both take the two parts (a resnet without a shortcut gets one tensor). */
static void resnet_fwd(run *r, const sd_resnet *res, const tensor *x, const tensor *x2, float *out)
{
    const sd_unet_config *c = &r->u->cfg;
    const int HW = x->H * x->W, M = r->Bc * HW, C1 = x->C, C2 = x2 ? x2->C : 0;
    size_t mark = r->scratch.used;
    float *t0_buf = scratch_alloc(r, numel(r, x->H, x->W, res->cin));
    float *h = scratch_alloc(r, numel(r, x->H, x->W, res->cout));
    float *tp = scratch_alloc(r, (size_t)r->B * res->cout);
    float *sc = res->has_shortcut ? scratch_alloc(r, numel(r, x->H, x->W, res->cout)) : NULL;
    if (!r->dry) {
        const sd_exec *ex = r->ex;
        double t0 = tick(r);
        sd_groupnorm_cat(ex, x->p, C1, x2 ? x2->p : NULL, C2, r->Bc, HW, c->norm_num_groups,
                         c->norm_eps, res->norm1.gamma, res->norm1.beta, 1, t0_buf);
        tock(r, SD_OP_NORM, t0, 0);
        sd_epilogue ep_t = {.bias = res->temb.b};
        gemm_op(r, SD_OP_LINEAR, r->Bc, r->temb_act, c->time_embed_dim, &res->temb, tp, res->cout,
                &ep_t);
        sd_epilogue ep1 = {.bias = res->conv1.b, .group_add = tp, .group_rows = HW};
        conv_op(r, t0_buf, x->H, x->W, res->cin, 1, &res->conv1, h, &ep1);
        t0 = tick(r);
        sd_groupnorm(ex, h, r->Bc, HW, res->cout, c->norm_num_groups, c->norm_eps, res->norm2.gamma,
                     res->norm2.beta, 1, h);
        tock(r, SD_OP_NORM, t0, 0);
        const float *resid = x->p;
        if (res->has_shortcut) {
            sd_epilogue ep_s = {.bias = res->shortcut.b};
            t0 = tick(r);
            sd_gemm_cat(ex, M, x->p, C1, x2 ? x2->p : NULL, C2, &res->shortcut.w, sc, res->cout,
                        &ep_s);
            tock_gemm(r, SD_OP_CONV1, t0, M, &res->shortcut, 0);
            resid = sc;
        }
        sd_epilogue ep2 = {.bias = res->conv2.b, .residual = resid, .ld_res = res->cout};
        conv_op(r, h, x->H, x->W, res->cout, 1, &res->conv2, out, &ep2);
    }
    r->scratch.used = mark;
}

/* Transformer2DModel with one BasicTransformerBlock, in place on x. */
static void xformer_fwd(run *r, const sd_xformer *xf, tensor *x)
{
    const sd_unet_config *c = &r->u->cfg;
    const int C = xf->C, HW = x->H * x->W, L = r->L;
    const size_t Mall = (size_t)r->B * HW; /* buffers hold every row */
    int M = r->Bc * HW;                    /* rows computed (all after share_end) */
    const int D = c->cross_attention_dim, dh = C / xf->heads;
    const float scale = (float)(1.0 / sqrt((double)dh));
    size_t mark = r->scratch.used;
    float *t0 = scratch_alloc(r, Mall * C);
    float *h = scratch_alloc(r, Mall * C);
    /* qkv (3C), then the GEGLU projection (8C) unless it is fused: as the
     * weights were packed, or without weights (sdunet trace) as the loader
     * packs them for 16-wide panels (every kernel set's nr). Fused, the
     * gated output (4C) takes the qkv buffer, free by then. */
    const int fused = xf->ff1.w.data ? xf->ff1.w.geglu_F != 0 : sd_geglu_packable(4 * C, 16);
    float *big = scratch_alloc(r, Mall * (fused ? 4 : 8) * C);
    float *gate = fused ? big : scratch_alloc(r, Mall * 4 * C);
    float *kv = scratch_alloc(r, (size_t)r->B * L * 2 * C);
    if (!r->dry) {
        const sd_exec *ex = r->ex;
        const sd_op_kind proj = c->use_linear_projection ? SD_OP_LINEAR : SD_OP_CONV1;
        double tn = tick(r);
        sd_groupnorm(ex, x->p, r->Bc, HW, C, c->norm_num_groups, 1e-6f, xf->norm.gamma,
                     xf->norm.beta, 0, t0);
        tock(r, SD_OP_NORM, tn, 0);
        sd_epilogue ep = {.bias = xf->proj_in.b};
        gemm_op(r, proj, M, t0, C, &xf->proj_in, h, C, &ep);

        /* self-attention */
        tn = tick(r);
        sd_layernorm(ex, h, M, C, 1e-5f, xf->ln1.gamma, xf->ln1.beta, t0);
        tock(r, SD_OP_NORM, tn, 0);
        sd_epilogue none = {0};
        gemm_op(r, SD_OP_LINEAR, M, t0, C, &xf->qkv, big, 3 * C, &none);
        attn_op(r, xf->heads, dh, HW, HW, big, 3 * C, big + C, 3 * C, big + 2 * C, 3 * C, t0, C,
                scale);
        sd_epilogue ep_o1 = {.bias = xf->out1.b, .residual = h, .ld_res = C};
        gemm_op(r, SD_OP_LINEAR, M, t0, C, &xf->out1, h, C, &ep_o1);

        /* cross-attention on the context: the rows part here */
        share_end(r, h, (size_t)HW * C);
        M = r->B * HW;
        tn = tick(r);
        sd_layernorm(ex, h, M, C, 1e-5f, xf->ln2.gamma, xf->ln2.beta, t0);
        tock(r, SD_OP_NORM, tn, 0);
        gemm_op(r, SD_OP_LINEAR, M, t0, C, &xf->q2, big, C, &none);
        gemm_op(r, SD_OP_LINEAR, r->B * L, r->context, D, &xf->kv2, kv, 2 * C, &none);
        attn_op(r, xf->heads, dh, HW, L, big, C, kv, 2 * C, kv + C, 2 * C, t0, C, scale);
        sd_epilogue ep_o2 = {.bias = xf->out2.b, .residual = h, .ld_res = C};
        gemm_op(r, SD_OP_LINEAR, M, t0, C, &xf->out2, h, C, &ep_o2);

        /* GEGLU feed-forward */
        tn = tick(r);
        sd_layernorm(ex, h, M, C, 1e-5f, xf->ln3.gamma, xf->ln3.beta, t0);
        tock(r, SD_OP_NORM, tn, 0);
        if (fused) { /* projection and GELU gating in one pass */
            tn = tick(r);
            sd_gemm_geglu(ex, M, t0, C, &xf->ff1.w, xf->ff1.b, gate, 4 * C);
            tock_gemm(r, SD_OP_LINEAR, tn, M, &xf->ff1, 1);
        } else {
            sd_epilogue ep_f1 = {.bias = xf->ff1.b};
            gemm_op(r, SD_OP_LINEAR, M, t0, C, &xf->ff1, big, 8 * C, &ep_f1);
            tn = tick(r);
            sd_geglu(ex, big, M, 4 * C, gate);
            tock(r, SD_OP_NORM, tn, 0);
        }
        sd_epilogue ep_f2 = {.bias = xf->ff2.b, .residual = h, .ld_res = C};
        gemm_op(r, SD_OP_LINEAR, M, gate, 4 * C, &xf->ff2, h, C, &ep_f2);

        sd_epilogue ep_po = {.bias = xf->proj_out.b, .residual = x->p, .ld_res = C};
        gemm_op(r, proj, M, h, C, &xf->proj_out, x->p, C, &ep_po);
    }
    r->scratch.used = mark;
}

static void conv3x3_fwd(run *r, const sd_lin *conv, const tensor *x, int stride, float *out)
{
    if (r->dry)
        return;
    sd_epilogue ep = {.bias = conv->b};
    conv_op(r, x->p, x->H, x->W, x->C, stride, conv, out, &ep);
}

/* ---- the graph ---- */

void sd_timestep_embedding(float t, int dim, int flip_sin_to_cos, int freq_shift, float *out)
{
    /* diffusers' get_timestep_embedding computes in float32 even for a
     * float64 model: exponent = (-ln(10000) * i) / (half - shift), then exp,
     * then t * freq, each rounded to float32. */
    int half = dim / 2;
    const float neg_log = (float)-9.210340371976184; /* -ln(10000) */
    for (int i = 0; i < half; i++) {
        float e = neg_log * (float)i;
        e = e / (float)(half - freq_shift);
        float f = (float)exp((double)e);
        float arg = t * f;
        float s = (float)sin((double)arg), co = (float)cos((double)arg);
        out[i] = flip_sin_to_cos ? co : s;
        out[half + i] = flip_sin_to_cos ? s : co;
    }
    if (dim % 2)
        out[dim - 1] = 0.0f;
}

typedef struct skip_stack {
    tensor items[SKIP_MAX];
    int n;
} skip_stack;

static void run_graph(run *r, const float *x_in, const float *t, float *y_out)
{
    const sd_unet *u = r->u;
    const sd_unet_config *c = &u->cfg;
    const sd_exec *ex = r->ex;
    const int B = r->B, nb = c->n_blocks, ch0 = c->block_out_channels[0];
    const int tdim = c->time_embed_dim;
    const int H0 = r->plan->H, W0 = r->plan->W;
    char name[64];

    /* time embedding -> SiLU(temb), shared by every resnet */
    float *tproj = skip_alloc(r, (size_t)B * ch0);
    float *temb = skip_alloc(r, (size_t)B * tdim);
    float *temb_act = skip_alloc(r, (size_t)B * tdim);
    float *tmid = skip_alloc(r, (size_t)B * tdim);
    if (!r->dry) {
        for (int b = 0; b < B; b++)
            sd_timestep_embedding(t[b], ch0, c->flip_sin_to_cos, c->freq_shift, tproj + b * ch0);
        sd_epilogue e1 = {.bias = u->time1.b};
        gemm_op(r, SD_OP_LINEAR, B, tproj, ch0, &u->time1, tmid, tdim, &e1);
        sd_silu(ex, tmid, tmid, (size_t)B * tdim);
        sd_epilogue e2 = {.bias = u->time2.b};
        gemm_op(r, SD_OP_LINEAR, B, tmid, tdim, &u->time2, temb, tdim, &e2);
        sd_silu(ex, temb, temb_act, (size_t)B * tdim);
    }
    r->temb_act = temb_act;
    if (r->share_rows)
        r->Bc = 1;
    tensor tt = {tproj, 1, 1, ch0};
    emit_tensor(r, "time_proj", &tt);
    tt = (tensor){temb, 1, 1, tdim};
    emit_tensor(r, "time_embedding", &tt);

    /* conv_in */
    skip_stack st = {.n = 0};
    tensor in = {(float *)x_in, H0, W0, c->in_channels};
    tensor h = {skip_alloc(r, numel(r, H0, W0, ch0)), H0, W0, ch0};
    conv3x3_fwd(r, &u->conv_in, &in, 1, h.p);
    emit_tensor(r, "conv_in", &h);
    emit_block(r, "conv_in", &in, &h);
    st.items[st.n] = h;
    emit_skip(r, SD_EV_PUSH, st.n++, "conv_in", &h);

    /* encoder */
    for (int i = 0; i < nb; i++) {
        const sd_block *blk = &u->down[i];
        tensor block_in = h;
        int pushed = 0;
        for (int j = 0; j < blk->n_layers; j++) {
            const sd_resnet *res = &blk->res[j];
            tensor o = {skip_alloc(r, numel(r, h.H, h.W, res->cout)), h.H, h.W, res->cout};
            resnet_fwd(r, res, &h, NULL, o.p);
            if (blk->has_attn)
                xformer_fwd(r, &blk->attn[j], &o);
            h = o;
            snprintf(name, sizeof name, "down%d_res%d", i, pushed++);
            emit_tensor(r, name, &h);
            snprintf(name, sizeof name, "down_blocks.%d.%s.%d", i,
                     blk->has_attn ? "attentions" : "resnets", j);
            st.items[st.n] = h;
            emit_skip(r, SD_EV_PUSH, st.n++, name, &h);
        }
        if (blk->has_sample) {
            int Ho = (h.H - 1) / 2 + 1, Wo = (h.W - 1) / 2 + 1;
            tensor o = {skip_alloc(r, numel(r, Ho, Wo, h.C)), Ho, Wo, h.C};
            conv3x3_fwd(r, &blk->sample_conv, &h, 2, o.p);
            h = o;
            snprintf(name, sizeof name, "down%d_res%d", i, pushed++);
            emit_tensor(r, name, &h);
            snprintf(name, sizeof name, "down_blocks.%d.downsamplers.0", i);
            st.items[st.n] = h;
            emit_skip(r, SD_EV_PUSH, st.n++, name, &h);
        }
        snprintf(name, sizeof name, "down%d_hidden", i);
        emit_tensor(r, name, &h);
        snprintf(name, sizeof name, "down_blocks.%d", i);
        emit_block(r, name, &block_in, &h);
    }

    share_end(r, NULL, 0); /* no cross-attention in the encoder */

    /* mid block: resnet, transformer, resnet */
    {
        tensor block_in = h;
        int top = c->block_out_channels[nb - 1];
        tensor a = {hidden(r, 0, numel(r, h.H, h.W, top)), h.H, h.W, top};
        resnet_fwd(r, &u->mid_res[0], &h, NULL, a.p);
        xformer_fwd(r, &u->mid_attn, &a);
        tensor b2 = {hidden(r, 1, numel(r, h.H, h.W, top)), h.H, h.W, top};
        resnet_fwd(r, &u->mid_res[1], &a, NULL, b2.p);
        h = b2;
        emit_tensor(r, "mid", &h);
        emit_block(r, "mid_block", &block_in, &h);
    }
    int cur = 1; /* which hidden buffer holds h */

    /* decoder */
    for (int i = 0; i < nb; i++) {
        const sd_block *blk = &u->up[i];
        tensor block_in = h;
        for (int j = 0; j < blk->n_layers; j++) {
            const sd_resnet *res = &blk->res[j];
            tensor skip = st.items[--st.n];
            snprintf(name, sizeof name, "up_blocks.%d.resnets.%d", i, j);
            emit_skip(r, SD_EV_POP, st.n, name, &skip);
            /* cat([h, skip], channels) is read in place by the resnet;
             * only one without a shortcut (its residual is the whole
             * input) needs it as one (H, W, Ch + Cs) tensor. */
            size_t mark = r->scratch.used;
            tensor o = {hidden(r, cur ^ 1, numel(r, h.H, h.W, res->cout)), h.H, h.W, res->cout};
            if (res->has_shortcut) {
                resnet_fwd(r, res, &h, &skip, o.p);
            } else {
                tensor cat = {scratch_alloc(r, numel(r, h.H, h.W, h.C + skip.C)), h.H, h.W,
                              h.C + skip.C};
                if (!r->dry) {
                    double t0 = tick(r);
                    size_t rows = (size_t)B * h.H * h.W;
                    for (size_t m = 0; m < rows; m++) {
                        memcpy(cat.p + m * cat.C, h.p + m * h.C, sizeof(float) * h.C);
                        memcpy(cat.p + m * cat.C + h.C, skip.p + m * skip.C,
                               sizeof(float) * skip.C);
                    }
                    tock(r, SD_OP_NORM, t0, 0);
                }
                resnet_fwd(r, res, &cat, NULL, o.p);
            }
            r->scratch.used = mark;
            cur ^= 1;
            if (blk->has_attn)
                xformer_fwd(r, &blk->attn[j], &o);
            h = o;
        }
        if (blk->has_sample) {
            /* Nearest 2x, or the size of the next skip when the latent size
             * is not a multiple of 2^(levels) (diffusers' upsample_size). */
            const tensor *next = &st.items[st.n - 1];
            int Ho = next->H, Wo = next->W;
            size_t mark = r->scratch.used;
            tensor up = {scratch_alloc(r, numel(r, Ho, Wo, h.C)), Ho, Wo, h.C};
            if (!r->dry) {
                double t0 = tick(r);
                sd_upsample_nearest(ex, h.p, B, h.H, h.W, h.C, Ho, Wo, up.p);
                tock(r, SD_OP_NORM, t0, 0);
            }
            tensor o = {hidden(r, cur ^ 1, numel(r, Ho, Wo, h.C)), Ho, Wo, h.C};
            conv3x3_fwd(r, &blk->sample_conv, &up, 1, o.p);
            r->scratch.used = mark;
            cur ^= 1;
            h = o;
        }
        snprintf(name, sizeof name, "up%d", i);
        emit_tensor(r, name, &h);
        snprintf(name, sizeof name, "up_blocks.%d", i);
        emit_block(r, name, &block_in, &h);
    }

    /* output head: GroupNorm, SiLU, conv_out */
    {
        tensor block_in = h;
        size_t mark = r->scratch.used;
        tensor n = {scratch_alloc(r, numel(r, h.H, h.W, h.C)), h.H, h.W, h.C};
        if (!r->dry) {
            double t0 = tick(r);
            sd_groupnorm(ex, h.p, B, h.H * h.W, h.C, c->norm_num_groups, c->norm_eps,
                         u->norm_out.gamma, u->norm_out.beta, 0, n.p);
            tock(r, SD_OP_NORM, t0, 0);
        }
        emit_tensor(r, "conv_norm_out", &n);
        if (!r->dry)
            sd_silu(ex, n.p, n.p, numel(r, h.H, h.W, h.C));
        tensor o = {y_out, h.H, h.W, c->out_channels};
        conv3x3_fwd(r, &u->conv_out, &n, 1, o.p);
        r->scratch.used = mark;
        emit_tensor(r, "conv_out", &o);
        emit_block(r, "conv_norm_out+conv_out", &block_in, &o);
    }
}

void sd_unet_plan(const sd_unet *u, int B, int H, int W, int L, sd_plan *plan, sd_event_fn ev,
                  void *ev_user)
{
    memset(plan, 0, sizeof *plan);
    plan->B = B;
    plan->H = H;
    plan->W = W;
    plan->L = L;
    run r = {.u = u, .dry = 1, .B = B, .Bc = B, .L = L, .plan = plan, .ev = ev, .ev_user = ev_user};
    run_graph(&r, NULL, NULL, NULL);
    plan->skip_floats = r.skip.peak;
    plan->hidden_floats = (r.hidden_need + 15) & ~(size_t)15;
    plan->scratch_floats = r.scratch.peak;
}

sdunet_status sd_plan_alloc(sd_plan *plan, sdunet_error *err)
{
    size_t total = plan->skip_floats + 2 * plan->hidden_floats + plan->scratch_floats, bytes;
    if (!sd_mul_size(total, sizeof(float), &bytes) || !(plan->mem = sd_alloc(bytes)))
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory: activations need %.1f MiB",
                       (double)total * 4 / 1048576.0);
    plan->skip = plan->mem;
    plan->hidden[0] = plan->skip + plan->skip_floats;
    plan->hidden[1] = plan->hidden[0] + plan->hidden_floats;
    plan->scratch = plan->hidden[1] + plan->hidden_floats;
    return SDUNET_OK;
}

void sd_plan_free(sd_plan *plan)
{
    if (!plan)
        return;
    sd_free(plan->mem);
    plan->mem = plan->skip = plan->hidden[0] = plan->hidden[1] = plan->scratch = NULL;
}

/* Whether every row of x (B rows of H*W*C floats) and of t is the same, bit
 * for bit. Not with events: they report every row of every tensor. */
static int rows_alike(const sd_plan *plan, int C, const float *x, const float *t, int ev)
{
    const size_t row = (size_t)plan->H * plan->W * C;
    if (ev || plan->B < 2)
        return 0;
    for (int b = 1; b < plan->B; b++)
        if (memcmp(t + b, t, sizeof *t) || memcmp(x + b * row, x, sizeof *x * row))
            return 0;
    return 1;
}

void sd_unet_forward(const sd_unet *u, const sd_exec *ex, sd_plan *plan, const float *x,
                     const float *t, const float *context, float *out, sd_event_fn ev,
                     void *ev_user, sd_prof *prof)
{
    run r = {.u = u,
             .ex = ex,
             .dry = 0,
             .B = plan->B,
             .Bc = plan->B,
             .share_rows = rows_alike(plan, u->cfg.in_channels, x, t, ev != NULL),
             .L = plan->L,
             .plan = plan,
             .skip = {.base = plan->skip},
             .scratch = {.base = plan->scratch},
             .ev = ev,
             .ev_user = ev_user,
             .prof = prof,
             .context = context};
    run_graph(&r, x, t, out);
}
