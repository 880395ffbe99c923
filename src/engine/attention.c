/* Multi-head attention, tiled with an online softmax (the FlashAttention
 * recurrence), so no Nq x Nk score matrix is ever formed.
 *
 * Everything is computed transposed, keys and channels as GEMM rows and
 * queries as the nr-wide GEMM columns:
 *   S^T (keys x queries) = K Q^T        A = K panels,   B = Q^T panels
 *   O^T (dh x queries)  += V^T P^T      A = V^T panels, B = P^T
 * The microkernel stores an S^T tile as mr key rows of nr queries, which is
 * exactly the B-panel layout P^T needs, so probabilities are never
 * repacked; each query is one vector lane, so the running max, the sums and
 * the rescaling are plain vertical vector operations (kern->softmax_cols); and channels are
 * padded to a multiple of mr rather than nr (16). A kernel set may fuse the
 * steps: kern->attn_tile computes a key block's S^T tiles and their softmax
 * step (in base 2, the scale folded into Q^T), kern->attn_pv the O^T update
 * with the rescale folded in; without them micro and softmax_cols run.
 *
 * K and V are packed once per (batch, head) into a shared buffer, a few
 * (batch, head) pairs at a time to bound its size; then a task owns one
 * (batch, head, query block) and walks all key blocks with a few tiles of
 * per-thread scratch. */
#include "engine/kernels.h"

#include <math.h>
#include <string.h>

#define BQ_TARGET 64           /* queries per task: 4 panels of 16 */
#define BK_TARGET 256          /* keys per block (rounded to a multiple of mr) */
#define PACK_BUDGET (2u << 20) /* floats of packed K/V held at once (8 MiB) */

typedef struct {
    const sd_kernels *kern;
    int heads, dh, Nq, Nk;
    const float *q, *k, *v;
    int ldq, ldk, ldv, ldo;
    float *o;
    float scale;
    int causal; /* key k is masked for query i when k > i */
    int bq, bk, dhm, qblocks, kchunks, bh0;
    size_t kp_size, per_bh; /* floats: packed K of one (b,h); K + V^T of one (b,h) */
    float *packed;          /* per (b,h) of the group: K panels, then V^T panels */
    float *scratch;
    size_t per_thread;
} attn_job;

/* Packs rows [0, count) of `len` floats (row i at base + i*ld, rows at or
 * past `valid` read as zero) into mr-row panels of len steps. len may
 * exceed the zero row, so it goes in SD_KC_MAX pieces. */
static void pack_rows_strided(const float *base, size_t ld, int valid, int count, int mr, int len,
                              const sd_kernels *kern, float *dst)
{
    const float *r[16];
    for (int p = 0; p * mr < count; p++) {
        float *dp = dst + (size_t)p * len * mr;
        for (int d0 = 0; d0 < len; d0 += SD_KC_MAX) {
            int n = len - d0 < SD_KC_MAX ? len - d0 : SD_KC_MAX;
            for (int i = 0; i < mr; i++) {
                int row = p * mr + i;
                r[i] = row < valid ? base + (size_t)row * ld + d0 : sd_zero_row;
            }
            if (mr == kern->mr)
                kern->pack_panel(r, n, dp + (size_t)d0 * mr);
            else
                sd_pack_rows(r, mr, n, dp + (size_t)d0 * mr);
        }
    }
}

/* Pass 1: pack a chunk of bk keys of one (b,h):
 * K as A panels:   Kp[p][d][i] = k[key p*mr + i][d]            (zero past Nk)
 * V^T as A panels: Vp[cp][key][i] = v[key][cp*mr + i]          (zero past dh) */
static void attn_pack(void *ctx, int64_t task, int thread)
{
    (void)thread;
    const attn_job *j = ctx;
    const int mr = j->kern->mr, dh = j->dh;
    const int bhi = (int)(task / j->kchunks), chunk = (int)(task % j->kchunks);
    const int bh = j->bh0 + bhi, b = bh / j->heads, h = bh % j->heads;
    const int k0 = chunk * j->bk, nk = j->Nk - k0 < j->bk ? j->Nk - k0 : j->bk;
    float *Kp = j->packed + (size_t)bhi * j->per_bh, *Vp = Kp + j->kp_size;

    pack_rows_strided(j->k + (size_t)(b * j->Nk + k0) * j->ldk + (size_t)h * dh, (size_t)j->ldk, nk,
                      nk, mr, dh, j->kern, Kp + (size_t)k0 * dh);
    for (int key = k0; key < k0 + nk; key++) {
        const float *vr = j->v + (size_t)(b * j->Nk + key) * j->ldv + (size_t)h * dh;
        for (int cp = 0; cp * mr < dh; cp++) {
            float *d = Vp + ((size_t)cp * j->Nk + key) * mr;
            int n = dh - cp * mr < mr ? dh - cp * mr : mr;
            for (int i = 0; i < n; i++)
                d[i] = vr[cp * mr + i];
            for (int i = n; i < mr; i++)
                d[i] = 0.0f;
        }
    }
}

