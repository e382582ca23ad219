/*
 * runtime/qlinear.c — a linear layer over a packed tensor (layout/layout.h), two
 * ways, threaded with OpenMP over rows:
 *
 *   - the int8 kernels (generation, and the prompts of layers they are fast on):
 *     activations quantized to int8 per weight group against the packed blocks,
 *     decoded on the fly by the kernels of runtime/qkernels.h; the weights are read
 *     once per four activation rows. A batch of more than four rows (of
 *     the set's tile_min_batch in wide rows), with a kernel set that has the tile kernel
 *     (AVX-512 VNNI and AVX2) and values under 8 bits, is quantized whole, and
 *     each tile of 32 weight rows is unpacked and laid out once and multiplied by
 *     all of it (tile_matmul: the same integer sums, the floats in another order).
 *     Without it (the portable set), such a batch unpacks each tile of
 *     weight rows to bytes once and reads those on every pass (dot_raw: the same
 *     bits), and one larger than INT8_BLOCK runs in blocks of that many rows, so
 *     the quantized activations of a block stay in cache while the rows stream
 *     by. One row at a time (generation), a tensor all of whose widths the
 *     kernel set takes by lookup tables (qk_lut_wanted) goes through those instead,
 *     32 weight rows at once, over the layer's own copy of its values in the order
 *     they read (built once, the same bytes: never a dequantized copy). All or
 *     none: a row that mixed the two, the other widths by the int8 kernels row by
 *     row, was slower than the int8 kernels alone on a 7B model (BENCHMARKS.md),
 *     and held the lookup runs twice;
 *   - exact, for batches of RT_PACKED_EXACT_BATCH rows or more where the int8
 *     kernels are not faster (rt_linear_packed_exact_batch: 8-bit values, and
 *     narrow rows without the tile kernel) and in a layer made with
 *     RT_PACKED_EXACT (evaluation): each thread
 *     decodes a slab of rows to fp32 and multiplies it by all activation rows with
 *     one single-threaded BLAS sgemm while the slab is in its cache. No activation
 *     rounding: evaluation measures the quantized weights, not the runtime (int8
 *     activations cost about 0.01 nats of KL divergence on SmolLM2).
 *
 * A tensor whose option rotates its inputs (layout/layout.h, "Input rotations")
 * holds W' = W R: both ways first rotate the activations, x' = R^T x (the kernels'
 * rotate: signs, a fast Walsh-Hadamard transform per block, the norm; the same
 * floats as lay_rot_apply), and multiply x' by W'. get_row rotates the row back.
 * rotate_input and matmul_rotated are those two halves, so that the layers that
 * read one input and rotate it alike rotate it once (rt_forward).
 * One with input scales (layout.h, "Activation-aware input scales") holds W / m:
 * the activations are multiplied by m first (lay_xscale_mul's products), and
 * get_row multiplies the row by m.
 *
 * Its scratch (rotated, permuted and quantized activations, per-row multipliers, the fp32
 * slabs) is an rt_scratch that every layer of a model shares (one product runs at
 * a time), sized at creation, so a 7B model's scratch is one layer's, not 224; a
 * layer made without one owns its own. It never makes a dequantized copy of the
 * whole tensor and never allocates in matmul. The packed arrays are borrowed: they
 * must outlive the layer.
 */
#include "qkernels.h"
#include "rt_int.h"

#include <assert.h>
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define TILE_ROWS 16   /* rows per work item: stays in L1 while the batch streams by */
#define SLAB_ROWS 128  /* rows per fp32 slab of the exact path (cols * 512 bytes) */
#define INT8_BLOCK 64  /* activation rows the int8 kernels quantize at once (a multiple of QK_NB) */
/* Without the tile kernel, prompt-sized batches take the int8 kernels where
 * bench_matvec --batch found them faster than the exact path: rows of this many
 * columns or more (on SmolLM2's 576,
 * a row's fixed cost per product, the scales and the sums, outweighs its 18
 * chunks: 0.44-0.64 of the exact path's speed) without 8-bit values (their dot
 * widens to 16 bits: 0.45-0.57). */
#define INT8_BATCH_COLS 1024
/* Batches over rows of INT8_BATCH_COLS or more take the tile kernel from the kernel
 * set's tile_min_batch rows (laying a tile out costs about as much as multiplying
 * it by 8 activation rows), smaller ones dot_raw. Narrower rows take it from
 * QK_NB + 1 rows: dot_raw's cost per row is the larger there (576 columns: 1.8x
 * at batch 8 with AVX-512, 1.25-1.6x with AVX2). */
#define HUGE_ALIGN ((size_t)2 << 20)

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* A run of groups that share a width and a length (at most three per row). */
typedef struct {
    int64_t g0, ng, gch, off;   /* first group, groups, chunks per group, byte offset in a row */
    int bits;
    int block;                  /* its activations' block order in the int8 kernels (qk_run_block) */
    int64_t lut_off;            /* byte offset of its groups in a tile of the lookup copy */
} qrun;

