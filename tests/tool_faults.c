/*
 * tests/tool_faults.c — fault injection for tests/test_faults.py: every write the
 * database sees and every allocation a loader makes is made to fail in turn, and
 * each failure must end cleanly.
 *
 *   tool_faults io measure|allocate BASE|- DB LOG ARGS...
 *       runs `bitplan ARGS` (in this process: cli/main.c is linked in with its main
 *       renamed) once without faults, then once per write operation N of that run
 *       (xWrite, xSync, xTruncate, a size-hint xFileControl) with the Nth failing
 *       (SQLITE_IOERR_*), each time on a fresh copy of BASE (or no database: -).
 *       After every faulted run: a non-zero status comes with exactly one line
 *       "bitplan CMD: ..." on stderr (captured in LOG); the database passes
 *       integrity_check and foreign_key_check; it holds only what the unfaulted
 *       run committed (measure: each row equal to that run's, each input group's rows
 *       all there or none; allocate: the plan whole, or the database as before); and a
 *       rerun without faults gives exactly the unfaulted run's database.
 *   tool_faults alloc gguf|st|packed|tokenizer PATH
 *       loads PATH (mdl_open + rt_model_open, pack_load, or mdl_open +
 *       mdl_tokenizer) once to count the allocations of bitplan's own code, then
 *       once per allocation N with the Nth malloc/calloc/realloc/strdup/... failing
 *       (the link wraps them: --wrap catches calls from libbitplan.a, not those of
 *       libc or SQLite). Each must fail with a one-line message that says memory, or
 *       succeed and give the same model (logits, and what its tokenizer makes of a
 *       text) as the unfaulted load.
 *   Add "persist" after io/alloc to fail every operation from the Nth on instead of
 *   the Nth alone.
 *
 * Under AddressSanitizer a leak check every LEAK_EVERY iterations names the range of
 * N that leaked. Prints a summary (and io: the distinct error lines); any failure
 * prints what and exits 1.
 * What it must never do: count a fault as handled without checking the outcome.
 */
#include "model/model.h"
#include "pack/pack.h"
#include "runtime/runtime.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#define leak_check() __lsan_do_recoverable_leak_check()
#else
#define leak_check() 0
#endif
/* A leak check takes tens of milliseconds: one every LEAK_EVERY iterations (and at
 * the end) names the range of N that leaked. */
#define LEAK_EVERY 64

int bitplan_main(int argc, char **argv); /* cli/main.c's main, renamed by the Makefile */

static int die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "tool_faults: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

/* The operations of one kind (writes or allocations) since the last arm() are
 * counted in seen; the fail_at-th fails (with persist every later one too). */
enum { FAULT_WRITE = 1, FAULT_ALLOC };
static struct {
    long long seen, fail_at;
    int kind, persist, fired;
} fc;

static void arm(int kind, long long fail_at) { fc.seen = 0, fc.fail_at = fail_at, fc.kind = kind, fc.fired = 0; }
static void disarm(void) { fc.kind = 0; }

static int should_fail(int kind)
{
    if (fc.kind != kind) return 0;
    fc.seen++;
    int hit = fc.fail_at > 0 && (fc.seen == fc.fail_at || (fc.persist && fc.seen > fc.fail_at));
    fc.fired |= hit;
    return hit;
}

/* ==== Allocations (the link wraps them: -Wl,--wrap=malloc,...) ==== */

void *__real_malloc(size_t n);
void *__real_calloc(size_t k, size_t n);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
void *__real_aligned_alloc(size_t align, size_t n);
int __real_posix_memalign(void **p, size_t align, size_t n);

