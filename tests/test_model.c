/* The UNet against the golden data on the small cases (micro, tiny,
 * tiny-b2-odd, tiny-sd2), the weight file formats, the synthetic generator,
 * configuration parsing and bad input to the forward. */
#include "check.h"
#include "golden.h"

#include "io/json.h"
#include "io/tensorfile.h"
#include "unet/config.h"
#include "unet/model_internal.h"
#include "engine/synth.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- synthetic generator: bit-exact against synth-vectors.json ---- */
static void test_synth_vectors(void)
{
    size_t len;
    char *text = t_read_file(t_data("synth-vectors.json"), &len);
    CHECK(text != NULL, "cannot read synth-vectors.json");
    if (!text)
        return;
    sd_json *j;
    sdunet_error err;
    CHECK(sd_json_parse(text, len, &j, &err) == SDUNET_OK, "%s", err.message);
    const sd_json *v = sd_json_get(j, "vectors");
    CHECK(v && v->type == SD_JSON_ARRAY && v->len >= 5, "no vectors");
    for (size_t k = 0; v && k < v->len; k++) {
        const sd_json *e = &v->items[k];
        const char *name = sd_json_get(e, "name")->string;
        const sd_json *shape = sd_json_get(e, "shape");
        int64_t sh[8];
        int nd = (int)shape->len;
        size_t n = 1;
        for (int i = 0; i < nd; i++)
            n *= (size_t)(sh[i] = shape->items[i].integer);
        float *x = malloc(n * sizeof(float));
        double s = sd_json_get(e, "s")->number;
        float c = (float)sd_json_get(e, "c")->number;
        if (strncmp(name, "input.", 6) == 0)
            sd_synth_fill(name, n, s, c, x);
        else
            sd_synth_weight(name, nd, sh, x);
        char hex[32];
        snprintf(hex, sizeof hex, "0x%016llx", (unsigned long long)sd_fnv1a64(name));
        CHECK(strcmp(hex, sd_json_get(e, "fnv1a64")->string) == 0, "%s: fnv %s", name, hex);
        const sd_json *f8 = sd_json_get(e, "first8_hex");
        for (size_t i = 0; i < f8->len && i < n; i++) {
            uint32_t bits;
            memcpy(&bits, &x[i], 4);
            unsigned long want = strtoul(f8->items[i].string, NULL, 16);
            CHECK(bits == want, "%s[%zu]: 0x%08x != %s", name, i, bits, f8->items[i].string);
        }
        uint32_t last;
        memcpy(&last, &x[n - 1], 4);
        CHECK(last == strtoul(sd_json_get(e, "last_hex")->string, NULL, 16), "%s: last", name);
        double acc = 0;
        for (size_t i = 0; i < n; i++)
            acc += x[i];
        double want = sd_json_get(e, "sum_f64_sequential")->number;
        CHECK(acc == want, "%s: sum %.17g != %.17g", name, acc, want);
        free(x);
    }
    sd_json_free(j);
    free(text);
}

/* ---- configuration ---- */
static void test_config_presets(void)
{
    sd_unet_config c;
    sdunet_error err;
    CHECK(sd_config_preset("sd15", &c, &err) == SDUNET_OK, "sd15");
    CHECK(c.block_out_channels[2] == 1280 && c.heads[0] == 8 && c.cross_attention_dim == 768 &&
              !c.use_linear_projection,
          "sd15 values");
    CHECK(sd_config_preset("sd21", &c, &err) == SDUNET_OK, "sd21");
    CHECK(c.heads[0] == 5 && c.heads[3] == 20 && c.cross_attention_dim == 1024 &&
              c.use_linear_projection,
          "sd21 values");
    CHECK(sd_config_preset("sdxl", &c, &err) == SDUNET_E_CONFIG, "unknown preset");
    /* every case's config.json parses */
    const char *cases[] = {"micro", "tiny", "tiny-sd2", "sd15-64"};
    for (int i = 0; i < 4; i++) {
        char p[256];
        snprintf(p, sizeof p, "%s/config.json", t_data(cases[i]));
        CHECK(sd_config_load(p, &c, &err) == SDUNET_OK, "%s: %s", cases[i], err.message);
    }
    char p[256];
    snprintf(p, sizeof p, "%s/config.json", t_data("tiny-sd2"));
    sd_config_load(p, &c, &err);
    CHECK(c.heads[0] == 2 && c.heads[1] == 4 && c.use_linear_projection &&
              c.cross_attention_dim == 48,
          "tiny-sd2 values");
    snprintf(p, sizeof p, "%s/config.json", t_data("sd15-64"));
    sd_unet_config a, b;
    sd_config_load(p, &a, &err);
    sd_config_preset("sd15", &b, &err);
    CHECK(memcmp(&a, &b, sizeof a) == 0, "sd15 config.json == sd15 preset");
}

static void expect_config_error(const char *json, const char *needle)
{
    sd_unet_config c;
    sdunet_error err = {0};
    sdunet_status st = sd_config_parse(json, strlen(json), &c, &err);
    CHECK(st == SDUNET_E_CONFIG, "config %s: status %d", json, st);
    CHECK(strstr(err.message, needle) != NULL, "message '%s' lacks '%s'", err.message, needle);
}

