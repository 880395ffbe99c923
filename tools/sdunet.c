/* sdunet: command-line front end.
 *   sdunet run | demo | synth | info | trace  (sdunet --help) */
#include "sdunet.h"

#include "cli.h"

#include "io/npy.h"
#include "io/tensorfile.h"
#include "model/config.h"
#include "model/model_internal.h"
#include "model/synth.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void print_checksum(const float *y, size_t n)
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

/* ---- trace printing (shared by trace and demo) ---- */

typedef struct trace_printer {
    int blocks_header, skips_header;
    FILE *f;
    int quiet_skips;
} trace_printer;

static void print_event(void *user, const sd_event *e)
{
    trace_printer *tp = user;
    if (e->kind == SD_EV_BLOCK) {
        if (!tp->blocks_header++)
            fprintf(tp->f, "%-24s %-22s %-22s\n", "block", "input (B,C,H,W)", "output (B,C,H,W)");
        char a[40], b[40];
        snprintf(a, sizeof a, "(%d,%d,%d,%d)", e->in_B, e->in_C, e->in_H, e->in_W);
        snprintf(b, sizeof b, "(%d,%d,%d,%d)", e->B, e->C, e->H, e->W);
        fprintf(tp->f, "%-24s %-22s %-22s\n", e->name, a, b);
    }
}

typedef struct skip_row {
    char producer[64], consumer[64];
    int C, H, W;
} skip_row;

typedef struct skip_table {
    skip_row rows[512];
    int n;
} skip_table;

static void collect_skips(void *user, const sd_event *e)
{
    skip_table *t = user;
    if (e->skip_index < 0 || e->skip_index >= 512)
        return;
    skip_row *r = &t->rows[e->skip_index];
    if (e->kind == SD_EV_PUSH) {
        snprintf(r->producer, sizeof r->producer, "%s", e->name);
        r->C = e->C, r->H = e->H, r->W = e->W;
        if (e->skip_index + 1 > t->n)
            t->n = e->skip_index + 1;
    } else if (e->kind == SD_EV_POP) {
        snprintf(r->consumer, sizeof r->consumer, "%s", e->name);
    }
}

typedef struct both {
    trace_printer tp;
    skip_table skips;
} both;

static void both_event(void *user, const sd_event *e)
{
    both *b = user;
    print_event(&b->tp, e);
    collect_skips(&b->skips, e);
}

static void print_skips(FILE *f, const skip_table *t)
{
    fprintf(f, "\nskip stack (pushed by the encoder, popped last-in first-out by the decoder)\n");
    fprintf(f, "%-5s %-32s %-18s %s\n", "index", "producer", "shape (C,HxW)", "consumer");
    for (int i = 0; i < t->n; i++) {
        char s[40];
        snprintf(s, sizeof s, "(%d, %dx%d)", t->rows[i].C, t->rows[i].H, t->rows[i].W);
        fprintf(f, "%-5d %-32s %-18s %s\n", i, t->rows[i].producer, s, t->rows[i].consumer);
    }
}

/* ---- run ---- */

static const char run_help[] =
    "usage: sdunet run (--model PATH [--config FILE|PRESET] | --synthetic PRESET)\n"
    "                  --sample S.npy --timestep T[,T...] --context C.npy --out OUT.npy\n"
    "                  [--threads N] [--allow-nonfinite]\n"
    "\n"
    "One UNet forward: predicted noise for a noisy latent.\n"
    "  --model PATH        safetensors weights (diffusers names; F32, F16 or BF16)\n"
    "  --config FILE       diffusers config.json or a preset (default: config.json beside\n"
    "                      the weights)\n"
    "  --synthetic PRESET  deterministic synthetic weights (sd15, sd21, or a config.json)\n"
    "  --sample S.npy      noisy latent, (B, 4, H, W) float32/float16/float64\n"
    "  --timestep T        one timestep for every row, or one per row: 999,1\n"
    "  --context C.npy     text context, (B, L, D) (D = the model's cross-attention width)\n"
    "  --out OUT.npy       predicted noise, (B, 4, H, W) float32\n"
    "  --threads N         worker threads (default: $SDUNET_THREADS or all online CPUs)\n"
    "  --allow-nonfinite   accept NaN/Inf inputs (default: rejected with an error)\n";

