/*
 * model/model.c — mdl_open's dispatch between the containers (gguf.c,
 * safetensors.c, then config.c and the tokenizer), tensors to fp32 (with the
 * HF -> GGUF RoPE row permutation), and the content hash. What the readers share
 * is in parts.c, which calls back into no reader: the dispatch sits above them all.
 *
 * What it must never do: copy a file into memory, hand out a tensor whose bytes
 * were not checked against its file, or crash on a bad file (errors are one line:
 * "FILE: problem").
 */
#include "model_int.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ==== Opening ==== */

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static int is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* A directory: the index if present, else model.safetensors, else the one .gguf. */
static int pick_in_dir(const char *dir, char *out, size_t cap, char *err, size_t err_len)
{
    static const char *names[] = {"model.safetensors.index.json", "model.safetensors"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(out, cap, "%s/%s", dir, names[i]);
        if (is_file(out)) return 0;
    }
    return mdl_errf(err, err_len, "%s: no model.safetensors.index.json or model.safetensors in this folder", dir);
}

/* What the first bytes say: 'g' (GGUF magic), 's' (a safetensors header: a JSON
 * object after the 8-byte length), or 0 (neither). A length that runs past the file
 * still says 's': the safetensors reader then reports exactly that. */
static int sniff(const char *path)
{
    unsigned char head[9] = {0};
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t n = fread(head, 1, sizeof head, f);
    fclose(f);
    if (n >= 4 && !memcmp(head, "GGUF", 4)) return 'g';
    return n == 9 && head[8] == '{' ? 's' : 0;
}

/* Sorts the name index and rejects duplicates. */
static int by_name_cmp(const void *a, const void *b, void *model)
{
    const mdl_model *m = model;
    return strcmp(m->tensors[*(const int *)a].name, m->tensors[*(const int *)b].name);
}

static int index_names(mdl_model *m, char *err, size_t err_len)
{
    if (!(m->by_name = malloc((size_t)(m->n_tensors ? m->n_tensors : 1) * sizeof *m->by_name)))
        return mdl_errf(err, err_len, "%s: out of memory", m->path);
    for (int i = 0; i < m->n_tensors; i++) m->by_name[i] = i;
    qsort_r(m->by_name, (size_t)m->n_tensors, sizeof *m->by_name, by_name_cmp, m);
    for (int i = 1; i < m->n_tensors; i++)
        if (!strcmp(m->tensors[m->by_name[i]].name, m->tensors[m->by_name[i - 1]].name))
            return mdl_errf(err, err_len, "%s: duplicate tensor name '%s'", m->path, m->tensors[m->by_name[i]].name);
    return 0;
}

int mdl_open(const char *path, mdl_model **out, char *err, size_t err_len)
{
    struct stat st;
    char picked[4096];
    int rc = -1;
    assert(path && out);
    *out = NULL;
    mdl_model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path))) { free(m); return mdl_errf(err, err_len, "%s: out of memory", path); }
    if (stat(path, &st)) { mdl_errf(err, err_len, "%s: %s", path, strerror(errno)); goto done; }
    const char *file = path;
    if (S_ISDIR(st.st_mode)) {
        if (pick_in_dir(path, picked, sizeof picked, err, err_len)) goto done;
        file = picked;
    }
    int kind = sniff(file);
    if (kind == 'g' || (!kind && ends_with(file, ".gguf"))) {
        m->format = "gguf";
        if (mdl_gguf_load(m, file, err, err_len)) goto done;
    } else if (!kind && !ends_with(file, ".json") && !ends_with(file, ".safetensors")) {
        mdl_errf(err, err_len, "%s: not a GGUF or safetensors file (neither format's first bytes)", file);
        goto done;
    } else {
        m->format = "safetensors";
        if (mdl_st_load(m, file, err, err_len)) goto done;
    }
    if (index_names(m, err, err_len) || mdl_config_load(m, err, err_len)) goto done;
    *out = m;
    rc = 0;
done:
    if (rc) mdl_close(m);
    return rc;
}

void mdl_close(mdl_model *m)
{
    if (!m) return;
    if (m->tok && m->tok_free) m->tok_free(m->tok);
    for (int i = 0; i < m->n_files; i++) {
        munmap((void *)m->files[i].map, m->files[i].size);
        free(m->files[i].path);
    }
    for (int i = 0; i < m->n_kv; i++) {
        free(m->kv[i].key);
        free(m->kv[i].s);
    }
    util_json_free(m->config_json);
    free(m->files);
    free(m->kv);
    free(m->tensors);
    free(m->by_name);
    free(m->dir);
    free(m->path);
    free(m);
}

/* ==== Tensors to fp32 ==== */

/* GGUF row r of a q/k weight with heads of hd rows: head h = r / hd, pair i and
 * member j (r % hd = 2i + j) come from HF row h*hd + j*hd/2 + i (HF keeps the two
 * rotated halves apart; GGUF interleaves them). */
static int64_t rope_source_row(int64_t r, int64_t hd)
{
    int64_t h = r / hd, w = r % hd;
    return h * hd + (w % 2) * (hd / 2) + w / 2;
}

