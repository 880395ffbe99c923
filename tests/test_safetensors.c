/* safetensors reader/writer, dtype conversions and the tensor table. */
#include "check.h"
#include "io/tensorfile.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------- helpers */

/* Builds "u64 declared_len + header text + data" in memory. */
static unsigned char *build_raw(uint64_t declared_len, const char *header, const void *data,
                                size_t data_len, size_t *size)
{
    size_t hl = strlen(header);
    *size = 8 + hl + data_len;
    unsigned char *buf = malloc(*size);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)(declared_len >> (8 * i));
    memcpy(buf + 8, header, hl);
    if (data_len)
        memcpy(buf + 8 + hl, data, data_len);
    return buf;
}

static unsigned char *build(const char *header, size_t data_len, size_t *size)
{
    unsigned char *zeros = calloc(1, data_len ? data_len : 1);
    unsigned char *buf = build_raw(strlen(header), header, zeros, data_len, size);
    free(zeros);
    return buf;
}

/* Parses a buffer into a heap table; returns the status, and the table
 * through *out when it succeeded (else it is closed). */
static sdunet_status parse_buf(const void *buf, size_t size, sd_tensorfile **out, sdunet_error *err)
{
    sd_tensorfile *tf = calloc(1, sizeof *tf);
    /* Garbage in the fields parse must overwrite. */
    tf->count = 12345;
    sdunet_status st = sd_safetensors_parse(buf, size, tf, err);
    if (st != SDUNET_OK) {
        CHECK(tf->count == 0 && tf->tensors == NULL && tf->metadata == NULL,
              "failed parse left count %zu", tf->count);
        free(tf);
        if (out)
            *out = NULL;
        return st;
    }
    if (out) {
        *out = tf;
    } else {
        sd_tensorfile_clear(tf);
        free(tf);
    }
    return st;
}

static void free_parsed(sd_tensorfile *tf)
{
    if (!tf)
        return;
    sd_tensorfile_clear(tf);
    free(tf);
}

static void expect_format(const char *label, const char *header, size_t data_len)
{
    size_t size;
    unsigned char *buf = build(header, data_len, &size);
    sdunet_error err = {0};
    sdunet_status st = parse_buf(buf, size, NULL, &err);
    CHECK(st == SDUNET_E_FORMAT, "%s: status %d (%s)", label, (int)st, err.message);
    CHECK(err.message[0] != '\0', "%s: empty message", label);
    free(buf);
}

static size_t numel_of(const sd_tensor_info *t)
{
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= (size_t)t->shape[d];
    return n;
}

/* --------------------------------------------------------------- dtypes */

static void test_dtypes(void)
{
    static const struct {
        const char *name;
        sd_dtype dt;
        size_t size;
    } cases[] = {
        {"F64", SD_DT_F64, 8},   {"F32", SD_DT_F32, 4},         {"F16", SD_DT_F16, 2},
        {"BF16", SD_DT_BF16, 2}, {"I64", SD_DT_I64, 8},         {"I32", SD_DT_I32, 4},
        {"I16", SD_DT_I16, 2},   {"I8", SD_DT_I8, 1},           {"U8", SD_DT_U8, 1},
        {"BOOL", SD_DT_BOOL, 1}, {"U16", SD_DT_U16, 2},         {"U32", SD_DT_U32, 4},
        {"U64", SD_DT_U64, 8},   {"F8_E4M3", SD_DT_F8_E4M3, 1}, {"F8_E5M2", SD_DT_F8_E5M2, 1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sd_dtype dt = SD_DT_COUNT;
        CHECK(sd_dtype_parse(cases[i].name, &dt) == 0 && dt == cases[i].dt, "%s", cases[i].name);
        CHECK(sd_dtype_size(cases[i].dt) == cases[i].size, "%s size", cases[i].name);
        CHECK(strcmp(sd_dtype_name(cases[i].dt), cases[i].name) == 0, "%s name", cases[i].name);
    }
    static const char *unknown[] = {"Q4", "f32", "", "F32 ", "C64", "F8", "U128"};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        sd_dtype dt;
        CHECK(sd_dtype_parse(unknown[i], &dt) == -1, "'%s' accepted", unknown[i]);
    }
    CHECK(sd_dtype_parse(NULL, NULL) == -1, "NULL");
    CHECK(sd_dtype_size(SD_DT_COUNT) == 0, "size of out-of-range dtype");
}