static int load_model(const char *model, const char *config, const char *synthetic, int threads,
                      int allow_nonfinite, sdunet_model **m)
{
    sdunet_options o;
    sdunet_options_default(&o);
    o.threads = threads;
    o.allow_nonfinite = allow_nonfinite;
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
    progress("model ready in %.2f s: %.1fM parameters, %d threads, %s kernels\n",
            now_s() - t0, (double)info.n_params / 1e6, info.threads, info.isa);
    return 0;
}

static int cmd_run(int argc, char **argv)
{
    opt o[] = {{.name = "--model"}, {.name = "--config"}, {.name = "--synthetic"}, {.name = "--sample"}, {.name = "--timestep"},
               {.name = "--context"}, {.name = "--out"}, {.name = "--threads"}, {.name = "--allow-nonfinite", .is_flag = 1}};
    const int no = sizeof o / sizeof o[0];
    int help;
    if (parse_opts(argc, argv, o, no, &help))
        return 1;
    if (help) {
        fputs(run_help, stdout);
        return 0;
    }
    const char *model = get(o, no, "--model"), *synthetic = get(o, no, "--synthetic");
    const char *config = get(o, no, "--config");
    const char *sample_p = get(o, no, "--sample"), *ctx_p = get(o, no, "--context");
    const char *ts = get(o, no, "--timestep"), *out_p = get(o, no, "--out");
    if (!!model == !!synthetic)
        return die("give exactly one of --model PATH or --synthetic PRESET (see --help)");
    if (synthetic && config)
        return die("--config goes with --model; --synthetic takes the preset or config itself");
    if (!sample_p || !ctx_p || !ts || !out_p)
        return die("run needs --sample, --timestep, --context and --out (see --help)");
    int threads = 0;
    if (get(o, no, "--threads") && parse_int(get(o, no, "--threads"), "--threads", 1, 1024,
                                              &threads))
        return 1;
    float tsv[1024];
    int nts;
    if (parse_timesteps(ts, tsv, 1024, &nts))
        return 1;

    sdunet_error err = {0};
    float *sample = NULL, *ctx = NULL, *out = NULL;
    int snd, cnd;
    int64_t ss[SD_MAX_DIMS], cs[SD_MAX_DIMS];
    int rc = 1;
    sdunet_model *m = NULL;
    if (sd_npy_read_f32(sample_p, &sample, &snd, ss, &err)) {
        die("%s", err.message);
        goto done;
    }
    if (snd != 4) {
        die("%s: sample must be 4-d (B, C, H, W), got %d dims", sample_p, snd);
        goto done;
    }
    if (sd_npy_read_f32(ctx_p, &ctx, &cnd, cs, &err)) {
        die("%s", err.message);
        goto done;
    }
    if (cnd != 3) {
        die("%s: context must be 3-d (B, L, D), got %d dims", ctx_p, cnd);
        goto done;
    }
    if (cs[0] != ss[0]) {
        die("batch mismatch: sample has %lld rows, context %lld", (long long)ss[0],
            (long long)cs[0]);
        goto done;
    }
    for (int i = 0; i < 4; i++)
        if (ss[i] < 1 || ss[i] > INT_MAX) {
            die("%s: dimension %d is %lld", sample_p, i, (long long)ss[i]);
            goto done;
        }
    for (int i = 0; i < 3; i++)
        if (cs[i] < 1 || cs[i] > INT_MAX) {
            die("%s: dimension %d is %lld", ctx_p, i, (long long)cs[i]);
            goto done;
        }
    if (nts != 1 && nts != ss[0]) {
        die("--timestep has %d values for batch %lld (give 1 or %lld)", nts, (long long)ss[0],
            (long long)ss[0]);
        goto done;
    }
    if (load_model(model, config, synthetic, threads, get(o, no, "--allow-nonfinite") != NULL, &m))
        goto done;
    sdunet_model_info info;
    sdunet_get_info(m, &info);
    size_t n_out = (size_t)ss[0] * info.out_channels * ss[2] * ss[3];
    out = malloc(n_out * sizeof(float));
    if (!out) {
        die("out of memory");
        goto done;
    }
    progress("forward: sample (%lld,%lld,%lld,%lld), context (%lld,%lld,%lld)...\n",
            (long long)ss[0], (long long)ss[1], (long long)ss[2], (long long)ss[3],
            (long long)cs[0], (long long)cs[1], (long long)cs[2]);
    double t0 = now_s();
    if (sdunet_forward(m, sample, (int)ss[0], (int)ss[1], (int)ss[2], (int)ss[3], tsv, nts, ctx,
                       (int)cs[1], (int)cs[2], out, &err)) {
        die("%s", err.message);
        goto done;
    }
    double dt = now_s() - t0;
    int64_t os[4] = {ss[0], info.out_channels, ss[2], ss[3]};
    if (sd_npy_write_f32(out_p, out, 4, os, &err)) {
        die("%s", err.message);
        goto done;
    }
    printf("output: (%lld,%lld,%lld,%lld) -> %s\n", (long long)os[0], (long long)os[1],
           (long long)os[2], (long long)os[3], out_p);
    printf("forward: %.3f s\n", dt);
    print_checksum(out, n_out);
    rc = 0;
done:
    sd_free(sample);
    sd_free(ctx);
    free(out);
    sdunet_free(m);
    return rc;
}

