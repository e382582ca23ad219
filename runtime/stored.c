/*
 * runtime/stored.c — a linear layer over a weight as its model file stores it
 * (F32, F16, BF16, Q8_0, the K-quants ...), read from the file's mapping.
 *
 * What it is for: a model's memory grows with what is being worked on, never with
 * the model. Unheld, a product decodes slabs of SLAB_ROWS rows to fp32 in scratch
 * shared by every layer of the model, each thread multiplying its slab by all
 * activation rows with one single-threaded BLAS call while the slab is in its
 * cache; the weights stay in the file's type (a 7B F16 model needs its 13.5 GB
 * file, not 27 GB). Held (rt_linear_hold), the whole tensor is decoded once to
 * fp32 and products are exactly those of rt_linear_dense (same BLAS calls on the
 * same values), until the last release frees it: the measurement and the packer
 * hold one block at a time.
 *
 * It never allocates in matmul or get_row, never prints, and never writes to the
 * mapping. Values are those of mdl_tensor_rows_to_f32, bit for bit.
 */
#include <assert.h>
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rt_int.h"

#define SLAB_ROWS 64   /* rows per fp32 slab: 64 x 11008 x 4 bytes = 2.8 MB per thread */

typedef struct {
    const mdl_model *file;
    const mdl_tensor *t;     /* borrowed from the file */
    rt_scratch *scratch;     /* [threads][SLAB_ROWS][cols] fp32, shared by the model's layers */
    int threads;             /* threads the scratch was sized for */
    int holds;               /* rt_linear_hold count */
    float *w;                /* [rows][cols] while held */
} stored_impl;

/* ==== Shared scratch ==== */

struct rt_scratch {
    size_t want, have;
    void *buf;
};

rt_scratch *rt_scratch_new(void) { return calloc(1, sizeof(rt_scratch)); }

void rt_scratch_free(rt_scratch *s)
{
    if (s) free(s->buf);
    free(s);
}

void rt_scratch_want(rt_scratch *s, size_t bytes)
{
    if (bytes > s->want) s->want = bytes;
}

int rt_scratch_ready(rt_scratch *s)
{
    if (s->have >= s->want) return 0;
    void *b = NULL;
    if (posix_memalign(&b, 64, s->want)) return -1;
    free(s->buf);
    s->buf = b, s->have = s->want;
    return 0;
}

void *rt_scratch_get(const rt_scratch *s, size_t bytes)
{
    assert(s->buf && s->have >= bytes);
    (void)bytes;
    return s->buf;
}

/* ==== Products ==== */

static int threads_for(const stored_impl *d)
{
    int nt = omp_get_max_threads();
    return nt > d->threads ? d->threads : nt;
}

static void slab_matmul(const rt_linear *l, const stored_impl *d, const float *x, float *y, int n)
{
    int nt = threads_for(d);
    int64_t rows = l->rows, cols = l->cols, sr = rt_even_slab_rows(rows, SLAB_ROWS), slabs = (rows + sr - 1) / sr;
    float *base = rt_scratch_get(d->scratch, (size_t)nt * SLAB_ROWS * (size_t)cols * sizeof(float));
    int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
#pragma omp parallel num_threads(nt)
    {
        float *w = base + (int64_t)omp_get_thread_num() * SLAB_ROWS * cols;
#pragma omp for schedule(static)
        for (int64_t s = 0; s < slabs; s++) {
            int64_t r0 = s * sr, nr = rows - r0 < sr ? rows - r0 : sr;
            mdl_tensor_rows_to_f32(d->file, d->t, r0, nr, w);
            rt_slab_product(w, nr, cols, x, n, y + r0, rows);
        }
    }
    openblas_set_num_threads(blas_threads);
}

static void stored_matmul(const rt_linear *l, const float *x, float *y, int n)
{
    const stored_impl *d = l->impl;
    assert(n >= 1);
    if (d->w) rt_dense_product(d->w, l->rows, l->cols, x, y, n);
    else slab_matmul(l, d, x, y, n);
}

static void stored_get_row(const rt_linear *l, int64_t r, float *out)
{
    const stored_impl *d = l->impl;
    assert(r >= 0 && r < l->rows);
    if (d->w) memcpy(out, d->w + r * l->cols, (size_t)l->cols * sizeof *out);
    else mdl_tensor_rows_to_f32(d->file, d->t, r, 1, out);
}

/* ==== Holding ==== */

static int stored_hold(rt_linear *l)
{
    stored_impl *d = l->impl;
    if (d->holds++) return 0;
    if (!(d->w = malloc((size_t)(l->rows * l->cols) * sizeof *d->w))) {
        d->holds = 0;
        return -1;
    }
    mdl_tensor_to_f32(d->file, d->t, d->w);
    l->dense = d->w;
    return 0;
}

static void stored_release(rt_linear *l)
{
    stored_impl *d = l->impl;
    assert(d->holds > 0);
    if (--d->holds) return;
    free(d->w);
    d->w = NULL;
    l->dense = NULL;
}

static void stored_destroy(rt_linear *l)
{
    stored_impl *d = l->impl;
    if (d) free(d->w);
    free(d);
}

rt_linear *rt_linear_stored(const mdl_model *file, const mdl_tensor *t, rt_scratch *scratch)
{
    assert(file && t && scratch && t->n_dims == 2 && t->type < MDL_I32);
    rt_linear *l = calloc(1, sizeof *l);
    stored_impl *d = calloc(1, sizeof *d);
    if (!l || !d) { free(l); free(d); return NULL; }
    d->file = file, d->t = t, d->scratch = scratch;
    d->threads = omp_get_max_threads() > omp_get_num_procs() ? omp_get_max_threads() : omp_get_num_procs();
    rt_scratch_want(scratch, (size_t)d->threads * SLAB_ROWS * (size_t)t->shape[1] * sizeof(float));
    *l = (rt_linear){.rows = t->shape[0], .cols = t->shape[1], .matmul = stored_matmul, .get_row = stored_get_row,
                     .destroy = stored_destroy, .hold = stored_hold, .release = stored_release, .impl = d};
    return l;
}

/* ==== Holding, for any linear layer ==== */

int rt_linear_hold(rt_linear *l) { return l && l->hold ? l->hold(l) : 0; }

void rt_linear_release(rt_linear *l)
{
    if (l && l->release) l->release(l);
}
