/*
 * bench/bench_matvec.c — the packed matrix-vector product (runtime/qlinear.c) as a
 * share of this machine's memory read bandwidth, measured in the same run over the
 * same bytes. Caches lie, so every figure rotates over distinct matrices adding up
 * to at least 2 GiB (each call reads DRAM), and the baseline is a plain SIMD sum
 * over those same buffers with the same threads. Prints a table; writes nothing
 * else except, with --mmap DIR, a temporary file in DIR (removed at the end).
 *
 *   bench_matvec            the table: 4096x4096 and 4096x14336 (rows x cols),
 *                           about 2.5, 3, 4, 5, 6, 8 bpw, 1 and 2 threads, and
 *                           fp32 cblas_sgemv for reference
 *   bench_matvec --mmap DIR the 4-bit 4096x14336 product from a file mapping
 *                           against a copy in huge-page memory
 *   bench_matvec --quick    one pass per figure (smoke test)
 *
 * Columns: GB/s of packed bytes (values, scales, zeros) read per second; base, the
 * sum's GB/s over the same buffers; ratio = GB/s / base; hot, the same product on
 * one small L2-resident matrix, one thread, per CPU second (the decode speed of one
 * core when memory is not the limit).
 *
 *   bench_matvec --bits B   only the rows whose (high) width is B
 *   bench_matvec --shape RxC the table (or --hot) for one shape instead, as
 *                           SmolLM2-135M's 576x576 (columns: a multiple of 32)
 *   bench_matvec --batch N  batch-N products (g128, 7B shapes; --bits B: one width):
 *                           int8 kernels against the exact path and dense sgemm
 *   bench_matvec --hot      only the hot figure, every width and shape (seconds)
 *   bench_matvec --bandwidth only the baseline: read GB/s over 2 GiB, 1 and 2 threads
 *                           (what bench/bench_lut.py divides by)
 *
 * Each row measures today's kernels (GB/s, ratio) and the lookup-table kernels of
 * runtime/qkernels.h at that width (lut, ratio), over the same matrices, passes
 * interleaved; which of the two a layer takes at each width is the kernel set's
 * lut_cols, chosen from these rows.
 */
#include <cblas.h>
#include <fcntl.h>
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench/readbw.h"
#include "layout/layout.h"
#include "runtime/qkernels.h"
#include "runtime/runtime.h"

#define GIB (1024.0 * 1024.0 * 1024.0)
#define POOL_BYTES ((size_t)2 << 30)   /* values rotate over at least this much */
#define HUGE_ALIGN ((size_t)2 << 20)

static int passes = 5, hot_only = 0, only_bits = 0, batch = 0, bandwidth_only = 0;
static int64_t table_shapes[2][2] = { { 4096, 4096 }, { 4096, 14336 } }, nshapes = 2;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* CPU seconds of the calling thread: the hot figure stays honest on a busy machine. */
static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ==== Memory ==== */

static void *huge_alloc(size_t bytes)
{
    bytes = (bytes + HUGE_ALIGN - 1) / HUGE_ALIGN * HUGE_ALIGN;
    void *p = aligned_alloc(HUGE_ALIGN, bytes);
    if (p) madvise(p, bytes, MADV_HUGEPAGE);
    return p;
}

static void fill_random(void *buf, size_t bytes, uint64_t seed)
{
    uint64_t *w = buf;
    size_t n = bytes / 8;
#pragma omp parallel
    {
        uint64_t s = seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(omp_get_thread_num() + 1));
#pragma omp for schedule(static)
        for (size_t i = 0; i < n; i++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            w[i] = s;
        }
    }
}

/* ==== Matrices ==== */

typedef struct {
    lay_option opt;
    int64_t rows, cols;
    int n;                       /* matrices in the rotation */
    size_t values_bytes, meta_bytes;
    uint8_t *meta;               /* scales then zeros (or mins) of every matrix */
    void *perm;
    rt_linear **lin;             /* today's kernels (lookup kernels off) */
    rt_linear **lut;             /* the lookup kernels at every width, or NULL */
    double lut_build;            /* seconds to build lut[] (their reordered copies) */
} rotation;

