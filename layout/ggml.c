/*
 * layout/ggml.c — the ggml block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the
 * K-quants Q2_K..Q6_K): their byte layouts, one decoder, and an importance-weighted
 * fit of each block's header. It is the only reading and writing of these formats
 * in the tree (model/dequant.c decodes GGUF tensors through it). It must never
 * allocate, print or keep state: every function is a pure function of its inputs,
 * so fitting is deterministic and safe to call from many threads.
 *
 * ONE LAYOUT, TWO DIRECTIONS. A block is parsed into (header, q[block]) and written
 * back from it by a pair of functions per type; a header becomes the sub-block grids
 * a[k], b[k] in grid_set, computed with the very float operations of ggml's C
 * dequantizers and gguf-py's numpy ones (b = -0.0f where the format has no min, so
 * that a*(q-c) + b is a*(q-c) bit for bit, signed zeros included). Decoding is then
 * lay_ggml_value on every q, so the decoder, the fit and the GPTQ pass that calls
 * lay_ggml_quant all see the same numbers.
 *
 * THE FIT. The objective is sum_i w_i (x_i - y_i)^2 with y the nearest value of the
 * decoded grid (fp16 header values and integer sub-block fields included: every
 * error below is measured on the exact grid, never on the continuous one).
 *   1. each sub-block gets a continuous scale (and min) by a search over 11
 *      candidate ranges per side (steps of 0.2 levels), each assignment refitted by
 *      weighted least squares and refined by re-rounding (fit_sym, fit_aff); the
 *      sums of a candidate are one SSE2 pass in float lanes (lsums), added in
 *      double, the block's moments sum w, w x, w x^2 computed once;
 *   2. K-quants: the sub-block scales (and mins) are themselves quantized to their
 *      4/6/8-bit fields under an fp16 super-scale by the same search, weighted by how
 *      much each field moves the block's error (sum w L^2 for a scale, sum w for a
 *      min);
 *   3. refinement, repeated while it gains (at most 8 rounds): the super-scales d,
 *      dmin (or d, m of the 32-blocks) refitted by least squares with q and the
 *      fields fixed, then rounded to fp16 and nudged by one fp16 ulp; every
 *      sub-block's fields re-chosen among the neighbours of their least-squares
 *      values with d, dmin fixed, and, in the first round only, again for d moved
 *      by -2..+2 %; each step kept only if the error drops.
 *   The errors the refinement compares are grid_err: the exact grid's values, the
 *   nearest found by multiplying with 1/a (not dividing: it differs only at exact
 *   ties) and summed in float lanes (one SSE2 pass per sub-block, the same bits
 *   without SSE2). The ggml round-to-nearest header is a starting candidate too
 *   (see rtn_header), and is compared again with the result on the exact double
 *   error at the end, so the fit never loses to it.
 * SPEED (s per million weights, one core, this tree's harness on ffn_gate^T of
 * SmolLM2-135M blk.0, log-normal imp; before = the previous version of this file,
 * 21 candidates, d scan of +-3 % every round, double sums, division per value,
 * measured in the same run): Q4_0..Q8_0 0.17 -> 0.05 (3.3x); Q2_K 1.38 -> 0.16
 * (8.8x), Q3_K 0.70 -> 0.12 (6x), Q4_K 1.24 -> 0.12 (10.6x), Q5_K 1.33 -> 0.12
 * (11x), Q6_K 0.63 -> 0.11 (5.5x). The imp-weighted RMS error moved by at most
 * +0.34 % (QUALITY below).
 * All-zero blocks give d = 0 and decode to exact zeros; fp16 fields are clamped to
 * the finite range, so finite input never gives NaN or Inf.
 *
 * WEIGHTS. With importance imp (the Hessian diagonal: mean squared activation of
 * each input column) w_i = imp_i, the term the output error is made of. Without,
 * w_i = sqrt(sigma2 + x_i^2), sigma2 the block's mean square: ggml's prior that
 * large weights matter more, softened so that small ones still count.
 *
 * MEASURED (imp-weighted RMS error, SmolLM2-135M blk.0 and blk.5: attn_q with imp =
 * attn_norm^2, ffn_down and ffn_gate transposed with log-normal imp; ratios are
 * other / this fit, so > 1 means this fit is better):
 *     w = imp * sqrt(sigma2 + x^2) (llama.cpp's imatrix weighting)  1.007 - 1.022
 *     llama.cpp quantize_<type> with the same imatrix:
 *         Q4_0 1.015-1.028  Q4_1 1.010  Q5_0 1.020-1.047  Q5_1 1.012-1.013
 *         Q8_0 1.21-1.44    Q2_K 1.04   Q3_K 1.009-1.013  Q4_K 1.025-1.027
 *         Q5_K 1.06-1.07    Q6_K 1.07-1.12   (ffn_gate^T; ffn_down, stored on a
 *         32-block Q4_1 grid, gives Q4_K/Q5_K 1.4-1.6)
 *     llama.cpp without imatrix 1.14-2.0; this fit without imp 1.02-1.37
 * and with uniform imp, plain RMS against gguf-py's round-to-nearest quantizers
 * (tests/test_ggml.py): 0.83-0.96. The fit never loses to ggml's min/max
 * round-to-nearest header on the fit's own weights: that header is a starting
 * candidate. These ratios were measured with the previous, slower search; the
 * current one is within 0.4 % of it (QUALITY).
 * QUALITY (imp-weighted RMS, this fit / the previous one, ffn_gate^T blk.0 and
 * blk.5, 96 rows each, log-normal / uniform imp): Q4_0, Q5_0, Q8_0 1.0000-1.0001;
 * Q4_1, Q5_1 1.0006-1.0013; Q2_K 1.0010-1.0019; Q3_K 1.0000-1.0002; Q4_K
 * 1.0009-1.0028; Q5_K 1.0015-1.0033; Q6_K 1.0005-1.0034.
 */
#include "layout.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* ==== Traits ==== */

