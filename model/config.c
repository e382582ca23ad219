/*
 * model/config.c — mdl_config from a model's metadata: GGUF keys
 * ("{arch}.block_count", ...) or config.json (flattened as "config.KEY"), for the
 * Llama family (llama, mistral, qwen2; smollm is llama). Then it checks that every
 * tensor the forward pass needs is there with the shape the config implies, and
 * marks the q/k tensors whose rows must be permuted into GGUF's RoPE order.
 *
 * What it must never do: let a config through that would make a later stage index
 * out of bounds (zero or inconsistent sizes, a tensor of the wrong shape).
 */
#include "model_int.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const mdl_model *m;
    const char *prefix; /* "llama." or "config." */
    char *err;
    size_t err_len;
} src;

static int get_int(const src *s, const char *key, int64_t *out)
{
    char k[128];
    snprintf(k, sizeof k, "%s%s", s->prefix, key);
    return mdl_meta_int(s->m, k, out);
}

static int get_num(const src *s, const char *key, double *out)
{
    char k[128];
    snprintf(k, sizeof k, "%s%s", s->prefix, key);
    return mdl_meta_float(s->m, k, out);
}

static const char *get_str(const src *s, const char *key)
{
    char k[128];
    const char *v;
    snprintf(k, sizeof k, "%s%s", s->prefix, key);
    return mdl_meta_str(s->m, k, &v) ? NULL : v;
}

/* An int field: the first of the keys present, else def (def < 0: required). */
static int int_field(const src *s, const char *k1, const char *k2, int64_t def, int *out)
{
    int64_t v;
    if (get_int(s, k1, &v) && (!k2 || get_int(s, k2, &v))) {
        if (def < 0) return mdl_errf(s->err, s->err_len, "%s: missing %s%s", s->m->path, s->prefix, k1);
        v = def;
    }
    if (v < 0 || v > 100000000) return mdl_errf(s->err, s->err_len, "%s: %s%s = %lld is out of range", s->m->path, s->prefix, k1, (long long)v);
    *out = (int)v;
    return 0;
}

static float num_field(const src *s, const char *key, double def)
{
    double v;
    return get_num(s, key, &v) ? (float)def : (float)v;
}

static int known_arch(const char *a, char *out, size_t cap)
{
    static const struct { const char *name, *arch; } archs[] = {
        {"llama", "llama"}, {"mistral", "mistral"}, {"qwen2", "qwen2"}, {"smollm", "llama"},
        {"LlamaForCausalLM", "llama"}, {"MistralForCausalLM", "mistral"}, {"Qwen2ForCausalLM", "qwen2"}};
    for (size_t i = 0; a && i < sizeof archs / sizeof *archs; i++)
        if (!strcmp(a, archs[i].name)) { snprintf(out, cap, "%s", archs[i].arch); return 0; }
    return -1;
}

static const char *const rope_names[] = {"none", "linear", "yarn", "llama3"}; /* by mdl_rope_scaling */

const char *mdl_rope_scaling_name(mdl_rope_scaling s)
{
    return (unsigned)s < sizeof rope_names / sizeof *rope_names ? rope_names[s] : "none";
}

int mdl_rope_scaling_of_name(const char *name, mdl_rope_scaling *out)
{
    for (size_t i = 0; name && i < sizeof rope_names / sizeof *rope_names; i++)
        if (!strcmp(name, rope_names[i])) { *out = (mdl_rope_scaling)i; return 0; }
    return -1;
}

void mdl_config_json(sb_buf *b, const mdl_config *c)
{
    sb_puts(b, "{\"arch\":");
    sb_json_string(b, c->arch);
    sb_puts(b, ",\"name\":");
    sb_json_string(b, c->name);
    sb_printf(b, ",\"n_layers\":%d,\"dim\":%d,\"hidden_dim\":%d,\"n_heads\":%d,\"n_kv_heads\":%d,\"head_dim\":%d,"
                 "\"vocab_size\":%d,\"max_ctx\":%d,\"rope_theta\":%.9g,\"rope_dim\":%d,\"rope_scaling\":\"%s\","
                 "\"rope_scale\":%.9g,\"norm_eps\":%.9g,\"tied_embeddings\":%d,\"attn_bias\":%d}",
              c->n_layers, c->dim, c->hidden_dim, c->n_heads, c->n_kv_heads, c->head_dim, c->vocab_size, c->max_ctx,
              (double)c->rope_theta, c->rope_dim, mdl_rope_scaling_name(c->rope_scaling), (double)c->rope_scale,
              (double)c->norm_eps, c->tied_embeddings, c->attn_bias);
}