void *__wrap_malloc(size_t n) { return should_fail(FAULT_ALLOC) ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t k, size_t n) { return should_fail(FAULT_ALLOC) ? NULL : __real_calloc(k, n); }
void *__wrap_realloc(void *p, size_t n) { return should_fail(FAULT_ALLOC) ? NULL : __real_realloc(p, n); }
char *__wrap_strdup(const char *s) { return should_fail(FAULT_ALLOC) ? NULL : __real_strdup(s); }
char *__wrap_strndup(const char *s, size_t n) { return should_fail(FAULT_ALLOC) ? NULL : __real_strndup(s, n); }
void *__wrap_aligned_alloc(size_t align, size_t n) { return should_fail(FAULT_ALLOC) ? NULL : __real_aligned_alloc(align, n); }
int __wrap_posix_memalign(void **p, size_t align, size_t n) { return should_fail(FAULT_ALLOC) ? ENOMEM : __real_posix_memalign(p, align, n); }

/* ==== A VFS that fails writes: the default one, wrapped ==== */

typedef struct {
    sqlite3_file base;
    sqlite3_file *real;   /* the wrapped VFS's file, right after this struct */
} fv_file;

static sqlite3_vfs *fv_real;
static sqlite3_vfs fv_vfs;

#define REAL(f) (((fv_file *)(f))->real)
#define FWD(f, method, ...) REAL(f)->pMethods->method(REAL(f), __VA_ARGS__)

static int fv_close(sqlite3_file *f) { return REAL(f)->pMethods->xClose(REAL(f)); }
static int fv_read(sqlite3_file *f, void *b, int n, sqlite3_int64 off) { return FWD(f, xRead, b, n, off); }
static int fv_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 off)
{
    return should_fail(FAULT_WRITE) ? SQLITE_IOERR_WRITE : FWD(f, xWrite, b, n, off);
}
static int fv_truncate(sqlite3_file *f, sqlite3_int64 size) { return should_fail(FAULT_WRITE) ? SQLITE_IOERR_TRUNCATE : FWD(f, xTruncate, size); }
static int fv_sync(sqlite3_file *f, int flags) { return should_fail(FAULT_WRITE) ? SQLITE_IOERR_FSYNC : FWD(f, xSync, flags); }
static int fv_size(sqlite3_file *f, sqlite3_int64 *size) { return FWD(f, xFileSize, size); }
static int fv_lock(sqlite3_file *f, int l) { return FWD(f, xLock, l); }
static int fv_unlock(sqlite3_file *f, int l) { return FWD(f, xUnlock, l); }
static int fv_reserved(sqlite3_file *f, int *out) { return FWD(f, xCheckReservedLock, out); }
/* A size hint makes the file grow (fallocate): it fails as a write does. */
static int fv_control(sqlite3_file *f, int op, void *arg)
{
    if (op == SQLITE_FCNTL_SIZE_HINT && should_fail(FAULT_WRITE)) return SQLITE_IOERR_WRITE;
    return FWD(f, xFileControl, op, arg);
}
static int fv_sector(sqlite3_file *f) { return REAL(f)->pMethods->xSectorSize(REAL(f)); }
static int fv_device(sqlite3_file *f) { return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f)); }
static int fv_shm_map(sqlite3_file *f, int page, int size, int extend, void volatile **out)
{
    return FWD(f, xShmMap, page, size, extend, out);
}
static int fv_shm_lock(sqlite3_file *f, int off, int n, int flags) { return FWD(f, xShmLock, off, n, flags); }
static void fv_shm_barrier(sqlite3_file *f) { REAL(f)->pMethods->xShmBarrier(REAL(f)); }
static int fv_shm_unmap(sqlite3_file *f, int del) { return FWD(f, xShmUnmap, del); }
static int fv_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **out) { return FWD(f, xFetch, off, n, out); }
static int fv_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p) { return FWD(f, xUnfetch, off, p); }

static const sqlite3_io_methods fv_io = {
    3, fv_close, fv_read, fv_write, fv_truncate, fv_sync, fv_size, fv_lock, fv_unlock, fv_reserved, fv_control,
    fv_sector, fv_device, fv_shm_map, fv_shm_lock, fv_shm_barrier, fv_shm_unmap, fv_fetch, fv_unfetch,
};

