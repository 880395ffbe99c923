/* API misuse and numerical hazards: NULL everywhere in the public API
 * (sdunet.h, sdunet_sched.h), zero sizes, two threads on one model, output
 * buffers that alias an input, and inputs holding NaN, Inf, huge values and
 * subnormals. The contract is a status code and a one-line message, never
 * a crash, a hang, a race or garbage in the output. `make tsan` runs this
 * program under ThreadSanitizer and `make valgrind` under memcheck (which
 * also proves the outputs checked here are fully initialised). */
#include "check.h"
#include "golden.h"

#include "unet/model_internal.h"
#include "sdunet.h"
#include "sdunet_sched.h"

#include <float.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

static sdunet_model *tiny_model(int threads, int allow_nonfinite)
{
    char p[512];
    snprintf(p, sizeof p, "%s/config.json", t_data("tiny"));
    sdunet_options o;
    sdunet_options_default(&o);
    o.threads = threads;
    o.allow_nonfinite = allow_nonfinite;
    sdunet_model *m = NULL;
    sdunet_error e;
    if (sdunet_load_synthetic(p, &o, &m, &e) != SDUNET_OK)
        printf("  tiny model: %s\n", e.message);
    return m;
}

/* The tiny model's input at a given latent size: sample (1,4,H,W), context
 * (1,L,32) from the deterministic test filler, t = 500. */
typedef struct io {
    int H, W, L, D;
    size_t n_in, n_ctx;
    float *x, *ctx, *out;
    float t;
} io;

static int io_make(io *b, int H, int W)
{
    b->H = H;
    b->W = W;
    b->L = 7;
    b->D = 32;
    b->n_in = (size_t)4 * H * W;
    b->n_ctx = (size_t)b->L * b->D;
    b->x = malloc(b->n_in * sizeof(float));
    b->ctx = malloc(b->n_ctx * sizeof(float));
    b->out = malloc(b->n_in * sizeof(float));
    b->t = 500;
    if (!b->x || !b->ctx || !b->out)
        return 0;
    t_fill_random(b->x, b->n_in, 1);
    t_fill_random(b->ctx, b->n_ctx, 2);
    return 1;
}

static void io_free(io *b)
{
    free(b->x);
    free(b->ctx);
    free(b->out);
}

static sdunet_status io_run(sdunet_model *m, io *b, float *out, sdunet_error *e)
{
    return sdunet_forward(m, b->x, 1, 4, b->H, b->W, &b->t, 1, b->ctx, b->L, b->D, out, e);
}

static int one_line(const sdunet_error *e)
{
    size_t n = strnlen(e->message, sizeof e->message);
    return n > 0 && n < sizeof e->message && !memchr(e->message, '\n', n);
}

/* ------------------------------------------------------------ NULLs */

