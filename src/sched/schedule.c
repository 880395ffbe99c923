/* Scheduler lifecycle and tables: betas, alphas_cumprod, the sigma table,
 * timestep spacing and the Karras schedule, as diffusers v0.25.1 builds them.
 *
 * diffusers keeps betas, alphas_cumprod and sigmas as float32 tensors, and the
 * trajectories it produces carry that rounding, so the tables here are float32
 * and computed with the same float32 operations (torch.linspace's vectorized
 * formula, 1 - beta in float32, cumprod accumulated in double the way torch's
 * CPU cumprod does, then rounded per element). With the SD1.5 betas every
 * sigma of the reference data is reproduced exactly. */
#include "sched/sched_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void sdunet_sched_config_default(sdunet_sched_config *cfg)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof *cfg);
    cfg->num_train_timesteps = 1000;
    cfg->beta_start = 0.00085;
    cfg->beta_end = 0.012;
    cfg->beta_schedule = SDUNET_BETA_SCALED_LINEAR;
    cfg->steps_offset = 1;
    cfg->set_alpha_to_one = 0;
    cfg->prediction_type = SDUNET_PRED_EPSILON;
    cfg->eta = 0.0;
    cfg->timestep_spacing = SDUNET_SPACING_LEADING;
}

static const struct {
    const char *name;
    sd_sched_kind kind;
    int karras;
} sched_names[] = {
    {"ddim", SD_SCHED_DDIM, 0},
    {"euler", SD_SCHED_EULER, 0},
    {"euler_a", SD_SCHED_EULER_A, 0},
    {"dpmpp_2m", SD_SCHED_DPMPP_2M, 0},
    {"dpmpp_2m_karras", SD_SCHED_DPMPP_2M, 1},
    {"pndm", SD_SCHED_PNDM, 0},
    {"lms", SD_SCHED_LMS, 0},
    {"unipc", SD_SCHED_UNIPC, 0},
};

/* torch.linspace(start, end, steps, dtype=float32) as PyTorch's CPU kernel
 * computes it in its AVX2 build (the reference data's betas agree with this
 * bit for bit, and with no plain-arithmetic variant): the step is a float32
 * quotient; vectors of 8 start from start + step * base in the first half and
 * from end - step * (steps - 1 - base) in the second, and fill the lanes with
 * base + lane * step; the compiler fused each of those into one FMA. The
 * elements after the last pair of vectors take the scalar path. */
static void linspace_f32(float start, float end, int steps, float *out)
{
    enum { VEC = 8 };
    if (steps == 1) {
        out[0] = start;
        return;
    }
    const float diff = end - start;
    const float step = diff / (float)(steps - 1);
    const int half = steps / 2;
    const int n_vec = steps / (2 * VEC) * (2 * VEC);
    for (int i = 0; i < steps; i++) {
        int base = i < n_vec ? i / VEC * VEC : i;
        float b = base < half ? fmaf(step, (float)base, start)
                              : fmaf(-step, (float)(steps - base - 1), end);
        out[i] = i == base ? b : fmaf((float)(i - base), step, b);
    }
}

