/*
 * runtime/qkernels_avx512.c — the packed-weight kernels for AVX-512 (F, BW, VL, DQ)
 * with VNNI, same signatures and same results (up to float rounding) as
 * runtime/qkernels.c. Built with the AVX-512 flags; must only be reached through
 * qk_get(), which checks the CPU first. Never allocates or prints.
 *
 * One chunk of 32 values becomes one 256-bit vector of bytes in value order, one
 * plane at a time (see the plane table in pack/layout.h):
 *
 *   4-bit plane, 16 bytes:  broadcast to both 128-bit lanes, shift the upper lane's
 *                           qwords right by 4, mask 0x0f -> values 0..15 | 16..31
 *   2-bit plane,  8 bytes:  broadcast to the four qwords, shift qword i right by
 *                           2i, mask 0x03 -> values 8i .. 8i+7 in qword i
 *   1-bit plane,  4 bytes:  the 32 bits are a byte mask: a masked byte add puts
 *                           the plane's weight into the selected bytes
 *
 * then one vpdpbusd (unsigned values times signed activations, four products per
 * int32 lane, no saturation) per chunk and activation row, mostly on 256-bit
 * vectors (on Zen 4 a 512-bit operation costs two 256-bit ones). Width 4 takes its
 * activations in block order (qkernels.h): one 64-byte load is four chunks' planes,
 * one mask gives their low nibbles and a shift and a mask their high nibbles.
 * Per group the int32 lanes become floats once, scaled by s * d. Two interleaved
 * accumulators at each level keep vpdpbusd and the float adds off one long chain.
 */
#include "qkernels.h"

#include <assert.h>
#include <immintrin.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))
/* Loops over the activation rows of a block unroll fully, so their accumulators
 * live in registers rather than on the stack. */
#define EACH_K _Pragma("GCC unroll 4")

/* ==== Chunk decoding ==== */

AI __m256i plane4(const uint8_t *src)
{
    __m256i t = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)src));
    t = _mm256_srlv_epi64(t, _mm256_setr_epi64x(0, 0, 4, 4));
    return _mm256_and_si256(t, _mm256_set1_epi8(0x0f));
}

AI __m256i plane2(const uint8_t *src)
{
    int64_t w;
    memcpy(&w, src, 8);
    __m256i t = _mm256_srlv_epi64(_mm256_set1_epi64x(w), _mm256_setr_epi64x(0, 2, 4, 6));
    return _mm256_and_si256(t, _mm256_set1_epi8(0x03));
}

/* q with `bit` added to the bytes whose bit is set in the 1-bit plane. */
AI __m256i plane1_add(__m256i q, const uint8_t *src, int bit)
{
    uint32_t w;
    memcpy(&w, src, 4);
    return _mm256_mask_add_epi8(q, _cvtu32_mask32(w), q, _mm256_set1_epi8((char)bit));
}

AI __m256i chunk_decode(const int b, const uint8_t *src)
{
    switch (b) {
    case 2: return plane2(src);
    case 3: return plane1_add(plane2(src), src + 8, 4);
    case 4: return plane4(src);
    case 5: return plane1_add(plane4(src), src + 16, 16);
    case 6: return _mm256_or_si256(plane4(src), _mm256_slli_epi16(plane2(src + 16), 4));
    case 7:
        return plane1_add(_mm256_or_si256(plane4(src), _mm256_slli_epi16(plane2(src + 16), 4)), src + 24, 64);
    default: return _mm256_loadu_si256((const __m256i *)src);
    }
}

/* ==== Dot products ==== */

/* int32 lanes += q (unsigned bytes) . x (signed bytes), four products per lane. */
AI __m256i dot_add(const int b, __m256i acc, __m256i q, const int8_t *xp)
{
    (void)b;
    return _mm256_dpbusd_epi32(acc, q, _mm256_loadu_si256((const __m256i *)xp));
}

AI float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* One group: two interleaved accumulators per activation row keep the integer
 * dot products off one long dependency chain; sum into facc scaled by sd. */
