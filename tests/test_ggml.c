/*
 * tests/test_ggml.c — layout/ggml.c, the ggml block formats: traits against ggml's
 * block sizes; random headers and q values encoded and decoded against the grid
 * formulas written out here independently; lay_ggml_value equal to the decoder
 * bit for bit on fitted blocks; the fit against a plain min/max round-to-nearest
 * grid on Gaussian and heavy-tailed rows, with and without importance; all-zero
 * blocks, extreme values and determinism; the 32-wide types re-laid as bitplan's
 * packed parts (planes, scale, min) and back, byte for byte, decoding to the same
 * bits. The byte layouts against gguf-py and
 * model/'s GGUF reader are checked by tests/test_ggml.py.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "layout/layout.h"

static const int types[] = {LAY_GGML_Q4_0, LAY_GGML_Q4_1, LAY_GGML_Q5_0, LAY_GGML_Q5_1, LAY_GGML_Q8_0,
                            LAY_GGML_Q2_K, LAY_GGML_Q3_K, LAY_GGML_Q4_K, LAY_GGML_Q5_K, LAY_GGML_Q6_K};
#define N_TYPES (int)(sizeof types / sizeof *types)

/* ==== A small deterministic generator ==== */

static uint64_t rng_state;
static uint32_t rnd32(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}
static float uni(void) { return ((float)rnd32() + 0.5f) / 2147483648.0f; } /* (0, 1) */
static float gauss(void) { return sqrtf(-2.0f * logf(uni())) * cosf(6.2831853f * uni()); }
static float heavy(void) { return gauss() / sqrtf(uni()); } /* a t-like tail */

/* ==== Independent formulas ==== */

static int sub_count(const lay_ggml_traits *t) { return t->block / t->sub; }

/* The grid of a header as the ggml decoders compute it, written out per type. */
static void formula_grid(lay_ggml_grid *g)
{
    float d = lay_f16_to_f32(g->d), m = lay_f16_to_f32(g->dmin);
    for (int k = 0; k < LAY_GGML_MAX_SUB; k++) {
        switch (g->type) {
        case LAY_GGML_Q4_1: case LAY_GGML_Q5_1: g->a[k] = d, g->b[k] = m; break;
        case LAY_GGML_Q2_K: case LAY_GGML_Q4_K: case LAY_GGML_Q5_K:
            g->a[k] = d * (float)g->sc[k], g->b[k] = -(m * (float)g->mn[k]);
            break;
        case LAY_GGML_Q3_K: case LAY_GGML_Q6_K: g->a[k] = d * (float)g->sc[k], g->b[k] = -0.0f; break;
        default: g->a[k] = d, g->b[k] = -0.0f; break;
        }
    }
}

static uint16_t random_scale(void) { return lay_f32_to_f16((uni() - 0.5f) * 0.1f); }

/* A random valid header: every field over its whole stored range. */
static void random_header(int type, lay_ggml_grid *g)
{
    memset(g, 0, sizeof *g);
    g->type = type, g->d = random_scale(), g->dmin = random_scale();
    for (int k = 0; k < LAY_GGML_MAX_SUB; k++) {
        int r = rnd32();
        switch (type) {
        case LAY_GGML_Q2_K: g->sc[k] = (int8_t)(r & 15), g->mn[k] = (uint8_t)(r >> 8 & 15); break;
        case LAY_GGML_Q3_K: g->sc[k] = (int8_t)((r & 63) - 32); break;
        case LAY_GGML_Q4_K: case LAY_GGML_Q5_K: g->sc[k] = (int8_t)(r & 63), g->mn[k] = (uint8_t)(r >> 8 & 63); break;
        case LAY_GGML_Q6_K: g->sc[k] = (int8_t)(r & 255); break;
        default: break;
        }
    }
    formula_grid(g);
}

static int same_bits(float a, float b) { return !memcmp(&a, &b, sizeof a); }

/* ==== Traits ==== */

