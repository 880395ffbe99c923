/* PNG reader and writer, and the zlib codec under them. Test PNGs are
 * built here byte by byte (stored deflate, filters and Adam7 done by this
 * file's own code), so the reader is checked against an independent
 * writer; the writer is checked by round trips and, where available, by
 * Pillow and pngcheck. */
#include "check.h"
#include "io/deflate.h"
#include "io/png.h"

#include <dirent.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------ a growable byte buffer */

typedef struct bytes {
    uint8_t *p;
    size_t n, cap;
} bytes;

static void b_put(bytes *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    if (n)
        memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void b_u8(bytes *b, unsigned v)
{
    uint8_t c = (uint8_t)v;
    b_put(b, &c, 1);
}

static void b_be32(bytes *b, uint32_t v)
{
    uint8_t c[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    b_put(b, c, 4);
}

/* Bitwise CRC-32 and Adler-32, independent of the library's. */
static uint32_t t_crc(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
    }
    return ~c;
}

static uint32_t t_adler(const uint8_t *p, size_t n)
{
    uint32_t a = 1, b = 0;
    for (size_t i = 0; i < n; i++) {
        a = (a + p[i]) % 65521;
        b = (b + a) % 65521;
    }
    return b << 16 | a;
}

static void chunk(bytes *b, const char *type, const void *d, size_t n)
{
    b_be32(b, (uint32_t)n);
    size_t at = b->n;
    b_put(b, type, 4);
    b_put(b, d, n);
    b_be32(b, t_crc(b->p + at, n + 4));
}

/* A zlib stream of stored blocks of at most `blk` bytes. */
static bytes zlib_stored(const uint8_t *d, size_t n, size_t blk)
{
    bytes z = {0};
    b_u8(&z, 0x78);
    b_u8(&z, 0x01);
    size_t off = 0;
    do {
        size_t k = n - off < blk ? n - off : blk;
        b_u8(&z, off + k == n);
        b_u8(&z, k & 0xFF);
        b_u8(&z, k >> 8);
        b_u8(&z, ~k & 0xFF);
        b_u8(&z, (~k >> 8) & 0xFF);
        b_put(&z, d + off, k);
        off += k;
    } while (off < n);
    b_be32(&z, t_adler(d, n));
    return z;
}

static void ihdr(bytes *b, uint32_t w, uint32_t h, int depth, int ctype, int interlace)
{
    uint8_t d[13];
    for (int i = 0; i < 4; i++) {
        d[i] = (uint8_t)(w >> (24 - 8 * i));
        d[4 + i] = (uint8_t)(h >> (24 - 8 * i));
    }
    d[8] = (uint8_t)depth;
    d[9] = (uint8_t)ctype;
    d[10] = d[11] = 0;
    d[12] = (uint8_t)interlace;
    b_put(b, "\x89PNG\r\n\x1a\n", 8);
    chunk(b, "IHDR", d, 13);
}

/* -------------------------------------------------- a reference encoder */

static int channels_of(int ctype)
{
    return ctype == 0 || ctype == 3 ? 1 : ctype == 2 ? 3 : ctype == 4 ? 2 : 4;
}

static int t_paeth(int a, int b, int c)
{
    int p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
    return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/* Appends the scanlines of a w x h grid of samples (s[(y * W + x) * ch + c]
 * of the full image width W, taking every dx-th column from x0 and every
 * dy-th row from y0), packed at `depth` and filtered with type (row + f0) % 5. */
static void scanlines(bytes *raw, const unsigned *s, int W, int x0, int y0, int dx, int dy, int w,
                      int h, int depth, int ch, int f0)
{
    size_t rb = ((size_t)w * ch * depth + 7) / 8, bpp = ((size_t)ch * depth + 7) / 8;
    uint8_t *cur = calloc(rb + 1, 1), *prev = calloc(rb + 1, 1), *out = malloc(rb + 1);
    for (int y = 0; y < h; y++) {
        memset(cur, 0, rb);
        for (int x = 0; x < w; x++)
            for (int c = 0; c < ch; c++) {
                unsigned v = s[((size_t)(y0 + y * dy) * W + x0 + x * dx) * ch + c];
                size_t i = (size_t)x * ch + c;
                if (depth == 16) {
                    cur[2 * i] = (uint8_t)(v >> 8);
                    cur[2 * i + 1] = (uint8_t)v;
                } else if (depth == 8) {
                    cur[i] = (uint8_t)v;
                } else {
                    size_t bit = i * depth;
                    cur[bit / 8] |= (uint8_t)(v << (8 - depth - bit % 8));
                }
            }
        int f = (y + f0) % 5;
        out[0] = (uint8_t)f;
        for (size_t i = 0; i < rb; i++) {
            int a = i >= bpp ? cur[i - bpp] : 0, b = y ? prev[i] : 0;
            int c = y && i >= bpp ? prev[i - bpp] : 0;
            int p = f == 0 ? 0 : f == 1 ? a : f == 2 ? b : f == 3 ? (a + b) / 2 : t_paeth(a, b, c);
            out[1 + i] = (uint8_t)(cur[i] - p);
        }
        b_put(raw, out, rb + 1);
        memcpy(prev, cur, rb);
    }
    free(cur);
    free(prev);
    free(out);
}

typedef struct spec {
    int w, h, depth, ctype, interlace;
    int idat_split; /* IDAT chunk size, 0 for one chunk */
    int npal;
    int trns;
} spec;

/* Builds a PNG of the samples `s` with the given layout; the palette (if
 * any) has entry i = (i * 7, 255 - i, i * 3). */
static bytes build_png(const spec *sp, const unsigned *s)
{
    bytes png = {0}, raw = {0};
    int ch = channels_of(sp->ctype);
    ihdr(&png, (uint32_t)sp->w, (uint32_t)sp->h, sp->depth, sp->ctype, sp->interlace);
    if (sp->npal) {
        uint8_t pal[768];
        for (int i = 0; i < sp->npal; i++) {
            pal[3 * i] = (uint8_t)(i * 7);
            pal[3 * i + 1] = (uint8_t)(255 - i);
            pal[3 * i + 2] = (uint8_t)(i * 3);
        }
        chunk(&png, "PLTE", pal, 3 * (size_t)sp->npal);
    }
    if (sp->trns) {
        uint8_t t[6] = {0, 1, 0, 2, 0, 3};
        chunk(&png, "tRNS", t, sp->ctype == 0 ? 2 : sp->ctype == 2 ? 6 : 1);
    }
    if (!sp->interlace) {
        scanlines(&raw, s, sp->w, 0, 0, 1, 1, sp->w, sp->h, sp->depth, ch, 0);
    } else {
        static const int x0[7] = {0, 4, 0, 2, 0, 1, 0}, y0[7] = {0, 0, 4, 0, 2, 0, 1};
        static const int dx[7] = {8, 8, 4, 4, 2, 2, 1}, dy[7] = {8, 8, 8, 4, 4, 2, 2};
        for (int p = 0; p < 7; p++) {
            int pw = sp->w > x0[p] ? (sp->w - x0[p] + dx[p] - 1) / dx[p] : 0;
            int ph = sp->h > y0[p] ? (sp->h - y0[p] + dy[p] - 1) / dy[p] : 0;
            if (pw && ph)
                scanlines(&raw, s, sp->w, x0[p], y0[p], dx[p], dy[p], pw, ph, sp->depth, ch, p);
        }
    }
    bytes z = zlib_stored(raw.p, raw.n, 1000);
    size_t step = sp->idat_split ? (size_t)sp->idat_split : z.n;
    for (size_t off = 0; off < z.n; off += step)
        chunk(&png, "IDAT", z.p + off, z.n - off < step ? z.n - off : step);
    chunk(&png, "IEND", NULL, 0);
    free(raw.p);
    free(z.p);
    return png;
}

/* Deterministic samples below 2^depth (palette: below npal). */
static unsigned *make_samples(const spec *sp, unsigned seed)
{
    size_t n = (size_t)sp->w * sp->h * channels_of(sp->ctype);
    unsigned *s = malloc(n * sizeof *s);
    unsigned lim = sp->ctype == 3 ? (unsigned)sp->npal : 1u << sp->depth;
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        s[i] = (x >> 8) % lim;
    }
    /* The extremes always appear. */
    s[0] = 0;
    s[n - 1] = lim - 1;
    return s;
}

static uint8_t expect8(unsigned v, int depth)
{
    if (depth == 16)
        return (uint8_t)((v * 255u + 32767u) / 65535u);
    return (uint8_t)(v * 255u / ((1u << depth) - 1));
}

static void expected_rgb(const spec *sp, const unsigned *s, uint8_t *rgb)
{
    int ch = channels_of(sp->ctype);
    for (size_t i = 0; i < (size_t)sp->w * sp->h; i++) {
        const unsigned *p = s + i * ch;
        uint8_t *o = rgb + 3 * i;
        if (sp->ctype == 3) {
            o[0] = (uint8_t)(p[0] * 7);
            o[1] = (uint8_t)(255 - p[0]);
            o[2] = (uint8_t)(p[0] * 3);
        } else if (ch <= 2) {
            o[0] = o[1] = o[2] = expect8(p[0], sp->depth);
        } else {
            for (int c = 0; c < 3; c++)
                o[c] = expect8(p[c], sp->depth);
        }
    }
}

/* Decodes and, on failure, checks the image was left empty. */
static sdunet_status decode(const bytes *b, sd_image *img, sdunet_error *err)
{
    memset(img, 0x5A, sizeof *img);
    sdunet_status st = sd_png_decode(b->p, b->n, img, err);
    if (st) {
        CHECK(img->data == NULL && img->texts == NULL && img->n_texts == 0 && img->width == 0,
              "image not cleared on error");
        CHECK(err->code == st && err->message[0], "error not filled");
    }
    return st;
}

/* ------------------------------------------------------------- decoding */

static void check_spec(const spec *sp, unsigned seed)
{
    unsigned *s = make_samples(sp, seed);
    bytes png = build_png(sp, s);
    uint8_t *want = malloc((size_t)sp->w * sp->h * 3);
    expected_rgb(sp, s, want);
    sd_image img;
    sdunet_error err;
    sdunet_status st = decode(&png, &img, &err);
    CHECK(st == SDUNET_OK, "ct %d depth %d interlace %d %dx%d: %s", sp->ctype, sp->depth,
          sp->interlace, sp->w, sp->h, err.message);
    if (st == SDUNET_OK) {
        CHECK(img.width == sp->w && img.height == sp->h && img.channels == 3, "size %dx%dx%d",
              img.width, img.height, img.channels);
        int alpha = sp->ctype == 4 || sp->ctype == 6 || sp->trns;
        CHECK(img.has_alpha == alpha, "has_alpha %d, want %d", img.has_alpha, alpha);
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < (size_t)sp->w * sp->h * 3; i++)
            if (img.data[i] != want[i] && !bad++)
                first = i;
        CHECK(bad == 0,
              "ct %d depth %d interlace %d %dx%d: %zu bytes differ, first at %zu (%d vs %d)",
              sp->ctype, sp->depth, sp->interlace, sp->w, sp->h, bad, first, img.data[first],
              want[first]);
    }
    sd_image_free(&img);
    free(s);
    free(png.p);
    free(want);
}

