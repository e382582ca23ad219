/*
 * model/tok_int.h — how the model readers hand a vocabulary to the tokenizer.
 * Internal to model/: gguf.c and safetensors.c build a tokenizer from the arrays
 * a file stores; everything else uses the tok_* functions of model.h.
 */
#ifndef BITPLAN_TOK_INT_H
#define BITPLAN_TOK_INT_H

#include "model.h"

typedef struct { const char *s; size_t len; } tok_str;

/* GGUF token types (tokenizer.ggml.token_type). */
enum { TOK_TYPE_NORMAL = 1, TOK_TYPE_UNKNOWN = 2, TOK_TYPE_CONTROL = 3,
       TOK_TYPE_USER_DEFINED = 4, TOK_TYPE_UNUSED = 5, TOK_TYPE_BYTE = 6 };

typedef struct {
    tok_kind kind;
    const char *pre;          /* pre-tokenizer name ("smollm", "gpt2", "qwen2", "llama-bpe", "default"); NULL = default */
    int n_vocab;
    const tok_str *tokens;    /* [n_vocab], as stored (byte-level: GPT-2 unicode form; SPM: with U+2581) */
    const int32_t *types;     /* [n_vocab] TOK_TYPE_*, or NULL (all normal) */
    const float *scores;      /* [n_vocab] SPM scores, or NULL */
    int n_merges;
    const tok_str *merges;    /* [n_merges] "left right", rank = index; BPE only */
    int bos, eos, unk;        /* -1 if none */
    int add_space_prefix;     /* SPM: prepend a space (U+2581) */
} tok_vocab;

/* Copies what it needs; the arrays may be freed afterwards. */
tok_tokenizer *tok_new(const tok_vocab *v, char *err, size_t err_len);
void tok_free(tok_tokenizer *t);

#endif
