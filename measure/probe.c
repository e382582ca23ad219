/*
 * measure/probe.c — the end-to-end KL probe: how much the final logits move when
 * one tensor alone is quantized.
 *
 * The probe rows are the first rows of the calibration set, cut to their first
 * tokens (MEAS_PROBE_ROWS x MEAS_PROBE_CTX); the second half of each row's
 * positions is scored (they have context, and the head costs half). Their hidden
 * state at the input of the current layer is kept (hp) and advanced one layer at a
 * time, so a probe of a layer-l tensor restarts from hp instead of from the
 * embeddings:
 *
 *     ref     = logits of the full-precision model, their softmax p_ref and
 *               log-sum-exp                                           once, at the start
 *     probe   = swap the tensor's rt_linear for a dense one over the dequantized
 *               weights; h = hp; layers l..L-1; logits; restore the tensor
 *
 * The tensors of one layer are probed together: layers l+1..L-1 and the head are
 * held (decoded to fp32) one at a time, and every probe's rows pass through each
 * while it is held, so a layer's probes decode the rest of the model once and
 * memory holds one layer beyond the walk's. Each probe's rows and positions are
 * summed in the same order as when probed alone.
 *     kld     = mean over scored positions of sum_v p_ref (log p_ref - log p_probe)
 *             = sum_v p_ref (ref - x) + (lse(x) - lse(ref)) sum_v p_ref, for logits x
 *               (written so that x == ref gives exactly 0)
 *
 * The reference runs the same layer-by-layer arithmetic as the probes, so an
 * unchanged tensor gives exactly 0. It must never leave a swapped tensor or a held
 * layer in the model, and it owns no weights but those it is given for the
 * duration of a probe.
 */
#include "probe_int.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct meas_probe {
    rt_model *m;
    rt_state *s;              /* the probe's own, with one layer of cache */
    int rows, ctx, layer;     /* probe rows x tokens; layer hp stands before */
    int first, scored;        /* positions first..first+scored-1 of each row are scored */
    int64_t dim, vocab;
    float *hp;                /* [rows][ctx][dim] hidden state at the input of `layer` */
    float *ref, *pref;        /* [rows][scored][vocab] logits of the full model, their softmax */
    double *lse, *psum;       /* [rows][scored] log-sum-exp of ref, sum of pref */
    float *logits;            /* scratch [scored][vocab] */
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

/* Holds layer l (n_layers: the head) for the duration of f. */
static int hold(meas_probe *p, int l)
{
    char why[128];
    return rt_model_hold_layer(p->m, l, why, sizeof why);
}

/* Adds row r's KL divergence over its scored positions, whose logits are in
 * p->logits, to *sum (in position order, so that results do not depend on how
 * probes are batched). */
static void add_row_kl(const meas_probe *p, int r, double *sum)
{
    for (int i = 0; i < p->scored; i++) {
        const float *x = p->logits + (size_t)i * p->vocab;
        size_t k = (size_t)r * p->scored + i, off = k * p->vocab;
        const float *ref = p->ref + off, *pr = p->pref + off;
        double kl = (log_sum_exp(x, p->vocab) - p->lse[k]) * p->psum[k];
        for (int64_t v = 0; v < p->vocab; v++) kl += (double)pr[v] * ((double)ref[v] - (double)x[v]);
        *sum += kl;
    }
}

/* The probe rows' reference: log-probabilities of the full-precision model, one
 * layer held at a time. */
