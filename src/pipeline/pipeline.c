/* The text-to-image / image-to-image pipeline: the three models, the
 * scheduler configuration as diffusers reads it, PyTorch's generator, and
 * diffusers 0.25.1's StableDiffusionPipeline / Img2Img loops step by step. */
#include "sdunet_pipeline.h"

#include "common.h"
#include "engine/pool.h"
#include "io/fileio.h"
#include "io/json.h"
#include "io/sha256.h"
#include "sched/torch_rng.h"
#include "sdunet_sample.h"
#include "sdunet_vae.h"
#include "clip/encoder.h"
#include "unet/model_internal.h"
#include "vae/vae.h"

#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct sdunet_pipeline {
    /* The models, NULL while released: with low_memory each one is loaded
     * when its phase starts and freed when it ends (the text encoder after
     * the prompts, the UNet before the VAE decodes). */
    sdunet_model *unet;
    sdunet_text *text;
    sdunet_vae *vae;
    /* What the three share: one thread pool, and a single-file
     * checkpoint's open file (kept open with low_memory, to load again) */
    sd_pool *pool;
    sd_tensorfile *file;
    /* how to load each model (again) */
    int synthetic;        /* path: a preset or a folder of configs */
    char path[4096];      /* the checkpoint file or diffusers folder */
    char unet_cfg[4096];  /* "" or the UNet's config / preset */
    char vae_path[4096];  /* the VAE's file or folder ("" for synthetic) */
    char vae_cfg[4096];   /* synthetic: the VAE's config or preset */
    char text_path[4096]; /* the text encoder's path, or its synthetic config */
    char text_cfg[4096];  /* "" or the text encoder's config.json */
    char tokenizer[4096]; /* "" or a synthetic folder's tokenizer/ */
    char variant[72];
    sdunet_options uo;
    sdunet_text_options topt;
    int low_memory;

    sdunet_sched_config sched_cfg;
    char sched_name[32]; /* the model's sampler */
    int spacing_given;   /* the config names its timestep_spacing */
    int sd2;
    int sample_size; /* latent side of the default image */
    int vae_factor, latent_ch, context_dim;
    const char *isa;
    char model_name[256];
    char model_hash[16];
    int threads;
    atomic_flag busy;
};

void sdunet_pipeline_options_default(sdunet_pipeline_options *opt)
{
    if (!opt)
        return;
    memset(opt, 0, sizeof *opt);
    opt->prediction_type = -1;
}

void sdunet_gen_params_default(sdunet_gen_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->steps = 50;
    p->guidance = 7.5;
    p->batch = 1;
    p->strength = 0.8;
    sdunet_text_params_default(&p->text);
}

/* ---- files ---- */

/* The file or folder name without its extension. */
static void base_name(const char *path, char *out, size_t len)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/')
        b--;
    size_t e = n;
    for (size_t i = n; i > b; i--)
        if (path[i - 1] == '.') {
            e = i - 1;
            break;
        }
    if (e == b)
        e = n;
    snprintf(out, len, "%.*s", (int)(e - b), path + b);
}

/* AUTOMATIC1111's short model hash: SHA-256 of the 64 KiB at offset 1 MiB,
 * first 8 hex digits ("" when the file is shorter). */
static void model_hash(const char *path, char out[16])
{
    out[0] = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return;
    uint8_t *buf = malloc(0x10000);
    if (buf && fseek(f, 0x100000, SEEK_SET) == 0) {
        size_t n = fread(buf, 1, 0x10000, f);
        if (n == 0x10000) {
            sd_sha256 s;
            uint8_t d[32];
            sd_sha256_init(&s);
            sd_sha256_update(&s, buf, n);
            sd_sha256_final(&s, d);
            snprintf(out, 16, "%02x%02x%02x%02x", d[0], d[1], d[2], d[3]);
        }
    }
    free(buf);
    fclose(f);
}

/* ---- scheduler configuration ---- */

static const struct {
    const char *cls, *name;
} sched_classes[] = {{"PNDMScheduler", "pndm"},
                     {"DDIMScheduler", "ddim"},
                     {"EulerDiscreteScheduler", "euler"},
                     {"EulerAncestralDiscreteScheduler", "euler_a"},
                     {"DPMSolverMultistepScheduler", "dpmpp_2m"},
                     {"LMSDiscreteScheduler", "lms"},
                     {"UniPCMultistepScheduler", "unipc"}};

/* The spacing a diffusers scheduler class uses when its config says none. */
static sdunet_timestep_spacing class_spacing(const char *name)
{
    return strcmp(name, "ddim") == 0 || strcmp(name, "pndm") == 0 ? SDUNET_SPACING_LEADING
                                                                  : SDUNET_SPACING_LINSPACE;
}

