/* GFLOP/s of the GEMM, the 3x3 convolution and attention at UNet shapes.
 * Usage: bench_gemm [threads...] (default: 1 and all CPUs); SD_KERNELS=portable
 * picks the kernel set, SD_CONV=direct|winograd the 3x3 method, SD_FAST=1 the fast mode (Winograd
 * F(4x4, 3x3) where it pays; with SD_CONV=winograd, everywhere), SD_GEGLU=unfused the feed-forward
 * projection as GEMM + sd_geglu instead of sd_gemm_geglu, SD_WEIGHTS=f16|bf16 stores the weight
 * panels in 16 bits (widened in the kernels), SD_BENCH_FILTER=text runs only the
 * cases whose "kind shape" label contains it, SD_BENCH_SECONDS=s sets the time per case. Each case
 * runs until ~0.3 s have passed and reports the best repetition (1 thread: per CPU second, see
 * now()). */
#include "bench_util.h"
#include "engine/kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* One thread: this thread's CPU time, so other load on the machine (time
 * slices lost to other processes) does not count. Several: wall time. */
static int g_cpu_clock;
static double g_seconds = 0.3;  /* per case and thread count; SD_BENCH_SECONDS */
static int g_geglu_fused = 1;   /* SD_GEGLU=unfused: GEMM into [hidden | gate], then sd_geglu */
static int g_store = SD_WT_F32; /* SD_WEIGHTS=f16|bf16: weight panels stored in 16 bits */

/* sd_pack / sd_pack_geglu (geglu_F > 0) with the panels stored as g_store. */
static sdunet_status pack_w(const sd_kernels *kern, const float *w, int N, int Cin, int taps,
                            int geglu_F, sd_packed *P)
{
    sd_wsrc src = {.type = SD_WT_F32, .parts = 1, .rows = N, .part = {w}};
    return sd_pack_src(kern, &src, N, Cin, taps, geglu_F, g_store, P);
}

static double now(void)
{
    return bench_now(g_cpu_clock);
}

typedef struct {
    const char *kind;
    int a, b, c, d; /* gemm: M N K; conv: H W Cin Cout; attn: N heads dh Nk */
} bench_case;

static double run_case(const sd_exec *ex, const bench_case *bc)
{
    double flops, best = 1e30;
    sd_packed P = {0};
    float *A = NULL, *C = NULL, *k = NULL, *v = NULL;
    float *H = NULL; /* geglu unfused: the [hidden | gate] product */
    if (strcmp(bc->kind, "gemm") == 0 || strcmp(bc->kind, "geglu") == 0) {
        const int geglu = strcmp(bc->kind, "geglu") == 0, M = bc->a, K = bc->c;
        const int N = geglu ? 2 * bc->b : bc->b;
        float *w = bench_rnd((size_t)N * K, 1);
        if (pack_w(ex->kern, w, N, K, 1, geglu && g_geglu_fused ? N / 2 : 0, &P) != SDUNET_OK)
            exit(1);
        sd_free(w);
        A = bench_rnd((size_t)M * K, 2);
        C = bench_rnd((size_t)M * N, 3);
        if (geglu && !g_geglu_fused)
            H = bench_rnd((size_t)M * N, 4);
        flops = 2.0 * M * N * K;
    } else if (strcmp(bc->kind, "conv") == 0) {
        int H = bc->a, W = bc->b, Cin = bc->c, N = bc->d;
        float *w = bench_rnd((size_t)N * Cin * 9, 1);
        if (pack_w(ex->kern, w, N, Cin, 9, 0, &P) != SDUNET_OK)
            exit(1);
        sd_free(w);
        A = bench_rnd((size_t)H * W * Cin, 2);
        C = bench_rnd((size_t)H * W * N, 3);
        flops = 2.0 * H * W * N * 9.0 * Cin;
    } else {
        int Nq = bc->a, heads = bc->b, dh = bc->c, Nk = bc->d;
        A = bench_rnd((size_t)Nq * heads * dh, 2);
        k = bench_rnd((size_t)Nk * heads * dh, 4);
        v = bench_rnd((size_t)Nk * heads * dh, 5);
        C = bench_rnd((size_t)Nq * heads * dh, 3);
        flops = 4.0 * Nq * Nk * dh * heads;
    }
    float *bias = bench_rnd(8192, 6);
    double start = now();
    int reps = 0;
    do {
        double t0 = now();
        if (strcmp(bc->kind, "gemm") == 0) {
            sd_epilogue ep = {.bias = bias}; /* a Linear / 1x1 conv */
            sd_gemm(ex, bc->a, A, bc->c, &P, C, bc->b, &ep);
        } else if (strcmp(bc->kind, "geglu") == 0) { /* the feed-forward's projection */
            sd_epilogue ep = {.bias = bias};
            if (g_geglu_fused) {
                sd_gemm_geglu(ex, bc->a, A, bc->c, &P, bias, C, bc->b);
            } else {
                sd_gemm(ex, bc->a, A, bc->c, &P, H, 2 * bc->b, &ep);
                sd_geglu(ex, H, bc->a, bc->b, C);
            }
        } else if (strcmp(bc->kind, "conv") == 0) {
            sd_epilogue ep = {.bias = bias, .residual = C, .ld_res = bc->d}; /* resnet conv2 */
            sd_conv3x3(ex, A, 1, bc->a, bc->b, bc->c, 1, &P, C, &ep);
        } else {
            int ld = bc->b * bc->c;
            sd_attention(ex, 1, bc->b, bc->c, bc->a, bc->d, A, ld, k, ld, v, ld, C, ld,
                         1.0f / sqrtf((float)bc->c));
        }
        double t = now() - t0;
        best = t < best ? t : best;
        reps++;
    } while (now() - start < g_seconds || reps < 2);
    sd_packed_free(&P);
    sd_free(H);
    sd_free(bias);
    sd_free(A);
    sd_free(C);
    sd_free(k);
    sd_free(v);
    return flops / best * 1e-9;
}