static float f_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t u_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void test_f16(void)
{
    CHECK(sd_f32_to_f16(1.0f) == 0x3C00, "1.0");
    CHECK(sd_f32_to_f16(-2.0f) == 0xC000, "-2.0");
    CHECK(sd_f32_to_f16(0.0f) == 0x0000, "+0");
    CHECK(sd_f32_to_f16(-0.0f) == 0x8000, "-0");
    CHECK(sd_f32_to_f16(65504.0f) == 0x7BFF, "max half");
    CHECK(sd_f32_to_f16(65519.99f) == 0x7BFF, "just below the overflow midpoint");
    CHECK(sd_f32_to_f16(65520.0f) == 0x7C00, "overflow midpoint goes to Inf");
    CHECK(sd_f32_to_f16(1e10f) == 0x7C00, "overflow");
    CHECK(sd_f32_to_f16(-1e10f) == 0xFC00, "negative overflow");
    CHECK(sd_f32_to_f16(INFINITY) == 0x7C00, "inf");
    CHECK(sd_f32_to_f16(ldexpf(1, -24)) == 0x0001, "min subnormal");
    CHECK(sd_f32_to_f16(ldexpf(1, -25)) == 0x0000, "half of min subnormal rounds to even 0");
    CHECK(sd_f32_to_f16(ldexpf(1.0001f, -25)) == 0x0001, "just above half of min subnormal");
    CHECK(sd_f32_to_f16(ldexpf(3, -25)) == 0x0002, "1.5 ulp rounds to even 2");
    CHECK(sd_f32_to_f16(ldexpf(1, -14)) == 0x0400, "min normal");
    CHECK(sd_f32_to_f16(ldexpf(1, -30)) == 0x0000, "tiny");
    uint16_t qn = sd_f32_to_f16(NAN);
    CHECK((qn & 0x7C00) == 0x7C00 && (qn & 0x3FF), "NaN stays NaN: %04x", qn);
    uint16_t sn = sd_f32_to_f16(f_of(0x7F800001u)); /* payload only in low bits */
    CHECK((sn & 0x7C00) == 0x7C00 && (sn & 0x3FF), "signalling NaN stays NaN: %04x", sn);
    CHECK(isnan(sd_f16_to_f32(0x7E00)) && isinf(sd_f16_to_f32(0xFC00)), "f16 specials");
    CHECK(sd_f16_to_f32(0x0001) == ldexpf(1, -24), "subnormal decode");
    CHECK(sd_f16_to_f32(0x03FF) == ldexpf(1023, -24), "max subnormal decode");

    /* Every half round-trips; every midpoint between neighbours rounds to
     * the even one and a float ulp either side rounds to the nearer. */
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = sd_f16_to_f32((uint16_t)h);
        if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF)) {
            bad += !isnan(f);
            continue;
        }
        bad += sd_f32_to_f16(f) != h;
        if ((h & 0x7FFF) >= 0x7BFF)
            continue; /* no finite upper neighbour */
        float g = sd_f16_to_f32((uint16_t)(h + 1));
        float mid = (float)(((double)f + (double)g) / 2);
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        bad += sd_f32_to_f16(mid) != even;
        /* One float ulp away from zero (bit pattern + 1) or toward it; h + 1
         * is the neighbour of larger magnitude for either sign. */
        float above = f_of(u_of(mid) + 1), below = f_of(u_of(mid) - 1);
        bad += sd_f32_to_f16(above) != (uint16_t)(h + 1);
        bad += sd_f32_to_f16(below) != (uint16_t)h;
    }
    CHECK(bad == 0, "%d exhaustive f16 mismatches", bad);
}

static void test_bf16(void)
{
    CHECK(sd_f32_to_bf16(1.0f) == 0x3F80, "1.0");
    CHECK(sd_f32_to_bf16(-0.0f) == 0x8000, "-0");
    CHECK(sd_f32_to_bf16(f_of(0x7F7FFFFFu)) == 0x7F80, "FLT_MAX rounds to Inf");
    CHECK(sd_f32_to_bf16(-INFINITY) == 0xFF80, "-inf");
    CHECK(sd_f32_to_bf16(f_of(0x3F808000u)) == 0x3F80, "tie to even (down)");
    CHECK(sd_f32_to_bf16(f_of(0x3F818000u)) == 0x3F82, "tie to even (up)");
    CHECK(sd_f32_to_bf16(f_of(0x3F808001u)) == 0x3F81, "above tie");
    uint16_t sn = sd_f32_to_bf16(f_of(0x7F800001u));
    CHECK((sn & 0x7F80) == 0x7F80 && (sn & 0x7F), "signalling NaN stays NaN: %04x", sn);
    uint16_t nn = sd_f32_to_bf16(f_of(0xFFFFFFFFu));
    CHECK((nn & 0x7F80) == 0x7F80 && (nn & 0x7F) && (nn & 0x8000), "NaN keeps sign: %04x", nn);
    int bad = 0;
    for (uint32_t b = 0; b < 0x10000; b++) {
        float f = sd_bf16_to_f32((uint16_t)b);
        if (isnan(f)) {
            bad += !isnan(sd_bf16_to_f32(sd_f32_to_bf16(f)));
            continue;
        }
        bad += sd_f32_to_bf16(f) != b;
        if ((b & 0x7FFF) >= 0x7F7F)
            continue;
        float g = sd_bf16_to_f32((uint16_t)(b + 1));
        float mid = (float)(((double)f + (double)g) / 2);
        uint16_t even = (b & 1) ? (uint16_t)(b + 1) : (uint16_t)b;
        bad += sd_f32_to_bf16(mid) != even;
        bad += sd_f32_to_bf16(f_of(u_of(mid) + 1)) != (uint16_t)(b + 1);
        bad += sd_f32_to_bf16(f_of(u_of(mid) - 1)) != (uint16_t)b;
    }
    CHECK(bad == 0, "%d exhaustive bf16 mismatches", bad);
}

