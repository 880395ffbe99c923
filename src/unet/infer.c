/* Model files: resolving a path (file or diffusers folder), choosing the
 * configuration (explicit > config.json beside the weights > inference),
 * and inferring a configuration from tensor shapes.
 *
 * Inference works on diffusers names whatever the file's layout: the block
 * structure (block count, layers per block) is read from the names first,
 * which is all the LDM <-> diffusers key map needs; every other fact is
 * then looked up by diffusers name through that map. */
#include "unet/infer.h"
#include "io/fileio.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct ictx {
    const sd_tensorfile *tf;
    sd_layout layout;
    sd_unet_config probe; /* structure known so far; drives the key map */
    char *report;
    size_t report_len;
    sdunet_error *err;
} ictx;

static void rep(ictx *c, const char *fmt, ...) SD_PRINTF(2, 3);
static void rep(ictx *c, const char *fmt, ...)
{
    if (!c->report || !c->report_len)
        return;
    size_t used = strlen(c->report);
    if (used + 1 >= c->report_len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->report + used, c->report_len - used, fmt, ap);
    va_end(ap);
}

/* A UNet tensor by diffusers name, in whatever layout the file has. */
static const sd_tensor_info *get(const ictx *c, const char *fmt, ...) SD_PRINTF(2, 3);
static const sd_tensor_info *get(const ictx *c, const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof name)
        return NULL;
    return sd_find_unet_tensor(c->tf, &c->probe, c->layout, name);
}

/* The name a diffusers name has in the file, for messages. */
static const char *file_name(const ictx *c, const char *diffusers, char *buf, size_t len)
{
    if (c->layout != SD_LAYOUT_LDM)
        return diffusers;
    if (sd_diffusers_to_ldm(&c->probe, diffusers, buf, len) != 1 &&
        snprintf(buf, len, "(LDM name of %s)", diffusers) >= (int)len)
        buf[len - 1] = '\0'; /* truncated: still a readable message */
    return buf;
}

static sdunet_status missing(ictx *c, const char *diffusers, const char *what)
{
    char buf[256];
    const char *fn = file_name(c, diffusers, buf, sizeof buf);
    if (fn != diffusers)
        return sd_fail(c->err, SDUNET_E_CONFIG,
                       "cannot infer the %s: no tensor %s (diffusers %s); pass a config.json or "
                       "preset (--config)",
                       what, fn, diffusers);
    return sd_fail(c->err, SDUNET_E_CONFIG,
                   "cannot infer the %s: no tensor %s; pass a config.json or preset (--config)",
                   what, diffusers);
}

/* Parses "<prefix><index>." at the start of name; -1 if it is not there. */
static int index_after(const char *name, const char *prefix)
{
    size_t pl = strlen(prefix);
    if (strncmp(name, prefix, pl) != 0)
        return -1;
    const char *p = name + pl;
    long v = 0;
    if (*p < '0' || *p > '9')
        return -1;
    while (*p >= '0' && *p <= '9') {
        v = v * 10 + (*p++ - '0');
        if (v > 100000)
            return -1;
    }
    return *p == '.' ? (int)v : -1;
}

/* Largest index under prefix over all names (-1 when none). */
static int max_index(const sd_tensorfile *tf, const char *prefix)
{
    int m = -1;
    for (size_t k = 0; k < tf->count; k++) {
        int v = index_after(tf->tensors[k].name, prefix);
        if (v > m)
            m = v;
    }
    return m;
}

static int any_name_contains(const sd_tensorfile *tf, const char *prefix, const char *needle)
{
    size_t pl = strlen(prefix);
    for (size_t k = 0; k < tf->count; k++)
        if (strncmp(tf->tensors[k].name, prefix, pl) == 0 && strstr(tf->tensors[k].name, needle))
            return 1;
    return 0;
}

static sdunet_status structure_error(ictx *c, const char *why)
{
    return sd_fail(c->err, SDUNET_E_CONFIG,
                   "cannot infer the block structure (%s); pass a config.json or preset "
                   "(--config)",
                   why);
}

