/* The VAE's tensor names: diffusers AutoencoderKL names and the CompVis/LDM
 * ones (standalone VAE files, and first_stage_model.* inside single-file SD
 * checkpoints), finding the VAE in a file, and the configuration its
 * shapes imply.
 *
 * LDM differs from diffusers in block names only (down.N.block.M,
 * up.N.block.M with up numbered from the full-resolution level, mid.block_1,
 * mid.attn_1 with q/k/v/proj_out, nin_shortcut, norm_out) and stores the
 * attention projections as 1x1 convolutions (C, C, 1, 1). */
#include "vae/vae.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Reads "<digits>." at *p; advances past the dot. -1 if not there. */
static int read_index(const char **p)
{
    const char *s = *p;
    long v = 0;
    if (*s < '0' || *s > '9')
        return -1;
    while (*s >= '0' && *s <= '9') {
        v = v * 10 + (*s++ - '0');
        if (v > 100000)
            return -1;
    }
    if (*s != '.')
        return -1;
    *p = s + 1;
    return (int)v;
}

static int starts(const char **p, const char *prefix)
{
    size_t n = strlen(prefix);
    if (strncmp(*p, prefix, n) != 0)
        return 0;
    *p += n;
    return 1;
}

static int put(char *out, size_t outlen, const char *fmt, ...) SD_PRINTF(3, 4);
static int put(char *out, size_t outlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, outlen, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= outlen) {
        if (outlen)
            out[0] = 0;
        return 0;
    }
    return 1;
}

/* A resnet's own part: norm1, conv1, norm2, conv2 as they are,
 * conv_shortcut -> nin_shortcut. */
static const char *resnet_part(const char *rest, char *buf, size_t len)
{
    const char *p = rest;
    if (starts(&p, "conv_shortcut."))
        return put(buf, len, "nin_shortcut.%s", p) ? buf : NULL;
    static const char *const same[] = {"norm1.", "conv1.", "norm2.", "conv2."};
    for (size_t i = 0; i < 4; i++)
        if (strncmp(rest, same[i], strlen(same[i])) == 0)
            return rest;
    return NULL;
}

/* The mid block below "<coder>.mid_block.". */
static int map_mid(const char *coder, const char *p, char *out, size_t outlen)
{
    char buf[160];
    if (starts(&p, "resnets.")) {
        int j = read_index(&p);
        const char *r = resnet_part(p, buf, sizeof buf);
        if ((j != 0 && j != 1) || !r)
            return 0;
        return put(out, outlen, "%s.mid.block_%d.%s", coder, j + 1, r);
    }
    if (!starts(&p, "attentions.0."))
        return 0;
    static const char *const pairs[][2] = {
        {"group_norm.", "norm."},   {"to_q.", "q."},  {"to_k.", "k."}, {"to_v.", "v."},
        {"to_out.0.", "proj_out."}, {"query.", "q."}, {"key.", "k."},  {"value.", "v."},
        {"proj_attn.", "proj_out."}};
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        const char *q = p;
        if (starts(&q, pairs[i][0]))
            return put(out, outlen, "%s.mid.attn_1.%s%s", coder, pairs[i][1], q);
    }
    return 0;
}

int sd_vae_diffusers_to_ldm(int n_levels, const char *name, char *out, size_t outlen)
{
    if (!name || !out || outlen == 0)
        return 0;
    out[0] = 0;
    const char *p = name;
    char buf[160];
    if (starts(&p, "quant_conv.") || starts(&p, "post_quant_conv."))
        return put(out, outlen, "%s", name);
    const char *coder;
    if (starts(&p, "encoder."))
        coder = "encoder";
    else if (starts(&p, "decoder."))
        coder = "decoder";
    else
        return 0;
    const int enc = coder[0] == 'e';
    if (!strncmp(p, "conv_in.", 8) || !strncmp(p, "conv_out.", 9))
        return put(out, outlen, "%s", name);
    if (starts(&p, "conv_norm_out."))
        return put(out, outlen, "%s.norm_out.%s", coder, p);
    if (starts(&p, "mid_block."))
        return map_mid(coder, p, out, outlen);
    if (starts(&p, enc ? "down_blocks." : "up_blocks.")) {
        int i = read_index(&p);
        if (i < 0 || i >= n_levels)
            return 0;
        int level = enc ? i : n_levels - 1 - i;
        const char *lvl = enc ? "down" : "up";
        if (starts(&p, "resnets.")) {
            int j = read_index(&p);
            const char *r = j >= 0 ? resnet_part(p, buf, sizeof buf) : NULL;
            if (!r)
                return 0;
            return put(out, outlen, "%s.%s.%d.block.%d.%s", coder, lvl, level, j, r);
        }
        if (starts(&p, enc ? "downsamplers.0.conv." : "upsamplers.0.conv."))
            return put(out, outlen, "%s.%s.%d.%s.conv.%s", coder, lvl, level,
                       enc ? "downsample" : "upsample", p);
    }
    return 0;
}

