/* Real checkpoint files: every micro weight file (LDM safetensors and
 * .ckpt, float16, bfloat16), configuration inference, single-file
 * checkpoints carrying VAE / text-encoder / EMA / scheduler tensors,
 * diffusers folders and variants, `sdunet convert` round trips, page
 * release while loading, and the error messages. The tiny cases' weights
 * and every other file are generated here, under a temporary folder. */
#include "check.h"
#include "golden.h"

#include "io/keymap.h"
#include "io/tensorfile.h"
#include "unet/config.h"
#include "unet/infer.h"
#include "unet/model_internal.h"
#include "engine/synth.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_bin[512];

static int sh(const char *fmt, ...) SD_PRINTF(1, 2);
static int sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* Runs the CLI; stdout and stderr land in *out / *errs (static). Returns
 * the exit status (128 + signal on a crash). */
static int cli(const char **out, const char **errs, const char *fmt, ...) SD_PRINTF(3, 4);
static int cli(const char **out, const char **errs, const char *fmt, ...)
{
    static char obuf[16384], ebuf[4096];
    char args[3000], cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s %s >%s/cli.out 2>%s/cli.err </dev/null", g_bin, args, t_tmp_dir(),
             t_tmp_dir());
    int st = system(cmd);
    char p[700];
    const char *names[2] = {"cli.out", "cli.err"};
    char *bufs[2] = {obuf, ebuf};
    size_t caps[2] = {sizeof obuf, sizeof ebuf};
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/%s", t_tmp_dir(), names[i]);
        FILE *f = fopen(p, "rb");
        size_t n = f ? fread(bufs[i], 1, caps[i] - 1, f) : 0;
        bufs[i][n] = 0;
        if (f)
            fclose(f);
    }
    if (out)
        *out = obuf;
    if (errs)
        *errs = ebuf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* ---- tensor lists: synthetic weight files in any layout and dtype ---- */

typedef struct tlist {
    sd_tensor_info *t;
    size_t n, cap;
} tlist;

/* Appends a tensor; its data is zeroed, or NULL when !with_data (tables
 * of names and shapes only, as inference reads them). */
static sd_tensor_info *tl_push_ex(tlist *l, const char *name, sd_dtype dt, int ndim,
                                  const int64_t *shape, int with_data)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        l->t = realloc(l->t, l->cap * sizeof *l->t);
        if (!l->t) {
            fprintf(stderr, "test_checkpoints: out of memory\n");
            exit(2);
        }
    }
    sd_tensor_info *t = &l->t[l->n++];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->dtype = dt;
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->numel *= (size_t)shape[i];
    }
    t->nbytes = t->numel * sd_dtype_size(dt);
    t->data = with_data ? calloc(t->nbytes ? t->nbytes : 1, 1) : NULL;
    return t;
}

static sd_tensor_info *tl_push(tlist *l, const char *name, sd_dtype dt, int ndim,
                               const int64_t *shape)
{
    return tl_push_ex(l, name, dt, ndim, shape, 1);
}

static void tl_free(tlist *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->t[i].name);
        free((void *)l->t[i].data);
    }
    free(l->t);
    memset(l, 0, sizeof *l);
}

static void collect(void *user, const char *name, int ndim, const int64_t *shape)
{
    tl_push_ex(user, name, SD_DT_F32, ndim, shape, 0);
}

/* Stores float values v (n = t->numel) in t's dtype (F32/F16/BF16). */
static void store(sd_tensor_info *t, const float *v)
{
    for (size_t k = 0; k < t->numel; k++) {
        unsigned char *d = (unsigned char *)t->data;
        if (t->dtype == SD_DT_F32) {
            memcpy(d + 4 * k, &v[k], 4);
        } else {
            uint16_t h = t->dtype == SD_DT_F16 ? sd_f32_to_f16(v[k]) : sd_f32_to_bf16(v[k]);
            memcpy(d + 2 * k, &h, 2);
        }
    }
}

/* The model's tensors for cfg with synthetic values in dtype dt, under
 * diffusers names or (ldm) LDM names; `scale` multiplies every value (1:
 * the synthetic model itself; 0: names and shapes only, no data). */
static void tl_model(tlist *l, const sd_unet_config *cfg, sd_dtype dt, int ldm, float scale)
{
    tlist names = {0};
    sd_weight_source src = {.visit = collect, .visit_user = &names, .check_only = 1};
    sd_unet u;
    sdunet_error err;
    if (sd_unet_build(&u, cfg, &src, NULL, &err)) {
        printf("  build: %s\n", err.message);
        tl_free(&names);
        return;
    }
    sd_unet_release(&u);
    for (size_t i = 0; i < names.n; i++) {
        const sd_tensor_info *s = &names.t[i];
        char ldm_name[512];
        if (ldm && sd_diffusers_to_ldm(cfg, s->name, ldm_name, sizeof ldm_name) != 1) {
            printf("  no LDM name for %s\n", s->name);
            continue;
        }
        sd_tensor_info *t =
            tl_push_ex(l, ldm ? ldm_name : s->name, dt, s->ndim, s->shape, scale != 0);
        if (scale == 0)
            continue;
        float *v = malloc(t->numel * sizeof(float));
        sd_synth_weight(s->name, s->ndim, s->shape, v);
        for (size_t k = 0; k < t->numel; k++)
            v[k] *= scale;
        store(t, v);
        free(v);
    }
    tl_free(&names);
}

