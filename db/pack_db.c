/*
 * db/pack_db.c — what the packer reads: a plan, the option of each tensor, and the
 * calibration the plan's measurements came from (to recompute its Hessians).
 */
#include "db_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void copy_text(char *dst, size_t cap, sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    snprintf(dst, cap, "%s", t ? (const char *)t : "");
}

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
    copy_text(p->kind, sizeof p->kind, st, 2);
    p->target = sqlite3_column_double(st, 3);
    p->achieved_bpw = sqlite3_column_double(st, 4);
    p->file_bpw = sqlite3_column_double(st, 5);
    p->objective = sqlite3_column_double(st, 6);
    copy_text(p->model_hash, sizeof p->model_hash, st, 7);
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
        "SELECT t.name, t.rows, t.cols, o.id, o.name, o.bits_lo, o.bits_hi, o.hi_share, o.group_size,"
        "       o.scale_fmt, pc.bits"
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
        copy_text(c->name, sizeof c->name, st, 0);
        c->rows = sqlite3_column_int64(st, 1);
        c->cols = sqlite3_column_int64(st, 2);
        c->option.id = sqlite3_column_int64(st, 3);
        copy_text(c->option.name, sizeof c->option.name, st, 4);
        c->option.bits_lo = sqlite3_column_int(st, 5);
        c->option.bits_hi = sqlite3_column_int(st, 6);
        c->option.hi_share = sqlite3_column_double(st, 7);
        c->option.group_size = sqlite3_column_int(st, 8);
        c->option.scale_fmt = sqlite3_column_int(st, 9);
        c->bits = sqlite3_column_int64(st, 10);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return db_fail_sql(d, "reading the plan's choices");
    if (!p->n_choices) return db_fail(d, "%s: plan %lld chooses no tensor", d->path, (long long)p->plan_id);
    return 0;
}

int db_pack_plan_load(db_conn *d, int64_t plan_id, db_pack_plan *out)
{
    memset(out, 0, sizeof *out);
    if (load_header(d, plan_id, out) || load_choices(d, out)) {
        db_pack_plan_free(out);
        return -1;
    }
    return 0;
}

void db_pack_plan_free(db_pack_plan *p)
{
    free(p->sources_json), free(p->choices);
    p->sources_json = NULL, p->choices = NULL, p->n_choices = 0;
}
