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
 *     rt_model_open(model_file, 1, 0, &m, err, sizeof err);
 *     rt_state *s = rt_state_new(m, 512, 512);      // max context, max batch
 *     rt_forward(m, s, tokens, n, 0, logits);       // logits[n][vocab]
 *     rt_state_free(s); rt_model_free(m);
 */
#ifndef BITPLAN_RUNTIME_H
#define BITPLAN_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "layout/layout.h"
#include "model/model.h"

/* ==== Linear layers ==== */

/* Tensor classes are layout's lay_class (LAY_Q ... LAY_HEAD). Tensors of one input
 * group see the same input (q/k/v share one, gate/up share one). */

typedef enum { RT_IN_ATTN = 0, /* q, k, v */ RT_IN_ATTN_OUT, /* o */
               RT_IN_MLP, /* gate, up */ RT_IN_MLP_OUT, /* down */ RT_IN_HEAD,
               RT_INPUT_COUNT } rt_input;

rt_input rt_class_input(lay_class c);
/* GGUF name of layer `layer`'s tensor of class c ("blk.3.attn_q.weight"; the head is
 * "output.weight", or "token_embd.weight" when embeddings are tied). */
void rt_tensor_name(const mdl_config *cfg, int layer, lay_class c, char *out, size_t cap);

typedef struct rt_linear rt_linear;
struct rt_linear {
    int64_t rows, cols;  /* out_features, in_features */
    /* y[n][rows] = x[n][cols] W^T. Must not allocate per call beyond scratch it owns. */
    void (*matmul)(const rt_linear *l, const float *x, float *y, int n);
    /* out[cols] = row r of W (used for embedding lookup through a tied head). */
    void (*get_row)(const rt_linear *l, int64_t r, float *out);
    void (*destroy)(rt_linear *l);   /* frees impl; rt_linear_free then free()s l */
    void *impl;
    /* What other devices need to upload the weights: at most one is non-NULL; a
     * layer over stored weights has neither until it is held. */
    const float *dense;                 /* [rows][cols] for dense fp32 layers (and held stored ones) */
    const struct lay_packed_s *packed;  /* the packed tensor for packed layers */
    /* For layers over stored weights (NULL otherwise): see rt_linear_hold. */
    int (*hold)(rt_linear *l);
    void (*release)(rt_linear *l);
    /* For layers whose products first rotate x, x' = R^T x (layout.h, "Input
     * rotations"; NULL and 0 otherwise): the rotation's block and seed,
     * rotate_input (xr[n][cols] = x' of each row, the floats matmul makes) and
     * matmul_rotated (matmul given x' instead of x: the same y, bit for bit). Layers
     * that read one input and rotate it alike rotate it once (rt_forward). */
    int rot;
    uint32_t rot_seed;
    void (*rotate_input)(const rt_linear *l, const float *x, float *xr, int n);
    void (*matmul_rotated)(const rt_linear *l, const float *xr, float *y, int n);
};

/* A dense fp32 linear layer over w[rows][cols]; takes ownership of w (free()d). */
rt_linear *rt_linear_dense(float *w, int64_t rows, int64_t cols);
void rt_linear_free(rt_linear *l);

/* ==== Layers over stored weights (runtime/stored.c) ==== */

/* Scratch shared by the layers of one model, which run one product at a time: each
 * layer says what it needs when it is made (rt_scratch_want), the model allocates
 * the largest once (rt_scratch_ready), and products borrow it (rt_scratch_get), so
 * scratch does not grow with the number of layers. */
typedef struct rt_scratch rt_scratch;
rt_scratch *rt_scratch_new(void);
void rt_scratch_free(rt_scratch *s);
void rt_scratch_want(rt_scratch *s, size_t bytes);
int rt_scratch_ready(rt_scratch *s);            /* 0, or -1 if out of memory */
void *rt_scratch_get(const rt_scratch *s, size_t bytes);

