/*
 * cli/cmd_eval.c — `bitplan eval MODEL --text FILE [--ctx N] [--chunks N] [--ref MODEL]`:
 * perplexity of a model on a text as llama-perplexity computes it, and with --ref
 * the KL divergence and top-1 agreement against a reference model.
 * It must never compute anything itself: runtime/ does (rt_eval).
 */
#include "cli.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../db/db.h"
#include "../measure/measure.h"
#include "../model/model.h"
#include "../runtime/runtime.h"

static const char usage[] =
    "usage: bitplan eval MODEL --text FILE [--ctx N] [--chunks N] [--ref MODEL] [--bos] [--device cpu|cuda] [--db D]\n"
    "  --text FILE    text to score (tokenized whole, cut into chunks of N tokens)\n"
    "  --ctx N        chunk length (default 512); the second half of each chunk is scored\n"
    "  --chunks N     at most N chunks (default: all)\n"
    "  --ref MODEL    also KL divergence and top-1 agreement against this model\n"
    "  --bos          put BOS first in every chunk even if the model does not add BOS\n"
    "                 (default: as llama-perplexity, only when the model adds BOS)\n"
    "  --device D     cpu (default) or cuda; the reference always runs on the CPU\n"
    "  --db D         also record the result in database D (for bitplan report)\n"
    "  --progress     progress on stderr even when it is not a terminal\n";

typedef struct {
    const char *model, *text, *ref, *db;
    long ctx, chunks;
    int progress;
    int force_bos;
    rt_runner_open_fn open_runner;
} eval_args;

static int parse_args(int argc, char **argv, eval_args *a)
{
    memset(a, 0, sizeof *a);
    a->ctx = 512;
    a->progress = cli_progress_wanted();
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        int has_val = i + 1 < argc;
        if (!strcmp(o, "--text") && has_val) a->text = argv[++i];
        else if (!strcmp(o, "--ref") && has_val) a->ref = argv[++i];
        else if (!strcmp(o, "--ctx") && has_val) {
            if (cli_parse_int(argv[++i], &a->ctx) || a->ctx < 4 || a->ctx > 1 << 20)
                return cli_fail("eval", "--ctx '%s' is not a context length (4 or more)", argv[i]);
        } else if (!strcmp(o, "--chunks") && has_val) {
            if (cli_parse_int(argv[++i], &a->chunks) || a->chunks < 1 || a->chunks > 1 << 30)
                return cli_fail("eval", "--chunks '%s' is not a positive count", argv[i]);
        } else if (!strcmp(o, "--device") && has_val) {
            if (cli_parse_device("eval", argv[++i], &a->open_runner)) return 1;
        } else if (!strcmp(o, "--db") && has_val) a->db = argv[++i];
        else if (!strcmp(o, "--bos")) a->force_bos = 1;
        else if (!strcmp(o, "--progress")) a->progress = 1;
        else if (o[0] == '-' && o[1]) return cli_fail("eval", "unknown or incomplete option '%s' (see --help)", o);
        else if (!a->model) a->model = o;
        else return cli_fail("eval", "unexpected argument '%s'", o);
    }
    if (!a->model) return cli_fail("eval", "no model given (usage: bitplan eval MODEL --text FILE)");
    if (!a->text) return cli_fail("eval", "no --text FILE given");
    return 0;
}

/* The text's tokens, BOS first when the model adds one (as llama.cpp tokenizes). */
static int32_t *tokenize_file(const rt_model *m, const char *path, int64_t *n, char *err, size_t err_len)
{
    size_t len;
    char *text = cli_read_file(path, &len, err, err_len);
    if (!text) return NULL;
    int64_t cap = (int64_t)len + 16;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    *n = ids ? tok_encode(m->tok, text, len, m->add_bos, 0, ids, cap) : -1;
    if (*n > cap) { /* cannot happen for byte-level vocabularies; handled anyway */
        int32_t *more = realloc(ids, (size_t)*n * sizeof *ids);
        *n = more ? tok_encode(m->tok, text, len, m->add_bos, 0, more, *n) : -1;
        ids = more ? more : ids;
    }
    free(text);
    if (*n < 0) { free(ids); snprintf(err, err_len, "%s: could not be tokenized", path); return NULL; }
    return ids;
}

