#include "check.h"
#include "io/npy.h"

#include <stdint.h>
#include <string.h>

int t_current_failed, t_total_failed, t_total_passed;

void t_run(const char *name, void (*fn)(void))
{
    t_current_failed = 0;
    fn();
    if (t_current_failed) {
        t_total_failed++;
        printf("FAIL - %s\n", name);
    } else {
        t_total_passed++;
        printf("ok - %s\n", name);
    }
    fflush(stdout);
}

int t_summary(void)
{
    return t_total_failed ? 1 : 0;
}

const char *t_data(const char *rel)
{
    static char slots[8][1024];
    static int next;
    const char *root = getenv("SDUNET_TEST_DATA");
    if (!root || !*root)
        root = "tests/data";
    char *buf = slots[next++ & 7];
    snprintf(buf, sizeof slots[0], "%s/%s", root, rel);
    return buf;
}

int t_small_only(void)
{
    const char *s = getenv("SDUNET_TEST_SMALL");
    return s && *s && strcmp(s, "0") != 0;
}

double t_rel_l2_f32_f64(const float *a, const double *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    if (den == 0)
        return num == 0 ? 0 : INFINITY;
    return sqrt(num / den);
}

double t_rel_l2_f32(const float *a, const float *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    if (den == 0)
        return num == 0 ? 0 : INFINITY;
    return sqrt(num / den);
}

void t_fill_random(float *x, size_t n, unsigned long long seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        x[i] = (float)((double)(s >> 40) * (1.0 / 8388608.0) - 1.0);
    }
}

void *t_read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0)
        buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        *size = (size_t)n;
    }
    return buf;
}

int t_write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = n ? fwrite(data, 1, n, f) : 0;
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

double t_rel_l2_npy(const float *a, const char *path, size_t n)
{
    double *ref = NULL;
    int ndim;
    int64_t shape[SD_MAX_DIMS];
    sdunet_error err;
    if (sd_npy_read_f64(path, &ref, &ndim, shape, &err) != SDUNET_OK)
        return INFINITY;
    size_t m = 1;
    for (int i = 0; i < ndim; i++)
        m *= (size_t)shape[i];
    double e = m == n ? t_rel_l2_f32_f64(a, ref, n) : INFINITY;
    sd_free(ref);
    return e;
}
