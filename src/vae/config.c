/* AutoencoderKL configuration: the SD preset and diffusers config.json.
 * Keys that would ask for a model this graph does not build (other block
 * types, activations, latent statistics) are errors naming the key. */
#include "vae/vae.h"
#include "io/json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sd_vae_config_sd(sd_vae_config *c)
{
    memset(c, 0, sizeof *c);
    c->in_channels = 3;
    c->out_channels = 3;
    c->latent_channels = 4;
    c->n_levels = 4;
    static const int ch[4] = {128, 256, 512, 512};
    memcpy(c->block_out_channels, ch, sizeof ch);
    c->layers_per_block = 2;
    c->norm_num_groups = 32;
    c->scaling_factor = 0.18215f;
    c->sample_size = 512;
    c->mid_attention = 1;
    c->use_quant_conv = 1;
    c->use_post_quant_conv = 1;
}

sdunet_status sd_vae_config_check(const sd_vae_config *c, sdunet_error *err)
{
    if (c->n_levels < 1 || c->n_levels > SD_VAE_MAX_LEVELS)
        return sd_fail(err, SDUNET_E_CONFIG,
                       "vae config: %d levels (block_out_channels) out of 1..%d", c->n_levels,
                       SD_VAE_MAX_LEVELS);
    if (c->layers_per_block < 1 || c->layers_per_block > SD_VAE_MAX_LAYERS)
        return sd_fail(err, SDUNET_E_CONFIG, "vae config: layers_per_block %d out of 1..%d",
                       c->layers_per_block, SD_VAE_MAX_LAYERS);
    if (c->in_channels < 1 || c->in_channels > 64 || c->out_channels < 1 || c->out_channels > 64 ||
        c->latent_channels < 1 || c->latent_channels > 1024)
        return sd_fail(err, SDUNET_E_CONFIG,
                       "vae config: channels in %d, out %d, latent %d out of range", c->in_channels,
                       c->out_channels, c->latent_channels);
    int G = c->norm_num_groups;
    if (G < 1 || G > 1024)
        return sd_fail(err, SDUNET_E_CONFIG, "vae config: norm_num_groups %d out of 1..1024", G);
    for (int i = 0; i < c->n_levels; i++) {
        int ch = c->block_out_channels[i];
        if (ch < 1 || ch > 8192 || ch % G)
            return sd_fail(err, SDUNET_E_CONFIG,
                           "vae config: block_out_channels[%d] = %d must be 1..8192 and a "
                           "multiple of norm_num_groups %d",
                           i, ch, G);
    }
    if (!isfinite(c->scaling_factor) || c->scaling_factor == 0 || !isfinite(c->shift_factor))
        return sd_fail(err, SDUNET_E_CONFIG,
                       "vae config: scaling_factor must be finite and non-zero");
    if (c->sample_size < 8 || c->sample_size > 65536)
        return sd_fail(err, SDUNET_E_CONFIG, "vae config: sample_size %d out of 8..65536",
                       c->sample_size);
    return SDUNET_OK;
}

static sdunet_status get_int(const sd_json *root, const char *key, int lo, int hi, int *out,
                             sdunet_error *err)
{
    return sd_json_config_int(root, key, lo, hi, "vae config", out, err);
}

static sdunet_status get_bool(const sd_json *root, const char *key, int *out, sdunet_error *err)
{
    return sd_json_config_bool(root, key, "vae config", out, err);
}

static sdunet_status get_float(const sd_json *root, const char *key, float *out, sdunet_error *err)
{
    return sd_json_config_float(root, key, "vae config", out, err);
}

/* Every entry of a block-type list must be `want`; the count must match. */
static sdunet_status check_types(const sd_json *root, const char *key, const char *want, int n,
                                 sdunet_error *err)
{
    const sd_json *v = sd_json_get(root, key);
    if (!v || v->type == SD_JSON_NULL)
        return SDUNET_OK;
    if (v->type != SD_JSON_ARRAY || (int)v->len != n)
        return sd_fail(err, SDUNET_E_CONFIG, "vae config: '%s' must list %d block types", key, n);
    for (size_t i = 0; i < v->len; i++)
        if (v->items[i].type != SD_JSON_STRING || strcmp(v->items[i].string, want) != 0)
            return sd_fail(err, SDUNET_E_CONFIG, "vae config: %s[%zu] is not %s (unsupported)", key,
                           i, want);
    return SDUNET_OK;
}