typedef struct {
    lay_packed p;               /* borrowed arrays */
    const qk_kernels *k;
    int64_t ng, row_bytes;
    int nruns;
    qrun runs[3];
    int32_t *perm;              /* [cols] original column of stored column j */
    int32_t *gather;            /* [cols] original column of kernel position j (block_order) */
    int32_t *gather1;           /* [cols] the same for batch 1: stored order in lookup runs, else gather */
    uint8_t *zsym;              /* [ng] the zero of formats that store none (2^(b-1), a ggml type's center), else NULL */
    int max_batch, max_threads;
    int exact_batch;            /* batches of this many rows or more take the exact path (INT_MAX: none) */
    int tile_from;              /* batches of this many rows or more take the tile kernel (INT_MAX: none) */
    int tile_vmax;              /* the values' bound there: 2^b - 1 of the widest group */
    int int8_rows;              /* rows of the int8 scratch: min(max_batch, exact_batch - 1), and at most
                                   INT8_BLOCK unless the batch can take the tiles */
    int64_t slab_rows;          /* min(rows, SLAB_ROWS) */
    float *rsign;               /* [cols] the rotation's signs (opt.rot), else NULL */
    float *xmul;                /* [cols] the input multipliers m as float (opt.awq), else NULL */
    /* The lookup copy (runtime/qkernels.h, "Lookup-table kernels") of the runs that
     * take it, every row, the last tile padded with zero rows; NULL if none does. */
    uint8_t *lut;               /* [lut_tiles][32 * lut_row_bytes] values */
    uint16_t *lut_s;            /* [lut_tiles][ng][32] scales (fp16 bits) */
    uint8_t *lut_z;             /* [lut_tiles][ng][32] zeros */
    int64_t lut_tiles, lut_row_bytes; /* lut_row_bytes 0: batch 1 takes no lookup kernels */
    size_t xr_bytes;            /* [max_batch][cols] transformed activations, at the scratch's start */
    rt_scratch *scratch;        /* shared (or owned: own_scratch) */
    int own_scratch;
    size_t off[7], need;        /* byte offsets of xq, xd, xs, sd, tab, raw in the int8 scratch; its end */
} qlin;

/* A product's scratch, carved from the shared buffer. The int8 path and the exact
 * path never run at once, so they overlap. */
typedef struct {
    float *xr;                  /* [max_batch][cols] transformed activations (rot, awq), else NULL */
    float *xp;                  /* [max_threads][cols] an activation row in kernel order */
    int8_t *xq;                 /* [int8_rows][cols] quantized */
    float *xd;                  /* [int8_rows][ng] activation scale per group */
    int32_t *xs;                /* [int8_rows][ng] sum of xq per group */
    float *sd;                  /* [max_threads][QK_NB][ng] per-row multipliers */
    uint8_t *tab;               /* [cols * 8] lookup tables of activation row 0 (batch 1, lut) */
    uint8_t *raw;               /* [max_threads][TILE_ROWS][cols] unpacked weight rows (batches over QK_NB),
                                   or [max_threads][tile_bytes] a tile's rows and its layout (tile) */
    float *slab;                /* [max_threads][slab_rows][cols] fp32 rows (exact path) */
} qbufs;

static qbufs bufs_of(const qlin *q)
{
    char *r = rt_scratch_get(q->scratch, q->need), *b = r + q->xr_bytes;
    return (qbufs){.xr = q->rsign || q->xmul ? (float *)r : NULL, .xp = (float *)b, .xq = (int8_t *)(b + q->off[0]),
                   .xd = (float *)(b + q->off[1]), .xs = (int32_t *)(b + q->off[2]), .sd = (float *)(b + q->off[3]),
                   .tab = (uint8_t *)(b + q->off[4]), .raw = (uint8_t *)(b + q->off[5]), .slab = (float *)b};
}

/* ==== Products ==== */

/* Row r of W in the original column order: s * (q - z), chunk by chunk with the
 * kernels' decoder, scattered through the permutation. */
static void decode_row(const qlin *q, int64_t r, float *out)
{
    const lay_packed *p = &q->p;
    float v[LAY_CHUNK];
    for (int i = 0; i < q->nruns; i++) {
        const qrun *u = &q->runs[i];
        const uint8_t *src = p->values + r * q->row_bytes + u->off;
        for (int64_t g = u->g0; g < u->g0 + u->ng; g++) {
            float s = lay_f16_to_f32(p->scales[r * q->ng + g]);
            float z = (float)(q->zsym ? q->zsym[g] : p->zeros[r * q->ng + g]);
            const int32_t *perm = q->perm + g * p->opt.group;
            for (int64_t c = 0; c < u->gch; c++, src += u->bits * 4, perm += LAY_CHUNK) {
                q->k->decode(u->bits, src, s, z, v);
                if (p->mins) { /* s * (q - z) + m, the decoders' order (layout.h) */
                    float m = lay_f16_to_f32(p->mins[r * q->ng + g]);
                    for (int j = 0; j < LAY_CHUNK; j++) out[perm[j]] = v[j] + m;
                } else {
                    for (int j = 0; j < LAY_CHUNK; j++) out[perm[j]] = v[j];
                }
            }
        }
    }
}

