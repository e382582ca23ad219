/*
 * model/safetensors.c — the safetensors reader: one file, or the shards listed
 * by model.safetensors.index.json, plus config.json beside them. Hugging Face
 * tensor names become canonical GGUF names here.
 *
 * What it must never do: trust the header length, a shape or a data offset before
 * checking it against the file; accept two tensors that share bytes, or a packed
 * file whose tensors leave a hole in its data; return a tensor whose data is
 * misaligned for its dtype; read the tensor data itself (it stays in the mapping).
 *
 * Layout of one file:
 *
 *   OFFSET  SIZE  DESCRIPTION
 *   0       8     N, header length (u64 little-endian)
 *   8       N     JSON object: "NAME": {"dtype": "F16", "shape": [rows, cols],
 *                 "data_offsets": [begin, end]}, and an optional "__metadata__"
 *   8 + N   ...   data; offsets are relative to here
 *
 * Shards are read in the lexical order of their file names (model-00001-of-...),
 * which is also the order the content hash concatenates them in.
 */
#include "model_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HEADER (100u << 20) /* the format's own limit */
#define MAX_SIDE_JSON (64u << 20)

/* ==== Names: Hugging Face -> GGUF ==== */

static const struct { const char *hf, *gguf; } layer_names[] = {
    {"self_attn.q_proj", "attn_q"},     {"self_attn.k_proj", "attn_k"},  {"self_attn.v_proj", "attn_v"},
    {"self_attn.o_proj", "attn_output"}, {"mlp.gate_proj", "ffn_gate"},  {"mlp.up_proj", "ffn_up"},
    {"mlp.down_proj", "ffn_down"},       {"input_layernorm", "attn_norm"},
    {"post_attention_layernorm", "ffn_norm"},
};

static const struct { const char *hf, *gguf; } global_names[] = {
    {"model.embed_tokens.weight", "token_embd.weight"},
    {"model.norm.weight", "output_norm.weight"},
    {"lm_head.weight", "output.weight"},
};

/* Writes the canonical name of hf into out; returns 0, or -1 when it would not fit. */
static int canonical_name(const char *hf, char *out, size_t cap)
{
    for (size_t i = 0; i < sizeof global_names / sizeof *global_names; i++)
        if (!strcmp(hf, global_names[i].hf)) return snprintf(out, cap, "%s", global_names[i].gguf) < (int)cap ? 0 : -1;
    unsigned layer;
    int used = 0;
    if (sscanf(hf, "model.layers.%u.%n", &layer, &used) == 1 && used > 0) {
        const char *rest = hf + used;
        for (size_t i = 0; i < sizeof layer_names / sizeof *layer_names; i++) {
            size_t k = strlen(layer_names[i].hf);
            if (!strncmp(rest, layer_names[i].hf, k) && rest[k] == '.')
                return snprintf(out, cap, "blk.%u.%s%s", layer, layer_names[i].gguf, rest + k) < (int)cap ? 0 : -1;
        }
    }
    return snprintf(out, cap, "%s", hf) < (int)cap ? 0 : -1; /* unknown: kept as it is */
}

static int ignored_name(const char *hf)
{
    size_t n = strlen(hf), k = strlen("rotary_emb.inv_freq");
    return n >= k && !strcmp(hf + n - k, "rotary_emb.inv_freq");
}

/* ==== One file ==== */

static int st_dtype(const char *path, const char *name, const char *s, mdl_dtype *t, char *err, size_t err_len)
{
    static const struct { const char *name; mdl_dtype t; } known[] = {
        {"F32", MDL_F32}, {"F16", MDL_F16}, {"BF16", MDL_BF16}, {"I32", MDL_I32},
        {"U8", MDL_U8}, {"U16", MDL_U16}, {"U32", MDL_U32}};
    static const char *other[] = {"F64", "I64", "I16", "I8", "U64", "BOOL", "F8_E4M3", "F8_E5M2"};
    for (size_t i = 0; s && i < sizeof known / sizeof *known; i++)
        if (!strcmp(s, known[i].name)) { *t = known[i].t; return 0; }
    for (size_t i = 0; s && i < sizeof other / sizeof *other; i++)
        if (!strcmp(s, other[i])) return mdl_errf(err, err_len, "%s: tensor '%s': dtype %s is not supported", path, name, s);
    return mdl_errf(err, err_len, "%s: tensor '%s': unknown dtype '%s'", path, name, s ? s : "(missing)");
}

