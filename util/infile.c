/*
 * util/infile.c — the one reader of a whole file into memory (util.h): model side
 * files (config.json, tokenizer.json), calibration and evaluation text, a plan's
 * sources to hash.
 *
 * It must never block on a pipe or a device (only regular files are read), read more
 * than the caller allows, or return a buffer without its terminating NUL.
 */
#include "util/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *util_read_file(const char *path, size_t max, size_t *len, char *err, size_t err_len)
{
    struct stat st;
    char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO's open would wait for a writer */
    if (fd < 0) { snprintf(err, err_len, "%s: %s", path, strerror(errno)); return NULL; }
    if (fstat(fd, &st)) snprintf(err, err_len, "%s: %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        snprintf(err, err_len, "%s: %s", path, S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file");
    else if ((uint64_t)st.st_size > max)
        snprintf(err, err_len, "%s: %lld bytes is too big (at most %zu)", path, (long long)st.st_size, max);
    else if (!(buf = malloc((size_t)st.st_size + 1)))
        snprintf(err, err_len, "%s: out of memory for %lld bytes", path, (long long)st.st_size);
    size_t n = 0;
    while (buf && n < (size_t)st.st_size) { /* a file that shrinks meanwhile is a read error */
        ssize_t got = read(fd, buf + n, (size_t)st.st_size - n);
        if (got > 0) { n += (size_t)got; continue; }
        if (got < 0 && errno == EINTR) continue;
        snprintf(err, err_len, "%s: read error: %s", path, got < 0 ? strerror(errno) : "the file got shorter");
        free(buf), buf = NULL;
    }
    close(fd);
    if (!buf) return NULL;
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}
