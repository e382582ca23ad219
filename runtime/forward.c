/*
 * runtime/forward.c — the Llama-family forward pass, top to bottom.
 *
 * What it is for: n tokens at positions pos..pos+n-1 go through embedding lookup,
 * then per layer RMSNorm, q/k/v, RoPE, grouped-query causal attention over the KV
 * cache, o, residual, RMSNorm, SwiGLU, down, residual; then the final RMSNorm and
 * the head. A batch of tokens runs as matrix-matrix products (BLAS for dense
 * weights); attention is two BLAS products per head with a causal softmax in
 * between.
 *
 * Threads: everything that runs on a batch runs on OpenMP's team: the products
 * (a packed layer's own loops, BLAS single-threaded inside them), attention (one
 * work item per head and block of query rows) and, from PARALLEL_ROWS rows on, the
 * element-wise steps (norms, RoPE, SwiGLU, residuals). A single token's
 * element-wise steps stay on the calling thread: a team costs more than a row.
 * With attention and those steps on one thread, a 521-token SmolLM2 prompt kept
 * the second core idle for 44% of its time.
 *
 * RoPE follows llama.cpp: for llama-family GGUF files the q/k rows are already
 * permuted so that pairs (2i, 2i+1) of a head rotate together by
 * pos * theta^(-2i/rope_dim); qwen2 rotates pairs (i, i + rope_dim/2).
 *
 * It must never allocate (everything lives in rt_state), never print, and never
 * touch a weight except through rt_linear's matmul and get_row.
 */
#include <assert.h>
#include <cblas.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>

#include "rt_int.h"

/* glibc's libmvec: expf on four lanes (the x86-64 vector ABI's SSE variant, which
 * every x86-64 CPU runs). */
__m128 _ZGVbN4v_expf(__m128 x);

/* ==== Element-wise steps ==== */

/* Batches of this many rows or more split their element-wise steps over the team. */
#define PARALLEL_ROWS 8

/* out[i] = x[i] / rms(x[i]) * w for each of n rows of dim values (sum in double,
 * as ggml does). */
static void rmsnorm(float *out, const float *x, const float *w, int n, int dim, float eps)
{
#pragma omp parallel for schedule(static) if (n >= PARALLEL_ROWS)
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * dim;
        float *oi = out + (size_t)i * dim;
        double ss = 0;
        for (int j = 0; j < dim; j++) ss += (double)xi[j] * xi[j];
        float r = (float)(1.0 / sqrt(ss / dim + eps));
        for (int j = 0; j < dim; j++) oi[j] = xi[j] * r * w[j];
    }
}

/* Rotates the first rope_dim values of each of n_heads heads in each of n rows
 * (row i is at position pos + i). */
static void rope(const rt_state *s, const mdl_config *c, float *v, int n, int n_heads, int row_len, int pos)
{
    int half = c->rope_dim / 2, hd = c->head_dim;
    int stride = s->rope_neox ? 1 : 2, offset = s->rope_neox ? half : 1;
#pragma omp parallel for schedule(static) if (n >= PARALLEL_ROWS)
    for (int i = 0; i < n; i++) {
        const float *cs = s->rope_cos + (size_t)(pos + i) * half;
        const float *sn = s->rope_sin + (size_t)(pos + i) * half;
        for (int h = 0; h < n_heads; h++) {
            float *x = v + (size_t)i * row_len + (size_t)h * hd;
            for (int j = 0; j < half; j++) {
                float *a = x + j * stride, *b = a + offset;
                float x0 = *a, x1 = *b;
                *a = x0 * cs[j] - x1 * sn[j];
                *b = x0 * sn[j] + x1 * cs[j];
            }
        }
    }
}

static void add_bias(float *y, const float *bias, int n, int rows)
{
    if (!bias) return;
#pragma omp parallel for schedule(static) if (n >= PARALLEL_ROWS)
    for (int i = 0; i < n; i++)
        for (int j = 0; j < rows; j++) y[(size_t)i * rows + j] += bias[j];
}

