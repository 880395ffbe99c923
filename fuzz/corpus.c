/* Seed corpora for the fuzz harnesses, from the golden test files:
 *
 *     corpus DATA_DIR OUT_DIR     (DATA_DIR is tests/data)
 *
 * writes OUT_DIR/<harness>/<seed> for every harness in targets.h. Besides
 * the golden files as they are, it writes small seeds that reach deep into
 * each reader quickly: slices of the golden safetensors (a few tensors cut
 * down to a few elements: same names, dtypes and header layout), their
 * headers alone as JSON, the pickle extracted from the golden .ckpt, and hand-built
 * pickles that use every opcode and global the reader knows against the
 * storages of the pickle harness's wrapper archive (written with the
 * pickle emitters of tests/ckpt_build.h). Existing seeds are
 * overwritten; nothing else in OUT_DIR is touched. */
#include "check.h"
#include "ckpt_build.h"
#include "targets.h"

#include "io/deflate.h"
#include "io/json.h"
#include "io/png.h"
#include "io/tensorfile.h"
#include "engine/synth.h"
#include "vae/vae.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *g_data, *g_out;
static int g_failed, g_written;

static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "corpus: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    g_failed = 1;
}

static uint8_t *slurp(const char *path, size_t *size)
{
    uint8_t *buf = t_read_file(path, size);
    if (!buf)
        fail("%s: cannot read (%s)", path, strerror(errno));
    return buf;
}

static void seed(const char *harness, const char *name, const void *data, size_t size)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", g_out, harness);
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        fail("%s: %s", path, strerror(errno));
        return;
    }
    snprintf(path, sizeof path, "%s/%s/%s", g_out, harness, name);
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        fail("%s: cannot write", path);
        return;
    }
    g_written++;
}

static void seed_str(const char *harness, const char *name, const char *s)
{
    seed(harness, name, s, strlen(s));
}

/* A golden file copied as a seed under its own name with a case prefix. */
static void seed_file(const char *harness, const char *rel)
{
    char path[1024], name[256];
    snprintf(path, sizeof path, "%s/%s", g_data, rel);
    snprintf(name, sizeof name, "%s", rel);
    for (char *p = name; *p; p++)
        if (*p == '/')
            *p = '-';
    size_t n;
    uint8_t *b = slurp(path, &n);
    if (b)
        seed(harness, name, b, n);
    free(b);
}

/* ---------------------------------------------------------- safetensors */

/* The first SLICE tensors of a golden file (in name order), each
 * dimension cut to at most 2 and the data taken from the start of the
 * original tensor: a valid file with the real names, dtypes, metadata and
 * header layout in a few KB, so each execution is fast. Also its header
 * alone, for the JSON harness. (The load harness gets the golden files
 * whole: only those build a model.) */
#define SLICE 16

static void slice_safetensors(const char *rel)
{
    char path[1024], name[256], tmp[1100];
    snprintf(path, sizeof path, "%s/%s", g_data, rel);
    sd_tensorfile *tf = NULL;
    sdunet_error err;
    if (sd_tensorfile_open(path, &tf, &err) != SDUNET_OK) {
        fail("%s", err.message);
        return;
    }
    size_t n = tf->count < SLICE ? tf->count : SLICE;
    sd_tensor_info t[SLICE];
    for (size_t i = 0; i < n; i++) {
        t[i] = tf->tensors[i];
        t[i].numel = 1;
        for (int d = 0; d < t[i].ndim; d++) {
            if (t[i].shape[d] > 2)
                t[i].shape[d] = 2;
            t[i].numel *= (size_t)t[i].shape[d];
        }
        t[i].nbytes = t[i].numel * sd_dtype_size(t[i].dtype);
    }
    snprintf(tmp, sizeof tmp, "%s/.slice.safetensors", g_out);
    if (sd_safetensors_write(tmp, t, n, tf->metadata, &err) != SDUNET_OK) {
        fail("%s: cannot write the slice: %s", rel, err.message);
        sd_tensorfile_close(tf);
        return;
    }
    sd_tensorfile_close(tf);
    size_t size;
    uint8_t *b = slurp(tmp, &size);
    remove(tmp);
    if (!b)
        return;
    snprintf(name, sizeof name, "slice-%s", strrchr(rel, '/') + 1);
    seed("safetensors", name, b, size);
    uint64_t h = 0;
    for (int i = 7; size >= 8 && i >= 0; i--)
        h = h << 8 | b[i];
    if (size >= 8 && h <= size - 8) {
        snprintf(name, sizeof name, "header-%s.json", strrchr(rel, '/') + 1);
        seed("json", name, b + 8, (size_t)h);
    }
    free(b);
}

