/* GroupNorm (optionally fused with SiLU) and LayerNorm.
 *
 * Statistics are exact-ish: sums in double, two passes (mean, then the sum
 * of squared deviations), biased variance as PyTorch uses. The normalising
 * pass also runs in double, (x - mean) * (rstd * gamma) + beta rounded once,
 * so the result is the reference's up to that rounding (and SiLU's, applied
 * in float afterwards); these passes are memory bound, double costs little. */
#include "engine/kernels.h"

#include <math.h>

/* Sum of a rows x w block (row stride ld) in double with four independent
 * chains, so the adds pipeline; in double the order hardly matters. */
static double sum_rows(const float *x, int rows, int w, size_t ld)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * ld;
        int c = 0;
        for (; c + 4 <= w; c += 4) {
            s0 += xr[c];
            s1 += xr[c + 1];
            s2 += xr[c + 2];
            s3 += xr[c + 3];
        }
        for (; c < w; c++)
            s0 += xr[c];
    }
    return (s0 + s1) + (s2 + s3);
}

/* Sum of (x - mean)^2 over the same kind of block. */
static double sumsq_rows(const float *x, int rows, int w, size_t ld, double mean)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * ld;
        int c = 0;
        for (; c + 4 <= w; c += 4) {
            double d0 = xr[c] - mean, d1 = xr[c + 1] - mean, d2 = xr[c + 2] - mean,
                   d3 = xr[c + 3] - mean;
            s0 += d0 * d0;
            s1 += d1 * d1;
            s2 += d2 * d2;
            s3 += d3 * d3;
        }
        for (; c < w; c++) {
            double d = xr[c] - mean;
            s0 += d * d;
        }
    }
    return (s0 + s1) + (s2 + s3);
}

/* ---- the row passes, portable (sd_kernels.norm_sum etc.): one
 * operation per statement, as the vector builds do them ---- */

void sd_norm_sum_c(const float *x, int n, const double *mean, double *acc)
{
    if (mean) {
        for (int c = 0; c < n; c++) {
            double d = (double)x[c] - mean[c];
            d = d * d;
            acc[c] = acc[c] + d;
        }
        return;
    }
    for (int c = 0; c < n; c++)
        acc[c] = acc[c] + (double)x[c];
}

void sd_norm_affine_c(const float *x, int n, const double *mean, const double *scale,
                      const float *beta, float *y)
{
    for (int c = 0; c < n; c++) {
        double t = (double)x[c] - mean[c];
        t = t * scale[c];
        t = t + (double)beta[c];
        y[c] = (float)t;
    }
}

void sd_norm_affine1_c(const float *x, int n, double mean, double rstd, const float *gamma,
                       const float *beta, float *y)
{
    for (int c = 0; c < n; c++) {
        double s = rstd * (double)gamma[c];
        double t = (double)x[c] - mean;
        t = t * s;
        t = t + (double)beta[c];
        y[c] = (float)t;
    }
}

/* ---- GroupNorm ---- */

#define GN_CHUNK 64 /* groups whose statistics are held at once (stack) */
#define ROWS_PER_TASK 64
#define GN_NCH 32    /* row chunks of the one-pass statistics (fixed: any thread count) */
#define GN_CMAX 4096 /* channels of the one-pass statistics (a per-chunk stack row) */

typedef struct {
    const sd_kernels *kern;
    const float *x, *x2; /* this batch item: channels [0, C1) and [C1, C) */
    float *y;
    int HW, C, C1, cpg, g0, ng;
    float eps;
    const float *gamma, *beta;
    int silu;
    double mean[GN_CHUNK], rstd[GN_CHUNK];
    /* one-pass statistics: rows per chunk, which sum, per-chunk group sums */
    int rpc, dev;
    double part[GN_NCH][GN_CHUNK];
    /* per channel (C <= GN_CMAX), for the kernel set's row passes: the
     * group's mean, and rstd * gamma */
    double cmean[GN_CMAX], cscale[GN_CMAX];
} gn_job;

