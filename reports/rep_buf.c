/*
 * reports/rep_buf.c — the string builder every writer of reports/ appends to, and the
 * number formatting they share. An append returns the buffer, so writers chain
 * calls without checking each one: running out of memory makes the buffer failed,
 * later appends are ignored, and the caller checks rep_buf_failed() once at the end.
 * Never prints, never aborts on a full heap.
 */
#include "rep_int.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct rep_buf {
    char *s;
    size_t len, cap;
    int failed;
};

rep_buf *rep_buf_new(void)
{
    rep_buf *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->cap = 4096;
    b->s = malloc(b->cap);
    if (!b->s) { free(b); return NULL; }
    b->s[0] = 0;
    return b;
}

void rep_buf_free(rep_buf *b)
{
    if (!b) return;
    free(b->s);
    free(b);
}

/* Room for n more bytes and a NUL; 0, or -1 with the buffer failed. */
static int reserve(rep_buf *b, size_t n)
{
    if (b->failed) return -1;
    if (b->len + n + 1 <= b->cap) return 0;
    size_t cap = b->cap;
    while (b->len + n + 1 > cap) cap *= 2;
    char *s = realloc(b->s, cap);
    if (!s) { b->failed = 1; return -1; }
    b->s = s;
    b->cap = cap;
    return 0;
}

rep_buf *rep_catn(rep_buf *b, const char *s, size_t n)
{
    if (!b || reserve(b, n)) return b;
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
    return b;
}

rep_buf *rep_cat(rep_buf *b, const char *s) { return rep_catn(b, s, strlen(s)); }

rep_buf *rep_catf(rep_buf *b, const char *fmt, ...)
{
    if (!b || b->failed) return b;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) { b->failed = 1; return b; }
    if ((size_t)n >= b->cap - b->len) {
        if (reserve(b, (size_t)n)) return b;
        va_start(ap, fmt);
        vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
    return b;
}

rep_buf *rep_cat_html(rep_buf *b, const char *s)
{
    for (const char *p = s; *p; p++) {
        const char *rep = *p == '&' ? "&amp;" : *p == '<' ? "&lt;" : *p == '>' ? "&gt;"
                        : *p == '"' ? "&quot;" : *p == '\'' ? "&#39;" : NULL;
        if (rep) rep_cat(b, rep);
        else rep_catn(b, p, 1);
    }
    return b;
}

const char *rep_buf_str(const rep_buf *b) { return b->s; }
size_t rep_buf_len(const rep_buf *b) { return b->len; }
int rep_buf_failed(const rep_buf *b) { return !b || b->failed; }

/* ==== Numbers ==== */

const char *rep_exact(char out[32], double v)
{
    if (isnan(v)) return strcpy(out, "nan");
    if (isinf(v)) return strcpy(out, v > 0 ? "inf" : "-inf");
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(out, 32, "%.*g", prec, v);
        if (strtod(out, NULL) == v) break;
    }
    return out;
}

rep_buf *rep_cat_exact(rep_buf *b, double v)
{
    char s[32];
    return rep_cat(b, rep_exact(s, v));
}

const char *rep_sig(char out[32], double v, int digits)
{
    if (isnan(v)) return strcpy(out, "–");
    double a = fabs(v);
    if (v == 0) return strcpy(out, "0");
    if (a >= 1e-3 && a < 1e6) {
        int dec = digits - 1 - (int)floor(log10(a));
        if (dec < 0) dec = 0;
        snprintf(out, 32, "%.*f", dec, v);
    } else {
        snprintf(out, 32, "%.*e", digits - 1, v);
    }
    return out;
}

const char *rep_bytes(char out[32], double bytes)
{
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    double v = bytes;
    while (fabs(v) >= 1024 && u < 4) v /= 1024, u++;
    snprintf(out, 32, u ? "%.2f %s" : "%.0f %s", v, units[u]);
    return out;
}
