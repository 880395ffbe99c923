/* sdunet: command-line front end.
 *   sdunet run | demo | synth | info | convert | trace | sample | decode | encode-image
 *   (sdunet --help) */
#include "sdunet.h"

#include "cli.h"

#include "clip/encoder.h"
#include "io/keymap.h"
#include "io/npy.h"
#include "io/png.h"
#include "io/tensorfile.h"
#include "unet/config.h"
#include "unet/infer.h"
#include "unet/model_internal.h"
#include "vae/vae.h"
#include "engine/synth.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
    "usage: sdunet run (--model PATH [--config FILE|PRESET] [--variant NAME]\n"
    "                   | --synthetic PRESET)\n"
    "                  --sample S.npy --timestep T[,T...] --context C.npy --out OUT.npy\n"
    "                  [--threads N] [--weights f32|f16|bf16] [--allow-nonfinite] [--fast]\n"
    "\n"
    "One UNet forward: predicted noise for a noisy latent.\n"
    "  --model PATH        weights: a safetensors or .ckpt file (diffusers or original LDM\n"
    "                      names, F32/F16/BF16; a whole single-file checkpoint is fine, its\n"
    "                      VAE, text encoder and EMA tensors are ignored), or a diffusers\n"
    "                      folder (DIR/unet/ or the UNet's own folder)\n"
    "  --config FILE       diffusers config.json or a preset (default: config.json beside\n"
    "                      the weights, else inferred from the tensor shapes)\n"
    "  --variant NAME      diffusers folder: load diffusion_pytorch_model.NAME.safetensors\n"
    "                      (e.g. fp16)\n"
    "  --synthetic PRESET  deterministic synthetic weights (sd15, sd21, or a config.json)\n"
    "  --sample S.npy      noisy latent, (B, 4, H, W) float32/float16/float64\n"
    "  --timestep T        one timestep for every row, or one per row: 999,1\n"
    "  --context C.npy     text context, (B, L, D) (D = the model's cross-attention width)\n"
    "  --out OUT.npy       predicted noise, (B, 4, H, W) float32\n"
    "  --threads N         worker threads (default: $SDUNET_THREADS or all online CPUs)\n"
    "  --weights T         store the weight matrices as f32, f16 or bf16 (default:\n"
    "                      $SDUNET_WEIGHTS, else each tensor's precision in the file, f32\n"
    "                      for synthetic weights); computation is float32 either way\n"
    "  --allow-nonfinite   accept NaN/Inf inputs (default: rejected with an error)\n"
    "  --fast              fast mode: faster algorithms (3x3 convolutions by Winograd\n"
    "                      F(4x4, 3x3)), relative L2 <= 2e-5 against float64 (default:\n"
    "                      $SDUNET_FAST, else exact mode)\n";