static void gn_stats(void *ctx, int64_t t, int thread)
{
    (void)thread;
    gn_job *j = ctx;
    const int g = j->g0 + (int)t, cs = g * j->cpg, ce = cs + j->cpg, C1 = j->C1, C2 = j->C - C1;
    /* The group's columns in each part (a group may straddle the two). */
    const int w1 = ce < C1 ? ce - cs : (cs < C1 ? C1 - cs : 0), w2 = j->cpg - w1;
    const float *x1g = j->x + cs, *x2g = w2 ? j->x2 + (cs + w1 - C1) : NULL;
    double n = (double)j->HW * j->cpg;
    double sum = w1 ? sum_rows(x1g, j->HW, w1, (size_t)C1) : 0;
    if (w2)
        sum += sum_rows(x2g, j->HW, w2, (size_t)C2);
    double mean = sum / n;
    double ss = w1 ? sumsq_rows(x1g, j->HW, w1, (size_t)C1, mean) : 0;
    if (w2)
        ss += sumsq_rows(x2g, j->HW, w2, (size_t)C2, mean);
    double var = ss / n;
    j->mean[t] = mean;
    j->rstd[t] = 1.0 / sqrt(var + (double)j->eps);
}

/* Row chunk t of the statistics for all groups at once, one streaming pass
 * over the rows (each group's channels are a few floats of every row, so
 * reading group by group would fetch every cache line once per group that
 * shares it): per-channel sums in double, of x (dev 0) or of (x - mean)^2
 * (dev 1), folded into per-group sums of the chunk. */
static void gn_chunk(void *ctx, int64_t t, int thread)
{
    (void)thread;
    gn_job *j = ctx;
    const int C1 = j->C1, C = j->C, cpg = j->cpg, r0 = (int)t * j->rpc;
    const int r1 = r0 + j->rpc < j->HW ? r0 + j->rpc : j->HW;
    double acc[GN_CMAX];
    for (int c = 0; c < C; c++)
        acc[c] = 0;
    const double *m = j->dev ? j->cmean : NULL;
    for (int r = r0; r < r1; r++) {
        j->kern->norm_sum(j->x + (size_t)r * C1, C1, m, acc);
        if (C > C1)
            j->kern->norm_sum(j->x2 + (size_t)r * (C - C1), C - C1, m ? m + C1 : NULL, acc + C1);
    }
    for (int g = 0; g < j->ng; g++) {
        double sg = 0;
        for (int c = g * cpg; c < (g + 1) * cpg; c++)
            sg += acc[c];
        j->part[t][g] = sg;
    }
}

/* The group statistics by gn_chunk: mean, then the variance about it. */
static void gn_stats_onepass(const sd_exec *ex, gn_job *j)
{
    const int nch = j->HW < GN_NCH ? j->HW : GN_NCH;
    const double n = (double)j->HW * j->cpg;
    j->rpc = (j->HW + nch - 1) / nch;
    for (j->dev = 0; j->dev <= 1; j->dev++) {
        sd_pool_run(ex->pool, nch, gn_chunk, j);
        for (int g = 0; g < j->ng; g++) {
            double s = 0;
            for (int t = 0; t < nch; t++)
                s += j->part[t][g];
            if (!j->dev)
                j->mean[g] = s / n;
            else
                j->rstd[g] = 1.0 / sqrt(s / n + (double)j->eps);
        }
        for (int c = 0; !j->dev && c < j->C; c++)
            j->cmean[c] = j->mean[c / j->cpg];
    }
}

static void gn_apply(void *ctx, int64_t t, int thread)
{
    (void)thread;
    gn_job *j = ctx;
    int r0 = (int)t * ROWS_PER_TASK, r1 = r0 + ROWS_PER_TASK < j->HW ? r0 + ROWS_PER_TASK : j->HW;
    const int C1 = j->C1, C2 = j->C - C1;
    const int c0 = j->g0 * j->cpg, c1 = (j->g0 + j->ng) * j->cpg;
    for (int r = r0; r < r1; r++) {
        const float *xr = j->x + (size_t)r * C1;
        /* Part 2 indexed by the full channel number c >= C1. */
        const float *xr2 = C2 ? j->x2 + (size_t)r * C2 - C1 : NULL;
        float *yr = j->y + (size_t)r * j->C;
        if (j->C <= GN_CMAX) { /* by the kernel set, per channel (cmean, cscale) */
            const int cm = c1 < C1 ? c1 : C1, c2 = c0 > C1 ? c0 : C1;
            if (cm > c0)
                j->kern->norm_affine(xr + c0, cm - c0, j->cmean + c0, j->cscale + c0, j->beta + c0,
                                     yr + c0);
            if (c1 > c2)
                j->kern->norm_affine(xr2 + c2, c1 - c2, j->cmean + c2, j->cscale + c2, j->beta + c2,
                                     yr + c2);
        }
        for (int gi = 0; j->C > GN_CMAX && gi < j->ng; gi++) { /* group by group */
            const double mean = j->mean[gi], rstd = j->rstd[gi];
            const int cs = (j->g0 + gi) * j->cpg, ce = cs + j->cpg, cm = ce < C1 ? ce : C1;
            const int c2 = cm > cs ? cm : cs;
            if (cm > cs)
                j->kern->norm_affine1(xr + cs, cm - cs, mean, rstd, j->gamma + cs, j->beta + cs,
                                      yr + cs);
            if (ce > c2)
                j->kern->norm_affine1(xr2 + c2, ce - c2, mean, rstd, j->gamma + c2, j->beta + c2,
                                      yr + c2);
        }
        if (j->silu)
            j->kern->silu(yr + c0, yr + c0, (size_t)(c1 - c0), 1.0f);
    }
}

