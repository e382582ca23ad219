/*
 * tests/tool_tokenize.c — drives the tokenizer for tests/test_tokenizer.py from a
 * vocabulary dump, so that the tokenizer can be checked apart from the model
 * readers (and on vocabularies no model file carries).
 *
 *   tool_tokenize DUMP [--bos] [--special]     records on stdin -> one line of ids each
 *   tool_tokenize DUMP --decode                lines of ids on stdin -> records of bytes
 *   tool_tokenize DUMP --bench FILE            encodes FILE, prints tokens and MB/s
 *
 * A record is a u32 little-endian length and that many bytes. The dump, written
 * by the Python test from a GGUF file or a vocabulary it builds, is little-endian:
 *   "BPTOKV1\n", i32 kind, n_vocab, n_merges, bos, eos, unk, add_space_prefix,
 *   i32 length + pre-tokenizer name, then per token: i32 length, bytes, i32 type,
 *   f32 score; then per merge: i32 length, bytes.
 * This is a test tool: it exits on the first error with a message on stderr.
 */
#include "model/tok_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void die(const char *msg)
{
    fprintf(stderr, "tool_tokenize: %s\n", msg);
    exit(1);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory");
    return p;
}

static int32_t read_i32(FILE *f)
{
    unsigned char b[4];
    if (fread(b, 1, 4, f) != 4) die("dump truncated");
    return (int32_t)((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24);
}

static tok_str read_str(FILE *f)
{
    int32_t n = read_i32(f);
    if (n < 0) die("negative string length in dump");
    char *s = xmalloc((size_t)n + 1);
    if (fread(s, 1, (size_t)n, f) != (size_t)n) die("dump truncated in a string");
    s[n] = 0;
    return (tok_str){s, (size_t)n};
}

static tok_tokenizer *load_dump(const char *path)
{
    FILE *f = fopen(path, "rb");
    char magic[8], err[256];
    if (!f) die("cannot open the dump");
    if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "BPTOKV1\n", 8)) die("not a BPTOKV1 dump");
    tok_vocab v = {0};
    v.kind = (tok_kind)read_i32(f);
    v.n_vocab = read_i32(f), v.n_merges = read_i32(f);
    v.bos = read_i32(f), v.eos = read_i32(f), v.unk = read_i32(f), v.add_space_prefix = read_i32(f);
    tok_str pre = read_str(f);
    v.pre = pre.s;
    tok_str *tokens = xmalloc((size_t)v.n_vocab * sizeof *tokens);
    int32_t *types = xmalloc((size_t)v.n_vocab * sizeof *types);
    float *scores = xmalloc((size_t)v.n_vocab * sizeof *scores);
    for (int i = 0; i < v.n_vocab; i++) {
        tokens[i] = read_str(f);
        types[i] = read_i32(f);
        int32_t bits = read_i32(f);
        memcpy(&scores[i], &bits, 4);
    }
    tok_str *merges = xmalloc((size_t)v.n_merges * sizeof *merges);
    for (int i = 0; i < v.n_merges; i++) merges[i] = read_str(f);
    fclose(f);
    v.tokens = tokens, v.types = types, v.scores = scores, v.merges = merges;
    tok_tokenizer *t = tok_new(&v, err, sizeof err);
    if (!t) die(err);
    for (int i = 0; i < v.n_vocab; i++) free((void *)tokens[i].s);
    for (int i = 0; i < v.n_merges; i++) free((void *)merges[i].s);
    free(tokens), free(types), free(scores), free(merges), free((void *)pre.s);
    return t;
}

static int32_t *encode_all(const tok_tokenizer *t, const char *s, size_t n, int bos, int special, int64_t *count)
{
    int64_t cap = (int64_t)n / 2 + 16;
    int32_t *ids = xmalloc((size_t)cap * sizeof *ids);
    int64_t k = tok_encode(t, s, n, bos, special, ids, cap);
    if (k < 0) die("tok_encode failed");
    if (k > cap) {
        free(ids);
        ids = xmalloc((size_t)k * sizeof *ids);
        if (tok_encode(t, s, n, bos, special, ids, k) != k) die("tok_encode changed its count");
    }
    *count = k;
    return ids;
}

static void encode_records(const tok_tokenizer *t, int bos, int special)
{
    unsigned char hdr[4];
    while (fread(hdr, 1, 4, stdin) == 4) {
        size_t n = (size_t)hdr[0] | (size_t)hdr[1] << 8 | (size_t)hdr[2] << 16 | (size_t)hdr[3] << 24;
        char *s = xmalloc(n);
        if (fread(s, 1, n, stdin) != n) die("record truncated");
        int64_t k;
        int32_t *ids = encode_all(t, s, n, bos, special, &k);
        for (int64_t i = 0; i < k; i++) printf(i ? " %d" : "%d", ids[i]);
        putchar('\n');
        free(ids), free(s);
    }
}

static void decode_lines(const tok_tokenizer *t)
{
    static char line[1 << 22];
    while (fgets(line, sizeof line, stdin)) {
        int64_t n = 0, cap = 1024;
        int32_t *ids = xmalloc((size_t)cap * sizeof *ids);
        for (char *p = line, *end; (n < cap || (ids = realloc(ids, (size_t)(cap *= 2) * sizeof *ids))); p = end) {
            long v = strtol(p, &end, 10);
            if (end == p) break;
            if (v < 0 || v >= tok_vocab_size(t)) die("id outside the vocabulary");
            ids[n++] = (int32_t)v;
        }
        size_t need = tok_decode(t, ids, n, NULL, 0);
        char *out = xmalloc(need + 1);
        if (tok_decode(t, ids, n, out, need + 1) != need) die("tok_decode changed its length");
        uint32_t len = (uint32_t)need;
        fwrite(&len, 4, 1, stdout);
        fwrite(out, 1, need, stdout);
        free(out), free(ids);
    }
}

static void bench(const tok_tokenizer *t, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open the bench file");
    fseek(f, 0, SEEK_END);
    size_t n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = xmalloc(n);
    if (fread(s, 1, n, f) != n) die("short read");
    fclose(f);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int64_t k;
    int32_t *ids = encode_all(t, s, n, 0, 0, &k);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double sec = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
    printf("%zu bytes %lld tokens %.3f s %.2f MB/s\n", n, (long long)k, sec, (double)n / sec / 1e6);
    free(ids), free(s);
}

int main(int argc, char **argv)
{
    if (argc < 2) die("usage: tool_tokenize DUMP [--bos] [--special] [--decode] [--bench FILE]");
    tok_tokenizer *t = load_dump(argv[1]);
    int bos = 0, special = 0, decode = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--bos")) bos = 1;
        else if (!strcmp(argv[i], "--special")) special = 1;
        else if (!strcmp(argv[i], "--decode")) decode = 1;
        else if (!strcmp(argv[i], "--bench") && i + 1 < argc) { bench(t, argv[++i]); tok_free(t); return 0; }
        else die("unknown option");
    }
    if (decode) decode_lines(t);
    else encode_records(t, bos, special);
    tok_free(t);
    return 0;
}
