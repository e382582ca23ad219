/*
 * model/model_int.h — the inside of mdl_model, shared by the files of model/:
 * model.c (open, tensors to fp32), parts.c (what the readers build and look up),
 * gguf.c and safetensors.c (the two containers), config.c (mdl_config from
 * metadata), model_tok.c (the tokenizer), sha256.c. Nothing outside model/ includes
 * it.
 */
#ifndef BITPLAN_MODEL_INT_H
#define BITPLAN_MODEL_INT_H

#include "model.h"
#include "util/util.h"

#include <stdarg.h>

/* ==== Mapped files ==== */

typedef struct {
    char *path;
    const uint8_t *map; /* read-only private mapping of the whole file */
    size_t size;
} mdl_file;

/* ==== Metadata ==== */

/* GGUF metadata value types (the numbers are the file format's). */
enum {
    MDL_GV_U8 = 0, MDL_GV_I8, MDL_GV_U16, MDL_GV_I16, MDL_GV_U32, MDL_GV_I32, MDL_GV_F32,
    MDL_GV_BOOL, MDL_GV_STR, MDL_GV_ARR, MDL_GV_U64, MDL_GV_I64, MDL_GV_F64, MDL_GV_COUNT
};

typedef struct {
    char *key;
    uint32_t type;        /* MDL_GV_* */
    int is_int;           /* integer or bool that fits int64 in i */
    int64_t i;
    int is_num;           /* any number (or bool) in f */
    double f;
    char *s;              /* MDL_GV_STR: NUL-terminated copy */
    uint32_t arr_type;    /* MDL_GV_ARR: element type */
    uint64_t arr_n;       /* MDL_GV_ARR: element count */
    const uint8_t *arr;   /* MDL_GV_ARR: first element, in the mapping (validated) */
    size_t arr_bytes;     /* MDL_GV_ARR: bytes of all elements */
} mdl_kv;

/* ==== The model ==== */

struct mdl_model {
    char *path;                /* as given to mdl_open */
    const char *format;        /* "gguf" or "safetensors" */
    mdl_config cfg;

    mdl_file *files;           /* [n_files]: one GGUF, or the safetensors shards */
    int n_files;

    mdl_tensor *tensors;       /* [n_tensors], in file order */
    int n_tensors, cap_tensors;
    int *by_name;              /* [n_tensors] indices sorted by name, for mdl_find */

    mdl_kv *kv;                /* [n_kv] metadata; config.json flattened as "config.KEY" */
    int n_kv, cap_kv;

    util_json *config_json;     /* safetensors: config.json */
    char *dir;                 /* safetensors: the folder of config.json / tokenizer.json */

    char hash[65];             /* "" until mdl_content_hash */
    tok_tokenizer *tok;        /* made on first mdl_tokenizer */
    void (*tok_free)(tok_tokenizer *);
};

/* ==== What the readers share (parts.c) ==== */

/* snprintf into err; returns -1 so that callers can `return mdl_errf(...)`. */
int mdl_errf(char *err, size_t err_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Maps path read-only and appends it to m->files. */
int mdl_map_file(mdl_model *m, const char *path, mdl_file **out, char *err, size_t err_len);
/* Appends a zeroed tensor; NULL when out of memory. */
mdl_tensor *mdl_new_tensor(mdl_model *m);
/* Checks n_dims, every dim > 0, the element count, the byte count and the
 * block multiple; fills t->n_elems and t->n_bytes. -1 with "FILE: tensor 'x': ..." */
int mdl_check_shape(const char *file, mdl_tensor *t, char *err, size_t err_len);
/* Appends a metadata entry (key copied); NULL when out of memory. */
mdl_kv *mdl_kv_add(mdl_model *m, const char *key, size_t key_len);
const mdl_kv *mdl_kv_find(const mdl_model *m, const char *key);

/* ==== The containers ==== */

int mdl_gguf_load(mdl_model *m, const char *path, char *err, size_t err_len);
/* path: a .safetensors file or a model.safetensors.index.json */
int mdl_st_load(mdl_model *m, const char *path, char *err, size_t err_len);
/* GGUF string arrays: walks element i (< arr_n) of an MDL_GV_STR array. */
int mdl_kv_str_at(const mdl_kv *kv, uint64_t *cursor, const char **s, uint64_t *len);

/* ==== Configuration (config.c) ==== */

/* Fills m->cfg from the metadata and checks the tensors the Llama family needs. */
int mdl_config_load(mdl_model *m, char *err, size_t err_len);

/* ==== Packed files (packed_meta.c, packed_verify.c) ==== */

#define MDL_PACKED_FORMAT "bitplan-packed" /* the "format" metadata of a packed file */

/* m->cfg from the "config" metadata JSON of a bitplan packed file. */
int mdl_packed_config(mdl_model *m, char *err, size_t err_len);
/* The tokenizer from the "tokenizer" metadata JSON (model_tok.c's mdl_tokenizer
 * calls it for packed files). */
tok_tokenizer *mdl_packed_tokenizer(mdl_model *m, char *err, size_t err_len);

#endif
