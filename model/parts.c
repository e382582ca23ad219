/*
 * model/parts.c — what every reader builds a model from and looks things up in:
 * the mapped files, the tensors (with their shapes checked against their bytes),
 * the metadata keys, and the one-line errors. gguf.c, safetensors.c, config.c,
 * model_tok.c and packed_meta.c call it; it calls none of them.
 *
 * What it must never do: copy a file into memory, or hand out a tensor whose bytes
 * were not checked against its file.
 */
#include "model_int.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ==== Shared helpers ==== */

int mdl_errf(char *err, size_t err_len, const char *fmt, ...)
{
    if (err && err_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
        /* names quoted from a file may hold any byte: keep the message one line */
        for (char *p = err; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
    }
    return -1;
}

int mdl_map_file(mdl_model *m, const char *path, mdl_file **out, char *err, size_t err_len)
{
    struct stat st;
    mdl_file *nf = realloc(m->files, (size_t)(m->n_files + 1) * sizeof *nf);
    if (!nf) return mdl_errf(err, err_len, "%s: out of memory", path);
    m->files = nf;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mdl_errf(err, err_len, "%s: %s", path, strerror(errno));
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return mdl_errf(err, err_len, "%s: not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return mdl_errf(err, err_len, "%s: truncated file: it is empty", path);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return mdl_errf(err, err_len, "%s: mmap: %s", path, strerror(errno));
    mdl_file *f = &m->files[m->n_files];
    if (!(f->path = strdup(path))) {
        munmap(map, (size_t)st.st_size);
        return mdl_errf(err, err_len, "%s: out of memory", path);
    }
    f->map = map;
    f->size = (size_t)st.st_size;
    m->n_files++;
    *out = f;
    return 0;
}

mdl_tensor *mdl_new_tensor(mdl_model *m)
{
    if (m->n_tensors == m->cap_tensors) {
        int nc = m->cap_tensors ? 2 * m->cap_tensors : 64;
        mdl_tensor *nt = realloc(m->tensors, (size_t)nc * sizeof *nt);
        if (!nt) return NULL;
        m->tensors = nt;
        m->cap_tensors = nc;
    }
    mdl_tensor *t = &m->tensors[m->n_tensors++];
    memset(t, 0, sizeof *t);
    return t;
}

int mdl_check_shape(const char *file, mdl_tensor *t, char *err, size_t err_len)
{
    const int64_t limit = (int64_t)1 << 48; /* 256 Ti elements: absurd for any model */
    int64_t n = 1;
    if (t->n_dims < 1 || t->n_dims > MDL_MAX_DIMS)
        return mdl_errf(err, err_len, "%s: tensor '%s': %d dimensions (1 to %d supported)", file, t->name, t->n_dims, MDL_MAX_DIMS);
    for (int d = 0; d < t->n_dims; d++) {
        if (t->shape[d] <= 0)
            return mdl_errf(err, err_len, "%s: tensor '%s': dimension %d is %lld", file, t->name, d, (long long)t->shape[d]);
        if (t->shape[d] > limit / n)
            return mdl_errf(err, err_len, "%s: tensor '%s': element count overflows", file, t->name);
        n *= t->shape[d];
    }
    int block = mdl_block_size(t->type);
    if (t->shape[t->n_dims - 1] % block)
        return mdl_errf(err, err_len, "%s: tensor '%s': row length %lld is not a multiple of %s's block of %d", file, t->name,
                        (long long)t->shape[t->n_dims - 1], mdl_dtype_name(t->type), block);
    t->n_elems = n;
    t->n_bytes = mdl_row_bytes(t->type, n);
    return 0;
}

mdl_kv *mdl_kv_add(mdl_model *m, const char *key, size_t key_len)
{
    if (m->n_kv == m->cap_kv) {
        int nc = m->cap_kv ? 2 * m->cap_kv : 32;
        mdl_kv *nk = realloc(m->kv, (size_t)nc * sizeof *nk);
        if (!nk) return NULL;
        m->kv = nk;
        m->cap_kv = nc;
    }
    char *k = malloc(key_len + 1);
    if (!k) return NULL;
    memcpy(k, key, key_len);
    k[key_len] = 0;
    mdl_kv *kv = &m->kv[m->n_kv++];
    memset(kv, 0, sizeof *kv);
    kv->key = k;
    return kv;
}

const mdl_kv *mdl_kv_find(const mdl_model *m, const char *key)
{
    for (int i = 0; i < m->n_kv; i++)
        if (!strcmp(m->kv[i].key, key)) return &m->kv[i];
    return NULL;
}

/* ==== Lookups ==== */

const mdl_config *mdl_get_config(const mdl_model *m) { return &m->cfg; }
const char *mdl_path(const mdl_model *m) { return m->path; }
const char *mdl_format(const mdl_model *m) { return m->format; }
int mdl_tensor_count(const mdl_model *m) { return m->n_tensors; }

const mdl_tensor *mdl_tensor_at(const mdl_model *m, int i)
{
    assert(i >= 0 && i < m->n_tensors);
    return &m->tensors[i];
}

const mdl_tensor *mdl_find(const mdl_model *m, const char *name)
{
    int lo = 0, hi = m->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, c = strcmp(m->tensors[m->by_name[mid]].name, name);
        if (!c) return &m->tensors[m->by_name[mid]];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

int mdl_meta_str(const mdl_model *m, const char *key, const char **out)
{
    const mdl_kv *kv = mdl_kv_find(m, key);
    if (!kv || kv->type != MDL_GV_STR) return -1;
    *out = kv->s;
    return 0;
}

int mdl_meta_int(const mdl_model *m, const char *key, int64_t *out)
{
    const mdl_kv *kv = mdl_kv_find(m, key);
    if (!kv || !kv->is_int) return -1;
    *out = kv->i;
    return 0;
}

int mdl_meta_float(const mdl_model *m, const char *key, double *out)
{
    const mdl_kv *kv = mdl_kv_find(m, key);
    if (!kv || !kv->is_num) return -1;
    *out = kv->f;
    return 0;
}

int64_t mdl_file_bytes(const mdl_model *m)
{
    int64_t n = 0;
    for (int i = 0; i < m->n_files; i++) n += (int64_t)m->files[i].size;
    return n;
}

int mdl_tensor_stored_ggml(const mdl_tensor *t)
{
    int type = mdl_ggml_of_dtype(t->type);
    const lay_ggml_traits *g = lay_ggml_traits_of(type);
    if (!g || t->permute_rope_heads || t->n_dims != 2 || t->shape[1] % g->block) return -1;
    return (int64_t)t->n_bytes == t->shape[0] * lay_ggml_row_bytes(type, t->shape[1]) ? type : -1;
}