/* x[i] *= f[i]; runs of 16 with a fixed trip count, which -O2 vectorises. */
static void scale_row(float *restrict x, const float *restrict f, int n)
{
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int c = 0; c < 16; c++)
            x[i + c] *= f[i + c];
    for (; i < n; i++)
        x[i] *= f[i];
}

/* Pass 2: one (b,h, query block) against all keys. */
static void attn_block(void *ctx, int64_t task, int thread)
{
    const attn_job *j = ctx;
    const sd_kernels *kern = j->kern;
    const int mr = kern->mr, nr = kern->nr, dh = j->dh, dhm = j->dhm, BQ = j->bq, BK = j->bk;
    const int bhi = (int)(task / j->qblocks), qb = (int)(task % j->qblocks);
    const int bh = j->bh0 + bhi, b = bh / j->heads, h = bh % j->heads;
    const int q0 = qb * BQ, nq = j->Nq - q0 < BQ ? j->Nq - q0 : BQ;
    const int qpan = (nq + nr - 1) / nr, ldacc = qpan * nr;
    const float *Kp = j->packed + (size_t)bhi * j->per_bh, *Vp = Kp + j->kp_size;

    float *qB = j->scratch + (size_t)thread * j->per_thread; /* qpan x dh x nr: Q^T panels */
    float *sT = qB + (size_t)BQ * dh;                        /* qpan x BK x nr: S^T, then P^T */
    float *acc = sT + (size_t)BQ * BK;                       /* dhm x ldacc: O^T */
    float *mrun = acc + (size_t)dhm * BQ;                    /* running max of s*scale */
    float *mnew = mrun + BQ, *colsum = mnew + BQ, *corr = colsum + BQ;
    double *lrun = (double *)(corr + BQ); /* running sum (BQ is even: 8-byte aligned) */

    pack_rows_strided(j->q + (size_t)(b * j->Nq + q0) * j->ldq + (size_t)h * dh, (size_t)j->ldq, nq,
                      qpan * nr, nr, dh, kern, qB);
    /* With attn_tile the scores come out in base 2: log2(e) * scale is
     * folded into Q^T, so neither the max nor the exponent argument needs
     * a product (one more rounding per query element, of the size of the
     * products' own). The causal mask is applied between the two steps,
     * so the causal path keeps micro and softmax_cols. */
    const int tiled = kern->attn_tile && !j->causal;
    if (tiled) {
        const float qs = (float)((double)j->scale * 1.4426950408889634);
        for (size_t i = 0; i < (size_t)qpan * nr * dh; i++)
            qB[i] *= qs;
    }
    for (int i = 0; i < ldacc; i++) {
        mrun[i] = -INFINITY;
        lrun[i] = 0.0;
    }

    for (int k0 = 0, kb = 0; k0 < j->Nk; k0 += BK, kb++) {
        if (j->causal && k0 > q0 + nq - 1)
            break; /* every later key is masked for every query of the block */
        const int nk = j->Nk - k0 < BK ? j->Nk - k0 : BK, kpan = (nk + mr - 1) / mr;
        if (tiled) {
            kern->attn_tile(dh, nk, qpan, Kp + (size_t)k0 * dh, qB, sT, BK * nr, mrun, colsum,
                            corr);
            for (int i = 0; i < ldacc; i++) {
                corr[i] = kb > 0 ? corr[i] : 0.0f;
                lrun[i] = lrun[i] * corr[i] + colsum[i];
            }
        }
        for (int jq = 0; jq < qpan && !tiled; jq++) {
            float *st = sT + (size_t)jq * BK * nr;
            /* S^T tile rows past nk hold zero-key scores; nothing reads them. */
            for (int p = 0; p < kpan; p++)
                kern->micro(dh, Kp + (size_t)(k0 + p * mr) * dh, qB + (size_t)jq * dh * nr,
                            st + (size_t)p * mr * nr, nr, 0, mr, nr, NULL);
            if (j->causal) /* key 0 is never masked, so every column keeps a finite max */
                for (int r = 0; r < nk; r++)
                    for (int c = 0; c < nr; c++)
                        if (k0 + r > q0 + jq * nr + c)
                            st[(size_t)r * nr + c] = -INFINITY;

            /* Online softmax, one query per lane. */
            float *mo = mrun + jq * nr, *mx = mnew + jq * nr;
            memcpy(mx, mo, sizeof(float) * nr);
            kern->softmax_cols(st, nk, j->scale, mx, colsum + jq * nr);
            for (int c = 0; c < nr; c++) {
                int i = jq * nr + c;
                corr[i] = kb > 0 ? (float)exp((double)mo[c] - (double)mx[c]) : 0.0f;
                lrun[i] = lrun[i] * corr[i] + colsum[i];
                mo[c] = mx[c];
            }
        }
        if (tiled && kern->attn_pv) { /* the rescale is folded into the product */
            for (int jq = 0; jq < qpan; jq++)
                kern->attn_pv(nk, dh, Vp + (size_t)k0 * mr, (size_t)j->Nk * mr,
                              sT + (size_t)jq * BK * nr, acc + jq * nr, ldacc,
                              kb > 0 ? corr + jq * nr : NULL);
            continue;
        }
        if (kb > 0)
            for (int c = 0; c < dh; c++)
                scale_row(acc + (size_t)c * ldacc, corr, ldacc);
        /* O^T += V^T P^T over this key block. The last channel panel's
         * rows past dh are padding that nothing reads, so only its dh % mr
         * rows are asked for (a 40-channel head: 16 + 16 + 8, and the
         * kernel may then run fewer rows). */
        for (int jq = 0; jq < qpan; jq++)
            for (int cp = 0; cp < dhm / mr; cp++)
                kern->micro(nk, Vp + ((size_t)cp * j->Nk + k0) * mr, sT + (size_t)jq * BK * nr,
                            acc + (size_t)cp * mr * ldacc + jq * nr, ldacc, kb > 0,
                            dh - cp * mr < mr ? dh - cp * mr : mr, nr, NULL);
    }

    /* One division per query, not per output (a 40-channel head with 77
     * keys spent about as long dividing as multiplying): the double product
     * acc * (1/l) is within 2^-52 of acc / l before the rounding to float. */
    for (int i = 0; i < nq; i++) {
        const double inv = 1.0 / lrun[i];
        float *oi = j->o + (size_t)(b * j->Nq + q0 + i) * j->ldo + (size_t)h * dh;
        for (int c = 0; c < dh; c++)
            oi[c] = (float)(acc[(size_t)c * ldacc + i] * inv);
    }
}

