/*
 * runtime/qkernels.c — the portable kernels over packed weights (plain C, any CPU),
 * the activation quantizer that defines the int8 activations, and the dispatch that
 * picks the AVX2 or AVX-512 table after a run-time CPU check. Must never allocate,
 * print, or call a SIMD table the CPU has not been checked for.
 */
#include "qkernels.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ==== Activation quantizer (the definition) ==== */

void qk_quant_ref(const float *xp, int64_t cols, int64_t group, int8_t *xq, float *xd, int32_t *xs)
{
    for (int64_t j0 = 0, g = 0; j0 < cols; j0 += group, g++) {
        int64_t j1 = j0 + group < cols ? j0 + group : cols;
        float amax = 0.0f;
        for (int64_t j = j0; j < j1; j++) amax = fabsf(xp[j]) > amax ? fabsf(xp[j]) : amax;
        float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        int32_t sum = 0;
        for (int64_t j = j0; j < j1; j++) {
            int v = (int)nearbyintf(xp[j] * id);   /* round half to even, as cvtps2dq */
            xq[j] = (int8_t)v;
            sum += v;
        }
        xd[g] = amax / 127.0f;
        xs[g] = sum;
    }
}

/* ==== Row preparation ==== */

static void prep_generic(const uint16_t *s, const uint8_t *z, const float *xd, const int32_t *xs,
                         int64_t ng, int nb, float *sd, float *corr)
{
    for (int k = 0; k < nb; k++) {
        float c = 0.0f;
        for (int64_t g = 0; g < ng; g++) {
            float m = lay_f16_to_f32(s[g]) * xd[k * ng + g];
            sd[k * ng + g] = m;
            c += m * (float)((int32_t)z[g] * xs[k * ng + g]);
        }
        corr[k] = c;
    }
}

/* ==== Chunk decoding (plain, per the plane table in layout/layout.h) ==== */

/* Adds plane p (4, 2 or 1 bits) of 32 values, shifted left by shift, into q. */
static inline void plane_add(int p, int shift, const uint8_t *src, uint8_t *q)
{
    if (p == 4)
        for (int k = 0; k < 16; k++) {
            q[k] |= (uint8_t)((src[k] & 15u) << shift);
            q[k + 16] |= (uint8_t)((src[k] >> 4) << shift);
        }
    else if (p == 2)
        for (int k = 0; k < 8; k++)
            for (int i = 0; i < 4; i++) q[k + 8 * i] |= (uint8_t)(((src[k] >> (2 * i)) & 3u) << shift);
    else
        for (int k = 0; k < 32; k++) q[k] |= (uint8_t)(((src[k >> 3] >> (k & 7)) & 1u) << shift);
}

/* One chunk of width bits at src into q[32]. */
static inline void chunk_decode(int bits, const uint8_t *src, uint8_t *q)
{
    for (int i = 0; i < 32; i++) q[i] = bits == 8 ? src[i] : 0;
    if (bits == 8) return;
    int shift = 0;
    for (int p = 4; p >= 1; p >>= 1) {
        if (!(bits & p)) continue;
        plane_add(p, shift, src, q);
        src += p * 4;
        shift += p;
    }
}

/* ==== Dot products ==== */

/* raw 1: v holds unpacked bytes (qk_unpack_fn), 32 a chunk, instead of planes. */
static inline void dot_generic(int bits, int raw, const uint8_t *v, int64_t ng, int64_t gch, const int8_t *xq,
                               int64_t xq_stride, const float *sd, int64_t sd_stride, float *acc, int nb)
{
    assert(nb >= 1 && nb <= QK_NB);
    uint8_t q[32];
    for (int64_t g = 0; g < ng; g++) {
        int32_t dot[QK_NB] = {0};
        for (int64_t c = 0; c < gch; c++, v += raw ? 32 : bits * 4) {
            if (raw) memcpy(q, v, 32);
            else chunk_decode(bits, v, q);
            const int8_t *x = xq + (g * gch + c) * 32;
            for (int k = 0; k < nb; k++)
                for (int i = 0; i < 32; i++) dot[k] += (int32_t)q[i] * x[k * xq_stride + i];
        }
        for (int k = 0; k < nb; k++) acc[k] += sd[k * sd_stride + g] * (float)dot[k];
    }
}

