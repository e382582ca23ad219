/*
 * allocate/problem.c — building an allocation problem, and preparing it for the
 * solvers: tie groups merged into items, options outside the bounds removed,
 * dominated (and, in hull mode, off-hull) options dropped. Pure bookkeeping: no
 * solving, no printing, no I/O.
 */
#include "alloc_int.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ==== Classes ==== */

unsigned alloc_class_set_parse(const char *s)
{
    static const struct { const char *name; unsigned mask; } sets[] = {
        {"qkv", 1u << LAY_Q | 1u << LAY_K | 1u << LAY_V},
        {"gate_up", 1u << LAY_GATE | 1u << LAY_UP},
        {"attn", 1u << LAY_Q | 1u << LAY_K | 1u << LAY_V | 1u << LAY_O},
        {"mlp", 1u << LAY_GATE | 1u << LAY_UP | 1u << LAY_DOWN},
    };
    for (size_t i = 0; i < sizeof sets / sizeof *sets; i++)
        if (!strcmp(s, sets[i].name)) return sets[i].mask;
    unsigned mask = 0;
    char buf[128];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int c = lay_class_of_name(tok);
        if (c < 0) return 0;
        mask |= 1u << c;
    }
    return mask;
}

/* ==== Building ==== */

alloc_problem *alloc_problem_new(void) { return calloc(1, sizeof(alloc_problem)); }

void alloc_problem_free(alloc_problem *p)
{
    if (!p) return;
    for (int i = 0; i < p->n_t; i++) free(p->t[i].opt);
    free(p->t);
    free(p->tie_parent);
    free(p);
}

int alloc_add_tensor(alloc_problem *p, lay_class cls, int layer, int64_t n_weights, int in_budget)
{
    assert(cls >= 0 && cls < LAY_N_CLASSES && n_weights > 0);
    if (p->n_t == p->cap_t) {
        int cap = p->cap_t ? 2 * p->cap_t : 64;
        alloc_tensor *t = realloc(p->t, (size_t)cap * sizeof *t);
        if (!t) return -1;
        p->t = t;
        int *par = realloc(p->tie_parent, (size_t)cap * sizeof *par);
        if (!par) return -1;
        p->tie_parent = par;
        p->cap_t = cap;
    }
    alloc_tensor *t = &p->t[p->n_t];
    memset(t, 0, sizeof *t);
    t->cls = cls, t->layer = layer, t->n_weights = n_weights, t->in_budget = in_budget != 0;
    t->min_bpw = 0, t->max_bpw = HUGE_VAL, t->fixed = -1;
    p->tie_parent[p->n_t] = p->n_t;
    return p->n_t++;
}

int alloc_add_option(alloc_problem *p, int ti, int64_t option_id, int64_t bits, double damage)
{
    assert(ti >= 0 && ti < p->n_t && bits > 0 && isfinite(damage) && damage >= 0);
    alloc_tensor *t = &p->t[ti];
    if (t->n_opt == t->cap_opt) {
        int cap = t->cap_opt ? 2 * t->cap_opt : 8;
        alloc_opt *o = realloc(t->opt, (size_t)cap * sizeof *o);
        if (!o) return -1;
        t->opt = o, t->cap_opt = cap;
    }
    t->opt[t->n_opt] = (alloc_opt){option_id, bits, damage};
    return t->n_opt++;
}

int alloc_tie_root(alloc_problem *p, int t)
{
    while (p->tie_parent[t] != t) t = p->tie_parent[t] = p->tie_parent[p->tie_parent[t]];
    return t;
}

int alloc_tie(alloc_problem *p, const int *tensors, int n)
{
    for (int i = 1; i < n; i++) {
        assert(tensors[i] >= 0 && tensors[i] < p->n_t);
        int a = alloc_tie_root(p, tensors[0]), b = alloc_tie_root(p, tensors[i]);
        if (a != b) p->tie_parent[a > b ? a : b] = a < b ? a : b; /* the smallest index is the root */
    }
    return 0;
}

