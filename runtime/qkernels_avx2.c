/*
 * runtime/qkernels_avx2.c — the packed-weight kernels for AVX2 + FMA + F16C, same
 * signatures and same results (up to float rounding) as runtime/qkernels.c. Built
 * with -mavx2 -mfma -mf16c -mbmi2; must only be reached through qk_get(), which
 * checks the CPU first. Never allocates or prints.
 *
 * One chunk of 32 values becomes one 256-bit vector of bytes in value order, one
 * plane at a time (see the plane table in pack/layout.h):
 *
 *   4-bit plane, 16 bytes:  broadcast to both 128-bit lanes, shift the upper lane's
 *                           qwords right by 4, mask 0x0f -> values 0..15 | 16..31
 *   2-bit plane,  8 bytes:  broadcast to the four qwords, shift qword i right by
 *                           2i, mask 0x03 -> values 8i .. 8i+7 in qword i
 *   1-bit plane,  4 bytes:  byte j <- byte j/8 (pshufb), test bit j%8 (cmpeq)
 *
 * then vpmaddubsw (values <= 127, so the pair sums never saturate) and vpmaddwd
 * sum into int32 lanes; 8-bit values (up to 255) are widened to 16 bits instead.
 * Width 4 takes its activations in pair order (qkernels.h): one 32-byte load is two
 * chunks' planes. Per group the int32 lanes become floats once, scaled by s * d.
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

/* The 1-bit plane as bytes of 0 or `bit`. */
AI __m256i plane1(const uint8_t *src, int bit)
{
    int32_t w;
    memcpy(&w, src, 4);
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bits = _mm256_set1_epi64x((int64_t)0x8040201008040201ull);
    __m256i t = _mm256_shuffle_epi8(_mm256_set1_epi32(w), spread);
    t = _mm256_cmpeq_epi8(_mm256_and_si256(t, bits), bits);
    return _mm256_and_si256(t, _mm256_set1_epi8((char)bit));
}

AI __m256i chunk_decode(const int b, const uint8_t *src)
{
    switch (b) {
    case 2: return plane2(src);
    case 3: return _mm256_or_si256(plane2(src), plane1(src + 8, 4));
    case 4: return plane4(src);
    case 5: return _mm256_or_si256(plane4(src), plane1(src + 16, 16));
    case 6: return _mm256_or_si256(plane4(src), _mm256_slli_epi16(plane2(src + 16), 4));
    case 7:
        return _mm256_or_si256(_mm256_or_si256(plane4(src), _mm256_slli_epi16(plane2(src + 16), 4)),
                               plane1(src + 24, 64));
    default: return _mm256_loadu_si256((const __m256i *)src);
    }
}

/* ==== Dot products ==== */

/* int32 lanes += q (unsigned bytes) . x (signed bytes), four products per lane. */
AI __m256i dot_add(const int b, __m256i acc, __m256i q, const int8_t *xp)
{
    __m256i x = _mm256_loadu_si256((const __m256i *)xp);
    const __m256i ones = _mm256_set1_epi16(1);
    if (b < 8) return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), ones));
    __m256i qlo = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(q));
    __m256i qhi = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(q, 1));
    __m256i xlo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(x));
    __m256i xhi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(x, 1));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(qlo, xlo));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(qhi, xhi));
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
    static void dot##b##_avx2(const uint8_t *v, int64_t ng, int64_t gch, const int8_t *xq,             \
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

static void prep_avx2(const uint16_t *s, const uint8_t *z, const float *xd, const int32_t *xs, int64_t ng,
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
    __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), id));
    __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8), id));
    __m256i c = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 16), id));
    __m256i d = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 24), id));
    *sum = _mm256_add_epi32(*sum, _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d)));
    __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
    __m256i p = _mm256_packs_epi16(ab, cd);   /* lanes interleaved: fix the dword order */
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static void quant_avx2(const float *xp, int64_t cols, int64_t group, int8_t *xq, float *xd, int32_t *xs)
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

const qk_kernels qk_avx2 = {
    .name = "avx2",
    .quant = quant_avx2,
    .prep = prep_avx2,
    .block_order = { [4] = 2 },
    .dot = { [2] = dot2_avx2, [3] = dot3_avx2, [4] = dot4_avx2, [5] = dot5_avx2,
             [6] = dot6_avx2, [7] = dot7_avx2, [8] = dot8_avx2 },
};