static sdunet_status parse_sched(sdunet_pipeline *pl, const char *path, sdunet_error *err)
{
    size_t len;
    char *raw = sd_read_small_file(path, (size_t)16 << 20, &len);
    if (!raw)
        return sd_fail(err, SDUNET_E_IO, "%s: cannot read", path);
    /* diffusers writes its configs with Python's json: -Infinity may occur */
    char *text = sd_json_from_python(raw, len, &len);
    free(raw);
    if (!text)
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    sd_json *j = NULL;
    sdunet_status st = sd_json_parse(text, len, &j, err);
    free(text);
    if (st) {
        sd_err_prefix(err, path);
        return st;
    }
    sdunet_sched_config *c = &pl->sched_cfg;
    sdunet_sched_config_default(c);
    const char *bad = NULL;
    const sd_json *v = sd_json_get(j, "_class_name");
    snprintf(pl->sched_name, sizeof pl->sched_name, "pndm");
    if (v && v->type == SD_JSON_STRING) {
        size_t k;
        for (k = 0; k < sizeof sched_classes / sizeof sched_classes[0]; k++)
            if (strcmp(v->string, sched_classes[k].cls) == 0)
                break;
        if (k == sizeof sched_classes / sizeof sched_classes[0])
            bad = "_class_name (supported: PNDM, DDIM, EulerDiscrete, EulerAncestralDiscrete, "
                  "DPMSolverMultistep, LMSDiscrete, UniPCMultistep)";
        else
            snprintf(pl->sched_name, sizeof pl->sched_name, "%s", sched_classes[k].name);
    }
    if (!bad && (v = sd_json_get(j, "num_train_timesteps")) != NULL)
        v->type == SD_JSON_NUMBER && v->is_int ? (void)(c->num_train_timesteps = (int)v->integer)
                                               : (void)(bad = "num_train_timesteps");
    if (!bad && (v = sd_json_get(j, "beta_start")) != NULL)
        v->type == SD_JSON_NUMBER ? (void)(c->beta_start = v->number) : (void)(bad = "beta_start");
    if (!bad && (v = sd_json_get(j, "beta_end")) != NULL)
        v->type == SD_JSON_NUMBER ? (void)(c->beta_end = v->number) : (void)(bad = "beta_end");
    if (!bad && (v = sd_json_get(j, "beta_schedule")) != NULL) {
        if (v->type == SD_JSON_STRING && strcmp(v->string, "scaled_linear") == 0)
            c->beta_schedule = SDUNET_BETA_SCALED_LINEAR;
        else if (v->type == SD_JSON_STRING && strcmp(v->string, "linear") == 0)
            c->beta_schedule = SDUNET_BETA_LINEAR;
        else
            bad = "beta_schedule (scaled_linear or linear)";
    }
    if (!bad && (v = sd_json_get(j, "trained_betas")) != NULL && v->type != SD_JSON_NULL)
        bad = "trained_betas (only null)";
    if (!bad && (v = sd_json_get(j, "steps_offset")) != NULL)
        v->type == SD_JSON_NUMBER && v->is_int ? (void)(c->steps_offset = (int)v->integer)
                                               : (void)(bad = "steps_offset");
    if (!bad && (v = sd_json_get(j, "set_alpha_to_one")) != NULL)
        v->type == SD_JSON_BOOL ? (void)(c->set_alpha_to_one = v->boolean)
                                : (void)(bad = "set_alpha_to_one");
    if (!bad && (v = sd_json_get(j, "prediction_type")) != NULL) {
        if (v->type == SD_JSON_STRING && strcmp(v->string, "epsilon") == 0)
            c->prediction_type = SDUNET_PRED_EPSILON;
        else if (v->type == SD_JSON_STRING && strcmp(v->string, "v_prediction") == 0)
            c->prediction_type = SDUNET_PRED_V;
        else
            bad = "prediction_type (epsilon or v_prediction)";
    }
    pl->spacing_given = 0;
    if (!bad && (v = sd_json_get(j, "timestep_spacing")) != NULL) {
        pl->spacing_given = 1;
        if (v->type == SD_JSON_STRING && strcmp(v->string, "leading") == 0)
            c->timestep_spacing = SDUNET_SPACING_LEADING;
        else if (v->type == SD_JSON_STRING && strcmp(v->string, "linspace") == 0)
            c->timestep_spacing = SDUNET_SPACING_LINSPACE;
        else if (v->type == SD_JSON_STRING && strcmp(v->string, "trailing") == 0)
            c->timestep_spacing = SDUNET_SPACING_TRAILING;
        else
            bad = "timestep_spacing (leading, linspace or trailing)";
    }
    if (!bad && (v = sd_json_get(j, "use_karras_sigmas")) != NULL && v->type == SD_JSON_BOOL &&
        v->boolean) {
        if (strcmp(pl->sched_name, "dpmpp_2m") == 0)
            snprintf(pl->sched_name, sizeof pl->sched_name, "dpmpp_2m_karras");
        else
            bad = "use_karras_sigmas (only with DPMSolverMultistep)";
    }
    if (!bad && strcmp(pl->sched_name, "dpmpp_2m") == 0 &&
        (v = sd_json_get(j, "algorithm_type")) != NULL &&
        !(v->type == SD_JSON_STRING && strcmp(v->string, "dpmsolver++") == 0))
        bad = "algorithm_type (dpmsolver++)";
    sd_json_free(j);
    if (bad)
        return sd_fail(err, SDUNET_E_CONFIG, "%s: unsupported or malformed %s", path, bad);
    if (!pl->spacing_given)
        c->timestep_spacing = class_spacing(pl->sched_name);
    return SDUNET_OK;
}

