/* The VAE's public object: finding the weights (file, single-file
 * checkpoint or diffusers folder) and the configuration, argument checks,
 * NCHW <-> channels-last at the boundary, the per-shape activation plans,
 * the posterior, tiled decoding and the 8-bit pixel conversions. */
#include "sdunet_vae.h"

#include "engine/pool.h"
#include "io/fileio.h"
#include "vae/vae.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define VAE_MAX_BATCH 1024
#define VAE_MAX_SIDE 16384 /* image pixels per side */

struct sdunet_vae {
    sd_vae vae;
    sd_runtime rt; /* kernels, 3x3 method, mode, pool, kernel scratch */
    int allow_nonfinite;
    int tiling;
    sd_vae_plan plan; /* for the last direction and shape; mem reused while it fits */
    size_t plan_cap;  /* floats allocated at plan.mem */
    float *io;        /* channels-last input and output staging */
    size_t io_cap;
    atomic_flag busy;
    sd_prof *prof; /* time profile by op kind, or NULL */
};

static sdunet_status vae_new(const sdunet_options *opt, sd_pool *shared, sdunet_vae **out,
                             sdunet_error *err)
{
    *out = NULL;
    sdunet_vae *m = calloc(1, sizeof *m);
    if (!m)
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    sdunet_status st = sd_runtime_from_options(&m->rt, opt, shared, err);
    if (st) {
        free(m);
        return st;
    }
    atomic_flag_clear(&m->busy);
    m->allow_nonfinite = opt && opt->allow_nonfinite;
    *out = m;
    return SDUNET_OK;
}

static sdunet_status vae_create(const sd_vae_config *cfg, const sd_weight_source *src,
                                const sd_vae_names *names, const sdunet_options *opt,
                                sdunet_vae **out, sdunet_error *err)
{
    sdunet_vae *m;
    sdunet_status st = vae_new(opt, src->pool, &m, err);
    if (st)
        return st;
    sd_weight_source s = *src;
    s.pool = m->rt.pool;
    if (opt && opt->weights != SDUNET_WEIGHTS_AUTO)
        s.weights = opt->weights;
    if ((st = sd_vae_build(&m->vae, cfg, &s, names, m->rt.kern, err))) {
        sdunet_vae_free(m);
        return st;
    }
    *out = m;
    return SDUNET_OK;
}

static sdunet_status vae_synthetic(const char *config, const sdunet_options *opt,
                                   const sd_share *sh, sdunet_vae **out, sdunet_error *err)
{
    if (!out)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL output pointer");
    *out = NULL;
    if (!config)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL config");
    sd_vae_config cfg;
    sdunet_status st = sd_vae_config_load(config, &cfg, err);
    if (st)
        return st;
    sd_weight_source src = {.pool = sh ? sh->pool : NULL};
    return vae_create(&cfg, &src, NULL, opt, out, err);
}

sdunet_status sdunet_vae_load_synthetic(const char *config, const sdunet_options *opt,
                                        sdunet_vae **out, sdunet_error *err)
{
    return vae_synthetic(config, opt, NULL, out, err);
}

/* ---- finding the files ---- */

typedef struct vae_files {
    char weights[4096];
    char beside[4096]; /* the folder's config.json, "" if none */
    int is_folder;
} vae_files;

/* DIR/vae/ (a pipeline) before DIR/ (the VAE's own folder); see
 * sd_find_model_weights. */
static sdunet_status find_in_folder(const char *dir, const char *variant, vae_files *f,
                                    sdunet_error *err)
{
    int r = sd_find_model_weights(dir, "vae", "diffusion_pytorch_model", variant, f->weights,
                                  sizeof f->weights, f->beside, sizeof f->beside);
    if (r < 0)
        return sd_fail(err, SDUNET_E_IO, "%s: path too long", dir);
    if (r == 0)
        return sd_fail(err, SDUNET_E_IO,
                       "%s: no VAE weights in this folder (looked for "
                       "diffusion_pytorch_model.%s%ssafetensors in %s/vae and %s)",
                       dir, variant ? variant : "", variant ? "." : "", dir, dir);
    return SDUNET_OK;
}