AI void dot_group(const int b, const uint8_t *v, const int64_t gch, const int8_t *xq, int64_t xq_stride,
                  const float *sd, int64_t sd_stride, __m256 *facc, const int nb)
{
    __m256i ia[QK_NB], ib[QK_NB];
    EACH_K for (int k = 0; k < nb; k++) ia[k] = _mm256_setzero_si256(), ib[k] = _mm256_setzero_si256();
    int64_t c = 0;
    if (b == 4 && gch % 4 == 0) { /* block order: one 64-byte load is four chunks */
        __m512i za[QK_NB], zb[QK_NB];
        EACH_K for (int k = 0; k < nb; k++) za[k] = _mm512_setzero_si512(), zb[k] = _mm512_setzero_si512();
        for (; c < gch; c += 4) {
            __m512i w = _mm512_loadu_si512(v + c * 16), m = _mm512_set1_epi8(0x0f);
            __m512i lo = _mm512_and_si512(w, m), hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), m);
            EACH_K for (int k = 0; k < nb; k++) {
                za[k] = _mm512_dpbusd_epi32(za[k], lo, _mm512_loadu_si512(xq + k * xq_stride + c * 32));
                zb[k] = _mm512_dpbusd_epi32(zb[k], hi, _mm512_loadu_si512(xq + k * xq_stride + c * 32 + 64));
            }
        }
        EACH_K for (int k = 0; k < nb; k++) {
            __m512i t = _mm512_add_epi32(za[k], zb[k]);
            ia[k] = _mm256_add_epi32(_mm512_castsi512_si256(t), _mm512_extracti64x4_epi64(t, 1));
        }
    }
    if (b == 4 && gch % 2 == 0) { /* pair order: one 32-byte load is two chunks */
#pragma GCC unroll 4
        for (; c < gch; c += 2) {
            __m256i w = _mm256_loadu_si256((const __m256i *)(v + c * 16)), m = _mm256_set1_epi8(0x0f);
            __m256i lo = _mm256_and_si256(w, m), hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), m);
            EACH_K for (int k = 0; k < nb; k++) {
                ia[k] = dot_add(b, ia[k], lo, xq + k * xq_stride + c * 32);
                ib[k] = dot_add(b, ib[k], hi, xq + k * xq_stride + c * 32 + 32);
            }
        }
    }
#pragma GCC unroll 4
    for (; c + 2 <= gch; c += 2) {
        __m256i q0 = chunk_decode(b, v + c * b * 4), q1 = chunk_decode(b, v + (c + 1) * b * 4);
        EACH_K for (int k = 0; k < nb; k++) {
            ia[k] = dot_add(b, ia[k], q0, xq + k * xq_stride + c * 32);
            ib[k] = dot_add(b, ib[k], q1, xq + k * xq_stride + c * 32 + 32);
        }
    }
    if (c < gch) {
        __m256i q0 = chunk_decode(b, v + c * b * 4);
        EACH_K for (int k = 0; k < nb; k++) ia[k] = dot_add(b, ia[k], q0, xq + k * xq_stride + c * 32);
    }
    EACH_K for (int k = 0; k < nb; k++)
        facc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(ia[k], ib[k])),
                                  _mm256_set1_ps(sd[k * sd_stride]), facc[k]);
}

AI void dot_run(const int b, const uint8_t *v, int64_t ng, const int64_t gch, const int8_t *xq, int64_t xq_stride,
                const float *sd, int64_t sd_stride, float *acc, const int nb)
{
    __m256 fa[QK_NB], fb[QK_NB];   /* two chains: a float add per group is not the limit */
    EACH_K for (int k = 0; k < nb; k++) fa[k] = _mm256_setzero_ps(), fb[k] = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g + 2 <= ng; g += 2) {
        dot_group(b, v + g * gch * b * 4, gch, xq + g * gch * 32, xq_stride, sd + g, sd_stride, fa, nb);
        dot_group(b, v + (g + 1) * gch * b * 4, gch, xq + (g + 1) * gch * 32, xq_stride, sd + g + 1, sd_stride, fb, nb);
    }
    if (g < ng) dot_group(b, v + g * gch * b * 4, gch, xq + g * gch * 32, xq_stride, sd + g, sd_stride, fa, nb);
    EACH_K for (int k = 0; k < nb; k++) acc[k] += hsum(_mm256_add_ps(fa[k], fb[k]));
}

/* Specialised for the common group lengths (1, 2, 4 chunks: g32, g64, g128). */
AI void dot_any(const int b, const uint8_t *v, int64_t ng, int64_t gch, const int8_t *xq, int64_t xq_stride,
                const float *sd, int64_t sd_stride, float *acc, const int nb)
{
    switch (gch) {
    case 1: dot_run(b, v, ng, 1, xq, xq_stride, sd, sd_stride, acc, nb); break;
    case 2: dot_run(b, v, ng, 2, xq, xq_stride, sd, sd_stride, acc, nb); break;
    case 4: dot_run(b, v, ng, 4, xq, xq_stride, sd, sd_stride, acc, nb); break;
    default: dot_run(b, v, ng, gch, xq, xq_stride, sd, sd_stride, acc, nb); break;
    }
}

