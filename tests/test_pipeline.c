/* The whole pipeline against diffusers 0.25.1's StableDiffusionPipeline /
 * StableDiffusionImg2ImgPipeline on tiny synthetic models
 * (tests/data/pipeline/, made by tests/gen/make_pipeline_cases.py): for the
 * case's prompt, settings and seed, the float image within 1e-5 relative L2
 * of the float64 run and the 8-bit image equal but for values within 0.01
 * of a rounding boundary. Also the pipeline's bad-input errors. */
#include "check.h"
#include "io/json.h"
#include "io/npy.h"
#include "io/png.h"
#include "sdunet_pipeline.h"

#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BAR 1e-5

static const char *tmp_path(const char *name)
{
    static char buf[8][512];
    static int k;
    const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/sdunet-test-pipe-%d-%s", dir, (int)getpid(), name);
    return buf[k];
}

static int copy_file(const char *from, const char *to)
{
    size_t n;
    void *d = t_read_file(from, &n);
    int rc = d ? t_write_file(to, d, n) : -1;
    free(d);
    return rc;
}

static const struct {
    const char *cls, *name;
} classes[] = {{"DDIMScheduler", "ddim"},
               {"PNDMScheduler", "pndm"},
               {"EulerDiscreteScheduler", "euler"},
               {"EulerAncestralDiscreteScheduler", "euler_a"},
               {"DPMSolverMultistepScheduler", "dpmpp_2m"},
               {"LMSDiscreteScheduler", "lms"},
               {"UniPCMultistepScheduler", "unipc"}};

static const sd_json *path_get(const sd_json *j, const char *a, const char *b)
{
    const sd_json *x = sd_json_get(j, a);
    return x && b ? sd_json_get(x, b) : x;
}

static double num(const sd_json *j, const char *a, const char *b, double def)
{
    const sd_json *x = path_get(j, a, b);
    return x && x->type == SD_JSON_NUMBER ? x->number : def;
}

/* A folder laid out like a diffusers pipeline with the case's configs. */
static int make_folder(const char *dir, const char *case_dir, const char *text_cfg, int sd2)
{
    static const char *const subs[] = {"unet", "text_encoder", "vae", "tokenizer"};
    char p[1024], q[1024];
    mkdir(dir, 0700);
    for (size_t i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, subs[i]);
        mkdir(p, 0700);
    }
    int rc = 0;
    snprintf(p, sizeof p, "%s/unet/config.json", dir);
    snprintf(q, sizeof q, "%s/unet_config.json", case_dir);
    rc |= copy_file(t_data(q), p);
    snprintf(p, sizeof p, "%s/vae/config.json", dir);
    snprintf(q, sizeof q, "%s/vae_config.json", case_dir);
    rc |= copy_file(t_data(q), p);
    snprintf(p, sizeof p, "%s/text_encoder/config.json", dir);
    rc |= copy_file(t_data(text_cfg), p);
    snprintf(p, sizeof p, "%s/tokenizer/vocab.json", dir);
    rc |= copy_file(t_data("text/vocab.json"), p);
    snprintf(p, sizeof p, "%s/tokenizer/merges.txt", dir);
    rc |= copy_file(t_data("text/merges.txt"), p);
    snprintf(p, sizeof p, "%s/tokenizer/special_tokens_map.json", dir);
    const char *stm = sd2 ? "{\"pad_token\": \"!\"}" : "{\"pad_token\": \"<|endoftext|>\"}";
    rc |= t_write_file(p, stm, strlen(stm));
    return rc;
}

static void remove_folder(const char *dir)
{
    static const char *const files[] = {
        "unet/config.json",     "vae/config.json",      "text_encoder/config.json",
        "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json"};
    static const char *const subs[] = {"unet", "text_encoder", "vae", "tokenizer"};
    char p[1024];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        remove(p);
    }
    for (size_t i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, subs[i]);
        rmdir(p);
    }
    rmdir(dir);
}

