/*
 * runtime/cuda/model.cu — the public side of the CUDA runtime (rt_cuda.h): the
 * device, the upload of an rt_model, the forward pass over a KV cache in device
 * memory, evaluation and generation with the model on the GPU, and the kernel-level
 * entry points for tests and benchmarks.
 *
 * The forward pass is runtime/forward.c's, step for step, on one stream: embedding
 * rows from the host (get_row), then per layer RMSNorm, q/k/v, biases, RoPE and the
 * cache store, attention, o, residual, RMSNorm, gate/up, SwiGLU, down, residual;
 * then the final RMSNorm and the head for the rows asked for.
 *
 * What it must never do: allocate inside rt_cuda_forward (everything is sized in
 * rt_cuda_model_new), leave a CUDA error unchecked, or touch the CPU model's
 * weights other than through the rt_linear fields `dense`/`packed` and get_row.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern "C" {
#include "runtime/rt_int.h"
}
#include "runtime/cuda/rt_cuda.h"
#include "runtime/cuda/rtc_int.cuh"

/* ==== The device ==== */

/* Selects device 0; fails with a clear message when there is none. */
static int device_open(cudaDeviceProp *prop, char *err, size_t err_len)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        (void)cudaGetLastError();
        snprintf(err, err_len, "no CUDA GPU found (%s)",
                 e != cudaSuccess ? cudaGetErrorString(e) : "the driver lists no device");
        return -1;
    }
    if (RTC_CUDA(cudaSetDevice(0))) return -1;
    if (RTC_CUDA(cudaGetDeviceProperties(prop, 0))) return -1;
    if (prop->major < 8) {
        snprintf(err, err_len, "CUDA device %s has compute capability %d.%d; bitplan's kernels need 8.0 or newer",
                 prop->name, prop->major, prop->minor);
        return -1;
    }
    return 0;
}

