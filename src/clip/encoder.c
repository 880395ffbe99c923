/* The CLIP text encoder: configuration, finding it in a file, building its
 * layers on the shared loader, and the forward (transformers'
 * CLIPTextTransformer, as diffusers' pipelines call it: no padding mask,
 * a causal mask only). */
#include "clip/encoder.h"
#include "io/json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- configuration ---- */

sdunet_status sd_clip_preset(const char *name, sd_clip_config *cfg, sdunet_error *err)
{
    if (name && strcmp(name, "sd15") == 0) {
        *cfg = (sd_clip_config){.vocab = 49408,
                                .hidden = 768,
                                .ffn = 3072,
                                .heads = 12,
                                .layers = 12,
                                .positions = 77,
                                .quick_gelu = 1,
                                .eps = 1e-5f};
        return SDUNET_OK;
    }
    if (name && strcmp(name, "sd21") == 0) {
        *cfg = (sd_clip_config){.vocab = 49408,
                                .hidden = 1024,
                                .ffn = 4096,
                                .heads = 16,
                                .layers = 23,
                                .positions = 77,
                                .quick_gelu = 0,
                                .eps = 1e-5f};
        return SDUNET_OK;
    }
    return sd_fail(err, SDUNET_E_CONFIG, "unknown text encoder preset '%.64s' (sd15, sd21)",
                   name ? name : "(null)");
}

static int json_int(const sd_json *root, const char *key, int lo, int hi, int *out)
{
    const sd_json *v = sd_json_get(root, key);
    if (!v || v->type != SD_JSON_NUMBER || !v->is_int || v->integer < lo || v->integer > hi)
        return 0;
    *out = (int)v->integer;
    return 1;
}

static sdunet_status check_config(const sd_clip_config *c, sdunet_error *err)
{
    if (c->hidden < 1 || c->hidden > 65536 || c->ffn < 1 || c->ffn > 262144 || c->heads < 1 ||
        c->hidden % c->heads || c->layers < 1 || c->layers > SD_CLIP_MAX_LAYERS || c->vocab < 1 ||
        c->vocab > 1 << 22 || c->positions < 1 || c->positions > 4096 ||
        !(c->eps > 0 && c->eps < 1))
        return sd_fail(err, SDUNET_E_CONFIG,
                       "text encoder configuration out of range (hidden %d, ffn %d, heads %d, "
                       "layers %d, vocab %d, positions %d)",
                       c->hidden, c->ffn, c->heads, c->layers, c->vocab, c->positions);
    return SDUNET_OK;
}

sdunet_status sd_clip_config_parse(const char *json, size_t len, sd_clip_config *cfg,
                                   sdunet_error *err)
{
    sd_json *root = NULL;
    sdunet_status st = sd_json_parse(json, len, &root, err);
    if (st)
        return st;
    sd_clip_config c = {.eps = 1e-5f, .positions = 77, .vocab = 49408};
    const char *missing = NULL;
    if (root->type != SD_JSON_OBJECT)
        missing = "(a JSON object)";
    else if (!json_int(root, "hidden_size", 1, 65536, &c.hidden))
        missing = "hidden_size";
    else if (!json_int(root, "intermediate_size", 1, 262144, &c.ffn))
        missing = "intermediate_size";
    else if (!json_int(root, "num_attention_heads", 1, 4096, &c.heads))
        missing = "num_attention_heads";
    else if (!json_int(root, "num_hidden_layers", 1, SD_CLIP_MAX_LAYERS, &c.layers))
        missing = "num_hidden_layers";
    if (!missing && sd_json_get(root, "vocab_size") &&
        !json_int(root, "vocab_size", 1, 1 << 22, &c.vocab))
        missing = "vocab_size";
    if (!missing && sd_json_get(root, "max_position_embeddings") &&
        !json_int(root, "max_position_embeddings", 1, 4096, &c.positions))
        missing = "max_position_embeddings";
    const sd_json *act = missing ? NULL : sd_json_get(root, "hidden_act");
    if (!missing) {
        if (!act || act->type != SD_JSON_STRING)
            missing = "hidden_act";
        else if (strcmp(act->string, "quick_gelu") == 0)
            c.quick_gelu = 1;
        else if (strcmp(act->string, "gelu") == 0)
            c.quick_gelu = 0;
        else {
            st = sd_fail(err, SDUNET_E_CONFIG,
                         "text encoder hidden_act '%.32s' is not supported (quick_gelu, gelu)",
                         act->string);
            sd_json_free(root);
            return st;
        }
    }
    const sd_json *eps = missing ? NULL : sd_json_get(root, "layer_norm_eps");
    if (eps && eps->type == SD_JSON_NUMBER)
        c.eps = (float)eps->number;
    sd_json_free(root);
    if (missing)
        return sd_fail(err, SDUNET_E_CONFIG,
                       "text encoder config: %s missing or not a valid integer", missing);
    if ((st = check_config(&c, err)))
        return st;
    *cfg = c;
    return SDUNET_OK;
}

