/*
 * pack/strbuf.h — a growable string for writing JSON headers and metadata.
 * Internal to pack/. Appends never fail loudly: on out-of-memory they set oom and
 * stop, and the caller checks oom once at the end.
 */
#ifndef BITPLAN_PACK_STRBUF_H
#define BITPLAN_PACK_STRBUF_H

#include <stddef.h>

typedef struct {
    char *s;      /* NUL-terminated when len > 0 */
    size_t len, cap;
    int oom;
} sb_buf;

void sb_putc(sb_buf *b, char c);
void sb_putn(sb_buf *b, const char *s, size_t n);
void sb_puts(sb_buf *b, const char *s);
void sb_printf(sb_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal (quotes, escapes, bytes >= 0x80 passed as is). */
void sb_json_string(sb_buf *b, const char *s);
void sb_json_string_n(sb_buf *b, const char *s, size_t n);

#endif
