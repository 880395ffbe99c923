/* Config presets and diffusers config.json parsing. The parser accepts the
 * keys the SD1.x/SD2.x UNet family sets; a key that asks for a feature we
 * don't build (SDXL's added embeddings, several transformer layers per
 * block, ...) is an error naming the key, never silently ignored. */
#include "unet/config.h"
#include "io/json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void set_sd1_family(sd_unet_config *c, int ch0, int ch1, int ch2, int ch3)
{
    memset(c, 0, sizeof *c);
    c->in_channels = 4;
    c->out_channels = 4;
    c->n_blocks = 4;
    int ch[4] = {ch0, ch1, ch2, ch3};
    for (int i = 0; i < 4; i++) {
        c->block_out_channels[i] = ch[i];
        c->down_has_attn[i] = i < 3;
        c->up_has_attn[i] = i > 0;
        c->heads[i] = 8;
    }
    c->layers_per_block = 2;
    c->cross_attention_dim = 768;
    c->norm_num_groups = 32;
    c->norm_eps = 1e-5f;
    c->flip_sin_to_cos = 1;
    c->freq_shift = 0;
    c->mid_has_attn = 1;
    c->time_embed_dim = 4 * ch0;
}

sdunet_status sd_config_preset(const char *name, sd_unet_config *cfg, sdunet_error *err)
{
    if (!name || !cfg)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL preset name");
    if (strcmp(name, "sd15") == 0 || strcmp(name, "sd14") == 0 || strcmp(name, "sd1") == 0) {
        set_sd1_family(cfg, 320, 640, 1280, 1280);
        return SDUNET_OK;
    }
    if (strcmp(name, "sd21") == 0 || strcmp(name, "sd2") == 0 || strcmp(name, "sd20") == 0) {
        set_sd1_family(cfg, 320, 640, 1280, 1280);
        cfg->cross_attention_dim = 1024;
        cfg->use_linear_projection = 1;
        int heads[4] = {5, 10, 20, 20};
        memcpy(cfg->heads, heads, sizeof heads);
        return SDUNET_OK;
    }
    return sd_fail(err, SDUNET_E_CONFIG, "unknown preset '%s' (known: sd15, sd21)", name);
}

/* ---- JSON helpers ---- */

static sdunet_status get_int(const sd_json *root, const char *key, int lo, int hi, int *out,
                             sdunet_error *err)
{
    return sd_json_config_int(root, key, lo, hi, "config", out, err);
}

static sdunet_status get_bool(const sd_json *root, const char *key, int *out, sdunet_error *err)
{
    return sd_json_config_bool(root, key, "config", out, err);
}

/* A key that must hold a given string value (or be absent/null). */
static sdunet_status expect_string(const sd_json *root, const char *key, const char *want,
                                   sdunet_error *err)
{
    const sd_json *v = sd_json_get(root, key);
    if (!v || v->type == SD_JSON_NULL)
        return SDUNET_OK;
    if (v->type != SD_JSON_STRING || strcmp(v->string, want) != 0)
        return sd_fail(err, SDUNET_E_CONFIG, "config: '%s' must be \"%s\" (unsupported: %s%s%s)",
                       key, want, v->type == SD_JSON_STRING ? "\"" : "",
                       v->type == SD_JSON_STRING ? v->string : "a non-string value",
                       v->type == SD_JSON_STRING ? "\"" : "");
    return SDUNET_OK;
}

/* A key that must hold a given number (or be absent/null). */
static sdunet_status expect_number(const sd_json *root, const char *key, double want,
                                   sdunet_error *err)
{
    const sd_json *v = sd_json_get(root, key);
    if (!v || v->type == SD_JSON_NULL)
        return SDUNET_OK;
    if (v->type != SD_JSON_NUMBER || v->number != want)
        return sd_fail(err, SDUNET_E_CONFIG, "config: '%s' must be %g (other values unsupported)",
                       key, want);
    return SDUNET_OK;
}

