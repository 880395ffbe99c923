/* sdunet txt2img / img2img: a prompt (and an init image) to PNG files. */
#include "cli.h"

#include "io/npy.h"
#include "io/png.h"
#include "sdunet_pipeline.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char gen_help[] =
    "usage: sdunet txt2img (--model PATH | --synthetic sd15|sd21|DIR) --prompt TEXT [options]\n"
    "       sdunet img2img (--model PATH | --synthetic ...) --init IMAGE.png --prompt TEXT\n"
    "                      [--strength S] [options]\n"
    "\n"
    "Generates pictures as diffusers' StableDiffusionPipeline (img2img:\n"
    "StableDiffusionImg2ImgPipeline) does: for the same model, prompt, settings and seed,\n"
    "the same picture (PyTorch's CPU generator is reproduced bit for bit).\n"
    "\n"
    "  --model PATH         a single-file checkpoint (SD1.x/SD2.x .safetensors or .ckpt)\n"
    "                       or a diffusers pipeline folder\n"
    "  --synthetic NAME     full-size synthetic weights (sd15, sd21: the result looks like\n"
    "                       noise), or a folder of configs laid out like a pipeline\n"
    "  --vae PATH           use another VAE (a VAE file or folder)\n"
    "  --variant NAME       diffusers folders: the NAME (fp16) weights\n"
    "  --prompt TEXT        what to draw\n"
    "  --negative-prompt T  what to avoid (default empty, as diffusers)\n"
    "  --width W --height H multiples of 8 (default: the model's size, 512 for SD1.x,\n"
    "                       768 for SD2.x v-prediction; img2img: the init image's)\n"
    "  --steps N            denoising steps (default 50, as diffusers)\n"
    "  --guidance G         classifier-free guidance scale (default 7.5; 1: no\n"
    "                       unconditional pass)\n"
    "  --scheduler NAME     ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, pndm, lms, unipc\n"
    "                       (default: the model's: its scheduler config, or pndm for single\n"
    "                       files, as diffusers loads them)\n"
    "  --prediction-type T  epsilon or v_prediction (default: the scheduler config's; single\n"
    "                       files: epsilon for SD1.x, v_prediction for SD2.x)\n"
    "  --eta E              DDIM's eta (default 0)\n"
    "  --seed S             0..2^64-1, or -1 for a random one (printed); default -1\n"
    "  --rng torch|fast     torch (default): PyTorch's CPU generator, diffusers' pictures;\n"
    "                       fast: sdunet's own generator (sdunet_sample.h)\n"
    "  --batch-size N       pictures drawn together from one seed (num_images_per_prompt)\n"
    "  --batch-count N      N runs with seeds S, S+1, ... (default 1)\n"
    "  --strength S         img2img: how much to change the init image, 0..1 (default 0.8)\n"
    "  --clip-skip N        skip the last N text-encoder layers (diffusers' clip_skip;\n"
    "                       AUTOMATIC1111's \"Clip skip\" is N + 1)\n"
    "  --long-prompt MODE   truncate (default) or chunk (see encode-text --help)\n"
    "  --prompt-syntax S    plain (default) or a1111: (word:1.3), [word], BREAK\n"
    "  --out PATH           output (default sdunet-%d.png): PNG with the generation parameters\n"
    "                       in a 'parameters' text chunk (AUTOMATIC1111's format); %d is\n"
    "                       replaced by the image number; a .npy path writes the float images\n"
    "                       (B, H, W, 3) in [0, 1] as diffusers' output_type=\"np\"\n"
    "  --threads N          worker threads (default: SDUNET_THREADS, else all CPUs)\n"
    "  --low-memory         load each model only for its phase (text encoder, UNet,\n"
    "                       VAE) and free it after: the peak is about the UNet alone\n"
    "                       (SD1.5 fp16 file, 512x512: 1.92 GiB); each picture loads\n"
    "                       them again (a few seconds)\n"
    "  --fast               fast mode for the UNet and the VAE: faster algorithms (3x3\n"
    "                       convolutions by Winograd F(4x4, 3x3)), relative L2 <= 2e-5\n"
    "                       against float64 per call (default: $SDUNET_FAST, else exact)\n"
    "  --unet-config F      the UNet's config.json or preset when it cannot be inferred\n"
    "  --text-config F      the text encoder's config.json when it cannot be inferred\n"
    "  --quiet / --verbose  no progress / timings per phase on stderr\n";

