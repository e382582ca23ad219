/*
 * runtime/qkernels_x86.h — the part of the x86 packed-weight kernels that AVX2 and
 * AVX-512 share: the group, run and width loops, the row preparation, the
 * activation quantizer and the kernel table. Internal to runtime/: included once
 * by qkernels_avx2.c and once by qkernels_avx512.c, each compiled for its own
 * instruction set, after they define what differs:
 *
 *   AI, EACH_K                 inlining and unrolling
 *   chunk_decode(b, src)       32 values of width b (2..8) -> 32 bytes in value order
 *   dot_add(b, acc, q, x)      int32 lanes += q . x (32 unsigned by 32 signed bytes)
 *   dot_add2(b, acc, q0, x0, q1, x1)  the same for two chunks, each lane's sum exactly
 *                              that of two dot_add
 *   quant32(x, id, sum)        32 floats * id -> 32 int8, sums into *sum
 *   QK_WIDE4(...)              an optional faster loop over 4-bit chunks, from planes or
 *                              unpacked bytes (may be empty)
 *   QK_NAME(f), QK_TABLE, QK_ISA_NAME, QK_BLOCK4   names and the 4-bit block order
 *   QK_TILE, QK_TILE_PACK      the tile kernels (qkernels.h), or NULL
 *   QK_TILE_UNSIGNED           whether QK_TILE takes xq + 128 (qk_tile_unsigned)
 *   QK_TILE_MIN_BATCH          the batch from which rows of 1024 columns or more take it
 *
 * Never allocates or prints.
 */
AI float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Bytes a chunk takes: its planes, or (raw) one byte a value, unpacked. */
#define CHUNK_BYTES(b, raw) ((raw) ? 32 : (b) * 4)

/* Chunk c of a group: decoded from its planes, or (raw) loaded as unpacked. */
AI __m256i chunk_at(const int b, const int raw, const uint8_t *v, int64_t c)
{
    if (raw) return _mm256_loadu_si256((const __m256i *)(v + c * 32));
    _mm_prefetch((const char *)v + c * b * 4 + 2048, _MM_HINT_T0);
    return chunk_decode(b, v + c * b * 4);
}

/* One group: two accumulators per activation row (the 4-bit pair loop and
 * QK_WIDE4 take ia, the two-chunk loop ib) add two chunks a step with dot_add2;
 * their sum goes into facc scaled by sd. Each int32 lane's total is exact, so the
 * loops and dot_add2's 16-bit step leave the floats as one dot_add a chunk would. raw: v
 * is unpacked bytes in the same (kernel) order, so the same lanes add the same
 * products in the same order as from the planes. */
AI void dot_group(const int b, const int raw, const uint8_t *v, const int64_t gch, const int8_t *xq,
                  int64_t xq_stride, const float *sd, int64_t sd_stride, __m256 *facc, const int nb)
{
    __m256i ia[QK_NB], ib[QK_NB];
    EACH_K for (int k = 0; k < nb; k++) ia[k] = _mm256_setzero_si256(), ib[k] = _mm256_setzero_si256();
    int64_t c = 0;
    QK_WIDE4(b, raw, v, gch, xq, xq_stride, ia, nb, c);
    if (b == 4 && gch % 2 == 0) { /* pair order: one 32-byte load is two chunks */
#pragma GCC unroll 4
        for (; c < gch; c += 2) {
            __m256i lo, hi;
            if (raw) {
                lo = _mm256_loadu_si256((const __m256i *)(v + c * 32));
                hi = _mm256_loadu_si256((const __m256i *)(v + c * 32 + 32));
            } else {
                _mm_prefetch((const char *)v + c * 16 + 2048, _MM_HINT_T0);
                __m256i w = _mm256_loadu_si256((const __m256i *)(v + c * 16)), m = _mm256_set1_epi8(0x0f);
                lo = _mm256_and_si256(w, m), hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), m);
            }
            EACH_K for (int k = 0; k < nb; k++)
                ia[k] = dot_add2(b, ia[k], lo, xq + k * xq_stride + c * 32, hi, xq + k * xq_stride + c * 32 + 32);
        }
    }
