/* The public API: argument checking, layout conversion at the boundary
 * (NCHW outside, channels-last inside), the per-shape activation plan and
 * the thread pool. */
#include "io/tensorfile.h"
#include "engine/kernels.h"
#include "unet/infer.h"
#include "unet/unet.h"
#include "unet/model_internal.h"
#include "engine/pool.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sdunet_model {
    sd_unet unet;
    sd_runtime rt; /* kernels, 3x3 method, mode, pool, kernel scratch */
    int allow_nonfinite;
    sd_plan plan; /* for the last input shape */
    float *io;    /* channels-last input and output staging, sized with the plan */
    size_t io_floats;
    atomic_flag busy;
    sd_prof *prof; /* time profile by op kind, or NULL */
};

void sd_model_trim(sdunet_model *m)
{
    if (!m || atomic_flag_test_and_set(&m->busy))
        return;
    sd_plan_free(&m->plan);
    sd_free(m->io);
    m->io = NULL;
    sd_workspace_free(&m->rt.ws);
    atomic_flag_clear(&m->busy);
}

void sd_model_set_profile(sdunet_model *m, sd_prof *prof)
{
    if (m)
        m->prof = prof;
}

/* Upper bounds on input sizes: generous for real use, small enough that no
 * size computation can overflow. */
#define SD_MAX_BATCH 1024
#define SD_MAX_SIDE 8192
#define SD_MAX_CONTEXT 65536

void sdunet_options_default(sdunet_options *opt)
{
    if (opt)
        memset(opt, 0, sizeof *opt);
}

static sdunet_status model_new(const sdunet_options *opt, sd_pool *shared, sdunet_model **out,
                               sdunet_error *err)
{
    *out = NULL;
    sdunet_model *m = calloc(1, sizeof *m);
    if (!m)
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    sdunet_status st = sd_runtime_from_options(&m->rt, opt, shared, err);
    if (st) {
        free(m);
        return st;
    }
    atomic_flag_clear(&m->busy);
    m->allow_nonfinite = opt && opt->allow_nonfinite != 0;
    *out = m;
    return SDUNET_OK;
}

sdunet_status sd_model_create(const sd_unet_config *cfg, const sd_weight_source *src,
                              const sdunet_options *opt, sdunet_model **out, sdunet_error *err)
{
    sdunet_model *m = NULL;
    sdunet_status st = model_new(opt, src->pool, &m, err);
    if (st)
        return st;
    sd_weight_source s = *src;
    s.pool = m->rt.pool;
    if (opt && opt->weights != SDUNET_WEIGHTS_AUTO)
        s.weights = opt->weights;
    const char *geglu = getenv("SDUNET_GEGLU");
    if (geglu && strcmp(geglu, "unfused") == 0)
        s.geglu_unfused = 1;
    if ((st = sd_unet_build(&m->unet, cfg, &s, m->rt.kern, err))) {
        sdunet_free(m);
        return st;
    }
    *out = m;
    return SDUNET_OK;
}

sdunet_status sd_model_open(const char *path, const char *config, int synthetic,
                            const sdunet_options *opt, const sd_share *sh, sdunet_model **out,
                            sdunet_error *err)
{
    if (!out)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL output pointer");
    *out = NULL;
    sd_weight_source src = {.pool = sh ? sh->pool : NULL};
    if (synthetic) {
        if (!config)
            return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL config");
        sd_unet_config cfg;
        sdunet_status st = sd_config_load(config, &cfg, err);
        return st ? st : sd_model_create(&cfg, &src, opt, out, err);
    }
    if (!path)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL weights path");
    /* Large enough (three paths) that it lives on the heap. */
    sd_model_files *mf = calloc(1, sizeof *mf);
    if (!mf)
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    mf->share = sh;
    sdunet_status st = sd_model_files_open(path, opt ? opt->variant : NULL, mf, err);
    if (!st)
        st = sd_model_files_config(mf, config, err);
    if (!st) {
        src.file = mf->tf;
        st = sd_model_create(&mf->cfg, &src, opt, out, err);
        if (st && st != SDUNET_E_NOMEM)
            sd_err_prefix(err, mf->weights);
    }
    sd_model_files_close(mf);
    free(mf);
    return st;
}

