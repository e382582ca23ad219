/*
 * db/report_db.c — the SQL behind reports and evaluations: reading everything a
 * report shows about one calibration (model, tensors, options, measurements, KL
 * probes, plans with their choices and memory terms, evaluations) in one read
 * snapshot, and recording an evaluation.
 *
 * It never writes anything but `evals` rows, and never interprets the numbers it
 * reads: choosing, aggregating and drawing belong to reports/. The memory model of a
 * VRAM plan (plans.memory_json) is taken apart with SQLite's json_each, so that no
 * JSON parser lives outside SQLite.
 */
#include "db_int.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ==== Recording an evaluation ==== */

static void bind_opt_real(sqlite3_stmt *st, int i, double v)
{
    if (isnan(v)) sqlite3_bind_null(st, i);
    else sqlite3_bind_double(st, i, v);
}

static void bind_opt_text(sqlite3_stmt *st, int i, const char *s)
{
    if (s) sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else sqlite3_bind_null(st, i);
}

static void bind_opt_id(sqlite3_stmt *st, int i, int64_t id)
{
    if (id > 0) sqlite3_bind_int64(st, i, id);
    else sqlite3_bind_null(st, i);
}

int db_eval_insert(db_conn *d, const db_eval_row *e, int64_t *id)
{
    assert(e->subject && e->subject_kind && e->text_path && e->text_hash && e->command);
    if (isnan(e->ppl)) return db_fail(d, "%s: evals: ppl is required (got NaN)", d->path);
    static const char sql[] =
        "INSERT INTO evals (model_id, plan_id, subject, subject_kind, bpw, text_path, text_hash, ctx,"
        " tokens, ppl, ppl_stderr, kld, kld_stderr, top1, ref_path, device, command)"
        " VALUES (COALESCE(?1, (SELECT c.model_id FROM plans p JOIN calibrations c ON c.id = p.calib_id"
        " WHERE p.id = ?2)), ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)";
    sqlite3_stmt *st = db_prepare(d, sql);
    if (!st) return -1;
    bind_opt_id(st, 1, e->model_id);
    bind_opt_id(st, 2, e->plan_id);
    sqlite3_bind_text(st, 3, e->subject, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, e->subject_kind, -1, SQLITE_TRANSIENT);
    bind_opt_real(st, 5, e->bpw);
    sqlite3_bind_text(st, 6, e->text_path, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 7, e->text_hash, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 8, e->ctx);
    sqlite3_bind_int64(st, 9, e->tokens);
    sqlite3_bind_double(st, 10, e->ppl);
    bind_opt_real(st, 11, e->ppl_stderr);
    bind_opt_real(st, 12, e->kld);
    bind_opt_real(st, 13, e->kld_stderr);
    bind_opt_real(st, 14, e->top1);
    bind_opt_text(st, 15, e->ref_path);
    sqlite3_bind_text(st, 16, e->device ? e->device : "cpu", -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 17, e->command, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail_sql(d, "inserting an evaluation");
    sqlite3_finalize(st);
    if (rc == 0 && id) *id = sqlite3_last_insert_rowid(d->sql);
    return rc;
}

static int64_t lookup_id(db_conn *d, const char *sql, const char *text, int64_t num, int *rc)
{
    sqlite3_stmt *st = db_prepare(d, sql);
    if (!st) { *rc = -1; return 0; }
    sqlite3_bind_text(st, 1, text, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, num);
    int step = sqlite3_step(st);
    int64_t id = step == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    if (step != SQLITE_ROW && step != SQLITE_DONE) *rc = db_fail_sql(d, "looking up the evaluated model");
    sqlite3_finalize(st);
    return id;
}

int db_eval_resolve(db_conn *d, const char *model_hash, int64_t want_plan, int64_t *model_id, int64_t *plan_id)
{
    int rc = 0;
    *model_id = lookup_id(d, "SELECT id FROM models WHERE content_hash = ?1 AND ?2 = ?2", model_hash, 0, &rc);
    *plan_id = want_plan > 0 && *model_id
                   ? lookup_id(d, "SELECT p.id FROM plans p JOIN calibrations c ON c.id = p.calib_id"
                                  " JOIN models m ON m.id = c.model_id WHERE m.content_hash = ?1 AND p.id = ?2",
                               model_hash, want_plan, &rc)
                   : 0;
    return rc;
}

/* ==== Small readers ==== */

static double col_real(sqlite3_stmt *st, int i)
{
    return sqlite3_column_type(st, i) == SQLITE_NULL ? NAN : sqlite3_column_double(st, i);
}

/* Number of rows a query with ?1 = a, ?2 = b returns as its count(*). */
static int count_rows(db_conn *d, const char *sql, int64_t a, int64_t b, int *n)
{
    sqlite3_stmt *st = db_prepare(d, sql);
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, a);
    sqlite3_bind_int64(st, 2, b);
    int rc = sqlite3_step(st) == SQLITE_ROW ? 0 : db_fail_sql(d, "counting");
    *n = rc ? 0 : sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return rc;
}