static void test_tensor_to_f32(void)
{
    /* Data deliberately at an odd address. */
    unsigned char raw[1 + 4 * 8];
    float want[4] = {1.5f, -2.25f, 3e-5f, 65504.0f};
    sd_tensor_info t;
    memset(&t, 0, sizeof t);
    t.name = "t";
    t.ndim = 1;
    t.shape[0] = 4;
    t.numel = 4;
    t.data = raw + 1;
    float out[4];
    sdunet_error err = {0};

    t.dtype = SD_DT_F32;
    t.nbytes = 16;
    memcpy(raw + 1, want, 16);
    CHECK(sd_tensor_to_f32(&t, out, &err) == SDUNET_OK && memcmp(out, want, 16) == 0, "F32");

    t.dtype = SD_DT_F16;
    t.nbytes = 8;
    for (int i = 0; i < 4; i++) {
        uint16_t h = sd_f32_to_f16(want[i]);
        raw[1 + 2 * i] = (unsigned char)h;
        raw[2 + 2 * i] = (unsigned char)(h >> 8);
    }
    CHECK(sd_tensor_to_f32(&t, out, &err) == SDUNET_OK, "F16: %s", err.message);
    for (int i = 0; i < 4; i++)
        CHECK(out[i] == sd_f16_to_f32(sd_f32_to_f16(want[i])), "F16 %d", i);

    t.dtype = SD_DT_BF16;
    for (int i = 0; i < 4; i++) {
        uint16_t h = sd_f32_to_bf16(want[i]);
        raw[1 + 2 * i] = (unsigned char)h;
        raw[2 + 2 * i] = (unsigned char)(h >> 8);
    }
    CHECK(sd_tensor_to_f32(&t, out, &err) == SDUNET_OK, "BF16: %s", err.message);
    for (int i = 0; i < 4; i++)
        CHECK(out[i] == sd_bf16_to_f32(sd_f32_to_bf16(want[i])), "BF16 %d", i);

    t.dtype = SD_DT_F64;
    t.nbytes = 32;
    double wd[4] = {0.1, -1e300, 1e-50, 3.0};
    memcpy(raw + 1, wd, 32);
    CHECK(sd_tensor_to_f32(&t, out, &err) == SDUNET_OK, "F64: %s", err.message);
    for (int i = 0; i < 4; i++)
        CHECK(out[i] == (float)wd[i], "F64 %d: %g", i, out[i]);

    t.dtype = SD_DT_I64;
    CHECK(sd_tensor_to_f32(&t, out, &err) == SDUNET_E_UNSUPPORTED, "I64 unsupported");
    t.dtype = SD_DT_F32;
    t.nbytes = 8; /* smaller than 4 floats */
    CHECK(sd_tensor_to_f32(&t, out, &err) == SDUNET_E_INVALID_ARG, "short data");
}

/* ---------------------------------------------------------- real files */

static void test_micro_f32(void)
{
    sd_tensorfile *tf = NULL;
    sdunet_error err = {0};
    sdunet_status st = sd_tensorfile_open(t_data("micro/weights.safetensors"), &tf, &err);
    CHECK(st == SDUNET_OK, "open: %s", err.message);
    if (st)
        return;
    CHECK(strcmp(tf->format, "safetensors") == 0, "format %s", tf->format);
    CHECK(tf->count == 682, "count %zu", tf->count);
    CHECK(tf->metadata && strcmp(tf->metadata, "{\"format\":\"pt\"}") == 0, "metadata %s",
          tf->metadata ? tf->metadata : "(null)");
    const unsigned char *lo = tf->map, *hi = lo + tf->map_size;
    size_t total = 0;
    for (size_t i = 0; i < tf->count; i++) {
        const sd_tensor_info *t = &tf->tensors[i];
        if (i)
            CHECK(strcmp(tf->tensors[i - 1].name, t->name) < 0, "not sorted at %zu", i);
        CHECK(t->dtype == SD_DT_F32, "%s dtype", t->name);
        CHECK(t->numel == numel_of(t) && t->nbytes == t->numel * 4, "%s sizes", t->name);
        const unsigned char *d = t->data;
        CHECK(d >= lo && d + t->nbytes <= hi, "%s data outside the mapping", t->name);
        CHECK(sd_tensorfile_find(tf, t->name) == t, "find %s", t->name);
        total += t->nbytes;
    }
    CHECK(total == tf->map_size - 8 - 78112, "data region fully used: %zu", total);
    const sd_tensor_info *ci = sd_tensorfile_find(tf, "conv_in.weight");
    CHECK(ci && ci->ndim == 4 && ci->shape[0] == 32 && ci->shape[1] == 4 && ci->shape[2] == 3 &&
              ci->shape[3] == 3,
          "conv_in.weight shape");
    CHECK(sd_tensorfile_find(tf, "conv_in") == NULL, "prefix is not a match");
    CHECK(sd_tensorfile_find(tf, "") == NULL, "empty name");
    CHECK(sd_tensorfile_find(tf, "zzz") == NULL, "past the end");
    CHECK(sd_tensorfile_find(NULL, "x") == NULL, "NULL table");
    sd_tensorfile_close(tf);
    sd_tensorfile_close(NULL);
}

