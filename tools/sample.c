/* sdunet sample: the denoising loop from the command line. Everything that
 * can be checked without the model (options, files, shapes, the scheduler
 * name) is checked before the model is loaded, because loading full-size
 * weights takes a while and a typo should fail at once. */
#include "sdunet.h"
#include "sdunet_sample.h"
#include "sdunet_sched.h"

#include "cli.h"

#include "io/npy.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char sample_help[] =
    "usage: sdunet sample (--model PATH [--config FILE|PRESET] | --synthetic PRESET)\n"
    "                     --context C.npy [--uncond U.npy --guidance G]\n"
    "                     [--scheduler NAME] [--steps N] [--seed S | --noise N.npy]\n"
    "                     [--batch B] [--height H] [--width W] --out LATENT.npy\n"
    "                     [--threads N] [--prediction epsilon|v_prediction] [--fast]\n"
    "\n"
    "Text-to-image sampling in latent space: starts from Gaussian noise and runs the\n"
    "UNet and a scheduler for N steps; writes the final latent (decode it with a VAE).\n"
    "  --model PATH        safetensors weights (diffusers names; F32, F16 or BF16)\n"
    "  --config FILE       diffusers config.json or a preset (default: config.json beside\n"
    "                      the weights)\n"
    "  --synthetic PRESET  deterministic synthetic weights (sd15, sd21, or a config.json)\n"
    "  --context C.npy     text context, (B, L, D) or (1, L, D) for every latent\n"
    "  --uncond U.npy      unconditional (empty prompt) context, same rules and same L, D\n"
    "  --guidance G        classifier-free guidance scale (default 1 = no guidance).\n"
    "                      G != 1 needs --uncond: each model call is one forward of 2B\n"
    "                      rows (cond, uncond) and eps = uncond + G (cond - uncond).\n"
    "                      At G = 1 a given --uncond is not used (a note says so).\n"
    "  --scheduler NAME    ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, pndm, lms,\n"
    "                      unipc (default pndm, SD1.5's scheduler); diffusers v0.25.1\n"
    "                      with the SD1.5 scheduler configuration\n"
    "  --steps N           inference steps, 1..1000 (default 20; pndm makes N + 1 calls)\n"
    "  --seed S            seed of the noise generator, 0..2^64-1 (default 0)\n"
    "  --noise N.npy       the initial noise x_T, unit variance, (B, 4, H, W); it fixes\n"
    "                      B, H and W. It is multiplied by the scheduler's\n"
    "                      init_noise_sigma. --seed then only seeds euler_a's step noise.\n"
    "  --batch B           latents to make (default: --noise's, else the context's rows)\n"
    "  --height H          latent height (image height / 8; default 64)\n"
    "  --width W           latent width (image width / 8; default 64)\n"
    "  --out LATENT.npy    the final latent, (B, 4, H, W) float32\n"
    "  --threads N         worker threads (default: $SDUNET_THREADS or all online CPUs)\n"
    "  --prediction TYPE   what the model predicts: epsilon (SD1.x, default) or\n"
    "                      v_prediction (SD2.x 768)\n"
    "  --fast              fast mode: faster algorithms (3x3 convolutions by Winograd\n"
    "                      F(4x4, 3x3)), relative L2 <= 2e-5 against float64 per UNet call\n"
    "                      (default: $SDUNET_FAST, else exact mode)\n"
    "\n"
    "noise generator (sdunet_rng in sdunet_sample.h): xoshiro256** seeded with four\n"
    "SplitMix64 outputs from S; uniforms u = ((x >> 11) + 0.5) / 2^53; Box-Muller in\n"
    "double, cos value first, then sin; each rounded to float32; filled in row-major\n"
    "(B, C, H, W) order. euler_a's fresh noise at each step continues the same stream\n"
    "after the initial noise (n values per step, the last step included).\n"
    "\n"
    "Progress goes to stderr (one line updated in place on a terminal, else a summary\n"
    "at the end); a summary and checksum go to stdout. Ctrl-C stops after the current\n"
    "model call, writes nothing and exits with status 130; a second Ctrl-C kills at once.\n";

static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    g_interrupted = 1;
}

typedef struct sample_progress {
    double t0;
    int tty;
} sample_progress;

