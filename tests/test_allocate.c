/*
 * tests/test_allocate.c — the exact allocation against brute force.
 *
 * Small random problems (up to 6 tensors x 4 options, many seeds, with equal bits,
 * equal damage, dominated options, ties and per-tensor bounds) are solved by
 * enumerating every combination; GLPK's plan must reach the same optimum, within
 * budget to the bit, under every solver setting. Also: unreachable budgets, the LP
 * bound, the baselines' validity, the memory model's arithmetic.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allocate/allocate.h"

/* ==== Random instances ==== */

static uint64_t rs;
static uint32_t rnd(void)
{
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rs >> 33);
}

typedef struct {
    int n, m;                 /* tensors, options per tensor */
    int64_t bits[6][4];
    double dmg[6][4];
    int64_t id[6][4];
    int in_budget[6];
    int tie[6];               /* tie group label, -1 for none */
    double min_bpw[6], max_bpw[6];
    int64_t weights[6];
} inst;

/* Options share ids 1..m across tensors (so ties can match), bits and damage drawn
 * from small ranges so that equal values and dominated options are common. */
static void make_inst(inst *x, uint64_t seed, int with_ties, int with_bounds)
{
    rs = seed;
    memset(x, 0, sizeof *x);
    x->n = 3 + (int)(rnd() % 4), x->m = 2 + (int)(rnd() % 3);
    for (int t = 0; t < x->n; t++) {
        x->weights[t] = 100;
        x->in_budget[t] = rnd() % 8 != 0;
        x->tie[t] = with_ties && rnd() % 2 ? (int)(rnd() % 2) : -1;
        x->min_bpw[t] = 0, x->max_bpw[t] = HUGE_VAL;
        if (with_bounds && rnd() % 3 == 0) x->min_bpw[t] = 2 + rnd() % 3;
        if (with_bounds && rnd() % 3 == 0) x->max_bpw[t] = 5 + rnd() % 3;
        for (int c = 0; c < x->m; c++) {
            x->id[t][c] = c + 1;
            x->bits[t][c] = 100 * (2 + (int64_t)(rnd() % 7));
            x->dmg[t][c] = (double)(1 + rnd() % 9) / 8.0;
        }
    }
}

static alloc_problem *to_problem(const inst *x)
{
    alloc_problem *p = alloc_problem_new();
    for (int t = 0; t < x->n; t++) {
        assert_int_equal(alloc_add_tensor(p, (lay_class)(t % 7), 0, x->weights[t], x->in_budget[t]), t);
        for (int c = 0; c < x->m; c++) assert_int_equal(alloc_add_option(p, t, x->id[t][c], x->bits[t][c], x->dmg[t][c]), c);
        alloc_limit_bpw(p, t, x->min_bpw[t], x->max_bpw[t]);
    }
    for (int g = 0; g < 2; g++) {
        int members[6], k = 0;
        for (int t = 0; t < x->n; t++)
            if (x->tie[t] == g) members[k++] = t;
        if (k > 1) alloc_tie(p, members, k);
    }
    return p;
}

/* The brute-force optimum: every combination, checked independently of allocate/.
 * Returns the best damage (HUGE_VAL if none fits) and the min/max budget bits of the
 * allowed combinations (ties and bounds respected). */
static double brute(const inst *x, int64_t budget, int64_t *min_bits, int64_t *max_bits)
{
    int c[6] = {0};
    double best = HUGE_VAL;
    *min_bits = INT64_MAX, *max_bits = -1;
    for (;;) {
        int ok = 1;
        int64_t bits = 0;
        double d = 0;
        for (int t = 0; t < x->n && ok; t++) {
            double bpw = (double)x->bits[t][c[t]] / (double)x->weights[t];
            if (bpw < x->min_bpw[t] || bpw > x->max_bpw[t]) ok = 0;
            for (int u = 0; u < t && ok; u++)
                if (x->tie[t] >= 0 && x->tie[t] == x->tie[u] && x->id[t][c[t]] != x->id[u][c[u]]) ok = 0;
            if (x->in_budget[t]) bits += x->bits[t][c[t]];
            d += x->dmg[t][c[t]];
        }
        if (ok) {
            if (bits < *min_bits) *min_bits = bits;
            if (bits > *max_bits) *max_bits = bits;
            if (bits <= budget && d < best) best = d;
        }
        int t = 0;
        while (t < x->n && ++c[t] == x->m) c[t++] = 0;
        if (t == x->n) break;
    }
    return best;
}

