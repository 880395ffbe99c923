/* The VAE (AutoencoderKL) against the float64 references of tests/data/vae:
 * vae-tiny from its weight files (diffusers and LDM names, F32 and F16,
 * folders, deprecated attention names, inferred configuration) and
 * vae-sd-32, the full SD VAE on synthetic weights; the LDM key map against
 * ldm-vae-keymap.json; 8-bit output and input; tiled decoding; bad weights
 * and bad input. */
#include "check.h"

#include "sdunet_vae.h"

#include "engine/kernels.h"
#include "io/json.h"
#include "io/npy.h"
#include "io/tensorfile.h"
#include "vae/vae.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BAR 2e-6 /* rel L2 against float64 */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct arr {
    float *f;
    double *d;
    int nd;
    int64_t sh[SD_MAX_DIMS];
    size_t n;
} arr;

static int load_f32(const char *rel, arr *a)
{
    sdunet_error err;
    memset(a, 0, sizeof *a);
    if (sd_npy_read_f32(t_data(rel), &a->f, &a->nd, a->sh, &err)) {
        CHECK(0, "%s: %s", rel, err.message);
        return 0;
    }
    a->n = 1;
    for (int i = 0; i < a->nd; i++)
        a->n *= (size_t)a->sh[i];
    return 1;
}

static int load_f64(const char *rel, arr *a)
{
    sdunet_error err;
    memset(a, 0, sizeof *a);
    if (sd_npy_read_f64(t_data(rel), &a->d, &a->nd, a->sh, &err)) {
        CHECK(0, "%s: %s", rel, err.message);
        return 0;
    }
    a->n = 1;
    for (int i = 0; i < a->nd; i++)
        a->n *= (size_t)a->sh[i];
    return 1;
}

static void arr_free(arr *a)
{
    sd_free(a->f);
    sd_free(a->d);
    memset(a, 0, sizeof *a);
}

/* A uint8 .npy (version 1, C order) as bytes; NULL on any surprise. */
static uint8_t *load_u8(const char *rel, size_t *n)
{
    size_t len;
    uint8_t *buf = t_read_file(t_data(rel), &len);
    if (!buf || len < 10 || memcmp(buf, "\x93NUMPY", 6) != 0 || buf[6] != 1) {
        free(buf);
        return NULL;
    }
    size_t hl = buf[8] | (size_t)buf[9] << 8;
    if (10 + hl > len || !strstr((char *)buf + 10, "'|u1'")) {
        free(buf);
        return NULL;
    }
    *n = len - 10 - hl;
    uint8_t *out = malloc(*n ? *n : 1);
    if (out)
        memcpy(out, buf + 10 + hl, *n);
    free(buf);
    return out;
}

/* ---- the key map ---- */

static void test_keymap(void)
{
    size_t len;
    char *text = t_read_file(t_data("vae/ldm-vae-keymap.json"), &len);
    CHECK(text != NULL, "no keymap json");
    if (!text)
        return;
    sd_json *j = NULL;
    sdunet_error err;
    CHECK(sd_json_parse(text, len, &j, &err) == SDUNET_OK, "%s", err.message);
    free(text);
    if (!j)
        return;
    const sd_json *pairs = sd_json_get(j, "pairs");
    CHECK(pairs && pairs->type == SD_JSON_ARRAY && pairs->len == 248, "248 pairs");
    int bad = 0, conv_attn = 0;
    for (size_t i = 0; pairs && i < pairs->len; i++) {
        const char *ldm = sd_json_get(&pairs->items[i], "ldm")->string;
        const char *dif = sd_json_get(&pairs->items[i], "diffusers")->string;
        const char *pre = "first_stage_model.";
        CHECK(strncmp(ldm, pre, strlen(pre)) == 0, "%s: prefix", ldm);
        char out[256];
        int ok = sd_vae_diffusers_to_ldm(4, dif, out, sizeof out);
        if (!ok || strcmp(out, ldm + strlen(pre)) != 0) {
            if (bad++ < 5)
                CHECK(0, "%s -> %s, expected %s", dif, ok ? out : "(unmapped)", ldm);
        }
        /* the file-name map with the prefix gives the full name */
        sd_vae_names nm = {.layout = SD_VAE_LAYOUT_LDM, .n_levels = 4};
        snprintf(nm.prefix, sizeof nm.prefix, "%s", pre);
        CHECK(sd_vae_file_name(&nm, dif, out, sizeof out) && strcmp(out, ldm) == 0, "%s", dif);
        const sd_json *ls = sd_json_get(&pairs->items[i], "ldm_shape");
        const sd_json *ds = sd_json_get(&pairs->items[i], "diffusers_shape");
        if (ls->len == 4 && ds->len == 2)
            conv_attn++;
    }
    CHECK(bad == 0, "%d of 248 names mapped wrongly", bad);
    CHECK(conv_attn == 8, "8 attention weights stored as 1x1 convs, got %d", conv_attn);
    sd_json_free(j);
    /* deprecated attention names map too; other names do not */
    char out[128];
    CHECK(sd_vae_diffusers_to_ldm(4, "decoder.mid_block.attentions.0.proj_attn.bias", out,
                                  sizeof out) == 1 &&
              strcmp(out, "decoder.mid.attn_1.proj_out.bias") == 0,
          "%s", out);
    static const char *const not_vae[] = {"conv_in.weight",
                                          "down_blocks.0.resnets.0.norm1.weight",
                                          "encoder.down_blocks.4.resnets.0.conv1.weight",
                                          "decoder.up_blocks.0.attentions.0.to_q.weight",
                                          "encoder.mid_block.resnets.2.conv1.weight",
                                          "decoder.up_blocks.x.resnets.0.conv1.weight"};
    for (size_t i = 0; i < sizeof not_vae / sizeof not_vae[0]; i++)
        CHECK(sd_vae_diffusers_to_ldm(4, not_vae[i], out, sizeof out) == 0, "%s mapped to %s",
              not_vae[i], out);
    /* a short buffer is a failure, not a truncated name */
    CHECK(sd_vae_diffusers_to_ldm(4, "decoder.up_blocks.0.resnets.0.conv1.weight", out, 10) == 0,
          "short buffer");
}

/* ---- the downsampler's convolution ---- */

/* sd_conv3x3_pad0 against F.pad(x, (0, 1, 0, 1)) and a padding-0 3x3
 * convolution written out, for even and odd sizes, strides 1 and 2, every
 * kernel set, with a bias and a residual. */