/* Hugging Face's rope_scaling.type (or rope_type): "default" is none. */
static mdl_rope_scaling rope_kind(const char *t)
{
    mdl_rope_scaling s;
    if (!t || !strcmp(t, "default")) return MDL_ROPE_NONE;
    return mdl_rope_scaling_of_name(t, &s) ? (mdl_rope_scaling)-1 : s;
}

/* ==== GGUF ==== */

static int from_gguf(mdl_model *m, char *err, size_t err_len)
{
    mdl_config *c = &m->cfg;
    const char *arch, *name, *scaling;
    char prefix[48];
    if (mdl_meta_str(m, "general.architecture", &arch)) return mdl_errf(err, err_len, "%s: missing general.architecture", m->path);
    if (known_arch(arch, c->arch, sizeof c->arch))
        return mdl_errf(err, err_len, "%s: architecture '%s' is not supported (llama, mistral, qwen2)", m->path, arch);
    if (!mdl_meta_str(m, "general.name", &name)) snprintf(c->name, sizeof c->name, "%s", name);
    snprintf(prefix, sizeof prefix, "%.40s.", arch);
    src s = {m, prefix, err, err_len};
    if (int_field(&s, "block_count", NULL, -1, &c->n_layers) || int_field(&s, "embedding_length", NULL, -1, &c->dim) ||
        int_field(&s, "feed_forward_length", NULL, -1, &c->hidden_dim) ||
        int_field(&s, "attention.head_count", NULL, -1, &c->n_heads) ||
        int_field(&s, "attention.head_count_kv", NULL, c->n_heads, &c->n_kv_heads) ||
        int_field(&s, "attention.key_length", NULL, c->n_heads ? c->dim / c->n_heads : 0, &c->head_dim) ||
        int_field(&s, "rope.dimension_count", NULL, c->head_dim, &c->rope_dim) ||
        int_field(&s, "context_length", NULL, 0, &c->max_ctx))
        return -1;
    c->rope_theta = num_field(&s, "rope.freq_base", 10000.0);
    c->norm_eps = num_field(&s, "attention.layer_norm_rms_epsilon", 1e-5);
    scaling = get_str(&s, "rope.scaling.type");
    if ((int)(c->rope_scaling = rope_kind(scaling)) < 0)
        return mdl_errf(err, err_len, "%s: %srope.scaling.type '%s' is not supported", m->path, prefix, scaling);
    c->rope_scale = c->rope_scaling ? num_field(&s, "rope.scaling.factor", 1.0) : 1.0f;
    const mdl_kv *tokens = mdl_kv_find(m, "tokenizer.ggml.tokens");
    if (tokens && tokens->type == MDL_GV_ARR && tokens->arr_n <= 100000000) c->vocab_size = (int)tokens->arr_n;
    else if (int_field(&s, "vocab_size", NULL, 0, &c->vocab_size)) return -1;
    return 0;
}

/* ==== config.json ==== */

