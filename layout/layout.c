/*
 * layout/layout.c — option geometry, the exact cost function, and the plain chunk
 * packers. Everything here is integer arithmetic on shapes; it must stay free of
 * any dependency so that every stage counts bits the same way.
 */
#include "layout.h"

#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

/* ==== Geometry ==== */

/* A ggml option: its fields must be the type's (so that the database, which keys
 * options by their fields, cannot hold two spellings of one type), and the columns
 * whole blocks. */
static int ggml_option_check(const lay_option *o, int64_t rows, int64_t cols, char *why, size_t why_len)
{
    const lay_ggml_traits *t = lay_ggml_traits_of(lay_option_ggml(o));
    const char *fmt = NULL;
    long long v = 0;
    if (!t) fmt = "ggml type %lld is not supported", v = lay_option_ggml(o);
    else if (o->rot) fmt = "a ggml type cannot rotate its inputs (rot %lld)", v = o->rot;
    else if (o->awq) fmt = "a ggml type cannot scale its inputs (awq %lld)", v = o->awq;
    else if (o->bits_lo != t->bits || o->bits_hi != t->bits || o->hi_share != 0.0f || o->group != t->block)
        fmt = "fields do not match ggml type %lld (bits, share 0, group = block)", v = lay_option_ggml(o);
    else if (rows <= 0) fmt = "rows %lld is not positive", v = rows;
    else if (cols <= 0 || cols % t->block) {
        if (why && why_len) snprintf(why, why_len, "cols %lld is not a multiple of %s's block of %d", (long long)cols, t->name, t->block);
        return -1;
    }
    if (!fmt) return 0;
    if (why && why_len) snprintf(why, why_len, fmt, v);
    return -1;
}

int lay_option_check(const lay_option *o, int64_t rows, int64_t cols, char *why, size_t why_len)
{
    if (lay_option_ggml(o) >= 0) return ggml_option_check(o, rows, cols, why, why_len);
    const char *fmt = NULL;
    long long v = 0;
    if (o->bits_lo < LAY_MIN_BITS || o->bits_lo > LAY_MAX_BITS) fmt = "bits_lo %lld is outside 2..8", v = o->bits_lo;
    else if (o->bits_hi < o->bits_lo || o->bits_hi > LAY_MAX_BITS) fmt = "bits_hi %lld is outside bits_lo..8", v = o->bits_hi;
    else if (!(o->hi_share >= 0.0f && o->hi_share <= 1.0f)) fmt = "hi_share %lld%% is outside 0..100%%", v = (long long)(o->hi_share * 100);
    else if (o->group <= 0 || o->group % LAY_CHUNK) fmt = "group %lld is not a positive multiple of 32", v = o->group;
    else if (o->scale_fmt != LAY_SCALE_F16_Z8 && o->scale_fmt != LAY_SCALE_F16) fmt = "scale format %lld is unknown", v = o->scale_fmt;
    else if (rows <= 0) fmt = "rows %lld is not positive", v = rows;
    else if (cols <= 0 || cols % LAY_CHUNK) fmt = "cols %lld is not a positive multiple of 32", v = cols;
    else if (o->rot != 0 && o->rot != 64 && o->rot != 128) fmt = "rotation block %lld is not 64 or 128", v = o->rot;
    else if (o->awq > 1) fmt = "awq %lld is not 0 or 1", v = o->awq;
    else if (o->awq && o->rot) fmt = "an option cannot both rotate (rot %lld) and scale its inputs", v = o->rot;
    else if (o->rot && cols % o->rot) {
        if (why && why_len) snprintf(why, why_len, "cols %lld is not a multiple of the rotation block %d", (long long)cols, o->rot);
        return -1;
    }
    if (!fmt) return 0;
    if (why && why_len) snprintf(why, why_len, fmt, v);
    return -1;
}

int64_t lay_n_groups(const lay_option *o, int64_t cols) { return (cols + o->group - 1) / o->group; }

