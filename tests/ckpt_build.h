/* In-memory builders for PyTorch .ckpt inputs: a growable byte buffer,
 * pickle opcode emitters and a stored-entry zip writer. Shared by
 * tests/test_ckpt.c (hostile archives) and fuzz/corpus.c (seed pickles).
 *
 * They are written independently of the reader in src/io/ckpt.c (the
 * CRC-32 is bitwise, the reader's is table-driven) so that a bug there is
 * not mirrored here. The exact bytes each emitter writes are relied on by
 * tests that patch or truncate the result, and by the committed fuzz
 * seeds: change an encoding only together with its users. Out of memory
 * exits the process (status 2); these are test tools. */
#ifndef SDUNET_TESTS_CKPT_BUILD_H
#define SDUNET_TESTS_CKPT_BUILD_H

#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------- byte buffer */

/* A zeroed byte_buf is empty; bb_free releases it and zeroes it again. */
typedef struct byte_buf {
    unsigned char *p;
    size_t n, cap;
} byte_buf;

void bb_put(byte_buf *b, const void *d, size_t n);
void bb_u8(byte_buf *b, unsigned v);
void bb_u16(byte_buf *b, unsigned v); /* little-endian, as are the two below */
void bb_u32(byte_buf *b, uint32_t v);
void bb_u64(byte_buf *b, uint64_t v);
void bb_free(byte_buf *b);

/* Bitwise CRC-32 (zip's polynomial), deliberately unlike the reader's table version. */
uint32_t crc32_bitwise(const void *data, size_t n);

/* ------------------------------------------------------------- pickle */

/* A new buffer that starts with PROTO `proto`. */
byte_buf pk_start(unsigned proto);
void pk_op(byte_buf *p, unsigned op);
/* FRAME (protocol 4) announcing `len` bytes. */
void pk_frame(byte_buf *p, uint64_t len);
/* BINUNICODE: the string form of protocols 2 and 3. */
void pk_str(byte_buf *p, const char *s);
/* SHORT_BINUNICODE (protocol 4) below 256 bytes, else BINUNICODE. */
void pk_short_str(byte_buf *p, const char *s);
/* BININT1 for 0..255, BININT within int32, else an 8-byte LONG1. Never
 * BININT2: tests pin these bytes (e.g. an offset of 1000 as BININT). */
void pk_int(byte_buf *p, int64_t v);
/* GLOBAL "mod\nname\n". */
void pk_global(byte_buf *p, const char *mod, const char *name);
void pk_put(byte_buf *p, uint8_t slot); /* BINPUT */
void pk_get(byte_buf *p, uint8_t slot); /* BINGET */
/* A tuple of ints: MARK ... TUPLE, or with `compact` EMPTY_TUPLE and
 * TUPLE1..TUPLE3 up to three items (as CPython's pickler writes them). */
void pk_tuple_ints(byte_buf *p, const int64_t *v, int n, int compact);
/* collections.OrderedDict() : GLOBAL, EMPTY_TUPLE, REDUCE. */
void pk_ordered_dict(byte_buf *p);

/* The opcodes torch.save writes for one tensor:
 * _rebuild_tensor_v2(persistent storage id, offset, shape, stride, False,
 * OrderedDict()), the storage id being ("storage", torch.<stype>, key,
 * "cpu", numel). pk_tensor spells the shape and stride as MARK tuples. */
void pk_tensor(byte_buf *p, const char *stype, const char *key, int64_t numel, int64_t offset,
               int ndim, const int64_t *shape, const int64_t *stride);

enum {
    PK_COMPACT = 1, /* shape and stride with pk_tuple_ints' compact forms */
    PK_MEMO = 2,    /* BINPUT the storage id into memo `slot` */
    PK_REUSE = 4,   /* BINGET the storage id from memo `slot` (stype, key, numel unused) */
};

/* pk_tensor with the PK_* `flags`: pk_tensor_ex(p, 0, 0, ...) == pk_tensor(p, ...). */
void pk_tensor_ex(byte_buf *p, unsigned flags, uint8_t slot, const char *stype, const char *key,
                  int64_t numel, int64_t offset, int ndim, const int64_t *shape,
                  const int64_t *stride);

/* ------------------------------------------------------------- zip */

/* Per-entry options of the zip writer. */
enum {
    ZW_DESC = 1,    /* streamed: zero sizes and CRC in the local header, then a data descriptor */
    ZW_ALIGN = 2,   /* torch's "FB" extra record padding the data to a 64-byte boundary */
    ZW_MISALIGN = 4 /* an "FB" record that puts the data at 2 (mod 4) */
};

/* An archive in progress: entries go to `out`, central records to `cd`. */
typedef struct zw {
    byte_buf out, cd;
    unsigned n;
} zw;

/* Writes a local header + data (stored, no compression) into `into`: the
 * archive, or another entry's payload for overlap tests. Returns the
 * header's offset in `into`. */
uint32_t zw_local(byte_buf *into, const char *name, const void *data, size_t len, int opts);
/* Adds a central-directory record; `flags` is the general-purpose bit field. */
void zw_central(zw *z, const char *name, uint32_t lho, uint32_t len, uint32_t crc, unsigned flags);
/* zw_local into z->out plus its matching central record. */
void zw_add(zw *z, const char *name, const void *data, size_t len, int opts);
/* Appends the central directory and the end records (with a zip64 end
 * record and locator first if `zip64`); frees z->cd. The result is z->out. */
void zw_finish(zw *z, int zip64);

/* One storage of a torch archive: entry "arc/data/<key>". */
typedef struct ckpt_entry {
    const char *key;
    const void *data;
    size_t len;
} ckpt_entry;

/* A torch-style archive: "arc/data.pkl" = `pickle`, the storages, then
 * "arc/version". ZW_MISALIGN applies to the storages only. */
byte_buf make_ckpt(const byte_buf *pickle, const ckpt_entry *d, size_t nd, int opts, int zip64);

#endif
