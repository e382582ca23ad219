/*
 * measure/calib.c — calibration text into rows of tokens, and the hashes that
 * identify a calibration: each source file's SHA-256 and the tokenizer's.
 *
 * How rows are cut (deterministic: the same files and tokenizer give the same rows):
 *  1. The files are read whole and joined with a blank line between them.
 *  2. Short text (under CALIB_WHOLE_BYTES_PER_TOKEN bytes per needed token) is
 *     tokenized whole; it must hold rows * ctx tokens, and the rows are spread
 *     evenly over the token stream (row i starts at i * (n - ctx) / (rows - 1)).
 *  3. Long text is cut into `rows` equal byte segments, each starting at a line
 *     start; row i is the first ctx tokens of segment i (a growing prefix of the
 *     segment is tokenized until it gives ctx tokens), so the rows sample the
 *     whole text without tokenizing all of it.
 * It must never depend on anything but the bytes of the files and the tokenizer.
 */
#include "measure.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../model/model.h"

#define CALIB_WHOLE_BYTES_PER_TOKEN 32

/* ==== SHA-256 (FIPS 180-4) ==== */

typedef struct {
    uint32_t h[8];
    uint8_t buf[64];
    uint64_t len;
} sha256_ctx;

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(uint32_t h[8], const uint8_t *p)
{
    uint32_t w[64], v[8];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    memcpy(v, h, sizeof v);
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = v[7] + (rotr(v[4], 6) ^ rotr(v[4], 11) ^ rotr(v[4], 25)) + ((v[4] & v[5]) ^ (~v[4] & v[6])) +
                      sha_k[i] + w[i];
        uint32_t t2 = (rotr(v[0], 2) ^ rotr(v[0], 13) ^ rotr(v[0], 22)) + ((v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]));
        memmove(v + 1, v, 7 * sizeof *v);
        v[4] += t1;
        v[0] = t1 + t2;
    }
    for (int i = 0; i < 8; i++) h[i] += v[i];
}

static void sha256_init(sha256_ctx *c)
{
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, h0, sizeof h0);
    c->len = 0;
}

static void sha256_update(sha256_ctx *c, const void *data, size_t n)
{
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) {
        c->buf[c->len++ % 64] = p[i];
        if (c->len % 64 == 0) sha256_block(c->h, c->buf);
    }
}

static void sha256_hex(sha256_ctx *c, char hex[65])
{
    uint64_t bits = c->len * 8;
    uint8_t pad = 0x80, zero = 0, len[8];
    sha256_update(c, &pad, 1);
    while (c->len % 64 != 56) sha256_update(c, &zero, 1);
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_update(c, len, 8);
    for (int i = 0; i < 8; i++) snprintf(hex + 8 * i, 9, "%08x", c->h[i]);
}

void meas_sha256_hex(const void *data, size_t n, char hex[65])
{
    sha256_ctx c;
    sha256_init(&c);
    sha256_update(&c, data, n);
    sha256_hex(&c, hex);
}

/* ==== Sources ==== */

/* Appends s to the growing string *out as a JSON string literal. */
static int json_append_str(char **out, size_t *len, size_t *cap, const char *s)
{
    for (size_t need = *len + 6 * strlen(s) + 8; need > *cap;) {
        size_t nc = *cap ? 2 * *cap : 256;
        while (nc < need) nc *= 2;
        char *n = realloc(*out, nc);
        if (!n) return -1;
        *out = n, *cap = nc;
    }
    char *o = *out + *len;
    *o++ = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') *o++ = '\\', *o++ = (char)*p;
        else if (*p < 0x20) o += sprintf(o, "\\u%04x", *p);
        else *o++ = (char)*p;
    }
    *o++ = '"';
    *o = 0;
    *len = (size_t)(o - *out);
    return 0;
}

static int append_raw(char **out, size_t *len, size_t *cap, const char *s)
{
    size_t n = strlen(s);
    if (*len + n + 1 > *cap) {
        size_t nc = *cap ? 2 * *cap : 256;
        while (nc < *len + n + 1) nc *= 2;
        char *nb = realloc(*out, nc);
        if (!nb) return -1;
        *out = nb, *cap = nc;
    }
    memcpy(*out + *len, s, n + 1);
    *len += n;
    return 0;
}

