/*
 * tests/test_tokenizer.c — unit tests of model/tokenizer.c on small vocabularies
 * built here, with expectations worked out by hand: merge order and ties, the
 * pre-tokenizer boundaries, digits, special tokens, BOS, SPM scores and byte
 * fallback; and the properties: decode(encode(x)) == x for random bytes, empty
 * and invalid input, very long runs, short output buffers, bad vocabularies.
 * (tests/test_tokenizer.py checks the real SmolLM2 vocabulary against HF.)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tok_int.h"

/* ==== Building vocabularies ==== */

#define MAX_TOK 600

typedef struct {
    tok_str tok[MAX_TOK];
    int32_t type[MAX_TOK];
    float score[MAX_TOK];
    char *owned[MAX_TOK];
    int n;
    tok_str merge[64];
    int n_merges;
} vocab_builder;

static int add_token(vocab_builder *b, const char *s, size_t n, int32_t type, float score)
{
    assert_true(b->n < MAX_TOK);
    char *c = malloc(n + 1);
    memcpy(c, s, n);
    c[n] = 0;
    b->owned[b->n] = c;
    b->tok[b->n] = (tok_str){c, n};
    b->type[b->n] = type;
    b->score[b->n] = score;
    return b->n++;
}

static int add(vocab_builder *b, const char *s, int32_t type, float score) { return add_token(b, s, strlen(s), type, score); }

static void add_merge(vocab_builder *b, const char *m) { b->merge[b->n_merges++] = (tok_str){m, strlen(m)}; }

static void free_builder(vocab_builder *b)
{
    for (int i = 0; i < b->n; i++) free(b->owned[i]);
}

