/* Prompts to encoder windows; AUTOMATIC1111's emphasis syntax. */
#include "clip/prompt.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

/* ---- AUTOMATIC1111 syntax ---- */

typedef struct plist {
    sd_prompt_piece *p;
    size_t n, cap;
} plist;

static int push(plist *l, const char *text, size_t len, double weight, int is_break)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        sd_prompt_piece *np = realloc(l->p, cap * sizeof *np);
        if (!np)
            return 0;
        l->p = np;
        l->cap = cap;
    }
    l->p[l->n++] = (sd_prompt_piece){text, len, weight, is_break};
    return 1;
}

/* A stack of piece indices where open brackets started. */
typedef struct istack {
    size_t *v;
    size_t n, cap;
} istack;

static int ipush(istack *s, size_t x)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 16;
        size_t *nv = realloc(s->v, cap * sizeof *nv);
        if (!nv)
            return 0;
        s->v = nv;
        s->cap = cap;
    }
    s->v[s->n++] = x;
    return 1;
}

static void multiply_from(plist *l, size_t start, double m)
{
    for (size_t i = start; i < l->n; i++)
        l->p[i].weight *= m;
}

/* ":" [spaces] [+-]?[.0-9]+ [spaces] ")" at s: its length and value, or 0. */
static size_t weight_close(const char *s, const char *end, double *value)
{
    const char *p = s + 1;
    while (p < end && isspace((unsigned char)*p))
        p++;
    const char *num = p;
    if (p < end && (*p == '+' || *p == '-'))
        p++;
    const char *digits = p;
    while (p < end && (isdigit((unsigned char)*p) || *p == '.'))
        p++;
    if (p == digits)
        return 0;
    size_t nlen = (size_t)(p - num);
    while (p < end && isspace((unsigned char)*p))
        p++;
    if (p >= end || *p != ')')
        return 0;
    /* Python's float() of the number text: one optional sign, digits with at
     * most one point and at least one digit. */
    char buf[64];
    int points = 0, ndig = 0;
    for (const char *q = digits; q < digits + (nlen - (size_t)(digits - num)); q++)
        points += *q == '.', ndig += *q != '.';
    if (points > 1 || ndig == 0 || nlen >= sizeof buf)
        return 0;
    memcpy(buf, num, nlen);
    buf[nlen] = 0;
    *value = strtod(buf, NULL);
    return (size_t)(p + 1 - s);
}

/* Adds plain text, split at whole-word "BREAK" (with the spaces around it). */
static int add_text(plist *l, const char *s, size_t len)
{
    size_t start = 0;
    for (size_t i = 0; i + 5 <= len; i++) {
        if (memcmp(s + i, "BREAK", 5) != 0)
            continue;
        int word_before = i > 0 && (isalnum((unsigned char)s[i - 1]) || s[i - 1] == '_');
        int word_after = i + 5 < len && (isalnum((unsigned char)s[i + 5]) || s[i + 5] == '_');
        if (word_before || word_after)
            continue;
        size_t a = i, b = i + 5;
        while (a > start && isspace((unsigned char)s[a - 1]))
            a--;
        while (b < len && isspace((unsigned char)s[b]))
            b++;
        if (!push(l, s + start, a - start, 1.0, 0) || !push(l, NULL, 0, -1.0, 1))
            return 0;
        start = b;
        i = b - 1;
    }
    return push(l, s + start, len - start, 1.0, 0);
}