/* Reads the files, joins them, and fills the hashes and sources_json of c. The
 * joined text goes to *text (malloc'd). */
static int read_sources(const char *const *paths, int n, calib_set *c, char **text, size_t *text_len,
                        char *err, size_t err_len)
{
    size_t len = 0, cap = 0, jl = 0, jc = 0;
    char *all = NULL, *json = NULL;
    sha256_ctx all_hash;
    sha256_init(&all_hash);
    int rc = append_raw(&json, &jl, &jc, "[");
    for (int i = 0; i < n && !rc; i++) {
        FILE *f = fopen(paths[i], "rb");
        if (!f) { snprintf(err, err_len, "%s: %s", paths[i], strerror(errno)); rc = -1; break; }
        size_t start = len;
        if (i > 0) rc = append_raw(&all, &len, &cap, "\n\n"), start = len;
        char chunk[1 << 16];
        for (size_t got; !rc && (got = fread(chunk, 1, sizeof chunk - 1, f)) > 0;) {
            chunk[got] = 0;
            if (memchr(chunk, 0, got)) { snprintf(err, err_len, "%s: a NUL byte: not a text file", paths[i]); rc = -1; }
            else rc = append_raw(&all, &len, &cap, chunk);
        }
        int bad = ferror(f);
        fclose(f);
        if (!rc && bad) { snprintf(err, err_len, "%s: read error", paths[i]); rc = -1; }
        if (rc) break;
        char hex[65];
        meas_sha256_hex(all ? all + start : "", len - start, hex);
        sha256_update(&all_hash, hex, 64);
        rc = append_raw(&json, &jl, &jc, i ? ",{\"path\":" : "{\"path\":") || json_append_str(&json, &jl, &jc, paths[i]) ||
             append_raw(&json, &jl, &jc, ",\"sha256\":\"") || append_raw(&json, &jl, &jc, hex) ||
             append_raw(&json, &jl, &jc, "\"}");
        if (rc && !*err) snprintf(err, err_len, "out of memory reading %s", paths[i]);
    }
    if (!rc && (rc = append_raw(&json, &jl, &jc, "]"))) snprintf(err, err_len, "out of memory");
    if (rc) { free(all), free(json); return -1; }
    sha256_hex(&all_hash, c->sources_hash);
    c->sources_json = json;
    *text = all ? all : calloc(1, 1), *text_len = len;
    return *text ? 0 : -1;
}

/* ==== Tokens ==== */

/* Tokenizes text[0..len) into a malloc'd array; *n receives the count. */
static int32_t *encode_all(const tok_tokenizer *t, const char *text, size_t len, int64_t *n)
{
    int64_t cap = (int64_t)(len / 2) + 16;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    if (!ids) return NULL;
    int64_t need = tok_encode(t, text, len, 0, 0, ids, cap);
    if (need > cap) {
        int32_t *more = realloc(ids, (size_t)need * sizeof *ids);
        if (!more) { free(ids); return NULL; }
        ids = more;
        need = tok_encode(t, text, len, 0, 0, ids, need);
    }
    if (need < 0) { free(ids); return NULL; }
    *n = need;
    return ids;
}

static int rows_from_whole(const tok_tokenizer *t, const char *text, size_t len, calib_set *c, char *err, size_t err_len)
{
    int64_t n = 0, need = (int64_t)c->rows * c->ctx;
    int32_t *ids = encode_all(t, text, len, &n);
    if (!ids) return snprintf(err, err_len, "tokenizing the calibration text failed"), -1;
    if (n < need) {
        snprintf(err, err_len, "calibration text too short: it has %lld tokens, %d rows x %d ctx need %lld",
                 (long long)n, c->rows, c->ctx, (long long)need);
        free(ids);
        return -1;
    }
    for (int r = 0; r < c->rows; r++) {
        int64_t start = c->rows > 1 ? (int64_t)r * (n - c->ctx) / (c->rows - 1) : 0;
        memcpy(c->tokens + (size_t)r * c->ctx, ids + start, (size_t)c->ctx * sizeof *ids);
    }
    free(ids);
    return 0;
}