/* ---- demo: the full-size model on synthetic weights and inputs ---- */

static const char demo_help[] =
    "usage: sdunet demo [--synthetic PRESET] [--batch B] [--height H] [--width W]\n"
    "                   [--timestep T] [--threads N]\n"
    "\n"
    "Runs the UNet (default: full-size SD1.5, 64x64 latent, batch 1, timestep 999) on the\n"
    "synthetic weights and inputs of spec/synthetic-weights.md and prints the block shapes,\n"
    "the skip stack, the time taken and a checksum of the output.\n";

static int cmd_demo(int argc, char **argv)
{
    opt o[] = {{.name = "--synthetic"}, {.name = "--batch"}, {.name = "--height"}, {.name = "--width"}, {.name = "--timestep"},
               {.name = "--threads"}};
    const int no = sizeof o / sizeof o[0];
    int help;
    if (parse_opts(argc, argv, o, no, &help))
        return 1;
    if (help) {
        fputs(demo_help, stdout);
        return 0;
    }
    const char *preset = get(o, no, "--synthetic") ? get(o, no, "--synthetic") : "sd15";
    int B = 1, H = 64, W = 64, threads = 0;
    float t = 999;
    if ((get(o, no, "--batch") && parse_int(get(o, no, "--batch"), "--batch", 1, 64, &B)) ||
        (get(o, no, "--height") && parse_int(get(o, no, "--height"), "--height", 1, 512, &H)) ||
        (get(o, no, "--width") && parse_int(get(o, no, "--width"), "--width", 1, 512, &W)) ||
        (get(o, no, "--threads") &&
         parse_int(get(o, no, "--threads"), "--threads", 1, 1024, &threads)))
        return 1;
    if (get(o, no, "--timestep")) {
        int n;
        if (parse_timesteps(get(o, no, "--timestep"), &t, 1, &n))
            return 1;
    }
    sdunet_model *m = NULL;
    if (load_model(NULL, NULL, preset, threads, 0, &m))
        return 1;
    sdunet_model_info info;
    sdunet_get_info(m, &info);
    const int L = 77, D = info.context_dim, C = info.in_channels;
    size_t ns = (size_t)B * C * H * W, nc = (size_t)B * L * D, no_ = (size_t)B * info.out_channels * H * W;
    float *sample = malloc(ns * sizeof(float)), *ctx = malloc(nc * sizeof(float));
    float *out = malloc(no_ * sizeof(float));
    int rc = 1;
    if (!sample || !ctx || !out) {
        die("out of memory");
        goto done;
    }
    sd_synth_fill(SD_SYNTH_SAMPLE_NAME, ns, sqrt(3.0), 0.0f, sample);
    sd_synth_fill(SD_SYNTH_CONTEXT_NAME, nc, 1.0, 0.0f, ctx);
    printf("sdunet demo: synthetic %s, %.1fM parameters, %s kernels, %d threads\n", preset,
           (double)info.n_params / 1e6, info.isa, info.threads);
    printf("inputs: sample (%d,%d,%d,%d), timestep %g, context (%d,%d,%d)\n\n", B, C, H, W,
           (double)t, B, L, D);
    both tr = {.tp = {.f = stdout}};
    double t0 = now_s();
    sdunet_error err;
    if (sd_model_forward_ev(m, sample, B, C, H, W, &t, 1, ctx, L, D, out, both_event, &tr, &err)) {
        die("%s", err.message);
        goto done;
    }
    double dt = now_s() - t0;
    print_skips(stdout, &tr.skips);
    printf("\noutput: (%d,%d,%d,%d)\n", B, info.out_channels, H, W);
    printf("forward: %.3f s (%d threads)\n", dt, info.threads);
    print_checksum(out, no_);
    rc = 0;
done:
    free(sample);
    free(ctx);
    free(out);
    sdunet_free(m);
    return rc;
}