/* GPT-2's stand-in for byte x, as UTF-8. */
static size_t stand_in(int x, char *out)
{
    int printable = (x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
    unsigned cp = (unsigned)x;
    if (!printable) {
        cp = 0x100;
        for (int c = 0; c < x; c++)
            if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF))) cp++;
    }
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    out[0] = (char)(0xC0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

/* Byte-level vocabulary: ids 0..255 are the bytes, then merged tokens, then
 * <|im_start|> (control) and <|x|> (user-defined). */
enum { B_HE = 256, B_LL, B_HELL, B_HELLO, B_SP_W, B_OR, B_SP_WOR, B_LD, B_SP_WORLD, B_SP_SP, B_AA, B_AAAA,
       B_BC, B_AB, B_12, B_IM_START, B_USER };

static tok_tokenizer *bytes_tokenizer(const char *pre)
{
    vocab_builder b = {0};
    for (int x = 0; x < 256; x++) {
        char s[2];
        add_token(&b, s, stand_in(x, s), TOK_TYPE_NORMAL, 0);
    }
    const char *merged[] = {"he", "ll", "hell", "hello", "\xC4\xA0w", "or", "\xC4\xA0wor", "ld", "\xC4\xA0world",
                            "\xC4\xA0\xC4\xA0", "aa", "aaaa", "bc", "ab", "12"};
    for (size_t i = 0; i < sizeof merged / sizeof *merged; i++) add(&b, merged[i], TOK_TYPE_NORMAL, 0);
    add(&b, "<|im_start|>", TOK_TYPE_CONTROL, 0);
    add(&b, "<|x|>", TOK_TYPE_USER_DEFINED, 0);
    const char *merges[] = {"h e", "l l", "he ll", "hell o", "\xC4\xA0 w", "o r", "\xC4\xA0w or", "l d",
                            "\xC4\xA0wor ld", "\xC4\xA0 \xC4\xA0", "a a", "aa aa", "b c", "a b", "1 2",
                            "zz zz" /* names tokens the vocabulary lacks: skipped */};
    for (size_t i = 0; i < sizeof merges / sizeof *merges; i++) add_merge(&b, merges[i]);
    tok_vocab v = {.kind = TOK_BPE_BYTES, .pre = pre, .n_vocab = b.n, .tokens = b.tok, .types = b.type,
                   .n_merges = b.n_merges, .merges = b.merge, .bos = B_IM_START, .eos = -1, .unk = -1};
    char err[256] = "";
    tok_tokenizer *t = tok_new(&v, err, sizeof err);
    if (!t) fail_msg("tok_new: %s", err);
    free_builder(&b);          /* the tokenizer keeps its own copies */
    return t;
}

/* SPM vocabulary: <unk> <s> </s>, 256 byte tokens, then scored pieces. */
enum { S_UNK = 0, S_BOS, S_EOS, S_BYTE0, S_SP = 259, S_H, S_E, S_L, S_O, S_SP_H, S_HE, S_LL, S_SP_HE, S_LLO, S_SP_HELLO };

static tok_tokenizer *spm_tokenizer(int add_space_prefix, int with_bytes)
{
    vocab_builder b = {0};
    add(&b, "<unk>", TOK_TYPE_UNKNOWN, 0);
    add(&b, "<s>", TOK_TYPE_CONTROL, 0);
    add(&b, "</s>", TOK_TYPE_CONTROL, 0);
    for (int x = 0; x < 256; x++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", x);
        add(&b, s, with_bytes ? TOK_TYPE_BYTE : TOK_TYPE_UNUSED, 0);
    }
    const struct { const char *s; float score; } pieces[] = {
        {"\xE2\x96\x81", -10}, {"h", -11}, {"e", -12}, {"l", -13}, {"o", -14}, {"\xE2\x96\x81h", -5},
        {"he", -1}, {"ll", -2}, {"\xE2\x96\x81he", -3}, {"llo", -4}, {"\xE2\x96\x81hello", -6},
    };
    for (size_t i = 0; i < sizeof pieces / sizeof *pieces; i++) add(&b, pieces[i].s, TOK_TYPE_NORMAL, pieces[i].score);
    tok_vocab v = {.kind = TOK_SPM, .n_vocab = b.n, .tokens = b.tok, .types = b.type, .scores = b.score,
                   .bos = S_BOS, .eos = S_EOS, .unk = S_UNK, .add_space_prefix = add_space_prefix};
    char err[256] = "";
    tok_tokenizer *t = tok_new(&v, err, sizeof err);
    if (!t) fail_msg("tok_new: %s", err);
    free_builder(&b);
    return t;
}

/* ==== Helpers ==== */

static int64_t enc(const tok_tokenizer *t, const char *s, size_t n, int bos, int special, int32_t *ids, int64_t max)
{
    int64_t k = tok_encode(t, s, n, bos, special, ids, max);
    assert_true(k >= 0);
    return k;
}

static void expect_ids(const tok_tokenizer *t, const char *s, int bos, int special, const int32_t *want, int64_t n_want)
{
    int32_t ids[64];
    int64_t k = enc(t, s, strlen(s), bos, special, ids, 64);
    if (k != n_want) fail_msg("\"%s\": %lld tokens, want %lld", s, (long long)k, (long long)n_want);
    for (int64_t i = 0; i < k; i++)
        if (ids[i] != want[i]) fail_msg("\"%s\": token %lld is %d, want %d", s, (long long)i, ids[i], want[i]);
}

#define EXPECT(t, s, bos, special, ...) do { \
        const int32_t want_[] = {__VA_ARGS__}; \
        expect_ids(t, s, bos, special, want_, (int64_t)(sizeof want_ / sizeof *want_)); \
    } while (0)

