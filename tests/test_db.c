/*
 * tests/test_db.c — the database: creating, migrating and reopening; files that are
 * not bitplan databases; read-only files; transactions that roll back or die half
 * way (a killed writer) leave no partial rows; the measurement tables' typed access.
 *
 * Runs as root in some environments, where file modes do not stop writes: the
 * read-only case then drops to an unprivileged user in a child process.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "db/db.h"

/* ==== Fixtures ==== */

static char dir[256];

static int make_dir(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/test_db.XXXXXX");
    if (!mkdtemp(dir)) return -1;
    chmod(dir, 0755);
    return 0;
}

static int remove_dir(void **state)
{
    (void)state;
    char cmd[320];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static const char *path_in_dir(const char *name)
{
    static char p[320];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return p;
}

static db_conn *open_ok(const char *path, int mode)
{
    db_conn *d = NULL;
    int rc = db_open(path, mode, &d);
    if (rc) fprintf(stderr, "db_open: %s\n", db_errmsg(d));
    assert_int_equal(rc, 0);
    return d;
}

/* count(*) of a table read with plain sqlite3, independent of db/. */
static long count_rows(const char *path, const char *table)
{
    sqlite3 *s;
    char sql[128];
    long n = -1;
    if (sqlite3_open_v2(path, &s, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) { sqlite3_close(s); return -1; }
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", table);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(s);
    return n;
}

static const db_model_info model_a = {"aaaa", "/m/a.gguf", "llama", "{\"arch\":\"llama\"}", 1000};

static int64_t add_model(db_conn *d)
{
    int64_t id = 0;
    assert_int_equal(db_model_upsert(d, &model_a, &id), 0);
    return id;
}

static int64_t add_tensor(db_conn *d, int64_t model, const char *name)
{
    db_tensor_info t = {name, 0, "q", "attn", 64, 64};
    int64_t id = 0;
    assert_int_equal(db_tensor_upsert(d, model, &t, &id), 0);
    return id;
}

static int64_t add_calib(db_conn *d, int64_t model, const char *key, int *done)
{
    db_calib_info c = {key, "[]", 4, 64, "bpe:0000", 0.01};
    int64_t id = 0;
    assert_int_equal(db_calib_find_or_create(d, model, &c, &id, done), 0);
    return id;
}

static int64_t add_option(db_conn *d, int bits, int group)
{
    lay_option o = {"opt", (uint8_t)bits, (uint8_t)bits, 0.0f, group, LAY_SCALE_F16_Z8, 0, 0};
    int64_t id = 0;
    assert_int_equal(db_option_upsert(d, &o, &id), 0);
    return id;
}

/* A plain option (id 1) written by SQL into the file at p, whatever its version. */
static void add_option_to(const char *p, int bits, int group)
{
    sqlite3 *s;
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO options(id, name, bits_lo, bits_hi, hi_share, group_size, scale_fmt) "
             "VALUES (1, 'plain', %d, %d, 0, %d, 0)", bits, bits, group);
    assert_int_equal(sqlite3_open(p, &s), SQLITE_OK);
    assert_int_equal(sqlite3_exec(s, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(s);
}

/* ==== Opening ==== */

static void test_create_reopen(void **state)
{
    (void)state;
    const char *p = path_in_dir("create.db");
    db_conn *d = open_ok(p, DB_OPEN_CREATE);
    assert_int_equal(db_schema_version(d), 4);
    int64_t m = add_model(d);
    db_close(d);
    d = open_ok(p, DB_OPEN_WRITE);
    assert_int_equal(db_schema_version(d), 4);
    int64_t m2 = 0;
    assert_int_equal(db_model_upsert(d, &model_a, &m2), 0);
    assert_int_equal(m, m2);
    db_close(d);
    assert_int_equal(count_rows(p, "models"), 1);
    d = open_ok(p, DB_OPEN_READ);
    assert_int_equal(db_schema_version(d), 4);
    db_close(d);
}

static void test_missing_without_create(void **state)
{
    (void)state;
    db_conn *d = NULL;
    assert_int_not_equal(db_open(path_in_dir("absent.db"), DB_OPEN_WRITE, &d), 0);
    assert_non_null(strstr(db_errmsg(d), "absent.db"));
    db_close(d);
    assert_int_equal(access(path_in_dir("absent.db"), F_OK), -1);
}

/* An empty file is an empty database for the one open that may create (measure's):
 * db_open creates the schema in it (migration from version 0). Every other open
 * refuses it and leaves it empty (allocate must not write a schema into a file it
 * was wrongly pointed at). */
static void test_migrate_empty_file(void **state)
{
    (void)state;
    const char *p = path_in_dir("empty.db");
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fclose(f);
    struct stat st;
    for (int mode = DB_OPEN_READ; mode <= DB_OPEN_WRITE; mode++) {
        db_conn *d = NULL;
        assert_int_not_equal(db_open(p, mode, &d), 0);
        assert_non_null(strstr(db_errmsg(d), "empty, not a bitplan database"));
        db_close(d);
        assert_int_equal(stat(p, &st), 0);
        assert_int_equal(st.st_size, 0);
    }
    db_conn *d = open_ok(p, DB_OPEN_CREATE);
    assert_int_equal(db_schema_version(d), 4);
    db_close(d);
    assert_int_equal(count_rows(p, "measurements"), 0);
}

/* A version-1 database (plans of kind 'bpw' or 'vram' only, options without a
 * rotation or input scales) migrates to version 4 on a writable open, keeps its
 * rows, and then takes a 'size' plan, a rotated option and one with input scales;
 * read-only (pack, export-gguf, report) it is refused with a clear message, since
 * version 4's options have columns it lacks. */
static void test_migrate_v1_to_v4(void **state)
{
    (void)state;
    const char *p = path_in_dir("v1.db");
    db_conn *d = open_ok(p, DB_OPEN_CREATE);
    add_model(d);
    db_close(d);
    sqlite3 *s;
    assert_int_equal(sqlite3_open(p, &s), SQLITE_OK);
    const char *downgrade =
        "PRAGMA writable_schema = ON;"
        "UPDATE sqlite_master SET sql = replace(sql, 'CHECK (kind IN (''bpw'',''vram'',''size''))',"
        " 'CHECK (kind IN (''bpw'',''vram''))') WHERE name = 'plans';"
        "PRAGMA writable_schema = OFF; UPDATE meta SET value = '1' WHERE key = 'schema_version';"
        "PRAGMA foreign_keys = OFF;"
        "CREATE TABLE options_v1 (id INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " bits_lo INTEGER NOT NULL CHECK (bits_lo BETWEEN 2 AND 8),"
        " bits_hi INTEGER NOT NULL CHECK (bits_hi BETWEEN bits_lo AND 8),"
        " hi_share REAL NOT NULL CHECK (hi_share BETWEEN 0 AND 1),"
        " group_size INTEGER NOT NULL CHECK (group_size > 0 AND group_size % 32 = 0),"
        " scale_fmt INTEGER NOT NULL, UNIQUE (bits_lo, bits_hi, hi_share, group_size, scale_fmt));"
        "INSERT INTO options_v1 SELECT id, name, bits_lo, bits_hi, hi_share, group_size, scale_fmt FROM options;"
        "DROP TABLE options; ALTER TABLE options_v1 RENAME TO options;";
    assert_int_equal(sqlite3_exec(s, downgrade, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(s);
    assert_int_equal(sqlite3_open(p, &s), SQLITE_OK);
    const char *plan = "INSERT INTO plans (calib_id, kind, target, metric, achieved_bpw, file_bpw, total_bits, objective,"
                       " gap, solve_seconds, command) VALUES (1, 'size', 1e6, 'rel_err', 4, 4, 8, 0, 0, 0, 'x')";
    assert_int_not_equal(sqlite3_exec(s, "PRAGMA foreign_keys = OFF", NULL, NULL, NULL), -1);
    assert_int_equal(sqlite3_exec(s, plan, NULL, NULL, NULL), SQLITE_CONSTRAINT); /* the old CHECK */
    sqlite3_close(s);
    add_option_to(p, 4, 64);
    assert_int_not_equal(db_open(p, DB_OPEN_READ, &d), 0);
    assert_non_null(strstr(db_errmsg(d), "schema version 1 needs migrating; open it writable"));
    db_close(d);
    d = open_ok(p, DB_OPEN_WRITE);
    assert_int_equal(db_schema_version(d), 4);
    lay_option rotated = {"4b g64 h64", 4, 4, 0.0f, 64, LAY_SCALE_F16_Z8, 64, 0};
    lay_option scaled = {"4b g64 awq", 4, 4, 0.0f, 64, LAY_SCALE_F16_Z8, 0, 1};
    int64_t id = 0, id2 = 0;
    assert_int_equal(db_option_upsert(d, &rotated, &id), 0);
    assert_int_not_equal(id, 1); /* beside the plain one, which kept its id */
    assert_int_equal(db_option_upsert(d, &scaled, &id2), 0);
    assert_int_not_equal(id2, 1);
    assert_int_not_equal(id2, id);
    db_close(d);
    assert_int_equal(count_rows(p, "options"), 3);
    assert_int_equal(count_rows(p, "models"), 1);
    assert_int_equal(sqlite3_open(p, &s), SQLITE_OK);
    assert_int_equal(sqlite3_exec(s, "PRAGMA foreign_keys = OFF", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(s, plan, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(s, "PRAGMA integrity_check", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(s);
}

static void test_not_a_database(void **state)
{
    (void)state;
    const char *p = path_in_dir("text.db");
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    for (int i = 0; i < 200; i++) fputs("this is not a database, only some text\n", f);
    fclose(f);
    db_conn *d = NULL;
    assert_int_not_equal(db_open(p, DB_OPEN_CREATE, &d), 0);
    assert_non_null(strstr(db_errmsg(d), "text.db"));
    assert_non_null(strstr(db_errmsg(d), "not a database"));
    db_close(d);
}

static void test_foreign_database(void **state)
{
    (void)state;
    const char *p = path_in_dir("foreign.db");
    sqlite3 *s;
    assert_int_equal(sqlite3_open(p, &s), SQLITE_OK);
    assert_int_equal(sqlite3_exec(s, "CREATE TABLE songs(title TEXT)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(s);
    db_conn *d = NULL;
    assert_int_not_equal(db_open(p, DB_OPEN_CREATE, &d), 0);
    assert_non_null(strstr(db_errmsg(d), "not a bitplan database"));
    db_close(d);
}

/* A database cut short after its first page: the first read of a later page fails. */
static void test_truncated_database(void **state)
{
    (void)state;
    const char *p = path_in_dir("trunc.db");
    db_conn *d = open_ok(p, DB_OPEN_CREATE);
    int64_t m = add_model(d);
    for (int i = 0; i < 200; i++) {
        char name[32];
        snprintf(name, sizeof name, "blk.%d.attn_q.weight", i);
        add_tensor(d, m, name);
    }
    db_close(d);
    struct stat sb;
    assert_int_equal(stat(p, &sb), 0);
    assert_true(sb.st_size > 8192);
    assert_int_equal(truncate(p, 4096 + 100), 0);
    assert_int_not_equal(db_open(p, DB_OPEN_WRITE, &d), 0);
    assert_non_null(strstr(db_errmsg(d), "trunc.db"));
    db_close(d);
}

/* Opening for writing fails with a message; the data is still there. */
static int try_write_open(const char *p)
{
    db_conn *d = NULL;
    int rc = db_open(p, DB_OPEN_WRITE, &d);
    int named = strstr(db_errmsg(d), "read") != NULL && strstr(db_errmsg(d), "only") != NULL;
    if (rc) fprintf(stderr, "# read-only open: %s\n", db_errmsg(d));
    db_close(d);
    return rc != 0 && named ? 0 : 1;
}

static void test_read_only_file(void **state)
{
    (void)state;
    const char *p = path_in_dir("ro.db");
    db_conn *d = open_ok(p, DB_OPEN_CREATE);
    add_model(d);
    db_close(d);
    assert_int_equal(chmod(p, 0444), 0);
    int failed_cleanly;
    if (geteuid() == 0) { /* root writes read-only files: test as nobody */
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            if (setgid(65534) || setuid(65534)) _exit(2);
            _exit(try_write_open(p));
        }
        int st;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFEXITED(st));
        failed_cleanly = WEXITSTATUS(st) == 0;
    } else {
        failed_cleanly = try_write_open(p) == 0;
    }
    assert_true(failed_cleanly);
    assert_int_equal(count_rows(p, "models"), 1);
    d = open_ok(p, DB_OPEN_READ);
    db_close(d);
}

/* ==== Transactions ==== */

static void test_rollback_leaves_nothing(void **state)
{
    (void)state;
    const char *p = path_in_dir("rollback.db");
    db_conn *d = open_ok(p, DB_OPEN_CREATE);
    assert_int_equal(db_begin(d), 0);
    int64_t m = add_model(d);
    add_tensor(d, m, "blk.0.attn_q.weight");
    add_tensor(d, m, "blk.0.attn_k.weight");
    db_rollback(d);
    db_close(d);
    assert_int_equal(count_rows(p, "models"), 0);
    assert_int_equal(count_rows(p, "tensors"), 0);
}

/* A batch with one bad row (an option that does not exist) is refused whole. */
static void test_measurement_batch_atomic(void **state)
{
    (void)state;
    const char *p = path_in_dir("batch.db");
    db_conn *d = open_ok(p, DB_OPEN_CREATE);
    int done;
    int64_t m = add_model(d), t = add_tensor(d, m, "blk.0.attn_q.weight");
    int64_t c = add_calib(d, m, "k1", &done), o1 = add_option(d, 4, 64), o2 = add_option(d, 3, 64);
    db_measurement rows[3] = {{t, o1, 100, 0.01, 0.02, 0.1}, {t, o2, 80, 0.05, 0.09, 0.1}, {t, 9999, 60, 0.2, 0.3, 0.1}};
    assert_int_not_equal(db_measurements_insert(d, c, rows, 3), 0);
    assert_int_equal(count_rows(p, "measurements"), 0);
    assert_int_equal(db_measurements_insert(d, c, rows, 2), 0);
    assert_int_equal(count_rows(p, "measurements"), 2);
    db_close(d);
}

/* A writer killed (SIGKILL) inside a transaction leaves the committed state. */
static void test_killed_writer(void **state)
{
    (void)state;
    const char *p = path_in_dir("killed.db");
    db_conn *d = open_ok(p, DB_OPEN_CREATE);
    int64_t m = add_model(d);
    add_tensor(d, m, "blk.0.attn_q.weight");
    db_close(d);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        db_conn *c = NULL;
        if (db_open(p, DB_OPEN_WRITE, &c) || db_begin(c)) _exit(3);
        db_tensor_info t = {"blk.0.attn_k.weight", 0, "k", "attn", 32, 64};
        int64_t id;
        for (int i = 0; i < 50; i++) db_tensor_upsert(c, 1, &t, &id);
        kill(getpid(), SIGKILL);
        _exit(4);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    d = open_ok(p, DB_OPEN_WRITE);
    db_close(d);
    assert_int_equal(count_rows(p, "tensors"), 1);
}

/* ==== Typed access ==== */

static void test_upserts_are_idempotent(void **state)
{
    (void)state;
    db_conn *d = open_ok(path_in_dir("upsert.db"), DB_OPEN_CREATE);
    int64_t m = add_model(d);
    assert_int_equal(add_model(d), m);
    int64_t t = add_tensor(d, m, "blk.0.attn_q.weight");
    assert_int_equal(add_tensor(d, m, "blk.0.attn_q.weight"), t);
    assert_int_not_equal(add_tensor(d, m, "blk.0.attn_k.weight"), t);
    int64_t o = add_option(d, 4, 128);
    assert_int_equal(add_option(d, 4, 128), o);
    assert_int_not_equal(add_option(d, 4, 64), o);
    lay_option mix = {"3b/5b", 3, 5, 0.1f, 64, LAY_SCALE_F16, 0, 0};
    int64_t x1, x2;
    assert_int_equal(db_option_upsert(d, &mix, &x1), 0);
    assert_int_equal(db_option_upsert(d, &mix, &x2), 0);
    assert_int_equal(x1, x2);
    lay_option mix_rot = mix;
    mix_rot.rot = 64;
    assert_int_equal(db_option_upsert(d, &mix_rot, &x2), 0);
    assert_int_not_equal(x1, x2); /* a rotation is part of an option's key */
    lay_option mix_awq = mix;
    mix_awq.awq = 1;
    int64_t x3;
    assert_int_equal(db_option_upsert(d, &mix_awq, &x3), 0);
    assert_int_not_equal(x1, x3); /* so are input scales */
    assert_int_not_equal(x2, x3);
    mix_awq.rot = 64; /* not both: the table's CHECK, as lay_option_check */
    assert_int_not_equal(db_option_upsert(d, &mix_awq, &x3), 0);
    /* the same name with another shape is refused */
    db_tensor_info bad = {"blk.0.attn_q.weight", 0, "q", "attn", 32, 64};
    int64_t id;
    assert_int_not_equal(db_tensor_upsert(d, m, &bad, &id), 0);
    assert_non_null(strstr(db_errmsg(d), "blk.0.attn_q.weight"));
    db_close(d);
}

static void test_calibrations_kept_apart(void **state)
{
    (void)state;
    db_conn *d = open_ok(path_in_dir("calib.db"), DB_OPEN_CREATE);
    int done = -1;
    int64_t m = add_model(d), t = add_tensor(d, m, "blk.0.attn_q.weight"), o = add_option(d, 4, 64);
    int64_t c1 = add_calib(d, m, "key-one", &done);
    assert_int_equal(done, 0);
    int64_t c2 = add_calib(d, m, "key-two", &done);
    assert_int_not_equal(c1, c2);
    assert_int_equal(db_calib_add_option(d, c1, o), 0);
    assert_int_equal(db_calib_add_option(d, c1, o), 0);
    db_measurement r = {t, o, 64 * 64 * 4, 0.01, 0.02, 0.5};
    assert_int_equal(db_measurements_insert(d, c1, &r, 1), 0);
    int64_t *pairs = NULL, n = -1;
    assert_int_equal(db_measured_pairs(d, c1, &pairs, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(pairs[0], t);
    assert_int_equal(pairs[1], o);
    free(pairs);
    assert_int_equal(db_measured_pairs(d, c2, &pairs, &n), 0);
    assert_int_equal(n, 0);
    free(pairs);
    db_kl_probe kp = {t, o, 0.003, 0.01, 1.5};
    assert_int_equal(db_kl_probe_insert(d, c1, &kp), 0);
    int64_t *ids = NULL;
    assert_int_equal(db_kl_probed_tensors(d, c1, &ids, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], t);
    free(ids);
    int64_t nm, np, no;
    assert_int_equal(db_calib_counts(d, c1, &nm, &np, &no), 0);
    assert_int_equal(nm, 1), assert_int_equal(np, 1), assert_int_equal(no, 1);
    assert_int_equal(db_calib_counts(d, c2, &nm, &np, &no), 0);
    assert_int_equal(nm + np + no, 0);
    assert_int_equal(db_calib_mark_done(d, c1), 0);
    assert_int_equal(add_calib(d, m, "key-one", &done), c1);
    assert_int_equal(done, 1);
    add_calib(d, m, "key-two", &done);
    assert_int_equal(done, 0);
    db_close(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_reopen),
        cmocka_unit_test(test_missing_without_create),
        cmocka_unit_test(test_migrate_empty_file),
        cmocka_unit_test(test_migrate_v1_to_v4),
        cmocka_unit_test(test_not_a_database),
        cmocka_unit_test(test_foreign_database),
        cmocka_unit_test(test_truncated_database),
        cmocka_unit_test(test_read_only_file),
        cmocka_unit_test(test_rollback_leaves_nothing),
        cmocka_unit_test(test_measurement_batch_atomic),
        cmocka_unit_test(test_killed_writer),
        cmocka_unit_test(test_upserts_are_idempotent),
        cmocka_unit_test(test_calibrations_kept_apart),
    };
    return cmocka_run_group_tests(tests, make_dir, remove_dir);
}