static sdunet_status vae_load(const char *path, const char *config_path, const sdunet_options *opt,
                              const sd_share *sh, sdunet_vae **out, sdunet_error *err)
{
    if (!out)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL output pointer");
    *out = NULL;
    if (!path || !*path)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL or empty weights path");
    const char *variant = opt && opt->variant && *opt->variant ? opt->variant : NULL;
    if (variant && !sd_valid_variant(variant))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "variant '%.64s' is not a plain name like fp16",
                       variant);
    vae_files *f = calloc(1, sizeof *f);
    if (!f)
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    sdunet_status st = SDUNET_OK;
    struct stat sb;
    sd_tensorfile *tf = NULL;
    if (stat(path, &sb) != 0) {
        st = sd_fail(err, SDUNET_E_IO, "%s: cannot open: %s", path, strerror(errno));
    } else if (S_ISDIR(sb.st_mode)) {
        f->is_folder = 1;
        st = find_in_folder(path, variant, f, err);
    } else if (variant) {
        st = sd_fail(err, SDUNET_E_INVALID_ARG,
                     "%s: a variant ('%s') picks a file in a diffusers folder; this is a file",
                     path, variant);
    } else if (strlen(path) >= sizeof f->weights) {
        st = sd_fail(err, SDUNET_E_IO, "%s: path too long", path);
    } else {
        snprintf(f->weights, sizeof f->weights, "%s", path);
        /* a config.json beside a file counts when it is an AutoencoderKL's
         * (a VAE folder's file given by path), not another model's */
        const char *slash = strrchr(path, '/');
        size_t dir = slash ? (size_t)(slash - path + 1) : 0;
        if (dir + sizeof "config.json" <= sizeof f->beside) {
            memcpy(f->beside, path, dir);
            memcpy(f->beside + dir, "config.json", sizeof "config.json");
            if (!sd_is_regular(f->beside))
                f->beside[0] = 0;
        }
    }
    if (!st)
        st = sd_share_open_file(sh, f->weights, &tf, err);
    sd_vae_names names;
    char what[256];
    if (!st) {
        sd_vae_detect(tf, &names, what, sizeof what);
        if (names.layout == SD_VAE_LAYOUT_NONE)
            st = sd_fail(err, SDUNET_E_WEIGHTS, "%s: %s", f->weights, what);
    }
    sd_vae_config cfg;
    if (!st) {
        int have = 0;
        if (config_path) {
            st = sd_vae_config_load(config_path, &cfg, err);
            have = 1;
        } else if (f->beside[0] && f->is_folder) {
            st = sd_vae_config_load(f->beside, &cfg, err);
            have = 1;
        } else if (f->beside[0]) {
            st = sd_vae_config_load_beside(f->beside, &cfg, &have, err);
        }
        if (!st && !have) {
            st = sd_vae_config_infer(tf, &names, &cfg, err);
            if (st)
                sd_err_prefix(err, f->weights);
        }
    }
    if (!st) {
        sd_weight_source src = {.file = tf, .pool = sh ? sh->pool : NULL};
        st = vae_create(&cfg, &src, &names, opt, out, err);
        if (st && st != SDUNET_E_NOMEM)
            sd_err_prefix(err, f->weights);
    }
    sd_tensorfile_close(tf);
    free(f);
    return st;
}

sdunet_status sdunet_vae_load(const char *path, const char *config_path, const sdunet_options *opt,
                              sdunet_vae **out, sdunet_error *err)
{
    return vae_load(path, config_path, opt, NULL, out, err);
}

sdunet_status sd_vae_open(const char *path, const char *config, int synthetic,
                          const sdunet_options *opt, const sd_share *sh, sdunet_vae **out,
                          sdunet_error *err)
{
    return synthetic ? vae_synthetic(config, opt, sh, out, err)
                     : vae_load(path, config, opt, sh, out, err);
}

/* ---- running ---- */

sdunet_status sdunet_vae_set_threads(sdunet_vae *m, int threads, sdunet_error *err)
{
    if (!m)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL VAE");
    if (atomic_flag_test_and_set(&m->busy))
        return sd_fail(err, SDUNET_E_BUSY, "the VAE is running on another thread");
    sdunet_status st = sd_pool_resize(&m->rt.pool, &m->rt.threads, threads, err);
    atomic_flag_clear(&m->busy);
    return st;
}