static const char *const attn_new[4] = {"to_q.", "to_k.", "to_v.", "to_out.0."};
static const char *const attn_old[4] = {"query.", "key.", "value.", "proj_attn."};

int sd_vae_file_name(const sd_vae_names *names, const char *diffusers, char *out, size_t outlen)
{
    if (names->layout == SD_VAE_LAYOUT_LDM) {
        char ldm[256];
        if (!sd_vae_diffusers_to_ldm(names->n_levels, diffusers, ldm, sizeof ldm))
            return 0;
        return put(out, outlen, "%s%s", names->prefix, ldm);
    }
    if (names->deprecated_attn) {
        const char *a = strstr(diffusers, ".mid_block.attentions.0.");
        if (a) {
            const char *rest = a + strlen(".mid_block.attentions.0.");
            for (int i = 0; i < 4; i++)
                if (strncmp(rest, attn_new[i], strlen(attn_new[i])) == 0)
                    return put(out, outlen, "%s%.*s%s%s", names->prefix, (int)(rest - diffusers),
                               diffusers, attn_old[i], rest + strlen(attn_new[i]));
        }
    }
    return put(out, outlen, "%s%s", names->prefix, diffusers);
}

static int has_prefix(const sd_tensorfile *tf, const char *prefix)
{
    /* The table is sorted: the first name >= prefix decides. */
    size_t lo = 0, hi = tf->count, n = strlen(prefix);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(tf->tensors[mid].name, prefix) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < tf->count && strncmp(tf->tensors[lo].name, prefix, n) == 0;
}

static int find2(const sd_tensorfile *tf, const char *a, const char *b)
{
    char name[160];
    snprintf(name, sizeof name, "%s%s", a, b);
    return sd_tensorfile_find(tf, name) != NULL;
}

void sd_vae_detect(const sd_tensorfile *tf, sd_vae_names *names, char *what, size_t what_len)
{
    memset(names, 0, sizeof *names);
    if (what && what_len)
        what[0] = 0;
    /* The prefix: whatever precedes decoder.conv_in.weight (every layout
     * has that name; the UNet and text encoders have nothing like it). */
    static const char key[] = "decoder.conv_in.weight";
    const size_t kl = sizeof key - 1;
    int found = 0;
    for (size_t k = 0; k < tf->count && !found; k++) {
        const char *n = tf->tensors[k].name;
        size_t l = strlen(n);
        if (l < kl || strcmp(n + l - kl, key) != 0 || l - kl >= sizeof names->prefix)
            continue;
        if (l > kl && n[l - kl - 1] != '.')
            continue;
        memcpy(names->prefix, n, l - kl);
        names->prefix[l - kl] = 0;
        found = 1;
    }
    if (!found) {
        if (what)
            snprintf(what, what_len,
                     "no VAE tensors: looked for decoder.conv_in.weight (diffusers AutoencoderKL "
                     "or LDM names), also under a prefix such as first_stage_model.");
        return;
    }
    char pre[64];
    snprintf(pre, sizeof pre, "%sdecoder.up_blocks.", names->prefix);
    int diff = has_prefix(tf, pre);
    snprintf(pre, sizeof pre, "%sencoder.down_blocks.", names->prefix);
    diff = diff || has_prefix(tf, pre);
    snprintf(pre, sizeof pre, "%sdecoder.up.", names->prefix);
    int ldm = has_prefix(tf, pre);
    snprintf(pre, sizeof pre, "%sencoder.down.", names->prefix);
    ldm = ldm || has_prefix(tf, pre);
    if (diff == ldm) {
        if (what)
            snprintf(what, what_len,
                     "%s VAE block names under '%s': expected decoder.up_blocks.* (diffusers) or "
                     "decoder.up.* (LDM)",
                     diff ? "both diffusers and LDM" : "no", names->prefix);
        names->prefix[0] = 0;
        return;
    }
    names->layout = diff ? SD_VAE_LAYOUT_DIFFUSERS : SD_VAE_LAYOUT_LDM;
    if (diff) {
        snprintf(pre, sizeof pre, "%sdecoder.mid_block.attentions.0.", names->prefix);
        names->deprecated_attn = find2(tf, pre, "query.weight") && !find2(tf, pre, "to_q.weight");
    }
}