static int cmd_run(int argc, char **argv)
{
    opt o[] = {{.name = "--model"},   {.name = "--config"},
               {.name = "--variant"}, {.name = "--synthetic"},
               {.name = "--sample"},  {.name = "--timestep"},
               {.name = "--context"}, {.name = "--out"},
               {.name = "--threads"}, {.name = "--allow-nonfinite", .is_flag = 1},
               {.name = "--weights"}, {.name = "--fast", .is_flag = 1}};
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
    if (synthetic && get(o, no, "--variant"))
        return die("--variant goes with --model DIR (a diffusers folder)");
    if (!sample_p || !ctx_p || !ts || !out_p)
        return die("run needs --sample, --timestep, --context and --out (see --help)");
    int threads = 0, weights, fast;
    if ((get(o, no, "--threads") &&
         parse_int(get(o, no, "--threads"), "--threads", 1, 1024, &threads)) ||
        parse_weights(get(o, no, "--weights"), &weights) ||
        parse_fast(get(o, no, "--fast") != NULL, &fast))
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
    if (load_model_w(model, config, get(o, no, "--variant"), synthetic, threads,
                     get(o, no, "--allow-nonfinite") != NULL, weights, fast, &m))
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
    "usage: sdunet demo --unet [--synthetic PRESET] [--batch B] [--height H] [--width W]\n"
    "                          [--timestep T] [--threads N]\n"
    "\n"
    "Runs the UNet (default: full-size SD1.5, 64x64 latent, batch 1, timestep 999) on the\n"
    "synthetic weights and inputs of spec/synthetic-weights.md and prints the block shapes,\n"
    "the skip stack, the time taken and a checksum of the output.\n";

static int cmd_demo(int argc, char **argv)
{
    int unet = 0;
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--unet") == 0) {
            memmove(argv + i, argv + i + 1, sizeof *argv * (size_t)(argc - i - 1));
            argc--, unet = 1;
            break;
        }
    if (!unet)
        return cmd_demo_pipeline(argc, argv);
    opt o[] = {{.name = "--synthetic"}, {.name = "--batch"},    {.name = "--height"},
               {.name = "--width"},     {.name = "--timestep"}, {.name = "--threads"}};
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
    if (load_model(NULL, NULL, NULL, preset, threads, 0, &m))
        return 1;
    sdunet_model_info info;
    sdunet_get_info(m, &info);
    const int L = 77, D = info.context_dim, C = info.in_channels;
    size_t ns = (size_t)B * C * H * W, nc = (size_t)B * L * D,
           no_ = (size_t)B * info.out_channels * H * W;
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
    opt o[] = {{.name = "--config"},
               {.name = "--batch"},
               {.name = "--height"},
               {.name = "--width"},
               {.name = "--context-len"}};
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
    "                    [--checkpoint]\n"
    "\n"
    "Writes the deterministic synthetic weights of spec/synthetic-weights.md for a model\n"
    "configuration as a safetensors file with diffusers names (keys sorted, header padded\n"
    "to 8 bytes). f16/bf16 round the float32 values to nearest even. --checkpoint writes\n"
    "an SD1.x single-file checkpoint instead: the UNet, the CLIP text encoder and the VAE\n"
    "of the sd15 preset under their original (LDM) names, as txt2img --model reads them.\n";

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

/* The file name of a synthetic tensor in an SD1 single-file checkpoint:
 * model 0 UNet (LDM names), 1 text encoder, 2 VAE (LDM names, attention as
 * 1x1 convolutions). 0 when it has none. */
static int checkpoint_name(int model, const sd_unet_config *cfg, int vae_levels, sd_tensor_info *t)
{
    char out[512], ldm[400];
    if (model == 0) {
        if (sd_diffusers_to_ldm(cfg, t->name, out, sizeof out) != 1)
            return 0;
    } else if (model == 1) {
        snprintf(out, sizeof out, "cond_stage_model.transformer.%s", t->name);
    } else {
        if (!sd_vae_diffusers_to_ldm(vae_levels, t->name, ldm, sizeof ldm))
            return 0;
        snprintf(out, sizeof out, "first_stage_model.%s", ldm);
        if (t->ndim == 2 && strstr(ldm, "attn_1.")) {
            t->ndim = 4;
            t->shape[2] = t->shape[3] = 1;
        }
    }
    char *n = strdup(out);
    if (!n)
        return 0;
    free(t->name);
    t->name = n;
    return 1;
}

static int cmd_synth(int argc, char **argv)
{
    opt o[] = {{.name = "--config"},
               {.name = "--out"},
               {.name = "--dtype"},
               {.name = "--checkpoint", .is_flag = 1}};
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
    /* --checkpoint: the text encoder and the VAE too, as an SD1 single file */
    const int ckpt = get(o, no, "--checkpoint") != NULL;
    size_t model_end[3] = {l.n, l.n, l.n};
    int vae_levels = 0;
    if (ckpt) {
        if (cfg.cross_attention_dim != 768) {
            free_names(&l);
            return die("--checkpoint writes SD1.x single files (cross-attention 768), not %d",
                       cfg.cross_attention_dim);
        }
        const sd_kernels *kern = sd_kernels_select(NULL);
        sd_clip_config cc;
        sd_clip m;
        sd_vae_config vc;
        sd_vae v;
        sd_clip_preset("sd15", &cc, &err);
        if (sd_clip_build(&m, &cc, &src, NULL, kern, &err)) {
            free_names(&l);
            return die("%s", err.message);
        }
        sd_clip_release(&m);
        model_end[1] = model_end[2] = l.n;
        sd_vae_config_sd(&vc);
        vae_levels = vc.n_levels;
        if (sd_vae_build(&v, &vc, &src, NULL, kern, &err)) {
            free_names(&l);
            return die("%s", err.message);
        }
        sd_vae_release(&v);
        model_end[2] = l.n;
    }
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
        int model = i < model_end[0] ? 0 : i < model_end[1] ? 1 : 2;
        if (ckpt && !checkpoint_name(model, &cfg, vae_levels, t)) {
            free_names(&l);
            return die("no single-file name for a tensor (or out of memory)");
        }
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
    "usage: sdunet info PATH [--config FILE|PRESET] [--variant NAME]\n"
    "\n"
    "Describes a weight file or diffusers folder: format, key layout (diffusers or\n"
    "original LDM), dtypes, what else a single-file checkpoint holds (VAE, text encoder,\n"
    "EMA copies, ...), the configuration inferred from the tensor shapes and the tensors\n"
    "it came from, the configuration the model loads with (--config, else config.json\n"
    "beside the weights, else the inferred one), the storage of the weight matrices\n"
    "(each keeps its file precision: F16 and BF16 as they are, others as f32) and their\n"
    "packed size, and the tensors the model does not use.\n";

typedef struct used_set {
    const sd_tensorfile *tf;
    const sd_unet_config *cfg;
    sd_layout layout;
    unsigned char *used;
} used_set;

static void mark_used(void *user, const char *name, int ndim, const int64_t *shape)
{
    (void)ndim;
    (void)shape;
    used_set *u = user;
    const sd_tensor_info *t = sd_find_unet_tensor(u->tf, u->cfg, u->layout, name);
    if (t)
        u->used[t - u->tf->tensors] = 1;
}

/* Whether a file name is a UNet name of the file's layout. */
static int is_unet_name(const char *name, sd_layout layout)
{
    char buf[8];
    if (layout == SD_LAYOUT_LDM)
        return strncmp(name, SD_LDM_UNET_PREFIX, strlen(SD_LDM_UNET_PREFIX)) == 0;
    /* With no config the map answers 0 for non-UNet names, -1 for UNet ones. */
    return sd_diffusers_to_ldm(NULL, name, buf, sizeof buf) != 0;
}

/* What else a single-file checkpoint holds, by first name component. */
static void print_contents(const sd_tensorfile *tf, sd_layout layout)
{
    enum { MAX_GROUPS = 16 };
    char group[MAX_GROUPS][48];
    size_t count[MAX_GROUPS] = {0}, n_groups = 0, unet = 0, other = 0;
    for (size_t i = 0; i < tf->count; i++) {
        const char *name = tf->tensors[i].name;
        if (is_unet_name(name, layout)) {
            unet++;
            continue;
        }
        const char *dot = strchr(name, '.');
        size_t len = dot ? (size_t)(dot - name) : strlen(name);
        if (!dot || len >= sizeof group[0]) {
            other++;
            continue;
        }
        size_t g;
        for (g = 0; g < n_groups; g++)
            if (strlen(group[g]) == len && strncmp(group[g], name, len) == 0)
                break;
        if (g == n_groups) {
            if (n_groups == MAX_GROUPS) {
                other++;
                continue;
            }
            memcpy(group[g], name, len);
            group[g][len] = 0;
            n_groups++;
        }
        count[g]++;
    }
    if (!n_groups && !other)
        return;
    printf("contents: UNet %zu", unet);
    for (size_t g = 0; g < n_groups; g++)
        printf(", %s.* %zu", group[g], count[g]);
    if (other)
        printf(", other %zu", other);
    printf(" (run and sample load the UNet; txt2img also the text encoder and the VAE)\n");
}

static void print_config(const char *label, const sd_unet_config *cfg)
{
    printf("%s block_out_channels (", label);
    for (int i = 0; i < cfg->n_blocks; i++)
        printf("%s%d", i ? "," : "", cfg->block_out_channels[i]);
    printf("), layers_per_block %d, heads (", cfg->layers_per_block);
    for (int i = 0; i < cfg->n_blocks; i++)
        printf("%s%d", i ? "," : "", cfg->heads[i]);
    printf("), cross_attention_dim %d, %s projection, in/out channels %d/%d\n",
           cfg->cross_attention_dim, cfg->use_linear_projection ? "linear" : "conv 1x1",
           cfg->in_channels, cfg->out_channels);
}

/* Positional PATH (and OUT for convert) before the options. */
static int positional(int argc, char **argv, int n, const char *cmd, const char *what)
{
    for (int i = 0; i < n; i++)
        if (i >= argc || argv[i][0] == '-')
            return die("%s needs %s (see --help)", cmd, what);
    return 0;
}

static int wants_help(int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return 1;
    return 0;
}

/* A file that starts with the PNG signature. */
static int is_png(const char *path)
{
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    unsigned char head[8];
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(head, 1, 8, f) : 0;
    if (f)
        fclose(f);
    return n == 8 && memcmp(head, sig, 8) == 0;
}

/* sdunet info IMAGE.png: size and the text chunks (the generation
 * parameters sdunet writes under "parameters"). */
static int info_png(const char *path)
{
    sd_image img;
    sdunet_error err;
    if (sd_png_read(path, &img, &err))
        return die("%s", err.message);
    printf("image: %s\nsize: %dx%d%s\n", path, img.width, img.height,
           img.has_alpha ? " (alpha dropped)" : "");
    int found = 0;
    for (int i = 0; i < img.n_texts; i++) {
        if (strcmp(img.texts[i].key, "parameters") == 0) {
            printf("parameters:\n%s\n", img.texts[i].value);
            found = 1;
        } else {
            printf("%s: %s\n", img.texts[i].key, img.texts[i].value);
        }
    }
    if (!found)
        printf("parameters: none (not written by sdunet or AUTOMATIC1111)\n");
    sd_image_free(&img);
    return 0;
}

/* What a checkpoint holds besides the UNet, for a pipeline. */
static void print_pipeline_parts(const sd_tensorfile *tf)
{
    sd_clip_names names;
    sd_clip_config c;
    sdunet_error err;
    if (sd_clip_find(tf, &names, &c, &err) == SDUNET_OK) {
        int sd2 = names.layout == SD_CLIP_OPENCLIP || c.hidden == 1024;
        printf("text encoder: %s names under '%s', %d layers of %d (%s)\n",
               names.layout == SD_CLIP_OPENCLIP ? "OpenCLIP" : "transformers", names.prefix,
               c.layers, c.hidden, sd2 ? "SD2.x" : "SD1.x");
        printf("prediction type (as txt2img loads it): %s\n",
               sd2 ? "v_prediction (SD2.x single files, as diffusers assumes; "
                     "--prediction-type epsilon for 512-pixel base models)"
                   : "epsilon");
    } else {
        printf("text encoder: none (%s)\n", err.message);
    }
}

static int cmd_info(int argc, char **argv)
{
    if (wants_help(argc, argv)) {
        fputs(info_help, stdout);
        return 0;
    }
    if (positional(argc, argv, 1, "info", "a weight file or folder path"))
        return 1;
    const char *path = argv[0];
    if (is_png(path))
        return info_png(path);
    opt o[] = {{.name = "--config"}, {.name = "--variant"}};
    const int no = sizeof o / sizeof o[0];
    int help;
    if (parse_opts(argc - 1, argv + 1, o, no, &help))
        return 1;
    sdunet_error err;
    sd_model_files *mf = calloc(1, sizeof *mf);
    if (!mf)
        return die("out of memory");
    if (sd_model_files_open(path, get(o, no, "--variant"), mf, &err)) {
        free(mf);
        return die("%s", err.message);
    }
    const sd_tensorfile *tf = mf->tf;
    size_t per_dtype[SD_DT_COUNT] = {0};
    uint64_t params = 0;
    for (size_t i = 0; i < tf->count; i++) {
        per_dtype[tf->tensors[i].dtype]++;
        params += tf->tensors[i].numel;
    }
    if (mf->is_folder)
        printf("folder: %s\n", path);
    printf("file: %s\nformat: %s\n", mf->weights, tf->format);
    printf("layout: %s\n", sd_layout_name(mf->layout));
    printf("tensors: %zu\nparameters: %llu\ndtypes:", tf->count, (unsigned long long)params);
    for (int d = 0; d < SD_DT_COUNT; d++)
        if (per_dtype[d])
            printf(" %s=%zu", sd_dtype_name((sd_dtype)d), per_dtype[d]);
    printf("\n");
    if (tf->metadata)
        printf("metadata: %.300s%s\n", tf->metadata, strlen(tf->metadata) > 300 ? "..." : "");
    print_contents(tf, mf->layout);
    if (!mf->is_folder)
        print_pipeline_parts(tf);

    /* What the shapes say, whether or not a config file overrides it. */
    sd_unet_config inferred;
    char report[SD_INFER_REPORT];
    int have_inferred = 0;
    if (mf->layout == SD_LAYOUT_LDM || mf->layout == SD_LAYOUT_DIFFUSERS) {
        sdunet_status st = sd_config_infer(tf, mf->layout, &inferred, report, sizeof report, &err);
        have_inferred = st == SDUNET_OK;
        if (have_inferred)
            print_config("inferred:", &inferred);
        else
            printf("inferred: not possible: %s\n", err.message);
        fputs(report, stdout);
    }

    int rc = 0;
    if (sd_model_files_config(mf, get(o, no, "--config"), &err)) {
        printf("config: none: %s\n", err.message);
        rc = die("%s", err.message);
    } else {
        char label[4200];
        snprintf(label, sizeof label, "config: %s%s:",
                 mf->origin == SD_CONFIG_INFERRED ? "inferred from the tensor shapes" : mf->config,
                 mf->origin == SD_CONFIG_EXPLICIT ? " (given)"
                 : mf->origin == SD_CONFIG_BESIDE ? " (beside the weights)"
                                                  : "");
        print_config(label, &mf->cfg);
        if (have_inferred && mf->origin != SD_CONFIG_INFERRED)
            printf("inferred config %s\n", memcmp(&inferred, &mf->cfg, sizeof inferred) == 0
                                               ? "agrees with it"
                                               : "differs from it (the config file wins)");
        used_set us = {.tf = tf,
                       .cfg = &mf->cfg,
                       .layout = mf->layout,
                       .used = calloc(tf->count ? tf->count : 1, 1)};
        sd_weight_source src = {.file = tf, .visit = mark_used, .visit_user = &us, .check_only = 1};
        sd_unet u;
        if (!us.used) {
            rc = die("out of memory");
        } else if (sd_unet_build(&u, &mf->cfg, &src, NULL, &err)) {
            printf("loads: no: %s\n", err.message);
            rc = die("%s", err.message);
        } else {
            printf("loads: yes (%.1fM parameters used)\n", (double)u.n_params / 1e6);
            double f32 = 0;
            for (int t = 0; t < SD_WT_COUNT; t++)
                f32 += (double)u.packed_bytes[t] / (double)sd_wtype_size(t) * 4.0;
            printf("weights: %s, %.1f MB packed (as f32: %.1f MB)\n",
                   sd_weights_label(u.packed_bytes),
                   (double)(u.packed_bytes[0] + u.packed_bytes[1] + u.packed_bytes[2]) / 1e6,
                   f32 / 1e6);
            sd_unet_release(&u);
        }
        /* Unused UNet-named tensors matter (a config that does not fit);
         * the rest of a full checkpoint is expected to be unused. */
        size_t unused = 0, unused_unet = 0;
        for (size_t i = 0; i < tf->count && us.used; i++)
            if (!us.used[i]) {
                unused++;
                unused_unet += is_unet_name(tf->tensors[i].name, mf->layout);
            }
        printf("unused tensors: %zu", unused);
        if (unused)
            printf(" (%zu with UNet names, %zu others)", unused_unet, unused - unused_unet);
        printf("\n");
        for (int pass = 0, shown = 0; pass < 2 && us.used; pass++)
            for (size_t i = 0; i < tf->count && shown < 20; i++)
                if (!us.used[i] && is_unet_name(tf->tensors[i].name, mf->layout) == !pass) {
                    printf("  %s\n", tf->tensors[i].name);
                    shown++;
                }
        if (unused > 20)
            printf("  ... and %zu more\n", unused - 20);
        free(us.used);
    }
    sd_model_files_close(mf);
    free(mf);
    return rc;
}

/* ---- convert ---- */

static const char convert_help[] =
    "usage: sdunet convert IN OUT.safetensors [--layout diffusers|ldm] [--dtype f32|f16|bf16]\n"
    "                      [--config FILE|PRESET] [--variant NAME]\n"
    "\n"
    "Writes the UNet of a checkpoint as a safetensors file that diffusers and the\n"
    "safetensors library read (__metadata__ first, keys sorted, header padded to 8 bytes).\n"
    "UNet tensors only: the VAE, text encoder, EMA copies and scheduler buffers of a\n"
    "single-file checkpoint are not written.\n"
    "  IN                  a safetensors or .ckpt file (diffusers or LDM names) or a\n"
    "                      diffusers folder\n"
    "  --layout diffusers  diffusers UNet2DConditionModel names (default); put the file in a\n"
    "                      folder as unet/diffusion_pytorch_model.safetensors with a config.json\n"
    "  --layout ldm        original CompVis names under model.diffusion_model.\n"
    "  --dtype T           f32, f16 or bf16 (rounded to nearest even); default: every tensor\n"
    "                      keeps its dtype and its bytes\n"
    "  --config FILE       config.json or preset (default: beside IN, else inferred)\n"
    "  --variant NAME      IN is a diffusers folder: read diffusion_pytorch_model.NAME.*\n";

typedef struct convert_list {
    sd_tensor_info *t; /* output tensors */
    char **from;       /* the diffusers name each was asked for */
    void **owned;      /* converted data we allocated (NULL: t's data is the file's) */
    size_t n, cap;
    int oom;
} convert_list;

static void collect_convert(void *user, const char *name, int ndim, const int64_t *shape)
{
    (void)ndim;
    (void)shape;
    convert_list *l = user;
    if (l->oom)
        return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 512;
        sd_tensor_info *t = realloc(l->t, cap * sizeof *t);
        if (t)
            l->t = t;
        char **f = realloc(l->from, cap * sizeof *f);
        if (f)
            l->from = f;
        void **w = realloc(l->owned, cap * sizeof *w);
        if (w)
            l->owned = w;
        if (!t || !f || !w) {
            l->oom = 1;
            return;
        }
        l->cap = cap;
    }
    memset(&l->t[l->n], 0, sizeof l->t[l->n]);
    l->owned[l->n] = NULL;
    if (!(l->from[l->n] = strdup(name))) {
        l->oom = 1;
        return;
    }
    l->n++;
}

static void free_convert(convert_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->owned[i]);
        free(l->t[i].name);
        free(l->from[i]);
    }
    free(l->t);
    free(l->from);
    free(l->owned);
}

