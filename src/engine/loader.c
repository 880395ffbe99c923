/* The loader behind every model's build: fetches tensors by reference name
 * (from a file through the model's name map, or from the synthetic
 * generator), checks their shapes and packs them for the kernels (weight
 * panels in float32, float16 or bfloat16; everything else in float32). Missing and mismatched
 * tensors are collected so one error lists them all. Once a tensor is packed its file pages are
 * released, so a large file is not held in memory beside the model. */
#include "engine/layers.h"
#include "engine/synth.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sd_loader_init(sd_loader *ld, const sd_weight_source *src, const sd_kernels *kern,
                    sdunet_error *err)
{
    memset(ld, 0, sizeof *ld);
    ld->src = src;
    ld->kern = kern;
    ld->err = err;
}

sdunet_status sd_loader_finish(sd_loader *ld)
{
    sd_free(ld->scratch);
    ld->scratch = NULL;
    ld->scratch_cap = 0;
    if (ld->fatal)
        return ld->fatal;
    if (ld->n_bad)
        return sd_fail(ld->err, SDUNET_E_WEIGHTS, "%d tensor%s missing or mismatched: %s%s",
                       ld->n_bad, ld->n_bad == 1 ? "" : "s", ld->bad,
                       strlen(ld->bad) + 80 >= sizeof ld->bad ? "; ..." : "");
    return SDUNET_OK;
}

static void note_bad(sd_loader *ld, const char *fmt, ...) SD_PRINTF(2, 3);
static void note_bad(sd_loader *ld, const char *fmt, ...)
{
    ld->n_bad++;
    size_t used = strlen(ld->bad);
    if (used + 80 >= sizeof ld->bad)
        return;
    if (used)
        ld->bad[used++] = ';', ld->bad[used++] = ' ', ld->bad[used] = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ld->bad + used, sizeof ld->bad - used, fmt, ap);
    va_end(ap);
}

static float *scratch(sd_loader *ld, size_t n)
{
    if (ld->fatal)
        return NULL;
    if (n > ld->scratch_cap) {
        sd_free(ld->scratch);
        ld->scratch = sd_alloc(n * sizeof(float));
        ld->scratch_cap = ld->scratch ? n : 0;
        if (!ld->scratch) {
            ld->fatal = sd_fail(ld->err, SDUNET_E_NOMEM, "out of memory loading weights");
            return NULL;
        }
    }
    return ld->scratch;
}

static void zero(const sd_loader *ld, float *dst, size_t n)
{
    if (!ld->src->check_only)
        memset(dst, 0, n * sizeof(float));
}

static void shape_text(char *buf, size_t len, int ndim, const int64_t *shape)
{
    buf[0] = 0;
    for (int i = 0; i < ndim; i++)
        snprintf(buf + strlen(buf), len - strlen(buf), "%s%lld", i ? "," : "", (long long)shape[i]);
}

/* Finds file tensor `name` (a diffusers name) and checks its shape. On a
 * missing or mismatched tensor, records it and returns NULL. Counts the
 * parameters and calls visit either way. */
static const sd_tensor_info *lookup(sd_loader *ld, const char *name, int ndim, const int64_t *shape)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    ld->n_params += (int64_t)n;
    if (ld->src->visit)
        ld->src->visit(ld->src->visit_user, name, ndim, shape);
    if (!ld->src->file)
        return NULL;
    char mapped[256];
    const char *look = name;
    if (ld->src->map_name) {
        if (!ld->src->map_name(ld->src->map_user, name, mapped, sizeof mapped)) {
            note_bad(ld, "no file name for %s", name);
            return NULL;
        }
        look = mapped;
    } else if (ld->map) {
        if (!ld->map(ld->map_user, name, mapped, sizeof mapped)) {
            note_bad(ld, "no file name for %s", name);
            return NULL;
        }
        look = mapped;
    }
    const sd_tensor_info *t = sd_tensorfile_find(ld->src->file, look);
    if (!t) {
        /* Name both sides: the file's name to look for in the file, the
         * reference name to look for in the model. */
        if (look != name)
            note_bad(ld, "missing %s (model name %s)", look, name);
        else
            note_bad(ld, "missing %s", look);
        return NULL;
    }
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == shape[i];
    if (!ok) {
        char want[96], got[96];
        shape_text(want, sizeof want, ndim, shape);
        shape_text(got, sizeof got, t->ndim, t->shape);
        note_bad(ld, "%s has shape (%s), expected (%s)", look, got, want);
        return NULL;
    }
    return t;
}

