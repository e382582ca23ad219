/*
 * cli/cmd_eval.c — `bitplan eval MODEL --text FILE [--ctx N] [--chunks N] [--ref MODEL]`:
 * perplexity of a model on a text as llama-perplexity computes it, and with --ref
 * the KL divergence and top-1 agreement against a reference model. So that an
 * evaluation never holds two models, the reference's logits can be saved once
 * (--save-logits BASE, the reference alone) and read back (--ref-logits BASE), as
 * llama-perplexity's --kl-divergence-base; the numbers are the same as with --ref.
 * It must never compute anything itself: runtime/ does (rt_eval).
 */
#include "cli.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "db/db.h"
#include "model/model.h"
#include "runtime/runtime.h"

static const char usage[] =
    "usage: bitplan eval MODEL --text FILE [--ctx N] [--chunks N] [--ref MODEL | --ref-logits BASE |\n"
    "                   --save-logits BASE] [--bos] [--device cpu|cuda] [--db D]\n"
    "  --text FILE    text to score (tokenized whole, cut into chunks of N tokens)\n"
    "  --ctx N        chunk length (default 512); the second half of each chunk is scored\n"
    "  --chunks N     at most N chunks (default: all)\n"
    "  --ref MODEL    also KL divergence and top-1 agreement against this model (both are\n"
    "                 held in memory)\n"
    "  --save-logits BASE\n"
    "                 run MODEL alone (the reference) and save its logits at every scored\n"
    "                 position in BASE, for --ref-logits. BASE takes vocab x (N/2 - 1) x 4\n"
    "                 bytes a chunk (SmolLM2, vocab 49152, --ctx 512: 50 MB a chunk, 10 GB\n"
    "                 for 200 chunks): --chunks limits it\n"
    "  --ref-logits BASE\n"
    "                 KL divergence, top-1 agreement and the reference's perplexity\n"
    "                 against logits saved with --save-logits (the same numbers as --ref\n"
    "                 with that model), read a chunk at a time; --text, --ctx, --chunks\n"
    "                 and the BOS choice must be those it was saved with\n"
    "  --bos          put BOS first in every chunk even if the model does not add BOS\n"
    "                 (default: as llama-perplexity, only when the model adds BOS)\n"
    "  --device D     cpu (default) or cuda; a --ref model always runs on the CPU (logits\n"
    "                 saved on cuda match --ref to float rounding, not bit for bit)\n"
    "  --db D         also record the result in database D (for bitplan report)\n"
    "  --progress     progress on stderr even when it is not a terminal\n";