/* The 8-bit image against the reference: equal, except values whose exact
 * (float64) level lies within 0.01 of a rounding boundary. */
static int u8_mismatches(const uint8_t *rgb, const uint8_t *ref, const double *exact, size_t n,
                         int *near_boundary)
{
    int bad = 0;
    *near_boundary = 0;
    for (size_t i = 0; i < n; i++) {
        if (rgb[i] == ref[i])
            continue;
        double level = exact[i] * 255.0, frac = level - floor(level);
        if (fabs(frac - 0.5) < 0.01 && abs((int)rgb[i] - (int)ref[i]) == 1)
            (*near_boundary)++;
        else
            bad++;
    }
    return bad;
}

static void run_case(const char *name)
{
    char p[512];
    snprintf(p, sizeof p, "pipeline/%s/manifest.json", name);
    size_t len;
    char *raw = t_read_file(t_data(p), &len);
    char *text = raw ? sd_json_from_python(raw, len, &len) : NULL;
    sd_json *m = NULL;
    sdunet_error err;
    CHECK(text && sd_json_parse(text, len, &m, &err) == SDUNET_OK, "%s: no manifest", name);
    free(raw);
    free(text);
    if (!m)
        return;
    const sd_json *flavor = path_get(m, "models", "flavor");
    const sd_json *tcfg = path_get(sd_json_get(m, "models"), "text_encoder", "config");
    const sd_json *cls = path_get(m, "scheduler", "class");
    const sd_json *call = sd_json_get(m, "call");
    const int sd2 = flavor && flavor->type == SD_JSON_STRING && strcmp(flavor->string, "sd2") == 0;
    char text_cfg[256] = "";
    if (tcfg && tcfg->type == SD_JSON_STRING && strncmp(tcfg->string, "tests/data/", 11) == 0)
        snprintf(text_cfg, sizeof text_cfg, "%s", tcfg->string + 11);
    const char *sched = NULL;
    for (size_t k = 0; cls && cls->type == SD_JSON_STRING && k < 7; k++)
        if (strcmp(cls->string, classes[k].cls) == 0)
            sched = classes[k].name;
    CHECK(text_cfg[0] && sched && call, "%s: manifest lacks models or scheduler", name);
    char case_dir[300];
    snprintf(case_dir, sizeof case_dir, "pipeline/%s", name);
    const char *dir = tmp_path(name);
    if (!text_cfg[0] || !sched || !call || make_folder(dir, case_dir, text_cfg, sd2)) {
        CHECK(0, "%s: cannot lay out the pipeline folder", name);
        sd_json_free(m);
        remove_folder(dir);
        return;
    }
    /* the case's scheduler config as the folder's */
    char sp[1024];
    snprintf(sp, sizeof sp, "%s/scheduler", dir);
    mkdir(sp, 0700);
    snprintf(sp, sizeof sp, "%s/scheduler/scheduler_config.json", dir);
    snprintf(p, sizeof p, "%s/scheduler_config.json", case_dir);
    CHECK(copy_file(t_data(p), sp) == 0, "scheduler config");

    sdunet_pipeline_options po;
    sdunet_pipeline_options_default(&po);
    po.threads = 2;
    sdunet_pipeline *pl = NULL;
    sdunet_status st = sdunet_pipeline_load_synthetic(dir, &po, &pl, &err);
    CHECK(st == SDUNET_OK, "%s: load: %s", name, err.message);
    remove(sp);
    snprintf(sp, sizeof sp, "%s/scheduler", dir);
    rmdir(sp);
    remove_folder(dir);
    sd_image init = {0};
    if (st == SDUNET_OK) {
        sdunet_gen_params g;
        sdunet_gen_params_default(&g);
        const sd_json *v = sd_json_get(call, "prompt");
        g.prompt = v && v->type == SD_JSON_STRING ? v->string : "";
        v = sd_json_get(call, "negative_prompt_effective");
        g.negative_prompt = v && v->type == SD_JSON_STRING ? v->string : NULL;
        g.seed = (uint64_t)num(call, "seed", NULL, 0);
        g.steps = (int)num(call, "num_inference_steps", NULL, 50);
        g.guidance = num(call, "guidance_scale", NULL, 7.5);
        g.batch = (int)num(call, "num_images_per_prompt", NULL, 1);
        g.width = (int)num(call, "width", NULL, 0);
        g.height = (int)num(call, "height", NULL, 0);
        g.eta = num(call, "eta", NULL, 0);
        g.text.clip_skip = (int)num(call, "clip_skip", NULL, 0);
        g.scheduler = sched;
        v = sd_json_get(call, "strength");
        if (v && v->type == SD_JSON_NUMBER) {
            g.strength = v->number;
            snprintf(p, sizeof p, "%s/init.png", case_dir);
            CHECK(sd_png_read(t_data(p), &init, &err) == SDUNET_OK, "%s: init: %s", name,
                  err.message);
            g.init_rgb = init.data;
            g.init_width = init.width;
            g.init_height = init.height;
        }
        size_t n = (size_t)g.batch * g.width * g.height * 3;
        uint8_t *rgb = malloc(n), *ref8 = NULL;
        float *img = malloc(n * sizeof(float));
        st = sdunet_generate(pl, &g, rgb, img, &err);
        CHECK(st == SDUNET_OK, "%s: generate: %s", name, err.message);
        double *ref = NULL;
        int ndim;
        int64_t shape[SD_MAX_DIMS];
        snprintf(p, sizeof p, "%s/image_f64.npy", case_dir);
        if (st == SDUNET_OK && sd_npy_read_f64(t_data(p), &ref, &ndim, shape, &err) == SDUNET_OK) {
            size_t m_ = (size_t)(shape[0] * shape[1] * shape[2] * shape[3]);
            double e = m_ == n ? t_rel_l2_f32_f64(img, ref, n) : INFINITY;
            printf("  %-14s %-8s %2d steps: image rel L2 %.3g", name, sched, g.steps, e);
            CHECK(e < BAR, "%s: image rel L2 %.3g", name, e);
            /* image_u8.npy: uint8 .npy; read its raw bytes after the header */
            snprintf(p, sizeof p, "%s/image_u8.npy", case_dir);
            size_t usz;
            unsigned char *u = t_read_file(t_data(p), &usz);
            size_t hl = u && usz > 10 ? (size_t)(u[8] | u[9] << 8) + 10 : 0;
            if (u && hl && usz - hl == n && strstr((char *)u + 10, "|u1")) {
                ref8 = u + hl;
                int near, bad = u8_mismatches(rgb, ref8, ref, n, &near);
                printf(", 8-bit: %d off by one at a rounding boundary, %d other\n", near, bad);
                CHECK(bad == 0, "%s: %d 8-bit values differ", name, bad);
            } else {
                printf("\n");
                CHECK(0, "%s: image_u8.npy unreadable", name);
            }
            free(u);
        } else if (st == SDUNET_OK) {
            CHECK(0, "%s: %s", name, err.message);
        }
        free(ref);
        free(rgb);
        free(img);
    }
    sd_image_free(&init);
    sdunet_pipeline_free(pl);
    sd_json_free(m);
}

