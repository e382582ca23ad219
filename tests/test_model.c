/*
 * tests/test_model.c — the model readers: GGUF and safetensors files built here
 * byte by byte, valid (round trip of shapes, values, metadata of every type, the
 * config, the HF -> GGUF RoPE row permutation, sharding, the vocabulary handed to
 * the tokenizer) and broken in every way the readers must catch (each must fail
 * with a one-line message naming the file); the block dequantizers on hand-built
 * blocks against values worked out here from the format's definition; SHA-256
 * against FIPS 180-2 test vectors; the JSON parser.
 *
 * tok_new/tok_free are defined here to capture the vocabulary mdl_tokenizer
 * gathers, so this test needs no tokenizer.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/util.h"
#include "model/model.h"
#include "model/model_int.h"
#include "model/tok_int.h"

static char dir[64];

/* ==== A captured vocabulary (mdl_tokenizer hands it to tok_new) ==== */

static struct {
    int calls, kind, n_vocab, n_merges, bos, eos, unk, type3;
    char pre[32], tok3[32], merge0[32], last[32];
} seen;
static int fake_tokenizer;

tok_tokenizer *tok_new(const tok_vocab *v, char *err, size_t err_len)
{
    (void)err, (void)err_len;
    seen.calls++;
    seen.kind = v->kind, seen.n_vocab = v->n_vocab, seen.n_merges = v->n_merges;
    seen.bos = v->bos, seen.eos = v->eos, seen.unk = v->unk;
    seen.type3 = v->types ? v->types[3] : -1;
    snprintf(seen.pre, sizeof seen.pre, "%s", v->pre ? v->pre : "(null)");
    snprintf(seen.tok3, sizeof seen.tok3, "%.*s", (int)v->tokens[3].len, v->tokens[3].s);
    snprintf(seen.last, sizeof seen.last, "%.*s", (int)v->tokens[v->n_vocab - 1].len, v->tokens[v->n_vocab - 1].s);
    if (v->n_merges) snprintf(seen.merge0, sizeof seen.merge0, "%.*s", (int)v->merges[0].len, v->merges[0].s);
    return (tok_tokenizer *)&fake_tokenizer;
}

void tok_free(tok_tokenizer *t) { assert_ptr_equal(t, &fake_tokenizer); }

/* ==== Byte buffers and files ==== */

typedef struct { uint8_t *p; size_t n, cap; } buf;