/* Solves every seed's instance under prm for a few budgets; compares with brute force. */
static void check_against_brute(const alloc_params *prm, int with_ties, int with_bounds)
{
    int solved = 0;
    for (uint64_t seed = 1; seed <= 150; seed++) {
        inst x;
        make_inst(&x, seed, with_ties, with_bounds);
        alloc_problem *p = to_problem(&x);
        int64_t lo, hi;
        brute(&x, 0, &lo, &hi);
        for (int k = 0; k < 4; k++) {
            int64_t budget = hi < 0 ? 1000 : lo + (hi - lo) * k / 3 + (k == 1 ? 50 : 0);
            int64_t l2, h2;
            double want = brute(&x, budget, &l2, &h2);
            alloc_result r;
            char err[256];
            int rc = alloc_solve(p, budget, prm, &r, err, sizeof err);
            if (want == HUGE_VAL) {
                assert_int_equal(rc, -1);
                assert_int_equal(r.status, ALLOC_INFEASIBLE);
            } else {
                if (rc) fail_msg("seed %llu budget %lld: %s", (unsigned long long)seed, (long long)budget, err);
                assert_int_equal(r.status, ALLOC_OPTIMAL);
                assert_true(fabs(r.objective - want) <= 1e-9);
                assert_true(r.budget_bits <= budget);
                assert_true(alloc_choice_valid(p, r.choice, budget));
                assert_true(r.bound <= r.objective + 1e-12 && r.lp_bound <= want + 1e-9);
                assert_true(r.gap <= prm->mip_gap + 1e-12);
                solved++;
            }
            alloc_result_free(&r);
        }
        alloc_problem_free(p);
    }
    assert_true(solved > 200);
}

static void t_brute_default(void **s)
{
    (void)s;
    alloc_params prm;
    alloc_params_init(&prm);
    prm.mip_gap = 0;
    check_against_brute(&prm, 0, 0);
}

static void t_brute_cold_presolve(void **s)
{
    (void)s;
    alloc_params prm;
    alloc_params_init(&prm);
    prm.mip_gap = 0, prm.warm_start = 0, prm.presolve = 1;
    check_against_brute(&prm, 1, 1);
}

static void t_brute_ties_bounds(void **s)
{
    (void)s;
    alloc_params prm;
    alloc_params_init(&prm);
    prm.mip_gap = 0;
    check_against_brute(&prm, 1, 1);
}

static void t_brute_no_dropping(void **s)
{
    (void)s;
    alloc_params prm;
    alloc_params_init(&prm);
    prm.mip_gap = 0, prm.drop_dominated = 0;
    check_against_brute(&prm, 1, 0);
    prm.warm_start = 0, prm.presolve = 0;
    check_against_brute(&prm, 0, 1);
}

/* Dropping dominated options changes nothing but the count, and does drop some. */
static void t_dropping_keeps_optimum(void **s)
{
    (void)s;
    int64_t dropped = 0;
    for (uint64_t seed = 1; seed <= 100; seed++) {
        inst x;
        make_inst(&x, seed, seed % 2, 0);
        alloc_problem *p = to_problem(&x);
        int64_t lo, hi;
        char err[256];
        if (alloc_range(p, &lo, &hi, err, sizeof err)) { alloc_problem_free(p); continue; }
        alloc_params a, b;
        alloc_params_init(&a), alloc_params_init(&b);
        a.mip_gap = b.mip_gap = 0, b.drop_dominated = 0;
        alloc_result ra, rb;
        int64_t budget = (lo + hi) / 2;
        assert_int_equal(alloc_solve(p, budget, &a, &ra, err, sizeof err), 0);
        assert_int_equal(alloc_solve(p, budget, &b, &rb, err, sizeof err), 0);
        assert_true(fabs(ra.objective - rb.objective) <= 1e-9);
        assert_int_equal(rb.n_dropped, 0);
        assert_true(ra.n_cols + ra.n_dropped == rb.n_cols);
        dropped += ra.n_dropped;
        alloc_result_free(&ra), alloc_result_free(&rb);
        alloc_problem_free(p);
    }
    assert_true(dropped > 50);
}

