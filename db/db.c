/*
 * db/db.c — opening, migrating and transacting. The schema text is db/schema.sql,
 * compiled in (build/gen/schema_sql.h), so a database can be created anywhere.
 *
 * Migrations: meta.schema_version holds the version. Version 1 is schema.sql as a
 * whole; later versions append steps to `migrations` below, each run in one
 * transaction together with the version bump, so a killed migration leaves the
 * old version intact.
 */
#include "db_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "schema_sql.h" /* static const char db_schema_sql[] */

/* The columns of options from version 3 on, up to rot (the steps that rebuild the
 * table add what follows). */
#define OPTION_COLUMNS_SQL                                                                  \
    " id INTEGER PRIMARY KEY,"                                                              \
    " name TEXT NOT NULL,"                                                                  \
    " bits_lo INTEGER NOT NULL CHECK (bits_lo BETWEEN 2 AND 8),"                            \
    " bits_hi INTEGER NOT NULL CHECK (bits_hi BETWEEN bits_lo AND 8),"                      \
    " hi_share REAL NOT NULL CHECK (hi_share BETWEEN 0 AND 1),"                             \
    " group_size INTEGER NOT NULL CHECK (group_size > 0 AND group_size % 32 = 0),"          \
    " scale_fmt INTEGER NOT NULL,"                                                          \
    " rot INTEGER NOT NULL DEFAULT 0 CHECK (rot IN (0, 64, 128)),"

/* migrations[i] brings version i+1 to i+2.
 *   1 -> 2: plans may be of kind 'size' (a file-size budget). A CHECK constraint
 *           changes no stored row, so the table's SQL text is edited in place (as
 *           SQLite's documentation allows for CHECK constraints) and the schema
 *           cookie bumped (migrate() does that after every step) so that every
 *           connection reads the new text.
 *   2 -> 3: options gain `rot`, the rotation block (0: none), which is one of the
 *           fields an option is keyed by. A UNIQUE constraint cannot change in
 *           place, so the table is rebuilt the way SQLite's documentation says
 *           (foreign keys off around the step, new table, copy, drop, rename,
 *           foreign_key_check); every row keeps its id, with rot 0.
 *   3 -> 4: options gain `awq` (1: activation-aware input scales), also a key
 *           field: rebuilt the same way, every row keeping its id, with awq 0. */
static const struct {
    const char *sql;
    int reads_same;   /* 1: a database before the step reads the same, so a read-only
                         open may use it unmigrated */
    int rebuilds;     /* 1: the step rebuilds a table that others reference: foreign
                         keys are off around its transaction and checked after it */
} migrations[] = {
    {"PRAGMA writable_schema = ON;"
     "UPDATE sqlite_master SET sql = replace(sql, 'CHECK (kind IN (''bpw'',''vram''))',"
     " 'CHECK (kind IN (''bpw'',''vram'',''size''))') WHERE type = 'table' AND name = 'plans';"
     "PRAGMA writable_schema = OFF;",
     1, 0},
    {"CREATE TABLE options_v3 (" OPTION_COLUMNS_SQL
     " UNIQUE (bits_lo, bits_hi, hi_share, group_size, scale_fmt, rot));"
     "INSERT INTO options_v3(id, name, bits_lo, bits_hi, hi_share, group_size, scale_fmt)"
     " SELECT id, name, bits_lo, bits_hi, hi_share, group_size, scale_fmt FROM options;"
     "DROP TABLE options;"
     "ALTER TABLE options_v3 RENAME TO options;",
     0, 1},
    {"CREATE TABLE options_v4 (" OPTION_COLUMNS_SQL
     " awq INTEGER NOT NULL DEFAULT 0 CHECK (awq IN (0, 1) AND (awq = 0 OR rot = 0)),"
     " UNIQUE (bits_lo, bits_hi, hi_share, group_size, scale_fmt, rot, awq));"
     "INSERT INTO options_v4(id, name, bits_lo, bits_hi, hi_share, group_size, scale_fmt, rot)"
     " SELECT id, name, bits_lo, bits_hi, hi_share, group_size, scale_fmt, rot FROM options;"
     "DROP TABLE options;"
     "ALTER TABLE options_v4 RENAME TO options;",
     0, 1},
};
#define DB_VERSION 4

/* The schema cookie + 1: connections (this one too) reparse the schema. */
static int bump_schema_cookie(db_conn *d)
{
    sqlite3_stmt *st = db_prepare(d, "PRAGMA schema_version");
    if (!st) return -1;
    int v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
    sqlite3_finalize(st);
    if (v < 0) return db_fail_sql(d, "reading the schema version");
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA schema_version = %d", v + 1);
    return db_exec(d, sql);
}

int db_fail(db_conn *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->err, sizeof d->err, fmt, ap);
    va_end(ap);
    return -1;
}

int db_fail_sql(db_conn *d, const char *what)
{
    return db_fail(d, "%s: %s: %s", d->path, what, sqlite3_errmsg(d->sql));
}

