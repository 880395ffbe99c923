/* SHA-256 (FIPS 180-4), for model hashes in image metadata. */
#ifndef SD_SHA256_H
#define SD_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct sd_sha256 {
    uint32_t h[8];
    uint64_t bytes;
    uint8_t buf[64];
    size_t fill;
} sd_sha256;

void sd_sha256_init(sd_sha256 *s);
void sd_sha256_update(sd_sha256 *s, const void *data, size_t n);
void sd_sha256_final(sd_sha256 *s, uint8_t digest[32]);

#endif
