/* PyTorch .ckpt / .pt files (torch.save's zip format): a restricted pickle
 * reader that only builds state dicts of tensors. Nothing is executed.
 *
 * The archive must hold stored (uncompressed) entries, `<prefix>/data.pkl`
 * and `<prefix>/data/<key>` for every storage; CRC-32 is checked for the
 * pickle and for every storage entry a tensor uses. The pickle may use
 * protocols 2..5 but only the opcodes torch.save emits for state dicts and
 * only these globals: collections.OrderedDict, torch._utils._rebuild_tensor_v2,
 * torch._utils._rebuild_parameter, torch.{Float,Half,BFloat16,Double,Long,
 * Int,Short,Char,Byte,Bool}Storage; and, because the original SD 1.x
 * checkpoints carry Lightning bookkeeping beside the state dict, numpy.dtype,
 * numpy.core.multiarray.scalar and _codecs.encode (their results become
 * opaque values, never computed) and the class
 * pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint (usable as a
 * value only, never called). Anything else is refused by name. */
#ifndef SD_CKPT_H
#define SD_CKPT_H

#include "io/tensorfile.h"

/* Bounds on hostile input (each exceeded limit is a clear SDUNET_E_FORMAT). */
#define SD_CKPT_MAX_ENTRIES (1u << 20)       /* zip entries */
#define SD_CKPT_MAX_NAME 1024                /* bytes in an entry or tensor name */
#define SD_CKPT_MAX_PICKLE ((size_t)1 << 28) /* bytes of data.pkl */
#define SD_CKPT_MAX_OBJECTS (1 << 24)        /* pickle values, and container items */
#define SD_CKPT_MAX_STACK 65536              /* pickle value stack depth */
#define SD_CKPT_MAX_MARKS 10000              /* nested MARKs */
#define SD_CKPT_MAX_MEMO ((size_t)1 << 24)   /* memo slots */

/* 1 if the bytes look like a zip archive (a .ckpt). */
int sd_ckpt_probe(const void *map, size_t size);

/* Parses the mapped archive into tf (tensors sorted by name, owned buffers,
 * format "ckpt"); the caller keeps the mapping alive. The state dict may be
 * the top-level dict or the value of its "state_dict" key; non-tensor values
 * are skipped. C-contiguous, aligned tensors point into the mapping; other
 * views are copied into owned buffers in C order. On error tf is left as it
 * was and nothing is leaked. */
sdunet_status sd_ckpt_parse(const void *map, size_t size, sd_tensorfile *tf, sdunet_error *err);

#endif
