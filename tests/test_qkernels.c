/*
 * tests/test_qkernels.c — the packed-weight CPU kernels (runtime/qkernels*.c) and the
 * packed linear layer (runtime/qlinear.c) against a plain reference: W dequantized
 * with lay_packed_dequant, times the int8-rounded activations, in double. Every
 * kernel set this CPU runs, every width 2..8, mixes, both scale formats, the
 * 32-wide ggml types (original order, centers, mins), odd sizes,
 * batches 1, 2, 3, 7, 33. Random data only; never asserts on time.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layout/layout.h"
#include "runtime/qkernels.h"
#include "runtime/runtime.h"

/* ==== Random data ==== */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}
static float rndf(void) { return (float)rnd() / 4294967296.0f * 2.0f - 1.0f; } /* [-1, 1) */

/* A packed tensor and the arrays behind it. */
typedef struct {
    lay_packed p;
    uint8_t *values, *zeros;
    uint16_t *scales, *mins;
    void *perm;
    uint16_t *xscale;
} packed_t;

/* A ggml type's blocks from random weights (a mean away from 0, so that Q4_1's and
 * Q5_1's mins matter). */
static void random_blocks(lay_qtensor *q)
{
    int type = lay_option_ggml(&q->opt);
    int64_t rb = lay_ggml_row_bytes(type, q->cols);
    float *x = malloc((size_t)q->cols * sizeof *x);
    for (int64_t r = 0; r < q->rows; r++) {
        float mean = rndf();
        for (int64_t j = 0; j < q->cols; j++) x[j] = mean + 0.2f * rndf();
        lay_ggml_quantize_row(type, x, NULL, q->blocks + r * rb, q->cols);
    }
    free(x);
}

static void make_packed(packed_t *t, int64_t rows, int64_t cols, const lay_option *o)
{
    lay_qtensor q;
    assert_int_equal(lay_option_check(o, rows, cols, NULL, 0), 0);
    assert_int_equal(lay_qtensor_alloc(&q, rows, cols, o), 0);
    int64_t ng = lay_n_groups(o, cols);
    if (lay_option_ggml(o) >= 0) random_blocks(&q), ng = 0;
    for (int64_t j = 0; q.perm && j < cols; j++) q.perm[j] = (int32_t)j;
    for (int64_t j = cols - 1; q.perm && j > 0; j--) { /* Fisher-Yates */
        int64_t i = rnd() % (uint32_t)(j + 1);
        int32_t v = q.perm[i]; q.perm[i] = q.perm[j]; q.perm[j] = v;
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < ng; g++) {
            int bits = lay_group_bits(o, cols, g);
            q.scale[r * ng + g] = lay_f32_to_f16(0.001f + 0.1f * (rndf() + 1.0f));
            q.zero[r * ng + g] = o->scale_fmt == LAY_SCALE_F16 ? (uint8_t)(1 << (bits - 1)) : (uint8_t)(rnd() % (1u << bits));
            for (int64_t j = lay_group_start(o, g); j < lay_group_start(o, g) + lay_group_cols(o, cols, g); j++)
                q.q[r * cols + j] = (uint8_t)(rnd() % (1u << bits));
        }
    for (int64_t j = 0; q.xscale && j < cols; j++) /* input multipliers in [1/4, 4] */
        q.xscale[j] = lay_f32_to_f16(exp2f(2.0f * rndf()));
    lay_cost c = lay_tensor_cost(o, rows, cols);
    t->values = malloc((size_t)c.values);
    t->scales = malloc((size_t)c.scales);
    t->zeros = c.zeros ? malloc((size_t)c.zeros) : NULL;
    t->mins = c.mins ? malloc((size_t)c.mins) : NULL;
    t->perm = c.perm ? malloc((size_t)c.perm) : NULL;
    t->xscale = c.xscale ? malloc((size_t)c.xscale) : NULL;
    lay_pack_tensor(&q, t->values, t->scales, t->zeros, t->mins, t->perm, t->xscale);
    t->p = (lay_packed){ .rows = rows, .cols = cols, .opt = *o, .values = t->values, .scales = t->scales,
                         .zeros = t->zeros, .mins = t->mins, .perm = t->perm, .rot_seed = o->rot ? rnd() : 0,
                         .xscale = t->xscale };
    lay_qtensor_free(&q);
}

static void free_packed(packed_t *t)
{
    free(t->values), free(t->scales), free(t->zeros), free(t->mins), free(t->perm), free(t->xscale);
}

static void linear_free(rt_linear *l) { l->destroy(l); free(l); }

/* ==== The reference ==== */

/* x~[n][cols] in original column order: x rounded through qk_quant_ref. */
static void round_inputs(const lay_packed *p, const float *x, int n, float *xt)
{
    int64_t cols = p->cols, ng = lay_n_groups(&p->opt, cols);
    float *xp = malloc((size_t)cols * sizeof *xp), *xd = malloc((size_t)ng * sizeof *xd);
    int8_t *xq = malloc((size_t)cols);
    int32_t *xs = malloc((size_t)ng * sizeof *xs);
    for (int k = 0; k < n; k++) {
        for (int64_t j = 0; j < cols; j++) xp[j] = x[k * cols + lay_perm_at(p, j)];
        qk_quant_ref(xp, cols, p->opt.group, xq, xd, xs);
        for (int64_t j = 0; j < cols; j++) xt[k * cols + lay_perm_at(p, j)] = xd[j / p->opt.group] * (float)xq[j];
    }
    free(xp), free(xd), free(xq), free(xs);
}

/* y[n][rows] = W_deq x~ in double, rounded to float; x~ is x rounded as the int8
 * path rounds it, or x itself (exact 1) where the product takes the exact path
 * (RT_PACKED_EXACT, n >= RT_PACKED_EXACT_BATCH). A rotated tensor rounds x' = R^T x (lay_rot_apply)
 * instead, and x~ is the rounded x' rotated back (lay_rot_unapply), since
 * lay_packed_dequant gives W = W' R^T; one with input scales rounds x' = x * m
 * (lay_xscale_mul), and x~ is the rounded x' / m, since W = W' diag(m). */
