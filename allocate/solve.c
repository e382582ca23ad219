/*
 * allocate/solve.c — the exact allocation: the prepared problem as a GLPK MILP,
 * solved with glp_intopt (MIP presolver on), with a callback that watches the
 * branch-and-bound tree's best bound so that the plan carries a proven gap.
 *
 * Model (one binary column per kept (tensor, option); GLPK numbers rows and columns
 * from 1, and gcol()/grow() below are the only places that convert):
 *   rows  one_T      sum_c x[T][c] = 1                  for every tensor T
 *         budget     sum bits[T][c] * x[T][c] <= budget  (tensors in the budget)
 *         tie_T_C    x[T][C] - x[R][C] = 0               T tied to R, the group's first
 *   obj   min sum damage[T][c] * x[T][c]
 *
 * For the solve the objective and the budget row are multiplied by powers of two
 * (exact in floating point) so that GLPK sees numbers near 1; the LP file is written
 * before that, in natural units. The chosen plan's bits are checked in integers: if
 * GLPK's feasibility tolerance let the budget slip by a few bits, the row is tightened
 * by the excess and the MILP solved again. Never prints (GLPK does, when verbose).
 */
#include "alloc_int.h"

#include <float.h>
#include <glpk.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/util.h"

/* ==== Parameters and results ==== */

void alloc_params_init(alloc_params *prm)
{
    memset(prm, 0, sizeof *prm);
    prm->mip_gap = 1e-6;
    prm->time_limit = 60;
    prm->presolve = 1;
    prm->drop_dominated = 1;
    prm->warm_start = 1;
}

const char *alloc_status_name(alloc_status s)
{
    static const char *const names[] = {"optimal", "feasible", "infeasible", "no plan", "failed"};
    return s >= 0 && s <= ALLOC_FAILED ? names[s] : "?";
}

void alloc_result_free(alloc_result *res)
{
    free(res->choice);
    res->choice = NULL;
}

/* ==== The model ==== */

static int gcol(int j) { return j + 1; } /* our 0-based column -> GLPK's */
static int grow(int i) { return i + 1; } /* our 0-based row -> GLPK's */

typedef struct {
    glp_prob *lp;
    int n_cols;
    int *col_tensor, *col_k;   /* [n_cols]: the (tensor, option index) of each column */
    int *opt_off, *col_of;     /* col_of[opt_off[t] + k]: column of option k of tensor t, or -1 */
    int *item_row0;            /* [n_items]: the first tie row of each item */
    int budget_row;            /* 0-based, or -1 if no tensor is in the budget */
    double obj_scale, bits_scale;
} model;

/* Appends one nonzero (0-based row, column) to the triplets. */
typedef struct { int *i, *j; double *v; int64_t n; } triplets;

static void put(triplets *m, int i, int j, double v) { m->i[m->n] = grow(i), m->j[m->n] = gcol(j), m->v[m->n] = v, m->n++; }

static double pow2_near(double x) { return x > 0 && isfinite(x) ? ldexp(1.0, -(int)lround(log2(x))) : 1.0; }

