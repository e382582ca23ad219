/*
 * util/util.h — small shared utilities at the bottom of the tree: every output file
 * written atomically, the one whole-file reader, the interrupt flag that long jobs
 * poll, the clock, a JSON parser and a growable string. Includes nothing of the
 * project; every other module may use it.
 *
 * Output files. Whatever bitplan writes (packed models, GGUF exports, reports,
 * saved logits) goes through util_out: the bytes go to a temporary file beside the
 * destination, PATH.tmp.PID.N, which replaces the destination only when complete
 * (fsync, rename, fsync of the folder). So a reader sees the old file or the new
 * one, never half of one, and a full disk or a kill loses nothing that was there.
 *
 *   - The destination must be absent or a regular file. A directory, a device, a
 *     FIFO or a socket is refused: renaming over it would replace the node itself.
 *   - A symbolic link is followed: the file it names is replaced and the link stays
 *     (a link whose target does not exist is refused). The new file keeps the old
 *     one's permission bits.
 *   - Temporary files that a killed writer left beside the destination (their PID no
 *     longer runs) are removed when the next writer opens the same destination.
 *
 * Interrupts. util_catch_interrupts() makes the first SIGINT or SIGTERM only set a
 * flag, so a long job can stop at the next safe point (a committed unit, a removed
 * temporary file) and say what it saved; a second one ends the process at once.
 */
#ifndef BITPLAN_UTIL_H
#define BITPLAN_UTIL_H

#include <stddef.h>

typedef struct util_out {
    char *path;  /* the file that will be replaced: the destination, or what its link names */
    char *tmp;   /* the temporary file; NULL once renamed over path */
    int fd;      /* open on tmp while writing, -1 after */
} util_out;

/* Checks the destination and creates the temporary file. On error *o holds nothing. */
int util_out_open(util_out *o, const char *path, char *err, size_t err_len);

/* The destination check of util_out_open alone, for a job that writes its file
 * only at the end and should fail before its work: 0, or -1 with err. */
int util_out_check(const char *path, char *err, size_t err_len);

/* Writes all of p (retrying short writes and EINTR). */
int util_out_write(util_out *o, const void *p, size_t n, char *err, size_t err_len);

/* fsync, close, rename over the destination, fsync the folder; then frees *o. On
 * error the temporary file is removed and the destination is as it was. */
int util_out_commit(util_out *o, char *err, size_t err_len);

/* Removes the temporary file and frees *o. Safe on a zeroed or committed util_out. */
void util_out_abort(util_out *o);

/* The whole file at once: util_out_open, one write, util_out_commit. */
int util_write_file(const char *path, const void *data, size_t len, char *err, size_t err_len);

/* write(2) until all n bytes are out; -1 with errno on failure. */
int util_write_all(int fd, const void *p, size_t n);

/* First SIGINT/SIGTERM sets the flag (and says on stderr that the job is stopping at
 * the next safe point); a second one kills the process as the default would. */
void util_catch_interrupts(void);

/* The signal that asked the process to stop (SIGINT, SIGTERM), or 0. */
int util_interrupted(void);

/* Seconds on the monotonic clock (for durations: its origin means nothing). */
double util_now_s(void);

/* ==== Reading a whole file (util/infile.c) ==== */

/* The whole of path in memory, NUL-terminated (*len, if not NULL, leaves the NUL
 * out). Only a regular file is read (a pipe or a device could block), of at most max
 * bytes; otherwise NULL with the path and the reason in err. */
char *util_read_file(const char *path, size_t max, size_t *len, char *err, size_t err_len);
/* The most text bitplan reads whole: calibration, evaluation and tokenizer input. */
#define UTIL_MAX_TEXT ((size_t)4 << 30)

/* ==== JSON (util/json.c) ====
 *
 * A small JSON parser for the files that come with a model (safetensors headers,
 * config.json, tokenizer.json) and for the JSON bitplan writes itself (a packed
 * file's metadata, the database's configuration column).
 *
 * It builds a tree (objects keep their keys in file order) from a buffer that
 * need not be NUL-terminated. It never reads past the buffer, limits nesting, and
 * reports the byte offset of the first problem. It is no general-purpose library:
 * numbers are doubles, and duplicate keys are kept (util_json_get finds the first).
 *
 *     util_json *root = util_json_parse(buf, len, err, sizeof err);
 *     const util_json *h = util_json_get(root, "hidden_size");
 *     if (h && h->type == UTIL_JSON_NUM) dim = (int)h->num;
 *     util_json_free(root);
 */
typedef enum { UTIL_JSON_NULL, UTIL_JSON_BOOL, UTIL_JSON_NUM, UTIL_JSON_STR, UTIL_JSON_ARR, UTIL_JSON_OBJ } util_json_type;

typedef struct util_json {
    util_json_type type;
    int boolean;              /* UTIL_JSON_BOOL */
    double num;               /* UTIL_JSON_NUM */
    int is_int;               /* UTIL_JSON_NUM written without fraction or exponent */
    char *str;                /* UTIL_JSON_STR: UTF-8, NUL-terminated (may hold NULs: see len) */
    size_t len;               /* UTIL_JSON_STR: bytes */
    int n;                    /* UTIL_JSON_ARR / UTIL_JSON_OBJ: number of items */
    struct util_json *items;  /* [n] values */
    char **keys;              /* UTIL_JSON_OBJ: [n] keys, NUL-terminated */
} util_json;

/* Parses text[0..len). NULL with "offset N: problem" in err on failure. */
util_json *util_json_parse(const char *text, size_t len, char *err, size_t err_len);
void util_json_free(util_json *v);

/* Object member by key (first match), or NULL when v is no object or lacks it. */
const util_json *util_json_get(const util_json *v, const char *key);
/* Number member as int/double/string/bool with a default when absent or mistyped. */
int util_json_int(const util_json *obj, const char *key, int def);
double util_json_num(const util_json *obj, const char *key, double def);
const char *util_json_str(const util_json *obj, const char *key); /* NULL if absent */

/* ==== A growable string (util/strbuf.c) ====
 *
 * The one string builder, for JSON, metadata and reports. Start from {0}; free s.
 * Appends return the buffer, so calls chain, and never fail loudly: on out of
 * memory they set oom and stop, and the caller checks oom once at the end.
 */
typedef struct {
    char *s;      /* NUL-terminated when len > 0 */
    size_t len, cap;
    int oom;
} sb_buf;

sb_buf *sb_putc(sb_buf *b, char c);
sb_buf *sb_putn(sb_buf *b, const char *s, size_t n);
sb_buf *sb_puts(sb_buf *b, const char *s);
sb_buf *sb_printf(sb_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal: the one JSON escaper. '"' and '\\' get a
 * backslash, every control byte and DEL a \u00XX escape (newlines too), bytes >= 0x80
 * pass as they are. */
sb_buf *sb_json_string(sb_buf *b, const char *s);
sb_buf *sb_json_string_n(sb_buf *b, const char *s, size_t n);

#endif
