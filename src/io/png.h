/* PNG images (ISO/IEC 15948): a reader for every standard colour type, bit
 * depth and interlace method, and a writer of 8-bit RGB with text chunks.
 * Self-contained (the zlib codec is src/io/deflate.c). */
#ifndef SD_PNG_H
#define SD_PNG_H

#include "common.h"

/* Largest width or height accepted, and largest width * height. */
#define SD_PNG_MAX_DIM 16384
#define SD_PNG_MAX_PIXELS ((size_t)1 << 26)
/* Largest decompressed zTXt / compressed iTXt value, and largest total of
 * text held (and of text decompressed) for one image; chunks past either
 * are skipped. */
#define SD_PNG_MAX_TEXT ((size_t)1 << 20)
#define SD_PNG_MAX_TEXT_TOTAL ((size_t)4 << 20)

/* A text chunk: keyword and value as NUL-terminated strings. */
typedef struct sd_png_text {
    const char *key;
    const char *value;
} sd_png_text;

/* A decoded image: always 8-bit RGB, row-major height x width x 3. */
typedef struct sd_image {
    int width, height;
    int channels;  /* always 3 */
    int has_alpha; /* the file had an alpha channel or a tRNS chunk (dropped, not composited) */
    uint8_t *data; /* malloc'd width * height * 3 bytes */
    /* Every well-formed tEXt, zTXt and iTXt chunk in file order. Keys and
     * values are UTF-8 (tEXt and zTXt are Latin-1 in the file and converted).
     * The strings live in text_store. */
    sd_png_text *texts;
    int n_texts;
    char *text_store;
} sd_image;

/* Frees everything an sd_image holds and zeroes it (NULL is fine). */
void sd_image_free(sd_image *img);

/* Decodes a PNG held in memory. Grey (1, 2, 4, 8, 16 bits) is expanded to
 * RGB, palette indices (1, 2, 4, 8 bits) are looked up, alpha and tRNS are
 * dropped (has_alpha says so), 16-bit samples become (v * 255 + 32767) /
 * 65535 (exact rounding), Adam7 is de-interlaced. Chunk CRCs, the zlib
 * header and Adler-32 are checked; the decompressed size must be exactly
 * what the header implies. Malformed or truncated input is SDUNET_E_FORMAT,
 * images over SD_PNG_MAX_DIM / SD_PNG_MAX_PIXELS or with an unknown
 * critical chunk SDUNET_E_UNSUPPORTED. Memory stays bounded by the input
 * size and the image dimensions. On failure *out is zeroed. */
sdunet_status sd_png_decode(const uint8_t *data, size_t size, sd_image *out, sdunet_error *err);
/* Reads and decodes a file (SDUNET_E_IO when it cannot be read). */
sdunet_status sd_png_read(const char *path, sd_image *out, sdunet_error *err);

/* Encodes 8-bit RGB (row-major HWC, width * height * 3 bytes) as a PNG:
 * IHDR, the text chunks in order, IDAT, IEND. Each row's filter is the one
 * with the smallest sum of absolute (signed) differences; the data is
 * deflate compressed. A text key must be 1-79 printable ASCII characters
 * without leading, trailing or double spaces; an ASCII value is written as
 * tEXt, any other value must be valid UTF-8 and is written as uncompressed
 * iTXt. *out is malloc'd (caller frees with free). */
sdunet_status sd_png_encode(const uint8_t *rgb, int width, int height, const sd_png_text *texts,
                            int n_texts, uint8_t **out, size_t *out_size, sdunet_error *err);
/* Encodes and writes to `path` through a temporary file in the same
 * folder renamed over it once fully written and closed, so a reader never
 * sees a partial image. */
sdunet_status sd_png_write(const char *path, const uint8_t *rgb, int width, int height,
                           const sd_png_text *texts, int n_texts, sdunet_error *err);

#endif
