/*
 * runtime/linear.c — the dense fp32 linear layer: y = x W^T with OpenBLAS.
 *
 * What it is for: the full-precision reference model (eval --ref, measurement)
 * and the embedding lookup. The rows are cut into slabs over OpenMP's threads, one
 * single-threaded sgemv (a single row) or sgemm (a batch) per slab, so that every
 * product of a forward pass runs on OpenMP's team: OpenBLAS's own threads beside
 * that team (its pool yielding while OpenMP's threads spin, and the other way
 * round) made SmolLM2's generation 7x slower once attention ran on the team too.
 * The slabs depend on the shape alone, so the bits do not depend on the number of
 * threads, from two on. With one OpenMP thread (the measurement gives its threads
 * to BLAS, for the Hessians its observer accumulates between the products) one
 * BLAS call does the whole product on BLAS's threads, as before there were slabs:
 * slabs of SmolLM2's shapes on BLAS's two threads ran at 0.74-0.91 of its speed.
 * It must never allocate or print inside matmul/get_row.
 */
#include <assert.h>
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "rt_int.h"

typedef struct {
    float *w;  /* [rows][cols], row-major, owned */
} dense_impl;

void rt_slab_product(const float *w, int64_t nr, int64_t cols, const float *x, int n, float *y, int64_t ldy)
{
    if (n == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)nr, (int)cols, 1.0f, w, (int)cols, x, 1, 0.0f, y, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)nr, (int)cols, 1.0f, x, (int)cols, w, (int)cols,
                    0.0f, y, (int)ldy);
}

void rt_dense_product(const float *w, int64_t rows, int64_t cols, const float *x, float *y, int n)
{
    if (omp_get_max_threads() == 1) { /* BLAS's threads, if it has any, do it all */
        rt_slab_product(w, rows, cols, x, n, y, rows);
        return;
    }
    int blas_threads = openblas_get_num_threads();
    int64_t sr = rt_even_slab_rows(rows, DENSE_SLAB_ROWS), slabs = (rows + sr - 1) / sr;
    openblas_set_num_threads(1);
#pragma omp parallel for schedule(static)
    for (int64_t s = 0; s < slabs; s++) {
        int64_t r0 = s * sr, nr = rows - r0 < sr ? rows - r0 : sr;
        rt_slab_product(w + r0 * cols, nr, cols, x, n, y + r0, rows);
    }
    openblas_set_num_threads(blas_threads);
}

static void dense_matmul(const rt_linear *l, const float *x, float *y, int n)
{
    const dense_impl *d = l->impl;
    assert(n >= 1);
    rt_dense_product(d->w, l->rows, l->cols, x, y, n);
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