/* ---- loading ---- */

static sdunet_status pipeline_new(const sdunet_pipeline_options *opt, sdunet_pipeline **out,
                                  sdunet_error *err)
{
    if (opt && (opt->threads < 0 || opt->threads > 1024))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "threads must be 0..1024 (got %d)", opt->threads);
    if (opt && opt->prediction_type != -1 && opt->prediction_type != SDUNET_PRED_EPSILON &&
        opt->prediction_type != SDUNET_PRED_V)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "unknown prediction type %d",
                       opt->prediction_type);
    const char *too_long = NULL;
    if (opt && opt->variant && strlen(opt->variant) >= 72)
        too_long = "variant";
    if (opt && opt->vae && strlen(opt->vae) >= 4096)
        too_long = "VAE path";
    if (opt && opt->unet_config && strlen(opt->unet_config) >= 4096)
        too_long = "UNet config path";
    if (opt && opt->text_config && strlen(opt->text_config) >= 4096)
        too_long = "text encoder config path";
    if (too_long)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "%s too long", too_long);
    sdunet_pipeline *pl = calloc(1, sizeof *pl);
    if (!pl)
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    atomic_flag_clear(&pl->busy);
    pl->threads = opt && opt->threads ? opt->threads : sd_default_threads();
    pl->low_memory = opt && opt->low_memory;
    sdunet_sched_config_default(&pl->sched_cfg);
    snprintf(pl->sched_name, sizeof pl->sched_name, "pndm");
    if (opt && opt->variant)
        snprintf(pl->variant, sizeof pl->variant, "%s", opt->variant);
    if (opt && opt->unet_config)
        snprintf(pl->unet_cfg, sizeof pl->unet_cfg, "%s", opt->unet_config);
    if (opt && opt->text_config)
        snprintf(pl->text_cfg, sizeof pl->text_cfg, "%s", opt->text_config);
    sdunet_options_default(&pl->uo);
    pl->uo.threads = pl->threads;
    pl->uo.fast = opt ? opt->fast : 0;
    pl->uo.variant = pl->variant[0] ? pl->variant : NULL;
    sdunet_text_options_default(&pl->topt);
    pl->topt.threads = pl->threads;
    pl->topt.variant = pl->uo.variant;
    pl->topt.config = pl->text_cfg[0] ? pl->text_cfg : NULL;
    sdunet_status st = sd_pool_create(pl->threads, &pl->pool, err);
    if (st) {
        free(pl);
        return st;
    }
    *out = pl;
    return SDUNET_OK;
}

/* ---- the models, loaded when needed ---- */

static sd_share share_of(const sdunet_pipeline *pl)
{
    sd_share sh = {.pool = pl->pool, .path = pl->path, .file = pl->file};
    return sh;
}

static sdunet_status need_text(sdunet_pipeline *pl, sdunet_error *err)
{
    if (pl->text)
        return SDUNET_OK;
    sd_share sh = share_of(pl);
    pl->topt.tokenizer = pl->tokenizer[0] ? pl->tokenizer : NULL;
    return sd_text_open(pl->text_path, pl->synthetic, &pl->topt, &sh, &pl->text, err);
}

static sdunet_status need_unet(sdunet_pipeline *pl, sdunet_error *err)
{
    if (pl->unet)
        return SDUNET_OK;
    sd_share sh = share_of(pl);
    return sd_model_open(pl->synthetic ? NULL : pl->path, pl->unet_cfg[0] ? pl->unet_cfg : NULL,
                         pl->synthetic, &pl->uo, &sh, &pl->unet, err);
}

static sdunet_status need_vae(sdunet_pipeline *pl, sdunet_error *err)
{
    if (pl->vae)
        return SDUNET_OK;
    sd_share sh = share_of(pl);
    return sd_vae_open(pl->synthetic ? NULL : pl->vae_path, pl->synthetic ? pl->vae_cfg : NULL,
                       pl->synthetic, &pl->uo, &sh, &pl->vae, err);
}

/* With low_memory: a model whose phase is over. */
static void release_text(sdunet_pipeline *pl)
{
    if (pl->low_memory) {
        sdunet_text_free(pl->text);
        pl->text = NULL;
    }
}

static void release_unet(sdunet_pipeline *pl)
{
    if (pl->low_memory) {
        sdunet_free(pl->unet);
        pl->unet = NULL;
    }
}

