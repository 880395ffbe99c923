/* Finding a model on disk and the configuration it loads with.
 *
 * A model path is a weight file (safetensors or .ckpt; diffusers or LDM
 * names; possibly a whole single-file checkpoint with VAE, text encoder and
 * EMA tensors beside the UNet) or a diffusers folder (DIR/unet/ or DIR/
 * holding config.json and diffusion_pytorch_model[.VARIANT].safetensors).
 * The configuration comes, in this order, from an explicit config file or
 * preset, the config.json beside the weights, or inference from the
 * tensor shapes. */
#ifndef SD_INFER_H
#define SD_INFER_H

#include "engine/layers.h"
#include "io/keymap.h"
#include "io/tensorfile.h"
#include "unet/config.h"

/* Report text: one line per inferred fact, each "  fact: source\n". */
#define SD_INFER_REPORT 2048

/* Infers the UNet configuration from the names and shapes in tf (layout
 * SD_LAYOUT_DIFFUSERS or SD_LAYOUT_LDM): block count and channels, layers
 * per block, which blocks have attention, in/out channels, cross-attention
 * width, linear or 1x1-conv projections, and the heads of the known
 * families (cross width 768: 8 heads, SD1.x; 1024: head size 64, SD2.x).
 * What the weights cannot tell (GroupNorm groups and eps, the sinusoid's
 * flip and shift) takes the value every SD1.x/SD2.x model uses. Anything
 * ambiguous or outside the family is SDUNET_E_CONFIG asking for --config.
 * When report is non-NULL it receives the facts and the tensors they came
 * from (also on failure, as far as it got). Reads only names and shapes. */
sdunet_status sd_config_infer(const sd_tensorfile *tf, sd_layout layout, sd_unet_config *cfg,
                              char *report, size_t report_len, sdunet_error *err);

typedef enum sd_config_origin {
    SD_CONFIG_NONE = 0,     /* not chosen yet, or none could be had */
    SD_CONFIG_EXPLICIT = 1, /* a config file or preset given by the caller */
    SD_CONFIG_BESIDE = 2,   /* config.json in the weights' folder */
    SD_CONFIG_INFERRED = 3  /* from the tensor shapes */
} sd_config_origin;

typedef struct sd_model_files {
    char weights[4096]; /* the weight file opened (inside the folder for a folder) */
    char beside[4096];  /* config.json in the weights' folder, "" if there is none */
    int is_folder;      /* the path given was a diffusers folder */
    sd_tensorfile *tf;
    const sd_share *share; /* set before opening: read the share's file when it is this one */
    sd_layout layout;
    sd_config_origin origin;
    char config[4096];            /* the config file or preset used ("" when inferred) */
    sd_unet_config cfg;           /* valid once origin != SD_CONFIG_NONE */
    char report[SD_INFER_REPORT]; /* inference report when origin == SD_CONFIG_INFERRED */
} sd_model_files;

/* Resolves `path` (file or diffusers folder; `variant` such as "fp16"
 * picks diffusion_pytorch_model.VARIANT.safetensors in a folder and is an
 * error for a file), opens the weights and classifies their names. */
sdunet_status sd_model_files_open(const char *path, const char *variant, sd_model_files *mf,
                                  sdunet_error *err);

/* Chooses the configuration: `config` (file or preset) when non-NULL, else
 * the config.json beside the weights, else inference. Errors name the file
 * they concern. */
sdunet_status sd_model_files_config(sd_model_files *mf, const char *config, sdunet_error *err);

void sd_model_files_close(sd_model_files *mf);

/* Human-readable layout name ("diffusers", "ldm (model.diffusion_model.*)", ...). */
const char *sd_layout_name(sd_layout layout);

#endif
