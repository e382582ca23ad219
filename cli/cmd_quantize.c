/*
 * cli/cmd_quantize.c — `bitplan quantize`: the whole job in one command, the way
 * people quantize a model.
 *
 *     bitplan quantize MODEL (--bpw B | --vram SIZE --ctx N | --size SIZE) -o OUT
 *                      [--calib TEXT...] [--db D] [--format bitplan|gguf] ...
 *
 * Stages, each the one the separate commands run, so that OUT is byte for byte the
 * file `measure --kl-probe`, `allocate` and `pack` (or `export-gguf`) give with the
 * same settings:
 *   measure   meas_run with KL probes (they are what makes the plans good), into a
 *             database beside OUT named after the model unless --db names one;
 *   allocate  cli_allocate at the target, on that measurement;
 *   pack      pack_model (or the GGUF export);
 *   check     perplexity, KL divergence and top-1 agreement against MODEL on the
 *             end of the calibration text that no calibration row read
 *             (calib_heldout), filed in the database;
 *   report    cli_report, beside OUT.
 * Killed at any point, the same command resumes: the measurement continues where it
 * stopped, a plan quantize made for the same target on the same measurement is
 * reused (the allocation is exact, so it would be the same plan), and an OUT that
 * is already that plan's file (its recorded plan says so) is kept.
 * It must never do a stage's work itself.
 */
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "allocate/allocate.h"
#include "db/db.h"
#include "model/model.h"
#include "pack/pack.h"
#include "util/util.h"

#define CMD "quantize"
#define CHECK_CTX 512                   /* tokens per chunk of the check, as eval's default */
#define CHECK_BYTES_PER_TOKEN 8         /* generous: SmolLM2's vocabulary averages ~4 on prose */

static const char usage_text[] =
    "usage: bitplan quantize MODEL (--bpw B | --vram SIZE --ctx N | --size SIZE) -o OUT [options]\n"
    "\n"
    "The whole job: measures MODEL with KL probes, allocates exactly at the target, packs,\n"
    "checks the result on held-out text against MODEL and writes a report beside OUT.\n"
    "Run the same command again after an interruption: it goes on where it stopped. A\n"
    "second target for the same model reuses the measurement.\n"
    "\n"
    "  --bpw B           bits per weight of the blocks' linear layers (EXL2's convention)\n"
    "  --vram SIZE       fit SIZE of GPU memory at context --ctx N (also --batch N,\n"
    "                    --kv-bits B, --reserve SIZE, as bitplan allocate)\n"
    "  --size SIZE       the file's tensors within SIZE\n"
    "  -o, --out OUT     the output file (written atomically)\n"
    "  --format F        bitplan (default: the packed format, runs in bitplan) or gguf\n"
    "                    (ggml block types, for llama.cpp and Ollama)\n"
    "  --calib FILE...   calibration text (default: data/calib.txt of the repository the\n"
    "                    program was built in, which scripts/get-text.sh fetches)\n"
    "  --db D            measurement database (default: MODELNAME.bitplan.db beside OUT)\n"
    "  --rows R          calibration rows (default 16)\n"
    "  --calib-ctx C     tokens per calibration row (default 512)\n"
    "  --options F       candidate options: a file, or the preset default / ggml\n"
    "                    (default: default, or ggml with --format gguf)\n"
    "  --check-chunks N  held-out chunks of 512 tokens for the check (default 8; 0: none)\n"
    "  --threads N       threads (default: all cores)\n"
    "  --progress        progress on stderr even when it is not a terminal\n";

typedef struct {
    const char *model, *out, *db, *options;
    const char **calib;
    int n_calib;
    const char *target_flag, *target_value;   /* --bpw, --vram or --size, as given */
    const char *vram_flags[8];                /* --ctx N [--batch N ...], passed on to allocate */
    int n_vram_flags;
    int rows, calib_ctx, threads, check_chunks, progress;
    pack_out_format format;
    /* settled from the flags */
    char db_buf[PATH_MAX + 300], calib_buf[PATH_MAX], report[PATH_MAX + 16];
    const char *kind;                         /* "bpw", "vram" or "size" */
    double target;                            /* as the plans table holds it */
    alloc_vram_params vp;
} quantize_args;

