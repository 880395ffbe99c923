/* The denoising loop of sdunet_sample.h: one function shared by the CLI's
 * `sample` command and by callers of the library, so that both run exactly
 * the sequence of public calls the header spells out. */
#include "sdunet_sample.h"

#include "common.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static sdunet_status step_fail(sdunet_error *err, sdunet_status st, int i, int total)
{
    char where[64];
    snprintf(where, sizeof where, "sample: model call %d of %d", i + 1, total);
    sd_err_prefix(err, where);
    return st;
}

/* Writes `rows` rows of (L, D) from a source with 1 or `rows` rows. */
static void fill_rows(float *dst, const float *src, int src_rows, int rows, size_t row_floats)
{
    for (int r = 0; r < rows; r++)
        memcpy(dst + (size_t)r * row_floats, src + (src_rows == 1 ? 0 : (size_t)r * row_floats),
               row_floats * sizeof(float));
}

sdunet_status sdunet_sample(sdunet_model *model, sdunet_scheduler *sched,
                            const sdunet_sample_params *p, float *latent, int *steps_done,
                            sdunet_error *err)
{
    if (steps_done)
        *steps_done = 0;
    if (!model || !sched || !p || !latent)
        return sd_fail(err, SDUNET_E_INVALID_ARG,
                       "sample: NULL model, scheduler, params or latent");
    if (p->batch < 1 || p->height < 1 || p->width < 1)
        return sd_fail(err, SDUNET_E_INVALID_ARG,
                       "sample: latent batch %d, height %d, width %d "
                       "must all be positive",
                       p->batch, p->height, p->width);
    if (!p->context || p->context_len < 1 || p->context_dim < 1)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "sample: missing context or empty context shape");
    if (p->context_rows != 1 && p->context_rows != p->batch)
        return sd_fail(err, SDUNET_E_SHAPE,
                       "sample: context has %d rows for batch %d (give 1 or %d)", p->context_rows,
                       p->batch, p->batch);
    const int cfg = p->uncond != NULL;
    if (cfg) {
        if (p->uncond_rows != 1 && p->uncond_rows != p->batch)
            return sd_fail(err, SDUNET_E_SHAPE,
                           "sample: unconditional context has %d rows for batch %d (give 1 or %d)",
                           p->uncond_rows, p->batch, p->batch);
        if (p->uncond_len != p->context_len)
            return sd_fail(err, SDUNET_E_SHAPE,
                           "sample: unconditional context has %d tokens, the context %d (they run "
                           "as one batch and must match)",
                           p->uncond_len, p->context_len);
        if (!isfinite(p->guidance))
            return sd_fail(err, SDUNET_E_INVALID_ARG, "sample: guidance is not a finite number");
    }
    sdunet_model_info info;
    sdunet_get_info(model, &info);
    const int C = info.in_channels;
    if (info.out_channels != C)
        return sd_fail(err, SDUNET_E_CONFIG,
                       "sample: the model maps %d channels to %d; sampling "
                       "needs in_channels == out_channels",
                       C, info.out_channels);

    /* Sizes: n latent floats, `rows` forward rows (2 * batch with guidance). */
    if (cfg && p->batch > (1 << 30))
        return sd_fail(err, SDUNET_E_NOMEM, "sample: batch %d is too large", p->batch);
    const int rows = cfg ? 2 * p->batch : p->batch;
    size_t n = 0, n_rows = 0, ctx_row = 0, ctx_all = 0, bytes = 0;
    int ok = sd_mul_size((size_t)p->batch, (size_t)C, &n) &&
             sd_mul_size(n, (size_t)p->height, &n) && sd_mul_size(n, (size_t)p->width, &n) &&
             sd_mul_size(n, cfg ? 2 : 1, &n_rows) && sd_mul_size(n_rows, sizeof(float), &bytes) &&
             sd_mul_size((size_t)p->context_len, (size_t)p->context_dim, &ctx_row) &&
             sd_mul_size(ctx_row, (size_t)rows, &ctx_all) &&
             sd_mul_size(ctx_all, sizeof(float), &bytes);
    if (!ok)
        return sd_fail(err, SDUNET_E_NOMEM, "sample: latent or context size overflows");

    sdunet_status st = sdunet_sched_set_timesteps(sched, p->steps, err);
    if (st)
        return st;
    const int total = sdunet_sched_num_model_calls(sched);
    int any_noise = 0;
    for (int i = 0; i < total; i++)
        any_noise |= sdunet_sched_step_needs_noise(sched, i);
    if (any_noise && !p->rng)
        return sd_fail(err, SDUNET_E_INVALID_ARG,
                       "sample: scheduler %s needs fresh noise at each "
                       "step; give a generator (params.rng)",
                       sdunet_sched_name(sched));

    /* The context goes to the model as-is when it already has one row per
     * forward row; otherwise it is broadcast and/or joined with the
     * unconditional rows once, before the loop. */
    const float *ctx = p->context;
    float *ctx_buf = NULL, *x_in = NULL, *out = NULL, *noise = NULL;
    if (cfg || p->context_rows != rows) {
        ctx_buf = sd_alloc(ctx_all * sizeof(float));
        if (!ctx_buf)
            goto oom;
        fill_rows(ctx_buf, p->context, p->context_rows, p->batch, ctx_row);
        if (cfg)
            fill_rows(ctx_buf + (size_t)p->batch * ctx_row, p->uncond, p->uncond_rows, p->batch,
                      ctx_row);
        ctx = ctx_buf;
    }
    x_in = sd_alloc(n_rows * sizeof(float));
    out = sd_alloc(n_rows * sizeof(float));
    noise = any_noise ? sd_alloc(n * sizeof(float)) : NULL;
    if (!x_in || !out || (any_noise && !noise))
        goto oom;

    /* diffusers: latents = latents * scheduler.init_noise_sigma, a float32
     * tensor times a float32 scalar. */
    const float sigma0 = (float)sdunet_sched_init_noise_sigma(sched);
    for (size_t k = 0; k < n; k++)
        latent[k] = latent[k] * sigma0;

    int done = 0;
    if (p->progress && p->progress(p->progress_user, 0, total, sdunet_sched_timestep(sched, 0)))
        goto finish;
    for (int i = 0; i < total; i++) {
        st = sdunet_sched_scale_model_input(sched, i, latent, n, x_in, err);
        if (st)
            goto fail;
        if (cfg)
            memcpy(x_in + n, x_in, n * sizeof(float));
        const double t = sdunet_sched_timestep(sched, i);
        const float tf = (float)t;
        st = sdunet_forward(model, x_in, rows, C, p->height, p->width, &tf, 1, ctx, p->context_len,
                            p->context_dim, out, err);
        if (st)
            goto fail;
        if (cfg) {
            st = sdunet_cfg_combine(out + n, out, p->guidance, n, out);
            if (st) {
                sd_fail(err, st, "guidance combine failed");
                goto fail;
            }
        }
        const float *nz = NULL;
        if (sdunet_sched_step_needs_noise(sched, i)) {
            sdunet_rng_normal(p->rng, noise, n);
            nz = noise;
        }
        st = sdunet_sched_step(sched, i, out, latent, n, nz, latent, err);
        if (st)
            goto fail;
        done = i + 1;
        if (p->progress && p->progress(p->progress_user, done, total, t) && done < total)
            break;
    }
finish:
    if (steps_done)
        *steps_done = done;
    sd_free(ctx_buf);
    sd_free(x_in);
    sd_free(out);
    sd_free(noise);
    return SDUNET_OK;
fail:
    st = step_fail(err, st, done, total);
    sd_free(ctx_buf);
    sd_free(x_in);
    sd_free(out);
    sd_free(noise);
    return st;
oom:
    sd_free(ctx_buf);
    sd_free(x_in);
    sd_free(out);
    sd_free(noise);
    return sd_fail(err, SDUNET_E_NOMEM, "sample: out of memory for the loop's buffers");
}
