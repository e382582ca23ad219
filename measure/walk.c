/*
 * measure/walk.c — the calibration walk: the model runs layer by layer over the
 * calibration rows, each layer's input groups' Hessians are collected while it
 * runs, and a caller's visit sees them with the layer's weights in memory. The
 * measurement (driver.c) and the packer (pack/quantize.c) are both visits.
 *
 * The walk, as invariants:
 *  1. Memory grows with one block: layer l's weights are held as fp32
 *     (rt_model_hold_layer) only while it runs over the rows; the visit holds
 *     what it uses itself (the measurement one input group's tensors at a time),
 *     the KV cache has room for one layer (rt_state_new_one_cache), and hs holds
 *     the calibration rows' hidden state at the current layer's input.
 *  2. Hessians of layer l are accumulated only while layer l runs, by
 *     hess_accumulate in the same call order on every run, so a resumed walk
 *     recomputes bit for bit the Hessians of an uninterrupted one. Layers that
 *     want no visit are only run forward.
 *  3. Sequential mode (the packer's default): after the visit, layer l runs again
 *     from its saved input, on whatever weights the visit left in its slots (the
 *     quantized ones), so layer l + 1 sees the error of every layer before it.
 *  4. The head comes last; its input is the final norm's output, observed through
 *     rt_logits with a head that computes nothing, so the walk never holds it.
 *  5. On several ranks (par/), each runs its own share of the rows (a contiguous
 *     range, [r0, r1)) and holds only their hidden state; a visited layer's
 *     Hessians are then summed from every row in row order on every rank
 *     (hess_layer_share), so each rank's visit sees one process's Hessians, bit
 *     for bit. Every step that can fail on one rank ends with par_agree, so all
 *     ranks stop at the same point with the same message. In sequential mode
 *     each rank runs its rows again on the weights the visit left, which must
 *     then be the same on every rank (the packer sends each quantized tensor to
 *     all).
 * It never prints (progress goes through a callback) and never keeps a layer held
 * after running it. A stop asked for by SIGINT/SIGTERM (util_interrupted) ends it
 * between two rows with the error "interrupted".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "measure.h"
#include "par/par.h"
#include "util/util.h"

typedef struct {
    const walk_params *p;
    char *err;
    size_t err_len;
    rt_model *m;
    rt_state *s;
    hess_layer hl;
    float *hs, *hs_in;        /* [r1 - r0][ctx][dim]: hidden state; a visited layer's input (sequential) */
    size_t row;               /* floats of one row's hidden state */
    int r0, r1;               /* this rank's rows */
    int *owner;               /* [rows]: the rank that runs each row */
} walker;

static void progress(walker *w, const char *phase, int layer)
{
    if (w->p->progress) w->p->progress(w->p->ctx, phase, layer);
}

/* Runs the rows through layer l, held as fp32 meanwhile (the weights in its slots:
 * in sequential mode, after the visit, the quantized ones). */
static int run_rows(walker *w, int l)
{
    if (rt_model_hold_layer(w->m, l, w->err, w->err_len)) return -1;
    int rc = 0;
    for (int i = w->r0; !rc && i < w->r1; i++) {
        hess_layer_row(&w->hl, i);
        if (util_interrupted()) {
            snprintf(w->err, w->err_len, "interrupted");
            rc = -1;
        } else {
            rt_forward_layers(w->m, w->s, w->hs + (i - w->r0) * w->row, w->p->cal->ctx, 0, l, l + 1);
        }
    }
    rt_model_release_layer(w->m, l);
    return rc;
}

/* The rows of every rank summed (several ranks), then the Hessians finalized. */
static int finish_hessians(walker *w, int l)
{
    char why[320];
    if (par_size() > 1) hess_layer_share(&w->hl, w->owner);
    if (!hess_layer_finish(&w->hl, w->s, why, sizeof why)) return 0;
    snprintf(w->err, w->err_len, "layer %d, %s", l, why);
    return -1;
}

/* rc of this rank, agreed by all (par_agree): -1 on every rank if one failed. */
static int agreed(walker *w, int rc)
{
    return par_agree(rc, w->err, w->err_len);
}

/* Layer l: forward, with Hessians and a visit if wanted, and the caller's word
 * that it has passed. */
