/*
 * db/measure_db.c — typed access to what the measurement pass writes: models,
 * tensors, calibrations, options, measurements and KL probes.
 *
 * Invariants kept here (see schema.sql):
 *  1. Finding before inserting: model by content hash, tensor by (model, name),
 *     calibration by (model, key), option by its definition. Running the same
 *     setup twice gives the same ids.
 *  2. A batch of measurements is written in one transaction: after a kill the
 *     batch is wholly present or wholly absent, so "present" means "done".
 * It must never decide anything about quantization: it stores what it is given.
 */
#include "db_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ==== Statement helpers ==== */

/* Runs a prepared statement that returns no rows, then finalizes it. */
static int step_done(db_conn *d, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    int ok = rc == SQLITE_DONE || rc == SQLITE_ROW;
    if (!ok) db_fail_sql(d, what);
    sqlite3_finalize(st);
    return ok ? 0 : -1;
}

/* Runs a prepared statement expected to return one integer; -1 with the error set,
 * 1 if there was no row, 0 with *v set. Finalizes the statement. */
static int step_int64(db_conn *d, sqlite3_stmt *st, const char *what, int64_t *v)
{
    int rc = sqlite3_step(st), out = 1;
    if (rc == SQLITE_ROW) *v = sqlite3_column_int64(st, 0), out = 0;
    else if (rc != SQLITE_DONE) out = db_fail_sql(d, what);
    sqlite3_finalize(st);
    return out;
}

static void bind_text(sqlite3_stmt *st, int i, const char *s) { sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT); }

/* ==== Models and tensors ==== */

int db_model_upsert(db_conn *d, const db_model_info *m, int64_t *model_id)
{
    sqlite3_stmt *st = db_prepare(d,
        "INSERT INTO models(content_hash, path, arch, config_json, n_params) VALUES (?1, ?2, ?3, ?4, ?5) "
        "ON CONFLICT(content_hash) DO UPDATE SET path = excluded.path, arch = excluded.arch, "
        "config_json = excluded.config_json, n_params = excluded.n_params");
    if (!st) return -1;
    bind_text(st, 1, m->content_hash), bind_text(st, 2, m->path), bind_text(st, 3, m->arch);
    bind_text(st, 4, m->config_json), sqlite3_bind_int64(st, 5, m->n_params);
    if (step_done(d, st, "storing the model")) return -1;
    if (!(st = db_prepare(d, "SELECT id FROM models WHERE content_hash = ?1"))) return -1;
    bind_text(st, 1, m->content_hash);
    int rc = step_int64(d, st, "finding the model", model_id);
    return rc == 0 ? 0 : rc < 0 ? -1 : db_fail(d, "%s: model %s vanished after insert", d->path, m->content_hash);
}

int db_tensor_upsert(db_conn *d, int64_t model_id, const db_tensor_info *t, int64_t *tensor_id)
{
    sqlite3_stmt *st = db_prepare(d,
        "INSERT INTO tensors(model_id, name, layer, class, input_group, rows, cols) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(model_id, name) DO NOTHING");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, model_id), bind_text(st, 2, t->name), sqlite3_bind_int(st, 3, t->layer);
    bind_text(st, 4, t->cls), bind_text(st, 5, t->input_group);
    sqlite3_bind_int64(st, 6, t->rows), sqlite3_bind_int64(st, 7, t->cols);
    if (step_done(d, st, "storing a tensor")) return -1;
    if (!(st = db_prepare(d, "SELECT id, rows, cols FROM tensors WHERE model_id = ?1 AND name = ?2"))) return -1;
    sqlite3_bind_int64(st, 1, model_id), bind_text(st, 2, t->name);
    int rc = sqlite3_step(st), out = 0;
    if (rc != SQLITE_ROW) out = rc == SQLITE_DONE ? db_fail(d, "%s: tensor %s vanished after insert", d->path, t->name)
                                                  : db_fail_sql(d, "finding a tensor");
    else if (sqlite3_column_int64(st, 1) != t->rows || sqlite3_column_int64(st, 2) != t->cols)
        out = db_fail(d, "%s: tensor %s is stored as %lldx%lld, not %lldx%lld", d->path, t->name,
                      (long long)sqlite3_column_int64(st, 1), (long long)sqlite3_column_int64(st, 2),
                      (long long)t->rows, (long long)t->cols);
    else *tensor_id = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return out;
}

