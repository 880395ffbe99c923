/* A read-only table of named tensors backed by a mapped weight file.
 * Every reader (safetensors, and later .ckpt) produces this table; the model
 * loader only ever sees it. */
#ifndef SD_TENSORFILE_H
#define SD_TENSORFILE_H

#include "common.h"

#define SD_MAX_DIMS 8

typedef enum sd_dtype {
    SD_DT_F32,
    SD_DT_F16,
    SD_DT_BF16,
    SD_DT_F64,
    SD_DT_I64,
    SD_DT_I32,
    SD_DT_I16,
    SD_DT_I8,
    SD_DT_U8,
    SD_DT_BOOL,
    /* Read and carried (a real checkpoint may hold them) but never converted. */
    SD_DT_U16,
    SD_DT_U32,
    SD_DT_U64,
    SD_DT_F8_E4M3,
    SD_DT_F8_E5M2,
    SD_DT_COUNT
} sd_dtype;

/* Bytes per element; name as safetensors spells it ("F32", "BF16", ...). */
size_t sd_dtype_size(sd_dtype dt);
const char *sd_dtype_name(sd_dtype dt);
/* Parses a safetensors dtype string; returns 0 on success, -1 if unknown. */
int sd_dtype_parse(const char *s, sd_dtype *out);

typedef struct sd_tensor_info {
    char *name; /* owned, NUL-terminated */
    sd_dtype dtype;
    int ndim; /* 0..SD_MAX_DIMS */
    int64_t shape[SD_MAX_DIMS];
    size_t numel;     /* product of shape (1 for ndim 0) */
    const void *data; /* little-endian, C order, contiguous; inside the mapping
                         or an owned buffer; never NULL when numel > 0 */
    size_t nbytes;    /* numel * sd_dtype_size(dtype), checked against the file */
} sd_tensor_info;

typedef struct sd_tensorfile {
    const char *format; /* "safetensors" */
    void *map;          /* mmap'd file (or NULL) */
    size_t map_size;
    sd_tensor_info *tensors; /* sorted by name (strcmp) for binary search */
    size_t count;
    char *metadata; /* raw JSON text of __metadata__ or NULL (owned) */
    void **owned;   /* extra owned buffers, freed at close */
    size_t n_owned;
    int refs; /* holders beyond the opener (sd_tensorfile_retain); one thread */
} sd_tensorfile;

/* Opens a weight file, detecting the format from its contents. */
sdunet_status sd_tensorfile_open(const char *path, sd_tensorfile **out, sdunet_error *err);
/* Binary search by exact name; NULL if absent. */
const sd_tensor_info *sd_tensorfile_find(const sd_tensorfile *tf, const char *name);
/* Drops one holder; the last one unmaps and frees. NULL is a no-op. */
void sd_tensorfile_close(sd_tensorfile *tf);
/* Another holder of an open file (returned), e.g. the UNet, text encoder
 * and VAE of one single-file checkpoint; not thread-safe. */
sd_tensorfile *sd_tensorfile_retain(sd_tensorfile *tf);
/* Frees what a parser allocated (names, the table, owned buffers, metadata)
 * and zeroes those fields; leaves `map` and `tf` itself (for a table parsed
 * from memory the caller owns). NULL is a no-op. */
void sd_tensorfile_clear(sd_tensorfile *tf);

/* Drops the process's mapped pages of a tensor that has been consumed
 * (converted and copied elsewhere), so loading a large file does not hold
 * the file and the model in memory at once. Only whole pages inside the
 * tensor's bytes are dropped; the data stays valid (the mapping is
 * read-only and private, so a later access reads the file again). A no-op
 * for tensors not in the mapping. */
void sd_tensorfile_release(const sd_tensorfile *tf, const sd_tensor_info *t);

/* Converts numel elements of a F32/F16/BF16/F64 tensor to float32 in dst
 * (F16 and BF16 exactly, F64 rounded to nearest). Other dtypes:
 * SDUNET_E_UNSUPPORTED. */
sdunet_status sd_tensor_to_f32(const sd_tensor_info *t, float *dst, sdunet_error *err);

/* Scalar conversions (exact; round to nearest even for the narrowing ones). */
float sd_f16_to_f32(uint16_t h);
float sd_bf16_to_f32(uint16_t b);
uint16_t sd_f32_to_f16(float f);
uint16_t sd_f32_to_bf16(float f);

/* safetensors reader: parse an in-memory image (`map`, `size`) into `tf`
 * (tf->tensors etc.); the caller keeps the mapping alive. Used by
 * sd_tensorfile_open and directly by the fuzzer. */
sdunet_status sd_safetensors_parse(const void *map, size_t size, sd_tensorfile *tf,
                                   sdunet_error *err);

/* safetensors writer: `__metadata__` first (when metadata_json is a JSON
 * object text, else {"format":"pt"}), keys sorted, data in key order,
 * header padded with spaces to a multiple of 8 bytes. */
sdunet_status sd_safetensors_write(const char *path, const sd_tensor_info *tensors, size_t n,
                                   const char *metadata_json, sdunet_error *err);

#endif