static size_t matrix_bytes(const rotation *r) { return r->values_bytes + r->meta_bytes; }

/* A matrix's parts after its scales: zeros, or mins (a ggml type's), or neither. */
static lay_packed packed_of(const lay_option *o, int64_t rows, int64_t cols, const uint8_t *values, uint8_t *meta,
                            const void *perm)
{
    lay_cost c = lay_tensor_cost(o, rows, cols);
    return (lay_packed){ .rows = rows, .cols = cols, .opt = *o, .values = values, .scales = (const uint16_t *)meta,
                         .zeros = c.zeros ? meta + c.scales : NULL,
                         .mins = c.mins ? (const uint16_t *)(meta + c.scales) : NULL, .perm = c.perm ? perm : NULL };
}

/* n matrices whose values lie back to back in `values` (random bytes are valid
 * packed values at every width), with random scales, zeros or mins, and one
 * permutation (none for a ggml type). */
static int rotation_open(rotation *r, const lay_option *o, int64_t rows, int64_t cols, const uint8_t *values,
                         size_t values_cap, int n_force, int with_lut)
{
    lay_cost c = lay_tensor_cost(o, rows, cols);
    memset(r, 0, sizeof *r);
    r->opt = *o, r->rows = rows, r->cols = cols;
    r->values_bytes = (size_t)(c.values + 63) / 64 * 64;
    r->meta_bytes = (size_t)(c.scales + c.zeros + c.mins);
    r->n = n_force ? n_force : (int)((POOL_BYTES + matrix_bytes(r) - 1) / matrix_bytes(r));
    if ((size_t)r->n * r->values_bytes > values_cap) return -1;
    r->meta = malloc((size_t)r->n * r->meta_bytes);
    r->perm = malloc((size_t)c.perm + 1);
    r->lin = calloc((size_t)r->n, sizeof *r->lin);
    if (with_lut && qk_active()->lut_dot && lay_option_ggml(o) < 0) r->lut = calloc((size_t)r->n, sizeof *r->lut);
    if (!r->meta || !r->perm || !r->lin) return -1;
    fill_random(r->meta, (size_t)r->n * r->meta_bytes, 7);
    for (int i = 0; i < r->n; i++) { /* every fp16 (scales, mins) in [2^-9, 2^-8) */
        uint16_t *h = (uint16_t *)(r->meta + (size_t)i * r->meta_bytes);
        for (size_t k = 0; k < (size_t)(c.scales + c.mins) / 2; k++) h[k] = (uint16_t)(0x1800 | (h[k] & 0x3ff));
    }
    for (int64_t j = 0; c.perm && j < cols; j++) /* a fixed scramble of the columns */
        if (lay_perm_bytes(cols) == 2) ((uint16_t *)r->perm)[j] = (uint16_t)((j * 40503) % cols);
        else ((uint32_t *)r->perm)[j] = (uint32_t)((j * 40503) % cols);
    for (int with_lut = 0; with_lut < 2; with_lut++) {
        rt_linear **lin = with_lut ? r->lut : r->lin;
        qk_force_lut(with_lut ? QK_LUT_ALL : QK_LUT_OFF);
        double t0 = now();
        for (int i = 0; lin && i < r->n; i++) {
            lay_packed p = packed_of(o, rows, cols, values + (size_t)i * r->values_bytes,
                                     r->meta + (size_t)i * r->meta_bytes, r->perm);
            char err[256];
            if (!(lin[i] = rt_linear_packed(&p, 1, 0, NULL, err, sizeof err))) { fprintf(stderr, "%s\n", err); return -1; }
        }
        if (with_lut) r->lut_build = now() - t0;
    }
    qk_force_lut(QK_LUT_AUTO);
    return 0;
}

