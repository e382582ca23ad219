/*
 * runtime/linear.c — the dense fp32 linear layer: y = x W^T with OpenBLAS.
 *
 * What it is for: the full-precision reference model (eval --ref, measurement)
 * and the embedding lookup. One sgemv for a single row, one sgemm for a batch.
 * It must never allocate or print inside matmul/get_row.
 */
#include <assert.h>
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

typedef struct {
    float *w;  /* [rows][cols], row-major, owned */
} dense_impl;

static void dense_matmul(const rt_linear *l, const float *x, float *y, int n)
{
    const dense_impl *d = l->impl;
    assert(n >= 1);
    if (n == 1) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)l->rows, (int)l->cols, 1.0f, d->w, (int)l->cols,
                    x, 1, 0.0f, y, 1);
        return;
    }
    /* y[n][rows] = x[n][cols] * W[rows][cols]^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)l->rows, (int)l->cols, 1.0f,
                x, (int)l->cols, d->w, (int)l->cols, 0.0f, y, (int)l->rows);
}

static void dense_get_row(const rt_linear *l, int64_t r, float *out)
{
    const dense_impl *d = l->impl;
    assert(r >= 0 && r < l->rows);
    memcpy(out, d->w + r * l->cols, (size_t)l->cols * sizeof *out);
}

static void dense_destroy(rt_linear *l)
{
    dense_impl *d = l->impl;
    if (d) free(d->w);
    free(d);
}

rt_linear *rt_linear_dense(float *w, int64_t rows, int64_t cols)
{
    assert(w && rows > 0 && cols > 0);
    rt_linear *l = calloc(1, sizeof *l);
    dense_impl *d = calloc(1, sizeof *d);
    if (!l || !d) { free(l); free(d); free(w); return NULL; }
    d->w = w;
    l->rows = rows;
    l->cols = cols;
    l->matmul = dense_matmul;
    l->get_row = dense_get_row;
    l->destroy = dense_destroy;
    l->impl = d;
    l->dense = w;
    return l;
}

void rt_linear_free(rt_linear *l)
{
    if (!l) return;
    if (l->destroy) l->destroy(l);
    free(l);
}