static void test_traits(void **state)
{
    (void)state;
    /* ggml's sizeof(block_q*) and QK */
    static const struct { int type, block, bytes; const char *name; } want[] = {
        {2, 32, 18, "Q4_0"},  {3, 32, 20, "Q4_1"},   {6, 32, 22, "Q5_0"},   {7, 32, 24, "Q5_1"},   {8, 32, 34, "Q8_0"},
        {10, 256, 84, "Q2_K"}, {11, 256, 110, "Q3_K"}, {12, 256, 144, "Q4_K"}, {13, 256, 176, "Q5_K"}, {14, 256, 210, "Q6_K"}};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        const lay_ggml_traits *t = lay_ggml_traits_of(want[i].type);
        assert_non_null(t);
        assert_int_equal(t->block, want[i].block);
        assert_int_equal(t->bytes, want[i].bytes);
        assert_string_equal(t->name, want[i].name);
        assert_int_equal(lay_ggml_type_by_name(want[i].name), want[i].type);
        assert_int_equal(lay_ggml_row_bytes(want[i].type, 4 * t->block), 4 * t->bytes);
        assert_true(t->sub * sub_count(t) == t->block && sub_count(t) <= LAY_GGML_MAX_SUB);
        /* header bits + q bits = block bytes, to the bit */
        int hdr = t->bytes * 8 - t->block * t->bits;
        assert_true(hdr == 16 || hdr == 32 || hdr == 16 * 12 / 2 + 32 || hdr == 16 * 8 + 32 || hdr == 16 * 6 + 16 ||
                    hdr == 16 * 8 + 16);
    }
    assert_int_equal(lay_ggml_type_by_name("q4_k"), LAY_GGML_Q4_K);
    assert_int_equal(lay_ggml_type_by_name("Q8_1"), -1);
    assert_int_equal(lay_ggml_type_by_name(""), -1);
    assert_null(lay_ggml_traits_of(0));
    assert_null(lay_ggml_traits_of(9));
    assert_null(lay_ggml_traits_of(15));
    assert_null(lay_ggml_traits_of(-1));
    assert_null(lay_ggml_traits_of(1000));
}

/* ==== Encode and decode ==== */

/* Random headers and q values: decode(encode) equals the formulas, bit for bit. */
static void test_encode_decode_formula(void **state)
{
    (void)state;
    rng_state = 1;
    for (int ti = 0; ti < N_TYPES; ti++) {
        const lay_ggml_traits *t = lay_ggml_traits_of(types[ti]);
        uint8_t q[256], blk[256];
        float y[256];
        for (int rep = 0; rep < 200; rep++) {
            lay_ggml_grid g;
            random_header(types[ti], &g);
            for (int v = 0; v < t->block; v++) q[v] = (uint8_t)(rnd32() & ((1u << t->bits) - 1));
            lay_ggml_encode(&g, q, blk);
            lay_ggml_decode_row(types[ti], blk, y, t->block);
            for (int v = 0; v < t->block; v++) {
                int k = v / t->sub;
                float want = g.a[k] * (float)(q[v] - t->center) + g.b[k];
                if (!same_bits(y[v], want)) fail_msg("%s value %d: %g, want %g", t->name, v, y[v], want);
            }
        }
    }
}

/* Fitted blocks: lay_ggml_value on the fit's grid is what the decoder returns. */
static void test_value_equals_decoder(void **state)
{
    (void)state;
    rng_state = 2;
    for (int ti = 0; ti < N_TYPES; ti++) {
        const lay_ggml_traits *t = lay_ggml_traits_of(types[ti]);
        float x[256], imp[256], y[256];
        uint8_t q[256], blk[256];
        for (int rep = 0; rep < 50; rep++) {
            for (int v = 0; v < t->block; v++) x[v] = 0.02f * (rep % 2 ? heavy() : gauss()), imp[v] = expf(gauss());
            lay_ggml_grid g;
            lay_ggml_fit(types[ti], x, rep % 3 ? imp : NULL, &g);
            for (int v = 0; v < t->block; v++) q[v] = (uint8_t)lay_ggml_quant(&g, v / t->sub, t->bits, t->center, x[v]);
            lay_ggml_encode(&g, q, blk);
            lay_ggml_decode_row(types[ti], blk, y, t->block);
            for (int v = 0; v < t->block; v++)
                if (!same_bits(y[v], lay_ggml_value(&g, v / t->sub, t->center, q[v])))
                    fail_msg("%s value %d: decoder %g, grid %g", t->name, v, y[v], lay_ggml_value(&g, v / t->sub, t->center, q[v]));
            /* quantize_row is fit + nearest + encode */
            uint8_t blk2[256];
            lay_ggml_quantize_row(types[ti], x, rep % 3 ? imp : NULL, blk2, t->block);
            assert_memory_equal(blk, blk2, (size_t)t->bytes);
        }
    }
}

