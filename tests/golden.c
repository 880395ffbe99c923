#include "golden.h"
#include "check.h"

#include "io/json.h"
#include "io/npy.h"
#include "unet/model_internal.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>

int golden_load(const char *name, golden_case *g)
{
    memset(g, 0, sizeof *g);
    snprintf(g->dir, sizeof g->dir, "%s", t_data(name));
    char p[700];
    sdunet_error err;
    int nd;
    int64_t sh[8];
    snprintf(p, sizeof p, "%s/sample.npy", g->dir);
    if (sd_npy_read_f32(p, &g->sample, &nd, sh, &err) || nd != 4) {
        printf("  %s\n", err.message);
        return -1;
    }
    g->B = (int)sh[0], g->C = (int)sh[1], g->H = (int)sh[2], g->W = (int)sh[3];
    snprintf(p, sizeof p, "%s/context.npy", g->dir);
    if (sd_npy_read_f32(p, &g->context, &nd, sh, &err) || nd != 3) {
        printf("  %s\n", err.message);
        return -1;
    }
    g->L = (int)sh[1], g->D = (int)sh[2];
    snprintf(p, sizeof p, "%s/expected_f64.npy", g->dir);
    if (sd_npy_read_f64(p, &g->expected, &nd, sh, &err) || nd != 4) {
        printf("  %s\n", err.message);
        return -1;
    }
    g->n_out = (size_t)(sh[0] * sh[1] * sh[2] * sh[3]);
    snprintf(p, sizeof p, "%s/manifest.json", g->dir);
    size_t len;
    char *text = t_read_file(p, &len);
    sd_json *j = NULL;
    if (!text || sd_json_parse(text, len, &j, &err)) {
        free(text);
        printf("  cannot read %s\n", p);
        return -1;
    }
    const sd_json *tp = sd_json_get(sd_json_get(j, "inputs"), "timesteps_per_row");
    if (!tp || tp->type != SD_JSON_ARRAY || tp->len < 1 || tp->len > 16) {
        printf("  %s: no timesteps_per_row\n", p);
        sd_json_free(j);
        free(text);
        return -1;
    }
    g->nt = (int)tp->len;
    for (int i = 0; i < g->nt; i++)
        g->t[i] = (float)tp->items[i].number;
    sd_json_free(j);
    free(text);
    return 0;
}

void golden_free(golden_case *g)
{
    sd_free(g->sample);
    sd_free(g->context);
    sd_free(g->expected);
}

typedef struct trace_ctx {
    const golden_case *g;
    double worst;
    int compared, failed;
} trace_ctx;

static void on_event(void *user, const sd_event *e)
{
    trace_ctx *tc = user;
    if (e->kind != SD_EV_TENSOR || !e->data)
        return;
    char dir[700];
    snprintf(dir, sizeof dir, "%s/trace", tc->g->dir);
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    char file[1400] = "";
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name), k = strlen(e->name);
        /* "NN_<name>.npy" */
        if (n == k + 7 && strncmp(de->d_name + 3, e->name, k) == 0 &&
            strcmp(de->d_name + 3 + k, ".npy") == 0)
            snprintf(file, sizeof file, "%s/%s", dir, de->d_name);
    }
    closedir(d);
    if (!file[0])
        return;
    double *ref;
    int nd;
    int64_t sh[8];
    sdunet_error err;
    if (sd_npy_read_f64(file, &ref, &nd, sh, &err)) {
        printf("  %s\n", err.message);
        tc->failed++;
        return;
    }
    size_t hw = (size_t)e->H * e->W, n = (size_t)e->B * e->C * hw;
    size_t want = 1;
    for (int i = 0; i < nd; i++)
        want *= (size_t)sh[i];
    if (want != n) {
        printf("  trace %s: %zu values, reference has %zu\n", e->name, n, want);
        tc->failed++;
        sd_free(ref);
        return;
    }
    float *nchw = malloc(n * sizeof(float));
    for (int b = 0; b < e->B; b++)
        for (int c = 0; c < e->C; c++)
            for (size_t p = 0; p < hw; p++)
                nchw[((size_t)b * e->C + c) * hw + p] = e->data[((size_t)b * hw + p) * e->C + c];
    double rel = t_rel_l2_f32_f64(nchw, ref, n);
    if (rel > tc->worst)
        tc->worst = rel;
    if (!(rel <= 2e-6)) {
        printf("  trace %s: relative L2 %.3g > 2e-6\n", e->name, rel);
        tc->failed++;
    }
    tc->compared++;
    free(nchw);
    sd_free(ref);
}

double golden_run(sdunet_model *m, const golden_case *g, int check_trace, double *worst_trace,
                  float *out_copy)
{
    float *out = malloc(g->n_out * sizeof(float));
    sdunet_error err;
    trace_ctx tc = {.g = g};
    sdunet_status st =
        sd_model_forward_ev(m, g->sample, g->B, g->C, g->H, g->W, g->t, g->nt, g->context, g->L,
                            g->D, out, check_trace ? on_event : NULL, &tc, &err);
    if (st) {
        printf("  forward failed: %s\n", err.message);
        free(out);
        return -1;
    }
    double rel = t_rel_l2_f32_f64(out, g->expected, g->n_out);
    if (out_copy)
        memcpy(out_copy, out, g->n_out * sizeof(float));
    free(out);
    if (check_trace) {
        if (worst_trace)
            *worst_trace = tc.worst;
        if (tc.compared < 20 || tc.failed) {
            printf("  trace: %d tensors compared, %d failed\n", tc.compared, tc.failed);
            return -1;
        }
    }
    return rel;
}
