/*
 * layout/layout.h — the quantization option, its exact cost in stored bits, and the
 * layout of packed values. A leaf: it includes nothing of the project, so that the
 * allocator, the measurement, the packer, the CPU runtime and the CUDA kernels all
 * count and read the same bits. pack/FORMAT.md is the prose version of this file.
 *
 * A linear weight W has rows = out_features and cols = in_features. Quantization
 * works along the input dimension, in act-order: the input channels are permuted
 * (perm[j] = original column of stored column j, most important first) and the
 * stored columns are cut into groups of `group` columns (the last group may be
 * shorter; every group is a multiple of 32 columns). Group g of row r has its own
 * scale s and zero z, and one bit width b_g:
 *
 *     w[r][perm[j]] ~= s[r][g] * (q[r][j] - z[r][g]),    0 <= q < 2^b_g
 *
 * (symmetric formats store no zero: z = 2^(b_g - 1)). The first n_hi groups
 * (the most important channels) use bits_hi, the rest bits_lo; a plain option has
 * bits_hi == bits_lo and hi_share == 0.
 *
 * Values of one row and one group are stored as chunks of 32 values. A chunk of
 * width b is split into bit planes, lowest bits first: a 4-bit plane if b & 4, a
 * 2-bit plane if b & 2, a 1-bit plane if b & 1 (b = 8 is one 8-bit plane):
 *
 *     width  planes (low bits first)  bytes per 32 values
 *       2     2                         8
 *       3     2, 1                     12
 *       4     4                        16
 *       5     4, 1                     20
 *       6     4, 2                     24
 *       7     4, 2, 1                  28
 *       8     8                        32
 *
 *  plane  byte k of the plane holds values            bits
 *    8    k                                            0..7
 *    4    k (low nibble), k + 16 (high nibble)         0..3, 4..7
 *    2    k, k + 8, k + 16, k + 24                     0..1, 2..3, 4..5, 6..7
 *    1    8k .. 8k + 7  (value 8k + i at bit i)        0..7
 *
 * so the value is q = p4 | p2 << 4 | p1 << 6 for b = 7, q = p2 | p1 << 2 for b = 3,
 * q = p4 | p1 << 4 for b = 5, and so on: each plane shifts by the bits below it.
 * Each plane unpacks with a shift and a mask per SIMD lane, whatever the width.
 */
#ifndef BITPLAN_PACK_LAYOUT_H
#define BITPLAN_PACK_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#define LAY_CHUNK 32            /* values per packed chunk; groups are multiples */
#define LAY_MIN_BITS 2
#define LAY_MAX_BITS 8

typedef enum {
    LAY_SCALE_F16_Z8 = 0, /* asymmetric: fp16 scale + uint8 zero per (row, group) */
    LAY_SCALE_F16 = 1,    /* symmetric: fp16 scale per (row, group), zero = 2^(b-1) */
    LAY_FMT_GGML = 256,   /* + a ggml type id (section "ggml block types" below): the
                             tensor is stored in that GGUF block format, in original
                             column order; bits_lo = bits_hi = its q width, hi_share 0,
                             group = its block. The 32-wide types also pack into
                             bitplan's own file (lay_ggml_packable, below) */
} lay_scale_fmt;

/* A candidate quantization: data, not code (measure/options.c reads them from a
 * table or a file). */
typedef struct {
    char name[32];          /* e.g. "4b g64", "3b/5b 10% g32" */
    uint8_t bits_lo;        /* width of the less important groups, 2..8 */
    uint8_t bits_hi;        /* width of the most important groups, >= bits_lo */
    float hi_share;         /* share of groups at bits_hi, 0..1 (rounded to whole groups) */
    int32_t group;          /* columns per group, a multiple of 32 */
    lay_scale_fmt scale_fmt;
    uint16_t rot;           /* 0, or the block (64 or 128 columns) of a randomized
                               Hadamard rotation of the input dimension (below) */
    uint8_t awq;            /* 1: activation-aware scales of the input dimension (below);
                               an option has at most one of rot and awq */
} lay_option;