/* An int, or a list of n ints all equal to `want`. */
static sdunet_status expect_int_or_list(const sd_json *root, const char *key, int want,
                                        sdunet_error *err)
{
    const sd_json *v = sd_json_get(root, key);
    if (!v || v->type == SD_JSON_NULL)
        return SDUNET_OK;
    if (v->type == SD_JSON_NUMBER && v->is_int && v->integer == want)
        return SDUNET_OK;
    if (v->type == SD_JSON_ARRAY) {
        size_t i;
        for (i = 0; i < v->len; i++)
            if (v->items[i].type != SD_JSON_NUMBER || !v->items[i].is_int ||
                v->items[i].integer != want)
                break;
        if (i == v->len)
            return SDUNET_OK;
    }
    return sd_fail(err, SDUNET_E_CONFIG, "config: '%s' must be %d (other values unsupported)", key,
                   want);
}

/* Keys we read or check; any other key must be null/false or start with '_'. */
static const char *const known_keys[] = {"act_fn",
                                         "addition_embed_type",
                                         "addition_embed_type_num_heads",
                                         "addition_time_embed_dim",
                                         "attention_head_dim",
                                         "attention_type",
                                         "block_out_channels",
                                         "center_input_sample",
                                         "class_embed_type",
                                         "class_embeddings_concat",
                                         "conv_in_kernel",
                                         "conv_out_kernel",
                                         "cross_attention_dim",
                                         "cross_attention_norm",
                                         "down_block_types",
                                         "downsample_padding",
                                         "dropout",
                                         "dual_cross_attention",
                                         "encoder_hid_dim",
                                         "encoder_hid_dim_type",
                                         "flip_sin_to_cos",
                                         "freq_shift",
                                         "in_channels",
                                         "layers_per_block",
                                         "mid_block_only_cross_attention",
                                         "mid_block_scale_factor",
                                         "mid_block_type",
                                         "norm_eps",
                                         "norm_num_groups",
                                         "num_attention_heads",
                                         "num_class_embeds",
                                         "only_cross_attention",
                                         "out_channels",
                                         "projection_class_embeddings_input_dim",
                                         "resnet_out_scale_factor",
                                         "resnet_skip_time_act",
                                         "resnet_time_scale_shift",
                                         "reverse_transformer_layers_per_block",
                                         "sample_size",
                                         "time_cond_proj_dim",
                                         "time_embedding_act_fn",
                                         "time_embedding_dim",
                                         "time_embedding_type",
                                         "timestep_post_act",
                                         "transformer_layers_per_block",
                                         "up_block_types",
                                         "upcast_attention",
                                         "use_linear_projection"};

