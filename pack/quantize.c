/*
 * pack/quantize.c — pack_model: a model file and a plan in, one packed file out.
 *
 * The pass, as invariants:
 *  1. Everything that can be refused is refused before any quantization: a plan
 *     for another model (content hash), a calibration source that changed since
 *     the measurement (SHA-256), an option that does not apply to its tensor, or
 *     a recorded cost that is not lay_tensor_bits.
 *  2. The calibration rows are the measurement's (calib_load with the same files,
 *     rows and ctx) and run through the measurement's calibration walk
 *     (measure/walk.c: one block held at a time, its Hessians collected while it
 *     runs); GPTQ uses the calibration's damping.
 *  3. Hessians are either the full-precision model's (PACK_HESS_FULL: the forward
 *     never sees a quantized weight, so the packed tensors are exactly the ones the
 *     measurement scored) or the partly quantized model's (PACK_HESS_SEQUENTIAL:
 *     after layer l is quantized its weights are replaced by the dequantized ones
 *     and the walk runs layer l again from its saved input, so layer l + 1 sees the
 *     quantization error of every layer before it, as EXL2 does; once the walk has
 *     passed layer l its own weights are put back and the copies freed). The
 *     embedding stays full precision in both modes.
 *  4. Every quantized tensor is written as its parts (values, scales, and zeros,
 *     mins, permutation as its option has them), whose sizes are lay_tensor_cost's
 *     by construction; every other tensor of the model file is written
 *     unquantized (1-D as F32, 2-D as F16). A tensor planned at the ggml block
 *     type its source stores it in is those blocks, copied ("as stored", as the
 *     measurement scored it), not quantized again.
 *  5. Each tensor's parts go to the writer as soon as they are packed, and the
 *     writer keeps them on disk, not in memory; the file appears under its name
 *     only when complete (pack_writer_write).
 *  6. On several ranks (par/, `mpirun`) the walk splits the rows as it does for
 *     the measurement, and each layer's planned tensors are dealt to the ranks by
 *     a fixed rule (par_deal, on GPTQ's work); GPTQ's result does not depend on
 *     where it runs. Each quantized tensor then goes from its rank, in tensor
 *     order, to rank 0, the only one that writes, which packs it as one process
 *     would, and in sequential mode to every rank, which runs its rows on it. So
 *     the file is one process's, byte for byte, for any number of ranks. Rank 0
 *     reads the plan and sends it to all; each rank checks its own model and text
 *     against the plan's hashes. Every step that can fail on one rank is agreed
 *     (par_agree).
 *  7. Round-to-nearest (pack_params.rtn) replaces 2 and 3: no calibration text,
 *     no walk; the layers are visited in order, each held as fp32 while its
 *     tensors are rounded (rtn_quantize, identity column order: without a
 *     Hessian no column is known to matter more), and its plan may come from no
 *     database at all (a uniform option, recorded in the file as plan 0 with
 *     hessians "none").
 * It never prints: progress goes to the caller's callback.
 */
#include "pack_int.h"

#include <assert.h>
#include <cblas.h>
#include <errno.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "db/db.h"
#include "measure/measure.h"
#include "par/par.h"
#include "runtime/runtime.h"
#include "util/util.h"

/* ==== State of one pass ==== */

typedef struct {
    char name[96];
    int layer;                  /* block index; n_layers for the head */
    lay_class cls;
    int64_t rows, cols;
    lay_option opt;
    int planned;                /* 1: the plan quantizes it */
    int owner;                  /* the rank that quantizes it (invariant 6) */
    lay_qtensor q;              /* the result, until it is packed */
    rt_linear *orig;            /* sequential: the model's own layer while the quantized one runs */
    int held;                   /* 1: its weights are held as fp32 (quantize_range) */
    const uint8_t *src_blocks;  /* its source's blocks when planned as stored (invariant 4), else NULL */
} pack_tensor;

typedef struct {
    const pack_params *p;
    char *err;
    size_t err_len;
    const char *db_path;
    int64_t plan_id;            /* asked for; 0 = the newest */
    db_pack_plan plan;
    mdl_model *file;            /* outlives the model (opened with own_file 0) */
    rt_model *m;
    calib_set cal;
    pack_tensor *t;                 /* [nt]: q k v o gate up down of every layer, then the head */
    int nt;
    const hess_layer *hl;       /* the Hessians of the layer being visited */
    int failed;
    pack_writer *w;             /* PACK_OUT_BITPLAN */
    pack_gguf *gguf;            /* PACK_OUT_GGUF */
    pack_stats *st;
    double t0;
} pack_run;

static int fail(pack_run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(pack_run *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, r->err_len, fmt, ap);
    va_end(ap);
    return -1;
}

/* Progress with the time left, extrapolated from the layers done (the head
 * counts as one). */
static void progress(pack_run *r, const char *phase, int layer)
{
    if (!r->p->progress) return;
    int total = r->m->cfg.n_layers + 1;
    double t = util_now_s() - r->t0;
    pack_progress at = {phase, layer, r->m->cfg.n_layers, t, layer > 0 ? t / layer * (total - layer) : 0};
    r->p->progress(r->p->progress_ctx, &at);
}