static void rotation_close(rotation *r)
{
    for (int i = 0; r->lin && i < r->n; i++)
        if (r->lin[i]) r->lin[i]->destroy(r->lin[i]), free(r->lin[i]);
    for (int i = 0; r->lut && i < r->n; i++)
        if (r->lut[i]) r->lut[i]->destroy(r->lut[i]), free(r->lut[i]);
    free(r->lin), free(r->lut), free(r->meta), free(r->perm);
}

static double pass_seconds(rt_linear *const *lin, int n, const float *x, float *y)
{
    double t0 = now();
    for (int i = 0; i < n; i++) lin[i]->matmul(lin[i], x, y, 1);
    return now() - t0;
}

/* Best seconds of a pass of matvecs over the rotation (after one warm-up pass),
 * today's kernels in best[0], the lookup kernels in best[1] (if any), the two
 * passes interleaved. */
static void time_matvec(const rotation *r, const float *x, float *y, double best[2])
{
    best[0] = best[1] = 1e30;
    for (int pass = 0; pass <= passes; pass++)
        for (int k = 0; k < 2; k++) {
            if (k && !r->lut) continue;
            double t = pass_seconds(k ? r->lut : r->lin, r->n, x, y);
            if (pass && t < best[k]) best[k] = t;
        }
}

/* Best seconds of a pass of sums over the same bytes. */
static double time_sum(const rotation *r, const uint8_t *values, uint64_t *sink)
{
    double best = 1e30;
    for (int pass = 0; pass <= passes; pass++) {
        double t0 = now();
        for (int i = 0; i < r->n; i++) {
            *sink += sum_buffer(values + (size_t)i * r->values_bytes, r->values_bytes);
            *sink += sum_buffer(r->meta + (size_t)i * r->meta_bytes, r->meta_bytes);
        }
        double t = now() - t0;
        if (pass && t < best) best = t;
    }
    return best;
}

/* GB/s of the product on the first matrix cut to a few rows that stay in L2, with
 * the lookup kernels at every width (lut) or none. */
static double hot_rate(const rotation *r, const uint8_t *values, const float *x, float *y, int lut)
{
    if (lut && !r->lut) return 0.0;
    int64_t rows = 640 * 1024 / (lay_row_bytes(&r->opt, r->cols) + 1) + 1;
    lay_cost c = lay_tensor_cost(&r->opt, rows, r->cols);
    lay_packed p = packed_of(&r->opt, rows, r->cols, values, r->meta, r->perm);
    qk_force_lut(lut ? QK_LUT_ALL : QK_LUT_OFF);
    rt_linear *l = rt_linear_packed(&p, 1, 0, NULL, NULL, 0);
    qk_force_lut(QK_LUT_AUTO);
    int reps = 400, saved = omp_get_max_threads();
    omp_set_num_threads(1);
    l->matmul(l, x, y, 1);
    double t0 = cpu_now();
    for (int i = 0; i < reps; i++) l->matmul(l, x, y, 1);
    double t = cpu_now() - t0;
    omp_set_num_threads(saved);
    l->destroy(l), free(l);
    return (double)reps * (double)(c.values + c.scales + c.zeros + c.mins) / t / 1e9;
}

/* ==== Table ==== */

static lay_option option(int lo, int hi, float share, int group)
{
    lay_option o = { .bits_lo = (uint8_t)lo, .bits_hi = (uint8_t)hi, .hi_share = share, .group = group,
                     .scale_fmt = LAY_SCALE_F16_Z8 };
    if (lo == hi) snprintf(o.name, sizeof o.name, "%db g%d", lo, group);
    else snprintf(o.name, sizeof o.name, "%db/%db %d%% g%d", lo, hi, (int)(share * 100 + 0.5f), group);
    return o;
}

/* A 32-wide ggml type, as a packed file holds it (a source's blocks kept as stored). */
static lay_option ggml_option(int type)
{
    lay_option o;
    lay_ggml_option(type, &o);
    return o;
}

