/*
 * cli/ — the bitplan program: argument parsing and one thin file per subcommand.
 * A subcommand parses its flags, calls the modules, prints, and returns the exit
 * status. Errors are one line on stderr, "bitplan CMD: ...", and a non-zero exit.
 */
#ifndef BITPLAN_CLI_H
#define BITPLAN_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "measure/measure.h"
#include "pack/pack.h"
#include "runtime/runtime.h"

int cmd_inspect(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_measure(int argc, char **argv);
int cmd_allocate(int argc, char **argv);
int cmd_pack(int argc, char **argv);
int cmd_export_gguf(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_report(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_verify(int argc, char **argv);

/* ==== Stages that `bitplan quantize` shares with the separate commands ==== */

/* The measurement's progress line on stderr (measure's --progress): state for
 * cli_measure_progress, which is a meas_params.progress callback. */
typedef struct {
    double last;                /* when the line was last drawn */
    int shown;                  /* 1 once drawn: the caller ends it with a newline */
} cli_progress_line;
void cli_measure_progress(void *line, const meas_progress *p);
/* The progress lines of pack (pack_params.progress) and eval (rt_eval_params.progress)
 * on stderr; ctx is unused. */
void cli_pack_progress(void *ctx, const pack_progress *p);
void cli_eval_progress(void *ctx, const rt_eval_progress *p);

/* `bitplan allocate ARGS` (argv[0] is "allocate"): parses, solves and stores one plan
 * (or a sweep); quiet prints nothing on stdout (errors still go to stderr). *plan_id
 * (may be NULL) gets the id of the last plan stored. The exit status. */
int cli_allocate(int argc, char **argv, int quiet, int64_t *plan_id);

/* Writes the report of plan (and its calibration) in db to path, in the format its
 * name says (.md .csv .json, else html), atomically; quiet leaves out the notes and
 * the "wrote" line. The exit status. */
int cli_report(const char *db, int64_t plan, const char *path, int quiet);

/* The tokens of text[0..len) as the model reads them (BOS first when it adds one).
 * malloc'd, *n the count; NULL with err. */
int32_t *cli_tokenize(const rt_model *m, const char *text, size_t len, int64_t *n, char *err, size_t err_len);

/* An evaluation of `subject` (a packed file, or a model file) filed in database db
 * (created if absent), for bitplan report: the text by label and content hash; kld
 * and top-1 only when ref_path is set. *plan_missing (may be NULL): 1 when subject
 * is a packed file whose plan is not in db. 0, or -1 with err. */
typedef struct {
    const char *db, *subject, *text_label, *text_hash, *ref_path, *device;
    int ctx;
} cli_eval_record_args;
int cli_eval_record(const cli_eval_record_args *a, const rt_eval_result *r, int64_t *eval_id, int *plan_missing,
                    char *err, size_t err_len);

/* Warns on stderr when a run of `positions` tokens goes past the context the model
 * was trained on (its max_ctx): the numbers or text beyond it are not what the
 * model was made for. As llama.cpp does, a warning, not a refusal. */
void cli_warn_past_context(const char *cmd, const rt_model *m, int64_t positions, const char *what);

/* After a job that util_catch_interrupts() let stop at a safe point: prints
 * "bitplan CMD: interrupted; " and what was saved, and returns the status a shell
 * gives that signal (128 + its number: 130 for SIGINT). */
int cli_interrupted(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints "bitplan CMD: message" to stderr; returns 1 (the exit status). */
int cli_fail(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Parses "8GiB", "7.5GB", "8000MiB", "500M", "1024" (bytes). 0, or -1. */
int cli_parse_size(const char *s, int64_t *bytes);
/* Parses a whole or real number, the whole string; 0 or -1. */
int cli_parse_int(const char *s, long *v);
int cli_parse_double(const char *s, double *v);
/* A whole number from min to max for `flag` of command cmd; otherwise prints why
 * (naming the range) and returns 1. */
int cli_parse_count(const char *cmd, const char *flag, const char *s, long min, long max, long *v);

/* --threads beyond this is a mistake, not a machine: OpenMP runtimes fail on their
 * own terms (libgomp crashes near 100000) long before. */
#define CLI_MAX_THREADS 1024

/* The command line as one string (for the database's records); static buffer. */
const char *cli_command_line(void);

/* 1 if stderr is a terminal (progress is shown only then, unless forced). */
int cli_progress_wanted(void);

/* --device cpu|cuda: where rt_eval / rt_generate run the model. Sets *open to NULL
 * (CPU) or the CUDA runner; for cuda, checks that a GPU is there and says so
 * clearly if not. 0, or 1 after printing "bitplan CMD: ...". */
int cli_parse_device(const char *cmd, const char *name, rt_runner_open_fn *open);

/* Opens a model for running (eval, generate): a bitplan packed file, or a model
 * file (GGUF, safetensors) whose weights stay in their stored type and are decoded
 * per product, unless the whole model as fp32 would take under a quarter of the
 * memory available, in which case it is decoded once (faster). exact 1
 * (evaluation): a packed file's prompt-sized products are W_deq x in fp32 rather
 * than int8 activations (PACK_LOAD_EXACT), so the figures are the weights', not
 * the runtime's. 0, or -1 with a one-line message in err. The caller frees *out
 * with rt_model_free. */
int cli_open_model(const char *path, int exact, rt_model **out, char *err, size_t err_len);

#endif
