/* The VAE's encoder and decoder graphs. Activations are channels-last
 * (B, H, W, C) matrices of B*H*W rows. Memory comes from a plan made by a
 * dry run of this same code (kernels skipped, sizes only counted), so the
 * real run never allocates:
 *   - two hidden buffers (ping-pong) holding the tensor between layers,
 *     each as large as the largest activation; the one not holding the
 *     current tensor also takes a layer's first temporary (a resnet's
 *     normalised input, the upsampled tensor, the head's normalised
 *     tensor) while the layer's output is not yet written;
 *   - a scratch stack for the other temporaries inside one layer, reset
 *     after it (a resnet's conv1 output, attention's q/k/v).
 * Peak: 2.5 times the largest activation for SD at 512x512 (two hidden
 * buffers of 256 channels and a 128-channel conv1 output at full size). */
#include "vae/vae.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct run {
    const sd_vae *v;
    const sd_exec *ex;
    int dry, B;
    sd_vae_plan *plan;
    sd_arena scratch;
    size_t hidden_need;
    sd_vae_trace_fn tr;
    void *tr_user;
    sd_prof *prof;
} run;

typedef struct tensor {
    float *p;
    int H, W, C;
} tensor;

#define VAE_EPS 1e-6f /* every GroupNorm of the VAE */

