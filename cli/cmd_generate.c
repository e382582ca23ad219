/*
 * cli/cmd_generate.c — `bitplan generate MODEL --prompt "..." [-n N] [--temp T]
 * [--top-p P] [--seed S] [--chat]`: streams generated text to stdout and prints
 * prompt and generation speed on stderr. --chat wraps the prompt in the model's
 * chat format (ChatML as in SmolLM2 and Qwen2, or Llama-3's headers), with its
 * special tokens parsed.
 * It must never generate anything itself: runtime/ does (rt_generate).
 */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "runtime/runtime.h"

static const char usage[] =
    "usage: bitplan generate MODEL --prompt \"...\" [-n N] [--temp T] [--top-p P] [--seed S] [--chat] [--device cpu|cuda]\n"
    "  -n N        tokens to generate (default 128)\n"
    "  --temp T    temperature, 0 = greedy (default 0.8)\n"
    "  --top-p P   nucleus sampling, 1 = off (default 0.95)\n"
    "  --seed S    random seed (default 42)\n"
    "  --chat      wrap the prompt in the model's chat template (instruct models)\n"
    "  --device D  cpu (default) or cuda\n";

typedef struct {
    const char *model, *prompt;
    int chat;
    rt_gen_params gen;
} gen_args;

static int parse_number(const char *opt, const char *s, double lo, double hi, double *v)
{
    if (cli_parse_double(s, v) || *v < lo || *v > hi)
        return cli_fail("generate", "%s '%s' is out of range [%g, %g]", opt, s, lo, hi);
    return 0;
}

static int parse_args(int argc, char **argv, gen_args *a)
{
    memset(a, 0, sizeof *a);
    rt_gen_params_init(&a->gen);
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        int has_val = i + 1 < argc;
        double v;
        if (!strcmp(o, "--prompt") && has_val) a->prompt = argv[++i];
        else if ((!strcmp(o, "-n") || !strcmp(o, "--n-predict")) && has_val) {
            if (parse_number(o, argv[++i], 0, 1 << 20, &v)) return 1;
            a->gen.n_predict = (int)v;
        } else if (!strcmp(o, "--temp") && has_val) {
            if (parse_number(o, argv[++i], 0, 100, &v)) return 1;
            a->gen.temp = (float)v;
        } else if (!strcmp(o, "--top-p") && has_val) {
            if (parse_number(o, argv[++i], 1e-6, 1, &v)) return 1;
            a->gen.top_p = (float)v;
        } else if (!strcmp(o, "--seed") && has_val) {
            if (parse_number(o, argv[++i], 0, 9007199254740992.0, &v)) return 1;
            a->gen.seed = (uint64_t)v;
        } else if (!strcmp(o, "--device") && has_val) {
            if (cli_parse_device("generate", argv[++i], &a->gen.open_runner)) return 1;
        } else if (!strcmp(o, "--chat")) a->chat = 1;
        else if (o[0] == '-' && o[1]) return cli_fail("generate", "unknown or incomplete option '%s' (see --help)", o);
        else if (!a->model) a->model = o;
        else return cli_fail("generate", "unexpected argument '%s'", o);
    }
    if (!a->model) return cli_fail("generate", "no model given (usage: bitplan generate MODEL --prompt \"...\")");
    if (!a->prompt) return cli_fail("generate", "no --prompt given");
    return 0;
}

/* ==== Chat templates ==== */

/* 1 if s is one special token of the vocabulary. */
static int is_special_token(const tok_tokenizer *t, const char *s)
{
    int32_t ids[4];
    return tok_encode(t, s, strlen(s), 0, 1, ids, 4) == 1 && tok_is_special(t, ids[0]);
}

/* The prompt in the model's chat format, malloc'd; NULL if none is known. */
static char *chat_prompt(const tok_tokenizer *t, const char *user)
{
    const char *fmt;
    if (is_special_token(t, "<|im_start|>"))
        fmt = "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n";
    else if (is_special_token(t, "<|start_header_id|>"))
        fmt = "<|start_header_id|>user<|end_header_id|>\n\n%s<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
    else
        return NULL;
    size_t n = strlen(fmt) + strlen(user) + 1;
    char *out = malloc(n);
    if (out) snprintf(out, n, fmt, user);
    return out;
}

static int32_t *tokenize_prompt(const rt_model *m, const char *text, int chat, int *n)
{
    size_t len = strlen(text);
    int64_t cap = (int64_t)len + 16;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    int64_t got = ids ? tok_encode(m->tok, text, len, m->add_bos, chat, ids, cap) : -1;
    if (got < 0 || got > cap || got > 1 << 30) { free(ids); return NULL; }
    *n = (int)got;
    return ids;
}

static void write_piece(void *ctx, const char *piece, size_t len)
{
    fwrite(piece, 1, len, ctx);
    fflush(ctx);
}

int cmd_generate(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) { fputs(usage, stdout); return 0; }
    gen_args a;
    if (parse_args(argc, argv, &a)) return 1;
    char err[512], *text = NULL;
    rt_model *m = NULL;
    int32_t *ids = NULL;
    int n = 0, rc = 1;
    if (cli_open_model(a.model, 0, &m, err, sizeof err)) { cli_fail("generate", "%s", err); goto done; }
    if (!m->tok) { cli_fail("generate", "%s: the model holds no tokenizer", a.model); goto done; }
    if (a.chat && !(text = chat_prompt(m->tok, a.prompt))) {
        cli_fail("generate", "%s: no chat template known for this vocabulary (ChatML or Llama-3)", a.model);
        goto done;
    }
    if (!(ids = tokenize_prompt(m, text ? text : a.prompt, a.chat, &n)) || n == 0) {
        cli_fail("generate", "the prompt could not be tokenized or is empty");
        goto done;
    }
    cli_warn_past_context("generate", m, (int64_t)n + a.gen.n_predict, "the prompt with -n");
    rt_gen_stats st;
    if (rt_generate(m, ids, n, &a.gen, write_piece, stdout, &st, err, sizeof err)) {
        cli_fail("generate", "%s", err);
        goto done;
    }
    printf("\n");
    fflush(stdout);
    fprintf(stderr, "prompt: %d tokens, %.1f tokens/s; generation: %d tokens, %.1f tokens/s\n", st.n_prompt,
            st.prompt_tps, st.n_gen, st.gen_tps);
    rc = 0;
done:
    free(text);
    free(ids);
    rt_model_free(m);
    return rc;
}
