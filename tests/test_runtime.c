/*
 * tests/test_runtime.c — the forward pass, KV cache, evaluation and generation on
 * small random models built here.
 *
 *   - KV cache: one batch == token by token == two pieces (logits and cache);
 *   - loading: a GGUF written here (F32) loads to the same logits as the model
 *     built directly from the same weights; NaN, Inf, a wrong shape or a missing
 *     tensor fail with a message naming the tensor;
 *   - eval: perplexity, KL divergence and top-1 agreement equal a direct
 *     computation from rt_forward logits done here, following llama-perplexity;
 *     a reference's logits saved to a file give exactly the reference's numbers;
 *   - generation: temp 0 is deterministic and is the argmax of rt_forward; a seed
 *     repeats; a tiny top-p keeps only the most likely token;
 *   - the observer sees every input group once per layer with the right widths.
 *
 * What it must never do: depend on files outside the temporary directory.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <omp.h>

#include "model/model.h"
#include "runtime/runtime.h"

/* ==== A tiny model's weights ==== */

#define TW_MAX 64

typedef struct {
    char name[64];
    int64_t rows, cols; /* cols == 0: a vector */
    float *data;
} tw_tensor;

typedef struct {
    mdl_config cfg;
    int n;
    tw_tensor t[TW_MAX];
} tiny_weights;

static uint64_t rng_state;

static double rnd_normal(void)
{
    double u[2];
    for (int i = 0; i < 2; i++) {
        rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
        u[i] = ((double)(rng_state >> 11) + 0.5) * 0x1.0p-53;
    }
    return sqrt(-2 * log(u[0])) * cos(6.283185307179586 * u[1]);
}

static void tw_add(tiny_weights *w, const char *name, int64_t rows, int64_t cols, double scale, double offset)
{
    assert_true(w->n < TW_MAX);
    tw_tensor *t = &w->t[w->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->rows = rows;
    t->cols = cols;
    int64_t n = rows * (cols ? cols : 1);
    t->data = malloc((size_t)n * sizeof *t->data);
    assert_non_null(t->data);
    for (int64_t i = 0; i < n; i++) t->data[i] = (float)(offset + scale * rnd_normal());
}

static const tw_tensor *tw_find(const tiny_weights *w, const char *name)
{
    for (int i = 0; i < w->n; i++)
        if (!strcmp(w->t[i].name, name)) return &w->t[i];
    fail_msg("no tensor %s", name);
    return NULL;
}

static void tiny_make(tiny_weights *w, uint64_t seed, int tied)
{
    memset(w, 0, sizeof *w);
    rng_state = seed * 0x9E3779B97F4A7C15ull + 1;
    mdl_config *c = &w->cfg;
    snprintf(c->arch, sizeof c->arch, "llama");
    c->n_layers = 2; c->dim = 32; c->hidden_dim = 64; c->n_heads = 4; c->n_kv_heads = 2; c->head_dim = 8;
    c->vocab_size = 48; c->max_ctx = 128; c->rope_theta = 10000; c->rope_dim = 8; c->rope_scale = 1;
    c->norm_eps = 1e-5f; c->tied_embeddings = tied;
    int q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
    char name[64];
    tw_add(w, "token_embd.weight", c->vocab_size, c->dim, 1.0, 0);
    for (int l = 0; l < c->n_layers; l++) {
        const struct { const char *n; int64_t r, c; } lin[] = {
            {"attn_q", q, c->dim}, {"attn_k", kv, c->dim}, {"attn_v", kv, c->dim}, {"attn_output", c->dim, q},
            {"ffn_gate", c->hidden_dim, c->dim}, {"ffn_up", c->hidden_dim, c->dim}, {"ffn_down", c->dim, c->hidden_dim}};
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
        tw_add(w, name, c->dim, 0, 0.1, 1);
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
        tw_add(w, name, c->dim, 0, 0.1, 1);
        for (int k = 0; k < 7; k++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, lin[k].n);
            tw_add(w, name, lin[k].r, lin[k].c, 1.0 / sqrt((double)lin[k].c), 0);
        }
    }
    tw_add(w, "output_norm.weight", c->dim, 0, 0.1, 1);
    if (!tied) tw_add(w, "output.weight", c->vocab_size, c->dim, 1.0, 0);
}

static void tiny_free(tiny_weights *w)
{
    for (int i = 0; i < w->n; i++) free(w->t[i].data);
}

static float *tw_copy(const tiny_weights *w, const char *name)
{
    const tw_tensor *t = tw_find(w, name);
    size_t n = (size_t)(t->rows * (t->cols ? t->cols : 1));
    float *p = malloc(n * sizeof *p);
    assert_non_null(p);
    memcpy(p, t->data, n * sizeof *p);
    return p;
}

static rt_linear *tw_linear(const tiny_weights *w, const char *name)
{
    const tw_tensor *t = tw_find(w, name);
    return rt_linear_dense(tw_copy(w, name), t->rows, t->cols);
}

