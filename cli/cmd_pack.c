/*
 * cli/cmd_pack.c — `bitplan pack MODEL --db D [--plan N | --uniform OPTION] -o OUT`:
 * quantizes the model at a plan and writes one packed file (pack/FORMAT.md);
 * `bitplan export-gguf` (same arguments) writes a plan of ggml block types as a
 * GGUF file for llama.cpp and Ollama instead (pack/export.c).
 * --uniform first records a plan with that one option for every tensor (the
 * baseline the exact plans are compared with) and packs it. --rtn rounds to
 * nearest instead of running GPTQ; with --uniform it needs no database at all
 * (the options come from --options, the default set by default).
 *     mpirun -np N bitplan pack ...   (the GPTQ work split across N ranks; the same file)
 * It must never quantize or write anything itself: pack/ and db/ do.
 */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

#include "db/db.h"
#include "measure/measure.h"
#include "pack/pack.h"
#include "par/par.h"
#include "util/util.h"

static const char usage_gguf[] =
    "usage: bitplan export-gguf MODEL --db D [--plan N] -o OUT.gguf [--hessians sequential|full]\n"
    "       bitplan export-gguf MODEL --rtn --uniform TYPE -o OUT.gguf    (TYPE: Q4_K, ...; --options ggml)\n"
    "  writes the plan as a GGUF file that llama.cpp and Ollama run unchanged: every\n"
    "  planned tensor must be a ggml block type (measure with --options ggml); the\n"
    "  source's metadata and tokenizer are kept. Options as for `bitplan pack`:\n";

static const char usage[] =
    "usage: bitplan pack MODEL --db D [--plan N] -o OUT [--hessians sequential|full]\n"
    "       bitplan pack MODEL --rtn --uniform OPTION [--options SPEC] -o OUT\n"
    "  --db D             the measurement database holding the plan\n"
    "  --plan N           plan id (default: the newest plan)\n"
    "  -o, --out OUT      the packed file to write (atomically: complete or absent)\n"
    "  --hessians MODE    sequential (default): Hessians through the already quantized\n"
    "                     layers, as EXL2 does; full: the full-precision model's, as measured\n"
    "  --uniform OPTION   record a uniform plan (OPTION for every tensor) and pack it\n"
    "  --head-option OPT  with --uniform: the head's option (default: OPTION)\n"
    "  --rtn              round-to-nearest instead of GPTQ: no calibration text or\n"
    "                     Hessians, minutes instead of hours on a 7B model, more\n"
    "                     damage; options without h64/h128/awq. With --uniform and no\n"
    "                     --db: no measurement at all (a file to time, or a first try)\n"
    "  --options SPEC     with --rtn and no --db: where --uniform's option is found:\n"
    "                     default (the built-in set), ggml, or an option file\n"
    "  --resident         decode every weight to fp32 at the start instead of one\n"
    "                     block at a time (same file; memory grows with the model)\n"
    "  --progress         progress on stderr even when it is not a terminal\n";

static const char *cmd_name = "pack"; /* or "export-gguf": what errors are prefixed with */

typedef struct {
    const char *model, *db, *out, *uniform, *head_option, *options;
    long plan;
    pack_params p;
    opt_set set;                /* --rtn without --db: the set --uniform is found in */
} pack_args;

static int parse_args(int argc, char **argv, pack_args *a)
{
    pack_out_format out = a->p.out;
    memset(a, 0, sizeof *a);
    pack_params_init(&a->p);
    a->p.out = out;
    if (cli_progress_wanted()) a->p.progress = cli_pack_progress;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        int has_val = i + 1 < argc;
        if (!strcmp(o, "--db") && has_val) a->db = argv[++i];
        else if ((!strcmp(o, "-o") || !strcmp(o, "--out")) && has_val) a->out = argv[++i];
        else if (!strcmp(o, "--uniform") && has_val) a->uniform = argv[++i];
        else if (!strcmp(o, "--head-option") && has_val) a->head_option = argv[++i];
        else if (!strcmp(o, "--options") && has_val) a->options = argv[++i];
        else if (!strcmp(o, "--rtn")) a->p.rtn = 1;
        else if (!strcmp(o, "--plan") && has_val) {
            if (cli_parse_int(argv[++i], &a->plan) || a->plan < 1) return cli_fail(cmd_name, "--plan '%s' is not a plan id", argv[i]);
        } else if (!strcmp(o, "--hessians") && has_val) {
            const char *v = argv[++i];
            if (!strcmp(v, "full")) a->p.hessians = PACK_HESS_FULL;
            else if (!strcmp(v, "sequential")) a->p.hessians = PACK_HESS_SEQUENTIAL;
            else return cli_fail(cmd_name, "--hessians '%s' is neither full nor sequential", v);
        } else if (!strcmp(o, "--progress")) a->p.progress = cli_pack_progress;
        else if (!strcmp(o, "--resident")) a->p.resident = 1;
        else if (o[0] == '-' && o[1]) return cli_fail(cmd_name, "unknown or incomplete option '%s' (see --help)", o);
        else if (!a->model) a->model = o;
        else return cli_fail(cmd_name, "unexpected argument '%s'", o);
    }
    if (!a->model) return cli_fail(cmd_name, "no model given (usage: bitplan pack MODEL --db D -o OUT)");
    if (!a->db && !(a->p.rtn && a->uniform))
        return cli_fail(cmd_name, "no --db D given (without one: --rtn --uniform OPTION)");
    if (a->options && (a->db || !a->p.rtn))
        return cli_fail(cmd_name, "--options is for --rtn without --db (a database has its own option set)");
    if (!a->out) return cli_fail(cmd_name, "no -o OUT given");
    if (a->uniform && a->plan) return cli_fail(cmd_name, "--uniform and --plan exclude each other");
    if (a->head_option && !a->uniform) return cli_fail(cmd_name, "--head-option needs --uniform");
    return 0;
}

