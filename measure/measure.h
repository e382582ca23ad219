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
 * Uses runtime/ (the forward pass and its observer), pack/layout.h (options and
 * their exact cost) and db/. Never prints from the numeric code.
 */
#ifndef BITPLAN_MEASURE_H
#define BITPLAN_MEASURE_H

#include <stddef.h>
#include <stdint.h>

#include "../pack/layout.h"

/* ==== GPTQ ==== */

typedef struct {
    double damp;        /* lambda: adds damp * mean(diag H) to the diagonal (default 0.01) */
    int act_order;      /* 1: columns by diag(H) descending (default 1) */
    int block;          /* lazy-update block size (default 128) */
} gptq_params;
void gptq_params_init(gptq_params *p);

typedef struct {
    double rel_err;     /* tr(dW H dW^T) / tr(W H W^T), with the undamped H */
    double seconds;
} gptq_stats;

/* Quantizes w[rows][cols] (original column order; not modified) under option o,
 * using the Hessian h[cols][cols] (double, symmetric; not modified). out must be
 * unallocated: this allocates it (lay_qtensor_free releases). Returns 0, or -1 with
 * a message (option does not apply, NaN/Inf in w or h, out of memory,
 * Cholesky failure even after extra damping). */
int gptq_quantize(const float *w, int64_t rows, int64_t cols, const double *h,
                  const lay_option *o, const gptq_params *p, lay_qtensor *out,
                  gptq_stats *stats, char *err, size_t err_len);

/* Round-to-nearest with the same grid (act-order permutation from h, same groups
 * and scales): the baseline GPTQ must beat. h may be NULL (identity order). */
int rtn_quantize(const float *w, int64_t rows, int64_t cols, const double *h,
                 const lay_option *o, lay_qtensor *out, char *err, size_t err_len);

/* tr(dW H dW^T) / tr(W H W^T) for dW = wq - w, both [rows][cols]. */
double gptq_relative_error(const float *w, const float *wq, int64_t rows, int64_t cols, const double *h);

/* ==== Options ==== */

typedef struct {
    int n;
    lay_option *v;
} opt_set;

/* The default candidate set (about 2 to 8 bpw in small steps). */
void opt_default_set(opt_set *s);
/* Reads a user's option file (format in the README). 0, or -1 with a message. */
int opt_read_file(const char *path, opt_set *s, char *err, size_t err_len);
void opt_set_free(opt_set *s);

#endif
