/*
 * runtime/cuda/decode.cuh — the index arithmetic and the value decoding of the
 * CUDA kernels for packed tensors (layout/layout.h), written once as plain C that
 * compiles both as CUDA __host__ __device__ code and as C11, so that the host
 * tests (tests/test_cuda.c) run exactly the code the kernels run.
 *
 * What it must never do: allocate, print, or depend on anything but layout/layout.h.
 * Everything below is closed form in (tensor geometry, tile, lane).
 *
 * ==== Runs, tiles, lanes ====
 *
 * A row of a packed tensor is n_chunks = cols / 32 chunks of 32 values. The first
 * n_hi chunks (the hi groups, all full width) are bits_hi wide, the rest bits_lo,
 * so a row is at most two runs of uniform width and chunk c starts at word
 *
 *     c < n_hi:  c * bits_hi             (a chunk of width b is b 32-bit words)
 *     else:      n_hi * bits_hi + (c - n_hi) * bits_lo
 *
 * A warp works on a tile: up to 32 consecutive chunks of one run, one chunk per
 * lane. Run hi is cut into t_hi = ceil(n_hi / 32) tiles, run lo into
 * ceil(n_lo / 32); the last tile of a run holds k = 1..32 chunks.
 *
 * ==== The load-time repack (words of one tile) ====
 *
 * In the file, a tile of k chunks of width b is k * b words, chunk after chunk.
 * Lane l reading its own chunk would read b words spaced b words apart from its
 * neighbours: every load instruction of the warp would touch b times more cache
 * lines than it uses. At upload the words of every tile are transposed, in place
 * within the tile's span (no size change, rows keep their length):
 *
 *     file order (k = 4 chunks, b = 3 words each):
 *         c0w0 c0w1 c0w2 | c1w0 c1w1 c1w2 | c2w0 c2w1 c2w2 | c3w0 c3w1 c3w2
 *     device order:
 *         c0w0 c1w0 c2w0 c3w0 | c0w1 c1w1 c2w1 c3w1 | c0w2 c1w2 c2w2 c3w2
 *
 *     file word  tile_word0 + l * b + w   ->   device word  tile_word0 + w * k + l
 *
 * so load w of the warp reads k consecutive words (one 128-byte line when k = 32).
 *
 * ==== The activations of a tile ====
 *
 * A lane needs the 32 activations of its chunk in stored (act-order) column order,
 * read as eight float4 "quads" (values 4t..4t+3, t = 0..7). They are gathered per
 * product into an interleaved vector xi with the same transposition, by float4:
 *
 *     xi[c0 * 32 + (t * k + l) * 4 + i] = x[perm[(c0 + l) * 32 + 4 t + i]]
 *
 * (c0 the tile's first chunk), so quad t of the warp is k consecutive float4. The
 * map from xi position to original column is xmap[], built once per tensor.
 *
 * ==== Decoding a quad ====
 *
 * Quad t of a chunk (values 4t..4t+3) is read from each bit plane as one 32-bit
 * word holding one value per byte (see the plane table in layout/layout.h):
 *
 *     plane 4: (p4[t & 3] >> 4 (t >> 2)) & 0x0F0F0F0F
 *     plane 2: (p2[t & 1] >> 2 (t >> 1)) & 0x03030303
 *     plane 1: (((p1 >> 4 t) & 0xF) * 0x00204081) & 0x01010101   (4 bits to 4 bytes)
 *     plane 8: p8[t]
 *
 * and the planes are OR-ed with the shift of the bits below them. Byte i becomes
 * the float 2^23 + q with one byte permute (0x4B000000 is 2^23), and subtracting
 * 2^23 + z gives q - z exactly.
 *
 * ==== Zeros and mins ====
 *
 * The zero z of a group is stored (LAY_SCALE_F16_Z8) or else 2^(b - 1): bitplan's
 * symmetric format, and the center of the ggml types Q4_0, Q5_0 and Q8_0. Q4_1 and
 * Q5_1 have center 0 and add an fp16 min m per group: w = s (q - 0) + m. The
 * matrix-vector product adds the min per chunk, as m times the sum of the chunk's
 * activations next to s times the dot product with q - z; the kernels are
 * specialized on whether a tensor has mins, so that the others pay nothing for it.
 */