static int parse_dtype(const char *s, sd_dtype *dt)
{
    if (strcmp(s, "f32") == 0)
        *dt = SD_DT_F32;
    else if (strcmp(s, "f16") == 0)
        *dt = SD_DT_F16;
    else if (strcmp(s, "bf16") == 0)
        *dt = SD_DT_BF16;
    else
        return die("--dtype must be f32, f16 or bf16 (got '%s')", s);
    return 0;
}

/* Fills out (name already set) from the file tensor src in dtype dt: the
 * same bytes when the dtype is kept, else converted through float32 into a
 * buffer returned in *owned. */
static int convert_tensor(const sd_tensor_info *src, sd_dtype dt, sd_tensor_info *out, void **owned)
{
    out->dtype = dt;
    out->ndim = src->ndim;
    memcpy(out->shape, src->shape, sizeof out->shape);
    out->numel = src->numel;
    out->nbytes = src->numel * sd_dtype_size(dt);
    if (dt == src->dtype) {
        out->data = src->data;
        return 0;
    }
    float *f = malloc(src->numel ? src->numel * sizeof(float) : 1);
    if (!f)
        return die("out of memory");
    sdunet_error err;
    if (sd_tensor_to_f32(src, f, &err)) {
        free(f);
        return die("%s", err.message);
    }
    if (dt != SD_DT_F32) {
        uint16_t *h = (uint16_t *)f; /* narrow in place: element i written after read */
        for (size_t k = 0; k < src->numel; k++)
            h[k] = dt == SD_DT_F16 ? sd_f32_to_f16(f[k]) : sd_f32_to_bf16(f[k]);
    }
    out->data = f;
    *owned = f;
    return 0;
}

