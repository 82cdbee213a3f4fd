/* Fused CPU kernels of the embedding tables' training step (deepcrossing.model.kernels loads them).
 *
 * One call each replaces ~100 small torch operations of a step: the pooled lookup of several tables of one
 * width, its backward (the distinct rows of each table and their summed gradient rows) and SparseAdam's update
 * of those rows. Every sum runs in the order of torch's ops (ids in sample order), and the build uses
 * -ffp-contract=off, so products and sums round as torch's do.
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
        for (int64_t t = 0; t < n_tables; t++) {
            const int64_t *row_ids = ids[t] + s * cols[t];
            for (int64_t j = 0; j < cols[t]; j++, i++) {
                int64_t id = row_ids[j], b = bag_of[i];
                if (id < 0 || id >= rows[t]) { *bad = id; return t; }
                if (b < 0 || b >= m) { *bad = b; return n_tables; }
                const float w = per_id[i];
                const float *src = weights[t] + id * d;
                float *dst = out + b * d;
                for (int64_t k = 0; k < d; k++) dst[k] = fmaf(w, src[k], dst[k]);
            }
        }
    }
    return -1;
}

/* Backward of dc_bag_forward, per table: its distinct ids ascending in out_rows[t] (their count in counts[t])
 * and their summed gradient rows in out_values[t] (counts[t], d): sum over ids i equal to the row, in id
 * order, of grad[bag_of[i]] * per_id[i]. Capacity of out_rows[t] / out_values[t]: min(rows[t], n cols[t])
 * rows. Returns -1, or the table of the first id out of range (its value in *bad), or -2 if out of memory. */
int64_t dc_bag_backward(int64_t n_tables, const int64_t *rows, const int64_t *const *ids, const int64_t *cols,
                        int64_t n, int64_t d, const float *per_id, const int64_t *bag_of, const float *grad,
                        int64_t *const *out_rows, float *const *out_values, int64_t *counts, int64_t *bad) {
    int64_t width = 0, first = 0;
    for (int64_t t = 0; t < n_tables; t++) width += cols[t];
    for (int64_t t = 0; t < n_tables; t++) {
        const int64_t c = cols[t], r_t = rows[t];
        uint8_t *mark = calloc((size_t)r_t + 8, 1);
        int64_t *pos = malloc((size_t)r_t * sizeof(int64_t) + 8);
        if (!mark || !pos) { free(mark); free(pos); return -2; }
        for (int64_t e = 0; e < n * c; e++) {
            int64_t id = ids[t][e];
            if (id < 0 || id >= r_t) { free(mark); free(pos); *bad = id; return t; }
            mark[id] = 1;
        }
        int64_t u = 0;
        for (int64_t r = 0; r < r_t; r += 8) {              /* ascending distinct rows; skip 8 empty at once */
            uint64_t word;
            memcpy(&word, mark + r, 8);
            if (!word) continue;
            for (int64_t q = r; q < r + 8 && q < r_t; q++)
                if (mark[q]) { pos[q] = u; out_rows[t][u++] = q; }
        }
        counts[t] = u;
        float *values = out_values[t];
        memset(values, 0, (size_t)(u * d) * sizeof(float));
        for (int64_t s = 0; s < n; s++) {
            for (int64_t j = 0; j < c; j++) {
                int64_t i = s * width + first + j;
                const float w = per_id[i];
                const float *src = grad + bag_of[i] * d;
                float *dst = values + pos[ids[t][s * c + j]] * d;
                for (int64_t k = 0; k < d; k++) dst[k] += src[k] * w;
            }
        }
        free(mark);
        free(pos);
        first += c;
    }
    return -1;
}

/* SparseAdam's update of the distinct rows rows[t] (u[t],) of table t (width dims[t]) with their gradient rows g[t],
 * in the order of torch.optim.SparseAdam's operations (consts: 1 - beta1, 1 - beta2, eps):
 *   m += (g - m) (1 - beta1); v += (g g - v) (1 - beta2); p += m / (sqrt(v) + eps) * step_size[t].
 * Returns -1, or the table of the first row out of [0, rows_of[t]). */
int64_t dc_row_adam(int64_t n_tables, const int64_t *u, const int64_t *dims, const int64_t *const *rows,
                    const int64_t *rows_of, const float *const *g, float *const *p, float *const *m,
                    float *const *v, const float *consts, const float *step_size) {
    const float one_minus_beta1 = consts[0], one_minus_beta2 = consts[1], eps = consts[2];
    for (int64_t t = 0; t < n_tables; t++) {
        for (int64_t e = 0; e < u[t]; e++)
            if (rows[t][e] < 0 || rows[t][e] >= rows_of[t]) return t;
        const float step = step_size[t];
        const int64_t d = dims[t];
        for (int64_t e = 0; e < u[t]; e++) {
            const int64_t at = rows[t][e] * d;
            const float *ge = g[t] + e * d;
            float *pe = p[t] + at, *me = m[t] + at, *ve = v[t] + at;
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