/* h += delta over n rows of dim values. */
static void add_residual(float *h, const float *delta, int n, int dim)
{
    int64_t len = (int64_t)n * dim;
#pragma omp parallel for schedule(static) if (n >= PARALLEL_ROWS)
    for (int64_t i = 0; i < len; i++) h[i] += delta[i];
}

/* v[i] = exp(v[i]) for i < len, four at a time through glibc's vector expf
 * (libmvec: within 2.93 ulp of exp over all 21 million floats tried in [-87, 88];
 * the scalar expf, in SwiGLU and attention's softmax, was a tenth of a SmolLM2
 * prompt's time). The last few go through the same function padded, so every
 * value gets the same bits wherever it stands. */
static void exp_in_place(float *v, int64_t len)
{
    int64_t i = 0;
    for (; i + 4 <= len; i += 4) _mm_storeu_ps(v + i, _ZGVbN4v_expf(_mm_loadu_ps(v + i)));
    if (i == len) return;
    float t[4] = {0};
    memcpy(t, v + i, (size_t)(len - i) * sizeof *t);
    _mm_storeu_ps(t, _ZGVbN4v_expf(_mm_loadu_ps(t)));
    memcpy(v + i, t, (size_t)(len - i) * sizeof *t);
}

/* gate = silu(gate) * up over n rows of hidden values: g / (1 + exp(-g)) * up,
 * a stretch of SWIGLU_SPAN at a time. */
#define SWIGLU_SPAN 256
static void swiglu(float *gate, const float *up, int n, int hidden)
{
    int64_t len = (int64_t)n * hidden;
#pragma omp parallel for schedule(static) if (n >= PARALLEL_ROWS)
    for (int64_t i0 = 0; i0 < len; i0 += SWIGLU_SPAN) {
        int m = len - i0 < SWIGLU_SPAN ? (int)(len - i0) : SWIGLU_SPAN;
        float e[SWIGLU_SPAN], *g = gate + i0;
        const float *u = up + i0;
        for (int j = 0; j < m; j++) e[j] = -g[j];
        exp_in_place(e, m);
        for (int j = 0; j < m; j++) g[j] = g[j] / (1.0f + e[j]) * u[j];
    }
}

/* Softmax of row[0..valid), zero in row[valid..len). */
static void softmax_prefix(float *row, int valid, int len)
{
    float mx = row[0];
    for (int t = 1; t < valid; t++) mx = row[t] > mx ? row[t] : mx;
    for (int t = 0; t < valid; t++) row[t] -= mx;
    exp_in_place(row, valid);
    float sum = 0;
    for (int t = 0; t < valid; t++) sum += row[t];
    float inv = 1.0f / sum;
    for (int t = 0; t < valid; t++) row[t] *= inv;
    for (int t = valid; t < len; t++) row[t] = 0;
}

static void observe(rt_state *s, int layer, rt_input which, const float *x, int n, int64_t cols)
{
    if (s->observer) s->observer(s->observer_ctx, layer, which, x, n, cols);
}

/* ==== Attention ==== */

/* Query rows i0..i0+nr-1 of head h against the keys they may see (0..pos+i0+nr-1):
 * out = softmax(q K^T * scale, causal) V into s->att, with scores[nr][T] as scratch. */
static void attend(const mdl_config *c, const rt_state *s, int l, int h, int i0, int nr, int pos, float *scores)
{
    int hd = c->head_dim, kv = h / (c->n_heads / c->n_kv_heads), T = pos + i0 + nr;
    const float *k = s->key_cache + rt_cache_offset(s, l, 0) + (size_t)kv * hd;
    const float *v = s->value_cache + rt_cache_offset(s, l, 0) + (size_t)kv * hd;
    const float *q = s->q + (size_t)i0 * s->q_dim + (size_t)h * hd;
    float *out = s->att + (size_t)i0 * s->q_dim + (size_t)h * hd;
    float scale = 1.0f / sqrtf((float)hd);
    if (nr == 1) { /* scores[T] = K q; out = V^T p */
        cblas_sgemv(CblasRowMajor, CblasNoTrans, T, hd, scale, k, s->kv_dim, q, 1, 0.0f, scores, 1);
        softmax_prefix(scores, T, T);
        cblas_sgemv(CblasRowMajor, CblasTrans, T, hd, 1.0f, v, s->kv_dim, scores, 1, 0.0f, out, 1);
        return;
    }
    /* scores[nr][T] = Q K^T * scale; causal softmax; out[nr][hd] = P V */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, T, hd, scale, q, s->q_dim, k, s->kv_dim, 0.0f,
                scores, T);
    for (int i = 0; i < nr; i++) softmax_prefix(scores + (size_t)i * T, pos + i0 + i + 1, T);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, hd, T, 1.0f, scores, T, v, s->kv_dim, 0.0f, out,
                s->q_dim);
}