static void reference(const lay_packed *p, const float *x, int n, int exact, float *y)
{
    float *w = malloc((size_t)(p->rows * p->cols) * sizeof *w), *xt = malloc((size_t)(n * p->cols) * sizeof *xt);
    float *xr = malloc((size_t)(n * p->cols) * sizeof *xr);
    lay_packed_dequant(p, w);
    memcpy(xr, x, (size_t)(n * p->cols) * sizeof *xr);
    for (int k = 0; k < n; k++) lay_rot_apply(p->opt.rot, p->rot_seed, xr + k * p->cols, p->cols);
    for (int k = 0; p->opt.awq && k < n; k++) lay_xscale_mul(p->xscale, xr + k * p->cols, p->cols);
    if (exact) memcpy(xt, xr, (size_t)(n * p->cols) * sizeof *xt);
    else round_inputs(p, xr, n, xt);
    for (int k = 0; k < n; k++) lay_rot_unapply(p->opt.rot, p->rot_seed, xt + k * p->cols, p->cols);
    for (int k = 0; p->opt.awq && k < n; k++)
        for (int64_t c = 0; c < p->cols; c++) xt[k * p->cols + c] /= lay_f16_to_f32(p->xscale[c]);
    free(xr);
    for (int k = 0; k < n; k++)
        for (int64_t r = 0; r < p->rows; r++) {
            double s = 0;
            for (int64_t c = 0; c < p->cols; c++) s += (double)w[r * p->cols + c] * xt[k * p->cols + c];
            y[k * p->rows + r] = (float)s;
        }
    free(w), free(xt);
}

static double rel_err(const float *y, const float *ref, int64_t len)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < len; i++) {
        num = fmax(num, fabs((double)y[i] - ref[i]));
        den = fmax(den, fabs((double)ref[i]));
    }
    return den > 0 ? num / den : num;
}

/* ==== Option sets ==== */

static lay_option opt(int lo, int hi, float share, int group, lay_scale_fmt fmt)
{
    lay_option o = { .bits_lo = (uint8_t)lo, .bits_hi = (uint8_t)hi, .hi_share = share, .group = group, .scale_fmt = fmt };
    snprintf(o.name, sizeof o.name, "%d/%d %.2f g%d f%d", lo, hi, (double)share, group, (int)fmt);
    return o;
}

/* The same, rotated in blocks of rot columns. */
static lay_option rot_opt(int lo, int hi, float share, int group, lay_scale_fmt fmt, int rot)
{
    lay_option o = opt(lo, hi, share, group, fmt);
    o.rot = (uint16_t)rot;
    snprintf(o.name + strlen(o.name), sizeof o.name - strlen(o.name), " h%d", rot);
    return o;
}

/* The same, with input scales. */
static lay_option awq_opt(int lo, int hi, float share, int group, lay_scale_fmt fmt)
{
    lay_option o = opt(lo, hi, share, group, fmt);
    o.awq = 1;
    strncat(o.name, " awq", sizeof o.name - strlen(o.name) - 1);
    return o;
}

/* A 32-wide ggml type as a packed option. */
static lay_option ggml_opt(int type)
{
    lay_option o;
    assert_int_equal(lay_ggml_option(type, &o), 0);
    return o;
}

static int all_options(lay_option *out)
{
    int n = 0;
    for (int f = 0; f < 2; f++) {
        lay_scale_fmt fmt = f ? LAY_SCALE_F16 : LAY_SCALE_F16_Z8;
        for (int b = LAY_MIN_BITS; b <= LAY_MAX_BITS; b++) out[n++] = opt(b, b, 0, b % 2 ? 64 : 128, fmt);
        out[n++] = opt(2, 3, 0.1f, 32, fmt);
        out[n++] = opt(2, 4, 0.25f, 64, fmt);
        out[n++] = opt(3, 5, 0.3f, 128, fmt);
        out[n++] = opt(4, 6, 0.5f, 64, fmt);
        out[n++] = opt(5, 8, 0.2f, 32, fmt);
        out[n++] = opt(6, 7, 0.75f, 96, fmt);
        out[n++] = opt(2, 8, 1.0f, 128, fmt);  /* every group hi, short last one too */
        out[n++] = opt(2, 2, 0, 512, fmt);     /* groups over 256 columns: the lookup */
        out[n++] = opt(3, 4, 0.5f, 320, fmt);  /* kernels' int16 sums restart */
    }
    static const int ggml[] = {LAY_GGML_Q4_0, LAY_GGML_Q4_1, LAY_GGML_Q5_0, LAY_GGML_Q5_1, LAY_GGML_Q8_0};
    for (int i = 0; i < 5; i++) out[n++] = ggml_opt(ggml[i]);
    out[n++] = rot_opt(4, 4, 0, 64, LAY_SCALE_F16_Z8, 64);
    out[n++] = rot_opt(2, 3, 0.3f, 128, LAY_SCALE_F16_Z8, 64);
    out[n++] = rot_opt(3, 3, 0, 32, LAY_SCALE_F16, 128);
    out[n++] = awq_opt(3, 3, 0, 64, LAY_SCALE_F16_Z8);
    out[n++] = awq_opt(2, 3, 0.3f, 128, LAY_SCALE_F16_Z8);
    out[n++] = awq_opt(4, 4, 0, 32, LAY_SCALE_F16);
    return n;
}

/* ==== Tests ==== */

static const qk_isa isas[] = { QK_ISA_GENERIC, QK_ISA_AVX2, QK_ISA_AVX512 };
static const qk_lut_mode luts[] = { QK_LUT_AUTO, QK_LUT_OFF, QK_LUT_ALL };

/* The activation quantizer: in range, within half a step of x, sums exact; the SIMD
 * quantizers agree with it bit for bit. */
