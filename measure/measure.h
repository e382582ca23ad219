/*
 * measure/ — how much each linear layer suffers under each candidate quantization.
 *
 *   Hessians   H = 2/n * sum x x^T of each input group's calibration inputs
 *              (q/k/v share one, gate/up share one), accumulated in double.
 *   GPTQ       the quantizer: act-order, damping, lazy block updates, groups and
 *              mixed widths; also used by pack/ to write the chosen option.
 *   Options    the candidate set, as data (a default table, or a user's file).
 *   Driver     the resumable measurement pass that fills the database.
 *
 * Uses runtime/ (the forward pass and its observer), layout/layout.h (options and
 * their exact cost) and db/. Never prints from the numeric code.
 */
#ifndef BITPLAN_MEASURE_H
#define BITPLAN_MEASURE_H

#include <stddef.h>
#include <stdint.h>

#include "layout/layout.h"
#include "runtime/runtime.h"

/* ==== GPTQ ==== */

typedef struct {
    double damp;        /* lambda: adds damp * mean(diag H) to the diagonal (default 0.01) */
    int act_order;      /* 1: columns by diag(H) descending (default 1) */
    int block;          /* lazy-update block size (default 128) */
    int fast_error;     /* 0 (default): rel_err by a float syrk over dW (rows x cols^2),
                           bit for bit gptq_relative_error's; rtn_error_prepared's by a
                           double syrk, bit for bit the rtn_quantize path's. 1: GPTQ's
                           rel_err from its own scaled errors (rows x cols; within 1e-10
                           of a double-precision trace where the float syrk is within
                           ~1e-6), RTN's by a float syrk (half the time, ~1e-7). The
                           quantized tensors are the same either way */
    int borrow_h;       /* 1: gptq_prepare keeps a pointer to h instead of a copy (8 cols^2
                           bytes less: 969 MB at 11008 columns); h must then stay unchanged
                           until gptq_prep_free. 0 (default): a copy */
} gptq_params;
void gptq_params_init(gptq_params *p);

typedef struct {
    double rel_err;     /* tr(dW H dW^T) / tr(W H W^T), with the undamped H */
    double seconds;
    double damp;        /* lambda actually used: p->damp, times 10 per Cholesky retry */
    int damp_retries;   /* Cholesky failures that needed more damping */
    int64_t dead_cols;  /* columns with H_ii = 0 (set to zero before quantizing) */
} gptq_stats;
/* Results (q, perm, scales, zeros, rel_err) are bit-identical between runs with the
 * same inputs and the same BLAS thread count. stats may be NULL: then rel_err is not
 * computed (without fast_error it costs about 40% of the quantization itself). */

/* Quantizes w[rows][cols] (original column order; not modified) under option o,
 * using the Hessian h[cols][cols] (double, symmetric; not modified). Each (row,
 * group)'s scale and zero come from a search over clipped ranges, weighted by
 * diag(H) (gptq.c's header, "the search"). out must be
 * unallocated: this allocates it (lay_qtensor_free releases). Returns 0, or -1 with
 * a message (option does not apply, NaN/Inf in w or h, out of memory,
 * Cholesky failure even after extra damping). */
int gptq_quantize(const float *w, int64_t rows, int64_t cols, const double *h,
                  const lay_option *o, const gptq_params *p, lay_qtensor *out,
                  gptq_stats *stats, char *err, size_t err_len);