/* Counts columns and rows; sets column maps. */
static int layout(alloc_problem *p, const alloc_prep *pp, model *m, int *n_rows, int64_t *nnz)
{
    int nc = 0, nr = p->n_t, any_budget = 0;
    for (int i = 0; i < pp->n_items; i++) {
        const alloc_item *it = &pp->items[i];
        nc += it->n_cand * it->n_members;
        nr += it->n_cand * (it->n_members - 1);
    }
    for (int t = 0; t < p->n_t; t++) any_budget |= p->t[t].in_budget;
    m->budget_row = any_budget ? nr++ : -1;
    m->n_cols = nc;
    m->col_tensor = malloc((size_t)(nc ? nc : 1) * sizeof(int));
    m->col_k = malloc((size_t)(nc ? nc : 1) * sizeof(int));
    m->opt_off = malloc(((size_t)p->n_t + 1) * sizeof(int));
    m->item_row0 = malloc(((size_t)pp->n_items + 1) * sizeof(int));
    if (!m->col_tensor || !m->col_k || !m->opt_off || !m->item_row0) return -1;
    m->opt_off[0] = 0;
    for (int t = 0; t < p->n_t; t++) m->opt_off[t + 1] = m->opt_off[t] + p->t[t].n_opt;
    if (!(m->col_of = malloc(((size_t)m->opt_off[p->n_t] + 1) * sizeof(int)))) return -1;
    for (int k = 0; k < m->opt_off[p->n_t]; k++) m->col_of[k] = -1;
    int j = 0, r = p->n_t;
    for (int i = 0; i < pp->n_items; i++) {
        const alloc_item *it = &pp->items[i];
        m->item_row0[i] = r;
        r += it->n_cand * (it->n_members - 1);
        for (int c = 0; c < it->n_cand; c++)
            for (int k = 0; k < it->n_members; k++, j++) {
                m->col_tensor[j] = it->members[k], m->col_k[j] = it->cand_k[(size_t)c * it->n_members + k];
                m->col_of[m->opt_off[m->col_tensor[j]] + m->col_k[j]] = j;
            }
    }
    *n_rows = nr;
    *nnz = 2 * (int64_t)nc + 2LL * (nr - p->n_t);
    return 0;
}

static void name_rows_cols(alloc_problem *p, const alloc_prep *pp, model *m)
{
    char name[64];
    for (int t = 0; t < p->n_t; t++) {
        snprintf(name, sizeof name, "one_%d", t);
        glp_set_row_name(m->lp, grow(t), name);
    }
    if (m->budget_row >= 0) glp_set_row_name(m->lp, grow(m->budget_row), "budget");
    for (int j = 0; j < m->n_cols; j++) {
        snprintf(name, sizeof name, "x_%d_%lld", m->col_tensor[j], (long long)p->t[m->col_tensor[j]].opt[m->col_k[j]].id);
        glp_set_col_name(m->lp, gcol(j), name);
    }
    int r = p->n_t;
    for (int i = 0; i < pp->n_items; i++) {
        const alloc_item *it = &pp->items[i];
        for (int c = 0; c < it->n_cand; c++)
            for (int k = 1; k < it->n_members; k++, r++) {
                snprintf(name, sizeof name, "tie_%d_%lld", it->members[k], (long long)p->t[it->members[0]].opt[it->cand_k[(size_t)c * it->n_members]].id);
                glp_set_row_name(m->lp, grow(r), name);
            }
    }
}

/* Builds the MILP in natural units (objective = damage, budget row in bits). */
static int build(alloc_problem *p, const alloc_prep *pp, int64_t budget, model *m)
{
    int n_rows;
    int64_t nnz;
    if (layout(p, pp, m, &n_rows, &nnz)) return -1;
    triplets tr = {malloc((size_t)(nnz + 1) * sizeof(int)), malloc((size_t)(nnz + 1) * sizeof(int)),
                   malloc((size_t)(nnz + 1) * sizeof(double)), 1}; /* GLPK skips element 0 */
    if (!tr.i || !tr.j || !tr.v) { free(tr.i), free(tr.j), free(tr.v); return -1; }
    m->lp = glp_create_prob();
    glp_set_prob_name(m->lp, "bitplan_allocation");
    glp_set_obj_dir(m->lp, GLP_MIN);
    glp_add_rows(m->lp, n_rows);
    glp_add_cols(m->lp, m->n_cols);
    for (int t = 0; t < p->n_t; t++) glp_set_row_bnds(m->lp, grow(t), GLP_FX, 1, 1);
    if (m->budget_row >= 0) glp_set_row_bnds(m->lp, grow(m->budget_row), GLP_UP, 0, (double)budget);
    for (int j = 0; j < m->n_cols; j++) {
        const alloc_tensor *t = &p->t[m->col_tensor[j]];
        glp_set_col_kind(m->lp, gcol(j), GLP_BV);
        glp_set_obj_coef(m->lp, gcol(j), t->opt[m->col_k[j]].damage);
        put(&tr, m->col_tensor[j], j, 1.0);
        if (t->in_budget) put(&tr, m->budget_row, j, (double)t->opt[m->col_k[j]].bits);
    }
    int r = p->n_t, j0 = 0;
    for (int i = 0; i < pp->n_items; i++) {  /* columns of an item: candidate-major */
        const alloc_item *it = &pp->items[i];
        for (int c = 0; c < it->n_cand; c++, j0 += it->n_members)
            for (int k = 1; k < it->n_members; k++, r++) {
                glp_set_row_bnds(m->lp, grow(r), GLP_FX, 0, 0);
                put(&tr, r, j0 + k, 1.0);
                put(&tr, r, j0, -1.0);
            }
    }
    glp_load_matrix(m->lp, (int)(tr.n - 1), tr.i, tr.j, tr.v);
    free(tr.i), free(tr.j), free(tr.v);
    name_rows_cols(p, pp, m);
    return 0;
}