static const lay_ggml_traits traits[] = {
    [LAY_GGML_Q4_0] = {"Q4_0", 32, 18, 32, 4, 8},     [LAY_GGML_Q4_1] = {"Q4_1", 32, 20, 32, 4, 0},
    [LAY_GGML_Q5_0] = {"Q5_0", 32, 22, 32, 5, 16},    [LAY_GGML_Q5_1] = {"Q5_1", 32, 24, 32, 5, 0},
    [LAY_GGML_Q8_0] = {"Q8_0", 32, 34, 32, 8, 128},   [LAY_GGML_Q2_K] = {"Q2_K", 256, 84, 16, 2, 0},
    [LAY_GGML_Q3_K] = {"Q3_K", 256, 110, 16, 3, 4},   [LAY_GGML_Q4_K] = {"Q4_K", 256, 144, 32, 4, 0},
    [LAY_GGML_Q5_K] = {"Q5_K", 256, 176, 32, 5, 0},   [LAY_GGML_Q6_K] = {"Q6_K", 256, 210, 16, 6, 32},
};
#define N_TYPES ((int)(sizeof traits / sizeof *traits))

const lay_ggml_traits *lay_ggml_traits_of(int type)
{
    return type >= 0 && type < N_TYPES && traits[type].name ? &traits[type] : NULL;
}

int lay_ggml_type_by_name(const char *name)
{
    for (int t = 0; name && t < N_TYPES; t++)
        if (traits[t].name && !strcasecmp(name, traits[t].name)) return t;
    return -1;
}

int64_t lay_ggml_row_bytes(int type, int64_t n)
{
    const lay_ggml_traits *t = lay_ggml_traits_of(type);
    assert(t && n >= 0 && n % t->block == 0);
    return n / t->block * t->bytes;
}

/* The kind of header: what grid_set makes of it and how the fit searches it. */
static int has_min(int type) { return type == LAY_GGML_Q2_K || type == LAY_GGML_Q4_K || type == LAY_GGML_Q5_K; }
static int is_k(int type) { return type >= LAY_GGML_Q2_K; }
static int n_sub(const lay_ggml_traits *t) { return t->block / t->sub; }

/* The range of a K-quant's stored sub-block scale (and min) field. */
static void field_range(int type, int *lo, int *hi)
{
    switch (type) {
    case LAY_GGML_Q2_K: *lo = 0, *hi = 15; break;
    case LAY_GGML_Q3_K: *lo = -32, *hi = 31; break;
    case LAY_GGML_Q6_K: *lo = -128, *hi = 127; break;
    default: *lo = 0, *hi = 63; break; /* Q4_K, Q5_K */
    }
}

/* ==== Grid of a header ==== */

static void grid_set_sub(lay_ggml_grid *g, int k)
{
    float d = lay_f16_to_f32(g->d), dm = lay_f16_to_f32(g->dmin);
    switch (g->type) {
    case LAY_GGML_Q4_1: case LAY_GGML_Q5_1: g->a[k] = d, g->b[k] = dm; break;
    case LAY_GGML_Q4_0: case LAY_GGML_Q5_0: case LAY_GGML_Q8_0: g->a[k] = d, g->b[k] = -0.0f; break;
    case LAY_GGML_Q3_K: case LAY_GGML_Q6_K: g->a[k] = d * (float)g->sc[k], g->b[k] = -0.0f; break;
    default: g->a[k] = d * (float)g->sc[k], g->b[k] = -(dm * (float)g->mn[k]); break;
    }
}

static void grid_set(lay_ggml_grid *g)
{
    int ns = n_sub(lay_ggml_traits_of(g->type));
    for (int k = 0; k < LAY_GGML_MAX_SUB; k++) {
        if (k < ns) grid_set_sub(g, k);
        else g->a[k] = 0.0f, g->b[k] = -0.0f;
    }
}

/* ==== Byte layouts ====
 *
 * Every multi-byte field is little-endian and may be unaligned. In the tables,
 * value v of a block is q[v]; "nib(j)" is byte j's low nibble for values 0..15 of a
 * 32 and its high nibble for values 16..31.
 *
 *   Q4_0 18   0 fp16 d | 2 qs[16]: q[j] = qs[j] & 15, q[j+16] = qs[j] >> 4
 *   Q4_1 20   0 fp16 d | 2 fp16 m | 4 qs[16] as Q4_0
 *   Q5_0 22   0 fp16 d | 2 u32 qh | 6 qs[16]: as Q4_0, bit v of qh is bit 4 of q[v]
 *   Q5_1 24   0 fp16 d | 2 fp16 m | 4 u32 qh | 8 qs[16] as Q5_0
 *   Q8_0 34   0 fp16 d | 2 int8 qs[32]: q[v] = qs[v] + 128
 *   Q2_K 84   0 scales[16] (scale: low nibble, min: high) | 16 qs[64] | 80 fp16 d | 82 fp16 dmin
 *             value v = 128h + 32s + l (h < 2, s < 4, l < 32) is bits 2s..2s+1 of qs[32h + l]
 *   Q3_K 110  0 hmask[32] | 32 qs[64] (low 2 bits, as Q2_K) | 96 scales[12] | 108 fp16 d
 *             bit 2 of q[v] is bit v/32 of hmask[v%32]; 6-bit scale k (stored + 32):
 *             low 4 bits: nibble k/8 of scales[k%8], high 2: bits 2(k/4).. of scales[8 + k%4]
 *   Q4_K 144  0 fp16 d | 2 fp16 dmin | 4 scales[12] | 16 qs[128]
 *             sub-block j (32 values): nibble j&1 of qs[32(j/2) + l]; 6-bit scales/mins:
 *             j < 4: scale = s[j] & 63, min = s[j+4] & 63; j >= 4: scale = s[j+4] & 15
 *             | (s[j-4] >> 6) << 4, min = s[j+4] >> 4 | (s[j] >> 6) << 4
 *   Q5_K 176  0 fp16 d | 2 fp16 dmin | 4 scales[12] | 16 qh[32] | 48 qs[128]
 *             as Q4_K, bit 4 of value l of sub-block j is bit j of qh[l]
 *   Q6_K 210  0 ql[128] | 128 qh[64] | 192 int8 scales[16] | 208 fp16 d
 *             value v = 128h + 32s + l: low 4 bits nibble s/2 of ql[64h + 32(s&1) + l],
 *             high 2 bits 2s..2s+1 of qh[32h + l]
 */

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static void wr32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> 8 * i); }

/* 32 values in nibbles (and a fifth bit in qh when qh is not NULL). */
static void get_32(const uint8_t *qs, const uint8_t *qh, uint8_t *q)
{
    uint32_t h = qh ? rd32(qh) : 0;
    for (int j = 0; j < 16; j++) {
        q[j] = (uint8_t)((qs[j] & 15) | ((h >> j) & 1) << 4);
        q[j + 16] = (uint8_t)((qs[j] >> 4) | ((h >> (j + 16)) & 1) << 4);
    }
}