static void small_safetensors(void)
{
    static const float f32[4] = {1.0f, -2.5f, 3e-39f, 65504.0f};
    static const uint16_t f16[3] = {0x3C00, 0x8001, 0x7BFF};
    static const uint16_t bf16[1] = {0x3F80};
    static const double f64[2] = {1e300, -0.0};
    sd_tensor_info t[] = {
        {.name = "a.f32",
         .dtype = SD_DT_F32,
         .ndim = 2,
         .shape = {2, 2},
         .numel = 4,
         .data = f32,
         .nbytes = sizeof f32},
        {.name = "b.f16",
         .dtype = SD_DT_F16,
         .ndim = 1,
         .shape = {3},
         .numel = 3,
         .data = f16,
         .nbytes = sizeof f16},
        {.name = "c.bf16.scalar",
         .dtype = SD_DT_BF16,
         .ndim = 0,
         .numel = 1,
         .data = bf16,
         .nbytes = sizeof bf16},
        {.name = "d.empty",
         .dtype = SD_DT_I64,
         .ndim = 2,
         .shape = {0, 5},
         .numel = 0,
         .data = NULL,
         .nbytes = 0},
        {.name = "e.f64",
         .dtype = SD_DT_F64,
         .ndim = 1,
         .shape = {2},
         .numel = 2,
         .data = f64,
         .nbytes = sizeof f64},
    };
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s/.small.safetensors", g_out);
    sdunet_error err;
    if (sd_safetensors_write(tmp, t, sizeof t / sizeof t[0],
                             "{\"format\":\"pt\",\"note\":\"caf\\u00e9 \\ud83d\\ude00\"}",
                             &err) != SDUNET_OK) {
        fail("%s", err.message);
        return;
    }
    size_t n;
    uint8_t *b = slurp(tmp, &n);
    if (b)
        seed("safetensors", "small-dtypes.safetensors", b, n);
    free(b);
    remove(tmp);
}

/* -------------------------------------------------------------- pickles */

static void seed_pickle(const char *name, const byte_buf *p)
{
    char n[256];
    snprintf(n, sizeof n, "%s.pkl", name);
    seed("pickle", n, p->p, p->n);
    size_t zn = 0;
    uint8_t *z = sd_fuzz_wrap_pickle(p->p, p->n, &zn);
    if (!z) {
        fail("cannot wrap %s", name);
        return;
    }
    snprintf(n, sizeof n, "%s.ckpt", name);
    seed("ckpt", n, z, zn);
    free(z);
}

/* Protocol 2, as torch.save writes a diffusers-style state dict: an
 * OrderedDict, a contiguous F32 tensor, a transposed F16 view (copied by
 * the reader), a BF16 tensor at an offset, two tensors sharing a storage
 * through the memo. */
static void pickle_state_dict(void)
{
    byte_buf p = pk_start(2);
    pk_ordered_dict(&p);
    pk_put(&p, 0);
    pk_op(&p, '(');
    int64_t s1[] = {32}, r1[] = {1};
    pk_str(&p, "conv_in.bias");
    pk_tensor_ex(&p, PK_COMPACT | PK_MEMO, 1, "FloatStorage", "0", 64, 0, 1, s1, r1);
    int64_t s2[] = {2, 3}, r2[] = {1, 2};
    pk_str(&p, "conv_in.weight");
    pk_tensor_ex(&p, PK_COMPACT, 0, "HalfStorage", "1", 128, 0, 2, s2, r2);
    int64_t s3[] = {2, 2, 1, 3}, r3[] = {6, 3, 3, 1};
    pk_str(&p, "down_blocks.0.resnets.0.conv1.weight");
    pk_tensor_ex(&p, PK_COMPACT, 0, "BFloat16Storage", "2", 128, 5, 4, s3, r3);
    int64_t s4[] = {4, 4}, r4[] = {4, 1};
    pk_str(&p, "conv_out.bias.shared");
    pk_tensor_ex(&p, PK_COMPACT | PK_REUSE, 1, "FloatStorage", "0", 64, 32, 2, s4, r4);
    int64_t s5[] = {0}, r5[] = {1};
    pk_str(&p, "empty");
    pk_tensor_ex(&p, PK_COMPACT, 0, "DoubleStorage", "3", 32, 0, 1, s5, r5);
    pk_op(&p, 'u');
    pk_op(&p, '.');
    seed_pickle("state-dict-p2", &p);
    bb_free(&p);
}

/* An original-SD style checkpoint: {"state_dict": ..., Lightning
 * bookkeeping with numpy scalars and the ModelCheckpoint class as a key},
 * LDM names, _rebuild_parameter, LONG1, BINFLOAT, lists, BUILD. */
