/* The sampling loop (sdunet_sample) against a hand-written loop over the
 * public APIs, classifier-free guidance against two separate forwards, the
 * noise generator, and the `sdunet sample` command (its binary from
 * $SDUNET_BIN, else $BUILD/sdunet, else build/sdunet). */
#include "check.h"
#include "sdunet.h"
#include "sdunet_sample.h"
#include "sdunet_sched.h"

#include "io/npy.h"

#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define C 4
#define H 16
#define W 16
#define N_LAT ((size_t)C * H * W) /* one latent row */

static sdunet_model *g_model;
static float *g_ctx; /* tests/data/tiny/context.npy, (1, L, D) */
static int g_L, g_D;

/* ------------------------------------------------------------------------ */
/* Noise generator                                                           */

static void test_rng_fixed_values(void)
{
    /* Checked against an independent Python implementation of the recipe in
     * sdunet_sample.h (and the moments test below). */
    static const float want0[8] = {-0.0141067971f, -1.00858653f,    -1.84589505f, 1.06692827f,
                                   0.788179159f,   -0.00124581414f, -1.28038561f, -0.291736782f};
    static const float want12345[4] = {0.526515782f, 0.561003923f, 0.260818809f, 0.0817478672f};
    sdunet_rng r;
    float v[8];
    sdunet_rng_seed(&r, 0);
    sdunet_rng_normal(&r, v, 8);
    for (int i = 0; i < 8; i++)
        CHECK(fabsf(v[i] - want0[i]) <= 1e-6f, "seed 0 value %d: %.9g, want %.9g", i, v[i],
              want0[i]);
    sdunet_rng_seed(&r, 12345);
    sdunet_rng_normal(&r, v, 4);
    for (int i = 0; i < 4; i++)
        CHECK(fabsf(v[i] - want12345[i]) <= 1e-6f, "seed 12345 value %d: %.9g, want %.9g", i, v[i],
              want12345[i]);

    /* One stream however it is split: 3 + 5 (odd split keeps a spare) = 8. */
    float a[8];
    sdunet_rng_seed(&r, 0);
    sdunet_rng_normal(&r, a, 3);
    sdunet_rng_normal(&r, a + 3, 5);
    sdunet_rng_seed(&r, 0);
    sdunet_rng_normal(&r, v, 8);
    CHECK(memcmp(a, v, sizeof a) == 0, "3 + 5 values differ from 8 at once");
    /* The double stream rounds to the float one. */
    double d[8];
    sdunet_rng_seed(&r, 0);
    sdunet_rng_normal_f64(&r, d, 8);
    for (int i = 0; i < 8; i++)
        CHECK((float)d[i] == v[i], "f64 value %d %.17g does not round to %.9g", i, d[i], v[i]);
    /* Seeds 0 and 1 differ. */
    sdunet_rng_seed(&r, 1);
    sdunet_rng_normal(&r, a, 8);
    CHECK(memcmp(a, v, sizeof a) != 0, "seeds 0 and 1 give the same values");
}

static void test_rng_moments(void)
{
    const size_t n = 100000;
    float *x = malloc(n * sizeof *x);
    sdunet_rng r;
    sdunet_rng_seed(&r, 7);
    sdunet_rng_normal(&r, x, n);
    double s = 0, s2 = 0, s4 = 0;
    size_t within1 = 0, finite = 0;
    for (size_t i = 0; i < n; i++) {
        s += x[i];
        s2 += (double)x[i] * x[i];
        s4 += (double)x[i] * x[i] * x[i] * x[i];
        within1 += fabsf(x[i]) < 1.0f;
        finite += isfinite(x[i]) != 0;
    }
    double mean = s / n, var = s2 / n - mean * mean, kurt = s4 / n / (var * var);
    /* Limits are about 4 standard errors at n = 1e5. */
    CHECK(finite == n, "%zu non-finite values", n - finite);
    CHECK(fabs(mean) < 0.013, "mean %g", mean);
    CHECK(fabs(var - 1) < 0.018, "variance %g", var);
    CHECK(fabs(kurt - 3) < 0.06, "kurtosis %g", kurt);
    CHECK(fabs((double)within1 / n - 0.682689) < 0.006, "P(|z| < 1) = %g", (double)within1 / n);
    free(x);
}

