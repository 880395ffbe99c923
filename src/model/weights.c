/* Building the model: walks the configuration in the order of diffusers'
 * module tree, fetches each tensor by its diffusers name (from a file or the
 * synthetic generator), checks its shape, converts it to float32 and packs
 * it for the kernels. Missing and mismatched tensors are collected so one
 * error lists them all.
 *
 * A file's names may be diffusers' or the original LDM ones
 * (model.diffusion_model.*); the loader detects which and translates.
 * Every other tensor in the file (VAE, text encoder, EMA copies, scheduler
 * buffers) is never looked at. Once a tensor is packed its file pages are
 * released, so a large file is not held in memory beside the model. */
#include "io/keymap.h"
#include "model/synth.h"
#include "model/unet.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct loader {
    const sd_weight_source *src;
    const sd_unet_config *cfg;
    sd_layout layout; /* of src->file when the loader maps names itself */
    const sd_kernels *kern;
    float *scratch;
    size_t scratch_cap;
    int n_bad;
    char bad[400];
    sdunet_status fatal;
    sdunet_error *err;
    int64_t n_params;
} loader;

static void note_bad(loader *ld, const char *fmt, ...) SD_PRINTF(2, 3);
static void note_bad(loader *ld, const char *fmt, ...)
{
    ld->n_bad++;
    size_t used = strlen(ld->bad);
    if (used + 80 >= sizeof ld->bad)
        return;
    if (used)
        ld->bad[used++] = ';', ld->bad[used++] = ' ', ld->bad[used] = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ld->bad + used, sizeof ld->bad - used, fmt, ap);
    va_end(ap);
}

static float *scratch(loader *ld, size_t n)
{
    if (ld->fatal)
        return NULL;
    if (n > ld->scratch_cap) {
        sd_free(ld->scratch);
        ld->scratch = sd_alloc(n * sizeof(float));
        ld->scratch_cap = ld->scratch ? n : 0;
        if (!ld->scratch) {
            ld->fatal = sd_fail(ld->err, SDUNET_E_NOMEM, "out of memory loading weights");
            return NULL;
        }
    }
    return ld->scratch;
}

static void zero(const loader *ld, float *dst, size_t n)
{
    if (!ld->src->check_only)
        memset(dst, 0, n * sizeof(float));
}

static void shape_text(char *buf, size_t len, int ndim, const int64_t *shape)
{
    buf[0] = 0;
    for (int i = 0; i < ndim; i++)
        snprintf(buf + strlen(buf), len - strlen(buf), "%s%lld", i ? "," : "", (long long)shape[i]);
}

/* Finds file tensor `name` (a diffusers name) and checks its shape. On a
 * missing or mismatched tensor, records it and returns NULL. Counts the
 * parameters and calls visit either way. */
static const sd_tensor_info *lookup(loader *ld, const char *name, int ndim, const int64_t *shape)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    ld->n_params += (int64_t)n;
    if (ld->src->visit)
        ld->src->visit(ld->src->visit_user, name, ndim, shape);
    if (!ld->src->file)
        return NULL;
    char mapped[256];
    const char *look = name;
    if (ld->src->map_name) {
        if (!ld->src->map_name(ld->src->map_user, name, mapped, sizeof mapped)) {
            note_bad(ld, "no file name for %s", name);
            return NULL;
        }
        look = mapped;
    } else if (ld->layout == SD_LAYOUT_LDM) {
        if (sd_diffusers_to_ldm(ld->cfg, name, mapped, sizeof mapped) != 1) {
            note_bad(ld, "no LDM name for %s", name);
            return NULL;
        }
        look = mapped;
    }
    const sd_tensor_info *t = sd_tensorfile_find(ld->src->file, look);
    if (!t) {
        /* Name both sides: the file's name to look for in the file, the
         * diffusers name to look for in the model. */
        if (look != name)
            note_bad(ld, "missing %s (diffusers %s)", look, name);
        else
            note_bad(ld, "missing %s", look);
        return NULL;
    }
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == shape[i];
    if (!ok) {
        char want[96], got[96];
        shape_text(want, sizeof want, ndim, shape);
        shape_text(got, sizeof got, t->ndim, t->shape);
        note_bad(ld, "%s has shape (%s), expected (%s)", look, got, want);
        return NULL;
    }
    return t;
}

/* Fetches tensor `name` of the given shape into dst (numel floats). On a
 * missing or mismatched tensor, records it and fills dst with zeros. */
