/* The layer machinery every model is built from: weighted layers (a packed
 * linear map with its bias, a norm's scale and shift), the loader that
 * fetches them by name from a weight file or the synthetic generator, the
 * per-op-kind time profile, and the bump arena whose dry run plans a
 * forward's activation memory.
 *
 * A model (src/unet, src/clip, ...) describes its tensors by the names of
 * its reference implementation (diffusers, transformers) and hands the
 * loader a name map for the other layouts a file may use. */
#ifndef SD_LAYERS_H
#define SD_LAYERS_H

#include "common.h"
#include "engine/kernels.h"
#include "io/tensorfile.h"

#include <math.h>
#include <stdint.h>
#include <time.h>

/* ---- checks at a model's boundary ---- */

/* Whether the byte ranges [a, a + an) and [b, b + bn) overlap (NULL never
 * does): an output buffer must not alias an input. */
static inline int sd_overlaps(const void *a, size_t an, const void *b, size_t bn)
{
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return a && b && x < y + bn && y < x + an;
}

/* Whether all n values are finite (inputs are checked unless the caller
 * allows NaN and Inf). */
static inline int sd_all_finite(const float *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(p[i]))
            return 0;
    return 1;
}

/* A norm's affine terms (GroupNorm or LayerNorm). */
typedef struct sd_norm {
    float *gamma, *beta;
} sd_norm;

/* A linear map (Linear, 1x1 conv or 3x3 conv) with its packed weights. */
typedef struct sd_lin {
    sd_packed w;
    float *b; /* NULL when the layer has no bias */
} sd_lin;

void sd_lin_free(sd_lin *l);
void sd_norm_free(sd_norm *n);

/* Where weights come from while building a model. */
typedef struct sd_weight_source {
    const sd_tensorfile *file; /* NULL: synthetic weights from the spec */
    /* Optional name translation (e.g. diffusers -> LDM names): writes the
     * name to look up in `file`; returns 0 when the name has no mapping.
     * When NULL the model's own map for the file's layout applies. */
    int (*map_name)(void *user, const char *ref_name, char *out, size_t outlen);
    void *map_user;
    /* Optional: called for every tensor the model asks for (reference name
     * and expected shape), e.g. to list or write them. */
    void (*visit)(void *user, const char *name, int ndim, const int64_t *shape);
    void *visit_user;
    /* Synthetic weights only: round each value through this dtype (SD_DT_F16
     * or SD_DT_BF16; SD_DT_F32 = no rounding), to build the exact model a
     * half-precision synthetic file holds. */
    sd_dtype synth_round;
    /* Only check names and shapes (and call visit): no conversion, no packing. */
    int check_only;
    /* Threads for generating and converting weights (NULL: inline). */
    sd_pool *pool;
    /* Pack the UNet feed-forward's GEGLU projection as a plain Linear, so
     * the forward runs it as GEMM + sd_geglu instead of sd_gemm_geglu
     * (SDUNET_GEGLU=unfused; the tests use it to cover that path). */
    int geglu_unfused;
    /* Storage of the packed weight panels (sdunet_options.weights):
     * SDUNET_WEIGHTS_AUTO keeps each file tensor's precision (F16 -> f16,
     * BF16 -> bf16, others and synthetic weights -> f32); the others force
     * f32, f16 or bf16 (narrowing rounds to nearest even). */
    sdunet_weights weights;
} sd_weight_source;

/* What every model runs with: the kernel set ($SDUNET_ISA, else the best
 * the CPU has), the 3x3 convolution method ($SDUNET_CONV), exact or fast
 * mode, a thread pool (its own or another reference to a pipeline's) and
 * the kernel scratch kept between calls. */
typedef struct sd_runtime {
    const sd_kernels *kern;
    sd_conv_algo conv;
    int fast;
    sd_pool *pool;
    int threads;
    sd_workspace ws;
} sd_runtime;

/* threads 1..1024 (0: sd_default_threads()), fast 0 or 1; shared: the pool
 * to run on (NULL: a new one). */
sdunet_status sd_runtime_init(sd_runtime *rt, int threads, int fast, sd_pool *shared,
                              sdunet_error *err);
/* sd_runtime_init from sdunet_options (NULL: the defaults), checking all
 * of them (weights included). */