static void test_conv_pad0(void)
{
    static const int sizes[][4] = {{6, 4, 5, 7}, {7, 5, 3, 17}, {2, 2, 16, 33}, {9, 12, 20, 16}};
    const char *sets[3] = {"portable", "avx2", "avx512"};
    for (int k = 0; k < 3; k++) {
        const sd_kernels *kern = sd_kernels_select(sets[k]);
        if (!kern)
            continue;
        for (size_t c = 0; c < sizeof sizes / sizeof sizes[0]; c++)
            for (int stride = 1; stride <= 2; stride++) {
                const int H = sizes[c][0], W = sizes[c][1], Cin = sizes[c][2], N = sizes[c][3];
                const int Ho = (H - 2) / stride + 1, Wo = (W - 2) / stride + 1;
                float *x = malloc(sizeof(float) * H * W * Cin);
                float *w = malloc(sizeof(float) * N * Cin * 9);
                float *b = malloc(sizeof(float) * N), *res = malloc(sizeof(float) * Ho * Wo * N);
                float *y = malloc(sizeof(float) * Ho * Wo * N);
                t_fill_random(x, (size_t)H * W * Cin, 1 + c);
                t_fill_random(w, (size_t)N * Cin * 9, 2 + c);
                t_fill_random(b, (size_t)N, 3 + c);
                t_fill_random(res, (size_t)Ho * Wo * N, 4 + c);
                sd_packed p;
                CHECK(sd_pack(kern, w, N, Cin, 9, &p) == SDUNET_OK, "pack");
                int fault = 0;
                sd_exec ex = {.kern = kern, .fault = &fault};
                sd_epilogue ep = {.bias = b, .residual = res, .ld_res = N};
                sd_conv3x3_pad0(&ex, x, 1, H, W, Cin, stride, &p, y, &ep);
                double worst = 0;
                for (int oy = 0; oy < Ho; oy++)
                    for (int ox = 0; ox < Wo; ox++)
                        for (int n = 0; n < N; n++) {
                            double acc = b[n] + res[(oy * Wo + ox) * N + n], mag = fabs(acc);
                            for (int ky = 0; ky < 3; ky++)
                                for (int kx = 0; kx < 3; kx++) {
                                    int iy = oy * stride + ky, ix = ox * stride + kx;
                                    if (iy >= H || ix >= W) /* the one-pixel pad */
                                        continue;
                                    for (int ci = 0; ci < Cin; ci++) {
                                        double t = (double)x[(iy * W + ix) * Cin + ci] *
                                                   w[((n * Cin + ci) * 3 + ky) * 3 + kx];
                                        acc += t;
                                        mag += fabs(t);
                                    }
                                }
                            double e = fabs(y[(oy * Wo + ox) * N + n] - acc) / (mag + 1e-30);
                            worst = e > worst ? e : worst;
                        }
                CHECK(!fault && worst < 1e-6, "%s %dx%dx%d -> %d stride %d: error %.3e", sets[k], H,
                      W, Cin, N, stride, worst);
                sd_packed_free(&p);
                free(x);
                free(w);
                free(b);
                free(res);
                free(y);
            }
    }
}

/* ---- golden cases ---- */

typedef struct outputs {
    float *dec;           /* (1, 3, H, W) */
    float *mean, *logvar; /* posterior */
    float *mode, *sample; /* scaled latents */
    size_t n_dec, n_lat;
} outputs;

static void outputs_free(outputs *o)
{
    free(o->dec);
    free(o->mean);
    free(o->logvar);
    free(o->mode);
    free(o->sample);
    memset(o, 0, sizeof *o);
}

/* Decode the case's latent and encode its image (mode and sample). */
static int run_case(sdunet_vae *v, const char *cs, outputs *o, double *dec_s)
{
    memset(o, 0, sizeof *o);
    char p[128];
    arr lat, img, noise;
    snprintf(p, sizeof p, "vae/%s/latent.npy", cs);
    if (!load_f32(p, &lat))
        return 0;
    snprintf(p, sizeof p, "vae/%s/image.npy", cs);
    if (!load_f32(p, &img)) {
        arr_free(&lat);
        return 0;
    }
    snprintf(p, sizeof p, "vae/%s/noise.npy", cs);
    if (!load_f32(p, &noise)) {
        arr_free(&lat);
        arr_free(&img);
        return 0;
    }
    sdunet_vae_info info;
    sdunet_vae_get_info(v, &info);
    const int f = info.factor;
    o->n_dec = (size_t)lat.sh[0] * 3 * lat.sh[2] * f * lat.sh[3] * f;
    o->n_lat = noise.n;
    o->dec = malloc(o->n_dec * 4);
    o->mean = malloc(o->n_lat * 4);
    o->logvar = malloc(o->n_lat * 4);
    o->mode = malloc(o->n_lat * 4);
    o->sample = malloc(o->n_lat * 4);
    sdunet_error err;
    double t0 = now();
    sdunet_status st = sdunet_vae_decode(v, lat.f, (int)lat.sh[0], (int)lat.sh[1], (int)lat.sh[2],
                                         (int)lat.sh[3], o->dec, &err);
    if (dec_s)
        *dec_s = now() - t0;
    CHECK(st == SDUNET_OK, "decode: %s", err.message);
    int ok = st == SDUNET_OK;
    st = sdunet_vae_encode(v, img.f, (int)img.sh[0], (int)img.sh[1], (int)img.sh[2], (int)img.sh[3],
                           NULL, o->mode, o->mean, o->logvar, &err);
    CHECK(st == SDUNET_OK, "encode: %s", err.message);
    ok = ok && st == SDUNET_OK;
    st = sdunet_vae_encode(v, img.f, (int)img.sh[0], (int)img.sh[1], (int)img.sh[2], (int)img.sh[3],
                           noise.f, o->sample, NULL, NULL, &err);
    CHECK(st == SDUNET_OK, "encode (sample): %s", err.message);
    ok = ok && st == SDUNET_OK;
    arr_free(&lat);
    arr_free(&img);
    arr_free(&noise);
    return ok;
}

/* rel L2 of x against the case's X_f64.npy (printed), checked against bar. */
static double check_ref(const char *cs, const char *what, const float *x, size_t n, double bar)
{
    char p[128];
    snprintf(p, sizeof p, "vae/%s/%s_f64.npy", cs, what);
    arr r;
    if (!load_f64(p, &r))
        return INFINITY;
    CHECK(r.n == n, "%s %s: %zu values, reference %zu", cs, what, n, r.n);
    double e = r.n == n ? t_rel_l2_f32_f64(x, r.d, n) : INFINITY;
    printf("  %s %-20s rel L2 %.3e\n", cs, what, e);
    CHECK(e < bar, "%s %s: rel L2 %.3e >= %.1e", cs, what, e, bar);
    arr_free(&r);
    return e;
}

static void check_case(const char *cs, const outputs *o, double dec_bar, double enc_bar)
{
    check_ref(cs, "decode", o->dec, o->n_dec, dec_bar);
    check_ref(cs, "encode_mean", o->mean, o->n_lat, enc_bar);
    check_ref(cs, "encode_logvar", o->logvar, o->n_lat, enc_bar);
    check_ref(cs, "encode_latent_mode", o->mode, o->n_lat, enc_bar);
    check_ref(cs, "encode_latent_sample", o->sample, o->n_lat, enc_bar);
}

/* The 8-bit image equals decode_u8.npy except where the float64 value lies
 * within 0.01 levels of a rounding boundary. */
static void check_u8(const char *cs, const float *dec, int H, int W)
{
    char p[128];
    snprintf(p, sizeof p, "vae/%s/decode_u8.npy", cs);
    size_t n;
    uint8_t *want = load_u8(p, &n);
    CHECK(want && n == (size_t)H * W * 3, "%s: decode_u8.npy", cs);
    snprintf(p, sizeof p, "vae/%s/decode_f64.npy", cs);
    arr ref;
    if (!want || n != (size_t)H * W * 3 || !load_f64(p, &ref)) {
        free(want);
        return;
    }
    uint8_t *got = malloc(n);
    sdunet_error err;
    CHECK(sdunet_vae_image_to_rgb8(dec, 1, H, W, got, &err) == SDUNET_OK, "%s", err.message);
    size_t differ = 0, near = 0, bad = 0;
    for (int c = 0; c < 3; c++)
        for (size_t px = 0; px < (size_t)H * W; px++) {
            double x = ref.d[(size_t)c * H * W + px];
            double v = x / 2 + 0.5;
            v = v < 0 ? 0 : v > 1 ? 1 : v;
            float q = (float)v * 255.0f;
            double d = fabs(q - floor(q) - 0.5);
            near += d < 0.01;
            size_t k = px * 3 + c;
            if (got[k] != want[k]) {
                differ++;
                if (d >= 0.01 || abs((int)got[k] - (int)want[k]) > 1)
                    bad++;
            }
        }
    printf("  %s u8: %zu of %zu values differ (all within 0.01 of a boundary: %s; %zu values "
           "are that close)\n",
           cs, differ, n, bad ? "no" : "yes", near);
    CHECK(bad == 0, "%s: %zu u8 values differ away from a rounding boundary", cs, bad);
    free(got);
    free(want);
    arr_free(&ref);
}

