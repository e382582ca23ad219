/*
 * tests/test_gptq.c — properties of measure/'s GPTQ, RTN, Hessians and options.
 *
 * What it is for: the facts a caller relies on that need no NumPy: GPTQ beats RTN,
 * error falls as bits rise, the reported rel_err is exactly that of the stored
 * (and packed) tensor, refusals name the bad value, dead columns, damping retries,
 * determinism, the fast error paths against a direct long-double trace, and the
 * option set's coverage. tests/test_gptq.py checks the values themselves against an
 * independent NumPy GPTQ.
 *
 * What it must never do: assert on time.
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
#include <unistd.h>

#include "measure/measure.h"

/* ==== A real-like layer ==== */

static uint64_t rng_state;
static double urand(void)
{
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return ((double)(rng_state >> 11) + 0.5) / 9007199254740992.0;
}
static double nrand(void) { return sqrt(-2 * log(urand())) * cos(6.283185307179586 * urand()); }

typedef struct {
    int64_t rows, cols;
    float *w;   /* [rows][cols] */
    double *h;  /* [cols][cols] */
} layer;

/* Inputs with shared factors, neighbour correlation and loud channels (as LLM
 * activations have); weights with uneven rows and columns. dead: every dead-th
 * input channel never fires (0: none). */
static layer make_layer(int64_t rows, int64_t cols, uint64_t seed, int dead)
{
    layer L = {rows, cols, malloc((size_t)(rows * cols) * sizeof(float)), calloc((size_t)(cols * cols), sizeof(double))};
    int n = (int)(4 * cols);
    float *x = malloc((size_t)n * (size_t)cols * sizeof *x);
    double f[8][1024], scale[1024], rs;
    assert_true(cols <= 1024);
    rng_state = seed * 2654435761u + 1;
    for (int k = 0; k < 8; k++)
        for (int64_t j = 0; j < cols; j++) f[k][j] = 0.4 * nrand();
    for (int64_t j = 0; j < cols; j++) scale[j] = exp(0.7 * nrand());
    for (int i = 0; i < n; i++) {
        double a[8], prev = 0;
        for (int k = 0; k < 8; k++) a[k] = nrand();
        for (int64_t j = 0; j < cols; j++) {
            double z = nrand(), v = z + 0.5 * prev;
            for (int k = 0; k < 8; k++) v += a[k] * f[k][j];
            prev = z;
            x[(int64_t)i * cols + j] = dead && j % dead == 1 ? 0.0f : (float)(v * scale[j]);
        }
    }
    char err[256];
    assert_int_equal(hess_accumulate(L.h, x, n, cols), 0);
    assert_int_equal(hess_finalize(L.h, cols, n, err, sizeof err), 0);
    for (int64_t r = 0; r < rows; r++) {
        rs = 0.02 * exp(0.3 * nrand());
        for (int64_t j = 0; j < cols; j++) L.w[r * cols + j] = (float)(rs * nrand() * (j % 17 == 0 ? 3 : 1));
    }
    free(x);
    return L;
}

static void free_layer(layer *L) { free(L->w), free(L->h); }

static lay_option opt(int lo, int hi, float share, int group, lay_scale_fmt fmt)
{
    lay_option o = {.bits_lo = (uint8_t)lo, .bits_hi = (uint8_t)hi, .hi_share = share, .group = group, .scale_fmt = fmt};
    snprintf(o.name, sizeof o.name, "%d/%d %g g%d", lo, hi, (double)share, group);
    return o;
}

static double gptq_err(const layer *L, const lay_option *o)
{
    gptq_params p;
    gptq_params_init(&p);
    lay_qtensor q;
    gptq_stats st;
    char err[256];
    assert_int_equal(gptq_quantize(L->w, L->rows, L->cols, L->h, o, &p, &q, &st, err, sizeof err), 0);
    lay_qtensor_free(&q);
    return st.rel_err;
}

static double rtn_err(const layer *L, const lay_option *o)
{
    lay_qtensor q;
    char err[256];
    float *wq = malloc((size_t)(L->rows * L->cols) * sizeof *wq);
    assert_int_equal(rtn_quantize(L->w, L->rows, L->cols, L->h, o, &q, err, sizeof err), 0);
    lay_qtensor_dequant(&q, wq);
    double e = gptq_relative_error(L->w, wq, L->rows, L->cols, L->h);
    lay_qtensor_free(&q);
    free(wq);
    return e;
}

/* ==== GPTQ ==== */

static void test_gptq_beats_rtn(void **state)
{
    (void)state;
    layer L = make_layer(96, 256, 1, 0);
    lay_option os[] = {opt(4, 4, 0, 128, LAY_SCALE_F16_Z8), opt(3, 3, 0, 64, LAY_SCALE_F16),
                       opt(2, 3, 0.25f, 32, LAY_SCALE_F16_Z8), opt(2, 2, 0, 64, LAY_SCALE_F16_Z8)};
    for (size_t i = 0; i < sizeof os / sizeof os[0]; i++) {
        double g = gptq_err(&L, &os[i]), r = rtn_err(&L, &os[i]);
        if (!(g < 0.8 * r)) fail_msg("%s: gptq %g is not well below rtn %g", os[i].name, g, r);
    }
    free_layer(&L);
}

