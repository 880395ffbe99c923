/* Fuzz entry points (see targets.h). Each one is the reader's whole public
 * path on untrusted bytes plus a check of what the reader promises about
 * an input it accepts: names sorted and unique, every tensor's bytes inside
 * the input (or inside a buffer the table owns), sizes that agree with the
 * shapes, one-line error messages. Reading the accepted tensors is on
 * purpose: an out-of-bounds view only shows up under ASan when it is read. */
#include "targets.h"

#include "clip/tokenizer.h"
#include "io/ckpt.h"
#include "io/deflate.h"
#include "io/json.h"
#include "io/keymap.h"
#include "io/npy.h"
#include "io/png.h"
#include "io/tensorfile.h"
#include "unet/config.h"
#include "sdunet.h"
#include "sdunet_vae.h"
#include "vae/vae.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Sinks the compiler cannot drop, so every byte is really loaded. */
static volatile uint32_t g_sink;
static volatile float g_fsink;

/* An error from a reader must carry its code and a one-line message.
 * SDUNET_FUZZ_VERBOSE=1 prints each result, for triaging an input. */
static int check_error(sdunet_status st, const sdunet_error *err)
{
    static int verbose = -1;
    if (verbose < 0) {
        const char *v = getenv("SDUNET_FUZZ_VERBOSE");
        verbose = v && *v && strcmp(v, "0") != 0;
    }
    if (verbose)
        fprintf(stderr, "fuzz: %s%s%.512s\n", sdunet_status_string(st), st ? ": " : "",
                st ? err->message : "");
    if (st == SDUNET_OK)
        return 0;
    if (err->code != st)
        return -1;
    size_t n = strnlen(err->message, sizeof err->message);
    if (n == 0 || n == sizeof err->message || memchr(err->message, '\n', n))
        return -1;
    return 0;
}

/* ------------------------------------------------------------ config */

const char sd_fuzz_micro_config[] =
    "{\"_class_name\": \"UNet2DConditionModel\", \"_diffusers_version\": \"0.25.1\","
    " \"act_fn\": \"silu\", \"addition_embed_type\": null, \"addition_embed_type_num_heads\": 64,"
    " \"addition_time_embed_dim\": null, \"attention_head_dim\": 8,"
    " \"attention_type\": \"default\", \"block_out_channels\": [32, 32, 32, 32],"
    " \"center_input_sample\": false, \"class_embed_type\": null,"
    " \"class_embeddings_concat\": false, \"conv_in_kernel\": 3, \"conv_out_kernel\": 3,"
    " \"cross_attention_dim\": 16, \"cross_attention_norm\": null,"
    " \"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\","
    " \"CrossAttnDownBlock2D\", \"DownBlock2D\"], \"downsample_padding\": 1, \"dropout\": 0.0,"
    " \"dual_cross_attention\": false, \"encoder_hid_dim\": null,"
    " \"encoder_hid_dim_type\": null, \"flip_sin_to_cos\": true, \"freq_shift\": 0,"
    " \"in_channels\": 4, \"layers_per_block\": 2, \"mid_block_only_cross_attention\": null,"
    " \"mid_block_scale_factor\": 1, \"mid_block_type\": \"UNetMidBlock2DCrossAttn\","
    " \"norm_eps\": 1e-05, \"norm_num_groups\": 32, \"num_attention_heads\": null,"
    " \"num_class_embeds\": null, \"only_cross_attention\": false, \"out_channels\": 4,"
    " \"projection_class_embeddings_input_dim\": null, \"resnet_out_scale_factor\": 1.0,"
    " \"resnet_skip_time_act\": false, \"resnet_time_scale_shift\": \"default\","
    " \"reverse_transformer_layers_per_block\": null, \"sample_size\": 64,"
    " \"time_cond_proj_dim\": null, \"time_embedding_act_fn\": null,"
    " \"time_embedding_dim\": null, \"time_embedding_type\": \"positional\","
    " \"timestep_post_act\": null, \"transformer_layers_per_block\": 1,"
    " \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\","
    " \"CrossAttnUpBlock2D\"], \"upcast_attention\": false, \"use_linear_projection\": false}";

/* Parsed once; the keymap checks need a configuration to map names with. */
static const sd_unet_config *micro_config(void)
{
    static sd_unet_config cfg;
    static int state; /* 0 not tried, 1 ok, -1 failed */
    if (state == 0) {
        sdunet_error err;
        state = sd_config_parse(sd_fuzz_micro_config, strlen(sd_fuzz_micro_config), &cfg, &err) ==
                        SDUNET_OK
                    ? 1
                    : -1;
    }
    return state == 1 ? &cfg : NULL;
}

