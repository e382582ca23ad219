/*
 * db/db_int.h — what the files of db/ share: the connection struct and the small
 * helpers around sqlite3 that turn its errors into messages. Internal to db/.
 */
#ifndef BITPLAN_DB_INT_H
#define BITPLAN_DB_INT_H

#include <sqlite3.h>

#include "db.h"

struct db_conn {
    sqlite3 *sql;
    char path[1024];
    char err[1024];
    int claim_fd;           /* db_calib_claim's lock, -1 if none */
    int64_t claim_calib;
};

int db_fail(db_conn *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int db_fail_sql(db_conn *d, const char *what); /* "path: what: sqlite's message" */
int db_exec(db_conn *d, const char *sql);
sqlite3_stmt *db_prepare(db_conn *d, const char *sql); /* NULL with the error set */

/* A text column into dst (truncated to cap), or as a malloc'd string (NULL only when
 * out of memory); "" for NULL. */
void db_col_text(sqlite3_stmt *st, int col, char *dst, size_t cap);
char *db_col_dup(sqlite3_stmt *st, int col);

/* The columns db_option_read reads from col0 on, in its order (prefix them with the
 * table's alias where a join needs it). */
#define DB_OPTION_COLUMNS(a) a "id, " a "name, " a "bits_lo, " a "bits_hi, " a "hi_share, " a "group_size, " a "scale_fmt, " a "rot, " a "awq"
#define DB_OPTION_NCOLS 9 /* how many DB_OPTION_COLUMNS names */
void db_option_read(sqlite3_stmt *st, int col0, db_option *o);

/* The columns db_plan_row_read reads, in its order, for a SELECT of `plans`. */
#define DB_PLAN_COLUMNS                                                                                   \
    "id, calib_id, kind, target, metric, achieved_bpw, file_bpw, total_bits, objective, gap, solve_seconds," \
    " n_dropped, memory_json, sweep, command, created_at"
/* One row of a SELECT DB_PLAN_COLUMNS ...: 0, or -1 out of memory (p cleared). */
int db_plan_row_read(sqlite3_stmt *st, db_plan_row *p);

#endif