/* ---- trace: shapes only, no weights ---- */

static const char trace_help[] =
    "usage: sdunet trace --config PRESET|FILE [--batch B] [--height H] [--width W]\n"
    "                    [--context-len L]\n"
    "\n"
    "Prints the seed's tables computed from the model graph, without weights: every\n"
    "top-level block with its input and output shapes, and the skip stack (index,\n"
    "producer, shape, consumer). Defaults: batch 1, 64x64 latent, 77 context tokens.\n";

static int cmd_trace(int argc, char **argv)
{
    opt o[] = {{.name = "--config"}, {.name = "--batch"}, {.name = "--height"}, {.name = "--width"}, {.name = "--context-len"}};
    const int no = sizeof o / sizeof o[0];
    int help;
    if (parse_opts(argc, argv, o, no, &help))
        return 1;
    if (help) {
        fputs(trace_help, stdout);
        return 0;
    }
    if (!get(o, no, "--config"))
        return die("trace needs --config PRESET|FILE (see --help)");
    int B = 1, H = 64, W = 64, L = 77;
    if ((get(o, no, "--batch") && parse_int(get(o, no, "--batch"), "--batch", 1, 1024, &B)) ||
        (get(o, no, "--height") && parse_int(get(o, no, "--height"), "--height", 1, 8192, &H)) ||
        (get(o, no, "--width") && parse_int(get(o, no, "--width"), "--width", 1, 8192, &W)) ||
        (get(o, no, "--context-len") &&
         parse_int(get(o, no, "--context-len"), "--context-len", 1, 65536, &L)))
        return 1;
    sd_unet_config cfg;
    sdunet_error err;
    if (sd_config_load(get(o, no, "--config"), &cfg, &err))
        return die("%s", err.message);
    sd_unet u;
    if (sd_unet_build(&u, &cfg, NULL, NULL, &err))
        return die("%s", err.message);
    printf("UNet: block_out_channels (");
    for (int i = 0; i < cfg.n_blocks; i++)
        printf("%s%d", i ? "," : "", cfg.block_out_channels[i]);
    printf("), layers_per_block %d, cross_attention_dim %d\n", cfg.layers_per_block,
           cfg.cross_attention_dim);
    printf("inputs: sample (%d,%d,%d,%d), timestep (%d,), context (%d,%d,%d)\n\n", B,
           cfg.in_channels, H, W, B, B, L, cfg.cross_attention_dim);
    both tr = {.tp = {.f = stdout}};
    sd_plan plan;
    sd_unet_plan(&u, B, H, W, L, &plan, both_event, &tr);
    print_skips(stdout, &tr.skips);
    printf("\nactivation memory: %.1f MiB (skips %.1f, hidden 2x%.1f, scratch %.1f)\n",
           (double)(plan.skip_floats + 2 * plan.hidden_floats + plan.scratch_floats) * 4 / 1048576,
           (double)plan.skip_floats * 4 / 1048576, (double)plan.hidden_floats * 4 / 1048576,
           (double)plan.scratch_floats * 4 / 1048576);
    sd_unet_release(&u);
    return 0;
}

