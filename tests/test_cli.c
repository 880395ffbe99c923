/* The command-line tool end to end: help, a real run against the golden
 * data, synth/info/trace, and bad input (each a non-zero exit with exactly
 * one line on stderr, never a crash). */
#include "check.h"

#include "io/npy.h"
#include "io/png.h"

#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

static char g_bin[512];
static const char *tmp; /* t_tmp_dir() */

typedef struct result {
    int status; /* exit status, or 128 + signal */
    char out[16384], err[4096];
    int err_lines;
} result;

static char *read_all(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    buf[0] = 0;
    if (!f)
        return buf;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static result *sh(const char *args)
{
    static result r;
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s %s >%s/out.txt 2>%s/err.txt </dev/null", g_bin, args, tmp, tmp);
    int st = system(cmd);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    char p[600];
    snprintf(p, sizeof p, "%s/out.txt", tmp);
    read_all(p, r.out, sizeof r.out);
    snprintf(p, sizeof p, "%s/err.txt", tmp);
    read_all(p, r.err, sizeof r.err);
    r.err_lines = 0;
    for (char *c = r.err; *c; c++)
        r.err_lines += *c == '\n';
    return &r;
}

/* A failing command: non-zero (not a crash), one line on stderr containing `needle`. */
static void expect_fail(const char *args, const char *needle)
{
    result *r = sh(args);
    CHECK(r->status != 0 && r->status < 128, "'%s' exit status %d", args, r->status);
    CHECK(r->err_lines == 1, "'%s': %d stderr lines: %s", args, r->err_lines, r->err);
    CHECK(strstr(r->err, needle) != NULL, "'%s': stderr '%s' lacks '%s'", args, r->err, needle);
}

static void write_npy(const char *name, int nd, const int64_t *shape, float fill_nan_at)
{
    size_t n = 1;
    for (int i = 0; i < nd; i++)
        n *= (size_t)shape[i];
    float *x = calloc(n ? n : 1, sizeof(float));
    t_fill_random(x, n, 7);
    if (fill_nan_at >= 0 && (size_t)fill_nan_at < n)
        x[(size_t)fill_nan_at] = NAN;
    char p[600];
    snprintf(p, sizeof p, "%s/%s", tmp, name);
    sdunet_error e;
    sd_npy_write_f32(p, x, nd, shape, &e);
    free(x);
}

static void test_help(void)
{
    result *r = sh("--help");
    CHECK(r->status == 0 && strstr(r->out, "commands:"), "--help: %d", r->status);
    const char *cmds[] = {"run",     "demo",    "demo --unet",   "trace",  "synth",
                          "info",    "sample",  "encode-text",   "decode", "encode-image",
                          "txt2img", "img2img", "bench --text x"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char a[64];
        snprintf(a, sizeof a, "%s --help", cmds[i]);
        r = sh(a);
        CHECK(r->status == 0 && strstr(r->out, "usage: sdunet"), "%s: %d", a, r->status);
    }
    r = sh("");
    CHECK(r->status == 2, "no command: %d", r->status);
    expect_fail("frobnicate", "unknown command");
}

/* The commands added with the pipeline: failures are one line on stderr
 * and a non-zero status, before any work (unwritable outputs included). */
static void test_pipeline_commands_fail_cleanly(void)
{
    char a[2048];
    const char *m = t_data("micro");
    snprintf(a, sizeof a, "info %s/missing.safetensors", m);
    expect_fail(a, "cannot open");
    snprintf(a, sizeof a, "info %s/config.json", m);
    expect_fail(a, "config.json");
    expect_fail("txt2img --synthetic sd15 --prompt x --out /nonexistent-dir/x.png", "cannot write");
    expect_fail("txt2img --synthetic sd15", "--prompt");
    expect_fail("txt2img --synthetic sd15 --prompt x --steps 0", "--steps");
    expect_fail("txt2img --synthetic sd15 --prompt x --seed 12abc", "--seed");
    expect_fail("img2img --synthetic sd15 --prompt x", "--init");
    snprintf(a, sizeof a, "txt2img --model %s/weights.safetensors --prompt x --out %s/x.png", m,
             tmp);
    expect_fail(a, "no text encoder");
    expect_fail("encode-text --synthetic sd15 --prompt x --out /nonexistent-dir/c.npy",
                "cannot write");
    snprintf(a, sizeof a, "encode-text --synthetic sd15 --prompt x --clip-skip 12 --out %s/c.npy",
             tmp);
    expect_fail(a, "clip_skip");
}

/* decode to PNG: the golden 8-bit image (vae-tiny: every value equal); and
 * encode-image reads the PNG back. */
static void test_decode_png(void)
{
    char a[2048], png[600];
    const char *v = t_data("vae/vae-tiny");
    snprintf(png, sizeof png, "%s/decoded.png", tmp);
    snprintf(a, sizeof a, "decode --vae %s/weights.safetensors --latent %s/latent.npy --out %s", v,
             v, png);
    result *r = sh(a);
    CHECK(r->status == 0, "decode: %d %s", r->status, r->err);
    sd_image img;
    sdunet_error e;
    CHECK(sd_png_read(png, &img, &e) == SDUNET_OK, "%s", e.message);
    char p[600];
    snprintf(p, sizeof p, "%s/decode_u8.npy", v);
    size_t n;
    unsigned char *u = t_read_file(p, &n);
    size_t hl = u && n > 10 ? (size_t)(u[8] | u[9] << 8) + 10 : 0;
    if (img.data && u && hl) {
        /* decode_u8.npy is (B, H, W, 3) uint8 */
        CHECK(n - hl == (size_t)img.width * img.height * 3 && memcmp(u + hl, img.data, n - hl) == 0,
              "decoded PNG differs from decode_u8.npy");
    }
    free(u);
    sd_image_free(&img);
    snprintf(a, sizeof a, "encode-image --vae %s/weights.safetensors --image %s --out %s/lat.npy",
             v, png, tmp);
    r = sh(a);
    CHECK(r->status == 0 && strstr(r->out, "(1,4,16,12)"), "encode-image from PNG: %d %s %s",
          r->status, r->out, r->err);
}

/* decode --runs N: N decodes, the median and minimum on one line, the same
 * output as one decode; --runs 0 is refused. */
static void test_decode_runs(void)
{
    char a[2048];
    const char *v = t_data("vae/vae-tiny");
    snprintf(a, sizeof a,
             "decode --vae %s/weights.safetensors --latent %s/latent.npy --out %s/d1.npy", v, v,
             tmp);
    result *r = sh(a);
    CHECK(r->status == 0 && strstr(r->out, "decode: ") && !strstr(r->out, "median_s="),
          "decode: %d %s %s", r->status, r->out, r->err);
    const char *c1 = strstr(r->out, "checksum:");
    char sum1[256] = "";
    if (c1)
        snprintf(sum1, sizeof sum1, "%s", c1);
    snprintf(a, sizeof a,
             "decode --vae %s/weights.safetensors --latent %s/latent.npy --out %s/d3.npy --runs 3",
             v, v, tmp);
    r = sh(a);
    CHECK(r->status == 0, "decode --runs 3: %d %s", r->status, r->err);
    const char *m = strstr(r->out, "decode: median_s=");
    double med = -1, mn = -1;
    int n = 0;
    CHECK(m && sscanf(m, "decode: median_s=%lf min_s=%lf runs=%d", &med, &mn, &n) == 3 && n == 3 &&
              mn > 0 && mn <= med,
          "decode --runs 3 printed '%s'", r->out);
    const char *c3 = strstr(r->out, "checksum:");
    CHECK(c1 && c3 && strcmp(sum1, c3) == 0, "checksums differ: '%s' vs '%s'", sum1, c3 ? c3 : "");
    /* --shapes: the table by shape after the one by kind (vae-tiny's
     * decoder runs eight 3x3 convolutions at 16x12 with 64 channels) */
    snprintf(a, sizeof a,
             "decode --vae %s/weights.safetensors --latent %s/latent.npy --out %s/d2.npy --runs 2 "
             "--shapes",
             v, v, tmp);
    r = sh(a);
    const char *kinds = strstr(r->out, "op kind  "), *shapes = strstr(r->out, "shape  ");
    CHECK(r->status == 0 && kinds && shapes && kinds < shapes &&
              strstr(shapes, "3x3 conv   16x12x64 -> 64") &&
              sscanf(strstr(shapes, "16x12x64 -> 64") + 14, "%d", &n) == 1 && n == 8,
          "decode --shapes: %d '%s' %s", r->status, r->out, r->err);
    snprintf(a, sizeof a,
             "decode --vae %s/weights.safetensors --latent %s/latent.npy --out %s/d0.npy --runs 0",
             v, v, tmp);
    r = sh(a);
    CHECK(r->status != 0 && strstr(r->err, "--runs"), "decode --runs 0: %d %s", r->status, r->err);
}

static void test_run_micro(void)
{
    char args[1024];
    snprintf(args, sizeof args,
             "run --model %s/weights.safetensors --sample %s/sample.npy --timestep 1 "
             "--context %s/context.npy --out %s/out.npy --threads 2",
             t_data("micro"), t_data("micro"), t_data("micro"), tmp);
    result *r = sh(args);
    CHECK(r->status == 0, "run: %d %s", r->status, r->err);
    CHECK(strstr(r->out, "checksum:") != NULL, "no checksum in '%s'", r->out);
    char p[600];
    snprintf(p, sizeof p, "%s/out.npy", tmp);
    float *y = NULL;
    double *ref = NULL;
    int nd, nd2;
    int64_t s[8], s2[8];
    sdunet_error e;
    CHECK(sd_npy_read_f32(p, &y, &nd, s, &e) == SDUNET_OK, "%s", e.message);
    snprintf(p, sizeof p, "%s/expected_f64.npy", t_data("micro"));
    CHECK(sd_npy_read_f64(p, &ref, &nd2, s2, &e) == SDUNET_OK, "%s", e.message);
    if (y && ref) {
        CHECK(nd == 4 && s[0] == 1 && s[1] == 4 && s[2] == 16 && s[3] == 16, "shape");
        double rel = t_rel_l2_f32_f64(y, ref, 4 * 16 * 16);
        CHECK(rel <= 2e-6, "relative L2 %.3g", rel);
    }
    sd_free(y);
    sd_free(ref);
}

static void test_run_bad_input(void)
{
    char base[1024], a[2048];
    const char *m = t_data("micro");
    snprintf(base, sizeof base, "run --model %s/weights.safetensors --out %s/o.npy", m, tmp);
    int64_t good_s[4] = {1, 4, 8, 8}, good_c[3] = {1, 5, 16};
    write_npy("s.npy", 4, good_s, -1);
    write_npy("c.npy", 3, good_c, -1);
    int64_t s3[4] = {1, 3, 8, 8}, s0[4] = {1, 4, 0, 8}, s2b[4] = {2, 4, 8, 8};
    int64_t cw[3] = {1, 5, 15}, c2d[2] = {5, 16};
    write_npy("s3.npy", 4, s3, -1);
    write_npy("s0.npy", 4, s0, -1);
    write_npy("s2b.npy", 4, s2b, -1);
    write_npy("snan.npy", 4, good_s, 17);
    write_npy("cw.npy", 3, cw, -1);
    write_npy("c2d.npy", 2, c2d, -1);

#define RUNF(extra, needle)                                                                        \
    do {                                                                                           \
        snprintf(a, sizeof a, "%s %s", base, extra);                                               \
        expect_fail(a, needle);                                                                    \
    } while (0)
    char x[1024];
    snprintf(x, sizeof x, "--sample %s/s3.npy --context %s/c.npy --timestep 5", tmp, tmp);
    RUNF(x, "channels");
    snprintf(x, sizeof x, "--sample %s/s0.npy --context %s/c.npy --timestep 5", tmp, tmp);
    RUNF(x, "dimension");
    snprintf(x, sizeof x, "--sample %s/s2b.npy --context %s/c.npy --timestep 5", tmp, tmp);
    RUNF(x, "batch");
    snprintf(x, sizeof x, "--sample %s/s.npy --context %s/cw.npy --timestep 5", tmp, tmp);
    RUNF(x, "context width");
    snprintf(x, sizeof x, "--sample %s/s.npy --context %s/c2d.npy --timestep 5", tmp, tmp);
    RUNF(x, "3-d");
    snprintf(x, sizeof x, "--sample %s/s.npy --context %s/c.npy --timestep 5,6", tmp, tmp);
    RUNF(x, "timestep");
    snprintf(x, sizeof x, "--sample %s/s.npy --context %s/c.npy --timestep abc", tmp, tmp);
    RUNF(x, "timestep");
    snprintf(x, sizeof x, "--sample %s/snan.npy --context %s/c.npy --timestep 5", tmp, tmp);
    RUNF(x, "NaN");
    snprintf(x, sizeof x, "--sample %s/missing.npy --context %s/c.npy --timestep 5", tmp, tmp);
    RUNF(x, "missing.npy");
    snprintf(x, sizeof x, "--sample %s/s.npy --context %s/c.npy --timestep 5 --threads 0", tmp,
             tmp);
    RUNF(x, "--threads");
    snprintf(x, sizeof x, "--sample %s/s.npy --context %s/c.npy --timestep 5 --bogus 1", tmp, tmp);
    RUNF(x, "unknown option");
    snprintf(x, sizeof x, "--sample %s/s.npy --context %s/c.npy", tmp, tmp);
    RUNF(x, "--timestep");
#undef RUNF
    /* the model side: missing, truncated, garbage files; malformed config */
    snprintf(a, sizeof a,
             "run --model %s/nope.safetensors --config sd15 --sample %s/s.npy --context %s/c.npy "
             "--timestep 1 --out %s/o.npy",
             tmp, tmp, tmp, tmp);
    expect_fail(a, "nope.safetensors");
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "head -c 100000 %s/weights.safetensors > %s/trunc.safetensors", m,
             tmp);
    CHECK(system(cmd) == 0, "head");
    snprintf(a, sizeof a,
             "run --model %s/trunc.safetensors --config %s/config.json --sample %s/s.npy "
             "--context %s/c.npy --timestep 1 --out %s/o.npy",
             tmp, m, tmp, tmp, tmp);
    expect_fail(a, "trunc.safetensors");
    snprintf(cmd, sizeof cmd, "printf '{\"in_channels\": 4,' > %s/bad.json", tmp);
    CHECK(system(cmd) == 0, "printf");
    snprintf(a, sizeof a,
             "run --model %s/weights.safetensors --config %s/bad.json --sample %s/s.npy "
             "--context %s/c.npy --timestep 1 --out %s/o.npy",
             m, tmp, tmp, tmp, tmp);
    expect_fail(a, "bad.json");
    snprintf(a, sizeof a,
             "run --synthetic sd15 --model x --sample %s/s.npy --context %s/c.npy --timestep 1 "
             "--out %s/o.npy",
             tmp, tmp, tmp);
    expect_fail(a, "exactly one");
}