static void test_micro_halves(void)
{
    sd_tensorfile *f32 = NULL, *f16 = NULL, *bf16 = NULL;
    sdunet_error err = {0};
    CHECK(sd_tensorfile_open(t_data("micro/weights.safetensors"), &f32, &err) == SDUNET_OK, "%s",
          err.message);
    CHECK(sd_tensorfile_open(t_data("micro/weights-fp16.safetensors"), &f16, &err) == SDUNET_OK,
          "%s", err.message);
    CHECK(sd_tensorfile_open(t_data("micro/weights-bf16.safetensors"), &bf16, &err) == SDUNET_OK,
          "%s", err.message);
    if (f32 && f16 && bf16) {
        CHECK(f32->count == f16->count && f32->count == bf16->count, "counts %zu %zu %zu",
              f32->count, f16->count, bf16->count);
        size_t mismatches = 0, checked = 0;
        for (size_t i = 0; i < f32->count; i++) {
            const sd_tensor_info *a = &f32->tensors[i];
            const sd_tensor_info *h = sd_tensorfile_find(f16, a->name);
            const sd_tensor_info *b = sd_tensorfile_find(bf16, a->name);
            CHECK(h && b, "%s missing in a half file", a->name);
            if (!h || !b)
                continue;
            CHECK(h->dtype == SD_DT_F16 && b->dtype == SD_DT_BF16, "%s dtypes", a->name);
            CHECK(h->ndim == a->ndim && b->ndim == a->ndim, "%s ndim", a->name);
            CHECK(memcmp(h->shape, a->shape, sizeof a->shape[0] * (size_t)a->ndim) == 0 &&
                      memcmp(b->shape, a->shape, sizeof a->shape[0] * (size_t)a->ndim) == 0,
                  "%s shapes", a->name);
            if (h->numel != a->numel || b->numel != a->numel)
                continue;
            float *ref = malloc(a->numel * 4 + 4), *hv = malloc(a->numel * 4 + 4),
                  *bv = malloc(a->numel * 4 + 4);
            CHECK(sd_tensor_to_f32(a, ref, &err) == SDUNET_OK, "%s", err.message);
            CHECK(sd_tensor_to_f32(h, hv, &err) == SDUNET_OK, "%s", err.message);
            CHECK(sd_tensor_to_f32(b, bv, &err) == SDUNET_OK, "%s", err.message);
            const unsigned char *hr = h->data, *br = b->data;
            for (size_t k = 0; k < a->numel; k++) {
                uint16_t hbits = (uint16_t)(hr[2 * k] | (hr[2 * k + 1] << 8));
                uint16_t bbits = (uint16_t)(br[2 * k] | (br[2 * k + 1] << 8));
                mismatches += hbits != sd_f32_to_f16(ref[k]);
                mismatches += bbits != sd_f32_to_bf16(ref[k]);
                mismatches += u_of(hv[k]) != u_of(sd_f16_to_f32(sd_f32_to_f16(ref[k])));
                mismatches += u_of(bv[k]) != u_of(sd_bf16_to_f32(sd_f32_to_bf16(ref[k])));
                checked++;
            }
            free(ref);
            free(hv);
            free(bv);
        }
        CHECK(mismatches == 0, "%zu of %zu elements differ", mismatches, checked);
        CHECK(checked > 1000000, "only %zu elements checked", checked);
    }
    sd_tensorfile_close(f32);
    sd_tensorfile_close(f16);
    sd_tensorfile_close(bf16);
}