static void test_error_falls_as_bits_rise(void **state)
{
    (void)state;
    layer L = make_layer(64, 256, 2, 0);
    static const int bits[] = {2, 3, 4, 5, 6, 8};
    for (int fmt = 0; fmt < 2; fmt++) {
        double prev = INFINITY;
        for (int i = 0; i < 6; i++) {
            lay_option o = opt(bits[i], bits[i], 0, 64, (lay_scale_fmt)fmt);
            double e = gptq_err(&L, &o);
            if (!(e < prev)) fail_msg("fmt %d: %d bits gives %g, not below %g", fmt, bits[i], e, prev);
            prev = e;
        }
    }
    /* a mix lies between its widths */
    lay_option lo = opt(3, 3, 0, 64, LAY_SCALE_F16_Z8), mix = opt(3, 4, 0.5f, 64, LAY_SCALE_F16_Z8),
               hi = opt(4, 4, 0, 64, LAY_SCALE_F16_Z8);
    double el = gptq_err(&L, &lo), em = gptq_err(&L, &mix), eh = gptq_err(&L, &hi);
    assert_true(eh < em && em < el);
    free_layer(&L);
}

/* The rel_err GPTQ reports is, bit for bit, that of lay_qtensor_dequant's weights
 * and of the packed tensor's; every value and zero lies on its group's grid. */
static void test_reported_error_is_the_stored_tensors(void **state)
{
    (void)state;
    layer L = make_layer(64, 320, 3, 0);
    lay_option os[] = {opt(3, 5, 0.34f, 64, LAY_SCALE_F16_Z8), opt(2, 4, 0.5f, 96, LAY_SCALE_F16),
                       opt(8, 8, 0, 128, LAY_SCALE_F16_Z8)};
    gptq_params p;
    gptq_params_init(&p);
    char err[256];
    for (size_t i = 0; i < sizeof os / sizeof os[0]; i++) {
        lay_qtensor q;
        gptq_stats st;
        assert_int_equal(gptq_quantize(L.w, L.rows, L.cols, L.h, &os[i], &p, &q, &st, err, sizeof err), 0);
        int64_t n = L.rows * L.cols, ng = lay_n_groups(&os[i], L.cols);
        float *a = malloc((size_t)n * sizeof *a), *b = malloc((size_t)n * sizeof *b);
        lay_qtensor_dequant(&q, a);
        double e = gptq_relative_error(L.w, a, L.rows, L.cols, L.h);
        assert_memory_equal(&e, &st.rel_err, sizeof e);
        lay_cost c = lay_tensor_cost(&os[i], L.rows, L.cols);
        uint8_t *values = malloc((size_t)c.values), *zeros = c.zeros ? malloc((size_t)c.zeros) : NULL;
        uint16_t *scales = malloc((size_t)c.scales);
        void *perm = malloc((size_t)c.perm);
        lay_pack_tensor(&q, values, scales, zeros, NULL, perm, NULL);
        lay_packed pk = {.rows = L.rows, .cols = L.cols, .opt = os[i], .values = values, .scales = scales,
                         .zeros = zeros, .perm = perm};
        lay_packed_dequant(&pk, b);
        assert_memory_equal(a, b, (size_t)n * sizeof *a);
        for (int64_t r = 0; r < L.rows; r++)
            for (int64_t g = 0; g < ng; g++) {
                int bits = lay_group_bits(&os[i], L.cols, g);
                int z = q.zero[r * ng + g];
                assert_true(z < 1 << bits);
                if (os[i].scale_fmt == LAY_SCALE_F16) assert_int_equal(z, 1 << (bits - 1));
                for (int64_t j = lay_group_start(&os[i], g); j < lay_group_start(&os[i], g) + lay_group_cols(&os[i], L.cols, g); j++)
                    assert_true(q.q[r * L.cols + j] < 1 << bits);
            }
        free(a), free(b), free(values), free(zeros), free(scales), free(perm);
        lay_qtensor_free(&q);
    }
    free_layer(&L);
}

static void expect_refusal(const float *w, int64_t rows, int64_t cols, const double *h, const lay_option *o,
                           const char *want)
{
    gptq_params p;
    gptq_params_init(&p);
    lay_qtensor q;
    gptq_stats st;
    char err[256] = "";
    assert_int_equal(gptq_quantize(w, rows, cols, h, o, &p, &q, &st, err, sizeof err), -1);
    if (!strstr(err, want)) fail_msg("message \"%s\" lacks \"%s\"", err, want);
    assert_null(q.q);
    assert_int_equal(rtn_quantize(w, rows, cols, h, o, &q, err, sizeof err), -1);
    if (!strstr(err, want)) fail_msg("rtn message \"%s\" lacks \"%s\"", err, want);
}

