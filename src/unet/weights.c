/* Building the UNet: walks the configuration in the order of diffusers'
 * module tree and has the shared loader (engine/layers.h) fetch each tensor
 * by its diffusers name.
 *
 * A file's names may be diffusers' or the original LDM ones
 * (model.diffusion_model.*); the build detects which and gives the loader
 * the LDM name map. Every other tensor in the file (VAE, text encoder, EMA
 * copies, scheduler buffers) is never looked at. */
#include "io/keymap.h"
#include "unet/unet.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void load_resnet(sd_loader *ld, sd_resnet *r, const char *prefix, int cin, int cout,
                        int temb_dim)
{
    char p[200];
    r->cin = cin;
    r->cout = cout;
    if (!ld)
        return;
    snprintf(p, sizeof p, "%s.norm1", prefix);
    sd_load_norm(ld, &r->norm1, p, cin);
    snprintf(p, sizeof p, "%s.conv1", prefix);
    sd_load_lin(ld, &r->conv1, p, cout, cin, SD_LIN_CONV3, 1);
    snprintf(p, sizeof p, "%s.time_emb_proj", prefix);
    sd_load_lin(ld, &r->temb, p, cout, temb_dim, SD_LIN_LINEAR, 1);
    snprintf(p, sizeof p, "%s.norm2", prefix);
    sd_load_norm(ld, &r->norm2, p, cout);
    snprintf(p, sizeof p, "%s.conv2", prefix);
    sd_load_lin(ld, &r->conv2, p, cout, cout, SD_LIN_CONV3, 1);
    r->has_shortcut = cin != cout;
    if (r->has_shortcut) {
        snprintf(p, sizeof p, "%s.conv_shortcut", prefix);
        sd_load_lin(ld, &r->shortcut, p, cout, cin, SD_LIN_CONV1, 1);
    }
}

static void load_xformer(sd_loader *ld, sd_xformer *x, const char *prefix, int C, int heads,
                         int ctx_dim, int linear_proj)
{
    x->C = C;
    x->heads = heads;
    if (!ld)
        return;
    char p[200], a[200], b[200], c[200];
    snprintf(p, sizeof p, "%s.norm", prefix);
    sd_load_norm(ld, &x->norm, p, C);
    snprintf(p, sizeof p, "%s.proj_in", prefix);
    sd_load_lin(ld, &x->proj_in, p, C, C, linear_proj ? SD_LIN_LINEAR : SD_LIN_CONV1, 1);
    const char *tb = "transformer_blocks.0";
    snprintf(p, sizeof p, "%s.%s.norm1", prefix, tb);
    sd_load_norm(ld, &x->ln1, p, C);
    snprintf(a, sizeof a, "%s.%s.attn1.to_q", prefix, tb);
    snprintf(b, sizeof b, "%s.%s.attn1.to_k", prefix, tb);
    snprintf(c, sizeof c, "%s.%s.attn1.to_v", prefix, tb);
    const char *qkv[3] = {a, b, c};
    sd_load_lin_multi(ld, &x->qkv, qkv, 3, C, C, SD_LIN_LINEAR, 0);
    snprintf(p, sizeof p, "%s.%s.attn1.to_out.0", prefix, tb);
    sd_load_lin(ld, &x->out1, p, C, C, SD_LIN_LINEAR, 1);
    snprintf(p, sizeof p, "%s.%s.norm2", prefix, tb);
    sd_load_norm(ld, &x->ln2, p, C);
    snprintf(p, sizeof p, "%s.%s.attn2.to_q", prefix, tb);
    sd_load_lin(ld, &x->q2, p, C, C, SD_LIN_LINEAR, 0);
    snprintf(a, sizeof a, "%s.%s.attn2.to_k", prefix, tb);
    snprintf(b, sizeof b, "%s.%s.attn2.to_v", prefix, tb);
    const char *kv[2] = {a, b};
    sd_load_lin_multi(ld, &x->kv2, kv, 2, C, ctx_dim, SD_LIN_LINEAR, 0);
    snprintf(p, sizeof p, "%s.%s.attn2.to_out.0", prefix, tb);
    sd_load_lin(ld, &x->out2, p, C, C, SD_LIN_LINEAR, 1);
    snprintf(p, sizeof p, "%s.%s.norm3", prefix, tb);
    sd_load_norm(ld, &x->ln3, p, C);
    snprintf(p, sizeof p, "%s.%s.ff.net.0.proj", prefix, tb);
    sd_load_lin(ld, &x->ff1, p, 8 * C, C, SD_LIN_GEGLU, 1);
    snprintf(p, sizeof p, "%s.%s.ff.net.2", prefix, tb);
    sd_load_lin(ld, &x->ff2, p, C, 4 * C, SD_LIN_LINEAR, 1);
    snprintf(p, sizeof p, "%s.proj_out", prefix);
    sd_load_lin(ld, &x->proj_out, p, C, C, linear_proj ? SD_LIN_LINEAR : SD_LIN_CONV1, 1);
}

