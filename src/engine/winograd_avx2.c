/* The Winograd convolution built for AVX2/FMA (the transforms' 8-channel
 * vectors become ymm operations); reached through sd_kernels_avx2.winograd. */
#include "engine/winograd_impl.h"

int sd_conv3x3_winograd_avx2(const sd_exec *ex, const float *in, int batch, int H, int W, int Cin,
                             const sd_packed *Wp, float *out, const sd_epilogue *ep)
{
    return wg_run(ex, in, batch, H, W, Cin, Wp, out, ep);
}

int sd_conv3x3_winograd4_avx2(const sd_exec *ex, const float *in, int batch, int H, int W, int Cin,
                              const sd_packed *Wp, float *out, const sd_epilogue *ep)
{
    return wg4_run(ex, in, batch, H, W, Cin, Wp, out, ep);
}