static int from_json(mdl_model *m, char *err, size_t err_len)
{
    mdl_config *c = &m->cfg;
    src s = {m, "config.", err, err_len};
    const char *type = get_str(&s, "model_type");
    const util_json *archs = util_json_get(m->config_json, "architectures");
    if (!type && archs && archs->type == UTIL_JSON_ARR && archs->n && archs->items[0].type == UTIL_JSON_STR) type = archs->items[0].str;
    if (known_arch(type, c->arch, sizeof c->arch))
        return mdl_errf(err, err_len, "%s/config.json: model_type '%s' is not supported (llama, mistral, qwen2)", m->dir,
                        type ? type : "(missing)");
    const char *name = get_str(&s, "_name_or_path");
    snprintf(c->name, sizeof c->name, "%s", name ? name : "");
    if (int_field(&s, "num_hidden_layers", NULL, -1, &c->n_layers) || int_field(&s, "hidden_size", NULL, -1, &c->dim) ||
        int_field(&s, "intermediate_size", NULL, -1, &c->hidden_dim) ||
        int_field(&s, "num_attention_heads", NULL, -1, &c->n_heads) ||
        int_field(&s, "num_key_value_heads", NULL, c->n_heads, &c->n_kv_heads) ||
        int_field(&s, "head_dim", NULL, c->n_heads ? c->dim / c->n_heads : 0, &c->head_dim) ||
        int_field(&s, "max_position_embeddings", NULL, 0, &c->max_ctx) ||
        int_field(&s, "vocab_size", NULL, 0, &c->vocab_size))
        return -1;
    c->rope_dim = c->head_dim;
    c->rope_theta = num_field(&s, "rope_theta", 10000.0);
    c->norm_eps = num_field(&s, "rms_norm_eps", 1e-6);
    const char *scaling = get_str(&s, "rope_scaling.rope_type");
    if (!scaling) scaling = get_str(&s, "rope_scaling.type");
    if ((int)(c->rope_scaling = rope_kind(scaling)) < 0)
        return mdl_errf(err, err_len, "%s/config.json: rope_scaling type '%s' is not supported", m->dir, scaling);
    c->rope_scale = c->rope_scaling ? num_field(&s, "rope_scaling.factor", 1.0) : 1.0f;
    return 0;
}

/* ==== Checks against the tensors ==== */

static int check_values(const mdl_model *m, char *err, size_t err_len)
{
    const mdl_config *c = &m->cfg;
    if (c->n_layers < 1 || c->dim < 1 || c->hidden_dim < 1 || c->n_heads < 1 || c->n_kv_heads < 1 || c->head_dim < 1)
        return mdl_errf(err, err_len, "%s: config has a zero size (layers %d, dim %d, ffn %d, heads %d/%d, head_dim %d)", m->path,
                        c->n_layers, c->dim, c->hidden_dim, c->n_heads, c->n_kv_heads, c->head_dim);
    if (c->n_heads % c->n_kv_heads)
        return mdl_errf(err, err_len, "%s: %d query heads are not a multiple of %d key/value heads", m->path, c->n_heads, c->n_kv_heads);
    if (c->head_dim % 2 || c->rope_dim % 2 || c->rope_dim > c->head_dim)
        return mdl_errf(err, err_len, "%s: head_dim %d / rope dimensions %d must be even, rope <= head", m->path, c->head_dim, c->rope_dim);
    if (!(c->norm_eps > 0) || !isfinite(c->norm_eps) || !(c->rope_theta > 0) || !isfinite(c->rope_theta) || !(c->rope_scale > 0))
        return mdl_errf(err, err_len, "%s: bad norm epsilon %g, RoPE base %g or RoPE scale %g", m->path, c->norm_eps, c->rope_theta,
                        c->rope_scale);
    return 0;
}

