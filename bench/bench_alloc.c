/*
 * bench/bench_alloc.c — how good and how fast the exact allocation is.
 *
 *   bench_alloc [--db D] [--calib ID] [--bpw 2.5,3,3.5,4,5,6] [--sizes 1000,10000,100000]
 *               [--time-limit S] [--moves N (annealing moves per tensor, 10000; at most 5e7 in all)]
 *
 * 1. On a real measurement database (--db): for each target bpw, the GLPK plan, the
 *    best uniform plan, the greedy (most damage saved per extra bit) and simulated
 *    annealing (ExLlamaV2's manner), each with its objective and bits per weight. The
 *    GLPK plan must never be worse: the program says so, and exits 1 if it is.
 * 2. On synthetic instances of N tensors with 24 options each (error falling about
 *    exponentially with bits per weight, with multiplicative noise so that curves are
 *    only convex-ish and some options dominated): solve time and gap of the exact
 *    MILP, of the hull-reduced MILP, and of the closed-form LP rounding; the
 *    baselines' objectives relative to the best plan found.
 * Prints a Markdown table per part. Never writes to the database.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "allocate/allocate.h"
#include "db/db.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ==== Synthetic instances ==== */

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static double unit(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1.0p-53;
}
static double gauss(void) { return sqrt(-2 * log(unit() + 1e-300)) * cos(2 * M_PI * unit()); }

static alloc_problem *synthetic(int n, int n_opt, int64_t *weights)
{
    static const int64_t shapes[][2] = {{576, 576}, {192, 576}, {1536, 576}, {576, 1536},
                                        {4096, 4096}, {1024, 4096}, {11008, 4096}, {4096, 11008}};
    alloc_problem *p = alloc_problem_new();
    *weights = 0;
    double mean = 0;
    int64_t *nw = malloc((size_t)n * sizeof *nw);
    for (int t = 0; t < n; t++) {
        const int64_t *s = shapes[(int)(unit() * 8) % 8];
        nw[t] = s[0] * s[1], mean += (double)nw[t] / n;
    }
    for (int t = 0; t < n; t++) {
        int ti = alloc_add_tensor(p, (lay_class)(t % 7), t / 7, nw[t], 1);
        double a = exp(log(0.1) + unit() * log(100.0)), slope = 1.2 + 0.8 * unit();
        for (int c = 0; c < n_opt; c++) {
            double bpw = 2.05 + 6.45 * c / (n_opt - 1) + 0.05 * (unit() - 0.5);
            double err = a * exp2(-slope * bpw) * exp(0.15 * gauss());
            alloc_add_option(p, ti, c + 1, (int64_t)llround(bpw * (double)nw[t] / 8) * 8, err * (double)nw[t] / mean);
        }
        *weights += nw[t];
    }
    free(nw);
    return p;
}

/* ==== Comparing allocators on one problem and budget ==== */

typedef struct { const char *name; double obj, bpw, seconds; int ok; } row;

/* Annealing moves: `moves` per tensor, at most 50 million in all. */
static int64_t anneal_moves(const alloc_problem *p, int64_t per_tensor)
{
    int64_t m = per_tensor * alloc_n_tensors(p);
    return m > 50000000 ? 50000000 : m;
}

static row run_baseline(const char *name, alloc_problem *p, int64_t budget, int64_t weights, int which, int64_t moves)
{
    moves = anneal_moves(p, moves);
    int *ch = malloc((size_t)alloc_n_tensors(p) * sizeof *ch);
    double t0 = now();
    int rc = which == 0 ? alloc_uniform(p, budget, ch) : which == 1 ? alloc_greedy(p, budget, ch)
                                                                    : alloc_anneal(p, budget, 42, moves, ch);
    row r = {name, NAN, NAN, now() - t0, rc == 0 && alloc_choice_valid(p, ch, budget)};
    if (r.ok) r.obj = alloc_choice_damage(p, ch), r.bpw = (double)alloc_choice_bits(p, ch, 1) / (double)weights;
    free(ch);
    return r;
}