static void test_config_errors(void)
{
    expect_config_error("{\"addition_embed_type\": \"text_time\"}", "addition_embed_type");
    expect_config_error("{\"transformer_layers_per_block\": 2}", "transformer_layers_per_block");
    expect_config_error(
        "{\"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\","
        "\"CrossAttnDownBlock2D\", \"SimpleDownBlock2D\"]}",
        "SimpleDownBlock2D");
    expect_config_error("{\"some_new_feature\": 3}", "some_new_feature");
    expect_config_error("{\"block_out_channels\": [320, 640]}", "down_block_types");
    expect_config_error("{\"attention_head_dim\": [8, 8]}", "attention_head_dim");
    expect_config_error("{\"norm_num_groups\": 7}", "divisible");
    expect_config_error("{\"layers_per_block\": \"2\"}", "layers_per_block");
    expect_config_error("{\"class_embed_type\": \"timestep\"}", "class_embed_type");
    expect_config_error("{\"mid_block_type\": \"UNetMidBlock2DSimpleCrossAttn\"}",
                        "mid_block_type");
    expect_config_error("[1, 2]", "object");
    expect_config_error("{\"in_channels\": 4,", "config");
    /* unknown keys that are null or false are accepted */
    sd_unet_config c;
    sdunet_error err;
    const char *ok = "{\"future_flag\": false, \"other\": null, \"_name_or_path\": \"x\"}";
    CHECK(sd_config_parse(ok, strlen(ok), &c, &err) == SDUNET_OK, "%s", err.message);
    CHECK(sd_config_load("/nonexistent/config.json", &c, &err) == SDUNET_E_IO, "missing file");
}

/* ---- golden cases with synthetic weights ---- */
static sdunet_model *synthetic_opt(const char *case_name, sd_dtype round, const sdunet_options *opt)
{
    char p[256];
    snprintf(p, sizeof p, "%s/config.json", t_data(case_name));
    sd_unet_config cfg;
    sdunet_error err;
    if (sd_config_load(p, &cfg, &err)) {
        printf("  %s\n", err.message);
        return NULL;
    }
    sd_weight_source src = {.synth_round = round};
    sdunet_model *m = NULL;
    if (sd_model_create(&cfg, &src, opt, &m, &err))
        printf("  %s\n", err.message);
    return m;
}

static sdunet_model *synthetic_for(const char *case_name, sd_dtype round)
{
    return synthetic_opt(case_name, round, NULL);
}

static void run_case(const char *name, const char *weights_case)
{
    golden_case g;
    CHECK(golden_load(name, &g) == 0, "load %s", name);
    sdunet_model *m = synthetic_for(weights_case, SD_DT_F32);
    CHECK(m != NULL, "model");
    if (m && g.sample) {
        double worst = 0;
        double rel = golden_run(m, &g, 1, &worst, NULL);
        printf("  %s: relative L2 %.3g (worst trace point %.3g)\n", name, rel, worst);
        CHECK(rel >= 0 && rel <= 2e-6, "%s: relative L2 %.3g", name, rel);
    }
    sdunet_free(m);
    golden_free(&g);
}

static void test_micro(void)
{
    run_case("micro", "micro");
}
static void test_tiny(void)
{
    run_case("tiny", "tiny");
}
static void test_tiny_b2_odd(void)
{
    run_case("tiny-b2-odd", "tiny");
}
static void test_tiny_sd2(void)
{
    run_case("tiny-sd2", "tiny-sd2");
}

/* Both 3x3 methods end to end (the automatic choice mixes them): odd sizes
 * give partial Winograd tiles, batch 2 gives per-row time embeddings. */
static void test_conv_methods(void)
{
    static const char *const methods[] = {"direct", "winograd"};
    for (int i = 0; i < 2; i++) {
        CHECK(setenv("SDUNET_CONV", methods[i], 1) == 0, "setenv");
        printf("  SDUNET_CONV=%s\n", methods[i]);
        run_case("tiny-b2-odd", "tiny");
        run_case("tiny-sd2", "tiny-sd2");
    }
    unsetenv("SDUNET_CONV");
}

/* Fast mode (sdunet_options.fast = 1) on every small case: with the
 * automatic choice (Winograd F(4x4, 3x3) where it pays: the 16x16 levels
 * here) and with F(4x4) forced on every stride-1 3x3 convolution
 * (SDUNET_CONV=winograd), within the fast mode's 2e-5 of float64. Forced,
 * the output must differ from the exact mode's (F(4x4) ran). Measured
 * (avx512, auto / forced): micro 1.8e-6 / 2.3e-6, tiny 1.9e-6 / 2.6e-6,
 * tiny-b2-odd 2.1e-6 / 2.3e-6, tiny-sd2 1.8e-6 / 2.5e-6; exact mode
 * 6.4e-7 .. 7.3e-7. */
