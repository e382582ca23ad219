/*
 * measure/driver.c — the measurement pass: model and calibration text in, one
 * database row per (tensor, option) out, resumable after any kill.
 *
 * The pass, as invariants:
 *  1. Everything that can be refused is refused before the first write: options
 *     that do not fit a tensor's shape, text too short for rows x ctx, non-finite
 *     weights (rt_model_open checks every tensor), an unwritable or foreign database.
 *  2. A calibration is identified by the SHA-256 of (model hash, sources' hashes,
 *     rows, ctx, tokenizer, damp, option set); its rows never mix with another's.
 *  3. The full-precision model runs layer by layer over all calibration rows in
 *     the calibration walk (walk.c), which holds one block's weights at a time and
 *     hands each layer with work left its Hessians, bit for bit those of an
 *     uninterrupted run. Layers with nothing left to do are only run forward.
 *  4. The (tensor, option) units of a layer run in parallel (OpenMP, one unit per
 *     thread, BLAS single-threaded inside the region, fewer at once where one
 *     unit's working memory is large); each unit depends only on
 *     its weights, its Hessian and its option, so the order of completion never
 *     changes a number. Results are written in transactions (at most every
 *     MEAS_FLUSH_SECONDS and at the end of each input group of a layer: q/k/v, o,
 *     gate/up, down): a row present is done.
 *  5. The head comes last (the walk's last visit). Probes of a layer's tensors run
 *     while the walk holds that layer (probe.c holds the later ones in turn).
 *  6. On several ranks (par/, `mpirun`), the walk splits the rows (walk.c) and the
 *     units and probes of each input group are dealt to the ranks by a fixed rule
 *     (deal_units): a unit's numbers do not depend on where it runs, so the rows
 *     are those of one process. Only rank 0 opens the database: it reads what is
 *     done and sends it to all, and receives every rank's results at the end of
 *     each group. Every step that can fail on one rank is agreed (par_agree), so
 *     the ranks stop together and rank 0 says which failed and why.
 *  7. A tensor stored in a ggml block type (a GGUF source) is measured "as stored"
 *     at the option of that type: its own blocks, copied, not quantized again; the
 *     error is computed like every other (zero, since the model's fp32 weights are
 *     those blocks decoded). The default option set gains the source's 32-wide
 *     types, which bitplan's file holds as they are, so the allocator never pays
 *     error for bits the source already rounded.
 *  8. An option that rotates its inputs (layout/layout.h) is measured as the packer
 *     quantizes it: GPTQ on W R under R^T H R with LAY_ROT_SEED (gptq_prepare_slot,
 *     gptq_quantize_option), each rotation's preparation made once per input group.
 *     Where its block does not divide a tensor's columns the pair is skipped, as a
 *     ggml block type is (skips()); the probes' reference is never rotated.
 *     An option with input scales is measured the same way: GPTQ on W / m under
 *     diag(m) H diag(m) at each alpha of the grid (gptq_awq_alpha), the least
 *     error kept, as the packer keeps it; its preparations are made once per input
 *     group too, and the probes' reference never has scales.
 * It must never print (progress goes through a callback) and never write a row
 * whose numbers it did not compute in this run.
 */
#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db/db.h"
#include "model/model.h"
#include "probe_int.h"
#include "par/par.h"
#include "util/util.h"

#define MEAS_FLUSH_SECONDS 2.0

/* ==== State of one pass ==== */

typedef struct {
    char name[96];
    int layer;                /* block index; n_layers for the head */
    lay_class cls;
    int64_t rows, cols, db_id;
    int todo;                 /* options not measured yet */
    int probe;                /* 1: this run probes it */
    const float *w;           /* [rows][cols] while its layer is held, borrowed from the model */
    int src_type;             /* the ggml block type the source stores it in, or -1 */
    const uint8_t *src_blocks; /* those blocks, in the file's mapping */
    double energy;            /* tr(W H W^T), the denominator of rel_err */
    float *probe_wq;          /* dequantized at the reference option, for the probe */
    double probe_rel;
} measure_tensor;

typedef struct {
    int t, o;                 /* tensor and option index */
    int measure;              /* 1: write a measurement */
    int keep;                 /* 1: keep the dequantized GPTQ weights for the probe */
    double cost;              /* estimated work, to deal units to ranks */
} measure_unit;

typedef struct {
    const meas_params *p;
    char *err;
    size_t err_len;
    mdl_model *file;          /* owned until the model takes it */
    rt_model *m;
    calib_set cal;
    opt_set own_opts;
    const opt_set *opts;
    db_conn *db;
    int64_t model_id, calib_id, *opt_ids;
    measure_tensor *t;
    int nt;
    uint8_t *done;            /* [nt][opts->n]: 1 measured, 2 skipped (skips()) */
    int ref;                  /* the probes' reference option, -1 without probes */
    meas_probe *probe;
    const hess_layer *hl;     /* the Hessians of the layer being visited */
    int failed;
    int threads;              /* workers of the units' parallel region */
    db_measurement *pending;  /* results not yet written */
    int n_pending;
    double last_flush, t0;
    meas_progress prog;
    meas_result *res;
} measure_run;

static int fail(measure_run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(measure_run *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, r->err_len, fmt, ap);
    va_end(ap);
    return -1;
}

static int agreed(measure_run *r, int rc)
{
    return par_agree(rc, r->err, r->err_len);
}

