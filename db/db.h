/*
 * db/ — bitplan's SQLite database: schema (db/schema.sql, compiled in), versioned
 * migrations, and typed access functions. The only module that speaks SQL; it uses
 * nothing else of the project.
 *
 * Every function returns 0 on success or -1 with a message in db_errmsg(). Writes
 * that belong together happen in one transaction, so a killed process (even kill -9)
 * leaves the database as it was before or after, never between.
 *
 *     db_conn *d;
 *     if (db_open("run.db", DB_OPEN_CREATE, &d)) { fprintf(stderr, "%s\n", db_errmsg(d)); db_close(d); }
 */
#ifndef BITPLAN_DB_H
#define BITPLAN_DB_H

#include <stddef.h>
#include <stdint.h>

typedef struct db_conn db_conn;

enum { DB_OPEN_READ = 0, DB_OPEN_WRITE = 1, DB_OPEN_CREATE = 2 };

/* Opens (and with DB_OPEN_CREATE creates) a database, turns on WAL and foreign keys,
 * checks that it is a bitplan database and migrates it to the current version.
 * On failure *out may still be set (for db_errmsg) and must be db_close()d. */
int db_open(const char *path, int mode, db_conn **out);
void db_close(db_conn *d);
const char *db_errmsg(const db_conn *d);
int db_schema_version(db_conn *d);

int db_begin(db_conn *d);
int db_commit(db_conn *d);
void db_rollback(db_conn *d);

/* ==== Models, tensors, calibrations, options, measurements (measure/) ==== */

/* ==== Plans (allocate/) ==== */

/* ==== Evaluations and report queries (cli eval, reports/) ==== */

#endif