static void test_refusals_name_the_value(void **state)
{
    (void)state;
    layer L = make_layer(8, 128, 4, 0);
    lay_option ok = opt(4, 4, 0, 32, LAY_SCALE_F16_Z8), g48 = opt(4, 4, 0, 48, LAY_SCALE_F16_Z8),
               b9 = opt(9, 9, 0, 32, LAY_SCALE_F16_Z8), hi = opt(4, 3, 0.5f, 32, LAY_SCALE_F16_Z8);
    expect_refusal(L.w, 8, 100, L.h, &ok, "cols 100 is not a positive multiple of 32");
    expect_refusal(L.w, 8, 128, L.h, &g48, "group 48");
    expect_refusal(L.w, 8, 128, L.h, &b9, "bits_lo 9");
    expect_refusal(L.w, 8, 128, L.h, &hi, "bits_hi 3");
    L.w[3 * 128 + 5] = NAN;
    expect_refusal(L.w, 8, 128, L.h, &ok, "weight [3][5] is nan");
    L.w[3 * 128 + 5] = INFINITY;
    expect_refusal(L.w, 8, 128, L.h, &ok, "weight [3][5] is inf");
    L.w[3 * 128 + 5] = 0;
    L.h[7 * 128 + 9] = NAN;
    expect_refusal(L.w, 8, 128, L.h, &ok, "Hessian [7][9] is nan");
    L.h[7 * 128 + 9] = L.h[9 * 128 + 7];
    L.h[2 * 128 + 2] = -1;
    expect_refusal(L.w, 8, 128, L.h, &ok, "Hessian diagonal [2] is -1");
    L.h[2 * 128 + 2] = 1;
    lay_option rot = ok, awq = ok;
    rot.rot = 64, awq.awq = 1;
    expect_refusal(L.w, 8, 128, L.h, &rot, "transforms its inputs (a rotation)");
    expect_refusal(L.w, 8, 128, L.h, &awq, "transforms its inputs (input scales)");
    free_layer(&L);
}

/* An option with input scales: checked (0 or 1, never with a rotation, never a
 * ggml type), costed (an fp16 per column), and quantized only with a preparation
 * that has its multipliers. */
static void test_awq_option(void **state)
{
    (void)state;
    lay_option a = opt(3, 3, 0, 64, LAY_SCALE_F16_Z8), plain = a, g;
    a.awq = 1;
    char why[160] = "";
    assert_int_equal(lay_option_check(&a, 8, 576, why, sizeof why), 0);
    assert_int_equal(lay_tensor_bits(&a, 8, 576) - lay_tensor_bits(&plain, 8, 576), 16 * 576);
    assert_int_equal(lay_tensor_cost(&a, 8, 576).xscale, 2 * 576);
    a.awq = 2;
    assert_int_equal(lay_option_check(&a, 8, 576, why, sizeof why), -1);
    assert_non_null(strstr(why, "awq 2 is not 0 or 1"));
    a.awq = 1, a.rot = 64;
    assert_int_equal(lay_option_check(&a, 8, 576, why, sizeof why), -1);
    assert_non_null(strstr(why, "cannot both rotate"));
    assert_int_equal(lay_ggml_option(LAY_GGML_Q4_0, &g), 0);
    g.awq = 1;
    assert_int_equal(lay_option_check(&g, 8, 576, why, sizeof why), -1);
    assert_non_null(strstr(why, "cannot scale its inputs"));
    /* a plain preparation for a scaled option, and a scaled one for a plain option */
    layer L = make_layer(16, 128, 9, 0);
    gptq_params p;
    gptq_params_init(&p);
    gptq_prep *plain_prep, *scaled_prep;
    lay_qtensor q;
    char err[256] = "";
    a.rot = 0;
    assert_int_equal(gptq_prepare_slot(L.h, 128, GPTQ_PREP_ACT, &p, &plain_prep, err, sizeof err), 0);
    assert_int_equal(gptq_prepare_slot(L.h, 128, GPTQ_PREP_AWQ0, &p, &scaled_prep, err, sizeof err), 0);
    assert_int_equal(gptq_quantize_prepared(L.w, 16, plain_prep, &a, -1, &q, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "has input scales but its preparation has none"));
    assert_int_equal(gptq_quantize_prepared(L.w, 16, scaled_prep, &plain, -1, &q, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "has no input scales but its preparation has"));
    gptq_prep_free(plain_prep), gptq_prep_free(scaled_prep);
    free_layer(&L);
}

static void test_dead_columns(void **state)
{
    (void)state;
    layer L = make_layer(48, 256, 5, 10); /* channels 1, 11, 21, ... never fire */
    lay_option o = opt(3, 4, 0.5f, 64, LAY_SCALE_F16_Z8);
    gptq_params p;
    gptq_params_init(&p);
    lay_qtensor q;
    gptq_stats st;
    char err[256];
    assert_int_equal(gptq_quantize(L.w, L.rows, L.cols, L.h, &o, &p, &q, &st, err, sizeof err), 0);
    int64_t n_dead = 0;
    for (int64_t j = 0; j < L.cols; j++) n_dead += j % 10 == 1;
    assert_int_equal(st.dead_cols, n_dead);
    assert_true(isfinite(st.rel_err) && st.rel_err > 0 && st.rel_err < 0.05);
    float *wq = malloc((size_t)(L.rows * L.cols) * sizeof *wq);
    lay_qtensor_dequant(&q, wq);
    for (int64_t j = 0; j < L.cols; j++) {
        if (j % 10 != 1) continue;
        for (int64_t r = 0; r < L.rows; r++) assert_true(wq[r * L.cols + j] == 0.0f);
    }
    for (int64_t j = L.cols - n_dead; j < L.cols; j++) assert_int_equal(q.perm[j] % 10, 1); /* last in act-order */
    free(wq);
    lay_qtensor_free(&q);
    free_layer(&L);
}

