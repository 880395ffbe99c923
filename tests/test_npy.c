/* .npy reader and writer. */
#include "check.h"
#include "io/npy.h"

#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* Builds a .npy image: magic, version, header length field (2 or 4 bytes),
 * the dict padded with spaces + '\n' to a multiple of 64, then data. */
static unsigned char *build_npy(int major, const char *dict, const void *data, size_t data_len,
                                size_t *size)
{
    size_t lb = major == 1 ? 2 : 4;
    size_t prefix = 8 + lb;
    size_t dl = strlen(dict);
    size_t total = prefix + dl + 1;
    size_t padded = (total + 63) / 64 * 64;
    size_t hlen = padded - prefix;
    *size = padded + data_len;
    unsigned char *buf = malloc(*size);
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)major;
    buf[7] = 0;
    for (size_t i = 0; i < lb; i++)
        buf[8 + i] = (unsigned char)(hlen >> (8 * i));
    memcpy(buf + prefix, dict, dl);
    memset(buf + prefix + dl, ' ', padded - total);
    buf[padded - 1] = '\n';
    if (data_len)
        memcpy(buf + padded, data, data_len);
    return buf;
}

static sdunet_status parse(const void *buf, size_t size, float **data, int *ndim,
                           int64_t shape[SD_MAX_DIMS], sdunet_error *err)
{
    *data = (float *)0x1;
    sdunet_status st = sd_npy_parse_f32(buf, size, data, ndim, shape, err);
    if (st != SDUNET_OK)
        CHECK(*data == NULL, "data not cleared on error");
    return st;
}

static void expect_status(const char *label, sdunet_status want, const void *buf, size_t size)
{
    float *data;
    int ndim;
    int64_t shape[SD_MAX_DIMS];
    sdunet_error err = {0};
    sdunet_status st = parse(buf, size, &data, &ndim, shape, &err);
    CHECK(st == want, "%s: status %d, want %d (%s)", label, (int)st, (int)want, err.message);
    CHECK(st == SDUNET_OK || err.message[0], "%s: empty message", label);
    if (st == SDUNET_OK)
        sd_free(data);
}

static void expect_dict(const char *label, sdunet_status want, const char *dict, size_t data_len)
{
    unsigned char *zeros = calloc(1, data_len + 1);
    size_t size;
    unsigned char *buf = build_npy(1, dict, zeros, data_len, &size);
    expect_status(label, want, buf, size);
    free(buf);
    free(zeros);
}

static void test_read_sample(void)
{
    float *data = NULL;
    int ndim = -1;
    int64_t shape[SD_MAX_DIMS];
    sdunet_error err = {0};
    sdunet_status st = sd_npy_read_f32(t_data("tiny/sample.npy"), &data, &ndim, shape, &err);
    CHECK(st == SDUNET_OK, "%s", err.message);
    if (st)
        return;
    CHECK(ndim == 4 && shape[0] == 1 && shape[1] == 4 && shape[2] == 16 && shape[3] == 16,
          "shape %d (%lld %lld %lld %lld)", ndim, (long long)shape[0], (long long)shape[1],
          (long long)shape[2], (long long)shape[3]);
    /* Compare with the raw payload, which starts at byte 128. */
    size_t size;
    unsigned char *raw = t_read_file(t_data("tiny/sample.npy"), &size);
    CHECK(raw && size == 128 + 1024 * 4, "file size %zu", size);
    if (raw && size == 128 + 4096)
        CHECK(memcmp(raw + 128, data, 4096) == 0, "payload");
    int finite = 1;
    for (size_t i = 0; i < 1024; i++)
        finite &= isfinite(data[i]) != 0;
    CHECK(finite, "non-finite values");
    free(raw);

    /* The same data as float64. */
    double *d64 = NULL;
    st = sd_npy_read_f64(t_data("tiny/sample.npy"), &d64, &ndim, shape, &err);
    CHECK(st == SDUNET_OK && ndim == 4, "%s", err.message);
    if (st == SDUNET_OK)
        for (size_t i = 0; i < 1024; i++)
            if ((double)data[i] != d64[i]) {
                CHECK(0, "f64 read differs at %zu", i);
                break;
            }
    sd_free(d64);
    sd_free(data);
}