/* The ggml type of an option stored as a GGUF block format, or -1 for bitplan's own. */
static inline int lay_option_ggml(const lay_option *o)
{
    return o->scale_fmt >= LAY_FMT_GGML ? (int)o->scale_fmt - LAY_FMT_GGML : -1;
}

/* Checks an option for a tensor shape. Returns 0 if it applies, else -1 with a
 * reason in why (e.g. "cols 100 is not a multiple of 32"). */
int lay_option_check(const lay_option *o, int64_t rows, int64_t cols, char *why, size_t why_len);

/* Number of groups over the stored columns, and the start and width of group g. */
int64_t lay_n_groups(const lay_option *o, int64_t cols);
int64_t lay_group_start(const lay_option *o, int64_t g);
int64_t lay_group_cols(const lay_option *o, int64_t cols, int64_t g);
int64_t lay_n_hi_groups(const lay_option *o, int64_t cols);   /* floor(share * n + 0.5) */
int lay_group_bits(const lay_option *o, int64_t cols, int64_t g);

/* Bytes of one stored row's values (all groups), of one group's values. */
int64_t lay_row_bytes(const lay_option *o, int64_t cols);
int64_t lay_group_value_bytes(int bits, int64_t gcols);
int64_t lay_group_offset(const lay_option *o, int64_t cols, int64_t g); /* within a row */
int lay_perm_bytes(int64_t cols);  /* 2 (uint16) if cols <= 65536, else 4 */

/* The parts of a packed tensor, in bytes; total_bits() = 8 * sum of the parts. */
typedef struct {
    int64_t values;  /* rows * lay_row_bytes (a K-quant: its whole blocks) */
    int64_t scales;  /* rows * n_groups * 2 (fp16) */
    int64_t zeros;   /* rows * n_groups (uint8), 0 for symmetric and ggml types */
    int64_t mins;    /* rows * n_groups * 2 (fp16) for Q4_1 and Q5_1, else 0 */
    int64_t perm;    /* cols * lay_perm_bytes, 0 for ggml types */
    int64_t rot;     /* 4 (the uint32 seed of the signs) for a rotated option, else 0 */
    int64_t xscale;  /* cols * 2 (an fp16 per input column) for an option with awq, else 0 */
} lay_cost;

lay_cost lay_tensor_cost(const lay_option *o, int64_t rows, int64_t cols);
/* The one cost function: exact stored bits of a tensor under an option. */
int64_t lay_tensor_bits(const lay_option *o, int64_t rows, int64_t cols);

/* Packs 32 values q[0..32) (each < 2^bits) into dst (lay_group_value_bytes(bits, 32)
 * bytes), and back. The plain reference every faster path is tested against. */
void lay_pack_chunk(int bits, const uint8_t *q, uint8_t *dst);
void lay_unpack_chunk(int bits, const uint8_t *src, uint8_t *q);

/* A quantized tensor before packing: what GPTQ produces and the packer stores.
 * Scales are fp16-representable (the quantizer rounds them before using them), so
 * dequantizing this struct gives exactly what the packed file gives. An option in
 * a ggml block format has its blocks instead (perm, q, scale, zero are NULL). */
typedef struct {
    int64_t rows, cols;
    lay_option opt;
    int32_t *perm;     /* [cols]: stored column j is original column perm[j] */
    uint8_t *q;        /* [rows][cols], stored (permuted) column order */
    uint16_t *scale;   /* [rows][n_groups], fp16 bits */
    uint8_t *zero;     /* [rows][n_groups]; for symmetric formats 2^(b-1), not stored */
    uint8_t *blocks;   /* ggml formats: [rows][lay_ggml_row_bytes(type, cols)] */
    uint32_t rot_seed; /* opt.rot: the seed of the rotation's signs; q holds W R */
    uint16_t *xscale;  /* opt.awq: [cols] fp16 bits, original column order; q holds W / m */
} lay_qtensor;