static void test_fast_mode(void)
{
    static const char *const cases[][2] = {
        {"micro", "micro"}, {"tiny", "tiny"}, {"tiny-b2-odd", "tiny"}, {"tiny-sd2", "tiny-sd2"}};
    sdunet_options fo;
    sdunet_options_default(&fo);
    fo.fast = 1;
    for (int forced = 0; forced < 2; forced++) {
        if (forced)
            CHECK(setenv("SDUNET_CONV", "winograd", 1) == 0, "setenv");
        for (int c = 0; c < 4; c++) {
            golden_case g;
            CHECK(golden_load(cases[c][0], &g) == 0, "load %s", cases[c][0]);
            sdunet_model *mf = synthetic_opt(cases[c][1], SD_DT_F32, &fo);
            sdunet_model *me = synthetic_for(cases[c][1], SD_DT_F32);
            float *a = calloc(g.n_out ? g.n_out : 1, sizeof(float)),
                  *b = calloc(g.n_out ? g.n_out : 1, sizeof(float));
            CHECK(mf && me && a && b, "model");
            if (mf && me && a && b && g.sample) {
                double rel = golden_run(mf, &g, 0, NULL, a);
                double rel_exact = golden_run(me, &g, 0, NULL, b);
                printf("  %s fast mode (%s): relative L2 %.3g (exact mode %.3g)\n", cases[c][0],
                       forced ? "F(4x4) forced" : "auto", rel, rel_exact);
                CHECK(rel >= 0 && rel <= 2e-5, "%s fast: relative L2 %.3g", cases[c][0], rel);
                CHECK(!forced || memcmp(a, b, g.n_out * sizeof(float)) != 0,
                      "%s: fast mode gave the exact mode's output", cases[c][0]);
            }
            free(a);
            free(b);
            sdunet_free(mf);
            sdunet_free(me);
            golden_free(&g);
        }
    }
    unsetenv("SDUNET_CONV");
    /* Anything but 0 and 1 is refused. */
    fo.fast = 2;
    sdunet_model *m = NULL;
    sdunet_error err;
    char cfg[256];
    snprintf(cfg, sizeof cfg, "%s/config.json", t_data("micro"));
    CHECK(sdunet_load_synthetic(cfg, &fo, &m, &err) == SDUNET_E_INVALID_ARG && !m &&
              strstr(err.message, "fast"),
          "fast = 2 accepted");
}

/* The feed-forward as a plain GEMM followed by sd_geglu (the path a model
 * takes when its GEGLU width is not whole panel pairs; SD's always is). */
static void test_geglu_unfused(void)
{
    CHECK(setenv("SDUNET_GEGLU", "unfused", 1) == 0, "setenv");
    run_case("tiny-b2-odd", "tiny");
    run_case("tiny-sd2", "tiny-sd2");
    unsetenv("SDUNET_GEGLU");
}

/* ---- weight files ---- */
static void test_micro_f32_file(void)
{
    golden_case g;
    CHECK(golden_load("micro", &g) == 0, "load");
    char p[256];
    snprintf(p, sizeof p, "%s/weights.safetensors", t_data("micro"));
    sdunet_model *m = NULL;
    sdunet_error err;
    CHECK(sdunet_load(p, NULL, NULL, &m, &err) == SDUNET_OK, "%s", err.message);
    if (m) {
        float *a = malloc(g.n_out * 4), *b = malloc(g.n_out * 4);
        double rel = golden_run(m, &g, 0, NULL, a);
        printf("  micro weights.safetensors: relative L2 %.3g\n", rel);
        CHECK(rel >= 0 && rel <= 2e-6, "relative L2 %.3g", rel);
        /* identical to the synthetic model: same weights, same kernels */
        sdunet_model *s = synthetic_for("micro", SD_DT_F32);
        golden_run(s, &g, 0, NULL, b);
        CHECK(memcmp(a, b, g.n_out * 4) == 0, "file and synthetic outputs differ");
        sdunet_free(s);
        free(a);
        free(b);
    }
    sdunet_free(m);
    golden_free(&g);
}

static void check_half_file(const char *file, sd_dtype dt)
{
    golden_case g;
    CHECK(golden_load("micro", &g) == 0, "load");
    char p[256], c[256];
    snprintf(p, sizeof p, "%s/%s", t_data("micro"), file);
    snprintf(c, sizeof c, "%s/config.json", t_data("micro"));
    sdunet_model *m = NULL;
    sdunet_error err;
    CHECK(sdunet_load(p, c, NULL, &m, &err) == SDUNET_OK, "%s", err.message);
    sdunet_model *s = synthetic_for("micro", dt);
    if (m && s) {
        float *a = malloc(g.n_out * 4), *b = malloc(g.n_out * 4);
        double rel = golden_run(m, &g, 0, NULL, a);
        golden_run(s, &g, 0, NULL, b);
        double same = t_rel_l2_f32(a, b, g.n_out);
        printf("  %s: vs rounded-weight model %.3g, vs float64 reference %.3g\n", file, same, rel);
        CHECK(memcmp(a, b, g.n_out * 4) == 0,
              "%s: output differs from the model with rounded "
              "weights (%.3g)",
              file, same);
        CHECK(rel < 2e-2, "%s: far from the reference (%.3g)", file, rel);
        free(a);
        free(b);
    }
    sdunet_free(m);
    sdunet_free(s);
    golden_free(&g);
}

static void test_micro_fp16_file(void)
{
    check_half_file("weights-fp16.safetensors", SD_DT_F16);
}
static void test_micro_bf16_file(void)
{
    check_half_file("weights-bf16.safetensors", SD_DT_BF16);
}

/* ---- weight storage: 16-bit panels ---- */

typedef struct tensor_list {
    sd_tensor_info t[1024];
    size_t n;
} tensor_list;

static void list_tensor(void *user, const char *name, int ndim, const int64_t *shape)
{
    tensor_list *l = user;
    if (l->n == sizeof l->t / sizeof l->t[0])
        return;
    sd_tensor_info *t = &l->t[l->n++];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++)
        t->numel *= (size_t)(t->shape[i] = shape[i]);
}

/* Writes the synthetic weights of a case's config as a float16 or
 * bfloat16 safetensors file (what `sdunet synth --dtype` writes). */