/* ==== The fit against plain round-to-nearest ==== */

static double grid_err(const lay_ggml_grid *g, const lay_ggml_traits *t, const float *x, const float *w)
{
    double e = 0;
    for (int v = 0; v < t->block; v++) {
        int k = v / t->sub, q = lay_ggml_quant(g, k, t->bits, t->center, x[v]);
        double r = (double)x[v] - lay_ggml_value(g, k, t->center, q);
        e += (w ? w[v] : 1.0) * r * r;
    }
    return e;
}

/* ggml's reference round-to-nearest: each (sub-)block by its min and max (affine)
 * or its largest magnitude (symmetric), the sub-block scales by their largest. */
static void rtn_grid(int type, const float *x, lay_ggml_grid *g)
{
    const lay_ggml_traits *t = lay_ggml_traits_of(type);
    int affine = type == LAY_GGML_Q4_1 || type == LAY_GGML_Q5_1 || type == LAY_GGML_Q2_K || type == LAY_GGML_Q4_K ||
                 type == LAY_GGML_Q5_K;
    int nmax = (1 << t->bits) - 1, fmax = type == LAY_GGML_Q2_K ? 15 : type == LAY_GGML_Q6_K ? 127 : type == LAY_GGML_Q3_K ? 31 : 63;
    float s[16], m[16], smax = 0, mmax = 0;
    memset(g, 0, sizeof *g);
    g->type = type;
    for (int k = 0; k < sub_count(t); k++) {
        float lo = INFINITY, hi = -INFINITY, amax = 0;
        for (int i = k * t->sub; i < (k + 1) * t->sub; i++) {
            lo = fminf(lo, x[i]), hi = fmaxf(hi, x[i]);
            if (fabsf(x[i]) > fabsf(amax)) amax = x[i];
        }
        if (affine && type != LAY_GGML_Q4_1 && type != LAY_GGML_Q5_1) lo = fminf(lo, 0.0f);
        s[k] = affine ? (hi - lo) / (float)nmax : amax / (float)-t->center, m[k] = -lo;
        if (fabsf(s[k]) > fabsf(smax)) smax = s[k];
        mmax = fmaxf(mmax, m[k]);
    }
    if (t->block == 32) {
        g->d = lay_f32_to_f16(s[0]), g->dmin = lay_f32_to_f16(-m[0]);
    } else {
        float d = affine ? smax / (float)fmax : smax / (float)-(fmax + 1), dm = mmax / (float)fmax;
        g->d = lay_f32_to_f16(d), g->dmin = lay_f32_to_f16(dm);
        float d16 = lay_f16_to_f32(g->d), dm16 = lay_f16_to_f32(g->dmin);
        for (int k = 0; k < sub_count(t); k++) {
            float v = d16 != 0 ? rintf(s[k] / d16) : 0, w = dm16 != 0 ? rintf(m[k] / dm16) : 0;
            g->sc[k] = (int8_t)fmaxf(affine ? 0 : -(fmax + 1), fminf(v, (float)fmax));
            g->mn[k] = (uint8_t)fmaxf(0, fminf(w, (float)fmax));
        }
    }
    formula_grid(g);
}

static void fit_vs_rtn(int heavy_tail, int with_imp)
{
    rng_state = 3 + (uint64_t)heavy_tail * 2 + (uint64_t)with_imp;
    for (int ti = 0; ti < N_TYPES; ti++) {
        const lay_ggml_traits *t = lay_ggml_traits_of(types[ti]);
        double e_fit = 0, e_rtn = 0;
        for (int rep = 0; rep < 100; rep++) {
            float x[256], imp[256];
            for (int v = 0; v < t->block; v++) x[v] = 0.01f * (heavy_tail ? heavy() : gauss()), imp[v] = expf(1.5f * gauss());
            lay_ggml_grid g, r;
            lay_ggml_fit(types[ti], x, with_imp ? imp : NULL, &g);
            rtn_grid(types[ti], x, &r);
            double ef = grid_err(&g, t, x, with_imp ? imp : NULL), er = grid_err(&r, t, x, with_imp ? imp : NULL);
            /* block by block with importance (the fit's objective); in total without,
               since the fit then weighs large values more than the plain error does */
            if (with_imp && ef > er * (1 + 1e-6)) fail_msg("%s block %d: fit %g > rtn %g", t->name, rep, ef, er);
            e_fit += ef, e_rtn += er;
        }
        print_message("%s %s%s: fit / rtn error %.3f\n", t->name, heavy_tail ? "heavy" : "gauss", with_imp ? " imp" : "",
                      e_fit / e_rtn);
        assert_true(e_fit < e_rtn);
    }
}