static void put_32(const uint8_t *q, uint8_t *qs, uint8_t *qh)
{
    uint32_t h = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((q[j] & 15) | (q[j + 16] & 15) << 4);
        h |= (uint32_t)(q[j] >> 4 & 1) << j | (uint32_t)(q[j + 16] >> 4 & 1) << (j + 16);
    }
    if (qh) wr32(qh, h);
}

/* The 2-bit planes of Q2_K and Q3_K: 256 values in qs[64]. */
static void get_2bit(const uint8_t *qs, uint8_t *q)
{
    for (int v = 0; v < 256; v++) q[v] = (uint8_t)(qs[32 * (v / 128) + v % 32] >> (2 * (v / 32 % 4)) & 3);
}

static void put_2bit(const uint8_t *q, uint8_t *qs)
{
    memset(qs, 0, 64);
    for (int v = 0; v < 256; v++) qs[32 * (v / 128) + v % 32] |= (uint8_t)((q[v] & 3) << (2 * (v / 32 % 4)));
}

/* The 12 bytes of 6-bit scales and mins of Q4_K and Q5_K. */
static void get_k4_scales(const uint8_t *s, lay_ggml_grid *g)
{
    for (int j = 0; j < 8; j++) {
        if (j < 4) g->sc[j] = (int8_t)(s[j] & 63), g->mn[j] = (uint8_t)(s[j + 4] & 63);
        else {
            g->sc[j] = (int8_t)((s[j + 4] & 15) | (s[j - 4] >> 6) << 4);
            g->mn[j] = (uint8_t)((s[j + 4] >> 4) | (s[j] >> 6) << 4);
        }
    }
}

static void put_k4_scales(const lay_ggml_grid *g, uint8_t *s)
{
    for (int j = 0; j < 4; j++) {
        int sc = g->sc[j] & 63, mn = g->mn[j] & 63, sc4 = g->sc[j + 4] & 63, mn4 = g->mn[j + 4] & 63;
        s[j] = (uint8_t)(sc | (sc4 >> 4) << 6);
        s[j + 4] = (uint8_t)(mn | (mn4 >> 4) << 6);
        s[j + 8] = (uint8_t)((sc4 & 15) | (mn4 & 15) << 4);
    }
}

/* The 12 bytes of 6-bit scales of Q3_K (stored + 32). */
static void get_k3_scales(const uint8_t *s, lay_ggml_grid *g)
{
    for (int k = 0; k < 16; k++) {
        int u = (s[k % 8] >> (4 * (k / 8)) & 15) | (s[8 + k % 4] >> (2 * (k / 4)) & 3) << 4;
        g->sc[k] = (int8_t)(u - 32);
    }
}

static void put_k3_scales(const lay_ggml_grid *g, uint8_t *s)
{
    memset(s, 0, 12);
    for (int k = 0; k < 16; k++) {
        int u = (g->sc[k] + 32) & 63;
        s[k % 8] |= (uint8_t)((u & 15) << (4 * (k / 8)));
        s[8 + k % 4] |= (uint8_t)((u >> 4) << (2 * (k / 4)));
    }
}

/* One block's header (into g, grid included) and q values. */
static void parse_block(int type, const uint8_t *b, lay_ggml_grid *g, uint8_t *q)
{
    memset(g, 0, sizeof *g);
    g->type = type;
    switch (type) {
    case LAY_GGML_Q4_0: g->d = rd16(b); get_32(b + 2, NULL, q); break;
    case LAY_GGML_Q4_1: g->d = rd16(b), g->dmin = rd16(b + 2); get_32(b + 4, NULL, q); break;
    case LAY_GGML_Q5_0: g->d = rd16(b); get_32(b + 6, b + 2, q); break;
    case LAY_GGML_Q5_1: g->d = rd16(b), g->dmin = rd16(b + 2); get_32(b + 8, b + 4, q); break;
    case LAY_GGML_Q8_0:
        g->d = rd16(b);
        for (int v = 0; v < 32; v++) q[v] = (uint8_t)((int8_t)b[2 + v] + 128);
        break;
    case LAY_GGML_Q2_K:
        for (int k = 0; k < 16; k++) g->sc[k] = (int8_t)(b[k] & 15), g->mn[k] = (uint8_t)(b[k] >> 4);
        get_2bit(b + 16, q);
        g->d = rd16(b + 80), g->dmin = rd16(b + 82);
        break;
    case LAY_GGML_Q3_K:
        get_2bit(b + 32, q);
        for (int v = 0; v < 256; v++) q[v] |= (uint8_t)((b[v % 32] >> (v / 32) & 1) << 2);
        get_k3_scales(b + 96, g);
        g->d = rd16(b + 108);
        break;
    case LAY_GGML_Q4_K: case LAY_GGML_Q5_K: {
        const uint8_t *qs = b + (type == LAY_GGML_Q4_K ? 16 : 48), *qh = b + 16;
        g->d = rd16(b), g->dmin = rd16(b + 2);
        get_k4_scales(b + 4, g);
        for (int j = 0; j < 8; j++)
            for (int l = 0; l < 32; l++) {
                int v = qs[32 * (j / 2) + l] >> (4 * (j & 1)) & 15;
                if (type == LAY_GGML_Q5_K) v |= (qh[l] >> j & 1) << 4;
                q[32 * j + l] = (uint8_t)v;
            }
        break;
    }
    case LAY_GGML_Q6_K:
        for (int v = 0; v < 256; v++) {
            int h = v / 128, s = v / 32 % 4, l = v % 32;
            int lo = b[64 * h + 32 * (s & 1) + l] >> (4 * (s >> 1)) & 15, hi = b[128 + 32 * h + l] >> (2 * s) & 3;
            q[v] = (uint8_t)(lo | hi << 4);
        }
        for (int k = 0; k < 16; k++) g->sc[k] = (int8_t)b[192 + k];
        g->d = rd16(b + 208);
        break;
    default: assert(0);
    }
    grid_set(g);
}

