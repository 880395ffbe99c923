/* Stable Diffusion's autoencoder (diffusers AutoencoderKL, the VAE of SD1.x
 * and SD2.x) on the shared engine: the configuration, the layers in
 * diffusers' module order, the weight layouts a file may use, and the
 * encoder and decoder graphs with their activation plans. */
#ifndef SD_VAE_H
#define SD_VAE_H

#include "common.h"
#include "engine/kernels.h"
#include "engine/layers.h"
#include "io/tensorfile.h"
#include "sdunet_vae.h"

#define SD_VAE_MAX_LEVELS 8
#define SD_VAE_MAX_LAYERS 8

typedef struct sd_vae_config {
    int in_channels, out_channels, latent_channels;
    int n_levels; /* len(block_out_channels) */
    int block_out_channels[SD_VAE_MAX_LEVELS];
    int layers_per_block;
    int norm_num_groups;
    float scaling_factor;
    int sample_size;    /* tiled decoding's tile size in pixels */
    float shift_factor; /* 0 for SD; the decoder sees latent / scaling + shift */
    int mid_attention;  /* mid_block_add_attention (default on) */
    int use_quant_conv, use_post_quant_conv; /* default on */
} sd_vae_config;

/* The SD1.x/SD2.x VAE: channels (128, 256, 512, 512), 2 layers per block,
 * 4 latent channels, 32 groups, scaling factor 0.18215, sample size 512. */
void sd_vae_config_sd(sd_vae_config *c);
/* A preset name ("sd15", "sd14", "sd21", "sd2", "sd") or a diffusers
 * AutoencoderKL config.json path. */
sdunet_status sd_vae_config_load(const char *preset_or_path, sd_vae_config *c, sdunet_error *err);
/* A config.json found beside a weight file: used (*used = 1) only when it
 * is an AutoencoderKL's (_class_name); another model's config or an
 * unparsable file leaves *used = 0 and returns SDUNET_OK. */
sdunet_status sd_vae_config_load_beside(const char *path, sd_vae_config *c, int *used,
                                        sdunet_error *err);
sdunet_status sd_vae_config_parse(const char *json, size_t len, sd_vae_config *c,
                                  sdunet_error *err);
/* Checks the ranges and channel/group divisibility the graph relies on. */
sdunet_status sd_vae_config_check(const sd_vae_config *c, sdunet_error *err);

/* ---- names ---- */

/* How a file names the VAE's tensors. */
typedef enum sd_vae_layout {
    SD_VAE_LAYOUT_NONE = 0,
    SD_VAE_LAYOUT_DIFFUSERS, /* encoder.down_blocks.0.resnets.0.norm1.weight */
    SD_VAE_LAYOUT_LDM        /* encoder.down.0.block.0.norm1.weight */
} sd_vae_layout;

typedef struct sd_vae_names {
    sd_vae_layout layout;
    char prefix[32]; /* "", "first_stage_model." or "vae." */
    int n_levels;    /* for decoder.up's reversed numbering */
    /* diffusers layout: mid-block attention under the deprecated names
     * (query, key, value, proj_attn) */
    int deprecated_attn;
} sd_vae_names;

/* The LDM name of a diffusers AutoencoderKL tensor for a model with
 * n_levels levels (decoder.up.N is numbered in reverse), without any
 * prefix. Returns 1 when mapped, 0 when the name is not a VAE tensor name
 * this map knows (or out is too small). Pure string function. */
int sd_vae_diffusers_to_ldm(int n_levels, const char *diffusers, char *out, size_t outlen);

/* Finds the VAE in a tensor table: its layout and prefix. SD_VAE_LAYOUT_NONE
 * when there is none (then `what` says what was looked for). */
void sd_vae_detect(const sd_tensorfile *tf, sd_vae_names *names, char *what, size_t what_len);

/* The file's name for a diffusers name under `names`: 1 on success. */
int sd_vae_file_name(const sd_vae_names *names, const char *diffusers, char *out, size_t outlen);

/* Infers the configuration from the tensor shapes (block channels, layers
 * per block, latent, input and output channels); groups 32, scaling factor
 * 0.18215 and sample size 512 are SD's, which the shapes cannot tell. */
sdunet_status sd_vae_config_infer(const sd_tensorfile *tf, const sd_vae_names *names,
                                  sd_vae_config *c, sdunet_error *err);

/* ---- layers ---- */