static void test_deterministic_and_prepared_identical(void **state)
{
    (void)state;
    layer L = make_layer(80, 384, 6, 0);
    lay_option o = opt(2, 3, 0.3f, 64, LAY_SCALE_F16_Z8);
    gptq_params p;
    gptq_params_init(&p);
    lay_qtensor q[4];
    gptq_stats st[4];
    char err[256];
    assert_int_equal(gptq_quantize(L.w, L.rows, L.cols, L.h, &o, &p, &q[0], &st[0], err, sizeof err), 0);
    assert_int_equal(gptq_quantize(L.w, L.rows, L.cols, L.h, &o, &p, &q[1], &st[1], err, sizeof err), 0);
    gptq_prep *prep;
    assert_int_equal(gptq_prepare(L.h, L.cols, &p, &prep, err, sizeof err), 0);
    double e = gptq_weight_energy(L.w, L.rows, L.cols, L.h);
    assert_int_equal(gptq_quantize_prepared(L.w, L.rows, prep, &o, e, &q[2], &st[2], err, sizeof err), 0);
    gptq_prep_free(prep);
    /* a prep that borrows the Hessian instead of copying it gives the same bits */
    p.borrow_h = 1;
    assert_int_equal(gptq_prepare(L.h, L.cols, &p, &prep, err, sizeof err), 0);
    assert_int_equal(gptq_quantize_prepared(L.w, L.rows, prep, &o, e, &q[3], &st[3], err, sizeof err), 0);
    gptq_prep_free(prep);
    int64_t n = L.rows * L.cols, ng = lay_n_groups(&o, L.cols);
    for (int k = 1; k < 4; k++) {
        assert_memory_equal(q[0].q, q[k].q, (size_t)n);
        assert_memory_equal(q[0].perm, q[k].perm, (size_t)L.cols * sizeof *q[0].perm);
        assert_memory_equal(q[0].scale, q[k].scale, (size_t)(L.rows * ng) * sizeof *q[0].scale);
        assert_memory_equal(q[0].zero, q[k].zero, (size_t)(L.rows * ng));
        assert_memory_equal(&st[0].rel_err, &st[k].rel_err, sizeof(double));
    }
    for (int k = 0; k < 4; k++) lay_qtensor_free(&q[k]);
    free_layer(&L);
}

/* An indefinite H (positive diagonal, 2x2 blocks [[1, 3], [3, 1]]: eigenvalues 4
 * and -2) needs damping above 2: GPTQ retries tenfold (0.01, 0.1, 1, 10) and says
 * so; with damping 0 it cannot retry. */
static void test_cholesky_retries(void **state)
{
    (void)state;
    int64_t cols = 64, rows = 16;
    double *h = calloc((size_t)(cols * cols), sizeof *h);
    float *w = malloc((size_t)(rows * cols) * sizeof *w);
    for (int64_t j = 0; j < cols; j++) {
        h[j * cols + j] = 1;
        h[j * cols + (j ^ 1)] = 3;
    }
    rng_state = 99;
    for (int64_t i = 0; i < rows * cols; i++) w[i] = (float)nrand();
    lay_option o = opt(4, 4, 0, 32, LAY_SCALE_F16_Z8);
    gptq_params p;
    gptq_params_init(&p);
    lay_qtensor q;
    gptq_stats st;
    char err[256];
    assert_int_equal(gptq_quantize(w, rows, cols, h, &o, &p, &q, &st, err, sizeof err), 0);
    assert_int_equal(st.damp_retries, 3);
    assert_true(fabs(st.damp - 10) < 1e-9);
    assert_true(isfinite(st.rel_err));
    lay_qtensor_free(&q);
    p.damp = 0;
    for (int64_t j = 0; j < cols; j++) h[j * cols + (j ^ 1)] = 1; /* singular, PSD */
    assert_int_equal(gptq_quantize(w, rows, cols, h, &o, &p, &q, &st, err, sizeof err), -1);
    assert_non_null(strstr(err, "Cholesky"));
    free(h), free(w);
}

static void test_rtn_without_hessian_keeps_order(void **state)
{
    (void)state;
    layer L = make_layer(16, 128, 7, 0);
    lay_option o = opt(4, 4, 0, 32, LAY_SCALE_F16);
    lay_qtensor q;
    char err[256];
    assert_int_equal(rtn_quantize(L.w, L.rows, L.cols, NULL, &o, &q, err, sizeof err), 0);
    for (int64_t j = 0; j < L.cols; j++) assert_int_equal(q.perm[j], j);
    float *wq = malloc((size_t)(L.rows * L.cols) * sizeof *wq);
    lay_qtensor_dequant(&q, wq);
    /* round to nearest: inside the grid's range within half a step (a little more at
     * the top of a symmetric grid, whose scale was rounded down to fp16), outside it
     * (the searched range clips) the nearer end; the range keeps at least half of
     * the group's */
    for (int64_t r = 0; r < L.rows; r++)
        for (int64_t g = 0; g < 4; g++) {
            float s = lay_f16_to_f32(q.scale[r * 4 + g]), z = (float)q.zero[r * 4 + g];
            float bottom = s * (0 - z), top = s * (15 - z), amax = 0;
            for (int64_t j = g * 32; j < g * 32 + 32; j++) {
                float v = L.w[r * L.cols + j], d = wq[r * L.cols + j];
                amax = fabsf(v) > amax ? fabsf(v) : amax;
                if (v < bottom - 0.5f * s) assert_true(d == bottom);
                else if (v > top + 0.5f * s) assert_true(d == top);
                else assert_true(fabsf(d - v) <= 0.5f * s * 1.01f);
            }
            assert_true(top - bottom + s >= amax * 0.99f); /* 2 a f >= a, 16 steps against 15 */
        }
    free(wq);
    lay_qtensor_free(&q);
    free_layer(&L);
}

