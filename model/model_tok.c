/*
 * model/model_tok.c — mdl_tokenizer: gathers the vocabulary a model file holds
 * (GGUF tokenizer.ggml.* arrays, or tokenizer.json beside safetensors) into a
 * tok_vocab and hands it to tok_new (model/tokenizer.c).
 *
 * It must never tokenize anything itself, nor keep the temporary arrays: tok_new
 * copies what it needs. It lives in its own file so that programs that never ask
 * for a tokenizer do not link the tokenizer (model.c reaches tok_free only through
 * the pointer set here).
 */
#include "model_int.h"
#include "tok_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_VOCAB 10000000

/* Everything a tok_vocab points to, freed together after tok_new. */
typedef struct {
    tok_vocab v;
    tok_str *tokens, *merges;
    int32_t *types;
    float *scores;
    char **owned; /* merge strings built from [a, b] pairs */
    int n_owned;
    util_json *json;
    char *text;
} vocab_build;

static void build_free(vocab_build *b)
{
    free(b->tokens);
    free(b->merges);
    free(b->types);
    free(b->scores);
    for (int i = 0; i < b->n_owned; i++) free(b->owned[i]);
    free(b->owned);
    util_json_free(b->json);
    free(b->text);
}

static int meta_id(const mdl_model *m, const char *key, int n_vocab)
{
    int64_t v;
    return mdl_meta_int(m, key, &v) || v < 0 || v >= n_vocab ? -1 : (int)v;
}

/* ==== GGUF ==== */

/* 0, -1 for a key that is not an array of strings, -2 if out of memory. */
static int gguf_strings(const mdl_kv *kv, tok_str **out, int *n_out)
{
    uint64_t pos = 0;
    if (!kv || kv->type != MDL_GV_ARR || kv->arr_type != MDL_GV_STR || kv->arr_n > MAX_VOCAB) return -1;
    tok_str *s = malloc((size_t)(kv->arr_n ? kv->arr_n : 1) * sizeof *s);
    if (!s) return -2;
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        uint64_t len;
        if (mdl_kv_str_at(kv, &pos, &s[i].s, &len)) { free(s); return -1; }
        s[i].len = (size_t)len;
    }
    *out = s;
    *n_out = (int)kv->arr_n;
    return 0;
}

/* A numeric array of exactly n elements of the given GGUF type, copied to *out;
 * *out stays NULL if there is none. 0, or -1 if out of memory. */
static int gguf_numbers(const mdl_kv *kv, uint32_t type, int n, void **out)
{
    if (!kv || kv->type != MDL_GV_ARR || kv->arr_type != type || kv->arr_n != (uint64_t)n || !n) return 0;
    if (!(*out = malloc((size_t)n * 4))) return -1;
    memcpy(*out, kv->arr, (size_t)n * 4);
    return 0;
}

static int vocab_from_gguf(const mdl_model *m, vocab_build *b, char *err, size_t err_len)
{
    const char *model, *pre;
    tok_vocab *v = &b->v;
    if (mdl_meta_str(m, "tokenizer.ggml.model", &model)) return mdl_errf(err, err_len, "%s: no tokenizer in the file", m->path);
    if (!strcmp(model, "gpt2")) v->kind = TOK_BPE_BYTES;
    else if (!strcmp(model, "llama")) v->kind = TOK_SPM;
    else return mdl_errf(err, err_len, "%s: tokenizer model '%s' is not supported (gpt2, llama)", m->path, model);
    int rc = gguf_strings(mdl_kv_find(m, "tokenizer.ggml.tokens"), &b->tokens, &v->n_vocab);
    if (rc == -2) return mdl_errf(err, err_len, "%s: out of memory for the tokenizer", m->path);
    if (rc || !v->n_vocab) return mdl_errf(err, err_len, "%s: tokenizer.ggml.tokens is missing or not an array of strings", m->path);
    const mdl_kv *merges = mdl_kv_find(m, "tokenizer.ggml.merges");
    if (merges && (rc = gguf_strings(merges, &b->merges, &v->n_merges)))
        return mdl_errf(err, err_len, rc == -2 ? "%s: out of memory for the tokenizer" : "%s: tokenizer.ggml.merges is not an array of strings",
                        m->path);
    void *types = NULL, *scores = NULL;
    rc = gguf_numbers(mdl_kv_find(m, "tokenizer.ggml.token_type"), MDL_GV_I32, v->n_vocab, &types) ||
         gguf_numbers(mdl_kv_find(m, "tokenizer.ggml.scores"), MDL_GV_F32, v->n_vocab, &scores);
    b->types = types, b->scores = scores;
    if (rc) return mdl_errf(err, err_len, "%s: out of memory for the tokenizer", m->path);
    v->tokens = b->tokens, v->merges = b->merges, v->types = b->types, v->scores = b->scores;
    v->pre = mdl_meta_str(m, "tokenizer.ggml.pre", &pre) ? NULL : pre;
    v->bos = meta_id(m, "tokenizer.ggml.bos_token_id", v->n_vocab);
    v->eos = meta_id(m, "tokenizer.ggml.eos_token_id", v->n_vocab);
    v->unk = meta_id(m, "tokenizer.ggml.unknown_token_id", v->n_vocab);
    int64_t asp;
    v->add_space_prefix = mdl_meta_int(m, "tokenizer.ggml.add_space_prefix", &asp) ? v->kind == TOK_SPM : asp != 0;
    return 0;
}