static void test_null_model_api(void)
{
    sdunet_error e;
    sdunet_model *m = (sdunet_model *)&e; /* must be reset to NULL on failure */
    for (int c = -1; c <= 12; c++)
        CHECK(sdunet_status_string((sdunet_status)c) != NULL, "status string %d", c);
    sdunet_options_default(NULL);

    CHECK(sdunet_load(NULL, "sd15", NULL, &m, &e) == SDUNET_E_INVALID_ARG && m == NULL,
          "load NULL path");
    CHECK(one_line(&e) && e.code == SDUNET_E_INVALID_ARG, "message and code: %s", e.message);
    CHECK(sdunet_load("x.safetensors", "sd15", NULL, NULL, &e) == SDUNET_E_INVALID_ARG,
          "load NULL out");
    CHECK(sdunet_load(NULL, NULL, NULL, NULL, NULL) == SDUNET_E_INVALID_ARG, "load all NULL");
    m = (sdunet_model *)&e;
    CHECK(sdunet_load_synthetic(NULL, NULL, &m, &e) == SDUNET_E_INVALID_ARG && m == NULL,
          "synthetic NULL config");
    CHECK(sdunet_load_synthetic("sd15", NULL, NULL, &e) == SDUNET_E_INVALID_ARG,
          "synthetic NULL out");
    CHECK(sdunet_load_synthetic(NULL, NULL, NULL, NULL) == SDUNET_E_INVALID_ARG,
          "synthetic all NULL");
    CHECK(sdunet_load_synthetic("", NULL, &m, &e) != SDUNET_OK && m == NULL, "empty config");

    CHECK(sdunet_set_threads(NULL, 2, &e) == SDUNET_E_INVALID_ARG, "set_threads NULL");
    CHECK(sdunet_set_threads(NULL, 2, NULL) == SDUNET_E_INVALID_ARG, "set_threads NULL, NULL");
    sdunet_model_info info;
    memset(&info, 0xA5, sizeof info);
    sdunet_get_info(NULL, &info);
    CHECK(info.in_channels == 0 && info.n_params == 0 && info.isa == NULL, "info of NULL zeroed");
    sdunet_get_info(NULL, NULL);
    sdunet_free(NULL);

    m = tiny_model(1, 0);
    CHECK(m != NULL, "tiny model");
    if (!m)
        return;
    sdunet_get_info(m, NULL);
    io b;
    CHECK(io_make(&b, 8, 8), "buffers");
    const int H = 8, W = 8, L = b.L, D = b.D;
    CHECK(sdunet_forward(NULL, b.x, 1, 4, H, W, &b.t, 1, b.ctx, L, D, b.out, &e) ==
              SDUNET_E_INVALID_ARG,
          "NULL model");
    CHECK(sdunet_forward(m, NULL, 1, 4, H, W, &b.t, 1, b.ctx, L, D, b.out, &e) ==
              SDUNET_E_INVALID_ARG,
          "NULL sample");
    CHECK(sdunet_forward(m, b.x, 1, 4, H, W, NULL, 1, b.ctx, L, D, b.out, &e) ==
              SDUNET_E_INVALID_ARG,
          "NULL timesteps");
    CHECK(sdunet_forward(m, b.x, 1, 4, H, W, &b.t, 1, NULL, L, D, b.out, &e) ==
              SDUNET_E_INVALID_ARG,
          "NULL context");
    CHECK(sdunet_forward(m, b.x, 1, 4, H, W, &b.t, 1, b.ctx, L, D, NULL, &e) ==
              SDUNET_E_INVALID_ARG,
          "NULL output");
    CHECK(one_line(&e), "message: %s", e.message);
    CHECK(sdunet_forward(m, NULL, 1, 4, H, W, NULL, 1, NULL, L, D, NULL, NULL) ==
              SDUNET_E_INVALID_ARG,
          "all NULL, no error struct");
    /* The model still works after all that. */
    CHECK(io_run(m, &b, b.out, &e) == SDUNET_OK, "%s", e.message);
    io_free(&b);
    sdunet_free(m);
}

