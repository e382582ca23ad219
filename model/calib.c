/*
 * model/calib.c — calibration text into rows of tokens, and the hashes that
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
#include "model/model.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CALIB_WHOLE_BYTES_PER_TOKEN 32

/* ==== Hashes (model/'s SHA-256) ==== */

static void sha256_hex(mdl_sha256 *c, char hex[65])
{
    uint8_t d[32];
    mdl_sha256_final(c, d);
    mdl_sha256_hex(d, hex);
}

/* ==== Sources ==== */

/* Reads the files, joins them, and fills the hashes and sources_json of c. The
 * joined text goes to *text (malloc'd). */
static int read_sources(const char *const *paths, int n, calib_set *c, char **text, size_t *text_len,
                        char *err, size_t err_len)
{
    sb_buf all = {0}, json = {0};
    mdl_sha256 all_hash;
    mdl_sha256_init(&all_hash);
    int rc = 0;
    sb_putc(&json, '[');
    for (int i = 0; i < n && !rc; i++) {
        size_t n;
        char *one = util_read_file(paths[i], UTIL_MAX_TEXT, &n, err, err_len), hex[65];
        if (!one) { rc = -1; break; }
        if (memchr(one, 0, n)) {
            snprintf(err, err_len, "%s: a NUL byte: not a text file", paths[i]);
            free(one), rc = -1;
            break;
        }
        sb_putn(i ? sb_puts(&all, "\n\n") : &all, one, n);
        mdl_sha256_of(one, n, hex);
        free(one);
        mdl_sha256_update(&all_hash, hex, 64);
        /* recorded absolute, so that pack finds the text from any folder */
        char *abs = realpath(paths[i], NULL);
        sb_json_string(sb_puts(&json, i ? ",{\"path\":" : "{\"path\":"), abs ? abs : paths[i]);
        sb_puts(sb_puts(sb_puts(&json, ",\"sha256\":\""), hex), "\"}");
        free(abs);
    }
    sb_putc(&json, ']');
    if (!rc && (all.oom || json.oom)) snprintf(err, err_len, "out of memory reading the calibration text"), rc = -1;
    if (rc) { free(all.s), free(json.s); return -1; }
    sha256_hex(&all_hash, c->sources_hash);
    c->sources_json = json.s;
    *text = all.s ? all.s : calloc(1, 1), *text_len = all.len;
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

/* Segment r of `rows` equal byte segments of text[0..len), moved forward to a line
 * start: its first ctx tokens (or fewer, if the whole segment has fewer) go to
 * *ids[*n], and *end gets the end of the bytes they were cut from (nothing after
 * it is read). 0, or -1 when tokenizing fails. */
static int segment_row(const tok_tokenizer *t, const char *text, size_t len, int rows, int ctx, int r,
                       int32_t **ids, int64_t *n, size_t *end)
{
    size_t a = (size_t)((double)len * r / rows), b = (size_t)((double)len * (r + 1) / rows);
    while (a > 0 && a < b && text[a - 1] != '\n') a++;
    *ids = NULL;
    for (size_t window = (size_t)ctx * 8;; window *= 2) {
        size_t wl = a + window < b ? window : b - a;
        free(*ids);
        if (!(*ids = encode_all(t, text + a, wl, n))) return -1;
        *end = a + wl;
        if (*n >= ctx || wl == b - a) return 0;
    }
}

/* Row r: the first ctx tokens of the r-th equal byte segment (starting at a line). */
static int rows_from_segments(const tok_tokenizer *t, const char *text, size_t len, calib_set *c, char *err,
                              size_t err_len)
{
    for (int r = 0; r < c->rows; r++) {
        int64_t n = 0;
        int32_t *ids;
        size_t end;
        if (segment_row(t, text, len, c->rows, c->ctx, r, &ids, &n, &end))
            return snprintf(err, err_len, "tokenizing the calibration text failed"), -1;
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
    mdl_sha256 c;
    mdl_sha256_init(&c);
    int n = tok_vocab_size(t), head[3] = {n, tok_bos(t), tok_eos(t)};
    mdl_sha256_update(&c, head, sizeof head);
    for (int i = 0; i < n; i++) {
        size_t len = 0;
        const char *p = tok_piece(t, i, &len);
        uint32_t l32 = (uint32_t)len;
        uint8_t special = (uint8_t)tok_is_special(t, i);
        mdl_sha256_update(&c, &l32, sizeof l32);
        mdl_sha256_update(&c, p ? p : "", p ? len : 0);
        mdl_sha256_update(&c, &special, 1);
    }
    char hex[65];
    sha256_hex(&c, hex);
    snprintf(out, 80, "%s:%s", tok_get_kind(t) == TOK_SPM ? "spm" : "bpe", hex);
}

static int is_short(size_t len, int rows, int ctx)
{
    return len < (size_t)CALIB_WHOLE_BYTES_PER_TOKEN * (size_t)rows * (size_t)ctx;
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
    else if (is_short(len, rows, ctx))
        rc = rows_from_whole(t, text, len, c, err, err_len);
    else
        rc = rows_from_segments(t, text, len, c, err, err_len);
    free(text);
    if (rc) calib_free(c);
    return rc;
}

int calib_heldout(const tok_tokenizer *t, const char *const *paths, int n_paths, int rows, int ctx, size_t max_bytes,
                  char **out, size_t *out_len, char *err, size_t err_len)
{
    assert(t && paths && n_paths > 0 && rows > 0 && ctx > 0);
    calib_set c;
    memset(&c, 0, sizeof c);
    char *text = NULL;
    size_t len = 0, unread = 0;
    err[0] = 0;
    *out = NULL, *out_len = 0;
    if (read_sources(paths, n_paths, &c, &text, &len, err, err_len)) {
        if (!err[0]) snprintf(err, err_len, "out of memory reading the calibration text");
        return -1;
    }
    calib_free(&c);
    unread = len; /* short text: the rows may read every byte */
    if (!is_short(len, rows, ctx)) {
        int32_t *ids;
        int64_t n;
        if (segment_row(t, text, len, rows, ctx, rows - 1, &ids, &n, &unread)) {
            free(text);
            return snprintf(err, err_len, "tokenizing the calibration text failed"), -1;
        }
        free(ids);
    }
    size_t from = len - unread > max_bytes ? len - max_bytes : unread;
    while (from > 0 && from < len && text[from - 1] != '\n') from++;
    memmove(text, text + from, len - from);
    text[len - from] = 0;
    *out = text, *out_len = len - from;
    return 0;
}

void calib_free(calib_set *c)
{
    free(c->tokens);
    free(c->sources_json);
    c->tokens = NULL, c->sources_json = NULL;
}