static int compare(alloc_problem *p, int64_t budget, int64_t weights, const char *label, double time_limit, int64_t moves)
{
    alloc_params prm;
    alloc_params_init(&prm);
    prm.time_limit = time_limit;
    alloc_result res;
    char err[256];
    int rc = alloc_solve(p, budget, &prm, &res, err, sizeof err);
    if (rc) { printf("| %s | GLPK: %s |\n", label, err); alloc_result_free(&res); return 0; }
    row rows[4] = {{"glpk", res.objective, (double)res.budget_bits / (double)weights, res.seconds, 1},
                   run_baseline("uniform", p, budget, weights, 0, moves),
                   run_baseline("greedy", p, budget, weights, 1, moves),
                   run_baseline("anneal", p, budget, weights, 2, moves)};
    int worse = 0;
    printf("| %s | %.5g (%.4f bpw, gap %.1e, %.2f s)", label, rows[0].obj, rows[0].bpw, res.gap, res.seconds);
    for (int i = 1; i < 4; i++) {
        if (!rows[i].ok) { printf(" | none fits"); continue; }
        printf(" | %.5g (%.4f bpw, %+.2f%%)", rows[i].obj, rows[i].bpw, 100 * (rows[i].obj / rows[0].obj - 1));
        if (rows[i].obj < rows[0].obj * (1 - res.gap) - 1e-12 * fabs(rows[0].obj)) worse = 1;
    }
    printf(" |%s\n", worse ? " GLPK WORSE" : "");
    alloc_result_free(&res);
    return worse;
}

/* ==== Part 1: a real database ==== */

static int bench_db(const char *path, int64_t calib, const double *bpw, int n_bpw, double time_limit, int64_t moves)
{
    db_conn *d = NULL;
    db_alloc_input in;
    alloc_built b;
    alloc_setup s;
    char err[512];
    if (db_open(path, DB_OPEN_READ, &d) || db_calib_choose(d, calib, &calib) || db_alloc_load(d, calib, &in)) {
        fprintf(stderr, "bench_alloc: %s\n", db_errmsg(d));
        db_close(d);
        return 2;
    }
    alloc_setup_init(&s);
    if (alloc_build_from_db(&in, &s, &b, err, sizeof err)) { fprintf(stderr, "bench_alloc: %s\n", err); return 2; }
    printf("\n## %s, calibration %lld: %d tensors, %lld measurements, metric %s%s%s\n\n", path, (long long)calib, b.n,
           (long long)in.n_meas, b.metric == ALLOC_METRIC_KLD ? "kld" : "rel_err", b.note[0] ? "; " : "", b.note);
    printf("| target bpw | GLPK | uniform | greedy | annealing |\n|---|---|---|---|---|\n");
    int worse = 0;
    for (int i = 0; i < n_bpw; i++) {
        char label[32];
        snprintf(label, sizeof label, "%.2f", bpw[i]);
        worse |= compare(b.p, (int64_t)floor(bpw[i] * (double)b.block_weights), b.block_weights, label, time_limit, moves);
    }
    alloc_built_free(&b);
    db_alloc_input_free(&in);
    db_close(d);
    return worse;
}

/* ==== Part 2: synthetic scale ==== */

static int verbose;

static void solve_row(alloc_problem *p, int64_t budget, int hull, double time_limit, double *obj)
{
    alloc_params prm;
    alloc_params_init(&prm);
    prm.verbose = verbose;
    if (hull < 0) hull = 0, prm.warm_start = 0, prm.mip_gap = 1e-4; /* cold: GLPK's presolver, no warm start */
    prm.time_limit = time_limit, prm.hull = hull;
    alloc_result r;
    char err[256];
    if (alloc_solve(p, budget, &prm, &r, err, sizeof err)) printf(" | %s", err);
    else {
        printf(" | %.2f s, gap %.1e, %s, %d cols", r.seconds, r.gap, alloc_status_name(r.status), r.n_cols);
        if (obj) *obj = r.objective;
    }
    alloc_result_free(&r);
}

