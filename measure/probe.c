/*
 * measure/probe.c — the end-to-end KL probe: how much the final logits move when
 * one tensor alone is quantized.
 *
 * The probe rows are the first rows of the calibration set, cut to their first
 * tokens (MEAS_PROBE_ROWS x MEAS_PROBE_CTX). Their hidden state at the input of the
 * current layer is kept (hp) and advanced one layer at a time, so a probe of a
 * layer-l tensor restarts from hp instead of from the embeddings:
 *
 *     ref[r]  = log_softmax(logits of the full-precision model)     once, at the start
 *     probe   = swap the tensor's rt_linear for a dense one over the dequantized
 *               weights; h = hp; layers l..L-1; logits; restore the tensor
 *     kld     = mean over probe positions of sum_v p_ref (log p_ref - log p_probe)
 *
 * The reference runs the same layer-by-layer arithmetic as the probes, so an
 * unchanged tensor gives exactly 0. It must never leave a swapped tensor in the
 * model, and it owns no weights but the one it is given for the duration of a probe.
 */
#include "probe_int.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct meas_probe {
    rt_model *m;
    rt_state *s;
    int rows, ctx, layer;     /* probe rows x tokens; layer hp stands before */
    int64_t dim, vocab;
    float *hp;                /* [rows][ctx][dim] hidden state at the input of `layer` */
    float *ref;               /* [rows][ctx][vocab] log-probabilities of the full model */
    float *h, *logits;        /* scratch [ctx][dim], [ctx][vocab] */
};

/* In place: logits -> log-probabilities (sums in double). */
static void log_softmax(float *x, int64_t n)
{
    float mx = x[0];
    for (int64_t i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += exp((double)x[i] - mx);
    float lse = (float)(mx + log(sum));
    for (int64_t i = 0; i < n; i++) x[i] -= lse;
}

/* Runs probe row r from hp (at layer p->layer) to the logits, into p->logits, as
 * log-probabilities. */
static void run_row(meas_probe *p, int r)
{
    size_t hsz = (size_t)p->ctx * (size_t)p->dim;
    memcpy(p->h, p->hp + (size_t)r * hsz, hsz * sizeof *p->h);
    rt_forward_layers(p->m, p->s, p->h, p->ctx, 0, p->layer, p->m->cfg.n_layers);
    rt_logits(p->m, p->s, p->h, p->ctx, p->logits);
    for (int i = 0; i < p->ctx; i++) log_softmax(p->logits + (size_t)i * p->vocab, p->vocab);
}

int probe_new(rt_model *m, rt_state *s, const calib_set *c, meas_probe **out)
{
    meas_probe *p = calloc(1, sizeof *p);
    *out = p;
    if (!p) return -1;
    p->m = m, p->s = s, p->layer = 0;
    p->rows = c->rows < MEAS_PROBE_ROWS ? c->rows : MEAS_PROBE_ROWS;
    p->ctx = c->ctx < MEAS_PROBE_CTX ? c->ctx : MEAS_PROBE_CTX;
    p->dim = m->cfg.dim, p->vocab = m->cfg.vocab_size;
    size_t pos = (size_t)p->rows * (size_t)p->ctx;
    p->hp = malloc(pos * (size_t)p->dim * sizeof *p->hp);
    p->ref = malloc(pos * (size_t)p->vocab * sizeof *p->ref);
    p->h = malloc((size_t)p->ctx * (size_t)p->dim * sizeof *p->h);
    p->logits = malloc((size_t)p->ctx * (size_t)p->vocab * sizeof *p->logits);
    if (!p->hp || !p->ref || !p->h || !p->logits) return -1;
    for (int r = 0; r < p->rows; r++) {
        size_t off = (size_t)r * (size_t)p->ctx;
        rt_embed(m, c->tokens + (size_t)r * (size_t)c->ctx, p->ctx, p->hp + off * (size_t)p->dim);
        run_row(p, r);
        memcpy(p->ref + off * (size_t)p->vocab, p->logits, (size_t)p->ctx * (size_t)p->vocab * sizeof *p->ref);
    }
    return 0;
}

void probe_free(meas_probe *p)
{
    if (!p) return;
    free(p->hp), free(p->ref), free(p->h), free(p->logits);
    free(p);
}

int probe_layer(const meas_probe *p) { return p->layer; }

void probe_advance(meas_probe *p)
{
    assert(p->layer < p->m->cfg.n_layers);
    size_t hsz = (size_t)p->ctx * (size_t)p->dim;
    for (int r = 0; r < p->rows; r++)
        rt_forward_layers(p->m, p->s, p->hp + (size_t)r * hsz, p->ctx, 0, p->layer, p->layer + 1);
    p->layer++;
}

/* The slot of the model that holds tensor (layer, cls). */
static rt_linear **slot(rt_model *m, int layer, rt_class cls)
{
    return cls == RT_HEAD ? &m->head : &m->layers[layer].lin[cls];
}

int probe_tensor(meas_probe *p, rt_class cls, float *wq, double *kld)
{
    rt_linear **where = slot(p->m, p->layer, cls), *orig = *where;
    assert(cls == RT_HEAD ? p->layer == p->m->cfg.n_layers : p->layer < p->m->cfg.n_layers);
    rt_linear *q = rt_linear_dense(wq, orig->rows, orig->cols);
    if (!q) { free(wq); return -1; }
    *where = q;
    double sum = 0;
    for (int r = 0; r < p->rows; r++) {
        run_row(p, r);
        for (int i = 0; i < p->ctx; i++) {
            const float *lq = p->logits + (size_t)i * p->vocab;
            const float *lr = p->ref + ((size_t)r * p->ctx + i) * p->vocab;
            double k = 0;
            for (int64_t v = 0; v < p->vocab; v++) k += exp((double)lr[v]) * ((double)lr[v] - lq[v]);
            sum += k;
        }
    }
    *where = orig;
    rt_linear_free(q);
    *kld = sum / ((double)p->rows * p->ctx);
    return 0;
}
