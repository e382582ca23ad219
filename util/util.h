/*
 * util/util.h — small shared utilities at the bottom of the tree: every output file
 * written atomically, the interrupt flag that long jobs poll, and the clock. Includes nothing
 * of the project; every other module may use it.
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

#endif
