/*
 * model/gguf.c — the GGUF reader (versions 2 and 3, little-endian).
 *
 * It walks the mapped file once with a bounds-checked cursor: header, metadata,
 * tensor infos, then places every tensor's data at the aligned data offset. It
 * must never read outside the mapping, trust a count or a length before checking
 * it against the bytes that are left, or accept a tensor whose data is misaligned
 * or runs past the end of the file.
 *
 * Layout (all little-endian):
 *
 *   OFFSET  SIZE  DESCRIPTION
 *   0       4     magic "GGUF"
 *   4       4     version (u32): 2 or 3
 *   8       8     tensor count (u64)
 *   16      8     metadata count (u64)
 *   24      ...   metadata: key (u64 length + bytes), value type (u32), value
 *   ...     ...   tensor infos: name (string), n_dims (u32), ne[n_dims] (u64,
 *                 innermost first), ggml type (u32), offset (u64, from data start)
 *   ...     ...   padding to general.alignment (u32, default 32)
 *   data    ...   tensor data
 *
 * Values: u8 i8 u16 i16 u32 i32 f32 bool(1 byte) string u64 i64 f64; an array
 * is element type (u32), count (u64), elements (arrays may nest).
 */
#include "model_int.h"

#include <stdlib.h>
#include <string.h>

#define MAX_ARRAY_DEPTH 8

typedef struct {
    const uint8_t *p;
    size_t size, pos;
    const char *path;
    char *err;
    size_t err_len;
} cursor;

static int truncated(cursor *c, const char *what)
{
    return mdl_errf(c->err, c->err_len, "%s: truncated file: %s at offset %zu runs past the end (%zu bytes)",
                    c->path, what, c->pos, c->size);
}

static int need(cursor *c, uint64_t n, const char *what)
{
    return (uint64_t)(c->size - c->pos) < n ? truncated(c, what) : 0;
}

static int rd_u32(cursor *c, uint32_t *v, const char *what)
{
    if (need(c, 4, what)) return -1;
    memcpy(v, c->p + c->pos, 4);
    c->pos += 4;
    return 0;
}

static int rd_u64(cursor *c, uint64_t *v, const char *what)
{
    if (need(c, 8, what)) return -1;
    memcpy(v, c->p + c->pos, 8);
    c->pos += 8;
    return 0;
}

static int rd_str(cursor *c, const char **s, uint64_t *len, const char *what)
{
    if (rd_u64(c, len, what)) return -1;
    if (*len > c->size - c->pos)
        return mdl_errf(c->err, c->err_len, "%s: %s: string length %llu at offset %zu runs past the end of the file (%zu bytes)",
                        c->path, what, (unsigned long long)*len, c->pos - 8, c->size);
    *s = (const char *)c->p + c->pos;
    c->pos += *len;
    return 0;
}

/* ==== Metadata ==== */