static void test_sd1_ddim(void)
{
    run_case("sd1-ddim");
}
static void test_sd1_dpmpp2m(void)
{
    run_case("sd1-dpmpp2m");
}
static void test_sd1_euler_a(void)
{
    run_case("sd1-euler-a");
}
static void test_sd1_pndm(void)
{
    run_case("sd1-pndm");
}
static void test_sd1_guidance1(void)
{
    run_case("sd1-guidance1");
}
static void test_sd1_img2img(void)
{
    run_case("sd1-img2img");
}
static void test_sd2_v_ddim(void)
{
    run_case("sd2-v-ddim");
}

static int cancel_at_step2(void *user, sdunet_phase ph, int done, int total)
{
    (void)total;
    (*(int *)user)++;
    return ph == SDUNET_PHASE_DENOISE && done == 2;
}

/* Bad input: each a clear error before (or instead of) the work. */
static void test_bad_input(void)
{
    const char *dir = tmp_path("bad");
    sdunet_error err;
    sdunet_pipeline *pl = NULL;
    if (make_folder(dir, "pipeline/sd1-ddim", "text/clip-tiny-sd1/config.json", 0) ||
        sdunet_pipeline_load_synthetic(dir, NULL, &pl, &err)) {
        CHECK(0, "load: %s", err.message);
        remove_folder(dir);
        return;
    }
    remove_folder(dir);
    sdunet_gen_params g;
    sdunet_gen_params_default(&g);
    g.prompt = "a cat";
    g.steps = 3;
    g.width = g.height = 32;
    uint8_t rgb[2 * 32 * 32 * 3];
    g.width = 20;
    CHECK(sdunet_generate(pl, &g, rgb, NULL, &err) == SDUNET_E_INVALID_ARG &&
              strstr(err.message, "multiples of 8"),
          "width 20: %s", err.message);
    g.width = 32;
    g.steps = 0;
    CHECK(sdunet_generate(pl, &g, rgb, NULL, &err) == SDUNET_E_INVALID_ARG, "0 steps");
    g.steps = 100000;
    CHECK(sdunet_generate(pl, &g, rgb, NULL, &err) == SDUNET_E_INVALID_ARG, "absurd steps");
    g.steps = 3;
    g.guidance = NAN;
    CHECK(sdunet_generate(pl, &g, rgb, NULL, &err) == SDUNET_E_INVALID_ARG, "NaN guidance");
    g.guidance = 7.5;
    g.prompt = "caf\xc3";
    CHECK(sdunet_generate(pl, &g, rgb, NULL, &err) == SDUNET_E_INVALID_ARG, "bad UTF-8: %s",
          err.message);
    g.prompt = "a cat";
    uint8_t init[16 * 16 * 3] = {0};
    g.init_rgb = init;
    g.init_width = g.init_height = 16;
    CHECK(sdunet_generate(pl, &g, rgb, NULL, &err) == SDUNET_E_INVALID_ARG &&
              strstr(err.message, "init image"),
          "init size: %s", err.message);
    g.init_width = g.init_height = 32;
    uint8_t init32[32 * 32 * 3] = {0};
    g.init_rgb = init32;
    g.strength = 0.1; /* int(3 * 0.1) = 0 steps of DDIM (PNDM's repeated step would run) */
    g.scheduler = "ddim";
    CHECK(sdunet_generate(pl, &g, rgb, NULL, &err) == SDUNET_E_INVALID_ARG &&
              strstr(err.message, "strength"),
          "strength: %s", err.message);
    g.init_rgb = NULL;
    int calls = 0;
    g.progress = cancel_at_step2;
    g.progress_user = &calls;
    memset(rgb, 7, sizeof rgb);
    CHECK(sdunet_generate(pl, &g, rgb, NULL, &err) == SDUNET_E_CANCELLED && rgb[0] == 7,
          "cancel: %s", err.message);
    CHECK(calls == 5, "progress calls before cancelling: %d", calls);
    sdunet_pipeline_free(pl);
    /* a checkpoint with a UNet but no text encoder */
    CHECK(sdunet_pipeline_load(t_data("micro/weights.safetensors"), NULL, &pl, &err) ==
                  SDUNET_E_WEIGHTS &&
              strstr(err.message, "no text encoder") && !pl,
          "UNet-only file: %s", err.message);
}

int main(void)
{
    RUN(test_sd1_ddim);
    RUN(test_sd1_dpmpp2m);
    RUN(test_sd1_euler_a);
    RUN(test_sd1_pndm);
    RUN(test_sd1_guidance1);
    RUN(test_sd1_img2img);
    RUN(test_sd2_v_ddim);
    RUN(test_bad_input);
    return t_summary();
}
