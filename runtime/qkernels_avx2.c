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

/* ==== Tiles of 32 rows (qkernels.h, "Batches in tiles of 32 rows") ====
 *
 * vpmaddubsw multiplies unsigned bytes by signed ones and adds pairs in 16 bits,
 * saturating. The VNNI layout's (xq + 128)(q - z) pairs reach 2 * 255 * 127 and
 * would saturate, so this set lays its tiles out its own way: the values q
 * themselves (0..127 below 8 bits) as the unsigned operand against the signed
 * activations xq (pairs at most 2 * 127 * 127 < 2^15), and the zero term taken
 * per group, sum (q - z) xq = sum q xq - z xs. That is the same integer as the
 * VNNI layout's, so the float operations that follow, and the bits, are
 * qk_tile_ref's:
 *
 *     w[c][r][k] = q[r][4c + k]     bias[g][r] = z[r][g]     ws, wm as qk_tile_ref's
 *
 * The 16 registers hold a half tile (16 rows, two registers of 8 int32 lanes) for
 * a few activation rows at a time, each group's floats added in a small buffer.
 * Values of up to 5 bits add several quads' vpmaddubsw sums in 16 bits before one
 * vpmaddwd widens them (a run: each quad adds at most 2 * vmax * 127 to a lane),
 * three activation rows a pass (their 16- and 32-bit sums fill the registers);
 * wider values widen every quad, four rows a pass. bench_matvec --batch 512 on a
 * Zen 4 running this set: runs of 3 rows were 1.1-1.5x faster than widening
 * every quad 4 rows a pass at 2-4 bits, level at 5, slower at 6. */

#define TILE_RUN_VMAX 31 /* runs for values up to 5 bits */

/* Activation rows 0..K-1 against rows 16h..16h+15 of the tile into f[k][0..16),
 * in runs or widening every quad. */
AI void tile_half(const int K, const int runs, const int mins, const qk_tile *t, const int8_t *xq, const float *xd,
                  const int32_t *xs, int h, float f[][16])
{
    const int64_t ng = t->ng, group = t->group, cols = t->cols;
    const int64_t run = runs ? INT16_MAX / (2 * 127 * t->vmax) : 1; /* quads a run */
    const __m256i ones = _mm256_set1_epi16(1);
    EACH_TK for (int k = 0; k < K; k++) {
        _mm256_storeu_ps(f[k], _mm256_setzero_ps());
        _mm256_storeu_ps(f[k] + 8, _mm256_setzero_ps());
    }
    for (int64_t g = 0; g < ng; g++) {
        const int64_t j0 = g * group, nq = ((j0 + group < cols ? j0 + group : cols) - j0) / 4;
        const int8_t *wg = t->w + j0 * QK_TILE_ROWS + h * 64;
        __m256i a[4][2];
        EACH_TK for (int k = 0; k < K; k++) a[k][0] = a[k][1] = _mm256_setzero_si256();
        for (int64_t c0 = 0; c0 < nq; c0 += run) {
            const int64_t c1 = c0 + run < nq ? c0 + run : nq;
            __m256i p[4][2]; /* the run's 16-bit sums */
            EACH_TK for (int k = 0; runs && k < K; k++) p[k][0] = p[k][1] = _mm256_setzero_si256();
            for (int64_t c = c0; c < c1; c++) {
                const __m256i w0 = _mm256_loadu_si256((const __m256i *)(wg + c * 128));
                const __m256i w1 = _mm256_loadu_si256((const __m256i *)(wg + c * 128 + 32));
                EACH_TK for (int k = 0; k < K; k++) {
                    int32_t x4;
                    memcpy(&x4, xq + k * cols + j0 + 4 * c, 4);
                    const __m256i xb = _mm256_set1_epi32(x4);
                    const __m256i m0 = _mm256_maddubs_epi16(w0, xb), m1 = _mm256_maddubs_epi16(w1, xb);
                    if (runs) {
                        p[k][0] = _mm256_add_epi16(p[k][0], m0);
                        p[k][1] = _mm256_add_epi16(p[k][1], m1);
                    } else {
                        a[k][0] = _mm256_add_epi32(a[k][0], _mm256_madd_epi16(m0, ones));
                        a[k][1] = _mm256_add_epi32(a[k][1], _mm256_madd_epi16(m1, ones));
                    }
                }
            }
            EACH_TK for (int k = 0; runs && k < K; k++) {
                a[k][0] = _mm256_add_epi32(a[k][0], _mm256_madd_epi16(p[k][0], ones));
                a[k][1] = _mm256_add_epi32(a[k][1], _mm256_madd_epi16(p[k][1], ones));
            }
        }
        const int32_t *zg = t->bias + g * QK_TILE_ROWS + h * 16;
        const float *sg = t->ws + g * QK_TILE_ROWS + h * 16;
        const __m256i z0 = _mm256_loadu_si256((const __m256i *)zg), z1 = _mm256_loadu_si256((const __m256i *)(zg + 8));
        const __m256 s0 = _mm256_loadu_ps(sg), s1 = _mm256_loadu_ps(sg + 8);
        EACH_TK for (int k = 0; k < K; k++) {
            const __m256i xsk = _mm256_set1_epi32(xs[k * ng + g]);
            const __m256 d = _mm256_set1_ps(xd[k * ng + g]);
            const __m256i i0 = _mm256_sub_epi32(a[k][0], _mm256_mullo_epi32(z0, xsk));
            const __m256i i1 = _mm256_sub_epi32(a[k][1], _mm256_mullo_epi32(z1, xsk));
            __m256 f0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), _mm256_mul_ps(s0, d), _mm256_loadu_ps(f[k]));
            __m256 f1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_mul_ps(s1, d), _mm256_loadu_ps(f[k] + 8));
            if (mins) {
                const float *mg = t->wm + g * QK_TILE_ROWS + h * 16;
                const __m256 dx = _mm256_set1_ps(xd[k * ng + g] * (float)xs[k * ng + g]);
                f0 = _mm256_fmadd_ps(_mm256_loadu_ps(mg), dx, f0);
                f1 = _mm256_fmadd_ps(_mm256_loadu_ps(mg + 8), dx, f1);
            }
            _mm256_storeu_ps(f[k], f0);
            _mm256_storeu_ps(f[k] + 8, f1);
        }
    }
}

