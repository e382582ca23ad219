/*
 * measure/gptq.c — the GPTQ quantizer (Frantar et al. 2022, "GPTQ: Accurate
 * Post-Training Quantization for Generative Pre-trained Transformers"), with
 * act-order, damping, lazy block updates, groups and mixed widths, plus the
 * round-to-nearest baseline and the relative output error.
 *
 * What it must never do: print, change its inputs, or produce a qtensor whose
 * dequantization differs from the values it used for error feedback (the scales are
 * rounded to fp16 before they quantize anything, and the feedback uses exactly
 * lay_qtensor_dequant's float arithmetic).
 *
 * The steps, as invariants (cols = input channels, rows = output channels):
 *  1. Dead columns (H_jj = 0: the channel never fired) get H_jj = 1 and W[:, j] = 0.
 *  2. perm sorts the columns by the undamped diag(H) descending, ties by index
 *     (act-order; identity without it). Stored column j is original column perm[j].
 *  3. Hd = H[perm][perm] + lambda * mean(diag H) * I (after step 1). If a Cholesky
 *     fails, lambda grows tenfold, at most GPTQ_MAX_RETRIES times.
 *  4. U is the upper Cholesky factor of Hd^-1 (Hd^-1 = U^T U): row i of U holds
 *     the OBS update of the columns after i when column i is quantized.
 *  5. Columns go in stored order. At the first column of group g, every row's scale
 *     and zero are fitted to the current (already updated) weights of the group's
 *     columns with the group's width (bits_hi for the first lay_n_hi_groups groups).
 *  6. q = clamp(rint(w / s) + z, 0, 2^b - 1); err = (w - s (q - z)) / U_ii;
 *     W[:, k] -= err * U_ik for every k > i. Lazily: inside a sub-block of 32
 *     columns the update is immediate (rank 1); the rest of the block receives a
 *     sub-block's updates at its end, the columns after the block the block's
 *     updates at the block's end (one GEMM each). A group starts at a block start
 *     or lies inside one block, and always starts a sub-block, so step 5 sees fully
 *     updated weights: the result is that of the plain column loop.
 *  7. rel_err = tr(dW H dW^T) / tr(W H W^T) with the undamped H and the dequantized
 *     qtensor (so it is exactly what the packed file reproduces). By default the
 *     numerator is a syrk over dW (rows x cols^2, summed in float). With
 *     fast_error it comes from GPTQ's own errors instead: with E the scaled errors
 *     of step 6, the loop leaves Q = W' - E U (W' = W with dead columns zeroed), so
 *     dW' = -E U and tr(dW' Hd dW'^T) = tr(E U Hd U^T E^T) = ||E||^2 since
 *     U Hd U^T = I; Hd is H plus a diagonal (damping, and 1 on dead columns), so
 *     tr(dW H dW^T) = ||E||^2 - sum_j add_j ||dW'[:, j]||^2, at rows x cols cost.
 *     Dead columns do not count when their row of H is zero (a channel that never
 *     fired); otherwise, and when the subtraction would cancel, the syrk is used.
 *
 * Cost per unit (rows x cols): the updates of step 6 are rows x cols^2 multiply-adds
 * in double (GEMMs); the default rel_err and RTN's error a syrk each of the same
 * order. Everything else is rows x cols and is written to stream through memory:
 * W is transposed in row tiles, q values go to a column buffer that is transposed
 * once per block, the quantization of a column runs 16 rows at a time on AVX-512,
 * the search of a group's grid (below) 8 rows at a time, in vector registers,
 * RTN's error works on the original layout (8 rows at a time for the search).
 *
 * The grid of one (row, group), with x the group's weights of that row, fitted to
 * a range [f min x, f max x] (the fit):
 *   asymmetric (LAY_SCALE_F16_Z8): lo = min(f min x, 0), hi = max(f max x, 0),
 *       s = fp16((hi - lo) / (2^b - 1)), z = clamp(rint(-lo / s), 0, 2^b - 1);
 *   symmetric (LAY_SCALE_F16): a = max(-lo, hi), s = fp16(2a / (2^b - 1)), z = 2^(b-1);
 *   an all-zero group uses lo = -1, hi = 1 (a = 1); a scale that rounds to 0 in fp16
 *   becomes the smallest fp16 subnormal.
 * The range is searched (the search) for groups of at most GRID_SEARCH_MAX_BITS:
 * f = (GRID_SHRINK_DEN - k) / GRID_SHRINK_DEN for k = 0..GRID_SHRINK_STEPS (1.0
 * down to 0.5), keeping the first f with the least sum over the group of
 * H_jj (x_j - s (q_j - z))^2 (H_jj as a float, the column's diag(H); without a
 * Hessian 1), summed in double in column order. f = 1 is min/max; a smaller range
 * clips the few largest weights and gives the many others a finer grid, which at
 * 2-3 bits is most of the error (on SmolLM2's layers GPTQ's output error falls by
 * ~22% at 3 bits g128, ~40% at 2 bits g64: BENCHMARKS.md, "Searched ranges").
 * The weights H_jj keep a column that meets huge activations (SmolLM2's ffn_down
 * in layers 2 and 11) from being clipped: unweighted, the search made those
 * tensors' error up to 29 times worse. Groups wider than GRID_SEARCH_MAX_BITS
 * keep f = 1: at 5-8 bits the search made GPTQ's error 2-7% worse on average over
 * SmolLM2's tensors (up to 6.5 times on one; round-to-nearest's still fell), since
 * GPTQ's updates carry each clipped error into the group's later columns, which
 * then fall outside the narrowed range. GPTQ and round-to-nearest search the same
 * way, on the values they quantize.
 */
#include "measure.h"
#include "util/util.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__)
#include <immintrin.h>
/* x86-64 with GCC's target attributes: the AVX-512 and AVX2 versions below are
 * compiled whatever the build's -march, and chosen at run time */
#define GPTQ_X86_TARGETS 1
#endif

#define GPTQ_MAX_RETRIES 4
#define GRID_SHRINK_DEN 20   /* the search's ranges: f = 1, 0.95, ..., 0.5 */
#define GRID_SHRINK_STEPS 10
#define GRID_SEARCH_MAX_BITS 4 /* wider groups keep min/max (the file header says why) */
#define GPTQ_ERR_CHUNK 256      /* rows per syrk in the error traces */

/* LAPACK (Fortran); the trailing size_t is the hidden length of the uplo string. */
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info, size_t uplo_len);
void dpotri_(const char *uplo, const int *n, double *a, const int *lda, int *info, size_t uplo_len);

struct gptq_prep {
    int64_t cols;
    int block;
    int32_t *perm;     /* [cols] stored column j = original column perm[j] */
    uint8_t *dead;     /* [cols] by original column: H_jj == 0 */
    int64_t n_dead;
    double *u;         /* [cols][cols] upper factor of the damped permuted H^-1 (lower part 0) */
    double *h;         /* [cols][cols] the undamped H, original order: a copy, or borrowed */
    int own_h;         /* 1: h is the prep's copy */
    double damp;       /* lambda used */
    int retries;
    int32_t *order;    /* [cols] act-order by the undamped diag (RTN's order): perm, or its own */
    double diag_add;   /* lambda * mean(diag H): what damping added to each diagonal entry */
    int fast_error;    /* gptq_params.fast_error */
    int dead_isolated; /* every dead column's row and column of H are zero */
    int act_order;     /* gptq_params.act_order: perm is the identity when 0 */
    float *imp;        /* [cols] diag(H) by original column: the ggml fits' importance */
    uint16_t *xscale;  /* [cols] fp16 input multipliers m of an awq slot (h is then
                          diag(m) H diag(m)), else NULL */
};

void gptq_params_init(gptq_params *p)
{
    p->damp = 0.01;
    p->act_order = 1;
    p->block = 128;
    p->fast_error = 0;
    p->borrow_h = 0;
}

/* ==== Checks ==== */

static int check_w(const float *w, int64_t rows, int64_t cols, char *err, size_t err_len)
{
    for (int64_t i = 0; i < rows * cols; i++)
        if (!isfinite(w[i])) {
            snprintf(err, err_len, "weight [%lld][%lld] is %g (not finite)", (long long)(i / cols),
                     (long long)(i % cols), (double)w[i]);
            return -1;
        }
    return 0;
}