const char *db_errmsg(const db_conn *d) { return d ? d->err : "out of memory"; }

int db_exec(db_conn *d, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(d->sql, sql, NULL, NULL, &msg) == SQLITE_OK) return 0;
    db_fail(d, "%s: %s", d->path, msg ? msg : sqlite3_errmsg(d->sql));
    sqlite3_free(msg);
    return -1;
}

int db_begin(db_conn *d) { return db_exec(d, "BEGIN IMMEDIATE"); }
int db_commit(db_conn *d) { return db_exec(d, "COMMIT"); }
void db_rollback(db_conn *d) { sqlite3_exec(d->sql, "ROLLBACK", NULL, NULL, NULL); }

sqlite3_stmt *db_prepare(db_conn *d, const char *sql)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(d->sql, sql, -1, &st, NULL) != SQLITE_OK) {
        db_fail_sql(d, "prepare");
        return NULL;
    }
    return st;
}

void db_col_text(sqlite3_stmt *st, int col, char *dst, size_t cap)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    snprintf(dst, cap, "%s", t ? (const char *)t : "");
}

char *db_col_dup(sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    return strdup(t ? (const char *)t : "");
}

/* An options row, the one reader of it (plan_db.c, pack_db.c, report_db.c). */
void db_option_read(sqlite3_stmt *st, int col0, db_option *o)
{
    memset(o, 0, sizeof *o);
    o->id = sqlite3_column_int64(st, col0);
    db_col_text(st, col0 + 1, o->opt.name, sizeof o->opt.name);
    o->opt.bits_lo = (uint8_t)sqlite3_column_int(st, col0 + 2);
    o->opt.bits_hi = (uint8_t)sqlite3_column_int(st, col0 + 3);
    o->opt.hi_share = (float)sqlite3_column_double(st, col0 + 4);
    o->opt.group = sqlite3_column_int(st, col0 + 5);
    o->opt.scale_fmt = (lay_scale_fmt)sqlite3_column_int(st, col0 + 6);
    o->opt.rot = (uint16_t)sqlite3_column_int(st, col0 + 7);
    o->opt.awq = (uint8_t)sqlite3_column_int(st, col0 + 8);
}

/* Reads meta.schema_version: 0 for an empty database, -1 for one that is not
 * bitplan's (tables but no meta). */
static int read_version(db_conn *d)
{
    sqlite3_stmt *st = db_prepare(d, "SELECT count(*) FROM sqlite_master WHERE type='table'");
    if (!st) return -2;
    int tables = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
    sqlite3_finalize(st);
    if (tables < 0) return db_fail_sql(d, "reading the schema"), -2;
    if (tables == 0) return 0;
    st = db_prepare(d, "SELECT value FROM meta WHERE key='schema_version'");
    if (!st) return db_fail(d, "%s: not a bitplan database (no meta table)", d->path), -1;
    int v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
    sqlite3_finalize(st);
    if (v <= 0) return db_fail(d, "%s: not a bitplan database (no schema_version)", d->path), -1;
    return v;
}

/* 1 for a file of no bytes or with no tables: nothing bitplan wrote. */
static int is_empty(db_conn *d)
{
    struct stat st;
    if (!stat(d->path, &st) && st.st_size == 0) return 1;
    sqlite3_stmt *st2 = db_prepare(d, "SELECT count(*) FROM sqlite_master");
    int empty = st2 && sqlite3_step(st2) == SQLITE_ROW && sqlite3_column_int(st2, 0) == 0;
    sqlite3_finalize(st2);
    return empty;
}

/* -1 (with a message) if a row references a row that is not there. */
static int foreign_keys_broken(db_conn *d)
{
    sqlite3_stmt *st = db_prepare(d, "PRAGMA foreign_key_check");
    if (!st) return -1;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) db_fail(d, "%s: migrating broke a reference from table %s", d->path, sqlite3_column_text(st, 0));
    else if (rc != SQLITE_DONE) db_fail_sql(d, "checking references");
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

static int migrate(db_conn *d, int writable)
{
    int v = read_version(d);
    if (v < 0) return -1;
    if (v > DB_VERSION) return db_fail(d, "%s: schema version %d is newer than this bitplan (%d)", d->path, v, DB_VERSION);
    if (v == DB_VERSION) return 0;
    if (!writable) {
        for (int k = v; k < DB_VERSION; k++)
            if (k == 0 || !migrations[k - 1].reads_same)
                return db_fail(d, "%s: schema version %d needs migrating; open it writable", d->path, v);
        return 0;
    }
    for (; v < DB_VERSION; v++) {
        const char *step = v == 0 ? db_schema_sql : migrations[v - 1].sql;
        char bump[128];
        snprintf(bump, sizeof bump, "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', '%d')", v + 1);
        int rebuilds = v > 0 && migrations[v - 1].rebuilds;
        if (rebuilds && db_exec(d, "PRAGMA foreign_keys=OFF")) return -1;
        int rc = db_begin(d);
        if (!rc && (db_exec(d, step) || (v > 0 && bump_schema_cookie(d)) || db_exec(d, bump) ||
                    (rebuilds && foreign_keys_broken(d))))
            db_rollback(d), rc = -1;
        if (!rc) rc = db_commit(d);
        if (rebuilds && db_exec(d, "PRAGMA foreign_keys=ON")) rc = -1;
        if (rc) return -1;
    }
    return 0;
}