/* A linear layer over a 2-D tensor of a model file, in the file's own type, read
 * from the mapping (the file must outlive the layer). Products decode slabs of rows
 * to fp32 in the shared scratch; get_row decodes one row. NULL if out of memory. */
rt_linear *rt_linear_stored(const mdl_model *file, const mdl_tensor *t, rt_scratch *scratch);

/* Holding a layer over stored weights decodes it once to fp32 (l->dense then points
 * at it) and makes its products exactly rt_linear_dense's, until as many releases
 * as holds free it again. Other layers ignore both. 0, or -1 if out of memory. */
int rt_linear_hold(rt_linear *l);
void rt_linear_release(rt_linear *l);

/* ==== Packed linear layers ==== */

/* A linear layer over a packed tensor (layout/layout.h) that decodes the packed blocks
 * inside its products (runtime/qlinear.c), threaded with OpenMP over rows.
 * Products quantize the activations to int8 per weight group (runtime/qkernels.h),
 * so y differs from W_deq x by that rounding, as llama.cpp's products do, except
 * for batches of RT_PACKED_EXACT_BATCH rows or more where the int8 kernels are not
 * the faster way (rt_linear_packed_exact_batch) or the layer is made with
 * RT_PACKED_EXACT (evaluation): those decode slabs of rows to fp32 and multiply
 * them with BLAS, so y is W_deq x up to float rounding.
 * The arrays of p are borrowed and must outlive the layer. Scratch for up to
 * max_batch activation rows comes from `scratch`, shared with the model's other
 * layers (the caller makes it ready once all are made), or, with NULL, is the
 * layer's own. One product at a time per scratch. Returns NULL with a message for
 * an invalid option, a bad permutation or no memory:
 *
 *     rt_linear *l = rt_linear_packed(&packed, 512, 0, NULL, err, sizeof err);
 *     l->matmul(l, x, y, n);                    // y[n][rows] = x[n][cols] W^T
 *
 * Batch 1 may take the lookup-table kernels (runtime/qkernels.h), at the widths
 * where they are faster on this CPU; a layer that does keeps its own copy of those
 * runs' values, reordered for them (the same bytes), and reads p->values only in
 * larger products and get_row.
 */
#define RT_PACKED_EXACT 1         /* flags: batches of RT_PACKED_EXACT_BATCH or more exact */
#define RT_PACKED_EXACT_BATCH 64
rt_linear *rt_linear_packed(const lay_packed *p, int max_batch, int flags, rt_scratch *scratch, char *err,
                            size_t err_len);
/* The smallest batch that a layer over a tensor of cols columns and option o, made
 * now with flags, multiplies exactly: RT_PACKED_EXACT_BATCH, or INT_MAX where every
 * batch takes the int8 kernels (values under 8 bits, in any row with the AVX-512
 * set's tile kernel, else in rows of 1024 columns or more: where bench_matvec
 * --batch finds them faster). */
int rt_linear_packed_exact_batch(const lay_option *o, int64_t cols, int flags);
/* Whether a layer made now over a rows x cols tensor of option o keeps a copy of all
 * its values for the lookup kernels: then the loader need not copy p->values into
 * fast memory (pack/load.c leaves them in the file mapping, where larger products
 * read them). */
int rt_linear_packed_copies_values(const lay_option *o, int64_t cols);

/* ==== Model ==== */

typedef struct {
    float *attn_norm;              /* [dim] */
    rt_linear *lin[LAY_HEAD];       /* q [n_heads*head_dim][dim], k,v [n_kv*head_dim][dim],
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
    rt_scratch *scratch;           /* shared by the linear layers; may be NULL */
    void *owner;                   /* whatever keeps the weights alive (file, mapping) */
    void (*owner_free)(void *owner);
    int add_bos;                   /* 1: texts start with BOS (tokenizer.ggml.add_bos_token) */
} rt_model;