/* ---- where a file keeps the encoder ---- */

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

/* The tensor PREFIX + REST, where a "%d" in REST stands for `index`. */
static const sd_tensor_info *find_in(const sd_tensorfile *tf, const char *prefix, const char *rest,
                                     int index)
{
    char name[400];
    const char *d = strstr(rest, "%d");
    if (d)
        snprintf(name, sizeof name, "%s%.*s%d%s", prefix, (int)(d - rest), rest, index, d + 2);
    else
        snprintf(name, sizeof name, "%s%s", prefix, rest);
    return sd_tensorfile_find(tf, name);
}

sdunet_status sd_clip_find(const sd_tensorfile *tf, sd_clip_names *names, sd_clip_config *cfg,
                           sdunet_error *err)
{
    /* Candidates: a name ending in the token embedding of either layout. */
    static const char tr_tok[] = "embeddings.token_embedding.weight";
    static const char oc_tok[] = "token_embedding.weight";
    const sd_tensor_info *tok = NULL;
    int found = 0;
    sd_clip_names nm = {0};
    for (size_t i = 0; i < tf->count; i++) {
        const char *n = tf->tensors[i].name;
        sd_clip_names cand = {0};
        size_t plen;
        if (ends_with(n, tr_tok)) {
            cand.layout = SD_CLIP_TRANSFORMERS;
            plen = strlen(n) - strlen(tr_tok);
        } else if (ends_with(n, oc_tok) &&
                   (strlen(n) == strlen(oc_tok) || n[strlen(n) - strlen(oc_tok) - 1] == '.')) {
            cand.layout = SD_CLIP_OPENCLIP;
            plen = strlen(n) - strlen(oc_tok);
            char pos[400];
            snprintf(pos, sizeof pos, "%.*spositional_embedding", (int)plen, n);
            if (!sd_tensorfile_find(tf, pos))
                continue; /* not OpenCLIP's text tower */
        } else {
            continue;
        }
        if (plen >= sizeof cand.prefix)
            continue;
        memcpy(cand.prefix, n, plen);
        cand.prefix[plen] = 0;
        if (found++ == 0) {
            nm = cand;
            tok = &tf->tensors[i];
        }
    }
    if (!found)
        return sd_fail(err, SDUNET_E_WEIGHTS,
                       "no text encoder in the file (looked for transformers' "
                       "[...]embeddings.token_embedding.weight, e.g. "
                       "cond_stage_model.transformer.text_model.*, and OpenCLIP's "
                       "[...]token_embedding.weight + positional_embedding, e.g. "
                       "cond_stage_model.model.*)");
    if (found > 1)
        return sd_fail(err, SDUNET_E_WEIGHTS,
                       "%d text encoders in the file (first under '%s'); SDXL-style files with "
                       "two encoders are not supported",
                       found, nm.prefix);
    if (tok->ndim != 2)
        return sd_fail(err, SDUNET_E_WEIGHTS, "%s is not a matrix", tok->name);
    sd_clip_config c = {.vocab = (int)tok->shape[0], .hidden = (int)tok->shape[1], .eps = 1e-5f};
    const sd_tensor_info *t;
    if (nm.layout == SD_CLIP_TRANSFORMERS) {
        t = find_in(tf, nm.prefix, "embeddings.position_embedding.weight", -1);
        if (t && t->ndim == 2)
            c.positions = (int)t->shape[0];
        t = find_in(tf, nm.prefix, "encoder.layers.0.mlp.fc1.weight", -1);
        if (t && t->ndim == 2)
            c.ffn = (int)t->shape[0];
        while (c.layers < SD_CLIP_MAX_LAYERS + 1 &&
               find_in(tf, nm.prefix, "encoder.layers.%d.mlp.fc1.weight", c.layers))
            c.layers++;
        c.quick_gelu = c.hidden != 1024;
    } else {
        t = find_in(tf, nm.prefix, "positional_embedding", -1);
        if (t && t->ndim == 2)
            c.positions = (int)t->shape[0];
        t = find_in(tf, nm.prefix, "transformer.resblocks.0.mlp.c_fc.weight", -1);
        if (t && t->ndim == 2)
            c.ffn = (int)t->shape[0];
        int blocks = 0;
        while (blocks < SD_CLIP_MAX_LAYERS + 2 &&
               find_in(tf, nm.prefix, "transformer.resblocks.%d.mlp.c_fc.weight", blocks))
            blocks++;
        c.layers = blocks - 1; /* diffusers runs all but the last block */
        c.quick_gelu = 0;
    }
    c.heads = c.hidden % 64 == 0 ? c.hidden / 64 : 0; /* CLIP's heads are 64 wide */
    if (c.vocab < 1 || c.positions < 1 || c.ffn < 1 || c.layers < 1)
        return sd_fail(err, SDUNET_E_WEIGHTS,
                       "text encoder under '%s' is incomplete or of an unknown shape (width %d, "
                       "%d layers, MLP %d, %d positions); give its config.json",
                       nm.prefix, c.hidden, c.layers, c.ffn, c.positions);
    sdunet_status st = c.heads ? check_config(&c, err) : SDUNET_OK;
    if (st)
        return st;
    *names = nm;
    *cfg = c;
    return SDUNET_OK;
}

