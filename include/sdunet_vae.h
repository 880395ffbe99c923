/* sdunet VAE: Stable Diffusion's autoencoder (diffusers AutoencoderKL, the
 * VAE shared by SD1.x and SD2.x) in C.
 *
 * Same contracts as sdunet.h: float32 NCHW tensors owned by the caller,
 * every fallible call returns an sdunet_status and fills `err` (when
 * non-NULL) with a one-line message; nothing prints, exits or aborts. A VAE
 * is used from one thread at a time (a second concurrent call gets
 * SDUNET_E_BUSY); NaN/Inf inputs are rejected with SDUNET_E_NONFINITE unless
 * opt->allow_nonfinite. */
#ifndef SDUNET_VAE_H
#define SDUNET_VAE_H

#include "sdunet.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sdunet_vae sdunet_vae;

/* Loads a VAE. `path` is
 *   - a weight file (safetensors or .ckpt, F32/F16/BF16/F64): a standalone
 *     VAE with diffusers names (encoder.down_blocks..., attention as to_q/
 *     to_k/to_v/to_out.0 or the older query/key/value/proj_attn) or LDM
 *     names (encoder.down.0.block.0...), or a whole single-file SD
 *     checkpoint (its first_stage_model.* tensors; the rest is ignored);
 *   - a diffusers folder: DIR/vae/ (a pipeline) or the VAE's own folder,
 *     with config.json and diffusion_pytorch_model[.VARIANT].safetensors
 *     (opt->variant picks the VARIANT file).
 * `config_path`: a diffusers AutoencoderKL config.json or a preset ("sd15",
 * "sd21": the same VAE); NULL takes a folder's config.json, or for a file
 * the config.json beside it when that is an AutoencoderKL's (another
 * model's is ignored), and otherwise infers the configuration from the
 * tensor shapes (norm groups 32 and scaling factor 0.18215 assumed). A file without a VAE is
 * SDUNET_E_WEIGHTS naming what was looked for; a folder without the weight
 * file, SDUNET_E_IO. */
sdunet_status sdunet_vae_load(const char *path, const char *config_path, const sdunet_options *opt,
                              sdunet_vae **out, sdunet_error *err);

/* A VAE with the deterministic synthetic weights of
 * spec/synthetic-weights.md: `config` is a preset ("sd15", "sd21") or a
 * config.json path. */
sdunet_status sdunet_vae_load_synthetic(const char *config, const sdunet_options *opt,
                                        sdunet_vae **out, sdunet_error *err);

/* Decodes latents as the SD pipelines do: decoder(post_quant_conv(latent /
 * scaling_factor)) (+ shift_factor before the decoder when the config.json
 * has one; the encoder's latent is then (z - shift_factor) * scaling).
 *   latent: (batch, latent_channels, height, width), as the sampler returns it
 *   image:  (batch, out_channels, height * f, width * f), f = 2^(levels-1)
 *           (8 for SD), nominally in [-1, 1] but not clamped.
 * Must not overlap. */
sdunet_status sdunet_vae_decode(sdunet_vae *vae, const float *latent, int batch, int channels,
                                int height, int width, float *image, sdunet_error *err);

/* Encodes images (in [-1, 1], NCHW (batch, in_channels, height, width);
 * height and width at least f; sizes that are not multiples of f are
 * floored as PyTorch's convolutions do: h = floor(height / f)). The
 * posterior: moments = quant_conv(encoder(image)) split into mean and
 * logvar (clamped to [-30, 20]). Each output may be NULL; each is
 * (batch, latent_channels, h, w):
 *   latent: scaling_factor * mean when noise is NULL (the mode), else
 *           scaling_factor * (mean + exp(0.5 * logvar) * noise) (a sample
 *           with the caller's standard-normal noise, same shape)
 *   mean, logvar: the posterior's parameters, unscaled. */
sdunet_status sdunet_vae_encode(sdunet_vae *vae, const float *image, int batch, int channels,
                                int height, int width, const float *noise, float *latent,
                                float *mean, float *logvar, sdunet_error *err);

/* Latent size the encoder gives for an image size (and the image size the
 * decoder gives for a latent: height * f). */
void sdunet_vae_latent_size(const sdunet_vae *vae, int height, int width, int *lh, int *lw);

/* Tiled decoding as diffusers' enable_tiling(): latents larger than the
 * tile (sample_size / f latent pixels: 64 for SD) are decoded in
 * overlapping tiles (overlap factor 0.25) blended linearly; less memory,
 * slightly different output. Off by default. */
sdunet_status sdunet_vae_set_tiling(sdunet_vae *vae, int enable, sdunet_error *err);

/* Changes the thread count (1..1024; 0 = default). */
sdunet_status sdunet_vae_set_threads(sdunet_vae *vae, int threads, sdunet_error *err);

typedef struct sdunet_vae_info {
    int in_channels, out_channels, latent_channels;
    int factor;           /* image pixels per latent pixel along each side */
    float scaling_factor; /* latent = scaling_factor * posterior */
    int64_t n_params;
    int threads;
    const char *isa;
} sdunet_vae_info;
void sdunet_vae_get_info(const sdunet_vae *vae, sdunet_vae_info *info);

void sdunet_vae_free(sdunet_vae *vae);

/* 8-bit pixels, exactly as diffusers' VaeImageProcessor with PIL output:
 * (x / 2 + 0.5) clamped to [0, 1], to float32, * 255 in float32, rounded to
 * nearest with ties to even; NaN gives 0. image: (batch, 3, height, width)
 * NCHW float; rgb: (batch, height, width, 3) bytes. */
sdunet_status sdunet_vae_image_to_rgb8(const float *image, int batch, int height, int width,
                                       uint8_t *rgb, sdunet_error *err);
/* The pipelines' 8-bit preprocessing: v = u / 255.0f; v = 2.0f * v - 1.0f
 * (float32), rgb (batch, height, width, 3) -> image (batch, 3, height, width). */
sdunet_status sdunet_vae_rgb8_to_image(const uint8_t *rgb, int batch, int height, int width,
                                       float *image, sdunet_error *err);

#ifdef __cplusplus
}
#endif
#endif /* SDUNET_VAE_H */