static void test_decode_all_types(void)
{
    static const int combos[][2] = {{0, 1}, {0, 2},  {0, 4},  {0, 8}, {0, 16},
                                    {2, 8}, {2, 16}, {3, 1},  {3, 2}, {3, 4},
                                    {3, 8}, {4, 8},  {4, 16}, {6, 8}, {6, 16}};
    static const int sizes[][2] = {{1, 1}, {3, 2}, {13, 11}, {33, 9}};
    unsigned seed = 1;
    for (size_t c = 0; c < sizeof combos / sizeof combos[0]; c++)
        for (size_t z = 0; z < sizeof sizes / sizeof sizes[0]; z++)
            for (int il = 0; il < 2; il++) {
                spec sp = {sizes[z][0], sizes[z][1], combos[c][1], combos[c][0], il, 0, 0, 0};
                if (sp.ctype == 3)
                    sp.npal = sp.depth == 8 ? 200 : (1 << sp.depth) - (sp.depth > 1);
                sp.idat_split = (int)(seed % 3) * 5; /* one chunk, or 5- or 10-byte chunks */
                check_spec(&sp, seed++);
            }
}

static void test_decode_trns(void)
{
    spec a = {5, 4, 8, 2, 0, 0, 0, 1}, b = {5, 4, 4, 0, 1, 0, 0, 1}, c = {6, 3, 2, 3, 0, 7, 4, 1};
    check_spec(&a, 7);
    check_spec(&b, 8);
    check_spec(&c, 9);
}

/* A picture big enough that each pass has many rows, with all filters. */
static void test_decode_large_interlaced(void)
{
    spec sp = {97, 61, 16, 6, 1, 4096, 0, 0};
    check_spec(&sp, 42);
    spec sp2 = {200, 150, 1, 0, 1, 0, 0, 0};
    check_spec(&sp2, 43);
}

/* zlib.compress(data, 9) of the rows built by dyn_rows(): 1309 bytes in, 440 out, one dynamic
 * block. */