static void pickle_lightning(void)
{
    byte_buf p = pk_start(2);
    pk_op(&p, '}');
    pk_put(&p, 0);
    pk_op(&p, '(');
    pk_str(&p, "epoch");
    pk_int(&p, 6);
    pk_str(&p, "global_step");
    uint8_t long1[] = {0x8a, 5, 0x10, 0x32, 0x54, 0x76, 0x01};
    bb_put(&p, long1, sizeof long1);
    pk_str(&p, "lr");
    uint8_t flt[] = {'G', 0x3f, 0x1a, 0x36, 0xe2, 0xeb, 0x1c, 0x43, 0x2d};
    bb_put(&p, flt, sizeof flt);
    pk_str(&p, "callbacks");
    pk_op(&p, '}');
    pk_global(&p, "pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint");
    pk_op(&p, '}');
    pk_str(&p, "best_model_score");
    pk_global(&p, "numpy.core.multiarray", "scalar");
    pk_global(&p, "numpy", "dtype");
    pk_str(&p, "f8");
    pk_op(&p, 0x89);
    pk_op(&p, 0x88);
    pk_op(&p, 0x87);
    pk_op(&p, 'R');
    pk_put(&p, 2);
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
    pk_op(&p, 'b'); /* BUILD: the dtype's state, dropped */
    pk_global(&p, "_codecs", "encode");
    pk_str(&p, "\xc3\xa1\x01\x02\x03\x04\x05\x06");
    pk_str(&p, "latin1");
    pk_op(&p, 0x86);
    pk_op(&p, 'R');
    pk_op(&p, 0x86);
    pk_op(&p, 'R');
    pk_op(&p, 's');
    pk_op(&p, 's');
    pk_str(&p, "history");
    pk_op(&p, ']');
    pk_op(&p, '(');
    pk_int(&p, 1);
    pk_int(&p, 70000);
    pk_op(&p, 'N');
    pk_op(&p, 'e');
    pk_int(&p, 100000);
    pk_op(&p, 'a');
    pk_str(&p, "state_dict");
    pk_ordered_dict(&p);
    pk_op(&p, '(');
    int64_t s1[] = {32}, r1[] = {1};
    pk_str(&p, "model.diffusion_model.input_blocks.0.0.bias");
    pk_global(&p, "torch._utils", "_rebuild_parameter");
    pk_tensor_ex(&p, PK_COMPACT | PK_MEMO, 3, "FloatStorage", "4", 64, 0, 1, s1, r1);
    pk_op(&p, 0x89);
    pk_ordered_dict(&p);
    pk_op(&p, 0x87);
    pk_op(&p, 'R');
    int64_t s2[] = {4, 1, 1, 8}, r2[] = {8, 8, 8, 1};
    pk_str(&p, "model.diffusion_model.middle_block.1.proj_in.weight");
    pk_tensor_ex(&p, PK_COMPACT, 0, "FloatStorage", "5", 64, 0, 4, s2, r2);
    int64_t s3[] = {2, 2}, r3[] = {0, 1};
    pk_str(&p, "first_stage_model.encoder.broadcast");
    pk_tensor_ex(&p, PK_COMPACT, 0, "HalfStorage", "6", 128, 1, 2, s3, r3);
    pk_str(&p, "cond_stage_model.ids");
    int64_t s4[] = {8}, r4[] = {1};
    pk_tensor_ex(&p, PK_COMPACT, 0, "LongStorage", "7", 32, 0, 1, s4, r4);
    pk_op(&p, 'u');
    pk_op(&p, 'u');
    pk_op(&p, '.');
    seed_pickle("lightning-p2", &p);
    bb_free(&p);
}

/* Protocol 4: FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL, BINGET of a
 * memoized global, TUPLE1, empty tuples, POP, POP_MARK, SHORT_BINBYTES. */