static void report(measure_run *r, const char *phase)
{
    if (par_rank() != 0) return; /* rank 0 speaks for the job */
    r->prog.phase = phase;
    r->prog.elapsed = util_now_s() - r->t0;
    if (r->p->progress) r->p->progress(r->p->progress_ctx, &r->prog);
}

void meas_params_init(meas_params *p)
{
    memset(p, 0, sizeof *p);
    p->rows = 16;
    p->ctx = 512;
    p->damp = 0.01;
}

/* ==== Setup: model, tensors, options ==== */

/* The quantizable tensors: q, k, v, o, gate, up, down of every layer, then the head. */
static int list_tensors(measure_run *r)
{
    const mdl_config *c = mdl_get_config(r->file);
    r->nt = c->n_layers * LAY_HEAD + 1;
    if (!(r->t = calloc((size_t)r->nt, sizeof *r->t))) return fail(r, "out of memory");
    for (int i = 0; i < r->nt; i++) {
        measure_tensor *t = &r->t[i];
        t->layer = i / LAY_HEAD;
        t->cls = i == r->nt - 1 ? LAY_HEAD : (lay_class)(i % LAY_HEAD);
        rt_tensor_name(c, t->layer, t->cls, t->name, sizeof t->name);
        const mdl_tensor *mt = mdl_find(r->file, t->name);
        if (!mt) return fail(r, "%s: tensor %s is missing", mdl_path(r->file), t->name);
        if (mt->n_dims != 2) return fail(r, "%s: tensor %s has %d dimensions, not 2", mdl_path(r->file), t->name, mt->n_dims);
        t->rows = mt->shape[0], t->cols = mt->shape[1];
        t->src_type = mdl_tensor_stored_ggml(mt);
        t->src_blocks = t->src_type >= 0 ? mt->data : NULL;
    }
    return 0;
}

/* Invariant 7: the default set gains the source's own 32-wide block types, which
 * bitplan's file can hold as they are (lay_ggml_packable). */
static int add_source_options(measure_run *r)
{
    for (int i = 0; i < r->nt; i++) {
        lay_option o;
        if (r->t[i].src_type < 0 || !lay_ggml_packable(r->t[i].src_type)) continue;
        lay_ggml_option(r->t[i].src_type, &o);
        if (opt_set_add(&r->own_opts, &o) < 0) return fail(r, "out of memory");
    }
    return 0;
}

/* 1 if option o of tensor t is the source's own encoding: its blocks are copied,
 * not quantized again. */
static int as_stored(const measure_tensor *t, const lay_option *o)
{
    return t->src_type >= 0 && lay_option_ggml(o) == t->src_type;
}

/* 1 if option o skips tensor t: a ggml block type whose block does not divide the
 * tensor's columns (llama.cpp falls back to a 32-wide type there; so does the
 * allocator, which sees no measurement of the pair), or a rotation whose block
 * does not. */
static int skips(const measure_run *r, int o, int t)
{
    const lay_option *op = &r->opts->v[o];
    const lay_ggml_traits *g = lay_ggml_traits_of(lay_option_ggml(op));
    return (g && r->t[t].cols % g->block != 0) || (op->rot && r->t[t].cols % op->rot != 0);
}

/* Invariant 1: every option must apply to every tensor (except the pairs that
 * skips() names), and every tensor must have an option. */
static int check_options(measure_run *r)
{
    if (r->opts->n <= 0) return fail(r, "the option set is empty");
    for (int i = 0; i < r->nt; i++) {
        int usable = 0;
        for (int o = 0; o < r->opts->n; o++) {
            char why[160];
            if (skips(r, o, i)) continue;
            if (lay_option_check(&r->opts->v[o], r->t[i].rows, r->t[i].cols, why, sizeof why))
                return fail(r, "option \"%s\" cannot apply to %s (%lldx%lld): %s", r->opts->v[o].name, r->t[i].name,
                            (long long)r->t[i].rows, (long long)r->t[i].cols, why);
            usable++;
        }
        if (!usable)
            return fail(r, "no option of the set applies to %s (%lldx%lld): its columns are not a multiple of any "
                        "option's block", r->t[i].name, (long long)r->t[i].rows, (long long)r->t[i].cols);
    }
    return 0;
}

/* The plain 4-bit option with groups of 128 if the set has it, else the option
 * whose bits per weight over all tensors is nearest 4 (the first of equals) among
 * those that apply to every tensor; -1 if none does. */
static int pick_reference(const measure_run *r)
{
    int best = -1;
    double best_d = INFINITY;
    for (int o = 0; o < r->opts->n; o++) {
        const lay_option *op = &r->opts->v[o];
        if (op->rot || op->awq) continue; /* the probes' reference is a plain option */
        if (op->bits_lo == 4 && op->bits_hi == 4 && op->group == 128 && op->scale_fmt == LAY_SCALE_F16_Z8) return o;
        int everywhere = 1;
        for (int i = 0; i < r->nt; i++) everywhere &= !skips(r, o, i);
        if (!everywhere) continue;
        double bits = 0, n = 0;
        for (int i = 0; i < r->nt; i++)
            bits += (double)lay_tensor_bits(op, r->t[i].rows, r->t[i].cols), n += (double)(r->t[i].rows * r->t[i].cols);
        if (fabs(bits / n - 4.0) < best_d) best_d = fabs(bits / n - 4.0), best = o;
    }
    return best;
}

