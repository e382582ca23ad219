/*
 * measure/options.c — the candidate quantization options: a default table, and a
 * reader for a user's option file. Options are data; nothing here quantizes.
 *
 * What it must never do: accept an option that lay_option_check would refuse, or
 * two options that store the same thing (the database keys options by their
 * fields).
 *
 * The option file: one option per line, whitespace-separated,
 *
 *     # name            bits_lo bits_hi hi_share group scale_fmt
 *     4b-g64            4       4       0        64    z8
 *     "3b/5b 10% g32"   3       5       10%      32    z8
 *     3b-sym-g32        3       3       0        32    sym
 *     3b-g64-h64        3       3       0        64    z8      h64
 *     3b-g64-awq        3       3       0        64    z8      awq
 *
 *   name       up to 31 characters, unique; double-quote it to use spaces
 *   bits_lo    2..8: width of the less important groups
 *   bits_hi    bits_lo..8: width of the most important groups (act-order first)
 *   hi_share   share of groups at bits_hi: a fraction (0.25) or a percentage (25%);
 *              0 exactly when bits_hi == bits_lo; rounded to whole groups per tensor
 *   group      columns per group, a positive multiple of 32 (the last group of a
 *              tensor may be shorter)
 *   scale_fmt  z8 (fp16 scale + uint8 zero: asymmetric) or sym (fp16 scale only)
 *   transform  optional: h64 or h128, a randomized Hadamard rotation of the input
 *              dimension in blocks of that many columns (layout/layout.h); awq,
 *              activation-aware input scales (layout/layout.h, measure.h); or none
 *
 * A line of one field that names a ggml block type (Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K
 * Q3_K Q4_K Q5_K Q6_K, any case) is that GGUF format as an option (layout/layout.h),
 * named as the type; a plan of such options can be exported with `export-gguf`.
 *
 * '#' starts a comment (outside quotes); blank lines are skipped. Errors name the
 * file, the line and the value: "opts.txt:3: bits_lo 9 is outside 2..8".
 *
 * The default set (asymmetric, scale_fmt z8). bpw = lay_tensor_bits / (rows*cols):
 *
 *     name              576x1536  1536x576  4096x4096
 *     2b g128             2.215     2.219     2.191
 *     2b/3b 10% g128      2.299     2.441     2.285
 *     2b g64              2.403     2.385     2.379
 *     2b/3b 30% g64       2.694     2.719     2.676
 *     2b g32              2.778     2.760     2.754
 *     2b/3b 50% g64       2.903     2.941     2.879
 *     3b g128             3.215     3.219     3.191
 *     3b g64              3.403     3.385     3.379
 *     3b/4b 25% g128      3.465     3.441     3.441
 *     3b/4b 50% g128      3.715     3.885     3.691
 *     3b g32              3.778     3.760     3.754
 *     4b g128             4.215     4.219     4.191
 *     4b g64              4.403     4.385     4.379
 *     4b/5b 25% g128      4.465     4.441     4.441
 *     4b/6b 25% g128      4.715     4.663     4.691
 *     4b g32              4.778     4.760     4.754
 *     5b g128             5.215     5.219     5.191
 *     5b g64              5.403     5.385     5.379
 *     5b/6b 50% g128      5.715     5.885     5.691
 *     5b g32              5.778     5.760     5.754
 *     6b g128             6.215     6.219     6.191
 *     6b g64              6.403     6.385     6.379
 *     6b g32              6.778     6.760     6.754
 *     6b/8b 50% g128      7.215     7.552     7.191
 *     6b/8b 75% g128      7.715     7.997     7.691
 *     8b g128             8.215     8.219     8.191
 *     8b g64              8.403     8.385     8.379
 *     8b g32              8.778     8.760     8.754
 *
 * and, rotated in blocks of 64 columns (layout/layout.h, "Input rotations"; 4 bytes
 * more per tensor, the seed, which rounds away here), 2b g128 h64, 2b/3b 10% g128
 * h64, 2b g64 h64, 2b/3b 30% g64 h64, 3b g128 h64, 3b g64 h64, 3b/4b 25% g128 h64
 * and 4b g128 h64: 36 options. None has input scales (below, opt_default_set).
 *
 * (With 576 columns and groups of 128 there are 5 groups, so 10% and 25% both
 * round to one group: the shares are nominal, the cost is always exact.)
 */
#include "measure.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ==== The default set ==== */

