/* Weight storage A/B: one model file loaded twice in one process, with its
 * own precision (SDUNET_WEIGHTS_AUTO: float16 panels for a float16 file)
 * and widened to float32 panels (SDUNET_WEIGHTS_F32); forwards alternate
 * between the two (ABBA order), so load from other processes on a shared
 * machine hits both alike. Reports per thread count the median wall and
 * process-CPU time of each and the median of the per-pair ratios, and
 * checks that the two outputs are identical bit for bit.
 *
 * Usage: bench_weights MODEL CONFIG [PAIRS [THREADS...]]
 * (defaults: 5 pairs, 1 and 2 threads). Input: batch 1, 64x64 latent, 77
 * context tokens, timestep 999, synthetic values. Build:
 *   make && cc -std=c11 -D_DEFAULT_SOURCE -O2 -Iinclude -Isrc bench/bench_weights.c \
 *      build/libsdunet.a -lm -lpthread -o build/bench_weights */
#include "sdunet.h"
#include "engine/synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_weights MODEL CONFIG [PAIRS [THREADS...]]\n");
        return 2;
    }
    const int pairs = argc > 3 ? atoi(argv[3]) : 5;
    int threads[16] = {1, 2}, nt = 2;
    if (argc > 4) {
        nt = 0;
        for (int i = 4; i < argc && nt < 16; i++)
            threads[nt++] = atoi(argv[i]);
    }
    if (pairs < 1 || pairs > 1000) {
        fprintf(stderr, "PAIRS must be 1..1000\n");
        return 2;
    }
    const int B = 1, H = 64, W = 64, L = 77;
    sdunet_model *m[2] = {NULL, NULL};
    const sdunet_weights kind[2] = {SDUNET_WEIGHTS_AUTO, SDUNET_WEIGHTS_F32};
    const char *label[2] = {"file precision", "f32 panels"};
    sdunet_error err;
    for (int k = 0; k < 2; k++) {
        sdunet_options o;
        sdunet_options_default(&o);
        o.weights = kind[k];
        o.threads = threads[0];
        if (sdunet_load(argv[1], argv[2], &o, &m[k], &err)) {
            fprintf(stderr, "%s\n", err.message);
            return 1;
        }
    }
    sdunet_model_info info;
    sdunet_get_info(m[0], &info);
    const int C = info.in_channels, D = info.context_dim;
    const size_t ns = (size_t)B * C * H * W, nc = (size_t)B * L * D;
    float *x = malloc(ns * 4), *ctx = malloc(nc * 4), *y[2] = {malloc(ns * 4), malloc(ns * 4)};
    double *wall[2], *cpu[2], *rw = malloc(sizeof(double) * pairs),
                              *rc = malloc(sizeof(double) * pairs);
    for (int k = 0; k < 2; k++) {
        wall[k] = malloc(sizeof(double) * pairs);
        cpu[k] = malloc(sizeof(double) * pairs);
    }
    if (!x || !ctx || !y[0] || !y[1] || !rw || !rc || !wall[0] || !wall[1] || !cpu[0] || !cpu[1])
        return 1;
    sd_synth_fill(SD_SYNTH_SAMPLE_NAME, ns, sqrt(3.0), 0.0f, x);
    sd_synth_fill(SD_SYNTH_CONTEXT_NAME, nc, 1.0, 0.0f, ctx);
    const float ts = 999.0f;
    int same_all = 1;
    for (int ti = 0; ti < nt; ti++) {
        for (int k = 0; k < 2; k++) {
            if (sdunet_set_threads(m[k], threads[ti], &err) ||
                sdunet_forward(m[k], x, B, C, H, W, &ts, 1, ctx, L, D, y[k], &err)) { /* warm-up */
                fprintf(stderr, "%s\n", err.message);
                return 1;
            }
        }
        for (int p = 0; p < pairs; p++) {
            for (int q = 0; q < 2; q++) {
                const int k = p % 2 ? 1 - q : q; /* ABBA */
                double w0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
                if (sdunet_forward(m[k], x, B, C, H, W, &ts, 1, ctx, L, D, y[k], &err)) {
                    fprintf(stderr, "%s\n", err.message);
                    return 1;
                }
                wall[k][p] = clock_s(CLOCK_MONOTONIC) - w0;
                cpu[k][p] = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
            }
            rw[p] = wall[0][p] / wall[1][p];
            rc[p] = cpu[0][p] / cpu[1][p];
            fprintf(stderr, "threads %d pair %d: wall %.3f / %.3f s, cpu %.3f / %.3f s\n",
                    threads[ti], p + 1, wall[0][p], wall[1][p], cpu[0][p], cpu[1][p]);
        }
        const int same = memcmp(y[0], y[1], ns * 4) == 0;
        same_all &= same;
        const double mrw = median(rw, pairs), mrc = median(rc, pairs);
        printf("threads=%d pairs=%d %s: median wall %.3f s cpu %.3f s; %s: median wall %.3f s "
               "cpu %.3f s; median ratio wall %.4f cpu %.4f; outputs %s\n",
               threads[ti], pairs, label[0], median(wall[0], pairs), median(cpu[0], pairs),
               label[1], median(wall[1], pairs), median(cpu[1], pairs), mrw, mrc,
               same ? "identical" : "DIFFERENT");
        fflush(stdout);
    }
    for (int k = 0; k < 2; k++) {
        sdunet_free(m[k]);
        free(y[k]);
        free(wall[k]);
        free(cpu[k]);
    }
    free(x), free(ctx), free(rw), free(rc);
    return same_all ? 0 : 1;
}
