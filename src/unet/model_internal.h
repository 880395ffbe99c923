/* Internal entry points shared by the CLI and the tests. */
#ifndef SD_MODEL_INTERNAL_H
#define SD_MODEL_INTERNAL_H

#include "unet/unet.h"

/* sdunet_forward with trace events (see sd_event). */
sdunet_status sd_model_forward_ev(sdunet_model *m, const float *sample, int batch, int channels,
                                  int height, int width, const float *timesteps, int n_timesteps,
                                  const float *context, int context_len, int context_dim,
                                  float *out, sd_event_fn ev, void *ev_user, sdunet_error *err);

/* sdunet_load (synthetic 0: path and config as it takes them) or
 * sdunet_load_synthetic (synthetic 1: config only), running on the share's
 * pool and reading its open file when that is the weight file (sh may be
 * NULL). */
sdunet_status sd_model_open(const char *path, const char *config, int synthetic,
                            const sdunet_options *opt, const sd_share *sh, sdunet_model **out,
                            sdunet_error *err);

/* A model from a configuration and a weight source (file or synthetic);
 * it runs on src->pool when that is set (another reference), else on a
 * pool of its own. */
sdunet_status sd_model_create(const sd_unet_config *cfg, const sd_weight_source *src,
                              const sdunet_options *opt, sdunet_model **out, sdunet_error *err);

/* Bytes of the model's packed weight panels by storage type (bytes[t]
 * for sd_wtype t, SD_WT_COUNT entries). */
void sd_model_packed_bytes(const sdunet_model *m, size_t *bytes);

/* "f32", "f16", "bf16" for a model whose panels all have that type, else
 * "mixed"; from packed_bytes as sd_model_packed_bytes gives them. */
const char *sd_weights_label(const size_t *bytes);

/* Frees the activation plan, staging and kernel scratch (the next forward
 * plans again), e.g. before the VAE runs; a no-op while a forward runs. */
void sd_model_trim(sdunet_model *m);

/* Accumulate per-op-kind time into prof during forwards (NULL: stop). */
void sd_model_set_profile(sdunet_model *m, sd_prof *prof);

#endif