sdunet_status sdunet_vae_set_tiling(sdunet_vae *m, int enable, sdunet_error *err)
{
    if (!m)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL VAE");
    if (atomic_flag_test_and_set(&m->busy))
        return sd_fail(err, SDUNET_E_BUSY, "the VAE is running on another thread");
    m->tiling = enable != 0;
    atomic_flag_clear(&m->busy);
    return SDUNET_OK;
}

void sdunet_vae_get_info(const sdunet_vae *m, sdunet_vae_info *info)
{
    if (!info)
        return;
    memset(info, 0, sizeof *info);
    if (!m)
        return;
    const sd_vae_config *c = &m->vae.cfg;
    info->in_channels = c->in_channels;
    info->out_channels = c->out_channels;
    info->latent_channels = c->latent_channels;
    info->factor = sd_vae_factor(c);
    info->scaling_factor = c->scaling_factor;
    info->n_params = m->vae.n_params;
    info->threads = m->rt.threads;
    info->isa = m->rt.kern->name;
}

void sdunet_vae_latent_size(const sdunet_vae *m, int height, int width, int *lh, int *lw)
{
    int h = height, w = width;
    if (m)
        for (int i = 1; i < m->vae.cfg.n_levels; i++) {
            h = h >= 2 ? (h - 2) / 2 + 1 : 0;
            w = w >= 2 ? (w - 2) / 2 + 1 : 0;
        }
    if (lh)
        *lh = m ? h : 0;
    if (lw)
        *lw = m ? w : 0;
}

void sdunet_vae_free(sdunet_vae *m)
{
    if (!m)
        return;
    sd_vae_release(&m->vae);
    sd_vae_plan_free(&m->plan);
    sd_free(m->io);
    sd_runtime_free(&m->rt);
    free(m);
}

void sd_vae_set_profile(sdunet_vae *m, sd_prof *prof)
{
    if (m)
        m->prof = prof;
}

void sd_vae_trim(sdunet_vae *m)
{
    if (!m || atomic_flag_test_and_set(&m->busy))
        return;
    sd_vae_plan_free(&m->plan);
    m->plan_cap = 0;
    sd_free(m->io);
    m->io = NULL;
    m->io_cap = 0;
    sd_workspace_free(&m->rt.ws);
    atomic_flag_clear(&m->busy);
}

/* The plan for (direction, shape): made by a dry run when the shape
 * changes; its memory is kept and reused while it is large enough. */
static sdunet_status get_plan(sdunet_vae *m, int decode, int B, int H, int W, sdunet_error *err)
{
    sd_vae_plan *p = &m->plan;
    if (p->mem && p->decode == decode && p->B == B && p->H == H && p->W == W)
        return SDUNET_OK;
    float *mem = p->mem;
    sd_vae_plan_make(&m->vae, decode, B, H, W, p);
    size_t need = 2 * p->hidden_floats + p->scratch_floats;
    if (mem && need <= m->plan_cap) {
        p->mem = mem;
        p->hidden[0] = mem;
        p->hidden[1] = mem + p->hidden_floats;
        p->scratch = mem + 2 * p->hidden_floats;
        return SDUNET_OK;
    }
    sd_free(mem);
    m->plan_cap = 0;
    sdunet_status st = sd_vae_plan_alloc(p, err);
    if (!st)
        m->plan_cap = need;
    return st;
}

static float *get_io(sdunet_vae *m, size_t n, sdunet_error *err)
{
    if (n > m->io_cap) {
        sd_free(m->io);
        m->io_cap = 0;
        if (!(m->io = sd_alloc(n * sizeof(float)))) {
            sd_fail(err, SDUNET_E_NOMEM, "out of memory");
            return NULL;
        }
        m->io_cap = n;
    }
    return m->io;
}

static sdunet_status fault_status(int fault, sdunet_error *err)
{
    if (!fault)
        return SDUNET_OK;
    return sd_fail(err, SDUNET_E_INTERNAL,
                   "internal error: packed weights do not match the kernel call (a library bug; "
                   "please report it)");
}

