/*
 * pack/export.c — the GGUF side of pack_model (pack_params.out == PACK_OUT_GGUF):
 * a plan of ggml block types written as a GGUF file that llama.cpp runs unchanged.
 *
 * The packer quantizes exactly as for its own format (quantize.c: the calibration
 * walk, GPTQ inside each type's block grid); this file only decides what the GGUF
 * holds and hands the bytes to model/'s streaming GGUF writer:
 *  1. The metadata is the source model's (model/gguf_write.c copies a GGUF
 *     source's keys, or writes the Llama keys and tokenizer of a safetensors one),
 *     with general.file_type from the plan's dominant type,
 *     general.quantization_version 2, and bitplan.plan: the plan as a packed
 *     file records it (FORMAT.md's "plan"), so that the file says where it came from.
 *  2. Every tensor is declared before any data is written (GGUF's header lists
 *     them all), in the order the walk produces them: the planned matrices layer
 *     by layer, the head last (tied: token_embd.weight, so that the embedding is
 *     the head's quantized matrix, as in llama-quantize's files), then every other
 *     tensor of the source.
 *  3. A planned matrix is its blocks, rows in GGUF order (model/ reads q/k rows of
 *     a Hugging Face model into GGUF's RoPE order already). Other tensors: 1-D as
 *     F32; 2-D as stored when the source is a GGUF file and the type is one
 *     llama.cpp reads, else F16.
 * Memory holds one tensor's blocks at a time; the file appears only when complete.
 */
#include "pack_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ggml type ids of the unquantized types (the block types are lay_ggml_type). */
enum { GGML_F32 = 0, GGML_F16 = 1 };

/* llama.cpp's general.file_type for a file mostly of one block type. */
static uint32_t file_type_of(int ggml_type)
{
    switch (ggml_type) {
    case LAY_GGML_Q4_0: return 2;
    case LAY_GGML_Q4_1: return 3;
    case LAY_GGML_Q8_0: return 7;
    case LAY_GGML_Q5_0: return 8;
    case LAY_GGML_Q5_1: return 9;
    case LAY_GGML_Q2_K: return 10;
    case LAY_GGML_Q3_K: return 12; /* Q3_K_M */
    case LAY_GGML_Q4_K: return 15; /* Q4_K_M */
    case LAY_GGML_Q5_K: return 17; /* Q5_K_M */
    case LAY_GGML_Q6_K: return 18;
    default: return 1;             /* mostly F16 */
    }
}

/* The ggml type a source tensor can be copied as (a GGUF source's tensors are in
 * GGUF's row order already), or -1 to convert it. */
static int stored_ggml_type(const mdl_model *file, const mdl_tensor *t)
{
    if (strcmp(mdl_format(file), "gguf") || t->permute_rope_heads) return -1;
    return mdl_ggml_of_dtype(t->type);
}

struct pack_gguf {
    mdl_gguf_out *out;
    const mdl_model *file;
    int64_t type_bytes[32];     /* planned bytes per ggml type, for general.file_type */
};

int pack_gguf_begin(const char *path, mdl_model *file, pack_gguf **out, char *err, size_t err_len)
{
    pack_gguf *g = calloc(1, sizeof *g);
    if (!g) return snprintf(err, err_len, "out of memory"), -1;
    g->file = file;
    if (mdl_gguf_out_begin(path, file, &g->out, err, err_len)) {
        free(g);
        return -1;
    }
    *out = g;
    return 0;
}

void pack_gguf_abort(pack_gguf *g)
{
    if (!g) return;
    mdl_gguf_out_abort(g->out);
    free(g);
}

int pack_gguf_declare_planned(pack_gguf *g, const char *name, const lay_option *o, int64_t rows, int64_t cols,
                              char *err, size_t err_len)
{
    int type = lay_option_ggml(o);
    if (type < 0)
        return snprintf(err, err_len, "%s: option \"%s\" is not a ggml block type, so GGUF cannot store it "
                        "(measure with --options ggml, or write bitplan's own format with `pack`)", name, o->name), -1;
    int64_t bytes = rows * lay_ggml_row_bytes(type, cols);
    g->type_bytes[type] += bytes;
    return mdl_gguf_out_add_tensor(g->out, name, (uint32_t)type, 2, rows, cols, (uint64_t)bytes, err, err_len);
}