void sd_groupnorm(const sd_exec *ex, const float *x, int batch, int HW, int C, int G, float eps,
                  const float *gamma, const float *beta, int silu, float *y)
{
    sd_groupnorm_cat(ex, x, C, NULL, 0, batch, HW, G, eps, gamma, beta, silu, y);
}

void sd_groupnorm_cat(const sd_exec *ex, const float *x1, int C1, const float *x2, int C2,
                      int batch, int HW, int G, float eps, const float *gamma, const float *beta,
                      int silu, float *y)
{
    const int C = C1 + (x2 ? C2 : 0);
    if (batch <= 0 || HW <= 0 || C1 <= 0 || (x2 && C2 <= 0) || G <= 0)
        return;
    gn_job j = {.kern = ex->kern,
                .HW = HW,
                .C = C,
                .C1 = C1,
                .cpg = C / G,
                .eps = eps,
                .gamma = gamma,
                .beta = beta,
                .silu = silu};
    for (int b = 0; b < batch; b++) {
        j.x = x1 + (size_t)b * HW * C1;
        j.x2 = x2 ? x2 + (size_t)b * HW * C2 : NULL;
        j.y = y + (size_t)b * HW * C;
        for (j.g0 = 0; j.g0 < G; j.g0 += GN_CHUNK) {
            j.ng = G - j.g0 < GN_CHUNK ? G - j.g0 : GN_CHUNK;
            const int onepass = G <= GN_CHUNK && C <= GN_CMAX;
            if (onepass) /* fills cmean for its second pass */
                gn_stats_onepass(ex, &j);
            else /* group by group, GN_CHUNK groups at a time */
                sd_pool_run(ex->pool, j.ng, gn_stats, &j);
            for (int c = j.g0 * j.cpg; C <= GN_CMAX && c < (j.g0 + j.ng) * j.cpg; c++) {
                const int gi = c / j.cpg - j.g0;
                if (!onepass)
                    j.cmean[c] = j.mean[gi];
                j.cscale[c] = j.rstd[gi] * (double)gamma[c];
            }
            sd_pool_run(ex->pool, (HW + ROWS_PER_TASK - 1) / ROWS_PER_TASK, gn_apply, &j);
        }
    }
}

/* ---- LayerNorm ---- */

typedef struct {
    const sd_kernels *kern;
    const float *x;
    float *y;
    int M, C;
    float eps;
    const float *gamma, *beta;
} ln_job;

static void ln_task(void *ctx, int64_t t, int thread)
{
    (void)thread;
    const ln_job *j = ctx;
    int r0 = (int)t * 16, r1 = r0 + 16 < j->M ? r0 + 16 : j->M;
    for (int r = r0; r < r1; r++) {
        const float *xr = j->x + (size_t)r * j->C;
        float *yr = j->y + (size_t)r * j->C;
        double mean = sum_rows(xr, 1, j->C, 0) / j->C;
        double var = sumsq_rows(xr, 1, j->C, 0, mean) / j->C;
        double rstd = 1.0 / sqrt(var + (double)j->eps);
        j->kern->norm_affine1(xr, j->C, mean, rstd, j->gamma, j->beta, yr);
    }
}

void sd_layernorm(const sd_exec *ex, const float *x, int M, int C, float eps, const float *gamma,
                  const float *beta, float *y)
{
    if (M <= 0 || C <= 0)
        return;
    ln_job j = {ex->kern, x, y, M, C, eps, gamma, beta};
    sd_pool_run(ex->pool, (M + 15) / 16, ln_task, &j);
}
