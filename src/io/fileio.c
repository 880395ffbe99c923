#include "io/fileio.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int sd_write_all(int fd, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    while (n) {
        size_t chunk = n < ((size_t)1 << 30) ? n : ((size_t)1 << 30);
        ssize_t w = write(fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int sd_is_regular(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int sd_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int sd_path_join(char *out, size_t len, const char *dir, const char *sub, const char *name)
{
    size_t dl = strlen(dir);
    int n = snprintf(out, len, "%s%s%s%s%s", dir, dl && dir[dl - 1] != '/' ? "/" : "", sub,
                     sub[0] ? "/" : "", name);
    return n >= 0 && (size_t)n < len;
}

char *sd_read_small_file(const char *path, size_t max, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            size_t nc = cap ? 2 * cap : 8192;
            char *nb = cap > max ? NULL : realloc(buf, nc);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
            cap = nc;
        }
        size_t got = fread(buf + n, 1, 4096, f);
        n += got;
        if (got < 4096)
            break;
    }
    int bad = ferror(f) || n > max;
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

int sd_valid_variant(const char *v)
{
    if (!*v || strlen(v) > 64)
        return 0;
    for (const char *p = v; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-'))
            return 0;
    return 1;
}

int sd_find_model_weights(const char *dir, const char *sub, const char *stem, const char *variant,
                          char *weights, size_t wlen, char *config, size_t clen)
{
    char names[3][160];
    int nn = 0;
    if (variant) {
        snprintf(names[nn++], sizeof names[0], "%s.%s.safetensors", stem, variant);
        snprintf(names[nn++], sizeof names[0], "%s.%s.bin", stem, variant);
    } else {
        snprintf(names[nn++], sizeof names[0], "%s.safetensors", stem);
        snprintf(names[nn++], sizeof names[0], "%s.bin", stem);
        snprintf(names[nn++], sizeof names[0], "%s.fp16.safetensors", stem);
    }
    const char *subs[2] = {sub, ""};
    config[0] = 0;
    for (int s = 0; s < 2; s++)
        for (int k = 0; k < nn; k++) {
            if (!sd_path_join(weights, wlen, dir, subs[s], names[k]))
                return -1;
            if (!sd_is_regular(weights))
                continue;
            if (!sd_path_join(config, clen, dir, subs[s], "config.json") || !sd_is_regular(config))
                config[0] = 0;
            return 1;
        }
    weights[0] = 0;
    return 0;
}
