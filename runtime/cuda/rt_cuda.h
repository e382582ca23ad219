/*
 * runtime/cuda/rt_cuda.h — running a model (runtime/runtime.h's rt_model) on an
 * NVIDIA GPU: upload, forward pass with a KV cache in device memory, perplexity /
 * a runner that rt_eval / rt_generate drive (runtime.h), and kernel-level
 * entry points for tests and benchmarks. C-callable.
 *
 * Built from the .cu files of runtime/cuda/ when nvcc is present; otherwise runtime/cuda/
 * cuda_stub.c provides the same functions, each failing with "bitplan was built
 * without CUDA". On a machine without a GPU or driver every entry fails with a
 * message that says so (rt_cuda_device_info first).
 *
 * Typical use (--device cuda):
 *
 *     rt_eval_params p; rt_eval_params_init(&p);
 *     p.open_runner = rt_cuda_runner_open;       // the model runs on the GPU
 *     if (rt_eval(m, ref, tokens, n, &p, &res, err, sizeof err)) die(err);
 *
 * or, lower level:
 *
 *     rt_cuda_model *g;
 *     rt_cuda_model_new(m, 4096, 512, &g, err, sizeof err);     // max context, max batch
 *     rt_cuda_forward(g, tokens, n, 0, n - 1, 1, logits, err, sizeof err); // last row's logits
 *     rt_cuda_model_free(g);
 *
 * Weights: every rt_linear must have exactly one of `dense` (uploaded as fp32,
 * products by cublasSgemm) or `packed` (uploaded in the packed layout, tiles
 * repacked once for coalesced reads: runtime/cuda/decode.cuh); a packed tensor in
 * one of the 32-wide ggml types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: layout.h) runs in
 * the same kernels, with its center as zero and Q4_1's and Q5_1's mins. A packed
 * tensor whose option rotates its inputs (layout.h, "Input rotations") holds W R:
 * its products first rotate the activations, x' = R^T x, on the device (the same
 * floats as lay_rot_apply), then run as any other's; one with input scales (layout.h,
 * "Activation-aware input scales") holds W / m, and its products first multiply the
 * activations by m (the same floats as lay_xscale_mul). Packed products of up to 16
 * activation rows run the matrix-vector kernel with fp32 activations;
 * larger batches dequantize the tensor to fp16 in slabs of rows (at most 16M weights,
 * 32 MiB of scratch) and call cublasGemmEx on each (fp16 inputs, fp32 accumulation). Norm weights and biases are fp32; the KV cache is fp16. The
 * embedding is looked up on the host (rt_linear get_row, which gives W's rows of a
 * rotated or input-scaled tensor too) and copied up.
 */
#ifndef BITPLAN_RT_CUDA_H
#define BITPLAN_RT_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "runtime/runtime.h"

/* ==== Device ==== */

/* One line describing device 0 ("NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.1 GiB
 * (78.6 free), driver 13.0, runtime 13.0"). Fails with a clear message when there
 * is no device or no driver, or when built without CUDA. */
int rt_cuda_device_info(char *out, size_t cap, char *err, size_t err_len);

/* Free and total memory of device 0 (cudaMemGetInfo). */
int rt_cuda_mem_info(size_t *free_bytes, size_t *total_bytes, char *err, size_t err_len);

/* ==== Model ==== */

typedef struct rt_cuda_model rt_cuda_model;

/* Uploads m for sequences of up to max_ctx tokens, run in batches of up to
 * max_batch tokens. Fails with a message for a layer without weights, an invalid
 * packed tensor, an unsupported configuration, or too little device memory (naming
 * how much was asked for and how much was free). m must outlive the result (the
 * embedding rows are read from it). */
int rt_cuda_model_new(const rt_model *m, int max_ctx, int max_batch, rt_cuda_model **out, char *err, size_t err_len);
void rt_cuda_model_free(rt_cuda_model *g);

/* Bytes of device memory this model holds: weights, KV cache, scratch (the sum of
 * its cudaMalloc blocks, one slab for the weights; the CUDA context, cuBLAS's
 * workspace and the driver's rounding of each block are not counted). */
int64_t rt_cuda_model_device_bytes(const rt_cuda_model *g);

/* Forward of n tokens at positions pos..pos+n-1 (the cache holds 0..pos-1).
 * logits[n_logits][vocab] receives the logits of batch rows first..first+n_logits-1
 * (host memory); n_logits == 0 (logits may be NULL) skips the head. Requires
 * 1 <= n <= max_batch, pos + n <= max_ctx, 0 <= first, first + n_logits <= n.
 * Synchronous: returns when the logits are on the host. */
int rt_cuda_forward(rt_cuda_model *g, const int32_t *tokens, int n, int pos, int first, int n_logits,
                    float *logits, char *err, size_t err_len);

/* ==== Evaluation and generation ==== */

/* An rt_runner (runtime.h) over the GPU: set rt_eval_params.open_runner or
 * rt_gen_params.open_runner to this, and rt_eval / rt_generate run the model on the
 * GPU with the same procedure and sampler as on the CPU (a reference model still
 * runs on the CPU). */
int rt_cuda_runner_open(const rt_model *m, int max_ctx, int max_batch, rt_runner **out, char *err, size_t err_len);

/* ==== Kernel-level entry points (tests, benchmarks) ==== */

typedef enum {
    RT_CUDA_PATH_AUTO = 0,    /* matrix-vector up to 16 rows, else dequantize + cuBLAS */
    RT_CUDA_PATH_MATVEC = 1,  /* the matrix-vector kernel, any n (4 rows per launch) */
    RT_CUDA_PATH_GEMM = 2,    /* dequantize to fp16 + cublasGemmEx */
} rt_cuda_path;

/* y[n][rows] = x[n][cols] W^T for one packed tensor, host arrays in and out
 * (uploads, runs once, frees). */
int rt_cuda_matvec_packed(const lay_packed *p, const float *x_host, int n, float *y_host, rt_cuda_path path,
                          char *err, size_t err_len);

/* y[n][cols] = x[n][cols] with each row rotated, x' = R^T x, in blocks of rot (64
 * or 128, dividing cols) with the signs of seed: the kernel the packed products of
 * a rotated tensor run first, host arrays in and out. Bit for bit lay_rot_apply. */
int rt_cuda_rotate(int rot, uint32_t seed, const float *x_host, int n, int64_t cols, float *y_host, char *err,
                   size_t err_len);

/* y[n][cols] = x[n][cols] with each row scaled, x'_j = x_j * m_j, m[cols] the input
 * multipliers (fp16 bits): the kernel the packed products of a tensor with input
 * scales run first, host arrays in and out. Bit for bit lay_xscale_mul. */
int rt_cuda_xscale(const uint16_t *m, const float *x_host, int n, int64_t cols, float *y_host, char *err,
                   size_t err_len);

/* The packed matrix-vector product's speed: `copies` uploads of p (so that a pass
 * over them leaves the L2 cache), each product timed with device events over
 * `passes` passes (median), and in the same call a device-to-device copy of the
 * same number of bytes. */
typedef struct {
    double packed_bytes;      /* values + scales + zeros + mins of one copy */
    double seconds;           /* median seconds per product (input transform if any, gather, kernel) */
    double gbps;              /* packed_bytes / seconds / 1e9 */
    double copy_gbps;         /* cudaMemcpy D2D: (bytes read + bytes written) / s / 1e9 */
    int copies;
} rt_cuda_bench;

int rt_cuda_bench_matvec(const lay_packed *p, int batch, int copies, int passes, rt_cuda_bench *out, char *err,
                         size_t err_len);

#ifdef __cplusplus
}
#endif

#endif