/* An unreachable budget fails with the reachable range named. */
static void t_unreachable(void **s)
{
    (void)s;
    alloc_problem *p = alloc_problem_new();
    for (int t = 0; t < 3; t++) {
        alloc_add_tensor(p, LAY_Q, t, 100, 1);
        alloc_add_option(p, t, 1, 200, 1.0);
        alloc_add_option(p, t, 2, 400, 0.5);
    }
    alloc_params prm;
    alloc_params_init(&prm);
    alloc_result r;
    char err[256];
    assert_int_equal(alloc_solve(p, 599, &prm, &r, err, sizeof err), -1);
    assert_int_equal(r.status, ALLOC_INFEASIBLE);
    assert_non_null(strstr(err, "600 to 1200"));
    alloc_result_free(&r);
    assert_int_equal(alloc_solve(p, 600, &prm, &r, err, sizeof err), 0);
    assert_int_equal(r.budget_bits, 600);
    alloc_result_free(&r);
    alloc_limit_bpw(p, 1, 3.0, HUGE_VAL); /* tensor 1 must take 4 bpw */
    int64_t lo, hi;
    assert_int_equal(alloc_range(p, &lo, &hi, err, sizeof err), 0);
    assert_int_equal(lo, 800), assert_int_equal(hi, 1200);
    alloc_limit_bpw(p, 2, 0, 1.0);       /* nothing left for tensor 2 */
    assert_int_equal(alloc_range(p, &lo, &hi, err, sizeof err), -1);
    assert_non_null(strstr(err, "no allowed option"));
    alloc_problem_free(p);
}

/* Random larger instances: baselines are valid and never beat GLPK; the LP rounding
 * is within its own bound; the hull MILP lies between the LP bound and the exact
 * objective's upper neighbourhood. */
static void t_baselines_and_lp(void **s)
{
    (void)s;
    rs = 99;
    for (int round = 0; round < 6; round++) {
        alloc_problem *p = alloc_problem_new();
        int n = 40 + (int)(rnd() % 40);
        int64_t w = 0;
        for (int t = 0; t < n; t++) {
            int64_t nw = 1000 * (1 + rnd() % 4);
            alloc_add_tensor(p, (lay_class)(t % 7), t / 7, nw, 1);
            double a = 0.1 + (rnd() % 100) / 10.0;
            for (int c = 0; c < 8; c++)
                alloc_add_option(p, t, c + 1, nw * (2 + c) + 64 * (rnd() % 4), a * exp2(-2.0 * c) * (0.8 + (rnd() % 40) / 100.0));
            w += nw;
        }
        int64_t budget = w * (3 + round % 4);
        alloc_params prm;
        alloc_params_init(&prm);
        prm.mip_gap = 0;
        alloc_result r, rh;
        char err[256];
        assert_int_equal(alloc_solve(p, budget, &prm, &r, err, sizeof err), 0);
        prm.hull = 1;
        assert_int_equal(alloc_solve(p, budget, &prm, &rh, err, sizeof err), 0);
        assert_true(rh.objective >= r.objective - 1e-9);
        assert_true(rh.lp_bound <= r.objective + 1e-9);
        int *ch = malloc((size_t)n * sizeof *ch);
        double bound;
        assert_int_equal(alloc_lp_hull(p, budget, &bound, ch, err, sizeof err), 0);
        assert_true(fabs(bound - r.lp_bound) <= 1e-9 * (1 + fabs(bound)));
        assert_true(alloc_choice_valid(p, ch, budget) && alloc_choice_damage(p, ch) >= r.objective - 1e-9);
        assert_int_equal(alloc_greedy(p, budget, ch), 0);
        assert_true(alloc_choice_valid(p, ch, budget) && alloc_choice_damage(p, ch) >= r.objective - 1e-9);
        assert_int_equal(alloc_anneal(p, budget, 7, 200000, ch), 0);
        assert_true(alloc_choice_valid(p, ch, budget) && alloc_choice_damage(p, ch) >= r.objective - 1e-9);
        if (!alloc_uniform(p, budget, ch))
            assert_true(alloc_choice_valid(p, ch, budget) && alloc_choice_damage(p, ch) >= r.objective - 1e-9);
        free(ch);
        alloc_result_free(&r), alloc_result_free(&rh);
        alloc_problem_free(p);
    }
}

/* ==== Budgets ==== */

