/*
 * measure/hessian.c — accumulation of the layer-input Hessians H = 2/N sum x x^T
 * that GPTQ needs, in double.
 *
 * What it must never do: depend on anything but its inputs and the order of the
 * calls (no threads racing on h, no timing-dependent chunking), because a resumed
 * measurement must produce bit for bit the Hessian of an uninterrupted one.
 *
 * Invariants:
 *  1. h is full and symmetric after every call (dsyrk fills the upper triangle,
 *     which is then mirrored).
 *  2. Rows are added in fixed chunks of HESS_CHUNK, each by one dsyrk over doubles:
 *     a float times a float is exact in double, so only the sums round.
 */
#include "measure.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "par/par.h"

#define HESS_CHUNK 256

static void mirror_upper(double *h, int64_t cols)
{
    for (int64_t i = 0; i < cols; i++)
        for (int64_t j = i + 1; j < cols; j++) h[j * cols + i] = h[i * cols + j];
}

int hess_accumulate(double *h, const float *x, int n, int64_t cols)
{
    assert(h && (x || n == 0) && n >= 0 && cols > 0 && cols < INT32_MAX);
    if (n == 0) return 0;
    int64_t chunk = n < HESS_CHUNK ? n : HESS_CHUNK;
    double *d = malloc((size_t)(chunk * cols) * sizeof *d);
    if (!d) return -1;
    for (int64_t r0 = 0; r0 < n; r0 += HESS_CHUNK) {
        int64_t nr = n - r0 < HESS_CHUNK ? n - r0 : HESS_CHUNK;
        for (int64_t i = 0; i < nr * cols; i++) d[i] = (double)x[r0 * cols + i];
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)cols, (int)nr, 1.0, d, (int)cols, 1.0, h,
                    (int)cols);
    }
    free(d);
    mirror_upper(h, cols);
    return 0;
}

int hess_finalize(double *h, int64_t cols, int64_t n_rows, char *err, size_t err_len)
{
    assert(h && cols > 0);
    if (n_rows <= 0) {
        snprintf(err, err_len, "Hessian of %lld columns has %lld rows (needs at least one)", (long long)cols,
                 (long long)n_rows);
        return -1;
    }
    double f = 2.0 / (double)n_rows;
    for (int64_t i = 0; i < cols * cols; i++) {
        h[i] *= f;
        if (!isfinite(h[i])) {
            snprintf(err, err_len, "Hessian [%lld][%lld] is %g (not finite: inputs overflow or hold NaN/Inf)",
                     (long long)(i / cols), (long long)(i % cols), h[i]);
            return -1;
        }
    }
    for (int64_t j = 0; j < cols; j++)
        if (h[j * cols + j] < 0) {
            snprintf(err, err_len, "Hessian diagonal [%lld] is %g (negative)", (long long)j, h[j * cols + j]);
            return -1;
        }
    return 0;
}

/* ==== A layer's Hessians from a forward pass ==== */

const char *hess_input_name(rt_input g)
{
    static const char *const names[RT_INPUT_COUNT] = {"attn", "attn_out", "mlp", "mlp_out", "head"};
    return names[g];
}

int hess_layer_init(hess_layer *hl, const mdl_config *c, char *err, size_t err_len)
{
    int64_t cols[RT_INPUT_COUNT] = {c->dim, (int64_t)c->n_heads * c->head_dim, c->dim, c->hidden_dim, c->dim};
    memset(hl, 0, sizeof *hl);
    hl->layer = -1;
    hl->n_layers = c->n_layers;
    for (int g = 0; g < RT_INPUT_COUNT; g++) hl->cols[g] = cols[g];
    (void)err, (void)err_len; /* the Hessians are allocated by hess_layer_start */
    return 0;
}

/* ==== Rows kept for sharing ==== */

#define HESS_ROW_CALLS 8      /* observed inputs of one row in one layer (a block makes 4) */

/* One row's observer calls in one layer: which group, how many tokens, in order,
 * and their inputs one after another. The head (as sent): calls, then the ints. */
struct hess_row {
    int32_t calls, group[HESS_ROW_CALLS], n[HESS_ROW_CALLS];
    float *x;
    size_t floats, cap;
};

int hess_layer_keep_rows(hess_layer *hl, int n_rows)
{
    if (!(hl->rows = calloc((size_t)n_rows, sizeof *hl->rows))) return -1;
    hl->n_rows = n_rows;
    return 0;
}

void hess_layer_row(hess_layer *hl, int row)
{
    assert(!hl->rows || (row >= 0 && row < hl->n_rows));
    hl->row = row;
}