void alloc_limit_bpw(alloc_problem *p, int t, double min_bpw, double max_bpw)
{
    assert(t >= 0 && t < p->n_t);
    if (min_bpw > p->t[t].min_bpw) p->t[t].min_bpw = min_bpw;
    if (max_bpw < p->t[t].max_bpw) p->t[t].max_bpw = max_bpw;
}

void alloc_fix_option(alloc_problem *p, int t, int k)
{
    assert(t >= 0 && t < p->n_t && k >= 0 && k < p->t[t].n_opt);
    p->t[t].fixed = k;
}

int alloc_n_tensors(const alloc_problem *p) { return p->n_t; }
int alloc_n_options(const alloc_problem *p, int t) { return p->t[t].n_opt; }
int64_t alloc_option_bits(const alloc_problem *p, int t, int k) { return p->t[t].opt[k].bits; }
double alloc_option_damage(const alloc_problem *p, int t, int k) { return p->t[t].opt[k].damage; }
int64_t alloc_option_id(const alloc_problem *p, int t, int k) { return p->t[t].opt[k].id; }
lay_class alloc_tensor_class(const alloc_problem *p, int t) { return p->t[t].cls; }
int64_t alloc_tensor_weights(const alloc_problem *p, int t) { return p->t[t].n_weights; }
int alloc_tensor_in_budget(const alloc_problem *p, int t) { return p->t[t].in_budget; }

/* ==== Choices ==== */

double alloc_choice_damage(const alloc_problem *p, const int *choice)
{
    double s = 0;
    for (int t = 0; t < p->n_t; t++) s += p->t[t].opt[choice[t]].damage;
    return s;
}

int64_t alloc_choice_bits(const alloc_problem *p, const int *choice, int budget_only)
{
    int64_t s = 0;
    for (int t = 0; t < p->n_t; t++)
        if (!budget_only || p->t[t].in_budget) s += p->t[t].opt[choice[t]].bits;
    return s;
}

/* Whether option k of tensor t is allowed by its bounds and pin. */
static int allowed(const alloc_tensor *t, int k)
{
    if (t->fixed >= 0) return k == t->fixed;
    double bpw = (double)t->opt[k].bits / (double)t->n_weights;
    return bpw >= t->min_bpw - 1e-12 && bpw <= t->max_bpw + 1e-12;
}

int alloc_choice_valid(alloc_problem *p, const int *choice, int64_t budget)
{
    for (int t = 0; t < p->n_t; t++) {
        if (choice[t] < 0 || choice[t] >= p->t[t].n_opt || !allowed(&p->t[t], choice[t])) return 0;
        int r = alloc_tie_root(p, t);
        if (p->t[t].opt[choice[t]].id != p->t[r].opt[choice[r]].id) return 0;
    }
    return alloc_choice_bits(p, choice, 1) <= budget;
}

/* ==== Preparing: items, candidates, dominance, hull ==== */

typedef struct {
    int64_t bits, all_bits;
    double damage;
    int idx;           /* position in the unsorted candidate list */
} cand_key;

static int cand_cmp(const void *a, const void *b)
{
    const cand_key *x = a, *y = b;
    if (x->bits != y->bits) return x->bits < y->bits ? -1 : 1;
    if (x->damage != y->damage) return x->damage < y->damage ? -1 : 1;
    return x->idx - y->idx;
}

/* Option index of tensor t with this id that its bounds allow, or -1. */
static int find_allowed(const alloc_tensor *t, int64_t id)
{
    for (int k = 0; k < t->n_opt; k++)
        if (t->opt[k].id == id && allowed(t, k)) return k;
    return -1;
}