static int same_file(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    while (same) {
        int ca = fgetc(fa), cb = fgetc(fb);
        if (ca != cb)
            same = 0;
        if (ca == EOF || cb == EOF)
            break;
    }
    if (fa)
        fclose(fa);
    if (fb)
        fclose(fb);
    return same;
}

static void test_synth_and_info(void)
{
    char a[1024], p[600], ref[600];
    const char *m = t_data("micro");
    const char *dts[3] = {"f32", "f16", "bf16"};
    const char *files[3] = {"weights.safetensors", "weights-fp16.safetensors",
                            "weights-bf16.safetensors"};
    for (int i = 0; i < 3; i++) {
        snprintf(a, sizeof a, "synth --config %s/config.json --dtype %s --out %s/w.safetensors", m,
                 dts[i], tmp);
        result *r = sh(a);
        CHECK(r->status == 0, "synth %s: %s", dts[i], r->err);
        snprintf(p, sizeof p, "%s/w.safetensors", tmp);
        snprintf(ref, sizeof ref, "%s/%s", m, files[i]);
        CHECK(same_file(p, ref), "synth --dtype %s differs from the reference file %s", dts[i],
              files[i]);
    }
    expect_fail("synth --config sd15 --dtype f8 --out /tmp/x.safetensors", "--dtype");
    snprintf(a, sizeof a, "info %s/weights.safetensors", m);
    result *r = sh(a);
    CHECK(r->status == 0, "info: %s", r->err);
    CHECK(strstr(r->out, "tensors: 682") && strstr(r->out, "loads: yes") &&
              strstr(r->out, "unused tensors: 0") && strstr(r->out, "layout: diffusers"),
          "info output: %s", r->out);
    expect_fail("info /nonexistent.safetensors", "nonexistent");
}