static sdunet_vae *load(const char *path, const char *config)
{
    sdunet_options opt;
    sdunet_options_default(&opt);
    opt.threads = 2;
    sdunet_vae *v = NULL;
    sdunet_error err;
    sdunet_status st = sdunet_vae_load(path, config, &opt, &v, &err);
    CHECK(st == SDUNET_OK, "load %s: %s", path, err.message);
    return v;
}

static outputs g_tiny; /* the diffusers-file results, for the other variants */

static void test_tiny_diffusers(void)
{
    sdunet_vae *v =
        load(t_data("vae/vae-tiny/weights.safetensors"), t_data("vae/vae-tiny/config.json"));
    if (!v)
        return;
    sdunet_vae_info info;
    sdunet_vae_get_info(v, &info);
    CHECK(info.n_params == 658375, "n_params %lld", (long long)info.n_params);
    CHECK(info.factor == 2 && info.latent_channels == 4, "factor %d", info.factor);
    if (run_case(v, "vae-tiny", &g_tiny, NULL)) {
        check_case("vae-tiny", &g_tiny, BAR, BAR);
        check_u8("vae-tiny", g_tiny.dec, 32, 24);
    }
    sdunet_vae_free(v);
}

/* Every intermediate of vae-tiny against trace/ (float32 copies of the
 * float64 values): localises a regression to one block. */
typedef struct tr_ctx {
    const char *dir;
    int idx, bad;
} tr_ctx;

static void on_trace(void *user, const char *name, const float *data, int B, int H, int W, int C)
{
    tr_ctx *t = user;
    if (!data)
        return;
    char rel[160];
    snprintf(rel, sizeof rel, "vae/vae-tiny/trace/%s/%02d_%s.npy", t->dir, t->idx++, name);
    arr r;
    if (!load_f32(rel, &r)) {
        t->bad++;
        return;
    }
    size_t n = (size_t)B * H * W * C;
    CHECK(r.n == n, "%s: %zu values, trace %zu", rel, n, r.n);
    if (r.n == n) {
        float *nchw = malloc(n * 4);
        for (int c = 0; c < C; c++)
            for (int p = 0; p < H * W; p++)
                nchw[(size_t)c * H * W + p] = data[(size_t)p * C + c];
        double e = t_rel_l2_f32(nchw, r.f, n);
        CHECK(e < 2e-6, "%s: rel L2 %.3e", rel, e);
        t->bad += e >= 2e-6;
        free(nchw);
    }
    arr_free(&r);
}

static void test_tiny_trace(void)
{
    sdunet_vae *v = load(t_data("vae/vae-tiny/weights.safetensors"), NULL);
    if (!v)
        return;
    /* the internal graph with a tracer, on the model the API built */
    sd_vae_config cfg;
    sdunet_error err;
    CHECK(sd_vae_config_load(t_data("vae/vae-tiny/config.json"), &cfg, &err) == SDUNET_OK, "%s",
          err.message);
    sd_tensorfile *tf = NULL;
    CHECK(sd_tensorfile_open(t_data("vae/vae-tiny/weights.safetensors"), &tf, &err) == 0, "%s",
          err.message);
    sd_vae_names nm;
    sd_vae_detect(tf, &nm, NULL, 0);
    CHECK(nm.layout == SD_VAE_LAYOUT_DIFFUSERS && nm.prefix[0] == 0, "layout %d", nm.layout);
    sd_weight_source src = {.file = tf};
    const sd_kernels *kern = sd_kernels_select(NULL);
    sd_vae vae;
    CHECK(sd_vae_build(&vae, &cfg, &src, &nm, kern, &err) == SDUNET_OK, "%s", err.message);
    sd_exec ex = {.kern = kern};
    arr lat, img;
    if (load_f32("vae/vae-tiny/latent.npy", &lat) && load_f32("vae/vae-tiny/image.npy", &img)) {
        float *z = malloc(lat.n * 4), *x = malloc(img.n * 4);
        float *y = malloc((size_t)3 * 32 * 24 * 4), *mo = malloc((size_t)8 * 16 * 12 * 4);
        for (int c = 0; c < 4; c++)
            for (int p = 0; p < 16 * 12; p++)
                z[(size_t)p * 4 + c] = lat.f[(size_t)c * 192 + p] / 0.18215f;
        for (int c = 0; c < 3; c++)
            for (int p = 0; p < 32 * 24; p++)
                x[(size_t)p * 3 + c] = img.f[(size_t)c * 768 + p];
        sd_vae_plan plan;
        tr_ctx t = {.dir = "decode"};
        sd_vae_plan_make(&vae, 1, 1, 16, 12, &plan);
        CHECK(sd_vae_plan_alloc(&plan, &err) == SDUNET_OK, "%s", err.message);
        sd_vae_decode_run(&vae, &ex, &plan, z, y, on_trace, &t, NULL);
        CHECK(t.idx == 7 && t.bad == 0, "decode trace: %d points, %d bad", t.idx, t.bad);
        sd_vae_plan_free(&plan);
        tr_ctx te = {.dir = "encode"};
        sd_vae_plan_make(&vae, 0, 1, 32, 24, &plan);
        CHECK(sd_vae_plan_alloc(&plan, &err) == SDUNET_OK, "%s", err.message);
        sd_vae_encode_run(&vae, &ex, &plan, x, mo, on_trace, &te, NULL);
        CHECK(te.idx == 7 && te.bad == 0, "encode trace: %d points, %d bad", te.idx, te.bad);
        sd_vae_plan_free(&plan);
        free(z);
        free(x);
        free(y);
        free(mo);
    }
    arr_free(&lat);
    arr_free(&img);
    sd_vae_release(&vae);
    sd_tensorfile_close(tf);
    sdunet_vae_free(v);
}

static int same(const float *a, const float *b, size_t n)
{
    return a && b && memcmp(a, b, n * 4) == 0;
}

/* o gives exactly g_tiny's results. */
static void check_same_as_tiny(const char *what, const outputs *o)
{
    CHECK(same(o->dec, g_tiny.dec, g_tiny.n_dec), "%s: decode differs", what);
    CHECK(same(o->mean, g_tiny.mean, g_tiny.n_lat), "%s: mean differs", what);
    CHECK(same(o->logvar, g_tiny.logvar, g_tiny.n_lat), "%s: logvar differs", what);
    CHECK(same(o->sample, g_tiny.sample, g_tiny.n_lat), "%s: sample differs", what);
}

/* A copy of a data file into the temporary folder; 0 on success. */
static int copy_to(const char *rel, const char *dst)
{
    size_t len;
    char *b = t_read_file(t_data(rel), &len);
    int rc = b ? t_write_file(dst, b, len) : -1;
    free(b);
    CHECK(rc == 0, "copy %s to %s", rel, dst);
    return rc;
}

