/* NumPy .npy reader and writer.
 *
 * A file is: "\x93NUMPY", major and minor version bytes, the header length
 * (u16 LE for 1.x, u32 LE for 2.x and 3.x), then the header: a Python dict
 * literal such as {'descr': '<f4', 'fortran_order': False, 'shape': (1, 4), }
 * padded with spaces and ended by '\n', then the raw array data. The dict is
 * parsed by a small tokenizer that accepts exactly the literal forms numpy
 * writes (any key order, any spacing, trailing commas). */
#include "io/fileio.h"
#include "io/npy.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6
#define NPY_ALIGN 64

typedef struct npy_header {
    char descr[32];
    int fortran;
    int ndim;
    int64_t shape[SD_MAX_DIMS];
    size_t elem_size; /* 2, 4 or 8 */
    size_t numel;
    const unsigned char *data;
} npy_header;

typedef struct lexer {
    const char *p;
    size_t len, pos;
} lexer;

static void lx_ws(lexer *lx)
{
    while (lx->pos < lx->len) {
        char c = lx->p[lx->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        lx->pos++;
    }
}

/* Consumes `c` (after optional spaces) if it is next. */
static int lx_accept(lexer *lx, char c)
{
    lx_ws(lx);
    if (lx->pos < lx->len && lx->p[lx->pos] == c) {
        lx->pos++;
        return 1;
    }
    return 0;
}

/* A quoted Python string without escapes (numpy never writes any). */
static int lx_string(lexer *lx, char *out, size_t cap)
{
    lx_ws(lx);
    if (lx->pos >= lx->len)
        return 0;
    char q = lx->p[lx->pos];
    if (q != '\'' && q != '"')
        return 0;
    size_t i = lx->pos + 1, n = 0;
    while (i < lx->len && lx->p[i] != q) {
        char c = lx->p[i];
        if (c == '\\' || c == '\n' || n + 1 >= cap)
            return 0;
        out[n++] = c;
        i++;
    }
    if (i >= lx->len)
        return 0;
    out[n] = '\0';
    lx->pos = i + 1;
    return 1;
}

static int lx_word(lexer *lx, const char *w)
{
    lx_ws(lx);
    size_t n = strlen(w);
    if (lx->len - lx->pos < n || memcmp(lx->p + lx->pos, w, n) != 0)
        return 0;
    /* Must not run on into an identifier ("Falsey"). */
    if (lx->pos + n < lx->len) {
        char c = lx->p[lx->pos + n];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')
            return 0;
    }
    lx->pos += n;
    return 1;
}

/* A non-negative Python int (old files may carry a Python 2 'L' suffix).
 * Returns 1 on success, 0 if no integer is here, -1 if it overflows int64. */
static int lx_int(lexer *lx, int64_t *out)
{
    lx_ws(lx);
    size_t i = lx->pos;
    if (i >= lx->len || lx->p[i] < '0' || lx->p[i] > '9')
        return 0;
    int64_t v = 0;
    int overflow = 0;
    while (i < lx->len && lx->p[i] >= '0' && lx->p[i] <= '9') {
        int d = lx->p[i] - '0';
        if (v > (INT64_MAX - d) / 10)
            overflow = 1;
        else
            v = v * 10 + d;
        i++;
    }
    if (i < lx->len && (lx->p[i] == 'L' || lx->p[i] == 'l'))
        i++;
    lx->pos = i;
    if (overflow)
        return -1;
    *out = v;
    return 1;
}

static sdunet_status bad_header(sdunet_error *err, const char *what, size_t at)
{
    return sd_fail(err, SDUNET_E_FORMAT, "npy: malformed header: %s at header byte %zu", what, at);
}

static sdunet_status parse_shape(lexer *lx, npy_header *h, sdunet_error *err)
{
    if (!lx_accept(lx, '('))
        return bad_header(err, "'(' expected for shape", lx->pos);
    h->ndim = 0;
    for (;;) {
        if (lx_accept(lx, ')'))
            return SDUNET_OK;
        int64_t v;
        int r = lx_int(lx, &v);
        if (r < 0)
            return sd_fail(err, SDUNET_E_FORMAT, "npy: shape dimension overflows int64");
        if (r == 0)
            return bad_header(err, "non-negative integer expected in shape", lx->pos);
        if (h->ndim >= SD_MAX_DIMS)
            return sd_fail(err, SDUNET_E_FORMAT, "npy: more than %d dimensions", SD_MAX_DIMS);
        h->shape[h->ndim++] = v;
        if (lx_accept(lx, ','))
            continue;
        if (lx_accept(lx, ')'))
            return SDUNET_OK;
        return bad_header(err, "',' or ')' expected in shape", lx->pos);
    }
}

static int host_is_le(void)
{
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

/* Parses the dict text and checks it describes an array this reader takes. */
static sdunet_status parse_dict(const char *text, size_t len, npy_header *h, sdunet_error *err)
{
    lexer lx = {text, len, 0};
    int have_descr = 0, have_fortran = 0, have_shape = 0;
    if (!lx_accept(&lx, '{'))
        return bad_header(err, "'{' expected", lx.pos);
    for (;;) {
        if (lx_accept(&lx, '}'))
            break;
        char key[32];
        size_t key_at = lx.pos;
        if (!lx_string(&lx, key, sizeof key))
            return bad_header(err, "quoted key expected", key_at);
        if (!lx_accept(&lx, ':'))
            return bad_header(err, "':' expected", lx.pos);
        int *seen;
        if (strcmp(key, "descr") == 0) {
            seen = &have_descr;
            /* A list here is a structured dtype. */
            lx_ws(&lx);
            if (lx.pos < lx.len && lx.p[lx.pos] == '[')
                return sd_fail(err, SDUNET_E_UNSUPPORTED,
                               "npy: structured dtypes are not "
                               "supported");
            if (!lx_string(&lx, h->descr, sizeof h->descr))
                return bad_header(err, "quoted descr expected", lx.pos);
        } else if (strcmp(key, "fortran_order") == 0) {
            seen = &have_fortran;
            if (lx_word(&lx, "True"))
                h->fortran = 1;
            else if (lx_word(&lx, "False"))
                h->fortran = 0;
            else
                return bad_header(err, "True or False expected for fortran_order", lx.pos);
        } else if (strcmp(key, "shape") == 0) {
            seen = &have_shape;
            sdunet_status st = parse_shape(&lx, h, err);
            if (st)
                return st;
        } else {
            return sd_fail(err, SDUNET_E_FORMAT, "npy: unexpected header key '%s'", key);
        }
        if (*seen)
            return sd_fail(err, SDUNET_E_FORMAT, "npy: duplicate header key '%s'", key);
        *seen = 1;
        if (lx_accept(&lx, ','))
            continue;
        if (lx_accept(&lx, '}'))
            break;
        return bad_header(err, "',' or '}' expected", lx.pos);
    }
    lx_ws(&lx);
    if (lx.pos != lx.len)
        return bad_header(err, "trailing characters after the dict", lx.pos);
    if (!have_descr || !have_fortran || !have_shape)
        return sd_fail(err, SDUNET_E_FORMAT, "npy: header lacks the '%s' key",
                       !have_descr     ? "descr"
                       : !have_fortran ? "fortran_order"
                                       : "shape");

    const char *d = h->descr;
    char order = d[0];
    int native_le = order == '=' && host_is_le();
    if (order == '>' || (order == '=' && !native_le))
        return sd_fail(err, SDUNET_E_UNSUPPORTED, "npy: big-endian data ('%s') is not supported",
                       d);
    if ((order != '<' && !native_le) || d[1] != 'f' || d[2] < '0' || d[2] > '9' || d[3] != '\0' ||
        (d[2] != '2' && d[2] != '4' && d[2] != '8'))
        return sd_fail(err, SDUNET_E_UNSUPPORTED,
                       "npy: dtype '%s' is not supported (float16/32/64 little-endian only)", d);
    h->elem_size = (size_t)(d[2] - '0');
    if (h->fortran)
        return sd_fail(err, SDUNET_E_UNSUPPORTED, "npy: Fortran-order arrays are not supported");
    return SDUNET_OK;
}

static uint32_t rd_le(const unsigned char *p, int n)
{
    uint32_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static sdunet_status parse_header(const void *buf, size_t size, npy_header *h, sdunet_error *err)
{
    memset(h, 0, sizeof *h);
    const unsigned char *b = buf;
    if (!buf || size < NPY_MAGIC_LEN + 2 || memcmp(b, NPY_MAGIC, NPY_MAGIC_LEN) != 0)
        return sd_fail(err, SDUNET_E_FORMAT, "npy: not a .npy file (bad magic)");
    int major = b[6], minor = b[7];
    if ((major != 1 && major != 2 && major != 3) || minor != 0)
        return sd_fail(err, SDUNET_E_UNSUPPORTED, "npy: format version %d.%d is not supported",
                       major, minor);
    size_t len_bytes = major == 1 ? 2 : 4;
    size_t prefix = NPY_MAGIC_LEN + 2 + len_bytes;
    if (size < prefix)
        return sd_fail(err, SDUNET_E_FORMAT, "npy: truncated header (%zu bytes)", size);
    size_t hlen = rd_le(b + 8, (int)len_bytes);
    if (hlen > size - prefix)
        return sd_fail(err, SDUNET_E_FORMAT,
                       "npy: truncated header (declares %zu bytes, file has %zu after the prefix)",
                       hlen, size - prefix);
    sdunet_status st = parse_dict((const char *)b + prefix, hlen, h, err);
    if (st)
        return st;
    size_t numel = 1, nbytes;
    for (int i = 0; i < h->ndim; i++)
        if ((uint64_t)h->shape[i] > SIZE_MAX || !sd_mul_size(numel, (size_t)h->shape[i], &numel))
            return sd_fail(err, SDUNET_E_FORMAT, "npy: shape size overflows");
    if (!sd_mul_size(numel, h->elem_size, &nbytes))
        return sd_fail(err, SDUNET_E_FORMAT, "npy: shape size overflows");
    size_t have = size - prefix - hlen;
    if (have < nbytes)
        return sd_fail(err, SDUNET_E_FORMAT,
                       "npy: truncated data (shape needs %zu bytes, file has %zu)", nbytes, have);
    h->numel = numel;
    h->data = b + prefix + hlen;
    return SDUNET_OK;
}

static double load_elem(const npy_header *h, size_t i)
{
    const unsigned char *p = h->data + i * h->elem_size;
    switch (h->elem_size) {
    case 2: return sd_f16_to_f32((uint16_t)rd_le(p, 2));
    case 4: {
        uint32_t u = rd_le(p, 4);
        float f;
        memcpy(&f, &u, sizeof f);
        return f;
    }
    default: {
        uint64_t u = (uint64_t)rd_le(p, 4) | ((uint64_t)rd_le(p + 4, 4) << 32);
        double d;
        memcpy(&d, &u, sizeof d);
        return d;
    }
    }
}

/* Shared by the f32 and f64 entry points: want64 picks the output type. */
static sdunet_status npy_parse(const void *buf, size_t size, int want64, void **data, int *ndim,
                               int64_t shape[SD_MAX_DIMS], sdunet_error *err)
{
    if (!data || !ndim || !shape || (!buf && size))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "npy: NULL argument");
    *data = NULL;
    npy_header h;
    sdunet_status st = parse_header(buf, size, &h, err);
    if (st)
        return st;
    size_t out_size = want64 ? sizeof(double) : sizeof(float), bytes;
    if (!sd_mul_size(h.numel, out_size, &bytes))
        return sd_fail(err, SDUNET_E_NOMEM, "npy: array too large");
    void *out = sd_alloc(bytes);
    if (!out)
        return sd_fail(err, SDUNET_E_NOMEM, "npy: out of memory for %zu elements", h.numel);
    if (want64) {
        double *o = out;
        for (size_t i = 0; i < h.numel; i++)
            o[i] = load_elem(&h, i);
    } else {
        float *o = out;
        for (size_t i = 0; i < h.numel; i++)
            o[i] = (float)load_elem(&h, i);
    }
    *data = out;
    *ndim = h.ndim;
    for (int i = 0; i < SD_MAX_DIMS; i++)
        shape[i] = i < h.ndim ? h.shape[i] : 0;
    return SDUNET_OK;
}

sdunet_status sd_npy_parse_f32(const void *buf, size_t size, float **data, int *ndim,
                               int64_t shape[SD_MAX_DIMS], sdunet_error *err)
{
    if (!data)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "npy: NULL argument");
    void *out = NULL;
    sdunet_status st = npy_parse(buf, size, 0, &out, ndim, shape, err);
    *data = out;
    return st;
}

/* Maps the file read-only and parses it; messages are prefixed with path. */
static sdunet_status npy_read(const char *path, int want64, void **data, int *ndim,
                              int64_t shape[SD_MAX_DIMS], sdunet_error *err)
{
    if (!path || !data)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "npy: NULL argument");
    *data = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sd_fail(err, SDUNET_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat stt;
    if (fstat(fd, &stt) != 0) {
        int e = errno;
        close(fd);
        return sd_fail(err, SDUNET_E_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(stt.st_mode)) {
        close(fd);
        return sd_fail(err, SDUNET_E_IO, "%s: not a regular file", path);
    }
    if (stt.st_size == 0) {
        close(fd);
        return sd_fail(err, SDUNET_E_FORMAT, "%s: empty file", path);
    }
    if ((uint64_t)stt.st_size > SIZE_MAX) {
        close(fd);
        return sd_fail(err, SDUNET_E_IO, "%s: file too large", path);
    }
    size_t size = (size_t)stt.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED)
        return sd_fail(err, SDUNET_E_IO, "%s: cannot map: %s", path, strerror(e));
    sdunet_status st = npy_parse(map, size, want64, data, ndim, shape, err);
    munmap(map, size);
    if (st)
        sd_err_prefix(err, path);
    return st;
}

sdunet_status sd_npy_read_f32(const char *path, float **data, int *ndim, int64_t shape[SD_MAX_DIMS],
                              sdunet_error *err)
{
    if (!data || !ndim || !shape)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "npy: NULL argument");
    void *out = NULL;
    sdunet_status st = npy_read(path, 0, &out, ndim, shape, err);
    *data = out;
    return st;
}

