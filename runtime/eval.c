/*
 * runtime/eval.c — perplexity, and KL divergence against a reference model, the
 * way llama.cpp's llama-perplexity computes them.
 *
 * The procedure (llama-perplexity's default mode):
 *   1. the whole text is one token sequence (tokenized by the caller);
 *   2. it is cut into n_chunk = n_tokens / ctx non-overlapping chunks of ctx
 *      tokens (at most max_chunks); at least 2 * ctx tokens are required;
 *   3. each chunk runs from an empty KV cache in one batch, its first token
 *      replaced by BOS when p->bos >= 0 (llama.cpp does so when the model adds BOS);
 *   4. only the second half is scored: the logits at positions first = ctx/2 ..
 *      ctx-2 predict the tokens at first+1 .. ctx-1 (ctx - 1 - first per chunk);
 *   5. PPL = exp(mean NLL); its standard error is PPL * sqrt(var(NLL) / (N - 1)).
 * With a reference: KL(ref || model) = sum_v p_ref(v) (log p_ref(v) - log p(v)) at
 * every scored position, its mean and standard error, the share of positions whose
 * argmax agrees, and the reference's own perplexity. Sums are in double.
 *
 * It must never change the tokens it is given, and prints only the optional
 * progress line.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rt_int.h"

void rt_eval_params_init(rt_eval_params *p)
{
    memset(p, 0, sizeof *p);
    p->ctx = 512;
    p->max_chunks = 0;
    p->progress = 0;
    p->bos = -1;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ==== One model's runner and logits for one chunk ==== */

typedef struct {
    const rt_model *m;
    rt_runner *r;
    float *logits;  /* [n_score][vocab] logits at the scored positions */
} eval_run;

static int run_open(eval_run *r, const rt_model *m, rt_runner_open_fn open, int ctx, int n_score, char *err,
                    size_t err_len)
{
    r->m = m;
    if ((open ? open : rt_runner_open_cpu)(m, ctx, ctx, &r->r, err, err_len)) return -1;
    r->logits = malloc((size_t)n_score * m->cfg.vocab_size * sizeof(float));
    if (!r->logits) snprintf(err, err_len, "out of memory for a context of %d", ctx);
    return r->logits ? 0 : -1;
}

static void run_close(eval_run *r)
{
    rt_runner_free(r->r);
    free(r->logits);
}

/* Logits of positions first .. first + n_score - 1 of one chunk, from an empty cache. */
static int run_chunk(eval_run *r, const int32_t *tok, int ctx, int first, int n_score, char *err, size_t err_len)
{
    return r->r->forward(r->r, tok, ctx, 0, first, n_score, r->logits, err, err_len);
}

/* ==== Scoring ==== */

typedef struct {
    double nll, nll2, ref_nll, ref_nll2, kld, kld2;
    int64_t same_top, count;
} eval_sums;

/* KL(ref || model) of one position: sum p_ref (log p_ref - log p). */
static double kl_row(const float *ref, double ref_lse, const float *x, double lse, int vocab)
{
    double sum = 0;
    for (int v = 0; v < vocab; v++) {
        double lr = (double)ref[v] - ref_lse;
        sum += exp(lr) * (lr - ((double)x[v] - lse));
    }
    return sum;
}

/* Adds the n_score positions of one chunk; targets[j] is the token after position j. */
static void score_chunk(const eval_run *r, const eval_run *ref, const int32_t *targets, int n_score,
                        eval_sums *sum)
{
    int vocab = r->m->cfg.vocab_size;
    double nll = 0, nll2 = 0, rnll = 0, rnll2 = 0, kld = 0, kld2 = 0;
    int64_t same = 0;
#pragma omp parallel for schedule(static) reduction(+ : nll, nll2, rnll, rnll2, kld, kld2, same)
    for (int j = 0; j < n_score; j++) {
        const float *x = r->logits + (size_t)j * vocab;
        double lse = rt_log_sum_exp(x, vocab), v = lse - x[targets[j]];
        nll += v;
        nll2 += v * v;
        if (!ref) continue;
        const float *y = ref->logits + (size_t)j * vocab;
        double rlse = rt_log_sum_exp(y, vocab), rv = rlse - y[targets[j]];
        rnll += rv;
        rnll2 += rv * rv;
        double k = kl_row(y, rlse, x, lse, vocab);
        kld += k;
        kld2 += k * k;
        same += rt_argmax(x, vocab) == rt_argmax(y, vocab);
    }
    sum->nll += nll; sum->nll2 += nll2; sum->ref_nll += rnll; sum->ref_nll2 += rnll2;
    sum->kld += kld; sum->kld2 += kld2; sum->same_top += same; sum->count += n_score;
}