static void test_quant(void **state)
{
    (void)state;
    enum { COLS = 32 * 13, GROUP = 96, NG = (COLS + GROUP - 1) / GROUP };
    float x[COLS], xd[NG], xd2[NG];
    int8_t xq[COLS], xq2[COLS];
    int32_t xs[NG], xs2[NG];
    for (int j = 0; j < COLS; j++) x[j] = rndf() * (j < GROUP ? 0.0f : (float)(1 + j % 7));
    qk_quant_ref(x, COLS, GROUP, xq, xd, xs);
    assert_true(xd[0] == 0.0f && xs[0] == 0);
    for (int g = 0; g < NG; g++) {
        int32_t sum = 0;
        for (int j = g * GROUP; j < COLS && j < (g + 1) * GROUP; j++) {
            assert_true(xq[j] >= -127 && xq[j] <= 127);
            assert_true(fabsf(xd[g] * xq[j] - x[j]) <= 0.5001f * xd[g]);
            sum += xq[j];
        }
        assert_int_equal(sum, xs[g]);
    }
    for (size_t i = 0; i < sizeof isas / sizeof *isas; i++) {
        const qk_kernels *k = qk_get(isas[i]);
        if (!k) continue;
        k->quant(x, COLS, GROUP, xq2, xd2, xs2);
        assert_memory_equal(xq, xq2, sizeof xq);
        assert_memory_equal(xd, xd2, sizeof xd);
        assert_memory_equal(xs, xs2, sizeof xs);
    }
}

/* A rotated layer's two halves, rotate_input then matmul_rotated, make matmul's y
 * bit for bit (the forward pass rotates a shared input once with them); its rot
 * and seed are the tensor's. Other layers have neither half. */
static void check_halves(const rt_linear *l, const float *x, int n, const float *y)
{
    const lay_packed *p = l->packed;
    assert_int_equal(!!l->rotate_input, !!p->opt.rot);
    assert_int_equal(!!l->matmul_rotated, !!p->opt.rot);
    assert_int_equal(l->rot, p->opt.rot);
    assert_int_equal(l->rot_seed, p->opt.rot ? p->rot_seed : 0);
    if (!p->opt.rot) return;
    float *xr = malloc((size_t)(n * l->cols) * sizeof *xr), *y2 = malloc((size_t)(n * l->rows) * sizeof *y2);
    assert_true(xr && y2);
    l->rotate_input(l, x, xr, n);
    l->matmul_rotated(l, xr, y2, n);
    assert_memory_equal(y2, y, (size_t)(n * l->rows) * sizeof *y);
    free(xr), free(y2);
}

static void check_product(rt_linear *l, const float *x, int n, const float *ref, double tol, int lut, const char *opt)
{
    int64_t rows = l->rows;
    float *y = malloc((size_t)(n * rows) * sizeof *y);
    memset(y, 0xff, (size_t)(n * rows) * sizeof *y);
    l->matmul(l, x, y, n);
    double e = rel_err(y, ref, n * rows);
    if (e >= tol)
        print_error("%s lut %d %s %lldx%lld batch %d: rel err %g\n", qk_active()->name, lut, opt, (long long)rows,
                    (long long)l->cols, n, e);
    assert_true(e < tol);
    check_halves(l, x, n, y);
    free(y);
}

/* Every kernel set, option and batch against the reference, on one shape: a layer
 * takes batches through the int8 kernels (in blocks past 64 rows, or in tiles) up
 * to the one rt_linear_packed_exact_batch names, which is every batch for values
 * under 8 bits in rows of 1024 columns or more, or in any row where the set has a
 * tile kernel; one made with RT_PACKED_EXACT takes batches of
 * RT_PACKED_EXACT_BATCH or more exactly. */
static void check_matmul_shape(int64_t rows, int64_t cols)
{
    enum { NMAX = RT_PACKED_EXACT_BATCH + 5 };
    static const int batches[] = { 1, 2, 3, 7, 33, RT_PACKED_EXACT_BATCH - 1, RT_PACKED_EXACT_BATCH, NMAX };
    lay_option opts[48];
    int nopt = all_options(opts);
    float *x = malloc(NMAX * cols * sizeof *x), *ref = malloc(NMAX * rows * sizeof *ref);
    for (int64_t i = 0; i < NMAX * cols; i++) x[i] = rndf() * (1.0f + (float)(i % 5));
    for (size_t i = 0; i < sizeof isas / sizeof *isas * 3; i++) {
        if (qk_force(isas[i / 3])) continue;
        qk_force_lut(luts[i % 3]);
        for (int o = 0; o < nopt; o++) {
            packed_t t;
            char err[256];
            if (lay_option_check(&opts[o], rows, cols, NULL, 0)) continue; /* a rotation block that does not divide */
            make_packed(&t, rows, cols, &opts[o]);
            int exact_at = rt_linear_packed_exact_batch(&opts[o], cols, 0);
            assert_int_equal(rt_linear_packed_exact_batch(&opts[o], cols, RT_PACKED_EXACT), RT_PACKED_EXACT_BATCH);
            int int8 = opts[o].bits_hi < 8 && (cols >= 1024 || qk_active()->tile);
            assert_int_equal(exact_at, int8 ? INT_MAX : RT_PACKED_EXACT_BATCH);
            rt_linear *l = rt_linear_packed(&t.p, NMAX, 0, NULL, err, sizeof err);
            rt_linear *lx = rt_linear_packed(&t.p, NMAX, RT_PACKED_EXACT, NULL, err, sizeof err);
            assert_non_null(l);
            assert_non_null(lx);
            for (size_t b = 0; b < sizeof batches / sizeof *batches; b++) {
                int n = batches[b];
                reference(&t.p, x, n, n >= exact_at, ref);
                check_product(l, x, n, ref, QK_REL_TOL, luts[i % 3], opts[o].name);
                if (n >= exact_at) { /* the same path */
                    check_product(lx, x, n, ref, 1e-5, luts[i % 3], opts[o].name);
                    continue;
                }
                if (n >= RT_PACKED_EXACT_BATCH) reference(&t.p, x, n, 1, ref);
                check_product(lx, x, n, ref, n >= RT_PACKED_EXACT_BATCH ? 1e-5 : QK_REL_TOL, luts[i % 3], opts[o].name);
            }
            linear_free(l);
            linear_free(lx);
            free_packed(&t);
        }
    }
    qk_force(QK_ISA_AUTO);
    qk_force_lut(QK_LUT_AUTO);
    free(x), free(ref);
}

