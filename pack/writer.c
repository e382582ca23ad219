/*
 * pack/writer.c — the safetensors container writer. It orders tensors by element
 * alignment (4, 2, then 1 byte) so every tensor starts aligned without padding
 * between tensors, pads the JSON header so the data starts at a multiple of 64, and
 * writes atomically (util_out: temporary file, fsync, rename). It never interprets
 * tensors. It records every tensor's checksum (mdl_packed_checksum, XXH3-64) in the
 * "checksums" metadata, hashed over the very buffer that goes to the file.
 *
 * Memory does not grow with the file: each tensor's bytes go, as they are added, to
 * a spool file beside the destination that is unlinked as soon as it is created
 * (so a killed writer leaves nothing behind), and the final file is the header
 * followed by the spool's ranges in the header's order, copied by the kernel
 * (copy_file_range) where it can.
 */
#include "pack_int.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/util.h"
#include "util/util.h"

typedef struct {
    char *name;
    char dtype[8];
    int n_dims;
    int64_t shape[4];
    size_t offset;  /* in the spool */
    size_t n_bytes;
    int align;      /* element size: 4, 2 or 1 */
    int order;      /* insertion order, to keep it within an alignment run */
    uint64_t sum;   /* mdl_packed_checksum of the bytes */
} entry;

struct pack_writer {
    char *path;     /* the destination */
    util_out out;   /* its temporary file, created (and the destination checked) up front */
    int spool;      /* fd of the unlinked spool file */
    size_t spooled; /* bytes in it */
    int io_errno;   /* the first spool write error, 0 if none */
    entry *v;
    int n, cap;
    char **meta;    /* key, value, key, value, ... */
    int n_meta;
};

/* An unlinked read-write file in path's directory. */
static int open_spool(const char *path)
{
    char *copy = strdup(path);
    if (!copy) return errno = ENOMEM, -1;
    char tmpl[4096];
    snprintf(tmpl, sizeof tmpl, "%s/.bitplan-spool.XXXXXX", dirname(copy));
    free(copy);
    int fd = mkostemp(tmpl, O_CLOEXEC);
    if (fd >= 0) unlink(tmpl);
    return fd;
}

pack_writer *pack_writer_new(const char *path, char *err, size_t err_len)
{
    pack_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(path))) {
        free(w);
        snprintf(err, err_len, "%s: out of memory", path);
        return NULL;
    }
    w->spool = -1;
    if (util_out_open(&w->out, path, err, err_len)) {
        free(w->path), free(w);
        return NULL;
    }
    if ((w->spool = open_spool(w->out.path)) < 0) {
        snprintf(err, err_len, "%s: cannot create a temporary file beside it: %s", path, strerror(errno));
        pack_writer_free(w);
        return NULL;
    }
    return w;
}

void pack_writer_free(pack_writer *w)
{
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->v[i].name);
    for (int i = 0; i < 2 * w->n_meta; i++) free(w->meta[i]);
    if (w->spool >= 0) close(w->spool);
    util_out_abort(&w->out); /* removes the temporary file unless it was committed */
    free(w->path), free(w->v), free(w->meta), free(w);
}

const char *pack_writer_strerror(const pack_writer *w)
{
    return w->io_errno ? strerror(w->io_errno) : "out of memory";
}

static int dtype_align(const char *dtype)
{
    if (!strcmp(dtype, "F32") || !strcmp(dtype, "U32") || !strcmp(dtype, "I32")) return 4;
    if (!strcmp(dtype, "F16") || !strcmp(dtype, "U16") || !strcmp(dtype, "BF16")) return 2;
    if (!strcmp(dtype, "U8")) return 1;
    return 0;
}

/* Appends data to the spool; the writer takes and frees it. */
static int spool_data(pack_writer *w, void *data, size_t n_bytes, size_t *offset)
{
    *offset = w->spooled;
    int rc = util_write_all(w->spool, data, n_bytes);
    free(data);
    if (rc) {
        w->io_errno = errno ? errno : EIO;
        return -1;
    }
    w->spooled += n_bytes;
    return 0;
}

int pack_writer_add(pack_writer *w, const char *name, const char *dtype, int n_dims,
                    const int64_t *shape, void *data, size_t n_bytes)
{
    int align = dtype_align(dtype);
    if (!align || n_dims < 1 || n_dims > 4) { free(data); return -1; }
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 64;
        entry *nv = realloc(w->v, (size_t)cap * sizeof *nv);
        if (!nv) { free(data); return -1; }
        w->v = nv, w->cap = cap;
    }
    entry *e = &w->v[w->n];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    if (!e->name) { free(data); return -1; }
    snprintf(e->dtype, sizeof e->dtype, "%s", dtype);
    e->n_dims = n_dims;
    memcpy(e->shape, shape, (size_t)n_dims * sizeof *shape);
    e->sum = mdl_packed_checksum(data, n_bytes);
    if (spool_data(w, data, n_bytes, &e->offset)) { free(e->name); return -1; }
    e->n_bytes = n_bytes, e->align = align, e->order = w->n++;
    return 0;
}