static void expect_round_trip(const tok_tokenizer *t, const char *s, size_t n, int special)
{
    int64_t k = tok_encode(t, s, n, 0, special, NULL, 0);
    assert_true(k >= 0);
    int32_t *ids = malloc((size_t)(k + 1) * sizeof *ids);
    assert_int_equal(tok_encode(t, s, n, 0, special, ids, k), k);
    size_t need = tok_decode(t, ids, k, NULL, 0);
    char *out = malloc(need + 1);
    assert_int_equal(tok_decode(t, ids, k, out, need + 1), need);
    assert_int_equal(need, n);
    assert_memory_equal(out, s, n);
    assert_int_equal(out[n], 0);
    free(out), free(ids);
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

/* ==== Byte-level BPE ==== */

static void test_bytes_merges_by_rank(void **state)
{
    (void)state;
    tok_tokenizer *t = bytes_tokenizer("gpt2");
    EXPECT(t, "hello", 0, 0, B_HELLO);
    EXPECT(t, "hello world", 0, 0, B_HELLO, B_SP_WORLD);
    EXPECT(t, "help", 0, 0, B_HE, 'l', 'p');
    /* "b c" outranks "a b": abc -> a bc, not ab c */
    EXPECT(t, "abc", 0, 0, 'a', B_BC);
    /* equal ranks go leftmost first */
    EXPECT(t, "aaa", 0, 0, B_AA, 'a');
    EXPECT(t, "aaaaa", 0, 0, B_AAAA, 'a');
    tok_free(t);
}

static void test_bytes_pretokenizer_boundaries(void **state)
{
    (void)state;
    tok_tokenizer *t = bytes_tokenizer("gpt2");
    /* "a  b" is a | " " | " b": the two spaces never meet, so no "ĠĠ" */
    EXPECT(t, "a  b", 0, 0, 'a', ' ', ' ', 'b');
    /* trailing white space stays one piece */
    EXPECT(t, "a  ", 0, 0, 'a', B_SP_SP);
    /* letters and punctuation are separate pieces: "he" never merges across "!" */
    EXPECT(t, "h!e", 0, 0, 'h', '!', 'e');
    /* 's is its own piece, the ' of 'x goes with the punctuation */
    EXPECT(t, "he's", 0, 0, B_HE, '\'', 's');
    EXPECT(t, "'x", 0, 0, '\'', 'x');
    /* gpt2 keeps digit runs together */
    EXPECT(t, "12", 0, 0, B_12);
    tok_free(t);
}

static void test_bytes_digits_by_pre(void **state)
{
    (void)state;
    tok_tokenizer *smol = bytes_tokenizer("smollm"), *l3 = bytes_tokenizer("llama-bpe"), *q2 = bytes_tokenizer("qwen2");
    EXPECT(smol, "12", 0, 0, '1', '2');          /* every digit alone */
    EXPECT(smol, "a12b", 0, 0, 'a', '1', '2', 'b');
    EXPECT(smol, " 1", 0, 0, ' ', '1');           /* the space no longer joins the number */
    EXPECT(l3, "12", 0, 0, B_12);                /* \p{N}{1,3} */
    EXPECT(l3, "1212", 0, 0, B_12, '1', '2');    /* 121 | 2 */
    EXPECT(q2, "12", 0, 0, '1', '2');             /* \p{N} */
    EXPECT(l3, "hello", 0, 0, B_HELLO);
    tok_free(smol), tok_free(l3), tok_free(q2);
}

static void test_bytes_special_tokens(void **state)
{
    (void)state;
    tok_tokenizer *t = bytes_tokenizer("smollm");
    EXPECT(t, "<|im_start|>hello", 0, 1, B_IM_START, B_HELLO);
    EXPECT(t, "<|im_start|>", 1, 1, B_IM_START, B_IM_START);     /* BOS, then the token */
    /* without parse_special, control tokens are plain text */
    EXPECT(t, "<|im_start|>", 0, 0, '<', '|', 'i', 'm', '_', 's', 't', 'a', 'r', 't', '|', '>');
    /* user-defined tokens are always recognised */
    EXPECT(t, "a<|x|>b", 0, 0, 'a', B_USER, 'b');
    /* text on both sides of a special token is pre-tokenized apart */
    EXPECT(t, "he<|im_start|>llo", 0, 1, B_HE, B_IM_START, B_LL, 'o');
    EXPECT(t, "<|im_start", 0, 1, '<', '|', 'i', 'm', '_', 's', 't', 'a', 'r', 't');
    assert_true(tok_is_special(t, B_IM_START));
    assert_true(tok_is_special(t, B_USER));
    assert_false(tok_is_special(t, B_HELLO));
    assert_false(tok_is_special(t, -1));
    size_t n;
    const char *p = tok_piece(t, B_IM_START, &n);
    assert_int_equal(n, 12);
    assert_memory_equal(p, "<|im_start|>", 12);
    tok_free(t);
}

static void test_bytes_pieces_and_decode(void **state)
{
    (void)state;
    tok_tokenizer *t = bytes_tokenizer("gpt2");
    size_t n;
    const char *p = tok_piece(t, B_SP_WORLD, &n);
    assert_int_equal(n, 6);
    assert_memory_equal(p, " world", 6);
    p = tok_piece(t, 0x0A, &n);
    assert_int_equal(n, 1);
    assert_int_equal(p[0], '\n');
    for (int x = 0; x < 256; x++) {
        p = tok_piece(t, x, &n);
        assert_int_equal(n, 1);
        assert_int_equal((unsigned char)p[0], x);
    }
    const int32_t ids[] = {B_HELLO, B_SP_WORLD};
    char out[8];
    assert_int_equal(tok_decode(t, ids, 2, out, sizeof out), 11);
    assert_string_equal(out, "hello w");                          /* truncated, NUL-terminated */
    assert_int_equal(tok_decode(t, ids, 2, NULL, 0), 11);
    assert_int_equal(tok_decode(t, ids, 0, out, sizeof out), 0);
    assert_string_equal(out, "");
    tok_free(t);
}

static void test_bytes_empty_and_buffers(void **state)
{
    (void)state;
    tok_tokenizer *t = bytes_tokenizer("smollm");
    int32_t ids[4] = {-7, -7, -7, -7};
    assert_int_equal(tok_encode(t, "", 0, 0, 1, ids, 4), 0);
    assert_int_equal(tok_encode(t, NULL, 0, 0, 1, ids, 4), 0);
    assert_int_equal(tok_encode(t, "", 0, 1, 1, ids, 4), 1);
    assert_int_equal(ids[0], B_IM_START);
    /* a short buffer: the full count comes back, only max_ids are written */
    ids[0] = ids[1] = ids[2] = -7;
    assert_int_equal(tok_encode(t, "hello world", 11, 0, 0, ids, 1), 2);
    assert_int_equal(ids[0], B_HELLO);
    assert_int_equal(ids[1], -7);
    assert_int_equal(tok_encode(t, "hello world", 11, 0, 0, NULL, 0), 2);
    assert_int_equal(tok_vocab_size(t), B_USER + 1);
    assert_int_equal(tok_get_kind(t), TOK_BPE_BYTES);
    assert_int_equal(tok_bos(t), B_IM_START);
    assert_int_equal(tok_eos(t), -1);
    tok_free(t);
    tok_free(NULL);
}

static void test_bytes_round_trip_random(void **state)
{
    (void)state;
    const char *pres[] = {"gpt2", "smollm", "llama-bpe", "qwen2"};
    char buf[300];
    for (size_t p = 0; p < 4; p++) {
        tok_tokenizer *t = bytes_tokenizer(pres[p]);
        for (int iter = 0; iter < 400; iter++) {
            size_t n = rnd() % sizeof buf;
            for (size_t i = 0; i < n; i++) {   /* half the time mostly text, else any bytes */
                uint32_t r = rnd();
                buf[i] = iter & 1 ? (char)r : " a1'\n\t\xC3\xA9<|>"[r % 12];
            }
            expect_round_trip(t, buf, n, iter % 3 == 0);
        }
        tok_free(t);
    }
}

static void test_bytes_invalid_utf8(void **state)
{
    (void)state;
    tok_tokenizer *t = bytes_tokenizer("smollm");
    const char *cases[] = {"\xFF\xFE abc \xC3", "\xC3\x28", "\xE2\x82", "\xF0\x9F\x98", "\xED\xA0\x80",
                           "\xC0\xAF", "\xF4\x90\x80\x80", "a\x80" "b", "\xE2\x96\x81 \xE2\x96"};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) expect_round_trip(t, cases[i], strlen(cases[i]), 0);
    /* NUL bytes are text like any other */
    expect_round_trip(t, "a\0b\0\0", 5, 0);
    /* an invalid byte is a piece of its own: 0xFF splits "he" from "llo" */
    EXPECT(t, "he\xFFllo", 0, 0, B_HE, 0xFF, B_LL, 'o');
    tok_free(t);
}

