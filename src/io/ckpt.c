#include "io/ckpt.h"

#include <string.h>

int sd_ckpt_probe(const void *map, size_t size)
{
    return size >= 4 && memcmp(map, "PK\x03\x04", 4) == 0;
}

sdunet_status sd_ckpt_parse(const void *map, size_t size, sd_tensorfile *tf, sdunet_error *err)
{
    (void)map;
    (void)size;
    (void)tf;
    return sd_fail(err, SDUNET_E_UNSUPPORTED, ".ckpt files are not supported yet");
}
