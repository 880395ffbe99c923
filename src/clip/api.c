/* The public text-encoder API (sdunet_text.h): finding the encoder and
 * tokenizer on disk, prompts to windows, the encoder runs, emphasis. */
#include "sdunet_text.h"

#include "clip/encoder.h"
#include "clip/prompt.h"
#include "clip/tokenizer.h"
#include "engine/pool.h"
#include "io/fileio.h"
#include "io/json.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct sdunet_text {
    sd_clip enc;
    sd_tokenizer *tok;
    int sd2;       /* padding with "!" */
    sd_runtime rt; /* kernels, pool, kernel scratch */
    float *mem;    /* activations for the last size */
    size_t mem_floats;
    atomic_flag busy;
    sd_prof *prof; /* time profile by op kind, or NULL */
};

void sd_text_set_profile(sdunet_text *t, sd_prof *prof)
{
    if (t)
        t->prof = prof;
}

void sdunet_text_options_default(sdunet_text_options *opt)
{
    if (opt)
        memset(opt, 0, sizeof *opt);
}

void sdunet_text_params_default(sdunet_text_params *p)
{
    if (p)
        memset(p, 0, sizeof *p);
}

/* The pad token of a tokenizer folder: special_tokens_map.json, else
 * tokenizer_config.json ("pad_token": "!" or {"content": "!"}); "" when
 * neither says. */
static void folder_pad_token(const char *dir, char *out, size_t outlen)
{
    static const char *const files[2] = {"special_tokens_map.json", "tokenizer_config.json"};
    out[0] = 0;
    for (int f = 0; f < 2 && !out[0]; f++) {
        char path[4096];
        size_t len;
        char *text;
        if (!sd_path_join(path, sizeof path, dir, "", files[f]) ||
            !(text = sd_read_small_file(path, (size_t)16 << 20, &len)))
            continue;
        sd_json *root = NULL;
        if (sd_json_parse(text, len, &root, NULL) == SDUNET_OK) {
            const sd_json *pad = sd_json_get(root, "pad_token");
            if (pad && pad->type == SD_JSON_OBJECT)
                pad = sd_json_get(pad, "content");
            if (pad && pad->type == SD_JSON_STRING && pad->len < outlen)
                snprintf(out, outlen, "%s", pad->string);
        }
        sd_json_free(root);
        free(text);
    }
}

static sdunet_status text_new(const sdunet_text_options *opt, sd_pool *shared, sdunet_text **out,
                              sdunet_error *err)
{
    sdunet_text *t = calloc(1, sizeof *t);
    if (!t)
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    sdunet_status st = sd_runtime_init(&t->rt, opt ? opt->threads : 0, 0, shared, err);
    if (st) {
        free(t);
        return st;
    }
    atomic_flag_clear(&t->busy);
    *out = t;
    return SDUNET_OK;
}

/* The tokenizer: a folder's files when given (or found), else built in;
 * padding from the folder, else from the family. */
static sdunet_status setup_tokenizer(sdunet_text *t, const char *folder, sdunet_error *err)
{
    char pad[64] = "";
    sdunet_status st;
    if (folder) {
        char vocab[4096], merges[4096];
        if (!sd_path_join(vocab, sizeof vocab, folder, "", "vocab.json") ||
            !sd_path_join(merges, sizeof merges, folder, "", "merges.txt"))
            return sd_fail(err, SDUNET_E_IO, "%s: path too long", folder);
        if ((st = sd_tokenizer_from_files(vocab, merges, &t->tok, err)))
            return st;
        folder_pad_token(folder, pad, sizeof pad);
    } else if ((st = sd_tokenizer_builtin(&t->tok, err))) {
        return st;
    }
    if (!pad[0])
        snprintf(pad, sizeof pad, "%s", t->sd2 ? "!" : "<|endoftext|>");
    if ((st = sd_tokenizer_set_pad(t->tok, pad, err)))
        return st;
    t->sd2 = strcmp(pad, "!") == 0;
    return SDUNET_OK;
}

