/* The step rules of each sampler, after diffusers v0.25.1.
 *
 * Latents and model outputs are handled in double. The scalar coefficients
 * are computed in float32 wherever diffusers computes them on float32 tensors
 * (alphas_cumprod and sigmas are float32 there, and a 0-dim float32 tensor
 * stays float32 until it multiplies the float64 latent), written one operation
 * per statement so the rounding matches and no multiply-add gets fused. The
 * elementwise expressions keep diffusers' evaluation order.
 *
 * Every loop reads element j of all inputs before writing element j of any
 * output, so out may be the same array as x or the model output, and a new
 * history entry may overwrite the slot of the one it retires. */
#include "sched/sched_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* float32 scalar helpers                                                    */

/* _sigma_to_alpha_sigma_t: alpha = 1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha. */
static void alpha_sigma_of(float sigma, float *alpha, float *sigma_t)
{
    float sq = sigma * sigma;
    float sum = sq + 1.0f;
    float root = sqrtf(sum);
    float a = 1.0f / root;
    *alpha = a;
    *sigma_t = sigma * a;
}

/* lambda = log(alpha) - log(sigma), the half log-SNR. */
static float lambda_of(float alpha, float sigma_t)
{
    float la = logf(alpha);
    float ls = logf(sigma_t);
    return la - ls;
}

/* Karras-style preconditioning for v_prediction on sigma-based samplers:
 * x0 = v * (-sigma / sqrt(sigma^2 + 1)) + x / (sigma^2 + 1). */
typedef struct vcoef {
    float c_out; /* -sigma / sqrt(sigma^2 + 1) */
    float c_div; /* sigma^2 + 1 */
} vcoef;

static vcoef v_coef(float sigma)
{
    vcoef v;
    float sq = sigma * sigma;
    v.c_div = sq + 1.0f;
    float root = sqrtf(v.c_div);
    float neg = -sigma;
    v.c_out = neg / root;
    return v;
}

/* ------------------------------------------------------------------------ */
/* History slots                                                             */

/* The slot a new history entry is written to: the one that falls off the end. */
static double *new_slot(const sdunet_scheduler *s, int cap)
{
    return s->hist[cap - 1];
}

/* After the loop has filled new_slot(): make it the newest entry. */
static void push_slot(sdunet_scheduler *s, int cap)
{
    double *slot = s->hist[cap - 1];
    for (int k = cap - 1; k > 0; k--)
        s->hist[k] = s->hist[k - 1];
    s->hist[0] = slot;
    if (s->n_hist < cap)
        s->n_hist++;
}

/* ------------------------------------------------------------------------ */
/* DDIM (eta >= 0), DDIMScheduler.step                                       */

static void step_ddim(const sdunet_scheduler *s, int i, const double *m, const double *x, size_t n,
                      const double *noise, double *out)
{
    const int t = (int)s->timesteps[i];
    const int prev_t = t - s->step_ratio;
    const float a_t = s->alphas_cumprod[t];
    const float a_prev = prev_t >= 0 ? s->alphas_cumprod[prev_t] : s->final_alpha_cumprod;
    const float b_t = 1.0f - a_t;
    const float sa_t = sqrtf(a_t);
    const float sb_t = sqrtf(b_t);
    const float sa_prev = sqrtf(a_prev);

    /* sigma_t(eta) of formula (16); 0 for eta = 0. */
    const float b_prev = 1.0f - a_prev;
    const float r_b = b_prev / b_t;
    const float r_a = a_t / a_prev;
    const float one_minus = 1.0f - r_a;
    const float variance = r_b * one_minus;
    const float std_dev = (float)s->cfg.eta * sqrtf(variance);
    const float std2 = std_dev * std_dev;
    const float dir_sq_a = 1.0f - a_prev;
    float dir_sq = dir_sq_a - std2;
    if (dir_sq < 0.0f) /* rounding only, for eta = 1 at tiny steps */
        dir_sq = 0.0f;
    const float dir = sqrtf(dir_sq);
    const int use_noise = s->cfg.eta > 0.0;
    const int v_pred = s->cfg.prediction_type == SDUNET_PRED_V;

    for (size_t j = 0; j < n; j++) {
        double xj = x[j], mj = m[j];
        double x0, eps;
        if (v_pred) {
            x0 = (double)sa_t * xj - (double)sb_t * mj;
            eps = (double)sa_t * mj + (double)sb_t * xj;
        } else {
            x0 = (xj - (double)sb_t * mj) / (double)sa_t;
            eps = mj;
        }
        double prev = (double)sa_prev * x0 + (double)dir * eps;
        if (use_noise)
            prev = prev + (double)std_dev * noise[j];
        out[j] = prev;
    }
}