static void packed_get_row(const rt_linear *l, int64_t r, float *out)
{
    const qlin *q = l->impl;
    assert(r >= 0 && r < l->rows);
    decode_row(q, r, out);
    lay_rot_unapply(q->p.opt.rot, q->p.rot_seed, out, q->p.cols); /* a row of W' back to W's */
    if (q->xmul) lay_xscale_mul(q->p.xscale, out, q->p.cols);
}


/* A min m per group adds m * sum_j x~_j = m * d_g * xs_g to the product: taken
 * off corr, which is subtracted. */
static void add_min_terms(const uint16_t *mins, const float *xd, const int32_t *xs, int64_t ng, int nb, float *corr)
{
    for (int k = 0; k < nb; k++) {
        float c = 0.0f;
        for (int64_t g = 0; g < ng; g++) c += lay_f16_to_f32(mins[g]) * xd[k * ng + g] * (float)xs[k * ng + g];
        corr[k] -= c;
    }
}

/* y[kb + k][r] for k < nb: one row against nb quantized activation rows, from its
 * planes or (raw not NULL) from the row unpacked by unpack_row. */
static void row_product(const qlin *q, const qbufs *b, int64_t r, const uint8_t *raw, int kb, int nb, float *sd,
                        float *y)
{
    const lay_packed *p = &q->p;
    int64_t ng = q->ng, cols = p->cols;
    const uint8_t *z = q->zsym ? q->zsym : p->zeros + r * ng;
    float corr[QK_NB], acc[QK_NB] = {0};
    q->k->prep(p->scales + r * ng, z, b->xd + kb * ng, b->xs + kb * ng, ng, nb, sd, corr);
    if (p->mins) add_min_terms(p->mins + r * ng, b->xd + kb * ng, b->xs + kb * ng, ng, nb, corr);
    const uint8_t *row = p->values + r * q->row_bytes;
    for (int i = 0; i < q->nruns; i++) {
        const qrun *u = &q->runs[i];
        const int8_t *xq = b->xq + kb * cols + u->g0 * p->opt.group;
        if (raw) q->k->dot_raw[u->bits](raw + u->g0 * p->opt.group, u->ng, u->gch, xq, cols, sd + u->g0, ng, acc, nb);
        else q->k->dot[u->bits](row + u->off, u->ng, u->gch, xq, cols, sd + u->g0, ng, acc, nb);
    }
    for (int k = 0; k < nb; k++) y[(kb + k) * p->rows + r] = acc[k] - corr[k];
}

/* Activation row k into kernel order (stored order, or block order in some runs)
 * in xp, then int8 per group. */
static void quantize_input(const qlin *q, const qbufs *b, const int32_t *gather, const float *x, int k, float *xp)
{
    int64_t cols = q->p.cols;
    for (int64_t j = 0; j < cols; j++) xp[j] = x[k * cols + gather[j]];
    q->k->quant(xp, cols, q->p.opt.group, b->xq + k * cols, b->xd + k * q->ng, b->xs + k * q->ng);
}

static int threads_for(const qlin *q)
{
    int nt = omp_get_max_threads();
    return nt > q->max_threads ? q->max_threads : nt;
}

/* y = x W_deq^T: slabs of rows decoded to fp32, each multiplied by every activation
 * row in one sgemm on the thread that decoded it. BLAS runs single-threaded inside
 * (OpenMP already has a thread per core), as it was set before, afterwards. The
 * slabs split the rows evenly over 2 or 4 threads (SmolLM2's 576 rows in slabs of
 * 128 left one of two cores idle for a sixth of q and o, a third of k and v). */
static void exact_matmul(const qlin *q, const float *x, float *y, int n)
{
    int nt = threads_for(q);
    int64_t rows = q->p.rows, cols = q->p.cols, sr = rt_even_slab_rows(rows, q->slab_rows);
    int64_t slabs = (rows + sr - 1) / sr;
    float *slab = bufs_of(q).slab;
    int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
#pragma omp parallel num_threads(nt)
    {
        float *w = slab + (int64_t)omp_get_thread_num() * sr * cols;
#pragma omp for schedule(static)
        for (int64_t s = 0; s < slabs; s++) {
            int64_t r0 = s * sr, nr = rows - r0 < sr ? rows - r0 : sr;
            for (int64_t r = 0; r < nr; r++) decode_row(q, r0 + r, w + r * cols);
            rt_slab_product(w, nr, cols, x, n, y + r0, rows);
        }
    }
    openblas_set_num_threads(blas_threads);
}

/* out = x' = R^T x (rot) or x * m (awq) for the n activation rows. */
static void transform_input(const qlin *q, const float *x, float *out, int n)
{
    int64_t cols = q->p.cols;
    float norm = (float)(1.0 / sqrt((double)q->p.opt.rot));
#pragma omp parallel for schedule(static) num_threads(threads_for(q)) if (n > 1)
    for (int k = 0; k < n; k++) {
        const float *xk = x + k * cols;
        float *ok = out + k * cols;
        if (q->xmul) {
            for (int64_t j = 0; j < cols; j++) ok[j] = xk[j] * q->xmul[j]; /* lay_xscale_mul's product */
            continue;
        }
        memcpy(ok, xk, (size_t)cols * sizeof *x);
        q->k->rotate(q->p.opt.rot, q->rsign, norm, ok, cols);
    }
}