static void print_header(void)
{
    printf("%-12s %-16s %5s %3s %4s %9s %8s %6s %8s %6s %6s %6s %7s\n", "shape", "option", "bpw", "thr", "mats",
           "MiB/mat", "base", "GB/s", "ratio", "lut", "ratio", "hot", "hot lut");
}

static void bench_packed(const lay_option *o, int64_t rows, int64_t cols, uint8_t *pool, size_t pool_cap,
                         const float *x, float *y)
{
    rotation r;
    uint64_t sink = 0;
    if (rotation_open(&r, o, rows, cols, pool, pool_cap, 0, 1)) {
        fprintf(stderr, "bench_matvec: cannot set up %s\n", o->name);
        rotation_close(&r);
        return;
    }
    double bpw = (double)lay_tensor_bits(o, rows, cols) / (double)(rows * cols);
    double total = (double)r.n * (double)matrix_bytes(&r);
    for (int t = 1; t <= 2; t++) {
        omp_set_num_threads(t);
        double tm[2], ts = time_sum(&r, pool, &sink);
        time_matvec(&r, x, y, tm);
        printf("%5lldx%-6lld %-16s %5.2f %3d %4d %9.1f %8.1f %6.1f %8.2f ", (long long)rows, (long long)cols, o->name,
               bpw, t, r.n, (double)matrix_bytes(&r) / 1048576.0, total / ts / 1e9, total / tm[0] / 1e9, ts / tm[0]);
        if (r.lut) printf("%6.1f %6.2f ", total / tm[1] / 1e9, ts / tm[1]); else printf("%6s %6s ", "", "");
        if (t == 1 && r.lut) printf("%6.1f %7.1f\n", hot_rate(&r, pool, x, y, 0), hot_rate(&r, pool, x, y, 1));
        else if (t == 1) printf("%6.1f\n", hot_rate(&r, pool, x, y, 0));
        else printf("\n");
        fflush(stdout);
    }
    if (r.lut) printf("%-29s lookup copies built at %.2f GB/s of values (%d threads)\n", "", (double)r.n *
                      (double)r.values_bytes / r.lut_build / 1e9, omp_get_max_threads());
    if (sink == 42) printf(" ");
    rotation_close(&r);
}

/* fp32 cblas_sgemv over the same pool, reinterpreted as matrices of floats. */
static void bench_sgemv(int64_t rows, int64_t cols, uint8_t *pool, const float *x, float *y)
{
    size_t mb = (size_t)(rows * cols) * sizeof(float);
    int n = (int)(POOL_BYTES / mb);
    rotation r = { .rows = rows, .cols = cols, .n = n, .values_bytes = mb, .meta_bytes = 0 };
    uint64_t sink = 0;
    for (int t = 1; t <= 2; t++) {
        omp_set_num_threads(t);
        openblas_set_num_threads(t);
        double best = 1e30;
        for (int pass = 0; pass <= passes; pass++) {
            double t0 = now();
            for (int i = 0; i < n; i++)
                cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)rows, (int)cols, 1.0f, (const float *)(pool + (size_t)i * mb),
                            (int)cols, x, 1, 0.0f, y, 1);
            double tt = now() - t0;
            if (pass && tt < best) best = tt;
        }
        r.meta = pool; /* unused: meta_bytes is 0 */
        double ts = time_sum(&r, pool, &sink);
        double total = (double)n * (double)mb;
        printf("%5lldx%-6lld %-16s %5.2f %3d %4d %9.1f %8.1f %6.1f %8.2f\n", (long long)rows, (long long)cols,
               "fp32 sgemv", 32.0, t, n, (double)mb / 1048576.0, total / ts / 1e9, total / best / 1e9, ts / best);
    }
    if (sink == 42) printf(" ");
}

/* ==== Batches (prompt processing) ==== */

