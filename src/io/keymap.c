/* LDM <-> diffusers UNet weight names.
 *
 * LDM numbers the UNet's blocks flatly: input_blocks[0] is conv_in, then
 * each down block i contributes layers_per_block blocks (.0 resnet, .1
 * attention when the block has one) plus, except for the last block, one
 * downsampler block (.0.op); so down block i, layer j is input_blocks
 * [1 + i*(L+1) + j] and its downsampler input_blocks[(i+1)*(L+1)]. The up
 * path has L+1 layers per block and no separate upsampler block: up block
 * i, layer j is output_blocks[i*(L+1) + j] (.0 resnet, .1 attention), and
 * the upsampler is the next sub-index (.1 or .2, ".conv") of the block's
 * last layer. middle_block.0/1/2 are resnet 0, attention, resnet 1. Inside
 * resnets the sequential indices are renamed (in_layers.0 = norm1, ...);
 * attention internals keep their names. */
#include "io/keymap.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define MAX_INDEX 100000

/* Consumes `lit` at *s. */
static int eat(const char **s, const char *lit)
{
    size_t n = strlen(lit);
    if (strncmp(*s, lit, n) != 0)
        return 0;
    *s += n;
    return 1;
}

/* Consumes a canonical decimal index followed by '.' (no sign, no leading
 * zeros, so every index has exactly one spelling and round trips). */
static int eat_index(const char **s, int *v)
{
    const char *p = *s;
    if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9'))
        return 0;
    long x = 0;
    while (*p >= '0' && *p <= '9') {
        x = x * 10 + (*p++ - '0');
        if (x > MAX_INDEX)
            return 0;
    }
    if (*p != '.')
        return 0;
    *s = p + 1;
    *v = (int)x;
    return 1;
}

/* The parameter name that ends every weight name. */
static int is_param(const char *s)
{
    return strcmp(s, "weight") == 0 || strcmp(s, "bias") == 0;
}

/* Resnet sub-modules: LDM's Sequential indices and diffusers' names. */
static const char *const resnet_map[][2] = {
    {"in_layers.0.", "norm1."},          {"in_layers.2.", "conv1."},
    {"emb_layers.1.", "time_emb_proj."}, {"out_layers.0.", "norm2."},
    {"out_layers.3.", "conv2."},         {"skip_connection.", "conv_shortcut."},
};

/* Translates a resnet-relative name (`from` side 0 = LDM, 1 = diffusers);
 * returns the other side's module prefix and sets *param, or NULL. */
static const char *resnet_rename(const char *s, int from, const char **param)
{
    for (size_t k = 0; k < sizeof resnet_map / sizeof resnet_map[0]; k++) {
        const char *p = s;
        if (eat(&p, resnet_map[k][from]) && is_param(p)) {
            *param = p;
            return resnet_map[k][!from];
        }
    }
    return NULL;
}

/* Attention (SpatialTransformer / Transformer2DModel) internals are named
 * alike in both layouts; only known modules are accepted. */
static int attn_valid(const char *s)
{
    static const char *const outer[] = {"norm.", "proj_in.", "proj_out."};
    static const char *const inner[] = {
        "norm1.",          "norm2.",          "norm3.",      "attn1.to_q.", "attn1.to_k.",
        "attn1.to_v.",     "attn1.to_out.0.", "attn2.to_q.", "attn2.to_k.", "attn2.to_v.",
        "attn2.to_out.0.", "ff.net.0.proj.",  "ff.net.2.",
    };
    for (size_t k = 0; k < sizeof outer / sizeof outer[0]; k++) {
        const char *p = s;
        if (eat(&p, outer[k]) && is_param(p))
            return 1;
    }
    int t;
    if (!eat(&s, "transformer_blocks.") || !eat_index(&s, &t))
        return 0;
    for (size_t k = 0; k < sizeof inner / sizeof inner[0]; k++) {
        const char *p = s;
        if (eat(&p, inner[k]) && is_param(p))
            return 1;
    }
    return 0;
}

/* Writes fmt into out; -1 when it does not fit. */
static int emit(char *out, size_t outlen, const char *fmt, ...) SD_PRINTF(3, 4);
static int emit(char *out, size_t outlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, outlen, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= outlen) {
        out[0] = 0;
        return -1;
    }
    return 1;
}

static int cfg_ok(const sd_unet_config *cfg)
{
    return cfg->n_blocks >= 1 && cfg->n_blocks <= SD_MAX_BLOCKS && cfg->layers_per_block >= 1 &&
           cfg->layers_per_block <= 64;
}