/* Multiplies the objective by obj_scale and the budget row by bits_scale. */
/* The LP file, written atomically like every output: GLPK writes the temporary
 * file by name, util_out syncs and renames it. */
static int write_lp(glp_prob *lp, const char *path, char *err, size_t err_len)
{
    util_out o;
    if (util_out_open(&o, path, err, err_len)) return -1;
    if (glp_write_lp(lp, NULL, o.tmp)) {
        snprintf(err, err_len, "%s: cannot write the LP file", path);
        util_out_abort(&o);
        return -1;
    }
    return util_out_commit(&o, err, err_len);
}

static void rescale(model *m, double obj_scale, double bits_scale, int64_t budget)
{
    double fo = obj_scale / m->obj_scale, fb = bits_scale / m->bits_scale;
    for (int j = 0; j < m->n_cols; j++) glp_set_obj_coef(m->lp, gcol(j), glp_get_obj_coef(m->lp, gcol(j)) * fo);
    if (m->budget_row >= 0 && fb != 1.0) {
        int n = glp_get_num_cols(m->lp), *ind = malloc(((size_t)n + 1) * sizeof *ind);
        double *val = malloc(((size_t)n + 1) * sizeof *val);
        if (ind && val) {
            int len = glp_get_mat_row(m->lp, grow(m->budget_row), ind, val);
            for (int k = 1; k <= len; k++) val[k] *= fb;
            glp_set_mat_row(m->lp, grow(m->budget_row), len, ind, val);
        }
        free(ind), free(val);
    }
    m->obj_scale = obj_scale, m->bits_scale = bits_scale;
    if (m->budget_row >= 0) glp_set_row_bnds(m->lp, grow(m->budget_row), GLP_UP, 0, (double)budget * bits_scale);
}

static void set_budget(model *m, int64_t budget)
{
    if (m->budget_row >= 0) glp_set_row_bnds(m->lp, grow(m->budget_row), GLP_UP, 0, (double)budget * m->bits_scale);
}

/* Scales that bring the largest damage and the mean budget coefficient near 1. */
static void choose_scales(alloc_problem *p, const alloc_prep *pp, double *obj_scale, double *bits_scale)
{
    double dmax = 0, bsum = 0;
    int64_t nb = 0;
    for (int i = 0; i < pp->n_items; i++) {
        const alloc_item *it = &pp->items[i];
        for (int c = 0; c < it->n_cand; c++) {
            if (it->damage[c] > dmax) dmax = it->damage[c];
            if (it->bits[c] > 0) bsum += (double)it->bits[c] / it->n_members, nb++;
        }
    }
    (void)p;
    *obj_scale = pow2_near(dmax);
    *bits_scale = nb ? pow2_near(bsum / (double)nb) : 1.0;
}

/* ==== The search ==== */

typedef struct {
    double mip_gap;
    double gap, bound;   /* at the last look, in GLPK's (scaled) units */
    int have_bound, stopped;
    const double *seed;  /* GLPK column values (1-based) of a first plan, or NULL */
} watch;

/* Hands GLPK the first plan; records the tree's best bound and gap; ends the search
 * once the gap is small. */