/* The same, in two steps, so that every option of a tensor (and every tensor that
 * shares the Hessian, such as q/k/v) pays once for the act-order permutation and
 * the Cholesky factor of the damped inverse Hessian:
 *
 *     gptq_prep *prep;
 *     if (gptq_prepare(h, cols, &p, &prep, err, sizeof err)) ...;
 *     double e = gptq_weight_energy(w, rows, cols, h);      (once per tensor)
 *     for (each option o) {
 *         gptq_quantize_prepared(w, rows, prep, &o, e, &qt, &st, err, sizeof err);
 *         rtn_error_prepared(w, rows, prep, &o, e, &rtn, err, sizeof err);  (if wanted)
 *     }
 *     gptq_prep_free(prep);
 *
 * gptq_prepare copies what it needs from h (h may be freed afterwards; with
 * borrow_h it keeps h itself, which must outlive the prep); a prep is
 * read-only afterwards, so threads may share it. w_energy is tr(W H W^T) from
 * gptq_weight_energy for this w and h, or negative to have it computed here.
 * Results are bit-identical to gptq_quantize with the same inputs.
 *
 * Memory (bytes): a prep holds 16 cols^2 (H and the factor). A quantization holds
 * its qtensor (rows x cols + scales) and 8 rows x cols of working weights, then,
 * without fast_error, 4 cols^2 for the rel_err syrk; rtn_error_prepared 8 cols^2
 * (4 with fast_error); gptq_weight_energy 8 cols^2. */
typedef struct gptq_prep gptq_prep;
int gptq_prepare(const double *h, int64_t cols, const gptq_params *p, gptq_prep **out,
                 char *err, size_t err_len);
int gptq_quantize_prepared(const float *w, int64_t rows, const gptq_prep *prep,
                           const lay_option *o, double w_energy, lay_qtensor *out,
                           gptq_stats *stats, char *err, size_t err_len);
void gptq_prep_free(gptq_prep *prep);

/* What the callers of GPTQ (the measurement, the packer) do for one option. Each
 * option needs some of a Hessian's preparations, its slots: act-order (bitplan's
 * options), column order (ggml block types, which store no permutation), act-order
 * of H' = R^T H R for a rotated option (layout/layout.h, "Input rotations", with
 * LAY_ROT_SEED), or, for an option with input scales (layout.h, "Activation-aware
 * input scales"), one act-order preparation of H' = diag(m) H diag(m) for each
 * alpha of the grid gptq_awq_alpha, with m_j = (H_jj / G)^(-alpha / 2), G the
 * geometric mean of the non-zero diagonal (so the m are about 1), clamped to
 * [GPTQ_AWQ_MIN, 1 / GPTQ_AWQ_MIN] and rounded to fp16; a dead column keeps m 1.
 * gptq_prep_wanted says which slots an option needs; gptq_prepare_slot makes one (a
 * transformed one holds its own copy of H'). gptq_quantize_option then quantizes w
 * under the option with prep[] (indexed by slot; the option's must be there): W' =
 * W R for a rotated one (the result holds W' and its rot_seed), W' = W / m for one
 * with scales, GPTQ at every alpha and the least rel_err kept (the smaller alpha of
 * equals; the result holds its m); with rtn_err non-NULL also RTN's rel_err (of the
 * alpha kept). A transformed option's rel_err is the original space's, since
 * tr(dW' H' dW'^T) = tr(dW H dW^T), so w_energy is W's. */
#define GPTQ_AWQ_ALPHAS 3
enum {
    GPTQ_PREP_ACT, GPTQ_PREP_COLUMNS, GPTQ_PREP_ROT64, GPTQ_PREP_ROT128,
    GPTQ_PREP_AWQ0, /* ... GPTQ_PREP_AWQ0 + GPTQ_AWQ_ALPHAS - 1 */
    GPTQ_PREP_SLOTS = GPTQ_PREP_AWQ0 + GPTQ_AWQ_ALPHAS
};
#define GPTQ_AWQ_MIN (1.0 / 256) /* m within [1/256, 256]: fp16-normal, and no column silenced */
extern const double gptq_awq_alpha[GPTQ_AWQ_ALPHAS];
int gptq_prep_slot(const lay_option *o);             /* the first (or only) slot o needs */
int gptq_prep_wanted(const lay_option *o, int slot); /* 1 if o needs that slot */
int gptq_prepare_slot(const double *h, int64_t cols, int slot, const gptq_params *p, gptq_prep **out, char *err,
                      size_t err_len);
