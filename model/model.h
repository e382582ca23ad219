/*
 * model/ — reading model files: GGUF (v2, v3) and safetensors (single file or
 * sharded with model.safetensors.index.json plus config.json), the Llama-family
 * configuration, and the tokenizer stored in the model.
 *
 * This is the only module that parses model files. It uses nothing else of the
 * project. Files are memory-mapped, never copied; tensors are dequantized to
 * fp32 on request (mdl_tensor_to_f32), one tensor at a time.
 *
 * Tensor names are canonical GGUF names whatever the container: a safetensors
 * "model.layers.3.self_attn.q_proj.weight" is listed as "blk.3.attn_q.weight".
 * Shapes are row-major, outermost first, as in PyTorch: a linear layer's weight
 * is shape {rows = out_features, cols = in_features}. (GGUF's ne[] is the
 * reverse order; the reader turns it around.) For q and k of a safetensors
 * (Hugging Face) model the reader permutes rows into GGUF's interleaved RoPE
 * order, so that one forward pass serves both containers.
 *
 * Typical use:
 *
 *     mdl_model *m; char err[256];
 *     if (mdl_open("model.gguf", &m, err, sizeof err)) { fprintf(stderr, "%s\n", err); ... }
 *     const mdl_tensor *t = mdl_find(m, "blk.0.attn_q.weight");
 *     float *w = malloc(t->n_elems * sizeof *w);
 *     mdl_tensor_to_f32(m, t, w);
 *     mdl_close(m);
 */
#ifndef BITPLAN_MODEL_H
#define BITPLAN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "layout/layout.h"
#include "util/util.h"

#define MDL_MAX_DIMS 4
#define MDL_ERR_LEN 256 /* a good size for the err buffers below */

/* ==== Data types ==== */

typedef enum {
    MDL_F32 = 0,
    MDL_F16,
    MDL_BF16,
    MDL_Q8_0, /* 34 bytes per 32: fp16 d, 32 x int8                       */
    MDL_Q4_0, /* 18 bytes per 32: fp16 d, 16 bytes of nibbles (q - 8)      */
    MDL_Q4_1, /* 20 bytes per 32: fp16 d, fp16 m, 16 bytes of nibbles      */
    MDL_Q4_K, /* 144 bytes per 256 */
    MDL_Q5_K, /* 176 bytes per 256 */
    MDL_Q6_K, /* 210 bytes per 256 */
    MDL_Q5_0, /* 22 bytes per 32: fp16 d, 32 high bits, 16 bytes of nibbles (q - 16) */
    MDL_Q5_1, /* 24 bytes per 32: fp16 d, fp16 m, 32 high bits, nibbles      */
    MDL_Q2_K, /* 84 bytes per 256 */
    MDL_Q3_K, /* 110 bytes per 256 (the block layouts: layout/ggml.c)          */
    MDL_I32,  /* safetensors/GGUF integer tensors: listed, not dequantized */
    MDL_U8,   /* safetensors unsigned integers (bitplan packed files): listed, */
    MDL_U16,  /* not dequantized; every type from MDL_I32 on is an integer type */
    MDL_U32,
    MDL_DTYPE_COUNT
} mdl_dtype;

const char *mdl_dtype_name(mdl_dtype t); /* "F32", "Q4_K", ... */

/* ==== Configuration ==== */

typedef enum { MDL_ROPE_NONE = 0, MDL_ROPE_LINEAR, MDL_ROPE_YARN, MDL_ROPE_LLAMA3 } mdl_rope_scaling;

typedef struct {
    char arch[32];        /* "llama", "mistral", "qwen2", ... */
    char name[128];       /* general.name or "" */
    int n_layers;         /* transformer blocks */
    int dim;              /* hidden size (embedding length) */
    int hidden_dim;       /* feed-forward size */
    int n_heads;          /* query heads */
    int n_kv_heads;       /* key/value heads (GQA) */
    int head_dim;         /* dim / n_heads unless the file says otherwise */
    int vocab_size;
    int max_ctx;          /* trained context length */
    float rope_theta;     /* RoPE base frequency */
    int rope_dim;         /* dimensions rotated per head (usually head_dim) */
    mdl_rope_scaling rope_scaling;
    float rope_scale;     /* factor for linear/yarn/llama3 scaling, 1 if none */
    float norm_eps;       /* RMSNorm epsilon */
    int tied_embeddings;  /* 1: no separate output.weight, the head is token_embd */
    int attn_bias;        /* 1: q/k/v have biases (Qwen2) */
} mdl_config;

/* ==== Tensors ==== */

