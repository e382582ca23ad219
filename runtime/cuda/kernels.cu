/*
 * runtime/cuda/kernels.cu — the CUDA kernels of the runtime and their launchers:
 * the packed matrix-vector product (batch 1..4 per launch), the dequantization
 * of a packed tensor to fp16 for the cuBLAS prompt path, the input transforms of
 * tensors that rotate (layout.h, "Input rotations") or scale their inputs (layout.h,
 * "Activation-aware input scales"), activation gathers, RMSNorm, RoPE with the
 * KV-cache store, causal grouped-query attention, SwiGLU, residual and bias adds.
 * Also the upload of one linear layer.
 *
 * The packed kernels take their index arithmetic and their decoding from
 * runtime/cuda/decode.cuh (the layout, the tile repack and the activation
 * interleave are drawn there); the __global__ functions here are thin.
 *
 * What it must never do: allocate or print inside a kernel or a launcher (the
 * upload functions allocate through rtc_mem), or launch without checking.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/cuda/rtc_int.cuh"

/* ==== Checked calls and tracked memory ==== */

int rtc_cuda_fail(cudaError_t e, const char *call, const char *file, int line, char *err, size_t err_len)
{
    (void)cudaGetLastError(); /* clear a non-sticky error so that the next call is not blamed */
    if (err && err_len)
        snprintf(err, err_len, "CUDA: %s failed: %s (%s) at %s:%d", call, cudaGetErrorString(e), cudaGetErrorName(e),
                 file, line);
    return -1;
}

static const char *blas_status_name(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "unknown cuBLAS status";
    }
}

int rtc_blas_fail(cublasStatus_t s, const char *call, const char *file, int line, char *err, size_t err_len)
{
    if (err && err_len)
        snprintf(err, err_len, "cuBLAS: %s failed: %s (%d) at %s:%d", call, blas_status_name(s), (int)s, file, line);
    return -1;
}

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define RTC_GAP 64
#define RTC_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define RTC_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define RTC_GAP 0
#define RTC_POISON(p, n) ((void)(p), (void)(n))
#define RTC_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

size_t rtc_span(size_t bytes) { return (bytes + RTC_GAP + 255) & ~(size_t)255; }

/* A block of its own, tracked. */
static int alloc_block(rtc_mem *m, void **p, size_t bytes, const char *what, char *err, size_t err_len)
{
    if (m->n == m->cap) {
        int cap = m->cap ? 2 * m->cap : 64;
        void **np = (void **)realloc(m->ptr, (size_t)cap * sizeof *np);
        if (!np) { snprintf(err, err_len, "out of host memory tracking device buffers"); return -1; }
        m->ptr = np, m->cap = cap;
    }
    cudaError_t e = cudaMalloc(p, bytes);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        snprintf(err, err_len, "out of device memory for %s: asked for %.1f MiB, %.1f MiB free of %.1f MiB "
                 "(%.1f MiB already held by this model)", what, bytes / 1048576.0, fr / 1048576.0, tot / 1048576.0,
                 m->held / 1048576.0);
        *p = NULL;
        return -1;
    }
    if (e != cudaSuccess) { *p = NULL; return rtc_cuda_fail(e, "cudaMalloc", __FILE__, __LINE__, err, err_len); }
    m->ptr[m->n++] = *p;
    m->held += (int64_t)bytes;
    return 0;
}

int rtc_mem_slab(rtc_mem *m, size_t bytes, const char *what, char *err, size_t err_len)
{
    void *p;
    m->slab = NULL, m->slab_size = m->slab_used = 0;
    if (!bytes) return 0;
    if (alloc_block(m, &p, bytes, what, err, err_len)) return -1;
    RTC_POISON(p, bytes);
    m->slab = (char *)p, m->slab_size = bytes;
    return 0;
}

int rtc_alloc(rtc_mem *m, void **p, size_t bytes, const char *what, char *err, size_t err_len)
{
    *p = NULL;
    if (!bytes) return 0;
    if (m->slab && rtc_span(bytes) <= m->slab_size - m->slab_used) {
        *p = m->slab + m->slab_used;
        m->slab_used += rtc_span(bytes);
        RTC_UNPOISON(*p, bytes);
    } else if (alloc_block(m, p, bytes, what, err, err_len)) {
        return -1;
    }
    return 0;
}

int rtc_upload(rtc_mem *m, void **p, const void *src, size_t bytes, const char *what, char *err, size_t err_len)
{
    if (rtc_alloc(m, p, bytes, what, err, err_len)) return -1;
    if (bytes && RTC_CUDA(cudaMemcpy(*p, src, bytes, cudaMemcpyHostToDevice))) return -1;
    return 0;
}

void rtc_mem_free(rtc_mem *m)
{
    if (m->slab) RTC_UNPOISON(m->slab, m->slab_size);
    for (int i = 0; i < m->n; i++) cudaFree(m->ptr[i]);
    free(m->ptr);
    memset(m, 0, sizeof *m);
}

/* ==== Packed matrix-vector product ====
 *
 * A block owns R consecutive rows; its warps share the row's tiles (warp w takes
 * tiles w, w + warps, ...), each lane one chunk of every tile, for all R rows and
 * NB activation rows at once, so each activation quad is loaded once for R rows
 * and each weight word once for NB activation rows. Partial sums meet through warp
 * shuffles and one shared-memory pass.
 */

#define MV_MAX_WARPS 8

/* One lane's chunk of tile x for R rows: the words (coalesced across the warp,
 * streamed past L1), the group's scale and zero, then chunk_dot; with MIN (Q4_1,
 * Q5_1) also the group's min times the chunk's activation sum. */