/* Invariant 2: the calibration key. */
static int calib_key(measure_run *r, const char *model_hash, char key[65])
{
    size_t cap = 1024 + (size_t)r->opts->n * 64, n = 0;
    char *s = malloc(cap);
    if (!s) return fail(r, "out of memory");
    n += (size_t)snprintf(s + n, cap - n, "bitplan measure v1\nmodel %s\nsources %s\nrows %d\nctx %d\ntokenizer %s\ndamp %.17g\n",
                          model_hash, r->cal.sources_hash, r->cal.rows, r->cal.ctx, r->cal.tokenizer, r->p->damp);
    for (int o = 0; o < r->opts->n; o++) {
        const lay_option *op = &r->opts->v[o];
        n += (size_t)snprintf(s + n, cap - n, "option %d %d %.9g %d %d", op->bits_lo, op->bits_hi,
                              (double)op->hi_share, (int)op->group, (int)op->scale_fmt);
        /* a rotation (and its seed) is part of the option; plain options keep their old text */
        if (op->rot) n += (size_t)snprintf(s + n, cap - n, " rot %d seed %u", op->rot, LAY_ROT_SEED);
        n += (size_t)snprintf(s + n, cap - n, "\n");
    }
    if (r->p->fast_error) n += (size_t)snprintf(s + n, cap - n, "error fast\n"); /* other numbers: another key */
    n += (size_t)snprintf(s + n, cap - n, "grid search 0.5 to 4 bits\n"); /* gptq.c's searched ranges: not min/max's numbers */
    mdl_sha256_of(s, n, key);
    free(s);
    return 0;
}

static int open_model(measure_run *r, const char *path, const char *const *calib_paths, int n_calib)
{
    const meas_params *p = r->p;
    if (mdl_open(path, &r->file, r->err, r->err_len)) return -1;
    if (mdl_is_packed(r->file))
        return fail(r, "%s is a bitplan packed file: measure the model it was packed from (GGUF or safetensors)", path);
    const mdl_config *c = mdl_get_config(r->file);
    if (p->ctx > c->max_ctx && c->max_ctx > 0)
        return fail(r, "--ctx %d is longer than the model's context (%d)", p->ctx, c->max_ctx);
    if (list_tensors(r) || (r->opts == &r->own_opts && add_source_options(r)) || check_options(r)) return -1;
    tok_tokenizer *tok = mdl_tokenizer(r->file, r->err, r->err_len);
    if (!tok) return -1;
    return calib_load(tok, calib_paths, n_calib, p->rows, p->ctx, &r->cal, r->err, r->err_len);
}

/* ==== Setup: the database ==== */

static int record_tensors(measure_run *r)
{
    for (int i = 0; i < r->nt; i++) {
        measure_tensor *t = &r->t[i];
        db_tensor_info ti = {t->name, t->cls == LAY_HEAD ? -1 : t->layer, lay_class_name(t->cls),
                             hess_input_name(rt_class_input(t->cls)), t->rows, t->cols};
        if (db_tensor_upsert(r->db, r->model_id, &ti, &t->db_id)) return -1;
    }
    return 0;
}

static int record_options(measure_run *r)
{
    for (int o = 0; o < r->opts->n; o++) {
        const lay_option *op = &r->opts->v[o];
        if (db_option_upsert(r->db, op, &r->opt_ids[o]) || db_calib_add_option(r->db, r->calib_id, r->opt_ids[o])) return -1;
    }
    return 0;
}

/* Model, tensors, calibration and option set, in one transaction. */
static int record_setup(measure_run *r, const char *model_hash, int *calib_done)
{
    const mdl_config *c = mdl_get_config(r->file);
    sb_buf json = {0};
    mdl_config_json(&json, c);
    int64_t n_params = 0;
    for (int i = 0; i < mdl_tensor_count(r->file); i++) n_params += mdl_tensor_at(r->file, i)->n_elems;
    db_model_info mi = {model_hash, mdl_path(r->file), c->arch, json.s, n_params};
    db_calib_info ci = {r->res->calib_key, r->cal.sources_json, r->cal.rows, r->cal.ctx, r->cal.tokenizer, r->p->damp};
    if (json.oom || !(r->opt_ids = calloc((size_t)r->opts->n, sizeof *r->opt_ids))) {
        free(json.s);
        return fail(r, "out of memory");
    }
    int rc = db_begin(r->db);
    if (!rc) rc = db_model_upsert(r->db, &mi, &r->model_id) || record_tensors(r) ||
                  db_calib_find_or_create(r->db, r->model_id, &ci, &r->calib_id, calib_done) || record_options(r) ||
                  db_commit(r->db);
    free(json.s);
    if (rc) {
        db_rollback(r->db);
        return fail(r, "%s", db_errmsg(r->db));
    }
    return 0;
}

static int tensor_index(const measure_run *r, int64_t db_id)
{
    for (int i = 0; i < r->nt; i++)
        if (r->t[i].db_id == db_id) return i;
    return -1;
}

static int option_index(const measure_run *r, int64_t db_id)
{
    for (int o = 0; o < r->opts->n; o++)
        if (r->opt_ids[o] == db_id) return o;
    return -1;
}

