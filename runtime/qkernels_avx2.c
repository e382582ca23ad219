/*
 * runtime/qkernels_avx2.c — the packed-weight kernels for AVX2 + FMA + F16C, same
 * signatures and same results (up to float rounding) as runtime/qkernels.c. Built
 * with -mavx2 -mfma -mf16c -mbmi2; must only be reached through qk_get(), which
 * checks the CPU first. Never allocates or prints.
 *
 * One chunk of 32 values becomes one 256-bit vector of bytes in value order, one
 * plane at a time (see the plane table in layout/layout.h):
 *
 *   4-bit plane, 16 bytes:  broadcast to both 128-bit lanes, shift the upper lane's
 *                           qwords right by 4, mask 0x0f -> values 0..15 | 16..31
 *   2-bit plane,  8 bytes:  broadcast to the four qwords, shift qword i right by
 *                           2i, mask 0x03 -> values 8i .. 8i+7 in qword i
 *   1-bit plane,  4 bytes:  byte j <- byte j/8 (pshufb), test bit j%8 (cmpeq)
 *
 * then vpmaddubsw (values <= 127, so the pair sums never saturate) and vpmaddwd
 * sum into int32 lanes (two chunks' vpmaddubsw first added in 16 bits up to 6-bit
 * values); 8-bit values (up to 255) are widened to 16 bits instead.
 * Width 4 takes its activations in pair order (qkernels.h): one 32-byte load is two
 * chunks' planes. Per group the int32 lanes become floats once, scaled by s * d.
 */
#include "qkernels.h"

#include <assert.h>
#include <immintrin.h>
#include <string.h>

#include "qkernels_x86_planes.h"

/* ==== Chunk decoding ==== */

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

/* The same for two chunks at once: up to 6 bits, the two vpmaddubsw sums add in
 * 16 bits (|sum| <= 4 * 63 * 127 < 2^15) before one vpmaddwd, so each int32 lane
 * gets exactly what two dot_add calls give it, for three multiplies instead of four. */
AI __m256i dot_add2(const int b, __m256i acc, __m256i q0, const int8_t *x0, __m256i q1, const int8_t *x1)
{
    if (b > 6) return dot_add(b, dot_add(b, acc, q0, x0), q1, x1);
    __m256i t = _mm256_add_epi16(_mm256_maddubs_epi16(q0, _mm256_loadu_si256((const __m256i *)x0)),
                                 _mm256_maddubs_epi16(q1, _mm256_loadu_si256((const __m256i *)x1)));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(t, _mm256_set1_epi16(1)));
}

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

/* ==== The shared loops (qkernels_x86.h) ==== */

#define QK_WIDE4(b, raw, v, gch, xq, xq_stride, ia, nb, c) ((void)0)
#define QK_NAME(f) f##_avx2
#define QK_TABLE qk_avx2
#define QK_ISA_NAME "avx2"
/* bench_matvec, BENCHMARKS.md: faster at these widths in any row */
#define QK_LUT_COLS [2] = INT32_MAX, [3] = INT32_MAX, [5] = INT32_MAX, [8] = INT32_MAX
#define QK_BLOCK4 2
#define QK_TILE NULL /* no VNNI: vpmaddubsw's 16-bit sums of (xq + 128) (q - z) would saturate */
#define QK_TILE_PACK NULL
#include "qkernels_x86.h"
