/* The public text API (sdunet_text.h) end to end: prompt text through the
 * tokenizer and the encoder against the golden cases' float64 outputs
 * (which were made from the same prompts), loading from files and folders,
 * long prompts, AUTOMATIC1111's emphasis syntax against hand-computed
 * cases, and bad input. */
#include "check.h"
#include "clip/prompt.h"
#include "engine/synth.h"
#include "io/npy.h"
#include "sdunet_text.h"

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BAR 2e-6

/* SD2 (OpenCLIP single file, "!" padding): the case's prompt through the
 * public API gives the reference's ids and hidden states. */
static void test_sd2_single_file(void)
{
    sdunet_text_options o;
    sdunet_text_options_default(&o);
    o.threads = 2;
    o.config = t_data("text/clip-tiny-sd2/config.json");
    sdunet_text *t = NULL;
    sdunet_error err;
    sdunet_status st =
        sdunet_text_load(t_data("text/clip-tiny-sd2/weights-ldm.safetensors"), &o, &t, &err);
    CHECK(st == SDUNET_OK, "load: %s", err.message);
    if (st)
        return;
    sdunet_text_info info;
    sdunet_text_get_info(t, &info);
    CHECK(strcmp(info.family, "sd2") == 0 && info.pad_id == 0 && info.layers == 4 &&
              info.hidden == 48 && !info.quick_gelu,
          "info: %s pad %d layers %d", info.family, info.pad_id, info.layers);
    const char *prompt = "a professional photograph of a red fox in fresh snow, 85mm, golden hour!";
    int32_t ids[77];
    int n = 0, n_tok = 0;
    CHECK(sdunet_text_tokenize(t, prompt, NULL, ids, 77, &n, &n_tok, &err) == SDUNET_OK,
          "tokenize: %s", err.message);
    CHECK(n == 77 && n_tok == 18, "n %d tokens %d", n, n_tok);
    CHECK(ids[0] == 49406 && ids[n_tok] == 0 && ids[n_tok + 1] == 49407 && ids[76] == 0,
          "SD2: '!' is id 0, padding 0");
    float out[77 * 48];
    const char *ps[1] = {prompt};
    sdunet_text_params p;
    sdunet_text_params_default(&p);
    for (int skip = 0; skip < 2; skip++) {
        p.clip_skip = skip;
        st = sdunet_text_encode(t, ps, 1, &p, out, 77, &err);
        CHECK(st == SDUNET_OK, "encode: %s", err.message);
        double e = t_rel_l2_npy(out,
                                t_data(skip ? "text/clip-tiny-sd2/expected_skip1_f64.npy"
                                            : "text/clip-tiny-sd2/expected_f64.npy"),
                                77 * 48);
        printf("  sd2 prompt, skip %d: rel L2 %.3g\n", skip, e);
        CHECK(e < BAR, "skip %d: rel L2 %.3g", skip, e);
    }
    /* bad input */
    const char *bad[1] = {"caf\xc3"};
    CHECK(sdunet_text_encode(t, bad, 1, NULL, out, 77, &err) == SDUNET_E_INVALID_ARG,
          "invalid UTF-8 accepted");
    CHECK(sdunet_text_encode(t, ps, 1, NULL, out, 154, &err) == SDUNET_E_SHAPE, "wrong length");
    p.clip_skip = 4;
    CHECK(sdunet_text_encode(t, ps, 1, &p, out, 77, &err) == SDUNET_E_INVALID_ARG,
          "clip skip past the layers");
    int32_t bad_ids[2] = {49406, 49408};
    CHECK(sdunet_text_encode_ids(t, bad_ids, 1, 2, 0, out, &err) == SDUNET_E_INVALID_ARG,
          "id past the vocabulary");
    CHECK(sdunet_text_encode_ids(t, bad_ids, 1, 78, 0, out, &err) == SDUNET_E_SHAPE,
          "78 positions");
    sdunet_text_free(t);
}