template <int R, int NB, int B, bool MIN>
__device__ __forceinline__ void mv_tile(const rtc_geom &g, const rtc_tile &x, int lane, const int32_t *rowv,
                                        const uint32_t *__restrict__ values, const __half *__restrict__ scales,
                                        const uint8_t *__restrict__ zeros, const __half *__restrict__ mins,
                                        const float *__restrict__ xi, float *part)
{
    uint32_t wd[R * 8];
    float m[R], s[R], mn[R], acc[R * NB], xsum[NB];
    int32_t c = x.c0 + lane;
#pragma unroll
    for (int r = 0; r < R; r++) {
        const uint32_t *row = values + (int64_t)rowv[r] * g.row_words;
#pragma unroll
        for (int w = 0; w < B; w++) wd[r * 8 + w] = __ldcs(row + rtc_word_index(&x, lane, w));
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        m[r] = RTC_MAGIC_F + (float)rtc_zero_of(&g, zeros, rowv[r], c, B, MIN);
        s[r] = __half2float(scales[rtc_scale_index(&g, rowv[r], c)]);
        mn[r] = MIN ? __half2float(mins[rtc_scale_index(&g, rowv[r], c)]) : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < R * NB; i++) acc[i] = 0.0f;
#pragma unroll
    for (int b = 0; b < NB; b++) xsum[b] = 0.0f;
    rtc_chunk_dot(wd, R, NB, B, m, xi + rtc_xi_index(&x, lane, 0, 0), x.k * 4, g.cols, acc, MIN ? xsum : NULL);
#pragma unroll
    for (int i = 0; i < R * NB; i++)
        part[i] += MIN ? s[i / NB] * acc[i] + mn[i / NB] * xsum[i % NB] : s[i / NB] * acc[i];
}

/* MIN: the kernel of the tensors with mins (Q4_1, Q5_1: 4 and 5 bits), a kernel of
 * its own so that the others keep their register budget (and occupancy). */
template <int R, int NB, bool MIN>
__global__ void __launch_bounds__(MV_MAX_WARPS * 32)
k_matvec(rtc_geom g, const uint32_t *__restrict__ values, const __half *__restrict__ scales,
         const uint8_t *__restrict__ zeros, const __half *__restrict__ mins, const float *__restrict__ xi,
         float *__restrict__ y, int64_t y_stride)
{
    __shared__ float red[MV_MAX_WARPS][R * NB];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
    int32_t row0 = blockIdx.x * R, rowv[R];
    float part[R * NB];
#pragma unroll
    for (int r = 0; r < R; r++) rowv[r] = row0 + r < g.rows ? row0 + r : g.rows - 1;
#pragma unroll
    for (int i = 0; i < R * NB; i++) part[i] = 0.0f;
    for (int32_t t = warp; t < g.n_tiles; t += nw) {
        rtc_tile x = rtc_tile_at(&g, t);
        if (lane >= x.k) continue;
#define MV_TILE(B) mv_tile<R, NB, B, MIN>(g, x, lane, rowv, values, scales, zeros, mins, xi, part)
        if (MIN) { /* only Q4_1 and Q5_1 have mins (check_packed) */
            if (x.bits == 4) MV_TILE(4);
            else MV_TILE(5);
            continue;
        }
        switch (x.bits) {
        case 2: MV_TILE(2); break;
        case 3: MV_TILE(3); break;
        case 4: MV_TILE(4); break;
        case 5: MV_TILE(5); break;
        case 6: MV_TILE(6); break;
        case 7: MV_TILE(7); break;
        default: MV_TILE(8); break;
        }
#undef MV_TILE
    }
#pragma unroll
    for (int i = 0; i < R * NB; i++) {
        float v = part[i];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) red[warp][i] = v;
    }
    __syncthreads();
    if (threadIdx.x < R * NB) {
        int i = threadIdx.x, r = i / NB, b = i % NB;
        float v = 0.0f;
        for (int w = 0; w < nw; w++) v += red[w][i];
        if (row0 + r < g.rows) y[(int64_t)b * y_stride + row0 + r] = v;
    }
}

/* xi[b][j] = x[b][xmap[j]] for n activation rows of `cols` values. */
__global__ void k_gather_f32(const float *__restrict__ x, const int32_t *__restrict__ map, float *__restrict__ out,
                             int n, int64_t cols)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)n * cols) return;
    int64_t b = i / cols, j = i % cols;
    out[i] = x[b * cols + map[j]];
}

/* xh[b][j] = fp16(x[b][perm[j]]): stored order for the prompt path (perm NULL:
 * the identity, a tensor in original column order). */
__global__ void k_gather_f16(const float *__restrict__ x, const int32_t *__restrict__ perm, __half *__restrict__ out,
                             int n, int64_t cols)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)n * cols) return;
    int64_t b = i / cols, j = i % cols;
    out[i] = __float2half_rn(x[perm ? b * cols + perm[j] : i]);
}

/* ==== Input transforms: rotation and input scales ====
 *
 * A tensor that rotates holds W R, one with input scales W / m; on both paths,
 * before the gather, the activations become x' = R^T x or x' = x * m, into the
 * scratch s->xr (rtc_linear_forward), and the packed product is then any other's.
 *
 * The rotation, x' = R^T x: one
 * block per rotation block of an activation row (the n rows are n * cols / rot
 * consecutive blocks), rot / 2 threads, each doing one butterfly of every stage. The
 * outputs are lay_rot_apply's floats bit for bit: the sign product is exact, each
 * stage adds and subtracts the same two operands as the reference (pairs (i, i + h)
 * in runs of 2h), and the norm is one product at the end. No inexact product feeds
 * an add, so nvcc has nothing to contract into an FMA that would round differently.
 */
#define ROT_MAX 128 /* the largest rotation block (lay_option_check) */

