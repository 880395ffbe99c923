/* sdunet bench: timed forwards with a breakdown by op kind. */
#include "cli.h"

#include "unet/model_internal.h"
#include "engine/synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static const char bench_help[] =
    "usage: sdunet bench [--synthetic PRESET | --model PATH [--config FILE]]\n"
    "                    [--batch B] [--height H] [--width W] [--context-len L]\n"
    "                    [--runs N] [--warmup N] [--threads N] [--weights f32|f16|bf16]\n"
    "                    [--fast] [--cfg] [--shapes]\n"
    "\n"
    "Times the UNet forward: after --warmup runs (default 1), --runs timed runs (default 3)\n"
    "on synthetic inputs; prints the median and minimum time, GFLOP/s (multiply-adds x 2\n"
    "of the convolutions, linear layers and attention matmuls), peak RSS and a breakdown\n"
    "by op kind. Defaults: --synthetic sd15, batch 1, 64x64, 77 context tokens.\n"
    "--weights stores the weight matrices as f32, f16 or bf16 (default: $SDUNET_WEIGHTS,\n"
    "else each tensor's file precision, f32 for synthetic weights); compute is float32.\n"
    "--fast times the fast mode (sdunet_options.fast: 3x3 convolutions by Winograd\n"
    "F(4x4, 3x3), relative L2 <= 2e-5 against float64; default: $SDUNET_FAST, else off).\n"
    "--cfg fills the batch as classifier-free guidance does: one latent and timestep 999 in\n"
    "every row, a context per row (default: a latent per row, timesteps 999, 979, ...).\n"
    "With equal rows the layers before the first cross-attention run once for all rows.\n"
    "--shapes adds a table of the last run's time by op kind and shape, longest first.\n"
    "The last line is machine-readable:\n"
    "  bench: precision=fp32 weights=f16 packed_mb=... batch=1 height=64 width=64 threads=2\n"
    "         fast=0 median_s=... min_s=... gflops=... peak_rss_mb=...   (one line)\n"
    "sdunet bench --text PRESET|PATH times the text encoder instead (--text --help).\n";

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* Linux reports KiB */
}