static int compute_reference(meas_probe *p, float *h)
{
    size_t hsz = (size_t)p->ctx * (size_t)p->dim;
    memcpy(h, p->hp, (size_t)p->rows * hsz * sizeof *h);
    for (int l = 0; l < p->m->cfg.n_layers; l++) {
        if (hold(p, l)) return -1;
        for (int r = 0; r < p->rows; r++) rt_forward_layers(p->m, p->s, h + r * hsz, p->ctx, 0, l, l + 1);
        rt_model_release_layer(p->m, l);
    }
    if (hold(p, p->m->cfg.n_layers)) return -1;
    for (int r = 0; r < p->rows; r++) {
        rt_logits(p->m, p->s, h + r * hsz + (size_t)p->first * (size_t)p->dim, p->scored, p->logits);
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
    rt_model_release_layer(p->m, p->m->cfg.n_layers);
    return 0;
}

int probe_new(rt_model *m, const calib_set *c, meas_probe **out)
{
    meas_probe *p = calloc(1, sizeof *p);
    *out = p;
    if (!p) return -1;
    p->m = m, p->layer = 0;
    p->rows = c->rows < MEAS_PROBE_ROWS ? c->rows : MEAS_PROBE_ROWS;
    p->ctx = c->ctx < MEAS_PROBE_CTX ? c->ctx : MEAS_PROBE_CTX;
    p->first = p->ctx / 2, p->scored = p->ctx - p->first;
    p->dim = m->cfg.dim, p->vocab = m->cfg.vocab_size;
    size_t scored = (size_t)p->rows * (size_t)p->scored * (size_t)p->vocab;
    size_t hall = (size_t)p->rows * (size_t)p->ctx * (size_t)p->dim;
    p->s = rt_state_new_one_cache(m, p->ctx, p->ctx);
    p->hp = malloc(hall * sizeof *p->hp);
    p->ref = malloc(scored * sizeof *p->ref);
    p->pref = malloc(scored * sizeof *p->pref);
    p->logits = malloc((size_t)p->scored * (size_t)p->vocab * sizeof *p->logits);
    p->lse = malloc((size_t)p->rows * (size_t)p->scored * sizeof *p->lse);
    p->psum = malloc((size_t)p->rows * (size_t)p->scored * sizeof *p->psum);
    float *h = malloc(hall * sizeof *h);
    int rc = -1;
    if (p->s && p->hp && p->ref && p->pref && h && p->logits && p->lse && p->psum) {
        for (int r = 0; r < p->rows; r++)
            rt_embed(m, c->tokens + (size_t)r * (size_t)c->ctx, p->ctx, p->hp + (size_t)r * p->ctx * (size_t)p->dim);
        rc = compute_reference(p, h);
    }
    free(h);
    return rc;
}

void probe_free(meas_probe *p)
{
    if (!p) return;
    rt_state_free(p->s);
    free(p->hp), free(p->ref), free(p->pref), free(p->lse), free(p->psum), free(p->logits);
    free(p);
}

int probe_layer(const meas_probe *p) { return p->layer; }

int probe_advance(meas_probe *p)
{
    assert(p->layer < p->m->cfg.n_layers);
    size_t hsz = (size_t)p->ctx * (size_t)p->dim;
    if (hold(p, p->layer)) return -1;
    for (int r = 0; r < p->rows; r++)
        rt_forward_layers(p->m, p->s, p->hp + (size_t)r * hsz, p->ctx, 0, p->layer, p->layer + 1);
    rt_model_release_layer(p->m, p->layer);
    p->layer++;
    return 0;
}

/* The slot of the model that holds tensor (layer, cls). */
static rt_linear **slot(rt_model *m, int layer, lay_class cls)
{
    return cls == LAY_HEAD ? &m->head : &m->layers[layer].lin[cls];
}

/* Runs h[rows][ctx][dim] through layer l with tensor cls replaced by q (NULL: none). */
static void run_layer(meas_probe *p, int l, lay_class cls, rt_linear *q, float *h)
{
    size_t hsz = (size_t)p->ctx * (size_t)p->dim;
    rt_linear **where = q ? slot(p->m, l, cls) : NULL, *orig = q ? *where : NULL;
    if (q) *where = q;
    for (int r = 0; r < p->rows; r++) rt_forward_layers(p->m, p->s, h + r * hsz, p->ctx, 0, l, l + 1);
    if (q) *where = orig;
}

/* KL divergence of each probe from its hidden states h[k] (at the head's input),
 * with the head replaced by q[k] where cls[k] is the head. */
static void score(meas_probe *p, int n, const lay_class *cls, rt_linear *const *q, float *const *h, double *kld)
{
    size_t hsz = (size_t)p->ctx * (size_t)p->dim;
    rt_linear *head = p->m->head;
    for (int k = 0; k < n; k++) {
        double sum = 0;
        p->m->head = cls[k] == LAY_HEAD ? q[k] : head;
        for (int r = 0; r < p->rows; r++) {
            rt_logits(p->m, p->s, h[k] + r * hsz + (size_t)p->first * (size_t)p->dim, p->scored, p->logits);
            add_row_kl(p, r, &sum);
        }
        kld[k] = sum / ((double)p->rows * p->scored);
    }
    p->m->head = head;
}

/* Every probe's rows through layers p->layer..L-1, one layer held at a time. */
static int run_probes(meas_probe *p, int n, const lay_class *cls, rt_linear *const *q, float *const *h)
{
    for (int l = p->layer; l < p->m->cfg.n_layers; l++) {
        if (hold(p, l)) return -1;
        for (int k = 0; k < n; k++) run_layer(p, l, cls[k], l == p->layer ? q[k] : NULL, h[k]);
        rt_model_release_layer(p->m, l);
    }
    return 0;
}

int probe_tensors(meas_probe *p, int n, const lay_class *cls, float *const *wq, double *kld)
{
    size_t hall = (size_t)p->rows * (size_t)p->ctx * (size_t)p->dim;
    rt_linear *q[LAY_N_CLASSES] = {NULL};
    float *h[LAY_N_CLASSES] = {NULL};
    int rc = -1;
    assert(n > 0 && n <= LAY_N_CLASSES);
    for (int k = 0; k < n; k++) {
        assert(cls[k] == LAY_HEAD ? p->layer == p->m->cfg.n_layers : p->layer < p->m->cfg.n_layers);
        rt_linear *orig = *slot(p->m, p->layer, cls[k]);
        if (!(q[k] = rt_linear_dense(wq[k], orig->rows, orig->cols))) { /* which freed wq[k] */
            for (int j = k + 1; j < n; j++) free(wq[j]);
            goto done;
        }
    }
    for (int k = 0; k < n; k++) {
        if (!(h[k] = malloc(hall * sizeof *h[k]))) goto done;
        memcpy(h[k], p->hp, hall * sizeof *h[k]);
    }
    if (run_probes(p, n, cls, q, h) || hold(p, p->m->cfg.n_layers)) goto done;
    score(p, n, cls, q, h, kld);
    rt_model_release_layer(p->m, p->m->cfg.n_layers);
    rc = 0;
done:
    for (int k = 0; k < n; k++) rt_linear_free(q[k]), free(h[k]);
    return rc;
}