__global__ void __launch_bounds__(ROT_MAX / 2)
k_rotate(const float *__restrict__ x, const float *__restrict__ sign, float norm, int rot, float *__restrict__ out,
         int64_t cols)
{
    __shared__ float v[ROT_MAX];
    int t = threadIdx.x, half = rot / 2;
    int64_t at = (int64_t)blockIdx.x * rot, j0 = at % cols;
    v[t] = x[at + t] * sign[j0 + t];
    v[t + half] = x[at + t + half] * sign[j0 + t + half];
    __syncthreads();
    for (int h = 1; h < rot; h *= 2) {
        int i = t / h * 2 * h + t % h; /* the stage's t-th pair is (i, i + h) */
        float a = v[i], b = v[i + h];
        v[i] = a + b, v[i + h] = a - b;
        __syncthreads();
    }
    out[at + t] = v[t] * norm;
    out[at + t + half] = v[t + half] * norm;
}

/* The input scales, out[b][j] = x[b][j] * m[j] for n activation rows of `cols`
 * values, m the fp16 multipliers decoded to float at upload: lay_xscale_mul's one
 * float product per value, bit for bit. It is a single multiply with no add, so
 * nvcc has nothing to contract into an FMA. */
__global__ void k_xscale(const float *__restrict__ x, const float *__restrict__ m, float *__restrict__ out, int n,
                         int64_t cols)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)n * cols) return;
    out[i] = x[i] * m[i % cols];
}

/* ==== Dequantization (prompt path) ====
 *
 * One warp per (row, tile); lane l writes the 32 fp16 weights of its chunk in
 * stored column order, w[row][(c0 + l) * 32 + v] = s (q - z) (+ m with MIN), as
 * four 16-byte stores.
 */
template <int B, bool MIN>
__device__ __forceinline__ void dq_chunk(const rtc_geom &g, const rtc_tile &x, int lane, int32_t row,
                                         const uint32_t *__restrict__ values, const __half *__restrict__ scales,
                                         const uint8_t *__restrict__ zeros, const __half *__restrict__ mins,
                                         __half *__restrict__ w)
{ /* w points at this row's place in the slab */
    uint32_t wd[8];
    int32_t c = x.c0 + lane;
    const uint32_t *src = values + (int64_t)row * g.row_words;
#pragma unroll
    for (int i = 0; i < B; i++) wd[i] = __ldcs(src + rtc_word_index(&x, lane, i));
    float m = RTC_MAGIC_F + (float)rtc_zero_of(&g, zeros, row, c, B, MIN);
    float s = __half2float(scales[rtc_scale_index(&g, row, c)]);
    float mn = MIN ? __half2float(mins[rtc_scale_index(&g, row, c)]) : 0.0f;
    uint4 *dst = (uint4 *)(w + (int64_t)c * LAY_CHUNK);
#define DQ(q, i) rtc_weight(rtc_quad_magic(q, i), m, s, MIN, mn)
#pragma unroll
    for (int u = 0; u < 4; u++) {
        uint32_t q0 = rtc_decode_quad(wd, B, 2 * u), q1 = rtc_decode_quad(wd, B, 2 * u + 1);
        __half2 h[4];
        h[0] = __floats2half2_rn(DQ(q0, 0), DQ(q0, 1));
        h[1] = __floats2half2_rn(DQ(q0, 2), DQ(q0, 3));
        h[2] = __floats2half2_rn(DQ(q1, 0), DQ(q1, 1));
        h[3] = __floats2half2_rn(DQ(q1, 2), DQ(q1, 3));
        uint4 v;
        memcpy(&v, h, sizeof v);
        dst[u] = v;
    }
#undef DQ
}

/* Rows row0 .. row0 + nrows - 1 into the slab w[nrows][cols]; MIN as k_matvec's. */
template <bool MIN>
__global__ void k_dequant(rtc_geom g, const uint32_t *__restrict__ values, const __half *__restrict__ scales,
                          const uint8_t *__restrict__ zeros, const __half *__restrict__ mins, int32_t row0,
                          int32_t nrows, __half *__restrict__ slab)
{
    int64_t gw = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (gw >= (int64_t)nrows * g.n_tiles) return;
    int32_t row = row0 + (int32_t)(gw / g.n_tiles);
    rtc_tile x = rtc_tile_at(&g, (int32_t)(gw % g.n_tiles));
    if (lane >= x.k) return;
    __half *w = slab + (int64_t)(row - row0) * g.cols;
#define DQ_CHUNK(B) dq_chunk<B, MIN>(g, x, lane, row, values, scales, zeros, mins, w)
    if (MIN) { /* only Q4_1 and Q5_1 have mins (check_packed) */
        if (x.bits == 4) DQ_CHUNK(4);
        else DQ_CHUNK(5);
        return;
    }
    switch (x.bits) {
    case 2: DQ_CHUNK(2); break;
    case 3: DQ_CHUNK(3); break;
    case 4: DQ_CHUNK(4); break;
    case 5: DQ_CHUNK(5); break;
    case 6: DQ_CHUNK(6); break;
    case 7: DQ_CHUNK(7); break;
    default: DQ_CHUNK(8); break;
    }
#undef DQ_CHUNK
}

/* ==== Uploading a linear layer ==== */

