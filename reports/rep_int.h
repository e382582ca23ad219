/*
 * reports/rep_int.h — what the files of reports/ share: the worked-out content of a
 * report (rep_build fills it once; every writer renders the same numbers from it),
 * number formatting, colours and the SVG chart helpers. Internal to reports/.
 */
#ifndef BITPLAN_REP_INT_H
#define BITPLAN_REP_INT_H

#include "layout/layout.h"
#include "reports.h"

extern const char *const rep_class_colors[LAY_N_CLASSES]; /* by lay_class */

/* Above this many layers, charts bin layers instead of drawing one mark each. */
#define REP_MAX_LAYER_LINES 48

/* One error-vs-bpw curve: the lower envelope of a tensor's (or a bin's) options. */
typedef struct {
    int cls;
    int layer_lo, layer_hi;     /* one layer, or a bin of layers */
    int tensor;                 /* the tensor, -1 for a bin */
    int n;
    double *bpw, *err;          /* by bpw ascending, err strictly descending */
} rep_curve;

struct rep_report {
    const db_report *d;         /* borrowed: outlives the report */
    rep_params p;
    char **notes;
    int n_notes;

    int n_layers, has_head;     /* layers 0 .. n_layers-1; a head tensor (layer -1) */
    int n_cls, cls[LAY_N_CLASSES];  /* classes present, canonical order */
    int *t_cls;                 /* [n_tensors] class index */
    int n_measured;             /* tensors with at least one measurement */
    int *grid;                  /* [(n_layers + 1) * LAY_N_CLASSES] tensor at (layer, class), -1; head row last */

    /* Sensitivity. */
    double *opt_bpw;            /* [n_options] bits / weights over tensors measured with it; NAN if none */
    int *opt_n;                 /* [n_options] tensors measured with it */
    int sel;                    /* option index of the heat map, -1 if nothing measured */
    int *meas_at;               /* [n_tensors * n_options] measurement index, -1 */
    int *sel_meas;              /* [n_tensors] measurement index at sel, -1 if none */
    double err_lo, err_hi;      /* colour range of the heat map (positive) */
    int n_curves;
    rep_curve *curves;
    int binned;                 /* curves are over bins of layers */
    double curve_bpw_lo, curve_bpw_hi, curve_err_lo, curve_err_hi;
    int top[5], n_top;          /* tensors with the largest error at sel */

    /* Allocation. */
    int alloc;                  /* plan index, -1 */
    int *alloc_choice;          /* [n_tensors] choice index in that plan, -1 */

    /* Pareto. */
    const char *sweep;          /* label, NULL if none */
    int n_sweep;
    int *sweep_plans;           /* plan indices by achieved bpw */
    int *sweep_kld_eval, *sweep_ppl_eval;   /* eval index per sweep plan, -1 */
    int base_eval;              /* eval of the unquantized model, -1 */
    double spearman;            /* rank correlation of predicted (a 'kld' objective) and
                                   measured KL divergence over the sweep, NAN if < 3 points */
    int n_ranked;               /* the points it ranks */

    /* VRAM. */
    int vram;                   /* plan index, -1 */
    int n_vterms;
    int *vterms;                /* indices into that plan's terms: the stacked ones */
    double budget, vtotal;      /* NAN if absent */
};

/* Tensor index at (layer, class) (layer -1: the head row), or -1. */
int rep_tensor_at(const rep_report *r, int layer, int cls);
/* bits / (rows * cols) of tensor t. */
double rep_tensor_bpw(const db_report *d, int tensor, int64_t bits);
int rep_plan_eval(const rep_report *r, int plan, int want_kld); /* newest eval of a plan, -1 */
/* 1 if the allocation keeps tensor t as stored: a ggml type measured at zero error
 * (the source's own blocks, measure/driver.c's invariant 7). */
int rep_as_stored(const rep_report *r, int t);

/* ==== Numbers ==== */
const char *rep_exact(char out[32], double v);            /* round-trips */
const char *rep_sig(char out[32], double v, int digits);  /* for people; "–" for NaN */
const char *rep_bytes(char out[32], double bytes);        /* "1.50 GiB" */

/* ==== Colours ==== */
void rep_heat_color(double t, char out[8]);   /* t in [0,1]: pale yellow to dark red */
void rep_depth_color(double t, char out[8]);  /* t in [0,1]: dark blue to yellow-green */
const char *rep_term_color(const char *name, int i);

/* ==== Charts (rep_svg.c): each appends one <svg> (or a note) ==== */
sb_buf *rep_svg_heatmap(sb_buf *b, const rep_report *r);
sb_buf *rep_svg_curves(sb_buf *b, const rep_report *r);
sb_buf *rep_svg_allocation(sb_buf *b, const rep_report *r);
sb_buf *rep_svg_pareto(sb_buf *b, const rep_report *r);
sb_buf *rep_svg_vram(sb_buf *b, const rep_report *r);

/* ==== Writers ==== */
sb_buf *rep_write_html(sb_buf *b, const rep_report *r);
sb_buf *rep_write_md(sb_buf *b, const rep_report *r);
sb_buf *rep_write_csv(sb_buf *b, const rep_report *r);
sb_buf *rep_write_json(sb_buf *b, const rep_report *r);

#endif