/* ---- synth: write the synthetic weights to a file ---- */

static const char synth_help[] =
    "usage: sdunet synth --config PRESET|FILE --out FILE.safetensors [--dtype f32|f16|bf16]\n"
    "\n"
    "Writes the deterministic synthetic weights of spec/synthetic-weights.md for a model\n"
    "configuration as a safetensors file with diffusers names (keys sorted, header padded\n"
    "to 8 bytes). f16/bf16 round the float32 values to nearest even.\n";

typedef struct name_list {
    sd_tensor_info *t;
    size_t n, cap;
    int oom;
} name_list;

static void collect_name(void *user, const char *name, int ndim, const int64_t *shape)
{
    name_list *l = user;
    if (l->oom)
        return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        sd_tensor_info *t = realloc(l->t, cap * sizeof *t);
        if (!t) {
            l->oom = 1;
            return;
        }
        l->t = t;
        l->cap = cap;
    }
    sd_tensor_info *t = &l->t[l->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) {
        l->oom = 1;
        return;
    }
    l->n++;
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->numel *= (size_t)shape[i];
    }
}

static void free_names(name_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->t[i].name);
        free((void *)l->t[i].data);
    }
    free(l->t);
}

static int cmd_synth(int argc, char **argv)
{
    opt o[] = {{.name = "--config"}, {.name = "--out"}, {.name = "--dtype"}};
    const int no = sizeof o / sizeof o[0];
    int help;
    if (parse_opts(argc, argv, o, no, &help))
        return 1;
    if (help) {
        fputs(synth_help, stdout);
        return 0;
    }
    const char *cfgp = get(o, no, "--config"), *outp = get(o, no, "--out");
    const char *dts = get(o, no, "--dtype") ? get(o, no, "--dtype") : "f32";
    if (!cfgp || !outp)
        return die("synth needs --config and --out (see --help)");
    sd_dtype dt;
    if (strcmp(dts, "f32") == 0)
        dt = SD_DT_F32;
    else if (strcmp(dts, "f16") == 0)
        dt = SD_DT_F16;
    else if (strcmp(dts, "bf16") == 0)
        dt = SD_DT_BF16;
    else
        return die("--dtype must be f32, f16 or bf16 (got '%s')", dts);
    sd_unet_config cfg;
    sdunet_error err;
    if (sd_config_load(cfgp, &cfg, &err))
        return die("%s", err.message);
    name_list l = {0};
    sd_weight_source src = {.visit = collect_name, .visit_user = &l, .check_only = 1};
    sd_unet u;
    if (sd_unet_build(&u, &cfg, &src, NULL, &err)) {
        free_names(&l);
        return die("%s", err.message);
    }
    sd_unet_release(&u);
    if (l.oom) {
        free_names(&l);
        return die("out of memory");
    }
    progress("generating %zu tensors...\n", l.n);
    for (size_t i = 0; i < l.n; i++) {
        sd_tensor_info *t = &l.t[i];
        t->dtype = dt;
        t->nbytes = t->numel * sd_dtype_size(dt);
        float *v = malloc(t->numel * sizeof(float));
        if (!v) {
            free_names(&l);
            return die("out of memory");
        }
        sd_synth_weight(t->name, t->ndim, t->shape, v);
        if (dt != SD_DT_F32) {
            uint16_t *h = (uint16_t *)v; /* narrow in place: element i written after read */
            for (size_t k = 0; k < t->numel; k++)
                h[k] = dt == SD_DT_F16 ? sd_f32_to_f16(v[k]) : sd_f32_to_bf16(v[k]);
        }
        t->data = v;
    }
    sdunet_status st = sd_safetensors_write(outp, l.t, l.n, NULL, &err);
    size_t n = l.n;
    free_names(&l);
    if (st)
        return die("%s", err.message);
    printf("wrote %s: %zu tensors, %s\n", outp, n, dts);
    return 0;
}