static sdunet_status check_config(const sdunet_sched_config *c, sdunet_error *err)
{
    if (c->num_train_timesteps < 2 || c->num_train_timesteps > 100000)
        return sd_fail(err, SDUNET_E_INVALID_ARG,
                       "scheduler: num_train_timesteps %d is outside 2..100000",
                       c->num_train_timesteps);
    if (!(c->beta_start > 0.0 && c->beta_start < 1.0) || !(c->beta_end > 0.0 && c->beta_end < 1.0))
        return sd_fail(err, SDUNET_E_INVALID_ARG,
                       "scheduler: beta_start %g and beta_end %g must lie in (0, 1)", c->beta_start,
                       c->beta_end);
    if (c->beta_schedule != SDUNET_BETA_SCALED_LINEAR && c->beta_schedule != SDUNET_BETA_LINEAR)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "scheduler: unknown beta schedule %d",
                       (int)c->beta_schedule);
    if (c->steps_offset < 0 || c->steps_offset >= c->num_train_timesteps)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "scheduler: steps_offset %d is outside 0..%d",
                       c->steps_offset, c->num_train_timesteps - 1);
    if (c->set_alpha_to_one != 0 && c->set_alpha_to_one != 1)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "scheduler: set_alpha_to_one must be 0 or 1");
    if (c->prediction_type != SDUNET_PRED_EPSILON && c->prediction_type != SDUNET_PRED_V)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "scheduler: unknown prediction type %d",
                       (int)c->prediction_type);
    if (c->timestep_spacing != SDUNET_SPACING_LEADING &&
        c->timestep_spacing != SDUNET_SPACING_LINSPACE &&
        c->timestep_spacing != SDUNET_SPACING_TRAILING)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "scheduler: unknown timestep spacing %d",
                       (int)c->timestep_spacing);
    if (!(c->eta >= 0.0 && c->eta <= 1.0))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "scheduler: eta %g is outside 0..1", c->eta);
    return SDUNET_OK;
}

static sdunet_status build_tables(sdunet_scheduler *s, sdunet_error *err)
{
    const int T = s->T;
    float *betas = malloc((size_t)T * sizeof *betas);
    s->alphas_cumprod = malloc((size_t)T * sizeof *s->alphas_cumprod);
    s->train_sigmas = malloc((size_t)T * sizeof *s->train_sigmas);
    if (!betas || !s->alphas_cumprod || !s->train_sigmas) {
        free(betas);
        return sd_fail(err, SDUNET_E_NOMEM, "scheduler: out of memory for %d-entry tables", T);
    }
    if (s->cfg.beta_schedule == SDUNET_BETA_SCALED_LINEAR) {
        /* Python computes beta_start ** 0.5 in double; torch rounds it to float32. */
        linspace_f32((float)sqrt(s->cfg.beta_start), (float)sqrt(s->cfg.beta_end), T, betas);
        for (int t = 0; t < T; t++)
            betas[t] = betas[t] * betas[t];
    } else {
        linspace_f32((float)s->cfg.beta_start, (float)s->cfg.beta_end, T, betas);
    }
    double prod = 1.0;
    for (int t = 0; t < T; t++) {
        float alpha = 1.0f - betas[t];
        prod *= (double)alpha;
        s->alphas_cumprod[t] = (float)prod;
    }
    free(betas);
    for (int t = 0; t < T; t++) {
        float ac = s->alphas_cumprod[t];
        float q = (1.0f - ac) / ac;
        s->train_sigmas[t] = sqrtf(q);
        if (!(ac > 0.0f) || !isfinite(s->train_sigmas[t]) || !(s->train_sigmas[t] > 0.0f))
            return sd_fail(err, SDUNET_E_INVALID_ARG,
                           "scheduler: alphas_cumprod[%d] = %g gives no finite noise level", t,
                           (double)ac);
    }
    s->final_alpha_cumprod = s->cfg.set_alpha_to_one ? 1.0f : s->alphas_cumprod[0];
    return SDUNET_OK;
}

