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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

void hess_layer_free(hess_layer *hl)
{
    for (int g = 0; g < RT_INPUT_COUNT; g++) free(hl->h[g]), hl->h[g] = NULL;
}

static void observe(void *ctx, int layer, rt_input which, const float *x, int n, int64_t cols)
{
    hess_layer *hl = ctx;
    if (layer != hl->layer || !hl->h[which]) return;
    assert(cols == hl->cols[which]);
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