int64_t lay_group_start(const lay_option *o, int64_t g) { return g * o->group; }

int64_t lay_group_cols(const lay_option *o, int64_t cols, int64_t g)
{
    int64_t rest = cols - g * o->group;
    return rest < o->group ? rest : o->group;
}

int64_t lay_n_hi_groups(const lay_option *o, int64_t cols)
{
    if (o->bits_hi == o->bits_lo) return 0;
    int64_t n = lay_n_groups(o, cols);
    int64_t k = (int64_t)floor((double)o->hi_share * (double)n + 0.5);
    return k < 0 ? 0 : k > n ? n : k;
}

int lay_group_bits(const lay_option *o, int64_t cols, int64_t g)
{
    return g < lay_n_hi_groups(o, cols) ? o->bits_hi : o->bits_lo;
}

int64_t lay_group_value_bytes(int bits, int64_t gcols) { return gcols / LAY_CHUNK * (bits * LAY_CHUNK / 8); }

int64_t lay_group_offset(const lay_option *o, int64_t cols, int64_t g)
{
    int64_t nhi = lay_n_hi_groups(o, cols);
    int64_t g_hi = g < nhi ? g : nhi;
    /* every group before g is full-width (only the last group can be short) */
    return g_hi * lay_group_value_bytes(o->bits_hi, o->group) +
           (g - g_hi) * lay_group_value_bytes(o->bits_lo, o->group);
}

int64_t lay_row_bytes(const lay_option *o, int64_t cols)
{
    int64_t n = lay_n_groups(o, cols);
    return lay_group_offset(o, cols, n - 1) +
           lay_group_value_bytes(lay_group_bits(o, cols, n - 1), lay_group_cols(o, cols, n - 1));
}

int lay_perm_bytes(int64_t cols) { return cols <= 65536 ? 2 : 4; }

/* ==== Cost ==== */

lay_cost lay_tensor_cost(const lay_option *o, int64_t rows, int64_t cols)
{
    int64_t ng = lay_n_groups(o, cols);
    int type = lay_option_ggml(o);
    if (type >= 0 && !lay_ggml_packable(type)) /* headers and values together, as the block stores them */
        return (lay_cost){.values = rows * lay_ggml_row_bytes(type, cols)};
    lay_cost c = {.values = rows * lay_row_bytes(o, cols), .scales = rows * ng * 2};
    if (type >= 0) { /* a 32-wide block: its values, d and m, the same bytes re-laid */
        c.mins = lay_ggml_has_min(type) ? rows * ng * 2 : 0;
        return c;
    }
    c.zeros = o->scale_fmt == LAY_SCALE_F16_Z8 ? rows * ng : 0;
    c.perm = cols * lay_perm_bytes(cols);
    c.rot = o->rot ? 4 : 0;
    c.xscale = o->awq ? 2 * cols : 0;
    return c;
}

int64_t lay_tensor_bits(const lay_option *o, int64_t rows, int64_t cols)
{
    lay_cost c = lay_tensor_cost(o, rows, cols);
    return 8 * (c.values + c.scales + c.zeros + c.mins + c.perm + c.rot + c.xscale);
}

/* ==== Chunk packing (reference) ==== */

/* Plane p (4, 2 or 1 bits; 8 is handled apart) of 32 values: the bit layout of the
 * table in layout.h. shift selects which bits of q the plane carries. */
static void pack_plane(int p, int shift, const uint8_t *q, uint8_t *dst)
{
    int per_byte = 8 / p, stride = LAY_CHUNK / per_byte;
    uint8_t mask = (uint8_t)((1u << p) - 1);
    if (p == 1) { /* value 8k + i at bit i of byte k */
        for (int k = 0; k < 4; k++) {
            uint8_t b = 0;
            for (int i = 0; i < 8; i++) b |= (uint8_t)(((q[8 * k + i] >> shift) & 1u) << i);
            dst[k] = b;
        }
        return;
    }
    for (int k = 0; k < stride; k++) {
        uint8_t b = 0;
        for (int i = 0; i < per_byte; i++) b |= (uint8_t)(((q[k + i * stride] >> shift) & mask) << (i * p));
        dst[k] = b;
    }
}

