/* zlib/deflate codec (RFC 1950, RFC 1951).
 *
 * Decompressor: a bit reader over the whole input with zero padding past its
 * end (consuming any of the padding marks the stream truncated), Huffman
 * decoding through a 9-bit lookup table with a canonical bit-by-bit walk for
 * longer codes, and an output that never grows past the caller's bound.
 *
 * Compressor: LZ77 with hash chains over 3-byte prefixes and one step of
 * lazy matching (a match is deferred when the next position has a longer
 * one), symbols buffered per block; each block is written as whichever of
 * dynamic Huffman (length-limited codes), fixed Huffman or stored costs the
 * fewest bits. */
#include "io/deflate.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ checksums */

static const uint32_t crc_table[256] = {
    0x00000000u, 0x77073096u, 0xee0e612cu, 0x990951bau, 0x076dc419u, 0x706af48fu, 0xe963a535u,
    0x9e6495a3u, 0x0edb8832u, 0x79dcb8a4u, 0xe0d5e91eu, 0x97d2d988u, 0x09b64c2bu, 0x7eb17cbdu,
    0xe7b82d07u, 0x90bf1d91u, 0x1db71064u, 0x6ab020f2u, 0xf3b97148u, 0x84be41deu, 0x1adad47du,
    0x6ddde4ebu, 0xf4d4b551u, 0x83d385c7u, 0x136c9856u, 0x646ba8c0u, 0xfd62f97au, 0x8a65c9ecu,
    0x14015c4fu, 0x63066cd9u, 0xfa0f3d63u, 0x8d080df5u, 0x3b6e20c8u, 0x4c69105eu, 0xd56041e4u,
    0xa2677172u, 0x3c03e4d1u, 0x4b04d447u, 0xd20d85fdu, 0xa50ab56bu, 0x35b5a8fau, 0x42b2986cu,
    0xdbbbc9d6u, 0xacbcf940u, 0x32d86ce3u, 0x45df5c75u, 0xdcd60dcfu, 0xabd13d59u, 0x26d930acu,
    0x51de003au, 0xc8d75180u, 0xbfd06116u, 0x21b4f4b5u, 0x56b3c423u, 0xcfba9599u, 0xb8bda50fu,
    0x2802b89eu, 0x5f058808u, 0xc60cd9b2u, 0xb10be924u, 0x2f6f7c87u, 0x58684c11u, 0xc1611dabu,
    0xb6662d3du, 0x76dc4190u, 0x01db7106u, 0x98d220bcu, 0xefd5102au, 0x71b18589u, 0x06b6b51fu,
    0x9fbfe4a5u, 0xe8b8d433u, 0x7807c9a2u, 0x0f00f934u, 0x9609a88eu, 0xe10e9818u, 0x7f6a0dbbu,
    0x086d3d2du, 0x91646c97u, 0xe6635c01u, 0x6b6b51f4u, 0x1c6c6162u, 0x856530d8u, 0xf262004eu,
    0x6c0695edu, 0x1b01a57bu, 0x8208f4c1u, 0xf50fc457u, 0x65b0d9c6u, 0x12b7e950u, 0x8bbeb8eau,
    0xfcb9887cu, 0x62dd1ddfu, 0x15da2d49u, 0x8cd37cf3u, 0xfbd44c65u, 0x4db26158u, 0x3ab551ceu,
    0xa3bc0074u, 0xd4bb30e2u, 0x4adfa541u, 0x3dd895d7u, 0xa4d1c46du, 0xd3d6f4fbu, 0x4369e96au,
    0x346ed9fcu, 0xad678846u, 0xda60b8d0u, 0x44042d73u, 0x33031de5u, 0xaa0a4c5fu, 0xdd0d7cc9u,
    0x5005713cu, 0x270241aau, 0xbe0b1010u, 0xc90c2086u, 0x5768b525u, 0x206f85b3u, 0xb966d409u,
    0xce61e49fu, 0x5edef90eu, 0x29d9c998u, 0xb0d09822u, 0xc7d7a8b4u, 0x59b33d17u, 0x2eb40d81u,
    0xb7bd5c3bu, 0xc0ba6cadu, 0xedb88320u, 0x9abfb3b6u, 0x03b6e20cu, 0x74b1d29au, 0xead54739u,
    0x9dd277afu, 0x04db2615u, 0x73dc1683u, 0xe3630b12u, 0x94643b84u, 0x0d6d6a3eu, 0x7a6a5aa8u,
    0xe40ecf0bu, 0x9309ff9du, 0x0a00ae27u, 0x7d079eb1u, 0xf00f9344u, 0x8708a3d2u, 0x1e01f268u,
    0x6906c2feu, 0xf762575du, 0x806567cbu, 0x196c3671u, 0x6e6b06e7u, 0xfed41b76u, 0x89d32be0u,
    0x10da7a5au, 0x67dd4accu, 0xf9b9df6fu, 0x8ebeeff9u, 0x17b7be43u, 0x60b08ed5u, 0xd6d6a3e8u,
    0xa1d1937eu, 0x38d8c2c4u, 0x4fdff252u, 0xd1bb67f1u, 0xa6bc5767u, 0x3fb506ddu, 0x48b2364bu,
    0xd80d2bdau, 0xaf0a1b4cu, 0x36034af6u, 0x41047a60u, 0xdf60efc3u, 0xa867df55u, 0x316e8eefu,
    0x4669be79u, 0xcb61b38cu, 0xbc66831au, 0x256fd2a0u, 0x5268e236u, 0xcc0c7795u, 0xbb0b4703u,
    0x220216b9u, 0x5505262fu, 0xc5ba3bbeu, 0xb2bd0b28u, 0x2bb45a92u, 0x5cb36a04u, 0xc2d7ffa7u,
    0xb5d0cf31u, 0x2cd99e8bu, 0x5bdeae1du, 0x9b64c2b0u, 0xec63f226u, 0x756aa39cu, 0x026d930au,
    0x9c0906a9u, 0xeb0e363fu, 0x72076785u, 0x05005713u, 0x95bf4a82u, 0xe2b87a14u, 0x7bb12baeu,
    0x0cb61b38u, 0x92d28e9bu, 0xe5d5be0du, 0x7cdcefb7u, 0x0bdbdf21u, 0x86d3d2d4u, 0xf1d4e242u,
    0x68ddb3f8u, 0x1fda836eu, 0x81be16cdu, 0xf6b9265bu, 0x6fb077e1u, 0x18b74777u, 0x88085ae6u,
    0xff0f6a70u, 0x66063bcau, 0x11010b5cu, 0x8f659effu, 0xf862ae69u, 0x616bffd3u, 0x166ccf45u,
    0xa00ae278u, 0xd70dd2eeu, 0x4e048354u, 0x3903b3c2u, 0xa7672661u, 0xd06016f7u, 0x4969474du,
    0x3e6e77dbu, 0xaed16a4au, 0xd9d65adcu, 0x40df0b66u, 0x37d83bf0u, 0xa9bcae53u, 0xdebb9ec5u,
    0x47b2cf7fu, 0x30b5ffe9u, 0xbdbdf21cu, 0xcabac28au, 0x53b39330u, 0x24b4a3a6u, 0xbad03605u,
    0xcdd70693u, 0x54de5729u, 0x23d967bfu, 0xb3667a2eu, 0xc4614ab8u, 0x5d681b02u, 0x2a6f2b94u,
    0xb40bbe37u, 0xc30c8ea1u, 0x5a05df1bu, 0x2d02ef8du,
};