#define DOT_WIDTH(b)                                                                                   \
    static void dot##b##_avx512(const uint8_t *v, int64_t ng, int64_t gch, const int8_t *xq,             \
                              int64_t xq_stride, const float *sd, int64_t sd_stride, float *acc, int nb) \
    {                                                                                                  \
        assert(nb >= 1 && nb <= QK_NB);                                                                \
        switch (nb) {                                                                                  \
        case 1: dot_any(b, v, ng, gch, xq, xq_stride, sd, sd_stride, acc, 1); break;                  \
        case 2: dot_any(b, v, ng, gch, xq, xq_stride, sd, sd_stride, acc, 2); break;                  \
        case 3: dot_any(b, v, ng, gch, xq, xq_stride, sd, sd_stride, acc, 3); break;                  \
        default: dot_any(b, v, ng, gch, xq, xq_stride, sd, sd_stride, acc, 4); break;                 \
        }                                                                                              \
    }
DOT_WIDTH(2)
DOT_WIDTH(3)
DOT_WIDTH(4)
DOT_WIDTH(5)
DOT_WIDTH(6)
DOT_WIDTH(7)
DOT_WIDTH(8)

/* ==== Row preparation ==== */

static void prep_avx512(const uint16_t *s, const uint8_t *z, const float *xd, const int32_t *xs, int64_t ng,
                      int nb, float *sd, float *corr)
{
    EACH_K for (int k = 0; k < nb; k++) {
        const float *d = xd + k * ng;
        const int32_t *x = xs + k * ng;
        float *o = sd + k * ng;
        __m256 c8 = _mm256_setzero_ps();
        int64_t g = 0;
        for (; g + 8 <= ng; g += 8) {
            __m256 m = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + g))),
                                     _mm256_loadu_ps(d + g));
            _mm256_storeu_ps(o + g, m);
            __m256i zi = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(z + g)));
            __m256i zx = _mm256_mullo_epi32(zi, _mm256_loadu_si256((const __m256i *)(x + g)));
            c8 = _mm256_fmadd_ps(m, _mm256_cvtepi32_ps(zx), c8);
        }
        float c = hsum(c8);
        for (; g < ng; g++) {
            float m = _cvtsh_ss(s[g]) * d[g];
            o[g] = m;
            c += m * (float)((int32_t)z[g] * x[g]);
        }
        corr[k] = c;
    }
}

/* ==== Activation quantizer ==== */

AI __m256 absv(__m256 x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }

/* 32 floats * id -> 32 int8 in order; adds the int32 values to *sum. */
AI __m256i quant32(const float *x, __m256 id, __m256i *sum)
{
    __m512 id16 = _mm512_broadcast_f32x8(id);
    __m512i a = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x), id16));
    __m512i b = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + 16), id16));
    __m512i ab = _mm512_add_epi32(a, b);
    *sum = _mm256_add_epi32(*sum, _mm256_add_epi32(_mm512_castsi512_si256(ab), _mm512_extracti64x4_epi64(ab, 1)));
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm512_cvtepi32_epi8(a)), _mm512_cvtepi32_epi8(b), 1);
}

static void quant_avx512(const float *xp, int64_t cols, int64_t group, int8_t *xq, float *xd, int32_t *xs)
{
    for (int64_t j0 = 0, g = 0; j0 < cols; j0 += group, g++) {
        int64_t j1 = j0 + group < cols ? j0 + group : cols;
        __m256 m = _mm256_setzero_ps();
        for (int64_t j = j0; j < j1; j += 8) m = _mm256_max_ps(m, absv(_mm256_loadu_ps(xp + j)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = _mm_cvtss_f32(m4);
        __m256 id = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
        __m256i sum = _mm256_setzero_si256();
        for (int64_t j = j0; j < j1; j += 32) _mm256_storeu_si256((__m256i *)(xq + j), quant32(xp + j, id, &sum));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        xd[g] = amax / 127.0f;
        xs[g] = _mm_cvtsi128_si32(s4);
    }
}

const qk_kernels qk_avx512 = {
    .name = "avx512",
    .quant = quant_avx512,
    .prep = prep_avx512,
    .block_order = { [4] = 4 },
    .dot = { [2] = dot2_avx512, [3] = dot3_avx512, [4] = dot4_avx512, [5] = dot5_avx512,
             [6] = dot6_avx512, [7] = dot7_avx512, [8] = dot8_avx512 },
};