static int cmd_convert(int argc, char **argv)
{
    if (wants_help(argc, argv)) {
        fputs(convert_help, stdout);
        return 0;
    }
    if (positional(argc, argv, 2, "convert", "IN and OUT paths"))
        return 1;
    const char *in = argv[0], *outp = argv[1];
    opt o[] = {
        {.name = "--layout"}, {.name = "--dtype"}, {.name = "--config"}, {.name = "--variant"}};
    const int no = sizeof o / sizeof o[0];
    int help;
    if (parse_opts(argc - 2, argv + 2, o, no, &help))
        return 1;
    const char *lays = get(o, no, "--layout") ? get(o, no, "--layout") : "diffusers";
    int to_ldm;
    if (strcmp(lays, "diffusers") == 0)
        to_ldm = 0;
    else if (strcmp(lays, "ldm") == 0)
        to_ldm = 1;
    else
        return die("--layout must be diffusers or ldm (got '%s')", lays);
    sd_dtype want = SD_DT_F32;
    int keep_dtype = !get(o, no, "--dtype");
    if (!keep_dtype && parse_dtype(get(o, no, "--dtype"), &want))
        return 1;

    sdunet_error err;
    sd_model_files *mf = calloc(1, sizeof *mf);
    if (!mf)
        return die("out of memory");
    convert_list l = {0};
    int rc = 1;
    if (sd_model_files_open(in, get(o, no, "--variant"), mf, &err) ||
        sd_model_files_config(mf, get(o, no, "--config"), &err)) {
        die("%s", err.message);
        goto done;
    }
    /* The model's own walk lists every tensor it needs and checks that the
     * file has each with the right shape. */
    sd_weight_source src = {
        .file = mf->tf, .visit = collect_convert, .visit_user = &l, .check_only = 1};
    sd_unet u;
    if (sd_unet_build(&u, &mf->cfg, &src, NULL, &err)) {
        die("%s: %s", mf->weights, err.message);
        goto done;
    }
    sd_unet_release(&u);
    if (l.oom) {
        die("out of memory");
        goto done;
    }
    for (size_t i = 0; i < l.n; i++) {
        const sd_tensor_info *t = sd_find_unet_tensor(mf->tf, &mf->cfg, mf->layout, l.from[i]);
        char ldm[512];
        if (!t) {
            die("%s: no tensor for %s", mf->weights, l.from[i]);
            goto done;
        }
        if (to_ldm && sd_diffusers_to_ldm(&mf->cfg, l.from[i], ldm, sizeof ldm) != 1) {
            die("%s has no LDM name", l.from[i]);
            goto done;
        }
        if (!(l.t[i].name = strdup(to_ldm ? ldm : l.from[i]))) {
            die("out of memory");
            goto done;
        }
        if (convert_tensor(t, keep_dtype ? t->dtype : want, &l.t[i], &l.owned[i]))
            goto done;
    }
    if (sd_safetensors_write(outp, l.t, l.n, NULL, &err)) {
        die("%s", err.message);
        goto done;
    }
    printf("wrote %s: %zu UNet tensors, %s names, %s (from %s, config %s)\n", outp, l.n,
           to_ldm ? "ldm" : "diffusers", keep_dtype ? "dtypes kept" : get(o, no, "--dtype"),
           mf->weights, mf->origin == SD_CONFIG_INFERRED ? "inferred" : mf->config);
    rc = 0;
done:
    free_convert(&l);
    sd_model_files_close(mf);
    free(mf);
    return rc;
}