/* What a v1-5-pruned-style single file holds beside the UNet: VAE and
 * text-encoder tensors in float16, int64 position_ids, DDPM buffers, EMA
 * bookkeeping, and EMA copies of every UNet tensor (LDM spells them with
 * the dots removed) whose values differ from the model's. */
static void tl_add_extras(tlist *l, const sd_unet_config *cfg)
{
    int64_t s4[4] = {128, 3, 3, 3}, s2[2] = {49408, 16}, s1[1] = {1000}, pid[2] = {1, 77};
    sd_tensor_info *t = tl_push(l, "first_stage_model.encoder.conv_in.weight", SD_DT_F16, 4, s4);
    float *v = malloc(49408 * 16 * sizeof(float));
    sd_synth_fill("vae", t->numel, 0.1, 0, v);
    store(t, v);
    t = tl_push(l, "first_stage_model.decoder.conv_out.bias", SD_DT_F16, 1, (int64_t[]){3});
    store(t, v);
    t = tl_push(l, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
                SD_DT_F16, 2, s2);
    sd_synth_fill("tok", t->numel, 0.1, 0, v);
    store(t, v);
    t = tl_push(l, "cond_stage_model.transformer.text_model.embeddings.position_ids", SD_DT_I64, 2,
                pid);
    for (int64_t k = 0; k < 77; k++)
        memcpy((char *)t->data + 8 * k, &k, 8);
    const char *buffers[] = {"alphas_cumprod", "alphas_cumprod_prev", "betas",
                             "sqrt_alphas_cumprod", "posterior_variance"};
    for (int b = 0; b < 5; b++) {
        t = tl_push(l, buffers[b], SD_DT_F32, 1, s1);
        sd_synth_fill(buffers[b], 1000, 0.5, 0.5f, v);
        store(t, v);
    }
    t = tl_push(l, "model_ema.decay", SD_DT_F32, 0, NULL);
    store(t, (float[]){0.9999f});
    t = tl_push(l, "model_ema.num_updates", SD_DT_I32, 0, NULL);
    free(v);
    /* EMA copies: negated values, both the dotless LDM spelling and a
     * dotted one, so a loader that took either would change the output. */
    tlist ema = {0};
    tl_model(&ema, cfg, SD_DT_F32, 1, -1.0f);
    for (size_t i = 0; i < ema.n; i++) {
        const char *rest = ema.t[i].name + strlen("model.");
        char dotless[512], dotted[512];
        size_t k = 0;
        for (const char *p = rest; *p && k + 1 < sizeof dotless; p++)
            if (*p != '.')
                dotless[k++] = *p;
        dotless[k] = 0;
        char name[600];
        snprintf(name, sizeof name, "model_ema.%s", dotless);
        t = tl_push(l, name, SD_DT_F32, ema.t[i].ndim, ema.t[i].shape);
        memcpy((void *)t->data, ema.t[i].data, t->nbytes);
        snprintf(dotted, sizeof dotted, "model_ema.%s", rest);
        t = tl_push(l, dotted, SD_DT_F32, ema.t[i].ndim, ema.t[i].shape);
        memcpy((void *)t->data, ema.t[i].data, t->nbytes);
    }
    tl_free(&ema);
}

static int tl_write(const tlist *l, const char *path)
{
    sdunet_error err;
    if (sd_safetensors_write(path, l->t, l->n, NULL, &err)) {
        printf("  write %s: %s\n", path, err.message);
        return -1;
    }
    return 0;
}

/* ---- models and outputs ---- */

static int case_config(const char *name, sd_unet_config *cfg)
{
    char p[600];
    snprintf(p, sizeof p, "%s/config.json", t_data(name));
    sdunet_error err;
    if (sd_config_load(p, cfg, &err)) {
        printf("  %s\n", err.message);
        return -1;
    }
    return 0;
}

static sdunet_model *synthetic(const sd_unet_config *cfg, sd_dtype round)
{
    sd_weight_source src = {.synth_round = round};
    sdunet_options o;
    sdunet_options_default(&o);
    o.threads = 2;
    sdunet_model *m = NULL;
    sdunet_error err;
    if (sd_model_create(cfg, &src, &o, &m, &err))
        printf("  synthetic: %s\n", err.message);
    return m;
}

static sdunet_model *load(const char *path, const char *config, const char *variant,
                          sdunet_status want, const char *needle)
{
    sdunet_options o;
    sdunet_options_default(&o);
    o.threads = 2;
    o.variant = variant;
    sdunet_model *m = NULL;
    sdunet_error err = {0};
    sdunet_status st = sdunet_load(path, config, &o, &m, &err);
    CHECK(st == want, "load %s (config %s, variant %s): status %d, want %d: %s", path,
          config ? config : "-", variant ? variant : "-", st, want, err.message);
    CHECK((st == SDUNET_OK) == (m != NULL), "model pointer on status %d", st);
    if (needle)
        CHECK(strstr(err.message, needle) != NULL, "message '%s' lacks '%s'", err.message, needle);
    return m;
}

/* Output of m on the golden case's inputs (n_out floats, malloc'd). */
static float *golden_out(sdunet_model *m, const golden_case *g, double *rel)
{
    float *out = malloc(g->n_out * sizeof(float));
    *rel = golden_run(m, g, 0, NULL, out);
    return out;
}

