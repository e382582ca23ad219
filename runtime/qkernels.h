/*
 * runtime/qkernels.h — internal: the CPU kernels behind packed linear layers
 * (runtime/qlinear.c), one table per instruction set. runtime.h stays the public
 * header; only qlinear.c, the tests and the benchmarks include this one.
 * Kernels neither allocate nor print; they touch only the memory they are given.
 *
 * The product y = W x over a packed tensor (layout/layout.h) (qlinear.c takes some
 * batches of 64 rows or more through qk_decode_fn and BLAS instead, exactly) is
 * computed with the activations quantized to int8, one scale per weight group, so
 * that integer dot products (AVX-512 VNNI vpdpbusd, AVX2 vpmaddubsw) do the work,
 * as llama.cpp does with its Q8 activations:
 *
 *     xp[j]   = x[perm[j]]                          stored (act-order) column order,
 *                                                   or the kernel order of block_order
 *     d_g     = max_{j in g} |xp[j]| / 127          one float per group (0 if all zero)
 *     xq[j]   = round_half_even(xp[j] * (127 / max|xp|))   in -127..127
 *     xs_g    = sum_{j in g} xq[j]                  exact int32
 *
 *     y[r] = sum_g s_rg * d_g * ( sum_{j in g} q_rj * xq[j]  -  z_rg * xs_g )
 *
 * which is exactly W_deq · x~ with x~[perm[j]] = d_g * xq[j]. That is the plain
 * reference every kernel is tested against (tests/test_qkernels.c dequantizes W with
 * lay_packed_dequant and multiplies by x~ in double): the kernels sum integers
 * exactly, so they differ from it by float rounding only, QK_REL_TOL at most,
 * measured as max|y - y_ref| / max|y_ref|. What the int8 activations cost against
 * exact x is a modelling error, not a kernel error, and shows up in the end-to-end
 * KL divergence. Any two batches give the same numbers for the same row (one code
 * path, register-blocked over up to QK_NB activation rows, from the planes or from
 * rows unpacked once: dot and dot_raw add the same products in the same lanes in
 * the same order), except that batch 1 may take the lookup kernels below, and
 * batches of more than QK_NB rows the tile kernels below, whose integer sums are
 * the same but whose float sums run in another order: QK_REL_TOL apart at most.
 *
 * A row of a packed tensor is at most three runs of groups that share a width and a
 * group length (hi groups, lo groups, a short last group): qk_dot_fn walks one run.
 */
#ifndef BITPLAN_RUNTIME_QKERNELS_H
#define BITPLAN_RUNTIME_QKERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "layout/layout.h"

#define QK_REL_TOL 1e-5   /* kernel vs reference: max|y - y_ref| / max|y_ref| */
#define QK_NB 4           /* activation rows one dot call handles at most */
#define QK_MAX_GROUP 32768 /* columns per group: keeps 255 * 127 * group in int32 */
#define QK_MAX_BLOCK 4     /* the largest block_order */

/* Quantizes one activation row already in stored (or kernel) order: xp[cols] -> xq[cols],
 * xd[ng] (the d_g above), xs[ng]. group is the tensor's group length. */
typedef void (*qk_quant_fn)(const float *xp, int64_t cols, int64_t group, int8_t *xq, float *xd, int32_t *xs);

/* Per row: sd[k * ng + g] = s_g * xd[k * ng + g] and corr[k] = sum_g sd * z_g * xs
 * for the nb activation rows k (ng groups, s fp16 bits, z one byte per group). */
typedef void (*qk_prep_fn)(const uint16_t *s, const uint8_t *z, const float *xd, const int32_t *xs,
                           int64_t ng, int nb, float *sd, float *corr);

/* One run of ng groups of gch chunks each, all of this width: v is the packed
 * values of the run's first group (in one row), xq the activations of its first
 * column (row k at xq + k * xq_stride), sd its first multiplier (row k at sd + k *
 * sd_stride). Adds sum_g sd[g] * sum_i q_i * xq_i to acc[k] for k < nb (1..QK_NB). */
typedef void (*qk_dot_fn)(const uint8_t *v, int64_t ng, int64_t gch, const int8_t *xq, int64_t xq_stride,
                          const float *sd, int64_t sd_stride, float *acc, int nb);

/* ==== Batches: rows unpacked once ====
 *
 * A product of more than QK_NB activation rows reads each weight row once per
 * QK_NB of them, so qlinear.c unpacks a tile of rows to bytes once (qk_unpack_fn)
 * and runs dot_raw over the bytes: the same sums in the same lanes and order as
 * dot over the planes, so the same bits, without decoding each chunk again. */