/* ------------------------------------------------------------------------ */
/* The loop against hand-written loops                                       */

static sdunet_scheduler *make_sched(const char *name)
{
    sdunet_scheduler *s = NULL;
    sdunet_error err = {0};
    if (sdunet_sched_create(name, NULL, &s, &err))
        CHECK(0, "sched %s: %s", name, err.message);
    return s;
}

/* The loop of sdunet_sample.h, spelled out with the public calls; `ctx` and
 * `uncond` have `batch` rows. With `uncond`, the two halves run either as one
 * forward of 2 * batch rows [cond, uncond] (batched, as sdunet_sample does)
 * or as two separate batch-`batch` forwards. */
static int manual_loop(const char *sched_name, int steps, int batch, const float *ctx,
                       const float *uncond, double guidance, int batched, sdunet_rng *rng, float *x,
                       int stop_after)
{
    sdunet_scheduler *s = make_sched(sched_name);
    sdunet_error err = {0};
    const size_t n = (size_t)batch * N_LAT, nc = (size_t)batch * g_L * g_D;
    float *x_in = malloc(2 * n * sizeof *x_in), *eps = malloc(2 * n * sizeof *eps);
    float *eps_u = malloc(n * sizeof *eps_u), *noise = malloc(n * sizeof *noise);
    float *ctx2 = malloc(2 * nc * sizeof *ctx2);
    int ok =
        s && x_in && eps && eps_u && noise && ctx2 && !sdunet_sched_set_timesteps(s, steps, &err);
    int total = ok ? sdunet_sched_num_model_calls(s) : 0;
    if (stop_after >= 0 && stop_after < total)
        total = stop_after;
    if (ok) {
        const float sigma = (float)sdunet_sched_init_noise_sigma(s);
        for (size_t k = 0; k < n; k++)
            x[k] = x[k] * sigma;
        memcpy(ctx2, ctx, nc * sizeof *ctx2);
        if (uncond)
            memcpy(ctx2 + nc, uncond, nc * sizeof *ctx2);
    }
    for (int i = 0; ok && i < total; i++) {
        float t = (float)sdunet_sched_timestep(s, i);
        ok = !sdunet_sched_scale_model_input(s, i, x, n, x_in, &err);
        if (ok && uncond && batched) {
            memcpy(x_in + n, x_in, n * sizeof *x_in);
            ok = !sdunet_forward(g_model, x_in, 2 * batch, C, H, W, &t, 1, ctx2, g_L, g_D, eps,
                                 &err) &&
                 !sdunet_cfg_combine(eps + n, eps, guidance, n, eps);
        } else if (ok) {
            ok = !sdunet_forward(g_model, x_in, batch, C, H, W, &t, 1, ctx, g_L, g_D, eps, &err);
            if (ok && uncond)
                ok = !sdunet_forward(g_model, x_in, batch, C, H, W, &t, 1, uncond, g_L, g_D, eps_u,
                                     &err) &&
                     !sdunet_cfg_combine(eps_u, eps, guidance, n, eps);
        }
        const float *nz = NULL;
        if (ok && sdunet_sched_step_needs_noise(s, i)) {
            sdunet_rng_normal(rng, noise, n);
            nz = noise;
        }
        ok = ok && !sdunet_sched_step(s, i, eps, x, n, nz, x, &err);
    }
    CHECK(ok, "manual %s loop failed: %s", sched_name, err.message);
    sdunet_sched_free(s);
    free(x_in);
    free(eps);
    free(eps_u);
    free(noise);
    free(ctx2);
    return ok;
}

typedef struct cb_log {
    int calls, last_done, in_order, stop_at;
    double ts[16];
} cb_log;

static int log_cb(void *user, int done, int total, double t)
{
    cb_log *l = user;
    if (done != l->calls || done > total)
        l->in_order = 0;
    if (done < 16)
        l->ts[done] = t;
    l->calls++;
    l->last_done = done;
    return l->stop_at >= 0 && done >= l->stop_at;
}