#define DOT_WIDTH(b)                                                                                   \
    static void dot##b##_generic(const uint8_t *v, int64_t ng, int64_t gch, const int8_t *xq,          \
                                 int64_t xq_stride, const float *sd, int64_t sd_stride, float *acc,    \
                                 int nb)                                                               \
    {                                                                                                  \
        dot_generic(b, 0, v, ng, gch, xq, xq_stride, sd, sd_stride, acc, nb);                          \
    }                                                                                                  \
    static void dot_raw##b##_generic(const uint8_t *v, int64_t ng, int64_t gch, const int8_t *xq,      \
                                     int64_t xq_stride, const float *sd, int64_t sd_stride, float *acc,\
                                     int nb)                                                           \
    {                                                                                                  \
        dot_generic(b, 1, v, ng, gch, xq, xq_stride, sd, sd_stride, acc, nb);                          \
    }
DOT_WIDTH(2)
DOT_WIDTH(3)
DOT_WIDTH(4)
DOT_WIDTH(5)
DOT_WIDTH(6)
DOT_WIDTH(7)
DOT_WIDTH(8)

void qk_unpack_ref(int bits, int block, const uint8_t *src, int64_t nchunks, uint8_t *out)
{
    uint8_t q[QK_MAX_BLOCK * LAY_CHUNK];
    assert(block >= 1 && block <= QK_MAX_BLOCK && nchunks % block == 0);
    for (int64_t c0 = 0; c0 < nchunks; c0 += block, out += block * LAY_CHUNK) {
        for (int c = 0; c < block; c++) lay_unpack_chunk(bits, src + (c0 + c) * bits * 4, q + c * LAY_CHUNK);
        for (int p = 0; p < block * LAY_CHUNK; p++) out[p] = q[qk_block_pos(block, p)];
    }
}

static void decode_generic(int bits, const uint8_t *src, float s, float z, float *out)
{
    uint8_t q[LAY_CHUNK];
    lay_unpack_chunk(bits, src, q);
    for (int i = 0; i < LAY_CHUNK; i++) out[i] = s * ((float)q[i] - z);
}

/* ==== Input rotation ==== */

static void rotate_generic(int rot, const float *sign, float norm, float *v, int64_t cols)
{
    for (int64_t j = 0; j < cols; j++) v[j] *= sign[j];
    for (int64_t j0 = 0; j0 < cols; j0 += rot) {
        float *b = v + j0;
        for (int h = 1; h < rot; h *= 2)
            for (int i0 = 0; i0 < rot; i0 += 2 * h)
                for (int i = i0; i < i0 + h; i++) {
                    float x = b[i], y = b[i + h];
                    b[i] = x + y, b[i + h] = x - y;
                }
    }
    for (int64_t j = 0; j < cols; j++) v[j] *= norm;
}

/* ==== Lookup tables (the plain reference) ==== */

void qk_lut_tables_ref(const int8_t *xq, int64_t cols, uint8_t *tab)
{
    for (int64_t c = 0; c < cols / 4; c++, tab += 32)
        for (int m = 0; m < 16; m++) {
            int t = 0;
            for (int k = 0; k < 4; k++) t += (m >> k & 1) * xq[4 * c + k];
            tab[m] = (uint8_t)(t & 0xff);
            tab[16 + m] = (uint8_t)((t >> 8) & 0xff);
        }
}

static inline int lut_entry(const uint8_t *t, int m) { return (int16_t)(t[m] | t[16 + m] << 8); }

void qk_lut_dot_ref(int bits, const uint8_t *w, int64_t ng, int64_t gcols, const uint8_t *tab, const uint16_t *s,
                    const uint8_t *z, const float *xd, const int32_t *xs, float *acc)
{
    int64_t np = gcols / 8;
    for (int64_t g = 0; g < ng; g++, tab += gcols * 8) {
        int32_t dot[QK_LUT_ROWS] = {0};
        for (int i = 0; i < bits; i++)
            for (int64_t p = 0; p < np; p++, w += QK_LUT_ROWS)
                for (int r = 0; r < QK_LUT_ROWS; r++)
                    dot[r] += (lut_entry(tab + 64 * p, w[r] & 15) + lut_entry(tab + 64 * p + 32, w[r] >> 4)) * (1 << i);
        for (int r = 0; r < QK_LUT_ROWS; r++) {
            int32_t d = dot[r] - (int32_t)z[g * QK_LUT_ROWS + r] * xs[g];
            acc[r] += lay_f16_to_f32(s[g * QK_LUT_ROWS + r]) * xd[g] * (float)d;
        }
    }
}