/* ---- info ---- */

static const char info_help[] =
    "usage: sdunet info PATH [--config FILE|PRESET]\n"
    "\n"
    "Describes a weight file: format, key layout, dtypes, tensor and parameter counts,\n"
    "the configuration it loads with, and the tensors the model does not use.\n";

typedef struct used_set {
    const sd_tensorfile *tf;
    unsigned char *used;
} used_set;

static void mark_used(void *user, const char *name, int ndim, const int64_t *shape)
{
    (void)ndim;
    (void)shape;
    used_set *u = user;
    const sd_tensor_info *t = sd_tensorfile_find(u->tf, name);
    if (t)
        u->used[t - u->tf->tensors] = 1;
}

static int cmd_info(int argc, char **argv)
{
    if (argc >= 1 && (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0)) {
        fputs(info_help, stdout);
        return 0;
    }
    if (argc < 1 || argv[0][0] == '-')
        return die("info needs a weight file path (see --help)");
    const char *path = argv[0];
    opt o[] = {{.name = "--config"}};
    int help;
    if (parse_opts(argc - 1, argv + 1, o, 1, &help))
        return 1;
    if (help) {
        fputs(info_help, stdout);
        return 0;
    }
    sdunet_error err;
    sd_tensorfile *tf;
    if (sd_tensorfile_open(path, &tf, &err))
        return die("%s", err.message);
    size_t per_dtype[SD_DT_COUNT] = {0};
    uint64_t params = 0;
    size_t n_ldm = 0, n_diff = 0;
    for (size_t i = 0; i < tf->count; i++) {
        per_dtype[tf->tensors[i].dtype]++;
        params += tf->tensors[i].numel;
        if (strncmp(tf->tensors[i].name, "model.diffusion_model.", 22) == 0)
            n_ldm++;
        if (strncmp(tf->tensors[i].name, "down_blocks.", 12) == 0 ||
            strncmp(tf->tensors[i].name, "conv_in.", 8) == 0)
            n_diff++;
    }
    printf("file: %s\nformat: %s\n", path, tf->format);
    printf("layout: %s\n", n_ldm ? "ldm (CompVis, model.diffusion_model.*)"
                           : n_diff ? "diffusers"
                                    : "unknown");
    printf("tensors: %zu\nparameters: %llu\ndtypes:", tf->count, (unsigned long long)params);
    for (int d = 0; d < SD_DT_COUNT; d++)
        if (per_dtype[d])
            printf(" %s=%zu", sd_dtype_name((sd_dtype)d), per_dtype[d]);
    printf("\n");
    if (tf->metadata)
        printf("metadata: %s\n", tf->metadata);
    /* config */
    const char *cfgp = get(o, 1, "--config");
    char sib[4096];
    if (!cfgp) {
        const char *slash = strrchr(path, '/');
        size_t dir = slash ? (size_t)(slash - path + 1) : 0;
        if (dir + 12 < sizeof sib) {
            memcpy(sib, path, dir);
            memcpy(sib + dir, "config.json", 12);
            FILE *f = fopen(sib, "rb");
            if (f) {
                fclose(f);
                cfgp = sib;
            }
        }
    }
    int rc = 0;
    if (!cfgp) {
        printf("config: none found (no config.json beside the file; pass --config)\n");
    } else {
        sd_unet_config cfg;
        if (sd_config_load(cfgp, &cfg, &err)) {
            printf("config: %s: %s\n", cfgp, err.message);
            rc = 1;
        } else {
            printf("config: %s: block_out_channels (", cfgp);
            for (int i = 0; i < cfg.n_blocks; i++)
                printf("%s%d", i ? "," : "", cfg.block_out_channels[i]);
            printf("), layers_per_block %d, heads (", cfg.layers_per_block);
            for (int i = 0; i < cfg.n_blocks; i++)
                printf("%s%d", i ? "," : "", cfg.heads[i]);
            printf("), cross_attention_dim %d, %s projection\n", cfg.cross_attention_dim,
                   cfg.use_linear_projection ? "linear" : "conv 1x1");
            used_set us = {.tf = tf, .used = calloc(tf->count ? tf->count : 1, 1)};
            sd_weight_source src = {.file = tf, .visit = mark_used, .visit_user = &us,
                                    .check_only = 1};
            sd_unet u;
            if (!us.used) {
                rc = die("out of memory");
            } else if (sd_unet_build(&u, &cfg, &src, NULL, &err)) {
                printf("loads: no: %s\n", err.message);
                rc = 1;
            } else {
                printf("loads: yes (%.1fM parameters used)\n", (double)u.n_params / 1e6);
                sd_unet_release(&u);
            }
            size_t unused = 0;
            for (size_t i = 0; i < tf->count && us.used; i++)
                if (!us.used[i])
                    unused++;
            printf("unused tensors: %zu\n", unused);
            for (size_t i = 0, shown = 0; i < tf->count && us.used; i++)
                if (!us.used[i] && shown++ < 20)
                    printf("  %s\n", tf->tensors[i].name);
            if (unused > 20)
                printf("  ... and %zu more\n", unused - 20);
            free(us.used);
        }
    }
    sd_tensorfile_close(tf);
    return rc;
}