static int check_h(const double *h, int64_t cols, char *err, size_t err_len)
{
    for (int64_t i = 0; i < cols * cols; i++)
        if (!isfinite(h[i])) {
            snprintf(err, err_len, "Hessian [%lld][%lld] is %g (not finite)", (long long)(i / cols),
                     (long long)(i % cols), h[i]);
            return -1;
        }
    for (int64_t j = 0; j < cols; j++)
        if (h[j * cols + j] < 0) {
            snprintf(err, err_len, "Hessian diagonal [%lld] is %g (negative)", (long long)j, h[j * cols + j]);
            return -1;
        }
    return 0;
}

/* ==== Act-order (step 2) ==== */

typedef struct {
    double d;
    int32_t j;
} diag_entry;

static int diag_desc(const void *a, const void *b)
{
    const diag_entry *x = a, *y = b;
    if (x->d != y->d) return x->d > y->d ? -1 : 1;
    return (x->j > y->j) - (x->j < y->j);
}

/* perm[cols] from diag(h) descending, ties by index; identity when h is NULL or
 * act_order is off. 0, or -1 if out of memory. */
static int act_order_perm(const double *h, int64_t cols, int act_order, int32_t *perm)
{
    for (int64_t j = 0; j < cols; j++) perm[j] = (int32_t)j;
    if (!h || !act_order) return 0;
    diag_entry *e = malloc((size_t)cols * sizeof *e);
    if (!e) return -1;
    for (int64_t j = 0; j < cols; j++) e[j] = (diag_entry){h[j * cols + j], (int32_t)j};
    qsort(e, (size_t)cols, sizeof *e, diag_desc);
    for (int64_t j = 0; j < cols; j++) perm[j] = e[j].j;
    free(e);
    return 0;
}

/* ==== Cholesky of the damped inverse (steps 1, 3, 4) ==== */

/* u = H[perm][perm] with dead diagonals 1 and lambda * mean(diag) added; returns
 * what was added. */
static double damped_permuted(const gptq_prep *pr, double lambda, double *u)
{
    int64_t n = pr->cols;
    double mean = 0;
    for (int64_t j = 0; j < n; j++) mean += pr->dead[j] ? 1.0 : pr->h[j * n + j];
    mean /= (double)n;
    double add = lambda * mean;
    for (int64_t a = 0; a < n; a++) {
        const double *src = pr->h + (int64_t)pr->perm[a] * n;
        for (int64_t b = 0; b < n; b++) u[a * n + b] = src[pr->perm[b]];
        if (pr->dead[pr->perm[a]]) u[a * n + a] = 1.0;
        u[a * n + a] += add;
    }
    return add;
}

/* 1 if every dead column's row and column of h are zero, as for a channel that never
 * fired: then dW's values there do not change tr(dW H dW^T). */
static int dead_isolated(const double *h, const uint8_t *dead, int64_t n)
{
    for (int64_t j = 0; j < n; j++) {
        if (!dead[j]) continue;
        for (int64_t k = 0; k < n; k++)
            if (h[j * n + k] != 0 || h[k * n + j] != 0) return 0;
    }
    return 1;
}

/* In place: symmetric positive definite a (row-major) -> the row-major upper factor
 * U of a^-1 = U^T U, lower part zeroed. Column-major LAPACK sees the row-major
 * matrix transposed, so its 'L' triangle is our upper one. LAPACK info, 0 = ok. */
static int chol_inverse_upper(double *a, int64_t n64)
{
    int n = (int)n64, info = 0;
    dpotrf_("L", &n, a, &n, &info, 1);
    if (info == 0) dpotri_("L", &n, a, &n, &info, 1);
    if (info == 0) dpotrf_("L", &n, a, &n, &info, 1);
    if (info != 0) return info;
    for (int64_t i = 1; i < n64; i++) memset(a + i * n64, 0, (size_t)i * sizeof *a);
    return 0;
}

void gptq_prep_free(gptq_prep *prep)
{
    if (!prep) return;
    if (prep->order != prep->perm) free(prep->order);
    free(prep->perm), free(prep->dead), free(prep->u), free(prep->imp), free(prep->xscale);
    if (prep->own_h) free(prep->h);
    free(prep);
}

/* The columns' importance, diag(H) as floats (the search's and the ggml fits'
 * weights): *imp = NULL without h. 0, or -1 if out of memory. */
static int diag_importance(const double *h, int64_t cols, float **imp)
{
    *imp = NULL;
    if (!h) return 0;
    if (!(*imp = malloc((size_t)cols * sizeof **imp))) return -1;
    for (int64_t j = 0; j < cols; j++) (*imp)[j] = (float)h[j * cols + j];
    return 0;
}

int gptq_prepare(const double *h, int64_t cols, const gptq_params *p, gptq_prep **out,
                 char *err, size_t err_len)
{
    assert(h && p && out && cols > 0 && cols < INT32_MAX && p->block > 0 && p->damp >= 0);
    *out = NULL;
    if (check_h(h, cols, err, err_len)) return -1;
    gptq_prep *pr = calloc(1, sizeof *pr);
    if (!pr) goto oom;
    pr->cols = cols, pr->block = p->block;
    pr->perm = malloc((size_t)cols * sizeof *pr->perm);
    pr->dead = malloc((size_t)cols);
    pr->u = malloc((size_t)(cols * cols) * sizeof *pr->u);
    pr->own_h = !p->borrow_h;
    pr->h = pr->own_h ? malloc((size_t)(cols * cols) * sizeof *pr->h) : (double *)h;
    if (!pr->perm || !pr->dead || !pr->u || !pr->h || diag_importance(h, cols, &pr->imp)) goto oom;
    pr->act_order = p->act_order;
    if (pr->own_h) memcpy(pr->h, h, (size_t)(cols * cols) * sizeof *h);
    if (act_order_perm(h, cols, p->act_order, pr->perm)) goto oom;
    pr->order = pr->perm;
    if (!p->act_order && (!(pr->order = malloc((size_t)cols * sizeof *pr->order)) ||
                          act_order_perm(h, cols, 1, pr->order))) goto oom;
    for (int64_t j = 0; j < cols; j++) pr->n_dead += pr->dead[j] = h[j * cols + j] == 0;
    pr->dead_isolated = dead_isolated(h, pr->dead, cols);
    pr->fast_error = p->fast_error;
    pr->damp = p->damp;
    for (;;) {
        pr->diag_add = damped_permuted(pr, pr->damp, pr->u);
        int info = chol_inverse_upper(pr->u, cols);
        if (info == 0) break;
        if (pr->retries == GPTQ_MAX_RETRIES || pr->damp == 0) {
            snprintf(err, err_len, "Cholesky of the damped Hessian failed (LAPACK info %d) at damp %g "
                     "after %d retries", info, pr->damp, pr->retries);
            gptq_prep_free(pr);
            return -1;
        }
        pr->damp *= 10, pr->retries++;
    }
    *out = pr;
    return 0;
oom:
    snprintf(err, err_len, "out of memory preparing a %lld-column Hessian", (long long)cols);
    gptq_prep_free(pr);
    return -1;
}

const double gptq_awq_alpha[GPTQ_AWQ_ALPHAS] = {0.125, 0.25, 0.5};

int gptq_prep_slot(const lay_option *o)
{
    if (lay_option_ggml(o) >= 0) return GPTQ_PREP_COLUMNS;
    if (o->awq) return GPTQ_PREP_AWQ0;
    return o->rot == 64 ? GPTQ_PREP_ROT64 : o->rot == 128 ? GPTQ_PREP_ROT128 : GPTQ_PREP_ACT;
}

int gptq_prep_wanted(const lay_option *o, int slot)
{
    int first = gptq_prep_slot(o);
    return o->awq && lay_option_ggml(o) < 0 ? slot >= first && slot < first + GPTQ_AWQ_ALPHAS : slot == first;
}

/* Prepares H' (the prep's own copy, act-order) that transform() made from a copy of h. */
static int prepare_transformed(const double *h, int64_t cols, const gptq_params *p, gptq_prep **out,
                               void (*transform)(double *h, int64_t cols, const void *ctx), const void *ctx,
                               char *err, size_t err_len)
{
    double *ht = malloc((size_t)(cols * cols) * sizeof *ht);
    if (!ht) return snprintf(err, err_len, "out of memory transforming a %lld-column Hessian", (long long)cols), -1;
    memcpy(ht, h, (size_t)(cols * cols) * sizeof *ht);
    transform(ht, cols, ctx);
    gptq_params q = *p;
    q.borrow_h = 1, q.act_order = 1; /* borrowed, then owned: the copy lives as long as the prep */
    if (gptq_prepare(ht, cols, &q, out, err, err_len)) return free(ht), -1;
    (*out)->own_h = 1;
    return 0;
}

