/* The VAE commands: decode (latent -> image) and encode-image (image ->
 * latent), on .npy files. */
#include "cli.h"

#include "sdunet_vae.h"

#include "io/npy.h"
#include "io/png.h"
#include "io/tensorfile.h"
#include "vae/vae.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Loads the VAE from --vae, else --model, else synthetic weights. */
static int load_vae(const char *model, const char *vae, const char *config, const char *variant,
                    const char *synthetic, int threads, int allow_nonfinite, int tiling, int fast,
                    sdunet_vae **v)
{
    sdunet_options o;
    sdunet_options_default(&o);
    o.threads = threads;
    o.fast = fast;
    o.allow_nonfinite = allow_nonfinite;
    o.variant = variant;
    sdunet_error err = {0};
    sdunet_status st;
    double t0 = now_s();
    if (synthetic) {
        progress("generating synthetic VAE weights (%s)...\n", synthetic);
        st = sdunet_vae_load_synthetic(synthetic, &o, v, &err);
    } else {
        const char *path = vae ? vae : model;
        progress("loading the VAE from %s...\n", path);
        st = sdunet_vae_load(path, config, &o, v, &err);
    }
    if (!st && tiling)
        st = sdunet_vae_set_tiling(*v, 1, &err);
    if (st)
        return die("%s", err.message);
    sdunet_vae_info info;
    sdunet_vae_get_info(*v, &info);
    progress("VAE ready in %.2f s: %.1fM parameters, %d threads, %s kernels\n", now_s() - t0,
             (double)info.n_params / 1e6, info.threads, info.isa);
    return 0;
}

static int is_npy(const char *path)
{
    size_t n = strlen(path);
    return n >= 4 && strcmp(path + n - 4, ".npy") == 0;
}

/* A 4-d .npy with every dimension in 1..INT_MAX. */
static int read_4d(const char *path, const char *what, float **x, int64_t sh[SD_MAX_DIMS])
{
    sdunet_error err = {0};
    int nd;
    if (sd_npy_read_f32(path, x, &nd, sh, &err))
        return die("%s", err.message);
    if (nd != 4)
        return die("%s: %s must be 4-d (B, C, H, W), got %d dims", path, what, nd);
    for (int i = 0; i < 4; i++)
        if (sh[i] < 1 || sh[i] > INT_MAX)
            return die("%s: dimension %d is %lld", path, i, (long long)sh[i]);
    return 0;
}