/* ==== Fast error paths ==== */

/* tr(dW H dW^T) / tr(W H W^T) straight from the definition, in long double, with
 * dW = dequantized q - w: the reference for both error paths. */
static double direct_rel_err(const float *w, const float *wq, int64_t rows, int64_t cols, const double *h)
{
    long double num = 0, den = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < cols; i++) {
            long double di = (long double)wq[r * cols + i] - w[r * cols + i], wi = w[r * cols + i], sd = 0, sw = 0;
            for (int64_t j = 0; j < cols; j++) {
                sd += h[i * cols + j] * ((long double)wq[r * cols + j] - w[r * cols + j]);
                sw += h[i * cols + j] * (long double)w[r * cols + j];
            }
            num += di * sd, den += wi * sw;
        }
    return (double)(num / den);
}

/* GPTQ under prep, its dequantized weights into wq; returns rel_err. */
static double gptq_prepped(const layer *L, const gptq_prep *prep, const lay_option *o, lay_qtensor *q, float *wq)
{
    gptq_stats st;
    char err[256];
    assert_int_equal(gptq_quantize_prepared(L->w, L->rows, prep, o, -1.0, q, &st, err, sizeof err), 0);
    lay_qtensor_dequant(q, wq);
    return st.rel_err;
}

/* fast_error: the same tensor as without, and rel_err equal to the direct trace to
 * 1e-9 (the default float syrk gets ~1e-6), on plain layers, with dead channels,
 * and on small groups at 8 bits, where the errors are smallest. */
static void test_fast_error_matches_direct_trace(void **state)
{
    (void)state;
    struct { int64_t rows, cols; int dead; lay_option o; } cases[] = {
        {64, 256, 0, opt(2, 3, 0.3f, 64, LAY_SCALE_F16_Z8)}, {48, 320, 9, opt(4, 4, 0, 64, LAY_SCALE_F16)},
        {32, 384, 0, opt(8, 8, 0, 32, LAY_SCALE_F16_Z8)}, {40, 192, 5, opt(3, 5, 0.5f, 96, LAY_SCALE_F16_Z8)},
    };
    char err[256];
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        layer L = make_layer(cases[k].rows, cases[k].cols, 20 + k, cases[k].dead);
        int64_t n = L.rows * L.cols;
        gptq_params p;
        gptq_params_init(&p);
        gptq_prep *slow, *fast;
        assert_int_equal(gptq_prepare(L.h, L.cols, &p, &slow, err, sizeof err), 0);
        p.fast_error = 1;
        assert_int_equal(gptq_prepare(L.h, L.cols, &p, &fast, err, sizeof err), 0);
        lay_qtensor a, b;
        float *wa = malloc((size_t)n * sizeof *wa), *wb = malloc((size_t)n * sizeof *wb);
        double ea = gptq_prepped(&L, slow, &cases[k].o, &a, wa), eb = gptq_prepped(&L, fast, &cases[k].o, &b, wb);
        assert_memory_equal(wa, wb, (size_t)n * sizeof *wa);
        double ref = direct_rel_err(L.w, wb, L.rows, L.cols, L.h);
        if (!(fabs(eb - ref) <= 1e-9 * ref)) fail_msg("case %zu: fast %.17g, direct %.17g", k, eb, ref);
        if (!(fabs(ea - ref) <= 1e-5 * ref)) fail_msg("case %zu: default %.17g, direct %.17g", k, ea, ref);
        lay_qtensor_free(&a), lay_qtensor_free(&b);
        gptq_prep_free(slow), gptq_prep_free(fast);
        free(wa), free(wb);
        free_layer(&L);
    }
}

/* Where the identity behind the fast rel_err does not hold (a dead channel whose
 * row of H is not zero, so dW's values there count) it is not used: the result is
 * the default's, bit for bit. */
static void test_fast_error_falls_back(void **state)
{
    (void)state;
    layer L = make_layer(32, 128, 30, 10); /* channels 1, 11, ... dead */
    for (int64_t k = 0; k < L.cols; k++)
        if (k != 11) L.h[11 * L.cols + k] = L.h[k * L.cols + 11] = 1e-3 * L.h[k * L.cols + k];
    lay_option o = opt(3, 3, 0, 32, LAY_SCALE_F16_Z8);
    gptq_params p;
    gptq_params_init(&p);
    char err[256];
    gptq_prep *slow, *fast;
    assert_int_equal(gptq_prepare(L.h, L.cols, &p, &slow, err, sizeof err), 0);
    p.fast_error = 1;
    assert_int_equal(gptq_prepare(L.h, L.cols, &p, &fast, err, sizeof err), 0);
    lay_qtensor a, b;
    float *wa = malloc((size_t)(L.rows * L.cols) * sizeof *wa), *wb = malloc((size_t)(L.rows * L.cols) * sizeof *wb);
    double ea = gptq_prepped(&L, slow, &o, &a, wa), eb = gptq_prepped(&L, fast, &o, &b, wb);
    assert_memory_equal(&ea, &eb, sizeof ea);
    lay_qtensor_free(&a), lay_qtensor_free(&b);
    gptq_prep_free(slow), gptq_prep_free(fast);
    free(wa), free(wb);
    free_layer(&L);
}

