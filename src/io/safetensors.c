/* safetensors reader and writer.
 *
 * Layout: u64 little-endian header length N, N bytes of JSON header, then
 * the data region. Offsets in the header are relative to the data region.
 * The reader trusts nothing in the file: every size is overflow-checked and
 * every tensor's bytes must lie inside the data region without overlapping
 * another tensor's. */
#include "io/json.h"
#include "io/fileio.h"
#include "io/tensorfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)
#define ST_MAX_TENSORS ((size_t)1000000)

/* ---------------------------------------------------------------- strings */

typedef struct strbuf {
    char *p;
    size_t len, cap;
    int failed; /* an allocation or size overflow happened; p stays valid */
} strbuf;

static void sb_reserve(strbuf *b, size_t extra)
{
    size_t need;
    if (b->failed || !sd_add_size(b->len, extra + 1, &need)) {
        b->failed = 1;
        return;
    }
    if (need <= b->cap)
        return;
    size_t ncap = b->cap ? b->cap : 256;
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2) {
            b->failed = 1;
            return;
        }
        ncap *= 2;
    }
    char *np = sd_alloc(ncap);
    if (!np) {
        b->failed = 1;
        return;
    }
    if (b->len)
        memcpy(np, b->p, b->len);
    sd_free(b->p);
    b->p = np;
    b->cap = ncap;
}

static void sb_put(strbuf *b, const char *s, size_t n)
{
    sb_reserve(b, n);
    if (b->failed)
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(strbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void sb_u64(strbuf *b, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    sb_put(b, tmp, (size_t)n);
}

/* Writes s as a JSON string literal. The text is assumed valid UTF-8 (the
 * callers check); only quote, backslash and control characters need escapes. */
static void sb_json_string(strbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    const char *run = s;
    for (const char *q = s;; q++) {
        unsigned char c = (unsigned char)*q;
        if (c != '\0' && c >= 0x20 && c != '"' && c != '\\')
            continue;
        sb_put(b, run, (size_t)(q - run));
        if (c == '\0')
            break;
        /* Short forms where JSON has them, as serde_json (the reference
         * writer) does; \u00XX for the other control characters. */
        char esc[8] = {'\\', 0, 0};
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default: snprintf(esc, sizeof esc, "\\u%04x", c); break;
        }
        sb_puts(b, esc);
        run = q + 1;
    }
    sb_put(b, "\"", 1);
}

/* Compact JSON text of a {string: string} object. */
static void sb_string_map(strbuf *b, const sd_json *obj)
{
    sb_put(b, "{", 1);
    for (size_t i = 0; i < obj->len; i++) {
        if (i)
            sb_put(b, ",", 1);
        sb_json_string(b, obj->keys[i]);
        sb_put(b, ":", 1);
        sb_json_string(b, obj->items[i].string);
    }
    sb_put(b, "}", 1);
}

static int is_string_map(const sd_json *obj)
{
    if (obj->type != SD_JSON_OBJECT)
        return 0;
    for (size_t i = 0; i < obj->len; i++)
        if (obj->items[i].type != SD_JSON_STRING)
            return 0;
    return 1;
}

static int valid_utf8(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned char c = *p;
        size_t need;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            p++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            need = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 3;
            lo = c == 0xE0 ? 0xA0 : 0x80;
            hi = c == 0xED ? 0x9F : 0xBF;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 4;
            lo = c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xF4 ? 0x8F : 0xBF;
        } else {
            return 0;
        }
        if (p[1] < lo || p[1] > hi)
            return 0;
        for (size_t k = 2; k < need; k++)
            if (p[k] < 0x80 || p[k] > 0xBF)
                return 0;
        p += need;
    }
    return 1;
}

/* ----------------------------------------------------------------- reader */

static uint64_t read_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

typedef struct range {
    size_t begin, end;
    size_t index; /* into the tensor array, for the error message */
} range;

static int cmp_range(const void *a, const void *b)
{
    const range *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const sd_tensor_info *)a)->name, ((const sd_tensor_info *)b)->name);
}

static void free_tensors(sd_tensor_info *t, size_t n)
{
    if (!t)
        return;
    for (size_t i = 0; i < n; i++)
        sd_free(t[i].name);
    sd_free(t);
}

