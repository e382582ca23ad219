/*
 * db/plan_db.c — what the allocator reads and writes: a calibration's tensors,
 * measurements and KL probes (read in one snapshot), and plans with the option of
 * every tensor (written in one transaction: a plan row never exists without all its
 * choices). It stores what it is given and decides nothing about allocation.
 */
#include "db_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ==== Helpers ==== */

/* One int64 from a query with one int64 parameter: 0 with *v, 1 if no row, -1. */
static int query_int64(db_conn *d, const char *sql, int64_t arg, int64_t *v, const char *what)
{
    sqlite3_stmt *st = db_prepare(d, sql);
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, arg);
    int rc = sqlite3_step(st), out = 1;
    if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) *v = sqlite3_column_int64(st, 0), out = 0;
    else if (rc != SQLITE_ROW && rc != SQLITE_DONE) out = db_fail_sql(d, what);
    sqlite3_finalize(st);
    return out;
}

/* Grows *buf (of *cap elements of size sz) to hold n + 1. */
static int grow(void **buf, int64_t *cap, int64_t n, size_t sz)
{
    if (n < *cap) return 0;
    int64_t c = *cap ? 2 * *cap : 64;
    void *nb = realloc(*buf, (size_t)c * sz);
    if (!nb) return -1;
    *buf = nb, *cap = c;
    return 0;
}

/* ==== Choosing a calibration ==== */

int db_calib_choose(db_conn *d, int64_t want, int64_t *calib_id)
{
    int64_t v, n = 0;
    if (want > 0) {
        int rc = query_int64(d, "SELECT id FROM calibrations WHERE id = ?1", want, &v, "finding the calibration");
        if (rc) return rc < 0 ? -1 : db_fail(d, "%s: no calibration with id %lld", d->path, (long long)want);
        *calib_id = v;
        return 0;
    }
    int rc = query_int64(d, "SELECT max(id) FROM calibrations WHERE status = 'done' AND ?1 = ?1", 0, &v, "finding the calibration");
    if (rc < 0) return -1;
    if (rc == 0) { *calib_id = v; return 0; }
    if (query_int64(d, "SELECT count(*) FROM calibrations WHERE ?1 = ?1", 0, &n, "counting calibrations") < 0) return -1;
    if (n == 0) return db_fail(d, "%s: no calibration (nothing measured yet: run bitplan measure)", d->path);
    if (n > 1) return db_fail(d, "%s: %lld calibrations and none finished: pick one with --calib ID", d->path, (long long)n);
    if (query_int64(d, "SELECT max(id) FROM calibrations WHERE ?1 = ?1", 0, &v, "finding the calibration")) return -1;
    *calib_id = v;
    return 0;
}

/* ==== Reading a calibration ==== */

static int load_header(db_conn *d, int64_t calib_id, db_alloc_input *in)
{
    sqlite3_stmt *st = db_prepare(d,
        "SELECT c.model_id, c.status, m.config_json, m.n_params FROM calibrations c JOIN models m ON m.id = c.model_id"
        " WHERE c.id = ?1");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, calib_id);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        sqlite3_finalize(st);
        return rc == SQLITE_DONE ? db_fail(d, "%s: no calibration with id %lld", d->path, (long long)calib_id)
                                 : db_fail_sql(d, "reading the calibration");
    }
    in->calib_id = calib_id;
    in->model_id = sqlite3_column_int64(st, 0);
    db_col_text(st, 1, in->status, sizeof in->status);
    const unsigned char *cj = sqlite3_column_text(st, 2);
    in->config_json = strdup(cj ? (const char *)cj : "");
    in->n_params = sqlite3_column_int64(st, 3);
    sqlite3_finalize(st);
    return in->config_json ? 0 : db_fail(d, "out of memory");
}