/* rtn_error_prepared is, bit for bit, rtn_quantize with the same Hessian, then
 * lay_qtensor_dequant, dW = wq - w in float and gptq_weight_energy(dW) / tr(W H W^T)
 * (with act-order in the prep or not: RTN always orders by diag H); with fast_error
 * it is within float summation (1e-5) of that. */
static void test_rtn_error_prepared_is_rtn_quantize(void **state)
{
    (void)state;
    layer L = make_layer(72, 320, 40, 7);
    lay_option os[] = {opt(4, 4, 0, 64, LAY_SCALE_F16_Z8), opt(2, 3, 0.5f, 32, LAY_SCALE_F16),
                       opt(3, 5, 0.25f, 96, LAY_SCALE_F16_Z8), opt(8, 8, 0, 128, LAY_SCALE_F16)};
    int64_t n = L.rows * L.cols;
    float *dw = malloc((size_t)n * sizeof *dw);
    double energy = gptq_weight_energy(L.w, L.rows, L.cols, L.h);
    char err[256];
    for (int mode = 0; mode < 3; mode++) { /* act-order, no act-order, fast */
        gptq_params p;
        gptq_params_init(&p);
        p.act_order = mode != 1, p.fast_error = mode == 2;
        gptq_prep *prep;
        assert_int_equal(gptq_prepare(L.h, L.cols, &p, &prep, err, sizeof err), 0);
        for (size_t i = 0; i < sizeof os / sizeof os[0]; i++) {
            lay_qtensor q;
            assert_int_equal(rtn_quantize(L.w, L.rows, L.cols, L.h, &os[i], &q, err, sizeof err), 0);
            lay_qtensor_dequant(&q, dw);
            for (int64_t k = 0; k < n; k++) dw[k] -= L.w[k];
            double want = gptq_weight_energy(dw, L.rows, L.cols, L.h) / energy, got;
            assert_int_equal(rtn_error_prepared(L.w, L.rows, prep, &os[i], mode ? energy : -1.0, &got, err, sizeof err), 0);
            if (mode < 2) assert_memory_equal(&got, &want, sizeof got);
            else if (!(fabs(got - want) <= 1e-5 * want)) fail_msg("%s: fast %.17g, exact %.17g", os[i].name, got, want);
            lay_qtensor_free(&q);
        }
        lay_option bad = opt(4, 4, 0, 48, LAY_SCALE_F16_Z8);
        double got;
        assert_int_equal(rtn_error_prepared(L.w, L.rows, prep, &bad, energy, &got, err, sizeof err), -1);
        assert_non_null(strstr(err, "group 48"));
        gptq_prep_free(prep);
    }
    free(dw);
    free_layer(&L);
}

/* ==== Hessians ==== */

static void test_hessian_sum_chunks_and_finalize(void **state)
{
    (void)state;
    int n = 600, cols = 40;
    float *x = malloc((size_t)(n * cols) * sizeof *x);
    rng_state = 5;
    for (int i = 0; i < n * cols; i++) x[i] = (float)nrand();
    double *a = calloc((size_t)(cols * cols), sizeof *a), *b = calloc((size_t)(cols * cols), sizeof *b);
    assert_int_equal(hess_accumulate(a, x, n, cols), 0);
    assert_int_equal(hess_accumulate(b, x, 256, cols), 0);    /* as a resumed run would */
    assert_int_equal(hess_accumulate(b, x + 256 * cols, n - 256, cols), 0);
    assert_memory_equal(a, b, (size_t)(cols * cols) * sizeof *a);
    for (int i = 0; i < cols; i++)
        for (int j = 0; j < cols; j++) {
            long double s = 0;
            for (int r = 0; r < n; r++) s += (long double)x[r * cols + i] * x[r * cols + j];
            assert_true(fabs(a[i * cols + j] - (double)s) <= 1e-12 * n);
            assert_true(a[i * cols + j] == a[j * cols + i]);
        }
    char err[256];
    double h00 = a[0];
    assert_int_equal(hess_finalize(a, cols, n, err, sizeof err), 0);
    assert_true(a[0] == h00 * (2.0 / n));
    assert_int_equal(hess_finalize(b, cols, 0, err, sizeof err), -1);
    assert_non_null(strstr(err, "0 rows"));
    b[3 * cols + 4] = INFINITY;
    assert_int_equal(hess_finalize(b, cols, n, err, sizeof err), -1);
    assert_non_null(strstr(err, "[3][4]"));
    free(x), free(a), free(b);
}

/* ==== Options ==== */