static sdunet_status parse_root(const sd_json *root, sd_vae_config *c, sdunet_error *err)
{
    if (root->type != SD_JSON_OBJECT)
        return sd_fail(err, SDUNET_E_CONFIG, "vae config: not a JSON object");
    const sd_json *cls = sd_json_get(root, "_class_name");
    if (cls && cls->type == SD_JSON_STRING && strcmp(cls->string, "AutoencoderKL") != 0)
        return sd_fail(err, SDUNET_E_CONFIG, "vae config: _class_name '%.64s' is not AutoencoderKL",
                       cls->string);
    sd_vae_config_sd(c);
    /* SD's VAE in the preset, diffusers' own defaults where a key is absent
     * (block_out_channels (64,), 1 layer per block) */
    c->n_levels = 1;
    c->block_out_channels[0] = 64;
    c->layers_per_block = 1;
    c->sample_size = 32;
    const sd_json *boc = sd_json_get(root, "block_out_channels");
    if (boc && boc->type != SD_JSON_NULL) {
        if (boc->type != SD_JSON_ARRAY || boc->len < 1 || boc->len > SD_VAE_MAX_LEVELS)
            return sd_fail(err, SDUNET_E_CONFIG,
                           "vae config: 'block_out_channels' must be a list of 1..%d integers",
                           SD_VAE_MAX_LEVELS);
        c->n_levels = (int)boc->len;
        for (size_t i = 0; i < boc->len; i++) {
            const sd_json *e = &boc->items[i];
            if (e->type != SD_JSON_NUMBER || !e->is_int || e->integer < 1 || e->integer > 8192)
                return sd_fail(err, SDUNET_E_CONFIG,
                               "vae config: block_out_channels[%zu] must be an integer in 1..8192",
                               i);
            c->block_out_channels[i] = (int)e->integer;
        }
    }
    sdunet_status st;
    if ((st = get_int(root, "in_channels", 1, 64, &c->in_channels, err)) ||
        (st = get_int(root, "out_channels", 1, 64, &c->out_channels, err)) ||
        (st = get_int(root, "latent_channels", 1, 1024, &c->latent_channels, err)) ||
        (st = get_int(root, "layers_per_block", 1, SD_VAE_MAX_LAYERS, &c->layers_per_block, err)) ||
        (st = get_int(root, "norm_num_groups", 1, 1024, &c->norm_num_groups, err)) ||
        (st = get_float(root, "scaling_factor", &c->scaling_factor, err)) ||
        (st = get_float(root, "shift_factor", &c->shift_factor, err)) ||
        (st = get_bool(root, "mid_block_add_attention", &c->mid_attention, err)) ||
        (st = get_bool(root, "use_quant_conv", &c->use_quant_conv, err)) ||
        (st = get_bool(root, "use_post_quant_conv", &c->use_post_quant_conv, err)) ||
        (st = check_types(root, "down_block_types", "DownEncoderBlock2D", c->n_levels, err)) ||
        (st = check_types(root, "up_block_types", "UpDecoderBlock2D", c->n_levels, err)))
        return st;
    const sd_json *ss = sd_json_get(root, "sample_size");
    if (ss && ss->type == SD_JSON_ARRAY && ss->len >= 1)
        ss = &ss->items[0]; /* (h, w): diffusers tiles with the first */
    if (ss && ss->type != SD_JSON_NULL) {
        if (ss->type != SD_JSON_NUMBER || !ss->is_int || ss->integer < 8 || ss->integer > 65536)
            return sd_fail(err, SDUNET_E_CONFIG,
                           "vae config: 'sample_size' must be an integer in 8..65536");
        c->sample_size = (int)ss->integer;
    }
    const sd_json *act = sd_json_get(root, "act_fn");
    if (act && act->type != SD_JSON_NULL &&
        (act->type != SD_JSON_STRING || strcmp(act->string, "silu") != 0))
        return sd_fail(err, SDUNET_E_CONFIG, "vae config: act_fn must be \"silu\"");
    static const char *const must_be_null[] = {"latents_mean", "latents_std"};
    for (size_t i = 0; i < sizeof must_be_null / sizeof must_be_null[0]; i++)
        if (!sd_json_null_or_false(sd_json_get(root, must_be_null[i])))
            return sd_fail(err, SDUNET_E_CONFIG, "vae config: '%s' is set; unsupported",
                           must_be_null[i]);
    return sd_vae_config_check(c, err);
}

