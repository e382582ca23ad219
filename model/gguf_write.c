/*
 * model/gguf_write.c — writing GGUF v3 files that llama.cpp loads, streaming.
 *
 * Only the metadata and the tensor infos are held in memory; tensor data passes
 * through one fixed buffer into a temporary file beside the destination, which
 * takes the destination's name only in mdl_gguf_out_commit (write, fsync, rename,
 * fsync of the folder). It must never leave a file at the destination unless the
 * whole file was written and synced, leave its temporary file behind after a
 * failed commit or an abort, hold more tensor data than its buffer, or write a
 * tensor whose byte count disagrees with its type and shape.
 *
 * What it writes (the layout of model/gguf.c, version 3):
 *
 *   header       magic, version 3, tensor count, metadata count
 *   metadata     in the order held: a GGUF source's own order, keys added after
 *   tensor infos in the order declared; offsets are multiples of the alignment
 *   padding      zeros up to general.alignment (32 unless the metadata sets it)
 *   data         each tensor at its offset, zeros between tensors and after the
 *                last one (as gguf-py writes them)
 *
 * A safetensors source has no GGUF metadata: the keys llama.cpp reads for the
 * "llama" architecture are built here from mdl_config, config.json ("config.*")
 * and the tokenizer (mdl_tokenizer_json). "llama" serves mistral and qwen2
 * weights as well, since model/ hands out their q/k rows in GGUF's interleaved
 * RoPE order and llama.cpp's llama graph takes optional q/k/v biases.
 */
#include "model_int.h"
#include "util/util.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define OUT_BUF_BYTES ((size_t)1 << 20)
#define GGML_NAME_MAX 64 /* ggml's GGML_MAX_NAME, NUL included */

/* ==== The writer ==== */

typedef struct {
    char *key;
    uint32_t type;   /* MDL_GV_* */
    uint8_t *val;    /* the value as it follows the type in the file: scalar bytes, a string
                        (u64 length, bytes), or an array (element type, u64 count, elements) */
    size_t len;
} out_kv;

typedef struct {
    char name[GGML_NAME_MAX];
    uint32_t type, n_dims;
    uint64_t ne[2];  /* ne[0] = cols, ne[1] = rows */
    uint64_t nbytes;
    uint64_t offset; /* from the data start, a multiple of the alignment */
} out_tensor;

struct mdl_gguf_out {
    char *path;             /* as given, for messages */
    util_out file;          /* the temporary file and where it lands */
    out_kv *kv;             /* [n_kv] */
    int n_kv, cap_kv;
    out_tensor *t;          /* [n_t] */
    int n_t, cap_t;
    int header_done;        /* no more keys or tensors after write_header */
    int cur;                /* tensor being written */
    uint64_t cur_done;      /* its bytes so far */
    uint64_t pos;           /* bytes of the file so far, buffered ones included */
    uint64_t data_start;
    uint32_t align;
    int failed;             /* a write failed: every later call returns msg */
    char msg[MDL_ERR_LEN];
    uint8_t *buf;           /* [OUT_BUF_BYTES] */
    size_t fill;
};

/* Records an error that ends the file: later calls repeat it. */
static int fail(mdl_gguf_out *o, char *err, size_t err_len, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(mdl_gguf_out *o, char *err, size_t err_len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->msg, sizeof o->msg, fmt, ap);
    va_end(ap);
    o->failed = 1;
    return mdl_errf(err, err_len, "%s", o->msg);
}

static int failed(const mdl_gguf_out *o, char *err, size_t err_len) { return mdl_errf(err, err_len, "%s", o->msg); }

/* ==== Buffered output ==== */

static int write_all(mdl_gguf_out *o, const uint8_t *p, size_t n, char *err, size_t err_len)
{
    if (util_write_all(o->file.fd, p, n)) return fail(o, err, err_len, "%s: write failed: %s", o->path, strerror(errno));
    return 0;
}

static int flush(mdl_gguf_out *o, char *err, size_t err_len)
{
    int rc = write_all(o, o->buf, o->fill, err, err_len);
    o->fill = 0;
    return rc;
}