/* Rows 32t..32t+31 of y at batch 1, run by run; padding rows are dropped. */
static void lut_tile(const qlin *q, const qbufs *b, int64_t t, float *y)
{
    const lay_packed *p = &q->p;
    int64_t ng = q->ng, r0 = t * QK_LUT_ROWS, nr = p->rows - r0 < QK_LUT_ROWS ? p->rows - r0 : QK_LUT_ROWS;
    float acc[QK_LUT_ROWS] = {0};
    const uint8_t *w = q->lut + t * QK_LUT_ROWS * q->lut_row_bytes;
    const uint16_t *s = q->lut_s + t * ng * QK_LUT_ROWS;
    const uint8_t *z = q->lut_z + t * ng * QK_LUT_ROWS;
    for (int i = 0; i < q->nruns; i++) {
        const qrun *u = &q->runs[i];
        int64_t c0 = u->g0 * p->opt.group;
        q->k->lut_dot(u->bits, w + QK_LUT_ROWS * u->lut_off, u->ng, u->gch * LAY_CHUNK, b->tab + c0 * 8,
                      s + u->g0 * QK_LUT_ROWS, z + u->g0 * QK_LUT_ROWS, b->xd + u->g0, b->xs + u->g0, acc);
    }
    for (int64_t r = 0; r < nr; r++) y[r0 + r] = acc[r];
}

#define LUT_TABLE_COLS 512 /* columns per work item of the table build */

static void lut_matvec(const qlin *q, const float *x, float *y)
{
    qbufs b = bufs_of(q);
    int64_t cols = q->p.cols;
    quantize_input(q, &b, q->gather1, x, 0, b.xp);
#pragma omp parallel num_threads(threads_for(q))
    {
#pragma omp for schedule(static)
        for (int64_t c0 = 0; c0 < cols; c0 += LUT_TABLE_COLS)
            q->k->lut_tables(b.xq + c0, cols - c0 < LUT_TABLE_COLS ? cols - c0 : LUT_TABLE_COLS, b.tab + c0 * 8);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < q->lut_tiles; t++) lut_tile(q, &b, t, y);
    }
}

/* Row r's values as bytes in kernel order (the activations' order), run by run. */
static void unpack_row(const qlin *q, int64_t r, uint8_t *out)
{
    const uint8_t *row = q->p.values + r * q->row_bytes;
    for (int i = 0; i < q->nruns; i++) {
        const qrun *u = &q->runs[i];
        q->k->unpack(u->bits, u->block, row + u->off, u->ng * u->gch, out + u->g0 * q->p.opt.group);
    }
}

/* y = x W_deq^T through the int8 kernels, INT8_BLOCK activation rows at a time:
 * quantized, then every tile of weight rows against them, QK_NB rows per pass.
 * Past one pass, a tile's rows are unpacked once and the passes read the bytes. */
static void int8_matmul(const qlin *q, const float *x, float *y, int n)
{
    int64_t rows = q->p.rows, cols = q->p.cols, tiles = (rows + TILE_ROWS - 1) / TILE_ROWS;
    qbufs b = bufs_of(q);
#pragma omp parallel num_threads(threads_for(q))
    {
        int th = omp_get_thread_num();
        float *sd = b.sd + (int64_t)th * QK_NB * q->ng;
        uint8_t *raw = b.raw + (int64_t)th * TILE_ROWS * cols;
        const int block = q->int8_rows < INT8_BLOCK ? q->int8_rows : INT8_BLOCK; /* its scratch may hold more */
        for (int k0 = 0; k0 < n; k0 += block) {
            int nk = n - k0 < block ? n - k0 : block, unpacked = nk > QK_NB;
            const float *xk = x + (int64_t)k0 * cols;
            float *yk = y + (int64_t)k0 * rows;
#pragma omp for schedule(static)
            for (int k = 0; k < nk; k++) quantize_input(q, &b, q->gather, xk, k, b.xp + th * cols);
#pragma omp for schedule(static)
            for (int64_t t = 0; t < tiles; t++) {
                int64_t r0 = t * TILE_ROWS, r1 = r0 + TILE_ROWS < rows ? r0 + TILE_ROWS : rows;
                for (int64_t r = r0; unpacked && r < r1; r++) unpack_row(q, r, raw + (r - r0) * cols);
                for (int kb = 0; kb < nk; kb += QK_NB) {
                    int nb = nk - kb < QK_NB ? nk - kb : QK_NB;
                    for (int64_t r = r0; r < r1; r++)
                        row_product(q, &b, r, unpacked ? raw + (r - r0) * cols : NULL, kb, nb, sd, yk);
                }
            }
        }
    }
}

