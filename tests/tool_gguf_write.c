/*
 * tests/tool_gguf_write.c — drives model/gguf_write.c for tests/test_gguf_write.py:
 * copies a model into a GGUF file through mdl_gguf_out, a few rows per write call,
 * so that gguf-py and llama.cpp can judge the result.
 *
 *   tool_gguf_write SRC OUT [options]
 *     --f32            every tensor as F32 from mdl_tensor_rows_to_f32 (q/k rows in
 *                      GGUF order); default: the stored bytes as they are (GGUF SRC)
 *     --rows N         rows per write call (default 7)
 *     --set-u32 K V, --set-i32 K V, --set-f32 K V, --set-bool K V, --set-str K V, --del K
 *     --fault size     declare the first tensor one byte too big (add_tensor fails)
 *     --fault short    leave out the last byte of the last tensor, then commit
 *     --fault extra    write one byte more than the last tensor has
 *     --fault abort    write everything, then abort instead of commit (exit 0)
 *
 * Errors: the writer's one line on stderr, exit 1.
 */
#include "model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ggml type ids by bitplan's dtype names, so that the tool follows mdl_dtype as it grows */
static int ggml_id(const char *dtype)
{
    static const struct { const char *name; int id; } ids[] = {
        {"F32", 0},   {"F16", 1},   {"Q4_0", 2},  {"Q4_1", 3},  {"Q5_0", 6},  {"Q5_1", 7},  {"Q8_0", 8},
        {"Q2_K", 10}, {"Q3_K", 11}, {"Q4_K", 12}, {"Q5_K", 13}, {"Q6_K", 14}, {"I32", 26}, {"BF16", 30}};
    for (size_t i = 0; i < sizeof ids / sizeof *ids; i++)
        if (!strcmp(dtype, ids[i].name)) return ids[i].id;
    return -1;
}

typedef struct {
    int f32;
    int64_t rows_per_write;
    const char *fault;
} opts;

static void shape_of(const mdl_tensor *t, int64_t *rows, int64_t *cols)
{
    *rows = t->n_dims == 2 ? t->shape[0] : 1;
    *cols = t->n_dims == 2 ? t->shape[1] : t->shape[0];
}

static int declare(mdl_gguf_out *o, const mdl_model *m, const opts *op, char *err, size_t err_len)
{
    for (int i = 0; i < mdl_tensor_count(m); i++) {
        const mdl_tensor *t = mdl_tensor_at(m, i);
        int64_t rows, cols;
        int id = op->f32 ? 0 : ggml_id(mdl_dtype_name(t->type));
        if (t->n_dims > 2 || id < 0) {
            snprintf(err, err_len, "tool_gguf_write: tensor '%s': %d dims, type %s", t->name, t->n_dims, mdl_dtype_name(t->type));
            return -1;
        }
        shape_of(t, &rows, &cols);
        uint64_t nbytes = op->f32 ? (uint64_t)t->n_elems * 4 : t->n_bytes;
        if (i == 0 && op->fault && !strcmp(op->fault, "size")) nbytes++;
        if (mdl_gguf_out_add_tensor(o, t->name, (uint32_t)id, t->n_dims, rows, cols, nbytes, err, err_len)) return -1;
    }
    return 0;
}