static void test_bytes_long_runs(void **state)
{
    (void)state;
    tok_tokenizer *t = bytes_tokenizer("smollm");
    const size_t n = 200000;
    char *s = malloc(n);
    const char fill[] = {'a', ' ', '7', '\n', '!'};
    for (size_t f = 0; f < sizeof fill; f++) {
        memset(s, fill[f], n);
        expect_round_trip(t, s, n, 0);
    }
    memset(s, 'a', n);                       /* aaaa aaaa ... */
    assert_int_equal(tok_encode(t, s, n, 0, 0, NULL, 0), (int64_t)n / 4);
    memset(s, ' ', n);                       /* one piece of spaces: ĠĠ ĠĠ ... */
    assert_int_equal(tok_encode(t, s, n, 0, 0, NULL, 0), (int64_t)n / 2);
    memset(s, '7', n);                       /* digits one by one */
    assert_int_equal(tok_encode(t, s, n, 0, 0, NULL, 0), (int64_t)n);
    free(s);
    tok_free(t);
}

/* ==== SentencePiece-style BPE ==== */

static void test_spm_merges_by_score(void **state)
{
    (void)state;
    tok_tokenizer *t = spm_tokenizer(1, 1);
    /* ▁ h e l l o: he(-1), ll(-2), ▁he(-3), llo(-4), ▁hello(-6) */
    EXPECT(t, "hello", 0, 0, S_SP_HELLO);
    EXPECT(t, "hello", 1, 0, S_BOS, S_SP_HELLO);
    /* ▁ h i: ▁h(-5); i is unknown -> its byte */
    EXPECT(t, "hi", 0, 0, S_SP_H, S_BYTE0 + 'i');
    /* é is two bytes the vocabulary lacks as a piece */
    EXPECT(t, "\xC3\xA9", 0, 0, S_SP, S_BYTE0 + 0xC3, S_BYTE0 + 0xA9);
    /* spaces become ▁: "hello hello" = ▁hello ▁hello */
    EXPECT(t, "hello hello", 0, 0, S_SP_HELLO, S_SP_HELLO);
    /* control tokens in the text; the text after one gets the space prefix again */
    EXPECT(t, "<s>hello</s>", 0, 1, S_BOS, S_SP_HELLO, S_EOS);
    EXPECT(t, "", 1, 0, S_BOS);
    tok_free(t);
    t = spm_tokenizer(0, 1);
    /* no prefix: h e l l o -> he ll o -> he llo (no "hello" piece) */
    EXPECT(t, "hello", 0, 0, S_HE, S_LLO);
    tok_free(t);
}