/* Fills one tensor from its header entry; data_size is the data region size. */
static sdunet_status parse_entry(const char *name, const sd_json *e, const unsigned char *data,
                                 size_t data_size, sd_tensor_info *t, sdunet_error *err)
{
    if (e->type != SD_JSON_OBJECT)
        return sd_fail(err, SDUNET_E_FORMAT, "safetensors: entry \"%.200s\" is not an object",
                       name);
    const sd_json *dt = sd_json_get(e, "dtype");
    const sd_json *shape = sd_json_get(e, "shape");
    const sd_json *offs = sd_json_get(e, "data_offsets");
    if (!dt || !shape || !offs)
        return sd_fail(err, SDUNET_E_FORMAT, "safetensors: tensor \"%.200s\" lacks the %s field",
                       name,
                       !dt      ? "dtype"
                       : !shape ? "shape"
                                : "data_offsets");
    if (e->len != 3)
        return sd_fail(err, SDUNET_E_FORMAT,
                       "safetensors: tensor \"%.200s\" has fields other than dtype, shape, "
                       "data_offsets",
                       name);
    if (dt->type != SD_JSON_STRING || sd_dtype_parse(dt->string, &t->dtype) != 0)
        return sd_fail(err, SDUNET_E_FORMAT,
                       "safetensors: tensor \"%.200s\" has unknown dtype %s%.40s%s", name,
                       dt->type == SD_JSON_STRING ? "\"" : "",
                       dt->type == SD_JSON_STRING ? dt->string : "(not a string)",
                       dt->type == SD_JSON_STRING ? "\"" : "");
    if (shape->type != SD_JSON_ARRAY)
        return sd_fail(err, SDUNET_E_FORMAT,
                       "safetensors: tensor \"%.200s\": shape is not an array", name);
    if (shape->len > SD_MAX_DIMS)
        return sd_fail(err, SDUNET_E_FORMAT,
                       "safetensors: tensor \"%.200s\" has %zu dimensions (at most %d supported)",
                       name, shape->len, SD_MAX_DIMS);
    t->ndim = (int)shape->len;
    size_t numel = 1;
    int overflow = 0;
    for (size_t d = 0; d < shape->len; d++) {
        const sd_json *v = &shape->items[d];
        if (v->type != SD_JSON_NUMBER || !v->is_int || v->integer < 0)
            return sd_fail(err, SDUNET_E_FORMAT,
                           "safetensors: tensor \"%.200s\": shape entry %zu is not a "
                           "non-negative integer",
                           name, d);
        t->shape[d] = v->integer;
        if ((uint64_t)v->integer > SIZE_MAX || !sd_mul_size(numel, (size_t)v->integer, &numel))
            overflow = 1;
    }
    size_t nbytes = 0;
    /* A zero dimension makes the product 0 whatever the others are; any
     * overflow on the way still marks the shape as unrepresentable. */
    if (overflow || !sd_mul_size(numel, sd_dtype_size(t->dtype), &nbytes))
        return sd_fail(err, SDUNET_E_FORMAT, "safetensors: tensor \"%.200s\": shape size overflows",
                       name);
    if (offs->type != SD_JSON_ARRAY || offs->len != 2)
        return sd_fail(err, SDUNET_E_FORMAT,
                       "safetensors: tensor \"%.200s\": data_offsets is not a [begin, end] pair",
                       name);
    for (int k = 0; k < 2; k++) {
        const sd_json *v = &offs->items[k];
        if (v->type != SD_JSON_NUMBER || !v->is_int || v->integer < 0)
            return sd_fail(err, SDUNET_E_FORMAT,
                           "safetensors: tensor \"%.200s\": data_offsets are not non-negative "
                           "integers",
                           name);
    }
    uint64_t begin = (uint64_t)offs->items[0].integer;
    uint64_t end = (uint64_t)offs->items[1].integer;
    if (begin > end)
        return sd_fail(err, SDUNET_E_FORMAT,
                       "safetensors: tensor \"%.200s\": data_offsets begin %llu > end %llu", name,
                       (unsigned long long)begin, (unsigned long long)end);
    if (end > data_size)
        return sd_fail(err, SDUNET_E_FORMAT,
                       "safetensors: tensor \"%.200s\": data_offsets end %llu is past the data "
                       "region (%zu bytes; file truncated?)",
                       name, (unsigned long long)end, data_size);
    if (end - begin != nbytes)
        return sd_fail(err, SDUNET_E_FORMAT,
                       "safetensors: tensor \"%.200s\": data_offsets span %llu bytes but shape "
                       "and dtype need %zu",
                       name, (unsigned long long)(end - begin), nbytes);
    t->numel = numel;
    t->nbytes = nbytes;
    t->data = data + begin;
    return SDUNET_OK;
}

