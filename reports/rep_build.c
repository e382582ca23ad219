/*
 * reports/rep_build.c — works out what a report says, once, from a db_report: the
 * option of the heat map, the error curves (per layer, or per bin of layers for deep
 * models), the plan whose allocation is drawn, the sweep and its measured points,
 * the VRAM terms, and the notes on whatever is missing. The writers only render
 * this; they never choose or aggregate, so every format carries the same numbers.
 * It calls no writer (rep_write.c does); the writers call its small helpers
 * (rep_tensor_bpw, rep_tensor_at, rep_plan_eval). Never reads the database, never
 * prints.
 */
#include "rep_int.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void rep_params_init(rep_params *p)
{
    memset(p, 0, sizeof *p);
    p->format = REP_HTML;
    p->bpw = 4.0;
}

double rep_tensor_bpw(const db_report *d, int tensor, int64_t bits)
{
    const db_rep_tensor *t = &d->tensors[tensor];
    return (double)bits / ((double)t->rows * (double)t->cols);
}

int rep_n_notes(const rep_report *r) { return r->n_notes; }
const char *rep_note(const rep_report *r, int i) { return r->notes[i]; }

static void note(rep_report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(rep_report *r, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char **v = realloc(r->notes, (size_t)(r->n_notes + 1) * sizeof *v);
    if (!v) return;
    r->notes = v;
    if ((v[r->n_notes] = strdup(msg))) r->n_notes++;
}

/* ==== Shape of the model ==== */

static int shape(rep_report *r)
{
    const db_report *d = r->d;
    int seen[LAY_N_CLASSES] = {0};
    r->t_cls = malloc((size_t)(d->n_tensors + 1) * sizeof *r->t_cls);
    if (!r->t_cls) return -1;
    for (int t = 0; t < d->n_tensors; t++) {
        int c = lay_class_of_name(d->tensors[t].cls);
        r->t_cls[t] = c < 0 ? LAY_HEAD : c;
        seen[r->t_cls[t]] = 1;
        if (d->tensors[t].layer < 0) r->has_head = 1;
        else if (d->tensors[t].layer + 1 > r->n_layers) r->n_layers = d->tensors[t].layer + 1;
    }
    for (int c = 0; c < LAY_N_CLASSES; c++)
        if (seen[c]) r->cls[r->n_cls++] = c;
    size_t cells = (size_t)(r->n_layers + 1) * LAY_N_CLASSES;
    if (!(r->grid = malloc(cells * sizeof *r->grid))) return -1;
    for (size_t i = 0; i < cells; i++) r->grid[i] = -1;
    for (int t = d->n_tensors - 1; t >= 0; t--) {
        int l = d->tensors[t].layer < 0 ? r->n_layers : d->tensors[t].layer;
        r->grid[l * LAY_N_CLASSES + r->t_cls[t]] = t;
    }
    return 0;
}

int rep_tensor_at(const rep_report *r, int layer, int cls)
{
    return r->grid[(layer < 0 ? r->n_layers : layer) * LAY_N_CLASSES + cls];
}

/* ==== Sensitivity ==== */

static void option_bpw(rep_report *r)
{
    const db_report *d = r->d;
    double *bits = calloc((size_t)d->n_options + 1, sizeof *bits), *w = calloc((size_t)d->n_options + 1, sizeof *w);
    for (int i = 0; bits && w && i < d->n_meas; i++) {
        const db_rep_meas *m = &d->meas[i];
        bits[m->option] += (double)m->bits;
        w[m->option] += (double)d->tensors[m->tensor].rows * (double)d->tensors[m->tensor].cols;
        r->opt_n[m->option]++;
    }
    for (int o = 0; o < d->n_options; o++) r->opt_bpw[o] = bits && w && w[o] > 0 ? bits[o] / w[o] : NAN;
    free(bits);
    free(w);
}

static void choose_option(rep_report *r)
{
    const db_report *d = r->d;
    r->sel = -1;
    for (int o = 0; o < d->n_options; o++) {
        if (isnan(r->opt_bpw[o])) continue;
        double dist = fabs(r->opt_bpw[o] - r->p.bpw);
        if (r->sel < 0 || dist < fabs(r->opt_bpw[r->sel] - r->p.bpw) - 1e-12 ||
            (fabs(dist - fabs(r->opt_bpw[r->sel] - r->p.bpw)) <= 1e-12 && r->opt_n[o] > r->opt_n[r->sel]))
            r->sel = o;
    }
}

static void selected_errors(rep_report *r)
{
    const db_report *d = r->d;
    for (int t = 0; t < d->n_tensors; t++) r->sel_meas[t] = -1;
    int *has = calloc((size_t)d->n_tensors + 1, sizeof *has);
    r->err_lo = INFINITY, r->err_hi = -INFINITY;
    for (int i = 0; i < d->n_meas; i++) {
        const db_rep_meas *m = &d->meas[i];
        if (has && !has[m->tensor]++) r->n_measured++;
        if (m->option != r->sel) continue;
        r->sel_meas[m->tensor] = i;
        if (m->rel_err > 0) {
            r->err_lo = fmin(r->err_lo, m->rel_err);
            r->err_hi = fmax(r->err_hi, m->rel_err);
        }
    }
    free(has);
    if (!(r->err_lo <= r->err_hi)) r->err_lo = r->err_hi = NAN;
    else if (r->err_hi <= r->err_lo * 1.0001) r->err_lo /= 2, r->err_hi *= 2;
}

static void top_tensors(rep_report *r)
{
    const db_report *d = r->d;
    r->n_top = 0;
    for (int t = 0; t < d->n_tensors; t++) {
        if (r->sel_meas[t] < 0) continue;
        double e = d->meas[r->sel_meas[t]].rel_err;
        int at = r->n_top < 5 ? r->n_top++ : 5;
        while (at > 0 && d->meas[r->sel_meas[r->top[at - 1]]].rel_err < e) {
            if (at < 5) r->top[at] = r->top[at - 1];
            at--;
        }
        if (at < 5) r->top[at] = t;
    }
}

typedef struct { double bpw, err; } pt;

static int pt_cmp(const void *a, const void *b)
{
    const pt *x = a, *y = b;
    if (x->bpw != y->bpw) return x->bpw < y->bpw ? -1 : 1;
    return (x->err > y->err) - (x->err < y->err);
}

/* Sorts pts and keeps the lower envelope: each kept point beats every cheaper one. */
static int envelope(pt *pts, int n)
{
    qsort(pts, (size_t)n, sizeof *pts, pt_cmp);
    int k = 0;
    for (int i = 0; i < n; i++)
        if (pts[i].err > 0 && (k == 0 || pts[i].err < pts[k - 1].err)) pts[k++] = pts[i];
    return k;
}

static int dbl_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, dbl_cmp);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* The curve of class c over layers [lo, hi]: per option, the median bpw and error
 * of the class's tensors there (the values themselves for one tensor), then the
 * envelope. */