/* Output on synthetic inputs (1, in, 8, 8) and (1, 5, cross). */
static float *synth_out(sdunet_model *m)
{
    sdunet_model_info info;
    sdunet_get_info(m, &info);
    const int H = 8, W = 8, L = 5;
    size_t ns = (size_t)info.in_channels * H * W, nc = (size_t)L * info.context_dim;
    float *x = malloc(ns * sizeof(float)), *c = malloc(nc * sizeof(float));
    float *y = malloc((size_t)info.out_channels * H * W * sizeof(float)), t = 321;
    sd_synth_fill(SD_SYNTH_SAMPLE_NAME, ns, 1.7, 0, x);
    sd_synth_fill(SD_SYNTH_CONTEXT_NAME, nc, 1.0, 0, c);
    sdunet_error err;
    if (sdunet_forward(m, x, 1, info.in_channels, H, W, &t, 1, c, L, info.context_dim, y, &err)) {
        printf("  forward: %s\n", err.message);
        free(y);
        y = NULL;
    }
    free(x);
    free(c);
    return y;
}

/* Two models give bit-identical outputs on synthetic inputs. */
static int same_outputs(sdunet_model *a, sdunet_model *b)
{
    if (!a || !b)
        return 0;
    sdunet_model_info ia;
    sdunet_get_info(a, &ia);
    float *ya = synth_out(a), *yb = synth_out(b);
    int same = ya && yb && memcmp(ya, yb, (size_t)ia.out_channels * 64 * sizeof(float)) == 0;
    free(ya);
    free(yb);
    return same;
}

/* Small members of the two families inference knows. */
static void sd1_small(sd_unet_config *c)
{
    sdunet_error err;
    sd_config_preset("sd15", c, &err);
    int ch[4] = {32, 64, 64, 64};
    memcpy(c->block_out_channels, ch, sizeof ch);
    c->time_embed_dim = 4 * ch[0];
}

static void sd2_small(sd_unet_config *c)
{
    sdunet_error err;
    sd_config_preset("sd21", c, &err);
    int ch[4] = {64, 128, 128, 128}, heads[4] = {1, 2, 2, 2};
    memcpy(c->block_out_channels, ch, sizeof ch);
    memcpy(c->heads, heads, sizeof heads);
    c->time_embed_dim = 4 * ch[0];
}

/* ---- tests ---- */

/* Every micro weight file, with the config.json beside it. */
static void test_micro_files(void)
{
    golden_case g;
    sd_unet_config cfg;
    CHECK(golden_load("micro", &g) == 0 && case_config("micro", &cfg) == 0, "micro case");
    sdunet_model *ref = synthetic(&cfg, SD_DT_F32);
    double rel;
    float *want = golden_out(ref, &g, &rel);
    const char *f32_files[] = {"weights.safetensors", "weights-ldm.safetensors",
                               "weights-ldm.ckpt"};
    for (int i = 0; i < 3; i++) {
        char p[600];
        snprintf(p, sizeof p, "%s/%s", t_data("micro"), f32_files[i]);
        sdunet_model *m = load(p, NULL, NULL, SDUNET_OK, NULL);
        if (!m)
            continue;
        float *y = golden_out(m, &g, &rel);
        printf("  %s: relative L2 %.3g\n", f32_files[i], rel);
        CHECK(rel >= 0 && rel <= 2e-6, "%s: relative L2 %.3g", f32_files[i], rel);
        CHECK(memcmp(y, want, g.n_out * 4) == 0, "%s: output differs from the synthetic model",
              f32_files[i]);
        free(y);
        sdunet_free(m);
    }
    const char *half[] = {"weights-fp16.safetensors", "weights-bf16.safetensors"};
    const sd_dtype round[] = {SD_DT_F16, SD_DT_BF16};
    for (int i = 0; i < 2; i++) {
        char p[600];
        snprintf(p, sizeof p, "%s/%s", t_data("micro"), half[i]);
        sdunet_model *m = load(p, NULL, NULL, SDUNET_OK, NULL), *r = synthetic(&cfg, round[i]);
        if (m && r) {
            float *y = golden_out(m, &g, &rel), *yr = golden_out(r, &g, &rel);
            CHECK(memcmp(y, yr, g.n_out * 4) == 0,
                  "%s: output differs from the model with rounded weights", half[i]);
            free(y);
            free(yr);
        }
        sdunet_free(m);
        sdunet_free(r);
    }
    free(want);
    sdunet_free(ref);
    golden_free(&g);
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const sd_tensor_info *)a)->name, ((const sd_tensor_info *)b)->name);
}

/* A table of names and shapes only (no data), for inference; sorted by
 * name, as every reader leaves it. */
static void shapes_table(const sd_unet_config *cfg, int ldm, sd_tensorfile *tf, tlist *l)
{
    memset(l, 0, sizeof *l);
    tl_model(l, cfg, SD_DT_F32, ldm, 0.0f);
    qsort(l->t, l->n, sizeof *l->t, cmp_name);
    memset(tf, 0, sizeof *tf);
    tf->format = "test";
    tf->tensors = l->t;
    tf->count = l->n;
}

static void check_infers(const sd_unet_config *cfg, const char *label)
{
    for (int ldm = 0; ldm < 2; ldm++) {
        sd_tensorfile tf;
        tlist l;
        shapes_table(cfg, ldm, &tf, &l);
        sd_unet_config got;
        char report[SD_INFER_REPORT];
        sdunet_error err = {0};
        sdunet_status st = sd_config_infer(&tf, ldm ? SD_LAYOUT_LDM : SD_LAYOUT_DIFFUSERS, &got,
                                           report, sizeof report, &err);
        CHECK(st == SDUNET_OK, "%s (%s): %s", label, ldm ? "ldm" : "diffusers", err.message);
        CHECK(st || memcmp(&got, cfg, sizeof got) == 0, "%s (%s): inferred config differs", label,
              ldm ? "ldm" : "diffusers");
        CHECK(strstr(report, "attn2.to_k.weight") && strstr(report, "proj_in.weight"),
              "%s: report names its tensors: %s", label, report);
        tl_free(&l);
    }
}