/* Largest N in names "<prefix>N." (-1 when none). */
static int max_index(const sd_tensorfile *tf, const char *prefix)
{
    size_t pl = strlen(prefix);
    int m = -1;
    for (size_t k = 0; k < tf->count; k++) {
        const char *p = tf->tensors[k].name;
        if (strncmp(p, prefix, pl) != 0)
            continue;
        p += pl;
        int v = read_index(&p);
        if (v > m)
            m = v;
    }
    return m;
}

static const sd_tensor_info *get_t(const sd_tensorfile *tf, const sd_vae_names *names,
                                   const char *diffusers, int ndim)
{
    char fn[256];
    if (!sd_vae_file_name(names, diffusers, fn, sizeof fn))
        return NULL;
    const sd_tensor_info *t = sd_tensorfile_find(tf, fn);
    return t && t->ndim == ndim ? t : NULL;
}

sdunet_status sd_vae_config_infer(const sd_tensorfile *tf, const sd_vae_names *file_names,
                                  sd_vae_config *c, sdunet_error *err)
{
    sd_vae_config_sd(c);
    sd_vae_names nm = *file_names, *names = &nm;
    const int ldm = names->layout == SD_VAE_LAYOUT_LDM;
    char pre[96];
    snprintf(pre, sizeof pre, "%s%s", names->prefix,
             ldm ? "encoder.down." : "encoder.down_blocks.");
    int nl = max_index(tf, pre) + 1;
    if (nl < 1 || nl > SD_VAE_MAX_LEVELS)
        return sd_fail(err, SDUNET_E_CONFIG,
                       "cannot infer the VAE's levels: %d %s* blocks (1..%d supported); pass a "
                       "config.json",
                       nl, pre, SD_VAE_MAX_LEVELS);
    snprintf(pre, sizeof pre, "%s%s", names->prefix,
             ldm ? "encoder.down.0.block." : "encoder.down_blocks.0.resnets.");
    int lpb = max_index(tf, pre) + 1;
    if (lpb < 1 || lpb > SD_VAE_MAX_LAYERS)
        return sd_fail(err, SDUNET_E_CONFIG,
                       "cannot infer the VAE's layers per block from %s*; pass a config.json", pre);
    c->n_levels = nl;
    c->layers_per_block = lpb;
    nm.n_levels = nl; /* the LDM map numbers decoder levels from the end */
    char name[128];
    for (int i = 0; i < nl; i++) {
        snprintf(name, sizeof name, "encoder.down_blocks.%d.resnets.0.conv1.weight", i);
        const sd_tensor_info *t = get_t(tf, names, name, 4);
        if (!t || t->shape[0] < 1 || t->shape[0] > 8192)
            return sd_fail(err, SDUNET_E_CONFIG,
                           "cannot infer block_out_channels[%d]: no 4-d tensor for %s; pass a "
                           "config.json",
                           i, name);
        c->block_out_channels[i] = (int)t->shape[0];
    }
    const sd_tensor_info *ei = get_t(tf, names, "encoder.conv_in.weight", 4);
    const sd_tensor_info *di = get_t(tf, names, "decoder.conv_in.weight", 4);
    const sd_tensor_info *dout = get_t(tf, names, "decoder.conv_out.weight", 4);
    if (!ei || !di || !dout)
        return sd_fail(err, SDUNET_E_CONFIG,
                       "cannot infer the VAE's channels: need 4-d encoder.conv_in, "
                       "decoder.conv_in and decoder.conv_out weights; pass a config.json");
    if (ei->shape[1] > 64 || di->shape[1] > 1024 || dout->shape[0] > 64)
        return sd_fail(err, SDUNET_E_CONFIG, "VAE channels out of range in the weights");
    c->in_channels = (int)ei->shape[1];
    c->latent_channels = (int)di->shape[1];
    c->out_channels = (int)dout->shape[0];
    c->use_quant_conv = get_t(tf, names, "quant_conv.weight", 4) != NULL;
    c->use_post_quant_conv = get_t(tf, names, "post_quant_conv.weight", 4) != NULL;
    snprintf(name, sizeof name, "%s%s", names->prefix,
             ldm ? "decoder.mid.attn_1." : "decoder.mid_block.attentions.0.");
    c->mid_attention = has_prefix(tf, name);
    sdunet_status st = sd_vae_config_check(c, err);
    if (st)
        sd_err_prefix(err, "inferred from the weights");
    return st;
}