/* NCHW (B, C, HW) <-> channels-last (B, HW, C), with y = x * mul + add on the way in. */
static void to_nhwc(const float *x, int B, int C, size_t HW, float *y)
{
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (size_t p = 0; p < HW; p++)
                y[((size_t)b * HW + p) * C + c] = x[((size_t)b * C + c) * HW + p];
}

static void to_nchw(const float *x, int B, int C, size_t HW, float *y)
{
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (size_t p = 0; p < HW; p++)
                y[((size_t)b * C + c) * HW + p] = x[((size_t)b * HW + p) * C + c];
}

/* One untiled decode of latent rows/cols [y0, y0+h) x [x0, x0+w) of the
 * full (B, C, H, W) latent into image (B, out, h*f, w*f) NCHW. */
static sdunet_status decode_region(sdunet_vae *m, const float *latent, int B, int H, int W, int y0,
                                   int x0, int h, int w, float *image, sdunet_error *err)
{
    const sd_vae_config *c = &m->vae.cfg;
    const int lc = c->latent_channels, oc = c->out_channels, f = sd_vae_factor(c);
    const size_t hw = (size_t)h * w, ohw = hw * f * f;
    const size_t n_in = (size_t)B * lc * hw, n_out = (size_t)B * oc * ohw;
    sdunet_status st = get_plan(m, 1, B, h, w, err);
    if (st)
        return st;
    float *z = get_io(m, n_in + n_out, err);
    if (!z)
        return SDUNET_E_NOMEM;
    float *y = z + n_in;
    const float sf = c->scaling_factor, shift = c->shift_factor;
    for (int b = 0; b < B; b++)
        for (int ch = 0; ch < lc; ch++)
            for (int i = 0; i < h; i++)
                for (int j = 0; j < w; j++) {
                    float v = latent[(((size_t)b * lc + ch) * H + y0 + i) * W + x0 + j] / sf;
                    if (shift != 0)
                        v += shift;
                    z[(((size_t)b * h + i) * w + j) * lc + ch] = v;
                }
    int fault = 0;
    sd_exec ex = sd_runtime_exec(&m->rt, &fault);
    sd_vae_decode_run(&m->vae, &ex, &m->plan, z, y, NULL, NULL, m->prof);
    if ((st = fault_status(fault, err)))
        return st;
    to_nchw(y, B, oc, ohw, image);
    return SDUNET_OK;
}

/* diffusers' blend_v / blend_h in float32: b's first e rows (columns) move
 * linearly from a's last e rows (columns) to b's own. */
static void blend_rows(const float *a, int ah, float *b, int bh, int w, int extent)
{
    int e = extent < ah ? extent : ah;
    e = e < bh ? e : bh;
    for (int y = 0; y < e; y++) {
        const float wa = (float)(1.0 - (double)y / e), wb = (float)((double)y / e);
        const float *ar = a + (size_t)(ah - e + y) * w;
        float *br = b + (size_t)y * w;
        for (int x = 0; x < w; x++)
            br[x] = ar[x] * wa + br[x] * wb;
    }
}

static void blend_cols(const float *a, int aw, float *b, int bw, int h, int extent)
{
    int e = extent < aw ? extent : aw;
    e = e < bw ? e : bw;
    for (int x = 0; x < e; x++) {
        const float wa = (float)(1.0 - (double)x / e), wb = (float)((double)x / e);
        for (int y = 0; y < h; y++)
            b[(size_t)y * bw + x] =
                a[(size_t)y * aw + aw - e + x] * wa + b[(size_t)y * bw + x] * wb;
    }
}

/* diffusers' AutoencoderKL.tiled_decode: tiles of T = sample_size / f
 * latent pixels every floor(T * 0.75), each decoded alone, blended over
 * floor(sample_size * 0.25) pixels with the tile above and to the left, and
 * cropped to sample_size - blend pixels. */
