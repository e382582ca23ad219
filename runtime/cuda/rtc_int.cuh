/*
 * runtime/cuda/rtc_int.cuh — internals shared by the CUDA runtime's .cu files:
 * checked CUDA and cuBLAS calls, tracked device allocations, the device form of a
 * linear layer, and the host-side launchers of the kernels (runtime/cuda/kernels.cu).
 *
 * Every CUDA or cuBLAS call goes through RTC_CUDA / RTC_BLAS, which turn a failure
 * into a message naming the call, the error and file:line, and return -1; every
 * kernel launch is followed by RTC_LAUNCHED. Functions that can fail take
 * (char *err, size_t err_len) last and return 0 or -1.
 *
 * What it must never do: be included from C (it is C++/CUDA), or hide an error.
 */
#ifndef BITPLAN_RUNTIME_CUDA_RTC_INT_CUH
#define BITPLAN_RUNTIME_CUDA_RTC_INT_CUH

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>

#include "runtime/cuda/decode.cuh"

/* ==== Checked calls ==== */

int rtc_cuda_fail(cudaError_t e, const char *call, const char *file, int line, char *err, size_t err_len);
int rtc_blas_fail(cublasStatus_t s, const char *call, const char *file, int line, char *err, size_t err_len);

#define RTC_CUDA(call)                                                                     \
    __extension__({                                                                        \
        cudaError_t c_ = (call);                                                           \
        c_ == cudaSuccess ? 0 : rtc_cuda_fail(c_, #call, __FILE__, __LINE__, err, err_len); \
    })
#define RTC_BLAS(call)                                                                     \
    __extension__({                                                                        \
        cublasStatus_t s_ = (call);                                                        \
        s_ == CUBLAS_STATUS_SUCCESS ? 0 : rtc_blas_fail(s_, #call, __FILE__, __LINE__, err, err_len); \
    })
/* After a kernel launch: the launch error (bad configuration, no kernel image). */
#define RTC_LAUNCHED(name)                                                                 \
    __extension__({                                                                        \
        cudaError_t e_ = cudaGetLastError();                                               \
        e_ == cudaSuccess ? 0 : rtc_cuda_fail(e_, "launch of " name, __FILE__, __LINE__, err, err_len); \
    })

/* ==== Tracked device memory ==== */

/* Every device allocation of one owner, freed together. cudaMalloc rounds each
 * large block up to the driver's page (2 MiB), which at one block per array cost a
 * 7B model about 200 MiB that no memory model sees; so an owner that knows its
 * total asks for one slab (rtc_mem_slab) and its arrays are carved from it. */
typedef struct {
    void **ptr;         /* the cudaMalloc'd blocks */
    int n, cap;
    int64_t held;       /* sum of the blocks' sizes */
    char *slab;         /* the block arrays are carved from (NULL: none) */
    size_t slab_size, slab_used;
} rtc_mem;

/* Bytes an array of `bytes` takes in a slab: aligned to 256 (and, under
 * AddressSanitizer, followed by a poisoned gap, so that an overrun is caught). */
size_t rtc_span(size_t bytes);
/* One block of `bytes` from which the following rtc_alloc calls are carved while
 * they fit (the rest get their own blocks). */
int rtc_mem_slab(rtc_mem *m, size_t bytes, const char *what, char *err, size_t err_len);
/* `bytes` for `what`, from the slab or a block of its own; out of memory is a
 * message with the size asked for and the free/total figures of cudaMemGetInfo.
 * bytes == 0 gives NULL. */
int rtc_alloc(rtc_mem *m, void **p, size_t bytes, const char *what, char *err, size_t err_len);
/* rtc_alloc and a host-to-device copy of src. */
int rtc_upload(rtc_mem *m, void **p, const void *src, size_t bytes, const char *what, char *err, size_t err_len);
void rtc_mem_free(rtc_mem *m);

/* ==== A linear layer on the device ==== */

#define RTC_MV_MAX_NB 4        /* activation rows per matrix-vector launch */
#define RTC_MV_MAX_BATCH 16    /* batches up to this run as matrix-vector products */
#define RTC_DQ_SLAB (16 << 20) /* weights per dequantized slab of the prompt path (32 MiB) */

typedef struct {
    int64_t rows, cols;
    int packed;                 /* 1: packed, 0: dense fp32 */
    /* packed */
    rtc_geom g;
    const uint32_t *values;     /* [rows][row_words], tiles repacked (decode.cuh) */
    const __half *scales;       /* [rows][ng] */
    const uint8_t *zeros;       /* [rows][ng], NULL for symmetric and ggml types */
    const __half *mins;         /* [rows][ng] for Q4_1 and Q5_1, else NULL */
    const int32_t *xmap;        /* [cols] interleaved position -> original column */
    const int32_t *perm;        /* [cols] stored column -> original column, NULL: the identity (ggml types) */
    int rot;                    /* opt.rot: the values hold W R (layout.h, "Input rotations"), else 0 */
    uint32_t rot_seed;          /* the rotation's seed (its signs), 0 unless rot */
    const float *rsign;         /* [cols] the rotation's signs, +1 or -1 (lay_rot_sign), NULL unless rot */
    const float *xmul;          /* opt.awq: [cols] the input multipliers m as floats (the values hold W / m;
                                   layout.h, "Activation-aware input scales"), else NULL */
    /* dense */
    const float *w;             /* [rows][cols] */
} rtc_linear;

/* Scratch a product needs, sized by the caller for its largest layer and batch. */
typedef struct {
    float *xi;                  /* [xi_rows][max_cols] interleaved activations */
    int xi_rows;
    __half *xh;                 /* [max_batch][max_cols] fp16 activations, stored order (prompt path) */
    __half *wd;                 /* a slab of dequantized rows (prompt path): wd_elems / cols rows */
    int64_t xh_elems, wd_elems; /* capacities (0: no prompt path) */
    float *xr;                  /* [max_batch][cols of the widest layer that transforms its inputs]
                                   x' = R^T x or x * m (either path) */
    int64_t xr_elems;           /* its capacity (0: no layer rotates or scales its inputs) */
} rtc_scratch;

typedef enum { RTC_PATH_AUTO = 0, RTC_PATH_MATVEC = 1, RTC_PATH_GEMM = 2 } rtc_path;

/* Uploads one packed tensor (repacked tiles, scales, zeros, mins, xmap, perm, and the
 * rotation's signs if it rotates or the input multipliers if it scales its inputs).
 * Checks the option, the arrays it needs and every permutation entry first. */
int rtc_linear_upload_packed(rtc_mem *m, const lay_packed *p, rtc_linear *out, char *err, size_t err_len);
/* The signs of the rotation of seed over cols columns, as floats (+1 or -1). */
int rtc_upload_signs(rtc_mem *m, uint32_t seed, int64_t cols, const float **out, char *err, size_t err_len);
/* The input multipliers xscale[cols] (fp16 bits) as floats (lay_f16_to_f32). */
int rtc_upload_xmul(rtc_mem *m, const uint16_t *xscale, int64_t cols, const float **out, char *err, size_t err_len);
/* The slab bytes (rtc_span) rtc_linear_upload_packed takes for p. */
size_t rtc_packed_device_bytes(const lay_packed *p);
int rtc_linear_upload_dense(rtc_mem *m, const float *w, int64_t rows, int64_t cols, rtc_linear *out,
                            char *err, size_t err_len);

/* y[n][rows] = x[n][cols] W^T on stream st; x, y on the device. Batches up to
 * RTC_MV_MAX_BATCH use the matrix-vector kernel (path AUTO), larger ones the
 * dequantize + cublasGemmEx path. A tensor that rotates (rot) holds W' = W R: its
 * product is x' W'^T with x' = R^T x, rotated into s->xr first (rtc_rotate); one
 * with input scales (xmul) holds W' = W / m, and x' = x * m goes into s->xr first
 * (rtc_xscale). */
int rtc_linear_forward(const rtc_linear *l, const float *x, float *y, int n, rtc_path path, const rtc_scratch *s,
                       cublasHandle_t blas, cudaStream_t st, int n_sm, char *err, size_t err_len);
/* The two halves of rtc_linear_forward for a layer that rotates or scales its
 * inputs: s->xr = x' of the n rows, then the product given x' (any layer: x as it
 * is for the others). Layers that read one input and rotate it alike rotate it
 * once with them (model.cu). */
int rtc_linear_transform(const rtc_linear *l, const float *x, int n, const rtc_scratch *s, cudaStream_t st, char *err,
                         size_t err_len);
int rtc_linear_product(const rtc_linear *l, const float *x, float *y, int n, rtc_path path, const rtc_scratch *s,
                       cublasHandle_t blas, cudaStream_t st, int n_sm, char *err, size_t err_len);
/* out[n][cols] = x' = R^T x per row, the rotation in blocks of rot (64 or 128; cols a
 * multiple) with signs sign[cols]: lay_rot_apply's floats, bit for bit. */
int rtc_rotate(int rot, const float *sign, const float *x, float *out, int n, int64_t cols, cudaStream_t st,
               char *err, size_t err_len);
/* out[n][cols] = x' = x * m per row, m[cols] the multipliers as floats: lay_xscale_mul's
 * floats, bit for bit. */
int rtc_xscale(const float *m, const float *x, float *out, int n, int64_t cols, cudaStream_t st, char *err,
               size_t err_len);

/* ==== Launchers of the element-wise and attention kernels (kernels.cu) ==== */

int rtc_rmsnorm(const float *x, const float *w, float *out, int n, int dim, float eps, cudaStream_t st,
                char *err, size_t err_len);
int rtc_add_bias(float *y, const float *bias, int n, int rows, cudaStream_t st, char *err, size_t err_len);
int rtc_add(float *h, const float *d, int64_t len, cudaStream_t st, char *err, size_t err_len);
int rtc_swiglu(float *gate, const float *up, int64_t len, cudaStream_t st, char *err, size_t err_len);

typedef struct {
    int n_heads, n_kv, head_dim, rope_dim, neox;
    int q_dim, kv_dim;
    int max_ctx;
    const float *cos, *sin;     /* [max_ctx][rope_dim / 2] */
} rtc_attn_shape;

/* RoPE on q[n][q_dim] in place and on k[n][kv_dim]; k and v then go to the cache
 * rows pos..pos+n-1 (fp16, [max_ctx][kv_dim] for this layer). */
int rtc_rope_store(const rtc_attn_shape *a, float *q, const float *k, const float *v, __half *kc, __half *vc,
                   int n, int pos, cudaStream_t st, char *err, size_t err_len);
/* att[n][q_dim]: causal grouped-query attention of query i (position pos + i) over
 * cache rows 0..pos+i. */
int rtc_attention(const rtc_attn_shape *a, const float *q, const __half *kc, const __half *vc, float *att, int n,
                  int pos, cudaStream_t st, char *err, size_t err_len);
/* Raises the attention kernel's shared-memory limit for max_ctx (once per model). */
int rtc_attention_prepare(const rtc_attn_shape *a, char *err, size_t err_len);

#endif