static void test_tiny_ldm_and_inferred(void)
{
    /* LDM names under first_stage_model. beside its config.json */
    sdunet_vae *v = load(t_data("vae/vae-tiny/weights-ldm.safetensors"), NULL);
    outputs o;
    if (v && run_case(v, "vae-tiny", &o, NULL)) {
        check_same_as_tiny("ldm", &o);
        outputs_free(&o);
    }
    sdunet_vae_free(v);
    /* alone in a folder: the configuration inferred from the shapes */
    mkdir(t_tmp("infer"), 0700);
    static const char *const files[2] = {"weights.safetensors", "weights-ldm.safetensors"};
    for (int i = 0; i < 2; i++) {
        char rel[96];
        snprintf(rel, sizeof rel, "vae/vae-tiny/%s", files[i]);
        if (copy_to(rel, t_tmp("infer/%s", files[i])))
            continue;
        v = load(t_tmp("infer/%s", files[i]), NULL);
        if (v && run_case(v, "vae-tiny", &o, NULL)) {
            check_same_as_tiny(files[i], &o);
            outputs_free(&o);
        }
        sdunet_vae_free(v);
    }
    /* another model's config.json beside the file is not the VAE's */
    if (!copy_to("tiny/config.json", t_tmp("infer/config.json"))) {
        v = load(t_tmp("infer/weights.safetensors"), NULL);
        if (v && run_case(v, "vae-tiny", &o, NULL)) {
            check_same_as_tiny("beside a UNet config", &o);
            outputs_free(&o);
        }
        sdunet_vae_free(v);
    }
    /* an AutoencoderKL config.json beside the file is */
    const char *cfg = "{\"_class_name\": \"AutoencoderKL\", \"block_out_channels\": [32, 64], "
                      "\"scaling_factor\": 0.5}";
    if (!t_write_file(t_tmp("infer/config.json"), cfg, strlen(cfg))) {
        v = load(t_tmp("infer/weights.safetensors"), NULL);
        sdunet_vae_info info;
        sdunet_vae_get_info(v, &info);
        CHECK(v && info.scaling_factor == 0.5f, "scaling factor %g", info.scaling_factor);
        sdunet_vae_free(v);
    }
}

/* Rewrites a weight file: names through rename() (NULL: kept), data as
 * dtype (F32 or F16); drop names a tensor to leave out, reshape gives one
 * a wrong shape. Returns 0 on success. */
typedef const char *(*rename_fn)(const char *name, char *buf, size_t len);

static int rewrite(const char *src, const char *dst, rename_fn rn, sd_dtype dtype, const char *drop,
                   const char *reshape)
{
    sd_tensorfile *tf;
    sdunet_error err;
    if (sd_tensorfile_open(src, &tf, &err)) {
        CHECK(0, "%s", err.message);
        return -1;
    }
    sd_tensor_info *t = calloc(tf->count, sizeof *t);
    size_t n = 0;
    int rc = 0;
    for (size_t i = 0; i < tf->count; i++) {
        const sd_tensor_info *s = &tf->tensors[i];
        if (drop && strcmp(s->name, drop) == 0)
            continue;
        char buf[256];
        const char *name = rn ? rn(s->name, buf, sizeof buf) : s->name;
        t[n] = *s;
        t[n].name = strdup(name);
        float *f = malloc(s->numel * 4 + 4);
        sd_tensor_to_f32(s, f, &err);
        if (dtype == SD_DT_F16 || dtype == SD_DT_BF16) {
            uint16_t *h = malloc(s->numel * 2 + 2);
            for (size_t k = 0; k < s->numel; k++)
                h[k] = dtype == SD_DT_F16 ? sd_f32_to_f16(f[k]) : sd_f32_to_bf16(f[k]);
            free(f);
            t[n].data = h;
            t[n].dtype = dtype;
            t[n].nbytes = s->numel * 2;
        } else {
            t[n].data = f;
            t[n].dtype = SD_DT_F32;
            t[n].nbytes = s->numel * 4;
        }
        if (reshape && strcmp(s->name, reshape) == 0 && s->ndim == 4) {
            /* (O, I, kh, kw) -> (I, O, kh, kw): same size, wrong shape */
            t[n].shape[0] = s->shape[1];
            t[n].shape[1] = s->shape[0];
        }
        n++;
    }
    if (sd_safetensors_write(dst, t, n, NULL, &err)) {
        CHECK(0, "%s", err.message);
        rc = -1;
    }
    for (size_t i = 0; i < n; i++) {
        free(t[i].name);
        free((void *)t[i].data);
    }
    free(t);
    sd_tensorfile_close(tf);
    return rc;
}

static const char *to_deprecated(const char *name, char *buf, size_t len)
{
    static const char *const from[] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."};
    static const char *const to[] = {".query.", ".key.", ".value.", ".proj_attn."};
    for (int i = 0; i < 4; i++) {
        const char *p = strstr(name, from[i]);
        if (p) {
            snprintf(buf, len, "%.*s%s%s", (int)(p - name), name, to[i], p + strlen(from[i]));
            return buf;
        }
    }
    return name;
}

static const char *strip_ldm_prefix(const char *name, char *buf, size_t len)
{
    const char *pre = "first_stage_model.";
    snprintf(buf, len, "%s", strncmp(name, pre, strlen(pre)) == 0 ? name + strlen(pre) : name);
    return buf;
}

static void test_tiny_files(void)
{
    char dif[1024], ldm[1024]; /* t_data's buffers rotate */
    snprintf(dif, sizeof dif, "%s", t_data("vae/vae-tiny/weights.safetensors"));
    snprintf(ldm, sizeof ldm, "%s", t_data("vae/vae-tiny/weights-ldm.safetensors"));
    outputs o;
    /* deprecated attention names */
    if (!rewrite(dif, t_tmp("old-attn.safetensors"), to_deprecated, SD_DT_F32, NULL, NULL)) {
        sdunet_vae *v = load(t_tmp("old-attn.safetensors"), t_data("vae/vae-tiny/config.json"));
        if (v && run_case(v, "vae-tiny", &o, NULL)) {
            check_same_as_tiny("query/key/value/proj_attn names", &o);
            outputs_free(&o);
        }
        sdunet_vae_free(v);
    }
    /* a standalone LDM VAE file (no prefix) */
    if (!rewrite(ldm, t_tmp("ldm-plain.safetensors"), strip_ldm_prefix, SD_DT_F32, NULL, NULL)) {
        sdunet_vae *v = load(t_tmp("ldm-plain.safetensors"), NULL);
        if (v && run_case(v, "vae-tiny", &o, NULL)) {
            check_same_as_tiny("standalone LDM file", &o);
            outputs_free(&o);
        }
        sdunet_vae_free(v);
    }
    /* a diffusers pipeline folder, F32 and the fp16 variant; LDM in F16 */
    mkdir(t_tmp("pipe"), 0700);
    mkdir(t_tmp("pipe/vae"), 0700);
    outputs h1 = {0}, h2 = {0};
    if (!rewrite(dif, t_tmp("pipe/vae/diffusion_pytorch_model.safetensors"), NULL, SD_DT_F32, NULL,
                 NULL) &&
        !rewrite(dif, t_tmp("pipe/vae/diffusion_pytorch_model.fp16.safetensors"), NULL, SD_DT_F16,
                 NULL, NULL) &&
        !rewrite(ldm, t_tmp("ldm16.safetensors"), NULL, SD_DT_F16, NULL, NULL)) {
        size_t len;
        char *cfg = t_read_file(t_data("vae/vae-tiny/config.json"), &len);
        CHECK(cfg && !t_write_file(t_tmp("pipe/vae/config.json"), cfg, len), "config copy");
        free(cfg);
        sdunet_vae *v = load(t_tmp("pipe"), NULL);
        if (v && run_case(v, "vae-tiny", &o, NULL)) {
            check_same_as_tiny("diffusers folder", &o);
            outputs_free(&o);
        }
        sdunet_vae_free(v);
        sdunet_options opt;
        sdunet_options_default(&opt);
        opt.variant = "fp16";
        sdunet_error err;
        v = NULL;
        CHECK(sdunet_vae_load(t_tmp("pipe"), NULL, &opt, &v, &err) == SDUNET_OK, "%s", err.message);
        if (v)
            run_case(v, "vae-tiny", &h1, NULL);
        sdunet_vae_free(v);
        v = load(t_tmp("ldm16.safetensors"), NULL);
        if (v)
            run_case(v, "vae-tiny", &h2, NULL);
        sdunet_vae_free(v);
        if (h1.dec && h2.dec) {
            CHECK(same(h1.dec, h2.dec, h1.n_dec) && same(h1.mean, h2.mean, h1.n_lat) &&
                      same(h1.sample, h2.sample, h1.n_lat),
                  "fp16 diffusers and fp16 LDM differ");
            /* fp16 weights: a different model, close to the float32 one */
            double e = t_rel_l2_f32(h1.dec, g_tiny.dec, h1.n_dec);
            double em = t_rel_l2_f32(h1.mean, g_tiny.mean, h1.n_lat);
            printf("  fp16 weights vs f32: decode rel %.2e, mean rel %.2e\n", e, em);
            CHECK(e > 0 && e < 5e-3 && em > 0 && em < 5e-3, "fp16 vs f32: %.3e %.3e", e, em);
        }
    }
    outputs_free(&h1);
    outputs_free(&h2);
    /* bfloat16 LDM single-file names */
    if (!rewrite(ldm, t_tmp("ldm-bf16.safetensors"), NULL, SD_DT_BF16, NULL, NULL)) {
        sdunet_vae *v = load(t_tmp("ldm-bf16.safetensors"), NULL);
        if (v && run_case(v, "vae-tiny", &o, NULL)) {
            double e = t_rel_l2_f32(o.dec, g_tiny.dec, o.n_dec);
            printf("  bf16 weights vs f32: decode rel %.2e\n", e);
            CHECK(e > 0 && e < 3e-2, "bf16 vs f32: %.3e", e);
            outputs_free(&o);
        }
        sdunet_vae_free(v);
    }
}