/* What each stage found, for the summary. */
typedef struct {
    double seconds[5];
    int64_t calib_id, plan_id, file_bytes;
    char model_hash[65];        /* MODEL's content hash, from the measurement */
    double achieved_bpw, file_bpw;
    int checked;
    int64_t check_tokens;
    rt_eval_result check;
} quantize_run;

enum { ST_MEASURE, ST_ALLOCATE, ST_PACK, ST_CHECK, ST_REPORT };
static const char *const stage_names[] = {"measure", "allocate", "pack", "check", "report"};

/* ==== Arguments ==== */

static int parse_count(const char *flag, const char *v, int min, int *out)
{
    long n;
    if (cli_parse_count(CMD, flag, v, min, strcmp(flag, "--threads") ? 1 << 20 : CLI_MAX_THREADS, &n)) return 1;
    *out = (int)n;
    return 0;
}

static int set_target(quantize_args *a, const char *flag, const char *v)
{
    if (a->target_flag) return cli_fail(CMD, "give one target: %s and %s exclude each other", a->target_flag, flag);
    a->target_flag = flag, a->target_value = v;
    int64_t bytes;
    if (!strcmp(flag, "--bpw")) {
        a->kind = "bpw";
        if (cli_parse_double(v, &a->target) || !(a->target > 0 && a->target <= 32))
            return cli_fail(CMD, "--bpw: '%s' is not a number of bits per weight", v);
        return 0;
    }
    a->kind = flag + 2;
    if (cli_parse_size(v, &bytes) || bytes <= 0) return cli_fail(CMD, "%s: '%s' is not a size such as 8GiB", flag, v);
    a->target = (double)bytes;
    return 0;
}

/* --ctx, --batch, --kv-bits and --reserve: checked here, passed on to allocate. */
static int vram_flag(quantize_args *a, const char *f, const char *v)
{
    long n;
    int bad = !strcmp(f, "--ctx") ? cli_parse_int(v, &n) || n < 1 || n > 1 << 24
              : !strcmp(f, "--batch") ? cli_parse_int(v, &n) || n < 1 || n > 1 << 16
              : !strcmp(f, "--kv-bits") ? cli_parse_int(v, &n) || n < 1 || n > 32
                                         : cli_parse_size(v, &a->vp.reserve);
    if (bad) return cli_fail(CMD, "%s: '%s' is not a valid value (see bitplan quantize --help)", f, v);
    if (!strcmp(f, "--ctx")) a->vp.ctx = n;
    else if (!strcmp(f, "--batch")) a->vp.batch = n;
    else if (!strcmp(f, "--kv-bits")) a->vp.kv_bits = (int)n;
    a->vram_flags[a->n_vram_flags++] = f, a->vram_flags[a->n_vram_flags++] = v;
    return 0;
}

static int parse_valued(quantize_args *a, const char *f, const char *v)
{
    if (!strcmp(f, "-o") || !strcmp(f, "--out")) a->out = v;
    else if (!strcmp(f, "--db")) a->db = v;
    else if (!strcmp(f, "--options")) a->options = v;
    else if (!strcmp(f, "--bpw") || !strcmp(f, "--vram") || !strcmp(f, "--size")) return set_target(a, f, v);
    else if (!strcmp(f, "--ctx") || !strcmp(f, "--batch") || !strcmp(f, "--kv-bits") || !strcmp(f, "--reserve"))
        return vram_flag(a, f, v);
    else if (!strcmp(f, "--rows")) return parse_count(f, v, 1, &a->rows);
    else if (!strcmp(f, "--calib-ctx")) return parse_count(f, v, 4, &a->calib_ctx);
    else if (!strcmp(f, "--check-chunks")) return parse_count(f, v, 0, &a->check_chunks);
    else if (!strcmp(f, "--threads")) return parse_count(f, v, 1, &a->threads);
    else if (!strcmp(f, "--format")) {
        if (!strcmp(v, "bitplan")) a->format = PACK_OUT_BITPLAN;
        else if (!strcmp(v, "gguf")) a->format = PACK_OUT_GGUF;
        else return cli_fail(CMD, "--format: '%s' is neither bitplan nor gguf", v);
    } else return cli_fail(CMD, "unknown option '%s' (see bitplan quantize --help)", f);
    return 0;
}