/* Reads which pairs and probes are done into done[] and the probe flags (rank 0). */
static int read_done(measure_run *r)
{
    int no = r->opts->n;
    int64_t *pairs = NULL, n = 0, *probed = NULL, np = 0;
    if (db_measured_pairs(r->db, r->calib_id, &pairs, &n) ||
        (r->p->kl_probe && db_kl_probed_tensors(r->db, r->calib_id, &probed, &np))) {
        free(pairs);
        return fail(r, "%s", db_errmsg(r->db));
    }
    for (int t = 0; t < r->nt; t++)
        for (int o = 0; o < no; o++) r->done[t * no + o] = skips(r, o, t) ? 2 : 0;
    for (int64_t i = 0; i < n; i++) {
        int t = tensor_index(r, pairs[2 * i]), o = option_index(r, pairs[2 * i + 1]);
        if (t >= 0 && o >= 0 && !r->done[t * no + o]) r->done[t * no + o] = 1;
    }
    for (int i = 0; i < r->nt; i++) r->t[i].probe = r->p->kl_probe;
    for (int64_t i = 0; i < np; i++) {
        int t = tensor_index(r, probed[i]);
        if (t >= 0 && r->t[t].probe) r->t[t].probe = 0;
    }
    free(pairs), free(probed);
    return 0;
}

/* What is left to do, from done[] and the probe flags (every rank). */
static void tally_done(measure_run *r)
{
    int no = r->opts->n;
    for (int i = 0; i < r->nt; i++) {
        r->t[i].todo = 0;
        for (int o = 0; o < no; o++) {
            r->t[i].todo += !r->done[i * no + o];
            r->res->skipped += r->done[i * no + o] == 1;
        }
        r->prog.units_total += r->t[i].todo;
        r->prog.tensors_done += r->t[i].todo == 0;
        r->prog.probes_total += r->t[i].probe;
    }
    r->prog.tensors_total = r->nt;
}

/* Rank 0's view of the database on every rank: the ids, what is done, what to
 * probe. rc: this rank's setup so far. */
static int share_setup(measure_run *r, int rc)
{
    int no = r->opts->n, nt = r->nt;
    if (agreed(r, rc)) return -1;
    int64_t *ids = malloc((size_t)(nt + 2) * sizeof *ids);
    uint8_t *probe = malloc((size_t)nt);
    if (!r->opt_ids) r->opt_ids = calloc((size_t)no, sizeof *r->opt_ids);
    rc = !ids || !probe || !r->opt_ids ? fail(r, "out of memory") : 0;
    for (int i = 0; !rc && i < nt; i++) ids[i] = r->t[i].db_id, probe[i] = (uint8_t)r->t[i].probe;
    if (!rc) ids[nt] = r->model_id, ids[nt + 1] = r->calib_id;
    if (!agreed(r, rc)) {
        rc = par_bcast(ids, (size_t)(nt + 2) * sizeof *ids, 0) || par_bcast(probe, (size_t)nt, 0) ||
             par_bcast(r->opt_ids, (size_t)no * sizeof *r->opt_ids, 0) || par_bcast(r->done, (size_t)nt * (size_t)no, 0)
                 ? fail(r, "cannot receive rank 0's view of the database") : 0;
        for (int i = 0; !rc && i < nt; i++) r->t[i].db_id = ids[i], r->t[i].probe = probe[i];
        if (!rc) r->model_id = ids[nt], r->calib_id = ids[nt + 1];
        rc = agreed(r, rc);
    } else rc = -1;
    free(ids), free(probe);
    return rc;
}

/* Every rank must measure what rank 0 records: the same model, text, tokenizer and
 * options, so the same calibration key. */
static int same_key_as_root(measure_run *r)
{
    char root[65];
    memcpy(root, r->res->calib_key, sizeof root);
    if (par_bcast(root, sizeof root, 0)) return fail(r, "cannot receive rank 0's calibration key");
    if (memcmp(root, r->res->calib_key, sizeof root))
        return fail(r, "its model, calibration text or options differ from rank 0's (calibration %.12s, not %.12s)",
                    r->res->calib_key, root);
    return 0;
}

/* ==== Units (invariant 4) ==== */

/* Writes the pending results in one transaction (rank 0; other ranks keep theirs
 * for the end of the group). Called inside the critical section or after the
 * parallel region. */
static int flush(measure_run *r)
{
    if (!r->db) return 0;
    if (r->n_pending && db_measurements_insert(r->db, r->calib_id, r->pending, r->n_pending))
        return fail(r, "%s", db_errmsg(r->db));
    r->res->measured += r->n_pending;
    r->n_pending = 0;
    r->last_flush = util_now_s();
    return 0;
}

/* The source's own blocks as the quantized tensor, and their error: zero when the
 * model's fp32 weights are the blocks decoded, as they should be; measured, so
 * that a decoder that disagreed would show. */
static int stored_unit(const measure_tensor *t, const gptq_prep *pp, const lay_option *o, lay_qtensor *q,
                       gptq_stats *st, char *err, size_t err_len)
{
    double t0 = util_now_s();
    memset(st, 0, sizeof *st);
    if (lay_qtensor_of_blocks(q, t->rows, t->cols, o, t->src_blocks))
        return snprintf(err, err_len, "out of memory for a %lldx%lld tensor", (long long)t->rows, (long long)t->cols), -1;
    if (gptq_error_of(t->w, pp, q, t->energy, &st->rel_err, err, err_len)) return lay_qtensor_free(q), -1;
    st->seconds = util_now_s() - t0;
    return 0;
}