/* Inference gives exactly the presets from the full-size names and shapes. */
static void test_infer_presets(void)
{
    sd_unet_config c;
    sdunet_error err;
    sd_config_preset("sd15", &c, &err);
    check_infers(&c, "sd15");
    sd_config_preset("sd21", &c, &err);
    check_infers(&c, "sd21");
    sd1_small(&c);
    check_infers(&c, "sd1-small");
    sd2_small(&c);
    check_infers(&c, "sd2-small");
    /* A 9-channel inpainting UNet keeps its channels. */
    sd_config_preset("sd15", &c, &err);
    c.in_channels = 9;
    check_infers(&c, "sd15-inpaint");

    /* Ambiguous or unsupported: an error that asks for --config. */
    struct {
        const char *label, *needle;
    } bad[] = {{"micro (cross width 16)", "--config"},
               {"sd2 width not a multiple of 64", "--config"},
               {"two transformer layers", "transformer_blocks.1"}};
    for (int k = 0; k < 3; k++) {
        if (k == 0)
            case_config("micro", &c);
        if (k == 1) {
            sd2_small(&c);
            c.block_out_channels[0] = 96;
            c.heads[0] = 1;
            c.time_embed_dim = 384;
        }
        if (k == 2)
            sd_config_preset("sd15", &c, &err);
        sd_tensorfile tf;
        tlist l;
        shapes_table(&c, 1, &tf, &l);
        if (k == 2) { /* rename one tensor into a second transformer layer */
            for (size_t i = 0; i < l.n; i++) {
                char *p = strstr(l.t[i].name, "transformer_blocks.0.norm3.bias");
                if (p) {
                    p[strlen("transformer_blocks.")] = '1';
                    break;
                }
            }
            qsort(l.t, l.n, sizeof *l.t, cmp_name);
        }
        sd_unet_config got;
        sdunet_error e = {0};
        sdunet_status st = sd_config_infer(&tf, SD_LAYOUT_LDM, &got, NULL, 0, &e);
        CHECK(st == SDUNET_E_CONFIG, "%s: status %d", bad[k].label, st);
        CHECK(strstr(e.message, bad[k].needle), "%s: '%s' lacks '%s'", bad[k].label, e.message,
              bad[k].needle);
        tl_free(&l);
    }
}

/* LDM and diffusers files with no config anywhere load through inference
 * and give the model their config describes. */
static void test_inferred_files_load(void)
{
    sd_unet_config cfgs[2];
    sd1_small(&cfgs[0]);
    sd2_small(&cfgs[1]);
    for (int k = 0; k < 2; k++) {
        sdunet_model *ref = synthetic(&cfgs[k], SD_DT_F32);
        for (int ldm = 0; ldm < 2; ldm++) {
            tlist l = {0};
            tl_model(&l, &cfgs[k], SD_DT_F32, ldm, 1.0f);
            const char *p = t_tmp("infer-%d-%d.safetensors", k, ldm);
            if (tl_write(&l, p) == 0) {
                sdunet_model *m = load(p, NULL, NULL, SDUNET_OK, NULL);
                CHECK(same_outputs(m, ref), "%s %s file: output differs from the model",
                      k ? "sd2-small" : "sd1-small", ldm ? "ldm" : "diffusers");
                sdunet_free(m);
            }
            tl_free(&l);
        }
        sdunet_free(ref);
    }
}

/* The tiny cases' weights, written here, converted to LDM by the CLI and
 * loaded from the LDM file: the golden outputs. tiny-sd2 has linear
 * projections, so its LDM proj_in is a matrix. */
static void test_tiny_cases_via_convert(void)
{
    const char *cases[2] = {"tiny", "tiny-sd2"};
    for (int k = 0; k < 2; k++) {
        golden_case g;
        sd_unet_config cfg;
        CHECK(golden_load(cases[k], &g) == 0 && case_config(cases[k], &cfg) == 0, "%s", cases[k]);
        tlist l = {0};
        tl_model(&l, &cfg, SD_DT_F32, 0, 1.0f);
        const char *diff = t_tmp("%s-diffusers.safetensors", cases[k]);
        const char *ldm = t_tmp("%s-ldm.safetensors", cases[k]);
        tl_write(&l, diff);
        tl_free(&l);
        const char *out, *errs;
        int rc = cli(&out, &errs, "convert %s %s --layout ldm --config %s/config.json", diff, ldm,
                     t_data(cases[k]));
        CHECK(rc == 0, "convert %s: %d %s", cases[k], rc, errs);
        char cfgp[600];
        snprintf(cfgp, sizeof cfgp, "%s/config.json", t_data(cases[k]));
        sdunet_model *m = load(ldm, cfgp, NULL, SDUNET_OK, NULL);
        if (m) {
            double rel;
            float *y = golden_out(m, &g, &rel);
            printf("  %s through an LDM file: relative L2 %.3g\n", cases[k], rel);
            CHECK(rel >= 0 && rel <= 2e-6, "%s: relative L2 %.3g", cases[k], rel);
            free(y);
        }
        sd_tensorfile *tf = NULL;
        sdunet_error err;
        if (sd_tensorfile_open(ldm, &tf, &err) == SDUNET_OK) {
            const sd_tensor_info *t =
                sd_tensorfile_find(tf, "model.diffusion_model.input_blocks.1.1.proj_in.weight");
            CHECK(t && t->ndim == (cfg.use_linear_projection ? 2 : 4), "%s: proj_in rank",
                  cases[k]);
            CHECK(sd_detect_layout(tf) == SD_LAYOUT_LDM, "%s: layout", cases[k]);
            sd_tensorfile_close(tf);
        }
        sdunet_free(m);
        golden_free(&g);
    }
}