/* ------------------------------------------------------------------------ */
/* Euler (s_churn = 0) and Euler ancestral                                   */

static void step_euler(const sdunet_scheduler *s, int i, const double *m, const double *x, size_t n,
                       double *out)
{
    const float sigma = s->sigmas[i];
    const float sigma_hat = sigma; /* gamma = 0 without churn */
    const float dt = s->sigmas[i + 1] - sigma_hat;
    const vcoef vc = v_coef(sigma);
    const int v_pred = s->cfg.prediction_type == SDUNET_PRED_V;

    for (size_t j = 0; j < n; j++) {
        /* diffusers upcasts the sample "to float32" at every step. */
        double xs = (double)(float)x[j];
        double mj = m[j];
        double x0 =
            v_pred ? mj * (double)vc.c_out + xs / (double)vc.c_div : xs - (double)sigma_hat * mj;
        double deriv = (xs - x0) / (double)sigma_hat;
        out[j] = xs + deriv * (double)dt;
    }
}

static void step_euler_a(const sdunet_scheduler *s, int i, const double *m, const double *x,
                         size_t n, const double *noise, double *out)
{
    const float sigma = s->sigmas[i];
    const float s_from = sigma, s_to = s->sigmas[i + 1];
    const float to2 = s_to * s_to;
    const float from2 = s_from * s_from;
    const float gap = from2 - to2;
    const float num = to2 * gap;
    const float up2_q = num / from2;
    const float sigma_up = sqrtf(up2_q);
    const float up2 = sigma_up * sigma_up;
    float down2 = to2 - up2;
    if (down2 < 0.0f) /* rounding only; the exact value is >= 0 */
        down2 = 0.0f;
    const float sigma_down = sqrtf(down2);
    const float dt = sigma_down - sigma;
    const vcoef vc = v_coef(sigma);
    const int v_pred = s->cfg.prediction_type == SDUNET_PRED_V;

    for (size_t j = 0; j < n; j++) {
        double xs = (double)(float)x[j];
        double mj = m[j];
        double nz = noise[j];
        double x0 =
            v_pred ? mj * (double)vc.c_out + xs / (double)vc.c_div : xs - (double)sigma * mj;
        double deriv = (xs - x0) / (double)sigma;
        double prev = xs + deriv * (double)dt;
        out[j] = prev + nz * (double)sigma_up;
    }
}

/* ------------------------------------------------------------------------ */
/* LMS (order 4)                                                             */

/* Integral over [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial that is
 * 1 at sigma_{i-cur} and 0 at the other sigma_{i-k}, k < order. diffusers
 * integrates it with scipy's quad; the integrand has degree <= 3, so 3-point
 * Gauss-Legendre (exact to degree 5) gives the exact value. */
static double lms_coefficient(const float *sigmas, int order, int i, int cur)
{
    static const double node = 0.77459666924148337704; /* sqrt(3/5) */
    const double a = sigmas[i], b = sigmas[i + 1];
    const double half = 0.5 * (b - a), mid = 0.5 * (a + b);
    const double taus[3] = {mid - half * node, mid, mid + half * node};
    const double weights[3] = {5.0 / 9.0, 8.0 / 9.0, 5.0 / 9.0};
    double sum = 0.0;
    for (int q = 0; q < 3; q++) {
        double prod = 1.0;
        for (int k = 0; k < order; k++) {
            if (k == cur)
                continue;
            prod *= (taus[q] - (double)sigmas[i - k]) /
                    ((double)sigmas[i - cur] - (double)sigmas[i - k]);
        }
        sum += weights[q] * prod;
    }
    return sum * half;
}