static void test_null_sched_api(void)
{
    sdunet_error e;
    sdunet_scheduler *s = (sdunet_scheduler *)&e;
    CHECK(sdunet_sched_create(NULL, NULL, &s, &e) == SDUNET_E_INVALID_ARG && s == NULL,
          "create NULL name");
    CHECK(sdunet_sched_create("ddim", NULL, NULL, &e) == SDUNET_E_INVALID_ARG, "create NULL out");
    CHECK(sdunet_sched_create(NULL, NULL, NULL, NULL) == SDUNET_E_INVALID_ARG, "all NULL");
    CHECK(sdunet_sched_create("nope", NULL, &s, &e) != SDUNET_OK && s == NULL, "unknown name");
    sdunet_sched_config_default(NULL);
    sdunet_sched_free(NULL);
    CHECK(sdunet_sched_name(NULL) == NULL, "name of NULL");
    CHECK(sdunet_sched_set_timesteps(NULL, 10, &e) == SDUNET_E_INVALID_ARG, "set_timesteps NULL");
    CHECK(sdunet_sched_num_model_calls(NULL) == 0, "calls of NULL");
    CHECK(isnan(sdunet_sched_timestep(NULL, 0)), "timestep of NULL");
    CHECK(sdunet_sched_num_sigmas(NULL) == 0, "sigmas of NULL");
    CHECK(isnan(sdunet_sched_sigma(NULL, 0)), "sigma of NULL");
    CHECK(isnan(sdunet_sched_init_noise_sigma(NULL)), "init sigma of NULL");
    CHECK(sdunet_sched_step_needs_noise(NULL, 0) == 0, "needs_noise of NULL");

    float x[16], y[16], o[16];
    double xd[16], yd[16], od[16];
    t_fill_random(x, 16, 3);
    t_fill_random(y, 16, 4);
    for (int i = 0; i < 16; i++) {
        xd[i] = x[i];
        yd[i] = y[i];
    }
    CHECK(sdunet_sched_scale_model_input(NULL, 0, x, 16, o, &e) == SDUNET_E_INVALID_ARG,
          "scale NULL sched");
    CHECK(sdunet_sched_scale_model_input_f64(NULL, 0, xd, 16, od, NULL) == SDUNET_E_INVALID_ARG,
          "scale_f64 NULL sched");
    CHECK(sdunet_sched_step(NULL, 0, y, x, 16, NULL, o, &e) == SDUNET_E_INVALID_ARG,
          "step NULL sched");
    CHECK(sdunet_sched_step_f64(NULL, 0, yd, xd, 16, NULL, od, NULL) == SDUNET_E_INVALID_ARG,
          "step_f64 NULL sched");
    CHECK(sdunet_cfg_combine(NULL, y, 7.5, 16, o) == SDUNET_E_INVALID_ARG, "cfg NULL uncond");
    CHECK(sdunet_cfg_combine(x, NULL, 7.5, 16, o) == SDUNET_E_INVALID_ARG, "cfg NULL cond");
    CHECK(sdunet_cfg_combine(x, y, 7.5, 16, NULL) == SDUNET_E_INVALID_ARG, "cfg NULL out");
    CHECK(sdunet_cfg_combine_f64(NULL, yd, 7.5, 16, od) == SDUNET_E_INVALID_ARG, "cfg_f64 NULL");

    static const char *const names[] = {"ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras",
                                        "pndm", "lms",   "unipc"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        CHECK(sdunet_sched_create(names[k], NULL, &s, &e) == SDUNET_OK, "%s: %s", names[k],
              e.message);
        if (!s)
            continue;
        /* Before set_timesteps every call is refused, not undefined. */
        CHECK(sdunet_sched_step(s, 0, y, x, 16, x, o, &e) == SDUNET_E_INVALID_ARG,
              "%s: step before set_timesteps", names[k]);
        CHECK(sdunet_sched_set_timesteps(s, 5, &e) == SDUNET_OK, "%s", e.message);
        CHECK(sdunet_sched_scale_model_input(s, 0, NULL, 16, o, &e) == SDUNET_E_INVALID_ARG,
              "%s: scale NULL x", names[k]);
        CHECK(sdunet_sched_scale_model_input(s, 0, x, 16, NULL, &e) == SDUNET_E_INVALID_ARG,
              "%s: scale NULL out", names[k]);
        CHECK(sdunet_sched_step(s, 0, NULL, x, 16, x, o, &e) == SDUNET_E_INVALID_ARG,
              "%s: step NULL model output", names[k]);
        CHECK(sdunet_sched_step(s, 0, y, NULL, 16, x, o, &e) == SDUNET_E_INVALID_ARG,
              "%s: step NULL x", names[k]);
        CHECK(sdunet_sched_step(s, 0, y, x, 16, x, NULL, &e) == SDUNET_E_INVALID_ARG,
              "%s: step NULL out", names[k]);
        if (sdunet_sched_step_needs_noise(s, 0))
            CHECK(sdunet_sched_step(s, 0, y, x, 16, NULL, o, &e) == SDUNET_E_INVALID_ARG,
                  "%s: step needing noise given NULL", names[k]);
        CHECK(sdunet_sched_step(s, -1, y, x, 16, x, o, &e) == SDUNET_E_INVALID_ARG, "%s: step -1",
              names[k]);
        CHECK(sdunet_sched_step(s, 1 << 30, y, x, 16, x, o, &e) == SDUNET_E_INVALID_ARG,
              "%s: step past the end", names[k]);
        CHECK(isnan(sdunet_sched_timestep(s, -1)) && isnan(sdunet_sched_timestep(s, 1 << 30)),
              "%s: timestep out of range", names[k]);
        CHECK(isnan(sdunet_sched_sigma(s, -1)), "%s: sigma out of range", names[k]);
        CHECK(sdunet_sched_step_needs_noise(s, -1) == 0, "%s: needs_noise(-1)", names[k]);
        /* A valid step still works after the refusals. */
        CHECK(sdunet_sched_step(s, 0, y, x, 16, x, o, &e) == SDUNET_OK, "%s: %s", names[k],
              e.message);
        sdunet_sched_free(s);
        s = NULL;
    }
}

/* ------------------------------------------------------- zero sizes */