static void release_vae(sdunet_pipeline *pl)
{
    if (pl->low_memory) {
        sdunet_vae_free(pl->vae);
        pl->vae = NULL;
    }
}

/* Loads the three models (with low_memory the VAE is released once its
 * facts are read; the text encoder and UNet stay for the first generation,
 * whose text phase holds both anyway), checks that they fit together, and
 * settles family, sizes and prediction type. */
static sdunet_status load_models(sdunet_pipeline *pl, const sdunet_pipeline_options *opt,
                                 int folder_pred, sdunet_error *err)
{
    sdunet_status st;
    sdunet_text_info ti;
    sdunet_vae_info vi;
    sdunet_model_info ui;
    if ((st = need_text(pl, err)))
        return st;
    sdunet_text_get_info(pl->text, &ti);
    int sd2 = strcmp(ti.family, "sd2") == 0;
    if ((st = need_vae(pl, err)))
        return st;
    sdunet_vae_get_info(pl->vae, &vi);
    release_vae(pl);
    if ((st = need_unet(pl, err)))
        return st;
    sdunet_get_info(pl->unet, &ui);
    if (ui.context_dim != ti.hidden)
        return sd_fail(err, SDUNET_E_CONFIG,
                       "the UNet takes a %d-wide context but the text encoder gives %d",
                       ui.context_dim, ti.hidden);
    if (ui.in_channels != vi.latent_channels || ui.out_channels != vi.latent_channels)
        return sd_fail(err, SDUNET_E_CONFIG, "the UNet's %d/%d channels do not fit the VAE's %d",
                       ui.in_channels, ui.out_channels, vi.latent_channels);
    pl->isa = ui.isa;
    pl->sd2 = sd2;
    pl->vae_factor = vi.factor;
    pl->latent_ch = vi.latent_channels;
    pl->context_dim = ti.hidden;
    if (!folder_pred)
        pl->sched_cfg.prediction_type = pl->sd2 ? SDUNET_PRED_V : SDUNET_PRED_EPSILON;
    if (opt && opt->prediction_type >= 0)
        pl->sched_cfg.prediction_type = (sdunet_prediction_type)opt->prediction_type;
    if (!pl->sample_size)
        pl->sample_size = pl->sd2 && pl->sched_cfg.prediction_type == SDUNET_PRED_V ? 96 : 64;
    if (!pl->low_memory) { /* nothing is loaded again */
        sd_tensorfile_close(pl->file);
        pl->file = NULL;
    }
    return SDUNET_OK;
}

/* unet/config.json's sample_size, 0 when absent. */
static int read_sample_size(const char *unet_config)
{
    size_t len;
    char *text = sd_read_small_file(unet_config, (size_t)16 << 20, &len);
    sd_json *j = NULL;
    int v = 0;
    if (text && sd_json_parse(text, len, &j, NULL) == SDUNET_OK) {
        const sd_json *s = sd_json_get(j, "sample_size");
        if (s && s->type == SD_JSON_NUMBER && s->is_int && s->integer > 0 && s->integer <= 4096)
            v = (int)s->integer;
    }
    sd_json_free(j);
    free(text);
    return v;
}

/* A pipeline folder's scheduler/scheduler_config.json (when there is one;
 * *given says so) and unet/config.json's sample_size. */
static sdunet_status read_folder(sdunet_pipeline *pl, const char *dir, int *given,
                                 sdunet_error *err)
{
    char p[4096];
    *given = 0;
    if (!sd_path_join(p, sizeof p, dir, "", "scheduler/scheduler_config.json"))
        return sd_fail(err, SDUNET_E_IO, "%s: path too long", dir);
    if (sd_is_regular(p)) {
        sdunet_status st = parse_sched(pl, p, err);
        if (st)
            return st;
        *given = 1;
    }
    if (sd_path_join(p, sizeof p, dir, "", "unet/config.json"))
        pl->sample_size = read_sample_size(p);
    return SDUNET_OK;
}

/* The end of both loads: the models (unless st already failed), then the
 * pipeline handed out or freed. */
static sdunet_status finish_load(sdunet_pipeline *pl, sdunet_status st,
                                 const sdunet_pipeline_options *opt, int folder_pred,
                                 sdunet_pipeline **out, sdunet_error *err)
{
    if (!st)
        st = load_models(pl, opt, folder_pred, err);
    if (st) {
        sdunet_pipeline_free(pl);
        return st;
    }
    *out = pl;
    return SDUNET_OK;
}