/* Weight storage: a float16 file keeps float16 panels (info and bench say
 * so) and gives the same output as with --weights f32; --weights f16 on a
 * float32 file rounds the weights (close to, not equal to, the float32
 * result); bad values are one-line errors. */
static void test_weights_option(void)
{
    char a[1024], p16[600], p32[600];
    const char *m = t_data("micro");
    const char *io = "--sample %s/sample.npy --timestep 1 --context %s/context.npy";
    char in[700];
    snprintf(in, sizeof in, io, m, m);
    snprintf(a, sizeof a, "run --model %s/weights-fp16.safetensors %s --out %s/o16.npy", m, in,
             tmp);
    result *r = sh(a);
    CHECK(r->status == 0, "run fp16: %s", r->err);
    snprintf(a, sizeof a,
             "run --model %s/weights-fp16.safetensors %s --out %s/o32.npy --weights f32", m, in,
             tmp);
    r = sh(a);
    CHECK(r->status == 0, "run fp16 --weights f32: %s", r->err);
    snprintf(p16, sizeof p16, "%s/o16.npy", tmp);
    snprintf(p32, sizeof p32, "%s/o32.npy", tmp);
    CHECK(same_file(p16, p32), "f16 panels and --weights f32 outputs differ");

    snprintf(a, sizeof a, "run --model %s/weights.safetensors %s --out %s/of.npy --weights f16", m,
             in, tmp);
    r = sh(a);
    CHECK(r->status == 0, "run --weights f16: %s", r->err);
    float *y = NULL;
    double *ref = NULL;
    int nd;
    int64_t s[8];
    sdunet_error e;
    snprintf(p16, sizeof p16, "%s/of.npy", tmp);
    snprintf(p32, sizeof p32, "%s/expected_f64.npy", m);
    if (sd_npy_read_f32(p16, &y, &nd, s, &e) == SDUNET_OK &&
        sd_npy_read_f64(p32, &ref, &nd, s, &e) == SDUNET_OK) {
        double rel = t_rel_l2_f32_f64(y, ref, 4 * 16 * 16);
        CHECK(rel > 1e-5 && rel < 4e-3, "--weights f16 on a float32 file: relative L2 %.3g", rel);
    } else {
        CHECK(0, "%s", e.message);
    }
    sd_free(y);
    sd_free(ref);

    snprintf(a, sizeof a, "info %s/weights-fp16.safetensors", m);
    r = sh(a);
    CHECK(r->status == 0 && strstr(r->out, "weights: f16, 2.1 MB packed (as f32: 4.2 MB)"),
          "info fp16: %s", r->out);
    snprintf(a, sizeof a, "info %s/weights-bf16.safetensors", m);
    r = sh(a);
    CHECK(r->status == 0 && strstr(r->out, "weights: bf16, 2.1 MB packed"), "info bf16: %s",
          r->out);
    snprintf(a, sizeof a,
             "bench --synthetic %s/config.json --height 8 --width 8 --context-len 5 --runs 1 "
             "--warmup 0 --threads 1 --weights bf16",
             m);
    r = sh(a);
    CHECK(r->status == 0 && strstr(r->out, "weights=bf16 packed_mb=2.1 "), "bench: %s", r->out);
    snprintf(a, sizeof a,
             "bench --model %s/weights-fp16.safetensors --height 8 --width 8 --context-len 5 "
             "--runs 1 --warmup 0 --threads 1",
             m);
    r = sh(a);
    CHECK(r->status == 0 && strstr(r->out, "weights=f16 packed_mb=2.1 "), "bench fp16: %s", r->out);
    snprintf(a, sizeof a, "run --model %s/weights.safetensors %s --out %s/x.npy --weights f8", m,
             in, tmp);
    expect_fail(a, "--weights");
    snprintf(a, sizeof a, "SDUNET_WEIGHTS=half %s bench --synthetic %s/config.json --runs 1", g_bin,
             m);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "%s >%s/out.txt 2>%s/err.txt </dev/null", a, tmp, tmp);
    int st = system(cmd);
    char errbuf[4096], ep[600];
    snprintf(ep, sizeof ep, "%s/err.txt", tmp);
    read_all(ep, errbuf, sizeof errbuf);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1 && strstr(errbuf, "SDUNET_WEIGHTS"),
          "SDUNET_WEIGHTS=half: status %d, '%s'", st, errbuf);
}