/* The URI of path opened immutable: SQLite then takes no locks and needs no -shm,
 * which is what lets a read-only command read a database in a folder it cannot
 * write. Characters that mean something in a URI are escaped. */
static char *immutable_uri(const char *path)
{
    size_t n = strlen(path);
    char *u = malloc(3 * n + 32), *o = u;
    if (!u) return NULL;
    o += sprintf(o, "file:");
    for (const char *c = path; *c; c++)
        o += strchr("%?#", *c) ? sprintf(o, "%%%02X", (unsigned char)*c) : (*o = *c, 1);
    strcpy(o, "?immutable=1");
    return u;
}

/* 1 if the database has a write-ahead log with content in it. */
static int has_wal_content(const char *path)
{
    char wal[1100];
    struct stat st;
    snprintf(wal, sizeof wal, "%s-wal", path);
    return !stat(wal, &st) && st.st_size > 0;
}

/* A read-only open that failed because SQLite could not create the WAL's -shm
 * beside the file (a folder this user cannot write) is retried immutable: safe
 * when no write-ahead log holds changes, since no writer without that folder's
 * permission can exist. With a log, a clear message instead of SQLite's. */
static int reopen_immutable(db_conn *d)
{
    int code = sqlite3_extended_errcode(d->sql);
    if ((code & 0xff) != SQLITE_READONLY && (code & 0xff) != SQLITE_CANTOPEN) return -1;
    if (has_wal_content(d->path))
        return db_fail(d, "%s: cannot be read here: its write-ahead log (%s-wal) holds changes, and this user cannot "
                       "write its folder to read them; open it once where it can be written", d->path, d->path);
    char *uri = immutable_uri(d->path);
    sqlite3_close_v2(d->sql);
    d->sql = NULL;
    int rc = uri ? sqlite3_open_v2(uri, &d->sql, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL) : SQLITE_NOMEM;
    free(uri);
    if (rc != SQLITE_OK)
        return db_fail(d, "%s: cannot open database: %s", d->path, d->sql ? sqlite3_errmsg(d->sql) : "out of memory");
    sqlite3_extended_result_codes(d->sql, 1);
    return db_exec(d, "PRAGMA foreign_keys=ON");
}

int db_open(const char *path, int mode, db_conn **out)
{
    db_conn *d = calloc(1, sizeof *d);
    *out = d;
    if (!d) return -1;
    d->claim_fd = -1;
    snprintf(d->path, sizeof d->path, "%s", path);
    struct stat st;
    if (mode != DB_OPEN_CREATE && stat(path, &st)) return db_fail(d, "%s: %s", path, strerror(errno));
    int flags = mode == DB_OPEN_READ ? SQLITE_OPEN_READONLY
              : mode == DB_OPEN_WRITE ? SQLITE_OPEN_READWRITE
                                      : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    if (sqlite3_open_v2(path, &d->sql, flags, NULL) != SQLITE_OK)
        return db_fail(d, "%s: cannot open database: %s", path, d->sql ? sqlite3_errmsg(d->sql) : "out of memory");
    sqlite3_busy_timeout(d->sql, 10000);
    sqlite3_extended_result_codes(d->sql, 1);
    /* sqlite opens a file it may not write read-only without saying so: ask first */
    if (mode != DB_OPEN_READ && sqlite3_db_readonly(d->sql, "main") == 1)
        return db_fail(d, "%s: database is read-only (cannot write it)", path);
    /* Only measure creates a database: any other command given an empty file (or
     * one with no tables) must leave it as it was, before WAL mode writes a header. */
    if (mode != DB_OPEN_CREATE && is_empty(d))
        return db_fail(d, "%s: empty, not a bitplan database (bitplan measure makes one)", path);
    if (mode != DB_OPEN_READ && db_exec(d, "PRAGMA journal_mode=WAL")) return -1;
    if (db_exec(d, "PRAGMA foreign_keys=ON")) return -1;
    /* A corrupt or foreign file fails here, at the first read of the schema; so does
     * a read-only open in a folder this user cannot write (see reopen_immutable). */
    int bad = db_exec(d, "PRAGMA quick_check");
    if (bad && mode == DB_OPEN_READ && !reopen_immutable(d)) bad = db_exec(d, "PRAGMA quick_check");
    return bad ? -1 : migrate(d, mode != DB_OPEN_READ);
}

void db_close(db_conn *d)
{
    if (!d) return;
    db_calib_release(d);
    if (d->sql) sqlite3_close_v2(d->sql);
    free(d);
}

int db_schema_version(db_conn *d)
{
    int v = read_version(d);
    return v < 0 ? -1 : v;
}