/* -------------------------------------------------------------- writer */

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void test_write_roundtrip(void)
{
    static float f32v[6] = {1, 2, 3, 4, 5, 6};
    static uint16_t f16v[3] = {0x3C00, 0xC000, 0x7BFF};
    static int64_t i64v[2] = {INT64_MIN, 42};
    static unsigned char u8v[5] = {0, 1, 2, 254, 255};
    static double f64v[1] = {3.25};
    sd_tensor_info t[7];
    memset(t, 0, sizeof t);
    const char *names[7] = {"zeta.weight", "alpha", "mid.\"quoted\"\\name", "b.i64", "u8",
                            "scalar",      "empty"};
    sd_dtype dts[7] = {SD_DT_F32, SD_DT_F16, SD_DT_BF16, SD_DT_I64, SD_DT_U8, SD_DT_F64, SD_DT_F32};
    const void *datas[7] = {f32v, f16v, f16v, i64v, u8v, f64v, NULL};
    int ndims[7] = {2, 1, 1, 1, 1, 0, 3};
    int64_t shapes[7][3] = {{2, 3}, {3}, {3}, {2}, {5}, {0}, {4, 0, 2}};
    for (int i = 0; i < 7; i++) {
        t[i].name = (char *)names[i];
        t[i].dtype = dts[i];
        t[i].ndim = ndims[i];
        memcpy(t[i].shape, shapes[i], sizeof shapes[i]);
        t[i].numel = numel_of(&t[i]);
        t[i].nbytes = t[i].numel * sd_dtype_size(dts[i]);
        t[i].data = datas[i];
    }
    const char *path = t_tmp("roundtrip.safetensors");
    sdunet_error err = {0};
    const char *meta = "{ \"b\": \"2\", \"a\": \"line\\nbreak \\\"q\\\" \\u00e9\" }";
    sdunet_status st = sd_safetensors_write(path, t, 7, meta, &err);
    CHECK(st == SDUNET_OK, "write: %s", err.message);
    if (st)
        return;
    char tmpname[600];
    snprintf(tmpname, sizeof tmpname, "%s.tmp", path);
    CHECK(access(tmpname, F_OK) != 0, "temporary file left behind");

    size_t size;
    unsigned char *raw = t_read_file(path, &size);
    CHECK(raw != NULL && size >= 8, "read back");
    if (!raw)
        return;
    uint64_t hl = le64(raw);
    CHECK(hl % 8 == 0, "header length %llu not a multiple of 8", (unsigned long long)hl);
    CHECK(hl <= size - 8, "header length");
    CHECK(memcmp(raw + 8, "{\"__metadata__\":", 16) == 0, "metadata not first: %.40s", raw + 8);
    CHECK(raw[8 + hl - 1] == ' ' || raw[8 + hl - 1] == '}', "padding");

    sd_tensorfile *tf = NULL;
    st = sd_tensorfile_open(path, &tf, &err);
    CHECK(st == SDUNET_OK, "reopen: %s", err.message);
    if (st == SDUNET_OK) {
        CHECK(tf->count == 7, "count %zu", tf->count);
        CHECK(tf->metadata && strcmp(tf->metadata, "{\"b\":\"2\",\"a\":\"line\\nbreak \\\"q\\\" "
                                                   "\xC3\xA9\"}") == 0,
              "metadata %s", tf->metadata ? tf->metadata : "(null)");
        /* Data is in sorted key order, contiguous from the region start. */
        const unsigned char *region = raw + 8 + hl;
        size_t off = 0;
        for (size_t i = 0; i < tf->count; i++) {
            const sd_tensor_info *r = &tf->tensors[i];
            size_t at = (size_t)((const unsigned char *)r->data - (const unsigned char *)tf->map) -
                        8 - (size_t)hl;
            CHECK(at == off, "%s at %zu, expected %zu", r->name, at, off);
            off += r->nbytes;
            const sd_tensor_info *w = NULL;
            for (int k = 0; k < 7; k++)
                if (strcmp(t[k].name, r->name) == 0)
                    w = &t[k];
            CHECK(w != NULL, "unexpected name %s", r->name);
            if (!w)
                continue;
            CHECK(r->dtype == w->dtype && r->ndim == w->ndim && r->nbytes == w->nbytes &&
                      r->numel == w->numel,
                  "%s header fields", r->name);
            CHECK(memcmp(r->shape, w->shape, sizeof w->shape[0] * (size_t)w->ndim) == 0, "%s shape",
                  r->name);
            CHECK(w->nbytes == 0 || memcmp(r->data, w->data, w->nbytes) == 0, "%s bytes", r->name);
            CHECK(region + at + r->nbytes <= raw + size, "%s in file", r->name);
        }
        CHECK(off == size - 8 - hl, "data region size");
        sd_tensorfile_close(tf);
    }
    free(raw);

    /* Default metadata. */
    st = sd_safetensors_write(path, t, 2, NULL, &err);
    CHECK(st == SDUNET_OK, "%s", err.message);
    raw = t_read_file(path, &size);
    CHECK(raw && memcmp(raw + 8, "{\"__metadata__\":{\"format\":\"pt\"},\"alpha\":", 40) == 0,
          "default metadata: %.48s", raw ? (char *)raw + 8 : "");
    free(raw);

    /* Zero tensors. */
    st = sd_safetensors_write(path, NULL, 0, NULL, &err);
    CHECK(st == SDUNET_OK, "empty: %s", err.message);
    st = sd_tensorfile_open(path, &tf, &err);
    CHECK(st == SDUNET_OK && tf->count == 0, "empty reopen: %s", err.message);
    if (st == SDUNET_OK)
        sd_tensorfile_close(tf);
    unlink(path);
}

/* Rewriting the reference file reproduces it byte for byte: same header
 * order, same padding, same data layout as the Python library. */
static void test_rewrite_reference(void)
{
    static const char *files[] = {"micro/weights.safetensors", "micro/weights-fp16.safetensors",
                                  "micro/weights-bf16.safetensors"};
    for (size_t f = 0; f < 3; f++) {
        sd_tensorfile *tf = NULL;
        sdunet_error err = {0};
        if (sd_tensorfile_open(t_data(files[f]), &tf, &err) != SDUNET_OK) {
            CHECK(0, "%s", err.message);
            continue;
        }
        const char *path = t_tmp("rewrite.safetensors");
        sdunet_status st = sd_safetensors_write(path, tf->tensors, tf->count, tf->metadata, &err);
        CHECK(st == SDUNET_OK, "%s", err.message);
        size_t size;
        unsigned char *raw = t_read_file(path, &size);
        CHECK(raw && size == tf->map_size && memcmp(raw, tf->map, size) == 0,
              "%s: rewritten file differs (%zu vs %zu bytes)", files[f], size, tf->map_size);
        free(raw);
        unlink(path);
        sd_tensorfile_close(tf);
    }
}