static int json_uint(const util_json *v, uint64_t *out)
{
    if (!v || v->type != UTIL_JSON_NUM || !v->is_int || v->num < 0 || v->num > 9007199254740992.0) return -1;
    *out = (uint64_t)v->num;
    return 0;
}

static int read_shape(const char *path, const char *name, const util_json *shape, mdl_tensor *t, char *err, size_t err_len)
{
    if (!shape || shape->type != UTIL_JSON_ARR) return mdl_errf(err, err_len, "%s: tensor '%s': shape missing", path, name);
    if (shape->n < 1 || shape->n > MDL_MAX_DIMS)
        return mdl_errf(err, err_len, "%s: tensor '%s': %d dimensions (1 to %d supported)", path, name, shape->n, MDL_MAX_DIMS);
    t->n_dims = shape->n;
    for (int d = 0; d < shape->n; d++) {
        uint64_t v;
        if (json_uint(&shape->items[d], &v))
            return mdl_errf(err, err_len, "%s: tensor '%s': dimension %d is not a non-negative integer", path, name, d);
        t->shape[d] = (int64_t)v;
    }
    return mdl_check_shape(path, t, err, err_len);
}

static int read_extent(const mdl_file *f, uint64_t data_start, const char *name, const util_json *offs, mdl_tensor *t,
                       char *err, size_t err_len)
{
    uint64_t b, e, elem = mdl_row_bytes(t->type, 1);
    if (!offs || offs->type != UTIL_JSON_ARR || offs->n != 2 || json_uint(&offs->items[0], &b) || json_uint(&offs->items[1], &e) || b > e)
        return mdl_errf(err, err_len, "%s: tensor '%s': bad data_offsets", f->path, name);
    if (e - b != t->n_bytes)
        return mdl_errf(err, err_len, "%s: tensor '%s': data_offsets hold %llu bytes, the shape needs %zu", f->path, name,
                        (unsigned long long)(e - b), t->n_bytes);
    if (e > f->size - data_start)
        return mdl_errf(err, err_len, "%s: tensor '%s': data [%llu, %llu) runs past the end of the file (%zu bytes)", f->path,
                        name, (unsigned long long)(data_start + b), (unsigned long long)(data_start + e), f->size);
    if ((data_start + b) % elem)
        return mdl_errf(err, err_len, "%s: tensor '%s': data offset %llu is misaligned for %s", f->path, name,
                        (unsigned long long)(data_start + b), mdl_dtype_name(t->type));
    t->data = f->map + data_start + b;
    return 0;
}

static int read_entry(mdl_model *m, const mdl_file *f, uint64_t data_start, const char *hf, const util_json *v,
                      char *err, size_t err_len)
{
    if (v->type != UTIL_JSON_OBJ) return mdl_errf(err, err_len, "%s: tensor '%s': entry is not an object", f->path, hf);
    if (ignored_name(hf)) return 0;
    mdl_tensor *t = mdl_new_tensor(m);
    if (!t) return mdl_errf(err, err_len, "%s: out of memory", f->path);
    if (canonical_name(hf, t->name, sizeof t->name))
        return mdl_errf(err, err_len, "%s: tensor name '%s' is too long", f->path, hf);
    if (st_dtype(f->path, hf, util_json_str(v, "dtype"), &t->type, err, err_len)) return -1;
    if (read_shape(f->path, hf, util_json_get(v, "shape"), t, err, err_len)) return -1;
    return read_extent(f, data_start, hf, util_json_get(v, "data_offsets"), t, err, err_len);
}

