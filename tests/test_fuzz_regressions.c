/* Replays every saved fuzz finding (each file under fuzz/regressions/
 * <harness>/) through the same entry points the libFuzzer harnesses call,
 * so `make test` (and the sanitizer builds) keep each fixed crash fixed
 * without needing clang or libFuzzer. $SDUNET_FUZZ_DIR replays another
 * folder of the same layout instead, e.g. SDUNET_FUZZ_DIR=build-fuzz/corpus. */
#include "check.h"

/* The entry points themselves, compiled in: the test build has no rule for
 * fuzz/, and this keeps the replay byte-for-byte the harness's code. */
#include "../fuzz/targets.c"

#include <dirent.h>

static const sd_fuzz_harness *g_harness;
static const char *g_root;

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The file in a buffer of exactly its size, so a read one past the end is
 * caught by ASan the way libFuzzer's own buffer would catch it
 * (t_read_file's buffer has a terminating zero after the data). */
static uint8_t *read_exact(const char *path, size_t *size)
{
    size_t n = 0;
    uint8_t *buf = t_read_file(path, &n);
    if (!buf)
        return NULL;
    uint8_t *exact = malloc(n ? n : 1);
    if (exact && n)
        memcpy(exact, buf, n);
    free(buf);
    *size = n;
    return exact;
}

static void replay_current(void)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", g_root, g_harness->name);
    DIR *d = opendir(dir);
    if (!d) {
        printf("  # %s: no folder, nothing to replay\n", dir);
        return;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nn = realloc(names, cap * sizeof *nn);
            if (!nn)
                break;
            names = nn;
        }
        names[n] = strdup(de->d_name);
        if (names[n])
            n++;
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, cmp_names);
    size_t replayed = 0;
    for (size_t i = 0; i < n; i++) {
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        size_t size = 0;
        uint8_t *data = read_exact(path, &size);
        CHECK(data != NULL, "cannot read %s", path);
        if (data) {
            int rc = g_harness->run(data, size);
            CHECK(rc == 0, "%s: an accepted input broke the reader's invariants", path);
            replayed++;
        }
        free(data);
        free(names[i]);
    }
    free(names);
    printf("  # %s: %zu inputs replayed\n", dir, replayed);
}

/* The pickle harness only reaches the interpreter if its wrapper archive is
 * a valid checkpoint: a one-tensor state dict must load through it. */
static void test_pickle_wrapper(void)
{
    static const uint8_t pkl[] = "\x80\x02}q\x00X\x01\x00\x00\x00w"
                                 "ctorch._utils\n_rebuild_tensor_v2\n(("
                                 "X\x07\x00\x00\x00storage"
                                 "ctorch\nFloatStorage\n"
                                 "X\x01\x00\x00\x00"
                                 "3"
                                 "X\x03\x00\x00\x00"
                                 "cpu"
                                 "K\x40tQ"
                                 "K\x02K\x03K\x04\x86K\x04K\x01\x86\x89)tRs.";
    size_t zn = 0;
    uint8_t *zip = sd_fuzz_wrap_pickle(pkl, sizeof pkl - 1, &zn);
    CHECK(zip != NULL, "wrap failed");
    if (!zip)
        return;
    sd_tensorfile tf;
    memset(&tf, 0, sizeof tf);
    sdunet_error err;
    sdunet_status st = sd_ckpt_parse(zip, zn, &tf, &err);
    CHECK(st == SDUNET_OK, "%s", err.message);
    if (st == SDUNET_OK) {
        CHECK(tf.count == 1 && strcmp(tf.tensors[0].name, "w") == 0, "one tensor named w");
        CHECK(tf.tensors[0].ndim == 2 && tf.tensors[0].shape[0] == 3 &&
                  tf.tensors[0].shape[1] == 4 && tf.tensors[0].dtype == SD_DT_F32,
              "shape (3, 4) F32");
        CHECK(check_table(&tf, zip, zn) == 0, "table invariants");
        sd_tensorfile_clear(&tf);
    }
    free(zip);
    CHECK(sd_fuzz_pickle(pkl, sizeof pkl - 1) == 0, "harness on a valid pickle");
}

int main(void)
{
    const char *root = getenv("SDUNET_FUZZ_DIR");
    g_root = root && *root ? root : "fuzz/regressions";
    RUN(test_pickle_wrapper);
    for (size_t h = 0; h < sd_fuzz_n_harnesses; h++) {
        char name[64];
        snprintf(name, sizeof name, "replay_%s", sd_fuzz_harnesses[h].name);
        g_harness = &sd_fuzz_harnesses[h];
        t_run(name, replay_current);
    }
    return t_summary();
}
