/*
 * tests/test_cuda.c — the CUDA runtime (runtime/cuda/) against the CPU reference.
 *
 * On every machine (host emulation of the kernels' own code, runtime/cuda/decode.cuh):
 *   - decode_quad gives back lay_pack_chunk's values for every width;
 *   - the byte permute's emulation follows PTX prmt's selector semantics;
 *   - the matrix-vector kernel's unit of work (tiles, repacked words, interleaved
 *     activations, scales, zeros, mins), run lane by lane on the host for R = 1, 2,
 *     4 rows and 1..4 activation rows, equals x W^T of lay_packed_dequant for every
 *     width, mixes, symmetric formats, short last groups and tiles, and the 32-wide
 *     ggml types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: no permutation, their centers as
 *     zeros, Q4_1's and Q5_1's mins);
 *   - the dequantization kernel's unit of work equals lay_packed_dequant exactly;
 *   - without a GPU, rt_cuda_device_info fails with a message that says so.
 * On a machine with a GPU, and in the build whose CUDA runtime is the CPU emulation
 * of tests/cuda_emu/ (build-san in `make test`); elsewhere each test skips, saying why:
 *   - rt_cuda_matvec_packed on every option, batch 1..4, 5, 16 and a prompt batch
 *     on both paths against x W^T in double (1e-4 for the fp32 matrix-vector path,
 *     1e-3 for the fp16 cuBLAS path), and the same for options that rotate their
 *     inputs in blocks of 64 and 128 (W from lay_packed_dequant, rotated back) and
 *     for options with input scales (W from lay_packed_dequant, times m);
 *   - the device's input rotation equals lay_rot_apply bit for bit, its input
 *     scaling lay_xscale_mul;
 *   - a tiny packed model's logits (prompt batch, then token by token) against the
 *     CPU forward pass of the same model with dequantized dense weights, in
 *     bitplan's formats, in the ggml types, and in bitplan's formats rotated and
 *     with input scales;
 *   - rt_eval and rt_generate (greedy) with the GPU runner against the CPU's;
 *   - errors: a layer without weights, a batch too large, a token out of range, a
 *     Q4_1 tensor without mins, a tensor with input scales without its multipliers.
 *
 * What it must never do: assert on time, or pass without comparing.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "layout/layout.h"
#include "runtime/cuda/decode.cuh"
#include "runtime/cuda/rt_cuda.h"
#include "runtime/runtime.h"

/* ==== Random data and packed tensors ==== */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}
static float rndf(void) { return (float)rnd() / 4294967296.0f * 2.0f - 1.0f; } /* [-1, 1) */

typedef struct {
    lay_packed p;
    uint8_t *values, *zeros;
    uint16_t *scales, *mins, *xscale;
    void *perm;
    float *deq;            /* [rows][cols], original column order */
} ptensor;

/* bitplan's formats: random codes, scales of about mag / 2^(b-1), zeros in range, a
 * random permutation. */
static void pt_random(lay_qtensor *q, float mag)
{
    const lay_option *o = &q->opt;
    int64_t rows = q->rows, cols = q->cols, ng = lay_n_groups(o, cols);
    for (int64_t j = 0; j < cols; j++) q->perm[j] = (int32_t)j;
    for (int64_t j = cols - 1; j > 0; j--) {
        int64_t i = rnd() % (uint32_t)(j + 1);
        int32_t v = q->perm[i]; q->perm[i] = q->perm[j]; q->perm[j] = v;
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < ng; g++) {
            int bits = lay_group_bits(o, cols, g);
            float s = mag / (float)(1 << (bits - 1)) * (0.5f + 0.5f * (rndf() + 1.0f));
            q->scale[r * ng + g] = lay_f32_to_f16(s);
            q->zero[r * ng + g] = o->scale_fmt == LAY_SCALE_F16 ? (uint8_t)(1 << (bits - 1)) : (uint8_t)(rnd() % (1u << bits));
            for (int64_t j = lay_group_start(o, g); j < lay_group_start(o, g) + lay_group_cols(o, cols, g); j++)
                q->q[r * cols + j] = (uint8_t)(rnd() % (1u << bits));
        }
}

/* The 32-wide ggml types: blocks rounded to nearest from random weights of about
 * mag, every 7th block all in [mag, 3 mag) (a min far from 0). */
static void ggml_fill(lay_qtensor *q, float mag)
{
    int type = lay_option_ggml(&q->opt);
    int64_t bytes = lay_ggml_row_bytes(type, q->cols);
    float *x = malloc((size_t)q->cols * sizeof *x);
    assert_non_null(x);
    for (int64_t r = 0; r < q->rows; r++) {
        for (int64_t j = 0; j < q->cols; j++)
            x[j] = (j / LAY_CHUNK) % 7 == 3 ? mag * (2.0f + rndf()) : mag * rndf();
        lay_ggml_quantize_row(type, x, NULL, q->blocks + r * bytes, q->cols);
    }
    free(x);
}

static uint32_t fixed_rot_seed; /* nonzero: the seed of every rotated tensor pt_make makes */

/* A random packed tensor whose weights are about `mag` in size; one whose option
 * rotates gets a random seed, or fixed_rot_seed (its codes are then W R's, and deq
 * W's), one with input scales random multipliers m in [0.25, 4) (its codes are
 * W / m's, and deq W's, so deq's columns are up to 4 times `mag`). */