/* A single-file checkpoint as released: the UNet plus VAE, text encoder,
 * scheduler buffers and EMA copies with other values. */
static void test_full_checkpoint(void)
{
    golden_case g;
    sd_unet_config cfg;
    CHECK(golden_load("micro", &g) == 0 && case_config("micro", &cfg) == 0, "micro case");
    tlist l = {0};
    tl_model(&l, &cfg, SD_DT_F32, 1, 1.0f);
    tl_add_extras(&l, &cfg);
    const char *p = t_tmp("v1-5-pruned-like.safetensors");
    tl_write(&l, p);
    tl_free(&l);
    char cfgp[600];
    snprintf(cfgp, sizeof cfgp, "%s/config.json", t_data("micro"));
    sdunet_model *m = load(p, cfgp, NULL, SDUNET_OK, NULL), *ref = synthetic(&cfg, SD_DT_F32);
    if (m && ref) {
        double rel, rel_ref;
        float *y = golden_out(m, &g, &rel), *yr = golden_out(ref, &g, &rel_ref);
        printf("  micro single-file checkpoint: relative L2 %.3g\n", rel);
        CHECK(rel >= 0 && rel <= 2e-6, "relative L2 %.3g", rel);
        CHECK(memcmp(y, yr, g.n_out * 4) == 0, "output differs from the model keys' model");
        free(y);
        free(yr);
    }
    sdunet_free(m);

    /* The EMA values would have changed the output: a file whose model
     * keys hold them gives a different one. */
    tl_model(&l, &cfg, SD_DT_F32, 1, -1.0f);
    p = t_tmp("ema-values.safetensors");
    tl_write(&l, p);
    tl_free(&l);
    m = load(p, cfgp, NULL, SDUNET_OK, NULL);
    CHECK(m && ref && !same_outputs(m, ref), "the EMA values do change the output");
    sdunet_free(m);
    sdunet_free(ref);
    golden_free(&g);

    /* The same without any config: inference on an SD1-family file. */
    sd1_small(&cfg);
    tl_model(&l, &cfg, SD_DT_F16, 1, 1.0f);
    tl_add_extras(&l, &cfg);
    mkdir(t_tmp("single"), 0755);
    p = t_tmp("single/model.safetensors");
    tl_write(&l, p);
    tl_free(&l);
    m = load(p, NULL, NULL, SDUNET_OK, NULL);
    ref = synthetic(&cfg, SD_DT_F16);
    CHECK(same_outputs(m, ref), "inferred single-file checkpoint: output differs");
    sdunet_free(m);
    sdunet_free(ref);

    const char *out, *errs;
    int rc = cli(&out, &errs, "info %s", p);
    CHECK(rc == 0, "info: %d %s", rc, errs);
    CHECK(strstr(out, "layout: ldm") && strstr(out, "config: inferred") &&
              strstr(out, "loads: yes") && strstr(out, "first_stage_model.* 2") &&
              strstr(out, "model_ema.* ") && strstr(out, "cond_stage_model.* 2") &&
              strstr(out, "dim 1 of model.diffusion_model.middle_block.1.transformer_blocks.0."
                          "attn2.to_k.weight"),
          "info output:\n%s", out);
    /* convert keeps only the UNet */
    rc = cli(&out, &errs, "convert %s %s", p, t_tmp("single-unet.safetensors"));
    CHECK(rc == 0, "convert: %d %s", rc, errs);
    sd_tensorfile *tf = NULL;
    sdunet_error err;
    if (sd_tensorfile_open(t_tmp("single-unet.safetensors"), &tf, &err) == SDUNET_OK) {
        tlist names = {0};
        tl_model(&names, &cfg, SD_DT_F32, 0, 0.0f);
        CHECK(tf->count == names.n, "convert wrote %zu tensors, the UNet has %zu", tf->count,
              names.n);
        CHECK(sd_detect_layout(tf) == SD_LAYOUT_DIFFUSERS, "diffusers names");
        tl_free(&names);
        sd_tensorfile_close(tf);
    }
}

static int copy_file(const char *from, const char *to)
{
    return sh("cp '%s' '%s'", from, to);
}

/* Diffusers folders: a pipeline's unet/ and the UNet's own folder, the
 * fp16 variant, and a folder without a config. */