/* Hessians through the already quantized layers (invariant 3); never under RTN. */
static int sequential(const pack_run *r) { return !r->p->rtn && r->p->hessians == PACK_HESS_SEQUENTIAL; }

void pack_params_init(pack_params *p)
{
    memset(p, 0, sizeof *p);
    p->hessians = PACK_HESS_SEQUENTIAL;
}

/* ==== Setup (invariant 1) ==== */

static const db_pack_choice *find_choice(const db_pack_plan *p, const char *name)
{
    for (int i = 0; i < p->n_choices; i++)
        if (!strcmp(p->choices[i].name, name)) return &p->choices[i];
    return NULL;
}

/* The option of tensor t: the database plan's (*ch set), the uniform one of a
 * plan without a database, or NULL when the plan leaves t alone. */
static const lay_option *planned_option(const pack_run *r, const pack_tensor *t, const db_pack_choice **ch)
{
    *ch = NULL;
    if (!r->db_path) return t->cls == LAY_HEAD && r->p->uniform_head ? r->p->uniform_head : r->p->uniform;
    *ch = find_choice(&r->plan, t->name);
    return *ch ? &(*ch)->option.opt : NULL;
}

/* The plan's tensors against the model's linear layers. */
static int list_tensors(pack_run *r)
{
    const mdl_config *c = mdl_get_config(r->file);
    r->nt = c->n_layers * LAY_HEAD + 1;
    if (!(r->t = calloc((size_t)r->nt, sizeof *r->t))) return fail(r, "out of memory");
    int n_planned = 0;
    for (int i = 0; i < r->nt; i++) {
        pack_tensor *t = &r->t[i];
        t->layer = i / LAY_HEAD;
        t->cls = i == r->nt - 1 ? LAY_HEAD : (lay_class)(i % LAY_HEAD);
        rt_tensor_name(c, t->layer, t->cls, t->name, sizeof t->name);
        const mdl_tensor *mt = mdl_find(r->file, t->name);
        if (!mt || mt->n_dims != 2) return fail(r, "%s: tensor %s is missing or not 2-D", mdl_path(r->file), t->name);
        t->rows = mt->shape[0], t->cols = mt->shape[1];
        const db_pack_choice *ch;
        const lay_option *o = planned_option(r, t, &ch);
        if (!o) continue;
        char why[160];
        t->opt = *o;
        if (ch && (ch->rows != t->rows || ch->cols != t->cols))
            return fail(r, "plan %lld: %s is %lldx%lld in the database but %lldx%lld in %s", (long long)r->plan.plan_id,
                        t->name, (long long)ch->rows, (long long)ch->cols, (long long)t->rows, (long long)t->cols,
                        mdl_path(r->file));
        if (lay_option_check(&t->opt, t->rows, t->cols, why, sizeof why))
            return fail(r, "plan %lld: option \"%s\" cannot apply to %s: %s", (long long)r->plan.plan_id, t->opt.name,
                        t->name, why);
        if (r->p->rtn && (t->opt.rot || t->opt.awq))
            return fail(r, "--rtn: %s is planned at \"%s\", which %s its inputs for GPTQ's Hessian: round-to-nearest "
                        "takes options without h64, h128 or awq", t->name, t->opt.name, t->opt.rot ? "rotates" : "scales");
        if (r->p->out == PACK_OUT_BITPLAN && lay_option_ggml(&t->opt) >= 0 && !lay_ggml_packable(lay_option_ggml(&t->opt)))
            return fail(r, "plan %lld: %s is at \"%s\", a ggml block type only a GGUF file holds (bitplan's file "
                        "holds the 32-wide ones): write it with export-gguf", (long long)r->plan.plan_id, t->name, t->opt.name);
        if (ch && ch->bits != lay_tensor_bits(&t->opt, t->rows, t->cols))
            return fail(r, "plan %lld: %s at \"%s\" is recorded as %lld bits, but it stores %lld", (long long)r->plan.plan_id,
                        t->name, t->opt.name, (long long)ch->bits, (long long)lay_tensor_bits(&t->opt, t->rows, t->cols));
        t->planned = 1;
        if (lay_option_ggml(&t->opt) >= 0 && lay_option_ggml(&t->opt) == mdl_tensor_stored_ggml(mt)) t->src_blocks = mt->data;
        n_planned++;
    }
    if (r->db_path && n_planned != r->plan.n_choices)
        return fail(r, "plan %lld names %d tensors, of which only %d are linear layers of %s", (long long)r->plan.plan_id,
                    r->plan.n_choices, n_planned, mdl_path(r->file));
    return 0;
}

/* Invariant 6: each layer's planned tensors dealt to the ranks by GPTQ's work,
 * about rows x cols^2 multiply-adds. */