/* Fetches tensor `name` of the given shape into dst (numel floats). On a
 * missing or mismatched tensor, records it and fills dst with zeros. */
/* Synthetic tensor `name` into dst, rounded as src->synth_round says. */
static void synth(sd_loader *ld, const char *name, int ndim, const int64_t *shape, float *dst)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    sd_synth_weight_pool(name, ndim, shape, dst, ld->src->pool);
    if (ld->src->synth_round == SD_DT_F16)
        for (size_t i = 0; i < n; i++)
            dst[i] = sd_f16_to_f32(sd_f32_to_f16(dst[i]));
    else if (ld->src->synth_round == SD_DT_BF16)
        for (size_t i = 0; i < n; i++)
            dst[i] = sd_bf16_to_f32(sd_f32_to_bf16(dst[i]));
}

static void fetch(sd_loader *ld, const char *name, int ndim, const int64_t *shape, float *dst)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    if (!ld->src->file) {
        lookup(ld, name, ndim, shape);
        if (!ld->src->check_only)
            synth(ld, name, ndim, shape, dst);
        return;
    }
    const sd_tensor_info *t = lookup(ld, name, ndim, shape);
    if (!t) {
        zero(ld, dst, n);
        return;
    }
    if (ld->src->check_only)
        return;
    sdunet_error e;
    if (sd_tensor_to_f32(t, dst, &e) != SDUNET_OK) {
        note_bad(ld, "%s: %s", t->name, e.message);
        zero(ld, dst, n);
        return;
    }
    sd_tensorfile_release(ld->src->file, t);
}

/* A float32 file tensor the packer can read in place (no conversion, no
 * copy): little-endian host, 4-byte aligned data. */
static int usable_in_place(const sd_tensor_info *t)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return t->dtype == SD_DT_F32 && ((uintptr_t)t->data & 3) == 0;
#else
    (void)t;
    return 0;
#endif
}

void sd_load_norm(sd_loader *ld, sd_norm *g, const char *prefix, int C)
{
    char name[256];
    snprintf(name, sizeof name, "%s.weight", prefix);
    int64_t shape[1] = {C};
    g->gamma = sd_load_tensor(ld, name, 1, shape);
    snprintf(name, sizeof name, "%s.bias", prefix);
    g->beta = sd_load_tensor(ld, name, 1, shape);
}

/* The panel storage type a file tensor of dtype dt keeps by default. */
static int keep_type(sd_dtype dt)
{
    return dt == SD_DT_F16 ? SD_WT_F16 : dt == SD_DT_BF16 ? SD_WT_BF16 : SD_WT_F32;
}

/* Loads one or more weight tensors stacked along the output axis into one
 * packed matrix (fusing q|k|v). prefixes[i] names each part; all parts have
 * N_part outputs. Bias only when with_bias. SD_LIN_GEGLU: a Linear whose 2F
 * outputs are [hidden | gate] of a GEGLU, packed for sd_gemm_geglu when F
 * allows (sd_pack_geglu), else as a Linear.
 *
 * File tensors that are all float16, all bfloat16 or all aligned float32
 * are packed straight from the file mapping: no copy of the largest
 * tensors (118 MB for SD1.5's widest conv in float32), none of a 16-bit
 * model in float32. Other dtypes go through a float32 scratch of this one
 * layer. The panels keep the file's precision (float16 and bfloat16 as
 * they are, anything else float32) unless src->weights forces a type. */
