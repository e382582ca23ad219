/*
 * allocate/lp_hull.c — the LP relaxation of the allocation problem, solved in closed
 * form. With x relaxed to [0, 1], an optimal solution lives on each item's lower
 * convex hull of (bits, damage), and is found greedily: start every item at its
 * cheapest hull vertex, then take hull segments in order of damage saved per bit
 * until the budget is used up; the segment that does not fit is taken in part. So at
 * most one item is fractional; rounding it down gives a plan whose objective exceeds
 * the LP optimum (a lower bound on every plan) by at most that segment's damage step.
 * Independent of GLPK: it bounds GLPK's answers in the tests and serves problems too
 * large for the MILP. Never prints.
 */
#include "alloc_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    double slope;   /* damage change per bit, negative */
    int item, from; /* segment from candidate `from` to the next hull vertex */
} segment;

static int seg_cmp(const void *a, const void *b)
{
    const segment *x = a, *y = b;
    if (x->slope != y->slope) return x->slope < y->slope ? -1 : 1;
    if (x->item != y->item) return x->item - y->item;
    return x->from - y->from;
}

/* Collects every hull segment; returns their number, or -1 if out of memory. */
static int64_t collect_segments(const alloc_prep *pp, segment **out)
{
    int64_t n = 0;
    for (int i = 0; i < pp->n_items; i++) n += pp->items[i].n_cand - 1;
    segment *s = malloc((size_t)(n ? n : 1) * sizeof *s);
    if (!s) return -1;
    int64_t k = 0;
    for (int i = 0; i < pp->n_items; i++) {
        const alloc_item *it = &pp->items[i];
        for (int c = 0; c + 1 < it->n_cand; c++) {
            double db = (double)(it->bits[c + 1] - it->bits[c]), dd = it->damage[c + 1] - it->damage[c];
            /* items outside the budget have db == 0: hull mode left one vertex there */
            s[k++] = (segment){db > 0 ? dd / db : -HUGE_VAL, i, c};
        }
    }
    qsort(s, (size_t)n, sizeof *s, seg_cmp);
    *out = s;
    return n;
}

void alloc_lp_free(alloc_lp *lp)
{
    free(lp->lp_k), free(lp->hi_k), free(lp->round_k);
    memset(lp, 0, sizeof *lp);
}

/* Records the LP solution (every item at its vertex, the fractional one between
 * `at` and the next vertex) before the rounding goes on filling the budget. */
static void snapshot(const alloc_prep *pp, const int *at, int frac_item, alloc_lp *lp)
{
    for (int i = 0; i < pp->n_items; i++) alloc_prep_apply(pp, i, at[i], lp->lp_k);
    if (frac_item >= 0) alloc_prep_apply(pp, frac_item, at[frac_item] + 1, lp->hi_k);
}

int alloc_lp_relax(alloc_problem *p, int64_t budget, alloc_lp *lp, char *err, size_t err_len)
{
    memset(lp, 0, sizeof *lp);
    alloc_prep pp;
    if (alloc_prepare(p, 1, 1, &pp, err, err_len)) return -1;
    size_t nt = (size_t)p->n_t + 1;
    int *at = calloc((size_t)pp.n_items + 1, sizeof *at), *blocked = calloc((size_t)pp.n_items + 1, sizeof *blocked);
    lp->lp_k = malloc(nt * sizeof(int)), lp->hi_k = malloc(nt * sizeof(int)), lp->round_k = malloc(nt * sizeof(int));
    segment *seg = NULL;
    int64_t n_seg = at && blocked && lp->lp_k && lp->hi_k && lp->round_k ? collect_segments(&pp, &seg) : -1;
    int rc = -1, frac_item = -1;
    if (n_seg < 0) { snprintf(err, err_len, "out of memory for the LP of %d tensors", p->n_t); goto done; }
    for (int t = 0; t < p->n_t; t++) lp->hi_k[t] = -1;
    int64_t used = 0;
    double bound = 0;
    for (int i = 0; i < pp.n_items; i++) used += pp.items[i].bits[0], bound += pp.items[i].damage[0];
    if (used > budget) {
        snprintf(err, err_len, "budget %lld bits is below the cheapest plan (%lld bits)", (long long)budget, (long long)used);
        goto done;
    }
    for (int64_t k = 0; k < n_seg; k++) {
        const alloc_item *it = &pp.items[seg[k].item];
        int i = seg[k].item, c = seg[k].from;
        if (blocked[i] || at[i] != c) continue;   /* an earlier segment of this item was not taken */
        int64_t db = it->bits[c + 1] - it->bits[c];
        double dd = it->damage[c + 1] - it->damage[c];
        if (used + db <= budget) {
            used += db, at[i] = c + 1;
            if (frac_item < 0) bound += dd;
        } else if (frac_item < 0) {
            lp->theta = (double)(budget - used) / (double)db;
            bound += dd * lp->theta;
            frac_item = i, blocked[i] = 1;
            snapshot(&pp, at, frac_item, lp);
        } else blocked[i] = 1;
    }
    if (frac_item < 0) snapshot(&pp, at, -1, lp);
    for (int i = 0; i < pp.n_items; i++) alloc_prep_apply(&pp, i, at[i], lp->round_k);
    lp->bound = bound;
    rc = 0;
done:
    free(at), free(blocked), free(seg);
    alloc_prep_free(&pp);
    if (rc) alloc_lp_free(lp);
    return rc;
}

int alloc_lp_hull(alloc_problem *p, int64_t budget, double *bound, int *choice, char *err, size_t err_len)
{
    alloc_lp lp;
    if (alloc_lp_relax(p, budget, &lp, err, err_len)) return -1;
    *bound = lp.bound;
    if (choice) memcpy(choice, lp.round_k, (size_t)p->n_t * sizeof *choice);
    alloc_lp_free(&lp);
    return 0;
}