static void test_bad_weights(void)
{
    char dif[1024], cfg[1024];
    snprintf(dif, sizeof dif, "%s", t_data("vae/vae-tiny/weights.safetensors"));
    snprintf(cfg, sizeof cfg, "%s", t_data("vae/vae-tiny/config.json"));
    sdunet_vae *v = NULL;
    sdunet_error err;
    /* a missing tensor */
    if (!rewrite(dif, t_tmp("missing.safetensors"), NULL, SD_DT_F32,
                 "decoder.up_blocks.1.resnets.0.conv_shortcut.weight", NULL)) {
        sdunet_status st = sdunet_vae_load(t_tmp("missing.safetensors"), cfg, NULL, &v, &err);
        CHECK(st == SDUNET_E_WEIGHTS && !v, "missing tensor: %d", st);
        CHECK(strstr(err.message, "decoder.up_blocks.1.resnets.0.conv_shortcut.weight"), "%s",
              err.message);
    }
    /* the same tensor missing from the LDM file names its LDM name */
    if (!rewrite(t_data("vae/vae-tiny/weights-ldm.safetensors"), t_tmp("missing-ldm.safetensors"),
                 NULL, SD_DT_F32, "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
                 NULL)) {
        sdunet_status st = sdunet_vae_load(t_tmp("missing-ldm.safetensors"), cfg, NULL, &v, &err);
        CHECK(st == SDUNET_E_WEIGHTS && !v, "missing LDM tensor: %d", st);
        CHECK(strstr(err.message, "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight"),
              "%s", err.message);
    }
    /* a mis-shaped tensor */
    if (!rewrite(dif, t_tmp("shape.safetensors"), NULL, SD_DT_F32, NULL,
                 "encoder.down_blocks.1.resnets.0.conv1.weight")) {
        sdunet_status st = sdunet_vae_load(t_tmp("shape.safetensors"), cfg, NULL, &v, &err);
        CHECK(st == SDUNET_E_WEIGHTS && !v, "mis-shaped tensor: %d", st);
        CHECK(strstr(err.message, "encoder.down_blocks.1.resnets.0.conv1.weight has shape"), "%s",
              err.message);
    }
    /* a file with no VAE at all */
    sd_tensor_info t = {.name = "conv_in.weight", .dtype = SD_DT_F32, .ndim = 1};
    float one = 1;
    t.shape[0] = 1;
    t.numel = 1;
    t.data = &one;
    t.nbytes = 4;
    if (sd_safetensors_write(t_tmp("novae.safetensors"), &t, 1, NULL, &err) == SDUNET_OK) {
        sdunet_status st = sdunet_vae_load(t_tmp("novae.safetensors"), NULL, NULL, &v, &err);
        CHECK(st == SDUNET_E_WEIGHTS && !v, "no VAE: %d", st);
        CHECK(strstr(err.message, "no VAE tensors") &&
                  strstr(err.message, "decoder.conv_in.weight"),
              "%s", err.message);
    }
    /* a folder without VAE weights: the file is missing (as for the UNet
     * and the text encoder) */
    mkdir(t_tmp("empty"), 0700);
    CHECK(sdunet_vae_load(t_tmp("empty"), NULL, NULL, &v, &err) == SDUNET_E_IO &&
              strstr(err.message, "no VAE weights in this folder"),
          "%s", err.message);
    CHECK(sdunet_vae_load(t_tmp("nonexistent"), NULL, NULL, &v, &err) == SDUNET_E_IO, "%s",
          err.message);
    CHECK(sdunet_vae_load_synthetic("sdxl", NULL, &v, &err) == SDUNET_E_CONFIG, "%s", err.message);
}