static const int value_size[MDL_GV_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

static int skip_value(cursor *c, uint32_t type, const char *key, int depth);

/* Checks (and steps over) n elements of type t; fixed-size ones in one go. */
static int skip_array_items(cursor *c, uint32_t t, uint64_t n, const char *key, int depth)
{
    if (t >= MDL_GV_COUNT) return mdl_errf(c->err, c->err_len, "%s: metadata '%s': unknown array element type %u", c->path, key, t);
    if (value_size[t]) {
        if (n > (c->size - c->pos) / (uint64_t)value_size[t])
            return mdl_errf(c->err, c->err_len, "%s: metadata '%s': array of %llu elements runs past the end of the file",
                            c->path, key, (unsigned long long)n);
        c->pos += (size_t)n * (size_t)value_size[t];
        return 0;
    }
    /* strings need >= 8 bytes each, nested arrays >= 12: a first cheap bound */
    if (n > (c->size - c->pos) / 8)
        return mdl_errf(c->err, c->err_len, "%s: metadata '%s': array of %llu elements runs past the end of the file",
                        c->path, key, (unsigned long long)n);
    for (uint64_t i = 0; i < n; i++)
        if (skip_value(c, t, key, depth)) return -1;
    return 0;
}

static int skip_value(cursor *c, uint32_t type, const char *key, int depth)
{
    if (type >= MDL_GV_COUNT) return mdl_errf(c->err, c->err_len, "%s: metadata '%s': unknown value type %u", c->path, key, type);
    if (type == MDL_GV_STR) {
        const char *s;
        uint64_t len;
        return rd_str(c, &s, &len, key);
    }
    if (type == MDL_GV_ARR) {
        uint32_t t;
        uint64_t n;
        if (depth >= MAX_ARRAY_DEPTH) return mdl_errf(c->err, c->err_len, "%s: metadata '%s': arrays nested too deep", c->path, key);
        if (rd_u32(c, &t, key) || rd_u64(c, &n, key)) return -1;
        return skip_array_items(c, t, n, key, depth + 1);
    }
    if (need(c, (uint64_t)value_size[type], key)) return -1;
    c->pos += (size_t)value_size[type];
    return 0;
}

/* Reads one scalar into kv's number fields (the cursor is at the value). */
static void read_scalar(const uint8_t *p, uint32_t type, mdl_kv *kv)
{
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; float f32;
            uint64_t u64; int64_t i64; double f64; } v;
    memcpy(&v, p, (size_t)value_size[type]);
    kv->is_int = 1;
    switch (type) {
    case MDL_GV_U8: case MDL_GV_BOOL: kv->i = v.u8; break;
    case MDL_GV_I8: kv->i = v.i8; break;
    case MDL_GV_U16: kv->i = v.u16; break;
    case MDL_GV_I16: kv->i = v.i16; break;
    case MDL_GV_U32: kv->i = v.u32; break;
    case MDL_GV_I32: kv->i = v.i32; break;
    case MDL_GV_I64: kv->i = v.i64; break;
    case MDL_GV_U64: kv->is_int = v.u64 <= INT64_MAX; kv->i = (int64_t)v.u64; kv->f = (double)v.u64; break;
    case MDL_GV_F32: kv->is_int = 0; kv->f = v.f32; break;
    case MDL_GV_F64: kv->is_int = 0; kv->f = v.f64; break;
    }
    if (kv->is_int) kv->f = (double)kv->i;
    kv->is_num = 1;
}

static int read_kv(mdl_model *m, cursor *c)
{
    const char *key;
    uint64_t key_len;
    uint32_t type;
    if (rd_str(c, &key, &key_len, "metadata key") || rd_u32(c, &type, "metadata value type")) return -1;
    mdl_kv *kv = mdl_kv_add(m, key, (size_t)key_len);
    if (!kv) return mdl_errf(c->err, c->err_len, "%s: out of memory", c->path);
    kv->type = type;
    size_t start = c->pos;
    if (type == MDL_GV_ARR) {
        if (rd_u32(c, &kv->arr_type, kv->key) || rd_u64(c, &kv->arr_n, kv->key)) return -1;
        kv->arr = c->p + c->pos;
        size_t items = c->pos;
        if (skip_array_items(c, kv->arr_type, kv->arr_n, kv->key, 1)) return -1;
        kv->arr_bytes = c->pos - items;
        return 0;
    }
    if (skip_value(c, type, kv->key, 0)) return -1;
    if (type == MDL_GV_STR) {
        size_t len = c->pos - start - 8;
        if (!(kv->s = malloc(len + 1))) return mdl_errf(c->err, c->err_len, "%s: out of memory", c->path);
        memcpy(kv->s, c->p + start + 8, len);
        kv->s[len] = 0;
    } else {
        read_scalar(c->p + start, type, kv);
    }
    return 0;
}