/* One run's nchunks chunks of width bits at src -> out[32 * nchunks], one byte a
 * value, in the kernel order of block_order below: per block of `block` chunks
 * (1: stored order; it divides nchunks), value p of the block's kernel order is
 * the value at stored offset qk_block_pos(block, p). */
typedef void (*qk_unpack_fn)(int bits, int block, const uint8_t *src, int64_t nchunks, uint8_t *out);

/* The plain unpacker, the reference of the SIMD ones (bit for bit). */
void qk_unpack_ref(int bits, int block, const uint8_t *src, int64_t nchunks, uint8_t *out);

/* One chunk of width bits (2..8) dequantized in value order: out[i] = s * (q_i - z),
 * the same float operations as lay_packed_dequant, so the same bits. The exact
 * path of runtime/qlinear.c decodes rows with it. */
typedef void (*qk_decode_fn)(int bits, const uint8_t *src, float s, float z, float *out);

/* x' = R^T x in place over cols (a multiple of rot, 64 or 128) for a rotated
 * option (layout/layout.h, "Input rotations"): v[j] *= sign[j], then per block of
 * rot the fast Walsh-Hadamard transform in lay_rot_apply's butterfly order, then
 * * norm (1/sqrt(rot) in float). Bit for bit lay_rot_apply's floats: each output is
 * one add or subtract of the same two operands, in any SIMD order. */
typedef void (*qk_rotate_fn)(int rot, const float *sign, float norm, float *v, int64_t cols);

/* ==== Lookup-table kernels (batch 1) ====
 *
 * The same sum, y[r] = sum_g s_rg * d_g * (sum_j q_rj * xq_j - z_rg * xs_g), bit by
 * bit: q = sum_i 2^i q^(i) with q^(i) in {0, 1}, so over four columns 4c..4c+3
 *
 *     sum_j q_rj xq_j = sum_i 2^i T_c[ q^(i)_r,4c | q^(i)_r,4c+1 << 1 | .. << 3 ],
 *     T_c[m] = sum_{k < 4} ((m >> k) & 1) * xq[4c + k]        (16 entries, |T| <= 508)
 *
 * The 16 entries of every quad of columns are computed once per activation row
 * (qk_lut_tables_fn: int16, exact, stored as 16 low bytes then 16 high bytes, 32
 * bytes a quad, 8 bytes per column), and a 4-bit slice of a bit plane is then one
 * in-register lookup (pshufb) for 32 rows at once, so the work per weight grows
 * with its bits rather than with a fixed decode per chunk. The integer sums are
 * exactly those of the kernels above, so the lookup path has the same reference
 * and QK_REL_TOL, and the same end-to-end figures.
 *
 * It reads the weights of QK_LUT_ROWS rows at once, bit plane by bit plane, so a
 * layer that uses it keeps a copy of those values reordered (qk_lut_pack_fn): per
 * tile of 32 rows, per group (in order), per plane i (lowest first), per 8 columns
 * 8p..8p+7 of the group, 32 bytes, byte r for row r of the tile:
 *
 *     bit k of byte r = bit i of q[r][8p + k]     (low nibble: quad 2p, high: 2p + 1)
 *
 * the same bytes as the rows' values (a group of gcols columns at width b takes
 * 32 * gcols * b / 8 of them), and the tile's scales and zeros as [group][32]. */
#define QK_LUT_ROWS 32

/* tab[32 c .. 32 c + 32) = T_c for the cols / 4 quads of one activation row xq. */
typedef void (*qk_lut_tables_fn)(const int8_t *xq, int64_t cols, uint8_t *tab);

/* One run of ng groups of gcols columns of width bits, for one tile of 32 rows:
 * w is the run's first group in the tile layout above, tab the tables of its first
 * column, s and z the tile's scales (fp16 bits) and zeros from its first group
 * ([g][32]), xd and xs the activation scales and sums from its first group. Adds
 * sum_g s * xd * (dot - z * xs) to acc[r], r < 32. */
typedef void (*qk_lut_dot_fn)(int bits, const uint8_t *w, int64_t ng, int64_t gcols, const uint8_t *tab,
                              const uint16_t *s, const uint8_t *z, const float *xd, const int32_t *xs, float *acc);

/* One group of gcols columns at width bits of 32 rows into the tile layout: src is
 * row 0's packed values of the group (layout/layout.h), row r at src + r * stride.
 * Runs once per tensor, when a layer is made. */
typedef void (*qk_lut_pack_fn)(int bits, int64_t gcols, const uint8_t *src, int64_t stride, uint8_t *dst);

/* The plain lookup kernels, the reference of the SIMD ones (bit for bit in the
 * tables and the copy, float rounding in the dot). */