static const uint8_t zlib_dynamic[] = {
    0x78, 0xda, 0x4d, 0x94, 0xc9, 0x91, 0xd8, 0x30, 0x0c, 0x04, 0xff, 0x8e, 0x42, 0x21, 0x10, 0x04,
    0x71, 0x29, 0x29, 0x57, 0xed, 0x67, 0xd3, 0xf7, 0x48, 0x20, 0x47, 0xfe, 0x4d, 0x51, 0x10, 0x1a,
    0xf7, 0xcf, 0xdf, 0xdf, 0x6b, 0xdc, 0xd7, 0xf8, 0xf3, 0x03, 0x21, 0xf7, 0x25, 0xaf, 0x98, 0xf7,
    0xb5, 0x5e, 0xa1, 0xf7, 0x55, 0xaf, 0x58, 0xf8, 0xe4, 0xaf, 0xb2, 0xfb, 0x9a, 0xf6, 0x2a, 0xbf,
    0x2f, 0xed, 0xb7, 0x80, 0x7d, 0xdb, 0xe5, 0x7d, 0x79, 0xff, 0x5a, 0xf7, 0x95, 0xed, 0x4d, 0x00,
    0xd0, 0x56, 0x20, 0xcc, 0xfe, 0x2c, 0x0f, 0x23, 0x5a, 0x82, 0x12, 0xb3, 0x25, 0x38, 0x5b, 0x81,
    0xa3, 0xfb, 0x7f, 0x80, 0x7c, 0xbf, 0x82, 0x54, 0x4d, 0x17, 0xa0, 0x74, 0xbb, 0x05, 0x2b, 0x3a,
    0x85, 0x09, 0x96, 0xb4, 0xed, 0x04, 0xcc, 0xda, 0x60, 0x02, 0x56, 0x1d, 0xea, 0x04, 0x6c, 0x75,
    0x08, 0x13, 0xb0, 0xda, 0x09, 0x83, 0xb6, 0xb6, 0x2d, 0x68, 0xb5, 0x0d, 0x40, 0xb3, 0xed, 0x17,
    0xb4, 0x6c, 0x05, 0x98, 0x77, 0x08, 0x0a, 0xd8, 0xec, 0x1c, 0x14, 0xb0, 0x6c, 0x03, 0x05, 0xcc,
    0x76, 0xf9, 0x00, 0x9b, 0x1d, 0x8d, 0x02, 0x96, 0x5d, 0x23, 0x05, 0xcc, 0x9b, 0xab, 0x4f, 0x0d,
    0xb7, 0x33, 0xc0, 0x64, 0xbf, 0x3e, 0xb0, 0x0e, 0x57, 0x1f, 0x5a, 0xcb, 0x05, 0xda, 0x6a, 0xc4,
    0x02, 0x4d, 0xdb, 0xef, 0x02, 0x4d, 0xf6, 0x2b, 0x68, 0xdb, 0xf4, 0xc9, 0xac, 0xd3, 0x59, 0x80,
    0x65, 0x13, 0x16, 0x60, 0xb1, 0xdb, 0x09, 0x58, 0xec, 0x57, 0xc0, 0x62, 0xdb, 0x16, 0xa5, 0x0d,
    0x1a, 0x98, 0xf0, 0x37, 0x9b, 0x74, 0x66, 0x4a, 0x84, 0xad, 0xc3, 0x35, 0x63, 0x30, 0xe6, 0x0c,
    0xd1, 0x82, 0x81, 0x5b, 0x32, 0x1d, 0x2b, 0x26, 0xe9, 0x83, 0xa9, 0xbb, 0xb0, 0x20, 0x3e, 0x59,
    0x26, 0x57, 0x16, 0xcf, 0x17, 0x4b, 0xea, 0xc6, 0x42, 0xbb, 0xb3, 0xfc, 0x1e, 0x6c, 0x8a, 0x27,
    0x5b, 0xe5, 0x75, 0xfa, 0x17, 0x83, 0x4d, 0x0d, 0x61, 0xab, 0x63, 0x72, 0x00, 0x42, 0x39, 0x16,
    0xb1, 0x38, 0x2c, 0x61, 0x1c, 0xa1, 0x70, 0x0e, 0x56, 0x04, 0xc7, 0x2d, 0x92, 0x43, 0x18, 0xc5,
    0xd1, 0xcc, 0xc1, 0x81, 0x4d, 0xe1, 0x18, 0xe7, 0xe4, 0x70, 0xa7, 0x9e, 0x89, 0xcf, 0xc5, 0x35,
    0x48, 0xe3, 0x72, 0xa4, 0x73, 0x65, 0x32, 0xce, 0x1e, 0x65, 0x72, 0xb9, 0xb2, 0xbe, 0x8d, 0x1b,
    0x5c, 0xc3, 0x12, 0xee, 0x66, 0x4d, 0x2e, 0x6c, 0x29, 0xb7, 0xb8, 0xd6, 0xd9, 0xec, 0xb2, 0xb3,
    0xec, 0xe5, 0x67, 0xff, 0x2b, 0xce, 0x49, 0xa8, 0xe4, 0x5b, 0x1d, 0x3b, 0x19, 0xe3, 0xfc, 0x2c,
    0x43, 0xe8, 0x52, 0xc6, 0x47, 0x92, 0xa1, 0x0c, 0x40, 0xc6, 0x62, 0x5c, 0x32, 0x8c, 0xe1, 0xca,
    0xf0, 0xff, 0x4e, 0x04, 0x73, 0x93, 0x91, 0xdf, 0x91, 0x18, 0xf5, 0x5d, 0x89, 0xe7, 0x8c, 0x9c,
    0x33, 0xf1, 0x1e, 0x92, 0x2d, 0xbf, 0x5a, 0xca, 0x73, 0x49, 0xce, 0xa5, 0x78, 0x4e, 0xc9, 0x39,
    0x15, 0xef, 0x31, 0x39, 0x27, 0xc8, 0xd9, 0x27, 0x91, 0xaf, 0x7d, 0xf2, 0xdc, 0x13, 0x3b, 0x36,
    0xf5, 0x36, 0xfb, 0x1f, 0xcb, 0xaf, 0x3f, 0x09};

static bytes dyn_rows(void)
{
    bytes d = {0};
    char line[64];
    for (int i = 0; i < 120; i++) {
        int n = snprintf(line, sizeof line, "row %d: %d\n", i, i * i % 97);
        b_put(&d, line, (size_t)n);
    }
    return d;
}

/* The zlib codec alone: another encoder's dynamic block, our round trips
 * on data that selects each block type, and the output bound. */
static void test_zlib(void)
{
    sdunet_error err;
    bytes want = dyn_rows();
    uint8_t *out = NULL;
    size_t n = 0;
    sdunet_status st =
        sd_zlib_inflate(zlib_dynamic, sizeof zlib_dynamic, 0, &out, 1 << 20, &n, "t", &err);
    CHECK(st == SDUNET_OK && n == want.n && memcmp(out, want.p, n) == 0, "dynamic: %s",
          st ? err.message : "content differs");
    free(out);
    /* One byte short of the output: refused, nothing handed out. */
    out = NULL;
    st = sd_zlib_inflate(zlib_dynamic, sizeof zlib_dynamic, 0, &out, want.n - 1, &n, "t", &err);
    CHECK(st == SDUNET_E_FORMAT && out == NULL, "bound: %d", (int)st);
    /* Exact mode with a larger buffer than the stream fills. */
    uint8_t *buf = malloc(want.n + 1);
    st = sd_zlib_inflate(zlib_dynamic, sizeof zlib_dynamic, 1, &buf, want.n + 1, &n, "t", &err);
    CHECK(st == SDUNET_E_FORMAT, "short stream accepted in exact mode");
    free(buf);
    /* Every truncation fails. */
    for (size_t k = 0; k < sizeof zlib_dynamic; k++) {
        out = NULL;
        st = sd_zlib_inflate(zlib_dynamic, k, 0, &out, 1 << 20, &n, "t", &err);
        CHECK(st == SDUNET_E_FORMAT && out == NULL, "truncated at %zu accepted", k);
    }
    /* A flipped bit anywhere fails or changes nothing it should not. */
    uint8_t flip[sizeof zlib_dynamic];
    for (size_t k = 0; k < sizeof zlib_dynamic; k += 7) {
        memcpy(flip, zlib_dynamic, sizeof flip);
        flip[k] ^= 0x10;
        out = NULL;
        st = sd_zlib_inflate(flip, sizeof flip, 0, &out, 1 << 20, &n, "t", &err);
        CHECK(st != SDUNET_OK || (n == want.n && !memcmp(out, want.p, n)),
              "bit flip at %zu gave different data with a good Adler-32", k);
        free(out);
    }
    free(want.p);

    /* Round trips: empty, one byte, text (fixed or dynamic), noise (stored). */
    size_t sizes[] = {0, 1, 5000, 200000};
    for (int t = 0; t < 4; t++) {
        size_t m = sizes[t];
        uint8_t *d = malloc(m + 1);
        uint32_t x = 12345;
        for (size_t i = 0; i < m; i++) {
            x = x * 1664525u + 1013904223u;
            d[i] = t == 3 ? (uint8_t)(x >> 24) : (uint8_t)("abcab  "[(x >> 24) % 7]);
        }
        uint8_t *z = NULL;
        size_t zn = 0;
        st = sd_zlib_deflate(d, m, &z, &zn, &err);
        CHECK(st == SDUNET_OK, "deflate %zu: %s", m, err.message);
        if (t == 3)
            CHECK(zn <= m + m / 1000 + 64, "noise grew to %zu from %zu", zn, m);
        if (t == 2)
            CHECK(zn < m / 2, "text only went from %zu to %zu", m, zn);
        uint8_t *back = malloc(m + 1);
        st = sd_zlib_inflate(z, zn, 1, &back, m, &n, "t", &err);
        CHECK(st == SDUNET_OK && n == m && (m == 0 || !memcmp(back, d, m)), "round trip %zu: %s", m,
              st ? err.message : "differs");
        free(back);
        free(z);
        free(d);
    }
    /* Header and stream checks; the broken streams are ones zlib also
     * rejects, each for the reason named. */
    static const uint8_t bad_method[] = {0x78 | 1, 0x9c, 3, 0, 0, 0, 0, 1};
    static const uint8_t bad_check[] = {0x78, 0x9d, 3, 0, 0, 0, 0, 1};
    static const uint8_t dict[] = {0x78, 0xbb, 0, 0, 0, 1, 3, 0, 0, 0, 0, 1};
    static const uint8_t empty_ok[] = {0x78, 0x9c, 3, 0, 0, 0, 0, 1};
    static const uint8_t bad_adler[] = {0x78, 0x9c, 3, 0, 0, 0, 0, 2};
    static const uint8_t bad_type[] = {0x78, 0x9c, 7, 0, 0, 0, 0, 1};
    /* Fixed Huffman: literal 'a', then length 3 at distance 1 ("aaaa"), or
     * at distance 2, one byte before the start. */
    static const uint8_t dist1[] = {0x78, 0x01, 0x4b, 0x04, 0x02, 0x00, 0x03, 0xce, 0x01, 0x85};
    static const uint8_t dist2[] = {0x78, 0x01, 0x4b, 0x04, 0x42, 0x00, 0x03, 0xce, 0x01, 0x85};
    /* A stored block whose NLEN is not the complement of LEN. */
    static const uint8_t nlen[] = {0x78, 0x01, 0x01, 0x01, 0x00, 0xfe, 0xfe, 'x', 0, 0x79, 0, 0x79};
    /* Dynamic: 256 literals of length 8 and none for end-of-block. */
    static const uint8_t no_eob[] = {0x78, 0x01, 0x05, 0xe0, 0x01, 0x24, 0x00, 0x00, 0x00, 0x00,
                                     0x00, 0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                     0xff, 0xff, 0xff, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01};
    /* Dynamic: 138 + 121 zero lengths for 258 symbols. */
    static const uint8_t overrun[] = {0x78, 0x01, 0x05, 0xe0, 0x81, 0x20, 0x00, 0x00, 0x00, 0x00,
                                      0x00, 0xfc, 0x77, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01};
    /* Dynamic: a repeat (16) as the first code length. */
    static const uint8_t first16[] = {0x78, 0x01, 0x05, 0xe0, 0x03, 0x20, 0x00, 0x00, 0x00,
                                      0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x01};
    /* Dynamic: HLIT 287 and HDIST 32 (more lengths than the format has). */
    static const uint8_t hlit287[] = {0x78, 0x01, 0xf5, 0xff, 0x81, 0x20, 0x00, 0x00, 0x00,
                                      0x00, 0x00, 0xfc, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01};
    const struct {
        const uint8_t *p;
        size_t n;
        sdunet_status want;
        const char *needle;
    } hs[] = {{bad_method, 8, SDUNET_E_FORMAT, "header"},
              {bad_check, 8, SDUNET_E_FORMAT, "header"},
              {dict, 12, SDUNET_E_FORMAT, "dictionary"},
              {empty_ok, 8, SDUNET_OK, NULL},
              {bad_adler, 8, SDUNET_E_FORMAT, "Adler"},
              {bad_type, 8, SDUNET_E_FORMAT, "block type"},
              {dist1, 10, SDUNET_OK, NULL},
              {dist2, 10, SDUNET_E_FORMAT, "too far back"},
              {nlen, 12, SDUNET_E_FORMAT, "length check"},
              {no_eob, sizeof no_eob, SDUNET_E_FORMAT, "end-of-block"},
              {overrun, sizeof overrun, SDUNET_E_FORMAT, "overrun"},
              {first16, sizeof first16, SDUNET_E_FORMAT, "no previous"},
              {hlit287, sizeof hlit287, SDUNET_E_FORMAT, "too many"}};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++) {
        out = NULL;
        memset(&err, 0, sizeof err);
        st = sd_zlib_inflate(hs[i].p, hs[i].n, 0, &out, 100, &n, "t", &err);
        CHECK(st == hs[i].want, "stream case %zu: %d (%s)", i, (int)st, err.message);
        if (hs[i].needle)
            CHECK(strstr(err.message, hs[i].needle) != NULL, "stream case %zu: '%s' lacks '%s'", i,
                  err.message, hs[i].needle);
        if (hs[i].p == dist1)
            CHECK(st == SDUNET_OK && n == 4 && !memcmp(out, "aaaa", 4), "distance 1 copy");
        free(out);
    }
}

