/*
 * cli/cmd_allocate.c — `bitplan allocate`: the exact plan for a bit budget.
 *
 *   bitplan allocate --db D --bpw 3.5            [common options]
 *   bitplan allocate --db D --vram 8GiB --ctx 4096 [--batch 1] [--kv-bits 16] [--reserve 256MiB]
 *   bitplan allocate --db D --size 90MiB          (the file's tensors, as pack or export-gguf write them)
 *   bitplan allocate --db D --sweep 2.0:8.0:0.1  [--label NAME]   (--label also puts a
 *                                                 single --bpw plan on a sweep's curve)
 *   bitplan allocate --db D --list
 * common: --calib ID, --metric rel_err|kld, --unweighted, --tie qkv|gate_up|CLASSES,
 *         --min-bits CLASS=B, --max-bits CLASS=B, --head-bits B, --gap G,
 *         --time-limit S, --hull, --write-lp FILE, --verbose
 *
 * bpw is the EXL2 convention: bits of the quantized linear layers of the blocks over
 * their weights. The head is outside that budget (pinned to its cheapest option with
 * bpw >= --head-bits, 6 by default); the whole-file bpw printed beside counts every
 * parameter, norms as F32 and unquantized 2-D tensors as F16. For --vram and --size
 * every byte counts, the head included (--size: the planned tensors, norms as F32,
 * other 2-D tensors as F16; metadata, tokenizer and alignment padding are extra). Parses, calls db/ and allocate/, prints; nothing else.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "allocate/allocate.h"
#include "cli.h"
#include "db/db.h"

#define CMD "allocate"

typedef struct {
    const char *db, *write_lp, *label;
    int64_t calib;
    double bpw;                 /* NAN unless --bpw */
    double sweep[3];            /* from, to, step; sweep[2] = 0 unless --sweep */
    int64_t vram;               /* 0 unless --vram */
    int64_t size;               /* 0 unless --size */
    alloc_vram_params vp;
    int ctx_given, list;
    int quiet;                  /* nothing on stdout (bitplan quantize) */
    alloc_setup setup;
    alloc_params prm;
} args;

/* ==== Arguments ==== */

static int usage(void)
{
    fprintf(stderr,
            "usage: bitplan allocate --db D (--bpw B | --vram SIZE --ctx N | --size SIZE | --sweep FROM:TO:STEP | --list)\n"
            "  --size SIZE           the file's tensors (planned, norms F32, other 2-D F16) within SIZE, the head included\n"
            "  --calib ID            calibration (default: the newest finished one)\n"
            "  --metric rel_err|kld  damage to minimize (default: kld when every tensor has a KL probe)\n"
            "  --unweighted          rel_err not weighted by tensor size\n"
            "  --tie SET             tensors of one layer in SET share an option: qkv, gate_up, or q,k,v\n"
            "  --min-bits CLASS=B    options of CLASS need >= B bits per weight (also --max-bits)\n"
            "  --head-bits B         the head's option needs >= B bpw (bpw targets pin the cheapest such; default 6)\n"
            "  --batch N --kv-bits B --reserve SIZE   VRAM model (1, 16, 256MiB); --vram is the memory free\n"
            "                        with the CUDA context made (about 0.5 GiB of an H200 is the context's)\n"
            "  --gap G --time-limit S --hull --write-lp FILE --label NAME --verbose\n");
    return 2;
}

static int parse_class_bound(const char *v, args *a, int is_min)
{
    char cls[32];
    const char *eq = strchr(v, '=');
    double b;
    if (!eq || (size_t)(eq - v) >= sizeof cls || cli_parse_double(eq + 1, &b) || b < 0)
        return cli_fail(CMD, "--%s-bits wants CLASS=BITS, got '%s'", is_min ? "min" : "max", v);
    memcpy(cls, v, (size_t)(eq - v)), cls[eq - v] = 0;
    unsigned set = alloc_class_set_parse(cls);
    if (!set) return cli_fail(CMD, "unknown tensor class '%s' (q k v o gate up down head, or qkv, gate_up, attn, mlp)", cls);
    for (int c = 0; c < LAY_N_CLASSES; c++)
        if (set >> c & 1u) {
            if (is_min) a->setup.min_bpw[c] = b;
            else a->setup.max_bpw[c] = b;
        }
    return 0;
}