static void put(buf *b, const void *d, size_t n)
{
    if (!n) return;
    if (b->n + n > b->cap) {
        b->cap = 2 * (b->n + n) + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void put_u32(buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(buf *b, const char *s) { put_u64(b, strlen(s)); put(b, s, strlen(s)); }
static void pad_to(buf *b, size_t align) { static const uint8_t z[64]; put(b, z, (align - b->n % align) % align); }

static const char *path_of(const char *name)
{
    static char p[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", dir, name);
    return p[k];
}

static const char *write_file(const char *name, const void *d, size_t n)
{
    const char *p = path_of(name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(d, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
    return p;
}

/* mdl_open(path) must fail with one line that names `file` (the file at fault:
 * path itself, or a shard or config.json beside it) and holds `what`. */
static void expect_fail_in(const char *path, const char *file, const char *what)
{
    mdl_model *m = (mdl_model *)1;
    char err[MDL_ERR_LEN] = "";
    assert_int_equal(mdl_open(path, &m, err, sizeof err), -1);
    assert_null(m);
    if (!strstr(err, file) || !strstr(err, what) || strchr(err, '\n')) fail_msg("%s: message '%s' lacks '%s'", path, err, what);
}

static void expect_fail(const char *path, const char *what) { expect_fail_in(path, path, what); }

/* ==== A tiny llama GGUF, optionally broken ==== */

enum { DIM = 32, FFN = 64, HEADS = 2, KV = 1, HD = 16, VOCAB = 8 };

typedef struct { const char *name; int64_t rows, cols; } spec;
static const spec tiny[] = {
    {"token_embd.weight", VOCAB, DIM},   {"blk.0.attn_norm.weight", DIM, 0}, {"blk.0.attn_q.weight", HEADS * HD, DIM},
    {"blk.0.attn_k.weight", KV * HD, DIM}, {"blk.0.attn_v.weight", KV * HD, DIM}, {"blk.0.attn_output.weight", DIM, HEADS * HD},
    {"blk.0.ffn_norm.weight", DIM, 0},   {"blk.0.ffn_gate.weight", FFN, DIM}, {"blk.0.ffn_up.weight", FFN, DIM},
    {"blk.0.ffn_down.weight", DIM, FFN}, {"output_norm.weight", DIM, 0},
};
enum { N_TINY = sizeof tiny / sizeof *tiny };

typedef struct {
    const char *magic;       /* default "GGUF" */
    uint32_t version;        /* default 3 */
    uint64_t n_tensors;      /* 0: the real count */
    uint64_t n_kv;           /* 0: the real count */
    uint64_t key_len;        /* != 0: the first key claims this length */
    uint32_t n_dims;         /* != 0: tensor 0 claims this many dims */
    uint64_t dim0;           /* != 0 (or zero_dim): tensor 0's innermost dim */
    int zero_dim;            /* tensor 0 gets a dimension 0 */
    uint64_t huge;           /* != 0: tensor 0 gets every dim = huge */
    uint32_t type;           /* != 0: tensor 0's ggml type */
    uint64_t shift;          /* tensor 1's offset moves by this */
    int dup;                 /* tensor 1 is named like tensor 0 */
    uint32_t alignment;      /* != 0: general.alignment written */
    uint32_t value_type;     /* != 0: an extra key of this value type */
    uint64_t arr_n;          /* != 0: the string array claims this many */
    int dup_key;             /* a metadata key twice */
    const char *arch;        /* default "llama" */
    int no_tensor;           /* index+1 of a tensor left out */
} gopt;

static float tiny_value(int t, int64_t i) { return (float)t + (float)(i % 1000) * 0.001f; }

static void put_kv_header(buf *b, const char *key, uint32_t type) { put_str(b, key); put_u32(b, type); }

static int put_metadata(buf *b, const gopt *o)
{
    int n = 0;
    const char *arch = o->arch ? o->arch : "llama";
    char key[64];
    if (o->key_len) { put_u64(b, o->key_len); put(b, "general.architecture", 20); }
    else put_kv_header(b, "general.architecture", MDL_GV_STR);
    put_str(b, arch), n++;
    static const struct { const char *k; uint32_t v; } ints[] = {
        {"block_count", 1}, {"embedding_length", DIM}, {"feed_forward_length", FFN}, {"attention.head_count", HEADS},
        {"attention.head_count_kv", KV}, {"context_length", 128}, {"rope.dimension_count", HD}};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++, n++) {
        snprintf(key, sizeof key, "%s.%s", arch, ints[i].k);
        put_kv_header(b, key, MDL_GV_U32), put_u32(b, ints[i].v);
    }
    float theta = 500000.0f, eps = 1e-6f;
    snprintf(key, sizeof key, "%s.rope.freq_base", arch), put_kv_header(b, key, MDL_GV_F32), put(b, &theta, 4), n++;
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", arch), put_kv_header(b, key, MDL_GV_F32), put(b, &eps, 4), n++;
    put_kv_header(b, "general.name", MDL_GV_STR), put_str(b, "tiny test"), n++;
    /* one of every value type */
    uint8_t u8 = 200; int8_t i8 = -5; uint16_t u16 = 60000; int16_t i16 = -30000; int32_t i32 = -2000000000;
    uint64_t u64 = 1ull << 40; int64_t i64 = -(1ll << 50); double f64 = 0.125; uint8_t yes = 1;
    put_kv_header(b, "t.u8", MDL_GV_U8), put(b, &u8, 1), n++;
    put_kv_header(b, "t.i8", MDL_GV_I8), put(b, &i8, 1), n++;
    put_kv_header(b, "t.u16", MDL_GV_U16), put(b, &u16, 2), n++;
    put_kv_header(b, "t.i16", MDL_GV_I16), put(b, &i16, 2), n++;
    put_kv_header(b, "t.i32", MDL_GV_I32), put(b, &i32, 4), n++;
    put_kv_header(b, "t.u64", MDL_GV_U64), put(b, &u64, 8), n++;
    put_kv_header(b, "t.i64", MDL_GV_I64), put(b, &i64, 8), n++;
    put_kv_header(b, "t.f64", MDL_GV_F64), put(b, &f64, 8), n++;
    put_kv_header(b, "t.bool", MDL_GV_BOOL), put(b, &yes, 1), n++;
    put_kv_header(b, "t.nested", MDL_GV_ARR), put_u32(b, MDL_GV_ARR), put_u64(b, 2), n++;
    put_u32(b, MDL_GV_U16), put_u64(b, 3), put(b, "\1\0\2\0\3\0", 6);
    put_u32(b, MDL_GV_STR), put_u64(b, 1), put_str(b, "x");
    /* the vocabulary */
    static const char *tokens[VOCAB] = {"<|endoftext|>", "<s>", "</s>", "a", "b", "ab", "\xc4\xa0", "c"};
    put_kv_header(b, "tokenizer.ggml.model", MDL_GV_STR), put_str(b, "gpt2"), n++;
    put_kv_header(b, "tokenizer.ggml.pre", MDL_GV_STR), put_str(b, "smollm"), n++;
    put_kv_header(b, "tokenizer.ggml.tokens", MDL_GV_ARR), put_u32(b, MDL_GV_STR), put_u64(b, o->arr_n ? o->arr_n : VOCAB), n++;
    for (int i = 0; i < VOCAB; i++) put_str(b, tokens[i]);
    put_kv_header(b, "tokenizer.ggml.token_type", MDL_GV_ARR), put_u32(b, MDL_GV_I32), put_u64(b, VOCAB), n++;
    for (int i = 0; i < VOCAB; i++) put_u32(b, i < 3 ? TOK_TYPE_CONTROL : TOK_TYPE_NORMAL);
    put_kv_header(b, "tokenizer.ggml.merges", MDL_GV_ARR), put_u32(b, MDL_GV_STR), put_u64(b, 1), put_str(b, "a b"), n++;
    put_kv_header(b, "tokenizer.ggml.bos_token_id", MDL_GV_U32), put_u32(b, 1), n++;
    put_kv_header(b, "tokenizer.ggml.eos_token_id", MDL_GV_U32), put_u32(b, 2), n++;
    if (o->alignment) put_kv_header(b, "general.alignment", MDL_GV_U32), put_u32(b, o->alignment), n++;
    if (o->value_type) put_kv_header(b, "t.odd", o->value_type), put_u32(b, 0), n++;
    if (o->dup_key) put_kv_header(b, "t.u8", MDL_GV_U8), put(b, &u8, 1), n++;
    return n;
}

static void put_tensor_info(buf *b, const gopt *o, int t, uint64_t offset)
{
    const spec *s = &tiny[t];
    uint32_t nd = s->cols ? 2 : 1;
    put_str(b, o->dup && t == 1 ? tiny[0].name : s->name);
    put_u32(b, t == 0 && o->n_dims ? o->n_dims : nd);
    uint64_t ne[MDL_MAX_DIMS + 2] = {s->cols ? (uint64_t)s->cols : (uint64_t)s->rows, (uint64_t)s->rows, 1, 1, 1, 1};
    if (t == 0 && o->huge) for (int d = 0; d < 6; d++) ne[d] = o->huge;
    if (t == 0 && o->zero_dim) ne[1] = 0;
    if (t == 0 && o->dim0) ne[0] = o->dim0;
    for (uint32_t d = 0; d < (t == 0 && o->n_dims ? o->n_dims : nd); d++) put_u64(b, ne[d]);
    put_u32(b, t == 0 && o->type ? o->type : 0 /* F32 */);
    put_u64(b, offset + (t == 1 ? o->shift : 0));
}

/* Builds the file into b; returns the offset where the tensor data starts. */
static size_t build_gguf(buf *b, const gopt *o)
{
    buf kv = {0};
    b->n = 0;
    int n_kv = put_metadata(&kv, o);
    put(b, o->magic ? o->magic : "GGUF", 4);
    put_u32(b, o->version ? o->version : 3);
    int n_t = 0;
    for (int t = 0; t < N_TINY; t++) n_t += o->no_tensor != t + 1;
    put_u64(b, o->n_tensors ? o->n_tensors : (uint64_t)n_t);
    put_u64(b, o->n_kv ? o->n_kv : (uint64_t)n_kv);
    put(b, kv.p, kv.n);
    free(kv.p);
    size_t align = o->alignment ? o->alignment : 32;
    uint64_t off = 0;
    for (int t = 0; t < N_TINY; t++) {
        if (o->no_tensor == t + 1) continue;
        put_tensor_info(b, o, t, off);
        uint64_t bytes = 4 * (uint64_t)tiny[t].rows * (uint64_t)(tiny[t].cols ? tiny[t].cols : 1);
        off += (bytes + align - 1) / align * align;
    }
    pad_to(b, align);
    size_t data = b->n;
    for (int t = 0; t < N_TINY; t++) {
        if (o->no_tensor == t + 1) continue;
        int64_t n = tiny[t].rows * (tiny[t].cols ? tiny[t].cols : 1);
        for (int64_t i = 0; i < n; i++) {
            float v = tiny_value(t, i);
            put(b, &v, 4);
        }
        pad_to(b, align);
    }
    return data;
}

static const char *gguf_file(const char *name, const gopt *o)
{
    buf b = {0};
    build_gguf(&b, o);
    const char *p = write_file(name, b.p, b.n);
    free(b.p);
    return p;
}

/* ==== GGUF: a valid file ==== */

static void test_gguf_round_trip(void **state)
{
    (void)state;
    gopt o = {0};
    mdl_model *m;
    char err[MDL_ERR_LEN];
    const char *path = gguf_file("ok.gguf", &o);
    if (mdl_open(path, &m, err, sizeof err)) fail_msg("%s", err);
    assert_string_equal(mdl_format(m), "gguf");
    assert_int_equal(mdl_tensor_count(m), N_TINY);
    const mdl_config *c = mdl_get_config(m);
    assert_string_equal(c->arch, "llama");
    assert_string_equal(c->name, "tiny test");
    assert_int_equal(c->n_layers, 1);
    assert_int_equal(c->dim, DIM);
    assert_int_equal(c->hidden_dim, FFN);
    assert_int_equal(c->n_heads, HEADS);
    assert_int_equal(c->n_kv_heads, KV);
    assert_int_equal(c->head_dim, HD);
    assert_int_equal(c->vocab_size, VOCAB);
    assert_int_equal(c->max_ctx, 128);
    assert_true(c->rope_theta == 500000.0f && c->norm_eps == 1e-6f);
    assert_int_equal(c->rope_scaling, MDL_ROPE_NONE);
    assert_int_equal(c->tied_embeddings, 1);
    assert_int_equal(c->attn_bias, 0);
    for (int t = 0; t < N_TINY; t++) {
        const mdl_tensor *x = mdl_find(m, tiny[t].name);
        assert_non_null(x);
        assert_ptr_equal(x, mdl_tensor_at(m, t));
        assert_int_equal(x->shape[0], tiny[t].rows); /* row-major: ne[] reversed */
        if (tiny[t].cols) assert_int_equal(x->shape[1], tiny[t].cols);
        assert_int_equal(x->permute_rope_heads, 0);
        float *w = malloc((size_t)x->n_elems * sizeof *w);
        assert_int_equal(mdl_tensor_to_f32(m, x, w), 0);
        for (int64_t i = 0; i < x->n_elems; i++) assert_true(w[i] == tiny_value(t, i));
        free(w);
    }
    assert_null(mdl_find(m, "output.weight"));
    mdl_close(m);
}

static void test_gguf_metadata_types(void **state)
{
    (void)state;
    gopt o = {0};
    mdl_model *m;
    char err[MDL_ERR_LEN];
    int64_t i;
    double f;
    const char *s;
    if (mdl_open(gguf_file("meta.gguf", &o), &m, err, sizeof err)) fail_msg("%s", err);
    static const struct { const char *key; int64_t v; } ints[] = {
        {"t.u8", 200}, {"t.i8", -5}, {"t.u16", 60000}, {"t.i16", -30000}, {"t.i32", -2000000000},
        {"t.u64", 1ll << 40}, {"t.i64", -(1ll << 50)}, {"t.bool", 1}, {"llama.block_count", 1}};
    for (size_t k = 0; k < sizeof ints / sizeof *ints; k++) {
        assert_int_equal(mdl_meta_int(m, ints[k].key, &i), 0);
        assert_int_equal(i, ints[k].v);
    }
    assert_int_equal(mdl_meta_int(m, "t.f64", &i), -1); /* a float is no int */
    assert_int_equal(mdl_meta_float(m, "t.f64", &f), 0);
    assert_true(f == 0.125);
    assert_int_equal(mdl_meta_float(m, "llama.rope.freq_base", &f), 0);
    assert_true(f == 500000.0);
    assert_int_equal(mdl_meta_str(m, "general.name", &s), 0);
    assert_string_equal(s, "tiny test");
    assert_int_equal(mdl_meta_str(m, "t.u8", &s), -1);
    assert_int_equal(mdl_meta_int(m, "no.such.key", &i), -1);
    assert_int_equal(mdl_meta_int(m, "t.nested", &i), -1); /* arrays are no scalars */
    mdl_close(m);
}

static void test_gguf_vocab_to_tokenizer(void **state)
{
    (void)state;
    gopt o = {0};
    mdl_model *m;
    char err[MDL_ERR_LEN];
    if (mdl_open(gguf_file("vocab.gguf", &o), &m, err, sizeof err)) fail_msg("%s", err);
    memset(&seen, 0, sizeof seen);
    assert_ptr_equal(mdl_tokenizer(m, err, sizeof err), &fake_tokenizer);
    assert_ptr_equal(mdl_tokenizer(m, err, sizeof err), &fake_tokenizer); /* made once */
    assert_int_equal(seen.calls, 1);
    assert_int_equal(seen.kind, TOK_BPE_BYTES);
    assert_int_equal(seen.n_vocab, VOCAB);
    assert_int_equal(seen.n_merges, 1);
    assert_string_equal(seen.merge0, "a b");
    assert_string_equal(seen.tok3, "a");
    assert_string_equal(seen.last, "c");
    assert_string_equal(seen.pre, "smollm");
    assert_int_equal(seen.type3, TOK_TYPE_NORMAL);
    assert_int_equal(seen.bos, 1);
    assert_int_equal(seen.eos, 2);
    assert_int_equal(seen.unk, -1);
    mdl_close(m);
}

static void test_gguf_alignment_and_hash(void **state)
{
    (void)state;
    gopt o = {.alignment = 64};
    mdl_model *m;
    char err[MDL_ERR_LEN], hex[65];
    buf b = {0};
    size_t data = build_gguf(&b, &o);
    assert_int_equal(data % 64, 0);
    const char *path = write_file("align64.gguf", b.p, b.n);
    if (mdl_open(path, &m, err, sizeof err)) fail_msg("%s", err);
    for (int t = 0; t < N_TINY; t++) assert_int_equal((uintptr_t)mdl_tensor_at(m, t)->data % 64, 0);
    mdl_sha256 s;
    uint8_t d[32];
    mdl_sha256_init(&s);
    mdl_sha256_update(&s, b.p, b.n);
    mdl_sha256_final(&s, d);
    mdl_sha256_hex(d, hex);
    assert_string_equal(mdl_content_hash(m), hex);
    assert_int_equal(mdl_file_bytes(m), (int64_t)b.n);
    mdl_close(m);
    free(b.p);
}

/* ==== GGUF: broken files ==== */

static void test_gguf_bad_headers(void **state)
{
    (void)state;
    expect_fail(gguf_file("magic.gguf", &(gopt){.magic = "GGUX"}), "magic");
    expect_fail(gguf_file("v1.gguf", &(gopt){.version = 1}), "version 1");
    expect_fail(gguf_file("v4.gguf", &(gopt){.version = 4}), "version 4");
    expect_fail(gguf_file("be.gguf", &(gopt){.version = 0x03000000}), "big-endian");
    expect_fail(gguf_file("ntensors.gguf", &(gopt){.n_tensors = 1ull << 40}), "absurd tensor count");
    expect_fail(gguf_file("nkv.gguf", &(gopt){.n_kv = 1ull << 40}), "absurd metadata count");
    expect_fail(gguf_file("keylen.gguf", &(gopt){.key_len = 1ull << 50}), "string length");
    expect_fail(gguf_file("arrn.gguf", &(gopt){.arr_n = 1ull << 40}), "runs past the end");
    expect_fail(gguf_file("vtype.gguf", &(gopt){.value_type = 13}), "unknown value type 13");
    expect_fail(gguf_file("dupkey.gguf", &(gopt){.dup_key = 1}), "duplicate metadata key");
    expect_fail(gguf_file("align.gguf", &(gopt){.alignment = 48}), "power of two");
    expect_fail(gguf_file("arch.gguf", &(gopt){.arch = "gpt2"}), "architecture 'gpt2'");
    expect_fail(write_file("empty.gguf", "", 0), "empty");
    expect_fail(write_file("short.gguf", "GGUF\3\0", 6), "truncated");
}

static void test_gguf_bad_tensors(void **state)
{
    (void)state;
    expect_fail(gguf_file("ndims.gguf", &(gopt){.n_dims = 5}), "5 dimensions");
    expect_fail(gguf_file("zerodim.gguf", &(gopt){.zero_dim = 1}), "is 0");
    expect_fail(gguf_file("huge.gguf", &(gopt){.huge = 1ull << 32}), "overflows");
    expect_fail(gguf_file("neg.gguf", &(gopt){.huge = 1ull << 63}), "absurd");
    expect_fail(gguf_file("type99.gguf", &(gopt){.type = 99}), "unknown type 99");
    expect_fail(gguf_file("q8k.gguf", &(gopt){.type = 15}), "Q8_K is not supported");
    expect_fail(gguf_file("block.gguf", &(gopt){.type = 8, .dim0 = 33}), "not a multiple of Q8_0's block");
    expect_fail(gguf_file("misaligned.gguf", &(gopt){.shift = 4}), "alignment");
    expect_fail(gguf_file("pastend.gguf", &(gopt){.shift = 1 << 20}), "runs past the end of the file");
    expect_fail(gguf_file("dup.gguf", &(gopt){.dup = 1}), "duplicate tensor name 'token_embd.weight'");
    expect_fail(gguf_file("missing.gguf", &(gopt){.no_tensor = 4}), "missing tensor 'blk.0.attn_k.weight'");
    expect_fail(gguf_file("shape.gguf", &(gopt){.dim0 = 64}), "has shape [8, 64], the config needs [8, 32]");
}

/* Every cut of the header, and some of the data, must fail cleanly. */
static void test_gguf_truncated_everywhere(void **state)
{
    (void)state;
    buf b = {0};
    size_t data = build_gguf(&b, &(gopt){0});
    for (size_t n = 1; n < b.n; n += n < data + 64 ? 1 : 997) {
        const char *p = write_file("cut.gguf", b.p, n);
        mdl_model *m = NULL;
        char err[MDL_ERR_LEN] = "";
        if (mdl_open(p, &m, err, sizeof err) == 0) fail_msg("cut at %zu of %zu opened", n, b.n);
        if (!strstr(err, p)) fail_msg("cut at %zu: '%s'", n, err);
    }
    free(b.p);
}

/* ==== safetensors ==== */

typedef struct { buf hdr, data; int first; } stb;

static void st_add(stb *s, const char *name, const char *dtype, const char *shape, const void *d, size_t n)
{
    char e[512];
    snprintf(e, sizeof e, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":%s,\"data_offsets\":[%zu,%zu]}", s->first++ ? "," : "{", name,
             dtype, shape, s->data.n, s->data.n + n);
    put(&s->hdr, e, strlen(e));
    put(&s->data, d, n);
}

static const char *st_write(stb *s, const char *name)
{
    buf f = {0};
    put(&s->hdr, s->first ? "}" : "{}", s->first ? 1 : 2);
    while ((s->hdr.n + 8) % 8) put(&s->hdr, " ", 1);
    put_u64(&f, s->hdr.n);
    put(&f, s->hdr.p, s->hdr.n);
    put(&f, s->data.p, s->data.n);
    const char *p = write_file(name, f.p, f.n);
    free(f.p), free(s->hdr.p), free(s->data.p);
    memset(s, 0, sizeof *s);
    return p;
}

static void write_config(const char *sub)
{
    char name[128];
    const char *cfg = "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"hidden_size\":32,"
                      "\"intermediate_size\":64,\"num_hidden_layers\":1,\"num_attention_heads\":2,\"num_key_value_heads\":1,"
                      "\"rope_theta\":10000.0,\"rms_norm_eps\":1e-05,\"tie_word_embeddings\":false,\"vocab_size\":8,"
                      "\"max_position_embeddings\":64,\"rope_scaling\":{\"type\":\"linear\",\"factor\":2.0},"
                      "\"bos_token_id\":1,\"eos_token_id\":2}";
    snprintf(name, sizeof name, "%s/config.json", sub);
    write_file(name, cfg, strlen(cfg));
}

static const char *hf_names[N_TINY] = {
    "model.embed_tokens.weight", "model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight",
    "model.layers.0.post_attention_layernorm.weight", "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight",
    "model.layers.0.mlp.down_proj.weight", "model.norm.weight"};

/* Value of HF row r, column c of tensor t: the row index shows through. */
static float hf_value(int t, int64_t r, int64_t c) { return (float)(t * 1000 + r) + (float)c / 64.0f; }

static void st_add_tiny(stb *s, int t)
{
    int64_t rows = tiny[t].rows, cols = tiny[t].cols ? tiny[t].cols : 1;
    float *w = malloc((size_t)(rows * cols) * sizeof *w);
    char shape[64];
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) w[r * cols + c] = hf_value(t, r, c);
    if (tiny[t].cols) snprintf(shape, sizeof shape, "[%lld,%lld]", (long long)rows, (long long)cols);
    else snprintf(shape, sizeof shape, "[%lld]", (long long)rows);
    st_add(s, hf_names[t], "F32", shape, w, (size_t)(rows * cols) * 4);
    free(w);
}

static void make_subdir(const char *sub) { assert_int_equal(mkdir(path_of(sub), 0755), 0); }

static void check_tiny_st(mdl_model *m)
{
    const mdl_config *c = mdl_get_config(m);
    assert_string_equal(mdl_format(m), "safetensors");
    assert_int_equal(c->dim, DIM);
    assert_int_equal(c->head_dim, HD);
    assert_int_equal(c->rope_scaling, MDL_ROPE_LINEAR);
    assert_true(c->rope_scale == 2.0f && c->norm_eps == 1e-5f);
    assert_int_equal(c->tied_embeddings, 1); /* no lm_head tensor */
    const mdl_tensor *q = mdl_find(m, "blk.0.attn_q.weight"), *k = mdl_find(m, "blk.0.attn_k.weight");
    assert_non_null(q), assert_non_null(k);
    assert_int_equal(q->permute_rope_heads, HEADS);
    assert_int_equal(k->permute_rope_heads, KV);
    assert_int_equal(mdl_find(m, "blk.0.attn_v.weight")->permute_rope_heads, 0);
    float *w = malloc((size_t)FFN * DIM * sizeof *w); /* the biggest tensor read here */
    assert_int_equal(mdl_tensor_to_f32(m, q, w), 0);
    /* GGUF row 2i of a head is HF row i, row 2i+1 is HF row i + HD/2 */
    for (int h = 0; h < HEADS; h++)
        for (int i = 0; i < HD / 2; i++)
            for (int col = 0; col < DIM; col += 7) {
                assert_true(w[(h * HD + 2 * i) * DIM + col] == hf_value(2, h * HD + i, col));
                assert_true(w[(h * HD + 2 * i + 1) * DIM + col] == hf_value(2, h * HD + HD / 2 + i, col));
            }
    assert_int_equal(mdl_tensor_to_f32(m, mdl_find(m, "blk.0.ffn_up.weight"), w), 0);
    assert_true(w[3 * DIM + 5] == hf_value(8, 3, 5));
    free(w);
    int64_t v;
    assert_int_equal(mdl_meta_int(m, "config.max_position_embeddings", &v), 0);
    assert_int_equal(v, 64);
}

static void test_st_single_round_trip(void **state)
{
    (void)state;
    stb s = {0};
    mdl_model *m;
    char err[MDL_ERR_LEN];
    make_subdir("one");
    write_config("one");
    for (int t = 0; t < N_TINY; t++) st_add_tiny(&s, t);
    const char *p = st_write(&s, "one/model.safetensors");
    if (mdl_open(p, &m, err, sizeof err)) fail_msg("%s", err);
    check_tiny_st(m);
    mdl_close(m);
    if (mdl_open(path_of("one"), &m, err, sizeof err)) fail_msg("%s", err); /* the folder */
    check_tiny_st(m);
    mdl_close(m);
}

static void test_st_sharded_round_trip(void **state)
{
    (void)state;
    stb s = {0};
    mdl_model *m;
    char err[MDL_ERR_LEN], entry[160];
    buf idx = {0};
    make_subdir("two");
    write_config("two");
    put(&idx, "{\"metadata\":{},\"weight_map\":{", 29);
    for (int t = 0; t < N_TINY; t++) {
        snprintf(entry, sizeof entry, "%s\"%s\":\"model-0000%d-of-00002.safetensors\"", t ? "," : "", hf_names[t], t < 5 ? 1 : 2);
        put(&idx, entry, strlen(entry));
    }
    put(&idx, "}}", 2);
    const char *ip = write_file("two/model.safetensors.index.json", idx.p, idx.n);
    for (int t = 5; t < N_TINY; t++) st_add_tiny(&s, t);
    st_write(&s, "two/model-00002-of-00002.safetensors");
    expect_fail_in(ip, "two/model-00001-of-00002.safetensors", "No such file"); /* shard 1 missing */
    for (int t = 0; t < 5; t++) st_add_tiny(&s, t);
    st_write(&s, "two/model-00001-of-00002.safetensors");
    if (mdl_open(path_of("two"), &m, err, sizeof err)) fail_msg("%s", err);
    check_tiny_st(m);
    assert_int_equal(mdl_tensor_count(m), N_TINY);
    mdl_close(m);
    /* the index names a tensor that no shard holds */
    idx.n -= 2;
    const char *extra = ",\"lm_head.weight\":\"model-00002-of-00002.safetensors\"}}";
    put(&idx, extra, strlen(extra));
    expect_fail(write_file("two/model.safetensors.index.json", idx.p, idx.n), "'lm_head.weight' is not in");
    free(idx.p);
}

static void test_st_tokenizer_json(void **state)
{
    (void)state;
    stb s = {0};
    mdl_model *m;
    char err[MDL_ERR_LEN];
    const char *tj = "{\"added_tokens\":[{\"id\":0,\"content\":\"<|endoftext|>\",\"special\":true},"
                     "{\"id\":9,\"content\":\"<|im_end|>\",\"special\":true}],"
                     "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true},"
                     "\"model\":{\"type\":\"BPE\",\"vocab\":{\"<|endoftext|>\":0,\"<s>\":1,\"</s>\":2,\"a\":3,\"b\":4,\"ab\":5,"
                     "\"\\u0120\":6,\"c\":7},\"merges\":[[\"a\",\"b\"],\"ab c\"]}}";
    make_subdir("tok");
    write_config("tok");
    write_file("tok/tokenizer.json", tj, strlen(tj));
    for (int t = 0; t < N_TINY; t++) st_add_tiny(&s, t);
    st_write(&s, "tok/model.safetensors");
    if (mdl_open(path_of("tok"), &m, err, sizeof err)) fail_msg("%s", err);
    memset(&seen, 0, sizeof seen);
    assert_non_null(mdl_tokenizer(m, err, sizeof err));
    assert_int_equal(seen.kind, TOK_BPE_BYTES);
    assert_int_equal(seen.n_vocab, 10); /* ids 0..9, 8 unused */
    assert_int_equal(seen.n_merges, 2);
    assert_string_equal(seen.merge0, "a b");
    assert_string_equal(seen.tok3, "a");
    assert_string_equal(seen.last, "<|im_end|>");
    assert_string_equal(seen.pre, "gpt2");
    assert_int_equal(seen.bos, 1);
    assert_int_equal(seen.eos, 2);
    mdl_close(m);
}

/* One tensor entry written as given; the file otherwise fine. */
static const char *st_one(const char *name, const char *dtype, const char *shape, size_t bytes, const char *hf)
{
    stb s = {0};
    uint8_t *d = calloc(1, bytes + 1);
    st_add(&s, hf ? hf : "model.norm.weight", dtype, shape, d, bytes);
    free(d);
    return st_write(&s, name);
}

static void test_st_broken(void **state)
{
    (void)state;
    char hdr[64];
    make_subdir("bad");
    write_config("bad");
    expect_fail(write_file("bad/short.safetensors", "\x10\0\0", 3), "truncated");
    memcpy(hdr, "\xff\xff\0\0\0\0\0\0{}", 10);
    expect_fail(write_file("bad/hlen.safetensors", hdr, 10), "header length 65535 runs past the end");
    memcpy(hdr, "\x08\0\0\0\0\0\0\0{\"a\":[1,", 16);
    expect_fail(write_file("bad/json.safetensors", hdr, 16), "bad JSON");
    expect_fail(st_one("bad/dtype.safetensors", "F7", "[4]", 8, NULL), "unknown dtype 'F7'");
    expect_fail(st_one("bad/i64.safetensors", "I64", "[4]", 32, NULL), "dtype I64 is not supported");
    expect_fail(st_one("bad/zero.safetensors", "F32", "[0]", 0, NULL), "is 0");
    expect_fail(st_one("bad/ndim.safetensors", "F32", "[1,1,1,1,1]", 4, NULL), "5 dimensions");
    expect_fail(st_one("bad/scalar.safetensors", "F32", "[]", 4, NULL), "0 dimensions");
    expect_fail(st_one("bad/over.safetensors", "F32", "[1099511627776,1099511627776]", 4, NULL), "overflows");
    expect_fail(st_one("bad/size.safetensors", "F32", "[4]", 12, NULL), "the shape needs 16");
    expect_fail(st_one("bad/frac.safetensors", "F32", "[4.5]", 18, NULL), "not a non-negative integer");
    /* data past the end: the header says 16 bytes, the file holds 8 */
    const char *h = "{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
    char file[160] = {0};
    size_t hl = strlen(h);
    uint64_t n = (hl + 7) / 8 * 8;
    memcpy(file, &n, 8);
    memset(file + 8, ' ', n);
    memcpy(file + 8, h, hl);
    expect_fail(write_file("bad/past.safetensors", file, 8 + n + 8), "runs past the end of the file");
    /* misaligned: F32 data starting 2 bytes in */
    stb s = {0};
    uint8_t z[32] = {0};
    st_add(&s, "model.layers.0.input_layernorm.weight", "F16", "[1]", z, 2);
    st_add(&s, "model.norm.weight", "F32", "[4]", z, 16);
    expect_fail(st_write(&s, "bad/misaligned.safetensors"), "misaligned");
    /* two names for one canonical tensor */
    st_add(&s, "model.norm.weight", "F32", "[4]", z, 16);
    st_add(&s, "output_norm.weight", "F32", "[4]", z, 16);
    expect_fail(st_write(&s, "bad/dup.safetensors"), "duplicate tensor name 'output_norm.weight'");
    /* a fine file, but no config.json next to it */
    make_subdir("nocfg");
    expect_fail_in(st_one("nocfg/model.safetensors", "F32", "[4]", 16, NULL), "nocfg/config.json", "No such file");
    expect_fail(path_of("nocfg/none.safetensors"), "No such file");
}

/* ==== Dequantization of hand-built blocks ==== */

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

static void test_dequant_scalars(void **state)
{
    (void)state;
    uint8_t h[16];
    float y[8];
    const uint16_t f16[8] = {0x3C00, 0xC000, 0x0001, 0x7BFF, 0x8000, 0x7C00, 0x3555, 0x0400};
    const float want16[8] = {1.0f, -2.0f, 5.9604644775390625e-8f, 65504.0f, -0.0f, INFINITY, 0.333251953125f, 6.103515625e-5f};
    for (int i = 0; i < 8; i++) put16(h + 2 * i, f16[i]);
    mdl_dequant_row(MDL_F16, h, y, 8);
    for (int i = 0; i < 8; i++) assert_true(y[i] == want16[i] && signbit(y[i]) == signbit(want16[i]));
    const uint16_t b16[4] = {0x3F80, 0xC040, 0x0001, 0x7F80};
    const float wantb[4] = {1.0f, -3.0f, 9.18354961579912115600575419705e-41f, INFINITY};
    for (int i = 0; i < 4; i++) put16(h + 2 * i, b16[i]);
    mdl_dequant_row(MDL_BF16, h, y, 4);
    for (int i = 0; i < 4; i++) assert_true(y[i] == wantb[i]);
    assert_int_equal(mdl_block_size(MDL_Q4_K), 256);
    assert_int_equal(mdl_row_bytes(MDL_Q6_K, 512), 420);
    assert_int_equal(mdl_row_bytes(MDL_Q8_0, 64), 68);
    assert_int_equal(mdl_row_bytes(MDL_Q4_1, 32), 20);
    assert_string_equal(mdl_dtype_name(MDL_Q5_K), "Q5_K");
}

static void test_dequant_q8_0_q4_0_q4_1(void **state)
{
    (void)state;
    uint8_t b[34];
    float y[32];
    put16(b, 0x3800); /* d = 0.5 */
    for (int j = 0; j < 32; j++) b[2 + j] = (uint8_t)(int8_t)(j * 8 - 128);
    mdl_dequant_row(MDL_Q8_0, b, y, 32);
    for (int j = 0; j < 32; j++) assert_true(y[j] == 0.5f * (float)(j * 8 - 128));

    put16(b, 0x4000); /* d = 2 */
    for (int j = 0; j < 16; j++) b[2 + j] = (uint8_t)(j | (15 - j) << 4);
    mdl_dequant_row(MDL_Q4_0, b, y, 32);
    for (int j = 0; j < 16; j++) {
        assert_true(y[j] == 2.0f * (float)(j - 8));        /* low nibbles: values 0..15 */
        assert_true(y[j + 16] == 2.0f * (float)(7 - j));   /* high nibbles: values 16..31 */
    }

    put16(b, 0x3400), put16(b + 2, 0xBC00); /* d = 0.25, m = -1 */
    for (int j = 0; j < 16; j++) b[4 + j] = (uint8_t)(j | (15 - j) << 4);
    mdl_dequant_row(MDL_Q4_1, b, y, 32);
    for (int j = 0; j < 16; j++) {
        assert_true(y[j] == 0.25f * (float)j - 1.0f);
        assert_true(y[j + 16] == 0.25f * (float)(15 - j) - 1.0f);
    }
}

/* Packs eight 6-bit scales and mins into the 12 bytes of Q4_K/Q5_K. */
static void pack_scales(uint8_t s[12], const int sc[8], const int mn[8])
{
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)((sc[j] & 63) | (sc[j + 4] >> 4) << 6);
        s[j + 4] = (uint8_t)((mn[j] & 63) | (mn[j + 4] >> 4) << 6);
        s[j + 8] = (uint8_t)((sc[j + 4] & 15) | (mn[j + 4] & 15) << 4);
    }
}

static const int ksc[8] = {1, 2, 3, 4, 17, 33, 50, 63}, kmn[8] = {0, 5, 10, 15, 20, 40, 60, 63};

/* 4-bit value l (0..31) of sub-block j: sub-blocks 2k, 2k+1 share 32 bytes. */
static int k_nibble(const uint8_t *qs, int j, int l) { return j % 2 ? qs[32 * (j / 2) + l] >> 4 : qs[32 * (j / 2) + l] & 15; }

static void test_dequant_q4_k(void **state)
{
    (void)state;
    uint8_t b[144];
    float y[256];
    put16(b, 0x3C00), put16(b + 2, 0x3800); /* d = 1, dmin = 0.5 */
    pack_scales(b + 4, ksc, kmn);
    for (int i = 0; i < 128; i++) b[16 + i] = (uint8_t)(i * 37 + 11);
    mdl_dequant_row(MDL_Q4_K, b, y, 256);
    for (int j = 0; j < 8; j++)
        for (int l = 0; l < 32; l++)
            assert_true(y[32 * j + l] == (float)(ksc[j] * k_nibble(b + 16, j, l)) - 0.5f * (float)kmn[j]);
}

static void test_dequant_q5_k(void **state)
{
    (void)state;
    uint8_t b[176];
    float y[256];
    put16(b, 0x3C00), put16(b + 2, 0x3800);
    pack_scales(b + 4, ksc, kmn);
    for (int i = 0; i < 32; i++) b[16 + i] = (uint8_t)(i * 73 + 5); /* bit j of qh[l]: fifth bit of sub-block j */
    for (int i = 0; i < 128; i++) b[48 + i] = (uint8_t)(i * 37 + 11);
    mdl_dequant_row(MDL_Q5_K, b, y, 256);
    for (int j = 0; j < 8; j++)
        for (int l = 0; l < 32; l++) {
            int q = k_nibble(b + 48, j, l) + 16 * ((b[16 + l] >> j) & 1);
            assert_true(y[32 * j + l] == (float)(ksc[j] * q) - 0.5f * (float)kmn[j]);
        }
}

static void test_dequant_q6_k(void **state)
{
    (void)state;
    uint8_t b[210];
    float y[256];
    for (int i = 0; i < 128; i++) b[i] = (uint8_t)(i * 29 + 3);
    for (int i = 0; i < 64; i++) b[128 + i] = (uint8_t)(i * 53 + 7);
    for (int i = 0; i < 16; i++) b[192 + i] = (uint8_t)(int8_t)(i * 9 - 70);
    put16(b + 208, 0x3400); /* d = 0.25 */
    mdl_dequant_row(MDL_Q6_K, b, y, 256);
    /* value v: half h = v / 128, w = v % 128, quarter g = w / 32, l = w % 32;
     * low 4 bits from ql[64h + l + 32(g & 1)] (low nibble for g < 2, high else),
     * high 2 bits from qh[32h + l] >> 2g; scale sc[8h + l/16 + 2g] */
    for (int v = 0; v < 256; v++) {
        int h = v / 128, w = v % 128, g = w / 32, l = w % 32;
        int lo = b[64 * h + l + 32 * (g & 1)], q = (g < 2 ? lo & 15 : lo >> 4) | ((b[128 + 32 * h + l] >> (2 * g)) & 3) << 4;
        float sc = (float)(int8_t)b[192 + 8 * h + l / 16 + 2 * g];
        assert_true(y[v] == 0.25f * sc * (float)(q - 32));
    }
}

/* ==== SHA-256 and JSON ==== */

static void sha_hex(const void *d, size_t n, size_t chunk, char hex[65])
{
    mdl_sha256 s;
    uint8_t out[32];
    mdl_sha256_init(&s);
    for (size_t i = 0; i < n; i += chunk) mdl_sha256_update(&s, (const uint8_t *)d + i, n - i < chunk ? n - i : chunk);
    mdl_sha256_final(&s, out);
    mdl_sha256_hex(out, hex);
}

static void test_sha256_vectors(void **state)
{
    (void)state;
    char hex[65];
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sha_hex("", 0, 1, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    sha_hex("abc", 3, 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    for (size_t chunk = 1; chunk <= 64; chunk += 7) {
        sha_hex(two, strlen(two), chunk, hex);
        assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    }
    char *a = malloc(1000000);
    memset(a, 'a', 1000000);
    sha_hex(a, 1000000, 4099, hex);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(a);
}

static void test_json(void **state)
{
    (void)state;
    char err[128];
    const char *t = " {\"a\": [1, -2.5e1, true, null], \"s\": \"x\\n\\u00e9\\ud83d\\ude00\\\"\", \"o\": {\"k\": 7}} ";
    util_json *j = util_json_parse(t, strlen(t), err, sizeof err);
    if (!j) fail_msg("%s", err);
    const util_json *a = util_json_get(j, "a");
    assert_int_equal(a->n, 4);
    assert_true(a->items[1].num == -25.0 && !a->items[1].is_int && a->items[0].is_int);
    assert_int_equal(a->items[2].type, UTIL_JSON_BOOL);
    assert_string_equal(util_json_str(j, "s"), "x\n\xc3\xa9\xf0\x9f\x98\x80\"");
    assert_int_equal(util_json_int(util_json_get(j, "o"), "k", 0), 7);
    assert_int_equal(util_json_int(j, "missing", 42), 42);
    util_json_free(j);
    static const char *bad[] = {"", "{", "[1,]", "{\"a\" 1}", "\"\\q\"", "\"\\ud800\"", "01x", "[1] 2", "\"a\x01\"", "tru"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        assert_null(util_json_parse(bad[i], strlen(bad[i]), err, sizeof err));
        assert_non_null(strstr(err, "offset"));
    }
    char deep[200];
    memset(deep, '[', sizeof deep);
    assert_null(util_json_parse(deep, sizeof deep, err, sizeof err));
    assert_non_null(strstr(err, "too deep"));
}

/* ==== Set-up ==== */

static int make_dir(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/bitplan-test-model-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int remove_dir(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gguf_round_trip),
        cmocka_unit_test(test_gguf_metadata_types),
        cmocka_unit_test(test_gguf_vocab_to_tokenizer),
        cmocka_unit_test(test_gguf_alignment_and_hash),
        cmocka_unit_test(test_gguf_bad_headers),
        cmocka_unit_test(test_gguf_bad_tensors),
        cmocka_unit_test(test_gguf_truncated_everywhere),
        cmocka_unit_test(test_st_single_round_trip),
        cmocka_unit_test(test_st_sharded_round_trip),
        cmocka_unit_test(test_st_tokenizer_json),
        cmocka_unit_test(test_st_broken),
        cmocka_unit_test(test_dequant_scalars),
        cmocka_unit_test(test_dequant_q8_0_q4_0_q4_1),
        cmocka_unit_test(test_dequant_q4_k),
        cmocka_unit_test(test_dequant_q5_k),
        cmocka_unit_test(test_dequant_q6_k),
        cmocka_unit_test(test_sha256_vectors),
        cmocka_unit_test(test_json),
    };
    return cmocka_run_group_tests(tests, make_dir, remove_dir);
}