static void rotate_hessian(double *h, int64_t cols, const void *rot)
{
    lay_rot_hessian(*(const int *)rot, LAY_ROT_SEED, h, cols);
}

static void scale_hessian(double *h, int64_t cols, const void *m) { lay_xscale_hessian(m, h, cols); }

void gptq_awq_multipliers(const double *h, int64_t cols, double alpha, uint16_t *m)
{
    double log_sum = 0;
    int64_t live = 0;
    for (int64_t j = 0; j < cols; j++)
        if (h[j * cols + j] > 0) log_sum += log(h[j * cols + j]), live++;
    double mean = live ? log_sum / (double)live : 0;
    for (int64_t j = 0; j < cols; j++) {
        double d = h[j * cols + j];
        double mj = d > 0 ? exp(-0.5 * alpha * (log(d) - mean)) : 1.0;
        mj = mj < GPTQ_AWQ_MIN ? GPTQ_AWQ_MIN : mj > 1 / GPTQ_AWQ_MIN ? 1 / GPTQ_AWQ_MIN : mj;
        m[j] = lay_f32_to_f16((float)mj);
    }
}

/* The awq slot of alpha: m from H's diagonal, then H' = diag(m) H diag(m); the
 * prep owns m and H'. */
static int prepare_scaled(const double *h, int64_t cols, double alpha, const gptq_params *p, gptq_prep **out,
                          char *err, size_t err_len)
{
    uint16_t *m = malloc((size_t)cols * sizeof *m);
    if (!m) return snprintf(err, err_len, "out of memory for %lld input scales", (long long)cols), -1;
    gptq_awq_multipliers(h, cols, alpha, m);
    if (prepare_transformed(h, cols, p, out, scale_hessian, m, err, err_len)) return free(m), -1;
    (*out)->xscale = m;
    return 0;
}

int gptq_prepare_slot(const double *h, int64_t cols, int slot, const gptq_params *p, gptq_prep **out, char *err,
                      size_t err_len)
{
    if (slot == GPTQ_PREP_ROT64 || slot == GPTQ_PREP_ROT128) {
        int rot = slot == GPTQ_PREP_ROT64 ? 64 : 128;
        if (cols % rot)
            return snprintf(err, err_len, "cols %lld is not a multiple of the rotation block %d", (long long)cols, rot), -1;
        return prepare_transformed(h, cols, p, out, rotate_hessian, &rot, err, err_len);
    }
    if (slot >= GPTQ_PREP_AWQ0 && slot < GPTQ_PREP_AWQ0 + GPTQ_AWQ_ALPHAS)
        return prepare_scaled(h, cols, gptq_awq_alpha[slot - GPTQ_PREP_AWQ0], p, out, err, err_len);
    gptq_params q = *p;
    q.act_order = slot == GPTQ_PREP_ACT;
    return gptq_prepare(h, cols, &q, out, err, err_len);
}

/* W' of an option in the space its prep quantizes: W R (rotated), W / m (scaled),
 * or NULL for W itself; *oom on failure. */
static float *transformed_weights(const float *w, int64_t rows, const gptq_prep *prep, const lay_option *o, int *oom)
{
    int64_t cols = prep->cols;
    *oom = 0;
    if (!o->rot && !prep->xscale) return NULL;
    float *wt = malloc((size_t)(rows * cols) * sizeof *wt);
    if (!wt) return *oom = 1, NULL;
    memcpy(wt, w, (size_t)(rows * cols) * sizeof *wt);
    for (int64_t r = 0; o->rot && r < rows; r++) lay_rot_apply(o->rot, LAY_ROT_SEED, wt + r * cols, cols);
    for (int64_t r = 0; prep->xscale && r < rows; r++)
        for (int64_t j = 0; j < cols; j++) wt[r * cols + j] /= lay_f16_to_f32(prep->xscale[j]);
    return wt;
}

/* GPTQ (and RTN's error) of one option with one preparation. */
static int quantize_with(const float *w, int64_t rows, const gptq_prep *prep, const lay_option *o, double w_energy,
                         lay_qtensor *out, gptq_stats *stats, double *rtn_err, char *err, size_t err_len)
{
    int oom;
    float *wt = transformed_weights(w, rows, prep, o, &oom);
    if (oom)
        return snprintf(err, err_len, "out of memory transforming a %lldx%lld tensor", (long long)rows,
                        (long long)prep->cols), -1;
    if (wt) w = wt;
    int rc = gptq_quantize_prepared(w, rows, prep, o, w_energy, out, stats, err, err_len);
    if (!rc && rtn_err && rtn_error_prepared(w, rows, prep, o, w_energy, rtn_err, err, err_len))
        lay_qtensor_free(out), rc = -1;
    if (!rc) out->rot_seed = o->rot ? LAY_ROT_SEED : 0;
    free(wt);
    return rc;
}

int gptq_quantize_option(const float *w, int64_t rows, gptq_prep *const *prep, const lay_option *o, double w_energy,
                         lay_qtensor *out, gptq_stats *stats, double *rtn_err, char *err, size_t err_len)
{
    int first = gptq_prep_slot(o);
    if (!o->awq || lay_option_ggml(o) >= 0)
        return quantize_with(w, rows, prep[first], o, w_energy, out, stats, rtn_err, err, err_len);
    /* awq: every alpha of the grid, keeping the least error (the first of equals) */
    gptq_stats best_st = {0}, st;
    lay_qtensor cand;
    int chosen = first;
    memset(out, 0, sizeof *out);
    for (int k = first; k < first + GPTQ_AWQ_ALPHAS; k++) {
        if (quantize_with(w, rows, prep[k], o, w_energy, &cand, &st, NULL, err, err_len))
            return lay_qtensor_free(out), -1;
        if (k == first || st.rel_err < best_st.rel_err) lay_qtensor_free(out), *out = cand, best_st = st, chosen = k;
        else lay_qtensor_free(&cand);
    }
    if (rtn_err) {
        int oom;
        float *wt = transformed_weights(w, rows, prep[chosen], o, &oom);
        if (oom || rtn_error_prepared(wt, rows, prep[chosen], o, w_energy, rtn_err, err, err_len)) {
            if (oom) snprintf(err, err_len, "out of memory scaling a %lldx%lld tensor", (long long)rows, (long long)out->cols);
            free(wt), lay_qtensor_free(out);
            return -1;
        }
        free(wt);
    }
    if (stats) *stats = best_st;
    return 0;
}

/* ==== The grid (steps 5, 6) ==== */

/* rint (ties to even, as NumPy's) without a libm call: below 2^51 adding and
 * removing 1.5 * 2^52 leaves the nearest integer; larger values are integers. */
static inline double round_even(double x)
{
    const double magic = 6755399441055744.0;
    return fabs(x) < 2251799813685248.0 ? (x + magic) - magic : x;
}

/* Scale (fp16 bits) and zero of one (row, group) for the range [mn, mx] (the fit). */
static void grid_fit(double mn, double mx, int bits, lay_scale_fmt fmt, uint16_t *s16, uint8_t *z)
{
    int maxq = (1 << bits) - 1;
    double lo = mn < 0 ? mn : 0, hi = mx > 0 ? mx : 0, s;
    if (lo == 0 && hi == 0) lo = -1, hi = 1;
    if (fmt == LAY_SCALE_F16) {
        double a = -lo > hi ? -lo : hi;
        s = 2 * a / maxq;
    } else s = (hi - lo) / maxq;
    *s16 = lay_f32_to_f16((float)s);
    if (*s16 == 0) *s16 = 1;  /* smallest subnormal */
    if (fmt == LAY_SCALE_F16) {
        *z = (uint8_t)(1 << (bits - 1));
        return;
    }
    double zd = round_even(-lo / (double)lay_f16_to_f32(*s16));
    *z = (uint8_t)(zd < 0 ? 0 : zd > maxq ? maxq : zd);
}

static inline uint8_t grid_quant(double w, double s, double z, double maxq)
{
    double q = round_even(w / s) + z;
    return (uint8_t)(q < 0 ? 0 : q > maxq ? maxq : q);
}

/* The search of the grid (file header) for SEARCH_LANES rows at once: x + l is row
 * l's first weight of one group, the rows' weights of its column j at x + j * stride
 * (GPTQ's transposed W, or RTN's gathered rows), in the order they are quantized;
 * imp[j] is the diag(H) of column j (NULL: 1). Per row the IEEE operations of
 * grid_fit and grid_quant (division included: no reciprocal) in column order, so a
 * row's choice does not depend on its neighbours. Fewer rows go in padded with zero
 * rows (the fit gives a zero row [-1, 1]: a finite grid, on whose zero its weights
 * land), whose choices are dropped. Vector extensions, so each target below
 * compiles it for its own registers. */