static void pickle_proto4(void)
{
    byte_buf body = {0};
    pk_op(&body, '}');
    pk_op(&body, 0x94); /* memo 0 */
    pk_short_str(&body, "junk");
    pk_op(&body, '0'); /* POP */
    pk_op(&body, '(');
    pk_int(&body, 1);
    pk_op(&body, '1'); /* POP_MARK */
    uint8_t bytes[] = {'C', 3, 'a', 'b', 'c'};
    bb_put(&body, bytes, sizeof bytes);
    pk_op(&body, '0');
    pk_op(&body, '(');
    pk_short_str(&body, "w");
    pk_short_str(&body, "torch._utils");
    pk_op(&body, 0x94);
    pk_short_str(&body, "_rebuild_tensor_v2");
    pk_op(&body, 0x94);
    pk_op(&body, 0x93);
    pk_op(&body, 0x94); /* memo 3: the global, reused below */
    pk_op(&body, '(');
    pk_op(&body, '(');
    pk_short_str(&body, "storage");
    pk_short_str(&body, "torch");
    pk_short_str(&body, "IntStorage");
    pk_op(&body, 0x93);
    pk_short_str(&body, "0");
    pk_short_str(&body, "cpu");
    pk_int(&body, 64);
    pk_op(&body, 't');
    pk_op(&body, 'Q');
    pk_op(&body, 0x94);
    pk_int(&body, 0);
    int64_t s[] = {8}, r[] = {1};
    pk_tuple_ints(&body, s, 1, 1);
    pk_tuple_ints(&body, r, 1, 1);
    pk_op(&body, 0x89);
    pk_op(&body, '}');
    pk_op(&body, 't');
    pk_op(&body, 'R');
    pk_short_str(&body, "v");
    uint8_t get3[] = {'j', 3, 0, 0, 0}; /* LONG_BINGET */
    bb_put(&body, get3, sizeof get3);
    pk_op(&body, '(');
    pk_get(&body, 4);
    pk_int(&body, 8);
    int64_t s2[] = {2, 2, 2}, r2[] = {4, 2, 1};
    pk_tuple_ints(&body, s2, 3, 1);
    pk_tuple_ints(&body, r2, 3, 1);
    pk_op(&body, 0x88);
    pk_op(&body, 'N');
    pk_op(&body, 't');
    pk_op(&body, 'R');
    pk_op(&body, 'u');
    pk_op(&body, '.');
    byte_buf p = pk_start(4);
    pk_frame(&p, body.n);
    bb_put(&p, body.p, body.n);
    seed_pickle("proto4", &p);
    bb_free(&body);
    bb_free(&p);
}

/* data.pkl of the golden checkpoint, found through its central directory. */
static void extract_pickle(const char *rel)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", g_data, rel);
    size_t n;
    uint8_t *b = slurp(path, &n);
    if (!b)
        return;
#define RD16(p) ((unsigned)(p)[0] | (unsigned)(p)[1] << 8)
#define RD32(p) ((uint32_t)RD16(p) | (uint32_t)RD16((p) + 2) << 16)
    int found = 0;
    for (size_t e = n >= 22 ? n - 22 : 0; e > 0 && !found; e--) {
        if (RD32(b + e) != 0x06054b50u)
            continue;
        size_t cd = RD32(b + e + 16), count = RD16(b + e + 10);
        for (size_t k = 0; k < count && cd + 46 <= e; k++) {
            const uint8_t *h = b + cd;
            size_t nl = RD16(h + 28), xl = RD16(h + 30), cl = RD16(h + 32);
            size_t size = RD32(h + 20), lho = RD32(h + 42);
            if (nl >= 9 && memcmp(h + 46 + nl - 9, "/data.pkl", 9) == 0 && lho + 30 <= n) {
                size_t at = lho + 30 + RD16(b + lho + 26) + RD16(b + lho + 28);
                if (at <= n && size <= n - at) {
                    seed("pickle", "golden-micro-ldm.pkl", b + at, size);
                    found = 1;
                }
                break;
            }
            cd += 46 + nl + xl + cl;
        }
    }
#undef RD16
#undef RD32
    if (!found)
        fail("%s: no data.pkl found", rel);
    free(b);
}

/* ------------------------------------------------------------ JSON, npy */

static void small_json(void)
{
    seed_str("json", "numbers.json",
             "[0, -0, -0.0, 1e308, -1.7976931348623157e308, 4.9e-324, 2.2250738585072011e-308,"
             " 123456789012345678901234567890, -9223372036854775808, 9223372036854775807,"
             " 0.1e1, 1E-2, 1.5e+3, 3.141592653589793238462643383279]");
    seed_str("json", "strings.json",
             "{\"a\": \"caf\\u00e9\", \"\\ud83d\\ude00\": \"\\\"\\\\\\/\\b\\f\\n\\r\\t\","
             " \"utf8\": \"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\", \"e\": [], \"o\": {},"
             " \"t\": [true, false, null]}");
    char deep[2 * SD_JSON_MAX_DEPTH + 1];
    for (int i = 0; i < SD_JSON_MAX_DEPTH; i++) {
        deep[i] = '[';
        deep[2 * SD_JSON_MAX_DEPTH - 1 - i] = ']';
    }
    deep[2 * SD_JSON_MAX_DEPTH] = 0;
    seed_str("json", "deepest.json", deep);
    seed_str("json", "config-sd21-like.json",
             "{\"block_out_channels\": [320, 640, 1280, 1280], \"cross_attention_dim\": 1024,"
             " \"attention_head_dim\": [5, 10, 20, 20], \"use_linear_projection\": true,"
             " \"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\","
             " \"CrossAttnDownBlock2D\", \"DownBlock2D\"], \"up_block_types\": [\"UpBlock2D\","
             " \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"],"
             " \"sample_size\": 96, \"norm_eps\": 1e-05}");
}