typedef struct sd_vae_resnet {
    int cin, cout;
    sd_norm norm1, norm2;
    sd_lin conv1, conv2, shortcut;
    int has_shortcut;
} sd_vae_resnet;

typedef struct sd_vae_attn {
    int C;
    sd_norm norm;
    sd_lin qkv; /* to_q | to_k | to_v fused, N = 3C, with biases */
    sd_lin out; /* to_out.0 */
} sd_vae_attn;

typedef struct sd_vae_level {
    int n_res;
    sd_vae_resnet res[SD_VAE_MAX_LAYERS + 1];
    int has_sample; /* downsampler (encoder) / upsampler (decoder) */
    sd_lin sample_conv;
} sd_vae_level;

typedef struct sd_vae_coder {
    sd_lin conv_in, conv_out;
    sd_vae_level level[SD_VAE_MAX_LEVELS];
    sd_vae_resnet mid_res[2];
    sd_vae_attn mid_attn;
    sd_norm norm_out;
} sd_vae_coder;

typedef struct sd_vae {
    sd_vae_config cfg;
    sd_vae_coder enc, dec;
    sd_lin quant_conv, post_quant_conv;
    int64_t n_params;
    int has_weights;
} sd_vae;

/* Builds every layer, fetching weights by diffusers name through `names`
 * (NULL: the file's names are diffusers' as they are, or synthetic weights
 * when src->file is NULL). */
sdunet_status sd_vae_build(sd_vae *v, const sd_vae_config *cfg, const sd_weight_source *src,
                           const sd_vae_names *names, const sd_kernels *kern, sdunet_error *err);
void sd_vae_release(sd_vae *v);

/* ---- forward ---- */

/* Activation memory for one direction and input shape, sized by a dry run
 * of the same graph code: two ping-pong buffers and a scratch stack. */
typedef struct sd_vae_plan {
    int decode, B, H, W; /* H, W: the input's size (latent or image) */
    size_t hidden_floats, scratch_floats;
    float *mem;
    float *hidden[2], *scratch;
} sd_vae_plan;

/* Trace points (post_quant_conv, conv_in, mid_block, up_blocks.N,
 * conv_norm_out, conv_out; encoder: conv_in, down_blocks.N, mid_block,
 * conv_norm_out, conv_out, quant_conv), channels-last; data NULL in the dry
 * run. */
typedef void (*sd_vae_trace_fn)(void *user, const char *name, const float *data, int B, int H,
                                int W, int C);

void sd_vae_plan_make(const sd_vae *v, int decode, int B, int H, int W, sd_vae_plan *plan);
sdunet_status sd_vae_plan_alloc(sd_vae_plan *plan, sdunet_error *err);
void sd_vae_plan_free(sd_vae_plan *plan);

/* Decoder on z (B, h, w, latent_channels) channels-last, already divided by
 * the scaling factor, into out (B, h*f, w*f, out_channels). */
void sd_vae_decode_run(const sd_vae *v, const sd_exec *ex, sd_vae_plan *plan, const float *z,
                       float *out, sd_vae_trace_fn tr, void *tr_user, sd_prof *prof);
/* Encoder on x (B, H, W, in_channels) into moments (B, H/f, W/f,
 * 2*latent_channels), after quant_conv (mean first, then logvar, unclamped). */
void sd_vae_encode_run(const sd_vae *v, const sd_exec *ex, sd_vae_plan *plan, const float *x,
                       float *moments, sd_vae_trace_fn tr, void *tr_user, sd_prof *prof);

/* Spatial factor between image and latent: 2^(n_levels - 1). */
static inline int sd_vae_factor(const sd_vae_config *c)
{
    return 1 << (c->n_levels - 1);
}

/* Accumulate per-op-kind time into prof during decodes and encodes (NULL:
 * stop). */
void sd_vae_set_profile(sdunet_vae *m, sd_prof *prof);

/* Frees the activation plan, staging and kernel scratch (the next decode
 * or encode plans again), e.g. while the UNet runs; a no-op while the VAE
 * is in use. */
void sd_vae_trim(sdunet_vae *m);

/* sdunet_vae_load (synthetic 0: path and optional config) or
 * sdunet_vae_load_synthetic (synthetic 1: config only), running on the
 * share's pool and reading its open file when that is the weight file (sh
 * may be NULL). */
sdunet_status sd_vae_open(const char *path, const char *config, int synthetic,
                          const sdunet_options *opt, const sd_share *sh, sdunet_vae **out,
                          sdunet_error *err);

#endif
