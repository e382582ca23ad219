/*
 * tests/fuzz/fuzz_tokenizer.c — feeds any bytes as text to tok_encode and the ids
 * back to tok_decode (model/tokenizer.c, over the vocabulary model_tok.c gathers).
 *
 * The vocabulary is loaded once, at start-up: the file BITPLAN_FUZZ_VOCAB names,
 * else models/SmolLM2-135M-Instruct.Q4_1.gguf (the real one, scripts/get-model.sh
 * fetches it), else the tiny synthetic model tests/fuzz/corpus/gguf/tiny-q8_0.gguf
 * (a byte-level BPE vocabulary of 300 tokens learned by tests/tiny_model.py), so
 * that the harness runs without the real model. If none loads it says so and exits.
 *
 * The first input byte picks the flags (bit 0 add_bos, bit 1 parse_special); the
 * rest is the text. Beyond "no crash" it checks what model/tokenizer.c promises:
 *   - every id is inside the vocabulary; a BOS asked for comes first;
 *   - the count does not depend on the buffer: a call with room for one id reports
 *     the same total (the two-call protocol), and it is at most a token per byte
 *     (plus BOS; plus a space prefix for SentencePiece);
 *   - decode(encode(text)) == text for a byte-level vocabulary, for any bytes
 *     (valid UTF-8 or not, special tokens or not), less the bytes the vocabulary
 *     has no token for (found at start-up: a byte alone encodes to nothing; the
 *     tokenizer drops them, as Hugging Face does);
 *   - tok_decode into a short buffer reports the full length and writes a
 *     NUL-terminated prefix of the text.
 */
#include "tests/fuzz/fuzz_util.h"

#include <stdint.h>

static mdl_model *model;
static tok_tokenizer *tok;
static uint8_t dropped[256]; /* 1: the vocabulary has no token for this byte */

static int load_vocab(const char *path)
{
    char err[MDL_ERR_LEN];
    if (access(path, R_OK)) return -1;
    if (mdl_open(path, &model, err, sizeof err) || !(tok = mdl_tokenizer(model, err, sizeof err))) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err);
        exit(1);
    }
    fprintf(stderr, "fuzz_tokenizer: vocabulary of %s (%d tokens)\n", path, tok_vocab_size(tok));
    return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *env = getenv("BITPLAN_FUZZ_VOCAB");
    if (env && *env ? load_vocab(env) : load_vocab("models/SmolLM2-135M-Instruct.Q4_1.gguf") &&
                                            load_vocab("tests/fuzz/corpus/gguf/tiny-q8_0.gguf")) {
        fprintf(stderr, "fuzz_tokenizer: no vocabulary: set BITPLAN_FUZZ_VOCAB, or run from the repository root "
                        "(models/SmolLM2-135M-Instruct.Q4_1.gguf or tests/fuzz/corpus/gguf/tiny-q8_0.gguf)\n");
        exit(1);
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        int32_t id;
        dropped[b] = tok_encode(tok, &c, 1, 0, 0, &id, 1) == 0;
    }
    return 0;
}

static void check_decode(const int32_t *ids, int64_t n, const char *text, size_t len, int add_bos)
{
    size_t want_len = 0, got_len;
    char *want = malloc(len + 1), *got;
    FUZZ_CHECK(want != NULL, "out of memory");
    for (size_t i = 0; i < len; i++)
        if (!dropped[(unsigned char)text[i]]) want[want_len++] = text[i];
    int skip = add_bos && tok_bos(tok) >= 0; /* the BOS is not in the text */
    got_len = tok_decode(tok, ids + skip, n - skip, NULL, 0);
    got = malloc(got_len + 1);
    FUZZ_CHECK(got != NULL, "out of memory");
    FUZZ_CHECK(tok_decode(tok, ids + skip, n - skip, got, got_len + 1) == got_len, "decode lengths differ");
    FUZZ_CHECK(got_len == want_len && !memcmp(got, want, want_len), "decode(encode(text)) is not the text (%zu vs %zu bytes)",
               got_len, want_len);
    if (got_len > 1) { /* a short buffer: the same length, a terminated prefix */
        char small[8];
        size_t cap = 1 + got_len % (sizeof small - 1);
        FUZZ_CHECK(tok_decode(tok, ids + skip, n - skip, small, cap) == got_len, "decode into %zu bytes", cap);
        FUZZ_CHECK(small[cap - 1 < got_len ? cap - 1 : got_len] == 0 && !memcmp(small, got, cap - 1 < got_len ? cap - 1 : got_len),
                   "decode into %zu bytes is no prefix", cap);
    }
    free(want);
    free(got);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int add_bos = data[0] & 1, special = (data[0] >> 1) & 1;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    int32_t one;
    int64_t n = tok_encode(tok, text, len, add_bos, special, &one, 1);
    FUZZ_CHECK(n >= 0, "encode failed on %zu bytes", len);
    FUZZ_CHECK((size_t)n <= len + 2, "%lld tokens for %zu bytes", (long long)n, len);
    int32_t *ids = malloc((size_t)(n ? n : 1) * sizeof *ids);
    FUZZ_CHECK(ids != NULL, "out of memory");
    FUZZ_CHECK(tok_encode(tok, text, len, add_bos, special, ids, n) == n, "the count depends on the buffer");
    FUZZ_CHECK(n == 0 || ids[0] == one, "the first id depends on the buffer");
    for (int64_t i = 0; i < n; i++) FUZZ_CHECK(ids[i] >= 0 && ids[i] < tok_vocab_size(tok), "id %d", ids[i]);
    if (add_bos && tok_bos(tok) >= 0) FUZZ_CHECK(n >= 1 && ids[0] == tok_bos(tok), "no BOS first");
    if (tok_get_kind(tok) == TOK_BPE_BYTES) check_decode(ids, n, text, len, add_bos);
    free(ids);
    return 0;
}
