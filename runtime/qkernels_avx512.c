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

/* ==== Tiles of 32 rows (qkernels.h, "Batches in tiles of 32 rows") ==== */

#define TILE_K 6 /* activation rows a pass: 12 int32 and 12 float accumulators of 32 */

/* Activation rows 0..K-1 (K <= TILE_K) against the whole tile: per group, the int32
 * sums start from the bias and take one vpdpbusd per quad of columns, row half and
 * activation row (the weights loaded once for K of them); then (float) sum * (s *
 * d) is added, and m * (d * xs) with mins, as qk_tile_ref does. */
AI void tile_pass(const int K, const int mins, const qk_tile *t, const uint8_t *xu, const float *xd,
                  const int32_t *xs, float *y, int64_t y_stride, __mmask16 m0, __mmask16 m1)
{
    const int64_t ng = t->ng, group = t->group, cols = t->cols;
    __m512i a[TILE_K][2];
    __m512 f[TILE_K][2];
    EACH_TK for (int k = 0; k < K; k++) f[k][0] = _mm512_setzero_ps(), f[k][1] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        const int64_t j0 = g * group, nq = ((j0 + group < cols ? j0 + group : cols) - j0) / 4;
        const int8_t *wg = t->w + j0 * QK_TILE_ROWS;
        const int32_t *bg = t->bias + g * QK_TILE_ROWS;
        const __m512i b0 = _mm512_loadu_si512(bg), b1 = _mm512_loadu_si512(bg + 16);
        EACH_TK for (int k = 0; k < K; k++) a[k][0] = b0, a[k][1] = b1;
        for (int64_t c = 0; c < nq; c++) {
            const __m512i w0 = _mm512_loadu_si512(wg + c * 128), w1 = _mm512_loadu_si512(wg + c * 128 + 64);
            EACH_TK for (int k = 0; k < K; k++) {
                int32_t x4;
                memcpy(&x4, xu + k * cols + j0 + 4 * c, 4);
                const __m512i xb = _mm512_set1_epi32(x4);
                a[k][0] = _mm512_dpbusd_epi32(a[k][0], xb, w0);
                a[k][1] = _mm512_dpbusd_epi32(a[k][1], xb, w1);
            }
        }
        const float *sg = t->ws + g * QK_TILE_ROWS;
        const __m512 s0 = _mm512_loadu_ps(sg), s1 = _mm512_loadu_ps(sg + 16);
        EACH_TK for (int k = 0; k < K; k++) {
            const __m512 d = _mm512_set1_ps(xd[k * ng + g]);
            f[k][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[k][0]), _mm512_mul_ps(s0, d), f[k][0]);
            f[k][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[k][1]), _mm512_mul_ps(s1, d), f[k][1]);
        }
        if (mins) {
            const float *mg = t->wm + g * QK_TILE_ROWS;
            const __m512 n0 = _mm512_loadu_ps(mg), n1 = _mm512_loadu_ps(mg + 16);
            EACH_TK for (int k = 0; k < K; k++) {
                const __m512 dx = _mm512_set1_ps(xd[k * ng + g] * (float)xs[k * ng + g]);
                f[k][0] = _mm512_fmadd_ps(n0, dx, f[k][0]);
                f[k][1] = _mm512_fmadd_ps(n1, dx, f[k][1]);
            }
        }
    }
    EACH_TK for (int k = 0; k < K; k++) {
        _mm512_mask_storeu_ps(y + k * y_stride, m0, f[k][0]);
        _mm512_mask_storeu_ps(y + k * y_stride + 16, m1, f[k][1]);
    }
}

/* Live rows of a tile's half 0 (rows 0..15) and half 1 (16..31). */
AI __mmask16 half_mask(int nr, int half)
{
    int n = nr - 16 * half;
    return (__mmask16)(n >= 16 ? 0xffff : n > 0 ? (1u << n) - 1 : 0);
}

/* Every activation row, TILE_K a pass and the rest in one shorter pass. */
AI void tile_passes(const int mins, const qk_tile *t, const uint8_t *xu, const float *xd, const int32_t *xs, int n,
                    float *y, int64_t y_stride)
{
    const int64_t cols = t->cols, ng = t->ng;
    const __mmask16 m0 = half_mask(t->nr, 0), m1 = half_mask(t->nr, 1);
    for (int k = 0; k < n; k += TILE_K) {
        const uint8_t *x = xu + k * cols;
        const float *d = xd + k * ng;
        const int32_t *s = xs + k * ng;
        float *yk = y + k * y_stride;
        switch (n - k < TILE_K ? n - k : TILE_K) {
        case 1: tile_pass(1, mins, t, x, d, s, yk, y_stride, m0, m1); break;
        case 2: tile_pass(2, mins, t, x, d, s, yk, y_stride, m0, m1); break;
        case 3: tile_pass(3, mins, t, x, d, s, yk, y_stride, m0, m1); break;
        case 4: tile_pass(4, mins, t, x, d, s, yk, y_stride, m0, m1); break;
        case 5: tile_pass(5, mins, t, x, d, s, yk, y_stride, m0, m1); break;
        default: tile_pass(TILE_K, mins, t, x, d, s, yk, y_stride, m0, m1); break;
        }
    }
}

