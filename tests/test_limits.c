/* Resource limits on hostile files: inputs that claim (or nest) far more than
 * they hold must get a clear error, and the reader must not allocate what
 * they claim. Each case runs in a child process, which measures its peak
 * resident set around the reader call (getrusage ru_maxrss) and, outside
 * sanitizer builds (ASan and TSan reserve terabytes of address space),
 * also runs under an RLIMIT_AS of its current size plus the case's budget,
 * so an allocation past the budget fails instead of merely being counted:
 * the reader would then report SDUNET_E_NOMEM instead of the expected error.
 * A crash, a hang or the wrong error fails the case. */
#include "check.h"
#include "ckpt_build.h"

#include "io/ckpt.h"
#include "io/json.h"
#include "io/npy.h"
#include "io/tensorfile.h"

#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define T_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) ||                         \
    __has_feature(memory_sanitizer)
#define T_SANITIZED 1
#endif
#endif
#ifndef T_SANITIZED
#define T_SANITIZED 0
#endif

/* ------------------------------------------------------------ inputs */

typedef struct input {
    uint8_t *p;
    size_t n;
    int mapped; /* p is an anonymous mapping (untouched pages cost no memory) */
} input;

static int in_alloc(input *in, size_t n)
{
    in->p = malloc(n ? n : 1);
    in->n = n;
    in->mapped = 0;
    return in->p != NULL;
}

/* Appends formatted text; the buffer is sized by the caller up front so the
 * case's memory is one allocation made before the measurement starts. */
