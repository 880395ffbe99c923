/* torch.save zip archives: a strict zip reader (stored entries only) and a
 * pickle interpreter that only knows the handful of opcodes and globals a
 * state dict needs. The interpreter builds plain data (ints, strings,
 * tuples, dicts, tensor descriptions) in index-linked pools, never calls
 * anything, and walks nothing recursively, so hostile files cannot recurse,
 * execute or loop. */
#include "io/ckpt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Little-endian loads (any alignment, any host byte order). */

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t rd64(const uint8_t *p)
{
    return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32);
}

/* ------------------------------------------------------------------------ */
/* CRC-32 (zip polynomial), slicing by 16: each step folds 16 input bytes
 * through 16 derived tables. The tables live in each parse's context, so
 * there is no global state; checking a 4 GB checkpoint costs a few seconds
 * at most, which the format's integrity guarantee is worth. */

typedef struct ck_crc {
    uint32_t t[16][256];
} ck_crc;

static void crc_init(ck_crc *c)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t v = n;
        for (int k = 0; k < 8; k++)
            v = (v & 1) ? (v >> 1) ^ 0xEDB88320u : v >> 1;
        c->t[0][n] = v;
    }
    for (int k = 1; k < 16; k++)
        for (int n = 0; n < 256; n++)
            c->t[k][n] = (c->t[k - 1][n] >> 8) ^ c->t[0][c->t[k - 1][n] & 0xFF];
}

static uint32_t crc_compute(const ck_crc *c, const uint8_t *p, size_t n)
{
    const uint32_t(*t)[256] = c->t;
    uint32_t crc = 0xFFFFFFFFu;
    while (n >= 16) {
        uint32_t a = crc ^ rd32(p), b = rd32(p + 4), d = rd32(p + 8), e = rd32(p + 12);
        crc = t[15][a & 0xFF] ^ t[14][(a >> 8) & 0xFF] ^ t[13][(a >> 16) & 0xFF] ^ t[12][a >> 24] ^
              t[11][b & 0xFF] ^ t[10][(b >> 8) & 0xFF] ^ t[9][(b >> 16) & 0xFF] ^ t[8][b >> 24] ^
              t[7][d & 0xFF] ^ t[6][(d >> 8) & 0xFF] ^ t[5][(d >> 16) & 0xFF] ^ t[4][d >> 24] ^
              t[3][e & 0xFF] ^ t[2][(e >> 8) & 0xFF] ^ t[1][(e >> 16) & 0xFF] ^ t[0][e >> 24];
        p += 16;
        n -= 16;
    }
    while (n--)
        crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xFF];
    return crc ^ 0xFFFFFFFFu;
}

/* ------------------------------------------------------------------------ */
/* Copies at most 80 bytes of untrusted text into buf for an error message,
 * replacing anything that is not printable ASCII. */
static const char *show(char *buf, size_t bufsize, const void *s, size_t n)
{
    const uint8_t *p = s;
    size_t lim = bufsize - 4, k = 0;
    for (size_t i = 0; i < n && k < lim; i++)
        buf[k++] = (p[i] >= 0x20 && p[i] < 0x7F) ? (char)p[i] : '?';
    if (n > lim)
        memcpy(buf + k, "...", 3), k += 3;
    buf[k] = 0;
    return buf;
}

/* ------------------------------------------------------------------------ */
/* Zip container. */

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_LOC64 0x07064b50u
#define SIG_DESC 0x08074b50u

typedef struct ck_entry {
    const char *name; /* inside the mapping, not NUL-terminated */
    size_t name_len;
    uint64_t lho;      /* local header offset */
    uint64_t data_off; /* first data byte */
    uint64_t size;     /* data bytes (stored: compressed == uncompressed) */
    uint64_t end;      /* one past the entry's last byte (data or descriptor) */
    uint32_t crc;
    int crc_checked;
} ck_entry;

typedef struct ck_ctx {
    const uint8_t *base;
    size_t size;
    ck_entry *e; /* sorted by name */
    size_t n;
    uint64_t cd_off;
    const char *prefix; /* "<prefix>/" of data.pkl, in the mapping */
    size_t prefix_len;  /* including the slash */
    ck_crc crc;
    sdunet_error *err;
} ck_ctx;

static sdunet_status multi_disk(ck_ctx *c)
{
    return sd_fail(c->err, SDUNET_E_UNSUPPORTED, "ckpt: multi-disk zip archives are unsupported");
}

static const char *method_name(unsigned m)
{
    switch (m) {
    case 1: return "shrink";
    case 6: return "implode";
    case 8: return "deflate";
    case 9: return "deflate64";
    case 12: return "bzip2";
    case 14: return "lzma";
    case 93: return "zstd";
    case 95: return "xz";
    case 98: return "ppmd";
    default: return "unknown";
    }
}

/* Entry names become part of lookups and messages: no empty names, no
 * control bytes, no absolute paths, backslashes or ".." components. */
static int name_sane(const char *s, size_t n)
{
    if (n == 0 || n > SD_CKPT_MAX_NAME || s[0] == '/')
        return 0;
    size_t comp = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || s[i] == '/') {
            if (i - comp == 2 && s[comp] == '.' && s[comp + 1] == '.')
                return 0;
            comp = i + 1;
            continue;
        }
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7F || c == '\\')
            return 0;
    }
    return 1;
}

/* Walks an extra field as (id, len, data) records. Returns 0 when the
 * records do not tile the field (a few zero pad bytes at the end are
 * tolerated); sets *z64 / *z64_len to the zip64 record if present. */
static int extra_scan(const uint8_t *x, size_t n, const uint8_t **z64, size_t *z64_len)
{
    *z64 = NULL;
    *z64_len = 0;
    size_t p = 0;
    while (n - p >= 4) {
        unsigned id = rd16(x + p), len = rd16(x + p + 2);
        if (len > n - p - 4)
            return 0;
        if (id == 0x0001) {
            if (*z64)
                return 0;
            *z64 = x + p + 4;
            *z64_len = len;
        }
        p += 4 + (size_t)len;
    }
    for (; p < n; p++)
        if (x[p] != 0)
            return 0;
    return 1;
}