static int write_half_file(const char *case_name, sd_dtype dt, const char *out)
{
    char p[256];
    snprintf(p, sizeof p, "%s/config.json", t_data(case_name));
    sd_unet_config cfg;
    sdunet_error err;
    if (sd_config_load(p, &cfg, &err)) {
        printf("  %s\n", err.message);
        return -1;
    }
    tensor_list *l = calloc(1, sizeof *l);
    sd_weight_source src = {.visit = list_tensor, .visit_user = l, .check_only = 1};
    sd_unet u;
    int rc = -1;
    if (l && sd_unet_build(&u, &cfg, &src, NULL, &err) == SDUNET_OK) {
        sd_unet_release(&u);
        rc = 0;
        for (size_t i = 0; i < l->n && !rc; i++) {
            sd_tensor_info *t = &l->t[i];
            float *v = malloc(t->numel * sizeof(float));
            uint16_t *h = malloc(t->numel * sizeof(uint16_t));
            if (!v || !h || !t->name) {
                free(v), free(h);
                rc = -1;
                break;
            }
            sd_synth_weight(t->name, t->ndim, t->shape, v);
            for (size_t k = 0; k < t->numel; k++) {
                uint16_t x = dt == SD_DT_F16 ? sd_f32_to_f16(v[k]) : sd_f32_to_bf16(v[k]);
                memcpy((unsigned char *)h + 2 * k, &x, 2); /* little-endian host */
            }
            free(v);
            t->dtype = dt;
            t->data = h;
            t->nbytes = t->numel * 2;
        }
        if (!rc && sd_safetensors_write(out, l->t, l->n, NULL, &err) != SDUNET_OK) {
            printf("  %s\n", err.message);
            rc = -1;
        }
    }
    for (size_t i = 0; l && i < l->n; i++) {
        free(l->t[i].name);
        free((void *)l->t[i].data);
    }
    free(l);
    return rc;
}

static sdunet_model *load_file(const char *path, const char *case_name, sdunet_weights w)
{
    char c[256];
    snprintf(c, sizeof c, "%s/config.json", t_data(case_name));
    sdunet_options o;
    sdunet_options_default(&o);
    o.weights = w;
    sdunet_model *m = NULL;
    sdunet_error err;
    if (sdunet_load(path, c, &o, &m, &err))
        printf("  %s\n", err.message);
    return m;
}

static size_t total_bytes(const size_t *b)
{
    return b[SD_WT_F32] + b[SD_WT_F16] + b[SD_WT_BF16];
}

/* Every golden case from a float16 (and a bfloat16) file: packed as it is
 * (16-bit panels, half the bytes), the output equals bit for bit the same
 * file widened to float32 panels and the synthetic model rounded the same
 * way; and it is within the half-precision bar of the float64 reference. */
static void test_half_files_golden(void)
{
    static const char *const cases[][2] = {
        {"micro", "micro"}, {"tiny", "tiny"}, {"tiny-b2-odd", "tiny"}, {"tiny-sd2", "tiny-sd2"}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int d = 0; d < 2; d++) {
            const sd_dtype dt = d ? SD_DT_BF16 : SD_DT_F16;
            const int wt = d ? SD_WT_BF16 : SD_WT_F16;
            const char *name = cases[c][0], *wcase = cases[c][1];
            char path[1024];
            snprintf(path, sizeof path, "%s", t_tmp("%s-%s.safetensors", wcase, sd_wtype_name(wt)));
            golden_case g;
            CHECK(golden_load(name, &g) == 0, "load %s", name);
            CHECK(write_half_file(wcase, dt, path) == 0, "write %s", path);
            sdunet_model *m16 = load_file(path, wcase, SDUNET_WEIGHTS_AUTO);
            sdunet_model *m32 = load_file(path, wcase, SDUNET_WEIGHTS_F32);
            sdunet_model *syn = synthetic_for(wcase, dt);
            CHECK(m16 && m32 && syn, "%s: models", name);
            if (m16 && m32 && syn && g.sample) {
                size_t b16[SD_WT_COUNT], b32[SD_WT_COUNT];
                sd_model_packed_bytes(m16, b16);
                sd_model_packed_bytes(m32, b32);
                CHECK(b16[wt] > 0 && b16[wt] == total_bytes(b16) && b32[SD_WT_F32] > 0 &&
                          b32[SD_WT_F32] == total_bytes(b32) && 2 * b16[wt] == b32[SD_WT_F32],
                      "%s: packed bytes %zu %s vs %zu f32", name, b16[wt], sd_wtype_name(wt),
                      b32[SD_WT_F32]);
                float *a = malloc(g.n_out * 4), *b = malloc(g.n_out * 4), *e = malloc(g.n_out * 4);
                double rel = golden_run(m16, &g, 0, NULL, a);
                golden_run(m32, &g, 0, NULL, b);
                golden_run(syn, &g, 0, NULL, e);
                printf("  %s from a %s file, %s panels (%.2f MB, f32 %.2f MB): vs float64 %.3g, "
                       "%s vs f32 panels\n",
                       name, sd_dtype_name(dt), sd_wtype_name(wt), b16[wt] / 1e6,
                       b32[SD_WT_F32] / 1e6, rel,
                       memcmp(a, b, g.n_out * 4) == 0 ? "identical" : "DIFFERENT");
                CHECK(memcmp(a, b, g.n_out * 4) == 0, "%s %s: 16-bit and f32 panels differ (%.3g)",
                      name, sd_dtype_name(dt), t_rel_l2_f32(a, b, g.n_out));
                CHECK(memcmp(a, e, g.n_out * 4) == 0,
                      "%s %s: differs from the rounded synthetic model (%.3g)", name,
                      sd_dtype_name(dt), t_rel_l2_f32(a, e, g.n_out));
                CHECK(rel >= 0 && rel < (d ? 2e-2 : 4e-3), "%s %s: relative L2 %.3g", name,
                      sd_dtype_name(dt), rel);
                free(a), free(b), free(e);
            }
            sdunet_free(m16);
            sdunet_free(m32);
            sdunet_free(syn);
            golden_free(&g);
            remove(path);
        }
}