static void step_lms(sdunet_scheduler *s, int i, const double *m, const double *x, size_t n,
                     double *out)
{
    enum { CAP = 4 };
    const float sigma = s->sigmas[i];
    const vcoef vc = v_coef(sigma);
    const int v_pred = s->cfg.prediction_type == SDUNET_PRED_V;
    /* diffusers uses min(step_index + 1, 4); counting the derivatives held
     * instead gives the same for a run from step 0 and stays consistent when
     * a run starts mid-schedule. */
    int order = s->n_hist + 1 < CAP ? s->n_hist + 1 : CAP;
    /* Equal sigmas (1000 steps with steps_offset 1 clamp t = 1000 to 999)
     * leave the Lagrange basis undefined; drop the older points instead. */
    for (int k = 1; k < order; k++)
        for (int q = 0; q < k; q++)
            if (s->sigmas[i - k] == s->sigmas[i - q])
                order = k;
    double c[CAP] = {0};
    for (int k = 0; k < order; k++)
        c[k] = lms_coefficient(s->sigmas, order, i, k);
    double *slot = new_slot(s, CAP);
    const double *d1 = s->hist[0], *d2 = s->hist[1], *d3 = s->hist[2];

    for (size_t j = 0; j < n; j++) {
        double xj = x[j], mj = m[j];
        double x0 =
            v_pred ? mj * (double)vc.c_out + xj / (double)vc.c_div : xj - (double)sigma * mj;
        double deriv = (xj - x0) / (double)sigma;
        /* sum(coeff * derivative) over the newest first, as Python's sum. */
        double acc = c[0] * deriv;
        if (order > 1)
            acc = acc + c[1] * d1[j];
        if (order > 2)
            acc = acc + c[2] * d2[j];
        if (order > 3)
            acc = acc + c[3] * d3[j];
        slot[j] = deriv;
        out[j] = xj + acc;
    }
    push_slot(s, CAP);
}

/* ------------------------------------------------------------------------ */
/* PNDM with skip_prk_steps (pseudo linear multistep)                        */

static void step_pndm(sdunet_scheduler *s, int i, const double *m, const double *x, size_t n,
                      double *out)
{
    enum { CAP = 4 };
    int t = (int)s->timesteps[i];
    int prev_t = t - s->step_ratio;
    const int redo = s->counter == 1;
    if (redo) {
        /* The repeated timestep: redo the first step t + ratio -> t from the
         * saved sample with the mean of both model outputs. */
        prev_t = t;
        t = t + s->step_ratio;
    }
    if (t > s->T - 1)
        t = s->T - 1;
    const int n_ets = redo ? s->n_hist : (s->n_hist + 1 < CAP ? s->n_hist + 1 : CAP);
    const int first = !redo && n_ets == 1;
    const int mean_redo = redo && n_ets == 1;

    const float a_t = s->alphas_cumprod[t];
    const float a_prev = prev_t >= 0 ? s->alphas_cumprod[prev_t] : s->final_alpha_cumprod;
    const float b_t = 1.0f - a_t;
    const float b_prev = 1.0f - a_prev;
    const float ratio = a_prev / a_t;
    const float sample_coeff = sqrtf(ratio);
    const float d_left = a_t * sqrtf(b_prev);
    const float ab = a_t * b_t;
    const float aba = ab * a_prev;
    const float denom = d_left + sqrtf(aba);
    const float a_diff = a_prev - a_t;
    const float sa_t = sqrtf(a_t);
    const float sb_t = sqrtf(b_t);
    const int v_pred = s->cfg.prediction_type == SDUNET_PRED_V;

    /* ets newest first: the new output (unless redoing), then the history. */
    double *slot = redo ? NULL : new_slot(s, CAP);
    const double *h0 = s->hist[0], *h1 = s->hist[1], *h2 = s->hist[2];
    double *saved = s->saved;

    for (size_t j = 0; j < n; j++) {
        double mj = m[j];
        double sample = x[j];
        double e1, e2 = 0, e3 = 0, e4 = 0;
        if (redo) {
            e1 = h0 ? h0[j] : 0;
        } else {
            e1 = mj;
            if (n_ets > 1)
                e2 = h0[j];
            if (n_ets > 2)
                e3 = h1[j];
            if (n_ets > 3)
                e4 = h2[j];
        }
        double mo;
        if (first) {
            mo = mj;
            saved[j] = sample;
        } else if (mean_redo) {
            mo = (mj + e1) / 2;
            sample = saved[j];
        } else if (n_ets == 2) {
            mo = (3 * e1 - e2) / 2;
        } else if (n_ets == 3) {
            mo = (23 * e1 - 16 * e2 + 5 * e3) / 12;
        } else {
            mo = (1.0 / 24) * (55 * e1 - 59 * e2 + 37 * e3 - 9 * e4);
        }
        if (slot)
            slot[j] = mj;
        if (v_pred)
            mo = (double)sa_t * mo + (double)sb_t * sample;
        out[j] = (double)sample_coeff * sample - ((double)a_diff * mo) / (double)denom;
    }
    if (slot)
        push_slot(s, CAP);
    if (first)
        s->have_saved = 1;
    if (mean_redo)
        s->have_saved = 0;
    s->counter++;
}