/* The type and bytes an unplanned tensor is written with (invariant 3). */
static void unplanned_layout(const pack_gguf *g, const mdl_tensor *t, int *type, uint64_t *bytes)
{
    int64_t rows = mdl_tensor_rows(t), cols = t->n_elems / rows;
    int stored = t->n_dims == 1 ? -1 : stored_ggml_type(g->file, t);
    if (t->n_dims == 1) *type = GGML_F32, *bytes = (uint64_t)t->n_elems * 4;
    else if (stored >= 0) *type = stored, *bytes = t->n_bytes;
    else *type = GGML_F16, *bytes = (uint64_t)(rows * cols) * 2;
}

int pack_gguf_declare_unplanned(pack_gguf *g, const mdl_tensor *t, char *err, size_t err_len)
{
    int type;
    uint64_t bytes;
    unplanned_layout(g, t, &type, &bytes);
    int64_t rows = t->n_dims == 1 ? 1 : mdl_tensor_rows(t), cols = t->n_elems / rows;
    return mdl_gguf_out_add_tensor(g->out, t->name, (uint32_t)type, t->n_dims == 1 ? 1 : 2, rows, cols, bytes, err,
                                   err_len);
}

int pack_gguf_start_data(pack_gguf *g, const char *plan_json, char *err, size_t err_len)
{
    int best = -1;
    for (int k = 0; k < 32; k++)
        if (g->type_bytes[k] && (best < 0 || g->type_bytes[k] > g->type_bytes[best])) best = k;
    if (mdl_gguf_out_set_u32(g->out, "general.file_type", file_type_of(best)) ||
        mdl_gguf_out_set_u32(g->out, "general.quantization_version", 2) ||
        mdl_gguf_out_set_str(g->out, MDL_GGUF_PLAN_KEY, plan_json))
        return snprintf(err, err_len, "out of memory"), -1;
    return mdl_gguf_out_write_header(g->out, err, err_len);
}

int pack_gguf_write_planned(pack_gguf *g, const lay_qtensor *q, char *err, size_t err_len)
{
    size_t bytes = (size_t)(q->rows * lay_ggml_row_bytes(lay_option_ggml(&q->opt), q->cols));
    return mdl_gguf_out_write(g->out, q->blocks, bytes, err, err_len);
}

/* Rows of t as F32 or F16, a slab at a time. */
static int write_converted(pack_gguf *g, const mdl_tensor *t, int half, char *err, size_t err_len)
{
    int64_t rows = t->n_dims == 1 ? 1 : mdl_tensor_rows(t), cols = t->n_elems / rows, slab = 256;
    float *f = malloc((size_t)(slab * cols) * sizeof *f);
    uint16_t *h = half ? malloc((size_t)(slab * cols) * sizeof *h) : NULL;
    int rc = !f || (half && !h) ? snprintf(err, err_len, "out of memory writing %s", t->name), -1 : 0;
    for (int64_t r0 = 0; !rc && r0 < rows; r0 += slab) {
        int64_t n = rows - r0 < slab ? rows - r0 : slab;
        if (t->n_dims == 1) mdl_tensor_to_f32(g->file, t, f);
        else mdl_tensor_rows_to_f32(g->file, t, r0, n, f);
        if (half)
            for (int64_t k = 0; k < n * cols; k++) h[k] = lay_f32_to_f16(f[k]);
        rc = mdl_gguf_out_write(g->out, half ? (const void *)h : (const void *)f,
                                (size_t)(n * cols) * (half ? 2 : 4), err, err_len);
    }
    free(f), free(h);
    return rc;
}

int pack_gguf_write_unplanned(pack_gguf *g, const mdl_tensor *t, char *err, size_t err_len)
{
    int type;
    uint64_t bytes;
    unplanned_layout(g, t, &type, &bytes);
    if (type == GGML_F32) return write_converted(g, t, 0, err, err_len);
    if (type == GGML_F16 && !(t->type == MDL_F16 && stored_ggml_type(g->file, t) == GGML_F16))
        return write_converted(g, t, 1, err, err_len);
    return mdl_gguf_out_write(g->out, t->data, t->n_bytes, err, err_len);
}

int pack_gguf_commit(pack_gguf *g, char *err, size_t err_len)
{
    int rc = mdl_gguf_out_commit(g->out, err, err_len);
    free(g);
    return rc;
}