static int check_packed(const lay_packed *p, char *err, size_t err_len)
{
    char why[128];
    if (lay_option_check(&p->opt, p->rows, p->cols, why, sizeof why)) {
        snprintf(err, err_len, "packed tensor %lldx%lld (%s): %s", (long long)p->rows, (long long)p->cols,
                 p->opt.name, why);
        return -1;
    }
    if (p->rows > INT32_MAX / 2 || p->cols > INT32_MAX / 64) {
        snprintf(err, err_len, "packed tensor %lldx%lld is too large for the CUDA kernels", (long long)p->rows,
                 (long long)p->cols);
        return -1;
    }
    /* a ggml type (layout.h): the 32-wide ones only, in original column order (no
     * perm), the center as zero, a min per group for Q4_1 and Q5_1 */
    int type = lay_option_ggml(&p->opt), has_min = lay_ggml_has_min(type);
    if (type >= 0 && !lay_ggml_packable(type)) {
        snprintf(err, err_len, "packed tensor %lldx%lld (%s): ggml type %d is not in the packed layout (only Q4_0, "
                 "Q4_1, Q5_0, Q5_1 and Q8_0 are)", (long long)p->rows, (long long)p->cols, p->opt.name, type);
        return -1;
    }
    if (!p->values || !p->scales || (type < 0 && !p->perm) ||
        (p->opt.scale_fmt == LAY_SCALE_F16_Z8 && !p->zeros) || (has_min && !p->mins) || (p->opt.awq && !p->xscale)) {
        snprintf(err, err_len, "packed tensor %lldx%lld (%s): an array (values, scales, zeros, mins, perm or xscale) "
                 "is missing", (long long)p->rows, (long long)p->cols, p->opt.name);
        return -1;
    }
    if (p->mins && !has_min) { /* the kernels would leave them out, lay_packed_dequant would not */
        snprintf(err, err_len, "packed tensor %lldx%lld (%s): mins given, but only Q4_1 and Q5_1 have mins",
                 (long long)p->rows, (long long)p->cols, p->opt.name);
        return -1;
    }
    if (type >= 0 && lay_ggml_center(type) != (has_min ? 0 : 1 << (p->opt.bits_lo - 1))) { /* rtc_zero_of */
        snprintf(err, err_len, "packed tensor %lldx%lld (%s): ggml type %d's center %d is not a zero the kernels know",
                 (long long)p->rows, (long long)p->cols, p->opt.name, type, lay_ggml_center(type));
        return -1;
    }
    for (int64_t j = 0; p->perm && j < p->cols; j++) {
        int64_t v = lay_perm_at(p, j);
        if (v < 0 || v >= p->cols) {
            snprintf(err, err_len, "packed tensor %lldx%lld (%s): perm[%lld] = %lld is not a column",
                     (long long)p->rows, (long long)p->cols, p->opt.name, (long long)j, (long long)v);
            return -1;
        }
    }
    return 0;
}

/* The bytes of a packed tensor's device arrays, in upload order: values, scales,
 * zeros (0 when not stored), mins (0 unless Q4_1, Q5_1), activation map,
 * permutation (0 for a ggml type: its columns are in original order, and the
 * prompt path's gather reads them in place), the rotation's signs (0 unless it
 * rotates: a float +1 or -1 per column, multiplied in by k_rotate), the input
 * multipliers (0 unless it has input scales: m decoded from fp16 to a float per
 * column, multiplied in by k_xscale; an option has at most one of the two). */
enum { PK_VALUES, PK_SCALES, PK_ZEROS, PK_MINS, PK_XMAP, PK_PERM, PK_RSIGN, PK_XMUL, PK_ARRAYS };
static void packed_array_bytes(const lay_packed *p, const rtc_geom *g, size_t bytes[PK_ARRAYS])
{
    bytes[PK_VALUES] = (size_t)(p->rows * g->row_words) * 4;
    bytes[PK_SCALES] = (size_t)(p->rows * g->ng) * 2;
    bytes[PK_ZEROS] = g->sym ? 0 : (size_t)(p->rows * g->ng);
    bytes[PK_MINS] = g->has_mins ? (size_t)(p->rows * g->ng) * 2 : 0;
    bytes[PK_XMAP] = (size_t)p->cols * 4;
    bytes[PK_PERM] = p->perm ? (size_t)p->cols * 4 : 0;
    bytes[PK_RSIGN] = p->opt.rot ? (size_t)p->cols * sizeof(float) : 0;
    bytes[PK_XMUL] = p->opt.awq ? (size_t)p->cols * sizeof(float) : 0;
}

size_t rtc_packed_device_bytes(const lay_packed *p)
{
    rtc_geom g;
    size_t bytes[PK_ARRAYS], sum = 0;
    rtc_geom_init(&g, p);
    packed_array_bytes(p, &g, bytes);
    for (int i = 0; i < PK_ARRAYS; i++) sum += bytes[i] ? rtc_span(bytes[i]) : 0;
    return sum;
}

/* The values, repacked tile by tile (decode.cuh), in slabs of rows. */
static int upload_values(rtc_mem *m, const lay_packed *p, const rtc_geom *g, size_t bytes, uint32_t **out,
                         char *err, size_t err_len)
{
    const int64_t slab = 256, rw = g->row_words;
    int rc = -1;
    uint32_t *dev, *src = (uint32_t *)malloc((size_t)rw * 4), *dst = (uint32_t *)malloc((size_t)(slab * rw) * 4);
    if (!src || !dst) { snprintf(err, err_len, "out of host memory repacking a %lldx%lld tensor",
                                 (long long)p->rows, (long long)p->cols); goto done; }
    if (rtc_alloc(m, (void **)&dev, bytes, "packed values", err, err_len)) goto done;
    for (int64_t r0 = 0; r0 < p->rows; r0 += slab) {
        int64_t nr = p->rows - r0 < slab ? p->rows - r0 : slab;
        for (int64_t r = 0; r < nr; r++) {
            memcpy(src, p->values + (r0 + r) * rw * 4, (size_t)rw * 4); /* the file's bytes may be unaligned */
            rtc_repack_row(g, src, dst + r * rw);
        }
        if (RTC_CUDA(cudaMemcpy(dev + r0 * rw, dst, (size_t)(nr * rw) * 4, cudaMemcpyHostToDevice))) goto done;
    }
    *out = dev;
    rc = 0;
done:
    free(src);
    free(dst);
    return rc;
}

