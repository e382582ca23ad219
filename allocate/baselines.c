/*
 * allocate/baselines.c — simpler allocators that the exact plan is compared with:
 * the best uniform plan, a greedy that buys the most damage saved per extra bit, and
 * a simulated annealing in the manner of ExLlamaV2's optimizer. They work on the
 * prepared items (tie groups move together) and always return plans within the
 * budget, or fail. No GLPK, no printing.
 */
#include "alloc_int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ==== Uniform ==== */

/* Candidate of item it with option id `id` (the first member's id), or -1. */
static int cand_with_id(alloc_problem *p, const alloc_item *it, int64_t id)
{
    const alloc_tensor *t0 = &p->t[it->members[0]];
    for (int c = 0; c < it->n_cand; c++)
        if (t0->opt[it->cand_k[(size_t)c * it->n_members]].id == id) return c;
    return -1;
}

/* Least damaging candidate (for items outside the budget). */
static int cand_least_damage(const alloc_item *it)
{
    int best = 0;
    for (int c = 1; c < it->n_cand; c++)
        if (it->damage[c] < it->damage[best]) best = c;
    return best;
}

static int item_in_budget(const alloc_item *it) { return it->bits[it->n_cand - 1] > 0; }

int alloc_uniform(alloc_problem *p, int64_t budget, int *choice)
{
    char err[256];
    alloc_prep pp;
    if (alloc_prepare(p, 0, 0, &pp, err, sizeof err)) return -1;
    int first = -1;
    for (int i = 0; i < pp.n_items && first < 0; i++)
        if (item_in_budget(&pp.items[i])) first = i;
    int64_t best_id = 0;
    double best = HUGE_VAL;
    for (int c0 = 0; first >= 0 && c0 < pp.items[first].n_cand; c0++) {
        const alloc_item *f = &pp.items[first];
        int64_t id = p->t[f->members[0]].opt[f->cand_k[(size_t)c0 * f->n_members]].id, bits = 0;
        double dmg = 0;
        for (int i = 0; i < pp.n_items && bits <= budget; i++) {
            const alloc_item *it = &pp.items[i];
            int c = item_in_budget(it) ? cand_with_id(p, it, id) : cand_least_damage(it);
            if (c < 0) { bits = budget + 1; break; }
            bits += it->bits[c], dmg += it->damage[c];
        }
        if (bits <= budget && dmg < best) best = dmg, best_id = id;
    }
    int rc = best < HUGE_VAL ? 0 : -1;
    for (int i = 0; !rc && i < pp.n_items; i++) {
        const alloc_item *it = &pp.items[i];
        alloc_prep_apply(&pp, i, item_in_budget(it) ? cand_with_id(p, it, best_id) : cand_least_damage(it), choice);
    }
    alloc_prep_free(&pp);
    return rc;
}

/* ==== Greedy ==== */

typedef struct { double ratio; int item; } heap_entry;
typedef struct { heap_entry *v; int n; } heap;

static void heap_push(heap *h, heap_entry e)
{
    int i = h->n++;
    for (; i > 0 && h->v[(i - 1) / 2].ratio < e.ratio; i = (i - 1) / 2) h->v[i] = h->v[(i - 1) / 2];
    h->v[i] = e;
}

static heap_entry heap_pop(heap *h)
{
    heap_entry top = h->v[0], last = h->v[--h->n];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && h->v[c + 1].ratio > h->v[c].ratio) c++;
        if (h->v[c].ratio <= last.ratio) break;
        h->v[i] = h->v[c], i = c;
    }
    if (h->n) h->v[i] = last;
    return top;
}

/* The best upgrade of an item from candidate cur that fits in `room` bits: the
 * candidate saving the most damage per extra bit; -1 if none saves anything. */
static int best_upgrade(const alloc_item *it, int cur, int64_t room, double *ratio)
{
    int best = -1;
    for (int c = cur + 1; c < it->n_cand; c++) {
        int64_t db = it->bits[c] - it->bits[cur];
        double dd = it->damage[cur] - it->damage[c];
        if (db > room || dd <= 0 || db <= 0) continue;
        double r = dd / (double)db;
        if (best < 0 || r > *ratio) best = c, *ratio = r;
    }
    return best;
}