sdunet_status sdunet_sched_create(const char *name, const sdunet_sched_config *cfg,
                                  sdunet_scheduler **out, sdunet_error *err)
{
    if (out)
        *out = NULL;
    if (!name || !out)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "scheduler: NULL name or output pointer");
    int which = -1;
    for (size_t k = 0; k < sizeof sched_names / sizeof sched_names[0]; k++)
        if (strcmp(name, sched_names[k].name) == 0)
            which = (int)k;
    if (which < 0)
        return sd_fail(err, SDUNET_E_INVALID_ARG,
                       "scheduler: unknown name \"%.64s\" (ddim, euler, euler_a, dpmpp_2m, "
                       "dpmpp_2m_karras, pndm, lms, unipc)",
                       name);
    sdunet_sched_config c;
    if (cfg)
        c = *cfg;
    else
        sdunet_sched_config_default(&c);
    sdunet_status st = check_config(&c, err);
    if (st != SDUNET_OK)
        return st;

    sdunet_scheduler *s = calloc(1, sizeof *s);
    if (!s)
        return sd_fail(err, SDUNET_E_NOMEM, "scheduler: out of memory");
    s->kind = sched_names[which].kind;
    s->karras = sched_names[which].karras;
    s->name = sched_names[which].name;
    s->cfg = c;
    s->T = c.num_train_timesteps;
    s->last_index = -1;
    s->init_noise_sigma = NAN;
    st = build_tables(s, err);
    if (st != SDUNET_OK) {
        sdunet_sched_free(s);
        return st;
    }
    *out = s;
    return SDUNET_OK;
}

static void free_state(sdunet_scheduler *s)
{
    for (int k = 0; k < SD_SCHED_HIST; k++) {
        free(s->hist[k]);
        s->hist[k] = NULL;
    }
    free(s->saved);
    s->saved = NULL;
    s->buf_elems = 0;
}

void sdunet_sched_free(sdunet_scheduler *s)
{
    if (!s)
        return;
    free_state(s);
    free(s->scratch);
    free(s->alphas_cumprod);
    free(s->train_sigmas);
    free(s->timesteps);
    free(s->sigmas);
    free(s);
}

const char *sdunet_sched_name(const sdunet_scheduler *s)
{
    return s ? s->name : NULL;
}

/* np.interp(x, arange(T), table): linear between integer neighbours, clamped
 * to the end values outside [0, T-1]. */
static double interp_table(const float *table, int T, double x)
{
    if (!(x > 0.0))
        return table[0];
    if (x >= (double)(T - 1))
        return table[T - 1];
    int j = (int)floor(x);
    double lo = table[j], hi = table[j + 1];
    double slope = hi - lo;
    return slope * (x - (double)j) + lo;
}

/* EulerDiscreteScheduler._sigma_to_t with a float32 log-sigma table. NumPy 1.x
 * value-based casting makes the comparison and the weight float32 (the float64
 * log sigma meets a float32 array), and only the final blend float64. */
static double sigma_to_t(const float *log_sigmas, int T, double sigma)
{
    float ls = (float)log(fmax(sigma, 1e-10));
    /* low = the last j with log_sigmas[j] <= ls (0 if none); the table is
     * non-decreasing, so bisect. */
    int lo = 0, hi = T; /* first index with log_sigmas[j] > ls lies in [lo, hi] */
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (log_sigmas[mid] <= ls)
            lo = mid + 1;
        else
            hi = mid;
    }
    int low = lo > 0 ? lo - 1 : 0;
    if (low > T - 2)
        low = T - 2;
    int high = low + 1;
    float num = log_sigmas[low] - ls;
    float den = log_sigmas[low] - log_sigmas[high];
    float w = num / den;
    if (w < 0.0f)
        w = 0.0f;
    if (w > 1.0f)
        w = 1.0f;
    float one_minus_w = 1.0f - w;
    return (double)one_minus_w * (double)low + (double)w * (double)high;
}

/* Karras et al. (2022) noise levels between the table's ends, rho = 7, as
 * DPMSolverMultistepScheduler._convert_to_karras (float64, numpy linspace
 * ramp). Writes float32 sigmas and rounded timesteps. */
