/*
 * bench/bench_verify.c — what verifying a packed file's checksums costs
 * (mdl_packed_verify, XXH3-64 over every tensor), against the machine's read
 * bandwidth measured in the same run, and as a share of loading the file.
 *
 *   bench_verify FILE.bp [--passes N]
 *
 * For 1 and 2 threads, best of N passes each (the file in the page cache):
 *   fresh    mdl_open + verify on a new mapping: hashing plus the page faults of
 *            first touch, which is what a load pays;
 *   mapped   verify again on the same mapping (faults done): the hash alone;
 *   sum      a plain AVX2 sum over the same mapped bytes (bench/readbw.h): what
 *            reading those bytes costs at best; ratio = mapped GB/s / sum GB/s;
 *   DRAM     the same sum over 1 GiB of memory, more than the caches hold
 *            (memory read bandwidth); ratio = mapped GB/s / DRAM GB/s;
 *   load     pack_load (open, verify, checks, copy of the parts, build), and the
 *            fresh verify's share of it.
 * Prints a Markdown table; writes nothing.
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/readbw.h"
#include "model/model.h"
#include "pack/pack.h"
#include "runtime/runtime.h"

#define DRAM_BYTES ((size_t)1 << 30)

static int passes = 5;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void die(const char *what, const char *err)
{
    fprintf(stderr, "bench_verify: %s: %s\n", what, err);
    exit(1);
}

/* Verifies m; exits on a problem (the benchmark needs a sound file). */
static int64_t verify(const mdl_model *m)
{
    int64_t bytes;
    if (mdl_packed_verify(m, NULL, NULL, &bytes)) die(mdl_path(m), "checksums do not match: run bitplan verify");
    if (!bytes) die(mdl_path(m), "no checksums (a version-1 file?)");
    return bytes;
}

static double best_fresh_verify(const char *path)
{
    double best = 1e30;
    char err[MDL_ERR_LEN];
    for (int p = 0; p < passes; p++) {
        mdl_model *m;
        if (mdl_open(path, &m, err, sizeof err)) die(path, err);
        double t0 = now();
        verify(m);
        double t = now() - t0;
        mdl_close(m);
        if (t < best) best = t;
    }
    return best;
}

static double best_mapped_verify(const mdl_model *m)
{
    double best = 1e30;
    verify(m); /* faults the mapping in */
    for (int p = 0; p < passes; p++) {
        double t0 = now();
        verify(m);
        double t = now() - t0;
        if (t < best) best = t;
    }
    return best;
}

/* The tensors of a packed file tile its data (model/ checks it): one region. */
static double best_sum(const uint8_t *p, size_t bytes, uint64_t *sink)
{
    double best = 1e30;
    *sink += sum_buffer(p, bytes);
    for (int i = 0; i < passes; i++) {
        double t0 = now();
        *sink += sum_buffer(p, bytes);
        double t = now() - t0;
        if (t < best) best = t;
    }
    return best;
}

static double best_load(const char *path)
{
    double best = 1e30;
    char err[MDL_ERR_LEN];
    for (int p = 0; p < passes; p++) {
        rt_model *m;
        double t0 = now();
        if (pack_load(path, 1, 0, &m, err, sizeof err)) die(path, err);
        double t = now() - t0;
        rt_model_free(m);
        if (t < best) best = t;
    }
    return best;
}

static const uint8_t *data_start(const mdl_model *m)
{
    const uint8_t *lo = NULL;
    for (int i = 0; i < mdl_tensor_count(m); i++) {
        const uint8_t *d = mdl_tensor_at(m, i)->data;
        if (!lo || d < lo) lo = d;
    }
    return lo;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--passes") && i + 1 < argc) passes = atoi(argv[++i]);
        else if (!path && argv[i][0] != '-') path = argv[i];
        else { fprintf(stderr, "usage: bench_verify FILE.bp [--passes N]\n"); return 2; }
    }
    if (!path || passes < 1) { fprintf(stderr, "usage: bench_verify FILE.bp [--passes N]\n"); return 2; }
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2")) { fprintf(stderr, "bench_verify: needs AVX2 for the baseline\n"); return 1; }
    char err[MDL_ERR_LEN];
    mdl_model *m;
    if (mdl_open(path, &m, err, sizeof err)) die(path, err);
    int64_t bytes = verify(m);
    uint8_t *dram = malloc(DRAM_BYTES);
    if (!dram) die("DRAM buffer", "out of memory");
    for (size_t i = 0; i < DRAM_BYTES; i++) dram[i] = (uint8_t)(i * 2654435761u >> 24);
    uint64_t sink = 0;
    printf("%s: %d tensors, %.1f MB checksummed (XXH3-64), best of %d passes\n\n", path, mdl_tensor_count(m),
           (double)bytes / 1e6, passes);
    printf("| threads | verify, fresh mapping (ms) | GB/s | verify, mapped (ms) | GB/s | sum, same bytes GB/s | ratio "
           "| DRAM sum GB/s | ratio | pack_load (ms) | fresh verify's share |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
    int saved = omp_get_max_threads();
    for (int t = 1; t <= 2; t++) {
        omp_set_num_threads(t);
        double fresh = best_fresh_verify(path), mapped = best_mapped_verify(m);
        double sum = best_sum(data_start(m), (size_t)bytes, &sink), dsum = best_sum(dram, DRAM_BYTES, &sink);
        double load = best_load(path);
        double gb = (double)bytes / 1e9, sum_rate = gb / sum, dram_rate = (double)DRAM_BYTES / 1e9 / dsum;
        printf("| %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.2f | %.1f | %.2f | %.1f | %.0f %% |\n", t, 1e3 * fresh,
               gb / fresh, 1e3 * mapped, gb / mapped, sum_rate, gb / mapped / sum_rate, dram_rate,
               gb / mapped / dram_rate, 1e3 * load, 100.0 * fresh / load);
    }
    omp_set_num_threads(saved);
    if (sink == 42) printf(" ");
    free(dram);
    mdl_close(m);
    return 0;
}