static sdunet_status parse_root(const sd_json *root, sd_unet_config *c, sdunet_error *err)
{
    sdunet_status st;
    if (root->type != SD_JSON_OBJECT)
        return sd_fail(err, SDUNET_E_CONFIG, "config: top level must be a JSON object");

    for (size_t i = 0; i < root->len; i++) {
        const char *k = root->keys[i];
        if (k[0] == '_')
            continue;
        size_t j, nk = sizeof known_keys / sizeof known_keys[0];
        for (j = 0; j < nk; j++)
            if (strcmp(k, known_keys[j]) == 0)
                break;
        if (j == nk && !sd_json_null_or_false(&root->items[i]))
            return sd_fail(err, SDUNET_E_CONFIG, "config: unsupported key '%s'", k);
    }
    const sd_json *cls = sd_json_get(root, "_class_name");
    if (cls && cls->type == SD_JSON_STRING && strcmp(cls->string, "UNet2DConditionModel") != 0)
        return sd_fail(err, SDUNET_E_CONFIG, "config: _class_name '%s' is not UNet2DConditionModel",
                       cls->string);

    set_sd1_family(c, 320, 640, 1280, 1280);

    /* Features outside the SD1/SD2 family must be off. */
    static const char *const must_be_off[] = {"addition_embed_type",
                                              "addition_time_embed_dim",
                                              "class_embed_type",
                                              "num_class_embeds",
                                              "encoder_hid_dim",
                                              "encoder_hid_dim_type",
                                              "time_cond_proj_dim",
                                              "time_embedding_dim",
                                              "time_embedding_act_fn",
                                              "timestep_post_act",
                                              "projection_class_embeddings_input_dim",
                                              "cross_attention_norm",
                                              "reverse_transformer_layers_per_block",
                                              "num_attention_heads",
                                              "center_input_sample",
                                              "dual_cross_attention",
                                              "resnet_skip_time_act",
                                              "class_embeddings_concat",
                                              "mid_block_only_cross_attention"};
    for (size_t i = 0; i < sizeof must_be_off / sizeof must_be_off[0]; i++) {
        const sd_json *v = sd_json_get(root, must_be_off[i]);
        if (!sd_json_null_or_false(v))
            return sd_fail(err, SDUNET_E_CONFIG,
                           "config: '%s' is set; unsupported (SD1.x/SD2.x "
                           "UNets only)",
                           must_be_off[i]);
    }
    if ((st = expect_string(root, "act_fn", "silu", err)) ||
        (st = expect_string(root, "time_embedding_type", "positional", err)) ||
        (st = expect_string(root, "resnet_time_scale_shift", "default", err)) ||
        (st = expect_string(root, "attention_type", "default", err)) ||
        (st = expect_number(root, "conv_in_kernel", 3, err)) ||
        (st = expect_number(root, "conv_out_kernel", 3, err)) ||
        (st = expect_number(root, "downsample_padding", 1, err)) ||
        (st = expect_number(root, "mid_block_scale_factor", 1, err)) ||
        (st = expect_number(root, "resnet_out_scale_factor", 1, err)) ||
        (st = expect_int_or_list(root, "transformer_layers_per_block", 1, err)))
        return st;
    const sd_json *oca = sd_json_get(root, "only_cross_attention");
    if (oca && oca->type == SD_JSON_ARRAY) {
        for (size_t i = 0; i < oca->len; i++)
            if (!sd_json_null_or_false(&oca->items[i]))
                return sd_fail(err, SDUNET_E_CONFIG,
                               "config: 'only_cross_attention' is set; unsupported");
    } else if (!sd_json_null_or_false(oca)) {
        return sd_fail(err, SDUNET_E_CONFIG, "config: 'only_cross_attention' is set; unsupported");
    }

    if ((st = get_int(root, "in_channels", 1, 64, &c->in_channels, err)) ||
        (st = get_int(root, "out_channels", 1, 64, &c->out_channels, err)) ||
        (st = get_int(root, "norm_num_groups", 1, 1024, &c->norm_num_groups, err)) ||
        (st = get_int(root, "freq_shift", 0, 1, &c->freq_shift, err)) ||
        (st = get_int(root, "cross_attention_dim", 1, 65536, &c->cross_attention_dim, err)) ||
        (st = get_bool(root, "flip_sin_to_cos", &c->flip_sin_to_cos, err)) ||
        (st = get_bool(root, "use_linear_projection", &c->use_linear_projection, err)))
        return st;
    const sd_json *lpb = sd_json_get(root, "layers_per_block");
    if (lpb && lpb->type == SD_JSON_ARRAY)
        return sd_fail(err, SDUNET_E_CONFIG,
                       "config: 'layers_per_block' as a per-block list is unsupported");
    if ((st = get_int(root, "layers_per_block", 1, 16, &c->layers_per_block, err)))
        return st;
    const sd_json *eps = sd_json_get(root, "norm_eps");
    if (eps && eps->type != SD_JSON_NULL) {
        if (eps->type != SD_JSON_NUMBER || !(eps->number > 0) || eps->number > 1)
            return sd_fail(err, SDUNET_E_CONFIG, "config: 'norm_eps' must be a number in (0, 1]");
        c->norm_eps = (float)eps->number;
    }
    const sd_json *cad = sd_json_get(root, "cross_attention_dim");
    if (cad && cad->type == SD_JSON_ARRAY)
        return sd_fail(err, SDUNET_E_CONFIG,
                       "config: 'cross_attention_dim' as a per-block list is unsupported");

    /* block_out_channels and the block type lists */
    const sd_json *boc = sd_json_get(root, "block_out_channels");
    if (boc) {
        if (boc->type != SD_JSON_ARRAY || boc->len < 1 || boc->len > SD_MAX_BLOCKS)
            return sd_fail(err, SDUNET_E_CONFIG,
                           "config: 'block_out_channels' must be a list of 1..%d integers",
                           SD_MAX_BLOCKS);
        c->n_blocks = (int)boc->len;
        for (int i = 0; i < c->n_blocks; i++) {
            const sd_json *v = &boc->items[i];
            if (v->type != SD_JSON_NUMBER || !v->is_int || v->integer < 1 || v->integer > 65536)
                return sd_fail(err, SDUNET_E_CONFIG,
                               "config: 'block_out_channels' entries must be integers in 1..65536");
            c->block_out_channels[i] = (int)v->integer;
        }
    }
    const sd_json *dbt = sd_json_get(root, "down_block_types");
    const sd_json *ubt = sd_json_get(root, "up_block_types");
    if (dbt) {
        if (dbt->type != SD_JSON_ARRAY || (int)dbt->len != c->n_blocks)
            return sd_fail(err, SDUNET_E_CONFIG,
                           "config: 'down_block_types' must list %d block types", c->n_blocks);
        for (int i = 0; i < c->n_blocks; i++) {
            const sd_json *v = &dbt->items[i];
            if (v->type == SD_JSON_STRING && strcmp(v->string, "CrossAttnDownBlock2D") == 0)
                c->down_has_attn[i] = 1;
            else if (v->type == SD_JSON_STRING && strcmp(v->string, "DownBlock2D") == 0)
                c->down_has_attn[i] = 0;
            else
                return sd_fail(err, SDUNET_E_CONFIG,
                               "config: 'down_block_types'[%d] = %s%s%s is unsupported", i,
                               v->type == SD_JSON_STRING ? "\"" : "",
                               v->type == SD_JSON_STRING ? v->string : "(not a string)",
                               v->type == SD_JSON_STRING ? "\"" : "");
        }
    } else if (c->n_blocks != 4) {
        return sd_fail(err, SDUNET_E_CONFIG, "config: missing 'down_block_types'");
    }
    if (ubt) {
        if (ubt->type != SD_JSON_ARRAY || (int)ubt->len != c->n_blocks)
            return sd_fail(err, SDUNET_E_CONFIG,
                           "config: 'up_block_types' must list %d block types", c->n_blocks);
        for (int i = 0; i < c->n_blocks; i++) {
            const sd_json *v = &ubt->items[i];
            if (v->type == SD_JSON_STRING && strcmp(v->string, "CrossAttnUpBlock2D") == 0)
                c->up_has_attn[i] = 1;
            else if (v->type == SD_JSON_STRING && strcmp(v->string, "UpBlock2D") == 0)
                c->up_has_attn[i] = 0;
            else
                return sd_fail(err, SDUNET_E_CONFIG,
                               "config: 'up_block_types'[%d] = %s%s%s is unsupported", i,
                               v->type == SD_JSON_STRING ? "\"" : "",
                               v->type == SD_JSON_STRING ? v->string : "(not a string)",
                               v->type == SD_JSON_STRING ? "\"" : "");
        }
    } else if (c->n_blocks != 4) {
        return sd_fail(err, SDUNET_E_CONFIG, "config: missing 'up_block_types'");
    }
    const sd_json *mbt = sd_json_get(root, "mid_block_type");
    if (mbt && mbt->type != SD_JSON_NULL) {
        if (mbt->type != SD_JSON_STRING || strcmp(mbt->string, "UNetMidBlock2DCrossAttn") != 0)
            return sd_fail(err, SDUNET_E_CONFIG,
                           "config: 'mid_block_type' must be \"UNetMidBlock2DCrossAttn\"");
    }
    c->mid_has_attn = 1;

    /* attention_head_dim: in diffusers' UNet2DConditionModel it is (for
     * historical reasons) the number of heads, an int or one per block. */
    const sd_json *ahd = sd_json_get(root, "attention_head_dim");
    if (ahd && ahd->type != SD_JSON_NULL) {
        if (ahd->type == SD_JSON_NUMBER) {
            if (!ahd->is_int || ahd->integer < 1 || ahd->integer > 4096)
                return sd_fail(err, SDUNET_E_CONFIG,
                               "config: 'attention_head_dim' must be a positive integer");
            for (int i = 0; i < c->n_blocks; i++)
                c->heads[i] = (int)ahd->integer;
        } else if (ahd->type == SD_JSON_ARRAY && (int)ahd->len == c->n_blocks) {
            for (int i = 0; i < c->n_blocks; i++) {
                const sd_json *v = &ahd->items[i];
                if (v->type != SD_JSON_NUMBER || !v->is_int || v->integer < 1 || v->integer > 4096)
                    return sd_fail(
                        err, SDUNET_E_CONFIG,
                        "config: 'attention_head_dim' entries must be positive integers");
                c->heads[i] = (int)v->integer;
            }
        } else {
            return sd_fail(err, SDUNET_E_CONFIG,
                           "config: 'attention_head_dim' must be an integer or a list of %d",
                           c->n_blocks);
        }
    }
    c->time_embed_dim = 4 * c->block_out_channels[0];

    /* Consistency: group counts divide every channel count; heads divide the
     * channels of the blocks that have attention. */
    for (int i = 0; i < c->n_blocks; i++) {
        int ch = c->block_out_channels[i];
        if (ch % c->norm_num_groups != 0)
            return sd_fail(err, SDUNET_E_CONFIG,
                           "config: block_out_channels[%d] = %d is not divisible by "
                           "norm_num_groups = %d",
                           i, ch, c->norm_num_groups);
        if (ch % c->heads[i] != 0)
            return sd_fail(err, SDUNET_E_CONFIG,
                           "config: block_out_channels[%d] = %d is not divisible by its %d "
                           "attention heads",
                           i, ch, c->heads[i]);
    }
    if (c->block_out_channels[0] % 2 != 0)
        return sd_fail(err, SDUNET_E_CONFIG, "config: block_out_channels[0] must be even");
    for (int i = 0; i < c->n_blocks; i++) {
        /* up block i runs at channels block_out_channels[n-1-i] with heads[n-1-i] */
        int j = c->n_blocks - 1 - i;
        if (c->up_has_attn[i] && c->block_out_channels[j] % c->heads[j] != 0)
            return sd_fail(err, SDUNET_E_CONFIG,
                           "config: up block %d channels not divisible by "
                           "heads",
                           i);
    }
    return SDUNET_OK;
}