static int deal_tensors(pack_run *r)
{
    double cost[LAY_HEAD];
    int owner[LAY_HEAD];
    for (int t0 = 0, t1; t0 < r->nt; t0 = t1) {
        for (t1 = t0 + 1; t1 < r->nt && r->t[t1].layer == r->t[t0].layer; t1++) {}
        for (int i = t0; i < t1; i++)
            cost[i - t0] = r->t[i].planned ? (double)r->t[i].rows * (double)r->t[i].cols * (double)r->t[i].cols : 0;
        if (par_deal(cost, t1 - t0, owner)) return fail(r, "out of memory");
        for (int i = t0; i < t1; i++) r->t[i].owner = owner[i - t0];
    }
    return 0;
}

static int sha256_file(const char *path, char hex[65], char *err, size_t err_len)
{
    size_t n;
    char *text = util_read_file(path, UTIL_MAX_TEXT, &n, err, err_len);
    if (!text) return -1;
    mdl_sha256_of(text, n, hex);
    free(text);
    return 0;
}

/* Where a recorded source is now: its path, or, for a relative path that is not
 * there (databases before paths were recorded absolute), the same path taken from
 * the database's folder. */
static const char *find_source(const pack_run *r, const char *path, char *buf, size_t cap)
{
    if (path[0] == '/' || !access(path, F_OK)) return path;
    const char *slash = strrchr(r->db_path, '/');
    if (!slash) return path;
    if ((size_t)snprintf(buf, cap, "%.*s/%s", (int)(slash - r->db_path), r->db_path, path) >= cap) return path;
    return access(buf, F_OK) ? path : buf;
}

/* The calibration rows of the measurement; every source must be unchanged. */
static int load_calibration(pack_run *r)
{
    const char **paths = malloc((size_t)r->plan.n_sources * sizeof *paths);
    char (*found)[4096] = malloc((size_t)r->plan.n_sources * sizeof *found);
    if (!paths || !found) return free(paths), free(found), fail(r, "out of memory");
    int rc = 0;
    for (int i = 0; !rc && i < r->plan.n_sources; i++) {
        const db_pack_source *s = &r->plan.sources[i];
        char hex[65], why[4608];
        paths[i] = find_source(r, s->path, found[i], sizeof found[i]);
        if (sha256_file(paths[i], hex, why, sizeof why))
            rc = fail(r, "calibration source %s (the text the plan was measured on, needed again to pack)", why);
        else if (strcmp(hex, s->sha256))
            rc = fail(r, "calibration source %s changed since the measurement (sha256 %.12s..., was %.12s...)", s->path, hex,
                      s->sha256);
    }
    tok_tokenizer *tok = rc ? NULL : mdl_tokenizer(r->file, r->err, r->err_len);
    if (!rc && !tok) rc = -1;
    if (!rc) rc = calib_load(tok, paths, r->plan.n_sources, r->plan.rows, r->plan.ctx, &r->cal, r->err, r->err_len);
    free(paths), free(found);
    return rc;
}

/* A plan without a database (invariant 7): plan 0, its numbers filled in by
 * uniform_plan_bpw once the tensors are known. */
static int stub_plan(pack_run *r)
{
    db_pack_plan *p = &r->plan;
    snprintf(p->kind, sizeof p->kind, "bpw");
    if (!(p->sources_json = strdup("[]"))) return fail(r, "out of memory");
    return 0;
}

/* bpw over the blocks (the target, as allocate counts it) and over every quantized
 * tensor, of a plan without a database. */
static void uniform_plan_bpw(pack_run *r)
{
    double bits[2] = {0}, weights[2] = {0};
    for (int i = 0; i < r->nt; i++) {
        const pack_tensor *t = &r->t[i];
        if (!t->planned) continue;
        for (int all = 0; all < 2; all++)
            if (all || t->cls != LAY_HEAD)
                bits[all] += (double)lay_tensor_bits(&t->opt, t->rows, t->cols), weights[all] += (double)(t->rows * t->cols);
    }
    r->plan.target = r->plan.achieved_bpw = weights[0] ? bits[0] / weights[0] : 0;
    r->plan.file_bpw = weights[1] ? bits[1] / weights[1] : 0;
}

/* Rank 0 reads the plan (the only rank that opens the database). */
static int read_plan(pack_run *r)
{
    if (!r->db_path) return stub_plan(r);
    db_conn *d = NULL;
    int rc = db_open(r->db_path, DB_OPEN_READ, &d) || db_pack_plan_load(d, r->plan_id, &r->plan);
    if (rc) fail(r, "%s", d ? db_errmsg(d) : "cannot open the database");
    db_close(d);
    return rc ? -1 : 0;
}

/* Rank 0's plan to every rank (collective). A rank without room for it cannot keep
 * in step with the others: it ends the job. */