/* K = 1..step activation rows (step 3 in runs, else 4). */
AI void tile_pass(const int runs, const int mins, int K, const qk_tile *t, const int8_t *xq, const float *xd,
                  const int32_t *xs, int h, float f[][16])
{
    switch (K) {
    case 1: tile_half(1, runs, mins, t, xq, xd, xs, h, f); break;
    case 2: tile_half(2, runs, mins, t, xq, xd, xs, h, f); break;
    case 3: tile_half(3, runs, mins, t, xq, xd, xs, h, f); break;
    default: assert(!runs && K == 4); tile_half(4, 0, mins, t, xq, xd, xs, h, f); break; /* runs: 3 at most */
    }
}

/* Every activation row against each live half of the tile, a few a pass. */
AI void tile_halves(const int runs, const int mins, const qk_tile *t, const int8_t *xq, const float *xd,
                    const int32_t *xs, int n, float *y, int64_t y_stride)
{
    const int64_t cols = t->cols, ng = t->ng;
    const int step = runs ? 3 : 4;
    float f[4][16];
    for (int h = 0; h * 16 < t->nr; h++) {
        const int live = t->nr - 16 * h < 16 ? t->nr - 16 * h : 16;
        for (int k = 0; k < n; k += step) {
            const int K = n - k < step ? n - k : step;
            tile_pass(runs, mins, K, t, xq + k * cols, xd + k * ng, xs + k * ng, h, f);
            for (int kk = 0; kk < K; kk++) memcpy(y + (k + kk) * y_stride + 16 * h, f[kk], (size_t)live * sizeof(float));
        }
    }
}

static void tile_avx2(const qk_tile *t, const uint8_t *x, const float *xd, const int32_t *xs, int n, float *y,
                      int64_t y_stride)
{
    assert(t->nr >= 1 && t->nr <= QK_TILE_ROWS);
    const int8_t *xq = (const int8_t *)x; /* signed: this set's tiles take xq as it is */
    const int runs = t->vmax <= TILE_RUN_VMAX;
    if (runs && t->wm) tile_halves(1, 1, t, xq, xd, xs, n, y, y_stride);
    else if (runs) tile_halves(1, 0, t, xq, xd, xs, n, y, y_stride);
    else if (t->wm) tile_halves(0, 1, t, xq, xd, xs, n, y, y_stride);
    else tile_halves(0, 0, t, xq, xd, xs, n, y, y_stride);
}