int rtc_upload_signs(rtc_mem *m, uint32_t seed, int64_t cols, const float **out, char *err, size_t err_len)
{
    float *sign = (float *)malloc((size_t)cols * sizeof *sign);
    void *dev;
    *out = NULL;
    if (!sign) { snprintf(err, err_len, "out of host memory for the rotation's signs of %lld columns",
                          (long long)cols); return -1; }
    for (int64_t j = 0; j < cols; j++) sign[j] = (float)lay_rot_sign(seed, j);
    int rc = rtc_upload(m, &dev, sign, (size_t)cols * sizeof *sign, "rotation signs", err, err_len);
    free(sign);
    *out = (const float *)dev;
    return rc;
}

int rtc_upload_xmul(rtc_mem *m, const uint16_t *xscale, int64_t cols, const float **out, char *err, size_t err_len)
{
    float *mul = (float *)malloc((size_t)cols * sizeof *mul);
    void *dev;
    *out = NULL;
    if (!mul) { snprintf(err, err_len, "out of host memory for the input multipliers of %lld columns",
                         (long long)cols); return -1; }
    for (int64_t j = 0; j < cols; j++) mul[j] = lay_f16_to_f32(xscale[j]); /* lay_xscale_mul's factor */
    int rc = rtc_upload(m, &dev, mul, (size_t)cols * sizeof *mul, "input multipliers", err, err_len);
    free(mul);
    *out = (const float *)dev;
    return rc;
}

int rtc_linear_upload_packed(rtc_mem *m, const lay_packed *p, rtc_linear *out, char *err, size_t err_len)
{
    memset(out, 0, sizeof *out);
    if (check_packed(p, err, err_len)) return -1;
    rtc_geom g;
    rtc_geom_init(&g, p);
    int rc = -1;
    int32_t *xmap = (int32_t *)malloc((size_t)p->cols * sizeof *xmap);
    int32_t *perm = p->perm ? (int32_t *)malloc((size_t)p->cols * sizeof *perm) : NULL;
    uint32_t *values;
    void *scales, *zeros = NULL, *mins = NULL, *dxmap, *dperm;
    const float *rsign = NULL, *xmul = NULL;
    size_t bytes[PK_ARRAYS];
    if (!xmap || (p->perm && !perm)) { snprintf(err, err_len, "out of host memory for a permutation of %lld columns",
                                                (long long)p->cols); goto done; }
    rtc_build_xmap(&g, p, xmap);
    for (int64_t j = 0; perm && j < p->cols; j++) perm[j] = (int32_t)lay_perm_at(p, j);
    packed_array_bytes(p, &g, bytes); /* an array of 0 bytes uploads as NULL */
    if (upload_values(m, p, &g, bytes[PK_VALUES], &values, err, err_len)) goto done;
    if (rtc_upload(m, &scales, p->scales, bytes[PK_SCALES], "packed scales", err, err_len)) goto done;
    if (rtc_upload(m, &zeros, p->zeros, bytes[PK_ZEROS], "packed zeros", err, err_len)) goto done;
    if (rtc_upload(m, &mins, p->mins, bytes[PK_MINS], "packed mins", err, err_len)) goto done;
    if (rtc_upload(m, &dxmap, xmap, bytes[PK_XMAP], "activation map", err, err_len)) goto done;
    if (rtc_upload(m, &dperm, perm, bytes[PK_PERM], "permutation", err, err_len)) goto done;
    if (bytes[PK_RSIGN] && rtc_upload_signs(m, p->rot_seed, p->cols, &rsign, err, err_len)) goto done;
    if (bytes[PK_XMUL] && rtc_upload_xmul(m, p->xscale, p->cols, &xmul, err, err_len)) goto done;
    out->rows = p->rows, out->cols = p->cols, out->packed = 1, out->g = g;
    out->values = values, out->scales = (const __half *)scales, out->zeros = (const uint8_t *)zeros;
    out->mins = (const __half *)mins, out->xmap = (const int32_t *)dxmap, out->perm = (const int32_t *)dperm;
    out->rot = p->opt.rot, out->rot_seed = p->opt.rot ? p->rot_seed : 0, out->rsign = rsign, out->xmul = xmul;
    rc = 0;
done:
    free(xmap);
    free(perm);
    return rc;
}

int rtc_linear_upload_dense(rtc_mem *m, const float *w, int64_t rows, int64_t cols, rtc_linear *out, char *err,
                            size_t err_len)
{
    void *d;
    memset(out, 0, sizeof *out);
    if (rtc_upload(m, &d, w, (size_t)(rows * cols) * sizeof(float), "dense weights", err, err_len)) return -1;
    out->rows = rows, out->cols = cols, out->packed = 0, out->w = (const float *)d;
    return 0;
}

/* ==== Linear forward ==== */

static int64_t blocks_for(int64_t n, int threads) { return (n + threads - 1) / threads; }

/* Rows per block: 4 while that still gives two blocks per multiprocessor. */
static int rows_per_block(int64_t rows, int n_sm)
{
    if (rows / 4 >= 2 * (int64_t)n_sm) return 4;
    if (rows / 2 >= 2 * (int64_t)n_sm) return 2;
    return 1;
}

/* Warps per block: at most 8, as few as keep the tiles evenly shared. */
static int warps_per_block(int32_t n_tiles)
{
    int per = (n_tiles + MV_MAX_WARPS - 1) / MV_MAX_WARPS;
    return (n_tiles + per - 1) / per;
}

