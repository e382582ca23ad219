/*
 * runtime/generate.c — text generation: the prompt in batches, then one token at
 * a time, chosen greedily (temp 0) or sampled with temperature and top-p from a
 * seeded generator, so that a seed always gives the same text.
 *
 * Sampling: p = softmax(logits / temp); with top_p < 1 only the smallest set of
 * most likely tokens whose probabilities add up to at least top_p is kept and
 * renormalized; a token is drawn with one uniform number from xoshiro256**.
 * It must never print (text goes through emit) and never allocate inside the
 * per-token loop.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rt_int.h"
#include "util/util.h"

#define GEN_PROMPT_BATCH 512

void rt_gen_params_init(rt_gen_params *p)
{
    memset(p, 0, sizeof *p);
    p->n_predict = 128;
    p->temp = 0.8f;
    p->top_p = 0.95f;
    p->seed = 42;
    p->stop_at_eos = 1;
}

/* ==== Random numbers: xoshiro256**, seeded with splitmix64 ==== */

typedef struct { uint64_t s[4]; } gen_rng;

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void rng_seed(gen_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(gen_rng *r)
{
    uint64_t *s = r->s, out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t; s[3] = rotl(s[3], 45);
    return (double)(out >> 11) * 0x1.0p-53;
}

/* ==== Sampling ==== */

typedef struct { float p; int32_t id; } gen_cand;

static int cand_desc(const void *a, const void *b)
{
    const gen_cand *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* probs of all tokens (softmax of logits / temp); returns the largest. */
static float softmax_temp(const float *logits, int vocab, float temp, float *probs)
{
    float mx = logits[0];
    for (int v = 1; v < vocab; v++) mx = logits[v] > mx ? logits[v] : mx;
    double sum = 0;
    for (int v = 0; v < vocab; v++) sum += probs[v] = expf((logits[v] - mx) / temp);
    float pmax = 0;
    for (int v = 0; v < vocab; v++) {
        probs[v] = (float)(probs[v] / sum);
        pmax = probs[v] > pmax ? probs[v] : pmax;
    }
    return pmax;
}

/* Candidates with p >= cut, most likely first; the cut is lowered until they hold
 * at least top_p of the mass, so the nucleus is a prefix of them. */
static int nucleus(const float *probs, int vocab, float pmax, float top_p, gen_cand *cand)
{
    for (float cut = pmax * 1e-3f;; cut *= 1e-3f) {
        int n = 0;
        double mass = 0;
        for (int v = 0; v < vocab; v++)
            if (probs[v] >= cut || cut < 1e-30f) { cand[n].p = probs[v]; cand[n].id = v; n++; mass += probs[v]; }
        if (mass >= top_p || cut < 1e-30f) {
            qsort(cand, (size_t)n, sizeof *cand, cand_desc);
            double cum = 0;
            for (int i = 0; i < n; i++)
                if ((cum += cand[i].p) >= top_p) return i + 1;
            return n;
        }
    }
}

static int32_t sample(const float *logits, int vocab, const rt_gen_params *p, gen_rng *rng, float *probs,
                      gen_cand *cand)
{
    if (p->temp <= 0) return rt_argmax(logits, vocab);
    float pmax = softmax_temp(logits, vocab, p->temp, probs);
    int n;
    if (p->top_p < 1) {
        n = nucleus(probs, vocab, pmax, p->top_p, cand);
    } else {
        for (int v = 0; v < vocab; v++) { cand[v].p = probs[v]; cand[v].id = v; }
        n = vocab;
    }
    double total = 0;
    for (int i = 0; i < n; i++) total += cand[i].p;
    double u = rng_uniform(rng) * total, cum = 0;
    for (int i = 0; i < n; i++)
        if ((cum += cand[i].p) > u) return cand[i].id;
    return cand[n - 1].id;
}

/* ==== The loop ==== */

/* Runs the prompt through the cache in batches; logits of its last token. */
static int run_prompt(rt_runner *r, const int32_t *prompt, int n_prompt, float *logits, char *err, size_t err_len)
{
    for (int pos = 0; pos < n_prompt; pos += r->max_batch) {
        int n = n_prompt - pos < r->max_batch ? n_prompt - pos : r->max_batch, last = pos + n == n_prompt;
        if (r->forward(r, prompt + pos, n, pos, n - 1, last, logits, err, err_len)) return -1;
    }
    return 0;
}

static void emit_token(const rt_model *m, const rt_gen_params *p, int32_t id,
                       void (*emit)(void *, const char *, size_t), void *emit_ctx)
{
    if (p->on_token) p->on_token(p->on_token_ctx, id);
    if (!emit || !m->tok || tok_is_special(m->tok, id)) return;
    size_t len;
    const char *piece = tok_piece(m->tok, id, &len);
    if (piece && len) emit(emit_ctx, piece, len);
}

int rt_generate(const rt_model *m, const int32_t *prompt, int n_prompt, const rt_gen_params *p,
                void (*emit)(void *ctx, const char *piece, size_t len), void *emit_ctx,
                rt_gen_stats *stats, char *err, size_t err_len)
{
    int vocab = m->cfg.vocab_size, rc = -1, n_gen = 0;
    int eos = p->stop_at_eos && m->tok ? tok_eos(m->tok) : -1;
    memset(stats, 0, sizeof *stats);
    if (n_prompt < 1) { snprintf(err, err_len, "the prompt is empty"); return -1; }
    if (p->n_predict < 0) { snprintf(err, err_len, "n_predict %d is negative", p->n_predict); return -1; }
    int max_ctx = n_prompt + (p->n_predict > 0 ? p->n_predict : 1);
    rt_runner *r = NULL;
    float *logits = malloc((size_t)vocab * sizeof *logits), *probs = malloc((size_t)vocab * sizeof *probs);
    gen_cand *cand = malloc((size_t)vocab * sizeof *cand);
    gen_rng rng;
    rng_seed(&rng, p->seed);
    if (!logits || !probs || !cand) { snprintf(err, err_len, "out of memory for %d tokens", max_ctx); goto done; }
    if ((p->open_runner ? p->open_runner : rt_runner_open_cpu)(
            m, max_ctx, n_prompt < GEN_PROMPT_BATCH ? n_prompt : GEN_PROMPT_BATCH, &r, err, err_len))
        goto done;
    double t0 = util_now_s();
    if (run_prompt(r, prompt, n_prompt, logits, err, err_len)) goto done;
    double t1 = util_now_s();
    for (int pos = n_prompt; n_gen < p->n_predict; pos++) {
        int32_t id = sample(logits, vocab, p, &rng, probs, cand);
        n_gen++;
        emit_token(m, p, id, emit, emit_ctx);
        if (id == eos || n_gen == p->n_predict) break;
        if (r->forward(r, &id, 1, pos, 0, 1, logits, err, err_len)) goto done;
    }
    double t2 = util_now_s();
    stats->n_prompt = n_prompt;
    stats->n_gen = n_gen;
    stats->prompt_tps = n_prompt / (t1 - t0);
    stats->gen_tps = n_gen > 1 ? (n_gen - 1) / (t2 - t1) : 0; /* the first token came with the prompt */
    rc = 0;
done:
    rt_runner_free(r);
    free(logits); free(probs); free(cand);
    return rc;
}