static void in_printf(input *in, size_t *len, const char *fmt, ...) SD_PRINTF(3, 4);
static void in_printf(input *in, size_t *len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf((char *)in->p + *len, in->n - *len, fmt, ap);
    va_end(ap);
    if (k > 0)
        *len += (size_t)k < in->n - *len ? (size_t)k : in->n - *len - 1;
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* A safetensors image: the 8-byte length, `header`, then `data_bytes` zero
 * bytes of data. */
static int safetensors_image(input *in, const char *header, size_t data_bytes)
{
    size_t h = strlen(header);
    if (!in_alloc(in, 8 + h + data_bytes))
        return 0;
    put_le64(in->p, h);
    memcpy(in->p + 8, header, h);
    memset(in->p + 8 + h, 0, data_bytes);
    return 1;
}

/* A stored zip holding a/data.pkl = pickle and a/data/0 = 256 zero bytes,
 * the shape of a torch.save archive (tests/ckpt_build's writer, copied into
 * the case's accounted input). */
static int ckpt_image(input *in, const uint8_t *pickle, size_t pn)
{
    static const uint8_t storage[256];
    zw z = {0};
    zw_add(&z, "a/data.pkl", pickle, pn, 0);
    zw_add(&z, "a/data/0", storage, sizeof storage, 0);
    zw_finish(&z, 0);
    int ok = in_alloc(in, z.out.n);
    if (ok)
        memcpy(in->p, z.out.p, z.out.n);
    bb_free(&z.out);
    return ok;
}

/* A pickle: PROTO 2, `head`, `reps` copies of `unit`, then `tail` (lengths
 * given: the opcodes hold NUL bytes). Built in a temporary buffer that is
 * freed before the case's measurement. */
static int pickle_ckpt(input *in, const char *head, size_t head_len, const char *unit,
                       size_t unit_len, size_t reps, const char *tail, size_t tail_len)
{
    size_t n = 2 + head_len + unit_len * reps + tail_len;
    uint8_t *pk = malloc(n);
    if (!pk)
        return 0;
    pk[0] = 0x80;
    pk[1] = 2;
    memcpy(pk + 2, head, head_len);
    for (size_t i = 0; i < reps; i++)
        memcpy(pk + 2 + head_len + i * unit_len, unit, unit_len);
    memcpy(pk + 2 + head_len + unit_len * reps, tail, tail_len);
    int ok = ckpt_image(in, pk, n);
    free(pk);
    return ok;
}

/* --------------------------------------------------------------- cases */

enum reader { R_SAFETENSORS, R_NPY, R_JSON, R_CKPT };

typedef struct limit_case {
    const char *name;
    enum reader reader;
    sdunet_status want;
    const char *needle; /* expected in the message */
    size_t budget_mb;   /* growth allowed while the reader runs */
    int (*build)(input *in);
} limit_case;

static int st_trillion(input *in)
{
    /* 1e12 float32 elements with offsets that agree with the shape. */
    return safetensors_image(in,
                             "{\"big\":{\"dtype\":\"F32\",\"shape\":[1000000,1000000],"
                             "\"data_offsets\":[0,4000000000000]}}",
                             16);
}

static int st_overflow(input *in)
{
    return safetensors_image(in,
                             "{\"big\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296,"
                             "4294967296],\"data_offsets\":[0,8]}}",
                             8);
}

static int st_header_claim(input *in)
{
    /* The length field claims a 100 MB header; the file has 64 bytes. */
    if (!in_alloc(in, 64))
        return 0;
    memset(in->p, ' ', 64);
    put_le64(in->p, 100u * 1000 * 1000);
    return 1;
}

static int st_header_over(input *in)
{
    /* A file that really has 100 MB + 1 of header: refused by its length
     * before a byte of it is read. The pages are never touched. */
    size_t n = 8 + (size_t)100 * 1000 * 1000 + 1 + 64;
    void *p =
        mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return 0;
    in->p = p;
    in->n = n;
    in->mapped = 1;
    put_le64(in->p, (uint64_t)100 * 1000 * 1000 + 1);
    return 1;
}

static int st_million(input *in)
{
    /* 1,000,001 entries, the smallest that parse as JSON: the count is
     * refused before any entry is looked at. */
    const size_t n = 1000001;
    if (!in_alloc(in, 8 + 16 * n + 16))
        return 0;
    size_t len = 8;
    in_printf(in, &len, "{");
    for (size_t i = 0; i < n; i++)
        in_printf(in, &len, "%s\"t%zu\":0", i ? "," : "", i);
    in_printf(in, &len, "}");
    put_le64(in->p, len - 8);
    in->n = len;
    return 1;
}

static int st_flat_numbers(input *in)
{
    /* The costliest header per byte for the JSON DOM: 10 MB of "[0,0,...]"
     * (5e6 values). Pins the documented worst case, ~64 bytes per byte. */
    const size_t n = 10 * 1000 * 1000;
    if (!in_alloc(in, 8 + n + 2))
        return 0;
    uint8_t *h = in->p + 8;
    h[0] = '[';
    size_t len = 1;
    while (len + 2 < n) {
        h[len++] = '0';
        h[len++] = ',';
    }
    h[len++] = '0';
    h[len++] = ']';
    put_le64(in->p, len);
    in->n = 8 + len;
    return 1;
}

static int npy_header_image(input *in, const char *dict, int major, uint32_t claim, size_t data)
{
    size_t lb = major == 1 ? 2 : 4, dl = strlen(dict);
    if (!in_alloc(in, 8 + lb + dl + 1 + data))
        return 0;
    memcpy(in->p, "\x93NUMPY", 6);
    in->p[6] = (uint8_t)major;
    in->p[7] = 0;
    uint32_t hl = claim ? claim : (uint32_t)(dl + 1);
    for (size_t i = 0; i < lb; i++)
        in->p[8 + i] = (uint8_t)(hl >> (8 * i));
    memcpy(in->p + 8 + lb, dict, dl);
    in->p[8 + lb + dl] = '\n';
    memset(in->p + 9 + lb + dl, 0, data);
    return 1;
}

static int npy_huge(input *in)
{
    return npy_header_image(
        in, "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000, 1000), }", 1, 0,
        64);
}

static int npy_overflow(input *in)
{
    return npy_header_image(
        in, "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", 1, 0,
        64);
}

static int npy_header_claim(input *in)
{
    /* Version 2 header length field: 4 GB - 1. */
    return npy_header_image(in, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", 2,
                            0xFFFFFFFFu, 4);
}

static int json_deep(input *in, char open, char close, const char *between)
{
    const size_t depth = 1000000;
    size_t bl = strlen(between);
    if (!in_alloc(in, depth * (2 + bl) + 1))
        return 0;
    size_t len = 0;
    for (size_t i = 0; i < depth; i++) {
        in->p[len++] = (uint8_t)open;
        memcpy(in->p + len, between, bl);
        len += bl;
    }
    for (size_t i = 0; i < depth; i++)
        in->p[len++] = (uint8_t)close;
    in->n = len;
    return 1;
}

static int json_deep_arrays(input *in)
{
    return json_deep(in, '[', ']', "");
}
static int json_deep_objects(input *in)
{
    return json_deep(in, '{', '}', "\"a\":");
}

static int pk_marks(input *in)
{
    return pickle_ckpt(in, "", 0, "(", 1, 1000000, "}.", 2);
}

static int pk_lists(input *in)
{
    return pickle_ckpt(in, "", 0, "]", 1, 1000000, ".", 1);
}

static int pk_memo_nest(input *in)
{
    /* L0, memo 0; then per level: new list, memo 1, APPEND it to the
     * previous one, POP that, BINGET 1 (the new one back on top): lists
     * nested a million deep with a stack of two. The result is a list. */
    static const char unit[] = "]q\x01"
                               "a0h\x01";
    return pickle_ckpt(in, "]q\x00", 3, unit, sizeof unit - 1, 1000000, "0h\x00.", 4);
}

static int pk_storage_claim(input *in)
{
    /* One tensor whose storage claims 1e12 floats; the entry has 256 bytes. */
    static const char pkl[] = "}X\x01\x00\x00\x00w"
                              "ctorch._utils\n_rebuild_tensor_v2\n(("
                              "X\x07\x00\x00\x00storage"
                              "ctorch\nFloatStorage\n"
                              "X\x01\x00\x00\x00"
                              "0"
                              "X\x03\x00\x00\x00"
                              "cpu"
                              "\x8a\x06\x00\x10\xa5\xd4\xe8\x00"
                              "tQ"
                              "K\x00K\x01\x85K\x01\x85\x89)tRs.";
    return pickle_ckpt(in, "", 0, "", 0, 0, pkl, sizeof pkl - 1);
}

static int pk_broadcast(input *in)
{
    /* A (1e6, 1e6) view with strides (0, 0) of one stored float: 4 TB if
     * it were expanded. */
    static const char pkl[] = "}X\x01\x00\x00\x00w"
                              "ctorch._utils\n_rebuild_tensor_v2\n(("
                              "X\x07\x00\x00\x00storage"
                              "ctorch\nFloatStorage\n"
                              "X\x01\x00\x00\x00"
                              "0"
                              "X\x03\x00\x00\x00"
                              "cpu"
                              "K\x01tQ"
                              "K\x00J\x40\x42\x0f\x00J\x40\x42\x0f\x00\x86K\x00K\x00\x86\x89)tRs.";
    return pickle_ckpt(in, "", 0, "", 0, 0, pkl, sizeof pkl - 1);
}

static const limit_case cases[] = {
    {"safetensors shape of 1e12 elements", R_SAFETENSORS, SDUNET_E_FORMAT, "past the data region",
     16, st_trillion},
    {"safetensors shape whose size overflows", R_SAFETENSORS, SDUNET_E_FORMAT, "overflows", 16,
     st_overflow},
    {"safetensors header length of 100 MB in a 64-byte file", R_SAFETENSORS, SDUNET_E_FORMAT,
     "past the end of the file", 16, st_header_claim},
    {"safetensors header of 100 MB + 1", R_SAFETENSORS, SDUNET_E_FORMAT, "limit", 16,
     st_header_over},
    {"safetensors with 1,000,001 tensors", R_SAFETENSORS, SDUNET_E_FORMAT, "limit 1000000", 512,
     st_million},
    {"safetensors 10 MB header of 5e6 numbers", R_SAFETENSORS, SDUNET_E_FORMAT, "not a JSON object",
     1024, st_flat_numbers},
    {"npy shape of 1e15 elements", R_NPY, SDUNET_E_FORMAT, "truncated data", 16, npy_huge},
    {"npy shape whose size overflows", R_NPY, SDUNET_E_FORMAT, "overflows", 16, npy_overflow},
    {"npy header length of 4 GB", R_NPY, SDUNET_E_FORMAT, "truncated header", 16, npy_header_claim},
    {"JSON arrays nested 1e6 deep", R_JSON, SDUNET_E_FORMAT, "nesting deeper", 16,
     json_deep_arrays},
    {"JSON objects nested 1e6 deep", R_JSON, SDUNET_E_FORMAT, "nesting deeper", 16,
     json_deep_objects},
    {"pickle with 1e6 nested MARKs", R_CKPT, SDUNET_E_FORMAT, "MARKs", 16, pk_marks},
    {"pickle stack 1e6 deep", R_CKPT, SDUNET_E_FORMAT, "stack deeper", 16, pk_lists},
    {"pickle lists nested 1e6 deep through the memo", R_CKPT, SDUNET_E_FORMAT, "not a state dict",
     128, pk_memo_nest},
    {"pickle storage claiming 1e12 elements", R_CKPT, SDUNET_E_FORMAT, "claims", 16,
     pk_storage_claim},
    {"pickle view broadcasting 1 float to 1e12", R_CKPT, SDUNET_E_FORMAT, "expand past", 16,
     pk_broadcast},
};

/* ---------------------------------------------------------- the runner */

typedef struct result {
    int built;
    sdunet_status st;
    long grew_kb;
    double seconds;
    char message[512];
} result;

static long max_rss_kb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static size_t vm_size_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    if (f) {
        if (fscanf(f, "%lu", &pages) != 1)
            pages = 0;
        fclose(f);
    }
    return (size_t)pages * (size_t)sysconf(_SC_PAGESIZE);
}

