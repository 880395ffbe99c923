/* The CLIP text encoder of Stable Diffusion, as transformers' CLIPTextModel
 * runs it: token + position embeddings, pre-LN transformer layers with
 * causal self-attention and an MLP (quick_gelu for SD1's CLIP ViT-L/14,
 * exact GELU for SD2's OpenCLIP ViT-H/14), the final LayerNorm.
 *
 * Tensors are asked for by transformers' names (text_model.embeddings...,
 * text_model.encoder.layers.N.self_attn.q_proj, ...); a file's own layout
 * (a prefix such as cond_stage_model.transformer., or OpenCLIP's names with
 * the fused in_proj) is a name map found by sd_clip_find. */
#ifndef SD_CLIP_ENCODER_H
#define SD_CLIP_ENCODER_H

#include "common.h"
#include "engine/layers.h"
#include "io/tensorfile.h"
#include "sdunet_text.h"

#define SD_CLIP_MAX_LAYERS 64

typedef struct sd_clip_config {
    int vocab, hidden, ffn, heads, layers, positions;
    int quick_gelu; /* 1: x * sigmoid(1.702 x) (SD1); 0: exact GELU (SD2) */
    float eps;      /* LayerNorm epsilon */
} sd_clip_config;

/* "sd15" (CLIP ViT-L/14, 12 layers of 768) or "sd21" (OpenCLIP ViT-H/14 as
 * diffusers runs it: 23 layers of 1024). */
sdunet_status sd_clip_preset(const char *name, sd_clip_config *cfg, sdunet_error *err);
/* transformers' CLIPTextConfig as a text_encoder/config.json holds it. */
sdunet_status sd_clip_config_parse(const char *json, size_t len, sd_clip_config *cfg,
                                   sdunet_error *err);

typedef enum sd_clip_layout {
    SD_CLIP_TRANSFORMERS, /* PREFIX + transformers' names after "text_model." */
    SD_CLIP_OPENCLIP      /* PREFIX + OpenCLIP names (SD2 single files) */
} sd_clip_layout;

/* Where the text encoder sits in a weight file. */
typedef struct sd_clip_names {
    sd_clip_layout layout;
    char prefix[160]; /* e.g. "text_model.", "cond_stage_model.transformer.text_model.",
                         "cond_stage_model.model." */
} sd_clip_names;

/* Finds the text encoder in tf and infers its configuration from the
 * tensor shapes (width, MLP width, layer count, vocabulary, positions;
 * heads = width / 64, or 0 when the width is not a multiple of 64 (then a
 * config.json must say); the activation from the family: OpenCLIP and
 * width 1024 use GELU, others quick_gelu). OpenCLIP files hold one more block than
 * diffusers runs (SD2 files: 24 blocks for 23 layers): the last is left
 * out, as diffusers' conversion does. SDUNET_E_WEIGHTS naming what was
 * looked for when the file holds no text encoder. */
sdunet_status sd_clip_find(const sd_tensorfile *tf, sd_clip_names *names, sd_clip_config *cfg,
                           sdunet_error *err);

typedef struct sd_clip_layer {
    sd_norm ln1, ln2;
    sd_lin qkv; /* q | k | v fused: N = 3 * hidden */
    sd_lin out, fc1, fc2;
} sd_clip_layer;

typedef struct sd_clip {
    sd_clip_config cfg;
    float *tok; /* (vocab, hidden) */
    float *pos; /* (positions, hidden) */
    sd_clip_layer *layer;
    sd_norm final_ln;
    int64_t n_params;
} sd_clip;

/* Loads and packs every layer. names == NULL looks tensors up by
 * transformers' names as they are (and is what synthetic weights use). */
sdunet_status sd_clip_build(sd_clip *m, const sd_clip_config *cfg, const sd_weight_source *src,
                            const sd_clip_names *names, const sd_kernels *kern, sdunet_error *err);
void sd_clip_release(sd_clip *m);

/* Activation floats a forward of B sequences of L tokens needs (a dry run
 * of the forward). */
size_t sd_clip_plan(const sd_clip *m, int B, int L);

/* out (B, L, hidden) = final_layer_norm(hidden state after layers - skip
 * layers), as diffusers' clip_skip defines it (skip 0: last_hidden_state).
 * ids: B x L token ids, each < vocab; L <= positions; 0 <= skip < layers;
 * mem: sd_clip_plan(m, B, L) floats. */
void sd_clip_forward(const sd_clip *m, const sd_exec *ex, float *mem, int B, int L,
                     const int32_t *ids, int skip, float *out, sd_prof *prof);

/* Profile the encoder's ops into prof (NULL: off) from the next
 * sdunet_text_encode on (sdunet bench --text). */
void sd_text_set_profile(sdunet_text *t, sd_prof *prof);

/* sdunet_text_load (synthetic 0: path) or sdunet_text_load_synthetic
 * (synthetic 1: path is the preset or config), running on the share's pool
 * and reading its open file when that is the weight file (sh may be NULL). */
sdunet_status sd_text_open(const char *path, int synthetic, const sdunet_text_options *opt,
                           const sd_share *sh, sdunet_text **out, sdunet_error *err);

#endif