/* Below this many multiply-adds (n x T x head_dim x n_heads) attention runs on
 * the calling thread: a token's attention over a short context is microseconds. */
#define ATT_TEAM_WORK (1 << 18)

/* s->att[n][Q] from s->q (after RoPE) and layer l's cache, which already holds this
 * batch's keys and values at pos..pos+n-1. Query row i sees keys 0..pos+i. Work
 * items are (head, block of RT_ATT_ROWS query rows), the costliest (last) blocks
 * handed out first; a block sees only the keys its last row sees, so a prompt
 * does about half the products of its full square. Each item's result does not
 * depend on which thread runs it. */
static void attention(const mdl_config *c, rt_state *s, int l, int n, int pos)
{
    int blocks = (n + RT_ATT_ROWS - 1) / RT_ATT_ROWS, items = blocks * c->n_heads;
    int nt = omp_get_max_threads() < s->att_threads ? omp_get_max_threads() : s->att_threads;
    int64_t work = (int64_t)n * (pos + n) * c->head_dim * c->n_heads;
    /* One item's products are small: BLAS's own threads cost more than they give.
     * With them, generation after a 627-token prompt ran at 16.7 tokens/s on
     * SmolLM2 against 66-69 without (2 cores), and the prompt at 201 against 278. */
    int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
#pragma omp parallel for schedule(dynamic) num_threads(nt) if (work >= ATT_TEAM_WORK && items > 1)
    for (int it = 0; it < items; it++) {
        int b = blocks - 1 - it / c->n_heads, h = it % c->n_heads, i0 = b * RT_ATT_ROWS;
        int nr = n - i0 < RT_ATT_ROWS ? n - i0 : RT_ATT_ROWS;
        float *scores = s->scores + (size_t)omp_get_thread_num() * s->att_rows * s->max_ctx;
        attend(c, s, l, h, i0, nr, pos, scores);
    }
    openblas_set_num_threads(blas_threads);
}

/* ==== One transformer block ==== */

/* y[i] = the product of lin[i] with x, for the count layers that read x (q, k, v,
 * or gate, up). Those that rotate it alike as the first rotating one (the same
 * block and seed) take x rotated once, by that one, into s->xr: the same floats as
 * each rotating its own copy, for one rotation instead of up to three. */
static void products_of_one_input(const rt_state *s, rt_linear *const *lin, float *const *y, int count,
                                  const float *x, int n)
{
    const rt_linear *lead = NULL;
    int alike = 0;
    for (int i = 0; i < count; i++) {
        if (lin[i]->rotate_input && !lead) lead = lin[i];
        alike += lead && rt_same_rotation(lin[i], lead);
    }
    int shared = alike > 1 && s->xr;
    if (shared) lead->rotate_input(lead, x, s->xr, n);
    for (int i = 0; i < count; i++) {
        if (shared && rt_same_rotation(lin[i], lead)) lin[i]->matmul_rotated(lin[i], s->xr, y[i], n);
        else lin[i]->matmul(lin[i], x, y[i], n);
    }
}

