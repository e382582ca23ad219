/*
 * pack/pack_int.h — what the files of pack/ share: the metadata builders
 * (meta.c) used by the packer (quantize.c), and the names of a tensor's parts.
 * Internal to pack/.
 */
#ifndef BITPLAN_PACK_INT_H
#define BITPLAN_PACK_INT_H

#include "pack.h"
#include "util/util.h"
#include "model/model.h"

#define PACK_FORMAT "bitplan-packed"
#define PACK_FORMAT_VERSION 5     /* the newest version written; 2 added the checksums, 3 ggml block
                                     types, 4 input rotations, 5 input scales */
#define PACK_FORMAT_VERSION_ROT 4   /* what a file with rotations and no input scales is written as */
#define PACK_FORMAT_VERSION_GGML 3  /* what a file with ggml block types and neither is written as */
#define PACK_FORMAT_VERSION_PLAIN 2 /* what a file with neither is written as */
#define PACK_FORMAT_VERSION_MIN 1 /* the oldest read: version 1 has no checksums */
#define PACK_META_CHECKSUMS "checksums"

/* Suffixes of the parts of a quantized tensor (pack/FORMAT.md). */
#define PACK_SUFFIX_VALUES ".qvalues"
#define PACK_SUFFIX_SCALES ".qscales"
#define PACK_SUFFIX_ZEROS ".qzeros"
#define PACK_SUFFIX_MINS ".qmins"
#define PACK_SUFFIX_PERM ".qperm"
#define PACK_SUFFIX_XSCALE ".qxscale"

/* One quantized tensor as the metadata describes it. */
typedef struct {
    const char *name;
    int64_t rows, cols;
    lay_option opt;
    uint32_t rot_seed;         /* opt.rot: the seed of its signs */
} pack_meta_tensor;

/* What the "plan" metadata records. */
typedef struct {
    int64_t plan_id;
    const char *kind;          /* "bpw" or "vram" */
    double target, achieved_bpw, plan_file_bpw, objective;
    double file_bpw;           /* quantized bits / quantized weights, as written */
    const char *db_path, *model_hash, *hessians;
} pack_meta_plan;

/* Appends the JSON of the config / options / plan metadata to b (check b->oom). */
void pack_meta_options(sb_buf *b, const pack_meta_tensor *t, int n);
void pack_meta_plan_json(sb_buf *b, const pack_meta_plan *p);

/* Converts an option as model/ reads it from a packed file into a lay_option. */

/* ==== GGUF output (export.c) ==== */

/* pack_model's GGUF sink: begin, declare every tensor (the planned ones in the
 * order they will be written, then the rest), start_data, write each in that
 * order, commit (or abort: nothing is left at the path). 0, or -1 with a message. */
typedef struct pack_gguf pack_gguf;
int pack_gguf_begin(const char *path, mdl_model *file, pack_gguf **out, char *err, size_t err_len);
int pack_gguf_declare_planned(pack_gguf *g, const char *name, const lay_option *o, int64_t rows, int64_t cols,
                              char *err, size_t err_len);
int pack_gguf_declare_unplanned(pack_gguf *g, const mdl_tensor *t, char *err, size_t err_len);
int pack_gguf_start_data(pack_gguf *g, const char *plan_json, char *err, size_t err_len);
int pack_gguf_write_planned(pack_gguf *g, const lay_qtensor *q, char *err, size_t err_len);
int pack_gguf_write_unplanned(pack_gguf *g, const mdl_tensor *t, char *err, size_t err_len);
int pack_gguf_commit(pack_gguf *g, char *err, size_t err_len);  /* frees g */
void pack_gguf_abort(pack_gguf *g);

#endif