static void test_zero_sizes(void)
{
    sdunet_model *m = tiny_model(1, 0);
    CHECK(m != NULL, "tiny model");
    if (!m)
        return;
    io b;
    CHECK(io_make(&b, 8, 8), "buffers");
    sdunet_error e;
    const int L = b.L, D = b.D;
    CHECK(sdunet_forward(m, b.x, 0, 4, 8, 8, &b.t, 1, b.ctx, L, D, b.out, &e) == SDUNET_E_SHAPE,
          "batch 0");
    CHECK(sdunet_forward(m, b.x, -1, 4, 8, 8, &b.t, 1, b.ctx, L, D, b.out, &e) == SDUNET_E_SHAPE,
          "batch -1");
    CHECK(sdunet_forward(m, b.x, 1, 0, 8, 8, &b.t, 1, b.ctx, L, D, b.out, &e) == SDUNET_E_SHAPE,
          "channels 0");
    CHECK(sdunet_forward(m, b.x, 1, 4, 0, 8, &b.t, 1, b.ctx, L, D, b.out, &e) == SDUNET_E_SHAPE,
          "height 0");
    CHECK(sdunet_forward(m, b.x, 1, 4, 8, 0, &b.t, 1, b.ctx, L, D, b.out, &e) == SDUNET_E_SHAPE,
          "width 0");
    CHECK(sdunet_forward(m, b.x, 1, 4, 8, -8, &b.t, 1, b.ctx, L, D, b.out, &e) == SDUNET_E_SHAPE,
          "width -8");
    CHECK(sdunet_forward(m, b.x, 1, 4, 8, 8, &b.t, 0, b.ctx, L, D, b.out, &e) == SDUNET_E_SHAPE,
          "0 timesteps");
    CHECK(sdunet_forward(m, b.x, 1, 4, 8, 8, &b.t, 1, b.ctx, 0, D, b.out, &e) == SDUNET_E_SHAPE,
          "context length 0");
    CHECK(sdunet_forward(m, b.x, 1, 4, 8, 8, &b.t, 1, b.ctx, L, 0, b.out, &e) == SDUNET_E_SHAPE,
          "context width 0");
    CHECK(sdunet_forward(m, b.x, INT32_MAX, 4, 8, 8, &b.t, 1, b.ctx, L, D, b.out, &e) ==
              SDUNET_E_SHAPE,
          "batch INT_MAX");
    CHECK(sdunet_forward(m, b.x, 1, 4, INT32_MAX, INT32_MAX, &b.t, 1, b.ctx, L, D, b.out, &e) ==
              SDUNET_E_SHAPE,
          "latent INT_MAX x INT_MAX");
    CHECK(sdunet_set_threads(m, -1, &e) == SDUNET_E_INVALID_ARG, "threads -1");
    CHECK(sdunet_set_threads(m, 1025, &e) == SDUNET_E_INVALID_ARG, "threads 1025");
    CHECK(sdunet_set_threads(m, 0, &e) == SDUNET_OK, "threads 0 = default: %s", e.message);
    /* 1x1 latent: the smallest valid input goes through every block. */
    CHECK(sdunet_forward(m, b.x, 1, 4, 1, 1, &b.t, 1, b.ctx, 1, D, b.out, &e) == SDUNET_OK,
          "1x1 latent, 1 token: %s", e.message);
    CHECK(isfinite(b.out[0]) && isfinite(b.out[3]), "1x1 output finite");

    sdunet_options o;
    sdunet_options_default(&o);
    o.threads = -1;
    sdunet_model *bad = (sdunet_model *)&e;
    CHECK(sdunet_load_synthetic("sd15", &o, &bad, &e) == SDUNET_E_INVALID_ARG && bad == NULL,
          "options.threads -1");
    o.threads = 100000;
    CHECK(sdunet_load_synthetic("sd15", &o, &bad, &e) == SDUNET_E_INVALID_ARG && bad == NULL,
          "options.threads 100000");

    sdunet_scheduler *s = NULL;
    CHECK(sdunet_sched_create("euler", NULL, &s, &e) == SDUNET_OK, "%s", e.message);
    CHECK(sdunet_sched_set_timesteps(s, 0, &e) == SDUNET_E_INVALID_ARG, "0 steps");
    CHECK(sdunet_sched_set_timesteps(s, -3, &e) == SDUNET_E_INVALID_ARG, "-3 steps");
    CHECK(sdunet_sched_set_timesteps(s, 100000000, &e) == SDUNET_E_INVALID_ARG, "1e8 steps");
    CHECK(sdunet_sched_set_timesteps(s, 1, &e) == SDUNET_OK, "1 step: %s", e.message);
    float x[4] = {1, 2, 3, 4}, o4[4];
    sdunet_status st = sdunet_sched_scale_model_input(s, 0, x, 0, o4, &e);
    CHECK(st == SDUNET_OK || st == SDUNET_E_INVALID_ARG, "0 elements: %d", st);
    CHECK(sdunet_cfg_combine(x, x, 7.5, 0, o4) == SDUNET_OK, "cfg of 0 elements");
    CHECK(sdunet_cfg_combine(x, x, NAN, 4, o4) == SDUNET_E_INVALID_ARG, "cfg guidance NaN");
    sdunet_sched_free(s);
    io_free(&b);
    sdunet_free(m);
}

