/*
 * pack/load.c — a packed file (pack/FORMAT.md) as a runnable rt_model: packed
 * linear layers (runtime/qlinear.c) over the file's parts, layers over the file's
 * F16 for the tensors the plan left unquantized (runtime/stored.c: the embedding
 * is a row lookup, never an fp32 copy), norms and biases as fp32.
 *
 * Everything is checked before a layer is built, and every problem is one line
 * naming the file and what is wrong: the format tag and version; every tensor's
 * checksum (format version 2; model/ hashes, a mismatch names the tensor), so
 * that a damaged file is refused before any of its bytes are trusted; every option
 * applies to its tensor's shape (lay_option_check) and its recorded bits are
 * lay_tensor_bits; every part is there with the dtype and exact shape the option
 * implies, and no part is there without an option; the permutation is a
 * permutation; every tensor the config implies is there, packed or dense.
 *
 * Where the kernels read from: a copy of the packed parts in ordinary memory
 * (2 MiB aligned, transparent huge pages asked for), not the file mapping. The
 * mapping's 4 KiB page-cache pages were seen to read slower than huge-page
 * memory on large files (DESIGN.md; bench/bench_matvec --mmap measures it), and
 * the copy costs one pass over a file that is small next to the model it
 * replaces. On SmolLM2 the two are within noise (pack/FORMAT.md).
 * The values of a tensor whose layer keeps its own copy for the lookup kernels
 * (rt_linear_packed_copies_values) stay in the mapping: only products of more
 * than one row read them there, and the layer's copy is what batch 1 streams.
 * BITPLAN_PACKED_MMAP=1 in the environment keeps the parts in the mapping, to
 * measure the difference end to end; BITPLAN_PACKED_DENSE=1 decodes every packed
 * tensor into a dense fp32 layer instead (no int8 activations), to measure what
 * the kernels' activation quantization costs.
 *
 * It never parses the file itself (model/ does) and never modifies it.
 */
#include "pack_int.h"

#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "runtime/runtime.h"

#define HUGE_ALIGN ((size_t)2 << 20)
#define PART_ALIGN 64

/* What keeps the weights of a loaded packed model alive. */
typedef struct {
    mdl_model *file;
    uint8_t *mem;              /* the parts' copy, or NULL when reading the mapping */
    size_t mem_size, used;
    lay_packed *packed;        /* [n_packed]: the views the packed layers borrow */
    int n_packed;
} pack_owner;

static void owner_free(void *p)
{
    pack_owner *o = p;
    if (!o) return;
    free(o->mem);
    free(o->packed);
    mdl_close(o->file);
    free(o);
}

typedef struct {
    const char *path;
    mdl_model *file;
    const mdl_config *c;
    mdl_packed_option *opts;
    int n_opts;
    pack_owner *own;
    int version;               /* format_version, once check_header has read it */
    int verify;                /* 0: the checksums were verified already */
    int use_map;
    int dequant;               /* BITPLAN_PACKED_DENSE=1: decoded dense layers */
    int packed_flags;          /* rt_linear_packed's flags (RT_PACKED_EXACT) */
    rt_scratch *scratch;       /* the model's, for unquantized matrices */
    char *err;
    size_t err_len;
} lctx;

static int lfail(lctx *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int lfail(lctx *x, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (char *p = msg; *p; p++) /* tensor names from the file may hold any byte: one line */
        if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
    snprintf(x->err, x->err_len, "%s: %s", x->path, msg);
    return -1;
}

/* ==== Shapes the config implies ==== */

/* Rows and cols of a linear layer's tensor name, or -1 if name is none of them. */
static int linear_shape(const mdl_config *c, const char *name, int64_t *rows, int64_t *cols)
{
    int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    const int64_t shape[LAY_HEAD][2] = {{q, c->dim}, {kv, c->dim}, {kv, c->dim}, {c->dim, q},
                                       {c->hidden_dim, c->dim}, {c->hidden_dim, c->dim}, {c->dim, c->hidden_dim}};
    if (!strcmp(name, "token_embd.weight") || (!c->tied_embeddings && !strcmp(name, "output.weight"))) {
        *rows = c->vocab_size, *cols = c->dim;
        return 0;
    }
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < LAY_HEAD; k++) {
            char n[96];
            rt_tensor_name(c, l, (lay_class)k, n, sizeof n);
            if (strcmp(n, name)) continue;
            *rows = shape[k][0], *cols = shape[k][1];
            return 0;
        }
    return -1;
}