int main(int argc, char **argv)
{
    const sd_kernels *kern = sd_kernels_select(getenv("SD_KERNELS"));
    if (!kern) {
        fprintf(stderr, "kernel set %s unavailable\n", getenv("SD_KERNELS"));
        return 1;
    }
    /* SD_CONV=direct|winograd forces the 3x3 method (default: as a model picks) */
    sd_conv_algo conv_algo = sd_conv_algo_parse(getenv("SD_CONV"));
    const int fast = getenv("SD_FAST") && strcmp(getenv("SD_FAST"), "1") == 0;
    if (getenv("SD_GEGLU"))
        g_geglu_fused = strcmp(getenv("SD_GEGLU"), "unfused") != 0;
    if (getenv("SD_WEIGHTS"))
        g_store = strcmp(getenv("SD_WEIGHTS"), "f16") == 0    ? SD_WT_F16
                  : strcmp(getenv("SD_WEIGHTS"), "bf16") == 0 ? SD_WT_BF16
                                                              : SD_WT_F32;
    if (getenv("SD_BENCH_SECONDS"))
        g_seconds = atof(getenv("SD_BENCH_SECONDS"));
    int threads[8], nt = 0;
    for (int i = 1; i < argc && nt < 8; i++)
        threads[nt++] = atoi(argv[i]);
    if (nt == 0) {
        threads[nt++] = 1;
        if (sd_cpu_count() > 1)
            threads[nt++] = sd_cpu_count();
    }
    static const bench_case cases[] = {
        {"gemm", 4096, 320, 2880, 0},
        {"gemm", 1024, 640, 5760, 0},
        {"gemm", 4096, 320, 320, 0},
        {"gemm", 4096, 2560, 320, 0},
        {"gemm", 4096, 320, 1280, 0},
        {"gemm", 256, 1280, 11520, 0},
        {"gemm", 64, 1280, 11520, 0},
        {"gemm", 77, 320, 768, 0},
        /* M F K: the GEGLU feed-forward projection, 2F outputs (SD_GEGLU) */
        {"geglu", 4096, 1280, 320, 0},
        {"geglu", 1024, 2560, 640, 0},
        {"geglu", 256, 5120, 1280, 0},
        {"conv", 64, 64, 320, 320},
        {"conv", 32, 32, 640, 640},
        {"conv", 16, 16, 1280, 1280},
        {"conv", 16, 16, 2560, 1280},
        {"conv", 64, 64, 960, 320},
        {"conv", 32, 32, 1920, 640},
        {"conv", 64, 64, 640, 320},
        {"conv", 8, 8, 1280, 1280},
        {"conv", 16, 8, 1280, 1280}, /* the 8x8 level at batch 2 (32 tiles) */
        /* the VAE decoder's levels */
        {"conv", 64, 64, 512, 512},
        {"conv", 128, 128, 512, 512},
        {"conv", 256, 256, 256, 256},
        {"conv", 512, 512, 128, 128},
        {"attn", 4096, 8, 40, 4096},
        {"attn", 4096, 8, 40, 77},
        {"attn", 1024, 8, 80, 1024},
        {"attn", 256, 8, 160, 256},
    };
    printf("kernel set: %s\n%-6s %-22s", kern->name, "kind", "shape");
    for (int t = 0; t < nt; t++)
        printf("  %2d thr GF/s", threads[t]);
    printf("\n");
    sd_pool *pools[8];
    for (int t = 0; t < nt; t++)
        if (sd_pool_create(threads[t], &pools[t], NULL) != SDUNET_OK)
            return 1;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const bench_case *bc = &cases[c];
        char shape[64];
        if (strcmp(bc->kind, "gemm") == 0)
            snprintf(shape, sizeof shape, "M%d N%d K%d", bc->a, bc->b, bc->c);
        else if (strcmp(bc->kind, "geglu") == 0)
            snprintf(shape, sizeof shape, "M%d F%d K%d", bc->a, bc->b, bc->c);
        else if (strcmp(bc->kind, "conv") == 0)
            snprintf(shape, sizeof shape, "%dx%dx%d->%d", bc->a, bc->b, bc->c, bc->d);
        else
            snprintf(shape, sizeof shape, "Nq%d h%d dh%d Nk%d", bc->a, bc->b, bc->c, bc->d);
        const char *filter = getenv("SD_BENCH_FILTER"); /* substring of "kind shape" */
        char label[96];
        snprintf(label, sizeof label, "%s %s", bc->kind, shape);
        if (filter && !strstr(label, filter))
            continue;
        printf("%-6s %-22s", bc->kind, shape);
        fflush(stdout);
        for (int t = 0; t < nt; t++) {
            sd_workspace ws = {0}; /* as in a model: scratch kept between calls */
            sd_exec ex = {
                .pool = pools[t], .kern = kern, .ws = &ws, .conv = conv_algo, .fast = fast};
            g_cpu_clock = threads[t] == 1;
            printf("  %11.1f", run_case(&ex, bc));
            fflush(stdout);
            sd_workspace_free(&ws);
        }
        printf("\n");
    }
    for (int t = 0; t < nt; t++)
        sd_pool_destroy(pools[t]);
    return 0;
}