/* sdunet_sample with the tiny model's context broadcast to `batch` rows. */
static sdunet_status run_lib(const char *sched_name, int steps, int batch, const float *uncond,
                             double guidance, sdunet_rng *rng, float *x, int *done, cb_log *log)
{
    sdunet_scheduler *s = make_sched(sched_name);
    sdunet_error err = {0};
    sdunet_sample_params p = {.steps = steps,
                              .batch = batch,
                              .height = H,
                              .width = W,
                              .context = g_ctx,
                              .context_rows = 1,
                              .context_len = g_L,
                              .context_dim = g_D,
                              .uncond = uncond,
                              .uncond_rows = 1,
                              .uncond_len = g_L,
                              .guidance = guidance,
                              .rng = rng,
                              .progress = log ? log_cb : NULL,
                              .progress_user = log};
    sdunet_status st = sdunet_sample(g_model, s, &p, x, done, &err);
    CHECK(st == SDUNET_OK, "sdunet_sample %s: %s", sched_name, err.message);
    sdunet_sched_free(s);
    return st;
}

/* The same initial noise and generator state for both loops. */
static void compare_with_manual(const char *sched_name, int steps)
{
    float *a = malloc(N_LAT * sizeof *a), *b = malloc(N_LAT * sizeof *b);
    sdunet_rng ra, rb;
    sdunet_rng_seed(&ra, 3);
    sdunet_rng_normal(&ra, a, N_LAT);
    rb = ra;
    memcpy(b, a, N_LAT * sizeof *a);
    int done = -1;
    cb_log log = {.in_order = 1, .stop_at = -1};
    run_lib(sched_name, steps, 1, NULL, 1.0, &ra, a, &done, &log);
    manual_loop(sched_name, steps, 1, g_ctx, NULL, 1.0, 0, &rb, b, -1);
    CHECK(done == steps, "%s: %d model calls done, want %d", sched_name, done, steps);
    CHECK(memcmp(a, b, N_LAT * sizeof *a) == 0,
          "%s: sdunet_sample differs from the manual loop "
          "(rel l2 %g)",
          sched_name, t_rel_l2_f32(a, b, N_LAT));
    /* Both loops consumed the same noise: the generators are in step. */
    float na, nb;
    sdunet_rng_normal(&ra, &na, 1);
    sdunet_rng_normal(&rb, &nb, 1);
    CHECK(na == nb, "%s: the generators diverged", sched_name);
    CHECK(log.in_order && log.calls == steps + 1 && log.last_done == steps,
          "%s: progress calls %d (in order %d), last done %d", sched_name, log.calls, log.in_order,
          log.last_done);
    double l2 = 0;
    for (size_t k = 0; k < N_LAT; k++)
        l2 += (double)a[k] * a[k];
    CHECK(isfinite(l2) && l2 > 0, "%s: result l2 %g", sched_name, l2);
    free(a);
    free(b);
}

static void test_ddim_matches_manual(void)
{
    compare_with_manual("ddim", 2);
}
static void test_euler_a_matches_manual(void)
{
    compare_with_manual("euler_a", 2);
}

/* Guidance. The batched [cond, uncond] forward's rows agree with batch-1
 * forwards only to ~5e-7 relative (the kernels' reduction order depends on
 * the batch), and guidance amplifies that: g = u + G (c - u) carries up to
 * (|G| ||c|| + |G - 1| ||u||) / ||g|| times the rows' error, about 8x here.
 * So: each row of one batched forward is checked against its own batch-1
 * forward at 1e-6; the whole loop is checked bit for bit against a manual
 * loop that makes the same batched call; and against separate forwards at
 * the rows' 1e-6 times (1 + |G|). */