/* id -> index lookups over a sorted copy of the ids. */
typedef struct { int64_t id; int idx; } id_idx;

static int id_cmp(const void *a, const void *b)
{
    int64_t x = ((const id_idx *)a)->id, y = ((const id_idx *)b)->id;
    return (x > y) - (x < y);
}

static int lookup(const id_idx *map, int n, int64_t id)
{
    id_idx key = {id, 0};
    const id_idx *hit = n ? bsearch(&key, map, (size_t)n, sizeof *map, id_cmp) : NULL;
    return hit ? hit->idx : -1;
}

static id_idx *make_map(int n, int64_t (*id_of)(const db_report *, int), const db_report *r)
{
    id_idx *m = malloc((size_t)(n ? n : 1) * sizeof *m);
    if (!m) return NULL;
    for (int i = 0; i < n; i++) m[i] = (id_idx){id_of(r, i), i};
    qsort(m, (size_t)n, sizeof *m, id_cmp);
    return m;
}

static int64_t tensor_id_of(const db_report *r, int i) { return r->tensors[i].id; }
static int64_t option_id_of(const db_report *r, int i) { return r->options[i].id; }
static int64_t plan_id_of(const db_report *r, int i) { return r->plans[i].row.id; }

/* ==== Loading, one table at a time ==== */

typedef struct {
    db_conn *d;
    db_report *r;
    id_idx *tmap, *omap, *pmap;
} loader;

static int load_header(loader *L, int64_t calib_id)
{
    static const char sql[] =
        "SELECT m.id, m.path, m.content_hash, m.arch, m.config_json, m.n_params, c.id, c.status,"
        " CASE WHEN json_valid(c.sources_json) THEN (SELECT group_concat(COALESCE(json_extract(j.value, '$.path'),"
        " j.value), ', ') FROM json_each(c.sources_json) j) ELSE c.sources_json END,"
        " c.tokenizer, c.created_at, c.rows, c.ctx, c.damp"
        " FROM calibrations c JOIN models m ON m.id = c.model_id"
        " WHERE (?1 > 0 AND c.id = ?1) OR (?1 <= 0 AND c.id = (SELECT id FROM calibrations"
        "   ORDER BY EXISTS (SELECT 1 FROM measurements x WHERE x.calib_id = calibrations.id) DESC, id DESC LIMIT 1))";
    db_report *r = L->r;
    sqlite3_stmt *st = db_prepare(L->d, sql);
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, calib_id);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        sqlite3_finalize(st);
        if (rc != SQLITE_DONE) return db_fail_sql(L->d, "reading the calibration");
        if (calib_id > 0) return db_fail(L->d, "%s: no calibration %lld", L->d->path, (long long)calib_id);
        return db_fail(L->d, "%s: no calibration (nothing measured yet: run bitplan measure)", L->d->path);
    }
    r->model_id = sqlite3_column_int64(st, 0);
    r->model_path = db_col_dup(st, 1);
    r->model_hash = db_col_dup(st, 2);
    r->arch = db_col_dup(st, 3);
    r->config_json = db_col_dup(st, 4);
    r->n_params = sqlite3_column_int64(st, 5);
    r->calib_id = sqlite3_column_int64(st, 6);
    r->calib_status = db_col_dup(st, 7);
    r->calib_sources = db_col_dup(st, 8);
    r->tokenizer = db_col_dup(st, 9);
    r->calib_created = db_col_dup(st, 10);
    r->calib_rows = sqlite3_column_int(st, 11);
    r->calib_ctx = sqlite3_column_int(st, 12);
    r->damp = sqlite3_column_double(st, 13);
    sqlite3_finalize(st);
    int oom = !r->model_path || !r->model_hash || !r->arch || !r->config_json || !r->calib_status ||
              !r->calib_sources || !r->tokenizer || !r->calib_created;
    return oom ? db_fail(L->d, "out of memory") : 0;
}