static int cmp_entry_name(const void *a, const void *b)
{
    const ck_entry *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    if (c)
        return c;
    return (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

static int cmp_entry_lho(const void *a, const void *b)
{
    const ck_entry *const *x = a, *const *y = b;
    return ((*x)->lho > (*y)->lho) - ((*x)->lho < (*y)->lho);
}

static const ck_entry *find_entry(const ck_ctx *c, const char *name, size_t len)
{
    ck_entry key = {.name = name, .name_len = len};
    return bsearch(&key, c->e, c->n, sizeof *c->e, cmp_entry_name);
}

/* Locates the (zip64) end of central directory record. `records` is where
 * the trailing records begin: the central directory must end before it. */
static sdunet_status read_eocd(ck_ctx *c, uint64_t *cd_off, uint64_t *cd_size, uint64_t *count,
                               uint64_t *records)
{
    const uint8_t *b = c->base;
    size_t size = c->size;
    if (size < 22)
        return sd_fail(c->err, SDUNET_E_FORMAT, "ckpt: %zu bytes is too small for a zip archive",
                       size);
    size_t lo = size - 22 > 65535 ? size - 22 - 65535 : 0;
    size_t pos = SIZE_MAX;
    for (size_t p = size - 22 + 1; p-- > lo;) {
        if (rd32(b + p) == SIG_EOCD && p + 22 + rd16(b + p + 20) == size) {
            pos = p;
            break;
        }
    }
    if (pos == SIZE_MAX)
        return sd_fail(c->err, SDUNET_E_FORMAT,
                       "ckpt: no zip end-of-central-directory record (truncated file?)");
    const uint8_t *e = b + pos;
    unsigned disk = rd16(e + 4), cd_disk = rd16(e + 6);
    uint64_t n_disk = rd16(e + 8), n_total = rd16(e + 10);
    uint64_t csize = rd32(e + 12), coff = rd32(e + 16);
    *records = pos;
    if (pos >= 20 && rd32(b + pos - 20) == SIG_LOC64) {
        const uint8_t *l = b + pos - 20;
        uint64_t z_off = rd64(l + 8);
        if (rd32(l + 4) != 0 || rd32(l + 16) != 1)
            return multi_disk(c);
        if (z_off > pos - 20 || pos - 20 - z_off < 56 || rd32(b + z_off) != SIG_EOCD64)
            return sd_fail(c->err, SDUNET_E_FORMAT, "ckpt: bad zip64 end locator");
        const uint8_t *z = b + z_off;
        uint64_t rec = rd64(z + 4);
        if (rec < 44 || rec > pos - 20 - z_off - 12)
            return sd_fail(c->err, SDUNET_E_FORMAT, "ckpt: bad zip64 end record size");
        if (rd32(z + 16) != 0 || rd32(z + 20) != 0)
            return multi_disk(c);
        uint64_t zn_disk = rd64(z + 24), zn_total = rd64(z + 32);
        uint64_t zcsize = rd64(z + 40), zcoff = rd64(z + 48);
        /* Fields not saturated in the classic record must agree. */
        if ((n_disk != 0xFFFF && n_disk != zn_disk) || (n_total != 0xFFFF && n_total != zn_total) ||
            (csize != 0xFFFFFFFFu && csize != zcsize) || (coff != 0xFFFFFFFFu && coff != zcoff))
            return sd_fail(c->err, SDUNET_E_FORMAT, "ckpt: zip and zip64 end records disagree");
        n_disk = zn_disk;
        n_total = zn_total;
        csize = zcsize;
        coff = zcoff;
        *records = z_off;
    } else {
        if (n_disk == 0xFFFF || n_total == 0xFFFF || csize == 0xFFFFFFFFu || coff == 0xFFFFFFFFu)
            return sd_fail(c->err, SDUNET_E_FORMAT, "ckpt: zip64 archive without a zip64 locator");
        if (disk != 0 || cd_disk != 0)
            return multi_disk(c);
    }
    if (n_disk != n_total)
        return multi_disk(c);
    if (coff > *records || csize > *records - coff)
        return sd_fail(c->err, SDUNET_E_FORMAT,
                       "ckpt: central directory (offset %llu, %llu bytes) lies outside the file",
                       (unsigned long long)coff, (unsigned long long)csize);
    if (n_total == 0)
        return sd_fail(c->err, SDUNET_E_FORMAT, "ckpt: empty zip archive");
    if (n_total > SD_CKPT_MAX_ENTRIES || n_total > csize / 46)
        return sd_fail(c->err, SDUNET_E_FORMAT,
                       "ckpt: %llu zip entries cannot fit a %llu-byte directory (limit %u)",
                       (unsigned long long)n_total, (unsigned long long)csize, SD_CKPT_MAX_ENTRIES);
    *cd_off = coff;
    *cd_size = csize;
    *count = n_total;
    return SDUNET_OK;
}

/* Checks one entry's local header against its central record, fills
 * data_off and end. */
static sdunet_status check_local(ck_ctx *c, ck_entry *en, unsigned cflags, unsigned method)
{
    char nb[96];
    const char *nm = show(nb, sizeof nb, en->name, en->name_len);
    const uint8_t *b = c->base;
    uint64_t size = c->size;
    if (en->lho > size || size - en->lho < 30 || rd32(b + en->lho) != SIG_LOCAL)
        return sd_fail(c->err, SDUNET_E_FORMAT, "ckpt: entry '%s': bad local header offset %llu",
                       nm, (unsigned long long)en->lho);
    const uint8_t *h = b + en->lho;
    unsigned lflags = rd16(h + 6), lmethod = rd16(h + 8);
    uint32_t lcrc = rd32(h + 14);
    uint64_t lcsize = rd32(h + 18), lusize = rd32(h + 22);
    size_t nlen = rd16(h + 26), xlen = rd16(h + 28);
    if (size - en->lho - 30 < nlen + xlen)
        return sd_fail(c->err, SDUNET_E_FORMAT,
                       "ckpt: entry '%s': local header runs past the end of the file", nm);
    if (nlen != en->name_len || memcmp(h + 30, en->name, nlen) != 0)
        return sd_fail(c->err, SDUNET_E_FORMAT,
                       "ckpt: entry '%s': local header names a different file", nm);
    if (lmethod != method || ((lflags ^ cflags) & 0x9))
        return sd_fail(c->err, SDUNET_E_FORMAT,
                       "ckpt: entry '%s': local header disagrees with the central directory", nm);
    const uint8_t *z64 = NULL;
    size_t z64_len = 0;
    if (!extra_scan(h + 30 + nlen, xlen, &z64, &z64_len))
        return sd_fail(c->err, SDUNET_E_FORMAT, "ckpt: entry '%s': malformed local extra field",
                       nm);
    if (lcsize == 0xFFFFFFFFu || lusize == 0xFFFFFFFFu) {
        /* A local zip64 record carries both sizes, uncompressed first. */
        if (!z64 || z64_len < 16)
            return sd_fail(c->err, SDUNET_E_FORMAT, "ckpt: entry '%s': local zip64 sizes missing",
                           nm);
        lusize = rd64(z64);
        lcsize = rd64(z64 + 8);
    }
    en->data_off = en->lho + 30 + nlen + xlen;
    if (en->size > size - en->data_off)
        return sd_fail(c->err, SDUNET_E_FORMAT,
                       "ckpt: entry '%s' (%llu bytes at offset %llu) runs past the end of the file",
                       nm, (unsigned long long)en->size, (unsigned long long)en->data_off);
    uint64_t data_end = en->data_off + en->size;
    en->end = data_end;
    if (!(lflags & 0x8)) {
        if (lcrc != en->crc || lcsize != en->size || lusize != en->size)
            return sd_fail(c->err, SDUNET_E_FORMAT,
                           "ckpt: entry '%s': local and central sizes or CRC disagree", nm);
        return SDUNET_OK;
    }
    /* Streamed entry: the local fields may be zero, the data descriptor after
     * the data holds the real ones (64-bit sizes when the entry has a zip64
     * record). Its signature is optional. */
    if ((lcrc != 0 && lcrc != en->crc) || (lcsize != 0 && lcsize != en->size) ||
        (lusize != 0 && lusize != en->size))
        return sd_fail(c->err, SDUNET_E_FORMAT,
                       "ckpt: entry '%s': local and central sizes or CRC disagree", nm);
    /* Try with and without the signature (a CRC may look like one), and
     * both size widths; the expected width first. */
    for (int pass = 0; pass < 4; pass++) {
        uint64_t p = data_end;
        if (pass < 2) {
            if (size - p < 4 || rd32(b + p) != SIG_DESC)
                continue;
            p += 4;
        }
        int wide = (pass % 2 == 0) == (z64 != NULL);
        uint64_t need = wide ? 20 : 12;
        if (size - p < need)
            continue;
        uint64_t dcs = wide ? rd64(b + p + 4) : rd32(b + p + 4);
        uint64_t dus = wide ? rd64(b + p + 12) : rd32(b + p + 8);
        if (rd32(b + p) == en->crc && dcs == en->size && dus == en->size) {
            en->end = p + need;
            return SDUNET_OK;
        }
    }
    return sd_fail(
        c->err, SDUNET_E_FORMAT,
        "ckpt: entry '%s': data descriptor missing or disagrees with the central directory", nm);
}

static sdunet_status read_zip(ck_ctx *c)
{
    uint64_t cd_off = 0, cd_size = 0, count = 0, records = 0;
    sdunet_status st = read_eocd(c, &cd_off, &cd_size, &count, &records);
    if (st)
        return st;
    c->cd_off = cd_off;
    c->e = sd_calloc((size_t)count, sizeof *c->e);
    if (!c->e)
        return sd_fail(c->err, SDUNET_E_NOMEM, "ckpt: out of memory for %llu zip entries",
                       (unsigned long long)count);
    c->n = (size_t)count;
    const uint8_t *b = c->base;
    uint64_t p = cd_off, cd_end = cd_off + cd_size;
    char nb[96];
    for (size_t k = 0; k < c->n; k++) {
        if (cd_end - p < 46 || rd32(b + p) != SIG_CENTRAL)
            return sd_fail(c->err, SDUNET_E_FORMAT, "ckpt: bad central directory record %zu", k);
        const uint8_t *h = b + p;
        unsigned flags = rd16(h + 8), method = rd16(h + 10);
        uint32_t crc = rd32(h + 16);
        uint64_t csize = rd32(h + 20), usize = rd32(h + 24);
        size_t nlen = rd16(h + 28), xlen = rd16(h + 30), clen = rd16(h + 32);
        uint64_t disk = rd16(h + 34), lho = rd32(h + 42);
        if (cd_end - p - 46 < (uint64_t)nlen + xlen + clen)
            return sd_fail(c->err, SDUNET_E_FORMAT,
                           "ckpt: central directory record %zu runs past the directory", k);
        ck_entry *en = &c->e[k];
        en->name = (const char *)h + 46;
        en->name_len = nlen;
        if (!name_sane(en->name, nlen))
            return sd_fail(c->err, SDUNET_E_FORMAT, "ckpt: zip entry %zu has a bad name '%s'", k,
                           show(nb, sizeof nb, en->name, nlen));
        const char *nm = show(nb, sizeof nb, en->name, nlen);
        if (flags & 0x41)
            return sd_fail(c->err, SDUNET_E_UNSUPPORTED, "ckpt: entry '%s' is encrypted", nm);
        if (method != 0)
            return sd_fail(c->err, SDUNET_E_UNSUPPORTED,
                           "ckpt: entry '%s' uses compression method %u (%s); only stored "
                           "entries (method 0) are supported",
                           nm, method, method_name(method));
        const uint8_t *z64 = NULL;
        size_t z64_len = 0;
        if (!extra_scan(h + 46 + nlen, xlen, &z64, &z64_len))
            return sd_fail(c->err, SDUNET_E_FORMAT, "ckpt: entry '%s': malformed extra field", nm);
        /* The zip64 record holds only the saturated fields, in this order. */
        size_t zp = 0;
        uint64_t *fields[3] = {&usize, &csize, &lho};
        for (int f = 0; f < 3; f++) {
            if (*fields[f] != 0xFFFFFFFFu)
                continue;
            if (!z64 || z64_len - zp < 8)
                return sd_fail(c->err, SDUNET_E_FORMAT, "ckpt: entry '%s': zip64 field missing",
                               nm);
            *fields[f] = rd64(z64 + zp);
            zp += 8;
        }
        if (disk == 0xFFFF) {
            if (!z64 || z64_len - zp < 4)
                return sd_fail(c->err, SDUNET_E_FORMAT, "ckpt: entry '%s': zip64 field missing",
                               nm);
            disk = rd32(z64 + zp);
        }
        if (disk != 0)
            return multi_disk(c);
        if (csize != usize)
            return sd_fail(
                c->err, SDUNET_E_FORMAT,
                "ckpt: stored entry '%s' has different compressed and uncompressed sizes", nm);
        en->lho = lho;
        en->size = usize;
        en->crc = crc;
        st = check_local(c, en, flags, method);
        if (st)
            return st;
        p += 46 + nlen + xlen + clen;
    }
    if (p != cd_end)
        return sd_fail(c->err, SDUNET_E_FORMAT,
                       "ckpt: central directory size disagrees with its %zu records", c->n);

    /* Entries must not share bytes with each other or the directory. */
    const ck_entry **by_off = sd_calloc(c->n, sizeof *by_off);
    if (!by_off)
        return sd_fail(c->err, SDUNET_E_NOMEM, "ckpt: out of memory");
    for (size_t k = 0; k < c->n; k++)
        by_off[k] = &c->e[k];
    qsort(by_off, c->n, sizeof *by_off, cmp_entry_lho);
    st = SDUNET_OK;
    for (size_t k = 0; k < c->n && !st; k++) {
        uint64_t limit = k + 1 < c->n ? by_off[k + 1]->lho : cd_off;
        if (by_off[k]->end > limit) {
            char nb2[96];
            st = sd_fail(c->err, SDUNET_E_FORMAT, "ckpt: zip entry '%s' overlaps %s%s%s",
                         show(nb, sizeof nb, by_off[k]->name, by_off[k]->name_len),
                         k + 1 < c->n ? "entry '" : "the central directory",
                         k + 1 < c->n
                             ? show(nb2, sizeof nb2, by_off[k + 1]->name, by_off[k + 1]->name_len)
                             : "",
                         k + 1 < c->n ? "'" : "");
        }
    }
    sd_free(by_off);
    if (st)
        return st;

    qsort(c->e, c->n, sizeof *c->e, cmp_entry_name);
    for (size_t k = 1; k < c->n; k++)
        if (cmp_entry_name(&c->e[k - 1], &c->e[k]) == 0)
            return sd_fail(c->err, SDUNET_E_FORMAT, "ckpt: duplicate zip entry '%s'",
                           show(nb, sizeof nb, c->e[k].name, c->e[k].name_len));
    return SDUNET_OK;
}

static sdunet_status check_crc(ck_ctx *c, ck_entry *en)
{
    if (en->crc_checked)
        return SDUNET_OK;
    uint32_t got = crc_compute(&c->crc, c->base + en->data_off, (size_t)en->size);
    if (got != en->crc) {
        char nb[96];
        return sd_fail(c->err, SDUNET_E_FORMAT,
                       "ckpt: CRC-32 mismatch in entry '%s' (stored %08x, computed %08x)",
                       show(nb, sizeof nb, en->name, en->name_len), (unsigned)en->crc,
                       (unsigned)got);
    }
    en->crc_checked = 1;
    return SDUNET_OK;
}

/* ------------------------------------------------------------------------ */
/* Pickle interpreter. */

enum {
    K_NONE,
    K_BOOL,
    K_INT,
    K_FLOAT,
    K_STR,
    K_TUPLE,
    K_LIST,
    K_DICT,
    K_GLOBAL,
    K_STORAGE,
    K_TENSOR,
    K_BYTES,
    K_OPAQUE
};

static const char *const kind_names[] = {"None",   "bool",  "int",         "float",  "str",
                                         "tuple",  "list",  "dict",        "global", "storage",
                                         "tensor", "bytes", "opaque value"};

/* G_INERT: callables whose results are recorded as opaque values and never
 * computed (numpy scalars in Lightning's callback state). G_CLASS: a class
 * that may only appear as a value (old Lightning keys the callback state
 * by the ModelCheckpoint class itself); calling it is refused. The original
 * SD 1.x checkpoints need both kinds next to their state dict. */
enum { G_ORDERED_DICT, G_REBUILD_TENSOR_V2, G_REBUILD_PARAMETER, G_STORAGE, G_INERT, G_CLASS };

static const struct {
    const char *module, *name;
    int id;
    sd_dtype dtype;
} allowed_globals[] = {
    {"collections", "OrderedDict", G_ORDERED_DICT, SD_DT_F32},
    {"torch._utils", "_rebuild_tensor_v2", G_REBUILD_TENSOR_V2, SD_DT_F32},
    {"torch._utils", "_rebuild_parameter", G_REBUILD_PARAMETER, SD_DT_F32},
    {"torch", "FloatStorage", G_STORAGE, SD_DT_F32},
    {"torch", "HalfStorage", G_STORAGE, SD_DT_F16},
    {"torch", "BFloat16Storage", G_STORAGE, SD_DT_BF16},
    {"torch", "DoubleStorage", G_STORAGE, SD_DT_F64},
    {"torch", "LongStorage", G_STORAGE, SD_DT_I64},
    {"torch", "IntStorage", G_STORAGE, SD_DT_I32},
    {"torch", "ShortStorage", G_STORAGE, SD_DT_I16},
    {"torch", "CharStorage", G_STORAGE, SD_DT_I8},
    {"torch", "ByteStorage", G_STORAGE, SD_DT_U8},
    {"torch", "BoolStorage", G_STORAGE, SD_DT_BOOL},
    {"numpy", "dtype", G_INERT, SD_DT_F32},
    {"numpy.core.multiarray", "scalar", G_INERT, SD_DT_F32},
    {"_codecs", "encode", G_INERT, SD_DT_F32},
    {"pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint", G_CLASS, SD_DT_F32},
};

/* One value. Containers are singly linked lists of nodes (head/tail), so
 * building them never moves other objects and freeing is one pool free. */
typedef struct ck_obj {
    uint8_t kind;
    uint32_t len; /* STR: bytes; containers: element (or pair) count */
    int64_t v;    /* BOOL/INT value, STR offset in the pickle, GLOBAL table
                     index, STORAGE/TENSOR pool index, FLOAT bits */
    int32_t head, tail;
} ck_obj;

typedef struct ck_node {
    int32_t key, val, next; /* key used by dicts only */
} ck_node;

typedef struct ck_storage {
    sd_dtype dtype;
    const ck_entry *entry;
    uint64_t numel;
} ck_storage;

typedef struct ck_tensor {
    int32_t storage;
    int ndim;
    uint64_t offset;
    int64_t shape[SD_MAX_DIMS], stride[SD_MAX_DIMS];
    size_t numel;
} ck_tensor;

typedef struct ck_vm {
    ck_ctx *c;
    const uint8_t *pk;
    size_t len, pos, op_pos;
    ck_obj *obj;
    size_t nobj, cap_obj;
    ck_node *node;
    size_t nnode, cap_node;
    ck_storage *st;
    size_t nst, cap_st;
    ck_tensor *ten;
    size_t nten, cap_ten;
    int32_t *stack;
    size_t sp, cap_stack;
    size_t *marks;
    size_t nmarks, cap_marks;
    int32_t *memo;
    size_t cap_memo, memo_used;
} ck_vm;

static void vm_free(ck_vm *vm)
{
    sd_free(vm->obj);
    sd_free(vm->node);
    sd_free(vm->st);
    sd_free(vm->ten);
    sd_free(vm->stack);
    sd_free(vm->marks);
    sd_free(vm->memo);
}

static sdunet_status vm_nomem(ck_vm *vm)
{
    return sd_fail(vm->c->err, SDUNET_E_NOMEM, "ckpt: out of memory while reading the pickle");
}

static sdunet_status vm_bad(ck_vm *vm, const char *what)
{
    return sd_fail(vm->c->err, SDUNET_E_FORMAT, "ckpt: pickle offset %zu: %s", vm->op_pos, what);
}

static sdunet_status too_many(ck_vm *vm)
{
    return sd_fail(vm->c->err, SDUNET_E_FORMAT,
                   "ckpt: pickle builds more than %d values or items (offset %zu)",
                   SD_CKPT_MAX_OBJECTS, vm->op_pos);
}

static sdunet_status new_obj(ck_vm *vm, int kind, int32_t *out)
{
    if (vm->nobj >= SD_CKPT_MAX_OBJECTS)
        return too_many(vm);
    if (!sd_grow((void **)&vm->obj, &vm->cap_obj, vm->nobj + 1, sizeof *vm->obj, SIZE_MAX))
        return vm_nomem(vm);
    ck_obj *o = &vm->obj[vm->nobj];
    memset(o, 0, sizeof *o);
    o->kind = (uint8_t)kind;
    o->head = o->tail = -1;
    *out = (int32_t)vm->nobj++;
    return SDUNET_OK;
}

static sdunet_status push(ck_vm *vm, int32_t id)
{
    if (vm->sp >= SD_CKPT_MAX_STACK)
        return sd_fail(vm->c->err, SDUNET_E_FORMAT,
                       "ckpt: pickle stack deeper than %d entries (offset %zu)", SD_CKPT_MAX_STACK,
                       vm->op_pos);
    if (!sd_grow((void **)&vm->stack, &vm->cap_stack, vm->sp + 1, sizeof *vm->stack, SIZE_MAX))
        return vm_nomem(vm);
    vm->stack[vm->sp++] = id;
    return SDUNET_OK;
}

static sdunet_status push_new(ck_vm *vm, int kind, int64_t v)
{
    int32_t id = -1;
    sdunet_status st = new_obj(vm, kind, &id);
    if (st)
        return st;
    vm->obj[id].v = v;
    return push(vm, id);
}

/* Items below the innermost MARK belong to an outer frame. */
static size_t frame_floor(const ck_vm *vm)
{
    return vm->nmarks ? vm->marks[vm->nmarks - 1] : 0;
}

static sdunet_status pop(ck_vm *vm, int32_t *out)
{
    if (vm->sp <= frame_floor(vm))
        return vm_bad(vm, "pickle stack underflow");
    *out = vm->stack[--vm->sp];
    return SDUNET_OK;
}

static sdunet_status pop_mark(ck_vm *vm, size_t *start)
{
    if (!vm->nmarks)
        return vm_bad(vm, "no MARK on the pickle stack");
    *start = vm->marks[--vm->nmarks];
    return SDUNET_OK;
}

static sdunet_status append_node(ck_vm *vm, int32_t cont, int32_t key, int32_t val)
{
    if (vm->nnode >= SD_CKPT_MAX_OBJECTS)
        return too_many(vm);
    if (!sd_grow((void **)&vm->node, &vm->cap_node, vm->nnode + 1, sizeof *vm->node, SIZE_MAX))
        return vm_nomem(vm);
    int32_t id = (int32_t)vm->nnode++;
    vm->node[id] = (ck_node){key, val, -1};
    ck_obj *o = &vm->obj[cont];
    if (o->tail >= 0)
        vm->node[o->tail].next = id;
    else
        o->head = id;
    o->tail = id;
    o->len++;
    return SDUNET_OK;
}

static sdunet_status need(ck_vm *vm, size_t n)
{
    if (vm->len - vm->pos < n)
        return sd_fail(vm->c->err, SDUNET_E_FORMAT,
                       "ckpt: pickle truncated (opcode at offset %zu needs %zu more bytes)",
                       vm->op_pos, n);
    return SDUNET_OK;
}

static sdunet_status make_tuple(ck_vm *vm, size_t start)
{
    int32_t t = -1;
    sdunet_status st = new_obj(vm, K_TUPLE, &t);
    for (size_t k = start; k < vm->sp && !st; k++)
        st = append_node(vm, t, -1, vm->stack[k]);
    if (st)
        return st;
    vm->sp = start;
    return push(vm, t);
}

static int str_eq(const ck_vm *vm, int32_t id, const char *s)
{
    const ck_obj *o = &vm->obj[id];
    size_t n = strlen(s);
    return o->kind == K_STR && o->len == n && memcmp(vm->pk + o->v, s, n) == 0;
}

static sdunet_status memo_put(ck_vm *vm, uint64_t idx)
{
    if (vm->sp <= frame_floor(vm))
        return vm_bad(vm, "memo store with an empty stack");
    if (idx >= SD_CKPT_MAX_MEMO || idx > vm->len) {
        char msg[96];
        snprintf(msg, sizeof msg, "memo index %llu out of range", (unsigned long long)idx);
        return vm_bad(vm, msg);
    }
    size_t old = vm->cap_memo;
    if (!sd_grow((void **)&vm->memo, &vm->cap_memo, (size_t)idx + 1, sizeof *vm->memo, SIZE_MAX))
        return vm_nomem(vm);
    for (size_t k = old; k < vm->cap_memo; k++)
        vm->memo[k] = -1;
    if (vm->memo[idx] < 0)
        vm->memo_used++;
    vm->memo[idx] = vm->stack[vm->sp - 1];
    return SDUNET_OK;
}

static sdunet_status memo_get(ck_vm *vm, uint64_t idx)
{
    if (idx >= vm->cap_memo || vm->memo[idx] < 0) {
        char msg[96];
        snprintf(msg, sizeof msg, "memo slot %llu read before it was set", (unsigned long long)idx);
        return vm_bad(vm, msg);
    }
    return push(vm, vm->memo[idx]);
}

/* Finds an allowed global; anything else is refused by name. */
static sdunet_status push_global(ck_vm *vm, const uint8_t *mod, size_t mlen, const uint8_t *name,
                                 size_t nlen)
{
    for (size_t g = 0; g < sizeof allowed_globals / sizeof allowed_globals[0]; g++) {
        if (strlen(allowed_globals[g].module) == mlen &&
            memcmp(allowed_globals[g].module, mod, mlen) == 0 &&
            strlen(allowed_globals[g].name) == nlen &&
            memcmp(allowed_globals[g].name, name, nlen) == 0)
            return push_new(vm, K_GLOBAL, (int64_t)g);
    }
    char a[96], b[96];
    return sd_fail(vm->c->err, SDUNET_E_UNSUPPORTED,
                   "ckpt: pickle global '%s.%s' is not allowed (offset %zu); "
                   "only state dicts of tensors are read",
                   show(a, sizeof a, mod, mlen), show(b, sizeof b, name, nlen), vm->op_pos);
}

/* Up to `max` elements of a tuple object into ids[]; returns the count. */
static size_t tuple_items(const ck_vm *vm, int32_t t, int32_t *ids, size_t max)
{
    size_t n = 0;
    for (int32_t k = vm->obj[t].head; k >= 0 && n < max; k = vm->node[k].next)
        ids[n++] = vm->node[k].val;
    return n;
}

/* ('storage', StorageType, key, location, numel) -> a storage bound to
 * <prefix>/data/<key>, CRC-checked on first use. */
static sdunet_status persistent_load(ck_vm *vm, int32_t pid)
{
    int32_t a[5];
    if (vm->obj[pid].kind != K_TUPLE || vm->obj[pid].len != 5)
        return vm_bad(vm, "persistent id is not a 5-tuple ('storage', type, key, location, numel)");
    tuple_items(vm, pid, a, 5);
    const ck_obj *ty = &vm->obj[a[1]], *key = &vm->obj[a[2]], *num = &vm->obj[a[4]];
    if (!str_eq(vm, a[0], "storage"))
        return vm_bad(vm, "persistent id is not a 'storage' reference");
    if (ty->kind != K_GLOBAL || allowed_globals[ty->v].id != G_STORAGE)
        return vm_bad(vm, "persistent id does not name a storage type");
    if (key->kind != K_STR || key->len == 0 || key->len > 64 || vm->obj[a[3]].kind != K_STR ||
        num->kind != K_INT || num->v < 0)
        return vm_bad(vm, "malformed storage reference");
    char name[SD_CKPT_MAX_NAME + 80];
    const char *kp = (const char *)vm->pk + key->v;
    for (uint32_t k = 0; k < key->len; k++)
        if (kp[k] == '/' || (unsigned char)kp[k] < 0x20)
            return vm_bad(vm, "storage key is not a plain name");
    size_t plen = vm->c->prefix_len;
    memcpy(name, vm->c->prefix, plen);
    memcpy(name + plen, "data/", 5);
    memcpy(name + plen + 5, kp, key->len);
    size_t nlen = plen + 5 + key->len;
    ck_entry *en = (ck_entry *)find_entry(vm->c, name, nlen);
    char nb[96];
    if (!en)
        return sd_fail(vm->c->err, SDUNET_E_FORMAT,
                       "ckpt: storage '%s' has no data entry in the archive",
                       show(nb, sizeof nb, name, nlen));
    sd_dtype dt = allowed_globals[ty->v].dtype;
    size_t bytes;
    if (!sd_mul_size((size_t)num->v, sd_dtype_size(dt), &bytes) || (uint64_t)num->v > SIZE_MAX ||
        bytes > en->size)
        return sd_fail(vm->c->err, SDUNET_E_FORMAT,
                       "ckpt: storage '%s' claims %lld %s elements but its entry holds %llu bytes",
                       show(nb, sizeof nb, name, nlen), (long long)num->v, sd_dtype_name(dt),
                       (unsigned long long)en->size);
    sdunet_status st = check_crc(vm->c, en);
    if (st)
        return st;
    if (!sd_grow((void **)&vm->st, &vm->cap_st, vm->nst + 1, sizeof *vm->st, SIZE_MAX))
        return vm_nomem(vm);
    vm->st[vm->nst] = (ck_storage){dt, en, (uint64_t)num->v};
    return push_new(vm, K_STORAGE, (int64_t)vm->nst++);
}

/* _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]) */
static sdunet_status rebuild_tensor(ck_vm *vm, int32_t args)
{
    int32_t a[7];
    if (vm->obj[args].len != 6 && vm->obj[args].len != 7)
        return vm_bad(vm, "_rebuild_tensor_v2 takes 6 or 7 arguments");
    tuple_items(vm, args, a, 7);
    const ck_obj *so = &vm->obj[a[0]], *off = &vm->obj[a[1]];
    const ck_obj *size = &vm->obj[a[2]], *stride = &vm->obj[a[3]];
    if (so->kind != K_STORAGE)
        return vm_bad(vm, "_rebuild_tensor_v2: first argument is not a storage");
    if (off->kind != K_INT || off->v < 0)
        return vm_bad(vm, "_rebuild_tensor_v2: bad storage offset");
    if (size->kind != K_TUPLE || stride->kind != K_TUPLE || size->len != stride->len)
        return vm_bad(vm, "_rebuild_tensor_v2: size and stride must be tuples of equal length");
    if (size->len > SD_MAX_DIMS) {
        return sd_fail(vm->c->err, SDUNET_E_UNSUPPORTED,
                       "ckpt: tensor with %u dimensions (at most %d supported)", size->len,
                       SD_MAX_DIMS);
    }
    ck_tensor t = {.storage = (int32_t)so->v, .ndim = (int)size->len, .offset = (uint64_t)off->v};
    int32_t si[SD_MAX_DIMS], ri[SD_MAX_DIMS];
    tuple_items(vm, a[2], si, SD_MAX_DIMS);
    tuple_items(vm, a[3], ri, SD_MAX_DIMS);
    const ck_storage *s = &vm->st[so->v];
    size_t numel = 1;
    uint64_t last = t.offset; /* offset of the last element */
    int overflow = 0;
    for (int d = 0; d < t.ndim; d++) {
        const ck_obj *x = &vm->obj[si[d]], *y = &vm->obj[ri[d]];
        if (x->kind != K_INT || y->kind != K_INT || x->v < 0 || y->v < 0)
            return vm_bad(vm, "_rebuild_tensor_v2: sizes and strides must be non-negative ints");
        t.shape[d] = x->v;
        t.stride[d] = y->v;
        if ((uint64_t)x->v > SIZE_MAX || !sd_mul_size(numel, (size_t)x->v, &numel))
            overflow = 1;
    }
    size_t nbytes;
    if (overflow || !sd_mul_size(numel, sd_dtype_size(s->dtype), &nbytes))
        return vm_bad(vm, "tensor shape overflows");
    if (numel > 0) {
        for (int d = 0; d < t.ndim; d++) {
            uint64_t span = (uint64_t)(t.shape[d] - 1);
            uint64_t str = (uint64_t)t.stride[d];
            if (str && span > (UINT64_MAX - last) / str)
                return vm_bad(vm, "tensor view overflows");
            last += span * str;
        }
        if (last >= s->numel) {
            char msg[160];
            snprintf(
                msg, sizeof msg,
                "tensor view (offset %llu, last element %llu) exceeds its storage of %llu elements",
                (unsigned long long)t.offset, (unsigned long long)last,
                (unsigned long long)s->numel);
            return vm_bad(vm, msg);
        }
    } else if (t.offset > s->numel) {
        return vm_bad(vm, "tensor storage offset past the end of its storage");
    }
    t.numel = numel;
    if (!sd_grow((void **)&vm->ten, &vm->cap_ten, vm->nten + 1, sizeof *vm->ten, SIZE_MAX))
        return vm_nomem(vm);
    vm->ten[vm->nten] = t;
    return push_new(vm, K_TENSOR, (int64_t)vm->nten++);
}

static sdunet_status do_reduce(ck_vm *vm)
{
    int32_t args = -1, fn = -1;
    sdunet_status st = pop(vm, &args);
    if (!st)
        st = pop(vm, &fn);
    if (st)
        return st;
    if (vm->obj[fn].kind != K_GLOBAL)
        return vm_bad(vm, "REDUCE of something that is not an allowed global");
    if (vm->obj[args].kind != K_TUPLE)
        return vm_bad(vm, "REDUCE arguments are not a tuple");
    switch (allowed_globals[vm->obj[fn].v].id) {
    case G_ORDERED_DICT:
        if (vm->obj[args].len != 0)
            return sd_fail(vm->c->err, SDUNET_E_UNSUPPORTED,
                           "ckpt: OrderedDict built with arguments is not supported");
        return push_new(vm, K_DICT, 0);
    case G_REBUILD_TENSOR_V2: return rebuild_tensor(vm, args);
    case G_REBUILD_PARAMETER: {
        int32_t a[3];
        if (vm->obj[args].len != 3)
            return vm_bad(vm, "_rebuild_parameter expects (tensor, requires_grad, hooks)");
        tuple_items(vm, args, a, 3);
        if (vm->obj[a[0]].kind != K_TENSOR)
            return vm_bad(vm, "_rebuild_parameter expects (tensor, requires_grad, hooks)");
        return push(vm, a[0]);
    }
    case G_INERT: return push_new(vm, K_OPAQUE, 0);
    default:
        return sd_fail(
            vm->c->err, SDUNET_E_UNSUPPORTED, "ckpt: calling %s.%s is not supported (offset %zu)",
            allowed_globals[vm->obj[fn].v].module, allowed_globals[vm->obj[fn].v].name, vm->op_pos);
    }
}

static sdunet_status read_line(ck_vm *vm, const uint8_t **s, size_t *n)
{
    const uint8_t *start = vm->pk + vm->pos;
    size_t max = vm->len - vm->pos < 256 ? vm->len - vm->pos : 256;
    const uint8_t *nl = memchr(start, '\n', max);
    if (!nl)
        return vm_bad(vm, "GLOBAL name is not terminated");
    *s = start;
    *n = (size_t)(nl - start);
    vm->pos += *n + 1;
    return SDUNET_OK;
}

static sdunet_status push_str(ck_vm *vm, uint64_t n, int kind)
{
    if (n > vm->len - vm->pos)
        return sd_fail(vm->c->err, SDUNET_E_FORMAT,
                       "ckpt: pickle truncated (string at offset %zu runs past the end)",
                       vm->op_pos);
    int32_t id = -1;
    sdunet_status st = new_obj(vm, kind, &id);
    if (st)
        return st;
    if (n > UINT32_MAX)
        return vm_bad(vm, "string too long");
    vm->obj[id].v = (int64_t)vm->pos;
    vm->obj[id].len = (uint32_t)n;
    vm->pos += (size_t)n;
    return push(vm, id);
}

/* Runs the pickle to STOP; *result is the final object. */
static sdunet_status vm_run(ck_vm *vm, int32_t *result)
{
    sdunet_status st = SDUNET_OK;
    const uint8_t *pk = vm->pk;
    while (!st) {
        if (vm->pos >= vm->len)
            return sd_fail(vm->c->err, SDUNET_E_FORMAT, "ckpt: pickle ends without STOP");
        vm->op_pos = vm->pos;
        uint8_t op = pk[vm->pos++];
        int32_t a = -1, b = -1, t = -1;
        size_t start = 0;
        switch (op) {
        case 0x80: /* PROTO */
            if (!(st = need(vm, 1))) {
                if (pk[vm->pos] < 2 || pk[vm->pos] > 5)
                    return sd_fail(vm->c->err, SDUNET_E_UNSUPPORTED,
                                   "ckpt: pickle protocol %u is not supported", pk[vm->pos]);
                vm->pos++;
            }
            break;
        case 0x95: /* FRAME: a length hint; the bytes are read as usual */
            if (!(st = need(vm, 8))) {
                if (rd64(pk + vm->pos) > vm->len - vm->pos - 8)
                    return vm_bad(vm, "FRAME runs past the end of the pickle");
                vm->pos += 8;
            }
            break;
        case '.': /* STOP */ return pop(vm, result);
        case '}': st = push_new(vm, K_DICT, 0); break;
        case ']': st = push_new(vm, K_LIST, 0); break;
        case ')': st = push_new(vm, K_TUPLE, 0); break;
        case 'N': st = push_new(vm, K_NONE, 0); break;
        case 0x88: st = push_new(vm, K_BOOL, 1); break; /* NEWTRUE */
        case 0x89: st = push_new(vm, K_BOOL, 0); break; /* NEWFALSE */
        case '(':                                       /* MARK */
            if (vm->nmarks >= SD_CKPT_MAX_MARKS)
                return sd_fail(vm->c->err, SDUNET_E_FORMAT,
                               "ckpt: pickle nests more than %d MARKs (offset %zu)",
                               SD_CKPT_MAX_MARKS, vm->op_pos);
            if (!sd_grow((void **)&vm->marks, &vm->cap_marks, vm->nmarks + 1, sizeof *vm->marks,
                         SIZE_MAX))
                return vm_nomem(vm);
            vm->marks[vm->nmarks++] = vm->sp;
            break;
        case 'X': /* BINUNICODE */
            if (!(st = need(vm, 4))) {
                uint32_t n = rd32(pk + vm->pos);
                vm->pos += 4;
                st = push_str(vm, n, K_STR);
            }
            break;
        case 0x8c: /* SHORT_BINUNICODE */
            if (!(st = need(vm, 1)))
                st = push_str(vm, pk[vm->pos++], K_STR);
            break;
        case 0x8d: /* BINUNICODE8 */
            if (!(st = need(vm, 8))) {
                uint64_t n = rd64(pk + vm->pos);
                vm->pos += 8;
                st = push_str(vm, n, K_STR);
            }
            break;
        case 'B': /* BINBYTES (protocol 3+): kept as an opaque value */
            if (!(st = need(vm, 4))) {
                uint32_t n = rd32(pk + vm->pos);
                vm->pos += 4;
                st = push_str(vm, n, K_BYTES);
            }
            break;
        case 'C': /* SHORT_BINBYTES */
            if (!(st = need(vm, 1)))
                st = push_str(vm, pk[vm->pos++], K_BYTES);
            break;
        case 'q': /* BINPUT */
            if (!(st = need(vm, 1)))
                st = memo_put(vm, pk[vm->pos++]);
            break;
        case 'r': /* LONG_BINPUT */
            if (!(st = need(vm, 4))) {
                vm->pos += 4;
                st = memo_put(vm, rd32(pk + vm->pos - 4));
            }
            break;
        case 0x94: /* MEMOIZE */ st = memo_put(vm, vm->memo_used); break;
        case 'h': /* BINGET */
            if (!(st = need(vm, 1)))
                st = memo_get(vm, pk[vm->pos++]);
            break;
        case 'j': /* LONG_BINGET */
            if (!(st = need(vm, 4))) {
                vm->pos += 4;
                st = memo_get(vm, rd32(pk + vm->pos - 4));
            }
            break;
        case 'J': /* BININT: signed 32-bit */
            if (!(st = need(vm, 4))) {
                int64_t v = (int32_t)rd32(pk + vm->pos);
                vm->pos += 4;
                st = push_new(vm, K_INT, v);
            }
            break;
        case 'K': /* BININT1 */
            if (!(st = need(vm, 1)))
                st = push_new(vm, K_INT, pk[vm->pos++]);
            break;
        case 'M': /* BININT2 */
            if (!(st = need(vm, 2))) {
                vm->pos += 2;
                st = push_new(vm, K_INT, rd16(pk + vm->pos - 2));
            }
            break;
        case 0x8a: /* LONG1: little-endian two's complement, up to 8 bytes here */
            if (!(st = need(vm, 1))) {
                size_t n = pk[vm->pos++];
                if (n > 8)
                    return sd_fail(vm->c->err, SDUNET_E_UNSUPPORTED,
                                   "ckpt: integer of %zu bytes at pickle offset %zu", n,
                                   vm->op_pos);
                if (!(st = need(vm, n))) {
                    uint64_t u = 0;
                    for (size_t k = 0; k < n; k++)
                        u |= (uint64_t)pk[vm->pos + k] << (8 * k);
                    if (n > 0 && n < 8 && (pk[vm->pos + n - 1] & 0x80))
                        u |= ~(uint64_t)0 << (8 * n);
                    vm->pos += n;
                    int64_t v;
                    memcpy(&v, &u, sizeof v);
                    st = push_new(vm, K_INT, v);
                }
            }
            break;
        case 'G': /* BINFLOAT: big-endian double */
            if (!(st = need(vm, 8))) {
                uint64_t u = 0;
                for (int k = 0; k < 8; k++)
                    u = (u << 8) | pk[vm->pos + k];
                vm->pos += 8;
                int64_t v;
                memcpy(&v, &u, sizeof v);
                st = push_new(vm, K_FLOAT, v);
            }
            break;
        case 't': /* TUPLE */
            if (!(st = pop_mark(vm, &start)))
                st = make_tuple(vm, start);
            break;
        case 0x85: /* TUPLE1 */
        case 0x86: /* TUPLE2 */
        case 0x87: /* TUPLE3 */
            if (vm->sp < frame_floor(vm) + (size_t)(op - 0x84))
                return vm_bad(vm, "pickle stack underflow");
            st = make_tuple(vm, vm->sp - (size_t)(op - 0x84));
            break;
        case 'a': /* APPEND */
            if (!(st = pop(vm, &a))) {
                if (vm->sp <= frame_floor(vm) || vm->obj[vm->stack[vm->sp - 1]].kind != K_LIST)
                    return vm_bad(vm, "APPEND to something that is not a list");
                st = append_node(vm, vm->stack[vm->sp - 1], -1, a);
            }
            break;
        case 'e': /* APPENDS */
            if (!(st = pop_mark(vm, &start))) {
                if (start == 0 || start <= frame_floor(vm) ||
                    vm->obj[vm->stack[start - 1]].kind != K_LIST)
                    return vm_bad(vm, "APPENDS to something that is not a list");
                t = vm->stack[start - 1];
                for (size_t k = start; k < vm->sp && !st; k++)
                    st = append_node(vm, t, -1, vm->stack[k]);
                vm->sp = start;
            }
            break;
        case 's': /* SETITEM */
            if (!(st = pop(vm, &b)) && !(st = pop(vm, &a))) {
                if (vm->sp <= frame_floor(vm) || vm->obj[vm->stack[vm->sp - 1]].kind != K_DICT)
                    return vm_bad(vm, "SETITEM on something that is not a dict");
                st = append_node(vm, vm->stack[vm->sp - 1], a, b);
            }
            break;
        case 'u': /* SETITEMS */
            if (!(st = pop_mark(vm, &start))) {
                if (start == 0 || start <= frame_floor(vm) ||
                    vm->obj[vm->stack[start - 1]].kind != K_DICT)
                    return vm_bad(vm, "SETITEMS on something that is not a dict");
                if ((vm->sp - start) % 2)
                    return vm_bad(vm, "SETITEMS with an odd number of items");
                t = vm->stack[start - 1];
                for (size_t k = start; k < vm->sp && !st; k += 2)
                    st = append_node(vm, t, vm->stack[k], vm->stack[k + 1]);
                vm->sp = start;
            }
            break;
        case 'c': { /* GLOBAL "module\nname\n" */
            const uint8_t *m = NULL, *n = NULL;
            size_t ml = 0, nl = 0;
            if (!(st = read_line(vm, &m, &ml)) && !(st = read_line(vm, &n, &nl)))
                st = push_global(vm, m, ml, n, nl);
            break;
        }
        case 0x93: /* STACK_GLOBAL */
            if (!(st = pop(vm, &b)) && !(st = pop(vm, &a))) {
                if (vm->obj[a].kind != K_STR || vm->obj[b].kind != K_STR)
                    return vm_bad(vm, "STACK_GLOBAL needs two strings");
                st = push_global(vm, pk + vm->obj[a].v, vm->obj[a].len, pk + vm->obj[b].v,
                                 vm->obj[b].len);
            }
            break;
        case 'R': st = do_reduce(vm); break;
        case 'b': /* BUILD: object state is not needed for tensors; dropped */
            if (!(st = pop(vm, &a)) && vm->sp <= frame_floor(vm))
                return vm_bad(vm, "BUILD without an object");
            break;
        case 'Q': /* BINPERSID */
            if (!(st = pop(vm, &a)))
                st = persistent_load(vm, a);
            break;
        case '0': /* POP */ st = pop(vm, &a); break;
        case '1': /* POP_MARK */
            if (!(st = pop_mark(vm, &start)))
                vm->sp = start;
            break;
        default:
            if (op >= 0x20 && op < 0x7F)
                return sd_fail(vm->c->err, SDUNET_E_UNSUPPORTED,
                               "ckpt: unsupported pickle opcode 0x%02x ('%c') at offset %zu", op,
                               op, vm->op_pos);
            return sd_fail(vm->c->err, SDUNET_E_UNSUPPORTED,
                           "ckpt: unsupported pickle opcode 0x%02x at offset %zu", op, vm->op_pos);
        }
    }
    return st;
}

/* ------------------------------------------------------------------------ */
/* From the pickle result to the tensor table. */

typedef struct ck_out {
    sd_tensor_info *t;
    size_t n;
    void **owned;
    size_t n_owned;
} ck_out;

static void out_free(ck_out *o)
{
    for (size_t k = 0; k < o->n; k++)
        sd_free(o->t[k].name);
    for (size_t k = 0; k < o->n_owned; k++)
        sd_free(o->owned[k]);
    sd_free(o->t);
    sd_free(o->owned);
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const sd_tensor_info *)a)->name, ((const sd_tensor_info *)b)->name);
}

