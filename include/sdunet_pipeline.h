/* sdunet pipeline: text to image and image to image with Stable Diffusion
 * 1.x / 2.x from one checkpoint, the same picture diffusers 0.25.1's
 * StableDiffusionPipeline / StableDiffusionImg2ImgPipeline give for the same
 * seed (PyTorch's CPU generator is reproduced bit for bit).
 *
 * Same contracts as sdunet.h: a status and a one-line message, nothing
 * printed, never an abort; a pipeline serves one generation at a time
 * (SDUNET_E_BUSY otherwise). */
#ifndef SDUNET_PIPELINE_H
#define SDUNET_PIPELINE_H

#include "sdunet.h"
#include "sdunet_sched.h"
#include "sdunet_text.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sdunet_pipeline sdunet_pipeline;

typedef struct sdunet_pipeline_options {
    int threads;             /* 0 = SDUNET_THREADS, else online CPUs */
    const char *variant;     /* diffusers folders: "fp16" */
    const char *vae;         /* NULL: the model's own VAE; else a VAE file or folder */
    int prediction_type;     /* -1 (default): the scheduler config's, or for single files
                                epsilon (SD1) / v_prediction (SD2, as diffusers assumes for
                                SD2 checkpoints); else SDUNET_PRED_EPSILON or SDUNET_PRED_V */
    int low_memory;          /* 1: each model is loaded when its phase starts and freed when
                                it ends (text encoder, UNet, VAE), so the peak is about the
                                UNet alone; every generation loads them again, so the
                                files must stay in place (a single file stays open and is
                                parsed once) */
    const char *unet_config; /* NULL: found or inferred; else the UNet's config.json or
                                preset (files whose UNet cannot be inferred) */
    const char *text_config; /* NULL: found or inferred; else the text encoder's config.json */
    int fast;                /* sdunet_options.fast for the UNet and the VAE: 0 (default) exact
                                mode, 1 faster algorithms (relative L2 <= 2e-5 vs float64) */
} sdunet_pipeline_options;

void sdunet_pipeline_options_default(sdunet_pipeline_options *opt);

/* A single-file checkpoint (.safetensors / .ckpt, SD1.x or SD2.x) or a
 * diffusers pipeline folder (unet/, text_encoder/, tokenizer/, vae/,
 * scheduler/). */
sdunet_status sdunet_pipeline_load(const char *path, const sdunet_pipeline_options *opt,
                                   sdunet_pipeline **out, sdunet_error *err);

/* Full-size synthetic weights ("sd15", "sd21"), or a folder laid out like a
 * diffusers pipeline holding only configs (unet/config.json,
 * text_encoder/config.json, vae/config.json, optionally
 * scheduler/scheduler_config.json and tokenizer/): every model built with the
 * synthetic weights of spec/synthetic-weights.md. */
sdunet_status sdunet_pipeline_load_synthetic(const char *preset_or_folder,
                                             const sdunet_pipeline_options *opt,
                                             sdunet_pipeline **out, sdunet_error *err);

typedef enum sdunet_phase {
    SDUNET_PHASE_TEXT = 0,    /* encoding the prompts (done 0 / 1) */
    SDUNET_PHASE_ENCODE = 1,  /* VAE-encoding the init image (img2img) */
    SDUNET_PHASE_DENOISE = 2, /* done = UNet calls completed, total = calls */
    SDUNET_PHASE_DECODE = 3   /* VAE-decoding the latents */
} sdunet_phase;

/* Called at the start (done 0) and end (done total) of each phase and after
 * every denoising step; a non-zero return cancels the generation
 * (SDUNET_E_CANCELLED, outputs untouched). Runs on the calling thread. */
typedef int (*sdunet_progress_fn)(void *user, sdunet_phase phase, int done, int total);

typedef enum sdunet_rng_kind {
    SDUNET_RNG_TORCH = 0, /* torch.Generator("cpu").manual_seed(seed): diffusers' pictures */
    SDUNET_RNG_FAST = 1   /* sdunet_sample.h's xoshiro256** + Box-Muller stream */
} sdunet_rng_kind;

typedef struct sdunet_gen_params {
    const char *prompt;          /* UTF-8 */
    const char *negative_prompt; /* NULL or "": diffusers' empty unconditional prompt */
    int width, height;           /* 0: the UNet's sample size x the VAE factor (512 for SD1.5);
                                    multiples of 8 and of the VAE factor */
    int steps;                   /* 50 */
    double guidance;             /* 7.5; <= 1: no unconditional pass (as diffusers) */
    const char *scheduler;       /* NULL: the model's (its scheduler config; single files: pndm);
                                    else ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, pndm, lms,
                                    unipc, keeping the model's config as from_config does */
    double eta;                  /* DDIM's eta, 0 */
    uint64_t seed;
    sdunet_rng_kind rng;
    int batch;               /* images (num_images_per_prompt), 1; seeds are not advanced:
                                one generator draws for the whole batch, as diffusers */
    sdunet_text_params text; /* clip skip (the prompt only, as diffusers 0.25.1: the
                                negative prompt is never skipped), long prompts, syntax */
    /* img2img: an RGB8 init image (init_height x init_width x 3) and the strength */
    const uint8_t *init_rgb;
    int init_width, init_height;
    double strength; /* 0.8 */
    sdunet_progress_fn progress;
    void *progress_user;
} sdunet_gen_params;

void sdunet_gen_params_default(sdunet_gen_params *p);

/* The size a generation will have (width/height 0 resolved). */
sdunet_status sdunet_pipeline_image_size(const sdunet_pipeline *pl, const sdunet_gen_params *p,
                                         int *width, int *height, sdunet_error *err);

/* Generates p->batch images: rgb (batch, height, width, 3) 8-bit as
 * diffusers' PIL output, and/or image (batch, height, width, 3) float32 in
 * [0, 1] as its output_type="np"; either may be NULL. */
sdunet_status sdunet_generate(sdunet_pipeline *pl, const sdunet_gen_params *p, uint8_t *rgb,
                              float *image, sdunet_error *err);

/* AUTOMATIC1111's "parameters" text for a generation (prompt, negative
 * prompt, then "Steps: ..., Sampler: ..., CFG scale: ..., Seed: ..., Size:
 * WxH, Model hash: ..., Model: ..."), into buf. */
sdunet_status sdunet_pipeline_parameters_text(const sdunet_pipeline *pl, const sdunet_gen_params *p,
                                              char *buf, size_t len, sdunet_error *err);

typedef struct sdunet_pipeline_info {
    const char *family;    /* "sd1" or "sd2" */
    const char *scheduler; /* the default sampler */
    sdunet_prediction_type prediction_type;
    int default_width, default_height;
    int vae_factor;
    const char *model_name; /* file or folder name without extension */
    const char *model_hash; /* AUTOMATIC1111's short hash, "" for synthetic weights */
    int threads;
    const char *isa;
} sdunet_pipeline_info;

void sdunet_pipeline_get_info(const sdunet_pipeline *pl, sdunet_pipeline_info *info);

void sdunet_pipeline_free(sdunet_pipeline *pl);

#ifdef __cplusplus
}
#endif
#endif /* SDUNET_PIPELINE_H */