uint32_t sd_crc32(uint32_t crc, const uint8_t *p, size_t n)
{
    crc = ~crc;
    for (size_t i = 0; i < n; i++)
        crc = crc_table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

uint32_t sd_adler32(uint32_t adler, const uint8_t *p, size_t n)
{
    uint32_t a = adler & 0xFFFF, b = adler >> 16;
    while (n) {
        /* 5552 bytes is the most that keeps b below 2^32 before the modulo. */
        size_t k = n < 5552 ? n : 5552;
        n -= k;
        for (size_t i = 0; i < k; i++) {
            a += p[i];
            b += a;
        }
        p += k;
        a %= 65521;
        b %= 65521;
    }
    return (b << 16) | a;
}

/* --------------------------------------------------------- shared tables */

static const uint16_t len_base[29] = {3,  4,  5,  6,   7,   8,   9,   10,  11, 13,
                                      15, 17, 19, 23,  27,  31,  35,  43,  51, 59,
                                      67, 83, 99, 115, 131, 163, 195, 227, 258};
static const uint8_t len_extra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                      2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
static const uint16_t dist_base[30] = {
    1,   2,   3,   4,   5,   7,    9,    13,   17,   25,   33,   49,   65,    97,    129,
    193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
static const uint8_t dist_extra[30] = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                       6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
/* The order the code length code's lengths are sent in. */
static const uint8_t cl_order[19] = {16, 17, 18, 0, 8,  7, 9,  6, 10, 5,
                                     11, 4,  12, 3, 13, 2, 14, 1, 15};

static void fixed_lengths(uint8_t lit[288], uint8_t dist[30])
{
    for (int i = 0; i < 288; i++)
        lit[i] = i < 144 ? 8 : i < 256 ? 9 : i < 280 ? 7 : 8;
    for (int i = 0; i < 30; i++)
        dist[i] = 5;
}

static unsigned reverse_bits(unsigned code, int len)
{
    unsigned r = 0;
    for (int i = 0; i < len; i++) {
        r = (r << 1) | (code & 1);
        code >>= 1;
    }
    return r;
}

/* ------------------------------------------------------------ inflate */

#define FAST_BITS 9
#define FAST_SIZE (1u << FAST_BITS)

typedef struct huff {
    uint16_t fast[FAST_SIZE]; /* (length << 9) | symbol; 0: code longer than FAST_BITS */
    uint16_t count[16];       /* codes of each length */
    uint16_t sym[288];        /* symbols in canonical order */
} huff;

typedef struct inflater {
    const uint8_t *in;
    size_t in_size, pos;
    uint64_t bitbuf;
    int bitcnt;
    int pad;   /* zero bytes added past the end of the input (the top pad*8 bits) */
    int trunc; /* padding was consumed */
    uint8_t *out;
    size_t out_pos, out_cap, out_max;
    int grow;
    const char *what;
    sdunet_error *err;
} inflater;

static void refill(inflater *s)
{
    while (s->bitcnt <= 56) {
        if (s->pos < s->in_size)
            s->bitbuf |= (uint64_t)s->in[s->pos++] << s->bitcnt;
        else
            s->pad++;
        s->bitcnt += 8;
    }
}

static void consume(inflater *s, int n)
{
    s->bitbuf >>= n;
    s->bitcnt -= n;
    if (s->bitcnt < s->pad * 8)
        s->trunc = 1;
}

static unsigned getbits(inflater *s, int n)
{
    if (n == 0)
        return 0;
    refill(s);
    unsigned v = (unsigned)(s->bitbuf & ((1u << n) - 1));
    consume(s, n);
    return v;
}

/* Builds the decoding tables for n code lengths. Returns 0 for a complete
 * code, 1 for a code of one symbol of length 1 (incomplete; zlib accepts it
 * for literal/length and distance codes), 2 when no symbol has a code, -1
 * for an over-subscribed or otherwise incomplete code. */
static int huff_build(huff *h, const uint8_t *lens, int n)
{
    memset(h->count, 0, sizeof h->count);
    for (int i = 0; i < n; i++)
        h->count[lens[i]]++;
    int used = n - h->count[0];
    h->count[0] = 0;
    int left = 1;
    for (int len = 1; len < 16; len++) {
        left <<= 1;
        left -= h->count[len];
        if (left < 0)
            return -1;
    }
    uint16_t offs[16];
    offs[1] = 0;
    for (int len = 1; len < 15; len++)
        offs[len + 1] = (uint16_t)(offs[len] + h->count[len]);
    for (int i = 0; i < n; i++)
        if (lens[i])
            h->sym[offs[lens[i]]++] = (uint16_t)i;
    memset(h->fast, 0, sizeof h->fast);
    unsigned code = 0;
    int idx = 0;
    for (int len = 1; len <= FAST_BITS; len++) {
        for (int k = 0; k < h->count[len]; k++) {
            unsigned rev = reverse_bits(code++, len);
            uint16_t e = (uint16_t)((len << 9) | h->sym[idx++]);
            for (unsigned j = rev; j < FAST_SIZE; j += 1u << len)
                h->fast[j] = e;
        }
        code <<= 1;
    }
    if (used == 0)
        return 2;
    if (left > 0)
        return used == 1 && h->count[1] == 1 ? 1 : -1;
    return 0;
}

/* The next symbol, or -1 when the bits match no code. */
static int decode(inflater *s, const huff *h)
{
    refill(s);
    unsigned e = h->fast[s->bitbuf & (FAST_SIZE - 1)];
    if (e) {
        consume(s, (int)(e >> 9));
        return (int)(e & 511);
    }
    /* Canonical walk: codes of each length are consecutive integers. */
    uint64_t bits = s->bitbuf;
    int code = 0, first = 0, index = 0;
    for (int len = 1; len < 16; len++) {
        code |= (int)(bits & 1);
        bits >>= 1;
        int count = h->count[len];
        if (code - first < count) {
            consume(s, len);
            return h->sym[index + code - first];
        }
        index += count;
        first = (first + count) << 1;
        code <<= 1;
    }
    return -1;
}

static sdunet_status inf_fail(inflater *s, const char *msg)
{
    if (s->trunc)
        msg = "stream truncated";
    return sd_fail(s->err, SDUNET_E_FORMAT, "%s: %s", s->what, msg);
}

/* Room for n more output bytes. */
static sdunet_status reserve(inflater *s, size_t n)
{
    if (n <= s->out_cap - s->out_pos)
        return SDUNET_OK;
    if (n > s->out_max - s->out_pos)
        return sd_fail(s->err, SDUNET_E_FORMAT,
                       "%s: the stream holds more data than the %zu bytes expected", s->what,
                       s->out_max);
    if (!s->grow)
        return inf_fail(s, "internal: output capacity");
    size_t cap = s->out_cap < 4096 ? 4096 : s->out_cap;
    while (cap - s->out_pos < n)
        cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
    if (cap > s->out_max)
        cap = s->out_max;
    uint8_t *p = realloc(s->out, cap);
    if (!p)
        return sd_fail(s->err, SDUNET_E_NOMEM, "%s: out of memory (%zu bytes)", s->what, cap);
    s->out = p;
    s->out_cap = cap;
    return SDUNET_OK;
}

/* Drops the bits up to the next byte boundary and hands the whole bytes
 * still in the bit buffer back to the input. */
static void align_input(inflater *s)
{
    int drop = s->bitcnt & 7;
    consume(s, drop);
    int whole = s->bitcnt / 8 - s->pad;
    if (whole > 0)
        s->pos -= (size_t)whole;
    s->bitbuf = 0;
    s->bitcnt = 0;
    s->pad = 0;
}

static sdunet_status inflate_stored(inflater *s)
{
    align_input(s);
    if (s->trunc || s->in_size - s->pos < 4)
        return sd_fail(s->err, SDUNET_E_FORMAT, "%s: stream truncated", s->what);
    const uint8_t *p = s->in + s->pos;
    unsigned len = p[0] | (unsigned)p[1] << 8, nlen = p[2] | (unsigned)p[3] << 8;
    s->pos += 4;
    if (len != (~nlen & 0xFFFF))
        return inf_fail(s, "stored block length check failed");
    if (s->in_size - s->pos < len)
        return sd_fail(s->err, SDUNET_E_FORMAT, "%s: stream truncated", s->what);
    sdunet_status st = reserve(s, len);
    if (st)
        return st;
    if (len)
        memcpy(s->out + s->out_pos, s->in + s->pos, len);
    s->out_pos += len;
    s->pos += len;
    return SDUNET_OK;
}

static sdunet_status inflate_codes(inflater *s, const huff *lit, const huff *dist)
{
    for (;;) {
        int sym = decode(s, lit);
        if (s->trunc || sym < 0)
            return inf_fail(s, "invalid literal/length code");
        if (sym < 256) {
            if (s->out_pos == s->out_cap) {
                sdunet_status st = reserve(s, 1);
                if (st)
                    return st;
            }
            s->out[s->out_pos++] = (uint8_t)sym;
            continue;
        }
        if (sym == 256)
            return SDUNET_OK;
        sym -= 257;
        if (sym >= 29)
            return inf_fail(s, "invalid length symbol");
        size_t len = len_base[sym] + getbits(s, len_extra[sym]);
        int ds = decode(s, dist);
        if (ds < 0 || ds >= 30)
            return inf_fail(s, "invalid distance code");
        size_t d = dist_base[ds] + getbits(s, dist_extra[ds]);
        if (s->trunc)
            return inf_fail(s, "");
        if (d > s->out_pos)
            return inf_fail(s, "distance too far back");
        sdunet_status st = reserve(s, len);
        if (st)
            return st;
        uint8_t *o = s->out + s->out_pos;
        const uint8_t *from = o - d;
        for (size_t i = 0; i < len; i++)
            o[i] = from[i];
        s->out_pos += len;
    }
}

static sdunet_status inflate_dynamic(inflater *s, huff *lit, huff *dist)
{
    int hlit = (int)getbits(s, 5) + 257, hdist = (int)getbits(s, 5) + 1;
    int hclen = (int)getbits(s, 4) + 4;
    if (hlit > 286 || hdist > 30)
        return inf_fail(s, "too many length or distance symbols");
    uint8_t lens[286 + 30];
    memset(lens, 0, 19);
    for (int i = 0; i < hclen; i++)
        lens[cl_order[i]] = (uint8_t)getbits(s, 3);
    huff *cl = lit; /* the code length code is only needed until lit is built */
    if (huff_build(cl, lens, 19) != 0)
        return inf_fail(s, "invalid code length code");
    int n = 0, total = hlit + hdist;
    while (n < total) {
        int sym = decode(s, cl);
        if (s->trunc || sym < 0)
            return inf_fail(s, "invalid code length");
        if (sym < 16) {
            lens[n++] = (uint8_t)sym;
            continue;
        }
        int rep;
        uint8_t v = 0;
        if (sym == 16) {
            if (n == 0)
                return inf_fail(s, "repeat with no previous length");
            v = lens[n - 1];
            rep = 3 + (int)getbits(s, 2);
        } else if (sym == 17) {
            rep = 3 + (int)getbits(s, 3);
        } else {
            rep = 11 + (int)getbits(s, 7);
        }
        if (rep > total - n)
            return inf_fail(s, "code lengths overrun");
        memset(lens + n, v, (size_t)rep);
        n += rep;
    }
    if (lens[256] == 0)
        return inf_fail(s, "no end-of-block code");
    int r = huff_build(lit, lens, hlit);
    if (r < 0 || r == 2)
        return inf_fail(s, "invalid literal/length code lengths");
    r = huff_build(dist, lens + hlit, hdist);
    if (r < 0)
        return inf_fail(s, "invalid distance code lengths");
    return SDUNET_OK;
}

sdunet_status sd_zlib_inflate(const uint8_t *in, size_t in_size, int exact, uint8_t **out,
                              size_t cap, size_t *out_size, const char *what, sdunet_error *err)
{
    if (!out || !out_size || (!in && in_size) || (exact && !*out && cap) || (!exact && *out))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "inflate: bad arguments");
    if (!what)
        what = "zlib";
    *out_size = 0;
    inflater s;
    memset(&s, 0, sizeof s);
    s.in = in;
    s.in_size = in_size;
    s.out = exact ? *out : NULL;
    s.out_cap = exact ? cap : 0;
    s.out_max = cap;
    s.grow = !exact;
    s.what = what;
    s.err = err;
    sdunet_status st = SDUNET_OK;
    huff *tables = malloc(2 * sizeof(huff));
    if (!tables)
        return sd_fail(err, SDUNET_E_NOMEM, "%s: out of memory", what);
    huff *lit = &tables[0], *dist = &tables[1];

    if (in_size < 2) {
        st = sd_fail(err, SDUNET_E_FORMAT, "%s: stream truncated", what);
        goto done;
    }
    unsigned cmf = in[0], flg = in[1];
    if ((cmf & 15) != 8 || (cmf >> 4) > 7 || (cmf * 256 + flg) % 31 != 0) {
        st = sd_fail(err, SDUNET_E_FORMAT, "%s: bad zlib header", what);
        goto done;
    }
    if (flg & 0x20) {
        st = sd_fail(err, SDUNET_E_FORMAT, "%s: zlib preset dictionary not allowed", what);
        goto done;
    }
    s.pos = 2;
    int final = 0;
    while (!final && st == SDUNET_OK) {
        final = (int)getbits(&s, 1);
        unsigned type = getbits(&s, 2);
        if (s.trunc) {
            st = inf_fail(&s, "");
        } else if (type == 0) {
            st = inflate_stored(&s);
        } else if (type == 1) {
            uint8_t ll[288], dl[30];
            fixed_lengths(ll, dl);
            huff_build(lit, ll, 288);
            huff_build(dist, dl, 30);
            st = inflate_codes(&s, lit, dist);
        } else if (type == 2) {
            st = inflate_dynamic(&s, lit, dist);
            if (st == SDUNET_OK)
                st = inflate_codes(&s, lit, dist);
        } else {
            st = inf_fail(&s, "invalid block type");
        }
    }
    if (st)
        goto done;
    align_input(&s);
    if (s.trunc || in_size - s.pos < 4) {
        st = sd_fail(err, SDUNET_E_FORMAT, "%s: stream truncated (no Adler-32)", what);
        goto done;
    }
    const uint8_t *a = in + s.pos;
    uint32_t want = (uint32_t)a[0] << 24 | (uint32_t)a[1] << 16 | (uint32_t)a[2] << 8 | a[3];
    if (sd_adler32(1, s.out, s.out_pos) != want) {
        st = sd_fail(err, SDUNET_E_FORMAT, "%s: Adler-32 mismatch", what);
        goto done;
    }
    if (exact && s.out_pos != cap) {
        st = sd_fail(err, SDUNET_E_FORMAT, "%s: the stream holds %zu bytes, %zu expected", what,
                     s.out_pos, cap);
        goto done;
    }
done:
    free(tables);
    if (st) {
        if (!exact)
            free(s.out);
        return st;
    }
    if (!exact)
        *out = s.out;
    *out_size = s.out_pos;
    return SDUNET_OK;
}

/* ------------------------------------------------------------ deflate */

#define WSIZE 32768u
#define WMASK (WSIZE - 1)
#define HASH_BITS 15
#define MAX_CHAIN 48
#define NICE_LEN 128 /* a match this long ends the search */
#define LAZY_LEN 32  /* a match this long is taken without looking one further */
#define BLOCK_SYMS 32768

typedef struct bitwriter {
    uint8_t *buf;
    size_t len, cap;
    uint64_t bits;
    int n;
} bitwriter;

/* Room for `bytes` more output bytes; 0 on allocation failure. */
static int bw_reserve(bitwriter *w, size_t bytes)
{
    size_t need;
    if (!sd_add_size(w->len, bytes, &need) || !sd_add_size(need, 16, &need))
        return 0;
    if (need <= w->cap)
        return 1;
    size_t cap = w->cap ? w->cap : 4096;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    uint8_t *p = realloc(w->buf, cap);
    if (!p)
        return 0;
    w->buf = p;
    w->cap = cap;
    return 1;
}

/* Appends the low `n` bits of v (n <= 32), least significant first. Room
 * must have been reserved. */
static inline void put(bitwriter *w, uint32_t v, int n)
{
    w->bits |= (uint64_t)v << w->n;
    w->n += n;
    while (w->n >= 8) {
        w->buf[w->len++] = (uint8_t)w->bits;
        w->bits >>= 8;
        w->n -= 8;
    }
}

static void put_align(bitwriter *w)
{
    if (w->n > 0)
        put(w, 0, 8 - w->n);
}

typedef struct sym_item {
    uint32_t freq;
    uint16_t sym;
} sym_item;

static int cmp_item(const void *a, const void *b)
{
    const sym_item *x = a, *y = b;
    if (x->freq != y->freq)
        return x->freq < y->freq ? -1 : 1;
    return x->sym < y->sym ? -1 : x->sym > y->sym;
}

/* Huffman code lengths of at most `limit` bits for n <= 288 symbols. Symbols
 * with frequency 0 get no code, except that a code always has at least two
 * symbols (decoders handle complete codes best). When the optimal tree is
 * too deep the frequencies are halved (kept non-zero) and it is rebuilt. */
static void build_lengths(const uint32_t *freq_in, int n, int limit, uint8_t *lens)
{
    uint32_t freq[288];
    int used = 0;
    for (int i = 0; i < n; i++) {
        freq[i] = freq_in[i];
        used += freq[i] != 0;
    }
    for (int i = 0; used < 2 && i < n; i++)
        if (!freq[i]) {
            freq[i] = 1;
            used++;
        }
    for (;;) {
        sym_item leaves[288];
        int m = 0;
        for (int i = 0; i < n; i++)
            if (freq[i])
                leaves[m++] = (sym_item){freq[i], (uint16_t)i};
        qsort(leaves, (size_t)m, sizeof leaves[0], cmp_item);
        /* Two queues: sorted leaves and internal nodes, which are created in
         * non-decreasing weight order. Nodes 0..m-1 are leaves. */
        uint64_t weight[2 * 288];
        int parent[2 * 288], depth[2 * 288];
        for (int i = 0; i < m; i++)
            weight[i] = leaves[i].freq;
        int li = 0, ii = m, ni = m;
        while (ni < 2 * m - 1) {
            int pick[2];
            for (int k = 0; k < 2; k++) {
                if (li < m && (ii >= ni || weight[li] <= weight[ii]))
                    pick[k] = li++;
                else
                    pick[k] = ii++;
            }
            weight[ni] = weight[pick[0]] + weight[pick[1]];
            parent[pick[0]] = parent[pick[1]] = ni;
            ni++;
        }
        depth[2 * m - 2] = 0;
        int maxd = 0;
        for (int k = 2 * m - 3; k >= 0; k--) {
            depth[k] = depth[parent[k]] + 1;
            if (depth[k] > maxd)
                maxd = depth[k];
        }
        if (maxd <= limit) {
            memset(lens, 0, (size_t)n);
            for (int i = 0; i < m; i++)
                lens[leaves[i].sym] = (uint8_t)depth[i];
            return;
        }
        for (int i = 0; i < n; i++)
            if (freq[i])
                freq[i] = (freq[i] >> 1) | 1;
    }
}

/* Canonical codes, bit-reversed for LSB-first output. */
static void build_codes(const uint8_t *lens, int n, uint16_t *codes)
{
    int count[16] = {0};
    for (int i = 0; i < n; i++)
        count[lens[i]]++;
    count[0] = 0;
    unsigned next[16];
    unsigned code = 0;
    for (int len = 1; len < 16; len++) {
        code = (code + (unsigned)count[len - 1]) << 1;
        next[len] = code;
    }
    for (int i = 0; i < n; i++)
        codes[i] = lens[i] ? (uint16_t)reverse_bits(next[lens[i]]++, lens[i]) : 0;
}

typedef struct deflater {
    const uint8_t *in;
    size_t n;
    uint16_t *litlen; /* literal byte, or match length + 256 */
    uint16_t *dist;   /* 0 for a literal */
    size_t nsyms;
    size_t block_start; /* input offset of the block's first byte */
    uint32_t lit_freq[286], dist_freq[30];
    uint8_t len_code[259];  /* length 3..258 -> length symbol - 257 */
    uint8_t dist_code[512]; /* see dcode() */
    bitwriter w;
} deflater;

static inline int dcode(const deflater *d, unsigned dist)
{
    return dist <= 256 ? d->dist_code[dist - 1] : d->dist_code[256 + ((dist - 1) >> 7)];
}

static void make_code_maps(deflater *d)
{
    for (int c = 0; c < 29; c++) {
        int top = c == 28 ? 258 : len_base[c] + (1 << len_extra[c]) - 1;
        for (int l = len_base[c]; l <= top; l++)
            d->len_code[l] = (uint8_t)c;
    }
    for (int c = 0; c < 30; c++) {
        unsigned top = dist_base[c] + (1u << dist_extra[c]) - 1;
        for (unsigned v = dist_base[c]; v <= top; v++) {
            if (v <= 256)
                d->dist_code[v - 1] = (uint8_t)c;
            else if (((v - 1) & 127) == 0)
                d->dist_code[256 + ((v - 1) >> 7)] = (uint8_t)c;
        }
    }
}

typedef struct cl_seq {
    uint8_t sym[286 + 30], extra[286 + 30];
    int n;
} cl_seq;

/* Run-length codes the concatenated literal/length and distance lengths
 * with code length symbols 16 (repeat previous), 17 and 18 (zeros). */
static void rle_lengths(const uint8_t *lens, int total, cl_seq *q)
{
    q->n = 0;
    for (int i = 0; i < total;) {
        uint8_t v = lens[i];
        int run = 1;
        while (i + run < total && lens[i + run] == v)
            run++;
        i += run;
        if (v == 0) {
            while (run >= 11) {
                int r = run < 138 ? run : 138;
                q->sym[q->n] = 18;
                q->extra[q->n++] = (uint8_t)(r - 11);
                run -= r;
            }
            if (run >= 3) {
                q->sym[q->n] = 17;
                q->extra[q->n++] = (uint8_t)(run - 3);
                run = 0;
            }
        } else {
            q->sym[q->n] = v;
            q->extra[q->n++] = 0;
            run--;
            while (run >= 3) {
                int r = run < 6 ? run : 6;
                q->sym[q->n] = 16;
                q->extra[q->n++] = (uint8_t)(r - 3);
                run -= r;
            }
        }
        while (run-- > 0) {
            q->sym[q->n] = v;
            q->extra[q->n++] = 0;
        }
    }
}

static const uint8_t cl_extra_bits[19] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 3, 7};

