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
 *     qtensor (so it is exactly what the packed file reproduces).
 *
 * The grid of one (row, group), with x the group's weights of that row:
 *   asymmetric (LAY_SCALE_F16_Z8): lo = min(min x, 0), hi = max(max x, 0),
 *       s = fp16((hi - lo) / (2^b - 1)), z = clamp(rint(-lo / s), 0, 2^b - 1);
 *   symmetric (LAY_SCALE_F16): a = max |x|, s = fp16(2a / (2^b - 1)), z = 2^(b-1);
 *   an all-zero group uses lo = -1, hi = 1 (a = 1); a scale that rounds to 0 in fp16
 *   becomes the smallest fp16 subnormal.
 */
#include "measure.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define GPTQ_MAX_RETRIES 4
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
    double *h;         /* [cols][cols] copy of the undamped H, original order */
    double damp;       /* lambda used */
    int retries;
};

void gptq_params_init(gptq_params *p)
{
    p->damp = 0.01;
    p->act_order = 1;
    p->block = 128;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
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

/* u = H[perm][perm] with dead diagonals 1 and lambda * mean(diag) added. */
static void damped_permuted(const gptq_prep *pr, double lambda, double *u)
{
    int64_t n = pr->cols;
    double mean = 0;
    for (int64_t j = 0; j < n; j++) mean += pr->dead[j] ? 1.0 : pr->h[j * n + j];
    mean /= (double)n;
    for (int64_t a = 0; a < n; a++) {
        const double *src = pr->h + (int64_t)pr->perm[a] * n;
        for (int64_t b = 0; b < n; b++) u[a * n + b] = src[pr->perm[b]];
        if (pr->dead[pr->perm[a]]) u[a * n + a] = 1.0;
        u[a * n + a] += lambda * mean;
    }
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
    free(prep->perm), free(prep->dead), free(prep->u), free(prep->h);
    free(prep);
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
    pr->h = malloc((size_t)(cols * cols) * sizeof *pr->h);
    if (!pr->perm || !pr->dead || !pr->u || !pr->h) goto oom;
    memcpy(pr->h, h, (size_t)(cols * cols) * sizeof *h);
    if (act_order_perm(h, cols, p->act_order, pr->perm)) goto oom;
    for (int64_t j = 0; j < cols; j++) pr->n_dead += pr->dead[j] = h[j * cols + j] == 0;
    pr->damp = p->damp;
    for (;;) {
        damped_permuted(pr, pr->damp, pr->u);
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

/* ==== The grid (steps 5, 6) ==== */

/* rint (ties to even, as NumPy's) without a libm call: below 2^51 adding and
 * removing 1.5 * 2^52 leaves the nearest integer; larger values are integers. */
static inline double round_even(double x)
{
    const double magic = 6755399441055744.0;
    return fabs(x) < 2251799813685248.0 ? (x + magic) - magic : x;
}

/* Scale (fp16 bits) and zero of one (row, group) from its min and max weights. */
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

/* ==== The column loop (steps 5, 6) ==== */

/* Working state of one quantization: wt[cols][rows] is W transposed in stored
 * column order (a column is contiguous), e[block][rows] the scaled errors of the
 * current block; s, z hold the current group's scale and zero per row. */
typedef struct {
    const lay_option *o;
    const double *u;     /* NULL: round-to-nearest (no error feedback) */
    int64_t rows, cols, ng;
    double *wt, *e, *mn, *mx;
    float *s, *z;
    lay_qtensor *out;
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

/* Step 5: fit every row's grid to group g (stored columns j0..j1). */
static void group_start(gptq_run *r, int64_t g, int64_t j0, int64_t j1)
{
    int bits = lay_group_bits(r->o, r->cols, g);
    for (int64_t i = 0; i < r->rows; i++) r->mn[i] = INFINITY, r->mx[i] = -INFINITY;
    for (int64_t j = j0; j < j1; j++) {
        const double *c = r->wt + j * r->rows;
        for (int64_t i = 0; i < r->rows; i++) {
            if (c[i] < r->mn[i]) r->mn[i] = c[i];
            if (c[i] > r->mx[i]) r->mx[i] = c[i];
        }
    }
    for (int64_t i = 0; i < r->rows; i++) {
        uint16_t *s16 = &r->out->scale[i * r->ng + g];
        uint8_t *z = &r->out->zero[i * r->ng + g];
        grid_fit(r->mn[i], r->mx[i], bits, r->o->scale_fmt, s16, z);
        r->s[i] = lay_f16_to_f32(*s16), r->z[i] = (float)*z;
    }
}

/* Step 6 for stored column j: quantize it into out->q and leave the scaled error
 * (w - deq) / U_jj in e_row (only with error feedback). */
static void quantize_column(gptq_run *r, int64_t j, int bits, double *e_row)
{
    const double *c = r->wt + j * r->rows;
    double maxq = (double)((1 << bits) - 1), inv_d = r->u ? 1.0 / r->u[j * r->cols + j] : 0;
    for (int64_t i = 0; i < r->rows; i++) {
        uint8_t q = grid_quant(c[i], (double)r->s[i], (double)r->z[i], maxq);
        r->out->q[i * r->cols + j] = q;
        if (!e_row) continue;
        float deq = r->s[i] * ((float)q - r->z[i]);   /* exactly lay_qtensor_dequant */
        e_row[i] = (c[i] - (double)deq) * inv_d;
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
            quantize_column(r, j, lay_group_bits(r->o, cols, g), e_row);
            if (e_row && j + 1 < s1) /* wt[j+1:s1, :] -= U[j, j+1:s1]^T e_row */
                cblas_dger(CblasRowMajor, (int)(s1 - j - 1), (int)rows, -1.0, r->u + j * cols + j + 1, 1, e_row,
                           1, r->wt + (j + 1) * rows, (int)rows);
        }
        if (r->u) push_errors(r, b0, s0, s1, s1, b1);
    }
    if (r->u) push_errors(r, b0, b0, b1, b1, cols);
}

static void run_free(gptq_run *r)
{
    free(r->wt), free(r->e), free(r->mn), free(r->mx), free(r->s), free(r->z);
}

/* Fills out (already allocated, perm set) from w. dead: zero those original
 * columns first (may be NULL). 0, or -1 if out of memory. */
static int run_columns(const float *w, const uint8_t *dead, const double *u, int64_t block,
                       lay_qtensor *out)
{
    int64_t rows = out->rows, cols = out->cols;
    int64_t bs = block_cols(block, out->opt.group);
    gptq_run r = {.o = &out->opt, .u = u, .rows = rows, .cols = cols, .ng = lay_n_groups(&out->opt, cols),
                  .out = out};
    r.wt = malloc((size_t)(rows * cols) * sizeof *r.wt);
    r.e = u ? malloc((size_t)(bs * rows) * sizeof *r.e) : NULL;
    r.mn = malloc((size_t)rows * sizeof *r.mn), r.mx = malloc((size_t)rows * sizeof *r.mx);
    r.s = malloc((size_t)rows * sizeof *r.s), r.z = malloc((size_t)rows * sizeof *r.z);
    if (!r.wt || (u && !r.e) || !r.mn || !r.mx || !r.s || !r.z) {
        run_free(&r);
        return -1;
    }
    for (int64_t j = 0; j < cols; j++) {
        int64_t c = out->perm[j];
        double *dst = r.wt + j * rows;
        for (int64_t i = 0; i < rows; i++) dst[i] = dead && dead[c] ? 0.0 : (double)w[i * cols + c];
    }
    for (int64_t b0 = 0; b0 < cols; b0 += bs) run_block(&r, b0, b0 + bs < cols ? b0 + bs : cols);
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

double gptq_weight_energy(const float *w, int64_t rows, int64_t cols, const double *h)
{
    assert(w && h && rows > 0 && cols > 0);
    double *c = calloc((size_t)(cols * cols), sizeof *c);
    double *d = malloc((size_t)(GPTQ_ERR_CHUNK * cols) * sizeof *d);
    double sum = NAN;
    if (c && d) {
        for (int64_t r0 = 0; r0 < rows; r0 += GPTQ_ERR_CHUNK) {
            int64_t nr = rows - r0 < GPTQ_ERR_CHUNK ? rows - r0 : GPTQ_ERR_CHUNK;
            for (int64_t i = 0; i < nr * cols; i++) d[i] = (double)w[r0 * cols + i];
            cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)cols, (int)nr, 1.0, d, (int)cols, 1.0, c,
                        (int)cols);
        }
        sum = upper_dot(h, c, NULL, cols);
    }
    free(c), free(d);
    return sum;
}

/* tr(dW H dW^T), dW = wq - w. The errors are small and only their energy matters,
 * so dW^T dW is summed in float (relative error ~1e-6), at half the cost of
 * double; this is the per-option cost next to GPTQ itself. NaN if out of memory. */
static double error_energy(const float *w, const float *wq, int64_t rows, int64_t cols, const double *h)
{
    float *c = calloc((size_t)(cols * cols), sizeof *c);
    float *d = malloc((size_t)(GPTQ_ERR_CHUNK * cols) * sizeof *d);
    double sum = NAN;
    if (c && d) {
        for (int64_t r0 = 0; r0 < rows; r0 += GPTQ_ERR_CHUNK) {
            int64_t nr = rows - r0 < GPTQ_ERR_CHUNK ? rows - r0 : GPTQ_ERR_CHUNK;
            for (int64_t i = 0; i < nr * cols; i++) d[i] = (float)((double)wq[r0 * cols + i] - (double)w[r0 * cols + i]);
            cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)cols, (int)nr, 1.0f, d, (int)cols, 1.0f, c,
                        (int)cols);
        }
        sum = upper_dot(h, NULL, c, cols);
    }
    free(c), free(d);
    return sum;
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
    return error_ratio(error_energy(w, wq, rows, cols, h), gptq_weight_energy(w, rows, cols, h));
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

int gptq_quantize_prepared(const float *w, int64_t rows, const gptq_prep *prep,
                           const lay_option *o, double w_energy, lay_qtensor *out, gptq_stats *stats,
                           char *err, size_t err_len)
{
    assert(w && prep && o && out);
    double t0 = now_seconds();
    int64_t cols = prep->cols;
    float *wq = NULL;
    memset(out, 0, sizeof *out);
    if (option_applies(o, rows, cols, err, err_len) || check_w(w, rows, cols, err, err_len)) return -1;
    if (lay_qtensor_alloc(out, rows, cols, o)) goto oom;
    memcpy(out->perm, prep->perm, (size_t)cols * sizeof *out->perm);
    if (run_columns(w, prep->dead, prep->u, prep->block, out)) goto oom;
    if (stats) {
        if (!(wq = malloc((size_t)(rows * cols) * sizeof *wq))) goto oom;
        lay_qtensor_dequant(out, wq);
        if (w_energy < 0) w_energy = gptq_weight_energy(w, rows, cols, prep->h);
        stats->rel_err = error_ratio(error_energy(w, wq, rows, cols, prep->h), w_energy);
        if (isnan(stats->rel_err)) goto oom;
        stats->damp = prep->damp, stats->damp_retries = prep->retries, stats->dead_cols = prep->n_dead;
        stats->seconds = now_seconds() - t0;
        free(wq);
    }
    return 0;
oom:
    snprintf(err, err_len, "out of memory quantizing a %lldx%lld tensor", (long long)rows, (long long)cols);
    free(wq);
    lay_qtensor_free(out);
    return -1;
}

int gptq_quantize(const float *w, int64_t rows, int64_t cols, const double *h,
                  const lay_option *o, const gptq_params *p, lay_qtensor *out,
                  gptq_stats *stats, char *err, size_t err_len)
{
    assert(w && h && o && p && out);
    double t0 = now_seconds();
    gptq_prep *prep = NULL;
    memset(out, 0, sizeof *out);
    if (option_applies(o, rows, cols, err, err_len) || check_w(w, rows, cols, err, err_len)) return -1;
    if (gptq_prepare(h, cols, p, &prep, err, err_len)) return -1;
    int rc = gptq_quantize_prepared(w, rows, prep, o, -1.0, out, stats, err, err_len);
    gptq_prep_free(prep);
    if (rc == 0 && stats) stats->seconds = now_seconds() - t0;
    return rc;
}

int rtn_quantize(const float *w, int64_t rows, int64_t cols, const double *h,
                 const lay_option *o, lay_qtensor *out, char *err, size_t err_len)
{
    assert(w && o && out);
    memset(out, 0, sizeof *out);
    if (option_applies(o, rows, cols, err, err_len) || check_w(w, rows, cols, err, err_len)) return -1;
    if (h && check_h(h, cols, err, err_len)) return -1;
    if (lay_qtensor_alloc(out, rows, cols, o) || act_order_perm(h, cols, 1, out->perm) ||
        run_columns(w, NULL, NULL, 128, out)) {
        snprintf(err, err_len, "out of memory quantizing a %lldx%lld tensor", (long long)rows, (long long)cols);
        lay_qtensor_free(out);
        return -1;
    }
    return 0;
}