/* Each solve stores a plan and takes seconds on a large model: a sweep of more
 * than this many targets is a typo in STEP, not a curve anyone wants. */
#define MAX_SWEEP_PLANS 1000

/* The number of targets FROM, FROM + STEP, ... <= TO (the same count run_sweep walks). */
static double sweep_count(const double *s) { return floor((s[1] - s[0]) / s[2] + 1e-9) + 1; }

static int parse_sweep(const char *v, double *s)
{
    char part[3][64];
    int n = sscanf(v, "%63[^:]:%63[^:]:%63[^\n]", part[0], part[1], part[2]);
    if (n != 3 || cli_parse_double(part[0], &s[0]) || cli_parse_double(part[1], &s[1]) ||
        cli_parse_double(part[2], &s[2]) || !(s[2] > 0) || s[1] < s[0] || s[0] <= 0)
        return cli_fail(CMD, "--sweep wants FROM:TO:STEP with 0 < FROM <= TO and STEP > 0, got '%s'", v);
    if (sweep_count(s) > MAX_SWEEP_PLANS)
        return cli_fail(CMD, "--sweep %s asks for %.0f plans; at most %d in one sweep (take a larger STEP)", v,
                        sweep_count(s), MAX_SWEEP_PLANS);
    return 0;
}

/* One flag with a value; returns 0, 1 (failed, message printed) or -1 (unknown). */
static int parse_valued(args *a, const char *f, const char *v)
{
    long n;
    double d;
    if (!strcmp(f, "--db")) a->db = v;
    else if (!strcmp(f, "--calib")) { if (cli_parse_int(v, &n) || n <= 0) return cli_fail(CMD, "--calib wants an id, got '%s'", v); a->calib = n; }
    else if (!strcmp(f, "--bpw")) { if (cli_parse_double(v, &a->bpw) || a->bpw <= 0) return cli_fail(CMD, "--bpw wants a positive number, got '%s'", v); }
    else if (!strcmp(f, "--sweep")) return parse_sweep(v, a->sweep);
    else if (!strcmp(f, "--vram")) { if (cli_parse_size(v, &a->vram) || a->vram <= 0) return cli_fail(CMD, "--vram wants a size such as 8GiB, got '%s'", v); }
    else if (!strcmp(f, "--size")) { if (cli_parse_size(v, &a->size) || a->size <= 0) return cli_fail(CMD, "--size wants a size such as 90MiB, got '%s'", v); }
    else if (!strcmp(f, "--ctx")) { if (cli_parse_int(v, &n) || n <= 0) return cli_fail(CMD, "--ctx wants a positive count, got '%s'", v); a->vp.ctx = n, a->ctx_given = 1; }
    else if (!strcmp(f, "--batch")) { if (cli_parse_int(v, &n) || n <= 0) return cli_fail(CMD, "--batch wants a positive count, got '%s'", v); a->vp.batch = n; }
    else if (!strcmp(f, "--kv-bits")) { if (cli_parse_int(v, &n) || n < 1 || n > 32) return cli_fail(CMD, "--kv-bits wants 1..32, got '%s'", v); a->vp.kv_bits = (int)n; }
    else if (!strcmp(f, "--reserve")) { if (cli_parse_size(v, &a->vp.reserve)) return cli_fail(CMD, "--reserve wants a size such as 500MiB, got '%s'", v); }
    else if (!strcmp(f, "--metric")) {
        if (!strcmp(v, "rel_err")) a->setup.metric = ALLOC_METRIC_REL_ERR;
        else if (!strcmp(v, "kld")) a->setup.metric = ALLOC_METRIC_KLD;
        else return cli_fail(CMD, "--metric wants rel_err or kld, got '%s'", v);
    } else if (!strcmp(f, "--tie")) {
        unsigned set = alloc_class_set_parse(v);
        if (!set) return cli_fail(CMD, "--tie wants qkv, gate_up or a list of classes such as q,k,v; got '%s'", v);
        if (a->setup.n_ties == 8) return cli_fail(CMD, "at most 8 --tie sets");
        a->setup.ties[a->setup.n_ties++] = set;
    } else if (!strcmp(f, "--min-bits") || !strcmp(f, "--max-bits")) return parse_class_bound(v, a, f[2] == 'm' && f[3] == 'i');
    else if (!strcmp(f, "--head-bits")) { if (cli_parse_double(v, &a->setup.head_bits) || a->setup.head_bits < 0) return cli_fail(CMD, "--head-bits wants a number, got '%s'", v); }
    else if (!strcmp(f, "--gap")) { if (cli_parse_double(v, &d) || d < 0) return cli_fail(CMD, "--gap wants a number >= 0, got '%s'", v); a->prm.mip_gap = d; }
    else if (!strcmp(f, "--time-limit")) { if (cli_parse_double(v, &d) || d <= 0) return cli_fail(CMD, "--time-limit wants seconds, got '%s'", v); a->prm.time_limit = d; }
    else if (!strcmp(f, "--write-lp")) a->write_lp = v;
    else if (!strcmp(f, "--label")) a->label = v;
    else return -1;
    return 0;
}