sdunet_status sdunet_load_synthetic(const char *config, const sdunet_options *opt,
                                    sdunet_model **out, sdunet_error *err)
{
    return sd_model_open(NULL, config, 1, opt, NULL, out, err);
}

sdunet_status sdunet_load(const char *weights_path, const char *config_path,
                          const sdunet_options *opt, sdunet_model **out, sdunet_error *err)
{
    return sd_model_open(weights_path, config_path, 0, opt, NULL, out, err);
}

sdunet_status sdunet_set_threads(sdunet_model *m, int threads, sdunet_error *err)
{
    if (!m)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL model");
    if (atomic_flag_test_and_set(&m->busy))
        return sd_fail(err, SDUNET_E_BUSY, "model is running a forward on another thread");
    sdunet_status st = sd_pool_resize(&m->rt.pool, &m->rt.threads, threads, err);
    atomic_flag_clear(&m->busy);
    return st;
}

void sdunet_get_info(const sdunet_model *m, sdunet_model_info *info)
{
    if (!info)
        return;
    memset(info, 0, sizeof *info);
    if (!m)
        return;
    info->in_channels = m->unet.cfg.in_channels;
    info->out_channels = m->unet.cfg.out_channels;
    info->context_dim = m->unet.cfg.cross_attention_dim;
    info->n_params = m->unet.n_params;
    info->threads = m->rt.threads;
    info->isa = m->rt.kern->name;
}

void sd_model_packed_bytes(const sdunet_model *m, size_t *bytes)
{
    for (int t = 0; t < SD_WT_COUNT; t++)
        bytes[t] = m ? m->unet.packed_bytes[t] : 0;
}

const char *sd_weights_label(const size_t *bytes)
{
    int only = -1;
    for (int t = 0; t < SD_WT_COUNT; t++)
        if (bytes[t])
            only = only < 0 ? t : SD_WT_COUNT;
    return only < 0 ? "none" : only == SD_WT_COUNT ? "mixed" : sd_wtype_name(only);
}

void sdunet_free(sdunet_model *m)
{
    if (!m)
        return;
    sd_unet_release(&m->unet);
    sd_plan_free(&m->plan);
    sd_free(m->io);
    sd_runtime_free(&m->rt);
    free(m);
}

