/*
 * reports/rep_fmt.c — the text every writer of reports/ shares: HTML escaping and
 * the formatting of numbers. The writers append to util's sb_buf, whose appends
 * chain and whose out-of-memory is checked once at the end.
 * Never prints, never aborts on a full heap.
 */
#include "rep_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

sb_buf *rep_cat_html(sb_buf *b, const char *s)
{
    for (const char *p = s; *p; p++) {
        const char *rep = *p == '&' ? "&amp;" : *p == '<' ? "&lt;" : *p == '>' ? "&gt;"
                        : *p == '"' ? "&quot;" : *p == '\'' ? "&#39;" : NULL;
        if (rep) sb_puts(b, rep);
        else sb_putn(b, p, 1);
    }
    return b;
}

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

sb_buf *rep_cat_exact(sb_buf *b, double v)
{
    char s[32];
    return sb_puts(b, rep_exact(s, v));
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