/* Block count and layers per block from the names alone. */
static sdunet_status infer_structure(ictx *c)
{
    const sd_tensorfile *tf = c->tf;
    int nb, L;
    if (c->layout == SD_LAYOUT_LDM) {
        /* input_blocks: 0 is conv_in, then per down block L layers plus a
         * downsampler (not after the last block), so the first downsampler
         * ("N.0.op") sits at N = L + 1 and the last index is nb*(L+1) - 1. */
        const char *in = SD_LDM_UNET_PREFIX "input_blocks.";
        int M = max_index(tf, in);
        if (M < 1)
            return structure_error(c, "no " SD_LDM_UNET_PREFIX "input_blocks.N tensors");
        int first_op = -1;
        char want[128];
        for (int n = 1; n <= M && first_op < 0; n++) {
            snprintf(want, sizeof want, "%s%d.0.op.weight", in, n);
            if (sd_tensorfile_find(tf, want))
                first_op = n;
        }
        int per = first_op > 0 ? first_op : M + 1;
        L = per - 1;
        if (L < 1 || (M + 1) % per != 0)
            return structure_error(c, "input_blocks do not form blocks of equal length");
        nb = (M + 1) / per;
        int up = max_index(tf, SD_LDM_UNET_PREFIX "output_blocks.");
        if (up + 1 != nb * per)
            return structure_error(c, "output_blocks do not mirror input_blocks");
        if (first_op > 0)
            rep(c,
                "  blocks: %d, layers per block %d: input_blocks 0..%d, first downsampler "
                "%s%d.0.op.weight\n",
                nb, L, M, in, first_op);
        else
            rep(c, "  blocks: 1, layers per block %d: input_blocks 0..%d, no downsampler\n", L, M);
    } else {
        nb = max_index(tf, "down_blocks.") + 1;
        L = max_index(tf, "down_blocks.0.resnets.") + 1;
        if (nb < 1 || L < 1)
            return structure_error(c, "no down_blocks.N.resnets.M tensors");
        if (max_index(tf, "up_blocks.") + 1 != nb ||
            max_index(tf, "up_blocks.0.resnets.") + 1 != L + 1)
            return structure_error(c, "up_blocks do not mirror down_blocks");
        rep(c,
            "  blocks: %d, layers per block %d: down_blocks.0..%d, "
            "down_blocks.0.resnets.0..%d\n",
            nb, L, nb - 1, L - 1);
    }
    if (nb > SD_MAX_BLOCKS)
        return structure_error(c, "more blocks than supported");
    if (L > 16)
        return structure_error(c, "more layers per block than supported");
    c->probe.n_blocks = nb;
    c->probe.layers_per_block = L;
    /* Attention flags on for the probe, so attention names map at all. */
    for (int i = 0; i < nb; i++)
        c->probe.down_has_attn[i] = c->probe.up_has_attn[i] = 1;
    c->probe.mid_has_attn = 1;
    return SDUNET_OK;
}