/* Allocates the arrays of a qtensor for a shape and option (0, or -1 if out of memory). */
int lay_qtensor_alloc(lay_qtensor *t, int64_t rows, int64_t cols, const lay_option *o);
/* A qtensor of ggml option o holding a copy of blocks (rows of lay_ggml_row_bytes):
 * a source's own blocks, kept as stored. 0, or -1 if out of memory. */
int lay_qtensor_of_blocks(lay_qtensor *t, int64_t rows, int64_t cols, const lay_option *o, const void *blocks);
/* The arrays of t for its shape and option (perm, q, scale, zero, blocks, xscale)
 * and their bytes, 0 for an array the option has not: what copying it whole takes. */
#define LAY_QTENSOR_ARRAYS 6
void lay_qtensor_arrays(lay_qtensor *t, void *arrays[LAY_QTENSOR_ARRAYS], size_t bytes[LAY_QTENSOR_ARRAYS]);
void lay_qtensor_free(lay_qtensor *t);
/* w[rows][cols] in the original column order: s * (q - z), rotated back
 * (lay_rot_unapply on every row) if the option rotates, times m (lay_xscale_mul on
 * every row) if it has input scales. */
void lay_qtensor_dequant(const lay_qtensor *t, float *w);

/* ==== Input rotations ====
 *
 * An option with rot = n (64 or 128) quantizes W' = W R instead of W, where R is
 * block-diagonal over the input dimension, one n x n block per n columns:
 *
 *     R_b = D_b H_n / sqrt(n)       H_n the Sylvester Hadamard matrix,
 *                                   H_n[i][k] = (-1)^popcount(i & k);
 *                                   D_b = diag(sign(j)) for the block's columns j
 *
 *     sign(j) = +1 or -1 by the low bit of splitmix64((seed << 32) + j):
 *               z += 0x9e3779b97f4a7c15; z = (z ^ z >> 30) * 0xbf58476d1ce4e5b9;
 *               z = (z ^ z >> 27) * 0x94d049bb133111eb; z ^= z >> 31; odd -> -1
 *
 * R is orthogonal, so W x = W' (R^T x): the runtime rotates the activations, and
 * the map that does it, v -> R^T v (per block: signs, then H_n, then 1/sqrt(n)), is
 * also the map from a row of W to its row of W' (w' = w R, so w'^T = R^T w^T).
 * Spreading each column's weight over its block evens out outliers, which makes a
 * coarse grid lose less (QuIP#, QuaRot); the measurement says where it pays. GPTQ
 * sees H' = R^T H R, so tr(dW' H' dW'^T) is the same error in the original space.
 * The fast Walsh-Hadamard transform computes H_n v in n log2 n additions, in a
 * fixed order (stages h = 1, 2, 4, ..., pairs (i, i + h)), so every path that uses
 * these functions computes the same floats. */
#define LAY_ROT_SEED 0x62706c6eu   /* the seed pack and measure use ("bpln") */
int lay_rot_sign(uint32_t seed, int64_t j);
/* v[cols] -> R^T v, in place (cols a multiple of rot; rot 0 leaves v alone). */
void lay_rot_apply(int rot, uint32_t seed, float *v, int64_t cols);
/* v[cols] -> R v, in place: the inverse, a row of W' back to the row of W. */
void lay_rot_unapply(int rot, uint32_t seed, float *v, int64_t cols);
/* h[cols][cols] (symmetric) -> R^T h R, in place, in double. */
void lay_rot_hessian(int rot, uint32_t seed, double *h, int64_t cols);