/* ------------------------------------------------------------------------ */
/* DPM-Solver++(2M), midpoint                                                */

static void step_dpmpp_2m(sdunet_scheduler *s, int i, const double *m, const double *x, size_t n,
                          double *out)
{
    enum { CAP = 1 };
    float alpha_s0, sig_s0, alpha_t, sig_t;
    alpha_sigma_of(s->sigmas[i], &alpha_s0, &sig_s0);
    alpha_sigma_of(s->sigmas[i + 1], &alpha_t, &sig_t);
    const float lambda_t = lambda_of(alpha_t, sig_t);
    const float lambda_s0 = lambda_of(alpha_s0, sig_s0);
    const float h = lambda_t - lambda_s0;

    /* First order for the warm-up step and, below 15 steps, the last one. */
    const int lower_order_final = i == s->n_steps - 1 && s->n_steps < 15;
    int second = s->n_hist >= 1 && !lower_order_final;
    float inv_r0 = 0.0f;
    if (second) {
        float alpha_s1, sig_s1;
        alpha_sigma_of(s->sigmas[i - 1], &alpha_s1, &sig_s1);
        const float lambda_s1 = lambda_of(alpha_s1, sig_s1);
        const float h0 = lambda_s0 - lambda_s1;
        /* h = 0 (Karras' repeated last sigma) makes the step the identity,
         * which the first-order rule gives exactly; h0 = 0 leaves the
         * second-order term undefined. */
        if (h == 0.0f || h0 == 0.0f) {
            second = 0;
        } else {
            const float r0 = h0 / h;
            inv_r0 = 1.0f / r0;
        }
    }
    const float c_s = sig_t / sig_s0;
    const float neg_h = -h;
    const float e = expf(neg_h);
    const float em1 = e - 1.0f;
    const float c_a = alpha_t * em1;
    const float c_half = 0.5f * c_a;
    const int v_pred = s->cfg.prediction_type == SDUNET_PRED_V;

    double *slot = new_slot(s, CAP);
    const double *prev = s->hist[0];
    for (size_t j = 0; j < n; j++) {
        double xj = x[j], mj = m[j];
        /* convert_model_output: the data prediction x0. */
        double m0 = v_pred ? (double)alpha_s0 * xj - (double)sig_s0 * mj
                           : (xj - (double)sig_s0 * mj) / (double)alpha_s0;
        double r;
        if (second) {
            double m1 = prev[j];
            double d1 = (double)inv_r0 * (m0 - m1);
            r = (double)c_s * xj - (double)c_a * m0 - (double)c_half * d1;
        } else {
            r = (double)c_s * xj - (double)c_a * m0;
        }
        slot[j] = m0;
        out[j] = r;
    }
    push_slot(s, CAP);
    if (s->lower_order_nums < 2)
        s->lower_order_nums++;
}