static int cmp_key(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Sorting finds a repeated key in n log n, whatever the count. */
static int check_unique_keys(const mdl_model *m, cursor *c)
{
    char **keys = malloc((size_t)(m->n_kv ? m->n_kv : 1) * sizeof *keys);
    int rc = 0;
    if (!keys) return mdl_errf(c->err, c->err_len, "%s: out of memory", c->path);
    for (int i = 0; i < m->n_kv; i++) keys[i] = m->kv[i].key;
    qsort(keys, (size_t)m->n_kv, sizeof *keys, cmp_key);
    for (int i = 1; i < m->n_kv && !rc; i++)
        if (!strcmp(keys[i], keys[i - 1])) rc = mdl_errf(c->err, c->err_len, "%s: duplicate metadata key '%s'", c->path, keys[i]);
    free(keys);
    return rc;
}

int mdl_kv_str_at(const mdl_kv *kv, uint64_t *cursor_pos, const char **s, uint64_t *len)
{
    uint64_t l;
    if (kv->type != MDL_GV_ARR || kv->arr_type != MDL_GV_STR || kv->arr_bytes - *cursor_pos < 8) return -1;
    memcpy(&l, kv->arr + *cursor_pos, 8);
    if (l > kv->arr_bytes - *cursor_pos - 8) return -1;
    *s = (const char *)kv->arr + *cursor_pos + 8;
    *len = l;
    *cursor_pos += 8 + l;
    return 0;
}

/* ==== Tensor infos ==== */

/* ggml type id -> mdl_dtype + 1 (0: not a type bitplan reads) */
static const int ggml_map[] = {[0] = MDL_F32 + 1,   [1] = MDL_F16 + 1,   [2] = MDL_Q4_0 + 1,  [3] = MDL_Q4_1 + 1,
                               [6] = MDL_Q5_0 + 1,  [7] = MDL_Q5_1 + 1,  [8] = MDL_Q8_0 + 1,  [10] = MDL_Q2_K + 1,
                               [11] = MDL_Q3_K + 1, [12] = MDL_Q4_K + 1, [13] = MDL_Q5_K + 1, [14] = MDL_Q6_K + 1,
                               [26] = MDL_I32 + 1,  [30] = MDL_BF16 + 1};

int mdl_dtype_of_ggml(uint32_t g, mdl_dtype *t)
{
    if (g >= sizeof ggml_map / sizeof *ggml_map || !ggml_map[g]) return -1;
    *t = (mdl_dtype)(ggml_map[g] - 1);
    return 0;
}

int mdl_ggml_of_dtype(mdl_dtype t)
{
    for (int g = 0; g < (int)(sizeof ggml_map / sizeof *ggml_map); g++)
        if (ggml_map[g] == (int)t + 1) return g;
    return -1;
}

static const char *ggml_type_name(uint32_t g)
{
    static const char *names[] = {[9] = "Q8_1", [15] = "Q8_K", [16] = "IQ2_XXS", [17] = "IQ2_XS", [18] = "IQ3_XXS",
                                  [19] = "IQ1_S", [20] = "IQ4_NL", [21] = "IQ3_S", [22] = "IQ2_S", [23] = "IQ4_XS",
                                  [24] = "I8", [25] = "I16", [27] = "I64", [28] = "F64", [29] = "IQ1_M",
                                  [34] = "TQ1_0", [35] = "TQ2_0", [39] = "MXFP4"};
    return g < sizeof names / sizeof *names && names[g] ? names[g] : NULL;
}

static int read_tensor_info(mdl_model *m, cursor *c, uint64_t *offset)
{
    const char *name;
    uint64_t name_len, ne[MDL_MAX_DIMS];
    uint32_t n_dims, type;
    if (rd_str(c, &name, &name_len, "tensor name")) return -1;
    mdl_tensor *t = mdl_new_tensor(m);
    if (!t) return mdl_errf(c->err, c->err_len, "%s: out of memory", c->path);
    if (name_len >= sizeof t->name)
        return mdl_errf(c->err, c->err_len, "%s: tensor name of %llu bytes at offset %zu is too long (max %zu)", c->path,
                        (unsigned long long)name_len, c->pos - name_len, sizeof t->name - 1);
    memcpy(t->name, name, (size_t)name_len);
    if (memchr(t->name, 0, (size_t)name_len))
        return mdl_errf(c->err, c->err_len, "%s: tensor name at offset %zu holds a NUL byte", c->path, c->pos - name_len);
    if (rd_u32(c, &n_dims, t->name)) return -1;
    if (n_dims < 1 || n_dims > MDL_MAX_DIMS)
        return mdl_errf(c->err, c->err_len, "%s: tensor '%s': %u dimensions (1 to %d supported)", c->path, t->name, n_dims, MDL_MAX_DIMS);
    for (uint32_t d = 0; d < n_dims; d++)
        if (rd_u64(c, &ne[d], t->name)) return -1;
    if (rd_u32(c, &type, t->name) || rd_u64(c, offset, t->name)) return -1;
    if (mdl_dtype_of_ggml(type, &t->type)) {
        const char *known = ggml_type_name(type);
        if (known) return mdl_errf(c->err, c->err_len, "%s: tensor '%s': type %s is not supported", c->path, t->name, known);
        return mdl_errf(c->err, c->err_len, "%s: tensor '%s': unknown type %u", c->path, t->name, type);
    }
    t->n_dims = (int)n_dims;
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] > (uint64_t)INT64_MAX)
            return mdl_errf(c->err, c->err_len, "%s: tensor '%s': dimension %llu is absurd", c->path, t->name, (unsigned long long)ne[d]);
        t->shape[n_dims - 1 - d] = (int64_t)ne[d];
    }
    return mdl_check_shape(c->path, t, c->err, c->err_len);
}

