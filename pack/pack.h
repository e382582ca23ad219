/*
 * pack/ — quantizing a model per plan and writing it as one packed file, and
 * reading a packed file back as a runnable model. The layout of the values is
 * layout/layout.h; the file is specified in pack/FORMAT.md.
 *
 * Uses measure/ (GPTQ, Hessians), runtime/ (to run calibration rows and to build
 * the loaded model), model/ (to read model files, and packed files, which are
 * safetensors containers), db/ (the plan) and par/ (the ranks of an MPI job).
 *
 *     pack_params p; pack_params_init(&p);
 *     if (pack_model("model.gguf", "run.db", 0, "out.bp", &p, &stats, err, sizeof err)) ...
 *     rt_model *m; pack_load("out.bp", max_batch, 0, &m, err, sizeof err);
 */
#ifndef BITPLAN_PACK_H
#define BITPLAN_PACK_H

#include <stddef.h>
#include <stdint.h>

#include "layout/layout.h"

struct rt_model;

/* ==== Container writer (safetensors) ==== */

typedef struct pack_writer pack_writer;

/* A writer of the file `path`. Tensor data waits in an unlinked temporary file in
 * path's directory, not in memory. NULL with a message if that cannot be made
 * (no such folder, not writable) or out of memory. */
pack_writer *pack_writer_new(const char *path, char *err, size_t err_len);
void pack_writer_free(pack_writer *w);
/* Adds a tensor. dtype is a safetensors dtype ("U8", "U16", "U32", "F16", "F32").
 * The writer takes ownership of data (malloc'd) and frees it at once. 0, or -1 for
 * a bad dtype or shape, no memory or a failed write (pack_writer_strerror says). */
int pack_writer_add(pack_writer *w, const char *name, const char *dtype, int n_dims,
                    const int64_t *shape, void *data, size_t n_bytes);
const char *pack_writer_strerror(const pack_writer *w);
/* Adds a __metadata__ entry (copied). "checksums" is the writer's own (an assert). */
int pack_writer_meta(pack_writer *w, const char *key, const char *value);
/* Writes the file atomically: a temporary file beside path, fsync, rename. A
 * killed writer never leaves a partial file under path. The metadata gets a
 * "checksums" entry: every tensor's name -> mdl_packed_checksum of the bytes
 * it was added with, 16 hex digits (pack/FORMAT.md, version 2). */
int pack_writer_write(pack_writer *w, char *err, size_t err_len);

/* ==== Packing a model per plan ==== */

/* Sequential is the default: it gave lower KL divergence on SmolLM2 at 3 and 4 bpw
 * (pack/FORMAT.md has the numbers). */
typedef enum {
    PACK_HESS_FULL = 0,     /* Hessians from the full-precision model (as measured) */
    PACK_HESS_SEQUENTIAL,   /* recomputed through the already-quantized layers */
} pack_hessian_mode;

typedef enum {
    PACK_OUT_BITPLAN = 0,   /* bitplan's packed file (pack/FORMAT.md): bitplan's options */
    PACK_OUT_GGUF,          /* a GGUF file for llama.cpp: a plan of ggml block types */
} pack_out_format;

/* Where a pack stands, after each layer (pack_params.progress). */
typedef struct {
    const char *phase;      /* "quantize" */
    int layer, n_layers;    /* layers done (the head is layer n_layers), of */
    double seconds, seconds_left;
} pack_progress;

typedef struct {
    pack_out_format out;
    pack_hessian_mode hessians;
    void (*progress)(void *ctx, const pack_progress *p); /* NULL: silent */
    void *progress_ctx;
    int resident;           /* 1: every weight as fp32 from the start (memory grows with the model) */
    /* Round-to-nearest instead of GPTQ: no calibration text, no Hessians, minutes
     * instead of hours on a 7B model, at more damage (a measurement's rtn_err says
     * how much). Options without transforms only (a rotation or input scales are
     * chosen for GPTQ's Hessian). */
    int rtn;
    /* With rtn and no database (pack_model's db_path NULL): every linear layer at
     * uniform, the head at uniform_head (NULL: uniform). */
    const lay_option *uniform, *uniform_head;
} pack_params;
void pack_params_init(pack_params *p);

typedef struct {
    int64_t n_quantized;        /* tensors quantized */
    int64_t quantized_bits;     /* sum of lay_tensor_bits over them */
    int64_t quantized_weights;  /* their rows x cols */
    int64_t file_bytes;
    double seconds;
    int ranks;                  /* processes of the job (par/): 1 without mpirun */
    double sent_bytes;          /* with ranks > 1: payload every rank sent, summed */
    double wait_share;          /* with ranks > 1: mean share of the time inside MPI calls */
} pack_stats;

/* Quantizes the model at db's plan (plan_id 0 = the newest plan), or with db_path
 * NULL (p->rtn and p->uniform set) at p's uniform options, and writes out,
 * in the format p->out names (pack/export.c says what a GGUF holds). Under an MPI
 * launcher every rank calls it: the work is split, rank 0 reads the database and
 * writes the file, which is one process's byte for byte. */
int pack_model(const char *model_path, const char *db_path, int64_t plan_id, const char *out,
               const pack_params *p, pack_stats *stats, char *err, size_t err_len);

/* ==== Loading ==== */

/* 1 if path is a bitplan packed file (by its metadata), 0 otherwise. */
int pack_is_packed(const char *path);
/* Opens a packed file as a runnable model (packed linear layers). Products of any
 * batch size work; max_batch sizes each layer's scratch (larger batches run in
 * pieces of max_batch rows). Products quantize activations to int8, as generation
 * wants; with flags PACK_LOAD_EXACT, batches of RT_PACKED_EXACT_BATCH rows or more
 * are W_deq x in fp32 instead (runtime.h's RT_PACKED_EXACT), as evaluation wants.
 * Every check of pack/FORMAT.md runs first, the checksum of every tensor included
 * (a version-1 file has none); an error is one line naming the file (and the
 * tensor). */
#define PACK_LOAD_EXACT 1
int pack_load(const char *path, int max_batch, int flags, struct rt_model **out, char *err, size_t err_len);
/* The same for a file already opened by model/ (mdl_open), which the model takes
 * over: it is closed with the model, or here on failure. */
struct mdl_model;
int pack_load_file(struct mdl_model *file, int max_batch, int flags, struct rt_model **out, char *err,
                   size_t err_len);

/* What pack_verify_file found of a sound file. */
typedef struct {
    int version;            /* format_version: 1 has no checksums */
    int n_tensors;
    int64_t checked_bytes;  /* bytes whose checksums matched */
} pack_verify_info;

/* Checks a packed file opened by model/ (which has checked the container: bounds,
 * sizes, data offsets that tile the data) for everything pack_load checks: the
 * checksum of every tensor, then, if they match, the format version, options,
 * parts and permutations, by loading it. Each problem is one line "FILE: ..."
 * handed to problem(arg, line); every bad checksum is listed, the structure stops
 * at its first problem. Returns the number of problems (0: sound). Takes over
 * file and closes it. */
int pack_verify_file(struct mdl_model *file, void (*problem)(void *arg, const char *line), void *arg,
                     pack_verify_info *info);

#endif