static void unpack_plane(int p, int shift, const uint8_t *src, uint8_t *q)
{
    int per_byte = 8 / p, stride = LAY_CHUNK / per_byte;
    uint8_t mask = (uint8_t)((1u << p) - 1);
    if (p == 1) {
        for (int k = 0; k < 4; k++)
            for (int i = 0; i < 8; i++) q[8 * k + i] |= (uint8_t)(((src[k] >> i) & 1u) << shift);
        return;
    }
    for (int k = 0; k < stride; k++)
        for (int i = 0; i < per_byte; i++) q[k + i * stride] |= (uint8_t)(((src[k] >> (i * p)) & mask) << shift);
}

void lay_pack_chunk(int bits, const uint8_t *q, uint8_t *dst)
{
    if (bits == 8) { memcpy(dst, q, LAY_CHUNK); return; }
    int shift = 0;
    for (int p = 4; p >= 1; p >>= 1) {
        if (!(bits & p)) continue;
        pack_plane(p, shift, q, dst);
        dst += p * LAY_CHUNK / 8;
        shift += p;
    }
}

void lay_unpack_chunk(int bits, const uint8_t *src, uint8_t *q)
{
    if (bits == 8) { memcpy(q, src, LAY_CHUNK); return; }
    memset(q, 0, LAY_CHUNK);
    int shift = 0;
    for (int p = 4; p >= 1; p >>= 1) {
        if (!(bits & p)) continue;
        unpack_plane(p, shift, src, q);
        src += p * LAY_CHUNK / 8;
        shift += p;
    }
}

/* ==== Unpacked quantized tensors ==== */

void lay_qtensor_arrays(lay_qtensor *t, void *arrays[LAY_QTENSOR_ARRAYS], size_t bytes[LAY_QTENSOR_ARRAYS])
{
    int type = lay_option_ggml(&t->opt);
    int64_t ng = type >= 0 ? 0 : lay_n_groups(&t->opt, t->cols);
    arrays[0] = t->perm, arrays[1] = t->q, arrays[2] = t->scale, arrays[3] = t->zero, arrays[4] = t->blocks;
    arrays[5] = t->xscale;
    bytes[0] = type >= 0 ? 0 : (size_t)t->cols * sizeof *t->perm;
    bytes[1] = type >= 0 ? 0 : (size_t)(t->rows * t->cols);
    bytes[2] = (size_t)(t->rows * ng) * sizeof *t->scale;
    bytes[3] = (size_t)(t->rows * ng);
    bytes[4] = type >= 0 ? (size_t)(t->rows * lay_ggml_row_bytes(type, t->cols)) : 0;
    bytes[5] = t->opt.awq ? (size_t)t->cols * sizeof *t->xscale : 0;
}

int lay_qtensor_alloc(lay_qtensor *t, int64_t rows, int64_t cols, const lay_option *o)
{
    void *arrays[LAY_QTENSOR_ARRAYS];
    size_t bytes[LAY_QTENSOR_ARRAYS];
    memset(t, 0, sizeof *t);
    t->rows = rows, t->cols = cols, t->opt = *o;
    lay_qtensor_arrays(t, arrays, bytes);
    t->perm = bytes[0] ? malloc(bytes[0]) : NULL;
    t->q = bytes[1] ? malloc(bytes[1]) : NULL;
    t->scale = bytes[2] ? malloc(bytes[2]) : NULL;
    t->zero = bytes[3] ? malloc(bytes[3]) : NULL;
    t->blocks = bytes[4] ? malloc(bytes[4]) : NULL;
    t->xscale = bytes[5] ? malloc(bytes[5]) : NULL;
    lay_qtensor_arrays(t, arrays, bytes);
    for (int k = 0; k < LAY_QTENSOR_ARRAYS; k++)
        if (bytes[k] && !arrays[k]) return lay_qtensor_free(t), -1;
    return 0;
}