/* ------------------------------------------------------------------------ */
/* UniPC (bh2, order 2, predict_x0)                                          */

/* Scalars of one UniP / UniC update from sigma_s0 to sigma_t (float32). */
typedef struct unipc_coef {
    float c_s; /* sigma_t / sigma_s0 */
    float c_h; /* alpha_t * h_phi_1 */
    float c_b; /* alpha_t * B_h */
    float h;
    float hh; /* -h for predict_x0 */
    float h_phi_1, b_h;
} unipc_coef;

static unipc_coef unipc_coefs(float sigma_s0, float sigma_t)
{
    unipc_coef c;
    float alpha_t, sig_t, alpha_s0, sig_s0;
    alpha_sigma_of(sigma_t, &alpha_t, &sig_t);
    alpha_sigma_of(sigma_s0, &alpha_s0, &sig_s0);
    const float lambda_t = lambda_of(alpha_t, sig_t);
    const float lambda_s0 = lambda_of(alpha_s0, sig_s0);
    c.h = lambda_t - lambda_s0;
    c.hh = -c.h;
    c.h_phi_1 = expm1f(c.hh);
    c.b_h = expm1f(c.hh); /* bh2: B(h) = e^h - 1 */
    c.c_s = sig_t / sig_s0;
    c.c_h = alpha_t * c.h_phi_1;
    c.c_b = alpha_t * c.b_h;
    return c;
}

/* rk = (lambda_si - lambda_s0) / h. */
static float unipc_rk(float sigma_si, float sigma_s0, float h)
{
    float alpha_si, sig_si, alpha_s0, sig_s0;
    alpha_sigma_of(sigma_si, &alpha_si, &sig_si);
    alpha_sigma_of(sigma_s0, &alpha_s0, &sig_s0);
    const float lambda_si = lambda_of(alpha_si, sig_si);
    const float lambda_s0 = lambda_of(alpha_s0, sig_s0);
    const float d = lambda_si - lambda_s0;
    return d / h;
}

/* UniC-2's rhos: solve [[1, 1], [rk, 1]] rho = b in float32, with the
 * partial pivoting LAPACK's getrf/getrs use. */
static void unipc_rhos_c2(const unipc_coef *c, float rk, float *rho0, float *rho1)
{
    /* b_k = h_phi_k * k! / B_h, h_phi_1' = h_phi_1 / hh - 1, then
     * h_phi_k = h_phi_{k-1} / hh - 1 / k!. */
    float h_phi_k = c->h_phi_1 / c->hh;
    h_phi_k = h_phi_k - 1.0f;
    const float b0 = h_phi_k / c->b_h;
    float t = h_phi_k / c->hh;
    h_phi_k = t - 0.5f;
    const float f2 = h_phi_k * 2.0f;
    const float b1 = f2 / c->b_h;
    if (fabsf(rk) > 1.0f) {
        /* Pivot on row 1: [rk 1 | b1] over [1 1 | b0]. */
        const float l = 1.0f * (1.0f / rk);
        const float lu = l * 1.0f;
        const float u11 = 1.0f - lu;
        const float lb = l * b1;
        const float y1 = b0 - lb;
        const float x1 = y1 / u11;
        const float y0 = b1 - x1 * 1.0f;
        *rho1 = x1;
        *rho0 = y0 / rk;
    } else {
        const float l = rk;
        const float u11 = 1.0f - l;
        const float lb = l * b0;
        const float y1 = b1 - lb;
        const float x1 = y1 / u11;
        *rho1 = x1;
        *rho0 = b0 - x1;
    }
}