static void test_matmul(void **state)
{
    (void)state;
    check_matmul_shape(37, 32 * 13);  /* no group divides 416 except 32: short groups of one chunk */
    check_matmul_shape(21, 32 * 18);  /* 576 (SmolLM2): groups of 128 end in a short group of two chunks */
    check_matmul_shape(13, 32 * 8);   /* 256: both rotation blocks */
    check_matmul_shape(70, 32 * 21);  /* lookup kernels: two tiles of 32 rows and a padded one */
    check_matmul_shape(19, 32 * 33);  /* rows wide enough for the int8 kernels at every batch */
}

/* Every kernel set's rotation is lay_rot_apply's, bit for bit, and a rotation is
 * undone by lay_rot_unapply (to float rounding). */
static void test_rotate(void **state)
{
    (void)state;
    enum { COLS = 128 * 3 };
    static const int rots[] = {64, 128};
    float x[COLS], ref[COLS], v[COLS], sign[COLS];
    for (int j = 0; j < COLS; j++) x[j] = rndf() * (j % 17 == 0 ? 30.0f : 1.0f); /* a few outliers */
    for (int r = 0; r < 2; r++) {
        uint32_t seed = rnd();
        int rot = rots[r];
        for (int j = 0; j < COLS; j++) sign[j] = (float)lay_rot_sign(seed, j);
        memcpy(ref, x, sizeof x);
        lay_rot_apply(rot, seed, ref, COLS);
        for (size_t i = 0; i < sizeof isas / sizeof *isas; i++) {
            const qk_kernels *k = qk_get(isas[i]);
            if (!k) continue;
            memcpy(v, x, sizeof x);
            k->rotate(rot, sign, (float)(1.0 / sqrt((double)rot)), v, COLS);
            assert_memory_equal(v, ref, sizeof v);
        }
        lay_rot_unapply(rot, seed, v, COLS);
        for (int j = 0; j < COLS; j++) assert_true(fabsf(v[j] - x[j]) <= 1e-5f * 30.0f);
    }
}

/* The int8 activations are close to exact ones: W_deq x against the kernel. */
static void test_activation_rounding_small(void **state)
{
    (void)state;
    const int64_t rows = 40, cols = 512;
    lay_option o = opt(4, 4, 0, 128, LAY_SCALE_F16_Z8);
    packed_t t;
    make_packed(&t, rows, cols, &o);
    float *w = malloc((size_t)(rows * cols) * sizeof *w), x[512], y[40], exact[40];
    for (int j = 0; j < cols; j++) x[j] = rndf();
    lay_packed_dequant(&t.p, w);
    for (int64_t r = 0; r < rows; r++) {
        double s = 0;
        for (int64_t c = 0; c < cols; c++) s += (double)w[r * cols + c] * x[c];
        exact[r] = (float)s;
    }
    rt_linear *l = rt_linear_packed(&t.p, 1, 0, NULL, NULL, 0);
    assert_non_null(l);
    l->matmul(l, x, y, 1);
    double e = rel_err(y, exact, rows);
    assert_true(e < 2e-2);
    assert_true(e > 0);   /* the rounding is really there */
    linear_free(l), free(w), free_packed(&t);
}

/* 1 and 2 threads give the same bits (each row is one thread's work), on every
 * path (lookups, int8 kernels in one block and in two or in tiles, exact), and so
 * do two batches that take one path: a row's numbers do not depend on the rows
 * beside it. */
static void test_threads(void **state)
{
    (void)state;
    const int64_t rows = 301, cols = 32 * 33; /* three slabs of the exact path, the last short; */
    /* rows wide enough for the int8 kernels at every batch (rt_linear_packed_exact_batch) */
    enum { NMAX = RT_PACKED_EXACT_BATCH + 3, TAIL = 20 }; /* TAIL: a batch that takes tiles */
    lay_option o = opt(3, 5, 0.4f, 64, LAY_SCALE_F16_Z8);
    packed_t t;
    make_packed(&t, rows, cols, &o);
    float *x = malloc(NMAX * cols * sizeof *x), *y1 = malloc(NMAX * rows * sizeof *y1);
    float *y2 = malloc(NMAX * rows * sizeof *y2);
    for (int64_t i = 0; i < NMAX * cols; i++) x[i] = rndf();
    int saved = omp_get_max_threads();
    static const int batches[] = { 1, 7, NMAX };
    for (int flags = 0; flags <= RT_PACKED_EXACT; flags += RT_PACKED_EXACT) {
        rt_linear *l = rt_linear_packed(&t.p, NMAX, flags, NULL, NULL, 0);
        assert_non_null(l);
        for (int b = 0; b < 3; b++) {
            int n = batches[b];
            omp_set_num_threads(1);
            l->matmul(l, x, y1, n);
            omp_set_num_threads(2);
            l->matmul(l, x, y2, n);
            assert_memory_equal(y1, y2, (size_t)(n * rows) * sizeof *y1);
        }
        omp_set_num_threads(saved);
        linear_free(l);
    }
    rt_linear *l = rt_linear_packed(&t.p, NMAX, 0, NULL, NULL, 0);
    l->matmul(l, x, y1, 1);   /* batch 1 and batch 7 agree on their shared row: within float */
    l->matmul(l, x, y2, 7);   /* rounding, as the lookup kernels sum in another order */
    assert_true(rel_err(y1, y2, rows) < QK_REL_TOL);
    linear_free(l);
    qk_force_lut(QK_LUT_OFF); /* without them, one code path up to QK_NB rows: bit for bit */
    l = rt_linear_packed(&t.p, NMAX, 0, NULL, NULL, 0);
    assert_non_null(l);
    l->matmul(l, x, y1, 1);
    l->matmul(l, x, y2, QK_NB);
    assert_memory_equal(y1, y2, (size_t)rows * sizeof *y1);
    /* the last rows of a batch past one int8 block, alone, give the same bits (with
     * tiles: passes of another number of rows) */
    l->matmul(l, x, y1, NMAX);
    l->matmul(l, x + (NMAX - TAIL) * cols, y2, TAIL);
    assert_memory_equal(y1 + (NMAX - TAIL) * rows, y2, (size_t)(TAIL * rows) * sizeof *y1);
    qk_force_lut(QK_LUT_AUTO);
    linear_free(l), free(x), free(y1), free(y2), free_packed(&t);
}

