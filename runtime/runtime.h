/*
 * runtime/ — the Llama-family forward pass (RMSNorm, RoPE, grouped-query attention,
 * SwiGLU, tied or separate head, KV cache), evaluation (perplexity, KL divergence)
 * and generation, over weights that are either dense fp32 (BLAS) or packed.
 *
 * Every linear layer is an rt_linear: the forward pass only calls its matmul, so
 * dense, packed CPU and CUDA weights run through the same forward(). The
 * measurement pass sees each linear layer's input through an observer.
 *
 * Typical use:
 *
 *     rt_model *m; char err[256];
 *     rt_model_load_dense(model_file, &m, err, sizeof err);
 *     rt_state *s = rt_state_new(m, 512, 512);      // max context, max batch
 *     rt_forward(m, s, tokens, n, 0, logits);       // logits[n][vocab]
 *     rt_state_free(s); rt_model_free(m);
 */
#ifndef BITPLAN_RUNTIME_H
#define BITPLAN_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "../model/model.h"

/* ==== Linear layers ==== */

/* Tensor classes. Tensors of one input group see the same input (q/k/v share one,
 * gate/up share one). */
typedef enum {
    RT_Q = 0, RT_K, RT_V, RT_O, RT_GATE, RT_UP, RT_DOWN, RT_HEAD, RT_CLASS_COUNT
} rt_class;

typedef enum { RT_IN_ATTN = 0, /* q, k, v */ RT_IN_ATTN_OUT, /* o */
               RT_IN_MLP, /* gate, up */ RT_IN_MLP_OUT, /* down */ RT_IN_HEAD,
               RT_INPUT_COUNT } rt_input;

const char *rt_class_name(rt_class c);  /* "q", "k", "v", "o", "gate", "up", "down", "head" */
rt_input rt_class_input(rt_class c);
/* GGUF name of layer `layer`'s tensor of class c ("blk.3.attn_q.weight"; the head is
 * "output.weight", or "token_embd.weight" when embeddings are tied). */
void rt_tensor_name(const mdl_config *cfg, int layer, rt_class c, char *out, size_t cap);

typedef struct rt_linear rt_linear;
struct rt_linear {
    int64_t rows, cols;  /* out_features, in_features */
    /* y[n][rows] = x[n][cols] W^T. Must not allocate per call beyond scratch it owns. */
    void (*matmul)(const rt_linear *l, const float *x, float *y, int n);
    /* out[cols] = row r of W (used for embedding lookup through a tied head). */
    void (*get_row)(const rt_linear *l, int64_t r, float *out);
    void (*destroy)(rt_linear *l);   /* frees impl; rt_linear_free then free()s l */
    void *impl;
    /* What other devices need to upload the weights: exactly one is non-NULL. */
    const float *dense;                 /* [rows][cols] for dense fp32 layers */
    const struct lay_packed_s *packed;  /* the packed tensor for packed layers */
};

/* A dense fp32 linear layer over w[rows][cols]; takes ownership of w (free()d). */
rt_linear *rt_linear_dense(float *w, int64_t rows, int64_t cols);
void rt_linear_free(rt_linear *l);

/* ==== Packed linear layers ==== */

/* A linear layer over a packed tensor (pack/layout.h) that decodes the packed blocks
 * inside its products (runtime/qlinear.c), threaded with OpenMP over rows.
 * Products of fewer than RT_PACKED_EXACT_BATCH activation rows (decoding) quantize
 * the activations to int8 per weight group (runtime/qkernels.h), so y differs from
 * W_deq x by that rounding; larger batches (prompts, evaluation) decode slabs of
 * rows to fp32 and multiply them with BLAS, so y is W_deq x up to float rounding.
 * The arrays of p are borrowed and must outlive the layer; scratch for up to
 * max_batch activation rows is allocated here, once. One product at a time per
 * layer. Returns NULL with a message for an invalid option, a bad permutation or no
 * memory:
 *
 *     rt_linear *l = rt_linear_packed(&packed, 512, err, sizeof err);
 *     l->matmul(l, x, y, n);                    // y[n][rows] = x[n][cols] W^T
 */
#define RT_PACKED_EXACT_BATCH 64
#include "../pack/layout.h"
rt_linear *rt_linear_packed(const lay_packed *p, int max_batch, char *err, size_t err_len);

/* ==== Model ==== */

typedef struct {
    float *attn_norm;              /* [dim] */
    rt_linear *lin[RT_HEAD];       /* q [n_heads*head_dim][dim], k,v [n_kv*head_dim][dim],
                                      o [dim][n_heads*head_dim], gate,up [hidden][dim],
                                      down [dim][hidden] */
    float *bias_q, *bias_k, *bias_v; /* [rows] or NULL (Qwen2) */
    float *ffn_norm;               /* [dim] */
} rt_layer;

typedef struct rt_model {
    mdl_config cfg;
    rt_layer *layers;              /* [n_layers] */
    rt_linear *embed;              /* [vocab][dim]: lookup via get_row */
    rt_linear *head;               /* [vocab][dim]; == embed when tied */
    float *out_norm;               /* [dim] */
    tok_tokenizer *tok;            /* borrowed from the model file, may be NULL */
    void *owner;                   /* whatever keeps the weights alive (file, mapping) */
    void (*owner_free)(void *owner);
    int add_bos;                   /* 1: texts start with BOS (tokenizer.ggml.add_bos_token) */
} rt_model;

/* Loads every weight of a model file as dense fp32. Fails with a message for NaN or
 * Inf weights, missing tensors or shapes that disagree with the config. The model
 * keeps `file` open (and closes it in rt_model_free) when own_file is 1. */