/* ------------------------------------------------------------ round trips */

static uint8_t *pattern(int w, int h, int kind)
{
    uint8_t *p = malloc((size_t)w * h * 3);
    uint32_t x = 99;
    for (int y = 0; y < h; y++)
        for (int i = 0; i < w * 3; i++) {
            x = x * 1664525u + 1013904223u;
            uint8_t v =
                kind == 0
                    ? (uint8_t)(x >> 24)
                    : (uint8_t)((i / 3) * 255 / (w > 1 ? w - 1 : 1) / 2 + y / 4 + (i % 3) * 20);
            p[(size_t)y * w * 3 + i] = v;
        }
    return p;
}

static void roundtrip(int w, int h, int kind, size_t *png_size)
{
    uint8_t *rgb = pattern(w, h, kind);
    uint8_t *png = NULL;
    size_t n = 0;
    sdunet_error err;
    sdunet_status st = sd_png_encode(rgb, w, h, NULL, 0, &png, &n, &err);
    CHECK(st == SDUNET_OK, "encode %dx%d: %s", w, h, err.message);
    bytes b = {png, n, n};
    sd_image img;
    st = decode(&b, &img, &err);
    CHECK(st == SDUNET_OK, "decode %dx%d: %s", w, h, err.message);
    if (st == SDUNET_OK)
        CHECK(img.width == w && img.height == h && !img.has_alpha && img.n_texts == 0 &&
                  !memcmp(img.data, rgb, (size_t)w * h * 3),
              "%dx%d pixels differ", w, h);
    if (png_size)
        *png_size = n;
    sd_image_free(&img);
    free(png);
    free(rgb);
}