#define SEARCH_LANES 8
typedef double v8d __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));
typedef long long v8l __attribute__((vector_size(64)));

/* m ? a : b per lane (m from a comparison: all ones or zero); a macro, since a
 * function returning a 64-byte vector changes the ABI with the target */
#define V8D_SELECT(m, a, b) ((v8d)(((v8l)(a) & (m)) | ((v8l)(b) & ~(m))))

static inline __attribute__((always_inline)) void search_lanes_body(const double *x, int64_t n, int64_t stride,
                                                                    const float *imp, int bits,
                                                                    lay_scale_fmt fmt, uint16_t *s16, uint8_t *z)
{
    enum { L = SEARCH_LANES };
    double mn[L], mx[L], best[L];
    for (int l = 0; l < L; l++) mn[l] = INFINITY, mx[l] = -INFINITY, best[l] = INFINITY;
    for (int64_t j = 0; j < n; j++)
        for (int l = 0; l < L; l++) {
            double v = x[j * stride + l];
            if (v < mn[l]) mn[l] = v;
            if (v > mx[l]) mx[l] = v;
        }
    const double maxq = (double)((1 << bits) - 1);
    const v8d magic = (v8d){0} + 6755399441055744.0, zero = {0}, top = zero + maxq;
    for (int k = 0; k <= (bits <= GRID_SEARCH_MAX_BITS ? GRID_SHRINK_STEPS : 0); k++) {
        double f = (double)(GRID_SHRINK_DEN - k) / GRID_SHRINK_DEN;
        uint16_t cs[L];
        uint8_t cz[L];
        v8f sf, zf;
        for (int l = 0; l < L; l++) {
            grid_fit(mn[l] * f, mx[l] * f, bits, fmt, &cs[l], &cz[l]);
            sf[l] = lay_f16_to_f32(cs[l]), zf[l] = (float)cz[l];
        }
        const v8d sd = __builtin_convertvector(sf, v8d), zd = __builtin_convertvector(zf, v8d);
        v8d sse = zero;
        for (int64_t j = 0; j < n; j++) {
            v8d v;
            memcpy(&v, x + j * stride, sizeof v);
            v8d t = (v / sd + magic) - magic + zd; /* grid_quant: beyond 2^51 the clamp ends the same */
            t = V8D_SELECT(t < zero, zero, t);
            t = V8D_SELECT(t > top, top, t);
            v8f deq = sf * (__builtin_convertvector(t, v8f) - zf);
            v8d d = v - __builtin_convertvector(deq, v8d);
            sse += (imp ? (double)imp[j] : 1.0) * (d * d);
        }
        for (int l = 0; l < L; l++)
            if (k == 0 || sse[l] < best[l]) /* k = 0: even an overflowed sum sets it */
                best[l] = sse[l], s16[l] = cs[l], z[l] = cz[l];
    }
}

#ifdef GPTQ_X86_TARGETS
__attribute__((target("avx512f"))) static void search_lanes_avx512(const double *x, int64_t n, int64_t stride,
                                                                   const float *imp, int bits, lay_scale_fmt fmt,
                                                                   uint16_t *s16, uint8_t *z)
{
    search_lanes_body(x, n, stride, imp, bits, fmt, s16, z);
}
__attribute__((target("avx2"))) static void search_lanes_avx2(const double *x, int64_t n, int64_t stride,
                                                              const float *imp, int bits, lay_scale_fmt fmt,
                                                              uint16_t *s16, uint8_t *z)
{
    search_lanes_body(x, n, stride, imp, bits, fmt, s16, z);
}
#endif

static void search_lanes(const double *x, int64_t n, int64_t stride, const float *imp, int bits,
                         lay_scale_fmt fmt, uint16_t *s16, uint8_t *z)
{
#ifdef GPTQ_X86_TARGETS
    if (__builtin_cpu_supports("avx512f")) { search_lanes_avx512(x, n, stride, imp, bits, fmt, s16, z); return; }
    if (__builtin_cpu_supports("avx2")) { search_lanes_avx2(x, n, stride, imp, bits, fmt, s16, z); return; }
#endif
    search_lanes_body(x, n, stride, imp, bits, fmt, s16, z);
}

/* ==== The column loop (steps 5, 6) ==== */

/* Working state of one quantization: wt[cols][rows] is W transposed in stored
 * column order (a column is contiguous), e[block][rows] the scaled errors of the
 * current block, qt[block][rows] its q values column by column; s, z hold the
 * current group's scale and zero per row. */
typedef struct {
    const lay_option *o;
    const double *u;     /* NULL: round-to-nearest (no error feedback) */
    int64_t rows, cols, ng;
    double *wt, *e;
    float *s, *z;
    uint8_t *qt;
    double *tail;        /* [group][SEARCH_LANES] the last rows % SEARCH_LANES rows of a group
                            as the search's lanes, the others zero (NULL: no such rows) */
    int want_e2;         /* sum the squared scaled errors into e2 (fast rel_err) */
    double e2;
    lay_qtensor *out;
    /* ggml block types: each block's header is fitted (imp-weighted) to the updated
       weights when the block starts; grid[i] is row i's current block */
    const lay_ggml_traits *gt;
    int gtype;
    const float *imp;    /* [cols] importance by column (no permutation) */
    float *imp_stored;   /* [cols] imp by stored column, for the search (NULL: no imp) */
    lay_ggml_grid *grid; /* [rows] */
    float *gx;           /* [block] scratch: one row's block */
    uint8_t *gq;         /* [block] scratch: one row's q values */
} gptq_run;

/* Columns per lazy block: a multiple of group (group <= block) or a divisor of it,
 * so that a group never straddles two blocks. */
static int64_t block_cols(int64_t block, int64_t group)
{
    if (group <= block) return block / group * group;
    int64_t b = block;
    while (group % b) b--;
    return b;
}

/* Step 5 for a ggml block type: every row's block header fitted to the current
 * weights of columns j0..j1 (one block). */
static void ggml_block_start(gptq_run *r, int64_t j0, int64_t j1)
{
    for (int64_t i = 0; i < r->rows; i++) {
        for (int64_t j = j0; j < j1; j++) r->gx[j - j0] = (float)r->wt[j * r->rows + i];
        lay_ggml_fit(r->gtype, r->gx, r->imp + j0, &r->grid[i]);
    }
}

/* The block of columns j0..j1 is quantized: every row's block is encoded from its
 * grid and the q values in qt (the lazy block starting at b0 holds it). */
static void ggml_block_end(gptq_run *r, int64_t b0, int64_t j0, int64_t j1)
{
    int64_t rb = lay_ggml_row_bytes(r->gtype, r->cols);
    for (int64_t i = 0; i < r->rows; i++) {
        for (int64_t j = j0; j < j1; j++) r->gq[j - j0] = r->qt[(j - b0) * r->rows + i];
        lay_ggml_encode(&r->grid[i], r->gq, r->out->blocks + i * rb + j0 / r->gt->block * r->gt->bytes);
    }
}

/* Step 6 for a ggml block type: the nearest value of the row's sub-block grid,
 * and the error against exactly what the decoders return. */
static void ggml_quantize_column(gptq_run *r, int64_t j, uint8_t *qcol, double *e_row)
{
    const double *c = r->wt + j * r->rows;
    int k = (int)(j % r->gt->block / r->gt->sub), bits = r->gt->bits, center = r->gt->center;
    double inv_d = e_row ? 1.0 / r->u[j * r->cols + j] : 0, e2 = 0;
    for (int64_t i = 0; i < r->rows; i++) {
        int q = lay_ggml_quant(&r->grid[i], k, bits, center, (float)c[i]);
        qcol[i] = (uint8_t)q;
        if (!e_row) continue;
        e_row[i] = (c[i] - (double)lay_ggml_value(&r->grid[i], k, center, q)) * inv_d;
        e2 += e_row[i] * e_row[i];
    }
    if (r->want_e2) r->e2 += e2;
}

/* Row i's grid for group g: stored in the output, kept for the column loop. */
static void group_set(gptq_run *r, int64_t g, int64_t i, uint16_t s16, uint8_t z)
{
    r->out->scale[i * r->ng + g] = s16, r->out->zero[i * r->ng + g] = z;
    r->s[i] = lay_f16_to_f32(s16), r->z[i] = (float)z;
}