/* A .npy with the given version and header dict, padded as numpy pads. */
static void npy_seed(const char *name, int major, const char *dict, const void *data, size_t n)
{
    size_t len_bytes = major == 1 ? 2 : 4, prefix = 8 + len_bytes;
    size_t dl = strlen(dict), hlen = dl + 1;
    hlen += (64 - (prefix + hlen) % 64) % 64;
    size_t total = prefix + hlen + n;
    uint8_t *b = malloc(total);
    if (!b) {
        fail("out of memory");
        return;
    }
    memcpy(b, "\x93NUMPY", 6);
    b[6] = (uint8_t)major;
    b[7] = 0;
    for (size_t i = 0; i < len_bytes; i++)
        b[8 + i] = (uint8_t)(hlen >> (8 * i));
    memcpy(b + prefix, dict, dl);
    memset(b + prefix + dl, ' ', hlen - dl - 1);
    b[prefix + hlen - 1] = '\n';
    if (n)
        memcpy(b + prefix + hlen, data, n);
    seed("npy", name, b, total);
    free(b);
}

static void small_npy(void)
{
    static const uint16_t h[6] = {0x3C00, 0xC000, 0x0001, 0x7BFF, 0x7C00, 0x8000};
    static const float f[1] = {2.5f};
    static const double d[3] = {1e-310, 3.4e38, -7.0};
    npy_seed("f16-2x3-v1.npy", 1, "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }", h,
             sizeof h);
    npy_seed("f4-scalar-v2.npy", 2, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", f,
             sizeof f);
    npy_seed("f8-3-v3.npy", 3, "{\"shape\": (3,), \"descr\": \"<f8\", \"fortran_order\": False}", d,
             sizeof d);
    npy_seed("empty-v1.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4), }", NULL,
             0);
}

/* ------------------------------------------------------------ tokenizer */

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The golden prompts (their exact bytes) as tokenizer seeds. */
static void tokenizer_seeds(void)
{
    size_t size = 0;
    char path[1024];
    snprintf(path, sizeof path, "%s/text/tokenizer.json", g_data);
    char *text = (char *)slurp(path, &size);
    if (!text)
        return;
    /* Display strings may hold \u0000, which the JSON reader refuses; only
     * prompt_utf8_hex is read. */
    for (char *p = text; (p = strstr(p, "\\u0000")) != NULL; p += 6)
        if (p == text || p[-1] != '\\')
            p[5] = '1';
    sd_json *j = NULL;
    sdunet_error err;
    memset(&err, 0, sizeof err);
    if (sd_json_parse(text, size, &j, &err) != SDUNET_OK) {
        fail("%s: %s", path, err.message);
        free(text);
        return;
    }
    free(text);
    const sd_json *cases = sd_json_get(j, "cases");
    for (size_t k = 0; cases && cases->type == SD_JSON_ARRAY && k < cases->len; k++) {
        const sd_json *name = sd_json_get(&cases->items[k], "name");
        const sd_json *hex = sd_json_get(&cases->items[k], "prompt_utf8_hex");
        if (!name || name->type != SD_JSON_STRING || !hex || hex->type != SD_JSON_STRING)
            continue;
        size_t n = hex->len / 2;
        char *b = malloc(n + 1);
        if (!b)
            break;
        for (size_t i = 0; i < n; i++)
            b[i] = (char)(hexval(hex->string[2 * i]) << 4 | hexval(hex->string[2 * i + 1]));
        char nm[128];
        snprintf(nm, sizeof nm, "golden-%.100s", name->string);
        seed("tokenizer", nm, b, n);
        free(b);
    }
    sd_json_free(j);
    seed_str("tokenizer", "bad-utf8", "a photo \xe2\x82 of\xff");
    seed_str("tokenizer", "sigma-marks",
             "\xce\xa3\xcc\x81\xce\xa3 \xe1\x84\x80\xe1\x85\xa1"
             "\xe1\x86\xa8 e\xcc\xa3\xcc\x82 \xc4\xb0I\xcd\x85");

    /* vocab seeds: vocab.json, NUL, merges.txt. */
    static const char small[] =
        "{\"a\": 0, \"b\": 1, \"a</w>\": 2, \"b</w>\": 3, \"ab\": 4, \"aba\": 5, \"ab</w>\": 6, "
        "\"!\": 9, \"<|startoftext|>\": 7, \"<|endoftext|>\": 8}\0"
        "#version: 0.2\nab a\na b\na b</w>\r\nx y z\n\n a  b \n";
    seed("vocab", "small", small, sizeof small - 1);
    /* The head of the real vocabulary: its first 121 byte symbols, 30
     * merges and the special tokens (within the 4 KB fuzz input limit). */
    char vpath[1024], mpath[1024];
    snprintf(vpath, sizeof vpath, "%s/text/vocab.json", g_data);
    snprintf(mpath, sizeof mpath, "%s/text/merges.txt", g_data);
    size_t vn = 0, mn = 0;
    char *v = (char *)slurp(vpath, &vn), *m = (char *)slurp(mpath, &mn);
    if (v && m) {
        /* vocab.json is one compact line with ids in order: cut after id 120. */
        char *cut = strstr(v, "\":120,");
        char *line = m;
        for (int i = 0; line && i < 31; i++) {
            line = strchr(line, '\n');
            if (line)
                line++;
        }
        if (cut && line) {
            static const char tail[] = "\"<|startoftext|>\":49406,\"<|endoftext|>\":49407}";
            size_t head = (size_t)(cut - v) + 6, ml = (size_t)(line - m);
            size_t total = head + sizeof tail - 1 + 1 + ml;
            char *b = malloc(total);
            if (b) {
                memcpy(b, v, head);
                memcpy(b + head, tail, sizeof tail - 1);
                b[head + sizeof tail - 1] = 0;
                memcpy(b + head + sizeof tail, m, ml);
                seed("vocab", "clip-head", b, total);
                free(b);
            }
        } else {
            fail("%s, %s: unexpected layout", vpath, mpath);
        }
    }
    free(v);
    free(m);
}

