/* Element-wise kernels: SiLU, GEGLU and GELU (exact erf or CLIP's quick form) and nearest-neighbour
 * resize. Memory bound; threads split contiguous chunks. */
#include "engine/kernels.h"

#include <math.h>
#include <string.h>

#define CHUNK 16384 /* elements per task */

/* ---- SiLU ---- */

typedef struct {
    const sd_kernels *kern;
    const float *x;
    float *y;
    size_t n;
} silu_job;

static void silu_task(void *ctx, int64_t t, int thread)
{
    (void)thread;
    const silu_job *j = ctx;
    size_t i0 = (size_t)t * CHUNK, i1 = i0 + CHUNK < j->n ? i0 + CHUNK : j->n;
    j->kern->silu(j->x + i0, j->y + i0, i1 - i0, 1.0f);
}

void sd_silu(const sd_exec *ex, const float *x, float *y, size_t n)
{
    if (n == 0)
        return;
    silu_job j = {ex->kern, x, y, n};
    sd_pool_run(ex->pool, (int64_t)((n + CHUNK - 1) / CHUNK), silu_task, &j);
}

/* ---- GEGLU ---- */

typedef struct {
    const sd_kernels *kern;
    const float *x;
    float *y;
    int M, F, rows_per_task;
} geglu_job;

static void geglu_task(void *ctx, int64_t t, int thread)
{
    (void)thread;
    const geglu_job *j = ctx;
    int r0 = (int)t * j->rows_per_task;
    int r1 = r0 + j->rows_per_task < j->M ? r0 + j->rows_per_task : j->M;
    for (int r = r0; r < r1; r++) {
        const float *h = j->x + (size_t)r * 2 * j->F;
        j->kern->gelu_mul(h, h + j->F, j->y + (size_t)r * j->F, j->F, 1, 0);
    }
}

void sd_geglu(const sd_exec *ex, const float *x, int M, int F, float *y)
{
    if (M <= 0 || F <= 0)
        return;
    int rpt = CHUNK / F > 0 ? CHUNK / F : 1;
    geglu_job j = {ex->kern, x, y, M, F, rpt};
    sd_pool_run(ex->pool, (M + rpt - 1) / rpt, geglu_task, &j);
}

/* ---- GELU (the text encoders' MLP) ---- */

typedef struct {
    const sd_kernels *kern;
    const float *x;
    float *y;
    size_t n;
    int quick;
} gelu_job;

static void gelu_task(void *ctx, int64_t t, int thread)
{
    (void)thread;
    const gelu_job *j = ctx;
    size_t i0 = (size_t)t * CHUNK, i1 = i0 + CHUNK < j->n ? i0 + CHUNK : j->n;
    if (j->quick) { /* x * sigmoid(1.702 x) */
        j->kern->silu(j->x + i0, j->y + i0, i1 - i0, 1.702f);
        return;
    }
    /* x * Phi(x) as 1 * gelu(x) through the GEGLU kernel, in pieces. */
    float ones[256];
    for (int i = 0; i < 256; i++)
        ones[i] = 1.0f;
    for (size_t i = i0; i < i1; i += 256) {
        int len = i1 - i < 256 ? (int)(i1 - i) : 256;
        j->kern->gelu_mul(ones, j->x + i, j->y + i, len, 1, 0);
    }
}

void sd_gelu(const sd_exec *ex, const float *x, float *y, size_t n, int quick)
{
    if (n == 0)
        return;
    gelu_job j = {ex->kern, x, y, n, quick};
    sd_pool_run(ex->pool, (int64_t)((n + CHUNK - 1) / CHUNK), gelu_task, &j);
}

/* ---- nearest-neighbour resize ---- */

/* PyTorch's nearest source index (aten nearest_idx): exact halving for 2x,
 * otherwise floorf(dst * (float)in / out) computed in float, clamped. The
 * float product can differ from the exact rational floor for some size
 * pairs; matching PyTorch is what counts here. */
static int nearest_src(int dst, int in, int out)
{
    if (out == in)
        return dst;
    if (out == 2 * in)
        return dst >> 1;
    float scale = (float)in / (float)out;
    int s = (int)floorf((float)dst * scale);
    return s < in - 1 ? s : in - 1;
}

typedef struct {
    const float *x;
    float *y;
    int H, W, C, Ho, Wo;
} up_job;

static void up_task(void *ctx, int64_t t, int thread)
{
    (void)thread;
    const up_job *j = ctx;
    int b = (int)(t / j->Ho), oy = (int)(t % j->Ho);
    int sy = nearest_src(oy, j->H, j->Ho);
    const float *xr = j->x + ((size_t)b * j->H + sy) * j->W * j->C;
    float *yr = j->y + ((size_t)b * j->Ho + oy) * j->Wo * j->C;
    for (int ox = 0; ox < j->Wo; ox++)
        memcpy(yr + (size_t)ox * j->C, xr + (size_t)nearest_src(ox, j->W, j->Wo) * j->C,
               sizeof(float) * j->C);
}

void sd_upsample_nearest(const sd_exec *ex, const float *x, int batch, int H, int W, int C, int Ho,
                         int Wo, float *y)
{
    if (batch <= 0 || Ho <= 0 || Wo <= 0 || C <= 0)
        return;
    up_job j = {x, y, H, W, C, Ho, Wo};
    sd_pool_run(ex->pool, (int64_t)batch * Ho, up_task, &j);
}