static int load_tensors(db_conn *d, db_alloc_input *in)
{
    sqlite3_stmt *st = db_prepare(d,
        "SELECT id, name, layer, class, input_group, rows, cols FROM tensors WHERE model_id = ?1"
        " ORDER BY layer < 0, layer, id");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, in->model_id);
    int64_t cap = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (grow((void **)&in->tensors, &cap, in->n_tensors, sizeof *in->tensors)) { rc = SQLITE_NOMEM; break; }
        db_alloc_tensor *t = &in->tensors[in->n_tensors++];
        t->id = sqlite3_column_int64(st, 0);
        db_col_text(st, 1, t->name, sizeof t->name);
        t->layer = sqlite3_column_int(st, 2);
        db_col_text(st, 3, t->cls, sizeof t->cls);
        db_col_text(st, 4, t->input_group, sizeof t->input_group);
        t->rows = sqlite3_column_int64(st, 5), t->cols = sqlite3_column_int64(st, 6);
    }
    sqlite3_finalize(st);
    if (rc == SQLITE_NOMEM) return db_fail(d, "out of memory reading tensors");
    return rc == SQLITE_DONE ? 0 : db_fail_sql(d, "reading tensors");
}

/* Index of tensor id in in->tensors. Measurements come in the tensors' order, so the
 * previous index or the next one almost always match; else a scan (tensors are few). */
static int tensor_index(const db_alloc_input *in, int64_t id, int hint)
{
    for (int h = hint; h >= 0 && h <= hint + 1 && h < in->n_tensors; h++)
        if (in->tensors[h].id == id) return h;
    for (int i = 0; i < in->n_tensors; i++)
        if (in->tensors[i].id == id) return i;
    return -1;
}

static int load_meas(db_conn *d, db_alloc_input *in)
{
    sqlite3_stmt *st = db_prepare(d,
        "SELECT m.tensor_id, m.option_id, m.bits, m.rel_err FROM measurements m JOIN tensors t ON t.id = m.tensor_id"
        " WHERE m.calib_id = ?1 ORDER BY t.layer < 0, t.layer, t.id, m.bits, m.option_id");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, in->calib_id);
    int64_t cap = 0;
    int rc, hint = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (grow((void **)&in->meas, &cap, in->n_meas, sizeof *in->meas)) { rc = SQLITE_NOMEM; break; }
        db_alloc_meas *m = &in->meas[in->n_meas++];
        m->tensor = hint = tensor_index(in, sqlite3_column_int64(st, 0), hint);
        m->option_id = sqlite3_column_int64(st, 1);
        m->bits = sqlite3_column_int64(st, 2);
        m->rel_err = sqlite3_column_double(st, 3);
        if (hint < 0) hint = 0, in->n_meas--; /* a tensor of another model: cannot be, skip */
    }
    sqlite3_finalize(st);
    if (rc == SQLITE_NOMEM) return db_fail(d, "out of memory reading measurements");
    return rc == SQLITE_DONE ? 0 : db_fail_sql(d, "reading measurements");
}

static int load_probes(db_conn *d, db_alloc_input *in)
{
    sqlite3_stmt *st = db_prepare(d, "SELECT tensor_id, option_id, kld, rel_err FROM kl_probes WHERE calib_id = ?1 ORDER BY tensor_id");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, in->calib_id);
    int64_t cap = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int t = tensor_index(in, sqlite3_column_int64(st, 0), -1);
        if (t < 0) continue;
        if (grow((void **)&in->probes, &cap, in->n_probes, sizeof *in->probes)) { rc = SQLITE_NOMEM; break; }
        db_alloc_probe *p = &in->probes[in->n_probes++];
        p->tensor = t;
        p->option_id = sqlite3_column_int64(st, 1);
        p->kld = sqlite3_column_double(st, 2);
        p->rel_err = sqlite3_column_double(st, 3);
    }
    sqlite3_finalize(st);
    if (rc == SQLITE_NOMEM) return db_fail(d, "out of memory reading KL probes");
    return rc == SQLITE_DONE ? 0 : db_fail_sql(d, "reading KL probes");
}