/* ------------------------------------------------------------------ png */

static void png_chunk(uint8_t *buf, size_t *n, const char *type, const uint8_t *d, size_t len)
{
    uint8_t *o = buf + *n;
    o[0] = (uint8_t)(len >> 24);
    o[1] = (uint8_t)(len >> 16);
    o[2] = (uint8_t)(len >> 8);
    o[3] = (uint8_t)len;
    memcpy(o + 4, type, 4);
    if (len)
        memcpy(o + 8, d, len);
    uint32_t c = sd_crc32(0, o + 4, len + 4);
    for (int i = 0; i < 4; i++)
        o[8 + len + i] = (uint8_t)(c >> (24 - 8 * i));
    *n += len + 12;
}

/* A small PNG of the given layout: patterned samples, every filter type
 * in turn except for palettes (the bytes are used as filtered data: the
 * decoder's output only needs to be some image),
 * an 8-entry palette for colour type 3, a tRNS chunk when asked, and the
 * data deflated by the library or stored. */
static void png_seed(const char *name, int w, int h, int depth, int ctype, int interlace, int trns,
                     int stored)
{
    int ch = ctype == 0 || ctype == 3 ? 1 : ctype == 2 ? 3 : ctype == 4 ? 2 : 4;
    size_t rb = ((size_t)w * ch * depth + 7) / 8, raw_n = 0;
    /* Interlaced or not, 7 * h rows of the full width is room enough. */
    uint8_t *raw = calloc((size_t)7 * h * (rb + 1), 1);
    int passes = interlace ? 7 : 1;
    static const int x0[7] = {0, 4, 0, 2, 0, 1, 0}, y0[7] = {0, 0, 4, 0, 2, 0, 1};
    static const int dx[7] = {8, 8, 4, 4, 2, 2, 1}, dy[7] = {8, 8, 8, 4, 4, 2, 2};
    for (int p = 0; p < passes; p++) {
        int pw = interlace ? (w > x0[p] ? (w - x0[p] + dx[p] - 1) / dx[p] : 0) : w;
        int ph = interlace ? (h > y0[p] ? (h - y0[p] + dy[p] - 1) / dy[p] : 0) : h;
        if (!pw || !ph)
            continue;
        size_t prb = ((size_t)pw * ch * depth + 7) / 8;
        for (int y = 0; y < ph; y++) {
            raw[raw_n++] = ctype == 3 ? 0 : (uint8_t)(y % 5); /* indices stay in range */
            for (size_t i = 0; i < prb; i++)
                raw[raw_n++] = ctype == 3 && depth == 8 ? (uint8_t)(i % 8)
                               : ctype == 3             ? 0
                                                        : (uint8_t)(i * 37 + (size_t)y * 11);
        }
    }
    uint8_t *z = NULL;
    size_t zn = 0;
    sdunet_error err;
    if (stored) {
        zn = raw_n + 11;
        z = malloc(zn);
        z[0] = 0x78;
        z[1] = 0x01;
        z[2] = 1;
        z[3] = (uint8_t)raw_n;
        z[4] = (uint8_t)(raw_n >> 8);
        z[5] = (uint8_t)~raw_n;
        z[6] = (uint8_t)(~raw_n >> 8);
        memcpy(z + 7, raw, raw_n);
        uint32_t a = sd_adler32(1, raw, raw_n);
        for (int i = 0; i < 4; i++)
            z[7 + raw_n + i] = (uint8_t)(a >> (24 - 8 * i));
    } else if (sd_zlib_deflate(raw, raw_n, &z, &zn, &err) != SDUNET_OK) {
        fail("png seed %s: %s", name, err.message);
        free(raw);
        return;
    }
    uint8_t *buf = malloc(zn + 200);
    size_t n = 8;
    memcpy(buf, "\x89PNG\r\n\x1a\n", 8);
    uint8_t ihdr[13] = {0,
                        0,
                        0,
                        (uint8_t)w,
                        0,
                        0,
                        0,
                        (uint8_t)h,
                        (uint8_t)depth,
                        (uint8_t)ctype,
                        0,
                        0,
                        (uint8_t)interlace};
    png_chunk(buf, &n, "IHDR", ihdr, 13);
    if (ctype == 3) {
        static const uint8_t pal[24] = {0,   0,   0,   255, 0,   0,   0,  255, 0,  0,   0,   255,
                                        255, 255, 255, 128, 128, 128, 10, 20,  30, 200, 100, 50};
        png_chunk(buf, &n, "PLTE", pal, 24);
    }
    if (trns) {
        static const uint8_t t[6] = {0, 1, 0, 2, 0, 3};
        png_chunk(buf, &n, "tRNS", t, ctype == 0 ? 2 : ctype == 2 ? 6 : 3);
    }
    png_chunk(buf, &n, "IDAT", z, zn);
    png_chunk(buf, &n, "IEND", NULL, 0);
    seed("png", name, buf, n);
    /* Check the seed is a valid image, so the fuzzer starts from real ones. */
    sd_image img;
    if (sd_png_decode(buf, n, &img, &err) != SDUNET_OK)
        fail("png seed %s does not decode: %s", name, err.message);
    sd_image_free(&img);
    free(buf);
    free(z);
    free(raw);
}