/* ------------------------------------------------------- tensor tables */

static int inside(const void *p, size_t n, const uint8_t *base, size_t size)
{
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)base;
    return a >= b && a - b <= size && n <= size - (a - b);
}

/* Checks a parsed table against its input and reads every tensor byte,
 * through the float conversion when the dtype has one. */
static int check_table(const sd_tensorfile *tf, const uint8_t *data, size_t size)
{
    const sd_unet_config *cfg = micro_config();
    for (size_t i = 0; i < tf->count; i++) {
        const sd_tensor_info *t = &tf->tensors[i];
        if (!t->name || (i > 0 && strcmp(tf->tensors[i - 1].name, t->name) >= 0))
            return -1;
        if ((unsigned)t->dtype >= SD_DT_COUNT || t->ndim < 0 || t->ndim > SD_MAX_DIMS)
            return -1;
        size_t numel = 1, nbytes;
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0 || !sd_mul_size(numel, (size_t)t->shape[d], &numel))
                return -1;
        }
        if (numel != t->numel || !sd_mul_size(numel, sd_dtype_size(t->dtype), &nbytes) ||
            nbytes != t->nbytes)
            return -1;
        if (sd_tensorfile_find(tf, t->name) != t)
            return -1;
        if (numel == 0)
            continue;
        int owned = 0;
        for (size_t k = 0; k < tf->n_owned; k++)
            owned |= tf->owned[k] == t->data;
        if (!t->data || (!owned && !inside(t->data, nbytes, data, size)))
            return -1;
        /* The view is contiguous, so its two ends decide whether it stays
         * inside its buffer; small tensors are also converted whole. */
        const uint8_t *p = t->data;
        g_sink = p[0] + p[nbytes - 1];
        if (nbytes <= 65536 && (t->dtype == SD_DT_F32 || t->dtype == SD_DT_F16 ||
                                t->dtype == SD_DT_BF16 || t->dtype == SD_DT_F64)) {
            float *f = malloc(numel * sizeof *f);
            sdunet_error err;
            if (f && sd_tensor_to_f32(t, f, &err) == SDUNET_OK)
                g_fsink = f[numel - 1];
            free(f);
        }
        /* Name mapping both ways must round-trip for any name it accepts. */
        char a[1024], b[1024];
        if (cfg && sd_ldm_to_diffusers(cfg, t->name, a, sizeof a) == 1) {
            if (sd_diffusers_to_ldm(cfg, a, b, sizeof b) != 1 || strcmp(b, t->name) != 0)
                return -1;
        }
        if (cfg && sd_diffusers_to_ldm(cfg, t->name, a, sizeof a) == 1) {
            if (sd_ldm_to_diffusers(cfg, a, b, sizeof b) != 1 || strcmp(b, t->name) != 0)
                return -1;
        }
    }
    if (cfg) {
        sd_layout lay = sd_detect_layout(tf);
        static const char *const probe[] = {
            "conv_in.weight", "conv_out.bias", "down_blocks.0.attentions.0.proj_in.weight",
            "mid_block.resnets.1.norm2.weight", "up_blocks.3.attentions.2.norm.bias"};
        for (size_t k = 0; k < sizeof probe / sizeof probe[0]; k++)
            g_sink = sd_find_unet_tensor(tf, cfg, lay, probe[k]) != NULL;
    }
    return 0;
}

typedef sdunet_status (*table_parser)(const void *, size_t, sd_tensorfile *, sdunet_error *);

static int run_table(table_parser parse, const uint8_t *data, size_t size)
{
    sd_tensorfile *tf = sd_calloc(1, sizeof *tf);
    if (!tf)
        return 0;
    sdunet_error err;
    memset(&err, 0, sizeof err);
    /* A zero-length input still needs a valid pointer for the readers. */
    static const uint8_t empty[1];
    sdunet_status st = parse(size ? (const void *)data : empty, size, tf, &err);
    int rc = check_error(st, &err);
    if (st == SDUNET_OK && rc == 0)
        rc = check_table(tf, size ? data : empty, size);
    /* tf->map is NULL: closing frees the table and leaves the input alone. */
    sd_tensorfile_close(tf);
    return rc;
}

int sd_fuzz_safetensors(const uint8_t *data, size_t size)
{
    return run_table(sd_safetensors_parse, data, size);
}