/* The loader's name map for LDM files (user: the configuration). */
static int ldm_name(void *user, const char *name, char *out, size_t outlen)
{
    return sd_diffusers_to_ldm((const sd_unet_config *)user, name, out, outlen) == 1;
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
    sd_loader L;
    sd_loader_init(&L, src, kern, err);
    sd_loader *ld = src ? &L : NULL;
    if (src && src->file && !src->map_name) {
        sd_layout layout = sd_detect_layout(src->file);
        if (layout == SD_LAYOUT_LDM) {
            L.map = ldm_name;
            L.map_user = (void *)c;
        }
        if (layout == SD_LAYOUT_MIXED)
            return sd_fail(err, SDUNET_E_WEIGHTS,
                           "the file has both diffusers and LDM (model.diffusion_model.*) UNet "
                           "names; refusing to guess which to use");
        if (layout == SD_LAYOUT_UNKNOWN)
            return sd_fail(err, SDUNET_E_WEIGHTS,
                           "no UNet tensors (neither diffusers names such as conv_in.weight nor "
                           "LDM names under model.diffusion_model.)");
    }
    int nb = c->n_blocks, lpb = c->layers_per_block, temb = c->time_embed_dim;
    int ch0 = c->block_out_channels[0];
    char p[160];

    if (ld) {
        sd_load_lin(ld, &u->conv_in, "conv_in", ch0, c->in_channels, SD_LIN_CONV3, 1);
        sd_load_lin(ld, &u->time1, "time_embedding.linear_1", temb, ch0, SD_LIN_LINEAR, 1);
        sd_load_lin(ld, &u->time2, "time_embedding.linear_2", temb, temb, SD_LIN_LINEAR, 1);
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
            sd_load_lin(ld, &b->sample_conv, p, out_ch, out_ch, SD_LIN_CONV3, 1);
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
            sd_load_lin(ld, &b->sample_conv, p, oc, oc, SD_LIN_CONV3, 1);
        }
        prev_out = oc;
    }
    if (ld) {
        sd_load_norm(ld, &u->norm_out, "conv_norm_out", ch0);
        sd_load_lin(ld, &u->conv_out, "conv_out", c->out_channels, ch0, SD_LIN_CONV3, 1);
    }
    sdunet_status st = ld ? sd_loader_finish(&L) : SDUNET_OK;
    if (st != SDUNET_OK) {
        sd_unet_release(u);
        return st;
    }
    u->n_params = L.n_params;
    memcpy(u->packed_bytes, L.packed_bytes, sizeof u->packed_bytes);
    u->has_weights = ld != NULL;
    return SDUNET_OK;
}

static void free_resnet(sd_resnet *r)
{
    sd_norm_free(&r->norm1);
    sd_norm_free(&r->norm2);
    sd_lin_free(&r->conv1);
    sd_lin_free(&r->temb);
    sd_lin_free(&r->conv2);
    sd_lin_free(&r->shortcut);
}

static void free_xformer(sd_xformer *x)
{
    sd_norm_free(&x->norm);
    sd_norm_free(&x->ln1);
    sd_norm_free(&x->ln2);
    sd_norm_free(&x->ln3);
    sd_lin *lins[] = {&x->proj_in, &x->proj_out, &x->qkv, &x->out1, &x->q2,
                      &x->kv2,     &x->out2,     &x->ff1, &x->ff2};
    for (size_t i = 0; i < sizeof lins / sizeof lins[0]; i++)
        sd_lin_free(lins[i]);
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
    sd_lin_free(&b->sample_conv);
}

void sd_unet_release(sd_unet *u)
{
    if (!u)
        return;
    sd_lin_free(&u->conv_in);
    sd_lin_free(&u->time1);
    sd_lin_free(&u->time2);
    sd_lin_free(&u->conv_out);
    sd_norm_free(&u->norm_out);
    for (int i = 0; i < SD_MAX_BLOCKS; i++) {
        free_block(&u->down[i]);
        free_block(&u->up[i]);
    }
    free_resnet(&u->mid_res[0]);
    free_resnet(&u->mid_res[1]);
    free_xformer(&u->mid_attn);
}