/* ==== Calibrations and options ==== */

int db_calib_find_or_create(db_conn *d, int64_t model_id, const db_calib_info *c, int64_t *calib_id, int *done)
{
    sqlite3_stmt *st = db_prepare(d,
        "INSERT INTO calibrations(model_id, key, sources_json, rows, ctx, tokenizer, damp) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(model_id, key) DO NOTHING");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, model_id), bind_text(st, 2, c->key), bind_text(st, 3, c->sources_json);
    sqlite3_bind_int(st, 4, c->rows), sqlite3_bind_int(st, 5, c->ctx), bind_text(st, 6, c->tokenizer);
    sqlite3_bind_double(st, 7, c->damp);
    if (step_done(d, st, "storing the calibration")) return -1;
    if (!(st = db_prepare(d, "SELECT id, status = 'done' FROM calibrations WHERE model_id = ?1 AND key = ?2"))) return -1;
    sqlite3_bind_int64(st, 1, model_id), bind_text(st, 2, c->key);
    int rc = sqlite3_step(st), out = 0;
    if (rc == SQLITE_ROW) *calib_id = sqlite3_column_int64(st, 0), *done = sqlite3_column_int(st, 1);
    else out = rc == SQLITE_DONE ? db_fail(d, "%s: calibration %s vanished after insert", d->path, c->key)
                                 : db_fail_sql(d, "finding the calibration");
    sqlite3_finalize(st);
    return out;
}

int db_calib_mark_done(db_conn *d, int64_t calib_id)
{
    sqlite3_stmt *st = db_prepare(d, "UPDATE calibrations SET status = 'done' WHERE id = ?1");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, calib_id);
    return step_done(d, st, "marking the calibration done");
}

/* Binds an option's definition to ?2..?8 (its name, if used, is ?1). */
static void bind_option(sqlite3_stmt *st, const lay_option *o)
{
    sqlite3_bind_int(st, 2, o->bits_lo), sqlite3_bind_int(st, 3, o->bits_hi);
    sqlite3_bind_double(st, 4, (double)o->hi_share), sqlite3_bind_int(st, 5, o->group);
    sqlite3_bind_int(st, 6, (int)o->scale_fmt), sqlite3_bind_int(st, 7, o->rot), sqlite3_bind_int(st, 8, o->awq);
}

int db_option_upsert(db_conn *d, const lay_option *o, int64_t *option_id)
{
    sqlite3_stmt *st = db_prepare(d,
        "INSERT INTO options(name, bits_lo, bits_hi, hi_share, group_size, scale_fmt, rot, awq) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) "
        "ON CONFLICT(bits_lo, bits_hi, hi_share, group_size, scale_fmt, rot, awq) DO NOTHING");
    if (!st) return -1;
    bind_text(st, 1, o->name), bind_option(st, o);
    if (step_done(d, st, "storing an option")) return -1;
    if (!(st = db_prepare(d, "SELECT id FROM options WHERE bits_lo = ?2 AND bits_hi = ?3 AND hi_share = ?4 "
                             "AND group_size = ?5 AND scale_fmt = ?6 AND rot = ?7 AND awq = ?8"))) return -1;
    bind_option(st, o);
    int rc = step_int64(d, st, "finding an option", option_id);
    return rc == 0 ? 0 : rc < 0 ? -1 : db_fail(d, "%s: option %s vanished after insert", d->path, o->name);
}

int db_calib_add_option(db_conn *d, int64_t calib_id, int64_t option_id)
{
    sqlite3_stmt *st = db_prepare(d, "INSERT OR IGNORE INTO calibration_options(calib_id, option_id) VALUES (?1, ?2)");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, calib_id), sqlite3_bind_int64(st, 2, option_id);
    return step_done(d, st, "storing the option set");
}

/* ==== Measurements and probes ==== */