/* The last n (< SEARCH_LANES) rows of a group of nc columns (row l's column j at
 * x[j * rows + l]) copied into r->tail's first lanes: the search reads whole lanes,
 * and past the last row of the last column there is nothing to read. The other
 * lanes stay zero from the allocation. */
static const double *tail_lanes(gptq_run *r, const double *x, int64_t nc, int64_t n)
{
    for (int64_t j = 0; j < nc; j++)
        for (int64_t l = 0; l < n; l++) r->tail[j * SEARCH_LANES + l] = x[j * r->rows + l];
    return r->tail;
}

/* Step 5: fit every row's grid to group g (stored columns j0..j1). */
static void group_start(gptq_run *r, int64_t g, int64_t j0, int64_t j1)
{
    if (r->gt) { ggml_block_start(r, j0, j1); return; }
    int bits = lay_group_bits(r->o, r->cols, g);
    const double *x = r->wt + j0 * r->rows;
    const float *imp = r->imp_stored ? r->imp_stored + j0 : NULL;
    for (int64_t i = 0; i < r->rows; i += SEARCH_LANES) {
        int64_t n = r->rows - i < SEARCH_LANES ? r->rows - i : SEARCH_LANES;
        uint16_t s16[SEARCH_LANES];
        uint8_t z[SEARCH_LANES];
        if (n == SEARCH_LANES) search_lanes(x + i, j1 - j0, r->rows, imp, bits, r->o->scale_fmt, s16, z);
        else search_lanes(tail_lanes(r, x + i, j1 - j0, n), j1 - j0, SEARCH_LANES, imp, bits, r->o->scale_fmt,
                          s16, z);
        for (int64_t l = 0; l < n; l++) group_set(r, g, i + l, s16[l], z[l]);
    }
}

/* quantize_column's loop, 16 rows at a time, with the same IEEE operations, so the
 * same bits: rint by the 1.5 * 2^52 trick without round_even's |x| < 2^51 test
 * (beyond it x + z lies far outside [0, maxq] either way, and the clamp gives the
 * same end), the clamp by max/min (which differ from the ternaries only on NaN and
 * on the sign of a zero, neither of which survives the conversion to an integer).
 * Returns the rows done; the caller finishes the rest. */
#ifdef GPTQ_X86_TARGETS
__attribute__((target("avx512f"))) static int64_t quantize_avx512(const double *c, const float *s, const float *z,
                                                                  int64_t rows, double maxq, double inv_d,
                                                                  uint8_t *qcol, double *e_row)
{
    const __m512d magic = _mm512_set1_pd(6755399441055744.0), top = _mm512_set1_pd(maxq), inv = _mm512_set1_pd(inv_d);
    int64_t i = 0;
    for (; i + 16 <= rows; i += 16) {
        __m256i qh[2];
        for (int h = 0; h < 2; h++) {
            const __m256 sf = _mm256_loadu_ps(s + i + 8 * h), zf = _mm256_loadu_ps(z + i + 8 * h);
            const __m512d cv = _mm512_loadu_pd(c + i + 8 * h);
            __m512d x = _mm512_div_pd(cv, _mm512_cvtps_pd(sf));
            x = _mm512_add_pd(_mm512_sub_pd(_mm512_add_pd(x, magic), magic), _mm512_cvtps_pd(zf));
            x = _mm512_min_pd(_mm512_max_pd(x, _mm512_setzero_pd()), top);
            qh[h] = _mm512_cvttpd_epi32(x);
            if (!e_row) continue;
            __m256 deq = _mm256_mul_ps(sf, _mm256_sub_ps(_mm256_cvtepi32_ps(qh[h]), zf));
            _mm512_storeu_pd(e_row + i + 8 * h, _mm512_mul_pd(_mm512_sub_pd(cv, _mm512_cvtps_pd(deq)), inv));
        }
        __m512i q16 = _mm512_inserti64x4(_mm512_castsi256_si512(qh[0]), qh[1], 1);
        _mm_storeu_si128((__m128i *)(qcol + i), _mm512_cvtepi32_epi8(q16));
    }
    return i;
}
#endif

/* Step 6 for stored column j: its q values into qcol and, with error feedback
 * (e_row non-NULL), the scaled errors (w - deq) / U_jj into e_row. Both outputs are
 * contiguous: a store per row straight into out->q would touch one cache line per
 * row and column. */
static void quantize_column(gptq_run *r, int64_t j, int bits, uint8_t *qcol, double *e_row)
{
    if (r->gt) { ggml_quantize_column(r, j, qcol, e_row); return; }
    const double *c = r->wt + j * r->rows;
    const float *s = r->s, *z = r->z;
    double maxq = (double)((1 << bits) - 1), inv_d = e_row ? 1.0 / r->u[j * r->cols + j] : 0;
    int64_t i = 0;
#ifdef GPTQ_X86_TARGETS
    if (__builtin_cpu_supports("avx512f")) i = quantize_avx512(c, s, z, r->rows, maxq, inv_d, qcol, e_row);
#endif
    for (; i < r->rows; i++) {
        uint8_t q = grid_quant(c[i], (double)s[i], (double)z[i], maxq);
        qcol[i] = q;
        if (!e_row) continue;
        float deq = s[i] * ((float)q - z[i]);   /* exactly lay_qtensor_dequant */
        e_row[i] = (c[i] - (double)deq) * inv_d;
    }
    if (r->want_e2 && e_row) {
        double e2 = 0;
        for (int64_t k = 0; k < r->rows; k++) e2 += e_row[k] * e_row[k];
        r->e2 += e2;
    }
}

/* out->q[i][b0 + k] = qt[k][i] for the block's columns; rows go in tiles so that
 * the tile's lines of qt stay in cache while every row takes its bytes. */
static void store_block(gptq_run *r, int64_t b0, int64_t b1)
{
    enum { TILE = 64 };
    if (r->gt) return; /* ggml blocks are encoded as each ends */
    int64_t rows = r->rows, cols = r->cols, nb = b1 - b0;
    for (int64_t i0 = 0; i0 < rows; i0 += TILE) {
        int64_t i1 = i0 + TILE < rows ? i0 + TILE : rows;
        for (int64_t i = i0; i < i1; i++) {
            uint8_t *dst = r->out->q + i * cols + b0;
            for (int64_t k = 0; k < nb; k++) dst[k] = r->qt[k * rows + i];
        }
    }
}

/* wt[c0:c1, :] -= U[k0:k1, c0:c1]^T * e[k0-b0 : k1-b0, :]: the updates of the
 * columns c0.. by the quantized columns k0..k1 of the block starting at b0. */
static void push_errors(gptq_run *r, int64_t b0, int64_t k0, int64_t k1, int64_t c0, int64_t c1)
{
    if (c0 >= c1) return;
    int64_t rows = r->rows, cols = r->cols;
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(c1 - c0), (int)rows, (int)(k1 - k0), -1.0,
                r->u + k0 * cols + c0, (int)cols, r->e + (k0 - b0) * rows, (int)rows, 1.0, r->wt + c0 * rows,
                (int)rows);
}

/* One lazy block [b0, b1), cut into sub-blocks of LAY_CHUNK columns: a column's
 * error goes at once (rank-1) into the rest of its sub-block, a sub-block's errors
 * into the rest of the block (GEMM) when it ends, and the block's errors into every
 * later column (GEMM) when the block ends. A group starts at a sub-block start, so
 * step 5 sees every column of its group fully updated. */
static void run_block(gptq_run *r, int64_t b0, int64_t b1)
{
    int64_t rows = r->rows, cols = r->cols, group = r->o->group;
    for (int64_t s0 = b0; s0 < b1; s0 += LAY_CHUNK) {
        int64_t s1 = s0 + LAY_CHUNK < b1 ? s0 + LAY_CHUNK : b1;
        for (int64_t j = s0; j < s1; j++) {
            int64_t g = j / group;
            if (j % group == 0) group_start(r, g, j, j + lay_group_cols(r->o, cols, g));
            double *e_row = r->u ? r->e + (j - b0) * rows : NULL;
            quantize_column(r, j, lay_group_bits(r->o, cols, g), r->qt + (j - b0) * rows, e_row);
            if (e_row && j + 1 < s1) /* wt[j+1:s1, :] -= U[j, j+1:s1]^T e_row */
                cblas_dger(CblasRowMajor, (int)(s1 - j - 1), (int)rows, -1.0, r->u + j * cols + j + 1, 1, e_row,
                           1, r->wt + (j + 1) * rows, (int)rows);
            if (r->gt && (j + 1) % group == 0) ggml_block_end(r, b0, j + 1 - group, j + 1);
        }
        if (r->u) push_errors(r, b0, s0, s1, s1, b1);
    }
    if (r->u) push_errors(r, b0, b0, b1, b1, cols);
    store_block(r, b0, b1);
}

