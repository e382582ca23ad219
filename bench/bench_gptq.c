/*
 * bench/bench_gptq.c — what one measurement unit (a tensor under an option) costs,
 * phase by phase, and what that makes of a whole 7B measurement on this machine.
 *
 *   bench_gptq [--quick] [--sizes RxC,...] [--options N] [--tokens N] [--pair]
 *
 *   --quick     quarter-scale shapes (1024x1024, 2752x1024, 1024x2752) with every
 *               default option: a few minutes, and the full comparison of the
 *               fast error paths against the default ones (differences and order)
 *   --sizes     shapes rows x cols (default the Llama-2-7B shapes 4096x4096,
 *               11008x4096 and 4096x11008)
 *   --options   how many default options to time per shape, spread over the table
 *               of the untransformed ones (the driver's RTN takes no rotation or
 *               input scales) (default 3; all with --quick). The per-unit cost hardly depends on
 *               the option (the updates are the same GEMMs for every width and
 *               group), so the mean over a few stands for all 28
 *   --tokens    calibration tokens behind each Hessian (default 8192 = 16 x 512)
 *   --pair      also run two units at once (one per core, as the driver does) and
 *               report the two-core throughput against one unit alone
 *
 * Synthetic data with the structure that matters: activations with shared factors,
 * neighbour correlation, log-normal channel scales and a few loud channels (so the
 * Hessian is ill-conditioned and, with fewer tokens than columns, singular, as the
 * 11008-wide down_proj input is with the default calibration); weights with
 * log-normal row scales, heavier input columns and heavy tails.
 *
 * A unit as the driver runs it: gptq_quantize_prepared with stats (GPTQ, then its
 * rel_err), then RTN's error. Three ways are timed, interleaved per option:
 *   driver   rtn_quantize + lay_qtensor_dequant + dW + gptq_weight_energy (today)
 *   exact    rtn_error_prepared on the same prep: must give the same bits
 *   fast     a prep with fast_error: GPTQ's rel_err from its own errors, RTN's
 *            summed in float; compared with an exact double-precision reference
 * Unit phases run on one thread (BLAS too), as the driver's workers do, and are
 * timed in CPU seconds of that thread (wall time on a shared machine counts other
 * jobs); gptq_prepare runs once per Hessian with two BLAS threads, as the driver
 * calls it, and is timed in wall seconds. The projection multiplies per-unit
 * seconds by the 7B unit counts and divides by the two cores.
 *
 * Prints Markdown. Never asserts on time; exits 1 if the exact path's bits differ.
 */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "measure/measure.h"

void openblas_set_num_threads(int n);

static double wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what, const char *err)
{
    fprintf(stderr, "bench_gptq: %s: %s\n", what, err);
    exit(1);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) die("malloc", "out of memory");
    return p;
}

/* ==== Synthetic layers ==== */

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static double unit(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return ((double)(rng >> 11) + 0.5) * 0x1.0p-53;
}
static double gauss(void) { return sqrt(-2 * log(unit())) * cos(2 * M_PI * unit()); }

#define FACTORS 16
#define LOUD_EVERY 512  /* one loud input channel per this many */

/* H = 2/n X^T X of `tokens` synthetic activation rows, fed to hess_accumulate 256
 * rows at a time as the calibration walk does. */
static double *synth_hessian(int64_t cols, int tokens)
{
    double *h = calloc((size_t)(cols * cols), sizeof *h);
    if (!h) die("synthetic Hessian", "out of memory");
    float *x = xmalloc((size_t)(256 * cols) * sizeof *x);
    double *f = xmalloc((size_t)(FACTORS * cols) * sizeof *f), *scale = xmalloc((size_t)cols * sizeof *scale);
    for (int64_t i = 0; i < FACTORS * cols; i++) f[i] = 0.5 * gauss();
    for (int64_t j = 0; j < cols; j++) scale[j] = exp(0.8 * gauss()) * (j % LOUD_EVERY == 7 ? 25 : 1);
    for (int r0 = 0; r0 < tokens; r0 += 256) {
        int n = tokens - r0 < 256 ? tokens - r0 : 256;
        for (int i = 0; i < n; i++) {
            double a[FACTORS], prev = 0;
            for (int k = 0; k < FACTORS; k++) a[k] = gauss();
            for (int64_t j = 0; j < cols; j++) {
                double z = gauss(), v = z + 0.5 * prev;
                for (int k = 0; k < FACTORS; k++) v += a[k] * f[k * cols + j];
                prev = z;
                x[i * cols + j] = (float)(v * scale[j]);
            }
        }
        if (hess_accumulate(h, x, n, cols)) die("hess_accumulate", "out of memory");
    }
    char err[256];
    if (hess_finalize(h, cols, tokens, err, sizeof err)) die("hess_finalize", err);
    free(x), free(f), free(scale);
    return h;
}