/* Writes the tiny SD1 encoder's synthetic weights (transformers names) to
 * `path`; 0 on success. */
static int write_tiny_sd1(const char *path)
{
    static const struct {
        const char *name;
        int64_t r, c;
    } base[] = {{"embeddings.token_embedding.weight", 49408, 32},
                {"embeddings.position_embedding.weight", 77, 32},
                {"final_layer_norm.weight", 32, 0},
                {"final_layer_norm.bias", 32, 0}};
    static const struct {
        const char *name;
        int64_t r, c;
    } layer[] = {{"self_attn.q_proj.weight", 32, 32},
                 {"self_attn.q_proj.bias", 32, 0},
                 {"self_attn.k_proj.weight", 32, 32},
                 {"self_attn.k_proj.bias", 32, 0},
                 {"self_attn.v_proj.weight", 32, 32},
                 {"self_attn.v_proj.bias", 32, 0},
                 {"self_attn.out_proj.weight", 32, 32},
                 {"self_attn.out_proj.bias", 32, 0},
                 {"layer_norm1.weight", 32, 0},
                 {"layer_norm1.bias", 32, 0},
                 {"layer_norm2.weight", 32, 0},
                 {"layer_norm2.bias", 32, 0},
                 {"mlp.fc1.weight", 64, 32},
                 {"mlp.fc1.bias", 64, 0},
                 {"mlp.fc2.weight", 32, 64},
                 {"mlp.fc2.bias", 32, 0}};
    sd_tensor_info t[4 + 3 * 16];
    int n = 0;
    for (int i = 0; i < 4 + 3 * 16; i++) {
        char name[128];
        int64_t r, c;
        if (i < 4) {
            snprintf(name, sizeof name, "text_model.%s", base[i].name);
            r = base[i].r, c = base[i].c;
        } else {
            int l = (i - 4) / 16, k = (i - 4) % 16;
            snprintf(name, sizeof name, "text_model.encoder.layers.%d.%s", l, layer[k].name);
            r = layer[k].r, c = layer[k].c;
        }
        int64_t shape[2] = {r, c};
        int ndim = c ? 2 : 1;
        size_t numel = (size_t)r * (size_t)(c ? c : 1);
        float *v = malloc(numel * sizeof(float));
        sd_synth_weight(name, ndim, shape, v);
        t[n] = (sd_tensor_info){.name = strdup(name),
                                .dtype = SD_DT_F32,
                                .ndim = ndim,
                                .numel = numel,
                                .data = v,
                                .nbytes = numel * 4};
        memcpy(t[n].shape, shape, sizeof shape);
        n++;
    }
    sdunet_error err;
    int rc = sd_safetensors_write(path, t, (size_t)n, NULL, &err) == SDUNET_OK ? 0 : -1;
    for (int i = 0; i < n; i++) {
        free(t[i].name);
        free((void *)t[i].data);
    }
    return rc;
}

/* A diffusers pipeline folder (text_encoder/ with config and weights,
 * tokenizer/ with the vocabulary and an SD1 special_tokens_map.json): the
 * case's two prompts as one batch. */