void lay_ggml_encode(const lay_ggml_grid *g, const uint8_t *q, uint8_t *b)
{
    const lay_ggml_traits *t = lay_ggml_traits_of(g->type);
    assert(t);
    memset(b, 0, (size_t)t->bytes);
    switch (g->type) {
    case LAY_GGML_Q4_0: wr16(b, g->d); put_32(q, b + 2, NULL); break;
    case LAY_GGML_Q4_1: wr16(b, g->d), wr16(b + 2, g->dmin); put_32(q, b + 4, NULL); break;
    case LAY_GGML_Q5_0: wr16(b, g->d); put_32(q, b + 6, b + 2); break;
    case LAY_GGML_Q5_1: wr16(b, g->d), wr16(b + 2, g->dmin); put_32(q, b + 8, b + 4); break;
    case LAY_GGML_Q8_0:
        wr16(b, g->d);
        for (int v = 0; v < 32; v++) b[2 + v] = (uint8_t)(q[v] - 128);
        break;
    case LAY_GGML_Q2_K:
        for (int k = 0; k < 16; k++) b[k] = (uint8_t)((g->sc[k] & 15) | (g->mn[k] & 15) << 4);
        put_2bit(q, b + 16);
        wr16(b + 80, g->d), wr16(b + 82, g->dmin);
        break;
    case LAY_GGML_Q3_K:
        for (int v = 0; v < 256; v++) b[v % 32] |= (uint8_t)((q[v] >> 2 & 1) << (v / 32));
        put_2bit(q, b + 32);
        put_k3_scales(g, b + 96);
        wr16(b + 108, g->d);
        break;
    case LAY_GGML_Q4_K: case LAY_GGML_Q5_K: {
        uint8_t *qs = b + (g->type == LAY_GGML_Q4_K ? 16 : 48), *qh = b + 16;
        wr16(b, g->d), wr16(b + 2, g->dmin);
        put_k4_scales(g, b + 4);
        for (int j = 0; j < 8; j++)
            for (int l = 0; l < 32; l++) {
                int v = q[32 * j + l];
                qs[32 * (j / 2) + l] |= (uint8_t)((v & 15) << (4 * (j & 1)));
                if (g->type == LAY_GGML_Q5_K) qh[l] |= (uint8_t)((v >> 4 & 1) << j);
            }
        break;
    }
    case LAY_GGML_Q6_K:
        for (int v = 0; v < 256; v++) {
            int h = v / 128, s = v / 32 % 4, l = v % 32;
            b[64 * h + 32 * (s & 1) + l] |= (uint8_t)((q[v] & 15) << (4 * (s >> 1)));
            b[128 + 32 * h + l] |= (uint8_t)((q[v] >> 4 & 3) << (2 * s));
        }
        for (int k = 0; k < 16; k++) b[192 + k] = (uint8_t)g->sc[k];
        wr16(b + 208, g->d);
        break;
    default: assert(0);
    }
}

void lay_ggml_decode_row(int type, const uint8_t *src, float *y, int64_t n)
{
    const lay_ggml_traits *t = lay_ggml_traits_of(type);
    assert(t && n % t->block == 0);
    lay_ggml_grid g;
    uint8_t q[256];
    for (int64_t i = 0; i < n; i += t->block, src += t->bytes) {
        parse_block(type, src, &g, q);
        for (int v = 0; v < t->block; v++) y[i + v] = lay_ggml_value(&g, v / t->sub, t->center, q[v]);
    }
}

/* ==== Fitting: one sub-block, continuous ==== */

/* fp16 bits of v, clamped to the finite range (a fitted scale never becomes Inf). */
static uint16_t f16_clamped(float v)
{
    if (!(v == v)) v = 0.0f;
    if (v > 65504.0f) v = 65504.0f;
    if (v < -65504.0f) v = -65504.0f;
    return lay_f32_to_f16(v);
}

static float rnd(float v) { return __builtin_rintf(v); }
static int clampi(float v, int lo, int hi) { return v >= (float)lo ? (v <= (float)hi ? (int)v : hi) : lo; } /* NaN: lo */

/* For L = clamp(rint((x - off) * inv), lo, hi) (lo, hi integers): sum w L, sum w L^2
 * and sum w x L over n values (a multiple of 4), in four float lanes summed in double
 * in a fixed order (the same bits with or without SSE2). */
static void lsums(const float *x, const float *w, int n, float off, float inv, float lo, float hi, double *sl, double *sll,
                  double *sxl)
{
    float a[4] = {0}, b[4] = {0}, c[4] = {0};
#ifdef __SSE2__
    __m128 va = _mm_setzero_ps(), vb = _mm_setzero_ps(), vc = _mm_setzero_ps();
    const __m128 vo = _mm_set1_ps(off), vi = _mm_set1_ps(inv), vlo = _mm_set1_ps(lo), vhi = _mm_set1_ps(hi),
                 big = _mm_set1_ps(12582912.0f);
    for (int i = 0; i < n; i += 4) {
        __m128 xv = _mm_loadu_ps(x + i), wv = _mm_loadu_ps(w + i);
        __m128 u = _mm_min_ps(_mm_max_ps(_mm_mul_ps(_mm_sub_ps(xv, vo), vi), vlo), vhi);
        u = _mm_sub_ps(_mm_add_ps(u, big), big);
        __m128 wl = _mm_mul_ps(wv, u);
        va = _mm_add_ps(va, wl), vb = _mm_add_ps(vb, _mm_mul_ps(wl, u)), vc = _mm_add_ps(vc, _mm_mul_ps(wl, xv));
    }
    _mm_storeu_ps(a, va), _mm_storeu_ps(b, vb), _mm_storeu_ps(c, vc);
#else
    for (int i = 0; i < n; i += 4)
        for (int j = 0; j < 4; j++) {
            float u = (x[i + j] - off) * inv;
            u = u > lo ? u : lo;
            u = u < hi ? u : hi;
            u = (u + 12582912.0f) - 12582912.0f;
            float wl = w[i + j] * u;
            a[j] += wl, b[j] += wl * u, c[j] += wl * x[i + j];
        }
#endif
    *sl = ((double)a[0] + a[1]) + ((double)a[2] + a[3]);
    *sll = ((double)b[0] + b[1]) + ((double)b[2] + b[3]);
    *sxl = ((double)c[0] + c[1]) + ((double)c[2] + c[3]);
}

/* Weighted sum of squares of x - s L for L = clamp(rint(x * inv)), the s that
 * minimizes it for those L, and sum w L^2. Returns the error (at that s); sxx =
 * sum w x^2. */
static double sym_try(const float *x, const float *w, int n, int lo, int hi, float inv, double sxx, float *s, double *wl2)
{
    double sl, sxl, sll;
    lsums(x, w, n, 0.0f, inv, (float)lo, (float)hi, &sl, &sll, &sxl);
    *wl2 = sll;
    if (sll <= 0) { *s = 0; return sxx; }
    *s = (float)(sxl / sll);
    return sxx - sxl * sxl / sll;
}

