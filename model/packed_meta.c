/*
 * model/packed_meta.c — what model/ reads of a bitplan packed file's metadata
 * (pack/FORMAT.md): the configuration ("config"), the tokenizer ("tokenizer") and
 * the option of every quantized tensor ("options"). The container itself is read
 * by safetensors.c; the metadata entries arrive here as "meta.KEY" strings.
 *
 * What it must never do: accept a value of the wrong JSON type or out of range
 * (every error is one line naming the file, the key and the value), or know
 * anything of how the packed values are laid out (that is pack/'s business).
 */
#include "model_int.h"
#include "tok_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_VOCAB 10000000

int mdl_is_packed(const mdl_model *m)
{
    const char *f;
    return !mdl_meta_str(m, "meta.format", &f) && !strcmp(f, MDL_PACKED_FORMAT);
}

/* Parses metadata entry `key` as JSON; NULL with an error naming it. */
static util_json *meta_json(const mdl_model *m, const char *key, char *err, size_t err_len)
{
    char full[64], jerr[128];
    const char *s;
    snprintf(full, sizeof full, "meta.%s", key);
    if (mdl_meta_str(m, full, &s)) { mdl_errf(err, err_len, "%s: packed file without '%s' metadata", m->path, key); return NULL; }
    util_json *j = util_json_parse(s, strlen(s), jerr, sizeof jerr);
    if (!j) mdl_errf(err, err_len, "%s: '%s' metadata: bad JSON: %s", m->path, key, jerr);
    else if (j->type != UTIL_JSON_OBJ) {
        mdl_errf(err, err_len, "%s: '%s' metadata is not a JSON object", m->path, key);
        util_json_free(j);
        j = NULL;
    }
    return j;
}

/* An integer member in [lo, hi]; def < lo means required. */
static int json_int_in(const mdl_model *m, const char *what, const util_json *o, const char *key, int64_t lo, int64_t hi,
                       int64_t def, int64_t *out, char *err, size_t err_len)
{
    const util_json *v = util_json_get(o, key);
    if (!v && def >= lo) { *out = def; return 0; }
    if (!v) return mdl_errf(err, err_len, "%s: %s: missing '%s'", m->path, what, key);
    if (v->type == UTIL_JSON_BOOL) { *out = v->boolean; return 0; }
    if (v->type != UTIL_JSON_NUM || !v->is_int || v->num < (double)lo || v->num > (double)hi)
        return mdl_errf(err, err_len, "%s: %s: '%s' is not an integer in %lld..%lld", m->path, what, key, (long long)lo,
                        (long long)hi);
    *out = (int64_t)v->num;
    return 0;
}

static int json_num(const mdl_model *m, const char *what, const util_json *o, const char *key, double def, double *out,
                    char *err, size_t err_len)
{
    const util_json *v = util_json_get(o, key);
    if (!v) { *out = def; return 0; }
    if (v->type != UTIL_JSON_NUM || !isfinite(v->num)) return mdl_errf(err, err_len, "%s: %s: '%s' is not a number", m->path, what, key);
    *out = v->num;
    return 0;
}

/* ==== config ==== */

static int config_ints(mdl_model *m, const util_json *j, char *err, size_t err_len)
{
    mdl_config *c = &m->cfg;
    static const struct { const char *key; size_t off; int required; } f[] = {
        {"n_layers", offsetof(mdl_config, n_layers), 1},     {"dim", offsetof(mdl_config, dim), 1},
        {"hidden_dim", offsetof(mdl_config, hidden_dim), 1}, {"n_heads", offsetof(mdl_config, n_heads), 1},
        {"n_kv_heads", offsetof(mdl_config, n_kv_heads), 1}, {"head_dim", offsetof(mdl_config, head_dim), 1},
        {"vocab_size", offsetof(mdl_config, vocab_size), 1}, {"max_ctx", offsetof(mdl_config, max_ctx), 0},
        {"rope_dim", offsetof(mdl_config, rope_dim), 1},     {"tied_embeddings", offsetof(mdl_config, tied_embeddings), 0},
        {"attn_bias", offsetof(mdl_config, attn_bias), 0},
    };
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) {
        int64_t v;
        if (json_int_in(m, "config", j, f[i].key, 0, 100000000, f[i].required ? -1 : 0, &v, err, err_len)) return -1;
        *(int *)((char *)c + f[i].off) = (int)v;
    }
    return 0;
}

