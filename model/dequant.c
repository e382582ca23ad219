/*
 * model/dequant.c — turns stored rows (F32, F16, BF16 and the GGML block formats
 * Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K) into fp32, plus the type traits table.
 *
 * The block layouts are GGML's, byte for byte (tables below). Each dequantizer
 * computes in the same order of float operations as GGML's reference, so results
 * are bit-identical to it (and to gguf-py's numpy version). Source bytes may be
 * unaligned: multi-byte fields are read with memcpy. These functions must never
 * allocate, print, or read beyond n values' worth of blocks.
 */
#include "model.h"

#include <assert.h>
#include <string.h>

/* ==== Type traits ==== */

static const struct {
    const char *name;
    int block;        /* values per block */
    int bytes;        /* bytes per block */
} traits[MDL_DTYPE_COUNT] = {
    [MDL_F32] = {"F32", 1, 4},     [MDL_F16] = {"F16", 1, 2},       [MDL_BF16] = {"BF16", 1, 2},
    [MDL_Q8_0] = {"Q8_0", 32, 34}, [MDL_Q4_0] = {"Q4_0", 32, 18},   [MDL_Q4_1] = {"Q4_1", 32, 20},
    [MDL_Q4_K] = {"Q4_K", 256, 144}, [MDL_Q5_K] = {"Q5_K", 256, 176}, [MDL_Q6_K] = {"Q6_K", 256, 210},
    [MDL_I32] = {"I32", 1, 4},     [MDL_U8] = {"U8", 1, 1},         [MDL_U16] = {"U16", 1, 2},
    [MDL_U32] = {"U32", 1, 4},
};

const char *mdl_dtype_name(mdl_dtype t) { return (unsigned)t < MDL_DTYPE_COUNT ? traits[t].name : "?"; }

int mdl_block_size(mdl_dtype t)
{
    assert((unsigned)t < MDL_DTYPE_COUNT);
    return traits[t].block;
}

size_t mdl_row_bytes(mdl_dtype t, int64_t n)
{
    assert((unsigned)t < MDL_DTYPE_COUNT && n >= 0);
    return (size_t)(n / traits[t].block) * (size_t)traits[t].bytes;
}

/* ==== Scalars ==== */

static uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

/* IEEE half -> float, exact for every input (subnormals, infinities, NaN payloads). */
static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalize */
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3FF) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static float fp16(const uint8_t *p) { return half_to_float(rd16(p)); }

static float bf16(const uint8_t *p)
{
    uint32_t bits = (uint32_t)rd16(p) << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* F16 rows with the F16C instruction where the CPU has it (chosen at run time):
 * exact like half_to_float for every finite value and infinity, eight at a time,
 * which is what lets a model run from its F16 file at memory speed. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("avx,f16c"))) static void row_f16_f16c(const uint8_t *b, float *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(b + 2 * i))));
    for (; i < n; i++) y[i] = fp16(b + 2 * i);
}

static int have_f16c(void) { return __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx"); }
#else
static void row_f16_f16c(const uint8_t *b, float *y, int64_t n) { (void)b, (void)y, (void)n; }
static int have_f16c(void) { return 0; }
#endif

static void row_f16(const uint8_t *b, float *y, int64_t n)
{
    if (have_f16c()) {
        row_f16_f16c(b, y, n);
        return;
    }
    for (int64_t i = 0; i < n; i++) y[i] = fp16(b + 2 * i);
}

/* ==== 32-value blocks ==== */

/* Q8_0, 34 bytes:  OFFSET 0 fp16 d | 2 int8 q[32].   x = d * q */
static void row_q8_0(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 34, y += 32) {
        float d = fp16(b);
        for (int j = 0; j < 32; j++) y[j] = (float)(int8_t)b[2 + j] * d;
    }
}

/* Q4_0, 18 bytes:  0 fp16 d | 2 uint8 qs[16]; value j is the low nibble of qs[j],
 * value j+16 the high nibble.   x = d * (q - 8) */
static void row_q4_0(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 18, y += 32) {
        float d = fp16(b);
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)((b[2 + j] & 0xF) - 8);
            y[j + 16] = d * (float)((b[2 + j] >> 4) - 8);
        }
    }
}

/* Q4_1, 20 bytes:  0 fp16 d | 2 fp16 m | 4 uint8 qs[16] (nibbles as Q4_0).  x = d*q + m */
static void row_q4_1(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 20, y += 32) {
        float d = fp16(b), m = fp16(b + 2);
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)(b[4 + j] & 0xF) + m;
            y[j + 16] = d * (float)(b[4 + j] >> 4) + m;
        }
    }
}