static int share_plan(pack_run *r)
{
    if (par_size() == 1) return 0;
    db_pack_plan *p = &r->plan, got = *p; /* its pointers are rank 0's: replaced below */
    size_t json = par_rank() == 0 ? strlen(p->sources_json) + 1 : 0; /* never NULL: "[]" at least */
    int rc = par_bcast(&got, sizeof got, 0) | par_bcast(&json, sizeof json, 0);
    if (par_rank() != 0) {
        *p = got;
        p->sources_json = malloc(json);
        p->sources = malloc((size_t)p->n_sources * sizeof *p->sources + 1);
        p->choices = malloc((size_t)p->n_choices * sizeof *p->choices + 1);
        if (!p->sources_json || !p->sources || !p->choices) par_abort(1);
    }
    rc |= par_bcast(p->sources_json, json, 0) | par_bcast(p->sources, (size_t)p->n_sources * sizeof *p->sources, 0) |
          par_bcast(p->choices, (size_t)p->n_choices * sizeof *p->choices, 0);
    return par_agree(rc ? fail(r, "cannot receive rank 0's plan") : 0, r->err, r->err_len);
}

/* The model (the plan's, by its content hash), its tensors and the calibration. */
static int open_model(pack_run *r, const char *model_path)
{
    if (mdl_open(model_path, &r->file, r->err, r->err_len)) return -1;
    const char *hash = mdl_content_hash(r->file);
    if (!hash) return fail(r, "%s: cannot hash the model file", model_path);
    if (!r->db_path) snprintf(r->plan.model_hash, sizeof r->plan.model_hash, "%s", hash);
    if (strcmp(hash, r->plan.model_hash))
        return fail(r, "%s is not the model plan %lld was made for (sha256 %.12s..., the plan's model %.12s...)", model_path,
                    (long long)r->plan.plan_id, hash, r->plan.model_hash);
    if (list_tensors(r) || deal_tensors(r) || (!r->p->rtn && load_calibration(r))) return -1;
    if (!r->db_path) uniform_plan_bpw(r);
    return 0;
}

/* ==== Quantizing and packing one tensor ==== */

static rt_linear **linear_of(pack_run *r, const pack_tensor *t)
{
    return t->cls == LAY_HEAD ? &r->m->head : &r->m->layers[t->layer].lin[t->cls];
}

/* Quantizes t from its weights, held as fp32 by quantize_range. */
static int quantize_one(pack_run *r, pack_tensor *t, gptq_prep *const *prep, char *err, size_t err_len)
{
    const rt_linear *l = *linear_of(r, t);
    assert(l->dense);
    if (t->src_blocks) { /* as stored (invariant 4) */
        if (lay_qtensor_of_blocks(&t->q, t->rows, t->cols, &t->opt, t->src_blocks))
            return snprintf(err, err_len, "out of memory"), -1;
        return 0;
    }
    if (r->p->rtn) return rtn_quantize(l->dense, t->rows, t->cols, NULL, &t->opt, &t->q, err, err_len);
    /* no stats: the error (about 40% of the time) is the measurement's business */
    return gptq_quantize_option(l->dense, t->rows, prep, &t->opt, -1.0, &t->q, NULL, NULL, err, err_len);
}

static int add_part(pack_run *r, const pack_tensor *t, const char *suffix, const char *dtype, int n_dims, int64_t d0, int64_t d1,
                    void *data, size_t bytes)
{
    char name[128];
    int64_t shape[2] = {d0, d1};
    snprintf(name, sizeof name, "%s%s", t->name, suffix);
    if (pack_writer_add(r->w, name, dtype, n_dims, shape, data, bytes))
        return fail(r, "adding %s: %s", name, pack_writer_strerror(r->w));
    return 0;
}

/* Packs t->q into its parts (invariant 4) and hands them to the writer. */
static int pack_one(pack_run *r, pack_tensor *t)
{
    if (r->gguf) {
        if (pack_gguf_write_planned(r->gguf, &t->q, r->err, r->err_len)) return -1;
        r->st->n_quantized++;
        r->st->quantized_bits += lay_tensor_bits(&t->opt, t->rows, t->cols);
        r->st->quantized_weights += t->rows * t->cols;
        return 0;
    }
    lay_cost c = lay_tensor_cost(&t->opt, t->rows, t->cols);
    int64_t ng = lay_n_groups(&t->opt, t->cols), rb = lay_row_bytes(&t->opt, t->cols);
    struct {
        const char *suffix, *dtype;
        int n_dims;
        int64_t d0, d1, bytes;
        void *data;
    } part[] = {
        {PACK_SUFFIX_VALUES, "U8", 2, t->rows, rb, c.values, NULL},
        {PACK_SUFFIX_SCALES, "F16", 2, t->rows, ng, c.scales, NULL},
        {PACK_SUFFIX_ZEROS, "U8", 2, t->rows, ng, c.zeros, NULL},
        {PACK_SUFFIX_MINS, "F16", 2, t->rows, ng, c.mins, NULL},
        {PACK_SUFFIX_PERM, lay_perm_bytes(t->cols) == 2 ? "U16" : "U32", 1, t->cols, 0, c.perm, NULL},
        {PACK_SUFFIX_XSCALE, "F16", 1, t->cols, 0, c.xscale, NULL},
    };
    enum { N_PARTS = sizeof part / sizeof part[0] };
    int k, oom = 0;
    for (k = 0; k < N_PARTS; k++) oom |= part[k].bytes && !(part[k].data = malloc((size_t)part[k].bytes));
    if (oom) {
        for (k = 0; k < N_PARTS; k++) free(part[k].data);
        return fail(r, "out of memory packing %s", t->name);
    }
    lay_pack_tensor(&t->q, part[0].data, part[1].data, part[2].data, part[3].data, part[4].data, part[5].data);
    assert(rb * t->rows == c.values && ng * t->rows * 2 == c.scales);
    /* the writer owns each buffer once added (and frees it on failure); free the rest */
    for (k = 0; k < N_PARTS; k++)
        if (part[k].data && add_part(r, t, part[k].suffix, part[k].dtype, part[k].n_dims, part[k].d0, part[k].d1,
                                     part[k].data, (size_t)part[k].bytes)) {
            while (++k < N_PARTS) free(part[k].data);
            return -1;
        }
    r->st->n_quantized++;
    r->st->quantized_bits += lay_tensor_bits(&t->opt, t->rows, t->cols);
    r->st->quantized_weights += t->rows * t->cols;
    return 0;
}