#pragma GCC unroll 4
    for (; c + 2 <= gch; c += 2) {
        __m256i q0 = chunk_at(b, raw, v, c), q1 = chunk_at(b, raw, v, c + 1);
        EACH_K for (int k = 0; k < nb; k++)
            ib[k] = dot_add2(b, ib[k], q0, xq + k * xq_stride + c * 32, q1, xq + k * xq_stride + c * 32 + 32);
    }
    if (c < gch) {
        __m256i q0 = chunk_at(b, raw, v, c);
        EACH_K for (int k = 0; k < nb; k++) ia[k] = dot_add(b, ia[k], q0, xq + k * xq_stride + c * 32);
    }
    EACH_K for (int k = 0; k < nb; k++)
        facc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(ia[k], ib[k])),
                                  _mm256_set1_ps(sd[k * sd_stride]), facc[k]);
}

AI void dot_run(const int b, const int raw, const uint8_t *v, int64_t ng, const int64_t gch, const int8_t *xq,
                int64_t xq_stride, const float *sd, int64_t sd_stride, float *acc, const int nb)
{
    __m256 fa[QK_NB], fb[QK_NB];   /* two chains: a float add per group is not the limit */
    const int64_t gb = gch * CHUNK_BYTES(b, raw);
    EACH_K for (int k = 0; k < nb; k++) fa[k] = _mm256_setzero_ps(), fb[k] = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g + 2 <= ng; g += 2) {
        dot_group(b, raw, v + g * gb, gch, xq + g * gch * 32, xq_stride, sd + g, sd_stride, fa, nb);
        dot_group(b, raw, v + (g + 1) * gb, gch, xq + (g + 1) * gch * 32, xq_stride, sd + g + 1, sd_stride, fb, nb);
    }
    if (g < ng) dot_group(b, raw, v + g * gb, gch, xq + g * gch * 32, xq_stride, sd + g, sd_stride, fa, nb);
    EACH_K for (int k = 0; k < nb; k++) acc[k] += hsum(_mm256_add_ps(fa[k], fb[k]));
}

/* Specialised for the common group lengths (1, 2, 4 chunks: g32, g64, g128). */
AI void dot_any(const int b, const int raw, const uint8_t *v, int64_t ng, int64_t gch, const int8_t *xq,
                int64_t xq_stride, const float *sd, int64_t sd_stride, float *acc, const int nb)
{
    switch (gch) {
    case 1: dot_run(b, raw, v, ng, 1, xq, xq_stride, sd, sd_stride, acc, nb); break;
    case 2: dot_run(b, raw, v, ng, 2, xq, xq_stride, sd, sd_stride, acc, nb); break;
    case 4: dot_run(b, raw, v, ng, 4, xq, xq_stride, sd, sd_stride, acc, nb); break;
    default: dot_run(b, raw, v, ng, gch, xq, xq_stride, sd, sd_stride, acc, nb); break;
    }
}

#define DOT_FN(name, b, raw)                                                                          \
    static void QK_NAME(name)(const uint8_t *v, int64_t ng, int64_t gch, const int8_t *xq,            \
                              int64_t xq_stride, const float *sd, int64_t sd_stride, float *acc, int nb) \
    {                                                                                                  \
        assert(nb >= 1 && nb <= QK_NB);                                                                \
        switch (nb) {                                                                                  \
        case 1: dot_any(b, raw, v, ng, gch, xq, xq_stride, sd, sd_stride, acc, 1); break;             \
        case 2: dot_any(b, raw, v, ng, gch, xq, xq_stride, sd, sd_stride, acc, 2); break;             \
        case 3: dot_any(b, raw, v, ng, gch, xq, xq_stride, sd, sd_stride, acc, 3); break;             \
        default: dot_any(b, raw, v, ng, gch, xq, xq_stride, sd, sd_stride, acc, 4); break;            \
        }                                                                                              \
    }
#define DOT_WIDTH(b) DOT_FN(dot##b, b, 0) DOT_FN(dot_raw##b, b, 1)
DOT_WIDTH(2)
DOT_WIDTH(3)
DOT_WIDTH(4)
DOT_WIDTH(5)
DOT_WIDTH(6)
DOT_WIDTH(7)
DOT_WIDTH(8)

/* ==== Unpacking (batches) ==== */