static void test_roundtrip_sizes(void)
{
    static const int sizes[][2] = {{1, 1}, {1, 7}, {7, 1}, {2, 3}, {5, 5}, {33, 17}, {255, 3}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        for (int kind = 0; kind < 2; kind++)
            roundtrip(sizes[i][0], sizes[i][1], kind, NULL);
}

/* Noise is stored at little more than raw size, a smooth picture compresses
 * well, and a 1024x1024 encode takes well under a second. */
static void test_roundtrip_compression(void)
{
    size_t n = 0;
    roundtrip(512, 512, 0, &n);
    size_t raw = 512 * (512 * 3 + 1);
    CHECK(n <= raw + raw / 100, "noise: %zu bytes for %zu raw", n, raw);
    roundtrip(512, 512, 1, &n);
    CHECK(n < raw / 20, "smooth: %zu bytes for %zu raw", n, raw);
    printf("  512x512: smooth picture %zu bytes (raw %zu)\n", n, raw);

    int w = 1024, h = 1024;
    uint8_t *rgb = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                rgb[((size_t)y * w + x) * 3 + c] =
                    (uint8_t)(128 + 100 * sin(x * 0.01 + c) * cos(y * 0.013) + (x * y % 7));
    uint8_t *png = NULL;
    sdunet_error err;
    /* CPU time, so a busy machine does not fail the check. */
    clock_t t0 = clock();
    sdunet_status st = sd_png_encode(rgb, w, h, NULL, 0, &png, &n, &err);
    double enc = (double)(clock() - t0) / CLOCKS_PER_SEC;
    CHECK(st == SDUNET_OK, "encode 1024: %s", err.message);
    bytes b = {png, n, n};
    sd_image img;
    t0 = clock();
    st = decode(&b, &img, &err);
    double dec = (double)(clock() - t0) / CLOCKS_PER_SEC;
    CHECK(st == SDUNET_OK && !memcmp(img.data, rgb, (size_t)w * h * 3), "1024 round trip");
    printf("  1024x1024: %zu bytes, encode %.3f s, decode %.3f s (CPU)\n", n, enc, dec);
    /* Timed only in optimized builds without sanitizers. */
#if defined(__OPTIMIZE__)
    if (!t_small_only())
        CHECK(enc < 1.0 && dec < 0.5, "too slow: encode %.3f s, decode %.3f s", enc, dec);
#endif
    sd_image_free(&img);
    free(png);
    free(rgb);
}

static int contains(const uint8_t *p, size_t n, const char *s)
{
    size_t k = strlen(s);
    for (size_t i = 0; i + k <= n; i++)
        if (!memcmp(p + i, s, k))
            return 1;
    return 0;
}

static void test_text_roundtrip(void)
{
    const char *params = "a photo of a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, "
                         "CFG scale: 7, Seed: 1234, Size: 512x512";
    const char *utf8 = "caf\xc3\xa9 \xe2\x98\x95 \xf0\x9f\x90\x88";
    sd_png_text t[4] = {
        {"parameters", params}, {"Comment", utf8}, {"Empty", ""}, {"Software", "sdunet"}};
    uint8_t rgb[3 * 2 * 2] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    uint8_t *png = NULL;
    size_t n = 0;
    sdunet_error err;
    sdunet_status st = sd_png_encode(rgb, 2, 2, t, 4, &png, &n, &err);
    CHECK(st == SDUNET_OK, "encode: %s", err.message);
    CHECK(contains(png, n, "tEXtparameters") && contains(png, n, "iTXtComment") &&
              !contains(png, n, "tEXtComment"),
          "chunk types");
    bytes b = {png, n, n};
    sd_image img;
    st = decode(&b, &img, &err);
    CHECK(st == SDUNET_OK && img.n_texts == 4, "decode: %d texts (%s)", img.n_texts,
          st ? err.message : "");
    for (int i = 0; st == SDUNET_OK && i < 4 && i < img.n_texts; i++)
        CHECK(!strcmp(img.texts[i].key, t[i].key) && !strcmp(img.texts[i].value, t[i].value),
              "text %d: '%s' = '%s'", i, img.texts[i].key, img.texts[i].value);
    CHECK(st == SDUNET_OK && !memcmp(img.data, rgb, sizeof rgb), "pixels");
    sd_image_free(&img);
    free(png);

    /* Refused: bad keys, invalid UTF-8. */
    char long_key[81];
    memset(long_key, 'k', 80);
    long_key[80] = '\0';
    sd_png_text bad[] = {{"", "v"},       {" lead", "v"},  {"trail ", "v"}, {"two  sp", "v"},
                         {long_key, "v"}, {"k\xe9y", "v"}, {"k", "\xc3("},  {"k", "\xed\xa0\x80"},
                         {NULL, "v"},     {"k", NULL}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        png = NULL;
        st = sd_png_encode(rgb, 2, 2, &bad[i], 1, &png, &n, &err);
        CHECK(st == SDUNET_E_INVALID_ARG && png == NULL, "bad text %zu accepted", i);
    }
    sd_png_text ok79 = {long_key + 1, "v"};
    st = sd_png_encode(rgb, 2, 2, &ok79, 1, &png, &n, &err);
    CHECK(st == SDUNET_OK, "79-character key refused: %s", err.message);
    free(png);
}

/* Text chunks written by hand: Latin-1 tEXt, zTXt, compressed and
 * uncompressed iTXt, and malformed ones that are skipped. */
static void test_text_read(void)
{
    spec sp = {2, 2, 8, 2, 0, 0, 0, 0};
    unsigned *s = make_samples(&sp, 3);
    bytes base = build_png(&sp, s);
    free(s);
    /* Insert the text chunks after IHDR (8 + 25 bytes). */
    bytes png = {0};
    b_put(&png, base.p, 33);
    chunk(&png, "tEXt", "Title\0caf\xe9", 10);
    const char *zv = "compressed value";
    bytes z = zlib_stored((const uint8_t *)zv, strlen(zv), 5);
    bytes c = {0};
    b_put(&c, "Desc\0\0", 6);
    b_put(&c, z.p, z.n);
    chunk(&png, "zTXt", c.p, c.n);
    c.n = 0;
    b_put(&c, "Intl\0\1\0en\0Titel\0", 16);
    b_put(&c, z.p, z.n);
    chunk(&png, "iTXt", c.p, c.n);
    chunk(&png, "iTXt", "Plain\0\0\0\0\0\xe2\x82\xac", 13);
    chunk(&png, "tEXt", "NoNul", 5);               /* no separator: skipped */
    chunk(&png, "tEXt", "\0value", 6);             /* empty key: skipped */
    chunk(&png, "iTXt", "Bad\0\0\0\0\0\xff", 9);   /* not UTF-8: skipped */
    chunk(&png, "zTXt", "Bad\0\0\x78\x9c\xff", 8); /* broken stream: skipped */
    chunk(&png, "tEXt", "Nul\0a\0b", 7);           /* NUL in value: skipped */
    b_put(&png, base.p + 33, base.n - 33);
    sd_image img;
    sdunet_error err;
    sdunet_status st = decode(&png, &img, &err);
    CHECK(st == SDUNET_OK, "%s", err.message);
    static const char *want[][2] = {{"Title", "caf\xc3\xa9"},
                                    {"Desc", "compressed value"},
                                    {"Intl", "compressed value"},
                                    {"Plain", "\xe2\x82\xac"}};
    CHECK(img.n_texts == 4, "%d texts", img.n_texts);
    for (int i = 0; i < 4 && i < img.n_texts; i++)
        CHECK(!strcmp(img.texts[i].key, want[i][0]) && !strcmp(img.texts[i].value, want[i][1]),
              "text %d: '%s' = '%s'", i, img.texts[i].key, img.texts[i].value);
    sd_image_free(&img);
    free(base.p);
    free(png.p);
    free(z.p);
    free(c.p);
}

/* Compressed texts: one that expands past SD_PNG_MAX_TEXT is skipped, and
 * many large ones stop at the total limits; the image still decodes. */
static void test_text_limits(void)
{
    spec sp = {2, 2, 8, 2, 0, 0, 0, 0};
    unsigned *s = make_samples(&sp, 3);
    bytes base = build_png(&sp, s);
    free(s);
    bytes png = {0};
    b_put(&png, base.p, 33);
    size_t big = 2u << 20, mid = 800000;
    uint8_t *a = malloc(big);
    memset(a, 'a', big);
    sdunet_error err;
    const size_t sizes[7] = {big, mid, mid, mid, mid, mid, mid};
    for (int i = 0; i < 7; i++) {
        uint8_t *z = NULL;
        size_t zn = 0;
        CHECK(sd_zlib_deflate(a, sizes[i], &z, &zn, &err) == SDUNET_OK, "deflate");
        bytes c = {0};
        b_put(&c, "Big\0\0", 5);
        b_put(&c, z, zn);
        chunk(&png, "zTXt", c.p, c.n);
        free(c.p);
        free(z);
    }
    b_put(&png, base.p + 33, base.n - 33);
    CHECK(png.n < 64 * 1024, "test input %zu bytes", png.n);
    sd_image img;
    sdunet_status st = decode(&png, &img, &err);
    CHECK(st == SDUNET_OK, "%s", err.message);
    size_t total = 0;
    CHECK(img.n_texts >= 1 && img.n_texts <= 4, "%d texts kept", img.n_texts);
    for (int i = 0; i < img.n_texts; i++) {
        size_t n = strlen(img.texts[i].value);
        total += n;
        CHECK(n == mid && img.texts[i].value[0] == 'a', "text %d: %zu bytes", i, n);
    }
    CHECK(total <= SD_PNG_MAX_TEXT_TOTAL, "%zu bytes of text", total);
    sd_image_free(&img);
    free(a);
    free(base.p);
    free(png.p);
}

/* ---------------------------------------------------------- hostile input */

/* A valid 4x3 RGB image's pieces, to assemble broken files from. */
typedef struct parts {
    bytes raw; /* filtered scanlines */
    bytes z;   /* their zlib stream */
} parts;

static parts make_parts(void)
{
    spec sp = {4, 3, 8, 2, 0, 0, 0, 0};
    unsigned *s = make_samples(&sp, 5);
    parts p = {{0}, {0}};
    scanlines(&p.raw, s, 4, 0, 0, 1, 1, 4, 3, 8, 3, 0);
    p.z = zlib_stored(p.raw.p, p.raw.n, 1000);
    free(s);
    return p;
}

static void expect_fail(const bytes *b, sdunet_status want, const char *needle, const char *what)
{
    sd_image img;
    sdunet_error err;
    memset(&err, 0, sizeof err);
    sdunet_status st = decode(b, &img, &err);
    CHECK(st == want, "%s: status %d, want %d (%s)", what, (int)st, (int)want, err.message);
    if (needle)
        CHECK(strstr(err.message, needle) != NULL, "%s: message '%s' lacks '%s'", what, err.message,
              needle);
    sd_image_free(&img);
}

static void test_truncated(void)
{
    spec sp = {9, 7, 8, 6, 1, 20, 0, 0};
    unsigned *s = make_samples(&sp, 11);
    bytes png = build_png(&sp, s);
    free(s);
    sd_image img;
    sdunet_error err;
    CHECK(decode(&png, &img, &err) == SDUNET_OK, "full file: %s", err.message);
    sd_image_free(&img);
    for (size_t k = 0; k < png.n; k++) {
        bytes t = {png.p, k, k};
        expect_fail(&t, SDUNET_E_FORMAT, NULL, "truncated");
    }
    /* Bytes after IEND are ignored. */
    b_put(&png, "junk", 4);
    CHECK(decode(&png, &img, &err) == SDUNET_OK, "trailing bytes: %s", err.message);
    sd_image_free(&img);
    free(png.p);
}

static void test_bad_crc(void)
{
    parts p = make_parts();
    bytes png = {0};
    ihdr(&png, 4, 3, 8, 2, 0);
    chunk(&png, "IDAT", p.z.p, p.z.n);
    chunk(&png, "IEND", NULL, 0);
    static const struct {
        size_t at;
        const char *name;
    } where[] = {{16, "IHDR"}, {8 + 25 + 8, "IDAT"}, {8 + 25 + 12 + 3, "IDAT"}};
    for (size_t i = 0; i < sizeof where / sizeof where[0]; i++) {
        png.p[where[i].at] ^= 1;
        expect_fail(&png, SDUNET_E_FORMAT, where[i].name, "bad CRC");
        png.p[where[i].at] ^= 1;
    }
    png.p[png.n - 1] ^= 0x80;
    expect_fail(&png, SDUNET_E_FORMAT, "IEND", "bad CRC");
    free(png.p);
    free(p.raw.p);
    free(p.z.p);
}

static void test_sizes_and_bombs(void)
{
    parts p = make_parts();
    static const struct {
        uint32_t w, h;
        sdunet_status want;
    } dims[] = {{0, 3, SDUNET_E_FORMAT},
                {4, 0, SDUNET_E_FORMAT},
                {0x80000000u, 1, SDUNET_E_FORMAT},
                {16385, 1, SDUNET_E_UNSUPPORTED},
                {1, 20000, SDUNET_E_UNSUPPORTED},
                {16384, 16384, SDUNET_E_UNSUPPORTED},
                {0xFFFFFFFFu, 0xFFFFFFFFu, SDUNET_E_FORMAT}};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
        bytes png = {0};
        ihdr(&png, dims[i].w, dims[i].h, 8, 2, 0);
        chunk(&png, "IDAT", p.z.p, p.z.n);
        chunk(&png, "IEND", NULL, 0);
        expect_fail(&png, dims[i].want, NULL, "dimensions");
        free(png.p);
    }
    /* 8192x8192 RGB claimed with a few bytes of data: refused before the
     * 200 MB image is allocated. */
    bytes png = {0};
    ihdr(&png, 8192, 8192, 8, 2, 0);
    chunk(&png, "IDAT", p.z.p, p.z.n);
    chunk(&png, "IEND", NULL, 0);
    expect_fail(&png, SDUNET_E_FORMAT, "cannot hold", "bomb");
    free(png.p);

    /* A stream that decompresses to more than the image needs (a zlib bomb
     * in small): stops at the bound. */
    size_t big = p.raw.n + 100000;
    uint8_t *zeros = calloc(big, 1);
    memcpy(zeros, p.raw.p, p.raw.n);
    uint8_t *zb = NULL;
    size_t zn = 0;
    sdunet_error err;
    CHECK(sd_zlib_deflate(zeros, big, &zb, &zn, &err) == SDUNET_OK, "deflate");
    png = (bytes){0};
    ihdr(&png, 4, 3, 8, 2, 0);
    chunk(&png, "IDAT", zb, zn);
    chunk(&png, "IEND", NULL, 0);
    expect_fail(&png, SDUNET_E_FORMAT, "more data", "too much data");
    free(png.p);
    free(zb);
    free(zeros);
    /* And one with too little. */
    bytes shortz = zlib_stored(p.raw.p, p.raw.n - 1, 1000);
    png = (bytes){0};
    ihdr(&png, 4, 3, 8, 2, 0);
    chunk(&png, "IDAT", shortz.p, shortz.n);
    chunk(&png, "IEND", NULL, 0);
    expect_fail(&png, SDUNET_E_FORMAT, "expected", "too little data");
    free(png.p);
    free(shortz.p);
    free(p.raw.p);
    free(p.z.p);
}

