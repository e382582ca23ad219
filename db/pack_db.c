/*
 * db/pack_db.c — what the packer reads: a plan, the option of each tensor, and the
 * calibration the plan's measurements came from (to recompute its Hessians); and
 * uniform plans (one option for every tensor), the baseline the exact plans are
 * compared with. It never changes a measurement or another plan.
 */
#include "db_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int load_header(db_conn *d, int64_t plan_id, db_pack_plan *p)
{
    sqlite3_stmt *st = db_prepare(d,
        "SELECT p.id, p.calib_id, p.kind, p.target, p.achieved_bpw, p.file_bpw, p.objective,"
        "       m.content_hash, c.sources_json, c.rows, c.ctx, c.damp"
        "  FROM plans p JOIN calibrations c ON c.id = p.calib_id JOIN models m ON m.id = c.model_id"
        " WHERE p.id = ?1 OR (?1 = 0 AND p.id = (SELECT max(id) FROM plans))");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, plan_id);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        sqlite3_finalize(st);
        if (rc != SQLITE_DONE) return db_fail_sql(d, "reading the plan");
        return plan_id ? db_fail(d, "%s: no plan with id %lld", d->path, (long long)plan_id)
                       : db_fail(d, "%s: the database holds no plan (run bitplan allocate first)", d->path);
    }
    p->plan_id = sqlite3_column_int64(st, 0);
    p->calib_id = sqlite3_column_int64(st, 1);
    db_col_text(st, 2, p->kind, sizeof p->kind);
    p->target = sqlite3_column_double(st, 3);
    p->achieved_bpw = sqlite3_column_double(st, 4);
    p->file_bpw = sqlite3_column_double(st, 5);
    p->objective = sqlite3_column_double(st, 6);
    db_col_text(st, 7, p->model_hash, sizeof p->model_hash);
    const unsigned char *src = sqlite3_column_text(st, 8);
    p->sources_json = strdup(src ? (const char *)src : "[]");
    p->rows = sqlite3_column_int(st, 9);
    p->ctx = sqlite3_column_int(st, 10);
    p->damp = sqlite3_column_double(st, 11);
    sqlite3_finalize(st);
    return p->sources_json ? 0 : db_fail(d, "out of memory");
}

static int load_choices(db_conn *d, db_pack_plan *p)
{
    sqlite3_stmt *st = db_prepare(d,
        "SELECT t.name, t.rows, t.cols, " DB_OPTION_COLUMNS("o.") ", pc.bits"
        "  FROM plan_choices pc JOIN tensors t ON t.id = pc.tensor_id JOIN options o ON o.id = pc.option_id"
        " WHERE pc.plan_id = ?1 ORDER BY t.id");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, p->plan_id);
    int cap = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (p->n_choices == cap) {
            cap = cap ? 2 * cap : 256;
            db_pack_choice *nc = realloc(p->choices, (size_t)cap * sizeof *nc);
            if (!nc) { sqlite3_finalize(st); return db_fail(d, "out of memory"); }
            p->choices = nc;
        }
        db_pack_choice *c = &p->choices[p->n_choices++];
        db_col_text(st, 0, c->name, sizeof c->name);
        c->rows = sqlite3_column_int64(st, 1);
        c->cols = sqlite3_column_int64(st, 2);
        db_option_read(st, 3, &c->option);
        c->bits = sqlite3_column_int64(st, 3 + DB_OPTION_NCOLS);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return db_fail_sql(d, "reading the plan's choices");
    if (!p->n_choices) return db_fail(d, "%s: plan %lld chooses no tensor", d->path, (long long)p->plan_id);
    return 0;
}