void qk_lut_pack_ref(int bits, int64_t gcols, const uint8_t *src, int64_t stride, uint8_t *dst);
void qk_lut_tables_ref(const int8_t *xq, int64_t cols, uint8_t *tab);
void qk_lut_dot_ref(int bits, const uint8_t *w, int64_t ng, int64_t gcols, const uint8_t *tab, const uint16_t *s,
                    const uint8_t *z, const float *xd, const int32_t *xs, float *acc);

/* ==== Batches in tiles of 32 rows ====
 *
 * A kernel set with a tile kernel multiplies a batch of more than QK_NB activation
 * rows a tile of QK_TILE_ROWS weight rows at a time, every activation row against
 * the tile held in registers, so each weight byte and each activation byte loaded
 * feeds several vpdpbusd. The sums are those above, regrouped so that vpdpbusd's
 * unsigned operand is the activation and its signed one the weight:
 *
 *     sum_j (q_rj - z_rg) xq_j = sum_j (q_rj - z_rg) (xq_j + 128) - 128 sum_j (q_rj - z_rg)
 *
 * xq + 128 is 1..255 and q - z fits a signed byte for widths up to 7 (8-bit values
 * take the other paths), and the last term, the tile's bias, does not depend on
 * the activations: the int32 sum starts from it. So every group's integer sum is
 * exact, the reference and QK_REL_TOL are the same, and only the float sums run in
 * another order: y[r] = sum_g (s_rg * d_g) * sum_int (+ m_rg * (d_g * xs_g) with
 * ggml's mins), group after group. A row's numbers do not depend on the other
 * activation rows of the batch, so any two batches that take the tiles give it the
 * same bits; batches that take the dot kernels (QK_NB rows or fewer, and up to a
 * threshold of runtime/qlinear.c's) differ from them by float rounding.
 *
 * The tile layout (tile_pack), columns in the activations' (kernel) order:
 *
 *     w[c][r][k]  = q[r][4c + k] - z[r][g(4c)]      int8, 128 bytes per quad of columns
 *     bias[g][r]  = -128 * sum_{j in g} (q[r][j] - z[r][g])
 *     ws[g][r]    = s_rg as float, wm[g][r] = m_rg as float (mins only)
 *
 * rows nr..31 of a short last tile all zero. xu is the activations as unsigned
 * bytes, xq + 128 (qk_tile_unsigned).
 *
 * That layout is the reference's and the VNNI set's. A kernel set may lay its
 * tiles out another way, as long as its tile kernel gives qk_tile_ref's bits from
 * its own tile_pack's layout: AVX2 (no vpdpbusd; vpmaddubsw's 16-bit pair sums of
 * (xq + 128)(q - z) would saturate) keeps q unsigned against signed xq and takes
 * the zero term per group (qkernels_avx2.c). Its tile_unsigned says which
 * activations its tile kernel takes: xq + 128, or xq as it is. */
#define QK_TILE_ROWS 32

typedef struct {
    int8_t *w;                  /* [cols / 4][32][4] */
    int32_t *bias;              /* [ng][32] */
    float *ws, *wm;             /* [ng][32]; wm NULL: no mins */
    int64_t ng, group, cols;    /* groups of group columns, the last one ending at cols */
    int nr;                     /* rows 1..32 */
    int vmax;                   /* the values' bound, 1..127: 2^b - 1 of the widest group */
} qk_tile;

/* y[k * y_stride + r] = the product of tile row r (r < nr) and activation row k (k <
 * n, at xu + k * cols, its scales and sums at xd + k * ng, xs + k * ng). */
typedef void (*qk_tile_fn)(const qk_tile *t, const uint8_t *xu, const float *xd, const int32_t *xs, int n,
                           float *y, int64_t y_stride);

/* t->nr rows of unpacked values (row r at raw + r * raw_stride, cols bytes, kernel
 * order) into t's arrays: row r's zero of group g at z[r * z_stride + g] (z_stride 0: one row of
 * zeros for all), its scale (fp16 bits) at s[r * s_stride + g], its min at m[r *
 * s_stride + g] if m (t->wm then not NULL). */
typedef void (*qk_tile_pack_fn)(const uint8_t *raw, int64_t raw_stride, const uint8_t *z, int64_t z_stride,
                                const uint16_t *s, const uint16_t *m, int64_t s_stride, const qk_tile *t);

/* xq -> xq + 128 in place, the tile kernels' unsigned activations. */
void qk_tile_unsigned(int8_t *xq, int64_t n);

/* The plain tile kernels, the references of the SIMD ones: the same layout bit
 * for bit, and the same float operations per row and activation row, so the same
 * bits. */
void qk_tile_pack_ref(const uint8_t *raw, int64_t raw_stride, const uint8_t *z, int64_t z_stride, const uint16_t *s,
                      const uint16_t *m, int64_t s_stride, const qk_tile *t);
