/* The CLIP text encoders against the float64 references of the golden cases
 * (tests/data/text): SD1-style (quick_gelu) and SD2-style (GELU) tiny
 * encoders, last hidden state and clip skip 1, from files in every layout
 * the loader reads: transformers names (bare, and under an SD1 single-file
 * prefix, written here from the synthetic weights) and the SD2 single-file
 * OpenCLIP layout (the case's own file, with its decoy keys and unused last
 * block). The full-size SD1.5 / SD2.1 encoders run on synthetic weights
 * against references made with transformers. */
#include "check.h"
#include "clip/encoder.h"
#include "engine/synth.h"
#include "io/json.h"
#include "io/npy.h"
#include "sdunet_text.h"

#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define BAR 2e-6

/* int64 .npy (B, L) -> int32 ids; returns B*L or 0. */
static size_t read_ids(const char *path, int32_t *ids, size_t cap)
{
    size_t size = 0;
    unsigned char *buf = t_read_file(path, &size);
    if (!buf || size < 12) {
        free(buf);
        return 0;
    }
    size_t hlen = buf[6] == 1 ? (size_t)(buf[8] | buf[9] << 8) + 10
                              : (size_t)(buf[8] | buf[9] << 8 | buf[10] << 16) + 12;
    size_t n = (size - hlen) / 8;
    if (n > cap || !strstr((char *)buf + 10, "<i8"))
        n = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t v;
        memcpy(&v, buf + hlen + 8 * i, 8);
        ids[i] = (int32_t)v;
    }
    free(buf);
    return n;
}

static sd_clip_config read_config(const char *path)
{
    sd_clip_config c = {0};
    size_t n;
    char *text = t_read_file(path, &n);
    sdunet_error err;
    if (!text || sd_clip_config_parse(text, n, &c, &err) != SDUNET_OK)
        printf("  cannot read %s\n", path);
    free(text);
    return c;
}

/* Collects the names and shapes a build asks for. */
typedef struct wlist {
    char name[128][96];
    int ndim[128];
    int64_t shape[128][2];
    int n;
} wlist;

static void visit(void *user, const char *name, int ndim, const int64_t *shape)
{
    wlist *w = user;
    if (w->n < 128 && strlen(name) < sizeof w->name[0]) {
        snprintf(w->name[w->n], sizeof w->name[0], "%s", name);
        w->ndim[w->n] = ndim;
        for (int i = 0; i < ndim && i < 2; i++)
            w->shape[w->n][i] = shape[i];
        w->n++;
    }
}

/* Writes the synthetic weights of cfg under transformers' names with
 * "text_model." replaced by `prefix`; the token embedding as F16 when
 * tok_f16. Returns 0 on success. */
static int write_synthetic(const sd_clip_config *cfg, const char *prefix, int tok_f16,
                           const char *path)
{
    const sd_kernels *kern = sd_kernels_select(NULL);
    wlist *w = calloc(1, sizeof *w);
    sd_weight_source src = {.check_only = 1, .visit = visit, .visit_user = w};
    sd_clip m;
    sdunet_error err;
    if (sd_clip_build(&m, cfg, &src, NULL, kern, &err) != SDUNET_OK || w->n == 0) {
        free(w);
        return -1;
    }
    sd_clip_release(&m);
    sd_tensor_info *t = calloc((size_t)w->n, sizeof *t);
    int rc = 0;
    for (int i = 0; i < w->n; i++) {
        size_t n = 1;
        for (int d = 0; d < w->ndim[i]; d++)
            n *= (size_t)w->shape[i][d];
        float *v = malloc(n * sizeof(float));
        sd_synth_weight(w->name[i], w->ndim[i], w->shape[i], v);
        char *nm = malloc(256);
        snprintf(nm, 256, "%s%s", prefix, w->name[i] + strlen("text_model."));
        t[i].name = nm;
        t[i].ndim = w->ndim[i];
        memcpy(t[i].shape, w->shape[i], sizeof w->shape[i]);
        t[i].numel = n;
        if (tok_f16 && strstr(nm, "token_embedding")) {
            uint16_t *h = malloc(n * 2);
            for (size_t k = 0; k < n; k++)
                h[k] = sd_f32_to_f16(v[k]);
            free(v);
            t[i].dtype = SD_DT_F16;
            t[i].data = h;
            t[i].nbytes = n * 2;
        } else {
            t[i].dtype = SD_DT_F32;
            t[i].data = v;
            t[i].nbytes = n * 4;
        }
    }
    if (sd_safetensors_write(path, t, (size_t)w->n, NULL, &err) != SDUNET_OK) {
        printf("  %s\n", err.message);
        rc = -1;
    }
    for (int i = 0; i < w->n; i++) {
        free(t[i].name);
        free((void *)t[i].data);
    }
    free(t);
    free(w);
    return rc;
}