static void t_memory_model(void **s)
{
    (void)s;
    const char *json = "{\"arch\": \"llama\", \"n_layers\": 30, \"dim\": 576, \"hidden_dim\": 1536, \"n_heads\": 9,"
                       " \"n_kv_heads\": 3, \"vocab_size\": 49152, \"tied_embeddings\": true}";
    alloc_shape sh;
    char err[128];
    assert_int_equal(alloc_shape_from_json(json, &sh, err, sizeof err), 0);
    assert_int_equal(sh.head_dim, 64), assert_int_equal(sh.n_kv_heads, 3), assert_int_equal(sh.tied_embeddings, 1);
    alloc_vram_params v;
    alloc_vram_params_init(&v);
    v.ctx = 4096, v.batch = 2, v.kv_bits = 8, v.reserve = 1000;
    /* 30 layers * 2 (K, V) * 3 heads * 64 * 4096 tokens * 2 sequences * 1 byte */
    assert_int_equal(alloc_kv_bytes(&sh, &v), 30LL * 2 * 3 * 64 * 4096 * 2);
    assert_int_equal(alloc_scratch_bytes(&sh, &v), 4LL * 2 * (3 * 576 + (9 + 6) * 64 + 2 * 1536 + 9 * 4096 + 49152));
    /* 30 blocks of q,k,v,o,gate,up,down: 576*576*2 + 192*576*2 + 3*576*1536 weights */
    int64_t blocks = 30LL * (2 * 576 * 576 + 2 * 192 * 576 + 3 * 576 * 1536), embd = 49152LL * 576;
    int64_t norms = 30LL * 2 * 576 + 576;
    alloc_unquantized u = alloc_unquantized_params(&sh, blocks + embd + norms, blocks);
    assert_int_equal(u.n_1d, norms), assert_int_equal(u.n_2d, embd);
    assert_int_equal(alloc_file_bits(800, u), 800 + 32 * norms + 16 * embd);
    alloc_memory m = alloc_memory_model(&sh, u, &v, 8000);
    assert_int_equal(m.weights, 1000);
    assert_int_equal(m.total, 1000 + 4 * norms + 2 * embd + alloc_kv_bytes(&sh, &v) + alloc_scratch_bytes(&sh, &v) + 1000);
    sh.tied_embeddings = 0; /* an untied embedding is looked up in host memory: not device memory */
    assert_int_equal(alloc_memory_model(&sh, u, &v, 8000).unquantized, 4 * norms);
    sh.tied_embeddings = 1;
    assert_int_equal(alloc_shape_from_json("{\"dim\": 5}", &sh, err, sizeof err), -1);
    assert_non_null(strstr(err, "n_layers"));
}

/* The configuration is read as JSON: only top-level members count, whatever a
 * string or a nested object holds, and what does not parse is refused. */
static void t_shape_reads_json(void **s)
{
    (void)s;
    const char *json = "{\"name\": \"a \\\"dim\\\": 3 model\", \"rope\": {\"dim\": 7, \"n_heads\": 1},"
                       " \"n_layers\": 2, \"dim\": 64, \"hidden_dim\": 128, \"n_heads\": 4, \"vocab_size\": 100,"
                       " \"attn_bias\": 1}";
    alloc_shape sh;
    char err[160];
    assert_int_equal(alloc_shape_from_json(json, &sh, err, sizeof err), 0);
    assert_int_equal(sh.dim, 64), assert_int_equal(sh.n_heads, 4), assert_int_equal(sh.head_dim, 16);
    assert_int_equal(sh.n_kv_heads, 4), assert_int_equal(sh.attn_bias, 1), assert_int_equal(sh.tied_embeddings, 0);
    assert_int_equal(alloc_shape_from_json("{\"n_layers\": 2, \"dim\": 64", &sh, err, sizeof err), -1);
    assert_non_null(strstr(err, "not a JSON object"));
    assert_int_equal(alloc_shape_from_json("[1]", &sh, err, sizeof err), -1);
    assert_int_equal(alloc_shape_from_json("{\"n_layers\": 1e300, \"dim\": 64, \"hidden_dim\": 1, \"n_heads\": 1,"
                                           " \"vocab_size\": 1}", &sh, err, sizeof err), -1);
    assert_non_null(strstr(err, "n_layers"));
}

static void t_class_sets(void **s)
{
    (void)s;
    assert_int_equal(alloc_class_set_parse("qkv"), 1u << LAY_Q | 1u << LAY_K | 1u << LAY_V);
    assert_int_equal(alloc_class_set_parse("gate,up"), alloc_class_set_parse("gate_up"));
    assert_int_equal(alloc_class_set_parse("down"), 1u << LAY_DOWN);
    assert_int_equal(alloc_class_set_parse("qq"), 0);
    assert_int_equal(lay_class_of_name("head"), LAY_HEAD);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_brute_default),
        cmocka_unit_test(t_brute_cold_presolve),
        cmocka_unit_test(t_brute_ties_bounds),
        cmocka_unit_test(t_brute_no_dropping),
        cmocka_unit_test(t_dropping_keeps_optimum),
        cmocka_unit_test(t_unreachable),
        cmocka_unit_test(t_baselines_and_lp),
        cmocka_unit_test(t_memory_model),
        cmocka_unit_test(t_shape_reads_json),
        cmocka_unit_test(t_class_sets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