int gptq_quantize_option(const float *w, int64_t rows, gptq_prep *const *prep, const lay_option *o, double w_energy,
                         lay_qtensor *out, gptq_stats *stats, double *rtn_err, char *err, size_t err_len);
/* The fp16 multipliers m[cols] of alpha for the Hessian h (as above). */
void gptq_awq_multipliers(const double *h, int64_t cols, double alpha, uint16_t *m);

/* Round-to-nearest with the same grid (act-order permutation from h, same groups,
 * scales searched the same way): the baseline GPTQ must beat. h may be NULL
 * (identity order, an unweighted search). */
int rtn_quantize(const float *w, int64_t rows, int64_t cols, const double *h,
                 const lay_option *o, lay_qtensor *out, char *err, size_t err_len);
/* RTN's rel_err under option o with the Hessian of prep (act-order by its diagonal),
 * without a qtensor or a dequantized copy: rows are rounded a chunk at a time.
 * Without fast_error, bit for bit what rtn_quantize with the same Hessian, then
 * lay_qtensor_dequant, dW = wq - w in float and gptq_weight_energy(dW) / w_energy
 * give. w_energy as for gptq_quantize_prepared. 0, or -1 with a message. */
int rtn_error_prepared(const float *w, int64_t rows, const gptq_prep *prep, const lay_option *o,
                       double w_energy, double *rel_err, char *err, size_t err_len);

/* tr(dW H dW^T) / tr(W H W^T) for dW = wq - w, both [rows][cols] (0 if both traces
 * are 0, +inf if only the denominator is 0; NaN if out of memory). */
double gptq_relative_error(const float *w, const float *wq, int64_t rows, int64_t cols, const double *h);
/* rel_err of a quantized tensor made elsewhere (a source's own blocks, stored as
 * they are), with prep's Hessian, by the syrk gptq_quantize_prepared uses without
 * fast_error. w_energy as there. 0, or -1 with a message. */
int gptq_error_of(const float *w, const gptq_prep *prep, const lay_qtensor *q, double w_energy, double *rel_err,
                  char *err, size_t err_len);
/* tr(W H W^T), the denominator of rel_err (NaN if out of memory). */
double gptq_weight_energy(const float *w, int64_t rows, int64_t cols, const double *h);

/* ==== Hessians ==== */

/* h[cols][cols] (full, symmetric) += x^T x for the rows x[n][cols], summed in double
 * (float products are exact in double). Each call adds its rows in chunks of 256
 * (one dsyrk each), so h depends only on the inputs and where the calls cut them,
 * never on timing: the same calls give the same bits, and calls of 512 rows give
 * the bits of twice as many calls of 256 (a resumed accumulation that keeps the cut
 * points equals an uninterrupted one). 0, or -1 if out of memory (h unchanged). */
int hess_accumulate(double *h, const float *x, int n, int64_t cols);
/* H = 2/n_rows * h (n_rows: all rows accumulated); checks that H is finite and its
 * diagonal non-negative. 0, or -1 with a message naming the entry. */
int hess_finalize(double *h, int64_t cols, int64_t n_rows, char *err, size_t err_len);

/* The Hessians of one layer's input groups, filled through rt_forward's observer
 * while that layer runs (the measurement and the packer both collect them so):
 *
 *     hess_layer hl;  hess_layer_init(&hl, &m->cfg, err, sizeof err);
 *     hess_layer_start(&hl, state, l);   ... forward over the rows ...
 *     hess_layer_finish(&hl, state, err, sizeof err);   // hl.h[RT_IN_MLP] is H of gate/up
 */