static const char main_help[] =
    "usage: sdunet COMMAND [options]   (sdunet COMMAND --help for details)\n"
    "\n"
    "Stable Diffusion (SD1.x / SD2.x) in C: the UNet, its schedulers and the text encoders.\n"
    "\n"
    "commands:\n"
    "  demo    a picture end to end on full-size synthetic weights, timed by phase\n"
    "          (--unet: the UNet alone, with its shapes and checksum)\n"
    "  run     one forward pass on .npy inputs\n"
    "  trace   block and skip-stack shapes for a configuration, without weights\n"
    "  synth   write deterministic synthetic weights to a safetensors file\n"
    "  info    describe a weight file or diffusers folder, and the config it loads with\n"
    "  convert rewrite a checkpoint's UNet as safetensors (diffusers or LDM names, f32/f16/bf16)\n"
    "  bench   time the forward, with a breakdown by op kind\n"
    "  sample  the denoising loop: a latent from noise with a scheduler and guidance\n"
    "  encode-text  prompts to the text encoder's context (.npy), CLIP tokenizer included\n"
    "  decode  the VAE's decoder: latents to an image (.npy)\n"
    "  encode-image  the VAE's encoder: an image (.npy) to latents\n"
    "  txt2img a picture from a prompt (PNG), as diffusers' StableDiffusionPipeline\n"
    "  img2img a picture from a prompt and an init image\n"
    "\n"
    "environment: SDUNET_THREADS (default thread count), SDUNET_ISA (force a kernel set:\n"
    "portable, avx2, avx512, amx), SDUNET_CONV (3x3 convolution method: auto, direct,\n"
    "winograd), SDUNET_GEGLU (unfused: feed-forward projection and gating as two passes)\n";

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
    if (strcmp(cmd, "convert") == 0)
        return cmd_convert(n, a);
    if (strcmp(cmd, "sample") == 0)
        return cmd_sample(n, a);
    if (strcmp(cmd, "bench") == 0)
        return cmd_bench(n, a);
    if (strcmp(cmd, "encode-text") == 0)
        return cmd_encode_text(n, a);
    if (strcmp(cmd, "decode") == 0)
        return cmd_decode(n, a);
    if (strcmp(cmd, "encode-image") == 0)
        return cmd_encode_image(n, a);
    if (strcmp(cmd, "txt2img") == 0)
        return cmd_txt2img(n, a);
    if (strcmp(cmd, "img2img") == 0)
        return cmd_img2img(n, a);
    return die("unknown command '%s' (see sdunet --help)", cmd);
}