static int load_tensors(loader *L)
{
    static const char sql[] =
        "SELECT id, name, layer, class, rows, cols FROM tensors WHERE model_id = ?1"
        " ORDER BY layer < 0, layer, CASE class WHEN 'q' THEN 0 WHEN 'k' THEN 1 WHEN 'v' THEN 2 WHEN 'o' THEN 3"
        " WHEN 'gate' THEN 4 WHEN 'up' THEN 5 WHEN 'down' THEN 6 ELSE 7 END, name";
    db_report *r = L->r;
    if (count_rows(L->d, "SELECT count(*) FROM tensors WHERE model_id = ?1", r->model_id, 0, &r->n_tensors)) return -1;
    r->tensors = calloc((size_t)r->n_tensors + 1, sizeof *r->tensors);
    sqlite3_stmt *st = r->tensors ? db_prepare(L->d, sql) : NULL;
    if (!st) return r->tensors ? -1 : db_fail(L->d, "out of memory");
    sqlite3_bind_int64(st, 1, r->model_id);
    int n = 0;
    while (n < r->n_tensors && sqlite3_step(st) == SQLITE_ROW) {
        db_rep_tensor *t = &r->tensors[n++];
        t->id = sqlite3_column_int64(st, 0);
        db_col_text(st, 1, t->name, sizeof t->name);
        t->layer = sqlite3_column_int(st, 2);
        db_col_text(st, 3, t->cls, sizeof t->cls);
        t->rows = sqlite3_column_int64(st, 4);
        t->cols = sqlite3_column_int64(st, 5);
    }
    sqlite3_finalize(st);
    r->n_tensors = n;
    L->tmap = make_map(n, tensor_id_of, r);
    return L->tmap ? 0 : db_fail(L->d, "out of memory");
}

static int load_options(loader *L)
{
    static const char where[] =
        " FROM options WHERE id IN (SELECT option_id FROM calibration_options WHERE calib_id = ?1"
        " UNION SELECT option_id FROM measurements WHERE calib_id = ?1"
        " UNION SELECT option_id FROM kl_probes WHERE calib_id = ?1"
        " UNION SELECT pc.option_id FROM plan_choices pc JOIN plans p ON p.id = pc.plan_id WHERE p.calib_id = ?1)";
    char sql[1024];
    db_report *r = L->r;
    snprintf(sql, sizeof sql, "SELECT count(*)%s", where);
    if (count_rows(L->d, sql, r->calib_id, 0, &r->n_options)) return -1;
    snprintf(sql, sizeof sql, "SELECT " DB_OPTION_COLUMNS("") "%s ORDER BY id", where);
    r->options = calloc((size_t)r->n_options + 1, sizeof *r->options);
    sqlite3_stmt *st = r->options ? db_prepare(L->d, sql) : NULL;
    if (!st) return r->options ? -1 : db_fail(L->d, "out of memory");
    sqlite3_bind_int64(st, 1, r->calib_id);
    int n = 0;
    while (n < r->n_options && sqlite3_step(st) == SQLITE_ROW) db_option_read(st, 0, &r->options[n++]);
    sqlite3_finalize(st);
    r->n_options = n;
    L->omap = make_map(n, option_id_of, r);
    return L->omap ? 0 : db_fail(L->d, "out of memory");
}