static void test_write_errors(void)
{
    float v[2] = {1, 2};
    sd_tensor_info t[2];
    memset(t, 0, sizeof t);
    for (int i = 0; i < 2; i++) {
        t[i].name = i ? "b" : "a";
        t[i].dtype = SD_DT_F32;
        t[i].ndim = 1;
        t[i].shape[0] = 2;
        t[i].numel = 2;
        t[i].nbytes = 8;
        t[i].data = v;
    }
    const char *path = t_tmp("bad.safetensors");
    sdunet_error err = {0};
    CHECK(sd_safetensors_write(path, t, 2, "[1]", &err) == SDUNET_E_INVALID_ARG,
          "metadata not an object: %s", err.message);
    CHECK(sd_safetensors_write(path, t, 2, "{\"a\":1}", &err) == SDUNET_E_INVALID_ARG,
          "metadata value not a string: %s", err.message);
    CHECK(sd_safetensors_write(path, t, 2, "{\"a\":", &err) == SDUNET_E_INVALID_ARG,
          "metadata malformed: %s", err.message);
    t[1].name = "a";
    CHECK(sd_safetensors_write(path, t, 2, NULL, &err) == SDUNET_E_INVALID_ARG,
          "duplicate names: %s", err.message);
    t[1].name = "__metadata__";
    CHECK(sd_safetensors_write(path, t, 2, NULL, &err) == SDUNET_E_INVALID_ARG, "reserved name: %s",
          err.message);
    t[1].name = "bad\xFFutf8";
    CHECK(sd_safetensors_write(path, t, 2, NULL, &err) == SDUNET_E_INVALID_ARG,
          "invalid UTF-8 name: %s", err.message);
    t[1].name = "b";
    t[1].nbytes = 4;
    CHECK(sd_safetensors_write(path, t, 2, NULL, &err) == SDUNET_E_INVALID_ARG,
          "nbytes mismatch: %s", err.message);
    t[1].nbytes = 8;
    t[1].shape[0] = -2;
    CHECK(sd_safetensors_write(path, t, 2, NULL, &err) == SDUNET_E_INVALID_ARG, "negative dim: %s",
          err.message);
    t[1].shape[0] = 2;
    t[1].data = NULL;
    CHECK(sd_safetensors_write(path, t, 2, NULL, &err) == SDUNET_E_INVALID_ARG, "NULL data: %s",
          err.message);
    t[1].data = v;
    CHECK(access(path, F_OK) != 0, "a failed write created the file");

    CHECK(sd_safetensors_write("/nonexistent-dir/x.safetensors", t, 2, NULL, &err) == SDUNET_E_IO,
          "unwritable dir: %s", err.message);
    CHECK(strstr(err.message, "/nonexistent-dir/x.safetensors") != NULL, "path in message: %s",
          err.message);

    /* A full disk, simulated with a file size limit: the error is reported
     * and neither the target nor the temporary file survives. */
    size_t big_n = 1 << 18;
    float *big = calloc(big_n, sizeof *big);
    sd_tensor_info bt;
    memset(&bt, 0, sizeof bt);
    bt.name = "big";
    bt.dtype = SD_DT_F32;
    bt.ndim = 1;
    bt.shape[0] = (int64_t)big_n;
    bt.numel = big_n;
    bt.nbytes = big_n * 4;
    bt.data = big;
    struct rlimit old, lim;
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    if (getrlimit(RLIMIT_FSIZE, &old) == 0) {
        lim = old;
        lim.rlim_cur = 64 * 1024;
        if (setrlimit(RLIMIT_FSIZE, &lim) == 0) {
            sdunet_status st = sd_safetensors_write(path, &bt, 1, NULL, &err);
            setrlimit(RLIMIT_FSIZE, &old);
            CHECK(st == SDUNET_E_IO, "disk full: status %d (%s)", (int)st, err.message);
            char tmpname[600];
            snprintf(tmpname, sizeof tmpname, "%s.tmp", path);
            CHECK(access(path, F_OK) != 0 && access(tmpname, F_OK) != 0,
                  "partial file left behind");
        }
    }
    signal(SIGXFSZ, old_handler);
    free(big);
}

/* --------------------------------------------------------- bad inputs */

#define GOOD_ENTRY "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]"