static float *synth_weights(int64_t rows, int64_t cols)
{
    float *w = xmalloc((size_t)(rows * cols) * sizeof *w);
    double *cs = xmalloc((size_t)cols * sizeof *cs);
    for (int64_t j = 0; j < cols; j++) cs[j] = exp(0.2 * gauss()) * (j % 97 == 3 ? 3 : 1);
    for (int64_t r = 0; r < rows; r++) {
        double rs = 0.02 * exp(0.5 * gauss());
        for (int64_t j = 0; j < cols; j++) {
            double g = gauss();
            if (unit() < 0.01) g *= 4; /* heavy tail */
            w[r * cols + j] = (float)(rs * cs[j] * g);
        }
    }
    free(cs);
    return w;
}

/* ==== Errors three ways ==== */

/* The driver's RTN error today: a qtensor, a dequantized copy, dW, a double syrk. */
static double rtn_driver(const float *w, int64_t rows, int64_t cols, const double *h, const lay_option *o,
                         double energy)
{
    lay_qtensor q;
    char err[256];
    if (rtn_quantize(w, rows, cols, h, o, &q, err, sizeof err)) die("rtn_quantize", err);
    float *dw = xmalloc((size_t)(rows * cols) * sizeof *dw);
    lay_qtensor_dequant(&q, dw);
    for (int64_t i = 0; i < rows * cols; i++) dw[i] -= w[i];
    double num = gptq_weight_energy(dw, rows, cols, h);
    lay_qtensor_free(&q);
    free(dw);
    return energy > 0 ? num / energy : num == 0 ? 0 : INFINITY;
}

/* tr(dW H dW^T) / energy with dW = dequant(q) - w formed and summed in double: the
 * reference both rel_err paths are measured against. */
static double reference_rel_err(const float *w, const lay_qtensor *q, const double *h, double energy)
{
    int64_t rows = q->rows, cols = q->cols;
    float *wq = xmalloc((size_t)(rows * cols) * sizeof *wq);
    double *c = calloc((size_t)(cols * cols), sizeof *c), *d = xmalloc((size_t)(256 * cols) * sizeof *d);
    if (!c) die("reference", "out of memory");
    lay_qtensor_dequant(q, wq);
    for (int64_t r0 = 0; r0 < rows; r0 += 256) {
        int64_t nr = rows - r0 < 256 ? rows - r0 : 256;
        for (int64_t i = 0; i < nr * cols; i++) d[i] = (double)wq[r0 * cols + i] - (double)w[r0 * cols + i];
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)cols, (int)nr, 1.0, d, (int)cols, 1.0, c, (int)cols);
    }
    double num = 0;
    for (int64_t i = 0; i < cols; i++) {
        double off = 0;
        for (int64_t j = i + 1; j < cols; j++) off += h[i * cols + j] * c[i * cols + j];
        num += h[i * cols + i] * c[i * cols + i] + 2 * off;
    }
    free(wq), free(c), free(d);
    return num / energy;
}

/* ==== Per shape ==== */

typedef struct {
    int64_t rows, cols;
    double prepare, energy;      /* wall s (two BLAS threads) once per Hessian; cpu s once per tensor */
    double gptq, relerr;         /* cpu s, first option: GPTQ alone, its default rel_err */
    double gptq_err;             /* cpu s per option: GPTQ with its default rel_err */
    double rtn_driver, rtn_exact;
    double gptq_fast, rtn_fast;  /* GPTQ with the fast rel_err (all in), RTN in float */
    double pair_unit, alone_unit; /* wall s of a fast unit with another at once / alone (0: not run) */
    double max_fast, max_float, max_rtn_float;  /* max relative differences (see main) */
    int order_gptq, order_rtn;   /* 1 if the options' order by error changed */
    int mismatch;                /* exact path bits differ from the driver's */
} shape_result;

static int pick(int i, int k, int n) { return k <= 1 ? 0 : (int)((int64_t)i * (n - 1) / (k - 1)); }