static int fv_open(sqlite3_vfs *v, const char *name, sqlite3_file *f, int flags, int *out_flags)
{
    (void)v;
    fv_file *p = (fv_file *)f;
    p->real = (sqlite3_file *)(p + 1);
    int rc = fv_real->xOpen(fv_real, name, p->real, flags, out_flags);
    if (p->real->pMethods && p->real->pMethods->iVersion < 3) die("the default VFS's files are version %d", p->real->pMethods->iVersion);
    p->base.pMethods = p->real->pMethods ? &fv_io : NULL;
    return rc;
}

static void fv_install(void)
{
    fv_real = sqlite3_vfs_find(NULL);
    if (!fv_real) die("no default VFS");
    fv_vfs = *fv_real;
    fv_vfs.zName = "bitplan-faults";
    fv_vfs.szOsFile = (int)sizeof(fv_file) + fv_real->szOsFile;
    fv_vfs.xOpen = fv_open;
    if (sqlite3_vfs_register(&fv_vfs, 1) != SQLITE_OK) die("cannot register the VFS");
}

/* ==== Text: a growing buffer and its lines ==== */

typedef struct {
    char *s;
    size_t n, cap;
} text;

static void text_add(text *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (t->n + (size_t)k + 1 > t->cap) {
        t->cap = 2 * (t->n + (size_t)k + 1);
        if (!(t->s = realloc(t->s, t->cap))) die("out of memory");
    }
    va_start(ap, fmt);
    vsnprintf(t->s + t->n, t->cap - t->n, fmt, ap);
    va_end(ap);
    t->n += (size_t)k;
}

static int has_line(const char *b, const char *l, size_t len)
{
    for (const char *m = b; *m;) {
        const char *f = strchr(m, '\n');
        size_t mlen = f ? (size_t)(f - m) + 1 : strlen(m);
        if (mlen == len && !memcmp(l, m, len)) return 1;
        m += mlen;
    }
    return 0;
}

/* The lines of a that b lacks, each after `mark`. */
static char *lines_missing(const char *a, const char *b, const char *mark)
{
    text t = {0};
    text_add(&t, "%s", "");
    for (const char *l = a; *l;) {
        const char *e = strchr(l, '\n');
        size_t len = e ? (size_t)(e - l) + 1 : strlen(l);
        if (!has_line(b, l, len)) text_add(&t, "%s%.*s", mark, (int)len, l);
        l += len;
    }
    return t.s;
}

/* 1 if every line of a is a line of b. */
static int lines_within(const char *a, const char *b)
{
    char *m = lines_missing(a, b, "");
    int ok = !*m;
    free(m);
    return ok;
}

/* What differs between got and want, as a diff's - and + lines (leaks: the tool dies). */
static const char *diff(const char *got, const char *want)
{
    text t = {0};
    text_add(&t, "%s%s", lines_missing(want, got, "- "), lines_missing(got, want, "+ "));
    return t.s;
}

static char *read_all(const char *path)
{
    text t = {0};
    text_add(&t, "%s", "");
    FILE *f = fopen(path, "rb");
    if (!f) return t.s;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf - 1, f)) > 0) buf[n] = 0, text_add(&t, "%s", buf);
    fclose(f);
    return t.s;
}

/* ==== The database's content, as the tests compare it ==== */

/* Every column but ids, timings, timestamps and command lines, rows joined to
 * their natural keys; REAL values as exact hex. The labels of measure's claims
 * (meta 'claim.N': who runs it) are left out: a run whose last write failed may
 * leave one behind, harmless since the lock, not the label, decides. */