#ifndef BITPLAN_RUNTIME_CUDA_DECODE_CUH
#define BITPLAN_RUNTIME_CUDA_DECODE_CUH

#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "layout/layout.h"
#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
#define RTC_HD static __host__ __device__ __forceinline__
#else
#define RTC_HD static inline
#endif
#ifdef __CUDA_ARCH__ /* the device pass; host compilers do not know the pragma */
#define RTC_UNROLL _Pragma("unroll")
#else
#define RTC_UNROLL
#endif

#define RTC_TILE 32               /* chunks per tile: one per lane */
#define RTC_MAGIC 0x4B000000u     /* the float 2^23 */
#define RTC_MAGIC_F 8388608.0f

/* ==== Geometry ==== */

/* A packed tensor's shape as the kernels see it. */
typedef struct {
    int32_t rows, cols;
    int32_t n_chunks;     /* cols / 32 */
    int32_t gch;          /* chunks per group (group / 32) */
    int32_t ng;           /* groups per row */
    int32_t n_hi;         /* chunks in the hi run (0 for a plain option) */
    int32_t bits_hi, bits_lo;
    int32_t t_hi;         /* tiles of the hi run */
    int32_t n_tiles;      /* tiles per row */
    int32_t row_words;    /* 32-bit words per row (lay_row_bytes / 4) */
    int32_t sym;          /* 1: no stored zeros (symmetric formats, ggml types) */
    int32_t has_mins;     /* 1: a stored fp16 min per group, added, and zero 0 (Q4_1, Q5_1) */
} rtc_geom;

/* One tile of a row: chunks c0 .. c0 + k - 1, all `bits` wide, starting at word
 * word0 of the row. */
typedef struct {
    int32_t c0, k, bits, word0;
} rtc_tile;

/* Fills g from a packed tensor's option and shape (host side). */
static inline void rtc_geom_init(rtc_geom *g, const lay_packed *p)
{
    const lay_option *o = &p->opt;
    int64_t nhg = lay_n_hi_groups(o, p->cols), gch = o->group / LAY_CHUNK, nch = p->cols / LAY_CHUNK;
    int64_t nhi = nhg * gch < nch ? nhg * gch : nch;
    int64_t nlo = nch - nhi;
    g->rows = (int32_t)p->rows;
    g->cols = (int32_t)p->cols;
    g->n_chunks = (int32_t)nch;
    g->gch = (int32_t)gch;
    g->ng = (int32_t)lay_n_groups(o, p->cols);
    g->n_hi = (int32_t)nhi;
    g->bits_hi = o->bits_hi;
    g->bits_lo = o->bits_lo;
    g->t_hi = (int32_t)((nhi + RTC_TILE - 1) / RTC_TILE);
    g->n_tiles = g->t_hi + (int32_t)((nlo + RTC_TILE - 1) / RTC_TILE);
    g->row_words = (int32_t)(lay_row_bytes(o, p->cols) / 4);
    g->sym = o->scale_fmt != LAY_SCALE_F16_Z8;
    g->has_mins = lay_ggml_has_min(lay_option_ggml(o));
}

RTC_HD rtc_tile rtc_tile_at(const rtc_geom *g, int32_t t)
{
    rtc_tile x;
    if (t < g->t_hi) {
        x.c0 = RTC_TILE * t;
        x.k = g->n_hi - x.c0 < RTC_TILE ? g->n_hi - x.c0 : RTC_TILE;
        x.bits = g->bits_hi;
        x.word0 = x.c0 * g->bits_hi;
    } else {
        int32_t u = t - g->t_hi;
        x.c0 = g->n_hi + RTC_TILE * u;
        x.k = g->n_chunks - x.c0 < RTC_TILE ? g->n_chunks - x.c0 : RTC_TILE;
        x.bits = g->bits_lo;
        x.word0 = g->n_hi * g->bits_hi + RTC_TILE * u * g->bits_lo;
    }
    return x;
}

