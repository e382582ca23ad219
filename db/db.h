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

#include "layout/layout.h"

typedef struct db_conn db_conn;

/* A quantization option as the database holds it: its row in `options` and the
 * option itself (layout/), the one shape every reader of that table fills. */
typedef struct {
    int64_t id;
    lay_option opt;
} db_option;

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

/* Functions of this section do not open transactions of their own unless they say
 * so; wrap related writes in db_begin/db_commit. Ids are SQLite rowids. */

typedef struct {
    const char *content_hash;   /* sha256 hex of the model file(s) */
    const char *path;
    const char *arch;
    const char *config_json;    /* mdl_config as JSON (field names as keys) */
    int64_t n_params;
} db_model_info;

/* Finds the model by content hash (updating path, arch, config) or inserts it. */
int db_model_upsert(db_conn *d, const db_model_info *m, int64_t *model_id);

typedef struct {
    const char *name;           /* canonical GGUF name */
    int layer;                  /* -1 for the head */
    const char *cls;            /* "q", "k", "v", "o", "gate", "up", "down", "head" */
    const char *input_group;    /* "attn", "attn_out", "mlp", "mlp_out", "head" */
    int64_t rows, cols;
} db_tensor_info;

/* Finds the model's tensor by name or inserts it. */
int db_tensor_upsert(db_conn *d, int64_t model_id, const db_tensor_info *t, int64_t *tensor_id);

typedef struct {
    const char *key;            /* sha256 hex of everything that defines the run */
    const char *sources_json;   /* [{"path":..., "sha256":...}, ...] */
    int rows, ctx;
    const char *tokenizer;      /* tokenizer kind and vocabulary hash */
    double damp;
} db_calib_info;

/* Finds the model's calibration with this key or creates it with status 'running'.
 * *done receives 1 if its status is 'done'. */
int db_calib_find_or_create(db_conn *d, int64_t model_id, const db_calib_info *c,
                            int64_t *calib_id, int *done);
int db_calib_mark_done(db_conn *d, int64_t calib_id);

/* Claims a calibration for this process's measurement until db_calib_release or
 * db_close (or the process's end, however it ends): 0; 1 if another process holds
 * it (db_errmsg names it: `what`, pid, host and start of that run); -1 on error.
 * `what` labels this run for such messages (e.g. "bitplan measure"). */
int db_calib_claim(db_conn *d, int64_t calib_id, const char *what);
void db_calib_release(db_conn *d);

/* Finds an option by its definition (bits, share, group, format; not its name) or
 * inserts it. */
int db_option_upsert(db_conn *d, const lay_option *o, int64_t *option_id);
/* Records that the calibration's option set includes option_id (idempotent). */
int db_calib_add_option(db_conn *d, int64_t calib_id, int64_t option_id);

typedef struct {
    int64_t tensor_id, option_id;
    int64_t bits;               /* lay_tensor_bits */
    double rel_err, rtn_err, seconds;
} db_measurement;

/* Inserts n measurements of one calibration in ONE transaction of its own (call it
 * outside any transaction): all rows are there afterwards, or none. */
int db_measurements_insert(db_conn *d, int64_t calib_id, const db_measurement *m, int n);

/* The (tensor_id, option_id) pairs already measured for a calibration, as a
 * malloc'd array pairs[2 * n] (free()d by the caller; NULL when n is 0). */
int db_measured_pairs(db_conn *d, int64_t calib_id, int64_t **pairs, int64_t *n);

typedef struct {
    int64_t tensor_id, option_id; /* option_id: the reference option of the probe */
    double kld, rel_err, seconds;
} db_kl_probe;

/* Inserts one probe row (atomic by itself). */
int db_kl_probe_insert(db_conn *d, int64_t calib_id, const db_kl_probe *p);
/* Tensor ids already probed for a calibration: malloc'd ids[n]. */
int db_kl_probed_tensors(db_conn *d, int64_t calib_id, int64_t **ids, int64_t *n);

/* Row counts of one calibration: measurements, probes, and the option set's size. */
int db_calib_counts(db_conn *d, int64_t calib_id, int64_t *n_meas, int64_t *n_probes, int64_t *n_options);

/* ==== Plans (allocate/) ==== */

/* Which calibration to allocate from: want > 0 is checked to exist; want 0 takes the
 * newest 'done' one, or the only one if none is done. Fails naming the database when
 * it holds no calibration (or not that one). */
int db_calib_choose(db_conn *d, int64_t want, int64_t *calib_id);