/* The scale s minimizing sum w (x - s L)^2 over integers L in [lo, hi] (lo <= 0 <
 * hi): the value of largest magnitude tried at ~21 levels around each end of the
 * range, every assignment refitted by least squares, the best re-rounded until it
 * stops gaining. *wl2 = sum w L^2 at the result (how much the scale matters). */
static float fit_sym(const float *x, const float *w, int n, int lo, int hi, double *wl2)
{
    float vmax = 0;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > fabsf(vmax)) vmax = x[i];
    *wl2 = 0;
    if (vmax == 0) return 0;
    double best = INFINITY, e, l2, sxx = 0;
    float bs = 0, s;
    for (int i = 0; i < n; i++) sxx += (double)w[i] * x[i] * x[i];
    for (int side = 0; side < 2; side++) {
        int end = side ? hi : lo;
        for (int j = -15; end && j <= 5; j += 2) {
            float lev = (float)end * (1.0f + 0.1f * (float)j / (float)abs(end));
            if (lev * (float)end <= 0) continue;
            e = sym_try(x, w, n, lo, hi, lev / vmax, sxx, &s, &l2);
            if (e < best && s != 0) best = e, bs = s, *wl2 = l2;
        }
    }
    for (int it = 0; it < 4 && bs != 0; it++) {
        e = sym_try(x, w, n, lo, hi, 1.0f / bs, sxx, &s, &l2);
        if (!(e < best) || s == 0) break;
        best = e, bs = s, *wl2 = l2;
    }
    return bs;
}

static void moments(const float *x, const float *w, int n, double *m)
{
    m[0] = m[1] = m[2] = 0;
    for (int i = 0; i < n; i++) m[0] += w[i], m[1] += (double)w[i] * x[i], m[2] += (double)w[i] * x[i] * x[i];
}

/* Weighted least squares of x ~ s L + b for L = clamp(rint((x - lo) * inv)) with
 * b <= 0 if nonpos. Returns the error at the fitted (s, b); *wl2 = sum w L^2. m: the
 * moments sum w, sum w x, sum w x^2 (see moments). */
static double aff_try(const float *x, const float *w, int n, int nmax, int nonpos, float lo, float inv, const double *m,
                      float *s, float *b, double *wl2)
{
    double sw = m[0], sx = m[1], sxx = m[2], sl, sll, sxl;
    lsums(x, w, n, lo, inv, 0.0f, (float)nmax, &sl, &sll, &sxl);
    double det = sw * sll - sl * sl, ss = 0, bb = sw > 0 ? sx / sw : 0;
    if (det > 1e-12 * sw * sll) ss = (sw * sxl - sl * sx) / det, bb = (sll * sx - sl * sxl) / det;
    if (nonpos && bb > 0) bb = 0, ss = sll > 0 ? sxl / sll : 0;
    if (ss < 0) ss = 0, bb = sw > 0 ? sx / sw : 0;
    if (nonpos && bb > 0) bb = 0;
    *s = (float)ss, *b = (float)bb, *wl2 = sll;
    return sxx - 2 * ss * sxl - 2 * bb * sx + ss * ss * sll + 2 * ss * bb * sl + bb * bb * sw;
}

/* The affine grid y = s L + b, L in [0, nmax], s >= 0 (and b <= 0 if nonpos: the
 * K-quants store -b as an unsigned min) minimizing sum w (x - y)^2: ~21 ranges from
 * [min, max] shrunk or stretched, each refitted, the best re-rounded. */
static void fit_aff(const float *x, const float *w, int n, int nmax, int nonpos, float *s, float *b, double *wl2)
{
    float mn = x[0], mx = x[0];
    for (int i = 1; i < n; i++) mn = fminf(mn, x[i]), mx = fmaxf(mx, x[i]);
    if (nonpos && mn > 0) mn = 0;
    *s = 0, *b = mn, *wl2 = 0;
    if (!(mx > mn)) return;
    double best = INFINITY, e, l2, m[3];
    float ts, tb;
    moments(x, w, n, m);
    for (int j = -10; j <= 10; j += 2) {
        e = aff_try(x, w, n, nmax, nonpos, mn, ((float)nmax + 0.1f * (float)j) / (mx - mn), m, &ts, &tb, &l2);
        if (e < best && ts > 0) best = e, *s = ts, *b = tb, *wl2 = l2;
    }
    for (int it = 0; it < 4 && *s > 0; it++) {
        e = aff_try(x, w, n, nmax, nonpos, *b, 1.0f / *s, m, &ts, &tb, &l2);
        if (!(e < best) || ts <= 0) break;
        best = e, *s = ts, *b = tb, *wl2 = l2;
    }
}

/* ==== Fitting: exact errors on the decoded grid ==== */

static double sub_err(const lay_ggml_grid *g, const lay_ggml_traits *t, int k, const float *x, const float *w)
{
    double e = 0;
    for (int i = k * t->sub; i < (k + 1) * t->sub; i++) {
        int q = lay_ggml_quant(g, k, t->bits, t->center, x[i]);
        double r = (double)x[i] - (double)lay_ggml_value(g, k, t->center, q);
        e += w[i] * r * r;
    }
    return e;
}

/* The error of n values (a multiple of 8) on the grid a L + b, L in [lo, hi], in
 * float: nearest by multiplying with 1/a (it differs from lay_ggml_quant only at
 * exact ties, where both neighbours are equally good), rounded by adding and
 * subtracting 1.5 * 2^23 (rint for |t| < 2^22). Eight lanes summed in a fixed order,
 * so that the compiler may vectorize it and every build gives the same bits. */