/* A tensor as rows x cols for decoding: a 1-D tensor that permutes (a q/k bias)
 * is n values of one column each; any other 1-D tensor is one row. */
static void row_geometry(const mdl_tensor *t, int64_t *rows, int64_t *cols, int64_t *hd)
{
    *rows = t->n_dims > 1 ? t->n_elems / t->shape[t->n_dims - 1] : 1;
    *cols = t->n_elems / *rows;
    *hd = 0;
    if (t->permute_rope_heads > 0) {
        if (t->n_dims == 1) *rows = t->n_elems, *cols = 1;
        *hd = *rows / t->permute_rope_heads;
        assert(*hd % 2 == 0 && *hd * t->permute_rope_heads == *rows);
    }
}

int64_t mdl_tensor_rows(const mdl_tensor *t)
{
    int64_t rows, cols, hd;
    row_geometry(t, &rows, &cols, &hd);
    return rows;
}

int mdl_tensor_rows_to_f32(const mdl_model *m, const mdl_tensor *t, int64_t r0, int64_t n, float *out)
{
    (void)m;
    if (t->type >= MDL_I32) return -1; /* integer types are not weights */
    int64_t rows, cols, hd;
    row_geometry(t, &rows, &cols, &hd);
    assert(r0 >= 0 && n >= 0 && r0 + n <= rows && cols % mdl_block_size(t->type) == 0);
    size_t row_bytes = mdl_row_bytes(t->type, cols);
    const uint8_t *src = t->data;
    for (int64_t r = r0; r < r0 + n; r++) {
        int64_t s = hd ? rope_source_row(r, hd) : r;
        mdl_dequant_row(t->type, src + (size_t)s * row_bytes, out + (r - r0) * cols, cols);
    }
    return 0;
}

int mdl_tensor_to_f32(const mdl_model *m, const mdl_tensor *t, float *out)
{
    if (t->type >= MDL_I32) return -1;
    int64_t rows, cols, hd;
    row_geometry(t, &rows, &cols, &hd);
#pragma omp parallel for schedule(static) if (t->n_elems >= (1 << 18))
    for (int64_t r = 0; r < rows; r++) mdl_tensor_rows_to_f32(m, t, r, 1, out + r * cols);
    return 0;
}

/* ==== Finite values ==== */

/* First non-finite value of the tensor's rows decoded through buf[cols]: its flat
 * index, or -1. */
static int64_t first_nonfinite_rows(const mdl_model *m, const mdl_tensor *t, int64_t rows, int64_t cols, float *buf)
{
    for (int64_t r = 0; r < rows; r++) {
        mdl_tensor_rows_to_f32(m, t, r, 1, buf);
        for (int64_t j = 0; j < cols; j++)
            if (!isfinite(buf[j])) return r * cols + j;
    }
    return -1;
}

/* 1 if the raw bits of an F32/F16/BF16 tensor hold no Inf or NaN (exponent all
 * ones): a scan at memory speed, without decoding. */
static int raw_all_finite(const mdl_tensor *t)
{
    const uint8_t *p = t->data;
    int64_t n = t->n_elems;
    int bad = 0;
    if (t->type == MDL_F32) {
#pragma omp parallel for schedule(static) reduction(| : bad) if (n >= (1 << 20))
        for (int64_t i = 0; i < n; i++) {
            uint32_t v;
            memcpy(&v, p + 4 * i, 4);
            bad |= (v & 0x7F800000u) == 0x7F800000u;
        }
    } else {
        uint16_t mask = t->type == MDL_F16 ? 0x7C00 : 0x7F80;
#pragma omp parallel for schedule(static) reduction(| : bad) if (n >= (1 << 20))
        for (int64_t i = 0; i < n; i++) {
            uint16_t v;
            memcpy(&v, p + 2 * i, 2);
            bad |= (v & mask) == mask;
        }
    }
    return !bad;
}

int mdl_tensor_find_nonfinite(const mdl_model *m, const mdl_tensor *t, int64_t *row, int64_t *col, float *value)
{
    if (t->type >= MDL_I32) return -1;
    int64_t rows, cols, hd;
    row_geometry(t, &rows, &cols, &hd);
    if ((t->type == MDL_F32 || t->type == MDL_F16 || t->type == MDL_BF16) && raw_all_finite(t)) return 0;
    float *buf = malloc((size_t)cols * sizeof *buf);
    if (!buf) return -1;
    int64_t at = first_nonfinite_rows(m, t, rows, cols, buf);
    if (at >= 0) *row = at / cols, *col = at % cols, *value = buf[*col];
    free(buf);
    return at >= 0;
}

/* ==== Content hash ==== */

const char *mdl_content_hash(mdl_model *m)
{
    if (m->hash[0]) return m->hash;
    mdl_sha256 s;
    uint8_t digest[32];
    mdl_sha256_init(&s);
    for (int i = 0; i < m->n_files; i++) mdl_sha256_update(&s, m->files[i].map, m->files[i].size);
    mdl_sha256_final(&s, digest);
    mdl_sha256_hex(digest, m->hash);
    return m->hash;
}
