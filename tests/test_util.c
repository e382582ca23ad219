/*
 * tests/test_util.c — util/: the atomic output file every writer uses (what it
 * replaces, what it refuses, what it leaves behind) and the interrupt flag.
 * Everything is checked through the file system itself (stat, readlink, the
 * folder's listing), not through util's own answers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util/util.h"

static char dir[512];

static int setup(void **state)
{
    (void)state;
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/bitplan-test-util-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A path in the test folder; a ring of buffers, so a test may hold a few at once. */
static const char *in_dir(const char *name)
{
    static char p[32][1024];
    static int k;
    k = (k + 1) % 32;
    snprintf(p[k], sizeof p[k], "%s/%s", dir, name);
    return p[k];
}

static int count_entries(void)
{
    int n = 0;
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) n += e->d_name[0] != '.';
    if (d) closedir(d);
    return n;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void assert_content(const char *path, const char *text)
{
    char buf[256] = "";
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    assert_string_equal(buf, text);
}

/* A new file, then a replaced one that keeps its permission bits; nothing else left. */
static void test_write_and_replace(void **state)
{
    (void)state;
    char err[512];
    const char *p = in_dir("out.txt");
    assert_int_equal(util_write_file(p, "first", 5, err, sizeof err), 0);
    assert_content(p, "first");
    assert_int_equal(chmod(p, 0600), 0);
    assert_int_equal(util_write_file(p, "second", 6, err, sizeof err), 0);
    assert_content(p, "second");
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(count_entries(), 1);
    unlink(p);
}

/* Directories, FIFOs and devices are refused before anything is written, and are
 * still what they were afterwards. */
static void test_refuses_what_is_not_a_file(void **state)
{
    (void)state;
    char err[512];
    util_out o;
    const char *d = in_dir("a-dir"), *fifo = in_dir("a-fifo");
    assert_int_equal(mkdir(d, 0755), 0);
    assert_int_equal(mkfifo(fifo, 0644), 0);
    assert_int_equal(util_out_open(&o, d, err, sizeof err), -1);
    assert_non_null(strstr(err, "is a directory"));
    assert_int_equal(util_out_open(&o, fifo, err, sizeof err), -1);
    assert_non_null(strstr(err, "not a regular file"));
    assert_null(strchr(err, '\n'));
    assert_int_equal(util_write_file("/dev/null", "x", 1, err, sizeof err), -1);
    assert_non_null(strstr(err, "not a regular file"));
    struct stat st;
    assert_int_equal(stat("/dev/null", &st), 0);
    assert_true(S_ISCHR(st.st_mode));
    assert_int_equal(lstat(fifo, &st), 0);
    assert_true(S_ISFIFO(st.st_mode));
    assert_int_equal(count_entries(), 2);
    rmdir(d), unlink(fifo);
}

/* A link is followed: its target is replaced and the link stays a link. A link to
 * nothing, or to a FIFO, is refused. */