static void test_fit_gauss(void **state) { (void)state; fit_vs_rtn(0, 0); }
static void test_fit_heavy(void **state) { (void)state; fit_vs_rtn(1, 0); }
static void test_fit_gauss_imp(void **state) { (void)state; fit_vs_rtn(0, 1); }
static void test_fit_heavy_imp(void **state) { (void)state; fit_vs_rtn(1, 1); }

/* ==== Edge cases ==== */

static void test_zero_blocks(void **state)
{
    (void)state;
    for (int ti = 0; ti < N_TYPES; ti++) {
        const lay_ggml_traits *t = lay_ggml_traits_of(types[ti]);
        float x[256] = {0}, imp[256], y[256];
        uint8_t blk[256];
        for (int v = 0; v < 256; v++) imp[v] = 1.0f;
        for (int pass = 0; pass < 3; pass++) {
            if (pass == 2) /* zero sub-blocks beside a live one */
                for (int v = 0; v < t->sub; v++) x[v] = 0.01f * (float)(v - 7);
            lay_ggml_quantize_row(types[ti], x, pass == 1 ? imp : NULL, blk, t->block);
            lay_ggml_decode_row(types[ti], blk, y, t->block);
            for (int v = pass == 2 ? t->sub : 0; v < t->block; v++)
                if (y[v] != 0.0f) fail_msg("%s pass %d value %d: %g, not 0", t->name, pass, v, y[v]);
        }
        /* importance all zero: still a sensible fit */
        memset(imp, 0, sizeof imp);
        for (int v = 0; v < t->block; v++) x[v] = 0.01f * (float)(v % 13 - 6);
        lay_ggml_quantize_row(types[ti], x, imp, blk, t->block);
        lay_ggml_decode_row(types[ti], blk, y, t->block);
        for (int v = 0; v < t->block; v++) assert_true(fabsf(y[v] - x[v]) < 0.04f);
    }
}

static void test_extreme_values(void **state)
{
    (void)state;
    rng_state = 9;
    static const float scale[] = {1e-30f, 1e-7f, 1.0f, 1e4f, 1e30f, 3e38f};
    for (int ti = 0; ti < N_TYPES; ti++) {
        const lay_ggml_traits *t = lay_ggml_traits_of(types[ti]);
        for (size_t s = 0; s < sizeof scale / sizeof *scale; s++)
            for (int mix = 0; mix < 2; mix++) {
                float x[256], y[256], imp[256];
                uint8_t blk[256];
                for (int v = 0; v < t->block; v++) {
                    x[v] = scale[s] * gauss();
                    if (mix && v % 5 == 0) x[v] = (v % 2 ? 1e-20f : -2e5f) * uni();
                    imp[v] = v % 7 ? uni() : 0.0f;
                }
                lay_ggml_quantize_row(types[ti], x, s % 2 ? imp : NULL, blk, t->block);
                lay_ggml_decode_row(types[ti], blk, y, t->block);
                for (int v = 0; v < t->block; v++)
                    if (!isfinite(y[v])) fail_msg("%s scale %g: value %d is %g", t->name, scale[s], v, y[v]);
            }
    }
}

static void test_deterministic(void **state)
{
    (void)state;
    rng_state = 11;
    float x[4 * 256], imp[4 * 256];
    for (int v = 0; v < 4 * 256; v++) x[v] = heavy(), imp[v] = uni();
    for (int ti = 0; ti < N_TYPES; ti++) {
        uint8_t a[4 * 210], b[4 * 210];
        lay_ggml_quantize_row(types[ti], x, imp, a, 256);
        lay_ggml_quantize_row(types[ti], x, imp, b, 256);
        assert_memory_equal(a, b, (size_t)lay_ggml_row_bytes(types[ti], 256));
    }
}