int sd_ldm_to_diffusers(const sd_unet_config *cfg, const char *ldm_name, char *out, size_t outlen)
{
    if (out && outlen)
        out[0] = 0;
    const char *s = ldm_name;
    if (!s || !eat(&s, SD_LDM_UNET_PREFIX))
        return 0;
    if (!cfg || !out || !outlen || !cfg_ok(cfg))
        return -1;
    const int L = cfg->layers_per_block, per = L + 1, nb = cfg->n_blocks;
    const char *mod, *param = NULL;
    int n, sub;

    if (eat(&s, "time_embed.")) {
        if (eat(&s, "0.") && is_param(s))
            return emit(out, outlen, "time_embedding.linear_1.%s", s);
        if (eat(&s, "2.") && is_param(s))
            return emit(out, outlen, "time_embedding.linear_2.%s", s);
        return -1;
    }
    if (eat(&s, "out.")) {
        if (eat(&s, "0.") && is_param(s))
            return emit(out, outlen, "conv_norm_out.%s", s);
        if (eat(&s, "2.") && is_param(s))
            return emit(out, outlen, "conv_out.%s", s);
        return -1;
    }
    if (eat(&s, "input_blocks.")) {
        if (!eat_index(&s, &n) || !eat_index(&s, &sub))
            return -1;
        if (n == 0)
            return sub == 0 && is_param(s) ? emit(out, outlen, "conv_in.%s", s) : -1;
        int i = (n - 1) / per, j = (n - 1) % per;
        if (i >= nb)
            return -1;
        if (j < L) {
            if (sub == 0 && (mod = resnet_rename(s, 0, &param)))
                return emit(out, outlen, "down_blocks.%d.resnets.%d.%s%s", i, j, mod, param);
            if (sub == 1 && cfg->down_has_attn[i] && attn_valid(s))
                return emit(out, outlen, "down_blocks.%d.attentions.%d.%s", i, j, s);
            return -1;
        }
        if (i < nb - 1 && sub == 0 && eat(&s, "op.") && is_param(s))
            return emit(out, outlen, "down_blocks.%d.downsamplers.0.conv.%s", i, s);
        return -1;
    }
    if (eat(&s, "middle_block.")) {
        if (!cfg->mid_has_attn || !eat_index(&s, &sub))
            return -1;
        if ((sub == 0 || sub == 2) && (mod = resnet_rename(s, 0, &param)))
            return emit(out, outlen, "mid_block.resnets.%d.%s%s", sub / 2, mod, param);
        if (sub == 1 && attn_valid(s))
            return emit(out, outlen, "mid_block.attentions.0.%s", s);
        return -1;
    }
    if (eat(&s, "output_blocks.")) {
        if (!eat_index(&s, &n) || !eat_index(&s, &sub))
            return -1;
        int i = n / per, j = n % per;
        if (i >= nb)
            return -1;
        int attn = cfg->up_has_attn[i];
        if (sub == 0 && (mod = resnet_rename(s, 0, &param)))
            return emit(out, outlen, "up_blocks.%d.resnets.%d.%s%s", i, j, mod, param);
        if (sub == 1 && attn && attn_valid(s))
            return emit(out, outlen, "up_blocks.%d.attentions.%d.%s", i, j, s);
        if (sub == 1 + attn && j == L && i < nb - 1 && eat(&s, "conv.") && is_param(s))
            return emit(out, outlen, "up_blocks.%d.upsamplers.0.conv.%s", i, s);
        return -1;
    }
    return -1;
}

/* Top-level modules of diffusers' UNet2DConditionModel (including ones
 * this library does not support, which map to -1 rather than 0). */
static const char *const diffusers_modules[] = {
    "conv_in.",   "time_proj.",       "time_embedding.", "down_blocks.",
    "mid_block.", "up_blocks.",       "conv_norm_out.",  "conv_act.",
    "conv_out.",  "class_embedding.", "add_embedding.",  "encoder_hid_proj.",
};

static int is_diffusers_unet_name(const char *s)
{
    for (size_t k = 0; k < sizeof diffusers_modules / sizeof diffusers_modules[0]; k++)
        if (strncmp(s, diffusers_modules[k], strlen(diffusers_modules[k])) == 0)
            return 1;
    return 0;
}