/* Loads the encoder from `file` and checks both outputs of `dir`'s case. */
static void check_case(const char *dir, const char *file, int want_layout, const char *want_prefix)
{
    char p[256];
    snprintf(p, sizeof p, "%s/config.json", dir);
    sd_clip_config cfg = read_config(t_data(p)), found;
    int32_t ids[4 * 77];
    snprintf(p, sizeof p, "%s/ids.npy", dir);
    size_t n_ids = read_ids(t_data(p), ids, 4 * 77);
    CHECK(n_ids > 0 && n_ids % 77 == 0, "%s ids", dir);
    if (!n_ids)
        return;
    const int B = (int)(n_ids / 77);
    sd_tensorfile *tf = NULL;
    sdunet_error err;
    CHECK(sd_tensorfile_open(file, &tf, &err) == SDUNET_OK, "%s: %s", file, err.message);
    if (!tf)
        return;
    sd_clip_names names;
    sdunet_status st = sd_clip_find(tf, &names, &found, &err);
    CHECK(st == SDUNET_OK, "find in %s: %s", file, err.message);
    CHECK(st || ((int)names.layout == want_layout && strcmp(names.prefix, want_prefix) == 0),
          "%s: layout %d prefix '%s'", file, names.layout, names.prefix);
    CHECK(st || (found.hidden == cfg.hidden && found.ffn == cfg.ffn && found.layers == cfg.layers &&
                 found.vocab == cfg.vocab && found.positions == cfg.positions),
          "%s: inferred width %d ffn %d layers %d", file, found.hidden, found.ffn, found.layers);
    sd_weight_source src = {.file = tf};
    const sd_kernels *kern = sd_kernels_select(NULL);
    sd_clip m;
    st = sd_clip_build(&m, &cfg, &src, &names, kern, &err);
    CHECK(st == SDUNET_OK, "build from %s: %s", file, err.message);
    if (st == SDUNET_OK) {
        sd_pool *pool = NULL;
        CHECK(sd_pool_create(2, &pool, &err) == SDUNET_OK, "pool");
        sd_exec ex = {.pool = pool, .kern = kern};
        size_t nf = sd_clip_plan(&m, B, 77), n_out = (size_t)B * 77 * cfg.hidden;
        float *mem = sd_alloc(nf * sizeof(float)), *out = sd_alloc(n_out * sizeof(float));
        for (int skip = 0; skip < 2; skip++) {
            sd_clip_forward(&m, &ex, mem, B, 77, ids, skip, out, NULL);
            snprintf(p, sizeof p, "%s/expected%s_f64.npy", dir, skip ? "_skip1" : "");
            double e = t_rel_l2_npy(out, t_data(p), n_out);
            printf("  %s skip %d: rel L2 %.3g\n",
                   file + (strlen(file) > 40 ? strlen(file) - 40 : 0), skip, e);
            CHECK(e < BAR, "%s skip %d: rel L2 %.3g", file, skip, e);
        }
        sd_free(mem);
        sd_free(out);
        sd_pool_destroy(pool);
        sd_clip_release(&m);
    }
    sd_tensorfile_close(tf);
}

static void test_tiny_sd1(void)
{
    sd_clip_config cfg = read_config(t_data("text/clip-tiny-sd1/config.json"));
    CHECK(cfg.quick_gelu == 1 && cfg.layers == 3 && cfg.hidden == 32, "config");
    const char *bare = t_tmp("sd1-bare.safetensors"), *ldm = t_tmp("sd1-ldm.safetensors");
    CHECK(write_synthetic(&cfg, "text_model.", 0, bare) == 0, "write %s", bare);
    CHECK(write_synthetic(&cfg, "cond_stage_model.transformer.text_model.", 0, ldm) == 0,
          "write %s", ldm);
    check_case("text/clip-tiny-sd1", bare, SD_CLIP_TRANSFORMERS, "text_model.");
    check_case("text/clip-tiny-sd1", ldm, SD_CLIP_TRANSFORMERS,
               "cond_stage_model.transformer.text_model.");
    remove(bare);
    remove(ldm);
}

static void test_tiny_sd2(void)
{
    sd_clip_config cfg = read_config(t_data("text/clip-tiny-sd2/config.json"));
    CHECK(cfg.quick_gelu == 0 && cfg.layers == 4 && cfg.hidden == 48, "config");
    const char *f16 = t_tmp("sd2-f16tok.safetensors");
    CHECK(write_synthetic(&cfg, "text_model.", 1, f16) == 0, "write %s", f16);
    check_case("text/clip-tiny-sd2", f16, SD_CLIP_TRANSFORMERS, "text_model.");
    remove(f16);
    check_case("text/clip-tiny-sd2", t_data("text/clip-tiny-sd2/weights-ldm.safetensors"),
               SD_CLIP_OPENCLIP, "cond_stage_model.model.");
}

