/* The tensor table shared by every weight-file reader: dtype facts, scalar
 * conversions, and opening a file by mapping it and dispatching on its
 * contents. */
#include "io/tensorfile.h"
#include "io/ckpt.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
    const char *name;
    size_t size;
} dtype_table[SD_DT_COUNT] = {
    [SD_DT_F32] = {"F32", 4},   [SD_DT_F16] = {"F16", 2},         [SD_DT_BF16] = {"BF16", 2},
    [SD_DT_F64] = {"F64", 8},   [SD_DT_I64] = {"I64", 8},         [SD_DT_I32] = {"I32", 4},
    [SD_DT_I16] = {"I16", 2},   [SD_DT_I8] = {"I8", 1},           [SD_DT_U8] = {"U8", 1},
    [SD_DT_BOOL] = {"BOOL", 1}, [SD_DT_U16] = {"U16", 2},         [SD_DT_U32] = {"U32", 4},
    [SD_DT_U64] = {"U64", 8},   [SD_DT_F8_E4M3] = {"F8_E4M3", 1}, [SD_DT_F8_E5M2] = {"F8_E5M2", 1},
};

size_t sd_dtype_size(sd_dtype dt)
{
    return (unsigned)dt < SD_DT_COUNT ? dtype_table[dt].size : 0;
}

const char *sd_dtype_name(sd_dtype dt)
{
    return (unsigned)dt < SD_DT_COUNT ? dtype_table[dt].name : "?";
}

int sd_dtype_parse(const char *s, sd_dtype *out)
{
    if (!s)
        return -1;
    for (int i = 0; i < SD_DT_COUNT; i++)
        if (strcmp(s, dtype_table[i].name) == 0) {
            if (out)
                *out = (sd_dtype)i;
            return 0;
        }
    return -1;
}

static float bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

float sd_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F;
    uint32_t man = h & 0x3FF;
    if (exp == 0x1F)
        return bits_to_f32(sign | 0x7F800000u | (man << 13));
    if (exp == 0) {
        if (man == 0)
            return bits_to_f32(sign);
        /* Subnormal half: normalise with integer shifts so the result does
         * not depend on the FPU's denormal handling. */
        exp = 113;
        while (!(man & 0x400)) {
            man <<= 1;
            exp--;
        }
        man &= 0x3FF;
        return bits_to_f32(sign | (exp << 23) | (man << 13));
    }
    return bits_to_f32(sign | ((exp + 112) << 23) | (man << 13));
}

float sd_bf16_to_f32(uint16_t b)
{
    return bits_to_f32((uint32_t)b << 16);
}

uint16_t sd_f32_to_f16(float f)
{
    uint32_t x = f32_to_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    x &= 0x7FFFFFFFu;
    if (x > 0x7F800000u) /* NaN: keep some payload, force quiet so it stays NaN */
        return (uint16_t)(sign | 0x7E00 | ((x >> 13) & 0x3FF));
    if (x >= 0x477FF000u) /* >= 65520 rounds past the largest half (65504) */
        return (uint16_t)(sign | 0x7C00);
    if (x < 0x38800000u) {    /* below 2^-14: half subnormal or zero */
        if (x <= 0x33000000u) /* <= 2^-25: rounds (to even) to zero */
            return sign;
        uint32_t e = x >> 23;
        uint32_t m = (x & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126 - e; /* value / 2^-24 = m >> shift */
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1)))
            r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = (x - 0x38000000u) >> 13;
    uint32_t rem = x & 0x1FFF;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1)))
        r++;
    return (uint16_t)(sign | r);
}

uint16_t sd_f32_to_bf16(float f)
{
    uint32_t x = f32_to_bits(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u)
        return (uint16_t)((x >> 16) | 0x40); /* quiet NaN, sign kept */
    /* Round to nearest even; a carry out of the mantissa correctly bumps
     * the exponent, up to Inf for values past the largest bf16. */
    x += 0x7FFFu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

/* Loads assemble little-endian values byte by byte, so the data may be at
 * any alignment and the host may be of either byte order. */
static uint16_t load_le16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t load_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t load_le64(const unsigned char *p)
{
    return (uint64_t)load_le32(p) | ((uint64_t)load_le32(p + 4) << 32);
}

sdunet_status sd_tensor_to_f32(const sd_tensor_info *t, float *dst, sdunet_error *err)
{
    if (!t || (!dst && t->numel))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "sd_tensor_to_f32: NULL argument");
    size_t need;
    if (!sd_mul_size(t->numel, sd_dtype_size(t->dtype), &need) || need > t->nbytes ||
        (t->numel && !t->data))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "tensor %s: data smaller than its shape",
                       t->name ? t->name : "?");
    const unsigned char *src = t->data;
    size_t n = t->numel;
    switch (t->dtype) {
    case SD_DT_F32:
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        if (n)
            memcpy(dst, src, n * 4);
#else
        for (size_t i = 0; i < n; i++)
            dst[i] = bits_to_f32(load_le32(src + 4 * i));
#endif
        return SDUNET_OK;
    case SD_DT_F16:
        for (size_t i = 0; i < n; i++)
            dst[i] = sd_f16_to_f32(load_le16(src + 2 * i));
        return SDUNET_OK;
    case SD_DT_BF16:
        for (size_t i = 0; i < n; i++)
            dst[i] = sd_bf16_to_f32(load_le16(src + 2 * i));
        return SDUNET_OK;
    case SD_DT_F64:
        for (size_t i = 0; i < n; i++) {
            uint64_t u = load_le64(src + 8 * i);
            double d;
            memcpy(&d, &u, sizeof d);
            dst[i] = (float)d;
        }
        return SDUNET_OK;
    default:
        return sd_fail(err, SDUNET_E_UNSUPPORTED,
                       "tensor %s: dtype %s cannot be converted to float32",
                       t->name ? t->name : "?", sd_dtype_name(t->dtype));
    }
}