int sd_diffusers_to_ldm(const sd_unet_config *cfg, const char *diffusers_name, char *out,
                        size_t outlen)
{
    if (out && outlen)
        out[0] = 0;
    const char *s = diffusers_name;
    if (!s || !is_diffusers_unet_name(s))
        return 0;
    if (!cfg || !out || !outlen || !cfg_ok(cfg))
        return -1;
    const int L = cfg->layers_per_block, per = L + 1, nb = cfg->n_blocks;
    const char *mod, *param = NULL;
    int i, j;
#define LDM SD_LDM_UNET_PREFIX

    if (eat(&s, "conv_in."))
        return is_param(s) ? emit(out, outlen, LDM "input_blocks.0.0.%s", s) : -1;
    if (eat(&s, "conv_norm_out."))
        return is_param(s) ? emit(out, outlen, LDM "out.0.%s", s) : -1;
    if (eat(&s, "conv_out."))
        return is_param(s) ? emit(out, outlen, LDM "out.2.%s", s) : -1;
    if (eat(&s, "time_embedding.")) {
        if (eat(&s, "linear_1.") && is_param(s))
            return emit(out, outlen, LDM "time_embed.0.%s", s);
        if (eat(&s, "linear_2.") && is_param(s))
            return emit(out, outlen, LDM "time_embed.2.%s", s);
        return -1;
    }
    if (eat(&s, "down_blocks.")) {
        if (!eat_index(&s, &i) || i >= nb)
            return -1;
        if (eat(&s, "resnets.")) {
            if (eat_index(&s, &j) && j < L && (mod = resnet_rename(s, 1, &param)))
                return emit(out, outlen, LDM "input_blocks.%d.0.%s%s", 1 + i * per + j, mod, param);
            return -1;
        }
        if (eat(&s, "attentions.")) {
            if (eat_index(&s, &j) && j < L && cfg->down_has_attn[i] && attn_valid(s))
                return emit(out, outlen, LDM "input_blocks.%d.1.%s", 1 + i * per + j, s);
            return -1;
        }
        if (eat(&s, "downsamplers.0.conv.") && i < nb - 1 && is_param(s))
            return emit(out, outlen, LDM "input_blocks.%d.0.op.%s", (i + 1) * per, s);
        return -1;
    }
    if (eat(&s, "mid_block.")) {
        if (!cfg->mid_has_attn)
            return -1;
        if (eat(&s, "resnets.")) {
            if (eat_index(&s, &j) && j < 2 && (mod = resnet_rename(s, 1, &param)))
                return emit(out, outlen, LDM "middle_block.%d.%s%s", 2 * j, mod, param);
            return -1;
        }
        if (eat(&s, "attentions.0.") && attn_valid(s))
            return emit(out, outlen, LDM "middle_block.1.%s", s);
        return -1;
    }
    if (eat(&s, "up_blocks.")) {
        if (!eat_index(&s, &i) || i >= nb)
            return -1;
        int attn = cfg->up_has_attn[i];
        if (eat(&s, "resnets.")) {
            if (eat_index(&s, &j) && j <= L && (mod = resnet_rename(s, 1, &param)))
                return emit(out, outlen, LDM "output_blocks.%d.0.%s%s", i * per + j, mod, param);
            return -1;
        }
        if (eat(&s, "attentions.")) {
            if (eat_index(&s, &j) && j <= L && attn && attn_valid(s))
                return emit(out, outlen, LDM "output_blocks.%d.1.%s", i * per + j, s);
            return -1;
        }
        if (eat(&s, "upsamplers.0.conv.") && i < nb - 1 && is_param(s))
            return emit(out, outlen, LDM "output_blocks.%d.%d.conv.%s", i * per + L, 1 + attn, s);
        return -1;
    }
#undef LDM
    return -1;
}

sd_layout sd_detect_layout(const sd_tensorfile *tf)
{
    if (!tf)
        return SD_LAYOUT_UNKNOWN;
    size_t ldm = 0, diff = 0;
    for (size_t k = 0; k < tf->count; k++) {
        const char *name = tf->tensors[k].name;
        if (!name)
            continue;
        if (strncmp(name, SD_LDM_UNET_PREFIX, strlen(SD_LDM_UNET_PREFIX)) == 0)
            ldm++;
        else if (is_diffusers_unet_name(name))
            diff++;
    }
    if (ldm && diff)
        return SD_LAYOUT_MIXED;
    if (ldm)
        return SD_LAYOUT_LDM;
    if (diff)
        return SD_LAYOUT_DIFFUSERS;
    return SD_LAYOUT_UNKNOWN;
}

const sd_tensor_info *sd_find_unet_tensor(const sd_tensorfile *tf, const sd_unet_config *cfg,
                                          sd_layout layout, const char *diffusers_name)
{
    if (!tf || !diffusers_name)
        return NULL;
    if (layout == SD_LAYOUT_DIFFUSERS)
        return sd_tensorfile_find(tf, diffusers_name);
    if (layout != SD_LAYOUT_LDM)
        return NULL;
    char ldm[512];
    if (sd_diffusers_to_ldm(cfg, diffusers_name, ldm, sizeof ldm) != 1)
        return NULL;
    return sd_tensorfile_find(tf, ldm);
}
