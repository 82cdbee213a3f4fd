/* Fused CPU kernels of the embedding tables' training step (deepcrossing.model.kernels loads them).
 *
 * One call each replaces ~100 small torch operations of a step: the pooled lookup of several tables of one
 * width, its backward (the distinct rows of each table and their summed gradient rows) and SparseAdam's update
 * of those rows. Every sum runs in the order of torch's ops (ids in sample order), and the build uses
 * -ffp-contract=off, so products and sums round as torch's do (-fno-math-errno only lets sqrtf vectorize).
 *
 * Ids: table t holds an (n, cols[t]) row-major int64 matrix; the global id order is sample by sample, the
 * tables side by side (id i of sample s, table t, column j is i = s * C + sum_{t' < t} cols[t'] + j), and
 * per_id (N,) and bag_of (N,) follow it. An id outside [0, rows[t]) or a bag outside [0, m) is reported,
 * never read or written.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

/* Pooled weighted sums: out[bag_of[i]] += per_id[i] * weights[t][id_i], out (m, d) zeroed first. Returns -1,
 * or the table of the first id out of range (its value in *bad; table n_tables: a bag out of range). */
int64_t dc_bag_forward(int64_t n_tables, const float *const *weights, const int64_t *rows,
                       const int64_t *const *ids, const int64_t *cols, int64_t n, int64_t d,
                       const float *per_id, const int64_t *bag_of, float *out, int64_t m, int64_t *bad) {
    int64_t i = 0;
    memset(out, 0, (size_t)(m * d) * sizeof(float));
    for (int64_t s = 0; s < n; s++) {
        if (s + 4 < n)      /* the rows 4 samples ahead: random rows of tables larger than the cache */
            for (int64_t t = 0; t < n_tables; t++)
                for (int64_t j = 0; j < cols[t]; j++) {
                    const int64_t ahead = ids[t][(s + 4) * cols[t] + j];
                    if (ahead >= 0 && ahead < rows[t]) __builtin_prefetch(weights[t] + ahead * d);
                }
        for (int64_t t = 0; t < n_tables; t++) {
            const int64_t *row_ids = ids[t] + s * cols[t];
            for (int64_t j = 0; j < cols[t]; j++, i++) {
                int64_t id = row_ids[j], b = bag_of[i];
                if (id < 0 || id >= rows[t]) { *bad = id; return t; }
                if (b < 0 || b >= m) { *bad = b; return n_tables; }
                const float w = per_id[i];
                const float *restrict src = weights[t] + id * d;
                float *restrict dst = out + b * d;
                for (int64_t k = 0; k < d; k++) dst[k] = fmaf(w, src[k], dst[k]);
            }
        }
    }
    return -1;
}

/* The ascending distinct values of ids (nc,) in [0, r_t) into distinct (their count returned) and, in where
 * (nc,), the position of each id among them: a bitmap of the rows (r_t / 8 bytes) and the count of set bits
 * before each 64-row word (r_t / 8 bytes), so a table of millions of rows costs a few us, not a sort. */
static int64_t distinct_rows(const int64_t *ids, int64_t nc, int64_t r_t, int64_t *distinct, int64_t *where) {
    const int64_t words = r_t / 64 + 1;
    uint64_t *bits = calloc((size_t)words, sizeof(uint64_t));
    int64_t *before = malloc((size_t)words * sizeof(int64_t));
    if (!bits || !before) { free(bits); free(before); return -2; }
    for (int64_t e = 0; e < nc; e++) bits[ids[e] >> 6] |= (uint64_t)1 << (ids[e] & 63);
    int64_t u = 0;
    for (int64_t w = 0; w < words; w++) {
        before[w] = u;
        for (uint64_t word = bits[w]; word; word &= word - 1) distinct[u++] = w * 64 + __builtin_ctzll(word);
    }
    for (int64_t e = 0; e < nc; e++) {
        const uint64_t below = bits[ids[e] >> 6] & (((uint64_t)1 << (ids[e] & 63)) - 1);
        where[e] = before[ids[e] >> 6] + __builtin_popcountll(below);
    }
    free(bits);
    free(before);
    return u;
}