typedef struct {
    char name[96];                 /* canonical GGUF name */
    mdl_dtype type;
    int n_dims;
    int64_t shape[MDL_MAX_DIMS];   /* row-major, outermost first */
    int64_t n_elems;
    const void *data;              /* points into the mapping */
    size_t n_bytes;
    int permute_rope_heads;        /* >0: rows to be permuted HF->GGUF with this many heads */
} mdl_tensor;

typedef struct mdl_model mdl_model;
typedef struct tok_tokenizer tok_tokenizer;

/* Opens a .gguf file, a .safetensors file, a model.safetensors.index.json, or a
 * directory holding one of those and config.json. Returns 0, or -1 with a one-line
 * message naming the file and the problem in err. Validates every tensor's extent
 * against the file before returning. */
int mdl_open(const char *path, mdl_model **out, char *err, size_t err_len);
void mdl_close(mdl_model *m);

/* The configuration as one JSON object, the one shape bitplan writes it in (a packed
 * file's metadata, the database's models.config_json; model/packed_meta.c reads it
 * back): every field of mdl_config, rope_scaling by name. */
void mdl_config_json(sb_buf *b, const mdl_config *c);
/* "none", "linear", "yarn", "llama3"; and back (-1: no such name). */
const char *mdl_rope_scaling_name(mdl_rope_scaling s);
int mdl_rope_scaling_of_name(const char *name, mdl_rope_scaling *out);

const mdl_config *mdl_get_config(const mdl_model *m);
const char *mdl_path(const mdl_model *m);
const char *mdl_format(const mdl_model *m);        /* "gguf" or "safetensors" */
int mdl_tensor_count(const mdl_model *m);
const mdl_tensor *mdl_tensor_at(const mdl_model *m, int i);
const mdl_tensor *mdl_find(const mdl_model *m, const char *name); /* NULL if absent */

/* Dequantizes t into out[t->n_elems]. Returns 0, or -1 for a type that cannot be
 * dequantized (MDL_I32). NaN/Inf are passed through; callers check. */
int mdl_tensor_to_f32(const mdl_model *m, const mdl_tensor *t, float *out);

/* Rows as the tensor is decoded: the outer dimensions of a matrix (a q/k bias
 * that is permuted counts each value as a row; any other vector is one row). */
int64_t mdl_tensor_rows(const mdl_tensor *t);
/* Dequantizes rows r0..r0+n-1 of t (in canonical order: q/k rows of a safetensors
 * model come out permuted, as from mdl_tensor_to_f32) into out[n][cols], straight
 * from the mapping, so that a model never needs a whole tensor as fp32. Returns 0,
 * or -1 for an integer type. Bit-identical to the same rows of mdl_tensor_to_f32;
 * never allocates. */
int mdl_tensor_rows_to_f32(const mdl_model *m, const mdl_tensor *t, int64_t r0, int64_t n, float *out);
/* Finds the first Inf or NaN of t in row-major order: 1 with its row, column (as
 * mdl_tensor_rows_to_f32 counts them) and value, 0 if every value is finite, -1
 * for an integer type or no memory. F32/F16/BF16 are checked on their bits at
 * memory speed; block formats are decoded a row at a time. */
int mdl_tensor_find_nonfinite(const mdl_model *m, const mdl_tensor *t, int64_t *row, int64_t *col, float *value);

/* Metadata lookup (GGUF keys, config.json keys prefixed "config.", or a safetensors
 * file's __metadata__ entries prefixed "meta."). Return 0 if found with the right
 * type, -1 otherwise. Strings point into the model. */
int mdl_meta_str(const mdl_model *m, const char *key, const char **out);
int mdl_meta_int(const mdl_model *m, const char *key, int64_t *out);

/* Like mdl_meta_int for any number (integers, floats, bools). 0 if found, else -1. */
int mdl_meta_float(const mdl_model *m, const char *key, double *out);
/* Bytes of the model's file(s) on disk (all shards together). */
int64_t mdl_file_bytes(const mdl_model *m);

/* SHA-256 of the model's file(s), hex, 64 chars + NUL; computed once and cached. */
const char *mdl_content_hash(mdl_model *m);

/* The model's tokenizer (owned by the model), or NULL with err set if the file
 * holds none or an unsupported one, or (err saying "out of memory") if memory ran out. */
tok_tokenizer *mdl_tokenizer(mdl_model *m, char *err, size_t err_len);