static sdunet_status run_reader(enum reader r, const input *in, sdunet_error *err)
{
    switch (r) {
    case R_SAFETENSORS:
    case R_CKPT: {
        sd_tensorfile tf;
        memset(&tf, 0, sizeof tf);
        sdunet_status st = r == R_CKPT ? sd_ckpt_parse(in->p, in->n, &tf, err)
                                       : sd_safetensors_parse(in->p, in->n, &tf, err);
        if (st == SDUNET_OK)
            sd_tensorfile_clear(&tf);
        return st;
    }
    case R_NPY: {
        float *x = NULL;
        int nd;
        int64_t shape[SD_MAX_DIMS];
        sdunet_status st = sd_npy_parse_f32(in->p, in->n, &x, &nd, shape, err);
        sd_free(x);
        return st;
    }
    case R_JSON: {
        sd_json *j = NULL;
        sdunet_status st = sd_json_parse((const char *)in->p, in->n, &j, err);
        sd_json_free(j);
        return st;
    }
    }
    return SDUNET_E_INVALID_ARG;
}

static void child(const limit_case *c, int fd)
{
    result r;
    memset(&r, 0, sizeof r);
    input in = {0};
    r.built = c->build(&in);
    if (r.built) {
        if (!T_SANITIZED) {
            struct rlimit rl;
            rl.rlim_cur = rl.rlim_max = vm_size_bytes() + c->budget_mb * 1024 * 1024;
            setrlimit(RLIMIT_AS, &rl);
        }
        sdunet_error err;
        memset(&err, 0, sizeof err);
        long before = max_rss_kb();
        struct timeval t0, t1;
        gettimeofday(&t0, NULL);
        r.st = run_reader(c->reader, &in, &err);
        gettimeofday(&t1, NULL);
        r.grew_kb = max_rss_kb() - before;
        r.seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-6 * (double)(t1.tv_usec - t0.tv_usec);
        memcpy(r.message, err.message, sizeof r.message);
    }
    ssize_t w = write(fd, &r, sizeof r);
    _exit(w == (ssize_t)sizeof r ? 0 : 3);
}