/* ==== The file ==== */

static int read_header(cursor *c, uint64_t *n_tensors, uint64_t *n_kv)
{
    uint32_t version;
    if (need(c, 4, "magic")) return -1;
    if (memcmp(c->p, "GGUF", 4)) return mdl_errf(c->err, c->err_len, "%s: not a GGUF file (bad magic)", c->path);
    c->pos = 4;
    if (rd_u32(c, &version, "version")) return -1;
    if (version == 0x02000000 || version == 0x03000000)
        return mdl_errf(c->err, c->err_len, "%s: big-endian GGUF is not supported", c->path);
    if (version != 2 && version != 3)
        return mdl_errf(c->err, c->err_len, "%s: GGUF version %u is not supported (2 and 3 are)", c->path, version);
    if (rd_u64(c, n_tensors, "tensor count") || rd_u64(c, n_kv, "metadata count")) return -1;
    if (*n_tensors > 1000000) return mdl_errf(c->err, c->err_len, "%s: absurd tensor count %llu", c->path, (unsigned long long)*n_tensors);
    if (*n_kv > 1000000) return mdl_errf(c->err, c->err_len, "%s: absurd metadata count %llu", c->path, (unsigned long long)*n_kv);
    /* a tensor info takes at least 24 bytes, a metadata entry at least 13 */
    if (*n_tensors * 24 + *n_kv * 13 > c->size - c->pos)
        return mdl_errf(c->err, c->err_len, "%s: truncated file: %llu tensors and %llu metadata entries cannot fit in %zu bytes",
                        c->path, (unsigned long long)*n_tensors, (unsigned long long)*n_kv, c->size);
    return 0;
}

static int alignment(const mdl_model *m, cursor *c, uint64_t *align)
{
    const mdl_kv *kv = mdl_kv_find(m, "general.alignment");
    *align = 32;
    if (!kv) return 0;
    if (kv->type != MDL_GV_U32 || kv->i == 0 || (kv->i & (kv->i - 1)) || kv->i > 65536)
        return mdl_errf(c->err, c->err_len, "%s: general.alignment must be a u32 power of two up to 65536, not %lld",
                        c->path, (long long)kv->i);
    *align = (uint64_t)kv->i;
    return 0;
}

/* Places each tensor at data_start + offset after checking alignment and extent. */
static int place_tensors(mdl_model *m, cursor *c, int first, const uint64_t *offsets, uint64_t align)
{
    uint64_t data = (c->pos + align - 1) / align * align;
    if (data > c->size && m->n_tensors > first) return truncated(c, "tensor data");
    for (int i = first; i < m->n_tensors; i++) {
        mdl_tensor *t = &m->tensors[i];
        uint64_t off = offsets[i - first];
        if (off % align)
            return mdl_errf(c->err, c->err_len, "%s: tensor '%s': data offset %llu is not a multiple of the alignment %llu",
                            c->path, t->name, (unsigned long long)off, (unsigned long long)align);
        if (off > c->size - data || t->n_bytes > c->size - data - off)
            return mdl_errf(c->err, c->err_len, "%s: tensor '%s': data [%llu, %llu) runs past the end of the file (%zu bytes)",
                            c->path, t->name, (unsigned long long)(data + off), (unsigned long long)(data + off + t->n_bytes),
                            c->size);
        t->data = c->p + data + off;
    }
    return 0;
}

int mdl_gguf_load(mdl_model *m, const char *path, char *err, size_t err_len)
{
    mdl_file *f;
    uint64_t n_tensors, n_kv, align, *offsets = NULL;
    int rc = -1, first = m->n_tensors;
    if (mdl_map_file(m, path, &f, err, err_len)) return -1;
    cursor c = {f->map, f->size, 0, path, err, err_len};
    if (read_header(&c, &n_tensors, &n_kv)) goto done;
    for (uint64_t i = 0; i < n_kv; i++)
        if (read_kv(m, &c)) goto done;
    if (check_unique_keys(m, &c) || alignment(m, &c, &align)) goto done;
    if (!(offsets = malloc((n_tensors ? n_tensors : 1) * sizeof *offsets))) {
        mdl_errf(err, err_len, "%s: out of memory", path);
        goto done;
    }
    for (uint64_t i = 0; i < n_tensors; i++)
        if (read_tensor_info(m, &c, &offsets[i])) goto done;
    rc = place_tensors(m, &c, first, offsets, align);
done:
    free(offsets);
    return rc;
}
