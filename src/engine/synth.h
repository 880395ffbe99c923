/* Deterministic synthetic weights and inputs (spec/synthetic-weights.md,
 * version 1): every value is a function of the tensor's name and shape. */
#ifndef SD_SYNTH_H
#define SD_SYNTH_H

#include <stddef.h>
#include <stdint.h>

uint64_t sd_fnv1a64(const char *s);

/* value[i] = (float)(r_i * s) + c for i < n, r_i the generator's stream for `name`. */
void sd_synth_fill(const char *name, size_t n, double s, float c, float *out);

/* Fills a weight tensor, choosing (s, c) from its rank and name as the spec's
 * table says (rank >= 2: s = 1/sqrt(fan_in); rank 1 ".weight": 0.1, 1;
 * rank 1 ".bias": 0.1, 0). */
void sd_synth_weight(const char *name, int ndim, const int64_t *shape, float *out);

/* The same, generated in parallel on a thread pool (NULL: inline). */
struct sd_pool;
void sd_synth_weight_pool(const char *name, int ndim, const int64_t *shape, float *out,
                          struct sd_pool *pool);

/* Standard inputs: "input.sample" (s = sqrt 3) and "input.encoder_hidden_states" (s = 1). */
#define SD_SYNTH_SAMPLE_NAME "input.sample"
#define SD_SYNTH_CONTEXT_NAME "input.encoder_hidden_states"

#endif