/* Opens a model file as a runnable model whose linear layers and embedding read
 * their weights from the file's mapping in its own type (rt_linear_stored); norms
 * and biases are fp32. Memory is then the mapping plus what is held. With
 * RT_OPEN_RESIDENT every layer is held from the start (fastest where the model fits
 * in memory as fp32). Fails with a message for NaN or Inf weights (every tensor is
 * checked), missing tensors or shapes that disagree with the config, or no memory
 * (for the tokenizer too: a file without one loads without one). The model keeps
 * `file` open (and closes it in rt_model_free) when own_file is 1; otherwise the
 * file must outlive the model. */
#define RT_OPEN_RESIDENT 1
int rt_model_open(mdl_model *file, int own_file, int flags, rt_model **out, char *err, size_t err_len);
void rt_model_free(rt_model *m);

/* Holds (rt_linear_hold) the linear layers of block `layer`, or the head for layer
 * == n_layers, so that they run as dense fp32; release undoes one hold. 0, or -1
 * with a message if out of memory (nothing is left held then). */
int rt_model_hold_layer(rt_model *m, int layer, char *err, size_t err_len);
void rt_model_release_layer(rt_model *m, int layer);

/* ==== State and forward ==== */

typedef struct rt_state rt_state;

/* Called with the input of each input group, before its linear layers run:
 * x[n][cols]. Used by measure/ to accumulate Hessians. */
typedef void (*rt_observer)(void *ctx, int layer, rt_input which, const float *x, int n, int64_t cols);

rt_state *rt_state_new(const rt_model *m, int max_ctx, int max_batch);
/* A state whose KV cache has room for one layer, shared by all: for passes that run
 * whole sequences from position 0 (rt_forward_layers with pos 0 and n tokens),
 * where a layer's keys are not needed once the next layer starts, as in the
 * measurement's layer-by-layer walk. Its memory does not grow with depth. Must not
 * be used for decoding token by token. */
rt_state *rt_state_new_one_cache(const rt_model *m, int max_ctx, int max_batch);
void rt_state_free(rt_state *s);
void rt_state_set_observer(rt_state *s, rt_observer fn, void *ctx);

/* Full forward of n tokens at positions pos..pos+n-1 (the KV cache holds 0..pos-1).
 * logits: [n][vocab], or NULL to skip the head. n <= max_batch, pos + n <= max_ctx.
 * 0, or -1 if a token id is outside the vocabulary (its only failure: nothing is
 * computed). */
int rt_forward(const rt_model *m, rt_state *s, const int32_t *tokens, int n, int pos, float *logits);

/* The pieces of rt_forward, for probes that restart from a cached hidden state:
 * h[n][dim] in and out. Layers l0..l1-1. */
void rt_embed(const rt_model *m, const int32_t *tokens, int n, float *h);
void rt_forward_layers(const rt_model *m, rt_state *s, float *h, int n, int pos, int l0, int l1);
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

typedef struct rt_ref_logits rt_ref_logits;

/* Where an evaluation stands, after each chunk (rt_eval_params.progress). */
typedef struct {
    int64_t chunk, n_chunks;     /* chunks done, of */
    double ppl;                  /* perplexity so far */
    double tokens_per_s;         /* of the model alone */
    double seconds_left;
} rt_eval_progress;

typedef struct {
    rt_runner_open_fn open_runner; /* where the model runs; NULL = CPU (the reference always runs on the CPU) */
    int ctx;                 /* chunk length (default 512) */
    int max_chunks;          /* 0 = all */
    void (*progress)(void *ctx, const rt_eval_progress *p); /* NULL: silent */
    void *progress_ctx;
    int32_t bos;             /* token put first in every chunk, -1 = none (default); llama.cpp
                                does this when the model adds BOS (rt_model.add_bos) */
    /* Saved reference logits (as llama-perplexity's --kl-divergence-base), so that an
     * evaluation never holds two models. At most one of ref, ref_logits, save_logits: */
    rt_ref_logits *ref_logits;   /* the reference's logits, read chunk by chunk from this
                                    file (rt_ref_logits_open) instead of running a model */
    const char *save_logits;     /* write the model's logits at every scored position to
                                    this file (atomically), to serve later as ref_logits */
    const char *save_model_path; /* recorded in the saved file: the model's path, */
    const char *save_model_hash; /* its content hash (hex), */
    const char *save_text_path;  /* and the text's path; each may be NULL */
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
    int64_t logits_bytes;    /* size of the file written (save_logits) or read (ref_logits) */
} rt_eval_result;