static double rel_diff(double a, double b) { return b == 0 ? fabs(a) : fabs(a - b) / fabs(b); }

/* 1 if sorting the n options by a and by b gives different orders. */
static int order_changes(const double *a, const double *b, int n)
{
    for (int i = 0; i < n; i++)
        for (int k = 0; k < n; k++)
            if ((a[i] < a[k]) != (b[i] < b[k])) return 1;
    return 0;
}

static gptq_prep *prepare(const double *h, int64_t cols, int fast, double *seconds)
{
    gptq_params p;
    gptq_params_init(&p);
    p.fast_error = fast;
    gptq_prep *prep;
    char err[512];
    openblas_set_num_threads(2); /* the driver prepares outside its units' parallel region */
    double t = wall();
    if (gptq_prepare(h, cols, &p, &prep, err, sizeof err)) die("gptq_prepare", err);
    if (seconds) *seconds = wall() - t;
    openblas_set_num_threads(1);
    return prep;
}

/* Two fast units at once, one per thread (as the driver's workers), against one. */
static void pair_run(shape_result *sr, const float *w, const gptq_prep *fast, const opt_set *set, double energy)
{
    double t_alone = 0;
    for (int n = 1; n <= 2; n++) {
        double t = wall();
#pragma omp parallel for num_threads(n) schedule(static, 1)
        for (int i = 0; i < n; i++) {
            lay_qtensor q;
            gptq_stats st;
            char err[512];
            double rtn;
            const lay_option *o = &set->v[pick(i, 2, set->n)];
            if (gptq_quantize_prepared(w, sr->rows, fast, o, energy, &q, &st, err, sizeof err) ||
                rtn_error_prepared(w, sr->rows, fast, o, energy, &rtn, err, sizeof err))
                die(o->name, err);
            lay_qtensor_free(&q);
        }
        if (n == 1) t_alone = wall() - t;
        else sr->pair_unit = wall() - t, sr->alone_unit = t_alone;
    }
}