/* A float32 model forced into 16-bit panels (sdunet_options.weights):
 * lossy, the weights rounded to nearest even; measured against the
 * float64 reference and the float32 model. From the micro float32 file
 * and from synthetic weights for the other cases. */
static void test_forced_half_weights(void)
{
    static const char *const cases[][2] = {
        {"micro", "micro"}, {"tiny", "tiny"}, {"tiny-b2-odd", "tiny"}, {"tiny-sd2", "tiny-sd2"}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int d = 0; d < 2; d++) {
            const char *name = cases[c][0], *wcase = cases[c][1];
            const sdunet_weights w = d ? SDUNET_WEIGHTS_BF16 : SDUNET_WEIGHTS_F16;
            const int wt = d ? SD_WT_BF16 : SD_WT_F16;
            golden_case g;
            CHECK(golden_load(name, &g) == 0, "load %s", name);
            sdunet_model *mf = NULL, *m32 = NULL;
            if (c == 0) {
                char path[256];
                snprintf(path, sizeof path, "%s/weights.safetensors", t_data("micro"));
                mf = load_file(path, "micro", w);
                m32 = load_file(path, "micro", SDUNET_WEIGHTS_AUTO);
            } else {
                char p[256];
                snprintf(p, sizeof p, "%s/config.json", t_data(wcase));
                sdunet_options o;
                sdunet_options_default(&o);
                o.weights = w;
                sdunet_error err;
                CHECK(sdunet_load_synthetic(p, &o, &mf, &err) == SDUNET_OK, "%s", err.message);
                m32 = synthetic_for(wcase, SD_DT_F32);
            }
            CHECK(mf && m32, "%s: models", name);
            if (mf && m32 && g.sample) {
                size_t bf[SD_WT_COUNT], b32[SD_WT_COUNT];
                sd_model_packed_bytes(mf, bf);
                sd_model_packed_bytes(m32, b32);
                CHECK(bf[wt] == total_bytes(bf) && 2 * bf[wt] == b32[SD_WT_F32] &&
                          b32[SD_WT_F32] == total_bytes(b32),
                      "%s: packed bytes", name);
                float *a = malloc(g.n_out * 4), *b = malloc(g.n_out * 4);
                double rel = golden_run(mf, &g, 0, NULL, a);
                double rel32 = golden_run(m32, &g, 0, NULL, b);
                double vs32 = t_rel_l2_f32(a, b, g.n_out);
                printf("  %s forced to %s panels: vs float64 %.3g (f32 panels %.3g), vs f32 "
                       "model %.3g\n",
                       name, sd_wtype_name(wt), rel, rel32, vs32);
                CHECK(vs32 > 0 && rel >= 0 && rel < (d ? 2e-2 : 4e-3),
                      "%s forced %s: relative L2 %.3g, vs f32 %.3g", name, sd_wtype_name(wt), rel,
                      vs32);
                free(a), free(b);
            }
            sdunet_free(mf);
            sdunet_free(m32);
            golden_free(&g);
        }
    /* out-of-range option */
    sdunet_options o;
    sdunet_options_default(&o);
    o.weights = (sdunet_weights)4;
    sdunet_model *m = NULL;
    sdunet_error err;
    CHECK(sdunet_load_synthetic("sd15", &o, &m, &err) == SDUNET_E_INVALID_ARG && m == NULL,
          "weights 4 rejected");
}

/* A weight file missing a tensor, or with one of the wrong shape, is a
 * clear error naming it. */