static void step_unipc(sdunet_scheduler *s, int i, const double *m, const double *x, size_t n,
                       double *out)
{
    enum { CAP = 2 };
    const int v_pred = s->cfg.prediction_type == SDUNET_PRED_V;
    float alpha_i, sig_i;
    alpha_sigma_of(s->sigmas[i], &alpha_i, &sig_i);

    /* UniC: correct this step's sample with the model output just computed,
     * using the previous predictor's order. */
    int use_c = s->have_saved && i > 0 && s->n_hist >= 1;
    int c_order = s->this_order;
    unipc_coef cc = {0};
    float c_rk = 0.0f, c_rho0 = 0.0f, c_rho1 = 0.5f;
    if (use_c) {
        cc = unipc_coefs(s->sigmas[i - 1], s->sigmas[i]);
        if (cc.h == 0.0f) {
            use_c = 0; /* zero step: the corrector returns the last sample (= x) */
        } else if (c_order >= 2 && s->n_hist >= 2 && i >= 2) {
            c_rk = unipc_rk(s->sigmas[i - 2], s->sigmas[i - 1], cc.h);
            if (c_rk == 0.0f || !isfinite(c_rk))
                c_order = 1;
            else
                unipc_rhos_c2(&cc, c_rk, &c_rho0, &c_rho1);
        } else {
            c_order = 1;
        }
        if (c_order < 2) {
            c_rho0 = 0.0f;
            c_rho1 = 0.5f;
        }
    }

    /* UniP order: 2, lowered for warm-up and (lower_order_final) at the end. */
    int p_order = s->n_steps - i < 2 ? s->n_steps - i : 2;
    if (p_order > s->lower_order_nums + 1)
        p_order = s->lower_order_nums + 1;
    const int this_order = p_order;
    const unipc_coef pc = unipc_coefs(s->sigmas[i], s->sigmas[i + 1]);
    float p_rk = 0.0f;
    if (p_order >= 2) {
        if (pc.h == 0.0f || s->n_hist < 1 || i < 1) {
            p_order = 1;
        } else {
            p_rk = unipc_rk(s->sigmas[i - 1], s->sigmas[i], pc.h);
            if (p_rk == 0.0f || !isfinite(p_rk))
                p_order = 1;
        }
    }

    double *slot = new_slot(s, CAP); /* = hist[1]: m1 is read before it is overwritten */
    const double *h0 = s->hist[0], *h1 = s->hist[1];
    double *last = s->saved;
    for (size_t j = 0; j < n; j++) {
        double xj = x[j], mj = m[j];
        double mn = v_pred ? (double)alpha_i * xj - (double)sig_i * mj
                           : (xj - (double)sig_i * mj) / (double)alpha_i;
        double m0 = s->n_hist >= 1 ? h0[j] : 0.0;
        double xc = xj;
        if (use_c) {
            double xl = last[j];
            double x_t_ = (double)cc.c_s * xl - (double)cc.c_h * m0;
            double d1_t = mn - m0;
            double corr;
            if (c_order >= 2) {
                double d1 = (h1[j] - m0) / (double)c_rk;
                corr = (double)c_rho0 * d1 + (double)c_rho1 * d1_t;
            } else {
                corr = (double)c_rho1 * d1_t;
            }
            xc = x_t_ - (double)cc.c_b * corr;
        }
        last[j] = xc;
        slot[j] = mn;
        double x_t = (double)pc.c_s * xc - (double)pc.c_h * mn;
        if (p_order >= 2) {
            double d1 = (m0 - mn) / (double)p_rk;
            x_t = x_t - (double)pc.c_b * (0.5 * d1);
        }
        out[j] = x_t;
    }
    push_slot(s, CAP);
    s->have_saved = 1;
    s->this_order = this_order;
    if (s->lower_order_nums < 2)
        s->lower_order_nums++;
}

/* ------------------------------------------------------------------------ */
/* Public entry points                                                       */

static int is_multistep(const sdunet_scheduler *s)
{
    return s->kind == SD_SCHED_DPMPP_2M || s->kind == SD_SCHED_PNDM || s->kind == SD_SCHED_LMS ||
           s->kind == SD_SCHED_UNIPC;
}