static void tile_avx512(const qk_tile *t, const uint8_t *xu, const float *xd, const int32_t *xs, int n, float *y,
                        int64_t y_stride)
{
    assert(t->nr >= 1 && t->nr <= QK_TILE_ROWS);
    if (t->wm) tile_passes(1, t, xu, xd, xs, n, y, y_stride);
    else tile_passes(0, t, xu, xd, xs, n, y, y_stride);
}

/* qk_tile_pack_ref's layout: per quad of columns one gather of 16 rows' dwords for
 * each half (rows past nr masked off: zero), less the rows' zeros byte by byte; the
 * bias from vpdpbusd against ones, which adds each dword's four signed bytes. */
static void tile_pack_avx512(const uint8_t *raw, int64_t raw_stride, const uint8_t *z, int64_t z_stride,
                             const uint16_t *s, const uint16_t *m, int64_t s_stride, const qk_tile *t)
{
    const int64_t cols = t->cols, group = t->group;
    const int nr = t->nr;
    assert(nr >= 1 && nr <= QK_TILE_ROWS && raw_stride * QK_TILE_ROWS < INT32_MAX);
    const __m512i ones = _mm512_set1_epi8(1);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i at0 = _mm512_mullo_epi32(lane, _mm512_set1_epi32((int)raw_stride));
    const __m512i at1 = _mm512_add_epi32(at0, _mm512_set1_epi32((int)(16 * raw_stride)));
    const __mmask16 live0 = half_mask(nr, 0), live1 = half_mask(nr, 1);
    for (int64_t g = 0; g < t->ng; g++) {
        int32_t zr[QK_TILE_ROWS];
        for (int r = 0; r < QK_TILE_ROWS; r++) {
            zr[r] = r < nr ? (int32_t)(z[r * z_stride + g] * 0x01010101u) : 0;
            t->ws[g * QK_TILE_ROWS + r] = r < nr ? _cvtsh_ss(s[r * s_stride + g]) : 0.0f;
            if (m) t->wm[g * QK_TILE_ROWS + r] = r < nr ? _cvtsh_ss(m[r * s_stride + g]) : 0.0f;
        }
        const __m512i z0 = _mm512_loadu_si512(zr), z1 = _mm512_loadu_si512(zr + 16);
        __m512i sum0 = _mm512_setzero_si512(), sum1 = _mm512_setzero_si512();
        const int64_t j1 = (g + 1) * group < cols ? (g + 1) * group : cols;
        for (int64_t j = g * group; j < j1; j += 4) {
            const __m512i none = _mm512_setzero_si512();
            __m512i v0 = _mm512_sub_epi8(_mm512_mask_i32gather_epi32(none, live0, at0, raw + j, 1), z0);
            __m512i v1 = _mm512_sub_epi8(_mm512_mask_i32gather_epi32(none, live1, at1, raw + j, 1), z1);
            _mm512_storeu_si512(t->w + j * QK_TILE_ROWS, v0);
            _mm512_storeu_si512(t->w + j * QK_TILE_ROWS + 64, v1);
            sum0 = _mm512_dpbusd_epi32(sum0, ones, v0);
            sum1 = _mm512_dpbusd_epi32(sum1, ones, v1);
        }
        _mm512_storeu_si512(t->bias + g * QK_TILE_ROWS, _mm512_mullo_epi32(sum0, _mm512_set1_epi32(-128)));
        _mm512_storeu_si512(t->bias + g * QK_TILE_ROWS + 16, _mm512_mullo_epi32(sum1, _mm512_set1_epi32(-128)));
    }
}

/* ==== The shared loops (qkernels_x86.h) ==== */

#define QK_WIDE4(b, raw, v, gch, xq, xq_stride, ia, nb, c) ((c) = wide4(b, raw, v, gch, xq, xq_stride, ia, nb))
#define QK_NAME(f) f##_avx512
#define QK_TABLE qk_avx512
#define QK_ISA_NAME "avx512"
/* 2 and 3 bits in any row, 4 to 6 in rows under 1024 columns, measured on an
 * AVX-512 VNNI Zen 4 (BENCHMARKS.md, "On an AVX-512 machine"): on a 7B-shaped
 * model the lookups drew level with vpdpbusd (12.25 against 12.05 tokens/s at 2.5
 * bpw, 10.70 against 10.85 at 3.0) and lost from 4 bits (9.20 against 10.95 at
 * 4.0); on rows of 576 columns, where the int8 kernels' cost per row weighs most,
 * bench_matvec --shape 576x576 gave the lookups 1.5-1.7x at 4 bits, 1.3-1.5x at 5,
 * 1.2-1.3x at 6 and 0.9-1.0x at 8, and on 1536 columns 0.8-1.1x at 4, 0.66-0.94x
 * from 5. */
#define QK_LUT_NARROW 1023
#define QK_LUT_COLS [2] = INT32_MAX, [3] = INT32_MAX, [4] = QK_LUT_NARROW, [5] = QK_LUT_NARROW, [6] = QK_LUT_NARROW
#define QK_BLOCK4 4
#define QK_TILE tile_avx512
#define QK_TILE_PACK tile_pack_avx512
#define QK_TILE_UNSIGNED 1
/* on a 7B layer's 4096-column rows bench_matvec --batch 8 ran 0.6-0.8x dot_raw's
 * speed, --batch 32 1.3x (Zen 4) */
#define QK_TILE_MIN_BATCH 16
#include "qkernels_x86.h"
