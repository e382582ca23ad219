/*
 * model/dequant.c — turns stored rows (F32, F16, BF16 and the GGML block formats
 * Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) into fp32, plus the
 * type traits table.
 *
 * The block formats are decoded by layout/ggml.c (lay_ggml_decode_row), the one
 * implementation of their byte layouts in the tree; it computes in the same order
 * of float operations as GGML's reference, so results are bit-identical to it (and
 * to gguf-py's numpy version). Source bytes may be unaligned. These functions must
 * never allocate, print, or read beyond n values' worth of blocks.
 */
#include "model.h"
#include "layout/layout.h"

#include <assert.h>
#include <string.h>

/* ==== Type traits ==== */

static const struct {
    const char *name;
    int block;        /* values per block */
    int bytes;        /* bytes per block */
    int ggml;         /* the ggml type of a block format (layout/layout.h), else 0 */
} traits[MDL_DTYPE_COUNT] = {
    [MDL_F32] = {"F32", 1, 4, 0},
    [MDL_F16] = {"F16", 1, 2, 0},
    [MDL_BF16] = {"BF16", 1, 2, 0},
    [MDL_Q8_0] = {"Q8_0", 32, 34, LAY_GGML_Q8_0},
    [MDL_Q4_0] = {"Q4_0", 32, 18, LAY_GGML_Q4_0},
    [MDL_Q4_1] = {"Q4_1", 32, 20, LAY_GGML_Q4_1},
    [MDL_Q5_0] = {"Q5_0", 32, 22, LAY_GGML_Q5_0},
    [MDL_Q5_1] = {"Q5_1", 32, 24, LAY_GGML_Q5_1},
    [MDL_Q2_K] = {"Q2_K", 256, 84, LAY_GGML_Q2_K},
    [MDL_Q3_K] = {"Q3_K", 256, 110, LAY_GGML_Q3_K},
    [MDL_Q4_K] = {"Q4_K", 256, 144, LAY_GGML_Q4_K},
    [MDL_Q5_K] = {"Q5_K", 256, 176, LAY_GGML_Q5_K},
    [MDL_Q6_K] = {"Q6_K", 256, 210, LAY_GGML_Q6_K},
    [MDL_I32] = {"I32", 1, 4, 0},
    [MDL_U8] = {"U8", 1, 1, 0},
    [MDL_U16] = {"U16", 1, 2, 0},
    [MDL_U32] = {"U32", 1, 4, 0},
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
#include <cpuid.h>
#include <immintrin.h>
__attribute__((target("avx,f16c"))) static void row_f16_f16c(const uint8_t *b, float *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(b + 2 * i))));
    for (; i < n; i++) y[i] = fp16(b + 2 * i);
}

/* F16C is CPUID leaf 1, ECX bit 29, asked once at start-up (clang's
 * __builtin_cpu_supports knows no "f16c"); AVX as the compiler checks it (with the
 * OS's support for the registers). */
static int cpu_f16c;
__attribute__((constructor)) static void detect_f16c(void)
{
    unsigned a, b, c, d;
    __builtin_cpu_init(); /* constructors may run before the compiler's own */
    cpu_f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) && __builtin_cpu_supports("avx");
}
static int have_f16c(void) { return cpu_f16c; }
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

/* ==== Dispatch ==== */

void mdl_dequant_row(mdl_dtype t, const void *src, float *dst, int64_t n)
{
    assert((unsigned)t < MDL_I32 && n % traits[t].block == 0);
    const uint8_t *b = src;
    switch (t) {
    case MDL_F32: memcpy(dst, src, (size_t)n * 4); break;
    case MDL_F16: row_f16(b, dst, n); break;
    case MDL_BF16: for (int64_t i = 0; i < n; i++) dst[i] = bf16(b + 2 * i); break;
    default: lay_ggml_decode_row(traits[t].ggml, b, dst, n); break;
    }
}