static void test_sd1_folder(void)
{
    const char *dir = t_tmp("pipe"), *te = t_tmp("pipe/text_encoder"),
               *tk = t_tmp("pipe/tokenizer");
    mkdir(dir, 0700);
    mkdir(te, 0700);
    mkdir(tk, 0700);
    char p[600];
    snprintf(p, sizeof p, "%s/model.safetensors", te);
    CHECK(write_tiny_sd1(p) == 0, "write weights");
    snprintf(p, sizeof p, "%s/config.json", te);
    CHECK(t_copy_file(t_data("text/clip-tiny-sd1/config.json"), p) == 0, "config");
    snprintf(p, sizeof p, "%s/vocab.json", tk);
    CHECK(t_copy_file(t_data("text/vocab.json"), p) == 0, "vocab");
    snprintf(p, sizeof p, "%s/merges.txt", tk);
    CHECK(t_copy_file(t_data("text/merges.txt"), p) == 0, "merges");
    snprintf(p, sizeof p, "%s/special_tokens_map.json", tk);
    const char *stm = "{\"bos_token\": \"<|startoftext|>\", \"eos_token\": \"<|endoftext|>\", "
                      "\"pad_token\": \"<|endoftext|>\", \"unk_token\": \"<|endoftext|>\"}";
    CHECK(t_write_file(p, stm, strlen(stm)) == 0, "special tokens");

    sdunet_text *t = NULL;
    sdunet_error err;
    sdunet_status st = sdunet_text_load(dir, NULL, &t, &err);
    CHECK(st == SDUNET_OK, "load folder: %s", err.message);
    if (!st) {
        sdunet_text_info info;
        sdunet_text_get_info(t, &info);
        CHECK(strcmp(info.family, "sd1") == 0 && info.pad_id == 49407 && info.quick_gelu,
              "info %s %d", info.family, info.pad_id);
        const char *ps[2] = {"a photo of an astronaut riding a horse on mars", ""};
        float *out = malloc(2 * 77 * 32 * sizeof(float));
        sdunet_text_params tp;
        sdunet_text_params_default(&tp);
        for (int skip = 0; skip < 2; skip++) {
            tp.clip_skip = skip;
            st = sdunet_text_encode(t, ps, 2, &tp, out, 77, &err);
            CHECK(st == SDUNET_OK, "encode: %s", err.message);
            double e = t_rel_l2_npy(out,
                                    t_data(skip ? "text/clip-tiny-sd1/expected_skip1_f64.npy"
                                                : "text/clip-tiny-sd1/expected_f64.npy"),
                                    2 * 77 * 32);
            printf("  sd1 folder, batch 2, skip %d: rel L2 %.3g\n", skip, e);
            CHECK(e < BAR, "skip %d: rel L2 %.3g", skip, e);
        }
        /* --variant picks model.fp16.safetensors: absent here */
        sdunet_text_options o;
        sdunet_text_options_default(&o);
        o.variant = "fp16";
        sdunet_text *t2 = NULL;
        CHECK(sdunet_text_load(dir, &o, &t2, &err) == SDUNET_E_IO && !t2, "missing variant");
        free(out);
        sdunet_text_free(t);
    }
    /* a file with no text encoder */
    snprintf(p, sizeof p, "%s/special_tokens_map.json", tk);
    CHECK(sdunet_text_load(t_data("micro/weights.safetensors"), NULL, &t, &err) ==
                  SDUNET_E_WEIGHTS &&
              strstr(err.message, "no text encoder"),
          "UNet-only file: %s", err.message);
    const char *files[] = {"text_encoder/model.safetensors", "text_encoder/config.json",
                           "tokenizer/vocab.json", "tokenizer/merges.txt",
                           "tokenizer/special_tokens_map.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        remove(p);
    }
    rmdir(te);
    rmdir(tk);
    rmdir(dir);
}

/* Windows: 75 tokens fit one window, 76 make two in chunk mode and drop
 * one when truncating; every window is bos + tokens + eos + padding; the
 * first window equals the truncated encoding. */