static void test_guidance_batched(void)
{
    const size_t nc = (size_t)g_L * g_D;
    const double G = 7.5;
    float *zeros = calloc(nc, sizeof *zeros), *ctx2 = malloc(2 * nc * sizeof *ctx2);
    float *x2 = malloc(2 * N_LAT * sizeof *x2), *y2 = malloc(2 * N_LAT * sizeof *y2);
    float *y1 = malloc(N_LAT * sizeof *y1);
    sdunet_error err = {0};
    sdunet_rng r;
    sdunet_rng_seed(&r, 11);
    sdunet_rng_normal(&r, x2, N_LAT);
    memcpy(x2 + N_LAT, x2, N_LAT * sizeof *x2);
    memcpy(ctx2, g_ctx, nc * sizeof *ctx2);
    memcpy(ctx2 + nc, zeros, nc * sizeof *ctx2);
    const float ts[2] = {999, 1};
    for (int k = 0; k < 2; k++) {
        int ok = !sdunet_forward(g_model, x2, 2, C, H, W, &ts[k], 1, ctx2, g_L, g_D, y2, &err);
        for (int row = 0; ok && row < 2; row++) {
            ok = !sdunet_forward(g_model, x2, 1, C, H, W, &ts[k], 1, row ? zeros : g_ctx, g_L, g_D,
                                 y1, &err);
            double e = t_rel_l2_f32(y2 + row * N_LAT, y1, N_LAT);
            CHECK(e <= 1e-6, "t %g row %d: batch 2 vs batch 1 forward: rel l2 %g", (double)ts[k],
                  row, e);
        }
        CHECK(ok, "forward: %s", err.message);
    }

    float *a = malloc(N_LAT * sizeof *a), *b = malloc(N_LAT * sizeof *b);
    float *c = malloc(N_LAT * sizeof *c), *plain = malloc(N_LAT * sizeof *plain);
    const char *names[2] = {"euler_a", "pndm"};
    for (int k = 0; k < 2; k++) {
        sdunet_rng ra, rb, rc, rp;
        sdunet_rng_seed(&ra, 11);
        sdunet_rng_normal(&ra, a, N_LAT);
        rb = rc = rp = ra;
        memcpy(b, a, N_LAT * sizeof *a);
        memcpy(c, a, N_LAT * sizeof *a);
        memcpy(plain, a, N_LAT * sizeof *a);
        run_lib(names[k], 2, 1, zeros, G, &ra, a, NULL, NULL);
        manual_loop(names[k], 2, 1, g_ctx, zeros, G, 1, &rb, b, -1);
        manual_loop(names[k], 2, 1, g_ctx, zeros, G, 0, &rc, c, -1);
        run_lib(names[k], 2, 1, NULL, 1.0, &rp, plain, NULL, NULL);
        CHECK(memcmp(a, b, N_LAT * sizeof *a) == 0,
              "%s: sdunet_sample differs from the manual batched loop (rel l2 %g)", names[k],
              t_rel_l2_f32(a, b, N_LAT));
        double e = t_rel_l2_f32(a, c, N_LAT);
        CHECK(e <= 1e-6 * (1 + G), "%s: batched guidance vs separate forwards: rel l2 %g", names[k],
              e);
        double d = t_rel_l2_f32(plain, a, N_LAT);
        CHECK(d > 1e-3, "%s: guidance %g changed the result by only %g", names[k], G, d);
    }
    free(zeros);
    free(ctx2);
    free(x2);
    free(y2);
    free(y1);
    free(a);
    free(b);
    free(c);
    free(plain);
}

/* A (1, L, D) context broadcast to batch 2: each row equals its own run. */
static void test_batch_broadcast(void)
{
    float *x2 = malloc(2 * N_LAT * sizeof *x2), *x1 = malloc(N_LAT * sizeof *x1);
    sdunet_rng r;
    sdunet_rng_seed(&r, 5);
    sdunet_rng_normal(&r, x2, 2 * N_LAT);
    run_lib("dpmpp_2m", 2, 2, NULL, 1.0, NULL, x2, NULL, NULL);
    for (int row = 0; row < 2; row++) {
        sdunet_rng_seed(&r, 5);
        sdunet_rng_normal(&r, x1, N_LAT); /* row 0's noise */
        if (row == 1)
            sdunet_rng_normal(&r, x1, N_LAT);
        run_lib("dpmpp_2m", 2, 1, NULL, 1.0, NULL, x1, NULL, NULL);
        double e = t_rel_l2_f32(x2 + row * N_LAT, x1, N_LAT);
        CHECK(e <= 1e-6, "row %d of batch 2 vs batch 1: rel l2 %g", row, e);
    }
    free(x2);
    free(x1);
}