static const char decode_help[] =
    "usage: sdunet decode (--model PATH [--vae PATH] | --vae PATH | --synthetic PRESET)\n"
    "                     --latent L.npy --out OUT.png|OUT.npy [--config FILE|PRESET]\n"
    "                     [--variant NAME] [--tiled] [--threads N] [--allow-nonfinite]\n"
    "                     [--runs N [--shapes]] [--fast]\n"
    "\n"
    "Decodes latents with the VAE (diffusers AutoencoderKL): image = decoder(latent /\n"
    "scaling_factor), as the SD pipelines do before postprocessing.\n"
    "  --model PATH        a single-file SD checkpoint (its first_stage_model.* tensors) or\n"
    "                      a diffusers pipeline folder (DIR/vae/)\n"
    "  --vae PATH          a VAE of its own (safetensors/.ckpt with diffusers or LDM names,\n"
    "                      or a diffusers VAE folder); takes precedence over --model\n"
    "  --config FILE       AutoencoderKL config.json or preset (default: the folder's\n"
    "                      config.json, else inferred from the tensor shapes)\n"
    "  --variant NAME      diffusers folder: diffusion_pytorch_model.NAME.safetensors\n"
    "  --synthetic PRESET  deterministic synthetic weights (sd15, sd21, or a config.json)\n"
    "  --latent L.npy      latents as the sampler returns them, (B, 4, h, w)\n"
    "  --out OUT           OUT.npy: the image (B, 3, 8h, 8w) float32, nominally in [-1, 1],\n"
    "                      not clamped; OUT.png: 8-bit RGB as the pipelines' PIL output\n"
    "                      (several images: OUT-1.png, OUT-2.png, ...)\n"
    "  --tiled             diffusers' tiled decoding (tiles of 64 latent pixels for SD)\n"
    "  --threads N         worker threads (default: $SDUNET_THREADS or all online CPUs)\n"
    "  --allow-nonfinite   accept NaN/Inf latents (default: rejected with an error)\n"
    "  --runs N            decode N times (default 1) and print a breakdown of the last\n"
    "                      one by op kind, then the median and minimum time:\n"
    "                      decode: median_s=... min_s=... runs=N\n"
    "  --shapes            with --runs: also the last decode's time by op kind and shape\n"
    "  --fast              fast mode: faster algorithms (3x3 convolutions by Winograd\n"
    "                      F(4x4, 3x3)), relative L2 <= 2e-5 against float64 (default:\n"
    "                      $SDUNET_FAST, else exact mode)\n";

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int cmd_decode(int argc, char **argv)
{
    opt o[] = {{.name = "--model"},
               {.name = "--vae"},
               {.name = "--config"},
               {.name = "--variant"},
               {.name = "--synthetic"},
               {.name = "--latent"},
               {.name = "--out"},
               {.name = "--threads"},
               {.name = "--runs"},
               {.name = "--tiled", .is_flag = 1},
               {.name = "--fast", .is_flag = 1},
               {.name = "--shapes", .is_flag = 1},
               {.name = "--allow-nonfinite", .is_flag = 1}};
    const int no = sizeof o / sizeof o[0];
    int help;
    if (parse_opts(argc, argv, o, no, &help))
        return 1;
    if (help) {
        fputs(decode_help, stdout);
        return 0;
    }
    const char *model = get(o, no, "--model"), *vae = get(o, no, "--vae");
    const char *synthetic = get(o, no, "--synthetic"), *config = get(o, no, "--config");
    const char *lat_p = get(o, no, "--latent"), *out_p = get(o, no, "--out");
    if (!!(model || vae) == !!synthetic)
        return die("give --model PATH or --vae PATH, or --synthetic PRESET (see --help)");
    if (synthetic && (config || get(o, no, "--variant")))
        return die("--config and --variant go with --model/--vae; --synthetic takes the preset "
                   "or config itself");
    if (!lat_p || !out_p)
        return die("decode needs --latent and --out (see --help)");
    const int png = !is_npy(out_p);
    if (png && check_writable(out_p))
        return 1;
    int threads = 0;
    if (get(o, no, "--threads") &&
        parse_int(get(o, no, "--threads"), "--threads", 1, 1024, &threads))
        return 1;
    int runs = 1, fast;
    if ((get(o, no, "--runs") && parse_int(get(o, no, "--runs"), "--runs", 1, 1000, &runs)) ||
        parse_fast(get(o, no, "--fast") != NULL, &fast))
        return 1;
    double times[1000];
    float *lat = NULL, *img = NULL;
    int64_t sh[SD_MAX_DIMS];
    sdunet_vae *v = NULL;
    sdunet_error err = {0};
    int rc = 1;
    if (read_4d(lat_p, "latent", &lat, sh))
        goto done;
    if (load_vae(model, vae, config, get(o, no, "--variant"), synthetic, threads,
                 get(o, no, "--allow-nonfinite") != NULL, get(o, no, "--tiled") != NULL, fast, &v))
        goto done;
    sdunet_vae_info info;
    sdunet_vae_get_info(v, &info);
    if (sh[2] > 16384 / info.factor || sh[3] > 16384 / info.factor) {
        die("%s: latent %lldx%lld too large", lat_p, (long long)sh[2], (long long)sh[3]);
        goto done;
    }
    int64_t os[4] = {sh[0], info.out_channels, sh[2] * info.factor, sh[3] * info.factor};
    size_t n_out = (size_t)os[0] * (size_t)os[1] * (size_t)os[2] * (size_t)os[3];
    if (!(img = malloc(n_out * sizeof(float)))) {
        die("out of memory");
        goto done;
    }
    progress("decode: latent (%lld,%lld,%lld,%lld)...\n", (long long)sh[0], (long long)sh[1],
             (long long)sh[2], (long long)sh[3]);
    sd_prof prof;
    for (int r = 0; r < runs; r++) {
        memset(&prof, 0, sizeof prof);
        sd_vae_set_profile(v, &prof);
        double t0 = now_s();
        if (sdunet_vae_decode(v, lat, (int)sh[0], (int)sh[1], (int)sh[2], (int)sh[3], img, &err)) {
            die("%s", err.message);
            goto done;
        }
        times[r] = now_s() - t0;
        sd_vae_set_profile(v, NULL);
        if (runs > 1)
            progress("run %d/%d: %.3f s\n", r + 1, runs, times[r]);
    }
    qsort(times, (size_t)runs, sizeof *times, cmp_double);
    double dt = runs % 2 ? times[runs / 2] : 0.5 * (times[runs / 2 - 1] + times[runs / 2]);
    if (png) { /* 8-bit RGB as the pipelines' PIL output; several images: OUT-1.png, ... */
        size_t per = (size_t)os[2] * (size_t)os[3] * 3;
        uint8_t *rgb = info.out_channels == 3 ? malloc(per * (size_t)os[0]) : NULL;
        if (!rgb || sdunet_vae_image_to_rgb8(img, (int)os[0], (int)os[2], (int)os[3], rgb, &err)) {
            die("%s", rgb ? err.message : "PNG output needs 3 channels (or out of memory)");
            free(rgb);
            goto done;
        }
        for (int64_t b = 0; b < os[0]; b++) {
            char name[4096];
            const char *dot = strrchr(out_p, '.');
            if (os[0] == 1 || !dot)
                snprintf(name, sizeof name, "%s", out_p);
            else
                snprintf(name, sizeof name, "%.*s-%lld%s", (int)(dot - out_p), out_p,
                         (long long)b + 1, dot);
            if (sd_png_write(name, rgb + (size_t)b * per, (int)os[3], (int)os[2], NULL, 0, &err)) {
                die("%s", err.message);
                free(rgb);
                goto done;
            }
        }
        free(rgb);
    } else if (sd_npy_write_f32(out_p, img, 4, os, &err)) {
        die("%s", err.message);
        goto done;
    }
    printf("output: (%lld,%lld,%lld,%lld) -> %s\n", (long long)os[0], (long long)os[1],
           (long long)os[2], (long long)os[3], out_p);
    if (runs > 1) {
        print_breakdown(&prof); /* of the last run */
        if (get(o, no, "--shapes"))
            print_shapes(&prof);
        printf("decode: median_s=%.3f min_s=%.3f runs=%d\n", dt, times[0], runs);
    } else
        printf("decode: %.3f s\n", dt);
    print_checksum(img, n_out);
    rc = 0;
done:
    sd_free(lat);
    free(img);
    sdunet_vae_free(v);
    return rc;
}