static int parse_one(quantize_args *a, int *i, int argc, char **argv)
{
    const char *f = argv[*i];
    if (!strcmp(f, "--progress")) return a->progress = 1, 0;
    if (!strcmp(f, "--calib")) {
        while (*i + 1 < argc && strncmp(argv[*i + 1], "-", 1)) a->calib[a->n_calib++] = argv[++*i];
        return a->n_calib ? 0 : cli_fail(CMD, "--calib needs at least one file");
    }
    if (f[0] != '-' || !f[1]) {
        if (a->model) return cli_fail(CMD, "unexpected argument '%s' (the model is %s)", f, a->model);
        return a->model = f, 0;
    }
    if (*i + 1 >= argc) return cli_fail(CMD, "%s needs a value", f);
    return parse_valued(a, f, argv[++*i]);
}

/* ==== Where things go ==== */

/* The directory part of path ("." when there is none) into buf. */
static void dir_of(const char *path, char *buf, size_t cap)
{
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(buf, cap, ".");
    else if (slash == path) snprintf(buf, cap, "/");
    else snprintf(buf, cap, "%.*s", (int)(slash - path), path);
}

/* The model's name: its file or folder name without .gguf / .safetensors. */
static void model_name(const char *model, char *buf, size_t cap)
{
    size_t n = strlen(model);
    while (n > 1 && model[n - 1] == '/') n--;
    const char *start = model;
    for (size_t i = 0; i < n; i++)
        if (model[i] == '/') start = model + i + 1;
    size_t len = (size_t)(model + n - start);
    static const char *const exts[] = {".gguf", ".safetensors"};
    for (size_t e = 0; e < 2; e++) {
        size_t el = strlen(exts[e]);
        if (len > el && !strncmp(start + len - el, exts[e], el)) len -= el;
    }
    snprintf(buf, cap, "%.*s", (int)len, start);
}

/* The report beside OUT: OUT without its extension, then ".report.html". */
static void report_path(const char *out, char *buf, size_t cap)
{
    const char *slash = strrchr(out, '/'), *dot = strrchr(out, '.');
    size_t len = dot && dot > (slash ? slash + 1 : out) ? (size_t)(dot - out) : strlen(out);
    snprintf(buf, cap, "%.*s.report.html", (int)len, out);
}

/* data/calib.txt beside the program (build/bitplan -> data/calib.txt): the text
 * scripts/get-text.sh fetches. The absolute path, so that pack finds it from
 * anywhere. */
static int default_calib(quantize_args *a)
{
    char exe[PATH_MAX], dir[PATH_MAX], want[PATH_MAX + 32];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return cli_fail(CMD, "no --calib given and the program's own path is unknown: give --calib FILE...");
    exe[n] = 0;
    dir_of(exe, dir, sizeof dir);
    dir_of(dir, exe, sizeof exe);
    snprintf(want, sizeof want, "%s/data/calib.txt", exe);
    if (!realpath(want, a->calib_buf))
        return cli_fail(CMD, "no --calib given and the default calibration text %s is missing (%s): run "
                        "scripts/get-text.sh, or give --calib FILE...", want, strerror(errno));
    a->calib[a->n_calib++] = a->calib_buf;
    return 0;
}