/* 4-bit blocks of B chunks: 16B bytes of planes, low nibbles then high ones, which
 * is qk_block_pos's order (B = 1: value order). Other widths: chunk by chunk. */
static void QK_NAME(unpack)(int bits, int block, const uint8_t *src, int64_t nchunks, uint8_t *out)
{
    assert(block == 1 || bits == 4);
    if (bits != 4 || block == 1) {
        for (int64_t c = 0; c < nchunks; c++) _mm256_storeu_si256((__m256i *)(out + 32 * c), chunk_decode(bits, src + c * bits * 4));
        return;
    }
    const __m256i m = _mm256_set1_epi8(0x0f);
    const int64_t half = 16 * block;
    for (int64_t c0 = 0; c0 < nchunks; c0 += block, src += half, out += 2 * half)
        for (int64_t i = 0; i < half; i += 32) {
            __m256i w = _mm256_loadu_si256((const __m256i *)(src + i));
            _mm256_storeu_si256((__m256i *)(out + i), _mm256_and_si256(w, m));
            _mm256_storeu_si256((__m256i *)(out + half + i), _mm256_and_si256(_mm256_srli_epi16(w, 4), m));
        }
}

/* ==== Row preparation ==== */

static void QK_NAME(prep)(const uint16_t *s, const uint8_t *z, const float *xd, const int32_t *xs, int64_t ng,
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

static void QK_NAME(quant)(const float *xp, int64_t cols, int64_t group, int8_t *xq, float *xd, int32_t *xs)
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

/* ==== Dequantization (the exact path) ==== */

/* 8 bytes of q -> s * (q - z): subtract first, as lay_packed_dequant does. */
AI void dequant8(__m128i q8, __m256 s, __m256 z, float *out)
{
    __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q8));
    _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_sub_ps(q, z), s));
}

static void QK_NAME(decode)(int bits, const uint8_t *src, float s, float z, float *out)
{
    __m256i q = chunk_decode(bits, src);
    __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    __m256 s8 = _mm256_set1_ps(s), z8 = _mm256_set1_ps(z);
    dequant8(lo, s8, z8, out);
    dequant8(_mm_srli_si128(lo, 8), s8, z8, out + 8);
    dequant8(hi, s8, z8, out + 16);
    dequant8(_mm_srli_si128(hi, 8), s8, z8, out + 24);
}

/* ==== Input rotation ==== */

/* Stages h = 1, 2, 4 inside one vector of 8: each pair (i, i + h) -> (a + b, a - b),
 * the subtraction as an add of the negated operand (exact), lanes as the plain
 * loop pairs them. */
AI __m256 fwht8(__m256 x)
{
    const __m256 neg1 = _mm256_castsi256_ps(_mm256_setr_epi32(0, INT32_MIN, 0, INT32_MIN, 0, INT32_MIN, 0, INT32_MIN));
    const __m256 neg2 = _mm256_castsi256_ps(_mm256_setr_epi32(0, 0, INT32_MIN, INT32_MIN, 0, 0, INT32_MIN, INT32_MIN));
    const __m256 neg4 = _mm256_castsi256_ps(_mm256_setr_epi32(0, 0, 0, 0, INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN));
    x = _mm256_add_ps(_mm256_shuffle_ps(x, x, 0xa0), _mm256_xor_ps(_mm256_shuffle_ps(x, x, 0xf5), neg1));
    x = _mm256_add_ps(_mm256_shuffle_ps(x, x, 0x44), _mm256_xor_ps(_mm256_shuffle_ps(x, x, 0xee), neg2));
    __m256 lo = _mm256_permute2f128_ps(x, x, 0x00), hi = _mm256_permute2f128_ps(x, x, 0x11);
    return _mm256_add_ps(lo, _mm256_xor_ps(hi, neg4));
}

