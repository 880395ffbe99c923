#include "check.h"
#include "io/npy.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

static char g_tmp_dir[512];

/* Removes path and, for a folder, everything in it (links themselves, not
 * what they point to); 0 on success. */
static int remove_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return -1;
    int rc = 0;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d)
            return -1;
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char sub[1024];
            if (snprintf(sub, sizeof sub, "%s/%s", path, e->d_name) >= (int)sizeof sub ||
                remove_tree(sub) != 0)
                rc = -1;
        }
        closedir(d);
        if (rmdir(path) != 0)
            rc = -1;
    } else if (unlink(path) != 0) {
        rc = -1;
    }
    return rc;
}

int t_summary(void)
{
    if (g_tmp_dir[0]) {
        if (remove_tree(g_tmp_dir) != 0)
            printf("  could not remove %s\n", g_tmp_dir);
        g_tmp_dir[0] = 0;
    }
    return t_total_failed ? 1 : 0;
}

const char *t_tmp_dir(void)
{
    if (!g_tmp_dir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(g_tmp_dir, sizeof g_tmp_dir, "%s/sdunet-test-XXXXXX",
                 base && *base ? base : "/tmp");
        if (!mkdtemp(g_tmp_dir)) {
            printf("FAIL - cannot make a temporary folder %s\n", g_tmp_dir);
            exit(1);
        }
    }
    return g_tmp_dir;
}

const char *t_tmp(const char *fmt, ...)
{
    static char slots[8][1024];
    static int next;
    char *buf = slots[next++ & 7];
    int n = snprintf(buf, sizeof slots[0], "%s/", t_tmp_dir());
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + n, sizeof slots[0] - (size_t)n, fmt, ap);
    va_end(ap);
    return buf;
}

int t_copy_file(const char *from, const char *to)
{
    size_t n;
    void *d = t_read_file(from, &n);
    int rc = d ? t_write_file(to, d, n) : -1;
    free(d);
    return rc;
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