int lay_qtensor_of_blocks(lay_qtensor *t, int64_t rows, int64_t cols, const lay_option *o, const void *blocks)
{
    if (lay_qtensor_alloc(t, rows, cols, o)) return -1;
    memcpy(t->blocks, blocks, (size_t)(rows * lay_ggml_row_bytes(lay_option_ggml(o), cols)));
    return 0;
}

void lay_qtensor_free(lay_qtensor *t)
{
    free(t->perm), free(t->q), free(t->scale), free(t->zero), free(t->blocks), free(t->xscale);
    t->perm = NULL, t->q = NULL, t->scale = NULL, t->zero = NULL, t->blocks = NULL, t->xscale = NULL;
}

void lay_qtensor_dequant(const lay_qtensor *t, float *w)
{
    int type = lay_option_ggml(&t->opt);
    if (type >= 0) {
        int64_t rb = lay_ggml_row_bytes(type, t->cols);
        for (int64_t r = 0; r < t->rows; r++) lay_ggml_decode_row(type, t->blocks + r * rb, w + r * t->cols, t->cols);
        return;
    }
    int64_t ng = lay_n_groups(&t->opt, t->cols);
    for (int64_t r = 0; r < t->rows; r++)
        for (int64_t g = 0; g < ng; g++) {
            float s = lay_f16_to_f32(t->scale[r * ng + g]);
            float z = (float)t->zero[r * ng + g];
            int64_t j0 = lay_group_start(&t->opt, g), j1 = j0 + lay_group_cols(&t->opt, t->cols, g);
            for (int64_t j = j0; j < j1; j++)
                w[r * t->cols + t->perm[j]] = s * ((float)t->q[r * t->cols + j] - z);
        }
    for (int64_t r = 0; t->opt.rot && r < t->rows; r++) lay_rot_unapply(t->opt.rot, t->rot_seed, w + r * t->cols, t->cols);
    for (int64_t r = 0; t->opt.awq && r < t->rows; r++) lay_xscale_mul(t->xscale, w + r * t->cols, t->cols);
}

/* ==== Packed tensors ==== */

void lay_pack_tensor(const lay_qtensor *q, uint8_t *values, uint16_t *scales, uint8_t *zeros, uint16_t *mins,
                     void *perm, uint16_t *xscale)
{
    const lay_option *o = &q->opt;
    int64_t ng = lay_n_groups(o, q->cols), rb = lay_row_bytes(o, q->cols);
    int type = lay_option_ggml(o);
    if (type >= 0) {
        int64_t bb = lay_ggml_row_bytes(type, q->cols);
        for (int64_t r = 0; r < q->rows; r++)
            lay_ggml_to_packed(type, q->blocks + r * bb, q->cols, values + r * rb, scales + r * ng,
                               lay_ggml_has_min(type) ? mins + r * ng : NULL);
        return;
    }
    for (int64_t r = 0; r < q->rows; r++)
        for (int64_t g = 0; g < ng; g++) {
            int bits = lay_group_bits(o, q->cols, g);
            const uint8_t *src = q->q + r * q->cols + lay_group_start(o, g);
            uint8_t *dst = values + r * rb + lay_group_offset(o, q->cols, g);
            for (int64_t c = 0; c < lay_group_cols(o, q->cols, g); c += LAY_CHUNK, dst += bits * LAY_CHUNK / 8)
                lay_pack_chunk(bits, src + c, dst);
        }
    memcpy(scales, q->scale, (size_t)(q->rows * ng) * sizeof *scales);
    if (zeros && o->scale_fmt == LAY_SCALE_F16_Z8) memcpy(zeros, q->zero, (size_t)(q->rows * ng));
    for (int64_t j = 0; j < q->cols; j++) {
        if (lay_perm_bytes(q->cols) == 2) ((uint16_t *)perm)[j] = (uint16_t)q->perm[j];
        else ((uint32_t *)perm)[j] = (uint32_t)q->perm[j];
    }
    if (o->awq) memcpy(xscale, q->xscale, (size_t)q->cols * sizeof *xscale);
}