static const mdl_packed_option *option_of(const lctx *x, const char *name)
{
    for (int i = 0; i < x->n_opts; i++)
        if (!strcmp(x->opts[i].tensor, name)) return &x->opts[i];
    return NULL;
}

/* ==== Checks ==== */

/* The format tag and a version this build reads; from version 2 on, checksums. */
static int check_header(lctx *x)
{
    const char *ver, *sums;
    if (!mdl_is_packed(x->file)) return lfail(x, "not a bitplan packed file (no \"format\": \"%s\" metadata)", PACK_FORMAT);
    if (mdl_meta_str(x->file, "meta.format_version", &ver)) return lfail(x, "no format_version metadata");
    for (int v = PACK_FORMAT_VERSION_MIN; v <= PACK_FORMAT_VERSION && !x->version; v++) {
        char known[16];
        snprintf(known, sizeof known, "%d", v);
        if (!strcmp(ver, known)) x->version = v;
    }
    if (!x->version)
        return lfail(x, "format_version %s is not supported (this build reads %d to %d)", ver, PACK_FORMAT_VERSION_MIN,
                     PACK_FORMAT_VERSION);
    if (x->version >= 2 && mdl_meta_str(x->file, "meta." PACK_META_CHECKSUMS, &sums))
        return lfail(x, "format_version %s, but no %s metadata", ver, PACK_META_CHECKSUMS);
    return 0;
}

/* The first problem mdl_packed_verify reports, and how many there are. */
typedef struct {
    char *err;
    size_t err_len;
    int n;
} first_problem;

static void keep_first(void *arg, const char *line)
{
    first_problem *f = arg;
    if (!f->n++) snprintf(f->err, f->err_len, "%s", line);
}

/* Every tensor's bytes hash to its checksum (model/ reports "FILE: tensor ..."). */
static int check_checksums(lctx *x)
{
    first_problem f = {.err = x->err, .err_len = x->err_len};
    if (!mdl_packed_verify(x->file, keep_first, &f, NULL)) return 0;
    size_t k = strlen(x->err);
    if (f.n > 1 && k < x->err_len)
        snprintf(x->err + k, x->err_len - k, " (and %d more: bitplan verify lists them)", f.n - 1);
    return -1;
}

/* Every option applies to its tensor and records its exact cost. */
static int check_options(lctx *x)
{
    for (int i = 0; i < x->n_opts; i++) {
        const mdl_packed_option *m = &x->opts[i];
        int64_t rows, cols;
        char why[160];
        const lay_option *o = &m->opt;
        if (linear_shape(x->c, m->tensor, &rows, &cols))
            return lfail(x, "options name '%s', which is not a linear layer of this model", m->tensor);
        if (o->bits_lo < LAY_MIN_BITS || o->bits_lo > LAY_MAX_BITS || o->bits_hi < LAY_MIN_BITS || o->bits_hi > LAY_MAX_BITS)
            return lfail(x, "options['%s']: bits %d/%d are outside %d..%d", m->tensor, o->bits_lo, o->bits_hi, LAY_MIN_BITS,
                         LAY_MAX_BITS);
        if (lay_option_check(o, rows, cols, why, sizeof why))
            return lfail(x, "options['%s'] (%lldx%lld): %s", m->tensor, (long long)rows, (long long)cols, why);
        if (m->bits != lay_tensor_bits(o, rows, cols))
            return lfail(x, "options['%s']: bits %lld, but the option stores %lld", m->tensor, (long long)m->bits,
                         (long long)lay_tensor_bits(o, rows, cols));
    }
    return 0;
}