static void keep_input(hess_layer *hl, rt_input which, const float *x, int n, int64_t cols)
{
    hess_row *r = &hl->rows[hl->row];
    size_t add = (size_t)n * (size_t)cols;
    if (r->calls == HESS_ROW_CALLS) { hl->failed = 1; return; }
    if (r->floats + add > r->cap) {
        size_t cap = (r->floats + add) * 2;
        float *x2 = realloc(r->x, cap * sizeof *x2);
        if (!x2) { hl->failed = 1; return; }
        r->x = x2, r->cap = cap;
    }
    memcpy(r->x + r->floats, x, add * sizeof *x);
    r->floats += add;
    r->group[r->calls] = (int32_t)which, r->n[r->calls++] = n;
}

/* Row i's calls, replayed into the Hessians as the observer would have made them. */
static void replay_row(hess_layer *hl, const hess_row *r, const float *x)
{
    for (int c = 0; c < r->calls; c++) {
        int g = r->group[c];
        if (hl->h[g] && hess_accumulate(hl->h[g], x, r->n[c], hl->cols[g])) hl->failed = 1;
        hl->n[g] += r->n[c];
        x += (size_t)r->n[c] * (size_t)hl->cols[g];
    }
}

int hess_layer_share(hess_layer *hl, const int *owner)
{
    int rc = 0;
    float *got = NULL;            /* another rank's row */
    size_t got_cap = 0;
    for (int i = 0; i < hl->n_rows; i++) {
        hess_row *r = &hl->rows[i], head = *r;
        int mine = owner[i] == par_rank();
        rc |= par_bcast(&head, offsetof(hess_row, x), owner[i]);
        if (head.calls < 0 || head.calls > HESS_ROW_CALLS) head.calls = 0, rc = -1; /* corrupt: take nothing */
        size_t floats = 0;
        for (int c = 0; c < head.calls; c++) floats += (size_t)head.n[c] * (size_t)hl->cols[head.group[c]];
        if (!mine && floats > got_cap) {
            free(got);
            /* Without room for the row this rank cannot keep in step with the
             * others' broadcasts: end the job (the launcher names the rank). */
            if (!(got = malloc(floats * sizeof *got))) par_abort(1);
            got_cap = floats;
        }
        float *x = mine ? r->x : got;
        rc |= par_bcast(x, floats * sizeof *x, owner[i]);
        replay_row(hl, &head, x);
        free(r->x), memset(r, 0, sizeof *r);
    }
    free(got);
    if (rc) hl->failed = 1;
    return rc ? -1 : 0;
}

/* ==== The layer's Hessians ==== */

void hess_layer_free(hess_layer *hl)
{
    for (int g = 0; g < RT_INPUT_COUNT; g++) free(hl->h[g]), hl->h[g] = NULL;
    for (int i = 0; hl->rows && i < hl->n_rows; i++) free(hl->rows[i].x);
    free(hl->rows), hl->rows = NULL;
}

static void observe(void *ctx, int layer, rt_input which, const float *x, int n, int64_t cols)
{
    hess_layer *hl = ctx;
    if (layer != hl->layer || !hl->h[which]) return;
    assert(cols == hl->cols[which]);
    if (hl->rows) {
        keep_input(hl, which, x, n, cols);
        return;
    }
    if (hess_accumulate(hl->h[which], x, n, cols)) hl->failed = 1;
    hl->n[which] += n;
}

/* A block's groups, or the head's: only those exist while the layer is collected
 * (the head's 4 block Hessians would be 1.4 GB of nothing at 7B). */
static int group_is_used(const hess_layer *hl, int layer, int g)
{
    return (g == RT_IN_HEAD) == (layer == hl->n_layers);
}

void hess_layer_start(hess_layer *hl, rt_state *s, int layer)
{
    hl->failed = 0;
    for (int g = 0; g < RT_INPUT_COUNT; g++) {
        size_t bytes = (size_t)(hl->cols[g] * hl->cols[g]) * sizeof *hl->h[g];
        hl->n[g] = 0;
        if (!group_is_used(hl, layer, g)) {
            free(hl->h[g]), hl->h[g] = NULL;
            continue;
        }
        if (!hl->h[g] && !(hl->h[g] = malloc(bytes))) hl->failed = 1;
        if (hl->h[g]) memset(hl->h[g], 0, bytes);
    }
    for (int i = 0; hl->rows && i < hl->n_rows; i++) hl->rows[i].calls = 0, hl->rows[i].floats = 0;
    hl->layer = layer;
    rt_state_set_observer(s, observe, hl);
}

int hess_layer_finish(hess_layer *hl, rt_state *s, char *err, size_t err_len)
{
    rt_state_set_observer(s, NULL, NULL);
    hl->layer = -1;
    if (hl->failed) return snprintf(err, err_len, "out of memory accumulating Hessians"), -1;
    for (int g = 0; g < RT_INPUT_COUNT; g++) {
        char why[256];
        if (hl->n[g] && hess_finalize(hl->h[g], hl->cols[g], hl->n[g], why, sizeof why)) {
            snprintf(err, err_len, "%s input: %s", hess_input_name((rt_input)g), why);
            return -1;
        }
    }
    return 0;
}