/* A layer takes the lookup kernels for all its widths or none (runtime/qlinear.c):
 * for every mix of two widths, in rows narrow and wide (the kernel sets' lut_cols),
 * the loader is told to leave the values in the mapping exactly when both are
 * lookup widths of the active set at that row length, and otherwise batch 1 is the
 * int8 kernels' product bit for bit. */
static void test_lut_all_or_none(void **state)
{
    (void)state;
    static const int64_t cols_of[] = { 32 * 8, 32 * 72 };
    const int64_t rows = 40;
    const qk_kernels *k = qk_active();
    float *x = malloc(32 * 72 * sizeof *x), *y1 = malloc(rows * sizeof *y1), *y2 = malloc(rows * sizeof *y2);
    for (int64_t i = 0; i < 32 * 72; i++) x[i] = rndf();
    for (int c = 0; c < 2; c++)
        for (int lo = LAY_MIN_BITS; lo < LAY_MAX_BITS; lo++)
            for (int hi = lo + 1; hi <= LAY_MAX_BITS; hi++) {
                int64_t cols = cols_of[c];
                lay_option o = opt(lo, hi, 0.5f, 64, LAY_SCALE_F16_Z8);
                int both = k->lut_dot && cols <= k->lut_cols[lo] && cols <= k->lut_cols[hi];
                assert_int_equal(rt_linear_packed_copies_values(&o, cols), both);
                if (both) continue;
                packed_t t;
                make_packed(&t, rows, cols, &o);
                rt_linear *l = rt_linear_packed(&t.p, 1, 0, NULL, NULL, 0);
                assert_non_null(l);
                l->matmul(l, x, y1, 1);
                linear_free(l);
                qk_force_lut(QK_LUT_OFF);
                l = rt_linear_packed(&t.p, 1, 0, NULL, NULL, 0);
                assert_non_null(l);
                l->matmul(l, x, y2, 1);
                qk_force_lut(QK_LUT_AUTO);
                assert_memory_equal(y1, y2, (size_t)rows * sizeof *y1);
                linear_free(l), free_packed(&t);
            }
    free(x), free(y1), free(y2);
}

/* get_row is the dequantized row, exactly, with every kernel set's decoder (the
 * exact path decodes its slabs the same way). */
/* The unpackers: the plain one is lay_unpack_chunk's values, chunk by chunk in
 * stored order (block 1), and block B's kernel position p holds stored offset
 * qk_block_pos(B, p) of its chunks; every kernel set's gives those bytes bit for
 * bit, at every width and at the block orders its kernels use. */
static void test_unpack(void **state)
{
    (void)state;
    enum { NCH = 8 };
    uint8_t src[NCH * LAY_MAX_BITS * 4], ref[NCH * 32], got[NCH * 32], q[NCH * 32];
    for (size_t i = 0; i < sizeof src; i++) src[i] = (uint8_t)rnd();
    for (int b = LAY_MIN_BITS; b <= LAY_MAX_BITS; b++) {
        for (int c = 0; c < NCH; c++) lay_unpack_chunk(b, src + c * b * 4, q + c * 32);
        for (int B = 1; B <= QK_MAX_BLOCK; B *= 2) {
            if (B > 1 && b != 4) continue; /* block orders are 4-bit only */
            qk_unpack_ref(b, B, src, NCH, ref);
            for (int p = 0; p < NCH * 32; p++)
                assert_int_equal(ref[p], q[p / (32 * B) * 32 * B + qk_block_pos(B, p % (32 * B))]);
            for (size_t i = 0; i < sizeof isas / sizeof *isas; i++) {
                const qk_kernels *k = qk_get(isas[i]);
                if (!k) continue;
                memset(got, 0xee, sizeof got);
                k->unpack(b, B, src, NCH, got);
                assert_memory_equal(got, ref, sizeof ref);
            }
        }
    }
}

/* The lookup kernels on their own: every set's tables and copies are the plain
 * ones bit for bit (extreme activations included); the plain dot over the plain
 * copy is the direct sum over the unpacked values, s * xd * (q . xq - z * xs), for
 * every width and groups over 256 columns, and every set's dot is within QK_REL_TOL
 * of it. */