static void test_bad_headers(void)
{
    /* Sanity: the helper builds a valid file. */
    size_t size;
    unsigned char *buf = build("{\"a\":{" GOOD_ENTRY "}}", 8, &size);
    sd_tensorfile *tf = NULL;
    sdunet_error err = {0};
    CHECK(parse_buf(buf, size, &tf, &err) == SDUNET_OK, "baseline: %s", err.message);
    CHECK(tf && tf->count == 1 && tf->metadata == NULL, "baseline table");
    free_parsed(tf);
    free(buf);

    expect_format("malformed JSON", "{\"a\":{" GOOD_ENTRY "}", 8);
    expect_format("trailing garbage", "{\"a\":{" GOOD_ENTRY "}}x", 8);
    expect_format("header is an array", "[1,2]   ", 8);
    expect_format("header is a string", "\"abc\"   ", 8);
    expect_format("entry not an object", "{\"a\":[1]}", 8);
    expect_format("offsets past end",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 8);
    expect_format("offsets huge",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":"
                  "[9223372036854775800,9223372036854775807]}}",
                  8);
    expect_format("offsets beyond int64",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":"
                  "[0,18446744073709551616]}}",
                  8);
    expect_format("overlapping offsets",
                  "{\"a\":{" GOOD_ENTRY "},\"b\":{\"dtype\":\"F32\",\"shape\":[2],"
                  "\"data_offsets\":[4,12]}}",
                  16);
    expect_format("identical offsets", "{\"a\":{" GOOD_ENTRY "},\"b\":{" GOOD_ENTRY "}}", 16);
    expect_format("offsets not matching shape",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 16);
    expect_format("offsets not matching dtype",
                  "{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,8]}}", 16);
    expect_format("begin > end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}",
                  16);
    expect_format("negative offset",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[-8,0]}}", 16);
    expect_format("float offset",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0.0,8]}}", 16);
    expect_format("one offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8]}}",
                  16);
    expect_format("three offsets",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", 16);
    expect_format("unknown dtype Q4_0",
                  "{\"a\":{\"dtype\":\"Q4_0\",\"shape\":[2],\"data_offsets\":[0,2]}}", 16);
    expect_format("unknown dtype Q4",
                  "{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,2]}}", 16);
    expect_format("dtype not a string",
                  "{\"a\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", 16);
    expect_format("negative dim",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 16);
    expect_format("negative dim cancelling",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1,-2],\"data_offsets\":[0,8]}}", 16);
    expect_format("fractional dim",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 16);
    expect_format("shape not an array",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 16);
    /* 2^32 * 2^32 * 4 overflows 64 bits; with a zero dim after it the
     * product would wrap to a plausible 0 if unchecked. */
    expect_format("shape product overflows",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
                  "\"data_offsets\":[0,0]}}",
                  16);
    expect_format("shape product overflows then 0",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16,0],"
                  "\"data_offsets\":[0,0]}}",
                  16);
    expect_format("shape times dtype overflows",
                  "{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],"
                  "\"data_offsets\":[0,0]}}",
                  16);
    expect_format("too many dims",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],"
                  "\"data_offsets\":[0,8]}}",
                  16);
    expect_format("duplicate tensor names",
                  "{\"a\":{" GOOD_ENTRY "},\"a\":{\"dtype\":\"F32\",\"shape\":[2],"
                  "\"data_offsets\":[8,16]}}",
                  16);
    expect_format("missing data_offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 16);
    expect_format("missing dtype", "{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 16);
    expect_format("missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 16);
    expect_format("extra field", "{\"a\":{" GOOD_ENTRY ",\"extra\":1}}", 16);
    expect_format("metadata not an object", "{\"__metadata__\":[],\"a\":{" GOOD_ENTRY "}}", 16);
    expect_format("metadata non-string value",
                  "{\"__metadata__\":{\"k\":1},\"a\":{" GOOD_ENTRY "}}", 16);
    expect_format("empty header", "", 16);
    expect_format("header of spaces", "        ", 16);

    /* Things that are fine: zero-size tensors anywhere, gaps, metadata,
     * trailing bytes after the last tensor, whitespace padding. */
    buf = build("{\"__metadata__\":{\"k\":\"v\"},\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],"
                "\"data_offsets\":[4,4]},\"s\":{\"dtype\":\"I64\",\"shape\":[],"
                "\"data_offsets\":[8,16]},\"a\":{" GOOD_ENTRY "}}   ",
                32, &size);
    CHECK(parse_buf(buf, size, &tf, &err) == SDUNET_OK, "valid edge cases: %s", err.message);
    if (tf) {
        CHECK(tf->count == 3, "count %zu", tf->count);
        CHECK(strcmp(tf->tensors[0].name, "a") == 0 && strcmp(tf->tensors[1].name, "e") == 0 &&
                  strcmp(tf->tensors[2].name, "s") == 0,
              "sorted");
        CHECK(tf->tensors[1].numel == 0 && tf->tensors[1].nbytes == 0, "empty tensor");
        CHECK(tf->tensors[2].ndim == 0 && tf->tensors[2].numel == 1, "scalar");
        CHECK(tf->metadata && strcmp(tf->metadata, "{\"k\":\"v\"}") == 0, "metadata");
    }
    free_parsed(tf);
    free(buf);
}

static void test_bad_lengths(void)
{
    sdunet_error err = {0};
    size_t size;
    const char *h = "{\"a\":{" GOOD_ENTRY "}}";
    static const uint64_t lens[] = {(uint64_t)1 << 63, UINT64_MAX, 1000, 100000001};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        unsigned char *buf = build_raw(lens[i], h, "\0\0\0\0\0\0\0\0", 8, &size);
        sdunet_status st = parse_buf(buf, size, NULL, &err);
        CHECK(st == SDUNET_E_FORMAT, "length %llu: %d (%s)", (unsigned long long)lens[i], (int)st,
              err.message);
        free(buf);
    }
    /* Shorter than the header: the JSON is cut off. */
    unsigned char *buf = build_raw(10, h, "\0\0\0\0\0\0\0\0", 8, &size);
    CHECK(parse_buf(buf, size, NULL, &err) == SDUNET_E_FORMAT, "short length: %s", err.message);
    free(buf);
    /* A header length over the 100 MB limit is refused before parsing even
     * when the buffer is that big: an untouched anonymous mapping costs no
     * memory, and the parser must not read it. */
    size_t big = 100000001 + 8 + 16;
    unsigned char *map =
        mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map != MAP_FAILED) {
        uint64_t n = 100000001;
        for (int i = 0; i < 8; i++)
            map[i] = (unsigned char)(n >> (8 * i));
        map[8] = '{';
        sdunet_status st = parse_buf(map, big, NULL, &err);
        CHECK(st == SDUNET_E_FORMAT && strstr(err.message, "limit"), "100 MB limit: %d (%s)",
              (int)st, err.message);
        munmap(map, big);
    }
    /* Too short to hold the length itself. */
    for (size_t n = 0; n < 8; n++) {
        CHECK(parse_buf("\x02\0\0\0\0\0\0\0", n, NULL, &err) == SDUNET_E_FORMAT, "%zu bytes", n);
    }
    CHECK(parse_buf(NULL, 0, NULL, &err) == SDUNET_E_FORMAT, "NULL, 0");
}