sdunet_status sd_safetensors_parse(const void *map, size_t size, sd_tensorfile *tf,
                                   sdunet_error *err)
{
    if (!tf || (!map && size))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "sd_safetensors_parse: NULL argument");
    tf->tensors = NULL;
    tf->count = 0;
    tf->metadata = NULL;
    if (size < 8)
        return sd_fail(err, SDUNET_E_FORMAT,
                       "safetensors: file too small (%zu bytes) for the header length", size);
    const unsigned char *base = map;
    uint64_t hlen = read_le64(base);
    if (hlen > size - 8)
        return sd_fail(err, SDUNET_E_FORMAT,
                       "safetensors: header length %llu is past the end of the file (%zu bytes)",
                       (unsigned long long)hlen, size);
    if (hlen > ST_MAX_HEADER)
        return sd_fail(err, SDUNET_E_FORMAT,
                       "safetensors: header length %llu exceeds the %llu byte limit",
                       (unsigned long long)hlen, (unsigned long long)ST_MAX_HEADER);
    if (hlen < 2)
        return sd_fail(err, SDUNET_E_FORMAT, "safetensors: header too short (%llu bytes)",
                       (unsigned long long)hlen);
    const unsigned char *data = base + 8 + hlen;
    size_t data_size = size - 8 - (size_t)hlen;

    sd_json *root = NULL;
    sdunet_status st = sd_json_parse((const char *)base + 8, (size_t)hlen, &root, err);
    if (st) {
        /* JSON byte offsets are relative to the header; say so. */
        sd_err_prefix(err, "safetensors header (offsets from byte 8)");
        return st;
    }
    if (root->type != SD_JSON_OBJECT) {
        sd_json_free(root);
        return sd_fail(err, SDUNET_E_FORMAT, "safetensors: header is not a JSON object");
    }

    const sd_json *meta = sd_json_get(root, "__metadata__");
    size_t count = root->len - (meta ? 1 : 0);
    if (count > ST_MAX_TENSORS) {
        sd_json_free(root);
        return sd_fail(err, SDUNET_E_FORMAT, "safetensors: %zu tensors (limit %zu)", count,
                       ST_MAX_TENSORS);
    }

    char *metadata = NULL;
    sd_tensor_info *tensors = NULL;
    range *ranges = NULL;
    size_t built = 0;
    if (meta) {
        if (!is_string_map(meta)) {
            st = sd_fail(err, SDUNET_E_FORMAT,
                         "safetensors: __metadata__ is not an object of string values");
            goto fail;
        }
        strbuf sb = {0};
        sb_string_map(&sb, meta);
        if (sb.failed) {
            sd_free(sb.p);
            st = sd_fail(err, SDUNET_E_NOMEM, "safetensors: out of memory for metadata");
            goto fail;
        }
        metadata = sb.p;
    }

    tensors = sd_calloc(count ? count : 1, sizeof *tensors);
    ranges = sd_calloc(count ? count : 1, sizeof *ranges);
    if (!tensors || !ranges) {
        st = sd_fail(err, SDUNET_E_NOMEM, "safetensors: out of memory for %zu tensors", count);
        goto fail;
    }
    for (size_t i = 0; i < root->len; i++) {
        const char *name = root->keys[i];
        if (meta && &root->items[i] == meta)
            continue;
        sd_tensor_info *t = &tensors[built];
        st = parse_entry(name, &root->items[i], data, data_size, t, err);
        if (st)
            goto fail;
        size_t nl = strlen(name);
        t->name = sd_alloc(nl + 1);
        if (!t->name) {
            st = sd_fail(err, SDUNET_E_NOMEM, "safetensors: out of memory");
            goto fail;
        }
        memcpy(t->name, name, nl + 1);
        ranges[built].begin = (size_t)((const unsigned char *)t->data - data);
        ranges[built].end = ranges[built].begin + t->nbytes;
        ranges[built].index = built;
        built++;
    }

    /* Overlap check on the byte ranges. Empty tensors own no bytes, so they
     * are left out; they cannot alias anything. */
    {
        size_t nr = 0;
        for (size_t i = 0; i < built; i++)
            if (ranges[i].end > ranges[i].begin)
                ranges[nr++] = ranges[i];
        qsort(ranges, nr, sizeof *ranges, cmp_range);
        for (size_t i = 1; i < nr; i++)
            if (ranges[i].begin < ranges[i - 1].end) {
                st = sd_fail(err, SDUNET_E_FORMAT,
                             "safetensors: tensors \"%.200s\" [%zu, %zu) and \"%.200s\" [%zu, "
                             "%zu) overlap",
                             tensors[ranges[i - 1].index].name, ranges[i - 1].begin,
                             ranges[i - 1].end, tensors[ranges[i].index].name, ranges[i].begin,
                             ranges[i].end);
                goto fail;
            }
    }

    qsort(tensors, built, sizeof *tensors, cmp_tensor_name);
    /* The JSON parser already rejects duplicate keys; kept so the table's
     * binary search invariant never rests on another module. */
    for (size_t i = 1; i < built; i++)
        if (strcmp(tensors[i - 1].name, tensors[i].name) == 0) {
            st = sd_fail(err, SDUNET_E_FORMAT, "safetensors: duplicate tensor name \"%.200s\"",
                         tensors[i].name);
            goto fail;
        }

    sd_free(ranges);
    sd_json_free(root);
    tf->tensors = tensors;
    tf->count = built;
    tf->metadata = metadata;
    tf->format = "safetensors";
    return SDUNET_OK;

