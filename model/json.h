/*
 * model/json.h — a small JSON parser for the files that come with a model:
 * safetensors headers, config.json, model.safetensors.index.json, tokenizer.json.
 * Internal to model/.
 *
 * It builds a tree (objects keep their keys in file order) from a buffer that
 * need not be NUL-terminated. It never reads past the buffer, limits nesting, and
 * reports the byte offset of the first problem. It is no general-purpose library:
 * numbers are doubles, and duplicate keys are kept (mdl_json_get finds the first).
 *
 *     mdl_json *root = mdl_json_parse(buf, len, err, sizeof err);
 *     const mdl_json *h = mdl_json_get(root, "hidden_size");
 *     if (h && h->type == MDL_JSON_NUM) dim = (int)h->num;
 *     mdl_json_free(root);
 */
#ifndef BITPLAN_MODEL_JSON_H
#define BITPLAN_MODEL_JSON_H

#include <stddef.h>

typedef enum { MDL_JSON_NULL, MDL_JSON_BOOL, MDL_JSON_NUM, MDL_JSON_STR, MDL_JSON_ARR, MDL_JSON_OBJ } mdl_json_type;

typedef struct mdl_json {
    mdl_json_type type;
    int boolean;              /* MDL_JSON_BOOL */
    double num;               /* MDL_JSON_NUM */
    int is_int;               /* MDL_JSON_NUM written without fraction or exponent */
    char *str;                /* MDL_JSON_STR: UTF-8, NUL-terminated (may hold NULs: see len) */
    size_t len;               /* MDL_JSON_STR: bytes */
    int n;                    /* MDL_JSON_ARR / MDL_JSON_OBJ: number of items */
    struct mdl_json *items;   /* [n] values */
    char **keys;              /* MDL_JSON_OBJ: [n] keys, NUL-terminated */
} mdl_json;

/* Parses text[0..len). NULL with "offset N: problem" in err on failure. */
mdl_json *mdl_json_parse(const char *text, size_t len, char *err, size_t err_len);
void mdl_json_free(mdl_json *v);

/* Object member by key (first match), or NULL when v is no object or lacks it. */
const mdl_json *mdl_json_get(const mdl_json *v, const char *key);
/* Number member as int/double/string/bool with a default when absent or mistyped. */
int mdl_json_int(const mdl_json *obj, const char *key, int def);
double mdl_json_num(const mdl_json *obj, const char *key, double def);
const char *mdl_json_str(const mdl_json *obj, const char *key); /* NULL if absent */

#endif