static void run_case(const limit_case *c)
{
    int fds[2];
    CHECK(pipe(fds) == 0, "pipe");
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid < 0)
        return;
    if (pid == 0) {
        close(fds[0]);
        /* A reader that loops forever is a failure too, not a stuck suite. */
        alarm(120);
        child(c, fds[1]);
    }
    close(fds[1]);
    result r;
    memset(&r, 0, sizeof r);
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t k = read(fds[0], (char *)&r + got, sizeof r - got);
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    close(fds[0]);
    int ws = 0;
    waitpid(pid, &ws, 0);
    CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0 && got == sizeof r, "%s: the reader %s", c->name,
          WIFSIGNALED(ws) ? strsignal(WTERMSIG(ws)) : "did not report back");
    if (got != sizeof r)
        return;
    CHECK(r.built, "%s: could not build the input", c->name);
    if (!r.built)
        return;
    printf("  # %-52s -> %s in %.2f s, +%ld KB peak: %s\n", c->name, sdunet_status_string(r.st),
           r.seconds, r.grew_kb, r.message);
    CHECK(r.st == c->want, "%s: status %s, expected %s (%s)", c->name, sdunet_status_string(r.st),
          sdunet_status_string(c->want), r.message);
    CHECK(strstr(r.message, c->needle) != NULL, "%s: message lacks '%s': %s", c->name, c->needle,
          r.message);
    CHECK(strchr(r.message, '\n') == NULL, "%s: message is not one line", c->name);
    CHECK(r.grew_kb <= (long)c->budget_mb * 1024, "%s: peak memory grew %ld KB (budget %zu MB)",
          c->name, r.grew_kb, c->budget_mb);
}