static const char main_help[] =
    "usage: sdunet COMMAND [options]   (sdunet COMMAND --help for details)\n"
    "\n"
    "The Stable Diffusion UNet (SD1.x / SD2.x) in C.\n"
    "\n"
    "commands:\n"
    "  demo    run the full-size SD1.5 UNet on synthetic weights (shapes, time, checksum)\n"
    "  run     one forward pass on .npy inputs\n"
    "  trace   block and skip-stack shapes for a configuration, without weights\n"
    "  synth   write deterministic synthetic weights to a safetensors file\n"
    "  info    describe a weight file\n"
    "  sample  the denoising loop: a latent from noise with a scheduler and guidance\n"
    "\n"
    "environment: SDUNET_THREADS (default thread count), SDUNET_ISA (force a kernel set:\n"
    "portable, avx2)\n";

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(main_help, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("sdunet %d.%d.%d\n", SDUNET_VERSION_MAJOR, SDUNET_VERSION_MINOR,
               SDUNET_VERSION_PATCH);
        return 0;
    }
    const char *cmd = argv[1];
    int n = argc - 2;
    char **a = argv + 2;
    if (strcmp(cmd, "run") == 0)
        return cmd_run(n, a);
    if (strcmp(cmd, "demo") == 0)
        return cmd_demo(n, a);
    if (strcmp(cmd, "trace") == 0)
        return cmd_trace(n, a);
    if (strcmp(cmd, "synth") == 0)
        return cmd_synth(n, a);
    if (strcmp(cmd, "info") == 0)
        return cmd_info(n, a);
    if (strcmp(cmd, "sample") == 0)
        return cmd_sample(n, a);
    return die("unknown command '%s' (see sdunet --help)", cmd);
}