static void test_diffusers_folders(void)
{
    golden_case g;
    sd_unet_config cfg;
    CHECK(golden_load("micro", &g) == 0 && case_config("micro", &cfg) == 0, "micro case");
    const char *m = t_data("micro");
    char src[600];
    CHECK(sh("mkdir -p %s/pipe/unet %s/fp16only %s/noconf/unet", t_tmp_dir(), t_tmp_dir(),
             t_tmp_dir()) == 0,
          "mkdir");
    snprintf(src, sizeof src, "%s/config.json", m);
    copy_file(src, t_tmp("pipe/unet/config.json"));
    copy_file(src, t_tmp("fp16only/config.json"));
    snprintf(src, sizeof src, "%s/weights.safetensors", m);
    copy_file(src, t_tmp("pipe/unet/diffusion_pytorch_model.safetensors"));
    copy_file(src, t_tmp("noconf/unet/diffusion_pytorch_model.safetensors"));
    snprintf(src, sizeof src, "%s/weights-fp16.safetensors", m);
    copy_file(src, t_tmp("pipe/unet/diffusion_pytorch_model.fp16.safetensors"));
    copy_file(src, t_tmp("fp16only/diffusion_pytorch_model.fp16.safetensors"));
    FILE *f = fopen(t_tmp("pipe/model_index.json"), "w");
    if (f) {
        fputs("{\"_class_name\": \"StableDiffusionPipeline\"}\n", f);
        fclose(f);
    }

    sdunet_model *ref = synthetic(&cfg, SD_DT_F32), *ref16 = synthetic(&cfg, SD_DT_F16);
    double rel;
    float *want = golden_out(ref, &g, &rel), *want16 = golden_out(ref16, &g, &rel);
    struct {
        const char *path, *variant;
        const float *want;
    } ok[] = {{t_tmp("pipe"), NULL, want},       {t_tmp("pipe/unet"), NULL, want},
              {t_tmp("pipe"), "fp16", want16},   {t_tmp("pipe/unet"), "fp16", want16},
              {t_tmp("fp16only"), NULL, want16}, {t_tmp("fp16only"), "fp16", want16}};
    for (size_t k = 0; k < sizeof ok / sizeof ok[0]; k++) {
        sdunet_model *mm = load(ok[k].path, NULL, ok[k].variant, SDUNET_OK, NULL);
        if (!mm)
            continue;
        float *y = golden_out(mm, &g, &rel);
        CHECK(memcmp(y, ok[k].want, g.n_out * 4) == 0, "%s (variant %s): output differs",
              ok[k].path, ok[k].variant ? ok[k].variant : "-");
        free(y);
        sdunet_free(mm);
    }
    load(t_tmp("pipe"), NULL, "bf16", SDUNET_E_IO, "diffusion_pytorch_model.bf16.safetensors");
    load(t_tmp("pipe"), NULL, "../fp16", SDUNET_E_INVALID_ARG, "variant");
    load(t_tmp("pipe/unet/diffusion_pytorch_model.safetensors"), NULL, "fp16", SDUNET_E_INVALID_ARG,
         "variant");
    load(t_tmp("single"), NULL, NULL, SDUNET_E_IO, "no UNet weights");
    /* No config.json and nothing to infer the heads from (cross width 16). */
    load(t_tmp("noconf"), NULL, NULL, SDUNET_E_CONFIG, "--config");
    char cfgp[600];
    snprintf(cfgp, sizeof cfgp, "%s/config.json", m);
    sdunet_model *mm = load(t_tmp("noconf"), cfgp, NULL, SDUNET_OK, NULL);
    sdunet_free(mm);
    /* A lone LDM file with no config beside it: the same. */
    snprintf(src, sizeof src, "%s/weights-ldm.ckpt", m);
    copy_file(src, t_tmp("noconf/weights-ldm.ckpt"));
    load(t_tmp("noconf/weights-ldm.ckpt"), NULL, NULL, SDUNET_E_CONFIG, "--config");

    /* The CLI: a folder with --variant, against the float64 reference. */
    const char *out, *errs;
    int rc = cli(&out, &errs,
                 "run --model %s --variant fp16 --sample %s/sample.npy --timestep 1 --context "
                 "%s/context.npy --out %s --threads 2",
                 t_tmp("pipe"), m, m, t_tmp("o.npy"));
    CHECK(rc == 0 && strstr(out, "checksum"), "run --variant: %d %s", rc, errs);
    rc = cli(&out, &errs, "info %s --variant fp16", t_tmp("pipe"));
    CHECK(rc == 0 && strstr(out, "diffusion_pytorch_model.fp16.safetensors") &&
              strstr(out, "(beside the weights)") && strstr(out, "folder: "),
          "info folder: %d %s %s", rc, out, errs);
    rc = cli(&out, &errs, "info %s", t_tmp("noconf"));
    CHECK(rc != 0 && strstr(out, "--config"), "info without config: %d %s", rc, out);
    free(want);
    free(want16);
    sdunet_free(ref);
    sdunet_free(ref16);
    golden_free(&g);
}

/* Two files hold the same tensors: names, dtypes, shapes and bytes. */
static int same_tensors(const char *a, const char *b)
{
    sd_tensorfile *ta = NULL, *tb = NULL;
    sdunet_error err;
    int same = sd_tensorfile_open(a, &ta, &err) == SDUNET_OK &&
               sd_tensorfile_open(b, &tb, &err) == SDUNET_OK && ta->count == tb->count;
    for (size_t i = 0; same && i < ta->count; i++) {
        const sd_tensor_info *x = &ta->tensors[i], *y = &tb->tensors[i];
        same = strcmp(x->name, y->name) == 0 && x->dtype == y->dtype && x->ndim == y->ndim &&
               memcmp(x->shape, y->shape, sizeof x->shape[0] * (size_t)x->ndim) == 0 &&
               x->nbytes == y->nbytes && memcmp(x->data, y->data, x->nbytes) == 0;
        if (!same)
            printf("  %s: first difference at %s\n", b, x->name);
    }
    sd_tensorfile_close(ta);
    sd_tensorfile_close(tb);
    return same;
}

static void convert_ok(const char *args)
{
    const char *out, *errs;
    int rc = cli(&out, &errs, "convert %s", args);
    CHECK(rc == 0 && strstr(out, "wrote"), "convert %s: %d %s", args, rc, errs);
}