int sd_fuzz_ckpt(const uint8_t *data, size_t size)
{
    return run_table(sd_ckpt_parse, data, size);
}

/* ---------------------------------------------------------------- JSON */

static int walk_json(const sd_json *j, int depth)
{
    if (depth > SD_JSON_MAX_DEPTH)
        return -1;
    switch (j->type) {
    case SD_JSON_NULL:
    case SD_JSON_BOOL:
    case SD_JSON_NUMBER: return 0;
    case SD_JSON_STRING: return j->string && strlen(j->string) == j->len ? 0 : -1;
    case SD_JSON_ARRAY:
    case SD_JSON_OBJECT:
        if (j->len && !j->items)
            return -1;
        for (size_t i = 0; i < j->len; i++) {
            if (j->type == SD_JSON_OBJECT) {
                if (!j->keys || !j->keys[i] || sd_json_get(j, j->keys[i]) != &j->items[i])
                    return -1;
            }
            if (walk_json(&j->items[i], depth + 1))
                return -1;
        }
        return 0;
    }
    return -1;
}

int sd_fuzz_json(const uint8_t *data, size_t size)
{
    const char *text = size ? (const char *)data : "";
    sd_json *j = NULL;
    sdunet_error err;
    memset(&err, 0, sizeof err);
    sdunet_status st = sd_json_parse(text, size, &j, &err);
    int rc = check_error(st, &err);
    if (st == SDUNET_OK && (!j || walk_json(j, 0)))
        rc = -1;
    sd_json_free(j);

    /* The same bytes as a config.json. */
    sd_unet_config cfg;
    memset(&err, 0, sizeof err);
    st = sd_config_parse(text, size, &cfg, &err);
    if (check_error(st, &err))
        rc = -1;
    if (st == SDUNET_OK) {
        if (cfg.n_blocks < 1 || cfg.n_blocks > SD_MAX_BLOCKS || cfg.in_channels < 1 ||
            cfg.out_channels < 1 || cfg.norm_num_groups < 1 || cfg.layers_per_block < 1 ||
            cfg.cross_attention_dim < 1)
            rc = -1;
        for (int b = 0; b < cfg.n_blocks && b < SD_MAX_BLOCKS; b++)
            if (cfg.block_out_channels[b] < 1 || cfg.block_out_channels[b] % cfg.norm_num_groups)
                rc = -1;
    }

    /* Python's literals mapped to null: the copy parses whenever the
     * original did (it differs only outside strings, by those literals). */
    size_t plen = 0;
    char *py = sd_json_from_python(text, size, &plen);
    if (py) {
        sd_json *jp = NULL;
        memset(&err, 0, sizeof err);
        sdunet_status st2 = sd_json_parse(py, plen, &jp, &err);
        if (check_error(st2, &err) || (st2 == SDUNET_OK && (!jp || walk_json(jp, 0))))
            rc = -1;
        sd_json *j0 = NULL;
        if (sd_json_parse(text, size, &j0, NULL) == SDUNET_OK && st2 != SDUNET_OK)
            rc = -1;
        sd_json_free(j0);
        sd_json_free(jp);
        free(py);
    }
    return rc;
}

/* ----------------------------------------------------------------- npy */

int sd_fuzz_npy(const uint8_t *data, size_t size)
{
    float *x = NULL;
    int ndim = -1;
    int64_t shape[SD_MAX_DIMS];
    sdunet_error err;
    memset(&err, 0, sizeof err);
    static const uint8_t empty[1];
    sdunet_status st = sd_npy_parse_f32(size ? data : empty, size, &x, &ndim, shape, &err);
    int rc = check_error(st, &err);
    if (st == SDUNET_OK) {
        size_t numel = 1;
        if (ndim < 0 || ndim > SD_MAX_DIMS || !x)
            rc = -1;
        for (int d = 0; rc == 0 && d < ndim; d++)
            if (shape[d] < 0 || !sd_mul_size(numel, (size_t)shape[d], &numel))
                rc = -1;
        /* Each element came from at least two input bytes. */
        if (rc == 0 && numel > size / 2)
            rc = -1;
        float acc = 0;
        for (size_t i = 0; rc == 0 && i < numel; i++)
            acc += x[i];
        g_fsink = acc;
    } else if (x) {
        rc = -1; /* nothing may be handed out on failure */
    }
    sd_free(x);
    return rc;
}