static void QK_NAME(rotate)(int rot, const float *sign, float norm, float *v, int64_t cols)
{
    const __m256 nv = _mm256_set1_ps(norm);
    for (int64_t j0 = 0; j0 < cols; j0 += rot) {
        float *b = v + j0;
        for (int i = 0; i < rot; i += 8)
            _mm256_storeu_ps(b + i, fwht8(_mm256_mul_ps(_mm256_loadu_ps(b + i), _mm256_loadu_ps(sign + j0 + i))));
        for (int h = 8; h < rot; h *= 2)
            for (int i0 = 0; i0 < rot; i0 += 2 * h)
                for (int i = i0; i < i0 + h; i += 8) {
                    __m256 x = _mm256_loadu_ps(b + i), y = _mm256_loadu_ps(b + i + h);
                    _mm256_storeu_ps(b + i, _mm256_add_ps(x, y));
                    _mm256_storeu_ps(b + i + h, _mm256_sub_ps(x, y));
                }
        for (int i = 0; i < rot; i += 8) _mm256_storeu_ps(b + i, _mm256_mul_ps(_mm256_loadu_ps(b + i), nv));
    }
}

/* ==== Lookup tables (qkernels.h, "Lookup-table kernels") ==== */

/* Each row's chunks decoded to bytes in value order, then bit i of the 32 values as
 * one mask: a left shift by 7 - i puts it in each byte's top bit (what a 16-bit
 * shift carries over from the lower byte lands below bit 7). */
static void QK_NAME(lut_pack)(int bits, int64_t gcols, const uint8_t *src, int64_t stride, uint8_t *dst)
{
    const int64_t np = gcols / 8;
    for (int r = 0; r < QK_LUT_ROWS; r++)
        for (int64_t c = 0; c < gcols / LAY_CHUNK; c++) {
            __m256i q = chunk_decode(bits, src + r * stride + c * bits * 4);
            for (int i = 0; i < bits; i++) {
                uint32_t m = (uint32_t)_mm256_movemask_epi8(_mm256_sll_epi16(q, _mm_cvtsi32_si128(7 - i)));
                uint8_t *d = dst + (i * np + c * (LAY_CHUNK / 8)) * QK_LUT_ROWS + r;
                d[0] = (uint8_t)m, d[QK_LUT_ROWS] = (uint8_t)(m >> 8);
                d[2 * QK_LUT_ROWS] = (uint8_t)(m >> 16), d[3 * QK_LUT_ROWS] = (uint8_t)(m >> 24);
            }
        }
}

/* The 16 entries of quad c as int16 from two vpmaddubsw: entry m takes bits 0-1 of
 * m against (x0, x1) and bits 2-3 against (x2, x3); then low bytes, high bytes. */
static void QK_NAME(lut_tables)(const int8_t *xq, int64_t cols, uint8_t *tab)
{
    const __m256i b01 = _mm256_setr_epi8(0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1,
                                         0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1);
    const __m256i b23 = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0,
                                         0, 1, 0, 1, 0, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m256i x01 = _mm256_set1_epi16(0x0100), x23 = _mm256_set1_epi16(0x0302);
    const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                           0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    for (int64_t c = 0; c < cols / 4; c++) {
        int32_t w;
        memcpy(&w, xq + 4 * c, 4);
        __m256i x = _mm256_set1_epi32(w);
        __m256i t = _mm256_add_epi16(_mm256_maddubs_epi16(b01, _mm256_shuffle_epi8(x, x01)),
                                     _mm256_maddubs_epi16(b23, _mm256_shuffle_epi8(x, x23)));
        t = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(t, split), 0xd8);
        _mm256_storeu_si256((__m256i *)(tab + 32 * c), t);
    }
}

/* d[0..3] (rows 0-7, 8-15, 16-23, 24-31) += sum over np <= 32 column pairs of plane
 * w's lookups, times 2^i. Per pair: the low nibbles index quad 2p's table, the high
 * ones quad 2p + 1's; the int16 entries come back as a low and a high byte, which
 * unpack into int16 lanes (rows 0-7 | 16-23 and 8-15 | 24-31). */