/* The packed product at batch n, by the int8 kernels (what generation's prompts
 * take) and by the exact path (fp32 slabs and sgemm: evaluation's, RT_PACKED_EXACT),
 * against dense fp32 cblas_sgemm on the same shape, interleaved; widths 2..8 (or
 * --bits), g128, the two shapes of a 7B layer. GFLOP/s = 2 rows cols n / s. */
static void bench_batch_shape(int n, int bits, int64_t rows, int64_t cols, const float *w, const float *x, float *y)
{
    lay_option o = option(bits, bits, 0, 128);
    lay_cost c = lay_tensor_cost(&o, rows, cols);
    uint8_t *v = malloc((size_t)c.values), *z = malloc((size_t)c.zeros);
    uint16_t *sc = malloc((size_t)c.scales), *perm = malloc((size_t)c.perm);
    fill_random(v, (size_t)c.values, 3), fill_random(z, (size_t)c.zeros, 4);
    for (int64_t i = 0; i < c.scales / 2; i++) sc[i] = (uint16_t)(0x1800 | (i * 7 & 0x3ff));
    for (int64_t j = 0; j < cols; j++) perm[j] = (uint16_t)((j * 40503) % cols);
    lay_packed p = { .rows = rows, .cols = cols, .opt = o, .values = v, .scales = sc, .zeros = z, .perm = perm };
    rt_linear *l = rt_linear_packed(&p, n, 0, NULL, NULL, 0), *lx = rt_linear_packed(&p, n, RT_PACKED_EXACT, NULL, NULL, 0);
    double flop = 2.0 * (double)rows * (double)cols * n;
    for (int t = 1; t <= 2; t++) {
        omp_set_num_threads(t);
        openblas_set_num_threads(t);
        double best[3] = {1e30, 1e30, 1e30};
        for (int pass = 0; pass <= passes; pass++) {
            double t0 = now();
            l->matmul(l, x, y, n);
            double t1 = now();
            lx->matmul(lx, x, y, n);
            double t2 = now();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)rows, (int)cols, 1.0f, x, (int)cols, w,
                        (int)cols, 0.0f, y, (int)rows);
            double t3 = now(), tt[3] = {t1 - t0, t2 - t1, t3 - t2};
            for (int i = 0; pass && i < 3; i++) best[i] = tt[i] < best[i] ? tt[i] : best[i];
        }
        printf("%5lldx%-6lld %4db %3d %8.1f %8.1f %8.1f %7.2f %7.2f\n", (long long)rows, (long long)cols, bits, t,
               flop / best[0] / 1e9, flop / best[1] / 1e9, flop / best[2] / 1e9, best[1] / best[0], best[2] / best[0]);
    }
    l->destroy(l), free(l), lx->destroy(lx), free(lx);
    free(v), free(z), free(sc), free(perm);
}

static void bench_batch(int n)
{
    /* a 7B layer's two shapes, then SmolLM2-135M's four (q/o, gate/up, down, head) */
    static const int64_t shapes[][2] = {{4096, 4096}, {4096, 11008}, {576, 576}, {1536, 576}, {576, 1536}, {49152, 576}};
    enum { NSHAPE = sizeof shapes / sizeof *shapes, MAX_ROWS = 49152, MAX_COLS = 11008 };
    const int64_t most = 4096 * 11008;
    float *w = malloc((size_t)most * sizeof *w), *x = malloc((size_t)(n * MAX_COLS) * sizeof *x);
    float *y = malloc((size_t)(n * MAX_ROWS) * sizeof *y);
    for (int64_t i = 0; i < most; i++) w[i] = (float)(i % 1999) * 1e-3f - 1.0f;
    for (int64_t i = 0; i < n * MAX_COLS; i++) x[i] = (float)(i % 997) * 1e-3f - 0.5f;
    printf("\nbatch %d, g128: packed by the int8 kernels, by the exact path (fp32 slabs + sgemm) and dense fp32\n"
           "cblas_sgemm, GFLOP/s, passes interleaved; ratios: int8 kernels' speed over the others'\n", n);
    printf("%-12s %5s %3s %8s %8s %8s %7s %7s\n", "shape", "bits", "thr", "int8", "exact", "sgemm", "/exact", "/sgemm");
    for (int s = 0; s < NSHAPE; s++)
        for (int b = LAY_MIN_BITS; b <= LAY_MAX_BITS; b++)
            if (!only_bits || b == only_bits) bench_batch_shape(n, b, shapes[s][0], shapes[s][1], w, x, y);
    free(w), free(x), free(y);
}