static void test_bad_input(void)
{
    sdunet_vae *v =
        load(t_data("vae/vae-tiny/weights.safetensors"), t_data("vae/vae-tiny/config.json"));
    if (!v)
        return;
    float lat[4 * 4 * 4] = {0}, img[3 * 8 * 8] = {0}, out[3 * 8 * 8], m[4 * 4 * 4];
    sdunet_error err;
    CHECK(sdunet_vae_decode(v, lat, 1, 4, 4, 4, out, &err) == SDUNET_OK, "%s", err.message);
    lat[5] = NAN;
    CHECK(sdunet_vae_decode(v, lat, 1, 4, 4, 4, out, &err) == SDUNET_E_NONFINITE, "NaN latent");
    lat[5] = INFINITY;
    CHECK(sdunet_vae_decode(v, lat, 1, 4, 4, 4, out, &err) == SDUNET_E_NONFINITE, "Inf latent");
    lat[5] = 0;
    CHECK(sdunet_vae_decode(v, lat, 1, 3, 4, 4, out, &err) == SDUNET_E_SHAPE, "channels");
    CHECK(sdunet_vae_decode(v, lat, 0, 4, 4, 4, out, &err) == SDUNET_E_SHAPE, "batch");
    CHECK(sdunet_vae_decode(v, lat, 1, 4, 0, 4, out, &err) == SDUNET_E_SHAPE, "height");
    /* more pixels than an int counts: refused before anything is allocated */
    CHECK(sdunet_vae_decode(v, lat, 1024, 4, 8192, 8192, out, &err) == SDUNET_E_SHAPE, "%s",
          err.message);
    CHECK(sdunet_vae_encode(v, img, 1024, 3, 16384, 16384, NULL, m, NULL, NULL, &err) ==
              SDUNET_E_SHAPE,
          "%s", err.message);
    CHECK(sdunet_vae_decode(v, NULL, 1, 4, 4, 4, out, &err) == SDUNET_E_INVALID_ARG, "NULL");
    CHECK(sdunet_vae_decode(v, lat, 1, 4, 2, 2, lat, &err) == SDUNET_E_INVALID_ARG, "overlap");
    img[7] = NAN;
    CHECK(sdunet_vae_encode(v, img, 1, 3, 8, 8, NULL, m, NULL, NULL, &err) == SDUNET_E_NONFINITE,
          "NaN image");
    img[7] = 0;
    CHECK(sdunet_vae_encode(v, img, 1, 3, 8, 8, NULL, NULL, NULL, NULL, &err) ==
              SDUNET_E_INVALID_ARG,
          "no outputs");
    CHECK(sdunet_vae_encode(v, img, 1, 3, 1, 8, NULL, m, NULL, NULL, &err) == SDUNET_E_SHAPE,
          "image below the factor");
    CHECK(sdunet_vae_encode(v, img, 1, 3, 8, 8, NULL, m, NULL, NULL, &err) == SDUNET_OK, "%s",
          err.message);
    /* odd sizes floor as PyTorch's strided convolution does */
    int lh, lw;
    sdunet_vae_latent_size(v, 7, 8, &lh, &lw);
    CHECK(lh == 3 && lw == 4, "latent size %dx%d", lh, lw);
    CHECK(sdunet_vae_encode(v, img, 1, 3, 7, 8, NULL, m, NULL, NULL, &err) == SDUNET_OK, "%s",
          err.message);
    sdunet_vae_free(v);
    /* allow_nonfinite lets NaN through */
    sdunet_options opt;
    sdunet_options_default(&opt);
    opt.allow_nonfinite = 1;
    opt.threads = 1;
    CHECK(sdunet_vae_load(t_data("vae/vae-tiny/weights.safetensors"), NULL, &opt, &v, &err) ==
              SDUNET_OK,
          "%s", err.message);
    lat[5] = NAN;
    CHECK(v && sdunet_vae_decode(v, lat, 1, 4, 4, 4, out, &err) == SDUNET_OK, "%s", err.message);
    CHECK(isnan(out[0]), "NaN spreads through the attention");
    sdunet_vae_free(v);
}

/* A batch of two gives each row's batch-1 result (odd sizes, so the
 * downsamplers floor). */
static void test_batch(void)
{
    sdunet_vae *v = load(t_data("vae/vae-tiny/weights.safetensors"), NULL);
    if (!v)
        return;
    enum { H = 7, W = 5, N1 = 4 * H * W, O1 = 3 * 2 * H * 2 * W };
    float lat[2 * N1], img[2 * O1], one[O1];
    t_fill_random(lat, 2 * N1, 11);
    sdunet_error err;
    CHECK(sdunet_vae_decode(v, lat, 2, 4, H, W, img, &err) == SDUNET_OK, "%s", err.message);
    for (int b = 0; b < 2; b++) {
        CHECK(sdunet_vae_decode(v, lat + b * N1, 1, 4, H, W, one, &err) == SDUNET_OK, "%s",
              err.message);
        double e = t_rel_l2_f32(img + b * O1, one, O1);
        CHECK(e < 1e-6, "decode row %d: rel %.3e", b, e);
    }
    enum { IH = 13, IW = 9, I1 = 3 * IH * IW, L1 = 4 * 6 * 4 };
    float x[2 * I1], m2[2 * L1], m1[L1];
    t_fill_random(x, 2 * I1, 12);
    int lh, lw;
    sdunet_vae_latent_size(v, IH, IW, &lh, &lw);
    CHECK(lh == 6 && lw == 4, "latent %dx%d", lh, lw);
    CHECK(sdunet_vae_encode(v, x, 2, 3, IH, IW, NULL, NULL, m2, NULL, &err) == SDUNET_OK, "%s",
          err.message);
    for (int b = 0; b < 2; b++) {
        CHECK(sdunet_vae_encode(v, x + b * I1, 1, 3, IH, IW, NULL, NULL, m1, NULL, &err) ==
                  SDUNET_OK,
              "%s", err.message);
        double e = t_rel_l2_f32(m2 + b * L1, m1, L1);
        CHECK(e < 1e-6, "encode row %d: rel %.3e", b, e);
    }
    sdunet_vae_free(v);
}

/* 8-bit input: the preprocessing table bit for bit, and the round trip of
 * decode_u8.npy through the encoder. */
static void test_u8_input(void)
{
    arr table;
    if (!load_f32("vae/vae-tiny/preprocess_u8_table.npy", &table))
        return;
    uint8_t all[256 * 3];
    for (int i = 0; i < 256; i++)
        all[3 * i] = all[3 * i + 1] = all[3 * i + 2] = (uint8_t)i;
    float img[3 * 256];
    sdunet_error err;
    CHECK(sdunet_vae_rgb8_to_image(all, 1, 1, 256, img, &err) == SDUNET_OK, "%s", err.message);
    CHECK(table.n == 256 && same(img, table.f, 256) && same(img + 512, table.f, 256),
          "8-bit preprocessing differs from the table");
    arr_free(&table);
    size_t n;
    uint8_t *u8 = load_u8("vae/vae-tiny/decode_u8.npy", &n);
    CHECK(u8 && n == 32 * 24 * 3, "decode_u8");
    sdunet_vae *v = load(t_data("vae/vae-tiny/weights.safetensors"), NULL);
    if (u8 && v) {
        float x[3 * 32 * 24], mean[4 * 16 * 12];
        CHECK(sdunet_vae_rgb8_to_image(u8, 1, 32, 24, x, &err) == SDUNET_OK, "%s", err.message);
        CHECK(sdunet_vae_encode(v, x, 1, 3, 32, 24, NULL, NULL, mean, NULL, &err) == SDUNET_OK,
              "%s", err.message);
        check_ref("vae-tiny", "u8_encode_mean", mean, 4 * 16 * 12, BAR);
    }
    /* clamping, rounding half to even, NaN */
    float px[3] = {-3.0f, 1.0f / 255.0f, NAN}; /* 0.5 + 0.5/255 -> 128.0 */
    uint8_t q[3];
    CHECK(sdunet_vae_image_to_rgb8(px, 1, 1, 1, q, &err) == SDUNET_OK, "%s", err.message);
    CHECK(q[0] == 0 && q[2] == 0 && q[1] == 128, "%d %d %d", q[0], q[1], q[2]);
    free(u8);
    sdunet_vae_free(v);
}

/* diffusers' tiled decoding on vae-tiny with tiles of 8 latent pixels
 * (sample_size 16): 3 x 2 tiles over the 16 x 12 latent. */