static enum reader g_reader;

static void run_reader_cases(void)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (cases[i].reader == g_reader)
            run_case(&cases[i]);
}

static void test_safetensors_limits(void)
{
    g_reader = R_SAFETENSORS;
    run_reader_cases();
}

static void test_npy_limits(void)
{
    g_reader = R_NPY;
    run_reader_cases();
}

static void test_json_limits(void)
{
    g_reader = R_JSON;
    run_reader_cases();
}

static void test_ckpt_limits(void)
{
    g_reader = R_CKPT;
    run_reader_cases();
}

/* The limits the readers document are the ones they enforce: exactly at a
 * limit is accepted, one past it is refused. */
static void test_json_depth_edge(void)
{
    char text[2 * SD_JSON_MAX_DEPTH + 4];
    for (int extra = 0; extra <= 1; extra++) {
        int d = SD_JSON_MAX_DEPTH + extra;
        for (int i = 0; i < d; i++) {
            text[i] = '[';
            text[2 * d - 1 - i] = ']';
        }
        sd_json *j = NULL;
        sdunet_error err;
        sdunet_status st = sd_json_parse(text, (size_t)(2 * d), &j, &err);
        CHECK(st == (extra ? SDUNET_E_FORMAT : SDUNET_OK), "depth %d: status %d", d, st);
        sd_json_free(j);
    }
}

int main(void)
{
    /* SIGPIPE would kill the parent if a child died before reporting. */
    signal(SIGPIPE, SIG_IGN);
    printf("# budgets enforced with %s\n",
           T_SANITIZED ? "peak RSS only (sanitizer build)" : "RLIMIT_AS and peak RSS");
    RUN(test_safetensors_limits);
    RUN(test_npy_limits);
    RUN(test_json_limits);
    RUN(test_ckpt_limits);
    RUN(test_json_depth_edge);
    return t_summary();
}