static int make_curve(rep_report *r, int c, int lo, int hi, rep_curve *cv)
{
    const db_report *d = r->d;
    int no = d->n_options, cap = 0, n_t = 0;
    *cv = (rep_curve){c, lo, hi, -1, 0, NULL, NULL};
    for (int t = 0; t < d->n_tensors; t++)
        if (r->t_cls[t] == c && d->tensors[t].layer >= lo && d->tensors[t].layer <= hi) n_t++, cv->tensor = t;
    if (n_t != 1) cv->tensor = -1;
    for (int i = 0; i < d->n_meas; i++) {
        int t = d->meas[i].tensor, l = d->tensors[t].layer;
        cap += r->t_cls[t] == c && l >= lo && l <= hi;
    }
    if (cap == 0) return 0;
    pt *pts = malloc((size_t)no * sizeof *pts);
    double *xb = malloc((size_t)cap * sizeof *xb), *ye = malloc((size_t)cap * sizeof *ye);
    int n = 0;
    for (int o = 0; pts && xb && ye && o < no; o++) {
        int k = 0;
        for (int i = 0; i < d->n_meas; i++) {
            const db_rep_meas *m = &d->meas[i];
            int l = d->tensors[m->tensor].layer;
            if (m->option != o || r->t_cls[m->tensor] != c || l < lo || l > hi) continue;
            xb[k] = rep_tensor_bpw(d, m->tensor, m->bits), ye[k++] = m->rel_err;
        }
        if (k) pts[n++] = (pt){median(xb, k), median(ye, k)};
    }
    n = pts && xb && ye ? envelope(pts, n) : 0;
    cv->bpw = malloc((size_t)(n + 1) * sizeof(double));
    cv->err = malloc((size_t)(n + 1) * sizeof(double));
    for (int i = 0; cv->bpw && cv->err && i < n; i++) cv->bpw[i] = pts[i].bpw, cv->err[i] = pts[i].err;
    cv->n = cv->bpw && cv->err ? n : 0;
    free(pts), free(xb), free(ye);
    return cv->bpw && cv->err ? 0 : -1;
}