void qk_tile_ref(const qk_tile *t, const uint8_t *xu, const float *xd, const int32_t *xs, int n, float *y,
                 int64_t y_stride);

typedef enum { QK_ISA_AUTO = 0, QK_ISA_GENERIC, QK_ISA_AVX2, QK_ISA_AVX512 } qk_isa;

/* Where new layers use the lookup kernels: AUTO, the widths and row lengths a kernel
 * set lists in lut_cols (where bench_matvec found them faster); OFF, nowhere; ALL, every width
 * 2..8 of a set that has them (tests and benchmarks). The environment's BITPLAN_LUT
 * (0, all) sets the mode until qk_force_lut does. */
typedef enum { QK_LUT_AUTO = 0, QK_LUT_OFF, QK_LUT_ALL } qk_lut_mode;

/* Activation order inside a run. A kernel may want a run's activations in another
 * order than the stored one, as long as it stays inside each group (so xd and xs do
 * not change). block_order[b] = B (2 or 4): in runs of width b, each block of B'
 * chunks c0..c(B'-1) takes its 32B' activations as below, where B' is the largest
 * of B, B/2 that divides the chunks per group (none: stored order):
 *
 *     c0[0..16) c1[0..16) .. c(B'-1)[0..16)  c0[16..32) c1[16..32) .. c(B'-1)[16..32)
 *
 * so that one 16B'-byte load of B' 4-bit planes gives the low nibbles (values 0..15
 * of every chunk) and the high nibbles (16..31) with one shift and two masks.
 * qk_block_pos gives the stored offset within the block of kernel position p. */
static inline int qk_block_pos(int B, int p) { return (p / 16 % B) * 32 + p / (16 * B) * 16 + p % 16; }
/* B' of a run of width bits with gch chunks per group, under block_order B. */
static inline int qk_run_block(int B, int64_t gch)
{
    while (B > 1 && gch % B) B /= 2;
    return B < 2 ? 1 : B;
}

typedef struct {
    const char *name;                    /* "generic", "avx2", "avx512" */
    uint8_t block_order[LAY_MAX_BITS + 1];
    qk_quant_fn quant;
    qk_prep_fn prep;
    qk_dot_fn dot[LAY_MAX_BITS + 1];     /* by width, 2..8 */
    qk_dot_fn dot_raw[LAY_MAX_BITS + 1]; /* the same over unpacked bytes (v: 32 bytes a chunk) */
    qk_unpack_fn unpack;
    qk_decode_fn decode;
    qk_rotate_fn rotate;
    qk_lut_pack_fn lut_pack;             /* NULL: no lookup kernels */
    qk_lut_tables_fn lut_tables;
    qk_lut_dot_fn lut_dot;
    int32_t lut_cols[LAY_MAX_BITS + 1];  /* QK_LUT_AUTO takes the lookup kernels at this width in rows
                                            of at most this many columns (0: none, INT32_MAX: all) */
    qk_tile_fn tile;                     /* NULL: batches take dot_raw (or the exact path) */
    qk_tile_pack_fn tile_pack;
    int tile_unsigned;                   /* tile takes xq + 128 (qk_tile_unsigned), else xq */
    int tile_min_batch;                  /* batches over rows of 1024 columns or more take the tiles
                                            from this many rows (narrower ones from QK_NB + 1) */
} qk_kernels;

/* The kernel set of an instruction set, or NULL if this CPU lacks it (AUTO: the
 * best one this CPU runs). */
const qk_kernels *qk_get(qk_isa isa);
/* What new packed layers use: qk_get(AUTO) unless qk_force chose another (tests and
 * benchmarks force the portable path this way), or the environment's BITPLAN_ISA
 * (generic, avx2, avx512: that set, where this CPU has it) did. qk_force returns 0,
 * or -1 if unsupported. */
const qk_kernels *qk_active(void);
int qk_force(qk_isa isa);
/* Whether a new layer's runs of width bits (2..8), in rows of cols columns, take the
 * lookup kernels of k, under the mode qk_force_lut chose (AUTO unless told). */
int qk_lut_wanted(const qk_kernels *k, int bits, int64_t cols);
void qk_force_lut(qk_lut_mode mode);

/* The portable kernels; the SIMD files export theirs the same way. */
extern const qk_kernels qk_generic;
extern const qk_kernels qk_avx2;
extern const qk_kernels qk_avx512;

/* The activation quantizer of the table above, plain C; every qk_quant_fn gives
 * bit-for-bit the same xq, xd, xs. */
void qk_quant_ref(const float *xp, int64_t cols, int64_t group, int8_t *xq, float *xd, int32_t *xs);

#endif