static void test_structure_errors(void)
{
    parts p = make_parts();
    uint8_t pal[6] = {0, 0, 0, 255, 255, 255};
    bytes b;
#define START(w, h, d, ct) (b = (bytes){0}, ihdr(&b, w, h, d, ct, 0))
#define IDAT() chunk(&b, "IDAT", p.z.p, p.z.n)
#define IEND() chunk(&b, "IEND", NULL, 0)
#define EXPECT(st, needle, what) (expect_fail(&b, st, needle, what), free(b.p))

    b = (bytes){0};
    b_put(&b, "\x89PNG\r\n\x1a\x0a", 8);
    b.p[1] = 'Q';
    IEND();
    EXPECT(SDUNET_E_FORMAT, "signature", "bad signature");

    b = (bytes){0};
    b_put(&b, "\x89PNG\r\n\x1a\n", 8);
    IDAT();
    IEND();
    EXPECT(SDUNET_E_FORMAT, "IHDR", "missing IHDR");

    START(4, 3, 8, 2);
    IEND();
    EXPECT(SDUNET_E_FORMAT, "IDAT", "missing IDAT");

    START(4, 3, 8, 2);
    IDAT();
    EXPECT(SDUNET_E_FORMAT, "IEND", "missing IEND");

    START(4, 3, 8, 2);
    uint8_t ih[13] = {0, 0, 0, 4, 0, 0, 0, 3, 8, 2, 0, 0, 0};
    chunk(&b, "IHDR", ih, 13);
    IDAT();
    IEND();
    EXPECT(SDUNET_E_FORMAT, "second IHDR", "two IHDR");

    b = (bytes){0};
    b_put(&b, "\x89PNG\r\n\x1a\n", 8);
    chunk(&b, "IHDR", ih, 12);
    IDAT();
    IEND();
    EXPECT(SDUNET_E_FORMAT, "IHDR", "short IHDR");

    static const int bad_combo[][2] = {{0, 3}, {2, 4}, {3, 16}, {4, 1}, {6, 2}, {1, 8}, {5, 8}};
    for (size_t i = 0; i < sizeof bad_combo / sizeof bad_combo[0]; i++) {
        START(4, 3, bad_combo[i][1], bad_combo[i][0]);
        IDAT();
        IEND();
        EXPECT(SDUNET_E_FORMAT, "colour type", "bad depth for colour type");
    }
    b = (bytes){0};
    ihdr(&b, 4, 3, 8, 2, 2);
    IDAT();
    IEND();
    EXPECT(SDUNET_E_FORMAT, "interlace", "interlace method 2");

    START(4, 3, 8, 2);
    chunk(&b, "IDAT", p.z.p, 10);
    chunk(&b, "tEXt", "a\0b", 3);
    chunk(&b, "IDAT", p.z.p + 10, p.z.n - 10);
    IEND();
    EXPECT(SDUNET_E_FORMAT, "consecutive", "IDAT split by another chunk");

    START(4, 3, 8, 2);
    chunk(&b, "IDAT", p.z.p, 10);
    chunk(&b, "IDAT", p.z.p + 10, p.z.n - 10);
    IEND();
    sd_image img;
    sdunet_error err;
    CHECK(decode(&b, &img, &err) == SDUNET_OK, "split IDAT: %s", err.message);
    sd_image_free(&img);
    free(b.p);

    START(4, 3, 8, 2);
    chunk(&b, "abCd", "x", 1); /* unknown ancillary chunk: ignored */
    chunk(&b, "ABCD", "x", 1);
    IDAT();
    IEND();
    EXPECT(SDUNET_E_UNSUPPORTED, "ABCD", "unknown critical chunk");

    START(4, 3, 8, 2);
    chunk(&b, "IH1R", "x", 1);
    IDAT();
    IEND();
    EXPECT(SDUNET_E_FORMAT, "chunk type", "bad chunk type");

    START(4, 3, 8, 2);
    b_be32(&b, 0x80000000u);
    b_put(&b, "IDAT", 4);
    EXPECT(SDUNET_E_FORMAT, "length", "huge chunk length");

    /* Filter types: a 6 in the first row. */
    bytes raw = {0};
    b_put(&raw, p.raw.p, p.raw.n);
    raw.p[0] = 5;
    bytes z = zlib_stored(raw.p, raw.n, 1000);
    START(4, 3, 8, 2);
    chunk(&b, "IDAT", z.p, z.n);
    IEND();
    EXPECT(SDUNET_E_FORMAT, "filter", "filter type 5");
    free(z.p);
    free(raw.p);

    /* zlib errors inside IDAT. */
    bytes zz = {0};
    b_put(&zz, p.z.p, p.z.n);
    zz.p[zz.n - 1] ^= 1;
    START(4, 3, 8, 2);
    chunk(&b, "IDAT", zz.p, zz.n);
    IEND();
    EXPECT(SDUNET_E_FORMAT, "Adler", "bad Adler-32");
    zz.p[zz.n - 1] ^= 1;
    zz.p[0] = 0x77;
    START(4, 3, 8, 2);
    chunk(&b, "IDAT", zz.p, zz.n);
    IEND();
    EXPECT(SDUNET_E_FORMAT, "header", "bad zlib header");
    free(zz.p);

    /* PLTE rules. */
    START(4, 3, 8, 2);
    IDAT();
    chunk(&b, "PLTE", pal, 6);
    IEND();
    EXPECT(SDUNET_E_FORMAT, "PLTE after IDAT", "PLTE after IDAT");
    START(4, 3, 8, 0);
    chunk(&b, "PLTE", pal, 6);
    IDAT();
    IEND();
    EXPECT(SDUNET_E_FORMAT, "greyscale", "PLTE in grey");
    START(4, 3, 8, 3);
    chunk(&b, "PLTE", pal, 5);
    IDAT();
    IEND();
    EXPECT(SDUNET_E_FORMAT, "PLTE length", "PLTE length 5");
    START(4, 3, 8, 3);
    chunk(&b, "PLTE", pal, 0);
    IDAT();
    IEND();
    EXPECT(SDUNET_E_FORMAT, "PLTE length", "PLTE length 0");
    uint8_t bigpal[771] = {0};
    START(4, 3, 8, 3);
    chunk(&b, "PLTE", bigpal, 771);
    IDAT();
    IEND();
    EXPECT(SDUNET_E_FORMAT, "PLTE length", "PLTE of 257 entries");
    START(4, 3, 8, 3);
    chunk(&b, "PLTE", pal, 6);
    chunk(&b, "PLTE", pal, 6);
    IDAT();
    IEND();
    EXPECT(SDUNET_E_FORMAT, "second PLTE", "two PLTE");
    START(4, 3, 8, 3);
    IDAT();
    IEND();
    EXPECT(SDUNET_E_FORMAT, "without PLTE", "palette image without PLTE");

    /* A palette index past the palette's end. */
    spec sp = {5, 3, 4, 3, 0, 0, 9, 0};
    unsigned *s = make_samples(&sp, 17);
    s[7] = 12;
    b = build_png(&sp, s);
    EXPECT(SDUNET_E_FORMAT, "palette index 12", "palette index out of range");
    sp.interlace = 1;
    b = build_png(&sp, s);
    EXPECT(SDUNET_E_FORMAT, "palette index 12", "palette index out of range, interlaced");
    s[7] = 9; /* one past the last entry */
    b = build_png(&sp, s);
    EXPECT(SDUNET_E_FORMAT, "palette index 9", "palette index = palette size");
    s[7] = 8;
    b = build_png(&sp, s);
    CHECK(decode(&b, &img, &err) == SDUNET_OK, "last palette entry: %s", err.message);
    sd_image_free(&img);
    free(b.p);
    free(s);

    /* Arguments. */
    CHECK(sd_png_decode(NULL, 5, &img, &err) == SDUNET_E_INVALID_ARG, "NULL data");
    CHECK(sd_png_decode(p.z.p, 5, NULL, &err) == SDUNET_E_INVALID_ARG, "NULL image");
    CHECK(sd_png_decode(NULL, 0, &img, &err) == SDUNET_E_FORMAT, "empty input");
    uint8_t px[3] = {0};
    uint8_t *out = NULL;
    size_t n;
    CHECK(sd_png_encode(px, 0, 1, NULL, 0, &out, &n, &err) == SDUNET_E_INVALID_ARG, "width 0");
    CHECK(sd_png_encode(px, 1, 16385, NULL, 0, &out, &n, &err) == SDUNET_E_INVALID_ARG,
          "height 16385");
    CHECK(sd_png_encode(NULL, 1, 1, NULL, 0, &out, &n, &err) == SDUNET_E_INVALID_ARG, "NULL rgb");
    CHECK(sd_png_encode(px, 1, 1, NULL, 1, &out, &n, &err) == SDUNET_E_INVALID_ARG, "NULL texts");
    CHECK(out == NULL, "output handed out on failure");
    sd_image_free(NULL);
#undef START
#undef IDAT
#undef IEND
#undef EXPECT
    free(p.raw.p);
    free(p.z.p);
}