typedef struct {
    int64_t id;              /* tensors.id */
    char name[96];
    int layer;               /* -1 for the head */
    char cls[8];             /* "q" ... "head" */
    char input_group[12];
    int64_t rows, cols;
} db_alloc_tensor;

typedef struct {
    int tensor;              /* index into db_alloc_input.tensors */
    int64_t option_id;
    int64_t bits;            /* exact stored bits */
    double rel_err;
} db_alloc_meas;

typedef struct {
    int tensor;              /* index into db_alloc_input.tensors */
    int64_t option_id;       /* the probe's reference option */
    double kld, rel_err;
} db_alloc_probe;

/* Everything the allocator reads of one calibration, in one read transaction. */
typedef struct {
    int64_t calib_id, model_id, n_params;
    char status[12];         /* 'running' or 'done' */
    char *config_json;       /* models.config_json (malloc'd, "" if NULL) */
    int n_tensors;
    db_alloc_tensor *tensors;   /* the model's tensors, by layer (head last), then id */
    int64_t n_meas;
    db_alloc_meas *meas;        /* by tensor, then bits */
    int n_probes;
    db_alloc_probe *probes;
    int n_options;
    db_option *options;   /* every option the measurements name, by id */
} db_alloc_input;

int db_alloc_load(db_conn *d, int64_t calib_id, db_alloc_input *in);
void db_alloc_input_free(db_alloc_input *in);

typedef struct {
    int64_t tensor_id, option_id, bits;
    double predicted;        /* the damage the objective counted */
} db_plan_choice;

/* One row of `plans`, the one shape that writers, listers and the report share.
 * A row read from the database owns its three strings, whole and never NULL ("" when
 * the column is NULL): free them with db_plan_row_clear. A row given to
 * db_plan_insert only lends them (NULL or "" stores NULL for memory_json and sweep). */
typedef struct {
    int64_t id, calib_id;
    char kind[8];            /* "bpw", "vram" or "size" */
    double target;           /* bpw, or bytes */
    char metric[8];          /* "rel_err" or "kld" */
    double achieved_bpw, file_bpw;
    int64_t total_bits;
    double objective, gap, solve_seconds;
    int64_t n_dropped;
    const char *memory_json; /* 'vram': every term of the memory model, JSON */
    const char *sweep;       /* the label of a --sweep, "uniform", ... */
    const char *command;     /* the command line that made it */
    char created_at[24];
} db_plan_row;

void db_plan_row_clear(db_plan_row *p);
void db_plan_rows_free(db_plan_row *rows, int n);

/* Inserts the plan and its n choices in one transaction; *plan_id gets its id. */
int db_plan_insert(db_conn *d, const db_plan_row *p, const db_plan_choice *c, int n, int64_t *plan_id);
/* The plans of a calibration (calib_id 0: all), by id: rows[n], freed with
 * db_plan_rows_free. */
int db_plan_list(db_conn *d, int64_t calib_id, db_plan_row **rows, int *n);
/* The choices of one plan, by tensor id: malloc'd c[n]. */
int db_plan_choices_load(db_conn *d, int64_t plan_id, db_plan_choice **c, int *n);

/* ==== Packing (pack/) ==== */

typedef struct {
    char name[96];          /* canonical tensor name */
    int64_t rows, cols;
    db_option option;
    int64_t bits;
} db_pack_choice;

typedef struct {
    char path[4096];        /* as given to bitplan measure */
    char sha256[65];
} db_pack_source;

typedef struct {
    int64_t plan_id, calib_id;
    char kind[8];           /* "bpw" or "vram" */
    double target, achieved_bpw, file_bpw, objective;
    char model_hash[65];
    char *sources_json;     /* the calibration's [{"path","sha256"}], malloc'd */
    int n_sources;
    db_pack_source *sources; /* the same, parsed (malloc'd) */
    int rows, ctx;
    double damp;
    int n_choices;
    db_pack_choice *choices; /* malloc'd */
} db_pack_plan;

/* Reads plan plan_id (0: the newest plan) with the option of every tensor and the
 * calibration it was made from. db_pack_plan_free releases it. */
int db_pack_plan_load(db_conn *d, int64_t plan_id, db_pack_plan *out);
void db_pack_plan_free(db_pack_plan *p);

/* Inserts a uniform plan of calibration calib_id (0: the newest with measurements):
 * every measured tensor gets option option_name, except the head, which gets
 * head_option_name when that is not NULL. Every tensor must have a measurement at
 * its option. kind 'bpw', target = achieved bpw (over the blocks, as allocate
 * counts), metric 'rel_err', predicted = rel_err. One transaction. */