/* The hook stops the loop: OK, steps_done < total, latent after that step. */
static void test_cancel(void)
{
    float *a = malloc(N_LAT * sizeof *a), *b = malloc(N_LAT * sizeof *b);
    sdunet_rng r;
    sdunet_rng_seed(&r, 9);
    sdunet_rng_normal(&r, a, N_LAT);
    memcpy(b, a, N_LAT * sizeof *a);
    cb_log log = {.in_order = 1, .stop_at = 1};
    int done = -1;
    run_lib("ddim", 3, 1, NULL, 1.0, NULL, a, &done, &log);
    CHECK(done == 1, "stopped after %d calls, want 1", done);
    CHECK(log.calls == 2, "hook called %d times, want 2", log.calls);
    manual_loop("ddim", 3, 1, g_ctx, NULL, 1.0, 0, NULL, b, 1);
    CHECK(memcmp(a, b, N_LAT * sizeof *a) == 0, "partial latent differs from 1 manual step");
    /* Stopping before the first call leaves x_T * init_noise_sigma. */
    log = (cb_log){.in_order = 1, .stop_at = 0};
    run_lib("euler", 3, 1, NULL, 1.0, NULL, a, &done, &log);
    CHECK(done == 0 && log.calls == 1, "stop at 0: done %d, %d hook calls", done, log.calls);
    free(a);
    free(b);
}

static void test_errors(void)
{
    float *x = calloc(2 * N_LAT, sizeof *x);
    sdunet_scheduler *s = make_sched("euler_a");
    sdunet_error err = {0};
    sdunet_sample_params p = {.steps = 2,
                              .batch = 1,
                              .height = H,
                              .width = W,
                              .context = g_ctx,
                              .context_rows = 1,
                              .context_len = g_L,
                              .context_dim = g_D};
    int done = -1;
    /* euler_a needs a generator. */
    CHECK(sdunet_sample(g_model, s, &p, x, &done, &err) == SDUNET_E_INVALID_ARG, "no rng: %s",
          err.message);
    CHECK(done == 0, "done %d after an error", done);
    sdunet_sample_params q = p;
    q.context_rows = 3;
    q.batch = 2;
    CHECK(sdunet_sample(g_model, s, &q, x, NULL, &err) == SDUNET_E_SHAPE, "3 rows for batch 2");
    q = p;
    q.uncond = g_ctx;
    q.uncond_rows = 1;
    q.uncond_len = g_L - 1;
    q.guidance = 7.5;
    CHECK(sdunet_sample(g_model, s, &q, x, NULL, &err) == SDUNET_E_SHAPE, "uncond length");
    q.uncond_len = g_L;
    q.guidance = NAN;
    CHECK(sdunet_sample(g_model, s, &q, x, NULL, &err) == SDUNET_E_INVALID_ARG, "NaN guidance");
    q = p;
    q.steps = 0;
    CHECK(sdunet_sample(g_model, s, &q, x, NULL, &err) == SDUNET_E_INVALID_ARG, "0 steps");
    q = p;
    q.height = 0;
    CHECK(sdunet_sample(g_model, s, &q, x, NULL, &err) == SDUNET_E_INVALID_ARG, "height 0");
    CHECK(sdunet_sample(NULL, s, &p, x, NULL, &err) == SDUNET_E_INVALID_ARG, "NULL model");
    CHECK(sdunet_sample(g_model, NULL, &p, x, NULL, &err) == SDUNET_E_INVALID_ARG, "NULL sched");
    CHECK(sdunet_sample(g_model, s, NULL, x, NULL, &err) == SDUNET_E_INVALID_ARG, "NULL params");
    CHECK(sdunet_sample(g_model, s, &p, NULL, NULL, &err) == SDUNET_E_INVALID_ARG, "NULL latent");
    /* A context width the model does not take: the forward's error, prefixed. */
    q = p;
    q.context_dim = g_D / 2;
    q.context_len = g_L * 2;
    sdunet_rng r;
    sdunet_rng_seed(&r, 0);
    q.rng = &r;
    CHECK(sdunet_sample(g_model, s, &q, x, NULL, &err) == SDUNET_E_SHAPE, "D mismatch: %s",
          err.message);
    CHECK(strstr(err.message, "model call 1") != NULL, "message without the call: %s", err.message);
    sdunet_sched_free(s);
    free(x);
}