/* Bits the buffered symbols take with the given code lengths. */
static uint64_t data_cost(const deflater *d, const uint8_t *ll, const uint8_t *dl)
{
    uint64_t bits = 0;
    for (int i = 0; i < 286; i++)
        bits += (uint64_t)d->lit_freq[i] * (ll[i] + (i >= 257 ? len_extra[i - 257] : 0));
    for (int i = 0; i < 30; i++)
        bits += (uint64_t)d->dist_freq[i] * (dl[i] + dist_extra[i]);
    return bits;
}

static void put_data(deflater *d, const uint8_t *ll, const uint8_t *dl)
{
    uint16_t lc[288], dc[30];
    build_codes(ll, 288, lc);
    build_codes(dl, 30, dc);
    bitwriter *w = &d->w;
    for (size_t i = 0; i < d->nsyms; i++) {
        unsigned v = d->litlen[i];
        if (!d->dist[i]) {
            put(w, lc[v], ll[v]);
            continue;
        }
        unsigned len = v - 256, c = d->len_code[len];
        put(w, lc[257 + c], ll[257 + c]);
        put(w, len - len_base[c], len_extra[c]);
        unsigned dist = d->dist[i];
        int k = dcode(d, dist);
        put(w, dc[k], dl[k]);
        put(w, dist - dist_base[k], dist_extra[k]);
    }
    put(w, lc[256], ll[256]);
}

