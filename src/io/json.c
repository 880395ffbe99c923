/* Strict RFC 8259 JSON parser producing a DOM.
 *
 * Memory layout: a cheap pre-scan of the text bounds the number of values,
 * strings and string bytes, so the whole DOM lives in four blocks (the
 * document header holding the root, one node pool, one key-pointer pool and
 * one string arena) whose sizes are proportional to the input. Children of a
 * container are collected on a temporary stack while it is being parsed and
 * copied into the pool as one contiguous slice when it closes. */
#include "io/json.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The root node is the first member, so the pointer handed out by
 * sd_json_parse is also a pointer to the document that owns the pools. */
typedef struct json_doc {
    sd_json root;
    sd_json *nodes;
    char **keys;
    char *arena;
} json_doc;

typedef struct parser {
    const unsigned char *p;
    size_t len;
    size_t pos;
    sdunet_error *err;
    sd_json *root;

    sd_json *nodes; /* pool of child nodes, and how many are used of cap */
    size_t n_nodes, cap_nodes;
    char **keys;
    size_t n_keys, cap_keys;
    char *arena;
    size_t n_arena, cap_arena;

    sd_json *vstack; /* pending children of the open containers */
    size_t n_vstack, cap_vstack;
    char **kstack; /* pending keys of the open objects */
    size_t n_kstack, cap_kstack;
} parser;

static sdunet_status fail_at(parser *ps, size_t at, const char *what)
{
    return sd_fail(ps->err, SDUNET_E_FORMAT, "invalid JSON: %s at byte %zu", what, at);
}

static sdunet_status fail_nomem(parser *ps)
{
    return sd_fail(ps->err, SDUNET_E_NOMEM, "out of memory while parsing JSON (%zu bytes)",
                   ps->len);
}

static int is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void skip_ws(parser *ps)
{
    while (ps->pos < ps->len && is_ws(ps->p[ps->pos]))
        ps->pos++;
}

/* Upper bounds for the pools: every value is either a string, a container
 * or a run of scalar characters, every key is a string, and decoded string
 * bytes never exceed the raw bytes between the quotes. Malformed text may
 * make these loose but the parser only accepts what the same tokenisation
 * saw, and the pools are bounds-checked anyway. *too_deep is the offset of
 * the first bracket past SD_JSON_MAX_DEPTH (SIZE_MAX if none): such a text
 * is refused before the pools are sized by its bracket count. */
static void prescan(const unsigned char *p, size_t len, size_t *values, size_t *strings,
                    size_t *bytes, size_t *too_deep)
{
    size_t nv = 0, ns = 0, nb = 0;
    int in_run = 0;
    size_t i = 0, depth = 0;
    *too_deep = SIZE_MAX;
    while (i < len) {
        unsigned char c = p[i];
        if (c == '"') {
            ns++;
            i++;
            while (i < len && p[i] != '"') {
                if (p[i] == '\\' && i + 1 < len) {
                    i++;
                    nb++;
                }
                i++;
                nb++;
            }
            nb++; /* the terminating NUL */
            i++;
            in_run = 0;
            continue;
        }
        int scalar = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                     c == '-' || c == '+' || c == '.';
        if (scalar && !in_run)
            nv++;
        in_run = scalar;
        if (c == '[' || c == '{') {
            nv++;
            if (++depth > SD_JSON_MAX_DEPTH && *too_deep == SIZE_MAX)
                *too_deep = i;
        } else if ((c == ']' || c == '}') && depth > 0) {
            depth--;
        }
        i++;
    }
    *values = nv + ns;
    *strings = ns;
    *bytes = nb;
}

static unsigned hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return (unsigned)(c - '0');
    if (c >= 'a' && c <= 'f')
        return (unsigned)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F')
        return (unsigned)(c - 'A' + 10);
    return 16;
}

