/* CLIP BPE tokenizer (see tokenizer.h for the steps it follows).
 *
 * Symbols (the strings BPE works on: byte symbols, merge operands and
 * results, vocabulary entries) are interned in one string table, so a merge
 * result is the same symbol as any equal string, as with Python strings.
 * Merges live in a hash table from a symbol pair to (rank, result).
 *
 * BPE merges, like transformers, the lowest-ranked pair everywhere in the
 * word, left to right and without overlaps, before it looks at the pairs
 * those merges created. It keeps the symbols in a linked list and the pairs
 * in a heap ordered by (rank, position): all entries of the lowest rank are
 * taken in position order, each one still present is merged, and only then
 * are the pairs around the merged symbols pushed. Stale entries are dropped
 * when popped: O(n log n) for a word of n bytes. */
#include "clip/tokenizer.h"
#include "clip/unicode_tables.h"
#include "clip/vocab_data.h"
#include "io/json.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NO_SYM UINT32_MAX
#define MAX_MERGE_LINES 48894 /* transformers keeps lines [1, 49152 - 256 - 2 + 1) */
#define MAX_FILE_BYTES ((size_t)1 << 30)

static const char BOS_STR[] = "<|startoftext|>";
static const char EOS_STR[] = "<|endoftext|>";

typedef struct pair_slot {
    uint64_t key; /* (a + 1) << 32 | b; 0 = empty */
    int32_t rank;
    uint32_t result;
} pair_slot;

typedef struct id_sym {
    int32_t id;
    uint32_t sym;
    size_t order;
} id_sym;

struct sd_tokenizer {
    char *pool; /* symbol strings, each NUL-terminated */
    size_t pool_len, pool_cap;
    size_t *sym_off;
    uint32_t *sym_len;
    int32_t *sym_id; /* vocabulary id or -1 */
    size_t n_sym, sym_cap;
    uint32_t *str_hash; /* symbol + 1, 0 = empty; power-of-two size */
    size_t str_cap;
    pair_slot *pairs;
    size_t pair_cap, n_pairs;
    id_sym *by_id; /* sorted by id, one entry per id */
    size_t n_ids, ids_cap;
    uint32_t byte_cp[256]; /* bytes_to_unicode */
    uint32_t byte_sym[256], byte_sym_w[256];
    int32_t bos, eos, pad;
    uint32_t *split; /* the pad token's code points when it is an extra added token */
    size_t split_len;
};

/* ---- Unicode ------------------------------------------------------------------------------ */

static int range_lookup(const uint32_t *tab, size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n; /* last entry with start <= cp */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if ((tab[mid] >> 8) <= cp)
            lo = mid;
        else
            hi = mid;
    }
    return (int)(tab[lo] & 0xFF);
}

static int uc_class(uint32_t cp)
{
    if (cp < 0x80) {
        if (cp >= 'a' && cp <= 'z')
            return SD_UC_LETTER | SD_UC_CASED;
    }
    return range_lookup(sd_uc_class, sd_uc_class_n, cp);
}

static int uc_ccc(uint32_t cp)
{
    if (cp < 0x300)
        return 0;
    return range_lookup(sd_uc_ccc, sd_uc_ccc_n, cp);
}

/* Python's str.isspace. */
static int uc_isspace(uint32_t cp)
{
    if (cp == 0x0B || cp == 0x0C || (cp >= 0x1C && cp <= 0x1F) || cp == 0x85)
        return 1;
    int c = uc_class(cp) & 7;
    return c == SD_UC_SPACE || c == SD_UC_PYSPACE;
}