static void pt_make(ptensor *t, int64_t rows, int64_t cols, const lay_option *o, float mag)
{
    lay_qtensor q;
    assert_int_equal(lay_option_check(o, rows, cols, NULL, 0), 0);
    assert_int_equal(lay_qtensor_alloc(&q, rows, cols, o), 0);
    if (lay_option_ggml(o) >= 0) ggml_fill(&q, mag);
    else pt_random(&q, mag);
    for (int64_t j = 0; o->awq && j < cols; j++) q.xscale[j] = lay_f32_to_f16(0.25f * powf(16.0f, (rndf() + 1.0f) / 2));
    lay_cost c = lay_tensor_cost(o, rows, cols);
    t->values = malloc((size_t)c.values);
    t->scales = malloc((size_t)c.scales);
    t->zeros = c.zeros ? malloc((size_t)c.zeros) : NULL;
    t->mins = c.mins ? malloc((size_t)c.mins) : NULL;
    t->perm = c.perm ? malloc((size_t)c.perm) : NULL; /* none for ggml types: original column order */
    t->xscale = c.xscale ? malloc((size_t)c.xscale) : NULL;
    t->deq = malloc((size_t)(rows * cols) * sizeof *t->deq);
    assert_true(t->values && t->scales && (t->zeros || !c.zeros) && (t->mins || !c.mins) && (t->perm || !c.perm) &&
                (t->xscale || !c.xscale) && t->deq);
    lay_pack_tensor(&q, t->values, t->scales, t->zeros, t->mins, t->perm, t->xscale);
    t->p = (lay_packed){ .rows = rows, .cols = cols, .opt = *o, .values = t->values, .scales = t->scales,
                         .zeros = t->zeros, .mins = t->mins, .perm = t->perm,
                         .rot_seed = !o->rot ? 0 : fixed_rot_seed ? fixed_rot_seed : rnd(), .xscale = t->xscale };
    lay_packed_dequant(&t->p, t->deq);
    lay_qtensor_free(&q);
}

static void pt_free(ptensor *t)
{
    free(t->values), free(t->scales), free(t->zeros), free(t->mins), free(t->perm), free(t->xscale), free(t->deq);
}

static lay_option opt(int lo, int hi, float share, int group, lay_scale_fmt fmt)
{
    lay_option o = { .bits_lo = (uint8_t)lo, .bits_hi = (uint8_t)hi, .hi_share = share, .group = group, .scale_fmt = fmt };
    snprintf(o.name, sizeof o.name, "%d/%d %.2f g%d %s", lo, hi, (double)share, group, fmt ? "sym" : "asym");
    return o;
}

/* The same, rotating its inputs in blocks of rot columns. */
static lay_option rot_opt(int lo, int hi, float share, int group, lay_scale_fmt fmt, int rot)
{
    lay_option o = opt(lo, hi, share, group, fmt);
    o.rot = (uint16_t)rot;
    snprintf(o.name + strlen(o.name), sizeof o.name - strlen(o.name), " h%d", rot);
    return o;
}

/* The same, with input scales (activation-aware: layout.h). */
static lay_option awq_opt(int lo, int hi, float share, int group, lay_scale_fmt fmt)
{
    lay_option o = opt(lo, hi, share, group, fmt);
    o.awq = 1;
    snprintf(o.name + strlen(o.name), sizeof o.name - strlen(o.name), " awq");
    return o;
}

/* A 32-wide ggml type as a packed option (layout.h). */
static lay_option ggml_opt(int type)
{
    lay_option o;
    assert_true(lay_ggml_option(type, &o) == 0 && lay_ggml_packable(type));
    return o;
}

#define MAX_OPTIONS 24

/* Every width plain, mixes, both scale formats, group sizes 32..128, and the 32-wide
 * ggml types. */
static int all_options(lay_option *out)
{
    static const int ggml[] = { LAY_GGML_Q4_0, LAY_GGML_Q4_1, LAY_GGML_Q5_0, LAY_GGML_Q5_1, LAY_GGML_Q8_0 };
    int n = 0;
    for (int b = 2; b <= 8; b++) out[n++] = opt(b, b, 0, b % 2 ? 32 : 128, LAY_SCALE_F16_Z8);
    out[n++] = opt(2, 3, 0.3f, 64, LAY_SCALE_F16_Z8);
    out[n++] = opt(3, 5, 0.5f, 32, LAY_SCALE_F16);
    out[n++] = opt(4, 8, 0.25f, 128, LAY_SCALE_F16_Z8);
    out[n++] = opt(5, 6, 0.9f, 64, LAY_SCALE_F16);
    out[n++] = opt(6, 7, 1.0f, 96, LAY_SCALE_F16_Z8);  /* all hi, short last group */
    out[n++] = opt(4, 4, 0, 64, LAY_SCALE_F16);
    for (int k = 0; k < 5; k++) out[n++] = ggml_opt(ggml[k]);
    assert_true(n <= MAX_OPTIONS);
    return n;
}

/* y[n][rows] = x[n][cols] W^T in double. */
static void reference(const ptensor *t, const float *x, int n, double *y)
{
    int64_t rows = t->p.rows, cols = t->p.cols;
    for (int b = 0; b < n; b++)
        for (int64_t r = 0; r < rows; r++) {
            double s = 0;
            for (int64_t j = 0; j < cols; j++) s += (double)x[b * cols + j] * t->deq[r * cols + j];
            y[b * rows + r] = s;
        }
}