static int step_layer(walker *w, int l)
{
    const walk_params *p = w->p;
    progress(w, "forward", l);
    int visit = p->wants(p->ctx, l), seq = visit && p->sequential;
    size_t bytes = (size_t)(w->r1 - w->r0) * w->row * sizeof *w->hs;
    if (seq) memcpy(w->hs_in, w->hs, bytes);
    if (visit) hess_layer_start(&w->hl, w->s, l);
    if (agreed(w, run_rows(w, l))) return -1;
    if (visit && (agreed(w, finish_hessians(w, l)) || p->visit(p->ctx, l, &w->hl, w->err, w->err_len))) return -1;
    if (seq) {
        memcpy(w->hs, w->hs_in, bytes); /* the layer again, on the weights the visit left */
        if (run_rows(w, l)) return -1;
    }
    return p->passed ? agreed(w, p->passed(p->ctx, l, w->err, w->err_len)) : 0;
}

static void null_matmul(const rt_linear *l, const float *x, float *y, int n) { (void)l, (void)x, (void)y, (void)n; }

static int step_head(walker *w)
{
    const walk_params *p = w->p;
    int nl = w->m->cfg.n_layers;
    if (!p->wants(p->ctx, nl)) return 0;
    progress(w, "head", nl);
    rt_linear nothing = *w->m->head, *head = w->m->head;
    nothing.matmul = null_matmul;
    float unused = 0;
    hess_layer_start(&w->hl, w->s, nl);
    w->m->head = &nothing;
    for (int i = w->r0; i < w->r1; i++) {
        hess_layer_row(&w->hl, i);
        rt_logits(w->m, w->s, w->hs + (i - w->r0) * w->row, p->cal->ctx, &unused);
    }
    w->m->head = head;
    if (agreed(w, finish_hessians(w, nl)) || p->visit(p->ctx, nl, &w->hl, w->err, w->err_len)) return -1;
    return p->passed ? agreed(w, p->passed(p->ctx, nl, w->err, w->err_len)) : 0;
}

/* Rank k runs rows [R k / N, R (k + 1) / N): contiguous, sizes within one. */
static int split_rows(walker *w)
{
    int rows = w->p->cal->rows, n = par_size(), k = par_rank();
    w->r0 = (int)((int64_t)rows * k / n), w->r1 = (int)((int64_t)rows * (k + 1) / n);
    if (!(w->owner = malloc((size_t)rows * sizeof *w->owner)))
        return snprintf(w->err, w->err_len, "out of memory"), -1;
    for (int j = 0; j < n; j++)
        for (int i = (int)((int64_t)rows * j / n); i < (int)((int64_t)rows * (j + 1) / n); i++) w->owner[i] = j;
    return 0;
}

static int walk_setup(walker *w)
{
    const calib_set *c = w->p->cal;
    char why[256];
    if (hess_layer_init(&w->hl, &w->m->cfg, why, sizeof why)) return snprintf(w->err, w->err_len, "%s", why), -1;
    if (split_rows(w)) return -1;
    if (par_size() > 1 && hess_layer_keep_rows(&w->hl, c->rows))
        return snprintf(w->err, w->err_len, "out of memory"), -1;
    size_t n = (size_t)(w->r1 - w->r0) * w->row + 1;
    w->s = rt_state_new_one_cache(w->m, c->ctx, c->ctx);
    w->hs = malloc(n * sizeof *w->hs);
    if (w->p->sequential) w->hs_in = malloc(n * sizeof *w->hs_in);
    if (!w->s || !w->hs || (w->p->sequential && !w->hs_in))
        return snprintf(w->err, w->err_len, "out of memory for %d x %d calibration tokens", w->r1 - w->r0, c->ctx), -1;
    for (int i = w->r0; i < w->r1; i++)
        rt_embed(w->m, c->tokens + (size_t)i * c->ctx, c->ctx, w->hs + (i - w->r0) * w->row);
    return 0;
}

int walk_run(const walk_params *p, char *err, size_t err_len)
{
    walker w = {.p = p, .err = err, .err_len = err_len, .m = p->m,
                .row = (size_t)p->cal->ctx * (size_t)p->m->cfg.dim};
    int rc = agreed(&w, walk_setup(&w));
    for (int l = 0; !rc && l < w.m->cfg.n_layers; l++) rc = step_layer(&w, l);
    if (!rc) rc = step_head(&w);
    hess_layer_free(&w.hl);
    rt_state_free(w.s);
    free(w.hs), free(w.hs_in), free(w.owner);
    return rc;
}