static void test_default_options(void **state)
{
    (void)state;
    opt_set s;
    opt_default_set(&s);
    assert_true(s.n >= 20);
    double lo = 99, hi = 0;
    for (int i = 0; i < s.n; i++) {
        char why[128];
        int64_t step = s.v[i].rot ? s.v[i].rot : 32; /* a rotation needs whole blocks */
        for (int64_t cols = step; cols <= 4096; cols += step)
            if (lay_option_check(&s.v[i], 1, cols, why, sizeof why)) fail_msg("%s on %lld cols: %s", s.v[i].name, (long long)cols, why);
        if (s.v[i].rot) assert_int_not_equal(lay_option_check(&s.v[i], 1, s.v[i].rot + 32, NULL, 0), 0);
        double bpw = (double)lay_tensor_bits(&s.v[i], 4096, 4096) / (4096.0 * 4096.0);
        lo = fmin(lo, bpw), hi = fmax(hi, bpw);
        for (int k = 0; k < i; k++) {
            assert_string_not_equal(s.v[i].name, s.v[k].name);
            assert_false(s.v[i].bits_lo == s.v[k].bits_lo && s.v[i].bits_hi == s.v[k].bits_hi &&
                         s.v[i].hi_share == s.v[k].hi_share && s.v[i].group == s.v[k].group &&
                         s.v[i].rot == s.v[k].rot && s.v[i].awq == s.v[k].awq);
        }
    }
    assert_true(lo < 2.3 && hi > 8.0);
    opt_set_free(&s);
}

