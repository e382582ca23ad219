/*
 * allocate/budget.c — what a plan costs: the damage each option is charged with,
 * the model's unquantized parameters, and the VRAM memory model. Arithmetic on
 * counts only; never prints, never touches files.
 */
#include "allocate.h"
#include "util/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ==== Damage ==== */

/* Why weight by size: rel_err is a ratio, tr(dW H dW^T) / tr(W H W^T), that does not
 * grow with the tensor. Weighting it by the tensor's share of the weights makes the
 * objective (divided by the tensor count) the weight-averaged relative error, so
 * splitting a matrix into two halves with the same error leaves it unchanged, and the
 * optimum equalizes d(rel_err)/d(bpw) across tensors: bits go where a bit per weight
 * buys the most relative error. Unweighted (each tensor counted once, as ExLlamaV2
 * counts its per-module errors) favours small tensors, which are cheap to upgrade. */
double alloc_damage_rel_err(double rel_err, int64_t n_weights, double mean_weights)
{
    return mean_weights > 0 ? rel_err * (double)n_weights / mean_weights : rel_err;
}

/* The KL probe measured kld with the tensor alone quantized at the probe option, whose
 * error was probe_rel_err; to first order KL grows in proportion to the output error. */
double alloc_damage_kld(double rel_err, double probe_kld, double probe_rel_err)
{
    return probe_rel_err > 0 ? probe_kld * rel_err / probe_rel_err : 0;
}

/* ==== Model shape from config_json ==== */

/* A number member; true/false read as 1/0. -1 when absent or of another type. */
static int json_number(const util_json *o, const char *key, double *v)
{
    const util_json *x = util_json_get(o, key);
    if (x && x->type == UTIL_JSON_NUM) { *v = x->num; return 0; }
    if (x && x->type == UTIL_JSON_BOOL) { *v = x->boolean; return 0; }
    return -1;
}

int alloc_shape_from_json(const char *json, alloc_shape *s, char *err, size_t err_len)
{
    static const char *const need[] = {"n_layers", "dim", "hidden_dim", "n_heads", "vocab_size"};
    double v[5], x;
    char perr[160];
    memset(s, 0, sizeof *s);
    util_json *o = json ? util_json_parse(json, strlen(json), perr, sizeof perr) : NULL;
    if (!o || o->type != UTIL_JSON_OBJ) {
        snprintf(err, err_len, "config_json is not a JSON object%s%s", o || !json ? "" : ": ", o || !json ? "" : perr);
        util_json_free(o);
        return -1;
    }
    for (int i = 0; i < 5; i++)
        if (json_number(o, need[i], &v[i]) || !(v[i] > 0 && v[i] < 1e9)) {
            snprintf(err, err_len, "config_json has no positive \"%s\"", need[i]);
            util_json_free(o);
            return -1;
        }
    s->n_layers = (int)v[0], s->dim = (int)v[1], s->hidden_dim = (int)v[2], s->n_heads = (int)v[3], s->vocab_size = (int)v[4];
    s->n_kv_heads = !json_number(o, "n_kv_heads", &x) && x > 0 && x < 1e9 ? (int)x : s->n_heads;
    s->head_dim = !json_number(o, "head_dim", &x) && x > 0 && x < 1e9 ? (int)x : s->dim / s->n_heads;
    s->tied_embeddings = !json_number(o, "tied_embeddings", &x) && x != 0;
    s->attn_bias = !json_number(o, "attn_bias", &x) && x != 0;
    util_json_free(o);
    return 0;
}

/* ==== Unquantized parameters and file bits ==== */

alloc_unquantized alloc_unquantized_params(const alloc_shape *s, int64_t n_params, int64_t quantized_weights)
{
    alloc_unquantized u = {0, 0};
    int64_t kv_dim = (int64_t)s->n_kv_heads * s->head_dim, q_dim = (int64_t)s->n_heads * s->head_dim;
    /* RMSNorm weights: attention and MLP norm per layer, and the final norm */
    u.n_1d = (int64_t)s->n_layers * 2 * s->dim + s->dim;
    if (s->attn_bias) u.n_1d += (int64_t)s->n_layers * (q_dim + 2 * kv_dim);
    int64_t rest = n_params - quantized_weights - u.n_1d;
    if (n_params <= 0 || rest < 0) /* no usable count: the embedding is what a plan never covers */
        rest = (int64_t)s->vocab_size * s->dim;
    u.n_2d = rest;
    return u;
}

int64_t alloc_file_bits(int64_t plan_bits, alloc_unquantized u) { return plan_bits + 32 * u.n_1d + 16 * u.n_2d; }

/* ==== The VRAM memory model ==== */

void alloc_vram_params_init(alloc_vram_params *v)
{
    v->ctx = 4096;
    v->batch = 1;
    v->kv_bits = 16;
    v->reserve = 256LL << 20;
}

int64_t alloc_kv_bytes(const alloc_shape *s, const alloc_vram_params *v)
{
    return (int64_t)s->n_layers * 2 * s->n_kv_heads * s->head_dim * v->ctx * v->batch * v->kv_bits / 8;
}

int64_t alloc_scratch_bytes(const alloc_shape *s, const alloc_vram_params *v)
{
    int64_t per_seq = 3LL * s->dim + (int64_t)(s->n_heads + 2 * s->n_kv_heads) * s->head_dim +
                      2LL * s->hidden_dim + (int64_t)s->n_heads * v->ctx + s->vocab_size;
    return 4 * v->batch * per_seq;
}

alloc_memory alloc_memory_model(const alloc_shape *s, alloc_unquantized u, const alloc_vram_params *v, int64_t plan_bits)
{
    alloc_memory m;
    /* an untied token embedding stays in host memory: the runtime copies up the rows
     * of the tokens it needs (runtime/cuda/model.cu) */
    int64_t embedding = s->tied_embeddings ? 0 : (int64_t)s->vocab_size * s->dim;
    m.weights = (plan_bits + 7) / 8;
    m.unquantized = 4 * u.n_1d + 2 * (u.n_2d > embedding ? u.n_2d - embedding : 0);
    m.kv_cache = alloc_kv_bytes(s, v);
    m.scratch = alloc_scratch_bytes(s, v);
    m.reserve = v->reserve;
    m.total = m.weights + m.unquantized + m.kv_cache + m.scratch + m.reserve;
    return m;
}

void alloc_memory_json(const alloc_memory *m, const alloc_vram_params *v, int64_t budget, char *buf, size_t len)
{
    /* the top level holds only byte counts (terms, "total", "budget"); settings nest */
    snprintf(buf, len,
             "{\"weights\":%lld,\"unquantized\":%lld,\"kv_cache\":%lld,\"scratch\":%lld,\"reserve\":%lld,"
             "\"total\":%lld,\"budget\":%lld,\"settings\":{\"ctx\":%lld,\"batch\":%lld,\"kv_bits\":%d}}",
             (long long)m->weights, (long long)m->unquantized, (long long)m->kv_cache, (long long)m->scratch,
             (long long)m->reserve, (long long)m->total, (long long)budget, (long long)v->ctx, (long long)v->batch,
             v->kv_bits);
}