/* Row dequantizers, exposed for tests: n must be a multiple of the type's block. */
void mdl_dequant_row(mdl_dtype t, const void *src, float *dst, int64_t n);
size_t mdl_row_bytes(mdl_dtype t, int64_t n); /* bytes of n values of type t */
/* GGUF's type ids: the dtype of ggml type g (0, or -1 for a type bitplan does not
 * read), and the ggml type of a dtype (-1 for U8/U16/U32, which GGUF lacks). */
int mdl_dtype_of_ggml(uint32_t g, mdl_dtype *t);
int mdl_ggml_of_dtype(mdl_dtype t);
int mdl_block_size(mdl_dtype t);              /* values per block: 1, 32 or 256 */
/* The ggml block type (layout/'s lay_ggml_type) of a 2-D tensor whose blocks, row
 * after row, are the weights as the model runs them: a GGUF's quantized matrix
 * (whose rows need no reordering). -1 for anything else (F16, F32, a Hugging Face
 * q/k permuted on reading). Such a tensor can be copied "as stored". */
int mdl_tensor_stored_ggml(const mdl_tensor *t);

/* ==== Packed files (model/packed_meta.c) ==== */

/* A bitplan packed file (pack/FORMAT.md) is a safetensors file whose __metadata__
 * "format" is "bitplan-packed". mdl_open reads its configuration from the "config"
 * metadata JSON and its tokenizer from the "tokenizer" metadata JSON; its tensors
 * are listed as stored (U8/U16/F16/F32 parts), not checked against the config. */
int mdl_is_packed(const mdl_model *m);

/* One entry of the "options" metadata: tensor name -> quantization option, and the
 * bits the file says the option stores for it (the loader checks them against
 * layout's cost function). */
typedef struct {
    char tensor[96];
    lay_option opt;
    uint32_t rot_seed;   /* opt.rot: the seed of the rotation's signs ("rot_seed") */
    int64_t bits;
} mdl_packed_option;

/* Parses the "options" metadata of a packed file: malloc'd (*out)[*n], sorted by
 * tensor name. 0, or -1 with "FILE: options: problem" in err. */
int mdl_packed_options(const mdl_model *m, mdl_packed_option **out, int *n, char *err, size_t err_len);

/* The plan a packed file was made from ("plan" metadata), or a GGUF file that
 * bitplan export-gguf wrote (the same JSON under MDL_GGUF_PLAN_KEY). 0, or -1 with
 * err (a file made otherwise). */
#define MDL_GGUF_PLAN_KEY "bitplan.plan"
typedef struct {
    int64_t plan_id;
    double achieved_bpw, file_bpw;
    char model_hash[65];      /* the full-precision model's content hash */
    char db_path[1024];       /* the database the plan is in, as pack was given it */
    char hessians[16];        /* "sequential" or "full" */
} mdl_packed_plan_info;
int mdl_packed_plan(const mdl_model *m, mdl_packed_plan_info *out, char *err, size_t err_len);

/* From format version 2 on, a packed file's "checksums" metadata maps every
 * tensor's name to mdl_packed_checksum of its bytes as 16 hex digits (XXH3-64,
 * pack/FORMAT.md). */
uint64_t mdl_packed_checksum(const void *data, size_t n);

/* Hashes every tensor of a packed file and compares with its "checksums"
 * metadata. Each problem is one line "FILE: ..." handed to problem(arg, line)
 * (problem may be NULL): a tensor whose bytes do not hash to its checksum (named:
 * the file is corrupt), a tensor without a checksum, a checksum that names no
 * tensor or is not 16 hex digits, a "checksums" entry that is no JSON object.
 * Returns the number of problems, 0 when every tensor matched; *n_bytes (may be
 * NULL) gets the bytes hashed. A file without "checksums" has nothing to verify
 * (0, *n_bytes 0): whether that is allowed is for the caller to say (pack/ knows
 * which format versions carry checksums). Tensors are hashed in parallel
 * (OpenMP threads). */
typedef void (*mdl_problem_fn)(void *arg, const char *line);
int mdl_packed_verify(const mdl_model *m, mdl_problem_fn problem, void *arg, int64_t *n_bytes);

/* The model's tokenizer vocabulary as the "tokenizer" metadata JSON of a packed
 * file (keys kind, pre, tokens, types, scores, merges, bos, eos, unk,
 * add_space_prefix, add_bos). malloc'd, or NULL with err set. */
char *mdl_tokenizer_json(mdl_model *m, char *err, size_t err_len);

/* ==== SHA-256 (sha256.c) ==== */