static void fetch(loader *ld, const char *name, int ndim, const int64_t *shape, float *dst)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    if (!ld->src->file) {
        lookup(ld, name, ndim, shape);
        if (ld->src->check_only)
            return;
        sd_synth_weight_pool(name, ndim, shape, dst, ld->src->pool);
        if (ld->src->synth_round == SD_DT_F16)
            for (size_t i = 0; i < n; i++)
                dst[i] = sd_f16_to_f32(sd_f32_to_f16(dst[i]));
        else if (ld->src->synth_round == SD_DT_BF16)
            for (size_t i = 0; i < n; i++)
                dst[i] = sd_bf16_to_f32(sd_f32_to_bf16(dst[i]));
        return;
    }
    const sd_tensor_info *t = lookup(ld, name, ndim, shape);
    if (!t) {
        zero(ld, dst, n);
        return;
    }
    if (ld->src->check_only)
        return;
    sdunet_error e;
    if (sd_tensor_to_f32(t, dst, &e) != SDUNET_OK) {
        note_bad(ld, "%s: %s", t->name, e.message);
        zero(ld, dst, n);
        return;
    }
    sd_tensorfile_release(ld->src->file, t);
}

/* A float32 file tensor the packer can read in place (no conversion, no
 * copy): little-endian host, 4-byte aligned data. */
static int usable_in_place(const sd_tensor_info *t)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return t->dtype == SD_DT_F32 && ((uintptr_t)t->data & 3) == 0;
#else
    (void)t;
    return 0;
#endif
}

static float *fetch_vec(loader *ld, const char *name, int n)
{
    float *v = sd_alloc((size_t)n * sizeof(float));
    if (!v) {
        if (!ld->fatal)
            ld->fatal = sd_fail(ld->err, SDUNET_E_NOMEM, "out of memory loading weights");
        return NULL;
    }
    int64_t shape[1] = {n};
    fetch(ld, name, 1, shape, v);
    return v;
}

static void load_gn(loader *ld, sd_gn *g, const char *prefix, int C)
{
    char name[256];
    snprintf(name, sizeof name, "%s.weight", prefix);
    g->gamma = fetch_vec(ld, name, C);
    snprintf(name, sizeof name, "%s.bias", prefix);
    g->beta = fetch_vec(ld, name, C);
}

/* LIN_GEGLU: a Linear whose 2F outputs are [hidden | gate] of a GEGLU,
 * packed for sd_gemm_geglu when F allows (sd_pack_geglu), else as a Linear. */
enum lin_kind { LIN_LINEAR, LIN_CONV1, LIN_CONV3, LIN_GEGLU };

/* Loads one or more weight tensors stacked along the output axis into one
 * packed matrix (fusing q|k|v). prefixes[i] names each part; all parts have
 * N_part outputs. Bias only when with_bias. */
static void load_lin_multi(loader *ld, sd_lin *l, const char *const *prefixes, int parts,
                           int N_part, int Cin, enum lin_kind kind, int with_bias)
{
    int taps = kind == LIN_CONV3 ? 9 : 1;
    size_t part = (size_t)N_part * (size_t)Cin * (size_t)taps;
    char name[256];
    int64_t shape[4] = {N_part, Cin, kind == LIN_CONV3 ? 3 : 1, kind == LIN_CONV3 ? 3 : 1};
    const int ndim = kind == LIN_LINEAR || kind == LIN_GEGLU ? 2 : 4;
    /* A lone float32 tensor is packed straight from the file mapping: no
     * scratch copy of the largest tensors (118 MB for SD1.5's widest conv). */
    const float *w_in = NULL;
    const sd_tensor_info *direct = NULL;
    float *w = NULL;
    if (parts == 1 && ld->src->file && !ld->src->check_only && !ld->fatal) {
        snprintf(name, sizeof name, "%s.weight", prefixes[0]);
        direct = lookup(ld, name, ndim, shape);
        if (direct && usable_in_place(direct)) {
            w_in = direct->data;
        } else if (direct) {
            if (!(w = scratch(ld, part)))
                return;
            sdunet_error e;
            if (sd_tensor_to_f32(direct, w, &e) != SDUNET_OK) {
                note_bad(ld, "%s: %s", direct->name, e.message);
                zero(ld, w, part);
            }
        }
    } else {
        w = scratch(ld, part * (size_t)parts); /* untouched pages cost nothing when check_only */
        if (!w)
            return;
        for (int p = 0; p < parts; p++) {
            snprintf(name, sizeof name, "%s.weight", prefixes[p]);
            fetch(ld, name, ndim, shape, w + part * (size_t)p);
        }
    }
    if (!w_in)
        w_in = w;
    if (with_bias) {
        l->b = sd_alloc((size_t)N_part * (size_t)parts * sizeof(float));
        if (!l->b) {
            if (!ld->fatal)
                ld->fatal = sd_fail(ld->err, SDUNET_E_NOMEM, "out of memory loading weights");
            return;
        }
        for (int p = 0; p < parts; p++) {
            snprintf(name, sizeof name, "%s.bias", prefixes[p]);
            int64_t bshape[1] = {N_part};
            fetch(ld, name, 1, bshape, l->b + (size_t)N_part * p);
        }
    }
    /* Once a tensor is missing the build fails: packing more is wasted. */
    if (ld->fatal || ld->src->check_only || ld->n_bad || !w_in)
        return;
    const int N = N_part * parts;
    sdunet_status st = SDUNET_E_INVALID_ARG;
    /* sd_pack_geglu refuses (INVALID_ARG) unless N/2 is whole panels */
    if (kind == LIN_GEGLU && N % 2 == 0 && !ld->src->geglu_unfused)
        st = sd_pack_geglu(ld->kern, w_in, N / 2, Cin, &l->w);
    if (st == SDUNET_E_INVALID_ARG)
        st = sd_pack(ld->kern, w_in, N, Cin, taps, &l->w);
    if (st != SDUNET_OK)
        ld->fatal = sd_fail(ld->err, SDUNET_E_NOMEM, "out of memory packing weights");
    if (direct)
        sd_tensorfile_release(ld->src->file, direct);
}

