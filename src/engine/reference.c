/* Reference kernels: the definitions written out as directly as possible,
 * accumulating in double and rounding once at the end. Slow on purpose;
 * only the tests use them. */
#include "engine/kernels.h"

#include <math.h>

static double epilogue_sum(const sd_epilogue *ep, int N, int m, int n)
{
    double s = 0;
    if (!ep)
        return 0;
    if (ep->bias)
        s += ep->bias[n];
    if (ep->group_add)
        s += ep->group_add[(size_t)(m / ep->group_rows) * N + n];
    if (ep->residual)
        s += ep->residual[(size_t)m * ep->ld_res + n];
    return s;
}

void sd_ref_gemm(int M, int N, int K, const float *A, int lda, const float *Bkn, float *C, int ldc,
                 const sd_epilogue *ep)
{
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < K; k++)
                s += (double)A[(size_t)m * lda + k] * Bkn[(size_t)k * N + n];
            s += epilogue_sum(ep, N, m, n); /* read before C is written: residual may alias */
            C[(size_t)m * ldc + n] = (float)s;
        }
}

void sd_ref_conv3x3(const float *in, int batch, int H, int W, int Cin, int stride,
                    const float *w_oihw, int N, float *out, const sd_epilogue *ep)
{
    int Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
    for (int b = 0; b < batch; b++)
        for (int y = 0; y < Ho; y++)
            for (int x = 0; x < Wo; x++) {
                int m = (b * Ho + y) * Wo + x;
                for (int n = 0; n < N; n++) {
                    double s = 0;
                    for (int ky = 0; ky < 3; ky++)
                        for (int kx = 0; kx < 3; kx++) {
                            int iy = y * stride + ky - 1, ix = x * stride + kx - 1;
                            if (iy < 0 || iy >= H || ix < 0 || ix >= W)
                                continue;
                            const float *px = in + (((size_t)b * H + iy) * W + ix) * Cin;
                            for (int ci = 0; ci < Cin; ci++)
                                s += (double)px[ci] *
                                     w_oihw[(((size_t)n * Cin + ci) * 3 + ky) * 3 + kx];
                        }
                    s += epilogue_sum(ep, N, m, n);
                    out[(size_t)m * N + n] = (float)s;
                }
            }
}

static int ref_attention(int batch, int heads, int dh, int Nq, int Nk, const float *q, int ldq,
                         const float *k, int ldk, const float *v, int ldv, float *o, int ldo,
                         float scale, int causal)
{
    double *s = sd_calloc((size_t)(Nk > 0 ? Nk : 1), sizeof(double));
    double *acc = sd_calloc((size_t)(dh > 0 ? dh : 1), sizeof(double));
    if (!s || !acc) {
        sd_free(s);
        sd_free(acc);
        return 0;
    }
    for (int b = 0; b < batch; b++)
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < Nq; i++) {
                const float *qi = q + (size_t)(b * Nq + i) * ldq + h * dh;
                double mx = -INFINITY;
                const int nk = causal && i + 1 < Nk ? i + 1 : Nk;
                for (int j = 0; j < nk; j++) {
                    const float *kj = k + (size_t)(b * Nk + j) * ldk + h * dh;
                    double d = 0;
                    for (int c = 0; c < dh; c++)
                        d += (double)qi[c] * kj[c];
                    s[j] = d * scale;
                    if (s[j] > mx)
                        mx = s[j];
                }
                double sum = 0;
                for (int c = 0; c < dh; c++)
                    acc[c] = 0;
                for (int j = 0; j < nk; j++) {
                    double p = exp(s[j] - mx);
                    sum += p;
                    const float *vj = v + (size_t)(b * Nk + j) * ldv + h * dh;
                    for (int c = 0; c < dh; c++)
                        acc[c] += p * vj[c];
                }
                float *oi = o + (size_t)(b * Nq + i) * ldo + h * dh;
                for (int c = 0; c < dh; c++)
                    oi[c] = (float)(acc[c] / sum);
            }
    sd_free(s);
    sd_free(acc);
    return 1;
}