static int settle(quantize_args *a)
{
    char dir[PATH_MAX], name[256];
    struct stat st;
    if (!a->model) return cli_fail(CMD, "no model given (bitplan quantize MODEL --bpw B -o OUT)");
    if (!a->target_flag) return cli_fail(CMD, "no target given: --bpw B, --vram SIZE --ctx N or --size SIZE");
    if (!a->out) return cli_fail(CMD, "no output given (-o OUT)");
    if (strcmp(a->kind, "vram") && a->n_vram_flags)
        return cli_fail(CMD, "%s belongs to --vram (the memory it must fit)", a->vram_flags[0]);
    int has_ctx = 0;
    for (int i = 0; i < a->n_vram_flags; i += 2) has_ctx |= !strcmp(a->vram_flags[i], "--ctx");
    if (!strcmp(a->kind, "vram") && !has_ctx) return cli_fail(CMD, "--vram needs --ctx N (the context to fit)");
    if (stat(a->model, &st)) return cli_fail(CMD, "%s: %s", a->model, strerror(errno));
    struct stat out_st;
    if (!stat(a->out, &out_st) && out_st.st_dev == st.st_dev && out_st.st_ino == st.st_ino)
        return cli_fail(CMD, "-o %s is the model itself: give another output", a->out);
    dir_of(a->out, dir, sizeof dir);
    if (stat(dir, &st) || !S_ISDIR(st.st_mode)) return cli_fail(CMD, "%s: no such folder for the output", dir);
    if (access(dir, W_OK)) return cli_fail(CMD, "%s: cannot write there (%s)", dir, strerror(errno));
    char why[PATH_MAX + 256];
    if (util_out_check(a->out, why, sizeof why)) return cli_fail(CMD, "%s", why);
    if (!a->db) {
        model_name(a->model, name, sizeof name);
        if (strchr(a->out, '/')) snprintf(a->db_buf, sizeof a->db_buf, "%s/%s.bitplan.db", dir, name);
        else snprintf(a->db_buf, sizeof a->db_buf, "%s.bitplan.db", name);
        a->db = a->db_buf;
    }
    report_path(a->out, a->report, sizeof a->report);
    if (!a->n_calib && default_calib(a)) return 1;
    for (int i = 0; i < a->n_calib; i++)
        if (access(a->calib[i], R_OK)) return cli_fail(CMD, "%s: %s", a->calib[i], strerror(errno));
    return 0;
}

static int parse_args(quantize_args *a, int argc, char **argv)
{
    meas_params defaults;
    meas_params_init(&defaults);
    a->rows = defaults.rows, a->calib_ctx = defaults.ctx;
    a->check_chunks = 8;
    a->format = PACK_OUT_BITPLAN;
    alloc_vram_params_init(&a->vp);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { fputs(usage_text, stdout); return -1; }
        if (parse_one(a, &i, argc, argv)) return 1;
    }
    return settle(a);
}

/* ==== Stages ==== */