static sdunet_status karras_schedule(sdunet_scheduler *s, int n, sdunet_error *err)
{
    const int T = s->T;
    float *log_sigmas = malloc((size_t)T * sizeof *log_sigmas);
    if (!log_sigmas)
        return sd_fail(err, SDUNET_E_NOMEM, "scheduler: out of memory");
    for (int t = 0; t < T; t++)
        log_sigmas[t] = logf(s->train_sigmas[t]);
    const double rho = 7.0;
    double sigma_min = s->train_sigmas[0], sigma_max = s->train_sigmas[T - 1];
    double min_inv_rho = pow(sigma_min, 1.0 / rho);
    double max_inv_rho = pow(sigma_max, 1.0 / rho);
    double step = n > 1 ? 1.0 / (double)(n - 1) : 0.0;
    for (int i = 0; i < n; i++) {
        double ramp = (n > 1 && i == n - 1) ? 1.0 : (double)i * step;
        double sig = pow(max_inv_rho + ramp * (min_inv_rho - max_inv_rho), rho);
        s->sigmas[i] = (float)sig;
        s->timesteps[i] = nearbyint(sigma_to_t(log_sigmas, T, sig));
    }
    /* v0.25.1 repeats the last sigma, so the final step has h = 0. */
    s->sigmas[n] = s->sigmas[n - 1];
    free(log_sigmas);
    return SDUNET_OK;
}

/* numpy's linspace(0, stop, num)[i] (float64). */
static double np_linspace(double stop, int num, int i)
{
    if (num <= 1)
        return 0.0;
    if (i == num - 1)
        return stop;
    return (double)i * (stop / (double)(num - 1));
}

/* numpy's arange(T, 0, -T / n)[k], rounded half to even: the trailing grid. */
static double trailing_at(int T, int n, int k)
{
    return rint((double)T + (double)k * -((double)T / (double)n));
}

/* Timestep k (descending, k < n) of the integer samplers (DDIM, PNDM)
 * before PNDM's repetition; -1 when out of the table. */
static double int_timestep(const sdunet_scheduler *s, int n, int k)
{
    const int T = s->T;
    switch (s->cfg.timestep_spacing) {
    case SDUNET_SPACING_LINSPACE: return rint(np_linspace(T - 1, n, n - 1 - k));
    case SDUNET_SPACING_TRAILING: return trailing_at(T, n, k) - 1.0;
    default: return (double)((n - 1 - k) * (T / n) + s->cfg.steps_offset);
    }
}