static int curves(rep_report *r)
{
    int L = r->n_layers, bins = L, width = 1;
    r->binned = L > REP_MAX_LAYER_LINES;
    if (r->binned) width = (L + 11) / 12, bins = (L + width - 1) / width;
    r->curves = calloc((size_t)(r->n_cls * (bins + 1)) + 1, sizeof *r->curves);
    if (!r->curves) return -1;
    r->curve_bpw_lo = r->curve_err_lo = INFINITY, r->curve_bpw_hi = r->curve_err_hi = -INFINITY;
    for (int ci = 0; ci < r->n_cls; ci++) {
        int c = r->cls[ci];
        for (int b = 0; b < (c == LAY_HEAD ? 1 : bins); b++) {
            int lo = c == LAY_HEAD ? -1 : b * width, hi = c == LAY_HEAD ? -1 : (b + 1) * width - 1;
            rep_curve *cv = &r->curves[r->n_curves];
            if (make_curve(r, c, lo, hi < L ? hi : L - 1, cv)) return -1;
            if (cv->n == 0) { free(cv->bpw), free(cv->err); continue; }
            r->n_curves++;
            for (int i = 0; i < cv->n; i++) {
                r->curve_bpw_lo = fmin(r->curve_bpw_lo, cv->bpw[i]), r->curve_bpw_hi = fmax(r->curve_bpw_hi, cv->bpw[i]);
                r->curve_err_lo = fmin(r->curve_err_lo, cv->err[i]), r->curve_err_hi = fmax(r->curve_err_hi, cv->err[i]);
            }
        }
    }
    return 0;
}

static int sensitivity(rep_report *r)
{
    const db_report *d = r->d;
    r->opt_bpw = calloc((size_t)d->n_options + 1, sizeof *r->opt_bpw);
    r->opt_n = calloc((size_t)d->n_options + 1, sizeof *r->opt_n);
    r->sel_meas = calloc((size_t)d->n_tensors + 1, sizeof *r->sel_meas);
    r->meas_at = malloc(((size_t)d->n_tensors * (size_t)d->n_options + 1) * sizeof *r->meas_at);
    if (!r->opt_bpw || !r->opt_n || !r->sel_meas || !r->meas_at) return -1;
    for (size_t i = 0; i < (size_t)d->n_tensors * (size_t)d->n_options; i++) r->meas_at[i] = -1;
    for (int i = 0; i < d->n_meas; i++) r->meas_at[(size_t)d->meas[i].tensor * (size_t)d->n_options + (size_t)d->meas[i].option] = i;
    option_bpw(r);
    choose_option(r);
    selected_errors(r);
    top_tensors(r);
    if (d->n_meas == 0)
        note(r, "calibration %lld has no measurements: sensitivity charts left out (run bitplan measure)", (long long)d->calib_id);
    else if (r->n_measured < d->n_tensors)
        note(r, "%d of %d tensors measured (calibration %lld is %s)", r->n_measured, d->n_tensors,
             (long long)d->calib_id, d->calib_status);
    return curves(r);
}

/* ==== Plans ==== */

int rep_plan_eval(const rep_report *r, int plan, int want_kld)
{
    const db_report *d = r->d;
    for (int i = d->n_evals - 1; i >= 0; i--)
        if (d->evals[i].plan == plan && (!want_kld || !isnan(d->evals[i].kld))) return i;
    return -1;
}

static int newest_plan(const db_report *d, const char *kind, int with_choices)
{
    for (int i = d->n_plans - 1; i >= 0; i--)
        if ((!kind || !strcmp(d->plans[i].row.kind, kind)) && (!with_choices || d->plans[i].n_choices)) return i;
    return -1;
}

static int find_plan(const db_report *d, int64_t id)
{
    for (int i = 0; i < d->n_plans; i++)
        if (d->plans[i].row.id == id) return i;
    return -1;
}

static int allocation(rep_report *r, int chosen)
{
    const db_report *d = r->d;
    r->alloc = chosen >= 0 ? chosen : newest_plan(d, "bpw", 1);
    if (r->alloc < 0) r->alloc = newest_plan(d, NULL, 1);
    r->alloc_choice = malloc((size_t)(d->n_tensors + 1) * sizeof *r->alloc_choice);
    if (!r->alloc_choice) return -1;
    for (int t = 0; t < d->n_tensors; t++) r->alloc_choice[t] = -1;
    if (d->n_plans == 0) note(r, "no plans for calibration %lld: allocation, Pareto and VRAM sections left out (run bitplan allocate)", (long long)d->calib_id);
    else if (r->alloc < 0) note(r, "no plan has choices recorded: allocation left out");
    else if (d->plans[r->alloc].n_choices == 0) note(r, "plan %lld has no choices recorded: allocation left out", (long long)d->plans[r->alloc].row.id);
    if (r->alloc < 0) return 0;
    const db_rep_plan *p = &d->plans[r->alloc];
    for (int i = 0; i < p->n_choices; i++) r->alloc_choice[p->choices[i].tensor] = i;
    int stored = 0;
    for (int t = 0; t < d->n_tensors; t++) stored += rep_as_stored(r, t);
    if (stored)
        note(r, "plan %lld keeps %d of %d tensors as stored: the source's own blocks, copied, at a measured error "
             "of zero (marked in the allocation)", (long long)p->row.id, stored, p->n_choices);
    return 0;
}