static sdunet_status load_config(const char *config, sd_clip_config *cfg, sdunet_error *err)
{
    if (strcmp(config, "sd15") == 0 || strcmp(config, "sd21") == 0)
        return sd_clip_preset(config, cfg, err);
    size_t len;
    char *text = sd_read_small_file(config, (size_t)16 << 20, &len);
    if (!text)
        return sd_fail(err, SDUNET_E_IO, "%s: cannot read", config);
    sdunet_status st = sd_clip_config_parse(text, len, cfg, err);
    free(text);
    if (st)
        sd_err_prefix(err, config);
    return st;
}

static sdunet_status text_synthetic(const char *preset, const sdunet_text_options *opt,
                                    const sd_share *sh, sdunet_text **out, sdunet_error *err)
{
    if (!out)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL output pointer");
    *out = NULL;
    if (!preset)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL preset");
    sd_clip_config cfg;
    sdunet_status st = load_config(preset, &cfg, err);
    if (st)
        return st;
    sdunet_text *t = NULL;
    if ((st = text_new(opt, sh ? sh->pool : NULL, &t, err)))
        return st;
    t->sd2 = cfg.hidden == 1024;
    sd_weight_source src = {.pool = t->rt.pool};
    if (!(st = sd_clip_build(&t->enc, &cfg, &src, NULL, t->rt.kern, err)))
        st = setup_tokenizer(t, opt ? opt->tokenizer : NULL, err);
    if (st) {
        sdunet_text_free(t);
        return st;
    }
    *out = t;
    return SDUNET_OK;
}

sdunet_status sdunet_text_load_synthetic(const char *preset, const sdunet_text_options *opt,
                                         sdunet_text **out, sdunet_error *err)
{
    return text_synthetic(preset, opt, NULL, out, err);
}

/* The weight file of a text_encoder folder. */
static int find_weights(const char *dir, const char *variant, char *out, size_t len)
{
    char names[3][96];
    int nn = 0;
    if (variant) {
        snprintf(names[nn++], sizeof names[0], "model.%s.safetensors", variant);
        snprintf(names[nn++], sizeof names[0], "pytorch_model.%s.bin", variant);
    } else {
        snprintf(names[nn++], sizeof names[0], "model.safetensors");
        snprintf(names[nn++], sizeof names[0], "pytorch_model.bin");
        snprintf(names[nn++], sizeof names[0], "model.fp16.safetensors");
    }
    for (int i = 0; i < nn; i++)
        if (sd_path_join(out, len, dir, "", names[i]) && sd_is_regular(out))
            return 1;
    return 0;
}