/* ==== tokenizer.json ==== */

static int json_tokens(vocab_build *b, const util_json *vocab, const util_json *added, const char *path, char *err, size_t err_len)
{
    int n = 0;
    for (int i = 0; i < vocab->n; i++) {
        const util_json *id = &vocab->items[i];
        if (id->type != UTIL_JSON_NUM || !id->is_int || id->num < 0 || id->num >= MAX_VOCAB)
            return mdl_errf(err, err_len, "%s: vocab id of '%s' is not a valid id", path, vocab->keys[i]);
        if ((int)id->num + 1 > n) n = (int)id->num + 1;
    }
    for (int i = 0; added && i < added->n; i++) {
        int id = util_json_int(&added->items[i], "id", -1);
        if (id < 0 || id >= MAX_VOCAB || !util_json_str(&added->items[i], "content"))
            return mdl_errf(err, err_len, "%s: added_tokens[%d] has no valid id or content", path, i);
        if (id + 1 > n) n = id + 1;
    }
    b->tokens = calloc((size_t)(n ? n : 1), sizeof *b->tokens);
    b->types = malloc((size_t)(n ? n : 1) * sizeof *b->types);
    if (!b->tokens || !b->types) return mdl_errf(err, err_len, "%s: out of memory", path);
    for (int i = 0; i < n; i++) b->tokens[i].s = "", b->types[i] = TOK_TYPE_UNUSED;
    for (int i = 0; i < vocab->n; i++) {
        int id = (int)vocab->items[i].num;
        b->tokens[id].s = vocab->keys[i], b->tokens[id].len = strlen(vocab->keys[i]), b->types[id] = TOK_TYPE_NORMAL;
    }
    for (int i = 0; added && i < added->n; i++) {
        const util_json *a = &added->items[i];
        const util_json *content = util_json_get(a, "content"), *special = util_json_get(a, "special");
        int id = util_json_int(a, "id", -1);
        b->tokens[id].s = content->str, b->tokens[id].len = content->len;
        b->types[id] = special && special->type == UTIL_JSON_BOOL && special->boolean ? TOK_TYPE_CONTROL : TOK_TYPE_USER_DEFINED;
    }
    b->v.n_vocab = n;
    return 0;
}

/* Merges are "a b" strings, or [a, b] pairs in newer files. */
static int json_merges(vocab_build *b, const util_json *merges, const char *path, char *err, size_t err_len)
{
    if (!merges) return 0;
    if (merges->type != UTIL_JSON_ARR) return mdl_errf(err, err_len, "%s: model.merges is not an array", path);
    b->merges = malloc((size_t)(merges->n ? merges->n : 1) * sizeof *b->merges);
    b->owned = malloc((size_t)(merges->n ? merges->n : 1) * sizeof *b->owned);
    if (!b->merges || !b->owned) return mdl_errf(err, err_len, "%s: out of memory", path);
    for (int i = 0; i < merges->n; i++) {
        const util_json *e = &merges->items[i];
        if (e->type == UTIL_JSON_STR) {
            b->merges[i].s = e->str, b->merges[i].len = e->len;
            continue;
        }
        if (e->type != UTIL_JSON_ARR || e->n != 2 || e->items[0].type != UTIL_JSON_STR || e->items[1].type != UTIL_JSON_STR)
            return mdl_errf(err, err_len, "%s: model.merges[%d] is neither \"a b\" nor [a, b]", path, i);
        size_t la = e->items[0].len, lb = e->items[1].len;
        char *s = malloc(la + lb + 2);
        if (!s) return mdl_errf(err, err_len, "%s: out of memory", path);
        memcpy(s, e->items[0].str, la);
        s[la] = ' ';
        memcpy(s + la + 1, e->items[1].str, lb + 1);
        b->owned[b->n_owned++] = s;
        b->merges[i].s = s, b->merges[i].len = la + lb + 1;
    }
    b->v.n_merges = merges->n;
    return 0;
}