typedef struct {
    const char *model, *text, *ref, *db;
    const char *ref_logits, *save_logits;
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
        else if (!strcmp(o, "--ref-logits") && has_val) a->ref_logits = argv[++i];
        else if (!strcmp(o, "--save-logits") && has_val) a->save_logits = argv[++i];
        else if (!strcmp(o, "--ctx") && has_val) {
            if (cli_parse_count("eval", "--ctx", argv[++i], 4, 1 << 20, &a->ctx)) return 1;
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
    if (a->ref && a->ref_logits)
        return cli_fail("eval",
                        "--ref and --ref-logits exclude each other (--ref-logits replaces the reference model)");
    if (a->save_logits && (a->ref || a->ref_logits))
        return cli_fail("eval", "--save-logits runs the model alone; it cannot be combined with %s",
                        a->ref ? "--ref" : "--ref-logits");
    return 0;
}

int32_t *cli_tokenize(const rt_model *m, const char *text, size_t len, int64_t *n, char *err, size_t err_len)
{
    int64_t cap = (int64_t)len + 16;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    *n = ids ? tok_encode(m->tok, text, len, m->add_bos, 0, ids, cap) : -1;
    if (*n > cap) { /* cannot happen for byte-level vocabularies; handled anyway */
        int32_t *more = realloc(ids, (size_t)*n * sizeof *ids);
        *n = more ? tok_encode(m->tok, text, len, m->add_bos, 0, more, *n) : -1;
        ids = more ? more : ids;
    }
    if (*n < 0) { free(ids); snprintf(err, err_len, "the text could not be tokenized"); return NULL; }
    return ids;
}

/* The text's tokens, BOS first when the model adds one (as llama.cpp tokenizes). */
static int32_t *tokenize_file(const rt_model *m, const char *path, int64_t *n, char *err, size_t err_len)
{
    size_t len;
    char *text = util_read_file(path, UTIL_MAX_TEXT, &len, err, err_len);
    if (!text) return NULL;
    int32_t *ids = cli_tokenize(m, text, len, n, err, err_len);
    free(text);
    if (!ids) snprintf(err, err_len, "%s: could not be tokenized", path);
    return ids;
}

static const char *human_size(int64_t n, char *buf, size_t cap)
{
    if (n < 1024) snprintf(buf, cap, "%lld bytes", (long long)n);
    else if (n < 1024 * 1024) snprintf(buf, cap, "%.1f KiB", (double)n / 1024);
    else if (n < (int64_t)1 << 30) snprintf(buf, cap, "%.1f MiB", (double)n / (1 << 20));
    else snprintf(buf, cap, "%.2f GiB", (double)n / (1 << 30));
    return buf;
}

static void print_result(const eval_args *a, const rt_model *m, int64_t n_tokens, const rt_eval_result *r,
                         const rt_ref_info *saved)
{
    char size[32];
    printf("model           %s%s%s%s\n", a->model, m->cfg.name[0] ? " (" : "", m->cfg.name, m->cfg.name[0] ? ")" : "");
    printf("text            %s: %lld tokens, %lld chunks of %ld\n", a->text, (long long)n_tokens,
           (long long)(r->tokens_scored / (a->ctx - 1 - a->ctx / 2)), a->ctx);
    printf("tokens scored   %lld\n", (long long)r->tokens_scored);
    printf("perplexity      %.4f +/- %.5f\n", r->ppl, r->ppl_stderr);
    printf("speed           %.1f tokens/s (%d threads), %.1f s in all\n", r->tokens_per_s, omp_get_max_threads(),
           r->seconds);
    int64_t n_chunks = r->tokens_scored / (a->ctx - 1 - a->ctx / 2);
    if (a->save_logits)
        printf("saved logits    %s: %s (%lld chunks x %ld positions x %d logits x 4 bytes; --chunks limits it)\n",
               a->save_logits, human_size(r->logits_bytes, size, sizeof size), (long long)n_chunks,
               a->ctx - 1 - a->ctx / 2, m->cfg.vocab_size);
    if (!a->ref && !saved) return;
    if (saved)
        printf("reference       %s (sha256 %.12s%s), logits from %s: %s%s\n",
               saved->model_path[0] ? saved->model_path : "(not recorded)",
               saved->model_hash[0] ? saved->model_hash : "unknown", saved->model_hash[0] ? "..." : "", a->ref_logits,
               human_size(r->logits_bytes, size, sizeof size), saved->device ? ", saved on a GPU" : "");
    else printf("reference       %s\n", a->ref);
    printf("ref perplexity  %.4f\n", r->ref_ppl);
    printf("KL divergence   %.6f +/- %.6f (mean KL(ref || model), nats)\n", r->kld_mean, r->kld_stderr);
    printf("top-1 agreement %.2f %%\n", 100.0 * r->top1_agree);
}

/* ==== Recording the result (--db) ==== */

/* What was evaluated: the full-precision model's hash, and for a file made from a
 * plan (a packed file, or a GGUF export, filed as "packed") its plan and bpw. */
static int identify(const char *path, mdl_packed_plan_info *who, int *packed, char *err, size_t err_len)
{
    mdl_model *f;
    if (mdl_open(path, &f, err, err_len)) return -1;
    int has_plan = !mdl_packed_plan(f, who, err, err_len), rc = 0;
    *packed = mdl_is_packed(f) || has_plan;
    if (*packed) rc = has_plan ? 0 : -1; /* a packed file without a plan: err says so */
    else {
        memset(who, 0, sizeof *who);
        snprintf(who->model_hash, sizeof who->model_hash, "%s", mdl_content_hash(f));
    }
    mdl_close(f);
    return rc;
}

int cli_eval_record(const cli_eval_record_args *a, const rt_eval_result *r, int64_t *eval_id, int *plan_missing,
                    char *err, size_t err_len)
{
    mdl_packed_plan_info who;
    int packed;
    if (identify(a->subject, &who, &packed, err, err_len)) return -1;
    int with_ref = a->ref_path != NULL;
    db_conn *d;
    db_eval_row e = {.subject = a->subject, .subject_kind = packed ? "packed" : "model",
                     .bpw = packed ? who.achieved_bpw : NAN, .text_path = a->text_label, .text_hash = a->text_hash,
                     .ctx = a->ctx, .tokens = r->tokens_scored, .ppl = r->ppl, .ppl_stderr = r->ppl_stderr,
                     .kld = with_ref ? r->kld_mean : NAN, .kld_stderr = with_ref ? r->kld_stderr : NAN,
                     .top1 = with_ref ? r->top1_agree : NAN, .ref_path = a->ref_path,
                     .device = a->device ? a->device : "cpu", .command = cli_command_line()};
    int rc = db_open(a->db, DB_OPEN_CREATE, &d) || db_eval_resolve(d, who.model_hash, who.plan_id, &e.model_id, &e.plan_id) ||
             db_eval_insert(d, &e, eval_id);
    if (rc) snprintf(err, err_len, "%s", db_errmsg(d));
    if (plan_missing) *plan_missing = packed && !e.plan_id;
    db_close(d);
    return rc ? -1 : 0;
}

static int record(const eval_args *a, const rt_eval_result *r, const rt_ref_info *saved, char *err,
                  size_t err_len)
{
    /* with --ref-logits the reference is the model the logits were saved from */
    const char *ref_path = saved ? (saved->model_path[0] ? saved->model_path : a->ref_logits) : a->ref;
    size_t len;
    char text_hash[65], *text = util_read_file(a->text, UTIL_MAX_TEXT, &len, err, err_len);
    if (!text) return -1;
    mdl_sha256_of(text, len, text_hash);
    free(text);
    cli_eval_record_args ra = {.db = a->db, .subject = a->model, .text_label = a->text, .text_hash = text_hash,
                               .ref_path = ref_path, .device = a->open_runner ? "cuda" : "cpu", .ctx = (int)a->ctx};
    int64_t id = 0;
    int missing;
    if (cli_eval_record(&ra, r, &id, &missing, err, err_len)) return -1;
    printf("recorded        evaluation %lld in %s%s\n", (long long)id, a->db, missing ? " (its plan is not in this database)" : "");
    return 0;
}

/* The model's content hash (hex), recorded in a file of saved logits: "" if it
 * cannot be read (the file still works; only the record is poorer). */
static void content_hash(const char *path, char hash[65])
{
    char err[256];
    mdl_model *f;
    hash[0] = 0;
    if (mdl_open(path, &f, err, sizeof err)) return;
    snprintf(hash, 65, "%s", mdl_content_hash(f));
    mdl_close(f);
}

/* A packed file records the model it was packed from: says so when that is not the
 * model whose logits are the reference (cheap: reads only the packed file's header). */
static void warn_other_source(const eval_args *a, const rt_ref_info *saved)
{
    char err[256];
    mdl_model *f;
    mdl_packed_plan_info who;
    if (!saved->model_hash[0] || mdl_open(a->model, &f, err, sizeof err)) return;
    if (mdl_is_packed(f) && !mdl_packed_plan(f, &who, err, sizeof err) && who.model_hash[0] &&
        strcmp(who.model_hash, saved->model_hash))
        fprintf(stderr, "bitplan eval: warning: %s was packed from model %.12s..., the logits in %s come from "
                "%.12s... (%s)\n", a->model, who.model_hash, a->ref_logits, saved->model_hash, saved->model_path);
    mdl_close(f);
}

int cmd_eval(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) { fputs(usage, stdout); return 0; }
    eval_args a;
    if (parse_args(argc, argv, &a)) return 1;
    char err[1024], hash[65] = "";
    rt_model *m = NULL, *ref = NULL;
    rt_ref_logits *ref_logits = NULL;
    const rt_ref_info *saved = NULL;
    int32_t *ids = NULL;
    int64_t n = 0;
    int rc = 1;
    /* the saved logits first: a bad file fails before any model is loaded */
    if (a.ref_logits && rt_ref_logits_open(a.ref_logits, &ref_logits, err, sizeof err)) {
        cli_fail("eval", "%s", err);
        goto done;
    }
    if (ref_logits) saved = rt_ref_logits_info(ref_logits);
    if (cli_open_model(a.model, 1, &m, err, sizeof err)) { cli_fail("eval", "%s", err); goto done; }
    if (!m->tok) { cli_fail("eval", "%s: the model holds no tokenizer", a.model); goto done; }
    cli_warn_past_context("eval", m, a.ctx, "--ctx");
    if (a.ref && cli_open_model(a.ref, 1, &ref, err, sizeof err)) { cli_fail("eval", "%s", err); goto done; }
    if (!(ids = tokenize_file(m, a.text, &n, err, sizeof err))) { cli_fail("eval", "%s", err); goto done; }
    rt_eval_params p;
    rt_eval_params_init(&p);
    p.ctx = (int)a.ctx;
    p.max_chunks = (int)a.chunks;
    if (a.progress) p.progress = cli_eval_progress;
    p.bos = m->add_bos || a.force_bos ? tok_bos(m->tok) : -1;
    p.open_runner = a.open_runner;
    p.ref_logits = ref_logits;
    if (ref_logits) {
        if (rt_ref_logits_match(ref_logits, m, ids, n, &p, err, sizeof err)) {
            cli_fail("eval", "%s", err);
            goto done;
        }
        warn_other_source(&a, saved);
    }
    if (a.save_logits) {
        content_hash(a.model, hash);
        p.save_logits = a.save_logits;
        p.save_model_path = a.model;
        p.save_model_hash = hash;
        p.save_text_path = a.text;
    }
    rt_eval_result r;
    if (rt_eval(m, ref, ids, n, &p, &r, err, sizeof err)) {
        /* messages about the logits file name it; others are about the text */
        const char *file = a.ref_logits ? a.ref_logits : a.save_logits;
        size_t fl = file ? strlen(file) : 0;
        if (file && !strncmp(err, file, fl) && (err[fl] == ':' || err[fl] == ' ' || !strncmp(err + fl, ".tmp.", 5)))
            cli_fail("eval", "%s", err);
        else cli_fail("eval", "%s: %s", a.text, err);
        goto done;
    }
    print_result(&a, m, n, &r, saved);
    if (a.db && record(&a, &r, saved, err, sizeof err)) { cli_fail("eval", "%s", err); goto done; }
    rc = 0;
done:
    free(ids);
    rt_ref_logits_close(ref_logits);
    rt_model_free(ref);
    rt_model_free(m);
    return rc;
}
