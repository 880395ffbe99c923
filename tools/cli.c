/* Helpers shared by the CLI's commands: errors, timing, option parsing. */
#include "cli.h"

#include "sdunet.h"
#include "unet/model_internal.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("sdunet: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

void progress(const char *fmt, ...)
{
    if (!isatty(2))
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

int parse_opts(int argc, char **argv, opt *opts, int nopts, int *want_help)
{
    *want_help = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            *want_help = 1;
            return 0;
        }
        int k;
        for (k = 0; k < nopts; k++)
            if (strcmp(a, opts[k].name) == 0)
                break;
        if (k == nopts)
            return die("unknown option '%s' (see --help)", a);
        if (opts[k].seen)
            return die("option %s given twice", a);
        opts[k].seen = 1;
        if (opts[k].is_flag) {
            opts[k].value = "1";
        } else {
            if (i + 1 >= argc)
                return die("option %s needs a value", a);
            opts[k].value = argv[++i];
        }
    }
    return 0;
}

const char *get(opt *opts, int n, const char *name)
{
    for (int k = 0; k < n; k++)
        if (strcmp(opts[k].name, name) == 0)
            return opts[k].value;
    return NULL;
}

int parse_int(const char *s, const char *what, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return die("%s must be an integer in %d..%d (got '%s')", what, lo, hi, s);
    *out = (int)v;
    return 0;
}

/* Comma-separated timesteps. */
int parse_timesteps(const char *s, float *out, int cap, int *n)
{
    *n = 0;
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        double v = strtod(p, &end);
        if (end == p || errno || !isfinite(v))
            return die("--timestep: '%s' is not a list of numbers", s);
        if (*n >= cap)
            return die("--timestep: more than %d values", cap);
        out[(*n)++] = (float)v;
        if (*end == 0)
            return 0;
        if (*end != ',')
            return die("--timestep: '%s' is not a comma-separated list of numbers", s);
        p = end + 1;
    }
}

void print_checksum(const float *y, size_t n)
{
    double sum = 0, sq = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        sum += y[i];
        sq += (double)y[i] * y[i];
        if (fabs(y[i]) > mx)
            mx = fabs(y[i]);
    }
    printf("checksum: sum=%.9g l2=%.9g max_abs=%.9g\n", sum, sqrt(sq), mx);
}

int parse_weights(const char *s, int *out)
{
    const char *src = "--weights";
    if (!s) {
        s = getenv("SDUNET_WEIGHTS");
        src = "SDUNET_WEIGHTS";
    }
    if (!s || !*s || strcmp(s, "auto") == 0)
        *out = SDUNET_WEIGHTS_AUTO;
    else if (strcmp(s, "f32") == 0)
        *out = SDUNET_WEIGHTS_F32;
    else if (strcmp(s, "f16") == 0)
        *out = SDUNET_WEIGHTS_F16;
    else if (strcmp(s, "bf16") == 0)
        *out = SDUNET_WEIGHTS_BF16;
    else
        return die("%s must be f32, f16, bf16 or auto (got '%s')", src, s);
    return 0;
}

int parse_fast(int flag, int *out)
{
    const char *s = getenv("SDUNET_FAST");
    if (flag)
        *out = 1;
    else if (!s || !*s || strcmp(s, "0") == 0)
        *out = 0;
    else if (strcmp(s, "1") == 0)
        *out = 1;
    else
        return die("SDUNET_FAST must be 0 or 1 (got '%s')", s);
    return 0;
}

int load_model(const char *model, const char *config, const char *variant, const char *synthetic,
               int threads, int allow_nonfinite, sdunet_model **m)
{
    int w, fast;
    if (parse_weights(NULL, &w) || parse_fast(0, &fast))
        return 1;
    return load_model_w(model, config, variant, synthetic, threads, allow_nonfinite, w, fast, m);
}

int load_model_w(const char *model, const char *config, const char *variant, const char *synthetic,
                 int threads, int allow_nonfinite, int weights, int fast, sdunet_model **m)
{
    sdunet_options o;
    sdunet_options_default(&o);
    o.threads = threads;
    o.allow_nonfinite = allow_nonfinite;
    o.variant = variant;
    o.weights = (sdunet_weights)weights;
    o.fast = fast;
    sdunet_error err = {0};
    sdunet_status st;
    double t0 = now_s();
    if (synthetic) {
        progress("generating synthetic weights (%s)...\n", synthetic);
        st = sdunet_load_synthetic(synthetic, &o, m, &err);
    } else {
        progress("loading %s...\n", model);
        st = sdunet_load(model, config, &o, m, &err);
    }
    if (st)
        return die("%s", err.message);
    sdunet_model_info info;
    sdunet_get_info(*m, &info);
    size_t pb[SD_WT_COUNT];
    sd_model_packed_bytes(*m, pb);
    progress("model ready in %.2f s: %.1fM parameters, %s weights (%.1f MB packed), %d threads, "
             "%s kernels%s\n",
             now_s() - t0, (double)info.n_params / 1e6, sd_weights_label(pb),
             (double)(pb[0] + pb[1] + pb[2]) / 1e6, info.threads, info.isa,
             fast ? ", fast mode" : "");
    return 0;
}