/* Writes the buffered symbols (covering input [block_start, end)) as one
 * block, or a run of stored blocks, whichever is smallest. */
static int flush_block(deflater *d, size_t end, int final)
{
    d->lit_freq[256] = 1;
    /* Dynamic: lengths, their run-length coding and its own code. */
    uint8_t lens[286 + 30];
    build_lengths(d->lit_freq, 286, 15, lens);
    uint8_t dlens[30];
    build_lengths(d->dist_freq, 30, 15, dlens);
    int hlit = 286, hdist = 30;
    while (hlit > 257 && lens[hlit - 1] == 0)
        hlit--;
    while (hdist > 1 && dlens[hdist - 1] == 0)
        hdist--;
    memcpy(lens + hlit, dlens, (size_t)hdist);
    cl_seq q;
    rle_lengths(lens, hlit + hdist, &q);
    uint32_t cl_freq[19] = {0};
    for (int i = 0; i < q.n; i++)
        cl_freq[q.sym[i]]++;
    uint8_t cl_lens[19];
    build_lengths(cl_freq, 19, 7, cl_lens);
    int hclen = 19;
    while (hclen > 4 && cl_lens[cl_order[hclen - 1]] == 0)
        hclen--;
    uint8_t ll[288] = {0}, dl[30] = {0};
    memcpy(ll, lens, (size_t)hlit);
    memcpy(dl, dlens, 30);
    uint64_t dyn = 3 + 14 + 3 * (uint64_t)hclen + data_cost(d, ll, dl);
    for (int i = 0; i < q.n; i++)
        dyn += cl_lens[q.sym[i]] + cl_extra_bits[q.sym[i]];

    uint8_t fll[288], fdl[30];
    fixed_lengths(fll, fdl);
    uint64_t fixed = 3 + data_cost(d, fll, fdl);

    size_t raw = end - d->block_start;
    uint64_t stored = ((uint64_t)raw + 5 * (raw / 65535 + 1)) * 8 + 10;

    bitwriter *w = &d->w;
    if (stored < dyn && stored < fixed) {
        if (!bw_reserve(w, raw + 5 * (raw / 65535 + 1) + 8))
            return 0;
        size_t p = d->block_start;
        do {
            size_t k = end - p < 65535 ? end - p : 65535;
            put(w, final && p + k == end, 1);
            put(w, 0, 2);
            put_align(w);
            put(w, (uint32_t)k, 16);
            put(w, (uint32_t)k ^ 0xFFFF, 16);
            if (k)
                memcpy(w->buf + w->len, d->in + p, k);
            w->len += k;
            p += k;
        } while (p < end);
    } else if (fixed <= dyn) {
        if (!bw_reserve(w, (size_t)(fixed / 8) + 8))
            return 0;
        put(w, (uint32_t) final, 1);
        put(w, 1, 2);
        put_data(d, fll, fdl);
    } else {
        if (!bw_reserve(w, (size_t)(dyn / 8) + 8))
            return 0;
        put(w, (uint32_t) final, 1);
        put(w, 2, 2);
        put(w, (uint32_t)(hlit - 257), 5);
        put(w, (uint32_t)(hdist - 1), 5);
        put(w, (uint32_t)(hclen - 4), 4);
        for (int i = 0; i < hclen; i++)
            put(w, cl_lens[cl_order[i]], 3);
        uint16_t cl_codes[19];
        build_codes(cl_lens, 19, cl_codes);
        for (int i = 0; i < q.n; i++) {
            put(w, cl_codes[q.sym[i]], cl_lens[q.sym[i]]);
            put(w, q.extra[i], cl_extra_bits[q.sym[i]]);
        }
        put_data(d, ll, dl);
    }
    d->nsyms = 0;
    d->block_start = end;
    memset(d->lit_freq, 0, sizeof d->lit_freq);
    memset(d->dist_freq, 0, sizeof d->dist_freq);
    return 1;
}