/* --fast (and SDUNET_FAST): in every --help that loads a UNet or a VAE;
 * run --fast with F(4x4) forced on every stride-1 3x3 convolution is
 * within the fast mode's 2e-5 of float64 and differs from the exact run;
 * bench reports fast=1; a bad SDUNET_FAST is refused in one line. */
static void test_fast_option(void)
{
    const char *cmds[] = {"bench", "run", "sample", "decode", "encode-image", "txt2img", "img2img"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char a[64];
        snprintf(a, sizeof a, "%s --help", cmds[i]);
        result *r = sh(a);
        CHECK(r->status == 0 && strstr(r->out, "--fast"), "%s: no --fast", a);
    }
    const char *m = t_data("micro");
    char a[2048], p[600];
    float *y[2] = {NULL, NULL};
    double *ref = NULL;
    int nd;
    int64_t s[8];
    sdunet_error e;
    CHECK(setenv("SDUNET_CONV", "winograd", 1) == 0, "setenv");
    for (int f = 0; f < 2; f++) {
        snprintf(a, sizeof a,
                 "run --model %s/weights.safetensors --sample %s/sample.npy --timestep 1 "
                 "--context %s/context.npy --out %s/fast%d.npy --threads 2%s",
                 m, m, m, tmp, f, f ? " --fast" : "");
        result *r = sh(a);
        CHECK(r->status == 0, "run: %d %s", r->status, r->err);
        snprintf(p, sizeof p, "%s/fast%d.npy", tmp, f);
        CHECK(sd_npy_read_f32(p, &y[f], &nd, s, &e) == SDUNET_OK, "%s", e.message);
    }
    unsetenv("SDUNET_CONV");
    snprintf(p, sizeof p, "%s/expected_f64.npy", m);
    CHECK(sd_npy_read_f64(p, &ref, &nd, s, &e) == SDUNET_OK, "%s", e.message);
    if (y[0] && y[1] && ref) {
        double rel = t_rel_l2_f32_f64(y[1], ref, 4 * 16 * 16);
        printf("  run --fast (F(4x4) forced): relative L2 %.3g\n", rel);
        CHECK(rel <= 2e-5, "run --fast: relative L2 %.3g", rel);
        CHECK(memcmp(y[0], y[1], sizeof(float) * 4 * 16 * 16) != 0, "--fast changed nothing");
    }
    sd_free(y[0]);
    sd_free(y[1]);
    sd_free(ref);
    snprintf(a, sizeof a,
             "bench --synthetic %s/config.json --height 8 --width 8 --context-len 5 --runs 1 "
             "--warmup 0 --threads 1%s",
             m, " --fast");
    result *r = sh(a);
    CHECK(r->status == 0 && strstr(r->out, " fast=1 "), "bench --fast: %s", r->out);
    CHECK(setenv("SDUNET_FAST", "1", 1) == 0, "setenv");
    snprintf(a, sizeof a,
             "bench --synthetic %s/config.json --height 8 --width 8 --context-len 5 --runs 1 "
             "--warmup 0 --threads 1",
             m);
    r = sh(a);
    CHECK(r->status == 0 && strstr(r->out, " fast=1 "), "SDUNET_FAST=1 bench: %s", r->out);
    CHECK(setenv("SDUNET_FAST", "yes", 1) == 0, "setenv");
    expect_fail(a, "SDUNET_FAST");
    unsetenv("SDUNET_FAST");
    r = sh(a);
    CHECK(r->status == 0 && strstr(r->out, " fast=0 "), "bench: %s", r->out);
    const char *v = t_data("vae/vae-tiny");
    snprintf(a, sizeof a,
             "decode --vae %s/weights.safetensors --latent %s/latent.npy --out %s/df.npy --fast", v,
             v, tmp);
    r = sh(a);
    CHECK(r->status == 0 && strstr(r->out, "checksum:"), "decode --fast: %d %s", r->status, r->err);
}

