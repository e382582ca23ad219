/*
 * cli/cmd_report.c — `bitplan report`: reads a calibration's measurements, plans and
 * evaluations from the database and writes the report (HTML with inline SVG charts,
 * or Markdown, CSV, JSON). What is missing but not fatal becomes a note, on stderr
 * and in the report (exit 0); a wrong plan or calibration id, or a database with
 * nothing to report, is a one-line error. Never writes to the database.
 */
#include "cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "db/db.h"
#include "reports/reports.h"
#include "util/util.h"

static const char usage_text[] =
    "usage: bitplan report --db D [-o OUT] [--plan N] [--calib ID] [--format html|md|csv|json] [--bpw B]\n"
    "  --db D        the database (bitplan measure / allocate / eval)\n"
    "  -o OUT        output file (default: standard output); the format follows a .md, .csv or .json name\n"
    "  --plan N      the plan whose allocation, sweep and memory are shown (default: the newest)\n"
    "  --calib ID    the calibration (default: the plan's, or the newest with measurements)\n"
    "  --format F    html (default), md, csv or json\n"
    "  --bpw B       heat map at the option nearest to B bits per weight (default 4)\n";

typedef struct {
    const char *db, *out;
    long plan, calib;
    int format_set;
    rep_params p;
} report_args;

static int format_from_name(const char *path, rep_format *f)
{
    const char *dot = strrchr(path, '.');
    return dot ? rep_format_parse(dot + 1, f) : -1;
}

/* What follows from the flags: the format from the output's name unless given. */
static void settle(report_args *a)
{
    if (!a->format_set && a->out && format_from_name(a->out, &a->p.format)) a->p.format = REP_HTML;
    a->p.plan_id = a->plan;
    a->p.source = a->db;
}

static int parse_args(int argc, char **argv, report_args *a)
{
    rep_params_init(&a->p);
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(k, "--help") || !strcmp(k, "-h")) { fputs(usage_text, stdout); return 2; }
        if (!v) return cli_fail("report", "%s needs a value (bitplan report --help)", k), 1;
        if (!strcmp(k, "--db")) a->db = v;
        else if (!strcmp(k, "-o") || !strcmp(k, "--out")) a->out = v;
        else if (!strcmp(k, "--plan")) { if (cli_parse_int(v, &a->plan) || a->plan <= 0) return cli_fail("report", "--plan: '%s' is not a plan id", v), 1; }
        else if (!strcmp(k, "--calib")) { if (cli_parse_int(v, &a->calib) || a->calib <= 0) return cli_fail("report", "--calib: '%s' is not a calibration id", v), 1; }
        else if (!strcmp(k, "--bpw")) { if (cli_parse_double(v, &a->p.bpw) || a->p.bpw <= 0 || a->p.bpw > 32) return cli_fail("report", "--bpw: '%s' is not a bit width", v), 1; }
        else if (!strcmp(k, "--format")) { if (rep_format_parse(v, &a->p.format)) return cli_fail("report", "--format: '%s' is not html, md, csv or json", v), 1; a->format_set = 1; }
        else return cli_fail("report", "unknown option '%s' (bitplan report --help)", k), 1;
        i++;
    }
    if (!a->db) return cli_fail("report", "--db is required (bitplan report --help)"), 1;
    settle(a);
    return 0;
}

/* Which calibration to report: --calib, else the plan's, else 0 (the newest). */
static int pick_calibration(db_conn *d, const report_args *a, int64_t *calib)
{
    *calib = a->calib;
    if (!a->plan) return 0;
    int64_t of_plan;
    if (db_plan_calibration(d, a->plan, &of_plan)) return cli_fail("report", "%s", db_errmsg(d));
    if (a->calib && a->calib != of_plan)
        return cli_fail("report", "plan %ld belongs to calibration %lld, not %ld", a->plan, (long long)of_plan, a->calib);
    *calib = of_plan;
    return 0;
}

/* The report goes to stdout for "-" (o is then unused), else to an atomic output
 * file opened before any work, so a bad destination fails first. */
static int to_stdout(const char *path) { return !path || !strcmp(path, "-"); }

static int write_out(const char *path, util_out *o, const sb_buf *b)
{
    char err[4400];
    if (!to_stdout(path)) {
        if (util_out_write(o, b->s, b->len, err, sizeof err) || util_out_commit(o, err, sizeof err))
            return cli_fail("report", "%s", err);
        return 0;
    }
    if (fwrite(b->s, 1, b->len, stdout) != b->len || fflush(stdout))
        return cli_fail("report", "stdout: write error");
    return 0;
}

/* Loads, builds and writes the report a asks for; quiet: no notes, no "wrote" line. */
static int make_report(const report_args *a, int quiet)
{
    db_conn *d = NULL;
    db_report *data = NULL;
    rep_report *r = NULL;
    sb_buf b = {0};
    int64_t calib;
    char err[4400];
    int rc;
    util_out o = {.fd = -1};
    if (!to_stdout(a->out) && util_out_open(&o, a->out, err, sizeof err)) return cli_fail("report", "%s", err);
    if (db_open(a->db, DB_OPEN_READ, &d)) { rc = cli_fail("report", "%s", db_errmsg(d)); goto done; }
    if ((rc = pick_calibration(d, a, &calib))) goto done;
    if (db_report_load(d, calib, &data)) { rc = cli_fail("report", "%s", db_errmsg(d)); goto done; }
    if (rep_build(data, &a->p, &r, err, sizeof err)) { rc = cli_fail("report", "%s: %s", a->db, err); goto done; }
    if (rep_write(&b, r, a->p.format)->oom) { rc = cli_fail("report", "out of memory writing the report"); goto done; }
    for (int i = 0; i < rep_n_notes(r) && !quiet; i++) fprintf(stderr, "bitplan report: note: %s\n", rep_note(r, i));
    if ((rc = write_out(a->out, &o, &b))) goto done;
    if (!to_stdout(a->out) && !quiet)
        printf("wrote %s: calibration %lld, %d measurements, %d plans, %d evaluations\n", a->out, (long long)data->calib_id,
               data->n_meas, data->n_plans, data->n_evals);
done:
    util_out_abort(&o); /* the temporary file, unless committed */
    free(b.s);
    rep_report_free(r);
    db_report_free(data);
    db_close(d);
    return rc;
}

int cmd_report(int argc, char **argv)
{
    report_args a = {0};
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc == 2 ? 0 : rc;
    return make_report(&a, 0);
}

int cli_report(const char *db, int64_t plan, const char *path, int quiet)
{
    report_args a = {0};
    rep_params_init(&a.p);
    a.db = db, a.out = path, a.plan = (long)plan;
    settle(&a);
    return make_report(&a, quiet);
}
