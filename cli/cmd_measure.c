/*
 * cli/cmd_measure.c — `bitplan measure`: the measurement pass (measure/driver.c)
 * from the command line, with progress on a terminal.
 *
 *     bitplan measure MODEL --calib FILE... --db D [--rows R] [--ctx C]
 *                     [--options F] [--damp X] [--kl-probe] [--threads N] [--fast-error]
 *                     [--resident]
 *     mpirun -np N bitplan measure ...      (the same work, split across N ranks)
 *
 * It must never do the work itself: it parses, calls meas_run, and prints.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "util/util.h"

static const char usage_text[] =
    "usage: bitplan measure MODEL --calib FILE... --db D [options]\n"
    "\n"
    "Measures, for every linear layer and every candidate option, the relative output\n"
    "error of GPTQ (and of round-to-nearest) on calibration text, into the database.\n"
    "Resumable: run the same command again after an interruption.\n"
    "\n"
    "  --calib FILE...   calibration text files (one or more)\n"
    "  --db D            SQLite database (created if absent)\n"
    "  --rows R          calibration rows (default 16)\n"
    "  --ctx C           tokens per row (default 512)\n"
    "  --options F       option file, or a preset: default (the built-in 36 options) or\n"
    "                    ggml (GGUF block types Q2_K .. Q8_0, for export-gguf)\n"
    "  --damp X          GPTQ damping, a share of mean(diag H) (default 0.01)\n"
    "  --kl-probe        also measure each tensor's end-to-end KL divergence\n"
    "                    (quantized alone at the 4-bit g128 option)\n"
    "  --threads N       threads (default: all cores)\n"
    "  --fast-error      errors from GPTQ's own sums and round-to-nearest's in float:\n"
    "                    a third less time, errors within 2e-6 relative (a separate\n"
    "                    calibration in the database)\n"
    "  --resident        decode every weight to fp32 at the start instead of one\n"
    "                    block at a time (same results; memory grows with the model)\n"
    "  --progress        show progress even when stderr is not a terminal\n"
    "\n"
    "On several processes or machines: mpirun -np N bitplan measure ... (each rank\n"
    "runs a share of the rows and of the work; --threads is per rank; only rank 0\n"
    "writes the database, which is the same as one process's for any N).\n";

typedef struct {
    const char *model, *db, *options;
    const char **calib;
    int n_calib, progress;
    meas_params p;
} measure_args;

void cli_measure_progress(void *line, const meas_progress *p)
{
    cli_progress_line *s = line;
    double now = util_now_s();
    if (now - s->last < 0.25) return;
    s->last = now;
    s->shown = 1;
    /* rate and time left of the measurement, or of the probes once it is done */
    int units = p->units_total > p->units_done || !p->probes_total;
    int64_t done = units ? p->units_done : p->probes_done, total = units ? p->units_total : p->probes_total;
    double rate = p->elapsed > 0 ? (double)done / p->elapsed : 0;
    char left[32] = "?";
    if (done > 0 && rate > 0) {
        double sec = (double)(total - done) / rate;
        snprintf(left, sizeof left, "%dm%02ds", (int)(sec / 60), (int)sec % 60);
    }
    fprintf(stderr, "\r  %-7s layer %3d  tensors %lld/%lld  options %lld/%lld", p->phase, p->layer,
            (long long)p->tensors_done, (long long)p->tensors_total, (long long)p->units_done, (long long)p->units_total);
    if (p->probes_total) fprintf(stderr, "  probes %lld/%lld", (long long)p->probes_done, (long long)p->probes_total);
    fprintf(stderr, "  %.1f %s/s  left %s", rate, units ? "options" : "probes", left);
    fprintf(stderr, "   ");
    fflush(stderr);
}

static int need_value(int i, int argc, char **argv)
{
    if (i + 1 < argc) return 0;
    return cli_fail("measure", "%s needs a value", argv[i]);
}

static int parse_positive(const char *flag, const char *s, int *out)
{
    long v;
    if (cli_parse_count("measure", flag, s, 1, strcmp(flag, "--threads") ? 1 << 20 : CLI_MAX_THREADS, &v)) return 1;
    *out = (int)v;
    return 0;
}