static sdunet_status decode_tiled(sdunet_vae *m, const float *latent, int B, int H, int W,
                                  float *image, sdunet_error *err)
{
    const sd_vae_config *c = &m->vae.cfg;
    const int f = sd_vae_factor(c), oc = c->out_channels;
    const int T = (int)((double)c->sample_size / f), TS = c->sample_size;
    const int step = (int)(T * (1 - 0.25)), blend = (int)(TS * 0.25), limit = TS - blend;
    if (T < 1 || step < 1)
        return sd_fail(err, SDUNET_E_UNSUPPORTED, "tiled decoding: tile too small");
    const int nr = (H + step - 1) / step, nc = (W + step - 1) / step;
    float **tiles = calloc((size_t)nr * nc, sizeof *tiles);
    if (!tiles)
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    sdunet_status st = SDUNET_OK;
    /* Row by row: decode the row's tiles, blend each with its already
     * blended neighbours above and to the left (diffusers' order), crop and
     * place; only the row above is kept. */
    const size_t OH = (size_t)H * f, OW = (size_t)W * f;
    size_t oy = 0;
    for (int i = 0; i < nr && !st; i++) {
        for (int j = 0; j < nc && !st; j++) {
            int y0 = i * step, x0 = j * step;
            int h = H - y0 < T ? H - y0 : T, w = W - x0 < T ? W - x0 : T;
            size_t n = (size_t)B * oc * h * f * w * f;
            float *t = tiles[i * nc + j] = sd_alloc(n * sizeof(float));
            if (!t)
                st = sd_fail(err, SDUNET_E_NOMEM, "out of memory");
            else
                st = decode_region(m, latent, B, H, W, y0, x0, h, w, t, err);
        }
        if (st)
            break;
        int th = (H - i * step < T ? H - i * step : T) * f;
        size_t ox = 0;
        for (int j = 0; j < nc; j++) {
            int tw = (W - j * step < T ? W - j * step : T) * f;
            float *t = tiles[i * nc + j];
            for (int p = 0; p < B * oc; p++) {
                float *tp = t + (size_t)p * th * tw;
                if (i > 0) {
                    int ah = (H - (i - 1) * step < T ? H - (i - 1) * step : T) * f;
                    blend_rows(tiles[(i - 1) * nc + j] + (size_t)p * ah * tw, ah, tp, th, tw,
                               blend);
                }
                if (j > 0) {
                    int aw = (W - (j - 1) * step < T ? W - (j - 1) * step : T) * f;
                    blend_cols(tiles[i * nc + j - 1] + (size_t)p * th * aw, aw, tp, tw, th, blend);
                }
            }
            int ch = th < limit ? th : limit, cw = tw < limit ? tw : limit;
            if (oy + ch > OH || ox + cw > OW) {
                st = sd_fail(err, SDUNET_E_UNSUPPORTED,
                             "tiled decoding: tiles do not cover the image exactly");
                break;
            }
            for (int p = 0; p < B * oc; p++)
                for (int y = 0; y < ch; y++)
                    memcpy(image + ((size_t)p * OH + oy + y) * OW + ox,
                           t + ((size_t)p * th + y) * tw, (size_t)cw * sizeof(float));
            ox += (size_t)cw;
            if (j == nc - 1 && ox != OW)
                st = sd_fail(err, SDUNET_E_UNSUPPORTED,
                             "tiled decoding: tiles do not cover the image exactly");
        }
        oy += (size_t)(th < limit ? th : limit);
        if (!st && i == nr - 1 && oy != OH)
            st = sd_fail(err, SDUNET_E_UNSUPPORTED,
                         "tiled decoding: tiles do not cover the image exactly");
        for (int j = 0; i > 0 && j < nc; j++) {
            sd_free(tiles[(i - 1) * nc + j]);
            tiles[(i - 1) * nc + j] = NULL;
        }
    }
    for (int k = 0; k < nr * nc; k++)
        sd_free(tiles[k]);
    free(tiles);
    return st;
}

static sdunet_status check_batch_side(int batch, int height, int width, int max_side,
                                      sdunet_error *err)
{
    if (batch < 1 || batch > VAE_MAX_BATCH)
        return sd_fail(err, SDUNET_E_SHAPE, "batch %d out of range 1..%d", batch, VAE_MAX_BATCH);
    if (height < 1 || width < 1 || height > max_side || width > max_side)
        return sd_fail(err, SDUNET_E_SHAPE, "size %dx%d out of range 1..%d", height, width,
                       max_side);
    return SDUNET_OK;
}