static void test_convert_round_trips(void)
{
    const char *m = t_data("micro");
    char a[2000];
    /* ldm -> diffusers -> ldm, and the ckpt -> diffusers */
    snprintf(a, sizeof a, "%s/weights-ldm.safetensors %s", m, t_tmp("rt-diff.safetensors"));
    convert_ok(a);
    char want[600];
    snprintf(want, sizeof want, "%s/weights.safetensors", m);
    CHECK(same_tensors(want, t_tmp("rt-diff.safetensors")), "ldm -> diffusers");
    snprintf(a, sizeof a, "%s %s --layout ldm --config %s/config.json",
             t_tmp("rt-diff.safetensors"), t_tmp("rt-ldm.safetensors"), m);
    convert_ok(a);
    snprintf(want, sizeof want, "%s/weights-ldm.safetensors", m);
    CHECK(same_tensors(want, t_tmp("rt-ldm.safetensors")), "ldm -> diffusers -> ldm");
    snprintf(a, sizeof a, "%s/weights-ldm.ckpt %s", m, t_tmp("rt-ckpt.safetensors"));
    convert_ok(a);
    snprintf(want, sizeof want, "%s/weights.safetensors", m);
    CHECK(same_tensors(want, t_tmp("rt-ckpt.safetensors")), "ckpt -> diffusers");
    /* f32 -> f16 / bf16: the rounded values, byte for byte as the reference files */
    const char *dts[2] = {"f16", "bf16"}, *refs[2] = {"weights-fp16", "weights-bf16"};
    for (int k = 0; k < 2; k++) {
        snprintf(a, sizeof a, "%s/weights-ldm.ckpt %s --dtype %s", m,
                 t_tmp("rt-%s.safetensors", dts[k]), dts[k]);
        convert_ok(a);
        snprintf(want, sizeof want, "%s/%s.safetensors", m, refs[k]);
        CHECK(same_tensors(want, t_tmp("rt-%s.safetensors", dts[k])), "f32 -> %s", dts[k]);
    }
    /* f16 -> f32 widens exactly, and back gives the same half bytes */
    snprintf(a, sizeof a, "%s/weights-fp16.safetensors %s --dtype f32", m,
             t_tmp("rt-wide.safetensors"));
    convert_ok(a);
    sd_tensorfile *half = NULL, *wide = NULL;
    sdunet_error err;
    snprintf(want, sizeof want, "%s/weights-fp16.safetensors", m);
    if (sd_tensorfile_open(want, &half, &err) == SDUNET_OK &&
        sd_tensorfile_open(t_tmp("rt-wide.safetensors"), &wide, &err) == SDUNET_OK) {
        size_t bad = 0;
        for (size_t i = 0; i < half->count && i < wide->count; i++) {
            const sd_tensor_info *h = &half->tensors[i], *w = &wide->tensors[i];
            bad += w->dtype != SD_DT_F32 || w->numel != h->numel;
            for (size_t k = 0; !bad && k < h->numel; k++) {
                uint16_t hv;
                float wv;
                memcpy(&hv, (const char *)h->data + 2 * k, 2);
                memcpy(&wv, (const char *)w->data + 4 * k, 4);
                bad += memcmp(&wv, &(float){sd_f16_to_f32(hv)}, 4) != 0;
            }
        }
        CHECK(half->count == wide->count && bad == 0, "f16 -> f32 is not the exact widening");
    }
    sd_tensorfile_close(half);
    sd_tensorfile_close(wide);
    snprintf(a, sizeof a, "%s %s --dtype f16 --layout ldm --config %s/config.json",
             t_tmp("rt-wide.safetensors"), t_tmp("rt-narrow.safetensors"), m);
    convert_ok(a);
    snprintf(a, sizeof a, "%s %s --dtype f16 --config %s/config.json",
             t_tmp("rt-narrow.safetensors"), t_tmp("rt-back.safetensors"), m);
    convert_ok(a);
    snprintf(want, sizeof want, "%s/weights-fp16.safetensors", m);
    CHECK(same_tensors(want, t_tmp("rt-back.safetensors")), "f16 -> f32 -> f16");
    /* diffusers' conventions: metadata first, header padded to 8 bytes */
    FILE *f = fopen(t_tmp("rt-ldm.safetensors"), "rb");
    unsigned char head[64] = {0};
    if (f) {
        CHECK(fread(head, 1, sizeof head, f) == sizeof head, "read header");
        fclose(f);
    }
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++)
        hl |= (uint64_t)head[i] << (8 * i);
    CHECK(hl % 8 == 0 && memcmp(head + 8, "{\"__metadata__\":", 16) == 0, "header layout");

    const char *out, *errs;
    int rc = cli(&out, &errs, "convert --help");
    CHECK(rc == 0 && strstr(out, "UNet tensors only"), "convert --help: %s", out);
    rc = cli(&out, &errs, "convert %s/weights.safetensors %s --layout caffe", m, t_tmp("x"));
    CHECK(rc == 1 && strstr(errs, "--layout"), "bad layout: %d %s", rc, errs);
    rc = cli(&out, &errs, "convert %s/weights.safetensors %s --dtype f8", m, t_tmp("x"));
    CHECK(rc == 1 && strstr(errs, "--dtype"), "bad dtype: %d %s", rc, errs);
    rc = cli(&out, &errs, "convert %s/weights.safetensors", m);
    CHECK(rc == 1 && strstr(errs, "OUT"), "no OUT: %d %s", rc, errs);
    rc = cli(&out, &errs, "convert %s/weights.safetensors %s --config sd15", m, t_tmp("x"));
    CHECK(rc == 1 && strstr(errs, "mismatched"), "wrong config: %d %s", rc, errs);
}

