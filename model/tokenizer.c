/*
 * model/tokenizer.c — text to token ids and back, for the two tokenizer families
 * that Llama-family model files carry:
 *
 *   TOK_BPE_BYTES  byte-level BPE as in GPT-2, SmolLM, Qwen2, Llama-3. Text is split
 *                  by a pre-tokenizer (a fixed regular expression, matched here by
 *                  hand), each piece's bytes become GPT-2's printable stand-in
 *                  characters, and merges apply by rank, lowest first, leftmost
 *                  first among equals.
 *   TOK_SPM        SentencePiece-style BPE as in Llama-2: spaces become U+2581, an
 *                  optional space is prepended, UTF-8 characters merge into the
 *                  highest-scoring vocabulary piece, leftmost first among equals,
 *                  and characters left unknown fall back to <0xNN> byte tokens.
 *
 * Special tokens (control, user-defined) written in the text are cut out first;
 * the pre-tokenizer and the merges never see across them. Both families decode
 * any token sequence back to bytes, so decode(encode(x)) == x for any bytes x
 * (SPM: for any x without U+2581; byte-level: if every byte has a token; a byte
 * the vocabulary lacks is dropped, as HF does: SmolLM2's lacks 21 of them).
 *
 * The tokenizer owns copies of everything it was given and never changes after
 * tok_new: encoding allocates its own scratch per call, so one tokenizer serves
 * many threads. It never reads files and never prints.
 */
#include "tok_int.h"
#include "unicode.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ==== The tokenizer ==== */

#define GPT2_CHARS 0x144 /* the stand-ins are U+0021..U+0143 */

typedef enum { PRE_GPT2 = 0, PRE_SMOLLM, PRE_LLAMA3, PRE_QWEN2 } pre_kind;

typedef struct { uint32_t off, len; } span;   /* a slice of a blob */

typedef struct {                              /* open addressing, power-of-two size */
    uint32_t *slot;                           /* id + 1, or 0 for empty */
    uint32_t mask;
} str_index;

typedef struct {                              /* (left id, right id) -> merge */
    uint64_t *key;                            /* left << 32 | right */
    int32_t *rank;                            /* -1: empty slot */
    int32_t *result;
    uint32_t mask;
} merge_index;

struct tok_tokenizer {
    tok_kind kind;
    pre_kind pre;
    int ignore_merges;        /* a whole piece found in the vocabulary is one token */
    int n_vocab;
    char *text_blob;          /* every token as stored, one after another */
    span *text;               /* [n_vocab] */
    char *piece_blob;         /* every token as the bytes it stands for */
    span *piece;              /* [n_vocab] */
    int32_t *type;            /* [n_vocab] TOK_TYPE_* */
    float *score;             /* [n_vocab] SPM scores (0 if none given) */
    str_index index;          /* stored text -> id (first id wins) */
    merge_index merges;       /* byte-level BPE only */
    int32_t byte_token[256];  /* byte-level: token of a byte's stand-in; SPM: <0xNN>; -1 */
    uint32_t char_of_byte[256];           /* GPT-2 stand-in code point of each byte */
    int16_t byte_of_char[GPT2_CHARS];     /* and back: the byte, or -1 */
    uint8_t special_first[256];           /* 1: some special token starts with this byte */
    int32_t *special;         /* ids matched in the text, longest first */
    int n_special;
    int bos, eos, unk;
    int add_space_prefix;
};

/* ==== Hashing ==== */

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint32_t h = 2166136261u;                 /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static uint32_t hash_u64(uint64_t x)
{
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
    return (uint32_t)x;
}

static uint32_t table_size(size_t n)
{
    uint32_t size = 16;
    while (size < 2 * n) size *= 2;
    return size;
}

static const char *tok_text(const tok_tokenizer *t, int id, size_t *len)
{
    *len = t->text[id].len;
    return t->text_blob + t->text[id].off;
}

/* The id whose stored text is s[0..n), or -1. */
static int index_find(const tok_tokenizer *t, const char *s, size_t n)
{
    for (uint32_t h = hash_bytes(s, n) & t->index.mask;; h = (h + 1) & t->index.mask) {
        uint32_t v = t->index.slot[h];
        if (!v) return -1;
        size_t len;
        const char *txt = tok_text(t, (int)v - 1, &len);
        if (len == n && !memcmp(txt, s, n)) return (int)v - 1;
    }
}