sdunet_status sdunet_pipeline_load(const char *path, const sdunet_pipeline_options *opt,
                                   sdunet_pipeline **out, sdunet_error *err)
{
    if (!out)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL output pointer");
    *out = NULL;
    if (!path || !*path)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL or empty path");
    if (strlen(path) >= 4096)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "path too long");
    struct stat st0;
    if (stat(path, &st0) != 0)
        return sd_fail(err, SDUNET_E_IO, "%s: cannot open: %s", path, strerror(errno));
    sdunet_pipeline *pl;
    sdunet_status st = pipeline_new(opt, &pl, err);
    if (st)
        return st;
    const int folder = S_ISDIR(st0.st_mode);
    snprintf(pl->path, sizeof pl->path, "%s", path);
    snprintf(pl->text_path, sizeof pl->text_path, "%s", path);
    snprintf(pl->vae_path, sizeof pl->vae_path, "%s", opt && opt->vae ? opt->vae : path);
    base_name(path, pl->model_name, sizeof pl->model_name);
    if (!folder)
        model_hash(path, pl->model_hash);
    int folder_pred = 0;
    if (folder)
        st = read_folder(pl, path, &folder_pred, err);
    else if (!pl->variant[0]) /* a single file holds all three models: open and parse it once */
        st = sd_tensorfile_open(path, &pl->file, err);
    return finish_load(pl, st, opt, folder_pred, out, err);
}

sdunet_status sdunet_pipeline_load_synthetic(const char *preset, const sdunet_pipeline_options *opt,
                                             sdunet_pipeline **out, sdunet_error *err)
{
    if (!out)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL output pointer");
    *out = NULL;
    if (!preset)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL preset");
    sdunet_pipeline *pl;
    sdunet_status st = pipeline_new(opt, &pl, err);
    if (st)
        return st;
    pl->synthetic = 1;
    snprintf(pl->model_name, sizeof pl->model_name, "synthetic-%s", preset);
    int folder_pred = 0;
    if (sd_is_dir(preset)) {
        base_name(preset, pl->model_name, sizeof pl->model_name);
        if (!sd_path_join(pl->unet_cfg, sizeof pl->unet_cfg, preset, "", "unet/config.json") ||
            !sd_path_join(pl->vae_cfg, sizeof pl->vae_cfg, preset, "", "vae/config.json") ||
            !sd_path_join(pl->text_path, sizeof pl->text_path, preset, "",
                          "text_encoder/config.json"))
            st = sd_fail(err, SDUNET_E_IO, "%s: path too long", preset);
        else
            st = read_folder(pl, preset, &folder_pred, err);
        if (!(sd_path_join(pl->tokenizer, sizeof pl->tokenizer, preset, "", "tokenizer") &&
              sd_is_dir(pl->tokenizer)))
            pl->tokenizer[0] = 0;
    } else if (strcmp(preset, "sd15") == 0 || strcmp(preset, "sd21") == 0) {
        snprintf(pl->unet_cfg, sizeof pl->unet_cfg, "%s", preset);
        snprintf(pl->vae_cfg, sizeof pl->vae_cfg, "sd15"); /* SD1 and SD2 share the VAE */
        snprintf(pl->text_path, sizeof pl->text_path, "%s", preset);
    } else {
        st = sd_fail(err, SDUNET_E_INVALID_ARG,
                     "synthetic pipeline '%.200s': give sd15, sd21 or a folder of configs", preset);
    }
    return finish_load(pl, st, opt, folder_pred, out, err);
}

void sdunet_pipeline_free(sdunet_pipeline *pl)
{
    if (!pl)
        return;
    sdunet_free(pl->unet);
    sdunet_text_free(pl->text);
    sdunet_vae_free(pl->vae);
    sd_tensorfile_close(pl->file);
    sd_pool_destroy(pl->pool);
    free(pl);
}

void sdunet_pipeline_get_info(const sdunet_pipeline *pl, sdunet_pipeline_info *info)
{
    if (!info)
        return;
    memset(info, 0, sizeof *info);
    if (!pl)
        return;
    info->family = pl->sd2 ? "sd2" : "sd1";
    info->scheduler = pl->sched_name;
    info->prediction_type = pl->sched_cfg.prediction_type;
    info->default_width = info->default_height = pl->sample_size * pl->vae_factor;
    info->vae_factor = pl->vae_factor;
    info->model_name = pl->model_name;
    info->model_hash = pl->model_hash;
    info->threads = pl->threads;
    info->isa = pl->isa;
}

/* ---- generation ---- */

sdunet_status sdunet_pipeline_image_size(const sdunet_pipeline *pl, const sdunet_gen_params *p,
                                         int *width, int *height, sdunet_error *err)
{
    if (!pl || !p || !width || !height)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL argument");
    int W = p->width ? p->width : pl->sample_size * pl->vae_factor;
    int H = p->height ? p->height : pl->sample_size * pl->vae_factor;
    if (p->init_rgb && !p->width && !p->height)
        W = p->init_width, H = p->init_height;
    if (W < 8 || H < 8 || W > 8192 || H > 8192 || W % 8 || H % 8 || W % pl->vae_factor ||
        H % pl->vae_factor)
        return sd_fail(err, SDUNET_E_INVALID_ARG,
                       "image size %dx%d: width and height must be multiples of 8 (and of the "
                       "VAE's factor %d), 8..8192",
                       W, H, pl->vae_factor);
    *width = W;
    *height = H;
    return SDUNET_OK;
}