/* Used only if the buffers cannot be allocated: one query at a time,
 * accumulating straight into its output row. Slow, serial, no memory. */
static void attn_streaming(const attn_job *j, int batch)
{
    const int dh = j->dh;
    for (int b = 0; b < batch; b++)
        for (int h = 0; h < j->heads; h++)
            for (int i = 0; i < j->Nq; i++) {
                const float *qi = j->q + (size_t)(b * j->Nq + i) * j->ldq + (size_t)h * dh;
                float *oi = j->o + (size_t)(b * j->Nq + i) * j->ldo + (size_t)h * dh;
                double m = -INFINITY, l = 0;
                for (int c = 0; c < dh; c++)
                    oi[c] = 0.0f;
                const int nk = j->causal && i + 1 < j->Nk ? i + 1 : j->Nk;
                for (int key = 0; key < nk; key++) {
                    const float *kr = j->k + (size_t)(b * j->Nk + key) * j->ldk + (size_t)h * dh;
                    const float *vr = j->v + (size_t)(b * j->Nk + key) * j->ldv + (size_t)h * dh;
                    float d = 0;
                    for (int c = 0; c < dh; c++)
                        d += qi[c] * kr[c];
                    double t = (double)d * j->scale;
                    if (t > m) {
                        float corr = (float)exp(m - t);
                        for (int c = 0; c < dh; c++)
                            oi[c] *= corr;
                        l *= corr;
                        m = t;
                    }
                    float p = (float)exp(t - m);
                    l += p;
                    for (int c = 0; c < dh; c++)
                        oi[c] += p * vr[c];
                }
                for (int c = 0; c < dh; c++)
                    oi[c] = (float)(oi[c] / l);
            }
}