static int needs_noise(const sdunet_scheduler *s)
{
    return s->kind == SD_SCHED_EULER_A || (s->kind == SD_SCHED_DDIM && s->cfg.eta > 0.0);
}

int sdunet_sched_step_needs_noise(const sdunet_scheduler *s, int i)
{
    if (!s || s->n_steps == 0 || i < 0 || i >= s->n_calls)
        return 0;
    return needs_noise(s);
}

static sdunet_status check_call(const sdunet_scheduler *s, int i, const void *x, size_t n,
                                const void *out, sdunet_error *err)
{
    if (!s)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "scheduler: NULL scheduler");
    if (s->n_steps == 0)
        return sd_fail(err, SDUNET_E_INVALID_ARG,
                       "scheduler %s: call sdunet_sched_set_timesteps first", s->name);
    if (i < 0 || i >= s->n_calls)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "scheduler %s: step index %d is outside 0..%d",
                       s->name, i, s->n_calls - 1);
    if (!x || !out)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "scheduler %s: NULL array", s->name);
    if (n == 0)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "scheduler %s: zero elements", s->name);
    return SDUNET_OK;
}

sdunet_status sdunet_sched_scale_model_input_f64(sdunet_scheduler *s, int i, const double *x,
                                                 size_t n, double *out, sdunet_error *err)
{
    sdunet_status st = check_call(s, i, x, n, out, err);
    if (st != SDUNET_OK)
        return st;
    if (s->kind == SD_SCHED_EULER || s->kind == SD_SCHED_EULER_A || s->kind == SD_SCHED_LMS) {
        /* x / (sigma ** 2 + 1) ** 0.5 with a float32 divisor. */
        const float sigma = s->sigmas[i];
        const float sq = sigma * sigma;
        const float sum = sq + 1.0f;
        const double div = (double)sqrtf(sum);
        for (size_t j = 0; j < n; j++)
            out[j] = x[j] / div;
    } else if (out != x) {
        memmove(out, x, n * sizeof *out);
    }
    return SDUNET_OK;
}

sdunet_status sdunet_sched_step_f64(sdunet_scheduler *s, int i, const double *model_output,
                                    const double *x, size_t n, const double *noise, double *out,
                                    sdunet_error *err)
{
    sdunet_status st = check_call(s, i, x, n, out, err);
    if (st != SDUNET_OK)
        return st;
    if (!model_output)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "scheduler %s: NULL model output", s->name);
    if (needs_noise(s) && !noise)
        return sd_fail(err, SDUNET_E_INVALID_ARG,
                       "scheduler %s: step %d needs fresh noise, got NULL", s->name, i);
    if (is_multistep(s)) {
        if (s->last_index >= 0 && i != s->last_index + 1)
            return sd_fail(err, SDUNET_E_INVALID_ARG,
                           "scheduler %s: step %d after step %d; multistep samplers need "
                           "consecutive steps (set_timesteps restarts)",
                           s->name, i, s->last_index);
        if (s->last_index >= 0 && n != s->n_elems)
            return sd_fail(err, SDUNET_E_INVALID_ARG,
                           "scheduler %s: %zu elements, the run started with %zu", s->name, n,
                           s->n_elems);
        st = sd_sched_ensure_state(s, n, err);
        if (st != SDUNET_OK)
            return st;
        s->n_elems = n;
    }
    switch (s->kind) {
    case SD_SCHED_DDIM: step_ddim(s, i, model_output, x, n, noise, out); break;
    case SD_SCHED_EULER: step_euler(s, i, model_output, x, n, out); break;
    case SD_SCHED_EULER_A: step_euler_a(s, i, model_output, x, n, noise, out); break;
    case SD_SCHED_LMS: step_lms(s, i, model_output, x, n, out); break;
    case SD_SCHED_PNDM: step_pndm(s, i, model_output, x, n, out); break;
    case SD_SCHED_DPMPP_2M: step_dpmpp_2m(s, i, model_output, x, n, out); break;
    case SD_SCHED_UNIPC: step_unipc(s, i, model_output, x, n, out); break;
    }
    s->last_index = i;
    return SDUNET_OK;
}