static int is_c_contiguous(const ck_tensor *t)
{
    int64_t expect = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->stride[d] != expect)
            return 0;
        expect *= t->shape[d];
    }
    return 1;
}

/* Fills one table row from a tensor description; views that are not
 * C-contiguous (or not aligned for their element type) are copied. */
static sdunet_status emit_tensor(ck_vm *vm, ck_out *o, const ck_tensor *t, size_t *copied)
{
    const ck_storage *s = &vm->st[t->storage];
    size_t es = sd_dtype_size(s->dtype);
    sd_tensor_info *ti = &o->t[o->n - 1];
    ti->dtype = s->dtype;
    ti->ndim = t->ndim;
    for (int d = 0; d < t->ndim; d++)
        ti->shape[d] = t->shape[d];
    ti->numel = t->numel;
    ti->nbytes = t->numel * es; /* checked in rebuild_tensor */
    const uint8_t *base = vm->c->base + s->entry->data_off;
    const uint8_t *first = base + (size_t)t->offset * es;
    if (t->numel == 0 || (is_c_contiguous(t) && (uintptr_t)first % es == 0)) {
        ti->data = t->numel ? first : base;
        return SDUNET_OK;
    }
    /* Broadcast views (stride 0) could expand a tiny storage into a huge
     * copy; a genuine checkpoint never needs more copies than file bytes. */
    if (ti->nbytes > vm->c->size - *copied)
        return sd_fail(vm->c->err, SDUNET_E_FORMAT,
                       "ckpt: tensor '%s': non-contiguous views would expand past the file size",
                       ti->name);
    uint8_t *dst = sd_alloc(ti->nbytes);
    if (!dst)
        return sd_fail(vm->c->err, SDUNET_E_NOMEM, "ckpt: tensor '%s': out of memory (%zu bytes)",
                       ti->name, ti->nbytes);
    o->owned[o->n_owned++] = dst;
    *copied += ti->nbytes;
    if (is_c_contiguous(t)) { /* only misaligned: one block */
        memcpy(dst, first, ti->nbytes);
        ti->data = dst;
        return SDUNET_OK;
    }
    int64_t idx[SD_MAX_DIMS] = {0};
    for (size_t e = 0; e < t->numel; e++) {
        uint64_t src = t->offset;
        for (int d = 0; d < t->ndim; d++)
            src += (uint64_t)idx[d] * (uint64_t)t->stride[d];
        memcpy(dst + e * es, base + src * es, es);
        for (int d = t->ndim - 1; d >= 0; d--) {
            if (++idx[d] < t->shape[d])
                break;
            idx[d] = 0;
        }
    }
    ti->data = dst;
    return SDUNET_OK;
}