/* ----------------------------------------------------------------- png */

/* Decodes; on success checks the image fields, that the image is within
 * what the input can describe (a pixel takes at least one bit of data that
 * deflate expands at most 1032 times), and that re-encoding and decoding
 * gives back the same pixels and the texts the encoder accepts. */
static int fuzz_png_one(const uint8_t *data, size_t size)
{
    sd_image img;
    sdunet_error err;
    memset(&err, 0, sizeof err);
    static const uint8_t empty[1];
    sdunet_status st = sd_png_decode(size ? data : empty, size, &img, &err);
    int rc = check_error(st, &err);
    if (st != SDUNET_OK) {
        if (img.data || img.texts || img.text_store || img.n_texts)
            rc = -1; /* nothing may be handed out on failure */
        sd_image_free(&img);
        return rc;
    }
    size_t npix = 0;
    if (img.width < 1 || img.height < 1 || img.width > SD_PNG_MAX_DIM ||
        img.height > SD_PNG_MAX_DIM || img.channels != 3 || !img.data ||
        (img.has_alpha != 0 && img.has_alpha != 1) || img.n_texts < 0 ||
        (img.n_texts > 0 && !img.texts))
        rc = -1;
    if (rc == 0) {
        npix = (size_t)img.width * (size_t)img.height;
        if (npix > SD_PNG_MAX_PIXELS || npix / 8 > (size + 16) * 1032)
            rc = -1;
    }
    size_t text_bytes = 0;
    for (int i = 0; rc == 0 && i < img.n_texts; i++) {
        const char *k = img.texts[i].key, *v = img.texts[i].value;
        if (!k || !v || strlen(k) < 1 || strlen(k) > 2 * 79)
            rc = -1;
        else
            text_bytes += strlen(k) + strlen(v);
    }
    if (text_bytes > SD_PNG_MAX_TEXT_TOTAL)
        rc = -1;
    unsigned acc = 0;
    for (size_t i = 0; rc == 0 && i < npix * 3; i++)
        acc += img.data[i];
    g_fsink = (float)acc;
    /* Re-encode (small images only, to keep executions fast): with the
     * texts if the writer takes them, else without. */
    if (rc == 0 && npix <= ((size_t)1 << 18)) {
        uint8_t *png = NULL;
        size_t n = 0;
        int with_text = 1;
        st = sd_png_encode(img.data, img.width, img.height, img.texts, img.n_texts, &png, &n, &err);
        if (st == SDUNET_E_INVALID_ARG) {
            with_text = 0;
            st = sd_png_encode(img.data, img.width, img.height, NULL, 0, &png, &n, &err);
        }
        sd_image back;
        if (st != SDUNET_OK || sd_png_decode(png, n, &back, &err) != SDUNET_OK) {
            rc = -1;
        } else {
            if (back.width != img.width || back.height != img.height || back.has_alpha ||
                memcmp(back.data, img.data, npix * 3) != 0)
                rc = -1;
            if (back.n_texts != (with_text ? img.n_texts : 0))
                rc = -1;
            for (int i = 0; rc == 0 && i < back.n_texts; i++)
                if (strcmp(back.texts[i].key, img.texts[i].key) ||
                    strcmp(back.texts[i].value, img.texts[i].value))
                    rc = -1;
            sd_image_free(&back);
        }
        free(png);
    }
    sd_image_free(&img);
    return rc;
}

/* Runs the input as it is, then (when it differs) a copy with every
 * chunk's CRC recomputed: a mutation almost always breaks a CRC, and
 * without the repair the fuzzer would rarely get past the checksums. */
int sd_fuzz_png(const uint8_t *data, size_t size)
{
    int rc = fuzz_png_one(data, size);
    if (rc != 0 || size < 8)
        return rc;
    uint8_t *copy = malloc(size);
    if (!copy)
        return rc;
    memcpy(copy, data, size);
    int changed = 0;
    for (size_t pos = 8; size - pos >= 12;) {
        uint32_t len = (uint32_t)copy[pos] << 24 | (uint32_t)copy[pos + 1] << 16 |
                       (uint32_t)copy[pos + 2] << 8 | copy[pos + 3];
        if (len > size - pos - 12)
            break;
        uint32_t c = sd_crc32(0, copy + pos + 4, (size_t)len + 4);
        uint8_t *p = copy + pos + 8 + len;
        uint8_t want[4] = {(uint8_t)(c >> 24), (uint8_t)(c >> 16), (uint8_t)(c >> 8), (uint8_t)c};
        if (memcmp(p, want, 4) != 0) {
            memcpy(p, want, 4);
            changed = 1;
        }
        pos += 12 + (size_t)len;
    }
    if (changed)
        rc = fuzz_png_one(copy, size);
    free(copy);
    return rc;
}