static void test_missing_and_mismatched_tensors(void)
{
    char p[256];
    snprintf(p, sizeof p, "%s/weights.safetensors", t_data("micro"));
    sd_tensorfile *tf;
    sdunet_error err;
    CHECK(sd_tensorfile_open(p, &tf, &err) == SDUNET_OK, "%s", err.message);
    if (!tf)
        return;
    sd_tensor_info *ts = malloc(tf->count * sizeof *ts);
    size_t n = 0;
    for (size_t i = 0; i < tf->count; i++)
        if (strcmp(tf->tensors[i].name, "mid_block.attentions.0.proj_in.weight") != 0)
            ts[n++] = tf->tensors[i];
    for (size_t i = 0; i < n; i++)
        if (strcmp(ts[i].name, "conv_out.bias") == 0) {
            ts[i].shape[0] = 2; /* claims 2 values: 8 bytes of the 16 */
            ts[i].numel = 2;
            ts[i].nbytes = 8;
        }
    const char *out = t_tmp("missing.safetensors");
    CHECK(sd_safetensors_write(out, ts, n, NULL, &err) == SDUNET_OK, "%s", err.message);
    char c[256];
    snprintf(c, sizeof c, "%s/config.json", t_data("micro"));
    sdunet_model *m = NULL;
    sdunet_status st = sdunet_load(out, c, NULL, &m, &err);
    CHECK(st == SDUNET_E_WEIGHTS, "status %d", st);
    CHECK(m == NULL, "no model on error");
    CHECK(strstr(err.message, "mid_block.attentions.0.proj_in.weight") != NULL, "message: %s",
          err.message);
    CHECK(strstr(err.message, "conv_out.bias") != NULL, "message: %s", err.message);
    remove(out);
    free(ts);
    sd_tensorfile_close(tf);
    /* the wrong config for the file: every shape mismatches */
    sd_unet_config cfg;
    sd_config_preset("sd15", &cfg, &err);
    st = sdunet_load(p, "sd15", NULL, &m, &err);
    CHECK(st == SDUNET_E_WEIGHTS && m == NULL, "sd15 config on micro weights: %d", st);
    st = sdunet_load("/nonexistent/w.safetensors", "sd15", NULL, &m, &err);
    CHECK(st == SDUNET_E_IO && m == NULL, "missing file: %d", st);
    st = sdunet_load(p, "/nonexistent/config.json", NULL, &m, &err);
    CHECK(st == SDUNET_E_IO && m == NULL, "missing config: %d", st);
}

/* ---- bad input to the forward ---- */
static void test_forward_bad_input(void)
{
    sdunet_model *m = synthetic_for("micro", SD_DT_F32);
    CHECK(m != NULL, "model");
    if (!m)
        return;
    const int B = 1, C = 4, H = 8, W = 8, L = 5, D = 16;
    float x[B * C * H * W], ctx[B * L * D], out[B * C * H * W], t = 10;
    sd_synth_fill("x", sizeof x / 4, 1.0, 0, x);
    sd_synth_fill("c", sizeof ctx / 4, 1.0, 0, ctx);
    sdunet_error e;
    CHECK(sdunet_forward(m, x, B, C, H, W, &t, 1, ctx, L, D, out, &e) == SDUNET_OK, "%s",
          e.message);
    CHECK(sdunet_forward(m, x, B, 3, H, W, &t, 1, ctx, L, D, out, &e) == SDUNET_E_SHAPE,
          "channels");
    CHECK(strstr(e.message, "channels") != NULL, "%s", e.message);
    CHECK(sdunet_forward(m, x, B, C, H, W, &t, 1, ctx, L, 15, out, &e) == SDUNET_E_SHAPE,
          "ctx width");
    CHECK(sdunet_forward(m, x, B, C, 0, W, &t, 1, ctx, L, D, out, &e) == SDUNET_E_SHAPE, "H=0");
    CHECK(sdunet_forward(m, x, B, C, H, 0, &t, 1, ctx, L, D, out, &e) == SDUNET_E_SHAPE, "W=0");
    CHECK(sdunet_forward(m, x, 0, C, H, W, &t, 1, ctx, L, D, out, &e) == SDUNET_E_SHAPE, "B=0");
    CHECK(sdunet_forward(m, x, B, C, H, W, &t, 1, ctx, 0, D, out, &e) == SDUNET_E_SHAPE, "L=0");
    CHECK(sdunet_forward(m, x, B, C, H, W, &t, 2, ctx, L, D, out, &e) == SDUNET_E_SHAPE,
          "2 timesteps for batch 1");
    CHECK(sdunet_forward(m, x, B, C, H, W, &t, 0, ctx, L, D, out, &e) == SDUNET_E_SHAPE,
          "0 timesteps");
    CHECK(sdunet_forward(NULL, x, B, C, H, W, &t, 1, ctx, L, D, out, &e) == SDUNET_E_INVALID_ARG,
          "NULL model");
    CHECK(sdunet_forward(m, NULL, B, C, H, W, &t, 1, ctx, L, D, out, &e) == SDUNET_E_INVALID_ARG,
          "NULL sample");
    CHECK(sdunet_forward(m, x, B, C, H, W, &t, 1, ctx, L, D, x, &e) == SDUNET_E_INVALID_ARG,
          "out aliases sample");
    /* NaN / Inf: rejected by default, propagated when allowed */
    float saved = x[5];
    x[5] = NAN;
    CHECK(sdunet_forward(m, x, B, C, H, W, &t, 1, ctx, L, D, out, &e) == SDUNET_E_NONFINITE, "NaN");
    x[5] = INFINITY;
    CHECK(sdunet_forward(m, x, B, C, H, W, &t, 1, ctx, L, D, out, &e) == SDUNET_E_NONFINITE, "Inf");
    x[5] = saved;
    float tn = NAN;
    CHECK(sdunet_forward(m, x, B, C, H, W, &tn, 1, ctx, L, D, out, &e) == SDUNET_E_NONFINITE,
          "NaN timestep");
    ctx[3] = NAN;
    CHECK(sdunet_forward(m, x, B, C, H, W, &t, 1, ctx, L, D, out, &e) == SDUNET_E_NONFINITE,
          "NaN context");
    sdunet_free(m);

    char p[256];
    snprintf(p, sizeof p, "%s/config.json", t_data("micro"));
    sdunet_options o;
    sdunet_options_default(&o);
    o.allow_nonfinite = 1;
    o.threads = 2;
    CHECK(sdunet_load_synthetic(p, &o, &m, &e) == SDUNET_OK, "%s", e.message);
    CHECK(sdunet_forward(m, x, B, C, H, W, &t, 1, ctx, L, D, out, &e) == SDUNET_OK, "%s",
          e.message);
    int nans = 0;
    for (size_t i = 0; i < sizeof out / 4; i++)
        nans += isnan(out[i]) != 0;
    CHECK(nans > 0, "a NaN in the context propagates when allowed (%d NaNs)", nans);
    sdunet_free(m);
    sdunet_free(NULL);
    o.threads = -1;
    CHECK(sdunet_load_synthetic(p, &o, &m, &e) == SDUNET_E_INVALID_ARG && m == NULL, "threads -1");
}