static inline uint32_t hash3(const uint8_t *p)
{
    uint32_t v = (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
    return (v * 2654435761u) >> (32 - HASH_BITS);
}

/* Longest match for position i among the chain starting at `cand` (a
 * position + 1, 0 for none). Returns its length (0 if under 3). */
static int longest_match(const deflater *d, const size_t *prev, size_t cand, size_t i, size_t *dist)
{
    const uint8_t *in = d->in;
    size_t maxlen = d->n - i < 258 ? d->n - i : 258;
    size_t limit = i > WSIZE ? i - WSIZE : 0;
    size_t best = 2;
    for (int chain = MAX_CHAIN; cand && chain > 0; chain--) {
        size_t p = cand - 1;
        if (p < limit)
            break;
        if (in[p + best] == in[i + best] && in[p] == in[i] && in[p + 1] == in[i + 1]) {
            size_t l = 2;
            while (l < maxlen && in[p + l] == in[i + l])
                l++;
            if (l > best) {
                best = l;
                *dist = i - p;
                if (l >= NICE_LEN || l >= maxlen)
                    break;
            }
        }
        cand = prev[p & WMASK];
    }
    return best >= 3 ? (int)best : 0;
}

static int emit(deflater *d, unsigned litlen, unsigned dist, size_t end)
{
    d->litlen[d->nsyms] = (uint16_t)litlen;
    d->dist[d->nsyms] = (uint16_t)dist;
    d->nsyms++;
    if (dist) {
        d->lit_freq[257 + d->len_code[litlen - 256]]++;
        d->dist_freq[dcode(d, dist)]++;
    } else {
        d->lit_freq[litlen]++;
    }
    if (d->nsyms == BLOCK_SYMS)
        return flush_block(d, end, 0);
    return 1;
}

sdunet_status sd_zlib_deflate(const uint8_t *in, size_t n, uint8_t **out, size_t *out_size,
                              sdunet_error *err)
{
    if (!out || !out_size || (!in && n))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "deflate: bad arguments");
    *out = NULL;
    *out_size = 0;
    deflater *d = calloc(1, sizeof *d);
    size_t *head = calloc((size_t)1 << HASH_BITS, sizeof(size_t));
    size_t *prev = calloc(WSIZE, sizeof(size_t));
    uint16_t *syms = malloc(2 * BLOCK_SYMS * sizeof(uint16_t));
    int ok = d && head && prev && syms;
    if (ok) {
        d->in = in;
        d->n = n;
        d->litlen = syms;
        d->dist = syms + BLOCK_SYMS;
        make_code_maps(d);
        ok = bw_reserve(&d->w, 2);
    }
    if (ok) {
        put(&d->w, 0x78, 8); /* deflate, 32 KiB window */
        put(&d->w, 0x01, 8); /* no dictionary; (0x7801 % 31 == 0) */
    }
    size_t i = 0, pdist = 0;
    int avail = 0, plen = 0;
    while (ok && i < n) {
        int clen = 0;
        size_t cdist = 0;
        if (i + 3 <= n) {
            uint32_t h = hash3(in + i);
            if (!avail || plen < LAZY_LEN)
                clen = longest_match(d, prev, head[h], i, &cdist);
            prev[i & WMASK] = head[h];
            head[h] = i + 1;
        }
        if (avail && plen >= 3 && clen <= plen) {
            /* The match found at i - 1 wins. */
            size_t end = i - 1 + (size_t)plen;
            for (size_t j = i + 1; j < end; j++)
                if (j + 3 <= n) {
                    uint32_t h = hash3(in + j);
                    prev[j & WMASK] = head[h];
                    head[h] = j + 1;
                }
            ok = emit(d, 256 + (unsigned)plen, (unsigned)pdist, end);
            i = end;
            avail = 0;
            plen = 0;
            continue;
        }
        if (avail)
            ok = emit(d, in[i - 1], 0, i);
        avail = 1;
        plen = clen;
        pdist = cdist;
        i++;
    }
    if (ok && avail)
        ok = emit(d, in[n - 1], 0, n);
    if (ok)
        ok = flush_block(d, n, 1);
    if (ok)
        ok = bw_reserve(&d->w, 8);
    sdunet_status st = SDUNET_OK;
    if (ok) {
        put_align(&d->w);
        uint32_t a = sd_adler32(1, in, n);
        for (int k = 3; k >= 0; k--)
            put(&d->w, (a >> (8 * k)) & 0xFF, 8);
        *out = d->w.buf;
        *out_size = d->w.len;
    } else {
        st = sd_fail(err, SDUNET_E_NOMEM, "deflate: out of memory (%zu input bytes)", n);
        if (d)
            free(d->w.buf);
    }
    free(syms);
    free(prev);
    free(head);
    free(d);
    return st;
}