static int parse_args(int argc, char **argv, args *a)
{
    memset(a, 0, sizeof *a);
    a->bpw = NAN;
    alloc_vram_params_init(&a->vp);
    alloc_setup_init(&a->setup);
    alloc_params_init(&a->prm);
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) return usage(), 2;
        if (!strcmp(f, "--list")) { a->list = 1; continue; }
        if (!strcmp(f, "--hull")) { a->prm.hull = 1; continue; }
        if (!strcmp(f, "--unweighted")) { a->setup.weight_by_size = 0; continue; }
        if (!strcmp(f, "--verbose")) { a->prm.verbose = 1; continue; }
        if (i + 1 >= argc) return cli_fail(CMD, "%s: unknown flag or missing value", f);
        int rc = parse_valued(a, f, argv[++i]);
        if (rc < 0) return cli_fail(CMD, "unknown flag %s (see bitplan allocate --help)", f);
        if (rc) return rc;
    }
    int modes = !isnan(a->bpw) + (a->vram > 0) + (a->size > 0) + (a->sweep[2] > 0) + a->list;
    if (!a->db) return cli_fail(CMD, "--db D is required");
    if (modes != 1) return cli_fail(CMD, "give exactly one of --bpw, --vram, --size, --sweep, --list");
    if (a->vram > 0 && !a->ctx_given) return cli_fail(CMD, "--vram needs --ctx N (the context to fit)");
    a->setup.head_in_budget = a->vram > 0 || a->size > 0;
    return 0;
}

/* ==== Printing ==== */

static const char *option_name(const db_alloc_input *in, int64_t id)
{
    for (int i = 0; i < in->n_options; i++)
        if (in->options[i].id == id) return in->options[i].opt.name;
    return "?";
}

static void human_bytes(int64_t b, char *buf, size_t len)
{
    if (b >= 1LL << 30) snprintf(buf, len, "%.3f GiB", (double)b / (1LL << 30));
    else snprintf(buf, len, "%.2f MiB", (double)b / (1 << 20));
}

/* Per class: tensors, bits per weight, and how many took each option. */
static void print_histogram(const db_alloc_input *in, const alloc_built *b, const int *choice)
{
    printf("  %-5s %7s %7s  options\n", "class", "tensors", "bpw");
    for (int c = 0; c < LAY_N_CLASSES; c++) {
        int n = 0;
        int64_t bits = 0, w = 0;
        for (int t = 0; t < b->n; t++)
            if (alloc_tensor_class(b->p, t) == (lay_class)c)
                n++, bits += alloc_option_bits(b->p, t, choice[t]), w += alloc_tensor_weights(b->p, t);
        if (!n) continue;
        printf("  %-5s %7d %7.3f ", lay_class_name((lay_class)c), n, (double)bits / (double)w);
        for (int o = 0; o < in->n_options; o++) {
            int k = 0;
            for (int t = 0; t < b->n; t++)
                k += alloc_tensor_class(b->p, t) == (lay_class)c && alloc_option_id(b->p, t, choice[t]) == in->options[o].id;
            if (k) printf(" %s x%d", in->options[o].opt.name, k);
        }
        printf("\n");
    }
}

static void print_memory(const alloc_memory *m, int64_t vram)
{
    char s[6][32];
    human_bytes(m->weights, s[0], 32), human_bytes(m->unquantized, s[1], 32), human_bytes(m->kv_cache, s[2], 32);
    human_bytes(m->scratch, s[3], 32), human_bytes(m->reserve, s[4], 32), human_bytes(m->total, s[5], 32);
    printf("memory: packed weights %s + unquantized %s + KV cache %s + scratch %s + reserve %s = %s",
           s[0], s[1], s[2], s[3], s[4], s[5]);
    human_bytes(vram, s[0], 32);
    printf(" of %s\n", s[0]);
}