static void run_free(gptq_run *r)
{
    free(r->wt), free(r->e), free(r->qt), free(r->s), free(r->z), free(r->imp_stored), free(r->tail);
    free(r->grid), free(r->gx), free(r->gq);
}

/* wt[j][i] = w[i][perm[j]] (0 for dead columns). A column-by-column gather misses
 * the cache on every element (the rows are cols apart); taking LOAD_ROWS rows at a
 * time keeps them in cache while all their columns are gathered. */
#define LOAD_ROWS 16
static void load_transposed(const float *w, const int32_t *perm, const uint8_t *dead, int64_t rows, int64_t cols,
                            double *wt)
{
    for (int64_t r0 = 0; r0 < rows; r0 += LOAD_ROWS) {
        int64_t nr = rows - r0 < LOAD_ROWS ? rows - r0 : LOAD_ROWS;
        for (int64_t j = 0; j < cols; j++) {
            int64_t c = perm[j];
            const float *src = w + r0 * cols + c;
            double *dst = wt + j * rows + r0;
            if (dead && dead[c]) memset(dst, 0, (size_t)nr * sizeof *dst);
            else for (int64_t i = 0; i < nr; i++) dst[i] = (double)src[i * cols];
        }
    }
}

/* Fills out (already allocated, perm set) from w. dead: zero those original
 * columns first (may be NULL). e2 (may be NULL): the sum of the squared scaled
 * errors. For a ggml block type perm is the identity and imp the importance of
 * the columns (a block is then one lazy block, or a whole number of them inside
 * one, so its start sees fully updated weights). 0, or -1 if out of memory. */
static int run_columns(const float *w, const int32_t *perm, const uint8_t *dead, const double *u, int64_t block,
                       const float *imp, lay_qtensor *out, double *e2)
{
    int64_t rows = out->rows, cols = out->cols;
    gptq_run r = {.o = &out->opt, .u = u, .rows = rows, .cols = cols, .ng = lay_n_groups(&out->opt, cols),
                  .want_e2 = e2 != NULL, .out = out, .imp = imp};
    r.gtype = lay_option_ggml(&out->opt);
    r.gt = lay_ggml_traits_of(r.gtype);
    if (r.gt && block < r.gt->block) block = r.gt->block;
    int64_t bs = block_cols(block, out->opt.group);
    if (r.gt) {
        r.grid = malloc((size_t)rows * sizeof *r.grid);
        r.gx = malloc((size_t)r.gt->block * sizeof *r.gx), r.gq = malloc((size_t)r.gt->block);
        if (!r.grid || !r.gx || !r.gq) {
            run_free(&r);
            return -1;
        }
    }
    r.wt = malloc((size_t)(rows * cols) * sizeof *r.wt);
    r.e = u ? malloc((size_t)(bs * rows) * sizeof *r.e) : NULL;
    r.qt = malloc((size_t)(bs * rows));
    r.s = malloc((size_t)rows * sizeof *r.s), r.z = malloc((size_t)rows * sizeof *r.z);
    int tail = rows % SEARCH_LANES && !r.gt; /* calloc: the lanes past the last row stay zero */
    if (tail) r.tail = calloc((size_t)(out->opt.group < cols ? out->opt.group : cols) * SEARCH_LANES, sizeof *r.tail);
    if (!r.wt || (u && !r.e) || !r.qt || !r.s || !r.z || (tail && !r.tail)) {
        run_free(&r);
        return -1;
    }
    if (imp && !r.gt) {
        if (!(r.imp_stored = malloc((size_t)cols * sizeof *r.imp_stored))) {
            run_free(&r);
            return -1;
        }
        for (int64_t j = 0; j < cols; j++) r.imp_stored[j] = imp[perm[j]];
    }
    load_transposed(w, perm, dead, rows, cols, r.wt);
    for (int64_t b0 = 0; b0 < cols; b0 += bs) run_block(&r, b0, b0 + bs < cols ? b0 + bs : cols);
    if (e2) *e2 = r.e2;
    run_free(&r);
    return 0;
}

/* ==== Relative error (step 7) ==== */

/* sum_ij h_ij c_ij over the upper triangle of a symmetric c (float or double). */
static double upper_dot(const double *h, const double *cd, const float *cf, int64_t cols)
{
    double sum = 0;
    for (int64_t i = 0; i < cols; i++) {
        const double *hr = h + i * cols;
        double off = 0;
        if (cd) for (int64_t j = i + 1; j < cols; j++) off += hr[j] * cd[i * cols + j];
        else for (int64_t j = i + 1; j < cols; j++) off += hr[j] * (double)cf[i * cols + j];
        sum += hr[i] * (cd ? cd[i * cols + i] : (double)cf[i * cols + i]) + 2 * off;
    }
    return sum;
}

/* Rows of some matrix D, GPTQ_ERR_CHUNK at a time, for tr(D H D^T): fill writes rows
 * r0..r0+nr of D to d ([nr][cols], float if single, else double). */
typedef struct {
    void (*fill)(const void *ctx, int64_t r0, int64_t nr, int64_t cols, void *d);
    const void *ctx;
    int single;
} rows_source;

/* tr(D H D^T) = sum_ij H_ij (D^T D)_ij, with D^T D summed by one syrk per chunk of
 * GPTQ_ERR_CHUNK rows (in float if src->single). The chunking fixes the bits. NaN
 * if out of memory. */
static double quad_trace(const rows_source *src, int64_t rows, int64_t cols, const double *h)
{
    size_t el = src->single ? sizeof(float) : sizeof(double);
    void *c = calloc((size_t)(cols * cols), el), *d = malloc((size_t)(GPTQ_ERR_CHUNK * cols) * el);
    double sum = NAN;
    if (c && d) {
        for (int64_t r0 = 0; r0 < rows; r0 += GPTQ_ERR_CHUNK) {
            int64_t nr = rows - r0 < GPTQ_ERR_CHUNK ? rows - r0 : GPTQ_ERR_CHUNK;
            src->fill(src->ctx, r0, nr, cols, d);
            if (src->single)
                cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)cols, (int)nr, 1.0f, d, (int)cols, 1.0f, c,
                            (int)cols);
            else
                cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)cols, (int)nr, 1.0, d, (int)cols, 1.0, c,
                            (int)cols);
        }
        sum = src->single ? upper_dot(h, NULL, c, cols) : upper_dot(h, c, NULL, cols);
    }
    free(c), free(d);
    return sum;
}

static void fill_weights(const void *ctx, int64_t r0, int64_t nr, int64_t cols, void *d)
{
    const float *w = ctx;
    double *dd = d;
    for (int64_t i = 0; i < nr * cols; i++) dd[i] = (double)w[r0 * cols + i];
}

double gptq_weight_energy(const float *w, int64_t rows, int64_t cols, const double *h)
{
    assert(w && h && rows > 0 && cols > 0);
    rows_source src = {fill_weights, w, 0};
    return quad_trace(&src, rows, cols, h);
}

/* dW = wq - w, rounded to float: the errors are small and only their energy
 * matters, so dW^T dW is summed in float (relative error ~1e-6), at half the cost
 * of double. */
typedef struct {
    const float *w, *wq;
} diff_rows;

static void fill_diff(const void *ctx, int64_t r0, int64_t nr, int64_t cols, void *d)
{
    const diff_rows *x = ctx;
    float *df = d;
    for (int64_t i = 0; i < nr * cols; i++)
        df[i] = (float)((double)x->wq[r0 * cols + i] - (double)x->w[r0 * cols + i]);
}

/* The same dW, with wq dequantized from a qtensor a chunk of rows at a time (the
 * float arithmetic of lay_qtensor_dequant): no full dequantized copy. */
typedef struct {
    const lay_qtensor *q;
    const float *w;
} qdiff_rows;