static int insert_measurement(db_conn *d, sqlite3_stmt *st, int64_t calib_id, const db_measurement *m)
{
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, calib_id), sqlite3_bind_int64(st, 2, m->tensor_id);
    sqlite3_bind_int64(st, 3, m->option_id), sqlite3_bind_int64(st, 4, m->bits);
    sqlite3_bind_double(st, 5, m->rel_err), sqlite3_bind_double(st, 6, m->rtn_err);
    sqlite3_bind_double(st, 7, m->seconds);
    return sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail_sql(d, "storing a measurement");
}

int db_measurements_insert(db_conn *d, int64_t calib_id, const db_measurement *m, int n)
{
    if (db_begin(d)) return -1;
    sqlite3_stmt *st = db_prepare(d,
        "INSERT OR REPLACE INTO measurements(calib_id, tensor_id, option_id, bits, rel_err, rtn_err, seconds) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    int rc = st ? 0 : -1;
    for (int i = 0; i < n && !rc; i++) rc = insert_measurement(d, st, calib_id, &m[i]);
    sqlite3_finalize(st);
    if (!rc) rc = db_commit(d);
    if (rc) db_rollback(d);
    return rc;
}

/* Collects the integer columns of every row of st into a growing array of `width`
 * values per row. Finalizes st. */
static int collect_int64(db_conn *d, sqlite3_stmt *st, int width, const char *what, int64_t **out, int64_t *n)
{
    int64_t cap = 0, rows = 0, *v = NULL;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (rows == cap) {
            cap = cap ? 2 * cap : 256;
            int64_t *nv = realloc(v, (size_t)(cap * width) * sizeof *v);
            if (!nv) { rc = SQLITE_NOMEM; break; }
            v = nv;
        }
        for (int c = 0; c < width; c++) v[rows * width + c] = sqlite3_column_int64(st, c);
        rows++;
    }
    if (rc != SQLITE_DONE) {
        if (rc == SQLITE_NOMEM) db_fail(d, "%s: %s: out of memory", d->path, what);
        else db_fail_sql(d, what);
        sqlite3_finalize(st), free(v);
        return -1;
    }
    sqlite3_finalize(st);
    *out = v, *n = rows;
    return 0;
}

int db_measured_pairs(db_conn *d, int64_t calib_id, int64_t **pairs, int64_t *n)
{
    sqlite3_stmt *st = db_prepare(d, "SELECT tensor_id, option_id FROM measurements WHERE calib_id = ?1 "
                                     "ORDER BY tensor_id, option_id");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, calib_id);
    return collect_int64(d, st, 2, "reading measurements", pairs, n);
}

int db_kl_probe_insert(db_conn *d, int64_t calib_id, const db_kl_probe *p)
{
    sqlite3_stmt *st = db_prepare(d,
        "INSERT OR REPLACE INTO kl_probes(calib_id, tensor_id, option_id, kld, rel_err, seconds) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, calib_id), sqlite3_bind_int64(st, 2, p->tensor_id);
    sqlite3_bind_int64(st, 3, p->option_id), sqlite3_bind_double(st, 4, p->kld);
    sqlite3_bind_double(st, 5, p->rel_err), sqlite3_bind_double(st, 6, p->seconds);
    return step_done(d, st, "storing a KL probe");
}

int db_kl_probed_tensors(db_conn *d, int64_t calib_id, int64_t **ids, int64_t *n)
{
    sqlite3_stmt *st = db_prepare(d, "SELECT tensor_id FROM kl_probes WHERE calib_id = ?1 ORDER BY tensor_id");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, calib_id);
    return collect_int64(d, st, 1, "reading KL probes", ids, n);
}

int db_calib_counts(db_conn *d, int64_t calib_id, int64_t *n_meas, int64_t *n_probes, int64_t *n_options)
{
    static const char *const sql[3] = {
        "SELECT count(*) FROM measurements WHERE calib_id = ?1",
        "SELECT count(*) FROM kl_probes WHERE calib_id = ?1",
        "SELECT count(*) FROM calibration_options WHERE calib_id = ?1",
    };
    int64_t *out[3] = {n_meas, n_probes, n_options};
    for (int i = 0; i < 3; i++) {
        if (!out[i]) continue;
        sqlite3_stmt *st = db_prepare(d, sql[i]);
        if (!st) return -1;
        sqlite3_bind_int64(st, 1, calib_id);
        if (step_int64(d, st, "counting rows", out[i])) return -1;
    }
    return 0;
}
