/*
 * runtime/cuda/cuda_stub.c — the CUDA runtime's API (rt_cuda.h) for builds without
 * nvcc (or with NO_CUDA=1, as the sanitizer build): every entry fails with
 * "bitplan was built without CUDA", so that `--device cuda` says why it cannot run
 * and the tests can skip.
 *
 * What it must never do: pretend to succeed.
 */
#include <stdio.h>
#include <string.h>

#include "runtime/cuda/rt_cuda.h"

#define NO_CUDA_MSG "bitplan was built without CUDA (no nvcc at build time, or NO_CUDA=1)"

static int no_cuda(char *err, size_t err_len)
{
    if (err && err_len) snprintf(err, err_len, "%s", NO_CUDA_MSG);
    return -1;
}

int rt_cuda_device_info(char *out, size_t cap, char *err, size_t err_len)
{
    if (out && cap) out[0] = '\0';
    return no_cuda(err, err_len);
}

int rt_cuda_mem_info(size_t *free_bytes, size_t *total_bytes, char *err, size_t err_len)
{
    *free_bytes = *total_bytes = 0;
    return no_cuda(err, err_len);
}

int rt_cuda_model_new(const rt_model *m, int max_ctx, int max_batch, rt_cuda_model **out, char *err, size_t err_len)
{
    (void)m, (void)max_ctx, (void)max_batch;
    *out = NULL;
    return no_cuda(err, err_len);
}

void rt_cuda_model_free(rt_cuda_model *g) { (void)g; }

int64_t rt_cuda_model_device_bytes(const rt_cuda_model *g)
{
    (void)g;
    return 0;
}

int rt_cuda_forward(rt_cuda_model *g, const int32_t *tokens, int n, int pos, int first, int n_logits, float *logits,
                    char *err, size_t err_len)
{
    (void)g, (void)tokens, (void)n, (void)pos, (void)first, (void)n_logits, (void)logits;
    return no_cuda(err, err_len);
}

int rt_cuda_runner_open(const rt_model *m, int max_ctx, int max_batch, rt_runner **out, char *err, size_t err_len)
{
    (void)m, (void)max_ctx, (void)max_batch;
    *out = NULL;
    return no_cuda(err, err_len);
}

int rt_cuda_matvec_packed(const lay_packed *p, const float *x_host, int n, float *y_host, rt_cuda_path path,
                          char *err, size_t err_len)
{
    (void)p, (void)x_host, (void)n, (void)y_host, (void)path;
    return no_cuda(err, err_len);
}

int rt_cuda_rotate(int rot, uint32_t seed, const float *x_host, int n, int64_t cols, float *y_host, char *err,
                   size_t err_len)
{
    (void)rot, (void)seed, (void)x_host, (void)n, (void)cols, (void)y_host;
    return no_cuda(err, err_len);
}

int rt_cuda_xscale(const uint16_t *m, const float *x_host, int n, int64_t cols, float *y_host, char *err,
                   size_t err_len)
{
    (void)m, (void)x_host, (void)n, (void)cols, (void)y_host;
    return no_cuda(err, err_len);
}

int rt_cuda_bench_matvec(const lay_packed *p, int batch, int copies, int passes, rt_cuda_bench *out, char *err,
                         size_t err_len)
{
    (void)p, (void)batch, (void)copies, (void)passes;
    memset(out, 0, sizeof *out);
    return no_cuda(err, err_len);
}
