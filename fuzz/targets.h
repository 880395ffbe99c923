/* The fuzz entry points, one per reader. Each takes arbitrary bytes, runs
 * them through the reader the way the library would, and checks the
 * reader's promises on whatever it accepts. They return 0, or -1 when an
 * accepted input broke an invariant (the libFuzzer wrappers abort on that so
 * it is reported as a finding). Memory errors, leaks and undefined behaviour
 * are left to the sanitizers.
 *
 * The same functions are compiled into tests/test_fuzz_regressions.c, which
 * replays fuzz/regressions/<harness>/ with any compiler, libFuzzer or not. */
#ifndef SD_FUZZ_TARGETS_H
#define SD_FUZZ_TARGETS_H

#include <stddef.h>
#include <stdint.h>

int sd_fuzz_safetensors(const uint8_t *data, size_t size);
int sd_fuzz_json(const uint8_t *data, size_t size);
int sd_fuzz_npy(const uint8_t *data, size_t size);
int sd_fuzz_png(const uint8_t *data, size_t size);
int sd_fuzz_ckpt(const uint8_t *data, size_t size);
int sd_fuzz_pickle(const uint8_t *data, size_t size);
int sd_fuzz_load(const uint8_t *data, size_t size);
/* A prompt through the builtin CLIP tokenizer, SD1 and SD2 padding. */
int sd_fuzz_tokenizer(const uint8_t *data, size_t size);
/* vocab.json, a NUL byte, merges.txt: the tokenizer loader, then a few prompts. */
int sd_fuzz_vocab(const uint8_t *data, size_t size);
int sd_fuzz_vae(const uint8_t *data, size_t size);
int sd_fuzz_vae_config(const uint8_t *data, size_t size);

/* The pickle harness's archive: `pickle` stored as archive/data.pkl beside
 * the storages archive/data/0 .. archive/data/<SD_FUZZ_STORAGES - 1>, each
 * SD_FUZZ_STORAGE_BYTES of patterned bytes, so pickles can reference real
 * storages. Returns a malloc'd archive (caller frees) or NULL. */
#define SD_FUZZ_STORAGES 8
#define SD_FUZZ_STORAGE_BYTES 256
uint8_t *sd_fuzz_wrap_pickle(const uint8_t *pickle, size_t size, size_t *out_size);

/* The UNet configuration the end-to-end harness loads with: the micro golden
 * case's config.json (tests/data/micro), embedded so the harness does not
 * depend on the working directory. */
extern const char sd_fuzz_micro_config[];

/* Harnesses by name, for the regression replayer and the corpus tool. */
typedef struct sd_fuzz_harness {
    const char *name;
    int (*run)(const uint8_t *data, size_t size);
} sd_fuzz_harness;
extern const sd_fuzz_harness sd_fuzz_harnesses[];
extern const size_t sd_fuzz_n_harnesses;

#endif