/* ------------------------------------------------------ pickle in a zip */

static uint32_t crc32_bytes(const uint8_t *p, size_t n)
{
    static uint32_t table[256];
    if (!table[1]) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
            table[i] = c;
        }
    }
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++)
        c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static void put16(uint8_t *p, unsigned v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, v & 0xFFFF);
    put16(p + 2, v >> 16);
}

typedef struct zip_entry {
    char name[64];
    const uint8_t *data;
    size_t size;
} zip_entry;

/* A stored zip of the entries, each entry's data 64-byte aligned in the
 * archive through a padding extra field, as torch.save writes it. */
static uint8_t *build_zip(const zip_entry *e, size_t n, size_t *out_size)
{
    size_t total = 22;
    for (size_t i = 0; i < n; i++) {
        size_t nl = strlen(e[i].name);
        if (e[i].size > 0xFFFFFFF0u)
            return NULL;
        total += 30 + nl + 4 + 64 + e[i].size + 46 + nl;
    }
    uint8_t *z = calloc(1, total);
    uint32_t *offs = calloc(n ? n : 1, sizeof *offs);
    if (!z || !offs) {
        free(z);
        free(offs);
        return NULL;
    }
    size_t p = 0;
    for (size_t i = 0; i < n; i++) {
        size_t nl = strlen(e[i].name);
        size_t data_at = p + 30 + nl + 4;
        size_t pad = (64 - data_at % 64) % 64;
        offs[i] = (uint32_t)p;
        uint32_t crc = crc32_bytes(e[i].data, e[i].size);
        put32(z + p, 0x04034b50u);
        put16(z + p + 4, 20);
        put32(z + p + 14, crc);
        put32(z + p + 18, (uint32_t)e[i].size);
        put32(z + p + 22, (uint32_t)e[i].size);
        put16(z + p + 26, (unsigned)nl);
        put16(z + p + 28, (unsigned)(4 + pad));
        memcpy(z + p + 30, e[i].name, nl);
        put16(z + p + 30 + nl, 0x4246); /* torch's "FB" padding record */
        put16(z + p + 32 + nl, (unsigned)pad);
        p = data_at + pad;
        if (e[i].size)
            memcpy(z + p, e[i].data, e[i].size);
        p += e[i].size;
    }
    size_t cd = p;
    for (size_t i = 0; i < n; i++) {
        size_t nl = strlen(e[i].name);
        put32(z + p, 0x02014b50u);
        put16(z + p + 4, 20);
        put16(z + p + 6, 20);
        put32(z + p + 16, crc32_bytes(e[i].data, e[i].size));
        put32(z + p + 20, (uint32_t)e[i].size);
        put32(z + p + 24, (uint32_t)e[i].size);
        put16(z + p + 28, (unsigned)nl);
        put32(z + p + 42, offs[i]);
        memcpy(z + p + 46, e[i].name, nl);
        p += 46 + nl;
    }
    put32(z + p, 0x06054b50u);
    put16(z + p + 8, (unsigned)n);
    put16(z + p + 10, (unsigned)n);
    put32(z + p + 12, (uint32_t)(p - cd));
    put32(z + p + 16, (uint32_t)cd);
    p += 22;
    free(offs);
    *out_size = p;
    return z;
}

uint8_t *sd_fuzz_wrap_pickle(const uint8_t *pickle, size_t size, size_t *out_size)
{
    static uint8_t storage[SD_FUZZ_STORAGES][SD_FUZZ_STORAGE_BYTES];
    static int filled;
    if (!filled) {
        /* Small float-ish values in every dtype's reading; any bytes do. */
        for (int k = 0; k < SD_FUZZ_STORAGES; k++)
            for (int i = 0; i < SD_FUZZ_STORAGE_BYTES; i++)
                storage[k][i] = (uint8_t)((i % 4 == 3) ? 0x3F : (k * 31 + i * 7));
        filled = 1;
    }
    zip_entry e[SD_FUZZ_STORAGES + 2];
    size_t n = 0;
    for (int k = 0; k < SD_FUZZ_STORAGES; k++, n++) {
        snprintf(e[n].name, sizeof e[n].name, "archive/data/%d", k);
        e[n].data = storage[k];
        e[n].size = SD_FUZZ_STORAGE_BYTES;
    }
    snprintf(e[n].name, sizeof e[n].name, "archive/byteorder");
    e[n].data = (const uint8_t *)"little";
    e[n++].size = 6;
    /* data.pkl last: the constant entries keep their offsets. */
    snprintf(e[n].name, sizeof e[n].name, "archive/data.pkl");
    e[n].data = size ? pickle : (const uint8_t *)"";
    e[n++].size = size;
    return build_zip(e, n, out_size);
}