void lay_packed_dequant(const lay_packed *p, float *w)
{
    const lay_option *o = &p->opt;
    int64_t ng = lay_n_groups(o, p->cols), rb = lay_row_bytes(o, p->cols);
    uint8_t q[LAY_CHUNK];
    for (int64_t r = 0; r < p->rows; r++)
        for (int64_t g = 0; g < ng; g++) {
            int bits = lay_group_bits(o, p->cols, g);
            float s = lay_f16_to_f32(p->scales[r * ng + g]), z = (float)lay_zero_at(p, r, g, bits);
            float m = lay_min_at(p, r, g);
            const uint8_t *src = p->values + r * rb + lay_group_offset(o, p->cols, g);
            int64_t j0 = lay_group_start(o, g);
            for (int64_t c = 0; c < lay_group_cols(o, p->cols, g); c += LAY_CHUNK, src += bits * LAY_CHUNK / 8) {
                lay_unpack_chunk(bits, src, q);
                for (int i = 0; i < LAY_CHUNK; i++) {
                    float v = s * ((float)q[i] - z);
                    w[r * p->cols + lay_perm_at(p, j0 + c + i)] = p->mins ? v + m : v;
                }
            }
        }
    for (int64_t r = 0; o->rot && r < p->rows; r++) lay_rot_unapply(o->rot, p->rot_seed, w + r * p->cols, p->cols);
    for (int64_t r = 0; o->awq && r < p->rows; r++) lay_xscale_mul(p->xscale, w + r * p->cols, p->cols);
}

float lay_min_at(const lay_packed *p, int64_t r, int64_t g)
{
    return p->mins ? lay_f16_to_f32(p->mins[r * lay_n_groups(&p->opt, p->cols) + g]) : 0.0f;
}

/* ==== Half precision ==== */

uint16_t lay_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, e = (x >> 23) & 0xffu, m = x & 0x7fffffu;
    if (e == 0xff) return (uint16_t)(sign | 0x7c00u | (m ? 0x200u : 0)); /* inf, nan */
    int32_t he = (int32_t)e - 127 + 15;
    if (he >= 0x1f) return (uint16_t)(sign | 0x7c00u);                  /* overflow */
    if (he <= 0) {                                                         /* subnormal */
        if (he < -10) return (uint16_t)sign;
        m |= 0x800000u;
        int shift = 14 - he;
        uint32_t hm = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (hm & 1))) hm++;
        return (uint16_t)(sign | hm);
    }
    uint32_t hm = m >> 13, rem = m & 0x1fffu;
    uint32_t h = sign | ((uint32_t)he << 10) | hm;
    if (rem > 0x1000u || (rem == 0x1000u && (hm & 1))) h++; /* carries into e correctly */
    return (uint16_t)h;
}

float lay_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    if (e == 0) {
        if (m == 0) x = sign;
        else { /* subnormal: normalise */
            e = 127 - 15 + 1;
            while (!(m & 0x400u)) { m <<= 1; e--; }
            x = sign | (e << 23) | ((m & 0x3ffu) << 13);
        }
    } else if (e == 0x1f) x = sign | 0x7f800000u | (m << 13);
    else x = sign | ((e - 15 + 127) << 23) | (m << 13);
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* ==== Tensor classes ==== */

static const char *const class_names[LAY_N_CLASSES] = {"q", "k", "v", "o", "gate", "up", "down", "head"};

const char *lay_class_name(lay_class c) { return (unsigned)c < LAY_N_CLASSES ? class_names[c] : "?"; }

int lay_class_of_name(const char *name)
{
    for (int c = 0; name && c < LAY_N_CLASSES; c++)
        if (!strcmp(name, class_names[c])) return c;
    return -1;
}

/* ==== Input rotations ==== */