/* transformers name -> the file's name. */
static int map_name(void *user, const char *ref, char *out, size_t outlen)
{
    const sd_clip_names *nm = user;
    static const char tm[] = "text_model.";
    if (strncmp(ref, tm, sizeof tm - 1) != 0)
        return 0;
    const char *r = ref + sizeof tm - 1;
    int n;
    if (nm->layout == SD_CLIP_TRANSFORMERS) {
        n = snprintf(out, outlen, "%s%s", nm->prefix, r);
        return n > 0 && (size_t)n < outlen;
    }
    /* OpenCLIP */
    static const struct {
        const char *from, *to;
    } whole[] = {{"embeddings.token_embedding.weight", "token_embedding.weight"},
                 {"embeddings.position_embedding.weight", "positional_embedding"},
                 {"final_layer_norm.weight", "ln_final.weight"},
                 {"final_layer_norm.bias", "ln_final.bias"}};
    for (size_t i = 0; i < sizeof whole / sizeof whole[0]; i++)
        if (strcmp(r, whole[i].from) == 0) {
            n = snprintf(out, outlen, "%s%s", nm->prefix, whole[i].to);
            return n > 0 && (size_t)n < outlen;
        }
    int layer, used = 0;
    if (sscanf(r, "encoder.layers.%d.%n", &layer, &used) != 1 || used == 0)
        return 0;
    const char *tail = r + used;
    static const struct {
        const char *from, *to;
    } parts[] = {{"self_attn.in_proj.weight", "attn.in_proj_weight"},
                 {"self_attn.in_proj.bias", "attn.in_proj_bias"},
                 {"self_attn.out_proj.weight", "attn.out_proj.weight"},
                 {"self_attn.out_proj.bias", "attn.out_proj.bias"},
                 {"layer_norm1.weight", "ln_1.weight"},
                 {"layer_norm1.bias", "ln_1.bias"},
                 {"layer_norm2.weight", "ln_2.weight"},
                 {"layer_norm2.bias", "ln_2.bias"},
                 {"mlp.fc1.weight", "mlp.c_fc.weight"},
                 {"mlp.fc1.bias", "mlp.c_fc.bias"},
                 {"mlp.fc2.weight", "mlp.c_proj.weight"},
                 {"mlp.fc2.bias", "mlp.c_proj.bias"}};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        if (strcmp(tail, parts[i].from) == 0) {
            n = snprintf(out, outlen, "%stransformer.resblocks.%d.%s", nm->prefix, layer,
                         parts[i].to);
            return n > 0 && (size_t)n < outlen;
        }
    return 0;
}

