/*
 * runtime/load.c — turns an opened model file into a runnable rt_model, and the
 * names of the tensors the runtime uses.
 *
 * What it is for: every matrix (the linear layers, the embedding, an untied head)
 * becomes a layer over the file's mapping in its stored type (runtime/stored.c),
 * checked against the configuration's shape and for NaN/Inf; norms and biases are
 * decoded to fp32 (they are small). Tied embeddings give one rt_linear that serves
 * as both embedding and head. Memory is the mapping plus what is held: the
 * measurement holds one block at a time, RT_OPEN_RESIDENT holds everything. It
 * must never parse model files itself (model/ does) and never keep a weight it has
 * not checked.
 */
#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rt_int.h"

/* ==== Names ==== */

static const char *const gguf_names[LAY_N_CLASSES] = {"attn_q", "attn_k", "attn_v", "attn_output",
                                                        "ffn_gate", "ffn_up", "ffn_down", "output"};

rt_input rt_class_input(lay_class c)
{
    switch (c) {
    case LAY_Q: case LAY_K: case LAY_V: return RT_IN_ATTN;
    case LAY_O: return RT_IN_ATTN_OUT;
    case LAY_GATE: case LAY_UP: return RT_IN_MLP;
    case LAY_DOWN: return RT_IN_MLP_OUT;
    default: assert(c == LAY_HEAD); return RT_IN_HEAD;
    }
}

void rt_tensor_name(const mdl_config *cfg, int layer, lay_class c, char *out, size_t cap)
{
    assert(c >= 0 && c < LAY_N_CLASSES);
    if (c == LAY_HEAD)
        snprintf(out, cap, "%s", cfg->tied_embeddings ? "token_embd.weight" : "output.weight");
    else
        snprintf(out, cap, "blk.%d.%s.weight", layer, gguf_names[c]);
}

int rt_rope_is_neox(const mdl_config *cfg)
{
    return !strncmp(cfg->arch, "qwen2", 5) || !strncmp(cfg->arch, "qwen3", 5);
}

/* ==== Checked loading of one tensor ==== */

/* Checks that tensor `name` exists with shape {rows, cols} (cols == 0: a vector
 * of rows values). */