/* Bit i of each of 8 bytes (byte k at bits 8k..8k+7 of v) as one byte, byte k's bit at bit k:
 * the product puts bit k of the masked word at bit 56 + k, with no carries below. */
static inline uint8_t gather_bits(uint64_t v, int i)
{
    return (uint8_t)((((v >> i) & 0x0101010101010101ull) * 0x0102040810204080ull) >> 56);
}

void qk_lut_pack_ref(int bits, int64_t gcols, const uint8_t *src, int64_t stride, uint8_t *dst)
{
    int64_t np = gcols / 8;
    uint8_t q[LAY_CHUNK];
    for (int r = 0; r < QK_LUT_ROWS; r++)
        for (int64_t c = 0; c < gcols / LAY_CHUNK; c++) {
            lay_unpack_chunk(bits, src + r * stride + c * bits * 4, q);
            for (int p = 0; p < LAY_CHUNK / 8; p++) {
                uint64_t v = 0;
                for (int k = 0; k < 8; k++) v |= (uint64_t)q[8 * p + k] << (8 * k);
                for (int i = 0; i < bits; i++) dst[(i * np + c * (LAY_CHUNK / 8) + p) * QK_LUT_ROWS + r] = gather_bits(v, i);
            }
        }
}

/* ==== Tiles of 32 rows (qkernels.h, "Batches in tiles of 32 rows") ==== */

void qk_tile_pack_ref(const uint8_t *raw, int64_t raw_stride, const uint8_t *z, int64_t z_stride, const uint16_t *s,
                      const uint16_t *m, int64_t s_stride, const qk_tile *t)
{
    const int64_t cols = t->cols, ng = t->ng, meta = ng * QK_TILE_ROWS;
    memset(t->w, 0, (size_t)(cols * QK_TILE_ROWS));
    memset(t->bias, 0, (size_t)meta * sizeof *t->bias);
    memset(t->ws, 0, (size_t)meta * sizeof *t->ws);
    if (m) memset(t->wm, 0, (size_t)meta * sizeof *t->wm);
    for (int r = 0; r < t->nr; r++)
        for (int64_t g = 0; g < ng; g++) {
            int64_t j1 = (g + 1) * t->group < cols ? (g + 1) * t->group : cols;
            int zg = z[r * z_stride + g];
            int32_t sum = 0;
            for (int64_t j = g * t->group; j < j1; j++) {
                int v = raw[r * raw_stride + j] - zg;
                t->w[(j / 4 * QK_TILE_ROWS + r) * 4 + j % 4] = (int8_t)v;
                sum += v;
            }
            t->bias[g * QK_TILE_ROWS + r] = -128 * sum;
            t->ws[g * QK_TILE_ROWS + r] = lay_f16_to_f32(s[r * s_stride + g]);
            if (m) t->wm[g * QK_TILE_ROWS + r] = lay_f16_to_f32(m[r * s_stride + g]);
        }
}

void qk_tile_unsigned(int8_t *xq, int64_t n)
{
    uint8_t *u = (uint8_t *)xq;
    for (int64_t j = 0; j < n; j++) u[j] ^= 0x80; /* two's complement + 128 */
}

void qk_tile_ref(const qk_tile *t, const uint8_t *xu, const float *xd, const int32_t *xs, int n, float *y,
                 int64_t y_stride)
{
    const int64_t cols = t->cols, ng = t->ng;
    for (int k = 0; k < n; k++)
        for (int r = 0; r < t->nr; r++) {
            float f = 0.0f;
            for (int64_t g = 0; g < ng; g++) {
                int64_t j1 = (g + 1) * t->group < cols ? (g + 1) * t->group : cols;
                int32_t a = t->bias[g * QK_TILE_ROWS + r];
                for (int64_t j = g * t->group; j < j1; j++)
                    a += t->w[(j / 4 * QK_TILE_ROWS + r) * 4 + j % 4] * xu[k * cols + j];
                f = fmaf((float)a, t->ws[g * QK_TILE_ROWS + r] * xd[k * ng + g], f);
                if (t->wm) f = fmaf(t->wm[g * QK_TILE_ROWS + r], xd[k * ng + g] * (float)xs[k * ng + g], f);
            }
            y[k * y_stride + r] = f;
        }
}