typedef struct progress_state {
    int quiet, tty;
    double t_phase, t_step;
    int last_done;
} progress_state;

static const char *phase_name(sdunet_phase ph)
{
    switch (ph) {
    case SDUNET_PHASE_TEXT: return "text encoding";
    case SDUNET_PHASE_ENCODE: return "VAE encoding";
    case SDUNET_PHASE_DENOISE: return "denoising";
    default: return "VAE decoding";
    }
}

static int on_progress(void *user, sdunet_phase ph, int done, int total)
{
    progress_state *s = user;
    double now = now_s();
    if (done == 0) {
        s->t_phase = s->t_step = now;
        s->last_done = 0;
    }
    if (s->quiet > 0)
        return 0;
    if (ph == SDUNET_PHASE_DENOISE && done > 0 && s->tty) {
        double per = (now - s->t_phase) / done;
        fprintf(stderr, "\r  step %d/%d, %.2f s/step, ETA %.0f s   ", done, total, per,
                per * (total - done));
        if (done == total)
            fputc('\n', stderr);
    }
    if (done == total && total > 0 && (s->tty || s->quiet < 0))
        fprintf(stderr, "  %s: %.2f s\n", phase_name(ph), now - s->t_phase);
    return 0;
}

/* "%d" in pattern -> n; otherwise, with several images, "-n" before the extension. */
static void out_name(const char *pattern, int n, int many, char *out, size_t len)
{
    const char *pd = strstr(pattern, "%d");
    if (pd) {
        snprintf(out, len, "%.*s%d%s", (int)(pd - pattern), pattern, n, pd + 2);
        return;
    }
    if (!many) {
        snprintf(out, len, "%s", pattern);
        return;
    }
    const char *dot = strrchr(pattern, '.');
    const char *slash = strrchr(pattern, '/');
    if (!dot || (slash && dot < slash))
        dot = pattern + strlen(pattern);
    snprintf(out, len, "%.*s-%d%s", (int)(dot - pattern), pattern, n, dot);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int run_generate(int argc, char **argv, int img2img)
{
    opt o[] = {{.name = "--model"},
               {.name = "--synthetic"},
               {.name = "--vae"},
               {.name = "--variant"},
               {.name = "--prompt"},
               {.name = "--negative-prompt"},
               {.name = "--width"},
               {.name = "--height"},
               {.name = "--steps"},
               {.name = "--guidance"},
               {.name = "--scheduler"},
               {.name = "--prediction-type"},
               {.name = "--eta"},
               {.name = "--seed"},
               {.name = "--rng"},
               {.name = "--batch-size"},
               {.name = "--batch-count"},
               {.name = "--strength"},
               {.name = "--clip-skip"},
               {.name = "--long-prompt"},
               {.name = "--prompt-syntax"},
               {.name = "--out"},
               {.name = "--threads"},
               {.name = "--init"},
               {.name = "--low-memory", .is_flag = 1},
               {.name = "--fast", .is_flag = 1},
               {.name = "--quiet", .is_flag = 1},
               {.name = "--verbose", .is_flag = 1},
               {.name = "--unet-config"},
               {.name = "--text-config"}};
    const int no = sizeof o / sizeof o[0];
    int help;
    if (parse_opts(argc, argv, o, no, &help))
        return 1;
    if (help) {
        fputs(gen_help, stdout);
        return 0;
    }
    const char *model = get(o, no, "--model"), *synthetic = get(o, no, "--synthetic");
    if (!!model == !!synthetic)
        return die("give exactly one of --model PATH or --synthetic NAME (see --help)");
    const char *prompt = get(o, no, "--prompt");
    if (!prompt)
        return die("give --prompt TEXT");
    const char *init_p = get(o, no, "--init");
    if (img2img != (init_p != NULL))
        return die(img2img ? "img2img needs --init IMAGE.png" : "--init goes with img2img");
    sdunet_gen_params gp;
    sdunet_gen_params_default(&gp);
    gp.prompt = prompt;
    gp.negative_prompt = get(o, no, "--negative-prompt");
    gp.scheduler = get(o, no, "--scheduler");
    int count = 1, threads = 0;
    const char *s;
    char *end;
    if ((get(o, no, "--width") &&
         parse_int(get(o, no, "--width"), "--width", 8, 8192, &gp.width)) ||
        (get(o, no, "--height") &&
         parse_int(get(o, no, "--height"), "--height", 8, 8192, &gp.height)) ||
        (get(o, no, "--steps") &&
         parse_int(get(o, no, "--steps"), "--steps", 1, 1000, &gp.steps)) ||
        (get(o, no, "--batch-size") &&
         parse_int(get(o, no, "--batch-size"), "--batch-size", 1, 64, &gp.batch)) ||
        (get(o, no, "--batch-count") &&
         parse_int(get(o, no, "--batch-count"), "--batch-count", 1, 100000, &count)) ||
        (get(o, no, "--clip-skip") &&
         parse_int(get(o, no, "--clip-skip"), "--clip-skip", 0, 1000, &gp.text.clip_skip)) ||
        (get(o, no, "--threads") &&
         parse_int(get(o, no, "--threads"), "--threads", 1, 1024, &threads)))
        return 1;
    if ((s = get(o, no, "--guidance"))) {
        gp.guidance = strtod(s, &end);
        if (*end || end == s || !(gp.guidance >= 0 && gp.guidance <= 100))
            return die("--guidance must be a number in 0..100, not '%s'", s);
    }
    if ((s = get(o, no, "--eta"))) {
        gp.eta = strtod(s, &end);
        if (*end || end == s || !(gp.eta >= 0 && gp.eta <= 1))
            return die("--eta must be a number in 0..1, not '%s'", s);
    }
    if ((s = get(o, no, "--strength"))) {
        gp.strength = strtod(s, &end);
        if (*end || end == s || !(gp.strength >= 0 && gp.strength <= 1))
            return die("--strength must be a number in 0..1, not '%s'", s);
    }
    int random_seed = 1;
    if ((s = get(o, no, "--seed")) && strcmp(s, "-1") != 0) {
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (*end || end == s || errno || s[0] == '-')
            return die("--seed must be 0..18446744073709551615 or -1, not '%s'", s);
        gp.seed = v;
        random_seed = 0;
    }
    if (random_seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        gp.seed =
            ((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)getpid()) & 0xffffffffu;
    }
    if ((s = get(o, no, "--rng"))) {
        if (strcmp(s, "torch") == 0)
            gp.rng = SDUNET_RNG_TORCH;
        else if (strcmp(s, "fast") == 0)
            gp.rng = SDUNET_RNG_FAST;
        else
            return die("--rng is torch or fast, not '%s'", s);
    }
    const char *lp = get(o, no, "--long-prompt"), *sx = get(o, no, "--prompt-syntax");
    if (lp && strcmp(lp, "truncate") != 0 && strcmp(lp, "chunk") != 0)
        return die("--long-prompt is truncate or chunk, not '%s'", lp);
    gp.text.long_prompt = lp && strcmp(lp, "chunk") == 0 ? SDUNET_LONG_CHUNK : SDUNET_LONG_TRUNCATE;
    if (sx && strcmp(sx, "plain") != 0 && strcmp(sx, "a1111") != 0)
        return die("--prompt-syntax is plain or a1111, not '%s'", sx);
    gp.text.syntax = sx && strcmp(sx, "a1111") == 0 ? SDUNET_SYNTAX_A1111 : SDUNET_SYNTAX_PLAIN;
    sdunet_pipeline_options po;
    sdunet_pipeline_options_default(&po);
    po.threads = threads;
    po.variant = get(o, no, "--variant");
    po.vae = get(o, no, "--vae");
    po.low_memory = get(o, no, "--low-memory") != NULL;
    if (parse_fast(get(o, no, "--fast") != NULL, &po.fast))
        return 1;
    po.unet_config = get(o, no, "--unet-config");
    po.text_config = get(o, no, "--text-config");
    if ((s = get(o, no, "--prediction-type"))) {
        if (strcmp(s, "epsilon") == 0)
            po.prediction_type = SDUNET_PRED_EPSILON;
        else if (strcmp(s, "v_prediction") == 0 || strcmp(s, "v") == 0)
            po.prediction_type = SDUNET_PRED_V;
        else
            return die("--prediction-type is epsilon or v_prediction, not '%s'", s);
    }
    const char *out_p = get(o, no, "--out");
    if (!out_p)
        out_p = "sdunet-%d.png";
    const int npy = ends_with(out_p, ".npy");
    const int many = count * gp.batch > 1;
    /* Every output must be writable before any work starts. */
    for (int k = 0; k < (npy ? count : count * gp.batch); k++) {
        char name[4096];
        out_name(out_p, k + 1, npy ? count > 1 : many, name, sizeof name);
        if (check_writable(name))
            return 1;
    }

    progress_state ps = {.tty = isatty(2), .quiet = get(o, no, "--quiet") ? 1 : 0};
    if (get(o, no, "--verbose"))
        ps.quiet = -1, ps.tty = 1;
    gp.progress = on_progress;
    gp.progress_user = &ps;
    sdunet_error err = {0};
    sdunet_pipeline *pl = NULL;
    sd_image init = {0};
    uint8_t *rgb = NULL;
    float *fimg = NULL;
    int rc = 1;
    if (init_p) {
        if (sd_png_read(init_p, &init, &err)) {
            die("%s", err.message);
            goto done;
        }
        gp.init_rgb = init.data;
        gp.init_width = init.width;
        gp.init_height = init.height;
    }
    double t0 = now_s();
    if (!ps.quiet)
        progress("loading %s...\n", model ? model : synthetic);
    if ((model ? sdunet_pipeline_load(model, &po, &pl, &err)
               : sdunet_pipeline_load_synthetic(synthetic, &po, &pl, &err))) {
        die("%s", err.message);
        goto done;
    }
    if (ps.quiet < 0)
        fprintf(stderr, "  load: %.2f s\n", now_s() - t0);
    int W, H;
    if (sdunet_pipeline_image_size(pl, &gp, &W, &H, &err)) {
        die("%s", err.message);
        goto done;
    }
    size_t per = (size_t)gp.batch * W * H * 3;
    if (!(rgb = malloc(per)) || (npy && !(fimg = malloc(per * sizeof(float))))) {
        die("out of memory");
        goto done;
    }
    for (int run = 0; run < count; run++) {
        sdunet_gen_params g = gp;
        g.seed = gp.seed + (uint64_t)run;
        if (!ps.quiet)
            fprintf(stderr, "sdunet: seed %" PRIu64 "%s\n", g.seed,
                    random_seed && run == 0 ? " (random)" : "");
        double tg = now_s();
        if (sdunet_generate(pl, &g, npy ? NULL : rgb, fimg, &err)) {
            die("%s", err.message);
            goto done;
        }
        double dt = now_s() - tg;
        char params[8192];
        sdunet_pipeline_parameters_text(pl, &g, params, sizeof params, &err);
        if (npy) {
            char name[4096];
            out_name(out_p, run + 1, count > 1, name, sizeof name);
            int64_t shape[4] = {g.batch, H, W, 3};
            if (sd_npy_write_f32(name, fimg, 4, shape, &err)) {
                die("%s", err.message);
                goto done;
            }
            printf("%s (%d image%s, %.1f s)\n", name, g.batch, g.batch > 1 ? "s" : "", dt);
            continue;
        }
        for (int b = 0; b < g.batch; b++) {
            char name[4096];
            out_name(out_p, run * g.batch + b + 1, many, name, sizeof name);
            sd_png_text t = {"parameters", params};
            if (sd_png_write(name, rgb + (size_t)b * W * H * 3, W, H, &t, 1, &err)) {
                die("%s", err.message);
                goto done;
            }
            printf("%s (%.1f s)\n", name, dt);
        }
    }
    rc = 0;
done:
    free(rgb);
    free(fimg);
    sd_image_free(&init);
    sdunet_pipeline_free(pl);
    return rc;
}

int cmd_txt2img(int argc, char **argv)
{
    return run_generate(argc, argv, 0);
}

int cmd_img2img(int argc, char **argv)
{
    return run_generate(argc, argv, 1);
}

/* ---- demo: the whole pipeline on synthetic full-size weights ---- */

static const char demo_pipeline_help[] =
    "usage: sdunet demo [--synthetic sd15|sd21] [--steps N] [--size PX] [--scheduler NAME]\n"
    "                   [--out FILE.png] [--threads N]\n"
    "       sdunet demo --unet [--help]   (the UNet alone: shapes, skip stack, checksum)\n"
    "\n"
    "Generates one picture end to end, prompt -> text encoder -> denoising loop -> VAE ->\n"
    "PNG, with the full-size models on the synthetic weights of spec/synthetic-weights.md\n"
    "(default sd15, 256x256, 4 steps of euler_a, seed 1, demo.png), and prints the time of\n"
    "each phase. Synthetic weights are not a trained model: the picture looks like noise.\n"
    "For a real picture, give a checkpoint to `sdunet txt2img --model PATH`.\n";

int cmd_demo_pipeline(int argc, char **argv)
{
    opt o[] = {{.name = "--synthetic"}, {.name = "--steps"}, {.name = "--size"},
               {.name = "--scheduler"}, {.name = "--out"},   {.name = "--threads"}};
    const int no = sizeof o / sizeof o[0];
    int help;
    if (parse_opts(argc, argv, o, no, &help))
        return 1;
    if (help) {
        fputs(demo_pipeline_help, stdout);
        return 0;
    }
    const char *preset = get(o, no, "--synthetic") ? get(o, no, "--synthetic") : "sd15";
    const char *out_p = get(o, no, "--out") ? get(o, no, "--out") : "demo.png";
    sdunet_gen_params gp;
    sdunet_gen_params_default(&gp);
    gp.prompt = "a photo of an astronaut riding a horse on mars";
    gp.steps = 4;
    gp.width = gp.height = 256;
    gp.seed = 1;
    gp.scheduler = get(o, no, "--scheduler") ? get(o, no, "--scheduler") : "euler_a";
    sdunet_pipeline_options po;
    sdunet_pipeline_options_default(&po);
    if ((get(o, no, "--steps") &&
         parse_int(get(o, no, "--steps"), "--steps", 1, 1000, &gp.steps)) ||
        (get(o, no, "--size") && parse_int(get(o, no, "--size"), "--size", 8, 2048, &gp.width)) ||
        (get(o, no, "--threads") &&
         parse_int(get(o, no, "--threads"), "--threads", 1, 1024, &po.threads)))
        return 1;
    gp.height = gp.width;
    if (check_writable(out_p))
        return 1;
    progress_state ps = {.tty = isatty(2), .quiet = -1};
    gp.progress = on_progress;
    gp.progress_user = &ps;
    sdunet_error err = {0};
    sdunet_pipeline *pl = NULL;
    uint8_t *rgb = NULL;
    int rc = 1;
    printf("sdunet demo: synthetic %s pipeline, \"%s\", %dx%d, %d steps of %s, seed 1\n", preset,
           gp.prompt, gp.width, gp.height, gp.steps, gp.scheduler);
    double t0 = now_s();
    if (sdunet_pipeline_load_synthetic(preset, &po, &pl, &err)) {
        die("%s", err.message);
        goto done;
    }
    sdunet_pipeline_info info;
    sdunet_pipeline_get_info(pl, &info);
    fprintf(stderr, "  load (synthetic weights): %.2f s, %s kernels, %d threads\n", now_s() - t0,
            info.isa, info.threads);
    if (!(rgb = malloc((size_t)gp.width * gp.height * 3))) {
        die("out of memory");
        goto done;
    }
    double tg = now_s();
    if (sdunet_generate(pl, &gp, rgb, NULL, &err)) {
        die("%s", err.message);
        goto done;
    }
    double dt = now_s() - tg;
    char params[4096];
    sdunet_pipeline_parameters_text(pl, &gp, params, sizeof params, &err);
    sd_png_text t = {"parameters", params};
    if (sd_png_write(out_p, rgb, gp.width, gp.height, &t, 1, &err)) {
        die("%s", err.message);
        goto done;
    }
    printf("wrote %s (generation %.1f s; synthetic weights: expect noise)\n", out_p, dt);
    rc = 0;
done:
    free(rgb);
    sdunet_pipeline_free(pl);
    return rc;
}