/* Which pre-tokenizer: recognised from its parts (a tree of Sequence nodes). */
static void scan_pre(const util_json *p, int *split_llama3, int *digits, int *bytelevel_regex)
{
    const char *type = util_json_str(p, "type");
    if (!type) return;
    if (!strcmp(type, "Sequence")) {
        const util_json *list = util_json_get(p, "pretokenizers");
        for (int i = 0; list && list->type == UTIL_JSON_ARR && i < list->n; i++) scan_pre(&list->items[i], split_llama3, digits, bytelevel_regex);
    } else if (!strcmp(type, "Split")) {
        const char *re = util_json_str(util_json_get(p, "pattern"), "Regex");
        if (re && strstr(re, "\\p{N}{1,3}")) *split_llama3 = 1;
    } else if (!strcmp(type, "Digits")) {
        *digits = 1;
    } else if (!strcmp(type, "ByteLevel")) {
        const util_json *u = util_json_get(p, "use_regex");
        if (!u || (u->type == UTIL_JSON_BOOL && u->boolean)) *bytelevel_regex = 1;
    }
}

static const char *json_pre(const mdl_model *m, const util_json *root)
{
    const char *type;
    int llama3 = 0, digits = 0, gpt2 = 0;
    if (!mdl_meta_str(m, "config.model_type", &type) && !strcmp(type, "qwen2")) return "qwen2";
    scan_pre(util_json_get(root, "pre_tokenizer"), &llama3, &digits, &gpt2);
    return llama3 ? "llama-bpe" : digits ? "smollm" : gpt2 ? "gpt2" : NULL;
}

static int vocab_from_json(const mdl_model *m, vocab_build *b, char *err, size_t err_len)
{
    char path[4096], jerr[128];
    size_t len;
    snprintf(path, sizeof path, "%s/tokenizer.json", m->dir);
    if (!(b->text = util_read_file(path, 1u << 30, &len, err, err_len))) return -1;
    if (!(b->json = util_json_parse(b->text, len, jerr, sizeof jerr))) return mdl_errf(err, err_len, "%s: bad JSON: %s", path, jerr);
    const util_json *model = util_json_get(b->json, "model"), *vocab = util_json_get(model, "vocab");
    const util_json *added = util_json_get(b->json, "added_tokens"), *fallback = util_json_get(model, "byte_fallback");
    const char *type = util_json_str(model, "type");
    if (!type || strcmp(type, "BPE") || !vocab || vocab->type != UTIL_JSON_OBJ)
        return mdl_errf(err, err_len, "%s: tokenizer model '%s' is not supported (BPE with a vocab)", path, type ? type : "(missing)");
    if (added && added->type != UTIL_JSON_ARR) added = NULL;
    if (json_tokens(b, vocab, added, path, err, err_len) || json_merges(b, util_json_get(model, "merges"), path, err, err_len)) return -1;
    tok_vocab *v = &b->v;
    v->kind = fallback && fallback->type == UTIL_JSON_BOOL && fallback->boolean ? TOK_SPM : TOK_BPE_BYTES;
    if (v->kind == TOK_SPM) { /* SentencePiece BPE pieces are ranked by id */
        if (!(b->scores = malloc((size_t)v->n_vocab * sizeof *b->scores))) return mdl_errf(err, err_len, "%s: out of memory", path);
        for (int i = 0; i < v->n_vocab; i++) b->scores[i] = -(float)i;
        v->add_space_prefix = 1;
    }
    v->tokens = b->tokens, v->types = b->types, v->scores = b->scores, v->merges = b->merges;
    v->pre = json_pre(m, b->json);
    v->bos = meta_id(m, "config.bos_token_id", v->n_vocab);
    v->eos = meta_id(m, "config.eos_token_id", v->n_vocab);
    const util_json *eos = util_json_get(m->config_json, "eos_token_id"); /* Llama 3: a list, the first is the end of text */
    if (v->eos < 0 && eos && eos->type == UTIL_JSON_ARR && eos->n && eos->items[0].type == UTIL_JSON_NUM &&
        eos->items[0].num >= 0 && eos->items[0].num < v->n_vocab)
        v->eos = (int)eos->items[0].num;
    v->unk = -1;
    const char *unk = util_json_str(model, "unk_token");
    const util_json *unk_id = unk ? util_json_get(vocab, unk) : NULL;
    if (unk_id) v->unk = (int)unk_id->num;
    return 0;
}