/* One (tensor, option): GPTQ, RTN, and the result, with the preparation of the
 * option's slot. Runs in a worker thread. */
static int run_unit(measure_run *r, const measure_unit *u, gptq_prep *const *prep, db_measurement *out, char *err, size_t err_len)
{
    measure_tensor *t = &r->t[u->t];
    const lay_option *o = &r->opts->v[u->o];
    const gptq_prep *pp = prep[gptq_prep_slot(o)];
    lay_qtensor q;
    gptq_stats st;
    double rtn = 0;
    int stored = as_stored(t, o);
    if (stored ? stored_unit(t, pp, o, &q, &st, err, err_len)
               : gptq_quantize_option(t->w, t->rows, prep, o, t->energy, &q, &st, u->measure ? &rtn : NULL, err, err_len))
        return -1;
    if (u->keep) {
        t->probe_wq = malloc((size_t)(t->rows * t->cols) * sizeof *t->probe_wq);
        if (t->probe_wq) lay_qtensor_dequant(&q, t->probe_wq), t->probe_rel = st.rel_err;
    }
    lay_qtensor_free(&q);
    if (u->keep && !t->probe_wq) return snprintf(err, err_len, "out of memory"), -1;
    if (!u->measure) return 0;
    if (stored && rtn_error_prepared(t->w, t->rows, pp, o, t->energy, &rtn, err, err_len)) return -1;
    *out = (db_measurement){t->db_id, r->opt_ids[u->o], lay_tensor_bits(o, t->rows, t->cols), st.rel_err, rtn, st.seconds};
    return 0;
}

/* Records a unit's outcome: the result (written at most every few seconds), the
 * progress, or the first error. One thread at a time. */
static void unit_done(measure_run *r, const measure_unit *u, int rc, const db_measurement *m, const char *err)
{
    if (rc) {
        if (!r->failed) fail(r, "%s, option \"%s\": %s", r->t[u->t].name, r->opts->v[u->o].name, err);
#pragma omp atomic write
        r->failed = 1;
        return;
    }
    if (!u->measure) return;
    r->pending[r->n_pending++] = *m;
    r->prog.units_done++;
    if (--r->t[u->t].todo == 0) r->prog.tensors_done++;
    if (util_now_s() - r->last_flush >= MEAS_FLUSH_SECONDS && flush(r)) {
#pragma omp atomic write
        r->failed = 1;
    }
    report(r, "measure");
}

static int unit_cost_desc(const void *a, const void *b, void *ctx)
{
    const measure_unit *x = a, *y = b;
    (void)ctx;
    if (x->cost != y->cost) return x->cost > y->cost ? -1 : 1;
    return x->t != y->t ? x->t - y->t : x->o - y->o;
}

/* Multiply-adds of a unit: GPTQ, RTN and their errors, about 3 rows cols^2; with
 * its probe, the probe rows through the rest of the model. */
static double unit_cost(const measure_run *r, const measure_unit *u)
{
    const measure_tensor *t = &r->t[u->t];
    double work = (u->measure ? 3.0 : 1.0) * (double)t->rows * (double)t->cols * (double)t->cols;
    if (r->opts->v[u->o].awq) work *= GPTQ_AWQ_ALPHAS; /* GPTQ at every alpha */
    if (u->keep) {
        double rest = 0;
        for (int i = t->layer * LAY_HEAD; i < r->nt; i++) rest += (double)r->t[i].rows * (double)r->t[i].cols;
        work += (double)MEAS_PROBE_ROWS * MEAS_PROBE_CTX * rest;
    }
    return work;
}

/* Invariant 6: the units of u[0..n) that this rank runs (par_deal: every rank
 * deals the same hands), moved to the front; their count, or -1. */
static int deal_units(measure_unit *u, int n)
{
    if (par_size() == 1) return n;
    double *cost = malloc((size_t)n * sizeof *cost);
    int *owner = malloc((size_t)n * sizeof *owner), k = 0;
    if (!cost || !owner) k = -1;
    for (int i = 0; k == 0 && i < n; i++) cost[i] = u[i].cost;
    if (k == 0 && par_deal(cost, n, owner)) k = -1;
    for (int i = 0; k >= 0 && i < n; i++)
        if (owner[i] == par_rank()) u[k++] = u[i];
    free(cost), free(owner);
    return k;
}

/* The units of the tensors of [t0, t1) that read input g and that this run must
 * do, most expensive first. */
static measure_unit *plan_units(measure_run *r, int t0, int t1, rt_input g, int *n)
{
    int no = r->opts->n, k = 0;
    measure_unit *u = malloc((size_t)(t1 - t0) * (size_t)(no + 1) * sizeof *u);
    if (!u) return NULL;
    for (int t = t0; t < t1; t++) {
        if (rt_class_input(r->t[t].cls) != g) continue;
        for (int o = 0; o < no; o++)
            if (!r->done[t * no + o]) u[k++] = (measure_unit){t, o, 1, r->t[t].probe && o == r->ref, 0};
        if (r->t[t].probe && r->done[t * no + r->ref]) u[k++] = (measure_unit){t, r->ref, 0, 1, 0};
    }
    for (int i = 0; i < k; i++) u[i].cost = unit_cost(r, &u[i]);
    qsort_r(u, (size_t)k, sizeof *u, unit_cost_desc, r);
    *n = k;
    return u;
}