template <int R, bool MIN>
static void launch_mv(const rtc_linear *l, int nb, const float *xi, float *y, cudaStream_t st)
{
    dim3 grid((unsigned)((l->rows + R - 1) / R)), block((unsigned)(32 * warps_per_block(l->g.n_tiles)));
    const rtc_geom &g = l->g;
    switch (nb) {
    case 1: k_matvec<R, 1, MIN><<<grid, block, 0, st>>>(g, l->values, l->scales, l->zeros, l->mins, xi, y, l->rows); break;
    case 2: k_matvec<R, 2, MIN><<<grid, block, 0, st>>>(g, l->values, l->scales, l->zeros, l->mins, xi, y, l->rows); break;
    case 3: k_matvec<R, 3, MIN><<<grid, block, 0, st>>>(g, l->values, l->scales, l->zeros, l->mins, xi, y, l->rows); break;
    default: k_matvec<R, 4, MIN><<<grid, block, 0, st>>>(g, l->values, l->scales, l->zeros, l->mins, xi, y, l->rows); break;
    }
}

template <int R>
static void launch_mv_r(const rtc_linear *l, int nb, const float *xi, float *y, cudaStream_t st)
{
    if (l->g.has_mins) launch_mv<R, true>(l, nb, xi, y, st);
    else launch_mv<R, false>(l, nb, xi, y, st);
}

static int packed_matvec(const rtc_linear *l, const float *x, float *y, int n, const rtc_scratch *s,
                         cudaStream_t st, int n_sm, char *err, size_t err_len)
{
    int64_t total = (int64_t)n * l->cols;
    k_gather_f32<<<(unsigned)blocks_for(total, 256), 256, 0, st>>>(x, l->xmap, s->xi, n, l->cols);
    if (RTC_LAUNCHED("k_gather_f32")) return -1;
    int R = rows_per_block(l->rows, n_sm);
    for (int b0 = 0; b0 < n; b0 += RTC_MV_MAX_NB) {
        int nb = n - b0 < RTC_MV_MAX_NB ? n - b0 : RTC_MV_MAX_NB;
        const float *xi = s->xi + (int64_t)b0 * l->cols;
        float *yb = y + (int64_t)b0 * l->rows;
        if (R == 4) launch_mv_r<4>(l, nb, xi, yb, st);
        else if (R == 2) launch_mv_r<2>(l, nb, xi, yb, st);
        else launch_mv_r<1>(l, nb, xi, yb, st);
        if (RTC_LAUNCHED("k_matvec")) return -1;
    }
    return 0;
}

/* Slab by slab of rows (as many as the scratch holds): dequantize, then y^T (rows x
 * n, column-major, leading dimension rows) = W_slab (nr x cols) * X^T: the slab is
 * row-major [nr][cols], i.e. column-major cols x nr, hence op T; X row-major
 * [n][cols] is column-major cols x n. */
static int packed_gemm(const rtc_linear *l, const float *x, float *y, int n, const rtc_scratch *s,
                       cublasHandle_t blas, cudaStream_t st, char *err, size_t err_len)
{
    int64_t total = (int64_t)n * l->cols, slab = s->wd_elems / l->cols;
    k_gather_f16<<<(unsigned)blocks_for(total, 256), 256, 0, st>>>(x, l->perm, s->xh, n, l->cols);
    if (RTC_LAUNCHED("k_gather_f16")) return -1;
    const float one = 1.0f, zero = 0.0f;
    for (int64_t r0 = 0; r0 < l->rows; r0 += slab) {
        int64_t nr = l->rows - r0 < slab ? l->rows - r0 : slab;
        unsigned blocks = (unsigned)blocks_for(nr * l->g.n_tiles * 32, 256);
        if (l->g.has_mins)
            k_dequant<true><<<blocks, 256, 0, st>>>(l->g, l->values, l->scales, l->zeros, l->mins, (int32_t)r0,
                                                    (int32_t)nr, s->wd);
        else
            k_dequant<false><<<blocks, 256, 0, st>>>(l->g, l->values, l->scales, l->zeros, l->mins, (int32_t)r0,
                                                     (int32_t)nr, s->wd);
        if (RTC_LAUNCHED("k_dequant")) return -1;
        if (RTC_BLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)nr, n, (int)l->cols, &one, s->wd, CUDA_R_16F,
                                  (int)l->cols, s->xh, CUDA_R_16F, (int)l->cols, &zero, y + r0, CUDA_R_32F,
                                  (int)l->rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)))
            return -1;
    }
    return 0;
}

int rtc_rotate(int rot, const float *sign, const float *x, float *out, int n, int64_t cols, cudaStream_t st,
               char *err, size_t err_len)
{
    float norm = (float)(1.0 / sqrt((double)rot)); /* lay_rot_apply's */
    k_rotate<<<(unsigned)((int64_t)n * cols / rot), (unsigned)(rot / 2), 0, st>>>(x, sign, norm, rot, out, cols);
    return RTC_LAUNCHED("k_rotate");
}

int rtc_xscale(const float *m, const float *x, float *out, int n, int64_t cols, cudaStream_t st, char *err,
               size_t err_len)
{
    int64_t total = (int64_t)n * cols;
    k_xscale<<<(unsigned)blocks_for(total, 256), 256, 0, st>>>(x, m, out, n, cols);
    return RTC_LAUNCHED("k_xscale");
}

int rtc_linear_transform(const rtc_linear *l, const float *x, int n, const rtc_scratch *s, cudaStream_t st, char *err,
                         size_t err_len)
{
    if ((int64_t)n * l->cols > s->xr_elems) {
        snprintf(err, err_len, "no input-transform scratch for a %lldx%lld product of %d rows", (long long)l->rows,
                 (long long)l->cols, n);
        return -1;
    }
    return l->rot ? rtc_rotate(l->rot, l->rsign, x, s->xr, n, l->cols, st, err, err_len)
                  : rtc_xscale(l->xmul, x, s->xr, n, l->cols, st, err, err_len);
}

