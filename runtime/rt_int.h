/*
 * runtime/rt_int.h — internals of the runtime shared by its .c files: the run
 * state (KV cache and scratch) and small numeric helpers.
 *
 * Everything a forward pass touches is allocated here, once, at rt_state_new,
 * sized from max_ctx and max_batch; the forward pass never allocates. Nothing
 * outside runtime/ includes this file.
 */
#ifndef BITPLAN_RT_INT_H
#define BITPLAN_RT_INT_H

#include <string.h>

#include "runtime.h"

/* The run state of one sequence. Shapes use: L = n_layers, T = max_ctx,
 * B = max_batch, D = dim, Q = n_heads * head_dim, KV = n_kv_heads * head_dim,
 * H = hidden_dim, R = rope_dim / 2. */
struct rt_state {
    int max_ctx, max_batch;
    int q_dim, kv_dim;
    int cache_layers;    /* L, or 1 for rt_state_new_one_cache (all layers share one) */
    float *key_cache;    /* [cache_layers][T][KV]: keys after RoPE */
    float *value_cache;  /* [cache_layers][T][KV] */
    float *x;            /* [B][D] residual stream of rt_forward */
    float *xb;           /* [B][D] normalized input of a block */
    float *xo;           /* [B][D] output of o or down, before the residual add */
    float *q;            /* [B][Q] queries after RoPE */
    float *att;          /* [B][Q] attention output (input of o) */
    float *scores;       /* [att_threads][att_rows][T]: attention weights, a block of rows per thread */
    int att_threads;     /* threads attention may use (OpenMP's maximum at rt_state_new) */
    int att_rows;        /* min(B, RT_ATT_ROWS) */
    float *gate, *up;    /* [B][H] */
    float *xr;           /* [B][D] xb rotated once for the layers that rotate it alike (rt_forward);
                            NULL when no two layers of the model can share a rotation */
    float *rope_cos, *rope_sin; /* [T][R] */
    int rope_neox;       /* 1: pairs (i, i + rope_dim/2) rotate (qwen2); 0: pairs (2i, 2i+1) */
    rt_observer observer;
    void *observer_ctx;
};

/* Whether layers a and b rotate their inputs alike (rotate_input, the same block
 * and seed), so that one rotation of a shared input serves both. */
static inline int rt_same_rotation(const rt_linear *a, const rt_linear *b)
{
    return a->rotate_input && b->rotate_input && a->cols == b->cols && a->rot == b->rot && a->rot_seed == b->rot_seed;
}

/* Query rows per work item of a batch's attention. */
#define RT_ATT_ROWS 32

/* Rows per slab when a product's rows are cut into slabs of at most max_rows: the
 * fewest slabs, in a multiple of 4, that split the rows as evenly as a multiple of
 * 8 rows allows, so that 2 or 4 threads get equal shares. It depends on the shape
 * alone: BLAS's bits depend on a product's shape, and a result must not depend on
 * the number of threads. */
static inline int64_t rt_even_slab_rows(int64_t rows, int64_t max_rows)
{
    int64_t slabs = ((rows + max_rows - 1) / max_rows + 3) / 4 * 4;
    int64_t sr = ((rows + slabs - 1) / slabs + 7) / 8 * 8;
    return sr < max_rows ? sr : max_rows;
}

/* y[n][0..nr) (rows ldy apart) = x[n][cols] w[nr][cols]^T: one sgemv (n = 1) or
 * sgemm on the calling thread, with BLAS's threads as they are set. */
void rt_slab_product(const float *w, int64_t nr, int64_t cols, const float *x, int n, float *y, int64_t ldy);

/* y[n][rows] = x[n][cols] w[rows][cols]^T in slabs of at most DENSE_SLAB_ROWS rows
 * over OpenMP's threads, BLAS single-threaded in each (with one OpenMP thread, one
 * BLAS call on BLAS's threads): rt_linear_dense's product. */
#define DENSE_SLAB_ROWS 256
void rt_dense_product(const float *w, int64_t rows, int64_t cols, const float *x, float *y, int n);

/* Layer l's part of the KV cache: keys (values) of position pos at
 * cache + rt_cache_offset(s, l, pos). */
static inline size_t rt_cache_offset(const rt_state *s, int l, int pos)
{
    return ((size_t)(s->cache_layers == 1 ? 0 : l) * (size_t)s->max_ctx + (size_t)pos) * (size_t)s->kv_dim;
}

/* 1 if the architecture's q/k rows are in "NeoX" RoPE order (halves) rather than
 * llama.cpp's interleaved order. GGUF stores llama/mistral q/k interleaved (the
 * converter permutes them) but qwen2 in halves; the safetensors reader turns
 * Hugging Face llama-family q/k into the interleaved order. */
int rt_rope_is_neox(const mdl_config *cfg);

/* Index of the largest of x[0..n) (first on ties). */
int rt_argmax(const float *x, int64_t n);

/* log(sum exp(x[i])) in double, for i in [0, n). */
double rt_log_sum_exp(const float *x, int64_t n);

#endif