sdunet_status sdunet_vae_decode(sdunet_vae *m, const float *latent, int batch, int channels,
                                int height, int width, float *image, sdunet_error *err)
{
    if (!m || !latent || !image)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL %s",
                       !m        ? "VAE"
                       : !latent ? "latent"
                                 : "image");
    const sd_vae_config *c = &m->vae.cfg;
    const int f = sd_vae_factor(c);
    sdunet_status st = check_batch_side(batch, height, width, VAE_MAX_SIDE / f, err);
    if (st)
        return st;
    if (channels != c->latent_channels)
        return sd_fail(err, SDUNET_E_SHAPE, "latent has %d channels; the VAE takes %d", channels,
                       c->latent_channels);
    if ((size_t)batch * height * f * width * f > INT_MAX)
        return sd_fail(err, SDUNET_E_SHAPE,
                       "batch %d of %dx%d images is more pixels than supported", batch, height * f,
                       width * f);
    size_t hw = (size_t)height * width, n_in = (size_t)batch * channels * hw;
    size_t n_out = (size_t)batch * c->out_channels * hw * f * f;
    if (sd_overlaps(image, n_out * 4, latent, n_in * 4))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "image buffer overlaps the latent");
    if (!m->allow_nonfinite && !sd_all_finite(latent, n_in))
        return sd_fail(err, SDUNET_E_NONFINITE, "latent contains NaN or Inf");
    if (!m->vae.has_weights)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "VAE has no weights");
    if (atomic_flag_test_and_set(&m->busy))
        return sd_fail(err, SDUNET_E_BUSY, "the VAE is running on another thread");
    const int T = (int)((double)c->sample_size / f);
    if (m->tiling && (height > T || width > T))
        st = decode_tiled(m, latent, batch, height, width, image, err);
    else
        st = decode_region(m, latent, batch, height, width, 0, 0, height, width, image, err);
    atomic_flag_clear(&m->busy);
    return st;
}