sdunet_status sd_npy_read_f64(const char *path, double **data, int *ndim,
                              int64_t shape[SD_MAX_DIMS], sdunet_error *err)
{
    if (!data || !ndim || !shape)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "npy: NULL argument");
    void *out = NULL;
    sdunet_status st = npy_read(path, 1, &out, ndim, shape, err);
    *data = out;
    return st;
}

sdunet_status sd_npy_write_f32(const char *path, const float *data, int ndim, const int64_t *shape,
                               sdunet_error *err)
{
    if (!path || (ndim > 0 && !shape))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "npy write: NULL argument");
    if (ndim < 0 || ndim > SD_MAX_DIMS)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "npy write: ndim %d out of range", ndim);
    size_t numel = 1, nbytes;
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || (uint64_t)shape[i] > SIZE_MAX ||
            !sd_mul_size(numel, (size_t)shape[i], &numel))
            return sd_fail(err, SDUNET_E_INVALID_ARG, "npy write: bad or overflowing shape");
    if (!sd_mul_size(numel, sizeof(float), &nbytes))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "npy write: shape size overflows");
    if (numel && !data)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "npy write: NULL data");

    /* 10-byte prefix + dict + padding + '\n' is a multiple of 64, so the
     * data is aligned the way numpy itself writes it. Bounded: 8 dims of at
     * most 19 digits. */
    char head[512];
    int n = snprintf(head + 10, 300, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    for (int i = 0; i < ndim; i++)
        n += snprintf(head + 10 + n, 300 - (size_t)n, i ? ", %lld" : "%lld", (long long)shape[i]);
    n += snprintf(head + 10 + n, 300 - (size_t)n, ndim == 1 ? ",), }" : "), }");
    size_t total = 10 + (size_t)n + 1;
    size_t padded = (total + NPY_ALIGN - 1) / NPY_ALIGN * NPY_ALIGN;
    memset(head + 10 + n, ' ', padded - total);
    head[padded - 1] = '\n';
    memcpy(head, NPY_MAGIC, NPY_MAGIC_LEN);
    head[6] = 1;
    head[7] = 0;
    size_t hlen = padded - 10;
    head[8] = (char)(hlen & 0xFF);
    head[9] = (char)(hlen >> 8);

    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return sd_fail(err, SDUNET_E_IO, "%s: cannot create: %s", path, strerror(errno));
    int bad = sd_write_all(fd, head, padded);
    if (!bad && host_is_le()) {
        bad = nbytes ? sd_write_all(fd, data, nbytes) : 0;
    } else if (!bad) {
        /* Big-endian host: byte-swap through a small buffer. */
        unsigned char tmp[4096];
        for (size_t i = 0; i < numel && !bad;) {
            size_t k = 0;
            for (; k + 4 <= sizeof tmp && i < numel; i++, k += 4) {
                uint32_t u;
                memcpy(&u, &data[i], 4);
                for (int j = 0; j < 4; j++)
                    tmp[k + (size_t)j] = (unsigned char)(u >> (8 * j));
            }
            bad = sd_write_all(fd, tmp, k);
        }
    }
    int e = errno;
    if (close(fd) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    if (bad) {
        unlink(path);
        return sd_fail(err, SDUNET_E_IO, "%s: write failed: %s", path, strerror(e));
    }
    return SDUNET_OK;
}