/* Row r: the first ctx tokens of the r-th equal byte segment (starting at a line). */
static int rows_from_segments(const tok_tokenizer *t, const char *text, size_t len, calib_set *c, char *err,
                              size_t err_len)
{
    for (int r = 0; r < c->rows; r++) {
        size_t a = (size_t)((double)len * r / c->rows), b = (size_t)((double)len * (r + 1) / c->rows);
        while (a > 0 && a < b && text[a - 1] != '\n') a++;
        int64_t n = 0;
        int32_t *ids = NULL;
        for (size_t window = (size_t)c->ctx * 8;; window *= 2) {
            size_t wl = a + window < b ? window : b - a;
            free(ids);
            if (!(ids = encode_all(t, text + a, wl, &n))) return snprintf(err, err_len, "tokenizing the calibration text failed"), -1;
            if (n >= c->ctx || wl == b - a) break;
        }
        if (n < c->ctx) {
            snprintf(err, err_len, "calibration text too short: segment %d of %d has %lld tokens, ctx %d needs more "
                     "(use fewer --rows or more text)", r + 1, c->rows, (long long)n, c->ctx);
            free(ids);
            return -1;
        }
        memcpy(c->tokens + (size_t)r * c->ctx, ids, (size_t)c->ctx * sizeof *ids);
        free(ids);
    }
    return 0;
}

/* "bpe:" or "spm:" and the SHA-256 of the vocabulary (pieces, special flags,
 * bos and eos). */
static void tokenizer_id(const tok_tokenizer *t, char out[80])
{
    sha256_ctx c;
    sha256_init(&c);
    int n = tok_vocab_size(t), head[3] = {n, tok_bos(t), tok_eos(t)};
    sha256_update(&c, head, sizeof head);
    for (int i = 0; i < n; i++) {
        size_t len = 0;
        const char *p = tok_piece(t, i, &len);
        uint32_t l32 = (uint32_t)len;
        uint8_t special = (uint8_t)tok_is_special(t, i);
        sha256_update(&c, &l32, sizeof l32);
        sha256_update(&c, p ? p : "", p ? len : 0);
        sha256_update(&c, &special, 1);
    }
    char hex[65];
    sha256_hex(&c, hex);
    snprintf(out, 80, "%s:%s", tok_get_kind(t) == TOK_SPM ? "spm" : "bpe", hex);
}

int calib_load(const tok_tokenizer *t, const char *const *paths, int n_paths, int rows, int ctx, calib_set *c,
               char *err, size_t err_len)
{
    assert(t && paths && n_paths > 0 && rows > 0 && ctx > 0);
    memset(c, 0, sizeof *c);
    c->rows = rows, c->ctx = ctx;
    char *text = NULL;
    size_t len = 0;
    err[0] = 0;
    if (read_sources(paths, n_paths, c, &text, &len, err, err_len)) {
        if (!err[0]) snprintf(err, err_len, "out of memory reading the calibration text");
        return -1;
    }
    tokenizer_id(t, c->tokenizer);
    c->tokens = malloc((size_t)rows * (size_t)ctx * sizeof *c->tokens);
    int rc = -1;
    if (!c->tokens) snprintf(err, err_len, "out of memory for %d x %d calibration tokens", rows, ctx);
    else if (len < (size_t)CALIB_WHOLE_BYTES_PER_TOKEN * (size_t)rows * (size_t)ctx)
        rc = rows_from_whole(t, text, len, c, err, err_len);
    else
        rc = rows_from_segments(t, text, len, c, err, err_len);
    free(text);
    if (rc) calib_free(c);
    return rc;
}

void calib_free(calib_set *c)
{
    free(c->tokens);
    free(c->sources_json);
    c->tokens = NULL, c->sources_json = NULL;
}