static void stage_line(const char *stage, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void stage_line(const char *stage, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%-9s ", stage);
    vprintf(fmt, ap);
    putchar('\n');
    fflush(stdout); /* a line per stage as it ends, also into a pipe */
    va_end(ap);
}

static int measure(const quantize_args *a, quantize_run *q)
{
    meas_params p;
    opt_set opts = {0, NULL};
    char err[1024];
    cli_progress_line line = {0, 0};
    meas_params_init(&p);
    p.kl_probe = 1;
    p.rows = a->rows, p.ctx = a->calib_ctx;
    p.threads = a->threads;
    const char *spec = a->options ? a->options : a->format == PACK_OUT_GGUF ? "ggml" : NULL;
    if (spec && opt_set_load(spec, &opts, err, sizeof err)) return cli_fail(CMD, "%s", err);
    if (spec) p.options = &opts;
    if (a->progress) p.progress = cli_measure_progress, p.progress_ctx = &line;
    meas_result r;
    int failed = meas_run(a->model, a->calib, a->n_calib, a->db, &p, &r, err, sizeof err);
    if (line.shown) fputc('\n', stderr);
    opt_set_free(&opts);
    if (failed && util_interrupted())
        return cli_interrupted(CMD, "%lld new measurements are saved in %s; the same command resumes from there",
                               (long long)r.measured, a->db);
    if (failed) return cli_fail(CMD, "%s", err);
    q->calib_id = r.calib_id;
    memcpy(q->model_hash, r.model_hash, sizeof q->model_hash);
    if (r.already_done)
        stage_line("measure", "already done: %lld tensors x %lld options with KL probes (calibration %lld in %s)",
                   (long long)r.n_tensors, (long long)r.n_options, (long long)r.calib_id, a->db);
    else
        stage_line("measure", "%lld tensors x %lld options: %lld new rows, %lld already there, %lld KL probes "
                   "(calibration %lld in %s)", (long long)r.n_tensors, (long long)r.n_options, (long long)r.measured,
                   (long long)r.skipped, (long long)r.probed, (long long)r.calib_id, a->db);
    return 0;
}

/* 1 if row is a plan quantize made for this target: the same kind and target, and
 * for --vram the same memory settings (the rest of an allocation is quantize's
 * fixed defaults, so the same measurement gives the same plan). */
static int same_request(const quantize_args *a, const db_plan_row *row)
{
    const char *cmd = strchr(row->command, ' ');
    if (!cmd || strncmp(cmd, " " CMD " ", strlen(CMD) + 2)) return 0;
    if (strcmp(row->kind, a->kind) || row->target != a->target) return 0;
    if (strcmp(a->kind, "vram")) return 1;
    char want[160], reserve[48];
    snprintf(want, sizeof want, "\"settings\":{\"ctx\":%lld,\"batch\":%lld,\"kv_bits\":%d}", (long long)a->vp.ctx,
             (long long)a->vp.batch, a->vp.kv_bits);
    snprintf(reserve, sizeof reserve, "\"reserve\":%lld,", (long long)a->vp.reserve);
    return strstr(row->memory_json, want) && strstr(row->memory_json, reserve);
}

/* The plan quantize made before for this target (0 if none), or the plan plan_id;
 * fills q's bpw. -1 with a message. */
static int find_plan(const quantize_args *a, quantize_run *q, int64_t plan_id, int64_t *found)
{
    db_conn *d = NULL;
    db_plan_row *rows = NULL;
    int n = 0;
    *found = 0;
    if (db_open(a->db, DB_OPEN_READ, &d) || db_plan_list(d, q->calib_id, &rows, &n)) {
        cli_fail(CMD, "%s", db_errmsg(d));
        db_close(d);
        return -1;
    }
    for (int i = n - 1; i >= 0 && !*found; i--)
        if (plan_id ? rows[i].id == plan_id : same_request(a, &rows[i]))
            *found = rows[i].id, q->achieved_bpw = rows[i].achieved_bpw, q->file_bpw = rows[i].file_bpw;
    db_plan_rows_free(rows, n);
    db_close(d);
    return 0;
}

static int allocate(const quantize_args *a, quantize_run *q)
{
    int64_t plan;
    if (find_plan(a, q, 0, &plan)) return 1;
    if (plan) {
        q->plan_id = plan;
        stage_line("allocate", "plan %lld, made before for this target: %.4f bpw (blocks), %.4f bpw (whole file)",
                   (long long)plan, q->achieved_bpw, q->file_bpw);
        return 0;
    }
    char calib[24];
    snprintf(calib, sizeof calib, "%lld", (long long)q->calib_id);
    char *argv[16] = {"allocate", "--db", (char *)a->db, "--calib", calib, (char *)a->target_flag, (char *)a->target_value};
    int argc = 7;
    for (int i = 0; i < a->n_vram_flags; i++) argv[argc++] = (char *)a->vram_flags[i];
    int rc = cli_allocate(argc, argv, 1, &plan);
    if (rc) return rc;
    if (find_plan(a, q, plan, &q->plan_id) || !q->plan_id) return cli_fail(CMD, "plan %lld vanished from %s", (long long)plan, a->db);
    stage_line("allocate", "plan %lld: %s %s -> %.4f bpw (blocks), %.4f bpw (whole file)", (long long)plan, a->kind,
               a->target_value, q->achieved_bpw, q->file_bpw);
    return 0;
}

/* 1 if OUT is already the file of this plan in this format (a resumed run keeps
 * it): its recorded plan, database, Hessians and source model are these, and a
 * packed file's checksums match (a damaged one is written again). */
static int already_packed(const quantize_args *a, const quantize_run *q)
{
    char err[512];
    mdl_model *f = NULL;
    mdl_packed_plan_info who;
    if (access(a->out, F_OK) || mdl_open(a->out, &f, err, sizeof err)) return 0;
    int format_ok = mdl_is_packed(f) == (a->format == PACK_OUT_BITPLAN);
    int same = format_ok && !mdl_packed_plan(f, &who, err, sizeof err) && who.plan_id == q->plan_id &&
               !strcmp(who.db_path, a->db) && !strcmp(who.hessians, "sequential") &&
               !strcmp(who.model_hash, q->model_hash) && (!mdl_is_packed(f) || !mdl_packed_verify(f, NULL, NULL, NULL));
    mdl_close(f);
    return same;
}

static int pack(const quantize_args *a, quantize_run *q)
{
    struct stat st;
    if (already_packed(a, q) && !stat(a->out, &st)) {
        q->file_bytes = (int64_t)st.st_size;
        stage_line("pack", "%s is already plan %lld's file: kept", a->out, (long long)q->plan_id);
        return 0;
    }
    pack_params p;
    pack_stats s;
    char err[1024];
    pack_params_init(&p);
    p.out = a->format;
    if (a->progress) p.progress = cli_pack_progress;
    if (pack_model(a->model, a->db, q->plan_id, a->out, &p, &s, err, sizeof err))
        return util_interrupted() ? cli_interrupted(CMD, "the measurement and plan %lld are saved in %s, nothing was "
                                                    "written to %s; the same command resumes with the pack",
                                                    (long long)q->plan_id, a->db, a->out)
                                  : cli_fail(CMD, "%s", err);
    q->file_bytes = s.file_bytes;
    stage_line("pack", "%s: %.1f MiB, %lld tensors quantized", a->out, (double)s.file_bytes / (1 << 20),
               (long long)s.n_quantized);
    return 0;
}

/* The held-out text, tokenized by ref; NULL (and *n 0) when there is none. */
static int32_t *heldout_tokens(const quantize_args *a, const rt_model *ref, int64_t *n, char hash[65], size_t *bytes,
                               char *err, size_t err_len)
{
    /* eval scores the second half of each chunk and wants two chunks at least */
    int chunks = a->check_chunks < 2 ? 2 : a->check_chunks;
    size_t want = (size_t)(chunks + 1) * CHECK_CTX * CHECK_BYTES_PER_TOKEN, len;
    char *text;
    *n = 0;
    if (calib_heldout(ref->tok, a->calib, a->n_calib, a->rows, a->calib_ctx, want, &text, &len, err, err_len)) return NULL;
    mdl_sha256_of(text, len, hash);
    *bytes = len;
    int32_t *ids = len ? cli_tokenize(ref, text, len, n, err, err_len) : NULL;
    free(text);
    return ids;
}

static int check_run(const quantize_args *a, quantize_run *q, rt_model *m, rt_model *ref)
{
    char err[1024], hash[65], label[PATH_MAX + 64];
    size_t bytes = 0;
    int64_t n;
    int32_t *ids = heldout_tokens(a, ref, &n, hash, &bytes, err, sizeof err);
    if (!ids && n) return cli_fail(CMD, "%s", err);
    if (n < 2 * CHECK_CTX) {
        free(ids);
        stage_line("check", "skipped: the calibration rows read nearly all of the text, none is left to hold out "
                   "(give more text with --calib)");
        return 0;
    }
    rt_eval_params p;
    rt_eval_params_init(&p);
    p.ctx = CHECK_CTX;
    p.max_chunks = a->check_chunks;
    if (a->progress) p.progress = cli_eval_progress;
    p.bos = m->add_bos ? tok_bos(m->tok) : -1;
    int rc = rt_eval(m, ref, ids, n, &p, &q->check, err, sizeof err);
    free(ids);
    if (rc) return cli_fail(CMD, "check: %s", err);
    q->checked = 1;
    snprintf(label, sizeof label, "%s (held-out end, %zu bytes)", a->calib[a->n_calib - 1], bytes);
    cli_eval_record_args ra = {.db = a->db, .subject = a->out, .text_label = label, .text_hash = hash,
                               .ref_path = a->model, .ctx = CHECK_CTX};
    if (cli_eval_record(&ra, &q->check, NULL, NULL, err, sizeof err)) return cli_fail(CMD, "%s", err);
    stage_line("check", "%lld held-out tokens: KL divergence %.4f nats, top-1 %.1f %%, perplexity %.3f (source %.3f)",
               (long long)q->check.tokens_scored, q->check.kld_mean, 100 * q->check.top1_agree, q->check.ppl,
               q->check.ref_ppl);
    return 0;
}

static int check(const quantize_args *a, quantize_run *q)
{
    if (!a->check_chunks) { stage_line("check", "skipped (--check-chunks 0)"); return 0; }
    char err[1024];
    rt_model *m = NULL, *ref = NULL;
    int rc;
    if (cli_open_model(a->out, 1, &m, err, sizeof err) || cli_open_model(a->model, 1, &ref, err, sizeof err))
        rc = cli_fail(CMD, "%s", err);
    else if (!ref->tok) rc = cli_fail(CMD, "%s: the model holds no tokenizer, nothing to check with", a->model);
    else rc = check_run(a, q, m, ref);
    rt_model_free(ref);
    rt_model_free(m);
    return rc;
}

static int report(const quantize_args *a, quantize_run *q)
{
    int rc = cli_report(a->db, q->plan_id, a->report, 1);
    if (!rc) stage_line("report", "%s", a->report);
    return rc;
}

/* ==== The summary ==== */

static void summary(const quantize_args *a, const quantize_run *q)
{
    double total = 0;
    printf("\n%-9s %s: %lld bytes (%.1f MiB), %.4f bpw (blocks), %.4f bpw (whole file)\n", "done", a->out,
           (long long)q->file_bytes, (double)q->file_bytes / (1 << 20), q->achieved_bpw, q->file_bpw);
    if (q->checked)
        printf("%-9s KL divergence %.4f +/- %.4f nats, top-1 %.2f %%, perplexity %.3f (source %.3f) on %lld held-out "
               "tokens\n", "quality", q->check.kld_mean, q->check.kld_stderr, 100 * q->check.top1_agree, q->check.ppl,
               q->check.ref_ppl, (long long)q->check.tokens_scored);
    printf("%-9s", "time");
    for (int s = 0; s <= ST_REPORT; s++) printf("%s %s %.1f s", s ? "," : "", stage_names[s], q->seconds[s]), total += q->seconds[s];
    printf("; %.1f s in all\n", total);
    printf("%-9s %s\n", "report", a->report);
    fflush(stdout);
}

int cmd_quantize(int argc, char **argv)
{
    quantize_args a;
    memset(&a, 0, sizeof a);
    if (!(a.calib = calloc((size_t)argc + 1, sizeof *a.calib))) return cli_fail(CMD, "out of memory");
    int rc = parse_args(&a, argc, argv);
    if (rc) { free(a.calib); return rc < 0 ? 0 : rc; }
    a.progress |= cli_progress_wanted();
    if (a.threads) omp_set_num_threads(a.threads);
    util_catch_interrupts();
    static int (*const stages[])(const quantize_args *, quantize_run *) = {measure, allocate, pack, check, report};
    quantize_run q;
    memset(&q, 0, sizeof q);
    for (int s = 0; s <= ST_REPORT && !rc; s++) {
        double t0 = util_now_s();
        rc = stages[s](&a, &q);
        q.seconds[s] = util_now_s() - t0;
        if (!rc && util_interrupted() && s < ST_REPORT)
            rc = cli_interrupted(CMD, "stopped after the %s stage, whose work is saved; the same command resumes from "
                                 "there", stage_names[s]);
    }
    if (!rc) summary(&a, &q);
    free(a.calib);
    return rc;
}
