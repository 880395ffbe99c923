/* Internal state of a scheduler, shared by schedule.c (tables, timesteps,
 * lifecycle) and samplers.c (the step rules). */
#ifndef SD_SCHED_IMPL_H
#define SD_SCHED_IMPL_H

#include "common.h"
#include "sdunet_sched.h"

typedef enum sd_sched_kind {
    SD_SCHED_DDIM,
    SD_SCHED_EULER,
    SD_SCHED_EULER_A,
    SD_SCHED_DPMPP_2M,
    SD_SCHED_PNDM,
    SD_SCHED_LMS,
    SD_SCHED_UNIPC
} sd_sched_kind;

/* Most past arrays any sampler keeps (LMS order 4, PNDM's four eps). */
#define SD_SCHED_HIST 4

struct sdunet_scheduler {
    sd_sched_kind kind;
    int karras; /* dpmpp_2m_karras */
    const char *name;
    sdunet_sched_config cfg;
    int T; /* num_train_timesteps */

    /* Training tables, float32 as diffusers keeps them. */
    float *alphas_cumprod;     /* T */
    float *train_sigmas;       /* T: sqrt((1 - ac) / ac), in float32 ops */
    float final_alpha_cumprod; /* DDIM / PNDM target after the last step */

    /* Set by set_timesteps. */
    int n_steps;       /* num_inference_steps; 0 = not set */
    int n_calls;       /* model calls per run */
    int step_ratio;    /* T // n for DDIM / PNDM */
    double *timesteps; /* n_calls */
    float *sigmas;     /* n_sigmas (n_steps + 1) or NULL */
    int n_sigmas;
    double init_noise_sigma;

    /* Run state, reset by set_timesteps. */
    size_t n_elems;              /* latent size bound by the first multistep call; 0 = unbound */
    size_t buf_elems;            /* size of the hist / saved arrays (kept across runs) */
    int last_index;              /* index of the last step taken, -1 = none */
    int n_hist;                  /* valid entries of hist */
    double *hist[SD_SCHED_HIST]; /* newest first: model outputs / derivatives / eps */
    double *saved;               /* PNDM's cur_sample, UniPC's last_sample */
    int have_saved;
    int counter;          /* PNDM's step counter */
    int lower_order_nums; /* DPM-Solver / UniPC warm-up count */
    int this_order;       /* UniPC: order of the last predictor, used by the next corrector */

    /* Scratch for the float32 wrappers (x, model output, noise, out). */
    double *scratch;
    size_t scratch_elems;
};

/* Makes sure the history arrays of this kind of sampler hold n elements
 * (schedule.c); used by the multistep samplers in samplers.c. */
sdunet_status sd_sched_ensure_state(sdunet_scheduler *s, size_t n, sdunet_error *err);

#endif