/* __metadata__ (string -> string) as "meta.KEY" entries. */
static int read_metadata(mdl_model *m, const char *path, const util_json *meta, char *err, size_t err_len)
{
    if (meta->type != UTIL_JSON_OBJ) return mdl_errf(err, err_len, "%s: __metadata__ is not an object", path);
    for (int i = 0; i < meta->n; i++) {
        char key[256];
        if (meta->items[i].type != UTIL_JSON_STR)
            return mdl_errf(err, err_len, "%s: __metadata__ '%s' is not a string", path, meta->keys[i]);
        if (snprintf(key, sizeof key, "meta.%s", meta->keys[i]) >= (int)sizeof key) continue;
        mdl_kv *kv = mdl_kv_add(m, key, strlen(key));
        if (!kv || !(kv->s = strdup(meta->items[i].str))) return mdl_errf(err, err_len, "%s: out of memory", path);
        kv->type = MDL_GV_STR;
    }
    return 0;
}

/* ==== Where the tensors lie ==== */

/* One tensor's bytes in a file's data buffer, relative to its start. */
typedef struct {
    uint64_t begin, end;
    const char *name; /* as the file spells it */
} extent;

static int by_begin(const void *a, const void *b)
{
    const extent *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* No two tensors of a file may share a byte (safetensors requires it). A bitplan
 * packed file promises more (pack/FORMAT.md): sorted by begin, its tensors tile
 * the data buffer exactly, from 0 to the end of the file, with no hole. */
static int check_extents(const char *path, extent *x, int n, uint64_t buffer, int tile, char *err, size_t err_len)
{
    qsort(x, (size_t)n, sizeof *x, by_begin);
    uint64_t at = 0;
    for (int i = 0; i < n; i++) {
        if (i && x[i].begin < at)
            return mdl_errf(err, err_len, "%s: tensors '%s' [%llu, %llu) and '%s' [%llu, %llu) overlap", path,
                            x[i - 1].name, (unsigned long long)x[i - 1].begin, (unsigned long long)x[i - 1].end, x[i].name,
                            (unsigned long long)x[i].begin, (unsigned long long)x[i].end);
        if (tile && x[i].begin > at)
            return mdl_errf(err, err_len, "%s: data bytes [%llu, %llu) %s%s%s'%s' belong to no tensor (a hole)", path,
                            (unsigned long long)at, (unsigned long long)x[i].begin, i ? "between tensors '" : "before tensor ",
                            i ? x[i - 1].name : "", i ? "' and " : "", x[i].name);
        at = x[i].end;
    }
    if (tile && at != buffer)
        return mdl_errf(err, err_len, "%s: data bytes [%llu, %llu) after tensor '%s' belong to no tensor (a hole)", path,
                        (unsigned long long)at, (unsigned long long)buffer, n ? x[n - 1].name : "(none)");
    return 0;
}

static int is_packed_header(const util_json *h)
{
    const char *f = util_json_str(util_json_get(h, "__metadata__"), "format");
    return f && !strcmp(f, MDL_PACKED_FORMAT);
}

/* Reads every entry of the header h; then checks where their data lie. */
static int read_entries(mdl_model *m, const mdl_file *f, uint64_t data_start, const util_json *h, char *err, size_t err_len)
{
    extent *x = malloc((size_t)(h->n ? h->n : 1) * sizeof *x);
    int n = 0, rc = x ? 0 : mdl_errf(err, err_len, "%s: out of memory", f->path);
    for (int i = 0; !rc && i < h->n; i++) {
        if (!strcmp(h->keys[i], "__metadata__")) {
            rc = m->n_files > 1 ? 0 : read_metadata(m, f->path, &h->items[i], err, err_len);
            continue;
        }
        int before = m->n_tensors;
        rc = read_entry(m, f, data_start, h->keys[i], &h->items[i], err, err_len);
        if (rc || m->n_tensors == before) continue; /* an error, or an ignored entry */
        const mdl_tensor *t = &m->tensors[m->n_tensors - 1];
        x[n].begin = (uint64_t)((const uint8_t *)t->data - (f->map + data_start));
        x[n].end = x[n].begin + t->n_bytes;
        x[n++].name = h->keys[i];
    }
    if (!rc) rc = check_extents(f->path, x, n, f->size - data_start, is_packed_header(h), err, err_len);
    free(x);
    return rc;
}

static int load_file(mdl_model *m, const char *path, char *err, size_t err_len)
{
    mdl_file *f;
    uint64_t n;
    char jerr[128];
    if (mdl_map_file(m, path, &f, err, err_len)) return -1;
    if (f->size < 8) return mdl_errf(err, err_len, "%s: truncated file: %zu bytes, no header length", path, f->size);
    memcpy(&n, f->map, 8);
    if (n > f->size - 8)
        return mdl_errf(err, err_len, "%s: header length %llu runs past the end of the file (%zu bytes)", path,
                        (unsigned long long)n, f->size);
    if (n > MAX_HEADER) return mdl_errf(err, err_len, "%s: header length %llu is absurd", path, (unsigned long long)n);
    util_json *h = util_json_parse((const char *)f->map + 8, (size_t)n, jerr, sizeof jerr);
    if (!h) return mdl_errf(err, err_len, "%s: bad JSON header: %s", path, jerr);
    int rc = h->type == UTIL_JSON_OBJ ? read_entries(m, f, 8 + n, h, err, err_len)
                                     : mdl_errf(err, err_len, "%s: the header is not a JSON object", path);
    util_json_free(h);
    return rc;
}

/* ==== Sharded models ==== */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The distinct file names of the weight map, sorted. */
static int shard_names(const char *path, const util_json *map, char ***out, int *n_out, char *err, size_t err_len)
{
    char **names = malloc((size_t)(map->n ? map->n : 1) * sizeof *names);
    int n = 0;
    if (!names) return mdl_errf(err, err_len, "%s: out of memory", path);
    for (int i = 0; i < map->n; i++) {
        const util_json *v = &map->items[i];
        if (v->type != UTIL_JSON_STR || !v->len || strchr(v->str, '/')) {
            free(names);
            return mdl_errf(err, err_len, "%s: weight_map['%s'] is not a file name", path, map->keys[i]);
        }
        names[n++] = v->str;
    }
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    int k = 0;
    for (int i = 0; i < n; i++)
        if (!k || strcmp(names[k - 1], names[i])) names[k++] = names[i];
    *out = names;
    *n_out = k;
    return 0;
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp((*(const mdl_tensor *const *)a)->name, (*(const mdl_tensor *const *)b)->name);
}

/* Every name in the weight map must be in some shard (n log n: maps can be big). */
static int check_listed(const mdl_model *m, const char *path, const util_json *map, char *err, size_t err_len)
{
    const mdl_tensor **sorted = malloc((size_t)(m->n_tensors ? m->n_tensors : 1) * sizeof *sorted);
    int rc = 0;
    if (!sorted) return mdl_errf(err, err_len, "%s: out of memory", path);
    for (int j = 0; j < m->n_tensors; j++) sorted[j] = &m->tensors[j];
    qsort(sorted, (size_t)m->n_tensors, sizeof *sorted, cmp_tensor_name);
    for (int i = 0; i < map->n && !rc; i++) {
        mdl_tensor key;
        const mdl_tensor *kp = &key;
        if (ignored_name(map->keys[i])) continue;
        if (canonical_name(map->keys[i], key.name, sizeof key.name))
            rc = mdl_errf(err, err_len, "%s: tensor name '%s' is too long", path, map->keys[i]);
        else if (!bsearch(&kp, sorted, (size_t)m->n_tensors, sizeof *sorted, cmp_tensor_name))
            rc = mdl_errf(err, err_len, "%s: tensor '%s' is not in %s", path, map->keys[i], map->items[i].str);
    }
    free(sorted);
    return rc;
}

static int load_index(mdl_model *m, const char *path, const char *dir, char *err, size_t err_len)
{
    size_t len;
    char jerr[128], **names = NULL;
    int n = 0, rc = -1;
    char *text = util_read_file(path, MAX_SIDE_JSON, &len, err, err_len);
    if (!text) return -1;
    util_json *root = util_json_parse(text, len, jerr, sizeof jerr);
    const util_json *map = util_json_get(root, "weight_map");
    if (!root) mdl_errf(err, err_len, "%s: bad JSON: %s", path, jerr);
    else if (!map || map->type != UTIL_JSON_OBJ || !map->n) mdl_errf(err, err_len, "%s: no weight_map", path);
    else if (!shard_names(path, map, &names, &n, err, err_len)) {
        rc = 0;
        for (int i = 0; !rc && i < n; i++) {
            char shard[4096];
            snprintf(shard, sizeof shard, "%s/%s", dir, names[i]);
            rc = load_file(m, shard, err, err_len);
        }
        if (!rc) rc = check_listed(m, path, map, err, err_len);
    }
    free(names);
    util_json_free(root);
    free(text);
    return rc;
}

/* ==== config.json ==== */

static int flatten(mdl_model *m, const char *prefix, const util_json *obj)
{
    for (int i = 0; i < obj->n; i++) {
        const util_json *v = &obj->items[i];
        char key[256];
        if (snprintf(key, sizeof key, "%s.%s", prefix, obj->keys[i]) >= (int)sizeof key) continue;
        if (v->type == UTIL_JSON_OBJ) {
            if (flatten(m, key, v)) return -1;
            continue;
        }
        if (v->type == UTIL_JSON_NULL || v->type == UTIL_JSON_ARR) continue;
        mdl_kv *kv = mdl_kv_add(m, key, strlen(key));
        if (!kv) return -1;
        if (v->type == UTIL_JSON_STR) {
            kv->type = MDL_GV_STR;
            if (!(kv->s = strdup(v->str))) return -1;
        } else {
            double x = v->type == UTIL_JSON_BOOL ? v->boolean : v->num;
            kv->type = v->type == UTIL_JSON_BOOL ? MDL_GV_BOOL : v->is_int ? MDL_GV_I64 : MDL_GV_F64;
            kv->is_num = 1;
            kv->f = x;
            kv->is_int = kv->type != MDL_GV_F64 && x >= -9.2e18 && x <= 9.2e18;
            kv->i = kv->is_int ? (int64_t)x : 0;
        }
    }
    return 0;
}

static int load_config(mdl_model *m, char *err, size_t err_len)
{
    char path[4096], jerr[128];
    size_t len;
    snprintf(path, sizeof path, "%s/config.json", m->dir);
    char *text = util_read_file(path, MAX_SIDE_JSON, &len, err, err_len);
    if (!text) return -1;
    m->config_json = util_json_parse(text, len, jerr, sizeof jerr);
    free(text);
    if (!m->config_json) return mdl_errf(err, err_len, "%s: bad JSON: %s", path, jerr);
    if (m->config_json->type != UTIL_JSON_OBJ) return mdl_errf(err, err_len, "%s: not a JSON object", path);
    if (flatten(m, "config", m->config_json)) return mdl_errf(err, err_len, "%s: out of memory", path);
    return 0;
}

int mdl_st_load(mdl_model *m, const char *path, char *err, size_t err_len)
{
    const char *slash = strrchr(path, '/');
    m->dir = slash ? strndup(path, (size_t)(slash - path)) : strdup(".");
    if (!m->dir) return mdl_errf(err, err_len, "%s: out of memory", path);
    size_t n = strlen(path);
    int rc = n >= 5 && !strcmp(path + n - 5, ".json") ? load_index(m, path, m->dir, err, err_len)
                                                       : load_file(m, path, err, err_len);
    if (rc || mdl_is_packed(m)) return rc; /* a packed file holds its config in its metadata */
    return load_config(m, err, err_len);
}