sdunet_status sd_prompt_parse_a1111(const char *text, size_t len, sd_prompt_piece **out, size_t *n,
                                    char **buf, sdunet_error *err)
{
    plist l = {0};
    istack round = {0}, square = {0};
    const char *s = text, *end = text + len;
    int ok = 1;
    while (ok && s < end) {
        char c = *s;
        double w;
        size_t k;
        if (c == '\\') {
            if (s + 1 < end && strchr("()[]\\", s[1]) && s[1]) {
                ok = push(&l, s + 1, 1, 1.0, 0);
                s += 2;
            } else { /* a lone backslash: its text after the backslash is empty */
                s += 1;
            }
        } else if (c == '(') {
            ok = ipush(&round, l.n);
            s++;
        } else if (c == '[') {
            ok = ipush(&square, l.n);
            s++;
        } else if (c == ':' && (k = weight_close(s, end, &w)) != 0) {
            if (round.n)
                multiply_from(&l, round.v[--round.n], w);
            else
                ok = push(&l, s, k, 1.0, 0); /* no open bracket: literal text */
            s += k;
        } else if (c == ')' && round.n) {
            multiply_from(&l, round.v[--round.n], 1.1);
            s++;
        } else if (c == ']' && square.n) {
            multiply_from(&l, square.v[--square.n], 1 / 1.1);
            s++;
        } else if (c == ')' || c == ']' || c == ':') {
            ok = push(&l, s, 1, 1.0, 0);
            s++;
        } else {
            const char *t = s;
            while (t < end && !strchr("\\()[]:", *t))
                t++;
            ok = add_text(&l, s, (size_t)(t - s));
            s = t;
        }
    }
    for (size_t i = 0; ok && i < round.n; i++)
        multiply_from(&l, round.v[i], 1.1);
    for (size_t i = 0; ok && i < square.n; i++)
        multiply_from(&l, square.v[i], 1 / 1.1);
    free(round.v);
    free(square.v);
    if (ok && l.n == 0)
        ok = push(&l, text, 0, 1.0, 0);
    if (!ok) {
        free(l.p);
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory parsing the prompt");
    }
    /* Merge neighbours of equal weight, concatenating their texts into one
     * buffer (never longer than the prompt). */
    char *b = malloc(len + 1);
    if (!b) {
        free(l.p);
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory parsing the prompt");
    }
    size_t m = 0, used = 0;
    for (size_t i = 0; i < l.n; i++) {
        sd_prompt_piece piece = l.p[i];
        sd_prompt_piece *q = m ? &l.p[m - 1] : NULL;
        if (!piece.is_break)
            memcpy(b + used, piece.text, piece.len);
        if (q && !q->is_break && !piece.is_break && q->weight == piece.weight) {
            q->len += piece.len;
        } else {
            if (!piece.is_break)
                piece.text = b + used;
            l.p[m++] = piece;
        }
        used += piece.is_break ? 0 : piece.len;
    }
    *out = l.p;
    *n = m;
    *buf = b;
    return SDUNET_OK;
}

/* ---- windows ---- */

typedef struct toks {
    int32_t *id;
    float *w;
    int *brk; /* 1: a BREAK before this token position (or at the end) */
    size_t n, cap;
} toks;

static int toks_add(toks *t, int32_t id, float w, int brk)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 128;
        int32_t *ni = realloc(t->id, cap * sizeof *ni);
        if (ni)
            t->id = ni;
        float *nw = realloc(t->w, cap * sizeof *nw);
        if (nw)
            t->w = nw;
        int *nb = realloc(t->brk, cap * sizeof *nb);
        if (nb)
            t->brk = nb;
        if (!ni || !nw || !nb)
            return 0;
        t->cap = cap;
    }
    t->id[t->n] = id;
    t->w[t->n] = w;
    t->brk[t->n] = brk;
    t->n++;
    return 1;
}

static void toks_free(toks *t)
{
    free(t->id);
    free(t->w);
    free(t->brk);
}

/* Appends the tokens of one piece of text with weight w. */
static sdunet_status add_piece(const sd_tokenizer *tok, toks *t, const char *s, size_t len, float w,
                               sdunet_error *err)
{
    int32_t *ids = NULL;
    size_t n = 0;
    sdunet_status st = sd_tokenize(tok, s, len, &ids, &n, err);
    for (size_t i = 0; st == SDUNET_OK && i < n; i++)
        if (!toks_add(t, ids[i], w, 0))
            st = sd_fail(err, SDUNET_E_NOMEM, "out of memory tokenizing the prompt");
    free(ids);
    return st;
}

