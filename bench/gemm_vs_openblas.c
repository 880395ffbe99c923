/* sdunet's GEMM vs OpenBLAS's cblas_sgemm at the SD1.5 UNet's shapes (64x64
 * latent, batch 1): the linear layers and 1x1 convolutions (M tokens x N
 * outputs x K inputs) and the 3x3 convolutions as GEMMs (K = 9*Cin).
 *
 * Both compute C[M][N] = A[M][K] * W[N][K]^T in float32 with no epilogue:
 * ours through sd_gemm on weights packed once beforehand (as the model does at
 * load), OpenBLAS as cblas_sgemm(RowMajor, NoTrans, Trans) on the PyTorch
 * layout (as PyTorch's Linear does). For the 3x3 rows, OpenBLAS gets a
 * ready-made im2col matrix (its gather is not timed), and the extra column
 * "conv3x3" times our sd_conv3x3, the implicit GEMM that gathers the 9 taps
 * itself from the (H, W, Cin) activation.
 *
 * Usage: gemm_vs_openblas [threads]   (default 1; ours: pool of that size or
 * none for 1; OpenBLAS: openblas_set_num_threads). SD_BENCH_SECONDS=s per case
 * and implementation (default 0.3); SD_BENCH_FILTER=text runs only the cases
 * whose label contains it. Timing: best repetition, the two implementations
 * alternating within a case; with 1 thread per thread CPU second (time slices
 * lost to other load on the machine do not count), else wall time. */
#include "bench_util.h"
#include "engine/kernels.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Not declared by every cblas.h. */
extern void openblas_set_num_threads(int);
extern char *openblas_get_corename(void);
extern char *openblas_get_config(void);
extern int openblas_get_num_threads(void);

static int g_cpu_clock;

static double now(void)
{
    return bench_now(g_cpu_clock);
}

typedef struct {
    const char *what; /* the layer */
    int M, N, K;
    int conv_hw, conv_cin; /* 3x3 conv (stride 1): H = W = conv_hw; else 0 */
} gcase;

/* SD1.5 at 64x64: tokens 4096 / 1024 / 256 / 64 at channels 320 / 640 / 1280 / 1280. */
static const gcase cases[] = {
    /* linear / 1x1 conv */
    {"attn1 q|k|v 320", 4096, 960, 320, 0, 0},
    {"proj_in/out, to_out 320", 4096, 320, 320, 0, 0},
    {"GEGLU proj 320", 4096, 2560, 320, 0, 0},
    {"ff.net.2 320", 4096, 320, 1280, 0, 0},
    {"attn1 q|k|v 640", 1024, 1920, 640, 0, 0},
    {"proj/to_out 640", 1024, 640, 640, 0, 0},
    {"GEGLU proj 640", 1024, 5120, 640, 0, 0},
    {"ff.net.2 640", 1024, 640, 2560, 0, 0},
    {"shortcut 320->640", 1024, 640, 320, 0, 0},
    {"attn1 q|k|v 1280", 256, 3840, 1280, 0, 0},
    {"proj/to_out 1280", 256, 1280, 1280, 0, 0},
    {"GEGLU proj 1280", 256, 10240, 1280, 0, 0},
    {"ff.net.2 1280", 256, 1280, 5120, 0, 0},
    {"GEGLU proj 1280 (mid)", 64, 10240, 1280, 0, 0},
    {"ff.net.2 1280 (mid)", 64, 1280, 5120, 0, 0},
    {"attn2 k|v 320 (context)", 77, 640, 768, 0, 0},
    {"attn2 k|v 1280 (context)", 77, 2560, 768, 0, 0},
    /* 3x3 conv as GEMM, K = 9*Cin */
    {"conv 320->320 @64", 4096, 320, 2880, 64, 320},
    {"conv 640->320 @64 (up)", 4096, 320, 5760, 64, 640},
    {"conv 320->640 @32", 1024, 640, 2880, 32, 320},
    {"conv 640->640 @32", 1024, 640, 5760, 32, 640},
    {"conv 640->1280 @16", 256, 1280, 5760, 16, 640},
    {"conv 1280->1280 @16", 256, 1280, 11520, 16, 1280},
    {"conv 1280->1280 @8", 64, 1280, 11520, 8, 1280},
    {"conv 2560->1280 @8 (up)", 64, 1280, 23040, 8, 2560},
    {"conv_out 320->4 @64", 4096, 4, 2880, 64, 320},
};

/* im2col of a (H, W, Cin) channels-last image, padding 1: row m = y*W + x,
 * column k = tap*Cin + ci (the order sd_pack uses for OIHW weights). */
