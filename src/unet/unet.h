/* The UNet graph in the seed's terms: time embedding, conv_in, down blocks
 * (resnets, transformers, downsamplers) pushing onto the skip stack, the mid
 * block, up blocks popping it, and the output head. */
#ifndef SD_UNET_H
#define SD_UNET_H

#include "common.h"
#include "io/tensorfile.h"
#include "engine/kernels.h"
#include "engine/layers.h"
#include "unet/config.h"

#define SD_MAX_LAYERS 16

typedef struct sd_resnet {
    int cin, cout;
    sd_norm norm1, norm2;
    sd_lin conv1, temb, conv2, shortcut;
    int has_shortcut;
} sd_resnet;

typedef struct sd_xformer {
    int C, heads;
    sd_norm norm, ln1, ln2, ln3;
    sd_lin proj_in, proj_out;
    sd_lin qkv;  /* self-attention to_q | to_k | to_v fused: N = 3C */
    sd_lin out1; /* attn1.to_out.0 */
    sd_lin q2;   /* attn2.to_q */
    sd_lin kv2;  /* attn2.to_k | to_v fused over the context: N = 2C */
    sd_lin out2, ff1, ff2;
} sd_xformer;

typedef struct sd_block {
    int n_layers;
    sd_resnet res[SD_MAX_LAYERS + 1];
    int has_attn;
    sd_xformer *attn; /* n_layers entries when has_attn */
    int has_sample;   /* downsampler / upsampler */
    sd_lin sample_conv;
} sd_block;

typedef struct sd_unet {
    sd_unet_config cfg;
    sd_lin conv_in, time1, time2, conv_out;
    sd_norm norm_out;
    sd_block down[SD_MAX_BLOCKS], up[SD_MAX_BLOCKS];
    sd_resnet mid_res[2];
    sd_xformer mid_attn;
    int64_t n_params;
    size_t packed_bytes[SD_WT_COUNT]; /* weight panels by storage type (sd_wtype) */
    int has_weights;
} sd_unet;

/* Builds all layers for cfg, loading and packing weights from src.
 * src == NULL builds the structure only (for shape tracing). */
sdunet_status sd_unet_build(sd_unet *u, const sd_unet_config *cfg, const sd_weight_source *src,
                            const sd_kernels *kern, sdunet_error *err);
void sd_unet_release(sd_unet *u);

/* Trace events emitted during a forward (also during the dry run). */
typedef enum sd_event_kind {
    SD_EV_TENSOR, /* a golden-trace point: name, data (NULL when dry), shape */
    SD_EV_BLOCK,  /* a top-level block finished: name, input shape, output shape */
    SD_EV_PUSH,   /* skip pushed: index, producer name, shape */
    SD_EV_POP     /* skip popped: index, consumer name, shape */
} sd_event_kind;

typedef struct sd_event {
    sd_event_kind kind;
    const char *name;
    const float *data; /* channels-last (B, H, W, C) */
    int B, H, W, C;
    int in_B, in_H, in_W, in_C;
    int skip_index;
} sd_event;

typedef void (*sd_event_fn)(void *user, const sd_event *ev);

/* Activation memory, planned once per input shape by a dry run. */
typedef struct sd_plan {
    int B, H, W, L;
    size_t skip_floats, hidden_floats, scratch_floats;
    float *mem; /* one allocation holding every region */
    float *skip, *hidden[2], *scratch;
} sd_plan;

/* Dry run for the shape (B,H,W,L): fills the plan's sizes, allocates
 * nothing; events are reported with data == NULL. */
void sd_unet_plan(const sd_unet *u, int B, int H, int W, int L, sd_plan *plan, sd_event_fn ev,
                  void *ev_user);
/* Allocates the plan's memory (after sd_unet_plan). */
sdunet_status sd_plan_alloc(sd_plan *plan, sdunet_error *err);
void sd_plan_free(sd_plan *plan);

/* Forward on channels-last input x (B,H,W,in_channels) into out
 * (B,H,W,out_channels), with per-row timesteps t[B] and context (B,L,D). */
void sd_unet_forward(const sd_unet *u, const sd_exec *ex, sd_plan *plan, const float *x,
                     const float *t, const float *context, float *out, sd_event_fn ev,
                     void *ev_user, sd_prof *prof);

/* Sinusoidal timestep projection exactly as diffusers computes it (float32). */
void sd_timestep_embedding(float t, int dim, int flip_sin_to_cos, int freq_shift, float *out);

#endif