static void on_tree(glp_tree *tree, void *info)
{
    watch *w = info;
    int why = glp_ios_reason(tree);
    if (why == GLP_IHEUR && w->seed) {
        glp_ios_heur_sol(tree, w->seed);
        w->seed = NULL;
        return;
    }
    if (why != GLP_ISELECT && why != GLP_IBINGO) return;
    int best = glp_ios_best_node(tree);
    if (!best) return;
    w->bound = glp_ios_node_bound(tree, best), w->have_bound = 1;
    w->gap = glp_ios_mip_gap(tree);
    if (w->gap <= w->mip_gap) {
        w->stopped = 1;
        glp_ios_terminate(tree);
    }
}

/* The LP relaxation with glp_simplex, from the basis the problem holds (after
 * warm_basis: already optimal), or from an advanced basis if that one is bad. */
static int solve_root_lp(model *m, const alloc_params *prm)
{
    glp_smcp sm;
    glp_init_smcp(&sm);
    sm.msg_lev = prm->verbose ? GLP_MSG_ON : GLP_MSG_OFF;
    int rc = glp_simplex(m->lp, &sm);
    if (rc == GLP_EBADB || rc == GLP_ESING || rc == GLP_ECOND) {
        glp_adv_basis(m->lp, 0);
        rc = glp_simplex(m->lp, &sm);
    }
    if (rc) return GLP_EFAIL;
    return glp_get_status(m->lp) == GLP_NOFEAS ? GLP_ENOPFS : 0;
}

/* One glp_intopt; returns its code, fills the watch. With the presolver off GLPK
 * needs the LP optimum first, and accepts a first plan from the callback. */
static int run_intopt(model *m, const alloc_params *prm, int presolve, const double *seed, double time_left, watch *w)
{
    glp_iocp parm;
    glp_init_iocp(&parm);
    parm.presolve = presolve ? GLP_ON : GLP_OFF;
    parm.msg_lev = prm->verbose ? GLP_MSG_ON : GLP_MSG_OFF;
    parm.mip_gap = 0;                       /* the callback decides, so that it knows the gap */
    parm.tm_lim = time_left > 2e6 ? INT32_MAX : (int)(time_left * 1000);
    if (parm.tm_lim < 1) parm.tm_lim = 1;
    parm.cb_func = on_tree, parm.cb_info = w;
    memset(w, 0, sizeof *w);
    w->mip_gap = prm->mip_gap;
    if (!presolve) {
        int rc = solve_root_lp(m, prm);
        if (rc) return rc;
        w->seed = seed;
    }
    return glp_intopt(m->lp, &parm);
}

/* ==== Warm start: the closed-form LP's basis and plan ==== */

/* Sets the LP optimum's basis: each tensor's LP column basic (both vertices for the
 * fractional tensor), tie rows basic except those of the fractional item's dearer
 * vertex, the budget row basic unless the fractional item makes it tight. The
 * count of basics equals the rows, and the basis matrix is block triangular. */
static int warm_basis(alloc_problem *p, const alloc_prep *pp, model *m, const alloc_lp *lp)
{
    for (int j = 0; j < m->n_cols; j++) glp_set_col_stat(m->lp, gcol(j), GLP_NL);
    for (int r = 0; r < glp_get_num_rows(m->lp); r++) glp_set_row_stat(m->lp, grow(r), r < p->n_t ? GLP_NS : GLP_BS);
    int frac = 0;
    for (int t = 0; t < p->n_t; t++) {
        int j = m->col_of[m->opt_off[t] + lp->lp_k[t]], h = lp->hi_k[t] >= 0 ? m->col_of[m->opt_off[t] + lp->hi_k[t]] : -1;
        if (j < 0 || (lp->hi_k[t] >= 0 && h < 0)) return -1;
        glp_set_col_stat(m->lp, gcol(j), GLP_BS);
        if (h >= 0) glp_set_col_stat(m->lp, gcol(h), GLP_BS), frac = 1;
    }
    for (int i = 0; frac && i < pp->n_items; i++) {
        const alloc_item *it = &pp->items[i];
        if (lp->hi_k[it->members[0]] < 0) continue;
        for (int c = 0; c < it->n_cand; c++)
            if (it->cand_k[(size_t)c * it->n_members] == lp->hi_k[it->members[0]])
                for (int k = 1; k < it->n_members; k++)
                    glp_set_row_stat(m->lp, grow(m->item_row0[i] + c * (it->n_members - 1) + k - 1), GLP_NS);
    }
    if (m->budget_row >= 0 && frac) glp_set_row_stat(m->lp, grow(m->budget_row), GLP_NU);
    return 0;
}