static const char encode_help[] =
    "usage: sdunet encode-image (--model PATH [--vae PATH] | --vae PATH | --synthetic PRESET)\n"
    "                           --image IMG.png|IMG.npy --out LATENT.npy [--sample --noise N.npy]\n"
    "                           [--mean M.npy] [--logvar V.npy] [--config FILE|PRESET]\n"
    "                           [--variant NAME] [--threads N] [--allow-nonfinite]\n"
    "\n"
    "Encodes images with the VAE into latents as img2img uses them: scaling_factor *\n"
    "the posterior's mean (its mode), or with --sample scaling_factor * (mean + std *\n"
    "noise) with the given standard-normal noise.\n"
    "  --model, --vae, --config, --variant, --synthetic: as for sdunet decode\n"
    "  --image IMG         IMG.npy: images in [-1, 1], (B, 3, H, W); IMG.png: an 8-bit\n"
    "                      picture (RGB, RGBA, grey or palette; alpha dropped), x/255*2-1\n"
    "  --out LATENT.npy    latents, (B, 4, H/8, W/8) float32\n"
    "  --sample            sample the posterior (needs --noise) instead of taking its mean\n"
    "  --noise N.npy       standard-normal noise, the latent's shape\n"
    "  --mean M.npy, --logvar V.npy   also write the posterior's parameters (unscaled)\n"
    "  --threads N         worker threads (default: $SDUNET_THREADS or all online CPUs)\n"
    "  --allow-nonfinite   accept NaN/Inf inputs (default: rejected with an error)\n"
    "  --fast              fast mode: faster algorithms (3x3 convolutions by Winograd\n"
    "                      F(4x4, 3x3)), relative L2 <= 2e-5 against float64 (default:\n"
    "                      $SDUNET_FAST, else exact mode)\n";