/* Float32 wrappers: widen into scratch, run the double path, narrow. */
static double *scratch(sdunet_scheduler *s, size_t n, sdunet_error *err)
{
    size_t elems, bytes;
    if (!sd_mul_size(n, 4, &elems) || !sd_mul_size(elems, sizeof(double), &bytes)) {
        sd_fail(err, SDUNET_E_NOMEM, "scheduler: %zu elements overflow", n);
        return NULL;
    }
    if (s->scratch_elems < n) {
        double *p = malloc(bytes);
        if (!p) {
            sd_fail(err, SDUNET_E_NOMEM, "scheduler: out of memory for %zu elements", n);
            return NULL;
        }
        free(s->scratch);
        s->scratch = p;
        s->scratch_elems = n;
    }
    return s->scratch;
}

sdunet_status sdunet_sched_scale_model_input(sdunet_scheduler *s, int i, const float *x, size_t n,
                                             float *out, sdunet_error *err)
{
    sdunet_status st = check_call(s, i, x, n, out, err);
    if (st != SDUNET_OK)
        return st;
    double *buf = scratch(s, n, err);
    if (!buf)
        return SDUNET_E_NOMEM;
    for (size_t j = 0; j < n; j++)
        buf[j] = x[j];
    st = sdunet_sched_scale_model_input_f64(s, i, buf, n, buf, err);
    if (st != SDUNET_OK)
        return st;
    for (size_t j = 0; j < n; j++)
        out[j] = (float)buf[j];
    return SDUNET_OK;
}

sdunet_status sdunet_sched_step(sdunet_scheduler *s, int i, const float *model_output,
                                const float *x, size_t n, const float *noise, float *out,
                                sdunet_error *err)
{
    sdunet_status st = check_call(s, i, x, n, out, err);
    if (st != SDUNET_OK)
        return st;
    if (!model_output)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "scheduler %s: NULL model output", s->name);
    const int want_noise = needs_noise(s);
    if (want_noise && !noise)
        return sd_fail(err, SDUNET_E_INVALID_ARG,
                       "scheduler %s: step %d needs fresh noise, got NULL", s->name, i);
    double *buf = scratch(s, n, err);
    if (!buf)
        return SDUNET_E_NOMEM;
    double *bx = buf, *bm = buf + n, *bn = buf + 2 * n, *bo = buf + 3 * n;
    for (size_t j = 0; j < n; j++) {
        bx[j] = x[j];
        bm[j] = model_output[j];
    }
    if (want_noise)
        for (size_t j = 0; j < n; j++)
            bn[j] = noise[j];
    st = sdunet_sched_step_f64(s, i, bm, bx, n, want_noise ? bn : NULL, bo, err);
    if (st != SDUNET_OK)
        return st;
    for (size_t j = 0; j < n; j++)
        out[j] = (float)bo[j];
    return SDUNET_OK;
}

sdunet_status sdunet_cfg_combine_f64(const double *uncond, const double *cond, double guidance,
                                     size_t n, double *out)
{
    if (!uncond || !cond || !out || !isfinite(guidance))
        return SDUNET_E_INVALID_ARG;
    for (size_t j = 0; j < n; j++) {
        double u = uncond[j], c = cond[j];
        out[j] = u + guidance * (c - u);
    }
    return SDUNET_OK;
}

sdunet_status sdunet_cfg_combine(const float *uncond, const float *cond, double guidance, size_t n,
                                 float *out)
{
    if (!uncond || !cond || !out || !isfinite(guidance))
        return SDUNET_E_INVALID_ARG;
    for (size_t j = 0; j < n; j++) {
        double u = uncond[j], c = cond[j];
        out[j] = (float)(u + guidance * (c - u));
    }
    return SDUNET_OK;
}
