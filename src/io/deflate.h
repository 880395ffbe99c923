/* zlib streams (RFC 1950) holding deflate data (RFC 1951): a bounded
 * decompressor and a compressor, plus the CRC-32 and Adler-32 checksums PNG
 * needs. Self-contained; no state outside the call. */
#ifndef SD_DEFLATE_H
#define SD_DEFLATE_H

#include "common.h"

/* CRC-32 (ISO 3309, the one PNG and gzip use) of n bytes, continuing from
 * `crc` (0 to start). */
uint32_t sd_crc32(uint32_t crc, const uint8_t *p, size_t n);
/* Adler-32 of n bytes, continuing from `adler` (1 to start). */
uint32_t sd_adler32(uint32_t adler, const uint8_t *p, size_t n);

/* Decompresses the zlib stream in[0..in_size) into out.
 *   exact: the stream must produce exactly `cap` bytes into the caller's
 *          buffer *out (which must hold cap bytes); *out_size gets cap.
 *   otherwise: *out must be NULL; a buffer is malloc'd and grown as the
 *          data arrives, never past `cap` bytes (a stream that would produce
 *          more fails); on success *out (caller frees with free) and
 *          *out_size hold the data.
 * Either way a stream that tries to produce more than `cap` bytes stops with
 * SDUNET_E_FORMAT before writing them, so a small hostile stream cannot make
 * it allocate or write more than the caller allowed. The zlib header (CM 8,
 * window <= 32 KiB, FCHECK, no preset dictionary), every block type, the
 * distances and the Adler-32 trailer are checked; bytes after the trailer
 * are ignored. Errors are SDUNET_E_FORMAT (SDUNET_E_NOMEM when allocation
 * fails), with "what: " prefixed to the message. */
sdunet_status sd_zlib_inflate(const uint8_t *in, size_t in_size, int exact, uint8_t **out,
                              size_t cap, size_t *out_size, const char *what, sdunet_error *err);

/* Compresses n bytes into a zlib stream: LZ77 over a 32 KiB window with
 * hash chains, then per block the smallest of dynamic Huffman, fixed
 * Huffman and stored. *out is malloc'd (caller frees with free). */
sdunet_status sd_zlib_deflate(const uint8_t *in, size_t n, uint8_t **out, size_t *out_size,
                              sdunet_error *err);

#endif