/* The 32-wide types pack into bitplan's parts and back byte for byte; the parts
 * are the blocks' own bytes (a Q4 block's qs is a 4-bit plane, a Q5 block's qh a
 * 1-bit plane, Q8_0's int8 is q - 128), cost what the blocks cost, and decode to
 * the decoder's values bit for bit. The K-quants do not pack. */
static void test_packed_relayout(void **state)
{
    (void)state;
    rng_state = 23;
    enum { ROWS = 3, COLS = 32 * 6 };
    for (int ti = 0; ti < N_TYPES; ti++) {
        int type = types[ti];
        const lay_ggml_traits *t = lay_ggml_traits_of(type);
        assert_int_equal(lay_ggml_packable(type), t->block == 32);
        if (!lay_ggml_packable(type)) continue;
        lay_option o = {.bits_lo = (uint8_t)t->bits, .bits_hi = (uint8_t)t->bits, .group = 32,
                        .scale_fmt = (lay_scale_fmt)(LAY_FMT_GGML + type)};
        int64_t rb = lay_ggml_row_bytes(type, COLS), vb = lay_row_bytes(&o, COLS), ng = COLS / 32;
        uint8_t blocks[ROWS * 34 * 6], back[ROWS * 34 * 6], values[ROWS * 32 * 6];
        uint16_t scales[ROWS * 6], mins[ROWS * 6];
        float w_dec[ROWS * COLS], w_pk[ROWS * COLS];
        for (int64_t b = 0; b < ROWS * ng; b++) {
            lay_ggml_grid g;
            uint8_t q[32];
            random_header(type, &g);
            for (int v = 0; v < 32; v++) q[v] = (uint8_t)(rnd32() % (1u << t->bits));
            lay_ggml_encode(&g, q, blocks + b * t->bytes);
        }
        lay_cost c = lay_tensor_cost(&o, ROWS, COLS);
        assert_int_equal(c.values + c.scales + c.zeros + c.mins + c.perm, ROWS * rb);
        assert_int_equal(c.values, ROWS * vb);
        assert_int_equal(c.mins, lay_ggml_has_min(type) ? ROWS * ng * 2 : 0);
        for (int r = 0; r < ROWS; r++) {
            lay_ggml_to_packed(type, blocks + r * rb, COLS, values + r * vb, scales + r * ng, mins + r * ng);
            lay_ggml_from_packed(type, values + r * vb, scales + r * ng, mins + r * ng, COLS, back + r * rb);
            lay_ggml_decode_row(type, blocks + r * rb, w_dec + r * COLS, COLS);
        }
        assert_memory_equal(blocks, back, (size_t)(ROWS * rb));
        for (int64_t b = 0; b < ROWS * ng; b++) { /* the planes are the blocks' bytes */
            const uint8_t *blk = blocks + b * t->bytes, *v = values + b * t->bits * 4;
            int hdr = lay_ggml_has_min(type) ? 4 : 2;
            if (t->bits == 8)
                for (int k = 0; k < 32; k++) assert_int_equal(v[k], blk[2 + k] ^ 0x80);
            else {
                assert_memory_equal(v, blk + hdr + (t->bits == 5 ? 4 : 0), 16);
                if (t->bits == 5) assert_memory_equal(v + 16, blk + hdr, 4);
            }
        }
        lay_packed p = {.rows = ROWS, .cols = COLS, .opt = o, .values = values, .scales = scales,
                        .mins = lay_ggml_has_min(type) ? mins : NULL};
        lay_packed_dequant(&p, w_pk);
        for (int i = 0; i < ROWS * COLS; i++) assert_true(same_bits(w_dec[i], w_pk[i]));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_traits),         cmocka_unit_test(test_encode_decode_formula),
        cmocka_unit_test(test_value_equals_decoder), cmocka_unit_test(test_fit_gauss),
        cmocka_unit_test(test_fit_heavy),      cmocka_unit_test(test_fit_gauss_imp),
        cmocka_unit_test(test_fit_heavy_imp),  cmocka_unit_test(test_zero_blocks),
        cmocka_unit_test(test_extreme_values), cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_packed_relayout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