static void shape_str(const int64_t *shape, int n, char *out, size_t cap)
{
    size_t k = (size_t)snprintf(out, cap, "[");
    for (int d = 0; d < n && k < cap; d++) k += (size_t)snprintf(out + k, cap - k, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (k < cap) snprintf(out + k, cap - k, "]");
}

/* The tensor must exist (unless optional) with exactly this shape. */
static int expect(const mdl_model *m, const char *name, int optional, int64_t d0, int64_t d1, char *err, size_t err_len)
{
    const mdl_tensor *t = mdl_find(m, name);
    int64_t want[2] = {d0, d1};
    int n = d1 ? 2 : 1;
    if (!t) return optional ? 0 : mdl_errf(err, err_len, "%s: missing tensor '%s'", m->path, name);
    if (t->n_dims != n || t->shape[0] != d0 || (n == 2 && t->shape[1] != d1)) {
        char have[96], need[64];
        shape_str(t->shape, t->n_dims, have, sizeof have);
        shape_str(want, n, need, sizeof need);
        return mdl_errf(err, err_len, "%s: tensor '%s' has shape %s, the config needs %s", m->path, name, have, need);
    }
    if (t->type >= MDL_I32) return mdl_errf(err, err_len, "%s: tensor '%s' is %s, not a weight type", m->path, name, mdl_dtype_name(t->type));
    return 0;
}

static int check_layer(const mdl_model *m, int l, char *err, size_t err_len)
{
    const mdl_config *c = &m->cfg;
    int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    const struct { const char *what; int optional; int64_t d0, d1; } need[] = {
        {"attn_norm.weight", 0, c->dim, 0},      {"attn_q.weight", 0, q, c->dim},    {"attn_k.weight", 0, kv, c->dim},
        {"attn_v.weight", 0, kv, c->dim},        {"attn_output.weight", 0, c->dim, q}, {"ffn_norm.weight", 0, c->dim, 0},
        {"ffn_gate.weight", 0, c->hidden_dim, c->dim}, {"ffn_up.weight", 0, c->hidden_dim, c->dim},
        {"ffn_down.weight", 0, c->dim, c->hidden_dim}, {"attn_q.bias", 1, q, 0}, {"attn_k.bias", 1, kv, 0},
        {"attn_v.bias", 1, kv, 0},
    };
    for (size_t i = 0; i < sizeof need / sizeof *need; i++) {
        char name[96];
        snprintf(name, sizeof name, "blk.%d.%s", l, need[i].what);
        if (expect(m, name, need[i].optional, need[i].d0, need[i].d1, err, err_len)) return -1;
    }
    return 0;
}

static int check_tensors(mdl_model *m, char *err, size_t err_len)
{
    mdl_config *c = &m->cfg;
    const mdl_tensor *embd = mdl_find(m, "token_embd.weight");
    if (!c->vocab_size && embd) c->vocab_size = (int)embd->shape[0];
    if (c->vocab_size < 1) return mdl_errf(err, err_len, "%s: no vocabulary size", m->path);
    if (expect(m, "token_embd.weight", 0, c->vocab_size, c->dim, err, err_len) ||
        expect(m, "output_norm.weight", 0, c->dim, 0, err, err_len) ||
        expect(m, "output.weight", 1, c->vocab_size, c->dim, err, err_len))
        return -1;
    for (int l = 0; l < c->n_layers; l++)
        if (check_layer(m, l, err, err_len)) return -1;
    c->tied_embeddings = mdl_find(m, "output.weight") == NULL;
    c->attn_bias = mdl_find(m, "blk.0.attn_q.bias") != NULL;
    return 0;
}

/* Hugging Face q/k rows (and q/k biases) are in "half-split" RoPE order; GGUF
 * llama files are interleaved. Safetensors tensors and GGUF qwen2 tensors (which
 * llama.cpp stores unpermuted and runs with NeoX RoPE) get permuted on load, so
 * every consumer sees GGUF llama order. */
static void mark_rope_rows(mdl_model *m)
{
    const mdl_config *c = &m->cfg;
    if (!strcmp(m->format, "gguf") && strcmp(c->arch, "qwen2")) return;
    static const char *what[] = {"attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias"};
    for (int l = 0; l < c->n_layers; l++)
        for (int i = 0; i < 4; i++) {
            char name[96];
            snprintf(name, sizeof name, "blk.%d.%s", l, what[i]);
            mdl_tensor *t = (mdl_tensor *)mdl_find(m, name);
            if (t) t->permute_rope_heads = i < 2 ? c->n_heads : c->n_kv_heads;
        }
}

int mdl_config_load(mdl_model *m, char *err, size_t err_len)
{
    if (mdl_is_packed(m)) /* its tensors are parts; pack/ checks them against the config */
        return mdl_packed_config(m, err, err_len) || check_values(m, err, err_len) ? -1 : 0;
    int rc = !strcmp(m->format, "gguf") ? from_gguf(m, err, err_len) : from_json(m, err, err_len);
    if (rc || check_values(m, err, err_len) || check_tensors(m, err, err_len)) return -1;
    mark_rope_rows(m);
    return 0;
}