fail:
    free_tensors(tensors, built);
    sd_free(ranges);
    sd_free(metadata);
    sd_json_free(root);
    return st;
}

/* ----------------------------------------------------------------- writer */

static int cmp_tensor_ptr(const void *a, const void *b)
{
    const sd_tensor_info *x = *(const sd_tensor_info *const *)a;
    const sd_tensor_info *y = *(const sd_tensor_info *const *)b;
    return strcmp(x->name, y->name);
}

static sdunet_status check_tensor_arg(const sd_tensor_info *t, size_t i, sdunet_error *err)
{
    if (!t->name)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "safetensors write: tensor %zu has no name", i);
    if (!valid_utf8(t->name))
        return sd_fail(err, SDUNET_E_INVALID_ARG,
                       "safetensors write: tensor %zu name is not valid UTF-8", i);
    if (strcmp(t->name, "__metadata__") == 0)
        return sd_fail(err, SDUNET_E_INVALID_ARG,
                       "safetensors write: \"__metadata__\" is reserved, not a tensor name");
    if ((unsigned)t->dtype >= SD_DT_COUNT)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "safetensors write: tensor \"%.200s\": bad dtype",
                       t->name);
    if (t->ndim < 0 || t->ndim > SD_MAX_DIMS)
        return sd_fail(err, SDUNET_E_INVALID_ARG,
                       "safetensors write: tensor \"%.200s\": ndim %d out of range", t->name,
                       t->ndim);
    size_t numel = 1;
    int overflow = 0;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0)
            return sd_fail(err, SDUNET_E_INVALID_ARG,
                           "safetensors write: tensor \"%.200s\": negative dimension", t->name);
        if ((uint64_t)t->shape[d] > SIZE_MAX || !sd_mul_size(numel, (size_t)t->shape[d], &numel))
            overflow = 1;
    }
    size_t nbytes;
    if (overflow || !sd_mul_size(numel, sd_dtype_size(t->dtype), &nbytes))
        return sd_fail(err, SDUNET_E_INVALID_ARG,
                       "safetensors write: tensor \"%.200s\": size overflows", t->name);
    if (nbytes != t->nbytes)
        return sd_fail(err, SDUNET_E_INVALID_ARG,
                       "safetensors write: tensor \"%.200s\": nbytes %zu does not match shape "
                       "(%zu)",
                       t->name, t->nbytes, nbytes);
    if (nbytes && !t->data)
        return sd_fail(err, SDUNET_E_INVALID_ARG,
                       "safetensors write: tensor \"%.200s\" has no data", t->name);
    return SDUNET_OK;
}

/* Builds the padded header text for the sorted tensors. */
static sdunet_status build_header(const sd_tensor_info *const *sorted, size_t n,
                                  const char *metadata_json, strbuf *sb, sdunet_error *err)
{
    sb_puts(sb, "{\"__metadata__\":");
    if (metadata_json) {
        sd_json *meta = NULL;
        sdunet_status st = sd_json_parse(metadata_json, strlen(metadata_json), &meta, err);
        if (st) {
            /* Bad metadata text is the caller's mistake, not a bad file. */
            if (st != SDUNET_E_NOMEM) {
                st = SDUNET_E_INVALID_ARG;
                if (err)
                    err->code = st;
            }
            sd_err_prefix(err, "safetensors write: metadata_json");
            return st;
        }
        if (!is_string_map(meta)) {
            sd_json_free(meta);
            return sd_fail(err, SDUNET_E_INVALID_ARG,
                           "safetensors write: metadata_json is not an object of string values");
        }
        sb_string_map(sb, meta);
        sd_json_free(meta);
    } else {
        sb_puts(sb, "{\"format\":\"pt\"}");
    }
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const sd_tensor_info *t = sorted[i];
        sb_put(sb, ",", 1);
        sb_json_string(sb, t->name);
        sb_puts(sb, ":{\"dtype\":\"");
        sb_puts(sb, sd_dtype_name(t->dtype));
        sb_puts(sb, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            if (d)
                sb_put(sb, ",", 1);
            sb_u64(sb, (uint64_t)t->shape[d]);
        }
        sb_puts(sb, "],\"data_offsets\":[");
        sb_u64(sb, off);
        sb_put(sb, ",", 1);
        if ((uint64_t)t->nbytes > UINT64_MAX - off || off + t->nbytes > INT64_MAX)
            return sd_fail(err, SDUNET_E_INVALID_ARG, "safetensors write: total size overflows");
        off += t->nbytes;
        sb_u64(sb, off);
        sb_puts(sb, "]}");
    }
    sb_put(sb, "}", 1);
    /* Pad with spaces so the data region starts 8-byte aligned, as the
     * reference implementation does. */
    while (!sb->failed && sb->len % 8)
        sb_put(sb, " ", 1);
    if (sb->failed)
        return sd_fail(err, SDUNET_E_NOMEM, "safetensors write: out of memory for the header");
    if (sb->len > ST_MAX_HEADER)
        return sd_fail(err, SDUNET_E_INVALID_ARG,
                       "safetensors write: header would be %zu bytes (limit %llu)", sb->len,
                       (unsigned long long)ST_MAX_HEADER);
    return SDUNET_OK;
}

