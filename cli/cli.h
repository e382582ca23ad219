/*
 * cli/ — the bitplan program: argument parsing and one thin file per subcommand.
 * A subcommand parses its flags, calls the modules, prints, and returns the exit
 * status. Errors are one line on stderr, "bitplan CMD: ...", and a non-zero exit.
 */
#ifndef BITPLAN_CLI_H
#define BITPLAN_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "../runtime/runtime.h"

int cmd_inspect(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_measure(int argc, char **argv);
int cmd_allocate(int argc, char **argv);
int cmd_pack(int argc, char **argv);
int cmd_export_gguf(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_report(int argc, char **argv);

/* Prints "bitplan CMD: message" to stderr; returns 1 (the exit status). */
int cli_fail(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Parses "8GiB", "7.5GB", "8000MiB", "500M", "1024" (bytes). 0, or -1. */
int cli_parse_size(const char *s, int64_t *bytes);
/* Parses a whole or real number, the whole string; 0 or -1. */
int cli_parse_int(const char *s, long *v);
int cli_parse_double(const char *s, double *v);

/* The command line as one string (for the database's records); static buffer. */
const char *cli_command_line(void);

/* 1 if stderr is a terminal (progress is shown only then, unless forced). */
int cli_progress_wanted(void);

/* --device cpu|cuda: where rt_eval / rt_generate run the model. Sets *open to NULL
 * (CPU) or the CUDA runner; for cuda, checks that a GPU is there and says so
 * clearly if not. 0, or 1 after printing "bitplan CMD: ...". */
int cli_parse_device(const char *cmd, const char *name, rt_runner_open_fn *open);

/* Reads a whole file into a malloc'd NUL-terminated buffer. NULL with err set. */
char *cli_read_file(const char *path, size_t *len, char *err, size_t err_len);

/* Opens a model for running (eval, generate): a bitplan packed file, or a model
 * file (GGUF, safetensors) whose weights stay in their stored type and are decoded
 * per product, unless the whole model as fp32 would take under a quarter of the
 * memory available, in which case it is decoded once (faster). 0, or -1 with a
 * one-line message in err. The caller frees *out with rt_model_free. */
int cli_open_model(const char *path, rt_model **out, char *err, size_t err_len);

#endif