static void attention(const sd_exec *ex, int batch, int heads, int dh, int Nq, int Nk,
                      const float *q, int ldq, const float *k, int ldk, const float *v, int ldv,
                      float *o, int ldo, float scale, int causal)
{
    if (batch <= 0 || heads <= 0 || dh <= 0 || Nq <= 0)
        return;
    if (Nk <= 0) { /* softmax over nothing: define the result as zero */
        for (int r = 0; r < batch * Nq; r++)
            for (int h = 0; h < heads; h++)
                memset(o + (size_t)r * ldo + (size_t)h * dh, 0, sizeof(float) * dh);
        return;
    }
    const sd_kernels *kern = ex->kern;
    const int mr = kern->mr, nr = kern->nr;
    attn_job j = {.kern = kern,
                  .heads = heads,
                  .dh = dh,
                  .Nq = Nq,
                  .Nk = Nk,
                  .q = q,
                  .k = k,
                  .v = v,
                  .ldq = ldq,
                  .ldk = ldk,
                  .ldv = ldv,
                  .ldo = ldo,
                  .o = o,
                  .scale = scale,
                  .causal = causal};
    /* Query blocks: up to BQ_TARGET, a multiple of nr, balanced. */
    int qblocks = (Nq + BQ_TARGET - 1) / BQ_TARGET;
    j.bq = ((Nq + qblocks - 1) / qblocks + nr - 1) / nr * nr;
    j.qblocks = (Nq + j.bq - 1) / j.bq;
    /* Key blocks: a multiple of mr (K panels start on block boundaries). */
    j.bk = BK_TARGET / mr * mr;
    if (Nk < j.bk)
        j.bk = (Nk + mr - 1) / mr * mr;
    j.kchunks = (Nk + j.bk - 1) / j.bk;
    j.dhm = (dh + mr - 1) / mr * mr;
    j.kp_size = (size_t)j.kchunks * j.bk * dh; /* whole key blocks: panels never run past */
    j.per_bh = (j.kp_size + (size_t)j.dhm / mr * mr * Nk + 15) & ~(size_t)15;

    const int threads = sd_pool_size(ex->pool), nbh = batch * heads;
    int group = (int)(PACK_BUDGET / j.per_bh);
    group = group < 1 ? 1 : (group > nbh ? nbh : group);
    size_t tile = (size_t)j.bq * dh + (size_t)j.bq * j.bk + (size_t)j.dhm * j.bq + 6 * (size_t)j.bq;
    j.per_thread = (tile + 15) & ~(size_t)15;
    j.packed = sd_ws_get(ex, 1, j.per_bh * group * sizeof(float));
    j.scratch = sd_ws_get(ex, 2, j.per_thread * threads * sizeof(float));
    if (!j.packed || !j.scratch) {
        sd_ws_put(ex, 1, j.packed);
        sd_ws_put(ex, 2, j.scratch);
        attn_streaming(&j, batch);
        return;
    }
    for (j.bh0 = 0; j.bh0 < nbh; j.bh0 += group) {
        int n = nbh - j.bh0 < group ? nbh - j.bh0 : group;
        sd_pool_run(ex->pool, (int64_t)n * j.kchunks, attn_pack, &j);
        sd_pool_run(ex->pool, (int64_t)n * j.qblocks, attn_block, &j);
    }
    sd_ws_put(ex, 1, j.packed);
    sd_ws_put(ex, 2, j.scratch);
}

void sd_attention(const sd_exec *ex, int batch, int heads, int dh, int Nq, int Nk, const float *q,
                  int ldq, const float *k, int ldk, const float *v, int ldv, float *o, int ldo,
                  float scale)
{
    attention(ex, batch, heads, dh, Nq, Nk, q, ldq, k, ldk, v, ldv, o, ldo, scale, 0);
}

void sd_attention_causal(const sd_exec *ex, int batch, int heads, int dh, int N, const float *q,
                         int ldq, const float *k, int ldk, const float *v, int ldv, float *o,
                         int ldo, float scale)
{
    attention(ex, batch, heads, dh, N, N, q, ldq, k, ldk, v, ldv, o, ldo, scale, 1);
}
