/*
 * runtime/qkernels_x86_planes.h — what the AVX2 and AVX-512 chunk decoders share:
 * the inlining and unrolling macros, and the 4- and 2-bit planes of a chunk (the
 * plane table of layout/layout.h) as 32 bytes in value order. Internal to runtime/:
 * included by qkernels_avx2.c and qkernels_avx512.c (each compiled for its own
 * instruction set) before they define chunk_decode and include qkernels_x86.h.
 * Needs <immintrin.h> and <string.h>. Never allocates or prints.
 */
#define AI static inline __attribute__((always_inline))
/* Loops over the activation rows of a block unroll fully, so their accumulators
 * live in registers rather than on the stack. */
#define EACH_K _Pragma("GCC unroll 4")
#define EACH_TK _Pragma("GCC unroll 8") /* the same for the tile kernels' passes */

/* Values 0..15 of a 4-bit plane: the low nibbles of 16 bytes, then the high ones. */
AI __m256i plane4(const uint8_t *src)
{
    __m256i t = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)src));
    t = _mm256_srlv_epi64(t, _mm256_setr_epi64x(0, 0, 4, 4));
    return _mm256_and_si256(t, _mm256_set1_epi8(0x0f));
}

/* Values 0..3 of a 2-bit plane: bits 0-1 of 8 bytes, then bits 2-3, 4-5, 6-7. */
AI __m256i plane2(const uint8_t *src)
{
    int64_t w;
    memcpy(&w, src, 8);
    __m256i t = _mm256_srlv_epi64(_mm256_set1_epi64x(w), _mm256_setr_epi64x(0, 2, 4, 6));
    return _mm256_and_si256(t, _mm256_set1_epi8(0x03));
}
