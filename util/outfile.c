/*
 * util/outfile.c — output files written atomically (see util.h for the rules a
 * destination must follow). Never prints; every failure is a message in err.
 */
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int fail(char *err, size_t err_len, const char *path, const char *what, int e)
{
    if (e) snprintf(err, err_len, "%s: %s: %s", path, what, strerror(e));
    else snprintf(err, err_len, "%s: %s", path, what);
    return -1;
}

int util_write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t k = write(fd, c, n < ((size_t)1 << 30) ? n : ((size_t)1 << 30));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            if (k == 0) errno = EIO;
            return -1;
        }
        c += k, n -= (size_t)k;
    }
    return 0;
}

/* The file that will be replaced: path itself, or the file its link names. */
static char *resolve(const char *path, struct stat *st, int *exists, char *err, size_t err_len)
{
    struct stat lst;
    *exists = 0;
    if (lstat(path, &lst)) {
        if (errno != ENOENT) return fail(err, err_len, path, "cannot be examined", errno), NULL;
        char *p = strdup(path);
        if (!p) fail(err, err_len, path, "out of memory", 0);
        return p;
    }
    char *real = S_ISLNK(lst.st_mode) ? realpath(path, NULL) : strdup(path);
    if (!real) {
        if (S_ISLNK(lst.st_mode) && errno == ENOENT)
            return fail(err, err_len, path, "is a symbolic link to a file that does not exist; bitplan follows links "
                        "only to existing files", 0), NULL;
        return fail(err, err_len, path, S_ISLNK(lst.st_mode) ? "cannot follow the link" : "out of memory", errno), NULL;
    }
    if (stat(real, st)) {
        fail(err, err_len, path, "cannot be examined", errno);
        free(real);
        return NULL;
    }
    *exists = 1;
    if (S_ISREG(st->st_mode)) return real;
    fail(err, err_len, path, S_ISDIR(st->st_mode) ? "is a directory"
         : "exists and is not a regular file (a device, a FIFO or a socket); bitplan writes only regular files", 0);
    free(real);
    return NULL;
}

/* NAME.tmp.PID or NAME.tmp.PID.N (base = "NAME.tmp.") → PID, else 0. */
static long temp_pid(const char *entry, const char *base, size_t base_len)
{
    if (strncmp(entry, base, base_len)) return 0;
    char *end;
    errno = 0;
    long pid = strtol(entry + base_len, &end, 10);
    if (end == entry + base_len || errno || pid <= 0 || pid > INT_MAX) return 0;
    if (*end == '.') {
        const char *n = end + 1;
        while (*n >= '0' && *n <= '9') n++;
        if (n == end + 1 || *n) return 0;
    } else if (*end) return 0;
    return pid;
}

/* Removes temporary files of this destination whose writer no longer runs. */
static void remove_stale_temps(const char *path)
{
    const char *slash = strrchr(path, '/');
    size_t dir_len = slash ? (size_t)(slash - path) : 0;
    char dir[PATH_MAX], base[NAME_MAX + 8], stale[PATH_MAX];
    const char *name = slash ? slash + 1 : path;
    if (dir_len >= sizeof dir || strlen(name) + 6 > sizeof base) return;
    if (!slash) strcpy(dir, ".");
    else if (!dir_len) strcpy(dir, "/");
    else memcpy(dir, path, dir_len), dir[dir_len] = 0;
    int base_len = snprintf(base, sizeof base, "%s.tmp.", name);
    DIR *d = opendir(dir);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        long pid = temp_pid(e->d_name, base, (size_t)base_len);
        if (!pid || pid == (long)getpid() || !(kill((pid_t)pid, 0) && errno == ESRCH)) continue;
        if ((size_t)snprintf(stale, sizeof stale, "%s/%s", dir, e->d_name) < sizeof stale) unlink(stale);
    }
    closedir(d);
}