/* ==== 256-value super-blocks (K-quants) ==== */

/* The 12 scale bytes of Q4_K/Q5_K hold 8 six-bit scales and 8 six-bit mins:
 * sub-block j < 4: scale = s[j] & 63, min = s[j+4] & 63; j >= 4: the low 4 bits
 * come from s[j+4] (scale: low nibble, min: high nibble) and the top 2 bits from
 * the top of s[j-4] (scale) or s[j] (min). */
static void scale_min_k4(int j, const uint8_t *s, int *sc, int *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q4_K, 144 bytes:  0 fp16 d | 2 fp16 dmin | 4 scales[12] | 16 qs[128].
 * Eight sub-blocks of 32; sub-blocks 2k and 2k+1 share qs[32k..32k+32): low
 * nibbles then high nibbles.  x = (d*sc) * q - (dmin*m) */
static void row_q4_k(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 144) {
        float d = fp16(b), dmin = fp16(b + 2);
        const uint8_t *s = b + 4, *q = b + 16;
        for (int k = 0; k < 4; k++, q += 32) {
            int sc1, m1, sc2, m2;
            scale_min_k4(2 * k, s, &sc1, &m1);
            scale_min_k4(2 * k + 1, s, &sc2, &m2);
            float d1 = d * (float)sc1, mm1 = dmin * (float)m1, d2 = d * (float)sc2, mm2 = dmin * (float)m2;
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)(q[l] & 0xF) - mm1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (float)(q[l] >> 4) - mm2;
        }
    }
}

/* Q5_K, 176 bytes:  0 fp16 d | 2 fp16 dmin | 4 scales[12] | 16 qh[32] | 48 qs[128].
 * As Q4_K, plus a fifth bit: bit j of qh[l] is the high bit of value l of
 * sub-block j.  x = (d*sc) * (q + 16*h) - (dmin*m) */
static void row_q5_k(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 176) {
        float d = fp16(b), dmin = fp16(b + 2);
        const uint8_t *s = b + 4, *qh = b + 16, *q = b + 48;
        for (int k = 0; k < 4; k++, q += 32) {
            int sc1, m1, sc2, m2;
            scale_min_k4(2 * k, s, &sc1, &m1);
            scale_min_k4(2 * k + 1, s, &sc2, &m2);
            float d1 = d * (float)sc1, mm1 = dmin * (float)m1, d2 = d * (float)sc2, mm2 = dmin * (float)m2;
            int u1 = 1 << (2 * k), u2 = 2 << (2 * k);
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)((q[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - mm1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (float)((q[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - mm2;
        }
    }
}

/* Q6_K, 210 bytes:  0 ql[128] | 128 qh[64] | 192 int8 scales[16] | 208 fp16 d.
 * Two halves of 128 values; in half h (ql += 64h, qh += 32h, sc += 8h), for l < 32:
 *   value l      = (ql[l]    & 15) | ((qh[l] >> 0 & 3) << 4), scale sc[l/16]
 *   value l + 32 = (ql[l+32] & 15) | ((qh[l] >> 2 & 3) << 4), scale sc[l/16 + 2]
 *   value l + 64 = (ql[l]    >> 4) | ((qh[l] >> 4 & 3) << 4), scale sc[l/16 + 4]
 *   value l + 96 = (ql[l+32] >> 4) | ((qh[l] >> 6 & 3) << 4), scale sc[l/16 + 6]
 * x = (d*sc) * (q - 32) */
static void row_q6_k(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 210) {
        float d = fp16(b + 208);
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, y += 128) {
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * (float)sc[is] * (float)q1;
                y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
        }
    }
}

/* ==== Dispatch ==== */

void mdl_dequant_row(mdl_dtype t, const void *src, float *dst, int64_t n)
{
    assert((unsigned)t < MDL_I32 && n % traits[t].block == 0);
    const uint8_t *b = src;
    int64_t nb = n / traits[t].block;
    switch (t) {
    case MDL_F32: memcpy(dst, src, (size_t)n * 4); break;
    case MDL_F16: row_f16(b, dst, n); break;
    case MDL_BF16: for (int64_t i = 0; i < n; i++) dst[i] = bf16(b + 2 * i); break;
    case MDL_Q8_0: row_q8_0(b, dst, nb); break;
    case MDL_Q4_0: row_q4_0(b, dst, nb); break;
    case MDL_Q4_1: row_q4_1(b, dst, nb); break;
    case MDL_Q4_K: row_q4_k(b, dst, nb); break;
    case MDL_Q5_K: row_q5_k(b, dst, nb); break;
    case MDL_Q6_K: row_q6_k(b, dst, nb); break;
    default: assert(0);
    }
}