/* FIPS 180-4 SHA-256, for content hashes of models, texts and vocabularies:
 *
 *     mdl_sha256 s; uint8_t d[32]; char hex[65];
 *     mdl_sha256_init(&s); mdl_sha256_update(&s, buf, len); mdl_sha256_final(&s, d);
 *     mdl_sha256_hex(d, hex);
 */
typedef struct {
    uint32_t h[8];
    uint64_t n;
    uint8_t buf[64];
    size_t fill;
} mdl_sha256;

void mdl_sha256_init(mdl_sha256 *s);
void mdl_sha256_update(mdl_sha256 *s, const void *data, size_t len);
void mdl_sha256_final(mdl_sha256 *s, uint8_t out[32]);
void mdl_sha256_hex(const uint8_t digest[32], char hex[65]);
/* SHA-256 of data[0..n) as 64 hex digits + NUL, in one call. */
void mdl_sha256_of(const void *data, size_t n, char hex[65]);

/* ==== Tokenizer ==== */

typedef enum { TOK_BPE_BYTES = 0, /* GPT-2 byte-level BPE (SmolLM, Qwen, Llama-3) */
               TOK_SPM          /* SentencePiece-style BPE with scores (Llama-2) */ } tok_kind;

tok_kind tok_get_kind(const tok_tokenizer *t);
int tok_vocab_size(const tok_tokenizer *t);
int tok_bos(const tok_tokenizer *t); /* -1 if none */
int tok_eos(const tok_tokenizer *t); /* -1 if none */
int tok_is_special(const tok_tokenizer *t, int id); /* control/user-defined token */

/* Encodes text[0..len) into ids. Writes at most max_ids; returns the total number
 * of tokens the text needs (may exceed max_ids: call again with a bigger buffer), or
 * -1 on error. add_bos prepends BOS if the vocabulary has one. Special tokens
 * written in the text (e.g. "<|im_start|>") are recognised when parse_special. */
int64_t tok_encode(const tok_tokenizer *t, const char *text, size_t len, int add_bos,
                   int parse_special, int32_t *ids, int64_t max_ids);

/* The bytes that token id stands for (byte-level tokens already turned back to raw
 * bytes). *len receives the length; the pointer stays valid while the model lives. */
const char *tok_piece(const tok_tokenizer *t, int id, size_t *len);

/* Decodes ids into out (NUL-terminated, truncated at cap). Returns bytes needed. */
size_t tok_decode(const tok_tokenizer *t, const int32_t *ids, int64_t n, char *out, size_t cap);

/* ==== Writing GGUF (model/gguf_write.c) ==== */

/* A GGUF v3 file that llama.cpp loads, written tensor by tensor so that memory
 * holds only the metadata and the tensor infos, never the model:
 *
 *     mdl_gguf_out *o; char err[MDL_ERR_LEN];
 *     if (mdl_gguf_out_begin("out.gguf", src, &o, err, sizeof err)) { ... }
 *     mdl_gguf_out_set_u32(o, "general.file_type", 15);
 *     for each tensor: mdl_gguf_out_add_tensor(o, name, 12, 2, rows, cols, nbytes, err, sizeof err);
 *     mdl_gguf_out_write_header(o, err, sizeof err);
 *     for each tensor, in the same order, a slab of rows at a time: mdl_gguf_out_write(o, p, n, err, sizeof err);
 *     if (mdl_gguf_out_commit(o, err, sizeof err)) { ... }   (frees o either way)
 *
 * Every fallible call returns 0, or -1 with a one-line "PATH: problem" in err;
 * after an error the caller ends with mdl_gguf_out_abort (or a commit, which then
 * fails). Calls out of order (a key or tensor after the header, data before it)
 * are asserts. */
typedef struct mdl_gguf_out mdl_gguf_out;

/* Begins the file for path. Data goes to a temporary file beside it (PATH.tmp*);
 * nothing appears at path before mdl_gguf_out_commit, which replaces any file
 * there atomically (write, fsync, rename, fsync of the folder). path must not be
 * a directory or a device. The metadata starts as src's (src may be NULL: none):
 * a GGUF source's every key as stored, in its order, types and arrays kept (its
 * general.file_type and general.quantization_version are for the caller to set);
 * for a safetensors source the keys llama.cpp reads for a "llama" model, from
 * mdl_config, config.json, tokenizer.json and tokenizer_config.json:
 * general.architecture/name, llama.context_length, embedding_length, block_count,
 * feed_forward_length, attention.head_count(_kv), attention.key/value_length (when
 * head_dim != dim / heads), attention.layer_norm_rms_epsilon, rope.freq_base,
 * rope.dimension_count, vocab_size, rope.scaling.* (linear, yarn; llama3 scaling
 * would need a rope_freqs.weight tensor, which is not written), and
 * tokenizer.ggml.model ("gpt2" byte-level BPE, "llama" SentencePiece), pre,
 * tokens (padded with "[PADi]" to the embedding's rows), token_type, merges (gpt2)
 * or scores (llama), bos/eos/unknown/padding ids, add_bos_token, add_space_prefix
 * (llama), tokenizer.chat_template. Tensors written from a safetensors source must
 * have q/k rows in GGUF order, as mdl_tensor_rows_to_f32 gives them. */