/* ==== Activation-aware input scales ====
 *
 * An option with awq quantizes W' = W diag(1/m) instead of W, for a positive
 * multiplier m_j per input column stored as fp16 (xscale): W x = W' x' with
 *
 *     x'_j = x_j * m_j            (in float: one multiply, the same on every path)
 *
 * and the dequantized W is W' times m column by column, the same map. A column
 * whose inputs are loud (a large Hessian diagonal) gets a small m, so its weights
 * are stretched before the grid and lose less of their precision to it (AWQ, Lin
 * et al. 2024); the measurement chooses m per tensor and says where it pays. GPTQ
 * sees H' = diag(m) H diag(m), so tr(dW' H' dW'^T) is the error in W's space. */
/* v[cols] *= m (fp16 bits), element by element, in place. */
void lay_xscale_mul(const uint16_t *m, float *v, int64_t cols);
/* h[cols][cols] -> diag(m) h diag(m), in place, in double. */
void lay_xscale_hessian(const uint16_t *m, double *h, int64_t cols);

/* A packed tensor: the arrays as stored in the file (values in the chunk layout
 * above, row after row; every row has lay_row_bytes bytes). Kernels read this.
 * A value q of group g in row r stands for
 *
 *     w[r][perm[j]] = s * (q - z) + m
 *
 * with s the group's scale, z its zero (lay_zero_at) and m its min (0 unless the
 * tensor has mins), computed in float in this order: for a ggml type that is
 * exactly its decoders' a * (q - center) + b. A tensor in one of the 32-wide ggml
 * types (lay_ggml_packable) is its blocks re-laid: the same q in the planes above
 * (a Q4_0/Q4_1 block's nibbles are already a 4-bit plane, a Q5 block's high bits a
 * 1-bit plane; Q8_0's int8 is q - 128), the block's fp16 d as the scale, Q4_1's and
 * Q5_1's fp16 m as the min, the type's center as the zero, no permutation. Its
 * bytes are the blocks' bytes exactly. */
typedef struct lay_packed_s {
    int64_t rows, cols;
    lay_option opt;
    const uint8_t *values;   /* [rows][lay_row_bytes] */
    const uint16_t *scales;  /* [rows][n_groups] fp16 bits */
    const uint8_t *zeros;    /* [rows][n_groups], NULL for symmetric formats and ggml types */
    const uint16_t *mins;    /* [rows][n_groups] fp16 bits: Q4_1 and Q5_1, else NULL */
    const void *perm;        /* [cols] uint16 or uint32 (lay_perm_bytes); NULL for ggml types */
    uint32_t rot_seed;       /* opt.rot: the seed of the rotation's signs (values hold W R) */
    const uint16_t *xscale;  /* opt.awq: [cols] fp16 bits, the input multipliers m (values
                                hold W / m), else NULL */
} lay_packed;

/* Packs q into caller-provided arrays sized by lay_tensor_cost (an array whose
 * cost is 0 may be NULL). A ggml type packs only if lay_ggml_packable. The plain
 * reference of packing. */
void lay_pack_tensor(const lay_qtensor *q, uint8_t *values, uint16_t *scales, uint8_t *zeros, uint16_t *mins,
                     void *perm, uint16_t *xscale);
/* Stored column j's original column. */
static inline int64_t lay_perm_at(const lay_packed *p, int64_t j)
{
    if (!p->perm) return j;
    return lay_perm_bytes(p->cols) == 2 ? ((const uint16_t *)p->perm)[j] : ((const uint32_t *)p->perm)[j];
}
/* The center of a ggml type (lay_ggml_traits_of(type)->center), 0 if unknown. */
int lay_ggml_center(int type);
/* The zero of a group: stored, a ggml type's center, or 2^(b-1) for symmetric formats. */
static inline int lay_zero_at(const lay_packed *p, int64_t r, int64_t g, int bits)
{
    if (p->zeros) return p->zeros[r * lay_n_groups(&p->opt, p->cols) + g];
    return lay_option_ggml(&p->opt) >= 0 ? lay_ggml_center(lay_option_ggml(&p->opt)) : 1 << (bits - 1);
}
/* The min of a group in float: 0 unless the tensor has mins. */
float lay_min_at(const lay_packed *p, int64_t r, int64_t g);
/* w[rows][cols] in original column order from a packed tensor (reference),
 * rotated back if the option rotates, times m if it has input scales. */