/* ------------------------------------------------------------------------ */
/* The CLI                                                                   */

static const char *bin(void)
{
    static char path[512];
    const char *b = getenv("SDUNET_BIN");
    if (b && *b)
        return b;
    const char *build = getenv("BUILD"); /* set by tests/run.sh via make */
    snprintf(path, sizeof path, "%s/sdunet", build && *build ? build : "build");
    return path;
}

static char g_stdout[320], g_stderr[320]; /* where run_cli sends the command's output */

static void tmp_path(char *buf, size_t cap, const char *leaf)
{
    snprintf(buf, cap, "%s", t_tmp("%s", leaf));
}

static int count_lines(const char *path, char *first, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int lines = 0, c, prev = '\n';
    size_t k = 0;
    while ((c = fgetc(f)) != EOF) {
        if (lines == 0 && c != '\n' && k + 1 < cap)
            first[k++] = (char)c;
        if (c == '\n')
            lines++;
        prev = c;
    }
    if (prev != '\n')
        lines++;
    if (cap)
        first[k] = 0;
    fclose(f);
    return lines;
}

/* Runs `sdunet sample ARGS`, stdout and stderr to files; returns the exit
 * status (or -1 when it did not exit normally) and stderr's line count. */
static int run_cli(const char *args, int *err_lines, char *err_first, size_t cap)
{
    char cmd[2048];
    int len =
        snprintf(cmd, sizeof cmd, "'%s' sample %s >'%s' 2>'%s'", bin(), args, g_stdout, g_stderr);
    if (len < 0 || (size_t)len >= sizeof cmd) {
        CHECK(0, "command line too long: sample %s", args);
        *err_lines = 0;
        return -1;
    }
    int st = system(cmd);
    *err_lines = count_lines(g_stderr, err_first, cap);
    return (st != -1 && WIFEXITED(st)) ? WEXITSTATUS(st) : -1;
}

static int have_bin(void)
{
    int ok = access(bin(), X_OK) == 0;
    CHECK(ok, "the sdunet binary %s is missing (set SDUNET_BIN)", bin());
    return ok;
}