/* Device word (within the row) of word w of lane l's chunk in tile x. */
RTC_HD int32_t rtc_word_index(const rtc_tile *x, int32_t lane, int32_t w) { return x->word0 + w * x->k + lane; }

/* The same word's position in the file's order. */
RTC_HD int32_t rtc_file_word_index(const rtc_tile *x, int32_t lane, int32_t w) { return x->word0 + lane * x->bits + w; }

/* Position in xi of value 4t + i of lane l's chunk in tile x (see the header). */
RTC_HD int32_t rtc_xi_index(const rtc_tile *x, int32_t lane, int32_t t, int32_t i)
{
    return x->c0 * LAY_CHUNK + (t * x->k + lane) * 4 + i;
}

/* ==== Decoding ==== */

/* One quad (values 4t..4t+3, one per byte) of each plane. */
RTC_HD uint32_t rtc_quad_plane4(const uint32_t *p4, int t) { return (p4[t & 3] >> (4 * (t >> 2))) & 0x0F0F0F0Fu; }
RTC_HD uint32_t rtc_quad_plane2(const uint32_t *p2, int t) { return (p2[t & 1] >> (2 * (t >> 1))) & 0x03030303u; }
RTC_HD uint32_t rtc_quad_plane1(uint32_t p1, int t) { return (((p1 >> (4 * t)) & 0xFu) * 0x00204081u) & 0x01010101u; }

/* decode_quad: the `bits` words of one chunk (planes in file order) to the four
 * values 4t..4t+3, byte i holding value 4t + i. */
RTC_HD uint32_t rtc_decode_quad(const uint32_t *wd, int bits, int t)
{
    if (bits == 8) return wd[t];
    uint32_t q = 0;
    int shift = 0, w = 0;
    if (bits & 4) { q = rtc_quad_plane4(wd, t); shift = 4; w = 4; }
    if (bits & 2) { q |= rtc_quad_plane2(wd + w, t) << shift; shift += 2; w += 2; }
    if (bits & 1) q |= rtc_quad_plane1(wd[w], t) << shift;
    return q;
}

/* The byte permute of PTX prmt (default mode): byte n of the result is byte
 * (s >> 4n) & 7 of the 8-byte value {y, x} (0..3 from x, 4..7 from y). */
RTC_HD uint32_t rtc_prmt(uint32_t x, uint32_t y, uint32_t s)
{
#ifdef __CUDA_ARCH__
    return __byte_perm(x, y, s);
#else
    uint64_t v = (uint64_t)y << 32 | x;
    uint32_t r = 0;
    for (int n = 0; n < 4; n++) r |= (uint32_t)((v >> (8 * ((s >> (4 * n)) & 7))) & 0xFF) << (8 * n);
    return r;
#endif
}

RTC_HD float rtc_as_float(uint32_t u)
{
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, 4);
    return f;
#endif
}

/* 2^23 + (byte i of quad), as a float: one permute. */
RTC_HD float rtc_quad_magic(uint32_t q, int i) { return rtc_as_float(rtc_prmt(q, RTC_MAGIC, 0x7540u | (uint32_t)i)); }

/* Loads 4 floats (16-byte aligned on the device). */
RTC_HD void rtc_load4(const float *p, float *o)
{
#ifdef __CUDA_ARCH__
    float4 v = __ldg((const float4 *)p);
    o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w;
#else
    o[0] = p[0], o[1] = p[1], o[2] = p[2], o[3] = p[3];
#endif
}

/* ==== The unit of work of the matrix-vector kernel ====
 *
 * chunk_dot: R rows' chunks against NB activation rows, for one lane of one tile.
 * wd[r * 8 + w] is word w of row r's chunk; m[r] = 2^23 + zero of that chunk's
 * group; x points at this lane's quad 0 of activation row 0 in xi, quads are
 * quad_step floats apart, activation rows batch_stride floats apart. Adds
 * sum_v x[b][v] (q[r][v] - z[r]) to acc[r * NB + b] (the scale is applied by the
 * caller, once per chunk) and, unless xsum is NULL, sum_v x[b][v] to xsum[b] (for
 * the mins). R, NB, bits and whether xsum is NULL are constants after inlining.
 */