/* Backward of dc_bag_forward, per table: its distinct ids ascending in out_rows[t] (their count in counts[t])
 * and their summed gradient rows in out_values[t] (counts[t], d): sum over ids i equal to the row, in id
 * order, of grad[bag_of[i]] * per_id[i] (index_add_'s order), grad (m, d). Capacity of out_rows[t] /
 * out_values[t]: min(rows[t], n cols[t]) rows. One sweep over the ids of all tables (per_id and bag_of read
 * once). Returns -1, the table of the first id out of range (its value in *bad; table n_tables: a bag), or
 * -2 if out of memory. */
int64_t dc_bag_backward(int64_t n_tables, const int64_t *rows, const int64_t *const *ids, const int64_t *cols,
                        int64_t n, int64_t d, const float *per_id, const int64_t *bag_of, const float *grad,
                        int64_t m, int64_t *const *out_rows, float *const *out_values, int64_t *counts,
                        int64_t *bad) {
    int64_t width = 0;
    for (int64_t t = 0; t < n_tables; t++) width += cols[t];
    for (int64_t i = 0; i < n * width; i++)
        if (bag_of[i] < 0 || bag_of[i] >= m) { *bad = bag_of[i]; return n_tables; }
    for (int64_t t = 0; t < n_tables; t++)
        for (int64_t e = 0; e < n * cols[t]; e++)
            if (ids[t][e] < 0 || ids[t][e] >= rows[t]) { *bad = ids[t][e]; return t; }
    int64_t *where = malloc((size_t)(n * width) * sizeof(int64_t) + 8);   /* table by table: (n, cols[t]) */
    if (!where) return -2;
    for (int64_t t = 0, first = 0; t < n_tables; first += n * cols[t], t++) {
        const int64_t u = distinct_rows(ids[t], n * cols[t], rows[t], out_rows[t], where + first);
        if (u < 0) { free(where); return -2; }
        counts[t] = u;
        memset(out_values[t], 0, (size_t)(u * d) * sizeof(float));
    }
    for (int64_t s = 0, i = 0; s < n; s++) {
        for (int64_t t = 0, first = 0; t < n_tables; first += n * cols[t], t++) {
            const int64_t *at = where + first + s * cols[t];
            for (int64_t j = 0; j < cols[t]; j++, i++) {
                const float w = per_id[i];
                const float *restrict src = grad + bag_of[i] * d;
                float *restrict dst = out_values[t] + at[j] * d;
                for (int64_t k = 0; k < d; k++) dst[k] += src[k] * w;
            }
        }
    }
    free(where);
    return -1;
}

/* SparseAdam's update of the distinct rows rows[t] (u[t],) of table t (width dims[t]) with their gradient rows g[t],
 * in the order of torch.optim.SparseAdam's operations (consts: 1 - beta1, 1 - beta2, eps):
 *   m += (g - m) (1 - beta1); v += (g g - v) (1 - beta2); p += m / (sqrt(v) + eps) * step_size[t].
 * Every table's rows are checked before anything is updated. Returns -1; the table of the first row out of
 * [0, rows_of[t]); or n_tables + t for the first table t whose rows are not ascending (so maybe not distinct: the
 * caller sums their duplicates and calls again). */