/* The rt_model built directly from the weights, without model/. */
static rt_model *tiny_model_direct(const tiny_weights *w)
{
    static const char *const lin_names[LAY_HEAD] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",
                                                   "ffn_up", "ffn_down"};
    rt_model *m = calloc(1, sizeof *m);
    assert_non_null(m);
    m->cfg = w->cfg;
    m->layers = calloc((size_t)w->cfg.n_layers, sizeof *m->layers);
    char name[64];
    for (int l = 0; l < w->cfg.n_layers; l++) {
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
        m->layers[l].attn_norm = tw_copy(w, name);
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
        m->layers[l].ffn_norm = tw_copy(w, name);
        for (int k = 0; k < LAY_HEAD; k++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, lin_names[k]);
            m->layers[l].lin[k] = tw_linear(w, name);
        }
    }
    m->embed = tw_linear(w, "token_embd.weight");
    m->head = w->cfg.tied_embeddings ? m->embed : tw_linear(w, "output.weight");
    m->out_norm = tw_copy(w, "output_norm.weight");
    return m;
}

/* ==== A minimal GGUF v3 writer (F32 tensors, llama keys) ==== */

static void put_u32(FILE *f, uint32_t v) { fwrite(&v, 4, 1, f); }
static void put_u64(FILE *f, uint64_t v) { fwrite(&v, 8, 1, f); }
static void put_str(FILE *f, const char *s) { put_u64(f, strlen(s)); fwrite(s, 1, strlen(s), f); }
static void kv_u32(FILE *f, const char *k, uint32_t v) { put_str(f, k); put_u32(f, 4); put_u32(f, v); }
static void kv_f32(FILE *f, const char *k, float v) { put_str(f, k); put_u32(f, 6); fwrite(&v, 4, 1, f); }

static void pad_to(FILE *f, long align)
{
    while (ftell(f) % align) fputc(0, f);
}

static void gguf_write(const tiny_weights *w, const char *path)
{
    const mdl_config *c = &w->cfg;
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite("GGUF", 1, 4, f);
    put_u32(f, 3);
    put_u64(f, (uint64_t)w->n);
    put_u64(f, 11);
    put_str(f, "general.architecture"); put_u32(f, 8); put_str(f, "llama");
    kv_u32(f, "llama.block_count", (uint32_t)c->n_layers);
    kv_u32(f, "llama.context_length", (uint32_t)c->max_ctx);
    kv_u32(f, "llama.embedding_length", (uint32_t)c->dim);
    kv_u32(f, "llama.feed_forward_length", (uint32_t)c->hidden_dim);
    kv_u32(f, "llama.attention.head_count", (uint32_t)c->n_heads);
    kv_u32(f, "llama.attention.head_count_kv", (uint32_t)c->n_kv_heads);
    kv_f32(f, "llama.rope.freq_base", c->rope_theta);
    kv_f32(f, "llama.attention.layer_norm_rms_epsilon", c->norm_eps);
    kv_u32(f, "llama.rope.dimension_count", (uint32_t)c->rope_dim);
    kv_u32(f, "llama.vocab_size", (uint32_t)c->vocab_size);
    uint64_t off = 0;
    for (int i = 0; i < w->n; i++) {
        const tw_tensor *t = &w->t[i];
        put_str(f, t->name);
        put_u32(f, t->cols ? 2 : 1);
        if (t->cols) { put_u64(f, (uint64_t)t->cols); put_u64(f, (uint64_t)t->rows); }
        else put_u64(f, (uint64_t)t->rows);
        put_u32(f, 0); /* F32 */
        put_u64(f, off);
        off += ((uint64_t)(t->rows * (t->cols ? t->cols : 1)) * 4 + 31) / 32 * 32;
    }
    pad_to(f, 32);
    for (int i = 0; i < w->n; i++) {
        const tw_tensor *t = &w->t[i];
        fwrite(t->data, 4, (size_t)(t->rows * (t->cols ? t->cols : 1)), f);
        pad_to(f, 32);
    }
    assert_int_equal(fclose(f), 0);
}

static char tmp_dir[] = "/tmp/bitplan-test-runtime-XXXXXX";

static int setup_dir(void **state)
{
    (void)state;
    return mkdtemp(tmp_dir) ? 0 : -1;
}