static void test_read_expected_f64(void)
{
    double *d = NULL;
    float *f = NULL;
    int ndim;
    int64_t shape[SD_MAX_DIMS];
    sdunet_error err = {0};
    const char *path = t_data("tiny/expected_f64.npy");
    sdunet_status st = sd_npy_read_f64(path, &d, &ndim, shape, &err);
    CHECK(st == SDUNET_OK, "%s", err.message);
    if (st)
        return;
    CHECK(ndim == 4 && shape[0] == 1 && shape[1] == 4 && shape[2] == 16 && shape[3] == 16, "shape");
    size_t size;
    unsigned char *raw = t_read_file(path, &size);
    CHECK(raw && size == 128 + 1024 * 8 && memcmp(raw + 128, d, 8192) == 0, "exact payload");
    free(raw);
    st = sd_npy_read_f32(path, &f, &ndim, shape, &err);
    CHECK(st == SDUNET_OK, "%s", err.message);
    if (st == SDUNET_OK)
        for (size_t i = 0; i < 1024; i++)
            if (f[i] != (float)d[i]) {
                CHECK(0, "f32 rounding differs at %zu", i);
                break;
            }
    sd_free(f);
    sd_free(d);
}

static void test_roundtrip(void)
{
    static const struct {
        int ndim;
        int64_t shape[4];
    } cases[] = {{4, {1, 4, 64, 64}}, {1, {7}}, {0, {0}}, {2, {3, 0}}, {3, {2, 3, 5}}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t n = 1;
        for (int i = 0; i < cases[c].ndim; i++)
            n *= (size_t)cases[c].shape[i];
        float *v = malloc((n ? n : 1) * sizeof *v);
        t_fill_random(v, n, 7 + c);
        if (n)
            v[0] = -0.0f;
        const char *path = t_tmp("rt.npy");
        sdunet_error err = {0};
        sdunet_status st = sd_npy_write_f32(path, v, cases[c].ndim, cases[c].shape, &err);
        CHECK(st == SDUNET_OK, "write: %s", err.message);
        size_t size;
        unsigned char *raw = t_read_file(path, &size);
        CHECK(raw && size >= 10, "read raw");
        if (raw) {
            size_t hl = (size_t)(raw[8] | (raw[9] << 8));
            CHECK(memcmp(raw, "\x93NUMPY\x01\x00", 8) == 0, "magic/version");
            CHECK((10 + hl) % 64 == 0, "data offset %zu not 64-aligned", 10 + hl);
            CHECK(raw[10 + hl - 1] == '\n', "header ends with newline");
            CHECK(size == 10 + hl + n * 4, "file size");
            CHECK(memcmp(raw + 10, "{'descr': '<f4', 'fortran_order': False, 'shape': (", 51) == 0,
                  "dict %.60s", raw + 10);
            if (cases[c].ndim == 1)
                CHECK(strstr((char *)raw + 10, "(7,), }") != NULL, "1-d tuple form");
            if (cases[c].ndim == 0)
                CHECK(strstr((char *)raw + 10, "'shape': (), }") != NULL, "0-d tuple form");
            if (cases[c].ndim == 4)
                CHECK(strstr((char *)raw + 10, "(1, 4, 64, 64), }") != NULL, "4-d tuple form");
        }
        free(raw);
        float *back = NULL;
        int ndim = -1;
        int64_t shape[SD_MAX_DIMS];
        st = sd_npy_read_f32(path, &back, &ndim, shape, &err);
        CHECK(st == SDUNET_OK, "read: %s", err.message);
        if (st == SDUNET_OK) {
            CHECK(ndim == cases[c].ndim, "ndim %d", ndim);
            for (int i = 0; i < ndim; i++)
                CHECK(shape[i] == cases[c].shape[i], "dim %d", i);
            CHECK(n == 0 || memcmp(back, v, n * 4) == 0, "data");
        }
        sd_free(back);
        free(v);
        unlink(path);
    }
    sdunet_error err = {0};
    int64_t neg[1] = {-1};
    CHECK(sd_npy_write_f32(t_tmp("x.npy"), NULL, 1, neg, &err) == SDUNET_E_INVALID_ARG,
          "negative dim");
    int64_t s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    float one = 1;
    CHECK(sd_npy_write_f32(t_tmp("x.npy"), &one, 9, s9, &err) == SDUNET_E_INVALID_ARG, "9 dims");
    CHECK(sd_npy_write_f32("/nonexistent-dir/x.npy", &one, 0, NULL, &err) == SDUNET_E_IO &&
              strstr(err.message, "/nonexistent-dir/x.npy"),
          "unwritable: %s", err.message);
}