/* 8 x 8 dwords: v[i] (row i's 8 dwords) -> v[i] (dword i of every row). */
AI void transpose8(__m256i v[8])
{
    __m256i a[8], b[8];
    for (int i = 0; i < 8; i += 2) {
        a[i] = _mm256_unpacklo_epi32(v[i], v[i + 1]);
        a[i + 1] = _mm256_unpackhi_epi32(v[i], v[i + 1]);
    }
    for (int i = 0; i < 8; i += 4)
        for (int j = 0; j < 2; j++) {
            b[i + 2 * j] = _mm256_unpacklo_epi64(a[i + j], a[i + j + 2]);
            b[i + 2 * j + 1] = _mm256_unpackhi_epi64(a[i + j], a[i + j + 2]);
        }
    /* b[c]: dword c of rows 0-3 (low lane) and dword c + 4 (high lane); b[4 + c] of rows 4-7 */
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_permute2x128_si256(b[i], b[i + 4], 0x20);
        v[i + 4] = _mm256_permute2x128_si256(b[i], b[i + 4], 0x31);
    }
}

/* This set's layout (above): each 8 rows' 32 columns at a time transposed by dwords,
 * rows past nr zero; the zeros, scales and mins per group. */
static void tile_pack_avx2(const uint8_t *raw, int64_t raw_stride, const uint8_t *z, int64_t z_stride,
                           const uint16_t *s, const uint16_t *m, int64_t s_stride, const qk_tile *t)
{
    const int64_t cols = t->cols;
    const int nr = t->nr;
    assert(nr >= 1 && nr <= QK_TILE_ROWS && cols % 32 == 0);
    for (int64_t g = 0; g < t->ng; g++)
        for (int r = 0; r < QK_TILE_ROWS; r++) {
            t->bias[g * QK_TILE_ROWS + r] = r < nr ? z[r * z_stride + g] : 0;
            t->ws[g * QK_TILE_ROWS + r] = r < nr ? _cvtsh_ss(s[r * s_stride + g]) : 0.0f;
            if (m) t->wm[g * QK_TILE_ROWS + r] = r < nr ? _cvtsh_ss(m[r * s_stride + g]) : 0.0f;
        }
    for (int r0 = 0; r0 < QK_TILE_ROWS; r0 += 8)
        for (int64_t j = 0; j < cols; j += 32) {
            __m256i v[8];
            for (int i = 0; i < 8; i++)
                v[i] = r0 + i < nr ? _mm256_loadu_si256((const __m256i *)(raw + (r0 + i) * raw_stride + j))
                                   : _mm256_setzero_si256();
            transpose8(v);
            for (int c = 0; c < 8; c++) _mm256_storeu_si256((__m256i *)(t->w + ((j / 4 + c) * QK_TILE_ROWS + r0) * 4), v[c]);
        }
}

/* ==== The shared loops (qkernels_x86.h) ==== */

#define QK_WIDE4(b, raw, v, gch, xq, xq_stride, ia, nb, c) ((void)0)
#define QK_NAME(f) f##_avx2
#define QK_TABLE qk_avx2
#define QK_ISA_NAME "avx2"
/* bench_matvec, BENCHMARKS.md: faster at these widths in any row */
#define QK_LUT_COLS [2] = INT32_MAX, [3] = INT32_MAX, [5] = INT32_MAX, [8] = INT32_MAX
#define QK_BLOCK4 2
#define QK_TILE tile_avx2
#define QK_TILE_PACK tile_pack_avx2
#define QK_TILE_UNSIGNED 0 /* xq as it is: see "Tiles of 32 rows" above */
/* bench_matvec on a Zen 4 running this set, 4096 x 4096, 2 threads: 0.80-0.85x
 * dot_raw's speed at batch 16, 0.76-0.98x at 32-64, 1.13-1.14x at 128, 1.6x at
 * 256 (on 1536 columns it gains from 16; on 576 from 8) */
#define QK_TILE_MIN_BATCH 128
#include "qkernels_x86.h"