int mdl_packed_config(mdl_model *m, char *err, size_t err_len)
{
    util_json *j = meta_json(m, "config", err, err_len);
    if (!j) return -1;
    mdl_config *c = &m->cfg;
    double theta = 0, eps = 0, scale = 0;
    const char *arch = util_json_str(j, "arch"), *name = util_json_str(j, "name"), *rope = util_json_str(j, "rope_scaling");
    int rc = -1;
    if (!arch || !*arch || strlen(arch) >= sizeof c->arch) mdl_errf(err, err_len, "%s: config: missing or bad 'arch'", m->path);
    else if (mdl_rope_scaling_of_name(rope ? rope : "none", &c->rope_scaling))
        mdl_errf(err, err_len, "%s: config: rope_scaling '%s' is unknown", m->path, rope);
    else if (!config_ints(m, j, err, err_len) && !json_num(m, "config", j, "rope_theta", 10000.0, &theta, err, err_len) &&
             !json_num(m, "config", j, "norm_eps", 1e-5, &eps, err, err_len) &&
             !json_num(m, "config", j, "rope_scale", 1.0, &scale, err, err_len)) {
        snprintf(c->arch, sizeof c->arch, "%s", arch);
        snprintf(c->name, sizeof c->name, "%s", name ? name : "");
        c->rope_theta = (float)theta, c->norm_eps = (float)eps, c->rope_scale = (float)scale;
        rc = 0;
    }
    util_json_free(j);
    if (rc) return -1;
    /* add_bos lives with the tokenizer; expose it where the runtime looks for it */
    const char *tok;
    if (mdl_meta_str(m, "meta.tokenizer", &tok)) return 0;
    util_json *t = meta_json(m, "tokenizer", err, err_len);
    if (!t) return -1;
    int64_t add_bos;
    rc = json_int_in(m, "tokenizer", t, "add_bos", 0, 1, 0, &add_bos, err, err_len);
    util_json_free(t);
    if (rc) return -1;
    mdl_kv *kv = mdl_kv_add(m, "tokenizer.ggml.add_bos_token", strlen("tokenizer.ggml.add_bos_token"));
    if (!kv) return mdl_errf(err, err_len, "%s: out of memory", m->path);
    kv->type = MDL_GV_BOOL, kv->is_int = kv->is_num = 1, kv->i = add_bos, kv->f = (double)add_bos;
    return 0;
}

/* ==== options ==== */