sdunet_status sd_safetensors_write(const char *path, const sd_tensor_info *tensors, size_t n,
                                   const char *metadata_json, sdunet_error *err)
{
    if (!path || (!tensors && n))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "safetensors write: NULL argument");
    if (n > ST_MAX_TENSORS)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "safetensors write: %zu tensors (limit %zu)", n,
                       ST_MAX_TENSORS);
    for (size_t i = 0; i < n; i++) {
        sdunet_status st = check_tensor_arg(&tensors[i], i, err);
        if (st)
            return st;
    }
    const sd_tensor_info **sorted = sd_calloc(n ? n : 1, sizeof *sorted);
    if (!sorted)
        return sd_fail(err, SDUNET_E_NOMEM, "safetensors write: out of memory");
    for (size_t i = 0; i < n; i++)
        sorted[i] = &tensors[i];
    qsort(sorted, n, sizeof *sorted, cmp_tensor_ptr);
    for (size_t i = 1; i < n; i++)
        if (strcmp(sorted[i - 1]->name, sorted[i]->name) == 0) {
            sdunet_status st =
                sd_fail(err, SDUNET_E_INVALID_ARG,
                        "safetensors write: duplicate tensor name \"%.200s\"", sorted[i]->name);
            sd_free(sorted);
            return st;
        }

    strbuf sb = {0};
    char *tmp_path = NULL;
    int fd = -1;
    sdunet_status st = build_header(sorted, n, metadata_json, &sb, err);
    if (st)
        goto done;

    size_t plen = strlen(path);
    tmp_path = sd_alloc(plen + 5);
    if (!tmp_path) {
        st = sd_fail(err, SDUNET_E_NOMEM, "safetensors write: out of memory");
        goto done;
    }
    memcpy(tmp_path, path, plen);
    memcpy(tmp_path + plen, ".tmp", 5);

    fd = open(tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        st = sd_fail(err, SDUNET_E_IO, "%s: cannot create: %s", tmp_path, strerror(errno));
        goto done;
    }
    unsigned char len8[8];
    uint64_t hl = sb.len;
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)(hl >> (8 * i));
    if (sd_write_all(fd, len8, 8) || sd_write_all(fd, sb.p, sb.len))
        goto io_error;
    for (size_t i = 0; i < n; i++)
        if (sorted[i]->nbytes && sd_write_all(fd, sorted[i]->data, sorted[i]->nbytes))
            goto io_error;
    /* Flush before the rename so a crash cannot leave a complete-looking
     * name pointing at incomplete data. */
    if (fsync(fd) != 0 && errno != EINVAL && errno != EROFS)
        goto io_error;
    if (close(fd) != 0) {
        fd = -1;
        goto io_error;
    }
    fd = -1;
    if (rename(tmp_path, path) != 0) {
        st = sd_fail(err, SDUNET_E_IO, "%s: cannot rename %s into place: %s", path, tmp_path,
                     strerror(errno));
        unlink(tmp_path);
        goto done;
    }
    st = SDUNET_OK;
    goto done;

io_error:
    st = sd_fail(err, SDUNET_E_IO, "%s: write failed: %s", tmp_path, strerror(errno));
    if (fd >= 0)
        close(fd);
    fd = -1;
    unlink(tmp_path);
done:
    if (fd >= 0)
        close(fd);
    sd_free(tmp_path);
    sd_free(sb.p);
    sd_free(sorted);
    return st;
}