/* Keeps only the candidates in keep[] order (sorted positions) and frees the rest. */
static int item_keep(alloc_item *it, const cand_key *sorted, const int *keep, int n_keep)
{
    int m = it->n_members;
    int *k2 = malloc((size_t)(n_keep ? n_keep : 1) * (size_t)m * sizeof *k2);
    if (!k2) return -1;
    for (int j = 0; j < n_keep; j++) {
        const cand_key *c = &sorted[keep[j]];
        memcpy(k2 + (size_t)j * m, it->cand_k + (size_t)c->idx * m, (size_t)m * sizeof *k2);
        it->bits[j] = c->bits, it->all_bits[j] = c->all_bits, it->damage[j] = c->damage;
    }
    free(it->cand_k);
    it->cand_k = k2;
    it->n_cand = n_keep;
    return 0;
}

/* Drops dominated candidates (another has no more bits and no more damage); with
 * hull, also those above the lower convex hull. Returns candidates removed by each. */
static int item_reduce(alloc_item *it, int drop, int hull, int *n_dom, int *n_hull)
{
    int n = it->n_cand;
    cand_key *s = malloc((size_t)n * sizeof *s);
    int *keep = malloc((size_t)n * sizeof *keep);
    if (!s || !keep) { free(s), free(keep); return -1; }
    for (int c = 0; c < n; c++) s[c] = (cand_key){it->bits[c], it->all_bits[c], it->damage[c], c};
    qsort(s, (size_t)n, sizeof *s, cand_cmp);
    int nk = 0;
    for (int c = 0; c < n; c++)      /* sorted by bits, then damage: keep strict improvements */
        if (!drop || nk == 0 || s[c].damage < s[keep[nk - 1]].damage) keep[nk++] = c;
    *n_dom = n - nk;
    int nh = nk;
    if (hull) {                      /* lower hull, monotone chain; collinear points go */
        nh = 0;
        for (int j = 0; j < nk; j++) {
            const cand_key *c = &s[keep[j]];
            while (nh >= 2) {
                const cand_key *a = &s[keep[nh - 2]], *b = &s[keep[nh - 1]];
                long double cross = (long double)(b->bits - a->bits) * (c->damage - a->damage) -
                                    (long double)(b->damage - a->damage) * (c->bits - a->bits);
                if (cross > 0) break; /* b strictly below the chord a-c: keep */
                nh--;
            }
            keep[nh++] = keep[j];
        }
    }
    *n_hull = nk - nh;
    int rc = item_keep(it, s, keep, nh);
    free(s), free(keep);
    return rc;
}

/* Fills item it's candidates: the option ids that every member allows. */
static int item_candidates(alloc_problem *p, alloc_item *it)
{
    const alloc_tensor *t0 = &p->t[it->members[0]];
    int m = it->n_members, cap = t0->n_opt ? t0->n_opt : 1;
    it->cand_k = malloc((size_t)cap * (size_t)m * sizeof *it->cand_k);
    it->bits = malloc((size_t)cap * sizeof *it->bits);
    it->all_bits = malloc((size_t)cap * sizeof *it->all_bits);
    it->damage = malloc((size_t)cap * sizeof *it->damage);
    if (!it->cand_k || !it->bits || !it->all_bits || !it->damage) return -1;
    it->n_cand = 0;
    for (int k0 = 0; k0 < t0->n_opt; k0++) {
        if (!allowed(t0, k0)) continue;
        int *ks = it->cand_k + (size_t)it->n_cand * m, ok = 1;
        int64_t bits = 0, all = 0;
        double dmg = 0;
        for (int j = 0; j < m && ok; j++) {
            const alloc_tensor *t = &p->t[it->members[j]];
            ks[j] = j == 0 ? k0 : find_allowed(t, t0->opt[k0].id);
            if (ks[j] < 0) { ok = 0; break; }
            all += t->opt[ks[j]].bits;
            if (t->in_budget) bits += t->opt[ks[j]].bits;
            dmg += t->opt[ks[j]].damage;
        }
        if (!ok) continue;
        it->bits[it->n_cand] = bits, it->all_bits[it->n_cand] = all, it->damage[it->n_cand] = dmg;
        it->n_cand++;
    }
    return 0;
}