static int put(mdl_gguf_out *o, const void *p, size_t n, char *err, size_t err_len)
{
    o->pos += n;
    if (o->fill + n > OUT_BUF_BYTES && flush(o, err, err_len)) return -1;
    if (n >= OUT_BUF_BYTES) return write_all(o, p, n, err, err_len);
    memcpy(o->buf + o->fill, p, n);
    o->fill += n;
    return 0;
}

static int put_u32(mdl_gguf_out *o, uint32_t v, char *err, size_t err_len) { return put(o, &v, 4, err, err_len); }
static int put_u64(mdl_gguf_out *o, uint64_t v, char *err, size_t err_len) { return put(o, &v, 8, err, err_len); }

/* Zeros up to the next multiple of the alignment. */
static int pad(mdl_gguf_out *o, char *err, size_t err_len)
{
    static const uint8_t zeros[256];
    while (o->pos % o->align) {
        uint64_t n = o->align - o->pos % o->align;
        if (put(o, zeros, n < sizeof zeros ? (size_t)n : sizeof zeros, err, err_len)) return -1;
    }
    return 0;
}

/* ==== Metadata ==== */

/* A growing byte string for metadata values; oom is sticky. */
typedef struct { uint8_t *p; size_t len, cap; int oom; } bytes;

static void by_put(bytes *b, const void *p, size_t n)
{
    if (b->oom) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        if (!q) { b->oom = 1; return; }
        b->p = q, b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void by_u32(bytes *b, uint32_t v) { by_put(b, &v, 4); }
static void by_u64(bytes *b, uint64_t v) { by_put(b, &v, 8); }
static void by_str(bytes *b, const char *s, size_t n) { by_u64(b, n); by_put(b, s, n); }

static int kv_index(const mdl_gguf_out *o, const char *key)
{
    for (int i = 0; i < o->n_kv; i++)
        if (!strcmp(o->kv[i].key, key)) return i;
    return -1;
}

/* Sets key to a value built in b (taken over, freed on failure). -1: out of memory. */
static int kv_take(mdl_gguf_out *o, const char *key, uint32_t type, bytes *b)
{
    assert(o && key && *key && !o->header_done);
    int i = kv_index(o, key);
    if (b->oom) goto oom;
    if (i < 0) {
        if (o->n_kv == o->cap_kv) {
            int nc = o->cap_kv ? 2 * o->cap_kv : 64;
            out_kv *nk = realloc(o->kv, (size_t)nc * sizeof *nk);
            if (!nk) goto oom;
            o->kv = nk, o->cap_kv = nc;
        }
        char *k = strdup(key);
        if (!k) goto oom;
        i = o->n_kv++;
        o->kv[i] = (out_kv){.key = k};
    }
    free(o->kv[i].val);
    o->kv[i].type = type, o->kv[i].val = b->p, o->kv[i].len = b->len;
    return 0;
oom:
    free(b->p);
    return -1;
}

static int kv_set(mdl_gguf_out *o, const char *key, uint32_t type, const void *v, size_t n)
{
    bytes b = {0};
    by_put(&b, v, n);
    return kv_take(o, key, type, &b);
}

int mdl_gguf_out_set_u32(mdl_gguf_out *o, const char *key, uint32_t v) { return kv_set(o, key, MDL_GV_U32, &v, 4); }
int mdl_gguf_out_set_i32(mdl_gguf_out *o, const char *key, int32_t v) { return kv_set(o, key, MDL_GV_I32, &v, 4); }
int mdl_gguf_out_set_f32(mdl_gguf_out *o, const char *key, float v) { return kv_set(o, key, MDL_GV_F32, &v, 4); }

int mdl_gguf_out_set_bool(mdl_gguf_out *o, const char *key, int v)
{
    uint8_t b = v != 0;
    return kv_set(o, key, MDL_GV_BOOL, &b, 1);
}

int mdl_gguf_out_set_str(mdl_gguf_out *o, const char *key, const char *v)
{
    bytes b = {0};
    by_str(&b, v, strlen(v));
    return kv_take(o, key, MDL_GV_STR, &b);
}

int mdl_gguf_out_del(mdl_gguf_out *o, const char *key)
{
    assert(o && key && !o->header_done);
    int i = kv_index(o, key);
    if (i < 0) return -1;
    free(o->kv[i].key);
    free(o->kv[i].val);
    memmove(&o->kv[i], &o->kv[i + 1], (size_t)(o->n_kv - i - 1) * sizeof *o->kv);
    o->n_kv--;
    return 0;
}

/* ==== Metadata of a GGUF source: every key as stored ==== */

static void scalar_bytes(const mdl_kv *kv, bytes *b)
{
    union { uint8_t u8; uint16_t u16; uint32_t u32; float f32; uint64_t u64; double f64; } v;
    static const uint8_t size[MDL_GV_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    switch (kv->type) {
    case MDL_GV_U8: case MDL_GV_I8: case MDL_GV_BOOL: v.u8 = (uint8_t)kv->i; break;
    case MDL_GV_U16: case MDL_GV_I16: v.u16 = (uint16_t)kv->i; break;
    case MDL_GV_U32: case MDL_GV_I32: v.u32 = (uint32_t)kv->i; break;
    case MDL_GV_F32: v.f32 = (float)kv->f; break;
    case MDL_GV_U64: case MDL_GV_I64: v.u64 = (uint64_t)kv->i; break; /* the reader keeps a u64's bits in i */
    default: v.f64 = kv->f; break;
    }
    by_put(b, &v, size[kv->type]);
}

/* Strings come from the reader's NUL-terminated copies: one with a NUL inside would
 * end there (no model file has one). */
static int copy_gguf_kv(mdl_gguf_out *o, const mdl_model *m, char *err, size_t err_len)
{
    for (int i = 0; i < m->n_kv; i++) {
        const mdl_kv *kv = &m->kv[i];
        bytes b = {0};
        if (kv->type == MDL_GV_STR) by_str(&b, kv->s, strlen(kv->s));
        else if (kv->type == MDL_GV_ARR) { by_u32(&b, kv->arr_type); by_u64(&b, kv->arr_n); by_put(&b, kv->arr, kv->arr_bytes); }
        else scalar_bytes(kv, &b);
        if (kv_take(o, kv->key, kv->type, &b)) return mdl_errf(err, err_len, "%s: out of memory", o->path);
    }
    return 0;
}

/* ==== Metadata of a safetensors source: what llama.cpp needs ==== */

typedef struct {
    mdl_gguf_out *o;
    int rc;          /* set by any failed set: out of memory */
} meta;

static void m_u32(meta *x, const char *key, int64_t v)
{
    if (v >= 0 && v <= UINT32_MAX) x->rc |= mdl_gguf_out_set_u32(x->o, key, (uint32_t)v);
}
static void m_f32(meta *x, const char *key, float v) { x->rc |= mdl_gguf_out_set_f32(x->o, key, v); }
static void m_str(meta *x, const char *key, const char *v) { x->rc |= mdl_gguf_out_set_str(x->o, key, v); }
static void m_bool(meta *x, const char *key, int v) { x->rc |= mdl_gguf_out_set_bool(x->o, key, v); }

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s && s[1] ? s + 1 : path;
}

static void hparams(meta *x, const mdl_model *m)
{
    const mdl_config *c = mdl_get_config(m);
    int64_t v;
    m_str(x, "general.architecture", "llama");
    m_str(x, "general.name", c->name[0] ? c->name : base_name(m->dir ? m->dir : m->path));
    if (c->max_ctx > 0) m_u32(x, "llama.context_length", c->max_ctx);
    m_u32(x, "llama.embedding_length", c->dim);
    m_u32(x, "llama.block_count", c->n_layers);
    m_u32(x, "llama.feed_forward_length", c->hidden_dim);
    m_u32(x, "llama.attention.head_count", c->n_heads);
    m_u32(x, "llama.attention.head_count_kv", c->n_kv_heads);
    if (c->head_dim * c->n_heads != c->dim) {
        m_u32(x, "llama.attention.key_length", c->head_dim);
        m_u32(x, "llama.attention.value_length", c->head_dim);
    }
    m_f32(x, "llama.attention.layer_norm_rms_epsilon", c->norm_eps);
    m_f32(x, "llama.rope.freq_base", c->rope_theta);
    m_u32(x, "llama.rope.dimension_count", c->rope_dim);
    m_u32(x, "llama.vocab_size", c->vocab_size);
    /* llama3 scaling is no metadata: convert_hf_to_gguf stores a rope_freqs.weight tensor */
    if (c->rope_scaling == MDL_ROPE_LINEAR || c->rope_scaling == MDL_ROPE_YARN) {
        m_str(x, "llama.rope.scaling.type", c->rope_scaling == MDL_ROPE_LINEAR ? "linear" : "yarn");
        m_f32(x, "llama.rope.scaling.factor", c->rope_scale);
        if (!mdl_meta_int(m, "config.rope_scaling.original_max_position_embeddings", &v))
            m_u32(x, "llama.rope.scaling.original_context_length", v);
    }
}

/* A string array: tokens padded to n with "[PAD<i>]" where the vocabulary has none. */
static void token_strings(meta *x, const char *key, const util_json *arr, int n)
{
    bytes b = {0};
    char pad_tok[32];
    by_u32(&b, MDL_GV_STR);
    by_u64(&b, (uint64_t)n);
    for (int i = 0; i < n; i++) {
        const util_json *s = arr && i < arr->n && arr->items[i].type == UTIL_JSON_STR ? &arr->items[i] : NULL;
        if (s && s->len) { by_str(&b, s->str, s->len); continue; }
        snprintf(pad_tok, sizeof pad_tok, "[PAD%d]", i);
        by_str(&b, pad_tok, strlen(pad_tok));
    }
    x->rc |= kv_take(x->o, key, MDL_GV_ARR, &b);
}

static int is_byte_token(const util_json *s)
{
    return s && s->type == UTIL_JSON_STR && s->len == 6 && !memcmp(s->str, "<0x", 3) && s->str[5] == '>';
}

/* Token types: as the tokenizer says (normal when it says nothing), UNUSED for
 * padding; for SentencePiece the <0xXX> pieces are BYTE and unk is UNKNOWN, as
 * llama.cpp's detokenizer needs them. */
static void token_types(meta *x, const util_json *tok, int n, int spm, int unk)
{
    const util_json *tokens = util_json_get(tok, "tokens"), *types = util_json_get(tok, "types");
    bytes b = {0};
    by_u32(&b, MDL_GV_I32);
    by_u64(&b, (uint64_t)n);
    for (int i = 0; i < n; i++) {
        const util_json *s = i < tokens->n ? &tokens->items[i] : NULL;
        int32_t t = types && types->type == UTIL_JSON_ARR && i < types->n ? (int32_t)types->items[i].num : 1;
        if (!s || s->type != UTIL_JSON_STR || !s->len) t = 5;
        else if (spm && t == 1 && is_byte_token(s)) t = 6;
        else if (spm && t == 1 && i == unk) t = 2;
        by_u32(&b, (uint32_t)t);
    }
    x->rc |= kv_take(x->o, "tokenizer.ggml.token_type", MDL_GV_ARR, &b);
}

static void token_scores(meta *x, const util_json *scores, int n)
{
    bytes b = {0};
    by_u32(&b, MDL_GV_F32);
    by_u64(&b, (uint64_t)n);
    for (int i = 0; i < n; i++) {
        float f = i < scores->n && scores->items[i].type == UTIL_JSON_NUM ? (float)scores->items[i].num : -1e9f;
        by_put(&b, &f, 4);
    }
    x->rc |= kv_take(x->o, "tokenizer.ggml.scores", MDL_GV_ARR, &b);
}

static void chat_template(meta *x, const mdl_model *m)
{
    char path[4096], err[MDL_ERR_LEN], jerr[64];
    size_t len;
    struct stat st;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", m->dir);
    if (stat(path, &st)) return;
    char *text = util_read_file(path, (size_t)64 << 20, &len, err, sizeof err);
    util_json *j = text ? util_json_parse(text, len, jerr, sizeof jerr) : NULL;
    const char *tpl = util_json_str(j, "chat_template");
    if (tpl) m_str(x, "tokenizer.chat_template", tpl);
    util_json_free(j);
    free(text);
}

static int tokenizer_meta(meta *x, mdl_model *m, char *err, size_t err_len)
{
    char jerr[64];
    char *text = mdl_tokenizer_json(m, err, err_len);
    if (!text) return -1;
    util_json *j = util_json_parse(text, strlen(text), jerr, sizeof jerr);
    const util_json *tokens = util_json_get(j, "tokens"), *merges = util_json_get(j, "merges");
    if (!tokens || tokens->type != UTIL_JSON_ARR) {
        util_json_free(j);
        free(text);
        return mdl_errf(err, err_len, "%s: tokenizer: cannot read its vocabulary back (%s)", m->path, j ? "no tokens" : jerr);
    }
    const char *kind = util_json_str(j, "kind"), *pre = util_json_str(j, "pre");
    int spm = kind && !strcmp(kind, "spm"), unk = util_json_int(j, "unk", -1), cfg_vocab = mdl_get_config(m)->vocab_size;
    int n = tokens->n > cfg_vocab ? tokens->n : cfg_vocab; /* llama.cpp wants one token per embedding row */
    int64_t pad_id;
    m_str(x, "tokenizer.ggml.model", spm ? "llama" : "gpt2");
    m_str(x, "tokenizer.ggml.pre", spm || !pre ? "default" : !strcmp(pre, "gpt2") ? "gpt-2" : pre); /* llama.cpp's names */
    token_strings(x, "tokenizer.ggml.tokens", tokens, n);
    token_types(x, j, n, spm, unk);
    const util_json *scores = util_json_get(j, "scores");
    if (spm && scores && scores->type == UTIL_JSON_ARR) token_scores(x, scores, n);
    if (!spm && merges && merges->type == UTIL_JSON_ARR && merges->n) token_strings(x, "tokenizer.ggml.merges", merges, merges->n);
    m_u32(x, "tokenizer.ggml.bos_token_id", util_json_int(j, "bos", -1));
    m_u32(x, "tokenizer.ggml.eos_token_id", util_json_int(j, "eos", -1));
    m_u32(x, "tokenizer.ggml.unknown_token_id", unk);
    if (!mdl_meta_int(m, "config.pad_token_id", &pad_id) && pad_id < n) m_u32(x, "tokenizer.ggml.padding_token_id", pad_id);
    m_bool(x, "tokenizer.ggml.add_bos_token", util_json_int(j, "add_bos", 0));
    if (spm) m_bool(x, "tokenizer.ggml.add_space_prefix", util_json_int(j, "add_space_prefix", 1));
    util_json_free(j);
    free(text);
    return 0;
}

static int safetensors_meta(mdl_gguf_out *o, mdl_model *m, char *err, size_t err_len)
{
    meta x = {o, 0};
    if (mdl_is_packed(m))
        return mdl_errf(err, err_len, "%s: a bitplan packed file cannot be a GGUF source; export from the model it was packed from",
                        m->path);
    hparams(&x, m);
    if (tokenizer_meta(&x, m, err, err_len)) return -1;
    if (m->dir) chat_template(&x, m);
    return x.rc ? mdl_errf(err, err_len, "%s: out of memory", o->path) : 0;
}

/* ==== Tensors ==== */

/* Bytes of t in dtype dt (the reader's sizes: model/dequant.c); -1 if its columns
 * are not whole blocks. */
static int tensor_bytes(const out_tensor *t, mdl_dtype dt, uint64_t *n)
{
    uint64_t block = (uint64_t)mdl_block_size(dt), row = mdl_row_bytes(dt, (int64_t)(t->ne[0] / block * block));
    if (t->ne[0] % block) return -1;
    if (t->ne[1] && row > UINT64_MAX / t->ne[1]) return -1;
    *n = row * t->ne[1];
    return 0;
}

int mdl_gguf_out_add_tensor(mdl_gguf_out *o, const char *name, uint32_t ggml_type, int n_dims, int64_t rows, int64_t cols,
                            uint64_t nbytes, char *err, size_t err_len)
{
    assert(o && name && !o->header_done);
    uint64_t need;
    size_t len = strlen(name);
    if (!len || len >= GGML_NAME_MAX)
        return mdl_errf(err, err_len, "%s: tensor name '%s' must have 1 to %d bytes", o->path, name, GGML_NAME_MAX - 1);
    for (int i = 0; i < o->n_t; i++)
        if (!strcmp(o->t[i].name, name)) return mdl_errf(err, err_len, "%s: tensor '%s' declared twice", o->path, name);
    mdl_dtype dt;
    if (mdl_dtype_of_ggml(ggml_type, &dt)) return mdl_errf(err, err_len, "%s: tensor '%s': ggml type %u is not supported", o->path, name, ggml_type);
    if ((n_dims != 1 && n_dims != 2) || rows < 1 || cols < 1 || (n_dims == 1 && rows != 1))
        return mdl_errf(err, err_len, "%s: tensor '%s': shape %lld x %lld with %d dimensions (1: 1 x cols, or 2)", o->path, name,
                        (long long)rows, (long long)cols, n_dims);
    out_tensor t = {.type = ggml_type, .n_dims = (uint32_t)n_dims, .ne = {(uint64_t)cols, (uint64_t)rows}, .nbytes = nbytes};
    memcpy(t.name, name, len + 1);
    if (tensor_bytes(&t, dt, &need))
        return mdl_errf(err, err_len, "%s: tensor '%s': %lld columns are not a multiple of %s's block of %d", o->path, name,
                        (long long)cols, mdl_dtype_name(dt), mdl_block_size(dt));
    if (need != nbytes)
        return mdl_errf(err, err_len, "%s: tensor '%s': %llu bytes declared, %s %lld x %lld takes %llu", o->path, name,
                        (unsigned long long)nbytes, mdl_dtype_name(dt), (long long)rows, (long long)cols,
                        (unsigned long long)need);
    if (o->n_t == o->cap_t) {
        int nc = o->cap_t ? 2 * o->cap_t : 256;
        out_tensor *nt = realloc(o->t, (size_t)nc * sizeof *nt);
        if (!nt) return mdl_errf(err, err_len, "%s: out of memory", o->path);
        o->t = nt, o->cap_t = nc;
    }
    o->t[o->n_t++] = t;
    return 0;
}

/* ==== Header ==== */

static int alignment(mdl_gguf_out *o, char *err, size_t err_len)
{
    int i = kv_index(o, "general.alignment");
    uint32_t a = 32;
    if (i >= 0) {
        if (o->kv[i].type != MDL_GV_U32) return mdl_errf(err, err_len, "%s: general.alignment must be a u32", o->path);
        memcpy(&a, o->kv[i].val, 4);
    }
    if (!a || (a & (a - 1)) || a > 65536)
        return mdl_errf(err, err_len, "%s: general.alignment %u is not a power of two up to 65536", o->path, a);
    o->align = a;
    return 0;
}

int mdl_gguf_out_write_header(mdl_gguf_out *o, char *err, size_t err_len)
{
    assert(o && !o->header_done);
    if (o->failed) return failed(o, err, err_len);
    if (alignment(o, err, err_len)) return -1;
    uint64_t off = 0;
    for (int i = 0; i < o->n_t; i++) {
        o->t[i].offset = off;
        off += (o->t[i].nbytes + o->align - 1) / o->align * o->align;
    }
    int rc = put(o, "GGUF", 4, err, err_len) || put_u32(o, 3, err, err_len) || put_u64(o, (uint64_t)o->n_t, err, err_len) ||
             put_u64(o, (uint64_t)o->n_kv, err, err_len);
    for (int i = 0; i < o->n_kv && !rc; i++) {
        const out_kv *kv = &o->kv[i];
        rc = put_u64(o, strlen(kv->key), err, err_len) || put(o, kv->key, strlen(kv->key), err, err_len) ||
             put_u32(o, kv->type, err, err_len) || put(o, kv->val, kv->len, err, err_len);
    }
    for (int i = 0; i < o->n_t && !rc; i++) {
        const out_tensor *t = &o->t[i];
        rc = put_u64(o, strlen(t->name), err, err_len) || put(o, t->name, strlen(t->name), err, err_len) ||
             put_u32(o, t->n_dims, err, err_len) || put(o, t->ne, 8 * (size_t)t->n_dims, err, err_len) ||
             put_u32(o, t->type, err, err_len) || put_u64(o, t->offset, err, err_len);
    }
    if (rc || pad(o, err, err_len)) return -1;
    o->data_start = o->pos;
    o->header_done = 1;
    return 0;
}

/* ==== Data ==== */

int mdl_gguf_out_write(mdl_gguf_out *o, const void *data, size_t n, char *err, size_t err_len)
{
    assert(o && o->header_done);
    if (o->failed) return failed(o, err, err_len);
    if (!n) return 0;
    if (o->cur < o->n_t && o->cur_done == o->t[o->cur].nbytes) o->cur++, o->cur_done = 0;
    if (o->cur == o->n_t) return fail(o, err, err_len, "%s: %zu bytes written after the last tensor", o->path, n);
    const out_tensor *t = &o->t[o->cur];
    if (n > t->nbytes - o->cur_done)
        return fail(o, err, err_len, "%s: tensor '%s': %zu bytes written where %llu of its %llu remain", o->path, t->name, n,
                    (unsigned long long)(t->nbytes - o->cur_done), (unsigned long long)t->nbytes);
    if (!o->cur_done && pad(o, err, err_len)) return -1;
    assert(o->cur_done || o->pos == o->data_start + t->offset);
    if (put(o, data, n, err, err_len)) return -1;
    o->cur_done += n;
    return 0;
}

/* ==== Begin, commit, abort ==== */

static void out_free(mdl_gguf_out *o)
{
    for (int i = 0; i < o->n_kv; i++) free(o->kv[i].key), free(o->kv[i].val);
    free(o->kv);
    free(o->t);
    free(o->buf);
    free(o->path);
    free(o);
}

void mdl_gguf_out_abort(mdl_gguf_out *o)
{
    if (!o) return;
    util_out_abort(&o->file);
    out_free(o);
}

int mdl_gguf_out_begin(const char *path, mdl_model *src, mdl_gguf_out **out, char *err, size_t err_len)
{
    *out = NULL;
    mdl_gguf_out *o = calloc(1, sizeof *o);
    if (!o || !(o->path = strdup(path)) || !(o->buf = malloc(OUT_BUF_BYTES))) {
        if (o) out_free(o);
        return mdl_errf(err, err_len, "%s: out of memory", path);
    }
    o->align = 32;
    int rc = 0;
    if (src && !strcmp(src->format, "gguf")) rc = copy_gguf_kv(o, src, err, err_len);
    else if (src) rc = safetensors_meta(o, src, err, err_len);
    if (rc) {
        out_free(o);
        return -1;
    }
    if (util_out_open(&o->file, path, err, err_len)) {
        out_free(o);
        return -1;
    }
    *out = o;
    return 0;
}

static int finish(mdl_gguf_out *o, char *err, size_t err_len)
{
    if (o->failed) return failed(o, err, err_len);
    if (!o->header_done && mdl_gguf_out_write_header(o, err, err_len)) return -1;
    for (int i = o->cur; i < o->n_t; i++) {
        uint64_t got = i == o->cur ? o->cur_done : 0;
        if (got != o->t[i].nbytes)
            return mdl_errf(err, err_len, "%s: tensor '%s' got %llu of its %llu bytes", o->path, o->t[i].name,
                            (unsigned long long)got, (unsigned long long)o->t[i].nbytes);
    }
    if (pad(o, err, err_len) || flush(o, err, err_len)) return -1;
    return util_out_commit(&o->file, err, err_len);
}

int mdl_gguf_out_commit(mdl_gguf_out *o, char *err, size_t err_len)
{
    assert(o);
    int rc = finish(o, err, err_len);
    mdl_gguf_out_abort(o);
    return rc;
}