/* ---------------------------------------------------------- aliasing */

static void test_output_aliasing(void)
{
    sdunet_model *m = tiny_model(1, 0);
    CHECK(m != NULL, "tiny model");
    if (!m)
        return;
    enum { H = 8, W = 8, L = 7, D = 32, N = 4 * H * W, NC = L * D };
    /* One arena so the overlaps can be exact: [gap | sample | context | t | after],
     * the gap and `after` each as long as an output. */
    const size_t total = (size_t)N + N + NC + 16 + N;
    float *arena = calloc(total, sizeof(float));
    CHECK(arena != NULL, "arena");
    if (!arena) {
        sdunet_free(m);
        return;
    }
    float *x = arena + N, *ctx = x + N, *t = ctx + NC, *after = t + 16;
    t_fill_random(x, N, 5);
    t_fill_random(ctx, NC, 6);
    t[0] = 250;
    sdunet_error e;
    struct {
        const char *what;
        float *o;
    } bad[] = {{"out == sample", x},
               {"out inside the sample", x + 1},
               {"out's last element on the sample's first", x - N + 1},
               {"out == context", ctx},
               {"out ends on the context's first element", ctx - N + 1},
               {"out starts on the context's last element", ctx + NC - 1},
               {"out == timesteps", t},
               {"out covers the timesteps", t - 5}};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        CHECK(sdunet_forward(m, x, 1, 4, H, W, t, 1, ctx, L, D, bad[k].o, &e) ==
                  SDUNET_E_INVALID_ARG,
              "%s", bad[k].what);
        CHECK(strstr(e.message, "overlap") != NULL, "%s: %s", bad[k].what, e.message);
    }
    /* Adjacent but not overlapping is fine, and the inputs come out as they
     * went in (the API reads them, never writes them). */
    float *copy = malloc((size_t)(N + NC + 1) * sizeof(float));
    CHECK(copy != NULL, "copy");
    if (copy) {
        memcpy(copy, x, (size_t)(N + NC + 1) * sizeof(float));
        CHECK(sdunet_forward(m, x, 1, 4, H, W, t, 1, ctx, L, D, after, &e) == SDUNET_OK,
              "output right after the inputs: %s", e.message);
        CHECK(sdunet_forward(m, x, 1, 4, H, W, t, 1, ctx, L, D, arena, &e) == SDUNET_OK,
              "output right before the sample: %s", e.message);
        CHECK(memcmp(copy, x, (size_t)(N + NC + 1) * sizeof(float)) == 0, "inputs unchanged");
        CHECK(memcmp(arena, after, (size_t)N * sizeof(float)) == 0, "same output both places");
    }
    free(copy);
    free(arena);
    sdunet_free(m);
}

/* ------------------------------------------------------- concurrency */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void nap(void)
{
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
}

typedef struct busy_ctx {
    sdunet_model *m;
    io *b;
    float *out;
    atomic_int inside; /* set by A's forward once it is running */
    atomic_int probed; /* set by B when its calls are done */
    sdunet_status st;
    sdunet_error e;
} busy_ctx;

/* Called from inside A's forward: hold it there until B has tried. */
static void hold_forward(void *user, const sd_event *ev)
{
    (void)ev;
    busy_ctx *c = user;
    if (atomic_exchange(&c->inside, 1))
        return;
    double end = now_s() + 30;
    while (!atomic_load(&c->probed) && now_s() < end)
        nap();
}

static void *forward_a(void *arg)
{
    busy_ctx *c = arg;
    io *b = c->b;
    c->st = sd_model_forward_ev(c->m, b->x, 1, 4, b->H, b->W, &b->t, 1, b->ctx, b->L, b->D, c->out,
                                hold_forward, c, &c->e);
    atomic_store(&c->inside, 1); /* in case no event fired at all */
    return NULL;
}

/* Deterministic overlap: thread A is held inside its forward while the
 * main thread calls the same model, which must answer SDUNET_E_BUSY. */