/* Groups the tensors by tie root: members of each item, items in order of their
 * smallest tensor. */
static int make_items(alloc_problem *p, alloc_prep *out)
{
    int n = p->n_t, *count = calloc((size_t)n + 1, sizeof *count), *item_of = malloc(((size_t)n + 1) * sizeof *item_of);
    if (!count || !item_of) { free(count), free(item_of); return -1; }
    out->n_items = 0;
    for (int t = 0; t < n; t++) {
        int r = alloc_tie_root(p, t);
        if (r == t) item_of[t] = out->n_items++;
        count[item_of[r]]++;
    }
    out->items = calloc((size_t)out->n_items + 1, sizeof *out->items);
    int rc = out->items ? 0 : -1;
    for (int i = 0; !rc && i < out->n_items; i++) {
        out->items[i].members = malloc((size_t)count[i] * sizeof(int));
        if (!out->items[i].members) rc = -1;
    }
    for (int t = 0; !rc && t < n; t++) {
        alloc_item *it = &out->items[item_of[alloc_tie_root(p, t)]];
        it->members[it->n_members++] = t;
    }
    free(count), free(item_of);
    return rc;
}

int alloc_prepare(alloc_problem *p, int drop, int hull, alloc_prep *out, char *err, size_t err_len)
{
    memset(out, 0, sizeof *out);
    if (hull) drop = 1;
    if (make_items(p, out)) goto oom;
    for (int i = 0; i < out->n_items; i++) {
        alloc_item *it = &out->items[i];
        if (item_candidates(p, it)) goto oom;
        if (it->n_cand == 0) {
            const alloc_tensor *t = &p->t[it->members[0]];
            snprintf(err, err_len, "tensor %d (%s, layer %d)%s has no allowed option%s", it->members[0],
                     lay_class_name(t->cls), t->layer, it->n_members > 1 ? " and its tie group" : "",
                     it->n_members > 1 ? " common to the group within the bounds" : " within the bounds");
            alloc_prep_free(out);
            return -1;
        }
        int nd, nh;
        if (item_reduce(it, drop, hull, &nd, &nh)) goto oom;
        out->n_dropped += (int64_t)nd * it->n_members;
        out->n_off_hull += (int64_t)nh * it->n_members;
    }
    return 0;
oom:
    alloc_prep_free(out);
    snprintf(err, err_len, "out of memory preparing %d tensors", p->n_t);
    return -1;
}

void alloc_prep_free(alloc_prep *pp)
{
    for (int i = 0; pp->items && i < pp->n_items; i++) {
        alloc_item *it = &pp->items[i];
        free(it->members), free(it->cand_k), free(it->bits), free(it->all_bits), free(it->damage);
    }
    free(pp->items);
    memset(pp, 0, sizeof *pp);
}

void alloc_prep_apply(const alloc_prep *pp, int i, int c, int *choice)
{
    const alloc_item *it = &pp->items[i];
    for (int j = 0; j < it->n_members; j++) choice[it->members[j]] = it->cand_k[(size_t)c * it->n_members + j];
}

int alloc_range(alloc_problem *p, int64_t *min_bits, int64_t *max_bits, char *err, size_t err_len)
{
    alloc_prep pp;
    if (alloc_prepare(p, 0, 0, &pp, err, err_len)) return -1;
    int64_t lo = 0, hi = 0;
    for (int i = 0; i < pp.n_items; i++) { /* candidates are sorted by budget bits */
        lo += pp.items[i].bits[0];
        hi += pp.items[i].bits[pp.items[i].n_cand - 1];
    }
    alloc_prep_free(&pp);
    *min_bits = lo, *max_bits = hi;
    return 0;
}
