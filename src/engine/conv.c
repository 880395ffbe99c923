/* 3x3 convolution (padding 1, stride 1 or 2; or the encoder downsampler's
 * bottom/right-only padding) as an implicit GEMM: row m of the virtual A
 * matrix is output pixel (b, y, x), column k = tap*Cin + ci is channel ci of
 * input pixel (y*stride + ky - pad, x*stride + kx - pad). No
 * im2col buffer exists; the A-packing routine gathers each mc x kc block
 * straight from the channels-last input, one contiguous channel run per
 * (row, tap), with padding taps reading a shared zero row. */
#include "engine/kernels.h"

#include <string.h>

typedef struct {
    const float *in;
    int H, W, Cin, stride, pad, Ho, Wo;
} conv_src;

static void pack_conv(const void *src, int m0, int rows, int k0, int kc, const sd_kernels *kern,
                      float *dst)
{
    const conv_src *s = src;
    const int mr = kern->mr;
    const int Cin = s->Cin, HWo = s->Ho * s->Wo;
    const int tap_first = k0 / Cin, tap_last = (k0 + kc - 1) / Cin;
    int by[16], yy[16], xx[16]; /* per row of the panel: batch*H, y*stride-pad, x*stride-pad */
    const float *r[16];
    for (int p = 0; p * mr < rows; p++) {
        for (int i = 0; i < mr; i++) {
            int m = p * mr + i;
            if (m >= rows) {
                by[i] = -1;
                continue;
            }
            m += m0;
            int b = m / HWo, rem = m - b * HWo, y = rem / s->Wo, x = rem - y * s->Wo;
            by[i] = b * s->H;
            yy[i] = y * s->stride - s->pad;
            xx[i] = x * s->stride - s->pad;
        }
        float *dp = dst + (size_t)p * kc * mr;
        for (int tap = tap_first; tap <= tap_last; tap++) {
            const int ky = tap / 3, kx = tap - ky * 3;
            const int ks = tap * Cin > k0 ? tap * Cin : k0;
            const int ke = (tap + 1) * Cin < k0 + kc ? (tap + 1) * Cin : k0 + kc;
            const int c0 = ks - tap * Cin;
            for (int i = 0; i < mr; i++) {
                int iy = yy[i] + ky, ix = xx[i] + kx;
                if (by[i] < 0 || iy < 0 || iy >= s->H || ix < 0 || ix >= s->W)
                    r[i] = sd_zero_row;
                else
                    r[i] = s->in + ((size_t)(by[i] + iy) * s->W + ix) * Cin + c0;
            }
            kern->pack_panel(r, ke - ks, dp + (size_t)(ks - k0) * mr);
        }
    }
}

sd_conv_algo sd_conv_algo_parse(const char *name)
{
    if (name && strcmp(name, "direct") == 0)
        return SD_CONV_DIRECT;
    if (name && strcmp(name, "winograd") == 0)
        return SD_CONV_WINOGRAD;
    return SD_CONV_AUTO;
}

void sd_conv3x3(const sd_exec *ex, const float *in, int batch, int H, int W, int Cin, int stride,
                const sd_packed *Wp, float *out, const sd_epilogue *ep)
{
    if (batch <= 0 || H <= 0 || W <= 0)
        return;
    /* Internal invariant (the model derives Cin from the packed weights),
     * reported as in sd_gemm_run: only a library bug gets here. */
    if (Wp->K != 9 * Cin || stride < 1) {
        sd_exec_fault(ex);
        return;
    }
    /* Fast mode: F(4x4) where it pays (every call with SDUNET_CONV=winograd). */
    if (stride == 1 && ex->fast && ex->conv != SD_CONV_DIRECT &&
        (ex->conv == SD_CONV_WINOGRAD || sd_winograd4_pays(batch, H, W, Cin, Wp->N)) &&
        sd_conv3x3_winograd4(ex, in, batch, H, W, Cin, Wp, out, ep))
        return;
    if (stride == 1 && ex->conv != SD_CONV_DIRECT &&
        (ex->conv == SD_CONV_WINOGRAD || sd_winograd_pays(batch, H, W, Cin, Wp->N)) &&
        sd_conv3x3_winograd(ex, in, batch, H, W, Cin, Wp, out, ep))
        return;
    conv_src s = {in, H, W, Cin, stride, 1, (H - 1) / stride + 1, (W - 1) / stride + 1};
    sd_gemm_src src = {pack_conv, &s, NULL, 0, NULL};
    sd_gemm_run(ex, batch * s.Ho * s.Wo, &src, Wp, out, Wp->N, ep);
}

void sd_conv3x3_pad0(const sd_exec *ex, const float *in, int batch, int H, int W, int Cin,
                     int stride, const sd_packed *Wp, float *out, const sd_epilogue *ep)
{
    if (batch <= 0 || H <= 0 || W <= 0)
        return;
    if (Wp->K != 9 * Cin || stride < 1) {
        sd_exec_fault(ex);
        return;
    }
    /* Taps at row or column H, W read the zero row: the one-pixel pad at
     * the bottom and right. */
    conv_src s = {in, H, W, Cin, stride, 0, (H - 2) / stride + 1, (W - 2) / stride + 1};
    if (H < 2 || W < 2)
        return;
    sd_gemm_src src = {pack_conv, &s, NULL, 0, NULL};
    sd_gemm_run(ex, batch * s.Ho * s.Wo, &src, Wp, out, Wp->N, ep);
}