/* A thread's tile scratch: the tile's rows unpacked, TILE_RAW_STRIDE bytes apart
 * (a row's length plus a cache line: rows a power of two apart, as a 7B layer's
 * 4096, share the L1 sets that the layout's gathers read, which made batches of
 * 16-32 rows 2.4-6x slower), then its layout, bias, scales and mins
 * (runtime/qkernels.h, "Batches in tiles of 32 rows"). */
#define TILE_RAW_STRIDE(cols) ((int64_t)align64((size_t)(cols)) + 64)
static size_t tile_raw_bytes(const qlin *q) { return (size_t)(QK_TILE_ROWS * TILE_RAW_STRIDE(q->p.cols)); }
static size_t tile_bytes(const qlin *q)
{
    return tile_raw_bytes(q) + (size_t)(QK_TILE_ROWS * q->p.cols) + 3 * align64((size_t)(q->ng * QK_TILE_ROWS) * 4);
}

/* One tile of rows r0..r0+nr-1: unpacked, laid out, multiplied by the n activation
 * rows (as the set's tiles take them) into y. */
static void tile_product(const qlin *q, const qbufs *b, int64_t r0, int nr, uint8_t *scratch, int n, float *y)
{
    const lay_packed *p = &q->p;
    int64_t cols = p->cols, ng = q->ng, stride = TILE_RAW_STRIDE(cols);
    size_t meta = align64((size_t)(ng * QK_TILE_ROWS) * 4);
    char *at = (char *)scratch + tile_raw_bytes(q) + align64((size_t)(QK_TILE_ROWS * cols));
    qk_tile t = {.w = (int8_t *)scratch + tile_raw_bytes(q), .bias = (int32_t *)at, .ws = (float *)(at + meta),
                 .wm = p->mins ? (float *)(at + 2 * meta) : NULL, .ng = ng, .group = p->opt.group, .cols = cols,
                 .nr = nr, .vmax = q->tile_vmax};
    for (int r = 0; r < nr; r++) unpack_row(q, r0 + r, scratch + r * stride);
    const uint8_t *z = q->zsym ? q->zsym : p->zeros + r0 * ng;
    q->k->tile_pack(scratch, stride, z, q->zsym ? 0 : ng, p->scales + r0 * ng, p->mins ? p->mins + r0 * ng : NULL,
                    ng, &t);
    q->k->tile(&t, (const uint8_t *)b->xq, b->xd, b->xs, n, y + r0, p->rows);
}

/* y = x W_deq^T through the tile kernel: every activation row quantized (and made
 * unsigned, for a set whose tiles take xq + 128) first, then each tile of weight rows unpacked once and multiplied by
 * all of them. */
static void tile_matmul(const qlin *q, const float *x, float *y, int n)
{
    int64_t rows = q->p.rows, cols = q->p.cols, tiles = (rows + QK_TILE_ROWS - 1) / QK_TILE_ROWS;
    qbufs b = bufs_of(q);
#pragma omp parallel num_threads(threads_for(q))
    {
        int th = omp_get_thread_num();
#pragma omp for schedule(static)
        for (int k = 0; k < n; k++) {
            quantize_input(q, &b, q->gather, x, k, b.xp + th * cols);
            if (q->k->tile_unsigned) qk_tile_unsigned(b.xq + k * cols, cols);
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tiles; t++) {
            int64_t r0 = t * QK_TILE_ROWS;
            int nr = rows - r0 < QK_TILE_ROWS ? (int)(rows - r0) : QK_TILE_ROWS;
            tile_product(q, &b, r0, nr, b.raw + th * tile_bytes(q), n, y);
        }
    }
}

/* y = x W'^T for x already transformed (rotated or scaled) where the option says so. */
static void product(const qlin *q, const float *x, float *y, int n)
{
    assert(n >= 1 && n <= q->max_batch);
    if (n >= q->exact_batch) exact_matmul(q, x, y, n);
    else if (n == 1 && q->lut) lut_matvec(q, x, y);
    else if (n >= q->tile_from) tile_matmul(q, x, y, n);
    else int8_matmul(q, x, y, n);
}

static void packed_matmul(const rt_linear *l, const float *x, float *y, int n)
{
    const qlin *q = l->impl;
    assert(n >= 1 && n <= q->max_batch);
    if (q->rsign || q->xmul) {
        float *xr = bufs_of(q).xr;
        transform_input(q, x, xr, n);
        x = xr;
    }
    product(q, x, y, n);
}

static void packed_rotate_input(const rt_linear *l, const float *x, float *xr, int n)
{
    const qlin *q = l->impl;
    assert(q->rsign && n >= 1 && n <= q->max_batch);
    transform_input(q, x, xr, n);
}

static void packed_matmul_rotated(const rt_linear *l, const float *xr, float *y, int n)
{
    assert(((const qlin *)l->impl)->rsign);
    product(l->impl, xr, y, n);
}

/* ==== Creation ==== */

/* The gather index: stored order, except in runs whose width the kernels take in
 * block order (runtime/qkernels.h); batch1 of a layer with lookups: stored order. */