static int remove_dir(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ==== Helpers ==== */

static float *forward_all(const rt_model *m, rt_state *s, const int32_t *tok, int n, int pos)
{
    float *logits = malloc((size_t)n * m->cfg.vocab_size * sizeof *logits);
    assert_non_null(logits);
    assert_int_equal(rt_forward(m, s, tok, n, pos, logits), 0);
    return logits;
}

static double max_rel_diff(const float *a, const float *b, int64_t n)
{
    double d = 0, mx = 0;
    for (int64_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        mx = fmax(mx, fabs((double)b[i]));
    }
    return d / mx;
}

static void random_tokens(int32_t *tok, int n, int vocab, uint64_t seed)
{
    rng_state = seed;
    for (int i = 0; i < n; i++) tok[i] = (int32_t)((unsigned)(fabs(rnd_normal()) * 1e6) % (unsigned)vocab);
}

/* ==== KV cache ==== */

static void test_kv_cache_consistency(void **state)
{
    (void)state;
    tiny_weights w;
    tiny_make(&w, 1, 1);
    rt_model *m = tiny_model_direct(&w);
    /* N spans several blocks of query rows (RT_ATT_ROWS) with a short last one, and
     * is large enough (N * N * heads * head_dim >= 2^18) for attention's team. */
    enum { N = 100, SPLIT = 7 };
    int V = m->cfg.vocab_size;
    int32_t tok[N];
    random_tokens(tok, N, V, 5);
    rt_state *s = rt_state_new(m, 128, N);
    float *batch = forward_all(m, s, tok, N, 0);
    /* the same bits on two threads as on three: attention's items are independent,
     * and products cut the rows by their shape (one thread: one BLAS call) */
    int threads = omp_get_max_threads();
    omp_set_num_threads(2);
    float *two = forward_all(m, s, tok, N, 0);
    omp_set_num_threads(3);
    float *three = forward_all(m, s, tok, N, 0);
    omp_set_num_threads(threads);
    assert_memory_equal(two, three, (size_t)N * V * sizeof *two);
    free(two); free(three);
    /* token by token */
    float *step = malloc((size_t)N * V * sizeof *step);
    rt_state *s1 = rt_state_new(m, 128, 1);
    for (int i = 0; i < N; i++) assert_int_equal(rt_forward(m, s1, tok + i, 1, i, step + (size_t)i * V), 0);
    /* two pieces, reusing the first state (its cache is overwritten from 0) */
    float *a = forward_all(m, s, tok, SPLIT, 0), *b = forward_all(m, s, tok + SPLIT, N - SPLIT, SPLIT);
    double e1 = max_rel_diff(step, batch, (int64_t)N * V);
    double e2 = max_rel_diff(a, batch, (int64_t)SPLIT * V);
    double e3 = max_rel_diff(b, batch + (size_t)SPLIT * V, (int64_t)(N - SPLIT) * V);
    assert_true(e1 < 1e-5);
    assert_true(e2 < 1e-5);
    assert_true(e3 < 1e-5);
    /* A different prefix changes later logits: the cache is really used. */
    int32_t tok2[N];
    memcpy(tok2, tok, sizeof tok);
    tok2[0] = (tok[0] + 1) % V;
    float *c = forward_all(m, s, tok2, N, 0);
    assert_true(max_rel_diff(c + (size_t)(N - 1) * V, batch + (size_t)(N - 1) * V, V) > 1e-4);
    free(batch); free(step); free(a); free(b); free(c);
    rt_state_free(s); rt_state_free(s1);
    rt_model_free(m);
    tiny_free(&w);
}

/* ==== Loading ==== */

static int load_file(const char *path, rt_model **m, char *err, size_t err_len)
{
    mdl_model *f;
    if (mdl_open(path, &f, err, err_len)) return -1;
    if (rt_model_open(f, 1, 0, m, err, err_len)) { mdl_close(f); return -1; }
    return 0;
}

static void test_gguf_load_matches_direct(void **state)
{
    (void)state;
    for (int tied = 0; tied < 2; tied++) {
        tiny_weights w;
        tiny_make(&w, 2 + (uint64_t)tied, tied);
        char path[256], err[512] = "";
        snprintf(path, sizeof path, "%s/ok%d.gguf", tmp_dir, tied);
        gguf_write(&w, path);
        rt_model *direct = tiny_model_direct(&w), *loaded = NULL;
        if (load_file(path, &loaded, err, sizeof err)) fail_msg("load: %s", err);
        assert_int_equal(loaded->cfg.tied_embeddings, tied);
        assert_true(tied ? loaded->head == loaded->embed : loaded->head != loaded->embed);
        enum { N = 9 };
        int32_t tok[N];
        random_tokens(tok, N, w.cfg.vocab_size, 7);
        rt_state *s1 = rt_state_new(direct, 16, 16), *s2 = rt_state_new(loaded, 16, 16);
        float *a = forward_all(direct, s1, tok, N, 0), *b = forward_all(loaded, s2, tok, N, 0);
        assert_memory_equal(a, b, (size_t)N * w.cfg.vocab_size * sizeof *a);
        free(a); free(b);
        rt_state_free(s1); rt_state_free(s2);
        rt_model_free(direct); rt_model_free(loaded);
        tiny_free(&w);
    }
}

/* Writes a model with one weight spoiled by `spoil` and expects the load to fail
 * with a message that contains want1 and want2. */
static void expect_load_error(const char *tag, void (*spoil)(tiny_weights *), const char *want1, const char *want2)
{
    tiny_weights w;
    tiny_make(&w, 4, 1);
    spoil(&w);
    char path[256], err[512] = "";
    snprintf(path, sizeof path, "%s/%s.gguf", tmp_dir, tag);
    gguf_write(&w, path);
    rt_model *m = NULL;
    int rc = load_file(path, &m, err, sizeof err);
    if (rc == 0) fail_msg("%s: loaded a bad model", tag);
    assert_null(m);
    if (!strstr(err, want1) || !strstr(err, want2)) fail_msg("%s: message '%s' lacks '%s' / '%s'", tag, err, want1, want2);
    tiny_free(&w);
}

static tw_tensor *tw_mut(tiny_weights *w, const char *name) { return (tw_tensor *)tw_find(w, name); }
static void spoil_nan(tiny_weights *w) { tw_mut(w, "blk.1.ffn_up.weight")->data[70] = NAN; }
static void spoil_inf(tiny_weights *w) { tw_mut(w, "blk.0.attn_norm.weight")->data[3] = INFINITY; }
static void spoil_shape(tiny_weights *w) { tw_mut(w, "blk.0.attn_k.weight")->rows = 8; }
static void spoil_missing(tiny_weights *w) { snprintf(tw_mut(w, "blk.1.ffn_down.weight")->name, 64, "blk.1.ffn_dn.weight"); }

static void test_bad_weights(void **state)
{
    (void)state;
    expect_load_error("nan", spoil_nan, "blk.1.ffn_up.weight", "NaN");
    expect_load_error("inf", spoil_inf, "blk.0.attn_norm.weight", "Inf");
    expect_load_error("shape", spoil_shape, "blk.0.attn_k.weight", "shape");
    expect_load_error("missing", spoil_missing, "blk.1.ffn_down.weight", "missing");
}

static void test_bad_tokens(void **state)
{
    (void)state;
    tiny_weights w;
    tiny_make(&w, 5, 1);
    rt_model *m = tiny_model_direct(&w);
    rt_state *s = rt_state_new(m, 8, 8);
    int32_t bad[2] = {1, m->cfg.vocab_size}, neg[1] = {-1};
    float logits[2 * 48];
    assert_int_not_equal(rt_forward(m, s, bad, 2, 0, logits), 0);
    assert_int_not_equal(rt_forward(m, s, neg, 1, 0, logits), 0);
    /* eval: too few tokens, and a token outside the vocabulary */
    int32_t tok[40];
    random_tokens(tok, 40, m->cfg.vocab_size, 3);
    rt_eval_params p;
    rt_eval_params_init(&p);
    p.ctx = 16;
    rt_eval_result r;
    char err[256] = "";
    assert_int_not_equal(rt_eval(m, NULL, tok, 31, &p, &r, err, sizeof err), 0);
    assert_non_null(strstr(err, "31 tokens"));
    tok[33] = 1000;
    assert_int_not_equal(rt_eval(m, NULL, tok, 40, &p, &r, err, sizeof err), 0);
    assert_non_null(strstr(err, "1000"));
    rt_state_free(s);
    rt_model_free(m);
    tiny_free(&w);
}

/* ==== Evaluation ==== */

static double log_softmax_at(const float *x, int n, int k)
{
    double mx = x[0], sum = 0;
    for (int i = 1; i < n; i++) mx = fmax(mx, x[i]);
    for (int i = 0; i < n; i++) sum += exp(x[i] - mx);
    return x[k] - mx - log(sum);
}

typedef struct { double ppl, ref_ppl, kld, top1; int64_t count; } direct_eval;

/* llama-perplexity by hand from full rt_forward logits of each chunk. */
static direct_eval eval_direct(const rt_model *m, const rt_model *ref, const int32_t *tokens, int64_t n_tokens,
                               int ctx, int max_chunks, int bos)
{
    int V = m->cfg.vocab_size, first = ctx / 2;
    int64_t n_chunk = n_tokens / ctx;
    if (max_chunks > 0 && max_chunks < n_chunk) n_chunk = max_chunks;
    rt_state *s = rt_state_new(m, ctx, ctx), *rs = ref ? rt_state_new(ref, ctx, ctx) : NULL;
    int32_t *chunk = malloc((size_t)ctx * sizeof *chunk);
    double nll = 0, rnll = 0, kld = 0, same = 0;
    int64_t count = 0;
    for (int64_t c = 0; c < n_chunk; c++) {
        memcpy(chunk, tokens + c * ctx, (size_t)ctx * sizeof *chunk);
        if (bos >= 0) chunk[0] = bos;
        float *lg = forward_all(m, s, chunk, ctx, 0), *rl = ref ? forward_all(ref, rs, chunk, ctx, 0) : NULL;
        for (int j = first; j <= ctx - 2; j++, count++) {
            const float *x = lg + (size_t)j * V;
            nll -= log_softmax_at(x, V, chunk[j + 1]);
            if (!ref) continue;
            const float *y = rl + (size_t)j * V;
            rnll -= log_softmax_at(y, V, chunk[j + 1]);
            int ax = 0, ay = 0;
            for (int v = 0; v < V; v++) {
                double lp = log_softmax_at(y, V, v);
                kld += exp(lp) * (lp - log_softmax_at(x, V, v));
                if (x[v] > x[ax]) ax = v;
                if (y[v] > y[ay]) ay = v;
            }
            same += ax == ay;
        }
        free(lg); free(rl);
    }
    free(chunk);
    rt_state_free(s); rt_state_free(rs);
    return (direct_eval){exp(nll / count), exp(rnll / count), kld / count, same / count, count};
}

static void test_eval_matches_direct(void **state)
{
    (void)state;
    tiny_weights w, w2;
    tiny_make(&w, 6, 1);
    tiny_make(&w2, 6, 1);
    for (int i = 0; i < w2.n; i++) /* the "quantized" model: the same weights, perturbed */
        for (int64_t k = 0; k < w2.t[i].rows * (w2.t[i].cols ? w2.t[i].cols : 1); k++)
            w2.t[i].data[k] *= (float)(1 + 0.05 * rnd_normal());
    rt_model *ref = tiny_model_direct(&w), *m = tiny_model_direct(&w2);
    enum { N = 75, CTX = 16 };
    int32_t tok[N];
    random_tokens(tok, N, m->cfg.vocab_size, 11);
    for (int bos = -1; bos <= 1; bos += 2) {
        rt_eval_params p;
        rt_eval_params_init(&p);
        p.ctx = CTX;
        p.bos = bos;
        rt_eval_result r;
        char err[256];
        assert_int_equal(rt_eval(m, ref, tok, N, &p, &r, err, sizeof err), 0);
        direct_eval d = eval_direct(m, ref, tok, N, CTX, 0, bos);
        assert_int_equal(r.tokens_scored, 4 * (CTX - 1 - CTX / 2));
        assert_int_equal(r.tokens_scored, d.count);
        /* Mean NLLs in nats. Evaluation computes the scored rows' logits only, the
         * direct pass all rows: BLAS may sum products of other shapes in another
         * order, and this random model's NLL is about 25 nats a token. */
        assert_true(fabs(log(r.ppl / d.ppl)) < 1e-5);
        assert_true(fabs(log(r.ref_ppl / d.ref_ppl)) < 1e-5);
        assert_true(fabs(r.kld_mean / d.kld - 1) < 1e-5);
        assert_true(fabs(r.top1_agree - d.top1) < 1e-12);
        assert_true(r.kld_mean > 0 && r.kld_stderr > 0 && r.ppl_stderr > 0);
        assert_true(fabs(log(r.ppl) - r.nll_sum / (double)r.tokens_scored) < 1e-12);
        /* max_chunks */
        p.max_chunks = 2;
        assert_int_equal(rt_eval(m, NULL, tok, N, &p, &r, err, sizeof err), 0);
        d = eval_direct(m, NULL, tok, N, CTX, 2, bos);
        assert_int_equal(r.tokens_scored, 2 * (CTX - 1 - CTX / 2));
        assert_true(fabs(log(r.ppl / d.ppl)) < 1e-5);
        assert_true(r.kld_mean == 0 && r.top1_agree == 0);
    }
    /* against itself: KL 0, full agreement, the same perplexity */
    rt_eval_params p;
    rt_eval_params_init(&p);
    p.ctx = CTX;
    rt_eval_result r;
    char err[256];
    assert_int_equal(rt_eval(m, m, tok, N, &p, &r, err, sizeof err), 0);
    assert_true(fabs(r.kld_mean) < 1e-9);
    assert_true(r.top1_agree == 1.0);
    assert_true(r.ref_ppl == r.ppl);
    rt_model_free(m); rt_model_free(ref);
    tiny_free(&w); tiny_free(&w2);
}

/* Saved reference logits (rt_eval with save_logits, then ref_logits): the same
 * result as the reference model, field for field; a file for another evaluation
 * or a truncated one is refused; no temporary file is left behind. */
static void test_eval_saved_logits(void **state)
{
    (void)state;
    tiny_weights w, w2;
    tiny_make(&w, 8, 1);
    tiny_make(&w2, 8, 1);
    for (int i = 0; i < w2.n; i++)
        for (int64_t k = 0; k < w2.t[i].rows * (w2.t[i].cols ? w2.t[i].cols : 1); k++)
            w2.t[i].data[k] *= (float)(1 + 0.05 * rnd_normal());
    rt_model *ref = tiny_model_direct(&w), *m = tiny_model_direct(&w2);
    enum { N = 75, CTX = 16 };
    int32_t tok[N];
    random_tokens(tok, N, m->cfg.vocab_size, 12);
    char path[256], err[512];
    snprintf(path, sizeof path, "%s/ref.logits", tmp_dir);
    rt_eval_params p;
    rt_eval_params_init(&p);
    p.ctx = CTX;
    p.bos = 1;
    rt_eval_result want, saved, got;
    assert_int_equal(rt_eval(m, ref, tok, N, &p, &want, err, sizeof err), 0);
    p.save_logits = path;
    p.save_model_path = "ref.gguf";
    assert_int_equal(rt_eval(ref, NULL, tok, N, &p, &saved, err, sizeof err), 0);
    int64_t rec = 4 * (int64_t)(CTX - 1 - CTX / 2) * m->cfg.vocab_size + 4;
    assert_int_equal(saved.logits_bytes, 164 + 8 + 4 * rec);  /* 4 chunks, path "ref.gguf" */
    assert_true(saved.ppl == want.ref_ppl);
    /* saving with a reference model is refused */
    assert_int_not_equal(rt_eval(m, ref, tok, N, &p, &got, err, sizeof err), 0);

    rt_ref_logits *f;
    assert_int_equal(rt_ref_logits_open(path, &f, err, sizeof err), 0);
    const rt_ref_info *in = rt_ref_logits_info(f);
    assert_int_equal(in->chunks, 4);
    assert_int_equal(in->bos, 1);
    assert_string_equal(in->model_path, "ref.gguf");
    assert_string_equal(in->text_path, "");
    assert_int_equal(in->model_hash[0], 0);
    p.save_logits = NULL;
    p.ref_logits = f;
    assert_int_equal(rt_eval(m, NULL, tok, N, &p, &got, err, sizeof err), 0);
    assert_true(got.ppl == want.ppl && got.ppl_stderr == want.ppl_stderr && got.ref_ppl == want.ref_ppl);
    assert_true(got.kld_mean == want.kld_mean && got.kld_stderr == want.kld_stderr);
    assert_true(got.top1_agree == want.top1_agree && got.tokens_scored == want.tokens_scored);
    assert_true(got.kld_mean > 0);
    /* another evaluation: every difference named */
    p.ctx = 12;
    p.bos = -1;
    assert_int_not_equal(rt_eval(m, NULL, tok, N, &p, &got, err, sizeof err), 0);
    assert_non_null(strstr(err, "ctx 16 there, 12 here"));
    assert_non_null(strstr(err, "BOS 1 there, none here"));
    assert_non_null(strstr(err, "4 chunks there, 6 here"));
    p.ctx = CTX;
    p.bos = 1;
    tok[3] ^= 1;
    assert_int_not_equal(rt_ref_logits_match(f, m, tok, N, &p, err, sizeof err), 0);
    assert_non_null(strstr(err, "another text"));
    tok[3] ^= 1;
    assert_int_equal(rt_ref_logits_match(f, m, tok, N, &p, err, sizeof err), 0);
    rt_ref_logits_close(f);

    /* truncated by one byte */
    assert_int_equal(truncate(path, saved.logits_bytes - 1), 0);
    assert_int_not_equal(rt_ref_logits_open(path, &f, err, sizeof err), 0);
    assert_non_null(strstr(err, "truncated"));
    /* nothing but the file itself in the folder */
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    assert_int_not_equal(access(tmp, F_OK), 0);
    unlink(path);
    rt_model_free(m); rt_model_free(ref);
    tiny_free(&w); tiny_free(&w2);
}

/* ==== Generation ==== */

typedef struct { int n; int32_t id[64]; } id_list;

static void collect(void *ctx, int32_t id)
{
    id_list *l = ctx;
    if (l->n < 64) l->id[l->n++] = id;
}

static id_list generate(const rt_model *m, const int32_t *prompt, int n_prompt, float temp, float top_p,
                        uint64_t seed, int n)
{
    rt_gen_params p;
    rt_gen_params_init(&p);
    p.n_predict = n;
    p.temp = temp;
    p.top_p = top_p;
    p.seed = seed;
    id_list l = {0};
    p.on_token = collect;
    p.on_token_ctx = &l;
    rt_gen_stats st;
    char err[256];
    assert_int_equal(rt_generate(m, prompt, n_prompt, &p, NULL, NULL, &st, err, sizeof err), 0);
    assert_int_equal(st.n_gen, n);
    assert_int_equal(st.n_prompt, n_prompt);
    return l;
}

static void test_generate_greedy_is_argmax(void **state)
{
    (void)state;
    tiny_weights w;
    tiny_make(&w, 7, 0);
    rt_model *m = tiny_model_direct(&w);
    int V = m->cfg.vocab_size;
    int32_t prompt[5] = {3, 14, 15, 9, 2};
    enum { N = 12 };
    id_list a = generate(m, prompt, 5, 0, 1, 1, N), b = generate(m, prompt, 5, 0, 0.9f, 99, N);
    assert_memory_equal(a.id, b.id, sizeof a.id);
    /* by hand: argmax of the full-sequence forward, one token at a time */
    int32_t seq[5 + N];
    memcpy(seq, prompt, sizeof prompt);
    for (int i = 0; i < N; i++) {
        rt_state *s = rt_state_new(m, 5 + N, 5 + N);
        float *lg = forward_all(m, s, seq, 5 + i, 0);
        const float *last = lg + (size_t)(4 + i) * V;
        int best = 0;
        for (int v = 1; v < V; v++) if (last[v] > last[best]) best = v;
        assert_int_equal(a.id[i], best);
        seq[5 + i] = best;
        free(lg);
        rt_state_free(s);
    }
    /* sampling: a seed repeats; a tiny nucleus is the argmax */
    id_list s1 = generate(m, prompt, 5, 1.0f, 0.95f, 1234, N), s2 = generate(m, prompt, 5, 1.0f, 0.95f, 1234, N);
    assert_memory_equal(s1.id, s2.id, sizeof s1.id);
    id_list t = generate(m, prompt, 5, 1.5f, 1e-6f, 77, N);
    assert_memory_equal(t.id, a.id, sizeof t.id);
    rt_model_free(m);
    tiny_free(&w);
}

static void test_sampling_follows_the_distribution(void **state)
{
    (void)state;
    /* The first sampled token over many seeds: its frequencies follow softmax(logits / temp). */
    tiny_weights w;
    tiny_make(&w, 8, 1);
    rt_model *m = tiny_model_direct(&w);
    int V = m->cfg.vocab_size;
    int32_t prompt[3] = {5, 6, 7};
    rt_state *s = rt_state_new(m, 3, 3);
    float *lg = forward_all(m, s, prompt, 3, 0);
    double lse = 0, mx = -1e30;
    const float *last = lg + 2 * (size_t)V;
    const double temp = 4;
    for (int v = 0; v < V; v++) mx = fmax(mx, last[v] / temp);
    for (int v = 0; v < V; v++) lse += exp(last[v] / temp - mx);
    enum { DRAWS = 2000 };
    int count[64] = {0};
    for (int k = 0; k < DRAWS; k++) count[generate(m, prompt, 3, (float)temp, 1.0f, (uint64_t)k, 1).id[0]]++;
    /* Pearson's chi-square, tokens expected fewer than 5 times pooled into one bin */
    double chi2 = 0, pool_e = 0, pool_o = 0;
    int bins = 0;
    for (int v = 0; v < V; v++) {
        double e = DRAWS * exp(last[v] / temp - mx) / lse;
        if (e < 5) { pool_e += e; pool_o += count[v]; continue; }
        chi2 += (count[v] - e) * (count[v] - e) / e;
        bins++;
    }
    if (pool_e > 0) { chi2 += (pool_o - pool_e) * (pool_o - pool_e) / pool_e; bins++; }
    /* bins - 1 degrees of freedom (at most 47); a bound above the 0.9999 quantile */
    assert_true(bins >= 3);
    assert_true(chi2 < 2.0 * (bins - 1) + 25);
    free(lg);
    rt_state_free(s);
    rt_model_free(m);
    tiny_free(&w);
}

/* ==== Observer ==== */

typedef struct { int calls[8][RT_INPUT_COUNT]; int64_t cols[RT_INPUT_COUNT]; int n; } obs_log;

static void observer(void *ctx, int layer, rt_input which, const float *x, int n, int64_t cols)
{
    obs_log *o = ctx;
    (void)x;
    o->calls[layer][which]++;
    o->cols[which] = cols;
    o->n = n;
}

static void test_observer_sees_every_group(void **state)
{
    (void)state;
    tiny_weights w;
    tiny_make(&w, 9, 1);
    rt_model *m = tiny_model_direct(&w);
    rt_state *s = rt_state_new(m, 8, 8);
    obs_log o;
    memset(&o, 0, sizeof o);
    rt_state_set_observer(s, observer, &o);
    int32_t tok[6] = {1, 2, 3, 4, 5, 6};
    float *lg = forward_all(m, s, tok, 6, 0);
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int k = 0; k < RT_IN_HEAD; k++) assert_int_equal(o.calls[l][k], 1);
    assert_int_equal(o.calls[m->cfg.n_layers][RT_IN_HEAD], 1);
    assert_int_equal(o.cols[RT_IN_ATTN], m->cfg.dim);
    assert_int_equal(o.cols[RT_IN_ATTN_OUT], m->cfg.n_heads * m->cfg.head_dim);
    assert_int_equal(o.cols[RT_IN_MLP], m->cfg.dim);
    assert_int_equal(o.cols[RT_IN_MLP_OUT], m->cfg.hidden_dim);
    assert_int_equal(o.n, 6);
    free(lg);
    rt_state_free(s);
    rt_model_free(m);
    tiny_free(&w);
}