static sdunet_status collect(ck_vm *vm, int32_t root, ck_out *o)
{
    if (vm->obj[root].kind != K_DICT)
        return sd_fail(vm->c->err, SDUNET_E_FORMAT, "ckpt: the pickle holds a %s, not a state dict",
                       kind_names[vm->obj[root].kind]);
    /* {"state_dict": {...}, ...} as Lightning and the LDM scripts write it;
     * the last "state_dict" wins as it would in Python. */
    int32_t dict = root;
    for (int32_t k = vm->obj[root].head; k >= 0; k = vm->node[k].next)
        if (str_eq(vm, vm->node[k].key, "state_dict") && vm->obj[vm->node[k].val].kind == K_DICT)
            dict = vm->node[k].val;
    size_t count = 0;
    for (int32_t k = vm->obj[dict].head; k >= 0; k = vm->node[k].next) {
        if (vm->obj[vm->node[k].val].kind != K_TENSOR)
            continue;
        if (vm->obj[vm->node[k].key].kind != K_STR)
            return sd_fail(vm->c->err, SDUNET_E_FORMAT, "ckpt: a tensor's key is a %s, not a str",
                           kind_names[vm->obj[vm->node[k].key].kind]);
        count++;
    }
    if (count == 0)
        return sd_fail(vm->c->err, SDUNET_E_FORMAT, "ckpt: the checkpoint holds no tensors");
    o->t = sd_calloc(count, sizeof *o->t);
    o->owned = sd_calloc(count, sizeof *o->owned);
    if (!o->t || !o->owned)
        return vm_nomem(vm);
    size_t copied = 0;
    for (int32_t k = vm->obj[dict].head; k >= 0; k = vm->node[k].next) {
        const ck_obj *val = &vm->obj[vm->node[k].val], *key = &vm->obj[vm->node[k].key];
        if (val->kind != K_TENSOR)
            continue;
        const char *kp = (const char *)vm->pk + key->v;
        char nb[96];
        if (key->len == 0 || key->len > SD_CKPT_MAX_NAME || memchr(kp, 0, key->len))
            return sd_fail(vm->c->err, SDUNET_E_FORMAT, "ckpt: bad tensor name '%s'",
                           show(nb, sizeof nb, kp, key->len));
        char *name = sd_alloc((size_t)key->len + 1);
        if (!name)
            return vm_nomem(vm);
        memcpy(name, kp, key->len);
        name[key->len] = 0;
        o->t[o->n++].name = name;
        sdunet_status st = emit_tensor(vm, o, &vm->ten[val->v], &copied);
        if (st)
            return st;
    }
    qsort(o->t, o->n, sizeof *o->t, cmp_tensor_name);
    for (size_t k = 1; k < o->n; k++)
        if (strcmp(o->t[k - 1].name, o->t[k].name) == 0) {
            char nb[96];
            return sd_fail(vm->c->err, SDUNET_E_FORMAT, "ckpt: duplicate tensor name '%s'",
                           show(nb, sizeof nb, o->t[k].name, strlen(o->t[k].name)));
        }
    return SDUNET_OK;
}

