/*
 * tests/fuzz/fuzz_options.c — feeds any bytes, as an option file (`bitplan
 * measure --options FILE`, `bitplan quantize --options FILE`), to opt_read_file
 * (measure/options.c; the format is at the top of that file).
 *
 * Beyond "no crash" it checks, for every file the reader accepts, what the reader
 * promises: every option passes lay_option_check (layout/layout.c) on a shape it can
 * apply to (4 x 256: 256 is a multiple of every group of 32 and of every ggml
 * block), has a name of 1 to 31 characters, and no two options share a name or
 * store the same thing; and a round trip: the set written back as an option file
 * (each option as a line of six fields, quoted where its name needs it, or its
 * ggml type alone) reads back as the same set. A rejected file gets one line of
 * error naming the file.
 */
#include "measure/measure.h"
#include "tests/fuzz/fuzz_util.h"

#include <stdint.h>

static int same_option(const lay_option *a, const lay_option *b)
{
    return !strcmp(a->name, b->name) && a->bits_lo == b->bits_lo && a->bits_hi == b->bits_hi && a->hi_share == b->hi_share &&
           a->group == b->group && a->scale_fmt == b->scale_fmt;
}

static void check_set(const opt_set *s)
{
    char why[256];
    FUZZ_CHECK(s->n >= 1, "an accepted file with no options");
    for (int i = 0; i < s->n; i++) {
        const lay_option *o = &s->v[i];
        size_t n = strnlen(o->name, sizeof o->name);
        FUZZ_CHECK(n >= 1 && n < sizeof o->name, "name of %zu characters", n);
        int bad = lay_option_check(o, 4, 256, why, sizeof why);
        FUZZ_CHECK(!bad, "option '%s' fails lay_option_check: %s", o->name, why);
        for (int j = 0; j < i; j++) {
            const lay_option *p = &s->v[j];
            FUZZ_CHECK(strcmp(o->name, p->name), "name '%s' twice", o->name);
            FUZZ_CHECK(!(o->bits_lo == p->bits_lo && o->bits_hi == p->bits_hi && o->hi_share == p->hi_share &&
                         o->group == p->group && o->scale_fmt == p->scale_fmt), "'%s' and '%s' store the same", o->name, p->name);
        }
    }
}

/* The set as an option file: the reader's own format, written independently. */
static void write_set(const opt_set *s, FILE *f)
{
    for (int i = 0; i < s->n; i++) {
        const lay_option *o = &s->v[i];
        if (lay_option_ggml(o) >= 0) { fprintf(f, "%s\n", o->name); continue; }
        int quote = strpbrk(o->name, " \t\v\f\r#") != NULL;
        fprintf(f, quote ? "\"%s\"" : "%s", o->name);
        fprintf(f, " %d %d %.9g %d %s  # written back\n", o->bits_lo, o->bits_hi, (double)o->hi_share, (int)o->group,
                o->scale_fmt == LAY_SCALE_F16 ? "sym" : "z8");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[128], err[512];
    opt_set s, back;
    fuzz_write("in.txt", data, size, path, sizeof path);
    if (opt_read_file(path, &s, err, sizeof err)) {
        FUZZ_CHECK(!strncmp(err, path, strlen(path)) && !strchr(err, '\n'), "error '%s'", err);
        return 0;
    }
    check_set(&s);
    FILE *f = fopen(path, "w");
    FUZZ_CHECK(f != NULL, "cannot write %s", path);
    write_set(&s, f);
    fclose(f);
    FUZZ_CHECK(!opt_read_file(path, &back, err, sizeof err), "the set written back is refused: %s", err);
    FUZZ_CHECK(back.n == s.n, "%d options read back, %d written", back.n, s.n);
    for (int i = 0; i < s.n; i++) FUZZ_CHECK(same_option(&s.v[i], &back.v[i]), "option %d ('%s') reads back otherwise", i, s.v[i].name);
    opt_set_free(&s);
    opt_set_free(&back);
    return 0;
}