static rt_linear *linear_of(measure_run *r, const measure_tensor *t)
{
    return t->cls == LAY_HEAD ? r->m->head : r->m->layers[t->layer].lin[t->cls];
}

/* Holds the weights of the tensors of [t0, t1) that read input g as fp32, and
 * computes their energies: one input group's tensors at a time are in memory. */
static int load_weights(measure_run *r, int t0, int t1, rt_input g)
{
    for (int i = t0; i < t1; i++) {
        measure_tensor *t = &r->t[i];
        rt_linear *l = linear_of(r, t);
        if (rt_class_input(t->cls) != g) continue;
        if (rt_linear_hold(l)) return fail(r, "out of memory for %s as fp32", t->name);
        t->w = l->dense;
        t->energy = gptq_weight_energy(t->w, t->rows, t->cols, r->hl->h[g]);
        if (isnan(t->energy)) return fail(r, "out of memory for %s", t->name);
    }
    return 0;
}

static void forget_weights(measure_run *r, int t0, int t1)
{
    for (int i = t0; i < t1; i++) {
        if (!r->t[i].w) continue;
        rt_linear_release(linear_of(r, &r->t[i]));
        r->t[i].w = NULL;
    }
}

/* The preparations (gptq_prep_slot) that a unit of u[0..n) needs. */
static int prepare_group(measure_run *r, rt_input g, const measure_unit *u, int n, gptq_prep **prep)
{
    gptq_params gp;
    gptq_params_init(&gp);
    gp.damp = r->p->damp;
    gp.fast_error = r->p->fast_error;
    gp.borrow_h = 1; /* the walk's Hessian lives until the visit returns */
    for (int slot = 0; slot < GPTQ_PREP_SLOTS; slot++) {
        int wanted = 0;
        for (int i = 0; i < n; i++) wanted |= gptq_prep_wanted(&r->opts->v[u[i].o], slot);
        char why[256];
        if (wanted && gptq_prepare_slot(r->hl->h[g], r->hl->cols[g], slot, &gp, &prep[slot], why, sizeof why))
            return fail(r, "%s: %s", r->t[u[0].t].name, why);
    }
    return 0;
}

/* Units at once: one a thread, as long as their working memory (GPTQ's and the
 * RTN error's, about MEAS_UNIT_BYTES a weight) stays within MEAS_UNITS_BUDGET.
 * A large head (49152 x 4096: 2.4 GB a unit) then runs one unit at a time. */
#define MEAS_UNIT_BYTES 12
#define MEAS_UNITS_BUDGET ((int64_t)2 << 30)

static int units_at_once(const measure_run *r, const measure_unit *u, int n)
{
    int64_t most = 0;
    for (int i = 0; i < n; i++) {
        const measure_tensor *t = &r->t[u[i].t];
        if (t->rows * t->cols > most) most = t->rows * t->cols;
    }
    if (most == 0) return 1; /* no units: a rank whose share of a resumed group is empty */
    int64_t fit = MEAS_UNITS_BUDGET / (most * MEAS_UNIT_BYTES);
    return fit < 1 ? 1 : fit < r->threads ? (int)fit : r->threads;
}

static void run_parallel(measure_run *r, const measure_unit *u, int n, gptq_prep *const *prep)
{
    int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1); /* one unit per thread; GPTQ's BLAS calls stay serial */
#pragma omp parallel for schedule(dynamic, 1) num_threads(units_at_once(r, u, n))
    for (int i = 0; i < n; i++) {
        int failed;
#pragma omp atomic read
        failed = r->failed;
        if (failed || util_interrupted()) continue; /* an OpenMP loop cannot break: skip the rest */
        char err[512] = "";
        db_measurement m;
        int rc = run_unit(r, &u[i], prep, &m, err, sizeof err);
#pragma omp critical(meas_unit_done)
        unit_done(r, &u[i], rc, &m, err);
    }
    openblas_set_num_threads(blas_threads);
}

/* Rank 0 receives the other ranks' results of the group and writes them (in one
 * transaction); the others send theirs. */
static int collect_results(measure_run *r)
{
    db_measurement *all = NULL;
    size_t bytes = 0, mine = par_rank() && r->pending ? (size_t)r->n_pending * sizeof *r->pending : 0;
    if (par_gather(r->pending, mine, (void **)&all, &bytes)) return fail(r, "cannot collect the other ranks' results");
    if (par_rank()) return r->n_pending = 0, 0;
    int n = (int)(bytes / sizeof *all), rc = 0;
    if (n && db_measurements_insert(r->db, r->calib_id, all, n)) rc = fail(r, "%s", db_errmsg(r->db));
    for (int i = 0; !rc && i < n; i++) {
        int t = tensor_index(r, all[i].tensor_id);
        r->res->measured++, r->prog.units_done++;
        if (t >= 0 && --r->t[t].todo == 0) r->prog.tensors_done++;
    }
    free(all);
    if (!rc && n) report(r, "measure");
    return rc;
}

/* Measures the tensors of [t0, t1) that read input g. Their weights as fp32 and
 * their GPTQ preparation (a Cholesky factor as large as the Hessian) exist only
 * while they run, so a layer holds one group's at a time. Every rank prepares the
 * whole group, runs its share of the units, and agrees on the outcome. */