/* One tensor, rows_per_write rows (or stored bytes of as many rows) per call. */
static int write_tensor(mdl_gguf_out *o, const mdl_model *m, const mdl_tensor *t, const opts *op, int last, char *err, size_t err_len)
{
    int64_t rows = op->f32 ? mdl_tensor_rows(t) : (t->n_dims == 2 ? t->shape[0] : 1);
    int64_t cols = t->n_elems / rows;
    size_t row_bytes = op->f32 ? (size_t)cols * 4 : t->n_bytes / (size_t)rows;
    float *buf = op->f32 ? malloc((size_t)op->rows_per_write * row_bytes) : NULL;
    int rc = op->f32 && !buf ? -1 : 0;
    for (int64_t r = 0; r < rows && !rc; r += op->rows_per_write) {
        int64_t n = rows - r < op->rows_per_write ? rows - r : op->rows_per_write;
        size_t bytes = (size_t)n * row_bytes;
        const void *p = (const uint8_t *)t->data + (size_t)r * row_bytes;
        if (op->f32 && mdl_tensor_rows_to_f32(m, t, r, n, buf)) rc = -1;
        if (op->f32) p = buf;
        if (last && r + n == rows && op->fault && !strcmp(op->fault, "short")) bytes--;
        if (!rc) rc = mdl_gguf_out_write(o, p, bytes, err, err_len);
    }
    if (!rc && last && op->fault && !strcmp(op->fault, "extra")) rc = mdl_gguf_out_write(o, t->data, 1, err, err_len);
    if (rc && !*err) snprintf(err, err_len, "tool_gguf_write: tensor '%s': cannot decode or no memory", t->name);
    free(buf);
    return rc;
}

/* --set-* / --del options, applied in order. */
static int set_meta(mdl_gguf_out *o, int argc, char **argv)
{
    for (int i = 3; i < argc; i++) {
        const char *a = argv[i];
        int rc = 0;
        if (!strcmp(a, "--del") && i + 1 < argc) { rc = mdl_gguf_out_del(o, argv[i + 1]); i++; continue; }
        if (strncmp(a, "--set-", 6) || i + 2 >= argc) continue;
        const char *k = argv[i + 1], *v = argv[i + 2];
        if (!strcmp(a, "--set-u32")) rc = mdl_gguf_out_set_u32(o, k, (uint32_t)strtoul(v, NULL, 10));
        else if (!strcmp(a, "--set-i32")) rc = mdl_gguf_out_set_i32(o, k, (int32_t)strtol(v, NULL, 10));
        else if (!strcmp(a, "--set-f32")) rc = mdl_gguf_out_set_f32(o, k, strtof(v, NULL));
        else if (!strcmp(a, "--set-bool")) rc = mdl_gguf_out_set_bool(o, k, atoi(v));
        else if (!strcmp(a, "--set-str")) rc = mdl_gguf_out_set_str(o, k, v);
        if (rc) { fprintf(stderr, "tool_gguf_write: %s %s failed\n", a, k); return -1; }
        i += 2;
    }
    return 0;
}

static void parse(opts *op, int argc, char **argv)
{
    *op = (opts){.rows_per_write = 7};
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--f32")) op->f32 = 1;
        else if (!strcmp(argv[i], "--rows") && i + 1 < argc) op->rows_per_write = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--fault") && i + 1 < argc) op->fault = argv[++i];
    }
    if (op->rows_per_write < 1) op->rows_per_write = 1;
}

int main(int argc, char **argv)
{
    mdl_model *m;
    mdl_gguf_out *o;
    opts op;
    char err[MDL_ERR_LEN] = "";
    if (argc < 3) {
        fprintf(stderr, "usage: tool_gguf_write SRC OUT [--f32] [--rows N] [--set-TYPE K V] [--del K] [--fault size|short|extra|abort]\n");
        return 2;
    }
    parse(&op, argc, argv);
    if (mdl_open(argv[1], &m, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1; }
    if (mdl_gguf_out_begin(argv[2], m, &o, err, sizeof err)) { fprintf(stderr, "%s\n", err); mdl_close(m); return 1; }
    int rc = set_meta(o, argc, argv) || declare(o, m, &op, err, sizeof err) || mdl_gguf_out_write_header(o, err, sizeof err);
    for (int i = 0; i < mdl_tensor_count(m) && !rc; i++)
        rc = write_tensor(o, m, mdl_tensor_at(m, i), &op, i == mdl_tensor_count(m) - 1, err, sizeof err);
    if (rc || (op.fault && !strcmp(op.fault, "abort"))) mdl_gguf_out_abort(o);
    else rc = mdl_gguf_out_commit(o, err, sizeof err);
    if (rc && *err) fprintf(stderr, "%s\n", err);
    mdl_close(m);
    return rc ? 1 : 0;
}