static int load_measurements(loader *L)
{
    static const char sql[] =
        "SELECT tensor_id, option_id, bits, rel_err, rtn_err FROM measurements WHERE calib_id = ?1"
        " ORDER BY tensor_id, option_id";
    db_report *r = L->r;
    if (count_rows(L->d, "SELECT count(*) FROM measurements WHERE calib_id = ?1", r->calib_id, 0, &r->n_meas)) return -1;
    r->meas = calloc((size_t)r->n_meas + 1, sizeof *r->meas);
    sqlite3_stmt *st = r->meas ? db_prepare(L->d, sql) : NULL;
    if (!st) return r->meas ? -1 : db_fail(L->d, "out of memory");
    sqlite3_bind_int64(st, 1, r->calib_id);
    int n = 0;
    while (n < r->n_meas && sqlite3_step(st) == SQLITE_ROW) {
        db_rep_meas m = {lookup(L->tmap, r->n_tensors, sqlite3_column_int64(st, 0)),
                         lookup(L->omap, r->n_options, sqlite3_column_int64(st, 1)),
                         sqlite3_column_int64(st, 2), col_real(st, 3), col_real(st, 4)};
        if (m.tensor >= 0 && m.option >= 0) r->meas[n++] = m;
    }
    sqlite3_finalize(st);
    r->n_meas = n;
    return 0;
}

static int load_probes(loader *L)
{
    static const char sql[] = "SELECT tensor_id, option_id, kld, rel_err FROM kl_probes WHERE calib_id = ?1 ORDER BY tensor_id";
    db_report *r = L->r;
    if (count_rows(L->d, "SELECT count(*) FROM kl_probes WHERE calib_id = ?1", r->calib_id, 0, &r->n_probes)) return -1;
    r->probes = calloc((size_t)r->n_probes + 1, sizeof *r->probes);
    sqlite3_stmt *st = r->probes ? db_prepare(L->d, sql) : NULL;
    if (!st) return r->probes ? -1 : db_fail(L->d, "out of memory");
    sqlite3_bind_int64(st, 1, r->calib_id);
    int n = 0;
    while (n < r->n_probes && sqlite3_step(st) == SQLITE_ROW) {
        db_rep_probe p = {lookup(L->tmap, r->n_tensors, sqlite3_column_int64(st, 0)),
                          lookup(L->omap, r->n_options, sqlite3_column_int64(st, 1)),
                          col_real(st, 2), col_real(st, 3)};
        if (p.tensor >= 0 && p.option >= 0) r->probes[n++] = p;
    }
    sqlite3_finalize(st);
    r->n_probes = n;
    return 0;
}

/* The numeric entries of one plan's memory_json, in the order they were written. */
static int load_terms(loader *L, db_rep_plan *p)
{
    static const char sql[] =
        "SELECT json_valid(?1) AND json_type(?1) = 'object', (SELECT count(*) FROM json_each(CASE WHEN json_valid(?1)"
        " THEN ?1 ELSE '{}' END) WHERE type IN ('integer','real'))";
    static const char each[] = "SELECT key, value FROM json_each(?1) WHERE type IN ('integer','real') ORDER BY id";
    const char *json = p->row.memory_json;
    if (!json[0]) return 0;
    sqlite3_stmt *st = db_prepare(L->d, sql);
    if (!st) return -1;
    sqlite3_bind_text(st, 1, json, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_ROW) { sqlite3_finalize(st); return db_fail_sql(L->d, "reading plans.memory_json"); }
    p->memory_ok = sqlite3_column_int(st, 0);
    int n = sqlite3_column_int(st, 1);
    sqlite3_finalize(st);
    if (!p->memory_ok || n == 0) return 0;
    p->terms = calloc((size_t)n, sizeof *p->terms);
    st = p->terms ? db_prepare(L->d, each) : NULL;
    if (!st) return p->terms ? -1 : db_fail(L->d, "out of memory");
    sqlite3_bind_text(st, 1, json, -1, SQLITE_STATIC);
    while (p->n_terms < n && sqlite3_step(st) == SQLITE_ROW) {
        db_rep_term *t = &p->terms[p->n_terms++];
        db_col_text(st, 0, t->name, sizeof t->name);
        t->bytes = sqlite3_column_double(st, 1);
    }
    sqlite3_finalize(st);
    return 0;
}