static void test_lut_kernels(void **state)
{
    (void)state;
    enum { COLS = 1024 };
    static const int gcols_of[] = { 32, 96, 512 };
    int8_t xq[COLS];
    for (int j = 0; j < COLS; j++) xq[j] = (int8_t)(j < 8 ? (j % 2 ? 127 : -127) : (int)(rnd() % 255) - 127);
    uint8_t tab[COLS * 8], tab2[COLS * 8];
    qk_lut_tables_ref(xq, COLS, tab);
    for (int c = 0; c < COLS / 4; c++) /* entry 15 is the quad's sum, entry 0 nothing */
        assert_int_equal((int16_t)(tab[32 * c + 15] | tab[32 * c + 31] << 8),
                         xq[4 * c] + xq[4 * c + 1] + xq[4 * c + 2] + xq[4 * c + 3]);
    for (size_t i = 0; i < sizeof isas / sizeof *isas; i++) {
        const qk_kernels *k = qk_get(isas[i]);
        if (!k || !k->lut_tables) continue;
        memset(tab2, 0, sizeof tab2);
        k->lut_tables(xq, COLS, tab2);
        assert_memory_equal(tab, tab2, sizeof tab);
    }
    for (int bits = LAY_MIN_BITS; bits <= LAY_MAX_BITS; bits++)
        for (size_t gi = 0; gi < sizeof gcols_of / sizeof *gcols_of; gi++) {
            int gcols = gcols_of[gi], ng = COLS / gcols, gbytes = gcols * bits / 8;
            int64_t stride = (int64_t)ng * gbytes;
            uint8_t *q = malloc((size_t)QK_LUT_ROWS * COLS), *src = malloc((size_t)(QK_LUT_ROWS * stride));
            uint8_t *w = malloc((size_t)(QK_LUT_ROWS * stride)), z[QK_LUT_ROWS * COLS / 32];
            uint16_t sc[QK_LUT_ROWS * COLS / 32];
            float xd[COLS / 32], acc[QK_LUT_ROWS] = {0}, acc2[QK_LUT_ROWS], want[QK_LUT_ROWS];
            int32_t xs[COLS / 32];
            for (int r = 0; r < QK_LUT_ROWS; r++)
                for (int j = 0; j < COLS; j++) q[r * COLS + j] = (uint8_t)(rnd() % (1u << bits));
            for (int r = 0; r < QK_LUT_ROWS; r++)
                for (int c = 0; c < ng * gcols / LAY_CHUNK; c++) /* chunk c of the row */
                    lay_pack_chunk(bits, q + r * COLS + c * LAY_CHUNK, src + r * stride + c * bits * 4);
            for (int g = 0; g < ng; g++) {
                qk_lut_pack_ref(bits, gcols, src + g * gbytes, stride, w + QK_LUT_ROWS * g * gbytes);
                for (size_t i = 0; i < sizeof isas / sizeof *isas; i++) {
                    const qk_kernels *k = qk_get(isas[i]);
                    uint8_t *w2 = malloc((size_t)(QK_LUT_ROWS * gbytes));
                    if (k && k->lut_pack) {
                        k->lut_pack(bits, gcols, src + g * gbytes, stride, w2);
                        assert_memory_equal(w + QK_LUT_ROWS * g * gbytes, w2, (size_t)(QK_LUT_ROWS * gbytes));
                    }
                    free(w2);
                }
                xd[g] = 0.001f * (float)(1 + rnd() % 100);
                xs[g] = 0;
                for (int j = g * gcols; j < (g + 1) * gcols; j++) xs[g] += xq[j];
                for (int r = 0; r < QK_LUT_ROWS; r++) {
                    sc[g * QK_LUT_ROWS + r] = lay_f32_to_f16(0.01f * (float)(1 + rnd() % 100));
                    z[g * QK_LUT_ROWS + r] = (uint8_t)(rnd() % (1u << bits));
                }
            }
            for (int r = 0; r < QK_LUT_ROWS; r++) {
                double sum = 0.0;
                for (int g = 0; g < ng; g++) {
                    int64_t d = -(int64_t)z[g * QK_LUT_ROWS + r] * xs[g];
                    for (int j = g * gcols; j < (g + 1) * gcols; j++) d += (int64_t)q[r * COLS + j] * xq[j];
                    sum += (double)lay_f16_to_f32(sc[g * QK_LUT_ROWS + r]) * xd[g] * (double)d;
                }
                want[r] = (float)sum;
            }
            qk_lut_dot_ref(bits, w, ng, gcols, tab, sc, z, xd, xs, acc);
            assert_true(rel_err(acc, want, QK_LUT_ROWS) < QK_REL_TOL);
            for (size_t i = 0; i < sizeof isas / sizeof *isas; i++) {
                const qk_kernels *k = qk_get(isas[i]);
                if (!k || !k->lut_dot) continue;
                memset(acc2, 0, sizeof acc2);
                k->lut_dot(bits, w, ng, gcols, tab, sc, z, xd, xs, acc2);
                assert_true(rel_err(acc2, want, QK_LUT_ROWS) < QK_REL_TOL);
            }
            free(q), free(src), free(w);
        }
}

/* One tile's product against the direct sum, sum_g s * d * sum_j (q - z) * xq (+ m *
 * d * xs with mins), in double: from the plain layout and kernel, and from every
 * set's, whose layout is the plain one bit for bit and whose products are the
 * plain kernel's bit for bit, whatever the number of activation rows beside a row;
 * rows past nr are not written. */
/* Values below vmax + 1; with a small bound, row 0 of the tile all vmax against
 * activation rows 0 and 1 all 127 and all -127: the largest sums AVX2 adds in 16
 * bits. */