static int index_build(tok_tokenizer *t)
{
    t->index.mask = table_size((size_t)t->n_vocab) - 1;
    t->index.slot = calloc((size_t)t->index.mask + 1, sizeof *t->index.slot);
    if (!t->index.slot) return -1;
    for (int id = 0; id < t->n_vocab; id++) {
        size_t len;
        const char *s = tok_text(t, id, &len);
        if (index_find(t, s, len) >= 0) continue;      /* a duplicate: the first id keeps the text */
        uint32_t h = hash_bytes(s, len) & t->index.mask;
        while (t->index.slot[h]) h = (h + 1) & t->index.mask;
        t->index.slot[h] = (uint32_t)id + 1;
    }
    return 0;
}

static uint32_t merge_slot(const merge_index *m, uint64_t key)
{
    uint32_t h = hash_u64(key) & m->mask;
    while (m->rank[h] >= 0 && m->key[h] != key) h = (h + 1) & m->mask;
    return h;
}

/* The rank of merging left and right (and the merged id in *result), or -1. */
static int32_t merge_find(const tok_tokenizer *t, int32_t left, int32_t right, int32_t *result)
{
    if (!t->merges.rank) return -1;
    uint32_t h = merge_slot(&t->merges, (uint64_t)(uint32_t)left << 32 | (uint32_t)right);
    *result = t->merges.result[h];
    return t->merges.rank[h];
}

/* ==== Building: byte map, pieces, merges, special tokens ==== */

/* GPT-2's byte -> printable code point map: printable Latin-1 bytes stand for
 * themselves, the other 68 bytes take U+0100.. in byte order. */