static void load_lin(loader *ld, sd_lin *l, const char *prefix, int N, int Cin, enum lin_kind kind,
                     int with_bias)
{
    load_lin_multi(ld, l, &prefix, 1, N, Cin, kind, with_bias);
}

static void load_resnet(loader *ld, sd_resnet *r, const char *prefix, int cin, int cout,
                        int temb_dim)
{
    char p[200];
    r->cin = cin;
    r->cout = cout;
    if (!ld)
        return;
    snprintf(p, sizeof p, "%s.norm1", prefix);
    load_gn(ld, &r->norm1, p, cin);
    snprintf(p, sizeof p, "%s.conv1", prefix);
    load_lin(ld, &r->conv1, p, cout, cin, LIN_CONV3, 1);
    snprintf(p, sizeof p, "%s.time_emb_proj", prefix);
    load_lin(ld, &r->temb, p, cout, temb_dim, LIN_LINEAR, 1);
    snprintf(p, sizeof p, "%s.norm2", prefix);
    load_gn(ld, &r->norm2, p, cout);
    snprintf(p, sizeof p, "%s.conv2", prefix);
    load_lin(ld, &r->conv2, p, cout, cout, LIN_CONV3, 1);
    r->has_shortcut = cin != cout;
    if (r->has_shortcut) {
        snprintf(p, sizeof p, "%s.conv_shortcut", prefix);
        load_lin(ld, &r->shortcut, p, cout, cin, LIN_CONV1, 1);
    }
}

static void load_xformer(loader *ld, sd_xformer *x, const char *prefix, int C, int heads,
                         int ctx_dim, int linear_proj)
{
    x->C = C;
    x->heads = heads;
    if (!ld)
        return;
    char p[200], a[200], b[200], c[200];
    snprintf(p, sizeof p, "%s.norm", prefix);
    load_gn(ld, &x->norm, p, C);
    snprintf(p, sizeof p, "%s.proj_in", prefix);
    load_lin(ld, &x->proj_in, p, C, C, linear_proj ? LIN_LINEAR : LIN_CONV1, 1);
    const char *tb = "transformer_blocks.0";
    snprintf(p, sizeof p, "%s.%s.norm1", prefix, tb);
    load_gn(ld, &x->ln1, p, C);
    snprintf(a, sizeof a, "%s.%s.attn1.to_q", prefix, tb);
    snprintf(b, sizeof b, "%s.%s.attn1.to_k", prefix, tb);
    snprintf(c, sizeof c, "%s.%s.attn1.to_v", prefix, tb);
    const char *qkv[3] = {a, b, c};
    load_lin_multi(ld, &x->qkv, qkv, 3, C, C, LIN_LINEAR, 0);
    snprintf(p, sizeof p, "%s.%s.attn1.to_out.0", prefix, tb);
    load_lin(ld, &x->out1, p, C, C, LIN_LINEAR, 1);
    snprintf(p, sizeof p, "%s.%s.norm2", prefix, tb);
    load_gn(ld, &x->ln2, p, C);
    snprintf(p, sizeof p, "%s.%s.attn2.to_q", prefix, tb);
    load_lin(ld, &x->q2, p, C, C, LIN_LINEAR, 0);
    snprintf(a, sizeof a, "%s.%s.attn2.to_k", prefix, tb);
    snprintf(b, sizeof b, "%s.%s.attn2.to_v", prefix, tb);
    const char *kv[2] = {a, b};
    load_lin_multi(ld, &x->kv2, kv, 2, C, ctx_dim, LIN_LINEAR, 0);
    snprintf(p, sizeof p, "%s.%s.attn2.to_out.0", prefix, tb);
    load_lin(ld, &x->out2, p, C, C, LIN_LINEAR, 1);
    snprintf(p, sizeof p, "%s.%s.norm3", prefix, tb);
    load_gn(ld, &x->ln3, p, C);
    snprintf(p, sizeof p, "%s.%s.ff.net.0.proj", prefix, tb);
    load_lin(ld, &x->ff1, p, 8 * C, C, LIN_GEGLU, 1);
    snprintf(p, sizeof p, "%s.%s.ff.net.2", prefix, tb);
    load_lin(ld, &x->ff2, p, C, 4 * C, LIN_LINEAR, 1);
    snprintf(p, sizeof p, "%s.proj_out", prefix);
    load_lin(ld, &x->proj_out, p, C, C, linear_proj ? LIN_LINEAR : LIN_CONV1, 1);
}