/* GLPK column values (1-based) of the rounded plan, or NULL if a choice has no column. */
static double *seed_values(alloc_problem *p, const model *m, const int *choice)
{
    double *x = calloc((size_t)m->n_cols + 1, sizeof *x);
    for (int t = 0; x && t < p->n_t; t++) {
        int j = m->col_of[m->opt_off[t] + choice[t]];
        if (j < 0) { free(x); return NULL; }
        x[gcol(j)] = 1;
    }
    return x;
}

/* The chosen option of every tensor from GLPK's integer solution. */
static void read_choice(const model *m, int n_t, int *choice)
{
    double *best = malloc((size_t)(n_t ? n_t : 1) * sizeof *best);
    for (int t = 0; t < n_t; t++) choice[t] = -1, best[t] = -1;
    for (int j = 0; j < m->n_cols; j++) {
        double x = glp_mip_col_val(m->lp, gcol(j));
        int t = m->col_tensor[j];
        if (x > best[t]) best[t] = x, choice[t] = m->col_k[j];
    }
    free(best);
}

static void fill_result(alloc_problem *p, alloc_result *r)
{
    r->objective = alloc_choice_damage(p, r->choice);
    r->budget_bits = alloc_choice_bits(p, r->choice, 1);
    r->total_bits = alloc_choice_bits(p, r->choice, 0);
    double b = r->bound > r->lp_bound ? r->bound : r->lp_bound; /* both are proven */
    r->bound = b > r->objective ? r->objective : b;
    r->gap = r->objective > 0 ? (r->objective - r->bound) / r->objective : 0;
    if (r->gap < 0) r->gap = 0;
}

/* Interprets glp_intopt's outcome for the first (untightened) solve: the proven bound
 * in natural units, and the status. */
static alloc_status outcome(const model *m, int rc, const watch *w, double *bound)
{
    int st = glp_mip_status(m->lp);
    *bound = -HUGE_VAL;
    if (rc == GLP_ENOPFS || st == GLP_NOFEAS) return ALLOC_INFEASIBLE;
    if (rc == 0 && st == GLP_OPT) { *bound = glp_mip_obj_val(m->lp) / m->obj_scale; return ALLOC_OPTIMAL; }
    if (w->have_bound) *bound = w->bound / m->obj_scale;
    if (rc == GLP_ESTOP && st == GLP_FEAS) return ALLOC_OPTIMAL;     /* our gap test stopped it */
    if (rc == GLP_ETMLIM) return st == GLP_FEAS ? ALLOC_FEASIBLE : ALLOC_NO_PLAN;
    return ALLOC_FAILED;
}