RTC_HD void rtc_chunk_dot(const uint32_t *wd, int R, int NB, int bits, const float *m, const float *x,
                          int32_t quad_step, int32_t batch_stride, float *acc, float *xsum)
{
    RTC_UNROLL
    for (int t = 0; t < 8; t++) {
        float xv[4 * 4];
        RTC_UNROLL
        for (int b = 0; b < NB; b++) rtc_load4(x + (int64_t)b * batch_stride + t * quad_step, xv + 4 * b);
        if (xsum) {
            RTC_UNROLL
            for (int b = 0; b < NB; b++) xsum[b] += (xv[4 * b] + xv[4 * b + 1]) + (xv[4 * b + 2] + xv[4 * b + 3]);
        }
        RTC_UNROLL
        for (int r = 0; r < R; r++) {
            uint32_t q = rtc_decode_quad(wd + 8 * r, bits, t);
            float v[4];
            RTC_UNROLL
            for (int i = 0; i < 4; i++) v[i] = rtc_quad_magic(q, i) - m[r];
            RTC_UNROLL
            for (int b = 0; b < NB; b++) {
                float a = acc[r * NB + b];
                RTC_UNROLL
                for (int i = 0; i < 4; i++) a += xv[4 * b + i] * v[i];
                acc[r * NB + b] = a;
            }
        }
    }
}

/* Zero of the group holding chunk c of row `row` (layout.h's lay_zero_at; see
 * "Zeros and mins" above). has_mins is g->has_mins, an argument so that a kernel
 * specialized on it passes a constant: a run-time test here costs the other
 * kernels registers. */
RTC_HD int rtc_zero_of(const rtc_geom *g, const uint8_t *zeros, int32_t row, int32_t c, int bits, int has_mins)
{
    if (has_mins) return 0;
    return g->sym ? 1 << (bits - 1) : zeros[(int64_t)row * g->ng + c / g->gch];
}

/* Index of the scale (and min) of the group holding chunk c of row `row`. */
RTC_HD int64_t rtc_scale_index(const rtc_geom *g, int32_t row, int32_t c) { return (int64_t)row * g->ng + c / g->gch; }

/* The weight of qm = 2^23 + q (rtc_quad_magic) in a group of scale s and m = 2^23 +
 * zero, plus the min mn when has_min: s (q - z) + mn, rounded as layout.c's
 * lay_packed_dequant rounds it, the product before the add (nvcc would fuse the two
 * into one FMA, whose single rounding can differ in the last bit). */
RTC_HD float rtc_weight(float qm, float m, float s, int has_min, float mn)
{
#ifdef __CUDA_ARCH__
    return has_min ? __fadd_rn(__fmul_rn(s, qm - m), mn) : s * (qm - m);
#else
    return has_min ? s * (qm - m) + mn : s * (qm - m);
#endif
}

/* ==== Load-time preparation (host side) ==== */

/* Transposes the words of every tile of one row (file order in src, device order
 * in dst; both row_words long; see the drawing above). */
static inline void rtc_repack_row(const rtc_geom *g, const uint32_t *src, uint32_t *dst)
{
    for (int32_t t = 0; t < g->n_tiles; t++) {
        rtc_tile x = rtc_tile_at(g, t);
        for (int32_t l = 0; l < x.k; l++)
            for (int32_t w = 0; w < x.bits; w++) dst[rtc_word_index(&x, l, w)] = src[rtc_file_word_index(&x, l, w)];
    }
}

/* xmap[j] = original column read into position j of xi (see the header). */
static inline void rtc_build_xmap(const rtc_geom *g, const lay_packed *p, int32_t *xmap)
{
    for (int32_t t = 0; t < g->n_tiles; t++) {
        rtc_tile x = rtc_tile_at(g, t);
        for (int32_t l = 0; l < x.k; l++)
            for (int32_t q = 0; q < 8; q++)
                for (int32_t i = 0; i < 4; i++)
                    xmap[rtc_xi_index(&x, l, q, i)] = (int32_t)lay_perm_at(p, (int64_t)(x.c0 + l) * LAY_CHUNK + 4 * q + i);
    }
}

#endif