void sd_load_lin_multi(sd_loader *ld, sd_lin *l, const char *const *prefixes, int parts, int N_part,
                       int Cin, sd_lin_kind kind, int with_bias)
{
    int taps = kind == SD_LIN_CONV3 ? 9 : 1;
    size_t part = (size_t)N_part * (size_t)Cin * (size_t)taps;
    char name[256];
    int64_t shape[4] = {N_part, Cin, kind == SD_LIN_CONV3 ? 3 : 1, kind == SD_LIN_CONV3 ? 3 : 1};
    const int ndim = kind == SD_LIN_LINEAR || kind == SD_LIN_GEGLU ? 2 : 4;
    if (parts < 1 || parts > SD_WSRC_PARTS) {
        if (!ld->fatal)
            ld->fatal =
                sd_fail(ld->err, SDUNET_E_INTERNAL, "internal error: %d stacked layers", parts);
        return;
    }
    const sd_tensor_info *t[SD_WSRC_PARTS] = {0};
    const int file = ld->src->file != NULL;
    /* Which precision the panels keep, and whether the mapping can be
     * packed from as it is (all parts found, one dtype, readable in place). */
    int keep = -1, in_place = file;
    for (int p = 0; p < parts; p++) {
        snprintf(name, sizeof name, "%s.weight", prefixes[p]);
        t[p] = lookup(ld, name, ndim, shape);
        if (!t[p]) {
            in_place = 0;
            continue;
        }
        const int k = keep_type(t[p]->dtype);
        keep = keep < 0 || keep == k ? k : SD_WT_F32;
        /* (t[0] is NULL when the first part is missing: in_place is 0 then) */
        if (in_place)
            in_place =
                (p == 0 || t[p]->dtype == t[0]->dtype) &&
                (t[p]->dtype == SD_DT_F16 || t[p]->dtype == SD_DT_BF16 || usable_in_place(t[p]));
    }
    const sdunet_weights force = ld->src->weights;
    const int store = force >= SDUNET_WEIGHTS_F32 && force <= SDUNET_WEIGHTS_BF16 ? (int)force - 1
                      : keep >= 0                                                 ? keep
                                                                                  : SD_WT_F32;
    const int N = N_part * parts;
    const size_t K = (size_t)Cin * (size_t)taps;
    size_t bytes = sd_packed_bytes(N, K, ld->kern ? ld->kern->nr : 16, store);
    if (!sd_add_size(ld->packed_bytes[store], bytes, &ld->packed_bytes[store]))
        ld->packed_bytes[store] = SIZE_MAX;

    sd_wsrc w = {.type = SD_WT_F32, .parts = parts, .rows = N_part};
    float *conv = NULL;
    if (!ld->src->check_only && !ld->fatal && in_place) {
        w.type = keep_type(t[0]->dtype);
        for (int p = 0; p < parts; p++)
            w.part[p] = t[p]->data;
    } else if (!ld->src->check_only && !ld->fatal && (!file || !ld->n_bad)) {
        /* Synthetic weights, or file tensors converted to float32. */
        if (!(conv = scratch(ld, part * (size_t)parts)))
            return;
        for (int p = 0; p < parts; p++) {
            float *dst = conv + part * (size_t)p;
            w.part[p] = dst;
            if (!file) {
                snprintf(name, sizeof name, "%s.weight", prefixes[p]);
                synth(ld, name, ndim, shape, dst);
                continue;
            }
            sdunet_error e;
            if (t[p] && sd_tensor_to_f32(t[p], dst, &e) != SDUNET_OK) {
                note_bad(ld, "%s: %s", t[p]->name, e.message);
                zero(ld, dst, part);
            }
            if (t[p])
                sd_tensorfile_release(ld->src->file, t[p]);
        }
    }
    if (with_bias) {
        l->b = sd_alloc((size_t)N_part * (size_t)parts * sizeof(float));
        if (!l->b) {
            if (!ld->fatal)
                ld->fatal = sd_fail(ld->err, SDUNET_E_NOMEM, "out of memory loading weights");
            return;
        }
        for (int p = 0; p < parts; p++) {
            snprintf(name, sizeof name, "%s.bias", prefixes[p]);
            int64_t bshape[1] = {N_part};
            fetch(ld, name, 1, bshape, l->b + (size_t)N_part * p);
        }
    }
    /* Once a tensor is missing the build fails: packing more is wasted. */
    if (ld->fatal || ld->src->check_only || ld->n_bad || !w.part[0])
        return;
    sdunet_status st = SDUNET_E_INVALID_ARG;
    /* sd_pack_src refuses a GEGLU interleave (INVALID_ARG) unless N/2 is
     * whole panels; then the layer is packed as a plain Linear */
    if (kind == SD_LIN_GEGLU && N % 2 == 0 && !ld->src->geglu_unfused)
        st = sd_pack_src(ld->kern, &w, N, Cin, taps, N / 2, store, &l->w);
    if (st == SDUNET_E_INVALID_ARG)
        st = sd_pack_src(ld->kern, &w, N, Cin, taps, 0, store, &l->w);
    if (st != SDUNET_OK)
        ld->fatal = sd_fail(ld->err, SDUNET_E_NOMEM, "out of memory packing weights");
    if (in_place)
        for (int p = 0; p < parts; p++)
            sd_tensorfile_release(ld->src->file, t[p]);
}