static int run_group(measure_run *r, int t0, int t1, rt_input g)
{
    int n = 0, rc = -1;
    gptq_prep *prep[GPTQ_PREP_SLOTS] = {NULL};
    measure_unit *u = plan_units(r, t0, t1, g, &n);
    if (agreed(r, u ? 0 : fail(r, "out of memory"))) return free(u), -1;
    if (n == 0) { free(u); return 0; }
    int mine = deal_units(u, n);
    r->pending = malloc((size_t)n * sizeof *r->pending);
    if (!r->pending || mine < 0) fail(r, "out of memory");
    else if (!mine || (!load_weights(r, t0, t1, g) && !prepare_group(r, g, u, mine, prep))) {
        run_parallel(r, u, mine, prep);
        rc = r->failed ? -1 : 0;
        if (flush(r)) rc = -1; /* what finished is kept even after a failure */
        if (!rc && util_interrupted()) rc = fail(r, "interrupted");
    }
    for (int i = 0; i < GPTQ_PREP_SLOTS; i++) gptq_prep_free(prep[i]);
    forget_weights(r, t0, t1);
    if (collect_results(r)) rc = -1; /* even after a failure: the other ranks wait for it */
    free(r->pending), r->pending = NULL;
    free(u);
    return agreed(r, rc);
}

/* Measures tensors [t0, t1) (one layer, or the head) with the Hessians at hand. */
static int run_units(measure_run *r, int t0, int t1)
{
    int rc = 0;
    for (int g = 0; !rc && g < RT_INPUT_COUNT; g++) rc = run_group(r, t0, t1, (rt_input)g);
    return rc;
}

/* ==== Probes ==== */

/* Rank 0 writes every rank's probe results (in rank order); 0 or -1. */
static int collect_probes(measure_run *r, const db_kl_probe *kp, int n)
{
    db_kl_probe *all = NULL;
    size_t bytes = 0;
    if (par_gather(kp, (size_t)n * sizeof *kp, (void **)&all, &bytes)) return fail(r, "cannot collect the probes");
    int rc = 0;
    for (size_t i = 0; !rc && all && i < bytes / sizeof *all; i++) {
        if (db_kl_probe_insert(r->db, r->calib_id, &all[i])) rc = fail(r, "%s", db_errmsg(r->db));
        else r->res->probed++, r->prog.probes_done++, report(r, "probe");
    }
    free(all);
    return rc;
}

/* Probes the tensors of [t0, t1) that this run probes and this rank quantized at
 * the reference option, together (probe.c); rank 0 writes them all. */
static int run_probes(measure_run *r, int t0, int t1)
{
    lay_class cls[LAY_N_CLASSES];
    float *wq[LAY_N_CLASSES];
    int idx[LAY_N_CLASSES], n = 0, rc = 0;
    for (int i = t0; i < t1; i++) {
        measure_tensor *t = &r->t[i];
        if (!t->probe) continue;
        assert((t->probe_wq || par_size() > 1) && n < LAY_N_CLASSES);
        if (!t->probe_wq) continue; /* another rank's */
        idx[n] = i, cls[n] = t->cls, wq[n++] = t->probe_wq;
        t->probe_wq = NULL;
    }
    db_kl_probe kp[LAY_N_CLASSES];
    if (n) {
        double t_start = util_now_s(), kld[LAY_N_CLASSES];
        if (probe_tensors(r->probe, n, cls, wq, kld)) rc = fail(r, "out of memory probing %s", r->t[idx[0]].name);
        double each = (util_now_s() - t_start) / n;
        for (int k = 0; !rc && k < n; k++) {
            measure_tensor *t = &r->t[idx[k]];
            kp[k] = (db_kl_probe){t->db_id, r->opt_ids[r->ref], kld[k], t->probe_rel, each};
        }
    }
    if (agreed(r, rc)) return -1;
    return agreed(r, collect_probes(r, kp, n));
}

/* ==== The pass: visits of the calibration walk ==== */

/* Tensors of layer l (n_layers: the head) are [t0, t1). */
static void layer_tensors(const measure_run *r, int l, int *t0, int *t1)
{
    *t0 = l == r->m->cfg.n_layers ? r->nt - 1 : l * LAY_HEAD;
    *t1 = l == r->m->cfg.n_layers ? r->nt : *t0 + LAY_HEAD;
}

static int layer_needs_work(void *ctx, int l)
{
    const measure_run *r = ctx;
    int t0, t1;
    layer_tensors(r, l, &t0, &t1);
    for (int i = t0; i < t1; i++)
        if (r->t[i].todo || r->t[i].probe) return 1;
    return 0;
}

static int visit_layer(void *ctx, int l, const hess_layer *hl, char *err, size_t err_len)
{
    measure_run *r = ctx;
    int t0, t1;
    (void)err, (void)err_len; /* r->err is the caller's err */
    layer_tensors(r, l, &t0, &t1);
    r->hl = hl;
    int rc = run_units(r, t0, t1) || run_probes(r, t0, t1) ? -1 : 0;
    r->hl = NULL;
    return rc;
}

static int passed_layer(void *ctx, int l, char *err, size_t err_len)
{
    measure_run *r = ctx;
    (void)err, (void)err_len;
    if (r->probe && l < r->m->cfg.n_layers && probe_advance(r->probe)) return fail(r, "out of memory for the KL probe");
    return 0;
}

static void walk_progress(void *ctx, const char *phase, int layer)
{
    measure_run *r = ctx;
    r->prog.layer = layer;
    report(r, phase);
}