static void check_tile(int nr, int64_t cols, int64_t group, int shared_zero, int mins, int n, int vmax)
{
    const int64_t ng = (cols + group - 1) / group, meta = QK_TILE_ROWS * ng, zs = shared_zero ? 0 : ng;
    const int64_t stride = cols + 36; /* rows apart by more than their length */
    uint8_t *raw = malloc((size_t)(QK_TILE_ROWS * stride)), *z = malloc((size_t)meta);
    uint16_t *sc = malloc((size_t)meta * 2), *mn = malloc((size_t)meta * 2);
    int8_t *xq = malloc((size_t)(n * cols)), *xsigned = malloc((size_t)(n * cols));
    int32_t *xs = calloc((size_t)(n * ng), 4);
    float *xd = malloc((size_t)(n * ng) * 4), *want = malloc((size_t)(n * nr) * 4), *got = malloc((size_t)(n * nr) * 4);
    float *y = malloc((size_t)(n * QK_TILE_ROWS) * 4), *y2 = malloc((size_t)(n * QK_TILE_ROWS) * 4);
    qk_tile t[2];
    for (int i = 0; i < 2; i++)
        t[i] = (qk_tile){.w = malloc((size_t)(QK_TILE_ROWS * cols)), .bias = malloc((size_t)meta * 4),
                         .ws = malloc((size_t)meta * 4), .wm = mins ? malloc((size_t)meta * 4) : NULL, .ng = ng,
                         .group = group, .cols = cols, .nr = nr, .vmax = vmax};
    for (int64_t i = 0; i < QK_TILE_ROWS * stride; i++)
        raw[i] = (uint8_t)(vmax < 127 && i < cols ? (unsigned)vmax : rnd() % (unsigned)(vmax + 1));
    for (int64_t i = 0; i < meta; i++) {
        z[i] = (uint8_t)(rnd() % (unsigned)(vmax + 1));
        sc[i] = lay_f32_to_f16(0.01f * (float)(1 + rnd() % 100));
        mn[i] = lay_f32_to_f16(-0.5f * rndf());
    }
    for (int64_t i = 0; i < n * cols; i++) {
        xq[i] = (int8_t)(vmax < 127 && i < 2 * cols ? (i < cols ? 127 : -127)
                         : i < 8                    ? (i % 2 ? 127 : -127)
                                                    : (int)(rnd() % 255) - 127);
        xs[i / cols * ng + i % cols / group] += xq[i];
    }
    for (int64_t i = 0; i < n * ng; i++) xd[i] = 0.001f * (float)(1 + rnd() % 100);
    for (int k = 0; k < n; k++)
        for (int r = 0; r < nr; r++) {
            double sum = 0.0;
            for (int64_t g = 0; g < ng; g++) {
                int64_t d = 0;
                for (int64_t j = g * group; j < cols && j < (g + 1) * group; j++)
                    d += (int64_t)(raw[r * stride + j] - z[r * zs + g]) * xq[k * cols + j];
                sum += (double)lay_f16_to_f32(sc[r * ng + g]) * xd[k * ng + g] * (double)d;
                if (mins) sum += (double)lay_f16_to_f32(mn[r * ng + g]) * xd[k * ng + g] * xs[k * ng + g];
            }
            want[k * nr + r] = (float)sum;
        }
    qk_tile_pack_ref(raw, stride, z, zs, sc, mins ? mn : NULL, ng, &t[0]);
    memcpy(xsigned, xq, (size_t)(n * cols));
    qk_tile_unsigned(xq, n * cols);
    const uint8_t *xu = (const uint8_t *)xq;
    for (int i = 0; i < n * QK_TILE_ROWS; i++) y[i] = 12345.0f;
    qk_tile_ref(&t[0], xu, xd, xs, n, y, QK_TILE_ROWS);
    for (int k = 0; k < n; k++) {
        for (int r = 0; r < nr; r++) got[k * nr + r] = y[k * QK_TILE_ROWS + r];
        for (int r = nr; r < QK_TILE_ROWS; r++) assert_true(y[k * QK_TILE_ROWS + r] == 12345.0f);
    }
    assert_true(rel_err(got, want, n * nr) < QK_REL_TOL);
    for (size_t i = 0; i < sizeof isas / sizeof *isas; i++) {
        const qk_kernels *k = qk_get(isas[i]);
        if (!k || !k->tile) continue;
        memset(t[1].w, 0x5a, (size_t)(QK_TILE_ROWS * cols));
        memset(t[1].bias, 0x5a, (size_t)meta * 4);
        k->tile_pack(raw, stride, z, zs, sc, mins ? mn : NULL, ng, &t[1]);
        if (k->tile_unsigned) { /* the reference's layout, byte for byte */
            assert_memory_equal(t[0].w, t[1].w, (size_t)(QK_TILE_ROWS * cols));
            assert_memory_equal(t[0].bias, t[1].bias, (size_t)meta * 4);
        } else { /* a layout of its own: the values and the zeros, rows past nr zero */
            for (int r = 0; r < QK_TILE_ROWS; r++)
                for (int64_t j = 0; j < cols; j++)
                    assert_int_equal((uint8_t)t[1].w[(j / 4 * QK_TILE_ROWS + r) * 4 + j % 4], r < nr ? raw[r * stride + j] : 0);
        }
        assert_memory_equal(t[0].ws, t[1].ws, (size_t)meta * 4);
        if (mins) assert_memory_equal(t[0].wm, t[1].wm, (size_t)meta * 4);
        const uint8_t *xk = k->tile_unsigned ? xu : (const uint8_t *)xsigned;
        for (int i2 = 0; i2 < n * QK_TILE_ROWS; i2++) y2[i2] = 12345.0f;
        k->tile(&t[1], xk, xd, xs, n, y2, QK_TILE_ROWS);
        assert_memory_equal(y, y2, (size_t)(n * QK_TILE_ROWS) * 4);
        for (int r0 = 0; r0 < n; r0++) { /* each activation row alone */
            float one[QK_TILE_ROWS];
            k->tile(&t[1], xk + r0 * cols, xd + r0 * ng, xs + r0 * ng, 1, one, QK_TILE_ROWS);
            assert_memory_equal(one, y + r0 * QK_TILE_ROWS, (size_t)nr * 4);
        }
    }
    for (int i = 0; i < 2; i++) free(t[i].w), free(t[i].bias), free(t[i].ws), free(t[i].wm);
    free(raw), free(z), free(sc), free(mn), free(xq), free(xsigned), free(xs), free(xd), free(want), free(got), free(y), free(y2);
}

static void test_tile_kernels(void **state)
{
    (void)state;
    check_tile(32, 32 * 18, 128, 0, 0, 13, 127); /* 576 columns: a short last group of two chunks */
    check_tile(17, 32 * 13, 96, 0, 0, 7, 127);   /* a short tile, groups of three chunks, the last one */
    check_tile(5, 32 * 8, 32, 1, 1, 6, 127);     /* a few rows, one row of zeros for all, mins */
    check_tile(32, 32 * 18, 64, 0, 1, 8, 127);   /* mins in a full tile */
    check_tile(16, 32 * 4, 512, 0, 0, 1, 127);   /* one group shorter than its length */
    for (int b = 2; b <= 6; b++) /* narrower values: AVX2's 16-bit runs, a group several runs long */
        check_tile(32 - b, 32 * 64, 1024, 0, b % 2, 9, (1 << b) - 1);
}