/* The calibration's sources, parsed by SQLite's JSON functions. */
static int load_sources(db_conn *d, db_pack_plan *p)
{
    sqlite3_stmt *st = db_prepare(d,
        "SELECT json_extract(value, '$.path'), json_extract(value, '$.sha256') FROM json_each(?1) ORDER BY key");
    if (!st) return -1;
    sqlite3_bind_text(st, 1, p->sources_json, -1, SQLITE_STATIC);
    int cap = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (p->n_sources == cap) {
            cap = cap ? 2 * cap : 4;
            db_pack_source *ns = realloc(p->sources, (size_t)cap * sizeof *ns);
            if (!ns) { sqlite3_finalize(st); return db_fail(d, "out of memory"); }
            p->sources = ns;
        }
        db_pack_source *s = &p->sources[p->n_sources++];
        db_col_text(st, 0, s->path, sizeof s->path);
        db_col_text(st, 1, s->sha256, sizeof s->sha256);
        if (!s->path[0] || strlen(s->sha256) != 64) {
            sqlite3_finalize(st);
            return db_fail(d, "%s: calibration %lld: source %d has no path or sha256", d->path, (long long)p->calib_id,
                           p->n_sources - 1);
        }
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return db_fail_sql(d, "reading the calibration's sources");
    if (!p->n_sources) return db_fail(d, "%s: calibration %lld lists no source file", d->path, (long long)p->calib_id);
    return 0;
}

int db_pack_plan_load(db_conn *d, int64_t plan_id, db_pack_plan *out)
{
    memset(out, 0, sizeof *out);
    if (load_header(d, plan_id, out) || load_sources(d, out) || load_choices(d, out)) {
        db_pack_plan_free(out);
        return -1;
    }
    return 0;
}

void db_pack_plan_free(db_pack_plan *p)
{
    free(p->sources_json), free(p->choices), free(p->sources);
    p->sources_json = NULL, p->choices = NULL, p->sources = NULL, p->n_choices = 0, p->n_sources = 0;
}

/* ==== Uniform plans ==== */

/* The id of the option named `name` in calibration c's option set. */
static int option_by_name(db_conn *d, int64_t calib_id, const char *name, int64_t *id)
{
    sqlite3_stmt *st = db_prepare(d,
        "SELECT o.id FROM options o JOIN calibration_options co ON co.option_id = o.id"
        " WHERE co.calib_id = ?1 AND o.name = ?2 ORDER BY o.id LIMIT 1");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, calib_id);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    *id = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    if (rc == SQLITE_ROW) return 0;
    if (rc != SQLITE_DONE) return db_fail_sql(d, "finding the option");
    return db_fail(d, "%s: calibration %lld has no option named \"%s\"", d->path, (long long)calib_id, name);
}

static int newest_measured_calib(db_conn *d, int64_t *calib_id)
{
    sqlite3_stmt *st = db_prepare(d, "SELECT max(calib_id) FROM measurements");
    if (!st) return -1;
    int rc = sqlite3_step(st);
    *calib_id = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW) return db_fail_sql(d, "finding the calibration");
    return *calib_id ? 0 : db_fail(d, "%s: the database holds no measurement", d->path);
}

/* The plan row with zero totals (uniform_totals fills them). */
static int insert_row(db_conn *d, const db_plan_row *r, int64_t *plan_id)
{
    sqlite3_stmt *st = db_prepare(d,
        "INSERT INTO plans (calib_id, kind, target, metric, achieved_bpw, file_bpw, total_bits, objective, gap,"
        " solve_seconds, sweep, command) VALUES (?1, ?2, 0, ?3, 0, 0, 0, 0, 0, 0, ?4, ?5)");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, r->calib_id);
    sqlite3_bind_text(st, 2, r->kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, r->metric, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, r->sweep, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, r->command, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return db_fail_sql(d, "writing the uniform plan");
    *plan_id = sqlite3_last_insert_rowid(d->sql);
    return 0;
}

/* Runs one statement whose only parameter ?1 is id. */
static int exec_with_id(db_conn *d, int64_t id, const char *sql)
{
    sqlite3_stmt *st = db_prepare(d, sql);
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : db_fail_sql(d, "updating the uniform plan");
}