sdunet_status sd_runtime_from_options(sd_runtime *rt, const sdunet_options *opt, sd_pool *shared,
                                      sdunet_error *err);
/* Drops the pool reference and frees the scratch. */
void sd_runtime_free(sd_runtime *rt);

/* An execution context on rt, reporting internal faults into *fault. */
static inline sd_exec sd_runtime_exec(sd_runtime *rt, int *fault)
{
    sd_exec ex = {.pool = rt->pool,
                  .kern = rt->kern,
                  .ws = &rt->ws,
                  .conv = rt->conv,
                  .fault = fault,
                  .fast = rt->fast};
    return ex;
}

/* What a pipeline lends the models it composes: one thread pool, and the
 * open weight file when they all come from one single-file checkpoint.
 * Each model takes its own reference (sd_pool_retain,
 * sd_tensorfile_retain), so models and share are freed in any order. */
typedef struct sd_share {
    sd_pool *pool;       /* NULL: each model makes its own */
    const char *path;    /* the path `file` was opened from */
    sd_tensorfile *file; /* NULL: each model opens its files */
} sd_share;

/* The weight file at `path`: another reference to the share's file when it
 * was opened from that path, else newly opened. Close with
 * sd_tensorfile_close either way. */
sdunet_status sd_share_open_file(const sd_share *sh, const char *path, sd_tensorfile **tf,
                                 sdunet_error *err);
/* The pool a model runs on: another reference to `shared` when non-NULL
 * (*threads becomes its size), else a new pool of *threads. */
sdunet_status sd_share_pool(sd_pool *shared, int *threads, sd_pool **pool, sdunet_error *err);

/* A model build in progress: fetches tensors by reference name, checks
 * shapes, converts and packs. Missing and mismatched tensors are
 * collected so that one error lists them all (sd_loader_finish). */
typedef struct sd_loader {
    const sd_weight_source *src;
    const sd_kernels *kern;
    /* The model's own name map for src->file, used when src->map_name is
     * NULL (NULL: names are looked up as they are). */
    int (*map)(void *user, const char *ref_name, char *out, size_t outlen);
    void *map_user;
    float *scratch;
    size_t scratch_cap;
    int n_bad;
    char bad[400];
    sdunet_status fatal;
    sdunet_error *err;
    int64_t n_params;
    /* Bytes of packed weight panels by sd_wtype (also counted when
     * check_only, as the build would pack them). */
    size_t packed_bytes[SD_WT_COUNT];
} sd_loader;

void sd_loader_init(sd_loader *ld, const sd_weight_source *src, const sd_kernels *kern,
                    sdunet_error *err);
/* Frees the loader's scratch and returns the build's status: the first
 * fatal error, else SDUNET_E_WEIGHTS listing the bad tensors, else OK. */
sdunet_status sd_loader_finish(sd_loader *ld);

typedef enum sd_lin_kind { SD_LIN_LINEAR, SD_LIN_CONV1, SD_LIN_CONV3, SD_LIN_GEGLU } sd_lin_kind;

/* NAME.weight and NAME.bias of a norm over C channels. */
void sd_load_norm(sd_loader *ld, sd_norm *n, const char *prefix, int C);
/* PREFIX.weight ([N][Cin] for a Linear, [N][Cin][k][k] for a conv) and,
 * with_bias, PREFIX.bias, packed. SD_LIN_GEGLU: a Linear whose N outputs
 * are [hidden | gate] of a GEGLU, packed for sd_gemm_geglu when N/2 allows
 * (sd_pack_geglu), else as a Linear. */
void sd_load_lin(sd_loader *ld, sd_lin *l, const char *prefix, int N, int Cin, sd_lin_kind kind,
                 int with_bias);
/* Several layers with the same input stacked along the output axis into one
 * packed matrix (fusing q|k|v): `parts` prefixes of N_part outputs each. */
void sd_load_lin_multi(sd_loader *ld, sd_lin *l, const char *const *prefixes, int parts, int N_part,
                       int Cin, sd_lin_kind kind, int with_bias);
/* A plain float32 tensor (an embedding table), sd_alloc'd; zeros when it
 * is missing (the build then fails), NULL on allocation failure. */