extern "C" int rt_cuda_device_info(char *out, size_t cap, char *err, size_t err_len)
{
    cudaDeviceProp prop;
    int drv = 0, rt = 0;
    size_t fr = 0, tot = 0;
    if (device_open(&prop, err, err_len)) return -1;
    if (RTC_CUDA(cudaDriverGetVersion(&drv)) || RTC_CUDA(cudaRuntimeGetVersion(&rt))) return -1;
    if (RTC_CUDA(cudaMemGetInfo(&fr, &tot))) return -1;
    snprintf(out, cap, "%s, sm_%d%d, %d SMs, %.1f GiB (%.1f free), L2 %.0f MiB, driver %d.%d, runtime %d.%d",
             prop.name, prop.major, prop.minor, prop.multiProcessorCount, tot / 1073741824.0, fr / 1073741824.0,
             prop.l2CacheSize / 1048576.0, drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
    return 0;
}

extern "C" int rt_cuda_mem_info(size_t *free_bytes, size_t *total_bytes, char *err, size_t err_len)
{
    cudaDeviceProp prop;
    *free_bytes = *total_bytes = 0;
    if (device_open(&prop, err, err_len)) return -1;
    return RTC_CUDA(cudaMemGetInfo(free_bytes, total_bytes));
}

/* ==== The model on the device ==== */

typedef struct {
    float *attn_norm, *ffn_norm;  /* [dim] */
    float *bias[3];               /* q, k, v biases or NULL */
    rtc_linear lin[LAY_HEAD];
} rtc_layer;

/* Shapes: B = max_batch, D = dim, Q = n_heads * head_dim, KV = n_kv_heads * head_dim,
 * H = hidden_dim, V = vocab, L = n_layers, T = max_ctx. */
struct rt_cuda_model {
    const rt_model *m;
    mdl_config cfg;
    int max_ctx, max_batch, n_sm;
    rtc_mem mem;
    cudaStream_t st;
    cublasHandle_t blas;
    rtc_layer *layers;            /* [L] */
    rtc_linear head;
    float *out_norm;              /* [D] */
    rtc_attn_shape att;
    __half *kc, *vc;              /* [L][T][KV] keys after RoPE, values */
    float *x, *xb, *xo;           /* [B][D] residual stream, normalized input, block output */
    float *q, *k, *v, *ao;        /* [B][Q], [B][KV], [B][KV], [B][Q] attention output */
    float *gate, *up;             /* [B][H] */
    float *logits;                /* [B][V] */
    rtc_scratch scr;
    float *h_embed;               /* pinned host [B][D] */
};

static int check_config(const mdl_config *c, int max_ctx, int max_batch, char *err, size_t err_len)
{
    if (c->n_layers <= 0 || c->dim <= 0 || c->hidden_dim <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
        c->n_heads % c->n_kv_heads || c->head_dim <= 0 || c->vocab_size <= 0 || c->rope_dim <= 0 ||
        c->rope_dim > c->head_dim || c->rope_dim % 2) {
        snprintf(err, err_len, "model config is invalid for CUDA (layers %d, dim %d, hidden %d, heads %d/%d, "
                 "head_dim %d, vocab %d, rope_dim %d)", c->n_layers, c->dim, c->hidden_dim, c->n_heads, c->n_kv_heads,
                 c->head_dim, c->vocab_size, c->rope_dim);
        return -1;
    }
    if (c->rope_scaling != MDL_ROPE_NONE && c->rope_scaling != MDL_ROPE_LINEAR) {
        snprintf(err, err_len, "RoPE scaling %d is not supported on CUDA (only none and linear)", (int)c->rope_scaling);
        return -1;
    }
    if (max_ctx < 1 || max_batch < 1) {
        snprintf(err, err_len, "max_ctx %d and max_batch %d must be positive", max_ctx, max_batch);
        return -1;
    }
    return 0;
}

static int upload_held(rt_cuda_model *g, const rt_linear *l, int64_t rows, int64_t cols, const char *name,
                       rtc_linear *out, char *err, size_t err_len);

/* One rt_linear to the device: exactly one of dense / packed (a layer over stored
 * weights is held as fp32 for the upload), with the shape the config says. */
static int upload_linear(rt_cuda_model *g, const rt_linear *l, int64_t rows, int64_t cols, const char *name,
                         rtc_linear *out, char *err, size_t err_len)
{
    char sub[192];
    int rc;
    if (l && !l->dense && !l->packed && l->hold) return upload_held(g, l, rows, cols, name, out, err, err_len);
    if (!l || (!l->dense) == (!l->packed)) {
        snprintf(err, err_len, "%s: the layer must have exactly one of dense or packed weights for CUDA (%s)", name,
                 !l ? "no layer" : l->dense ? "both are set" : "neither is set");
        return -1;
    }
    if (l->rows != rows || l->cols != cols || (l->packed && (l->packed->rows != rows || l->packed->cols != cols))) {
        snprintf(err, err_len, "%s: shape %lldx%lld, expected %lldx%lld", name, (long long)l->rows,
                 (long long)l->cols, (long long)rows, (long long)cols);
        return -1;
    }
    if (l->packed) rc = rtc_linear_upload_packed(&g->mem, l->packed, out, sub, sizeof sub);
    else rc = rtc_linear_upload_dense(&g->mem, l->dense, rows, cols, out, sub, sizeof sub);
    if (rc) snprintf(err, err_len, "%s: %s", name, sub);
    return rc;
}

/* The layer decoded to fp32 in host memory only while it is uploaded. */
static int upload_held(rt_cuda_model *g, const rt_linear *l, int64_t rows, int64_t cols, const char *name,
                       rtc_linear *out, char *err, size_t err_len)
{
    rt_linear *held = (rt_linear *)l; /* holding changes no weight, only where it is decoded */
    if (rt_linear_hold(held)) {
        snprintf(err, err_len, "%s: out of memory decoding the weights for the upload", name);
        return -1;
    }
    int rc = upload_linear(g, held, rows, cols, name, out, err, err_len);
    rt_linear_release(held);
    return rc;
}

static int upload_vec(rt_cuda_model *g, float **dst, const float *src, int64_t n, const char *name, char *err,
                      size_t err_len)
{
    *dst = NULL;
    if (!src) return 0;
    return rtc_upload(&g->mem, (void **)dst, src, (size_t)n * sizeof(float), name, err, err_len);
}

static int upload_layer(rt_cuda_model *g, int l, char *err, size_t err_len)
{
    const mdl_config *c = &g->cfg;
    const rt_layer *ly = &g->m->layers[l];
    rtc_layer *d = &g->layers[l];
    int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    const int64_t shape[LAY_HEAD][2] = {{q, c->dim}, {kv, c->dim}, {kv, c->dim}, {c->dim, q},
                                       {c->hidden_dim, c->dim}, {c->hidden_dim, c->dim}, {c->dim, c->hidden_dim}};
    char name[96];
    for (int k = 0; k < LAY_HEAD; k++) {
        rt_tensor_name(c, l, (lay_class)k, name, sizeof name);
        if (upload_linear(g, ly->lin[k], shape[k][0], shape[k][1], name, &d->lin[k], err, err_len)) return -1;
    }
    if (!ly->attn_norm || !ly->ffn_norm) {
        snprintf(err, err_len, "layer %d has no norm weights", l);
        return -1;
    }
    if (upload_vec(g, &d->attn_norm, ly->attn_norm, c->dim, "attn_norm", err, err_len) ||
        upload_vec(g, &d->ffn_norm, ly->ffn_norm, c->dim, "ffn_norm", err, err_len) ||
        upload_vec(g, &d->bias[0], ly->bias_q, q, "bias_q", err, err_len) ||
        upload_vec(g, &d->bias[1], ly->bias_k, kv, "bias_k", err, err_len) ||
        upload_vec(g, &d->bias[2], ly->bias_v, kv, "bias_v", err, err_len))
        return -1;
    return 0;
}

/* cos/sin of pos * theta^(-2i/rope_dim) / scale, in double, as runtime/state.c. */
static int upload_rope(rt_cuda_model *g, char *err, size_t err_len)
{
    const mdl_config *c = &g->cfg;
    int half = c->rope_dim / 2, rc = -1;
    size_t n = (size_t)g->max_ctx * half;
    double scale = c->rope_scaling == MDL_ROPE_LINEAR ? c->rope_scale : 1.0;
    float *cs = (float *)malloc(n * sizeof *cs), *sn = (float *)malloc(n * sizeof *sn);
    void *dc, *ds;
    if (!cs || !sn) { snprintf(err, err_len, "out of host memory for RoPE tables of %d positions", g->max_ctx); goto done; }
    for (int i = 0; i < half; i++) {
        double freq = pow((double)c->rope_theta, -2.0 * i / c->rope_dim);
        for (int p = 0; p < g->max_ctx; p++) {
            double a = p / scale * freq;
            cs[(size_t)p * half + i] = (float)cos(a);
            sn[(size_t)p * half + i] = (float)sin(a);
        }
    }
    if (rtc_upload(&g->mem, &dc, cs, n * sizeof *cs, "RoPE cos table", err, err_len) ||
        rtc_upload(&g->mem, &ds, sn, n * sizeof *sn, "RoPE sin table", err, err_len))
        goto done;
    g->att.cos = (const float *)dc, g->att.sin = (const float *)ds;
    rc = 0;
done:
    free(cs);
    free(sn);
    return rc;
}

/* ==== One slab for the weights ==== */

static size_t linear_bytes(const rt_linear *l)
{
    if (!l) return 0;
    if (l->packed) return rtc_packed_device_bytes(l->packed);
    return rtc_span((size_t)(l->rows * l->cols) * sizeof(float)); /* dense, or held as fp32 for the upload */
}

static size_t vec_bytes(const float *v, int64_t n) { return v ? rtc_span((size_t)n * sizeof(float)) : 0; }

/* The bytes of what model_setup uploads before the state: every layer's linears,
 * norms and biases, the head, the output norm, the RoPE tables (the same spans the
 * uploads take, so that all of it fits the one slab exactly). */
static size_t weights_bytes(const rt_cuda_model *g)
{
    const mdl_config *c = &g->cfg;
    int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    size_t sum = 0;
    for (int l = 0; l < c->n_layers; l++) {
        const rt_layer *ly = &g->m->layers[l];
        for (int k = 0; k < LAY_HEAD; k++) sum += linear_bytes(ly->lin[k]);
        sum += vec_bytes(ly->attn_norm, c->dim) + vec_bytes(ly->ffn_norm, c->dim) + vec_bytes(ly->bias_q, q) +
               vec_bytes(ly->bias_k, kv) + vec_bytes(ly->bias_v, kv);
    }
    sum += linear_bytes(g->m->head) + vec_bytes(g->m->out_norm, c->dim);
    return sum + 2 * rtc_span((size_t)g->max_ctx * (c->rope_dim / 2) * sizeof(float));
}

/* Largest columns of any linear layer, rows x cols of any packed one, and columns
 * of any that transforms its inputs (rotates or scales them: the scratch s->xr). */
static void linear_extents(const rt_cuda_model *g, int64_t *max_cols, int64_t *max_packed, int64_t *max_xr_cols)
{
    *max_cols = 0, *max_packed = 0, *max_xr_cols = 0;
    for (int l = 0; l <= g->cfg.n_layers; l++)
        for (int k = 0; k < LAY_HEAD; k++) {
            const rtc_linear *x = l < g->cfg.n_layers ? &g->layers[l].lin[k] : &g->head;
            if (x->cols > *max_cols) *max_cols = x->cols;
            if (x->packed && x->rows * x->cols > *max_packed) *max_packed = x->rows * x->cols;
            if ((x->rot || x->xmul) && x->cols > *max_xr_cols) *max_xr_cols = x->cols;
            if (l == g->cfg.n_layers) break;
        }
}

static int alloc_f32(rt_cuda_model *g, float **p, int64_t n, const char *what, char *err, size_t err_len)
{
    return rtc_alloc(&g->mem, (void **)p, (size_t)n * sizeof(float), what, err, err_len);
}

static int alloc_state(rt_cuda_model *g, char *err, size_t err_len)
{
    const mdl_config *c = &g->cfg;
    int64_t B = g->max_batch, D = c->dim, Q = g->att.q_dim, KV = g->att.kv_dim, H = c->hidden_dim;
    int64_t cache = (int64_t)c->n_layers * g->max_ctx * KV, max_cols, max_packed, max_xr_cols;
    linear_extents(g, &max_cols, &max_packed, &max_xr_cols);
    if (rtc_alloc(&g->mem, (void **)&g->kc, (size_t)cache * 2, "the key cache", err, err_len) ||
        rtc_alloc(&g->mem, (void **)&g->vc, (size_t)cache * 2, "the value cache", err, err_len) ||
        RTC_CUDA(cudaMemset(g->kc, 0, (size_t)cache * 2)) || RTC_CUDA(cudaMemset(g->vc, 0, (size_t)cache * 2)) ||
        alloc_f32(g, &g->x, B * D, "activations", err, err_len) || alloc_f32(g, &g->xb, B * D, "activations", err, err_len) ||
        alloc_f32(g, &g->xo, B * D, "activations", err, err_len) || alloc_f32(g, &g->q, B * Q, "queries", err, err_len) ||
        alloc_f32(g, &g->k, B * KV, "keys", err, err_len) || alloc_f32(g, &g->v, B * KV, "values", err, err_len) ||
        alloc_f32(g, &g->ao, B * Q, "attention output", err, err_len) ||
        alloc_f32(g, &g->gate, B * H, "feed-forward activations", err, err_len) ||
        alloc_f32(g, &g->up, B * H, "feed-forward activations", err, err_len) ||
        alloc_f32(g, &g->logits, B * c->vocab_size, "logits", err, err_len))
        return -1;
    g->scr.xi_rows = (int)(B < RTC_MV_MAX_BATCH ? B : RTC_MV_MAX_BATCH);
    if (alloc_f32(g, &g->scr.xi, g->scr.xi_rows * max_cols, "interleaved activations", err, err_len)) return -1;
    g->scr.xr_elems = B * max_xr_cols; /* none without a rotated or input-scaled layer */
    if (alloc_f32(g, &g->scr.xr, g->scr.xr_elems, "transformed activations", err, err_len)) return -1;
    if (B > RTC_MV_MAX_BATCH && max_packed > 0) { /* the prompt path */
        g->scr.xh_elems = B * max_cols;
        g->scr.wd_elems = max_packed < RTC_DQ_SLAB ? max_packed : RTC_DQ_SLAB > max_cols ? RTC_DQ_SLAB : max_cols;
        if (rtc_alloc(&g->mem, (void **)&g->scr.xh, (size_t)g->scr.xh_elems * 2, "fp16 activations", err, err_len) ||
            rtc_alloc(&g->mem, (void **)&g->scr.wd, (size_t)g->scr.wd_elems * 2, "dequantized weights", err, err_len))
            return -1;
    }
    if (RTC_CUDA(cudaMallocHost((void **)&g->h_embed, (size_t)(B * D) * sizeof(float)))) return -1;
    return 0;
}

extern "C" void rt_cuda_model_free(rt_cuda_model *g)
{
    if (!g) return;
    if (g->st) cudaStreamSynchronize(g->st);
    rtc_mem_free(&g->mem);
    if (g->h_embed) cudaFreeHost(g->h_embed);
    if (g->blas) cublasDestroy(g->blas);
    if (g->st) cudaStreamDestroy(g->st);
    free(g->layers);
    free(g);
}

static int model_setup(rt_cuda_model *g, char *err, size_t err_len)
{
    const mdl_config *c = &g->cfg;
    cudaDeviceProp prop;
    if (device_open(&prop, err, err_len)) return -1;
    g->n_sm = prop.multiProcessorCount;
    if (RTC_CUDA(cudaStreamCreateWithFlags(&g->st, cudaStreamNonBlocking))) return -1;
    if (RTC_BLAS(cublasCreate(&g->blas)) || RTC_BLAS(cublasSetStream(g->blas, g->st))) return -1;
    memset(&g->att, 0, sizeof g->att);
    g->att.n_heads = c->n_heads, g->att.n_kv = c->n_kv_heads, g->att.head_dim = c->head_dim;
    g->att.rope_dim = c->rope_dim, g->att.neox = rt_rope_is_neox(c), g->att.max_ctx = g->max_ctx;
    g->att.q_dim = c->n_heads * c->head_dim, g->att.kv_dim = c->n_kv_heads * c->head_dim;
    if (rtc_mem_slab(&g->mem, weights_bytes(g), "the weights", err, err_len)) return -1;
    for (int l = 0; l < c->n_layers; l++)
        if (upload_layer(g, l, err, err_len)) return -1;
    if (!g->m->head || !g->m->embed || !g->m->embed->get_row || !g->m->out_norm) {
        snprintf(err, err_len, "the model has no head, embedding or output norm");
        return -1;
    }
    if (upload_linear(g, g->m->head, c->vocab_size, c->dim, "head", &g->head, err, err_len)) return -1;
    if (upload_vec(g, &g->out_norm, g->m->out_norm, c->dim, "output_norm", err, err_len)) return -1;
    if (upload_rope(g, err, err_len)) return -1;
    if (g->mem.slab_used != g->mem.slab_size) { /* weights_bytes and the uploads disagree: a bug, said as one */
        snprintf(err, err_len, "internal: the weights took %zu bytes of their %zu-byte slab", g->mem.slab_used,
                 g->mem.slab_size);
        return -1;
    }
    if (alloc_state(g, err, err_len)) return -1;
    if (rtc_attention_prepare(&g->att, err, err_len)) return -1;
    /* The uploads and cache clears ran on the legacy default stream, which a
     * non-blocking stream does not wait for (and a pageable cudaMemcpy may return
     * before its DMA lands): finish them before the first forward on g->st. */
    return RTC_CUDA(cudaDeviceSynchronize());
}

extern "C" int rt_cuda_model_new(const rt_model *m, int max_ctx, int max_batch, rt_cuda_model **out, char *err,
                                 size_t err_len)
{
    *out = NULL;
    if (check_config(&m->cfg, max_ctx, max_batch, err, err_len)) return -1;
    rt_cuda_model *g = (rt_cuda_model *)calloc(1, sizeof *g);
    if (!g || !(g->layers = (rtc_layer *)calloc((size_t)m->cfg.n_layers, sizeof *g->layers))) {
        free(g);
        snprintf(err, err_len, "out of host memory for the CUDA model");
        return -1;
    }
    g->m = m;
    g->cfg = m->cfg;
    g->max_ctx = max_ctx;
    g->max_batch = max_batch < max_ctx ? max_batch : max_ctx;
    if (model_setup(g, err, err_len)) {
        rt_cuda_model_free(g);
        return -1;
    }
    *out = g;
    return 0;
}

extern "C" int64_t rt_cuda_model_device_bytes(const rt_cuda_model *g) { return g->mem.held; }

/* ==== Forward ==== */

static int lin(rt_cuda_model *g, const rtc_linear *l, const float *x, float *y, int n, char *err, size_t err_len)
{
    return rtc_linear_forward(l, x, y, n, RTC_PATH_AUTO, &g->scr, g->blas, g->st, g->n_sm, err, err_len);
}

static int same_rotation(const rtc_linear *a, const rtc_linear *b)
{
    return a->packed && b->packed && a->rot && a->rot == b->rot && a->rot_seed == b->rot_seed && a->cols == b->cols;
}

/* y[i] = the product of ls[i] with x, for the count layers that read x (q, k, v, or
 * gate, up). Those that rotate it alike as the first rotating one take x rotated
 * once into the scratch's xr, and run first: the others' own transforms reuse that
 * scratch. */
static int lins_of_one_input(rt_cuda_model *g, const rtc_linear *ls, float *const *y, int count, const float *x, int n,
                             char *err, size_t err_len)
{
    const rtc_linear *lead = NULL;
    int alike = 0;
    for (int i = 0; i < count; i++) {
        if (ls[i].packed && ls[i].rot && !lead) lead = &ls[i];
        alike += lead && same_rotation(&ls[i], lead);
    }
    int shared = alike > 1;
    if (shared && rtc_linear_transform(lead, x, n, &g->scr, g->st, err, err_len)) return -1;
    for (int i = 0; shared && i < count; i++)
        if (same_rotation(&ls[i], lead) &&
            rtc_linear_product(&ls[i], g->scr.xr, y[i], n, RTC_PATH_AUTO, &g->scr, g->blas, g->st, g->n_sm, err,
                               err_len))
            return -1;
    for (int i = 0; i < count; i++)
        if (!(shared && same_rotation(&ls[i], lead)) && lin(g, &ls[i], x, y[i], n, err, err_len)) return -1;
    return 0;
}

static int attention_block(rt_cuda_model *g, int l, int n, int pos, char *err, size_t err_len)
{
    const mdl_config *c = &g->cfg;
    const rtc_layer *d = &g->layers[l];
    size_t off = (size_t)l * g->max_ctx * g->att.kv_dim;
    cudaStream_t st = g->st;
    float *const qkv[] = {g->q, g->k, g->v};
    if (rtc_rmsnorm(g->x, d->attn_norm, g->xb, n, c->dim, c->norm_eps, st, err, err_len) ||
        lins_of_one_input(g, &d->lin[LAY_Q], qkv, 3, g->xb, n, err, err_len))
        return -1;
    if ((d->bias[0] && rtc_add_bias(g->q, d->bias[0], n, g->att.q_dim, st, err, err_len)) ||
        (d->bias[1] && rtc_add_bias(g->k, d->bias[1], n, g->att.kv_dim, st, err, err_len)) ||
        (d->bias[2] && rtc_add_bias(g->v, d->bias[2], n, g->att.kv_dim, st, err, err_len)))
        return -1;
    if (rtc_rope_store(&g->att, g->q, g->k, g->v, g->kc + off, g->vc + off, n, pos, st, err, err_len) ||
        rtc_attention(&g->att, g->q, g->kc + off, g->vc + off, g->ao, n, pos, st, err, err_len) ||
        lin(g, &d->lin[LAY_O], g->ao, g->xo, n, err, err_len))
        return -1;
    return rtc_add(g->x, g->xo, (int64_t)n * c->dim, st, err, err_len);
}

static int mlp_block(rt_cuda_model *g, int l, int n, char *err, size_t err_len)
{
    const mdl_config *c = &g->cfg;
    const rtc_layer *d = &g->layers[l];
    cudaStream_t st = g->st;
    float *const gate_up[] = {g->gate, g->up};
    if (rtc_rmsnorm(g->x, d->ffn_norm, g->xb, n, c->dim, c->norm_eps, st, err, err_len) ||
        lins_of_one_input(g, &d->lin[LAY_GATE], gate_up, 2, g->xb, n, err, err_len) ||
        rtc_swiglu(g->gate, g->up, (int64_t)n * c->hidden_dim, st, err, err_len) ||
        lin(g, &d->lin[LAY_DOWN], g->gate, g->xo, n, err, err_len))
        return -1;
    return rtc_add(g->x, g->xo, (int64_t)n * c->dim, st, err, err_len);
}

static int check_forward(const rt_cuda_model *g, const int32_t *tokens, int n, int pos, int first, int n_logits,
                         const float *logits, char *err, size_t err_len)
{
    if (n < 1 || n > g->max_batch || pos < 0 || pos + n > g->max_ctx) {
        snprintf(err, err_len, "%d tokens at position %d do not fit (max batch %d, max context %d)", n, pos,
                 g->max_batch, g->max_ctx);
        return -1;
    }
    if (n_logits < 0 || first < 0 || first + n_logits > n || (n_logits && !logits)) {
        snprintf(err, err_len, "logits rows %d..%d are outside the batch of %d", first, first + n_logits - 1, n);
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= g->cfg.vocab_size) {
            snprintf(err, err_len, "token %d has id %d, outside the vocabulary of %d", i, tokens[i], g->cfg.vocab_size);
            return -1;
        }
    return 0;
}

extern "C" int rt_cuda_forward(rt_cuda_model *g, const int32_t *tokens, int n, int pos, int first, int n_logits,
                               float *logits, char *err, size_t err_len)
{
    const mdl_config *c = &g->cfg;
    const rt_linear *emb = g->m->embed;
    if (check_forward(g, tokens, n, pos, first, n_logits, logits, err, err_len)) return -1;
    for (int i = 0; i < n; i++) emb->get_row(emb, tokens[i], g->h_embed + (size_t)i * c->dim);
    if (RTC_CUDA(cudaMemcpyAsync(g->x, g->h_embed, (size_t)n * c->dim * sizeof(float), cudaMemcpyHostToDevice, g->st)))
        return -1;
    for (int l = 0; l < c->n_layers; l++)
        if (attention_block(g, l, n, pos, err, err_len) || mlp_block(g, l, n, err, err_len)) return -1;
    if (n_logits > 0) {
        if (rtc_rmsnorm(g->x + (size_t)first * c->dim, g->out_norm, g->xb, n_logits, c->dim, c->norm_eps, g->st, err,
                        err_len) ||
            lin(g, &g->head, g->xb, g->logits, n_logits, err, err_len))
            return -1;
        if (RTC_CUDA(cudaMemcpyAsync(logits, g->logits, (size_t)n_logits * c->vocab_size * sizeof(float),
                                     cudaMemcpyDeviceToHost, g->st)))
            return -1;
    }
    return RTC_CUDA(cudaStreamSynchronize(g->st));
}

/* ==== Runner: rt_eval and rt_generate drive the GPU through this ==== */

static int runner_forward(rt_runner *r, const int32_t *tokens, int n, int pos, int first, int n_logits, float *logits,
                          char *err, size_t err_len)
{
    return rt_cuda_forward((rt_cuda_model *)r->impl, tokens, n, pos, first, n_logits, logits, err, err_len);
}

static void runner_destroy(rt_runner *r) { rt_cuda_model_free((rt_cuda_model *)r->impl); }

extern "C" int rt_cuda_runner_open(const rt_model *m, int max_ctx, int max_batch, rt_runner **out, char *err,
                                   size_t err_len)
{
    rt_cuda_model *g;
    *out = NULL;
    if (rt_cuda_model_new(m, max_ctx, max_batch, &g, err, err_len)) return -1;
    rt_runner *r = (rt_runner *)calloc(1, sizeof *r);
    if (!r) {
        rt_cuda_model_free(g);
        snprintf(err, err_len, "out of host memory");
        return -1;
    }
    r->model = m, r->max_ctx = max_ctx, r->max_batch = max_batch;
    r->forward = runner_forward, r->destroy = runner_destroy, r->impl = g;
    *out = r;
    return 0;
}

/* ==== Kernel-level entry points ==== */

/* One packed tensor on the device with the scratch for n activation rows. */
typedef struct {
    rtc_mem mem;
    rtc_linear l;
    rtc_scratch s;
    float *x, *y;
    cublasHandle_t blas;
    int n_sm;
} rtc_single;

static void single_free(rtc_single *t)
{
    rtc_mem_free(&t->mem);
    if (t->blas) cublasDestroy(t->blas);
}

static int single_open(rtc_single *t, const lay_packed *p, int n, int copies, char *err, size_t err_len)
{
    cudaDeviceProp prop;
    memset(t, 0, sizeof *t);
    if (device_open(&prop, err, err_len)) return -1;
    t->n_sm = prop.multiProcessorCount;
    if (RTC_BLAS(cublasCreate(&t->blas))) return -1;
    for (int c = 0; c < copies; c++) /* the last copy is t->l; the others stay allocated in t->mem */
        if (rtc_linear_upload_packed(&t->mem, p, &t->l, err, err_len)) return -1;
    t->s.xi_rows = n;
    /* slabs of a third of the rows: the several-slab path that the largest tensors take */
    t->s.xh_elems = (int64_t)n * p->cols, t->s.wd_elems = (p->rows / 3 + 1) * p->cols;
    t->s.xr_elems = p->opt.rot || p->opt.awq ? (int64_t)n * p->cols : 0;
    if (rtc_alloc(&t->mem, (void **)&t->x, (size_t)(n * p->cols) * 4, "activations", err, err_len) ||
        rtc_alloc(&t->mem, (void **)&t->y, (size_t)(n * p->rows) * 4, "outputs", err, err_len) ||
        rtc_alloc(&t->mem, (void **)&t->s.xi, (size_t)(n * p->cols) * 4, "interleaved activations", err, err_len) ||
        rtc_alloc(&t->mem, (void **)&t->s.xh, (size_t)t->s.xh_elems * 2, "fp16 activations", err, err_len) ||
        rtc_alloc(&t->mem, (void **)&t->s.wd, (size_t)t->s.wd_elems * 2, "dequantized weights", err, err_len) ||
        rtc_alloc(&t->mem, (void **)&t->s.xr, (size_t)t->s.xr_elems * 4, "transformed activations", err, err_len))
        return -1;
    return 0;
}

extern "C" int rt_cuda_matvec_packed(const lay_packed *p, const float *x_host, int n, float *y_host, rt_cuda_path path,
                                     char *err, size_t err_len)
{
    rtc_single t;
    int rc = -1;
    if (n < 1) { snprintf(err, err_len, "n %d is not positive", n); return -1; }
    if (single_open(&t, p, n, 1, err, err_len)) goto done;
    if (RTC_CUDA(cudaMemcpy(t.x, x_host, (size_t)(n * p->cols) * 4, cudaMemcpyHostToDevice))) goto done;
    if (RTC_CUDA(cudaMemset(t.y, 0xFF, (size_t)(n * p->rows) * 4))) goto done; /* NaN: unwritten outputs show */
    if (rtc_linear_forward(&t.l, t.x, t.y, n, (rtc_path)path, &t.s, t.blas, 0, t.n_sm, err, err_len)) goto done;
    if (RTC_CUDA(cudaDeviceSynchronize())) goto done;
    if (RTC_CUDA(cudaMemcpy(y_host, t.y, (size_t)(n * p->rows) * 4, cudaMemcpyDeviceToHost))) goto done;
    rc = 0;
done:
    single_free(&t);
    return rc;
}

/* y = x with each of the n rows through one input transform on the device: a
 * rotation in blocks of rot (m NULL) or input scales m (rot 0), the test entries'
 * shared body. */
static int device_transform(int rot, uint32_t seed, const uint16_t *m, const float *x_host, int n, int64_t cols,
                            float *y_host, char *err, size_t err_len)
{
    cudaDeviceProp prop;
    rtc_mem mem;
    const float *vec;
    void *x, *y;
    size_t bytes = (size_t)n * (size_t)cols * sizeof(float);
    int rc = -1;
    memset(&mem, 0, sizeof mem);
    if (device_open(&prop, err, err_len)) return -1;
    if ((m ? rtc_upload_xmul(&mem, m, cols, &vec, err, err_len) : rtc_upload_signs(&mem, seed, cols, &vec, err, err_len)) ||
        rtc_upload(&mem, &x, x_host, bytes, "activations", err, err_len) ||
        rtc_alloc(&mem, &y, bytes, "transformed activations", err, err_len) ||
        (m ? rtc_xscale(vec, (const float *)x, (float *)y, n, cols, 0, err, err_len)
           : rtc_rotate(rot, vec, (const float *)x, (float *)y, n, cols, 0, err, err_len)) ||
        RTC_CUDA(cudaDeviceSynchronize()) || RTC_CUDA(cudaMemcpy(y_host, y, bytes, cudaMemcpyDeviceToHost)))
        goto done;
    rc = 0;
done:
    rtc_mem_free(&mem);
    return rc;
}

extern "C" int rt_cuda_rotate(int rot, uint32_t seed, const float *x_host, int n, int64_t cols, float *y_host,
                              char *err, size_t err_len)
{
    if ((rot != 64 && rot != 128) || n < 1 || cols < 1 || cols % rot) {
        snprintf(err, err_len, "no rotation in blocks of %d over %d rows of %lld columns", rot, n, (long long)cols);
        return -1;
    }
    return device_transform(rot, seed, NULL, x_host, n, cols, y_host, err, err_len);
}

extern "C" int rt_cuda_xscale(const uint16_t *m, const float *x_host, int n, int64_t cols, float *y_host, char *err,
                              size_t err_len)
{
    if (!m || n < 1 || cols < 1) {
        snprintf(err, err_len, "no input scaling of %d rows of %lld columns%s", n, (long long)cols,
                 m ? "" : " without multipliers");
        return -1;
    }
    return device_transform(0, 0, m, x_host, n, cols, y_host, err, err_len);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median seconds of `passes` timed regions; fn(i) enqueues region i's work. */
template <typename F>
static int time_median(int passes, F fn, double *out, char *err, size_t err_len)
{
    cudaEvent_t e0 = NULL, e1 = NULL;
    double *t = (double *)malloc((size_t)passes * sizeof *t);
    int rc = -1;
    if (!t) { snprintf(err, err_len, "out of host memory"); return -1; }
    if (RTC_CUDA(cudaEventCreate(&e0)) || RTC_CUDA(cudaEventCreate(&e1))) goto done;
    for (int i = 0; i < passes; i++) {
        float ms = 0;
        if (RTC_CUDA(cudaEventRecord(e0, 0)) || fn() || RTC_CUDA(cudaEventRecord(e1, 0)) ||
            RTC_CUDA(cudaEventSynchronize(e1)) || RTC_CUDA(cudaEventElapsedTime(&ms, e0, e1)))
            goto done;
        t[i] = ms * 1e-3;
    }
    qsort(t, (size_t)passes, sizeof *t, cmp_double);
    *out = t[passes / 2];
    rc = 0;
done:
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    free(t);
    return rc;
}

extern "C" int rt_cuda_bench_matvec(const lay_packed *p, int batch, int copies, int passes, rt_cuda_bench *out,
                                    char *err, size_t err_len)
{
    rtc_single t;
    rtc_linear *ls = NULL;
    void *src = NULL, *dst = NULL;
    int rc = -1;
    memset(out, 0, sizeof *out);
    if (batch < 1 || copies < 1 || passes < 1) { snprintf(err, err_len, "batch, copies and passes must be positive"); return -1; }
    lay_cost c = lay_tensor_cost(&p->opt, p->rows, p->cols);
    double bytes = (double)(c.values + c.scales + c.zeros + c.mins), total = bytes * copies;
    if (single_open(&t, p, batch, 0, err, err_len)) goto done;
    if (!(ls = (rtc_linear *)calloc((size_t)copies, sizeof *ls))) { snprintf(err, err_len, "out of host memory"); goto done; }
    for (int i = 0; i < copies; i++)
        if (rtc_linear_upload_packed(&t.mem, p, &ls[i], err, err_len)) goto done;
    {
        float *xh = (float *)malloc((size_t)(batch * p->cols) * 4);
        if (!xh) { snprintf(err, err_len, "out of host memory"); goto done; }
        uint64_t s = 0x9E3779B97F4A7C15ull;
        for (int64_t i = 0; i < batch * p->cols; i++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            xh[i] = (float)(s >> 40) / 16777216.0f * 2.0f - 1.0f;
        }
        int e = RTC_CUDA(cudaMemcpy(t.x, xh, (size_t)(batch * p->cols) * 4, cudaMemcpyHostToDevice));
        free(xh);
        if (e) goto done;
    }
    {
        auto pass = [&]() -> int {
            for (int i = 0; i < copies; i++)
                if (rtc_linear_forward(&ls[i], t.x, t.y, batch, RTC_PATH_MATVEC, &t.s, t.blas, 0, t.n_sm, err, err_len))
                    return -1;
            return 0;
        };
        if (pass() || RTC_CUDA(cudaDeviceSynchronize())) goto done; /* warm-up */
        if (time_median(passes, pass, &out->seconds, err, err_len)) goto done;
        out->seconds /= copies;
    }
    if (rtc_alloc(&t.mem, &src, (size_t)total, "copy source", err, err_len) ||
        rtc_alloc(&t.mem, &dst, (size_t)total, "copy destination", err, err_len) ||
        RTC_CUDA(cudaMemset(src, 0x5A, (size_t)total)))
        goto done;
    {
        double secs;
        auto copy = [&]() -> int { return RTC_CUDA(cudaMemcpyAsync(dst, src, (size_t)total, cudaMemcpyDeviceToDevice, 0)); };
        if (copy() || RTC_CUDA(cudaDeviceSynchronize())) goto done;
        if (time_median(passes, copy, &secs, err, err_len)) goto done;
        out->copy_gbps = 2.0 * total / secs / 1e9;
    }
    out->packed_bytes = bytes;
    out->gbps = bytes / out->seconds / 1e9;
    out->copies = copies;
    rc = 0;
done:
    free(ls);
    single_free(&t);
    return rc;
}