void sd_load_lin(sd_loader *ld, sd_lin *l, const char *prefix, int N, int Cin, sd_lin_kind kind,
                 int with_bias)
{
    sd_load_lin_multi(ld, l, &prefix, 1, N, Cin, kind, with_bias);
}

float *sd_load_tensor(sd_loader *ld, const char *name, int ndim, const int64_t *shape)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        if (!sd_mul_size(n, (size_t)shape[i], &n))
            n = SIZE_MAX / sizeof(float);
    float *v = sd_alloc(n * sizeof(float));
    if (!v) {
        if (!ld->fatal)
            ld->fatal = sd_fail(ld->err, SDUNET_E_NOMEM, "out of memory loading weights");
        return NULL;
    }
    fetch(ld, name, ndim, shape, v);
    return v;
}

void sd_lin_free(sd_lin *l)
{
    sd_packed_free(&l->w);
    sd_free(l->b);
    l->b = NULL;
}

void sd_norm_free(sd_norm *g)
{
    sd_free(g->gamma);
    sd_free(g->beta);
    g->gamma = g->beta = NULL;
}

void sd_tock_shape(sd_prof *prof, sd_op_kind kind, double t0, double flops, sd_shape shape)
{
    const double dt = sd_tock(prof, kind, t0, flops);
    if (!prof)
        return;
    int i = 0;
    while (i < prof->entries &&
           !(prof->entry[i].kind == kind && prof->entry[i].shape.form == shape.form &&
             memcmp(prof->entry[i].shape.d, shape.d, sizeof shape.d) == 0))
        i++;
    if (i == prof->entries) {
        if (i == SD_PROF_ENTRIES) {
            prof->unlisted++;
            return;
        }
        prof->entry[i] = (sd_prof_entry){.kind = kind, .shape = shape};
        prof->entries++;
    }
    prof->entry[i].seconds += dt;
    prof->entry[i].flops += flops;
    prof->entry[i].calls++;
}

void sd_linear_op(const sd_exec *ex, sd_prof *prof, sd_op_kind kind, int M, const float *A, int lda,
                  const sd_lin *l, float *C, int ldc, const sd_epilogue *ep)
{
    double t0 = sd_tick(prof);
    sd_gemm(ex, M, A, lda, &l->w, C, ldc, ep);
    sd_tock_shape(prof, kind, t0, 2.0 * M * l->w.N * l->w.K,
                  (sd_shape){SD_SHAPE_GEMM, {M, l->w.N, l->w.K}});
}