static void list_ints(char *buf, size_t len, const int *v, int n)
{
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i < n && used + 1 < len; i++) {
        int w = snprintf(buf + used, len - used, "%s%d", i ? "," : "", v[i]);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

sdunet_status sd_config_infer(const sd_tensorfile *tf, sd_layout layout, sd_unet_config *cfg,
                              char *report, size_t report_len, sdunet_error *err)
{
    if (!tf || !cfg)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "sd_config_infer: NULL argument");
    if (report && report_len)
        report[0] = 0;
    if (layout == SD_LAYOUT_MIXED)
        return sd_fail(err, SDUNET_E_WEIGHTS,
                       "the file has both diffusers and LDM (model.diffusion_model.*) UNet names; "
                       "refusing to guess which to use");
    if (layout != SD_LAYOUT_LDM && layout != SD_LAYOUT_DIFFUSERS)
        return sd_fail(err, SDUNET_E_WEIGHTS,
                       "no UNet tensors (neither diffusers names such as conv_in.weight nor LDM "
                       "names under model.diffusion_model.)");
    ictx c = {.tf = tf, .layout = layout, .report = report, .report_len = report_len, .err = err};
    sdunet_status st = infer_structure(&c);
    if (st)
        return st;
    sd_unet_config *p = &c.probe;
    const int nb = p->n_blocks;
    char buf[256], buf2[256], list[96];

    /* Features outside the SD1.x/SD2.x family, named by what the file has. */
    const char *unet_prefix = layout == SD_LAYOUT_LDM ? SD_LDM_UNET_PREFIX : "";
    if (any_name_contains(tf, unet_prefix, ".transformer_blocks.1."))
        return sd_fail(err, SDUNET_E_CONFIG,
                       "several transformer layers per attention block (transformer_blocks.1, as "
                       "in SDXL): unsupported");
    if ((layout == SD_LAYOUT_LDM && max_index(tf, SD_LDM_UNET_PREFIX "label_emb.") >= 0) ||
        (layout == SD_LAYOUT_DIFFUSERS && (any_name_contains(tf, "add_embedding.", ".") ||
                                           any_name_contains(tf, "class_embedding.", "."))))
        return sd_fail(err, SDUNET_E_CONFIG,
                       "class or added embeddings (label_emb / add_embedding, as in SDXL): "
                       "unsupported");

    /* Which blocks have attention: the presence of their proj_in. */
    int down_attn[SD_MAX_BLOCKS] = {0}, up_attn[SD_MAX_BLOCKS] = {0};
    for (int i = 0; i < nb; i++) {
        down_attn[i] = get(&c, "down_blocks.%d.attentions.0.proj_in.weight", i) != NULL;
        up_attn[i] = get(&c, "up_blocks.%d.attentions.0.proj_in.weight", i) != NULL;
    }
    const char *mid_proj = "mid_block.attentions.0.proj_in.weight";
    const sd_tensor_info *mp = get(&c, "%s", mid_proj);
    if (!mp)
        return missing(&c, mid_proj, "mid block (only UNetMidBlock2DCrossAttn is supported)");
    memcpy(p->down_has_attn, down_attn, sizeof down_attn);
    memcpy(p->up_has_attn, up_attn, sizeof up_attn);
    list_ints(list, sizeof list, down_attn, nb);
    rep(&c, "  attention in down blocks (%s), ", list);
    list_ints(list, sizeof list, up_attn, nb);
    rep(&c, "up blocks (%s), mid block: from which blocks have a proj_in tensor\n", list);

    /* Channels: each down block's first resnet conv. */
    for (int i = 0; i < nb; i++) {
        snprintf(buf2, sizeof buf2, "down_blocks.%d.resnets.0.conv1.weight", i);
        const sd_tensor_info *t = get(&c, "%s", buf2);
        if (!t)
            return missing(&c, buf2, "block channels");
        if (t->ndim != 4 || t->shape[0] < 1 || t->shape[0] > 65536)
            return sd_fail(err, SDUNET_E_CONFIG,
                           "cannot infer the block channels: %s is not a "
                           "conv weight",
                           t->name);
        p->block_out_channels[i] = (int)t->shape[0];
    }
    list_ints(list, sizeof list, p->block_out_channels, nb);
    rep(&c, "  block_out_channels (%s): dim 0 of %s and its counterpart in every down block\n",
        list, file_name(&c, "down_blocks.0.resnets.0.conv1.weight", buf, sizeof buf));
    const int ch0 = p->block_out_channels[0];

    const sd_tensor_info *ci = get(&c, "conv_in.weight"), *co = get(&c, "conv_out.weight");
    if (!ci)
        return missing(&c, "conv_in.weight", "input channels");
    if (!co)
        return missing(&c, "conv_out.weight", "output channels");
    if (ci->ndim != 4 || ci->shape[0] != ch0 || ci->shape[1] < 1 || ci->shape[1] > 64 ||
        co->ndim != 4 || co->shape[1] != ch0 || co->shape[0] < 1 || co->shape[0] > 64)
        return sd_fail(err, SDUNET_E_CONFIG,
                       "cannot infer the in/out channels: %s or %s does not fit %d block channels",
                       ci->name, co->name, ch0);
    p->in_channels = (int)ci->shape[1];
    p->out_channels = (int)co->shape[0];
    rep(&c, "  in_channels %d, out_channels %d: dim 1 of %s, dim 0 of %s\n", p->in_channels,
        p->out_channels, ci->name, co->name);

    const sd_tensor_info *te = get(&c, "time_embedding.linear_1.weight");
    if (!te)
        return missing(&c, "time_embedding.linear_1.weight", "time embedding");
    if (te->ndim != 2 || te->shape[0] != 4 * (int64_t)ch0 || te->shape[1] != ch0)
        return sd_fail(err, SDUNET_E_CONFIG,
                       "time embedding %s is not (%d, %d) as in SD1.x/SD2.x: unsupported", te->name,
                       4 * ch0, ch0);
    p->time_embed_dim = 4 * ch0;

    const char *mid_k = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    const sd_tensor_info *tk = get(&c, "%s", mid_k);
    if (!tk)
        return missing(&c, mid_k, "cross-attention width");
    if (tk->ndim != 2 || tk->shape[1] < 1 || tk->shape[1] > 65536)
        return sd_fail(err, SDUNET_E_CONFIG, "cannot infer the cross-attention width from %s",
                       tk->name);
    p->cross_attention_dim = (int)tk->shape[1];
    rep(&c, "  cross_attention_dim %d: dim 1 of %s\n", p->cross_attention_dim, tk->name);

    if (mp->ndim == 2)
        p->use_linear_projection = 1;
    else if (mp->ndim == 4)
        p->use_linear_projection = 0;
    else
        return sd_fail(err, SDUNET_E_CONFIG, "cannot tell the projection kind: %s has %d dims",
                       mp->name, mp->ndim);
    rep(&c, "  use_linear_projection %s: %s has %d dims\n",
        p->use_linear_projection ? "true" : "false", mp->name, mp->ndim);

    /* Heads: the weights do not store them (q, k, v are full-width
     * matrices); the two known families fix them. */
    if (p->cross_attention_dim == 768) {
        for (int i = 0; i < nb; i++)
            p->heads[i] = 8;
        list_ints(list, sizeof list, p->heads, nb);
        rep(&c, "  heads (%s): SD1.x family (cross-attention width 768: 8 heads)\n", list);
    } else if (p->cross_attention_dim == 1024) {
        for (int i = 0; i < nb; i++) {
            int ch = p->block_out_channels[i];
            int used = p->down_has_attn[i] || p->up_has_attn[nb - 1 - i] || i == nb - 1;
            if (ch % 64 == 0)
                p->heads[i] = ch / 64;
            else if (!used)
                p->heads[i] = 1; /* no attention runs at this width */
            else
                return sd_fail(err, SDUNET_E_CONFIG,
                               "cannot infer the attention heads: cross-attention width 1024 "
                               "(SD2.x, head size 64) but block %d has %d channels; pass a "
                               "config.json or preset (--config)",
                               i, ch);
        }
        list_ints(list, sizeof list, p->heads, nb);
        rep(&c, "  heads (%s): SD2.x family (cross-attention width 1024: head size 64)\n", list);
    } else {
        return sd_fail(err, SDUNET_E_CONFIG,
                       "cannot infer the attention heads: cross-attention width %d is neither "
                       "SD1.x (768) nor SD2.x (1024); pass a config.json or preset (--config)",
                       p->cross_attention_dim);
    }

    p->norm_num_groups = 32;
    p->norm_eps = 1e-5f;
    p->flip_sin_to_cos = 1;
    p->freq_shift = 0;
    for (int i = 0; i < nb; i++)
        if (p->block_out_channels[i] % 32 != 0)
            return sd_fail(err, SDUNET_E_CONFIG,
                           "cannot infer norm_num_groups: block %d has %d channels, not a "
                           "multiple of the usual 32; pass a config.json or preset (--config)",
                           i, p->block_out_channels[i]);
    if (ch0 % 2 != 0)
        return sd_fail(err, SDUNET_E_CONFIG, "block_out_channels[0] = %d must be even", ch0);
    rep(&c, "  not stored in weights, the SD1.x/SD2.x values: norm_num_groups 32, norm_eps "
            "1e-5, flip_sin_to_cos true, freq_shift 0\n");
    *cfg = *p;
    return SDUNET_OK;
}

