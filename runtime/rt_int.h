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
    float *scores;       /* [B][T] attention weights of one head */
    float *gate, *up;    /* [B][H] */
    float *rope_cos, *rope_sin; /* [T][R] */
    int rope_neox;       /* 1: pairs (i, i + rope_dim/2) rotate (qwen2); 0: pairs (2i, 2i+1) */
    rt_observer observer;
    void *observer_ctx;
};

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
