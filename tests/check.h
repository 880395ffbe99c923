/* Minimal test harness: each tests/test_*.c is one program whose main()
 * RUNs test functions; each prints "ok - NAME" or "FAIL - NAME: why" and
 * tests/run.sh adds them up. */
#ifndef SD_CHECK_H
#define SD_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

extern int t_current_failed;
extern int t_total_failed, t_total_passed;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            t_current_failed++;                                                                    \
            fprintf(stdout, "  check failed at %s:%d: %s: ", __FILE__, __LINE__, #cond);           \
            fprintf(stdout, __VA_ARGS__);                                                          \
            fputc('\n', stdout);                                                                   \
        }                                                                                          \
    } while (0)

#define RUN(fn) t_run(#fn, fn)
void t_run(const char *name, void (*fn)(void));
/* Exit status for main: 0 when every test passed. */
int t_summary(void);

/* Path of a file under the test data folder (tests/data or $SDUNET_TEST_DATA);
 * returns a static buffer per call slot (rotating, 8 slots). */
const char *t_data(const char *rel);
/* 1 when SDUNET_TEST_SMALL is set: full-size cases are not run (sanitizer builds). */
int t_small_only(void);

/* Relative L2 error ||a - ref|| / ||ref|| in double. */
double t_rel_l2_f32_f64(const float *a, const double *ref, size_t n);
double t_rel_l2_f32(const float *a, const float *ref, size_t n);
/* Relative L2 of a against the float64 .npy at path (any shape with n
 * elements); INFINITY when it cannot be read or has another size. */
double t_rel_l2_npy(const float *a, const char *path, size_t n);

/* A whole file, malloc'd and NUL-terminated (free with free); NULL if it
 * cannot be read. *size gets the byte count. */
void *t_read_file(const char *path, size_t *size);
/* Writes n bytes; 0 on success. */
int t_write_file(const char *path, const void *data, size_t n);

#if defined(__GNUC__)
#define T_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define T_PRINTF(a, b)
#endif

/* A path in this program's own temporary folder, from a printf format: the
 * folder is made under $TMPDIR (else /tmp) on first use and removed, with
 * everything in it, by t_summary; so test programs running side by side
 * never share a path. Rotating static buffers (8 slots). Exits when the
 * folder cannot be made. */
const char *t_tmp(const char *fmt, ...) T_PRINTF(1, 2);
/* The folder itself (made if need be). */
const char *t_tmp_dir(void);
/* Copies a file; 0 on success. */
int t_copy_file(const char *from, const char *to);

/* Deterministic pseudo-random floats in [-1, 1) for kernel tests. */
void t_fill_random(float *x, size_t n, unsigned long long seed);

#endif