int cmd_bench(int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--text") == 0)
            return cmd_bench_text(argc, argv);
    opt o[] = {{.name = "--synthetic"},
               {.name = "--model"},
               {.name = "--config"},
               {.name = "--batch"},
               {.name = "--height"},
               {.name = "--width"},
               {.name = "--context-len"},
               {.name = "--runs"},
               {.name = "--warmup"},
               {.name = "--threads"},
               {.name = "--weights"},
               {.name = "--fast", .is_flag = 1},
               {.name = "--cfg", .is_flag = 1},
               {.name = "--shapes", .is_flag = 1}};
    const int no = sizeof o / sizeof o[0];
    int help;
    if (parse_opts(argc, argv, o, no, &help))
        return 1;
    if (help) {
        fputs(bench_help, stdout);
        return 0;
    }
    const char *model = get(o, no, "--model"), *synthetic = get(o, no, "--synthetic");
    if (model && synthetic)
        return die("give --model or --synthetic, not both");
    if (!model && !synthetic)
        synthetic = "sd15";
    int B = 1, H = 64, W = 64, L = 77, runs = 3, warmup = 1, threads = 0;
    if ((get(o, no, "--batch") && parse_int(get(o, no, "--batch"), "--batch", 1, 64, &B)) ||
        (get(o, no, "--height") && parse_int(get(o, no, "--height"), "--height", 1, 1024, &H)) ||
        (get(o, no, "--width") && parse_int(get(o, no, "--width"), "--width", 1, 1024, &W)) ||
        (get(o, no, "--context-len") &&
         parse_int(get(o, no, "--context-len"), "--context-len", 1, 4096, &L)) ||
        (get(o, no, "--runs") && parse_int(get(o, no, "--runs"), "--runs", 1, 1000, &runs)) ||
        (get(o, no, "--warmup") &&
         parse_int(get(o, no, "--warmup"), "--warmup", 0, 100, &warmup)) ||
        (get(o, no, "--threads") &&
         parse_int(get(o, no, "--threads"), "--threads", 1, 1024, &threads)))
        return 1;
    int weights, fast;
    if (parse_weights(get(o, no, "--weights"), &weights) ||
        parse_fast(get(o, no, "--fast") != NULL, &fast))
        return 1;

    sdunet_error err;
    sdunet_model *m = NULL;
    double t0 = now_s();
    if (load_model_w(model, get(o, no, "--config"), NULL, synthetic, threads, 0, weights, fast, &m))
        return 1;
    double load_s = now_s() - t0;
    sdunet_model_info info;
    sdunet_get_info(m, &info);
    const int C = info.in_channels, D = info.context_dim;
    size_t ns = (size_t)B * C * H * W, nc = (size_t)B * L * D;
    size_t nout = (size_t)B * info.out_channels * H * W;
    float *sample = malloc(ns * sizeof(float)), *ctx = malloc(nc * sizeof(float));
    float *out = malloc(nout * sizeof(float));
    double *times = calloc((size_t)runs, sizeof(double));
    int rc = 1;
    if (!sample || !ctx || !out || !times) {
        die("out of memory");
        goto done;
    }
    sd_synth_fill(SD_SYNTH_SAMPLE_NAME, ns, sqrt(3.0), 0.0f, sample);
    sd_synth_fill(SD_SYNTH_CONTEXT_NAME, nc, 1.0, 0.0f, ctx);
    const int cfg = get(o, no, "--cfg") != NULL;
    float ts[64];
    for (int b = 0; b < B; b++) {
        ts[b] = cfg ? 999.0f : 999.0f - 20.0f * b;
        if (cfg && b > 0)
            memcpy(sample + b * (ns / B), sample, sizeof(float) * (ns / B));
    }
    size_t pb[SD_WT_COUNT];
    sd_model_packed_bytes(m, pb);
    const char *wlabel = sd_weights_label(pb);
    const double packed_mb = (double)(pb[0] + pb[1] + pb[2]) / 1e6;
    printf("sdunet bench: %s, %.1fM parameters, %s weights (%.1f MB packed), %s kernels, %d "
           "threads, %s mode, load %.2f s\n",
           synthetic ? synthetic : model, (double)info.n_params / 1e6, wlabel, packed_mb, info.isa,
           info.threads, fast ? "fast" : "exact", load_s);
    printf("input: batch %d%s, latent %dx%d, context %dx%d; %d warm-up + %d timed runs\n", B,
           cfg ? " (classifier-free guidance: one latent, a context per row)" : "", H, W, L, D,
           warmup, runs);
    fflush(stdout);
    sd_prof prof;
    for (int i = 0; i < warmup + runs; i++) {
        int timed = i >= warmup;
        memset(&prof, 0, sizeof prof);
        sd_model_set_profile(m, timed ? &prof : NULL);
        double s = now_s();
        if (sdunet_forward(m, sample, B, C, H, W, ts, B, ctx, L, D, out, &err)) {
            die("%s", err.message);
            goto done;
        }
        double dt = now_s() - s;
        if (timed)
            times[i - warmup] = dt;
        progress("%s %d/%d: %.3f s\n", timed ? "run" : "warm-up", timed ? i - warmup + 1 : i + 1,
                 timed ? runs : warmup, dt);
    }
    sd_model_set_profile(m, NULL);
    /* the breakdown is from the last timed run */
    double total_f = print_breakdown(&prof);
    if (get(o, no, "--shapes"))
        print_shapes(&prof);
    qsort(times, (size_t)runs, sizeof *times, cmp_double);
    double median = runs % 2 ? times[runs / 2] : 0.5 * (times[runs / 2 - 1] + times[runs / 2]);
    double gflops = total_f / 1e9 / median;
    printf("\nbench: precision=fp32 weights=%s packed_mb=%.1f batch=%d height=%d width=%d "
           "threads=%d fast=%d median_s=%.3f min_s=%.3f gflops=%.1f peak_rss_mb=%.0f\n",
           wlabel, packed_mb, B, H, W, info.threads, fast, median, times[0], gflops, peak_rss_mb());
    rc = 0;
done:
    free(sample);
    free(ctx);
    free(out);
    free(times);
    sdunet_free(m);
    return rc;
}