int db_plan_insert_uniform(db_conn *d, int64_t calib_id, const char *option_name, const char *head_option_name,
                           const char *command, int64_t *plan_id);

/* ==== Evaluations and report queries (cli eval, reports/) ==== */

/* One row of `evals`. Optional numbers are NAN for NULL, optional ids 0, optional
 * strings NULL. model_id 0 with plan_id set takes the model of the plan's
 * calibration. */
typedef struct {
    int64_t model_id;        /* the full-precision model; 0: from plan_id, or NULL */
    int64_t plan_id;         /* 0: NULL (an unquantized model) */
    const char *subject;     /* path evaluated */
    const char *subject_kind;/* "model" or "packed" */
    double bpw;              /* NAN: NULL */
    const char *text_path, *text_hash;
    int ctx;
    int64_t tokens;          /* tokens scored */
    double ppl, ppl_stderr;  /* ppl required; stderr NAN: NULL */
    double kld, kld_stderr;  /* NAN: NULL (no --ref) */
    double top1;             /* NAN: NULL */
    const char *ref_path;    /* NULL without --ref */
    const char *device;      /* NULL: "cpu" */
    const char *command;     /* the command line */
} db_eval_row;

/* Files an evaluation in this database: *model_id is the model with this content
 * hash (0 if the database does not know it); *plan_id is want_plan if that plan
 * exists here and was made for that model, else 0. */
int db_eval_resolve(db_conn *d, const char *model_hash, int64_t want_plan, int64_t *model_id, int64_t *plan_id);

/* Inserts one evaluation (one transaction); *id (may be NULL) gets its rowid. */
int db_eval_insert(db_conn *d, const db_eval_row *e, int64_t *id);

/* Everything a report shows about one calibration, read in one snapshot.
 * Indices (tensor, option, plan) are into the arrays of the same db_report;
 * missing numbers are NAN, missing strings "" (never NULL). */
typedef struct { int64_t id; char name[96]; int layer; char cls[8]; int64_t rows, cols; } db_rep_tensor;
typedef struct { int tensor, option; int64_t bits; double rel_err, rtn_err; } db_rep_meas;
typedef struct { int tensor, option; double kld, rel_err; } db_rep_probe;
typedef struct { int tensor, option; int64_t bits; double predicted; } db_rep_choice;
typedef struct { char name[48]; double bytes; } db_rep_term;   /* memory_json entry */
typedef struct {
    db_plan_row row;
    int memory_ok;           /* memory_json present and a JSON object */
    int n_terms;             /* numeric entries of memory_json, "budget" included */
    db_rep_term *terms;
    int n_choices;
    db_rep_choice *choices;
} db_rep_plan;
typedef struct {
    int64_t id, plan_id;     /* plan_id 0: an unquantized model */
    int plan;                /* index into plans, -1 if not one of this calibration's */
    char *subject, *subject_kind, *text_path, *ref_path, *device, *command, *created_at;
    double bpw, ppl, ppl_stderr, kld, kld_stderr, top1;
    int ctx;
    int64_t tokens;
} db_rep_eval;
typedef struct {
    int64_t model_id;
    char *model_path, *model_hash, *arch, *config_json;
    int64_t n_params;
    int64_t calib_id;
    char *calib_status, *calib_sources, *tokenizer, *calib_created;  /* sources: paths, ", " */
    int calib_rows, calib_ctx;
    double damp;
    int n_tensors, n_options, n_meas, n_probes, n_plans, n_evals;
    db_rep_tensor *tensors;  /* by layer (head last), then class q k v o gate up down */
    db_option *options;  /* the calibration's option set, by id */
    db_rep_meas *meas;
    db_rep_probe *probes;
    db_rep_plan *plans;      /* by id */
    db_rep_eval *evals;      /* by id */
} db_report;

/* Reads the report data of calibration calib_id, or with calib_id 0 of the newest
 * calibration that has measurements (else the newest one). Fails with a message if
 * there is no such calibration. *out is NULL on failure; db_report_free releases. */
int db_report_load(db_conn *d, int64_t calib_id, db_report **out);
void db_report_free(db_report *r);
/* The calibration that plan plan_id belongs to: 0 and *calib_id, or -1 with a
 * message ("no plan N in D") if there is none. */
int db_plan_calibration(db_conn *d, int64_t plan_id, int64_t *calib_id);

#endif