/* Perplexity as llama-perplexity computes it: non-overlapping chunks of ctx tokens,
 * the first token of each replaced by BOS, only the second half of each chunk scored.
 * With ref != NULL (or p->ref_logits) also KL divergence and top-1 agreement against
 * the reference, and its perplexity. A reference read from a file gives the same
 * numbers, bit for bit, as running the model that saved it on the CPU. */
int rt_eval(const rt_model *m, const rt_model *ref, const int32_t *tokens, int64_t n_tokens,
            const rt_eval_params *p, rt_eval_result *out, char *err, size_t err_len);

/* ---- Reference logits files (format: runtime/eval.c) ----
 *
 *     rt_eval_params p; rt_eval_params_init(&p);
 *     p.save_logits = "ref.logits";                       // once, with the reference alone
 *     rt_eval(ref_model, NULL, tokens, n, &p, &r, err, sizeof err);
 *
 *     rt_ref_logits *f; rt_ref_logits_open("ref.logits", &f, err, sizeof err);
 *     p.save_logits = NULL; p.ref_logits = f;             // then for every quantized model
 *     rt_eval(model, NULL, tokens, n, &p, &r, err, sizeof err);
 *     rt_ref_logits_close(f);
 *
 * A file holds the exact float32 logits at every scored position: vocab x (ctx - 1 -
 * ctx/2) x chunks x 4 bytes, plus a header and 4 bytes a chunk (max_chunks limits
 * it; SmolLM2's vocabulary of 49152 at ctx 512 takes 50 MB a chunk). It is written
 * and read one chunk at a time, so no more than a chunk's logits are in memory. */
typedef struct {
    int32_t vocab, ctx;
    int32_t first, n_score;      /* scored positions of a chunk: first .. first + n_score - 1 */
    int32_t bos;                 /* BOS put first in every chunk, -1 none */
    int32_t device;              /* what ran the saving model: 0 CPU, 1 another runner */
    int64_t chunks, n_tokens;    /* chunks saved; tokens of the whole text */
    uint8_t tokens_sha256[32];   /* of the text's n_tokens ids as int32 little-endian */
    char model_hash[65];         /* the saving model's content hash, "" if not given */
    char *model_path, *text_path; /* as given when saving ("" if not given) */
    int64_t file_bytes;
} rt_ref_info;

/* Opens a file written by rt_eval with save_logits: checks its header (magic,
 * version, checksum, sizes) and that its length is exactly what the header says.
 * 0, or -1 with a one-line message ("FILE: truncated: ...") in err. */
int rt_ref_logits_open(const char *path, rt_ref_logits **out, char *err, size_t err_len);
const rt_ref_info *rt_ref_logits_info(const rt_ref_logits *f);
void rt_ref_logits_close(rt_ref_logits *f);

/* 0 if f was saved for this evaluation of m (the same tokens, ctx, chunks, BOS and
 * vocabulary); otherwise -1 with one line naming every field that differs, e.g.
 * "FILE was saved for another evaluation: ctx 64 there, 128 here". rt_eval checks
 * this too; callers may check early. */
int rt_ref_logits_match(const rt_ref_logits *f, const rt_model *m, const int32_t *tokens, int64_t n_tokens,
                        const rt_eval_params *p, char *err, size_t err_len);

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