static int create_temp(util_out *o, const struct stat *old, int exists, char *err, size_t err_len)
{
    static unsigned serial;
    size_t cap = strlen(o->path) + 48;
    if (!(o->tmp = malloc(cap))) return fail(err, err_len, o->path, "out of memory", 0);
    for (int k = 0; k < 1000; k++) {
        snprintf(o->tmp, cap, "%s.tmp.%ld.%u", o->path, (long)getpid(), serial++);
        o->fd = open(o->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (o->fd >= 0) break;
        if (errno != EEXIST) break;
    }
    if (o->fd < 0) {
        int e = errno;
        free(o->tmp);
        o->tmp = NULL;
        return fail(err, err_len, o->path, "cannot create a file beside it", e);
    }
    if (exists && fchmod(o->fd, old->st_mode & 07777)) { /* the new file keeps the old one's permissions */
        int e = errno;
        util_out_abort(o);
        return fail(err, err_len, o->path, "cannot set the permissions", e);
    }
    return 0;
}

int util_out_open(util_out *o, const char *path, char *err, size_t err_len)
{
    memset(o, 0, sizeof *o);
    o->fd = -1;
    struct stat st;
    int exists;
    if (!(o->path = resolve(path, &st, &exists, err, err_len))) return -1;
    remove_stale_temps(o->path);
    if (create_temp(o, &st, exists, err, err_len)) {
        free(o->path);
        o->path = NULL;
        return -1;
    }
    return 0;
}

int util_out_check(const char *path, char *err, size_t err_len)
{
    struct stat st;
    int exists;
    char *real = resolve(path, &st, &exists, err, err_len);
    free(real);
    return real ? 0 : -1;
}

int util_out_write(util_out *o, const void *p, size_t n, char *err, size_t err_len)
{
    return util_write_all(o->fd, p, n) ? fail(err, err_len, o->path, "write failed", errno) : 0;
}

/* Syncs the folder so that the rename itself survives a crash. Filesystems that
 * cannot sync a folder (EINVAL) are let through. */
static int sync_folder(const char *path)
{
    char *dir = strdup(path);
    if (!dir) return errno = ENOMEM, -1;
    char *slash = strrchr(dir, '/');
    if (slash) slash[slash == dir] = 0;
    int fd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), e = 0;
    if (fd < 0) e = errno;
    else if (fsync(fd) && errno != EINVAL) e = errno;
    if (fd >= 0) close(fd);
    free(dir);
    errno = e;
    return e ? -1 : 0;
}

int util_out_commit(util_out *o, char *err, size_t err_len)
{
    int rc = 0;
    if (fsync(o->fd)) rc = fail(err, err_len, o->path, "fsync failed", errno);
    int fd = o->fd;
    o->fd = -1;
    if (close(fd) && !rc) rc = fail(err, err_len, o->path, "close failed", errno);
    if (!rc && rename(o->tmp, o->path)) rc = fail(err, err_len, o->path, "cannot rename the temporary file over it", errno);
    if (!rc) {
        free(o->tmp);
        o->tmp = NULL; /* at path now: abort must not remove it */
        if (sync_folder(o->path)) rc = fail(err, err_len, o->path, "written, but its folder could not be synced", errno);
    }
    util_out_abort(o);
    return rc;
}

void util_out_abort(util_out *o)
{
    if (o->tmp && o->fd >= 0) close(o->fd); /* a zeroed util_out has fd 0, not its own */
    if (o->tmp) unlink(o->tmp);
    free(o->tmp);
    free(o->path);
    memset(o, 0, sizeof *o);
    o->fd = -1;
}

int util_write_file(const char *path, const void *data, size_t len, char *err, size_t err_len)
{
    util_out o;
    if (util_out_open(&o, path, err, err_len)) return -1;
    if (util_out_write(&o, data, len, err, err_len)) {
        util_out_abort(&o);
        return -1;
    }
    return util_out_commit(&o, err, err_len);
}