static void im2col(const float *in, int H, int W, int Cin, float *out)
{
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int t = 0; t < 9; t++) {
                int yy = y + t / 3 - 1, xx = x + t % 3 - 1;
                float *d = out + ((size_t)(y * W + x) * 9 + t) * Cin;
                if (yy < 0 || yy >= H || xx < 0 || xx >= W)
                    memset(d, 0, sizeof(float) * Cin);
                else
                    memcpy(d, in + ((size_t)yy * W + xx) * Cin, sizeof(float) * Cin);
            }
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1)
        threads = 1;
    double seconds = getenv("SD_BENCH_SECONDS") ? atof(getenv("SD_BENCH_SECONDS")) : 0.3;
    const char *filter = getenv("SD_BENCH_FILTER");
    const sd_kernels *kern = sd_kernels_select(NULL);
    if (!kern)
        return 1;
    sd_pool *pool = NULL;
    if (threads > 1 && sd_pool_create(threads, &pool, NULL) != SDUNET_OK)
        return 1;
    sd_workspace ws = {0}; /* scratch kept between calls, as the model does */
    sd_exec ex = {.pool = pool, .kern = kern, .ws = &ws};
    openblas_set_num_threads(threads);
    g_cpu_clock = threads == 1;
    printf("sdunet kernels: %s; OpenBLAS %s, core %s, %d thread(s); %s; best of %.2f s each\n",
           kern->name, openblas_get_config(), openblas_get_corename(), openblas_get_num_threads(),
           g_cpu_clock ? "thread CPU time" : "wall time", seconds);
    printf("%-26s %5s %5s %6s %10s %10s %8s %10s %9s\n", "layer", "M", "N", "K", "ours GF/s",
           "OBLAS GF/s", "ours/OB", "conv3x3", "rel diff");
    double logsum = 0;
    int n = 0;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const gcase *g = &cases[c];
        if (filter && !strstr(g->what, filter))
            continue;
        const int M = g->M, N = g->N, K = g->K;
        float *w = bench_rnd((size_t)N * K, 1); /* [N][K]: Linear layout; conv: [N][Cin][9] */
        float *A = bench_rnd((size_t)M * K, 2);
        float *C1 = bench_rnd((size_t)M * N, 3), *C2 = bench_rnd((size_t)M * N, 3);
        float *wt = NULL, *img = NULL;
        sd_packed P = {0};
        if (g->conv_hw) {
            /* OIHW [N][Cin][9] for sd_pack; OpenBLAS gets [N][9][Cin] so that
             * its columns match im2col's k = tap*Cin + ci. */
            wt = sd_alloc(sizeof(float) * (size_t)N * K);
            for (int o = 0; o < N; o++)
                for (int ci = 0; ci < g->conv_cin; ci++)
                    for (int t = 0; t < 9; t++)
                        wt[((size_t)o * 9 + t) * g->conv_cin + ci] =
                            w[((size_t)o * g->conv_cin + ci) * 9 + t];
            img = bench_rnd((size_t)g->conv_hw * g->conv_hw * g->conv_cin, 4);
            im2col(img, g->conv_hw, g->conv_hw, g->conv_cin, A);
            if (sd_pack(kern, w, N, g->conv_cin, 9, &P) != SDUNET_OK)
                return 1;
        } else if (sd_pack(kern, w, N, K, 1, &P) != SDUNET_OK) {
            return 1;
        }
        const float *wb = wt ? wt : w;
        double best_ours = 1e30, best_ob = 1e30, best_conv = 1e30, t_ours = 0, t_ob = 0, t_conv = 0;
        int reps = 0;
        while (reps < 2 || t_ours < seconds || t_ob < seconds || (img && t_conv < seconds)) {
            double t0 = now();
            sd_gemm(&ex, M, A, K, &P, C1, N, NULL);
            double t1 = now();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, wb, K, 0.0f,
                        C2, N);
            double t2 = now();
            t_ours += t1 - t0;
            t_ob += t2 - t1;
            best_ours = fmin(best_ours, t1 - t0);
            best_ob = fmin(best_ob, t2 - t1);
            if (img) {
                double t3 = now();
                sd_conv3x3(&ex, img, 1, g->conv_hw, g->conv_hw, g->conv_cin, 1, &P, C1, NULL);
                double t4 = now() - t3;
                t_conv += t4;
                best_conv = fmin(best_conv, t4);
            }
            reps++;
        }
        /* sanity: both computed the same product (for 3x3 rows C1 last
         * held sd_conv3x3's output, so this checks the implicit GEMM too) */
        double d = 0, r = 0;
        for (size_t i = 0; i < (size_t)M * N; i++) {
            d += ((double)C1[i] - C2[i]) * ((double)C1[i] - C2[i]);
            r += (double)C2[i] * C2[i];
        }
        double fl = 2.0 * M * N * K * 1e-9;
        double go = fl / best_ours, gb = fl / best_ob;
        char conv[16] = "-";
        if (img)
            snprintf(conv, sizeof conv, "%.1f", fl / best_conv);
        printf("%-26s %5d %5d %6d %10.1f %10.1f %8.2f %10s %9.1e\n", g->what, M, N, K, go, gb,
               go / gb, conv, sqrt(d / (r > 0 ? r : 1)));
        fflush(stdout);
        logsum += log(go / gb);
        n++;
        sd_packed_free(&P);
        sd_free(w);
        sd_free(wt);
        sd_free(img);
        sd_free(A);
        sd_free(C1);
        sd_free(C2);
    }
    if (n)
        printf("geometric mean ours/OpenBLAS over %d shapes: %.2f\n", n, exp(logsum / n));
    sd_workspace_free(&ws);
    sd_pool_destroy(pool);
    return 0;
}