static int one_option(const mdl_model *m, const char *tensor, const util_json *o, mdl_packed_option *p, char *err,
                      size_t err_len)
{
    char what[160];
    int64_t lo, hi, group, fmt, bits, rot, seed, awq;
    double share = 0;
    snprintf(what, sizeof what, "options['%s']", tensor);
    if (o->type != UTIL_JSON_OBJ) return mdl_errf(err, err_len, "%s: %s is not an object", m->path, what);
    if (strlen(tensor) >= sizeof p->tensor) return mdl_errf(err, err_len, "%s: %s: tensor name too long", m->path, what);
    const char *name = util_json_str(o, "name");
    if (json_int_in(m, what, o, "bits_lo", 0, 255, -1, &lo, err, err_len) ||
        json_int_in(m, what, o, "bits_hi", 0, 255, -1, &hi, err, err_len) ||
        json_num(m, what, o, "hi_share", 0.0, &share, err, err_len) ||
        json_int_in(m, what, o, "group", 0, 1 << 30, -1, &group, err, err_len) ||
        json_int_in(m, what, o, "scale_fmt", 0, LAY_FMT_GGML + 255, -1, &fmt, err, err_len) ||
        json_int_in(m, what, o, "bits", 0, INT64_C(1) << 52, -1, &bits, err, err_len) ||
        json_int_in(m, what, o, "rot", 0, 1 << 15, 0, &rot, err, err_len) ||
        json_int_in(m, what, o, "rot_seed", 0, UINT32_MAX, rot ? -1 : 0, &seed, err, err_len) ||
        json_int_in(m, what, o, "awq", 0, 1, 0, &awq, err, err_len))
        return -1;
    if (!(share >= 0 && share <= 1)) return mdl_errf(err, err_len, "%s: %s: hi_share %g is outside 0..1", m->path, what, share);
    memset(p, 0, sizeof *p);
    snprintf(p->tensor, sizeof p->tensor, "%s", tensor);
    snprintf(p->opt.name, sizeof p->opt.name, "%s", name ? name : "");
    p->opt.bits_lo = (uint8_t)lo, p->opt.bits_hi = (uint8_t)hi, p->opt.hi_share = (float)share;
    p->opt.group = (int32_t)group, p->opt.scale_fmt = (lay_scale_fmt)fmt, p->opt.rot = (uint16_t)rot;
    p->opt.awq = (uint8_t)awq, p->rot_seed = (uint32_t)seed, p->bits = bits;
    return 0;
}

static int by_tensor(const void *a, const void *b)
{
    return strcmp(((const mdl_packed_option *)a)->tensor, ((const mdl_packed_option *)b)->tensor);
}

int mdl_packed_options(const mdl_model *m, mdl_packed_option **out, int *n, char *err, size_t err_len)
{
    *out = NULL, *n = 0;
    util_json *j = meta_json(m, "options", err, err_len);
    if (!j) return -1;
    mdl_packed_option *v = malloc((size_t)(j->n ? j->n : 1) * sizeof *v);
    int rc = v ? 0 : mdl_errf(err, err_len, "%s: out of memory", m->path);
    for (int i = 0; !rc && i < j->n; i++) rc = one_option(m, j->keys[i], &j->items[i], &v[i], err, err_len);
    if (!rc) qsort(v, (size_t)j->n, sizeof *v, by_tensor);
    for (int i = 1; !rc && i < j->n; i++)
        if (!strcmp(v[i].tensor, v[i - 1].tensor)) rc = mdl_errf(err, err_len, "%s: options name '%s' twice", m->path, v[i].tensor);
    if (!rc) *out = v, *n = j->n;
    else free(v);
    util_json_free(j);
    return rc;
}

/* ==== tokenizer ==== */

typedef struct {
    tok_vocab v;
    tok_str *tokens, *merges;
    int32_t *types;
    float *scores;
} packed_vocab;

static int str_array(const mdl_model *m, const util_json *a, const char *key, tok_str **out, int *n, char *err, size_t err_len)
{
    if (!a) { *n = 0; return 0; }
    if (a->type != UTIL_JSON_ARR || a->n > MAX_VOCAB) return mdl_errf(err, err_len, "%s: tokenizer: '%s' is not an array", m->path, key);
    tok_str *s = malloc((size_t)(a->n ? a->n : 1) * sizeof *s);
    if (!s) return mdl_errf(err, err_len, "%s: out of memory", m->path);
    for (int i = 0; i < a->n; i++) {
        if (a->items[i].type != UTIL_JSON_STR) {
            free(s);
            return mdl_errf(err, err_len, "%s: tokenizer: %s[%d] is not a string", m->path, key, i);
        }
        s[i].s = a->items[i].str, s[i].len = a->items[i].len;
    }
    *out = s, *n = a->n;
    return 0;
}

