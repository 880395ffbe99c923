/* Building the VAE: walks diffusers' AutoencoderKL module tree and has the
 * shared loader fetch each tensor by its diffusers name, through the file's
 * name map (vae/names.c) when the file uses another layout or a prefix. */
#include "vae/vae.h"

#include <stdio.h>
#include <string.h>

static void load_resnet(sd_loader *ld, sd_vae_resnet *r, const char *prefix, int cin, int cout)
{
    char p[200];
    r->cin = cin;
    r->cout = cout;
    r->has_shortcut = cin != cout;
    snprintf(p, sizeof p, "%s.norm1", prefix);
    sd_load_norm(ld, &r->norm1, p, cin);
    snprintf(p, sizeof p, "%s.conv1", prefix);
    sd_load_lin(ld, &r->conv1, p, cout, cin, SD_LIN_CONV3, 1);
    snprintf(p, sizeof p, "%s.norm2", prefix);
    sd_load_norm(ld, &r->norm2, p, cout);
    snprintf(p, sizeof p, "%s.conv2", prefix);
    sd_load_lin(ld, &r->conv2, p, cout, cout, SD_LIN_CONV3, 1);
    if (r->has_shortcut) {
        snprintf(p, sizeof p, "%s.conv_shortcut", prefix);
        sd_load_lin(ld, &r->shortcut, p, cout, cin, SD_LIN_CONV1, 1);
    }
}

/* Whether the file holds the attention projections as 1x1 convolutions
 * (C, C, 1, 1), as LDM files do, rather than Linear weights (C, C). */
static int attn_is_conv(const sd_loader *ld, const char *prefix)
{
    if (!ld->src->file || !ld->map)
        return 0;
    char name[256], fn[256];
    snprintf(name, sizeof name, "%s.to_q.weight", prefix);
    if (!ld->map(ld->map_user, name, fn, sizeof fn))
        return 0;
    const sd_tensor_info *t = sd_tensorfile_find(ld->src->file, fn);
    return t && t->ndim == 4;
}

static void load_attn(sd_loader *ld, sd_vae_attn *a, const char *prefix, int C)
{
    char p[200], q[200], k[200], v[200];
    a->C = C;
    snprintf(p, sizeof p, "%s.group_norm", prefix);
    sd_load_norm(ld, &a->norm, p, C);
    sd_lin_kind kind = attn_is_conv(ld, prefix) ? SD_LIN_CONV1 : SD_LIN_LINEAR;
    snprintf(q, sizeof q, "%s.to_q", prefix);
    snprintf(k, sizeof k, "%s.to_k", prefix);
    snprintf(v, sizeof v, "%s.to_v", prefix);
    const char *qkv[3] = {q, k, v};
    sd_load_lin_multi(ld, &a->qkv, qkv, 3, C, C, kind, 1);
    snprintf(p, sizeof p, "%s.to_out.0", prefix);
    sd_load_lin(ld, &a->out, p, C, C, kind, 1);
}

static void load_mid(sd_loader *ld, sd_vae_coder *c, const char *coder, int C, int attn)
{
    char p[120];
    snprintf(p, sizeof p, "%s.mid_block.resnets.0", coder);
    load_resnet(ld, &c->mid_res[0], p, C, C);
    if (attn) {
        snprintf(p, sizeof p, "%s.mid_block.attentions.0", coder);
        load_attn(ld, &c->mid_attn, p, C);
    }
    snprintf(p, sizeof p, "%s.mid_block.resnets.1", coder);
    load_resnet(ld, &c->mid_res[1], p, C, C);
}

static void build_encoder(sd_loader *ld, const sd_vae_config *c, sd_vae_coder *e)
{
    const int nl = c->n_levels, top = c->block_out_channels[nl - 1];
    char p[120];
    sd_load_lin(ld, &e->conv_in, "encoder.conv_in", c->block_out_channels[0], c->in_channels,
                SD_LIN_CONV3, 1);
    int out_ch = c->block_out_channels[0];
    for (int i = 0; i < nl; i++) {
        sd_vae_level *lv = &e->level[i];
        int in_ch = out_ch;
        out_ch = c->block_out_channels[i];
        lv->n_res = c->layers_per_block;
        for (int j = 0; j < lv->n_res; j++) {
            snprintf(p, sizeof p, "encoder.down_blocks.%d.resnets.%d", i, j);
            load_resnet(ld, &lv->res[j], p, j == 0 ? in_ch : out_ch, out_ch);
        }
        lv->has_sample = i < nl - 1;
        if (lv->has_sample) {
            snprintf(p, sizeof p, "encoder.down_blocks.%d.downsamplers.0.conv", i);
            sd_load_lin(ld, &lv->sample_conv, p, out_ch, out_ch, SD_LIN_CONV3, 1);
        }
    }
    load_mid(ld, e, "encoder", top, c->mid_attention);
    sd_load_norm(ld, &e->norm_out, "encoder.conv_norm_out", top);
    sd_load_lin(ld, &e->conv_out, "encoder.conv_out", 2 * c->latent_channels, top, SD_LIN_CONV3, 1);
}