static int gpt2_printable(int b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

static void build_byte_map(tok_tokenizer *t)
{
    uint32_t n = 0;
    for (int i = 0; i < GPT2_CHARS; i++) t->byte_of_char[i] = -1;
    for (int b = 0; b < 256; b++) {
        t->char_of_byte[b] = gpt2_printable(b) ? (uint32_t)b : 0x100u + n++;
        t->byte_of_char[t->char_of_byte[b]] = (int16_t)b;
    }
}

static int is_special_type(int32_t type)
{
    return type == TOK_TYPE_CONTROL || type == TOK_TYPE_USER_DEFINED || type == TOK_TYPE_UNKNOWN;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* The byte an SPM byte token "<0xNN>" stands for, or -1. */
static int spm_byte_value(const char *s, size_t len)
{
    if (len != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return -1;
    int hi = hex_digit(s[3]), lo = hex_digit(s[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

/* Writes the bytes token id stands for into out (room for its stored length);
 * returns their count. Byte-level: stand-ins back to bytes. SPM: U+2581 -> space,
 * <0xNN> -> the byte. Special tokens stand for their text. */
static size_t piece_bytes(const tok_tokenizer *t, int id, char *out)
{
    size_t len, n = 0;
    const char *s = tok_text(t, id, &len);
    if (is_special_type(t->type[id]) || t->type[id] == TOK_TYPE_UNUSED) {
        memcpy(out, s, len);
        return len;
    }
    int byte = t->kind == TOK_SPM && t->type[id] == TOK_TYPE_BYTE ? spm_byte_value(s, len) : -1;
    if (byte >= 0) { out[0] = (char)byte; return 1; }
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t k = uni_next(s + i, len - i, &cp);
        int b = t->kind == TOK_BPE_BYTES && cp < GPT2_CHARS ? t->byte_of_char[cp] : -1;
        if (b >= 0) out[n++] = (char)b;
        else if (t->kind == TOK_SPM && cp == 0x2581) out[n++] = ' ';
        else { memcpy(out + n, s + i, k); n += k; }
        i += k;
    }
    return n;
}

static int build_pieces(tok_tokenizer *t)
{
    size_t total = t->text[t->n_vocab - 1].off + t->text[t->n_vocab - 1].len;
    t->piece_blob = malloc(total + 1);
    t->piece = malloc((size_t)t->n_vocab * sizeof *t->piece);
    if (!t->piece_blob || !t->piece) return -1;
    uint32_t off = 0;
    for (int id = 0; id < t->n_vocab; id++) {
        size_t n = piece_bytes(t, id, t->piece_blob + off);
        t->piece[id] = (span){off, (uint32_t)n};
        off += (uint32_t)n;
    }
    return 0;
}

static void build_byte_tokens(tok_tokenizer *t)
{
    for (int b = 0; b < 256; b++) {
        char s[8];
        size_t n;
        if (t->kind == TOK_BPE_BYTES) n = uni_encode(t->char_of_byte[b], s);
        else n = (size_t)snprintf(s, sizeof s, "<0x%02X>", b);
        int id = index_find(t, s, n);
        t->byte_token[b] = id >= 0 && (t->kind == TOK_BPE_BYTES || t->type[id] == TOK_TYPE_BYTE) ? id : -1;
    }
}

/* Merges are "left right" with rank = index; a merge naming a token the
 * vocabulary lacks is skipped; a repeated pair keeps its first (lowest) rank. */
static int build_merges(tok_tokenizer *t, const tok_vocab *v, char *err, size_t err_len)
{
    merge_index *m = &t->merges;
    m->mask = table_size((size_t)v->n_merges) - 1;
    m->key = malloc(((size_t)m->mask + 1) * sizeof *m->key);
    m->rank = malloc(((size_t)m->mask + 1) * sizeof *m->rank);
    m->result = malloc(((size_t)m->mask + 1) * sizeof *m->result);
    char *joined = NULL;
    if (!m->key || !m->rank || !m->result) goto oom;
    memset(m->rank, 0xFF, ((size_t)m->mask + 1) * sizeof *m->rank);
    size_t cap = 0;
    for (int r = 0; r < v->n_merges; r++) {
        const char *s = v->merges[r].s;
        size_t len = v->merges[r].len;
        const char *sp = s ? memchr(s, ' ', len) : NULL;
        if (!sp) { snprintf(err, err_len, "merge %d has no space between its two tokens", r); goto fail; }
        size_t nl = (size_t)(sp - s), nr = len - nl - 1;
        if (len > cap) {
            cap = 2 * len;
            char *nj = realloc(joined, cap);
            if (!nj) goto oom;
            joined = nj;
        }
        memcpy(joined, s, nl);
        memcpy(joined + nl, sp + 1, nr);
        int left = index_find(t, s, nl), right = index_find(t, sp + 1, nr), res = index_find(t, joined, nl + nr);
        if (left < 0 || right < 0 || res < 0) continue;
        uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
        uint32_t h = merge_slot(m, key);
        if (m->rank[h] >= 0) continue;
        m->key[h] = key, m->rank[h] = r, m->result[h] = res;
    }
    free(joined);
    return 0;
oom:
    snprintf(err, err_len, "out of memory for %d merges", v->n_merges);
fail:
    free(joined);
    return -1;
}

static int by_length_desc(const void *a, const void *b, void *ctx)
{
    const tok_tokenizer *t = ctx;
    int x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (t->text[x].len != t->text[y].len) return t->text[x].len > t->text[y].len ? -1 : 1;
    return x < y ? -1 : x > y;
}

static int build_specials(tok_tokenizer *t)
{
    t->special = malloc((size_t)t->n_vocab * sizeof *t->special);
    if (!t->special) return -1;
    for (int id = 0; id < t->n_vocab; id++)
        if (is_special_type(t->type[id]) && t->text[id].len > 0) {
            t->special[t->n_special++] = id;
            t->special_first[(unsigned char)t->text_blob[t->text[id].off]] = 1;
        }
    qsort_r(t->special, (size_t)t->n_special, sizeof *t->special, by_length_desc, t);
    return 0;
}

static int pre_from_name(const char *name, pre_kind *out)
{
    static const struct { const char *name; pre_kind pre; } names[] = {
        {"default", PRE_GPT2}, {"gpt2", PRE_GPT2}, {"gpt-2", PRE_GPT2},
        {"smollm", PRE_SMOLLM}, {"starcoder", PRE_SMOLLM}, {"refact", PRE_SMOLLM},
        {"llama-bpe", PRE_LLAMA3}, {"llama3", PRE_LLAMA3}, {"llama-v3", PRE_LLAMA3},
        {"qwen2", PRE_QWEN2}, {"deepseek-r1-qwen", PRE_QWEN2},
    };
    if (!name || !*name) { *out = PRE_GPT2; return 0; }
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!strcmp(name, names[i].name)) { *out = names[i].pre; return 0; }
    return -1;
}

static int check_vocab(const tok_vocab *v, char *err, size_t err_len)
{
    if (v->kind != TOK_BPE_BYTES && v->kind != TOK_SPM) { snprintf(err, err_len, "unknown kind %d", (int)v->kind); return -1; }
    if (v->n_vocab <= 0 || !v->tokens) { snprintf(err, err_len, "empty vocabulary (%d tokens)", v->n_vocab); return -1; }
    if (v->n_merges < 0 || (v->n_merges > 0 && !v->merges)) { snprintf(err, err_len, "bad merge count %d", v->n_merges); return -1; }
    const int ids[3] = {v->bos, v->eos, v->unk};
    const char *what[3] = {"bos", "eos", "unk"};
    for (int i = 0; i < 3; i++)
        if (ids[i] < -1 || ids[i] >= v->n_vocab) { snprintf(err, err_len, "%s id %d outside the vocabulary of %d", what[i], ids[i], v->n_vocab); return -1; }
    size_t total = 0;
    for (int i = 0; i < v->n_vocab; i++) {
        if (!v->tokens[i].s && v->tokens[i].len) { snprintf(err, err_len, "token %d has no text", i); return -1; }
        total += v->tokens[i].len;
    }
    if (total >= UINT32_MAX / 2) { snprintf(err, err_len, "%zu bytes of token text is too much", total); return -1; }
    return 0;
}

static int copy_vocab(tok_tokenizer *t, const tok_vocab *v)
{
    size_t total = 0;
    for (int i = 0; i < v->n_vocab; i++) total += v->tokens[i].len;
    t->text_blob = malloc(total + 1);
    t->text = malloc((size_t)v->n_vocab * sizeof *t->text);
    t->type = malloc((size_t)v->n_vocab * sizeof *t->type);
    t->score = calloc((size_t)v->n_vocab, sizeof *t->score);
    if (!t->text_blob || !t->text || !t->type || !t->score) return -1;
    uint32_t off = 0;
    for (int i = 0; i < v->n_vocab; i++) {
        if (v->tokens[i].len) memcpy(t->text_blob + off, v->tokens[i].s, v->tokens[i].len);
        t->text[i] = (span){off, (uint32_t)v->tokens[i].len};
        off += (uint32_t)v->tokens[i].len;
        t->type[i] = v->types ? v->types[i] : TOK_TYPE_NORMAL;
        if (v->scores) t->score[i] = v->scores[i];
    }
    return 0;
}

/* SPM needs a token for every byte, or an unknown token; byte-level BPE drops a
 * byte its vocabulary lacks (SmolLM2's lacks 21 of them, e.g. 0x04 and 0xF1). */
static int check_fallbacks(const tok_tokenizer *t, char *err, size_t err_len)
{
    if (t->kind == TOK_BPE_BYTES || t->unk >= 0) return 0;
    for (int b = 0; b < 256; b++)
        if (t->byte_token[b] < 0) {
            snprintf(err, err_len, "byte 0x%02X has no token and the vocabulary has no unknown token", b);
            return -1;
        }
    return 0;
}

tok_tokenizer *tok_new(const tok_vocab *v, char *err, size_t err_len)
{
    assert(v && err);
    if (check_vocab(v, err, err_len)) return NULL;
    tok_tokenizer *t = calloc(1, sizeof *t);
    if (!t) goto oom;
    t->kind = v->kind, t->n_vocab = v->n_vocab;
    t->bos = v->bos, t->eos = v->eos, t->unk = v->unk, t->add_space_prefix = v->add_space_prefix;
    if (t->kind == TOK_BPE_BYTES && pre_from_name(v->pre, &t->pre)) {
        snprintf(err, err_len, "unsupported pre-tokenizer '%s'", v->pre);
        goto fail;
    }
    t->ignore_merges = t->kind == TOK_BPE_BYTES && t->pre == PRE_LLAMA3;
    build_byte_map(t);
    if (copy_vocab(t, v) || index_build(t) || build_pieces(t) || build_specials(t)) goto oom;
    build_byte_tokens(t);
    if (check_fallbacks(t, err, err_len)) goto fail;
    if (t->kind == TOK_BPE_BYTES && build_merges(t, v, err, err_len)) goto fail;
    return t;
oom:
    snprintf(err, err_len, "out of memory for %d tokens", v->n_vocab);
fail:
    tok_free(t);
    return NULL;
}

void tok_free(tok_tokenizer *t)
{
    if (!t) return;
    free(t->text_blob), free(t->text), free(t->piece_blob), free(t->piece);
    free(t->type), free(t->score), free(t->index.slot), free(t->special);
    free(t->merges.key), free(t->merges.rank), free(t->merges.result);
    free(t);
}

/* ==== Pre-tokenizers: the regular expressions, matched by hand ====
 *
 * Each function returns the end of the piece that starts at i (i < end); the
 * text past end is invisible to it (end is a special token or a digit boundary).
 *
 * gpt2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * smollm: every \p{N} alone, then gpt2 on the text between (HF: Digits with
 *         individual_digits, then ByteLevel's regex).
 * llama3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *          ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * qwen2:  llama3 with \p{N} instead of \p{N}{1,3}.
 */

static uni_class_t class_at(const char *s, size_t end, size_t i, size_t *next)
{
    uint32_t cp;
    *next = i + uni_next(s + i, end - i, &cp);
    return uni_class(cp);
}

static size_t run_of(const char *s, size_t end, size_t i, uni_class_t c)
{
    size_t next;
    while (i < end && class_at(s, end, i, &next) == c) i = next;
    return i;
}

/* Length of the contraction ('s 't 're 've 'm 'll 'd) at s[i] == '\'', or 0. */
static size_t contraction(const char *s, size_t end, size_t i, int fold)
{
    char a = i + 1 < end ? s[i + 1] : 0, b = i + 2 < end ? s[i + 2] : 0;
    if (fold) {
        if (a >= 'A' && a <= 'Z') a = (char)(a + 32);
        if (b >= 'A' && b <= 'Z') b = (char)(b + 32);
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

/* \s+(?!\S)|\s+ at a white space character: the whole run if it ends the text
 * or is one character; otherwise all but its last character. */
static size_t space_run(const char *s, size_t end, size_t i)
{
    size_t j = i, last = i, next;
    while (j < end && class_at(s, end, j, &next) == UNI_SPACE) last = j, j = next;
    if (j == end || last == i) return j;
    return last;
}

static size_t piece_gpt2(const char *s, size_t end, size_t i)
{
    size_t next, k;
    uni_class_t c = class_at(s, end, i, &next);
    if (s[i] == '\'' && (k = contraction(s, end, i, 0))) return i + k;
    if (s[i] == ' ' && next < end) {
        size_t after;
        uni_class_t c2 = class_at(s, end, next, &after);
        if (c2 != UNI_SPACE) return run_of(s, end, next, c2);
    }
    if (c != UNI_SPACE) return run_of(s, end, i, c);
    return space_run(s, end, i);
}

static size_t piece_llama3(const char *s, size_t end, size_t i, int max_digits)
{
    size_t next, after, k;
    uni_class_t c = class_at(s, end, i, &next);
    int newline = s[i] == '\r' || s[i] == '\n';
    if (s[i] == '\'' && (k = contraction(s, end, i, 1))) return i + k;
    if (c == UNI_LETTER) return run_of(s, end, i, UNI_LETTER);
    if (c != UNI_NUMBER && !newline && next < end && class_at(s, end, next, &after) == UNI_LETTER)
        return run_of(s, end, next, UNI_LETTER);
    if (c == UNI_NUMBER) {
        size_t j = next;
        for (int n = 1; n < max_digits && j < end && class_at(s, end, j, &after) == UNI_NUMBER; n++) j = after;
        return j;
    }
    if (c == UNI_OTHER || (s[i] == ' ' && next < end && class_at(s, end, next, &after) == UNI_OTHER)) {
        size_t j = run_of(s, end, c == UNI_OTHER ? i : next, UNI_OTHER);
        while (j < end && (s[j] == '\r' || s[j] == '\n')) j++;
        return j;
    }
    size_t j = i, last_newline = 0;                     /* \s*[\r\n]+ */
    int seen = 0;
    while (j < end && class_at(s, end, j, &after) == UNI_SPACE) {
        if (s[j] == '\r' || s[j] == '\n') last_newline = j, seen = 1;
        j = after;
    }
    if (seen) return last_newline + 1;
    return space_run(s, end, i);
}

/* The end of the next piece of s[i..len) under t's pre-tokenizer; *digit_end
 * caches where smollm's current run without digits ends (start it at 0). */
static size_t next_piece(const tok_tokenizer *t, const char *s, size_t len, size_t i, size_t *digit_end)
{
    size_t next;
    switch (t->pre) {
    case PRE_SMOLLM:
        if (class_at(s, len, i, &next) == UNI_NUMBER) return next;
        if (*digit_end <= i) {
            size_t j = i;
            while (j < len && class_at(s, len, j, &next) != UNI_NUMBER) j = next;
            *digit_end = j;
        }
        return piece_gpt2(s, *digit_end, i);
    case PRE_LLAMA3: return piece_llama3(s, len, i, 3);
    case PRE_QWEN2: return piece_llama3(s, len, i, 1);
    case PRE_GPT2: break;
    }
    return piece_gpt2(s, len, i);
}

/* ==== Output and scratch ==== */

typedef struct {
    int32_t *ids;
    int64_t max, n;
} out_ids;

static void emit(out_ids *o, int32_t id)
{
    if (o->n < o->max) o->ids[o->n] = id;
    o->n++;
}

typedef struct {
    int32_t id;        /* byte-level: token id; SPM: unused */
    uint32_t off, len; /* SPM: bytes of the working text; byte-level: len 0 = merged away */
    int prev, next;
} symbol;

typedef struct {
    float prio;        /* lower first: a merge's rank, or minus an SPM score */
    int pos;           /* the left symbol; leftmost first among equal prio */
    int32_t a, b;      /* byte-level: the ids merged; SPM: their lengths */
    int32_t merged;    /* byte-level: the id they become */
} candidate;

typedef struct {
    symbol *sym;
    size_t sym_cap;
    candidate *heap;
    size_t heap_n, heap_cap;
    char *buf;         /* SPM working text; byte-level stand-in text */
    size_t buf_cap;
} scratch;

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *np = realloc(*p, c * elem);
    if (!np) return -1;
    *p = np, *cap = c;
    return 0;
}

static int cand_less(const candidate *x, const candidate *y)
{
    return x->prio < y->prio || (x->prio == y->prio && x->pos < y->pos);
}

static int heap_push(scratch *w, candidate c)
{
    if (grow((void **)&w->heap, &w->heap_cap, w->heap_n + 1, sizeof *w->heap)) return -1;
    size_t i = w->heap_n++;
    while (i > 0 && cand_less(&c, &w->heap[(i - 1) / 2])) w->heap[i] = w->heap[(i - 1) / 2], i = (i - 1) / 2;
    w->heap[i] = c;
    return 0;
}

static candidate heap_pop(scratch *w)
{
    candidate top = w->heap[0], last = w->heap[--w->heap_n];
    size_t i = 0, n = w->heap_n;
    for (;;) {
        size_t k = 2 * i + 1;
        if (k >= n) break;
        if (k + 1 < n && cand_less(&w->heap[k + 1], &w->heap[k])) k++;
        if (!cand_less(&w->heap[k], &last)) break;
        w->heap[i] = w->heap[k], i = k;
    }
    if (n) w->heap[i] = last;
    return top;
}

static void unlink_right(symbol *sym, int pos)
{
    int right = sym[pos].next;
    sym[pos].next = sym[right].next;
    if (sym[right].next >= 0) sym[sym[right].next].prev = pos;
    sym[right].len = 0;
}

/* ==== Byte-level BPE ==== */

static int push_merge(const tok_tokenizer *t, scratch *w, int pos)
{
    if (pos < 0 || w->sym[pos].next < 0) return 0;
    int right = w->sym[pos].next;
    int32_t res;
    int32_t rank = merge_find(t, w->sym[pos].id, w->sym[right].id, &res);
    if (rank < 0) return 0;
    return heap_push(w, (candidate){(float)rank, pos, w->sym[pos].id, w->sym[right].id, res});
}

/* ignore_merges: the whole piece, written in stand-ins, as one token; or -1. */
static int whole_piece(const tok_tokenizer *t, scratch *w, const char *s, size_t n)
{
    if (grow((void **)&w->buf, &w->buf_cap, 2 * n, 1)) return -1;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += uni_encode(t->char_of_byte[(unsigned char)s[i]], w->buf + k);
    return index_find(t, w->buf, k);
}

static int bpe_piece(const tok_tokenizer *t, scratch *w, const char *s, size_t n, out_ids *o)
{
    if (n > INT32_MAX / 4) return -1;              /* symbol links are ints */
    if (t->ignore_merges) {
        int id = whole_piece(t, w, s, n);
        if (id >= 0) { emit(o, id); return 0; }
    }
    if (grow((void **)&w->sym, &w->sym_cap, n, sizeof *w->sym)) return -1;
    size_t count = 0;           /* a byte the vocabulary lacks is dropped before merging, as HF does */
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_token[(unsigned char)s[i]];
        if (id >= 0) w->sym[count] = (symbol){id, 0, 1, (int)count - 1, (int)count + 1}, count++;
    }
    if (!count) return 0;
    w->sym[count - 1].next = -1;
    w->heap_n = 0;
    for (size_t i = 0; i + 1 < count; i++)
        if (push_merge(t, w, (int)i)) return -1;
    while (w->heap_n) {
        candidate c = heap_pop(w);
        symbol *l = &w->sym[c.pos];
        if (!l->len || l->id != c.a || l->next < 0 || w->sym[l->next].id != c.b) continue;
        l->id = c.merged;
        unlink_right(w->sym, c.pos);
        if (push_merge(t, w, l->prev) || push_merge(t, w, c.pos)) return -1;
    }
    for (int i = 0; i >= 0; i = w->sym[i].next) emit(o, w->sym[i].id);
    return 0;
}

static int encode_bytes(const tok_tokenizer *t, scratch *w, const char *s, size_t len, out_ids *o)
{
    size_t digit_end = 0;
    for (size_t i = 0; i < len;) {
        size_t j = next_piece(t, s, len, i, &digit_end);
        assert(j > i && j <= len);
        if (bpe_piece(t, w, s + i, j - i, o)) return -1;
        i = j;
    }
    return 0;
}

/* ==== SentencePiece-style BPE ==== */

/* The id of a normal piece with text s[0..n), or -1. */
static int spm_find(const tok_tokenizer *t, const char *s, size_t n)
{
    int id = index_find(t, s, n);
    return id >= 0 && (t->type[id] == TOK_TYPE_NORMAL || t->type[id] == TOK_TYPE_USER_DEFINED) ? id : -1;
}

static int spm_push(const tok_tokenizer *t, scratch *w, int pos)
{
    if (pos < 0 || w->sym[pos].next < 0) return 0;
    symbol *l = &w->sym[pos], *r = &w->sym[l->next];
    int id = spm_find(t, w->buf + l->off, l->len + r->len);
    if (id < 0) return 0;
    return heap_push(w, (candidate){-t->score[id], pos, (int32_t)l->len, (int32_t)r->len, id});
}

/* Spaces to U+2581, with one prepended when asked; into w->buf. Returns its length. */
static size_t spm_text(scratch *w, const char *s, size_t len, int prefix)
{
    size_t n = 0;
    if (prefix) memcpy(w->buf, "\xE2\x96\x81", 3), n = 3;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == ' ') memcpy(w->buf + n, "\xE2\x96\x81", 3), n += 3;
        else w->buf[n++] = s[i];
    }
    return n;
}

static void spm_emit_symbol(const tok_tokenizer *t, const char *s, size_t n, out_ids *o)
{
    int id = spm_find(t, s, n);
    if (id >= 0) { emit(o, id); return; }
    for (size_t i = 0; i < n; i++) {
        int32_t b = t->byte_token[(unsigned char)s[i]];
        emit(o, b >= 0 ? b : t->unk);
    }
}

static int encode_spm(const tok_tokenizer *t, scratch *w, const char *s, size_t len, int prefix, out_ids *o)
{
    if (len > INT32_MAX / 4) return -1;            /* symbol links are ints */
    if (grow((void **)&w->buf, &w->buf_cap, 3 * len + 3, 1)) return -1;
    size_t n = spm_text(w, s, len, prefix), count = 0;
    if (grow((void **)&w->sym, &w->sym_cap, n, sizeof *w->sym)) return -1;
    for (size_t i = 0; i < n; count++) {
        uint32_t cp;
        size_t k = uni_next(w->buf + i, n - i, &cp);
        w->sym[count] = (symbol){0, (uint32_t)i, (uint32_t)k, (int)count - 1, i + k < n ? (int)count + 1 : -1};
        i += k;
    }
    w->heap_n = 0;
    for (size_t i = 0; i + 1 < count; i++)
        if (spm_push(t, w, (int)i)) return -1;
    while (w->heap_n) {
        candidate c = heap_pop(w);
        symbol *l = &w->sym[c.pos];
        if (l->len != (uint32_t)c.a || l->next < 0 || w->sym[l->next].len != (uint32_t)c.b) continue;
        l->len += w->sym[l->next].len;
        unlink_right(w->sym, c.pos);
        if (spm_push(t, w, l->prev) || spm_push(t, w, c.pos)) return -1;
    }
    for (int i = count ? 0 : -1; i >= 0; i = w->sym[i].next) spm_emit_symbol(t, w->buf + w->sym[i].off, w->sym[i].len, o);
    return 0;
}

/* ==== Encoding: special tokens, then the family's BPE on the text between ==== */

/* The longest special token that text[i..len) starts with, or -1. Control and
 * unknown tokens count only when parse_special; user-defined ones always. */
static int special_at(const tok_tokenizer *t, const char *s, size_t len, size_t i, int parse_special)
{
    for (int k = 0; k < t->n_special; k++) {
        int id = t->special[k];
        size_t n;
        const char *txt = tok_text(t, id, &n);
        if (n > len - i || txt[0] != s[i] || memcmp(txt, s + i, n)) continue;
        if (parse_special || t->type[id] == TOK_TYPE_USER_DEFINED) return id;
    }
    return -1;
}

static int encode_text(const tok_tokenizer *t, scratch *w, const char *s, size_t len, int prefix, out_ids *o)
{
    if (!len) return 0;
    if (t->kind == TOK_SPM) return encode_spm(t, w, s, len, prefix, o);
    return encode_bytes(t, w, s, len, o);
}

int64_t tok_encode(const tok_tokenizer *t, const char *text, size_t len, int add_bos, int parse_special,
                   int32_t *ids, int64_t max_ids)
{
    assert(t && (text || !len) && (ids || max_ids <= 0));
    out_ids o = {ids, max_ids > 0 ? max_ids : 0, 0};
    scratch w = {0};
    int rc = 0;
    /* SPM: every stretch of text starts the text or follows a special token, and
     * gets the space prefix (as llama.cpp does). */
    int prefix = t->kind == TOK_SPM && t->add_space_prefix;
    if (add_bos && t->bos >= 0) emit(&o, t->bos);
    size_t start = 0;
    for (size_t i = 0; i < len && rc == 0;) {
        int id = t->special_first[(unsigned char)text[i]] ? special_at(t, text, len, i, parse_special) : -1;
        if (id < 0) { i++; continue; }
        rc = encode_text(t, &w, text + start, i - start, prefix, &o);
        emit(&o, id);
        i += t->text[id].len;
        start = i;
    }
    if (rc == 0) rc = encode_text(t, &w, text + start, len - start, prefix, &o);
    free(w.sym), free(w.heap), free(w.buf);
    return rc ? -1 : o.n;
}

/* ==== Decoding and accessors ==== */

const char *tok_piece(const tok_tokenizer *t, int id, size_t *len)
{
    assert(t && id >= 0 && id < t->n_vocab && len);
    *len = t->piece[id].len;
    return t->piece_blob + t->piece[id].off;
}

size_t tok_decode(const tok_tokenizer *t, const int32_t *ids, int64_t n, char *out, size_t cap)
{
    assert(t && (ids || n == 0) && (out || cap == 0));
    size_t total = 0;
    int strip = t->kind == TOK_SPM && t->add_space_prefix;   /* undo the prepended space */
    for (int64_t k = 0; k < n; k++) {
        size_t len;
        const char *p = tok_piece(t, ids[k], &len);
        int special = is_special_type(t->type[ids[k]]);
        if (strip && !special && len && p[0] == ' ') p++, len--;
        strip = t->kind == TOK_SPM && t->add_space_prefix && special;
        if (total < cap) memcpy(out + total, p, total + len < cap ? len : cap - total);
        total += len;
    }
    if (cap) out[total < cap ? total : cap - 1] = 0;
    return total;
}

tok_kind tok_get_kind(const tok_tokenizer *t) { return t->kind; }
int tok_vocab_size(const tok_tokenizer *t) { return t->n_vocab; }
int tok_bos(const tok_tokenizer *t) { return t->bos; }
int tok_eos(const tok_tokenizer *t) { return t->eos; }

int tok_is_special(const tok_tokenizer *t, int id)
{
    assert(t);
    if (id < 0 || id >= t->n_vocab) return 0;
    return t->type[id] == TOK_TYPE_CONTROL || t->type[id] == TOK_TYPE_USER_DEFINED;
}