int mdl_gguf_out_begin(const char *path, mdl_model *src, mdl_gguf_out **out, char *err, size_t err_len);

/* Set (add, or replace in place with the new type) one metadata key; del removes
 * one. 0, or -1: out of memory (set) or no such key (del). Keys and values are copied. */
int mdl_gguf_out_set_u32(mdl_gguf_out *o, const char *key, uint32_t v);
int mdl_gguf_out_set_i32(mdl_gguf_out *o, const char *key, int32_t v);
int mdl_gguf_out_set_f32(mdl_gguf_out *o, const char *key, float v);
int mdl_gguf_out_set_bool(mdl_gguf_out *o, const char *key, int v);
int mdl_gguf_out_set_str(mdl_gguf_out *o, const char *key, const char *v);
int mdl_gguf_out_del(mdl_gguf_out *o, const char *key);

/* Declares the next tensor: canonical GGUF name (under 64 bytes, unique), ggml
 * type id as in the file (0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 6 Q5_0, 7 Q5_1, 8 Q8_0,
 * 10 Q2_K, 11 Q3_K, 12 Q4_K, 13 Q5_K, 14 Q6_K, 26 I32, 30 BF16), rows x cols
 * (ne[0] = cols, ne[1] = rows; n_dims 1 takes rows = 1), and its byte size, which
 * must be what the type's blocks take: anything else is an error. */
int mdl_gguf_out_add_tensor(mdl_gguf_out *o, const char *name, uint32_t ggml_type, int n_dims, int64_t rows, int64_t cols,
                            uint64_t nbytes, char *err, size_t err_len);

/* Writes header, metadata and tensor infos, each tensor at an offset aligned to
 * general.alignment (32 unless a u32 power of two is set). */
int mdl_gguf_out_write_header(mdl_gguf_out *o, char *err, size_t err_len);

/* Appends n bytes to the current tensor (the declared order); once it has all its
 * bytes the next call starts the next tensor. A call may not run past the current
 * tensor's declared size. Alignment padding is inserted here. */
int mdl_gguf_out_write(mdl_gguf_out *o, const void *data, size_t n, char *err, size_t err_len);

/* Checks that every tensor got exactly its bytes, writes the header first if no
 * data came, syncs and renames into place. Frees o; on failure nothing is at path
 * (an older file there stays) and the temporary file is gone. */
int mdl_gguf_out_commit(mdl_gguf_out *o, char *err, size_t err_len);
/* Removes the temporary file and frees o (NULL is fine). */
void mdl_gguf_out_abort(mdl_gguf_out *o);

/* ==== Calibration text (calib.c): text files into rows of tokens ==== */

/* Calibration rows cut from text files, and what identifies them. */
typedef struct {
    int rows, ctx;
    int32_t *tokens;            /* [rows][ctx] */
    char *sources_json;         /* [{"path":...,"sha256":...}, ...] in the order given */
    char sources_hash[65];      /* SHA-256 over the sources' hashes, in order */
    char tokenizer[80];         /* "bpe:" or "spm:" + SHA-256 of the vocabulary */
} calib_set;

/* Reads the text files, tokenizes them (no BOS) and cuts rows x ctx tokens that
 * sample the whole text (calib.c says how). 0, or -1 with a message; a text too
 * short says how many tokens it has and how many are needed. */
int calib_load(const tok_tokenizer *t, const char *const *paths, int n_paths, int rows, int ctx,
               calib_set *out, char *err, size_t err_len);
void calib_free(calib_set *c);
/* The end of the joined calibration text that no row of calib_load(rows, ctx) reads,
 * at most max_bytes of it, from a line start: text to check a quantization on that
 * it was not calibrated on. Empty (*len 0) when the rows may read every byte (text
 * short enough to be tokenized whole). *text is malloc'd. 0, or -1 with a message. */
int calib_heldout(const tok_tokenizer *t, const char *const *paths, int n_paths, int rows, int ctx, size_t max_bytes,
                  char **text, size_t *len, char *err, size_t err_len);

#endif