int sd_fuzz_pickle(const uint8_t *data, size_t size)
{
    size_t zn = 0;
    uint8_t *zip = sd_fuzz_wrap_pickle(data, size, &zn);
    if (!zip)
        return 0;
    int rc = sd_fuzz_ckpt(zip, zn);
    free(zip);
    return rc;
}

/* ------------------------------------------------------------ end to end */

/* Loading goes through a real file (the library maps it), written into a
 * private temporary folder made on first use and removed at exit. */
static char g_dir[256], g_weights[300], g_config[300], g_vae[300];

static void remove_tmp(void)
{
    unlink(g_weights);
    unlink(g_config);
    unlink(g_vae);
    rmdir(g_dir);
}

static int write_file(const char *path, const void *data, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    const uint8_t *p = data;
    while (size) {
        ssize_t w = write(fd, p, size);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        p += w;
        size -= (size_t)w;
    }
    return close(fd);
}

static int tmp_setup(void)
{
    static int state; /* 0 not tried, 1 ready, -1 failed */
    if (state)
        return state;
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/sdunet-fuzz-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_dir))
        return state = -1;
    snprintf(g_weights, sizeof g_weights, "%s/weights", g_dir);
    snprintf(g_config, sizeof g_config, "%s/config.json", g_dir);
    snprintf(g_vae, sizeof g_vae, "%s/vae.safetensors", g_dir);
    if (write_file(g_config, sd_fuzz_micro_config, strlen(sd_fuzz_micro_config))) {
        rmdir(g_dir);
        return state = -1;
    }
    atexit(remove_tmp);
    return state = 1;
}

int sd_fuzz_load(const uint8_t *data, size_t size)
{
    if (tmp_setup() != 1 || write_file(g_weights, data, size))
        return 0; /* the machine's problem, not the input's */
    sdunet_options opt;
    sdunet_options_default(&opt);
    opt.threads = 1;
    sdunet_model *m = NULL;
    sdunet_error err;
    memset(&err, 0, sizeof err);
    sdunet_status st = sdunet_load(g_weights, g_config, &opt, &m, &err);
    int rc = check_error(st, &err);
    if ((st == SDUNET_OK) != (m != NULL))
        rc = -1;
    if (m) {
        sdunet_model_info info;
        sdunet_get_info(m, &info);
        if (info.in_channels != 4 || info.out_channels != 4 || info.context_dim != 16)
            rc = -1;
        /* One small forward: whatever the weights hold (NaN, Inf, huge,
         * subnormal), the kernels must get through it. */
        enum { B = 1, C = 4, H = 8, W = 8, L = 2, D = 16 };
        static float x[B * C * H * W], ctx[B * L * D], out[B * C * H * W];
        for (size_t i = 0; i < sizeof x / sizeof x[0]; i++)
            x[i] = (float)((int)(i % 17) - 8) * 0.125f;
        for (size_t i = 0; i < sizeof ctx / sizeof ctx[0]; i++)
            ctx[i] = (float)((int)(i % 5) - 2) * 0.25f;
        float t = 500;
        memset(&err, 0, sizeof err);
        st = sdunet_forward(m, x, B, C, H, W, &t, 1, ctx, L, D, out, &err);
        if (st != SDUNET_OK)
            rc = -1;
        float acc = 0;
        for (size_t i = 0; i < sizeof out / sizeof out[0]; i++)
            acc += out[i];
        g_fsink = acc;
        sdunet_free(m);
    }
    return rc;
}

/* ------------------------------------------------------------ tokenizer */

/* Runs a prompt through a tokenizer and checks what it promises: valid UTF-8
 * is always accepted, every id has a piece, padding keeps min(n, 75) ids,
 * and decoding the ids succeeds with valid UTF-8. */