static void test_busy_while_running(void)
{
    sdunet_model *m = tiny_model(2, 0);
    CHECK(m != NULL, "tiny model");
    if (!m)
        return;
    io b;
    CHECK(io_make(&b, 16, 16), "buffers");
    float *ref = malloc(b.n_in * sizeof(float)), *out_b = malloc(b.n_in * sizeof(float));
    sdunet_error e;
    CHECK(io_run(m, &b, ref, &e) == SDUNET_OK, "%s", e.message);

    busy_ctx c = {.m = m, .b = &b, .out = b.out};
    atomic_init(&c.inside, 0);
    atomic_init(&c.probed, 0);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, forward_a, &c) == 0, "thread");
    double end = now_s() + 30;
    while (!atomic_load(&c.inside) && now_s() < end)
        nap();
    sdunet_status st = io_run(m, &b, out_b, &e);
    CHECK(st == SDUNET_E_BUSY, "second forward during the first: %s (%s)", sdunet_status_string(st),
          e.message);
    CHECK(st != SDUNET_E_BUSY || one_line(&e), "busy message: %s", e.message);
    st = sdunet_set_threads(m, 3, &e);
    CHECK(st == SDUNET_E_BUSY, "set_threads during a forward: %s", sdunet_status_string(st));
    atomic_store(&c.probed, 1);
    pthread_join(th, NULL);
    CHECK(c.st == SDUNET_OK, "held forward: %s", c.e.message);
    CHECK(memcmp(b.out, ref, b.n_in * sizeof(float)) == 0, "held forward's output is exact");
    /* Once the first call is over the model is free again. */
    CHECK(io_run(m, &b, out_b, &e) == SDUNET_OK, "after: %s", e.message);
    CHECK(memcmp(out_b, ref, b.n_in * sizeof(float)) == 0, "output after the busy episode");
    free(ref);
    free(out_b);
    io_free(&b);
    sdunet_free(m);
}

typedef struct race_ctx {
    sdunet_model *m;
    io *b;
    const float *ref;
    int iters;
    atomic_int *go;
    int ok, busy, other, wrong;
} race_ctx;

static void *hammer(void *arg)
{
    race_ctx *c = arg;
    float *out = malloc(c->b->n_in * sizeof(float));
    while (!atomic_load(c->go))
        sched_yield();
    for (int i = 0; i < c->iters && out; i++) {
        sdunet_error e;
        sdunet_status st = io_run(c->m, c->b, out, &e);
        if (st == SDUNET_OK) {
            c->ok++;
            c->wrong += memcmp(out, c->ref, c->b->n_in * sizeof(float)) != 0;
        } else if (st == SDUNET_E_BUSY) {
            c->busy++;
        } else {
            c->other++;
        }
    }
    free(out);
    return NULL;
}

/* Free-running: two threads call one model as fast as they can. Whether a
 * given pair of calls overlaps is up to the scheduler, so only the contract
 * is checked: every call is OK or BUSY, every OK output is exact, and the
 * calls that ran all ran. Then two models on two threads: both always OK. */
static void test_concurrent_forwards(void)
{
    sdunet_model *m = tiny_model(2, 0);
    sdunet_model *m2 = tiny_model(2, 0);
    CHECK(m && m2, "tiny models");
    if (!m || !m2) {
        sdunet_free(m);
        sdunet_free(m2);
        return;
    }
    io b;
    CHECK(io_make(&b, 16, 16), "buffers");
    float *ref = malloc(b.n_in * sizeof(float));
    sdunet_error e;
    CHECK(io_run(m, &b, ref, &e) == SDUNET_OK, "%s", e.message);
    for (int pass = 0; pass < 2; pass++) {
        atomic_int go;
        atomic_init(&go, 0);
        race_ctx c[2];
        pthread_t th[2];
        for (int k = 0; k < 2; k++) {
            c[k] = (race_ctx){
                .m = pass == 0 || k == 0 ? m : m2, .b = &b, .ref = ref, .iters = 4, .go = &go};
            CHECK(pthread_create(&th[k], NULL, hammer, &c[k]) == 0, "thread");
        }
        atomic_store(&go, 1);
        for (int k = 0; k < 2; k++)
            pthread_join(th[k], NULL);
        int ok = c[0].ok + c[1].ok, busy = c[0].busy + c[1].busy;
        printf("  # %s: %d ok, %d busy\n", pass == 0 ? "one model" : "two models", ok, busy);
        CHECK(c[0].other + c[1].other == 0, "a status other than OK or BUSY");
        CHECK(c[0].wrong + c[1].wrong == 0, "an OK output differs from the reference");
        CHECK(ok + busy == 8, "calls lost");
        CHECK(ok >= 1, "no call succeeded");
        if (pass == 1)
            CHECK(busy == 0, "separate models are independent: %d busy", busy);
    }
    free(ref);
    io_free(&b);
    sdunet_free(m);
    sdunet_free(m2);
}