float *sd_load_tensor(sd_loader *ld, const char *name, int ndim, const int64_t *shape);

/* ---- time profile by op kind ---- */

typedef enum sd_op_kind {
    SD_OP_CONV3,  /* 3x3 convolutions */
    SD_OP_CONV1,  /* 1x1 convolutions: shortcuts, conv proj_in/proj_out */
    SD_OP_LINEAR, /* Linear layers (q/k/v/out, feed-forwards, time MLP) */
    SD_OP_ATTN,   /* attention matmuls and softmax */
    SD_OP_NORM,   /* norms, activations, concatenation, resize, embeddings */
    SD_OP_COUNT
} sd_op_kind;

/* An op's shape, the key of the profile's table by shape. */
typedef enum sd_shape_form {
    SD_SHAPE_GEMM,  /* d = M, N, K */
    SD_SHAPE_GEGLU, /* d = M, F (gated outputs), K */
    SD_SHAPE_CONV,  /* d = batch, H, W, Cin, N, stride (the input's size) */
    SD_SHAPE_ATTN   /* d = batch, heads, Nq, Nk, dh */
} sd_shape_form;

typedef struct sd_shape {
    sd_shape_form form;
    int d[6];
} sd_shape;

/* The time of every call of one op kind and shape. */
typedef struct sd_prof_entry {
    sd_op_kind kind;
    sd_shape shape;
    double seconds, flops;
    long calls;
} sd_prof_entry;

#define SD_PROF_ENTRIES 128

typedef struct sd_prof {
    double seconds[SD_OP_COUNT];
    double flops[SD_OP_COUNT];
    long calls[SD_OP_COUNT];
    /* By kind and shape, in order of first call; calls of a shape past the
     * table's end count in the totals above only (`unlisted`). */
    sd_prof_entry entry[SD_PROF_ENTRIES];
    int entries;
    long unlisted;
} sd_prof;

static inline double sd_mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Start of a timed op (0 when not profiling). */
static inline double sd_tick(const sd_prof *prof)
{
    return prof ? sd_mono_now() : 0;
}

/* Adds the op's time since t0 to its kind's totals; returns that time (0
 * when not profiling). */
static inline double sd_tock(sd_prof *prof, sd_op_kind kind, double t0, double flops)
{
    if (!prof)
        return 0;
    const double dt = sd_mono_now() - t0;
    prof->seconds[kind] += dt;
    prof->flops[kind] += flops;
    prof->calls[kind]++;
    return dt;
}

/* sd_tock, and the call's time added to its shape's entry. */
void sd_tock_shape(sd_prof *prof, sd_op_kind kind, double t0, double flops, sd_shape shape);

/* sd_gemm through layer l (C = A * l + epilogue), timed as `kind`. */
void sd_linear_op(const sd_exec *ex, sd_prof *prof, sd_op_kind kind, int M, const float *A, int lda,
                  const sd_lin *l, float *C, int ldc, const sd_epilogue *ep);
/* sd_conv3x3 through layer l, timed as SD_OP_CONV3. */
void sd_conv3x3_op(const sd_exec *ex, sd_prof *prof, const float *in, int batch, int H, int W,
                   int Cin, int stride, const sd_lin *l, float *out, const sd_epilogue *ep);
/* sd_attention timed as SD_OP_ATTN. */
void sd_attention_op(const sd_exec *ex, sd_prof *prof, int batch, int heads, int dh, int Nq, int Nk,
                     const float *q, int ldq, const float *k, int ldk, const float *v, int ldv,
                     float *o, int ldo, float scale);

/* ---- activation memory ---- */

/* A bump allocator over one region of a forward's plan. In a dry run
 * (base == NULL) it hands out NULL and only counts, so running the graph
 * once without data sizes the region exactly; the real run then never
 * allocates. Allocations are 64-byte aligned within the region. */
typedef struct sd_arena {
    float *base;
    size_t used, peak; /* floats */
} sd_arena;

static inline float *sd_arena_alloc(sd_arena *a, size_t n)
{
    float *p = a->base ? a->base + a->used : NULL;
    a->used += (n + 15) & ~(size_t)15;
    if (a->used > a->peak)
        a->peak = a->used;
    return p;
}

#endif