int64_t dc_row_adam(int64_t n_tables, const int64_t *u, const int64_t *dims, const int64_t *const *rows,
                    const int64_t *rows_of, const float *const *g, float *const *p, float *const *m,
                    float *const *v, const float *consts, const float *step_size) {
    const float one_minus_beta1 = consts[0], one_minus_beta2 = consts[1], eps = consts[2];
    for (int64_t t = 0; t < n_tables; t++) {
        for (int64_t e = 0; e < u[t]; e++)
            if (rows[t][e] < 0 || rows[t][e] >= rows_of[t]) return t;
        for (int64_t e = 1; e < u[t]; e++)
            if (rows[t][e] <= rows[t][e - 1]) return n_tables + t;
    }
    for (int64_t t = 0; t < n_tables; t++) {
        const float step = step_size[t];
        const int64_t d = dims[t];
        for (int64_t e = 0; e < u[t]; e++) {
            if (e + 8 < u[t]) {     /* the rows 8 ahead: they are scattered over the table and its moments */
                const int64_t ahead = rows[t][e + 8] * d;
                __builtin_prefetch(p[t] + ahead, 1);
                __builtin_prefetch(m[t] + ahead, 1);
                __builtin_prefetch(v[t] + ahead, 1);
            }
            const int64_t at = rows[t][e] * d;
            const float *restrict ge = g[t] + e * d;
            float *restrict pe = p[t] + at, *restrict me = m[t] + at, *restrict ve = v[t] + at;
            for (int64_t k = 0; k < d; k++) {
                const float gk = ge[k];
                const float mk = me[k] + (gk - me[k]) * one_minus_beta1;
                const float vk = ve[k] + (gk * gk - ve[k]) * one_minus_beta2;
                me[k] = mk;
                ve[k] = vk;
                pe[k] += mk / (sqrtf(vk) + eps) * step;
            }
        }
    }
    return -1;
}

/* Feature lookups, all tables in one call: feature f reads cols[f] ids per sample from ids[f] ((n, cols[f])
 * row-major) of table tab[f] and writes its pooled vector into columns [at[f], at[f] + dims[tab[f]]) of out
 * (n, width). The features come table by table (a table's features in the order of its ids), so a table's
 * ids in sample order, then feature order, are those of dc_bag_forward's (n, c_t) matrix. The ids' weights,
 * written to per_id (n, C) (C = sum cols, sample by sample, the features side by side): given[f] where not
 * NULL, else 0 on padding (id 0) and, on the others, 1 (mean[f] = 0) or 1 / (the bag's count of non-padding
 * ids) (mean[f] = 1): torch's keep / clamp_min(sum(keep), 1e-12), bit for bit. Returns -1, or the feature of the
 * first id out of [0, rows[tab[f]]) (its value in *bad); nothing is read out of range. */
int64_t dc_feature_forward(int64_t n_features, const int64_t *const *ids, const int64_t *cols, const int64_t *tab,
                           const int64_t *at, const int64_t *mean, const float *const *given,
                           const float *const *tables, const int64_t *rows, const int64_t *dims, int64_t n,
                           int64_t width, float *per_id, float *out, int64_t *bad) {
    memset(out, 0, (size_t)(n * width) * sizeof(float));
    float *w = per_id;
    for (int64_t s = 0; s < n; s++) {
        for (int64_t f = 0; f < n_features; f++) {
            if (s + 16 < n) {   /* the ids 16 samples ahead: each feature's ids are a stream of their own */
                __builtin_prefetch(ids[f] + (s + 16) * cols[f]);
                __builtin_prefetch(ids[f] + (s + 16) * cols[f] + cols[f] - 1);
            }
            if (s + 4 < n)      /* the rows 4 samples ahead: random rows of tables larger than the cache */
                for (int64_t j = 0; j < cols[f]; j++) {
                    const int64_t ahead = ids[f][(s + 4) * cols[f] + j], t = tab[f];
                    if (ahead >= 0 && ahead < rows[t]) __builtin_prefetch(tables[t] + ahead * dims[t]);
                }
        }
        for (int64_t f = 0; f < n_features; f++) {
            const int64_t *row_ids = ids[f] + s * cols[f], t = tab[f], d = dims[t], c = cols[f];
            if (given[f]) {
                memcpy(w, given[f] + s * c, (size_t)c * sizeof(float));
            } else {
                int64_t count = 0;
                for (int64_t j = 0; j < c; j++) count += row_ids[j] != 0;
                const float one = mean[f] ? 1.0f / (float)count : 1.0f;
                for (int64_t j = 0; j < c; j++) w[j] = row_ids[j] != 0 ? one : 0.0f;
            }
            float *restrict dst = out + s * width + at[f];
            const float *restrict table = tables[t];
            const int64_t r = rows[t];
            for (int64_t j = 0; j < c; j++) {
                const int64_t id = row_ids[j];
                if (id < 0 || id >= r) { *bad = id; return f; }
                const float *restrict src = table + id * d;
                const float wj = w[j];
                for (int64_t k = 0; k < d; k++) dst[k] = fmaf(wj, src[k], dst[k]);
            }
            w += c;
        }
    }
    return -1;
}