static void fill_qdiff(const void *ctx, int64_t r0, int64_t nr, int64_t cols, void *d)
{
    const qdiff_rows *x = ctx;
    const lay_qtensor *t = x->q;
    int64_t ng = lay_n_groups(&t->opt, cols);
    float *df = d;
    int type = lay_option_ggml(&t->opt);
    if (type >= 0) { /* decoded in place, then the difference */
        int64_t rb = lay_ggml_row_bytes(type, cols);
        for (int64_t r = r0; r < r0 + nr; r++) {
            float *row = df + (r - r0) * cols;
            lay_ggml_decode_row(type, t->blocks + r * rb, row, cols);
            for (int64_t c = 0; c < cols; c++) row[c] = (float)((double)row[c] - (double)x->w[r * cols + c]);
        }
        return;
    }
    for (int64_t r = r0; r < r0 + nr; r++)
        for (int64_t g = 0; g < ng; g++) {
            float s = lay_f16_to_f32(t->scale[r * ng + g]), z = (float)t->zero[r * ng + g];
            int64_t j0 = lay_group_start(&t->opt, g), j1 = j0 + lay_group_cols(&t->opt, cols, g);
            for (int64_t j = j0; j < j1; j++) {
                int64_t c = t->perm[j];
                float wq = s * ((float)t->q[r * cols + j] - z);
                df[(r - r0) * cols + c] = (float)((double)wq - (double)x->w[r * cols + c]);
            }
        }
}

static double error_ratio(double num, double den)
{
    if (isnan(num) || isnan(den)) return NAN;
    if (den == 0) return num == 0 ? 0 : INFINITY;
    return num / den;
}

double gptq_relative_error(const float *w, const float *wq, int64_t rows, int64_t cols, const double *h)
{
    assert(w && wq && h && rows > 0 && cols > 0);
    diff_rows x = {w, wq};
    rows_source src = {fill_diff, &x, 1};
    return error_ratio(quad_trace(&src, rows, cols, h), gptq_weight_energy(w, rows, cols, h));
}

/* deq_error_sums for a ggml block type: rows decoded one at a time. -1 if out of
 * memory. */
static int ggml_error_sums(const lay_qtensor *t, const float *w, const uint8_t *dead, double *all, double *dead_sum)
{
    int type = lay_option_ggml(&t->opt);
    int64_t cols = t->cols, rb = lay_ggml_row_bytes(type, cols);
    float *row = malloc((size_t)cols * sizeof *row);
    if (!row) return -1;
    double sa = 0, sd = 0;
    for (int64_t r = 0; r < t->rows; r++) {
        lay_ggml_decode_row(type, t->blocks + r * rb, row, cols);
        for (int64_t c = 0; c < cols; c++) {
            double d = dead[c] ? (double)row[c] : (double)row[c] - (double)w[r * cols + c];
            sa += d * d;
            if (dead[c]) sd += d * d;
        }
    }
    free(row);
    *all = sa, *dead_sum = sd;
    return 0;
}

/* ||dW'||^2 over all columns and over the dead ones, dW' = dequantized q - W'
 * (W' = w with dead columns zero), in double. -1 if out of memory. */
static int deq_error_sums(const lay_qtensor *t, const float *w, const uint8_t *dead, double *all, double *dead_sum)
{
    if (lay_option_ggml(&t->opt) >= 0) return ggml_error_sums(t, w, dead, all, dead_sum);
    int64_t rows = t->rows, cols = t->cols, ng = lay_n_groups(&t->opt, cols);
    double sa = 0, sd = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < ng; g++) {
            float s = lay_f16_to_f32(t->scale[r * ng + g]), z = (float)t->zero[r * ng + g];
            int64_t j0 = lay_group_start(&t->opt, g), j1 = j0 + lay_group_cols(&t->opt, cols, g);
            for (int64_t j = j0; j < j1; j++) {
                int64_t c = t->perm[j];
                double deq = (double)(s * ((float)t->q[r * cols + j] - z));
                double d = dead[c] ? deq : deq - (double)w[r * cols + c];
                sa += d * d;
                if (dead[c]) sd += d * d;
            }
        }
    *all = sa, *dead_sum = sd;
    return 0;
}

/* Beyond this ratio of ||E||^2 to the result, the subtraction of the damping term
 * would leave fewer than ~10 of double's 16 digits: the syrk is used instead. */
#define GPTQ_FAST_MAX_CANCEL 1e6

/* tr(dW H dW^T) from GPTQ's scaled errors (step 7, fast_error): ||E||^2 minus the
 * diagonal that damping and dead columns added to H. NaN where it does not apply. */
static double fast_error_energy(const gptq_prep *pr, const lay_qtensor *t, const float *w, double e2)
{
    if (!pr->dead_isolated) return NAN;
    double all, dead_sum;
    if (deq_error_sums(t, w, pr->dead, &all, &dead_sum)) return NAN;
    double num = e2 - (pr->diag_add * all + dead_sum);
    return num > 0 && e2 <= GPTQ_FAST_MAX_CANCEL * num ? num : e2 == 0 ? 0 : NAN;
}

/* ==== RTN error without a qtensor ==== */

/* RTN's dW rows: every row's groups (in act-order) fitted and rounded as
 * rtn_quantize does, dequantized as lay_qtensor_dequant does, minus w, in float
 * (as a float copy would hold it); then widened to double unless single. Rows are
 * independent under RTN, so no transposed copy is needed. */
typedef struct {
    const float *w;
    const int32_t *order;
    const lay_option *o;
    int single;
    const float *imp;    /* ggml block types: the importance of the columns */
    uint8_t *blocks;     /* ggml block types: one row's blocks */
    float *row;          /* ggml block types: one row decoded */
    double *gx;          /* [cols][SEARCH_LANES] the weights of up to that many rows in act-order */
    float *gimp;         /* [cols] imp in act-order */
} rtn_rows;

/* fill_rtn for a ggml block type: each row quantized as lay_ggml_quantize_row does
 * with the Hessian's diagonal as importance, and decoded. */
static void fill_rtn_ggml(const rtn_rows *x, int64_t r0, int64_t nr, int64_t cols, void *d)
{
    int type = lay_option_ggml(x->o);
    for (int64_t r = r0; r < r0 + nr; r++) {
        const float *wr = x->w + r * cols;
        lay_ggml_quantize_row(type, wr, x->imp, x->blocks, cols);
        lay_ggml_decode_row(type, x->blocks, x->row, cols);
        for (int64_t c = 0; c < cols; c++) {
            float dw = x->row[c] - wr[c];
            if (x->single) ((float *)d)[(r - r0) * cols + c] = dw;
            else ((double *)d)[(r - r0) * cols + c] = (double)dw;
        }
    }
}

/* Row r's error over stored columns j0..j1 on the grid (s16, z8), into d's row dr. */
static void rtn_group_error(const rtn_rows *x, int64_t r, int64_t j0, int64_t j1, int bits, uint16_t s16, uint8_t z8,
                            int64_t cols, void *d, int64_t dr)
{
    const float *wr = x->w + r * cols;
    double maxq = (double)((1 << bits) - 1);
    float s = lay_f16_to_f32(s16), z = (float)z8;
    for (int64_t j = j0; j < j1; j++) {
        int64_t c = x->order[j];
        uint8_t q = grid_quant((double)wr[c], (double)s, (double)z, maxq);
        float dw = s * ((float)q - z) - wr[c];
        if (x->single) ((float *)d)[dr * cols + c] = dw;
        else ((double *)d)[dr * cols + c] = (double)dw;
    }
}

/* Rows r0..r0+n (n <= SEARCH_LANES): their weights gathered into act-order (the
 * lanes past n zero rows, as GPTQ pads its last rows), each group's grid searched,
 * then each row's error. */
static void rtn_lanes(const rtn_rows *x, int64_t r0, int64_t n, int64_t cols, void *d, int64_t dr0)
{
    const lay_option *o = x->o;
    for (int64_t l = 0; l < SEARCH_LANES; l++)
        for (int64_t j = 0; j < cols; j++)
            x->gx[j * SEARCH_LANES + l] = l < n ? (double)x->w[(r0 + l) * cols + x->order[j]] : 0;
    for (int64_t g = 0; g < lay_n_groups(o, cols); g++) {
        int64_t j0 = lay_group_start(o, g), j1 = j0 + lay_group_cols(o, cols, g);
        int bits = lay_group_bits(o, cols, g);
        uint16_t s16[SEARCH_LANES];
        uint8_t z8[SEARCH_LANES];
        search_lanes(x->gx + j0 * SEARCH_LANES, j1 - j0, SEARCH_LANES, x->gimp + j0, bits, o->scale_fmt, s16, z8);
        for (int64_t l = 0; l < n; l++) rtn_group_error(x, r0 + l, j0, j1, bits, s16[l], z8[l], cols, d, dr0 + l);
    }
}

static void fill_rtn(const void *ctx, int64_t r0, int64_t nr, int64_t cols, void *d)
{
    const rtn_rows *x = ctx;
    if (lay_option_ggml(x->o) >= 0) { fill_rtn_ggml(x, r0, nr, cols, d); return; }
    for (int64_t r = r0; r < r0 + nr; r += SEARCH_LANES)
        rtn_lanes(x, r, r0 + nr - r < SEARCH_LANES ? r0 + nr - r : SEARCH_LANES, cols, d, r - r0);
}