int lay_rot_sign(uint32_t seed, int64_t j)
{
    uint64_t z = ((uint64_t)seed << 32) + (uint64_t)j;
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return z & 1 ? -1 : 1;
}

/* H_n v in place: stages h = 1, 2, 4, ..., each pair (i, i + h) -> (a + b, a - b). */
#define FWHT(T, v, n)                                                                      \
    for (int h = 1; h < (n); h *= 2)                                                       \
        for (int i0 = 0; i0 < (n); i0 += 2 * h)                                            \
            for (int i = i0; i < i0 + h; i++) {                                            \
                T a_ = (v)[i], b_ = (v)[i + h];                                            \
                (v)[i] = a_ + b_, (v)[i + h] = a_ - b_;                                    \
            }

static void fwht_f(float *v, int n) { FWHT(float, v, n) }
static void fwht_d(double *v, int n) { FWHT(double, v, n) }

/* v -> R^T v per block: signs, H_n, 1/sqrt(n) (in T), as layout.h says. */
#define ROT_APPLY(T, fwht, rot, seed, v, cols)                                             \
    do {                                                                                   \
        T norm_ = (T)(1.0 / sqrt((double)(rot)));                                          \
        for (int64_t j0 = 0; j0 < (cols); j0 += (rot)) {                                   \
            for (int i = 0; i < (rot); i++) (v)[j0 + i] *= (T)lay_rot_sign((seed), j0 + i); \
            fwht((v) + j0, (rot));                                                         \
            for (int i = 0; i < (rot); i++) (v)[j0 + i] *= norm_;                          \
        }                                                                                  \
    } while (0)

void lay_rot_apply(int rot, uint32_t seed, float *v, int64_t cols)
{
    if (rot) ROT_APPLY(float, fwht_f, rot, seed, v, cols);
}

void lay_rot_unapply(int rot, uint32_t seed, float *v, int64_t cols)
{
    if (!rot) return;
    float norm = (float)(1.0 / sqrt((double)rot));
    for (int64_t j0 = 0; j0 < cols; j0 += rot) {
        fwht_f(v + j0, rot);
        for (int i = 0; i < rot; i++) v[j0 + i] *= norm * (float)lay_rot_sign(seed, j0 + i);
    }
}

/* Every row of h[cols][cols] -> R^T row, in double. */
static void rot_rows_d(int rot, uint32_t seed, double *h, int64_t cols)
{
    for (int64_t r = 0; r < cols; r++) ROT_APPLY(double, fwht_d, rot, seed, h + r * cols, cols);
}

void lay_rot_hessian(int rot, uint32_t seed, double *h, int64_t cols)
{
    if (!rot) return;
    rot_rows_d(rot, seed, h, cols);  /* rows of H R (H symmetric: row i of H R is R^T h_i) */
    for (int64_t i = 0; i < cols; i++) /* transpose: R^T H */
        for (int64_t j = i + 1; j < cols; j++) {
            double t = h[i * cols + j];
            h[i * cols + j] = h[j * cols + i], h[j * cols + i] = t;
        }
    rot_rows_d(rot, seed, h, cols);  /* R^T H R */
    for (int64_t i = 0; i < cols; i++) /* exactly symmetric, as GPTQ's Cholesky expects */
        for (int64_t j = i + 1; j < cols; j++) h[j * cols + i] = h[i * cols + j];
}

/* ==== Activation-aware input scales ==== */

void lay_xscale_mul(const uint16_t *m, float *v, int64_t cols)
{
    for (int64_t j = 0; j < cols; j++) v[j] *= lay_f16_to_f32(m[j]);
}

void lay_xscale_hessian(const uint16_t *m, double *h, int64_t cols)
{
    for (int64_t i = 0; i < cols; i++) {
        double mi = lay_f16_to_f32(m[i]);
        for (int64_t j = 0; j < cols; j++) h[i * cols + j] *= mi * (double)lay_f16_to_f32(m[j]);
    }
}
