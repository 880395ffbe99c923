/* In-memory builders for PyTorch .ckpt inputs (see ckpt_build.h). */
#include "ckpt_build.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------- byte buffer */

void bb_put(byte_buf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        unsigned char *p = realloc(b->p, cap);
        if (!p) {
            fprintf(stderr, "ckpt_build: out of memory\n");
            exit(2);
        }
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, d, n);
    b->n += n;
}

void bb_u8(byte_buf *b, unsigned v)
{
    unsigned char c = (unsigned char)v;
    bb_put(b, &c, 1);
}

void bb_u16(byte_buf *b, unsigned v)
{
    bb_u8(b, v & 0xFF);
    bb_u8(b, (v >> 8) & 0xFF);
}

void bb_u32(byte_buf *b, uint32_t v)
{
    bb_u16(b, v & 0xFFFF);
    bb_u16(b, v >> 16);
}

void bb_u64(byte_buf *b, uint64_t v)
{
    bb_u32(b, (uint32_t)v);
    bb_u32(b, (uint32_t)(v >> 32));
}

void bb_free(byte_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

uint32_t crc32_bitwise(const void *data, size_t n)
{
    const unsigned char *p = data;
    uint32_t c = 0xFFFFFFFFu;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
    }
    return ~c;
}

/* ------------------------------------------------------------- pickle */

byte_buf pk_start(unsigned proto)
{
    byte_buf p = {0};
    pk_op(&p, 0x80);
    pk_op(&p, proto);
    return p;
}

void pk_op(byte_buf *p, unsigned op)
{
    bb_u8(p, op);
}

void pk_frame(byte_buf *p, uint64_t len)
{
    pk_op(p, 0x95);
    bb_u64(p, len);
}

void pk_str(byte_buf *p, const char *s)
{
    size_t n = strlen(s);
    pk_op(p, 'X');
    bb_u32(p, (uint32_t)n);
    bb_put(p, s, n);
}

void pk_short_str(byte_buf *p, const char *s)
{
    size_t n = strlen(s);
    if (n >= 256) {
        pk_str(p, s);
        return;
    }
    pk_op(p, 0x8c);
    bb_u8(p, (unsigned)n);
    bb_put(p, s, n);
}

void pk_int(byte_buf *p, int64_t v)
{
    if (v >= 0 && v < 256) {
        pk_op(p, 'K');
        bb_u8(p, (unsigned)v);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        pk_op(p, 'J');
        bb_u32(p, (uint32_t)(int32_t)v);
    } else {
        pk_op(p, 0x8a);
        bb_u8(p, 8);
        bb_u64(p, (uint64_t)v);
    }
}

void pk_global(byte_buf *p, const char *mod, const char *name)
{
    pk_op(p, 'c');
    bb_put(p, mod, strlen(mod));
    bb_u8(p, '\n');
    bb_put(p, name, strlen(name));
    bb_u8(p, '\n');
}

void pk_put(byte_buf *p, uint8_t slot)
{
    pk_op(p, 'q');
    bb_u8(p, slot);
}

void pk_get(byte_buf *p, uint8_t slot)
{
    pk_op(p, 'h');
    bb_u8(p, slot);
}

void pk_tuple_ints(byte_buf *p, const int64_t *v, int n, int compact)
{
    if (compact && n == 0) {
        pk_op(p, ')');
        return;
    }
    int mark = !compact || n > 3;
    if (mark)
        pk_op(p, '(');
    for (int i = 0; i < n; i++)
        pk_int(p, v[i]);
    pk_op(p, mark ? 't' : 0x84u + (unsigned)n); /* TUPLE, or TUPLE1..TUPLE3 */
}

void pk_ordered_dict(byte_buf *p)
{
    pk_global(p, "collections", "OrderedDict");
    pk_op(p, ')');
    pk_op(p, 'R');
}

void pk_tensor(byte_buf *p, const char *stype, const char *key, int64_t numel, int64_t offset,
               int ndim, const int64_t *shape, const int64_t *stride)
{
    pk_tensor_ex(p, 0, 0, stype, key, numel, offset, ndim, shape, stride);
}

void pk_tensor_ex(byte_buf *p, unsigned flags, uint8_t slot, const char *stype, const char *key,
                  int64_t numel, int64_t offset, int ndim, const int64_t *shape,
                  const int64_t *stride)
{
    pk_global(p, "torch._utils", "_rebuild_tensor_v2");
    pk_op(p, '(');
    if (flags & PK_REUSE) {
        pk_get(p, slot);
    } else {
        pk_op(p, '(');
        pk_str(p, "storage");
        pk_global(p, "torch", stype);
        pk_str(p, key);
        pk_str(p, "cpu");
        pk_int(p, numel);
        pk_op(p, 't');
        pk_op(p, 'Q'); /* BINPERSID */
        if (flags & PK_MEMO)
            pk_put(p, slot);
    }
    pk_int(p, offset);
    pk_tuple_ints(p, shape, ndim, flags & PK_COMPACT);
    pk_tuple_ints(p, stride, ndim, flags & PK_COMPACT);
    pk_op(p, 0x89);     /* NEWFALSE: requires_grad */
    pk_ordered_dict(p); /* backward_hooks */
    pk_op(p, 't');
    pk_op(p, 'R');
}

