/*
 * cli/main.c — the bitplan program's entry: dispatches to one subcommand, and the
 * small helpers every subcommand shares (errors, sizes, numbers, files).
 */
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "par/par.h"
#include "util/util.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    int on_ranks;             /* 1: splits its work across the ranks of an MPI job */
    const char *usage;
} commands[] = {
    {"quantize", cmd_quantize, 0, "quantize MODEL --bpw B -o OUT [--calib TEXT...]  the whole job in one command"},
    {"inspect", cmd_inspect, 0, "inspect MODEL                              tensors, shapes, dtypes, params, arch"},
    {"tokenize", cmd_tokenize, 0, "tokenize MODEL (--text FILE | --string S)  token ids of a text"},
    {"measure", cmd_measure, 1, "measure MODEL --calib TEXT... --db D         measurement pass (resumable)"},
    {"allocate", cmd_allocate, 0, "allocate --db D (--bpw B | --vram SIZE --ctx N) exact plan for a budget"},
    {"pack", cmd_pack, 1, "pack MODEL --db D [--plan N] -o OUT           quantize and pack"},
    {"export-gguf", cmd_export_gguf, 1, "export-gguf MODEL --db D [--plan N] -o OUT   a plan of ggml types as GGUF"},
    {"eval", cmd_eval, 0, "eval OUT|MODEL --text FILE [--ref MODEL]      perplexity and KL divergence"},
    {"generate", cmd_generate, 0, "generate OUT|MODEL --prompt \"...\"            text generation"},
    {"report", cmd_report, 0, "report --db D -o report.html                  sensitivity and allocation report"},
    {"verify", cmd_verify, 0, "verify FILE                                   a file's structure and checksums (exit 0: sound)"},
};

static char command_line[4096];