static const struct {
    uint8_t lo, hi;
    float share;
    int32_t group;
} opt_defaults[] = {
    {2, 2, 0, 128}, {2, 3, 0.10f, 128}, {2, 2, 0, 64},  {2, 3, 0.30f, 64},   {2, 2, 0, 32},
    {2, 3, 0.50f, 64}, {3, 3, 0, 128}, {3, 3, 0, 64},   {3, 4, 0.25f, 128},  {3, 4, 0.50f, 128},
    {3, 3, 0, 32},  {4, 4, 0, 128},   {4, 4, 0, 64},    {4, 5, 0.25f, 128},  {4, 6, 0.25f, 128},
    {4, 4, 0, 32},  {5, 5, 0, 128},   {5, 5, 0, 64},    {5, 6, 0.50f, 128},  {5, 5, 0, 32},
    {6, 6, 0, 128}, {6, 6, 0, 64},    {6, 6, 0, 32},    {6, 8, 0.50f, 128},  {6, 8, 0.75f, 128}, {8, 8, 0, 128},
    {8, 8, 0, 64},  {8, 8, 0, 32},
};

/* The default options that the set also holds rotated (h64, after the rows of the
 * table above): 4 bits and below, where an outlier costs a coarse grid most. */
#define OPT_ROT_DEFAULTS 8 /* opt_defaults[0..) up to and including "4b g128" */
static const int opt_rotated[OPT_ROT_DEFAULTS] = {0, 1, 2, 3, 6, 7, 8, 11};
/* None with input scales (awq): on SmolLM2 they lowered GPTQ's error by only 2-4%
 * per tensor, the allocator took 0-2 of them per plan beside the rotations, and a
 * plan without rotations that took 21 measured more KL than the one without them
 * (BENCHMARKS.md, "Input scales"), while each costs GPTQ at every alpha of the grid.
 * An option file can name them. */

static void opt_make_name(lay_option *o)
{
    if (o->bits_hi == o->bits_lo)
        snprintf(o->name, sizeof o->name, "%db g%d", o->bits_lo, (int)o->group);
    else
        snprintf(o->name, sizeof o->name, "%db/%db %d%% g%d", o->bits_lo, o->bits_hi,
                 (int)lrintf(o->hi_share * 100), (int)o->group);
    if (o->scale_fmt == LAY_SCALE_F16) strncat(o->name, " sym", sizeof o->name - strlen(o->name) - 1);
    if (o->rot) snprintf(o->name + strlen(o->name), sizeof o->name - strlen(o->name), " h%d", o->rot);
    if (o->awq) strncat(o->name, " awq", sizeof o->name - strlen(o->name) - 1);
}

void opt_default_set(opt_set *s)
{
    int plain = (int)(sizeof opt_defaults / sizeof opt_defaults[0]), n = plain + OPT_ROT_DEFAULTS;
    s->v = calloc((size_t)n, sizeof *s->v);
    s->n = s->v ? n : 0;
    for (int i = 0; i < s->n; i++) {
        int k = i < plain ? i : opt_rotated[i - plain];
        lay_option *o = &s->v[i];
        o->bits_lo = opt_defaults[k].lo, o->bits_hi = opt_defaults[k].hi;
        o->hi_share = opt_defaults[k].share, o->group = opt_defaults[k].group;
        o->scale_fmt = LAY_SCALE_F16_Z8, o->rot = i < plain ? 0 : 64;
        opt_make_name(o);
    }
}

/* The ggml block types in bits order: the preset "ggml" (every type llama.cpp's
 * K-quant mixes use, and the 32-wide types it falls back on where the columns are
 * not a multiple of 256). */
static const int opt_ggml_types[] = {LAY_GGML_Q2_K, LAY_GGML_Q3_K, LAY_GGML_Q4_0, LAY_GGML_Q4_K, LAY_GGML_Q4_1,
                                     LAY_GGML_Q5_0, LAY_GGML_Q5_K, LAY_GGML_Q5_1, LAY_GGML_Q6_K, LAY_GGML_Q8_0};

void opt_ggml_set(opt_set *s)
{
    int n = (int)(sizeof opt_ggml_types / sizeof opt_ggml_types[0]);
    s->v = calloc((size_t)n, sizeof *s->v);
    s->n = s->v ? n : 0;
    for (int i = 0; i < s->n; i++) lay_ggml_option(opt_ggml_types[i], &s->v[i]);
}

int opt_set_load(const char *spec, opt_set *s, char *err, size_t err_len)
{
    if (!spec || !strcmp(spec, "default")) opt_default_set(s);
    else if (!strcmp(spec, "ggml")) opt_ggml_set(s);
    else return opt_read_file(spec, s, err, err_len);
    if (s->n == 0) return snprintf(err, err_len, "out of memory"), -1;
    return 0;
}