static int check_prompt(const sd_tokenizer *t, const uint8_t *data, size_t size)
{
    int32_t *ids = NULL;
    size_t n = 0;
    sdunet_error err;
    memset(&err, 0, sizeof err);
    sdunet_status st = sd_tokenize(t, (const char *)data, size, &ids, &n, &err);
    int rc = check_error(st, &err);
    if (st != SDUNET_OK) {
        /* Only invalid UTF-8 is refused (or a failed allocation). */
        if (st != SDUNET_E_NOMEM &&
            (st != SDUNET_E_INVALID_ARG || !strstr(err.message, "invalid UTF-8 at byte offset")))
            rc = -1;
        return (ids || n) ? -1 : rc;
    }
    if ((n == 0) != (ids == NULL))
        rc = -1;
    uint32_t acc = 0;
    for (size_t i = 0; i < n; i++) {
        if (!sd_tokenizer_piece(t, ids[i]))
            rc = -1;
        acc += (uint32_t)ids[i];
    }
    g_sink = acc;
    int32_t padded[SD_TOKENIZER_MAX_LEN];
    size_t kept = sd_tokenizer_pad_ids(t, ids, n, SD_TOKENIZER_MAX_LEN, padded);
    if (kept != (n < SD_TOKENIZER_MAX_LEN - 2 ? n : SD_TOKENIZER_MAX_LEN - 2) ||
        padded[0] != sd_tokenizer_bos(t) || padded[kept + 1] != sd_tokenizer_eos(t) ||
        padded[SD_TOKENIZER_MAX_LEN - 1] !=
            (kept == SD_TOKENIZER_MAX_LEN - 2 ? sd_tokenizer_eos(t) : sd_tokenizer_pad(t)))
        rc = -1;
    char *text = NULL;
    memset(&err, 0, sizeof err);
    st = sd_tokenizer_decode(t, ids, n, &text, &err);
    if (check_error(st, &err) || (st == SDUNET_OK && !text) ||
        (st != SDUNET_OK && st != SDUNET_E_NOMEM))
        rc = -1;
    if (text) {
        /* The decoded text is valid UTF-8: it tokenizes again. */
        int32_t *again = NULL;
        size_t n2 = 0;
        memset(&err, 0, sizeof err);
        st = sd_tokenize(t, text, strlen(text), &again, &n2, &err);
        if (st != SDUNET_OK && st != SDUNET_E_NOMEM)
            rc = -1;
        free(again);
        free(text);
    }
    free(ids);
    return rc;
}

/* The builtin tokenizers are built once (tens of milliseconds each). */
static sd_tokenizer *g_tok[2];

int sd_fuzz_tokenizer(const uint8_t *data, size_t size)
{
    sdunet_error err;
    for (int k = 0; k < 2; k++) {
        if (g_tok[k])
            continue;
        memset(&err, 0, sizeof err);
        if (sd_tokenizer_builtin(&g_tok[k], &err) != SDUNET_OK ||
            (k == 1 && sd_tokenizer_set_pad(g_tok[k], "!", &err) != SDUNET_OK))
            return -1;
    }
    int rc = 0;
    for (int k = 0; k < 2; k++)
        if (check_prompt(g_tok[k], size ? data : (const uint8_t *)"", size))
            rc = -1;
    return rc;
}

/* vocab.json, a NUL byte, then merges.txt (no NUL: all vocab.json). */
int sd_fuzz_vocab(const uint8_t *data, size_t size)
{
    static const char *const prompts[] = {
        "a photo of a cat",
        "ababa abba <|endoftext|>x<|startoftext|>",
        "Caf\xc3\xa9 \xce\xa3\xce\xa3 \xe6\x9d\xb1\xe4\xba\xac! don't 42\xc2\xbd",
        "!!! <|ENDOFTEXT|> \xc5\xbf'\xc5\xbf",
    };
    const uint8_t *nul = size ? memchr(data, 0, size) : NULL;
    size_t vlen = nul ? (size_t)(nul - data) : size;
    const char *merges = nul ? (const char *)nul + 1 : "";
    size_t mlen = nul ? size - vlen - 1 : 0;
    sd_tokenizer *t = NULL;
    sdunet_error err;
    memset(&err, 0, sizeof err);
    sdunet_status st =
        sd_tokenizer_from_memory(size ? (const char *)data : "", vlen, merges, mlen, &t, &err);
    int rc = check_error(st, &err);
    if (st != SDUNET_OK)
        return t ? -1 : rc;
    if (!t || sd_tokenizer_bos(t) < 0 || sd_tokenizer_eos(t) < 0 ||
        !sd_tokenizer_piece(t, sd_tokenizer_bos(t)) || !sd_tokenizer_piece(t, sd_tokenizer_eos(t)))
        rc = -1;
    for (int pass = 0; t && pass < 2; pass++) {
        for (size_t i = 0; i < sizeof prompts / sizeof prompts[0]; i++)
            if (check_prompt(t, (const uint8_t *)prompts[i], strlen(prompts[i])))
                rc = -1;
        memset(&err, 0, sizeof err);
        st = sd_tokenizer_set_pad(t, "!", &err);
        if (check_error(st, &err) || (st != SDUNET_OK && st != SDUNET_E_INVALID_ARG))
            rc = -1;
    }
    sd_tokenizer_free(t);
    return rc;
}