static sdunet_status text_load(const char *path, const sdunet_text_options *opt, const sd_share *sh,
                               sdunet_text **out, sdunet_error *err)
{
    if (!out)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL output pointer");
    *out = NULL;
    if (!path || !*path)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL or empty path");
    const char *variant = opt && opt->variant && *opt->variant ? opt->variant : NULL;
    if (variant && (strlen(variant) > 64 || strpbrk(variant, "/\\.")))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "variant '%.64s' is not a plain name like fp16",
                       variant);
    struct stat sst;
    if (stat(path, &sst) != 0)
        return sd_fail(err, SDUNET_E_IO, "%s: cannot open: %s", path, strerror(errno));
    /* Up to four paths: heap. */
    struct paths {
        char weights[4096], config[4096], tokdir[4096], encdir[4096], probe[4096];
    } *p = calloc(1, sizeof *p);
    if (!p)
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    sdunet_status st = SDUNET_OK;
    if (S_ISDIR(sst.st_mode)) {
        if (!sd_path_join(p->encdir, sizeof p->encdir, path, "", "text_encoder") ||
            !sd_is_dir(p->encdir))
            snprintf(p->encdir, sizeof p->encdir, "%s", path); /* the text_encoder folder */
        if (!find_weights(p->encdir, variant, p->weights, sizeof p->weights))
            st = sd_fail(err, SDUNET_E_IO,
                         "%s: no text encoder weights (looked for %s in %s/text_encoder and "
                         "%s)",
                         path, variant ? "model.VARIANT.safetensors" : "model.safetensors", path,
                         path);
        if (sd_path_join(p->config, sizeof p->config, p->encdir, "", "config.json") &&
            !sd_is_regular(p->config))
            p->config[0] = 0;
        if (sd_path_join(p->tokdir, sizeof p->tokdir, path, "", "tokenizer") &&
            !(sd_is_dir(p->tokdir) &&
              sd_path_join(p->probe, sizeof p->probe, p->tokdir, "", "vocab.json") &&
              sd_is_regular(p->probe)))
            p->tokdir[0] = 0;
    } else if (variant) {
        st = sd_fail(err, SDUNET_E_INVALID_ARG,
                     "%s: a variant ('%s') picks a file in a diffusers folder; this is a file",
                     path, variant);
    } else {
        snprintf(p->weights, sizeof p->weights, "%s", path);
    }
    sdunet_text *t = NULL;
    sd_tensorfile *tf = NULL;
    sd_clip_names names;
    sd_clip_config cfg, found;
    if (!st)
        st = text_new(opt, sh ? sh->pool : NULL, &t, err);
    if (!st && (st = sd_share_open_file(sh, p->weights, &tf, err)) == SDUNET_OK) {
        st = sd_clip_find(tf, &names, &found, err);
        if (st)
            sd_err_prefix(err, p->weights);
    }
    const char *config = opt && opt->config ? opt->config : p->config[0] ? p->config : NULL;
    if (!st) {
        if (config)
            st = load_config(config, &cfg, err);
        else if (found.heads == 0)
            st = sd_fail(err, SDUNET_E_CONFIG,
                         "%s: text encoder width %d is not a multiple of 64; give its "
                         "config.json",
                         p->weights, found.hidden);
        else
            cfg = found;
    }
    if (!st) {
        t->sd2 = names.layout == SD_CLIP_OPENCLIP || cfg.hidden == 1024;
        sd_weight_source src = {.file = tf, .pool = t->rt.pool};
        st = sd_clip_build(&t->enc, &cfg, &src, &names, t->rt.kern, err);
        if (st && st != SDUNET_E_NOMEM)
            sd_err_prefix(err, p->weights);
    }
    if (!st) {
        const char *tokdir = opt && opt->tokenizer ? opt->tokenizer
                             : p->tokdir[0]        ? p->tokdir
                                                   : NULL;
        st = setup_tokenizer(t, tokdir, err);
    }
    sd_tensorfile_close(tf);
    free(p);
    if (st) {
        sdunet_text_free(t);
        return st;
    }
    *out = t;
    return SDUNET_OK;
}

sdunet_status sdunet_text_load(const char *path, const sdunet_text_options *opt, sdunet_text **out,
                               sdunet_error *err)
{
    return text_load(path, opt, NULL, out, err);
}

sdunet_status sd_text_open(const char *path, int synthetic, const sdunet_text_options *opt,
                           const sd_share *sh, sdunet_text **out, sdunet_error *err)
{
    return synthetic ? text_synthetic(path, opt, sh, out, err) : text_load(path, opt, sh, out, err);
}

/* ---- encoding ---- */

static sdunet_status make_windows(sdunet_text *t, const char *prompt, const sdunet_text_params *p,
                                  sd_prompt_windows *w, sdunet_error *err)
{
    if (!prompt)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL prompt");
    return sd_prompt_windows_make(t->tok, prompt, strlen(prompt), p->syntax == SDUNET_SYNTAX_A1111,
                                  p->long_prompt == SDUNET_LONG_CHUNK, w, err);
}