static void test_cli_errors(void)
{
    if (!have_bin())
        return;
    char first[512], args[1024];
    int lines;
    int rc = run_cli("--help", &lines, first, sizeof first);
    CHECK(rc == 0, "--help exited %d", rc);
    char out[512];
    CHECK(count_lines(g_stdout, out, sizeof out) > 10 && strstr(out, "usage") != NULL,
          "--help printed '%s'", out);

    const char *cfg = t_data("tiny/config.json"), *ctx = t_data("tiny/context.npy");
    struct {
        const char *what, *fmt, *needle;
    } cases[] = {
        {"missing --context", "--synthetic '%s' --out '%s'", "--context"},
        {"unknown scheduler", "--synthetic '%s' --context '%s' --out '%s' --scheduler nope",
         "nope"},
        {"wrong-rank noise", "--synthetic '%s' --context '%s' --out '%s' --noise '%s'", "4-d"},
        {"guidance without uncond", "--synthetic '%s' --context '%s' --out '%s' --guidance 7.5",
         "--uncond"},
        {"bad steps", "--synthetic '%s' --context '%s' --out '%s' --steps 0", "--steps"},
        {"noise/height conflict",
         "--synthetic '%s' --context '%s' --out '%s' --noise '%s' --height 8", "conflicts"},
        {"batch conflict", "--synthetic '%s' --context '%s' --out '%s' --batch 2 --noise '%s'",
         "--batch 2 conflicts"},
    };
    char out_npy[320];
    tmp_path(out_npy, sizeof out_npy, "never.npy");
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        switch (k) {
        case 0: snprintf(args, sizeof args, cases[k].fmt, cfg, out_npy); break;
        case 2: /* the context is 3-d */
            snprintf(args, sizeof args, cases[k].fmt, cfg, ctx, out_npy, ctx);
            break;
        case 5:
        case 6:
            snprintf(args, sizeof args, cases[k].fmt, cfg, ctx, out_npy, t_data("tiny/sample.npy"));
            break;
        default: snprintf(args, sizeof args, cases[k].fmt, cfg, ctx, out_npy); break;
        }
        rc = run_cli(args, &lines, first, sizeof first);
        CHECK(rc != 0 && rc != -1, "%s: exited %d", cases[k].what, rc);
        CHECK(lines == 1, "%s: %d stderr lines (first: %s)", cases[k].what, lines, first);
        CHECK(strncmp(first, "sdunet: error: ", 15) == 0 && strstr(first, cases[k].needle),
              "%s: stderr '%s'", cases[k].what, first);
        CHECK(access(out_npy, F_OK) != 0, "%s: wrote %s anyway", cases[k].what, out_npy);
    }
}

static void test_cli_run(void)
{
    if (!have_bin())
        return;
    char out_npy[320];
    tmp_path(out_npy, sizeof out_npy, "out.npy");
    remove(out_npy);
    char args[1024], first[512];
    int lines;
    snprintf(args, sizeof args,
             "--synthetic '%s' --context '%s' --height 16 --width 16 --scheduler ddim --steps 2 "
             "--seed 4 --out '%s'",
             t_data("tiny/config.json"), t_data("tiny/context.npy"), out_npy);
    int rc = run_cli(args, &lines, first, sizeof first);
    CHECK(rc == 0, "exited %d: %s", rc, first);
    float *y = NULL;
    int nd = 0;
    int64_t shape[8] = {0};
    sdunet_error err = {0};
    if (sd_npy_read_f32(out_npy, &y, &nd, shape, &err)) {
        CHECK(0, "reading %s: %s", out_npy, err.message);
        return;
    }
    CHECK(nd == 4 && shape[0] == 1 && shape[1] == 4 && shape[2] == 16 && shape[3] == 16,
          "output shape: %d dims (%lld, %lld, %lld, %lld)", nd, (long long)shape[0],
          (long long)shape[1], (long long)shape[2], (long long)shape[3]);
    /* Same seed, same sampler, same loop: the library gives the same latent. */
    if (nd == 4 && (size_t)(shape[0] * shape[1] * shape[2] * shape[3]) == N_LAT) {
        float *x = malloc(N_LAT * sizeof *x);
        sdunet_rng r;
        sdunet_rng_seed(&r, 4);
        sdunet_rng_normal(&r, x, N_LAT);
        run_lib("ddim", 2, 1, NULL, 1.0, &r, x, NULL, NULL);
        double e = t_rel_l2_f32(y, x, N_LAT);
        CHECK(e <= 1e-6, "CLI vs library: rel l2 %g", e);
        free(x);
    }
    sd_free(y);
    remove(out_npy);

    /* Guidance with an explicit noise file: summary on stdout names it. */
    snprintf(args, sizeof args,
             "--synthetic '%s' --context '%s' --uncond '%s' --guidance 7.5 --noise '%s' "
             "--scheduler euler_a --steps 2 --out '%s'",
             t_data("tiny/config.json"), t_data("tiny/context.npy"), t_data("tiny/context.npy"),
             t_data("tiny/sample.npy"), out_npy);
    rc = run_cli(args, &lines, first, sizeof first);
    CHECK(rc == 0, "guidance run exited %d: %s", rc, first);
    char line[512];
    count_lines(g_stdout, line, sizeof line);
    CHECK(strstr(line, "(1,4,16,16)") != NULL, "stdout starts '%s'", line);
    CHECK(access(out_npy, F_OK) == 0, "guidance run wrote no %s", out_npy);
    remove(out_npy);
}