static void build_gather(const qlin *q, int32_t *gather, int batch1)
{
    const lay_option *o = &q->p.opt;
    for (int64_t j = 0; j < q->p.cols; j++) gather[j] = q->perm[j];
    for (int i = 0; i < q->nruns; i++) {
        const qrun *u = &q->runs[i];
        int B = batch1 && q->lut_row_bytes ? 1 : u->block;
        if (B < 2) continue;
        /* the run ends after its last group, which may be the short one */
        int64_t end = u->g0 * o->group + u->ng * u->gch * LAY_CHUNK;
        for (int64_t j0 = u->g0 * o->group; j0 < end; j0 += B * LAY_CHUNK)
            for (int p = 0; p < B * LAY_CHUNK; p++) gather[j0 + p] = q->perm[j0 + qk_block_pos(B, p)];
    }
}

static void qlin_free(qlin *q)
{
    if (!q) return;
    free(q->perm), free(q->gather), free(q->gather1), free(q->zsym), free(q->rsign), free(q->xmul);
    free(q->lut), free(q->lut_s), free(q->lut_z);
    if (q->own_scratch) rt_scratch_free(q->scratch);
    free(q);
}

static void packed_destroy(rt_linear *l) { qlin_free(l->impl); l->impl = NULL; }

/* The runs of a row: maximal stretches of groups with one width and one length. */
static void build_runs(qlin *q)
{
    const lay_option *o = &q->p.opt;
    int64_t cols = q->p.cols;
    q->nruns = 0;
    for (int64_t g = 0; g < q->ng;) {
        int bits = lay_group_bits(o, cols, g);
        int64_t gc = lay_group_cols(o, cols, g), g1 = g + 1;
        while (g1 < q->ng && lay_group_bits(o, cols, g1) == bits && lay_group_cols(o, cols, g1) == gc) g1++;
        assert(q->nruns < 3);
        q->runs[q->nruns++] = (qrun){ .g0 = g, .ng = g1 - g, .gch = gc / LAY_CHUNK,
                                      .off = lay_group_offset(o, cols, g), .bits = bits,
                                      .block = qk_run_block(q->k->block_order[bits], gc / LAY_CHUNK) };
        g = g1;
    }
    /* all runs or none (top of the file); the lookup kernels know no mins (ggml's
     * Q4_1, Q5_1) */
    int all = !q->p.mins;
    for (int i = 0; i < q->nruns; i++) all &= qk_lut_wanted(q->k, q->runs[i].bits, cols);
    q->lut_row_bytes = 0;
    for (int i = 0; all && i < q->nruns; i++) {
        qrun *u = &q->runs[i];
        u->lut_off = q->lut_row_bytes;
        q->lut_row_bytes += u->ng * u->gch * u->bits * 4;
    }
}

/* One tile of the lookup copy from src (32 rows of packed values, row_bytes apart):
 * the lookup runs' groups regrouped, and the tile's scales and zeros as [g][32]. */
static void lut_fill_tile(qlin *q, int64_t t, const uint8_t *src, int64_t nr)
{
    const lay_packed *p = &q->p;
    int64_t ng = q->ng;
    uint8_t *dst = q->lut + t * QK_LUT_ROWS * q->lut_row_bytes;
    for (int i = 0; i < q->nruns; i++) {
        const qrun *u = &q->runs[i];
        int64_t gbytes = u->gch * u->bits * 4;
        for (int64_t g = 0; g < u->ng; g++)
            q->k->lut_pack(u->bits, u->gch * LAY_CHUNK, src + u->off + g * gbytes, q->row_bytes,
                              dst + QK_LUT_ROWS * (u->lut_off + g * gbytes));
    }
    uint16_t *s = q->lut_s + t * ng * QK_LUT_ROWS;
    uint8_t *z = q->lut_z + t * ng * QK_LUT_ROWS;
    for (int64_t r = 0, row = t * QK_LUT_ROWS; r < nr; r++, row++)
        for (int64_t g = 0; g < ng; g++) {
            s[g * QK_LUT_ROWS + r] = p->scales[row * ng + g];
            z[g * QK_LUT_ROWS + r] = q->zsym ? q->zsym[g] : p->zeros[row * ng + g];
        }
}

/* Memory for a lookup copy: streamed once per token, so huge pages where it spans
 * any (as pack/load.c's copy), without rounding a small tensor's copy up to one. */
static uint8_t *lut_alloc(size_t bytes)
{
    if (bytes < HUGE_ALIGN) return malloc(bytes);
    void *p = NULL;
    if (posix_memalign(&p, HUGE_ALIGN, bytes)) return NULL;
    madvise(p, bytes / HUGE_ALIGN * HUGE_ALIGN, MADV_HUGEPAGE);
    return p;
}

/* The lookup copy, if a run takes the lookup kernels. The last tile's missing rows
 * are zero values with zero scales (they add nothing, and are dropped). */
