/* Weight names: the CompVis/LDM UNet layout ("model.diffusion_model.
 * input_blocks.1.0.in_layers.0.weight", as in original SD .ckpt files) and
 * the diffusers UNet2DConditionModel layout ("down_blocks.0.resnets.0.
 * norm1.weight"), mapped both ways for a given configuration. Pure string
 * functions: no state, no allocation. SD2 (use_linear_projection) uses the
 * same names; only the proj_in/proj_out shapes differ, which is the
 * loader's concern. */
#ifndef SD_KEYMAP_H
#define SD_KEYMAP_H

#include "io/tensorfile.h"
#include "unet/config.h"

#define SD_LDM_UNET_PREFIX "model.diffusion_model."

/* LDM name -> diffusers name in out (NUL-terminated). Returns 1 if mapped,
 * 0 if the name is not a UNet weight at all (VAE first_stage_model.*, text
 * encoder cond_stage_model.*, EMA model_ema.*, alphas_cumprod, ...), -1 if
 * it has the UNet prefix but names nothing this configuration has (or out
 * is too small). out is "" unless 1 is returned. */
int sd_ldm_to_diffusers(const sd_unet_config *cfg, const char *ldm_name, char *out, size_t outlen);

/* The inverse: diffusers name -> LDM name (with SD_LDM_UNET_PREFIX). Returns
 * 1 if mapped, 0 if the name does not start with a diffusers UNet module
 * (conv_in, time_embedding, down_blocks, mid_block, up_blocks,
 * conv_norm_out, conv_out, ...), -1 if it does but cannot be mapped. */
int sd_diffusers_to_ldm(const sd_unet_config *cfg, const char *diffusers_name, char *out,
                        size_t outlen);

typedef enum sd_layout {
    SD_LAYOUT_UNKNOWN = 0,   /* no UNet names of either kind */
    SD_LAYOUT_DIFFUSERS = 1, /* names like down_blocks.0.resnets.0.norm1.weight */
    SD_LAYOUT_LDM = 2,       /* names like model.diffusion_model.input_blocks.1.0... */
    SD_LAYOUT_MIXED = 3      /* both kinds present: ambiguous, refuse */
} sd_layout;

/* Classifies a tensor table by its name prefixes. */
sd_layout sd_detect_layout(const sd_tensorfile *tf);

/* Looks a UNet tensor up by its diffusers name in a table of the given
 * layout (translating to the LDM name when needed). NULL if absent or
 * unmappable. */
const sd_tensor_info *sd_find_unet_tensor(const sd_tensorfile *tf, const sd_unet_config *cfg,
                                          sd_layout layout, const char *diffusers_name);

#endif