static void small_png(void)
{
    png_seed("grey1-interlaced.png", 9, 7, 1, 0, 1, 0, 0);
    png_seed("grey4-trns.png", 5, 3, 4, 0, 0, 1, 1);
    png_seed("grey16.png", 4, 4, 16, 0, 0, 0, 0);
    png_seed("rgb8-stored.png", 6, 5, 8, 2, 0, 0, 1);
    png_seed("rgb16-interlaced.png", 10, 9, 16, 2, 1, 0, 0);
    png_seed("pal2.png", 7, 3, 2, 3, 0, 0, 0);
    png_seed("pal8-trns-interlaced.png", 11, 10, 8, 3, 1, 1, 0);
    png_seed("greyalpha8.png", 3, 8, 8, 4, 0, 0, 1);
    png_seed("rgba8.png", 8, 8, 8, 6, 0, 0, 0);
    /* The writer's own output: RGB with a tEXt and an iTXt chunk. */
    uint8_t rgb[16 * 12 * 3];
    for (size_t i = 0; i < sizeof rgb; i++)
        rgb[i] = (uint8_t)(i * 7 / 3);
    sd_png_text t[2] = {{"parameters", "a cat\nSteps: 20, Seed: 1"}, {"Comment", "caf\xc3\xa9"}};
    uint8_t *png = NULL;
    size_t n = 0;
    sdunet_error err;
    if (sd_png_encode(rgb, 16, 12, t, 2, &png, &n, &err) != SDUNET_OK)
        fail("png seed: %s", err.message);
    else
        seed("png", "rgb8-text.png", png, n);
    free(png);
}

/* ---- the VAE: a small model (channels 32 and 32, latent 2) with
 * synthetic weights, under diffusers names and under LDM names with the
 * single-file prefix (attention as 1x1 convolutions) ---- */

typedef struct vae_list {
    sd_tensor_info t[160];
    int n;
} vae_list;

static void vae_visit(void *user, const char *name, int ndim, const int64_t *shape)
{
    vae_list *l = user;
    if (l->n >= 160)
        return;
    sd_tensor_info *t = &l->t[l->n++];
    t->name = strdup(name);
    t->dtype = SD_DT_F32;
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++)
        t->numel *= (size_t)(t->shape[i] = shape[i]);
    t->nbytes = t->numel * 4;
    float *d = malloc(t->nbytes);
    if (d)
        sd_synth_weight(name, ndim, shape, d);
    t->data = d;
}