static sdunet_status check_params(const sdunet_text *t, const sdunet_text_params *p,
                                  sdunet_error *err)
{
    if (p->clip_skip < 0 || p->clip_skip >= t->enc.cfg.layers)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "clip_skip %d out of range 0..%d", p->clip_skip,
                       t->enc.cfg.layers - 1);
    if (p->long_prompt != SDUNET_LONG_TRUNCATE && p->long_prompt != SDUNET_LONG_CHUNK)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "unknown long-prompt mode %d", p->long_prompt);
    if (p->syntax != SDUNET_SYNTAX_PLAIN && p->syntax != SDUNET_SYNTAX_A1111)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "unknown prompt syntax %d", p->syntax);
    return SDUNET_OK;
}

#define SD_TEXT_MAX_BATCH 4096

sdunet_status sdunet_text_context_len(sdunet_text *t, const char *const *prompts, int batch,
                                      const sdunet_text_params *p, int *len, sdunet_error *err)
{
    sdunet_text_params def;
    if (!p) {
        sdunet_text_params_default(&def);
        p = &def;
    }
    if (!t || !prompts || !len || batch < 1 || batch > SD_TEXT_MAX_BATCH)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL argument or batch %d outside 1..%d", batch,
                       SD_TEXT_MAX_BATCH);
    sdunet_status st = check_params(t, p, err);
    int windows = 1;
    for (int b = 0; !st && b < batch; b++) {
        sd_prompt_windows w;
        if ((st = make_windows(t, prompts[b], p, &w, err)))
            break;
        if (w.n_windows > windows)
            windows = w.n_windows;
        sd_prompt_windows_free(&w);
    }
    if (!st && (size_t)windows * SD_CLIP_WINDOW > (size_t)INT32_MAX / 4)
        st = sd_fail(err, SDUNET_E_INVALID_ARG, "prompt too long (%d windows)", windows);
    if (!st)
        *len = windows * SD_CLIP_WINDOW;
    return st;
}

/* Runs the encoder on `rows` sequences of 77 ids into out. */
static sdunet_status run_encoder(sdunet_text *t, const int32_t *ids, int rows, int L, int skip,
                                 float *out, sdunet_error *err)
{
    size_t need = sd_clip_plan(&t->enc, rows, L);
    if (need > t->mem_floats) {
        size_t bytes;
        sd_free(t->mem);
        t->mem_floats = 0;
        if (!sd_mul_size(need, sizeof(float), &bytes) || !(t->mem = sd_alloc(bytes)))
            return sd_fail(err, SDUNET_E_NOMEM, "out of memory: activations need %.1f MiB",
                           (double)need * 4 / 1048576.0);
        t->mem_floats = need;
    }
    int fault = 0;
    sd_exec ex = sd_runtime_exec(&t->rt, &fault);
    sd_clip_forward(&t->enc, &ex, t->mem, rows, L, ids, skip, out, t->prof);
    if (fault)
        return sd_fail(err, SDUNET_E_INTERNAL, "a library bug was detected in a kernel");
    return SDUNET_OK;
}

sdunet_status sdunet_text_encode_ids(sdunet_text *t, const int32_t *ids, int batch, int len,
                                     int clip_skip, float *out, sdunet_error *err)
{
    if (!t || !ids || !out)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL argument");
    if (batch < 1 || batch > SD_TEXT_MAX_BATCH || len < 1 || len > t->enc.cfg.positions)
        return sd_fail(err, SDUNET_E_SHAPE, "ids (%d, %d): batch 1..%d, length 1..%d", batch, len,
                       SD_TEXT_MAX_BATCH, t->enc.cfg.positions);
    if (clip_skip < 0 || clip_skip >= t->enc.cfg.layers)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "clip_skip %d out of range 0..%d", clip_skip,
                       t->enc.cfg.layers - 1);
    for (size_t i = 0; i < (size_t)batch * len; i++)
        if (ids[i] < 0 || ids[i] >= t->enc.cfg.vocab)
            return sd_fail(err, SDUNET_E_INVALID_ARG, "token id %d at %zu outside 0..%d", ids[i], i,
                           t->enc.cfg.vocab - 1);
    if (atomic_flag_test_and_set(&t->busy))
        return sd_fail(err, SDUNET_E_BUSY, "text encoder is in use on another thread");
    sdunet_status st = run_encoder(t, ids, batch, len, clip_skip, out, err);
    atomic_flag_clear(&t->busy);
    return st;
}