static int is_cjk(uint32_t cp)
{
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
           (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
           (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
           (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

static const sd_uc_triple *decomp_find(uint32_t cp)
{
    size_t lo = 0, hi = sd_uc_decomp_n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (sd_uc_decomp[mid].a < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < sd_uc_decomp_n && sd_uc_decomp[lo].a == cp ? &sd_uc_decomp[lo] : NULL;
}

/* First composition entry with first >= a (and second >= b). */
static size_t comp_lower_bound(uint32_t a, uint32_t b)
{
    size_t lo = 0, hi = sd_uc_comp_n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const sd_uc_triple *e = &sd_uc_comp[mid];
        if (e->a < a || (e->a == a && e->b < b))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int comp_is_first(uint32_t a)
{
    size_t i = comp_lower_bound(a, 0);
    return i < sd_uc_comp_n && sd_uc_comp[i].a == a;
}

static uint32_t comp_pair(uint32_t a, uint32_t b)
{
    size_t i = comp_lower_bound(a, b);
    return i < sd_uc_comp_n && sd_uc_comp[i].a == a && sd_uc_comp[i].b == b ? sd_uc_comp[i].c : 0;
}

/* Single code point lowercase (U+0130 and U+03A3 are handled by the caller). */
static uint32_t uc_lower1(uint32_t cp)
{
    if (cp < 0x80)
        return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
    size_t lo = 0, hi = sd_uc_lower_n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (sd_uc_lower[mid].last < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < sd_uc_lower_n) {
        const sd_uc_lower_run *r = &sd_uc_lower[lo];
        if (cp >= r->first && (cp - r->first) % (uint32_t)r->step == 0)
            return (uint32_t)((int32_t)cp + r->delta);
    }
    return cp;
}

enum { S_BASE = 0xAC00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11A7 };
enum { L_COUNT = 19, V_COUNT = 21, T_COUNT = 28, N_COUNT = V_COUNT * T_COUNT };
enum { S_COUNT = L_COUNT * N_COUNT };

/* ---- growable arrays ---------------------------------------------------------------------- */

typedef struct vec {
    void *p;
    size_t n, cap;
} vec;

static int vec_reserve(vec *v, size_t need, size_t elsize)
{
    if (need <= v->cap)
        return 1;
    size_t cap = v->cap ? v->cap : 64, bytes;
    while (cap < need) {
        if (cap > SIZE_MAX / 2)
            return 0;
        cap *= 2;
    }
    if (!sd_mul_size(cap, elsize, &bytes))
        return 0;
    void *p = realloc(v->p, bytes);
    if (!p)
        return 0;
    v->p = p;
    v->cap = cap;
    return 1;
}

static int vec_push_u32(vec *v, uint32_t x)
{
    if (v->n == v->cap && !vec_reserve(v, v->n + 1, sizeof x))
        return 0;
    ((uint32_t *)v->p)[v->n++] = x;
    return 1;
}

/* ---- symbols and merges ------------------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

static uint32_t sym_find(const sd_tokenizer *t, const char *s, size_t n)
{
    if (!t->str_cap)
        return NO_SYM;
    size_t mask = t->str_cap - 1, i = (size_t)hash_bytes(s, n) & mask;
    for (;; i = (i + 1) & mask) {
        uint32_t e = t->str_hash[i];
        if (!e)
            return NO_SYM;
        uint32_t sym = e - 1;
        if (t->sym_len[sym] == n && memcmp(t->pool + t->sym_off[sym], s, n) == 0)
            return sym;
    }
}

static int str_hash_grow(sd_tokenizer *t)
{
    size_t cap = t->str_cap ? t->str_cap * 2 : 1024;
    uint32_t *h = calloc(cap, sizeof *h);
    if (!h)
        return 0;
    for (size_t s = 0; s < t->n_sym; s++) {
        size_t i = (size_t)hash_bytes(t->pool + t->sym_off[s], t->sym_len[s]) & (cap - 1);
        while (h[i])
            i = (i + 1) & (cap - 1);
        h[i] = (uint32_t)s + 1;
    }
    free(t->str_hash);
    t->str_hash = h;
    t->str_cap = cap;
    return 1;
}

/* The symbol of the string s (n bytes, may be split in two parts a + b). */
static sdunet_status sym_intern2(sd_tokenizer *t, const char *a, size_t na, const char *b,
                                 size_t nb, uint32_t *out, sdunet_error *err)
{
    size_t n;
    if (!sd_add_size(na, nb, &n) || n > UINT32_MAX)
        return sd_fail(err, SDUNET_E_NOMEM, "token too long");
    char small[256], *tmp = small;
    if (n > sizeof small) {
        tmp = malloc(n);
        if (!tmp)
            return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    }
    if (na)
        memcpy(tmp, a, na);
    if (nb)
        memcpy(tmp + na, b, nb);
    sdunet_status st = SDUNET_OK;
    uint32_t sym = sym_find(t, tmp, n);
    if (sym != NO_SYM) {
        *out = sym;
        goto done;
    }
    if (t->n_sym >= UINT32_MAX - 1 || ((t->n_sym + 1) * 2 > t->str_cap && !str_hash_grow(t))) {
        st = sd_fail(err, SDUNET_E_NOMEM, "out of memory");
        goto done;
    }
    size_t need;
    if (!sd_add_size(t->pool_len, n + 1, &need)) {
        st = sd_fail(err, SDUNET_E_NOMEM, "out of memory");
        goto done;
    }
    vec pv = {t->pool, t->pool_len, t->pool_cap};
    if (!vec_reserve(&pv, need, 1)) {
        st = sd_fail(err, SDUNET_E_NOMEM, "out of memory");
        goto done;
    }
    t->pool = pv.p;
    t->pool_cap = pv.cap;
    if (t->n_sym == t->sym_cap) {
        size_t cap = t->sym_cap ? t->sym_cap * 2 : 1024;
        size_t *off = realloc(t->sym_off, cap * sizeof *off);
        if (off)
            t->sym_off = off;
        uint32_t *len = realloc(t->sym_len, cap * sizeof *len);
        if (len)
            t->sym_len = len;
        int32_t *id = realloc(t->sym_id, cap * sizeof *id);
        if (id)
            t->sym_id = id;
        if (!off || !len || !id) {
            st = sd_fail(err, SDUNET_E_NOMEM, "out of memory");
            goto done;
        }
        t->sym_cap = cap;
    }
    sym = (uint32_t)t->n_sym++;
    t->sym_off[sym] = t->pool_len;
    t->sym_len[sym] = (uint32_t)n;
    t->sym_id[sym] = -1;
    memcpy(t->pool + t->pool_len, tmp, n);
    t->pool[t->pool_len + n] = 0;
    t->pool_len += n + 1;
    size_t mask = t->str_cap - 1, i = (size_t)hash_bytes(tmp, n) & mask;
    while (t->str_hash[i])
        i = (i + 1) & mask;
    t->str_hash[i] = sym + 1;
    *out = sym;
done:
    if (tmp != small)
        free(tmp);
    return st;
}

static const pair_slot *pair_find(const sd_tokenizer *t, uint32_t a, uint32_t b)
{
    if (!t->pair_cap)
        return NULL;
    uint64_t key = ((uint64_t)a + 1) << 32 | b;
    size_t mask = t->pair_cap - 1, i = (size_t)hash_u64(key) & mask;
    for (;; i = (i + 1) & mask) {
        if (t->pairs[i].key == key)
            return &t->pairs[i];
        if (!t->pairs[i].key)
            return NULL;
    }
}

/* Adds a merge; a pair already present takes the new rank (a later line wins). */
static int pair_put(sd_tokenizer *t, uint32_t a, uint32_t b, int32_t rank, uint32_t result)
{
    if ((t->n_pairs + 1) * 2 > t->pair_cap) {
        size_t cap = t->pair_cap ? t->pair_cap * 2 : 1024;
        pair_slot *p = calloc(cap, sizeof *p);
        if (!p)
            return 0;
        for (size_t j = 0; j < t->pair_cap; j++) {
            if (!t->pairs[j].key)
                continue;
            size_t i = (size_t)hash_u64(t->pairs[j].key) & (cap - 1);
            while (p[i].key)
                i = (i + 1) & (cap - 1);
            p[i] = t->pairs[j];
        }
        free(t->pairs);
        t->pairs = p;
        t->pair_cap = cap;
    }
    uint64_t key = ((uint64_t)a + 1) << 32 | b;
    size_t mask = t->pair_cap - 1, i = (size_t)hash_u64(key) & mask;
    while (t->pairs[i].key && t->pairs[i].key != key)
        i = (i + 1) & mask;
    if (!t->pairs[i].key)
        t->n_pairs++;
    t->pairs[i].key = key;
    t->pairs[i].rank = rank;
    t->pairs[i].result = result;
    return 1;
}

static int add_id(sd_tokenizer *t, int32_t id, uint32_t sym)
{
    vec v = {t->by_id, t->n_ids, t->ids_cap};
    if (!vec_reserve(&v, t->n_ids + 1, sizeof(id_sym)))
        return 0;
    t->by_id = v.p;
    t->ids_cap = v.cap;
    t->by_id[t->n_ids].id = id;
    t->by_id[t->n_ids].sym = sym;
    t->by_id[t->n_ids].order = t->n_ids;
    t->n_ids++;
    t->sym_id[sym] = id;
    return 1;
}

static int cmp_id_sym(const void *pa, const void *pb)
{
    const id_sym *a = pa, *b = pb;
    if (a->id != b->id)
        return a->id < b->id ? -1 : 1;
    return a->order < b->order ? -1 : a->order > b->order;
}

/* Sorts the id table; of several strings with one id the last one (as a
 * Python dict inverted in file order) is the id's piece. */
static void finish_ids(sd_tokenizer *t)
{
    if (t->n_ids)
        qsort(t->by_id, t->n_ids, sizeof *t->by_id, cmp_id_sym);
    size_t o = 0;
    for (size_t i = 0; i < t->n_ids; i++) {
        if (o && t->by_id[o - 1].id == t->by_id[i].id)
            o--;
        t->by_id[o++] = t->by_id[i];
    }
    t->n_ids = o;
}

static size_t utf8_put(uint32_t cp, char *s)
{
    if (cp < 0x80) {
        s[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        s[0] = (char)(0xC0 | cp >> 6);
        s[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        s[0] = (char)(0xE0 | cp >> 12);
        s[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        s[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    s[0] = (char)(0xF0 | cp >> 18);
    s[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    s[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    s[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decodes one UTF-8 character of s[i..n): its length (1-4), or 0 if invalid. */
static size_t utf8_get(const unsigned char *s, size_t n, size_t i, uint32_t *cp)
{
    unsigned c = s[i];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t len;
    uint32_t v, lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        v = c & 0x0F;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        v = c & 0x07;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    for (size_t k = 1; k < len; k++) {
        if (i + k >= n)
            return 0;
        unsigned d = s[i + k];
        if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xBF))
            return 0;
        v = v << 6 | (d & 0x3F);
    }
    *cp = v;
    return len;
}

/* Decodes text into code points (*cps malloc'd, n entries); SDUNET_E_INVALID_ARG
 * naming the offset of the first byte that is not valid UTF-8. */
static sdunet_status utf8_decode(const char *text, size_t len, const char *what, vec *cps,
                                 sdunet_error *err, sdunet_status code)
{
    const unsigned char *s = (const unsigned char *)text;
    if (len > SIZE_MAX / 8 || !vec_reserve(cps, len + 1, sizeof(uint32_t)))
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    uint32_t *out = cps->p;
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t k = utf8_get(s, len, i, &cp);
        if (!k)
            return sd_fail(err, code, "%s: invalid UTF-8 at byte offset %zu", what, i);
        out[n++] = cp;
        i += k;
    }
    cps->n = n;
    return SDUNET_OK;
}

/* ---- construction ------------------------------------------------------------------------- */

static sdunet_status tok_new(sd_tokenizer **out, sdunet_error *err)
{
    sd_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    /* bytes_to_unicode: printable Latin-1 bytes map to themselves, the other
     * 68 bytes to U+0100.. in byte order. */
    uint32_t extra = 0;
    for (uint32_t b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        t->byte_cp[b] = printable ? b : 256 + extra++;
    }
    t->bos = t->eos = t->pad = -1;
    for (int b = 0; b < 256; b++) {
        char s[8];
        size_t n = utf8_put(t->byte_cp[b], s);
        sdunet_status st = sym_intern2(t, s, n, NULL, 0, &t->byte_sym[b], err);
        if (!st)
            st = sym_intern2(t, s, n, "</w>", 4, &t->byte_sym_w[b], err);
        if (st) {
            sd_tokenizer_free(t);
            return st;
        }
    }
    *out = t;
    return SDUNET_OK;
}

/* One line of merges.txt split on Python whitespace: exactly two parts? */
static int split_two(const uint32_t *cp, size_t n, size_t *a0, size_t *a1, size_t *b0, size_t *b1)
{
    size_t parts = 0, i = 0;
    while (i < n) {
        while (i < n && uc_isspace(cp[i]))
            i++;
        if (i == n)
            break;
        size_t s = i;
        while (i < n && !uc_isspace(cp[i]))
            i++;
        if (parts == 0) {
            *a0 = s;
            *a1 = i;
        } else if (parts == 1) {
            *b0 = s;
            *b1 = i;
        }
        parts++;
    }
    return parts == 2;
}

static sdunet_status cps_intern(sd_tokenizer *t, const uint32_t *a, size_t na, const uint32_t *b,
                                size_t nb, vec *buf, uint32_t *out, sdunet_error *err)
{
    size_t need;
    if (!sd_add_size(na, nb, &need) || !sd_mul_size(need, 4, &need) ||
        !vec_reserve(buf, need + 1, 1))
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    char *s = buf->p;
    size_t n = 0, split = 0;
    for (size_t i = 0; i < na; i++)
        n += utf8_put(a[i], s + n);
    split = n;
    for (size_t i = 0; i < nb; i++)
        n += utf8_put(b[i], s + n);
    return sym_intern2(t, s, split, s + split, n - split, out, err);
}

/* Reads merges as transformers does (see tokenizer.h). With builtin_ids,
 * the merge of rank r also becomes vocabulary id 512 + r. */
static sdunet_status load_merges(sd_tokenizer *t, const char *text, size_t len, int builtin_ids,
                                 sdunet_error *err)
{
    vec cps = {0}, buf = {0};
    sdunet_status st = utf8_decode(text, len, "merges.txt", &cps, err, SDUNET_E_FORMAT);
    if (st)
        goto out;
    /* Universal newlines: "\r\n" and "\r" end lines like "\n". */
    uint32_t *c = cps.p;
    size_t n = 0;
    for (size_t i = 0; i < cps.n; i++) {
        if (c[i] == '\r') {
            c[n++] = '\n';
            if (i + 1 < cps.n && c[i + 1] == '\n')
                i++;
        } else {
            c[n++] = c[i];
        }
    }
    size_t b = 0, e = n;
    while (b < e && uc_isspace(c[b]))
        b++;
    while (e > b && uc_isspace(c[e - 1]))
        e--;
    size_t line = 0;
    for (size_t i = b; i <= e && line <= MAX_MERGE_LINES;) {
        size_t j = i;
        while (j < e && c[j] != '\n')
            j++;
        if (line >= 1) {
            int32_t rank = (int32_t)(line - 1);
            size_t a0 = 0, a1 = 0, b0 = 0, b1 = 0;
            if (split_two(c + i, j - i, &a0, &a1, &b0, &b1)) {
                uint32_t sa, sb, sr;
                st = cps_intern(t, c + i + a0, a1 - a0, NULL, 0, &buf, &sa, err);
                if (!st)
                    st = cps_intern(t, c + i + b0, b1 - b0, NULL, 0, &buf, &sb, err);
                if (!st)
                    st = cps_intern(t, c + i + a0, a1 - a0, c + i + b0, b1 - b0, &buf, &sr, err);
                if (st)
                    goto out;
                if (!pair_put(t, sa, sb, rank, sr)) {
                    st = sd_fail(err, SDUNET_E_NOMEM, "out of memory");
                    goto out;
                }
                if (builtin_ids && !add_id(t, 512 + rank, sr)) {
                    st = sd_fail(err, SDUNET_E_NOMEM, "out of memory");
                    goto out;
                }
            } else if (builtin_ids) {
                st = sd_fail(err, SDUNET_E_FORMAT, "merges.txt: line %zu is not a merge", line + 1);
                goto out;
            }
        }
        line++;
        i = j + 1;
    }
out:
    free(cps.p);
    free(buf.p);
    return st;
}

static sdunet_status finish(sd_tokenizer *t, sdunet_error *err)
{
    finish_ids(t);
    uint32_t s = sym_find(t, BOS_STR, strlen(BOS_STR));
    t->bos = s == NO_SYM ? -1 : t->sym_id[s];
    s = sym_find(t, EOS_STR, strlen(EOS_STR));
    t->eos = s == NO_SYM ? -1 : t->sym_id[s];
    if (t->bos < 0 || t->eos < 0)
        return sd_fail(err, SDUNET_E_FORMAT, "vocab.json: no %s entry",
                       t->bos < 0 ? BOS_STR : EOS_STR);
    t->pad = t->eos;
    return SDUNET_OK;
}

sdunet_status sd_tokenizer_builtin(sd_tokenizer **out, sdunet_error *err)
{
    if (!out)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL tokenizer");
    *out = NULL;
    sd_tokenizer *t;
    sdunet_status st = tok_new(&t, err);
    if (st)
        return st;
    /* vocab.json follows from the merges: the byte symbols in
     * bytes_to_unicode order (printable bytes first), the same with </w>,
     * the merges' results in rank order, then the two special tokens. */
    int32_t id = 0;
    for (int pass = 0; pass < 2 && !st; pass++)
        for (int b = 0; b < 256 && !st; b++)
            if ((t->byte_cp[b] < 256) == (pass == 0)) {
                if (!add_id(t, id, t->byte_sym[b]) || !add_id(t, id + 256, t->byte_sym_w[b]))
                    st = sd_fail(err, SDUNET_E_NOMEM, "out of memory");
                else
                    id++;
            }
    if (!st)
        st = load_merges(t, sd_clip_merges, sd_clip_merges_len, 1, err);
    uint32_t sb = 0, se = 0;
    if (!st)
        st = sym_intern2(t, BOS_STR, strlen(BOS_STR), NULL, 0, &sb, err);
    if (!st)
        st = sym_intern2(t, EOS_STR, strlen(EOS_STR), NULL, 0, &se, err);
    if (!st && (!add_id(t, 512 + MAX_MERGE_LINES, sb) || !add_id(t, 513 + MAX_MERGE_LINES, se)))
        st = sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    if (!st)
        st = finish(t, err);
    if (st) {
        sd_tokenizer_free(t);
        return st;
    }
    *out = t;
    return SDUNET_OK;
}

sdunet_status sd_tokenizer_from_memory(const char *vocab_json, size_t vocab_len,
                                       const char *merges_txt, size_t merges_len,
                                       sd_tokenizer **out, sdunet_error *err)
{
    if (!out || (!vocab_json && vocab_len) || (!merges_txt && merges_len))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL argument");
    *out = NULL;
    sd_json *root = NULL;
    sdunet_status st = sd_json_parse(vocab_json ? vocab_json : "", vocab_len, &root, err);
    if (st) {
        sd_err_prefix(err, "vocab.json");
        return st;
    }
    if (root->type != SD_JSON_OBJECT) {
        sd_json_free(root);
        return sd_fail(err, SDUNET_E_FORMAT, "vocab.json: not an object");
    }
    sd_tokenizer *t;
    st = tok_new(&t, err);
    for (size_t i = 0; !st && i < root->len; i++) {
        const sd_json *v = &root->items[i];
        if (v->type != SD_JSON_NUMBER || !v->is_int || v->integer < 0 || v->integer > INT32_MAX) {
            st = sd_fail(err, SDUNET_E_FORMAT, "vocab.json: \"%.64s\": id is not an int32 >= 0",
                         root->keys[i]);
            break;
        }
        uint32_t sym;
        st = sym_intern2(t, root->keys[i], strlen(root->keys[i]), NULL, 0, &sym, err);
        if (!st && !add_id(t, (int32_t)v->integer, sym))
            st = sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    }
    sd_json_free(root);
    if (!st)
        st = load_merges(t, merges_txt ? merges_txt : "", merges_len, 0, err);
    if (!st)
        st = finish(t, err);
    if (st) {
        sd_tokenizer_free(t);
        return st;
    }
    *out = t;
    return SDUNET_OK;
}

static sdunet_status read_file(const char *path, char **data, size_t *size, sdunet_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return sd_fail(err, SDUNET_E_IO, "%s: cannot open: %s", path, strerror(errno));
    vec v = {0};
    sdunet_status st = SDUNET_OK;
    for (;;) {
        if (!vec_reserve(&v, v.n + 65536, 1)) {
            st = sd_fail(err, SDUNET_E_NOMEM, "%s: out of memory", path);
            break;
        }
        size_t got = fread((char *)v.p + v.n, 1, v.cap - v.n, f);
        v.n += got;
        if (got == 0) {
            if (ferror(f))
                st = sd_fail(err, SDUNET_E_IO, "%s: read error", path);
            break;
        }
        if (v.n > MAX_FILE_BYTES) {
            st = sd_fail(err, SDUNET_E_FORMAT, "%s: larger than 1 GiB", path);
            break;
        }
    }
    fclose(f);
    if (st) {
        free(v.p);
        return st;
    }
    *data = v.p;
    *size = v.n;
    return SDUNET_OK;
}

sdunet_status sd_tokenizer_from_files(const char *vocab_json, const char *merges_txt,
                                      sd_tokenizer **out, sdunet_error *err)
{
    if (!vocab_json || !merges_txt || !out)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL argument");
    *out = NULL;
    char *v = NULL, *m = NULL;
    size_t nv = 0, nm = 0;
    sdunet_status st = read_file(vocab_json, &v, &nv, err);
    if (!st)
        st = read_file(merges_txt, &m, &nm, err);
    if (!st)
        st = sd_tokenizer_from_memory(v, nv, m, nm, out, err);
    free(v);
    free(m);
    return st;
}

sdunet_status sd_tokenizer_set_pad(sd_tokenizer *t, const char *pad_token, sdunet_error *err)
{
    if (!t || !pad_token || !*pad_token)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "no pad token");
    uint32_t s = sym_find(t, pad_token, strlen(pad_token));
    if (s == NO_SYM || t->sym_id[s] < 0)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "pad token \"%.64s\" is not in the vocabulary",
                       pad_token);
    vec cps = {0};
    uint32_t *split = NULL;
    size_t split_len = 0;
    if (strcmp(pad_token, BOS_STR) != 0 && strcmp(pad_token, EOS_STR) != 0) {
        sdunet_status st =
            utf8_decode(pad_token, strlen(pad_token), "pad token", &cps, err, SDUNET_E_INVALID_ARG);
        if (st) {
            free(cps.p);
            return st;
        }
        split = cps.p;
        split_len = cps.n;
    }
    free(t->split);
    t->split = split;
    t->split_len = split_len;
    t->pad = t->sym_id[s];
    return SDUNET_OK;
}

int32_t sd_tokenizer_bos(const sd_tokenizer *t)
{
    return t ? t->bos : -1;
}
int32_t sd_tokenizer_eos(const sd_tokenizer *t)
{
    return t ? t->eos : -1;
}
int32_t sd_tokenizer_pad(const sd_tokenizer *t)
{
    return t ? t->pad : -1;
}

void sd_tokenizer_free(sd_tokenizer *t)
{
    if (!t)
        return;
    free(t->pool);
    free(t->sym_off);
    free(t->sym_len);
    free(t->sym_id);
    free(t->str_hash);
    free(t->pairs);
    free(t->by_id);
    free(t->split);
    free(t);
}

/* ---- tokenizing --------------------------------------------------------------------------- */

typedef struct work {
    const sd_tokenizer *t;
    vec ids;                        /* int32 output */
    vec clean, dec, tmp, word, low; /* uint32 code points */
    vec flags;                      /* bytes */
    vec bytes;                      /* a pre-token's UTF-8 */
    vec sym, next, prev;            /* BPE symbols (uint32, int32, int32) */
    vec heap;                       /* uint64: rank << 32 | position */
    vec changed;                    /* int32 */
} work;

static void work_free(work *w)
{
    vec *v[] = {&w->clean, &w->dec, &w->tmp,  &w->word, &w->low,  &w->flags,
                &w->bytes, &w->sym, &w->next, &w->prev, &w->heap, &w->changed};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        free(v[i]->p);
}

static int emit(work *w, int32_t id)
{
    if (w->ids.n == w->ids.cap && !vec_reserve(&w->ids, w->ids.n + 1, sizeof id))
        return 0;
    ((int32_t *)w->ids.p)[w->ids.n++] = id;
    return 1;
}

static int heap_push(vec *h, uint64_t x)
{
    if (h->n == h->cap && !vec_reserve(h, h->n + 1, sizeof x))
        return 0;
    uint64_t *a = h->p;
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (a[p] <= x)
            break;
        a[i] = a[p];
        i = p;
    }
    a[i] = x;
    return 1;
}

static uint64_t heap_pop(vec *h)
{
    uint64_t *a = h->p, top = a[0], x = a[--h->n];
    size_t i = 0, n = h->n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && a[c + 1] < a[c])
            c++;
        if (a[c] >= x)
            break;
        a[i] = a[c];
        i = c;
    }
    if (n)
        a[i] = x;
    return top;
}

/* Pushes the pair starting at symbol i if it is a merge. */
static int push_pair(work *w, int32_t i)
{
    const uint32_t *sym = w->sym.p;
    const int32_t *next = w->next.p;
    if (i < 0 || next[i] < 0)
        return 1;
    const pair_slot *p = pair_find(w->t, sym[i], sym[next[i]]);
    if (!p)
        return 1;
    return heap_push(&w->heap, (uint64_t)(uint32_t)p->rank << 32 | (uint32_t)i);
}

/* BPE of one pre-token (UTF-8 bytes in w->bytes), ids appended. */
static sdunet_status bpe(work *w, sdunet_error *err)
{
    const sd_tokenizer *t = w->t;
    const unsigned char *b = w->bytes.p;
    size_t n = w->bytes.n;
    if (n == 0)
        return SDUNET_OK;
    if (n > INT32_MAX)
        return sd_fail(err, SDUNET_E_NOMEM, "word too long");
    if (!vec_reserve(&w->sym, n, 4) || !vec_reserve(&w->next, n, 4) || !vec_reserve(&w->prev, n, 4))
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    uint32_t *sym = w->sym.p;
    int32_t *next = w->next.p, *prev = w->prev.p;
    for (size_t i = 0; i < n; i++) {
        sym[i] = i + 1 < n ? t->byte_sym[b[i]] : t->byte_sym_w[b[i]];
        next[i] = i + 1 < n ? (int32_t)(i + 1) : -1;
        prev[i] = (int32_t)i - 1;
    }
    w->heap.n = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (!push_pair(w, (int32_t)i))
            return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    while (w->heap.n) {
        uint32_t rank = (uint32_t)(((uint64_t *)w->heap.p)[0] >> 32);
        w->changed.n = 0;
        /* Every occurrence of this rank's pair, left to right. */
        while (w->heap.n && (uint32_t)(((uint64_t *)w->heap.p)[0] >> 32) == rank) {
            int32_t i = (int32_t)(uint32_t)heap_pop(&w->heap);
            if (prev[i] == -2 || next[i] < 0)
                continue;
            const pair_slot *p = pair_find(t, sym[i], sym[next[i]]);
            if (!p || (uint32_t)p->rank != rank)
                continue;
            int32_t j = next[i];
            sym[i] = p->result;
            next[i] = next[j];
            if (next[j] >= 0)
                prev[next[j]] = i;
            prev[j] = -2; /* dead */
            if (!vec_push_u32(&w->changed, (uint32_t)i))
                return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
        }
        const uint32_t *ch = w->changed.p;
        for (size_t k = 0; k < w->changed.n; k++) {
            int32_t i = (int32_t)ch[k];
            if (!push_pair(w, prev[i]) || !push_pair(w, i))
                return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
        }
    }
    for (int32_t i = 0; i >= 0; i = next[i]) {
        int32_t id = t->sym_id[sym[i]];
        if (!emit(w, id >= 0 ? id : t->eos))
            return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    }
    return SDUNET_OK;
}

static int ci_eq(uint32_t cp, char lit)
{
    if (cp == (unsigned char)lit)
        return 1;
    if (lit >= 'a' && lit <= 'z' && cp == (uint32_t)(lit - 32))
        return 1;
    return lit == 's' && cp == 0x17F;
}

/* Does the pattern's literal alternative `lit` match at w[i..n)? */
static int match_lit(const uint32_t *w, size_t i, size_t n, const char *lit, int *exact)
{
    size_t k = strlen(lit);
    if (n - i < k)
        return 0;
    *exact = 1;
    for (size_t j = 0; j < k; j++) {
        if (!ci_eq(w[i + j], lit[j]))
            return 0;
        if (w[i + j] != (unsigned char)lit[j])
            *exact = 0;
    }
    return 1;
}

static sdunet_status pretoken(work *w, const uint32_t *c, size_t n, sdunet_error *err)
{
    size_t need;
    if (!sd_mul_size(n, 4, &need) || !vec_reserve(&w->bytes, need, 1))
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    char *b = w->bytes.p;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += utf8_put(c[i], b + k);
    w->bytes.n = k;
    return bpe(w, err);
}

/* The pattern over one lowercased word. */
static sdunet_status split_word(work *w, const uint32_t *c, size_t n, sdunet_error *err)
{
    static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    size_t i = 0;
    while (i < n) {
        int exact = 0;
        size_t len = 0;
        sdunet_status st;
        if (c[i] == '<' && match_lit(c, i, n, BOS_STR, &exact)) {
            if (exact) {
                if (!emit(w, w->t->bos))
                    return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
                i += strlen(BOS_STR);
                continue;
            }
            len = strlen(BOS_STR);
        } else if (c[i] == '<' && match_lit(c, i, n, EOS_STR, &exact)) {
            if (exact) {
                if (!emit(w, w->t->eos))
                    return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
                i += strlen(EOS_STR);
                continue;
            }
            len = strlen(EOS_STR);
        } else if (c[i] == '\'') {
            for (size_t k = 0; k < sizeof contractions / sizeof contractions[0]; k++)
                if (match_lit(c, i, n, contractions[k], &exact)) {
                    len = strlen(contractions[k]);
                    break;
                }
        }
        if (!len) {
            int cls = uc_class(c[i]) & 7;
            if (cls == SD_UC_LETTER) {
                len = 1;
                while (i + len < n && (uc_class(c[i + len]) & 7) == SD_UC_LETTER)
                    len++;
            } else if (cls == SD_UC_NUMBER) {
                len = 1;
            } else if (cls == SD_UC_OTHER) {
                len = 1;
                while (i + len < n && (uc_class(c[i + len]) & 7) == SD_UC_OTHER)
                    len++;
            } else {
                i++; /* no alternative matches here */
                continue;
            }
        }
        if ((st = pretoken(w, c + i, len, err)))
            return st;
        i += len;
    }
    return SDUNET_OK;
}

/* str.lower of one word, then the pattern. */
static sdunet_status lower_word(work *w, const uint32_t *c, size_t n, sdunet_error *err)
{
    size_t need;
    if (!vec_reserve(&w->flags, n + 1, 1) || !sd_mul_size(n, 2, &need) ||
        !vec_reserve(&w->low, need + 1, 4))
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    /* Final sigma: U+03A3 after a cased letter and not before one, skipping
     * case-ignorable characters both ways. after[i]: the next non-ignorable
     * character after i exists and is cased. */
    unsigned char *after = w->flags.p;
    int state = 0;
    for (size_t i = n; i-- > 0;) {
        after[i] = (unsigned char)state;
        int cls = uc_class(c[i]);
        if (!(cls & SD_UC_IGNORABLE))
            state = (cls & SD_UC_CASED) != 0;
    }
    uint32_t *o = w->low.p;
    size_t k = 0;
    int before = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = c[i];
        if (cp == 0x130) {
            o[k++] = 'i';
            o[k++] = 0x307;
        } else if (cp == 0x3A3) {
            o[k++] = before && !after[i] ? 0x3C2 : 0x3C3;
        } else {
            o[k++] = uc_lower1(cp);
        }
        int cls = uc_class(cp);
        if (!(cls & SD_UC_IGNORABLE))
            before = (cls & SD_UC_CASED) != 0;
    }
    return split_word(w, o, k, err);
}

static int decompose(vec *out, uint32_t cp, int depth)
{
    if (cp >= S_BASE && cp < S_BASE + S_COUNT) {
        uint32_t s = cp - S_BASE;
        if (!vec_push_u32(out, L_BASE + s / N_COUNT) ||
            !vec_push_u32(out, V_BASE + s % N_COUNT / T_COUNT))
            return 0;
        return s % T_COUNT ? vec_push_u32(out, T_BASE + s % T_COUNT) : 1;
    }
    const sd_uc_triple *d = cp >= 0xC0 && depth < 8 ? decomp_find(cp) : NULL;
    if (!d)
        return vec_push_u32(out, cp);
    if (!decompose(out, d->b, depth + 1))
        return 0;
    return d->c ? decompose(out, d->c, depth + 1) : 1;
}

/* Stable sort of a run of non-starters by combining class. */
static void sort_marks(uint32_t *a, size_t n, uint32_t *tmp)
{
    if (n <= 16) {
        for (size_t i = 1; i < n; i++) {
            uint32_t x = a[i];
            int cx = uc_ccc(x);
            size_t j = i;
            while (j > 0 && uc_ccc(a[j - 1]) > cx) {
                a[j] = a[j - 1];
                j--;
            }
            a[j] = x;
        }
        return;
    }
    size_t count[257] = {0};
    for (size_t i = 0; i < n; i++)
        count[uc_ccc(a[i]) + 1]++;
    for (int c = 1; c < 257; c++)
        count[c] += count[c - 1];
    for (size_t i = 0; i < n; i++)
        tmp[count[uc_ccc(a[i])]++] = a[i];
    memcpy(a, tmp, n * sizeof *a);
}

/* NFC of w->clean into w->clean (decomposition in w->dec), following
 * CPython's unicodedata composition loop. */
static sdunet_status nfc(work *w, sdunet_error *err)
{
    w->dec.n = 0;
    const uint32_t *in = w->clean.p;
    for (size_t i = 0; i < w->clean.n; i++)
        if (!decompose(&w->dec, in[i], 0))
            return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    uint32_t *d = w->dec.p;
    size_t n = w->dec.n;
    if (!vec_reserve(&w->tmp, n + 1, 4) || !vec_reserve(&w->flags, n + 1, 1) ||
        !vec_reserve(&w->clean, n + 1, 4))
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    for (size_t i = 0; i < n;) {
        if (uc_ccc(d[i]) == 0) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < n && uc_ccc(d[j]) != 0)
            j++;
        sort_marks(d + i, j - i, w->tmp.p);
        i = j;
    }
    unsigned char *skipped = w->flags.p;
    memset(skipped, 0, n);
    uint32_t *o = w->clean.p;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        if (skipped[i]) {
            i++;
            continue;
        }
        uint32_t cp = d[i];
        if (cp >= L_BASE && cp < L_BASE + L_COUNT && i + 1 < n && d[i + 1] >= V_BASE &&
            d[i + 1] < V_BASE + V_COUNT) {
            cp = S_BASE + ((cp - L_BASE) * V_COUNT + (d[i + 1] - V_BASE)) * T_COUNT;
            i += 2;
            if (i < n && d[i] > T_BASE && d[i] < T_BASE + T_COUNT)
                cp += d[i++] - T_BASE;
            o[k++] = cp;
            continue;
        }
        o[k++] = cp;
        if (!comp_is_first(cp)) {
            i++;
            continue;
        }
        int comb = 0;
        for (size_t i1 = i + 1; i1 < n; i1++) {
            int comb1 = uc_ccc(d[i1]);
            if (comb) {
                if (comb1 == 0)
                    break;
                if (comb >= comb1)
                    continue; /* blocked */
            }
            uint32_t c = comp_pair(o[k - 1], d[i1]);
            if (!c) {
                if (comb1 == 0)
                    break;
                comb = comb1;
                continue;
            }
            o[k - 1] = c;
            skipped[i1] = 1;
            if (!comp_is_first(c))
                break;
        }
        i++;
    }
    w->clean.n = k;
    return SDUNET_OK;
}

/* One piece of text between added tokens. */
static sdunet_status piece(work *w, const uint32_t *c, size_t n, sdunet_error *err)
{
    size_t need;
    if (!sd_mul_size(n, 3, &need) || !vec_reserve(&w->clean, need + 1, 4))
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    uint32_t *o = w->clean.p;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = c[i];
        int cls = uc_class(cp) & 7;
        if (cls == SD_UC_REMOVE)
            continue;
        if (cls == SD_UC_SPACE) {
            o[k++] = ' ';
        } else if (is_cjk(cp)) {
            o[k++] = ' ';
            o[k++] = cp;
            o[k++] = ' ';
        } else {
            o[k++] = cp;
        }
    }
    w->clean.n = k;
    sdunet_status st = nfc(w, err);
    if (st)
        return st;
    const uint32_t *t = w->clean.p;
    n = w->clean.n;
    for (size_t i = 0; i < n;) {
        while (i < n && uc_isspace(t[i]))
            i++;
        size_t j = i;
        while (j < n && !uc_isspace(t[j]))
            j++;
        if (j > i && (st = lower_word(w, t + i, j - i, err)))
            return st;
        i = j;
    }
    return SDUNET_OK;
}

static int match_cps(const uint32_t *c, size_t i, size_t n, const char *s)
{
    size_t k = strlen(s);
    if (n - i < k)
        return 0;
    for (size_t j = 0; j < k; j++)
        if (c[i + j] != (unsigned char)s[j])
            return 0;
    return 1;
}

sdunet_status sd_tokenize(const sd_tokenizer *t, const char *utf8, size_t len, int32_t **ids,
                          size_t *n_ids, sdunet_error *err)
{
    if (!t || !ids || !n_ids || (!utf8 && len))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL argument");
    *ids = NULL;
    *n_ids = 0;
    work w = {0};
    w.t = t;
    vec cps = {0};
    sdunet_status st = utf8_decode(utf8, len, "prompt", &cps, err, SDUNET_E_INVALID_ARG);
    const uint32_t *c = cps.p;
    size_t n = cps.n, start = 0;
    /* Added tokens first, leftmost match. */
    for (size_t i = 0; !st && i < n;) {
        size_t mlen = 0;
        int32_t id = -1;
        if (c[i] == '<' && match_cps(c, i, n, BOS_STR)) {
            mlen = strlen(BOS_STR);
            id = t->bos;
        } else if (c[i] == '<' && match_cps(c, i, n, EOS_STR)) {
            mlen = strlen(EOS_STR);
            id = t->eos;
        } else if (t->split_len && n - i >= t->split_len &&
                   memcmp(c + i, t->split, t->split_len * sizeof *c) == 0) {
            mlen = t->split_len;
            id = t->pad;
        }
        if (!mlen) {
            i++;
            continue;
        }
        if (i > start)
            st = piece(&w, c + start, i - start, err);
        if (!st && !emit(&w, id))
            st = sd_fail(err, SDUNET_E_NOMEM, "out of memory");
        i += mlen;
        start = i;
    }
    if (!st && n > start)
        st = piece(&w, c + start, n - start, err);
    free(cps.p);
    work_free(&w);
    if (st) {
        free(w.ids.p);
        return st;
    }
    *ids = w.ids.n ? w.ids.p : NULL;
    if (!w.ids.n)
        free(w.ids.p);
    *n_ids = w.ids.n;
    return SDUNET_OK;
}

size_t sd_tokenizer_pad_ids(const sd_tokenizer *t, const int32_t *ids, size_t n_ids, size_t max_len,
                            int32_t *out)
{
    if (!t || !out || max_len < 2)
        return 0;
    size_t keep = n_ids < max_len - 2 ? n_ids : max_len - 2;
    if (!ids)
        keep = 0;
    out[0] = t->bos;
    for (size_t i = 0; i < keep; i++)
        out[1 + i] = ids[i];
    out[1 + keep] = t->eos;
    for (size_t i = 2 + keep; i < max_len; i++)
        out[i] = t->pad;
    return keep;
}

static const id_sym *find_id(const sd_tokenizer *t, int32_t id)
{
    size_t lo = 0, hi = t->n_ids;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->by_id[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < t->n_ids && t->by_id[lo].id == id ? &t->by_id[lo] : NULL;
}

const char *sd_tokenizer_piece(const sd_tokenizer *t, int32_t id)
{
    const id_sym *e = t ? find_id(t, id) : NULL;
    return e ? t->pool + t->sym_off[e->sym] : NULL;
}

sdunet_status sd_tokenizer_decode(const sd_tokenizer *t, const int32_t *ids, size_t n_ids,
                                  char **text, sdunet_error *err)
{
    if (!t || !text || (!ids && n_ids))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "NULL argument");
    *text = NULL;
    /* The pieces' characters back to bytes (characters outside the byte
     * alphabet, possible only in a custom vocabulary, stay UTF-8). */
    vec raw = {0};
    for (size_t i = 0; i < n_ids; i++) {
        const id_sym *e = find_id(t, ids[i]);
        if (!e) {
            free(raw.p);
            return sd_fail(err, SDUNET_E_INVALID_ARG, "id %d is not in the vocabulary",
                           (int)ids[i]);
        }
        const unsigned char *s = (const unsigned char *)t->pool + t->sym_off[e->sym];
        size_t n = t->sym_len[e->sym];
        if (!vec_reserve(&raw, raw.n + n, 1)) {
            free(raw.p);
            return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
        }
        unsigned char *o = raw.p;
        for (size_t j = 0; j < n;) {
            uint32_t cp;
            size_t k = utf8_get(s, n, j, &cp);
            if (!k) { /* not reachable: symbols are valid UTF-8 */
                o[raw.n++] = s[j++];
                continue;
            }
            int b = -1;
            if (cp < 256 && t->byte_cp[cp] == cp)
                b = (int)cp;
            else if (cp >= 256 && cp < 256 + 68)
                for (int x = 0; x < 256; x++)
                    if (t->byte_cp[x] == cp)
                        b = x;
            if (b >= 0) {
                o[raw.n++] = (unsigned char)b;
            } else {
                memcpy(o + raw.n, s + j, k);
                raw.n += k;
            }
            j += k;
        }
    }
    /* "</w>" -> " ", invalid UTF-8 -> U+FFFD (one per maximal bad subpart),
     * then strip whitespace. */
    size_t cap;
    if (!sd_mul_size(raw.n, 3, &cap) || !sd_add_size(cap, 1, &cap)) {
        free(raw.p);
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    }
    char *out = malloc(cap);
    if (!out) {
        free(raw.p);
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory");
    }
    const unsigned char *r = raw.p;
    size_t k = 0;
    for (size_t i = 0; i < raw.n;) {
        if (raw.n - i >= 4 && memcmp(r + i, "</w>", 4) == 0) {
            out[k++] = ' ';
            i += 4;
            continue;
        }
        uint32_t cp;
        size_t len = utf8_get(r, raw.n, i, &cp);
        if (len) {
            memcpy(out + k, r + i, len);
            k += len;
            i += len;
            continue;
        }
        /* The longest prefix of a valid sequence counts as one error. */
        size_t bad = 1;
        unsigned c0 = r[i];
        size_t want = c0 >= 0xC2 && c0 <= 0xDF   ? 2
                      : c0 >= 0xE0 && c0 <= 0xEF ? 3
                      : c0 >= 0xF0 && c0 <= 0xF4 ? 4
                                                 : 1;
        while (bad < want && i + bad < raw.n) {
            unsigned d = r[i + bad];
            unsigned lo = 0x80, hi = 0xBF;
            if (bad == 1) {
                lo = c0 == 0xE0 ? 0xA0 : c0 == 0xF0 ? 0x90 : 0x80;
                hi = c0 == 0xED ? 0x9F : c0 == 0xF4 ? 0x8F : 0xBF;
            }
            if (d < lo || d > hi)
                break;
            bad++;
        }
        k += utf8_put(0xFFFD, out + k);
        i += bad;
    }
    free(raw.p);
    out[k] = 0;
    /* strip(): Python whitespace at both ends. */
    size_t b = 0, e = k;
    while (b < e) {
        uint32_t cp;
        size_t len = utf8_get((const unsigned char *)out, e, b, &cp);
        if (!len || !uc_isspace(cp))
            break;
        b += len;
    }
    while (e > b) {
        size_t s = e - 1;
        while (s > b && ((unsigned char)out[s] & 0xC0) == 0x80)
            s--;
        uint32_t cp;
        size_t len = utf8_get((const unsigned char *)out, e, s, &cp);
        if (!len || !uc_isspace(cp))
            break;
        e = s;
    }
    memmove(out, out + b, e - b);
    out[e - b] = 0;
    *text = out;
    return SDUNET_OK;
}