static int load_options(db_conn *d, db_alloc_input *in)
{
    sqlite3_stmt *st = db_prepare(d,
        "SELECT " DB_OPTION_COLUMNS("") " FROM options"
        " WHERE id IN (SELECT DISTINCT option_id FROM measurements WHERE calib_id = ?1) ORDER BY id");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, in->calib_id);
    int64_t cap = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (grow((void **)&in->options, &cap, in->n_options, sizeof *in->options)) { rc = SQLITE_NOMEM; break; }
        db_option_read(st, 0, &in->options[in->n_options++]);
    }
    sqlite3_finalize(st);
    if (rc == SQLITE_NOMEM) return db_fail(d, "out of memory reading options");
    return rc == SQLITE_DONE ? 0 : db_fail_sql(d, "reading options");
}

int db_alloc_load(db_conn *d, int64_t calib_id, db_alloc_input *in)
{
    memset(in, 0, sizeof *in);
    if (db_exec(d, "BEGIN")) return -1; /* one snapshot while a measurement may be writing */
    int rc = load_header(d, calib_id, in) || load_tensors(d, in) || load_meas(d, in) || load_probes(d, in) ||
             load_options(d, in) ? -1 : 0;
    db_rollback(d);
    if (rc) {
        char keep[sizeof d->err];
        memcpy(keep, d->err, sizeof keep);
        db_alloc_input_free(in);
        memcpy(d->err, keep, sizeof keep);
    }
    return rc;
}

void db_alloc_input_free(db_alloc_input *in)
{
    free(in->config_json), free(in->tensors), free(in->meas), free(in->probes), free(in->options);
    memset(in, 0, sizeof *in);
}

/* ==== Writing and listing plans ==== */

static void bind_text_or_null(sqlite3_stmt *st, int i, const char *s)
{
    if (s && *s) sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else sqlite3_bind_null(st, i);
}