void lay_packed_dequant(const lay_packed *p, float *w);

/* ==== Tensor classes ====
 *
 * The classes of a transformer's linear layers, in this order everywhere; the
 * database's tensors.cls holds their names. LAY_HEAD is also the number of a block's
 * linear layers.
 */
typedef enum { LAY_Q = 0, LAY_K, LAY_V, LAY_O, LAY_GATE, LAY_UP, LAY_DOWN, LAY_HEAD, LAY_N_CLASSES } lay_class;

const char *lay_class_name(lay_class c); /* "q", "k", "v", "o", "gate", "up", "down", "head" */
int lay_class_of_name(const char *name); /* the class, or -1 */

/* ==== ggml block types (layout/ggml.c) ====
 *
 * The block formats of GGUF files, so that a plan can be exported for llama.cpp.
 * Type values are ggml's type ids. A row is cut into blocks of `block` values along
 * the input dimension, in the original column order (GGUF stores no permutation);
 * a block holds a header (fp16 scales, quantized sub-block scales and mins) and one
 * q value per weight. Once the header is fixed, sub-block k of the block is an
 * affine grid, and every decoder (this one, llama.cpp's, gguf-py's) computes
 *
 *     y = a[k] * (float)(q - center) + b[k]        0 <= q < 2^bits
 *
 * in float, in this order (b is 0, or the negated min, exactly). Bytes per block:
 *
 *     type   block  bytes  sub  bits  center   bpw     header
 *     Q4_0     32     18   32    4      8    4.5     fp16 d
 *     Q4_1     32     20   32    4      0    5.0     fp16 d, fp16 m (b = m)
 *     Q5_0     32     22   32    5     16    5.5     fp16 d
 *     Q5_1     32     24   32    5      0    6.0     fp16 d, fp16 m
 *     Q8_0     32     34   32    8    128    8.5     fp16 d (q - 128 is ggml's int8)
 *     Q2_K    256     84   16    2      0    2.625   4-bit scale and min per 16, fp16 d, dmin
 *     Q3_K    256    110   16    3      4    3.4375  6-bit signed scale per 16, fp16 d
 *     Q4_K    256    144   32    4      0    4.5     6-bit scale and min per 32, fp16 d, dmin
 *     Q5_K    256    176   32    5      0    5.5     6-bit scale and min per 32, fp16 d, dmin
 *     Q6_K    256    210   16    6     32    6.5625  int8 scale per 16, fp16 d
 */
typedef enum {
    LAY_GGML_Q4_0 = 2,
    LAY_GGML_Q4_1 = 3,
    LAY_GGML_Q5_0 = 6,
    LAY_GGML_Q5_1 = 7,
    LAY_GGML_Q8_0 = 8,
    LAY_GGML_Q2_K = 10,
    LAY_GGML_Q3_K = 11,
    LAY_GGML_Q4_K = 12,
    LAY_GGML_Q5_K = 13,
    LAY_GGML_Q6_K = 14,
} lay_ggml_type;

typedef struct {
    const char *name;   /* "Q4_K" */
    int block;          /* values per block: 32 or 256 */
    int bytes;          /* bytes per block */
    int sub;            /* values per sub-block: 16 or 32 */
    int bits;           /* q in [0, 2^bits) */
    int center;         /* the integer subtracted from q before scaling */
} lay_ggml_traits;

/* The traits of a type, or NULL if the type is not one of the above. */
const lay_ggml_traits *lay_ggml_traits_of(int type);
/* The type named name (case-insensitive: "q4_k", "Q4_K"), or -1. */
int lay_ggml_type_by_name(const char *name);