static shape_result bench_shape(int64_t rows, int64_t cols, int tokens, const opt_set *set, int n_opt, int pair)
{
    shape_result sr = {.rows = rows, .cols = cols};
    char err[512];
    double t = wall();
    openblas_set_num_threads(2);
    double *h = synth_hessian(cols, tokens);
    float *w = synth_weights(rows, cols);
    openblas_set_num_threads(1);
    printf("\n### %lld x %lld (synthetic data: %.1f s)\n\n", (long long)rows, (long long)cols, wall() - t);
    gptq_prep *prep = prepare(h, cols, 0, &sr.prepare), *fast = prepare(h, cols, 1, NULL);
    t = cpu();
    double energy = gptq_weight_energy(w, rows, cols, h);
    sr.energy = cpu() - t;
    printf("gptq_prepare %.2f s wall (2 threads), gptq_weight_energy %.2f s\n\n", sr.prepare, sr.energy);
    printf("CPU seconds per unit phase; differences relative, against the double-precision reference\n\n");
    printf("| option | GPTQ+rel_err | RTN driver | RTN exact | GPTQ+rel_err fast | RTN fast | rel_err | "
           "fast - ref | default - ref | RTN float - double |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    double *e_ref = xmalloc((size_t)n_opt * sizeof *e_ref), *e_fast = xmalloc((size_t)n_opt * sizeof *e_fast);
    double *r_ex = xmalloc((size_t)n_opt * sizeof *r_ex), *r_fast = xmalloc((size_t)n_opt * sizeof *r_fast);
    double *e_def = xmalloc((size_t)n_opt * sizeof *e_def);
    for (int i = 0; i < n_opt; i++) {
        const lay_option *o = &set->v[pick(i, n_opt, set->n)];
        lay_qtensor q, qf;
        gptq_stats st, sf;
        double tg = 0;
        if (i == 0) { /* GPTQ alone once, to split GPTQ from its rel_err */
            t = cpu();
            if (gptq_quantize_prepared(w, rows, prep, o, energy, &q, NULL, err, sizeof err)) die(o->name, err);
            tg = cpu() - t;
            lay_qtensor_free(&q);
        }
        t = cpu();
        if (gptq_quantize_prepared(w, rows, prep, o, energy, &q, &st, err, sizeof err)) die(o->name, err);
        double tge = cpu() - t;
        t = cpu();
        double rd = rtn_driver(w, rows, cols, h, o, energy);
        double trd = cpu() - t;
        t = cpu();
        if (rtn_error_prepared(w, rows, prep, o, energy, &r_ex[i], err, sizeof err)) die(o->name, err);
        double tre = cpu() - t;
        t = cpu();
        if (gptq_quantize_prepared(w, rows, fast, o, energy, &qf, &sf, err, sizeof err)) die(o->name, err);
        double tgf = cpu() - t;
        t = cpu();
        if (rtn_error_prepared(w, rows, fast, o, energy, &r_fast[i], err, sizeof err)) die(o->name, err);
        double trf = cpu() - t;
        if (memcmp(&rd, &r_ex[i], sizeof rd) || memcmp(q.q, qf.q, (size_t)(rows * cols))) sr.mismatch = 1;
        e_ref[i] = reference_rel_err(w, &q, h, energy), e_fast[i] = sf.rel_err, e_def[i] = st.rel_err;
        double df = rel_diff(e_fast[i], e_ref[i]), dd = rel_diff(e_def[i], e_ref[i]), dr = rel_diff(r_fast[i], r_ex[i]);
        sr.max_fast = fmax(sr.max_fast, df), sr.max_float = fmax(sr.max_float, dd), sr.max_rtn_float = fmax(sr.max_rtn_float, dr);
        lay_qtensor_free(&q), lay_qtensor_free(&qf);
        if (i == 0) sr.gptq = tg, sr.relerr = tge - tg;
        sr.gptq_err += tge / n_opt, sr.rtn_driver += trd / n_opt, sr.rtn_exact += tre / n_opt, sr.gptq_fast += tgf / n_opt, sr.rtn_fast += trf / n_opt;
        printf("| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.4g | %.1e | %.1e | %.1e |\n", o->name, tge, trd, tre,
               tgf, trf, st.rel_err, df, dd, dr);
        fflush(stdout);
    }
    sr.order_gptq = order_changes(e_fast, e_def, n_opt) || order_changes(e_fast, e_ref, n_opt);
    sr.order_rtn = order_changes(r_fast, r_ex, n_opt);
    printf("\nfirst option: GPTQ alone %.2f s, its default rel_err %.2f s\n", sr.gptq, sr.relerr);
    printf("exact RTN path bit for bit the driver's: %s; q of the fast prep the default's: %s\n",
           sr.mismatch ? "NO" : "yes", sr.mismatch ? "see above" : "yes");
    printf("largest relative difference against the double reference: fast rel_err %.1e, default (float "
           "syrk) %.1e; RTN in float against double %.1e\n", sr.max_fast, sr.max_float, sr.max_rtn_float);
    printf("order of the %d options by error changed: GPTQ %s, RTN %s\n", n_opt, sr.order_gptq ? "YES" : "no",
           sr.order_rtn ? "YES" : "no");
    if (pair) {
        pair_run(&sr, w, fast, set, energy);
        printf("fast unit, wall: %.2f s alone, %.2f s with another at once on the other core (x%.2f)\n",
               sr.alone_unit, sr.pair_unit, sr.pair_unit / sr.alone_unit);
    }
    free(e_ref), free(e_fast), free(e_def), free(r_ex), free(r_fast);
    gptq_prep_free(prep), gptq_prep_free(fast);
    free(h), free(w);
    return sr;
}

/* ==== The 7B projection ==== */

static double unit_today(const shape_result *s) { return s->gptq_err + s->rtn_driver; }
static double unit_exact(const shape_result *s) { return s->gptq_err + s->rtn_exact; }
static double unit_fast(const shape_result *s) { return s->gptq_fast + s->rtn_fast; }

/* Llama-2-7B: 32 layers of q, k, v, o (4096x4096), gate, up (11008x4096), down
 * (4096x11008), and the head (49152x4096); Hessians per layer: attn, attn_out, mlp
 * (4096 columns), mlp_out (11008); the head's (4096). The head costs 12x a
 * 4096x4096 unit: every cost is linear in rows for fixed columns (the 11008-row
 * shape against the 4096-row one shows it). */
static double project_hours(const shape_result *q, const shape_result *up, const shape_result *down, int n_opt,
                            double (*unit_s)(const shape_result *), int cores)
{
    double head_rows = 49152.0 / 4096.0;
    double units = 32 * n_opt * (4 * unit_s(q) + 2 * unit_s(up) + unit_s(down)) + n_opt * head_rows * unit_s(q);
    double energies = 32 * (4 * q->energy + 2 * up->energy + down->energy) + head_rows * q->energy;
    double prepares = 32 * (3 * q->prepare + down->prepare) + q->prepare; /* wall, already on 2 threads */
    return ((units + energies) / cores + prepares) / 3600;
}

static void project(const shape_result *r, int n, int n_opt_all, int cores)
{
    const shape_result *q = NULL, *up = NULL, *down = NULL;
    for (int i = 0; i < n; i++) {
        if (r[i].rows == 4096 && r[i].cols == 4096) q = &r[i];
        if (r[i].rows == 11008 && r[i].cols == 4096) up = &r[i];
        if (r[i].rows == 4096 && r[i].cols == 11008) down = &r[i];
    }
    printf("\n### Units per second on %d cores (one unit per core)\n\n| shape | today | exact | fast |\n"
           "|---|---:|---:|---:|\n", cores);
    for (int i = 0; i < n; i++)
        printf("| %lldx%lld | %.3f | %.3f | %.3f |\n", (long long)r[i].rows, (long long)r[i].cols,
               cores / unit_today(&r[i]), cores / unit_exact(&r[i]), cores / unit_fast(&r[i]));
    if (!q || !up || !down) {
        printf("\n(no 7B projection: it needs the shapes 4096x4096, 11008x4096 and 4096x11008)\n");
        return;
    }
    printf("\n### 7B measurement, projected (%d options; units, weight energies and prepares; not the "
           "calibration forward)\n\n| path | hours |\n|---|---:|\n", n_opt_all);
    printf("| today (driver's calls) | %.2f |\n", project_hours(q, up, down, n_opt_all, unit_today, cores));
    printf("| exact (rtn_error_prepared) | %.2f |\n", project_hours(q, up, down, n_opt_all, unit_exact, cores));
    printf("| fast (fast_error) | %.2f |\n", project_hours(q, up, down, n_opt_all, unit_fast, cores));
    if (q->pair_unit > 0)
        printf("\n(a 4096x4096 unit took x%.2f its time alone when another ran on the other core: scale the "
               "hours by that on this machine)\n", q->pair_unit / q->alone_unit);
}

int main(int argc, char **argv)
{
    int quick = 0, n_opt = -1, tokens = 8192, pair = 0;
    int64_t sizes[8][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
    int n_sizes = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) {
            quick = 1;
            int64_t s[3][2] = {{1024, 1024}, {2752, 1024}, {1024, 2752}};
            memcpy(sizes, s, sizeof s), n_sizes = 3;
        } else if (!strcmp(argv[i], "--sizes") && i + 1 < argc) {
            n_sizes = 0;
            for (char *s = argv[++i]; *s && n_sizes < 8;) {
                long long r, c;
                int used;
                if (sscanf(s, "%lldx%lld%n", &r, &c, &used) != 2 || r <= 0 || c <= 0 || c % 32)
                    die("--sizes", "want RxC,RxC,... with C a multiple of 32");
                sizes[n_sizes][0] = r, sizes[n_sizes][1] = c, n_sizes++;
                s += used;
                if (*s == ',') s++;
            }
        } else if (!strcmp(argv[i], "--options") && i + 1 < argc) n_opt = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) tokens = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--pair")) pair = 1;
        else die(argv[i], "usage: bench_gptq [--quick] [--sizes RxC,...] [--options N] [--tokens N] [--pair]");
    }
    opt_set set;
    opt_default_set(&set);
    if (set.n == 0) die("options", "out of memory");
    int kept = 0; /* the one-step quantizers (the driver's RTN) take no input transform */
    for (int i = 0; i < set.n; i++)
        if (!set.v[i].rot && !set.v[i].awq) set.v[kept++] = set.v[i];
    set.n = kept;
    if (n_opt < 1) n_opt = quick ? set.n : 3;
    if (n_opt > set.n) n_opt = set.n;
    printf("GPTQ units: %d of the %d default options per shape, %d tokens per Hessian; CPU seconds of one "
           "thread per unit phase\n", n_opt, set.n, tokens);
    shape_result r[8];
    int bad = 0;
    for (int i = 0; i < n_sizes; i++) {
        r[i] = bench_shape(sizes[i][0], sizes[i][1], tokens, &set, n_opt, pair);
        bad |= r[i].mismatch;
    }
    project(r, n_sizes, set.n, 2);
    opt_set_free(&set);
    return bad;
}