/* ------------------------------------------------------------------ files */

static int count_dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    if (!d)
        return -1;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

static void test_files(void)
{
    uint8_t *rgb = pattern(37, 23, 1);
    sd_png_text t = {"parameters", "Steps: 20"};
    sdunet_error err;
    const char *path = t_tmp("files.png");
    int before = count_dir_entries(t_tmp_dir());
    CHECK(sd_png_write(path, rgb, 37, 23, &t, 1, &err) == SDUNET_OK, "write: %s", err.message);
    /* Overwrite in place. */
    CHECK(sd_png_write(path, rgb, 37, 23, &t, 1, &err) == SDUNET_OK, "rewrite: %s", err.message);
    CHECK(count_dir_entries(t_tmp_dir()) == before + 1, "temporary files left behind");
    sd_image img;
    CHECK(sd_png_read(path, &img, &err) == SDUNET_OK, "read: %s", err.message);
    CHECK(img.width == 37 && img.height == 23 && img.data &&
              !memcmp(img.data, rgb, (size_t)37 * 23 * 3),
          "pixels");
    CHECK(img.n_texts == 1 && !strcmp(img.texts[0].value, "Steps: 20"), "text");
    sd_image_free(&img);
    CHECK(sd_png_read(t_tmp("missing.png"), &img, &err) == SDUNET_E_IO, "missing file");
    CHECK(sd_png_read(t_tmp_dir(), &img, &err) == SDUNET_E_IO, "directory");
    CHECK(sd_png_write(t_tmp("no/such/dir.png"), rgb, 37, 23, NULL, 0, &err) == SDUNET_E_IO,
          "unwritable path");
    /* A file with a bad CRC names the file and the chunk. */
    size_t n = 0;
    uint8_t *data = t_read_file(path, &n);
    CHECK(data && n > 40, "read back");
    if (data && n > 40) {
        data[20] ^= 4;
        const char *bad = t_tmp("bad.png");
        t_write_file(bad, data, n);
        CHECK(sd_png_read(bad, &img, &err) == SDUNET_E_FORMAT && strstr(err.message, bad) &&
                  strstr(err.message, "IHDR"),
              "bad file: %s", err.message);
        unlink(bad);
    }
    free(data);
    unlink(path);
    free(rgb);
}

