/* The Winograd convolution built for AVX-512 (the transforms' vectors are
 * 16 channels, one zmm operation: a whole output panel); reached through
 * the AVX-512 sets' winograd and winograd4. */
#include "engine/winograd_impl.h"

int sd_conv3x3_winograd_avx512(const sd_exec *ex, const float *in, int batch, int H, int W, int Cin,
                               const sd_packed *Wp, float *out, const sd_epilogue *ep)
{
    return wg_run(ex, in, batch, H, W, Cin, Wp, out, ep);
}

int sd_conv3x3_winograd4_avx512(const sd_exec *ex, const float *in, int batch, int H, int W,
                                int Cin, const sd_packed *Wp, float *out, const sd_epilogue *ep)
{
    return wg4_run(ex, in, batch, H, W, Cin, Wp, out, ep);
}