int cmd_encode_image(int argc, char **argv)
{
    opt o[] = {{.name = "--model"},
               {.name = "--vae"},
               {.name = "--config"},
               {.name = "--variant"},
               {.name = "--synthetic"},
               {.name = "--image"},
               {.name = "--out"},
               {.name = "--sample", .is_flag = 1},
               {.name = "--noise"},
               {.name = "--mean"},
               {.name = "--logvar"},
               {.name = "--threads"},
               {.name = "--fast", .is_flag = 1},
               {.name = "--allow-nonfinite", .is_flag = 1}};
    const int no = sizeof o / sizeof o[0];
    int help;
    if (parse_opts(argc, argv, o, no, &help))
        return 1;
    if (help) {
        fputs(encode_help, stdout);
        return 0;
    }
    const char *model = get(o, no, "--model"), *vae = get(o, no, "--vae");
    const char *synthetic = get(o, no, "--synthetic"), *config = get(o, no, "--config");
    const char *img_p = get(o, no, "--image"), *out_p = get(o, no, "--out");
    const char *noise_p = get(o, no, "--noise"), *mean_p = get(o, no, "--mean");
    const char *logvar_p = get(o, no, "--logvar");
    const int sample = get(o, no, "--sample") != NULL;
    if (!!(model || vae) == !!synthetic)
        return die("give --model PATH or --vae PATH, or --synthetic PRESET (see --help)");
    if (synthetic && (config || get(o, no, "--variant")))
        return die("--config and --variant go with --model/--vae; --synthetic takes the preset "
                   "or config itself");
    if (!img_p || !out_p)
        return die("encode-image needs --image and --out (see --help)");
    if (sample != !!noise_p)
        return die("--sample and --noise N.npy go together");
    const char *outs[3] = {out_p, mean_p, logvar_p};
    for (int i = 0; i < 3; i++)
        if (outs[i] && !is_npy(outs[i]))
            return die("%s: only .npy output is supported", outs[i]);
    int threads = 0, fast;
    if ((get(o, no, "--threads") &&
         parse_int(get(o, no, "--threads"), "--threads", 1, 1024, &threads)) ||
        parse_fast(get(o, no, "--fast") != NULL, &fast))
        return 1;
    float *img = NULL, *noise = NULL, *lat = NULL, *mean = NULL, *logvar = NULL;
    int64_t sh[SD_MAX_DIMS], nsh[SD_MAX_DIMS];
    sdunet_vae *v = NULL;
    sdunet_error err = {0};
    int rc = 1;
    if (!is_npy(img_p)) { /* a PNG: 8 bits in, x / 255 * 2 - 1 */
        sd_image pi;
        if (sd_png_read(img_p, &pi, &err)) {
            die("%s", err.message);
            goto done;
        }
        sh[0] = 1, sh[1] = 3, sh[2] = pi.height, sh[3] = pi.width;
        img = sd_alloc((size_t)3 * pi.width * pi.height * sizeof(float));
        if (!img || sdunet_vae_rgb8_to_image(pi.data, 1, pi.height, pi.width, img, &err)) {
            die("%s", img ? err.message : "out of memory");
            sd_image_free(&pi);
            goto done;
        }
        sd_image_free(&pi);
    } else if (read_4d(img_p, "image", &img, sh)) {
        goto done;
    }
    if (noise_p && read_4d(noise_p, "noise", &noise, nsh))
        goto done;
    if (load_vae(model, vae, config, get(o, no, "--variant"), synthetic, threads,
                 get(o, no, "--allow-nonfinite") != NULL, 0, fast, &v))
        goto done;
    sdunet_vae_info info;
    sdunet_vae_get_info(v, &info);
    int lh, lw;
    sdunet_vae_latent_size(v, (int)sh[2], (int)sh[3], &lh, &lw);
    int64_t ls[4] = {sh[0], info.latent_channels, lh, lw};
    if (noise && (nsh[0] != ls[0] || nsh[1] != ls[1] || nsh[2] != ls[2] || nsh[3] != ls[3])) {
        die("%s: noise is (%lld,%lld,%lld,%lld); the latent is (%lld,%lld,%lld,%lld)", noise_p,
            (long long)nsh[0], (long long)nsh[1], (long long)nsh[2], (long long)nsh[3],
            (long long)ls[0], (long long)ls[1], (long long)ls[2], (long long)ls[3]);
        goto done;
    }
    size_t n_lat =
        (size_t)ls[0] * (size_t)ls[1] * (size_t)(lh > 0 ? lh : 1) * (size_t)(lw > 0 ? lw : 1);
    lat = malloc(n_lat * sizeof(float));
    mean = mean_p ? malloc(n_lat * sizeof(float)) : NULL;
    logvar = logvar_p ? malloc(n_lat * sizeof(float)) : NULL;
    if (!lat || (mean_p && !mean) || (logvar_p && !logvar)) {
        die("out of memory");
        goto done;
    }
    progress("encode: image (%lld,%lld,%lld,%lld)...\n", (long long)sh[0], (long long)sh[1],
             (long long)sh[2], (long long)sh[3]);
    double t0 = now_s();
    if (sdunet_vae_encode(v, img, (int)sh[0], (int)sh[1], (int)sh[2], (int)sh[3], noise, lat, mean,
                          logvar, &err)) {
        die("%s", err.message);
        goto done;
    }
    double dt = now_s() - t0;
    float *data[3] = {lat, mean, logvar};
    for (int i = 0; i < 3; i++)
        if (outs[i] && sd_npy_write_f32(outs[i], data[i], 4, ls, &err)) {
            die("%s", err.message);
            goto done;
        }
    printf("output: (%lld,%lld,%lld,%lld) -> %s\n", (long long)ls[0], (long long)ls[1],
           (long long)ls[2], (long long)ls[3], out_p);
    printf("encode: %.3f s\n", dt);
    print_checksum(lat, n_lat);
    rc = 0;
done:
    sd_free(img);
    sd_free(noise);
    free(lat);
    free(mean);
    free(logvar);
    sdunet_vae_free(v);
    return rc;
}
