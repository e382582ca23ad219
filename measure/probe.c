/*
 * measure/probe.c — the end-to-end KL probe: how much the final logits move when
 * one tensor alone is quantized.
 *
 * The probe rows are the first rows of the calibration set, cut to their first
 * tokens (MEAS_PROBE_ROWS x MEAS_PROBE_CTX); the second half of each row's
 * positions is scored (they have context, and the head costs half). Their hidden
 * state at the input of the
 * current layer is kept (hp) and advanced one layer at a time, so a probe of a
 * layer-l tensor restarts from hp instead of from the embeddings:
 *
 *     ref     = logits of the full-precision model, their softmax p_ref and
 *               log-sum-exp                                           once, at the start
 *     probe   = swap the tensor's rt_linear for a dense one over the dequantized
 *               weights; h = hp; layers l..L-1; logits; restore the tensor
 *     kld     = mean over scored positions of sum_v p_ref (log p_ref - log p_probe)
 *             = sum_v p_ref (ref - x) + (lse(x) - lse(ref)) sum_v p_ref, for logits x
 *               (written so that x == ref gives exactly 0)
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
    int first, scored;        /* positions first..first+scored-1 of each row are scored */
    int64_t dim, vocab;
    float *hp;                /* [rows][ctx][dim] hidden state at the input of `layer` */
    float *ref, *pref;        /* [rows][scored][vocab] logits of the full model, their softmax */
    double *lse, *psum;       /* [rows][scored] log-sum-exp of ref, sum of pref */
    float *h, *logits;        /* scratch [ctx][dim], [scored][vocab] */
};

/* log(sum exp x), in double. */
static double log_sum_exp(const float *x, int64_t n)
{
    float mx = x[0];
    for (int64_t i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += exp((double)x[i] - mx);
    return mx + log(sum);
}

/* Runs probe row r from hp (at layer p->layer) to the logits of its scored
 * positions, into p->logits. */
static void run_row(meas_probe *p, int r)
{
    size_t hsz = (size_t)p->ctx * (size_t)p->dim;
    memcpy(p->h, p->hp + (size_t)r * hsz, hsz * sizeof *p->h);
    rt_forward_layers(p->m, p->s, p->h, p->ctx, 0, p->layer, p->m->cfg.n_layers);
    rt_logits(p->m, p->s, p->h + (size_t)p->first * (size_t)p->dim, p->scored, p->logits);
}

int probe_new(rt_model *m, rt_state *s, const calib_set *c, meas_probe **out)
{
    meas_probe *p = calloc(1, sizeof *p);
    *out = p;
    if (!p) return -1;
    p->m = m, p->s = s, p->layer = 0;
    p->rows = c->rows < MEAS_PROBE_ROWS ? c->rows : MEAS_PROBE_ROWS;
    p->ctx = c->ctx < MEAS_PROBE_CTX ? c->ctx : MEAS_PROBE_CTX;
    p->first = p->ctx / 2, p->scored = p->ctx - p->first;
    p->dim = m->cfg.dim, p->vocab = m->cfg.vocab_size;
    size_t scored = (size_t)p->rows * (size_t)p->scored * (size_t)p->vocab;
    p->hp = malloc((size_t)p->rows * (size_t)p->ctx * (size_t)p->dim * sizeof *p->hp);
    p->ref = malloc(scored * sizeof *p->ref);
    p->pref = malloc(scored * sizeof *p->pref);
    p->h = malloc((size_t)p->ctx * (size_t)p->dim * sizeof *p->h);
    p->logits = malloc((size_t)p->scored * (size_t)p->vocab * sizeof *p->logits);
    p->lse = malloc((size_t)p->rows * (size_t)p->scored * sizeof *p->lse);
    p->psum = malloc((size_t)p->rows * (size_t)p->scored * sizeof *p->psum);
    if (!p->hp || !p->ref || !p->pref || !p->h || !p->logits || !p->lse || !p->psum) return -1;
    for (int r = 0; r < p->rows; r++) {
        rt_embed(m, c->tokens + (size_t)r * (size_t)c->ctx, p->ctx, p->hp + (size_t)r * p->ctx * (size_t)p->dim);
        run_row(p, r);
        for (int i = 0; i < p->scored; i++) {
            size_t k = (size_t)r * p->scored + i, off = k * p->vocab;
            const float *x = p->logits + (size_t)i * p->vocab;
            double lse = log_sum_exp(x, p->vocab), sum = 0;
            for (int64_t v = 0; v < p->vocab; v++) {
                p->ref[off + v] = x[v];
                p->pref[off + v] = (float)exp((double)x[v] - lse);
                sum += p->pref[off + v];
            }
            p->lse[k] = lse, p->psum[k] = sum;
        }
    }
    return 0;
}

void probe_free(meas_probe *p)
{
    if (!p) return;
    free(p->hp), free(p->ref), free(p->pref), free(p->lse), free(p->psum), free(p->h), free(p->logits);
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
        for (int i = 0; i < p->scored; i++) {
            const float *x = p->logits + (size_t)i * p->vocab;
            size_t k = (size_t)r * p->scored + i, off = k * p->vocab;
            const float *ref = p->ref + off, *pr = p->pref + off;
            double kl = (log_sum_exp(x, p->vocab) - p->lse[k]) * p->psum[k];
            for (int64_t v = 0; v < p->vocab; v++) kl += (double)pr[v] * ((double)ref[v] - (double)x[v]);
            sum += kl;
        }
    }
    *where = orig;
    rt_linear_free(q);
    *kld = sum / ((double)p->rows * p->scored);
    return 0;
}