/* ==== File mapping against ordinary memory ==== */

static int bench_mmap(const char *dir, uint8_t *pool, size_t pool_cap, const float *x, float *y)
{
    lay_option o = option(4, 4, 0, 128);
    int64_t rows = 4096, cols = 14336;
    size_t vb = (size_t)(lay_tensor_cost(&o, rows, cols).values + 63) / 64 * 64;
    int n = (int)((POOL_BYTES + vb - 1) / vb);
    size_t bytes = (size_t)n * vb;
    char path[4096];
    snprintf(path, sizeof path, "%s/bench_matvec.%d.tmp", dir, (int)getpid());
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) { fprintf(stderr, "bitplan bench: cannot create %s\n", path); return -1; }
    unlink(path);   /* gone when closed */
    for (size_t off = 0; off < bytes;) {
        ssize_t w = write(fd, pool + off, bytes - off < (64u << 20) ? bytes - off : (64u << 20));
        if (w <= 0) { fprintf(stderr, "bitplan bench: cannot write %s\n", path); close(fd); return -1; }
        off += (size_t)w;
    }
    uint8_t *map = mmap(NULL, bytes, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (map == MAP_FAILED) { fprintf(stderr, "bitplan bench: cannot map %s\n", path); close(fd); return -1; }
    printf("\n4-bit 4096x14336 product, %d matrices (%.2f GiB), file mapping (page cache, 4 KiB pages) vs huge-page copy:\n",
           n, (double)bytes / GIB);
    printf("%-8s %3s %8s %8s %6s\n", "memory", "thr", "GB/s", "base", "ratio");
    for (int t = 1; t <= 2; t++) {
        omp_set_num_threads(t);
        for (int which = 0; which < 2; which++) {
            rotation r;
            uint64_t sink = 0;
            uint8_t *vals = which ? map : pool;
            if (rotation_open(&r, &o, rows, cols, vals, which ? bytes : pool_cap, n, 0)) { rotation_close(&r); break; }
            double tm[2], ts = time_sum(&r, vals, &sink);
            time_matvec(&r, x, y, tm);
            double total = (double)r.n * (double)matrix_bytes(&r);
            printf("%-8s %3d %8.1f %8.1f %6.2f\n", which ? "mmap" : "copy", t, total / tm[0] / 1e9, total / ts / 1e9,
                   ts / tm[0]);
            if (sink == 42) printf(" ");
            rotation_close(&r);
        }
    }
    munmap(map, bytes);
    close(fd);
    return 0;
}

/* "RxC" into the table's first shape: rows 32..65536, columns a multiple of 32 up to 14336. */
static int parse_shape(const char *arg)
{
    long long r, c;
    char tail;
    if (sscanf(arg, "%lldx%lld%c", &r, &c, &tail) != 2 || r < 32 || r > 65536 || c < 128 || c > 14336 || c % 32)
        return 0;
    table_shapes[0][0] = r, table_shapes[0][1] = c;
    return 1;
}