static void test_f16_f64_files(void)
{
    /* float16 with subnormal, negative, max and zero values. */
    uint16_t h[6] = {0x3C00, 0xC000, 0x0001, 0x7BFF, 0x8000, 0x3555};
    size_t size;
    unsigned char *buf =
        build_npy(1, "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }", h, 12, &size);
    const char *path = t_tmp("h.npy");
    t_write_file(path, buf, size);
    free(buf);
    float *f = NULL;
    double *d = NULL;
    int ndim;
    int64_t shape[SD_MAX_DIMS];
    sdunet_error err = {0};
    CHECK(sd_npy_read_f32(path, &f, &ndim, shape, &err) == SDUNET_OK, "%s", err.message);
    CHECK(ndim == 2 && shape[0] == 2 && shape[1] == 3, "f16 shape");
    for (int i = 0; f && i < 6; i++)
        CHECK(f[i] == sd_f16_to_f32(h[i]), "f16[%d] = %g", i, f[i]);
    CHECK(f && signbit(f[4]), "-0 kept");
    CHECK(sd_npy_read_f64(path, &d, &ndim, shape, &err) == SDUNET_OK, "%s", err.message);
    for (int i = 0; d && i < 6; i++)
        CHECK(d[i] == (double)sd_f16_to_f32(h[i]), "f16->f64[%d]", i);
    sd_free(f);
    sd_free(d);

    /* float64, version 2.0 and 3.0 headers, keys in another order. */
    double v[3] = {0.1, -1e300, 1e-310};
    for (int major = 2; major <= 3; major++) {
        buf = build_npy(major, "{ 'shape':(3,),'fortran_order' :False,\"descr\":'<f8' }", v, 24,
                        &size);
        t_write_file(path, buf, size);
        free(buf);
        f = NULL;
        d = NULL;
        CHECK(sd_npy_read_f64(path, &d, &ndim, shape, &err) == SDUNET_OK, "v%d: %s", major,
              err.message);
        CHECK(ndim == 1 && shape[0] == 3, "f64 shape");
        CHECK(d && memcmp(d, v, 24) == 0, "f64 exact");
        CHECK(sd_npy_read_f32(path, &f, &ndim, shape, &err) == SDUNET_OK, "%s", err.message);
        for (int i = 0; f && i < 3; i++)
            CHECK(f[i] == (float)v[i], "f64->f32[%d]", i);
        sd_free(f);
        sd_free(d);
    }
    unlink(path);
}

