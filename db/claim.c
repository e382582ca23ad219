/*
 * db/claim.c — one measuring process per calibration. Two `measure` runs on one
 * calibration would each do all the work; the second is refused instead, with a
 * message naming the first.
 *
 * The claim is an open-file-description lock (F_OFD_SETLK) on one byte of the
 * database file, at an offset past the bytes SQLite locks (0x40000000 + 512): the
 * kernel drops it when the holder exits, however it exits (kill -9 included), so a
 * dead run never blocks the next; and unlike a POSIX record lock it is not lost
 * when SQLite closes one of its own descriptors of the file. Who holds it is kept
 * in meta ('claim.<calibration id>') for the message; that row is only a label,
 * the lock decides.
 */
#include "db_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CLAIM_BASE 0x40010000LL /* SQLite's lock bytes are 0x40000000 .. 0x400001ff */

static int lock_byte(int fd, int64_t calib_id, short type)
{
    struct flock l = {.l_type = type, .l_whence = SEEK_SET, .l_start = (off_t)(CLAIM_BASE + calib_id), .l_len = 1};
    return fcntl(fd, F_OFD_SETLK, &l);
}

static int read_holder(db_conn *d, const char *key, char *out, size_t cap)
{
    sqlite3_stmt *st = db_prepare(d, "SELECT value FROM meta WHERE key = ?");
    if (!st) return -1;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    snprintf(out, cap, "another process");
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        snprintf(out, cap, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return 0;
}

static int write_holder(db_conn *d, const char *key, const char *value)
{
    sqlite3_stmt *st = db_prepare(d, value ? "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)"
                                           : "DELETE FROM meta WHERE key = ?");
    if (!st) return -1;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    if (value) sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail_sql(d, "recording the claim");
    sqlite3_finalize(st);
    return rc;
}

int db_calib_claim(db_conn *d, int64_t calib_id, const char *what)
{
    char key[48], who[512], host[256] = "?", when[32];
    snprintf(key, sizeof key, "claim.%lld", (long long)calib_id);
    int fd = open(d->path, O_RDWR | O_CLOEXEC);
    if (fd < 0) return db_fail(d, "%s: cannot open to claim calibration %lld: %s", d->path, (long long)calib_id, strerror(errno));
    if (lock_byte(fd, calib_id, F_WRLCK)) {
        int e = errno;
        close(fd);
        if (e != EAGAIN && e != EACCES) return 0; /* a file system without such locks: run unguarded, as before */
        read_holder(d, key, who, sizeof who);
        db_fail(d, "%s: calibration %lld is being measured by %s; wait for it to finish, or stop it and run again",
                d->path, (long long)calib_id, who);
        return 1;
    }
    gethostname(host, sizeof host - 1);
    time_t now = time(NULL);
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", localtime(&now));
    snprintf(who, sizeof who, "%s (pid %ld on %s, since %s)", what, (long)getpid(), host, when);
    if (write_holder(d, key, who)) {
        close(fd);
        return -1;
    }
    d->claim_fd = fd, d->claim_calib = calib_id;
    return 0;
}

void db_calib_release(db_conn *d)
{
    if (!d || d->claim_fd < 0) return;
    char key[48];
    snprintf(key, sizeof key, "claim.%lld", (long long)d->claim_calib);
    write_holder(d, key, NULL); /* a label only: a failure here leaves a stale one, which the lock overrides */
    close(d->claim_fd);
    d->claim_fd = -1;
}