/* ------------------------------------------------------------------------ */

int sd_ckpt_probe(const void *map, size_t size)
{
    return map && size >= 4 && memcmp(map, "PK\x03\x04", 4) == 0;
}

/* Finds <prefix>/data.pkl (exactly one directory level, as torch writes). */
static sdunet_status find_pickle(ck_ctx *c, ck_entry **pkl)
{
    *pkl = NULL;
    for (size_t k = 0; k < c->n; k++) {
        ck_entry *en = &c->e[k];
        const char *slash = memchr(en->name, '/', en->name_len);
        if (!slash || slash == en->name)
            continue;
        size_t plen = (size_t)(slash - en->name) + 1;
        if (en->name_len - plen != 8 || memcmp(slash + 1, "data.pkl", 8) != 0)
            continue;
        if (*pkl)
            return sd_fail(c->err, SDUNET_E_FORMAT, "ckpt: the archive holds several data.pkl");
        *pkl = en;
        c->prefix = en->name;
        c->prefix_len = plen;
    }
    if (!*pkl)
        return sd_fail(c->err, SDUNET_E_FORMAT,
                       "ckpt: zip archive without <name>/data.pkl: not a PyTorch checkpoint");
    /* torch >= 1.13 may record the byte order of the storages. */
    char name[SD_CKPT_MAX_NAME + 16];
    memcpy(name, c->prefix, c->prefix_len);
    memcpy(name + c->prefix_len, "byteorder", 9);
    const ck_entry *bo = find_entry(c, name, c->prefix_len + 9);
    if (bo && !(bo->size == 6 && memcmp(c->base + bo->data_off, "little", 6) == 0))
        return sd_fail(c->err, SDUNET_E_UNSUPPORTED,
                       "ckpt: checkpoint storages are not little-endian");
    return SDUNET_OK;
}