static int check_shape(mdl_model *f, const mdl_tensor *t, const char *name, int64_t rows, int64_t cols, char *err,
                       size_t err_len)
{
    if (!t) { snprintf(err, err_len, "%s: tensor %s is missing", mdl_path(f), name); return -1; }
    int want_dims = cols ? 2 : 1;
    if (t->n_dims == want_dims && t->shape[0] == rows && (!cols || t->shape[1] == cols)) return 0;
    char got[64] = "";
    for (int i = 0, n = 0; i < t->n_dims && n < (int)sizeof got; i++)
        n += snprintf(got + n, sizeof got - (size_t)n, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (cols)
        snprintf(err, err_len, "%s: %s has shape [%s] but the config needs [%lld, %lld]", mdl_path(f), name, got,
                 (long long)rows, (long long)cols);
    else
        snprintf(err, err_len, "%s: %s has shape [%s] but the config needs [%lld]", mdl_path(f), name, got,
                 (long long)rows);
    return -1;
}

/* Every value of t finite, or a message naming the first that is not (a vector's
 * values are its rows). */
static int check_finite(mdl_model *f, const mdl_tensor *t, char *err, size_t err_len)
{
    int64_t r, c;
    float v;
    int bad = mdl_tensor_find_nonfinite(f, t, &r, &c, &v);
    if (bad < 0) {
        snprintf(err, err_len, "%s: %s: type %s cannot be read as fp32 (or out of memory)", mdl_path(f), t->name,
                 mdl_dtype_name(t->type));
        return -1;
    }
    if (!bad) return 0;
    if (t->n_dims == 1 && mdl_tensor_rows(t) == 1) r = c, c = 0;
    snprintf(err, err_len, "%s: %s has %s at row %lld, column %lld", mdl_path(f), t->name, isnan(v) ? "NaN" : "Inf",
             (long long)r, (long long)c);
    return -1;
}

/* Reads vector `name` (rows values) as fp32 into a new buffer, checked. */
static int load_f32(mdl_model *f, const char *name, int64_t rows, float **out, char *err, size_t err_len)
{
    const mdl_tensor *t = mdl_find(f, name);
    *out = NULL;
    if (check_shape(f, t, name, rows, 0, err, err_len) || check_finite(f, t, err, err_len)) return -1;
    if (!(*out = malloc((size_t)t->n_elems * sizeof **out))) {
        snprintf(err, err_len, "%s: %s: out of memory", mdl_path(f), name);
        return -1;
    }
    mdl_tensor_to_f32(f, t, *out);
    return 0;
}

/* Matrix `name` {rows, cols} as a layer over its stored weights, checked on the
 * mapping without an fp32 copy. */
static int load_linear(mdl_model *f, rt_scratch *sc, const char *name, int64_t rows, int64_t cols, rt_linear **out,
                       char *err, size_t err_len)
{
    const mdl_tensor *t = mdl_find(f, name);
    *out = NULL;
    if (check_shape(f, t, name, rows, cols, err, err_len) || check_finite(f, t, err, err_len)) return -1;
    if (!(*out = rt_linear_stored(f, t, sc))) {
        snprintf(err, err_len, "%s: %s: out of memory", mdl_path(f), name);
        return -1;
    }
    return 0;
}

/* ==== The model ==== */

static int check_config(const mdl_config *c, const char *path, char *err, size_t err_len)
{
    const char *bad = NULL;
    if (c->n_layers <= 0) bad = "n_layers";
    else if (c->dim <= 0) bad = "dim";
    else if (c->hidden_dim <= 0) bad = "hidden_dim";
    else if (c->n_heads <= 0) bad = "n_heads";
    else if (c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads) bad = "n_kv_heads";
    else if (c->head_dim <= 0) bad = "head_dim";
    else if (c->vocab_size <= 0) bad = "vocab_size";
    else if (c->rope_dim <= 0 || c->rope_dim > c->head_dim || c->rope_dim % 2) bad = "rope_dim";
    else if (!(c->rope_theta > 0)) bad = "rope_theta";
    else if (!(c->norm_eps > 0)) bad = "norm_eps";
    if (bad) {
        snprintf(err, err_len, "%s: config value %s is invalid (layers %d, dim %d, hidden %d, heads %d/%d, "
                 "head_dim %d, vocab %d, rope_dim %d)", path, bad, c->n_layers, c->dim, c->hidden_dim, c->n_heads,
                 c->n_kv_heads, c->head_dim, c->vocab_size, c->rope_dim);
        return -1;
    }
    if (c->rope_scaling == MDL_ROPE_YARN || c->rope_scaling == MDL_ROPE_LLAMA3) {
        snprintf(err, err_len, "%s: RoPE scaling '%s' is not supported (only none and linear)", path,
                 c->rope_scaling == MDL_ROPE_YARN ? "yarn" : "llama3");
        return -1;
    }
    if (c->rope_scaling == MDL_ROPE_LINEAR && !(c->rope_scale > 0)) {
        snprintf(err, err_len, "%s: linear RoPE scale factor %g is invalid", path, (double)c->rope_scale);
        return -1;
    }
    return 0;
}

static int load_layer(mdl_model *f, rt_scratch *sc, const mdl_config *c, int l, rt_layer *ly, char *err, size_t err_len)
{
    int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    const int64_t shape[LAY_HEAD][2] = {{q, c->dim}, {kv, c->dim}, {kv, c->dim}, {c->dim, q},
                                       {c->hidden_dim, c->dim}, {c->hidden_dim, c->dim}, {c->dim, c->hidden_dim}};
    char name[96];
    snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
    if (load_f32(f, name, c->dim, &ly->attn_norm, err, err_len)) return -1;
    snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
    if (load_f32(f, name, c->dim, &ly->ffn_norm, err, err_len)) return -1;
    for (int k = 0; k < LAY_HEAD; k++) {
        rt_tensor_name(c, l, (lay_class)k, name, sizeof name);
        if (load_linear(f, sc, name, shape[k][0], shape[k][1], &ly->lin[k], err, err_len)) return -1;
    }
    if (!c->attn_bias) return 0;
    float **bias[3] = {&ly->bias_q, &ly->bias_k, &ly->bias_v};
    for (int k = 0; k < 3; k++) {
        snprintf(name, sizeof name, "blk.%d.%s.bias", l, gguf_names[k]);
        if (load_f32(f, name, shape[k][0], bias[k], err, err_len)) return -1;
    }
    return 0;
}

/* Whether a text gets BOS in front: the file's tokenizer.ggml.add_bos_token, else
 * the tokenizer's usual habit (SentencePiece yes, byte-level BPE no). */
static int file_add_bos(mdl_model *f, const tok_tokenizer *tok)
{
    int64_t v;
    if (!mdl_meta_int(f, "tokenizer.ggml.add_bos_token", &v)) return v != 0;
    if (!mdl_meta_int(f, "config.add_bos_token", &v)) return v != 0;
    return tok && tok_get_kind(tok) == TOK_SPM;
}

static void close_file(void *owner) { mdl_close(owner); }

/* The linear layers of block `layer`, or the head (layer == n_layers). */
static int layer_linears(rt_model *m, int layer, rt_linear **out)
{
    if (layer == m->cfg.n_layers) {
        out[0] = m->head;
        return 1;
    }
    memcpy(out, m->layers[layer].lin, LAY_HEAD * sizeof *out);
    return LAY_HEAD;
}

int rt_model_hold_layer(rt_model *m, int layer, char *err, size_t err_len)
{
    assert(layer >= 0 && layer <= m->cfg.n_layers);
    rt_linear *l[LAY_HEAD];
    int n = layer_linears(m, layer, l);
    for (int k = 0; k < n; k++) {
        if (!rt_linear_hold(l[k])) continue;
        while (k--) rt_linear_release(l[k]);
        if (layer == m->cfg.n_layers) snprintf(err, err_len, "out of memory for the head as fp32");
        else snprintf(err, err_len, "out of memory for layer %d as fp32", layer);
        return -1;
    }
    return 0;
}

void rt_model_release_layer(rt_model *m, int layer)
{
    assert(layer >= 0 && layer <= m->cfg.n_layers);
    rt_linear *l[LAY_HEAD];
    int n = layer_linears(m, layer, l);
    for (int k = 0; k < n; k++) rt_linear_release(l[k]);
}

static int hold_everything(rt_model *m, char *err, size_t err_len)
{
    for (int l = 0; l <= m->cfg.n_layers; l++)
        if (rt_model_hold_layer(m, l, err, err_len)) return -1;
    if (m->embed != m->head && rt_linear_hold(m->embed)) return snprintf(err, err_len, "out of memory"), -1;
    return 0;
}

int rt_model_open(mdl_model *file, int own_file, int flags, rt_model **out, char *err, size_t err_len)
{
    const mdl_config *c = mdl_get_config(file);
    const char *path = mdl_path(file);
    *out = NULL;
    if (check_config(c, path, err, err_len)) return -1;
    rt_model *m = calloc(1, sizeof *m);
    if (!m || !(m->layers = calloc((size_t)c->n_layers, sizeof *m->layers)) || !(m->scratch = rt_scratch_new())) {
        if (m) free(m->layers);
        free(m);
        snprintf(err, err_len, "%s: out of memory", path);
        return -1;
    }
    m->cfg = *c;
    rt_scratch *sc = m->scratch;
    if (load_linear(file, sc, "token_embd.weight", c->vocab_size, c->dim, &m->embed, err, err_len)) goto fail;
    if (c->tied_embeddings) m->head = m->embed;
    else if (load_linear(file, sc, "output.weight", c->vocab_size, c->dim, &m->head, err, err_len)) goto fail;
    if (load_f32(file, "output_norm.weight", c->dim, &m->out_norm, err, err_len)) goto fail;
    for (int l = 0; l < c->n_layers; l++)
        if (load_layer(file, sc, c, l, &m->layers[l], err, err_len)) goto fail;
    if (rt_scratch_ready(sc)) { snprintf(err, err_len, "%s: out of memory for scratch", path); goto fail; }
    if ((flags & RT_OPEN_RESIDENT) && hold_everything(m, err, err_len)) goto fail;
    char tok_err[MDL_ERR_LEN];
    m->tok = mdl_tokenizer(file, tok_err, sizeof tok_err); /* NULL is fine: no text in or out */
    if (!m->tok && strstr(tok_err, "out of memory")) { snprintf(err, err_len, "%s", tok_err); goto fail; } /* not "no tokenizer" later */
    m->add_bos = file_add_bos(file, m->tok);
    if (own_file) { m->owner = file; m->owner_free = close_file; }
    *out = m;
    return 0;
fail:
    rt_model_free(m);
    return -1;
}

void rt_model_free(rt_model *m)
{
    if (!m) return;
    for (int l = 0; m->layers && l < m->cfg.n_layers; l++) {
        rt_layer *ly = &m->layers[l];
        for (int k = 0; k < LAY_HEAD; k++) rt_linear_free(ly->lin[k]);
        free(ly->attn_norm); free(ly->ffn_norm);
        free(ly->bias_q); free(ly->bias_k); free(ly->bias_v);
    }
    free(m->layers);
    if (m->head != m->embed) rt_linear_free(m->head);
    rt_linear_free(m->embed);
    free(m->out_norm);
    rt_scratch_free(m->scratch);
    if (m->owner_free) m->owner_free(m->owner);
    free(m);
}