/* ==== One rotation of a shared input ==== */

/* A layer that stands for a rotated one: it holds W' = W D, D = diag(+-1) from its
 * seed (an orthogonal R, as the packed layers' Hadamard rotations are), and its
 * products first take x' = D x. It counts its rotations: those the forward pass
 * asks of it (rotate_input) and those its own matmul makes. */
typedef struct {
    float *w;       /* [rows][cols] W D */
    float *sign;    /* [cols] */
    int *asked, *own;
} fake_rot;

static void fake_rotate(const fake_rot *f, int64_t cols, const float *x, float *xr, int n)
{
    for (int64_t i = 0; i < (int64_t)n * cols; i++) xr[i] = x[i] * f->sign[i % cols];
}

static void fake_rotate_input(const rt_linear *l, const float *x, float *xr, int n)
{
    const fake_rot *f = l->impl;
    (*f->asked)++;
    fake_rotate(f, l->cols, x, xr, n);
}

static void fake_matmul_rotated(const rt_linear *l, const float *xr, float *y, int n)
{
    const fake_rot *f = l->impl;
    for (int k = 0; k < n; k++)
        for (int64_t r = 0; r < l->rows; r++) {
            double acc = 0;
            for (int64_t j = 0; j < l->cols; j++) acc += (double)f->w[r * l->cols + j] * xr[k * l->cols + j];
            y[k * l->rows + r] = (float)acc;
        }
}