static void attention_block(const rt_model *m, rt_state *s, int l, float *h, int n, int pos)
{
    const mdl_config *c = &m->cfg;
    const rt_layer *ly = &m->layers[l];
    float *kc = s->key_cache + rt_cache_offset(s, l, pos);
    float *vc = s->value_cache + rt_cache_offset(s, l, pos);
    rmsnorm(s->xb, h, ly->attn_norm, n, c->dim, c->norm_eps);
    observe(s, l, RT_IN_ATTN, s->xb, n, c->dim);
    products_of_one_input(s, &ly->lin[LAY_Q], (float *const[]){s->q, kc, vc}, 3, s->xb, n);
    add_bias(s->q, ly->bias_q, n, s->q_dim);
    add_bias(kc, ly->bias_k, n, s->kv_dim);
    add_bias(vc, ly->bias_v, n, s->kv_dim);
    rope(s, c, s->q, n, c->n_heads, s->q_dim, pos);
    rope(s, c, kc, n, c->n_kv_heads, s->kv_dim, pos);
    attention(c, s, l, n, pos);
    observe(s, l, RT_IN_ATTN_OUT, s->att, n, s->q_dim);
    ly->lin[LAY_O]->matmul(ly->lin[LAY_O], s->att, s->xo, n);
    add_residual(h, s->xo, n, c->dim);
}

static void mlp_block(const rt_model *m, rt_state *s, int l, float *h, int n)
{
    const mdl_config *c = &m->cfg;
    const rt_layer *ly = &m->layers[l];
    rmsnorm(s->xb, h, ly->ffn_norm, n, c->dim, c->norm_eps);
    observe(s, l, RT_IN_MLP, s->xb, n, c->dim);
    products_of_one_input(s, &ly->lin[LAY_GATE], (float *const[]){s->gate, s->up}, 2, s->xb, n);
    swiglu(s->gate, s->up, n, c->hidden_dim);
    observe(s, l, RT_IN_MLP_OUT, s->gate, n, c->hidden_dim);
    ly->lin[LAY_DOWN]->matmul(ly->lin[LAY_DOWN], s->gate, s->xo, n);
    add_residual(h, s->xo, n, c->dim);
}

/* ==== The pass ==== */

void rt_embed(const rt_model *m, const int32_t *tokens, int n, float *h)
{
    for (int i = 0; i < n; i++) {
        assert(tokens[i] >= 0 && tokens[i] < m->cfg.vocab_size);
        m->embed->get_row(m->embed, tokens[i], h + (size_t)i * m->cfg.dim);
    }
}

void rt_forward_layers(const rt_model *m, rt_state *s, float *h, int n, int pos, int l0, int l1)
{
    assert(n >= 1 && n <= s->max_batch && pos >= 0 && pos + n <= s->max_ctx);
    assert(l0 >= 0 && l0 <= l1 && l1 <= m->cfg.n_layers);
    assert(s->cache_layers == m->cfg.n_layers || pos == 0); /* a shared cache holds no history */
    for (int l = l0; l < l1; l++) {
        attention_block(m, s, l, h, n, pos);
        mlp_block(m, s, l, h, n);
    }
}

/* The head's input is observed as layer n_layers. */
void rt_logits(const rt_model *m, rt_state *s, const float *h, int n, float *logits)
{
    assert(n >= 1 && n <= s->max_batch);
    rmsnorm(s->xb, h, m->out_norm, n, m->cfg.dim, m->cfg.norm_eps);
    observe(s, m->cfg.n_layers, RT_IN_HEAD, s->xb, n, m->cfg.dim);
    m->head->matmul(m->head, s->xb, logits, n);
}

int rt_forward(const rt_model *m, rt_state *s, const int32_t *tokens, int n, int pos, float *logits)
{
    assert(n >= 1 && n <= s->max_batch && pos >= 0 && pos + n <= s->max_ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab_size) return -1;
    rt_embed(m, tokens, n, s->x);
    rt_forward_layers(m, s, s->x, n, pos, 0, m->cfg.n_layers);
    if (logits) rt_logits(m, s, s->x, n, logits);
    return 0;
}

/* ==== Small numeric helpers (shared with eval and generate) ==== */

int rt_argmax(const float *x, int64_t n)
{
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return (int)best;
}

double rt_log_sum_exp(const float *x, int64_t n)
{
    float mx = x[0];
    for (int64_t i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += exp((double)x[i] - mx);
    return mx + log(sum);
}
