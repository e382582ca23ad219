/*
 * util/strbuf.c — the growable string of util.h (sb_buf).
 */
#include "util/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int grow(sb_buf *b, size_t extra)
{
    if (b->oom) return -1;
    if (b->len + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *s = realloc(b->s, cap);
    if (!s) { b->oom = 1; return -1; }
    b->s = s, b->cap = cap;
    return 0;
}

sb_buf *sb_putn(sb_buf *b, const char *s, size_t n)
{
    if (grow(b, n)) return b;
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
    return b;
}

sb_buf *sb_putc(sb_buf *b, char c) { return sb_putn(b, &c, 1); }
sb_buf *sb_puts(sb_buf *b, const char *s) { return sb_putn(b, s, strlen(s)); }

sb_buf *sb_printf(sb_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) { b->oom = 1; return b; }
    if (grow(b, (size_t)n)) return b;
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return b;
}

sb_buf *sb_json_string_n(sb_buf *b, const char *s, size_t n)
{
    sb_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') { sb_putc(b, '\\'); sb_putc(b, (char)c); }
        else if (c < 0x20 || c == 0x7f) sb_printf(b, "\\u%04x", c); /* \n too: one form for every control */
        else sb_putc(b, (char)c);
    }
    return sb_putc(b, '"');
}

sb_buf *sb_json_string(sb_buf *b, const char *s) { return sb_json_string_n(b, s, strlen(s)); }