static void fmt_duration(char *buf, size_t cap, double s)
{
    if (!isfinite(s) || s < 0)
        snprintf(buf, cap, "--:--");
    else if (s < 3600)
        snprintf(buf, cap, "%d:%02d", (int)s / 60, (int)s % 60);
    else
        snprintf(buf, cap, "%d:%02d:%02d", (int)(s / 3600), ((int)s / 60) % 60, (int)s % 60);
}

/* Redraws the progress line on a terminal; also the cancellation point. */
static int on_progress(void *user, int done, int total, double t)
{
    sample_progress *p = user;
    if (p->tty) {
        double el = now_s() - p->t0;
        char eta[32];
        fmt_duration(eta, sizeof eta, done ? el / done * (total - done) : NAN);
        if (done)
            fprintf(stderr, "\rstep %d/%d  t=%-4g  %.2f it/s  ETA %s    ", done, total, t,
                    done / el, eta);
        else
            fprintf(stderr, "\rstep 0/%d  t=%-4g  -- it/s  ETA %s    ", total, t, eta);
        fflush(stderr);
    }
    return g_interrupted != 0;
}

static int parse_u64(const char *s, const char *what, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (s[0] < '0' || s[0] > '9' || errno || *end)
        return die("%s must be an integer in 0..18446744073709551615 (got '%s')", what, s);
    *out = (uint64_t)v;
    return 0;
}

static int parse_double(const char *s, const char *what, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v))
        return die("%s must be a finite number (got '%s')", what, s);
    *out = v;
    return 0;
}

/* Reads a (rows, L, D) context. */
static int read_context(const char *path, const char *what, float **data, int64_t shape[3])
{
    sdunet_error err = {0};
    int nd;
    int64_t s[SD_MAX_DIMS];
    if (sd_npy_read_f32(path, data, &nd, s, &err))
        return die("%s", err.message);
    if (nd != 3)
        return die("%s %s: must be 3-d (B, L, D), got %d dims", what, path, nd);
    for (int i = 0; i < 3; i++) {
        if (s[i] < 1 || s[i] > INT_MAX)
            return die("%s %s: dimension %d is %lld", what, path, i, (long long)s[i]);
        shape[i] = s[i];
    }
    return 0;
}