const qk_kernels qk_generic = {
    .name = "generic",
    .quant = qk_quant_ref,
    .prep = prep_generic,
    .dot = { [2] = dot2_generic, [3] = dot3_generic, [4] = dot4_generic, [5] = dot5_generic,
             [6] = dot6_generic, [7] = dot7_generic, [8] = dot8_generic },
    .dot_raw = { [2] = dot_raw2_generic, [3] = dot_raw3_generic, [4] = dot_raw4_generic, [5] = dot_raw5_generic,
                 [6] = dot_raw6_generic, [7] = dot_raw7_generic, [8] = dot_raw8_generic },
    .unpack = qk_unpack_ref,
    .decode = decode_generic,
    .rotate = rotate_generic,
    .lut_pack = qk_lut_pack_ref,     /* only under QK_LUT_ALL: slower than dot in plain C */
    .lut_tables = qk_lut_tables_ref,
    .lut_dot = qk_lut_dot_ref,
};

/* ==== Dispatch ==== */

static int cpu_has(qk_isa isa)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (isa == QK_ISA_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("bmi2");
    if (isa == QK_ISA_AVX512)
        return cpu_has(QK_ISA_AVX2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vnni");
#endif
    return isa == QK_ISA_GENERIC;
}

const qk_kernels *qk_get(qk_isa isa)
{
    if (isa == QK_ISA_AUTO) {
        const qk_kernels *k = qk_get(QK_ISA_AVX512);
        if (!k) k = qk_get(QK_ISA_AVX2);
        return k ? k : &qk_generic;
    }
    if (!cpu_has(isa)) return NULL;
    return isa == QK_ISA_AVX512 ? &qk_avx512 : isa == QK_ISA_AVX2 ? &qk_avx2 : &qk_generic;
}

static qk_isa forced = QK_ISA_AUTO;
static int forced_set;
static int lut_mode_set;
static qk_lut_mode lut_mode;

void qk_force_lut(qk_lut_mode mode) { lut_mode = mode, lut_mode_set = 1; }

/* BITPLAN_LUT=0 in the environment turns the lookup kernels off and BITPLAN_LUT=all
 * takes them at every width, to measure either end to end; qk_force_lut overrides. */
static qk_lut_mode lut_mode_now(void)
{
    if (!lut_mode_set) {
        const char *v = getenv("BITPLAN_LUT");
        lut_mode = v && !strcmp(v, "0") ? QK_LUT_OFF : v && !strcmp(v, "all") ? QK_LUT_ALL : QK_LUT_AUTO;
        lut_mode_set = 1;
    }
    return lut_mode;
}

int qk_lut_wanted(const qk_kernels *k, int bits, int64_t cols)
{
    qk_lut_mode mode = lut_mode_now();
    if (!k->lut_dot || mode == QK_LUT_OFF) return 0;
    return mode == QK_LUT_ALL || cols <= k->lut_cols[bits];
}

/* BITPLAN_ISA=generic, avx2 or avx512 in the environment takes that set where the
 * CPU has it (to measure one set end to end on a machine that has a wider one);
 * qk_force overrides. */
static qk_isa isa_now(void)
{
    if (!forced_set) {
        const char *v = getenv("BITPLAN_ISA");
        qk_isa isa = !v                    ? QK_ISA_AUTO
                     : !strcmp(v, "generic") ? QK_ISA_GENERIC
                     : !strcmp(v, "avx2")    ? QK_ISA_AVX2
                     : !strcmp(v, "avx512")  ? QK_ISA_AVX512
                                             : QK_ISA_AUTO;
        forced = qk_get(isa) ? isa : QK_ISA_AUTO;
        forced_set = 1;
    }
    return forced;
}

const qk_kernels *qk_active(void) { return qk_get(isa_now()); }

int qk_force(qk_isa isa)
{
    if (!qk_get(isa)) return -1;
    forced = isa, forced_set = 1;
    return 0;
}
