/* PNG reader and writer.
 *
 * A PNG is the 8-byte signature, then chunks: a 4-byte big-endian length,
 * a 4-byte type, the data, and a CRC-32 of type and data. IHDR comes
 * first, PLTE (and tRNS) before the image data, the image data is the
 * concatenation of the consecutive IDAT chunks, and IEND ends the file.
 * The image data is one zlib stream of scanlines, each a filter-type byte
 * followed by the filtered row; an Adam7 interlaced image holds seven
 * reduced images (passes) one after the other.
 *
 * The reader checks the whole chunk structure before allocating the image,
 * and refuses image data that could not possibly decompress to the size
 * the header implies (deflate cannot expand more than 1032:1), so a short
 * hostile file cannot make it allocate the memory of a large image. */
#include "io/png.h"
#include "io/deflate.h"
#include "io/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const uint8_t png_sig[8] = {137, 80, 78, 71, 13, 10, 26, 10};

/* The most bytes deflate can expand one input byte into (a 258-byte match
 * in 2 bits), plus room for the stream's fixed overhead. */
#define DEFLATE_MAX_RATIO 1032u

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static int is_letter(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* A chunk type for messages: the four letters, or hex when not letters. */
static void chunk_name(const uint8_t *t, char out[16])
{
    if (is_letter(t[0]) && is_letter(t[1]) && is_letter(t[2]) && is_letter(t[3]))
        snprintf(out, 16, "%c%c%c%c", t[0], t[1], t[2], t[3]);
    else
        snprintf(out, 16, "0x%02x%02x%02x%02x", t[0], t[1], t[2], t[3]);
}

void sd_image_free(sd_image *img)
{
    if (!img)
        return;
    free(img->data);
    free(img->texts);
    free(img->text_store);
    memset(img, 0, sizeof *img);
}

/* ------------------------------------------------------------- text */

typedef struct text_acc {
    char *store;
    size_t len, cap;
    size_t *offs; /* key and value offsets into store, two per text */
    size_t n, ocap;
    size_t inflated; /* bytes decompressed for texts so far, kept or not */
} text_acc;

static int acc_reserve(text_acc *t, size_t extra)
{
    size_t need;
    if (!sd_add_size(t->len, extra, &need))
        return 0;
    if (need <= t->cap)
        return 1;
    size_t cap = t->cap ? t->cap : 256;
    while (cap < need)
        cap *= 2;
    char *p = realloc(t->store, cap);
    if (!p)
        return 0;
    t->store = p;
    t->cap = cap;
    return 1;
}

/* Appends s[0..n) converted to UTF-8 (from Latin-1 when latin1) and a NUL. */
static void acc_put(text_acc *t, const uint8_t *s, size_t n, int latin1)
{
    for (size_t i = 0; i < n; i++) {
        if (latin1 && s[i] >= 0x80) {
            t->store[t->len++] = (char)(0xC0 | (s[i] >> 6));
            t->store[t->len++] = (char)(0x80 | (s[i] & 0x3F));
        } else {
            t->store[t->len++] = (char)s[i];
        }
    }
    t->store[t->len++] = '\0';
}

static int valid_utf8(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            k = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i - 1 < k)
            return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if ((k == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (k == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* Adds one key/value pair. Values holding a NUL, invalid UTF-8 (when not
 * Latin-1) or pushing the total past SD_PNG_MAX_TEXT_TOTAL are skipped.
 * 0 only on allocation failure. */
static int acc_add(text_acc *t, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                   int val_latin1)
{
    if (vlen && memchr(val, 0, vlen))
        return 1;
    if (!val_latin1 && !valid_utf8(val, vlen))
        return 1;
    /* Worst case every byte doubles; both lengths are bounded by the input. */
    size_t need = 2 * klen + 2 * vlen + 2;
    if (t->len > SD_PNG_MAX_TEXT_TOTAL || need > SD_PNG_MAX_TEXT_TOTAL - t->len)
        return 1;
    if (!acc_reserve(t, need))
        return 0;
    if (t->n * 2 + 2 > t->ocap) {
        size_t cap = t->ocap ? t->ocap * 2 : 16;
        size_t *p = realloc(t->offs, cap * sizeof *p);
        if (!p)
            return 0;
        t->offs = p;
        t->ocap = cap;
    }
    t->offs[2 * t->n] = t->len;
    acc_put(t, key, klen, 1);
    t->offs[2 * t->n + 1] = t->len;
    acc_put(t, val, vlen, val_latin1);
    t->n++;
    return 1;
}

/* A keyword: 1-79 bytes before a NUL at the start of d[0..n). Returns its
 * length, 0 if malformed. */
static size_t keyword(const uint8_t *d, size_t n)
{
    const uint8_t *z = n ? memchr(d, 0, n) : NULL;
    if (!z)
        return 0;
    size_t k = (size_t)(z - d);
    return k >= 1 && k <= 79 ? k : 0;
}

/* One tEXt, zTXt or iTXt chunk. Malformed ones are skipped (they are
 * ancillary); SDUNET_E_NOMEM is the only failure. */
static sdunet_status read_text(text_acc *t, const char *type, const uint8_t *d, size_t n,
                               sdunet_error *err)
{
    size_t k = keyword(d, n);
    if (!k)
        return SDUNET_OK;
    const uint8_t *p = d + k + 1;
    size_t left = n - k - 1;
    int compressed = 0, latin1 = 1;
    if (!strcmp(type, "zTXt")) {
        if (left < 1 || p[0] != 0)
            return SDUNET_OK;
        compressed = 1;
        p++;
        left--;
    } else if (!strcmp(type, "iTXt")) {
        if (left < 2 || p[0] > 1 || (p[0] == 1 && p[1] != 0))
            return SDUNET_OK;
        compressed = p[0];
        p += 2;
        left -= 2;
        for (int skip = 0; skip < 2; skip++) { /* language tag, translated keyword */
            const uint8_t *z = left ? memchr(p, 0, left) : NULL;
            if (!z)
                return SDUNET_OK;
            left -= (size_t)(z - p) + 1;
            p = z + 1;
        }
        latin1 = 0;
    }
    if (!compressed)
        return acc_add(t, d, k, p, left, latin1)
                   ? SDUNET_OK
                   : sd_fail(err, SDUNET_E_NOMEM, "png: out of memory for text");
    /* Decompression work for all texts together is bounded too, so many
     * small chunks that each expand to the limit cannot take long. */
    if (t->inflated >= SD_PNG_MAX_TEXT_TOTAL)
        return SDUNET_OK;
    size_t cap = SD_PNG_MAX_TEXT_TOTAL - t->inflated;
    if (cap > SD_PNG_MAX_TEXT)
        cap = SD_PNG_MAX_TEXT;
    uint8_t *val = NULL;
    size_t vlen = 0;
    sdunet_error local;
    sdunet_status st = sd_zlib_inflate(p, left, 0, &val, cap, &vlen, "png text", &local);
    t->inflated += st == SDUNET_OK ? vlen : cap;
    if (st == SDUNET_E_NOMEM)
        return sd_fail(err, st, "%s", local.message);
    int ok = 1;
    if (st == SDUNET_OK)
        ok = acc_add(t, d, k, val ? val : (const uint8_t *)"", vlen, latin1);
    free(val);
    return ok ? SDUNET_OK : sd_fail(err, SDUNET_E_NOMEM, "png: out of memory for text");
}

static sdunet_status finish_texts(text_acc *t, sd_image *img, sdunet_error *err)
{
    if (t->n == 0)
        return SDUNET_OK;
    img->texts = malloc(t->n * sizeof *img->texts);
    if (!img->texts)
        return sd_fail(err, SDUNET_E_NOMEM, "png: out of memory for text");
    for (size_t i = 0; i < t->n; i++) {
        img->texts[i].key = t->store + t->offs[2 * i];
        img->texts[i].value = t->store + t->offs[2 * i + 1];
    }
    img->n_texts = (int)t->n;
    img->text_store = t->store;
    t->store = NULL;
    return SDUNET_OK;
}

/* ------------------------------------------------------------ decode */

typedef struct png_info {
    uint32_t width, height;
    int depth, ctype, interlace;
    int channels;     /* samples per pixel in the file */
    uint8_t pal[768]; /* RGB entries */
    int npal;
    int has_trns;
} png_info;

static const int adam7_x0[7] = {0, 4, 0, 2, 0, 1, 0};
static const int adam7_y0[7] = {0, 0, 4, 0, 2, 0, 1};
static const int adam7_dx[7] = {8, 8, 4, 4, 2, 2, 1};
static const int adam7_dy[7] = {8, 8, 8, 4, 4, 2, 2};

/* Pass p's size (pass 0 with start 0 and step 1 for a plain image). */
static void pass_size(const png_info *in, int p, size_t *pw, size_t *ph)
{
    size_t x0 = in->interlace ? (size_t)adam7_x0[p] : 0,
           dx = in->interlace ? (size_t)adam7_dx[p] : 1;
    size_t y0 = in->interlace ? (size_t)adam7_y0[p] : 0,
           dy = in->interlace ? (size_t)adam7_dy[p] : 1;
    *pw = in->width > x0 ? (in->width - x0 + dx - 1) / dx : 0;
    *ph = in->height > y0 ? (in->height - y0 + dy - 1) / dy : 0;
}

static size_t row_bytes(const png_info *in, size_t w)
{
    return (w * (size_t)in->channels * (size_t)in->depth + 7) / 8;
}

static sdunet_status parse_ihdr(const uint8_t *d, size_t n, png_info *in, sdunet_error *err)
{
    if (n != 13)
        return sd_fail(err, SDUNET_E_FORMAT, "png: IHDR length %zu, not 13", n);
    in->width = be32(d);
    in->height = be32(d + 4);
    in->depth = d[8];
    in->ctype = d[9];
    in->interlace = d[12];
    if (in->width == 0 || in->height == 0 || in->width > 0x7FFFFFFFu || in->height > 0x7FFFFFFFu)
        return sd_fail(err, SDUNET_E_FORMAT, "png: bad image size %ux%u", (unsigned)in->width,
                       (unsigned)in->height);
    int ok;
    switch (in->ctype) {
    case 0:
        ok =
            in->depth == 1 || in->depth == 2 || in->depth == 4 || in->depth == 8 || in->depth == 16;
        in->channels = 1;
        break;
    case 3:
        ok = in->depth == 1 || in->depth == 2 || in->depth == 4 || in->depth == 8;
        in->channels = 1;
        break;
    case 2:
        ok = in->depth == 8 || in->depth == 16;
        in->channels = 3;
        break;
    case 4:
        ok = in->depth == 8 || in->depth == 16;
        in->channels = 2;
        break;
    case 6:
        ok = in->depth == 8 || in->depth == 16;
        in->channels = 4;
        break;
    default: ok = 0;
    }
    if (!ok)
        return sd_fail(err, SDUNET_E_FORMAT, "png: bad colour type %d with bit depth %d", in->ctype,
                       in->depth);
    if (d[10] != 0 || d[11] != 0 || in->interlace > 1)
        return sd_fail(err, SDUNET_E_FORMAT,
                       "png: unknown compression (%d), filter (%d) or interlace (%d) method", d[10],
                       d[11], in->interlace);
    if (in->width > SD_PNG_MAX_DIM || in->height > SD_PNG_MAX_DIM ||
        (size_t)in->width * in->height > SD_PNG_MAX_PIXELS)
        return sd_fail(err, SDUNET_E_UNSUPPORTED,
                       "png: image %ux%u is over the limit (%d per side, %zu pixels)",
                       (unsigned)in->width, (unsigned)in->height, SD_PNG_MAX_DIM,
                       SD_PNG_MAX_PIXELS);
    return SDUNET_OK;
}

static inline int paeth(int a, int b, int c)
{
    int p = a + b - c;
    int pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
    if (pa <= pb && pa <= pc)
        return a;
    return pb <= pc ? b : c;
}

/* Undoes the filters of h rows of rb bytes (each after its filter byte)
 * in place. bpp: bytes per complete pixel (at least 1). */
static sdunet_status unfilter(uint8_t *raw, size_t h, size_t rb, size_t bpp, sdunet_error *err)
{
    const uint8_t *prev = NULL;
    for (size_t y = 0; y < h; y++) {
        uint8_t *row = raw + y * (rb + 1);
        int f = row[0];
        uint8_t *r = row + 1;
        switch (f) {
        case 0: break;
        case 1:
            for (size_t i = bpp; i < rb; i++)
                r[i] = (uint8_t)(r[i] + r[i - bpp]);
            break;
        case 2:
            if (prev)
                for (size_t i = 0; i < rb; i++)
                    r[i] = (uint8_t)(r[i] + prev[i]);
            break;
        case 3:
            for (size_t i = 0; i < rb; i++) {
                int a = i >= bpp ? r[i - bpp] : 0, b = prev ? prev[i] : 0;
                r[i] = (uint8_t)(r[i] + ((a + b) >> 1));
            }
            break;
        case 4:
            for (size_t i = 0; i < rb; i++) {
                int a = i >= bpp ? r[i - bpp] : 0, b = prev ? prev[i] : 0;
                int c = prev && i >= bpp ? prev[i - bpp] : 0;
                r[i] = (uint8_t)(r[i] + paeth(a, b, c));
            }
            break;
        default: return sd_fail(err, SDUNET_E_FORMAT, "png: bad filter type %d in row %zu", f, y);
        }
        prev = r;
    }
    return SDUNET_OK;
}

/* Sample i of a row at bit depth `depth`, unscaled. */
static inline unsigned get_sample(const uint8_t *r, size_t i, int depth)
{
    switch (depth) {
    case 8: return r[i];
    case 16: return (unsigned)r[2 * i] << 8 | r[2 * i + 1];
    default: {
        size_t bit = i * (size_t)depth;
        return (r[bit >> 3] >> (8 - depth - (int)(bit & 7))) & ((1u << depth) - 1);
    }
    }
}

static inline uint8_t to8(unsigned v, int depth)
{
    if (depth == 8)
        return (uint8_t)v;
    if (depth == 16)
        return (uint8_t)((v * 255u + 32767u) / 65535u);
    return (uint8_t)(v * 255u / ((1u << depth) - 1));
}

/* Converts one unfiltered pass (pw x ph) into the RGB image. */
static sdunet_status convert_pass(const png_info *in, const uint8_t *raw, size_t pw, size_t ph,
                                  int p, uint8_t *img, sdunet_error *err)
{
    size_t rb = row_bytes(in, pw);
    size_t x0 = in->interlace ? (size_t)adam7_x0[p] : 0,
           dx = in->interlace ? (size_t)adam7_dx[p] : 1;
    size_t y0 = in->interlace ? (size_t)adam7_y0[p] : 0,
           dy = in->interlace ? (size_t)adam7_dy[p] : 1;
    int depth = in->depth, ch = in->channels;
    for (size_t y = 0; y < ph; y++) {
        const uint8_t *r = raw + y * (rb + 1) + 1;
        uint8_t *orow = img + ((y0 + y * dy) * in->width + x0) * 3;
        for (size_t x = 0; x < pw; x++) {
            uint8_t *o = orow + x * dx * 3;
            size_t s = x * (size_t)ch;
            if (in->ctype == 3) {
                unsigned idx = get_sample(r, s, depth);
                if ((int)idx >= in->npal)
                    return sd_fail(err, SDUNET_E_FORMAT,
                                   "png: palette index %u out of range (%d entries)", idx,
                                   in->npal);
                memcpy(o, in->pal + 3 * idx, 3);
            } else if (ch <= 2) {
                o[0] = o[1] = o[2] = to8(get_sample(r, s, depth), depth);
            } else {
                o[0] = to8(get_sample(r, s, depth), depth);
                o[1] = to8(get_sample(r, s + 1, depth), depth);
                o[2] = to8(get_sample(r, s + 2, depth), depth);
            }
        }
    }
    return SDUNET_OK;
}

static sdunet_status decode_pixels(const png_info *in, const uint8_t *z, size_t zn, sd_image *out,
                                   sdunet_error *err)
{
    size_t total = 0, pw[7], ph[7];
    int npass = in->interlace ? 7 : 1;
    for (int p = 0; p < npass; p++) {
        pass_size(in, p, &pw[p], &ph[p]);
        if (pw[p] && ph[p])
            total += ph[p] * (row_bytes(in, pw[p]) + 1); /* bounded: under 2^26 * 8 + 2^17 */
    }
    if (total / DEFLATE_MAX_RATIO > zn + 16)
        return sd_fail(err, SDUNET_E_FORMAT,
                       "png: %zu bytes of image data cannot hold the %zu bytes a %ux%u image "
                       "needs",
                       zn, total, (unsigned)in->width, (unsigned)in->height);
    size_t npix = (size_t)in->width * in->height, nbytes;
    if (!sd_mul_size(npix, 3, &nbytes))
        return sd_fail(err, SDUNET_E_NOMEM, "png: image size overflows");
    uint8_t *raw = malloc(total);
    out->data = malloc(nbytes);
    if (!raw || !out->data) {
        free(raw);
        return sd_fail(err, SDUNET_E_NOMEM, "png: out of memory for a %ux%u image",
                       (unsigned)in->width, (unsigned)in->height);
    }
    size_t got;
    sdunet_status st = sd_zlib_inflate(z, zn, 1, &raw, total, &got, "png IDAT", err);
    size_t bpp = ((size_t)in->channels * (size_t)in->depth + 7) / 8;
    uint8_t *r = raw;
    for (int p = 0; st == SDUNET_OK && p < npass; p++) {
        if (!pw[p] || !ph[p])
            continue;
        size_t rb = row_bytes(in, pw[p]);
        st = unfilter(r, ph[p], rb, bpp, err);
        if (st == SDUNET_OK)
            st = convert_pass(in, r, pw[p], ph[p], p, out->data, err);
        r += ph[p] * (rb + 1);
    }
    free(raw);
    if (st == SDUNET_OK) {
        out->width = (int)in->width;
        out->height = (int)in->height;
        out->channels = 3;
        out->has_alpha = in->ctype == 4 || in->ctype == 6 || in->has_trns;
    }
    return st;
}

static sdunet_status png_decode(const uint8_t *data, size_t size, sd_image *out, text_acc *txt,
                                uint8_t **idat_buf, sdunet_error *err)
{
    if (size < 8 || memcmp(data, png_sig, 8) != 0)
        return sd_fail(err, SDUNET_E_FORMAT, "png: not a PNG file (bad signature)");
    png_info in;
    memset(&in, 0, sizeof in);
    size_t pos = 8, idat_len = 0, idat_cap = 0;
    int seen_ihdr = 0, seen_plte = 0, idat_state = 0; /* 0 none yet, 1 in the run, 2 after it */
    const uint8_t *single = NULL;                     /* the only IDAT's data, not copied */
    for (;;) {
        if (size - pos < 8)
            return sd_fail(err, SDUNET_E_FORMAT, "png: truncated (%s)",
                           pos == size ? "no IEND chunk" : "partial chunk header");
        uint32_t len = be32(data + pos);
        const uint8_t *type = data + pos + 4;
        char name[16];
        chunk_name(type, name);
        if (len > 0x7FFFFFFFu)
            return sd_fail(err, SDUNET_E_FORMAT, "png: chunk %s length %u too large", name,
                           (unsigned)len);
        if (size - pos - 8 < (size_t)len + 4)
            return sd_fail(err, SDUNET_E_FORMAT, "png: truncated in chunk %s", name);
        if (!is_letter(type[0]) || !is_letter(type[1]) || !is_letter(type[2]) ||
            !is_letter(type[3]))
            return sd_fail(err, SDUNET_E_FORMAT, "png: bad chunk type %s", name);
        const uint8_t *d = data + pos + 8;
        if (sd_crc32(0, type, 4 + (size_t)len) != be32(d + len))
            return sd_fail(err, SDUNET_E_FORMAT, "png: bad CRC in chunk %s", name);
        pos += 12 + (size_t)len;
        int critical = !(type[0] & 0x20);
        if (!seen_ihdr && memcmp(type, "IHDR", 4) != 0)
            return sd_fail(err, SDUNET_E_FORMAT, "png: first chunk is %s, not IHDR", name);
        if (idat_state == 1 && memcmp(type, "IDAT", 4) != 0)
            idat_state = 2;
        sdunet_status st = SDUNET_OK;
        if (!memcmp(type, "IHDR", 4)) {
            if (seen_ihdr)
                return sd_fail(err, SDUNET_E_FORMAT, "png: second IHDR chunk");
            seen_ihdr = 1;
            st = parse_ihdr(d, len, &in, err);
        } else if (!memcmp(type, "PLTE", 4)) {
            if (seen_plte)
                return sd_fail(err, SDUNET_E_FORMAT, "png: second PLTE chunk");
            if (idat_state)
                return sd_fail(err, SDUNET_E_FORMAT, "png: PLTE after IDAT");
            if (in.ctype == 0 || in.ctype == 4)
                return sd_fail(err, SDUNET_E_FORMAT, "png: PLTE in a greyscale image");
            if (len == 0 || len % 3 != 0 || len > 768)
                return sd_fail(err, SDUNET_E_FORMAT, "png: PLTE length %u", (unsigned)len);
            seen_plte = 1;
            in.npal = (int)(len / 3);
            /* Entries past what the bit depth can index are never used. */
            memcpy(in.pal, d, len);
        } else if (!memcmp(type, "tRNS", 4)) {
            if (!idat_state &&
                ((in.ctype == 0 && len == 2) || (in.ctype == 2 && len == 6) ||
                 (in.ctype == 3 && seen_plte && len >= 1 && len <= (uint32_t)in.npal)))
                in.has_trns = 1;
        } else if (!memcmp(type, "IDAT", 4)) {
            if (idat_state == 2)
                return sd_fail(err, SDUNET_E_FORMAT, "png: IDAT chunks are not consecutive");
            if (in.ctype == 3 && !seen_plte)
                return sd_fail(err, SDUNET_E_FORMAT, "png: palette image without PLTE");
            if (idat_state == 0) {
                single = d; /* one chunk is decompressed where it lies */
            } else {
                /* More than one: gather them in one buffer. */
                if (!sd_grow((void **)idat_buf, &idat_cap, idat_len + len, 1, size))
                    return sd_fail(err, SDUNET_E_NOMEM, "png: out of memory for IDAT");
                if (single && idat_len)
                    memcpy(*idat_buf, single, idat_len);
                single = NULL;
                if (len)
                    memcpy(*idat_buf + idat_len, d, len);
            }
            idat_len += len;
            idat_state = 1;
        } else if (!memcmp(type, "IEND", 4)) {
            break;
        } else if (!memcmp(type, "tEXt", 4) || !memcmp(type, "zTXt", 4) ||
                   !memcmp(type, "iTXt", 4)) {
            st = read_text(txt, name, d, len, err);
        } else if (critical) {
            return sd_fail(err, SDUNET_E_UNSUPPORTED, "png: unknown critical chunk %s", name);
        }
        if (st)
            return st;
    }
    if (!idat_state)
        return sd_fail(err, SDUNET_E_FORMAT, "png: no IDAT chunk");
    const uint8_t *z = single ? single : *idat_buf;
    sdunet_status st = decode_pixels(&in, z ? z : data, idat_len, out, err);
    if (st == SDUNET_OK)
        st = finish_texts(txt, out, err);
    return st;
}

sdunet_status sd_png_decode(const uint8_t *data, size_t size, sd_image *out, sdunet_error *err)
{
    if (!out)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "png: NULL argument");
    memset(out, 0, sizeof *out);
    if (!data && size)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "png: NULL data");
    static const uint8_t empty[1];
    text_acc txt;
    memset(&txt, 0, sizeof txt);
    uint8_t *idat = NULL;
    sdunet_status st = png_decode(size ? data : empty, size, out, &txt, &idat, err);
    sd_free(idat);
    free(txt.store);
    free(txt.offs);
    if (st)
        sd_image_free(out);
    return st;
}

sdunet_status sd_png_read(const char *path, sd_image *out, sdunet_error *err)
{
    if (!path || !out)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "png: NULL argument");
    memset(out, 0, sizeof *out);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sd_fail(err, SDUNET_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size < 0 ||
        (uint64_t)sb.st_size > SIZE_MAX - 1) {
        close(fd);
        return sd_fail(err, SDUNET_E_IO, "%s: not a readable regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) {
        close(fd);
        return sd_fail(err, SDUNET_E_NOMEM, "%s: out of memory (%zu bytes)", path, size);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (got != size) {
        free(buf);
        return sd_fail(err, SDUNET_E_IO, "%s: read error", path);
    }
    sdunet_status st = sd_png_decode(buf, size, out, err);
    free(buf);
    if (st)
        sd_err_prefix(err, path);
    return st;
}

/* ------------------------------------------------------------ encode */

/* Filters h rows of rb bytes (3 bytes per pixel) into out (each row led by
 * its filter type), choosing per row the filter whose output has the
 * smallest sum of absolute values taken as signed bytes. */
static void filter_rows(const uint8_t *img, size_t w, size_t h, uint8_t *out, uint8_t *scratch)
{
    const size_t bpp = 3, rb = w * 3;
    for (size_t y = 0; y < h; y++) {
        const uint8_t *r = img + y * rb, *pr = y ? r - rb : NULL;
        uint8_t *cand[5];
        unsigned long sum[5] = {0};
        for (int f = 0; f < 5; f++)
            cand[f] = scratch + (size_t)f * rb;
        for (size_t i = 0; i < rb; i++) {
            int x = r[i], a = i >= bpp ? r[i - bpp] : 0, b = pr ? pr[i] : 0;
            int c = pr && i >= bpp ? pr[i - bpp] : 0;
            uint8_t v[5] = {(uint8_t)x, (uint8_t)(x - a), (uint8_t)(x - b),
                            (uint8_t)(x - ((a + b) >> 1)), (uint8_t)(x - paeth(a, b, c))};
            for (int f = 0; f < 5; f++) {
                cand[f][i] = v[f];
                sum[f] += v[f] < 128 ? v[f] : 256u - v[f];
            }
        }
        int best = 0;
        for (int f = 1; f < 5; f++)
            if (sum[f] < sum[best])
                best = f;
        uint8_t *o = out + y * (rb + 1);
        o[0] = (uint8_t)best;
        memcpy(o + 1, cand[best], rb);
    }
}

/* A key the writer accepts: 1-79 printable ASCII characters, no leading,
 * trailing or consecutive spaces (PNG's keyword rules, restricted to ASCII
 * so the bytes mean the same in Latin-1 and UTF-8). */
static int valid_key(const char *k)
{
    size_t n = strlen(k);
    if (n < 1 || n > 79 || k[0] == ' ' || k[n - 1] == ' ')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (k[i] < 32 || k[i] > 126 || (k[i] == ' ' && k[i + 1] == ' '))
            return 0;
    return 1;
}

static int is_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return 0;
    return 1;
}

/* Appends a chunk at *p (room reserved) and advances *p. */
static void put_chunk(uint8_t **p, const char *type, const uint8_t *a, size_t na, const uint8_t *b,
                      size_t nb)
{
    uint8_t *o = *p;
    put_be32(o, (uint32_t)(na + nb));
    memcpy(o + 4, type, 4);
    if (na)
        memcpy(o + 8, a, na);
    if (nb)
        memcpy(o + 8 + na, b, nb);
    put_be32(o + 8 + na + nb, sd_crc32(0, o + 4, 4 + na + nb));
    *p = o + 12 + na + nb;
}

#define IDAT_CHUNK ((size_t)1 << 20)

sdunet_status sd_png_encode(const uint8_t *rgb, int width, int height, const sd_png_text *texts,
                            int n_texts, uint8_t **out, size_t *out_size, sdunet_error *err)
{
    if (!out || !out_size || !rgb || n_texts < 0 || (n_texts > 0 && !texts))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "png encode: NULL or bad argument");
    *out = NULL;
    *out_size = 0;
    if (width < 1 || height < 1 || width > SD_PNG_MAX_DIM || height > SD_PNG_MAX_DIM ||
        (size_t)width * (size_t)height > SD_PNG_MAX_PIXELS)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "png encode: bad image size %dx%d", width,
                       height);
    size_t total = 8 + 25 + 12; /* signature, IHDR, IEND */
    for (int i = 0; i < n_texts; i++) {
        const char *k = texts[i].key, *v = texts[i].value;
        if (!k || !v)
            return sd_fail(err, SDUNET_E_INVALID_ARG, "png encode: text %d has a NULL string", i);
        if (!valid_key(k))
            return sd_fail(err, SDUNET_E_INVALID_ARG,
                           "png encode: text key %d is not 1-79 printable ASCII characters", i);
        size_t vn = strlen(v);
        if (!is_ascii(v, vn) && !valid_utf8((const uint8_t *)v, vn))
            return sd_fail(err, SDUNET_E_INVALID_ARG, "png encode: text '%s' is not UTF-8", k);
        size_t chunk = strlen(k) + 1 + (is_ascii(v, vn) ? 0 : 4) + vn;
        if (chunk > 0x7FFFFFFFu || !sd_add_size(total, chunk + 12, &total))
            return sd_fail(err, SDUNET_E_INVALID_ARG, "png encode: text '%s' too long", k);
    }
    size_t w = (size_t)width, h = (size_t)height, rb = w * 3;
    uint8_t *filtered = malloc(h * (rb + 1));
    uint8_t *scratch = malloc(5 * rb);
    if (!filtered || !scratch) {
        free(filtered);
        free(scratch);
        return sd_fail(err, SDUNET_E_NOMEM, "png encode: out of memory");
    }
    filter_rows(rgb, w, h, filtered, scratch);
    free(scratch);
    uint8_t *z = NULL;
    size_t zn = 0;
    sdunet_status st = sd_zlib_deflate(filtered, h * (rb + 1), &z, &zn, err);
    free(filtered);
    if (st)
        return st;
    size_t nidat = zn / IDAT_CHUNK + 1;
    uint8_t *buf = NULL;
    if (sd_add_size(total, zn, &total) && sd_add_size(total, 12 * nidat, &total))
        buf = malloc(total);
    if (!buf) {
        free(z);
        return sd_fail(err, SDUNET_E_NOMEM, "png encode: out of memory");
    }
    uint8_t *p = buf;
    memcpy(p, png_sig, 8);
    p += 8;
    uint8_t ihdr[13];
    put_be32(ihdr, (uint32_t)width);
    put_be32(ihdr + 4, (uint32_t)height);
    ihdr[8] = 8;  /* bit depth */
    ihdr[9] = 2;  /* RGB */
    ihdr[10] = 0; /* deflate */
    ihdr[11] = 0; /* adaptive filtering */
    ihdr[12] = 0; /* not interlaced */
    put_chunk(&p, "IHDR", ihdr, 13, NULL, 0);
    for (int i = 0; i < n_texts; i++) {
        const char *k = texts[i].key, *v = texts[i].value;
        size_t kn = strlen(k), vn = strlen(v);
        uint8_t head[80 + 4];
        memcpy(head, k, kn + 1); /* the NUL separates key and the rest */
        if (is_ascii(v, vn)) {
            put_chunk(&p, "tEXt", head, kn + 1, (const uint8_t *)v, vn);
        } else {
            /* Not compressed, method 0, empty language tag and translated key. */
            memset(head + kn + 1, 0, 4);
            put_chunk(&p, "iTXt", head, kn + 5, (const uint8_t *)v, vn);
        }
    }
    for (size_t off = 0; off < zn || off == 0; off += IDAT_CHUNK) {
        size_t k = zn - off < IDAT_CHUNK ? zn - off : IDAT_CHUNK;
        put_chunk(&p, "IDAT", z + off, k, NULL, 0);
        if (off + k >= zn)
            break;
    }
    put_chunk(&p, "IEND", NULL, 0, NULL, 0);
    free(z);
    *out = buf;
    *out_size = (size_t)(p - buf);
    return SDUNET_OK;
}

sdunet_status sd_png_write(const char *path, const uint8_t *rgb, int width, int height,
                           const sd_png_text *texts, int n_texts, sdunet_error *err)
{
    if (!path)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "png write: NULL path");
    uint8_t *png = NULL;
    size_t n = 0;
    sdunet_status st = sd_png_encode(rgb, width, height, texts, n_texts, &png, &n, err);
    if (st)
        return st;
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    if (!tmp) {
        free(png);
        return sd_fail(err, SDUNET_E_NOMEM, "png write: out of memory");
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp-XXXXXX", 12);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        st = sd_fail(err, SDUNET_E_IO, "%s: cannot create: %s", path, strerror(errno));
    } else {
        int bad = fchmod(fd, 0644) != 0 || sd_write_all(fd, png, n) != 0;
        int e = errno;
        if (close(fd) != 0 && !bad) {
            bad = 1;
            e = errno;
        }
        if (!bad && rename(tmp, path) != 0) {
            bad = 1;
            e = errno;
        }
        if (bad) {
            unlink(tmp);
            st = sd_fail(err, SDUNET_E_IO, "%s: cannot write: %s", path, strerror(e));
        }
    }
    free(tmp);
    free(png);
    return st;
}