sdunet_status sdunet_vae_encode(sdunet_vae *m, const float *image, int batch, int channels,
                                int height, int width, const float *noise, float *latent,
                                float *mean, float *logvar, sdunet_error *err)
{
    if (!m || !image)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL %s", !m ? "VAE" : "image");
    if (!latent && !mean && !logvar)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "no output (latent, mean and logvar all NULL)");
    const sd_vae_config *c = &m->vae.cfg;
    const int f = sd_vae_factor(c), L = c->latent_channels;
    sdunet_status st = check_batch_side(batch, height, width, VAE_MAX_SIDE, err);
    if (st)
        return st;
    if (channels != c->in_channels)
        return sd_fail(err, SDUNET_E_SHAPE, "image has %d channels; the VAE takes %d", channels,
                       c->in_channels);
    if (height < f || width < f)
        return sd_fail(err, SDUNET_E_SHAPE, "image %dx%d smaller than the VAE's factor %d", height,
                       width, f);
    if ((size_t)batch * height * width > INT_MAX)
        return sd_fail(err, SDUNET_E_SHAPE,
                       "batch %d of %dx%d images is more pixels than supported", batch, height,
                       width);
    int lh, lw;
    sdunet_vae_latent_size(m, height, width, &lh, &lw);
    size_t hw = (size_t)height * width, n_in = (size_t)batch * channels * hw;
    size_t lhw = (size_t)lh * lw, n_lat = (size_t)batch * L * lhw;
    float *outs[3] = {latent, mean, logvar};
    for (int i = 0; i < 3; i++) {
        if (sd_overlaps(outs[i], n_lat * 4, image, n_in * 4) ||
            sd_overlaps(outs[i], n_lat * 4, noise, noise ? n_lat * 4 : 0))
            return sd_fail(err, SDUNET_E_INVALID_ARG, "an output buffer overlaps an input");
        for (int k = 0; k < i; k++)
            if (sd_overlaps(outs[i], n_lat * 4, outs[k], n_lat * 4))
                return sd_fail(err, SDUNET_E_INVALID_ARG, "output buffers overlap");
    }
    if (!m->allow_nonfinite) {
        if (!sd_all_finite(image, n_in))
            return sd_fail(err, SDUNET_E_NONFINITE, "image contains NaN or Inf");
        if (noise && !sd_all_finite(noise, n_lat))
            return sd_fail(err, SDUNET_E_NONFINITE, "noise contains NaN or Inf");
    }
    if (!m->vae.has_weights)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "VAE has no weights");
    if (atomic_flag_test_and_set(&m->busy))
        return sd_fail(err, SDUNET_E_BUSY, "the VAE is running on another thread");
    st = get_plan(m, 0, batch, height, width, err);
    float *x = NULL;
    if (!st && !(x = get_io(m, n_in + 2 * n_lat, err)))
        st = SDUNET_E_NOMEM;
    if (!st) {
        float *mo = x + n_in;
        to_nhwc(image, batch, channels, hw, x);
        int fault = 0;
        sd_exec ex = sd_runtime_exec(&m->rt, &fault);
        sd_vae_encode_run(&m->vae, &ex, &m->plan, x, mo, NULL, NULL, m->prof);
        st = fault_status(fault, err);
        const float sf = c->scaling_factor, shift = c->shift_factor;
        for (int b = 0; !st && b < batch; b++)
            for (int ch = 0; ch < L; ch++)
                for (size_t p = 0; p < lhw; p++) {
                    const float *row = mo + ((size_t)b * lhw + p) * 2 * L;
                    float mu = row[ch], lv = row[L + ch];
                    lv = lv < -30.0f ? -30.0f : lv > 20.0f ? 20.0f : lv; /* NaN stays NaN */
                    size_t o = ((size_t)b * L + ch) * lhw + p;
                    if (mean)
                        mean[o] = mu;
                    if (logvar)
                        logvar[o] = lv;
                    if (latent) {
                        float z = mu;
                        if (noise) {
                            float sd = expf(0.5f * lv);
                            float dz = sd * noise[o];
                            z = mu + dz;
                        }
                        if (shift != 0)
                            z -= shift;
                        latent[o] = z * sf;
                    }
                }
    }
    atomic_flag_clear(&m->busy);
    return st;
}

/* ---- 8-bit pixels ---- */

sdunet_status sdunet_vae_image_to_rgb8(const float *image, int batch, int height, int width,
                                       uint8_t *rgb, sdunet_error *err)
{
    if (!image || !rgb)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL %s", !image ? "image" : "rgb");
    sdunet_status st = check_batch_side(batch, height, width, VAE_MAX_SIDE, err);
    if (st)
        return st;
    const size_t hw = (size_t)height * width;
    for (int b = 0; b < batch; b++)
        for (int c = 0; c < 3; c++)
            for (size_t p = 0; p < hw; p++) {
                /* a float32 pipeline's denormalize: x / 2 + 0.5 in float32,
                 * clamped, * 255 in float32, rounded half to even */
                float v = image[((size_t)b * 3 + c) * hw + p] / 2.0f + 0.5f;
                v = v < 0 ? 0 : v > 1 ? 1 : v;
                float q = v * 255.0f;
                rgb[((size_t)b * hw + p) * 3 + c] = v == v ? (uint8_t)rintf(q) : 0;
            }
    return SDUNET_OK;
}

sdunet_status sdunet_vae_rgb8_to_image(const uint8_t *rgb, int batch, int height, int width,
                                       float *image, sdunet_error *err)
{
    if (!image || !rgb)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL %s", !image ? "image" : "rgb");
    sdunet_status st = check_batch_side(batch, height, width, VAE_MAX_SIDE, err);
    if (st)
        return st;
    const size_t hw = (size_t)height * width;
    for (int b = 0; b < batch; b++)
        for (int c = 0; c < 3; c++)
            for (size_t p = 0; p < hw; p++) {
                float v = (float)rgb[((size_t)b * hw + p) * 3 + c] / 255.0f;
                v = 2.0f * v - 1.0f;
                image[((size_t)b * 3 + c) * hw + p] = v;
            }
    return SDUNET_OK;
}