static void fake_matmul(const rt_linear *l, const float *x, float *y, int n)
{
    const fake_rot *f = l->impl;
    float *xr = malloc((size_t)(n * l->cols) * sizeof *xr);
    assert_non_null(xr);
    (*f->own)++;
    fake_rotate(f, l->cols, x, xr, n);
    fake_matmul_rotated(l, xr, y, n);
    free(xr);
}

static void fake_destroy(rt_linear *l)
{
    fake_rot *f = l->impl;
    free(f->w), free(f->sign), free(f);
}

/* Replaces dense layer *lp by a fake rotated one with the same products. */
static void make_fake_rot(rt_linear **lp, uint32_t seed, int *asked, int *own)
{
    rt_linear *d = *lp, *l = calloc(1, sizeof *l);
    fake_rot *f = calloc(1, sizeof *f);
    assert_true(l && f && d->dense);
    f->w = malloc((size_t)(d->rows * d->cols) * sizeof *f->w);
    f->sign = malloc((size_t)d->cols * sizeof *f->sign);
    assert_true(f->w && f->sign);
    for (int64_t j = 0; j < d->cols; j++) f->sign[j] = (float)lay_rot_sign(seed, j);
    for (int64_t i = 0; i < d->rows * d->cols; i++) f->w[i] = d->dense[i] * f->sign[i % d->cols];
    f->asked = asked, f->own = own;
    *l = (rt_linear){ .rows = d->rows, .cols = d->cols, .matmul = fake_matmul, .destroy = fake_destroy, .impl = f,
                      .rot = 64, .rot_seed = seed, .rotate_input = fake_rotate_input,
                      .matmul_rotated = fake_matmul_rotated };
    rt_linear_free(d);
    *lp = l;
}