/* Missing and mis-shaped tensors: one error listing them, nothing leaked. */
static void test_bad_weights(void)
{
    sd_clip_config cfg = read_config(t_data("text/clip-tiny-sd1/config.json"));
    sd_tensorfile *tf = NULL;
    sdunet_error err;
    CHECK(sd_tensorfile_open(t_data("text/clip-tiny-sd2/weights-ldm.safetensors"), &tf, &err) ==
              SDUNET_OK,
          "open");
    if (!tf)
        return;
    sd_clip_names names;
    sd_clip_config found;
    CHECK(sd_clip_find(tf, &names, &found, &err) == SDUNET_OK, "find");
    sd_weight_source src = {.file = tf};
    sd_clip m;
    /* a 32-wide configuration on a 48-wide file */
    sdunet_status st = sd_clip_build(&m, &cfg, &src, &names, sd_kernels_select(NULL), &err);
    CHECK(st == SDUNET_E_WEIGHTS && strstr(err.message, "has shape") &&
              strstr(err.message, "expected"),
          "mis-shaped: %d %s", st, err.message);
    /* five layers asked of a file with four used blocks + one unused: the
     * fifth is the unused block, the sixth is missing */
    found.layers = 6;
    found.heads = 4;
    st = sd_clip_build(&m, &found, &src, &names, sd_kernels_select(NULL), &err);
    CHECK(st == SDUNET_E_WEIGHTS && strstr(err.message, "resblocks.5"), "missing: %d %s", st,
          err.message);
    sd_tensorfile_close(tf);
}

/* The full-size encoders on synthetic weights, prompt text to hidden
 * states through the public API, against transformers' float64 forward
 * (references rounded to float32: 2.6e-8 of the bar). */
static void full_case(const char *preset, const char *dir)
{
    char p[256];
    snprintf(p, sizeof p, "%s/manifest.json", dir);
    size_t mlen;
    char *mtext = t_read_file(t_data(p), &mlen);
    sd_json *man = NULL;
    sdunet_error err;
    CHECK(mtext && sd_json_parse(mtext, mlen, &man, &err) == SDUNET_OK, "%s", p);
    const sd_json *pr = man ? sd_json_get(man, "prompts") : NULL;
    int B = pr && pr->type == SD_JSON_ARRAY ? (int)pr->len : 0;
    CHECK(B == 2, "%s: prompts", dir);
    sdunet_text *t = NULL;
    sdunet_text_options o;
    sdunet_text_options_default(&o);
    o.threads = 2;
    sdunet_status st = B == 2 ? sdunet_text_load_synthetic(preset, &o, &t, &err) : SDUNET_E_IO;
    CHECK(st == SDUNET_OK, "load %s: %s", preset, err.message);
    if (st == SDUNET_OK) {
        const char *prompts[2] = {pr->items[0].string, pr->items[1].string};
        int32_t ids[2 * 77], want[2 * 77];
        snprintf(p, sizeof p, "%s/ids.npy", dir);
        CHECK(read_ids(t_data(p), want, 2 * 77) == 2 * 77, "ids");
        for (int b = 0; b < 2; b++) {
            int n = 0;
            CHECK(sdunet_text_tokenize(t, prompts[b], NULL, ids + 77 * b, 77, &n, NULL, &err) ==
                      SDUNET_OK,
                  "tokenize");
        }
        CHECK(memcmp(ids, want, sizeof ids) == 0, "%s: ids differ from the reference's", dir);
        sdunet_text_info info;
        sdunet_text_get_info(t, &info);
        size_t n_out = (size_t)2 * 77 * info.hidden;
        float *out = malloc(n_out * sizeof(float)), *ref = NULL;
        sdunet_text_params tp;
        sdunet_text_params_default(&tp);
        for (int skip = 0; skip < 2; skip++) {
            tp.clip_skip = skip;
            CHECK(sdunet_text_encode(t, prompts, 2, &tp, out, 77, &err) == SDUNET_OK, "%s",
                  err.message);
            snprintf(p, sizeof p, "%s/expected%s.npy", dir, skip ? "_skip1" : "");
            int ndim;
            int64_t shape[SD_MAX_DIMS];
            double e = INFINITY;
            if (sd_npy_read_f32(t_data(p), &ref, &ndim, shape, &err) == SDUNET_OK &&
                (size_t)(shape[0] * shape[1] * shape[2]) == n_out)
                e = t_rel_l2_f32(out, ref, n_out);
            sd_free(ref);
            ref = NULL;
            printf("  %s skip %d: rel L2 %.3g\n", preset, skip, e);
            CHECK(e < BAR, "%s skip %d: rel L2 %.3g", preset, skip, e);
        }
        free(out);
    }
    sdunet_text_free(t);
    sd_json_free(man);
    free(mtext);
}

static void test_full_sd15(void)
{
    full_case("sd15", "text/clip-sd15-full");
}

static void test_full_sd21(void)
{
    full_case("sd21", "text/clip-sd21-full");
}

int main(void)
{
    RUN(test_tiny_sd1);
    RUN(test_tiny_sd2);
    RUN(test_bad_weights);
    if (!t_small_only()) {
        RUN(test_full_sd15);
        RUN(test_full_sd21);
    }
    return t_summary();
}