static int fail(alloc_result *r, alloc_status st, char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail(alloc_result *r, alloc_status st, char *err, size_t err_len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
    r->status = st;
    return -1;
}

/* Solves, tightening the budget row while GLPK's tolerance lets the plan exceed it. */
static int solve_model(alloc_problem *p, model *m, int64_t budget, const alloc_params *prm, const double *seed,
                       double t0, alloc_result *r, char *err, size_t err_len)
{
    int64_t rhs = budget;
    for (int attempt = 0; attempt < 8; attempt++) {
        watch w;
        double left = prm->time_limit - (util_now_s() - t0);
        int presolve = prm->presolve && !prm->warm_start;
        int rc = run_intopt(m, prm, presolve, attempt ? NULL : seed, left > 0.001 ? left : 0.001, &w);
        double bound;
        alloc_status st = outcome(m, rc, &w, &bound);
        if (attempt == 0) r->glpk_rc = rc, r->status = st, r->bound = bound;
        if (st == ALLOC_INFEASIBLE)
            return fail(r, attempt ? ALLOC_FAILED : st, err, err_len, "no plan fits a budget of %lld bits", (long long)rhs);
        if (st == ALLOC_NO_PLAN)
            return fail(r, st, err, err_len, "the time limit (%g s) came before any plan", prm->time_limit);
        if (st == ALLOC_FAILED)
            return fail(r, st, err, err_len, "GLPK failed for a budget of %lld bits (glp_intopt code %d)", (long long)rhs, rc);
        if (attempt) r->status = st == ALLOC_OPTIMAL && r->status == ALLOC_OPTIMAL ? ALLOC_OPTIMAL : ALLOC_FEASIBLE;
        read_choice(m, p->n_t, r->choice);
        int64_t used = alloc_choice_bits(p, r->choice, 1);
        if (used <= budget) return 0;
        rhs -= used - budget;
        set_budget(m, rhs);
    }
    return fail(r, ALLOC_FAILED, err, err_len, "GLPK's plans keep exceeding the budget of %lld bits", (long long)budget);
}

int alloc_solve(alloc_problem *p, int64_t budget, const alloc_params *prm, alloc_result *r, char *err, size_t err_len)
{
    double t0 = util_now_s();
    memset(r, 0, sizeof *r);
    r->n_tensors = p->n_t;
    r->choice = malloc((size_t)(p->n_t ? p->n_t : 1) * sizeof *r->choice);
    if (!r->choice) return fail(r, ALLOC_FAILED, err, err_len, "out of memory for %d tensors", p->n_t);
    int64_t lo, hi;
    if (alloc_range(p, &lo, &hi, err, err_len)) { r->status = ALLOC_INFEASIBLE; return -1; }
    if (budget < lo)
        return fail(r, ALLOC_INFEASIBLE, err, err_len, "budget %lld bits is below the cheapest plan: reachable %lld to %lld bits",
                    (long long)budget, (long long)lo, (long long)hi);
    alloc_lp lp;
    if (alloc_lp_relax(p, budget, &lp, err, err_len)) { r->status = ALLOC_FAILED; return -1; }
    r->lp_bound = lp.bound;
    alloc_prep pp;
    if (alloc_prepare(p, prm->drop_dominated, prm->hull, &pp, err, err_len)) {
        alloc_lp_free(&lp);
        r->status = ALLOC_FAILED;
        return -1;
    }
    r->n_dropped = pp.n_dropped, r->n_off_hull = pp.n_off_hull;
    model m = {.obj_scale = 1, .bits_scale = 1};
    double *seed = NULL;
    int rc = -1;
    glp_term_out(prm->verbose ? GLP_ON : GLP_OFF);
    if (build(p, &pp, budget, &m)) { fail(r, ALLOC_FAILED, err, err_len, "out of memory building the MILP of %d tensors", p->n_t); goto done; }
    r->n_cols = glp_get_num_cols(m.lp), r->n_rows = glp_get_num_rows(m.lp);
    if (prm->write_lp && write_lp(m.lp, prm->write_lp, err, err_len)) {
        r->status = ALLOC_FAILED;
        goto done;
    }
    double os, bs;
    choose_scales(p, &pp, &os, &bs);
    rescale(&m, os, bs, budget);
    if (prm->warm_start) {  /* the closed-form LP gives GLPK its root basis and first plan */
        if (warm_basis(p, &pp, &m, &lp)) glp_adv_basis(m.lp, 0);
        seed = seed_values(p, &m, lp.round_k);
    }
    rc = solve_model(p, &m, budget, prm, seed, t0, r, err, err_len);
    if (!rc) fill_result(p, r);
done:
    if (m.lp) glp_delete_prob(m.lp);
    free(m.col_tensor), free(m.col_k), free(m.opt_off), free(m.col_of), free(m.item_row0), free(seed);
    alloc_prep_free(&pp);
    alloc_lp_free(&lp);
    glp_term_out(GLP_ON);
    r->seconds = util_now_s() - t0;
    return rc;
}