#define LAY_GGML_MAX_SUB 16
/* One block's header and the grid it gives each sub-block. */
typedef struct {
    int type;
    uint16_t d, dmin;                  /* fp16 bits (dmin: Q2_K, Q4_K, Q5_K; m: Q4_1, Q5_1) */
    int8_t sc[LAY_GGML_MAX_SUB];       /* sub-block scales as stored (signed for Q3_K, Q6_K) */
    uint8_t mn[LAY_GGML_MAX_SUB];      /* sub-block mins as stored (Q2_K, Q4_K, Q5_K) */
    float a[LAY_GGML_MAX_SUB], b[LAY_GGML_MAX_SUB]; /* the grid of sub-block k (a may be 0) */
} lay_ggml_grid;

/* Fits a block's header to x[block] minimizing sum_i w_i (x_i - y_i)^2 for y the
 * nearest grid values, with w_i from the importance imp[block] (NULL: no
 * importance) as layout/ggml.c describes. The grid is then a[], b[] for the stored
 * header. Never fails: an all-zero block gives a grid on which 0 is exact. */
void lay_ggml_fit(int type, const float *x, const float *imp, lay_ggml_grid *g);
/* The q of the nearest grid value to x in sub-block k (the center where a = 0). */
static inline int lay_ggml_quant(const lay_ggml_grid *g, int k, int bits, int center, float x)
{
    if (g->a[k] == 0.0f) return center;
    float t = (x - g->b[k]) / g->a[k];
    t = t > 512.0f ? 512.0f : t >= -512.0f ? t : -512.0f; /* no int overflow, NaN -> 0 */
    int q = (int)__builtin_rintf(t) + center, top = (1 << bits) - 1;
    return q < 0 ? 0 : q > top ? top : q;
}
/* Exactly the decoders' value of q in sub-block k. */
static inline float lay_ggml_value(const lay_ggml_grid *g, int k, int center, int q)
{
    return g->a[k] * (float)(q - center) + g->b[k];
}
/* Writes one block (traits bytes) from the grid's header and q[block]. */
void lay_ggml_encode(const lay_ggml_grid *g, const uint8_t *q, uint8_t *block);
/* Decodes n values (a multiple of the block) of type from src. */
void lay_ggml_decode_row(int type, const uint8_t *src, float *y, int64_t n);
/* Round-to-nearest of a row of n values (a multiple of the block): every block
 * fitted with lay_ggml_fit (imp: the row's importance[n], or NULL) and rounded. */
void lay_ggml_quantize_row(int type, const float *x, const float *imp, uint8_t *dst, int64_t n);
/* Bytes of n values of type (n a multiple of the block). */
int64_t lay_ggml_row_bytes(int type, int64_t n);
/* The option of ggml type `type`, named as the type (its fields the type's: bits,
 * share 0, group = block). 0, or -1 for an unknown type. */
int lay_ggml_option(int type, lay_option *o);
/* 1 if type packs into bitplan's file (lay_packed above): the 32-wide types Q4_0,
 * Q4_1, Q5_0, Q5_1, Q8_0, whose blocks are one fp16 scale (and min) and 32 values.
 * The K-quants do not: a Q4_K/Q5_K/Q2_K sub-block's scale d * sc has more bits than
 * an fp16 holds, and Q3_K's and Q6_K's sub-blocks are 16 wide. */
int lay_ggml_packable(int type);
/* 1 if the type stores a min (Q4_1, Q5_1). */
int lay_ggml_has_min(int type);
/* One row of n values of a packable type, blocks -> packed parts (values in the
 * chunk layout, lay_row_bytes; scales and mins one per 32; mins may be NULL for a
 * type without), and back. Lossless both ways. */
void lay_ggml_to_packed(int type, const uint8_t *blocks, int64_t n, uint8_t *values, uint16_t *scales, uint16_t *mins);
void lay_ggml_from_packed(int type, const uint8_t *values, const uint16_t *scales, const uint16_t *mins, int64_t n,
                          uint8_t *blocks);

/* fp16 <-> fp32 conversion, IEEE half, round to nearest even. */
uint16_t lay_f32_to_f16(float f);
float lay_f16_to_f32(uint16_t h);

#endif