sdunet_status sd_config_parse(const char *json, size_t len, sd_unet_config *cfg, sdunet_error *err)
{
    if (!json || !cfg)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL config text");
    sd_json *root = NULL;
    sdunet_status st = sd_json_parse_config(json, len, "config", &root, err);
    if (st)
        return st;
    st = parse_root(root, cfg, err);
    sd_json_free(root);
    return st;
}

sdunet_status sd_config_load(const char *preset_or_path, sd_unet_config *cfg, sdunet_error *err)
{
    if (!preset_or_path || !cfg)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL config");
    /* A bare word is a preset name; anything with a path separator or an
     * extension is a file. */
    if (!strchr(preset_or_path, '/') && !strchr(preset_or_path, '.'))
        return sd_config_preset(preset_or_path, cfg, err);
    FILE *f = fopen(preset_or_path, "rb");
    if (!f)
        return sd_fail(err, SDUNET_E_IO, "%s: cannot open config: %s", preset_or_path,
                       strerror(errno));
    enum { MAX_CONFIG = 1 << 20 };
    char *buf = malloc(MAX_CONFIG + 1);
    if (!buf) {
        fclose(f);
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory reading config");
    }
    size_t n = fread(buf, 1, MAX_CONFIG + 1, f);
    int rerr = ferror(f);
    fclose(f);
    sdunet_status st;
    if (rerr)
        st = sd_fail(err, SDUNET_E_IO, "%s: read error", preset_or_path);
    else if (n > MAX_CONFIG)
        st = sd_fail(err, SDUNET_E_CONFIG, "%s: config larger than 1 MiB", preset_or_path);
    else {
        st = sd_config_parse(buf, n, cfg, err);
        if (st)
            sd_err_prefix(err, preset_or_path);
    }
    free(buf);
    return st;
}