static void test_trace(void)
{
    result *r = sh("trace --config sd15");
    CHECK(r->status == 0, "trace: %s", r->err);
    CHECK(strstr(r->out, "up_blocks.3.resnets.2") && strstr(r->out, "(1,1280,8,8)"),
          "trace output: %s", r->out);
    /* the seed's skip table: index 6 is down_blocks[1]'s downsampler, (640, 16x16) */
    CHECK(strstr(r->out, "6     down_blocks.1.downsamplers.0     (640, 16x16)"), "skip 6");
    r = sh("trace --config sd15 --height 20 --width 27 --batch 2");
    CHECK(r->status == 0 && strstr(r->out, "(1280, 3x4)"), "odd trace: %s", r->out);
    expect_fail("trace --config sd15 --height 0", "--height");
    expect_fail("trace --config nosuchpreset", "nosuchpreset");
}

/* bench --shapes: the UNet's table by shape (the micro model's conv_in),
 * the text encoder's breakdown, and the machine-readable line last. */
static void test_bench_shapes(void)
{
    char a[1024];
    snprintf(a, sizeof a,
             "bench --synthetic %s/config.json --height 8 --width 8 --context-len 5 --runs 1 "
             "--shapes",
             t_data("micro"));
    result *r = sh(a);
    const char *shapes = strstr(r->out, "op kind    shape"), *last = strstr(r->out, "\nbench: ");
    CHECK(r->status == 0 && shapes && last && shapes < last &&
              strstr(shapes, "3x3 conv   8x8x4 -> 32 ") && strstr(shapes, "linear     GEGLU M"),
          "bench --shapes: %d %s %s", r->status, r->out, r->err);
    if (t_small_only())
        return;
    r = sh("bench --text sd15 --runs 1 --warmup 0 --shapes");
    shapes = strstr(r->out, "op kind    shape");
    last = strstr(r->out, "\nbench: model=text");
    CHECK(r->status == 0 && strstr(r->out, "linear ") && !strstr(r->out, "3x3 conv") && shapes &&
              strstr(shapes, "linear     M77 N3072 K768 ") &&
              strstr(shapes, "attention  12 heads, dh 64, 77 queries x 77 keys") && last &&
              shapes < last,
          "bench --text --shapes: %d %s %s", r->status, r->out, r->err);
}

int main(void)
{
    const char *bin = getenv("SDUNET_BIN");
    const char *build = getenv("BUILD");
    snprintf(g_bin, sizeof g_bin, "%s", bin ? bin : "");
    if (!bin)
        snprintf(g_bin, sizeof g_bin, "%s/sdunet", build ? build : "build");
    tmp = t_tmp_dir();
    FILE *f = fopen(g_bin, "rb");
    CHECK(f != NULL, "no CLI binary at %s", g_bin);
    if (f)
        fclose(f);
    RUN(test_help);
    RUN(test_pipeline_commands_fail_cleanly);
    RUN(test_decode_png);
    RUN(test_decode_runs);
    RUN(test_run_micro);
    RUN(test_run_bad_input);
    RUN(test_synth_and_info);
    RUN(test_weights_option);
    RUN(test_trace);
    RUN(test_fast_option);
    RUN(test_bench_shapes);
    return t_summary();
}