int rtc_linear_forward(const rtc_linear *l, const float *x, float *y, int n, rtc_path path, const rtc_scratch *s,
                       cublasHandle_t blas, cudaStream_t st, int n_sm, char *err, size_t err_len)
{
    if (l->packed && (l->rot || l->xmul)) { /* both paths multiply W' = W R or W / m by x' = R^T x or x * m */
        if (rtc_linear_transform(l, x, n, s, st, err, err_len)) return -1;
        x = s->xr;
    }
    return rtc_linear_product(l, x, y, n, path, s, blas, st, n_sm, err, err_len);
}

int rtc_linear_product(const rtc_linear *l, const float *x, float *y, int n, rtc_path path, const rtc_scratch *s,
                       cublasHandle_t blas, cudaStream_t st, int n_sm, char *err, size_t err_len)
{
    if (!l->packed) {
        const float one = 1.0f, zero = 0.0f;
        return RTC_BLAS(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)l->rows, n, (int)l->cols, &one, l->w,
                                    (int)l->cols, x, (int)l->cols, &zero, y, (int)l->rows));
    }
    if (path == RTC_PATH_AUTO) path = n <= RTC_MV_MAX_BATCH ? RTC_PATH_MATVEC : RTC_PATH_GEMM;
    if (path == RTC_PATH_GEMM) {
        if ((int64_t)n * l->cols > s->xh_elems || l->cols > s->wd_elems) {
            snprintf(err, err_len, "no prompt-path scratch for a %lldx%lld product of %d rows", (long long)l->rows,
                     (long long)l->cols, n);
            return -1;
        }
        return packed_gemm(l, x, y, n, s, blas, st, err, err_len);
    }
    if (n > s->xi_rows) {
        snprintf(err, err_len, "the matrix-vector scratch holds %d rows, not %d", s->xi_rows, n);
        return -1;
    }
    return packed_matvec(l, x, y, n, s, st, n_sm, err, err_len);
}

/* ==== Element-wise kernels ==== */

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it. */
__device__ float block_sum(float v, float *sh)
{
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads(); /* sh may still be read from a previous call */
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ float block_max(float v, float *sh)
{
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -INFINITY;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* One block per row: out = x / rms(x) * w. */
__global__ void k_rmsnorm(const float *__restrict__ x, const float *__restrict__ w, float *__restrict__ out, int dim,
                          float eps)
{
    __shared__ float sh[32];
    const float *xr = x + (int64_t)blockIdx.x * dim;
    float *orow = out + (int64_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) ss += xr[j] * xr[j];
    ss = block_sum(ss, sh);
    float r = rsqrtf(ss / (float)dim + eps);
    for (int j = threadIdx.x; j < dim; j += blockDim.x) orow[j] = xr[j] * r * w[j];
}

__global__ void k_add_bias(float *__restrict__ y, const float *__restrict__ bias, int64_t len, int rows)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) y[i] += bias[i % rows];
}

__global__ void k_add(float *__restrict__ h, const float *__restrict__ d, int64_t len)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) h[i] += d[i];
}

__global__ void k_swiglu(float *__restrict__ gate, const float *__restrict__ up, int64_t len)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    float g = gate[i];
    gate[i] = g / (1.0f + expf(-g)) * up[i];
}

int rtc_rmsnorm(const float *x, const float *w, float *out, int n, int dim, float eps, cudaStream_t st, char *err,
                size_t err_len)
{
    /* about 4 elements a thread: each pass is a chain of dependent loads per thread,
     * so a 256-thread block over 4096 took 14 us on an H200, 1024 threads 4x less */
    int threads = (dim / 4 + 31) / 32 * 32;
    threads = threads < 128 ? 128 : threads > 1024 ? 1024 : threads;
    k_rmsnorm<<<(unsigned)n, (unsigned)threads, 0, st>>>(x, w, out, dim, eps);
    return RTC_LAUNCHED("k_rmsnorm");
}

int rtc_add_bias(float *y, const float *bias, int n, int rows, cudaStream_t st, char *err, size_t err_len)
{
    int64_t len = (int64_t)n * rows;
    k_add_bias<<<(unsigned)blocks_for(len, 256), 256, 0, st>>>(y, bias, len, rows);
    return RTC_LAUNCHED("k_add_bias");
}

int rtc_add(float *h, const float *d, int64_t len, cudaStream_t st, char *err, size_t err_len)
{
    k_add<<<(unsigned)blocks_for(len, 256), 256, 0, st>>>(h, d, len);
    return RTC_LAUNCHED("k_add");
}

int rtc_swiglu(float *gate, const float *up, int64_t len, cudaStream_t st, char *err, size_t err_len)
{
    k_swiglu<<<(unsigned)blocks_for(len, 256), 256, 0, st>>>(gate, up, len);
    return RTC_LAUNCHED("k_swiglu");
}

/* ==== RoPE and the KV cache ====
 *
 * Pairs of a head rotate by the angle of their index j < rope_dim / 2: (2j, 2j+1)
 * in GGUF's interleaved order, (j, j + rope_dim/2) for NeoX-order models, as in
 * runtime/forward.c. A token's pairs and cache values are spread over a row of
 * blocks (blockIdx.y): one block per token left a 7B layer's RoPE 12 us of an
 * H200's time, a chain of 8-16 dependent loads per thread.
 */
__device__ __forceinline__ void rope_pair(float *x, int j, int half, int neox, float c, float s)
{
    int a = neox ? j : 2 * j, b = neox ? j + half : 2 * j + 1;
    float x0 = x[a], x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
}