/* q, k, gate and up rotate alike and v otherwise: each block's two inputs are
 * rotated once for q and k and once for gate and up, v rotates its own, and the
 * logits are the dense model's; without the shared halves, the same bits. */
static void test_shared_input_rotated_once(void **state)
{
    (void)state;
    enum { N = 9 };
    tiny_weights w;
    tiny_make(&w, 4, 1);
    rt_model *dense = tiny_model_direct(&w), *m[2];
    int asked[2] = {0}, own[2] = {0}, L = w.cfg.n_layers, V = w.cfg.vocab_size;
    int32_t tok[N];
    random_tokens(tok, N, V, 8);
    float *logits[2];
    for (int v = 0; v < 2; v++) {
        m[v] = tiny_model_direct(&w);
        for (int l = 0; l < L; l++)
            for (int k = LAY_Q; k <= LAY_UP; k++)
                if (k != LAY_O) make_fake_rot(&m[v]->layers[l].lin[k], k == LAY_V ? 9 : 7, &asked[v], &own[v]);
        if (v == 1) /* the same layers without their halves: each rotates its own input */
            for (int l = 0; l < L; l++)
                for (int k = LAY_Q; k <= LAY_UP; k++) m[v]->layers[l].lin[k]->rotate_input = NULL;
        rt_state *s = rt_state_new(m[v], 64, N);
        assert_non_null(s);
        logits[v] = forward_all(m[v], s, tok, N, 0);
        rt_state_free(s);
    }
    assert_int_equal(asked[0], 2 * L);
    assert_int_equal(own[0], L);
    assert_int_equal(asked[1], 0);
    assert_int_equal(own[1], 5 * L);
    assert_memory_equal(logits[0], logits[1], (size_t)N * V * sizeof *logits[0]);
    rt_state *s = rt_state_new(dense, 64, N);
    float *ref = forward_all(dense, s, tok, N, 0);
    assert_true(max_rel_diff(logits[0], ref, (int64_t)N * V) < 1e-5);
    free(ref), free(logits[0]), free(logits[1]);
    rt_state_free(s);
    for (int v = 0; v < 2; v++) rt_model_free(m[v]);
    rt_model_free(dense);
    tiny_free(&w);
}