typedef struct hess_row hess_row;
typedef struct {
    double *h[RT_INPUT_COUNT];  /* [cols][cols] per input group: a block's four, or the head's
                                   (the others are NULL) */
    int64_t cols[RT_INPUT_COUNT];
    int64_t n[RT_INPUT_COUNT];  /* rows accumulated; 0: the group saw no input */
    int layer;                  /* the layer being accumulated, -1 none */
    int n_layers;               /* layer n_layers is the head */
    int failed;                 /* out of memory (at start or inside the observer) */
    hess_row *rows;             /* with hess_layer_keep_rows: each calibration row's observed
                                   inputs, kept until hess_layer_share sums them */
    int n_rows, row;            /* rows kept for; the row now running (hess_layer_row) */
} hess_layer;
int hess_layer_init(hess_layer *hl, const mdl_config *c, char *err, size_t err_len);
void hess_layer_free(hess_layer *hl);
/* Zeroes the Hessians and observes layer `layer` of forward passes on s. */
void hess_layer_start(hess_layer *hl, rt_state *s, int layer);
/* Stops observing and finalizes the groups that saw input; errors name the group. */
int hess_layer_finish(hess_layer *hl, rt_state *s, char *err, size_t err_len);

/* Rows split across the ranks of a job (par/): each rank runs its own rows, and
 * the Hessians must still be the sums of one process, bit for bit. So instead of
 * accumulating, the observer keeps what each row's inputs were (hess_layer_row
 * says which row runs), and hess_layer_share then sends every row from the rank
 * that ran it (owner[row]) to all ranks, each of which accumulates the rows in
 * row order with the calls the row made: exactly one process's sequence of
 * hess_accumulate calls, whatever the number of ranks. Collective. 0, or -1 (out
 * of memory: for n_rows records; in share, an MPI error or out of memory, which
 * hess_layer_finish also reports). */
int hess_layer_keep_rows(hess_layer *hl, int n_rows);
void hess_layer_row(hess_layer *hl, int row);
int hess_layer_share(hess_layer *hl, const int *owner);
const char *hess_input_name(rt_input g); /* "attn", "attn_out", "mlp", "mlp_out", "head" */

/* ==== Options ==== */

typedef struct {
    int n;
    lay_option *v;
} opt_set;

/* The default candidate set (36 options, 2.2 to 8.8 bpw in steps of at most 0.5,
 * 8 of them also rotated, none with input scales; table in measure/options.c).
 * s->n is 0 if out of memory. */
void opt_default_set(opt_set *s);
/* Reads a user's option file (format at the top of measure/options.c and in the
 * README). 0, or -1 with a message "FILE:LINE: what 'value' is wrong". */
int opt_read_file(const char *path, opt_set *s, char *err, size_t err_len);
void opt_set_free(opt_set *s);
/* The ggml block types as options (layout/layout.h), in bits order: Q2_K Q3_K Q4_0
 * Q4_K Q4_1 Q5_0 Q5_K Q5_1 Q6_K Q8_0. s->n is 0 if out of memory. */
void opt_ggml_set(opt_set *s);
/* "default" or NULL: opt_default_set; "ggml": opt_ggml_set; anything else an option
 * file. 0, or -1 with a message. */
int opt_set_load(const char *spec, opt_set *s, char *err, size_t err_len);
/* Appends o unless an option with its fields (not its name) is already there.
 * 1 if added, 0 if present, -1 if out of memory (s unchanged). */
int opt_set_add(opt_set *s, const lay_option *o);

/* ==== The calibration walk (walk.c) ==== */

/* The model runs layer by layer over the calibration rows (each layer held as fp32
 * only while it runs); for each layer that the caller wants (layer n_layers is the
 * head), the Hessians of its input groups are collected while it runs and `visit`
 * sees them before the next layer starts. Memory grows with one block. The
 * measurement and the packer are both visits:
 *
 *     walk_params w = {.m = m, .cal = &cal, .wants = wants, .visit = visit, .ctx = me};
 *     if (walk_run(&w, err, sizeof err)) ...
 */