/* Sequential mode: the layer runs on the dequantized weights until the walk has
 * passed it (a tied head's slot is the head's alone: the embedding stays full
 * precision, invariant 3). */
static int swap_in_dequantized(pack_run *r, pack_tensor *t)
{
    float *w = malloc((size_t)(t->rows * t->cols) * sizeof *w);
    if (!w) return fail(r, "out of memory for %s", t->name);
    lay_qtensor_dequant(&t->q, w);
    rt_linear *l = rt_linear_dense(w, t->rows, t->cols), **slot = linear_of(r, t);
    if (!l) return fail(r, "out of memory for %s", t->name);
    t->orig = *slot;
    *slot = l;
    return 0;
}

/* Puts the model's own layers back in the slots of [t0, t1) (invariant 3). */
static void swap_back(pack_run *r, int t0, int t1)
{
    for (int i = t0; i < t1; i++) {
        pack_tensor *t = &r->t[i];
        if (!t->orig) continue;
        rt_linear **slot = linear_of(r, t);
        rt_linear_free(*slot);
        *slot = t->orig;
        t->orig = NULL;
    }
}

static int is_mine(const pack_tensor *t) { return t->planned && t->owner == par_rank(); }

/* Holds this rank's planned tensors of [t0, t1) as fp32 while they are quantized. */
static int hold_mine(pack_run *r, int t0, int t1)
{
    for (int i = t0; i < t1; i++) {
        pack_tensor *t = &r->t[i];
        if (!is_mine(t)) continue;
        if (rt_linear_hold(*linear_of(r, t))) return fail(r, "out of memory for %s as fp32", t->name);
        t->held = 1;
    }
    return 0;
}

static void release_held(pack_run *r, int t0, int t1)
{
    for (int i = t0; i < t1; i++)
        if (r->t[i].held) rt_linear_release(*linear_of(r, &r->t[i])), r->t[i].held = 0;
}

/* Quantizes this rank's planned tensors of [t0, t1) in parallel (invariant 6).
 * Each input group's Hessian is prepared as its tensors' options need
 * (prep[g][slot], gptq_prep_wanted: act-order, column order, rotated, scaled). */
static int quantize_mine(pack_run *r, int t0, int t1)
{
    if (util_interrupted()) return fail(r, "interrupted");
    gptq_params gp;
    gptq_params_init(&gp);
    gp.damp = r->plan.damp;
    gp.borrow_h = 1; /* the walk's Hessians live until the visit returns */
    gptq_prep *prep[RT_INPUT_COUNT][GPTQ_PREP_SLOTS] = {{NULL}};
    int rc = 0;
    for (int i = t0; !rc && !r->p->rtn && i < t1; i++) {
        rt_input g = rt_class_input(r->t[i].cls);
        for (int slot = 0; !rc && slot < GPTQ_PREP_SLOTS; slot++) {
            char why[256];
            if (!is_mine(&r->t[i]) || prep[g][slot] || !gptq_prep_wanted(&r->t[i].opt, slot)) continue;
            if (gptq_prepare_slot(r->hl->h[g], r->hl->cols[g], slot, &gp, &prep[g][slot], why, sizeof why))
                rc = fail(r, "%s: %s", r->t[i].name, why);
        }
    }
    if (!rc) rc = hold_mine(r, t0, t1);
    int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
#pragma omp parallel for schedule(dynamic, 1) if (!rc)
    for (int i = t0; i < t1; i++) {
        pack_tensor *t = &r->t[i];
        char err[512];
        if (!is_mine(t) || r->failed) continue;
        if (quantize_one(r, t, prep[rt_class_input(t->cls)], err, sizeof err)) {
#pragma omp critical(pack_fail)
            if (!r->failed) r->failed = 1, fail(r, "%s, option \"%s\": %s", t->name, t->opt.name, err);
        }
    }
    openblas_set_num_threads(blas_threads);
    for (int g = 0; g < RT_INPUT_COUNT; g++)
        for (int k = 0; k < GPTQ_PREP_SLOTS; k++) gptq_prep_free(prep[g][k]);
    release_held(r, t0, t1); /* before any slot is swapped */
    return rc || r->failed ? -1 : 0;
}