static void test_spm_decode(void **state)
{
    (void)state;
    tok_tokenizer *t = spm_tokenizer(1, 1);
    size_t n;
    const char *p = tok_piece(t, S_SP_HELLO, &n);
    assert_int_equal(n, 6);
    assert_memory_equal(p, " hello", 6);
    p = tok_piece(t, S_BYTE0 + 0xC3, &n);
    assert_int_equal(n, 1);
    assert_int_equal((unsigned char)p[0], 0xC3);
    const int32_t ids[] = {S_BOS, S_SP_HELLO, S_SP_HELLO};
    char out[32];
    tok_decode(t, ids, 3, out, sizeof out);
    assert_string_equal(out, "<s>hello hello");   /* the prepended space goes away */
    tok_decode(t, ids + 1, 2, out, sizeof out);
    assert_string_equal(out, "hello hello");
    const char *cases[] = {"hello", " hello  world ", "h\xC3\xA9llo\n\t", "\xFF\xC3", "", "<s>x</s>y"};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) expect_round_trip(t, cases[i], strlen(cases[i]), 1);
    char buf[200];
    for (int iter = 0; iter < 300; iter++) {
        size_t len = rnd() % sizeof buf;
        for (size_t i = 0; i < len; i++) buf[i] = iter & 1 ? (char)rnd() : "helo \n\xC3\xA9"[rnd() % 8];
        if (memmem(buf, len, "\xE2\x96\x81", 3)) continue;  /* a literal ▁ decodes as a space */
        expect_round_trip(t, buf, len, 0);
    }
    tok_free(t);
}

