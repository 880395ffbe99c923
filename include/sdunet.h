/* sdunet: the Stable Diffusion UNet (UNet2DConditionModel) in C.
 *
 * Public API. Tensors at this boundary are float32, NCHW / row-major, owned
 * by the caller. Every function that can fail returns an sdunet_status and,
 * when `err` is non-NULL, fills it with a one-line message. The library never
 * prints, never exits and never aborts on bad input.
 *
 * Thread safety: a model may be used from one thread at a time. Two
 * concurrent sdunet_forward calls on the same model are detected and the
 * second returns SDUNET_E_BUSY. Different models are independent.
 */
#ifndef SDUNET_H
#define SDUNET_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SDUNET_VERSION_MAJOR 0
#define SDUNET_VERSION_MINOR 1
#define SDUNET_VERSION_PATCH 0

typedef enum sdunet_status {
    SDUNET_OK = 0,
    SDUNET_E_INVALID_ARG = 1, /* NULL pointer, out-of-range option, bad shape argument */
    SDUNET_E_IO = 2,          /* cannot open / read / map / write a file */
    SDUNET_E_FORMAT = 3,      /* malformed or truncated file contents */
    SDUNET_E_CONFIG = 4,      /* unsupported or inconsistent model configuration */
    SDUNET_E_WEIGHTS = 5,     /* missing tensors or tensors of the wrong shape */
    SDUNET_E_SHAPE = 6,       /* input tensors do not fit the model */
    SDUNET_E_NOMEM = 7,       /* allocation failed or a size overflowed */
    SDUNET_E_UNSUPPORTED = 8, /* valid but not supported (dtype, feature) */
    SDUNET_E_NONFINITE = 9,   /* NaN or Inf in an input tensor */
    SDUNET_E_BUSY = 10,       /* the model is running a forward on another thread */
    SDUNET_E_INTERNAL = 11,   /* a library bug was detected; the output is not valid */
    SDUNET_E_CANCELLED = 12   /* a progress callback asked to stop */
} sdunet_status;

typedef struct sdunet_error {
    sdunet_status code;
    char message[512];
} sdunet_error;

/* Returns a static, human-readable name for a status code. */
const char *sdunet_status_string(sdunet_status code);

/* How a model stores its weight matrices (the linear layers' and
 * convolutions' weights, nearly all of its memory). Computation is float32
 * either way: 16-bit weights are widened exactly inside the kernels, so a
 * float16 file gives the same output with SDUNET_WEIGHTS_AUTO (half the
 * memory) as with SDUNET_WEIGHTS_F32. Biases and norms stay float32. */
typedef enum sdunet_weights {
    SDUNET_WEIGHTS_AUTO = 0, /* keep each tensor's precision from the file: F16 and BF16 as
                                they are, F32 and F64 as float32; synthetic weights float32 */
    SDUNET_WEIGHTS_F32 = 1,  /* float32 */
    SDUNET_WEIGHTS_F16 = 2,  /* IEEE float16: wider values are rounded to nearest even
                                (lossy: magnitudes past 65504 become Inf, below 6.1e-5 lose bits) */
    SDUNET_WEIGHTS_BF16 = 3  /* bfloat16: wider values are rounded to nearest even (lossy) */
} sdunet_weights;

typedef struct sdunet_options {
    int threads;         /* worker threads; 0 = SDUNET_THREADS env var, else online CPUs */
    int allow_nonfinite; /* 0 (default): NaN/Inf inputs are rejected with SDUNET_E_NONFINITE;
                            1: they are accepted and propagate to the output as IEEE rules say */
    const char *variant; /* diffusers folders only: NULL (default) loads
                            diffusion_pytorch_model.safetensors (or, when that is absent,
                            the .fp16 one); "fp16" loads diffusion_pytorch_model.fp16.safetensors.
                            Read during sdunet_load only. */

    /* Weight storage (default SDUNET_WEIGHTS_AUTO); read while loading. */
    sdunet_weights weights;

    /* 0 (default): exact mode; 1: faster algorithms with relative L2 <= 2e-5 against float64
       (3x3 convolutions by Winograd F(4x4, 3x3) where it pays). Other values are
       SDUNET_E_INVALID_ARG. Read while loading. */
    int fast;
} sdunet_options;

/* Fills `opt` with the defaults. */
void sdunet_options_default(sdunet_options *opt);

typedef struct sdunet_model sdunet_model;

/* Loads a model. `weights_path` is a weight file or a diffusers folder:
 *   - safetensors or PyTorch .ckpt/.bin (zip format), tensors in F32, F16,
 *     BF16 or F64, with diffusers names (down_blocks.0.resnets.0...) or the
 *     original LDM names (model.diffusion_model.input_blocks...); a whole
 *     single-file checkpoint works as it is: the VAE, text encoder, EMA
 *     copies and other non-UNet tensors are ignored;
 *   - a folder DIR holding unet/ (a diffusers pipeline) or being the UNet's
 *     own folder: config.json and diffusion_pytorch_model.safetensors, or
 *     diffusion_pytorch_model.VARIANT.safetensors with opt->variant.
 * `config_path` is a diffusers config.json or a preset ("sd15", "sd21");
 * NULL takes the config.json beside the weights, and without one infers the
 * configuration from the tensor shapes (SDUNET_E_CONFIG when that is
 * ambiguous). `opt` may be NULL for defaults. */
sdunet_status sdunet_load(const char *weights_path, const char *config_path,
                          const sdunet_options *opt, sdunet_model **out, sdunet_error *err);

/* Builds a model with the deterministic synthetic weights of
 * spec/synthetic-weights.md. `config` is a preset name ("sd15", "sd21") or
 * a path to a diffusers config.json. */
sdunet_status sdunet_load_synthetic(const char *config, const sdunet_options *opt,
                                    sdunet_model **out, sdunet_error *err);

/* One forward pass.
 *   sample:    (batch, in_channels, height, width), NCHW float32
 *   timesteps: n_timesteps values, either 1 (used for every row) or batch
 *   context:   (batch, context_len, context_dim) float32
 *   out:       (batch, out_channels, height, width); must not overlap the inputs
 */
sdunet_status sdunet_forward(sdunet_model *model, const float *sample, int batch, int channels,
                             int height, int width, const float *timesteps, int n_timesteps,
                             const float *context, int context_len, int context_dim, float *out,
                             sdunet_error *err);

/* Changes the thread count of a loaded model (1..1024; 0 = default). */
sdunet_status sdunet_set_threads(sdunet_model *model, int threads, sdunet_error *err);

/* Model facts. */
typedef struct sdunet_model_info {
    int in_channels, out_channels, context_dim;
    int64_t n_params;
    int threads;
    const char *isa; /* kernel set in use: "avx2", "portable", ... */
} sdunet_model_info;
void sdunet_get_info(const sdunet_model *model, sdunet_model_info *info);

/* Frees a model. NULL is a no-op. */
void sdunet_free(sdunet_model *model);

#ifdef __cplusplus
}
#endif
#endif /* SDUNET_H */