static int insert_plan_row(db_conn *d, const db_plan_row *p, int64_t *plan_id)
{
    sqlite3_stmt *st = db_prepare(d,
        "INSERT INTO plans (calib_id, kind, target, metric, achieved_bpw, file_bpw, total_bits, objective, gap,"
        " solve_seconds, n_dropped, memory_json, sweep, command) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14)");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, p->calib_id);
    sqlite3_bind_text(st, 2, p->kind, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(st, 3, p->target);
    sqlite3_bind_text(st, 4, p->metric, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(st, 5, p->achieved_bpw);
    sqlite3_bind_double(st, 6, p->file_bpw);
    sqlite3_bind_int64(st, 7, p->total_bits);
    sqlite3_bind_double(st, 8, p->objective);
    sqlite3_bind_double(st, 9, p->gap);
    sqlite3_bind_double(st, 10, p->solve_seconds);
    sqlite3_bind_int64(st, 11, p->n_dropped);
    bind_text_or_null(st, 12, p->memory_json);
    bind_text_or_null(st, 13, p->sweep);
    sqlite3_bind_text(st, 14, p->command, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return db_fail_sql(d, "storing the plan");
    *plan_id = sqlite3_last_insert_rowid(d->sql);
    return 0;
}

static int insert_choices(db_conn *d, int64_t plan_id, const db_plan_choice *c, int n)
{
    sqlite3_stmt *st = db_prepare(d,
        "INSERT INTO plan_choices (plan_id, tensor_id, option_id, bits, predicted) VALUES (?1, ?2, ?3, ?4, ?5)");
    if (!st) return -1;
    int rc = SQLITE_DONE;
    for (int i = 0; i < n && rc == SQLITE_DONE; i++) {
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, plan_id);
        sqlite3_bind_int64(st, 2, c[i].tensor_id);
        sqlite3_bind_int64(st, 3, c[i].option_id);
        sqlite3_bind_int64(st, 4, c[i].bits);
        sqlite3_bind_double(st, 5, c[i].predicted);
        rc = sqlite3_step(st);
    }
    if (rc != SQLITE_DONE) db_fail_sql(d, "storing the plan's choices");
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

int db_plan_insert(db_conn *d, const db_plan_row *p, const db_plan_choice *c, int n, int64_t *plan_id)
{
    if (db_begin(d)) return -1;
    if (insert_plan_row(d, p, plan_id) || insert_choices(d, *plan_id, c, n)) {
        db_rollback(d);
        return -1;
    }
    return db_commit(d);
}

int db_plan_row_read(sqlite3_stmt *st, db_plan_row *p)
{
    memset(p, 0, sizeof *p);
    p->id = sqlite3_column_int64(st, 0);
    p->calib_id = sqlite3_column_int64(st, 1);
    db_col_text(st, 2, p->kind, sizeof p->kind);
    p->target = sqlite3_column_double(st, 3);
    db_col_text(st, 4, p->metric, sizeof p->metric);
    p->achieved_bpw = sqlite3_column_double(st, 5);
    p->file_bpw = sqlite3_column_double(st, 6);
    p->total_bits = sqlite3_column_int64(st, 7);
    p->objective = sqlite3_column_double(st, 8);
    p->gap = sqlite3_column_double(st, 9);
    p->solve_seconds = sqlite3_column_double(st, 10);
    p->n_dropped = sqlite3_column_int64(st, 11);
    p->memory_json = db_col_dup(st, 12);
    p->sweep = db_col_dup(st, 13);
    p->command = db_col_dup(st, 14);
    db_col_text(st, 15, p->created_at, sizeof p->created_at);
    if (p->memory_json && p->sweep && p->command) return 0;
    db_plan_row_clear(p);
    return -1;
}

void db_plan_row_clear(db_plan_row *p)
{
    free((char *)p->memory_json), free((char *)p->sweep), free((char *)p->command);
    p->memory_json = p->sweep = p->command = NULL;
}

void db_plan_rows_free(db_plan_row *rows, int n)
{
    for (int i = 0; rows && i < n; i++) db_plan_row_clear(&rows[i]);
    free(rows);
}

int db_plan_list(db_conn *d, int64_t calib_id, db_plan_row **rows, int *n)
{
    *rows = NULL, *n = 0;
    sqlite3_stmt *st = db_prepare(d, "SELECT " DB_PLAN_COLUMNS " FROM plans WHERE ?1 = 0 OR calib_id = ?1 ORDER BY id");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, calib_id);
    int64_t cap = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (grow((void **)rows, &cap, *n, sizeof **rows) || db_plan_row_read(st, &(*rows)[*n])) { rc = SQLITE_NOMEM; break; }
        (*n)++;
    }
    sqlite3_finalize(st);
    if (rc == SQLITE_DONE) return 0;
    db_plan_rows_free(*rows, *n), *rows = NULL, *n = 0;
    return rc == SQLITE_NOMEM ? db_fail(d, "out of memory listing plans") : db_fail_sql(d, "listing plans");
}

int db_plan_choices_load(db_conn *d, int64_t plan_id, db_plan_choice **c, int *n)
{
    *c = NULL, *n = 0;
    sqlite3_stmt *st = db_prepare(d,
        "SELECT tensor_id, option_id, bits, predicted FROM plan_choices WHERE plan_id = ?1 ORDER BY tensor_id");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, plan_id);
    int64_t cap = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (grow((void **)c, &cap, *n, sizeof **c)) { rc = SQLITE_NOMEM; break; }
        db_plan_choice *x = &(*c)[(*n)++];
        x->tensor_id = sqlite3_column_int64(st, 0), x->option_id = sqlite3_column_int64(st, 1);
        x->bits = sqlite3_column_int64(st, 2), x->predicted = sqlite3_column_double(st, 3);
    }
    sqlite3_finalize(st);
    if (rc == SQLITE_DONE) return 0;
    free(*c), *c = NULL, *n = 0;
    return rc == SQLITE_NOMEM ? db_fail(d, "out of memory reading choices") : db_fail_sql(d, "reading the plan's choices");
}