static void bench_scale(const int *sizes, int n_sizes, double time_limit, int64_t moves)
{
    printf("\n## Synthetic: 24 options per tensor, target 4.0 bpw, time limit %g s\n\n", time_limit);
    printf("| tensors | exact MILP | hull MILP | LP rounding | greedy | annealing | uniform | cold GLPK (presolve, gap 1e-4) |\n"
           "|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < n_sizes; i++) {
        int64_t w;
        rng = 0x2545F4914F6CDD1Dull + (uint64_t)sizes[i];
        alloc_problem *p = synthetic(sizes[i], 24, &w);
        int64_t budget = (int64_t)(4.0 * (double)w);
        double best = NAN;
        printf("| %d", sizes[i]);
        fflush(stdout);
        if (sizes[i] <= 200000) solve_row(p, budget, 0, time_limit, &best);
        else printf(" | skipped");
        fflush(stdout);
        double hull_obj = NAN;
        solve_row(p, budget, 1, time_limit, &hull_obj);
        if (isnan(best)) best = hull_obj;
        int *ch = malloc((size_t)sizes[i] * sizeof *ch);
        double lp, t0 = now();
        char err[256];
        if (!alloc_lp_hull(p, budget, &lp, ch, err, sizeof err)) {
            double o = alloc_choice_damage(p, ch);
            printf(" | %.3f s, gap <= %.1e", now() - t0, (o - lp) / o);
            if (isnan(best)) best = o;
        }
        free(ch);
        for (int k = 1; k <= 3; k++) {
            row r = run_baseline("", p, budget, w, k % 3, moves);
            if (r.ok) printf(" | %+.3f%% (%.2f s)", 100 * (r.obj / best - 1), r.seconds);
            else printf(" | none fits");
        }
        if (sizes[i] <= 10000) solve_row(p, budget, -1, time_limit, NULL);
        else printf(" | skipped");
        printf(" |\n");
        fflush(stdout);
        alloc_problem_free(p);
    }
}

/* ==== Arguments ==== */

static int parse_list(const char *s, double *v, int cap)
{
    int n = 0;
    for (char *end; *s && n < cap; s = *end ? end + 1 : end) {
        v[n++] = strtod(s, &end);
        if (end == s) return -1;
    }
    return n;
}

int main(int argc, char **argv)
{
    const char *db = NULL;
    double bpw[32] = {2.5, 3, 3.5, 4, 5, 6}, sz[16] = {1000, 10000, 100000}, time_limit = 60;
    int n_bpw = 6, n_sz = 3;
    int64_t calib = 0, moves = 10000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--db") && v) db = v, i++;
        else if (!strcmp(a, "--calib") && v) calib = atoll(v), i++;
        else if (!strcmp(a, "--bpw") && v) n_bpw = parse_list(v, bpw, 32), i++;
        else if (!strcmp(a, "--sizes") && v) n_sz = parse_list(v, sz, 16), i++;
        else if (!strcmp(a, "--time-limit") && v) time_limit = atof(v), i++;
        else if (!strcmp(a, "--moves") && v) moves = atoll(v), i++;
        else if (!strcmp(a, "--verbose")) verbose = 1;
        else if (a[0] != '-' && !db) db = a;
        else { fprintf(stderr, "usage: bench_alloc [--db D] [--calib ID] [--bpw LIST] [--sizes LIST] [--time-limit S] [--moves N]\n"); return 2; }
    }
    if (n_bpw < 0 || n_sz < 0) { fprintf(stderr, "bench_alloc: bad list\n"); return 2; }
    int rc = 0;
    if (db) rc = bench_db(db, calib, bpw, n_bpw, time_limit, moves);
    int sizes[16];
    for (int i = 0; i < n_sz; i++) sizes[i] = (int)sz[i];
    if (n_sz) bench_scale(sizes, n_sz, time_limit, moves);
    return rc;
}