/* Inserts the choices; *n_missing counts tensors without a measurement at their option. */
static int uniform_choices(db_conn *d, int64_t plan_id, int64_t calib_id, int64_t opt, int64_t head_opt, int64_t *n_missing)
{
    sqlite3_stmt *st = db_prepare(d,
        "INSERT INTO plan_choices (plan_id, tensor_id, option_id, bits, predicted)"
        " SELECT ?1, m.tensor_id, m.option_id, m.bits, m.rel_err FROM measurements m JOIN tensors t ON t.id = m.tensor_id"
        "  WHERE m.calib_id = ?2 AND m.option_id = CASE WHEN t.layer < 0 THEN ?4 ELSE ?3 END");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, plan_id), sqlite3_bind_int64(st, 2, calib_id);
    sqlite3_bind_int64(st, 3, opt), sqlite3_bind_int64(st, 4, head_opt);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return db_fail_sql(d, "writing the uniform plan");
    st = db_prepare(d,
        "SELECT count(*) FROM tensors t JOIN calibrations c ON c.model_id = t.model_id WHERE c.id = ?2"
        " AND NOT EXISTS (SELECT 1 FROM plan_choices pc WHERE pc.plan_id = ?1 AND pc.tensor_id = t.id)");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, plan_id), sqlite3_bind_int64(st, 2, calib_id);
    rc = sqlite3_step(st);
    *n_missing = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : db_fail_sql(d, "checking the uniform plan");
}

/* achieved_bpw over the blocks (the head apart, as allocate counts a bpw target),
 * file_bpw over the planned tensors, total bits and summed rel_err. */
static int uniform_totals(db_conn *d, int64_t plan_id)
{
    return exec_with_id(d, plan_id,
        "UPDATE plans SET"
        " achieved_bpw = (SELECT CAST(sum(pc.bits) AS REAL) / sum(t.rows * t.cols) FROM plan_choices pc"
        "                 JOIN tensors t ON t.id = pc.tensor_id WHERE pc.plan_id = plans.id AND t.layer >= 0),"
        " file_bpw = (SELECT CAST(sum(pc.bits) AS REAL) / sum(t.rows * t.cols) FROM plan_choices pc"
        "             JOIN tensors t ON t.id = pc.tensor_id WHERE pc.plan_id = plans.id),"
        " total_bits = (SELECT sum(bits) FROM plan_choices WHERE plan_id = plans.id),"
        " objective = (SELECT sum(predicted) FROM plan_choices WHERE plan_id = plans.id)"
        " WHERE id = ?1");
}

int db_plan_insert_uniform(db_conn *d, int64_t calib_id, const char *option_name, const char *head_option_name,
                           const char *command, int64_t *plan_id)
{
    int64_t opt, head_opt, missing = 0;
    if (!calib_id && newest_measured_calib(d, &calib_id)) return -1;
    if (option_by_name(d, calib_id, option_name, &opt)) return -1;
    if (head_option_name ? option_by_name(d, calib_id, head_option_name, &head_opt) : (head_opt = opt, 0)) return -1;
    db_plan_row row;
    memset(&row, 0, sizeof row);
    row.calib_id = calib_id;
    snprintf(row.kind, sizeof row.kind, "bpw");
    snprintf(row.metric, sizeof row.metric, "rel_err");
    row.sweep = "uniform", row.command = command ? command : "";
    if (db_begin(d)) return -1;
    if (insert_row(d, &row, plan_id) || uniform_choices(d, *plan_id, calib_id, opt, head_opt, &missing) ||
        (missing && db_fail(d, "%s: %lld tensors have no measurement at option \"%s\"", d->path, (long long)missing,
                            option_name)) ||
        uniform_totals(d, *plan_id) ||
        exec_with_id(d, *plan_id, "UPDATE plans SET target = achieved_bpw WHERE id = ?1") || db_commit(d)) {
        db_rollback(d);
        return -1;
    }
    return 0;
}