static void test_tiled(void)
{
    size_t len;
    char *cfg = t_read_file(t_data("vae/vae-tiny/config.json"), &len);
    CHECK(cfg != NULL, "config");
    if (!cfg)
        return;
    char *p = strstr(cfg, "\"sample_size\": 32");
    CHECK(p != NULL, "sample_size in config");
    if (p)
        memcpy(p, "\"sample_size\": 16", 17);
    CHECK(!t_write_file(t_tmp("tile16.json"), cfg, len), "write");
    free(cfg);
    sdunet_vae *v = load(t_data("vae/vae-tiny/weights.safetensors"), t_tmp("tile16.json"));
    arr lat;
    if (!v || !load_f32("vae/vae-tiny/latent.npy", &lat)) {
        sdunet_vae_free(v);
        return;
    }
    float *full = malloc(3 * 32 * 24 * 4), *tiled = malloc(3 * 32 * 24 * 4);
    float *corner = malloc(3 * 16 * 16 * 4), lat8[4 * 8 * 8];
    sdunet_error err;
    CHECK(sdunet_vae_decode(v, lat.f, 1, 4, 16, 12, full, &err) == SDUNET_OK, "%s", err.message);
    CHECK(sdunet_vae_set_tiling(v, 1, &err) == SDUNET_OK, "%s", err.message);
    CHECK(sdunet_vae_decode(v, lat.f, 1, 4, 16, 12, tiled, &err) == SDUNET_OK, "%s", err.message);
    for (int c = 0; c < 4; c++)
        for (int y = 0; y < 8; y++)
            for (int x = 0; x < 8; x++)
                lat8[(c * 8 + y) * 8 + x] = lat.f[(c * 16 + y) * 12 + x];
    /* an 8x8 latent is one tile: the untiled decode */
    CHECK(sdunet_vae_decode(v, lat8, 1, 4, 8, 8, corner, &err) == SDUNET_OK, "%s", err.message);
    /* the first tile's unblended 12 x 12 corner is that tile's decode */
    int ok = 1;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < 12; y++)
            for (int x = 0; x < 12; x++)
                ok &= tiled[(c * 32 + y) * 24 + x] == corner[(c * 16 + y) * 16 + x];
    CHECK(ok, "top-left tile differs from its own decode");
    double e = t_rel_l2_f32(tiled, full, 3 * 32 * 24);
    arr ref;
    double er = INFINITY;
    if (load_f64("vae/vae-tiny/decode_f64.npy", &ref)) {
        er = t_rel_l2_f32_f64(tiled, ref.d, 3 * 32 * 24);
        arr_free(&ref);
    }
    printf("  tiled (8-latent tiles) vs untiled: rel L2 %.3e (vs float64 untiled %.3e)\n", e, er);
    CHECK(e > 1e-3 && e < 1, "tiling changes the output by rel %.3e", e);
    free(full);
    free(tiled);
    free(corner);
    arr_free(&lat);
    sdunet_vae_free(v);
}

/* The full SD VAE (synthetic weights from the spec) at latent 32x32. */
static void test_sd32(void)
{
    if (t_small_only()) {
        printf("  skipped (SDUNET_TEST_SMALL)\n");
        return;
    }
    sdunet_options opt;
    sdunet_options_default(&opt);
    opt.threads = 2;
    sdunet_vae *v = NULL;
    sdunet_error err;
    double t0 = now();
    CHECK(sdunet_vae_load_synthetic("sd15", &opt, &v, &err) == SDUNET_OK, "%s", err.message);
    if (!v)
        return;
    double tl = now() - t0;
    sdunet_vae_info info;
    sdunet_vae_get_info(v, &info);
    CHECK(info.n_params == 83653863, "n_params %lld", (long long)info.n_params);
    outputs o;
    double td = 0;
    if (run_case(v, "vae-sd-32", &o, &td)) {
        printf("  vae-sd-32: build %.2f s, decode (1,4,32,32) -> (1,3,256,256) %.2f s on %d "
               "threads\n",
               tl, td, info.threads);
        /* float32 PyTorch: decode 3.8e-6, encode 3.4e-6 (mean), 4.0e-6 (logvar) */
        check_case("vae-sd-32", &o, 3.76e-6, 3.39e-6);
        check_u8("vae-sd-32", o.dec, 256, 256);
        outputs_free(&o);
    }
    sdunet_vae_free(v);
}

/* The CLI's decode and encode-image give the API's results (after
 * test_tiny_files, which makes the pipeline folder). */
/* Our own case from diffusers 0.25.1 (tests/gen/make_vae_cases.py): 8
 * GroupNorm groups, batch 2, 40x56 latents (attention over 2240 positions);
 * references are float32 copies of the float64 results. */
static void test_gen_small(void)
{
    sdunet_vae *v = load(t_data("vae/vae-gen-small/weights.safetensors"),
                         t_data("vae/vae-gen-small/config.json"));
    arr lat, img, noise, ref;
    if (!v || !load_f32("vae/vae-gen-small/latent.npy", &lat) ||
        !load_f32("vae/vae-gen-small/image.npy", &img) ||
        !load_f32("vae/vae-gen-small/noise.npy", &noise)) {
        sdunet_vae_free(v);
        return;
    }
    const size_t n_dec = 2 * 3 * 80 * 112, n_lat = 2 * 4 * 40 * 56;
    float *dec = malloc(n_dec * 4), *mean = malloc(n_lat * 4), *logvar = malloc(n_lat * 4),
          *mode = malloc(n_lat * 4), *sample = malloc(n_lat * 4);
    sdunet_error err;
    CHECK(sdunet_vae_decode(v, lat.f, 2, 4, 40, 56, dec, &err) == SDUNET_OK, "%s", err.message);
    CHECK(sdunet_vae_encode(v, img.f, 2, 3, 80, 112, NULL, mode, mean, logvar, &err) == SDUNET_OK,
          "%s", err.message);
    CHECK(sdunet_vae_encode(v, img.f, 2, 3, 80, 112, noise.f, sample, NULL, NULL, &err) ==
              SDUNET_OK,
          "%s", err.message);
    static const char *const names[] = {"decode", "encode_mean", "encode_logvar",
                                        "encode_latent_mode", "encode_latent_sample"};
    float *outs[] = {dec, mean, logvar, mode, sample};
    for (int i = 0; i < 5; i++) {
        char p[128];
        snprintf(p, sizeof p, "vae/vae-gen-small/%s.npy", names[i]);
        if (!load_f32(p, &ref))
            continue;
        size_t n = i == 0 ? n_dec : n_lat;
        double e = ref.n == n ? t_rel_l2_f32(outs[i], ref.f, n) : INFINITY;
        printf("  vae-gen-small %-20s rel L2 %.3e\n", names[i], e);
        CHECK(e < BAR, "vae-gen-small %s: rel L2 %.3e", names[i], e);
        arr_free(&ref);
    }
    for (int i = 0; i < 5; i++)
        free(outs[i]);
    arr_free(&lat);
    arr_free(&img);
    arr_free(&noise);
    sdunet_vae_free(v);
}

/* Fast mode (sdunet_options.fast = 1): every golden case within 2e-5 of
 * float64, with the automatic choice of F(4x4) and (the small cases) with
 * F(4x4) forced on every stride-1 3x3 convolution (SDUNET_CONV=winograd),
 * where the output must differ from the exact mode's. Measured (avx512,
 * decode / encode mean; automatic, then forced): vae-tiny 1.4e-6 / 1.4e-6,
 * 1.7e-6 / 2.5e-6; vae-sd-32 2.5e-6 / 2.3e-6 (exact mode 8.4e-7 / 8.2e-7);
 * vae-gen-small 1.0e-6 / 1.2e-6, 1.5e-6 / 1.7e-6. */
static sdunet_vae *load_fast(const char *cs, int fast)
{
    sdunet_options opt;
    sdunet_options_default(&opt);
    opt.threads = 2;
    opt.fast = fast;
    sdunet_vae *v = NULL;
    sdunet_error err;
    char w[128], c[128];
    snprintf(w, sizeof w, "vae/%s/weights.safetensors", cs);
    snprintf(c, sizeof c, "vae/%s/config.json", cs);
    sdunet_status st = strcmp(cs, "vae-sd-32") == 0
                           ? sdunet_vae_load_synthetic("sd15", &opt, &v, &err)
                           : sdunet_vae_load(t_data(w), t_data(c), &opt, &v, &err);
    CHECK(st == SDUNET_OK, "load %s: %s", cs, err.message);
    return v;
}

