/*
 * allocate/from_db.c — turning a calibration read from the database into an
 * allocation problem: one problem tensor per model tensor, one option per
 * measurement, damage by the chosen metric, ties within layers, per-class bounds and
 * the head rule. Reads the db/ structs only; never opens the database or prints.
 */
#include "alloc_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void alloc_setup_init(alloc_setup *s)
{
    memset(s, 0, sizeof *s);
    s->metric = ALLOC_METRIC_AUTO;
    s->weight_by_size = 1;
    for (int c = 0; c < LAY_N_CLASSES; c++) s->min_bpw[c] = 0, s->max_bpw[c] = HUGE_VAL;
    s->head_bits = -1;
}

void alloc_built_free(alloc_built *b)
{
    alloc_problem_free(b->p);
    free(b->in_tensor), free(b->first_meas);
    memset(b, 0, sizeof *b);
}

/* The probe of each input tensor (index into in->probes), or -1. */
static int *probe_index(const db_alloc_input *in)
{
    int *pi = malloc(((size_t)in->n_tensors + 1) * sizeof *pi);
    if (!pi) return NULL;
    for (int t = 0; t < in->n_tensors; t++) pi[t] = -1;
    for (int k = 0; k < in->n_probes; k++)
        if (in->probes[k].rel_err > 0 && in->probes[k].kld >= 0) pi[in->probes[k].tensor] = k;
    return pi;
}

/* Decides the metric: kld needs a usable probe for every tensor. */
static int pick_metric(const db_alloc_input *in, const alloc_setup *s, const int *pi, alloc_built *b, char *err, size_t err_len)
{
    int missing = 0;
    for (int t = 0; t < in->n_tensors; t++) missing += pi[t] < 0;
    b->metric = s->metric;
    if (s->metric == ALLOC_METRIC_KLD && missing) {
        snprintf(err, err_len, "metric kld needs a KL probe of every tensor; %d of %d have none (measure with --kl-probe)",
                 missing, in->n_tensors);
        return -1;
    }
    if (s->metric == ALLOC_METRIC_AUTO) {
        b->metric = missing ? ALLOC_METRIC_REL_ERR : ALLOC_METRIC_KLD;
        if (missing && missing < in->n_tensors)
            snprintf(b->note, sizeof b->note, "metric rel_err: %d of %d tensors have no KL probe", missing, in->n_tensors);
    }
    return 0;
}

/* Adds tensor i of the input with all its measured options. */
static int add_tensor(const db_alloc_input *in, int i, int64_t m0, int64_t m1, const int *pi, double mean_w,
                      const alloc_setup *s, alloc_built *b)
{
    const db_alloc_tensor *dt = &in->tensors[i];
    int cls = lay_class_of_name(dt->cls);
    int is_head = cls == LAY_HEAD;
    int64_t nw = dt->rows * dt->cols;
    int t = alloc_add_tensor(b->p, cls < 0 ? LAY_HEAD : (lay_class)cls, dt->layer, nw, !is_head || s->head_in_budget);
    if (t < 0) return -1;
    b->in_tensor[t] = i, b->first_meas[t] = m0;
    for (int64_t k = m0; k < m1; k++) {
        const db_alloc_meas *m = &in->meas[k];
        double e = m->rel_err > 0 && isfinite(m->rel_err) ? m->rel_err : 0;
        double dmg = b->metric == ALLOC_METRIC_KLD ? alloc_damage_kld(e, in->probes[pi[i]].kld, in->probes[pi[i]].rel_err)
                                                   : alloc_damage_rel_err(e, nw, s->weight_by_size ? mean_w : 0);
        if (alloc_add_option(b->p, t, m->option_id, m->bits > 0 ? m->bits : 1, dmg) < 0) return -1;
    }
    if (is_head) b->head = t;
    else b->block_weights += nw;
    b->planned_weights += nw;
    return 0;
}

/* The head rule for a bpw target: pin the cheapest option with bpw >= head_bits.
 * Unset, head_bits is 6 and a head whose options all fall short gets its dearest;
 * asked for explicitly, a width no option reaches is an error, not a silent cap. */