int rep_as_stored(const rep_report *r, int t)
{
    const db_report *d = r->d;
    if (r->alloc < 0 || r->alloc_choice[t] < 0) return 0;
    int o = d->plans[r->alloc].choices[r->alloc_choice[t]].option;
    int m = r->meas_at[(size_t)t * (size_t)d->n_options + (size_t)o];
    return lay_option_ggml(&d->options[o].opt) >= 0 && m >= 0 && d->meas[m].rel_err == 0.0;
}

static const db_report *cmp_data;
static int plan_bpw_cmp(const void *a, const void *b)
{
    const db_rep_plan *x = &cmp_data->plans[*(const int *)a], *y = &cmp_data->plans[*(const int *)b];
    if (x->row.achieved_bpw != y->row.achieved_bpw) return x->row.achieved_bpw < y->row.achieved_bpw ? -1 : 1;
    return (x->row.id > y->row.id) - (x->row.id < y->row.id);
}

/* Ranks of v[n] (1-based), ties sharing their mean rank. */
static void ranks(const double *v, int n, double *rank)
{
    for (int i = 0; i < n; i++) {
        int below = 0, same = 0;
        for (int k = 0; k < n; k++) below += v[k] < v[i], same += v[k] == v[i];
        rank[i] = below + (same + 1) / 2.0;
    }
}

/* Spearman's rho of (x[i], y[i]): the Pearson correlation of their ranks; NAN if
 * either is constant. */
static double spearman(const double *x, const double *y, int n, double *rx, double *ry)
{
    ranks(x, n, rx), ranks(y, n, ry);
    double m = (n + 1) / 2.0, sxy = 0, sxx = 0, syy = 0;
    for (int i = 0; i < n; i++) sxy += (rx[i] - m) * (ry[i] - m), sxx += (rx[i] - m) * (rx[i] - m), syy += (ry[i] - m) * (ry[i] - m);
    return sxx > 0 && syy > 0 ? sxy / sqrt(sxx * syy) : NAN;
}

/* How well the measurement predicts: over the sweep's plans whose objective is KL
 * divergence and that were evaluated, the rank correlation of predicted and
 * measured KL, and the range of measured / predicted. */
static int prediction_quality(rep_report *r)
{
    const db_report *d = r->d;
    double *v = malloc((size_t)(4 * r->n_sweep + 1) * sizeof *v), lo = INFINITY, hi = 0;
    if (!v) return -1;
    double *pred = v, *meas = v + r->n_sweep, *rp = v + 2 * r->n_sweep, *rm = v + 3 * r->n_sweep;
    int n = 0;
    for (int i = 0; i < r->n_sweep; i++) {
        const db_rep_plan *p = &d->plans[r->sweep_plans[i]];
        int e = r->sweep_kld_eval[i];
        if (e < 0 || strcmp(p->row.metric, "kld") || !(p->row.objective > 0)) continue;
        pred[n] = p->row.objective, meas[n] = d->evals[e].kld;
        lo = fmin(lo, meas[n] / pred[n]), hi = fmax(hi, meas[n] / pred[n]), n++;
    }
    r->n_ranked = n;
    r->spearman = n >= 3 ? spearman(pred, meas, n, rp, rm) : NAN;
    free(v);
    if (n >= 3)
        note(r, "sweep '%s': predicted and measured KL divergence rank with Spearman rho %.3f over %d plans; measured / "
             "predicted %.2f to %.2f", r->sweep, r->spearman, n, lo, hi);
    return 0;
}