/* ------------------------------------------------ independent decoders */

static const char *g_python;

/* A Python with Pillow: python3, else the system one. */
static const char *find_pil_python(void)
{
    static const char *const cands[] = {"python3", "/usr/bin/python3"};
    for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++) {
        char cmd[256];
        snprintf(cmd, sizeof cmd, "%s -c 'import PIL.Image' >/dev/null 2>&1", cands[i]);
        if (system(cmd) == 0)
            return cands[i];
    }
    return NULL;
}

static int have_pngcheck(void)
{
    return system("pngcheck -h >/dev/null 2>&1") != -1 &&
           system("command -v pngcheck >/dev/null 2>&1") == 0;
}

/* Pillow reads our files (noise, a smooth picture and text chunks) to the
 * same pixels and texts; and we read Pillow's files of other colour types
 * to the pixels Pillow reports. */
static void test_pil(void)
{
    static const int cases[][3] = {{37, 23, 1}, {64, 48, 0}, {1, 1, 0}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int w = cases[c][0], h = cases[c][1];
        uint8_t *rgb = pattern(w, h, cases[c][2]);
        sd_png_text t[2] = {{"parameters", "Steps: 20, Seed: 7"}, {"Title", "\xc3\xa9t\xc3\xa9"}};
        const char *path = t_tmp("pil.png");
        sdunet_error err;
        CHECK(sd_png_write(path, rgb, w, h, t, 2, &err) == SDUNET_OK, "write: %s", err.message);
        char cmd[1024];
        snprintf(
            cmd, sizeof cmd,
            "%s -c 'import sys; from PIL import Image; im = Image.open(sys.argv[1]); "
            "im.load(); print(im.mode, im.size[0], im.size[1]); "
            "print(im.text.get(\"parameters\"), im.text.get(\"Title\") == \"\\u00e9t\\u00e9\"); "
            "print(im.convert(\"RGB\").tobytes().hex())' '%s' 2>&1",
            g_python, path);
        FILE *f = popen(cmd, "r");
        CHECK(f != NULL, "popen");
        if (!f) {
            free(rgb);
            continue;
        }
        size_t cap = (size_t)w * h * 6 + 4096;
        char *outbuf = calloc(cap, 1);
        size_t n = fread(outbuf, 1, cap - 1, f);
        pclose(f);
        outbuf[n] = '\0';
        char head[128];
        snprintf(head, sizeof head, "RGB %d %d\nSteps: 20, Seed: 7 True\n", w, h);
        CHECK(!strncmp(outbuf, head, strlen(head)), "Pillow says: %.300s", outbuf);
        const char *hex = outbuf + strlen(head);
        int same = strlen(hex) >= (size_t)w * h * 6;
        for (size_t i = 0; same && i < (size_t)w * h * 3; i++) {
            unsigned v;
            same = sscanf(hex + 2 * i, "%2x", &v) == 1 && v == rgb[i];
        }
        CHECK(same, "Pillow's pixels differ from ours (%dx%d)", w, h);
        free(outbuf);
        free(rgb);
        unlink(path);
    }

    /* The other way: Pillow writes modes L, LA, P, RGBA, I;16 and an
     * optimized P; we decode and compare to Pillow's own RGB conversion
     * (for I;16, to the high byte rounded as documented). */
    static const char *const modes[] = {"L", "LA", "P", "RGBA", "1", "I;16"};
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        const char *src = t_tmp("from-pil.png");
        char cmd[2048];
        snprintf(
            cmd, sizeof cmd,
            "%s -c 'import sys\nfrom PIL import Image\nmode = sys.argv[2]\n"
            "w, h = 19, 13\nim = Image.new(\"RGBA\", (w, h))\n"
            "im.putdata([((x * 13 + y * 7) %% 256, (x * y * 5) %% 256, (255 - x * 11) %% 256, "
            "(y * 19) %% 256) for y in range(h) for x in range(w)])\n"
            "if mode == \"I;16\":\n"
            "    g = Image.new(\"I;16\", (w, h)); g.putdata([(x * 3001 + y * 977) %% 65536 for y "
            "in range(h) for x in range(w)]); g.save(sys.argv[1])\n"
            "    print(\"\".join(\"%%02x\" %% (((x * 3001 + y * 977) %% 65536 * 255 + 32767) // "
            "65535) * 3 for y in range(h) for x in range(w)))\n"
            "else:\n"
            "    c = im.convert(mode) if mode != \"P\" else im.convert(\"RGB\").quantize(37)\n"
            "    c.save(sys.argv[1])\n"
            "    print(c.convert(\"RGB\").tobytes().hex())' '%s' '%s' 2>&1",
            g_python, src, modes[m]);
        FILE *f = popen(cmd, "r");
        if (!f) {
            CHECK(0, "popen");
            continue;
        }
        char hex[19 * 13 * 6 + 256];
        size_t n = fread(hex, 1, sizeof hex - 1, f);
        pclose(f);
        hex[n] = '\0';
        sd_image img;
        sdunet_error err;
        sdunet_status st = sd_png_read(src, &img, &err);
        CHECK(st == SDUNET_OK, "mode %s: %s (Pillow: %.200s)", modes[m], err.message, hex);
        if (st == SDUNET_OK) {
            int same = img.width == 19 && img.height == 13 && n >= 19 * 13 * 6;
            for (size_t i = 0; same && i < 19 * 13 * 3; i++) {
                unsigned v;
                same = sscanf(hex + 2 * i, "%2x", &v) == 1 && v == img.data[i];
            }
            CHECK(same, "mode %s: pixels differ from Pillow's", modes[m]);
            CHECK(img.has_alpha == (!strcmp(modes[m], "LA") || !strcmp(modes[m], "RGBA")),
                  "mode %s: has_alpha %d", modes[m], img.has_alpha);
        }
        sd_image_free(&img);
        unlink(src);
    }
}

static void test_pngcheck(void)
{
    uint8_t *rgb = pattern(130, 70, 0);
    sd_png_text t[2] = {{"parameters", "a cat\nSteps: 20"}, {"Comment", "\xe2\x98\x95"}};
    const char *path = t_tmp("check.png");
    sdunet_error err;
    CHECK(sd_png_write(path, rgb, 130, 70, t, 2, &err) == SDUNET_OK, "write: %s", err.message);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "pngcheck -q '%s' >/dev/null 2>&1", path);
    CHECK(system(cmd) == 0, "pngcheck rejects our file");
    /* And it does reject a broken one (so the check above can fail). */
    size_t n = 0;
    uint8_t *d = t_read_file(path, &n);
    if (d && n > 60) {
        d[n - 20] ^= 0xFF;
        t_write_file(path, d, n);
        CHECK(system(cmd) != 0, "pngcheck accepts a corrupted file");
    }
    free(d);
    unlink(path);
    free(rgb);
}

static void independent_decoders(void)
{
    g_python = find_pil_python();
    if (g_python)
        RUN(test_pil);
    else
        printf("# skip - png Pillow decoder (no python with PIL found)\n");
    if (have_pngcheck())
        RUN(test_pngcheck);
    else
        printf("# skip - png pngcheck (pngcheck not found)\n");
}

int main(void)
{
    RUN(test_decode_all_types);
    RUN(test_decode_trns);
    RUN(test_decode_large_interlaced);
    RUN(test_zlib);
    RUN(test_roundtrip_sizes);
    RUN(test_roundtrip_compression);
    RUN(test_text_roundtrip);
    RUN(test_text_read);
    RUN(test_text_limits);
    RUN(test_truncated);
    RUN(test_bad_crc);
    RUN(test_sizes_and_bombs);
    RUN(test_structure_errors);
    RUN(test_files);
    independent_decoders();
    return t_summary();
}