/* Tensor t's result from its rank to those that need it (invariant 6): rank 0,
 * which writes it, and in sequential mode every rank, which runs its rows on it.
 * A rank without room to receive it cannot keep in step: it ends the job. */
static int share_result(pack_run *r, pack_tensor *t)
{
    int everyone = sequential(r), me = par_rank();
    if (par_size() == 1 || (!everyone && me != 0 && me != t->owner)) return 0;
    if (me != t->owner && lay_qtensor_alloc(&t->q, t->rows, t->cols, &t->opt)) par_abort(1);
    void *arrays[LAY_QTENSOR_ARRAYS];
    size_t bytes[LAY_QTENSOR_ARRAYS];
    lay_qtensor_arrays(&t->q, arrays, bytes);
    int rc = 0;
    for (int k = 0; k < LAY_QTENSOR_ARRAYS; k++)
        if (bytes[k]) rc |= everyone ? par_bcast(arrays[k], bytes[k], t->owner) : par_to_root(arrays[k], bytes[k], t->owner);
    return rc ? fail(r, "%s: cannot receive it from rank %d", t->name, t->owner) : 0;
}

/* Quantizes the planned tensors of [t0, t1), then, in tensor order, packs each
 * (rank 0) and in sequential mode swaps it into the model (every rank). */
static int quantize_range(pack_run *r, int t0, int t1)
{
    if (par_agree(quantize_mine(r, t0, t1), r->err, r->err_len)) return -1;
    int rc = 0;
    for (int i = t0; i < t1; i++) {
        pack_tensor *t = &r->t[i];
        if (!t->planned) continue;
        if (share_result(r, t)) rc = -1; /* still in step with the others: every rank takes every turn */
        if (!rc && par_rank() == 0) rc = pack_one(r, t);
        if (!rc && sequential(r)) rc = swap_in_dequantized(r, t);
        lay_qtensor_free(&t->q);
    }
    return par_agree(rc, r->err, r->err_len);
}

/* ==== The pass: visits of the calibration walk (invariants 2 and 3) ==== */

/* Tensors of layer l (n_layers: the head) are [t0, t1). */
static void layer_tensors(const pack_run *r, int l, int *t0, int *t1)
{
    *t0 = l == r->m->cfg.n_layers ? r->nt - 1 : l * LAY_HEAD;
    *t1 = l == r->m->cfg.n_layers ? r->nt : *t0 + LAY_HEAD;
}

static int any_planned(void *ctx, int l)
{
    const pack_run *r = ctx;
    int t0, t1;
    layer_tensors(r, l, &t0, &t1);
    for (int i = t0; i < t1; i++)
        if (r->t[i].planned) return 1;
    return 0;
}

static int visit_layer(void *ctx, int l, const hess_layer *hl, char *err, size_t err_len)
{
    pack_run *r = ctx;
    int t0, t1;
    (void)err, (void)err_len; /* r->err is the caller's err */
    layer_tensors(r, l, &t0, &t1);
    progress(r, "quantize", l);
    r->hl = hl;
    int rc = quantize_range(r, t0, t1);
    r->hl = NULL;
    return rc;
}

static int passed_layer(void *ctx, int l, char *err, size_t err_len)
{
    pack_run *r = ctx;
    int t0, t1;
    (void)err, (void)err_len;
    layer_tensors(r, l, &t0, &t1);
    swap_back(r, t0, t1);
    return 0;
}

static void walk_progress(void *ctx, const char *phase, int layer) { progress(ctx, phase, layer); }

/* Round-to-nearest (invariant 7): each layer in turn, nothing run. */
static int rtn_pass(pack_run *r)
{
    for (int l = 0; l <= r->m->cfg.n_layers; l++) {
        int t0, t1;
        layer_tensors(r, l, &t0, &t1);
        progress(r, "quantize", l);
        if (any_planned(r, l) && quantize_range(r, t0, t1)) return -1;
    }
    return 0;
}

static int run_pass(pack_run *r)
{
    if (r->p->rtn) return rtn_pass(r);
    walk_params w = {.m = r->m, .cal = &r->cal, .sequential = sequential(r),
                     .wants = any_planned, .visit = visit_layer, .passed = passed_layer,
                     .progress = walk_progress, .ctx = r};
    return walk_run(&w, r->err, r->err_len);
}

/* ==== Unquantized tensors and metadata (invariant 4) ==== */

static int is_planned(const pack_run *r, const char *name)
{
    for (int i = 0; i < r->nt; i++)
        if (r->t[i].planned && !strcmp(r->t[i].name, name)) return 1;
    return 0;
}