int cmd_sample(int argc, char **argv)
{
    opt o[] = {{.name = "--model"},
               {.name = "--config"},
               {.name = "--synthetic"},
               {.name = "--context"},
               {.name = "--uncond"},
               {.name = "--guidance"},
               {.name = "--scheduler"},
               {.name = "--steps"},
               {.name = "--seed"},
               {.name = "--noise"},
               {.name = "--batch"},
               {.name = "--height"},
               {.name = "--width"},
               {.name = "--out"},
               {.name = "--threads"},
               {.name = "--prediction"},
               {.name = "--fast", .is_flag = 1}};
    const int no = sizeof o / sizeof o[0];
    int help;
    if (parse_opts(argc, argv, o, no, &help))
        return 1;
    if (help) {
        fputs(sample_help, stdout);
        return 0;
    }
    const char *model_p = get(o, no, "--model"), *synthetic = get(o, no, "--synthetic");
    const char *config = get(o, no, "--config"), *ctx_p = get(o, no, "--context");
    const char *unc_p = get(o, no, "--uncond"), *noise_p = get(o, no, "--noise");
    const char *out_p = get(o, no, "--out"), *pred = get(o, no, "--prediction");
    const char *sched_name = get(o, no, "--scheduler") ? get(o, no, "--scheduler") : "pndm";
    if (!!model_p == !!synthetic)
        return die("give exactly one of --model PATH or --synthetic PRESET (see --help)");
    if (synthetic && config)
        return die("--config goes with --model; --synthetic takes the preset or config itself");
    if (!ctx_p || !out_p)
        return die("sample needs --context and --out (see --help)");

    int steps = 20, threads = 0, B = 0, H = 64, W = 64;
    uint64_t seed = 0;
    double guidance = 1.0;
    const char *v;
    if (((v = get(o, no, "--steps")) && parse_int(v, "--steps", 1, 1000, &steps)) ||
        ((v = get(o, no, "--threads")) && parse_int(v, "--threads", 1, 1024, &threads)) ||
        ((v = get(o, no, "--batch")) && parse_int(v, "--batch", 1, 4096, &B)) ||
        ((v = get(o, no, "--height")) && parse_int(v, "--height", 1, 8192, &H)) ||
        ((v = get(o, no, "--width")) && parse_int(v, "--width", 1, 8192, &W)) ||
        ((v = get(o, no, "--seed")) && parse_u64(v, "--seed", &seed)) ||
        ((v = get(o, no, "--guidance")) && parse_double(v, "--guidance", &guidance)))
        return 1;
    sdunet_sched_config scfg;
    sdunet_sched_config_default(&scfg);
    if (pred && strcmp(pred, "epsilon") == 0)
        scfg.prediction_type = SDUNET_PRED_EPSILON;
    else if (pred && strcmp(pred, "v_prediction") == 0)
        scfg.prediction_type = SDUNET_PRED_V;
    else if (pred)
        return die("--prediction must be epsilon or v_prediction (got '%s')", pred);
    if (guidance != 1.0 && !unc_p)
        return die("--guidance %g needs --uncond U.npy (the unconditional context)", guidance);
    const int use_cfg = unc_p && guidance != 1.0;
    if (unc_p && !use_cfg)
        progress("note: --uncond is not used at guidance 1 (the default); "
                 "pass --guidance G (SD's usual is 7.5) for guidance\n");

    int rc = 1;
    sdunet_error err = {0};
    sdunet_scheduler *sched = NULL;
    sdunet_model *m = NULL;
    float *ctx = NULL, *unc = NULL, *latent = NULL;
    int64_t cs[3], us[3] = {0, 0, 0};
    struct sigaction old_sa;
    int sa_installed = 0;

    if (sdunet_sched_create(sched_name, &scfg, &sched, &err)) {
        die("%s", err.message);
        goto done;
    }
    if (read_context(ctx_p, "--context", &ctx, cs))
        goto done;
    if (use_cfg) {
        if (read_context(unc_p, "--uncond", &unc, us))
            goto done;
        if (us[1] != cs[1] || us[2] != cs[2]) {
            die("--uncond is (%lld, %lld, %lld) but --context (%lld, %lld, %lld): L and D must "
                "match (they run as one batch)",
                (long long)us[0], (long long)us[1], (long long)us[2], (long long)cs[0],
                (long long)cs[1], (long long)cs[2]);
            goto done;
        }
    }
    int64_t ns[SD_MAX_DIMS] = {0};
    if (noise_p) {
        int nd;
        if (sd_npy_read_f32(noise_p, &latent, &nd, ns, &err)) {
            die("%s", err.message);
            goto done;
        }
        if (nd != 4) {
            die("--noise %s: must be 4-d (B, C, H, W), got %d dims", noise_p, nd);
            goto done;
        }
        for (int i = 0; i < 4; i++)
            if (ns[i] < 1 || ns[i] > 8192) {
                die("--noise %s: dimension %d is %lld", noise_p, i, (long long)ns[i]);
                goto done;
            }
        const char *names[3] = {"--batch", "--height", "--width"};
        const int given[3] = {B, get(o, no, "--height") ? H : 0, get(o, no, "--width") ? W : 0};
        const int64_t have[3] = {ns[0], ns[2], ns[3]};
        for (int i = 0; i < 3; i++)
            if (given[i] && given[i] != have[i]) {
                die("%s %d conflicts with --noise %s, which is (%lld, %lld, %lld, %lld)", names[i],
                    given[i], noise_p, (long long)ns[0], (long long)ns[1], (long long)ns[2],
                    (long long)ns[3]);
                goto done;
            }
        B = (int)ns[0], H = (int)ns[2], W = (int)ns[3];
    }
    if (!B)
        B = (int)(cs[0] > us[0] ? cs[0] : us[0]);
    if (cs[0] != 1 && cs[0] != B) {
        die("batch mismatch: --context has %lld rows for %d latents (give 1 or %d)",
            (long long)cs[0], B, B);
        goto done;
    }
    if (use_cfg && us[0] != 1 && us[0] != B) {
        die("batch mismatch: --uncond has %lld rows for %d latents (give 1 or %d)",
            (long long)us[0], B, B);
        goto done;
    }

    /* The model. */
    int weights, fast;
    if (parse_weights(NULL, &weights) || parse_fast(get(o, no, "--fast") != NULL, &fast) ||
        load_model_w(model_p, config, NULL, synthetic, threads, 0, weights, fast, &m))
        goto done;
    sdunet_model_info info;
    sdunet_get_info(m, &info);
    const int C = info.in_channels;
    if (info.out_channels != C) {
        die("the model maps %d channels to %d; sampling needs equal counts", C, info.out_channels);
        goto done;
    }
    if (cs[2] != info.context_dim) {
        die("--context has D = %lld but the model's cross-attention width is %d", (long long)cs[2],
            info.context_dim);
        goto done;
    }
    const size_t n = (size_t)B * C * H * W;
    if (noise_p) {
        if (ns[1] != C) {
            die("--noise %s has %lld channels, the model takes %d", noise_p, (long long)ns[1], C);
            goto done;
        }
    }
    sdunet_rng rng;
    sdunet_rng_seed(&rng, seed);
    if (!noise_p) {
        latent = sd_alloc(n * sizeof(float));
        if (!latent) {
            die("out of memory for a (%d, %d, %d, %d) latent", B, C, H, W);
            goto done;
        }
        sdunet_rng_normal(&rng, latent, n);
    }

    sdunet_sample_params sp = {.steps = steps,
                               .batch = B,
                               .height = H,
                               .width = W,
                               .context = ctx,
                               .context_rows = (int)cs[0],
                               .context_len = (int)cs[1],
                               .context_dim = (int)cs[2],
                               .uncond = use_cfg ? unc : NULL,
                               .uncond_rows = (int)us[0],
                               .uncond_len = (int)us[1],
                               .guidance = guidance,
                               .rng = &rng,
                               .progress = on_progress};
    sample_progress pr = {.tty = isatty(2)};
    sp.progress_user = &pr;

    /* Ctrl-C only raises a flag that the progress hook reports between model
     * calls; SA_RESETHAND makes a second Ctrl-C the default (immediate) one. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;
    g_interrupted = 0;
    /* A SIGINT ignored on entry (nohup, `cmd &` in a script) stays ignored. */
    if (sigaction(SIGINT, NULL, &old_sa) == 0 && old_sa.sa_handler != SIG_IGN &&
        sigaction(SIGINT, &sa, NULL) == 0)
        sa_installed = 1;

    int done_calls = 0;
    pr.t0 = now_s();
    sdunet_status st = sdunet_sample(m, sched, &sp, latent, &done_calls, &err);
    double dt = now_s() - pr.t0;
    const int total = sdunet_sched_num_model_calls(sched);
    if (pr.tty && (done_calls > 0 || g_interrupted))
        fputc('\n', stderr);
    if (st) {
        die("%s", err.message);
        goto done;
    }
    if (done_calls < total) {
        fprintf(stderr, "sdunet: interrupted at step %d/%d; no output written\n", done_calls,
                total);
        rc = 130;
        goto done;
    }
    if (!pr.tty)
        fprintf(stderr, "sampled %d model calls in %.2f s (%.2f it/s)\n", total, dt,
                dt > 0 ? total / dt : 0.0);

    int64_t os[4] = {B, C, H, W};
    if (sd_npy_write_f32(out_p, latent, 4, os, &err)) {
        die("%s", err.message);
        goto done;
    }
    printf("output: (%d,%d,%d,%d) -> %s\n", B, C, H, W, out_p);
    printf("sampler: %s, %d steps (%d model calls), ", sched_name, steps, total);
    if (use_cfg)
        printf("guidance %g (batched cond/uncond)", guidance);
    else
        printf("no guidance%s", unc_p ? " (--uncond unused at guidance 1)" : "");
    if (noise_p)
        printf(", noise %s\n", noise_p);
    else
        printf(", seed %llu\n", (unsigned long long)seed);
    printf("time: %.3f s (%.2f it/s)\n", dt, dt > 0 ? total / dt : 0.0);
    print_checksum(latent, n);
    rc = 0;
done:
    if (sa_installed)
        sigaction(SIGINT, &old_sa, NULL);
    sd_free(ctx);
    sd_free(unc);
    sd_free(latent);
    sdunet_free(m);
    sdunet_sched_free(sched);
    return rc;
}
