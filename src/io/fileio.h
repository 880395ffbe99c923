/* Small POSIX file helpers shared by the readers and writers: paths,
 * small text files, and where a diffusers folder keeps a model. */
#ifndef SD_FILEIO_H
#define SD_FILEIO_H

#include <stddef.h>

/* write(2) until all n bytes are written, in chunks a 32-bit size_t or a
 * picky kernel accepts, retrying on EINTR. 0 on success, -1 with errno set. */
int sd_write_all(int fd, const void *buf, size_t n);

/* 1 when path is a regular file / a directory. */
int sd_is_regular(const char *path);
int sd_is_dir(const char *path);

/* out = DIR/SUB/NAME (no SUB part when sub is ""); 1 when it fits in len. */
int sd_path_join(char *out, size_t len, const char *dir, const char *sub, const char *name);

/* A whole file of at most max bytes, NUL-terminated and malloc'd (*len its
 * size); NULL when it cannot be read or is larger. */
char *sd_read_small_file(const char *path, size_t max, size_t *len);

/* A variant ("fp16") is a file-name part: a plain word of 1..64 of
 * [A-Za-z0-9_-]. */
int sd_valid_variant(const char *v);

/* A diffusers model's weights in a folder: DIR/SUB/ (a pipeline's model
 * folder) before DIR/ (the model's own folder); STEM.safetensors before
 * STEM.bin, or STEM.VARIANT.* for a variant; without one, an fp16-only
 * folder (STEM.fp16.safetensors) still loads. Fills weights and config (the
 * config.json beside them, "" if none); 1 when found, 0 when not, -1 when a
 * path does not fit. */
int sd_find_model_weights(const char *dir, const char *sub, const char *stem, const char *variant,
                          char *weights, size_t wlen, char *config, size_t clen);

#endif