/* ------------------------------------------------------------- zip */

void zw_central(zw *z, const char *name, uint32_t lho, uint32_t len, uint32_t crc, unsigned flags)
{
    size_t nl = strlen(name);
    bb_u32(&z->cd, 0x02014b50u);
    bb_u16(&z->cd, 20); /* version made by */
    bb_u16(&z->cd, 20); /* version needed */
    bb_u16(&z->cd, flags);
    bb_u16(&z->cd, 0); /* method: stored */
    bb_u32(&z->cd, 0); /* time, date */
    bb_u32(&z->cd, crc);
    bb_u32(&z->cd, len);
    bb_u32(&z->cd, len);
    bb_u16(&z->cd, (unsigned)nl);
    bb_u16(&z->cd, 0); /* extra length */
    bb_u16(&z->cd, 0); /* comment length */
    bb_u16(&z->cd, 0); /* disk */
    bb_u16(&z->cd, 0); /* internal attributes */
    bb_u32(&z->cd, 0); /* external attributes */
    bb_u32(&z->cd, lho);
    bb_put(&z->cd, name, nl);
    z->n++;
}

uint32_t zw_local(byte_buf *into, const char *name, const void *data, size_t len, int opts)
{
    uint32_t lho = (uint32_t)into->n;
    size_t nl = strlen(name);
    uint32_t crc = crc32_bitwise(data, len);
    unsigned flags = (opts & ZW_DESC) ? 8 : 0;
    size_t xl = 0;
    if (opts & ZW_ALIGN) { /* torch's "FB" padding record up to a 64-byte boundary */
        size_t at = into->n + 30 + nl + 4;
        xl = 4 + (64 - at % 64) % 64;
    } else if (opts & ZW_MISALIGN) { /* data offset = 2 (mod 4) */
        size_t at = into->n + 30 + nl + 4;
        xl = 4 + (6 - at % 4) % 4;
    }
    bb_u32(into, 0x04034b50u);
    bb_u16(into, 20);
    bb_u16(into, flags);
    bb_u16(into, 0);
    bb_u32(into, 0);
    bb_u32(into, (opts & ZW_DESC) ? 0 : crc);
    bb_u32(into, (opts & ZW_DESC) ? 0 : (uint32_t)len);
    bb_u32(into, (opts & ZW_DESC) ? 0 : (uint32_t)len);
    bb_u16(into, (unsigned)nl);
    bb_u16(into, (unsigned)xl);
    bb_put(into, name, nl);
    if (xl) {
        bb_u16(into, 0x4246);
        bb_u16(into, (unsigned)(xl - 4));
        for (size_t k = 4; k < xl; k++)
            bb_u8(into, 'Z');
    }
    bb_put(into, data, len);
    if (opts & ZW_DESC) {
        bb_u32(into, 0x08074b50u);
        bb_u32(into, crc);
        bb_u32(into, (uint32_t)len);
        bb_u32(into, (uint32_t)len);
    }
    return lho;
}

void zw_add(zw *z, const char *name, const void *data, size_t len, int opts)
{
    uint32_t lho = zw_local(&z->out, name, data, len, opts);
    zw_central(z, name, lho, (uint32_t)len, crc32_bitwise(data, len), (opts & ZW_DESC) ? 8 : 0);
}

void zw_finish(zw *z, int zip64)
{
    uint64_t cd_off = z->out.n, cd_size = z->cd.n;
    bb_put(&z->out, z->cd.p, z->cd.n);
    if (zip64) {
        uint64_t at = z->out.n;
        bb_u32(&z->out, 0x06064b50u); /* zip64 end of central directory */
        bb_u64(&z->out, 44);
        bb_u16(&z->out, 45);
        bb_u16(&z->out, 45);
        bb_u32(&z->out, 0);
        bb_u32(&z->out, 0);
        bb_u64(&z->out, z->n);
        bb_u64(&z->out, z->n);
        bb_u64(&z->out, cd_size);
        bb_u64(&z->out, cd_off);
        bb_u32(&z->out, 0x07064b50u); /* its locator */
        bb_u32(&z->out, 0);
        bb_u64(&z->out, at);
        bb_u32(&z->out, 1);
    }
    bb_u32(&z->out, 0x06054b50u);
    bb_u16(&z->out, 0);
    bb_u16(&z->out, 0);
    bb_u16(&z->out, z->n);
    bb_u16(&z->out, z->n);
    bb_u32(&z->out, (uint32_t)cd_size);
    bb_u32(&z->out, (uint32_t)cd_off);
    bb_u16(&z->out, 0);
    bb_free(&z->cd);
}

byte_buf make_ckpt(const byte_buf *pickle, const ckpt_entry *d, size_t nd, int opts, int zip64)
{
    zw z = {0};
    zw_add(&z, "arc/data.pkl", pickle->p, pickle->n, opts & ~ZW_MISALIGN);
    for (size_t k = 0; k < nd; k++) {
        char name[128];
        snprintf(name, sizeof name, "arc/data/%s", d[k].key);
        zw_add(&z, name, d[k].data, d[k].len, opts);
    }
    zw_add(&z, "arc/version", "3\n", 2, opts & ~ZW_MISALIGN);
    zw_finish(&z, zip64);
    return z.out;
}