static int list_plans(db_conn *d, const args *a)
{
    db_plan_row *rows;
    int n;
    if (db_plan_list(d, a->calib, &rows, &n)) return cli_fail(CMD, "%s", db_errmsg(d));
    printf("%5s %6s %4s %10s %7s %9s %9s %11s %8s %7s  %s\n", "plan", "calib", "kind", "target", "metric", "bpw", "file_bpw",
           "objective", "gap", "seconds", "sweep");
    for (int i = 0; i < n; i++) {
        const db_plan_row *p = &rows[i];
        printf("%5lld %6lld %4s %10.4g %7s %9.4f %9.4f %11.5g %8.1e %7.2f  %s\n", (long long)p->id, (long long)p->calib_id,
               p->kind, p->target, p->metric, p->achieved_bpw, p->file_bpw, p->objective, p->gap, p->solve_seconds, p->sweep);
    }
    if (!n) printf("(no plans)\n");
    db_plan_rows_free(rows, n);
    return 0;
}

/* ==== One plan ==== */

typedef struct {
    db_conn *d;
    db_alloc_input in;
    alloc_built b;
    alloc_shape shape;
    int shape_ok;
    alloc_unquantized u;
    int64_t lo, hi;             /* budget bits of the cheapest and dearest plans */
    int64_t fixed_bits;         /* bits outside the budget row (the pinned head in bpw mode) */
    int64_t last_plan;          /* id of the last plan stored */
} ctx;

/* Stores a solved plan and prints its summary. */
static int store_plan(ctx *c, const args *a, const char *kind, double target, const alloc_result *r,
                      const char *memory_json, const char *sweep)
{
    db_plan_row row;
    memset(&row, 0, sizeof row);
    row.calib_id = c->in.calib_id;
    snprintf(row.kind, sizeof row.kind, "%s", kind);
    row.target = target;
    snprintf(row.metric, sizeof row.metric, "%s", c->b.metric == ALLOC_METRIC_KLD ? "kld" : "rel_err");
    int64_t block_bits = 0;
    for (int t = 0; t < c->b.n; t++)
        if (alloc_tensor_class(c->b.p, t) != LAY_HEAD) block_bits += alloc_option_bits(c->b.p, t, r->choice[t]);
    row.achieved_bpw = (double)block_bits / (double)c->b.block_weights;
    int64_t all_params = c->in.n_params > c->b.planned_weights ? c->in.n_params : c->b.planned_weights + c->u.n_1d + c->u.n_2d;
    row.file_bpw = (double)alloc_file_bits(r->total_bits, c->u) / (double)all_params;
    row.total_bits = r->total_bits;
    row.objective = r->objective, row.gap = r->gap, row.solve_seconds = r->seconds, row.n_dropped = r->n_dropped;
    row.memory_json = memory_json, row.sweep = sweep, row.command = cli_command_line();
    db_plan_choice *ch = malloc((size_t)c->b.n * sizeof *ch);
    if (!ch) return cli_fail(CMD, "out of memory");
    for (int t = 0; t < c->b.n; t++)
        ch[t] = (db_plan_choice){c->in.tensors[c->b.in_tensor[t]].id, alloc_option_id(c->b.p, t, r->choice[t]),
                                 alloc_option_bits(c->b.p, t, r->choice[t]), alloc_option_damage(c->b.p, t, r->choice[t])};
    int64_t id;
    int rc = db_plan_insert(c->d, &row, ch, c->b.n, &id);
    free(ch);
    if (rc) return cli_fail(CMD, "%s", db_errmsg(c->d));
    c->last_plan = id;
    if (a->quiet) return 0;
    char tgt[32];
    if (!strcmp(kind, "vram") || !strcmp(kind, "size")) human_bytes((int64_t)target, tgt, sizeof tgt);
    else snprintf(tgt, sizeof tgt, "%.6g", target);
    printf("plan %lld: %s %s -> %.4f bpw (blocks), %.4f bpw (whole file); %s %.6g, gap %.1e (%s), %.2f s, "
           "%lld dominated options dropped\n", (long long)id, kind, tgt, row.achieved_bpw, row.file_bpw, row.metric,
           r->objective, r->gap, alloc_status_name(r->status), r->seconds, (long long)r->n_dropped);
    return 0;
}