static void test_option_file_error_names_line(void **state)
{
    (void)state;
    char path[] = "/tmp/bitplan-opts-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "# comment\n\"4b g64\" 4 4 0 64 z8\nfive 5 5 0 100 z8\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    opt_set s;
    char err[256];
    assert_int_equal(opt_read_file(path, &s, err, sizeof err), -1);
    char want[128];
    snprintf(want, sizeof want, "%s:3: group '100'", path);
    if (!strstr(err, want)) fail_msg("\"%s\" lacks \"%s\"", err, want);
    assert_null(s.v);
    unlink(path);
    assert_int_equal(opt_read_file(path, &s, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot open"));
}

/* ==== ggml block types ==== */

static const int all_ggml[] = {LAY_GGML_Q2_K, LAY_GGML_Q3_K, LAY_GGML_Q4_0, LAY_GGML_Q4_K, LAY_GGML_Q4_1,
                               LAY_GGML_Q5_0, LAY_GGML_Q5_K, LAY_GGML_Q5_1, LAY_GGML_Q6_K, LAY_GGML_Q8_0};
#define N_GGML ((int)(sizeof all_ggml / sizeof all_ggml[0]))

static gptq_prep *prep_in_order(const double *h, int64_t cols, int act_order)
{
    gptq_params p;
    gptq_params_init(&p);
    p.act_order = act_order;
    gptq_prep *prep;
    char err[256];
    assert_int_equal(gptq_prepare(h, cols, &p, &prep, err, sizeof err), 0);
    return prep;
}

/* With H diagonal no column's error reaches another: GPTQ inside the grid is then
 * the importance-weighted fit of every block alone, byte for byte what
 * lay_ggml_quantize_row writes with diag(H) as importance. */
static void test_ggml_gptq_on_a_diagonal_hessian_is_the_fit(void **state)
{
    (void)state;
    int64_t rows = 24, cols = 512;
    layer L = make_layer(rows, cols, 41, 0);
    float *imp = malloc((size_t)cols * sizeof *imp);
    for (int64_t a = 0; a < cols; a++)
        for (int64_t b = 0; b < cols; b++)
            if (a != b) L.h[a * cols + b] = 0;
    for (int64_t j = 0; j < cols; j++) imp[j] = (float)L.h[j * cols + j];
    gptq_prep *prep = prep_in_order(L.h, cols, 0);
    for (int k = 0; k < N_GGML; k++) {
        lay_option o;
        assert_int_equal(lay_ggml_option(all_ggml[k], &o), 0);
        lay_qtensor q;
        char err[256];
        assert_int_equal(gptq_quantize_prepared(L.w, rows, prep, &o, -1, &q, NULL, err, sizeof err), 0);
        int64_t rb = lay_ggml_row_bytes(all_ggml[k], cols);
        uint8_t *want = malloc((size_t)rb);
        for (int64_t r = 0; r < rows; r++) {
            lay_ggml_quantize_row(all_ggml[k], L.w + r * cols, imp, want, cols);
            assert_memory_equal(q.blocks + r * rb, want, (size_t)rb);
        }
        free(want);
        lay_qtensor_free(&q);
    }
    gptq_prep_free(prep);
    free(imp);
    free_layer(&L);
}

/* On correlated inputs GPTQ's error feedback inside the grid beats the fit alone
 * (rtn_error_prepared), and the reported rel_err is that of the stored blocks:
 * decoded (lay_qtensor_dequant, the same numbers gguf-py gives, tests/test_ggml.py)
 * and measured directly. */
static void test_ggml_gptq_beats_the_fit_and_reports_its_blocks(void **state)
{
    (void)state;
    int64_t rows = 32, cols = 512;
    layer L = make_layer(rows, cols, 42, 0);
    gptq_prep *prep = prep_in_order(L.h, cols, 0);
    float *wq = malloc((size_t)(rows * cols) * sizeof *wq);
    for (int k = 0; k < N_GGML; k++) {
        lay_option o;
        assert_int_equal(lay_ggml_option(all_ggml[k], &o), 0);
        lay_qtensor q;
        gptq_stats st;
        double rtn;
        char err[256];
        assert_int_equal(gptq_quantize_prepared(L.w, rows, prep, &o, -1, &q, &st, err, sizeof err), 0);
        assert_int_equal(rtn_error_prepared(L.w, rows, prep, &o, -1, &rtn, err, sizeof err), 0);
        lay_qtensor_dequant(&q, wq);
        double direct = direct_rel_err(L.w, wq, rows, cols, L.h);
        assert_true(fabs(st.rel_err - direct) <= 1e-5 * direct);
        assert_true(st.rel_err < rtn);
        lay_qtensor_free(&q);
    }
    free(wq);
    gptq_prep_free(prep);
    free_layer(&L);
}

/* GGUF stores no permutation: an act-order prep is refused; K-quants need whole
 * 256-blocks and say so; the cost is ggml's bytes. */
static void test_ggml_refusals_and_cost(void **state)
{
    (void)state;
    int64_t rows = 8, cols = 576;
    layer L = make_layer(rows, cols, 43, 0);
    gptq_prep *prep = prep_in_order(L.h, cols, 1);
    lay_option o;
    lay_qtensor q;
    char err[256], why[160];
    assert_int_equal(lay_ggml_option(LAY_GGML_Q4_0, &o), 0);
    assert_int_equal(gptq_quantize_prepared(L.w, rows, prep, &o, -1, &q, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "act-order"));
    assert_int_equal(lay_ggml_option(LAY_GGML_Q4_K, &o), 0);
    assert_int_equal(lay_option_check(&o, rows, cols, why, sizeof why), -1);
    assert_non_null(strstr(why, "576"));
    assert_non_null(strstr(why, "256"));
    assert_int_equal(lay_option_check(&o, rows, 512, why, sizeof why), 0);
    assert_int_equal(lay_tensor_bits(&o, 3, 512), 8 * 3 * 2 * 144);
    assert_int_equal(lay_ggml_option(LAY_GGML_Q8_0, &o), 0);
    assert_int_equal(lay_tensor_bits(&o, 3, 576), 8 * 3 * 18 * 34);
    assert_int_equal(lay_ggml_option(99, &o), -1);
    gptq_prep_free(prep);
    free_layer(&L);
}

/* The preset and the option file's one-field lines give the same options; a bad
 * type name is refused with its line. */
static void test_ggml_options(void **state)
{
    (void)state;
    opt_set a, b;
    char path[] = "/tmp/bitplan-opts-XXXXXX", err[256];
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char text[] = "# every type\nq2_k\nQ3_K\nQ4_0\nQ4_K\nQ4_1\nQ5_0\nQ5_K\nQ5_1\nQ6_K\nQ8_0\n";
    assert_int_equal(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);
    opt_ggml_set(&a);
    assert_int_equal(a.n, N_GGML);
    assert_int_equal(opt_read_file(path, &b, err, sizeof err), 0);
    assert_int_equal(b.n, a.n);
    for (int i = 0; i < a.n; i++) {
        assert_string_equal(a.v[i].name, b.v[i].name);
        assert_int_equal(a.v[i].scale_fmt, b.v[i].scale_fmt);
        assert_int_equal(lay_option_check(&a.v[i], 4, 512, NULL, 0), 0);
    }
    opt_set_free(&a), opt_set_free(&b);
    FILE *f = fopen(path, "w");
    fputs("Q4_0\nQ9_K\n", f);
    fclose(f);
    assert_int_equal(opt_read_file(path, &b, err, sizeof err), -1);
    assert_non_null(strstr(err, ":2:"));
    assert_non_null(strstr(err, "Q9_K"));
    f = fopen(path, "w");
    fputs("Q4_0\nq4_0\n", f);
    fclose(f);
    assert_int_equal(opt_read_file(path, &b, err, sizeof err), -1);
    assert_non_null(strstr(err, ":2:"));
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gptq_beats_rtn),
        cmocka_unit_test(test_error_falls_as_bits_rise),
        cmocka_unit_test(test_reported_error_is_the_stored_tensors),
        cmocka_unit_test(test_refusals_name_the_value),
        cmocka_unit_test(test_dead_columns),
        cmocka_unit_test(test_deterministic_and_prepared_identical),
        cmocka_unit_test(test_cholesky_retries),
        cmocka_unit_test(test_rtn_without_hessian_keeps_order),
        cmocka_unit_test(test_fast_error_matches_direct_trace),
        cmocka_unit_test(test_fast_error_falls_back),
        cmocka_unit_test(test_rtn_error_prepared_is_rtn_quantize),
        cmocka_unit_test(test_hessian_sum_chunks_and_finalize),
        cmocka_unit_test(test_default_options),
        cmocka_unit_test(test_awq_option),
        cmocka_unit_test(test_option_file_error_names_line),
        cmocka_unit_test(test_ggml_gptq_on_a_diagonal_hessian_is_the_fit),
        cmocka_unit_test(test_ggml_gptq_beats_the_fit_and_reports_its_blocks),
        cmocka_unit_test(test_ggml_refusals_and_cost),
        cmocka_unit_test(test_ggml_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