void sd_conv3x3_op(const sd_exec *ex, sd_prof *prof, const float *in, int batch, int H, int W,
                   int Cin, int stride, const sd_lin *l, float *out, const sd_epilogue *ep)
{
    double t0 = sd_tick(prof);
    sd_conv3x3(ex, in, batch, H, W, Cin, stride, &l->w, out, ep);
    const int Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
    sd_tock_shape(prof, SD_OP_CONV3, t0, 2.0 * batch * Ho * Wo * l->w.N * l->w.K,
                  (sd_shape){SD_SHAPE_CONV, {batch, H, W, Cin, l->w.N, stride}});
}

void sd_attention_op(const sd_exec *ex, sd_prof *prof, int batch, int heads, int dh, int Nq, int Nk,
                     const float *q, int ldq, const float *k, int ldk, const float *v, int ldv,
                     float *o, int ldo, float scale)
{
    double t0 = sd_tick(prof);
    sd_attention(ex, batch, heads, dh, Nq, Nk, q, ldq, k, ldk, v, ldv, o, ldo, scale);
    sd_tock_shape(prof, SD_OP_ATTN, t0, 4.0 * batch * heads * (double)Nq * Nk * dh,
                  (sd_shape){SD_SHAPE_ATTN, {batch, heads, Nq, Nk, dh}});
}

/* ---- sharing between the models of a pipeline ---- */

sdunet_status sd_share_open_file(const sd_share *sh, const char *path, sd_tensorfile **tf,
                                 sdunet_error *err)
{
    if (sh && sh->file && sh->path && path && strcmp(sh->path, path) == 0) {
        *tf = sd_tensorfile_retain(sh->file);
        return SDUNET_OK;
    }
    return sd_tensorfile_open(path, tf, err);
}

sdunet_status sd_share_pool(sd_pool *shared, int *threads, sd_pool **pool, sdunet_error *err)
{
    if (shared) {
        *pool = sd_pool_retain(shared);
        *threads = sd_pool_size(shared);
        return SDUNET_OK;
    }
    return sd_pool_create(*threads, pool, err);
}

/* ---- what every model runs with ---- */

sdunet_status sd_runtime_init(sd_runtime *rt, int threads, int fast, sd_pool *shared,
                              sdunet_error *err)
{
    memset(rt, 0, sizeof *rt);
    if (threads < 0 || threads > 1024)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "threads must be 0..1024 (got %d)", threads);
    if (fast != 0 && fast != 1)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "fast must be 0 or 1 (got %d)", fast);
    rt->kern = sd_kernels_select(getenv("SDUNET_ISA"));
    if (!rt->kern)
        rt->kern = sd_kernels_select(NULL);
    rt->conv = sd_conv_algo_parse(getenv("SDUNET_CONV"));
    rt->fast = fast;
    rt->threads = threads ? threads : sd_default_threads();
    return sd_share_pool(shared, &rt->threads, &rt->pool, err);
}

sdunet_status sd_runtime_from_options(sd_runtime *rt, const sdunet_options *opt, sd_pool *shared,
                                      sdunet_error *err)
{
    sdunet_options def;
    if (!opt) {
        sdunet_options_default(&def);
        opt = &def;
    }
    memset(rt, 0, sizeof *rt);
    if ((int)opt->weights < (int)SDUNET_WEIGHTS_AUTO ||
        (int)opt->weights > (int)SDUNET_WEIGHTS_BF16)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "weights must be SDUNET_WEIGHTS_* 0..3 (got %d)",
                       (int)opt->weights);
    return sd_runtime_init(rt, opt->threads, opt->fast, shared, err);
}

void sd_runtime_free(sd_runtime *rt)
{
    if (!rt)
        return;
    sd_workspace_free(&rt->ws);
    sd_pool_destroy(rt->pool);
    rt->pool = NULL;
}