/* Shapes of a forward change between calls: the plan is redone. */
static void test_shape_changes(void)
{
    sdunet_model *m = synthetic_for("micro", SD_DT_F32);
    CHECK(m != NULL, "model");
    if (!m)
        return;
    float x[2 * 4 * 9 * 13], ctx[2 * 3 * 16], o1[2 * 4 * 9 * 13], o2[4 * 9 * 13], t[2] = {3, 700};
    sd_synth_fill("x", sizeof x / 4, 1.0, 0, x);
    sd_synth_fill("c", sizeof ctx / 4, 1.0, 0, ctx);
    sdunet_error e;
    CHECK(sdunet_forward(m, x, 2, 4, 9, 13, t, 2, ctx, 3, 16, o1, &e) == SDUNET_OK, "%s",
          e.message);
    CHECK(sdunet_forward(m, x + 4 * 9 * 13, 1, 4, 9, 13, t + 1, 1, ctx + 3 * 16, 3, 16, o2, &e) ==
              SDUNET_OK,
          "%s", e.message);
    /* row 1 of the batch equals the same row run alone */
    CHECK(t_rel_l2_f32(o1 + 4 * 9 * 13, o2, 4 * 9 * 13) < 1e-6, "batch row independence %.3g",
          t_rel_l2_f32(o1 + 4 * 9 * 13, o2, 4 * 9 * 13));
    sdunet_free(m);
}

/* Classifier-free guidance runs one latent and timestep in every row with a
 * context per row: the layers before the first cross-attention then run for
 * row 0 alone and their outputs are copied to the other rows. Each row must
 * equal that row run alone, with the first cross-attention in the first
 * block (SD), in a later block (the encoder's skip tensors from before it
 * are copied), and only in the mid block (the copy at the end of the
 * encoder), to rounding: a batch of one may take other kernel paths than
 * a batch of two (portable kernels: 0; AVX-512 5e-7 .. 7e-7). A row left
 * uncopied would be far off. The profile must show fewer 3x3 convolution
 * flops than the same batch with a different timestep per row. */
static void test_shared_rows(void)
{
    enum { C = 4, H = 9, W = 13, L = 3, D = 16, N = C * H * W };
    char p[256];
    snprintf(p, sizeof p, "%s/config.json", t_data("micro"));
    for (int variant = 0; variant < 3; variant++) {
        sd_unet_config cfg;
        sdunet_error err;
        CHECK(sd_config_load(p, &cfg, &err) == SDUNET_OK, "%s", err.message);
        for (int i = 0; i < cfg.n_blocks && variant > 0; i++)
            if (variant == 2 || i == 0)
                cfg.down_has_attn[i] = 0;
        sd_weight_source src = {.synth_round = SD_DT_F32};
        sdunet_model *m = NULL;
        CHECK(sd_model_create(&cfg, &src, NULL, &m, &err) == SDUNET_OK, "%s", err.message);
        if (!m)
            continue;
        float x[2 * N], ctx[2 * L * D], o2[2 * N], o1[N], t[2] = {700, 700};
        sd_synth_fill("x", N, 1.0, 0, x);
        memcpy(x + N, x, sizeof(float) * N);
        sd_synth_fill("c", 2 * L * D, 1.0, 0, ctx);
        sd_prof shared = {0}, full = {0};
        sd_model_set_profile(m, &shared);
        CHECK(sdunet_forward(m, x, 2, C, H, W, t, 2, ctx, L, D, o2, &err) == SDUNET_OK, "%s",
              err.message);
        for (int b = 0; b < 2; b++) {
            sd_model_set_profile(m, NULL);
            CHECK(sdunet_forward(m, x, 1, C, H, W, t, 1, ctx + b * L * D, L, D, o1, &err) ==
                      SDUNET_OK,
                  "%s", err.message);
            double rel = t_rel_l2_f32(o2 + b * N, o1, N);
            printf("  variant %d row %d vs alone: relative L2 %.3g\n", variant, b, rel);
            CHECK(rel >= 0 && rel <= 2e-6, "variant %d row %d: relative L2 %.3g", variant, b, rel);
        }
        t[1] = 699; /* rows differ: every layer runs for both */
        sd_model_set_profile(m, &full);
        CHECK(sdunet_forward(m, x, 2, C, H, W, t, 2, ctx, L, D, o2, &err) == SDUNET_OK, "%s",
              err.message);
        sd_model_set_profile(m, NULL);
        CHECK(shared.flops[SD_OP_CONV3] < full.flops[SD_OP_CONV3],
              "variant %d: the shared rows ran every layer twice (%.4g vs %.4g flops)", variant,
              shared.flops[SD_OP_CONV3], full.flops[SD_OP_CONV3]);
        sdunet_free(m);
    }
}