int check_writable(const char *path)
{
    FILE *f = fopen(path, "rb");
    int existed = f != NULL;
    if (f)
        fclose(f);
    f = fopen(path, "ab");
    if (!f)
        return die("%s: cannot write: %s", path, strerror(errno));
    fclose(f);
    if (!existed)
        remove(path);
    return 0;
}

static const char *const kind_name[SD_OP_COUNT] = {"3x3 conv", "1x1 conv", "linear", "attention",
                                                   "norms+elementwise"};

/* The profile's whole time: every kind's. */
static double prof_seconds(const sd_prof *prof)
{
    double t = 0;
    for (int k = 0; k < SD_OP_COUNT; k++)
        t += prof->seconds[k];
    return t;
}

double print_breakdown(const sd_prof *prof)
{
    const double total_t = prof_seconds(prof);
    double total_f = 0;
    for (int k = 0; k < SD_OP_COUNT; k++)
        total_f += prof->flops[k];
    printf("\n%-18s %10s %7s %9s %10s %7s\n", "op kind", "time (s)", "share", "GFLOP", "GFLOP/s",
           "calls");
    for (int k = 0; k < SD_OP_COUNT; k++) {
        if (!prof->calls[k]) /* a model without this kind (the text encoder's convolutions) */
            continue;
        double gf = prof->flops[k] / 1e9,
               share = total_t > 0 ? 100.0 * prof->seconds[k] / total_t : 0;
        if (gf > 0)
            printf("%-18s %10.3f %6.1f%% %9.1f %10.1f %7ld\n", kind_name[k], prof->seconds[k],
                   share, gf, prof->seconds[k] > 0 ? gf / prof->seconds[k] : 0.0, prof->calls[k]);
        else
            printf("%-18s %10.3f %6.1f%% %9s %10s %7ld\n", kind_name[k], prof->seconds[k], share,
                   "-", "-", prof->calls[k]);
    }
    printf("%-18s %10.3f %6.1f%% %9.1f %10.1f\n", "total", total_t, 100.0, total_f / 1e9,
           total_t > 0 ? total_f / 1e9 / total_t : 0.0);
    return total_f;
}

static void shape_text(const sd_shape *s, char *buf, size_t cap)
{
    const int *d = s->d;
    char batch[24] = "", stride[24] = "";
    switch (s->form) {
    case SD_SHAPE_GEMM: snprintf(buf, cap, "M%d N%d K%d", d[0], d[1], d[2]); break;
    case SD_SHAPE_GEGLU: snprintf(buf, cap, "GEGLU M%d F%d K%d", d[0], d[1], d[2]); break;
    case SD_SHAPE_CONV:
        if (d[0] > 1)
            snprintf(batch, sizeof batch, "%d x ", d[0]);
        if (d[5] > 1)
            snprintf(stride, sizeof stride, ", stride %d", d[5]);
        snprintf(buf, cap, "%s%dx%dx%d -> %d%s", batch, d[1], d[2], d[3], d[4], stride);
        break;
    case SD_SHAPE_ATTN:
        if (d[0] > 1)
            snprintf(batch, sizeof batch, "%d x ", d[0]);
        snprintf(buf, cap, "%s%d heads, dh %d, %d queries x %d keys", batch, d[1], d[4], d[2],
                 d[3]);
        break;
    }
}

static int cmp_entry_time(const void *a, const void *b)
{
    const sd_prof_entry *x = a, *y = b;
    return (x->seconds < y->seconds) - (x->seconds > y->seconds);
}

void print_shapes(const sd_prof *prof)
{
    const double total_t = prof_seconds(prof);
    sd_prof_entry e[SD_PROF_ENTRIES];
    const int n = prof->entries;
    memcpy(e, prof->entry, sizeof e[0] * (size_t)n);
    qsort(e, (size_t)n, sizeof e[0], cmp_entry_time);
    printf("\n%-10s %-42s %6s %9s %7s %8s\n", "op kind", "shape", "calls", "time (s)", "share",
           "GFLOP/s");
    for (int i = 0; i < n; i++) {
        char shape[96];
        shape_text(&e[i].shape, shape, sizeof shape);
        printf("%-10s %-42s %6ld %9.3f %6.1f%% %8.1f\n", kind_name[e[i].kind], shape, e[i].calls,
               e[i].seconds, total_t > 0 ? 100.0 * e[i].seconds / total_t : 0.0,
               e[i].seconds > 0 ? e[i].flops / 1e9 / e[i].seconds : 0.0);
    }
    if (prof->unlisted)
        printf("(%ld more calls of shapes past the table's %d)\n", prof->unlisted, SD_PROF_ENTRIES);
}