__global__ void k_rope_store(rtc_attn_shape a, float *__restrict__ q, const float *__restrict__ k,
                             const float *__restrict__ v, __half *__restrict__ kc, __half *__restrict__ vc, int pos)
{
    int i = blockIdx.x, p = pos + i, half = a.rope_dim / 2;
    int first_u = blockIdx.y * blockDim.x + threadIdx.x, stride = gridDim.y * blockDim.x;
    const float *cs = a.cos + (int64_t)p * half, *sn = a.sin + (int64_t)p * half;
    float *qi = q + (int64_t)i * a.q_dim;
    for (int u = first_u; u < a.n_heads * half; u += stride) {
        int h = u / half, j = u % half;
        rope_pair(qi + h * a.head_dim, j, half, a.neox, cs[j], sn[j]);
    }
    /* k: rotate the pair in registers and store both into the cache; the other
     * values of k and all of v are copied. */
    const float *ki = k + (int64_t)i * a.kv_dim, *vi = v + (int64_t)i * a.kv_dim;
    __half *kr = kc + (int64_t)p * a.kv_dim, *vr = vc + (int64_t)p * a.kv_dim;
    for (int d = first_u; d < a.kv_dim; d += stride) {
        int h = d / a.head_dim, e = d % a.head_dim;
        float val = ki[d];
        if (e < a.rope_dim) {
            int j = a.neox ? e % half : e / 2, first = a.neox ? e < half : e % 2 == 0;
            int other = a.neox ? (first ? e + half : e - half) : (first ? e + 1 : e - 1);
            float o = ki[h * a.head_dim + other];
            val = first ? val * cs[j] - o * sn[j] : o * sn[j] + val * cs[j];
        }
        kr[d] = __float2half_rn(val);
        vr[d] = __float2half_rn(vi[d]);
    }
}

int rtc_rope_store(const rtc_attn_shape *a, float *q, const float *k, const float *v, __half *kc, __half *vc, int n,
                   int pos, cudaStream_t st, char *err, size_t err_len)
{
    int work = a->n_heads * (a->rope_dim / 2) > a->kv_dim ? a->n_heads * (a->rope_dim / 2) : a->kv_dim;
    dim3 grid((unsigned)n, (unsigned)blocks_for(work, 256));
    k_rope_store<<<grid, 256, 0, st>>>(*a, q, k, v, kc, vc, pos);
    return RTC_LAUNCHED("k_rope_store");
}

/* ==== Attention ====
 *
 * One block per (head, query): scores of the T = pos + i + 1 visible keys in
 * shared memory (a warp per key, lanes along head_dim), softmax, then each thread
 * sums p_t v_t over t for its output dimensions.
 */
#define ATT_THREADS 128

static size_t att_smem(const rtc_attn_shape *a) { return ((size_t)a->max_ctx + (size_t)a->head_dim) * sizeof(float); }

__global__ void __launch_bounds__(ATT_THREADS)
k_attention(rtc_attn_shape a, const float *__restrict__ q, const __half *__restrict__ kc,
            const __half *__restrict__ vc, float *__restrict__ att, int pos)
{
    extern __shared__ float sm[];
    __shared__ float red[32];
    int h = blockIdx.x, i = blockIdx.y, T = pos + i + 1, hd = a.head_dim;
    int kvh = h / (a.n_heads / a.n_kv), warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
    float *qs = sm, *sc = sm + hd;
    float scale = rsqrtf((float)hd);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = q[(int64_t)i * a.q_dim + h * hd + d] * scale;
    __syncthreads();
    const __half *kh = kc + (int64_t)kvh * hd, *vh = vc + (int64_t)kvh * hd;
    for (int t = warp; t < T; t += nw) {
        const __half *kt = kh + (int64_t)t * a.kv_dim;
        float s = 0.0f;
        for (int d = lane; d < hd; d += 32) s += qs[d] * __half2float(kt[d]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) sc[t] = s;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int t = threadIdx.x; t < T; t += blockDim.x) mx = fmaxf(mx, sc[t]);
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int t = threadIdx.x; t < T; t += blockDim.x) {
        float e = expf(sc[t] - mx);
        sc[t] = e;
        sum += e;
    }
    sum = block_sum(sum, red); /* its barriers also publish sc[] */
    float inv = 1.0f / sum;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.0f;
        for (int t = 0; t < T; t++) o += sc[t] * __half2float(vh[(int64_t)t * a.kv_dim + d]);
        att[(int64_t)i * a.q_dim + h * hd + d] = o * inv;
    }
}

int rtc_attention_prepare(const rtc_attn_shape *a, char *err, size_t err_len)
{
    int dev, optin;
    size_t need = att_smem(a);
    if (RTC_CUDA(cudaGetDevice(&dev))) return -1;
    if (RTC_CUDA(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev))) return -1;
    if (need + 32 * sizeof(float) > (size_t)optin) {
        snprintf(err, err_len, "a context of %d tokens needs %zu bytes of shared memory per attention block; "
                 "this device allows %d", a->max_ctx, need, optin);
        return -1;
    }
    if (RTC_CUDA(cudaFuncSetAttribute(k_attention, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)need))) return -1;
    return 0;
}

int rtc_attention(const rtc_attn_shape *a, const float *q, const __half *kc, const __half *vc, float *att, int n,
                  int pos, cudaStream_t st, char *err, size_t err_len)
{
    dim3 grid((unsigned)a->n_heads, (unsigned)n);
    size_t smem = ((size_t)pos + (size_t)n + (size_t)a->head_dim) * sizeof(float);
    k_attention<<<grid, ATT_THREADS, smem, st>>>(*a, q, kc, vc, att, pos);
    return RTC_LAUNCHED("k_attention");
}