/* The profile's table by shape: every timed call of a kind with a shape
 * is in exactly one entry (the entries of a kind add up to its total),
 * and the UNet's first and last convolutions are found by their shapes. */
static void test_profile_shapes(void)
{
    enum { C = 4, H = 9, W = 13, L = 3, D = 16, N = C * H * W };
    char p[256];
    snprintf(p, sizeof p, "%s/config.json", t_data("micro"));
    sd_unet_config cfg;
    sdunet_error err;
    CHECK(sd_config_load(p, &cfg, &err) == SDUNET_OK, "%s", err.message);
    sd_weight_source src = {.synth_round = SD_DT_F32};
    sdunet_model *m = NULL;
    CHECK(sd_model_create(&cfg, &src, NULL, &m, &err) == SDUNET_OK, "%s", err.message);
    if (!m)
        return;
    float x[N], ctx[L * D], o[N], t = 500;
    sd_synth_fill("x", N, 1.0, 0, x);
    sd_synth_fill("c", L * D, 1.0, 0, ctx);
    static sd_prof prof; /* ~10 KiB */
    memset(&prof, 0, sizeof prof);
    sd_model_set_profile(m, &prof);
    CHECK(sdunet_forward(m, x, 1, C, H, W, &t, 1, ctx, L, D, o, &err) == SDUNET_OK, "%s",
          err.message);
    sd_model_set_profile(m, NULL);
    sdunet_free(m);
    CHECK(prof.entries > 0 && prof.entries <= SD_PROF_ENTRIES && prof.unlisted == 0,
          "%d entries, %ld unlisted", prof.entries, prof.unlisted);
    for (int k = 0; k < SD_OP_COUNT; k++) {
        double sec = 0, fl = 0;
        long calls = 0;
        for (int i = 0; i < prof.entries; i++)
            if (prof.entry[i].kind == (sd_op_kind)k) {
                sec += prof.entry[i].seconds;
                fl += prof.entry[i].flops;
                calls += prof.entry[i].calls;
            }
        if (k == SD_OP_NORM) { /* no shapes: the kind's total only */
            CHECK(calls == 0 && prof.calls[k] > 0, "norm entries %ld of %ld", calls, prof.calls[k]);
            continue;
        }
        CHECK(calls == prof.calls[k] && calls > 0, "kind %d: %ld calls in entries, %ld in all", k,
              calls, prof.calls[k]);
        CHECK(fabs(sec - prof.seconds[k]) <= 1e-9 * prof.seconds[k] + 1e-12 &&
                  fabs(fl - prof.flops[k]) <= 1e-9 * prof.flops[k],
              "kind %d: entries %.9g s %.9g flops, totals %.9g s %.9g flops", k, sec, fl,
              prof.seconds[k], prof.flops[k]);
    }
    const int ch0 = cfg.block_out_channels[0];
    const int want[2][6] = {{1, H, W, C, ch0, 1}, {1, H, W, ch0, C, 1}}; /* conv_in, conv_out */
    for (int w = 0; w < 2; w++) {
        int found = 0;
        for (int i = 0; i < prof.entries; i++)
            found += prof.entry[i].kind == SD_OP_CONV3 &&
                     prof.entry[i].shape.form == SD_SHAPE_CONV &&
                     memcmp(prof.entry[i].shape.d, want[w], sizeof want[w]) == 0 &&
                     prof.entry[i].calls == 1;
        CHECK(found == 1, "conv_%s's shape found %d times", w ? "out" : "in", found);
    }
    /* A full table: the calls of shapes past its end count in the totals. */
    memset(&prof, 0, sizeof prof);
    for (int i = 0; i <= SD_PROF_ENTRIES; i++)
        for (int rep = 0; rep < 2; rep++)
            sd_tock_shape(&prof, SD_OP_LINEAR, sd_mono_now(), 2.0,
                          (sd_shape){SD_SHAPE_GEMM, {i + 1, 1, 1}});
    sd_tock_shape(NULL, SD_OP_LINEAR, 0, 2.0, (sd_shape){SD_SHAPE_GEMM, {1, 1, 1}});
    CHECK(prof.entries == SD_PROF_ENTRIES && prof.unlisted == 2 &&
              prof.calls[SD_OP_LINEAR] == 2 * (SD_PROF_ENTRIES + 1) &&
              prof.entry[SD_PROF_ENTRIES - 1].calls == 2 &&
              prof.entry[SD_PROF_ENTRIES - 1].shape.d[0] == SD_PROF_ENTRIES,
          "full table: %d entries, %ld unlisted, %ld calls", prof.entries, prof.unlisted,
          prof.calls[SD_OP_LINEAR]);
}

int main(void)
{
    RUN(test_synth_vectors);
    RUN(test_config_presets);
    RUN(test_config_errors);
    RUN(test_micro);
    RUN(test_profile_shapes);
    RUN(test_tiny);
    RUN(test_tiny_b2_odd);
    RUN(test_tiny_sd2);
    RUN(test_conv_methods);
    RUN(test_fast_mode);
    RUN(test_geglu_unfused);
    RUN(test_micro_f32_file);
    RUN(test_micro_fp16_file);
    RUN(test_micro_bf16_file);
    RUN(test_half_files_golden);
    RUN(test_forced_half_weights);
    RUN(test_missing_and_mismatched_tensors);
    RUN(test_forward_bad_input);
    RUN(test_shape_changes);
    RUN(test_shared_rows);
    return t_summary();
}