static void test_names(void **state)
{
    (void)state;
    mdl_config c = {0};
    char name[96];
    rt_tensor_name(&c, 3, LAY_Q, name, sizeof name);
    assert_string_equal(name, "blk.3.attn_q.weight");
    rt_tensor_name(&c, 0, LAY_DOWN, name, sizeof name);
    assert_string_equal(name, "blk.0.ffn_down.weight");
    rt_tensor_name(&c, 0, LAY_HEAD, name, sizeof name);
    assert_string_equal(name, "output.weight");
    c.tied_embeddings = 1;
    rt_tensor_name(&c, 0, LAY_HEAD, name, sizeof name);
    assert_string_equal(name, "token_embd.weight");
    assert_string_equal(lay_class_name(LAY_GATE), "gate");
    assert_int_equal(rt_class_input(LAY_V), RT_IN_ATTN);
    assert_int_equal(rt_class_input(LAY_UP), RT_IN_MLP);
    assert_int_equal(rt_class_input(LAY_DOWN), RT_IN_MLP_OUT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_cache_consistency),
        cmocka_unit_test(test_gguf_load_matches_direct),
        cmocka_unit_test(test_bad_weights),
        cmocka_unit_test(test_bad_tokens),
        cmocka_unit_test(test_eval_matches_direct),
        cmocka_unit_test(test_eval_saved_logits),
        cmocka_unit_test(test_generate_greedy_is_argmax),
        cmocka_unit_test(test_sampling_follows_the_distribution),
        cmocka_unit_test(test_observer_sees_every_group),
        cmocka_unit_test(test_shared_input_rotated_once),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, setup_dir, remove_dir);
}