int rt_model_load_dense(mdl_model *file, int own_file, rt_model **out, char *err, size_t err_len);
void rt_model_free(rt_model *m);

/* ==== State and forward ==== */

typedef struct rt_state rt_state;

/* Called with the input of each input group, before its linear layers run:
 * x[n][cols]. Used by measure/ to accumulate Hessians. */
typedef void (*rt_observer)(void *ctx, int layer, rt_input which, const float *x, int n, int64_t cols);

rt_state *rt_state_new(const rt_model *m, int max_ctx, int max_batch);
void rt_state_free(rt_state *s);
void rt_state_set_observer(rt_state *s, rt_observer fn, void *ctx);

/* Full forward of n tokens at positions pos..pos+n-1 (the KV cache holds 0..pos-1).
 * logits: [n][vocab], or NULL to skip the head. n <= max_batch, pos + n <= max_ctx. */
int rt_forward(const rt_model *m, rt_state *s, const int32_t *tokens, int n, int pos, float *logits);

/* The pieces of rt_forward, for probes that restart from a cached hidden state:
 * h[n][dim] in and out. Layers l0..l1-1. */
void rt_embed(const rt_model *m, const int32_t *tokens, int n, float *h);
int rt_forward_layers(const rt_model *m, rt_state *s, float *h, int n, int pos, int l0, int l1);
void rt_logits(const rt_model *m, rt_state *s, const float *h, int n, float *logits);

/* ==== Runners: where a forward pass runs ==== */

/* Evaluation and generation drive a runner, so the CPU and a device (runtime/cuda/)
 * share one loop. forward() runs n tokens at positions pos..pos+n-1 (the cache holds
 * 0..pos-1) and writes the logits of batch rows first..first+n_logits-1 into
 * logits[n_logits][vocab] (n_logits 0: no head). 0, or -1 with a message. */
typedef struct rt_runner rt_runner;
struct rt_runner {
    const rt_model *model;   /* configuration and tokenizer */
    int max_ctx, max_batch;
    int (*forward)(rt_runner *r, const int32_t *tokens, int n, int pos, int first, int n_logits,
                   float *logits, char *err, size_t err_len);
    void (*destroy)(rt_runner *r);   /* frees impl; rt_runner_free then free()s r */
    void *impl;
};

/* Opens a runner for m with room for max_ctx positions and batches of max_batch. */
typedef int (*rt_runner_open_fn)(const rt_model *m, int max_ctx, int max_batch, rt_runner **out,
                                 char *err, size_t err_len);
int rt_runner_open_cpu(const rt_model *m, int max_ctx, int max_batch, rt_runner **out, char *err,
                       size_t err_len);
void rt_runner_free(rt_runner *r);

/* ==== Evaluation ==== */

typedef struct {
    rt_runner_open_fn open_runner; /* where the model runs; NULL = CPU (the reference always runs on the CPU) */
    int ctx;                 /* chunk length (default 512) */
    int max_chunks;          /* 0 = all */
    int progress;            /* 1: progress on stderr */
    int32_t bos;             /* token put first in every chunk, -1 = none (default); llama.cpp
                                does this when the model adds BOS (rt_model.add_bos) */
} rt_eval_params;
void rt_eval_params_init(rt_eval_params *p);

typedef struct {
    int64_t tokens_scored;
    double nll_sum;          /* sum of -log p(token) over scored tokens */
    double ppl;              /* exp(nll_sum / tokens_scored) */
    double ppl_stderr;       /* standard error of ppl (delta method) */
    double kld_mean;         /* mean KL(ref || model), nats; 0 without ref */
    double kld_stderr;
    double top1_agree;       /* share of positions where argmax agrees; 0 without ref */
    double ref_ppl;          /* reference perplexity, 0 without ref */
    double seconds;
    double tokens_per_s;     /* tokens processed (not only scored) per second */
} rt_eval_result;

/* Perplexity as llama-perplexity computes it: non-overlapping chunks of ctx tokens,
 * the first token of each replaced by BOS, only the second half of each chunk scored.
 * With ref != NULL also KL divergence and top-1 agreement against ref. */
int rt_eval(const rt_model *m, const rt_model *ref, const int32_t *tokens, int64_t n_tokens,
            const rt_eval_params *p, rt_eval_result *out, char *err, size_t err_len);

/* ==== Generation ==== */

typedef struct {
    rt_runner_open_fn open_runner; /* where the model runs; NULL = CPU */
    int n_predict;           /* tokens to generate */
    float temp;              /* 0 = greedy */
    float top_p;             /* nucleus sampling, 1 = off */
    uint64_t seed;
    int stop_at_eos;
    /* Optional: called with each generated token id (before emit); NULL = none. */
    void (*on_token)(void *ctx, int32_t id);
    void *on_token_ctx;
} rt_gen_params;
void rt_gen_params_init(rt_gen_params *p);

typedef struct { double prompt_tps, gen_tps; int n_prompt, n_gen; } rt_gen_stats;

/* Generates after prompt tokens, calling emit for each new token's text (emit may
 * be NULL; it is called only when the model has a tokenizer, and not for control
 * tokens). Stops after n_predict tokens or, with stop_at_eos, after EOS. */
int rt_generate(const rt_model *m, const int32_t *prompt, int n_prompt, const rt_gen_params *p,
                void (*emit)(void *ctx, const char *piece, size_t len), void *emit_ctx,
                rt_gen_stats *stats, char *err, size_t err_len);

#endif
