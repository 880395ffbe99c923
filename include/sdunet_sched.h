/* sdunet_sched: diffusion samplers for Stable Diffusion 1.x, matching the
 * schedulers of diffusers v0.25.1 with the SD1.5 scheduler configuration.
 *
 * The module stands alone: it needs only sdunet.h for the status codes and
 * never calls the model. The caller runs the sampling loop:
 *
 *     sdunet_sched_set_timesteps(s, steps, &err);
 *     x = noise * sdunet_sched_init_noise_sigma(s);
 *     for (i = 0; i < sdunet_sched_num_model_calls(s); i++) {
 *         sdunet_sched_scale_model_input(s, i, x, n, x_in, &err);
 *         eps = unet(x_in, sdunet_sched_timestep(s, i));
 *         sdunet_sched_step(s, i, eps, x, n, noise_i_or_NULL, x, &err);
 *     }
 *
 * Random numbers stay with the caller: a step that needs fresh standard
 * normal noise (sdunet_sched_step_needs_noise) takes it as an argument.
 *
 * Latents at this boundary are float32 (what the UNet works in); every
 * function also has an _f64 twin working on double arrays, which the float32
 * versions wrap. Internally the multistep state (past model outputs, saved
 * samples, derivatives) is kept in double, and the tables and scalar
 * coefficients are rounded to float32 exactly where diffusers computes them in
 * float32, so the _f64 path reproduces diffusers run on float64 latents:
 * bit for bit for ddim, euler, euler_a and pndm, to ~1e-7 relative for the
 * others (float32 log/exp rounding, LMS's numerical quadrature).
 *
 * Call order: set_timesteps resets the run. Stateless samplers (ddim, euler,
 * euler_a) accept any step index in any order. Multistep samplers (dpmpp_2m,
 * dpmpp_2m_karras, pndm, lms, unipc) may start at any index (img2img) but
 * then need i, i + 1, i + 2, ... with the same element count; anything else
 * is SDUNET_E_INVALID_ARG.
 *
 * `out` may be the same array as `x` or `model_output` (in-place stepping);
 * other overlaps are not allowed. A scheduler is not thread safe; separate
 * schedulers are independent. No function prints, exits or aborts.
 */
#ifndef SDUNET_SCHED_H
#define SDUNET_SCHED_H

#include "sdunet.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum sdunet_prediction_type {
    SDUNET_PRED_EPSILON = 0, /* the model predicts the noise (SD 1.x) */
    SDUNET_PRED_V = 1        /* v = alpha_t * eps - sigma_t * x0 (SD 2.x 768) */
} sdunet_prediction_type;

typedef enum sdunet_beta_schedule {
    SDUNET_BETA_SCALED_LINEAR = 0, /* betas = linspace(sqrt(start), sqrt(end), T)^2 */
    SDUNET_BETA_LINEAR = 1         /* betas = linspace(start, end, T) */
} sdunet_beta_schedule;

/* How set_timesteps spaces the steps (diffusers' timestep_spacing). */
typedef enum sdunet_timestep_spacing {
    SDUNET_SPACING_LEADING = 0,  /* k * (T // n) + steps_offset */
    SDUNET_SPACING_LINSPACE = 1, /* linspace(0, T - 1, n) (rounded for integer samplers) */
    SDUNET_SPACING_TRAILING = 2  /* round(T - k * T / n) - 1 */
} sdunet_timestep_spacing;

typedef struct sdunet_sched_config {
    int num_train_timesteps;                /* T: 1000 (2..100000) */
    double beta_start;                      /* 0.00085 */
    double beta_end;                        /* 0.012 */
    sdunet_beta_schedule beta_schedule;     /* scaled_linear */
    int steps_offset;                       /* 1 (0..T-1); used by "leading" spacing */
    int set_alpha_to_one;                   /* 0: DDIM/PNDM's last step goes to alphas_cumprod[0] */
    sdunet_prediction_type prediction_type; /* epsilon */
    double eta;                             /* DDIM only, 0..1: 0 = deterministic; > 0 adds noise */
    /* leading (the SD1.5 config's effective spacing, and the default of
     * DDIM and PNDM). A diffusers config without timestep_spacing takes the
     * scheduler class's default: linspace for Euler, Euler a, LMS, DPM++ and
     * UniPC (what from_config gives when swapping schedulers). With
     * linspace or trailing, init_noise_sigma of euler, euler_a and lms is
     * sigma_max (diffusers 0.25.1), not sqrt(sigma_max^2 + 1). */
    sdunet_timestep_spacing timestep_spacing;
} sdunet_sched_config;

/* Fills `cfg` with the SD1.5 scheduler_config.json values listed above
 * (spacing leading). */
void sdunet_sched_config_default(sdunet_sched_config *cfg);

typedef struct sdunet_scheduler sdunet_scheduler;