sdunet_status sdunet_text_encode(sdunet_text *t, const char *const *prompts, int batch,
                                 const sdunet_text_params *p, float *out, int len,
                                 sdunet_error *err)
{
    sdunet_text_params def;
    if (!p) {
        sdunet_text_params_default(&def);
        p = &def;
    }
    int need = 0;
    sdunet_status st = sdunet_text_context_len(t, prompts, batch, p, &need, err);
    if (st)
        return st;
    if (!out)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL output");
    if (len != need)
        return sd_fail(err, SDUNET_E_SHAPE, "the context for these prompts is %d long, not %d",
                       need, len);
    const int W = need / SD_CLIP_WINDOW, D = t->enc.cfg.hidden, rows = batch * W;
    int32_t *ids = malloc((size_t)rows * SD_CLIP_WINDOW * sizeof *ids);
    float *wts = malloc((size_t)rows * SD_CLIP_WINDOW * sizeof *wts);
    int *weighted = calloc((size_t)rows, sizeof *weighted);
    if (!ids || !wts || !weighted) {
        free(ids);
        free(wts);
        free(weighted);
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    }
    for (int b = 0; !st && b < batch; b++) {
        sd_prompt_windows w;
        if ((st = make_windows(t, prompts[b], p, &w, err)))
            break;
        for (int k = 0; k < W; k++) {
            int32_t *di = ids + ((size_t)b * W + k) * SD_CLIP_WINDOW;
            float *dw = wts + ((size_t)b * W + k) * SD_CLIP_WINDOW;
            if (k < w.n_windows) {
                memcpy(di, w.ids + (size_t)k * SD_CLIP_WINDOW, SD_CLIP_WINDOW * sizeof *di);
                memcpy(dw, w.weights + (size_t)k * SD_CLIP_WINDOW, SD_CLIP_WINDOW * sizeof *dw);
                weighted[b * W + k] = w.weighted;
            } else { /* an empty window */
                di[0] = sd_tokenizer_bos(t->tok);
                di[1] = sd_tokenizer_eos(t->tok);
                for (int i = 2; i < SD_CLIP_WINDOW; i++)
                    di[i] = sd_tokenizer_pad(t->tok);
                for (int i = 0; i < SD_CLIP_WINDOW; i++)
                    dw[i] = 1.0f;
            }
        }
        sd_prompt_windows_free(&w);
    }
    if (!st && atomic_flag_test_and_set(&t->busy))
        st = sd_fail(err, SDUNET_E_BUSY, "text encoder is in use on another thread");
    else if (!st) {
        st = run_encoder(t, ids, rows, SD_CLIP_WINDOW, p->clip_skip, out, err);
        atomic_flag_clear(&t->busy);
    }
    for (int r = 0; !st && r < rows; r++)
        if (weighted[r])
            sd_prompt_apply_weights(out + (size_t)r * SD_CLIP_WINDOW * D, D,
                                    wts + (size_t)r * SD_CLIP_WINDOW);
    free(ids);
    free(wts);
    free(weighted);
    return st;
}