static void test_spm_unknown_without_bytes(void **state)
{
    (void)state;
    tok_tokenizer *t = spm_tokenizer(1, 0);      /* <0xNN> are unused tokens here */
    EXPECT(t, "hi", 0, 0, S_SP_H, S_UNK);
    tok_free(t);
}

/* ==== Bad vocabularies ==== */

static void expect_refused(tok_vocab *v, const char *needle)
{
    char err[256] = "";
    tok_tokenizer *t = tok_new(v, err, sizeof err);
    assert_null(t);
    if (!strstr(err, needle)) fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
}

static void test_bad_vocabularies(void **state)
{
    (void)state;
    tok_str toks[3] = {{"a", 1}, {"b", 1}, {"ab", 2}};
    tok_str bad_merge[1] = {{"ab", 2}};
    tok_vocab v = {.kind = TOK_BPE_BYTES, .n_vocab = 3, .tokens = toks, .bos = -1, .eos = -1, .unk = -1};
    v.pre = "no-such-pre";
    expect_refused(&v, "no-such-pre");
    v.pre = NULL, v.bos = 3;
    expect_refused(&v, "bos id 3");
    v.bos = -1, v.n_vocab = 0;
    expect_refused(&v, "empty vocabulary");
    v.n_vocab = 3, v.kind = (tok_kind)7;
    expect_refused(&v, "kind 7");
    v.kind = TOK_BPE_BYTES, v.n_merges = 1, v.merges = bad_merge;
    expect_refused(&v, "merge 0");
    v.kind = TOK_SPM, v.n_merges = 0, v.merges = NULL;
    expect_refused(&v, "byte 0x00 has no token");
    /* and the good one is accepted */
    v.kind = TOK_BPE_BYTES;
    char err[256];
    tok_tokenizer *t = tok_new(&v, err, sizeof err);
    assert_non_null(t);
    tok_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytes_merges_by_rank),
        cmocka_unit_test(test_bytes_pretokenizer_boundaries),
        cmocka_unit_test(test_bytes_digits_by_pre),
        cmocka_unit_test(test_bytes_special_tokens),
        cmocka_unit_test(test_bytes_pieces_and_decode),
        cmocka_unit_test(test_bytes_empty_and_buffers),
        cmocka_unit_test(test_bytes_round_trip_random),
        cmocka_unit_test(test_bytes_invalid_utf8),
        cmocka_unit_test(test_bytes_long_runs),
        cmocka_unit_test(test_spm_merges_by_score),
        cmocka_unit_test(test_spm_decode),
        cmocka_unit_test(test_spm_unknown_without_bytes),
        cmocka_unit_test(test_bad_vocabularies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