static int pin_head(const db_alloc_input *in, alloc_built *b, const alloc_setup *s, char *err, size_t err_len)
{
    alloc_problem *p = b->p;
    int h = b->head, best = -1, dearest = 0;
    double want = s->head_bits >= 0 ? s->head_bits : 6.0, nw = (double)alloc_tensor_weights(p, h);
    for (int k = 0; k < alloc_n_options(p, h); k++) {
        int64_t bits = alloc_option_bits(p, h, k);
        if (bits > alloc_option_bits(p, h, dearest)) dearest = k;
        if ((double)bits / nw >= want - 1e-12 && (best < 0 || bits < alloc_option_bits(p, h, best) ||
            (bits == alloc_option_bits(p, h, best) && alloc_option_damage(p, h, k) < alloc_option_damage(p, h, best))))
            best = k;
    }
    if (best < 0 && s->head_bits >= 0)
        return snprintf(err, err_len, "no option of the head (%s) has %g bits per weight or more (the widest has %.2f)",
                        in->tensors[b->in_tensor[h]].name, s->head_bits, (double)alloc_option_bits(p, h, dearest) / nw), -1;
    alloc_fix_option(p, h, best >= 0 ? best : dearest);
    return 0;
}

/* Ties: tensors of one layer whose classes are in one set share an option. */
static int add_ties(alloc_built *b, const alloc_setup *s)
{
    alloc_problem *p = b->p;
    int *group = malloc(((size_t)b->n + 1) * sizeof *group);
    if (!group) return -1;
    for (int k = 0; k < s->n_ties; k++)
        for (int t = 0; t < b->n; t++) {
            if (!(s->ties[k] >> alloc_tensor_class(p, t) & 1u)) continue;
            int n = 0, layer = p->t[t].layer, first = 1;
            for (int u = 0; u < b->n; u++) {
                if (p->t[u].layer != layer || !(s->ties[k] >> alloc_tensor_class(p, u) & 1u)) continue;
                if (u < t) { first = 0; break; } /* the group was tied at its first member */
                group[n++] = u;
            }
            if (first && n > 1) alloc_tie(p, group, n);
        }
    free(group);
    return 0;
}

int alloc_build_from_db(const db_alloc_input *in, const alloc_setup *s, alloc_built *b, char *err, size_t err_len)
{
    memset(b, 0, sizeof *b);
    b->head = -1;
    if (in->n_tensors == 0) { snprintf(err, err_len, "calibration %lld has no tensors", (long long)in->calib_id); return -1; }
    int *pi = probe_index(in);
    b->p = alloc_problem_new();
    b->in_tensor = malloc((size_t)in->n_tensors * sizeof *b->in_tensor);
    b->first_meas = malloc((size_t)in->n_tensors * sizeof *b->first_meas);
    if (!pi || !b->p || !b->in_tensor || !b->first_meas) { snprintf(err, err_len, "out of memory"); goto fail; }
    if (pick_metric(in, s, pi, b, err, err_len)) goto fail;
    double mean_w = 0;
    for (int i = 0; i < in->n_tensors; i++) mean_w += (double)(in->tensors[i].rows * in->tensors[i].cols) / in->n_tensors;
    int64_t m = 0;
    for (int i = 0; i < in->n_tensors; i++) {
        int64_t m0 = m;
        while (m < in->n_meas && in->meas[m].tensor == i) m++;
        if (m == m0) {
            snprintf(err, err_len, "tensor %s has no measurement in calibration %lld (%s)", in->tensors[i].name,
                     (long long)in->calib_id, strcmp(in->status, "done") ? "the measurement is not finished" : "measure it");
            goto fail;
        }
        if (add_tensor(in, i, m0, m, pi, mean_w, s, b)) { snprintf(err, err_len, "out of memory"); goto fail; }
    }
    b->n = alloc_n_tensors(b->p);
    for (int t = 0; t < b->n; t++) {
        lay_class c = alloc_tensor_class(b->p, t);
        alloc_limit_bpw(b->p, t, s->min_bpw[c], s->max_bpw[c]);
    }
    if (b->head >= 0 && !s->head_in_budget) {
        if (pin_head(in, b, s, err, err_len)) goto fail;
    } else if (b->head >= 0 && s->head_bits >= 0)
        alloc_limit_bpw(b->p, b->head, s->head_bits, HUGE_VAL);
    if (add_ties(b, s)) { snprintf(err, err_len, "out of memory"); goto fail; }
    free(pi);
    return 0;
fail:
    free(pi);
    alloc_built_free(b);
    return -1;
}
