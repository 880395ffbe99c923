/* Helpers for running a model on a golden case folder and comparing. */
#ifndef SD_GOLDEN_H
#define SD_GOLDEN_H

#include "sdunet.h"

typedef struct golden_case {
    char dir[512];
    int B, C, H, W, L, D;
    float t[16];
    int nt;
    float *sample, *context;
    double *expected; /* expected_f64, (B, out, H, W) */
    size_t n_out;
} golden_case;

/* Loads tests/data/NAME: inputs, timesteps (from manifest.json) and expected_f64. */
int golden_load(const char *name, golden_case *g);
void golden_free(golden_case *g);

/* Runs m on g; returns the relative L2 error against expected_f64 (or a
 * negative value on failure, with the message printed). Compares each trace
 * tensor in DIR/trace when check_trace, reporting the worst relative L2 in
 * *worst_trace. */
double golden_run(sdunet_model *m, const golden_case *g, int check_trace, double *worst_trace,
                  float *out_copy);

#endif
