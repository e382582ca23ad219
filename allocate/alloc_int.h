/*
 * allocate/alloc_int.h — what the files of allocate/ share: the problem's body and
 * its prepared form (tie groups merged into items, disallowed options removed,
 * dominated and off-hull options dropped). Internal to allocate/.
 *
 * Invariants of a prepared item (alloc_prepare):
 *  1. Candidates are sorted by budget bits ascending, then damage ascending.
 *  2. A candidate is one option id that every member of the item allows.
 *  3. With dominance dropping, damage strictly decreases as bits increase, so each
 *     candidate saves damage for its extra bits; with hull, the slopes
 *     (damage step / bits step) also strictly increase (the lower convex hull).
 */
#ifndef BITPLAN_ALLOC_INT_H
#define BITPLAN_ALLOC_INT_H

#include "allocate.h"

typedef struct {
    int64_t id;            /* caller's option id */
    int64_t bits;
    double damage;
} alloc_opt;

typedef struct {
    lay_class cls;
    int layer;
    int64_t n_weights;
    int in_budget;
    alloc_opt *opt;
    int n_opt, cap_opt;
    double min_bpw, max_bpw;
    int fixed;             /* the only allowed option, or -1 */
} alloc_tensor;

struct alloc_problem {
    alloc_tensor *t;
    int n_t, cap_t;
    int *tie_parent;       /* [cap_t] union-find over ties; a root is its own parent */
};

typedef struct {
    int n_members;
    int *members;          /* tensor indices, ascending */
    int n_cand;
    int *cand_k;           /* [n_cand][n_members]: each member's option index */
    int64_t *bits;         /* [n_cand]: budget bits summed over the members */
    int64_t *all_bits;     /* [n_cand]: all bits summed over the members */
    double *damage;        /* [n_cand]: damage summed over the members */
} alloc_item;

typedef struct {
    int n_items;
    alloc_item *items;
    int64_t n_dropped;     /* (tensor, option) pairs dropped as dominated */
    int64_t n_off_hull;    /* further pairs dropped as off the hull */
} alloc_prep;

/* Builds the items. drop: drop dominated candidates; hull: keep the lower convex hull
 * (implies drop). 0, or -1 (out of memory, or an item with no allowed option). */
int alloc_prepare(alloc_problem *p, int drop, int hull, alloc_prep *out, char *err, size_t err_len);
void alloc_prep_free(alloc_prep *pp);
/* Writes item i's candidate c into choice[] for every member. */
void alloc_prep_apply(const alloc_prep *pp, int i, int c, int *choice);
int alloc_tie_root(alloc_problem *p, int t);

/* The LP relaxation in closed form (lp_hull.c): its optimum, its solution and the
 * rounded plan, each as an option index per tensor. */
typedef struct {
    double bound;          /* the LP optimum */
    int *lp_k;             /* [n_t] the LP solution (the fractional item: its cheaper vertex) */
    int *hi_k;             /* [n_t] the fractional item's dearer vertex; -1 elsewhere */
    double theta;          /* the fractional item's weight on hi_k; 0 if none */
    int *round_k;          /* [n_t] rounded down, then filled greedily: a plan within budget */
} alloc_lp;

int alloc_lp_relax(alloc_problem *p, int64_t budget, alloc_lp *lp, char *err, size_t err_len);
void alloc_lp_free(alloc_lp *lp);

#endif