static void vae_write(const char *name, vae_list *l)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/vae", g_out);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/vae/%s", g_out, name);
    sdunet_error err;
    if (sd_safetensors_write(path, l->t, (size_t)l->n, NULL, &err))
        fail("%s: %s", path, err.message);
    else
        g_written++;
}

static void vae_seeds(void)
{
    sd_vae_config c;
    sd_vae_config_sd(&c);
    c.latent_channels = 2;
    c.n_levels = 2;
    c.block_out_channels[0] = 32;
    c.block_out_channels[1] = 32;
    c.layers_per_block = 1;
    vae_list *l = calloc(1, sizeof *l);
    if (!l)
        return;
    sd_weight_source src = {.check_only = 1, .visit = vae_visit, .visit_user = l};
    sd_vae v;
    sdunet_error err;
    if (sd_vae_build(&v, &c, &src, NULL, sd_kernels_select(NULL), &err) != SDUNET_OK)
        fail("vae seed: %s", err.message);
    sd_vae_release(&v);
    for (int i = 0; i < l->n; i++)
        if (!l->t[i].data)
            fail("vae seed: out of memory");
    vae_write("small-diffusers.safetensors", l);
    sd_vae_names nm = {.layout = SD_VAE_LAYOUT_LDM, .n_levels = 2};
    snprintf(nm.prefix, sizeof nm.prefix, "first_stage_model.");
    for (int i = 0; i < l->n; i++) {
        char ldm[256];
        if (!sd_vae_file_name(&nm, l->t[i].name, ldm, sizeof ldm)) {
            fail("vae seed: no LDM name for %s", l->t[i].name);
            continue;
        }
        free(l->t[i].name);
        l->t[i].name = strdup(ldm);
        if (strstr(ldm, ".attn_1.") && l->t[i].ndim == 2) {
            l->t[i].ndim = 4;
            l->t[i].shape[2] = l->t[i].shape[3] = 1;
        }
    }
    vae_write("small-ldm.safetensors", l);
    for (int i = 0; i < l->n; i++) {
        free(l->t[i].name);
        free((void *)l->t[i].data);
    }
    free(l);
    seed_file("vae_config", "vae/vae-tiny/config.json");
    seed_file("vae_config", "vae/vae-sd-32/config.json");
    seed_str("vae_config", "minimal.json",
             "{\"block_out_channels\": [32], \"norm_num_groups\": 8}");
    seed_str("vae_config", "features.json",
             "{\"_class_name\": \"AutoencoderKL\", \"sample_size\": [64, 48], "
             "\"shift_factor\": 0.0609, \"use_quant_conv\": false, \"use_post_quant_conv\": "
             "false, \"mid_block_add_attention\": false, \"latents_mean\": null}");
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s DATA_DIR OUT_DIR\n", argv[0]);
        return 2;
    }
    g_data = argv[1];
    g_out = argv[2];
    if (mkdir(g_out, 0755) != 0 && errno != EEXIST) {
        fail("%s: %s", g_out, strerror(errno));
        return 1;
    }
    static const char *const st[] = {"micro/weights.safetensors", "micro/weights-fp16.safetensors",
                                     "micro/weights-bf16.safetensors",
                                     "micro/weights-ldm.safetensors"};
    for (size_t i = 0; i < sizeof st / sizeof st[0]; i++) {
        seed_file("load", st[i]);
        slice_safetensors(st[i]);
    }
    /* The golden .ckpt (4.5 MB) goes to the load harness only: as a raw zip
     * seed it made every ckpt execution 40x slower for no zip feature the
     * small archives below lack; its pickle is a pickle seed. */
    seed_file("load", "micro/weights-ldm.ckpt");
    extract_pickle("micro/weights-ldm.ckpt");
    pickle_state_dict();
    pickle_lightning();
    pickle_proto4();
    small_safetensors();

    static const char *const js[] = {"micro/config.json", "tiny/config.json",
                                     "tiny-sd2/config.json", "micro/manifest.json"};
    for (size_t i = 0; i < sizeof js / sizeof js[0]; i++)
        seed_file("json", js[i]);
    seed("json", "micro-config-embedded.json", sd_fuzz_micro_config, strlen(sd_fuzz_micro_config));
    small_json();

    static const char *const np[] = {"micro/sample.npy", "micro/context.npy",
                                     "micro/expected_f64.npy", "tiny-sd2/context.npy"};
    for (size_t i = 0; i < sizeof np / sizeof np[0]; i++)
        seed_file("npy", np[i]);
    small_npy();
    tokenizer_seeds();
    small_png();
    vae_seeds();

    if (!g_failed)
        printf("corpus: %d seeds in %s\n", g_written, g_out);
    return g_failed;
}