static void test_long_prompts(void)
{
    sdunet_text *t = NULL;
    sdunet_error err;
    sdunet_text_options o;
    sdunet_text_options_default(&o);
    o.threads = 1;
    o.config = t_data("text/clip-tiny-sd1/config.json");
    if (sdunet_text_load_synthetic(o.config, &o, &t, &err)) {
        CHECK(0, "load: %s", err.message);
        return;
    }
    char prompt[400] = "";
    for (int i = 0; i < 76; i++) /* "a" is one token */
        strcat(prompt, i ? " a" : "a");
    sdunet_text_params tp;
    sdunet_text_params_default(&tp);
    int32_t ids[3 * 77];
    int n, n_tok, len, dropped;
    char text[256];
    CHECK(sdunet_text_dropped(t, prompt, &tp, &dropped, text, sizeof text, &err) == SDUNET_OK &&
              dropped == 1 && strcmp(text, "a") == 0,
          "dropped %d '%s'", dropped, text);
    const char *ps[2] = {prompt, "a"};
    CHECK(sdunet_text_context_len(t, ps, 2, &tp, &len, &err) == SDUNET_OK && len == 77, "len");
    tp.long_prompt = SDUNET_LONG_CHUNK;
    CHECK(sdunet_text_context_len(t, ps, 2, &tp, &len, &err) == SDUNET_OK && len == 154,
          "chunked len %d", len);
    CHECK(sdunet_text_tokenize(t, prompt, &tp, ids, 3 * 77, &n, &n_tok, &err) == SDUNET_OK &&
              n == 154 && n_tok == 76,
          "n %d", n);
    CHECK(ids[0] == 49406 && ids[75] == 320 && ids[76] == 49407 && ids[77] == 49406 &&
              ids[78] == 320 && ids[79] == 49407 && ids[153] == 49407,
          "window layout");
    prompt[2 * 75 - 1] = 0; /* 75 tokens */
    CHECK(sdunet_text_tokenize(t, prompt, &tp, ids, 3 * 77, &n, &n_tok, &err) == SDUNET_OK &&
              n == 77 && n_tok == 75 && ids[76] == 49407,
          "75 tokens: n %d", n);
    /* chunk mode: the first window of a long prompt = its truncated encoding */
    prompt[2 * 75 - 1] = ' ';
    float *a = malloc(2 * 154 * 32 * sizeof(float)), *b = malloc(2 * 77 * 32 * sizeof(float));
    CHECK(sdunet_text_encode(t, ps, 2, &tp, a, 154, &err) == SDUNET_OK, "chunked: %s", err.message);
    tp.long_prompt = SDUNET_LONG_TRUNCATE;
    CHECK(sdunet_text_encode(t, ps, 2, &tp, b, 77, &err) == SDUNET_OK, "truncated");
    CHECK(memcmp(a, b, 77 * 32 * sizeof(float)) == 0, "first window differs from truncation");
    CHECK(memcmp(a + 154 * 32, b + 77 * 32, 77 * 32 * sizeof(float)) == 0,
          "short prompt's first window differs");
    /* a 1 MB prompt: tokenizes without blowing up (windows counted) */
    size_t big = 1 << 20;
    char *huge = malloc(big + 1);
    for (size_t i = 0; i < big; i++)
        huge[i] = "ab, cd "[i % 7];
    huge[big] = 0;
    tp.long_prompt = SDUNET_LONG_TRUNCATE;
    CHECK(sdunet_text_dropped(t, huge, &tp, &dropped, text, sizeof text, &err) == SDUNET_OK &&
              dropped > 200000,
          "1 MB prompt: %d dropped", dropped);
    free(huge);
    free(a);
    free(b);
    sdunet_text_free(t);
}