static size_t numel(const run *r, int H, int W, int C)
{
    return (size_t)r->B * (size_t)H * (size_t)W * (size_t)C;
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

static void trace(run *r, const char *name, const tensor *t)
{
    if (r->tr)
        r->tr(r->tr_user, name, r->dry ? NULL : t->p, r->B, t->H, t->W, t->C);
}

static void conv3(run *r, const float *in, int H, int W, int Cin, const sd_lin *l, float *out,
                  const sd_epilogue *ep)
{
    sd_conv3x3_op(r->ex, r->prof, in, r->B, H, W, Cin, 1, l, out, ep);
}

static void norm(run *r, const float *x, int HW, int C, const sd_norm *n, int silu, float *y)
{
    double t0 = sd_tick(r->prof);
    sd_groupnorm(r->ex, x, r->B, HW, C, r->v->cfg.norm_num_groups, VAE_EPS, n->gamma, n->beta, silu,
                 y);
    sd_tock(r->prof, SD_OP_NORM, t0, 0);
}

/* ResnetBlock2D without a time embedding, from x into hidden buffer
 * `which` (not x's): out = shortcut(x) + conv2(SiLU(GN(conv1(SiLU(GN(x)))))).
 * The normalised input GN(x) lives in the output buffer until conv1 has
 * read it; only conv1's output takes scratch. */
static tensor resnet_fwd(run *r, const sd_vae_resnet *res, const tensor *x, int which)
{
    const int HW = x->H * x->W, M = r->B * HW;
    const int wide = res->cin > res->cout ? res->cin : res->cout;
    float *out = hidden(r, which, numel(r, x->H, x->W, wide));
    tensor o = {out, x->H, x->W, res->cout};
    size_t mark = r->scratch.used;
    float *t0 = out;
    float *h = scratch_alloc(r, numel(r, x->H, x->W, res->cout));
    if (!r->dry) {
        norm(r, x->p, HW, res->cin, &res->norm1, 1, t0);
        sd_epilogue ep1 = {.bias = res->conv1.b};
        conv3(r, t0, x->H, x->W, res->cin, &res->conv1, h, &ep1);
        norm(r, h, HW, res->cout, &res->norm2, 1, h);
        const float *resid = x->p;
        if (res->has_shortcut) {
            /* the shortcut goes straight into out; conv2 adds onto it */
            sd_epilogue ep_s = {.bias = res->shortcut.b};
            sd_linear_op(r->ex, r->prof, SD_OP_CONV1, M, x->p, res->cin, &res->shortcut, out,
                         res->cout, &ep_s);
            resid = out;
        }
        sd_epilogue ep2 = {.bias = res->conv2.b, .residual = resid, .ld_res = res->cout};
        conv3(r, h, x->H, x->W, res->cout, &res->conv2, out, &ep2);
    }
    r->scratch.used = mark;
    return o;
}

/* The mid block's single-head self-attention over all pixels, in place:
 * x += to_out(softmax(q k^T / sqrt(C)) v), q, k, v = to_q/k/v(GN(x)). */
static void attn_fwd(run *r, const sd_vae_attn *a, tensor *x)
{
    const int C = a->C, HW = x->H * x->W, M = r->B * HW;
    size_t mark = r->scratch.used;
    float *t0 = scratch_alloc(r, (size_t)M * C);
    float *qkv = scratch_alloc(r, (size_t)M * 3 * C);
    if (!r->dry) {
        norm(r, x->p, HW, C, &a->norm, 0, t0);
        sd_epilogue ep = {.bias = a->qkv.b};
        sd_linear_op(r->ex, r->prof, SD_OP_LINEAR, M, t0, C, &a->qkv, qkv, 3 * C, &ep);
        const float scale = (float)(1.0 / sqrt((double)C));
        sd_attention_op(r->ex, r->prof, r->B, 1, C, HW, HW, qkv, 3 * C, qkv + C, 3 * C, qkv + 2 * C,
                        3 * C, t0, C, scale);
        sd_epilogue ep_o = {.bias = a->out.b, .residual = x->p, .ld_res = C};
        sd_linear_op(r->ex, r->prof, SD_OP_LINEAR, M, t0, C, &a->out, x->p, C, &ep_o);
    }
    r->scratch.used = mark;
}

/* UNetMidBlock2D: resnet, attention, resnet; h moves between the hidden
 * buffers (*cur says which holds it). */
static void mid_fwd(run *r, const sd_vae_coder *c, tensor *h, int *cur)
{
    tensor a = resnet_fwd(r, &c->mid_res[0], h, *cur ^ 1);
    if (r->v->cfg.mid_attention)
        attn_fwd(r, &c->mid_attn, &a);
    *h = resnet_fwd(r, &c->mid_res[1], &a, *cur);
}

/* GroupNorm, SiLU, conv_out into out; the normalised tensor goes to the
 * hidden buffer `spare` (not h's). */
static void head_fwd(run *r, const sd_vae_coder *c, const tensor *h, int spare, float *out,
                     int out_ch)
{
    tensor n = {hidden(r, spare, numel(r, h->H, h->W, h->C)), h->H, h->W, h->C};
    if (!r->dry)
        norm(r, h->p, h->H * h->W, h->C, &c->norm_out, 0, n.p);
    trace(r, "conv_norm_out", &n);
    tensor o = {out, h->H, h->W, out_ch};
    if (!r->dry) {
        double t0 = sd_tick(r->prof);
        sd_silu(r->ex, n.p, n.p, numel(r, h->H, h->W, h->C));
        sd_tock(r->prof, SD_OP_NORM, t0, 0);
        sd_epilogue ep = {.bias = c->conv_out.b};
        conv3(r, n.p, h->H, h->W, h->C, &c->conv_out, out, &ep);
    }
    trace(r, "conv_out", &o);
}

static void conv1x1(run *r, const sd_lin *l, const tensor *x, float *out)
{
    if (r->dry)
        return;
    sd_epilogue ep = {.bias = l->b};
    sd_linear_op(r->ex, r->prof, SD_OP_CONV1, r->B * x->H * x->W, x->p, x->C, l, out, l->w.N, &ep);
}

static void decode_graph(run *r, const float *z, float *y)
{
    const sd_vae *v = r->v;
    const sd_vae_config *c = &v->cfg;
    const sd_vae_coder *d = &v->dec;
    const int nl = c->n_levels, lc = c->latent_channels, top = c->block_out_channels[nl - 1];
    char name[48];
    tensor in = {(float *)z, r->plan->H, r->plan->W, lc};
    size_t mark = r->scratch.used;
    if (c->use_post_quant_conv) {
        tensor q = {scratch_alloc(r, numel(r, in.H, in.W, lc)), in.H, in.W, lc};
        conv1x1(r, &v->post_quant_conv, &in, q.p);
        trace(r, "post_quant_conv", &q);
        in = q;
    }
    int cur = 0;
    tensor h = {hidden(r, cur, numel(r, in.H, in.W, top)), in.H, in.W, top};
    if (!r->dry) {
        sd_epilogue ep = {.bias = d->conv_in.b};
        conv3(r, in.p, in.H, in.W, lc, &d->conv_in, h.p, &ep);
    }
    r->scratch.used = mark;
    trace(r, "conv_in", &h);
    mid_fwd(r, d, &h, &cur);
    trace(r, "mid_block", &h);
    for (int i = 0; i < nl; i++) {
        const sd_vae_level *lv = &d->level[i];
        for (int j = 0; j < lv->n_res; j++) {
            h = resnet_fwd(r, &lv->res[j], &h, cur ^ 1);
            cur ^= 1;
        }
        if (lv->has_sample) {
            /* nearest 2x into the other buffer, the conv back into h's */
            const int Ho = 2 * h.H, Wo = 2 * h.W;
            tensor up = {hidden(r, cur ^ 1, numel(r, Ho, Wo, h.C)), Ho, Wo, h.C};
            tensor o = {hidden(r, cur, numel(r, Ho, Wo, h.C)), Ho, Wo, h.C};
            if (!r->dry) {
                double t0 = sd_tick(r->prof);
                sd_upsample_nearest(r->ex, h.p, r->B, h.H, h.W, h.C, Ho, Wo, up.p);
                sd_tock(r->prof, SD_OP_NORM, t0, 0);
                sd_epilogue ep = {.bias = lv->sample_conv.b};
                conv3(r, up.p, Ho, Wo, h.C, &lv->sample_conv, o.p, &ep);
            }
            h = o;
        }
        snprintf(name, sizeof name, "up_blocks.%d", i);
        trace(r, name, &h);
    }
    head_fwd(r, d, &h, cur ^ 1, y, c->out_channels);
}

static void encode_graph(run *r, const float *x, float *moments)
{
    const sd_vae *v = r->v;
    const sd_vae_config *c = &v->cfg;
    const sd_vae_coder *e = &v->enc;
    const int nl = c->n_levels, ch0 = c->block_out_channels[0], lc2 = 2 * c->latent_channels;
    char name[48];
    int cur = 0;
    tensor h = {hidden(r, cur, numel(r, r->plan->H, r->plan->W, ch0)), r->plan->H, r->plan->W, ch0};
    if (!r->dry) {
        sd_epilogue ep = {.bias = e->conv_in.b};
        conv3(r, x, h.H, h.W, c->in_channels, &e->conv_in, h.p, &ep);
    }
    trace(r, "conv_in", &h);
    for (int i = 0; i < nl; i++) {
        const sd_vae_level *lv = &e->level[i];
        for (int j = 0; j < lv->n_res; j++) {
            h = resnet_fwd(r, &lv->res[j], &h, cur ^ 1);
            cur ^= 1;
        }
        if (lv->has_sample) {
            /* F.pad(x, (0, 1, 0, 1)), then 3x3 stride 2 with no padding */
            const int Ho = (h.H - 2) / 2 + 1, Wo = (h.W - 2) / 2 + 1;
            tensor o = {hidden(r, cur ^ 1, numel(r, Ho, Wo, h.C)), Ho, Wo, h.C};
            if (!r->dry) {
                double t0 = sd_tick(r->prof);
                sd_epilogue ep = {.bias = lv->sample_conv.b};
                sd_conv3x3_pad0(r->ex, h.p, r->B, h.H, h.W, h.C, 2, &lv->sample_conv.w, o.p, &ep);
                sd_tock_shape(
                    r->prof, SD_OP_CONV3, t0,
                    2.0 * r->B * Ho * Wo * lv->sample_conv.w.N * lv->sample_conv.w.K,
                    (sd_shape){SD_SHAPE_CONV, {r->B, h.H, h.W, h.C, lv->sample_conv.w.N, 2}});
            }
            cur ^= 1;
            h = o;
        }
        snprintf(name, sizeof name, "down_blocks.%d", i);
        trace(r, name, &h);
    }
    mid_fwd(r, e, &h, &cur);
    trace(r, "mid_block", &h);
    if (!c->use_quant_conv) {
        head_fwd(r, e, &h, cur ^ 1, moments, lc2);
        return;
    }
    size_t mark = r->scratch.used;
    tensor o = {scratch_alloc(r, numel(r, h.H, h.W, lc2)), h.H, h.W, lc2};
    head_fwd(r, e, &h, cur ^ 1, o.p, lc2);
    tensor q = {moments, h.H, h.W, lc2};
    conv1x1(r, &v->quant_conv, &o, q.p);
    r->scratch.used = mark;
    trace(r, "quant_conv", &q);
}

void sd_vae_plan_make(const sd_vae *v, int decode, int B, int H, int W, sd_vae_plan *plan)
{
    memset(plan, 0, sizeof *plan);
    plan->decode = decode;
    plan->B = B;
    plan->H = H;
    plan->W = W;
    run r = {.v = v, .dry = 1, .B = B, .plan = plan};
    if (decode)
        decode_graph(&r, NULL, NULL);
    else
        encode_graph(&r, NULL, NULL);
    plan->hidden_floats = (r.hidden_need + 15) & ~(size_t)15;
    plan->scratch_floats = r.scratch.peak;
}

sdunet_status sd_vae_plan_alloc(sd_vae_plan *plan, sdunet_error *err)
{
    size_t total, bytes;
    if (!sd_mul_size(plan->hidden_floats, 2, &total) ||
        !sd_add_size(total, plan->scratch_floats, &total) ||
        !sd_mul_size(total, sizeof(float), &bytes) || !(plan->mem = sd_alloc(bytes)))
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory: VAE activations need %.1f MiB",
                       ((double)plan->hidden_floats * 2 + (double)plan->scratch_floats) * 4 /
                           1048576.0);
    plan->hidden[0] = plan->mem;
    plan->hidden[1] = plan->mem + plan->hidden_floats;
    plan->scratch = plan->mem + 2 * plan->hidden_floats;
    return SDUNET_OK;
}

void sd_vae_plan_free(sd_vae_plan *plan)
{
    if (!plan)
        return;
    sd_free(plan->mem);
    plan->mem = plan->hidden[0] = plan->hidden[1] = plan->scratch = NULL;
}

void sd_vae_decode_run(const sd_vae *v, const sd_exec *ex, sd_vae_plan *plan, const float *z,
                       float *out, sd_vae_trace_fn tr, void *tr_user, sd_prof *prof)
{
    run r = {.v = v,
             .ex = ex,
             .B = plan->B,
             .plan = plan,
             .scratch = {.base = plan->scratch},
             .tr = tr,
             .tr_user = tr_user,
             .prof = prof};
    decode_graph(&r, z, out);
}

void sd_vae_encode_run(const sd_vae *v, const sd_exec *ex, sd_vae_plan *plan, const float *x,
                       float *moments, sd_vae_trace_fn tr, void *tr_user, sd_prof *prof)
{
    run r = {.v = v,
             .ex = ex,
             .B = plan->B,
             .plan = plan,
             .scratch = {.base = plan->scratch},
             .tr = tr,
             .tr_user = tr_user,
             .prof = prof};
    encode_graph(&r, x, moments);
}
