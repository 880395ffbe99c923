/* 3x3 convolution, stride 1, padding 1, by Winograd F(2x2, 3x3) and, in
 * fast mode only, F(4x4, 3x3).
 *
 * Each 2x2 block of output pixels ("tile") is computed from the 4x4 input
 * patch around it as Y = A^T [ (G g G^T) . (B^T d B) ] A, so the 36
 * multiplies per tile and channel pair of the direct method become 16: the
 * product of a 4x4 transformed patch with a 4x4 transformed kernel,
 * element-wise, summed over input channels. Summed over channels, that is 16
 * independent GEMMs (one per transformed position "ad"):
 *     M_ad[tile][n] = sum_ci V_ad[tile][ci] * U_ad[ci][n],
 * run on the GEMM microkernel, at 4/9 of the direct method's multiply count.
 *
 * The transform matrices hold only 0, +-1 and +-1/2, so every transform is
 * a short signed sum; the extra rounding costs about 1.5x the direct
 * method's error per convolution (measured against float64: 5.2e-7 vs
 * 3.3e-7 at the UNet's shapes), well inside the model's 2e-6 bar.
 *
 * Fast mode (sd_exec.fast, sdunet_options.fast) adds F(4x4, 3x3): 6x6
 * input patches, 36 products per tile, 4x fewer multiplies than direct
 * (1.78x fewer than F(2x2)), at several times the rounding error. Of the
 * point sets tried in a float32 simulation (Cin = 320, unit inputs,
 * 1/sqrt(9 Cin) weights; relative L2 of one convolution against float64),
 * 0, 1, -1, 1/2, -2 (and infinity) is the most accurate: 2.3e-6, against
 * 3.3e-6 for Lavin's 0, +-1, +-2 and 3.6e-6 for 0, +-1, +-1/2. Measured in
 * the model: 1.9e-6 on sd15-64 (exact mode 1.1e-6), under the fast mode's
 * 2e-5. The F(4x4) code (winograd_impl.h) mirrors the F(2x2) code with 36
 * positions, 4x4 output tiles and its own block sizes (WG4_TB_MAX tiles,
 * WG4_KC channels).
 *
 * Memory: the transformed weights are 16/9 the size of the 3x3 weights,
 * which are most of the UNet (2.2 of its 3.4 GB), so they are not kept
 * beyond one call (a convolution of three or more tile blocks keeps its
 * own from the first block for the others, up to 32 MiB). A task
 * transforms one 16-channel output panel and one K block of the
 * packed direct weights at a time into a 256 KiB L2 buffer (16 positions x
 * kc x 16), runs the 16 products for every tile of the block against it, and
 * finishes that panel's outputs from an L2-sized accumulator: the only large
 * buffer is the transformed input of a block of tiles, written once, already
 * in the microkernel's A-panel layout, and read once per output panel pair.
 * Threads share a block's output panels when there are few tiles (the
 * weights are then the larger part: each is transformed once); with at
 * least half a block of tiles per thread, each thread takes whole blocks
 * with its own transformed input instead (two threads: 64x64x320 convolution
 * 750 -> 900 GFLOP/s, the VAE decode 4.35 -> 3.49 s), and the transformed
 * weights, when kept, are made by all threads before the blocks.
 * Wide inputs (over 6 MiB of it per block: 1280 channels and more at 128
 * tiles) are done in channel chunks, each chunk's output transform added
 * onto the sum of those before it: re-reading 10-16 MiB per panel pair
 * from a shared L3 cost up to half the speed of these convolutions.
 *
 * Layouts, for a block of TB tiles (TBp rounded up to whole mr panels):
 *   V   [ad][tile panel][Cin][mr]       transformed inputs (A micro-panels)
 *   Ub  [ad][kc][16]    per thread      transformed weights (B micro-panels)
 *   Acc [ad][TBp][16]   per thread      products for one output panel */
#include "engine/winograd_impl.h"

int sd_winograd_pays(int batch, int H, int W, int Cin, int N)
{
    /* Measured on one core (bench_gemm): at 16 tiles (SD1.5's 8x8 level,
     * batch 1, 1280 channels) Winograd and direct are even on Zen 3 (AVX2)
     * and Winograd is 1.38x faster on Zen 5 (AVX-512: 249 vs 180 GFLOP/s
     * of the direct method's count); at 32 tiles 1.27x (Zen 3) and 1.7x
     * (Zen 5), at 64 and up 1.4-2.1x. Tiny channel counts do not fill a
     * microkernel; at 16 tiles only wide inputs are taken (the measured
     * case: with few tiles the products are short next to the weight
     * transform, and narrow models gain nothing worth F(2x2)'s extra
     * rounding). */
    long tiles = (long)batch * ((H + 1) / 2) * ((W + 1) / 2);
    return WG_HAVE && Cin >= 32 && N >= 32 && (tiles >= 32 || (tiles >= 16 && Cin >= 512));
}

int sd_conv3x3_winograd(const sd_exec *ex, const float *in, int batch, int H, int W, int Cin,
                        const sd_packed *Wp, float *out, const sd_epilogue *ep)
{
    if (ex->kern->winograd) /* the kernel set's own build of the same code */
        return ex->kern->winograd(ex, in, batch, H, W, Cin, Wp, out, ep);
#if WG_HAVE
    return wg_run(ex, in, batch, H, W, Cin, Wp, out, ep);
#else
    (void)in, (void)batch, (void)H, (void)W, (void)Cin, (void)Wp, (void)out, (void)ep;
    return 0;
#endif
}

int sd_winograd4_pays(int batch, int H, int W, int Cin, int N)
{
    /* One Zen 5 core (bench_gemm, SD_FAST=1, GFLOP/s of the direct
     * method's count, F(4x4) / F(2x2)): 64x64x320 560 / 336, 32x32x640
     * 620 / 369, 16x16x1280 (16 tiles) 460 / 335; 16x8x1280 (8 tiles)
     * 238 / 297 and 8x8x1280 (4 tiles) 127 / 156: the weight transform is
     * repeated per tile block and dominates with few tiles. */
    long tiles = (long)batch * ((H + 3) / 4) * ((W + 3) / 4);
    return WG_HAVE && Cin >= 32 && N >= 32 && tiles >= 16;
}

int sd_conv3x3_winograd4(const sd_exec *ex, const float *in, int batch, int H, int W, int Cin,
                         const sd_packed *Wp, float *out, const sd_epilogue *ep)
{
    if (ex->kern->winograd4)
        return ex->kern->winograd4(ex, in, batch, H, W, Cin, Wp, out, ep);
#if WG_HAVE
    return wg4_run(ex, in, batch, H, W, Cin, Wp, out, ep);
#else
    (void)in, (void)batch, (void)H, (void)W, (void)Cin, (void)Wp, (void)out, (void)ep;
    return 0;
#endif
}
