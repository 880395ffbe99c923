/* PyTorch .ckpt / .pt files (torch.save's zip format): a restricted pickle
 * reader that only builds state dicts of tensors. Nothing is executed. */
#ifndef SD_CKPT_H
#define SD_CKPT_H

#include "io/tensorfile.h"

/* 1 if the bytes look like a zip archive (a .ckpt). */
int sd_ckpt_probe(const void *map, size_t size);

/* Parses the mapped archive into tf (tensors, owned buffers); the caller
 * keeps the mapping alive. */
sdunet_status sd_ckpt_parse(const void *map, size_t size, sd_tensorfile *tf, sdunet_error *err);

#endif