/* AUTOMATIC1111 syntax: pieces and weights by hand. */
static void test_a1111_parse(void)
{
    static const struct {
        const char *prompt;
        int n;
        const char *text[4];
        double w[4];
    } cases[] = {
        {"a (b:1.5) c", 3, {"a ", "b", " c"}, {1, 1.5, 1}},
        {"((x)) y", 2, {"x", " y"}, {1.21, 1}},
        {"[x] y", 2, {"x", " y"}, {1 / 1.1, 1}},
        {"\\(x\\)", 1, {"(x)"}, {1}},
        {"\\(\\) (y)", 2, {"() ", "y"}, {1, 1.1}},
        {"(x", 1, {"x"}, {1.1}},
        {"a: b", 1, {"a: b"}, {1}},
        {"(a [b] c:2)", 3, {"a ", "b", " c"}, {2, 2 / 1.1, 2}},
        {"x:1.5) y", 1, {"x:1.5) y"}, {1}},
        {"", 1, {""}, {1}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        sd_prompt_piece *p = NULL;
        size_t n = 0;
        char *buf = NULL;
        sdunet_error err;
        CHECK(sd_prompt_parse_a1111(cases[c].prompt, strlen(cases[c].prompt), &p, &n, &buf, &err) ==
                  SDUNET_OK,
              "parse");
        int ok = (int)n == cases[c].n;
        for (size_t i = 0; ok && i < n; i++)
            ok = !p[i].is_break && p[i].len == strlen(cases[c].text[i]) &&
                 memcmp(p[i].text, cases[c].text[i], p[i].len) == 0 &&
                 fabs(p[i].weight - cases[c].w[i]) < 1e-12;
        CHECK(ok, "'%s': %zu pieces, first '%.*s' %g", cases[c].prompt, n, n ? (int)p[0].len : 0,
              n ? p[0].text : "", n ? p[0].weight : 0.0);
        free(p);
        free(buf);
    }
    sd_prompt_piece *p = NULL;
    size_t n = 0;
    char *buf = NULL;
    sdunet_error err;
    const char *brk = "cat BREAK dog BREAKFAST";
    CHECK(sd_prompt_parse_a1111(brk, strlen(brk), &p, &n, &buf, &err) == SDUNET_OK && n == 3 &&
              p[0].len == 3 && p[1].is_break && p[2].len == 13,
          "BREAK: %zu pieces", n);
    free(p);
    free(buf);
}

/* Weights through the encoder: "(a:1.5)" differs from "a" only by the
 * emphasis: row 1 scaled by 1.5, then the window by its old / new mean. */
static void test_a1111_weights(void)
{
    sdunet_text *t = NULL;
    sdunet_error err;
    sdunet_text_options o;
    sdunet_text_options_default(&o);
    o.threads = 1;
    o.config = t_data("text/clip-tiny-sd1/config.json");
    if (sdunet_text_load_synthetic(o.config, &o, &t, &err)) {
        CHECK(0, "load: %s", err.message);
        return;
    }
    sdunet_text_params tp;
    sdunet_text_params_default(&tp);
    tp.syntax = SDUNET_SYNTAX_A1111;
    const char *plain[1] = {"a cat"}, *weighted[1] = {"a (cat:1.5)"}, *brk[1] = {"a BREAK cat"};
    float *z = malloc(154 * 32 * sizeof(float)), *zw = malloc(77 * 32 * sizeof(float));
    CHECK(sdunet_text_encode(t, plain, 1, &tp, z, 77, &err) == SDUNET_OK, "plain");
    CHECK(sdunet_text_encode(t, weighted, 1, &tp, zw, 77, &err) == SDUNET_OK, "weighted");
    double before = 0, after = 0;
    for (int i = 0; i < 77 * 32; i++) {
        before += z[i];
        after += z[i] * (i / 32 == 2 ? 1.5 : 1.0);
    }
    double f = before / after, worst = 0;
    for (int i = 0; i < 77 * 32; i++) {
        double want = z[i] * (i / 32 == 2 ? 1.5 : 1.0) * f;
        worst = fmax(worst, fabs(zw[i] - want) / (fabs(want) + 1e-3));
    }
    CHECK(worst < 1e-5, "emphasis: worst relative difference %.3g", worst);
    int len;
    CHECK(sdunet_text_context_len(t, brk, 1, &tp, &len, &err) == SDUNET_OK && len == 77,
          "BREAK truncated to one window: %d", len);
    tp.long_prompt = SDUNET_LONG_CHUNK;
    CHECK(sdunet_text_context_len(t, brk, 1, &tp, &len, &err) == SDUNET_OK && len == 154,
          "BREAK makes two windows: %d", len);
    free(z);
    free(zw);
    sdunet_text_free(t);
}

int main(void)
{
    RUN(test_sd2_single_file);
    RUN(test_sd1_folder);
    RUN(test_long_prompts);
    RUN(test_a1111_parse);
    RUN(test_a1111_weights);
    return t_summary();
}