static int read_plan_row(loader *L, sqlite3_stmt *st, db_rep_plan *p)
{
    if (db_plan_row_read(st, &p->row)) return db_fail(L->d, "out of memory");
    return load_terms(L, p);
}

static int load_plans(loader *L)
{
    static const char sql[] = "SELECT " DB_PLAN_COLUMNS " FROM plans WHERE calib_id = ?1 ORDER BY id";
    db_report *r = L->r;
    if (count_rows(L->d, "SELECT count(*) FROM plans WHERE calib_id = ?1", r->calib_id, 0, &r->n_plans)) return -1;
    r->plans = calloc((size_t)r->n_plans + 1, sizeof *r->plans);
    sqlite3_stmt *st = r->plans ? db_prepare(L->d, sql) : NULL;
    if (!st) return r->plans ? -1 : db_fail(L->d, "out of memory");
    sqlite3_bind_int64(st, 1, r->calib_id);
    int n = 0, rc = 0;
    while (!rc && n < r->n_plans && sqlite3_step(st) == SQLITE_ROW) rc = read_plan_row(L, st, &r->plans[n++]);
    sqlite3_finalize(st);
    r->n_plans = n;
    L->pmap = make_map(n, plan_id_of, r);
    return rc ? rc : L->pmap ? 0 : db_fail(L->d, "out of memory");
}

static int load_choices(loader *L)
{
    static const char sql[] =
        "SELECT pc.plan_id, pc.tensor_id, pc.option_id, pc.bits, pc.predicted, count(*) OVER (PARTITION BY pc.plan_id)"
        " FROM plan_choices pc JOIN plans p ON p.id = pc.plan_id WHERE p.calib_id = ?1 ORDER BY pc.plan_id, pc.tensor_id";
    db_report *r = L->r;
    sqlite3_stmt *st = db_prepare(L->d, sql);
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, r->calib_id);
    int rc = 0;
    while (!rc && sqlite3_step(st) == SQLITE_ROW) {
        int pi = lookup(L->pmap, r->n_plans, sqlite3_column_int64(st, 0));
        if (pi < 0) continue;
        db_rep_plan *p = &r->plans[pi];
        if (!p->choices && !(p->choices = calloc((size_t)sqlite3_column_int(st, 5) + 1, sizeof *p->choices))) {
            rc = db_fail(L->d, "out of memory");
            break;
        }
        db_rep_choice c = {lookup(L->tmap, r->n_tensors, sqlite3_column_int64(st, 1)),
                           lookup(L->omap, r->n_options, sqlite3_column_int64(st, 2)),
                           sqlite3_column_int64(st, 3), col_real(st, 4)};
        if (c.tensor >= 0 && c.option >= 0 && p->n_choices < sqlite3_column_int(st, 5)) p->choices[p->n_choices++] = c;
    }
    sqlite3_finalize(st);
    return rc;
}

static int read_eval_row(loader *L, sqlite3_stmt *st, db_rep_eval *e)
{
    e->id = sqlite3_column_int64(st, 0);
    e->plan_id = sqlite3_column_int64(st, 1);
    e->plan = e->plan_id ? lookup(L->pmap, L->r->n_plans, e->plan_id) : -1;
    e->subject = db_col_dup(st, 2);
    e->subject_kind = db_col_dup(st, 3);
    e->bpw = col_real(st, 4);
    e->text_path = db_col_dup(st, 5);
    e->ctx = sqlite3_column_int(st, 6);
    e->tokens = sqlite3_column_int64(st, 7);
    e->ppl = col_real(st, 8);
    e->ppl_stderr = col_real(st, 9);
    e->kld = col_real(st, 10);
    e->kld_stderr = col_real(st, 11);
    e->top1 = col_real(st, 12);
    e->ref_path = db_col_dup(st, 13);
    e->device = db_col_dup(st, 14);
    e->command = db_col_dup(st, 15);
    e->created_at = db_col_dup(st, 16);
    int oom = !e->subject || !e->subject_kind || !e->text_path || !e->ref_path || !e->device || !e->command || !e->created_at;
    return oom ? db_fail(L->d, "out of memory") : 0;
}