/* Backward of dc_feature_forward, per table t (of n_tables): its distinct ids ascending in out_rows[t] (their count
 * in counts[t]) and their summed gradient rows in out_values[t] (counts[t], dims[t]): sum over the table's ids
 * equal to the row, in sample order, then feature order (index_add_'s order of dc_bag_backward), of per_id *
 * grad[s, at[f]:]; grad (n, width), its rows grad_stride floats apart (a column slice of a wider gradient). Capacity of out_rows[t] / out_values[t]: min(rows[t], n * the table's
 * ids per sample). Returns -1, the feature of the first id out of range (its value in *bad), or -2 if out of
 * memory. */
int64_t dc_feature_backward(int64_t n_features, const int64_t *const *ids, const int64_t *cols, const int64_t *tab,
                            const int64_t *at, int64_t n_tables, const int64_t *rows, const int64_t *dims,
                            int64_t n, const float *per_id, const float *grad, int64_t grad_stride,
                            int64_t *const *out_rows, float *const *out_values, int64_t *counts, int64_t *bad) {
    int64_t total = 0;
    for (int64_t f = 0; f < n_features; f++) total += cols[f];
    int64_t *where = malloc((size_t)(n * total) * sizeof(int64_t) + 8);   /* feature by feature: (n, cols[f]) */
    if (!where) return -2;
    for (int64_t t = 0; t < n_tables; t++) {
        const int64_t words = rows[t] / 64 + 1;
        uint64_t *bits = calloc((size_t)words, sizeof(uint64_t));
        int64_t *before = malloc((size_t)words * sizeof(int64_t));
        if (!bits || !before) { free(bits); free(before); free(where); return -2; }
        for (int64_t f = 0; f < n_features; f++) {
            if (tab[f] != t) continue;
            const int64_t *restrict fid = ids[f], r = rows[t];
            for (int64_t e = 0; e < n * cols[f]; e++) {
                const int64_t id = fid[e];
                if (id < 0 || id >= r) { *bad = id; free(bits); free(before); free(where); return f; }
                bits[id >> 6] |= (uint64_t)1 << (id & 63);
            }
        }
        int64_t u = 0;
        for (int64_t w = 0; w < words; w++) {
            before[w] = u;
            for (uint64_t word = bits[w]; word; word &= word - 1) out_rows[t][u++] = w * 64 + __builtin_ctzll(word);
        }
        for (int64_t f = 0, first = 0; f < n_features; first += n * cols[f], f++)
            if (tab[f] == t)
                for (int64_t e = 0; e < n * cols[f]; e++) {
                    const int64_t id = ids[f][e];
                    const uint64_t below = bits[id >> 6] & (((uint64_t)1 << (id & 63)) - 1);
                    where[first + e] = before[id >> 6] + __builtin_popcountll(below);
                }
        free(bits);
        free(before);
        counts[t] = u;
        memset(out_values[t], 0, (size_t)(u * dims[t]) * sizeof(float));
    }
    const float *w = per_id;
    for (int64_t s = 0; s < n; s++) {
        for (int64_t f = 0, first = 0; f < n_features; first += n * cols[f], f++) {
            const int64_t *pos = where + first + s * cols[f], d = dims[tab[f]];
            const float *restrict src = grad + s * grad_stride + at[f];
            for (int64_t j = 0; j < cols[f]; j++) {
                float *restrict dst = out_values[tab[f]] + pos[j] * d;
                for (int64_t k = 0; k < d; k++) dst[k] += src[k] * w[j];
            }
            w += cols[f];
        }
    }
    free(where);
    return -1;
}