static const char *const content_queries[] = {
    "SELECT 'meta', key, value FROM meta WHERE key NOT LIKE 'claim.%' ORDER BY key",
    "SELECT 'status', key, status FROM calibrations ORDER BY key",
    "SELECT 'model', content_hash, path, arch, config_json, n_params FROM models ORDER BY content_hash",
    "SELECT 'tensor', m.content_hash, t.name, t.layer, t.class, t.input_group, t.rows, t.cols FROM tensors t "
    "JOIN models m ON m.id = t.model_id ORDER BY 2, 3",
    "SELECT 'calib', m.content_hash, c.key, c.sources_json, c.rows, c.ctx, c.tokenizer, c.damp "
    "FROM calibrations c JOIN models m ON m.id = c.model_id ORDER BY 2, 3",
    "SELECT 'option', name, bits_lo, bits_hi, hi_share, group_size, scale_fmt FROM options ORDER BY 2, 3, 4, 5, 6, 7",
    "SELECT 'calib_option', c.key, o.name FROM calibration_options x JOIN calibrations c ON c.id = x.calib_id "
    "JOIN options o ON o.id = x.option_id ORDER BY 2, 3",
    "SELECT 'measurement', c.key, t.name, o.name, m.bits, m.rel_err, m.rtn_err FROM measurements m "
    "JOIN calibrations c ON c.id = m.calib_id JOIN tensors t ON t.id = m.tensor_id "
    "JOIN options o ON o.id = m.option_id ORDER BY 2, 3, 4",
    "SELECT 'probe', c.key, t.name, o.name, p.kld, p.rel_err FROM kl_probes p JOIN calibrations c ON c.id = p.calib_id "
    "JOIN tensors t ON t.id = p.tensor_id JOIN options o ON o.id = p.option_id ORDER BY 2, 3",
    "SELECT 'plan', (SELECT count(*) FROM plans q WHERE q.id < p.id), c.key, kind, target, metric, achieved_bpw, "
    "file_bpw, total_bits, objective, gap, n_dropped, memory_json, sweep FROM plans p "
    "JOIN calibrations c ON c.id = p.calib_id ORDER BY p.id",
    "SELECT 'choice', (SELECT count(*) FROM plans q WHERE q.id < x.plan_id), t.name, o.name, x.bits, x.predicted "
    "FROM plan_choices x JOIN tensors t ON t.id = x.tensor_id JOIN options o ON o.id = x.option_id ORDER BY 2, 3",
    "SELECT 'evals', count(*) FROM evals",
};

/* Measurements per layer and input group (q/k/v, o, gate/up, down, the head): a
 * group's rows are written in one transaction. */
static const char *const group_query =
    "SELECT 'group', c.key, t.layer, t.input_group, count(*) FROM measurements m JOIN calibrations c ON c.id = m.calib_id "
    "JOIN tensors t ON t.id = m.tensor_id GROUP BY 2, 3, 4 ORDER BY 2, 3, 4";

static void add_rows(sqlite3 *db, const char *sql, text *out)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) die("%s: %s", sql, sqlite3_errmsg(db));
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        for (int i = 0; i < sqlite3_column_count(st); i++) {
            int type = sqlite3_column_type(st, i);
            if (type == SQLITE_INTEGER) text_add(out, "%s%lld", i ? "|" : "", (long long)sqlite3_column_int64(st, i));
            else if (type == SQLITE_FLOAT) text_add(out, "%s%a", i ? "|" : "", sqlite3_column_double(st, i));
            else if (type == SQLITE_NULL) text_add(out, "%sNULL", i ? "|" : "");
            else text_add(out, "%s'%s'", i ? "|" : "", (const char *)sqlite3_column_text(st, i));
        }
        text_add(out, "\n");
    }
    if (rc != SQLITE_DONE) die("%s: %s", sql, sqlite3_errmsg(db));
    sqlite3_finalize(st);
}

/* Checks the file's integrity and returns its content (no file: ""). */
static char *db_content(const char *path, const char *const *queries, int n_queries)
{
    text t = {0};
    text_add(&t, "%s", "");
    if (access(path, F_OK)) return t.s;
    sqlite3 *db;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) die("%s: %s", path, sqlite3_errmsg(db));
    text check = {0};
    add_rows(db, "PRAGMA integrity_check", &check);
    if (strcmp(check.s, "'ok'\n")) die("%s: integrity_check: %s", path, check.s);
    check.n = 0, check.s[0] = 0;
    add_rows(db, "PRAGMA foreign_key_check", &check);
    if (check.n) die("%s: foreign_key_check: %s", path, check.s);
    free(check.s);
    int tables = 0;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_master WHERE name = 'plans'", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        tables = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    for (int q = 0; tables && q < n_queries; q++) add_rows(db, queries[q], &t);
    sqlite3_close(db);
    return t.s;
}