typedef struct {
    rt_model *m;                /* opened over its file (rt_model_open) */
    const calib_set *cal;
    int sequential;             /* 1: after its visit a layer runs again from its input, on the
                                   weights the visit left in its slots (quantized), so later
                                   layers see earlier layers' error (the packer's default) */
    /* 1 if layer l (n_layers: the head) wants its Hessians and a visit. */
    int (*wants)(void *ctx, int layer);
    /* Layer l's Hessians are in hl (those of groups that saw input). The visit holds
     * the weights it reads (rt_linear_hold: then each rt_linear's dense) and releases
     * them. May replace the layer's rt_linears (then `passed` must put them back). 0
     * or -1 with a message. On several ranks every rank visits, and the visit itself
     * agrees its outcome (par_agree: the same on every rank); in sequential mode it
     * must leave the same weights on every rank. */
    int (*visit)(void *ctx, int layer, const hess_layer *hl, char *err, size_t err_len);
    /* Optional: layer l has run (the walk's hidden state stands after it), visited or
     * not. 0 or -1 with a message. */
    int (*passed)(void *ctx, int layer, char *err, size_t err_len);
    /* Optional: phase "forward" or "head" begins at layer l. */
    void (*progress)(void *ctx, const char *phase, int layer);
    void *ctx;
} walk_params;
int walk_run(const walk_params *p, char *err, size_t err_len);

/* ==== The measurement pass (driver.c, probe.c) ==== */

/* What the pass reports while it runs (never printed by measure/ itself). */
typedef struct {
    const char *phase;          /* "forward", "measure", "probe", "head" */
    int layer;                  /* current layer; n_layers for the head */
    int64_t units_done, units_total;     /* (tensor, option) pairs of this run */
    int64_t tensors_done, tensors_total; /* tensors with every option measured */
    int64_t probes_done, probes_total;   /* KL probes of this run */
    double elapsed;             /* seconds since the pass began */
} meas_progress;

typedef struct {
    int rows, ctx;              /* calibration rows x tokens (default 16 x 512) */
    double damp;                /* GPTQ damping lambda (default 0.01) */
    int kl_probe;               /* 1: also the end-to-end KL probe of every tensor */
    int threads;                /* threads for options and BLAS; 0 = leave as set */
    int resident;               /* 1: every weight as fp32 from the start (faster for small
                                   models; memory grows with the model) */
    int fast_error;             /* 1: errors from GPTQ's own sums and RTN's in float (gptq_params;
                                   a third less time, rel_err within 2e-6; its own calibration) */
    const opt_set *options;     /* NULL: opt_default_set() */
    void (*progress)(void *ctx, const meas_progress *p); /* NULL: silent */
    void *progress_ctx;
} meas_params;
void meas_params_init(meas_params *p);

/* KL probe geometry: the first MEAS_PROBE_ROWS rows, first MEAS_PROBE_CTX tokens. */
#define MEAS_PROBE_ROWS 4
#define MEAS_PROBE_CTX 64

typedef struct {
    int already_done;           /* 1: everything asked for was in the database */
    int64_t calib_id;
    int64_t n_tensors, n_options;
    int64_t measured, probed;   /* rows written by this run */
    int64_t skipped;            /* (tensor, option) pairs found done */
    char ref_option[32];        /* the probes' reference option ("" without probes) */
    char calib_key[65];
    char model_hash[65];        /* the model's content hash (mdl_content_hash) */
    double seconds;
    int ranks;                  /* processes of the job (par/) */
    double sent_bytes;          /* with ranks > 1: payload every rank sent, summed */
    double wait_share;          /* with ranks > 1: share of the run the ranks spent inside
                                   par/ calls (waiting for others, mostly), their mean */
} meas_result;

/* The measurement pass: opens the model and the database (created if absent),
 * tokenizes the calibration files, runs the full-precision forward layer by layer
 * accumulating each input group's Hessian, then for every quantizable tensor and
 * every option runs GPTQ (and RTN for comparison) and writes the errors; with
 * kl_probe also the KL probe of every tensor. Resumable: pairs already in the
 * database are skipped, and a rerun after a kill gives the same numbers as an
 * uninterrupted run. Checks everything it can (options against shapes, text
 * length, finite weights, a writable database) before writing anything.
 * 0, or -1 with a one-line message. */
int meas_run(const char *model_path, const char *const *calib_paths, int n_calib, const char *db_path,
             const meas_params *p, meas_result *out, char *err, size_t err_len);

#endif