static int solve_budget(ctx *c, const args *a, int64_t budget, alloc_result *r)
{
    char err[512];
    alloc_params prm = a->prm;
    prm.write_lp = a->write_lp;
    if (alloc_solve(c->b.p, budget, &prm, r, err, sizeof err)) return cli_fail(CMD, "%s", err);
    if (r->status == ALLOC_FEASIBLE)
        fprintf(stderr, "bitplan %s: note: time limit reached; plan kept with gap %.2e\n", CMD, r->gap);
    return 0;
}

static int run_bpw(ctx *c, const args *a, double target, const char *sweep, int in_sweep)
{
    double lo = (double)c->lo / (double)c->b.block_weights, hi = (double)c->hi / (double)c->b.block_weights;
    if (target < lo - 1e-12 || target > hi + 1e-12) {
        if (in_sweep) { if (!a->quiet) printf("%.4g bpw: unreachable (%.4f to %.4f), skipped\n", target, lo, hi); return 0; }
        return cli_fail(CMD, "target %.4g bpw is unreachable: this model and option set reach %.4f to %.4f bpw", target, lo, hi);
    }
    int64_t budget = (int64_t)floor(target * (double)c->b.block_weights + 1e-9);
    if (budget < c->lo) budget = c->lo;
    alloc_result r;
    int rc = solve_budget(c, a, budget, &r);
    if (!rc) rc = store_plan(c, a, "bpw", target, &r, NULL, sweep);
    if (!rc && !in_sweep && !a->quiet) print_histogram(&c->in, &c->b, r.choice);
    alloc_result_free(&r);
    return rc;
}

static int run_vram(ctx *c, const args *a)
{
    if (!c->shape_ok) return cli_fail(CMD, "the model's config_json lacks the shape the memory model needs (n_layers, dim, ...)");
    alloc_memory m0 = alloc_memory_model(&c->shape, c->u, &a->vp, 0);
    int64_t fixed = m0.total - m0.weights, room = a->vram - fixed;
    int64_t min_mem = fixed + (c->lo + 7) / 8, max_mem = fixed + (c->hi + 7) / 8;
    if (room * 8 < c->lo) {
        char s[3][32];
        human_bytes(a->vram, s[0], 32), human_bytes(min_mem, s[1], 32), human_bytes(max_mem, s[2], 32);
        return cli_fail(CMD, "%s is unreachable with ctx %lld: this model and option set need %s to %s", s[0],
                        (long long)a->vp.ctx, s[1], s[2]);
    }
    int64_t budget = room > INT64_MAX / 8 ? INT64_MAX : room * 8;
    alloc_result r;
    int rc = solve_budget(c, a, budget, &r);
    if (rc) return rc;
    alloc_memory m = alloc_memory_model(&c->shape, c->u, &a->vp, r.total_bits);
    char json[512];
    alloc_memory_json(&m, &a->vp, a->vram, json, sizeof json);
    rc = store_plan(c, a, "vram", (double)a->vram, &r, json, NULL);
    if (!rc && !a->quiet) print_memory(&m, a->vram), print_histogram(&c->in, &c->b, r.choice);
    alloc_result_free(&r);
    return rc;
}

/* --size: the planned tensors' bytes plus the unquantized ones (alloc_file_bits)
 * within the size. */
static int run_size(ctx *c, const args *a)
{
    int64_t fixed = alloc_file_bits(0, c->u) / 8, room = a->size - fixed;
    if (room * 8 < c->lo || room <= 0) {
        char s[3][32];
        human_bytes(a->size, s[0], 32), human_bytes(fixed + (c->lo + 7) / 8, s[1], 32), human_bytes(fixed + (c->hi + 7) / 8, s[2], 32);
        return cli_fail(CMD, "a file of %s is unreachable: this model and option set need %s to %s", s[0], s[1], s[2]);
    }
    int64_t budget = room > INT64_MAX / 8 ? INT64_MAX : room * 8;
    alloc_result r;
    int rc = solve_budget(c, a, budget, &r);
    if (rc) return rc;
    char json[256], s[32];
    snprintf(json, sizeof json, "{\"planned\":%lld,\"unquantized\":%lld,\"total\":%lld,\"budget\":%lld}",
             (long long)((r.total_bits + 7) / 8), (long long)fixed, (long long)((r.total_bits + 7) / 8 + fixed), (long long)a->size);
    rc = store_plan(c, a, "size", (double)a->size, &r, json, NULL);
    human_bytes((r.total_bits + 7) / 8 + fixed, s, sizeof s);
    if (!rc && !a->quiet) printf("  tensors %s (%lld bytes) of %lld\n", s, (long long)((r.total_bits + 7) / 8 + fixed), (long long)a->size),
             print_histogram(&c->in, &c->b, r.choice);
    alloc_result_free(&r);
    return rc;
}