/* Creates a scheduler by name: "ddim", "euler", "euler_a", "dpmpp_2m",
 * "dpmpp_2m_karras", "pndm" (skip_prk_steps), "lms" (order 4), "unipc"
 * (bh2, order 2). `cfg` NULL means the defaults. */
sdunet_status sdunet_sched_create(const char *name, const sdunet_sched_config *cfg,
                                  sdunet_scheduler **out, sdunet_error *err);

/* Frees a scheduler. NULL is a no-op. */
void sdunet_sched_free(sdunet_scheduler *sched);

/* Name given at creation (static string). */
const char *sdunet_sched_name(const sdunet_scheduler *sched);

/* Computes the timesteps and sigmas for 1..T inference steps and resets the
 * run. Must be called before anything below. */
sdunet_status sdunet_sched_set_timesteps(sdunet_scheduler *sched, int num_inference_steps,
                                         sdunet_error *err);

/* Number of UNet evaluations (= steps) per run: the inference step count,
 * except PNDM, which makes one more (n + 1 for n >= 2). 0 before
 * set_timesteps or for NULL. */
int sdunet_sched_num_model_calls(const sdunet_scheduler *sched);

/* Timestep value to give the UNet at call i, 0 <= i < num_model_calls.
 * Whole numbers for every sampler here; NAN when i is out of range. */
double sdunet_sched_timestep(const sdunet_scheduler *sched, int i);

/* Noise levels sigma_0 .. sigma_n (n + 1 values, float32 values as diffusers
 * holds them) for the sigma-based samplers (euler, euler_a, lms, dpmpp_2m*,
 * unipc); 0 for ddim and pndm. sdunet_sched_sigma returns NAN out of range. */
int sdunet_sched_num_sigmas(const sdunet_scheduler *sched);
double sdunet_sched_sigma(const sdunet_scheduler *sched, int i);

/* Factor the initial standard normal noise is multiplied by: 1, or
 * sqrt(sigma_max^2 + 1) for euler, euler_a and lms. NAN before set_timesteps. */
double sdunet_sched_init_noise_sigma(const sdunet_scheduler *sched);

/* 1 when step i consumes fresh standard normal noise, else 0 (also for bad
 * arguments): every step of euler_a (also the last, where diffusers draws it
 * and weights it by 0) and of ddim with eta > 0. diffusers' Euler draws noise
 * every step and multiplies it by 0; callers that must keep the same random
 * stream as diffusers may draw and discard it. */
int sdunet_sched_step_needs_noise(const sdunet_scheduler *sched, int i);

/* Scales the latent into the UNet input for call i: x / sqrt(sigma_i^2 + 1)
 * for euler, euler_a and lms, a copy for the others. */
sdunet_status sdunet_sched_scale_model_input(sdunet_scheduler *sched, int i, const float *x,
                                             size_t n_elems, float *out, sdunet_error *err);
sdunet_status sdunet_sched_scale_model_input_f64(sdunet_scheduler *sched, int i, const double *x,
                                                 size_t n_elems, double *out, sdunet_error *err);

/* One sampler step for call i: takes the model output (epsilon or v, after
 * guidance) at latent x and writes the next latent to out. `noise` is n_elems
 * standard normal values when sdunet_sched_step_needs_noise(sched, i), else
 * ignored and may be NULL. */
sdunet_status sdunet_sched_step(sdunet_scheduler *sched, int i, const float *model_output,
                                const float *x, size_t n_elems, const float *noise, float *out,
                                sdunet_error *err);
sdunet_status sdunet_sched_step_f64(sdunet_scheduler *sched, int i, const double *model_output,
                                    const double *x, size_t n_elems, const double *noise,
                                    double *out, sdunet_error *err);

/* diffusers' add_noise at the timestep of call i (img2img's start): out =
 * x0 * sqrt(alphas_cumprod[t]) + noise * sqrt(1 - alphas_cumprod[t]) for
 * ddim and pndm; x0 / sqrt(sigma_i^2 + 1) + noise * sigma_i / sqrt(sigma_i^2
 * + 1) for dpmpp_2m* and unipc; x0 + noise * sigma_i for euler, euler_a and
 * lms (diffusers 0.25.1's rules), computed in double and rounded once. out
 * may equal x0 or noise. */
sdunet_status sdunet_sched_add_noise(const sdunet_scheduler *sched, int i, const float *x0,
                                     const float *noise, size_t n, float *out, sdunet_error *err);

/* Classifier-free guidance: out = uncond + guidance * (cond - uncond),
 * computed in double. out may equal uncond or cond. */
sdunet_status sdunet_cfg_combine(const float *uncond, const float *cond, double guidance, size_t n,
                                 float *out);
sdunet_status sdunet_cfg_combine_f64(const double *uncond, const double *cond, double guidance,
                                     size_t n, double *out);

#ifdef __cplusplus
}
#endif
#endif /* SDUNET_SCHED_H */