static float grid_err(float a, float b, float lo, float hi, const float *x, const float *w, int n)
{
    float acc[8] = {0};
#ifdef __SSE2__
    __m128 e0 = _mm_setzero_ps(), e1 = _mm_setzero_ps(), vb = _mm_set1_ps(b);
    if (a == 0.0f) {
        for (int i = 0; i < n; i += 8) {
            __m128 r0 = _mm_sub_ps(_mm_loadu_ps(x + i), vb), r1 = _mm_sub_ps(_mm_loadu_ps(x + i + 4), vb);
            e0 = _mm_add_ps(e0, _mm_mul_ps(_mm_mul_ps(_mm_loadu_ps(w + i), r0), r0));
            e1 = _mm_add_ps(e1, _mm_mul_ps(_mm_mul_ps(_mm_loadu_ps(w + i + 4), r1), r1));
        }
    } else {
        const __m128 inv = _mm_set1_ps(1.0f / a), va = _mm_set1_ps(a), vlo = _mm_set1_ps(lo), vhi = _mm_set1_ps(hi),
                     big = _mm_set1_ps(12582912.0f);
        for (int i = 0; i < n; i += 4) {
            __m128 xv = _mm_loadu_ps(x + i);
            __m128 u = _mm_mul_ps(_mm_sub_ps(xv, vb), inv);
            u = _mm_min_ps(_mm_max_ps(u, vlo), vhi);
            u = _mm_sub_ps(_mm_add_ps(u, big), big);
            __m128 r = _mm_sub_ps(xv, _mm_add_ps(_mm_mul_ps(va, u), vb));
            r = _mm_mul_ps(_mm_mul_ps(_mm_loadu_ps(w + i), r), r);
            if (i & 4) e1 = _mm_add_ps(e1, r);
            else e0 = _mm_add_ps(e0, r);
        }
    }
    _mm_storeu_ps(acc, e0), _mm_storeu_ps(acc + 4, e1);
#else
    if (a == 0.0f) {
        for (int i = 0; i < n; i += 8)
            for (int j = 0; j < 8; j++) {
                float r = x[i + j] - b;
                acc[j] += w[i + j] * r * r;
            }
    } else {
        const float inv = 1.0f / a, big = 12582912.0f;
        for (int i = 0; i < n; i += 8)
            for (int j = 0; j < 8; j++) {
                float u = (x[i + j] - b) * inv;
                u = u > lo ? u : lo;
                u = u < hi ? u : hi;
                u = (u + big) - big;
                float r = x[i + j] - (a * u + b);
                acc[j] += w[i + j] * r * r;
            }
    }
#endif
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static double sub_errf(const lay_ggml_grid *g, const lay_ggml_traits *t, int k, const float *x, const float *w)
{
    return grid_err(g->a[k], g->b[k], (float)-t->center, (float)((1 << t->bits) - 1 - t->center), x + k * t->sub,
                    w + k * t->sub, t->sub);
}

static double blk_errf(const lay_ggml_grid *g, const lay_ggml_traits *t, const float *x, const float *w)
{
    double e = 0;
    for (int k = 0; k < n_sub(t); k++) e += sub_errf(g, t, k, x, w);
    return e;
}

static double blk_err(const lay_ggml_grid *g, const lay_ggml_traits *t, const float *x, const float *w)
{
    double e = 0;
    for (int k = 0; k < n_sub(t); k++) e += sub_err(g, t, k, x, w);
    return e;
}

/* The fp16 bits one ulp away from h (dir +1: larger magnitude), or h at the ends. */
static uint16_t f16_step(uint16_t h, int dir)
{
    int mag = h & 0x7FFF;
    if (dir > 0 ? mag >= 0x7BFF : mag == 0) return h;
    return (uint16_t)((h & 0x8000) | (mag + dir));
}

/* ==== Fitting: the header's refinement ==== */

/* With q (nearest on the current grid) and the sub-block fields fixed, the d (and
 * dmin or m) minimizing the error, by least squares; rounded to fp16. Returns 0 if
 * the system is degenerate. */
static int refit_super(const lay_ggml_grid *g, const lay_ggml_traits *t, const float *x, const float *w, lay_ggml_grid *out)
{
    /* y = d u + e v: u = sc (q - c) and v = -mn for K-quants with mins, u = q - c and
       v = 1 for Q4_1/Q5_1, v = 0 otherwise */
    int two = has_min(g->type) || g->type == LAY_GGML_Q4_1 || g->type == LAY_GGML_Q5_1;
    double suu = 0, suv = 0, svv = 0, sxu = 0, sxv = 0;
    for (int i = 0; i < t->block; i++) {
        int k = i / t->sub, q = lay_ggml_quant(g, k, t->bits, t->center, x[i]);
        double u = (double)(q - t->center) * (is_k(g->type) ? g->sc[k] : 1);
        double v = has_min(g->type) ? -(double)g->mn[k] : two ? 1.0 : 0.0;
        suu += w[i] * u * u, suv += w[i] * u * v, svv += w[i] * v * v, sxu += w[i] * x[i] * u, sxv += w[i] * x[i] * v;
    }
    double d, e = 0, det = suu * svv - suv * suv;
    if (two && det > 1e-12 * suu * svv) {
        d = (svv * sxu - suv * sxv) / det, e = (suu * sxv - suv * sxu) / det;
        if (has_min(g->type) && e < 0) e = 0, d = sxu / suu;
    } else if (suu > 0) {
        d = sxu / suu;
        if (two && svv > 0) e = has_min(g->type) ? 0 : (sxv - d * suv) / svv;
    } else return 0;
    if (is_k(g->type) && d < 0 && g->type != LAY_GGML_Q3_K && g->type != LAY_GGML_Q6_K) return 0;
    *out = *g;
    out->d = f16_clamped((float)d);
    if (two) out->dmin = f16_clamped((float)e);
    grid_set(out);
    return 1;
}

/* Sub-block k's fields re-chosen with d, dmin fixed: the least-squares scale (and
 * min) for the current q, rounded, and its neighbours; the best exact error wins
 * (the current fields are among the candidates, so it never loses). */
static double refit_sub(lay_ggml_grid *g, const lay_ggml_traits *t, int k, const float *x, const float *w, const double *mom, double cur)
{
    int lo, hi, sc0 = g->sc[k], mn0 = g->mn[k], min = has_min(g->type);
    field_range(g->type, &lo, &hi);
    float d = lay_f16_to_f32(g->d), dm = lay_f16_to_f32(g->dmin);
    if (d == 0) return cur;
    float s, b;
    double l2;
    const float *xs = x + k * t->sub, *ws = w + k * t->sub;
    /* the continuous optimum for this sub-block's current assignment */
    if (min) {
        float inv = g->a[k] != 0 ? 1.0f / g->a[k] : 0;
        aff_try(xs, ws, t->sub, (1 << t->bits) - 1, 1, g->b[k], inv, mom + 3 * k, &s, &b, &l2);
    } else {
        float inv = g->a[k] != 0 ? 1.0f / g->a[k] : 0;
        double sl, sxl, sll;
        lsums(xs, ws, t->sub, 0.0f, inv, (float)-t->center, (float)((1 << t->bits) - 1 - t->center), &sl, &sll, &sxl);
        s = sll > 0 ? (float)(sxl / sll) : 0, b = 0;
    }
    float flo = (float)-t->center, fhi = (float)((1 << t->bits) - 1 - t->center);
    int sc_c = clampi(rnd(s / d), lo, hi), mn_c = min && dm > 0 ? clampi(rnd(-b / dm), 0, hi) : mn0;
    int best_sc = sc0, best_mn = mn0, r = min ? 1 : 2;
    for (int ds = -r; ds <= r; ds++)
        for (int dmn = min ? -1 : 0; dmn <= (min ? 1 : 0); dmn++) {
            int sc = sc_c + ds, mn = mn_c + dmn;
            if (sc < lo || sc > hi || mn < 0 || mn > hi || (sc == sc0 && mn == mn0)) continue;
            float a = d * (float)sc, bb = min ? -(dm * (float)mn) : -0.0f;
            double e = grid_err(a, bb, flo, fhi, xs, ws, t->sub);
            if (e < cur) cur = e, best_sc = sc, best_mn = mn;
        }
    g->sc[k] = (int8_t)best_sc, g->mn[k] = (uint8_t)best_mn;
    grid_set_sub(g, k);
    return cur;
}

/* Coordinate descent on the exact error: super-scales refitted, then nudged by an
 * fp16 ulp, then (K-quants) every sub-block's fields; repeated while it gains. */
static void refine(lay_ggml_grid *g, const lay_ggml_traits *t, const float *x, const float *w)
{
    double e = blk_errf(g, t, x, w), mom[3 * LAY_GGML_MAX_SUB];
    for (int k = 0; is_k(g->type) && k < n_sub(t); k++) moments(x + k * t->sub, w + k * t->sub, t->sub, mom + 3 * k);
    int two = has_min(g->type) || g->type == LAY_GGML_Q4_1 || g->type == LAY_GGML_Q5_1;
    for (int it = 0; it < 8 && e > 0; it++) {
        double e0 = e, e2;
        lay_ggml_grid c;
        if (refit_super(g, t, x, w, &c) && (e2 = blk_errf(&c, t, x, w)) < e) *g = c, e = e2;
        for (int f = 0; f < (two ? 4 : 2); f++) {
            c = *g;
            uint16_t *h = f < 2 ? &c.d : &c.dmin;
            *h = f16_step(*h, f % 2 ? 1 : -1);
            grid_set(&c);
            if ((e2 = blk_errf(&c, t, x, w)) < e) *g = c, e = e2;
        }
        if (is_k(g->type)) {
            e = 0;
            for (int k = 0; k < n_sub(t); k++) e += refit_sub(g, t, k, x, w, mom, sub_errf(g, t, k, x, w));
            /* the super-scale moved by a few per cent, every sub-block's fields
               re-chosen for it */
            for (int f = -2; f <= 2 && it == 0; f++) {
                if (!f) continue;
                c = *g;
                c.d = f16_clamped(lay_f16_to_f32(g->d) * (1.0f + 0.01f * (float)f));
                grid_set(&c);
                e2 = 0;
                for (int k = 0; k < n_sub(t); k++) e2 += refit_sub(&c, t, k, x, w, mom, sub_errf(&c, t, k, x, w));
                if (e2 < e) *g = c, e = e2;
            }
        }
        if (!(e < e0 * (1 - 1e-7))) break;
    }
}

/* ==== Fitting: the header from the continuous sub-block fits ==== */

/* 32-value blocks: the header is the continuous fit rounded to fp16. */
static void fit_32(lay_ggml_grid *g, const lay_ggml_traits *t, const float *x, const float *w)
{
    double l2;
    if (g->type == LAY_GGML_Q4_1 || g->type == LAY_GGML_Q5_1) {
        float s, b;
        fit_aff(x, w, 32, (1 << t->bits) - 1, 0, &s, &b, &l2);
        g->d = f16_clamped(s), g->dmin = f16_clamped(b);
    } else {
        g->d = f16_clamped(fit_sym(x, w, 32, -t->center, (1 << t->bits) - 1 - t->center, &l2));
    }
    grid_set(g);
}

/* K-quants: sub-block scales (and mins) fitted, then quantized under fp16
 * super-scales, each field weighted by how much it moves the error. */
static void fit_k(lay_ggml_grid *g, const lay_ggml_traits *t, const float *x, const float *w)
{
    int ns = n_sub(t), lo, hi, min = has_min(g->type);
    float s[LAY_GGML_MAX_SUB] = {0}, m[LAY_GGML_MAX_SUB] = {0};
    float ws[LAY_GGML_MAX_SUB] = {0}, wm[LAY_GGML_MAX_SUB] = {0};
    field_range(g->type, &lo, &hi);
    for (int k = 0; k < ns; k++) {
        const float *xs = x + k * t->sub, *wk = w + k * t->sub;
        double l2, w1 = 0;
        for (int i = 0; i < t->sub; i++) w1 += wk[i];
        if (min) {
            float b;
            fit_aff(xs, wk, t->sub, (1 << t->bits) - 1, 1, &s[k], &b, &l2);
            m[k] = -b;
        } else {
            s[k] = fit_sym(xs, wk, t->sub, -t->center, (1 << t->bits) - 1 - t->center, &l2);
            m[k] = 0;
        }
        ws[k] = (float)l2, wm[k] = (float)w1;
    }
    double l2;
    float d = fit_sym(s, ws, ns, lo, hi, &l2), dm = min ? fit_sym(m, wm, ns, 0, hi, &l2) : 0;
    g->d = f16_clamped(d), g->dmin = f16_clamped(dm);
    float d16 = lay_f16_to_f32(g->d), dm16 = lay_f16_to_f32(g->dmin);
    for (int k = 0; k < ns; k++) {
        g->sc[k] = (int8_t)(d16 != 0 ? clampi(rnd(s[k] / d16), lo, hi) : 0);
        g->mn[k] = (uint8_t)(dm16 != 0 ? clampi(rnd(m[k] / dm16), 0, hi) : 0);
    }
    grid_set(g);
}

/* ggml's plain round-to-nearest header: each (sub-)block by its min and max (with
 * mins) or its largest magnitude, the sub-block fields by the largest. The fit
 * starts from it when it is better, so the fit never loses to it. */
static void rtn_header(lay_ggml_grid *g, const lay_ggml_traits *t, const float *x)
{
    int ns = n_sub(t), lo, hi, aff = has_min(g->type) || g->type == LAY_GGML_Q4_1 || g->type == LAY_GGML_Q5_1;
    float s[LAY_GGML_MAX_SUB] = {0}, m[LAY_GGML_MAX_SUB] = {0}, smax = 0, mmax = 0;
    for (int k = 0; k < ns; k++) {
        float mn = INFINITY, mx = -INFINITY, vmax = 0;
        for (int i = k * t->sub; i < (k + 1) * t->sub; i++) {
            mn = fminf(mn, x[i]), mx = fmaxf(mx, x[i]);
            if (fabsf(x[i]) > fabsf(vmax)) vmax = x[i];
        }
        if (has_min(g->type)) mn = fminf(mn, 0.0f);
        s[k] = aff ? (mx - mn) / (float)((1 << t->bits) - 1) : vmax / (float)-t->center, m[k] = -mn;
        if (fabsf(s[k]) > fabsf(smax)) smax = s[k];
        mmax = fmaxf(mmax, m[k]);
    }
    if (!is_k(g->type)) {
        g->d = f16_clamped(s[0]), g->dmin = f16_clamped(-m[0]);
    } else {
        field_range(g->type, &lo, &hi);
        g->d = f16_clamped(lo < 0 ? smax / (float)lo : smax / (float)hi), g->dmin = f16_clamped(mmax / (float)hi);
        float d16 = lay_f16_to_f32(g->d), dm16 = lay_f16_to_f32(g->dmin);
        for (int k = 0; k < ns; k++) {
            g->sc[k] = (int8_t)(d16 != 0 ? clampi(rnd(s[k] / d16), lo, hi) : 0);
            g->mn[k] = (uint8_t)(has_min(g->type) && dm16 != 0 ? clampi(rnd(m[k] / dm16), 0, hi) : 0);
        }
    }
    grid_set(g);
}

/* The weights of a block (see the top of the file). */
static void block_weights(const float *x, const float *imp, int n, float *w)
{
    double sw = 0, s2 = 0;
    if (imp) {
        for (int i = 0; i < n; i++) w[i] = imp[i] > 0 && imp[i] < INFINITY ? imp[i] : 0.0f, sw += w[i];
        if (sw > 0) return;
    }
    for (int i = 0; i < n; i++) s2 += (double)x[i] * x[i];
    s2 /= n;
    for (int i = 0; i < n; i++) w[i] = (float)sqrt(s2 + (double)x[i] * x[i]);
    for (int i = 0; i < n; i++)
        if (!(w[i] > 0)) w[i] = 1.0f; /* an all-zero block */
}

void lay_ggml_fit(int type, const float *x, const float *imp, lay_ggml_grid *g)
{
    const lay_ggml_traits *t = lay_ggml_traits_of(type);
    assert(t && x && g);
    float w[256];
    block_weights(x, imp, t->block, w);
    memset(g, 0, sizeof *g);
    g->type = type;
    if (is_k(type)) fit_k(g, t, x, w);
    else fit_32(g, t, x, w);
    lay_ggml_grid r = {.type = type};
    rtn_header(&r, t, x);
    if (blk_errf(&r, t, x, w) < blk_errf(g, t, x, w)) *g = r;
    refine(g, t, x, w);
    if (blk_err(&r, t, x, w) < blk_err(g, t, x, w)) *g = r;
}

void lay_ggml_quantize_row(int type, const float *x, const float *imp, uint8_t *dst, int64_t n)
{
    const lay_ggml_traits *t = lay_ggml_traits_of(type);
    assert(t && n % t->block == 0);
    lay_ggml_grid g;
    uint8_t q[256];
    for (int64_t i = 0; i < n; i += t->block, dst += t->bytes) {
        lay_ggml_fit(type, x + i, imp ? imp + i : NULL, &g);
        for (int v = 0; v < t->block; v++) q[v] = (uint8_t)lay_ggml_quant(&g, v / t->sub, t->bits, t->center, x[i + v]);
        lay_ggml_encode(&g, q, dst);
    }
}

int lay_ggml_option(int type, lay_option *o)
{
    const lay_ggml_traits *t = lay_ggml_traits_of(type);
    if (!t) return -1;
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", t->name);
    o->bits_lo = o->bits_hi = (uint8_t)t->bits;
    o->group = t->block;
    o->scale_fmt = (lay_scale_fmt)(LAY_FMT_GGML + type);
    return 0;
}

/* ==== The 32-wide types in bitplan's packed layout ==== */

int lay_ggml_packable(int type)
{
    const lay_ggml_traits *t = lay_ggml_traits_of(type);
    return t && t->block == LAY_CHUNK;
}

int lay_ggml_has_min(int type) { return type == LAY_GGML_Q4_1 || type == LAY_GGML_Q5_1; }

int lay_ggml_center(int type)
{
    const lay_ggml_traits *t = lay_ggml_traits_of(type);
    return t ? t->center : 0;
}

void lay_ggml_to_packed(int type, const uint8_t *blocks, int64_t n, uint8_t *values, uint16_t *scales, uint16_t *mins)
{
    const lay_ggml_traits *t = lay_ggml_traits_of(type);
    assert(lay_ggml_packable(type) && n % LAY_CHUNK == 0);
    lay_ggml_grid g;
    uint8_t q[LAY_CHUNK];
    for (int64_t b = 0; b < n / LAY_CHUNK; b++, blocks += t->bytes, values += t->bits * LAY_CHUNK / 8) {
        parse_block(type, blocks, &g, q);
        lay_pack_chunk(t->bits, q, values);
        scales[b] = g.d;
        if (mins) mins[b] = g.dmin;
    }
}

void lay_ggml_from_packed(int type, const uint8_t *values, const uint16_t *scales, const uint16_t *mins, int64_t n,
                          uint8_t *blocks)
{
    const lay_ggml_traits *t = lay_ggml_traits_of(type);
    assert(lay_ggml_packable(type) && n % LAY_CHUNK == 0);
    lay_ggml_grid g;
    uint8_t q[LAY_CHUNK];
    for (int64_t b = 0; b < n / LAY_CHUNK; b++, blocks += t->bytes, values += t->bits * LAY_CHUNK / 8) {
        memset(&g, 0, sizeof g);
        g.type = type, g.d = scales[b], g.dmin = mins && lay_ggml_has_min(type) ? mins[b] : 0;
        lay_unpack_chunk(t->bits, values, q);
        lay_ggml_encode(&g, q, blocks);
    }
}
