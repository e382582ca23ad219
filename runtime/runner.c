/*
 * runtime/runner.c — the CPU runner: rt_forward behind the rt_runner interface that
 * evaluation and generation drive. It owns a state (KV cache and scratch) sized at
 * open; forward never allocates.
 */
#include <stdio.h>
#include <stdlib.h>

#include "rt_int.h"

typedef struct {
    rt_state *s;
    float *h;   /* [max_batch][dim] hidden states of the batch */
} cpu_runner;

static int cpu_forward(rt_runner *r, const int32_t *tokens, int n, int pos, int first, int n_logits,
                       float *logits, char *err, size_t err_len)
{
    cpu_runner *c = r->impl;
    const rt_model *m = r->model;
    if (n < 1 || n > r->max_batch || pos < 0 || pos + n > r->max_ctx || first < 0 || first + n_logits > n) {
        snprintf(err, err_len, "batch of %d at position %d (logits %d..%d) does not fit a runner of %d x %d", n,
                 pos, first, first + n_logits - 1, r->max_batch, r->max_ctx);
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab_size) {
            snprintf(err, err_len, "token id %d is outside the vocabulary of %d", tokens[i], m->cfg.vocab_size);
            return -1;
        }
    rt_embed(m, tokens, n, c->h);
    rt_forward_layers(m, c->s, c->h, n, pos, 0, m->cfg.n_layers);
    if (n_logits) rt_logits(m, c->s, c->h + (size_t)first * m->cfg.dim, n_logits, logits);
    return 0;
}

static void cpu_destroy(rt_runner *r)
{
    cpu_runner *c = r->impl;
    if (!c) return;
    rt_state_free(c->s);
    free(c->h);
    free(c);
}

int rt_runner_open_cpu(const rt_model *m, int max_ctx, int max_batch, rt_runner **out, char *err, size_t err_len)
{
    rt_runner *r = calloc(1, sizeof *r);
    cpu_runner *c = calloc(1, sizeof *c);
    *out = NULL;
    if (r && c) {
        c->s = rt_state_new(m, max_ctx, max_batch);
        c->h = malloc((size_t)max_batch * m->cfg.dim * sizeof *c->h);
    }
    if (!r || !c || !c->s || !c->h) {
        if (c) { rt_state_free(c->s); free(c->h); free(c); }
        free(r);
        snprintf(err, err_len, "out of memory for a context of %d and batches of %d", max_ctx, max_batch);
        return -1;
    }
    r->model = m, r->max_ctx = max_ctx, r->max_batch = max_batch;
    r->forward = cpu_forward, r->destroy = cpu_destroy, r->impl = c;
    *out = r;
    return 0;
}

void rt_runner_free(rt_runner *r)
{
    if (!r) return;
    if (r->destroy) r->destroy(r);
    free(r);
}