sdunet_status sd_unet_build(sd_unet *u, const sd_unet_config *cfg, const sd_weight_source *src,
                            const sd_kernels *kern, sdunet_error *err)
{
    memset(u, 0, sizeof *u);
    u->cfg = *cfg;
    const sd_unet_config *c = &u->cfg;
    if (c->layers_per_block < 1 || c->layers_per_block > SD_MAX_LAYERS)
        return sd_fail(err, SDUNET_E_CONFIG, "layers_per_block %d out of range 1..%d",
                       c->layers_per_block, SD_MAX_LAYERS);
    loader L = {.src = src, .cfg = c, .kern = kern, .err = err};
    loader *ld = src ? &L : NULL;
    if (src && src->file && !src->map_name) {
        L.layout = sd_detect_layout(src->file);
        if (L.layout == SD_LAYOUT_MIXED)
            return sd_fail(err, SDUNET_E_WEIGHTS,
                           "the file has both diffusers and LDM (model.diffusion_model.*) UNet "
                           "names; refusing to guess which to use");
        if (L.layout == SD_LAYOUT_UNKNOWN)
            return sd_fail(err, SDUNET_E_WEIGHTS,
                           "no UNet tensors (neither diffusers names such as conv_in.weight nor "
                           "LDM names under model.diffusion_model.)");
    }
    int nb = c->n_blocks, lpb = c->layers_per_block, temb = c->time_embed_dim;
    int ch0 = c->block_out_channels[0];
    char p[160];

    if (ld) {
        load_lin(ld, &u->conv_in, "conv_in", ch0, c->in_channels, LIN_CONV3, 1);
        load_lin(ld, &u->time1, "time_embedding.linear_1", temb, ch0, LIN_LINEAR, 1);
        load_lin(ld, &u->time2, "time_embedding.linear_2", temb, temb, LIN_LINEAR, 1);
    }
    int out_ch = ch0;
    for (int i = 0; i < nb; i++) {
        sd_block *b = &u->down[i];
        int in_ch = out_ch;
        out_ch = c->block_out_channels[i];
        b->n_layers = lpb;
        b->has_attn = c->down_has_attn[i];
        b->has_sample = i < nb - 1;
        if (b->has_attn && !(b->attn = calloc((size_t)lpb, sizeof *b->attn))) {
            sd_unet_release(u);
            return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
        }
        for (int j = 0; j < lpb; j++) {
            snprintf(p, sizeof p, "down_blocks.%d.resnets.%d", i, j);
            load_resnet(ld, &b->res[j], p, j == 0 ? in_ch : out_ch, out_ch, temb);
            if (b->has_attn) {
                snprintf(p, sizeof p, "down_blocks.%d.attentions.%d", i, j);
                load_xformer(ld, &b->attn[j], p, out_ch, c->heads[i], c->cross_attention_dim,
                             c->use_linear_projection);
            }
        }
        if (b->has_sample && ld) {
            snprintf(p, sizeof p, "down_blocks.%d.downsamplers.0.conv", i);
            load_lin(ld, &b->sample_conv, p, out_ch, out_ch, LIN_CONV3, 1);
        }
    }
    int top = c->block_out_channels[nb - 1];
    load_resnet(ld, &u->mid_res[0], "mid_block.resnets.0", top, top, temb);
    load_xformer(ld, &u->mid_attn, "mid_block.attentions.0", top, c->heads[nb - 1],
                 c->cross_attention_dim, c->use_linear_projection);
    load_resnet(ld, &u->mid_res[1], "mid_block.resnets.1", top, top, temb);

    /* Up block i mirrors down block nb-1-i; its resnet j takes the previous
     * hidden state concatenated with the popped skip (diffusers' channel
     * bookkeeping: prev_output_channel / input_channel / output_channel). */
    int prev_out = top;
    for (int i = 0; i < nb; i++) {
        sd_block *b = &u->up[i];
        int mirror = nb - 1 - i;
        int oc = c->block_out_channels[mirror];
        int ic = c->block_out_channels[mirror > 0 ? mirror - 1 : 0];
        b->n_layers = lpb + 1;
        b->has_attn = c->up_has_attn[i];
        b->has_sample = i < nb - 1;
        if (b->has_attn && !(b->attn = calloc((size_t)lpb + 1, sizeof *b->attn))) {
            sd_unet_release(u);
            return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
        }
        for (int j = 0; j <= lpb; j++) {
            int skip_ch = j == lpb ? ic : oc;
            int res_in = j == 0 ? prev_out : oc;
            snprintf(p, sizeof p, "up_blocks.%d.resnets.%d", i, j);
            load_resnet(ld, &b->res[j], p, res_in + skip_ch, oc, temb);
            if (b->has_attn) {
                snprintf(p, sizeof p, "up_blocks.%d.attentions.%d", i, j);
                load_xformer(ld, &b->attn[j], p, oc, c->heads[mirror], c->cross_attention_dim,
                             c->use_linear_projection);
            }
        }
        if (b->has_sample && ld) {
            snprintf(p, sizeof p, "up_blocks.%d.upsamplers.0.conv", i);
            load_lin(ld, &b->sample_conv, p, oc, oc, LIN_CONV3, 1);
        }
        prev_out = oc;
    }
    if (ld) {
        load_gn(ld, &u->norm_out, "conv_norm_out", ch0);
        load_lin(ld, &u->conv_out, "conv_out", c->out_channels, ch0, LIN_CONV3, 1);
    }
    sd_free(L.scratch);
    if (ld && L.fatal) {
        sd_unet_release(u);
        return L.fatal;
    }
    if (ld && L.n_bad) {
        sd_unet_release(u);
        return sd_fail(err, SDUNET_E_WEIGHTS, "%d tensor%s missing or mismatched: %s%s", L.n_bad,
                       L.n_bad == 1 ? "" : "s", L.bad,
                       strlen(L.bad) + 80 >= sizeof L.bad ? "; ..." : "");
    }
    u->n_params = L.n_params;
    u->has_weights = ld != NULL;
    return SDUNET_OK;
}