/* ==== Entry points ==== */

static int option_applies(const lay_option *o, int64_t rows, int64_t cols, char *err, size_t err_len)
{
    char why[160];
    if (lay_option_check(o, rows, cols, why, sizeof why) == 0) return 0;
    snprintf(err, err_len, "option \"%.32s\" does not apply to a %lldx%lld tensor: %s", o->name,
             (long long)rows, (long long)cols, why);
    return -1;
}

/* The one-step quantizers know no input transform: W R and W / m come from
 * gptq_quantize_option, with the Hessian prepared for them. */
static int untransformed(const lay_option *o, char *err, size_t err_len)
{
    if (!o->rot && !o->awq) return 0;
    snprintf(err, err_len, "option \"%.32s\" transforms its inputs (%s): quantize it through gptq_quantize_option",
             o->name, o->rot ? "a rotation" : "input scales");
    return -1;
}

int gptq_quantize_prepared(const float *w, int64_t rows, const gptq_prep *prep,
                           const lay_option *o, double w_energy, lay_qtensor *out, gptq_stats *stats,
                           char *err, size_t err_len)
{
    assert(w && prep && o && out);
    double t0 = util_now_s(), e2 = 0;
    int64_t cols = prep->cols;
    int fast = stats && prep->fast_error;
    memset(out, 0, sizeof *out);
    if (option_applies(o, rows, cols, err, err_len) || check_w(w, rows, cols, err, err_len)) return -1;
    if (lay_option_ggml(o) >= 0 && prep->act_order) {
        snprintf(err, err_len, "option \"%.32s\" is a ggml block type: it needs a Hessian prepared without "
                 "act-order (GGUF stores no permutation)", o->name);
        return -1;
    }
    if (!o->awq != !prep->xscale) {
        snprintf(err, err_len, "option \"%.32s\" %s input scales but its preparation %s", o->name,
                 o->awq ? "has" : "has no", o->awq ? "has none" : "has");
        return -1;
    }
    if (lay_qtensor_alloc(out, rows, cols, o)) goto oom;
    if (out->perm) memcpy(out->perm, prep->perm, (size_t)cols * sizeof *out->perm);
    if (out->xscale) memcpy(out->xscale, prep->xscale, (size_t)cols * sizeof *out->xscale);
    if (run_columns(w, prep->perm, prep->dead, prep->u, prep->block, prep->imp, out, fast ? &e2 : NULL)) goto oom;
    if (stats) {
        if (w_energy < 0) w_energy = gptq_weight_energy(w, rows, cols, prep->h);
        double num = fast ? fast_error_energy(prep, out, w, e2) : NAN;
        if (isnan(num)) {
            qdiff_rows x = {out, w};
            rows_source src = {fill_qdiff, &x, 1};
            num = quad_trace(&src, rows, cols, prep->h);
        }
        stats->rel_err = error_ratio(num, w_energy);
        if (isnan(stats->rel_err)) goto oom;
        stats->damp = prep->damp, stats->damp_retries = prep->retries, stats->dead_cols = prep->n_dead;
        stats->seconds = util_now_s() - t0;
    }
    return 0;
oom:
    snprintf(err, err_len, "out of memory quantizing a %lldx%lld tensor", (long long)rows, (long long)cols);
    lay_qtensor_free(out);
    return -1;
}

int gptq_error_of(const float *w, const gptq_prep *prep, const lay_qtensor *q, double w_energy, double *rel_err,
                  char *err, size_t err_len)
{
    assert(w && prep && q && rel_err && q->cols == prep->cols);
    if (check_w(w, q->rows, q->cols, err, err_len)) return -1;
    if (w_energy < 0) w_energy = gptq_weight_energy(w, q->rows, q->cols, prep->h);
    qdiff_rows x = {q, w};
    rows_source src = {fill_qdiff, &x, 1};
    *rel_err = error_ratio(quad_trace(&src, q->rows, q->cols, prep->h), w_energy);
    if (isnan(*rel_err))
        return snprintf(err, err_len, "out of memory for the error of a %lldx%lld tensor", (long long)q->rows,
                        (long long)q->cols), -1;
    return 0;
}

int gptq_quantize(const float *w, int64_t rows, int64_t cols, const double *h,
                  const lay_option *o, const gptq_params *p, lay_qtensor *out,
                  gptq_stats *stats, char *err, size_t err_len)
{
    assert(w && h && o && p && out);
    double t0 = util_now_s();
    gptq_prep *prep = NULL;
    memset(out, 0, sizeof *out);
    if (option_applies(o, rows, cols, err, err_len) || untransformed(o, err, err_len) ||
        check_w(w, rows, cols, err, err_len))
        return -1;
    if (gptq_prepare(h, cols, p, &prep, err, err_len)) return -1;
    int rc = gptq_quantize_prepared(w, rows, prep, o, -1.0, out, stats, err, err_len);
    gptq_prep_free(prep);
    if (rc == 0 && stats) stats->seconds = util_now_s() - t0;
    return rc;
}

/* RTN in a ggml block type: lay_ggml_quantize_row, weighted by diag(h) if given. */
static int rtn_quantize_ggml(const float *w, int64_t rows, int64_t cols, const float *imp, const lay_option *o,
                             lay_qtensor *out)
{
    int type = lay_option_ggml(o);
    if (lay_qtensor_alloc(out, rows, cols, o)) return -1;
    int64_t rb = lay_ggml_row_bytes(type, cols);
    for (int64_t r = 0; r < rows; r++) lay_ggml_quantize_row(type, w + r * cols, imp, out->blocks + r * rb, cols);
    return 0;
}

int rtn_quantize(const float *w, int64_t rows, int64_t cols, const double *h,
                 const lay_option *o, lay_qtensor *out, char *err, size_t err_len)
{
    assert(w && o && out);
    memset(out, 0, sizeof *out);
    if (option_applies(o, rows, cols, err, err_len) || untransformed(o, err, err_len) ||
        check_w(w, rows, cols, err, err_len))
        return -1;
    if (h && check_h(h, cols, err, err_len)) return -1;
    float *imp;
    int rc = diag_importance(h, cols, &imp);
    if (!rc && lay_option_ggml(o) >= 0) rc = rtn_quantize_ggml(w, rows, cols, imp, o, out);
    else if (!rc)
        rc = lay_qtensor_alloc(out, rows, cols, o) || act_order_perm(h, cols, 1, out->perm) ||
             run_columns(w, out->perm, NULL, NULL, 128, imp, out, NULL) ? -1 : 0;
    free(imp);
    if (rc) {
        snprintf(err, err_len, "out of memory quantizing a %lldx%lld tensor", (long long)rows, (long long)cols);
        lay_qtensor_free(out);
    }
    return rc;
}

int rtn_error_prepared(const float *w, int64_t rows, const gptq_prep *prep, const lay_option *o,
                       double w_energy, double *rel_err, char *err, size_t err_len)
{
    assert(w && prep && o && rel_err);
    int64_t cols = prep->cols;
    if (option_applies(o, rows, cols, err, err_len) || check_w(w, rows, cols, err, err_len)) return -1;
    if (w_energy < 0) w_energy = gptq_weight_energy(w, rows, cols, prep->h);
    rtn_rows x = {w, prep->order, o, prep->fast_error, prep->imp, NULL, NULL, NULL, NULL};
    int type = lay_option_ggml(o);
    double num = NAN;
    if (type >= 0) {
        x.blocks = malloc((size_t)lay_ggml_row_bytes(type, cols));
        x.row = malloc((size_t)cols * sizeof *x.row);
    } else x.gx = malloc((size_t)cols * SEARCH_LANES * sizeof *x.gx), x.gimp = malloc((size_t)cols * sizeof *x.gimp);
    if (type < 0 ? x.gx && x.gimp : x.blocks && x.row) {
        for (int64_t j = 0; type < 0 && j < cols; j++) x.gimp[j] = prep->imp[prep->order[j]];
        rows_source src = {fill_rtn, &x, prep->fast_error};
        num = quad_trace(&src, rows, cols, prep->h);
    }
    free(x.blocks), free(x.row), free(x.gx), free(x.gimp);
    *rel_err = error_ratio(num, w_energy);
    if (isnan(*rel_err)) {
        snprintf(err, err_len, "out of memory for the RTN error of a %lldx%lld tensor", (long long)rows,
                 (long long)cols);
        return -1;
    }
    return 0;
}
