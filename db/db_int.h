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

#endif