static void test_header_forms(void)
{
    float v[4] = {1, 2, 3, 4};
    static const struct {
        const char *dict;
        int ndim;
        int64_t d0;
    } ok[] = {
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", 1, 4},
        {"{'descr':'<f4','fortran_order':False,'shape':(4,)}", 1, 4},
        {"{'shape': (2, 2), 'descr': '<f4', 'fortran_order': False}", 2, 2},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,2,), }", 2, 2},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (4L,), }", 1, 4},
        {"{'descr': '=f4', 'fortran_order': False, 'shape': (4,), }", 1, 4},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (), }", 0, 0},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }", 1, 0},
        {"{\n'descr' : '<f4' ,\t'fortran_order' : False , 'shape' : ( 4 , ) , }", 1, 4},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        size_t size;
        unsigned char *buf = build_npy(1, ok[i].dict, v, 16, &size);
        float *data;
        int ndim;
        int64_t shape[SD_MAX_DIMS];
        sdunet_error err = {0};
        sdunet_status st = parse(buf, size, &data, &ndim, shape, &err);
        CHECK(st == SDUNET_OK, "%s: %s", ok[i].dict, err.message);
        if (st == SDUNET_OK) {
            CHECK(ndim == ok[i].ndim && (ndim == 0 || shape[0] == ok[i].d0), "%s: shape",
                  ok[i].dict);
            CHECK(ok[i].d0 == 0 || data[0] == 1.0f, "%s: data", ok[i].dict);
            sd_free(data);
        }
        free(buf);
    }
}

static void test_bad_inputs(void)
{
    float v[4] = {1, 2, 3, 4};
    size_t size;
    unsigned char *good =
        build_npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", v, 16, &size);
    expect_status("good", SDUNET_OK, good, size);

    unsigned char *bad = malloc(size);
    memcpy(bad, good, size);
    bad[1] = 'M';
    expect_status("bad magic", SDUNET_E_FORMAT, bad, size);
    memcpy(bad, good, size);
    bad[6] = 4;
    expect_status("version 4.0", SDUNET_E_UNSUPPORTED, bad, size);
    memcpy(bad, good, size);
    bad[8] = 0xFF;
    bad[9] = 0xFF;
    expect_status("header length past end", SDUNET_E_FORMAT, bad, size);
    free(bad);
    /* Truncations: inside the magic, the length field, the header, the data. */
    size_t cuts[] = {0, 3, 8, 9, 10, 40, 63, 64, 65, 64 + 15};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        char label[32];
        snprintf(label, sizeof label, "cut at %zu", cuts[i]);
        expect_status(label, SDUNET_E_FORMAT, good, cuts[i]);
    }
    free(good);
    expect_status("NULL buffer", SDUNET_E_FORMAT, NULL, 0);

    expect_dict("big-endian", SDUNET_E_UNSUPPORTED,
                "{'descr': '>f4', 'fortran_order': False, 'shape': (4,), }", 16);
    expect_dict("fortran order", SDUNET_E_UNSUPPORTED,
                "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", 16);
    expect_dict("int32", SDUNET_E_UNSUPPORTED,
                "{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }", 16);
    expect_dict("complex", SDUNET_E_UNSUPPORTED,
                "{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }", 16);
    expect_dict("float128", SDUNET_E_UNSUPPORTED,
                "{'descr': '<f16', 'fortran_order': False, 'shape': (1,), }", 16);
    expect_dict("structured", SDUNET_E_UNSUPPORTED,
                "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (4,), }", 16);
    expect_dict("shape overflow", SDUNET_E_FORMAT,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
                16);
    expect_dict("shape overflow with elem size", SDUNET_E_FORMAT,
                "{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904,), }", 16);
    expect_dict("dim beyond int64", SDUNET_E_FORMAT,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", 16);
    expect_dict("negative dim", SDUNET_E_FORMAT,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (-4,), }", 16);
    expect_dict("9 dims", SDUNET_E_FORMAT,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }", 16);
    expect_dict("data too short", SDUNET_E_FORMAT,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", 16);
    expect_dict("missing key", SDUNET_E_FORMAT, "{'descr': '<f4', 'shape': (4,), }", 16);
    expect_dict("extra key", SDUNET_E_FORMAT,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), 'x': 1}", 16);
    expect_dict("duplicate key", SDUNET_E_FORMAT,
                "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (4,)}", 16);
    expect_dict("not a dict", SDUNET_E_FORMAT, "['<f4', False, (4,)]", 16);
    expect_dict("unterminated dict", SDUNET_E_FORMAT,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4,)", 16);
    expect_dict("unterminated tuple", SDUNET_E_FORMAT,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4, }", 16);
    expect_dict("bad bool", SDUNET_E_FORMAT,
                "{'descr': '<f4', 'fortran_order': false, 'shape': (4,), }", 16);
    expect_dict("trailing junk", SDUNET_E_FORMAT,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), } x", 16);
    expect_dict("unterminated string", SDUNET_E_FORMAT, "{'descr: '<f4'}", 16);
}