/* ---- build ---- */

sdunet_status sd_clip_build(sd_clip *m, const sd_clip_config *cfg, const sd_weight_source *src,
                            const sd_clip_names *names, const sd_kernels *kern, sdunet_error *err)
{
    memset(m, 0, sizeof *m);
    sdunet_status st = check_config(cfg, err);
    if (st)
        return st;
    m->cfg = *cfg;
    const int D = cfg->hidden, F = cfg->ffn;
    if (!(m->layer = calloc((size_t)cfg->layers, sizeof *m->layer)))
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    sd_loader L;
    sd_loader_init(&L, src, kern, err);
    sd_clip_names nm = {0};
    if (names && src->file && !src->map_name) {
        nm = *names;
        L.map = map_name;
        L.map_user = &nm;
    }
    const int openclip = L.map && nm.layout == SD_CLIP_OPENCLIP;
    int64_t tshape[2] = {cfg->vocab, D}, pshape[2] = {cfg->positions, D};
    m->tok = sd_load_tensor(&L, "text_model.embeddings.token_embedding.weight", 2, tshape);
    m->pos = sd_load_tensor(&L, "text_model.embeddings.position_embedding.weight", 2, pshape);
    char p[160], q[160], k[160], v[160];
    for (int l = 0; l < cfg->layers; l++) {
        sd_clip_layer *y = &m->layer[l];
        const char *base = "text_model.encoder.layers";
        snprintf(p, sizeof p, "%s.%d.layer_norm1", base, l);
        sd_load_norm(&L, &y->ln1, p, D);
        if (openclip) { /* q | k | v already stacked in in_proj */
            snprintf(p, sizeof p, "%s.%d.self_attn.in_proj", base, l);
            sd_load_lin(&L, &y->qkv, p, 3 * D, D, SD_LIN_LINEAR, 1);
        } else {
            snprintf(q, sizeof q, "%s.%d.self_attn.q_proj", base, l);
            snprintf(k, sizeof k, "%s.%d.self_attn.k_proj", base, l);
            snprintf(v, sizeof v, "%s.%d.self_attn.v_proj", base, l);
            const char *qkv[3] = {q, k, v};
            sd_load_lin_multi(&L, &y->qkv, qkv, 3, D, D, SD_LIN_LINEAR, 1);
        }
        snprintf(p, sizeof p, "%s.%d.self_attn.out_proj", base, l);
        sd_load_lin(&L, &y->out, p, D, D, SD_LIN_LINEAR, 1);
        snprintf(p, sizeof p, "%s.%d.layer_norm2", base, l);
        sd_load_norm(&L, &y->ln2, p, D);
        snprintf(p, sizeof p, "%s.%d.mlp.fc1", base, l);
        sd_load_lin(&L, &y->fc1, p, F, D, SD_LIN_LINEAR, 1);
        snprintf(p, sizeof p, "%s.%d.mlp.fc2", base, l);
        sd_load_lin(&L, &y->fc2, p, D, F, SD_LIN_LINEAR, 1);
    }
    sd_load_norm(&L, &m->final_ln, "text_model.final_layer_norm", D);
    m->n_params = L.n_params;
    if ((st = sd_loader_finish(&L)))
        sd_clip_release(m);
    return st;
}

void sd_clip_release(sd_clip *m)
{
    if (!m)
        return;
    sd_free(m->tok);
    sd_free(m->pos);
    if (m->layer)
        for (int l = 0; l < m->cfg.layers; l++) {
            sd_clip_layer *y = &m->layer[l];
            sd_norm_free(&y->ln1);
            sd_norm_free(&y->ln2);
            sd_lin_free(&y->qkv);
            sd_lin_free(&y->out);
            sd_lin_free(&y->fc1);
            sd_lin_free(&y->fc2);
        }
    free(m->layer);
    sd_norm_free(&m->final_ln);
    memset(m, 0, sizeof *m);
}