sdunet_status sd_tensorfile_open(const char *path, sd_tensorfile **out, sdunet_error *err)
{
    if (!path || !out)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "sd_tensorfile_open: NULL argument");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sd_fail(err, SDUNET_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return sd_fail(err, SDUNET_E_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return sd_fail(err, SDUNET_E_IO, "%s: not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return sd_fail(err, SDUNET_E_FORMAT, "%s: empty file", path);
    }
    if (st.st_size < 8) {
        close(fd);
        return sd_fail(err, SDUNET_E_FORMAT, "%s: file too small to be a weight file (%lld bytes)",
                       path, (long long)st.st_size);
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return sd_fail(err, SDUNET_E_IO, "%s: file too large to map", path);
    }
    size_t size = (size_t)st.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    /* The mapping keeps the file alive; the descriptor is not needed. */
    close(fd);
    if (map == MAP_FAILED)
        return sd_fail(err, SDUNET_E_IO, "%s: cannot map: %s", path, strerror(map_errno));

    sd_tensorfile *tf = sd_calloc(1, sizeof *tf);
    if (!tf) {
        munmap(map, size);
        return sd_fail(err, SDUNET_E_NOMEM, "%s: out of memory", path);
    }
    tf->map = map;
    tf->map_size = size;
    sdunet_status rc;
    if (sd_ckpt_probe(map, size))
        rc = sd_ckpt_parse(map, size, tf, err);
    else
        rc = sd_safetensors_parse(map, size, tf, err);
    if (rc != SDUNET_OK) {
        sd_err_prefix(err, path);
        sd_tensorfile_close(tf);
        return rc;
    }
#ifdef MADV_DONTNEED
    /* The .ckpt reader checks the CRC of every storage, which maps the whole
     * file into this process; drop those pages so that loading, which
     * releases each tensor after use, never holds the file and the model at
     * once. They stay in the page cache, so this costs no reads. */
    madvise(map, size, MADV_DONTNEED);
#endif
    *out = tf;
    return SDUNET_OK;
}

void sd_tensorfile_release(const sd_tensorfile *tf, const sd_tensor_info *t)
{
#ifdef MADV_DONTNEED
    if (!tf || !t || !tf->map || !t->data || !t->nbytes)
        return;
    uintptr_t base = (uintptr_t)tf->map, a = (uintptr_t)t->data;
    /* Owned copies (the .ckpt reader's non-contiguous views) are not ours. */
    if (a < base || a - base > tf->map_size || t->nbytes > tf->map_size - (a - base))
        return;
    long pg = sysconf(_SC_PAGESIZE);
    if (pg <= 0)
        return;
    /* Whole pages only: the first and last may hold a neighbour's bytes.
     * Dropping them would be harmless (the next access faults them back
     * in from the page cache) but would cost that neighbour a fault. */
    uintptr_t mask = (uintptr_t)pg - 1;
    uintptr_t lo = (a + mask) & ~mask, hi = (a + t->nbytes) & ~mask;
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
#else
    (void)tf;
    (void)t;
#endif
}

const sd_tensor_info *sd_tensorfile_find(const sd_tensorfile *tf, const char *name)
{
    if (!tf || !name)
        return NULL;
    size_t lo = 0, hi = tf->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(tf->tensors[mid].name, name);
        if (c == 0)
            return &tf->tensors[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

void sd_tensorfile_clear(sd_tensorfile *tf)
{
    if (!tf)
        return;
    if (tf->tensors) {
        for (size_t i = 0; i < tf->count; i++)
            sd_free(tf->tensors[i].name);
        sd_free(tf->tensors);
    }
    if (tf->owned) {
        for (size_t i = 0; i < tf->n_owned; i++)
            sd_free(tf->owned[i]);
        sd_free(tf->owned);
    }
    sd_free(tf->metadata);
    tf->tensors = NULL;
    tf->count = 0;
    tf->owned = NULL;
    tf->n_owned = 0;
    tf->metadata = NULL;
}

sd_tensorfile *sd_tensorfile_retain(sd_tensorfile *tf)
{
    if (tf)
        tf->refs++;
    return tf;
}

void sd_tensorfile_close(sd_tensorfile *tf)
{
    if (!tf)
        return;
    if (tf->refs > 0) {
        tf->refs--; /* another holder still reads it */
        return;
    }
    sd_tensorfile_clear(tf);
    if (tf->map)
        munmap(tf->map, tf->map_size);
    sd_free(tf);
}