int main(int argc, char **argv)
{
    const char *mmap_dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) passes = 1;
        else if (!strcmp(argv[i], "--hot")) hot_only = 1;
        else if (!strcmp(argv[i], "--bandwidth")) bandwidth_only = 1;
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--bits") && i + 1 < argc) only_bits = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--mmap") && i + 1 < argc) mmap_dir = argv[++i];
        else if (!strcmp(argv[i], "--shape") && i + 1 < argc && parse_shape(argv[++i])) nshapes = 1;
        else {
            fprintf(stderr, "usage: bench_matvec [--quick] [--bits B] [--hot] [--bandwidth] [--batch N] [--mmap DIR] "
                            "[--shape RxC]\n");
            return 2;
        }
    }
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2")) { fprintf(stderr, "bench_matvec: needs AVX2 for the baseline\n"); return 1; }
    if (batch > 0) { bench_batch(batch); return 0; }
    size_t cap = hot_only ? (64u << 20) : POOL_BYTES + (512u << 20);
    uint8_t *pool = huge_alloc(cap);
    float *x = malloc(14336 * sizeof *x), *y = malloc(14336 * sizeof *y);
    if (!pool || !x || !y) { fprintf(stderr, "bench_matvec: out of memory\n"); return 1; }
    fill_random(pool, cap, 1);
    for (int j = 0; j < 14336; j++) x[j] = (float)((j * 7919) % 2001 - 1000) / 1000.0f;
    printf("kernels: %s, %d cores, best of %d passes, each pass over >= %.0f GiB\n", qk_active()->name,
           omp_get_num_procs(), passes, POOL_BYTES / GIB);
    if (mmap_dir) return bench_mmap(mmap_dir, pool, cap, x, y) ? 1 : 0;
    if (bandwidth_only) {
        rotation r = { .n = 1, .values_bytes = POOL_BYTES, .meta = pool };
        uint64_t sink = 0;
        for (int t = 1; t <= 2; t++) {
            omp_set_num_threads(t);
            printf("read bandwidth, %d thread%s: %.1f GB/s\n", t, t > 1 ? "s" : "", POOL_BYTES / time_sum(&r, pool, &sink) / 1e9);
        }
        return sink == 42;
    }
    const lay_option opts[] = { option(2, 2, 0, 128), option(2, 2, 0, 32), option(2, 3, 0.3f, 128), option(3, 3, 0, 128),
                                option(3, 3, 0, 32), option(4, 4, 0, 128),
                                option(4, 4, 0, 32), ggml_option(LAY_GGML_Q4_0), ggml_option(LAY_GGML_Q4_1),
                                option(5, 5, 0, 128), option(6, 6, 0, 128), option(8, 8, 0, 128),
                                ggml_option(LAY_GGML_Q8_0) };
    if (hot_only) {
        printf("%-12s %-16s %8s %8s\n", "shape", "option", "hot GB/s", "hot lut");
        for (int s = 0; s < nshapes; s++)
            for (int b = 2; b <= 8; b++) {
                lay_option o = b == 7 ? option(2, 3, 0.3f, 128) : option(b, b, 0, 128);
                rotation r;
                int64_t rows = table_shapes[s][0] < 64 ? table_shapes[s][0] : 64;
                if (rotation_open(&r, &o, rows, table_shapes[s][1], pool, cap, 1, 1)) return 1;
                printf("%5lldx%-6lld %-16s %8.1f %8.1f\n", (long long)table_shapes[s][0],
                       (long long)table_shapes[s][1], o.name,
                       hot_rate(&r, pool, x, y, 0), hot_rate(&r, pool, x, y, 1));
                rotation_close(&r);
            }
        return 0;
    }
    print_header();
    for (int s = 0; s < nshapes; s++)
        for (size_t i = 0; i < sizeof opts / sizeof *opts; i++)
            if (!only_bits || opts[i].bits_hi == only_bits)
                bench_packed(&opts[i], table_shapes[s][0], table_shapes[s][1], pool, cap, x, y);
    if (only_bits) return 0;
    for (size_t i = 0; i < cap / 4; i++) ((float *)pool)[i] = (float)(i % 1999) * 1e-3f - 1.0f;
    for (int s = 0; s < nshapes; s++) bench_sgemv(table_shapes[s][0], table_shapes[s][1], pool, x, y);
    free(pool), free(x), free(y);
    return 0;
}
