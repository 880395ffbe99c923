/* The UNet configuration: the subset of diffusers' UNet2DConditionModel
 * config.json that the SD1.x / SD2.x family uses. Anything else in a config
 * is rejected by name rather than silently ignored. */
#ifndef SD_CONFIG_H
#define SD_CONFIG_H

#include "common.h"

#define SD_MAX_BLOCKS 8

typedef struct sd_unet_config {
    int in_channels, out_channels;
    int n_blocks; /* len(block_out_channels) */
    int block_out_channels[SD_MAX_BLOCKS];
    int down_has_attn[SD_MAX_BLOCKS]; /* CrossAttnDownBlock2D (1) or DownBlock2D (0) */
    int up_has_attn[SD_MAX_BLOCKS];   /* CrossAttnUpBlock2D (1) or UpBlock2D (0) */
    int heads[SD_MAX_BLOCKS];         /* attention heads per down block (up blocks reverse it) */
    int layers_per_block;
    int cross_attention_dim;
    int norm_num_groups;
    float norm_eps;
    int use_linear_projection;
    int flip_sin_to_cos;
    int freq_shift;
    int mid_has_attn;   /* UNetMidBlock2DCrossAttn */
    int time_embed_dim; /* 4 * block_out_channels[0] */
} sd_unet_config;

/* Built-in presets: "sd15" (SD1.5) and "sd21" (SD2.1). */
sdunet_status sd_config_preset(const char *name, sd_unet_config *cfg, sdunet_error *err);
/* Parses diffusers' config.json text. */
sdunet_status sd_config_parse(const char *json, size_t len, sd_unet_config *cfg, sdunet_error *err);
/* Preset name or path to a config.json. */
sdunet_status sd_config_load(const char *preset_or_path, sd_unet_config *cfg, sdunet_error *err);

#endif