/* Missing tensors in an LDM file are named both ways; mixed and empty
 * layouts are refused. */
static void test_errors(void)
{
    sd_unet_config cfg;
    case_config("micro", &cfg);
    char cfgp[600];
    snprintf(cfgp, sizeof cfgp, "%s/config.json", t_data("micro"));
    tlist l = {0};
    tl_model(&l, &cfg, SD_DT_F32, 1, 1.0f);
    for (size_t i = 0; i < l.n; i++)
        if (strcmp(l.t[i].name, "model.diffusion_model.middle_block.1.proj_in.weight") == 0) {
            free(l.t[i].name);
            l.t[i].name = strdup("model.diffusion_model.middle_block.1.proj_in.weight_renamed");
        }
    tl_write(&l, t_tmp("missing.safetensors"));
    load(t_tmp("missing.safetensors"), cfgp, NULL, SDUNET_E_WEIGHTS,
         "model.diffusion_model.middle_block.1.proj_in.weight");
    load(t_tmp("missing.safetensors"), cfgp, NULL, SDUNET_E_WEIGHTS,
         "mid_block.attentions.0.proj_in.weight");
    /* both layouts in one file */
    tl_push(&l, "conv_in.weight", SD_DT_F32, 1, (int64_t[]){1});
    tl_write(&l, t_tmp("mixed.safetensors"));
    load(t_tmp("mixed.safetensors"), cfgp, NULL, SDUNET_E_WEIGHTS, "both");
    load(t_tmp("mixed.safetensors"), NULL, NULL, SDUNET_E_WEIGHTS, "both");
    tl_free(&l);
    /* nothing of a UNet */
    tl_push(&l, "first_stage_model.encoder.conv_in.bias", SD_DT_F16, 1, (int64_t[]){4});
    tl_write(&l, t_tmp("vae-only.safetensors"));
    load(t_tmp("vae-only.safetensors"), cfgp, NULL, SDUNET_E_WEIGHTS, "no UNet tensors");
    load(t_tmp("vae-only.safetensors"), NULL, NULL, SDUNET_E_WEIGHTS, "no UNet tensors");
    tl_free(&l);
    load(t_tmp("does-not-exist"), NULL, NULL, SDUNET_E_IO, "does-not-exist");
}

static long resident_pages(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = -1, res = -1;
    if (f) {
        if (fscanf(f, "%ld %ld", &size, &res) != 2)
            res = -1;
        fclose(f);
    }
    return res;
}

/* Released tensors leave the process's resident set, and read back the
 * same afterwards. */
static void test_release_pages(void)
{
    tlist l = {0};
    const int n = 8;
    int64_t shape[1] = {1 << 20}; /* 4 MiB each */
    for (int k = 0; k < n; k++) {
        char name[32];
        snprintf(name, sizeof name, "t%d", k);
        sd_tensor_info *t = tl_push(&l, name, SD_DT_F32, 1, shape);
        float *v = (float *)t->data;
        for (size_t i = 0; i < t->numel; i++)
            v[i] = (float)(i % 1000) + (float)k;
    }
    tl_write(&l, t_tmp("release.safetensors"));
    tl_free(&l);
    sd_tensorfile *tf = NULL;
    sdunet_error err;
    CHECK(sd_tensorfile_open(t_tmp("release.safetensors"), &tf, &err) == SDUNET_OK, "%s",
          err.message);
    if (!tf)
        return;
    double sums[2] = {0, 0};
    long before = resident_pages(), touched = 0, after = 0;
    long page = sysconf(_SC_PAGESIZE);
    for (int pass = 0; pass < 2; pass++) {
        for (size_t k = 0; k < tf->count; k++) {
            const float *v = tf->tensors[k].data;
            for (size_t i = 0; i < tf->tensors[k].numel; i++)
                sums[pass] += v[i];
        }
        if (pass == 0)
            touched = resident_pages();
        for (size_t k = 0; k < tf->count; k++)
            sd_tensorfile_release(tf, &tf->tensors[k]);
        if (pass == 0)
            after = resident_pages();
    }
    CHECK(sums[0] == sums[1] && sums[0] > 0, "data changed after release: %g vs %g", sums[0],
          sums[1]);
    if (before >= 0 && page > 0) {
        long mib = 1048576 / page;
        printf("  resident: %ld MiB before, %ld touched, %ld after release\n", before / mib,
               touched / mib, after / mib);
        CHECK(touched - before >= 30 * mib, "touching 32 MiB grew RSS by only %ld pages",
              touched - before);
        CHECK(touched - after >= 30 * mib, "release dropped only %ld pages", touched - after);
    }
    sd_tensorfile_close(tf);
}

int main(void)
{
    const char *bin = getenv("SDUNET_BIN"), *build = getenv("BUILD");
    if (bin)
        snprintf(g_bin, sizeof g_bin, "%s", bin);
    else
        snprintf(g_bin, sizeof g_bin, "%s/sdunet", build && *build ? build : "build");
    FILE *f = fopen(g_bin, "rb");
    CHECK(f != NULL, "no CLI binary at %s (set BUILD)", g_bin);
    if (f)
        fclose(f);
    RUN(test_micro_files);
    RUN(test_infer_presets);
    RUN(test_inferred_files_load);
    RUN(test_tiny_cases_via_convert);
    RUN(test_full_checkpoint);
    RUN(test_diffusers_folders);
    RUN(test_convert_round_trips);
    RUN(test_errors);
    RUN(test_release_pages);
    return t_summary();
}