/* ---- finding the files ---- */

const char *sd_layout_name(sd_layout layout)
{
    switch (layout) {
    case SD_LAYOUT_DIFFUSERS: return "diffusers";
    case SD_LAYOUT_LDM: return "ldm (CompVis, model.diffusion_model.*)";
    case SD_LAYOUT_MIXED: return "mixed (both diffusers and ldm names)";
    default: return "unknown (no UNet tensors)";
    }
}

/* The weights of a diffusers folder: DIR/unet/ (a pipeline) before DIR/ (the
 * UNet's own folder); see sd_find_model_weights. */
static sdunet_status find_in_folder(const char *dir, const char *variant, sd_model_files *mf,
                                    sdunet_error *err)
{
    int r = sd_find_model_weights(dir, "unet", "diffusion_pytorch_model", variant, mf->weights,
                                  sizeof mf->weights, mf->beside, sizeof mf->beside);
    if (r < 0)
        return sd_fail(err, SDUNET_E_IO, "%s: path too long", dir);
    if (r == 0)
        return sd_fail(err, SDUNET_E_IO,
                       "%s: no UNet weights in this folder (looked for "
                       "diffusion_pytorch_model.%s%ssafetensors in %s/unet and %s)",
                       dir, variant ? variant : "", variant ? "." : "", dir, dir);
    return SDUNET_OK;
}