sdunet_status sdunet_text_tokenize(sdunet_text *t, const char *prompt, const sdunet_text_params *p,
                                   int32_t *ids, int cap, int *n, int *n_tokens, sdunet_error *err)
{
    sdunet_text_params def;
    if (!p) {
        sdunet_text_params_default(&def);
        p = &def;
    }
    if (!t || !n || (cap > 0 && !ids))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL argument");
    sdunet_status st = check_params(t, p, err);
    sd_prompt_windows w;
    if (st || (st = make_windows(t, prompt, p, &w, err)))
        return st;
    size_t total = (size_t)w.n_windows * SD_CLIP_WINDOW;
    *n = total > INT32_MAX ? INT32_MAX : (int)total;
    if (n_tokens)
        *n_tokens = w.n_tokens > INT32_MAX ? INT32_MAX : (int)w.n_tokens;
    if (cap < 0 || total > (size_t)cap)
        st = sd_fail(err, SDUNET_E_INVALID_ARG, "%zu ids do not fit in %d", total, cap);
    else
        memcpy(ids, w.ids, total * sizeof *ids);
    sd_prompt_windows_free(&w);
    return st;
}

sdunet_status sdunet_text_dropped(sdunet_text *t, const char *prompt, const sdunet_text_params *p,
                                  int *n_dropped, char *buf, size_t buflen, sdunet_error *err)
{
    if (!t || !n_dropped || !buf || buflen == 0)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL argument");
    sdunet_text_params q;
    if (p)
        q = *p;
    else
        sdunet_text_params_default(&q);
    q.long_prompt = SDUNET_LONG_TRUNCATE;
    sd_prompt_windows w;
    sdunet_status st = check_params(t, &q, err);
    if (st || (st = make_windows(t, prompt, &q, &w, err)))
        return st;
    *n_dropped = w.n_dropped > INT32_MAX ? INT32_MAX : (int)w.n_dropped;
    buf[0] = 0;
    char *text = NULL;
    if (w.n_dropped && !(st = sd_tokenizer_decode(t->tok, w.dropped, w.n_dropped, &text, err)))
        snprintf(buf, buflen, "%s", text);
    free(text);
    sd_prompt_windows_free(&w);
    return st;
}

const char *sdunet_text_token_piece(const sdunet_text *t, int32_t id)
{
    return t ? sd_tokenizer_piece(t->tok, id) : NULL;
}

sdunet_status sdunet_text_decode(const sdunet_text *t, const int32_t *ids, int n, char *buf,
                                 size_t buflen, sdunet_error *err)
{
    if (!t || (n > 0 && !ids) || n < 0 || !buf || buflen == 0)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL argument or negative count");
    char *text = NULL;
    sdunet_status st = sd_tokenizer_decode(t->tok, ids, (size_t)n, &text, err);
    if (!st)
        snprintf(buf, buflen, "%s", text ? text : "");
    free(text);
    return st;
}

void sdunet_text_get_info(const sdunet_text *t, sdunet_text_info *info)
{
    if (!info)
        return;
    memset(info, 0, sizeof *info);
    if (!t)
        return;
    const sd_clip_config *c = &t->enc.cfg;
    info->hidden = c->hidden;
    info->layers = c->layers;
    info->heads = c->heads;
    info->ffn = c->ffn;
    info->vocab = c->vocab;
    info->positions = c->positions;
    info->quick_gelu = c->quick_gelu;
    info->family = t->sd2 ? "sd2" : "sd1";
    info->pad_id = sd_tokenizer_pad(t->tok);
    info->n_params = t->enc.n_params;
    info->threads = t->rt.threads;
    info->isa = t->rt.kern->name;
}

sdunet_status sdunet_text_set_threads(sdunet_text *t, int threads, sdunet_error *err)
{
    if (!t)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL text encoder");
    if (atomic_flag_test_and_set(&t->busy))
        return sd_fail(err, SDUNET_E_BUSY, "text encoder is in use on another thread");
    sdunet_status st = sd_pool_resize(&t->rt.pool, &t->rt.threads, threads, err);
    atomic_flag_clear(&t->busy);
    return st;
}

void sdunet_text_free(sdunet_text *t)
{
    if (!t)
        return;
    sd_clip_release(&t->enc);
    sd_tokenizer_free(t->tok);
    sd_free(t->mem);
    sd_runtime_free(&t->rt);
    free(t);
}