static void test_file_errors(void)
{
    float *data = NULL;
    double *d = NULL;
    int ndim;
    int64_t shape[SD_MAX_DIMS];
    sdunet_error err = {0};
    const char *missing = t_tmp("missing.npy");
    CHECK(sd_npy_read_f32(missing, &data, &ndim, shape, &err) == SDUNET_E_IO, "missing");
    CHECK(strstr(err.message, missing) != NULL, "path in message: %s", err.message);
    CHECK(sd_npy_read_f64(missing, &d, &ndim, shape, &err) == SDUNET_E_IO, "missing f64");
    const char *path = t_tmp("empty.npy");
    t_write_file(path, "", 0);
    CHECK(sd_npy_read_f32(path, &data, &ndim, shape, &err) == SDUNET_E_FORMAT, "empty: %s",
          err.message);
    t_write_file(path, "\x93NUMPY\x01\x00\x76\x00{'descr'", 17);
    CHECK(sd_npy_read_f32(path, &data, &ndim, shape, &err) == SDUNET_E_FORMAT &&
              strncmp(err.message, path, strlen(path)) == 0,
          "truncated file: %s", err.message);
    /* Truncated data of a real file. */
    size_t size;
    unsigned char *raw = t_read_file(t_data("tiny/sample.npy"), &size);
    if (raw) {
        t_write_file(path, raw, size - 1);
        CHECK(sd_npy_read_f32(path, &data, &ndim, shape, &err) == SDUNET_E_FORMAT &&
                  strstr(err.message, "truncated"),
              "truncated data: %s", err.message);
        free(raw);
    }
    CHECK(data == NULL, "data stays NULL");
    CHECK(sd_npy_parse_f32("\x93NUMPY", 6, NULL, &ndim, shape, &err) == SDUNET_E_INVALID_ARG,
          "NULL data pointer");
    CHECK(sd_npy_read_f32(t_data("tiny/sample.npy"), NULL, &ndim, shape, &err) ==
              SDUNET_E_INVALID_ARG,
          "NULL data pointer (file)");
    unlink(path);
}

/* Random corruption of a valid image never crashes. */
static void test_corruption(void)
{
    float v[6] = {1, 2, 3, 4, 5, 6};
    size_t size;
    unsigned char *good =
        build_npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", v, 24, &size);
    unsigned char *buf = malloc(size);
    uint64_t s = 0x2545F4914F6CDD1Dull;
    int ok = 0;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(buf, good, size);
        for (int f = 0; f < 1 + iter % 3; f++) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            buf[(s >> 8) % 64] = (unsigned char)s;
        }
        float *data;
        int ndim;
        int64_t shape[SD_MAX_DIMS];
        sdunet_error err = {0};
        sdunet_status st = sd_npy_parse_f32(buf, size, &data, &ndim, shape, &err);
        if (st == SDUNET_OK) {
            ok++;
            sd_free(data);
        }
    }
    CHECK(ok > 0, "no corruption parsed at all");
    free(buf);
    free(good);
}

int main(void)
{
    RUN(test_read_sample);
    RUN(test_read_expected_f64);
    RUN(test_roundtrip);
    RUN(test_f16_f64_files);
    RUN(test_header_forms);
    RUN(test_bad_inputs);
    RUN(test_file_errors);
    RUN(test_corruption);
    return t_summary();
}