static void test_truncated_real(void)
{
    size_t size;
    unsigned char *raw = t_read_file(t_data("micro/weights.safetensors"), &size);
    CHECK(raw != NULL, "read micro file");
    if (!raw)
        return;
    size_t hl = (size_t)le64(raw);
    size_t cuts[] = {0,
                     1,
                     7,
                     8,
                     9,
                     100,
                     8 + hl / 2,
                     8 + hl - 1,
                     8 + hl,
                     8 + hl + 1,
                     8 + hl + 1000,
                     size / 2,
                     size - 4,
                     size - 1};
    sdunet_error err = {0};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        sdunet_status st = parse_buf(raw, cuts[i], NULL, &err);
        CHECK(st == SDUNET_E_FORMAT, "cut at %zu: %d (%s)", cuts[i], (int)st, err.message);
    }
    CHECK(parse_buf(raw, size, NULL, &err) == SDUNET_OK, "uncut: %s", err.message);

    /* The same through files, with the path leading the message. */
    const char *path = t_tmp("truncated.safetensors");
    size_t file_cuts[] = {0, 5, 200, 8 + hl + 10, size - 1};
    for (size_t i = 0; i < sizeof file_cuts / sizeof file_cuts[0]; i++) {
        CHECK(t_write_file(path, raw, file_cuts[i]) == 0, "write");
        sd_tensorfile *tf = (sd_tensorfile *)0x1;
        sdunet_status st = sd_tensorfile_open(path, &tf, &err);
        CHECK(st == SDUNET_E_FORMAT, "file cut at %zu: %d (%s)", file_cuts[i], (int)st,
              err.message);
        CHECK(tf == NULL, "out not cleared");
        CHECK(strncmp(err.message, path, strlen(path)) == 0, "message starts with path: %s",
              err.message);
        if (st == SDUNET_OK)
            sd_tensorfile_close(tf);
    }
    unlink(path);
    free(raw);
}

static void test_open_errors(void)
{
    sd_tensorfile *tf = NULL;
    sdunet_error err = {0};
    const char *missing = t_tmp("does-not-exist.safetensors");
    CHECK(sd_tensorfile_open(missing, &tf, &err) == SDUNET_E_IO, "missing: %s", err.message);
    CHECK(strncmp(err.message, missing, strlen(missing)) == 0 && strstr(err.message, "No such"),
          "message: %s", err.message);
    CHECK(sd_tensorfile_open(t_tmp_dir(), &tf, &err) == SDUNET_E_IO, "directory: %s", err.message);
    CHECK(sd_tensorfile_open(NULL, &tf, &err) == SDUNET_E_INVALID_ARG, "NULL path");

    /* Hostile headers through a file. */
    const char *path = t_tmp("hostile.safetensors");
    size_t size;
    unsigned char *buf =
        build("{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,1]}}", 8, &size);
    t_write_file(path, buf, size);
    free(buf);
    CHECK(sd_tensorfile_open(path, &tf, &err) == SDUNET_E_FORMAT && strstr(err.message, "Q4"),
          "Q4 via file: %s", err.message);
    buf = build_raw((uint64_t)1 << 63, "{}", NULL, 0, &size);
    t_write_file(path, buf, size);
    free(buf);
    CHECK(sd_tensorfile_open(path, &tf, &err) == SDUNET_E_FORMAT, "2^63 via file: %s", err.message);
    /* A zip file goes to the .ckpt reader. */
    t_write_file(path, "PK\x03\x04\0\0\0\0\0\0\0\0", 12);
    sdunet_status st = sd_tensorfile_open(path, &tf, &err);
    CHECK(st != SDUNET_OK, "bogus zip accepted");
    CHECK(strncmp(err.message, path, strlen(path)) == 0, "ckpt message has path: %s", err.message);
    unlink(path);
}

/* Random corruption of a small valid file: every outcome is fine as long
 * as nothing crashes (ASan/UBSan catch the rest) and a success is sane. */
static void test_corruption(void)
{
    const char *h = "{\"__metadata__\":{\"format\":\"pt\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2],"
                    "\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"BF16\",\"shape\":[1,3],"
                    "\"data_offsets\":[8,14]}}  ";
    size_t size;
    unsigned char *orig = build(h, 14, &size);
    unsigned char *buf = malloc(size);
    uint64_t s = 88172645463325252ull;
    int ok = 0, failed = 0;
    sdunet_error err = {0};
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(buf, orig, size);
        int flips = 1 + iter % 4;
        for (int f = 0; f < flips; f++) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            size_t at = (size_t)(s % size);
            buf[at] = (unsigned char)(s >> 32);
        }
        sd_tensorfile *tf = NULL;
        sdunet_status st = parse_buf(buf, size, &tf, &err);
        if (st == SDUNET_OK) {
            ok++;
            for (size_t i = 0; i < tf->count; i++) {
                const unsigned char *d = tf->tensors[i].data;
                CHECK(d >= buf + 8 && d + tf->tensors[i].nbytes <= buf + size, "range");
            }
            free_parsed(tf);
        } else {
            failed++;
            CHECK(st == SDUNET_E_FORMAT, "status %d (%s)", (int)st, err.message);
        }
    }
    for (size_t cut = 0; cut < size; cut++) {
        sdunet_status st = parse_buf(orig, cut, NULL, &err);
        CHECK(st == SDUNET_E_FORMAT, "cut %zu: %d", cut, (int)st);
    }
    CHECK(ok > 0 && failed > 0, "ok %d failed %d", ok, failed);
    free(buf);
    free(orig);
}

int main(void)
{
    RUN(test_dtypes);
    RUN(test_f16);
    RUN(test_bf16);
    RUN(test_tensor_to_f32);
    RUN(test_micro_f32);
    RUN(test_micro_halves);
    RUN(test_write_roundtrip);
    RUN(test_rewrite_reference);
    RUN(test_write_errors);
    RUN(test_bad_headers);
    RUN(test_bad_lengths);
    RUN(test_truncated_real);
    RUN(test_open_errors);
    RUN(test_corruption);
    return t_summary();
}