int pack_writer_meta(pack_writer *w, const char *key, const char *value)
{
    assert(strcmp(key, PACK_META_CHECKSUMS)); /* the writer's own */
    char **nm = realloc(w->meta, (size_t)(2 * w->n_meta + 2) * sizeof *nm);
    if (!nm) return -1;
    w->meta = nm;
    w->meta[2 * w->n_meta] = strdup(key);
    w->meta[2 * w->n_meta + 1] = strdup(value);
    w->n_meta++;
    return w->meta[2 * w->n_meta - 2] && w->meta[2 * w->n_meta - 1] ? 0 : -1;
}

static int by_alignment(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    if (x->align != y->align) return y->align - x->align;
    return x->order - y->order;
}

/* The "checksums" metadata: a JSON object, tensor name -> 16 hex digits. */
static int checksums_json(const pack_writer *w, sb_buf *b)
{
    sb_putc(b, '{');
    for (int i = 0; i < w->n; i++) {
        if (i) sb_putc(b, ',');
        sb_json_string(b, w->v[i].name);
        sb_printf(b, ":\"%016llx\"", (unsigned long long)w->v[i].sum);
    }
    sb_putc(b, '}');
    return b->oom ? -1 : 0;
}

/* The JSON header, padded with spaces so that 8 + its length is a multiple of 64. */
static char *header_json(pack_writer *w, size_t *len)
{
    sb_buf b = {0}, sums = {0};
    sb_putc(&b, '{');
    sb_puts(&b, "\"__metadata__\":{");
    for (int i = 0; i < w->n_meta; i++) {
        sb_json_string(&b, w->meta[2 * i]);
        sb_putc(&b, ':');
        sb_json_string(&b, w->meta[2 * i + 1]);
        sb_putc(&b, ',');
    }
    sb_json_string(&b, PACK_META_CHECKSUMS);
    sb_putc(&b, ':');
    if (checksums_json(w, &sums)) b.oom = 1;
    else sb_json_string(&b, sums.s);
    free(sums.s);
    sb_putc(&b, '}');
    size_t off = 0;
    for (int i = 0; i < w->n; i++) {
        entry *e = &w->v[i];
        sb_putc(&b, ',');
        sb_json_string(&b, e->name);
        sb_printf(&b, ":{\"dtype\":\"%s\",\"shape\":[", e->dtype);
        for (int d = 0; d < e->n_dims; d++) sb_printf(&b, "%s%lld", d ? "," : "", (long long)e->shape[d]);
        sb_printf(&b, "],\"data_offsets\":[%zu,%zu]}", off, off + e->n_bytes);
        off += e->n_bytes;
    }
    sb_putc(&b, '}');
    while ((8 + b.len) % 64) sb_putc(&b, ' ');
    if (b.oom) { free(b.s); return NULL; }
    *len = b.len;
    return b.s;
}

/* Copies n bytes of the spool from offset off to the end of fd: in the kernel
 * where it can, else through a buffer. */
static int copy_range(int spool, int fd, size_t off, size_t n)
{
    loff_t in = (loff_t)off;
    while (n) {
        ssize_t k = copy_file_range(spool, &in, fd, NULL, n, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break; /* EXDEV, ENOSYS, EINVAL...: copy by hand */
        n -= (size_t)k;
    }
    char buf[1 << 16];
    while (n) {
        ssize_t k = pread(spool, buf, n < sizeof buf ? n : sizeof buf, in);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0 || util_write_all(fd, buf, (size_t)k)) return errno = k == 0 ? EIO : errno, -1;
        in += k, n -= (size_t)k;
    }
    return 0;
}

static int write_body(pack_writer *w, int fd, const char *header, size_t hlen)
{
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    if (util_write_all(fd, len8, 8) || util_write_all(fd, header, hlen)) return -1;
    for (int i = 0; i < w->n; i++)
        if (copy_range(w->spool, fd, w->v[i].offset, w->v[i].n_bytes)) return -1;
    return 0;
}

int pack_writer_write(pack_writer *w, char *err, size_t err_len)
{
    const char *path = w->path;
    if (w->io_errno) return snprintf(err, err_len, "%s: write failed: %s", path, strerror(w->io_errno)), -1;
    qsort(w->v, (size_t)w->n, sizeof *w->v, by_alignment);
    size_t hlen;
    char *header = header_json(w, &hlen);
    if (!header) return snprintf(err, err_len, "%s: out of memory", path), -1;
    int rc = write_body(w, w->out.fd, header, hlen);
    int saved = errno;
    free(header);
    if (rc) {
        snprintf(err, err_len, "%s: write failed: %s", path, strerror(saved));
        util_out_abort(&w->out);
        return -1;
    }
    return util_out_commit(&w->out, err, err_len);
}