typedef struct noise_src {
    sdunet_rng_kind kind;
    sd_torch_rng torch;
    sdunet_rng fast;
} noise_src;

static void draw(noise_src *n, float *out, size_t count)
{
    if (n->kind == SDUNET_RNG_TORCH)
        sd_torch_randn(&n->torch, out, count);
    else
        sdunet_rng_normal(&n->fast, out, count);
}

static int report(const sdunet_gen_params *p, sdunet_phase ph, int done, int total)
{
    return p->progress ? p->progress(p->progress_user, ph, done, total) : 0;
}

/* Encodes one prompt to (1, len, D) with `len` >= its own length: extra
 * windows are the encoding of "" (as a batch pads shorter prompts). */
static sdunet_status encode_to(sdunet_text *t, const char *prompt, const sdunet_text_params *tp,
                               int len, int D, float *out, sdunet_error *err)
{
    int own;
    sdunet_status st = sdunet_text_context_len(t, &prompt, 1, tp, &own, err);
    if (st || (st = sdunet_text_encode(t, &prompt, 1, tp, out, own, err)))
        return st;
    if (own < len) {
        const char *empty = "";
        float *e = out + (size_t)own * D;
        if ((st = sdunet_text_encode(t, &empty, 1, tp, e, 77, err)))
            return st;
        for (int w = own + 77; w < len; w += 77)
            memcpy(out + (size_t)w * D, e, sizeof(float) * 77 * D);
    }
    return SDUNET_OK;
}