sdunet_status sd_ckpt_parse(const void *map, size_t size, sd_tensorfile *tf, sdunet_error *err)
{
    if (!map || !tf)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "sd_ckpt_parse: NULL argument");
    ck_ctx *c = sd_calloc(1, sizeof *c);
    if (!c)
        return sd_fail(err, SDUNET_E_NOMEM, "ckpt: out of memory");
    c->base = map;
    c->size = size;
    c->err = err;
    crc_init(&c->crc);
    ck_vm vm = {.c = c};
    ck_out out = {0};
    ck_entry *pkl = NULL;
    int32_t root = -1;
    sdunet_status st = read_zip(c);
    if (!st)
        st = find_pickle(c, &pkl);
    if (!st && pkl->size > SD_CKPT_MAX_PICKLE)
        st = sd_fail(err, SDUNET_E_FORMAT, "ckpt: data.pkl of %llu bytes exceeds the %zu limit",
                     (unsigned long long)pkl->size, SD_CKPT_MAX_PICKLE);
    if (!st)
        st = check_crc(c, pkl);
    if (!st) {
        vm.pk = c->base + pkl->data_off;
        vm.len = (size_t)pkl->size;
        st = vm_run(&vm, &root);
    }
    if (!st)
        st = collect(&vm, root, &out);
    vm_free(&vm);
    sd_free(c->e);
    sd_free(c);
    if (st) {
        out_free(&out);
        return st;
    }
    tf->format = "ckpt";
    tf->tensors = out.t;
    tf->count = out.n;
    if (out.n_owned) {
        tf->owned = out.owned;
        tf->n_owned = out.n_owned;
    } else {
        sd_free(out.owned);
    }
    return SDUNET_OK;
}