sdunet_status sd_model_files_open(const char *path, const char *variant, sd_model_files *mf,
                                  sdunet_error *err)
{
    if (!mf)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL model files");
    memset(mf, 0, sizeof *mf);
    if (!path || !*path)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL or empty weights path");
    if (variant && !*variant)
        variant = NULL; /* "" reads as no variant, like NULL */
    if (variant && !sd_valid_variant(variant))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "variant '%.64s' is not a plain name like fp16",
                       variant);
    struct stat st;
    if (stat(path, &st) != 0)
        return sd_fail(err, SDUNET_E_IO, "%s: cannot open: %s", path, strerror(errno));
    sdunet_status rc;
    if (S_ISDIR(st.st_mode)) {
        mf->is_folder = 1;
        if ((rc = find_in_folder(path, variant, mf, err)))
            return rc;
    } else {
        if (variant)
            return sd_fail(err, SDUNET_E_INVALID_ARG,
                           "%s: a variant ('%s') picks a file in a diffusers folder; this is a "
                           "file",
                           path, variant);
        if (strlen(path) >= sizeof mf->weights)
            return sd_fail(err, SDUNET_E_IO, "%s: path too long", path);
        snprintf(mf->weights, sizeof mf->weights, "%s", path);
        const char *slash = strrchr(path, '/');
        size_t dir = slash ? (size_t)(slash - path + 1) : 0;
        if (dir + sizeof "config.json" <= sizeof mf->beside) {
            memcpy(mf->beside, path, dir);
            memcpy(mf->beside + dir, "config.json", sizeof "config.json");
            if (!sd_is_regular(mf->beside))
                mf->beside[0] = 0;
        }
    }
    if ((rc = sd_share_open_file(mf->share, mf->weights, &mf->tf, err)))
        return rc;
    mf->layout = sd_detect_layout(mf->tf);
    return SDUNET_OK;
}

sdunet_status sd_model_files_config(sd_model_files *mf, const char *config, sdunet_error *err)
{
    if (!mf || !mf->tf)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "model files not open");
    mf->origin = SD_CONFIG_NONE;
    mf->config[0] = 0;
    mf->report[0] = 0;
    sdunet_status st;
    if (config) {
        if ((st = sd_config_load(config, &mf->cfg, err)))
            return st;
        snprintf(mf->config, sizeof mf->config, "%s", config);
        mf->origin = SD_CONFIG_EXPLICIT;
        return SDUNET_OK;
    }
    if (mf->beside[0]) {
        if ((st = sd_config_load(mf->beside, &mf->cfg, err)))
            return st;
        snprintf(mf->config, sizeof mf->config, "%s", mf->beside);
        mf->origin = SD_CONFIG_BESIDE;
        return SDUNET_OK;
    }
    st = sd_config_infer(mf->tf, mf->layout, &mf->cfg, mf->report, sizeof mf->report, err);
    if (st) {
        sd_err_prefix(err, mf->weights);
        return st;
    }
    mf->origin = SD_CONFIG_INFERRED;
    return SDUNET_OK;
}

void sd_model_files_close(sd_model_files *mf)
{
    if (!mf)
        return;
    sd_tensorfile_close(mf->tf);
    mf->tf = NULL;
}