sdunet_status sdunet_generate(sdunet_pipeline *pl, const sdunet_gen_params *p, uint8_t *rgb,
                              float *image, sdunet_error *err)
{
    if (!pl || !p)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL argument");
    if (!p->prompt)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL prompt");
    if (p->steps < 1 || p->steps > 1000)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "steps %d outside 1..1000", p->steps);
    if (p->batch < 1 || p->batch > 64)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "batch %d outside 1..64", p->batch);
    if (!isfinite(p->guidance) || p->guidance < 0 || p->guidance > 100)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "guidance %g outside 0..100", p->guidance);
    if (p->rng != SDUNET_RNG_TORCH && p->rng != SDUNET_RNG_FAST)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "unknown generator %d", (int)p->rng);
    const int img2img = p->init_rgb != NULL;
    if (img2img && !(p->strength >= 0 && p->strength <= 1))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "strength %g outside 0..1", p->strength);
    int W, H;
    sdunet_status st = sdunet_pipeline_image_size(pl, p, &W, &H, err);
    if (st)
        return st;
    if (img2img && (p->init_width != W || p->init_height != H))
        return sd_fail(err, SDUNET_E_INVALID_ARG,
                       "init image is %dx%d but the output is %dx%d: give an init image of the "
                       "output size (sdunet does not resize)",
                       p->init_width, p->init_height, W, H);
    if (atomic_flag_test_and_set(&pl->busy))
        return sd_fail(err, SDUNET_E_BUSY, "pipeline is generating on another thread");

    const int B = p->batch, C = pl->latent_ch, h = H / pl->vae_factor, w = W / pl->vae_factor;
    const int D = pl->context_dim, cfg = p->guidance > 1.0;
    const size_t nlat = (size_t)B * C * h * w;
    float *ctx = NULL, *x = NULL, *xin = NULL, *out = NULL, *eps = NULL, *noise = NULL, *img = NULL,
          *init = NULL;
    sdunet_scheduler *sched = NULL;
    noise_src ns = {.kind = p->rng};
    if (p->rng == SDUNET_RNG_TORCH)
        sd_torch_rng_seed(&ns.torch, p->seed);
    else
        sdunet_rng_seed(&ns.fast, p->seed);

    /* 1. text: the prompt with clip skip, the negative prompt without (as
     * diffusers 0.25.1's encode_prompt), both to the longer length. */
    if (report(p, SDUNET_PHASE_TEXT, 0, 1)) {
        st = sd_fail(err, SDUNET_E_CANCELLED, "cancelled");
        goto done;
    }
    if ((st = need_text(pl, err)))
        goto done;
    sdunet_text_params tneg = p->text;
    tneg.clip_skip = 0;
    const char *neg = p->negative_prompt ? p->negative_prompt : "";
    int lp, ln = 0, L;
    if ((st = sdunet_text_context_len(pl->text, &p->prompt, 1, &p->text, &lp, err)) ||
        (cfg && (st = sdunet_text_context_len(pl->text, &neg, 1, &tneg, &ln, err))))
        goto done;
    L = lp > ln ? lp : ln;
    const int rows = cfg ? 2 * B : B;
    if (!(ctx = malloc(sizeof(float) * (size_t)rows * L * D))) {
        st = sd_fail(err, SDUNET_E_NOMEM, "out of memory");
        goto done;
    }
    /* rows: [negative x B, prompt x B] with guidance (diffusers' order) */
    float *pos = ctx + (cfg ? (size_t)B * L * D : 0);
    if ((st = encode_to(pl->text, p->prompt, &p->text, L, D, pos, err)) ||
        (cfg && (st = encode_to(pl->text, neg, &tneg, L, D, ctx, err))))
        goto done;
    for (int b = 1; b < B; b++) {
        memcpy(pos + (size_t)b * L * D, pos, sizeof(float) * L * D);
        if (cfg)
            memcpy(ctx + (size_t)b * L * D, ctx, sizeof(float) * L * D);
    }
    release_text(pl);
    if (report(p, SDUNET_PHASE_TEXT, 1, 1)) {
        st = sd_fail(err, SDUNET_E_CANCELLED, "cancelled");
        goto done;
    }

    /* 2. the scheduler, as from_config gives it */
    sdunet_sched_config sc = pl->sched_cfg;
    const char *sname = p->scheduler ? p->scheduler : pl->sched_name;
    if (p->scheduler && !pl->spacing_given)
        sc.timestep_spacing =
            class_spacing(strncmp(sname, "dpmpp_2m", 8) == 0 ? "dpmpp_2m" : sname);
    sc.eta = p->eta;
    if ((st = sdunet_sched_create(sname, &sc, &sched, err)) ||
        (st = sdunet_sched_set_timesteps(sched, p->steps, err)))
        goto done;
    const int calls = sdunet_sched_num_model_calls(sched);

    /* 3. the initial latents */
    x = malloc(sizeof(float) * nlat);
    xin = malloc(sizeof(float) * nlat * (cfg ? 2 : 1));
    out = malloc(sizeof(float) * nlat * (cfg ? 2 : 1));
    eps = malloc(sizeof(float) * nlat);
    noise = malloc(sizeof(float) * nlat);
    img = malloc(sizeof(float) * (size_t)B * 3 * H * W);
    if (!x || !xin || !out || !eps || !noise || !img) {
        st = sd_fail(err, SDUNET_E_NOMEM, "out of memory");
        goto done;
    }
    int i0 = 0;
    if (!img2img) {
        draw(&ns, x, nlat);
        const float sigma0 = (float)sdunet_sched_init_noise_sigma(sched);
        for (size_t k = 0; k < nlat; k++)
            x[k] *= sigma0;
    } else {
        /* diffusers' get_timesteps, then the VAE's posterior sample (its
         * draw comes first), the noise, add_noise at the first timestep */
        int init_t = (int)(p->steps * p->strength);
        if (init_t > p->steps)
            init_t = p->steps;
        i0 = p->steps - init_t;
        if (i0 >= calls) {
            st = sd_fail(err, SDUNET_E_INVALID_ARG,
                         "strength %g with %d steps runs no step: raise the strength or the steps",
                         p->strength, p->steps);
            goto done;
        }
        if (report(p, SDUNET_PHASE_ENCODE, 0, 1)) {
            st = sd_fail(err, SDUNET_E_CANCELLED, "cancelled");
            goto done;
        }
        const size_t n1 = (size_t)C * h * w;
        if (!(init = malloc(sizeof(float) * 3 * (size_t)H * W))) {
            st = sd_fail(err, SDUNET_E_NOMEM, "out of memory");
            goto done;
        }
        if ((st = sdunet_vae_rgb8_to_image(p->init_rgb, 1, H, W, init, err)))
            goto done;
        draw(&ns, noise, n1);
        if ((st = need_vae(pl, err)) ||
            (st = sdunet_vae_encode(pl->vae, init, 1, 3, H, W, noise, eps, NULL, NULL, err)))
            goto done;
        sd_vae_trim(pl->vae); /* its activations are not needed beside the UNet's */
        release_vae(pl);
        for (int b = 0; b < B; b++)
            memcpy(eps + (size_t)b * n1, eps, sizeof(float) * n1);
        draw(&ns, noise, nlat);
        if ((st = sdunet_sched_add_noise(sched, i0, eps, noise, nlat, x, err)))
            goto done;
        if (report(p, SDUNET_PHASE_ENCODE, 1, 1)) {
            st = sd_fail(err, SDUNET_E_CANCELLED, "cancelled");
            goto done;
        }
    }

    /* 4. the denoising loop */
    const int total = calls - i0;
    if (report(p, SDUNET_PHASE_DENOISE, 0, total)) {
        st = sd_fail(err, SDUNET_E_CANCELLED, "cancelled");
        goto done;
    }
    if ((st = need_unet(pl, err)))
        goto done;
    for (int i = i0; i < calls; i++) {
        if ((st = sdunet_sched_scale_model_input(sched, i, x, nlat, xin, err)))
            goto done;
        if (cfg)
            memcpy(xin + nlat, xin, sizeof(float) * nlat);
        float t = (float)sdunet_sched_timestep(sched, i);
        if ((st = sdunet_forward(pl->unet, xin, rows, C, h, w, &t, 1, ctx, L, D, out, err)))
            goto done;
        const float *e = out;
        if (cfg) {
            sdunet_cfg_combine(out, out + nlat, p->guidance, nlat, eps);
            e = eps;
        }
        const float *nz = NULL;
        if (sdunet_sched_step_needs_noise(sched, i)) {
            draw(&ns, noise, nlat);
            nz = noise;
        }
        if ((st = sdunet_sched_step(sched, i, e, x, nlat, nz, x, err)))
            goto done;
        if (report(p, SDUNET_PHASE_DENOISE, i - i0 + 1, total)) {
            st = sd_fail(err, SDUNET_E_CANCELLED, "cancelled");
            goto done;
        }
    }

    /* 5. the picture: the UNet's activations (with low_memory the whole
     * UNet) are not needed beside the VAE's */
    sd_model_trim(pl->unet);
    release_unet(pl);
    if (report(p, SDUNET_PHASE_DECODE, 0, 1)) {
        st = sd_fail(err, SDUNET_E_CANCELLED, "cancelled");
        goto done;
    }
    if ((st = need_vae(pl, err)) || (st = sdunet_vae_decode(pl->vae, x, B, C, h, w, img, err)))
        goto done;
    sd_vae_trim(pl->vae); /* nor the VAE's beside the next generation's UNet */
    release_vae(pl);
    if (rgb && (st = sdunet_vae_image_to_rgb8(img, B, H, W, rgb, err)))
        goto done;
    if (image) /* output_type="np": (x / 2 + 0.5).clamp(0, 1), NHWC */
        for (int b = 0; b < B; b++)
            for (int y = 0; y < H; y++)
                for (int xx = 0; xx < W; xx++)
                    for (int c = 0; c < 3; c++) {
                        float v = img[(((size_t)b * 3 + c) * H + y) * W + xx] / 2.0f + 0.5f;
                        v = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
                        image[(((size_t)b * H + y) * W + xx) * 3 + c] = v;
                    }
    report(p, SDUNET_PHASE_DECODE, 1, 1);