/* types (ints) or scores (floats): absent, or exactly n numbers. */
static int num_array(const mdl_model *m, const util_json *a, const char *key, int n, int32_t *ints, float *floats,
                     char *err, size_t err_len)
{
    if (a->type != UTIL_JSON_ARR || a->n != n)
        return mdl_errf(err, err_len, "%s: tokenizer: '%s' is not an array of %d numbers", m->path, key, n);
    for (int i = 0; i < n; i++) {
        const util_json *x = &a->items[i];
        if (x->type != UTIL_JSON_NUM || (ints && (!x->is_int || fabs(x->num) > 1e9)))
            return mdl_errf(err, err_len, "%s: tokenizer: %s[%d] is not a %s", m->path, key, i, ints ? "type" : "number");
        if (ints) ints[i] = (int32_t)x->num;
        else floats[i] = (float)x->num;
    }
    return 0;
}

static int vocab_parse(const mdl_model *m, const util_json *j, packed_vocab *b, char *err, size_t err_len)
{
    tok_vocab *v = &b->v;
    const char *kind = util_json_str(j, "kind");
    if (kind && !strcmp(kind, "bpe_bytes")) v->kind = TOK_BPE_BYTES;
    else if (kind && !strcmp(kind, "spm")) v->kind = TOK_SPM;
    else return mdl_errf(err, err_len, "%s: tokenizer: kind '%s' is unknown (bpe_bytes, spm)", m->path, kind ? kind : "(missing)");
    if (str_array(m, util_json_get(j, "tokens"), "tokens", &b->tokens, &v->n_vocab, err, err_len) ||
        str_array(m, util_json_get(j, "merges"), "merges", &b->merges, &v->n_merges, err, err_len))
        return -1;
    if (!v->n_vocab) return mdl_errf(err, err_len, "%s: tokenizer: no tokens", m->path);
    const util_json *types = util_json_get(j, "types"), *scores = util_json_get(j, "scores");
    if (types && types->type != UTIL_JSON_NULL) {
        if (!(b->types = malloc((size_t)v->n_vocab * sizeof *b->types))) return mdl_errf(err, err_len, "%s: out of memory", m->path);
        if (num_array(m, types, "types", v->n_vocab, b->types, NULL, err, err_len)) return -1;
    }
    if (scores && scores->type != UTIL_JSON_NULL) {
        if (!(b->scores = malloc((size_t)v->n_vocab * sizeof *b->scores))) return mdl_errf(err, err_len, "%s: out of memory", m->path);
        if (num_array(m, scores, "scores", v->n_vocab, NULL, b->scores, err, err_len)) return -1;
    }
    int64_t bos, eos, unk, asp;
    if (json_int_in(m, "tokenizer", j, "bos", -1, v->n_vocab - 1, -1, &bos, err, err_len) ||
        json_int_in(m, "tokenizer", j, "eos", -1, v->n_vocab - 1, -1, &eos, err, err_len) ||
        json_int_in(m, "tokenizer", j, "unk", -1, v->n_vocab - 1, -1, &unk, err, err_len) ||
        json_int_in(m, "tokenizer", j, "add_space_prefix", 0, 1, 0, &asp, err, err_len))
        return -1;
    v->tokens = b->tokens, v->merges = b->merges, v->types = b->types, v->scores = b->scores;
    v->pre = util_json_str(j, "pre");
    v->bos = (int)bos, v->eos = (int)eos, v->unk = (int)unk, v->add_space_prefix = (int)asp;
    return 0;
}

tok_tokenizer *mdl_packed_tokenizer(mdl_model *m, char *err, size_t err_len)
{
    packed_vocab b;
    memset(&b, 0, sizeof b);
    tok_tokenizer *t = NULL;
    util_json *j = meta_json(m, "tokenizer", err, err_len);
    if (j && !vocab_parse(m, j, &b, err, err_len)) {
        char terr[MDL_ERR_LEN];
        t = tok_new(&b.v, terr, sizeof terr);
        if (!t) mdl_errf(err, err_len, "%s: tokenizer: %s", m->path, terr);
    }
    free(b.tokens), free(b.merges), free(b.types), free(b.scores);
    util_json_free(j);
    return t;
}