/* The tiny golden case at 2 and 4 threads (what `make tsan` races on): the
 * output is within the golden bar and the same at every thread count. */
static void test_tiny_threads(void)
{
    golden_case g;
    CHECK(golden_load("tiny", &g) == 0, "load tiny");
    if (!g.sample)
        return;
    float *first = malloc(g.n_out * sizeof(float)), *out = malloc(g.n_out * sizeof(float));
    static const int counts[] = {2, 4};
    for (int k = 0; k < 2; k++) {
        sdunet_model *m = tiny_model(counts[k], 0);
        CHECK(m != NULL, "model");
        if (!m)
            continue;
        double rel = golden_run(m, &g, 0, NULL, k ? out : first);
        printf("  # tiny with %d threads: relative L2 %.3g\n", counts[k], rel);
        CHECK(rel >= 0 && rel <= 2e-6, "%d threads: relative L2 %.3g", counts[k], rel);
        if (k)
            CHECK(memcmp(first, out, g.n_out * sizeof(float)) == 0,
                  "2 and 4 threads give different outputs");
        sdunet_free(m);
    }
    free(first);
    free(out);
    golden_free(&g);
}

/* ---------------------------------------------------------- numerics */

typedef struct census {
    size_t nan, inf, finite;
    double max_abs;
} census;

static census count(const float *p, size_t n)
{
    census c = {0};
    for (size_t i = 0; i < n; i++) {
        if (isnan(p[i])) {
            c.nan++;
        } else if (isinf(p[i])) {
            c.inf++;
        } else {
            c.finite++;
            if (fabs(p[i]) > c.max_abs)
                c.max_abs = fabs(p[i]);
        }
    }
    return c;
}

static void test_nonfinite_inputs(void)
{
    sdunet_model *strict = tiny_model(1, 0), *lax = tiny_model(1, 1);
    CHECK(strict && lax, "models");
    io b;
    CHECK(io_make(&b, 8, 8), "buffers");
    if (!strict || !lax) {
        sdunet_free(strict);
        sdunet_free(lax);
        io_free(&b);
        return;
    }
    const float bad[] = {NAN, INFINITY, -INFINITY};
    const char *names[] = {"NaN", "+Inf", "-Inf"};
    sdunet_error e;
    for (int k = 0; k < 3; k++) {
        float *where[3] = {&b.x[17], &b.ctx[9], &b.t};
        const char *wn[3] = {"sample", "context", "timestep"};
        for (int w = 0; w < 3; w++) {
            float saved = *where[w];
            *where[w] = bad[k];
            for (size_t i = 0; i < b.n_in; i++)
                b.out[i] = 12345.0f;
            sdunet_status st = io_run(strict, &b, b.out, &e);
            CHECK(st == SDUNET_E_NONFINITE, "%s in the %s: %s", names[k], wn[w],
                  sdunet_status_string(st));
            CHECK(strstr(e.message, wn[w]) != NULL, "message names the %s: %s", wn[w], e.message);
            CHECK(b.out[0] == 12345.0f, "a refused call leaves the output alone");
            st = io_run(lax, &b, b.out, &e);
            CHECK(st == SDUNET_OK, "allowed %s in the %s: %s", names[k], wn[w], e.message);
            census c = count(b.out, b.n_in);
            CHECK(c.nan + c.inf > 0, "allowed %s in the %s did not reach the output", names[k],
                  wn[w]);
            if (w == 0 && k == 0)
                printf("  # one NaN in the sample: %zu of %zu outputs NaN\n", c.nan, b.n_in);
            *where[w] = saved;
        }
    }
    /* The strict model is unharmed by the refusals. */
    CHECK(io_run(strict, &b, b.out, &e) == SDUNET_OK, "%s", e.message);
    CHECK(count(b.out, b.n_in).finite == b.n_in, "finite after refusals");
    io_free(&b);
    sdunet_free(strict);
    sdunet_free(lax);
}

/* Two runs of the same input give the same bits (NaN included). */
static void run_twice(sdunet_model *m, io *b, float *o1, float *o2, const char *what)
{
    sdunet_error e;
    double t0 = now_s();
    sdunet_status st = io_run(m, b, o1, &e);
    double dt = now_s() - t0;
    CHECK(st == SDUNET_OK, "%s: %s", what, e.message);
    CHECK(io_run(m, b, o2, &e) == SDUNET_OK, "%s (again): %s", what, e.message);
    CHECK(memcmp(o1, o2, b->n_in * sizeof(float)) == 0, "%s: two runs differ", what);
    census c = count(o1, b->n_in);
    printf("  # %-34s %.3f s: %zu finite (max |y| %.3g), %zu NaN, %zu Inf\n", what, dt, c.finite,
           c.max_abs, c.nan, c.inf);
}