static void shape_text(const mdl_tensor *t, char *out, size_t cap)
{
    size_t k = (size_t)snprintf(out, cap, "[");
    for (int d = 0; d < t->n_dims && k < cap; d++) k += (size_t)snprintf(out + k, cap - k, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (k < cap) snprintf(out + k, cap - k, "]");
}

/* Part NAME+suffix must be there with this dtype and shape (d1 0: 1-D). */
static int expect_part(lctx *x, const char *base, const char *suffix, mdl_dtype type, int64_t d0, int64_t d1,
                       const mdl_tensor **out)
{
    char name[128], have[64];
    snprintf(name, sizeof name, "%s%s", base, suffix);
    const mdl_tensor *t = mdl_find(x->file, name);
    int n = d1 ? 2 : 1;
    if (!t) return lfail(x, "part %s of the quantized tensor %s is missing", name, base);
    if (t->type != type) return lfail(x, "%s is %s, the format says %s", name, mdl_dtype_name(t->type), mdl_dtype_name(type));
    if (t->n_dims != n || t->shape[0] != d0 || (n == 2 && t->shape[1] != d1)) {
        shape_text(t, have, sizeof have);
        if (n == 2) return lfail(x, "%s has shape %s, its option implies [%lld, %lld]", name, have, (long long)d0, (long long)d1);
        return lfail(x, "%s has shape %s, its option implies [%lld]", name, have, (long long)d0);
    }
    *out = t;
    return 0;
}

/* Stored columns name every original column once. */
static int check_perm(lctx *x, const char *name, const lay_packed *p)
{
    uint8_t *seen = calloc((size_t)p->cols, 1);
    if (!seen) return lfail(x, "out of memory");
    int rc = 0;
    for (int64_t j = 0; j < p->cols && !rc; j++) {
        int64_t v = lay_perm_at(p, j);
        if (v < 0 || v >= p->cols) rc = lfail(x, "%s.qperm[%lld] = %lld is not a column (0..%lld)", name, (long long)j,
                                              (long long)v, (long long)p->cols - 1);
        else if (seen[v]++) rc = lfail(x, "%s.qperm is not a permutation: column %lld appears twice", name, (long long)v);
    }
    free(seen);
    return rc;
}

/* Input multipliers (layout.h, "Activation-aware input scales") are finite and
 * positive: a zero would silence a column, which no quantizer writes. */
static int check_xscale(lctx *x, const char *name, const uint16_t *m, int64_t cols)
{
    for (int64_t j = 0; j < cols; j++) {
        float v = lay_f16_to_f32(m[j]);
        if (!(v > 0) || isinf(v))
            return lfail(x, "%s.qxscale[%lld] = %g is not a positive finite multiplier", name, (long long)j, (double)v);
    }
    return 0;
}

/* A part that no option explains (a stray or orphaned part). */
static int check_orphans(lctx *x)
{
    static const char *suffixes[] = {PACK_SUFFIX_VALUES, PACK_SUFFIX_SCALES, PACK_SUFFIX_ZEROS, PACK_SUFFIX_PERM,
                                     PACK_SUFFIX_MINS, PACK_SUFFIX_XSCALE};
    for (int i = 0; i < mdl_tensor_count(x->file); i++) {
        const char *name = mdl_tensor_at(x->file, i)->name;
        size_t n = strlen(name);
        for (int s = 0; s < (int)(sizeof suffixes / sizeof suffixes[0]); s++) {
            size_t k = strlen(suffixes[s]);
            if (n <= k || strcmp(name + n - k, suffixes[s])) continue;
            char base[128];
            snprintf(base, sizeof base, "%.*s", (int)(n - k), name);
            const mdl_packed_option *o = option_of(x, base);
            if (!o) return lfail(x, "tensor %s has no entry in the options metadata", name);
            if (s == 2 && o->opt.scale_fmt != LAY_SCALE_F16_Z8)
                return lfail(x, "%s is there, but option \"%s\" stores no zeros", name, o->opt.name);
            if (s == 3 && lay_option_ggml(&o->opt) >= 0)
                return lfail(x, "%s is there, but option \"%s\" keeps the original column order", name, o->opt.name);
            if (s == 4 && !lay_ggml_has_min(lay_option_ggml(&o->opt)))
                return lfail(x, "%s is there, but option \"%s\" stores no mins", name, o->opt.name);
            if (s == 5 && !o->opt.awq)
                return lfail(x, "%s is there, but option \"%s\" has no input scales", name, o->opt.name);
        }
    }
    return 0;
}

/* ==== Building ==== */

/* Where the kernels read a part: the mapping, or a copy in the owner's memory. */
static const void *place(lctx *x, const mdl_tensor *t)
{
    if (x->use_map) return t->data;
    pack_owner *o = x->own;
    size_t at = (o->used + PART_ALIGN - 1) / PART_ALIGN * PART_ALIGN;
    if (at + t->n_bytes > o->mem_size) return NULL;
    memcpy(o->mem + at, t->data, t->n_bytes);
    o->used = at + t->n_bytes;
    return o->mem + at;
}

/* Bytes of every part, each rounded up to PART_ALIGN. */
static size_t parts_bytes(const lctx *x)
{
    size_t n = 0;
    for (int i = 0; i < mdl_tensor_count(x->file); i++) {
        const mdl_tensor *t = mdl_tensor_at(x->file, i);
        if (t->type == MDL_U8 || t->type == MDL_U16 || t->type == MDL_U32 || strstr(t->name, PACK_SUFFIX_SCALES) ||
            strstr(t->name, PACK_SUFFIX_MINS) || strstr(t->name, PACK_SUFFIX_XSCALE))
            n += (t->n_bytes + PART_ALIGN - 1) / PART_ALIGN * PART_ALIGN;
    }
    return n;
}

static int alloc_parts(lctx *x)
{
    pack_owner *o = x->own;
    if (!(o->packed = calloc((size_t)(x->n_opts ? x->n_opts : 1), sizeof *o->packed))) return lfail(x, "out of memory");
    if (x->use_map) return 0;
    o->mem_size = parts_bytes(x);
    size_t cap = (o->mem_size + HUGE_ALIGN - 1) / HUGE_ALIGN * HUGE_ALIGN;
    if (!cap) return 0;
    if (!(o->mem = aligned_alloc(HUGE_ALIGN, cap))) return lfail(x, "out of memory for %zu bytes of packed weights", cap);
    madvise(o->mem, cap, MADV_HUGEPAGE);
    return 0;
}

/* A packed layer takes at most max_batch rows per product (its scratch is sized
 * once); this wrapper cuts larger batches into such pieces, so that callers may
 * pass any n (a 2048-token evaluation chunk) without the scratch growing. */
typedef struct { rt_linear *inner; int max_batch; } split_impl;

static void split_matmul(const rt_linear *l, const float *x, float *y, int n)
{
    const split_impl *s = l->impl;
    for (int i = 0; i < n; i += s->max_batch) {
        int k = n - i < s->max_batch ? n - i : s->max_batch;
        s->inner->matmul(s->inner, x + (int64_t)i * l->cols, y + (int64_t)i * l->rows, k);
    }
}

static void split_rotate_input(const rt_linear *l, const float *x, float *xr, int n)
{
    const split_impl *s = l->impl;
    for (int i = 0; i < n; i += s->max_batch) {
        int k = n - i < s->max_batch ? n - i : s->max_batch;
        s->inner->rotate_input(s->inner, x + (int64_t)i * l->cols, xr + (int64_t)i * l->cols, k);
    }
}

static void split_matmul_rotated(const rt_linear *l, const float *xr, float *y, int n)
{
    const split_impl *s = l->impl;
    for (int i = 0; i < n; i += s->max_batch) {
        int k = n - i < s->max_batch ? n - i : s->max_batch;
        s->inner->matmul_rotated(s->inner, xr + (int64_t)i * l->cols, y + (int64_t)i * l->rows, k);
    }
}

static void split_get_row(const rt_linear *l, int64_t r, float *out)
{
    const split_impl *s = l->impl;
    s->inner->get_row(s->inner, r, out);
}

static void split_destroy(rt_linear *l)
{
    split_impl *s = l->impl;
    if (s) rt_linear_free(s->inner);
    free(s);
}

static rt_linear *split_wrap(rt_linear *inner, int max_batch)
{
    rt_linear *l = calloc(1, sizeof *l);
    split_impl *s = calloc(1, sizeof *s);
    if (!l || !s) { free(l), free(s), rt_linear_free(inner); return NULL; }
    s->inner = inner, s->max_batch = max_batch;
    *l = (rt_linear){.rows = inner->rows, .cols = inner->cols, .matmul = split_matmul, .get_row = split_get_row,
                     .destroy = split_destroy, .impl = s, .packed = inner->packed};
    if (inner->rotate_input) { /* the halves too, so that a shared input is rotated once */
        l->rot = inner->rot, l->rot_seed = inner->rot_seed;
        l->rotate_input = split_rotate_input, l->matmul_rotated = split_matmul_rotated;
    }
    return l;
}

static int packed_linear(lctx *x, const mdl_packed_option *m, int max_batch, rt_linear **out)
{
    int64_t rows, cols;
    lay_packed *p = &x->own->packed[x->own->n_packed];
    const mdl_tensor *v, *s, *z = NULL, *mn = NULL, *pm = NULL, *xs = NULL;
    linear_shape(x->c, m->tensor, &rows, &cols);
    p->opt = m->opt;
    int64_t ng = lay_n_groups(&p->opt, cols);
    int type = lay_option_ggml(&p->opt);
    if (type >= 0 && (!lay_ggml_packable(type) || x->version < 3))
        return lfail(x, "%s: option \"%s\" is a ggml block type that format_version %d cannot hold", m->tensor,
                     p->opt.name, x->version);
    if (p->opt.rot && x->version < 4)
        return lfail(x, "%s: option \"%s\" rotates its inputs, which format_version %d cannot hold", m->tensor,
                     p->opt.name, x->version);
    if (p->opt.awq && x->version < 5)
        return lfail(x, "%s: option \"%s\" scales its inputs, which format_version %d cannot hold", m->tensor,
                     p->opt.name, x->version);
    p->rot_seed = m->rot_seed;
    if (expect_part(x, m->tensor, PACK_SUFFIX_VALUES, MDL_U8, rows, lay_row_bytes(&p->opt, cols), &v) ||
        expect_part(x, m->tensor, PACK_SUFFIX_SCALES, MDL_F16, rows, ng, &s) ||
        (p->opt.scale_fmt == LAY_SCALE_F16_Z8 && expect_part(x, m->tensor, PACK_SUFFIX_ZEROS, MDL_U8, rows, ng, &z)) ||
        (lay_ggml_has_min(type) && expect_part(x, m->tensor, PACK_SUFFIX_MINS, MDL_F16, rows, ng, &mn)) ||
        (type < 0 &&
         expect_part(x, m->tensor, PACK_SUFFIX_PERM, lay_perm_bytes(cols) == 2 ? MDL_U16 : MDL_U32, cols, 0, &pm)) ||
        (p->opt.awq && expect_part(x, m->tensor, PACK_SUFFIX_XSCALE, MDL_F16, cols, 0, &xs)))
        return -1;
    p->rows = rows, p->cols = cols;
    p->perm = pm ? pm->data : NULL;
    if (pm && check_perm(x, m->tensor, p)) return -1;
    if (xs && check_xscale(x, m->tensor, xs->data, cols)) return -1;
    /* values that batch 1 reads from the layer's lookup copy stay in the mapping */
    p->values = rt_linear_packed_copies_values(&p->opt, cols) && !x->dequant ? v->data : place(x, v);
    p->scales = place(x, s);
    p->perm = pm ? place(x, pm) : NULL;
    p->zeros = z ? place(x, z) : NULL;
    p->mins = mn ? place(x, mn) : NULL;
    p->xscale = xs ? place(x, xs) : NULL;
    if (!p->values || !p->scales || (pm && !p->perm) || (z && !p->zeros) || (mn && !p->mins) || (xs && !p->xscale))
        return lfail(x, "internal: packed memory too small");
    x->own->n_packed++;
    char why[256];
    if (x->dequant) { /* dense fp32 over the decoded weights: no activation quantization */
        float *w = malloc((size_t)(rows * cols) * sizeof *w);
        if (!w) return lfail(x, "out of memory for %s", m->tensor);
        lay_packed_dequant(p, w);
        if (!(*out = rt_linear_dense(w, rows, cols))) return lfail(x, "out of memory for %s", m->tensor);
        return 0;
    }
    rt_linear *l = rt_linear_packed(p, max_batch, x->packed_flags, x->scratch, why, sizeof why);
    if (!l) return lfail(x, "%s: %s", m->tensor, why);
    if (!(*out = split_wrap(l, max_batch))) return lfail(x, "out of memory for %s", m->tensor);
    return 0;
}

/* A tensor as fp32: exactly this shape (d1 0: 1-D), a float type, finite. */
static int dense_f32(lctx *x, const char *name, int64_t d0, int64_t d1, float **out)
{
    const mdl_tensor *t = mdl_find(x->file, name);
    char have[64];
    int n = d1 ? 2 : 1;
    *out = NULL;
    if (!t) return lfail(x, "tensor %s is missing (neither packed nor stored)", name);
    if (t->n_dims != n || t->shape[0] != d0 || (n == 2 && t->shape[1] != d1)) {
        shape_text(t, have, sizeof have);
        return lfail(x, "%s has shape %s, the config needs [%lld%s%lld]", name, have, (long long)d0, n == 2 ? ", " : "",
                     n == 2 ? (long long)d1 : 0LL);
    }
    if (t->type >= MDL_I32) return lfail(x, "%s is %s, not a float type", name, mdl_dtype_name(t->type));
    float *w = malloc((size_t)t->n_elems * sizeof *w);
    if (!w) return lfail(x, "out of memory for %s", name);
    mdl_tensor_to_f32(x->file, t, w);
    for (int64_t i = 0; i < t->n_elems; i++)
        if (!isfinite(w[i])) {
            free(w);
            return lfail(x, "%s has a non-finite value at element %lld", name, (long long)i);
        }
    *out = w;
    return 0;
}

/* An unquantized matrix (an untied embedding, a layer the plan left alone) stays
 * F16 in the file and is decoded per row or product (runtime/stored.c): no fp32
 * copy. Exactly this shape, a float type, finite. */
static int stored_linear(lctx *x, const char *name, int64_t rows, int64_t cols, rt_linear **out)
{
    const mdl_tensor *t = mdl_find(x->file, name);
    char have[64];
    if (!t) return lfail(x, "tensor %s is missing (neither packed nor stored)", name);
    if (t->n_dims != 2 || t->shape[0] != rows || t->shape[1] != cols) {
        shape_text(t, have, sizeof have);
        return lfail(x, "%s has shape %s, the config needs [%lld, %lld]", name, have, (long long)rows, (long long)cols);
    }
    if (t->type >= MDL_I32) return lfail(x, "%s is %s, not a float type", name, mdl_dtype_name(t->type));
    int64_t r, c;
    float v;
    int bad = mdl_tensor_find_nonfinite(x->file, t, &r, &c, &v);
    if (bad < 0) return lfail(x, "out of memory for %s", name);
    if (bad) return lfail(x, "%s has a non-finite value at element %lld", name, (long long)(r * cols + c));
    if (!(*out = rt_linear_stored(x->file, t, x->scratch))) return lfail(x, "out of memory for %s", name);
    return 0;
}

static int linear(lctx *x, const char *name, int max_batch, rt_linear **out)
{
    const mdl_packed_option *m = option_of(x, name);
    if (m) return packed_linear(x, m, max_batch, out);
    int64_t rows, cols;
    linear_shape(x->c, name, &rows, &cols);
    if (!x->dequant) return stored_linear(x, name, rows, cols, out);
    float *w;
    if (dense_f32(x, name, rows, cols, &w)) return -1;
    if (!(*out = rt_linear_dense(w, rows, cols))) return lfail(x, "out of memory for %s", name);
    return 0;
}

static int build_layer(lctx *x, int l, int max_batch, rt_layer *ly)
{
    static const char *bias[3] = {"attn_q", "attn_k", "attn_v"};
    const mdl_config *c = x->c;
    char name[96];
    snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
    if (dense_f32(x, name, c->dim, 0, &ly->attn_norm)) return -1;
    snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
    if (dense_f32(x, name, c->dim, 0, &ly->ffn_norm)) return -1;
    for (int k = 0; k < LAY_HEAD; k++) {
        rt_tensor_name(c, l, (lay_class)k, name, sizeof name);
        if (linear(x, name, max_batch, &ly->lin[k])) return -1;
    }
    float **b[3] = {&ly->bias_q, &ly->bias_k, &ly->bias_v};
    for (int k = 0; c->attn_bias && k < 3; k++) {
        snprintf(name, sizeof name, "blk.%d.%s.bias", l, bias[k]);
        if (dense_f32(x, name, ly->lin[k]->rows, 0, b[k])) return -1;
    }
    return 0;
}

static int build_model(lctx *x, int max_batch, rt_model *m)
{
    const mdl_config *c = x->c;
    if (!(m->layers = calloc((size_t)c->n_layers, sizeof *m->layers))) return lfail(x, "out of memory");
    m->cfg = *c;
    if (linear(x, "token_embd.weight", max_batch, &m->embed)) return -1;
    if (c->tied_embeddings) m->head = m->embed;
    else if (linear(x, "output.weight", max_batch, &m->head)) return -1;
    if (dense_f32(x, "output_norm.weight", c->dim, 0, &m->out_norm)) return -1;
    for (int l = 0; l < c->n_layers; l++)
        if (build_layer(x, l, max_batch, &m->layers[l])) return -1;
    return rt_scratch_ready(m->scratch) ? lfail(x, "out of memory for scratch") : 0;
}

/* ==== Entry points ==== */

int pack_is_packed(const char *path)
{
    mdl_model *f;
    char err[MDL_ERR_LEN];
    if (mdl_open(path, &f, err, sizeof err)) return 0;
    int packed = mdl_is_packed(f);
    mdl_close(f);
    return packed;
}

/* Checks and builds: the body of pack_load_file and pack_verify_file, which set
 * x's path, file, config and modes. */
static int load(lctx *x, int max_batch, rt_model **out)
{
    *out = NULL;
    rt_model *m = calloc(1, sizeof *m);
    x->own = calloc(1, sizeof *x->own);
    x->scratch = rt_scratch_new();
    if (!m || !x->own || !x->scratch) {
        lfail(x, "out of memory");
        free(m), free(x->own), rt_scratch_free(x->scratch), mdl_close(x->file);
        return -1;
    }
    m->scratch = x->scratch;
    x->own->file = x->file;
    m->owner = x->own, m->owner_free = owner_free;
    int rc = check_header(x) || (x->verify && check_checksums(x)) ||
             mdl_packed_options(x->file, &x->opts, &x->n_opts, x->err, x->err_len) || check_options(x) ||
             check_orphans(x) || alloc_parts(x) || build_model(x, max_batch, m);
    free(x->opts);
    if (rc) {
        if (!m->layers) m->cfg.n_layers = 0;
        rt_model_free(m); /* frees the owner, which closes the file */
        return -1;
    }
    char tok_err[MDL_ERR_LEN];
    int64_t add_bos;
    m->tok = mdl_tokenizer(x->file, tok_err, sizeof tok_err); /* NULL is fine: no text in or out */
    if (!m->tok && strstr(tok_err, "out of memory")) { /* not "no tokenizer" later */
        snprintf(x->err, x->err_len, "%s", tok_err);
        rt_model_free(m);
        return -1;
    }
    m->add_bos = !mdl_meta_int(x->file, "tokenizer.ggml.add_bos_token", &add_bos) && add_bos;
    *out = m;
    return 0;
}

static int env_is_1(const char *name)
{
    const char *v = getenv(name);
    return v && !strcmp(v, "1");
}

int pack_load_file(mdl_model *file, int max_batch, int flags, rt_model **out, char *err, size_t err_len)
{
    assert(file && max_batch > 0 && out);
    lctx x = {.path = mdl_path(file), .file = file, .c = mdl_get_config(file), .err = err, .err_len = err_len, .verify = 1,
              .use_map = env_is_1("BITPLAN_PACKED_MMAP"), .dequant = env_is_1("BITPLAN_PACKED_DENSE"),
              .packed_flags = flags & PACK_LOAD_EXACT ? RT_PACKED_EXACT : 0};
    return load(&x, max_batch, out);
}

int pack_verify_file(mdl_model *file, void (*problem)(void *arg, const char *line), void *arg, pack_verify_info *info)
{
    char err[1024];
    lctx x = {.path = mdl_path(file), .file = file, .c = mdl_get_config(file), .err = err, .err_len = sizeof err,
              .use_map = 1}; /* nothing runs: the mapping saves the copy */
    memset(info, 0, sizeof *info);
    info->n_tensors = mdl_tensor_count(file);
    int bad_header = check_header(&x);
    if (bad_header) problem(arg, err);
    int n = bad_header ? 1 : mdl_packed_verify(file, problem, arg, &info->checked_bytes);
    if (n) {
        mdl_close(file);
        return n;
    }
    info->version = x.version;
    x.version = 0; /* load reads it again */
    rt_model *m;
    if (load(&x, 1, &m)) {
        problem(arg, err);
        return 1;
    }
    rt_model_free(m);
    return 0;
}

int pack_load(const char *path, int max_batch, int flags, rt_model **out, char *err, size_t err_len)
{
    mdl_model *file;
    *out = NULL;
    if (mdl_open(path, &file, err, err_len)) return -1;
    return pack_load_file(file, max_batch, flags, out, err, err_len);
}