static int same_fields(const lay_option *a, const lay_option *b)
{
    return a->bits_lo == b->bits_lo && a->bits_hi == b->bits_hi && a->hi_share == b->hi_share &&
           a->group == b->group && a->scale_fmt == b->scale_fmt && a->rot == b->rot && a->awq == b->awq;
}

int opt_set_add(opt_set *s, const lay_option *o)
{
    for (int i = 0; i < s->n; i++)
        if (same_fields(&s->v[i], o)) return 0;
    lay_option *v = realloc(s->v, (size_t)(s->n + 1) * sizeof *v);
    if (!v) return -1;
    s->v = v, s->v[s->n++] = *o;
    return 1;
}

void opt_set_free(opt_set *s)
{
    free(s->v);
    s->v = NULL, s->n = 0;
}

/* ==== The option file ==== */

#define OPT_FIELDS 7 /* the seventh, the transform, may be left out */

/* Splits line into at most OPT_FIELDS+1 tokens (a quoted token may hold spaces),
 * stopping at '#'. Modifies line. Returns the count, or -1 on an unclosed quote. */
static int opt_tokens(char *line, char **tok)
{
    int n = 0;
    char *p = line;
    for (;;) {
        while (*p && isspace((unsigned char)*p)) p++;
        if (!*p || *p == '#') return n;
        if (n == OPT_FIELDS + 1) return n;
        if (*p == '"') {
            char *end = strchr(p + 1, '"');
            if (!end) return -1;
            *end = 0, tok[n++] = p + 1, p = end + 1;
            if (*p && !isspace((unsigned char)*p) && *p != '#') return -1;
            continue;
        }
        tok[n++] = p;
        while (*p && !isspace((unsigned char)*p) && *p != '#') p++;
        if (*p == '#') { *p = 0; return n; }
        if (*p) *p++ = 0;
    }
}

static int parse_int(const char *s, long *v)
{
    char *end;
    errno = 0;
    *v = strtol(s, &end, 10);
    return errno || end == s || *end ? -1 : 0;
}

/* "0.25" or "25%" -> 0.25; -1 if malformed. */
static int parse_share(const char *s, float *v)
{
    char *end;
    errno = 0;
    double d = strtod(s, &end);
    if (errno || end == s) return -1;
    if (*end == '%') d /= 100, end++;
    if (*end || !isfinite(d)) return -1;
    *v = (float)d;
    return 0;
}

static int parse_fmt(const char *s, lay_scale_fmt *f)
{
    if (!strcmp(s, "z8") || !strcmp(s, "asym") || !strcmp(s, "f16_z8")) *f = LAY_SCALE_F16_Z8;
    else if (!strcmp(s, "sym") || !strcmp(s, "f16")) *f = LAY_SCALE_F16;
    else return -1;
    return 0;
}

/* The input transform: "h64" or "h128" (a rotation), "awq" (input scales) or
 * "none"; -1 if none of these. */
static int parse_transform(const char *s, lay_option *o)
{
    if (!strcmp(s, "none")) o->rot = 0, o->awq = 0;
    else if (!strcmp(s, "h64")) o->rot = 64;
    else if (!strcmp(s, "h128")) o->rot = 128;
    else if (!strcmp(s, "awq")) o->awq = 1;
    else return -1;
    return 0;
}

/* One option from its six or seven tokens (n). 0, or -1 with "what 'value' is
 * wrong" in why. */
static int opt_parse(char **t, int n, lay_option *o, char *why, size_t why_len)
{
    long lo, hi, group;
    memset(o, 0, sizeof *o);
    if (!*t[0] || strlen(t[0]) >= sizeof o->name)
        return snprintf(why, why_len, "name \"%s\" must have 1 to %d characters", t[0], (int)sizeof o->name - 1), -1;
    strcpy(o->name, t[0]);
    if (parse_int(t[1], &lo) || lo < LAY_MIN_BITS || lo > LAY_MAX_BITS)
        return snprintf(why, why_len, "bits_lo '%s' is not an integer in 2..8", t[1]), -1;
    if (parse_int(t[2], &hi) || hi < lo || hi > LAY_MAX_BITS)
        return snprintf(why, why_len, "bits_hi '%s' is not an integer in bits_lo (%ld)..8", t[2], lo), -1;
    if (parse_share(t[3], &o->hi_share) || !(o->hi_share >= 0 && o->hi_share <= 1))
        return snprintf(why, why_len, "hi_share '%s' is not in 0..1 (or 0%%..100%%)", t[3]), -1;
    if (hi == lo && o->hi_share != 0)
        return snprintf(why, why_len, "hi_share '%s' must be 0 when bits_hi equals bits_lo", t[3]), -1;
    if (hi > lo && o->hi_share == 0)
        return snprintf(why, why_len, "hi_share '%s' must be above 0 when bits_hi > bits_lo", t[3]), -1;
    if (parse_int(t[4], &group) || group <= 0 || group % LAY_CHUNK || group > INT32_MAX / 2)
        return snprintf(why, why_len, "group '%s' is not a positive multiple of 32", t[4]), -1;
    if (parse_fmt(t[5], &o->scale_fmt))
        return snprintf(why, why_len, "scale_fmt '%s' is not z8 or sym", t[5]), -1;
    if (n > 6 && parse_transform(t[6], o))
        return snprintf(why, why_len, "transform '%s' is not h64, h128, awq or none", t[6]), -1;
    o->bits_lo = (uint8_t)lo, o->bits_hi = (uint8_t)hi, o->group = (int32_t)group;
    return 0;
}

