/* PyTorch .ckpt reader (zip + restricted pickle) and the LDM <-> diffusers
 * weight-name mapping. Hostile archives are built in memory, either by
 * patching the micro checkpoint or with the zip and pickle writers of
 * ckpt_build.h, which are independent of the reader (their CRC-32 is
 * bitwise). */
#include "check.h"
#include "ckpt_build.h"
#include "io/ckpt.h"
#include "io/json.h"
#include "io/keymap.h"
#include "io/tensorfile.h"
#include "unet/config.h"

#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------- helpers */

static void put32(unsigned char *p, uint32_t v)
{
    for (int k = 0; k < 4; k++)
        p[k] = (unsigned char)(v >> (8 * k));
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* One float storage "0" of 8 values and a dict {"w": tensor(2, 4)}. */
static const float k_vals[8] = {0, 1, 2, 3, 4, 5, 6, 7};

static byte_buf simple_pickle(void)
{
    byte_buf p = pk_start(2);
    pk_op(&p, '}');
    pk_op(&p, '(');
    pk_str(&p, "w");
    int64_t shape[2] = {2, 4}, stride[2] = {4, 1};
    pk_tensor(&p, "FloatStorage", "0", 8, 0, 2, shape, stride);
    pk_op(&p, 'u');
    pk_op(&p, '.');
    return p;
}

static byte_buf ckpt_from_pickle(const byte_buf *pickle)
{
    ckpt_entry d = {"0", k_vals, sizeof k_vals};
    return make_ckpt(pickle, &d, 1, ZW_ALIGN, 1);
}

/* Parses an image into a fresh table (freed by the caller with close). */
static sdunet_status parse(const void *p, size_t n, sd_tensorfile **out, sdunet_error *err)
{
    sd_tensorfile *tf = sd_calloc(1, sizeof *tf);
    if (!tf) {
        fprintf(stderr, "test_ckpt: out of memory\n");
        exit(2);
    }
    memset(err, 0, sizeof *err);
    sdunet_status st = sd_ckpt_parse(p, n, tf, err);
    *out = tf;
    return st;
}

/* The parse must fail with `code` and a message containing `what`, and
 * leave the table empty. */
static void expect_fail(const char *label, const void *p, size_t n, sdunet_status code,
                        const char *what)
{
    sd_tensorfile *tf;
    sdunet_error err;
    sdunet_status st = parse(p, n, &tf, &err);
    CHECK(st == code, "%s: status %d (want %d): %s", label, st, code, err.message);
    CHECK(!what || strstr(err.message, what), "%s: message '%s' lacks '%s'", label, err.message,
          what);
    CHECK(tf->count == 0 && !tf->tensors && !tf->owned, "%s: table not left empty", label);
    sd_tensorfile_close(tf);
}

static void expect_pickle_fail(const char *label, const byte_buf *pickle, sdunet_status code,
                               const char *what)
{
    byte_buf z = ckpt_from_pickle(pickle);
    expect_fail(label, z.p, z.n, code, what);
    bb_free(&z);
}

/* Finds the central record of entry `name` in a zip image. */
static unsigned char *central_of(unsigned char *p, size_t n, const char *name)
{
    size_t nl = strlen(name);
    for (size_t k = 0; k + 46 + nl <= n; k++)
        if (get32(p + k) == 0x02014b50u && p[k + 28] == (nl & 0xFF) && p[k + 29] == (nl >> 8) &&
            memcmp(p + k + 46, name, nl) == 0)
            return p + k;
    return NULL;
}

static unsigned char *micro_copy(size_t *n)
{
    unsigned char *p = t_read_file(t_data("micro/weights-ldm.ckpt"), n);
    if (!p) {
        fprintf(stderr, "test_ckpt: cannot read micro/weights-ldm.ckpt\n");
        exit(2);
    }
    return p;
}

/* ------------------------------------------------------------- micro checkpoint */

static void test_micro_matches_safetensors(void)
{
    sd_tensorfile *ck = NULL, *st = NULL;
    sdunet_error err = {0};
    sdunet_status s1 = sd_tensorfile_open(t_data("micro/weights-ldm.ckpt"), &ck, &err);
    CHECK(s1 == SDUNET_OK, "open ckpt: %s", err.message);
    sdunet_status s2 = sd_tensorfile_open(t_data("micro/weights-ldm.safetensors"), &st, &err);
    CHECK(s2 == SDUNET_OK, "open safetensors: %s", err.message);
    if (s1 || s2) {
        sd_tensorfile_close(ck);
        sd_tensorfile_close(st);
        return;
    }
    CHECK(strcmp(ck->format, "ckpt") == 0, "format %s", ck->format);
    CHECK(ck->count == 682 && ck->count == st->count, "counts %zu vs %zu", ck->count, st->count);
    CHECK(ck->n_owned == 0, "aligned contiguous tensors were copied (%zu)", ck->n_owned);
    size_t bad = 0;
    for (size_t k = 0; k < ck->count && k < st->count; k++) {
        const sd_tensor_info *a = &ck->tensors[k], *b = &st->tensors[k];
        int same = strcmp(a->name, b->name) == 0 && a->dtype == b->dtype && a->ndim == b->ndim &&
                   a->numel == b->numel && a->nbytes == b->nbytes &&
                   memcmp(a->shape, b->shape, sizeof a->shape[0] * (size_t)a->ndim) == 0 &&
                   memcmp(a->data, b->data, a->nbytes) == 0;
        const unsigned char *d = a->data, *m = ck->map;
        int inside = d >= m && d + a->nbytes <= m + ck->map_size;
        if (!same || !inside) {
            if (bad++ < 5)
                CHECK(0, "tensor %zu: ckpt %s vs safetensors %s (same %d, zero-copy %d)", k,
                      a->name, b->name, same, inside);
        }
        if (k)
            CHECK(strcmp(ck->tensors[k - 1].name, a->name) < 0, "not sorted at %zu", k);
    }
    CHECK(bad == 0, "%zu tensors differ", bad);
    sd_tensorfile_close(ck);
    sd_tensorfile_close(st);
}

/* Every diffusers tensor of the micro model is found in the LDM checkpoint
 * through the key map, with identical bytes. */
static void test_micro_lookup_through_keymap(void)
{
    sd_tensorfile *ck = NULL, *df = NULL;
    sdunet_error err = {0};
    sd_unet_config cfg;
    CHECK(sd_config_load(t_data("micro/config.json"), &cfg, &err) == SDUNET_OK, "config: %s",
          err.message);
    if (sd_tensorfile_open(t_data("micro/weights-ldm.ckpt"), &ck, &err) ||
        sd_tensorfile_open(t_data("micro/weights.safetensors"), &df, &err)) {
        CHECK(0, "open: %s", err.message);
        sd_tensorfile_close(ck);
        sd_tensorfile_close(df);
        return;
    }
    CHECK(sd_detect_layout(ck) == SD_LAYOUT_LDM, "ckpt layout %d", sd_detect_layout(ck));
    CHECK(sd_detect_layout(df) == SD_LAYOUT_DIFFUSERS, "diffusers layout %d", sd_detect_layout(df));
    size_t bad = 0;
    for (size_t k = 0; k < df->count; k++) {
        const sd_tensor_info *b = &df->tensors[k];
        const sd_tensor_info *a = sd_find_unet_tensor(ck, &cfg, SD_LAYOUT_LDM, b->name);
        const sd_tensor_info *c = sd_find_unet_tensor(df, &cfg, SD_LAYOUT_DIFFUSERS, b->name);
        if (!a || c != b || a->nbytes != b->nbytes || memcmp(a->data, b->data, a->nbytes) != 0)
            if (bad++ < 5)
                CHECK(0, "%s not found or different through the key map", b->name);
    }
    CHECK(bad == 0, "%zu tensors differ", bad);
    /* and every tensor of the checkpoint maps to a diffusers tensor */
    for (size_t k = 0; k < ck->count; k++) {
        char name[256];
        int r = sd_ldm_to_diffusers(&cfg, ck->tensors[k].name, name, sizeof name);
        CHECK(r == 1 && sd_tensorfile_find(df, name), "%s -> %d '%s'", ck->tensors[k].name, r,
              name);
    }
    sd_tensorfile_close(ck);
    sd_tensorfile_close(df);
}

/* ------------------------------------------------------------- key map */

static void micro_config(sd_unet_config *c)
{
    memset(c, 0, sizeof *c);
    c->in_channels = c->out_channels = 4;
    c->n_blocks = 4;
    for (int i = 0; i < 4; i++) {
        c->block_out_channels[i] = 32;
        c->down_has_attn[i] = i < 3;
        c->up_has_attn[i] = i > 0;
        c->heads[i] = 8;
    }
    c->layers_per_block = 2;
    c->cross_attention_dim = 16;
    c->norm_num_groups = 32;
    c->mid_has_attn = 1;
}

static void check_oracle(const sd_unet_config *cfg, const char *label)
{
    size_t len;
    unsigned char *text = t_read_file(t_data("micro/ldm-keymap.json"), &len);
    CHECK(text != NULL, "cannot read ldm-keymap.json");
    if (!text)
        return;
    sd_json *root = NULL;
    sdunet_error err = {0};
    sdunet_status st = sd_json_parse((const char *)text, len, &root, &err);
    CHECK(st == SDUNET_OK, "json: %s", err.message);
    const sd_json *m = sd_json_get(root, "ldm_key_to_diffusers_key");
    CHECK(m && m->type == SD_JSON_OBJECT && m->len == 682, "%s: no 682-entry map", label);
    size_t bad = 0;
    for (size_t k = 0; m && k < m->len; k++) {
        const char *ldm = m->keys[k], *diff = m->items[k].string;
        char a[256], b[256];
        int r1 = sd_ldm_to_diffusers(cfg, ldm, a, sizeof a);
        int r2 = diff ? sd_diffusers_to_ldm(cfg, diff, b, sizeof b) : -9;
        if (r1 != 1 || r2 != 1 || strcmp(a, diff) != 0 || strcmp(b, ldm) != 0) {
            if (bad++ < 8)
                CHECK(0, "%s: %s -> (%d) %s; %s -> (%d) %s", label, ldm, r1, a, diff, r2, b);
        }
        /* the mapping is injective: no two LDM keys share a diffusers key */
        for (size_t q = 0; q < k; q++)
            if (strcmp(m->items[q].string, diff) == 0)
                CHECK(0, "%s: duplicate diffusers key %s", label, diff);
    }
    CHECK(bad == 0, "%s: %zu of %zu entries wrong", label, bad, m ? m->len : 0);
    sd_json_free(root);
    free(text);
}

static void test_keymap_oracle(void)
{
    sd_unet_config cfg;
    micro_config(&cfg);
    check_oracle(&cfg, "micro");
    /* SD1.5 and SD2.1 have the same topology and names */
    sdunet_error err;
    CHECK(sd_config_preset("sd15", &cfg, &err) == SDUNET_OK, "sd15: %s", err.message);
    check_oracle(&cfg, "sd15");
    CHECK(sd_config_preset("sd21", &cfg, &err) == SDUNET_OK, "sd21: %s", err.message);
    check_oracle(&cfg, "sd21");
}

static void test_keymap_not_unet(void)
{
    sd_unet_config cfg;
    micro_config(&cfg);
    static const char *const ldm_zero[] = {
        "first_stage_model.encoder.conv_in.weight",
        "first_stage_model.decoder.up.0.block.0.norm1.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_ids",
        "model_ema.decay",
        "model_ema.num_updates",
        "model_ema.diffusion_modelinput_blocks00weight",
        "model_ema.diffusion_modelout2bias",
        "alphas_cumprod",
        "betas",
        "log_one_minus_alphas_cumprod",
        "model.diffusion_model",
        "model.diffusion_modelx.weight",
        "conv_in.weight",
        "",
    };
    char out[256];
    for (size_t k = 0; k < sizeof ldm_zero / sizeof ldm_zero[0]; k++) {
        strcpy(out, "junk");
        int r = sd_ldm_to_diffusers(&cfg, ldm_zero[k], out, sizeof out);
        CHECK(r == 0 && out[0] == 0, "'%s' -> %d '%s'", ldm_zero[k], r, out);
    }
    CHECK(sd_ldm_to_diffusers(&cfg, NULL, out, sizeof out) == 0, "NULL name");
    static const char *const diff_zero[] = {
        "decoder.conv_in.weight",
        "encoder.down_blocks.0.resnets.0.norm1.weight",
        "text_model.encoder.layers.0.mlp.fc1.weight",
        "unet.conv_in.weight",
        "model.diffusion_model.input_blocks.0.0.weight",
        "conv_in",
        "",
    };
    for (size_t k = 0; k < sizeof diff_zero / sizeof diff_zero[0]; k++) {
        int r = sd_diffusers_to_ldm(&cfg, diff_zero[k], out, sizeof out);
        CHECK(r == 0 && out[0] == 0, "'%s' -> %d '%s'", diff_zero[k], r, out);
    }
}

static void test_keymap_unmappable(void)
{
    sd_unet_config cfg;
    micro_config(&cfg);
    static const char *const ldm_bad[] = {
        "input_blocks.12.0.in_layers.0.weight", /* past the last down block */
        "input_blocks.9.0.in_layers.0.weight",  /* a downsampler slot, not a resnet */
        "input_blocks.12.0.op.weight",          /* the last block has no downsampler */
        "input_blocks.10.1.norm.weight",        /* down block 3 has no attention */
        "input_blocks.3.1.norm.weight",         /* downsampler slot has no attention */
        "input_blocks.0.1.weight",
        "input_blocks.0.0.weight.x",
        "input_blocks.01.0.in_layers.0.weight", /* non-canonical index */
        "input_blocks.-1.0.in_layers.0.weight",
        "input_blocks.1.0.in_layers.1.weight", /* SiLU has no weights */
        "input_blocks.1.0.in_layers.0.running_mean",
        "input_blocks.1.1.transformer_blocks.0.attn3.to_q.weight",
        "input_blocks.1.1.transformer_blocks.x.norm1.weight",
        "input_blocks.99999999999999999999.0.op.weight",
        "output_blocks.0.1.norm.weight",  /* up block 0 has no attention */
        "output_blocks.0.1.conv.weight",  /* upsampler only after the last layer */
        "output_blocks.2.2.conv.weight",  /* block 0: upsampler is .1 */
        "output_blocks.5.1.conv.weight",  /* block 1: upsampler is .2 */
        "output_blocks.11.2.conv.weight", /* the last up block has no upsampler */
        "output_blocks.12.0.in_layers.0.weight",
        "middle_block.3.in_layers.0.weight",
        "middle_block.1.in_layers.0.weight",
        "time_embed.1.weight",
        "out.1.weight",
        "label_emb.0.0.weight",
        "input_blocks.1.0.in_layers.0.",
        "",
    };
    char in[256], out[256];
    for (size_t k = 0; k < sizeof ldm_bad / sizeof ldm_bad[0]; k++) {
        snprintf(in, sizeof in, "%s%s", SD_LDM_UNET_PREFIX, ldm_bad[k]);
        strcpy(out, "junk");
        int r = sd_ldm_to_diffusers(&cfg, in, out, sizeof out);
        CHECK(r == -1 && out[0] == 0, "'%s' -> %d '%s'", in, r, out);
    }
    static const char *const diff_bad[] = {
        "down_blocks.4.resnets.0.norm1.weight",
        "down_blocks.0.resnets.2.norm1.weight",
        "down_blocks.3.attentions.0.norm.weight",
        "down_blocks.3.downsamplers.0.conv.weight",
        "down_blocks.0.downsamplers.1.conv.weight",
        "up_blocks.0.attentions.0.norm.weight",
        "up_blocks.1.resnets.3.norm1.weight",
        "up_blocks.3.upsamplers.0.conv.weight",
        "mid_block.resnets.2.norm1.weight",
        "mid_block.attentions.1.norm.weight",
        "time_proj.weight",
        "time_embedding.linear_3.weight",
        "conv_in.weight.x",
        "conv_out.scale",
        "down_blocks.0.resnets.0.nonlinearity.weight",
        "class_embedding.weight",
        "down_blocks.00.resnets.0.norm1.weight",
    };
    for (size_t k = 0; k < sizeof diff_bad / sizeof diff_bad[0]; k++) {
        strcpy(out, "junk");
        int r = sd_diffusers_to_ldm(&cfg, diff_bad[k], out, sizeof out);
        CHECK(r == -1 && out[0] == 0, "'%s' -> %d '%s'", diff_bad[k], r, out);
    }
    /* an output buffer that is too small is an error, not a truncation */
    char tiny[8];
    CHECK(sd_ldm_to_diffusers(&cfg, "model.diffusion_model.out.2.bias", tiny, sizeof tiny) == -1,
          "short buffer");
    CHECK(sd_diffusers_to_ldm(&cfg, "conv_out.bias", tiny, sizeof tiny) == -1, "short buffer");
    CHECK(sd_ldm_to_diffusers(NULL, "model.diffusion_model.out.2.bias", out, sizeof out) == -1,
          "NULL config");
    /* without mid-block attention the LDM middle block has no counterpart */
    cfg.mid_has_attn = 0;
    CHECK(sd_ldm_to_diffusers(&cfg, "model.diffusion_model.middle_block.0.in_layers.0.weight", out,
                              sizeof out) == -1,
          "mid block without attention");
}

/* For other topologies the rules generalise: enumerate every diffusers
 * name of a config, map it to LDM and back, and require distinct LDM
 * names. */
static size_t enumerate_names(const sd_unet_config *c, char (*names)[96], size_t max)
{
    size_t n = 0;
#define ADD(...) (n < max ? (void)snprintf(names[n++], 96, __VA_ARGS__) : (void)0)
    const char *res[] = {"norm1", "conv1", "time_emb_proj", "norm2", "conv2", "conv_shortcut"};
    const char *att[] = {"norm",
                         "proj_in",
                         "transformer_blocks.0.attn1.to_q",
                         "transformer_blocks.0.attn2.to_out.0",
                         "transformer_blocks.0.ff.net.2",
                         "proj_out"};
    ADD("conv_in.weight");
    ADD("time_embedding.linear_1.bias");
    ADD("time_embedding.linear_2.weight");
    for (int i = 0; i < c->n_blocks; i++) {
        for (int j = 0; j < c->layers_per_block; j++) {
            for (int r = 0; r < 6; r++)
                ADD("down_blocks.%d.resnets.%d.%s.weight", i, j, res[r]);
            for (int a = 0; c->down_has_attn[i] && a < 6; a++)
                ADD("down_blocks.%d.attentions.%d.%s.weight", i, j, att[a]);
        }
        if (i < c->n_blocks - 1)
            ADD("down_blocks.%d.downsamplers.0.conv.bias", i);
    }
    for (int r = 0; r < 6; r++) {
        ADD("mid_block.resnets.0.%s.bias", res[r]);
        ADD("mid_block.resnets.1.%s.bias", res[r]);
        ADD("mid_block.attentions.0.%s.bias", att[r]);
    }
    for (int i = 0; i < c->n_blocks; i++) {
        for (int j = 0; j <= c->layers_per_block; j++) {
            for (int r = 0; r < 6; r++)
                ADD("up_blocks.%d.resnets.%d.%s.weight", i, j, res[r]);
            for (int a = 0; c->up_has_attn[i] && a < 6; a++)
                ADD("up_blocks.%d.attentions.%d.%s.weight", i, j, att[a]);
        }
        if (i < c->n_blocks - 1)
            ADD("up_blocks.%d.upsamplers.0.conv.weight", i);
    }
    ADD("conv_norm_out.weight");
    ADD("conv_out.bias");
#undef ADD
    return n;
}

static int cmp_str96(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void test_keymap_other_topologies(void)
{
    static const struct {
        int n_blocks, layers;
        unsigned down_attn, up_attn; /* bit masks */
    } topo[] = {
        {4, 2, 0x7, 0xE}, {3, 1, 0x3, 0x6}, {2, 3, 0x0, 0x0}, {5, 4, 0x1F, 0x15}, {1, 1, 0x1, 0x1}};
    enum { MAXN = 4096 };
    char(*names)[96] = malloc(sizeof(char[96]) * MAXN);
    char(*ldm)[96] = malloc(sizeof(char[96]) * MAXN);
    if (!names || !ldm) {
        CHECK(0, "out of memory");
        free(names);
        free(ldm);
        return;
    }
    for (size_t t = 0; t < sizeof topo / sizeof topo[0]; t++) {
        sd_unet_config c;
        micro_config(&c);
        c.n_blocks = topo[t].n_blocks;
        c.layers_per_block = topo[t].layers;
        for (int i = 0; i < c.n_blocks; i++) {
            c.down_has_attn[i] = (topo[t].down_attn >> i) & 1;
            c.up_has_attn[i] = (topo[t].up_attn >> i) & 1;
        }
        size_t n = enumerate_names(&c, names, MAXN);
        size_t bad = 0;
        for (size_t k = 0; k < n; k++) {
            char back[96];
            int r1 = sd_diffusers_to_ldm(&c, names[k], ldm[k], sizeof ldm[k]);
            int r2 = r1 == 1 ? sd_ldm_to_diffusers(&c, ldm[k], back, sizeof back) : -9;
            if (r1 != 1 || r2 != 1 || strcmp(back, names[k]) != 0)
                if (bad++ < 5)
                    CHECK(0, "topology %zu: %s -> (%d) %s -> (%d) %s", t, names[k], r1, ldm[k], r2,
                          r2 == 1 ? back : "");
        }
        CHECK(bad == 0, "topology %zu: %zu of %zu names fail", t, bad, n);
        qsort(ldm, n, sizeof ldm[0], cmp_str96);
        for (size_t k = 1; k < n; k++)
            CHECK(strcmp(ldm[k - 1], ldm[k]) != 0, "topology %zu: two names map to %s", t, ldm[k]);
    }
    free(names);
    free(ldm);
}

static void test_detect_layout(void)
{
    sd_tensor_info rows[3] = {{.name = "alphas_cumprod"},
                              {.name = "down_blocks.0.resnets.0.norm1.weight"},
                              {.name = "model.diffusion_model.out.2.bias"}};
    sd_tensorfile tf = {.tensors = rows, .count = 1};
    CHECK(sd_detect_layout(&tf) == SD_LAYOUT_UNKNOWN, "only non-UNet names");
    tf.count = 0;
    CHECK(sd_detect_layout(&tf) == SD_LAYOUT_UNKNOWN, "empty table");
    CHECK(sd_detect_layout(NULL) == SD_LAYOUT_UNKNOWN, "NULL table");
    tf.count = 2;
    CHECK(sd_detect_layout(&tf) == SD_LAYOUT_DIFFUSERS, "diffusers");
    tf.count = 3;
    CHECK(sd_detect_layout(&tf) == SD_LAYOUT_MIXED, "mixed");
    rows[1] = rows[2];
    CHECK(sd_detect_layout(&tf) == SD_LAYOUT_LDM, "ldm");
}

/* ------------------------------------------------------------- custom archives */

static const sd_tensor_info *find(const sd_tensorfile *tf, const char *name)
{
    const sd_tensor_info *t = sd_tensorfile_find(tf, name);
    CHECK(t != NULL, "tensor %s missing", name);
    return t;
}

static int floats_are(const sd_tensor_info *t, const float *want, size_t n)
{
    return t && t->dtype == SD_DT_F32 && t->numel == n && t->nbytes == 4 * n &&
           memcmp(t->data, want, 4 * n) == 0;
}

/* Views: contiguous (zero copy), transposed, offset, broadcast, scalar,
 * empty, int64 and half storages, _rebuild_parameter, wrapped in a
 * Lightning-style dict with non-tensor values. Streamed (data descriptor)
 * entries, 64-byte alignment records and a zip64 end record. */
static void test_custom_views(void)
{
    const int64_t longs[3] = {7, -1, INT64_MAX};
    const uint16_t halves[2] = {0x3C00, 0xC000};
    byte_buf p = pk_start(2);
    pk_op(&p, '}');
    pk_op(&p, '(');
    pk_str(&p, "global_step");
    pk_int(&p, 1234567);
    pk_str(&p, "epoch");
    pk_op(&p, 'G');
    bb_put(&p, "\x3f\xf8\x00\x00\x00\x00\x00\x00", 8); /* 1.5 */
    pk_str(&p, "hparams");
    pk_op(&p, ']');
    pk_op(&p, 'N');
    pk_op(&p, 'a');
    pk_op(&p, 0x88);
    pk_op(&p, 'a');
    pk_str(&p, "state_dict");
    pk_op(&p, '}');
    pk_op(&p, '(');
    {
        int64_t sh[2] = {2, 4}, st[2] = {4, 1};
        pk_str(&p, "contig");
        pk_tensor(&p, "FloatStorage", "0", 8, 0, 2, sh, st);
    }
    {
        int64_t sh[2] = {4, 2}, st[2] = {1, 4};
        pk_str(&p, "transposed");
        pk_tensor(&p, "FloatStorage", "0", 8, 0, 2, sh, st);
    }
    {
        int64_t sh[1] = {3}, st[1] = {1};
        pk_str(&p, "offset");
        pk_tensor(&p, "FloatStorage", "0", 8, 5, 1, sh, st);
    }
    {
        int64_t sh[2] = {3, 2}, st[2] = {0, 1};
        pk_str(&p, "broadcast");
        pk_tensor(&p, "FloatStorage", "0", 8, 6, 2, sh, st);
    }
    {
        int64_t sh[3] = {2, 1, 2}, st[3] = {4, 99, 2}; /* size-1 dims may have any stride */
        pk_str(&p, "strided");
        pk_tensor(&p, "FloatStorage", "0", 8, 1, 3, sh, st);
    }
    pk_str(&p, "scalar");
    pk_tensor(&p, "FloatStorage", "0", 8, 7, 0, NULL, NULL);
    {
        int64_t sh[2] = {0, 4}, st[2] = {4, 1};
        pk_str(&p, "empty");
        pk_tensor(&p, "FloatStorage", "0", 8, 8, 2, sh, st);
    }
    {
        int64_t sh[2] = {1, 3}, st[2] = {3, 1};
        pk_str(&p, "cond_stage_model.transformer.text_model.embeddings.position_ids");
        pk_tensor(&p, "LongStorage", "1", 3, 0, 2, sh, st);
    }
    {
        int64_t sh[1] = {2}, st[1] = {1};
        pk_str(&p, "param");
        pk_global(&p, "torch._utils", "_rebuild_parameter");
        pk_op(&p, '(');
        pk_tensor(&p, "HalfStorage", "2", 2, 0, 1, sh, st);
        pk_op(&p, 0x88);
        pk_ordered_dict(&p);
        pk_op(&p, 't');
        pk_op(&p, 'R');
    }
    pk_op(&p, 'u');
    pk_op(&p, 'u');
    pk_op(&p, '.');
    ckpt_entry d[3] = {
        {"0", k_vals, sizeof k_vals}, {"1", longs, sizeof longs}, {"2", halves, sizeof halves}};
    byte_buf z = make_ckpt(&p, d, 3, ZW_DESC | ZW_ALIGN, 1);
    sd_tensorfile *tf;
    sdunet_error err;
    sdunet_status st = parse(z.p, z.n, &tf, &err);
    CHECK(st == SDUNET_OK, "%s", err.message);
    if (st == SDUNET_OK) {
        CHECK(tf->count == 9, "count %zu", tf->count);
        CHECK(strcmp(tf->format, "ckpt") == 0, "format");
        const sd_tensor_info *t = find(tf, "contig");
        CHECK(floats_are(t, k_vals, 8) && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 4,
              "contig");
        CHECK(t && (const unsigned char *)t->data > z.p &&
                  (const unsigned char *)t->data < z.p + z.n,
              "contiguous tensor is not zero-copy");
        const float tr[8] = {0, 4, 1, 5, 2, 6, 3, 7};
        t = find(tf, "transposed");
        CHECK(floats_are(t, tr, 8) && t->shape[0] == 4 && t->shape[1] == 2, "transposed");
        const float off[3] = {5, 6, 7};
        CHECK(floats_are(find(tf, "offset"), off, 3), "offset");
        const float bc[6] = {6, 7, 6, 7, 6, 7};
        CHECK(floats_are(find(tf, "broadcast"), bc, 6), "broadcast");
        const float sd[4] = {1, 3, 5, 7};
        CHECK(floats_are(find(tf, "strided"), sd, 4), "strided");
        const float sc[1] = {7};
        t = find(tf, "scalar");
        CHECK(floats_are(t, sc, 1) && t->ndim == 0, "scalar");
        t = find(tf, "empty");
        CHECK(t && t->numel == 0 && t->nbytes == 0 && t->ndim == 2 && t->shape[0] == 0, "empty");
        t = find(tf, "cond_stage_model.transformer.text_model.embeddings.position_ids");
        CHECK(t && t->dtype == SD_DT_I64 && t->numel == 3 && t->nbytes == 24 &&
                  memcmp(t->data, longs, 24) == 0,
              "int64");
        t = find(tf, "param");
        CHECK(t && t->dtype == SD_DT_F16 && t->numel == 2 && memcmp(t->data, halves, 4) == 0,
              "half parameter");
        CHECK(tf->n_owned == 3, "%zu owned copies (transposed, broadcast, strided)", tf->n_owned);
        for (size_t k = 1; k < tf->count; k++)
            CHECK(strcmp(tf->tensors[k - 1].name, tf->tensors[k].name) < 0, "sorted");
    }
    sd_tensorfile_close(tf);
    bb_free(&z);
    bb_free(&p);
}

/* Protocol 4 spellings (FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL,
 * LONG_BINGET), a flat top-level dict, no zip64 record, no descriptors,
 * and storage data that is not 4-byte aligned (so it gets copied). */
static void test_custom_protocol4(void)
{
    byte_buf p = pk_start(4);
    pk_frame(&p, 0); /* FRAME lengths are hints only */
    pk_op(&p, '}');
    pk_op(&p, 0x94);
    pk_op(&p, '(');
    for (int k = 0; k < 2; k++) {
        pk_short_str(&p, k ? "b" : "a");
        pk_op(&p, 0x94);
        if (k == 0) {
            pk_short_str(&p, "torch._utils");
            pk_short_str(&p, "_rebuild_tensor_v2");
            pk_op(&p, 0x93);
            pk_op(&p, 0x94); /* memo 2 */
            pk_op(&p, '(');
            pk_op(&p, '(');
            pk_str(&p, "storage");
            pk_global(&p, "torch", "FloatStorage");
            pk_op(&p, 0x94); /* memo 3 */
            pk_str(&p, "0");
            pk_str(&p, "cpu");
            pk_int(&p, 8);
            pk_op(&p, 't');
            pk_op(&p, 0x94); /* memo 4: the persistent id */
            pk_op(&p, 'Q');
        } else {
            pk_op(&p, 'j');
            bb_u32(&p, 2);
            pk_op(&p, '(');
            pk_op(&p, 'j');
            bb_u32(&p, 4);
            pk_op(&p, 'Q');
        }
        pk_int(&p, k * 4);
        pk_int(&p, 4);
        pk_op(&p, 0x85);
        pk_int(&p, 1);
        pk_op(&p, 0x85);
        pk_op(&p, 0x89);
        pk_ordered_dict(&p);
        pk_op(&p, 't');
        pk_op(&p, 'R');
        pk_op(&p, 0x94);
    }
    pk_op(&p, 'u');
    pk_op(&p, '.');
    ckpt_entry d = {"0", k_vals, sizeof k_vals};
    byte_buf z = make_ckpt(&p, &d, 1, ZW_MISALIGN, 0);
    sd_tensorfile *tf;
    sdunet_error err;
    sdunet_status st = parse(z.p, z.n, &tf, &err);
    CHECK(st == SDUNET_OK, "%s", err.message);
    if (st == SDUNET_OK) {
        CHECK(tf->count == 2, "count %zu", tf->count);
        CHECK(floats_are(find(tf, "a"), k_vals, 4), "a");
        CHECK(floats_are(find(tf, "b"), k_vals + 4, 4), "b");
        CHECK(tf->n_owned == 2, "misaligned data should be copied (%zu)", tf->n_owned);
    }
    sd_tensorfile_close(tf);
    bb_free(&z);
    bb_free(&p);
}

/* The shape of the original SD 1.x checkpoints: Lightning bookkeeping next
 * to the state dict, including the ModelCheckpoint class as a dict key and
 * a numpy scalar built from numpy.dtype and _codecs.encode. Those are kept
 * as inert values; nothing is called. */
static void test_lightning_layout(void)
{
    byte_buf p = pk_start(2);
    pk_op(&p, '}');
    pk_op(&p, '(');
    pk_str(&p, "epoch");
    pk_int(&p, 5);
    pk_str(&p, "global_step");
    pk_int(&p, 470000);
    pk_str(&p, "pytorch-lightning_version");
    pk_str(&p, "1.4.2");
    pk_str(&p, "callbacks");
    pk_op(&p, '}');
    pk_global(&p, "pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint");
    pk_op(&p, '}');
    pk_op(&p, '(');
    pk_str(&p, "monitor");
    pk_op(&p, 'N');
    pk_str(&p, "best_model_score");
    pk_global(&p, "numpy.core.multiarray", "scalar");
    pk_global(&p, "numpy", "dtype");
    pk_op(&p, '(');
    pk_str(&p, "f8");
    pk_op(&p, 0x89);
    pk_op(&p, 0x88);
    pk_op(&p, 't');
    pk_op(&p, 'R');
    pk_op(&p, '(');
    pk_int(&p, 3);
    pk_str(&p, "<");
    pk_op(&p, 'N');
    pk_op(&p, 'N');
    pk_op(&p, 'N');
    pk_int(&p, -1);
    pk_int(&p, -1);
    pk_int(&p, 0);
    pk_op(&p, 't');
    pk_op(&p, 'b');
    pk_global(&p, "_codecs", "encode");
    pk_str(&p, "\x01\x02\x03\x04\x05\x06\x07\x08");
    pk_str(&p, "latin1");
    pk_op(&p, 0x86);
    pk_op(&p, 'R');
    pk_op(&p, 0x86);
    pk_op(&p, 'R');
    pk_str(&p, "best_model_path");
    pk_op(&p, 'C');
    bb_u8(&p, 3);
    bb_put(&p, "abc", 3);
    pk_op(&p, 'u');
    pk_op(&p, 's');
    pk_str(&p, "state_dict");
    pk_op(&p, '}');
    pk_str(&p, "w");
    int64_t shape[2] = {2, 4}, stride[2] = {4, 1};
    pk_tensor(&p, "FloatStorage", "0", 8, 0, 2, shape, stride);
    pk_op(&p, 's');
    pk_str(&p, "optimizer_states");
    pk_op(&p, ']');
    pk_op(&p, '(');
    pk_op(&p, '}');
    pk_op(&p, '(');
    pk_str(&p, "state");
    pk_op(&p, '}');
    pk_str(&p, "param_groups");
    pk_op(&p, ']');
    pk_op(&p, 'u');
    pk_op(&p, 'e');
    pk_op(&p, 'u');
    pk_op(&p, '.');
    byte_buf z = ckpt_from_pickle(&p);
    sd_tensorfile *tf;
    sdunet_error err;
    sdunet_status st = parse(z.p, z.n, &tf, &err);
    CHECK(st == SDUNET_OK, "%s", err.message);
    CHECK(tf->count == 1 && floats_are(sd_tensorfile_find(tf, "w"), k_vals, 8), "state dict");
    sd_tensorfile_close(tf);
    bb_free(&z);
    bb_free(&p);

    /* the class may be named, never called */
    p = pk_start(2);
    pk_global(&p, "pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint");
    pk_op(&p, ')');
    pk_op(&p, 'R');
    expect_pickle_fail("call ModelCheckpoint", &p, SDUNET_E_UNSUPPORTED,
                       "calling pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint");
    bb_free(&p);
    /* other Lightning or numpy names stay refused */
    p = pk_start(2);
    pk_global(&p, "numpy.core.multiarray", "_reconstruct");
    expect_pickle_fail("numpy _reconstruct", &p, SDUNET_E_UNSUPPORTED, "is not allowed");
    bb_free(&p);
}

/* ------------------------------------------------------------- hostile archives */

static void test_hostile_zip_micro(void)
{
    size_t n;
    unsigned char *orig = micro_copy(&n);
    unsigned char *p = malloc(n);
    if (!p) {
        free(orig);
        CHECK(0, "out of memory");
        return;
    }
    /* truncation anywhere */
    const size_t cuts[] = {0, 1, 4, 21, 22, 30, 64, 1000, n / 2, n - 200, n - 23, n - 22, n - 1};
    for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
        char label[64];
        snprintf(label, sizeof label, "truncated to %zu", cuts[k]);
        memcpy(p, orig, cuts[k]);
        expect_fail(label, p, cuts[k], SDUNET_E_FORMAT, NULL);
    }

    /* a flipped byte in the pickle and in one storage */
    sd_tensorfile *tf;
    sdunet_error err;
    memcpy(p, orig, n);
    CHECK(parse(p, n, &tf, &err) == SDUNET_OK, "%s", err.message);
    const sd_tensor_info *t = sd_tensorfile_find(tf, "model.diffusion_model.out.2.weight");
    size_t data_at = t ? (size_t)((const unsigned char *)t->data - p) : 0;
    sd_tensorfile_close(tf);
    CHECK(data_at > 0, "out.2.weight missing");
    p[data_at + 5] ^= 0x10;
    expect_fail("storage bit flip", p, n, SDUNET_E_FORMAT, "CRC-32 mismatch in entry");
    memcpy(p, orig, n);
    p[200] ^= 0x01;
    expect_fail("pickle bit flip", p, n, SDUNET_E_FORMAT, "data.pkl");

    /* an entry whose size or offset runs past the end */
    memcpy(p, orig, n);
    unsigned char *c = central_of(p, n, "weights-ldm/data/5");
    CHECK(c != NULL, "central record of data/5 not found");
    if (c) {
        put32(c + 20, 0x7FFFFFF0u);
        put32(c + 24, 0x7FFFFFF0u);
        expect_fail("size past the end", p, n, SDUNET_E_FORMAT, "runs past the end");
        memcpy(p, orig, n);
        put32(c + 42, (uint32_t)n - 10);
        expect_fail("offset past the end", p, n, SDUNET_E_FORMAT, "local header");
        memcpy(p, orig, n);
        put32(c + 24, get32(c + 24) + 1);
        expect_fail("sizes disagree", p, n, SDUNET_E_FORMAT, "different compressed");
        memcpy(p, orig, n);
        put32(c + 20, get32(c + 20) + 4);
        put32(c + 24, get32(c + 24) + 4);
        expect_fail("central size larger than local", p, n, SDUNET_E_FORMAT, NULL);
        memcpy(p, orig, n);
        put32(c + 16, get32(c + 16) ^ 1);
        expect_fail("central CRC differs from descriptor", p, n, SDUNET_E_FORMAT, NULL);
        /* deflate: patch both headers so only the method is wrong */
        memcpy(p, orig, n);
        c[10] = 8;
        p[get32(c + 42) + 8] = 8;
        expect_fail("deflate", p, n, SDUNET_E_UNSUPPORTED, "method 8 (deflate)");
        memcpy(p, orig, n);
        c[10] = 14;
        expect_fail("lzma", p, n, SDUNET_E_UNSUPPORTED, "method 14 (lzma)");
        memcpy(p, orig, n);
        c[8] |= 1;
        expect_fail("encrypted", p, n, SDUNET_E_UNSUPPORTED, "encrypted");
        /* two entries claim the same local header */
        memcpy(p, orig, n);
        unsigned char *c6 = central_of(p, n, "weights-ldm/data/6");
        if (c6) {
            memcpy(c + 16, c6 + 16, 12);
            memcpy(c + 42, c6 + 42, 4);
            expect_fail("shared header", p, n, SDUNET_E_FORMAT, "different file");
        }
        /* bad names */
        memcpy(p, orig, n);
        c[46 + 12] = '\\';
        expect_fail("backslash name", p, n, SDUNET_E_FORMAT, "bad name");
    }
    /* the end records */
    memcpy(p, orig, n);
    p[n - 22 + 10] ^= 1; /* total entries */
    expect_fail("entry count", p, n, SDUNET_E_FORMAT, "disagree");
    memcpy(p, orig, n);
    p[n - 2] = 5; /* comment length past the end */
    expect_fail("comment length", p, n, SDUNET_E_FORMAT, "end-of-central-directory");
    free(p);
    free(orig);
}

/* Entry "arc/data/1" lives inside the payload of "arc/data/0": each is
 * self-consistent, but they overlap. */
static void test_hostile_overlap(void)
{
    byte_buf pickle = simple_pickle();
    zw z = {0};
    zw_add(&z, "arc/data.pkl", pickle.p, pickle.n, 0);
    byte_buf inner = {0};
    bb_put(&inner, k_vals, 8);
    size_t at_inner = inner.n;
    zw_local(&inner, "arc/data/1", k_vals, sizeof k_vals, 0);
    bb_put(&inner, k_vals, sizeof k_vals);
    uint32_t lho0 = zw_local(&z.out, "arc/data/0", inner.p, inner.n, 0);
    zw_central(&z, "arc/data/0", lho0, (uint32_t)inner.n, crc32_bitwise(inner.p, inner.n), 0);
    uint32_t lho1 = lho0 + 30 + 10 + (uint32_t)at_inner;
    zw_central(&z, "arc/data/1", lho1, sizeof k_vals, crc32_bitwise(k_vals, sizeof k_vals), 0);
    zw_finish(&z, 0);
    expect_fail("overlap", z.out.p, z.out.n, SDUNET_E_FORMAT, "overlaps");
    bb_free(&z.out);

    /* an entry that overlaps the central directory */
    zw z2 = {0};
    zw_add(&z2, "arc/data.pkl", pickle.p, pickle.n, 0);
    zw_add(&z2, "arc/data/0", k_vals, sizeof k_vals, 0);
    /* the first central record's size grows into the directory: patch both */
    zw_finish(&z2, 0);
    unsigned char *c = central_of(z2.out.p, z2.out.n, "arc/data/0");
    CHECK(c != NULL, "central record");
    if (c) {
        uint32_t lho = get32(c + 42);
        unsigned char *l = z2.out.p + lho;
        uint32_t sz = (uint32_t)(c - l) - 30 - 10 + 8;
        put32(c + 20, sz);
        put32(c + 24, sz);
        put32(l + 18, sz);
        put32(l + 22, sz);
        expect_fail("overlaps directory", z2.out.p, z2.out.n, SDUNET_E_FORMAT, NULL);
    }
    bb_free(&z2.out);

    /* duplicate names */
    zw z3 = {0};
    zw_add(&z3, "arc/data.pkl", pickle.p, pickle.n, 0);
    zw_add(&z3, "arc/data/0", k_vals, sizeof k_vals, 0);
    zw_add(&z3, "arc/data/0", k_vals, sizeof k_vals, 0);
    zw_finish(&z3, 0);
    expect_fail("duplicate entry", z3.out.p, z3.out.n, SDUNET_E_FORMAT, "duplicate zip entry");
    bb_free(&z3.out);

    /* a ".." path, and no data.pkl at all */
    zw z4 = {0};
    zw_add(&z4, "arc/../data.pkl", pickle.p, pickle.n, 0);
    zw_finish(&z4, 0);
    expect_fail("dotdot", z4.out.p, z4.out.n, SDUNET_E_FORMAT, "bad name");
    bb_free(&z4.out);
    zw z5 = {0};
    zw_add(&z5, "arc/other.pkl", pickle.p, pickle.n, 0);
    zw_finish(&z5, 0);
    expect_fail("no data.pkl", z5.out.p, z5.out.n, SDUNET_E_FORMAT, "data.pkl");
    bb_free(&z5.out);
    bb_free(&inner);
    bb_free(&pickle);
}

static void test_hostile_pickle(void)
{
    byte_buf good = simple_pickle();
    {
        byte_buf z = ckpt_from_pickle(&good);
        sd_tensorfile *tf;
        sdunet_error err;
        CHECK(parse(z.p, z.n, &tf, &err) == SDUNET_OK, "baseline: %s", err.message);
        CHECK(tf->count == 1 && floats_are(sd_tensorfile_find(tf, "w"), k_vals, 8), "baseline");
        sd_tensorfile_close(tf);
        bb_free(&z);
    }
    /* every strict prefix of the pickle fails cleanly */
    for (size_t cut = 0; cut < good.n; cut++) {
        byte_buf t = {0};
        bb_put(&t, good.p, cut);
        byte_buf z = ckpt_from_pickle(&t);
        sd_tensorfile *tf;
        sdunet_error err;
        sdunet_status st = parse(z.p, z.n, &tf, &err);
        CHECK(st != SDUNET_OK && tf->count == 0, "prefix %zu accepted", cut);
        sd_tensorfile_close(tf);
        bb_free(&z);
        bb_free(&t);
    }
    /* single-byte mutations: any verdict, but no crash or leak (ASan) */
    static const unsigned char vals[] = {0x00, 0x01, 0x7F, 0x80, 0xFF, '(', 't', 'h',
                                         'q',  'R',  '.',  'Q',  'u',  'e', 0x8a};
    size_t accepted = 0;
    for (size_t pos = 0; pos < good.n; pos++)
        for (size_t v = 0; v < sizeof vals; v++) {
            byte_buf t = {0};
            bb_put(&t, good.p, good.n);
            t.p[pos] = vals[v];
            byte_buf z = ckpt_from_pickle(&t);
            sd_tensorfile *tf;
            sdunet_error err;
            if (parse(z.p, z.n, &tf, &err) == SDUNET_OK)
                accepted++;
            else
                CHECK(err.message[0] != 0, "mutation at %zu: empty message", pos);
            sd_tensorfile_close(tf);
            bb_free(&z);
            bb_free(&t);
        }
    CHECK(accepted < good.n * sizeof vals / 2, "%zu mutations accepted", accepted);

    byte_buf p;
    /* unknown opcodes */
    p = pk_start(2);
    pk_op(&p, 'i'); /* INST */
    pk_op(&p, '.');
    expect_pickle_fail("INST", &p, SDUNET_E_UNSUPPORTED, "opcode 0x69 ('i')");
    bb_free(&p);
    p = pk_start(2);
    pk_op(&p, 0xF0);
    expect_pickle_fail("0xF0", &p, SDUNET_E_UNSUPPORTED, "opcode 0xf0");
    bb_free(&p);
    p = pk_start(2);
    pk_op(&p, 'R' + 1); /* 'S': STRING, text protocol */
    expect_pickle_fail("STRING", &p, SDUNET_E_UNSUPPORTED, "opcode");
    bb_free(&p);
    p = pk_start(9);
    expect_pickle_fail("protocol 9", &p, SDUNET_E_UNSUPPORTED, "protocol 9");
    bb_free(&p);

    /* disallowed globals, by GLOBAL and by STACK_GLOBAL */
    p = pk_start(2);
    pk_global(&p, "os", "system");
    pk_str(&p, "echo pwned");
    pk_op(&p, 0x85);
    pk_op(&p, 'R');
    pk_op(&p, '.');
    expect_pickle_fail("os.system", &p, SDUNET_E_UNSUPPORTED, "'os.system' is not allowed");
    bb_free(&p);
    p = pk_start(2);
    pk_str(&p, "builtins");
    pk_str(&p, "eval");
    pk_op(&p, 0x93);
    expect_pickle_fail("builtins.eval", &p, SDUNET_E_UNSUPPORTED, "'builtins.eval'");
    bb_free(&p);
    p = pk_start(2);
    pk_global(&p, "torch", "FloatStorage"); /* allowed, but not callable */
    pk_op(&p, ')');
    pk_op(&p, 'R');
    expect_pickle_fail("call storage", &p, SDUNET_E_UNSUPPORTED, "calling torch.FloatStorage");
    bb_free(&p);
    p = pk_start(2);
    pk_op(&p, 'c');
    for (int k = 0; k < 300; k++)
        pk_op(&p, 'a');
    expect_pickle_fail("endless global name", &p, SDUNET_E_FORMAT, "not terminated");
    bb_free(&p);

    /* deep nesting: a million MARKs; a million lists */
    p = pk_start(2);
    for (int k = 0; k < 1000000; k++)
        pk_op(&p, '(');
    expect_pickle_fail("1e6 MARKs", &p, SDUNET_E_FORMAT, "MARKs");
    bb_free(&p);
    p = pk_start(2);
    for (int k = 0; k < 1000000; k++)
        pk_op(&p, ']');
    for (int k = 0; k < 999999; k++)
        pk_op(&p, 'a');
    pk_op(&p, '.');
    expect_pickle_fail("1e6 nested lists", &p, SDUNET_E_FORMAT, "stack deeper");
    bb_free(&p);
    /* 60000 nested lists fit the stack; nothing walks them recursively */
    p = pk_start(2);
    for (int k = 0; k < 60000; k++)
        pk_op(&p, ']');
    for (int k = 0; k < 59999; k++)
        pk_op(&p, 'a');
    pk_op(&p, '.');
    expect_pickle_fail("60000 nested lists", &p, SDUNET_E_FORMAT, "not a state dict");
    bb_free(&p);
    /* a dict that contains itself, also as its own "state_dict" */
    p = pk_start(2);
    pk_op(&p, '}');
    pk_put(&p, 0);
    pk_str(&p, "state_dict");
    pk_get(&p, 0);
    pk_op(&p, 's');
    pk_op(&p, '.');
    expect_pickle_fail("self-containing dict", &p, SDUNET_E_FORMAT, "no tensors");
    bb_free(&p);

    /* memo */
    p = pk_start(2);
    pk_get(&p, 5);
    pk_op(&p, '.');
    expect_pickle_fail("BINGET unset", &p, SDUNET_E_FORMAT, "memo slot 5 read before");
    bb_free(&p);
    p = pk_start(2);
    pk_op(&p, '}');
    pk_put(&p, 1);
    pk_get(&p, 0);
    expect_pickle_fail("BINGET hole", &p, SDUNET_E_FORMAT, "memo slot 0");
    bb_free(&p);
    p = pk_start(2);
    pk_op(&p, 'j');
    bb_u32(&p, 0xFFFFFFFFu);
    expect_pickle_fail("LONG_BINGET unset", &p, SDUNET_E_FORMAT, "memo slot 4294967295");
    bb_free(&p);
    p = pk_start(2);
    pk_op(&p, '}');
    pk_op(&p, 'r');
    bb_u32(&p, 0xFFFFFFF0u);
    expect_pickle_fail("LONG_BINPUT huge", &p, SDUNET_E_FORMAT, "out of range");
    bb_free(&p);

    /* stack discipline */
    p = pk_start(2);
    pk_op(&p, '.');
    expect_pickle_fail("STOP on empty stack", &p, SDUNET_E_FORMAT, "underflow");
    bb_free(&p);
    p = pk_start(2);
    pk_op(&p, '}');
    pk_op(&p, '(');
    pk_op(&p, 's');
    expect_pickle_fail("SETITEM across a MARK", &p, SDUNET_E_FORMAT, "underflow");
    bb_free(&p);
    p = pk_start(2);
    pk_op(&p, '}');
    pk_op(&p, '(');
    pk_str(&p, "k");
    pk_op(&p, 'u');
    expect_pickle_fail("odd SETITEMS", &p, SDUNET_E_FORMAT, "odd");
    bb_free(&p);
    p = pk_start(2);
    pk_op(&p, ')');
    pk_op(&p, 'N');
    pk_op(&p, 'a');
    expect_pickle_fail("APPEND to tuple", &p, SDUNET_E_FORMAT, "not a list");
    bb_free(&p);
    p = pk_start(2);
    pk_op(&p, 't');
    expect_pickle_fail("TUPLE without MARK", &p, SDUNET_E_FORMAT, "no MARK");
    bb_free(&p);
    p = pk_start(2);
    pk_op(&p, 'X');
    bb_u32(&p, 0xFFFFFFF0u);
    expect_pickle_fail("string past the end", &p, SDUNET_E_FORMAT, "truncated");
    bb_free(&p);
    p = pk_start(2);
    pk_op(&p, ']');
    pk_op(&p, '.');
    expect_pickle_fail("list result", &p, SDUNET_E_FORMAT, "not a state dict");
    bb_free(&p);
    p = pk_start(2);
    pk_op(&p, '}');
    pk_op(&p, '.');
    expect_pickle_fail("empty dict", &p, SDUNET_E_FORMAT, "no tensors");
    bb_free(&p);
    bb_free(&good);
}

/* Tensor descriptions that lie about their storage. */
static void one_tensor_case(const char *label, const char *stype, const char *key, int64_t numel,
                            int64_t offset, int ndim, const int64_t *shape, const int64_t *stride,
                            sdunet_status code, const char *what)
{
    byte_buf p = pk_start(2);
    pk_op(&p, '}');
    pk_str(&p, "w");
    pk_tensor(&p, stype, key, numel, offset, ndim, shape, stride);
    pk_op(&p, 's');
    pk_op(&p, '.');
    expect_pickle_fail(label, &p, code, what);
    bb_free(&p);
}

static void test_hostile_tensors(void)
{
    const int64_t huge[2] = {INT64_C(1) << 62, INT64_C(1) << 62}, one[2] = {1, 1};
    one_tensor_case("shape overflow", "FloatStorage", "0", 8, 0, 2, huge, one, SDUNET_E_FORMAT,
                    "shape overflows");
    const int64_t big[1] = {INT64_C(1) << 62}, unit[1] = {1};
    one_tensor_case("byte size overflow", "FloatStorage", "0", 8, 0, 1, big, unit, SDUNET_E_FORMAT,
                    "shape overflows");
    const int64_t s2[1] = {2}, s4[1] = {4}, neg[1] = {-1}, bigstride[1] = {INT64_MAX};
    one_tensor_case("offset past storage", "FloatStorage", "0", 8, 7, 1, s2, unit, SDUNET_E_FORMAT,
                    "exceeds its storage");
    one_tensor_case("offset far past storage", "FloatStorage", "0", 8, 1000, 1, s2, unit,
                    SDUNET_E_FORMAT, "exceeds its storage");
    one_tensor_case("stride past storage", "FloatStorage", "0", 8, 0, 1, s4, s4, SDUNET_E_FORMAT,
                    "exceeds its storage");
    one_tensor_case("stride overflow", "FloatStorage", "0", 8, 0, 1, s4, bigstride, SDUNET_E_FORMAT,
                    "overflows");
    one_tensor_case("negative size", "FloatStorage", "0", 8, 0, 1, neg, unit, SDUNET_E_FORMAT,
                    "non-negative");
    one_tensor_case("negative stride", "FloatStorage", "0", 8, 0, 1, s2, neg, SDUNET_E_FORMAT,
                    "non-negative");
    one_tensor_case("negative offset", "FloatStorage", "0", 8, -1, 1, s2, unit, SDUNET_E_FORMAT,
                    "offset");
    one_tensor_case("missing entry", "FloatStorage", "99", 8, 0, 1, s2, unit, SDUNET_E_FORMAT,
                    "'arc/data/99' has no data entry");
    one_tensor_case("storage larger than entry", "FloatStorage", "0", 9, 0, 1, s2, unit,
                    SDUNET_E_FORMAT, "holds 32 bytes");
    one_tensor_case("double storage larger than entry", "DoubleStorage", "0", 5, 0, 1, s2, unit,
                    SDUNET_E_FORMAT, "holds 32 bytes");
    one_tensor_case("key with slash", "FloatStorage", "../0", 8, 0, 1, s2, unit, SDUNET_E_FORMAT,
                    "plain name");
    one_tensor_case("bad storage type", "UntypedStorage", "0", 8, 0, 1, s2, unit,
                    SDUNET_E_UNSUPPORTED, "torch.UntypedStorage");
    const int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 8}, st9[9] = {8, 8, 8, 8, 8, 8, 8, 8, 1};
    one_tensor_case("9 dims", "FloatStorage", "0", 8, 0, 9, nine, st9, SDUNET_E_UNSUPPORTED,
                    "9 dimensions");
    /* a broadcast view that would expand far past the file size */
    const int64_t wide[2] = {INT64_C(1) << 40, 2}, bstride[2] = {0, 1};
    one_tensor_case("broadcast bomb", "FloatStorage", "0", 8, 0, 2, wide, bstride, SDUNET_E_FORMAT,
                    "past the file size");

    /* a persistent id that is not a storage reference */
    byte_buf p = pk_start(2);
    pk_op(&p, '(');
    pk_str(&p, "module");
    pk_op(&p, 't');
    pk_op(&p, 'Q');
    expect_pickle_fail("bad persistent id", &p, SDUNET_E_FORMAT, "persistent id");
    bb_free(&p);
    /* duplicate tensor names */
    p = pk_start(2);
    pk_op(&p, '}');
    pk_op(&p, '(');
    const int64_t sh[1] = {8}, st[1] = {1};
    for (int k = 0; k < 2; k++) {
        pk_str(&p, "w");
        pk_tensor(&p, "FloatStorage", "0", 8, 0, 1, sh, st);
    }
    pk_op(&p, 'u');
    pk_op(&p, '.');
    expect_pickle_fail("duplicate tensor", &p, SDUNET_E_FORMAT, "duplicate tensor name 'w'");
    bb_free(&p);
    /* a CRC mismatch in a storage that a tensor uses */
    p = simple_pickle();
    ckpt_entry d = {"0", k_vals, sizeof k_vals};
    byte_buf z = make_ckpt(&p, &d, 1, 0, 0);
    unsigned char *hit = NULL;
    for (size_t k = 0; k + sizeof k_vals <= z.n; k++)
        if (memcmp(z.p + k, k_vals, sizeof k_vals) == 0)
            hit = z.p + k;
    CHECK(hit != NULL, "storage bytes not found");
    if (hit)
        hit[3] ^= 0x40;
    expect_fail("storage CRC", z.p, z.n, SDUNET_E_FORMAT, "CRC-32 mismatch in entry 'arc/data/0'");
    bb_free(&z);
    bb_free(&p);
}

static void test_probe(void)
{
    CHECK(sd_ckpt_probe("PK\x03\x04rest", 8) == 1, "zip");
    CHECK(sd_ckpt_probe("PK\x03", 3) == 0, "short");
    CHECK(sd_ckpt_probe("\x08\x00\x00\x00\x00\x00\x00\x00{}", 10) == 0, "safetensors");
    CHECK(sd_ckpt_probe(NULL, 10) == 0, "NULL");
    sdunet_error err;
    CHECK(sd_ckpt_parse(NULL, 0, NULL, &err) == SDUNET_E_INVALID_ARG, "NULL parse");
}

int main(void)
{
    RUN(test_probe);
    RUN(test_micro_matches_safetensors);
    RUN(test_micro_lookup_through_keymap);
    RUN(test_keymap_oracle);
    RUN(test_keymap_not_unet);
    RUN(test_keymap_unmappable);
    RUN(test_keymap_other_topologies);
    RUN(test_detect_layout);
    RUN(test_custom_views);
    RUN(test_custom_protocol4);
    RUN(test_lightning_layout);
    RUN(test_hostile_zip_micro);
    RUN(test_hostile_overlap);
    RUN(test_hostile_pickle);
    RUN(test_hostile_tensors);
    return t_summary();
}