int alloc_greedy(alloc_problem *p, int64_t budget, int *choice)
{
    char err[256];
    alloc_prep pp;
    if (alloc_prepare(p, 1, 0, &pp, err, sizeof err)) return -1;
    int *at = calloc((size_t)pp.n_items + 1, sizeof *at);
    heap h = {malloc(((size_t)pp.n_items + 1) * sizeof(heap_entry)), 0};
    int64_t used = 0;
    for (int i = 0; i < pp.n_items; i++) {   /* start: the cheapest; outside the budget: the best */
        at[i] = item_in_budget(&pp.items[i]) ? 0 : pp.items[i].n_cand - 1;
        used += pp.items[i].bits[at[i]];
    }
    int rc = at && h.v && used <= budget ? 0 : -1;
    for (int i = 0; !rc && i < pp.n_items; i++) {
        double r;
        if (best_upgrade(&pp.items[i], at[i], budget - used, &r) >= 0) heap_push(&h, (heap_entry){r, i});
    }
    while (!rc && h.n) {
        heap_entry e = heap_pop(&h);
        const alloc_item *it = &pp.items[e.item];
        double r;
        int c = best_upgrade(it, at[e.item], budget - used, &r);
        if (c < 0) continue;
        if (r < e.ratio) { heap_push(&h, (heap_entry){r, e.item}); continue; } /* stale: the room shrank */
        used += it->bits[c] - it->bits[at[e.item]];
        at[e.item] = c;
        if (best_upgrade(it, c, budget - used, &r) >= 0) heap_push(&h, (heap_entry){r, e.item});
    }
    for (int i = 0; !rc && i < pp.n_items; i++) alloc_prep_apply(&pp, i, at[i], choice);
    free(at), free(h.v);
    alloc_prep_free(&pp);
    return rc;
}

/* ==== Simulated annealing ==== */

static uint64_t rng_next(uint64_t *s) /* splitmix64 */
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

/* The typical damage change of one random move (mean |difference| over sampled pairs
 * of candidates): the starting temperature, at which such a move up is taken a third
 * of the time. */
static double damage_scale(const alloc_prep *pp, uint64_t seed)
{
    double s = 0;
    for (int k = 0; k < 4096; k++) {
        const alloc_item *it = &pp->items[rng_next(&seed) % (uint64_t)pp->n_items];
        int a = (int)(rng_next(&seed) % (uint64_t)it->n_cand), b = (int)(rng_next(&seed) % (uint64_t)it->n_cand);
        s += fabs(it->damage[a] - it->damage[b]) / 4096;
    }
    return s > 0 ? s : 1;
}

int alloc_anneal(alloc_problem *p, int64_t budget, uint64_t seed, int64_t moves, int *choice)
{
    char err[256];
    alloc_prep pp;
    if (alloc_prepare(p, 1, 0, &pp, err, sizeof err)) return -1;
    int n = pp.n_items, *at = calloc((size_t)n + 1, sizeof *at), *best_at = calloc((size_t)n + 1, sizeof *best_at);
    int64_t used = 0;
    double cur = 0;
    for (int i = 0; i < n; i++) { /* start as ExLlamaV2 does: every slot at its first (cheapest) option */
        if (at) at[i] = item_in_budget(&pp.items[i]) ? 0 : pp.items[i].n_cand - 1;
        if (at) used += pp.items[i].bits[at[i]], cur += pp.items[i].damage[at[i]];
    }
    int rc = at && best_at && used <= budget && n > 0 ? 0 : -1;
    if (!rc) memcpy(best_at, at, (size_t)n * sizeof *at);
    /* geometric cooling from the typical step to 1e-4 of it, 1000 moves per temperature */
    double t_hi = n ? damage_scale(&pp, seed) : 1, t_lo = t_hi * 1e-4, best = cur;
    int64_t steps = moves / 1000 > 1 ? moves / 1000 : 1;
    double cool = pow(t_lo / t_hi, 1.0 / (double)steps), temp = t_hi;
    for (int64_t s = 0; !rc && s < steps; s++, temp *= cool) {
        for (int k = 0; k < 1000; k++) {
            int i = (int)(rng_next(&seed) % (uint64_t)n);
            const alloc_item *it = &pp.items[i];
            int c = (int)(rng_next(&seed) % (uint64_t)it->n_cand);
            int64_t db = it->bits[c] - it->bits[at[i]];
            double dd = it->damage[c] - it->damage[at[i]];
            if (used + db > budget) continue;
            if (dd > 0 && rng_unit(&seed) >= exp(-dd / temp)) continue;
            at[i] = c, used += db, cur += dd;
        }
        /* the best plan is looked for once per temperature: copying on every
           improvement would cost O(tensors) per move */
        if (cur < best) best = cur, memcpy(best_at, at, (size_t)n * sizeof *at);
    }
    for (int i = 0; !rc && i < n; i++) alloc_prep_apply(&pp, i, best_at[i], choice);
    free(at), free(best_at);
    alloc_prep_free(&pp);
    return rc;
}