int sd_ref_attention(int batch, int heads, int dh, int Nq, int Nk, const float *q, int ldq,
                     const float *k, int ldk, const float *v, int ldv, float *o, int ldo,
                     float scale)
{
    return ref_attention(batch, heads, dh, Nq, Nk, q, ldq, k, ldk, v, ldv, o, ldo, scale, 0);
}

int sd_ref_attention_causal(int batch, int heads, int dh, int N, const float *q, int ldq,
                            const float *k, int ldk, const float *v, int ldv, float *o, int ldo,
                            float scale)
{
    return ref_attention(batch, heads, dh, N, N, q, ldq, k, ldk, v, ldv, o, ldo, scale, 1);
}

void sd_ref_gelu(const float *x, float *y, size_t n, int quick)
{
    for (size_t i = 0; i < n; i++) {
        double v = x[i];
        y[i] = (float)(quick ? v / (1.0 + exp(-1.702 * v)) : 0.5 * v * (1.0 + erf(v / sqrt(2.0))));
    }
}

void sd_ref_groupnorm(const float *x, int batch, int HW, int C, int G, float eps,
                      const float *gamma, const float *beta, int silu, float *y)
{
    int cpg = C / G;
    for (int b = 0; b < batch; b++)
        for (int g = 0; g < G; g++) {
            const float *xb = x + (size_t)b * HW * C;
            float *yb = y + (size_t)b * HW * C;
            double mean = 0, var = 0, n = (double)HW * cpg;
            for (int p = 0; p < HW; p++)
                for (int c = g * cpg; c < (g + 1) * cpg; c++)
                    mean += xb[(size_t)p * C + c];
            mean /= n;
            for (int p = 0; p < HW; p++)
                for (int c = g * cpg; c < (g + 1) * cpg; c++) {
                    double d = xb[(size_t)p * C + c] - mean;
                    var += d * d;
                }
            var /= n;
            double rstd = 1.0 / sqrt(var + eps);
            for (int p = 0; p < HW; p++)
                for (int c = g * cpg; c < (g + 1) * cpg; c++) {
                    double t = (xb[(size_t)p * C + c] - mean) * rstd * gamma[c] + beta[c];
                    if (silu)
                        t = t / (1.0 + exp(-t));
                    yb[(size_t)p * C + c] = (float)t;
                }
        }
}

void sd_ref_layernorm(const float *x, int M, int C, float eps, const float *gamma,
                      const float *beta, float *y)
{
    for (int m = 0; m < M; m++) {
        const float *xm = x + (size_t)m * C;
        double mean = 0, var = 0;
        for (int c = 0; c < C; c++)
            mean += xm[c];
        mean /= C;
        for (int c = 0; c < C; c++)
            var += (xm[c] - mean) * (xm[c] - mean);
        var /= C;
        double rstd = 1.0 / sqrt(var + eps);
        for (int c = 0; c < C; c++)
            y[(size_t)m * C + c] = (float)((xm[c] - mean) * rstd * gamma[c] + beta[c]);
    }
}

void sd_ref_silu(const float *x, float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] = (float)(x[i] / (1.0 + exp(-(double)x[i])));
}

void sd_ref_geglu(const float *x, int M, int F, float *y)
{
    for (int m = 0; m < M; m++)
        for (int f = 0; f < F; f++) {
            double h = x[(size_t)m * 2 * F + f], g = x[(size_t)m * 2 * F + F + f];
            y[(size_t)m * F + f] = (float)(h * 0.5 * g * (1.0 + erf(g / sqrt(2.0))));
        }
}

void sd_ref_upsample_nearest(const float *x, int batch, int H, int W, int C, int Ho, int Wo,
                             float *y)
{
    /* Exact rational floor(dst * in / out); sd_upsample_nearest follows
     * PyTorch's float formula, which agrees for the sizes the UNet sees. */
    for (int b = 0; b < batch; b++)
        for (int oy = 0; oy < Ho; oy++)
            for (int ox = 0; ox < Wo; ox++) {
                int sy = (int)((long long)oy * H / Ho), sx = (int)((long long)ox * W / Wo);
                for (int c = 0; c < C; c++)
                    y[(((size_t)b * Ho + oy) * Wo + ox) * C + c] =
                        x[(((size_t)b * H + sy) * W + sx) * C + c];
            }
}