/* SIGINT between steps: exit status 130, no output file. */
static void test_cli_interrupt(void)
{
    if (!have_bin())
        return;
    char out_npy[320];
    tmp_path(out_npy, sizeof out_npy, "int.npy");
    char cfg[1024], ctx[1024];
    snprintf(cfg, sizeof cfg, "%s", t_data("tiny/config.json"));
    snprintf(ctx, sizeof ctx, "%s", t_data("tiny/context.npy"));
    /* Everything the child needs is prepared before fork: the test process
     * has the model's worker threads, so the child may only make
     * async-signal-safe calls before exec. */
    const char *exe = bin();
    char err_path[320];
    tmp_path(err_path, sizeof err_path, "int.stderr");
    /* If the signal lands before the handler is installed (a slow start) the
     * process dies of it; retry with a longer delay. */
    int status = 0, got130 = 0;
    for (int attempt = 0; attempt < 3 && !got130; attempt++) {
        remove(out_npy);
        pid_t pid = fork();
        if (pid == 0) {
            int fo = open("/dev/null", O_WRONLY),
                fe = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fo < 0 || fe < 0 || dup2(fo, 1) < 0 || dup2(fe, 2) < 0)
                _exit(126);
            /* A SIGINT ignored by whoever started the tests would be kept
             * ignored by the command (on purpose); this test needs it live. */
            signal(SIGINT, SIG_DFL);
            execl(exe, exe, "sample", "--synthetic", cfg, "--context", ctx, "--height", "16",
                  "--width", "16", "--steps", "1000", "--scheduler", "euler", "--threads", "1",
                  "--out", out_npy, (char *)NULL);
            _exit(127);
        }
        CHECK(pid > 0, "fork failed");
        if (pid <= 0)
            return;
        struct timespec ts = {0, 400000000L * (attempt + 1)};
        nanosleep(&ts, NULL);
        kill(pid, SIGINT);
        /* Never hang the suite: a run that ignores the signal is killed. */
        int waited = 0;
        while (waitpid(pid, &status, WNOHANG) == 0) {
            struct timespec tick = {0, 50000000L};
            nanosleep(&tick, NULL);
            if (++waited == 200) {
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                break;
            }
        }
        got130 = WIFEXITED(status) && WEXITSTATUS(status) == 130;
    }
    CHECK(got130, "status %d (exited %d, code %d)", status, WIFEXITED(status),
          WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    char first[512];
    count_lines(err_path, first, sizeof first);
    CHECK(strstr(first, "interrupted at step") != NULL, "stderr '%s'", first);
    CHECK(access(out_npy, F_OK) != 0, "an interrupted run wrote %s", out_npy);
    remove(err_path);
}

int main(void)
{
    tmp_path(g_stdout, sizeof g_stdout, "stdout");
    tmp_path(g_stderr, sizeof g_stderr, "stderr");
    RUN(test_rng_fixed_values);
    RUN(test_rng_moments);

    sdunet_error err = {0};
    int nd = 0;
    int64_t cs[8] = {0};
    if (sdunet_load_synthetic(t_data("tiny/config.json"), NULL, &g_model, &err) ||
        sd_npy_read_f32(t_data("tiny/context.npy"), &g_ctx, &nd, cs, &err) || nd != 3 ||
        cs[0] != 1) {
        printf("FAIL - setup: tiny model or context: %s\n", err.message);
        return 1;
    }
    g_L = (int)cs[1];
    g_D = (int)cs[2];
    RUN(test_ddim_matches_manual);
    RUN(test_euler_a_matches_manual);
    RUN(test_guidance_batched);
    RUN(test_batch_broadcast);
    RUN(test_cancel);
    RUN(test_errors);
    RUN(test_cli_errors);
    RUN(test_cli_run);
    RUN(test_cli_interrupt);
    remove(g_stdout);
    remove(g_stderr);
    sdunet_free(g_model);
    sd_free(g_ctx);
    return t_summary();
}