/* A matrix as F16, decoded a slab of rows at a time (never a whole fp32 copy). */
static uint16_t *to_f16(pack_run *r, const mdl_tensor *t)
{
    int64_t rows = mdl_tensor_rows(t), cols = t->n_elems / rows, slab = 256;
    uint16_t *h = malloc((size_t)t->n_elems * sizeof *h);
    float *f = malloc((size_t)(slab * cols) * sizeof *f);
    for (int64_t r0 = 0; h && f && r0 < rows; r0 += slab) {
        int64_t n = rows - r0 < slab ? rows - r0 : slab;
        mdl_tensor_rows_to_f32(r->file, t, r0, n, f);
        for (int64_t k = 0; k < n * cols; k++) h[r0 * cols + k] = lay_f32_to_f16(f[k]);
    }
    if (!f) free(h), h = NULL;
    free(f);
    return h;
}

/* Every tensor of the model file that the plan does not quantize: 1-D as F32,
 * 2-D (an untied embedding, an unplanned linear layer) as F16 (GGUF: export.c). */
static int add_unquantized(pack_run *r)
{
    for (int i = 0; i < mdl_tensor_count(r->file); i++) {
        const mdl_tensor *t = mdl_tensor_at(r->file, i);
        if (is_planned(r, t->name) || t->type >= MDL_I32) continue;
        if (r->gguf) {
            if (pack_gguf_write_unplanned(r->gguf, t, r->err, r->err_len)) return -1;
            continue;
        }
        if (t->n_dims == 1) {
            float *f = malloc((size_t)t->n_elems * sizeof *f);
            if (!f) return fail(r, "out of memory reading %s", t->name);
            mdl_tensor_to_f32(r->file, t, f);
            if (pack_writer_add(r->w, t->name, "F32", 1, t->shape, f, (size_t)t->n_elems * 4))
                return fail(r, "%s: %s", t->name, pack_writer_strerror(r->w));
            continue;
        }
        uint16_t *h = to_f16(r, t);
        if (!h) return fail(r, "out of memory reading %s", t->name);
        if (pack_writer_add(r->w, t->name, "F16", t->n_dims, t->shape, h, (size_t)t->n_elems * 2))
            return fail(r, "%s: %s", t->name, pack_writer_strerror(r->w));
    }
    return 0;
}

static int put_meta(pack_run *r, const char *key, sb_buf *b)
{
    int rc = b->oom || !b->s || pack_writer_meta(r->w, key, b->s) ? fail(r, "out of memory writing metadata") : 0;
    free(b->s);
    memset(b, 0, sizeof *b);
    return rc;
}

/* The plan the file is made from (pack_meta_plan_json), with the file's bpw. */
static void plan_json(const pack_run *r, double file_bpw, sb_buf *b)
{
    pack_meta_plan pp = {r->plan.plan_id, r->plan.kind, r->plan.target, r->plan.achieved_bpw, r->plan.file_bpw,
                         r->plan.objective, file_bpw, r->db_path ? r->db_path : "", r->plan.model_hash,
                         r->p->rtn ? "none" : sequential(r) ? "sequential" : "full"};
    pack_meta_plan_json(b, &pp);
}

static int add_metadata(pack_run *r)
{
    sb_buf b = {0};
    pack_meta_tensor *mt = malloc((size_t)r->nt * sizeof *mt);
    int n = 0;
    if (!mt) return fail(r, "out of memory");
    for (int i = 0; i < r->nt; i++)
        if (r->t[i].planned)
            mt[n++] = (pack_meta_tensor){r->t[i].name, r->t[i].rows, r->t[i].cols, r->t[i].opt,
                                         r->t[i].opt.rot ? LAY_ROT_SEED : 0};
    pack_meta_options(&b, mt, n);
    free(mt);
    if (put_meta(r, "options", &b)) return -1;
    mdl_config_json(&b, &r->m->cfg);
    if (put_meta(r, "config", &b)) return -1;
    plan_json(r, (double)r->st->quantized_bits / (double)r->st->quantized_weights, &b);
    if (put_meta(r, "plan", &b)) return -1;
    char *tok = mdl_tokenizer_json(r->file, r->err, r->err_len);
    if (!tok) return -1;
    int rc = pack_writer_meta(r->w, "tokenizer", tok);
    free(tok);
    /* the oldest version that holds the file, so that older readers run what they can
     * (FORMAT.md, Versions) */
    int ggml = 0, rot = 0, awq = 0;
    for (int i = 0; i < r->nt; i++) {
        ggml |= r->t[i].planned && lay_option_ggml(&r->t[i].opt) >= 0;
        rot |= r->t[i].planned && r->t[i].opt.rot;
        awq |= r->t[i].planned && r->t[i].opt.awq;
    }
    char version[16];
    snprintf(version, sizeof version, "%d",
             awq ? PACK_FORMAT_VERSION
             : rot ? PACK_FORMAT_VERSION_ROT : ggml ? PACK_FORMAT_VERSION_GGML : PACK_FORMAT_VERSION_PLAIN);
    if (rc || pack_writer_meta(r->w, "format", PACK_FORMAT) || pack_writer_meta(r->w, "format_version", version))
        return fail(r, "out of memory writing metadata");
    return 0;
}