sdunet_status sd_vae_config_parse(const char *json, size_t len, sd_vae_config *c, sdunet_error *err)
{
    if (!json || !c)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL vae config text");
    sd_json *root = NULL;
    sdunet_status st = sd_json_parse_config(json, len, "vae config", &root, err);
    if (st)
        return st;
    st = parse_root(root, c, err);
    sd_json_free(root);
    return st;
}

/* The whole of a config file (at most 1 MiB), malloc'd; NULL with err set. */
static char *read_config(const char *path, size_t *len, sdunet_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        sd_fail(err, SDUNET_E_IO, "%s: cannot open config: %s", path, strerror(errno));
        return NULL;
    }
    enum { MAX_CONFIG = 1 << 20 };
    char *buf = malloc(MAX_CONFIG + 1);
    if (!buf) {
        fclose(f);
        sd_fail(err, SDUNET_E_NOMEM, "out of memory reading config");
        return NULL;
    }
    size_t n = fread(buf, 1, MAX_CONFIG + 1, f);
    int rerr = ferror(f);
    fclose(f);
    if (rerr || n > MAX_CONFIG) {
        if (rerr)
            sd_fail(err, SDUNET_E_IO, "%s: read error", path);
        else
            sd_fail(err, SDUNET_E_CONFIG, "%s: config larger than 1 MiB", path);
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

sdunet_status sd_vae_config_load(const char *preset_or_path, sd_vae_config *c, sdunet_error *err)
{
    if (!preset_or_path || !c)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL vae config");
    if (!strchr(preset_or_path, '/') && !strchr(preset_or_path, '.')) {
        static const char *const sd[] = {"sd", "sd14", "sd15", "sd1", "sd2", "sd20", "sd21"};
        for (size_t i = 0; i < sizeof sd / sizeof sd[0]; i++)
            if (strcmp(preset_or_path, sd[i]) == 0) {
                sd_vae_config_sd(c);
                return SDUNET_OK;
            }
        return sd_fail(err, SDUNET_E_CONFIG, "unknown VAE preset '%.64s' (known: sd15, sd21)",
                       preset_or_path);
    }
    size_t n;
    char *buf = read_config(preset_or_path, &n, err);
    if (!buf)
        return err ? err->code : SDUNET_E_IO;
    sdunet_status st = sd_vae_config_parse(buf, n, c, err);
    if (st)
        sd_err_prefix(err, preset_or_path);
    free(buf);
    return st;
}

sdunet_status sd_vae_config_load_beside(const char *path, sd_vae_config *c, int *used,
                                        sdunet_error *err)
{
    *used = 0;
    size_t n;
    char *buf = read_config(path, &n, err);
    if (!buf)
        return err ? err->code : SDUNET_E_IO;
    sd_json *root = NULL;
    sdunet_status st = SDUNET_OK;
    /* unparsable or another model's: not this VAE's configuration */
    if (sd_json_parse(buf, n, &root, NULL) == SDUNET_OK) {
        const sd_json *cls = sd_json_get(root, "_class_name");
        if (cls && cls->type == SD_JSON_STRING && strcmp(cls->string, "AutoencoderKL") == 0) {
            *used = 1;
            st = parse_root(root, c, err);
            if (st)
                sd_err_prefix(err, path);
        }
    }
    sd_json_free(root);
    free(buf);
    return st;
}