static void free_lin(sd_lin *l)
{
    sd_packed_free(&l->w);
    sd_free(l->b);
    l->b = NULL;
}

static void free_gn(sd_gn *g)
{
    sd_free(g->gamma);
    sd_free(g->beta);
    g->gamma = g->beta = NULL;
}

static void free_resnet(sd_resnet *r)
{
    free_gn(&r->norm1);
    free_gn(&r->norm2);
    free_lin(&r->conv1);
    free_lin(&r->temb);
    free_lin(&r->conv2);
    free_lin(&r->shortcut);
}

static void free_xformer(sd_xformer *x)
{
    free_gn(&x->norm);
    free_gn(&x->ln1);
    free_gn(&x->ln2);
    free_gn(&x->ln3);
    sd_lin *lins[] = {&x->proj_in, &x->proj_out, &x->qkv, &x->out1, &x->q2,
                      &x->kv2,     &x->out2,     &x->ff1, &x->ff2};
    for (size_t i = 0; i < sizeof lins / sizeof lins[0]; i++)
        free_lin(lins[i]);
}

static void free_block(sd_block *b)
{
    for (int j = 0; j < b->n_layers; j++) {
        free_resnet(&b->res[j]);
        if (b->attn)
            free_xformer(&b->attn[j]);
    }
    free(b->attn);
    b->attn = NULL;
    free_lin(&b->sample_conv);
}

void sd_unet_release(sd_unet *u)
{
    if (!u)
        return;
    free_lin(&u->conv_in);
    free_lin(&u->time1);
    free_lin(&u->time2);
    free_lin(&u->conv_out);
    free_gn(&u->norm_out);
    for (int i = 0; i < SD_MAX_BLOCKS; i++) {
        free_block(&u->down[i]);
        free_block(&u->up[i]);
    }
    free_resnet(&u->mid_res[0]);
    free_resnet(&u->mid_res[1]);
    free_xformer(&u->mid_attn);
}