static void test_huge_magnitudes(void)
{
    sdunet_model *m = tiny_model(2, 0);
    CHECK(m != NULL, "model");
    io b;
    CHECK(io_make(&b, 16, 16), "buffers");
    float *o1 = malloc(b.n_in * sizeof(float)), *o2 = malloc(b.n_in * sizeof(float));
    if (!m || !o1 || !o2) {
        sdunet_free(m);
        io_free(&b);
        free(o1);
        free(o2);
        return;
    }
    /* Finite, so accepted by default; the forward must finish and be
     * deterministic. What comes out is documented in README "Hardening". */
    for (size_t i = 0; i < b.n_in; i++)
        b.x[i] *= 1e30f;
    run_twice(m, &b, o1, o2, "sample * 1e30");
    census cs = count(o1, b.n_in);
    for (size_t i = 0; i < b.n_ctx; i++)
        b.ctx[i] *= 1e30f;
    run_twice(m, &b, o1, o2, "sample and context * 1e30");
    for (size_t i = 0; i < b.n_in; i++)
        b.x[i] = i % 2 ? FLT_MAX : -FLT_MAX;
    for (size_t i = 0; i < b.n_ctx; i++)
        b.ctx[i] = i % 3 ? FLT_MAX : -FLT_MAX;
    b.t = 1e30f;
    run_twice(m, &b, o1, o2, "+-FLT_MAX everywhere, t = 1e30");
    /* The group norms take the sample's scale out: a huge sample alone
     * still gives a finite prediction. */
    CHECK(cs.finite == b.n_in, "sample * 1e30: %zu NaN, %zu Inf", cs.nan, cs.inf);
    free(o1);
    free(o2);
    io_free(&b);
    sdunet_free(m);
}

static void test_subnormal_inputs(void)
{
    sdunet_model *m = tiny_model(2, 0);
    CHECK(m != NULL, "model");
    io b;
    CHECK(io_make(&b, 16, 16), "buffers");
    float *o1 = malloc(b.n_in * sizeof(float)), *o2 = malloc(b.n_in * sizeof(float));
    float *zero = malloc(b.n_in * sizeof(float));
    if (!m || !o1 || !o2 || !zero) {
        sdunet_free(m);
        io_free(&b);
        free(o1);
        free(o2);
        free(zero);
        return;
    }
    /* Subnormal sample and context (down to the smallest, 1.4e-45): the
     * forward must match the all-zero input's to rounding, not return
     * garbage, and take no pathological time. */
    for (size_t i = 0; i < b.n_in; i++)
        b.x[i] = (i % 2 ? 1 : -1) * FLT_TRUE_MIN * (float)(1 + i % 1000);
    for (size_t i = 0; i < b.n_ctx; i++)
        b.ctx[i] = (i % 3 ? 1 : -1) * FLT_MIN * 0.5f * (float)(i % 7) / 7.0f;
    run_twice(m, &b, o1, o2, "subnormal sample and context");
    CHECK(count(o1, b.n_in).finite == b.n_in, "subnormal inputs give non-finite outputs");
    memset(b.x, 0, b.n_in * sizeof(float));
    memset(b.ctx, 0, b.n_ctx * sizeof(float));
    sdunet_error e;
    CHECK(io_run(m, &b, zero, &e) == SDUNET_OK, "%s", e.message);
    double rel = t_rel_l2_f32(o1, zero, b.n_in);
    printf("  # subnormal vs zero input: relative L2 %.3g\n", rel);
    CHECK(rel < 1e-4, "subnormal inputs: output far from the zero input's (%.3g)", rel);
    free(o1);
    free(o2);
    free(zero);
    io_free(&b);
    sdunet_free(m);
}

int main(void)
{
    RUN(test_null_model_api);
    RUN(test_null_sched_api);
    RUN(test_zero_sizes);
    RUN(test_output_aliasing);
    RUN(test_busy_while_running);
    RUN(test_concurrent_forwards);
    RUN(test_tiny_threads);
    RUN(test_nonfinite_inputs);
    RUN(test_huge_magnitudes);
    RUN(test_subnormal_inputs);
    return t_summary();
}