#define N_CONTENT_QUERIES (int)(sizeof content_queries / sizeof *content_queries)
static char *content(const char *path) { return db_content(path, content_queries, N_CONTENT_QUERIES); }

/* ==== Database faults ==== */

typedef struct {
    const char *cmd, *base, *db, *log;
    int argc;
    char **argv;             /* the command line, argv[0] "bitplan" */
} io_job;

static void copy_file(const char *from, const char *to)
{
    char *data = NULL;
    FILE *f = fopen(from, "rb");
    if (!f) die("%s: %s", from, strerror(errno));
    struct stat s;
    if (fstat(fileno(f), &s) || !(data = malloc((size_t)s.st_size + 1)) || fread(data, 1, (size_t)s.st_size, f) != (size_t)s.st_size)
        die("%s: cannot read", from);
    fclose(f);
    if (!(f = fopen(to, "wb")) || fwrite(data, 1, (size_t)s.st_size, f) != (size_t)s.st_size || fclose(f)) die("%s: cannot write", to);
    free(data);
}

/* The database as the operation finds it: a copy of base, or none. */
static void reset_db(const io_job *j)
{
    const char *suffix[] = {"", "-wal", "-shm", "-journal"};
    char p[4200];
    for (int i = 0; i < 4; i++) snprintf(p, sizeof p, "%s%s", j->db, suffix[i]), unlink(p);
    if (strcmp(j->base, "-")) copy_file(j->base, j->db);
}

/* Runs bitplan with stdout discarded and stderr in the log; the exit status. */
static int run_bitplan(const io_job *j, double *seconds)
{
    fflush(stdout), fflush(stderr);
    int out = dup(1), err = dup(2);
    int null = open("/dev/null", O_WRONLY), log = open(j->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0 || err < 0 || null < 0 || log < 0) die("%s: %s", j->log, strerror(errno));
    dup2(null, 1), dup2(log, 2), close(null), close(log);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = bitplan_main(j->argc, j->argv);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    fflush(stdout), fflush(stderr);
    dup2(out, 1), dup2(err, 2), close(out), close(err);
    *seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    return rc;
}

/* A failure says so in one line "bitplan CMD: ...", which names the I/O error; a
 * success says nothing (notes aside). Adds the line to `seen` if new there. */
static void check_message(const io_job *j, long long n, int rc, text *seen)
{
    char *log = read_all(j->log), prefix[64], *error = NULL;
    snprintf(prefix, sizeof prefix, "bitplan %s: ", j->cmd);
    int lines = 0, ok = 1;
    for (char *l = strtok(log, "\n"); l; l = strtok(NULL, "\n")) {
        if (!strncmp(l, prefix, strlen(prefix)) && !strncmp(l + strlen(prefix), "note: ", 6)) continue;
        lines++, error = l;
        ok &= !strncmp(l, prefix, strlen(prefix)) && strstr(l, "I/O error") != NULL;
    }
    if (rc ? !(ok && lines == 1) : lines != 0)
        die("%s, fault at write %lld: status %d with this on stderr:\n%s", j->cmd, n, rc, read_all(j->log));
    text line = {0};
    if (error) text_add(&line, "    %s\n", error);
    if (error && !has_line(seen->s, line.s, line.n)) text_add(seen, "%s", line.s);
    free(line.s), free(log);
}

typedef struct {
    char *before;            /* the database before the operation */
    char *all;               /* after it, unfaulted */
    char *rows;              /* the same without the schema version and calibration status */
    char *groups;            /* measurements per input group */
} io_ref;

/* measure: rows as the unfaulted run wrote them. The schema version and the
 * calibration's status may lag (each migration step, and the setup, is a
 * transaction), but 'done' means complete; a group's rows are one transaction
 * unless a timed flush cut it (MEAS_FLUSH_SECONDS, 2 s). */
