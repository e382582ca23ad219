/*
 * tests/fuzz/fuzz_util.h — what the libFuzzer harnesses of tests/fuzz/ share: a
 * private scratch folder for the files the parsers want to open (they take paths,
 * and map what they read), the "parts" split of one input into several files, and
 * the consistency checks of an opened model.
 *
 * A check that fails is a finding: it prints what is wrong and aborts, so that
 * libFuzzer saves the input as a crash.
 */
#ifndef BITPLAN_FUZZ_UTIL_H
#define BITPLAN_FUZZ_UTIL_H

#include "util/util.h"
#include "model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FUZZ_CHECK(cond, ...)                                                     \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "fuzz check failed: %s (%s:%d): ", #cond, __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                         \
            fputc('\n', stderr);                                                  \
            abort();                                                              \
        }                                                                         \
    } while (0)

/* A rejected input's error: one line (no line break), not empty; printed when BITPLAN_FUZZ_VERBOSE
 * is set (to see why a seed does not get as far as it should). */
static void fuzz_rejected(const char *err)
{
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("BITPLAN_FUZZ_VERBOSE") != NULL;
    if (verbose) fprintf(stderr, "rejected: %s\n", err);
    FUZZ_CHECK(err[0] && !strpbrk(err, "\n\r"), "error '%s' is not one line", err);
}

/* A folder of this process's own (in /dev/shm where there is one: the parsers map
 * every file, and memory is faster than a disk), made once, removed at exit. */
static char fuzz_dir_path[64];

static void fuzz_dir_remove(void)
{
    static const char *names[] = {"in.gguf", "in.bin", "in.txt", "config.json", "model.safetensors", "tokenizer.json"};
    char p[128];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(p, sizeof p, "%s/%s", fuzz_dir_path, names[i]);
        unlink(p);
    }
    rmdir(fuzz_dir_path);
}

static const char *fuzz_dir(void)
{
    if (fuzz_dir_path[0]) return fuzz_dir_path;
    snprintf(fuzz_dir_path, sizeof fuzz_dir_path, "%s/bitplan-fuzz-XXXXXX", access("/dev/shm", W_OK) ? "/tmp" : "/dev/shm");
    if (!mkdtemp(fuzz_dir_path)) { perror("fuzz: mkdtemp"); abort(); }
    atexit(fuzz_dir_remove);
    return fuzz_dir_path;
}

/* Writes data[0..n) to NAME in the scratch folder; returns its path (in path). */
static const char *fuzz_write(const char *name, const void *data, size_t n, char *path, size_t cap)
{
    snprintf(path, cap, "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f)) { perror(path); abort(); }
    return path;
}

static void fuzz_remove(const char *name)
{
    char p[128];
    snprintf(p, sizeof p, "%s/%s", fuzz_dir(), name);
    unlink(p);
}

/* One input as several files: the parts are separated by FUZZ_SEP. Returns the
 * number of parts found (at most max); part i is data + off[i], len[i] bytes. */
#define FUZZ_SEP "\n#--bitplan-fuzz-part--#\n"

static int fuzz_split(const uint8_t *data, size_t size, int max, size_t *off, size_t *len)
{
    size_t k = strlen(FUZZ_SEP), at = 0;
    int n = 0;
    while (n < max) {
        const uint8_t *hit = n + 1 < max ? memmem(data + at, size - at, FUZZ_SEP, k) : NULL;
        off[n] = at;
        len[n] = hit ? (size_t)(hit - data) - at : size - at;
        n++;
        if (!hit) break;
        at = (size_t)(hit - data) + k;
    }
    return n;
}

/* ==== Checks of an opened model ==== */

/* What a successful mdl_open promises: every tensor's element and byte counts are
 * those of its shape and type and fit in the file, names find their tensors, the
 * configuration has no zero size, and every row of every weight decodes (the
 * first and the last are read, so a tensor placed past its file shows). */
static void fuzz_check_model(const mdl_model *m)
{
    const mdl_config *c = mdl_get_config(m);
    int64_t file = mdl_file_bytes(m);
    FUZZ_CHECK(c->n_layers >= 1 && c->dim >= 1 && c->n_heads >= 1 && c->n_kv_heads >= 1 && c->head_dim >= 1,
               "config sizes %d %d %d %d %d", c->n_layers, c->dim, c->n_heads, c->n_kv_heads, c->head_dim);
    FUZZ_CHECK(c->n_heads % c->n_kv_heads == 0, "heads %d / %d", c->n_heads, c->n_kv_heads);
    for (int i = 0; i < mdl_tensor_count(m); i++) {
        const mdl_tensor *t = mdl_tensor_at(m, i);
        int64_t n = 1;
        FUZZ_CHECK(t->n_dims >= 1 && t->n_dims <= MDL_MAX_DIMS, "'%s': %d dims", t->name, t->n_dims);
        for (int d = 0; d < t->n_dims; d++) {
            FUZZ_CHECK(t->shape[d] > 0, "'%s': dim %d is %lld", t->name, d, (long long)t->shape[d]);
            n *= t->shape[d];
        }
        FUZZ_CHECK(n == t->n_elems, "'%s': %lld elements, shape says %lld", t->name, (long long)t->n_elems, (long long)n);
        FUZZ_CHECK(t->n_bytes == mdl_row_bytes(t->type, n) && (int64_t)t->n_bytes <= file, "'%s': %zu bytes", t->name, t->n_bytes);
        FUZZ_CHECK(mdl_find(m, t->name) == t, "'%s' not found by name", t->name);
        if (t->type >= MDL_I32 || t->n_bytes > ((size_t)1 << 24)) continue;
        int64_t rows = mdl_tensor_rows(t), cols = t->n_elems / rows;
        float *row = malloc((size_t)cols * sizeof *row);
        FUZZ_CHECK(row != NULL, "out of memory");
        FUZZ_CHECK(!mdl_tensor_rows_to_f32(m, t, 0, 1, row) && !mdl_tensor_rows_to_f32(m, t, rows - 1, 1, row), "'%s'", t->name);
        free(row);
    }
}

/* The tokenizer a model carries (if any) on a fixed text: ids in range, and the
 * two-call protocol (a short buffer reports the count a long one gets); and its
 * vocabulary as a packed file's "tokenizer" metadata is a JSON object. */
static void fuzz_check_tokenizer(mdl_model *m)
{
    char err[MDL_ERR_LEN];
    char *json = mdl_tokenizer_json(m, err, sizeof err);
    if (json) {
        util_json *j = util_json_parse(json, strlen(json), err, sizeof err);
        FUZZ_CHECK(j && j->type == UTIL_JSON_OBJ, "the tokenizer's JSON does not parse: %s", j ? "not an object" : err);
        util_json_free(j);
        free(json);
    }
    tok_tokenizer *t = mdl_tokenizer(m, err, sizeof err);
    if (!t) return;
    static const char text[] = "Hello, world! <|im_start|>user 42\n\xe2\x96\x81\xff";
    int32_t ids[256];
    int64_t n = tok_encode(t, text, sizeof text - 1, 1, 1, ids, 256), k = tok_encode(t, text, sizeof text - 1, 1, 1, ids, 1);
    FUZZ_CHECK(n == k, "%lld tokens, %lld with a short buffer", (long long)n, (long long)k);
    if (n < 0 || n > 256) return;
    char out[1024];
    for (int64_t i = 0; i < n; i++) FUZZ_CHECK(ids[i] >= 0 && ids[i] < tok_vocab_size(t), "id %d", ids[i]);
    tok_decode(t, ids, n, out, sizeof out);
}

#endif