/* Mean and standard error of the mean from a sum and a sum of squares. */
static void mean_stderr(double s, double s2, int64_t n, double *mean, double *se)
{
    *mean = s / (double)n;
    double var = s2 / (double)n - *mean * *mean;
    *se = n > 1 && var > 0 ? sqrt(var / (double)(n - 1)) : 0;
}

static void finish(const eval_sums *s, int with_ref, rt_eval_result *out)
{
    double mean, se;
    out->tokens_scored = s->count;
    out->nll_sum = s->nll;
    mean_stderr(s->nll, s->nll2, s->count, &mean, &se);
    out->ppl = exp(mean);
    out->ppl_stderr = out->ppl * se;
    if (!with_ref) return;
    mean_stderr(s->ref_nll, s->ref_nll2, s->count, &mean, &se);
    out->ref_ppl = exp(mean);
    mean_stderr(s->kld, s->kld2, s->count, &out->kld_mean, &out->kld_stderr);
    out->top1_agree = (double)s->same_top / (double)s->count;
}

/* ==== The evaluation ==== */

static int check_inputs(const rt_model *m, const rt_model *ref, const int32_t *tokens, int64_t n_tokens,
                        const rt_eval_params *p, char *err, size_t err_len)
{
    if (p->ctx < 4) { snprintf(err, err_len, "context %d is too small (at least 4)", p->ctx); return -1; }
    if (n_tokens < 2 * (int64_t)p->ctx) {
        snprintf(err, err_len, "the text has %lld tokens; a context of %d needs at least %lld",
                 (long long)n_tokens, p->ctx, 2 * (long long)p->ctx);
        return -1;
    }
    if (ref && ref->cfg.vocab_size != m->cfg.vocab_size) {
        snprintf(err, err_len, "the reference's vocabulary has %d tokens, the model's %d", ref->cfg.vocab_size,
                 m->cfg.vocab_size);
        return -1;
    }
    if (p->bos >= m->cfg.vocab_size) { snprintf(err, err_len, "BOS token %d is out of range", p->bos); return -1; }
    for (int64_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab_size) {
            snprintf(err, err_len, "token %lld has id %d, outside the vocabulary of %d", (long long)i, tokens[i],
                     m->cfg.vocab_size);
            return -1;
        }
    return 0;
}

int rt_eval(const rt_model *m, const rt_model *ref, const int32_t *tokens, int64_t n_tokens,
            const rt_eval_params *p, rt_eval_result *out, char *err, size_t err_len)
{
    memset(out, 0, sizeof *out);
    if (check_inputs(m, ref, tokens, n_tokens, p, err, err_len)) return -1;
    int ctx = p->ctx, first = ctx / 2, n_score = ctx - 1 - first;
    int64_t n_chunk = n_tokens / ctx;
    if (p->max_chunks > 0 && p->max_chunks < n_chunk) n_chunk = p->max_chunks;
    int rc = -1;
    eval_run run = {0}, rrun = {0};
    eval_sums sums = {0};
    int32_t *chunk = malloc((size_t)ctx * sizeof *chunk);
    if (!chunk) { snprintf(err, err_len, "out of memory for a context of %d", ctx); goto done; }
    if (run_open(&run, m, p->open_runner, ctx, n_score, err, err_len) ||
        (ref && run_open(&rrun, ref, NULL, ctx, n_score, err, err_len)))
        goto done;
    double t0 = now_s(), t_model = 0;
    for (int64_t c = 0; c < n_chunk; c++) {
        memcpy(chunk, tokens + c * ctx, (size_t)ctx * sizeof *chunk);
        if (p->bos >= 0) chunk[0] = p->bos;
        double t1 = now_s();
        if (run_chunk(&run, chunk, ctx, first, n_score, err, err_len)) goto done;
        t_model += now_s() - t1;
        if (ref && run_chunk(&rrun, chunk, ctx, first, n_score, err, err_len)) goto done;
        score_chunk(&run, ref ? &rrun : NULL, chunk + first + 1, n_score, &sums);
        if (p->progress)
            fprintf(stderr, "\reval: chunk %lld/%lld, perplexity %.4f, %.1f tokens/s ", (long long)(c + 1),
                    (long long)n_chunk, exp(sums.nll / (double)sums.count), (double)(c + 1) * ctx / t_model);
    }
    if (p->progress) fputc('\n', stderr);
    finish(&sums, ref != NULL, out);
    out->seconds = now_s() - t0;
    out->tokens_per_s = t_model > 0 ? (double)n_chunk * ctx / t_model : 0;
    rc = 0;
done:
    free(chunk);
    run_close(&run);
    run_close(&rrun);
    return rc;
}
