/*
 * runtime/qkernels_avx512.c — the packed-weight kernels for AVX-512 (F, BW, VL, DQ)
 * with VNNI, same signatures and same results (up to float rounding) as
 * runtime/qkernels.c. Built with the AVX-512 flags; must only be reached through
 * qk_get(), which checks the CPU first. Never allocates or prints.
 *
 * One chunk of 32 values becomes one 256-bit vector of bytes in value order, one
 * plane at a time (see the plane table in layout/layout.h):
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

#include "qkernels_x86_planes.h"

/* ==== Chunk decoding ==== */

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

/* Two chunks: two vpdpbusd (no saturation to save a step on). */
AI __m256i dot_add2(const int b, __m256i acc, __m256i q0, const int8_t *x0, __m256i q1, const int8_t *x1)
{
    return dot_add(b, dot_add(b, acc, q0, x0), q1, x1);
}

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

/* Width 4 in block order: one 64-byte load is four chunks' low and high nibbles
 * (raw: two 64-byte loads of them unpacked). */
AI int64_t wide4(const int b, const int raw, const uint8_t *v, const int64_t gch, const int8_t *xq, int64_t xq_stride,
                 __m256i *ia, const int nb)
{
    int64_t c = 0;
    if (b == 4 && gch % 4 == 0) {
        __m512i za[QK_NB], zb[QK_NB];
        EACH_K for (int k = 0; k < nb; k++) za[k] = _mm512_setzero_si512(), zb[k] = _mm512_setzero_si512();
        for (; c < gch; c += 4) {
            __m512i lo, hi;
            if (raw) {
                lo = _mm512_loadu_si512(v + c * 32), hi = _mm512_loadu_si512(v + c * 32 + 64);
            } else {
                __m512i w = _mm512_loadu_si512(v + c * 16), m = _mm512_set1_epi8(0x0f);
                lo = _mm512_and_si512(w, m), hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), m);
            }
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
    return c;
}

/* ==== The shared loops (qkernels_x86.h) ==== */

#define QK_WIDE4(b, raw, v, gch, xq, xq_stride, ia, nb, c) ((c) = wide4(b, raw, v, gch, xq, xq_stride, ia, nb))
#define QK_NAME(f) f##_avx512
#define QK_TABLE qk_avx512
#define QK_ISA_NAME "avx512"
/* 2 and 3 bits, measured on an AVX-512 VNNI Zen 4 (BENCHMARKS.md, "On an AVX-512
 * machine"): on a 7B-shaped model the lookups drew level with vpdpbusd there
 * (12.25 against 12.05 tokens/s at 2.5 bpw, 10.70 against 10.85 at 3.0), on
 * SmolLM2's narrow rows they were 1.60-1.77x faster; from 4 bits they lost on the
 * 7B layers (9.20 against 10.95 at 4.0 bpw) and at 5-8 bits on one core. */
#define QK_LUT_WIDTHS [2] = 1, [3] = 1
#define QK_BLOCK4 4
#include "qkernels_x86.h"