static int parse_one(measure_args *a, int *i, int argc, char **argv)
{
    const char *f = argv[*i];
    if (!strcmp(f, "--kl-probe")) return a->p.kl_probe = 1, 0;
    if (!strcmp(f, "--progress")) return a->progress = 1, 0;
    if (!strcmp(f, "--resident")) return a->p.resident = 1, 0;
    if (!strcmp(f, "--fast-error")) return a->p.fast_error = 1, 0;
    if (!strcmp(f, "--calib")) {
        while (*i + 1 < argc && strncmp(argv[*i + 1], "--", 2)) a->calib[a->n_calib++] = argv[++*i];
        return a->n_calib ? 0 : cli_fail("measure", "--calib needs at least one file");
    }
    if (strncmp(f, "--", 2)) {
        if (a->model) return cli_fail("measure", "unexpected argument '%s' (the model is %s)", f, a->model);
        return a->model = f, 0;
    }
    if (need_value(*i, argc, argv)) return 1;
    const char *v = argv[++*i];
    if (!strcmp(f, "--db")) return a->db = v, 0;
    if (!strcmp(f, "--options")) return a->options = v, 0;
    if (!strcmp(f, "--rows")) return parse_positive(f, v, &a->p.rows);
    if (!strcmp(f, "--ctx")) return parse_positive(f, v, &a->p.ctx);
    if (!strcmp(f, "--threads")) return parse_positive(f, v, &a->p.threads);
    if (!strcmp(f, "--damp")) {
        if (cli_parse_double(v, &a->p.damp) || a->p.damp < 0) return cli_fail("measure", "--damp: '%s' is not a number >= 0", v);
        return 0;
    }
    return cli_fail("measure", "unknown option '%s' (see bitplan measure --help)", f);
}

static int parse_args(measure_args *a, int argc, char **argv)
{
    meas_params_init(&a->p);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { fputs(usage_text, stdout); return -1; }
        if (parse_one(a, &i, argc, argv)) return 1;
    }
    if (!a->model) return cli_fail("measure", "no model given (bitplan measure MODEL --calib FILE... --db D)");
    if (!a->n_calib) return cli_fail("measure", "no calibration text given (--calib FILE...)");
    if (!a->db) return cli_fail("measure", "no database given (--db D)");
    return 0;
}

static void print_result(const measure_args *a, const meas_result *r)
{
    if (r->already_done) {
        printf("already measured: %lld tensors × %lld options", (long long)r->n_tensors, (long long)r->n_options);
        if (a->p.kl_probe) printf(", KL probes at \"%s\"", r->ref_option);
        printf(" (calibration %lld in %s)\n", (long long)r->calib_id, a->db);
        return;
    }
    printf("measured %lld tensors × %lld options: %lld new rows, %lld already there", (long long)r->n_tensors,
           (long long)r->n_options, (long long)r->measured, (long long)r->skipped);
    if (a->p.kl_probe) printf(", %lld KL probes at \"%s\"", (long long)r->probed, r->ref_option);
    printf(" in %.1f s (calibration %lld in %s)\n", r->seconds, (long long)r->calib_id, a->db);
    if (r->ranks > 1)
        printf("%d ranks: %.1f MB sent, %.0f%% of the time inside MPI calls (mean of the ranks)\n", r->ranks,
               r->sent_bytes / 1e6, 100 * r->wait_share);
}

int cmd_measure(int argc, char **argv)
{
    measure_args a = {0};
    opt_set opts = {0, NULL};
    char err[1024];
    cli_progress_line ps = {0, 0};
    int rc = 1;
    if (!(a.calib = calloc((size_t)argc, sizeof *a.calib))) return cli_fail("measure", "out of memory");
    int pr = parse_args(&a, argc, argv);
    if (pr) { free(a.calib); return pr < 0 ? 0 : pr; }
    if (a.options) {
        if (opt_set_load(a.options, &opts, err, sizeof err)) { free(a.calib); return cli_fail("measure", "%s", err); }
        a.p.options = &opts;
    }
    if (a.progress || cli_progress_wanted()) a.p.progress = cli_measure_progress, a.p.progress_ctx = &ps;
    meas_result res;
    util_catch_interrupts();
    int failed = meas_run(a.model, a.calib, a.n_calib, a.db, &a.p, &res, err, sizeof err);
    if (ps.shown) fputc('\n', stderr);
    if (failed && util_interrupted())
        rc = cli_interrupted("measure", "%lld new measurements are saved in %s; the same command resumes from there",
                             (long long)res.measured, a.db);
    else if (failed) cli_fail("measure", "%s", err);
    else print_result(&a, &res), rc = 0;
    opt_set_free(&opts);
    free(a.calib);
    return rc;
}