static int build_lut(qlin *q)
{
    if (!q->lut_row_bytes) return 0;
    int64_t rows = q->p.rows, full = rows / QK_LUT_ROWS, ng = q->ng;
    q->lut_tiles = (rows + QK_LUT_ROWS - 1) / QK_LUT_ROWS;
    size_t tile = (size_t)(QK_LUT_ROWS * q->lut_row_bytes), meta = (size_t)(ng * QK_LUT_ROWS);
    q->lut = lut_alloc((size_t)q->lut_tiles * tile);
    q->lut_s = calloc((size_t)q->lut_tiles * meta, sizeof *q->lut_s);
    q->lut_z = calloc((size_t)q->lut_tiles * meta, 1);
    if (!q->lut || !q->lut_s || !q->lut_z) return -1;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < full; t++) lut_fill_tile(q, t, q->p.values + t * QK_LUT_ROWS * q->row_bytes, QK_LUT_ROWS);
    if (full == q->lut_tiles) return 0;
    uint8_t *pad = calloc(QK_LUT_ROWS, (size_t)q->row_bytes);
    if (!pad) return -1;
    memcpy(pad, q->p.values + full * QK_LUT_ROWS * q->row_bytes, (size_t)((rows - full * QK_LUT_ROWS) * q->row_bytes));
    lut_fill_tile(q, full, pad, rows - full * QK_LUT_ROWS);
    free(pad);
    return 0;
}

/* The width of a tensor's widest group (a mix may round its share of wide groups
 * to none). */
static int widest_group(const lay_option *o, int64_t cols)
{
    int most = 0;
    for (int64_t g = 0; g < lay_n_groups(o, cols); g++)
        if (lay_group_bits(o, cols, g) > most) most = lay_group_bits(o, cols, g);
    return most;
}

/* Whether a tensor's batches can take k's tile kernel (tile_from says from how many
 * rows): widths up to 7 (runtime/qkernels.h). */
static int takes_tiles(const qk_kernels *k, const lay_option *o, int64_t cols)
{
    return k->tile && widest_group(o, cols) < 8;
}

/* Sizes the product scratch (bufs_of's layout) and asks the shared buffer for it. */
static void plan_scratch(qlin *q)
{
    size_t cols = (size_t)q->p.cols, ng = (size_t)q->ng, mb = (size_t)q->int8_rows, nt = (size_t)q->max_threads;
    size_t raw = q->int8_rows <= QK_NB ? 0 : nt * TILE_ROWS * cols;
    if (q->tile_from <= q->int8_rows && nt * tile_bytes(q) > raw) raw = nt * tile_bytes(q);
    size_t sizes[7] = {nt * cols * sizeof(float), mb * cols, mb * ng * sizeof(float), mb * ng * sizeof(int32_t),
                       nt * QK_NB * ng * sizeof(float), q->lut_row_bytes ? cols * 8 : 0, raw};
    size_t at = 0;
    for (int i = 0; i < 7; i++) {
        at += align64(sizes[i]);
        q->off[i] = at; /* off[i] is where part i + 1 starts; off[6] the end */
    }
    q->need = at;
    size_t slab = nt * (size_t)q->slab_rows * cols * sizeof(float);
    if (q->max_batch >= q->exact_batch && slab > q->need) q->need = slab;
    q->xr_bytes = q->p.opt.rot || q->p.opt.awq ? align64((size_t)q->max_batch * cols * sizeof(float)) : 0;
    q->need += q->xr_bytes; /* the transformed rows stay while either path runs */
    rt_scratch_want(q->scratch, q->need);
}

static int qlin_alloc(qlin *q, int max_batch, int flags, rt_scratch *shared)
{
    int64_t cols = q->p.cols, ng = q->ng;
    q->max_batch = max_batch;
    q->max_threads = omp_get_max_threads() > omp_get_num_procs() ? omp_get_max_threads() : omp_get_num_procs();
    q->exact_batch = rt_linear_packed_exact_batch(&q->p.opt, q->p.cols, flags);
    q->tile_from = !takes_tiles(q->k, &q->p.opt, q->p.cols) ? INT_MAX
                   : q->p.cols < INT8_BATCH_COLS          ? QK_NB + 1
                                                          : q->k->tile_min_batch;
    q->tile_vmax = (1 << widest_group(&q->p.opt, cols)) - 1;
    q->int8_rows = max_batch < q->exact_batch - 1 ? max_batch : q->exact_batch - 1;
    if (q->int8_rows > INT8_BLOCK && q->tile_from > max_batch) q->int8_rows = INT8_BLOCK; /* tiles: all at once */
    q->slab_rows = q->p.rows < SLAB_ROWS ? q->p.rows : SLAB_ROWS;
    q->scratch = shared ? shared : rt_scratch_new();
    q->own_scratch = !shared;
    if (!q->scratch) return -1;
    plan_scratch(q);
    if (q->own_scratch && rt_scratch_ready(q->scratch)) return -1;
    q->perm = malloc((size_t)cols * sizeof *q->perm);
    q->gather = malloc((size_t)cols * sizeof *q->gather);
    q->gather1 = malloc((size_t)cols * sizeof *q->gather1);
    if (!q->p.zeros) q->zsym = malloc((size_t)ng);
    if (q->p.opt.rot && (q->rsign = malloc((size_t)cols * sizeof *q->rsign)))
        for (int64_t j = 0; j < cols; j++) q->rsign[j] = (float)lay_rot_sign(q->p.rot_seed, j);
    if (q->p.opt.awq && (q->xmul = malloc((size_t)cols * sizeof *q->xmul)))
        for (int64_t j = 0; j < cols; j++) q->xmul[j] = lay_f16_to_f32(q->p.xscale[j]);
    return q->perm && q->gather && q->gather1 && (q->p.zeros || q->zsym) && (!q->p.opt.rot || q->rsign) &&
                   (!q->p.opt.awq || q->xmul)
               ? 0
               : -1;
}