static int pareto(rep_report *r, int chosen)
{
    const db_report *d = r->d;
    r->base_eval = rep_plan_eval(r, -1, 0);   /* plan -1: the unquantized model */
    r->spearman = NAN;
    if (chosen >= 0 && d->plans[chosen].row.sweep[0]) r->sweep = d->plans[chosen].row.sweep;
    for (int i = d->n_plans - 1; i >= 0 && !r->sweep; i--)
        if (d->plans[i].row.sweep[0]) r->sweep = d->plans[i].row.sweep;
    r->sweep_plans = malloc((size_t)(d->n_plans + 1) * sizeof(int));
    r->sweep_kld_eval = malloc((size_t)(d->n_plans + 1) * sizeof(int));
    r->sweep_ppl_eval = malloc((size_t)(d->n_plans + 1) * sizeof(int));
    if (!r->sweep_plans || !r->sweep_kld_eval || !r->sweep_ppl_eval) return -1;
    if (!r->sweep) {
        if (d->n_plans) note(r, "no sweep: no plans share a sweep label, Pareto curve left out (run bitplan allocate --sweep)");
        return 0;
    }
    for (int i = 0; i < d->n_plans; i++)
        if (!strcmp(d->plans[i].row.sweep, r->sweep)) r->sweep_plans[r->n_sweep++] = i;
    cmp_data = d;
    qsort(r->sweep_plans, (size_t)r->n_sweep, sizeof(int), plan_bpw_cmp);
    int measured = 0;
    for (int i = 0; i < r->n_sweep; i++) {
        r->sweep_kld_eval[i] = rep_plan_eval(r, r->sweep_plans[i], 1);
        r->sweep_ppl_eval[i] = rep_plan_eval(r, r->sweep_plans[i], 0);
        measured += r->sweep_ppl_eval[i] >= 0;
    }
    if (r->n_sweep < 2) note(r, "sweep '%s' has only one plan", r->sweep);
    if (!measured) note(r, "no evaluations of the plans of sweep '%s': measured KL divergence and perplexity left out (run bitplan eval --db)", r->sweep);
    return prediction_quality(r);
}

static int is_stacked_term(const char *name)
{
    return strcmp(name, "budget") && strncmp(name, "total", 5);
}

static int vram(rep_report *r, int chosen)
{
    const db_report *d = r->d;
    r->vram = chosen >= 0 && !strcmp(d->plans[chosen].row.kind, "vram") ? chosen : newest_plan(d, "vram", 0);
    r->budget = r->vtotal = NAN;
    if (r->vram < 0) return 0;
    const db_rep_plan *p = &d->plans[r->vram];
    r->vterms = malloc((size_t)(p->n_terms + 1) * sizeof *r->vterms);
    if (!r->vterms) return -1;
    if (!p->memory_ok) {
        note(r, "VRAM plan %lld has no readable memory_json: memory breakdown left out", (long long)p->row.id);
        return 0;
    }
    r->vtotal = 0;
    for (int i = 0; i < p->n_terms; i++) {
        if (!strcmp(p->terms[i].name, "budget")) r->budget = p->terms[i].bytes;
        if (!is_stacked_term(p->terms[i].name)) continue;
        r->vterms[r->n_vterms++] = i;
        r->vtotal += p->terms[i].bytes;
    }
    if (isnan(r->budget) && p->row.target > 0) r->budget = p->row.target;
    return 0;
}

/* ==== Public ==== */

int rep_build(const db_report *data, const rep_params *p, rep_report **out, char *err, size_t err_len)
{
    *out = NULL;
    int chosen = p->plan_id ? find_plan(data, p->plan_id) : -1;
    if (p->plan_id && chosen < 0) {
        snprintf(err, err_len, "plan %lld is not a plan of calibration %lld", (long long)p->plan_id, (long long)data->calib_id);
        return -1;
    }
    if (data->n_meas == 0 && data->n_plans == 0 && data->n_evals == 0) {
        snprintf(err, err_len, "nothing to report: calibration %lld has no measurements, plans or evaluations (run bitplan measure)",
                 (long long)data->calib_id);
        return -1;
    }
    rep_report *r = calloc(1, sizeof *r);
    if (!r) { snprintf(err, err_len, "out of memory"); return -1; }
    r->d = data;
    r->p = *p;
    if (shape(r) || sensitivity(r) || allocation(r, chosen) || pareto(r, chosen) || vram(r, chosen)) {
        rep_report_free(r);
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    if (data->n_evals == 0) note(r, "no evaluations recorded (run bitplan eval --db)");
    *out = r;
    return 0;
}

void rep_report_free(rep_report *r)
{
    if (!r) return;
    for (int i = 0; i < r->n_notes; i++) free(r->notes[i]);
    for (int i = 0; i < r->n_curves; i++) free(r->curves[i].bpw), free(r->curves[i].err);
    free(r->notes), free(r->t_cls), free(r->grid), free(r->opt_bpw), free(r->opt_n), free(r->sel_meas), free(r->meas_at), free(r->curves);
    free(r->alloc_choice), free(r->sweep_plans), free(r->sweep_kld_eval), free(r->sweep_ppl_eval), free(r->vterms);
    free(r);
}