static void print_result(const eval_args *a, const rt_model *m, int64_t n_tokens, const rt_eval_result *r)
{
    printf("model           %s%s%s%s\n", a->model, m->cfg.name[0] ? " (" : "", m->cfg.name, m->cfg.name[0] ? ")" : "");
    printf("text            %s: %lld tokens, %lld chunks of %ld\n", a->text, (long long)n_tokens,
           (long long)(r->tokens_scored / (a->ctx - 1 - a->ctx / 2)), a->ctx);
    printf("tokens scored   %lld\n", (long long)r->tokens_scored);
    printf("perplexity      %.4f +/- %.5f\n", r->ppl, r->ppl_stderr);
    printf("speed           %.1f tokens/s (%d threads), %.1f s in all\n", r->tokens_per_s, omp_get_max_threads(),
           r->seconds);
    if (!a->ref) return;
    printf("reference       %s\n", a->ref);
    printf("ref perplexity  %.4f\n", r->ref_ppl);
    printf("KL divergence   %.6f +/- %.6f (mean KL(ref || model), nats)\n", r->kld_mean, r->kld_stderr);
    printf("top-1 agreement %.2f %%\n", 100.0 * r->top1_agree);
}

/* ==== Recording the result (--db) ==== */

/* What was evaluated: the full-precision model's hash, and for a packed file its
 * plan and bpw. */
static int identify(const char *path, mdl_packed_plan_info *who, int *packed, char *err, size_t err_len)
{
    mdl_model *f;
    if (mdl_open(path, &f, err, err_len)) return -1;
    int rc = 0;
    *packed = mdl_is_packed(f);
    if (*packed) rc = mdl_packed_plan(f, who, err, err_len);
    else {
        memset(who, 0, sizeof *who);
        snprintf(who->model_hash, sizeof who->model_hash, "%s", mdl_content_hash(f));
    }
    mdl_close(f);
    return rc;
}

static int record(const eval_args *a, const rt_eval_result *r, char *err, size_t err_len)
{
    mdl_packed_plan_info who;
    int packed;
    size_t len;
    char text_hash[65], *text = cli_read_file(a->text, &len, err, err_len);
    if (!text) return -1;
    meas_sha256_hex(text, len, text_hash);
    free(text);
    if (identify(a->model, &who, &packed, err, err_len)) return -1;
    db_conn *d;
    db_eval_row e = {.subject = a->model, .subject_kind = packed ? "packed" : "model",
                     .bpw = packed ? who.achieved_bpw : NAN, .text_path = a->text, .text_hash = text_hash,
                     .ctx = (int)a->ctx, .tokens = r->tokens_scored, .ppl = r->ppl, .ppl_stderr = r->ppl_stderr,
                     .kld = a->ref ? r->kld_mean : NAN, .kld_stderr = a->ref ? r->kld_stderr : NAN,
                     .top1 = a->ref ? r->top1_agree : NAN, .ref_path = a->ref,
                     .device = a->open_runner ? "cuda" : "cpu", .command = cli_command_line()};
    int64_t id = 0;
    int rc = db_open(a->db, DB_OPEN_CREATE, &d) || db_eval_resolve(d, who.model_hash, who.plan_id, &e.model_id, &e.plan_id) ||
             db_eval_insert(d, &e, &id);
    if (rc) snprintf(err, err_len, "%s", db_errmsg(d));
    else printf("recorded        evaluation %lld in %s%s\n", (long long)id, a->db,
                packed && !e.plan_id ? " (its plan is not in this database)" : "");
    db_close(d);
    return rc ? -1 : 0;
}

int cmd_eval(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) { fputs(usage, stdout); return 0; }
    eval_args a;
    if (parse_args(argc, argv, &a)) return 1;
    char err[512];
    rt_model *m = NULL, *ref = NULL;
    int32_t *ids = NULL;
    int64_t n = 0;
    int rc = 1;
    if (cli_open_model(a.model, &m, err, sizeof err)) { cli_fail("eval", "%s", err); goto done; }
    if (!m->tok) { cli_fail("eval", "%s: the model holds no tokenizer", a.model); goto done; }
    if (a.ref && cli_open_model(a.ref, &ref, err, sizeof err)) { cli_fail("eval", "%s", err); goto done; }
    if (!(ids = tokenize_file(m, a.text, &n, err, sizeof err))) { cli_fail("eval", "%s", err); goto done; }
    rt_eval_params p;
    rt_eval_params_init(&p);
    p.ctx = (int)a.ctx;
    p.max_chunks = (int)a.chunks;
    p.progress = a.progress;
    p.bos = m->add_bos || a.force_bos ? tok_bos(m->tok) : -1;
    p.open_runner = a.open_runner;
    rt_eval_result r;
    if (rt_eval(m, ref, ids, n, &p, &r, err, sizeof err)) { cli_fail("eval", "%s: %s", a.text, err); goto done; }
    print_result(&a, m, n, &r);
    if (a.db && record(&a, &r, err, sizeof err)) { cli_fail("eval", "%s", err); goto done; }
    rc = 0;
done:
    free(ids);
    rt_model_free(ref);
    rt_model_free(m);
    return rc;
}