static void test_symlinks(void **state)
{
    (void)state;
    char err[512], got[600];
    const char *target = in_dir("target.txt"), *link = in_dir("link.txt");
    write_text(target, "old");
    assert_int_equal(symlink("target.txt", link), 0);
    assert_int_equal(util_write_file(link, "new", 3, err, sizeof err), 0);
    struct stat st;
    assert_int_equal(lstat(link, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    ssize_t n = readlink(link, got, sizeof got - 1);
    assert_int_equal(n, 10);
    got[n] = 0;
    assert_string_equal(got, "target.txt");
    assert_content(target, "new");
    assert_int_equal(count_entries(), 2);

    const char *dangling = in_dir("dangling.txt");
    assert_int_equal(symlink("nowhere.txt", dangling), 0);
    assert_int_equal(util_write_file(dangling, "x", 1, err, sizeof err), -1);
    assert_non_null(strstr(err, "does not exist"));
    assert_int_equal(access(in_dir("nowhere.txt"), F_OK), -1);

    const char *fifo = in_dir("fifo"), *to_fifo = in_dir("to-fifo");
    assert_int_equal(mkfifo(fifo, 0644), 0);
    assert_int_equal(symlink("fifo", to_fifo), 0);
    assert_int_equal(util_write_file(to_fifo, "x", 1, err, sizeof err), -1);
    assert_int_equal(lstat(fifo, &st), 0);
    assert_true(S_ISFIFO(st.st_mode));
    unlink(target), unlink(link), unlink(dangling), unlink(fifo), unlink(to_fifo);
}

/* An abort leaves the old file as it was and no temporary file. */
static void test_abort_keeps_the_old_file(void **state)
{
    (void)state;
    char err[512];
    util_out o;
    const char *p = in_dir("kept.txt");
    write_text(p, "old");
    assert_int_equal(util_out_open(&o, p, err, sizeof err), 0);
    assert_int_equal(util_out_write(&o, "partial", 7, err, sizeof err), 0);
    assert_int_equal(count_entries(), 2); /* the temporary file exists meanwhile */
    util_out_abort(&o);
    assert_content(p, "old");
    assert_int_equal(count_entries(), 1);
    util_out_abort(&o); /* twice is harmless */
    unlink(p);
}

/* A PID that ran and ended: a child that exits at once, reaped. */
static pid_t dead_pid(void)
{
    pid_t c = fork();
    if (c == 0) _exit(0);
    assert_true(c > 0);
    int status;
    assert_int_equal(waitpid(c, &status, 0), c);
    return c;
}

/* Temporary files of writers that no longer run are removed when the next writer
 * opens the same destination; those of running writers (this process, PID 1) and
 * other names are left alone. */
static void test_stale_temporaries_removed(void **state)
{
    (void)state;
    char err[512], name[128];
    const char *p = in_dir("model.bp");
    pid_t dead = dead_pid();
    snprintf(name, sizeof name, "model.bp.tmp.%ld.0", (long)dead);
    write_text(in_dir(name), "stale");
    snprintf(name, sizeof name, "model.bp.tmp.%ld", (long)dead); /* the older name, without a serial */
    write_text(in_dir(name), "stale");
    snprintf(name, sizeof name, "model.bp.tmp.%ld.7", (long)getpid());
    write_text(in_dir(name), "ours");
    write_text(in_dir("model.bp.tmp.1.0"), "init's");
    write_text(in_dir("model.bp.tmp.x"), "not a temporary name");
    snprintf(name, sizeof name, "other.bp.tmp.%ld.0", (long)dead);
    write_text(in_dir(name), "another destination's");
    assert_int_equal(count_entries(), 6);
    assert_int_equal(util_write_file(p, "new", 3, err, sizeof err), 0);
    assert_int_equal(count_entries(), 5); /* the new file in, two stale ones out */
    snprintf(name, sizeof name, "model.bp.tmp.%ld.0", (long)dead);
    assert_int_equal(access(in_dir(name), F_OK), -1);
    snprintf(name, sizeof name, "model.bp.tmp.%ld.7", (long)getpid());
    assert_int_equal(access(in_dir(name), F_OK), 0);
    assert_int_equal(access(in_dir("model.bp.tmp.1.0"), F_OK), 0);
    teardown(NULL), setup(NULL);
}

/* A folder that does not exist: a one-line error, nothing created. */
static void test_missing_folder(void **state)
{
    (void)state;
    char err[512];
    assert_int_equal(util_write_file(in_dir("no-such/out.txt"), "x", 1, err, sizeof err), -1);
    assert_non_null(strstr(err, "no-such"));
    assert_null(strchr(err, '\n'));
    assert_int_equal(count_entries(), 0);
}

/* The first SIGINT sets the flag and the process goes on; the second ends it as
 * SIGINT would. Run in a child, which reports through its exit status. */
static void test_interrupts(void **state)
{
    (void)state;
    pid_t c = fork();
    if (c == 0) {
        int devnull = open("/dev/null", 1);
        dup2(devnull, STDERR_FILENO); /* the handler's notice */
        if (util_interrupted()) _exit(10);
        util_catch_interrupts();
        raise(SIGINT);
        if (util_interrupted() != SIGINT) _exit(11);
        raise(SIGINT);
        _exit(12); /* not reached: the second one kills */
    }
    int status;
    assert_int_equal(waitpid(c, &status, 0), c);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGINT);
}

/* The whole-file reader: the exact bytes and a NUL after them; a directory, a FIFO
 * (which would block), a missing file and a file over the limit are errors naming
 * the path. */
static void test_read_file(void **state)
{
    (void)state;
    char err[512];
    size_t len = 99;
    const char *f = in_dir("text"), *fifo = in_dir("read-fifo"), *d = in_dir("read-dir");
    FILE *w = fopen(f, "wb");
    assert_non_null(w);
    assert_int_equal(fwrite("ab\0cd\n", 1, 6, w), 6);
    fclose(w);
    char *t = util_read_file(f, 6, &len, err, sizeof err);
    assert_non_null(t);
    assert_int_equal(len, 6);
    assert_memory_equal(t, "ab\0cd\n", 7); /* and the terminating NUL */
    free(t);
    assert_null(util_read_file(f, 5, &len, err, sizeof err));
    assert_non_null(strstr(err, "6 bytes is too big (at most 5)"));
    assert_int_equal(mkfifo(fifo, 0644), 0);
    assert_int_equal(mkdir(d, 0755), 0);
    assert_null(util_read_file(fifo, 100, &len, err, sizeof err)); /* no writer: must not wait for one */
    assert_non_null(strstr(err, "not a regular file"));
    assert_null(util_read_file(d, 100, &len, err, sizeof err));
    assert_non_null(strstr(err, "is a directory"));
    assert_null(util_read_file(in_dir("missing"), 100, &len, err, sizeof err));
    assert_non_null(strstr(err, "missing: No such file"));
    rmdir(d), unlink(fifo), unlink(f);
}

/* The string builder chains, escapes JSON the one way, and reads back through the
 * JSON parser as the same string. */
static void test_strbuf_and_json(void **state)
{
    (void)state;
    sb_buf b = {0};
    const char nasty[] = "q\"b\\s\n\t\x01\x7f\xc3\xa9";
    sb_json_string(sb_puts(sb_printf(&b, "{\"n\":%d,", 42), "\"s\":"), nasty);
    sb_putc(&b, '}');
    assert_false(b.oom);
    assert_string_equal(b.s, "{\"n\":42,\"s\":\"q\\\"b\\\\s\\u000a\\u0009\\u0001\\u007f\xc3\xa9\"}");
    char err[128];
    util_json *j = util_json_parse(b.s, b.len, err, sizeof err);
    assert_non_null(j);
    assert_int_equal(util_json_int(j, "n", 0), 42);
    assert_string_equal(util_json_str(j, "s"), nasty);
    util_json_free(j);
    free(b.s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_and_replace),
        cmocka_unit_test(test_refuses_what_is_not_a_file),
        cmocka_unit_test(test_symlinks),
        cmocka_unit_test(test_abort_keeps_the_old_file),
        cmocka_unit_test(test_stale_temporaries_removed),
        cmocka_unit_test(test_missing_folder),
        cmocka_unit_test(test_read_file),
        cmocka_unit_test(test_strbuf_and_json),
        cmocka_unit_test(test_interrupts),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