/* Checks o against the options already read; -1 with a reason naming the line of
 * the earlier one. */
static int opt_unique(const opt_set *s, const int *lines, const lay_option *o, char *why, size_t why_len)
{
    for (int i = 0; i < s->n; i++) {
        if (!strcmp(s->v[i].name, o->name))
            return snprintf(why, why_len, "name \"%s\" is already used on line %d", o->name, lines[i]), -1;
        if (same_fields(&s->v[i], o))
            return snprintf(why, why_len, "option \"%s\" stores the same as \"%s\" on line %d", o->name,
                            s->v[i].name, lines[i]), -1;
    }
    return 0;
}

/* Appends o (growing v and lines); -1 if out of memory. */
static int opt_push(opt_set *s, int **lines, int *cap, const lay_option *o, int line)
{
    if (s->n == *cap) {
        int nc = *cap ? 2 * *cap : 16;
        lay_option *v = realloc(s->v, (size_t)nc * sizeof *v);
        if (!v) return -1;
        s->v = v;
        int *l = realloc(*lines, (size_t)nc * sizeof *l);
        if (!l) return -1;
        *lines = l, *cap = nc;
    }
    s->v[s->n] = *o, (*lines)[s->n++] = line;
    return 0;
}

int opt_read_file(const char *path, opt_set *s, char *err, size_t err_len)
{
    char buf[1024], why[256];
    char *tok[OPT_FIELDS + 1];
    int *lines = NULL, cap = 0, line = 0, rc = -1;
    s->n = 0, s->v = NULL;
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, err_len, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    while (fgets(buf, sizeof buf, f)) {
        line++;
        /* fgets stops at a newline, not at a NUL, and strlen does: a line that holds
         * a NUL byte is shorter by strlen than what was read */
        size_t len = strlen(buf);
        if (len + 1 < sizeof buf && buf[len ? len - 1 : 0] != '\n' && !feof(f)) {
            snprintf(err, err_len, "%s:%d: a NUL byte: not a text file", path, line);
            goto done;
        }
        if (!strchr(buf, '\n') && !feof(f)) {
            snprintf(err, err_len, "%s:%d: line is longer than %d characters", path, line, (int)sizeof buf - 2);
            goto done;
        }
        int n = opt_tokens(buf, tok);
        if (n == 0) continue;
        lay_option o;
        int ok = 0;
        if (n < 0) snprintf(why, sizeof why, "unclosed or misplaced quote");
        else if (n == 1 && lay_ggml_option(lay_ggml_type_by_name(tok[0]), &o) == 0) ok = 1;
        else if (n == 1) snprintf(why, sizeof why, "'%s' is not a ggml type (Q4_0 .. Q6_K), and an option has 6 fields", tok[0]);
        else if (n != OPT_FIELDS - 1 && n != OPT_FIELDS)
            snprintf(why, sizeof why, "%d fields, expected 6 (name bits_lo bits_hi hi_share group scale_fmt), "
                     "7 (and a transform) or a ggml type", n);
        else ok = opt_parse(tok, n, &o, why, sizeof why) == 0;
        if (!ok || opt_unique(s, lines, &o, why, sizeof why)) {
            snprintf(err, err_len, "%s:%d: %s", path, line, why);
            goto done;
        }
        if (opt_push(s, &lines, &cap, &o, line)) {
            snprintf(err, err_len, "%s:%d: out of memory", path, line);
            goto done;
        }
    }
    if (ferror(f)) snprintf(err, err_len, "%s: read error after line %d", path, line);
    else if (s->n == 0) snprintf(err, err_len, "%s: no options (one per line: name bits_lo bits_hi hi_share group scale_fmt)", path);
    else rc = 0;
done:
    fclose(f);
    free(lines);
    if (rc) opt_set_free(s);
    return rc;
}