static int run_sweep(ctx *c, const args *a)
{
    char stamp[32];
    const char *label = a->label;     /* whole: the plans store it as given */
    if (!label) {
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(stamp, sizeof stamp, "sweep-%Y%m%d-%H%M%S", &tm);
        label = stamp;
    }
    int n = (int)sweep_count(a->sweep), stored = 0;
    for (int i = 0; i < n; i++) {
        double target = a->sweep[0] + i * a->sweep[2];
        double lo = (double)c->lo / (double)c->b.block_weights, hi = (double)c->hi / (double)c->b.block_weights;
        if (run_bpw(c, a, target, label, 1)) return 1;
        stored += target >= lo - 1e-12 && target <= hi + 1e-12;
    }
    if (!a->quiet) printf("sweep '%s': %d plans stored\n", label, stored);
    return stored ? 0 : cli_fail(CMD, "no target of the sweep is reachable");
}

/* Reads the calibration and builds the problem; prints what the caller should know. */
static int prepare(ctx *c, const args *a)
{
    char err[512];
    if (db_calib_choose(c->d, a->calib, &c->in.calib_id)) return cli_fail(CMD, "%s", db_errmsg(c->d));
    if (db_alloc_load(c->d, c->in.calib_id, &c->in)) return cli_fail(CMD, "%s", db_errmsg(c->d));
    if (alloc_build_from_db(&c->in, &a->setup, &c->b, err, sizeof err)) return cli_fail(CMD, "%s", err);
    if (c->b.block_weights <= 0) return cli_fail(CMD, "calibration %lld has no block tensors", (long long)c->in.calib_id);
    if (c->b.note[0]) fprintf(stderr, "bitplan %s: note: %s\n", CMD, c->b.note);
    c->shape_ok = !alloc_shape_from_json(c->in.config_json, &c->shape, err, sizeof err);
    if (c->shape_ok) c->u = alloc_unquantized_params(&c->shape, c->in.n_params, c->b.planned_weights);
    else {  /* whole-file bpw without the shape: every unplanned parameter as F16 */
        c->u.n_1d = 0, c->u.n_2d = c->in.n_params > c->b.planned_weights ? c->in.n_params - c->b.planned_weights : 0;
        if (a->vram <= 0) fprintf(stderr, "bitplan %s: note: %s; whole-file bpw counts unplanned parameters as F16\n", CMD, err);
    }
    if (alloc_range(c->b.p, &c->lo, &c->hi, err, sizeof err)) return cli_fail(CMD, "%s", err);
    if (!a->quiet) printf("calibration %lld: %d tensors, %lld measurements, metric %s\n", (long long)c->in.calib_id, c->b.n,
           (long long)c->in.n_meas, c->b.metric == ALLOC_METRIC_KLD ? "kld" : "rel_err");
    (void)option_name;
    return 0;
}

int cmd_allocate(int argc, char **argv) { return cli_allocate(argc, argv, 0, NULL); }

int cli_allocate(int argc, char **argv, int quiet, int64_t *plan_id)
{
    args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc;
    a.quiet = quiet;
    ctx c;
    memset(&c, 0, sizeof c);
    if (db_open(a.db, a.list ? DB_OPEN_READ : DB_OPEN_WRITE, &c.d)) {
        rc = cli_fail(CMD, "%s", db_errmsg(c.d));
        db_close(c.d);
        return rc;
    }
    if (a.list) rc = list_plans(c.d, &a);
    else if (!(rc = prepare(&c, &a)))
        rc = a.vram > 0 ? run_vram(&c, &a) : a.size > 0 ? run_size(&c, &a) : a.sweep[2] > 0 ? run_sweep(&c, &a)
                                                                                : run_bpw(&c, &a, a.bpw, a.label, 0);
    if (plan_id) *plan_id = c.last_plan;
    alloc_built_free(&c.b);
    db_alloc_input_free(&c.in);
    db_close(c.d);
    return rc;
}