/* ==== Entry ==== */

static void cleanup(pack_run *r)
{
    if (r->m && r->t) swap_back(r, 0, r->nt); /* after a failure inside a layer */
    rt_model_free(r->m); /* opened with own_file 0: the file is closed below */
    mdl_close(r->file);
    for (int i = 0; r->t && i < r->nt; i++) lay_qtensor_free(&r->t[i].q);
    free(r->t);
    calib_free(&r->cal);
    db_pack_plan_free(&r->plan);
    pack_writer_free(r->w);
    pack_gguf_abort(r->gguf);
}

/* GGUF: every tensor declared in the order the pass writes them (export.c), and the
 * plan (its bpw known from the declared types: a ggml tensor's bits are exact). */
static int declare_gguf(pack_run *r)
{
    int64_t bits = 0, weights = 0;
    for (int i = 0; i < r->nt; i++) {
        if (!r->t[i].planned) continue;
        if (pack_gguf_declare_planned(r->gguf, r->t[i].name, &r->t[i].opt, r->t[i].rows, r->t[i].cols, r->err, r->err_len))
            return -1;
        bits += lay_tensor_bits(&r->t[i].opt, r->t[i].rows, r->t[i].cols), weights += r->t[i].rows * r->t[i].cols;
    }
    for (int i = 0; i < mdl_tensor_count(r->file); i++) {
        const mdl_tensor *t = mdl_tensor_at(r->file, i);
        if (is_planned(r, t->name) || t->type >= MDL_I32) continue;
        if (pack_gguf_declare_unplanned(r->gguf, t, r->err, r->err_len)) return -1;
    }
    sb_buf b = {0};
    plan_json(r, weights ? (double)bits / (double)weights : 0, &b);
    int rc = b.oom || !b.s ? fail(r, "out of memory writing metadata") : pack_gguf_start_data(r->gguf, b.s, r->err, r->err_len);
    free(b.s);
    return rc;
}

/* Opens the output (rank 0: bitplan's writer before anything is read, so that a
 * bad path fails first; the GGUF writer once the model is open, as it copies its
 * metadata) and the inputs (every rank). Collective. */
static int open_output(pack_run *r, const char *out, const char *model_path)
{
    int root = par_rank() == 0, rc = 0;
    if (root && r->p->out == PACK_OUT_BITPLAN && !(r->w = pack_writer_new(out, r->err, r->err_len))) rc = -1;
    if (root && !rc) rc = read_plan(r);
    if (par_agree(rc, r->err, r->err_len) || share_plan(r)) return -1;
    if (par_agree(open_model(r, model_path), r->err, r->err_len)) return -1;
    if (r->p->out == PACK_OUT_BITPLAN) return 0;
    if (root) rc = pack_gguf_begin(out, r->file, &r->gguf, r->err, r->err_len) || declare_gguf(r) ? -1 : 0;
    return par_agree(rc, r->err, r->err_len);
}

/* Rank 0 writes what is left and commits the file. */
static int finish_output(pack_run *r)
{
    if (par_rank() != 0) return 0;
    if (add_unquantized(r)) return -1;
    if (r->gguf) {
        int rc = pack_gguf_commit(r->gguf, r->err, r->err_len);
        r->gguf = NULL;
        return rc;
    }
    return add_metadata(r) || pack_writer_write(r->w, r->err, r->err_len) ? -1 : 0;
}

int pack_model(const char *model_path, const char *db_path, int64_t plan_id, const char *out, const pack_params *p,
               pack_stats *stats, char *err, size_t err_len)
{
    assert(model_path && out && p && stats && (db_path || (p->rtn && p->uniform)));
    pack_run r = {.p = p, .err = err, .err_len = err_len, .db_path = db_path, .plan_id = plan_id, .st = stats};
    memset(stats, 0, sizeof *stats);
    r.t0 = util_now_s();
    int rc = -1;
    if (open_output(&r, out, model_path)) goto done;
    if (par_agree(rt_model_open(r.file, 0, p->resident ? RT_OPEN_RESIDENT : 0, &r.m, err, err_len), err, err_len))
        goto done;
    if (run_pass(&r) || par_agree(finish_output(&r), err, err_len)) goto done;
    FILE *f = par_rank() == 0 ? fopen(out, "rb") : NULL;
    if (f && !fseek(f, 0, SEEK_END)) stats->file_bytes = ftell(f);
    if (f) fclose(f);
    stats->ranks = par_size();
    if (stats->ranks > 1) stats->sent_bytes = (double)par_job_stats(util_now_s() - r.t0, &stats->wait_share);
    rc = 0;
done:
    stats->seconds = util_now_s() - r.t0;
    cleanup(&r);
    return rc;
}