static int load_evals(loader *L)
{
    static const char where[] =
        " FROM evals WHERE plan_id IN (SELECT id FROM plans WHERE calib_id = ?1) OR (plan_id IS NULL AND model_id = ?2)";
    char sql[1024];
    db_report *r = L->r;
    snprintf(sql, sizeof sql, "SELECT count(*)%s", where);
    if (count_rows(L->d, sql, r->calib_id, r->model_id, &r->n_evals)) return -1;
    snprintf(sql, sizeof sql, "SELECT id, plan_id, subject, subject_kind, bpw, text_path, ctx, tokens, ppl, ppl_stderr,"
             " kld, kld_stderr, top1, ref_path, device, command, created_at%s ORDER BY id", where);
    r->evals = calloc((size_t)r->n_evals + 1, sizeof *r->evals);
    sqlite3_stmt *st = r->evals ? db_prepare(L->d, sql) : NULL;
    if (!st) return r->evals ? -1 : db_fail(L->d, "out of memory");
    sqlite3_bind_int64(st, 1, r->calib_id);
    sqlite3_bind_int64(st, 2, r->model_id);
    int n = 0, rc = 0;
    while (!rc && n < r->n_evals && sqlite3_step(st) == SQLITE_ROW) rc = read_eval_row(L, st, &r->evals[n++]);
    sqlite3_finalize(st);
    r->n_evals = n;
    return rc;
}

/* ==== Public ==== */

int db_report_load(db_conn *d, int64_t calib_id, db_report **out)
{
    *out = NULL;
    loader L = {d, calloc(1, sizeof(db_report)), NULL, NULL, NULL};
    if (!L.r) return db_fail(d, "out of memory");
    int rc = db_exec(d, "BEGIN");   /* one read snapshot for every query below */
    if (!rc) {
        rc = load_header(&L, calib_id) || load_tensors(&L) || load_options(&L) || load_measurements(&L) ||
             load_probes(&L) || load_plans(&L) || load_choices(&L) || load_evals(&L) ? -1 : 0;
        db_exec(d, "COMMIT");
    }
    free(L.tmap);
    free(L.omap);
    free(L.pmap);
    if (rc) { db_report_free(L.r); return -1; }
    *out = L.r;
    return 0;
}

void db_report_free(db_report *r)
{
    if (!r) return;
    for (int i = 0; i < r->n_plans; i++) {
        db_rep_plan *p = &r->plans[i];
        db_plan_row_clear(&p->row);
        free(p->terms), free(p->choices);
    }
    for (int i = 0; i < r->n_evals; i++) {
        db_rep_eval *e = &r->evals[i];
        free(e->subject), free(e->subject_kind), free(e->text_path), free(e->ref_path);
        free(e->device), free(e->command), free(e->created_at);
    }
    free(r->model_path), free(r->model_hash), free(r->arch), free(r->config_json);
    free(r->calib_status), free(r->calib_sources), free(r->tokenizer), free(r->calib_created);
    free(r->tensors), free(r->options), free(r->meas), free(r->probes), free(r->plans), free(r->evals);
    free(r);
}

int db_plan_calibration(db_conn *d, int64_t plan_id, int64_t *calib_id)
{
    sqlite3_stmt *st = db_prepare(d, "SELECT calib_id FROM plans WHERE id = ?1");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, plan_id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) *calib_id = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    if (rc == SQLITE_ROW) return 0;
    if (rc != SQLITE_DONE) return db_fail_sql(d, "reading plans");
    return db_fail(d, "%s: no plan %lld", d->path, (long long)plan_id);
}
