/* NumPy .npy files (format versions 1.0, 2.0, 3.0). */
#ifndef SD_NPY_H
#define SD_NPY_H

#include "common.h"
#include "io/tensorfile.h"

/* Reads a little-endian, C-order float16/float32/float64 array; data
 * converted to float32, allocated with sd_alloc (caller frees with sd_free).
 * Anything else (big-endian, Fortran order, other dtypes, truncated data,
 * more than SD_MAX_DIMS dims) is SDUNET_E_FORMAT or SDUNET_E_UNSUPPORTED. */
sdunet_status sd_npy_read_f32(const char *path, float **data, int *ndim, int64_t shape[SD_MAX_DIMS],
                              sdunet_error *err);
/* Same, converted to float64 (exact for all three input types). */
sdunet_status sd_npy_read_f64(const char *path, double **data, int *ndim,
                              int64_t shape[SD_MAX_DIMS], sdunet_error *err);
/* Parses an in-memory .npy image (for the fuzzer and the file readers). */
sdunet_status sd_npy_parse_f32(const void *buf, size_t size, float **data, int *ndim,
                               int64_t shape[SD_MAX_DIMS], sdunet_error *err);

/* Writes a float32 little-endian C-order .npy (version 1.0). */
sdunet_status sd_npy_write_f32(const char *path, const float *data, int ndim, const int64_t *shape,
                               sdunet_error *err);

#endif