static void check_measured(const io_job *j, long long n, const char *got, const io_ref *ref, double secs)
{
    char *rows = db_content(j->db, content_queries + 2, N_CONTENT_QUERIES - 2);
    char *groups = db_content(j->db, &group_query, 1);
    if (!lines_within(rows, ref->rows))
        die("measure, fault at write %lld: rows that differ from the unfaulted run's:\n%s", n, lines_missing(rows, ref->rows, "+ "));
    if (strstr(got, "'done'") && strcmp(rows, ref->rows))
        die("measure, fault at write %lld: done but incomplete:\n%s", n, diff(rows, ref->rows));
    if (secs < 2.0 && !lines_within(groups, ref->groups)) die("measure, fault at write %lld: a group half written:\n%s", n, groups);
    free(rows), free(groups);
}

/* One faulted run and what must hold after it; 1 if it failed. */
static int faulted_run(const io_job *j, long long n, const io_ref *ref, text *messages)
{
    double secs;
    reset_db(j);
    arm(FAULT_WRITE, n);
    int rc = run_bitplan(j, &secs);
    disarm();
    check_message(j, n, rc, messages);
    char *got = content(j->db);   /* dies unless intact */
    if (!rc && strcmp(got, ref->all)) die("%s, fault at write %lld: succeeded with other content:\n%s", j->cmd, n, diff(got, ref->all));
    if (!strcmp(j->cmd, "measure")) check_measured(j, n, got, ref, secs);
    else if (rc && strcmp(got, ref->before))
        die("%s, fault at write %lld: failed, yet the database changed:\n%s", j->cmd, n, diff(got, ref->before));
    free(got);
    if (rc) {   /* what a user does next: run it again */
        if (run_bitplan(j, &secs)) die("%s, fault at write %lld: the rerun failed:\n%s", j->cmd, n, read_all(j->log));
        got = content(j->db);
        if (strcmp(got, ref->all)) die("%s, fault at write %lld: the rerun's content differs:\n%s", j->cmd, n, diff(got, ref->all));
        free(got);
    }
    return rc != 0;
}

static int io_sweep(io_job *j)
{
    double secs;
    io_ref ref;
    reset_db(j);
    ref.before = content(j->db);
    arm(FAULT_WRITE, 0);
    if (run_bitplan(j, &secs)) die("%s without faults failed:\n%s", j->cmd, read_all(j->log));
    long long total = fc.seen;
    disarm();
    ref.all = content(j->db), ref.rows = db_content(j->db, content_queries + 2, N_CONTENT_QUERIES - 2);
    ref.groups = db_content(j->db, &group_query, 1);
    text messages = {0};
    text_add(&messages, "%s", "");
    int failed = 0, absorbed = 0;
    for (long long n = 1; n <= total; n++) {
        int f = faulted_run(j, n, &ref, &messages);
        failed += f, absorbed += !f && fc.fired;
        if ((n % LEAK_EVERY == 0 || n == total) && leak_check())
            die("%s, a fault at write %lld to %lld: leaks (above)", j->cmd, n - (n - 1) % LEAK_EVERY, n);
    }
    printf("%s: %lld write operations, each failed in turn%s: %d runs failed cleanly, %d absorbed the fault; messages:\n%s",
           j->cmd, total, fc.persist ? " (and every one after it)" : "", failed, absorbed, messages.s);
    free(ref.before), free(ref.all), free(ref.rows), free(ref.groups), free(messages.s);
    return 0;
}

/* ==== Allocation faults in the loaders ==== */

static char *tokenizer_output(const tok_tokenizer *tok)
{
    text t = {0};
    text_add(&t, "%s", "tokens:");
    if (!tok) return text_add(&t, " no tokenizer"), t.s;
    const char *s = "The quick brown fox, 42 times! <|im_start|>";
    int32_t ids[64];
    int64_t n = tok_encode(tok, s, strlen(s), 1, 1, ids, 64);
    if (n < 0 || n > 64) die("tok_encode: %lld", (long long)n);
    for (int64_t i = 0; i < n; i++) text_add(&t, " %d", ids[i]);
    return t.s;
}

/* What a load gives, as comparable text: the logits of a few tokens and what its
 * tokenizer makes of a text. */