/* ||y - ref|| / ||ref||; NaN (an unwritten output) gives infinity. */
static double rel_err(const float *y, const double *ref, int64_t len)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < len; i++) {
        if (!isfinite(y[i])) return INFINITY;
        num += (y[i] - ref[i]) * (y[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static float *rand_vec(int64_t n)
{
    float *x = malloc((size_t)n * sizeof *x);
    assert_non_null(x);
    for (int64_t i = 0; i < n; i++) x[i] = rndf();
    return x;
}

/* ==== Host emulation of the kernels' unit of work ==== */

static void test_decode_quad(void **state)
{
    (void)state;
    for (int bits = 2; bits <= 8; bits++)
        for (int rep = 0; rep < 200; rep++) {
            uint8_t q[32], bytes[32];
            uint32_t wd[8] = {0};
            for (int i = 0; i < 32; i++) q[i] = (uint8_t)(rnd() % (1u << bits));
            lay_pack_chunk(bits, q, bytes);
            memcpy(wd, bytes, (size_t)bits * 4);
            for (int t = 0; t < 8; t++) {
                uint32_t quad = rtc_decode_quad(wd, bits, t);
                for (int i = 0; i < 4; i++) {
                    assert_int_equal((quad >> (8 * i)) & 0xFF, q[4 * t + i]);
                    assert_true(rtc_quad_magic(quad, i) - RTC_MAGIC_F == (float)q[4 * t + i]);
                }
            }
        }
}

static void test_prmt(void **state)
{
    (void)state;
    /* byte n of the result = byte sel_n of {y, x}; 0..3 are x's bytes, 4..7 y's */
    assert_int_equal(rtc_prmt(0x33221100u, 0x77665544u, 0x7540u), 0x77554400u);
    assert_int_equal(rtc_prmt(0x33221100u, 0x77665544u, 0x3210u), 0x33221100u);
    assert_int_equal(rtc_prmt(0x33221100u, 0x77665544u, 0x0123u), 0x00112233u);
    assert_int_equal(rtc_prmt(0xDDCCBBAAu, RTC_MAGIC, 0x7542u), 0x4B0000CCu);
}

/* The device's arrays of one tensor, built on the host as the upload builds them. */
typedef struct {
    rtc_geom g;
    uint32_t *words;   /* [rows][row_words], repacked */
    int32_t *xmap;     /* [cols] */
} emu_tensor;

static void emu_open(emu_tensor *e, const lay_packed *p)
{
    rtc_geom_init(&e->g, p);
    int64_t rw = e->g.row_words;
    assert_int_equal(rw * 4, lay_row_bytes(&p->opt, p->cols));
    e->words = malloc((size_t)(p->rows * rw) * 4);
    e->xmap = malloc((size_t)p->cols * 4);
    uint32_t *src = malloc((size_t)rw * 4);
    assert_true(e->words && e->xmap && src);
    for (int64_t r = 0; r < p->rows; r++) {
        memcpy(src, p->values + r * rw * 4, (size_t)rw * 4);
        rtc_repack_row(&e->g, src, e->words + r * rw);
    }
    free(src);
    rtc_build_xmap(&e->g, p, e->xmap);
}

static void emu_close(emu_tensor *e) { free(e->words), free(e->xmap); }

/* k_matvec for one block of R rows, lane by lane, as mv_tile does it. */
static void emu_block(const emu_tensor *e, const lay_packed *p, int R, int NB, int32_t row0, const float *xi,
                      float *y)
{
    const rtc_geom *g = &e->g;
    float part[16] = {0};
    int32_t rowv[4];
    for (int r = 0; r < R; r++) rowv[r] = row0 + r < g->rows ? row0 + r : g->rows - 1;
    for (int32_t t = 0; t < g->n_tiles; t++) {
        rtc_tile x = rtc_tile_at(g, t);
        for (int lane = 0; lane < x.k; lane++) {
            uint32_t wd[4 * 8];
            float m[4], s[4], mn[4] = {0}, acc[16] = {0}, xsum[4] = {0};
            int32_t c = x.c0 + lane;
            for (int r = 0; r < R; r++) {
                const uint32_t *row = e->words + (int64_t)rowv[r] * g->row_words;
                for (int w = 0; w < x.bits; w++) wd[r * 8 + w] = row[rtc_word_index(&x, lane, w)];
                m[r] = RTC_MAGIC_F + (float)rtc_zero_of(g, p->zeros, rowv[r], c, x.bits, g->has_mins);
                s[r] = lay_f16_to_f32(p->scales[rtc_scale_index(g, rowv[r], c)]);
                if (g->has_mins) mn[r] = lay_f16_to_f32(p->mins[rtc_scale_index(g, rowv[r], c)]);
            }
            rtc_chunk_dot(wd, R, NB, x.bits, m, xi + rtc_xi_index(&x, lane, 0, 0), x.k * 4, g->cols, acc,
                          g->has_mins ? xsum : NULL);
            for (int i = 0; i < R * NB; i++)
                part[i] += g->has_mins ? s[i / NB] * acc[i] + mn[i / NB] * xsum[i % NB] : s[i / NB] * acc[i];
        }
    }
    for (int i = 0; i < R * NB; i++)
        if (row0 + i / NB < g->rows) y[(int64_t)(i % NB) * g->rows + row0 + i / NB] = part[i];
}

static void test_emulated_matvec(void **state)
{
    (void)state;
    lay_option opts[MAX_OPTIONS];
    int n_opts = all_options(opts);
    const int64_t shapes[][2] = { { 7, 32 }, { 9, 96 }, { 6, 1088 }, { 5, 2048 + 96 } }; /* partial tiles */
    for (int s = 0; s < 4; s++)
        for (int k = 0; k < n_opts; k++) {
            int64_t rows = shapes[s][0], cols = shapes[s][1];
            ptensor t;
            emu_tensor e;
            pt_make(&t, rows, cols, &opts[k], 0.1f);
            emu_open(&e, &t.p);
            for (int NB = 1; NB <= 4; NB++) {
                float *x = rand_vec(NB * cols), *xi = malloc((size_t)(NB * cols) * 4), *y = malloc((size_t)(NB * rows) * 4);
                double *ref = malloc((size_t)(NB * rows) * sizeof *ref);
                assert_true(xi && y && ref);
                for (int b = 0; b < NB; b++)
                    for (int64_t j = 0; j < cols; j++) xi[b * cols + j] = x[b * cols + e.xmap[j]];
                reference(&t, x, NB, ref);
                for (int R = 1; R <= 4; R *= 2) {
                    for (int64_t i = 0; i < NB * rows; i++) y[i] = NAN;
                    for (int32_t r0 = 0; r0 < rows; r0 += R) emu_block(&e, &t.p, R, NB, r0, xi, y);
                    double err = rel_err(y, ref, NB * rows);
                    if (err > 1e-5) fail_msg("%s %lldx%lld NB %d R %d: relative error %g", opts[k].name,
                                             (long long)rows, (long long)cols, NB, R, err);
                }
                free(x), free(xi), free(y), free(ref);
            }
            emu_close(&e);
            pt_free(&t);
        }
}

/* k_dequant's dq_chunk: every weight, in stored order, equals lay_packed_dequant. */
static void test_emulated_dequant(void **state)
{
    (void)state;
    lay_option opts[MAX_OPTIONS];
    int n_opts = all_options(opts);
    for (int k = 0; k < n_opts; k++) {
        int64_t rows = 5, cols = 1088;
        ptensor t;
        emu_tensor e;
        pt_make(&t, rows, cols, &opts[k], 0.1f);
        emu_open(&e, &t.p);
        for (int32_t row = 0; row < rows; row++)
            for (int32_t ti = 0; ti < e.g.n_tiles; ti++) {
                rtc_tile x = rtc_tile_at(&e.g, ti);
                for (int lane = 0; lane < x.k; lane++) {
                    uint32_t wd[8];
                    int32_t c = x.c0 + lane;
                    for (int w = 0; w < x.bits; w++) wd[w] = e.words[(int64_t)row * e.g.row_words + rtc_word_index(&x, lane, w)];
                    float m = RTC_MAGIC_F + (float)rtc_zero_of(&e.g, t.p.zeros, row, c, x.bits, e.g.has_mins);
                    float s = lay_f16_to_f32(t.p.scales[rtc_scale_index(&e.g, row, c)]);
                    float mn = e.g.has_mins ? lay_f16_to_f32(t.p.mins[rtc_scale_index(&e.g, row, c)]) : 0.0f;
                    for (int v = 0; v < 32; v++) {
                        float w = rtc_weight(rtc_quad_magic(rtc_decode_quad(wd, x.bits, v / 4), v % 4), m, s,
                                             e.g.has_mins, mn);
                        int64_t col = lay_perm_at(&t.p, (int64_t)c * 32 + v);
                        if (w != t.deq[row * cols + col])
                            fail_msg("%s row %d chunk %d value %d: %g != %g", opts[k].name, row, c, v, (double)w,
                                     (double)t.deq[row * cols + col]);
                    }
                }
            }
        emu_close(&e);
        pt_free(&t);
    }
}

/* ==== The GPU ==== */

static int gpu_ok;
static char gpu_why[256];

#define NEED_GPU()                                                          \
    do {                                                                    \
        if (!gpu_ok) {                                                      \
            print_message("# skipped: %s\n", gpu_why);                      \
            skip();                                                         \
        }                                                                   \
    } while (0)

static void test_device_info(void **state)
{
    (void)state;
    char info[256], err[256] = "";
    int rc = rt_cuda_device_info(info, sizeof info, err, sizeof err);
    if (gpu_ok) {
        assert_int_equal(rc, 0);
        assert_true(strlen(info) > 0);
        print_message("# %s\n", info);
    } else { /* the message must say why --device cuda cannot run */
        assert_int_equal(rc, -1);
        assert_true(strstr(err, "no CUDA GPU") || strstr(err, "built without CUDA") || strstr(err, "CUDA"));
    }
}

static void check_matvec(const ptensor *t, int n, rt_cuda_path path, double tol)
{
    int64_t rows = t->p.rows, cols = t->p.cols;
    float *x = rand_vec(n * cols), *y = malloc((size_t)(n * rows) * 4);
    double *ref = malloc((size_t)(n * rows) * sizeof *ref);
    char err[256];
    assert_true(y && ref);
    reference(t, x, n, ref);
    if (rt_cuda_matvec_packed(&t->p, x, n, y, path, err, sizeof err)) fail_msg("%s", err);
    double e = rel_err(y, ref, n * rows);
    if (!(e < tol)) fail_msg("%s %lldx%lld n %d path %d: relative error %g (tolerance %g)", t->p.opt.name,
                             (long long)rows, (long long)cols, n, (int)path, e, tol);
    free(x), free(y), free(ref);
}

/* Batches 1..5 and 16 on the matrix-vector kernels, a prompt on the fp16 cuBLAS path
 * and forced onto the kernels, a small batch forced onto cuBLAS. */
static void check_paths(const ptensor *t)
{
    for (int n = 1; n <= 5; n++) check_matvec(t, n, RT_CUDA_PATH_AUTO, 1e-4);
    check_matvec(t, 16, RT_CUDA_PATH_AUTO, 1e-4);
    check_matvec(t, 37, RT_CUDA_PATH_AUTO, 1e-3);   /* prompt: fp16 cuBLAS */
    check_matvec(t, 37, RT_CUDA_PATH_MATVEC, 1e-4);
    check_matvec(t, 3, RT_CUDA_PATH_GEMM, 1e-3);
}

static void test_gpu_matvec(void **state)
{
    (void)state;
    NEED_GPU();
    lay_option opts[MAX_OPTIONS];
    int n_opts = all_options(opts);
    const int64_t shapes[][2] = { { 300, 1088 }, { 1000, 4096 + 96 } };
    for (int s = 0; s < 2; s++)
        for (int k = 0; k < n_opts; k++) {
            ptensor t;
            pt_make(&t, shapes[s][0], shapes[s][1], &opts[k], 0.05f);
            check_paths(&t);
            pt_free(&t);
        }
}

/* check_paths for every option of opts[n] on both shapes. */
static void check_options_on_shapes(const lay_option *opts, int n, const int64_t shapes[2][2])
{
    for (int s = 0; s < 2; s++)
        for (int k = 0; k < n; k++) {
            ptensor t;
            pt_make(&t, shapes[s][0], shapes[s][1], &opts[k], 0.05f);
            check_paths(&t);
            pt_free(&t);
        }
}

/* Rotated options (blocks of 64 and 128, plain, mixed, symmetric) on shapes whose
 * columns hold whole blocks of both; the same paths and tolerances. */
static void test_gpu_matvec_rot(void **state)
{
    (void)state;
    NEED_GPU();
    const lay_option opts[] = { rot_opt(4, 4, 0, 64, LAY_SCALE_F16_Z8, 64), rot_opt(4, 4, 0, 64, LAY_SCALE_F16_Z8, 128),
                                rot_opt(2, 3, 0.3f, 128, LAY_SCALE_F16_Z8, 64), rot_opt(3, 3, 0, 32, LAY_SCALE_F16, 128) };
    const int64_t shapes[][2] = { { 300, 256 }, { 70, 384 } };
    check_options_on_shapes(opts, 4, shapes);
}

/* The device's rotation is lay_rot_apply's, bit for bit, on values of many
 * magnitudes (so that the butterflies round); bad arguments fail with a message. */
static void test_gpu_rotate(void **state)
{
    (void)state;
    NEED_GPU();
    enum { N = 3, COLS = 384 };
    static const int rots[] = {64, 128};
    float *x = malloc(N * COLS * sizeof *x), *ref = malloc(N * COLS * sizeof *ref), *y = malloc(N * COLS * sizeof *y);
    char err[256];
    assert_true(x && ref && y);
    for (int i = 0; i < N * COLS; i++) x[i] = ldexpf(rndf(), (int)(rnd() % 24) - 12);
    for (int r = 0; r < 2; r++) {
        uint32_t seed = rnd();
        memcpy(ref, x, N * COLS * sizeof *ref);
        for (int k = 0; k < N; k++) lay_rot_apply(rots[r], seed, ref + k * COLS, COLS);
        if (rt_cuda_rotate(rots[r], seed, x, N, COLS, y, err, sizeof err)) fail_msg("%s", err);
        for (int i = 0; i < N * COLS; i++)
            if (memcmp(&y[i], &ref[i], sizeof y[i]))
                fail_msg("rot %d: value %d is %a, lay_rot_apply's %a", rots[r], i, (double)y[i], (double)ref[i]);
    }
    assert_int_equal(rt_cuda_rotate(32, 1, x, N, COLS, y, err, sizeof err), -1);
    assert_non_null(strstr(err, "blocks of 32"));
    assert_int_equal(rt_cuda_rotate(128, 1, x, 1, 320, y, err, sizeof err), -1);
    free(x), free(y), free(ref);
}

/* Options with input scales (plain, mixed, symmetric, 8-bit) on shapes with a short
 * last group and more than one tile; the same paths and tolerances. */
static void test_gpu_matvec_awq(void **state)
{
    (void)state;
    NEED_GPU();
    const lay_option opts[] = { awq_opt(4, 4, 0, 64, LAY_SCALE_F16_Z8), awq_opt(2, 3, 0.3f, 128, LAY_SCALE_F16_Z8),
                                awq_opt(3, 3, 0, 32, LAY_SCALE_F16), awq_opt(8, 8, 0, 128, LAY_SCALE_F16_Z8) };
    const int64_t shapes[][2] = { { 300, 352 }, { 70, 1088 } };
    check_options_on_shapes(opts, 4, shapes);
}

/* The device's input scaling is lay_xscale_mul's, bit for bit, on values of many
 * magnitudes times every kind of finite positive fp16 multiplier (normal and
 * subnormal, so that the products round), over columns that leave a partial last
 * block of threads; bad arguments fail with a message. */
static void test_gpu_xscale(void **state)
{
    (void)state;
    NEED_GPU();
    enum { N = 3, COLS = 389 };
    float *x = malloc(N * COLS * sizeof *x), *ref = malloc(N * COLS * sizeof *ref), *y = malloc(N * COLS * sizeof *y);
    uint16_t m[COLS];
    char err[256];
    assert_true(x && ref && y);
    for (int i = 0; i < N * COLS; i++) x[i] = ldexpf(rndf(), (int)(rnd() % 24) - 12);
    for (int j = 0; j < COLS; j++) m[j] = (uint16_t)(1 + rnd() % 0x7BFF); /* (0, 65504]: no 0, inf or NaN */
    memcpy(ref, x, N * COLS * sizeof *ref);
    for (int k = 0; k < N; k++) lay_xscale_mul(m, ref + k * COLS, COLS);
    if (rt_cuda_xscale(m, x, N, COLS, y, err, sizeof err)) fail_msg("%s", err);
    for (int i = 0; i < N * COLS; i++)
        if (memcmp(&y[i], &ref[i], sizeof y[i]))
            fail_msg("value %d is %a, lay_xscale_mul's %a", i, (double)y[i], (double)ref[i]);
    assert_int_equal(rt_cuda_xscale(m, x, 0, COLS, y, err, sizeof err), -1);
    assert_non_null(strstr(err, "0 rows"));
    assert_int_equal(rt_cuda_xscale(NULL, x, N, COLS, y, err, sizeof err), -1);
    assert_non_null(strstr(err, "without multipliers"));
    free(x), free(y), free(ref);
}

/* ==== A tiny model: packed on the GPU, the same weights dense on the CPU ==== */

enum { TM_LAYERS = 2, TM_DIM = 64, TM_HIDDEN = 160, TM_HEADS = 4, TM_KV = 2, TM_HD = 16, TM_VOCAB = 96 };

typedef struct {
    ptensor pt[TM_LAYERS][LAY_HEAD], head;
    rt_linear *bare[TM_LAYERS][LAY_HEAD];  /* the GPU model's linears: shape and `packed` only */
    float *norms[2 * TM_LAYERS + 1];
    rt_model gpu, cpu;
    rt_layer gl[TM_LAYERS], cl[TM_LAYERS];
} tiny;

static float *vec_copy(const float *src, int64_t n)
{
    float *p = malloc((size_t)n * sizeof *p);
    assert_non_null(p);
    memcpy(p, src, (size_t)n * sizeof *p);
    return p;
}

/* The formats of a tiny model's layers. */
typedef enum {
    TM_OWN,   /* bitplan's */
    TM_GGML,  /* the 32-wide ggml types */
    TM_ROT,   /* bitplan's, rotating their inputs in blocks of 64 where the columns allow
                 (all but down's 160), the head and embedding too; q, v, gate and up
                 with one seed, so that each input is rotated once for them, k another */
    TM_AWQ,   /* bitplan's, every layer with input scales (down's 160 columns the widest),
                 the head and embedding too */
} tm_formats;

/* The layers in the formats fmt says; the head (also the embedding, decoded on the
 * host by get_row) in 4-bit g32, rotated with TM_ROT, with input scales with TM_AWQ. */
static void tiny_make(tiny *m, int dense_o, tm_formats fmt)
{
    static const int64_t Q = TM_HEADS * TM_HD, KV = TM_KV * TM_HD;
    const int64_t shape[LAY_HEAD][2] = {{Q, TM_DIM}, {KV, TM_DIM}, {KV, TM_DIM}, {TM_DIM, Q},
                                       {TM_HIDDEN, TM_DIM}, {TM_HIDDEN, TM_DIM}, {TM_DIM, TM_HIDDEN}};
    const lay_option own[LAY_HEAD] = { opt(4, 4, 0, 32, LAY_SCALE_F16_Z8), opt(3, 5, 0.5f, 32, LAY_SCALE_F16),
                                      opt(8, 8, 0, 64, LAY_SCALE_F16_Z8), opt(2, 6, 0.5f, 32, LAY_SCALE_F16_Z8),
                                      opt(5, 5, 0, 32, LAY_SCALE_F16), opt(6, 7, 0.5f, 32, LAY_SCALE_F16_Z8),
                                      opt(3, 4, 0.2f, 32, LAY_SCALE_F16_Z8) };
    const lay_option gg[LAY_HEAD] = { ggml_opt(LAY_GGML_Q4_0), ggml_opt(LAY_GGML_Q4_1), ggml_opt(LAY_GGML_Q5_0),
                                     ggml_opt(LAY_GGML_Q5_1), ggml_opt(LAY_GGML_Q8_0), ggml_opt(LAY_GGML_Q4_1),
                                     ggml_opt(LAY_GGML_Q5_1) };
    lay_option rot[LAY_HEAD], awq[LAY_HEAD];
    for (int k = 0; k < LAY_HEAD; k++) {
        rot[k] = own[k];
        rot[k].rot = shape[k][1] % 64 ? 0 : 64;
        awq[k] = own[k];
        awq[k].awq = 1;
    }
    const lay_option *o = fmt == TM_GGML ? gg : fmt == TM_ROT ? rot : fmt == TM_AWQ ? awq : own;
    char err[256];
    memset(m, 0, sizeof *m);
    mdl_config *c = &m->gpu.cfg;
    snprintf(c->arch, sizeof c->arch, "llama");
    c->n_layers = TM_LAYERS, c->dim = TM_DIM, c->hidden_dim = TM_HIDDEN, c->n_heads = TM_HEADS;
    c->n_kv_heads = TM_KV, c->head_dim = TM_HD, c->vocab_size = TM_VOCAB, c->max_ctx = 128;
    c->rope_theta = 10000, c->rope_dim = TM_HD, c->rope_scale = 1, c->norm_eps = 1e-5f, c->tied_embeddings = 1;
    m->cpu.cfg = *c;
    for (int i = 0; i < 2 * TM_LAYERS + 1; i++) {
        m->norms[i] = rand_vec(TM_DIM);
        for (int j = 0; j < TM_DIM; j++) m->norms[i][j] = 1.0f + 0.1f * m->norms[i][j];
    }
    for (int l = 0; l < TM_LAYERS; l++) {
        for (int k = 0; k < LAY_HEAD; k++) {
            ptensor *t = &m->pt[l][k];
            /* rotated: q, v, gate and up alike (one rotation of each input), k otherwise */
            fixed_rot_seed = fmt == TM_ROT ? (k == LAY_K ? 77u : 1234u) : 0;
            pt_make(t, shape[k][0], shape[k][1], &o[k], 1.0f / sqrtf((float)shape[k][1]));
            fixed_rot_seed = 0;
            m->cl[l].lin[k] = rt_linear_dense(vec_copy(t->deq, t->p.rows * t->p.cols), t->p.rows, t->p.cols);
            assert_non_null(m->cl[l].lin[k]);
            if (dense_o && k == LAY_O) { /* the dense path on the GPU too */
                m->gl[l].lin[k] = m->cl[l].lin[k];
                m->cl[l].lin[k]->dense = t->deq;
                continue;
            }
            rt_linear *b = calloc(1, sizeof *b);
            assert_non_null(b);
            b->rows = t->p.rows, b->cols = t->p.cols, b->packed = &t->p;
            m->bare[l][k] = b;
            m->gl[l].lin[k] = b;
        }
        m->gl[l].attn_norm = m->cl[l].attn_norm = m->norms[2 * l];
        m->gl[l].ffn_norm = m->cl[l].ffn_norm = m->norms[2 * l + 1];
    }
    pt_make(&m->head, TM_VOCAB, TM_DIM, fmt == TM_ROT ? &rot[0] : fmt == TM_AWQ ? &awq[0] : &own[0], 1.0f);
    m->gpu.embed = rt_linear_packed(&m->head.p, 1, 0, NULL, err, sizeof err); /* get_row decodes exactly */
    assert_non_null(m->gpu.embed);
    m->gpu.embed->packed = &m->head.p;
    m->gpu.head = m->gpu.embed;
    m->cpu.embed = m->cpu.head = rt_linear_dense(vec_copy(m->head.deq, TM_VOCAB * TM_DIM), TM_VOCAB, TM_DIM);
    m->gpu.out_norm = m->cpu.out_norm = m->norms[2 * TM_LAYERS];
    m->gpu.layers = m->gl, m->cpu.layers = m->cl;
}

static void tiny_free(tiny *m)
{
    for (int l = 0; l < TM_LAYERS; l++)
        for (int k = 0; k < LAY_HEAD; k++) {
            free(m->bare[l][k]);
            rt_linear_free(m->cl[l].lin[k]);
            pt_free(&m->pt[l][k]);
        }
    rt_linear_free(m->gpu.embed);
    rt_linear_free(m->cpu.embed);
    pt_free(&m->head);
    for (int i = 0; i < 2 * TM_LAYERS + 1; i++) free(m->norms[i]);
}

static double rel_err_f(const float *y, const float *ref, int64_t len)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < len; i++) {
        if (!isfinite(y[i])) return INFINITY;
        num += ((double)y[i] - ref[i]) * ((double)y[i] - ref[i]);
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

#define TOL_FP16_PATH 3e-3 /* logits' relative error through the fp16 cuBLAS path */

/* Prompt of n0 tokens in one batch, then one token at a time, then a batch of 3. */
static void run_model_check(int dense_o, tm_formats fmt, int max_batch, double tol_prompt)
{
    enum { N0 = 24, NT = 36 };
    tiny m;
    tiny_make(&m, dense_o, fmt);
    int32_t tok[NT];
    for (int i = 0; i < NT; i++) tok[i] = (int32_t)(rnd() % TM_VOCAB);
    rt_state *s = rt_state_new(&m.cpu, 64, 32);
    float *ref = malloc((size_t)NT * TM_VOCAB * 4), *got = malloc((size_t)NT * TM_VOCAB * 4);
    assert_true(s && ref && got);
    assert_int_equal(rt_forward(&m.cpu, s, tok, N0, 0, ref), 0);
    for (int i = N0; i < NT - 3; i++) assert_int_equal(rt_forward(&m.cpu, s, tok + i, 1, i, ref + i * TM_VOCAB), 0);
    assert_int_equal(rt_forward(&m.cpu, s, tok + NT - 3, 3, NT - 3, ref + (NT - 3) * TM_VOCAB), 0);
    rt_cuda_model *g;
    char err[256];
    if (rt_cuda_model_new(&m.gpu, 64, max_batch, &g, err, sizeof err)) fail_msg("%s", err);
    assert_true(rt_cuda_model_device_bytes(g) > 0);
    for (int i = 0; i < NT * TM_VOCAB; i++) got[i] = NAN;
    for (int p = 0; p < N0; p += max_batch) {
        int n = N0 - p < max_batch ? N0 - p : max_batch;
        if (rt_cuda_forward(g, tok + p, n, p, 0, n, got + p * TM_VOCAB, err, sizeof err)) fail_msg("%s", err);
    }
    double e = rel_err_f(got, ref, N0 * TM_VOCAB);
    if (!(e < tol_prompt)) fail_msg("prompt logits: relative error %g (tolerance %g)", e, tol_prompt);
    for (int i = N0; i < NT - 3; i++)
        if (rt_cuda_forward(g, tok + i, 1, i, 0, 1, got + i * TM_VOCAB, err, sizeof err)) fail_msg("%s", err);
    if (rt_cuda_forward(g, tok + NT - 3, 3, NT - 3, 0, 3, got + (NT - 3) * TM_VOCAB, err, sizeof err)) fail_msg("%s", err);
    e = rel_err_f(got + N0 * TM_VOCAB, ref + N0 * TM_VOCAB, (NT - N0) * TM_VOCAB);
    if (!(e < 1e-3)) fail_msg("decode logits: relative error %g", e);
    /* only the last row's logits: the same numbers, from a batch of N0 rows, past
     * RTC_MV_MAX_BATCH: the fp16 cuBLAS path, whatever max_batch the model above had */
    float last[TM_VOCAB];
    rt_cuda_model_free(g);
    if (rt_cuda_model_new(&m.gpu, 64, 32, &g, err, sizeof err)) fail_msg("%s", err);
    if (rt_cuda_forward(g, tok, N0, 0, N0 - 1, 1, last, err, sizeof err)) fail_msg("%s", err);
    e = rel_err_f(last, ref + (N0 - 1) * TM_VOCAB, TM_VOCAB);
    if (!(e < TOL_FP16_PATH)) fail_msg("last-row logits: relative error %g", e);
    rt_cuda_model_free(g);
    rt_state_free(s);
    free(ref), free(got);
    tiny_free(&m);
}

static void test_gpu_model_decode(void **state)
{
    (void)state;
    NEED_GPU();
    run_model_check(0, TM_OWN, 8, 1e-3);   /* batches of 8: the fp32 matrix-vector path throughout */
}

static void test_gpu_model_prompt(void **state)
{
    (void)state;
    NEED_GPU();
    run_model_check(1, TM_OWN, 32, TOL_FP16_PATH);  /* one batch of 24: fp16 cuBLAS path; dense o layers */
}

static void test_gpu_model_ggml(void **state)
{
    (void)state;
    NEED_GPU();
    run_model_check(0, TM_GGML, 8, 1e-3);   /* the layers in ggml types: matrix-vector path */
    run_model_check(0, TM_GGML, 32, TOL_FP16_PATH);  /* and the fp16 cuBLAS path */
}

static void test_gpu_model_rot(void **state)
{
    (void)state;
    NEED_GPU();
    run_model_check(0, TM_ROT, 8, 1e-3);   /* rotated layers: matrix-vector path */
    run_model_check(0, TM_ROT, 32, TOL_FP16_PATH);  /* and the fp16 cuBLAS path */
}

static void test_gpu_model_awq(void **state)
{
    (void)state;
    NEED_GPU();
    run_model_check(0, TM_AWQ, 8, 1e-3);   /* layers with input scales: matrix-vector path */
    run_model_check(0, TM_AWQ, 32, TOL_FP16_PATH);  /* and the fp16 cuBLAS path */
}

static void test_gpu_eval(void **state)
{
    (void)state;
    NEED_GPU();
    tiny m;
    tiny_make(&m, 0, TM_OWN);
    enum { N = 200 };
    int32_t tok[N];
    for (int i = 0; i < N; i++) tok[i] = (int32_t)(rnd() % TM_VOCAB);
    rt_eval_params p;
    rt_eval_params_init(&p);
    p.ctx = 32;
    p.bos = 1;
    rt_eval_result a, b;
    char err[256];
    if (rt_eval(&m.cpu, NULL, tok, N, &p, &a, err, sizeof err)) fail_msg("%s", err);
    p.open_runner = rt_cuda_runner_open;
    if (rt_eval(&m.gpu, &m.cpu, tok, N, &p, &b, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(a.tokens_scored, b.tokens_scored);
    if (!(fabs(b.ppl / a.ppl - 1) < 3e-3)) fail_msg("perplexity %g on the GPU, %g on the CPU", b.ppl, a.ppl);
    if (!(fabs(b.ref_ppl / a.ppl - 1) < 1e-9)) fail_msg("reference perplexity %g, CPU %g", b.ref_ppl, a.ppl);
    if (!(b.kld_mean >= 0 && b.kld_mean < 1e-4)) fail_msg("KL divergence to the same weights %g", b.kld_mean);
    assert_true(b.top1_agree > 0.95);
    tiny_free(&m);
}

static void collect(void *ctx, int32_t id)
{
    int32_t *v = ctx;
    v[++v[0]] = id;
}

static void test_gpu_generate(void **state)
{
    (void)state;
    NEED_GPU();
    tiny m;
    tiny_make(&m, 0, TM_OWN);
    int32_t prompt[5] = {3, 1, 4, 1, 5}, a[40] = {0}, b[40] = {0};
    rt_gen_params p;
    rt_gen_params_init(&p);
    p.n_predict = 30, p.temp = 0, p.stop_at_eos = 0, p.on_token = collect;
    rt_gen_stats st;
    char err[256];
    p.on_token_ctx = a;
    if (rt_generate(&m.cpu, prompt, 5, &p, NULL, NULL, &st, err, sizeof err)) fail_msg("%s", err);
    p.on_token_ctx = b;
    p.open_runner = rt_cuda_runner_open;
    if (rt_generate(&m.gpu, prompt, 5, &p, NULL, NULL, &st, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(a[0], 30);
    assert_int_equal(b[0], 30);
    assert_memory_equal(a, b, sizeof a);
    tiny_free(&m);
}

static void test_gpu_errors(void **state)
{
    (void)state;
    NEED_GPU();
    tiny m;
    tiny_make(&m, 0, TM_OWN);
    rt_cuda_model *g;
    char err[256] = "";
    const lay_packed *keep = m.bare[1][LAY_UP]->packed;
    m.bare[1][LAY_UP]->packed = NULL;
    assert_int_equal(rt_cuda_model_new(&m.gpu, 64, 8, &g, err, sizeof err), -1);
    assert_non_null(strstr(err, "blk.1.ffn_up.weight"));
    assert_non_null(strstr(err, "neither"));
    m.bare[1][LAY_UP]->packed = keep;
    if (rt_cuda_model_new(&m.gpu, 64, 8, &g, err, sizeof err)) fail_msg("%s", err);
    int32_t tok[9] = {0};
    float logits[TM_VOCAB];
    assert_int_equal(rt_cuda_forward(g, tok, 9, 0, 0, 1, logits, err, sizeof err), -1);
    assert_non_null(strstr(err, "max batch"));
    tok[0] = TM_VOCAB;
    assert_int_equal(rt_cuda_forward(g, tok, 1, 0, 0, 1, logits, err, sizeof err), -1);
    assert_non_null(strstr(err, "outside the vocabulary"));
    rt_cuda_model_free(g);
    tiny_free(&m);
    /* a Q4_1 tensor without its mins */
    ptensor t;
    lay_option q41 = ggml_opt(LAY_GGML_Q4_1);
    float x[64] = {0}, y[8];
    pt_make(&t, 8, 64, &q41, 0.1f);
    t.p.mins = NULL;
    assert_int_equal(rt_cuda_matvec_packed(&t.p, x, 1, y, RT_CUDA_PATH_AUTO, err, sizeof err), -1);
    assert_non_null(strstr(err, "mins"));
    pt_free(&t);
    /* a tensor with input scales without its multipliers */
    lay_option a4 = awq_opt(4, 4, 0, 32, LAY_SCALE_F16_Z8);
    pt_make(&t, 8, 64, &a4, 0.1f);
    t.p.xscale = NULL;
    assert_int_equal(rt_cuda_matvec_packed(&t.p, x, 1, y, RT_CUDA_PATH_AUTO, err, sizeof err), -1);
    assert_non_null(strstr(err, "xscale"));
    pt_free(&t);
}

int main(void)
{
    char info[256];
    gpu_ok = rt_cuda_device_info(info, sizeof info, gpu_why, sizeof gpu_why) == 0;
    if (!gpu_ok) fprintf(stderr, "# CUDA tests skip: %s\n", gpu_why);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_quad),
        cmocka_unit_test(test_prmt),
        cmocka_unit_test(test_emulated_matvec),
        cmocka_unit_test(test_emulated_dequant),
        cmocka_unit_test(test_device_info),
        cmocka_unit_test(test_gpu_matvec),
        cmocka_unit_test(test_gpu_matvec_rot),
        cmocka_unit_test(test_gpu_rotate),
        cmocka_unit_test(test_gpu_matvec_awq),
        cmocka_unit_test(test_gpu_xscale),
        cmocka_unit_test(test_gpu_model_decode),
        cmocka_unit_test(test_gpu_model_prompt),
        cmocka_unit_test(test_gpu_model_ggml),
        cmocka_unit_test(test_gpu_model_rot),
        cmocka_unit_test(test_gpu_model_awq),
        cmocka_unit_test(test_gpu_eval),
        cmocka_unit_test(test_gpu_generate),
        cmocka_unit_test(test_gpu_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