static void usage(FILE *f)
{
    fprintf(f, "usage: bitplan COMMAND [ARGS]\n\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) fprintf(f, "  bitplan %s\n", commands[i].usage);
    fprintf(f, "\n`bitplan COMMAND --help` for a command's options.\n");
}

static void remember_command_line(int argc, char **argv)
{
    size_t n = 0;
    for (int i = 0; i < argc && n + 1 < sizeof command_line; i++) {
        int quote = strpbrk(argv[i], " \t\"'") != NULL;
        n += (size_t)snprintf(command_line + n, sizeof command_line - n, quote ? "%s'%s'" : "%s%s", i ? " " : "", argv[i]);
    }
}

/* A command whose output went nowhere (a full disk, a closed file) did not succeed,
 * whatever it returned: say so and fail. */
static int check_stdout(const char *cmd, int rc)
{
    errno = 0;
    if (!fflush(stdout) && !ferror(stdout)) return rc;
    cli_fail(cmd, "cannot write standard output: %s", strerror(errno ? errno : EIO));
    return rc ? rc : 1;
}

/* Under mpirun only rank 0 speaks: the other ranks' failures reach it through
 * par_agree, and it names them. */
static void quiet_other_ranks(void)
{
    if (par_rank() == 0) return;
    int fd = open("/dev/null", O_WRONLY);
    if (fd >= 0) dup2(fd, STDOUT_FILENO), dup2(fd, STDERR_FILENO), close(fd);
}

/* The command, as one process or as one rank of an MPI job (measure, pack and
 * export-gguf). */
static int run_command(int argc, char **argv)
{
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
        if (strcmp(argv[1], commands[i].name)) continue;
        if (par_size() > 1 && !commands[i].on_ranks)
            return cli_fail(argv[1], "only measure, pack and export-gguf run on several processes (this job has %d "
                            "ranks); run it without mpirun", par_size()), 2;
        quiet_other_ranks();
        return check_stdout(argv[1], commands[i].run(argc - 1, argv + 1));
    }
    fprintf(stderr, "bitplan: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}

int main(int argc, char **argv)
{
    /* Blocks of 1 MiB and more (a layer's weights, Hessians, GPTQ's work) are mapped
     * and unmapped on their own. glibc would otherwise raise this threshold after the
     * first such free and serve the next ones from the heap, whose fragments then
     * grow with the number of layers walked: memory must grow with one block. */
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    char why[256];
    if (par_init(&argc, &argv, why, sizeof why)) {
        fprintf(stderr, "bitplan: %s\n", why);
        return 2;
    }
    remember_command_line(argc, argv);
    int rc;
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        rc = check_stdout("--help", argc < 2 ? 2 : 0);
    } else {
        rc = run_command(argc, argv);
    }
    par_finish();
    return rc;
}

/* ==== Helpers shared by the subcommands ==== */

/* "bitplan CMD: LEAD" then the message, one line on stderr. */
static void say(const char *cmd, const char *lead, const char *fmt, va_list ap)
{
    fprintf(stderr, "bitplan %s: %s", cmd, lead);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

int cli_fail(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    say(cmd, "", fmt, ap);
    va_end(ap);
    return 1;
}

int cli_interrupted(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    say(cmd, "interrupted; ", fmt, ap);
    va_end(ap);
    return 128 + util_interrupted();
}

void cli_warn_past_context(const char *cmd, const rt_model *m, int64_t positions, const char *what)
{
    if (m->cfg.max_ctx > 0 && positions > m->cfg.max_ctx)
        fprintf(stderr, "bitplan %s: warning: %s is %lld positions, past the %d the model was trained on\n", cmd, what,
                (long long)positions, m->cfg.max_ctx);
}

const char *cli_command_line(void) { return command_line; }

int cli_progress_wanted(void) { return isatty(STDERR_FILENO); }

void cli_pack_progress(void *ctx, const pack_progress *p)
{
    (void)ctx;
    fprintf(stderr, "\r  pack  %-8s layer %3d/%d  %6.1fs", p->phase, p->layer, p->n_layers, p->seconds);
    if (p->layer > 0) fprintf(stderr, "  left %dm%02ds", (int)(p->seconds_left / 60), (int)p->seconds_left % 60);
    fputs("   ", stderr);
    if (p->layer >= p->n_layers) fputc('\n', stderr);
}

void cli_eval_progress(void *ctx, const rt_eval_progress *p)
{
    (void)ctx;
    fprintf(stderr, "\reval: chunk %lld/%lld, perplexity %.4f, %.1f tokens/s, left %dm%02ds ", (long long)p->chunk,
            (long long)p->n_chunks, p->ppl, p->tokens_per_s, (int)(p->seconds_left / 60), (int)p->seconds_left % 60);
    if (p->chunk == p->n_chunks) fputc('\n', stderr);
}

int cli_parse_double(const char *s, double *v)
{
    char *end;
    errno = 0;
    double d = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(d)) return -1;
    *v = d;
    return 0;
}

int cli_parse_int(const char *s, long *v)
{
    char *end;
    errno = 0;
    long x = strtol(s, &end, 10);
    if (end == s || *end || errno) return -1;
    *v = x;
    return 0;
}

int cli_parse_count(const char *cmd, const char *flag, const char *s, long min, long max, long *v)
{
    long n;
    if (cli_parse_int(s, &n) || n < min || n > max)
        return cli_fail(cmd, "%s: '%s' is not a whole number from %ld to %ld", flag, s, min, max);
    *v = n;
    return 0;
}

int cli_parse_size(const char *s, int64_t *bytes)
{
    static const struct { const char *suffix; double mult; } units[] = {
        {"", 1}, {"B", 1}, {"K", 1e3}, {"KB", 1e3}, {"KiB", 1024.0}, {"M", 1e6}, {"MB", 1e6},
        {"MiB", 1048576.0}, {"G", 1e9}, {"GB", 1e9}, {"GiB", 1073741824.0},
        {"T", 1e12}, {"TB", 1e12}, {"TiB", 1099511627776.0},
    };
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || !isfinite(v) || v < 0) return -1;
    while (*end == ' ') end++;
    for (size_t i = 0; i < sizeof units / sizeof *units; i++)
        if (!strcasecmp(end, units[i].suffix) && (strchr(units[i].suffix, 'i') == NULL || !strcmp(end, units[i].suffix))) {
            double b = v * units[i].mult;
            if (b > 9e18) return -1;
            *bytes = (int64_t)llround(b);
            return 0;
        }
    return -1;
}