int rt_linear_packed_exact_batch(const lay_option *o, int64_t cols, int flags)
{
    if (flags & RT_PACKED_EXACT) return RT_PACKED_EXACT_BATCH;
    if (takes_tiles(qk_active(), o, cols)) return INT_MAX;
    return cols < INT8_BATCH_COLS || widest_group(o, cols) == 8 ? RT_PACKED_EXACT_BATCH : INT_MAX;
}

int rt_linear_packed_copies_values(const lay_option *o, int64_t cols)
{
    const qk_kernels *k = qk_active();
    if (lay_ggml_has_min(lay_option_ggml(o))) return 0; /* build_runs: no lookup with mins */
    for (int64_t g = 0; g < lay_n_groups(o, cols); g++)
        if (!qk_lut_wanted(k, lay_group_bits(o, cols, g), cols)) return 0;
    return 1;
}

rt_linear *rt_linear_packed(const lay_packed *p, int max_batch, int flags, rt_scratch *scratch, char *err,
                            size_t err_len)
{
    char why[128];
    qlin *q = NULL;
    rt_linear *l = NULL;
    if (lay_option_check(&p->opt, p->rows, p->cols, why, sizeof why)) goto fail;
    snprintf(why, sizeof why, "group %d is over %d columns", (int)p->opt.group, QK_MAX_GROUP);
    if (p->opt.group > QK_MAX_GROUP) goto fail;
    snprintf(why, sizeof why, "max_batch %d is not positive", max_batch);
    if (max_batch < 1) goto fail;
    snprintf(why, sizeof why, "no zeros for an asymmetric format");
    if (p->opt.scale_fmt == LAY_SCALE_F16_Z8 && !p->zeros) goto fail;
    snprintf(why, sizeof why, "a ggml type that is not in the packed layout (only the 32-wide ones are)");
    if (lay_option_ggml(&p->opt) >= 0 && !lay_ggml_packable(lay_option_ggml(&p->opt))) goto fail;
    snprintf(why, sizeof why, "no mins for a ggml type with a min");
    if (lay_ggml_has_min(lay_option_ggml(&p->opt)) && !p->mins) goto fail;
    snprintf(why, sizeof why, "no permutation");
    if (lay_option_ggml(&p->opt) < 0 && !p->perm) goto fail;
    snprintf(why, sizeof why, "out of memory");
    if (!(q = calloc(1, sizeof *q)) || !(l = calloc(1, sizeof *l))) goto fail;
    q->p = *p;
    if (p->opt.scale_fmt != LAY_SCALE_F16_Z8) q->p.zeros = NULL;
    if (!lay_ggml_has_min(lay_option_ggml(&p->opt))) q->p.mins = NULL;
    q->k = qk_active();
    q->ng = lay_n_groups(&p->opt, p->cols);
    q->row_bytes = lay_row_bytes(&p->opt, p->cols);
    build_runs(q);
    if (qlin_alloc(q, max_batch, flags, scratch)) goto fail;
    for (int64_t j = 0; j < p->cols; j++) {
        int64_t v = lay_perm_at(p, j);
        snprintf(why, sizeof why, "perm[%lld] = %lld is not a column", (long long)j, (long long)v);
        if (v < 0 || v >= p->cols) goto fail;
        q->perm[j] = (int32_t)v;
    }
    for (int64_t g = 0; q->zsym && g < q->ng; g++) q->zsym[g] = (uint8_t)lay_zero_at(&q->p, 0, g, lay_group_bits(&p->opt, p->cols, g));
    build_gather(q, q->gather, 0);
    build_gather(q, q->gather1, 1);
    snprintf(why, sizeof why, "out of memory for the lookup kernels' copy");
    if (build_lut(q)) goto fail;
    *l = (rt_linear){ .rows = p->rows, .cols = p->cols, .matmul = packed_matmul, .get_row = packed_get_row,
                      .destroy = packed_destroy, .impl = q, .packed = &q->p };
    if (q->rsign) {
        l->rot = p->opt.rot, l->rot_seed = p->rot_seed;
        l->rotate_input = packed_rotate_input, l->matmul_rotated = packed_matmul_rotated;
    }
    return l;
fail:
    if (err && err_len) snprintf(err, err_len, "packed linear %lldx%lld (%s): %s", (long long)p->rows,
                                 (long long)p->cols, p->opt.name, why);
    qlin_free(q);
    free(l);
    return NULL;
}