tok_tokenizer *mdl_tokenizer(mdl_model *m, char *err, size_t err_len)
{
    if (m->tok) return m->tok;
    if (mdl_is_packed(m)) {
        if ((m->tok = mdl_packed_tokenizer(m, err, err_len))) m->tok_free = tok_free;
        return m->tok;
    }
    vocab_build b;
    memset(&b, 0, sizeof b);
    int rc = !strcmp(m->format, "gguf") ? vocab_from_gguf(m, &b, err, err_len) : vocab_from_json(m, &b, err, err_len);
    if (!rc) {
        char terr[MDL_ERR_LEN];
        m->tok = tok_new(&b.v, terr, sizeof terr);
        if (!m->tok) mdl_errf(err, err_len, "%s: tokenizer: %s", m->path, terr);
        else m->tok_free = tok_free;
    }
    build_free(&b);
    return m->tok;
}

/* ==== Export: the "tokenizer" metadata of a packed file (pack/FORMAT.md) ==== */

static void jb_strs(sb_buf *b, const char *key, const tok_str *v, int n)
{
    sb_printf(b, ",\"%s\":[", key);
    for (int i = 0; i < n; i++) {
        if (i) sb_putn(b, ",", 1);
        sb_json_string_n(b, v[i].s, v[i].len);
    }
    sb_putn(b, "]", 1);
}

static int add_bos_of(const mdl_model *m, tok_kind kind)
{
    int64_t v;
    if (!mdl_meta_int(m, "tokenizer.ggml.add_bos_token", &v)) return v != 0;
    if (!mdl_meta_int(m, "config.add_bos_token", &v)) return v != 0;
    return kind == TOK_SPM;
}

static char *vocab_json(const mdl_model *m, const tok_vocab *v)
{
    sb_buf b = {0};
    sb_printf(&b, "{\"kind\":\"%s\",\"pre\":", v->kind == TOK_SPM ? "spm" : "bpe_bytes");
    if (v->pre) sb_json_string_n(&b, v->pre, strlen(v->pre));
    else sb_putn(&b, "null", 4);
    jb_strs(&b, "tokens", v->tokens, v->n_vocab);
    sb_putn(&b, ",\"types\":", 9);
    for (int i = 0; v->types && i < v->n_vocab; i++) sb_printf(&b, "%c%d", i ? ',' : '[', (int)v->types[i]);
    sb_putn(&b, v->types ? "]" : "null", v->types ? 1 : 4);
    sb_putn(&b, ",\"scores\":", 10);
    for (int i = 0; v->scores && i < v->n_vocab; i++) sb_printf(&b, "%c%.9g", i ? ',' : '[', (double)v->scores[i]);
    sb_putn(&b, v->scores ? "]" : "null", v->scores ? 1 : 4);
    jb_strs(&b, "merges", v->merges, v->n_merges);
    sb_printf(&b, ",\"bos\":%d,\"eos\":%d,\"unk\":%d,\"add_space_prefix\":%d,\"add_bos\":%d}", v->bos, v->eos, v->unk,
              v->add_space_prefix, add_bos_of(m, v->kind));
    if (b.oom) { free(b.s); return NULL; }
    return b.s;
}

/* JSON has no NaN or infinity: a vocabulary with such a score cannot be written. */
static int finite_scores(const mdl_model *m, const tok_vocab *v, char *err, size_t err_len)
{
    for (int i = 0; v->scores && i < v->n_vocab; i++)
        if (!isfinite(v->scores[i]))
            return mdl_errf(err, err_len, "%s: tokenizer: score of token %d is %g, not a finite number", m->path, i, (double)v->scores[i]);
    return 0;
}

char *mdl_tokenizer_json(mdl_model *m, char *err, size_t err_len)
{
    const char *s;
    if (mdl_is_packed(m)) {
        if (mdl_meta_str(m, "meta.tokenizer", &s)) { mdl_errf(err, err_len, "%s: no tokenizer in the file", m->path); return NULL; }
        char *copy = strdup(s);
        if (!copy) mdl_errf(err, err_len, "%s: out of memory", m->path);
        return copy;
    }
    vocab_build b;
    memset(&b, 0, sizeof b);
    char *out = NULL;
    int rc = !strcmp(m->format, "gguf") ? vocab_from_gguf(m, &b, err, err_len) : vocab_from_json(m, &b, err, err_len);
    if (!rc) rc = finite_scores(m, &b.v, err, err_len);
    if (!rc && !(out = vocab_json(m, &b.v))) mdl_errf(err, err_len, "%s: out of memory", m->path);
    build_free(&b);
    return out;
}