/* Reads the 4 hex digits of a \u escape starting at ps->pos. */
static sdunet_status read_hex4(parser *ps, unsigned *out)
{
    if (ps->len - ps->pos < 4)
        return fail_at(ps, ps->pos, "truncated \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        unsigned h = hexval(ps->p[ps->pos + (size_t)k]);
        if (h > 15)
            return fail_at(ps, ps->pos + (size_t)k, "invalid hex digit in \\u escape");
        v = v * 16 + h;
    }
    ps->pos += 4;
    *out = v;
    return SDUNET_OK;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0 if the
 * bytes are not well-formed UTF-8 (overlong forms, surrogates and code
 * points past U+10FFFF are rejected as RFC 3629 requires). */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (n < need)
        return 0;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t k = 2; k < need; k++)
        if (s[k] < 0x80 || s[k] > 0xBF)
            return 0;
    return need;
}

static size_t put_utf8(char *dst, unsigned cp)
{
    if (cp < 0x80) {
        dst[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        dst[0] = (char)(0xC0 | (cp >> 6));
        dst[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        dst[0] = (char)(0xE0 | (cp >> 12));
        dst[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        dst[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    dst[0] = (char)(0xF0 | (cp >> 18));
    dst[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    dst[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    dst[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Parses a string at ps->pos (on the opening quote) into the arena. */
static sdunet_status parse_string(parser *ps, char **out, size_t *out_len)
{
    size_t start = ps->pos;
    ps->pos++;
    char *dst = ps->arena + ps->n_arena;
    size_t room = ps->cap_arena - ps->n_arena;
    size_t n = 0;
    for (;;) {
        if (ps->pos >= ps->len)
            return fail_at(ps, start, "unterminated string");
        unsigned char c = ps->p[ps->pos];
        if (c == '"') {
            ps->pos++;
            break;
        }
        if (c < 0x20)
            return fail_at(ps, ps->pos, "control character in string");
        /* The pre-scan guarantees room; checked again so a disagreement can
         * never write past the arena. Every branch writes at most 4 bytes
         * and keeps room for the NUL. */
        if (room - n < 5)
            return fail_at(ps, ps->pos, "internal string size mismatch");
        if (c == '\\') {
            size_t esc = ps->pos;
            if (ps->pos + 1 >= ps->len)
                return fail_at(ps, esc, "unterminated escape");
            unsigned char e = ps->p[ps->pos + 1];
            ps->pos += 2;
            switch (e) {
            case '"': dst[n++] = '"'; break;
            case '\\': dst[n++] = '\\'; break;
            case '/': dst[n++] = '/'; break;
            case 'b': dst[n++] = '\b'; break;
            case 'f': dst[n++] = '\f'; break;
            case 'n': dst[n++] = '\n'; break;
            case 'r': dst[n++] = '\r'; break;
            case 't': dst[n++] = '\t'; break;
            case 'u': {
                unsigned cp;
                sdunet_status st = read_hex4(ps, &cp);
                if (st)
                    return st;
                if (cp >= 0xDC00 && cp <= 0xDFFF)
                    return fail_at(ps, esc, "unpaired low surrogate escape");
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (ps->len - ps->pos < 2 || ps->p[ps->pos] != '\\' ||
                        ps->p[ps->pos + 1] != 'u')
                        return fail_at(ps, esc, "high surrogate escape without low surrogate");
                    ps->pos += 2;
                    unsigned lo;
                    st = read_hex4(ps, &lo);
                    if (st)
                        return st;
                    if (lo < 0xDC00 || lo > 0xDFFF)
                        return fail_at(ps, esc, "high surrogate escape without low surrogate");
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                if (cp == 0)
                    return fail_at(ps, esc, "\\u0000 in string");
                n += put_utf8(dst + n, cp);
                break;
            }
            default: return fail_at(ps, esc, "invalid escape in string");
            }
            continue;
        }
        size_t k = utf8_seq(ps->p + ps->pos, ps->len - ps->pos);
        if (k == 0)
            return fail_at(ps, ps->pos, "invalid UTF-8 in string");
        memcpy(dst + n, ps->p + ps->pos, k);
        n += k;
        ps->pos += k;
    }
    dst[n] = '\0';
    ps->n_arena += n + 1;
    *out = dst;
    *out_len = n;
    return SDUNET_OK;
}

/* Exact conversion when the significant digits fit in 53 bits and the
 * power of ten is itself exact (|e| <= 22): one correctly rounded multiply
 * or divide (Clinger's fast path). Needs double evaluation in double. */
static int fast_decimal(const unsigned char *p, size_t i0, size_t i1, size_t f0, size_t f1,
                        int64_t exp10, int neg, double *out)
{
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
    static const double p10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                 1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    uint64_t m = 0;
    int nd = 0; /* significant digits so far; leading zeros do not count */
    for (size_t k = i0; k < i1; k++) {
        if (nd == 0 && p[k] == '0')
            continue;
        if (++nd > 15)
            return 0;
        m = m * 10 + (uint64_t)(p[k] - '0');
    }
    for (size_t k = f0; k < f1; k++) {
        exp10--;
        if (nd == 0 && p[k] == '0')
            continue;
        if (++nd > 15)
            return 0;
        m = m * 10 + (uint64_t)(p[k] - '0');
    }
    if (exp10 < -22 || exp10 > 22)
        return 0;
    double d = (double)m;
    d = exp10 < 0 ? d / p10[-exp10] : d * p10[exp10];
    *out = neg ? -d : d;
    return 1;
#else
    (void)p, (void)i0, (void)i1, (void)f0, (void)f1, (void)exp10, (void)neg, (void)out;
    return 0;
#endif
}

/* General case: strtod on a copy written as "<digits>e<exp>", with no
 * decimal point, so the result does not depend on the C locale. */
static sdunet_status slow_decimal(parser *ps, size_t i0, size_t i1, size_t f0, size_t f1,
                                  int64_t exp10, int neg, double *out)
{
    const unsigned char *p = ps->p;
    size_t nd = (i1 - i0) + (f1 - f0);
    char small[96];
    char *buf = small;
    size_t need = nd + 32;
    if (need > sizeof small) {
        buf = sd_alloc(need);
        if (!buf)
            return fail_nomem(ps);
    }
    size_t b = 0;
    if (neg)
        buf[b++] = '-';
    size_t digits_start = b;
    for (size_t k = i0; k < i1; k++)
        if (b > digits_start || p[k] != '0')
            buf[b++] = (char)p[k];
    for (size_t k = f0; k < f1; k++) {
        if (b > digits_start || p[k] != '0')
            buf[b++] = (char)p[k];
        exp10--;
    }
    if (b == digits_start) {
        buf[b++] = '0';
        exp10 = 0;
    }
    buf[b++] = 'e';
    if (exp10 < 0) {
        buf[b++] = '-';
        exp10 = -exp10;
    }
    char rev[24];
    int nr = 0;
    do {
        rev[nr++] = (char)('0' + exp10 % 10);
        exp10 /= 10;
    } while (exp10);
    while (nr)
        buf[b++] = rev[--nr];
    buf[b] = '\0';
    *out = strtod(buf, NULL);
    if (buf != small)
        sd_free(buf);
    return SDUNET_OK;
}

/* Parses a number at ps->pos. The grammar is checked by hand; the value is
 * comes from the exact int64, the fast path, or strtod, in that order. */
static sdunet_status parse_number(parser *ps, sd_json *v)
{
    const unsigned char *p = ps->p;
    size_t start = ps->pos, i = ps->pos, len = ps->len;
    int neg = 0;
    if (i < len && p[i] == '-') {
        neg = 1;
        i++;
    }
    if (i >= len || p[i] < '0' || p[i] > '9')
        return fail_at(ps, start, "invalid number");
    size_t int_start = i;
    if (p[i] == '0') {
        i++;
        if (i < len && p[i] >= '0' && p[i] <= '9')
            return fail_at(ps, start, "leading zero in number");
    } else {
        while (i < len && p[i] >= '0' && p[i] <= '9')
            i++;
    }
    size_t int_end = i, frac_start = i, frac_end = i;
    int is_int = 1;
    if (i < len && p[i] == '.') {
        is_int = 0;
        i++;
        frac_start = i;
        if (i >= len || p[i] < '0' || p[i] > '9')
            return fail_at(ps, start, "digit expected after decimal point");
        while (i < len && p[i] >= '0' && p[i] <= '9')
            i++;
        frac_end = i;
    }
    int64_t exp10 = 0;
    if (i < len && (p[i] == 'e' || p[i] == 'E')) {
        is_int = 0;
        i++;
        int eneg = 0;
        if (i < len && (p[i] == '+' || p[i] == '-')) {
            eneg = p[i] == '-';
            i++;
        }
        if (i >= len || p[i] < '0' || p[i] > '9')
            return fail_at(ps, start, "digit expected in exponent");
        while (i < len && p[i] >= '0' && p[i] <= '9') {
            /* Saturate: anything this large is 0 or out of range anyway. */
            if (exp10 < 1000000000)
                exp10 = exp10 * 10 + (p[i] - '0');
            i++;
        }
        if (eneg)
            exp10 = -exp10;
    }
    ps->pos = i;

    v->type = SD_JSON_NUMBER;
    if (is_int) {
        /* Accumulate negatively so INT64_MIN fits. */
        int64_t acc = 0;
        int ok = 1;
        for (size_t k = int_start; k < int_end; k++) {
            int d = p[k] - '0';
            if (acc < (INT64_MIN + d) / 10) {
                ok = 0;
                break;
            }
            acc = acc * 10 - d;
        }
        if (ok && !neg && acc == INT64_MIN)
            ok = 0;
        if (ok) {
            v->is_int = 1;
            v->integer = neg ? acc : -acc;
        }
    }

    double d = 0;
    if (v->is_int) {
        /* int64 -> double rounds to nearest: the correctly rounded value. */
        d = (double)v->integer;
        if (neg && v->integer == 0)
            d = -0.0;
    } else if (!fast_decimal(p, int_start, int_end, frac_start, frac_end, exp10, neg, &d)) {
        sdunet_status st =
            slow_decimal(ps, int_start, int_end, frac_start, frac_end, exp10, neg, &d);
        if (st)
            return st;
    }
    /* Underflow to a subnormal or zero is still a faithful reading of the
     * text; only overflow is out of range. */
    if (isinf(d))
        return fail_at(ps, start, "number out of double range");
    v->number = d;
    return SDUNET_OK;
}

static sdunet_status parse_value(parser *ps, size_t slot, int depth);

/* Moves the top `k` entries of the value stack (and key stack for objects)
 * into the pools as the children of v. */
static sdunet_status close_container(parser *ps, sd_json *v, size_t k, int is_object,
                                     size_t open_at)
{
    v->len = k;
    if (k == 0)
        return SDUNET_OK;
    if (ps->cap_nodes - ps->n_nodes < k || (is_object && ps->cap_keys - ps->n_keys < k))
        return fail_at(ps, open_at, "internal node count mismatch");
    v->items = ps->nodes + ps->n_nodes;
    memcpy(v->items, ps->vstack + (ps->n_vstack - k), k * sizeof *v->items);
    ps->n_nodes += k;
    ps->n_vstack -= k;
    if (is_object) {
        v->keys = ps->keys + ps->n_keys;
        memcpy(v->keys, ps->kstack + (ps->n_kstack - k), k * sizeof *v->keys);
        ps->n_keys += k;
        ps->n_kstack -= k;
    }
    return SDUNET_OK;
}

static int cmp_strp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Duplicate keys are rejected: small objects by pairwise compare, large ones
 * (a safetensors header can have a million keys) by sorting a copy. */
static sdunet_status check_dup_keys(parser *ps, const sd_json *obj, size_t open_at)
{
    size_t k = obj->len;
    const char *dup = NULL;
    if (k <= 16) {
        for (size_t a = 0; a < k && !dup; a++)
            for (size_t b = a + 1; b < k; b++)
                if (strcmp(obj->keys[a], obj->keys[b]) == 0) {
                    dup = obj->keys[a];
                    break;
                }
    } else {
        char **tmp = sd_alloc(k * sizeof *tmp);
        if (!tmp)
            return fail_nomem(ps);
        memcpy(tmp, obj->keys, k * sizeof *tmp);
        qsort(tmp, k, sizeof *tmp, cmp_strp);
        for (size_t a = 1; a < k; a++)
            if (strcmp(tmp[a - 1], tmp[a]) == 0) {
                dup = tmp[a];
                break;
            }
        sd_free(tmp);
    }
    if (dup)
        return sd_fail(ps->err, SDUNET_E_FORMAT,
                       "invalid JSON: duplicate key \"%.200s\" in object at byte %zu", dup,
                       open_at);
    return SDUNET_OK;
}

static sdunet_status parse_array(parser *ps, sd_json *v, int depth)
{
    size_t open_at = ps->pos;
    v->type = SD_JSON_ARRAY;
    ps->pos++;
    size_t k = 0;
    skip_ws(ps);
    if (ps->pos < ps->len && ps->p[ps->pos] == ']') {
        ps->pos++;
        return SDUNET_OK;
    }
    for (;;) {
        if (!sd_grow((void **)&ps->vstack, &ps->cap_vstack, ps->n_vstack + 1, sizeof *ps->vstack,
                     ps->cap_nodes))
            return fail_nomem(ps);
        size_t child = ps->n_vstack++;
        memset(&ps->vstack[child], 0, sizeof ps->vstack[child]);
        k++;
        sdunet_status st = parse_value(ps, child, depth + 1);
        if (st)
            return st;
        skip_ws(ps);
        if (ps->pos >= ps->len)
            return fail_at(ps, open_at, "unterminated array");
        unsigned char c = ps->p[ps->pos];
        if (c == ',') {
            ps->pos++;
            continue;
        }
        if (c == ']') {
            ps->pos++;
            break;
        }
        return fail_at(ps, ps->pos, "',' or ']' expected");
    }
    return close_container(ps, v, k, 0, open_at);
}

static sdunet_status parse_object(parser *ps, sd_json *v, int depth)
{
    size_t open_at = ps->pos;
    v->type = SD_JSON_OBJECT;
    ps->pos++;
    size_t k = 0;
    skip_ws(ps);
    if (ps->pos < ps->len && ps->p[ps->pos] == '}') {
        ps->pos++;
        return SDUNET_OK;
    }
    for (;;) {
        skip_ws(ps);
        if (ps->pos >= ps->len)
            return fail_at(ps, open_at, "unterminated object");
        if (ps->p[ps->pos] != '"')
            return fail_at(ps, ps->pos, "string key expected");
        if (!sd_grow((void **)&ps->kstack, &ps->cap_kstack, ps->n_kstack + 1, sizeof *ps->kstack,
                     ps->cap_keys) ||
            !sd_grow((void **)&ps->vstack, &ps->cap_vstack, ps->n_vstack + 1, sizeof *ps->vstack,
                     ps->cap_nodes))
            return fail_nomem(ps);
        char *key;
        size_t key_len;
        sdunet_status st = parse_string(ps, &key, &key_len);
        if (st)
            return st;
        ps->kstack[ps->n_kstack++] = key;
        size_t child = ps->n_vstack++;
        memset(&ps->vstack[child], 0, sizeof ps->vstack[child]);
        k++;
        skip_ws(ps);
        if (ps->pos >= ps->len || ps->p[ps->pos] != ':')
            return fail_at(ps, ps->pos, "':' expected after object key");
        ps->pos++;
        st = parse_value(ps, child, depth + 1);
        if (st)
            return st;
        skip_ws(ps);
        if (ps->pos >= ps->len)
            return fail_at(ps, open_at, "unterminated object");
        unsigned char c = ps->p[ps->pos];
        if (c == ',') {
            ps->pos++;
            continue;
        }
        if (c == '}') {
            ps->pos++;
            break;
        }
        return fail_at(ps, ps->pos, "',' or '}' expected");
    }
    sdunet_status st = close_container(ps, v, k, 1, open_at);
    if (st)
        return st;
    return check_dup_keys(ps, v, open_at);
}

static int match_word(parser *ps, const char *w)
{
    size_t n = strlen(w);
    if (ps->len - ps->pos < n || memcmp(ps->p + ps->pos, w, n) != 0)
        return 0;
    ps->pos += n;
    return 1;
}

/* Children live on the value stack, which parsing a nested container may
 * reallocate, so values are addressed by slot index (ROOT_SLOT for the
 * document root) and the pointer is re-derived after any nested parse. */
#define ROOT_SLOT SIZE_MAX

static sd_json *slot_ptr(parser *ps, size_t slot)
{
    return slot == ROOT_SLOT ? ps->root : &ps->vstack[slot];
}

static sdunet_status parse_value(parser *ps, size_t slot, int depth)
{
    skip_ws(ps);
    if (ps->pos >= ps->len)
        return fail_at(ps, ps->pos, "value expected");
    unsigned char c = ps->p[ps->pos];
    size_t at = ps->pos;
    sd_json *v = slot_ptr(ps, slot);
    switch (c) {
    case '{':
    case '[': {
        if (depth >= SD_JSON_MAX_DEPTH)
            return fail_at(ps, at, "nesting deeper than the limit");
        sd_json tmp;
        memset(&tmp, 0, sizeof tmp);
        sdunet_status st = c == '{' ? parse_object(ps, &tmp, depth) : parse_array(ps, &tmp, depth);
        if (st)
            return st;
        *slot_ptr(ps, slot) = tmp;
        return SDUNET_OK;
    }
    case '"': v->type = SD_JSON_STRING; return parse_string(ps, &v->string, &v->len);
    case 't':
        if (!match_word(ps, "true"))
            break;
        v->type = SD_JSON_BOOL;
        v->boolean = 1;
        return SDUNET_OK;
    case 'f':
        if (!match_word(ps, "false"))
            break;
        v->type = SD_JSON_BOOL;
        v->boolean = 0;
        return SDUNET_OK;
    case 'n':
        if (!match_word(ps, "null"))
            break;
        v->type = SD_JSON_NULL;
        return SDUNET_OK;
    default:
        if (c == '-' || (c >= '0' && c <= '9'))
            return parse_number(ps, v);
        break;
    }
    if (c == 'N' || c == 'I')
        return fail_at(ps, at, "invalid literal (NaN and Infinity are not JSON)");
    if (c < 0x20 || c >= 0x7F)
        return fail_at(ps, at, "unexpected byte");
    char what[40];
    snprintf(what, sizeof what, "invalid literal starting with '%c'", c);
    return fail_at(ps, at, what);
}

static void free_parser_temps(parser *ps)
{
    sd_free(ps->vstack);
    sd_free(ps->kstack);
    ps->vstack = NULL;
    ps->kstack = NULL;
}

sdunet_status sd_json_parse(const char *text, size_t len, sd_json **out, sdunet_error *err)
{
    if (!out || (!text && len))
        return sd_fail(err, SDUNET_E_INVALID_ARG, "sd_json_parse: NULL argument");
    *out = NULL;
    parser ps;
    memset(&ps, 0, sizeof ps);
    ps.p = (const unsigned char *)text;
    ps.len = len;
    ps.err = err;

    size_t n_values = 0, n_strings = 0, n_bytes = 0, too_deep = SIZE_MAX;
    if (len)
        prescan(ps.p, len, &n_values, &n_strings, &n_bytes, &too_deep);
    if (too_deep != SIZE_MAX)
        return fail_at(&ps, too_deep, "nesting deeper than the limit");

    json_doc *doc = sd_calloc(1, sizeof *doc);
    size_t node_bytes, key_bytes;
    if (!doc || !sd_mul_size(n_values, sizeof(sd_json), &node_bytes) ||
        !sd_mul_size(n_strings, sizeof(char *), &key_bytes)) {
        sd_free(doc);
        return fail_nomem(&ps);
    }
    /* The arena gets 4 spare bytes so parse_string's fixed per-step margin
     * check never rejects a string whose decoded size is within bounds. */
    doc->nodes = sd_alloc(node_bytes);
    doc->keys = sd_alloc(key_bytes);
    doc->arena = sd_alloc(n_bytes + 4);
    if (!doc->nodes || !doc->keys || !doc->arena) {
        sd_json_free(&doc->root);
        return fail_nomem(&ps);
    }
    ps.nodes = doc->nodes;
    ps.cap_nodes = n_values;
    ps.keys = doc->keys;
    ps.cap_keys = n_strings;
    ps.arena = doc->arena;
    ps.cap_arena = n_bytes + 4;

    ps.root = &doc->root;
    sdunet_status st = parse_value(&ps, ROOT_SLOT, 0);
    if (st == SDUNET_OK) {
        skip_ws(&ps);
        if (ps.pos != ps.len)
            st = fail_at(&ps, ps.pos, "trailing characters after the document");
    }
    free_parser_temps(&ps);
    if (st) {
        sd_json_free(&doc->root);
        return st;
    }
    *out = &doc->root;
    return SDUNET_OK;
}

void sd_json_free(sd_json *j)
{
    if (!j)
        return;
    json_doc *doc = (json_doc *)j;
    sd_free(doc->nodes);
    sd_free(doc->keys);
    sd_free(doc->arena);
    sd_free(doc);
}

const sd_json *sd_json_get(const sd_json *obj, const char *key)
{
    if (!obj || !key || obj->type != SD_JSON_OBJECT)
        return NULL;
    for (size_t i = 0; i < obj->len; i++)
        if (strcmp(obj->keys[i], key) == 0)
            return &obj->items[i];
    return NULL;
}

int sd_json_null_or_false(const sd_json *v)
{
    return !v || v->type == SD_JSON_NULL || (v->type == SD_JSON_BOOL && !v->boolean);
}

sdunet_status sd_json_config_int(const sd_json *obj, const char *key, int lo, int hi,
                                 const char *what, int *out, sdunet_error *err)
{
    const sd_json *v = sd_json_get(obj, key);
    if (!v || v->type == SD_JSON_NULL)
        return SDUNET_OK;
    if (v->type != SD_JSON_NUMBER || !v->is_int || v->integer < lo || v->integer > hi)
        return sd_fail(err, SDUNET_E_CONFIG, "%s: '%s' must be an integer in %d..%d", what, key, lo,
                       hi);
    *out = (int)v->integer;
    return SDUNET_OK;
}

sdunet_status sd_json_config_bool(const sd_json *obj, const char *key, const char *what, int *out,
                                  sdunet_error *err)
{
    const sd_json *v = sd_json_get(obj, key);
    if (!v || v->type == SD_JSON_NULL)
        return SDUNET_OK;
    if (v->type != SD_JSON_BOOL)
        return sd_fail(err, SDUNET_E_CONFIG, "%s: '%s' must be true or false", what, key);
    *out = v->boolean;
    return SDUNET_OK;
}

sdunet_status sd_json_config_float(const sd_json *obj, const char *key, const char *what,
                                   float *out, sdunet_error *err)
{
    const sd_json *v = sd_json_get(obj, key);
    if (!v || v->type == SD_JSON_NULL)
        return SDUNET_OK;
    if (v->type != SD_JSON_NUMBER || !isfinite(v->number))
        return sd_fail(err, SDUNET_E_CONFIG, "%s: '%s' must be a number", what, key);
    *out = (float)v->number;
    return SDUNET_OK;
}

char *sd_json_from_python(const char *text, size_t len, size_t *out_len)
{
    size_t cap;
    if (!sd_mul_size(len, 2, &cap) || !sd_add_size(cap, 1, &cap))
        return NULL;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    size_t o = 0;
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (in_str) {
            out[o++] = c;
            if (c == '\\' && i + 1 < len)
                out[o++] = text[++i];
            else if (c == '"')
                in_str = 0;
            continue;
        }
        static const char *const lit[3] = {"-Infinity", "Infinity", "NaN"};
        size_t k;
        for (k = 0; k < 3; k++) {
            size_t n = strlen(lit[k]);
            if (len - i >= n && memcmp(text + i, lit[k], n) == 0)
                break;
        }
        if (k < 3) {
            memcpy(out + o, "null", 4);
            o += 4;
            i += strlen(lit[k]) - 1;
            continue;
        }
        in_str = c == '"';
        out[o++] = c;
    }
    out[o] = 0;
    *out_len = o;
    return out;
}

sdunet_status sd_json_parse_config(const char *text, size_t len, const char *what, sd_json **out,
                                   sdunet_error *err)
{
    if (sd_json_parse(text, len, out, err) == SDUNET_OK)
        return SDUNET_OK;
    if (err)
        err->code = SDUNET_E_CONFIG;
    sd_err_prefix(err, what);
    return SDUNET_E_CONFIG;
}