static void build_decoder(sd_loader *ld, const sd_vae_config *c, sd_vae_coder *d)
{
    const int nl = c->n_levels, top = c->block_out_channels[nl - 1];
    char p[120];
    sd_load_lin(ld, &d->conv_in, "decoder.conv_in", top, c->latent_channels, SD_LIN_CONV3, 1);
    load_mid(ld, d, "decoder", top, c->mid_attention);
    int out_ch = top;
    for (int i = 0; i < nl; i++) {
        sd_vae_level *lv = &d->level[i];
        int prev = out_ch;
        out_ch = c->block_out_channels[nl - 1 - i];
        lv->n_res = c->layers_per_block + 1;
        for (int j = 0; j < lv->n_res; j++) {
            snprintf(p, sizeof p, "decoder.up_blocks.%d.resnets.%d", i, j);
            load_resnet(ld, &lv->res[j], p, j == 0 ? prev : out_ch, out_ch);
        }
        lv->has_sample = i < nl - 1;
        if (lv->has_sample) {
            snprintf(p, sizeof p, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            sd_load_lin(ld, &lv->sample_conv, p, out_ch, out_ch, SD_LIN_CONV3, 1);
        }
    }
    sd_load_norm(ld, &d->norm_out, "decoder.conv_norm_out", c->block_out_channels[0]);
    sd_load_lin(ld, &d->conv_out, "decoder.conv_out", c->out_channels, c->block_out_channels[0],
                SD_LIN_CONV3, 1);
}

static int map_name(void *user, const char *name, char *out, size_t outlen)
{
    return sd_vae_file_name((const sd_vae_names *)user, name, out, outlen);
}

sdunet_status sd_vae_build(sd_vae *v, const sd_vae_config *cfg, const sd_weight_source *src,
                           const sd_vae_names *names, const sd_kernels *kern, sdunet_error *err)
{
    memset(v, 0, sizeof *v);
    sdunet_status st = sd_vae_config_check(cfg, err);
    if (st)
        return st;
    v->cfg = *cfg;
    sd_loader L;
    sd_loader_init(&L, src, kern, err);
    sd_vae_names nm;
    if (src->file && names) {
        nm = *names;
        nm.n_levels = cfg->n_levels;
        L.map = map_name;
        L.map_user = &nm;
    }
    const int lc2 = 2 * cfg->latent_channels;
    build_encoder(&L, cfg, &v->enc);
    if (cfg->use_quant_conv)
        sd_load_lin(&L, &v->quant_conv, "quant_conv", lc2, lc2, SD_LIN_CONV1, 1);
    if (cfg->use_post_quant_conv)
        sd_load_lin(&L, &v->post_quant_conv, "post_quant_conv", cfg->latent_channels,
                    cfg->latent_channels, SD_LIN_CONV1, 1);
    build_decoder(&L, cfg, &v->dec);
    st = sd_loader_finish(&L);
    if (st) {
        sd_vae_release(v);
        return st;
    }
    v->n_params = L.n_params;
    v->has_weights = !src->check_only;
    return SDUNET_OK;
}

static void free_resnet(sd_vae_resnet *r)
{
    sd_norm_free(&r->norm1);
    sd_norm_free(&r->norm2);
    sd_lin_free(&r->conv1);
    sd_lin_free(&r->conv2);
    sd_lin_free(&r->shortcut);
}

static void free_coder(sd_vae_coder *c)
{
    sd_lin_free(&c->conv_in);
    sd_lin_free(&c->conv_out);
    sd_norm_free(&c->norm_out);
    for (int i = 0; i < SD_VAE_MAX_LEVELS; i++) {
        for (int j = 0; j <= SD_VAE_MAX_LAYERS; j++)
            free_resnet(&c->level[i].res[j]);
        sd_lin_free(&c->level[i].sample_conv);
    }
    free_resnet(&c->mid_res[0]);
    free_resnet(&c->mid_res[1]);
    sd_norm_free(&c->mid_attn.norm);
    sd_lin_free(&c->mid_attn.qkv);
    sd_lin_free(&c->mid_attn.out);
}

void sd_vae_release(sd_vae *v)
{
    if (!v)
        return;
    free_coder(&v->enc);
    free_coder(&v->dec);
    sd_lin_free(&v->quant_conv);
    sd_lin_free(&v->post_quant_conv);
}