static char *model_output(const rt_model *m)
{
    text t = {0};
    int32_t tokens[4] = {1, 5, 9, 2};
    int vocab = m->cfg.vocab_size;
    float *logits = malloc(4 * (size_t)vocab * sizeof *logits);
    rt_state *s = rt_state_new(m, 8, 4);
    if (!logits || !s || rt_forward(m, s, tokens, 4, 0, logits)) die("forward failed");
    for (int i = 0; i < 4 * vocab; i++) text_add(&t, "%a\n", logits[i]);
    char *tok = tokenizer_output(m->tok);
    text_add(&t, "%s add_bos %d\n", tok, m->add_bos);
    rt_state_free(s), free(logits), free(tok);
    return t.s;
}

/* One load of kind `kind`; its output, or NULL with err. */
static char *load(const char *kind, const char *path, char *err, size_t err_len)
{
    char *out = NULL;
    rt_model *m = NULL;
    mdl_model *f = NULL;
    if (!strcmp(kind, "packed")) {
        if (pack_load(path, 4, 0, &m, err, err_len)) return disarm(), NULL;
    } else if (mdl_open(path, &f, err, err_len)) {
        return disarm(), NULL;
    } else if (!strcmp(kind, "tokenizer")) {
        tok_tokenizer *t = mdl_tokenizer(f, err, err_len);
        disarm();
        if (t) out = tokenizer_output(t);
        mdl_close(f);
        return out;
    } else if (rt_model_open(f, 1, 0, &m, err, err_len)) {
        mdl_close(f);
        return disarm(), NULL;
    }
    disarm();
    out = model_output(m);
    rt_model_free(m);
    return out;
}

static int alloc_sweep(const char *kind, const char *path)
{
    char err[MDL_ERR_LEN];
    arm(FAULT_ALLOC, 0);
    char *ref = load(kind, path, err, sizeof err);
    long long total = fc.seen;
    if (!ref) die("%s: %s", path, err);
    int failed = 0, absorbed = 0;
    for (long long n = 1; n <= total; n++) {
        err[0] = 0;
        arm(FAULT_ALLOC, n);
        char *got = load(kind, path, err, sizeof err);
        if (!got && (!err[0] || strchr(err, '\n'))) die("%s, allocation %lld failed: message '%s'", kind, n, err);
        if (!got && !strstr(err, "memory")) die("%s, allocation %lld failed: the message does not say why: '%s'", kind, n, err);
        if (got && strcmp(got, ref)) die("%s, allocation %lld failed: the load succeeded with another result", kind, n);
        failed += !got, absorbed += got && fc.fired;
        free(got);
        if ((n % LEAK_EVERY == 0 || n == total) && leak_check())
            die("%s, a failure of allocation %lld to %lld: leaks (above)", kind, n - (n - 1) % LEAK_EVERY, n);
    }
    printf("%s: %lld allocations, each failed in turn%s: %d loads failed cleanly, %d absorbed the failure\n", kind, total,
           fc.persist ? " (and every one after it)" : "", failed, absorbed);
    free(ref);
    return 0;
}

int main(int argc, char **argv)
{
    int a = 2;
    if (argc > 2 && !strcmp(argv[2], "persist")) fc.persist = 1, a++;
    if (argc >= a + 2 && !strcmp(argv[1], "alloc")) return alloc_sweep(argv[a], argv[a + 1]);
    if (argc >= a + 5 && !strcmp(argv[1], "io")) {
        fv_install();
        io_job j = {argv[a], argv[a + 1], argv[a + 2], argv[a + 3], argc - a - 2, calloc((size_t)argc, sizeof(char *))};
        if (!j.argv) die("out of memory");
        j.argv[0] = "bitplan", j.argv[1] = argv[a];
        memcpy(j.argv + 2, argv + a + 4, (size_t)(argc - a - 4) * sizeof *argv);
        int rc = io_sweep(&j);
        free(j.argv);
        return rc;
    }
    fprintf(stderr, "usage: tool_faults io [persist] measure|allocate BASE|- DB LOG ARGS...\n"
                    "       tool_faults alloc [persist] gguf|st|packed|tokenizer PATH\n");
    return 2;
}