static void test_fast_mode(void)
{
    const double bar = 2e-5;
    for (int forced = 0; forced < 2; forced++) {
        if (forced)
            CHECK(setenv("SDUNET_CONV", "winograd", 1) == 0, "setenv");
        printf("  fast mode, %s\n", forced ? "F(4x4) forced" : "automatic choice");
        static const char *const cases[] = {"vae-tiny", "vae-sd-32"};
        for (int c = 0; c < 2; c++) {
            if (c == 1 && (forced || t_small_only()))
                continue;
            sdunet_vae *v = load_fast(cases[c], 1), *ve = forced ? load_fast(cases[c], 0) : NULL;
            outputs o, oe;
            if (v && run_case(v, cases[c], &o, NULL)) {
                check_case(cases[c], &o, bar, bar);
                if (ve && run_case(ve, cases[c], &oe, NULL)) {
                    CHECK(!same(o.dec, oe.dec, o.n_dec), "%s: fast decode is the exact one",
                          cases[c]);
                    outputs_free(&oe);
                }
                outputs_free(&o);
            }
            sdunet_vae_free(v);
            sdunet_vae_free(ve);
        }
        /* vae-gen-small: batch 2, 40x56 latents; float32 copies of float64 references */
        sdunet_vae *v = load_fast("vae-gen-small", 1);
        arr lat, img, ref;
        if (v && load_f32("vae/vae-gen-small/latent.npy", &lat)) {
            if (load_f32("vae/vae-gen-small/image.npy", &img)) {
                const size_t n_dec = 2 * 3 * 80 * 112, n_lat = 2 * 4 * 40 * 56;
                float *dec = malloc(n_dec * 4), *mean = malloc(n_lat * 4);
                sdunet_error err;
                CHECK(dec && mean &&
                          sdunet_vae_decode(v, lat.f, 2, 4, 40, 56, dec, &err) == SDUNET_OK &&
                          sdunet_vae_encode(v, img.f, 2, 3, 80, 112, NULL, NULL, mean, NULL,
                                            &err) == SDUNET_OK,
                      "vae-gen-small fast: %s", err.message);
                static const char *const names[] = {"decode", "encode_mean"};
                const float *outs[] = {dec, mean};
                for (int i = 0; i < 2 && dec && mean; i++) {
                    char p[128];
                    snprintf(p, sizeof p, "vae/vae-gen-small/%s.npy", names[i]);
                    if (!load_f32(p, &ref))
                        continue;
                    size_t n = i == 0 ? n_dec : n_lat;
                    double e = ref.n == n ? t_rel_l2_f32(outs[i], ref.f, n) : INFINITY;
                    printf("  vae-gen-small %-20s rel L2 %.3e\n", names[i], e);
                    CHECK(e < bar, "vae-gen-small fast %s: rel L2 %.3e", names[i], e);
                    arr_free(&ref);
                }
                free(dec);
                free(mean);
                arr_free(&img);
            }
            arr_free(&lat);
        }
        sdunet_vae_free(v);
    }
    unsetenv("SDUNET_CONV");
    sdunet_options opt;
    sdunet_options_default(&opt);
    opt.fast = -1;
    sdunet_vae *v = NULL;
    sdunet_error err;
    CHECK(sdunet_vae_load(t_data("vae/vae-tiny/weights.safetensors"), NULL, &opt, &v, &err) ==
                  SDUNET_E_INVALID_ARG &&
              !v && strstr(err.message, "fast"),
          "fast = -1 accepted");
}

static void test_cli(void)
{
    const char *bin = getenv("SDUNET_BIN"), *build = getenv("BUILD");
    char exe[512];
    if (bin)
        snprintf(exe, sizeof exe, "%s", bin);
    else
        snprintf(exe, sizeof exe, "%s/sdunet", build && *build ? build : "build");
    if (access(exe, X_OK) != 0) {
        CHECK(0, "no CLI binary at %s (set BUILD or SDUNET_BIN)", exe);
        return;
    }
    char dir[1024], cmd[4096];
    snprintf(dir, sizeof dir, "%s", t_data("vae/vae-tiny"));
    snprintf(cmd, sizeof cmd,
             "%s decode --vae %s/weights-ldm.safetensors --latent %s/latent.npy --out %s "
             "--threads 2 >/dev/null",
             exe, dir, dir, t_tmp("cli-dec.npy"));
    CHECK(system(cmd) == 0, "%s", cmd);
    snprintf(cmd, sizeof cmd,
             "%s encode-image --model %s --image %s/image.npy --out %s --sample --noise "
             "%s/noise.npy --mean %s >/dev/null",
             exe, t_tmp("pipe"), dir, t_tmp("cli-lat.npy"), dir, t_tmp("cli-mean.npy"));
    CHECK(system(cmd) == 0, "%s", cmd);
    float *x = NULL;
    int nd;
    int64_t sh[SD_MAX_DIMS];
    sdunet_error err;
    CHECK(sd_npy_read_f32(t_tmp("cli-dec.npy"), &x, &nd, sh, &err) == SDUNET_OK, "%s", err.message);
    CHECK(x && nd == 4 && sh[1] == 3 && sh[2] == 32 && sh[3] == 24 &&
              same(x, g_tiny.dec, g_tiny.n_dec),
          "CLI decode differs from the API's");
    sd_free(x);
    x = NULL;
    CHECK(sd_npy_read_f32(t_tmp("cli-lat.npy"), &x, &nd, sh, &err) == SDUNET_OK, "%s", err.message);
    CHECK(x && nd == 4 && sh[1] == 4 && same(x, g_tiny.sample, g_tiny.n_lat),
          "CLI encode-image --sample differs from the API's");
    sd_free(x);
    x = NULL;
    CHECK(sd_npy_read_f32(t_tmp("cli-mean.npy"), &x, &nd, sh, &err) == SDUNET_OK, "%s",
          err.message);
    CHECK(x && same(x, g_tiny.mean, g_tiny.n_lat), "CLI --mean differs from the API's");
    sd_free(x);
    /* errors: a NaN-free but wrong-rank input, a non-.npy output, --sample without noise */
    snprintf(cmd, sizeof cmd,
             "%s decode --vae %s --latent %s/latent.npy --out %s 2>/dev/null >/dev/null", exe, dir,
             dir, t_tmp("x.png"));
    CHECK(system(cmd) != 0, "png output accepted");
    snprintf(cmd, sizeof cmd,
             "%s encode-image --vae %s/weights.safetensors --image %s/image.npy --out %s --sample "
             "2>/dev/null "
             ">/dev/null",
             exe, dir, dir, t_tmp("y.npy"));
    CHECK(system(cmd) != 0, "--sample without --noise accepted");
}

int main(void)
{
    RUN(test_keymap);
    RUN(test_conv_pad0);
    RUN(test_tiny_diffusers);
    RUN(test_tiny_trace);
    RUN(test_tiny_ldm_and_inferred);
    RUN(test_tiny_files);
    RUN(test_bad_weights);
    RUN(test_bad_input);
    RUN(test_batch);
    RUN(test_u8_input);
    RUN(test_tiled);
    RUN(test_cli);
    RUN(test_gen_small);
    RUN(test_sd32);
    RUN(test_fast_mode);
    outputs_free(&g_tiny);
    return t_summary();
}