AI void lut_plane(const uint8_t *w, const uint8_t *tab, int64_t np, int i, __m256i *d)
{
    const __m256i m = _mm256_set1_epi8(0x0f);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, b0 = a0, b1 = a0;
#pragma GCC unroll 4
    for (int64_t p = 0; p < np; p++, w += QK_LUT_ROWS, tab += 64) {
        __m256i v = _mm256_loadu_si256((const __m256i *)w);
        _mm_prefetch((const char *)w + 2048, _MM_HINT_T0);
        __m256i ia = _mm256_and_si256(v, m), ib = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
        __m256i la = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)tab)), ia);
        __m256i ha = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(tab + 16))), ia);
        __m256i lb = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(tab + 32))), ib);
        __m256i hb = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(tab + 48))), ib);
        a0 = _mm256_add_epi16(a0, _mm256_unpacklo_epi8(la, ha));
        a1 = _mm256_add_epi16(a1, _mm256_unpackhi_epi8(la, ha));
        b0 = _mm256_add_epi16(b0, _mm256_unpacklo_epi8(lb, hb));
        b1 = _mm256_add_epi16(b1, _mm256_unpackhi_epi8(lb, hb));
    }
    a0 = _mm256_add_epi16(a0, b0), a1 = _mm256_add_epi16(a1, b1); /* |sum| <= 2 * 32 * 508 */
    const __m128i sh = _mm_cvtsi32_si128(i);
    d[0] = _mm256_add_epi32(d[0], _mm256_sll_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(a0)), sh));
    d[1] = _mm256_add_epi32(d[1], _mm256_sll_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(a1)), sh));
    d[2] = _mm256_add_epi32(d[2], _mm256_sll_epi32(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(a0, 1)), sh));
    d[3] = _mm256_add_epi32(d[3], _mm256_sll_epi32(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(a1, 1)), sh));
}

static void QK_NAME(lut_dot)(int bits, const uint8_t *w, int64_t ng, int64_t gcols, const uint8_t *tab,
                             const uint16_t *s, const uint8_t *z, const float *xd, const int32_t *xs, float *acc)
{
    const int64_t np = gcols / 8;
    __m256 f[4];
    EACH_K for (int v = 0; v < 4; v++) f[v] = _mm256_loadu_ps(acc + 8 * v);
    for (int64_t g = 0; g < ng; g++, tab += gcols * 8, s += QK_LUT_ROWS, z += QK_LUT_ROWS) {
        __m256i d[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
        for (int i = 0; i < bits; i++)
            for (int64_t p0 = 0; p0 < np; p0 += 32) { /* int16 sums: 32 pairs at most */
                int64_t n = np - p0 < 32 ? np - p0 : 32;
                lut_plane(w, tab + 64 * p0, n, i, d);
                w += n * QK_LUT_ROWS;
            }
        const __m256i xsg = _mm256_set1_epi32(xs[g]);
        const __m256 xdg = _mm256_set1_ps(xd[g]);
        EACH_K for (int v = 0; v < 4; v++) {
            __m256i zi = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(z + 8 * v)));
            __m256i dv = _mm256_sub_epi32(d[v], _mm256_mullo_epi32(zi, xsg));
            __m256 sv = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + 8 * v))), xdg);
            f[v] = _mm256_fmadd_ps(sv, _mm256_cvtepi32_ps(dv), f[v]);
        }
    }
    EACH_K for (int v = 0; v < 4; v++) _mm256_storeu_ps(acc + 8 * v, f[v]);
}

const qk_kernels QK_TABLE = {
    .name = QK_ISA_NAME,
    .quant = QK_NAME(quant),
    .prep = QK_NAME(prep),
    .block_order = { [4] = QK_BLOCK4 },
    .dot = { [2] = QK_NAME(dot2), [3] = QK_NAME(dot3), [4] = QK_NAME(dot4), [5] = QK_NAME(dot5),
             [6] = QK_NAME(dot6), [7] = QK_NAME(dot7), [8] = QK_NAME(dot8) },
    .dot_raw = { [2] = QK_NAME(dot_raw2), [3] = QK_NAME(dot_raw3), [4] = QK_NAME(dot_raw4), [5] = QK_NAME(dot_raw5),
                 [6] = QK_NAME(dot_raw6), [7] = QK_NAME(dot_raw7), [8] = QK_NAME(dot_raw8) },
    .unpack = QK_NAME(unpack),
    .decode = QK_NAME(decode),
    .rotate = QK_NAME(rotate),
    .lut_pack = QK_NAME(lut_pack),
    .lut_tables = QK_NAME(lut_tables),
    .lut_dot = QK_NAME(lut_dot),
    .lut_cols = { QK_LUT_COLS },
    .tile = QK_TILE,
    .tile_pack = QK_TILE_PACK,
    .tile_unsigned = QK_TILE_UNSIGNED,
    .tile_min_batch = QK_TILE_MIN_BATCH,
};