sdunet_status sdunet_sched_set_timesteps(sdunet_scheduler *s, int n, sdunet_error *err)
{
    if (!s)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "scheduler: NULL scheduler");
    const int T = s->T;
    if (n < 1 || n > T)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "scheduler: %d inference steps is outside 1..%d",
                       n, T);
    const int offset = s->cfg.steps_offset;
    int n_calls = n;
    if (s->kind == SD_SCHED_PNDM && n >= 2)
        n_calls = n + 1;
    int has_sigmas = s->kind != SD_SCHED_DDIM && s->kind != SD_SCHED_PNDM;

    double *ts = malloc((size_t)n_calls * sizeof *ts);
    float *sig = has_sigmas ? malloc((size_t)(n + 1) * sizeof *sig) : NULL;
    if (!ts || (has_sigmas && !sig)) {
        free(ts);
        free(sig);
        return sd_fail(err, SDUNET_E_NOMEM, "scheduler: out of memory for %d steps", n);
    }
    free(s->timesteps);
    free(s->sigmas);
    s->timesteps = ts;
    s->sigmas = sig;
    s->n_sigmas = has_sigmas ? n + 1 : 0;
    s->n_steps = 0; /* marked valid only once everything below succeeded */

    sdunet_status st = SDUNET_OK;
    switch (s->kind) {
    case SD_SCHED_DDIM:
    case SD_SCHED_PNDM: {
        s->step_ratio = T / n; /* DDIM's step to the previous timestep */
        double top = int_timestep(s, n, 0), bottom = int_timestep(s, n, n - 1);
        if (top > T - 1 || bottom < 0) {
            st = sd_fail(err, SDUNET_E_INVALID_ARG,
                         "scheduler: %d steps with steps_offset %d reach timestep %.0f >= %d", n,
                         offset, top, T);
            break;
        }
        if (s->kind == SD_SCHED_DDIM || n == 1) {
            for (int i = 0; i < n; i++)
                ts[i] = int_timestep(s, n, i);
        } else {
            /* skip_prk_steps: the second timestep is repeated, and that call
             * redoes the first step with the mean of two model outputs. */
            ts[0] = int_timestep(s, n, 0);
            ts[1] = int_timestep(s, n, 1);
            for (int k = 2; k <= n; k++)
                ts[k] = int_timestep(s, n, k - 1);
        }
        s->init_noise_sigma = 1.0;
        break;
    }
    case SD_SCHED_EULER:
    case SD_SCHED_EULER_A:
    case SD_SCHED_LMS: {
        const int ratio = T / n;
        s->step_ratio = ratio;
        float max_sigma = 0.0f;
        for (int i = 0; i < n; i++) {
            /* Timesteps are float32 here; np.interp clamps beyond T - 1. */
            switch (s->cfg.timestep_spacing) {
            case SDUNET_SPACING_LINSPACE:
                ts[i] = (double)(float)np_linspace(T - 1, n, n - 1 - i);
                break;
            case SDUNET_SPACING_TRAILING:
                ts[i] = (double)((float)trailing_at(T, n, i) - 1.0f);
                break;
            default: ts[i] = (double)((n - 1 - i) * ratio + offset); break;
            }
            sig[i] = (float)interp_table(s->train_sigmas, T, ts[i]);
            if (sig[i] > max_sigma)
                max_sigma = sig[i];
        }
        sig[n] = 0.0f;
        if (s->cfg.timestep_spacing == SDUNET_SPACING_LEADING) {
            /* (sigma_max ** 2 + 1) ** 0.5 on a float32 tensor. */
            float sq = max_sigma * max_sigma;
            float sum = sq + 1.0f;
            s->init_noise_sigma = (double)sqrtf(sum);
        } else {
            s->init_noise_sigma = (double)max_sigma;
        }
        break;
    }
    case SD_SCHED_DPMPP_2M:
    case SD_SCHED_UNIPC:
        if (s->karras) {
            st = karras_schedule(s, n, err);
        } else {
            /* Their own grids: n + 1 points with the zero dropped ("leading":
             * T // (n + 1)); the last sigma is sigma(t = 0), not 0. */
            const int ratio = T / (n + 1);
            s->step_ratio = ratio;
            for (int i = 0; i < n; i++) {
                switch (s->cfg.timestep_spacing) {
                case SDUNET_SPACING_LINSPACE: ts[i] = rint(np_linspace(T - 1, n + 1, n - i)); break;
                case SDUNET_SPACING_TRAILING: ts[i] = trailing_at(T, n, i) - 1.0; break;
                default: ts[i] = (double)((n - i) * ratio + offset); break;
                }
                sig[i] = (float)interp_table(s->train_sigmas, T, ts[i]);
            }
            sig[n] = s->train_sigmas[0];
        }
        s->init_noise_sigma = 1.0;
        break;
    }
    if (st != SDUNET_OK)
        return st;

    s->n_steps = n;
    s->n_calls = n_calls;
    /* A new run: forget the multistep history (buffers are kept for reuse). */
    s->n_elems = 0;
    s->last_index = -1;
    s->n_hist = 0;
    s->have_saved = 0;
    s->counter = 0;
    s->lower_order_nums = 0;
    s->this_order = 0;
    return SDUNET_OK;
}

int sdunet_sched_num_model_calls(const sdunet_scheduler *s)
{
    return (s && s->n_steps > 0) ? s->n_calls : 0;
}

double sdunet_sched_timestep(const sdunet_scheduler *s, int i)
{
    if (!s || s->n_steps == 0 || i < 0 || i >= s->n_calls)
        return NAN;
    return s->timesteps[i];
}