/* ------------------------------------------------------------ the VAE */

/* A weight file as a VAE: finding it (layout, prefix), inferring the
 * configuration from the shapes, building; then one decode of a 1x1 latent
 * and one encode of the smallest image. Every size follows from tensors the
 * file holds, so memory stays bounded by the input. */
int sd_fuzz_vae(const uint8_t *data, size_t size)
{
    if (tmp_setup() != 1 || write_file(g_vae, data, size))
        return 0;
    sdunet_options opt;
    sdunet_options_default(&opt);
    opt.threads = 1;
    sdunet_vae *v = NULL;
    sdunet_error err;
    memset(&err, 0, sizeof err);
    sdunet_status st = sdunet_vae_load(g_vae, NULL, &opt, &v, &err);
    int rc = check_error(st, &err);
    if ((st == SDUNET_OK) != (v != NULL))
        rc = -1;
    if (!v)
        return rc;
    sdunet_vae_info info;
    sdunet_vae_get_info(v, &info);
    const int f = info.factor;
    size_t n_img = (size_t)info.out_channels * f * f, n_in = (size_t)info.in_channels * f * f;
    float *lat = calloc((size_t)info.latent_channels, sizeof(float));
    float *img = calloc(n_img > n_in ? n_img : n_in, sizeof(float));
    float *mean = calloc((size_t)info.latent_channels, sizeof(float));
    if (f < 1 || f > 128 || info.latent_channels < 1)
        rc = -1;
    else if (lat && img && mean) {
        for (int i = 0; i < info.latent_channels; i++)
            lat[i] = (float)(i % 7 - 3) * 0.25f;
        memset(&err, 0, sizeof err);
        if (sdunet_vae_decode(v, lat, 1, info.latent_channels, 1, 1, img, &err) != SDUNET_OK)
            rc = -1;
        for (size_t i = 0; i < n_in; i++)
            img[i] = (float)((int)(i % 11) - 5) * 0.2f;
        memset(&err, 0, sizeof err);
        if (sdunet_vae_encode(v, img, 1, info.in_channels, f, f, NULL, NULL, mean, NULL, &err) !=
            SDUNET_OK)
            rc = -1;
        float acc = 0;
        for (int i = 0; i < info.latent_channels; i++)
            acc += mean[i];
        g_fsink = acc;
    }
    free(lat);
    free(img);
    free(mean);
    sdunet_vae_free(v);
    return rc;
}

/* An AutoencoderKL config.json: whatever it accepts passes the checks the
 * graph relies on. */
int sd_fuzz_vae_config(const uint8_t *data, size_t size)
{
    sd_vae_config c;
    sdunet_error err;
    memset(&err, 0, sizeof err);
    sdunet_status st = sd_vae_config_parse((const char *)data, size, &c, &err);
    int rc = check_error(st, &err);
    if (st == SDUNET_OK && sd_vae_config_check(&c, &err) != SDUNET_OK)
        rc = -1;
    return rc;
}

const sd_fuzz_harness sd_fuzz_harnesses[] = {
    {"safetensors", sd_fuzz_safetensors},
    {"json", sd_fuzz_json},
    {"npy", sd_fuzz_npy},
    {"png", sd_fuzz_png},
    {"ckpt", sd_fuzz_ckpt},
    {"pickle", sd_fuzz_pickle},
    {"load", sd_fuzz_load},
    {"tokenizer", sd_fuzz_tokenizer},
    {"vocab", sd_fuzz_vocab},
    {"vae", sd_fuzz_vae},
    {"vae_config", sd_fuzz_vae_config},
};
const size_t sd_fuzz_n_harnesses = sizeof sd_fuzz_harnesses / sizeof sd_fuzz_harnesses[0];