static int run_pass(measure_run *r)
{
    int rc = r->ref >= 0 && probe_new(r->m, &r->cal, &r->probe) ? fail(r, "out of memory for the KL probe") : 0;
    if (agreed(r, rc)) return -1;
    walk_params w = {.m = r->m, .cal = &r->cal, .wants = layer_needs_work, .visit = visit_layer,
                     .passed = passed_layer, .progress = walk_progress, .ctx = r};
    if (walk_run(&w, r->err, r->err_len)) return -1;
    if (r->db && db_calib_mark_done(r->db, r->calib_id)) return fail(r, "%s", db_errmsg(r->db));
    return 0;
}

static int everything_done(const measure_run *r)
{
    return r->prog.units_total == 0 && r->prog.probes_total == 0;
}

/* BLAS gets the threads for the forward pass; OpenMP outside the units' region
 * gets one, because idle OpenMP workers spinning after the forward's element-wise
 * loops would take the cores from the BLAS threads (pthreads) that follow them. */
static void apply_threads(measure_run *r)
{
    r->threads = r->p->threads > 0 ? r->p->threads : omp_get_max_threads();
    if (r->p->threads > 0) openblas_set_num_threads(r->p->threads);
    omp_set_num_threads(1);
}

static void cleanup(measure_run *r)
{
    if (r->m) rt_model_free(r->m); /* closes the file */
    else mdl_close(r->file);
    probe_free(r->probe);
    for (int i = 0; r->t && i < r->nt; i++) free(r->t[i].probe_wq);
    free(r->t), free(r->done), free(r->opt_ids);
    calib_free(&r->cal);
    opt_set_free(&r->own_opts);
    db_close(r->db);
    if (r->threads > 0) omp_set_num_threads(r->threads); /* as apply_threads found it, or as asked */
}

/* Rank 0: the database, created if absent; the model, tensors, calibration and
 * options recorded; the calibration claimed; what is done read. */
static int open_database(measure_run *r, const char *db_path, const char *hash, int *calib_done)
{
    if (db_open(db_path, DB_OPEN_CREATE, &r->db)) return fail(r, "%s", db_errmsg(r->db));
    if (record_setup(r, hash, calib_done)) return -1;
    if (db_calib_claim(r->db, r->calib_id, "bitplan")) return fail(r, "%s", db_errmsg(r->db));
    return read_done(r);
}

/* The model, its hash and the calibration key, the same on every rank. */
static int open_everywhere(measure_run *r, const char *model_path, const char *const *calib_paths, int n_calib)
{
    if (agreed(r, open_model(r, model_path, calib_paths, n_calib))) return -1;
    const char *hash = mdl_content_hash(r->file);
    int rc = hash ? calib_key(r, hash, r->res->calib_key) : fail(r, "%s: cannot hash the model file", model_path);
    if (hash) snprintf(r->res->model_hash, sizeof r->res->model_hash, "%s", hash);
    if (agreed(r, rc) || agreed(r, same_key_as_root(r))) return -1;
    rc = rt_model_open(r->file, 1, r->p->resident ? RT_OPEN_RESIDENT : 0, &r->m, r->err, r->err_len);
    if (!rc && !(r->done = calloc((size_t)r->nt * (size_t)r->opts->n, 1))) rc = fail(r, "out of memory");
    return agreed(r, rc);
}

/* The ranks' traffic and waiting, summed on rank 0 (collective). */
static void job_stats(measure_run *r)
{
    meas_result *out = r->res;
    out->ranks = par_size();
    if (out->ranks > 1) out->sent_bytes = (double)par_job_stats(out->seconds, &out->wait_share);
}

int meas_run(const char *model_path, const char *const *calib_paths, int n_calib, const char *db_path,
             const meas_params *p, meas_result *out, char *err, size_t err_len)
{
    assert(model_path && calib_paths && n_calib > 0 && db_path && p && out && p->rows > 0 && p->ctx > 0);
    measure_run r = {.p = p, .err = err, .err_len = err_len, .ref = -1, .res = out};
    memset(out, 0, sizeof *out);
    r.t0 = r.last_flush = util_now_s();
    apply_threads(&r);
    if (p->options) r.opts = p->options;
    else opt_default_set(&r.own_opts), r.opts = &r.own_opts;
    int rc = -1, calib_done = 0;
    if (open_everywhere(&r, model_path, calib_paths, n_calib)) goto done;
    int opened = par_rank() == 0 ? open_database(&r, db_path, out->model_hash, &calib_done) : 0;
    if (share_setup(&r, opened)) goto done;
    tally_done(&r);
    out->calib_id = r.calib_id, out->n_tensors = r.nt, out->n_options = r.opts->n;
    if (p->kl_probe && (r.ref = pick_reference(&r)) < 0) {
        fail(&r, "--kl-probe needs an option that applies to every tensor");
        goto done;
    }
    if (p->kl_probe) snprintf(out->ref_option, sizeof out->ref_option, "%s", r.opts->v[r.ref].name);
    if (everything_done(&r)) {
        out->already_done = 1;
        rc = !r.db || calib_done || !db_calib_mark_done(r.db, r.calib_id) ? 0 : fail(&r, "%s", db_errmsg(r.db));
        goto done;
    }
    rc = run_pass(&r);
done:
    out->seconds = util_now_s() - r.t0;
    job_stats(&r);
    cleanup(&r);
    return rc;
}