int sdunet_sched_num_sigmas(const sdunet_scheduler *s)
{
    return (s && s->n_steps > 0) ? s->n_sigmas : 0;
}

double sdunet_sched_sigma(const sdunet_scheduler *s, int i)
{
    if (!s || s->n_steps == 0 || i < 0 || i >= s->n_sigmas)
        return NAN;
    return (double)s->sigmas[i];
}

double sdunet_sched_init_noise_sigma(const sdunet_scheduler *s)
{
    return (s && s->n_steps > 0) ? s->init_noise_sigma : NAN;
}

sdunet_status sd_sched_ensure_state(sdunet_scheduler *s, size_t n, sdunet_error *err)
{
    int n_hist = 0, want_saved = 0;
    switch (s->kind) {
    case SD_SCHED_DDIM:
    case SD_SCHED_EULER:
    case SD_SCHED_EULER_A: return SDUNET_OK;
    case SD_SCHED_DPMPP_2M: n_hist = 1; break;
    case SD_SCHED_UNIPC:
        n_hist = 2;
        want_saved = 1;
        break;
    case SD_SCHED_LMS: n_hist = 4; break;
    case SD_SCHED_PNDM:
        n_hist = 4;
        want_saved = 1;
        break;
    }
    if (s->hist[0] && s->buf_elems == n)
        return SDUNET_OK;
    /* The element count changed between runs (or this is the first run):
     * reallocate, keeping nothing. */
    free_state(s);
    size_t bytes;
    if (!sd_mul_size(n, sizeof(double), &bytes))
        return sd_fail(err, SDUNET_E_NOMEM, "scheduler: %zu elements overflow", n);
    for (int k = 0; k < n_hist; k++) {
        s->hist[k] = malloc(bytes);
        if (!s->hist[k]) {
            free_state(s);
            return sd_fail(err, SDUNET_E_NOMEM, "scheduler: out of memory for %zu elements", n);
        }
    }
    if (want_saved) {
        s->saved = malloc(bytes);
        if (!s->saved) {
            free_state(s);
            return sd_fail(err, SDUNET_E_NOMEM, "scheduler: out of memory for %zu elements", n);
        }
    }
    s->buf_elems = n;
    return SDUNET_OK;
}

sdunet_status sdunet_sched_add_noise(const sdunet_scheduler *s, int i, const float *x0,
                                     const float *noise, size_t n, float *out, sdunet_error *err)
{
    if (!s || (n && (!x0 || !noise || !out)))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "add_noise: NULL argument");
    if (s->n_steps == 0 || i < 0 || i >= s->n_calls)
        return sd_fail(err, SDUNET_E_INVALID_ARG,
                       "add_noise: call index %d out of range (set_timesteps first)", i);
    /* The coefficients as diffusers 0.25.1 forms them, in double (our
     * reference runs the pipeline in float64); the result rounded once. */
    double a, b;
    switch (s->kind) {
    case SD_SCHED_DDIM:
    case SD_SCHED_PNDM: { /* alphas_cumprod[t] */
        int t = (int)s->timesteps[i];
        if (t < 0 || t >= s->T)
            return sd_fail(err, SDUNET_E_INVALID_ARG, "add_noise: timestep %d", t);
        double ac = s->alphas_cumprod[t];
        a = sqrt(ac);
        b = sqrt(1.0 - ac);
        break;
    }
    case SD_SCHED_DPMPP_2M:
    case SD_SCHED_UNIPC: { /* sigma -> (alpha_t, sigma_t) */
        double sg = s->sigmas[i];
        a = 1.0 / sqrt(sg * sg + 1.0);
        b = sg * a;
        break;
    }
    default: /* euler, euler_a, lms: x0 + noise * sigma */
        a = 1.0;
        b = s->sigmas[i];
        break;
    }
    for (size_t k = 0; k < n; k++)
        out[k] = (float)(a * (double)x0[k] + b * (double)noise[k]);
    return SDUNET_OK;
}