sdunet_status sd_prompt_windows_make(const sd_tokenizer *tok, const char *prompt, size_t len,
                                     int syntax, int chunk, sd_prompt_windows *w, sdunet_error *err)
{
    memset(w, 0, sizeof *w);
    toks t = {0};
    sdunet_status st = SDUNET_OK;
    /* A BREAK is a marker token (id -1) in the stream. */
    if (syntax == 1) {
        sd_prompt_piece *pieces = NULL;
        size_t np = 0;
        char *buf = NULL;
        st = sd_prompt_parse_a1111(prompt, len, &pieces, &np, &buf, err);
        for (size_t i = 0; st == SDUNET_OK && i < np; i++) {
            if (pieces[i].is_break) {
                if (!toks_add(&t, -1, 1.0f, 1))
                    st = sd_fail(err, SDUNET_E_NOMEM, "out of memory tokenizing the prompt");
            } else {
                st =
                    add_piece(tok, &t, pieces[i].text, pieces[i].len, (float)pieces[i].weight, err);
            }
        }
        free(pieces);
        free(buf);
    } else {
        st = add_piece(tok, &t, prompt, len, 1.0f, err);
    }
    if (st) {
        toks_free(&t);
        return st;
    }
    /* Windows: a full window closes when another token comes; a BREAK
     * closes the current one (even empty); the last closes if it has
     * tokens or there is none yet. */
    size_t nw = 0, fill = 0, n_tok = 0;
    for (size_t i = 0; i < t.n; i++) {
        if (t.id[i] < 0) {
            nw++, fill = 0;
            continue;
        }
        if (fill == SD_CLIP_CHUNK)
            nw++, fill = 0;
        fill++, n_tok++;
    }
    if (fill || nw == 0)
        nw++;
    w->n_tokens = n_tok;
    int keep = chunk ? (nw > 1u << 20 ? -1 : (int)nw) : 1;
    size_t total;
    if (keep < 0 || !sd_mul_size((size_t)keep, SD_CLIP_WINDOW, &total) ||
        !(w->ids = malloc(total * sizeof *w->ids)) ||
        !(w->weights = malloc(total * sizeof *w->weights))) {
        toks_free(&t);
        sd_prompt_windows_free(w);
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory: prompt too long");
    }
    w->n_windows = keep;
    const int32_t bos = sd_tokenizer_bos(tok), eos = sd_tokenizer_eos(tok),
                  pad = sd_tokenizer_pad(tok);
    for (size_t i = 0; i < total; i++) {
        w->ids[i] = i % SD_CLIP_WINDOW == 0 ? bos : pad;
        w->weights[i] = 1.0f;
    }
    size_t win = 0;
    fill = 0;
    for (size_t i = 0; i <= t.n; i++) {
        int close = i == t.n || t.id[i] < 0 || fill == SD_CLIP_CHUNK;
        if (close && (i < t.n || fill || win == 0)) {
            if (win < (size_t)keep)
                w->ids[win * SD_CLIP_WINDOW + 1 + fill] = eos;
            win++;
            fill = 0;
        }
        if (i == t.n || t.id[i] < 0)
            continue;
        if (win < (size_t)keep) {
            size_t pos = win * SD_CLIP_WINDOW + 1 + fill;
            w->ids[pos] = t.id[i];
            w->weights[pos] = t.w[i];
            w->weighted |= t.w[i] != 1.0f;
        } else {
            if (!w->dropped)
                w->dropped = malloc((t.n - i) * sizeof *w->dropped);
            if (w->dropped)
                w->dropped[w->n_dropped++] = t.id[i];
        }
        fill++;
    }
    toks_free(&t);
    return SDUNET_OK;
}

void sd_prompt_windows_free(sd_prompt_windows *w)
{
    if (!w)
        return;
    free(w->ids);
    free(w->weights);
    free(w->dropped);
    memset(w, 0, sizeof *w);
}

void sd_prompt_apply_weights(float *z, int dim, const float *weights)
{
    const size_t n = (size_t)SD_CLIP_WINDOW * dim;
    double before = 0, after = 0;
    for (size_t i = 0; i < n; i++)
        before += z[i];
    for (int r = 0; r < SD_CLIP_WINDOW; r++)
        for (int d = 0; d < dim; d++) {
            float *v = &z[(size_t)r * dim + d];
            *v *= weights[r];
            after += *v;
        }
    if (after == 0)
        return;
    const float f = (float)(before / after);
    for (size_t i = 0; i < n; i++)
        z[i] *= f;
}