sdunet_status sd_model_forward_ev(sdunet_model *m, const float *sample, int batch, int channels,
                                  int height, int width, const float *timesteps, int n_timesteps,
                                  const float *context, int context_len, int context_dim,
                                  float *out, sd_event_fn ev, void *ev_user, sdunet_error *err)
{
    if (!m || !sample || !timesteps || !context || !out)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL %s",
                       !m           ? "model"
                       : !sample    ? "sample"
                       : !timesteps ? "timesteps"
                       : !context   ? "context"
                                    : "output");
    const sd_unet_config *c = &m->unet.cfg;
    if (batch < 1 || batch > SD_MAX_BATCH)
        return sd_fail(err, SDUNET_E_SHAPE, "batch %d out of range 1..%d", batch, SD_MAX_BATCH);
    if (channels != c->in_channels)
        return sd_fail(err, SDUNET_E_SHAPE, "sample has %d channels; the model takes %d", channels,
                       c->in_channels);
    if (height < 1 || width < 1 || height > SD_MAX_SIDE || width > SD_MAX_SIDE)
        return sd_fail(err, SDUNET_E_SHAPE, "latent size %dx%d out of range 1..%d", height, width,
                       SD_MAX_SIDE);
    if (context_len < 1 || context_len > SD_MAX_CONTEXT)
        return sd_fail(err, SDUNET_E_SHAPE, "context length %d out of range 1..%d", context_len,
                       SD_MAX_CONTEXT);
    if (context_dim != c->cross_attention_dim)
        return sd_fail(err, SDUNET_E_SHAPE, "context width %d; the model takes %d", context_dim,
                       c->cross_attention_dim);
    if (n_timesteps != 1 && n_timesteps != batch)
        return sd_fail(err, SDUNET_E_SHAPE, "%d timesteps for batch %d (give 1 or %d)", n_timesteps,
                       batch, batch);
    size_t hw = (size_t)height * width, n_in = (size_t)batch * channels * hw;
    size_t n_out = (size_t)batch * c->out_channels * hw;
    size_t n_ctx = (size_t)batch * context_len * context_dim;
    if (sd_overlaps(out, n_out * 4, sample, n_in * 4) ||
        sd_overlaps(out, n_out * 4, context, n_ctx * 4) ||
        sd_overlaps(out, n_out * 4, timesteps, (size_t)n_timesteps * 4))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "output buffer overlaps an input");
    if (!m->allow_nonfinite) {
        if (!sd_all_finite(sample, n_in))
            return sd_fail(err, SDUNET_E_NONFINITE, "sample contains NaN or Inf");
        if (!sd_all_finite(context, n_ctx))
            return sd_fail(err, SDUNET_E_NONFINITE, "context contains NaN or Inf");
        if (!sd_all_finite(timesteps, (size_t)n_timesteps))
            return sd_fail(err, SDUNET_E_NONFINITE, "timestep is NaN or Inf");
    }
    if (!m->unet.has_weights)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "model has no weights");
    if (atomic_flag_test_and_set(&m->busy))
        return sd_fail(err, SDUNET_E_BUSY, "model is running a forward on another thread");

    sdunet_status st = SDUNET_OK;
    sd_plan *plan = &m->plan;
    if (!plan->mem || plan->B != batch || plan->H != height || plan->W != width ||
        plan->L != context_len) {
        sd_plan_free(plan);
        sd_free(m->io);
        m->io = NULL;
        sd_unet_plan(&m->unet, batch, height, width, context_len, plan, NULL, NULL);
        st = sd_plan_alloc(plan, err);
        m->io_floats = n_in + n_out + (size_t)batch;
        if (!st && !(m->io = sd_alloc(m->io_floats * sizeof(float)))) {
            sd_plan_free(plan);
            st = sd_fail(err, SDUNET_E_NOMEM, "out of memory");
        }
    }
    if (!st) {
        float *x = m->io, *y = x + n_in, *t = y + n_out;
        /* NCHW -> channels-last */
        for (int b = 0; b < batch; b++)
            for (int ch = 0; ch < channels; ch++)
                for (size_t p = 0; p < hw; p++)
                    x[((size_t)b * hw + p) * channels + ch] =
                        sample[((size_t)b * channels + ch) * hw + p];
        for (int b = 0; b < batch; b++)
            t[b] = timesteps[n_timesteps == 1 ? 0 : b];
        int fault = 0;
        sd_exec ex = sd_runtime_exec(&m->rt, &fault);
        sd_unet_forward(&m->unet, &ex, plan, x, t, context, y, ev, ev_user, m->prof);
        if (fault)
            st = sd_fail(err, SDUNET_E_INTERNAL,
                         "internal error: packed weights do not match the kernel call "
                         "(a library bug; please report it)");
        const int oc = fault ? 0 : c->out_channels;
        for (int b = 0; b < batch; b++)
            for (int ch = 0; ch < oc; ch++)
                for (size_t p = 0; p < hw; p++)
                    out[((size_t)b * oc + ch) * hw + p] = y[((size_t)b * hw + p) * oc + ch];
    }
    atomic_flag_clear(&m->busy);
    return st;
}

sdunet_status sdunet_forward(sdunet_model *m, const float *sample, int batch, int channels,
                             int height, int width, const float *timesteps, int n_timesteps,
                             const float *context, int context_len, int context_dim, float *out,
                             sdunet_error *err)
{
    return sd_model_forward_ev(m, sample, batch, channels, height, width, timesteps, n_timesteps,
                               context, context_len, context_dim, out, NULL, NULL, err);
}