static const lay_option *find_option(const opt_set *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->v[i].name, name)) return &s->v[i];
    return NULL;
}

/* --rtn without --db: the uniform options, from --options' set. */
static int resolve_uniform(pack_args *a)
{
    char err[512];
    const char *spec = a->options ? a->options : "default";
    if (opt_set_load(spec, &a->set, err, sizeof err)) return cli_fail(cmd_name, "%s", err);
    a->p.uniform = find_option(&a->set, a->uniform);
    a->p.uniform_head = a->head_option ? find_option(&a->set, a->head_option) : NULL;
    const char *missing = !a->p.uniform ? a->uniform : a->head_option && !a->p.uniform_head ? a->head_option : NULL;
    if (missing) return cli_fail(cmd_name, "no option named \"%s\" in the %s option set", missing, spec);
    return 0;
}

static int record_uniform_here(pack_args *a, int64_t *id_out)
{
    db_conn *d = NULL;
    int64_t id = 0;
    int rc = db_open(a->db, DB_OPEN_WRITE, &d) ||
             db_plan_insert_uniform(d, 0, a->uniform, a->head_option, cli_command_line(), &id);
    if (rc) cli_fail(cmd_name, "%s", d ? db_errmsg(d) : "cannot open the database");
    else printf("plan            %lld (uniform \"%s\"%s%s%s)\n", (long long)id, a->uniform, a->head_option ? ", head \"" : "",
                a->head_option ? a->head_option : "", a->head_option ? "\"" : "");
    db_close(d);
    *id_out = id;
    return rc ? -1 : 0;
}

/* Rank 0 records the plan and tells the others its id (collective). */
static int record_uniform(pack_args *a)
{
    int64_t id = 0;
    int rc = par_rank() == 0 ? record_uniform_here(a, &id) : 0;
    char why[256] = "";
    if (par_bcast(&id, sizeof id, 0) || par_agree(rc, why, sizeof why)) return 1;
    a->plan = (long)id;
    return 0;
}

static void print_stats(const pack_args *a, const pack_stats *st, pack_out_format out)
{
    printf("%s          %s\n", out == PACK_OUT_GGUF ? "gguf  " : "packed", a->out);
    printf("hessians        %s\n", a->p.rtn ? "none (round-to-nearest)" : a->p.hessians == PACK_HESS_FULL ? "full" : "sequential");
    printf("tensors         %lld quantized\n", (long long)st->n_quantized);
    printf("bits            %lld (%.1f MiB)\n", (long long)st->quantized_bits, (double)st->quantized_bits / 8 / (1 << 20));
    printf("bpw             %.4f over the quantized layers (%lld weights)\n",
           st->quantized_weights ? (double)st->quantized_bits / (double)st->quantized_weights : 0.0,
           (long long)st->quantized_weights);
    printf("file size       %lld bytes (%.1f MiB)\n", (long long)st->file_bytes, (double)st->file_bytes / (1 << 20));
    printf("time            %.1f s\n", st->seconds);
    if (st->ranks > 1)
        printf("%d ranks: %.1f MB sent, %.0f%% of the time inside MPI calls (mean of the ranks)\n", st->ranks,
               st->sent_bytes / 1e6, 100 * st->wait_share);
}

static int run(int argc, char **argv, pack_out_format out)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        if (out == PACK_OUT_GGUF) fputs(usage_gguf, stdout);
        fputs(usage, stdout);
        return 0;
    }
    pack_args a;
    a.p.out = out;
    cmd_name = out == PACK_OUT_GGUF ? "export-gguf" : "pack";
    if (parse_args(argc, argv, &a)) return 1;
    if (a.db ? a.uniform && record_uniform(&a) : resolve_uniform(&a)) return opt_set_free(&a.set), 1;
    pack_stats st;
    char err[1024];
    util_catch_interrupts();
    int rc = pack_model(a.model, a.db, a.plan, a.out, &a.p, &st, err, sizeof err);
    opt_set_free(&a.set);
    if (rc)
        return util_interrupted() ? cli_interrupted(cmd_name, "nothing was written to %s (a pack starts over)", a.out)
                                  : cli_fail(cmd_name, "%s", err);
    print_stats(&a, &st, out);
    return 0;
}

int cmd_pack(int argc, char **argv) { return run(argc, argv, PACK_OUT_BITPLAN); }
int cmd_export_gguf(int argc, char **argv) { return run(argc, argv, PACK_OUT_GGUF); }