static void test_get_row(void **state)
{
    (void)state;
    const int64_t rows = 19;
    for (size_t i = 0; i < sizeof isas / sizeof *isas; i++) {
        if (qk_force(isas[i])) continue;
        static const int ggml[] = {LAY_GGML_Q4_0, LAY_GGML_Q4_1, LAY_GGML_Q5_0, LAY_GGML_Q5_1, LAY_GGML_Q8_0};
        for (int f = 0; f < 4 + 5 + 2; f++) {
            const int64_t cols = f == 9 ? 32 * 12 : 32 * 11; /* the rotated one: whole blocks of 64 */
            lay_option o = f == 10 ? awq_opt(3, 3, 0, 64, LAY_SCALE_F16_Z8)
                         : f == 9  ? rot_opt(3, 3, 0, 64, LAY_SCALE_F16_Z8, 64)
                         : f >= 4 ? ggml_opt(ggml[f - 4])
                                  : opt(f < 2 ? 2 : 4, f < 2 ? 7 : 8, 0.3f, 64, f % 2 ? LAY_SCALE_F16 : LAY_SCALE_F16_Z8);
            packed_t t;
            make_packed(&t, rows, cols, &o);
            float *w = malloc((size_t)(rows * cols) * sizeof *w), row[32 * 12];
            lay_packed_dequant(&t.p, w);
            rt_linear *l = rt_linear_packed(&t.p, 1, 0, NULL, NULL, 0);
            assert_non_null(l);
            for (int64_t r = 0; r < rows; r++) {
                l->get_row(l, r, row);
                assert_memory_equal(row, w + r * cols, (size_t)cols * sizeof *row);
            }
            linear_free(l), free(w), free_packed(&t);
        }
    }
    qk_force(QK_ISA_AUTO);
}

/* AUTO picks the widest instruction set the CPU has; forcing works and reverts. */
static void test_dispatch(void **state)
{
    (void)state;
    qk_force(QK_ISA_AUTO);
    __builtin_cpu_init();
    int has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
                 __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx2");
    int has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const char *want = has512 ? "avx512" : has2 ? "avx2" : "generic";
    assert_string_equal(qk_get(QK_ISA_AUTO)->name, want);
    assert_string_equal(qk_active()->name, want);
    assert_int_equal(qk_force(QK_ISA_GENERIC), 0);
    assert_string_equal(qk_active()->name, "generic");
    assert_int_equal(qk_force(QK_ISA_AUTO), 0);
    assert_string_equal(qk_active()->name, want);
    assert_true((qk_get(QK_ISA_AVX512) != NULL) == has512);
    for (size_t i = 0; i < sizeof isas / sizeof *isas; i++) {
        const qk_kernels *k = qk_get(isas[i]);
        for (int b = LAY_MIN_BITS; k && b <= LAY_MAX_BITS; b++) assert_non_null(k->dot[b]);
    }
}

/* Bad input is refused with the value in the message. */
static void test_errors(void **state)
{
    (void)state;
    lay_option o = opt(4, 4, 0, 64, LAY_SCALE_F16_Z8);
    packed_t t;
    char err[256] = "";
    make_packed(&t, 5, 128, &o);
    lay_packed bad = t.p;
    bad.opt.bits_lo = 9, bad.opt.bits_hi = 9;
    assert_null(rt_linear_packed(&bad, 1, 0, NULL, err, sizeof err));
    assert_non_null(strstr(err, "bits_lo 9"));
    bad = t.p;
    bad.cols = 100;
    assert_null(rt_linear_packed(&bad, 1, 0, NULL, err, sizeof err));
    assert_non_null(strstr(err, "cols 100"));
    assert_null(rt_linear_packed(&t.p, 0, 0, NULL, err, sizeof err));
    assert_non_null(strstr(err, "max_batch 0"));
    bad = t.p;
    bad.zeros = NULL;
    assert_null(rt_linear_packed(&bad, 1, 0, NULL, err, sizeof err));
    assert_non_null(strstr(err, "zeros"));
    ((uint16_t *)t.perm)[3] = 500;
    assert_null(rt_linear_packed(&t.p, 1, 0, NULL, err, sizeof err));
    assert_non_null(strstr(err, "perm[3] = 500"));
    bad = t.p;
    bad.perm = NULL;
    assert_null(rt_linear_packed(&bad, 1, 0, NULL, err, sizeof err));
    assert_non_null(strstr(err, "no permutation"));
    free_packed(&t);
    lay_option q41 = ggml_opt(LAY_GGML_Q4_1);
    make_packed(&t, 5, 256, &q41);
    bad = t.p;
    bad.mins = NULL;
    assert_null(rt_linear_packed(&bad, 1, 0, NULL, err, sizeof err));
    assert_non_null(strstr(err, "no mins"));
    bad = t.p;
    bad.opt.group = 256, bad.opt.scale_fmt = (lay_scale_fmt)(LAY_FMT_GGML + LAY_GGML_Q4_K); /* 4-bit, as Q4_1 */
    assert_null(rt_linear_packed(&bad, 1, 0, NULL, err, sizeof err));
    assert_non_null(strstr(err, "not in the packed layout"));
    free_packed(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quant),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_rotate),
        cmocka_unit_test(test_activation_rounding_small),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_unpack),
        cmocka_unit_test(test_lut_kernels),
        cmocka_unit_test(test_lut_all_or_none),
        cmocka_unit_test(test_tile_kernels),
        cmocka_unit_test(test_get_row),
        cmocka_unit_test(test_dispatch),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