/* ---- forward ---- */

typedef struct run {
    const sd_clip *m;
    const sd_exec *ex;
    sd_prof *prof;
    sd_arena mem; /* base NULL: dry run */
} run;

static void graph(run *r, int B, int L, const int32_t *ids, int skip, float *out)
{
    const sd_clip *m = r->m;
    const sd_clip_config *c = &m->cfg;
    const int D = c->hidden, F = c->ffn, M = B * L, dh = D / c->heads;
    const float scale = (float)(1.0 / sqrt((double)dh));
    float *x = sd_arena_alloc(&r->mem, (size_t)M * D);
    float *t = sd_arena_alloc(&r->mem, (size_t)M * D);
    float *big = sd_arena_alloc(&r->mem, (size_t)M * (F > 3 * D ? F : 3 * D));
    if (!r->mem.base)
        return;
    const sd_exec *ex = r->ex;
    double t0 = sd_tick(r->prof);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < L; i++) {
            const float *te = m->tok + (size_t)ids[(size_t)b * L + i] * D;
            const float *pe = m->pos + (size_t)i * D;
            float *xr = x + ((size_t)b * L + i) * D;
            for (int d = 0; d < D; d++)
                xr[d] = te[d] + pe[d];
        }
    sd_tock(r->prof, SD_OP_NORM, t0, 0);
    for (int l = 0; l < c->layers - skip; l++) {
        const sd_clip_layer *y = &m->layer[l];
        t0 = sd_tick(r->prof);
        sd_layernorm(ex, x, M, D, c->eps, y->ln1.gamma, y->ln1.beta, t);
        sd_tock(r->prof, SD_OP_NORM, t0, 0);
        sd_epilogue eq = {.bias = y->qkv.b};
        sd_linear_op(ex, r->prof, SD_OP_LINEAR, M, t, D, &y->qkv, big, 3 * D, &eq);
        t0 = sd_tick(r->prof);
        sd_attention_causal(ex, B, c->heads, dh, L, big, 3 * D, big + D, 3 * D, big + 2 * D, 3 * D,
                            t, D, scale);
        sd_tock_shape(r->prof, SD_OP_ATTN, t0, 2.0 * B * c->heads * (double)L * (L + 1) * dh,
                      (sd_shape){SD_SHAPE_ATTN, {B, c->heads, L, L, dh}});
        sd_epilogue eo = {.bias = y->out.b, .residual = x, .ld_res = D};
        sd_linear_op(ex, r->prof, SD_OP_LINEAR, M, t, D, &y->out, x, D, &eo);
        t0 = sd_tick(r->prof);
        sd_layernorm(ex, x, M, D, c->eps, y->ln2.gamma, y->ln2.beta, t);
        sd_tock(r->prof, SD_OP_NORM, t0, 0);
        sd_epilogue e1 = {.bias = y->fc1.b};
        sd_linear_op(ex, r->prof, SD_OP_LINEAR, M, t, D, &y->fc1, big, F, &e1);
        t0 = sd_tick(r->prof);
        sd_gelu(ex, big, big, (size_t)M * F, c->quick_gelu);
        sd_tock(r->prof, SD_OP_NORM, t0, 0);
        sd_epilogue e2 = {.bias = y->fc2.b, .residual = x, .ld_res = D};
        sd_linear_op(ex, r->prof, SD_OP_LINEAR, M, big, F, &y->fc2, x, D, &e2);
    }
    t0 = sd_tick(r->prof);
    sd_layernorm(ex, x, M, D, c->eps, m->final_ln.gamma, m->final_ln.beta, out);
    sd_tock(r->prof, SD_OP_NORM, t0, 0);
}

size_t sd_clip_plan(const sd_clip *m, int B, int L)
{
    run r = {.m = m};
    graph(&r, B, L, NULL, 0, NULL);
    return r.mem.peak;
}

void sd_clip_forward(const sd_clip *m, const sd_exec *ex, float *mem, int B, int L,
                     const int32_t *ids, int skip, float *out, sd_prof *prof)
{
    run r = {.m = m, .ex = ex, .prof = prof, .mem = {.base = mem}};
    graph(&r, B, L, ids, skip, out);
}