done:
    free(ctx);
    free(x);
    free(xin);
    free(out);
    free(eps);
    free(noise);
    free(img);
    free(init);
    sdunet_sched_free(sched);
    atomic_flag_clear(&pl->busy);
    return st;
}

/* ---- metadata ---- */

static const char *a1111_sampler(const char *name)
{
    static const struct {
        const char *ours, *theirs;
    } m[] = {{"ddim", "DDIM"},
             {"euler", "Euler"},
             {"euler_a", "Euler a"},
             {"dpmpp_2m", "DPM++ 2M"},
             {"dpmpp_2m_karras", "DPM++ 2M Karras"},
             {"pndm", "PLMS"},
             {"lms", "LMS"},
             {"unipc", "UniPC"}};
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
        if (strcmp(m[i].ours, name) == 0)
            return m[i].theirs;
    return name;
}

sdunet_status sdunet_pipeline_parameters_text(const sdunet_pipeline *pl, const sdunet_gen_params *p,
                                              char *buf, size_t len, sdunet_error *err)
{
    if (!pl || !p || !buf || len == 0)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL argument");
    int W, H;
    sdunet_status st = sdunet_pipeline_image_size(pl, p, &W, &H, err);
    if (st)
        return st;
    const char *neg = p->negative_prompt ? p->negative_prompt : "";
    size_t n = 0;
#define ADD(...)                                                                                   \
    do {                                                                                           \
        int k_ = snprintf(buf + n, len - n, __VA_ARGS__);                                          \
        n = k_ < 0 ? n : (n + (size_t)k_ < len ? n + (size_t)k_ : len - 1);                        \
    } while (0)
    ADD("%s", p->prompt ? p->prompt : "");
    if (*neg)
        ADD("\nNegative prompt: %s", neg);
    ADD("\nSteps: %d, Sampler: %s, CFG scale: %g, Seed: %llu, Size: %dx%d", p->steps,
        a1111_sampler(p->scheduler ? p->scheduler : pl->sched_name), p->guidance,
        (unsigned long long)p->seed, W, H);
    if (pl->model_hash[0])
        ADD(", Model hash: %s", pl->model_hash);
    ADD(", Model: %s", pl->model_name);
    if (p->init_rgb)
        ADD(", Denoising strength: %g", p->strength);
    if (p->text.clip_skip)
        ADD(", Clip skip: %d", p->text.clip_skip + 1);
    if (p->rng == SDUNET_RNG_FAST)
        ADD(", RNG: sdunet");
    if (p->eta != 0)
        ADD(", Eta: %g", p->eta);
    ADD(", Version: sdunet %d.%d.%d", SDUNET_VERSION_MAJOR, SDUNET_VERSION_MINOR,
        SDUNET_VERSION_PATCH);
#undef ADD
    return SDUNET_OK;
}
